//! The item runner: a `workflow.items:` job from input to outputs, with exact accounting.
//!
//! [`ItemJob::from_config`] loads the items and cuts them into chunks (deterministically, so a
//! resumed run gets the same chunks); [`ItemJob::estimate`] is the dry run's arithmetic. Then
//! [`run`]:
//! 1. opens the run (a `runs` row, `<root>/.fanout/runs/<run_id>/job.json`), or on resume reads
//!    the settlement journal ([`super::journal`]) back into the [`Ledger`] so that only chunks
//!    with unsettled items are sent, cut down to those items;
//! 2. online: one scheduler task per chunk through
//!    [`run_graph`](crate::run::scheduler::run_graph) (`max_parallel`, dollar budget); the
//!    task calls the shared [`Fleet`] (governor, retries), checks the answer
//!    ([`check_answer`](super::worker::check_answer)), feeds the ledger, and works through
//!    the retries the ledger asks for (missing items alone, one repair chunk) before
//!    journaling what the chunk settled.
//!    Batch: every pending request of a round goes into one batch of the worker's provider
//!    (Anthropic Message Batches or the OpenAI Batch API, half price), the
//!    batch is polled, answers are collected by `custom_id`, and the next round carries the
//!    retries;
//! 3. one `agent_runs` row per worker call (`files_accessed` = the item ids, `tools_called` =
//!    `["submit_results"]` when the tool was called), written in an order that keeps the
//!    journal and the store consistent through a crash (below);
//! 4. closes the ledger (every input item once, in the results or the failures), writes the
//!    outputs ([`write_outputs`]) and the built-in aggregations, runs the synthesis if asked,
//!    and sets the run's status from the [`Completion`].
//!
//! The library never prints: progress goes to the caller's event callback.
//!
//! # Durability and ordering
//!
//! The journal is the truth about what is settled; the store's rows describe the calls. Per
//! chunk, in this order:
//! 1. each call's start row is sent to the store *alongside* its request (not awaited before
//!    it: a durable commit is no longer on the path to the model), and the call's answer is
//!    only looked at once that row is committed (`tokio::join!` of both);
//! 2. what the chunk settled is appended to the journal and synced: only then does the chunk
//!    count as done (its scheduler slot is freed after this);
//! 3. the end rows of the chunk's calls are written after the journal line, in the background;
//!    [`run`] waits for them before it sets the run's status.
//!
//! So after a crash at any point: a chunk in the journal has its start rows (1 before 2); no row
//! ends with success unless its chunk is in the journal (3 after 2); a row left open is either
//! a call in flight (its chunk is not in the journal, and is sent again) or a chunk that settled
//! just before the crash. On resume, open rows are ended: with the chunk's status when the
//! journal settled it, as interrupted otherwise. Batch execution follows the same order (all of
//! a round's start rows are committed before its answers are read), and records each batch in
//! the journal as soon as it is created: a resumed run collects a batch that was still running
//! (when none of its chunks has settled since) instead of submitting it again. A crash between
//! the create call and that journal line leaves the batch unknown, and its chunks are sent
//! again.
//!
//! A run shared with workers (`coordinate`) keeps the journal as the truth about what is
//! settled, with one difference: a worker ends its calls' rows in the same transaction that
//! commits the chunk's answers, so a row may end with success before its chunk is in the
//! journal. The unit's commit is durable first; a coordinator that dies before the journal
//! line settles the chunk from the store when it is resumed. A shared run's open rows are
//! never ended on resume (they may be calls in flight on a worker): a lease takeover ends a
//! dead worker's.
//!
//! # Layout
//!
//! By phase, in the order a run goes through them:
//! - `job`: the [`ItemJob`] (items, chunks, worker spec, limits) and the dry run's figures;
//! - `open`: a new run's directory and `runs` row, or a resumed run's journal replay;
//! - `online` and `batch`: sending the chunks, sharing `calls` (a call's request and its
//!   `agent_runs` rows) and `settle` (feeding the ledger, a chunk's journal line);
//! - `coordinate`, `chunk_unit` and `wire`: a run shared with `fanout worker` processes
//!   through the run store (`RunOptions::share`): the coordinator publishes the job and one
//!   unit per chunk and settles what workers commit, in commit order; [`ChunkHandler`] is
//!   what a worker runs a chunk unit with (the crate's `distributed` layer cannot name this
//!   module, so the caller hands the handler to the worker); `wire` is what passes between
//!   them;
//! - `finish`: the books closed, the aggregations, the final status and the totals;
//! - `synthesis`: the optional synthesis over the results.

