//! What a coordinator gives its workers: the reviewed plan (as JSON, with its `sha256:`
//! hash, which workers check before they run anything), the workflow file's text, the run's
//! dollar budget (the workflow's `budgets.run.max_dollars`) and the base commit as a `git
//! bundle`, stored once per run; then one unit per sub-task with its dependencies and its
//! estimated cost (the plan's estimate, the same numbers the local scheduler reserves), which
//! a lease reserves against the budget ([`crate::store::units`]).

use std::path::Path;
use std::time::SystemTime;

use crate::config::{Config, ConfigError};
use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::plan::{Plan, hash_bytes};
use crate::store::{RunPlanRecord, Store, StoreError, UnitSpec};

/// Why a run could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot bundle the base commit: {0}")]
    Git(#[from] GitError),
    #[error("cannot encode the plan: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the workflow cannot be read: {0}")]
    Workflow(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// `base_commit` of the repository at `repo` as a `git bundle` (its history up to it).
pub fn base_bundle(repo: &Path, base_commit: &str) -> Result<Vec<u8>, GitError> {
    let git = Git::open(repo)?;
    // A bundle names refs; a ref of ours points at the base while it is made.
    let name = format!("refs/fanout/bundle/{base_commit}");
    let mut command = git.command();
    command.args(["update-ref", &name, base_commit]);
    git.run(command, None)?;
    let mut command = git.read_only();
    command.args(["bundle", "create", "-q", "-", &name]);
    let bundle = git.run(command, None);
    let mut command = git.command();
    command.args(["update-ref", "-d", &name]);
    let _ = git.run(command, None);
    bundle
}

/// Store `plan` (hashed as published), the workflow's text, its run budget and the base
/// bundle for `run_id`, and enqueue one unit per sub-task with its estimated dollars
/// (`estimated_dollars`, in plan order; missing estimates are 0, so only actual spend counts
/// against the budget for them). Idempotent.
#[allow(clippy::too_many_arguments)]
pub async fn publish_run(
    store: &Store,
    run_id: &RunId,
    plan: &Plan,
    workflow: String,
    workflow_path: Option<String>,
    base_commit: &str,
    bundle: Vec<u8>,
    estimated_dollars: &[f64],
) -> Result<String, PublishError> {
    // The budget of the very text the workers will run under.
    let origin = workflow_path.as_deref().unwrap_or("workflow.yaml");
    let max_dollars = Config::from_str(&workflow, origin)?.budgets.run.max_dollars;
    let text = serde_json::to_string_pretty(plan)?;
    let plan_hash = hash_bytes(text.as_bytes());
    let record = RunPlanRecord {
        run_id: run_id.clone(),
        plan_hash: plan_hash.clone(),
        plan: text,
        workflow,
        workflow_path,
        base_commit: base_commit.to_owned(),
        base_bundle: bundle,
        max_dollars,
        created_at: SystemTime::now(),
    };
    let units = plan
        .subtasks
        .iter()
        .enumerate()
        .map(|(index, subtask)| UnitSpec {
            estimated_usd: estimated_dollars.get(index).copied().unwrap_or(0.0),
            ..UnitSpec::agent(
                AgentId::from(&subtask.task_id),
                subtask.depends_on.iter().map(AgentId::from).collect(),
            )
        })
        .collect();
    store.publish_units(record, units).await?;
    Ok(plan_hash)
}
