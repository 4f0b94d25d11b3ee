//! The agents phase of a run shared with `fanout worker` processes (`fanout run … --store
//! URL --local-slots N`): the run is published for workers (the plan with its hash, the
//! workflow's text, the base checkpoint as a git bundle, one unit per sub-task with its
//! estimated dollars, which the workers' leases reserve against the run's budget), then this
//! process applies what they commit to the user's tree in commit order, takes checkpoints on
//! the workflow's schedule, gives up the dependants of failures, and shows each unit's
//! progress as the local agents phase shows an agent's. With `local_slots > 0` it also runs
//! a worker of its own on the same store, in a cache beside the run (never in the user's
//! tree). The phases after it (verification, synthesis, totals) are the local run's own.
//!
//! A resumed shared run continues from any clone of the repository: a clone without the
//! run's base imports it from the published bundle, patches recorded as applied are checked
//! against this tree once (applied again where missing), and checkpoint numbers continue
//! after those the store records.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{AgentRecord, EngineError, EngineEvent, EngineInputs, Shared, blocking};
use crate::backend::Backend;
use crate::config::Mode;
use crate::distributed::{
    Applier, ApplyError, Pass, PassReader, PublishError, WorkerOptions, publish_run,
};
use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::plan::TaskId;
use crate::retry::lock;
use crate::run::checkpoint::{CheckpointId, CheckpointPolicy, Checkpointer, checkpoint_ref};
use crate::run::scheduler::{NotRun, SchedulerReport, TaskOutcome};
use crate::store::{AgentStatus, BUDGET_EXHAUSTED, StoreReader, UnitRow, UnitState};

/// A run whose agents are units in the store, leased by `fanout worker` processes.
#[derive(Debug, Clone)]
pub struct Distribution {
    /// The workflow file's text and its path in the repository, published for workers (a
    /// resumed run's are in the store already).
    pub workflow: String,
    pub workflow_path: Option<String>,
    /// Units this process runs itself beside the workers (0: it only coordinates).
    pub local_slots: usize,
    /// The model API its own slots call: the run's backend, so that `--sim` is one simulator
    /// for the planner, the local slots and the synthesis.
    pub backend: Option<Arc<Backend>>,
    /// Where its own slots make their trees.
    pub cache: PathBuf,
}

/// How often, at most, the store is asked what the workers committed when nothing came in
/// (see the pause after each pass).
const POLL: Duration = Duration::from_millis(50);

/// How long a due checkpoint may wait for a burst of commits to be applied.
const CHECKPOINT_DELAY: Duration = Duration::from_secs(1);

/// Why a shared run could not go on (unit failures are not errors: they are in the report).
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("the run's base {commit} cannot be imported from its published bundle: {source}")]
    Base {
        commit: String,
        #[source]
        source: GitError,
    },
    #[error("the published run has no plan record in the store")]
    NotPublished,
    #[error("this process's own worker stopped: {0}")]
    Worker(String),
}

/// Before the checkpointer is made, in a resumed shared run: make sure this clone has the
/// run's base (checkpoint 0), imported from the published bundle when it has not.
pub(super) async fn ensure_base(inputs: &EngineInputs) -> Result<(), EngineError> {
    let location = inputs.store.clone();
    let run = inputs.run_id.clone();
    let record = blocking(move || StoreReader::open_at(&location)?.run_plan(&run))
        .await??
        .ok_or(RemoteError::NotPublished)?;
    let repo = inputs.repo.clone();
    let run_id = inputs.run_id.clone();
    let commit = record.base_commit.clone();
    blocking(move || import_base(&repo, &run_id, &record.base_commit, &record.base_bundle))
        .await?
        .map_err(|source| RemoteError::Base { commit, source }.into())
}

/// `base_commit` under the run's checkpoint-0 ref at `repo`, fetched from `bundle` if the
/// repository does not hold it.
fn import_base(repo: &Path, run_id: &RunId, base: &str, bundle: &[u8]) -> Result<(), GitError> {
    let git = Git::open(repo)?;
    let base_ref = checkpoint_ref(run_id, 0);
    if git.resolve_commit(&base_ref)?.is_some() {
        return Ok(());
    }
    if git.resolve_commit(base)?.is_none() {
        let file = tempfile::NamedTempFile::new().map_err(|error| GitError::Unexpected {
            dir: repo.to_path_buf(),
            args: "bundle".into(),
            detail: format!("cannot write the bundle to a temporary file: {error}"),
        })?;
        std::fs::write(file.path(), bundle).map_err(|error| GitError::Unexpected {
            dir: repo.to_path_buf(),
            args: "bundle".into(),
            detail: format!("cannot write the bundle to a temporary file: {error}"),
        })?;
        let mut fetch = git.command();
        fetch
            .args(["fetch", "-q", "--no-tags"])
            .arg(file.path())
            .arg(format!("refs/fanout/bundle/{base}"));
        git.run(fetch, None)?;
    }
    let mut update = git.command();
    update.args(["update-ref", &base_ref, base]);
    git.run(update, None)?;
    Ok(())
}

