//! Fixtures shared by the integration test modules: the security fixture repository (scope,
//! canaries, escape check), git in temp directories, the simulator, providers and fleets
//! pointed at it. Test modules take what they need from here, never from each other.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use fanout_core::config::ShellCommand;
use fanout_core::fleet::Fleet;
use fanout_core::governor::{Governor, GovernorConfig};
use fanout_core::policy::{ScopePolicy, ShellPolicy};
use fanout_core::provider::Provider;
use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::openai::{OpenAiConfig, OpenAiProvider};
use fanout_core::retry::{RetryBudget, RetryBudgetConfig, RetryPolicy};
use fanout_core::sandbox::SandboxConfig;
use fanout_core::tools::{ToolLimits, Toolbox};
use fanout_sim::{Scenario, Sim, SimConfig, SimHandle};

// ---- git ------------------------------------------------------------------------------------

/// `git -C repo ARGS` with a fixed identity and no global config; panics unless it succeeds.
/// Returns its stdout.
pub(crate) fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=fanout",
            "-c",
            "user.email=fanout@example.invalid",
        ])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

// ---- the security fixture -------------------------------------------------------------------

/// The secret in the fixture's `.env` files: it must never leave the repository.
pub(crate) const SECRET: &str = "ANTHROPIC_API_KEY=sk-canary-secret-1234";

/// A repository with an agent scope of `src/a.rs`, `src/new.rs` and `docs/`, canaries
/// outside the repository and out-of-scope files inside it.
pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub base: PathBuf,
    pub root: PathBuf,
    pub outside: PathBuf,
    recorded: BTreeMap<PathBuf, Option<(u64, u32)>>,
}

/// A file's content (or a symlink's target) hash and mode; `None` when it does not exist.
pub(crate) fn fingerprint(path: &Path) -> Option<(u64, u32)> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let mut hasher = DefaultHasher::new();
    if meta.file_type().is_symlink() {
        std::fs::read_link(path).ok()?.hash(&mut hasher);
    } else if meta.is_file() {
        std::fs::read(path).ok()?.hash(&mut hasher);
    }
    Some((hasher.finish(), meta.mode()))
}

