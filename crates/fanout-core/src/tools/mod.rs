//! The tools a sub-agent's model sees, and the scoped execution behind them.
//!
//! Names are a contract: `read_file`, `write_file`, `edit_file`, `list_files`, `search`,
//! `bash`. A [`Toolbox`] holds one agent's [`ScopePolicy`], its [`ScopedFs`], its
//! [`Sandbox`] for commands, its [`Journal`] and its [`Receipts`]. [`Toolbox::call`] never
//! fails: a refused or failed call comes back as an error [`ToolOutput`] whose text says why,
//! so the model can adapt, and every refusal is recorded as a [`Denial`].
//!
//! Start with [`Toolbox::new`] and [`Toolbox::call`]; [`fs`] has the path rules,
//! [`shell`] the command-line rules, [`journal`] the undo journal and [`receipts`] the record
//! of what the agent did.

pub mod fs;
pub mod journal;
pub mod receipts;
pub mod shell;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use globset::GlobBuilder;
use regex::RegexBuilder;
use serde::Serialize;
use serde_json::{Value, json};

use crate::ids::AgentId;
use crate::policy::{DenyReason, ScopePolicy, is_secret_name};
use crate::provider::ToolSpec;
use crate::sandbox::{ChangeKind, Sandbox, SandboxConfig, SandboxError, WriteGrants};
use fs::{FileState, FsError, ScopedFs};
use journal::{Journal, UndoReport};
use receipts::{CallOutcome, CommandReceipt, Denial, MAX_CALL_PATHS, Receipts, ToolCallReceipt};

/// Size limits of the file tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// Largest file `read_file`, `edit_file` and `search` will open.
    pub max_file_bytes: u64,
    /// Most bytes of text one tool result carries.
    pub max_output_bytes: usize,
    pub max_list_entries: usize,
    pub max_search_matches: usize,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            max_file_bytes: 2 * 1024 * 1024,
            max_output_bytes: 64 * 1024,
            max_list_entries: 1000,
            max_search_matches: 200,
        }
    }
}

/// The result of one tool call, as the model will see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    pub content: String,
    pub is_error: bool,
}

impl ToolOutput {
    fn ok(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: false,
        }
    }

    fn error(content: impl Into<String>) -> ToolOutput {
        ToolOutput {
            content: content.into(),
            is_error: true,
        }
    }
}

/// How a command the engine ran ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum CommandExit {
    /// It ran and exited with this status.
    Exited(i32),
    /// It was killed by this signal.
    Signal(i32),
    /// It ran past the sandbox's time limit and was killed.
    TimedOut,
    /// It could not be started (not installed, refused, no sandbox).
    NotStarted,
    /// It ran, but its end was not observed.
    Unknown,
}

impl CommandExit {
    /// Only an exit status of 0 is a success.
    pub fn success(self) -> bool {
        self == CommandExit::Exited(0)
    }

    pub fn describe(self) -> String {
        match self {
            CommandExit::Exited(code) => format!("exit code {code}"),
            CommandExit::Signal(signal) => format!("killed by signal {signal}"),
            CommandExit::TimedOut => "timed out".into(),
            CommandExit::NotStarted => "could not be started".into(),
            CommandExit::Unknown => "exit status unknown".into(),
        }
    }
}

/// A command run by [`Toolbox::run_command`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    pub output: ToolOutput,
    pub exit: CommandExit,
}

