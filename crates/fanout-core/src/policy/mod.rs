//! Per-agent permissions as plain data: what an agent may read, write, call and run.
//!
//! A [`ScopePolicy`] is built from the workflow [`Config`] and the agent's own [`AgentSpec`]
//! (its declared scope and tools). The strictest rule wins: protected paths are never
//! writable whatever the scope says, and they are checked by name, so a protected file that
//! does not exist yet is just as protected. The checks here are pure (no file system);
//! [`crate::tools::fs`] applies them to resolved paths and [`crate::sandbox`] turns the same
//! policy into kernel rules for commands.

use std::collections::{BTreeSet, HashSet};
use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::config::{Config, ExternalApi, FileAccess, SandboxSetting, ShellCommand, ShellExec};
use crate::ids::{AgentId, TaskId};

/// The tool names the model sees. They are a contract.
pub const TOOL_NAMES: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "search",
    "bash",
];

/// Tools that change files.
pub const WRITE_TOOLS: &[&str] = &["write_file", "edit_file"];

/// Path components that mark engine or repository state no agent may write, at any depth.
const PROTECTED_COMPONENTS: &[&str] = &[".git", ".fanout", ".hg", ".svn"];

/// File names no agent may write, at any depth: repository-controlled programs (hooks,
/// filters, package-manager config) and secrets.
const PROTECTED_NAMES: &[&str] = &[
    ".gitmodules",
    ".gitattributes",
    ".gitconfig",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".envrc",
    ".env",
    ".netrc",
    ".git-credentials",
];

/// File names whose content is secret: not readable through the file tools either.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower == ".env"
        || lower.starts_with(".env.")
        || lower == ".envrc"
        || lower == ".netrc"
        || lower == ".git-credentials"
        || lower.ends_with(".pem")
        || lower.ends_with(".key")
        || lower.starts_with("id_rsa")
        || lower.starts_with("id_ed25519")
        || lower.starts_with("id_ecdsa")
}

/// What one agent was asked to do and with what, independent of the plan format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AgentSpec {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub description: String,
    /// Files, directories (`src/auth/`) or globs (`src/**/*.rs`) the agent may write.
    pub scope: Vec<String>,
    /// Paths the agent may read; `None` means the whole repository.
    pub read_scope: Option<Vec<String>>,
    /// Tool names from [`TOOL_NAMES`].
    pub tools: Vec<String>,
}

/// Whether commands may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkAccess {
    /// A fresh network namespace: no TCP, UDP, DNS, not even loopback.
    Deny,
    Allow,
}

/// How strictly the kernel must enforce the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxMode {
    /// Refuse to run a command unless every rule is enforced by the kernel (fail closed).
    Enforce,
    /// Run with what the kernel offers and report the gaps. Only when the user asks.
    BestEffort,
}

/// Which commands the `bash` tool may run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellPolicy {
    Deny,
    Allowlist(#[serde(serialize_with = "serialize_commands")] Vec<ShellCommand>),
    /// Any command, still inside the sandbox.
    Unrestricted,
}

fn serialize_commands<S: serde::Serializer>(
    commands: &[ShellCommand],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(commands.iter().map(ToString::to_string))
}

/// A compiled list of repository-relative scope entries.
///
/// Plain paths (the common case: a plan names files and directories) are kept as a set of
/// strings and matched by looking up the path and each of its ancestors; only entries with
/// glob characters are compiled into a [`GlobSet`]. Building a policy for each of 1,000
/// agents then costs set inserts, not 1,000 regex compilations.
#[derive(Debug, Clone)]
pub struct PathSet {
    patterns: Vec<String>,
    literals: HashSet<String>,
    globs: Option<GlobSet>,
}

/// Characters that make a scope entry a glob rather than a plain path.
const GLOB_CHARS: [char; 5] = ['*', '?', '[', '{', '\\'];

