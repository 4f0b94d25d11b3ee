//! The live run: a reviewed plan executed by the scheduler, one sub-agent per sub-task, with
//! every state change written to the run store before it is acted on.
//!
//! For each agent: its scope policy and toolbox (scopes enforced in code and, for commands, by
//! the kernel), its mode's model, `run_agent` through the shared fleet, then its record in
//! `agent_runs`. A failed agent's changes are undone from its journal (status `rollback`); an
//! agent on `fast` whose result fails validation is retried once on `default` (recorded as
//! escalated); transient failures retry the agent up to `max_attempts`. Checkpoints land on the
//! checkpoint policy's schedule (tighter after deletions). At the end: a final checkpoint, a
//! scope check of the whole run's diff against the union of declared write scopes, the
//! configured test command (sandboxed), a synthesis call on the orchestrator's model, and the
//! run's totals.
//!
//! Crashes and resume. Before an agent's first attempt, the contents of its write scope are
//! made durable and its pre-image manifest is committed in the same transaction as its first
//! start row ([`super::preimage`]), which is before it runs. A successful agent's scope is
//! `fsync`ed before its success row is committed. [`resume`]
//! finishes a run that was killed, cancelled or ended partial: agents with a `success` row
//! are never run again; every other agent is rolled back from its pre-image (in-flight rows
//! are closed as `rollback`) and run again as a new attempt; checkpoints continue their
//! numbering. `fanout resume` and `fanout run --retry-failed` both end here.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::FutureExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentConfig, AgentOutcome, CallHook, CallUsage, LoopStatus, run_agent_gated};
use crate::config::{Config, Mode};
use crate::fleet::Fleet;
use crate::plan::{Plan, Subtask};
use crate::policy::{AgentSpec, PathSet, ScopePolicy, ShellPolicy};
use crate::provider::{Message, Request};
use crate::retry::lock;
use crate::run::checkpoint::{CheckpointId, CheckpointPolicy, Checkpointer, InFlightScopes};
use crate::run::checkpoint_worker::CheckpointWorker;
use crate::run::durable::SyncGroup;
use crate::run::lock::RepoLock;
use crate::run::preimage::{self, BaseBlobs, Preimage, PreimageError};
use crate::run::scheduler::{
    NotRun, SchedulerEvent, SchedulerLimits, TaskOutcome, TaskSpec, run_graph,
};
use crate::sandbox::SandboxConfig;
use crate::store::{
    AgentFinish, AgentStart, AgentStatus, DenialRecord, EventRecord, NewRun, RunStatus, Store,
    StoreReader, ToolCallRecord,
};
use crate::tools::fs::FileState;
use crate::tools::{CommandExit, RepoFacts, ToolLimits, Toolbox};

/// Everything a live run needs.
#[derive(Debug, Clone)]
pub struct EngineInputs {
    pub config: Arc<Config>,
    /// The validated plan (adjustments applied).
    pub plan: Plan,
    /// Estimated dollars per sub-task, in plan order (reserved against the run budget).
    pub estimated_dollars: Vec<f64>,
    pub plan_hash: Option<String>,
    pub config_path: Option<PathBuf>,
    pub repo: PathBuf,
    pub run_id: String,
    pub fleet: Fleet,
    pub sandbox: SandboxConfig,
    /// Tries of one agent on transient failures (provider errors), the first included.
    pub max_attempts: u32,
    /// The repository's live-run lock, held by the caller from before it planned until the
    /// run's end; a lock on another repository is refused.
    pub lock: Arc<RepoLock>,
    /// The model API is the simulator (recorded, so its runs never calibrate estimates of
    /// real ones).
    pub simulated: bool,
}

/// What happened, for progress displays (the store has the durable record).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEvent {
    /// The scheduler admitted the agent: it counts as running from now on (its
    /// `AgentStarted`, sent from the agent's own task, may come later).
    AgentScheduled {
        agent_id: String,
    },
    AgentStarted {
        agent_id: String,
        attempt: u32,
        mode: Mode,
    },
    AgentFinished {
        agent_id: String,
        status: AgentStatus,
        mode: Mode,
        tokens: u64,
        dollars: f64,
        /// Requests of this agent the policy refused, over its attempts in this process.
        denials: usize,
    },
    AgentNotRun {
        agent_id: String,
        reason: String,
    },
    Checkpoint {
        seq: u64,
        commit: String,
    },
    Phase {
        name: String,
    },
}

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

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    pub run_id: String,
    pub status: RunStatus,
    pub agents_planned: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub rolled_back: usize,
    /// Agents whose last attempt has no end (a crash the run has not been resumed from).
    pub interrupted: usize,
    pub not_run: usize,
    pub escalated: usize,
    /// Attempts over all agents and all processes of the run.
    pub attempts: usize,
    /// Requests the policy refused.
    pub denials: usize,
    pub tool_calls: usize,
    /// Agents' tokens and dollars over all attempts (the planning and synthesis calls are
    /// not included).
    pub tokens_fast: u64,
    pub tokens_default: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub dollars: f64,
    #[serde(rename = "wall_time_ms", serialize_with = "as_millis")]
    pub wall_time: Duration,
    pub checkpoints: u64,
    pub final_checkpoint: Option<String>,
    /// Files changed by the run outside every declared write scope (red flags).
    pub out_of_scope: Vec<String>,
    pub files_changed: usize,
    pub test: Option<TestOutcome>,
    pub synthesis: Option<String>,
    pub synthesis_error: Option<String>,
    pub summary_path: Option<PathBuf>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// Why a run could not be carried out at all (agent failures are not errors: they are in