/// Checkpoint numbers of a resumed shared run go on after every checkpoint the store records
/// (taken by a coordinator in another clone, whose refs this one has not).
pub(super) fn continue_numbering(
    inputs: &EngineInputs,
    checkpointer: &mut Checkpointer,
) -> Result<(), EngineError> {
    let recorded = StoreReader::open_at(&inputs.store)?.checkpoints(&inputs.run_id)?;
    if let Some(last) = recorded.iter().map(|row| row.seq).max() {
        checkpointer.continue_after(last);
    }
    Ok(())
}

/// Where the units of a run stand, as this process has shown them.
#[derive(Default)]
struct Shown {
    scheduled: HashSet<AgentId>,
    started: HashSet<(AgentId, u32)>,
    finished: HashSet<AgentId>,
}

/// The agents phase of a shared run, to every unit committed and applied, or skipped (or
/// `cancel`).
pub(super) async fn run_units(
    shared: &Arc<Shared>,
    distribution: &Distribution,
    base: &CheckpointId,
    resuming: bool,
    cancel: &CancellationToken,
    on_event: &mut impl FnMut(&EngineEvent),
) -> Result<SchedulerReport, EngineError> {
    let inputs = &shared.inputs;
    if !resuming {
        publish(shared, distribution, base).await?;
    }
    // Checkpoints are taken here, between applications: never of a half-applied patch.
    let mut checkpointer = super::verify::stop_checkpoint_worker(shared, on_event).await?;
    let mut policy = CheckpointPolicy::from_config(&inputs.config.rollback);
    let local = distribution
        .backend
        .as_ref()
        .filter(|_| distribution.local_slots > 0)
        .map(|backend| {
            let mut options = WorkerOptions::new(
                inputs.store.clone(),
                distribution.cache.clone(),
                distribution.local_slots,
                format!("coordinator:{}:{}", std::process::id(), inputs.run_id),
            );
            options.run = Some(inputs.run_id.clone());
            options.exit_when_done = true;
            let backend = Arc::clone(backend);
            let token = cancel.child_token();
            tokio::spawn(async move { crate::distributed::work(options, backend, &token).await })
        });

    let modes: HashMap<AgentId, Mode> = inputs
        .plan
        .subtasks
        .iter()
        .map(|subtask| (AgentId::from(&subtask.task_id), subtask.mode))
        .collect();
    let mut shown = Shown::default();
    let mut report = SchedulerReport {
        finished: Vec::new(),
        not_run: Vec::new(),
        spent: 0.0,
        peak_running: 0,
        cancelled: false,
    };
    let mut completed: u64 = 0;
    let mut recheck = resuming;
    // A due checkpoint waits while passes keep applying patches, for up to CHECKPOINT_DELAY:
    // commits come in bursts, and one checkpoint after a burst costs what one in the middle
    // of it does (and holds back the rest of it). At the end of the phase it is taken at once.
    let mut due_since: Option<std::time::Instant> = None;
    let reader = PassReader::new(inputs.store.clone());
    let mut applier = Applier::new(
        shared.store.clone(),
        reader.clone(),
        inputs.run_id.clone(),
        inputs.repo.clone(),
    );
    let result = loop {
        let pass = std::time::Instant::now();
        let Pass { applied, units } = match applier.pass(recheck).await {
            Ok(pass) => pass,
            Err(error) => break Err(EngineError::from(RemoteError::from(error))),
        };
        recheck = false;
        let skipped = blocked(&units);
        if !skipped.is_empty() {
            if let Err(error) = shared.store.skip_units(&inputs.run_id, skipped).await {
                break Err(error.into());
            }
            continue;
        }
        let running = units
            .iter()
            .filter(|unit| unit.state == UnitState::Leased)
            .count();
        report.peak_running = report.peak_running.max(running);
        show_starts(&units, &modes, &mut shown, on_event);
        let newly: Vec<&UnitRow> = units
            .iter()
            .filter(|unit| !shown.finished.contains(&unit.agent_id))
            .filter(|unit| {
                (unit.state.is_final() && unit.applied_at.is_some())
                    || unit.state == UnitState::Skipped
            })
            .collect();
        if !newly.is_empty() {
            match show_finishes(
                shared,
                &reader,
                &units,
                &newly,
                &modes,
                &mut shown,
                &mut report,
                on_event,
            ) {
                Ok(()) => {}
                Err(error) => break Err(error),
            }
        }
        // Each patch applied now is a completion for the checkpoint schedule.
        let applied_now = !applied.applied.is_empty() || !applied.recognised.is_empty();
        for agent in applied.applied.iter().chain(&applied.recognised) {
            completed += 1;
            if policy.record_completion(applied.destructive.contains(agent)) {
                due_since.get_or_insert_with(std::time::Instant::now);
            }
        }
        let finished = shown.finished.len() == units.len();
        let take = due_since
            .is_some_and(|since| finished || !applied_now || since.elapsed() >= CHECKPOINT_DELAY);
        if take {
            due_since = None;
            policy.reset();
            checkpointer.set_completed_agents(completed);
            let label = format!("after {completed} completions");
            match checkpointer.checkpoint(&label).await {
                Ok(id) => on_event(&EngineEvent::Checkpoint {
                    seq: id.seq,
                    commit: id.commit,
                }),
                Err(error) => on_event(&EngineEvent::Phase {
                    name: format!("checkpoint failed: {error}"),
                }),
            }
        }
        if finished {
            break Ok(());
        }
        // While nothing comes in, the coordinator reads for at most half the time, however
        // costly its reads are (a PostgreSQL store's more than a SQLite file's). A pass that
        // applied patches may have waited on the store or on git: the next one comes after
        // the usual poll, not after a pause that grows with the wait.
        let pause = if applied_now {
            POLL
        } else {
            POLL.max(pass.elapsed())
        };
        tokio::select! {
            () = cancel.cancelled() => {
                report.cancelled = true;
                break Ok(());
            }
            () = tokio::time::sleep(pause) => {}
        }
    };
    // Every application is recorded before the phase ends (a resume would recognise those
    // that are not, but a finished run's store says what its tree holds).
    let result = match (result, applier.settle().await) {
        (Ok(()), Err(error)) => Err(EngineError::from(RemoteError::from(error))),
        (result, _) => result,
    };
    super::verify::restart_checkpoint_worker(shared, checkpointer, completed);
    if let Some(handle) = local {
        if result.is_err() {
            handle.abort();
        }
        match handle.await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) if result.is_ok() => {
                return Err(RemoteError::Worker(error.to_string()).into());
            }
            _ => {}
        }
    }
    result.map(|()| report)
}

