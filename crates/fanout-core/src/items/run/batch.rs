//! Batch execution: every pending request of a round goes into one batch of the worker's
//! provider (Anthropic Message Batches or the OpenAI Batch API, half price), the batch is
//! polled, answers are collected by `custom_id`, and the next round carries the retries.
//!
//! Each batch is in the journal as soon as it is created; a resumed run adopts a batch its
//! earlier process left running ([`adoptable_batches`]) instead of submitting it again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::calls::{end_record, start_record, worker_request, write_ends, write_start};
use super::settle::{apply, journal_settlement, settle_oversized};
use super::{Ctx, ItemEvent, lock};
use crate::items::chunk::{Chunk, ChunkId};
use crate::items::journal::{Settlement, SubmittedBatch};
use crate::items::worker::{ChunkOutcome, RetryChunk, check_answer};
use crate::provider::batch::{BatchClient, BatchError, BatchOutcome, BatchRequest, PollPolicy};
use crate::store::AgentFinish;

struct BatchState {
    parent: ChunkId,
    queue: Vec<RetryChunk>,
    settled: Settlement,
    round: u32,
    journaled: bool,
    /// Ends of the chunk's `agent_runs` rows, written once it is journaled.
    ends: Vec<AgentFinish>,
}

/// A request of a round: the index of its chunk's [`BatchState`] and the request's chunk.
type Pending = (usize, RetryChunk);

/// Rounds of Message Batches until nothing is left to send. Returns whether the budget
/// stopped it.
pub(super) async fn run_batches(
    ctx: &Arc<Ctx>,
    chunks: Vec<Chunk>,
    mut adoptable: Vec<SubmittedBatch>,
    client: &BatchClient,
    poll: &PollPolicy,
    cancel: &CancellationToken,
) -> bool {
    let (mut states, budget_exhausted) = batch_states(ctx, chunks);
    loop {
        let mut round: Vec<Pending> = Vec::new();
        for (index, state) in states.iter_mut().enumerate() {
            round.extend(state.queue.drain(..).map(|next| (index, next)));
        }
        if round.is_empty() || cancel.is_cancelled() {
            break;
        }
        // A resumed run first collects the batches its earlier process left running.
        let adopted = claim_adopted(&mut adoptable, &mut round);
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
            journal_chunk(ctx, state).await;
        }
    }
    // Whatever settled before a cancellation is kept.
    for state in states.iter_mut().filter(|s| !s.journaled) {
        journal_chunk(ctx, state).await;
    }
    budget_exhausted
}

/// One state per chunk, its first request queued unless the chunk is too large (failed now)
/// or the budget cannot cover it (left pending: the ledger closes it as not run). Returns
/// whether the budget left any chunk out.
fn batch_states(ctx: &Ctx, chunks: Vec<Chunk>) -> (Vec<BatchState>, bool) {
    let mut states: Vec<BatchState> = Vec::with_capacity(chunks.len());
    let mut budget_exhausted = false;
    let mut reserved = 0.0;
    for chunk in chunks {
        let mut state = BatchState {
            parent: chunk.id.clone(),
            queue: Vec::new(),
            settled: Settlement {
                chunk: chunk.id.clone(),
                results: Vec::new(),
                failures: Vec::new(),
            },
            round: 0,
            journaled: false,
            ends: Vec::new(),
        };
        let estimate = ctx.job.chunk_estimate(&chunk);
        if ctx.job.too_large(&chunk) {
            settle_oversized(ctx, &chunk, &mut state.settled);
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
    (states, budget_exhausted)
}

/// The chunk's settlement to the journal, then its rows' ends to the store.
async fn journal_chunk(ctx: &Arc<Ctx>, state: &mut BatchState) {
    journal_settlement(ctx, &state.settled).await;
    write_ends(ctx, std::mem::take(&mut state.ends));
}

/// Take out of `round` the requests of every adoptable batch whose chunks are all in it (as
/// first requests): those batches are collected, not sent again. The batches are used up.
fn claim_adopted(
    adoptable: &mut Vec<SubmittedBatch>,
    round: &mut Vec<Pending>,
) -> Vec<(String, Vec<Pending>)> {
    let mut adopted = Vec::new();
    for batch in std::mem::take(adoptable) {
        let wanted: HashSet<&str> = batch.custom_ids.iter().map(String::as_str).collect();
        let (piece, rest): (Vec<_>, Vec<_>) =
            std::mem::take(round).into_iter().partition(|(_, next)| {
                next.problems.is_empty() && wanted.contains(next.chunk.id.as_str())
            });
        *round = rest;
        if piece.len() == wanted.len() {
            adopted.push((batch.id, piece));
        } else {
            round.extend(piece);
        }
    }
    adopted
}

/// The batches an earlier process of the run created whose chunks are all still to send,
/// untouched (no item of them settled, so the batch asked exactly what this run would): the
/// latest batch wins a chunk claimed twice.
pub(super) fn adoptable_batches(
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

/// A request of a round that went into the batch, with its attempt number.
struct Sent<'a> {
    index: usize,
    next: &'a RetryChunk,
    attempt: u32,
}

/// One batch: submit, wait, collect, account. False when it could not finish (cancelled or
/// the batch failed), in which case its items stay pending.
async fn batch_round(
    ctx: &Arc<Ctx>,
    states: &mut [BatchState],
    piece: &[Pending],
    adopt: Option<String>,
    client: &BatchClient,
    poll: &PollPolicy,
    cancel: &CancellationToken,
) -> bool {
    let (requests, sent) = prepare_round(ctx, states, piece).await;
    if requests.is_empty() {
        return true;
    }
    match submit_and_collect(ctx, &requests, adopt, client, poll, cancel).await {
        Ok(results) => {
            settle_round(ctx, states, sent, results);
            true
        }
        Err(error) => {
            fail_round(ctx, states, &sent, &error);
            false
        }
    }
}

/// The round's requests, each with its start row; a request that cannot be built is
/// accounted as an errored call at once. Every start row is durable when this returns.
async fn prepare_round<'a>(
    ctx: &Ctx,
    states: &mut [BatchState],
    piece: &'a [Pending],
) -> (Vec<BatchRequest>, Vec<Sent<'a>>) {
    let mut requests = Vec::with_capacity(piece.len());
    let mut sent = Vec::with_capacity(piece.len());
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
                sent.push(Sent {
                    index: *index,
                    next,
                    attempt,
                });
                if lock(&ctx.ledger).sent(&next.chunk).is_err() {
                    lock(&ctx.totals).store_errors += 1;
                }
            }
            Err(error) => {
                let outcome = ChunkOutcome::errored(&next.chunk, error.to_string());
                let (end, _) = end_record(ctx, &next.chunk, attempt, None, None, &outcome, None);
                states[*index].ends.push(end);
                account(ctx, &mut states[*index], outcome);
            }
        }
    }
    // Every start row is durable before any answer of the batch is looked at.
    futures_util::future::join_all(starts.into_iter().map(|start| write_start(ctx, start))).await;
    (requests, sent)
}

