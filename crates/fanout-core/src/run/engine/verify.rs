//! Verification, after the agents: the final checkpoint, the scope check of the run's whole
//! diff against the union of declared write scopes, and the workflow's test command
//! (sandboxed), with its baseline on the base commit when `verify.baseline` asks for it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{EngineError, EngineEvent, EngineInputs, Shared};
use crate::config::Config;
use crate::plan::Plan;
use crate::policy::{AgentSpec, PathSet, ScopePolicy, ShellPolicy};
use crate::retry::lock;
use crate::run::checkpoint::{CheckpointError, CheckpointId, CheckpointPolicy, Checkpointer};
use crate::sandbox::SandboxConfig;
use crate::tools::{CommandExit, ToolLimits, Toolbox};

/// The result of running a verification command. Its exit status alone decides: only
/// `exit code 0` passes; a command that cannot start, times out or is killed fails.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestOutcome {
    pub command: String,
    pub passed: bool,
    /// How the command ended.
    pub exit: CommandExit,
    /// The tail of its output.
    pub output: String,
    /// The same command on the run's base commit (`verify.baseline: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineOutcome>,
}

/// The test command on the base commit, in a temporary checkout of it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineOutcome {
    pub passed: bool,
    pub exit: CommandExit,
    pub output: String,
}

impl TestOutcome {
    /// One line for reports: passed or failed, and against the baseline when there is one.
    pub fn verdict(&self) -> String {
        let exit = self.exit.describe();
        match (&self.baseline, self.passed) {
            (None, true) => "passed".into(),
            (None, false) => format!("FAILED ({exit})"),
            (Some(base), true) if base.passed => "passed (also passed before the run)".into(),
            (Some(base), true) => format!(
                "passed (failed before the run, {}: fixed by this run)",
                base.exit.describe()
            ),
            (Some(base), false) if base.passed => {
                format!("FAILED ({exit}): broken by this run (passed on the base commit)")
            }
            (Some(base), false) => format!(
                "FAILED ({exit}): failing before the run too ({} on the base commit)",
                base.exit.describe()
            ),
        }
    }
}

/// What the verify phase found.
pub(super) struct Verification {
    pub(super) final_checkpoint: CheckpointId,
    /// Checkpoints of the run, the final one included.
    pub(super) checkpoints: u64,
    pub(super) out_of_scope: Vec<String>,
    pub(super) files_changed: usize,
    pub(super) test: Option<TestOutcome>,
}

/// The verify phase: the final checkpoint, the scope check from `base` to it, and the test
/// command (not when cancelled: then the baseline is abandoned too).
pub(super) async fn verify(
    shared: &Shared,
    base: &CheckpointId,
    baseline: Option<tokio::task::JoinHandle<BaselineOutcome>>,
    cancel: &CancellationToken,
    on_event: &mut impl FnMut(&EngineEvent),
) -> Result<Verification, EngineError> {
    on_event(&EngineEvent::Phase {
        name: "verify".into(),
    });
    let inputs = &shared.inputs;
    let (final_checkpoint, checkpoints) = final_checkpoint(shared, on_event).await?;
    let changed = changed_files(shared, base, &final_checkpoint)?;
    let out_of_scope = outside_scopes(&inputs.plan, &changed);

    let test = match &inputs.config.verify.test_command {
        Some(command) if !cancel.is_cancelled() => Some(run_test(inputs, command, baseline).await),
        _ => {
            if let Some(handle) = baseline {
                handle.abort();
            }
            None
        }
    };
    Ok(Verification {
        final_checkpoint,
        checkpoints,
        out_of_scope,
        files_changed: changed.len(),
        test,
    })
}

/// Stop the checkpoint worker (its last events shown) and take the final checkpoint; with
/// the number of checkpoints of the run.
async fn final_checkpoint(
    shared: &Shared,
    on_event: &mut impl FnMut(&EngineEvent),
) -> Result<(CheckpointId, u64), EngineError> {
    let mut checkpointer = stop_checkpoint_worker(shared, on_event).await?;
    let last = checkpointer.checkpoint("final").await?;
    on_event(&EngineEvent::Checkpoint {
        seq: last.seq,
        commit: last.commit.clone(),
    });
    Ok((last, checkpointer.next_seq().saturating_sub(1)))
}

/// Stop the run's checkpoint worker (after the checkpoint it is taking, its events shown)
/// and take its checkpointer back.
pub(super) async fn stop_checkpoint_worker(
    shared: &Shared,
    on_event: &mut impl FnMut(&EngineEvent),
) -> Result<Checkpointer, EngineError> {
    let worker = lock(&shared.checkpoints).take();
    let Some(worker) = worker else {
        return Err(EngineError::Checkpoint(CheckpointError::Join {
            message: "the checkpoint worker is gone".into(),
        }));
    };
    let checkpointer = worker.finish().await?;
    for e in std::mem::take(&mut *lock(&shared.events)) {
        on_event(&e);
    }
    Ok(checkpointer)
}

/// Hand `checkpointer` back to a checkpoint worker of the run (`completed` agents so far).
pub(super) fn restart_checkpoint_worker(
    shared: &Shared,
    checkpointer: Checkpointer,
    completed: u64,
) {
    let policy = CheckpointPolicy::from_config(&shared.inputs.config.rollback);
    let worker = super::orchestrate::checkpoint_worker(
        checkpointer,
        policy,
        completed,
        Arc::clone(&shared.events),
    );
    *lock(&shared.checkpoints) = Some(worker);
}

