//! Plan validation: is every sub-task inside what the workflow file allows?
//!
//! Checks, each reported as a [`Violation`] naming the agent, the offending value and why:
//! ids (present, well formed, unique); scope entries (relative, no `..`, valid globs, inside
//! `paths.allow`/`paths.deny`, clear of protected paths — for reads as well as writes, since
//! protected paths hold secrets); tools (known, allowed by `agent_permissions`); shell
//! commands (plain commands on the allowlist, and the `bash` tool to run them); outbound
//! network; roles; `depends_on` (known ids, no cycles); the agent count; and write scopes
//! that overlap between agents that could run at the same time (neither depends, directly or
//! not, on the other).
//!
//! Overlap is decided on concrete claims: existing files a write scope matches, literal paths
//! (files to create), and whole directories (a literal directory, or a glob `dir/**`). Two
//! other globs (`src/*.ts`, `src/*.md`) conflict only through the existing files both match.
//!
//! Sensitive paths on `fast` are not violations: the agent is moved to `default` and the
//! move is reported as an [`Adjustment`]. So is a mode the workflow's `mode_routing` overrides.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use globset::{Glob, GlobBuilder};
use serde::Serialize;

use super::scan::RepoScan;
use super::types::{FILE_TOOLS, Plan, TOOL_NAMES, TaskId, WRITE_TOOLS};
use crate::config::{Config, ExternalApi, FileAccess, Mode, ShellCommand, ShellExec};
use crate::policy::{AgentSpec, ScopePolicy};

/// The most sub-agents one plan may have. `max_parallel_agents` bounds how many run at once;
/// this bounds how many exist (each costs at least a model call and a row in the run store).
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

/// Most overlap violations listed one by one; the rest are counted in one more.
const MAX_OVERLAP_VIOLATIONS: usize = 100;

/// Limits on a plan that are not in the workflow file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanLimits {
    pub max_agents: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_agents: DEFAULT_MAX_AGENTS,
        }
    }
}

/// What rule a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ViolationKind {
    /// The plan is not the plan format (or cannot be read).
    Schema,
    WorkflowMismatch,
    NoSubtasks,
    TooManyAgents,
    InvalidId,
    DuplicateId,
    InvalidScope,
    AbsolutePath,
    ParentPath,
    OutsideAllowedPaths,
    ProtectedPath,
    ToolNotAllowed,
    ShellNotAllowed,
    ExternalApiDenied,
    UnknownRole,
    UnknownDependency,
    DependencyCycle,
    WriteOverlap,
    OverBudget,
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The agent, or `None` for the plan as a whole.
    pub agent: Option<TaskId>,
    pub kind: ViolationKind,
    /// The offending value (`scope \`../secrets\``).
    pub what: String,
    /// Why it is refused.
    pub why: String,
}

impl Violation {
    fn new(
        agent: Option<&TaskId>,
        kind: ViolationKind,
        what: impl Into<String>,
        why: impl Into<String>,
    ) -> Self {
        Violation {
            agent: agent.cloned(),
            kind,
            what: what.into(),
            why: why.into(),
        }
    }

    /// `agent: what — why`, the line the report and the repair message use.
    pub fn line(&self) -> String {
        let agent = self.agent.as_ref().map_or("plan", TaskId::as_str);
        format!("{agent}: {} — {}", self.what, self.why)
    }
}

/// A change made to the plan instead of refusing it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adjustment {
    pub agent: TaskId,
    pub what: String,
    pub why: String,
}

/// The files one agent's scope resolves to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ResolvedScope {
    /// Indices into [`RepoScan::files`] the agent may read (its write scope included).
    pub read_files: Vec<usize>,
    /// Indices into [`RepoScan::files`] the agent may write.
    pub write_files: Vec<usize>,
    /// Paths in the write scope that do not exist yet (files to create).
    pub new_files: Vec<String>,
    /// Whole directories the agent may write (`src/auth/`; `""` is the repository).
    pub write_dirs: Vec<String>,
}

/// The outcome of validating a plan.
#[derive(Debug, Clone)]
pub struct Validation {
    /// The plan with adjustments applied (modes).
    pub plan: Plan,
    pub violations: Vec<Violation>,
    pub adjustments: Vec<Adjustment>,
    /// Per sub-task, in plan order.
    pub scopes: Vec<ResolvedScope>,
    /// Distinct files in any scope (existing ones plus files to create).
    pub files_in_scope: usize,
}

