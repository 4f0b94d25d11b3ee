//! A shared item run's chunk on a worker: [`ChunkHandler`], the [`UnitHandler`] that
//! `fanout worker` (and an item run's coordinator, for its own slots) runs item chunk units
//! with.
//!
//! Once per run: the published job ([`PublishedJob`], its hash checked against the recorded
//! one) and a fleet on the worker model's API under the workflow's rate limits, its limits
//! (requests and tokens, the workflow's and the learned) shared through the store as agents
//! share them ([`crate::distributed::limits`]). Per unit: the
//! chunk's calls exactly as the local runner's online task makes them ([`super::online`]) —
//! the request, its start row written alongside it, [`check_answer`], then the retries a
//! ledger asks for (missing items alone, one repair chunk). The ledger holds the chunk's
//! items only; it starts where the coordinator's stands for them (pending, never sent), so it
//! asks for the same retries. The calls' rows are ended in the unit's commit, one
//! transaction, whose outcome lists every call with its checked answer ([`ChunkCommit`]):
//! the coordinator settles the chunk from it.
//!
//! Attempts: every call of a unit is recorded as the lease's attempt of its own agent id (the
//! chunk's, or a retry's `…-r1-1`), so a takeover's rows never collide with a dead worker's.
//! A unit taken over (attempt > 1) first ends the rows the dead worker left open, its retry
//! calls' included (the lease itself ends only the chunk's own row).
//!
//! Not here: settling (the coordinator, `super::coordinate`), leases, heartbeats and the
//! commit itself (the worker, [`crate::distributed::worker`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use super::calls::{CallFigures, Pricing, finish_row, request_for, start_row};
use super::wire::{CallRecord, ChunkCommit, PublishedJob};
use crate::distributed::{HandlerError, HandlerRun, StoreLimits, UnitContext, UnitHandler};
use crate::fleet::{Fleet, FleetError};
use crate::ids::{AgentId, RunId};
use crate::items::chunk::Chunk;
use crate::items::worker::{
    ChunkOutcome, Ledger, LedgerError, OutputSchema, RetryChunk, SchemaError, check_answer,
};
use crate::store::{AgentFinish, AgentStatus, StoreError, StoreReader, UnitCommit, UnitKind};

/// Why a chunk unit could not be run (its worker commits it as a failure).
#[derive(Debug, thiserror::Error)]
enum ChunkUnitError {
    #[error("run {0} has no published item job")]
    NoJob(RunId),
    #[error(
        "the published item job's hash is {found}, not the recorded {recorded}: refusing to run it"
    )]
    JobHash { found: String, recorded: String },
    #[error("the published item job cannot be read: {0}")]
    Job(serde_json::Error),
    #[error("the unit's chunk cannot be read: {0}")]
    Input(String),
    #[error("the chunk's outcome cannot be encoded: {0}")]
    Encode(serde_json::Error),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("model API: {0}")]
    Backend(#[from] crate::backend::BackendError),
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    #[error("item accounting: {0}")]
    Ledger(#[from] LedgerError),
    #[error("a blocking task failed: {0}")]
    Join(String),
}

/// A run's published job, ready to run chunks with.
struct RunJob {
    hash: String,
    job: PublishedJob,
    schema: OutputSchema,
    fleet: Fleet,
}

impl RunJob {
    fn pricing(&self) -> Pricing<'_> {
        Pricing {
            model: &self.job.worker_model,
            mode: self.job.worker_mode,
            // Shared runs are online (batch runs are not shared).
            factor: 1.0,
        }
    }
}

/// Runs item chunk units ([`UnitKind::ItemChunk`]); one per worker process, shared by its
/// slots (so is each run's fleet).
#[derive(Default)]
pub struct ChunkHandler {
    runs: tokio::sync::Mutex<HashMap<RunId, Arc<RunJob>>>,
}

impl ChunkHandler {
    pub fn new() -> ChunkHandler {
        ChunkHandler::default()
    }
}

impl UnitHandler for ChunkHandler {
    fn kind(&self) -> UnitKind {
        UnitKind::ItemChunk
    }

    fn run<'a>(&'a self, unit: UnitContext<'a>, cancel: &'a CancellationToken) -> HandlerRun<'a> {
        Box::pin(async move {
            self.chunk(&unit, cancel)
                .await
                .map_err(|error| Box::new(error) as HandlerError)
        })
    }
}

