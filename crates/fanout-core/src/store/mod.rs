//! The run store: every run, agent, tool call, denial, event and checkpoint, in SQLite at
//! `<repo>/.fanout/fanout.db` (the embedded default) or in PostgreSQL (`--store postgres://…`,
//! for work shared between machines), plus the verbose JSON-lines log.
//!
//! Start reading at [`Store`] (the write side) and [`StoreReader`] (the read side); where a
//! store lives is a [`StoreLocation`].
//!
//! - **Two backends behind the same two types.** Callers keep using [`Store`] and
//!   [`StoreReader`]; each holds a connection behind the [`Db`] trait ([`db`]), which
//!   `sqlite::SqliteDb` and `postgres::PostgresDb` implement. The writer's batching and
//!   durability rules, every record's SQL and every reader query are written once against
//!   that trait; only transaction control, JSON field access and time arithmetic differ per
//!   [`Dialect`]. The tables and columns are the same on both, built by versioned migrations
//!   ([`schema::MIGRATIONS`], [`schema::POSTGRES_MIGRATIONS`]), and the integration tests'
//!   conformance suite runs every behaviour against both.
//! - **One writer.** [`Store::open_at`] starts a dedicated thread that opens (and migrates)
//!   the only writing connection and owns it. Every write is a message on a bounded channel;
//!   the thread commits whatever is queued (up to [`MAX_BATCH`] operations) as one
//!   transaction. A busy writer first waits a moment for more ([`crate::group_commit`]), so
//!   under load batches fill up and at a trickle latency stays low. The
//!   channel's bound is the back-pressure: a sender waits for room, never for the database.
//! - **Durability by kind.** Methods that return after the commit (`create_run`,
//!   `set_run_status`, `start_agent`, `start_agent_with_preimage` — the start row and the
//!   agent's pre-image manifest in one transaction —, `finish_agent`, `record_checkpoint`,
//!   `flush`) are the state transitions a resumed run depends on: a batch holding one of them
//!   is committed durably — SQLite with `PRAGMA synchronous = FULL`, PostgreSQL with the
//!   server's `synchronous_commit` — so once the future resolves the record survives power
//!   loss, not only a crash of our process. Queued methods (`event`, `tool_call`, `denial`)
//!   return once the message is queued and are committed with SQLite's `synchronous = NORMAL`
//!   (in WAL mode that survives a process crash and can lose only the last few records on
//!   power loss) or PostgreSQL's `synchronous_commit = off` for that transaction (the same
//!   bargain). A durable commit also makes every earlier one durable (both logs are appended
//!   in order).
//! - **One failing record does not sink the batch.** Each operation runs inside its own
//!   savepoint (on both backends); its error goes back to the waiting caller, or (for queued
//!   operations) is counted in [`WriterStats`].
//! - **Readers** open their own connections ([`StoreReader`]); SQLite's WAL lets them read
//!   while the writer writes, and PostgreSQL readers see each committed batch.
//! - **Sync over async.** The store's API is synchronous underneath (the writer is a thread;
//!   reader queries block like file reads). The sync `postgres` client may not be used on a
//!   thread inside a tokio runtime, so every PostgreSQL connection lives on a thread of its
//!   own and [`Db`] calls are messages to it ([`postgres`]'s module docs).
//! - **The log.** [`Store::attach_log`] makes the writer append every record it commits, as one
//!   JSON object per line, to the run's `logging.destination`.
//!
//! - **Units and leases** ([`units`]): a run's plan and base tree stored once, one unit per
//!   agent, leased by workers on any machine and committed with the agent's patch; the run's
//!   dollar budget reserved at each lease and settled at each commit.
//! - **What workers share besides units**: rate buckets, one `rate_buckets` row per limit,
//!   taken all or nothing and corrected after the answer ([`Store::take_from_buckets`],
//!   [`Store::adjust_buckets`]); limits learned from response headers, one `learned_limits`
//!   row per model API and kind ([`Store::share_learned_limits`]).
//!
//! Not here: what to record when (the scheduler and agents decide), git checkpoints
//! ([`crate::run`]), which limits a fleet shares and how much it takes
//! ([`crate::distributed`]).

mod buckets;
pub mod db;
mod error;
mod learned;
mod location;
mod log;
mod postgres;
mod query;
pub mod schema;
mod sqlite;
pub mod units;
mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::Mode;
pub use crate::ids::{AgentId, RunId};