impl Validation {
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A normalized scope entry.
enum Entry {
    /// A file or directory path (no glob characters), normalized, `""` for the root.
    Literal(String),
    Glob {
        pattern: String,
        matcher: globset::GlobMatcher,
        /// The literal directory prefix before the first glob character (`src/` for
        /// `src/**/*.ts`), to scan only that range of files.
        base: String,
        /// The glob is `dir/**` (or `**`): it claims the whole directory.
        whole_dir: Option<String>,
    },
}

/// Cached path-rule answers per scanned file: bit 0 known, 1 allowed, 2 never writable,
/// 3 sensitive, 4 not readable. "Never writable" and "not readable" are the runtime policy's
/// own answers ([`ScopePolicy::is_protected`], [`ScopePolicy::check_read`]): a dry run flags
/// exactly what a live run would refuse.
struct FileFlags<'a> {
    config: &'a Config,
    runtime: &'a ScopePolicy,
    scan: &'a RepoScan,
    flags: Vec<u8>,
}

const KNOWN: u8 = 1;
const ALLOWED: u8 = 2;
const PROTECTED: u8 = 4;
const SENSITIVE: u8 = 8;
const UNREADABLE: u8 = 16;

impl<'a> FileFlags<'a> {
    fn new(config: &'a Config, runtime: &'a ScopePolicy, scan: &'a RepoScan) -> Self {
        FileFlags {
            config,
            runtime,
            scan,
            flags: vec![0; scan.files.len()],
        }
    }

    fn get(&mut self, index: usize) -> u8 {
        let cached = self.flags[index];
        if cached & KNOWN != 0 {
            return cached;
        }
        let path = self.scan.files[index].path.as_str();
        let value = path_flags(self.config, self.runtime, path);
        self.flags[index] = value;
        value
    }
}

fn path_flags(config: &Config, runtime: &ScopePolicy, path: &str) -> u8 {
    let mut value = KNOWN;
    if config.paths.is_allowed(path) {
        value |= ALLOWED;
    }
    if runtime.is_protected(path) {
        value |= PROTECTED;
    }
    if runtime.check_read(path).is_err() {
        value |= UNREADABLE;
    }
    if config.is_sensitive(path) {
        value |= SENSITIVE;
    }
    value
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

/// Normalize one scope entry, or say why it is refused.
fn parse_entry(raw: &str) -> Result<Entry, (ViolationKind, String)> {
    let text = raw.trim();
    if text.is_empty() {
        return Err((ViolationKind::InvalidScope, "an empty path".into()));
    }
    if text.contains('\\') {
        return Err((
            ViolationKind::InvalidScope,
            "contains `\\`; scopes use `/` separators".into(),
        ));
    }
    let bytes = text.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if text.starts_with('/') || text.starts_with('~') || drive {
        return Err((
            ViolationKind::AbsolutePath,
            "absolute paths are refused; scopes are relative to the repository root".into(),
        ));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err((
                    ViolationKind::ParentPath,
                    "`..` leads outside the repository".into(),
                ));
            }
            part => parts.push(part),
        }
    }
    let normalized = parts.join("/");
    if !is_glob(&normalized) {
        return Ok(Entry::Literal(normalized));
    }
    let glob = GlobBuilder::new(&normalized)
        .literal_separator(true)
        .build()
        .map_err(|err| {
            (
                ViolationKind::InvalidScope,
                format!("not a valid glob: {err}"),
            )
        })?;
    let base = glob_base(&normalized);
    let whole_dir = if normalized == "**" {
        Some(String::new())
    } else {
        normalized
            .strip_suffix("/**")
            .filter(|dir| !is_glob(dir))
            .map(|dir| format!("{dir}/"))
    };
    Ok(Entry::Glob {
        matcher: Glob::compile_matcher(&glob),
        pattern: normalized,
        base,
        whole_dir,
    })
}

/// The directory prefix before the first glob character, with its trailing `/`.
fn glob_base(pattern: &str) -> String {
    let mut base = String::new();
    for part in pattern.split('/') {
        if is_glob(part) {
            break;
        }
        base.push_str(part);
        base.push('/');
    }
    base
}

/// What one entry covers.
struct Covered {
    files: Vec<usize>,
    /// A literal path that is not a scanned file and has no files below it.
    new_file: Option<String>,
    /// The directory it claims entirely (`src/`, `""`).
    dir: Option<String>,
    /// Paths that stand for what the entry could reach beyond existing files, checked
    /// against the path rules too (`.git/x` for `.git`, the pattern itself for a glob).
    probes: Vec<String>,
}

