//! The item runner: a `workflow.items:` job from input to outputs, with exact accounting.
//!
//! [`ItemJob::from_config`] loads the items and cuts them into chunks (deterministically, so a
//! resumed run gets the same chunks); [`ItemJob::estimate`] is the dry run's arithmetic. Then
//! [`run`]:
//! 1. opens the run (a `runs` row, `<root>/.fanout/runs/<run_id>/job.json`), or on resume reads
//!    the settlement journal ([`super::journal`]) back into the [`Ledger`] so that only chunks
//!    with unsettled items are sent, cut down to those items;
//! 2. online: one scheduler task per chunk through [`run_graph`] (`max_parallel`, dollar
//!    budget); the task calls the shared [`Fleet`] (governor, retries), checks the answer
//!    ([`check_answer`]), feeds the ledger, and works through the retries the ledger asks for
//!    (missing items alone, one repair chunk) before journaling what the chunk settled.
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Item;
use super::aggregate::{dedupe_by, flatten, group_by, synthesis_request, tree_reduce};
use super::chunk::{
    Chunk, ChunkError, ChunkId, Decomposition, TokenBudget, decompose_within, estimate_tokens,
};
use super::input::{IdSource, InputError, InputProblem, InputSource, Loaded, ProblemKind, load};
use super::journal::{
    self, JournalError, Settlement, SettlementJournal as Journal, SubmittedBatch,
};
use super::output::{
    Completion, OutputError, OutputOptions, OutputPaths, Summary, write_atomic, write_outputs,
};
use super::worker::{
    ChunkOutcome, FailedItem, FailureKind, ItemRetries as RetryPolicy, Ledger, LedgerError,
    OutputSchema, RetryChunk, SUBMIT_TOOL, SchemaError, TemplateError, WorkerSpec,
    build_repair_request, build_request, check_answer,
};
use crate::config::items::{
    ChunkingConfig, Execution, InputFormat, ItemAggregateConfig, ItemIdConfig, ItemsConfig,
    OnInvalid,
};
use crate::config::{Config, Mode, ModelSpec};
use crate::fleet::{Fleet, FleetError};
use crate::provider::Response;
use crate::provider::batch::{
    BATCH_PRICE_FACTOR, BatchClient, BatchError, BatchOutcome, BatchRequest, PollPolicy,
};
use crate::run::scheduler::{SchedulerLimits, SchedulerReport, TaskOutcome, TaskSpec, run_graph};
use crate::store::{
    AgentFinish, AgentStart, AgentStatus, NewRun, RunStatus, Store, StoreError, StoreReader,
};

/// The `mode_routing` role of item workers.
pub const WORKER_ROLE: &str = "items_worker";
/// The job description file in the run directory (what resume checks the job against).
pub const JOB_FILE: &str = "job.json";
/// Estimated output tokens per item, before any answer is seen.
const OUTPUT_TOKENS_PER_ITEM: u64 = 80;
/// Input budget of one synthesis call, in estimated tokens.
const SYNTHESIS_BUDGET_TOKENS: u64 = 60_000;

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
    #[error("cannot resume run {run_id}: {message}")]
    Resume { run_id: String, message: String },
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

// ---------------------------------------------------------------------------------------------
// The job

/// Everything a run needs, prepared from the workflow file.
#[derive(Debug)]
pub struct ItemJob {
    pub name: String,
    pub config_path: PathBuf,
    pub items: Vec<Item>,
    pub chunks: Vec<Chunk>,
    pub spec: WorkerSpec,
    pub schema: OutputSchema,
    pub worker_model: ModelSpec,
    pub worker_mode: Mode,
    pub synthesis_model: ModelSpec,
    pub retry: RetryPolicy,
    pub execution: Execution,
    pub chunking: ChunkingConfig,
    pub aggregate: ItemAggregateConfig,
    pub output: OutputOptions,
    pub output_dir: Option<PathBuf>,
    pub max_parallel: usize,
    pub budget: Option<f64>,
    /// The model's input limit; a chunk estimated above it is failed as oversized.
    pub max_input_tokens: u64,
    /// Estimated tokens of the prompt around the items.
    pub overhead_tokens: u64,
    /// Input lines that are not items: failures of the job, never sent.
    pub problems: Vec<InputProblem>,
    /// What an earlier run settled, when this job sends its retryable failures again.
    pub carried: Option<Carried>,
}

/// The part of an earlier item run a `--retry-failed` run keeps: its results, its failures
/// that sending again cannot fix, and how often each retried item was sent already.
#[derive(Debug, Clone, Default)]
pub struct Carried {
    pub from_run: String,
    pub results: Vec<(String, Value)>,
    pub failures: Vec<FailedItem>,
    pub prior_attempts: HashMap<String, u32>,
}

impl ItemJob {
    /// The job of `fanout run --retry-failed RUN` for an item run: the items `RUN` did not
    /// settle as results, other than those whose failure sending again cannot fix (input
    /// problems, oversized items), with `RUN`'s results and final failures carried over so the
    /// new run's outputs are complete. Read from `RUN`'s settlement journal, so attempts are
    /// kept.
    pub fn retry_of(
        config: &Config,
        root: &Path,
        from_run: &str,
        loaded: Loaded,
    ) -> Result<ItemJob, ItemsError> {
        let dir = run_dir(root, from_run);
        let mut results: HashMap<String, Value> = HashMap::new();
        let mut failures: HashMap<String, super::worker::Failure> = HashMap::new();
        for settlement in journal::read(&dir)? {
            for (id, value) in settlement.results {
                failures.remove(&id);
                results.insert(id, value);
            }
            for failure in settlement.failures {
                if !results.contains_key(&failure.id) {
                    failures.insert(failure.id.clone(), failure);
                }
            }
        }
        let mut carried = Carried {
            from_run: from_run.to_owned(),
            ..Carried::default()
        };
        let mut retry = Vec::new();
        for item in loaded.items {
            if let Some(value) = results.remove(&item.id) {
                carried.results.push((item.id.clone(), value));
                continue;
            }
            match failures.remove(&item.id) {
                Some(failure) if !failure.kind.retryable() => carried.failures.push(FailedItem {
                    id: item.id.clone(),
                    kind: failure.kind,
                    reason: failure.reason,
                    attempts: failure.attempts,
                    input: Arc::unwrap_or_clone(Arc::clone(&item.value)),
                }),
                Some(failure) => {
                    carried
                        .prior_attempts
                        .insert(item.id.clone(), failure.attempts);
                    retry.push(item);
                }
                // Never settled (the run was cancelled or ran out of budget): send it.
                None => retry.push(item),
            }
        }
        let mut job = ItemJob::with_items(config, retry)?;
        job.problems = loaded.problems;
        job.carried = Some(carried);
        Ok(job)
    }
}

/// The dry run's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ItemEstimate {
    pub items: u64,
    pub chunks: u64,
    pub oversized_chunks: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Dollars at the online price (retries not included).
    pub online_dollars: f64,
    /// Dollars through the Message Batches API.
    pub batch_dollars: f64,
}

