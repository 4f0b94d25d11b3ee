//! One run as a self-contained HTML page (`fanout report`): the data, gathered from the run
//! store and the run's directory into a typed [`RunReport`] ([`gather`]), and the page,
//! rendered from it by a pure function ([`render_html`]).
//!
//! What it owns: which records a report shows and how they are drawn (an agent timeline of
//! one SVG bar per attempt, dependency waves, tokens and dollars by mode and by agent,
//! requests and 429s over time, checkpoints, denials, each agent's diff stat; for item runs the counts and the
//! failures). Every string that comes from the store or a run file is escaped when rendered:
//! agent ids, paths and error messages can come from a model.
//!
//! It does not write files or print: the caller puts the page where it wants
//! ([`crate::layout::report_file`] by default) and opens it. Rate-limit waits come from the
//! `model_call` events (each call's governor wait and tries).
//!
//! Start at [`gather`], then [`html`].

mod gather;
pub mod html;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::config::Mode;
use crate::ids::AgentId;
use crate::store::{AgentStatus, RunRow, StatusCounts, StoreError};

pub use gather::gather;
pub use html::render_html;

/// Why a report could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no run {run_id} in the run store {store} (see `fanout runs`)")]
    UnknownRun {
        run_id: String,
        store: crate::store::StoreLocation,
    },
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not in the form fanout writes it: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
}

/// Everything a run's report shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub run: RunRow,
    /// Agents by the status of their last attempt; tokens and dollars over all attempts.
    pub counts: StatusCounts,
    pub kind: RunKind,
    /// Every attempt, by start time; offsets are from the run's start.
    pub attempts: Vec<AttemptBar>,
    /// The length of the time axis: the run's end, or its last recorded moment.
    #[serde(rename = "span_ms", serialize_with = "as_millis")]
    pub span: Duration,
    /// Task ids by dependency wave (wave 1 has no dependencies), when the plan is on disk.
    pub waves: Vec<Vec<String>>,
    pub by_mode: Vec<ModeTotals>,
    /// Per agent over its attempts, most dollars first.
    pub by_agent: Vec<AgentTotals>,
    /// Every answered model call (its `model_call` event), by the time it was recorded.
    pub calls: Vec<CallMark>,
    pub checkpoints: Vec<CheckpointMark>,
    pub denials: Vec<Denial>,
    /// Paths written by each agent's successful attempt (rolled-back changes are undone), with
    /// the lines the run changed in each.
    pub files_changed: Vec<AgentFiles>,
}

/// What kind of run, with what only that kind has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunKind {
    Repository(RepositoryOutcome),
    Items(ItemOutcome),
}

/// A repository run's verdicts, from its `summary.json` (`None` where the run has not
/// written one yet).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RepositoryOutcome {
    /// Measured by the engine, else the store's start and end.
    #[serde(rename = "wall_time_ms", serialize_with = "as_millis_opt")]
    pub wall_time: Option<Duration>,
    #[serde(rename = "estimated_wall_time_ms", serialize_with = "as_millis_opt")]
    pub estimated_wall_time: Option<Duration>,
    /// Files changed outside every declared write scope; `None`: not checked yet.
    pub out_of_scope: Option<Vec<String>>,
    pub files_changed: Option<u64>,
    pub test: Option<TestVerdict>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestVerdict {
    pub command: String,
    pub passed: bool,
}

/// An item run's outcome, from `summary.json` and `failed.jsonl`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ItemOutcome {
    /// `complete`, `partial` or `failed`; `None` before the run wrote its summary.
    pub status: Option<String>,
    pub items: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub failures_by_kind: Vec<(String, u64)>,
    /// For each count-by field, `(value, count)`, most frequent first.
    pub counts: Vec<(String, Vec<(String, u64)>)>,
    /// The first [`MAX_ITEM_FAILURES`] lines of `failed.jsonl`.
    pub failures: Vec<ItemFailure>,
    /// Lines in `failed.jsonl`.
    pub failures_total: u64,
}

/// Failed items listed in a report; the rest are counted (all are in `failed.jsonl`).
pub const MAX_ITEM_FAILURES: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemFailure {
    pub id: String,
    pub reason: String,
    pub message: String,
    pub attempts: u64,
}

/// One attempt of one agent on the time axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptBar {
    pub agent_id: AgentId,
    pub attempt: u32,
    /// `None`: no end recorded (in flight, or interrupted).
    pub status: Option<AgentStatus>,
    pub mode: Option<Mode>,
    pub model: Option<String>,
    pub escalated: bool,
    pub start_ms: u64,
    /// `None` while in flight: the bar runs to the end of the axis.
    pub end_ms: Option<u64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub dollars: f64,
    pub files: Vec<String>,
    pub tools: Vec<String>,
    pub denials: u64,
    /// Time this attempt's model calls waited for the rate governor, summed.
    pub rate_wait_ms: u64,
    /// A first attempt that waited for its dependencies: from when the agents began (the
    /// earliest start) until its own start.
    pub dependency_wait_from_ms: Option<u64>,
    pub error: Option<String>,
}

/// One answered model call on the time axis, with the requests it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CallMark {
    /// When its answer was recorded, from the run's start.
    pub at_ms: u64,
    /// Requests sent for it (1 plus its retries; 1 where the caller did not record them).
    pub tries: u32,
    /// Of `tries`, those the server answered with a 429.
    pub rate_limited: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeTotals {
    /// `fast`, `default`, or `unknown` for attempts recorded without one.
    pub mode: String,
    pub attempts: u64,
    pub tokens: u64,
    pub dollars: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentTotals {
    pub agent_id: AgentId,
    pub attempts: u64,
    /// Of the last attempt; `None` while it runs.
    pub status: Option<AgentStatus>,
    pub tokens: u64,
    pub dollars: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointMark {
    pub seq: u64,
    pub label: String,
    pub completed_agents: u64,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Denial {
    pub agent_id: AgentId,
    pub attempt: u32,
    pub tool: String,
    pub target: Option<String>,
    pub reason: String,
    pub at: String,
}

/// One agent's diff stat: the files its successful attempt wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentFiles {
    pub agent_id: AgentId,
    pub files: Vec<FileChange>,
}

impl AgentFiles {
    /// Lines added and removed over its files whose counts are known.
    pub fn lines(&self) -> (u64, u64) {
        self.files
            .iter()
            .filter_map(|file| file.lines)
            .fold((0, 0), |(added, removed), (a, r)| (added + a, removed + r))
    }
}

/// A file an agent wrote, with what the run changed in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileChange {
    pub path: String,
    /// Lines added and removed between the run's base commit and its last checkpoint; `None`
    /// for a binary file, or when that diff cannot be read (no checkpoint yet, or git cannot
    /// read the repository).
    pub lines: Option<(u64, u64)>,
    /// Other agents wrote it too: the lines are the file's, not this agent's alone.
    pub shared: bool,
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