impl PathSet {
    /// Compile scope entries: a plain path matches itself and, as a directory, everything
    /// beneath it; `src/` is `src/**`; globs are matched with `/` as a literal separator.
    pub fn new<S: AsRef<str>>(entries: &[S]) -> Result<PathSet, PolicyError> {
        let mut builder = GlobSetBuilder::new();
        let mut has_globs = false;
        let mut patterns = Vec::new();
        let mut literals = HashSet::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let trimmed = entry.trim_start_matches("./").trim_end_matches('/');
            if trimmed.is_empty()
                || trimmed.starts_with('/')
                || trimmed.split('/').any(|c| c == "..")
            {
                return Err(PolicyError::BadScope(entry.to_string()));
            }
            patterns.push(trimmed.to_string());
            if !trimmed.contains(GLOB_CHARS) {
                literals.insert(trimmed.to_string());
                continue;
            }
            for pattern in [trimmed.to_string(), format!("{trimmed}/**")] {
                let glob = GlobBuilder::new(&pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|error| PolicyError::BadGlob(entry.to_string(), error.to_string()))?;
                builder.add(glob);
                has_globs = true;
            }
        }
        let globs = if has_globs {
            Some(
                builder
                    .build()
                    .map_err(|error| PolicyError::BadGlob(String::new(), error.to_string()))?,
            )
        } else {
            None
        };
        Ok(PathSet {
            patterns,
            literals,
            globs,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_match(&self, relative: &str) -> bool {
        if !self.literals.is_empty() {
            if self.literals.contains(relative) {
                return true;
            }
            let ancestor_matches = relative
                .match_indices('/')
                .any(|(at, _)| self.literals.contains(&relative[..at]));
            if ancestor_matches {
                return true;
            }
        }
        self.globs
            .as_ref()
            .is_some_and(|set| set.is_match(relative))
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Where every path the set matches lies: for each entry, its leading components up to
    /// the first with a glob character (`""` for the whole tree), without duplicates. A
    /// superset of the set, to narrow a walk before [`PathSet::is_match`] decides.
    pub fn roots(&self) -> Vec<String> {
        let mut roots: Vec<String> = Vec::new();
        for pattern in &self.patterns {
            let root = pattern
                .split('/')
                .take_while(|component| !component.contains(GLOB_CHARS))
                .collect::<Vec<_>>()
                .join("/");
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
        roots
    }

    /// Whether the set is exactly its [`roots`](PathSet::roots): plain paths only, each
    /// matching itself and everything beneath it.
    pub fn is_plain(&self) -> bool {
        self.globs.is_none()
            && self
                .patterns
                .iter()
                .all(|pattern| pattern.split('/').all(|c| !c.is_empty() && c != "."))
    }
}

/// An invalid scope or glob.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("scope entry `{0}` must be a relative path inside the repository")]
    BadScope(String),
    #[error("scope entry `{0}` is not a valid glob: {1}")]
    BadGlob(String, String),
}

/// Why an action was refused. Shown to the model and recorded as a denial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DenyReason {
    ToolNotAllowed,
    OutsideReadScope,
    OutsideWriteScope,
    Protected,
    Secret,
    ReadOnlyAgent,
    ShellDenied,
    ShellSyntax { detail: String },
    CommandNotAllowed,
    BadPath { detail: String },
    Symlink,
    HardLink,
    NotRegularFile,
    SandboxUnavailable { detail: String },
    ScopeViolation,
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::ToolNotAllowed => write!(f, "this tool is not granted to this agent"),
            DenyReason::OutsideReadScope => write!(f, "the path is outside the agent's read scope"),
            DenyReason::OutsideWriteScope => {
                write!(f, "the path is outside the agent's declared write scope")
            }
            DenyReason::Protected => write!(
                f,
                "the path is protected (.git, .fanout, repository config, secrets) and never writable"
            ),
            DenyReason::Secret => write!(f, "the file holds secrets and is not readable"),
            DenyReason::ReadOnlyAgent => write!(f, "this agent has read-only file access"),
            DenyReason::ShellDenied => write!(f, "shell commands are disabled for this agent"),
            DenyReason::ShellSyntax { detail } => write!(
                f,
                "commands run without a shell: {detail}; run one allowlisted command per call"
            ),
            DenyReason::CommandNotAllowed => write!(f, "the command is not on the shell allowlist"),
            DenyReason::BadPath { detail } => write!(f, "invalid path: {detail}"),
            DenyReason::Symlink => write!(f, "the path goes through a symbolic link"),
            DenyReason::HardLink => {
                write!(
                    f,
                    "the file has more than one hard link and may alias a file outside the scope"
                )
            }
            DenyReason::NotRegularFile => write!(f, "not a regular file"),
            DenyReason::SandboxUnavailable { detail } => {
                write!(f, "the kernel sandbox cannot enforce the policy: {detail}")
            }
            DenyReason::ScopeViolation => {
                write!(
                    f,
                    "the command changed a file outside the declared scope; the change was reverted"
                )
            }
        }
    }
}