fn cover(entry: &Entry, scan: &RepoScan) -> Covered {
    match entry {
        Entry::Literal(path) => {
            if path.is_empty() {
                return Covered {
                    files: (0..scan.files.len()).collect(),
                    new_file: None,
                    dir: Some(String::new()),
                    probes: vec!["x".into()],
                };
            }
            if let Some(index) = scan.find(path) {
                return Covered {
                    files: vec![index],
                    new_file: None,
                    dir: None,
                    probes: Vec::new(),
                };
            }
            let dir = format!("{path}/");
            let range = scan.prefix_range(&dir);
            let probes = vec![path.clone(), format!("{dir}x")];
            if range.is_empty() {
                Covered {
                    files: Vec::new(),
                    new_file: Some(path.clone()),
                    dir: None,
                    probes,
                }
            } else {
                Covered {
                    files: range.collect(),
                    new_file: None,
                    dir: Some(dir),
                    probes,
                }
            }
        }
        Entry::Glob {
            pattern,
            matcher,
            base,
            whole_dir,
        } => {
            let files = scan
                .prefix_range(base)
                .filter(|&index| matcher.is_match(&scan.files[index].path))
                .collect();
            let mut probes = vec![pattern.clone()];
            if !base.is_empty() {
                probes.push(format!("{base}x"));
            }
            Covered {
                files,
                new_file: None,
                dir: whole_dir.clone(),
                probes,
            }
        }
    }
}

