//! The default orchestrator: a forced tool whose schema asks for sub-tasks is answered with a
//! plan built from the request, the way a careful model would build it.
//!
//! Everything comes from the wire: the task and the repository's file list in the first user
//! turn (`Task:` … `Files:` with one `path size` line per file, `Directories (files, size):`),
//! the rules in the system prompt (workflow name, agent cap, protected and sensitive path
//! globs, the shell allowlist, whether agents may write, the roles and their modes), and the
//! tool's schema (which fields a sub-task has, which tools exist). Nothing is random: the same
//! request gets the same plan.
//!
//! The plan: one agent per file or directory the task names (`src/auth`, `jwt.ts`, a glob) or
//! implies (a word such as "handler" naming a directory `handlers`); a directory preceded by
//! "every" / "each" / "all" gets one agent per file. A task that names nothing is split by
//! directory. Writers never share a file. When the task asks for tests, a test agent per code
//! agent writes a test file after the code agent, and one last agent runs an allowlisted test
//! command once they are all done (never beside a writer: a command's writable directories are
//! snapshotted and what changed there undeclared is reverted); when it asks for documentation,
//! a documentation agent runs after all of them. Sensitive work is on
//! the `default` mode, routine edits on `fast`.
//!
//! A task in stages ("move X, then update Y") orders them: an agent of a later stage depends on
//! the agents of the stage before it.
//!
//! A rejected plan (an error tool result naming `agent: scope \`x\` — …`) is answered again
//! without the offending entries. It does not own the wire format or any HTTP; see `answer.rs`.

use std::collections::{BTreeMap, BTreeSet};

use globset::{GlobBuilder, GlobMatcher};
use serde_json::{Map, Value, json};

use crate::model::Request;
use crate::schema_gen;

/// Names of the array property that holds sub-tasks.
const SUBTASK_FIELDS: &[&str] = &["subtasks", "sub_tasks", "tasks", "agents", "steps"];
/// The most agents a plan gets when the prompt states no cap.
const DEFAULT_MAX_AGENTS: usize = 200;
/// The most agents a task that names nothing is split into.
const FALLBACK_AGENTS: usize = 8;
/// Protected whatever the prompt says.
const ALWAYS_PROTECTED: &[&str] = &[
    ".git/**",
    "**/.git/**",
    ".fanout/**",
    ".env",
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/id_rsa*",
];
const QUANTIFIERS: &[&str] = &["every", "each", "all", "per"];
const READ_VERBS: &[&str] = &[
    "analyze",
    "analyse",
    "review",
    "audit",
    "explain",
    "summarize",
    "summarise",
    "find",
    "list",
    "inspect",
    "investigate",
    "map",
    "assess",
    "evaluate",
    "check",
];
const FILE_TOOLS: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "search",
];

/// The sub-task array's property name, when `schema` asks for sub-tasks.
pub(crate) fn subtask_field(schema: &Value) -> Option<&'static str> {
    let properties = schema.get("properties")?.as_object()?;
    SUBTASK_FIELDS.iter().copied().find(|name| {
        properties
            .get(*name)
            .is_some_and(|p| p.get("items").is_some_and(|items| items.is_object()))
    })
}

/// The forced plan tool's input for `request`.
pub(crate) fn plan(request: &Request, schema: &Value, field: &str) -> Value {
    let rules = Rules::parse(&request.system, schema, field);
    let repo = Repo::parse(request.first_user_text(), &rules);
    let task = task_text(request.first_user_text());
    let mut agents = build(&task, &repo, &rules);
    if request.turn > 1 {
        // Every rejection so far, so a second repair keeps the first one's fixes.
        for call in &request.history {
            if let Some(result) = &call.result {
                apply_rejections(&mut agents, result);
            }
        }
        apply_rejections(&mut agents, &request.last_user);
    }
    render(&agents, &rules, schema, field)
}

// ---- what the prompt says ------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shell {
    None,
    Allowlist,
    Any,
}

#[derive(Debug)]
struct Rules {
    workflow: Option<String>,
    max_agents: usize,
    protected: Vec<GlobMatcher>,
    sensitive: Vec<GlobMatcher>,
    tools: Vec<String>,
    shell: Shell,
    commands: Vec<String>,
    /// (role, mode) in prompt order.
    roles: Vec<(String, String)>,
}

fn matcher(pattern: &str) -> Option<GlobMatcher> {
    GlobBuilder::new(pattern.trim())
        .literal_separator(true)
        .build()
        .ok()
        .map(|glob| glob.compile_matcher())
}

/// The text after `marker` up to the end of its line.
fn line_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.find(marker)? + marker.len();
    let rest = &text[start..];
    Some(rest.split('\n').next().unwrap_or(rest))
}

/// Every `` `x` `` in `text`.
fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