mod batch;
mod calls;
mod chunk_unit;
mod coordinate;
mod finish;
mod job;
mod online;
mod open;
mod settle;
mod synthesis;
mod wire;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use self::chunk_unit::ChunkHandler;
pub use self::coordinate::Share;
pub use self::job::{Carried, ItemEstimate, ItemJob, load_items};
pub use self::open::{JobRecord, item_run};
use super::chunk::{Chunk, ChunkError};
use super::input::{InputError, InputProblem};
use super::journal::{self, JournalError, SettlementJournal};
use super::output::{
    Completion, OutputError, OutputPaths, Summary, SummaryUsage, rewrite_summary, write_outputs,
};
use super::worker::{Ledger, LedgerError, SchemaError, TemplateError};
use crate::config::items::Execution;
use crate::fleet::Fleet;
use crate::ids::{AgentId, ChunkId, RunId};
use crate::provider::batch::{BatchClient, PollPolicy};
use crate::run::scheduler::NotRun;
use crate::store::{RunStatus, Store, StoreError};

/// The `mode_routing` role of item workers.
pub const WORKER_ROLE: &str = "items_worker";
/// The job description file in the run directory (what resume checks the job against).
pub use crate::layout::JOB_FILE;

/// Why an item job could not be prepared or run.
#[derive(Debug, thiserror::Error)]
pub enum ItemsError {
    #[error("the workflow has no `items:` section")]
    NotItemWork,
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("cannot split the items: {0}")]
    Chunk(#[from] ChunkError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("the run store: {0}")]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Output(#[from] OutputError),
    #[error("item accounting: {0}")]
    Ledger(#[from] LedgerError),
    #[error("`execution: batch` needs a batch client for the items worker's provider")]
    NoBatchClient,
    #[error(
        "an `execution: batch` item run cannot be shared with workers (the provider runs the batch; run it without --local-slots)"
    )]
    SharedBatch,
    #[error("this process's own worker stopped: {0}")]
    Worker(String),
    #[error("cannot resume run {run_id}: {message}")]
    Resume { run_id: RunId, message: String },
    #[error(
        "`chunking.strategy: llm` needs the orchestrator's item plan first (a dry run shows and saves it)"
    )]
    NeedsProposal,
    #[error("{} input line(s) are not items and `items.input.on_invalid` is `fail`:\n{}", .0.len(), problem_list(.0))]
    InputProblems(Vec<InputProblem>),
    #[error(
        "`items.aggregate.{key}` names `{field}`, which the output schema has no property for{hint} (properties: {known})"
    )]
    UnknownAggregateField {
        key: &'static str,
        field: String,
        hint: String,
        known: String,
    },
}

/// The first 20 problems, one per line, and how many more.
pub fn problem_list(problems: &[InputProblem]) -> String {
    let mut text: Vec<String> = problems
        .iter()
        .take(20)
        .map(|problem| format!("  {} [{}]", problem.describe(), problem.kind.as_str()))
        .collect();
    if problems.len() > 20 {
        text.push(format!("  … and {} more", problems.len() - 20));
    }
    text.join("\n")
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `.fanout/` lives (the run store and run directories).
    pub root: PathBuf,
    /// Continue this run (its journal says what is settled) instead of starting a new one.
    pub resume: Option<RunId>,
    /// The id of a new run (ignored when resuming); one is made from the clock when `None`.
    /// A caller that locks the run directory before the run starts chooses it.
    pub run_id: Option<RunId>,
    /// Needed for `execution: batch`.
    pub batch: Option<BatchClient>,
    pub poll: PollPolicy,
    /// Share the run with `fanout worker` processes through the run store (online only).
    pub share: Option<Share>,
}