/// the outcome).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("run store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] crate::run::checkpoint::CheckpointError),
    #[error("git: {0}")]
    Git(#[from] crate::run::git::GitError),
    #[error("the plan has {plan} sub-tasks but {estimates} estimates")]
    EstimateMismatch { plan: usize, estimates: usize },
    #[error("pre-image: {0}")]
    Preimage(#[from] PreimageError),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("cannot start the sync worker thread: {0}")]
    SyncWorker(String),
    #[error("the live-run lock held is for {held}, not for the repository {repo}")]
    WrongLock { held: PathBuf, repo: PathBuf },
}

/// Per-agent results the scheduler's events are enriched with.
#[derive(Debug, Clone)]
struct AgentRecord {
    status: AgentStatus,
    mode: Mode,
    tokens: u64,
    dollars: f64,
    escalated: bool,
}

/// State shared by all agent tasks of a run.
struct Shared {
    inputs: EngineInputs,
    store: Store,
    /// Taken at the end of the run for the final checkpoint.
    checkpoints: Mutex<Option<CheckpointWorker>>,
    records: Mutex<HashMap<String, AgentRecord>>,
    /// Denied requests by agent, over its attempts in this process.
    denials: Mutex<HashMap<String, usize>>,
    events: Arc<Mutex<Vec<EngineEvent>>>,
    /// The attempt number each agent's next try gets (1 unless the run is resumed).
    first_attempt: HashMap<String, u32>,
    /// Agents a resumed run starts on `default` because they had been escalated there.
    escalated: HashSet<String>,
    /// Scanned once per run for every agent's toolbox.
    facts: RepoFacts,
    /// The base checkpoint's blobs, which pre-images point at instead of copying.
    base_blobs: BaseBlobs,
    /// Pre-images recorded by the run's earlier processes (resume), by agent.
    preimages: Mutex<HashMap<String, Arc<Preimage>>>,
    /// Makes agents' edits durable in shared `syncfs` rounds.
    durable: SyncGroup,
    /// Agents whose scopes checkpoints show as their pre-images (see [`InFlightScopes`]).
    in_flight: Arc<InFlightScopes>,
}

/// What a resumed run starts from, read from the store and the pre-images.
#[derive(Debug, Default)]
struct ResumeState {
    /// Agents with a `success` row: never run again.
    done: HashSet<String>,
    first_attempt: HashMap<String, u32>,
    records: HashMap<String, AgentRecord>,
    /// Pre-images already recorded, by agent (never replaced).
    preimages: HashMap<String, Arc<Preimage>>,
    /// Agents whose last recorded attempt had been escalated to `default`: they go on there.
    escalated: HashSet<String>,
}

/// Finish a run recorded in the store (`inputs.run_id`): killed mid-way, cancelled, or ended
/// with failed or skipped agents. Agents that succeeded are not run again; every other agent
/// is rolled back from its durable pre-image and run again as a new attempt. The run's
/// status goes back to `running`, then to its final status.
pub async fn resume(
    inputs: EngineInputs,
    cancel: &CancellationToken,
    on_event: impl FnMut(&EngineEvent),
) -> Result<RunOutcome, EngineError> {
    run_engine(inputs, true, cancel, on_event).await
}

/// Run the plan. `on_event` sees progress as it happens, from the caller's task.
pub async fn execute(
    inputs: EngineInputs,
    cancel: &CancellationToken,
    on_event: impl FnMut(&EngineEvent),
) -> Result<RunOutcome, EngineError> {
    run_engine(inputs, false, cancel, on_event).await
}

async fn run_engine(
    inputs: EngineInputs,
    resuming: bool,
    cancel: &CancellationToken,
    mut on_event: impl FnMut(&EngineEvent),
) -> Result<RunOutcome, EngineError> {
    let started = tokio::time::Instant::now();
    let subtasks = inputs.plan.subtasks.clone();
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
    let store = Store::open_in_repo(&inputs.repo)?;
    // Every progress event is also a row of `events` (and a line of the log).
    let mut on_event = {
        let store = store.clone();
        let run_id = inputs.run_id.clone();
        move |event: &EngineEvent| {
            store.event_now(event_record(&run_id, event));
            on_event(event);
        }
    };
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
    if resuming {
        // Nothing of this run is running now: what a killed process left half-done goes.
        let repo = inputs.repo.clone();
        let run_id = inputs.run_id.clone();
        blocking(move || {
            remove_stale_ref_locks(&repo, &run_id);
            preimage::sweep_temporaries(&repo)
        })
        .await??;
    }
    let in_flight = Arc::new(InFlightScopes::default());
    let mut checkpointer = Checkpointer::new(&inputs.repo, &inputs.run_id)?
        .with_store(store.clone())
        .with_in_flight(Arc::clone(&in_flight));
    let base = checkpointer.base().await?;
    let baseline = if resuming {
        None
    } else {
        start_baseline(&inputs, &base.commit)
    };
    let base_blobs = {
        let git = checkpointer.git().clone();
        let tree = base.tree.clone();
        blocking(move || BaseBlobs::load(&git, &tree)).await??
    };
    let known = resuming
        && StoreReader::open_in_repo(&inputs.repo)?
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
                base_commit: Some(base.commit.clone()),
                agents_planned: subtasks.len() as u32,
                simulated: inputs.simulated,
            })
            .await?;
    }
    // Named only now that the run is on record, so whoever is refused can resume it.
    inputs.lock.claim(&inputs.run_id);
    let state = if resuming {
        prepare_resume(&inputs, &store).await?
    } else {
        ResumeState::default()
    };
    let policy = CheckpointPolicy::from_config(&inputs.config.rollback);
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
    let events: Arc<Mutex<Vec<EngineEvent>>> = Arc::default();
    let worker = {
        let events = Arc::clone(&events);
        CheckpointWorker::spawn(
            checkpointer,
            policy,
            state.done.len() as u64,
            move |result| {
                lock(&events).push(match result {
                    Ok(id) => EngineEvent::Checkpoint {
                        seq: id.seq,
                        commit: id.commit,
                    },
                    Err(error) => EngineEvent::Phase {
                        name: format!("checkpoint failed: {error}"),
                    },
                });
            },
        )
    };
    let repo_for_facts = inputs.repo.clone();
    let shared = Arc::new(Shared {
        inputs,
        store: store.clone(),
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

    on_event(&EngineEvent::Phase {
        name: "agents".into(),
    });
    let by_id = Arc::new(by_id);
    let report = {
        let shared_for_tasks = Arc::clone(&shared);
        let drain = Arc::clone(&shared);
        run_graph(
            &tasks,
            &state.done,
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
            |event| {
                // Agent tasks push their own events (starts, checkpoints); show them first.
                let pending: Vec<EngineEvent> = std::mem::take(&mut *lock(&drain.events));
                for e in &pending {
                    on_event(e);
                }
                match event {
                    SchedulerEvent::Started { id } => on_event(&EngineEvent::AgentScheduled {
                        agent_id: id.clone(),
                    }),
                    SchedulerEvent::Finished { id, .. } => {
                        if let Some(record) = lock(&drain.records).get(id).cloned() {
                            let denials = lock(&drain.denials).get(id).copied().unwrap_or_default();
                            on_event(&EngineEvent::AgentFinished {
                                agent_id: id.clone(),
                                status: record.status,
                                mode: record.mode,
                                tokens: record.tokens,
                                dollars: record.dollars,
                                denials,
                            });
                        }
                    }
                    SchedulerEvent::NotRun { id, why } => on_event(&EngineEvent::AgentNotRun {
                        agent_id: id.clone(),
                        reason: not_run_text(why),
                    }),
                }
            },
        )
        .await
    };
    for e in std::mem::take(&mut *lock(&shared.events)) {
        on_event(&e);
    }

    on_event(&EngineEvent::Phase {
        name: "verify".into(),
    });
    let inputs = &shared.inputs;
    let worker = lock(&shared.checkpoints).take();
    let (final_checkpoint, checkpoints) = {
        let Some(worker) = worker else {
            return Err(EngineError::Checkpoint(
                crate::run::checkpoint::CheckpointError::Join {
                    message: "the checkpoint worker is gone".into(),
                },
            ));
        };
        let mut checkpointer = worker.finish().await?;
        for e in std::mem::take(&mut *lock(&shared.events)) {
            on_event(&e);
        }
        let last = checkpointer.checkpoint("final").await?;
        on_event(&EngineEvent::Checkpoint {
            seq: last.seq,
            commit: last.commit.clone(),
        });
        (last, checkpointer.next_seq().saturating_sub(1))
    };
    let changed = changed_files(&shared, &base, &final_checkpoint)?;
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

    let records: Vec<(String, AgentRecord)> = lock(&shared.records)
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    let (synthesis, synthesis_error) = if cancel.is_cancelled() {
        (None, None)
    } else {
        on_event(&EngineEvent::Phase {
            name: "synthesis".into(),
        });
        match synthesize(
            inputs,
            &records,
            &report.not_run,
            &out_of_scope,
            test.as_ref(),
            cancel,
        )
        .await
        {
            Ok(text) => (Some(text), None),
            Err(error) => (None, Some(error)),
        }
    };
    // Every count and total of the outcome comes from the store (agents by their last
    // attempt, usage over all attempts of every process of the run), the same query
    // `fanout runs` and `fanout show` answer from.
    shared.store.flush().await?;
    let counts = StoreReader::open_in_repo(&inputs.repo)?
        .run_summary(&inputs.run_id)?
        .map(|summary| summary.agents)
        .unwrap_or_default();
    let planned = subtasks.len() as u64;
    let status = if report.cancelled {
        RunStatus::Cancelled
    } else if counts.success == planned && out_of_scope.is_empty() {
        if test.as_ref().is_some_and(|test| !test.passed) {
            RunStatus::TestsFailed
        } else {
            RunStatus::Completed
        }
    } else if counts.success == 0 && planned > 0 {
        RunStatus::Failed
    } else {
        RunStatus::Partial
    };
    let mut outcome = RunOutcome {
        run_id: inputs.run_id.clone(),
        status,
        agents_planned: subtasks.len(),
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
        dollars: counts.dollars,
        wall_time: started.elapsed(),
        checkpoints,
        final_checkpoint: Some(final_checkpoint.commit.clone()),
        out_of_scope,
        files_changed: changed.len(),
        test,
        synthesis,
        synthesis_error,
        summary_path: None,
    };
    outcome.summary_path = write_summary(&inputs.repo, &outcome);
    let error = (status != RunStatus::Completed).then(|| summary_error(&outcome));
    shared
        .store
        .set_run_status(&inputs.run_id, status, Some(SystemTime::now()), error)
        .await?;
    shared.store.flush().await?;
    Ok(outcome)
}

/// The `events` row of a progress event: its tag as the kind, the rest as the payload.
fn event_record(run_id: &str, event: &EngineEvent) -> EventRecord {
    let mut payload = serde_json::to_value(event).unwrap_or_default();
    let kind = payload
        .as_object_mut()
        .and_then(|fields| fields.remove("event"))
        .and_then(|kind| kind.as_str().map(str::to_owned))
        .unwrap_or_else(|| "event".into());
    let agent_id = payload
        .get("agent_id")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    EventRecord {
        run_id: run_id.to_owned(),
        agent_id,
        kind,
        payload,
        at: SystemTime::now(),
    }
}

fn not_run_text(why: &NotRun) -> String {
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

fn summary_error(outcome: &RunOutcome) -> String {
    let mut parts = Vec::new();
    if outcome.failed > 0 {
        parts.push(format!("{} agent(s) failed", outcome.failed));
    }
    if outcome.rolled_back > 0 {
        parts.push(format!("{} agent(s) rolled back", outcome.rolled_back));
    }
    if outcome.interrupted > 0 {
        parts.push(format!("{} agent(s) interrupted", outcome.interrupted));
    }
    if let Some(test) = outcome.test.as_ref().filter(|test| !test.passed) {
        parts.push(format!("tests `{}` failed", test.command));
    }
    if outcome.not_run > 0 {
        parts.push(format!("{} agent(s) not run", outcome.not_run));
    }
    if !outcome.out_of_scope.is_empty() {
        parts.push(format!(
            "{} file(s) changed outside every scope",
            outcome.out_of_scope.len()
        ));
    }
    parts.join("; ")
}

/// The model for `mode` and the agent limits from the workflow.
fn agent_config(config: &Config, mode: Mode) -> AgentConfig {
    let model = config.model_for_mode(mode);
    let budget = &config.budgets.agent;
    AgentConfig {
        model: model.model.clone(),
        pricing: Some(model.clone()),
        max_tokens_per_turn: 4096,
        max_turns: budget.max_turns,
        max_tokens: budget.max_tokens,
        max_dollars: budget.max_dollars,
        max_wall_time: budget.max_wall_time,
        output_schema: config.output_schema.clone(),
        on_call: None,
    }
}

fn agent_spec(subtask: &Subtask) -> AgentSpec {
    // An agent without a writing tool writes nothing, whatever its scope says (its prompt
    // must not tell it otherwise).
    let write = subtask.effective_write_scope().to_vec();
    AgentSpec {
        agent_id: subtask.task_id.to_string(),
        task_id: subtask.task_id.to_string(),
        description: subtask.description.clone(),
        scope: write,
        read_scope: Some(subtask.scope.clone()),
        tools: subtask.tools.clone(),
    }
}

/// Run one sub-task to its final record: retries, escalation and rollback included.
async fn run_one(shared: Arc<Shared>, subtask: Subtask, cancel: CancellationToken) -> TaskOutcome {
    let inputs = &shared.inputs;
    let agent_id = subtask.task_id.to_string();
    let spec = agent_spec(&subtask);
    // An agent escalated to `default` by an earlier process of the run stays there.
    let mut escalated = shared.escalated.contains(&agent_id);
    let mut mode = if escalated {
        Mode::Default
    } else {
        subtask.mode
    };
    let mut attempt: u32 = shared
        .first_attempt
        .get(&agent_id)
        .copied()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut spent = 0.0;
    let mut tokens = 0u64;
    // The pre-image of the write scope: a resumed run gets the one recorded before the first
    // attempt; otherwise the first attempt's start takes it.
    let mut known_preimage = lock(&shared.preimages).remove(&agent_id);
    // However the task ends, later checkpoints take its scope as it is.
    let _leave = LeaveInFlight {
        scopes: Arc::clone(&shared.in_flight),
        agent_id: agent_id.clone(),
    };
    loop {
        attempt += 1;
        let mut config = agent_config(&inputs.config, mode);
        config.on_call = Some(usage_recorder(&shared, &agent_id, attempt, mode));
        let started_at = SystemTime::now();
        lock(&shared.events).push(EngineEvent::AgentStarted {
            agent_id: agent_id.clone(),
            attempt,
            mode,
        });
        let start_row = AgentStart {
            run_id: inputs.run_id.clone(),
            agent_id: agent_id.clone(),
            attempt,
            task_description: subtask.description.clone(),
            mode,
            model: Some(config.model.clone()),
            escalated,
            started_at,
        };
        // Nothing of the agent may touch the tree before its start is on record: its tool
        // calls wait for this gate, its first model call does not.
        let start = start_attempt(&shared, start_row, known_preimage.clone(), &spec.scope);
        let toolbox = ScopePolicy::from_config(&inputs.config, &spec)
            .map_err(|e| e.to_string())
            .and_then(|policy| {
                Toolbox::with_facts(
                    &inputs.repo,
                    policy,
                    inputs.sandbox.clone(),
                    ToolLimits::default(),
                    &shared.facts,
                )
                .map_err(|e| e.to_string())
            });
        let toolbox = match toolbox {
            Ok(toolbox) => toolbox,
            Err(message) => {
                if let Err(reason) = start.await {
                    return finish_without_running(&shared, &agent_id, mode, reason);
                }
                let finish = AgentFinish {
                    run_id: inputs.run_id.clone(),
                    agent_id: agent_id.clone(),
                    attempt,
                    status: AgentStatus::Failure,
                    files_accessed: Vec::new(),
                    tools_called: Vec::new(),
                    input_tokens: 0,
                    output_tokens: 0,
                    cost_usd: 0.0,
                    error: Some(message.clone()),
                    checkpoint: None,
                    ended_at: SystemTime::now(),
                };
                let _ = shared.store.finish_agent(finish).await;
                record(
                    &shared,
                    &agent_id,
                    AgentStatus::Failure,
                    mode,
                    tokens,
                    spent,
                    escalated,
                );
                return TaskOutcome {
                    succeeded: false,
                    cost: spent,
                    reason: message,
                };
            }
        };
        let gate: crate::agent::StartGate =
            Box::pin(start.clone().map(|started| started.map(drop)));
        let outcome =
            run_agent_gated(&inputs.fleet, &toolbox, &spec, &config, Some(gate), &cancel).await;
        let preimage = match start.await {
            Ok(preimage) => preimage,
            // No start row: none of its tools ran, so there is nothing to undo or record.
            Err(reason) => {
                let mut not_started = finish_without_running(&shared, &agent_id, mode, reason);
                // Its model calls were made and paid for all the same.
                not_started.cost = spent + outcome.dollars;
                return not_started;
            }
        };
        known_preimage = Some(Arc::clone(&preimage));
        spent += outcome.dollars;
        tokens += outcome.input_tokens + outcome.output_tokens;
        record_denials(&shared, &outcome, attempt);
        record_tool_calls(&shared, &agent_id, &outcome, attempt).await;

        let retry_on_default =
            outcome.status == LoopStatus::InvalidResult && mode == Mode::Fast && !escalated;
        let transient = matches!(outcome.status, LoopStatus::ProviderError(_))
            && attempt < inputs.max_attempts.max(1);
        let mut succeeded = outcome.status == LoopStatus::Success && outcome.flags.is_empty();
        let mut sync_failure = None;
        if succeeded {
            // Its edits reach the disk before its success row does (power loss).
            if let Err(error) = sync_scope(&shared, &preimage).await {
                succeeded = false;
                sync_failure = Some(error);
            }
        }
        let destructive = if succeeded {
            deleted_something(&inputs.repo, &toolbox)
        } else {
            false
        };
        let (status, error) = if succeeded {
            (AgentStatus::Success, None)
        } else {
            let undo = toolbox.undo();
            let changed = !toolbox.journal().is_empty();
            let mut message = match &sync_failure {
                Some(error) => format!("cannot write its edits to disk: {error}"),
                None => failure_text(&outcome),
            };
            if !undo.failed.is_empty() {
                message.push_str(&format!(
                    "; could not undo: {}",
                    undo_failures(&undo.failed)
                ));
            }
            // The journal undoes what the tools did; the pre-image also catches what they
            // could not journal (and is what a resume would restore).
            if let Err(error) = restore_scope(&inputs.repo, &preimage).await {
                message.push_str(&format!("; could not restore its pre-image: {error}"));
            }
            let status = if changed {
                AgentStatus::Rollback
            } else {
                AgentStatus::Failure
            };
            (status, Some(message))
        };
        let files_accessed: Vec<String> = outcome.receipts.files_accessed().into_iter().collect();
        let finish = AgentFinish {
            run_id: inputs.run_id.clone(),
            agent_id: agent_id.clone(),
            attempt,
            status,
            files_accessed,
            tools_called: outcome.receipts.tools_called.clone(),
            input_tokens: outcome.input_tokens,
            output_tokens: outcome.output_tokens,
            cost_usd: outcome.dollars,
            error: error.clone(),
            checkpoint: None,
            ended_at: SystemTime::now(),
        };
        if let Err(store_error) = shared.store.finish_agent(finish).await {
            // Its record could not be written: the agent's changes must not stay either.
            let undo = if succeeded {
                toolbox.undo().failed
            } else {
                Vec::new()
            };
            let mut reason = format!("run store: {store_error}");
            if !undo.is_empty() {
                reason.push_str(&format!("; could not undo: {}", undo_failures(&undo)));
            }
            record(
                &shared,
                &agent_id,
                AgentStatus::Failure,
                mode,
                tokens,
                spent,
                escalated,
            );
            return TaskOutcome {
                succeeded: false,
                cost: spent,
                reason,
            };
        }
        if succeeded {
            record(
                &shared,
                &agent_id,
                AgentStatus::Success,
                mode,
                tokens,
                spent,
                escalated,
            );
            // Durable and recorded: the checkpoint this completion may trigger shows it.
            shared.in_flight.leave(&agent_id);
            checkpoint_after_completion(&shared, destructive);
            return TaskOutcome {
                succeeded: true,
                cost: spent,
                reason: String::new(),
            };
        }
        if cancel.is_cancelled() {
            record(&shared, &agent_id, status, mode, tokens, spent, escalated);
            return TaskOutcome {
                succeeded: false,
                cost: spent,
                reason: "cancelled".into(),
            };
        }
        if retry_on_default {
            mode = Mode::Default;
            escalated = true;
            continue;
        }
        if transient {
            continue;
        }
        record(&shared, &agent_id, status, mode, tokens, spent, escalated);
        return TaskOutcome {
            succeeded: false,
            cost: spent,
            reason: error.unwrap_or_default(),
        };
    }
}

/// Records each model call's usage as a `model_call` event, so an attempt a crash cuts short
/// still counts what it spent when the run is resumed.
fn usage_recorder(shared: &Arc<Shared>, agent_id: &str, attempt: u32, mode: Mode) -> CallHook {
    let store = shared.store.clone();
    let run_id = shared.inputs.run_id.clone();
    let agent_id = agent_id.to_owned();
    CallHook(Arc::new(move |usage: &CallUsage| {
        store.event_now(EventRecord {
            run_id: run_id.clone(),
            agent_id: Some(agent_id.clone()),
            kind: "model_call".into(),
            payload: serde_json::json!({
                "attempt": attempt,
                "turn": usage.turn,
                "mode": mode,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "dollars": usage.dollars,
            }),
            at: SystemTime::now(),
        });
    }))
}

/// Takes an agent out of [`InFlightScopes`] when its task ends, on every path.
struct LeaveInFlight {
    scopes: Arc<InFlightScopes>,
    agent_id: String,
}

impl Drop for LeaveInFlight {
    fn drop(&mut self) {
        self.scopes.leave(&self.agent_id);
    }
}

/// The shared result of an attempt's start: its pre-image (taken now unless `known`) and its
/// start row, both durable. Runs as its own task, so it completes even if the agent is
/// cancelled meanwhile.
type StartFuture = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Arc<Preimage>, String>>,
>;

fn start_attempt(
    shared: &Arc<Shared>,
    row: AgentStart,
    known: Option<Arc<Preimage>>,
    scope: &[String],
) -> StartFuture {
    let shared = Arc::clone(shared);
    let patterns = scope.to_vec();
    let task = tokio::spawn(async move {
        let (preimage, manifest) = match known {
            Some(preimage) => (preimage, None),
            None => {
                let repo = shared.inputs.repo.clone();
                let run_id = shared.inputs.run_id.clone();
                let agent_id = row.agent_id.clone();
                let for_blobs = Arc::clone(&shared);
                let taken = blocking(move || {
                    let (preimage, sync) = preimage::prepare(
                        &repo,
                        &run_id,
                        &agent_id,
                        &patterns,
                        &for_blobs.base_blobs,
                    )?;
                    let manifest = preimage::manifest_json(&preimage)?;
                    Ok::<_, PreimageError>((preimage, manifest, sync))
                })
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
                let (preimage, manifest, sync) = taken;
                // The git objects it points at are durable before the manifest is.
                shared
                    .durable
                    .sync(sync)
                    .await
                    .map_err(|error| format!("pre-image: {error}"))?;
                (Arc::new(preimage), Some(manifest))
            }
        };
        let recorded = match manifest {
            Some(manifest) => shared.store.start_agent_with_preimage(row, manifest).await,
            None => shared.store.start_agent(row).await,
        };
        recorded.map_err(|error| format!("run store: {error}"))?;
        // Before the gate opens: from here on its tools may change the scope.
        shared.in_flight.enter(Arc::clone(&preimage));
        Ok(preimage)
    });
    async move {
        task.await
            .unwrap_or_else(|error| Err(format!("the start of the agent failed: {error}")))
    }
    .boxed()
    .shared()
}

/// Run blocking file or git work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| EngineError::Join(error.to_string()))
}

/// Make the agent's write scope durable, in a shared sync round.
async fn sync_scope(shared: &Shared, preimage: &Arc<Preimage>) -> Result<(), String> {
    let repo = shared.inputs.repo.clone();
    let preimage = Arc::clone(preimage);
    let set = match blocking(move || preimage::scope_sync_set(&repo, &preimage)).await {
        Ok(Ok(set)) => set,
        Ok(Err(error)) => return Err(error.to_string()),
        Err(error) => return Err(error.to_string()),
    };
    shared
        .durable
        .sync(set)
        .await
        .map_err(|error| error.to_string())
}

async fn restore_scope(repo: &Path, preimage: &Arc<Preimage>) -> Result<(), String> {
    let repo = repo.to_path_buf();
    let preimage = Arc::clone(preimage);
    match blocking(move || preimage::restore(&repo, &preimage)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(error) => Err(error.to_string()),
    }
}

/// Read what the run's earlier processes recorded, roll back every agent that did not
/// succeed from its pre-image, and close attempts that were in flight as `rollback`.
async fn prepare_resume(inputs: &EngineInputs, store: &Store) -> Result<ResumeState, EngineError> {
    let reader = StoreReader::open_in_repo(&inputs.repo)?;
    let rows = reader.agent_runs(&inputs.run_id)?;
    let planned: HashSet<String> = inputs
        .plan
        .subtasks
        .iter()
        .map(|s| s.task_id.to_string())
        .collect();
    let mut state = ResumeState::default();
    let mut last_attempt: HashMap<&str, (u32, bool)> = HashMap::new();
    for row in &rows {
        let next = state.first_attempt.entry(row.agent_id.clone()).or_insert(1);
        *next = (*next).max(row.attempt.saturating_add(1));
        let last = last_attempt.entry(&row.agent_id).or_insert((0, false));
        if row.attempt >= last.0 {
            *last = (row.attempt, row.escalated);
        }
        if row.status == Some(AgentStatus::Success) && planned.contains(&row.agent_id) {
            state.done.insert(row.agent_id.clone());
            state.records.insert(
                row.agent_id.clone(),
                AgentRecord {
                    status: AgentStatus::Success,
                    mode: row.mode.unwrap_or(Mode::Default),
                    tokens: row.token_count,
                    dollars: row.cost_usd,
                    escalated: row.escalated,
                },
            );
        }
    }
    state.escalated = last_attempt
        .into_iter()
        .filter(|(_, (_, escalated))| *escalated)
        .map(|(agent, _)| agent.to_owned())
        .collect();
    // Pre-images in the store (this build), else in manifest files (earlier builds).
    for (agent_id, manifest) in reader.preimages(&inputs.run_id)? {
        let where_ = PathBuf::from(format!("run store, pre-image of {agent_id}"));
        let preimage = preimage::parse_manifest(manifest.as_bytes(), &where_)?;
        state.preimages.insert(agent_id, Arc::new(preimage));
    }
    // Roll back in reverse plan order: a dependent's scope may hold files its dependency's
    // pre-image also covers, and the dependency's pre-image is the older one.
    let mut restored: HashSet<String> = HashSet::new();
    let mut missing: HashSet<String> = HashSet::new();
    for subtask in inputs.plan.subtasks.iter().rev() {
        let agent_id = subtask.task_id.to_string();
        if state.done.contains(&agent_id) {
            continue;
        }
        let repo = inputs.repo.clone();
        let run_id = inputs.run_id.clone();
        let id = agent_id.clone();
        let recorded = state.preimages.get(&agent_id).cloned();
        let found = blocking(move || -> Result<Option<Arc<Preimage>>, PreimageError> {
            let preimage = match recorded {
                Some(preimage) => preimage,
                None => match preimage::load(&repo, &run_id, &id)? {
                    Some(preimage) => Arc::new(preimage),
                    None => return Ok(None),
                },
            };
            preimage::restore(&repo, &preimage)?;
            Ok(Some(preimage))
        })
        .await??;
        if let Some(preimage) = found {
            state.preimages.insert(agent_id.clone(), preimage);
            restored.insert(agent_id);
        } else {
            missing.insert(agent_id);
        }
    }
    // Read before any of the closing rows below are written.
    let spent = reader.unfinished_usage(&inputs.run_id)?;
    for row in rows.iter().filter(|row| row.status.is_none()) {
        let (input_tokens, output_tokens, cost_usd) = spent
            .get(&(row.agent_id.clone(), row.attempt))
            .copied()
            .unwrap_or((0, 0, 0.0));
        let (status, error) = if restored.contains(&row.agent_id) {
            (
                AgentStatus::Rollback,
                "interrupted: the run stopped while this attempt was in flight; rolled back \
                 from its pre-image on resume",
            )
        } else {
            (
                AgentStatus::Failure,
                "interrupted: the run stopped while this attempt was in flight; no pre-image \
                 to roll back from",
            )
        };
        store
            .finish_agent(AgentFinish {
                run_id: inputs.run_id.clone(),
                agent_id: row.agent_id.clone(),
                attempt: row.attempt,
                status,
                files_accessed: Vec::new(),
                tools_called: Vec::new(),
                input_tokens,
                output_tokens,
                cost_usd,
                error: Some(error.to_owned()),
                checkpoint: None,
                ended_at: SystemTime::now(),
            })
            .await?;
    }
    Ok(state)
}

/// Ref lock files of this run's refs that a killed `git update-ref` left behind (they would
/// make every later checkpoint of the run fail). Best effort.
fn remove_stale_ref_locks(repo: &Path, run_id: &str) {
    let dir = repo.join(".git").join("refs").join("fanout").join(run_id);
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else {
            continue;
        };
        for child in children.flatten() {
            let path = child.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "lock") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn undo_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(path, why)| format!("{path} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn finish_without_running(
    shared: &Shared,
    agent_id: &str,
    mode: Mode,
    reason: String,
) -> TaskOutcome {
    record(shared, agent_id, AgentStatus::Failure, mode, 0, 0.0, false);
    TaskOutcome {
        succeeded: false,
        cost: 0.0,
        reason,
    }
}

#[allow(clippy::too_many_arguments)]
fn record(
    shared: &Shared,
    agent_id: &str,
    status: AgentStatus,
    mode: Mode,
    tokens: u64,
    dollars: f64,
    escalated: bool,
) {
    lock(&shared.records).insert(
        agent_id.to_string(),
        AgentRecord {
            status,
            mode,
            tokens,
            dollars,
            escalated,
        },
    );
}

fn failure_text(outcome: &AgentOutcome) -> String {
    let mut text = match &outcome.status {
        LoopStatus::Success => "the result disagrees with what the agent did".to_string(),
        LoopStatus::InvalidResult => "the result was invalid after one repair".to_string(),
        LoopStatus::TurnLimit => "turn limit reached".to_string(),
        LoopStatus::TokenLimit => "token limit reached".to_string(),
        LoopStatus::DollarLimit => "dollar limit reached".to_string(),
        LoopStatus::TimeLimit => "wall-time limit reached".to_string(),
        LoopStatus::Cancelled => "cancelled".to_string(),
        LoopStatus::ProviderError(message) => format!("model API: {message}"),
        LoopStatus::StartFailed(message) => message.clone(),
    };
    if !outcome.flags.is_empty() {
        text.push_str(&format!(" ({})", outcome.flags.join("; ")));
    }
    text
}

fn record_denials(shared: &Shared, outcome: &AgentOutcome, attempt: u32) {
    if !outcome.receipts.denials.is_empty() {
        *lock(&shared.denials)
            .entry(outcome.agent_id.clone())
            .or_default() += outcome.receipts.denials.len();
    }
    for denial in &outcome.receipts.denials {
        let record = DenialRecord {
            run_id: shared.inputs.run_id.clone(),
            agent_id: denial.agent_id.clone(),
            attempt,
            tool: denial.tool.clone(),
            target: Some(denial.target.clone()),
            reason: denial.reason.to_string(),
            at: SystemTime::now(),
        };
        let store = shared.store.clone();
        tokio::spawn(async move {
            let _ = store.denial(record).await;
        });
    }
}

/// One `tool_calls` row per call of the attempt, queued on the store's writer (committed with
/// the attempt's end row or before it).
async fn record_tool_calls(shared: &Shared, agent_id: &str, outcome: &AgentOutcome, attempt: u32) {
    for call in &outcome.receipts.calls {
        let record = ToolCallRecord {
            run_id: shared.inputs.run_id.clone(),
            agent_id: agent_id.to_owned(),
            attempt,
            seq: call.seq,
            tool: call.tool.clone(),
            target: call.target.clone(),
            ok: call.outcome == crate::agent::CallOutcome::Ok,
            outcome: Some(call.outcome.as_str().to_owned()),
            error: call.error.clone(),
            started_at: call.started_at,
            ended_at: Some(call.started_at + Duration::from_millis(call.duration_ms)),
            duration_ms: Some(call.duration_ms),
            bytes: Some(call.bytes),
            paths: call.paths.clone(),
        };
        let _ = shared.store.tool_call(record).await;
    }
}

/// Whether the agent deleted a file (deletions and renames tighten the checkpoint interval).
fn deleted_something(repo: &Path, toolbox: &Toolbox) -> bool {
    toolbox.journal().entries().iter().any(|entry| match entry {
        crate::agent::JournalEntry::File { path, prior } => {
            matches!(prior, FileState::File { .. }) && !repo.join(path).exists()
        }
        crate::agent::JournalEntry::CreatedDir { .. } => false,
    })
}

/// Tell the checkpoint worker about a durable completion; never waits for git.
fn checkpoint_after_completion(shared: &Shared, destructive: bool) {
    if let Some(worker) = lock(&shared.checkpoints).as_ref() {
        worker.completed(destructive);
    }
}

/// Paths that differ between two checkpoints.
fn changed_files(
    shared: &Shared,
    from: &CheckpointId,
    to: &CheckpointId,
) -> Result<Vec<String>, EngineError> {
    let git = crate::run::git::Git::open(&shared.inputs.repo)?;
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
fn start_baseline(
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
        if let Ok(git) = crate::run::git::Git::open(&self.repo) {
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
    let git = crate::run::git::Git::open(repo).map_err(|error| error.to_string())?;
    let mut add = git.command();
    add.args(["worktree", "add", "--detach", "--force"])
        .arg(tree.path())
        .args(["--end-of-options", commit]);
    git.run(add, None).map_err(|error| error.to_string())?;
    Ok(tree)
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> &str {
    let mut start = text.len();
    for _ in 0..=n {
        match text[..start].rfind('\n') {
            Some(at) => start = at,
            None => return text,
        }
    }
    &text[start + 1..]
}

fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &text[start..])
}

/// One call on the orchestrator's model over the results: what was done, what failed, what
/// to review.
async fn synthesize(
    inputs: &EngineInputs,
    records: &[(String, AgentRecord)],
    not_run: &[(String, NotRun)],
    out_of_scope: &[String],
    test: Option<&TestOutcome>,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let model = inputs.config.orchestrator_model();
    let mut request = Request::new(model.model.clone(), 1024);
    request.system = Some(
        "You write the closing summary of a fanout run for the engineer who started it: what \
         was done, what failed and why, and what to review first. Be brief and concrete."
            .into(),
    );
    let mut body = format!(
        "Workflow {} ({} sub-tasks).\n",
        inputs.plan.workflow,
        inputs.plan.subtasks.len()
    );
    let mut sorted: Vec<&(String, AgentRecord)> = records.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, record) in sorted.iter().take(400) {
        let description = inputs
            .plan
            .subtasks
            .iter()
            .find(|s| s.task_id.to_string() == *id)
            .map(|s| s.description.as_str())
            .unwrap_or("");
        body.push_str(&format!(
            "- {id} [{}{}]: {}\n",
            record.status.as_str(),
            if record.escalated {
                ", escalated to default"
            } else {
                ""
            },
            tail(description, 200)
        ));
    }
    for (id, why) in not_run.iter().take(100) {
        body.push_str(&format!("- {id} [not run]: {}\n", not_run_text(why)));
    }
    if !out_of_scope.is_empty() {
        body.push_str(&format!(
            "Files changed outside every scope: {}\n",
            out_of_scope.join(", ")
        ));
    }
    if let Some(test) = test {
        body.push_str(&format!(
            "Test command `{}`: {}\n",
            test.command,
            test.verdict()
        ));
    }
    request.messages.push(Message::user(body));
    inputs
        .fleet
        .call(&request, cancel)
        .await
        .map(|outcome| outcome.response.text())
        .map_err(|error| error.to_string())
}

/// "3 succeeded, 1 rolled back, 1 not run (of 5)": the agents of an outcome, each counted once.
pub fn agents_text(outcome: &RunOutcome) -> String {
    let counts = [
        outcome.succeeded,
        outcome.failed,
        outcome.rolled_back,
        outcome.interrupted,
        outcome.not_run,
    ]
    .map(|n| n as u64);
    let mut text =
        crate::store::agents_sentence(counts, "interrupted", outcome.agents_planned as u64);
    if outcome.escalated > 0 {
        text.push_str(&format!("; {} escalated to default", outcome.escalated));
    }
    text
}

/// `.fanout/runs/<run_id>/summary.json` and `summary.md`; `None` if they cannot be written.
fn write_summary(repo: &Path, outcome: &RunOutcome) -> Option<PathBuf> {
    let dir = crate::store::run_dir(repo, &outcome.run_id);
    std::fs::create_dir_all(&dir).ok()?;
    let json = serde_json::to_vec_pretty(outcome).ok()?;
    let mut md = format!(
        "# Run {}\n\nStatus: {}\n\n- agents: {}\n- attempts: {}; tool calls: {}; denied requests: {}\n- tokens (agents, all attempts): {} default, {} fast\n- dollars (agents, all attempts): {:.4}\n- files changed: {}\n",
        outcome.run_id,
        outcome.status.as_str(),
        agents_text(outcome),
        outcome.attempts,
        outcome.tool_calls,
        outcome.denials,
        outcome.tokens_default,
        outcome.tokens_fast,
        outcome.dollars,
        outcome.files_changed,
    );
    if !outcome.out_of_scope.is_empty() {
        md.push_str(&format!(
            "\n## Red flags: changed outside every scope\n\n{}\n",
            outcome
                .out_of_scope
                .iter()
                .map(|p| format!("- {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    if let Some(test) = &outcome.test {
        md.push_str(&format!(
            "\n## Tests\n\n`{}`: {}\n",
            test.command,
            test.verdict()
        ));
        if !test.passed {
            md.push_str(&format!(
                "\nThe end of its output:\n\n```\n{}\n```\n",
                last_lines(&test.output, 40).trim_end()
            ));
        }
        if let Some(base) = test.baseline.as_ref().filter(|base| !base.passed) {
            md.push_str(&format!(
                "\nOn the base commit ({}):\n\n```\n{}\n```\n",
                base.exit.describe(),
                last_lines(&base.output, 20).trim_end()
            ));
        }
    }
    if let Some(text) = &outcome.synthesis {
        md.push_str(&format!("\n## Summary\n\n{text}\n"));
    }
    let path = dir.join("summary.md");
    // Both files whole and durable, or the old ones (the shared atomic write syncs).
    crate::items::output::write_atomic_all(&[
        (&dir.join("summary.json"), &json),
        (&path, md.as_bytes()),
    ])
    .ok()?;
    Some(path)
}
