//! The job: a `workflow.items:` section made into the items, chunks, worker spec and limits a
//! run works from, and the dry run's arithmetic ([`ItemJob::estimate`]).
//!
//! Chunking is deterministic, so a resumed run (or `--retry-failed`, [`ItemJob::retry_of`])
//! gets the same chunks from the same input.

use crate::config::price::TokenUse;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::{ItemsError, WORKER_ROLE, run_dir};
use crate::config::items::{
    ChunkingConfig, Execution, InputFormat, ItemAggregateConfig, ItemIdConfig, ItemsConfig,
    OnInvalid,
};
use crate::config::{Config, Mode, ModelSpec};
use crate::ids::RunId;
use crate::items::Item;
use crate::items::chunk::{
    Chunk, ChunkId, Decomposition, TokenBudget, decompose_within, estimate_tokens,
};
use crate::items::input::{IdSource, InputProblem, InputSource, Loaded, load};
use crate::items::journal;
use crate::items::output::OutputOptions;
use crate::items::worker::{FailedItem, ItemRetries, OutputSchema, WorkerSpec, build_request};
use crate::provider::batch::BATCH_PRICE_FACTOR;

/// Estimated output tokens per item, before any answer is seen (budget reservations).
const OUTPUT_TOKENS_PER_ITEM: u64 = 80;
/// The synthesis report's length, in tokens.
const SYNTHESIS_OUTPUT_TOKENS: u64 = 500;
/// Bytes per token of what is sent and answered, as the providers count English-like text
/// and JSON (the expected value; [`estimate_tokens`] pads for reservations).
const EXPECTED_BYTES_PER_TOKEN: f64 = 4.0;

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
    pub retry: ItemRetries,
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
    /// The workflow's rate limits (published for workers when the run is shared).
    pub rate_limits: crate::config::RateLimits,
}