/// Validate `plan` against `config` over the scanned repository.
pub fn validate(
    mut plan: Plan,
    config: &Config,
    scan: &RepoScan,
    limits: &PlanLimits,
) -> Validation {
    let mut violations = Vec::new();
    let mut adjustments = Vec::new();
    // The runtime's policy for this workflow (no scope of its own: only its path rules).
    let runtime = match ScopePolicy::from_config(config, &AgentSpec::default()) {
        Ok(runtime) => runtime,
        Err(error) => {
            let scopes = vec![ResolvedScope::default(); plan.subtasks.len()];
            return Validation {
                plan,
                violations: vec![Violation::new(
                    None,
                    ViolationKind::ProtectedPath,
                    "paths.protected".to_owned(),
                    format!("cannot be compiled into the runtime policy: {error}"),
                )],
                adjustments,
                scopes,
                files_in_scope: 0,
            };
        }
    };
    let mut flags = FileFlags::new(config, &runtime, scan);

    if plan.workflow != config.name {
        violations.push(Violation::new(
            None,
            ViolationKind::WorkflowMismatch,
            format!("workflow `{}`", plan.workflow),
            format!("the workflow file is `{}`", config.name),
        ));
    }
    if plan.subtasks.is_empty() {
        violations.push(Violation::new(
            None,
            ViolationKind::NoSubtasks,
            "subtasks",
            "the plan has no sub-tasks",
        ));
    }
    if plan.subtasks.len() > limits.max_agents {
        violations.push(Violation::new(
            None,
            ViolationKind::TooManyAgents,
            format!("{} sub-tasks", plan.subtasks.len()),
            format!("a run may have at most {} agents", limits.max_agents),
        ));
    }

    // Ids.
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut reported_duplicates: BTreeSet<String> = BTreeSet::new();
    for (index, subtask) in plan.subtasks.iter().enumerate() {
        let id = subtask.task_id.as_str();
        if !valid_id(id) {
            violations.push(Violation::new(
                Some(&subtask.task_id),
                ViolationKind::InvalidId,
                format!("task_id `{}`", id.escape_debug()),
                "ids are 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit",
            ));
        }
        // The first sub-task with an id is the one `depends_on` refers to.
        if index_of.contains_key(id) {
            if reported_duplicates.insert(id.to_owned()) {
                violations.push(Violation::new(
                    Some(&subtask.task_id),
                    ViolationKind::DuplicateId,
                    format!("task_id `{id}`"),
                    "two sub-tasks have this id",
                ));
            }
        } else {
            index_of.insert(id.to_owned(), index);
        }
    }

    let allowlist_text = if config.shell_allowlist.is_empty() {
        "the allowlist is empty".to_owned()
    } else {
        format!(
            "allowlisted: {}",
            config
                .shell_allowlist
                .iter()
                .map(ShellCommand::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };

    let mut scopes = Vec::with_capacity(plan.subtasks.len());
    let mut in_scope: BTreeSet<usize> = BTreeSet::new();
    let mut new_in_scope: BTreeSet<String> = BTreeSet::new();
    let mut mode_changes: Vec<(usize, Mode)> = Vec::new();

    for (index, subtask) in plan.subtasks.iter().enumerate() {
        let agent = Some(&subtask.task_id);
        let mut resolved = ResolvedScope::default();
        let mut sensitive: Option<String> = None;
        let write_entries = subtask.effective_write_scope();
        let read_only_entries = subtask
            .write_scope
            .iter()
            .flatten()
            .filter(|entry| !subtask.scope.contains(entry));
        let all_entries = subtask.scope.iter().chain(read_only_entries);
        let mut read = BTreeSet::new();
        for (raw, is_write) in all_entries
            .map(|raw| (raw, write_entries.contains(raw)))
            .collect::<Vec<_>>()
        {
            let what = format!("scope `{raw}`");
            let entry = match parse_entry(raw) {
                Ok(entry) => entry,
                Err((kind, why)) => {
                    violations.push(Violation::new(agent, kind, what, why));
                    continue;
                }
            };
            let covered = cover(&entry, scan);
            // Path rules over the covered files and the probes.
            let mut outside: Option<String> = None;
            let mut protected: Option<String> = None;
            for &file in &covered.files {
                let value = flags.get(file);
                let path = &scan.files[file].path;
                if value & ALLOWED == 0 && outside.is_none() {
                    outside = Some(path.clone());
                }
                let refused = if is_write { PROTECTED } else { UNREADABLE };
                if value & refused != 0 && protected.is_none() {
                    protected = Some(path.clone());
                }
                if value & SENSITIVE != 0 && sensitive.is_none() {
                    sensitive = Some(path.clone());
                }
            }
            for probe in &covered.probes {
                let value = path_flags(config, &runtime, probe);
                let shown = probe.strip_suffix("/x").unwrap_or(probe);
                if value & ALLOWED == 0 && outside.is_none() {
                    outside = Some(shown.to_owned());
                }
                let refused = if is_write { PROTECTED } else { UNREADABLE };
                if value & refused != 0 && protected.is_none() {
                    protected = Some(shown.to_owned());
                }
                if value & SENSITIVE != 0 && sensitive.is_none() {
                    sensitive = Some(shown.to_owned());
                }
            }
            if let Some(path) = outside {
                violations.push(Violation::new(
                    agent,
                    ViolationKind::OutsideAllowedPaths,
                    what.clone(),
                    format!(
                        "reaches `{path}`, outside the allowed paths (paths.allow / paths.deny)"
                    ),
                ));
            }
            if let Some(path) = protected {
                violations.push(Violation::new(
                    agent,
                    ViolationKind::ProtectedPath,
                    what.clone(),
                    format!(
                        "reaches `{path}`, a protected path (.git, .fanout, package-manager and git config, secrets, paths.protected); agents may not {}",
                        if is_write { "write it" } else { "read it (a secret)" }
                    ),
                ));
            }
            read.extend(covered.files.iter().copied());
            if is_write {
                resolved.write_files.extend(covered.files.iter().copied());
                if let Some(dir) = covered.dir {
                    resolved.write_dirs.push(dir);
                }
            }
            if let Some(new_file) = covered.new_file {
                new_in_scope.insert(new_file.clone());
                if is_write {
                    resolved.new_files.push(new_file);
                }
            }
        }
        resolved.write_files.sort_unstable();
        resolved.write_files.dedup();
        in_scope.extend(read.iter().copied());
        resolved.read_files = read.into_iter().collect();

        // Tools.
        for tool in &subtask.tools {
            let what = format!("tool `{tool}`");
            if !TOOL_NAMES.contains(&tool.as_str()) {
                violations.push(Violation::new(
                    agent,
                    ViolationKind::ToolNotAllowed,
                    what,
                    format!("not a fanout tool (tools: {})", TOOL_NAMES.join(", ")),
                ));
                continue;
            }
            let access = config.agent_permissions.file_access;
            let refused = if access == FileAccess::None && FILE_TOOLS.contains(&tool.as_str()) {
                Some("agent_permissions.file_access is `none`")
            } else if access == FileAccess::ReadOnly && WRITE_TOOLS.contains(&tool.as_str()) {
                Some("agent_permissions.file_access is `read_only`")
            } else if tool == "bash" && config.agent_permissions.shell_exec == ShellExec::Deny {
                Some("agent_permissions.shell_exec is `deny`")
            } else {
                None
            };
            if let Some(why) = refused {
                violations.push(Violation::new(
                    agent,
                    ViolationKind::ToolNotAllowed,
                    what,
                    why,
                ));
            }
        }
        if subtask.has_tool("bash") && subtask.shell_commands.is_empty() {
            violations.push(Violation::new(
                agent,
                ViolationKind::ShellNotAllowed,
                "tool `bash`",
                "no shell_commands declared; list the commands the agent will run",
            ));
        }
        for command in &subtask.shell_commands {
            let what = format!("shell command `{command}`");
            if !subtask.has_tool("bash") {
                violations.push(Violation::new(
                    agent,
                    ViolationKind::ShellNotAllowed,
                    what.clone(),
                    "shell commands need the `bash` tool",
                ));
            }
            match ShellCommand::parse(command) {
                Err(err) => violations.push(Violation::new(
                    agent,
                    ViolationKind::ShellNotAllowed,
                    what,
                    format!("the command {err}; {}", err.hint()),
                )),
                Ok(parsed) => {
                    if !config.shell_command_allowed(parsed.argv()) {
                        let why = match config.agent_permissions.shell_exec {
                            ShellExec::Deny => "agent_permissions.shell_exec is `deny`".to_owned(),
                            _ => format!("not on the shell allowlist ({allowlist_text})"),
                        };
                        violations.push(Violation::new(
                            agent,
                            ViolationKind::ShellNotAllowed,
                            what,
                            why,
                        ));
                    }
                }
            }
        }
        if subtask.external_api && config.agent_permissions.external_api == ExternalApi::Deny {
            violations.push(Violation::new(
                agent,
                ViolationKind::ExternalApiDenied,
                "external_api: true",
                "agent_permissions.external_api is `deny`",
            ));
        }

        // Mode: the workflow's routing first, then the sensitive-path rule.
        let mut mode = subtask.mode;
        if let Some(role) = &subtask.role {
            match config.mode_routing.get(role) {
                Some(&routed) if routed != mode => {
                    adjustments.push(Adjustment {
                        agent: subtask.task_id.clone(),
                        what: format!("mode {} → {}", mode.as_str(), routed.as_str()),
                        why: format!("mode_routing.{role} is `{}`", routed.as_str()),
                    });
                    mode = routed;
                }
                Some(_) => {}
                None => violations.push(Violation::new(
                    agent,
                    ViolationKind::UnknownRole,
                    format!("role `{role}`"),
                    format!(
                        "not a mode_routing role (roles: {})",
                        config
                            .mode_routing
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
            }
        }
        if mode == Mode::Fast
            && let Some(path) = &sensitive
        {
            adjustments.push(Adjustment {
                agent: subtask.task_id.clone(),
                what: "mode fast → default".into(),
                why: format!("its scope covers `{path}`, a sensitive path (sensitive_paths)"),
            });
            mode = Mode::Default;
        }
        if mode != subtask.mode {
            mode_changes.push((index, mode));
        }
        scopes.push(resolved);
    }
    for (index, mode) in mode_changes {
        plan.subtasks[index].mode = mode;
    }

    // Dependencies.
    let mut graph: Vec<Vec<usize>> = Vec::with_capacity(plan.subtasks.len());
    for subtask in &plan.subtasks {
        let mut edges = Vec::new();
        for dependency in &subtask.depends_on {
            match index_of.get(dependency.as_str()) {
                Some(&target) => edges.push(target),
                None => violations.push(Violation::new(
                    Some(&subtask.task_id),
                    ViolationKind::UnknownDependency,
                    format!("depends_on `{dependency}`"),
                    "no sub-task has this id",
                )),
            }
        }
        graph.push(edges);
    }
    for cycle in find_cycles(&graph) {
        let Some(&first) = cycle.first() else {
            continue;
        };
        let mut names: Vec<&str> = cycle
            .iter()
            .map(|&i| plan.subtasks[i].task_id.as_str())
            .collect();
        names.push(plan.subtasks[first].task_id.as_str());
        violations.push(Violation::new(
            Some(&plan.subtasks[first].task_id),
            ViolationKind::DependencyCycle,
            format!("depends_on {}", names.join(" → ")),
            "a dependency cycle: none of these can ever start",
        ));
    }

    // Overlapping write scopes between agents that may run at the same time.
    overlaps(&plan, scan, &scopes, &graph, &mut violations);

    let files_in_scope = in_scope.len() + new_in_scope.len();
    Validation {
        plan,
        violations,
        adjustments,
        scopes,
        files_in_scope,
    }
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Every elementary cycle found by a depth-first search (one per back edge), as node lists.
fn find_cycles(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; graph.len()];
    let mut cycles = Vec::new();
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..graph.len() {
        if color[start] != WHITE {
            continue;
        }
        // (node, next edge index); `path` mirrors the grey nodes in order.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        let mut path: Vec<usize> = vec![start];
        color[start] = GREY;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = graph[node].get(*edge) {
                *edge += 1;
                match color[next] {
                    WHITE => {
                        color[next] = GREY;
                        stack.push((next, 0));
                        path.push(next);
                    }
                    GREY => {
                        if let Some(position) = path.iter().position(|&n| n == next) {
                            let cycle = path[position..].to_vec();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if seen.insert(key) {
                                cycles.push(cycle);
                            }
                        }
                    }
                    _ => {}
                }
            } else {
                color[node] = BLACK;
                stack.pop();
                path.pop();
            }
        }
    }
    cycles
}

/// Everything `node` depends on, directly or not, as a bit set.
fn ancestors(graph: &[Vec<usize>], node: usize) -> Vec<u64> {
    let mut bits = vec![0u64; graph.len().div_ceil(64)];
    let mut stack: Vec<usize> = graph[node].clone();
    while let Some(next) = stack.pop() {
        let (word, bit) = (next / 64, 1u64 << (next % 64));
        if bits[word] & bit == 0 {
            bits[word] |= bit;
            stack.extend(graph[next].iter().copied());
        }
    }
    bits
}

fn overlaps(
    plan: &Plan,
    scan: &RepoScan,
    scopes: &[ResolvedScope],
    graph: &[Vec<usize>],
    violations: &mut Vec<Violation>,
) {
    // Point claims: (path, agent), sorted by path.
    let mut points: Vec<(&str, usize)> = Vec::new();
    let mut dirs: Vec<(&str, usize)> = Vec::new();
    for (agent, scope) in scopes.iter().enumerate() {
        for &file in &scope.write_files {
            points.push((scan.files[file].path.as_str(), agent));
        }
        for path in &scope.new_files {
            points.push((path.as_str(), agent));
        }
        for dir in &scope.write_dirs {
            dirs.push((dir.as_str(), agent));
        }
    }
    points.sort_unstable();
    points.dedup();
    dirs.sort_unstable();
    dirs.dedup();

    // (a, b) with a < b → an example path both write.
    let mut pairs: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut add = |a: usize, b: usize, path: &str| {
        if a != b {
            pairs
                .entry((a.min(b), a.max(b)))
                .or_insert_with(|| path.to_owned());
        }
    };
    let mut start = 0;
    while start < points.len() {
        let mut end = start + 1;
        while end < points.len() && points[end].0 == points[start].0 {
            end += 1;
        }
        for i in start..end {
            for j in i + 1..end {
                add(points[i].1, points[j].1, points[i].0);
            }
        }
        start = end;
    }
    for &(dir, agent) in &dirs {
        let from = points.partition_point(|(path, _)| *path < dir);
        for &(path, other) in points[from..]
            .iter()
            .take_while(|(p, _)| p.starts_with(dir))
        {
            add(agent, other, path);
        }
        for &(other_dir, other) in &dirs {
            if other_dir.starts_with(dir) || dir.starts_with(other_dir) {
                let shown = if other_dir.len() > dir.len() {
                    other_dir
                } else {
                    dir
                };
                add(agent, other, if shown.is_empty() { "." } else { shown });
            }
        }
    }

    let mut ancestor_sets: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut depends = |from: usize, on: usize| -> bool {
        let bits = ancestor_sets
            .entry(from)
            .or_insert_with(|| ancestors(graph, from));
        bits[on / 64] & (1u64 << (on % 64)) != 0
    };
    let mut listed = 0;
    let mut unlisted = 0;
    for ((a, b), path) in pairs {
        if depends(a, b) || depends(b, a) {
            continue;
        }
        if listed == MAX_OVERLAP_VIOLATIONS {
            unlisted += 1;
            continue;
        }
        listed += 1;
        let other = &plan.subtasks[b].task_id;
        violations.push(Violation::new(
            Some(&plan.subtasks[a].task_id),
            ViolationKind::WriteOverlap,
            format!("write scope `{path}`"),
            format!(
                "`{other}` writes it too and may run at the same time; split the files or order them with depends_on"
            ),
        ));
    }
    if unlisted > 0 {
        violations.push(Violation::new(
            None,
            ViolationKind::WriteOverlap,
            format!("{unlisted} more overlapping pairs"),
            "not listed one by one",
        ));
    }
}

/// Every path any agent's scope reaches, for questions like "would the plan touch this
/// changed file?".
#[derive(Debug, Clone, Default)]
pub struct ScopePaths {
    files: std::collections::HashSet<String>,
    dirs: Vec<String>,
}

impl ScopePaths {
    pub fn new(validation: &Validation, scan: &RepoScan) -> Self {
        let mut paths = ScopePaths::default();
        for scope in &validation.scopes {
            for &file in &scope.read_files {
                paths.files.insert(scan.files[file].path.clone());
            }
            paths.files.extend(scope.new_files.iter().cloned());
            paths.dirs.extend(scope.write_dirs.iter().cloned());
        }
        paths
    }

    pub fn contains(&self, path: &str) -> bool {
        self.files.contains(path) || self.dirs.iter().any(|dir| path.starts_with(dir.as_str()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::plan::scan::ScannedFile;
    use crate::plan::types::Subtask;

    fn scan(paths: &[&str]) -> RepoScan {
        let mut files: Vec<ScannedFile> = paths
            .iter()
            .map(|p| ScannedFile {
                path: (*p).to_owned(),
                bytes: 400,
            })
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        RepoScan {
            root: "repo".into(),
            files,
            total_bytes: 400 * paths.len() as u64,
        }
    }

    fn task(id: &str, scope: &[&str], tools: &[&str], deps: &[&str]) -> Subtask {
        Subtask {
            task_id: TaskId(id.to_owned()),
            description: "x".into(),
            role: None,
            scope: scope.iter().map(|s| (*s).to_owned()).collect(),
            write_scope: None,
            tools: tools.iter().map(|s| (*s).to_owned()).collect(),
            shell_commands: Vec::new(),
            mode: Mode::Default,
            depends_on: deps.iter().map(|s| TaskId((*s).to_owned())).collect(),
            external_api: false,
        }
    }

    fn check(subtasks: Vec<Subtask>, files: &[&str]) -> Validation {
        let config = Config::from_str("workflow:\n  name: t\n", "t.yaml").unwrap();
        let plan = Plan {
            workflow: "t".into(),
            subtasks,
        };
        validate(plan, &config, &scan(files), &PlanLimits::default())
    }

    fn kinds(validation: &Validation) -> Vec<(String, ViolationKind)> {
        validation
            .violations
            .iter()
            .map(|v| {
                (
                    v.agent.as_ref().map_or("plan".into(), |a| a.0.clone()),
                    v.kind,
                )
            })
            .collect()
    }

    #[test]
    fn a_directory_writer_overlaps_a_file_writer_unless_ordered_transitively() {
        let files = ["src/a/x.ts", "src/a/y.ts", "src/b/z.ts"];
        let concurrent = check(
            vec![
                task("dir", &["src/a"], &["edit_file"], &[]),
                task("file", &["src/a/new.ts"], &["write_file"], &[]),
                task("other", &["src/b/**"], &["edit_file"], &[]),
            ],
            &files,
        );
        assert_eq!(
            kinds(&concurrent),
            [("dir".to_owned(), ViolationKind::WriteOverlap)]
        );
        let ordered = check(
            vec![
                task("dir", &["src/a/**"], &["edit_file"], &[]),
                task("middle", &["src/b/z.ts"], &["edit_file"], &["dir"]),
                task("file", &["src/a/x.ts"], &["edit_file"], &["middle"]),
            ],
            &files,
        );
        assert!(ordered.is_ok(), "{:?}", ordered.violations);
    }

    #[test]
    fn readers_never_overlap_and_write_scope_narrows_writes() {
        let files = ["src/a/x.ts"];
        let mut writer = task("writer", &["src/a/x.ts", "tests/x.test.ts"], &["bash"], &[]);
        writer.shell_commands = vec!["npm test".into()];
        writer.write_scope = Some(vec!["tests/x.test.ts".into()]);
        let validation = check(
            vec![
                task("reader", &["src/a/x.ts"], &["read_file"], &[]),
                writer,
                task("editor", &["src/a/x.ts"], &["edit_file"], &[]),
            ],
            &files,
        );
        assert!(validation.is_ok(), "{:?}", validation.violations);
        assert_eq!(validation.files_in_scope, 2);
    }

    #[test]
    fn cycles_unknown_dependencies_and_ids() {
        let validation = check(
            vec![
                task("a", &["src/x"], &["read_file"], &["b"]),
                task("b", &["src/x"], &["read_file"], &["c"]),
                task("c", &["src/x"], &["read_file"], &["a", "ghost"]),
                task("self", &["src/x"], &["read_file"], &["self"]),
                task("a", &["src/x"], &["read_file"], &[]),
                task("bad id!", &["src/x"], &["read_file"], &[]),
            ],
            &[],
        );
        let found = kinds(&validation);
        for expected in [
            ("a", ViolationKind::DuplicateId),
            ("bad id!", ViolationKind::InvalidId),
            ("c", ViolationKind::UnknownDependency),
            ("self", ViolationKind::DependencyCycle),
        ] {
            assert!(
                found.contains(&(expected.0.to_owned(), expected.1)),
                "{expected:?} not in {found:?}"
            );
        }
        assert_eq!(
            found
                .iter()
                .filter(|(_, kind)| *kind == ViolationKind::DependencyCycle)
                .count(),
            2,
            "{found:?}"
        );
    }

    #[test]
    fn protected_paths_are_caught_through_globs_and_directories() {
        let files = ["config/.env", "src/a.ts"];
        let validation = check(
            vec![
                task("git", &[".git"], &["read_file"], &[]),
                task("glob", &["config/*"], &["read_file"], &[]),
                task("pem", &["**/*.pem"], &["read_file"], &[]),
                task("fine", &["src/*.ts"], &["read_file"], &[]),
            ],
            &files,
        );
        let found = kinds(&validation);
        assert_eq!(
            found,
            [
                ("git".to_owned(), ViolationKind::ProtectedPath),
                ("glob".to_owned(), ViolationKind::ProtectedPath),
                ("pem".to_owned(), ViolationKind::ProtectedPath),
            ]
        );
    }

    /// The dry run checked protected paths with a list of its own: it flagged `.env` but
    /// passed `.npmrc` and `.gitattributes`, which every live run then refused. Over generated
    /// paths, the validator's verdict is the runtime policy's, for writes and for reads.
    #[test]
    fn the_dry_run_refuses_exactly_what_the_runtime_refuses() {
        let config = Config::from_str("workflow:\n  name: t\n", "t.yaml").unwrap();
        let parts = [
            "src",
            "lib",
            ".git",
            ".fanout",
            "hooks",
            "a.ts",
            ".npmrc",
            ".gitattributes",
            ".GITMODULES",
            ".env",
            ".env.local",
            "key.pem",
            "id_rsa",
            ".envrc",
            "notes.md",
            ".yarnrc.yml",
            "config",
        ];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut checked = 0;
        for _ in 0..400 {
            let depth = 1 + next(3);
            let path: Vec<&str> = (0..depth).map(|_| parts[next(parts.len())]).collect();
            let path = path.join("/");
            let runtime = ScopePolicy::from_config(
                &config,
                &AgentSpec {
                    scope: vec![path.clone()],
                    ..AgentSpec::default()
                },
            )
            .unwrap();
            for (tools, writes) in [(&["write_file"][..], true), (&["read_file"][..], false)] {
                let mut subtask = task("t", &[&path], tools, &[]);
                if !writes {
                    subtask.write_scope = Some(Vec::new());
                }
                let validation = check(vec![subtask], &[&path]);
                let flagged = kinds(&validation)
                    .iter()
                    .any(|(_, kind)| *kind == ViolationKind::ProtectedPath);
                let refused = if writes {
                    runtime.check_write(&path) == Err(crate::policy::DenyReason::Protected)
                } else {
                    runtime.check_read(&path).is_err()
                };
                assert_eq!(
                    flagged,
                    refused,
                    "{path} ({}): {validation:?}",
                    if writes { "write" } else { "read" }
                );
                checked += usize::from(refused);
            }
        }
        assert!(checked > 50, "too few refused paths generated: {checked}");
        // The named cases of the bug.
        for path in [".npmrc", "web/.gitattributes", "pkg/.yarnrc.yml"] {
            let validation = check(vec![task("t", &[path], &["write_file"], &[])], &[path]);
            assert!(
                kinds(&validation).contains(&("t".to_owned(), ViolationKind::ProtectedPath)),
                "{path}"
            );
        }
    }

    #[test]
    fn glob_bases_and_entries_normalize() {
        assert_eq!(glob_base("src/**/*.ts"), "src/");
        assert_eq!(glob_base("**/*.ts"), "");
        assert!(matches!(parse_entry("./src//a/"), Ok(Entry::Literal(p)) if p == "src/a"));
        assert!(matches!(
            parse_entry("src/../../x"),
            Err((ViolationKind::ParentPath, _))
        ));
        assert!(matches!(
            parse_entry("C:/x"),
            Err((ViolationKind::AbsolutePath, _))
        ));
        assert!(matches!(
            parse_entry("src/[a"),
            Err((ViolationKind::InvalidScope, _))
        ));
    }
}
