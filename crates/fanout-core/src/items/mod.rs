//! Item work: map a model over many records ("analyze these 300 support tickets") with exact
//! accounting.
//!
//! The pieces, in the order a run uses them:
//! - [`input`]: read items from JSONL, CSV or a directory/glob of text files, each with an id.
//! - [`chunk`]: split items into chunks (one per item, fixed size, or sized to a token budget
//!   estimated before anything is sent), with deterministic chunk ids.
//! - [`worker`]: the worker request (a prompt listing the chunk's items, a forced
//!   `submit_results` tool), checking an answer against the output schema and against the
//!   chunk's input ([`worker::ChunkOutcome`]), the pure retry decision
//!   ([`worker::plan_retry`]) and the [`worker::Ledger`] that guarantees every input item ends
//!   exactly once in the results or in the failures.
//! - [`aggregate`]: built-in reductions (flatten, dedupe, count, group) and tree-shaped
//!   synthesis when the results are too large for one call.
//! - [`propose`]: `chunking.strategy: llm`, the orchestrator's proposal of chunking,
//!   instructions and record fields from a sample, checked, saved and reviewed.
//! - [`output`]: `results.jsonl` (or CSV), `failed.jsonl` and the summary, written atomically.
//! - [`journal`]: the fsync'd settlement journal resume reads.
//! - [`run`]: the item runner that drives all of the above through the scheduler, the fleet
//!   (governor, retries), the run store and, for `execution: batch`, the Message Batches API.
//!
//! Apart from [`run`] and [`journal`], nothing here schedules workers or talks to the rate
//! governor or the run store: those pieces are pure or touch only the files they are given.
//! Batch execution (the Message Batches API) is in
//! [`crate::provider::batch`].

pub mod aggregate;
pub mod chunk;
pub mod input;
pub mod journal;
pub mod output;
pub mod propose;
pub mod run;
pub mod worker;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One input record: its id (unique within the input) and its content.
///
/// The content is shared, not copied: the job's item list, its chunks, the ledger and the
/// chunks still to send all hold the same record, so 10,000 items cost their size once and a
/// clone is a reference count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub value: Arc<Value>,
}

impl Item {
    pub fn new(id: impl Into<String>, value: Value) -> Self {
        Item {
            id: id.into(),
            value: Arc::new(value),
        }
    }
}