/// A toolbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ToolboxError {
    #[error("cannot open the repository {path}: {message}")]
    Repository { path: PathBuf, message: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

enum Failure {
    Denied { target: String, reason: DenyReason },
    Failed(String),
}

impl From<FsError> for Failure {
    fn from(error: FsError) -> Failure {
        Failure::Failed(error.to_string())
    }
}

struct State {
    journal: Journal,
    receipts: Receipts,
    /// Paths the current call read or wrote (for its receipt).
    touched: Vec<String>,
}

impl State {
    fn touch(&mut self, path: &str) {
        if self.touched.len() < MAX_CALL_PATHS {
            self.touched.push(path.to_owned());
        }
    }
}

/// One agent's tools.
#[derive(Debug)]
pub struct Toolbox {
    fs: Arc<ScopedFs>,
    policy: ScopePolicy,
    sandbox: Option<Sandbox>,
    sandbox_error: Option<SandboxError>,
    limits: ToolLimits,
    state: Arc<Mutex<State>>,
    /// The run's record of who wrote what (see [`WriteLedger`]).
    writes: Arc<WriteLedger>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

impl Toolbox {
    /// Open `root` for an agent with `policy`. The sandbox is prepared only when the policy
    /// grants `bash`; if the kernel cannot enforce it, `bash` calls are refused with the
    /// reason (fail closed) while the file tools keep working.
    pub fn new(
        root: &Path,
        policy: ScopePolicy,
        sandbox: SandboxConfig,
        limits: ToolLimits,
    ) -> Result<Toolbox, ToolboxError> {
        let facts = RepoFacts::scan(root);
        Toolbox::with_facts(root, policy, sandbox, limits, &facts)
    }

    /// [`Toolbox::new`] with the repository's facts already scanned (see [`RepoFacts`]).
    pub fn with_facts(
        root: &Path,
        mut policy: ScopePolicy,
        sandbox: SandboxConfig,
        limits: ToolLimits,
        facts: &RepoFacts,
    ) -> Result<Toolbox, ToolboxError> {
        let fs = ScopedFs::open(root).map_err(|error| ToolboxError::Repository {
            path: root.to_path_buf(),
            message: error.to_string(),
        })?;
        let scan = facts.scan.clone();
        let writes = Arc::clone(&facts.writes);
        policy.gitdirs.extend(scan.gitdirs);
        let (sandbox, sandbox_error) = if policy.tools.contains("bash") {
            let grants = write_grants(fs.root_path(), &policy, scan.hidden);
            let mut config = sandbox;
            config.network = policy.network;
            config.mode = policy.sandbox_mode;
            match Sandbox::new(config, grants) {
                Ok(sandbox) => (Some(sandbox), None),
                Err(error) => (None, Some(error)),
            }
        } else {
            (None, None)
        };
        Ok(Toolbox {
            fs: Arc::new(fs),
            policy,
            sandbox,
            sandbox_error,
            limits,
            state: Arc::new(Mutex::new(State {
                journal: Journal::new(),
                receipts: Receipts::default(),
                touched: Vec::new(),
            })),
            writes,
        })
    }

    pub fn policy(&self) -> &ScopePolicy {
        &self.policy
    }

    pub fn fs(&self) -> &ScopedFs {
        &self.fs
    }

    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock_state(&self.state)
    }

    /// Run the blocking filesystem part of a tool off the async workers.
    ///
    /// `work` gets the agent's filesystem and its state (journal and receipts). If the
    /// calling future is dropped before the work starts, the work does not run at all.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ScopedFs, &Mutex<State>) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, Failure> {
        struct Abandon(Arc<AtomicBool>);
        impl Drop for Abandon {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let abandoned = Arc::new(AtomicBool::new(false));
        let guard = Abandon(Arc::clone(&abandoned));
        let fs = Arc::clone(&self.fs);
        let state = Arc::clone(&self.state);
        let handle = tokio::task::spawn_blocking(move || {
            if abandoned.load(Ordering::SeqCst) {
                return Err(Failure::Failed("the tool call was abandoned".into()));
            }
            work(&fs, &state)
        });
        let result = handle
            .await
            .map_err(|error| Failure::Failed(format!("the tool call failed: {error}")))?;
        drop(guard);
        result
    }

    pub fn receipts(&self) -> Receipts {
        self.state().receipts.clone()
    }

    pub fn journal(&self) -> Journal {
        self.state().journal.clone()
    }

    /// Undo every change the agent made (file tools and commands alike).
    pub fn undo(&self) -> UndoReport {
        let state = self.state();
        state.journal.undo(&self.fs)
    }

    /// The specs of the tools granted to this agent, in contract order.
    pub fn specs(&self) -> Vec<ToolSpec> {
        static SPECS: OnceLock<Vec<ToolSpec>> = OnceLock::new();
        SPECS
            .get_or_init(tool_specs)
            .iter()
            .filter(|spec| self.policy.tools.contains(&spec.name))
            .cloned()
            .collect()
    }

    /// Run one tool call. Never fails; errors come back as error output.
    pub async fn call(&self, name: &str, input: &Value) -> ToolOutput {
        let started_at = std::time::SystemTime::now();
        let clock = std::time::Instant::now();
        {
            let mut state = self.state();
            state.receipts.tool_calls += 1;
            state.receipts.tools_called.push(name.to_string());
            state.touched.clear();
        }
        let result = match self.policy.check_tool(name) {
            Err(reason) => Err(Failure::Denied {
                target: name.to_string(),
                reason,
            }),
            Ok(()) => match name {
                "read_file" => self.read_file(input),
                "write_file" => self.write_file(input).await,
                "edit_file" => self.edit_file(input).await,
                "list_files" => self.list_files(input),
                "search" => self.search(input),
                "bash" => self.bash(input).await,
                _ => Err(Failure::Failed(format!("unknown tool `{name}`"))),
            },
        };
        let (output, outcome) = match result {
            Ok(text) => (
                ToolOutput::ok(truncate(text, self.limits.max_output_bytes)),
                CallOutcome::Ok,
            ),
            Err(Failure::Failed(message)) => (ToolOutput::error(message), CallOutcome::Error),
            Err(Failure::Denied { target, reason }) => {
                let message = format!("denied: {target}: {reason}");
                self.state().receipts.denials.push(Denial {
                    agent_id: self.policy.agent_id.clone(),
                    tool: name.to_string(),
                    target,
                    reason,
                });
                (ToolOutput::error(message), CallOutcome::Denied)
            }
        };
        let written = match name {
            "write_file" => input.get("content").and_then(Value::as_str).map(str::len),
            "edit_file" => input
                .get("new_string")
                .and_then(Value::as_str)
                .map(str::len),
            _ => None,
        };
        let bytes = match (outcome, written) {
            (CallOutcome::Ok, Some(written)) => written,
            _ => output.content.len(),
        } as u64;
        let target = ["path", "command", "pattern", "dir"]
            .iter()
            .find_map(|key| input.get(*key).and_then(Value::as_str))
            .map(|text| truncate(text.to_owned(), 1024));
        let mut state = self.state();
        let seq = state.receipts.calls.len() as u32 + 1;
        let paths = std::mem::take(&mut state.touched);
        state.receipts.calls.push(ToolCallReceipt {
            seq,
            tool: name.to_owned(),
            target,
            outcome,
            error: (outcome != CallOutcome::Ok).then(|| truncate(output.content.clone(), 2048)),
            started_at,
            duration_ms: clock.elapsed().as_millis() as u64,
            bytes,
            paths,
        });
        output
    }

    /// Resolve a path argument, turning a refusal into a denial on `raw`.
    fn path(&self, input: &Value, key: &str) -> Result<(String, String), Failure> {
        let raw = string_arg(input, key)?;
        match self.fs.resolve(&raw) {
            Ok(relative) => Ok((raw, relative)),
            Err(FsError::Denied(reason)) => Err(Failure::Denied {
                target: raw,
                reason,
            }),
            Err(error) => Err(error.into()),
        }
    }

    fn fs_failure(raw: &str, error: FsError) -> Failure {
        match error {
            FsError::Denied(reason) => Failure::Denied {
                target: raw.to_string(),
                reason,
            },
            other => other.into(),
        }
    }

    fn check_read(&self, raw: &str, relative: &str) -> Result<(), Failure> {
        self.policy
            .check_read(relative)
            .map_err(|reason| Failure::Denied {
                target: raw.to_string(),
                reason,
            })
    }

    fn check_write(&self, raw: &str, relative: &str) -> Result<(), Failure> {
        self.policy
            .check_write(relative)
            .map_err(|reason| Failure::Denied {
                target: raw.to_string(),
                reason,
            })
    }

    fn read_file(&self, input: &Value) -> Result<String, Failure> {
        let (raw, relative) = self.path(input, "path")?;
        self.check_read(&raw, &relative)?;
        let bytes = self
            .fs
            .read(&relative, self.limits.max_file_bytes)
            .map_err(|error| Self::fs_failure(&raw, error))?;
        {
            let mut state = self.state();
            state.receipts.files_read.insert(relative.clone());
            state.touch(&relative);
        }
        let text = String::from_utf8_lossy(&bytes);
        let lines: Vec<&str> = text.lines().collect();
        let start = optional_u64(input, "start_line")?.unwrap_or(1).max(1) as usize;
        let end = optional_u64(input, "end_line")?
            .map_or(lines.len(), |end| end as usize)
            .min(lines.len());
        if start > end.max(1) && !lines.is_empty() {
            return Err(Failure::Failed(format!(
                "{relative} has {} lines; start_line {start} is past the end",
                lines.len()
            )));
        }
        let mut out = format!("{relative} (lines {start}-{end} of {}):\n", lines.len());
        for (index, line) in lines.iter().enumerate().take(end).skip(start - 1) {
            out.push_str(&format!("{:>6}\t{line}\n", index + 1));
        }
        Ok(out)
    }

    /// Record the pre-image of `relative` in the journal, then write `content` to it.
    /// Blocking: called inside [`Toolbox::blocking`].
    fn write_checked(
        fs: &ScopedFs,
        state: &Mutex<State>,
        raw: &str,
        relative: &str,
        content: &[u8],
    ) -> Result<(), Failure> {
        let mut state = lock_state(state);
        state
            .journal
            .capture(fs, relative)
            .map_err(|error| Self::fs_failure(raw, error))?;
        let created = fs
            .write(relative, content, None)
            .map_err(|error| Self::fs_failure(raw, error))?;
        for dir in created {
            state.journal.record_created_dir(&dir);
        }
        state.receipts.files_written.insert(relative.to_string());
        state.touch(relative);
        Ok(())
    }

    async fn write_file(&self, input: &Value) -> Result<String, Failure> {
        let (raw, relative) = self.path(input, "path")?;
        self.check_write(&raw, &relative)?;
        self.writes.record(&relative, &self.policy.agent_id);
        let content = string_arg(input, "content")?;
        self.blocking(move |fs, state| {
            Self::write_checked(fs, state, &raw, &relative, content.as_bytes())?;
            Ok(format!("wrote {} bytes to {relative}", content.len()))
        })
        .await
    }

    async fn edit_file(&self, input: &Value) -> Result<String, Failure> {
        let (raw, relative) = self.path(input, "path")?;
        self.check_write(&raw, &relative)?;
        let old = string_arg(input, "old_text")?;
        let new = string_arg(input, "new_text")?;
        if old.is_empty() {
            return Err(Failure::Failed("old_text must not be empty".into()));
        }
        self.writes.record(&relative, &self.policy.agent_id);
        let max_file_bytes = self.limits.max_file_bytes;
        self.blocking(move |fs, state| {
            let bytes = fs
                .read(&relative, max_file_bytes)
                .map_err(|error| Self::fs_failure(&raw, error))?;
            let text = String::from_utf8(bytes)
                .map_err(|_| Failure::Failed(format!("{relative} is not UTF-8 text")))?;
            let count = text.matches(old.as_str()).count();
            if count != 1 {
                return Err(Failure::Failed(format!(
                    "old_text occurs {count} times in {relative}; it must match exactly once \
                     (include more surrounding lines)"
                )));
            }
            let edited = text.replacen(old.as_str(), &new, 1);
            Self::write_checked(fs, state, &raw, &relative, edited.as_bytes())?;
            lock_state(state)
                .receipts
                .files_read
                .insert(relative.clone());
            Ok(format!("edited {relative}"))
        })
        .await
    }

    /// Every regular file under `base` (relative), without following symlinks or entering
    /// `.git`, that the agent may read.
    fn walk(&self, base: &str) -> Vec<String> {
        let mut files = Vec::new();
        let mut pending = vec![base.to_string()];
        let cap = self.limits.max_list_entries * 20;
        while let Some(dir) = pending.pop() {
            let absolute = self.fs.root_path().join(&dir);
            let Ok(entries) = std::fs::read_dir(&absolute) else {
                continue;
            };
            let mut names: Vec<(String, std::fs::FileType)> = entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    Some((name, entry.file_type().ok()?))
                })
                .collect();
            names.sort_by(|a, b| b.0.cmp(&a.0));
            for (name, kind) in names {
                let relative = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                if kind.is_dir() && name != ".git" {
                    pending.push(relative);
                } else if kind.is_file() && self.policy.check_read(&relative).is_ok() {
                    files.push(relative);
                }
            }
            if files.len() > cap {
                break;
            }
        }
        files.sort();
        files
    }

    /// For a plain relative path (no glob characters, no empty, `.` or `..` parts): `Some` of
    /// what [`Toolbox::walk`] from the root would list for it — the path itself if it is a
    /// regular file reached through real directories (no symlinks, no `.git`) that the agent
    /// may read, else nothing. `None` when the pattern is not such a path.
    fn literal_file(&self, pattern: &str) -> Option<Option<String>> {
        if pattern.is_empty() || pattern.contains(['*', '?', '[', ']', '{', '}', '\\', '!']) {
            return None;
        }
        let parts: Vec<&str> = pattern.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || *p == "." || *p == "..")
        {
            return None;
        }
        let root = self.fs.root_path();
        let mut path = root.to_path_buf();
        for (index, part) in parts.iter().enumerate() {
            path.push(part);
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                return Some(None);
            };
            let last = index + 1 == parts.len();
            let ok = if last {
                meta.file_type().is_file()
            } else {
                meta.file_type().is_dir() && *part != ".git"
            };
            if !ok {
                return Some(None);
            }
        }
        if self.policy.check_read(pattern).is_err() {
            return Some(None);
        }
        Some(Some(pattern.to_string()))
    }

    fn base_dir(&self, input: &Value) -> Result<String, Failure> {
        match input.get("path").and_then(Value::as_str) {
            None => Ok(String::new()),
            Some(_) => {
                let (raw, relative) = self.path(input, "path")?;
                self.fs
                    .open_dir(&relative)
                    .map_err(|error| Self::fs_failure(&raw, error))?;
                Ok(relative)
            }
        }
    }

    fn list_files(&self, input: &Value) -> Result<String, Failure> {
        let base = self.base_dir(input)?;
        let pattern = input
            .get("pattern")
            .and_then(Value::as_str)
            .unwrap_or("**")
            .to_string();
        if base.is_empty()
            && let Some(found) = self.literal_file(&pattern)
        {
            // A pattern without glob characters names one path: answer it without listing
            // its directory (what the walk below would find, for a fraction of the work).
            let mut out = String::new();
            match found {
                Some(path) => {
                    out.push_str(&path);
                    out.push('\n');
                }
                None => out.push_str("no files match\n"),
            }
            return Ok(out);
        }
        let glob = GlobBuilder::new(&pattern)
            .literal_separator(true)
            .build()
            .map_err(|error| Failure::Failed(format!("invalid glob `{pattern}`: {error}")))?
            .compile_matcher();
        // Walk only beneath the pattern's literal directory (`src` for `src/**/*.rs`), once it
        // is known to be a real directory inside the repository.
        let start = if base.is_empty() {
            let literal: Vec<&str> = pattern
                .split('/')
                .take_while(|part| !part.contains(['*', '?', '[', '{', '\\']))
                .collect();
            // All literal: the last part names a file, its directory is the start.
            let whole = literal.len() == pattern.split('/').count();
            let keep = if whole {
                literal.len().saturating_sub(1)
            } else {
                literal.len()
            };
            let dir = literal[..keep].join("/");
            if !dir.is_empty() && self.fs.open_dir(&dir).is_ok() {
                dir
            } else {
                base.clone()
            }
        } else {
            base.clone()
        };
        let matched: Vec<String> = self
            .walk(&start)
            .into_iter()
            .filter(|path| {
                glob.is_match(path)
                    || path
                        .strip_prefix(&format!("{base}/"))
                        .is_some_and(|rest| glob.is_match(rest))
            })
            .collect();
        let total = matched.len();
        let mut out: String = matched
            .into_iter()
            .take(self.limits.max_list_entries)
            .map(|path| path + "\n")
            .collect();
        if total > self.limits.max_list_entries {
            out.push_str(&format!(
                "... {} more; narrow the pattern\n",
                total - self.limits.max_list_entries
            ));
        }
        if total == 0 {
            out.push_str("no files match\n");
        }
        Ok(out)
    }

    fn search(&self, input: &Value) -> Result<String, Failure> {
        let pattern = string_arg(input, "pattern")?;
        let regex = RegexBuilder::new(&pattern)
            .size_limit(1 << 20)
            .build()
            .map_err(|error| Failure::Failed(format!("invalid regex: {error}")))?;
        let base = self.base_dir(input)?;
        let glob = match input.get("glob").and_then(Value::as_str) {
            Some(glob) => Some(
                GlobBuilder::new(glob)
                    .literal_separator(true)
                    .build()
                    .map_err(|error| Failure::Failed(format!("invalid glob `{glob}`: {error}")))?
                    .compile_matcher(),
            ),
            None => None,
        };
        let mut out = String::new();
        let mut matches = 0;
        let mut searched = BTreeSet::new();
        'files: for path in self.walk(&base) {
            if glob.as_ref().is_some_and(|glob| !glob.is_match(&path)) {
                continue;
            }
            let Ok(bytes) = self.fs.read(&path, self.limits.max_file_bytes) else {
                continue;
            };
            if bytes.contains(&0) {
                continue;
            }
            searched.insert(path.clone());
            let text = String::from_utf8_lossy(&bytes);
            for (index, line) in text.lines().enumerate() {
                if regex.is_match(line) {
                    out.push_str(&format!("{path}:{}: {line}\n", index + 1));
                    matches += 1;
                    if matches >= self.limits.max_search_matches {
                        out.push_str("... more matches; narrow the search\n");
                        break 'files;
                    }
                }
            }
        }
        if matches == 0 {
            out.push_str("no matches\n");
        }
        {
            let mut state = self.state();
            for path in searched.iter().take(MAX_CALL_PATHS) {
                state.touch(path);
            }
            state.receipts.files_read.extend(searched);
        }
        Ok(out)
    }

    /// Run `argv` in this agent's sandbox without the allowlist check: for commands the
    /// engine itself runs (a workflow's test command) and for tests that stand in for an
    /// allowlisted command running arbitrary code (`npm test`). The kernel sandbox, the
    /// scrubbed environment, the snapshot revert and the receipts all apply as for `bash`.
    pub async fn exec_argv(&self, argv: &[String]) -> ToolOutput {
        self.run_command(argv).await.output
    }

    /// [`Toolbox::exec_argv`] with how the command ended: a caller that judges a command
    /// (the workflow's test command) decides on its exit status, never on its text.
    pub async fn run_command(&self, argv: &[String]) -> CommandRun {
        let line = argv.join(" ");
        let before = self.state().receipts.commands.len();
        let output = match self.run_argv(&line, argv.to_vec()).await {
            Ok(text) => ToolOutput::ok(truncate(text, self.limits.max_output_bytes)),
            Err(Failure::Failed(message)) => {
                return CommandRun {
                    output: ToolOutput::error(message),
                    exit: CommandExit::NotStarted,
                };
            }
            Err(Failure::Denied { target, reason }) => {
                return CommandRun {
                    output: ToolOutput::error(format!("denied: {target}: {reason}")),
                    exit: CommandExit::NotStarted,
                };
            }
        };
        let exit = self
            .state()
            .receipts
            .commands
            .get(before..)
            .and_then(|new| new.last())
            .map_or(CommandExit::Unknown, |receipt| {
                if receipt.timed_out {
                    CommandExit::TimedOut
                } else if let Some(code) = receipt.exit_code {
                    CommandExit::Exited(code)
                } else if let Some(signal) = receipt.signal {
                    CommandExit::Signal(signal)
                } else {
                    CommandExit::Unknown
                }
            });
        CommandRun { output, exit }
    }

    async fn bash(&self, input: &Value) -> Result<String, Failure> {
        let line = string_arg(input, "command")?;
        let denied = |reason| Failure::Denied {
            target: line.clone(),
            reason,
        };
        let argv = shell::parse_command_line(&line).map_err(denied)?;
        self.policy.check_command(&argv).map_err(denied)?;
        self.run_argv(&line, argv).await
    }

    async fn run_argv(&self, line: &str, argv: Vec<String>) -> Result<String, Failure> {
        let denied = |reason| Failure::Denied {
            target: line.to_string(),
            reason,
        };
        let Some(sandbox) = &self.sandbox else {
            let detail = self
                .sandbox_error
                .as_ref()
                .map_or("no sandbox".to_string(), ToString::to_string);
            return Err(denied(DenyReason::SandboxUnavailable { detail }));
        };
        let program_name = argv.first().cloned().unwrap_or_default();
        let Some(program) = shell::resolve_program(&program_name) else {
            return Err(Failure::Failed(format!(
                "`{program_name}` is not installed (looked in {})",
                shell::SAFE_PATH
            )));
        };
        let is_git = program_name == "git";
        let args = if is_git {
            shell::git_args(self.fs.root_path(), &argv)
        } else {
            argv.iter().skip(1).cloned().collect()
        };
        let env = shell::command_env(sandbox.temp_dir(), is_git);
        let since = self.writes.now();
        let outcome = sandbox
            .run(&program, &args, self.fs.root_path(), &env)
            .await
            .map_err(|error| match error {
                SandboxError::HardLink(_) => Failure::Denied {
                    target: format!("{line} ({error})"),
                    reason: DenyReason::HardLink,
                },
                other => denied(DenyReason::SandboxUnavailable {
                    detail: other.to_string(),
                }),
            })?;

        let (written, violations) = self.settle_changes(&outcome.changes, since);
        let receipt = CommandReceipt {
            argv: argv.clone(),
            exit_code: outcome.exit_code,
            signal: outcome.signal,
            timed_out: outcome.timed_out,
            files_written: written.clone(),
            violations: violations.clone(),
            duration_ms: outcome.duration.as_millis() as u64,
        };
        {
            let mut state = self.state();
            for path in &written {
                state.touch(path);
            }
            state.receipts.files_written.extend(written);
            for violation in &violations {
                state.receipts.denials.push(Denial {
                    agent_id: self.policy.agent_id.clone(),
                    tool: "bash".into(),
                    target: violation.clone(),
                    reason: DenyReason::ScopeViolation,
                });
            }
            state.receipts.commands.push(receipt);
        }
        let mut out = String::new();
        match (outcome.exit_code, outcome.signal, outcome.timed_out) {
            (_, _, true) => out.push_str(&format!(
                "timed out after {:?}; the command and its children were killed\n",
                sandbox.config().timeout
            )),
            (Some(code), _, _) => out.push_str(&format!("exit code {code}\n")),
            (None, Some(signal), _) => out.push_str(&format!("killed by signal {signal}\n")),
            (None, None, _) => out.push_str("exit status unknown\n"),
        }
        if !outcome.stdout.is_empty() {
            out.push_str("--- stdout ---\n");
            out.push_str(&String::from_utf8_lossy(&outcome.stdout));
            out.push('\n');
        }
        if !outcome.stderr.is_empty() {
            out.push_str("--- stderr ---\n");
            out.push_str(&String::from_utf8_lossy(&outcome.stderr));
            out.push('\n');
        }
        if outcome.truncated_bytes > 0 {
            out.push_str(&format!(
                "({} bytes of output dropped)\n",
                outcome.truncated_bytes
            ));
        }
        if !violations.is_empty() {
            out.push_str(&format!(
                "the command changed paths outside the declared scope; reverted: {}\n",
                violations.join(", ")
            ));
        }
        Ok(out)
    }

    /// Journal the declared changes a command made and revert the rest.
    fn settle_changes(
        &self,
        changes: &[crate::sandbox::PathChange],
        since: u64,
    ) -> (Vec<String>, Vec<String>) {
        let mut written = Vec::new();
        let mut violations = Vec::new();
        let mut created_dirs = Vec::new();
        let mut state = self.state();
        for change in changes {
            let Ok(relative) = change.path.strip_prefix(self.fs.root_path()) else {
                continue;
            };
            let relative = relative.to_string_lossy().into_owned();
            if change.is_dir && !change.is_special {
                if change.kind == ChangeKind::Created {
                    created_dirs.push(relative);
                }
                continue;
            }
            let prior = match &change.before {
                Some((content, mode)) => FileState::File {
                    content: content.clone(),
                    mode: *mode,
                },
                None => FileState::Absent,
            };
            if !change.is_special && self.policy.check_write(&relative).is_ok() {
                self.writes.record(&relative, &self.policy.agent_id);
                state.journal.record_file(&relative, prior);
                written.push(relative);
                continue;
            }
            // Another agent's work in a directory this command could also write: theirs.
            if self
                .writes
                .written_by_other_since(&relative, &self.policy.agent_id, since)
            {
                continue;
            }
            let _ = self.fs.remove(&relative);
            if let FileState::File { content, mode } = &prior
                && let Err(error) = self.fs.write(&relative, content, Some(*mode))
            {
                violations.push(format!("{relative} (NOT reverted: {error})"));
                continue;
            }
            violations.push(relative);
        }
        created_dirs.sort_by_key(|dir| std::cmp::Reverse(dir.matches('/').count()));
        for dir in created_dirs {
            let keeps_declared = written
                .iter()
                .any(|path| path.starts_with(&format!("{dir}/")));
            if keeps_declared {
                state.journal.record_created_dir(&dir);
            } else if self
                .writes
                .written_under_by_other_since(&dir, &self.policy.agent_id, since)
            {
                // Created by another agent's write meanwhile: theirs, as its files are.
            } else {
                let _ = self.fs.remove_empty_dir(&dir);
                violations.push(format!("{dir}/"));
            }
        }
        (written, violations)
    }
}