impl ItemJob {
    /// Load the items named by the workflow and prepare the job. Input lines that are not
    /// items become the job's [`ItemJob::problems`] (or, with `on_invalid: fail`, an error).
    pub fn from_config(config: &Config) -> Result<ItemJob, ItemsError> {
        let items_config = config.items.as_ref().ok_or(ItemsError::NotItemWork)?;
        let loaded = load_items(items_config)?;
        let mut job = ItemJob::with_items(config, loaded.items)?;
        job.problems = loaded.problems;
        Ok(job)
    }

    /// Prepare the job for `items` (given rather than read, e.g. by a benchmark).
    pub fn with_items(config: &Config, items: Vec<Item>) -> Result<ItemJob, ItemsError> {
        let items_config = config.items.as_ref().ok_or(ItemsError::NotItemWork)?;
        let Some(schema) = items_config.worker.output_schema.clone() else {
            return Err(ItemsError::NeedsProposal);
        };
        if matches!(items_config.chunking, ChunkingConfig::Llm { .. }) {
            return Err(ItemsError::NeedsProposal);
        }
        ItemJob::build(
            config,
            items,
            items_config.chunking.clone(),
            items_config.worker.instructions.clone(),
            schema,
        )
    }

    /// Prepare the job for `items` with the orchestrator's reviewed item plan
    /// (`chunking.strategy: llm`): its chunking, instructions and record schema.
    pub fn with_proposal(
        config: &Config,
        items: Vec<Item>,
        proposal: &super::propose::ItemProposal,
    ) -> Result<ItemJob, ItemsError> {
        ItemJob::build(
            config,
            items,
            proposal.chunking_config(),
            proposal.instructions.clone(),
            proposal.output_schema.clone(),
        )
    }

    fn build(
        config: &Config,
        items: Vec<Item>,
        chunking: ChunkingConfig,
        instructions: String,
        schema: Value,
    ) -> Result<ItemJob, ItemsError> {
        let items_config = config.items.as_ref().ok_or(ItemsError::NotItemWork)?;
        let schema = OutputSchema::new(schema)?;
        let worker_mode = config.mode_for_role(WORKER_ROLE);
        let worker_model = config.model_for_mode(worker_mode).clone();
        let spec = WorkerSpec {
            model: worker_model.model.clone(),
            max_tokens: items_config.worker.max_tokens,
            instructions,
            template: items_config.worker.template.clone(),
            temperature: None,
            output: items_config.worker.output,
        };
        let empty = Chunk::new(ChunkId("chunk-0".into()), Vec::new());
        let overhead_tokens = request_tokens(&build_request(&spec, &schema, &empty)?);
        let (decomposition, max_input_tokens) = match &chunking {
            ChunkingConfig::PerItem => (Decomposition::PerItem, u64::MAX),
            ChunkingConfig::Fixed { size } => (Decomposition::Fixed { size: *size }, u64::MAX),
            ChunkingConfig::TokenBudget {
                max_items,
                share_of_minute,
                max_input_tokens,
            } => (
                Decomposition::TokenBudget(TokenBudget {
                    max_input_tokens: *max_input_tokens,
                    overhead_tokens,
                    input_tokens_per_minute: config.rate_limits.input_tokens_per_minute,
                    share_of_minute: *share_of_minute,
                    max_items: *max_items,
                }),
                *max_input_tokens,
            ),
            ChunkingConfig::Llm { .. } => return Err(ItemsError::NeedsProposal),
        };
        // Per-item and fixed chunks respect the model's input limit too.
        let max_input_tokens = if max_input_tokens == u64::MAX {
            crate::config::items::DEFAULT_MAX_INPUT_TOKENS
        } else {
            max_input_tokens
        };
        let room = max_input_tokens.saturating_sub(overhead_tokens);
        let chunks = decompose_within(&items, &decomposition, room)?;
        check_aggregate_fields(&items_config.aggregate, &schema)?;
        let mut count_by = items_config.aggregate.count_by.clone();
        count_by.dedup();
        Ok(ItemJob {
            name: config.name.clone(),
            config_path: config.origin.clone(),
            output: OutputOptions {
                format: items_config.output.format,
                columns: schema.property_names(),
                count_by,
                title: Some(config.name.clone()),
            },
            items,
            chunks,
            spec,
            schema,
            worker_model,
            worker_mode,
            synthesis_model: config.orchestrator_model().clone(),
            retry: RetryPolicy {
                resends: items_config.retries.resend_missing,
                repairs: items_config.retries.repairs,
            },
            execution: items_config.execution,
            chunking,
            aggregate: items_config.aggregate.clone(),
            output_dir: items_config.output.dir.clone(),
            max_parallel: config.max_parallel_agents.max(1) as usize,
            budget: config.budgets.run.max_dollars,
            max_input_tokens,
            overhead_tokens,
            problems: Vec::new(),
            carried: None,
        })
    }

    /// What the job will send, and what it costs online and through batches.
    pub fn estimate(&self) -> ItemEstimate {
        let estimate =
            super::chunk::estimate(&self.chunks, self.overhead_tokens, OUTPUT_TOKENS_PER_ITEM);
        let online = self
            .worker_model
            .cost(estimate.input_tokens, 0, estimate.output_tokens);
        ItemEstimate {
            items: estimate.items,
            chunks: estimate.requests,
            oversized_chunks: estimate.oversized_chunks,
            input_tokens: estimate.input_tokens,
            output_tokens: estimate.output_tokens,
            online_dollars: online,
            batch_dollars: online * BATCH_PRICE_FACTOR,
        }
    }

    fn price_factor(&self) -> f64 {
        match self.execution {
            Execution::Online => 1.0,
            Execution::Batch => BATCH_PRICE_FACTOR,
        }
    }

    fn chunk_estimate(&self, chunk: &Chunk) -> f64 {
        self.worker_model.cost(
            self.overhead_tokens + chunk.estimated_tokens,
            0,
            OUTPUT_TOKENS_PER_ITEM * chunk.items.len() as u64,
        ) * self.price_factor()
    }

    fn too_large(&self, chunk: &Chunk) -> bool {
        chunk.oversized && self.overhead_tokens + chunk.estimated_tokens > self.max_input_tokens
    }
}