/// What happened, for progress displays (called from worker tasks; keep it quick).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ItemEvent {
    Started {
        run_id: RunId,
        items: usize,
        chunks: usize,
        /// Chunks that still have unsettled items (all of them unless resuming).
        chunks_to_send: usize,
        /// Items settled by an earlier attempt of this run.
        items_already_settled: usize,
    },
    CallStarted {
        agent_id: AgentId,
        items: usize,
    },
    CallFinished {
        agent_id: AgentId,
        accepted: usize,
        input_tokens: u64,
        output_tokens: u64,
        /// Of `input_tokens`, those read from the prompt cache.
        cache_read_tokens: u64,
        cost_usd: f64,
    },
    ChunkSettled {
        chunk: ChunkId,
        succeeded: usize,
        failed: usize,
    },
    BatchSubmitted {
        batch_id: String,
        requests: usize,
    },
    /// A resumed run collects a batch its earlier process created (not sent again).
    BatchResumed {
        batch_id: String,
        requests: usize,
    },
    BatchEnded {
        batch_id: String,
    },
    Synthesis {
        level: u32,
        parts: usize,
    },
}

/// The callback that sees [`ItemEvent`]s.
pub type EventSink = Arc<dyn Fn(&ItemEvent) + Send + Sync>;

/// The end of a run.
#[derive(Debug, Clone, Serialize)]
pub struct ItemReport {
    pub run_id: RunId,
    /// `.fanout/runs/<run_id>/` (the journal and job description).
    pub run_dir: PathBuf,
    /// Where the outputs are (the run directory unless `output.dir` says otherwise).
    pub output_dir: PathBuf,
    #[serde(skip)]
    pub paths: OutputPaths,
    pub summary: Summary,
    pub status: RunStatus,
    pub chunks: usize,
    /// Chunks sent by this attempt (fewer than `chunks` when resuming).
    pub chunks_sent: usize,
    pub items_already_settled: usize,
    /// Worker calls made by this attempt (retries and repairs included).
    pub calls: u64,
    /// Tokens and dollars over every process of the run (the store's totals).
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// Dollars the prompt cache saved (cost at the full input price minus `cost_usd`).
    pub cache_saved_usd: f64,
    pub cancelled: bool,
    pub budget_exhausted: bool,
    /// `synthesis.md`, or why the synthesis could not be written.
    pub synthesis: Option<Result<PathBuf, String>>,
    /// Other files written (groups, deduplicated results, flattened lists).
    pub extra_files: Vec<PathBuf>,
    /// Problems recording to the store (the run itself went on).
    pub store_errors: u64,
}

impl ItemReport {
    pub fn completion(&self) -> Completion {
        self.summary.status
    }
}

/// This process's calls and usage, and problems recording them.
#[derive(Debug, Default)]
struct Totals {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read_tokens: u64,
    cache_write_tokens: u64,
    cost: f64,
    cache_saved: f64,
    store_errors: u64,
}