/// One agent's permissions.
#[derive(Debug, Clone)]
pub struct ScopePolicy {
    pub agent_id: AgentId,
    /// `None`: the whole repository.
    pub read: Option<PathSet>,
    pub write: PathSet,
    /// User-configured extra protected globs (the built-ins are always applied).
    pub protected: Option<PathSet>,
    /// Repository-relative directories that `.git` files point at (`gitdir:`).
    pub gitdirs: Vec<String>,
    pub tools: BTreeSet<String>,
    pub shell: ShellPolicy,
    pub network: NetworkAccess,
    pub sandbox_mode: SandboxMode,
}

impl ScopePolicy {
    /// A policy with the given write scope, all tools, no shell, no network, enforce mode.
    pub fn new(agent_id: impl Into<AgentId>, write: &[&str]) -> Result<ScopePolicy, PolicyError> {
        Ok(ScopePolicy {
            agent_id: agent_id.into(),
            read: None,
            write: PathSet::new(write)?,
            protected: None,
            gitdirs: Vec::new(),
            tools: TOOL_NAMES.iter().map(|name| name.to_string()).collect(),
            shell: ShellPolicy::Deny,
            network: NetworkAccess::Deny,
            sandbox_mode: SandboxMode::Enforce,
        })
    }

    /// The policy for `spec` under the workflow's `config`.
    pub fn from_config(config: &Config, spec: &AgentSpec) -> Result<ScopePolicy, PolicyError> {
        let write: Vec<&str> = match config.agent_permissions.file_access {
            FileAccess::Scoped => spec.scope.iter().map(String::as_str).collect(),
            FileAccess::ReadOnly | FileAccess::None => Vec::new(),
        };
        let mut tools: BTreeSet<String> = if spec.tools.is_empty() {
            TOOL_NAMES.iter().map(|name| name.to_string()).collect()
        } else {
            spec.tools
                .iter()
                .filter(|name| TOOL_NAMES.contains(&name.as_str()))
                .cloned()
                .collect()
        };
        if config.agent_permissions.file_access == FileAccess::None {
            tools.retain(|name| name == "bash");
        }
        let shell = match config.agent_permissions.shell_exec {
            ShellExec::Deny => ShellPolicy::Deny,
            ShellExec::Restricted => ShellPolicy::Allowlist(config.shell_allowlist.clone()),
            ShellExec::Unrestricted => ShellPolicy::Unrestricted,
        };
        if shell == ShellPolicy::Deny {
            tools.remove("bash");
        }
        let protected = config.paths.protected.patterns();
        Ok(ScopePolicy {
            agent_id: spec.agent_id.clone(),
            read: spec.read_scope.as_deref().map(PathSet::new).transpose()?,
            write: PathSet::new(&write)?,
            protected: if protected.is_empty() {
                None
            } else {
                Some(PathSet::new(protected)?)
            },
            gitdirs: Vec::new(),
            tools,
            shell,
            network: match config.agent_permissions.external_api {
                ExternalApi::Deny => NetworkAccess::Deny,
                ExternalApi::Allow => NetworkAccess::Allow,
            },
            sandbox_mode: match config.agent_permissions.sandbox {
                SandboxSetting::Enforce => SandboxMode::Enforce,
                SandboxSetting::BestEffort => SandboxMode::BestEffort,
            },
        })
    }

    /// Is `relative` (normalised, `/`-separated, inside the repository) never writable?
    pub fn is_protected(&self, relative: &str) -> bool {
        let components: Vec<&str> = relative.split('/').collect();
        if components.iter().any(|component| {
            PROTECTED_COMPONENTS
                .iter()
                .any(|protected| component.eq_ignore_ascii_case(protected))
        }) {
            return true;
        }
        if let Some(name) = components.last()
            && (PROTECTED_NAMES
                .iter()
                .any(|protected| name.eq_ignore_ascii_case(protected))
                || is_secret_name(name))
        {
            return true;
        }
        if self
            .gitdirs
            .iter()
            .any(|gitdir| relative == gitdir || relative.starts_with(&format!("{gitdir}/")))
        {
            return true;
        }
        self.protected
            .as_ref()
            .is_some_and(|protected| protected.is_match(relative))
    }

