//! A chunk's settlement, shared by online and batch execution: each outcome fed to the
//! [`Ledger`](crate::items::worker::Ledger) (what it settles kept, the retries it asks for
//! returned), chunks failed without a call, and the journal line that makes the chunk done.

use super::{Ctx, ItemEvent, lock};
use crate::items::chunk::{Chunk, ChunkId};
use crate::items::journal::Settlement;
use crate::items::worker::{ChunkOutcome, FailureKind, LedgerError, RetryChunk};

/// Fail a chunk too large for the model's input without calling the model.
pub(super) fn settle_oversized(ctx: &Ctx, chunk: &Chunk, settled: &mut Settlement) {
    let message = format!(
        "the item alone is estimated at {} tokens, over the model's input limit of {}",
        chunk.estimated_tokens, ctx.job.max_input_tokens
    );
    settle_failed(ctx, chunk, FailureKind::Oversized, &message, settled);
}

/// Fail every item of `chunk` still pending, without a call (an oversized chunk, or a shared
/// run's chunk its worker could not run).
pub(super) fn settle_failed(
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
            .extend(ids.iter().map(|id| crate::items::worker::Failure {
                id: (*id).to_owned(),
                kind,
                reason: message.to_owned(),
                attempts: 0,
            }));
    }
}

/// Feed one outcome to the ledger; what it settled goes to `settled`, the retries it asks
/// for are returned.
pub(super) fn apply(
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

pub(super) async fn journal_settlement(ctx: &Ctx, settled: &Settlement) {
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
