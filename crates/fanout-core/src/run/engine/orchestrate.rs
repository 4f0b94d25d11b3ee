//! The run from start to end, as a sequence of phases: the inputs checked, the store and
//! the log opened, the run recorded against its base checkpoint (a resume first cleared and
//! prepared), the agents scheduled, then verification, the synthesis, and the outcome
//! counted from the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::attempt::run_one;
use super::remote;
use super::resume::{ResumeState, clear_leftovers, prepare_resume};
use super::summary::{summary_error, write_summary};
use super::synthesis::closing_synthesis;
use super::verify::{Verification, start_baseline, verify};
use super::{EngineError, EngineEvent, EngineInputs, RunOutcome, Shared, blocking};
use crate::ids::{AgentId, RunId};
use crate::plan::{Subtask, TaskId};
use crate::retry::lock;
use crate::run::checkpoint::{CheckpointId, CheckpointPolicy, Checkpointer, InFlightScopes};
use crate::run::checkpoint_worker::CheckpointWorker;
use crate::run::durable::SyncGroup;
use crate::run::preimage::BaseBlobs;
use crate::run::scheduler::{
    NotRun, SchedulerEvent, SchedulerLimits, SchedulerReport, TaskOutcome, TaskSpec, run_graph,
};
use crate::store::{EventRecord, NewRun, RunStatus, Store, StoreReader};
use crate::tools::RepoFacts;

pub(super) async fn run_engine(
    inputs: EngineInputs,
    resuming: bool,
    cancel: &CancellationToken,
    on_event: impl FnMut(&EngineEvent),
) -> Result<RunOutcome, EngineError> {
    let started = tokio::time::Instant::now();
    check_inputs(&inputs)?;
    let store = Store::open_at(&inputs.store)?;
    let mut on_event = recorded(store.clone(), inputs.run_id.clone(), on_event);
    attach_log(&inputs, &store).await?;
    let distribution = inputs.distribution.clone();
    if resuming {
        clear_leftovers(&inputs).await?;
        if distribution.is_some() {
            remote::ensure_base(&inputs).await?;
        }
    }
    let in_flight = Arc::new(InFlightScopes::default());
    let mut checkpointer = Checkpointer::new(&inputs.repo, &inputs.run_id)?
        .with_store(store.clone())
        .with_in_flight(Arc::clone(&in_flight));
    if resuming && distribution.is_some() {
        remote::continue_numbering(&inputs, &mut checkpointer)?;
    }
    let base = checkpointer.base().await?;
    let baseline = if resuming {
        None
    } else {
        start_baseline(&inputs, &base.commit)
    };
    let base_blobs = load_base_blobs(&checkpointer, &base).await?;
    record_run(&inputs, &store, resuming, &base.commit).await?;
    // Named only now that the run is on record, so whoever is refused can resume it.
    inputs.lock.claim(&inputs.run_id);
    // A shared run's agents never touched this tree: nothing of theirs to roll back, and
    // attempts in flight belong to workers that may still be running them.
    let state = if resuming && distribution.is_none() {
        prepare_resume(&inputs, &store).await?
    } else {
        ResumeState::default()
    };
    let (shared, done) = share(inputs, store, checkpointer, state, base_blobs, in_flight)?;

    on_event(&EngineEvent::Phase {
        name: "agents".into(),
    });
    let report = match &distribution {
        Some(distribution) => {
            remote::run_units(
                &shared,
                distribution,
                &base,
                resuming,
                cancel,
                &mut on_event,
            )
            .await?
        }
        None => run_agents(&shared, &done, cancel, &mut on_event).await,
    };
    let verified = verify(&shared, &base, baseline, cancel, &mut on_event).await?;
    let (synthesis, synthesis_error) =
        closing_synthesis(&shared, &report.not_run, &verified, cancel, &mut on_event).await;
    conclude(
        &shared,
        started,
        report.cancelled,
        verified,
        synthesis,
        synthesis_error,
    )
    .await
}