/// Every path under `dir` (directories included), skipping git object stores.
pub(crate) fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                if path.file_name().is_some_and(|n| n == "objects") {
                    continue;
                }
                pending.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        let root = base.join("repo");
        let outside = base.join("outside");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::create_dir_all(root.join("docs")).unwrap();
        std::fs::create_dir_all(root.join("lib")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("src/a.rs"), "fn a() {}\n").unwrap();
        std::fs::write(root.join("src/b.rs"), "fn b() {}\n").unwrap();
        std::fs::write(root.join("src/c.rs"), "fn c() {}\n").unwrap();
        std::fs::write(root.join("lib/keep.rs"), "fn keep() {}\n").unwrap();
        std::fs::write(root.join("docs/guide.md"), "# Guide\n").unwrap();
        std::fs::write(root.join("README.md"), "# Repo\n").unwrap();
        std::fs::write(root.join(".env"), format!("{SECRET}\n")).unwrap();
        std::fs::write(root.join("src/.env"), format!("{SECRET}\n")).unwrap();
        std::fs::write(outside.join("canary.txt"), "canary\n").unwrap();
        std::fs::write(outside.join("id_rsa"), "PRIVATE KEY\n").unwrap();
        git(&root, &["init", "-q"]);
        git(
            &root,
            &[
                "add",
                "src/a.rs",
                "src/b.rs",
                "src/c.rs",
                "docs",
                "lib",
                "README.md",
            ],
        );
        git(&root, &["commit", "-qm", "init"]);
        // A nested repository and a `.git` file pointing at a directory inside the repo.
        std::fs::create_dir_all(root.join("vendor/x")).unwrap();
        git(&root.join("vendor/x"), &["init", "-q"]);
        std::fs::create_dir_all(root.join("modules/sub/hooks")).unwrap();
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/.git"), "gitdir: ../modules/sub\n").unwrap();
        let mut fixture = Fixture {
            _dir: dir,
            base,
            root,
            outside,
            recorded: BTreeMap::new(),
        };
        fixture.record();
        fixture
    }

    /// Record every file outside the scope (outside the repo, and out-of-scope repo files).
    pub fn record(&mut self) {
        self.recorded.clear();
        for path in walk(&self.base) {
            let relative = path.strip_prefix(&self.root).ok();
            let in_scope = relative.is_some_and(|r| {
                let r = r.to_string_lossy();
                r == "src/a.rs" || r == "src/new.rs" || r.starts_with("docs/")
            });
            if !in_scope {
                self.recorded.insert(path.clone(), fingerprint(&path));
            }
        }
        for extra in [
            self.outside.join("x"),
            self.outside.join("pwned"),
            self.root.join(".git/hooks/pre-commit"),
            self.root.join(".git/hooks/post-checkout"),
            self.root.join("vendor/x/.git/hooks/post-checkout"),
            self.root.join("modules/sub/hooks/post-checkout"),
            self.root.join(".envrc"),
            self.root.join("src/b2.rs"),
            self.root.join("src/.env.local"),
            self.root.join(".fanout/policy.yaml"),
        ] {
            self.recorded.insert(extra.clone(), fingerprint(&extra));
        }
    }

    /// Every canary unchanged and no new file outside the scope. Returns what changed.
    pub fn escapes(&self) -> Vec<String> {
        let mut changed = Vec::new();
        for (path, before) in &self.recorded {
            if &fingerprint(path) != before {
                changed.push(format!("changed: {}", path.display()));
            }
        }
        for path in walk(&self.base) {
            if self.recorded.contains_key(&path) {
                continue;
            }
            let relative = path
                .strip_prefix(&self.root)
                .ok()
                .map(|r| r.to_string_lossy().into_owned());
            let allowed = relative.as_deref().is_some_and(|r| {
                r == "src/a.rs" || r == "src/new.rs" || r.starts_with("docs/") || r == "docs"
            });
            if !allowed {
                changed.push(format!("created: {}", path.display()));
            }
        }
        changed
    }

    pub fn assert_no_escape(&self) {
        let escapes = self.escapes();
        assert!(escapes.is_empty(), "escapes: {escapes:#?}");
    }

    pub fn policy(&self, shell: &[&str]) -> ScopePolicy {
        let mut policy = ScopePolicy::new("agent-1", &["src/a.rs", "src/new.rs", "docs/"]).unwrap();
        policy.shell = if shell.is_empty() {
            ShellPolicy::Deny
        } else {
            ShellPolicy::Allowlist(
                shell
                    .iter()
                    .map(|c| ShellCommand::parse(c).unwrap())
                    .collect(),
            )
        };
        policy
    }

    pub fn toolbox(&self, shell: &[&str]) -> Toolbox {
        self.toolbox_with(
            self.policy(shell),
            SandboxConfig {
                timeout: Duration::from_secs(10),
                ..SandboxConfig::default()
            },
        )
    }

    pub fn toolbox_with(&self, policy: ScopePolicy, config: SandboxConfig) -> Toolbox {
        Toolbox::new(&self.root, policy, config, ToolLimits::default()).unwrap()
    }
}

// ---- the simulator, providers and fleets ----------------------------------------------------

/// A simulator on a free loopback port.
pub(crate) async fn start_sim(config: SimConfig) -> SimHandle {
    Sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A simulator playing the scenario `yaml` (JSON is YAML too), otherwise at its defaults.
pub(crate) async fn scenario_sim(yaml: &str) -> SimHandle {
    start_sim(SimConfig {
        scenario: Some(Scenario::from_yaml(yaml, "test.yaml").unwrap()),
        ..SimConfig::default()
    })
    .await
}

/// The Anthropic provider pointed at `sim`.
pub(crate) fn anthropic(sim: &SimHandle) -> Arc<dyn Provider> {
    Arc::new(
        AnthropicProvider::new(AnthropicConfig {
            base_url: sim.base_url(),
            ..AnthropicConfig::new("test-key")
        })
        .unwrap(),
    )
}

/// The OpenAI provider pointed at `sim`.
pub(crate) fn openai(sim: &SimHandle) -> Arc<dyn Provider> {
    Arc::new(
        OpenAiProvider::new(OpenAiConfig {
            base_url: format!("{}/v1", sim.base_url()),
            ..OpenAiConfig::new("test-key")
        })
        .unwrap(),
    )
}

/// A fleet over `provider` with `governor`, the default retry policy and retry budget.
pub(crate) fn fleet_with(provider: Arc<dyn Provider>, governor: GovernorConfig) -> Fleet {
    Fleet::new(
        provider,
        Governor::new(governor),
        RetryPolicy::default(),
        Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
    )
}

/// A fleet talking Anthropic to `sim`, its governor told no limits.
pub(crate) fn fleet(sim: &SimHandle) -> Fleet {
    fleet_with(anthropic(sim), GovernorConfig::default())
}
