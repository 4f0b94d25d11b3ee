//! A pure coordinator (`fanout run … --store URL --local-slots 0`): it records the run,
//! publishes the plan, its hash, the workflow and the base bundle, enqueues one unit per
//! agent, then applies committed patches to the user's repository in commit order
//! ([`super::apply`]) and gives up the dependants of units that failed, until every unit is
//! committed or skipped. [`coordinate`] with `resume` continues a coordinator that died,
//! from any machine with a clone of the repository: publishing is idempotent and so is
//! applying.
//!
//! Not yet here (the local engine's end-of-run phases are written against its own state):
//! checkpoints, the final scope check, the test command, the synthesis call and
//! `summary.json`; agents on this machine beside the workers (`--local-slots N > 0`).

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::apply::{ApplyError, apply_committed};
use super::publish::{PublishError, base_bundle, publish_run};
use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::plan::{Plan, hash_bytes};
use crate::run::engine::EngineInputs;
use crate::store::StoreLocation;
use crate::store::{NewRun, RunStatus, Store, StoreError, StoreReader, UnitState};

/// What a coordinator needs: the run, its plan and where it is recorded and applied.
#[derive(Debug, Clone)]
pub struct CoordinatorInputs {
    pub run_id: RunId,
    pub plan: Plan,
    pub plan_hash: Option<String>,
    pub config_path: Option<std::path::PathBuf>,
    /// The user's repository, where committed patches are applied.
    pub repo: std::path::PathBuf,
    pub store: StoreLocation,
    pub simulated: bool,
}

impl CoordinatorInputs {
    /// A fresh run's, from the engine's inputs the CLI prepared.
    pub fn from_engine(inputs: &EngineInputs) -> CoordinatorInputs {
        CoordinatorInputs {
            run_id: inputs.run_id.clone(),
            plan: inputs.plan.clone(),
            plan_hash: inputs.plan_hash.clone(),
            config_path: inputs.config_path.clone(),
            repo: inputs.repo.clone(),
            store: inputs.store.clone(),
            simulated: inputs.simulated,
        }
    }

    /// A published run's, to resume it at `repo` (any clone of the repository): the plan as
    /// published, its hash checked. `None` when the run was not published.
    pub fn published(
        store: &StoreLocation,
        run_id: &RunId,
        repo: std::path::PathBuf,
    ) -> Result<Option<CoordinatorInputs>, CoordinatorError> {
        let reader = StoreReader::open_at(store)?;
        let Some(record) = reader.run_plan(run_id)? else {
            return Ok(None);
        };
        let found = hash_bytes(record.plan.as_bytes());
        if found != record.plan_hash {
            return Err(CoordinatorError::PlanHash {
                found,
                recorded: record.plan_hash,
            });
        }
        let plan: Plan = serde_json::from_str(&record.plan).map_err(CoordinatorError::PlanJson)?;
        Ok(Some(CoordinatorInputs {
            run_id: run_id.clone(),
            plan,
            plan_hash: Some(record.plan_hash),
            config_path: None,
            repo,
            store: store.clone(),
            // Only a fresh run is recorded with it.
            simulated: false,
        }))
    }
}

/// How a coordinated run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoordinatorOutcome {
    pub run_id: RunId,
    pub status: RunStatus,
    pub agents_planned: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Patches applied to the tree by this process, and found already applied (by a
    /// coordinator that died before recording them).
    pub applied: usize,
    pub recognised: usize,
}

/// Why a coordinator stopped.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("git: {0}")]
    Git(#[from] GitError),
    #[error("the repository has no commit to start from")]
    NoBase,
    #[error("the published plan's hash is {found}, not the recorded {recorded}")]
    PlanHash { found: String, recorded: String },
    #[error("the published plan cannot be read: {0}")]
    PlanJson(serde_json::Error),
}

