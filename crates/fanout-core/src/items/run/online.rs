//! Online execution: one scheduler task per chunk through [`run_graph`] (`max_parallel`,
//! dollar budget). A task calls the shared fleet (governor, retries), checks the answer,
//! feeds the ledger, works through the retries the ledger asks for (missing items alone, one
//! repair chunk), then journals what the chunk settled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::calls::{end_record, start_record, worker_request, write_ends, write_start};
use super::settle::{apply, journal_settlement, settle_oversized};
use super::{Ctx, lock};
use crate::fleet::FleetError;
use crate::items::chunk::Chunk;
use crate::items::journal::Settlement;
use crate::items::worker::{ChunkOutcome, RetryChunk, check_answer};
use crate::run::scheduler::{SchedulerLimits, SchedulerReport, TaskOutcome, TaskSpec, run_graph};
use crate::store::AgentFinish;

/// Run every chunk of `chunks` online.
pub(super) async fn run_online(
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
        chunk: parent.clone(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    let mut cost = 0.0;
    let mut reason = String::new();
    let mut queue = VecDeque::new();
    if ctx.job.too_large(&chunk) {
        settle_oversized(&ctx, &chunk, &mut settled);
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
            let (end, cost) = end_record(ctx, chunk, attempt, None, None, &outcome, None);
            ends.push(end);
            return Some((outcome, cost));
        }
    };
    if lock(&ctx.ledger).sent(chunk).is_err() {
        lock(&ctx.totals).store_errors += 1;
    }
    let ((), result) = tokio::join!(write_start(ctx, start), ctx.fleet.call(&request, cancel));
    let (outcome, call, error) = match &result {
        Ok(call) => (
            check_answer(chunk, &call.response, &ctx.job.schema),
            Some(call),
            None,
        ),
        Err(FleetError::Cancelled { .. }) => (
            ChunkOutcome::errored(chunk, "cancelled"),
            None,
            Some("cancelled".to_owned()),
        ),
        Err(error) => (ChunkOutcome::errored(chunk, error.to_string()), None, None),
    };
    let exchange = call.map(|call| (Some(&request), &call.response));
    let (end, cost) = end_record(ctx, chunk, attempt, exchange, call, &outcome, error);
    ends.push(end);
    if matches!(result, Err(FleetError::Cancelled { .. })) {
        return None;
    }
    Some((outcome, cost))
}