/// A unit's calls: what its commit carries.
struct Calls {
    records: Vec<CallRecord>,
    finishes: Vec<AgentFinish>,
    /// Every item of the chunk has a result (as the local task's outcome counts success).
    succeeded: bool,
}

impl ChunkHandler {
    /// The run's job, read and checked the first time one of its chunks is leased.
    async fn job(&self, unit: &UnitContext<'_>) -> Result<Arc<RunJob>, ChunkUnitError> {
        let mut runs = self.runs.lock().await;
        if let Some(job) = runs.get(&unit.lease.run_id) {
            return Ok(Arc::clone(job));
        }
        let location = unit.location.clone();
        let run = unit.lease.run_id.clone();
        let record =
            tokio::task::spawn_blocking(move || StoreReader::open_at(&location)?.run_plan(&run))
                .await
                .map_err(|error| ChunkUnitError::Join(error.to_string()))??
                .ok_or_else(|| ChunkUnitError::NoJob(unit.lease.run_id.clone()))?;
        let found = crate::plan::hash_bytes(record.plan.as_bytes());
        if found != record.plan_hash {
            return Err(ChunkUnitError::JobHash {
                found,
                recorded: record.plan_hash,
            });
        }
        let job: PublishedJob = serde_json::from_str(&record.plan).map_err(ChunkUnitError::Job)?;
        let schema = OutputSchema::new(job.record_schema.clone())?;
        let provider = job.worker_model.provider;
        let fleet = unit.backend.fleet_with_limits(&job.rate_limits, provider)?;
        // The same shared limits as a plan agent's fleet: one bucket per model API and limit.
        let limits = StoreLimits::open(
            unit.store.clone(),
            format!("{provider:?}").to_lowercase(),
            unit.owner.to_owned(),
            &job.rate_limits,
            fleet.governor().config(),
        )
        .await;
        let fleet = fleet.with_shared_limits(Arc::new(limits));
        let job = Arc::new(RunJob {
            hash: found,
            job,
            schema,
            fleet,
        });
        runs.insert(unit.lease.run_id.clone(), Arc::clone(&job));
        Ok(job)
    }

    /// One leased chunk, to the commit its worker makes (`None`: cancelled).
    async fn chunk(
        &self,
        unit: &UnitContext<'_>,
        cancel: &CancellationToken,
    ) -> Result<Option<UnitCommit>, ChunkUnitError> {
        let run = self.job(unit).await?;
        let lease = unit.lease;
        // A run re-published under the same id is refused, as for plans.
        if run.hash != lease.plan_hash {
            return Err(ChunkUnitError::JobHash {
                found: run.hash.clone(),
                recorded: lease.plan_hash.clone(),
            });
        }
        let chunk: Chunk = serde_json::from_str(lease.input.as_deref().unwrap_or_default())
            .map_err(|error| ChunkUnitError::Input(error.to_string()))?;
        if lease.attempt > 1 {
            end_abandoned_rows(unit, &chunk).await;
        }
        let Some(calls) = make_calls(&run, unit, chunk, cancel).await? else {
            return Ok(None);
        };
        let mut finishes = calls.finishes.into_iter();
        let Some(finish) = finishes.next() else {
            return Err(ChunkUnitError::Input("the chunk has no items".to_owned()));
        };
        let outcome = ChunkCommit {
            worker: unit.owner.to_owned(),
            calls: calls.records,
            error: None,
        };
        Ok(Some(UnitCommit {
            lease: lease.clone(),
            succeeded: calls.succeeded,
            patch: Vec::new(),
            outcome: serde_json::to_value(outcome).map_err(ChunkUnitError::Encode)?,
            finish,
            other_finishes: finishes.collect(),
            at: SystemTime::now(),
        }))
    }
}