/// Record and publish the run for workers: the plan, its hash, the workflow, the base.
async fn publish(
    shared: &Shared,
    distribution: &Distribution,
    base: &CheckpointId,
) -> Result<(), EngineError> {
    let inputs = &shared.inputs;
    let repo = inputs.repo.clone();
    let commit = base.commit.clone();
    let bundle = blocking(move || crate::distributed::base_bundle(&repo, &commit))
        .await?
        .map_err(|source| RemoteError::Base {
            commit: base.commit.clone(),
            source,
        })?;
    publish_run(
        &shared.store,
        &inputs.run_id,
        &inputs.plan,
        distribution.workflow.clone(),
        distribution.workflow_path.clone(),
        &base.commit,
        bundle,
        &inputs.estimated_dollars,
    )
    .await
    .map_err(RemoteError::from)?;
    Ok(())
}

/// Units leased for the first time (or for a new attempt): scheduled and started.
fn show_starts(
    units: &[UnitRow],
    modes: &HashMap<AgentId, Mode>,
    shown: &mut Shown,
    on_event: &mut impl FnMut(&EngineEvent),
) {
    for unit in units.iter().filter(|unit| unit.state == UnitState::Leased) {
        let agent_id = TaskId::from(unit.agent_id.as_str());
        if shown.scheduled.insert(unit.agent_id.clone()) {
            on_event(&EngineEvent::AgentScheduled {
                agent_id: agent_id.clone(),
            });
        }
        if shown.started.insert((unit.agent_id.clone(), unit.attempt)) {
            on_event(&EngineEvent::AgentStarted {
                agent_id,
                attempt: unit.attempt,
                mode: modes.get(&unit.agent_id).copied().unwrap_or(Mode::Default),
            });
        }
    }
}