fn lock_state(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn string_arg(input: &Value, key: &str) -> Result<String, Failure> {
    input
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| Failure::Failed(format!("missing string argument `{key}`")))
}

fn optional_u64(input: &Value, key: &str) -> Result<Option<u64>, Failure> {
    match input.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| Failure::Failed(format!("`{key}` must be a positive integer"))),
    }
}

fn truncate(mut text: String, cap: usize) -> String {
    if text.len() > cap {
        let mut end = cap;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let dropped = text.len() - end;
        text.truncate(end);
        text.push_str(&format!(
            "\n... ({dropped} bytes cut; ask for a narrower range)\n"
        ));
    }
    text
}

#[derive(Debug, Clone, Default)]
struct Scan {
    gitdirs: Vec<String>,
    hidden: Vec<PathBuf>,
}

/// What every toolbox of a repository needs to know about it: the `gitdir:` targets of `.git`
/// files (protected) and the secret files (hidden from commands). Agents can create neither
/// (both are protected by name), so one scan serves a whole run: the engine takes it once
/// instead of walking the repository for each of 1,000 agents.
#[derive(Debug, Clone, Default)]
pub struct RepoFacts {
    scan: Scan,
    /// Shared by every toolbox made from these facts (one run).
    writes: Arc<WriteLedger>,
}