/// The plan has an estimate per sub-task, and the lock held is this repository's.
fn check_inputs(inputs: &EngineInputs) -> Result<(), EngineError> {
    let subtasks = &inputs.plan.subtasks;
    if inputs.estimated_dollars.len() != subtasks.len() {
        return Err(EngineError::EstimateMismatch {
            plan: subtasks.len(),
            estimates: inputs.estimated_dollars.len(),
        });
    }
    if !inputs.lock.covers(&inputs.repo) {
        return Err(EngineError::WrongLock {
            held: inputs.lock.repo().to_path_buf(),
            repo: inputs.repo.clone(),
        });
    }
    Ok(())
}

/// `on_event`, with every progress event also a row of `events` (and a line of the log).
fn recorded(
    store: Store,
    run_id: RunId,
    mut on_event: impl FnMut(&EngineEvent),
) -> impl FnMut(&EngineEvent) {
    move |event: &EngineEvent| {
        store.event_now(event_record(&run_id, event));
        on_event(event);
    }
}

/// Send the store's log to the workflow's logging destination.
async fn attach_log(inputs: &EngineInputs, store: &Store) -> Result<(), EngineError> {
    let log_path = inputs.config.logging.destination_at(SystemTime::now());
    let log_path = if log_path.is_absolute() {
        log_path
    } else {
        let relative = log_path
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        // Not under `.fanout/` (which is ours already): registered before it is first
        // written, so no checkpoint, scope check, rollback or plan ever counts it.
        if !relative.starts_with(".fanout/") {
            crate::store::register_owned_path(&inputs.repo, &relative)?;
        }
        inputs.repo.join(log_path)
    };
    store.attach_log(log_path).await?;
    Ok(())
}

/// The base checkpoint's blobs, which pre-images point at instead of copying.
async fn load_base_blobs(
    checkpointer: &Checkpointer,
    base: &CheckpointId,
) -> Result<BaseBlobs, EngineError> {
    let git = checkpointer.git().clone();
    let tree = base.tree.clone();
    Ok(blocking(move || BaseBlobs::load(&git, &tree)).await??)
}

/// The run's `runs` row: reopened when a resumed run has one, created otherwise.
async fn record_run(
    inputs: &EngineInputs,
    store: &Store,
    resuming: bool,
    base_commit: &str,
) -> Result<(), EngineError> {
    let known = resuming
        && StoreReader::open_at(&inputs.store)?
            .run(&inputs.run_id)?
            .is_some();
    if known {
        store.reopen_run(&inputs.run_id).await?;
    } else {
        store
            .create_run(NewRun {
                run_id: inputs.run_id.clone(),
                workflow: inputs.plan.workflow.clone(),
                config_path: inputs.config_path.clone(),
                plan_hash: inputs.plan_hash.clone(),
                repo: Some(inputs.repo.clone()),
                status: RunStatus::Running,
                started_at: SystemTime::now(),
                base_commit: Some(base_commit.to_owned()),
                agents_planned: inputs.plan.subtasks.len() as u32,
                simulated: inputs.simulated,
            })
            .await?;
    }
    Ok(())
}

/// The state every agent task shares, its checkpoint worker started; with the agents that
/// are done already (a resume's successes).
fn share(
    inputs: EngineInputs,
    store: Store,
    checkpointer: Checkpointer,
    state: ResumeState,
    base_blobs: BaseBlobs,
    in_flight: Arc<InFlightScopes>,
) -> Result<(Arc<Shared>, HashSet<String>), EngineError> {
    let policy = CheckpointPolicy::from_config(&inputs.config.rollback);
    let events: Arc<Mutex<Vec<EngineEvent>>> = Arc::default();
    let worker = checkpoint_worker(
        checkpointer,
        policy,
        state.done.len() as u64,
        Arc::clone(&events),
    );
    let repo_for_facts = inputs.repo.clone();
    let shared = Arc::new(Shared {
        inputs,
        store,
        checkpoints: Mutex::new(Some(worker)),
        records: Mutex::new(state.records),
        denials: Mutex::default(),
        events,
        first_attempt: state.first_attempt,
        escalated: state.escalated,
        facts: RepoFacts::scan(&repo_for_facts),
        base_blobs,
        preimages: Mutex::new(state.preimages),
        durable: SyncGroup::start().map_err(|error| EngineError::SyncWorker(error.to_string()))?,
        in_flight,
    });
    Ok((
        shared,
        state.done.into_iter().map(TaskId::into_string).collect(),
    ))
}