/// The state the phases of one run share.
struct Ctx {
    job: Arc<ItemJob>,
    fleet: Fleet,
    store: Store,
    journal: SettlementJournal,
    ledger: Mutex<Ledger>,
    run_id: RunId,
    /// Attempts an agent id already has in the store (resume).
    attempts: Mutex<HashMap<AgentId, u32>>,
    totals: Mutex<Totals>,
    events: EventSink,
    /// End rows being written in the background ([`calls::write_ends`]).
    row_writes: Mutex<JoinSet<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The run directory of `run_id` under `root`.
pub use crate::store::run_dir;

/// Continue the item run `run_id`: items its journal settled are kept, chunks with nothing
/// left are not sent again. (The `fanout resume` entry point for item runs.)
pub async fn resume(
    job: Arc<ItemJob>,
    fleet: Fleet,
    store: Store,
    run_id: RunId,
    mut options: RunOptions,
    cancel: CancellationToken,
    events: EventSink,
) -> Result<ItemReport, ItemsError> {
    options.resume = Some(run_id);
    run(job, fleet, store, options, cancel, events).await
}

/// Run `job` (see the module docs).
pub async fn run(
    job: Arc<ItemJob>,
    fleet: Fleet,
    store: Store,
    options: RunOptions,
    cancel: CancellationToken,
    events: EventSink,
) -> Result<ItemReport, ItemsError> {
    let open::Opened {
        run_id,
        dir,
        ledger,
        attempts,
        items_already_settled,
        remaining,
    } = open::open_run(&job, &store, &options).await?;
    let journal = SettlementJournal::open(&dir)?;
    (events)(&ItemEvent::Started {
        run_id: run_id.clone(),
        items: job.items.len(),
        chunks: job.chunks.len(),
        chunks_to_send: remaining.len(),
        items_already_settled,
    });
    let ctx = Arc::new(Ctx {
        job: Arc::clone(&job),
        fleet,
        store: store.clone(),
        journal,
        ledger: Mutex::new(ledger),
        run_id: run_id.clone(),
        attempts: Mutex::new(attempts),
        totals: Mutex::new(Totals::default()),
        events,
        row_writes: Mutex::new(JoinSet::new()),
    });
    let chunks_sent = remaining.len();
    let budget_exhausted = execute(&ctx, remaining, &options, &dir, &cancel).await?;
    let cancelled = cancel.is_cancelled();

    let accounting = finish::close_books(&ctx)?;
    let output_dir = job.output_dir.clone().unwrap_or_else(|| dir.clone());
    let (paths, summary) = write_outputs(&output_dir, &accounting, &job.output)?;
    let records: Vec<&Value> = accounting.results.iter().map(|(_, v)| v).collect();
    let extra_files = finish::write_aggregations(&job.aggregate, &records, &output_dir)?;
    let synthesis = match &job.aggregate.synthesis {
        Some(synthesis) if !cancelled && !records.is_empty() => {
            Some(synthesis::synthesize(&ctx, &records, synthesis, &output_dir, &cancel).await)
        }
        _ => None,
    };

    let status = finish::end_run(&ctx, &summary, cancelled).await?;
    let totals = finish::run_totals(&ctx);
    // The summary again, now with what the whole run (the synthesis included) used.
    let mut summary = summary;
    summary.usage = Some(SummaryUsage {
        input_tokens: totals.input_tokens,
        output_tokens: totals.output_tokens,
        cache_read_tokens: totals.cache_read_tokens,
        cache_write_tokens: totals.cache_write_tokens,
        cost_usd: totals.cost,
        cache_saved_usd: totals.cache_saved,
    });
    rewrite_summary(&paths, &summary, job.output.title.as_deref())?;
    // The items, the chunks and the accounting are freed off the caller's path: the report
    // does not need them.
    drop(records);
    let chunks = job.chunks.len();
    // Detached: nothing waits for the freeing (the runtime finishes it before it stops).
    drop(tokio::task::spawn_blocking(move || {
        drop((accounting, ctx, job))
    }));
    Ok(ItemReport {
        run_id,
        run_dir: dir,
        output_dir,
        paths,
        summary,
        status,
        chunks,
        chunks_sent,
        items_already_settled,
        calls: totals.calls,
        input_tokens: totals.input_tokens,
        output_tokens: totals.output_tokens,
        cache_read_tokens: totals.cache_read_tokens,
        cache_write_tokens: totals.cache_write_tokens,
        cost_usd: totals.cost,
        cache_saved_usd: totals.cache_saved,
        cancelled,
        budget_exhausted,
        synthesis,
        extra_files,
        store_errors: totals.store_errors,
    })
}

/// Send the chunks still to send, online or in batches (a resumed run first collects the
/// batches its earlier process left running). Returns whether the budget stopped it.
async fn execute(
    ctx: &Arc<Ctx>,
    remaining: Vec<Chunk>,
    options: &RunOptions,
    dir: &Path,
    cancel: &CancellationToken,
) -> Result<bool, ItemsError> {
    let job = &ctx.job;
    if let Some(share) = &options.share {
        if job.execution == Execution::Batch {
            return Err(ItemsError::SharedBatch);
        }
        return coordinate::run_shared(ctx, remaining, share, cancel).await;
    }
    Ok(match job.execution {
        Execution::Online => {
            let report = online::run_online(ctx, remaining, cancel).await;
            report
                .not_run
                .iter()
                .any(|(_, why)| *why == NotRun::BudgetExhausted)
        }
        Execution::Batch => {
            let client = options.batch.as_ref().ok_or(ItemsError::NoBatchClient)?;
            let adoptable = if options.resume.is_some() {
                batch::adoptable_batches(journal::read_batches(dir)?, &remaining, &job.chunks)
            } else {
                Vec::new()
            };
            batch::run_batches(ctx, remaining, adoptable, client, &options.poll, cancel).await
        }
    })
}
