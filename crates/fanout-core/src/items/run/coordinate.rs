//! A shared item run's execution phase (`fanout run ITEMS --store URL --local-slots N`): in
//! place of the online phase's scheduler tasks, the chunks become units in the run store that
//! `fanout worker` processes lease and run ([`super::chunk_unit`]), and this process settles
//! what they commit. Everything around it — the run's directory, its journal and ledger, the
//! outputs, aggregations, synthesis, status and totals — is the local run's own.
//!
//! 1. Chunks too large for the model are failed here, without a unit (no call is made for
//!    them locally either).
//! 2. The run is published: the job ([`PublishedJob`], hashed like a plan; a resumed run's
//!    job must hash the same) and one unit per chunk still to send, its items as the unit's
//!    input. Publishing again is a no-op for what is there, so a resumed coordinator
//!    enqueues only what is missing.
//! 3. With `local_slots > 0`, a worker of this process runs units too (the same code as
//!    `fanout worker`, restricted to this run).
//! 4. Committed units are taken in commit order: each call a worker made is fed to the
//!    ledger as the local task feeds its own ([`super::settle::apply`]: what it settles kept,
//!    the retries it asks for already made by the worker), then the chunk's journal line is
//!    written — only then is the chunk settled — and the unit is marked applied (a resumed
//!    coordinator marks the units whose chunks the journal already has). A unit its worker
//!    could not run fails its items (`errored`) with the worker's reason.
//!
//! Durability: a worker's unit commit holds the chunk's calls, their `agent_runs` rows and
//! the answers in one transaction; the journal holds what this process settled from them. A
//! coordinator killed between the two finds the unit committed and its chunk not in the
//! journal when resumed, and settles it then; a chunk in the journal is never settled again
//! (its items are no longer pending). So the model calls are made at least once (a worker
//! killed mid-chunk leaves them to the next lease), the settlement exactly once. Unlike a
//! local run, a row may end with success before its chunk is in the journal: its unit's
//! commit is what makes it durable, and a resume settles it from there.
//!
//! The dollar budget is checked against what has been settled: once it is spent, the units
//! no worker has taken are skipped (a shared budget that stops workers mid-chunk is not
//! built). Cancelling stops the settling; workers go on with the units, and a resume settles
//! what they committed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::settle::{apply, journal_settlement, settle_failed, settle_oversized};
use super::wire::{ChunkCommit, PublishedJob};
use super::{Ctx, ItemEvent, ItemsError, lock};
use crate::backend::Backend;
use crate::distributed::{UnitHandler, UnitHandlers, WorkerOptions};
use crate::ids::AgentId;
use crate::items::chunk::Chunk;
use crate::items::journal::Settlement;
use crate::items::worker::FailureKind;
use crate::store::{
    RunPlanRecord, StoreError, StoreReader, UnitKind, UnitRow, UnitSpec, UnitState,
};

/// How an item run is shared with `fanout worker` processes.
#[derive(Debug, Clone)]
pub struct Share {
    /// The workflow file's text, published with the job for the record (workers run from
    /// the job, not from the file).
    pub workflow: String,
    /// Units this process runs itself beside the workers (0: it only coordinates).
    pub local_slots: usize,
    /// The model API its own slots call.
    pub backend: Option<Arc<Backend>>,
    /// Where its own slots keep what they need (nothing, for chunks; the worker requires one).
    pub cache: PathBuf,
}

/// How often the store is asked what the workers committed.
const POLL: Duration = Duration::from_millis(200);

/// Publish `remaining`'s chunks and settle what workers commit for them. Returns whether the
/// budget stopped it.
pub(super) async fn run_shared(
    ctx: &Arc<Ctx>,
    remaining: Vec<Chunk>,
    share: &Share,
    cancel: &CancellationToken,
) -> Result<bool, ItemsError> {
    let mut pending: HashMap<AgentId, Chunk> = HashMap::new();
    for chunk in remaining {
        if ctx.job.too_large(&chunk) {
            let mut settled = Settlement {
                chunk: chunk.id.clone(),
                results: Vec::new(),
                failures: Vec::new(),
            };
            settle_oversized(ctx, &chunk, &mut settled);
            journal_settlement(ctx, &settled).await;
        } else {
            pending.insert(AgentId::from(&chunk.id), chunk);
        }
    }
    publish(ctx, share, &pending).await?;
    let local = local_worker(ctx, share, cancel);
    let result = settle_committed(ctx, &mut pending, cancel).await;
    if let Some(handle) = local {
        if result.is_err() {
            handle.abort();
        }
        match handle.await {
            Ok(Err(error)) if result.is_ok() => {
                return Err(ItemsError::Worker(error.to_string()));
            }
            _ => {}
        }
    }
    result
}