/// The chunk's first call and every retry its ledger asks for, as the local runner's online
/// task makes them. `None` when cancelled (nothing is committed).
async fn make_calls(
    run: &RunJob,
    unit: &UnitContext<'_>,
    chunk: Chunk,
    cancel: &CancellationToken,
) -> Result<Option<Calls>, ChunkUnitError> {
    let lease = unit.lease;
    let pricing = run.pricing();
    let mut ledger = Ledger::new(&chunk.items, run.job.retry)?;
    let parent = chunk.id.clone();
    let mut queue = VecDeque::from([RetryChunk {
        chunk,
        problems: Vec::new(),
    }]);
    let mut calls = Calls {
        records: Vec::new(),
        finishes: Vec::new(),
        succeeded: false,
    };
    let mut round = 0;
    while let Some(next) = queue.pop_front() {
        if cancel.is_cancelled() {
            return Ok(None);
        }
        round += 1;
        let chunk = &next.chunk;
        let start = start_row(&lease.run_id, chunk, lease.attempt, &pricing);
        let (outcome, figures) = match request_for(&run.job.spec, &run.schema, &next) {
            Err(error) => {
                unit.store.start_agent(start).await?;
                (
                    ChunkOutcome::errored(chunk, error.to_string()),
                    CallFigures::of(&pricing, None),
                )
            }
            Ok(request) => {
                ledger.sent(chunk)?;
                // The start row is durable before the answer is looked at, as in the local
                // runner; the call does not wait for it.
                let (started, result) = tokio::join!(
                    unit.store.start_agent(start),
                    run.fleet.call(&request, cancel)
                );
                started?;
                match result {
                    Ok(call) => {
                        let figures = CallFigures::of(&pricing, Some(&call.response));
                        let exchange = Some((Some(&request), &call.response));
                        if let Some(model_call) =
                            figures.model_call(&pricing, lease.attempt, exchange, Some(&call))
                        {
                            unit.store.event_now(
                                model_call.event(&lease.run_id, AgentId::from(&chunk.id)),
                            );
                        }
                        (check_answer(chunk, &call.response, &run.schema), figures)
                    }
                    Err(FleetError::Cancelled { .. }) => return Ok(None),
                    Err(error) => (
                        ChunkOutcome::errored(chunk, error.to_string()),
                        CallFigures::of(&pricing, None),
                    ),
                }
            }
        };
        let finish = finish_row(
            &lease.run_id,
            chunk,
            lease.attempt,
            &figures,
            &outcome,
            None,
        );
        calls.records.push(CallRecord {
            chunk: chunk.id.clone(),
            ids: chunk.ids().map(str::to_owned).collect(),
            outcome: outcome.clone(),
            input_tokens: finish.input_tokens,
            output_tokens: finish.output_tokens,
            cache_read_tokens: finish.cache_read_tokens,
            cache_write_tokens: finish.cache_write_tokens,
            cost_usd: finish.cost_usd,
            cache_saved_usd: finish.cache_saved_usd,
        });
        calls.finishes.push(finish);
        let plan = ledger.apply_owned(outcome)?;
        queue.extend(ledger.retry_chunks(&parent, round, &plan)?);
    }
    let (_, failed, pending) = ledger.counts();
    calls.succeeded = failed == 0 && pending == 0;
    Ok(Some(calls))
}

/// End the rows an earlier lease's worker left open for this chunk (its own call and its
/// retries'): that worker is gone. Best effort: an open row misleads `fanout show`, it does
/// not change the run.
async fn end_abandoned_rows(unit: &UnitContext<'_>, chunk: &Chunk) {
    let location = unit.location.clone();
    let run = unit.lease.run_id.clone();
    let Ok(Ok(rows)) =
        tokio::task::spawn_blocking(move || StoreReader::open_at(&location)?.agent_runs(&run))
            .await
    else {
        return;
    };
    let retries = format!("{}-r", chunk.id);
    for row in rows {
        let agent = row.agent_id.as_str();
        if row.status.is_some()
            || row.attempt >= unit.lease.attempt
            || (agent != chunk.id.as_str() && !agent.starts_with(&retries))
        {
            continue;
        }
        let _ = unit
            .store
            .finish_agent(AgentFinish {
                run_id: row.run_id,
                agent_id: row.agent_id,
                attempt: row.attempt,
                status: AgentStatus::Failure,
                files_accessed: row.files_accessed,
                tools_called: Vec::new(),
                input_tokens: 0,
                output_tokens: 0,
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                cost_usd: 0.0,
                cache_saved_usd: 0.0,
                error: Some(
                    "its worker stopped renewing the lease; another worker took the chunk over"
                        .to_owned(),
                ),
                checkpoint: None,
                ended_at: SystemTime::now(),
            })
            .await;
    }
}