/// Paths that differ between two checkpoints.
fn changed_files(
    shared: &Shared,
    from: &CheckpointId,
    to: &CheckpointId,
) -> Result<Vec<String>, EngineError> {
    let git = crate::git::Git::open(&shared.inputs.repo)?;
    let mut command = git.read_only();
    command.args([
        "diff-tree",
        "-r",
        "--name-only",
        "-z",
        "--no-renames",
        &from.commit,
        &to.commit,
    ]);
    let out = git.run(command, None)?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// Changed paths that no sub-task declared it would write.
fn outside_scopes(plan: &Plan, changed: &[String]) -> Vec<String> {
    let mut patterns: Vec<String> = Vec::new();
    for subtask in &plan.subtasks {
        patterns.extend(subtask.effective_write_scope().iter().cloned());
    }
    let Ok(union) = PathSet::new(&patterns) else {
        return changed.to_vec();
    };
    changed
        .iter()
        .filter(|path| !union.is_match(path))
        .cloned()
        .collect()
}

/// Run the workflow's test command in the sandbox (read-only tree at `root`, no network).
async fn run_test_in(
    config: &Config,
    root: &Path,
    sandbox: &SandboxConfig,
    command: &crate::config::ShellCommand,
) -> (CommandExit, String) {
    let spec = AgentSpec {
        agent_id: "verify".into(),
        task_id: "verify".into(),
        description: "run the workflow's test command".into(),
        scope: Vec::new(),
        read_scope: None,
        tools: vec!["bash".into()],
    };
    let toolbox = ScopePolicy::from_config(config, &spec)
        .map(|mut policy| {
            policy.shell = ShellPolicy::Allowlist(vec![command.clone()]);
            policy.tools = ["bash".to_string()].into();
            policy
        })
        .map_err(|e| e.to_string())
        .and_then(|policy| {
            Toolbox::new(root, policy, sandbox.clone(), ToolLimits::default())
                .map_err(|e| e.to_string())
        });
    match toolbox {
        Ok(toolbox) => {
            let run = toolbox.run_command(command.argv()).await;
            (run.exit, tail(&run.output.content, 4000))
        }
        Err(message) => (CommandExit::NotStarted, message),
    }
}

async fn run_test(
    inputs: &EngineInputs,
    command: &crate::config::ShellCommand,
    baseline: Option<tokio::task::JoinHandle<BaselineOutcome>>,
) -> TestOutcome {
    let (exit, output) = run_test_in(&inputs.config, &inputs.repo, &inputs.sandbox, command).await;
    let baseline = match baseline {
        Some(handle) => Some(handle.await.unwrap_or_else(|error| BaselineOutcome {
            passed: false,
            exit: CommandExit::NotStarted,
            output: format!("the baseline run failed: {error}"),
        })),
        None => None,
    };
    TestOutcome {
        command: command.argv().join(" "),
        passed: exit.success(),
        exit,
        output,
        baseline,
    }
}

/// Start the test command on the base commit, in a temporary git worktree of it (tracked
/// files only: no `node_modules` or build output), in the same sandbox. It runs while the
/// agents do.
pub(super) fn start_baseline(
    inputs: &EngineInputs,
    base_commit: &str,
) -> Option<tokio::task::JoinHandle<BaselineOutcome>> {
    let command = inputs.config.verify.test_command.clone()?;
    if !inputs.config.verify.baseline {
        return None;
    }
    let config = Arc::clone(&inputs.config);
    let repo = inputs.repo.clone();
    let sandbox = inputs.sandbox.clone();
    let commit = base_commit.to_owned();
    Some(tokio::spawn(async move {
        let checkout = tokio::task::spawn_blocking(move || checkout_tree(&repo, &commit)).await;
        let dir = match checkout {
            Ok(Ok(dir)) => dir,
            Ok(Err(error)) => {
                return BaselineOutcome {
                    passed: false,
                    exit: CommandExit::NotStarted,
                    output: format!("cannot check out the base commit: {error}"),
                };
            }
            Err(error) => {
                return BaselineOutcome {
                    passed: false,
                    exit: CommandExit::NotStarted,
                    output: format!("cannot check out the base commit: {error}"),
                };
            }
        };
        let (exit, output) = run_test_in(&config, &dir.path(), &sandbox, &command).await;
        drop(tokio::task::spawn_blocking(move || drop(dir)));
        BaselineOutcome {
            passed: exit.success(),
            exit,
            output,
        }
    }))
}

/// A temporary git worktree of `commit`, detached (the repository's HEAD, branch, index and
/// work tree are not touched), removed when dropped; so test commands that use git see a
/// repository, as they do in the real tree.
struct BaselineTree {
    repo: PathBuf,
    dir: tempfile::TempDir,
}

impl BaselineTree {
    fn path(&self) -> PathBuf {
        self.dir.path().join("tree")
    }
}

impl Drop for BaselineTree {
    fn drop(&mut self) {
        if let Ok(git) = crate::git::Git::open(&self.repo) {
            let mut remove = git.command();
            remove
                .args(["worktree", "remove", "--force"])
                .arg(self.path());
            let _ = git.run(remove, None);
            let mut prune = git.command();
            prune.args(["worktree", "prune"]);
            let _ = git.run(prune, None);
        }
    }
}

fn checkout_tree(repo: &Path, commit: &str) -> Result<BaselineTree, String> {
    let dir = tempfile::Builder::new()
        .prefix("fanout-baseline-")
        .tempdir()
        .map_err(|error| format!("temporary directory: {error}"))?;
    let tree = BaselineTree {
        repo: repo.to_path_buf(),
        dir,
    };
    let git = crate::git::Git::open(repo).map_err(|error| error.to_string())?;
    let mut add = git.command();
    add.args(["worktree", "add", "--detach", "--force"])
        .arg(tree.path())
        .args(["--end-of-options", commit]);
    git.run(add, None).map_err(|error| error.to_string())?;
    Ok(tree)
}

pub(super) fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}