/// Coordinate `inputs`' run through its store until every unit is done (or `cancel`). A
/// fresh run is recorded and published first; with `resume` it is reopened and its
/// published plan is used as it is.
pub async fn coordinate(
    inputs: &CoordinatorInputs,
    workflow: String,
    workflow_path: Option<String>,
    resume: bool,
    cancel: &CancellationToken,
) -> Result<CoordinatorOutcome, CoordinatorError> {
    let store = Store::open_at(&inputs.store)?;
    if resume {
        store.reopen_run(&inputs.run_id).await?;
    } else {
        let base = Git::open(&inputs.repo)?
            .resolve_commit("HEAD")?
            .ok_or(CoordinatorError::NoBase)?;
        store
            .create_run(NewRun {
                run_id: inputs.run_id.clone(),
                workflow: inputs.plan.workflow.clone(),
                config_path: inputs.config_path.clone(),
                plan_hash: inputs.plan_hash.clone(),
                repo: Some(inputs.repo.clone()),
                status: RunStatus::Running,
                started_at: SystemTime::now(),
                base_commit: Some(base.clone()),
                agents_planned: inputs.plan.subtasks.len() as u32,
                simulated: inputs.simulated,
            })
            .await?;
        let repo = inputs.repo.clone();
        let commit = base.clone();
        let bundle = tokio::task::spawn_blocking(move || base_bundle(&repo, &commit))
            .await
            .map_err(|_| StoreError::WriterClosed {
                what: "the base bundle",
            })??;
        publish_run(
            &store,
            &inputs.run_id,
            &inputs.plan,
            workflow,
            workflow_path,
            &base,
            bundle,
        )
        .await?;
    }
    let mut outcome = CoordinatorOutcome {
        run_id: inputs.run_id.clone(),
        status: RunStatus::Running,
        agents_planned: inputs.plan.subtasks.len(),
        succeeded: 0,
        failed: 0,
        skipped: 0,
        applied: 0,
        recognised: 0,
    };
    // A resume checks every committed patch against its own tree once.
    let mut recheck = resume;
    loop {
        let done =
            apply_committed(&store, &inputs.store, &inputs.run_id, &inputs.repo, recheck).await?;
        recheck = false;
        outcome.applied += done.applied.len();
        outcome.recognised += done.recognised.len();
        let location = inputs.store.clone();
        let run = inputs.run_id.clone();
        let units =
            tokio::task::spawn_blocking(move || StoreReader::open_at(&location)?.units(&run))
                .await
                .map_err(|_| StoreError::WriterClosed {
                    what: "a units read",
                })??;
        let blocked = blocked(&units);
        if !blocked.is_empty() {
            store.skip_units(&inputs.run_id, blocked).await?;
            continue;
        }
        let all_done = units.iter().all(|unit| {
            (unit.state.is_final() && unit.applied_at.is_some()) || unit.state == UnitState::Skipped
        });
        if all_done {
            let count = |state| units.iter().filter(|unit| unit.state == state).count();
            outcome.succeeded = count(UnitState::Committed);
            outcome.failed = count(UnitState::Failed);
            outcome.skipped = count(UnitState::Skipped);
            break;
        }
        tokio::select! {
            () = cancel.cancelled() => {
                store
                    .set_run_status(&inputs.run_id, RunStatus::Cancelled, Some(SystemTime::now()), None)
                    .await?;
                outcome.status = RunStatus::Cancelled;
                let _ = store.close().await;
                return Ok(outcome);
            }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    outcome.status = if outcome.succeeded == outcome.agents_planned {
        RunStatus::Completed
    } else {
        RunStatus::Partial
    };
    store
        .set_run_status(
            &inputs.run_id,
            outcome.status,
            Some(SystemTime::now()),
            None,
        )
        .await?;
    let _ = store.close().await;
    Ok(outcome)
}

/// Ready units that wait on a unit that failed or was skipped: they will never run.
fn blocked(units: &[crate::store::UnitRow]) -> Vec<AgentId> {
    let gone: HashSet<&AgentId> = units
        .iter()
        .filter(|unit| matches!(unit.state, UnitState::Failed | UnitState::Skipped))
        .map(|unit| &unit.agent_id)
        .collect();
    units
        .iter()
        .filter(|unit| {
            unit.state == UnitState::Ready && unit.depends_on.iter().any(|dep| gone.contains(dep))
        })
        .map(|unit| unit.agent_id.clone())
        .collect()
}