/// The run's checkpoint worker, its checkpoints (or their errors) pushed to `events`.
pub(super) fn checkpoint_worker(
    checkpointer: Checkpointer,
    policy: CheckpointPolicy,
    completed: u64,
    events: Arc<Mutex<Vec<EngineEvent>>>,
) -> CheckpointWorker {
    CheckpointWorker::spawn(checkpointer, policy, completed, move |result| {
        lock(&events).push(match result {
            Ok(id) => EngineEvent::Checkpoint {
                seq: id.seq,
                commit: id.commit,
            },
            Err(error) => EngineEvent::Phase {
                name: format!("checkpoint failed: {error}"),
            },
        });
    })
}

/// The agents phase: every sub-task not `done` through the scheduler (dependencies,
/// `max_parallel_agents`, the run's dollar budget), its progress passed to `on_event`.
async fn run_agents(
    shared: &Arc<Shared>,
    done: &HashSet<String>,
    cancel: &CancellationToken,
    on_event: &mut impl FnMut(&EngineEvent),
) -> SchedulerReport {
    let inputs = &shared.inputs;
    let subtasks = &inputs.plan.subtasks;
    let limits = SchedulerLimits {
        max_parallel: inputs.config.max_parallel_agents as usize,
        budget: inputs.config.budgets.run.max_dollars,
    };
    let tasks: Vec<TaskSpec> = subtasks
        .iter()
        .zip(&inputs.estimated_dollars)
        .map(|(subtask, dollars)| TaskSpec {
            id: subtask.task_id.to_string(),
            depends_on: subtask.depends_on.iter().map(ToString::to_string).collect(),
            estimated_cost: *dollars,
        })
        .collect();
    let by_id: HashMap<String, Subtask> = subtasks
        .iter()
        .map(|s| (s.task_id.to_string(), s.clone()))
        .collect();
    let by_id = Arc::new(by_id);
    let report = {
        let shared_for_tasks = Arc::clone(shared);
        let drain = Arc::clone(shared);
        run_graph(
            &tasks,
            done,
            limits,
            cancel,
            move |id, token| {
                let shared = Arc::clone(&shared_for_tasks);
                let subtask = by_id.get(&id).cloned();
                async move {
                    match subtask {
                        Some(subtask) => run_one(shared, subtask, token).await,
                        None => TaskOutcome {
                            succeeded: false,
                            cost: 0.0,
                            reason: format!("no sub-task {id}"),
                        },
                    }
                }
            },
            |event| forward(&drain, event, on_event),
        )
        .await
    };
    for e in std::mem::take(&mut *lock(&shared.events)) {
        on_event(&e);
    }
    report
}

/// A scheduler event as progress, after the events agent tasks pushed themselves (starts,
/// checkpoints); a finished agent's event carries its record.
fn forward(shared: &Shared, event: &SchedulerEvent, on_event: &mut impl FnMut(&EngineEvent)) {
    let pending: Vec<EngineEvent> = std::mem::take(&mut *lock(&shared.events));
    for e in &pending {
        on_event(e);
    }
    match event {
        SchedulerEvent::Started { id } => on_event(&EngineEvent::AgentScheduled {
            agent_id: TaskId::from(id),
        }),
        SchedulerEvent::Finished { id, .. } => {
            let id = &TaskId::from(id);
            if let Some(record) = lock(&shared.records).get(id).cloned() {
                let denials = lock(&shared.denials).get(id).copied().unwrap_or_default();
                on_event(&EngineEvent::AgentFinished {
                    agent_id: id.clone(),
                    status: record.status,
                    mode: record.mode,
                    tokens: record.tokens,
                    dollars: record.dollars,
                    denials,
                    input_tokens: record.input_tokens,
                    cache_read_tokens: record.cache_read_tokens,
                });
            }
        }
        SchedulerEvent::NotRun { id, why } => on_event(&EngineEvent::AgentNotRun {
            agent_id: TaskId::from(id),
            reason: not_run_text(why),
        }),
    }
}