impl RepoFacts {
    /// Walk the repository under `root` once.
    pub fn scan(root: &Path) -> RepoFacts {
        RepoFacts {
            scan: scan_repository(root),
            writes: Arc::default(),
        }
    }
}

/// Which agent last wrote each path through fanout (its file tools, or a command's declared
/// change), in one order for the whole run.
///
/// A command's writable directories are snapshotted around it, and what changed there outside
/// the agent's scope is reverted. Other agents write into the same directories meanwhile (21
/// test writers in one `tests/` directory while one of them runs `npm test`): those writes
/// are theirs, so a command's settlement leaves alone any path another agent wrote after the
/// command started, instead of deleting or rolling back their work.
#[derive(Debug, Default)]
pub struct WriteLedger {
    seq: std::sync::atomic::AtomicU64,
    last: Mutex<std::collections::HashMap<String, (AgentId, u64)>>,
}

impl WriteLedger {
    /// The current position: writes recorded from now on are "since" it.
    fn now(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    /// `agent` is about to write `path` (recorded before the write, so no settlement can see
    /// the change without the record).
    fn record(&self, path: &str, agent: &AgentId) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(path.to_owned(), (agent.clone(), seq));
    }

    /// Did an agent other than `agent` write anything under the directory `dir` after
    /// `since` (so a directory that appeared during a command may be theirs)?
    fn written_under_by_other_since(&self, dir: &str, agent: &AgentId, since: u64) -> bool {
        let prefix = format!("{dir}/");
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|(path, (writer, seq))| {
                writer != agent && *seq > since && path.starts_with(&prefix)
            })
    }

    /// Did an agent other than `agent` write `path` after `since`?
    fn written_by_other_since(&self, path: &str, agent: &AgentId, since: u64) -> bool {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(path)
            .is_some_and(|(writer, seq)| writer != agent && *seq > since)
    }
}