/// Units that ended since the last pass (committed and applied, failed, or skipped): their
/// records from the store, shown as the local run shows a finished agent.
#[allow(clippy::too_many_arguments)]
fn show_finishes(
    shared: &Shared,
    reader: &PassReader,
    units: &[UnitRow],
    newly: &[&UnitRow],
    modes: &HashMap<AgentId, Mode>,
    shown: &mut Shown,
    report: &mut SchedulerReport,
    on_event: &mut impl FnMut(&EngineEvent),
) -> Result<(), EngineError> {
    let inputs = &shared.inputs;
    let ended: Vec<AgentId> = newly
        .iter()
        .filter(|unit| unit.state != UnitState::Skipped)
        .map(|unit| unit.agent_id.clone())
        .collect();
    let (rows, denials) = if ended.is_empty() {
        Default::default()
    } else {
        reader.with(|reader| {
            Ok((
                reader.agent_runs_of(&inputs.run_id, &ended)?,
                reader.denials_of(&inputs.run_id, &ended)?,
            ))
        })?
    };
    for unit in newly {
        shown.finished.insert(unit.agent_id.clone());
        let agent_id = TaskId::from(unit.agent_id.as_str());
        if unit.state == UnitState::Skipped {
            let why = if unit.skip_reason.as_deref() == Some(BUDGET_EXHAUSTED) {
                // Skipped by a worker's lease: the run's budget was spent.
                NotRun::BudgetExhausted
            } else {
                match failed_dependency(units, unit) {
                    Some(dependency) => NotRun::DependencyFailed {
                        dependency: dependency.to_string(),
                    },
                    None => NotRun::Cancelled,
                }
            };
            on_event(&EngineEvent::AgentNotRun {
                agent_id,
                reason: super::orchestrate::not_run_text(&why),
            });
            report.not_run.push((unit.agent_id.to_string(), why));
            continue;
        }
        let attempts: Vec<_> = rows
            .iter()
            .filter(|row| row.agent_id == unit.agent_id)
            .collect();
        let last = attempts.iter().max_by_key(|row| row.attempt);
        let succeeded = unit.state == UnitState::Committed;
        let status = if succeeded {
            AgentStatus::Success
        } else {
            last.and_then(|row| row.status)
                .unwrap_or(AgentStatus::Failure)
        };
        let record = AgentRecord {
            status,
            mode: last
                .and_then(|row| row.mode)
                .or_else(|| modes.get(&unit.agent_id).copied())
                .unwrap_or(Mode::Default),
            tokens: attempts.iter().map(|row| row.token_count).sum(),
            dollars: attempts.iter().map(|row| row.cost_usd).sum(),
            escalated: last.is_some_and(|row| row.escalated),
            input_tokens: attempts.iter().map(|row| row.input_tokens).sum(),
            cache_read_tokens: attempts.iter().map(|row| row.cache_read_tokens).sum(),
        };
        report.spent += record.dollars;
        report.finished.push((
            unit.agent_id.to_string(),
            TaskOutcome {
                succeeded,
                cost: record.dollars,
                reason: last.and_then(|row| row.error.clone()).unwrap_or_default(),
            },
        ));
        on_event(&EngineEvent::AgentFinished {
            agent_id: agent_id.clone(),
            status: record.status,
            mode: record.mode,
            tokens: record.tokens,
            dollars: record.dollars,
            denials: denials.get(&unit.agent_id).copied().unwrap_or_default() as usize,
            input_tokens: record.input_tokens,
            cache_read_tokens: record.cache_read_tokens,
        });
        lock(&shared.records).insert(agent_id, record);
    }
    Ok(())
}

/// The dependency of a skipped unit that failed or was skipped itself.
fn failed_dependency<'a>(units: &'a [UnitRow], unit: &UnitRow) -> Option<&'a AgentId> {
    unit.depends_on.iter().find_map(|dependency| {
        units
            .iter()
            .find(|other| &other.agent_id == dependency)
            .filter(|other| matches!(other.state, UnitState::Failed | UnitState::Skipped))
            .map(|other| &other.agent_id)
    })
}

/// Ready units that wait on a unit that failed or was skipped: they will never run.
fn blocked(units: &[UnitRow]) -> Vec<AgentId> {
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

impl From<RemoteError> for EngineError {
    fn from(error: RemoteError) -> Self {
        EngineError::Remote(Box::new(error))
    }
}