/// The outcome and the run's final status. Every count and total comes from the store
/// (agents by their last attempt, usage over all attempts of every process of the run), the
/// same query `fanout runs` and `fanout show` answer from.
async fn conclude(
    shared: &Shared,
    started: tokio::time::Instant,
    cancelled: bool,
    verified: Verification,
    synthesis: Option<String>,
    synthesis_error: Option<String>,
) -> Result<RunOutcome, EngineError> {
    let inputs = &shared.inputs;
    shared.store.flush().await?;
    let counts = StoreReader::open_at(&inputs.store)?
        .run_summary(&inputs.run_id)?
        .map(|summary| summary.agents)
        .unwrap_or_default();
    let planned = inputs.plan.subtasks.len() as u64;
    let status = run_status(cancelled, counts.success, planned, &verified);
    let mut outcome = RunOutcome {
        run_id: inputs.run_id.clone(),
        status,
        agents_planned: inputs.plan.subtasks.len(),
        succeeded: counts.success as usize,
        failed: counts.failure as usize,
        rolled_back: counts.rollback as usize,
        interrupted: counts.running as usize,
        not_run: counts.not_run as usize,
        escalated: counts.escalated as usize,
        attempts: counts.attempts as usize,
        denials: counts.denials as usize,
        tool_calls: counts.tool_calls as usize,
        tokens_fast: counts.tokens_fast,
        tokens_default: counts.tokens_default,
        input_tokens: counts.input_tokens,
        output_tokens: counts.output_tokens,
        cache_read_tokens: counts.cache_read_tokens,
        cache_write_tokens: counts.cache_write_tokens,
        dollars: counts.dollars,
        cache_saved: counts.cache_saved,
        wall_time: started.elapsed(),
        estimated_wall_time: inputs.estimated_wall_time,
        checkpoints: verified.checkpoints,
        final_checkpoint: Some(verified.final_checkpoint.commit.clone()),
        out_of_scope: verified.out_of_scope,
        files_changed: verified.files_changed,
        test: verified.test,
        synthesis,
        synthesis_error,
        summary_path: None,
        summary_problem: None,
    };
    match write_summary(&inputs.repo, &outcome) {
        Ok(path) => outcome.summary_path = Some(path),
        Err(problem) => outcome.summary_problem = Some(problem),
    }
    let error = (status != RunStatus::Completed).then(|| summary_error(&outcome));
    shared
        .store
        .set_run_status(&inputs.run_id, status, Some(SystemTime::now()), error)
        .await?;
    shared.store.flush().await?;
    Ok(outcome)
}

/// The run's status from its agents' successes, the scope check and the tests.
fn run_status(cancelled: bool, succeeded: u64, planned: u64, verified: &Verification) -> RunStatus {
    if cancelled {
        RunStatus::Cancelled
    } else if succeeded == planned && verified.out_of_scope.is_empty() {
        if verified.test.as_ref().is_some_and(|test| !test.passed) {
            RunStatus::TestsFailed
        } else {
            RunStatus::Completed
        }
    } else if succeeded == 0 && planned > 0 {
        RunStatus::Failed
    } else {
        RunStatus::Partial
    }
}

/// The `events` row of a progress event: its tag as the kind, the rest as the payload.
fn event_record(run_id: &RunId, event: &EngineEvent) -> EventRecord {
    let mut payload = serde_json::to_value(event).unwrap_or_default();
    let kind = payload
        .as_object_mut()
        .and_then(|fields| fields.remove("event"))
        .and_then(|kind| kind.as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".into());
    let agent_id = payload
        .get("agent_id")
        .and_then(serde_json::Value::as_str)
        .map(AgentId::from);
    EventRecord {
        run_id: run_id.clone(),
        agent_id,
        kind,
        payload,
        at: SystemTime::now(),
    }
}

pub(super) fn not_run_text(why: &NotRun) -> String {
    match why {
        NotRun::DependencyFailed { dependency } => {
            format!("dependency {dependency} did not succeed")
        }
        NotRun::BudgetExhausted => "the run's dollar budget cannot cover it".into(),
        NotRun::Cancelled => "the run was cancelled".into(),
        NotRun::UnknownDependency { dependency } => format!("unknown dependency {dependency}"),
        NotRun::Cycle => "part of a dependency cycle".into(),
    }
}