impl Rules {
    fn parse(system: &str, schema: &Value, field: &str) -> Rules {
        let workflow = line_after(system, "`workflow` is `")
            .or_else(|| line_after(system, "orchestrator of the workflow `"))
            .and_then(|rest| rest.split('`').next())
            .map(str::to_string)
            .or_else(|| {
                schema
                    .pointer("/properties/workflow/const")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let schema_max = schema
            .pointer(&format!("/properties/{field}/maxItems"))
            .and_then(Value::as_u64)
            .map(|n| n as usize);
        let prompt_max = line_after(system, "At most ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok());
        let max_agents = prompt_max
            .or(schema_max)
            .unwrap_or(DEFAULT_MAX_AGENTS)
            .min(schema_max.unwrap_or(usize::MAX))
            .clamp(1, 10_000);

        let mut protected: Vec<GlobMatcher> =
            ALWAYS_PROTECTED.iter().filter_map(|p| matcher(p)).collect();
        if let Some(list) = line_after(system, "Never include protected paths: ") {
            let list = list.trim_end().trim_end_matches('.');
            protected.extend(list.split(", ").filter_map(matcher));
        }
        let sensitive = system
            .lines()
            .find(|line| line.contains("must be `default`"))
            .and_then(|line| {
                let end = line.find(") must be `default`")?;
                let start = line[..end].rfind(" (")? + 2;
                Some(line[start..end].split(", ").filter_map(matcher).collect())
            })
            .unwrap_or_default();

        let item = schema.pointer(&format!("/properties/{field}/items"));
        let mut tools: Vec<String> = item
            .and_then(|i| i.pointer("/properties/tools/items/enum"))
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_else(|| FILE_TOOLS.iter().map(|t| (*t).to_string()).collect());
        let lower = system.to_lowercase();
        if lower.contains("agents get no file tools") {
            tools.retain(|t| !FILE_TOOLS.contains(&t.as_str()));
        } else if lower.contains("may not write files") {
            tools.retain(|t| t != "write_file" && t != "edit_file");
        }
        let (shell, commands) = if lower.contains("no shell") {
            (Shell::None, Vec::new())
        } else if lower.contains("shell commands are unrestricted") {
            (Shell::Any, Vec::new())
        } else if let Some(list) = line_after(system, "are allowed: ") {
            (Shell::Allowlist, backticked(list))
        } else {
            (Shell::None, Vec::new())
        };
        if shell == Shell::None {
            tools.retain(|t| t != "bash");
        }
        let roles = line_after(system, "`role` (optional): one of ")
            .map(|list| {
                list.split(", ")
                    .filter_map(|entry| {
                        let mut parts = entry.split('`');
                        let name = parts.nth(1)?;
                        let rest = parts.next().unwrap_or_default();
                        let mode = rest
                            .split('(')
                            .nth(1)
                            .and_then(|m| m.split(')').next())
                            .unwrap_or_default();
                        Some((name.to_string(), mode.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Rules {
            workflow,
            max_agents,
            protected,
            sensitive,
            tools,
            shell,
            commands,
            roles,
        }
    }

    fn has_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t == name)
    }

    fn is_protected(&self, path: &str) -> bool {
        self.protected.iter().any(|m| m.is_match(path))
    }

    fn is_sensitive(&self, path: &str) -> bool {
        self.sensitive.iter().any(|m| m.is_match(path))
    }

    /// The role for `kind` whose routed mode is `mode`, if the workflow has one.
    fn role(&self, kind: &str, mode: &str) -> Option<String> {
        self.roles
            .iter()
            .find(|(name, routed)| name.contains(kind) && routed == mode)
            .map(|(name, _)| name.clone())
    }

    /// An allowlisted command that runs tests.
    fn test_command(&self, repo: &Repo) -> Option<String> {
        match self.shell {
            Shell::None => None,
            Shell::Allowlist => {
                let words = ["test", "pytest", "jest", "vitest", "check"];
                words.iter().find_map(|word| {
                    self.commands
                        .iter()
                        .find(|c| c.split_whitespace().any(|w| w.contains(word)))
                        .cloned()
                })
            }
            Shell::Any => {
                let has = |name: &str| repo.files.iter().any(|f| f == name);
                [
                    ("package.json", "npm test"),
                    ("Cargo.toml", "cargo test"),
                    ("go.mod", "go test ./..."),
                    ("pyproject.toml", "pytest"),
                    ("setup.py", "pytest"),
                    ("Makefile", "make test"),
                ]
                .iter()
                .find(|(file, _)| has(file))
                .map(|(_, command)| (*command).to_string())
            }
        }
    }
}

/// The task: the text after `Task:` up to the repository view (or the whole turn).
fn task_text(prompt: &str) -> String {
    let body = match prompt.find("Task:") {
        Some(at) => &prompt[at + 5..],
        None => prompt,
    };
    let end = body
        .find("\nRepository: ")
        .or_else(|| body.find("\n\nCall `"))
        .unwrap_or(body.len());
    body[..end].trim().to_string()
}

// ---- the repository ------------------------------------------------------------------------

#[derive(Debug, Default)]
struct Repo {
    /// Files agents may be given (protected ones left out), sorted.
    files: Vec<String>,
    /// Directories with files below them, from the listing and the file paths.
    dirs: BTreeSet<String>,
    /// Files below each directory, as the directory listing counts them (the file list may
    /// be cut short in a large repository).
    counts: BTreeMap<String, usize>,
}

impl Repo {
    fn parse(prompt: &str, rules: &Rules) -> Repo {
        let mut files = Vec::new();
        let mut dirs = BTreeSet::new();
        let mut counts = BTreeMap::new();
        let mut section = "";
        for line in prompt.lines() {
            if line.starts_with("Directories (") {
                section = "dirs";
                continue;
            }
            if line.starts_with("Files:") || line.starts_with("Files (") {
                section = "files";
                continue;
            }
            if line.trim().is_empty() || line.starts_with("Call `") || line.starts_with("... ") {
                if section == "files" && line.trim().is_empty() {
                    section = "";
                }
                continue;
            }
            match section {
                "dirs" => {
                    if let Some((dir, rest)) = line.split_once("/ ")
                        && dir != "."
                    {
                        dirs.insert(dir.to_string());
                        if let Some(count) = rest
                            .split_whitespace()
                            .next()
                            .and_then(|n| n.parse::<usize>().ok())
                        {
                            counts.insert(dir.to_string(), count);
                        }
                    }
                }
                "files" => {
                    if let Some(path) = strip_size(line) {
                        files.push(path.to_string());
                    }
                }
                _ => {}
            }
        }
        for file in &files {
            let mut at = 0;
            while let Some(slash) = file[at..].find('/') {
                dirs.insert(file[..at + slash].to_string());
                at += slash + 1;
            }
        }
        files.retain(|f| !rules.is_protected(f));
        files.sort();
        files.dedup();
        dirs.retain(|d| !rules.is_protected(d) && !rules.is_protected(&format!("{d}/x")));
        Repo {
            files,
            dirs,
            counts,
        }
    }

    /// Is the file list missing some of `dir`'s files?
    fn cut_short(&self, dir: &str) -> bool {
        self.counts
            .get(dir)
            .is_some_and(|count| *count > self.files_under(dir).len())
    }

    /// `dir`'s immediate subdirectories.
    fn subdirs(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.dirs
            .iter()
            .filter(|d| {
                d.strip_prefix(&prefix)
                    .is_some_and(|rest| !rest.contains('/'))
            })
            .cloned()
            .collect()
    }

    fn is_file(&self, path: &str) -> bool {
        self.files
            .binary_search_by(|f| f.as_str().cmp(path))
            .is_ok()
    }

    /// Files below `dir` (`""`: all).
    fn files_under(&self, dir: &str) -> Vec<String> {
        if dir.is_empty() {
            return self.files.clone();
        }
        let prefix = format!("{dir}/");
        self.files
            .iter()
            .filter(|f| f.starts_with(&prefix))
            .cloned()
            .collect()
    }
}

/// `src/a.ts 1.2 KB` → `src/a.ts`.
fn strip_size(line: &str) -> Option<&str> {
    let mut parts = line.rsplitn(3, ' ');
    let unit = parts.next()?;
    let number = parts.next()?;
    let path = parts.next()?;
    let ok_unit = matches!(unit, "B" | "KB" | "MB" | "GB");
    let ok_number = !number.is_empty() && number.chars().all(|c| c.is_ascii_digit() || c == '.');
    (ok_unit && ok_number && !path.is_empty()).then_some(path)
}

// ---- the plan ------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    File(String),
    Dir(String),
    /// Several files, one agent (a split of a task that names nothing).
    Files(String, Vec<String>),
}

impl Target {
    fn name(&self) -> &str {
        match self {
            Target::File(p) | Target::Dir(p) | Target::Files(p, _) => p,
        }
    }

    fn scope(&self) -> Vec<String> {
        match self {
            Target::File(p) | Target::Dir(p) => vec![p.clone()],
            Target::Files(_, files) => files.clone(),
        }
    }

    fn covers(&self, path: &str) -> bool {
        match self {
            Target::File(p) => p == path,
            Target::Dir(d) => path.starts_with(&format!("{d}/")),
            Target::Files(_, files) => files.iter().any(|f| f == path),
        }
    }
}

#[derive(Debug, Clone)]
struct Agent {
    task_id: String,
    description: String,
    role: Option<String>,
    scope: Vec<String>,
    write_scope: Option<Vec<String>>,
    tools: Vec<String>,
    shell_commands: Vec<String>,
    mode: String,
    depends_on: Vec<String>,
}

/// Words of the task with surrounding punctuation trimmed (`src/auth:` → `src/auth`).
fn words(task: &str) -> Vec<String> {
    task.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .map(|w| {
            w.trim_start_matches(|c: char| "`'\"([<".contains(c))
                .trim_end_matches(|c: char| "`'\")]>:!?.".contains(c))
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn singular(word: &str) -> String {
    let word = word.to_lowercase();
    let word = word.strip_suffix("'s").unwrap_or(&word);
    let word = word.strip_suffix('\'').unwrap_or(word);
    word.strip_suffix("es")
        .filter(|w| w.ends_with("sh") || w.ends_with("ch") || w.ends_with('x'))
        .or_else(|| word.strip_suffix('s').filter(|w| !w.ends_with('s')))
        .unwrap_or(word)
        .to_string()
}

fn is_test_word(word: &str) -> bool {
    matches!(
        singular(word).as_str(),
        "test" | "unit" | "spec" | "testing" | "coverage"
    )
}

fn last_component(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What the task names or implies: (target, one agent per file), and the task's stage at
/// which each target is first named (a stage ends at "then", "afterwards", "finally").
fn named_targets(task: &str, repo: &Repo) -> (Vec<(Target, bool)>, BTreeMap<String, usize>) {
    let words = words(task);
    let mut stage = 0;
    let mut stages: BTreeMap<String, usize> = BTreeMap::new();
    let quantified = |index: usize| {
        words[index.saturating_sub(4)..index]
            .iter()
            .any(|w| QUANTIFIERS.contains(&w.to_lowercase().as_str()))
    };
    let mut found: BTreeMap<Target, bool> = BTreeMap::new();
    let mut add = |target: Target, each: bool, stage: usize| {
        stages.entry(target.name().to_string()).or_insert(stage);
        let entry = found.entry(target).or_insert(false);
        *entry |= each;
    };
    for (index, word) in words.iter().enumerate() {
        let each = quantified(index);
        if matches!(
            word.to_lowercase().as_str(),
            "then" | "afterwards" | "finally"
        ) {
            stage += 1;
            continue;
        }
        if word.contains(['*', '?']) {
            if let Some(glob) = matcher(word) {
                for file in repo.files.iter().filter(|f| glob.is_match(f.as_str())) {
                    add(Target::File(file.clone()), false, stage);
                }
            }
            continue;
        }
        if repo.is_file(word) {
            add(Target::File(word.clone()), false, stage);
            continue;
        }
        if repo.dirs.contains(word.as_str()) {
            add(Target::Dir(word.clone()), each, stage);
            continue;
        }
        if word.contains('.') && !word.contains('/') {
            // A file name: the one file with that name.
            let matches: Vec<&String> = repo
                .files
                .iter()
                .filter(|f| last_component(f) == word)
                .collect();
            if let [file] = matches.as_slice() {
                add(Target::File((*file).clone()), false, stage);
            }
            continue;
        }
        let stem = singular(word);
        if stem.len() >= 4 && !is_test_word(word) && stem.chars().all(char::is_alphabetic) {
            // A word naming a directory: "every handler" → `src/api/handlers`.
            for dir in repo
                .dirs
                .iter()
                .filter(|d| singular(last_component(d)) == stem)
            {
                add(Target::Dir(dir.clone()), each, stage);
            }
        }
    }
    (found.into_iter().collect(), stages)
}

/// Write targets without overlaps: a directory holding another target is split into its
/// files, and a file another target covers is left to that one.
fn disjoint(named: Vec<(Target, bool)>, repo: &Repo, cap: usize) -> Vec<Target> {
    let mut targets: Vec<Target> = Vec::new();
    let mut expand: Vec<String> = Vec::new();
    for (target, each) in &named {
        if let Target::Dir(dir) = target {
            let files = repo.files_under(dir);
            let nested = named
                .iter()
                .any(|(other, _)| other != target && other.name().starts_with(&format!("{dir}/")));
            let subdirs = repo.subdirs(dir);
            if *each && !nested && repo.cut_short(dir) && !subdirs.is_empty() {
                // Not every file is listed: one agent per subdirectory (and the files listed
                // directly in it), so none is left out.
                let prefix = format!("{dir}/");
                targets.extend(subdirs.into_iter().map(Target::Dir));
                expand.extend(files.into_iter().filter(|f| {
                    f.strip_prefix(&prefix)
                        .is_some_and(|rest| !rest.contains('/'))
                }));
                continue;
            }
            if (*each || nested) && files.len() <= cap {
                expand.extend(files);
                continue;
            }
        }
        targets.push(target.clone());
    }
    // Drop directories inside other (unexpanded) directories.
    let dirs: Vec<String> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Dir(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    targets.retain(|t| match t {
        Target::Dir(d) => !dirs.iter().any(|o| d.starts_with(&format!("{o}/"))),
        _ => true,
    });
    for file in expand {
        let target = Target::File(file);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    let snapshot = targets.clone();
    targets.retain(|t| match t {
        Target::File(f) => !snapshot
            .iter()
            .any(|o| matches!(o, Target::Dir(_)) && o.covers(f)),
        _ => true,
    });
    targets.sort();
    targets.dedup();
    targets
}

/// A task that names nothing: split the repository by directory.
fn fallback_targets(repo: &Repo) -> Vec<Target> {
    let mut base = String::new();
    loop {
        let files = repo.files_under(&base);
        let prefix = if base.is_empty() {
            String::new()
        } else {
            format!("{base}/")
        };
        let mut subdirs: BTreeSet<String> = BTreeSet::new();
        let mut loose: Vec<String> = Vec::new();
        for file in &files {
            let rest = &file[prefix.len()..];
            match rest.split_once('/') {
                Some((dir, _)) => {
                    subdirs.insert(format!("{prefix}{dir}"));
                }
                None => loose.push(file.clone()),
            }
        }
        if subdirs.len() == 1 && loose.is_empty() {
            if let Some(only) = subdirs.into_iter().next() {
                base = only;
                continue;
            }
            return Vec::new();
        }
        let groups = subdirs.len() + usize::from(!loose.is_empty());
        if groups >= 2 || files.len() < 2 {
            let mut targets: Vec<Target> = subdirs.into_iter().map(Target::Dir).collect();
            if targets.len() >= FALLBACK_AGENTS {
                // Too many directories: one agent per directory for the first ones, the rest
                // together with the loose files.
                let rest: Vec<Target> = targets.split_off(FALLBACK_AGENTS - 1);
                let mut files: Vec<String> = loose;
                for target in rest {
                    files.extend(repo.files_under(target.name()));
                }
                let name = if base.is_empty() {
                    "rest".to_string()
                } else {
                    format!("{base}-rest")
                };
                targets.push(Target::Files(name, files));
            } else if !loose.is_empty() {
                let name = if base.is_empty() {
                    "root".to_string()
                } else {
                    base.clone()
                };
                if loose.len() == 1 {
                    targets.extend(loose.into_iter().map(Target::File));
                } else {
                    targets.push(Target::Files(name, loose));
                }
            }
            return targets;
        }
        // Only files here: one agent per file, or per run of files.
        let per = files.len().div_ceil(FALLBACK_AGENTS);
        return files
            .chunks(per.max(1))
            .map(|chunk| match chunk {
                [one] => Target::File(one.clone()),
                many => Target::Files(
                    many.first().map(|f| f.to_string()).unwrap_or_default(),
                    many.to_vec(),
                ),
            })
            .collect();
    }
}

/// A task id from a path: the file stem, or more of the path when stems collide.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches(|c| c == '-' || c == '.').to_string()
}

fn stem(path: &str) -> &str {
    let name = last_component(path);
    match name.rfind('.') {
        Some(0) | None => name,
        Some(dot) => &name[..dot],
    }
}

fn unique_ids(names: &[String], verb: &str) -> Vec<String> {
    let short: Vec<String> = names.iter().map(|n| slug(stem(n))).collect();
    let mut ids = Vec::with_capacity(names.len());
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (index, name) in names.iter().enumerate() {
        let clash = short.iter().filter(|s| **s == short[index]).count() > 1;
        let base = if clash || short[index].is_empty() {
            slug(name)
        } else {
            short[index].clone()
        };
        let base = if base.is_empty() {
            "part".to_string()
        } else {
            base
        };
        let mut id: String = format!("{verb}-{base}").chars().take(60).collect();
        let mut n = 2;
        while taken.contains(&id) {
            id = format!(
                "{}-{n}",
                format!("{verb}-{base}")
                    .chars()
                    .take(56)
                    .collect::<String>()
            );
            n += 1;
        }
        taken.insert(id.clone());
        ids.push(id);
    }
    ids
}

/// The task's verb, for ids (`add`, `refactor`, …), or `update`.
fn verb(task: &str) -> String {
    let first = task
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_matches(|c: char| !c.is_ascii_alphabetic())
        .to_lowercase();
    if (2..=12).contains(&first.len()) && first.chars().all(|c| c.is_ascii_lowercase()) {
        first
    } else {
        "update".to_string()
    }
}

fn mentions(task: &str, stems: &[&str]) -> bool {
    let lower = task.to_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| stems.iter().any(|s| w.starts_with(s)))
}

/// Where the tests of `path` go.
fn test_path(path: &str, repo: &Repo) -> String {
    let name = last_component(path);
    let dir = &path[..path.len() - name.len()];
    let (stem, ext) = match name.rfind('.') {
        Some(dot) if dot > 0 => (&name[..dot], &name[dot + 1..]),
        _ => (name, ""),
    };
    let root = if repo.dirs.contains("tests") || !repo.dirs.contains("test") {
        "tests"
    } else {
        "test"
    };
    let relative = dir.strip_prefix("src/").unwrap_or(dir);
    match ext {
        "go" => format!("{dir}{stem}_test.go"),
        "py" => format!("{root}/{relative}test_{stem}.py"),
        "rs" => format!(
            "{root}/{}.rs",
            slug(&format!("{relative}{stem}")).replace('-', "_")
        ),
        "" => format!("{root}/{relative}{stem}.test"),
        ext => format!("{root}/{relative}{stem}.test.{ext}"),
    }
}

fn build(task: &str, repo: &Repo, rules: &Rules) -> Vec<Agent> {
    let cap = rules.max_agents;
    let writes = rules.has_tool("edit_file") || rules.has_tool("write_file");
    let lower_verb = verb(task);
    let read_only = !writes || READ_VERBS.contains(&lower_verb.as_str());
    let wants_tests = mentions(task, &["test", "spec"]) && writes;
    let wants_docs = mentions(task, &["document", "docs", "readme"]) && writes;
    let test_command = if wants_tests || mentions(task, &["test"]) {
        rules.test_command(repo)
    } else {
        None
    };

    let (named, stages) = named_targets(task, repo);
    let mut targets = if named.is_empty() {
        fallback_targets(repo)
    } else {
        disjoint(named, repo, cap)
    };
    // The stage of a target: its own, or that of the named directory it came from.
    let stage_of = |target: &Target| {
        let name = target.name();
        stages.get(name).copied().unwrap_or_else(|| {
            stages
                .iter()
                .filter(|(named, _)| name.starts_with(&format!("{named}/")))
                .map(|(_, stage)| *stage)
                .min()
                .unwrap_or(0)
        })
    };
    // Room for test and documentation agents.
    let per_target = 1 + usize::from(wants_tests);
    let budget = cap.saturating_sub(usize::from(wants_docs)).max(1);
    if targets.len() * per_target > budget {
        targets.truncate((budget / per_target).max(1));
    }
    let names: Vec<String> = targets.iter().map(|t| t.name().to_string()).collect();
    let ids = unique_ids(&names, &lower_verb);

    let read_tools: Vec<String> = ["read_file", "list_files", "search"]
        .iter()
        .filter(|t| rules.has_tool(t))
        .map(|t| (*t).to_string())
        .collect();
    let sensitive = |scope: &[String]| {
        scope.iter().any(|entry| {
            rules.is_sensitive(entry)
                || rules.is_sensitive(&format!("{entry}/x"))
                || repo
                    .files_under(entry)
                    .iter()
                    .any(|f| rules.is_sensitive(f))
        })
    };

    let mut agents = Vec::new();
    for (target, id) in targets.iter().zip(&ids) {
        let scope = target.scope();
        let is_dir = !matches!(target, Target::File(_));
        let mut tools = vec![];
        if rules.has_tool("read_file") {
            tools.push("read_file".to_string());
        }
        if is_dir || read_only {
            for t in ["list_files", "search"] {
                if rules.has_tool(t) {
                    tools.push(t.to_string());
                }
            }
        }
        let mut shell_commands = Vec::new();
        if !read_only {
            let exists = scope.iter().all(|s| is_dir || repo.is_file(s));
            if rules.has_tool("edit_file") && exists {
                tools.push("edit_file".to_string());
            }
            if rules.has_tool("write_file") && (is_dir || !exists || !rules.has_tool("edit_file")) {
                tools.push("write_file".to_string());
            }
        } else if !rules.has_tool("read_file") {
            tools = read_tools.clone();
        }
        if read_only
            && let Some(command) = &test_command
            && rules.has_tool("bash")
        {
            tools.push("bash".to_string());
            shell_commands.push(command.clone());
        }
        let is_sensitive = sensitive(&scope);
        let mode = if is_sensitive || read_only {
            "default"
        } else {
            "fast"
        };
        let kind = if read_only { "analysis" } else { "codegen" };
        let what = match target {
            Target::File(p) => format!("the file {p}"),
            Target::Dir(d) => format!("the files under {d}/"),
            Target::Files(_, files) => format!("the files {}", files.join(", ")),
        };
        let description = if read_only {
            format!(
                "Part of the task \"{task}\". Read {what} and report what you find; change nothing."
            )
        } else {
            format!(
                "Part of the task \"{task}\". Make the change the task asks for in {what}, and only there; read the file before changing it and keep the change small."
            )
        };
        // Said outright: without it a reader's whole scope would count as writable.
        let write_scope = if read_only { Some(Vec::new()) } else { None };
        agents.push(Agent {
            task_id: id.clone(),
            description,
            role: rules.role(kind, mode),
            scope,
            write_scope,
            tools,
            shell_commands,
            mode: mode.to_string(),
            depends_on: Vec::new(),
        });
    }

    // Later stages of the task ("…, then …") wait for the earlier ones.
    let staged: Vec<usize> = targets.iter().map(stage_of).collect();
    if staged.iter().any(|stage| *stage > 0) {
        let ids: Vec<String> = agents.iter().map(|a| a.task_id.clone()).collect();
        for (index, agent) in agents.iter_mut().enumerate() {
            agent.depends_on = ids
                .iter()
                .zip(&staged)
                .filter(|(_, stage)| **stage + 1 == staged[index])
                .map(|(id, _)| id.clone())
                .collect();
        }
    }

    if wants_tests && !read_only {
        let code: Vec<(String, Target)> = agents
            .iter()
            .map(|a| a.task_id.clone())
            .zip(targets.iter().cloned())
            .collect();
        let taken: BTreeSet<String> = targets.iter().flat_map(|t| t.scope()).collect();
        let mut used = BTreeSet::new();
        let first_test = agents.len();
        for (code_id, target) in code {
            let Target::File(path) = &target else {
                continue;
            };
            let test = test_path(path, repo);
            if taken.contains(&test)
                || rules.is_protected(&test)
                || !used.insert(test.clone())
                || targets.iter().any(|t| t.covers(&test))
            {
                continue;
            }
            let mut tools = Vec::new();
            for t in ["read_file", "write_file"] {
                if rules.has_tool(t) {
                    tools.push(t.to_string());
                }
            }
            let scope = vec![path.clone(), test.clone()];
            let mode = if sensitive(&scope) { "default" } else { "fast" };
            let id = format!(
                "test-{}",
                code_id
                    .split_once('-')
                    .map_or(code_id.as_str(), |(_, rest)| rest)
            );
            let id = if agents.iter().any(|a| a.task_id == id) {
                format!("test-{code_id}")
            } else {
                id
            };
            agents.push(Agent {
                task_id: id.chars().take(64).collect(),
                description: format!(
                    "Part of the task \"{task}\". Once {path} is changed, write unit tests for it in {test}."
                ),
                role: rules.role("test", mode),
                scope,
                write_scope: Some(vec![test]),
                tools,
                shell_commands: Vec::new(),
                mode: mode.to_string(),
                depends_on: vec![code_id],
            });
        }
        // The suite runs once, after every test is written: a command's writable directory
        // is shared with the agents writing beside it, so test runs never overlap writers.
        let writers: Vec<&Agent> = agents[first_test..].iter().collect();
        if let Some(command) = &test_command
            && rules.has_tool("bash")
            && !writers.is_empty()
            && agents.len() < cap
        {
            let scope: Vec<String> = writers
                .iter()
                .filter_map(|a| a.write_scope.as_ref().and_then(|w| w.first()).cloned())
                .collect();
            let depends_on: Vec<String> = writers.iter().map(|a| a.task_id.clone()).collect();
            let mut tools = vec!["bash".to_string()];
            if rules.has_tool("read_file") {
                tools.insert(0, "read_file".to_string());
            }
            agents.push(Agent {
                task_id: "run-tests".to_string(),
                description: format!(
                    "Part of the task \"{task}\". Once the tests are written, run `{command}` and report what it says; change nothing."
                ),
                role: rules.role("test", "fast"),
                scope,
                write_scope: Some(Vec::new()),
                tools,
                shell_commands: vec![command.clone()],
                mode: "fast".to_string(),
                depends_on,
            });
        }
    }

    if wants_docs && !read_only && agents.len() < cap {
        let doc = ["README.md", "README", "readme.md", "docs/README.md"]
            .iter()
            .find(|f| repo.is_file(f))
            .map(|f| (*f).to_string())
            .unwrap_or_else(|| "README.md".to_string());
        let covered = targets.iter().any(|t| t.covers(&doc));
        if !covered && !rules.is_protected(&doc) {
            let mut tools = vec!["read_file".to_string()];
            tools.push(if repo.is_file(&doc) && rules.has_tool("edit_file") {
                "edit_file".to_string()
            } else {
                "write_file".to_string()
            });
            tools.retain(|t| rules.has_tool(t));
            let depends_on: Vec<String> = agents.iter().map(|a| a.task_id.clone()).collect();
            agents.push(Agent {
                task_id: "document".to_string(),
                description: format!(
                    "Part of the task \"{task}\". After the other agents, document the change in {doc}."
                ),
                role: rules.role("analysis", "default").or_else(|| rules.role("codegen", "fast")),
                scope: vec![doc],
                write_scope: None,
                tools,
                shell_commands: Vec::new(),
                mode: "fast".to_string(),
                depends_on,
            });
            if let Some(agent) = agents.last_mut() {
                let routed = rules
                    .roles
                    .iter()
                    .find(|(name, _)| Some(name) == agent.role.as_ref())
                    .map(|(_, mode)| mode.clone());
                if let Some(mode) = routed {
                    agent.mode = mode;
                }
            }
        }
    }
    agents
}

/// Drops what a rejection names: `agent: scope \`x\` — …` removes that entry, `agent: tool
/// \`t\` — …` that tool, `agent: shell command \`c\` — …` that command; an agent left with no
/// scope is dropped, and so are dependencies on it.
fn apply_rejections(agents: &mut Vec<Agent>, rejection: &str) {
    for line in rejection.lines() {
        let line = line.trim_start_matches("- ").trim();
        let Some((agent, rest)) = line.split_once(": ") else {
            continue;
        };
        let Some(target) = agents.iter_mut().find(|a| a.task_id == agent) else {
            continue;
        };
        let value = backticked(rest).into_iter().next().unwrap_or_default();
        if rest.starts_with("scope `") {
            target.scope.retain(|s| *s != value);
            if let Some(write) = &mut target.write_scope {
                write.retain(|s| *s != value);
            }
        } else if rest.starts_with("tool `") {
            target.tools.retain(|t| *t != value);
            if value == "bash" {
                target.shell_commands.clear();
            }
        } else if rest.starts_with("shell command `") {
            target.shell_commands.retain(|c| *c != value);
            if target.shell_commands.is_empty() {
                target.tools.retain(|t| t != "bash");
            }
        }
    }
    let gone: BTreeSet<String> = agents
        .iter()
        .filter(|a| a.scope.is_empty())
        .map(|a| a.task_id.clone())
        .collect();
    agents.retain(|a| !a.scope.is_empty());
    for agent in agents.iter_mut() {
        agent.depends_on.retain(|d| !gone.contains(d));
    }
}

/// The plan as the tool's schema wants it: known fields by name, the rest generated.
fn render(agents: &[Agent], rules: &Rules, schema: &Value, field: &str) -> Value {
    let item_schema = schema
        .pointer(&format!("/properties/{field}/items"))
        .cloned()
        .unwrap_or_else(|| json!({"type": "object"}));
    let properties = item_schema.get("properties").and_then(Value::as_object);
    let closed = item_schema.get("additionalProperties") == Some(&Value::Bool(false));
    let mut subtasks = Vec::with_capacity(agents.len());
    for (index, agent) in agents.iter().enumerate() {
        let mut known = Map::new();
        known.insert("task_id".into(), json!(agent.task_id));
        known.insert("description".into(), json!(agent.description));
        if let Some(role) = &agent.role {
            known.insert("role".into(), json!(role));
        }
        known.insert("scope".into(), json!(agent.scope));
        if let Some(write) = &agent.write_scope {
            known.insert("write_scope".into(), json!(write));
        }
        known.insert("tools".into(), json!(agent.tools));
        if !agent.shell_commands.is_empty() {
            known.insert("shell_commands".into(), json!(agent.shell_commands));
        }
        known.insert("mode".into(), json!(agent.mode));
        known.insert("depends_on".into(), json!(agent.depends_on));
        let aliases: &[(&str, &str)] = &[
            ("id", "task_id"),
            ("name", "task_id"),
            ("task", "description"),
            ("instructions", "description"),
            ("files", "scope"),
            ("paths", "scope"),
            ("dependencies", "depends_on"),
        ];
        let mut out = Map::new();
        match properties {
            Some(properties) => {
                for (key, sub) in properties {
                    let source = aliases
                        .iter()
                        .find(|(alias, _)| alias == key)
                        .map_or(key.as_str(), |(_, real)| real);
                    if let Some(value) = known.get(source) {
                        out.insert(key.clone(), value.clone());
                    } else if is_required(&item_schema, key) {
                        out.insert(key.clone(), schema_gen::generate(sub, index as u64));
                    }
                }
                if !closed {
                    for (key, value) in known {
                        out.entry(key).or_insert(value);
                    }
                }
            }
            None => out = known,
        }
        subtasks.push(Value::Object(out));
    }
    let mut plan = Map::new();
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in properties {
            if key == field {
                continue;
            }
            if key == "workflow"
                && let Some(name) = &rules.workflow
            {
                plan.insert(key.clone(), json!(name));
            } else if is_required(schema, key) {
                plan.insert(key.clone(), schema_gen::generate(sub, 0));
            }
        }
    }
    plan.insert(field.to_string(), Value::Array(subtasks));
    Value::Object(plan)
}

fn is_required(schema: &Value, key: &str) -> bool {
    schema
        .get("required")
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|k| k.as_str() == Some(key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_singulars() {
        assert_eq!(
            words("Refactor src/auth: validate every handler's input."),
            [
                "Refactor",
                "src/auth",
                "validate",
                "every",
                "handler's",
                "input"
            ]
        );
        assert_eq!(singular("handlers"), "handler");
        assert_eq!(singular("handler's"), "handler");
        assert_eq!(singular("patches"), "patch");
        assert_eq!(singular("class"), "class");
        assert_eq!(strip_size("src/a b.ts 1.2 KB"), Some("src/a b.ts"));
    }

    #[test]
    fn test_paths() {
        let repo = Repo::default();
        assert_eq!(test_path("src/api/h01.ts", &repo), "tests/api/h01.test.ts");
        assert_eq!(test_path("pkg/a.go", &repo), "pkg/a_test.go");
        assert_eq!(
            test_path("app/models.py", &repo),
            "tests/app/test_models.py"
        );
    }
}