/// Find `.git` files (their `gitdir:` targets inside the repository are protected) and
/// secret files (hidden from commands).
fn scan_repository(root: &Path) -> Scan {
    let mut scan = Scan {
        gitdirs: Vec::new(),
        hidden: Vec::new(),
    };
    let mut pending = vec![root.to_path_buf()];
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        visited += 1;
        if visited > 100_000 {
            break;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name == ".git" {
                if kind.is_file()
                    && let Some(target) = gitdir_target(&path)
                    && let Ok(relative) = target.strip_prefix(root)
                {
                    scan.gitdirs.push(relative.to_string_lossy().into_owned());
                }
                continue;
            }
            if is_secret_name(&name) && !kind.is_dir() {
                scan.hidden.push(path);
            } else if kind.is_dir() {
                pending.push(path);
            }
        }
    }
    scan
}

fn gitdir_target(dot_git: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(dot_git).ok()?;
    let target = text
        .lines()
        .find_map(|line| line.strip_prefix("gitdir:"))?
        .trim();
    let base = dot_git.parent()?;
    let joined = base.join(target);
    joined.canonicalize().ok().or(Some(joined))
}

/// Turn the write scope into Landlock grants: the directories named by the scope (or the
/// parents of named files), but never the repository root itself (which holds `.git`): at
/// the root, existing declared files are granted one by one.
fn write_grants(root: &Path, policy: &ScopePolicy, hidden: Vec<PathBuf>) -> WriteGrants {
    let mut grants = WriteGrants {
        hidden,
        ..WriteGrants::default()
    };
    for pattern in policy.write.patterns() {
        let literal: Vec<&str> = pattern
            .split('/')
            .take_while(|part| !part.contains(['*', '?', '[', '{']))
            .collect();
        let is_glob = literal.len() != pattern.split('/').count();
        let mut candidate = root.join(literal.join("/"));
        let existing_file =
            !is_glob && std::fs::symlink_metadata(&candidate).is_ok_and(|meta| meta.is_file());
        if existing_file && policy.check_write(pattern).is_ok() {
            grants.files.push(candidate);
            continue;
        }
        if !is_glob && !candidate.is_dir() {
            candidate.pop();
        }
        while !candidate.is_dir() && candidate.pop() {}
        let Ok(canonical) = candidate.canonicalize() else {
            continue;
        };
        // No symlinks on the way and no protected directory.
        if canonical != candidate || !canonical.starts_with(root) {
            continue;
        }
        let relative = canonical
            .strip_prefix(root)
            .map(|path| path.to_string_lossy().into_owned())
            .unwrap_or_default();
        if relative.is_empty() {
            continue;
        }
        if policy.is_protected(&relative) {
            continue;
        }
        if !grants.dirs.iter().any(|dir| canonical.starts_with(dir)) {
            grants.dirs.retain(|dir| !dir.starts_with(&canonical));
            grants.dirs.push(canonical);
        }
    }
    grants
}