/// Record the job and enqueue a unit per chunk in `pending` (chunk order: earliest leased
/// first).
async fn publish(
    ctx: &Ctx,
    share: &Share,
    pending: &HashMap<AgentId, Chunk>,
) -> Result<(), ItemsError> {
    let encode = |error: serde_json::Error| ItemsError::Resume {
        run_id: ctx.run_id.clone(),
        message: format!("cannot encode the job for workers: {error}"),
    };
    let (text, hash) = PublishedJob::of(&ctx.job).text_and_hash().map_err(encode)?;
    let location = ctx.store.location().clone();
    let run = ctx.run_id.clone();
    let recorded =
        tokio::task::spawn_blocking(move || StoreReader::open_at(&location)?.run_plan(&run))
            .await
            .map_err(|_| StoreError::WriterClosed {
                what: "reading the published job",
            })??;
    if let Some(recorded) = recorded
        && recorded.plan_hash != hash
    {
        return Err(ItemsError::Resume {
            run_id: ctx.run_id.clone(),
            message: format!(
                "the job changed since it was published for workers ({} then, {hash} now): \
                 the worker instructions, schema, model or limits differ",
                recorded.plan_hash
            ),
        });
    }
    let mut units = Vec::with_capacity(pending.len());
    for chunk in ctx
        .job
        .chunks
        .iter()
        .filter_map(|chunk| pending.get(&AgentId::from(&chunk.id)))
    {
        units.push(UnitSpec {
            agent_id: AgentId::from(&chunk.id),
            depends_on: Vec::new(),
            kind: UnitKind::ItemChunk,
            input: Some(serde_json::to_string(chunk).map_err(encode)?),
            // Not reserved against a budget by the leases: see `max_dollars` below.
            estimated_usd: 0.0,
        });
    }
    let record = RunPlanRecord {
        run_id: ctx.run_id.clone(),
        plan_hash: hash,
        plan: text,
        workflow: share.workflow.clone(),
        workflow_path: None,
        base_commit: String::new(),
        base_bundle: Vec::new(),
        // The leases hold an agent run's budget; a shared item run's is not held by them yet.
        max_dollars: None,
        created_at: SystemTime::now(),
    };
    ctx.store.publish_units(record, units).await?;
    Ok(())
}

/// This process's own worker on the run, when it has slots.
fn local_worker(
    ctx: &Ctx,
    share: &Share,
    cancel: &CancellationToken,
) -> Option<
    tokio::task::JoinHandle<
        Result<crate::distributed::WorkerReport, crate::distributed::WorkerError>,
    >,
> {
    let backend = share.backend.as_ref().filter(|_| share.local_slots > 0)?;
    let mut options = WorkerOptions::new(
        ctx.store.location().clone(),
        share.cache.clone(),
        share.local_slots,
        format!("coordinator:{}:{}", std::process::id(), ctx.run_id),
    );
    options.run = Some(ctx.run_id.clone());
    options.exit_when_done = true;
    let handler: Arc<dyn UnitHandler> = Arc::new(super::chunk_unit::ChunkHandler::new());
    options.handlers = UnitHandlers::new(vec![handler]);
    let backend = Arc::clone(backend);
    let token = cancel.child_token();
    Some(tokio::spawn(async move {
        crate::distributed::work(options, backend, &token).await
    }))
}