    /// May the agent read `relative`?
    pub fn check_read(&self, relative: &str) -> Result<(), DenyReason> {
        if relative.split('/').any(is_secret_name) {
            return Err(DenyReason::Secret);
        }
        // Engine and repository state (`.git` holds remote URLs with tokens and hooks,
        // `.fanout` every agent's record) is not an agent's to read either.
        if relative.split('/').any(|component| {
            PROTECTED_COMPONENTS
                .iter()
                .any(|protected| component.eq_ignore_ascii_case(protected))
        }) {
            return Err(DenyReason::Protected);
        }
        match &self.read {
            Some(read) if !read.is_match(relative) && !self.write.is_match(relative) => {
                Err(DenyReason::OutsideReadScope)
            }
            _ => Ok(()),
        }
    }

    /// May the agent write (create, replace, delete) `relative`?
    pub fn check_write(&self, relative: &str) -> Result<(), DenyReason> {
        if self.is_protected(relative) {
            return Err(DenyReason::Protected);
        }
        if self.write.is_empty() {
            return Err(DenyReason::ReadOnlyAgent);
        }
        if !self.write.is_match(relative) {
            return Err(DenyReason::OutsideWriteScope);
        }
        Ok(())
    }

    /// Is the tool granted?
    pub fn check_tool(&self, name: &str) -> Result<(), DenyReason> {
        if self.tools.contains(name) {
            Ok(())
        } else {
            Err(DenyReason::ToolNotAllowed)
        }
    }

