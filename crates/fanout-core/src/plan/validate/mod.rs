//! Plan validation: is every sub-task inside what the workflow file allows?
//!
//! [`validate`] applies the rules in order, each a function in the submodule named for what it
//! checks; every broken rule is a [`Violation`] naming the agent, the offending value and why:
//! - `shape`: the plan is for this workflow, has sub-tasks, and not more than the agent count;
//! - `ids`: present, well formed, unique;
//! - per agent, in plan order: `scope` (entries relative, no `..`, valid globs, inside
//!   `paths.allow`/`paths.deny`, clear of protected paths — for reads as well as writes, since
//!   protected paths hold secrets); `permissions` (tools known and allowed by
//!   `agent_permissions`; shell commands plain, on the allowlist, with the `bash` tool to run
//!   them; outbound network); `mode` (roles);
//! - `dependencies`: `depends_on` names known ids, and no cycles;
//! - `overlap`: write scopes that overlap between agents that could run at the same time
//!   (neither depends, directly or not, on the other).
//!
//! Sensitive paths on `fast` are not violations: the agent is moved to `default` and the
//! move is reported as an [`Adjustment`]. So is a mode the workflow's `mode_routing` overrides.

mod dependencies;
mod ids;
mod mode;
mod overlap;
mod permissions;
mod scope;
mod shape;

use std::collections::BTreeSet;

use serde::Serialize;

use super::scan::RepoScan;
use super::types::{Plan, TaskId};
use crate::config::Config;
use crate::policy::{AgentSpec, PolicyError, ScopePolicy};
use scope::FileFlags;

/// The most sub-agents one plan may have. `max_parallel_agents` bounds how many run at once;
/// this bounds how many exist (each costs at least a model call and a row in the run store).
pub const DEFAULT_MAX_AGENTS: usize = 10_000;

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

    /// The plan refused as a whole: the workflow's path rules do not compile.
    fn uncompilable_policy(plan: Plan, error: &PolicyError) -> Self {
        let scopes = vec![ResolvedScope::default(); plan.subtasks.len()];
        Validation {
            plan,
            violations: vec![Violation::new(
                None,
                ViolationKind::ProtectedPath,
                "paths.protected".to_owned(),
                format!("cannot be compiled into the runtime policy: {error}"),
            )],
            adjustments: Vec::new(),
            scopes,
            files_in_scope: 0,
        }
    }
}

/// Validate `plan` against `config` over the scanned repository.
///
/// The rules, in the order their violations are listed: the plan as a whole; ids; per agent
/// (in plan order) its scope, tools, shell commands, network and role; dependencies; cycles;
/// overlapping write scopes.
pub fn validate(
    mut plan: Plan,
    config: &Config,
    scan: &RepoScan,
    limits: &PlanLimits,
) -> Validation {
    // The runtime's policy for this workflow (no scope of its own: only its path rules).
    let runtime = match ScopePolicy::from_config(config, &AgentSpec::default()) {
        Ok(runtime) => runtime,
        Err(error) => return Validation::uncompilable_policy(plan, &error),
    };
    let mut flags = FileFlags::new(config, &runtime, scan);
    let mut violations = Vec::new();
    let mut adjustments = Vec::new();

    shape::check_workflow(&plan, config, &mut violations);
    shape::check_not_empty(&plan, &mut violations);
    shape::check_agent_count(&plan, limits, &mut violations);
    let index_of = ids::check_ids(&plan, &mut violations);

    let mut scopes = Vec::with_capacity(plan.subtasks.len());
    let mut in_scope: BTreeSet<usize> = BTreeSet::new();
    let mut new_in_scope: BTreeSet<String> = BTreeSet::new();
    let mut mode_changes = Vec::new();
    for (index, subtask) in plan.subtasks.iter().enumerate() {
        let checked = scope::check_scope(subtask, &mut flags, &mut new_in_scope, &mut violations);
        permissions::check_tools(subtask, config, &mut violations);
        permissions::check_shell_commands(subtask, config, &mut violations);
        permissions::check_external_api(subtask, config, &mut violations);
        let mode = mode::route_mode(
            subtask,
            config,
            checked.sensitive.as_deref(),
            &mut violations,
            &mut adjustments,
        );
        if mode != subtask.mode {
            mode_changes.push((index, mode));
        }
        in_scope.extend(checked.resolved.read_files.iter().copied());
        scopes.push(checked.resolved);
    }
    for (index, mode) in mode_changes {
        plan.subtasks[index].mode = mode;
    }

    let graph = dependencies::check_dependencies(&plan, &index_of, &mut violations);
    dependencies::check_cycles(&plan, &graph, &mut violations);
    overlap::check_overlaps(&plan, scan, &scopes, &graph, &mut violations);

    let files_in_scope = in_scope.len() + new_in_scope.len();
    Validation {
        plan,
        violations,
        adjustments,
        scopes,
        files_in_scope,
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

    use super::scope::{Entry, glob_base, parse_entry};
    use super::*;
    use crate::config::Mode;
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