/// Settle committed units of `pending`'s chunks, in commit order, until none is left (or the
/// budget skips the rest, or `cancel`). Returns whether the budget stopped it.
async fn settle_committed(
    ctx: &Arc<Ctx>,
    pending: &mut HashMap<AgentId, Chunk>,
    cancel: &CancellationToken,
) -> Result<bool, ItemsError> {
    let mut reader = Some(open_reader(ctx).await?);
    let mut after = 0;
    let mut spent = 0.0;
    let mut budget_exhausted = false;
    while !pending.is_empty() {
        let run = ctx.run_id.clone();
        let Some(taken) = reader.take() else {
            break;
        };
        let (back, committed) = tokio::task::spawn_blocking(move || {
            let committed = taken.units_committed_after(&run, after);
            (taken, committed)
        })
        .await
        .map_err(|_| StoreError::WriterClosed {
            what: "reading committed units",
        })?;
        reader = Some(back);
        for unit in committed? {
            after = after.max(unit.commit_seq.unwrap_or(0));
            // A chunk the journal settled (an earlier process) is not settled again; if that
            // process died before marking its unit, the mark is made now.
            if let Some(chunk) = pending.remove(&unit.agent_id) {
                spent += settle_unit(ctx, &chunk, &unit).await;
            } else if unit.applied_at.is_some() {
                continue;
            }
            ctx.store
                .mark_unit_applied(&ctx.run_id, &unit.agent_id, SystemTime::now())
                .await?;
        }
        if pending.is_empty() {
            break;
        }
        if let Some(budget) = ctx.job.budget
            && spent >= budget
        {
            budget_exhausted = true;
            skip_untaken(ctx, pending).await?;
            if pending.is_empty() {
                break;
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(POLL) => {}
        }
    }
    Ok(budget_exhausted)
}

async fn open_reader(ctx: &Ctx) -> Result<StoreReader, ItemsError> {
    let location = ctx.store.location().clone();
    Ok(
        tokio::task::spawn_blocking(move || StoreReader::open_at(&location))
            .await
            .map_err(|_| StoreError::WriterClosed {
                what: "opening a store reader",
            })??,
    )
}

/// Skip the units of `pending` no worker has taken, and forget them (their items end the run
/// as not run).
async fn skip_untaken(ctx: &Ctx, pending: &mut HashMap<AgentId, Chunk>) -> Result<(), ItemsError> {
    ctx.store
        .skip_units(&ctx.run_id, pending.keys().cloned().collect())
        .await?;
    let location = ctx.store.location().clone();
    let run = ctx.run_id.clone();
    let units: Vec<UnitRow> =
        tokio::task::spawn_blocking(move || StoreReader::open_at(&location)?.units(&run))
            .await
            .map_err(|_| StoreError::WriterClosed {
                what: "reading units",
            })??;
    for unit in units {
        if unit.state == UnitState::Skipped {
            pending.remove(&unit.agent_id);
        }
    }
    Ok(())
}

/// Settle one committed unit's chunk as if this process's own task had made its calls;
/// returns the calls' dollars.
async fn settle_unit(ctx: &Arc<Ctx>, chunk: &Chunk, unit: &UnitRow) -> f64 {
    let commit: ChunkCommit = unit
        .outcome
        .clone()
        .and_then(|outcome| serde_json::from_value(outcome).ok())
        .unwrap_or_default();
    let mut settled = Settlement {
        chunk: chunk.id.clone(),
        results: Vec::new(),
        failures: Vec::new(),
    };
    let mut cost = 0.0;
    if commit.calls.is_empty() {
        let reason = commit
            .error
            .unwrap_or_else(|| "its worker committed no call for it".to_owned());
        let message = format!("the chunk could not be run by a worker: {reason}");
        settle_failed(ctx, chunk, FailureKind::Errored, &message, &mut settled);
    }
    for (round, call) in (1u32..).zip(commit.calls) {
        if lock(&ctx.ledger)
            .sent_ids(call.ids.iter().map(String::as_str))
            .is_err()
        {
            lock(&ctx.totals).store_errors += 1;
        }
        let agent_id = AgentId::from(&call.chunk);
        (ctx.events)(&ItemEvent::CallStarted {
            agent_id: agent_id.clone(),
            items: call.ids.len(),
        });
        {
            let mut totals = lock(&ctx.totals);
            totals.calls += 1;
            totals.input_tokens += call.input_tokens;
            totals.output_tokens += call.output_tokens;
            totals.cache_read_tokens += call.cache_read_tokens;
            totals.cache_write_tokens += call.cache_write_tokens;
            totals.cost += call.cost_usd;
            totals.cache_saved += call.cache_saved_usd;
        }
        cost += call.cost_usd;
        (ctx.events)(&ItemEvent::CallFinished {
            agent_id,
            accepted: call.outcome.accepted.len(),
            input_tokens: call.input_tokens,
            output_tokens: call.output_tokens,
            cache_read_tokens: call.cache_read_tokens,
            cost_usd: call.cost_usd,
        });
        // The retries it asks for are the worker's next calls, already made.
        if apply(ctx, &chunk.id, round, call.outcome, &mut settled).is_err() {
            break;
        }
    }
    journal_settlement(ctx, &settled).await;
    cost
}