/// The specs of all six tools, in contract order.
pub fn tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "read_file".into(),
            description: "Read a text file in the repository. Paths are relative to the \
                repository root. Optionally give a 1-based line range. Large files are refused; \
                read them in ranges."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the repository root"},
                    "start_line": {"type": "integer", "minimum": 1, "description": "First line to return (1-based)"},
                    "end_line": {"type": "integer", "minimum": 1, "description": "Last line to return (inclusive)"}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "write_file".into(),
            description: "Create or replace a file with the given content. Only files in your \
                declared scope can be written; .git, .fanout and secret files never can."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the repository root"},
                    "content": {"type": "string", "description": "The complete new content"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "edit_file".into(),
            description: "Replace one exact occurrence of old_text with new_text in a file in \
                your scope. old_text must occur exactly once; include surrounding lines to make \
                it unique."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "old_text": {"type": "string", "description": "Text to replace, matched exactly"},
                    "new_text": {"type": "string", "description": "Replacement text"}
                },
                "required": ["path", "old_text", "new_text"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "list_files".into(),
            description: "List files you may read, matching a glob (default `**`), optionally \
                under a directory."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Glob such as `src/**/*.rs`"},
                    "path": {"type": "string", "description": "Directory to list under"}
                },
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "search".into(),
            description: "Search file contents with a regular expression; returns \
                `path:line: text` for each matching line."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Regular expression (Rust syntax)"},
                    "path": {"type": "string", "description": "Directory to search under"},
                    "glob": {"type": "string", "description": "Only files matching this glob"}
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "bash".into(),
            description: "Run one allowlisted command in the repository root, without a shell: \
                no pipes, redirections, `;`, `&&`, `$(...)` or environment prefixes. It runs in \
                a sandbox with no network and writes limited to your scope."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line, e.g. `git diff`"}
                },
                "required": ["command"],
                "additionalProperties": false
            }),
        },
    ]
}