/// Submit `requests` as a new batch (on record in the journal before it is waited for), or
/// adopt the running batch `adopt`; wait for it to end and read its results.
async fn submit_and_collect(
    ctx: &Ctx,
    requests: &[BatchRequest],
    adopt: Option<String>,
    client: &BatchClient,
    poll: &PollPolicy,
    cancel: &CancellationToken,
) -> Result<HashMap<String, BatchOutcome>, BatchError> {
    let batch_id = match adopt {
        Some(batch_id) => {
            (ctx.events)(&ItemEvent::BatchResumed {
                batch_id: batch_id.clone(),
                requests: requests.len(),
            });
            batch_id
        }
        None => {
            let created = client.create(requests).await.map_err(BatchError::from)?;
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

/// A batch that could not finish: every call of it ends with the error; unless it was
/// cancelled (its items stay pending), its items get their repair attempt.
fn fail_round(ctx: &Ctx, states: &mut [BatchState], sent: &[Sent<'_>], error: &BatchError) {
    let cancelled = matches!(error, BatchError::Cancelled { .. });
    for call in sent {
        let outcome = ChunkOutcome::errored(&call.next.chunk, error.to_string());
        let (end, _) = end_record(
            ctx,
            &call.next.chunk,
            call.attempt,
            None,
            None,
            &outcome,
            Some(error.to_string()),
        );
        states[call.index].ends.push(end);
    }
    if !cancelled {
        // A batch that failed as a whole: its items get their repair attempt.
        for call in sent {
            let outcome = ChunkOutcome::errored(&call.next.chunk, error.to_string());
            account(ctx, &mut states[call.index], outcome);
        }
    }
}

/// Each call's answer from the batch's results, checked and accounted.
fn settle_round(
    ctx: &Ctx,
    states: &mut [BatchState],
    sent: Vec<Sent<'_>>,
    mut results: HashMap<String, BatchOutcome>,
) {
    for Sent {
        index,
        next,
        attempt,
    } in sent
    {
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
        // The request went out in the batch; rebuilt (the same bytes) only to keep its content.
        let request = crate::env::capture_message_content()
            .then(|| worker_request(ctx, next).ok())
            .flatten();
        let exchange = response
            .as_deref()
            .map(|response| (request.as_ref(), response));
        let (end, _) = end_record(ctx, &next.chunk, attempt, exchange, None, &outcome, None);
        states[index].ends.push(end);
        account(ctx, &mut states[index], outcome);
    }
}

fn account(ctx: &Ctx, state: &mut BatchState, outcome: ChunkOutcome) {
    state.round += 1;
    match apply(ctx, &state.parent, state.round, outcome, &mut state.settled) {
        Ok(retries) => state.queue.extend(retries),
        Err(_) => lock(&ctx.totals).store_errors += 1,
    }
}