/// Read the items the `items.input` section names, with the lines that are not items; with
/// `on_invalid: fail` any such line is an error listing them all.
pub fn load_items(config: &ItemsConfig) -> Result<Loaded, ItemsError> {
    let input = &config.input;
    let source = match input.format {
        InputFormat::Jsonl => InputSource::Jsonl(input.path.clone()),
        InputFormat::Csv => InputSource::Csv(input.path.clone()),
        InputFormat::Files => {
            // `dir/*.md` is a root and a pattern; a plain directory takes the default pattern.
            let text = input.path.to_string_lossy().into_owned();
            match text.find(['*', '?', '[', '{']) {
                Some(at) => {
                    let cut = text[..at].rfind('/').map_or(0, |slash| slash + 1);
                    InputSource::Files {
                        root: PathBuf::from(&text[..cut]),
                        pattern: Some(text[cut..].to_owned()),
                    }
                }
                None => InputSource::Files {
                    root: input.path.clone(),
                    pattern: input.pattern.clone(),
                },
            }
        }
    };
    let id = match &input.id {
        ItemIdConfig::Default => IdSource::default_for(&source),
        ItemIdConfig::Field(field) => IdSource::Field(field.clone()),
        ItemIdConfig::Position { zero_pad } => IdSource::Position {
            zero_pad: *zero_pad,
        },
    };
    let loaded = load(&source, &id)?;
    if input.on_invalid == OnInvalid::Fail && !loaded.problems.is_empty() {
        return Err(ItemsError::InputProblems(loaded.problems));
    }
    Ok(loaded)
}

/// Every field the aggregation names must be a property of the records (or `id`).
fn check_aggregate_fields(
    aggregate: &ItemAggregateConfig,
    schema: &OutputSchema,
) -> Result<(), ItemsError> {
    let known = schema.property_names();
    let named = aggregate
        .count_by
        .iter()
        .map(|field| ("count_by", field))
        .chain(aggregate.group_by.iter().map(|field| ("group_by", field)))
        .chain(aggregate.dedupe_by.iter().map(|field| ("dedupe_by", field)))
        .chain(aggregate.flatten.iter().map(|field| ("flatten", field)));
    for (key, field) in named {
        if known.iter().any(|name| name == field) {
            continue;
        }
        let hint = crate::config::did_you_mean(field, known.iter().map(String::as_str))
            .map(|best| format!("; did you mean `{best}`?"))
            .unwrap_or_default();
        return Err(ItemsError::UnknownAggregateField {
            key,
            field: field.clone(),
            hint,
            known: known.join(", "),
        });
    }
    Ok(())
}

/// An input problem as a failure of the job: in `failed.jsonl` under its own key, never sent.
fn problem_failure(problem: &InputProblem) -> FailedItem {
    FailedItem {
        id: problem.key(),
        kind: match problem.kind {
            ProblemKind::InvalidInput => FailureKind::InvalidInput,
            ProblemKind::MissingId => FailureKind::MissingId,
            ProblemKind::DuplicateId => FailureKind::DuplicateId,
            ProblemKind::Unreadable => FailureKind::Unreadable,
        },
        reason: problem.describe(),
        attempts: 0,
        input: problem.input.clone(),
    }
}

fn request_tokens(request: &crate::provider::Request) -> u64 {
    let mut bytes = request.system.as_ref().map_or(0, String::len);
    for message in &request.messages {
        bytes += serde_json::to_string(message).map_or(0, |text| text.len());
    }
    for tool in &request.tools {
        bytes += tool.input_schema.to_string().len() + tool.description.len();
    }
    estimate_tokens(bytes)
}

// ---------------------------------------------------------------------------------------------
// Running

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `.fanout/` lives (the run store and run directories).
    pub root: PathBuf,
    /// Continue this run (its journal says what is settled) instead of starting a new one.
    pub resume: Option<String>,
    /// The id of a new run (ignored when resuming); one is made from the clock when `None`.
    /// A caller that locks the run directory before the run starts chooses it.
    pub run_id: Option<String>,
    /// Needed for `execution: batch`.
    pub batch: Option<BatchClient>,
    pub poll: PollPolicy,
}

