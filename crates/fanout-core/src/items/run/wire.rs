//! What a shared item run puts in the store for its workers and what they commit back.
//!
//! - [`PublishedJob`]: the run's record (`run_plans.plan`, hashed like a plan): everything a
//!   worker needs to build, send and check a chunk's calls — the worker spec (instructions,
//!   template text, output route), the record schema, the retry policy, the worker model with
//!   its prices and mode, and the workflow's rate limits. The workflow file itself cannot
//!   serve: it names files (the schema, the template) the worker's machine does not have.
//! - each unit's input is its [`Chunk`] (id and items) as JSON;
//! - [`ChunkCommit`]: a unit's outcome, every call of the chunk in the order it was made (its
//!   chunk, the items it carried, the checked answer and its usage), which the coordinator
//!   feeds to its ledger as if its own task had made them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ItemJob;
use crate::config::{Mode, ModelSpec, RateLimits};
use crate::ids::ChunkId;
use crate::items::worker::{ChunkOutcome, ItemRetries, WorkerSpec};

/// The job as the coordinator publishes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PublishedJob {
    pub(crate) spec: WorkerSpec,
    /// The record schema as the job compiled it (`id` added and required).
    pub(crate) record_schema: Value,
    pub(crate) retry: ItemRetries,
    pub(crate) worker_model: ModelSpec,
    pub(crate) worker_mode: Mode,
    pub(crate) rate_limits: RateLimits,
}

impl PublishedJob {
    pub(crate) fn of(job: &ItemJob) -> PublishedJob {
        PublishedJob {
            spec: job.spec.clone(),
            record_schema: job.schema.record_schema().clone(),
            retry: job.retry,
            worker_model: job.worker_model.clone(),
            worker_mode: job.worker_mode,
            rate_limits: job.rate_limits,
        }
    }

    /// The text published and its `sha256:` hash.
    pub(crate) fn text_and_hash(&self) -> Result<(String, String), serde_json::Error> {
        let text = serde_json::to_string_pretty(self)?;
        let hash = crate::plan::hash_bytes(text.as_bytes());
        Ok((text, hash))
    }
}

/// One call of a chunk as its worker made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallRecord {
    /// The call's own chunk: the unit's, or a retry's (`chunk-0007-r1-1`).
    pub(crate) chunk: ChunkId,
    pub(crate) ids: Vec<String>,
    pub(crate) outcome: ChunkOutcome,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) cache_read_tokens: u64,
    pub(crate) cache_write_tokens: u64,
    pub(crate) cost_usd: f64,
    pub(crate) cache_saved_usd: f64,
}

/// A chunk unit's committed outcome (`units.outcome`). A unit its worker could not run has
/// no calls and says why in `error` (the worker's failure commit has the same fields).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ChunkCommit {
    #[serde(default)]
    pub(crate) worker: String,
    #[serde(default)]
    pub(crate) calls: Vec<CallRecord>,
    #[serde(default)]
    pub(crate) error: Option<String>,
}