pub use buckets::{BucketAdjust, BucketTake, Granted};
pub use db::{Db, DbError, Dialect, SqlValue};
pub use error::StoreError;
pub use learned::LearnedLimit;
pub use location::{PostgresUrl, StoreLocation};
pub use log::LogSink;
pub use query::{
    AgentDetail, AgentRow, CheckpointRow, DenialRow, EventRow, ObservedUsage, RunDetail, RunRow,
    RunSummary, Spent, StatusCounts, StoreReader, ToolCallRow, UnfinishedUsage, agents_sentence,
    cache_sentence,
};
pub use units::{
    BUDGET_EXHAUSTED, Lease, RunPlanRecord, RunSpend, UnitCommit, UnitKind, UnitRow, UnitSpec,
    UnitState,
};
pub use writer::{MAX_BATCH, QUEUE_DEPTH, Store, WriterStats};

pub use crate::layout::{db_path, run_dir};

/// Create `<repo>/.fanout/` with its ignore file ([`crate::layout::ensure`]); its path.
pub fn ensure_fanout_dir(repo: &Path) -> Result<PathBuf, StoreError> {
    crate::layout::ensure(repo).map_err(|error| StoreError::CreateDir {
        path: error.path,
        source: error.io,
    })
}

/// A timestamp as the store writes it: RFC 3339, UTC, milliseconds (`2026-01-31T09:30:00.123Z`).
/// Text in this form sorts chronologically.
pub fn format_time(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Parse a timestamp the store wrote.
pub fn parse_time(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

/// The time between two stored timestamps, if both parse and are in order.
pub fn elapsed(start: &str, end: &str) -> Option<Duration> {
    parse_time(end)?.duration_since(parse_time(start)?).ok()
}

/// Where a run stands (`runs.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Planned,
    Running,
    Completed,
    /// Finished with some agents failed or rolled back.
    Partial,
    Failed,
    Cancelled,
    /// Every agent succeeded and stayed in scope, but the verification command failed.
    TestsFailed,
    /// Undone by `fanout rollback` after it ended: the tree is back at a checkpoint.
    RolledBack,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Planned => "planned",
            RunStatus::Running => "running",
            RunStatus::Completed => "completed",
            RunStatus::Partial => "partial",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::TestsFailed => "tests_failed",
            RunStatus::RolledBack => "rolled_back",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        Some(match text {
            "planned" => RunStatus::Planned,
            "running" => RunStatus::Running,
            "completed" => RunStatus::Completed,
            "partial" => RunStatus::Partial,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "tests_failed" => RunStatus::TestsFailed,
            "rolled_back" => RunStatus::RolledBack,
            _ => return None,
        })
    }
}

/// How an agent run ended (`agent_runs.status`, the seed's three values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Success,
    Failure,
    /// Failed and its changes were undone.
    Rollback,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Success => "success",
            AgentStatus::Failure => "failure",
            AgentStatus::Rollback => "rollback",
        }
    }

    pub fn parse(text: &str) -> Option<AgentStatus> {
        Some(match text {
            "success" => AgentStatus::Success,
            "failure" => AgentStatus::Failure,
            "rollback" => AgentStatus::Rollback,
            _ => return None,
        })
    }
}

pub(crate) fn parse_mode(text: &str) -> Option<Mode> {
    match text {
        "fast" => Some(Mode::Fast),
        "default" => Some(Mode::Default),
        _ => None,
    }
}

/// The list of files fanout itself writes inside the work tree outside `.fanout/` (today:
/// each run's JSON-lines log when `logging.destination` points there), one repository-relative
/// path per line, in `.fanout/`. Checkpoints, the scope check, rollback and the planner's file
/// scan all skip these paths: fanout's own files are never an agent's change.
pub use crate::layout::OWNED_PATHS_FILE;

/// Run ids are TEXT in every table.
impl rusqlite::types::ToSql for RunId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.as_str().to_sql()
    }
}

impl rusqlite::types::FromSql for RunId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(RunId::from)
    }
}

/// Agent ids are TEXT in every table.
impl rusqlite::types::ToSql for AgentId {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        self.as_str().to_sql()
    }
}

impl rusqlite::types::FromSql for AgentId {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(value).map(AgentId::from)
    }
}

