//! The live run: a reviewed plan executed by the scheduler, one sub-agent per sub-task, with
//! every state change written to the run store before it is acted on.
//!
//! For each agent: its scope policy and toolbox (scopes enforced in code and, for commands, by
//! the kernel), its mode's model, `run_agent` through the shared fleet, then its record in
//! `agent_runs`. An agent succeeds only if it reported a valid result that says it finished
//! and its receipts do not contradict it. A failed agent's changes are undone from its journal
//! (status `rollback`); an agent on `fast` whose result fails validation, or that reports it
//! could not finish, is retried once on `default` (recorded as escalated); transient failures retry the agent up to `max_attempts`. Checkpoints land on the
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
//!
//! # Layout
//!
//! By phase, in the order a run goes through them (`orchestrate` strings them together):
//! - `resume`: a resumed run's preparation (what earlier processes recorded, rollback of
//!   every agent that did not succeed, in-flight attempts closed);
//! - `attempt`: one agent's task, attempt by attempt, with `scope` (its pre-image, start
//!   gate, sync and restore) and `records` (what its attempts leave on record); whether an
//!   attempt succeeded and what follows one that did not is [`crate::attempt`]'s rule,
//!   shared with `fanout worker`;
//! - `verify`: the final checkpoint, the scope check and the test command;
//! - `remote`: the agents phase of a run shared with `fanout worker` processes, in place of
//!   the scheduler's (publish, apply committed patches, checkpoints between applications);
//! - `synthesis`: the closing summary call;
//! - `summary`: `summary.json` and `summary.md`.

mod attempt;
mod orchestrate;
mod records;
mod remote;
mod resume;
mod scope;
mod summary;
mod synthesis;
mod verify;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use self::remote::{Distribution, RemoteError};
pub use self::summary::{agents_text, cache_text};
pub use self::verify::{BaselineOutcome, TestOutcome};
use crate::config::{Config, Mode};
use crate::fleet::Fleet;
use crate::ids::RunId;
use crate::plan::{Plan, TaskId};
use crate::run::checkpoint::InFlightScopes;
use crate::run::checkpoint_worker::CheckpointWorker;
use crate::run::durable::SyncGroup;
use crate::run::lock::RepoLock;
use crate::run::preimage::{BaseBlobs, Preimage, PreimageError};
use crate::sandbox::SandboxConfig;
use crate::store::{AgentStatus, RunStatus, Store};
use crate::tools::RepoFacts;

/// Everything a live run needs.
#[derive(Debug, Clone)]
pub struct EngineInputs {
    pub config: Arc<Config>,
    /// The validated plan (adjustments applied).
    pub plan: Plan,
    /// Estimated dollars per sub-task, in plan order (reserved against the run budget).
    pub estimated_dollars: Vec<f64>,
    /// The estimate's wall-time floor, kept in `summary.json` beside the measured wall time.
    pub estimated_wall_time: Option<Duration>,
    pub plan_hash: Option<String>,
    pub config_path: Option<PathBuf>,
    pub repo: PathBuf,
    /// The run store the run is recorded in (`<repo>/.fanout/fanout.db` unless `--store`).
    pub store: crate::store::StoreLocation,
    pub run_id: RunId,
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
    /// Shared with `fanout worker` processes through the store (`--local-slots`); `None` for
    /// a run this process carries out alone.
    pub distribution: Option<Distribution>,
}

/// What happened, for progress displays (the store has the durable record).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EngineEvent {
    /// The scheduler admitted the agent: it counts as running from now on (its
    /// `AgentStarted`, sent from the agent's own task, may come later).
    AgentScheduled {
        agent_id: TaskId,
    },
    AgentStarted {
        agent_id: TaskId,
        attempt: u32,
        mode: Mode,
    },
    AgentFinished {
        agent_id: TaskId,
        status: AgentStatus,
        mode: Mode,
        tokens: u64,
        dollars: f64,
        /// Requests of this agent the policy refused, over its attempts in this process.
        denials: usize,
        /// Its input tokens over its attempts in this process, and those read from the cache.
        input_tokens: u64,
        cache_read_tokens: u64,
    },
    AgentNotRun {
        agent_id: TaskId,
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

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunOutcome {
    pub run_id: RunId,
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
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub dollars: f64,
    /// Dollars the prompt cache saved: the cost at the full input price minus `dollars`.
    pub cache_saved: f64,
    #[serde(rename = "wall_time_ms", serialize_with = "as_millis")]
    pub wall_time: Duration,
    /// The plan's wall-time estimate, when the caller had one.
    #[serde(rename = "estimated_wall_time_ms", serialize_with = "as_millis_opt")]
    pub estimated_wall_time: Option<Duration>,
    pub checkpoints: u64,
    pub final_checkpoint: Option<String>,
    /// Files changed by the run outside every declared write scope (red flags).
    pub out_of_scope: Vec<String>,
    pub files_changed: usize,
    pub test: Option<TestOutcome>,
    pub synthesis: Option<String>,
    pub synthesis_error: Option<String>,
    pub summary_path: Option<PathBuf>,
    /// Why `summary.json` / `summary.md` could not be written (the store has the run either
    /// way).
    #[serde(skip)]
    pub summary_problem: Option<String>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn as_millis_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
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
    Git(#[from] crate::git::GitError),
    #[error("the plan has {plan} sub-tasks but {estimates} estimates")]
    EstimateMismatch { plan: usize, estimates: usize },
    #[error("pre-image: {0}")]
    Preimage(#[from] PreimageError),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("cannot start the sync worker thread: {0}")]
    SyncWorker(String),
    #[error("shared run: {0}")]
    Remote(Box<RemoteError>),
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
    input_tokens: u64,
    cache_read_tokens: u64,
}

/// State shared by all agent tasks of a run.
struct Shared {
    inputs: EngineInputs,
    store: Store,
    /// Taken at the end of the run for the final checkpoint.
    checkpoints: Mutex<Option<CheckpointWorker>>,
    records: Mutex<HashMap<TaskId, AgentRecord>>,
    /// Denied requests by agent, over its attempts in this process.
    denials: Mutex<HashMap<TaskId, usize>>,
    events: Arc<Mutex<Vec<EngineEvent>>>,
    /// The attempt number each agent's next try gets (1 unless the run is resumed).
    first_attempt: HashMap<TaskId, u32>,
    /// Agents a resumed run starts on `default` because they had been escalated there.
    escalated: HashSet<TaskId>,
    /// Scanned once per run for every agent's toolbox.
    facts: RepoFacts,
    /// The base checkpoint's blobs, which pre-images point at instead of copying.
    base_blobs: BaseBlobs,
    /// Pre-images recorded by the run's earlier processes (resume), by agent.
    preimages: Mutex<HashMap<TaskId, Arc<Preimage>>>,
    /// Makes agents' edits durable in shared `syncfs` rounds.
    durable: SyncGroup,
    /// Agents whose scopes checkpoints show as their pre-images (see [`InFlightScopes`]).
    in_flight: Arc<InFlightScopes>,
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
    orchestrate::run_engine(inputs, true, cancel, on_event).await
}

/// Run the plan. `on_event` sees progress as it happens, from the caller's task.
pub async fn execute(
    inputs: EngineInputs,
    cancel: &CancellationToken,
    on_event: impl FnMut(&EngineEvent),
) -> Result<RunOutcome, EngineError> {
    orchestrate::run_engine(inputs, false, cancel, on_event).await
}

/// Run blocking file or git work off the async workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| EngineError::Join(error.to_string()))
}