    /// May `argv` run?
    pub fn check_command<S: AsRef<str>>(&self, argv: &[S]) -> Result<(), DenyReason> {
        match &self.shell {
            ShellPolicy::Deny => Err(DenyReason::ShellDenied),
            ShellPolicy::Unrestricted => Ok(()),
            ShellPolicy::Allowlist(allowed) => {
                if allowed
                    .iter()
                    .any(|command| !command.is_open_ended() && command.permits(argv))
                {
                    Ok(())
                } else {
                    Err(DenyReason::CommandNotAllowed)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn roots_hold_every_match_and_plain_sets_are_their_roots() {
        let set =
            PathSet::new(&["src/a.rs", "./docs/", "tests/**/*.rs", "*.md", "src/a.rs"]).unwrap();
        assert_eq!(set.roots(), ["src/a.rs", "docs", "tests", ""]);
        assert!(!set.is_plain());
        for path in ["src/a.rs", "docs/x/y", "tests/u/v.rs", "README.md"] {
            assert!(set.is_match(path), "{path}");
            let roots = set.roots();
            let under = roots.iter().any(|root| {
                root.is_empty() || path == root || path.starts_with(&format!("{root}/"))
            });
            assert!(under, "{path} is under none of {roots:?}");
        }
        assert!(PathSet::new(&["src/a.rs", "lib/"]).unwrap().is_plain());
        assert!(!PathSet::new(&["src/*.rs"]).unwrap().is_plain());
        assert!(!PathSet::new(&["src/./a.rs"]).unwrap().is_plain());
    }

    #[test]
    fn protected_paths_win_over_scope() {
        let policy = ScopePolicy::new("a", &["src", ".git/hooks/pre-commit", "vendor/**"]).unwrap();
        assert_eq!(policy.check_write("src/a.rs"), Ok(()));
        assert_eq!(policy.check_write("src/deep/b.rs"), Ok(()));
        assert_eq!(
            policy.check_write(".git/hooks/pre-commit"),
            Err(DenyReason::Protected)
        );
        assert_eq!(
            policy.check_write("vendor/x/.git/hooks/post-checkout"),
            Err(DenyReason::Protected)
        );
        assert_eq!(
            policy.check_write("vendor/x/.git"),
            Err(DenyReason::Protected)
        );
        assert_eq!(policy.check_write("src/.env"), Err(DenyReason::Protected));
        assert_eq!(policy.check_write("src/.envrc"), Err(DenyReason::Protected));
        assert_eq!(
            policy.check_write("vendor/.gitattributes"),
            Err(DenyReason::Protected)
        );
        assert_eq!(
            policy.check_write(".fanout/run.db"),
            Err(DenyReason::Protected)
        );
        assert_eq!(
            policy.check_write("README.md"),
            Err(DenyReason::OutsideWriteScope)
        );
        assert_eq!(policy.check_read("src/.env.local"), Err(DenyReason::Secret));
        assert_eq!(policy.check_read("README.md"), Ok(()));
    }

    #[test]
    fn globs_do_not_cross_directories() {
        let policy = ScopePolicy::new("a", &["src/*.rs"]).unwrap();
        assert_eq!(policy.check_write("src/a.rs"), Ok(()));
        assert_eq!(
            policy.check_write("src/x/a.rs"),
            Err(DenyReason::OutsideWriteScope)
        );
        assert!(PathSet::new(&["../x"]).is_err());
        assert!(PathSet::new(&["/etc"]).is_err());
    }

    /// Plain entries are matched without globset; the answers must be the ones globset gives
    /// for the same entries (`entry` and `entry/**`, `/` as a literal separator).
    #[test]
    fn plain_entries_match_as_globs_would() {
        let entries = ["src/auth", "src/auth.rs", "docs/", "./lib/x.txt", "a b/c"];
        let set = PathSet::new(&entries).unwrap();
        assert!(set.globs.is_none(), "plain entries compile no glob");
        let mut reference = GlobSetBuilder::new();
        for entry in entries {
            let trimmed = entry.trim_start_matches("./").trim_end_matches('/');
            for pattern in [trimmed.to_string(), format!("{trimmed}/**")] {
                reference.add(
                    GlobBuilder::new(&pattern)
                        .literal_separator(true)
                        .build()
                        .unwrap(),
                );
            }
        }
        let reference = reference.build().unwrap();
        for path in [
            "src/auth",
            "src/auth/login.rs",
            "src/auth/deep/x/y.rs",
            "src/authx",
            "src/auth.rs",
            "src/auth.rs.bak",
            "src",
            "docs",
            "docs/a.md",
            "docsx/a.md",
            "lib/x.txt",
            "lib/x.txt/inner",
            "lib/x.txt2",
            "a b/c",
            "a b/c/d",
            "a b",
            "other/src/auth",
        ] {
            assert_eq!(set.is_match(path), reference.is_match(path), "{path}");
        }
        let mixed = PathSet::new(&["src/*.rs", "docs"]).unwrap();
        assert!(mixed.is_match("src/a.rs") && mixed.is_match("docs/x/y.md"));
        assert!(!mixed.is_match("src/x/a.rs") && !mixed.is_match("README.md"));
        assert_eq!(mixed.patterns(), ["src/*.rs", "docs"]);
    }

    #[test]
    fn gitdir_targets_are_protected() {
        let mut policy = ScopePolicy::new("a", &["**"]).unwrap();
        policy.gitdirs.push("modules/sub".into());
        assert_eq!(
            policy.check_write("modules/sub/hooks/x"),
            Err(DenyReason::Protected)
        );
        assert_eq!(policy.check_write("modules/subway.rs"), Ok(()));
    }
}

#[cfg(test)]
mod config_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn from_config_takes_scope_tools_shell_and_network() {
        let config = Config::from_str(crate::config::INIT_TEMPLATE, "fanout.yaml").unwrap();
        let spec = AgentSpec {
            agent_id: "a1".into(),
            scope: vec!["src/auth/".into()],
            tools: vec![
                "read_file".into(),
                "edit_file".into(),
                "bash".into(),
                "nope".into(),
            ],
            ..AgentSpec::default()
        };
        let policy = ScopePolicy::from_config(&config, &spec).unwrap();
        assert!(!policy.tools.contains("nope"));
        assert!(!policy.tools.contains("write_file"));
        assert_eq!(policy.sandbox_mode, SandboxMode::Enforce);
        assert_eq!(
            policy.check_write(".git/config"),
            Err(DenyReason::Protected)
        );
        match config.agent_permissions.file_access {
            FileAccess::Scoped => assert_eq!(policy.check_write("src/auth/login.rs"), Ok(())),
            _ => assert!(policy.check_write("src/auth/login.rs").is_err()),
        }
    }

    #[test]
    fn best_effort_comes_only_from_the_workflow_file() {
        let spec = AgentSpec {
            agent_id: "a1".into(),
            scope: vec!["src/".into()],
            ..AgentSpec::default()
        };
        let strict = Config::from_str("workflow:\n  name: x\n", "fanout.yaml").unwrap();
        assert_eq!(
            ScopePolicy::from_config(&strict, &spec)
                .unwrap()
                .sandbox_mode,
            SandboxMode::Enforce
        );
        let weak = Config::from_str(
            "workflow:\n  name: x\n  agent_permissions:\n    sandbox: best_effort\n",
            "fanout.yaml",
        )
        .unwrap();
        assert_eq!(
            ScopePolicy::from_config(&weak, &spec).unwrap().sandbox_mode,
            SandboxMode::BestEffort
        );
    }
}