/// Add `relative` (a path inside the work tree) to [`OWNED_PATHS_FILE`], durably, before
/// fanout first writes it.
pub fn register_owned_path(repo: &Path, relative: &str) -> Result<(), StoreError> {
    use std::io::Write;
    if owned_paths(repo).contains(relative) {
        return Ok(());
    }
    ensure_fanout_dir(repo)?;
    let path = crate::layout::owned_paths_file(repo);
    let io = |source| StoreError::CreateDir {
        path: path.clone(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io)?;
    file.write_all(format!("{relative}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io)
}

/// The paths in [`OWNED_PATHS_FILE`] (empty if there is none).
pub fn owned_paths(repo: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_to_string(crate::layout::owned_paths_file(repo))
        .map(|text| {
            text.lines()
                .filter(|line| !line.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A run as it is created (`runs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewRun {
    pub run_id: RunId,
    pub workflow: String,
    pub config_path: Option<PathBuf>,
    /// `sha256:<hex>` of the reviewed plan file.
    pub plan_hash: Option<String>,
    pub repo: Option<PathBuf>,
    pub status: RunStatus,
    pub started_at: SystemTime,
    /// The commit HEAD pointed at when the run started.
    pub base_commit: Option<String>,
    pub agents_planned: u32,
    /// The model was the simulator: its runs do not calibrate estimates for real ones.
    pub simulated: bool,
}

/// An agent attempt as it starts: one `agent_runs` row with `status` NULL.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentStart {
    pub run_id: RunId,
    pub agent_id: AgentId,
    /// 1 for the first try; each retry or escalation is a new attempt (a new row).
    pub attempt: u32,
    pub task_description: String,
    pub mode: Mode,
    pub model: Option<String>,
    /// True when this attempt is a `fast` agent re-run on `default` after failed validation.
    pub escalated: bool,
    pub started_at: SystemTime,
}

/// How an agent attempt ended. Finishing is idempotent: the same status again is a no-op
/// (totals are not counted twice); a different status is an error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentFinish {
    pub run_id: RunId,
    pub agent_id: AgentId,
    pub attempt: u32,
    pub status: AgentStatus,
    /// Repository-relative paths the agent read or wrote (`files_accessed`).
    pub files_accessed: Vec<String>,
    /// Tool names the agent called (`tools_called`).
    pub tools_called: Vec<String>,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the provider's prompt cache.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the provider's prompt cache.
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// Dollars the cache saved: the cost at the full input price minus `cost_usd`.
    pub cache_saved_usd: f64,
    pub error: Option<String>,
    /// The checkpoint (commit id) the agent's changes are in, once one is taken.
    pub checkpoint: Option<String>,
    pub ended_at: SystemTime,
}

impl AgentFinish {
    /// `token_count`: input plus output tokens.
    pub fn token_count(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One tool call (`tool_calls`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRecord {
    pub run_id: RunId,
    pub agent_id: AgentId,
    pub attempt: u32,
    /// Order of the call within the attempt, from 1.
    pub seq: u32,
    pub tool: String,
    /// What the call acted on: a path, a command line, a search pattern.
    pub target: Option<String>,
    pub ok: bool,
    /// `ok`, `error` or `denied`.
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub started_at: SystemTime,
    pub ended_at: Option<SystemTime>,
    pub duration_ms: Option<u64>,
    /// Bytes written by a write or edit, else bytes of output.
    pub bytes: Option<u64>,
    /// Repository paths the call read or wrote.
    pub paths: Vec<String>,
}

/// A request the policy refused (`denials`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenialRecord {
    pub run_id: RunId,
    pub agent_id: AgentId,
    pub attempt: u32,
    pub tool: String,
    pub target: Option<String>,
    pub reason: String,
    pub at: SystemTime,
}

/// A run event (`events`); the writer numbers them per run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub run_id: RunId,
    pub agent_id: Option<AgentId>,
    pub kind: String,
    pub payload: serde_json::Value,
    pub at: SystemTime,
}

/// One paid model call, recorded as a `model_call` event the moment it is answered: the
/// repository engine's agents and the item runner's workers write the same fields, which
/// resume, the report and the traces read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelCall {
    pub attempt: u32,
    /// From 1 (an item worker's one call is turn 1).
    pub turn: u64,
    pub mode: Mode,
    pub provider: crate::config::Provider,
    pub model: String,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub dollars: f64,
    pub cache_saved: f64,
    /// Tries the fleet made, when the caller knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u32>,
    /// Time queued for the rate governor, when the caller knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_wait_ms: Option<u64>,
    /// Of `tries`, those the server answered with a 429, when the caller knows them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<u32>,
    /// What the call sent and received, only with the opt-in
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true` (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<crate::provider::genai::CallContent>,
    /// The answer's id, model, finish reason and tool call ids (absent in records made
    /// before they were kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<crate::provider::genai::CallAnswer>,
}

impl ModelCall {
    /// The `model_call` event of agent `agent_id` of run `run_id`, now.
    pub fn event(&self, run_id: &RunId, agent_id: AgentId) -> EventRecord {
        EventRecord {
            run_id: run_id.clone(),
            agent_id: Some(agent_id),
            kind: "model_call".into(),
            payload: serde_json::to_value(self).unwrap_or_default(),
            at: SystemTime::now(),
        }
    }
}

/// A checkpoint taken (`checkpoints`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointRecord {
    pub run_id: RunId,
    /// 0 is the run's base (the tree before the run); then 1, 2, ...
    pub seq: u64,
    pub commit_id: String,
    pub ref_name: String,
    pub label: String,
    pub completed_agents: u64,
    pub at: SystemTime,
}