/// What happened, for progress displays (called from worker tasks; keep it quick).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ItemEvent {
    Started {
        run_id: String,
        items: usize,
        chunks: usize,
        /// Chunks that still have unsettled items (all of them unless resuming).
        chunks_to_send: usize,
        /// Items settled by an earlier attempt of this run.
        items_already_settled: usize,
    },
    CallStarted {
        agent_id: String,
        items: usize,
    },
    CallFinished {
        agent_id: String,
        accepted: usize,
        input_tokens: u64,
        output_tokens: u64,
        cost_usd: f64,
    },
    ChunkSettled {
        chunk: String,
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
    pub run_id: String,
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
    pub cost_usd: f64,
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

#[derive(Debug, Default)]
struct Totals {
    calls: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost: f64,
    store_errors: u64,
}

struct Ctx {
    job: Arc<ItemJob>,
    fleet: Fleet,
    store: Store,
    journal: Journal,
    ledger: Mutex<Ledger>,
    run_id: String,
    /// Attempts an agent id already has in the store (resume).
    attempts: Mutex<HashMap<String, u32>>,
    totals: Mutex<Totals>,
    events: EventSink,
    /// End rows being written in the background ([`write_ends`]).
    row_writes: Mutex<JoinSet<()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The job description written at the start, checked on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub workflow: PathBuf,
    pub name: String,
    pub items: usize,
    pub chunks: usize,
    pub execution: Execution,
    /// The run whose retryable failures this run sends again (`--retry-failed`); a resume
    /// rebuilds the same job from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<String>,
}

/// The run directory of `run_id` under `root`.
pub use crate::store::run_dir;

/// The job record of an item run, if `run_id` is one (for `fanout resume` to dispatch on).
pub fn item_run(root: &Path, run_id: &str) -> Option<JobRecord> {
    let text = std::fs::read(run_dir(root, run_id).join(JOB_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Continue the item run `run_id`: items its journal settled are kept, chunks with nothing
/// left are not sent again. (The `fanout resume` entry point for item runs.)
pub async fn resume(
    job: Arc<ItemJob>,
    fleet: Fleet,
    store: Store,
    run_id: String,
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
    let mut ledger = Ledger::new(&job.items, job.retry)?;
    let resuming = options.resume.is_some();
    let run_id = options
        .resume
        .clone()
        .or_else(|| options.run_id.clone())
        .unwrap_or_else(|| crate::plan::RunId::new(SystemTime::now()).0);
    let dir = run_dir(&options.root, &run_id);
    let record = JobRecord {
        // Absolute, so that `fanout resume` finds it from any directory.
        workflow: std::fs::canonicalize(&job.config_path)
            .unwrap_or_else(|_| job.config_path.clone()),
        name: job.name.clone(),
        items: job.items.len(),
        chunks: job.chunks.len(),
        execution: job.execution,
        retry_of: job.carried.as_ref().map(|carried| carried.from_run.clone()),
    };
    let mut attempts = HashMap::new();
    let mut items_already_settled = 0;
    let mut open_rows = Vec::new();
    let mut failures_by_chunk: HashMap<String, usize> = HashMap::new();
    if resuming {
        let resume_error = |message: String| ItemsError::Resume {
            run_id: run_id.clone(),
            message,
        };
        let Some(previous) = item_run(&options.root, &run_id) else {
            return Err(resume_error(format!(
                "{} has no {JOB_FILE}: not an item run of this repository",
                dir.display()
            )));
        };
        if (previous.items, previous.chunks) != (record.items, record.chunks) {
            return Err(resume_error(format!(
                "the input changed: the run had {} items in {} chunks, the input now gives {} in {}",
                previous.items, previous.chunks, record.items, record.chunks
            )));
        }
        for settlement in journal::read(&dir)? {
            *failures_by_chunk
                .entry(settlement.chunk.clone())
                .or_default() += settlement.failures.len();
            for (id, value) in settlement.results {
                ledger
                    .restore_result(&id, value)
                    .map_err(|error| resume_error(error.to_string()))?;
            }
            for failure in settlement.failures {
                ledger
                    .restore_failure(failure)
                    .map_err(|error| resume_error(error.to_string()))?;
            }
        }
        let (done, failed, _) = ledger.counts();
        items_already_settled = done + failed;
        if let Ok(reader) = StoreReader::open_in_repo(&options.root)
            && let Ok(rows) = reader.agent_runs(&run_id)
        {
            for row in rows {
                let entry = attempts.entry(row.agent_id.clone()).or_insert(0);
                *entry = (*entry).max(row.attempt);
                if row.status.is_none() {
                    open_rows.push((row.agent_id, row.attempt));
                }
            }
        }
        store
            .set_run_status(&run_id, RunStatus::Running, None, None)
            .await?;
    } else {
        std::fs::create_dir_all(&dir).map_err(|source| OutputError::Io {
            path: dir.clone(),
            source,
        })?;
        let bytes = serde_json::to_vec_pretty(&record).map_err(|error| OutputError::Encode {
            path: dir.join(JOB_FILE),
            message: error.to_string(),
        })?;
        write_atomic(&dir.join(JOB_FILE), &bytes)?;
        store
            .create_run(NewRun {
                run_id: run_id.clone(),
                workflow: job.name.clone(),
                config_path: Some(job.config_path.clone()),
                plan_hash: None,
                repo: Some(options.root.clone()),
                status: RunStatus::Running,
                started_at: SystemTime::now(),
                base_commit: None,
                agents_planned: u32::try_from(job.chunks.len()).unwrap_or(u32::MAX),
                simulated: false,
            })
            .await?;
    }
    let remaining = ledger.remaining(&job.chunks);
    if !open_rows.is_empty() {
        close_open_rows(
            &store,
            &run_id,
            &job,
            &remaining,
            &failures_by_chunk,
            open_rows,
        )
        .await;
    }
    let journal = Journal::open(&dir)?;
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
    let budget_exhausted = match job.execution {
        Execution::Online => {
            let report = run_online(&ctx, remaining, &cancel).await;
            report
                .not_run
                .iter()
                .any(|(_, why)| *why == crate::run::scheduler::NotRun::BudgetExhausted)
        }
        Execution::Batch => {
            let client = options.batch.as_ref().ok_or(ItemsError::NoBatchClient)?;
            let adoptable = if resuming {
                adoptable_batches(journal::read_batches(&dir)?, &remaining, &job.chunks)
            } else {
                Vec::new()
            };
            run_batches(&ctx, remaining, adoptable, client, &options.poll, &cancel).await
        }
    };
    let cancelled = cancel.is_cancelled();

    // Close the books: every input item once, in the results or the failures.
    let ledger = {
        let mut guard = lock(&ctx.ledger);
        std::mem::replace(&mut *guard, Ledger::new(&[], job.retry)?)
    };
    let mut accounting = ledger.finish();
    if let Some(carried) = &job.carried {
        for failure in &mut accounting.failures {
            failure.attempts += carried
                .prior_attempts
                .get(&failure.id)
                .copied()
                .unwrap_or(0);
        }
        let new = std::mem::take(&mut accounting.results);
        accounting.results = carried.results.clone();
        accounting.results.extend(new);
        accounting.failures.extend(carried.failures.iter().cloned());
    }
    accounting
        .failures
        .extend(job.problems.iter().map(problem_failure));
    let output_dir = job.output_dir.clone().unwrap_or_else(|| dir.clone());
    let (paths, summary) = write_outputs(&output_dir, &accounting, &job.output)?;
    let records: Vec<&Value> = accounting.results.iter().map(|(_, v)| v).collect();
    let mut extra_files = Vec::new();
    let mut write_json = |name: &str, value: &Value| -> Result<(), ItemsError> {
        let path = output_dir.join(name);
        let mut text =
            serde_json::to_string_pretty(value).map_err(|error| OutputError::Encode {
                path: path.clone(),
                message: error.to_string(),
            })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())?;
        extra_files.push(path);
        Ok(())
    };
    if let Some(field) = &job.aggregate.group_by {
        let groups = group_by(records.iter().copied(), field);
        write_json("groups.json", &json!(groups))?;
    }
    if let Some(field) = &job.aggregate.flatten {
        write_json(
            "flattened.json",
            &Value::Array(flatten(records.iter().copied(), field)),
        )?;
    }
    if let Some(field) = &job.aggregate.dedupe_by {
        let (kept, removed) = dedupe_by(records.iter().copied(), field);
        write_json(
            "deduped.json",
            &json!({"field": field, "removed": removed, "records": kept}),
        )?;
    }
    let synthesis = match &job.aggregate.synthesis {
        Some(synthesis) if !cancelled && !records.is_empty() => {
            Some(synthesize(&ctx, &records, synthesis, &output_dir, &cancel).await)
        }
        _ => None,
    };

    let row_writes = std::mem::take(&mut *lock(&ctx.row_writes));
    row_writes.join_all().await;
    let status = if cancelled {
        RunStatus::Cancelled
    } else {
        match summary.status {
            Completion::Complete => RunStatus::Completed,
            Completion::Partial => RunStatus::Partial,
            Completion::Failed => RunStatus::Failed,
        }
    };
    let error = match status {
        RunStatus::Cancelled => Some("cancelled; `fanout resume` continues it".to_owned()),
        RunStatus::Partial | RunStatus::Failed => Some(format!(
            "{} of {} items failed (see failed.jsonl)",
            summary.failed, summary.items
        )),
        _ => None,
    };
    // Durable once this returns, and with it everything queued before it (one writer, in
    // order; the durable commit syncs the earlier ones too): no separate flush is needed.
    ctx.store
        .set_run_status(&run_id, status, Some(SystemTime::now()), error)
        .await?;
    let mut totals = std::mem::take(&mut *lock(&ctx.totals));
    // Usage over every process of the run (a resumed run's report includes what the killed
    // one spent), from the store, as `fanout runs` and `fanout show` report it.
    if let Ok(Some(run)) = crate::store::StoreReader::open(ctx.store.path())
        .and_then(|reader| reader.run_summary(&run_id))
    {
        totals.input_tokens = run.agents.input_tokens;
        totals.output_tokens = run.agents.output_tokens;
        totals.cost = run.agents.dollars;
    }
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
        cost_usd: totals.cost,
        cancelled,
        budget_exhausted,
        synthesis,
        extra_files,
        store_errors: totals.store_errors,
    })
}

/// End the rows a killed attempt left open (calls in flight, or chunks whose settlement
/// reached the journal before their rows' ends reached the store). A row whose chunk is
/// settled takes the chunk's status; any other row was interrupted.
async fn close_open_rows(
    store: &Store,
    run_id: &str,
    job: &ItemJob,
    remaining: &[Chunk],
    failures_by_chunk: &HashMap<String, usize>,
    open_rows: Vec<(String, u32)>,
) {
    let unsettled: HashSet<&str> = remaining.iter().map(|chunk| chunk.id.as_str()).collect();
    let chunks: HashMap<&str, &Chunk> = job
        .chunks
        .iter()
        .map(|chunk| (chunk.id.as_str(), chunk))
        .collect();
    let ends = open_rows.into_iter().map(|(agent_id, attempt)| {
        let chunk = chunks.get(agent_id.as_str());
        let settled = chunk.is_some() && !unsettled.contains(agent_id.as_str());
        let files_accessed =
            chunk.map_or_else(Vec::new, |chunk| chunk.ids().map(str::to_owned).collect());
        let (status, error) = if !settled {
            (
                AgentStatus::Failure,
                "interrupted: the process stopped during this call".to_owned(),
            )
        } else if failures_by_chunk.get(&agent_id).copied().unwrap_or(0) == 0 {
            (
                AgentStatus::Success,
                "ended on resume: the chunk had settled (see the journal); tokens not recorded"
                    .to_owned(),
            )
        } else {
            (
                AgentStatus::Failure,
                "ended on resume: the chunk had settled with failures; tokens not recorded"
                    .to_owned(),
            )
        };
        store.finish_agent(AgentFinish {
            run_id: run_id.to_owned(),
            agent_id,
            attempt,
            status,
            files_accessed,
            tools_called: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: 0.0,
            error: Some(error),
            checkpoint: None,
            ended_at: SystemTime::now(),
        })
    });
    // Best effort: an open row left open misleads `fanout show`, it does not change the run.
    let _ = futures_util::future::join_all(ends).await;
}

async fn run_online(
    ctx: &Arc<Ctx>,
    chunks: Vec<Chunk>,
    cancel: &CancellationToken,
) -> SchedulerReport {
    let tasks: Vec<TaskSpec> = chunks
        .iter()
        .map(|chunk| TaskSpec {
            id: chunk.id.to_string(),
            depends_on: Vec::new(),
            estimated_cost: ctx.job.chunk_estimate(chunk),
        })
        .collect();
    // Each chunk is handed to its task once (taken, not cloned).
    let by_id: Arc<Mutex<HashMap<String, Chunk>>> = Arc::new(Mutex::new(
        chunks
            .into_iter()
            .map(|chunk| (chunk.id.to_string(), chunk))
            .collect(),
    ));
    let limits = SchedulerLimits {
        max_parallel: ctx.job.max_parallel,
        budget: ctx.job.budget,
    };
    run_graph(
        &tasks,
        &HashSet::new(),
        limits,
        cancel,
        |id, cancel| {
            let ctx = Arc::clone(ctx);
            let chunk = lock(&by_id).remove(&id);
            async move {
                match chunk {
                    Some(chunk) => run_chunk(ctx, chunk, cancel).await,
                    None => TaskOutcome {
                        succeeded: false,
                        cost: 0.0,
                        reason: format!("unknown chunk {id}"),
                    },
                }
            }
        },
        |_| {},
    )
    .await
}

/// One chunk, online: its first call and every retry it needs, then its journal line.
async fn run_chunk(ctx: Arc<Ctx>, chunk: Chunk, cancel: CancellationToken) -> TaskOutcome {
    let parent = chunk.id.clone();
    let mut settled = Settlement {
        chunk: parent.to_string(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    let mut cost = 0.0;
    let mut reason = String::new();
    let mut queue = VecDeque::new();
    if ctx.job.too_large(&chunk) {
        let message = format!(
            "the item alone is estimated at {} tokens, over the model's input limit of {}",
            chunk.estimated_tokens, ctx.job.max_input_tokens
        );
        settle_failed(&ctx, &chunk, FailureKind::Oversized, &message, &mut settled);
    } else {
        queue.push_back(RetryChunk {
            chunk,
            problems: Vec::new(),
        });
    }
    let mut round = 0;
    let mut ends = Vec::new();
    while let Some(next) = queue.pop_front() {
        if cancel.is_cancelled() {
            reason = "cancelled".into();
            break;
        }
        round += 1;
        let Some((outcome, call_cost)) = call_worker(&ctx, &next, &cancel, &mut ends).await else {
            reason = "cancelled".into();
            break;
        };
        cost += call_cost;
        match apply(&ctx, &parent, round, outcome, &mut settled) {
            Ok(retries) => queue.extend(retries),
            Err(error) => {
                reason = error.to_string();
                break;
            }
        }
    }
    let succeeded = settled.failures.is_empty() && reason.is_empty();
    if reason.is_empty() && !settled.failures.is_empty() {
        reason = format!("{} item(s) failed", settled.failures.len());
    }
    journal_settlement(&ctx, &settled).await;
    write_ends(&ctx, ends);
    TaskOutcome {
        succeeded,
        cost,
        reason,
    }
}

fn settle_failed(
    ctx: &Ctx,
    chunk: &Chunk,
    kind: FailureKind,
    message: &str,
    settled: &mut Settlement,
) {
    let ids: Vec<&str> = chunk.ids().collect();
    if lock(&ctx.ledger).fail(&ids, kind, message).is_ok() {
        settled
            .failures
            .extend(ids.iter().map(|id| super::worker::Failure {
                id: (*id).to_owned(),
                kind,
                reason: message.to_owned(),
                attempts: 0,
            }));
    }
}

/// Feed one outcome to the ledger; what it settled goes to `settled`, the retries it asks
/// for are returned.
fn apply(
    ctx: &Ctx,
    parent: &ChunkId,
    round: u32,
    outcome: ChunkOutcome,
    settled: &mut Settlement,
) -> Result<Vec<RetryChunk>, LedgerError> {
    let mut ledger = lock(&ctx.ledger);
    let mut plan = ledger.apply_owned(outcome)?;
    // `retry_chunks` reads only the resends and repairs: the settled records are moved.
    settled.results.append(&mut plan.accept);
    settled.failures.append(&mut plan.fail);
    ledger.retry_chunks(parent, round, &plan)
}

async fn journal_settlement(ctx: &Ctx, settled: &Settlement) {
    if settled.results.is_empty() && settled.failures.is_empty() {
        return;
    }
    // Failures carry how often their item was sent, so a resume writes them unchanged.
    let mut with_attempts;
    let settled = if settled.failures.iter().any(|f| f.attempts == 0) {
        with_attempts = settled.clone();
        let ledger = lock(&ctx.ledger);
        for failure in &mut with_attempts.failures {
            failure.attempts = failure.attempts.max(ledger.attempts(&failure.id).sent);
        }
        &with_attempts
    } else {
        settled
    };
    // The journal line is the chunk's settlement record (resume reads it); the store's
    // `agent_runs` rows describe the calls. No per-chunk store event repeats it.
    if ctx.journal.append(settled).await.is_err() {
        lock(&ctx.totals).store_errors += 1;
    }
    (ctx.events)(&ItemEvent::ChunkSettled {
        chunk: settled.chunk.clone(),
        succeeded: settled.results.len(),
        failed: settled.failures.len(),
    });
}

fn next_attempt(ctx: &Ctx, agent_id: &str) -> u32 {
    let mut attempts = lock(&ctx.attempts);
    let entry = attempts.entry(agent_id.to_owned()).or_insert(0);
    *entry += 1;
    *entry
}

fn worker_request(ctx: &Ctx, next: &RetryChunk) -> Result<crate::provider::Request, TemplateError> {
    if next.problems.is_empty() {
        build_request(&ctx.job.spec, &ctx.job.schema, &next.chunk)
    } else {
        build_repair_request(&ctx.job.spec, &ctx.job.schema, &next.chunk, &next.problems)
    }
}

/// The `agent_runs` row of a call about to be made (a new attempt of the chunk's agent id).
fn start_record(ctx: &Ctx, chunk: &Chunk) -> AgentStart {
    let agent_id = chunk.id.to_string();
    let attempt = next_attempt(ctx, &agent_id);
    let first = chunk.items.first().map_or("", |item| item.id.as_str());
    let last = chunk.items.last().map_or("", |item| item.id.as_str());
    (ctx.events)(&ItemEvent::CallStarted {
        agent_id: agent_id.clone(),
        items: chunk.items.len(),
    });
    AgentStart {
        run_id: ctx.run_id.clone(),
        agent_id,
        attempt,
        task_description: format!("{} item(s): {first} … {last}", chunk.items.len()),
        mode: ctx.job.worker_mode,
        model: Some(ctx.job.worker_model.model.clone()),
        escalated: false,
        started_at: SystemTime::now(),
    }
}

/// Write a call's start row (durable once this returns).
async fn write_start(ctx: &Ctx, start: AgentStart) {
    if ctx.store.start_agent(start).await.is_err() {
        lock(&ctx.totals).store_errors += 1;
    }
}

/// Write the end rows of a settled chunk's calls. Only called once the chunk's settlement is
/// in the journal (see the module docs); runs in the background so that the chunk's worker
/// slot is free as soon as the journal has it. [`run`] waits for these writes before it ends.
fn write_ends(ctx: &Arc<Ctx>, ends: Vec<AgentFinish>) {
    if ends.is_empty() {
        return;
    }
    let writer = Arc::clone(ctx);
    lock(&ctx.row_writes).spawn(async move {
        for end in ends {
            if writer.store.finish_agent(end).await.is_err() {
                lock(&writer.totals).store_errors += 1;
            }
        }
    });
}

/// Account a finished call (tokens, cost, the event) and return the end of its `agent_runs`
/// row, to be written once the chunk is settled ([`write_ends`]).
fn end_record(
    ctx: &Ctx,
    chunk: &Chunk,
    attempt: u32,
    response: Option<&Response>,
    outcome: &ChunkOutcome,
    error: Option<String>,
) -> (AgentFinish, f64) {
    let (input_tokens, output_tokens, cost, called) = match response {
        Some(response) => {
            let usage = &response.usage;
            let cost = ctx.job.worker_model.cost(
                usage.input_tokens + usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
                usage.output_tokens,
            ) * ctx.job.price_factor();
            let called = response.tool_uses().any(|(_, name, _)| name == SUBMIT_TOOL);
            (usage.total_input(), usage.output_tokens, cost, called)
        }
        None => (0, 0, 0.0, false),
    };
    {
        let mut totals = lock(&ctx.totals);
        totals.calls += 1;
        totals.input_tokens += input_tokens;
        totals.output_tokens += output_tokens;
        totals.cost += cost;
    }
    let complete = outcome.is_complete() && error.is_none();
    let error = error.or_else(|| (!complete).then(|| problem_summary(outcome)));
    let finish = AgentFinish {
        run_id: ctx.run_id.clone(),
        agent_id: chunk.id.to_string(),
        attempt,
        status: if complete {
            AgentStatus::Success
        } else {
            AgentStatus::Failure
        },
        files_accessed: chunk.ids().map(str::to_owned).collect(),
        tools_called: if called {
            vec![SUBMIT_TOOL.to_owned()]
        } else {
            Vec::new()
        },
        input_tokens,
        output_tokens,
        cost_usd: cost,
        error,
        checkpoint: None,
        ended_at: SystemTime::now(),
    };
    (ctx.events)(&ItemEvent::CallFinished {
        agent_id: chunk.id.to_string(),
        accepted: outcome.accepted.len(),
        input_tokens,
        output_tokens,
        cost_usd: cost,
    });
    (finish, cost)
}

fn problem_summary(outcome: &ChunkOutcome) -> String {
    let mut parts = Vec::new();
    if let Some(rejected) = outcome.errored.as_ref().or(outcome.malformed.as_ref()) {
        parts.push(rejected.reason.clone());
    }
    for (label, count) in [
        ("missing", outcome.missing.len()),
        ("invalid", outcome.invalid.len()),
        ("duplicated", outcome.duplicated.len()),
        ("unknown", outcome.unknown.len()),
    ] {
        if count > 0 {
            parts.push(format!("{count} {label}"));
        }
    }
    parts.join("; ")
}

/// One online worker call: its outcome, its cost and the end of its `agent_runs` row (written
/// by the caller once the chunk is settled). `None` when cancelled (the items stay pending);
/// the row's end is pushed to `ends` either way.
///
/// The start row is written while the request is in flight, not before it: the call does not
/// wait for a durable commit, and the row is durable before the answer is looked at, hence
/// before anything the call settles reaches the journal.
async fn call_worker(
    ctx: &Ctx,
    next: &RetryChunk,
    cancel: &CancellationToken,
    ends: &mut Vec<AgentFinish>,
) -> Option<(ChunkOutcome, f64)> {
    let chunk = &next.chunk;
    let start = start_record(ctx, chunk);
    let attempt = start.attempt;
    let request = match worker_request(ctx, next) {
        Ok(request) => request,
        Err(error) => {
            write_start(ctx, start).await;
            let outcome = ChunkOutcome::errored(chunk, error.to_string());
            let (end, cost) = end_record(ctx, chunk, attempt, None, &outcome, None);
            ends.push(end);
            return Some((outcome, cost));
        }
    };
    if lock(&ctx.ledger).sent(chunk).is_err() {
        lock(&ctx.totals).store_errors += 1;
    }
    let ((), result) = tokio::join!(write_start(ctx, start), ctx.fleet.call(&request, cancel));
    let (outcome, response, error) = match &result {
        Ok(call) => (
            check_answer(chunk, &call.response, &ctx.job.schema),
            Some(&call.response),
            None,
        ),
        Err(FleetError::Cancelled { .. }) => (
            ChunkOutcome::errored(chunk, "cancelled"),
            None,
            Some("cancelled".to_owned()),
        ),
        Err(error) => (ChunkOutcome::errored(chunk, error.to_string()), None, None),
    };
    let (end, cost) = end_record(ctx, chunk, attempt, response, &outcome, error);
    ends.push(end);
    if matches!(result, Err(FleetError::Cancelled { .. })) {
        return None;
    }
    Some((outcome, cost))
}

// ---------------------------------------------------------------------------------------------
// Batch execution

struct BatchState {
    parent: ChunkId,
    queue: Vec<RetryChunk>,
    settled: Settlement,
    round: u32,
    journaled: bool,
    /// Ends of the chunk's `agent_runs` rows, written once it is journaled.
    ends: Vec<AgentFinish>,
}

/// Rounds of Message Batches until nothing is left to send. Returns whether the budget
/// stopped it.
async fn run_batches(
    ctx: &Arc<Ctx>,
    chunks: Vec<Chunk>,
    mut adoptable: Vec<SubmittedBatch>,
    client: &BatchClient,
    poll: &PollPolicy,
    cancel: &CancellationToken,
) -> bool {
    let mut states: Vec<BatchState> = Vec::with_capacity(chunks.len());
    let mut budget_exhausted = false;
    let mut reserved = 0.0;
    for chunk in chunks {
        let mut state = BatchState {
            parent: chunk.id.clone(),
            queue: Vec::new(),
            settled: Settlement {
                chunk: chunk.id.to_string(),
                results: Vec::new(),
                failures: Vec::new(),
            },
            round: 0,
            journaled: false,
            ends: Vec::new(),
        };
        let estimate = ctx.job.chunk_estimate(&chunk);
        if ctx.job.too_large(&chunk) {
            let message = format!(
                "the item alone is estimated at {} tokens, over the model's input limit of {}",
                chunk.estimated_tokens, ctx.job.max_input_tokens
            );
            settle_failed(
                ctx,
                &chunk,
                FailureKind::Oversized,
                &message,
                &mut state.settled,
            );
        } else if ctx
            .job
            .budget
            .is_some_and(|budget| reserved + estimate > budget)
        {
            // Left pending: the ledger closes it as not run.
            budget_exhausted = true;
        } else {
            reserved += estimate;
            state.queue.push(RetryChunk {
                chunk,
                problems: Vec::new(),
            });
        }
        states.push(state);
    }
    loop {
        let mut round: Vec<(usize, RetryChunk)> = Vec::new();
        for (index, state) in states.iter_mut().enumerate() {
            round.extend(state.queue.drain(..).map(|next| (index, next)));
        }
        if round.is_empty() || cancel.is_cancelled() {
            break;
        }
        // A resumed run first collects the batches its earlier process left running.
        let mut adopted = Vec::new();
        for batch in std::mem::take(&mut adoptable) {
            let wanted: HashSet<&str> = batch.custom_ids.iter().map(String::as_str).collect();
            let (piece, rest): (Vec<_>, Vec<_>) = round.into_iter().partition(|(_, next)| {
                next.problems.is_empty() && wanted.contains(next.chunk.id.as_str())
            });
            round = rest;
            if piece.len() == wanted.len() {
                adopted.push((batch.id, piece));
            } else {
                round.extend(piece);
            }
        }
        let mut finished = true;
        for (batch_id, piece) in adopted {
            finished &= batch_round(
                ctx,
                &mut states,
                &piece,
                Some(batch_id),
                client,
                poll,
                cancel,
            )
            .await;
        }
        if finished {
            for piece in round.chunks(client.max_requests()) {
                if !batch_round(ctx, &mut states, piece, None, client, poll, cancel).await {
                    break;
                }
            }
        }
        for state in states
            .iter_mut()
            .filter(|s| s.queue.is_empty() && !s.journaled)
        {
            state.journaled = true;
            journal_settlement(ctx, &state.settled).await;
            write_ends(ctx, std::mem::take(&mut state.ends));
        }
    }
    // Whatever settled before a cancellation is kept.
    for state in states.iter_mut().filter(|s| !s.journaled) {
        journal_settlement(ctx, &state.settled).await;
        write_ends(ctx, std::mem::take(&mut state.ends));
    }
    budget_exhausted
}

/// The batches an earlier process of the run created whose chunks are all still to send,
/// untouched (no item of them settled, so the batch asked exactly what this run would): the
/// latest batch wins a chunk claimed twice.
fn adoptable_batches(
    batches: Vec<SubmittedBatch>,
    remaining: &[Chunk],
    chunks: &[Chunk],
) -> Vec<SubmittedBatch> {
    let whole: HashSet<&str> = remaining
        .iter()
        .filter(|r| {
            chunks
                .iter()
                .find(|c| c.id == r.id)
                .is_some_and(|c| c.ids().eq(r.ids()))
        })
        .map(|r| r.id.as_str())
        .collect();
    let mut claimed: HashSet<String> = HashSet::new();
    let mut adoptable = Vec::new();
    for batch in batches.into_iter().rev() {
        let usable = !batch.custom_ids.is_empty()
            && batch
                .custom_ids
                .iter()
                .all(|id| whole.contains(id.as_str()) && !claimed.contains(id));
        if usable {
            claimed.extend(batch.custom_ids.iter().cloned());
            adoptable.push(batch);
        }
    }
    adoptable.reverse();
    adoptable
}

/// One batch: submit, wait, collect, account. False when it could not finish (cancelled or
/// the batch failed), in which case its items stay pending.
async fn batch_round(
    ctx: &Arc<Ctx>,
    states: &mut [BatchState],
    piece: &[(usize, RetryChunk)],
    adopt: Option<String>,
    client: &BatchClient,
    poll: &PollPolicy,
    cancel: &CancellationToken,
) -> bool {
    let mut requests = Vec::with_capacity(piece.len());
    let mut attempts = Vec::with_capacity(piece.len());
    let mut sendable = Vec::with_capacity(piece.len());
    let mut starts = Vec::with_capacity(piece.len());
    for (index, next) in piece {
        let start = start_record(ctx, &next.chunk);
        let attempt = start.attempt;
        starts.push(start);
        match worker_request(ctx, next) {
            Ok(request) => {
                requests.push(BatchRequest {
                    custom_id: next.chunk.id.to_string(),
                    request,
                });
                attempts.push(attempt);
                sendable.push((*index, next));
                if lock(&ctx.ledger).sent(&next.chunk).is_err() {
                    lock(&ctx.totals).store_errors += 1;
                }
            }
            Err(error) => {
                let outcome = ChunkOutcome::errored(&next.chunk, error.to_string());
                let (end, _) = end_record(ctx, &next.chunk, attempt, None, &outcome, None);
                states[*index].ends.push(end);
                account(ctx, &mut states[*index], outcome);
            }
        }
    }
    // Every start row is durable before any answer of the batch is looked at.
    futures_util::future::join_all(starts.into_iter().map(|start| write_start(ctx, start))).await;
    if requests.is_empty() {
        return true;
    }
    let results = async {
        let batch_id = match adopt {
            Some(batch_id) => {
                (ctx.events)(&ItemEvent::BatchResumed {
                    batch_id: batch_id.clone(),
                    requests: requests.len(),
                });
                batch_id
            }
            None => {
                let created = client.create(&requests).await.map_err(BatchError::from)?;
                // On record before it is waited for: a resumed run collects it instead of
                // paying for it twice.
                let submitted = SubmittedBatch {
                    id: created.id.clone(),
                    custom_ids: requests.iter().map(|r| r.custom_id.clone()).collect(),
                };
                if ctx.journal.append_batch(&submitted).await.is_err() {
                    lock(&ctx.totals).store_errors += 1;
                }
                (ctx.events)(&ItemEvent::BatchSubmitted {
                    batch_id: created.id.clone(),
                    requests: requests.len(),
                });
                created.id
            }
        };
        let ended = match client.wait(&batch_id, poll, cancel).await {
            Ok(ended) => ended,
            Err(error) => {
                if matches!(error, BatchError::Cancelled { .. }) {
                    let _ = client.cancel(&batch_id).await;
                }
                return Err(error);
            }
        };
        (ctx.events)(&ItemEvent::BatchEnded {
            batch_id: batch_id.clone(),
        });
        client.results(&ended).await.map_err(BatchError::from)
    }
    .await;
    let mut results = match results {
        Ok(results) => results,
        Err(error) => {
            let cancelled = matches!(error, BatchError::Cancelled { .. });
            for ((index, next), attempt) in sendable.iter().zip(&attempts) {
                let outcome = ChunkOutcome::errored(&next.chunk, error.to_string());
                let (end, _) = end_record(
                    ctx,
                    &next.chunk,
                    *attempt,
                    None,
                    &outcome,
                    Some(error.to_string()),
                );
                states[*index].ends.push(end);
            }
            if !cancelled {
                // A batch that failed as a whole: its items get their repair attempt.
                for (index, next) in &sendable {
                    let outcome = ChunkOutcome::errored(&next.chunk, error.to_string());
                    account(ctx, &mut states[*index], outcome);
                }
            }
            return false;
        }
    };
    for ((index, next), attempt) in sendable.into_iter().zip(attempts) {
        let (outcome, response) = match results.remove(next.chunk.id.as_str()) {
            Some(BatchOutcome::Succeeded(response)) => (
                check_answer(&next.chunk, &response, &ctx.job.schema),
                Some(response),
            ),
            Some(BatchOutcome::Errored {
                error_type,
                message,
            }) => (
                ChunkOutcome::errored(&next.chunk, format!("{error_type}: {message}")),
                None,
            ),
            Some(BatchOutcome::Canceled) => (
                ChunkOutcome::errored(&next.chunk, "the batch request was canceled"),
                None,
            ),
            Some(BatchOutcome::Expired) => (
                ChunkOutcome::errored(&next.chunk, "the batch request expired"),
                None,
            ),
            None => (
                ChunkOutcome::errored(&next.chunk, "the batch has no result for this request"),
                None,
            ),
        };
        let (end, _) = end_record(
            ctx,
            &next.chunk,
            attempt,
            response.as_deref(),
            &outcome,
            None,
        );
        states[index].ends.push(end);
        account(ctx, &mut states[index], outcome);
    }
    true
}

fn account(ctx: &Ctx, state: &mut BatchState, outcome: ChunkOutcome) {
    state.round += 1;
    match apply(ctx, &state.parent, state.round, outcome, &mut state.settled) {
        Ok(retries) => state.queue.extend(retries),
        Err(_) => lock(&ctx.totals).store_errors += 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Synthesis

async fn synthesize(
    ctx: &Ctx,
    records: &[&Value],
    synthesis: &crate::config::items::SynthesisConfig,
    output_dir: &Path,
    cancel: &CancellationToken,
) -> Result<PathBuf, String> {
    let parts: Vec<String> = records.iter().map(|record| record.to_string()).collect();
    let model = ctx.job.synthesis_model.clone();
    let calls = Mutex::new(0u32);
    let text = tree_reduce(parts, SYNTHESIS_BUDGET_TOKENS, |step| {
        let request = synthesis_request(
            &model.model,
            synthesis.max_tokens,
            &synthesis.instructions,
            &step,
        );
        let n = {
            let mut calls = lock(&calls);
            *calls += 1;
            *calls
        };
        let agent_id = format!("synthesis-{n}");
        let level = step.level;
        let parts = step.parts.len();
        let model = model.clone();
        async move {
            (ctx.events)(&ItemEvent::Synthesis { level, parts });
            let attempt = next_attempt(ctx, &agent_id);
            let start = AgentStart {
                run_id: ctx.run_id.clone(),
                agent_id: agent_id.clone(),
                attempt,
                task_description: format!("synthesis, level {level}, {parts} part(s)"),
                mode: Mode::Default,
                model: Some(model.model.clone()),
                escalated: false,
                started_at: SystemTime::now(),
            };
            // A synthesis step is work the job adds as it goes: its first start counts it.
            let _ = if attempt == 1 {
                ctx.store.start_unplanned_agent(start).await
            } else {
                ctx.store.start_agent(start).await
            };
            let result = ctx.fleet.call(&request, cancel).await;
            let (status, usage, error) = match &result {
                Ok(call) => (AgentStatus::Success, Some(call.response.usage), None),
                Err(error) => (AgentStatus::Failure, None, Some(error.to_string())),
            };
            let usage = usage.unwrap_or_default();
            let cost = model.cost(
                usage.input_tokens + usage.cache_creation_input_tokens,
                usage.cache_read_input_tokens,
                usage.output_tokens,
            );
            {
                let mut totals = lock(&ctx.totals);
                totals.calls += 1;
                totals.input_tokens += usage.total_input();
                totals.output_tokens += usage.output_tokens;
                totals.cost += cost;
            }
            let _ = ctx
                .store
                .finish_agent(AgentFinish {
                    run_id: ctx.run_id.clone(),
                    agent_id,
                    attempt,
                    status,
                    files_accessed: Vec::new(),
                    tools_called: Vec::new(),
                    input_tokens: usage.total_input(),
                    output_tokens: usage.output_tokens,
                    cost_usd: cost,
                    error,
                    checkpoint: None,
                    ended_at: SystemTime::now(),
                })
                .await;
            result
                .map(|call| call.response.text())
                .map_err(|error| error.to_string())
        }
    })
    .await
    .map_err(|error| error.to_string())?;
    let path = output_dir.join("synthesis.md");
    let mut text = text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes()).map_err(|error| error.to_string())?;
    Ok(path)
}