/// The part of an earlier item run a `--retry-failed` run keeps: its results, its failures
/// that sending again cannot fix, and how often each retried item was sent already.
#[derive(Debug, Clone)]
pub struct Carried {
    pub from_run: RunId,
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
        from_run: &RunId,
        loaded: Loaded,
    ) -> Result<ItemJob, ItemsError> {
        let dir = run_dir(root, from_run);
        let mut results: HashMap<String, Value> = HashMap::new();
        let mut failures: HashMap<String, crate::items::worker::Failure> = HashMap::new();
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
            results: Vec::new(),
            failures: Vec::new(),
            prior_attempts: HashMap::new(),
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
    /// Input tokens of the workers' first attempts (cached included).
    pub input_tokens: u64,
    /// Of `input_tokens`, those expected to be read from the prompt cache (the prompt the
    /// workers share, once it reaches the model's minimum cacheable length).
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    /// The workers' dollars at the online price (retries not included).
    pub online_dollars: f64,
    /// The workers' dollars through the batch API.
    pub batch_dollars: f64,
    /// The synthesis call (always sent online).
    pub synthesis_dollars: f64,
    /// What the run is expected to cost: the workers at the job's execution's price and the
    /// synthesis.
    pub dollars: f64,
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
        proposal: &crate::items::propose::ItemProposal,
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
            prompt_caching: config.prompt_caching,
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
            retry: ItemRetries {
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
            rate_limits: config.rate_limits,
        })
    }

    /// What the job will send, and what it costs online and through batches.
    /// `sha256:<hex>` of what this job would do: its workflow file, its chunks (ids, items and
    /// their records), the record schema, the worker's model and the execution. A front end
    /// that reviews a job before running it (`fanout mcp`) compares this hash at the start:
    /// an edited workflow or input makes another job.
    pub fn review_hash(&self) -> Result<String, ItemsError> {
        let mut bytes = std::fs::read(&self.config_path).map_err(|source| {
            ItemsError::Input(crate::items::input::InputError::Io {
                path: self.config_path.clone(),
                source,
            })
        })?;
        let job = serde_json::json!({
            "chunks": self.chunks,
            "schema": self.schema.record_schema(),
            "model": self.worker_model.model,
            "execution": self.execution,
        });
        bytes.push(b'\n');
        bytes.extend_from_slice(job.to_string().as_bytes());
        Ok(crate::plan::store::hash_bytes(&bytes))
    }

    /// What the job is expected to cost: one request per chunk (its items and the prompt the
    /// workers share, at [`EXPECTED_BYTES_PER_TOKEN`]), an answer per item the size of a
    /// record the schema describes, the shared prompt written to the prompt cache once and
    /// read by the other chunks when it is long enough, and the synthesis call over the
    /// records (when the workflow asks for one).
    pub fn estimate(&self) -> ItemEstimate {
        let estimate = crate::items::chunk::estimate(
            &self.chunks,
            self.overhead_tokens,
            OUTPUT_TOKENS_PER_ITEM,
        );
        // The chunk figures are padded reservations; undo the padding for an expectation.
        let expected = |tokens: u64| {
            (tokens as f64 * crate::items::chunk::BYTES_PER_TOKEN
                / crate::items::chunk::ESTIMATE_MARGIN
                / EXPECTED_BYTES_PER_TOKEN)
                .round() as u64
        };
        let shared = expected(self.overhead_tokens);
        let input_tokens = expected(estimate.input_tokens);
        let record_tokens = (record_bytes(self.schema.record_schema()) as f64
            / EXPECTED_BYTES_PER_TOKEN)
            .ceil() as u64;
        let output_tokens = record_tokens * estimate.items;
        let minimum = match self.worker_model.provider {
            crate::config::Provider::Anthropic => {
                crate::provider::cache::minimum_cacheable(&self.worker_model.model)
            }
            crate::config::Provider::OpenAi => 1024,
        };
        let (cache_write, cache_read) =
            if self.spec.prompt_caching && shared >= minimum && estimate.requests > 0 {
                (shared, shared * (estimate.requests - 1))
            } else {
                (0, 0)
            };
        let workers = self.worker_model.cost(TokenUse {
            input: input_tokens.saturating_sub(cache_write + cache_read),
            cache_write,
            cache_read,
            output: output_tokens,
        });
        let synthesis_dollars = match &self.aggregate.synthesis {
            Some(synthesis) if estimate.items > 0 => {
                let instructions =
                    (synthesis.instructions.len() as f64 / EXPECTED_BYTES_PER_TOKEN).ceil() as u64;
                self.synthesis_model.cost(TokenUse::uncached(
                    output_tokens + instructions,
                    SYNTHESIS_OUTPUT_TOKENS,
                ))
            }
            _ => 0.0,
        };
        ItemEstimate {
            items: estimate.items,
            chunks: estimate.requests,
            oversized_chunks: estimate.oversized_chunks,
            input_tokens,
            cached_input_tokens: cache_read,
            output_tokens,
            online_dollars: workers,
            batch_dollars: workers * BATCH_PRICE_FACTOR,
            synthesis_dollars,
            dollars: workers * self.price_factor() + synthesis_dollars,
        }
    }

    pub(super) fn price_factor(&self) -> f64 {
        match self.execution {
            Execution::Online => 1.0,
            Execution::Batch => BATCH_PRICE_FACTOR,
        }
    }

    /// The worker model, mode and price factor its calls are recorded with.
    pub(super) fn pricing(&self) -> super::calls::Pricing<'_> {
        super::calls::Pricing {
            model: &self.worker_model,
            mode: self.worker_mode,
            factor: self.price_factor(),
        }
    }

    pub(super) fn chunk_estimate(&self, chunk: &Chunk) -> f64 {
        self.worker_model.cost(TokenUse::uncached(
            self.overhead_tokens + chunk.estimated_tokens,
            OUTPUT_TOKENS_PER_ITEM * chunk.items.len() as u64,
        )) * self.price_factor()
    }

    pub(super) fn too_large(&self, chunk: &Chunk) -> bool {
        chunk.oversized && self.overhead_tokens + chunk.estimated_tokens > self.max_input_tokens
    }
}

/// Bytes of one record as a model writes it from `schema`: every property's key and a typical
/// value (a string's mean enum value or half its `maxLength`, else a few words).
fn record_bytes(schema: &Value) -> u64 {
    fn value_bytes(property: &Value) -> u64 {
        if let Some(values) = property.get("enum").and_then(Value::as_array) {
            let total: u64 = values.iter().map(|v| v.to_string().len() as u64).sum();
            return total / values.len().max(1) as u64;
        }
        let kinds: Vec<&str> = match property.get("type") {
            Some(Value::String(kind)) => vec![kind.as_str()],
            Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if kinds.contains(&"string") {
            let max = property.get("maxLength").and_then(Value::as_u64);
            max.map_or(20, |max| max / 2) + 2
        } else if kinds.contains(&"array") {
            60
        } else if kinds.contains(&"object") {
            property
                .get("properties")
                .map_or(60, |_| record_bytes(property))
        } else {
            6
        }
    }
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return 200;
    };
    2 + properties
        .iter()
        .map(|(key, property)| key.len() as u64 + 4 + value_bytes(property))
        .sum::<u64>()
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

fn request_tokens(request: &crate::provider::Request) -> u64 {
    let mut bytes = request.system.as_ref().map_or(0, String::len)
        + request.system_agent.as_ref().map_or(0, String::len);
    for message in &request.messages {
        bytes += serde_json::to_string(message).map_or(0, |text| text.len());
    }
    for tool in &request.tools {
        bytes += tool.input_schema.to_string().len() + tool.description.len();
    }
    estimate_tokens(bytes)
}
