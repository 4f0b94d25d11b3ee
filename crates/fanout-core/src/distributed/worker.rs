//! `fanout worker`: lease units from a shared run store, run each agent in a tree of the
//! worker's own cache, commit its patch and record.
//!
//! The loop holds at most `slots` units at once; each unit runs in its own task
//! ([`super::unit`]: its tree, the agent tried as a local run tries it, its commit) while a
//! heartbeat renews its lease every third of its length. This module owns the loop, the
//! heartbeats, the run contexts (made once per run and kept: the published plan, its hash
//! checked against the one the coordinator recorded, the workflow parsed from its stored
//! text, a fleet on the worker's model API whose every request is also taken from the
//! store's shared buckets of the workflow's and the learned limits and settled from its
//! answer ([`super::limits`]), so the workers together stay under them), and the worker's
//! dealings with a store it cannot reach for a moment.
//!
//! A unit of another kind (an item run's chunk) goes, once leased, to the handler the worker
//! was given for that kind ([`super::handler`]); the heartbeat and the commit are the same.
//! Only kinds the worker has a handler for are leased.
//!
//! Store outages. Every store operation of the worker (a lease, a read, a start row, a
//! unit's next attempt, a commit) that fails with a transient error is sent again with a
//! capped backoff ([`super::patience`]) for up to `store_patience`; the unit's work waits
//! with it, so a store that comes back within that time loses nothing. A PostgreSQL store's
//! writer connects again after a server restart by itself. A store unreachable for longer
//! stops the worker with [`WorkerError::StoreUnavailable`], which names the store. A
//! heartbeat that fails only waits for the next beat.
//!
//! A lost lease (the heartbeat or a commit is refused: it expired and another worker took
//! the unit) cancels the agent and commits nothing. Cancelling the worker (SIGINT/SIGTERM)
//! cancels every agent and commits nothing either: no lease is released, they expire, and
//! another worker starts those units afresh. A worker that is killed leaves the same: rows
//! of attempts that never finish (closed as failures by the next lease) and model calls paid
//! for twice; never a patch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handler::UnitHandlers;
use super::patience::{self, Gave, Waited};
use super::shared_tree::SharedTree;
use super::tree::{self, TreeError};
use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::ids::{AgentId, RunId};
use crate::plan::{Plan, hash_bytes};
use crate::retry::lock;
use crate::store::{Lease, Store, StoreError, StoreLocation, StoreReader, UnitKind, UnitState};

/// At most this many units leased in one transaction (a run of a thousand units starts in
/// a few transactions, not a thousand: on PostgreSQL, one lease per transaction took 1.7 s of
/// each worker's writer to start its 334 units in the 1,000-agent benchmark).
const LEASE_BATCH: usize = 64;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub store: StoreLocation,
    /// Where run bases and unit trees are made (`<cache>/<run>/…`).
    pub cache: PathBuf,
    /// Units run at once.
    pub slots: usize,
    /// This worker's name on its leases (unique in the fleet).
    pub owner: String,
    /// How long a lease lasts without a heartbeat.
    pub lease: Duration,
    /// How long to wait before asking again when nothing is ready.
    pub poll: Duration,
    /// Only units of this run.
    pub run: Option<RunId>,
    /// Stop once `run` has no unit left that could still be leased (tests, one-run workers).
    pub exit_when_done: bool,
    /// What runs units other than plan agents ([`super::handler`]); only those kinds are
    /// leased. None by default.
    pub handlers: UnitHandlers,
    /// Tries of one agent on transient failures (provider errors) under one lease, the first
    /// included; a `fast` agent's escalation to `default` counts as one.
    pub max_attempts: u32,
    /// How long the store may be unreachable before the worker gives up on it.
    pub store_patience: Duration,
}

impl WorkerOptions {
    /// A lease of 30 s, polled every 50 ms (what a published run waits, on average half of
    /// it, before its first unit starts); as many attempts as a local run gives an agent
    /// ([`crate::attempt::AGENT_ATTEMPTS`]); two minutes of patience with the store.
    pub fn new(store: StoreLocation, cache: PathBuf, slots: usize, owner: String) -> Self {
        WorkerOptions {
            store,
            cache,
            slots: slots.max(1),
            owner,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            run: None,
            exit_when_done: false,
            handlers: UnitHandlers::default(),
            max_attempts: crate::attempt::AGENT_ATTEMPTS,
            store_patience: Duration::from_secs(120),
        }
    }
}

/// What a worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WorkerReport {
    /// Units committed as successes and as failures.
    pub committed: u64,
    pub failed: u64,
    /// Units whose lease was lost before their commit (nothing committed).
    pub lost: u64,
    /// Units left uncommitted because the worker was cancelled.
    pub abandoned: u64,
    /// Units that could not be run or committed for another reason (the first one's error).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Agent attempts made, the first of each unit included.
    pub attempts: u64,
    /// Of `attempts`, those of a `fast` agent escalated to `default`, and those made again
    /// after a transient failure.
    pub escalated: u64,
    pub retried: u64,
    /// Store operations sent again after a transient failure, and the longest time one
    /// operation waited for the store.
    pub store_retries: u64,
    pub longest_store_wait_ms: u64,
}

/// Why a worker stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    /// Its display leaves the last error to the chain (`source`).
    #[error(
        "the run store {store} could not be reached for {} s; giving up",
        .waited.as_secs()
    )]
    StoreUnavailable {
        store: String,
        waited: Duration,
        source: Box<StoreError>,
    },
    #[error("cannot make the cache directory {}: {source}", .path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one unit could not be run or committed.
#[derive(Debug, thiserror::Error)]
pub(super) enum UnitError {
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    #[error("the run store could not be reached for {} s: {source}", .waited.as_secs())]
    Unreachable {
        waited: Duration,
        source: Box<StoreError>,
    },
    #[error("cancelled while waiting for the run store")]
    Cancelled,
    #[error("run {0} has no published plan")]
    NoPlan(RunId),
    #[error(
        "the published plan's hash is {found}, not the recorded {recorded}: refusing to run it"
    )]
    PlanHash { found: String, recorded: String },
    #[error("the published plan cannot be read: {0}")]
    Plan(serde_json::Error),
    #[error("the published workflow cannot be read: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("model API: {0}")]
    Backend(#[from] BackendError),
    #[error("the plan has no sub-task {0}")]
    NoSubtask(AgentId),
    #[error("tree: {0}")]
    Tree(#[from] TreeError),
    #[error("a blocking task failed: {0}")]
    Join(String),
    #[error("{0}")]
    Handler(super::handler::HandlerError),
    #[error("this worker has nothing to run {} units with", .0.as_str())]
    NoHandler(UnitKind),
}

impl From<Gave> for UnitError {
    fn from(gave: Gave) -> UnitError {
        match gave {
            Gave::Refused { error, .. } => UnitError::Store(error),
            Gave::Unreachable { waited, last } => UnitError::Unreachable {
                waited,
                source: Box::new(last),
            },
            Gave::Cancelled => UnitError::Cancelled,
        }
    }
}

/// A run as this worker needs it, made once per run.
pub(super) struct RunContext {
    pub(super) plan: Plan,
    /// Of the published plan's text, checked against the recorded hash.
    pub(super) plan_hash: String,
    pub(super) config: Arc<Config>,
    pub(super) fleet: Fleet,
    pub(super) base_commit: String,
    pub(super) base: PathBuf,
    /// Where the run's units without dependencies run; `None` when another process on the
    /// same cache holds it (each unit then gets a tree of its own).
    pub(super) shared: Option<SharedTree>,
}

pub(super) struct Worker {
    pub(super) options: WorkerOptions,
    pub(super) store: Store,
    pub(super) backend: Arc<Backend>,
    runs: tokio::sync::Mutex<HashMap<RunId, Arc<RunContext>>>,
    report: Mutex<WorkerReport>,
    /// Cancelled when the worker stops on its own (the store is gone): every unit's token is
    /// a child of it.
    stop: CancellationToken,
    /// Why a unit stopped the worker.
    fatal: Mutex<Option<WorkerError>>,
}

/// Lease and run units until `cancel` (or, with `exit_when_done`, until the run has none
/// left). `backend` is the model API every run's fleet is built on.
pub async fn work(
    options: WorkerOptions,
    backend: Arc<Backend>,
    cancel: &CancellationToken,
) -> Result<WorkerReport, WorkerError> {
    let mut options = options;
    let cache_error = |source| WorkerError::Cache {
        path: options.cache.clone(),
        source,
    };
    std::fs::create_dir_all(&options.cache).map_err(cache_error)?;
    // git runs in the unit's directory: every path it is given must be absolute.
    let cache = std::fs::canonicalize(&options.cache).map_err(cache_error)?;
    options.cache = cache;
    let store = Store::open_at(&options.store)?;
    let stop = cancel.child_token();
    let worker = Arc::new(Worker {
        store: store.clone(),
        backend,
        runs: tokio::sync::Mutex::default(),
        report: Mutex::default(),
        stop: stop.clone(),
        fatal: Mutex::default(),
        options,
    });
    let slots = Arc::new(Semaphore::new(worker.options.slots));
    let kinds = worker.options.handlers.kinds();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ended: Result<(), WorkerError> = Ok(());
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Every free slot is filled at once, in one lease transaction (a run of a thousand
        // units starts in a few transactions, not a thousand).
        let mut permits = vec![permit];
        while permits.len() < LEASE_BATCH {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        let leased = worker
            .persist(&stop, || {
                let now = SystemTime::now();
                worker.store.lease_units_of(
                    &worker.options.owner,
                    worker.options.run.as_ref(),
                    &kinds,
                    permits.len(),
                    now,
                    now + worker.options.lease,
                )
            })
            .await;
        let leased = match leased {
            Ok(leased) => leased,
            Err(gave) => {
                ended = worker.gave_up(gave);
                break;
            }
        };
        let idle = leased.is_empty();
        for (lease, permit) in leased.into_iter().zip(permits.drain(..)) {
            let worker = Arc::clone(&worker);
            let cancel = stop.child_token();
            tasks.spawn(async move {
                worker.unit(lease, &cancel).await;
                drop(permit);
            });
        }
        // Slots the store had no unit for are free again.
        drop(permits);
        if idle {
            if worker.options.exit_when_done && tasks.is_empty() {
                match worker.run_done(&stop).await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(gave) => {
                        ended = worker.gave_up(gave);
                        break;
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(worker.options.poll) => {}
            }
        }
    }
    if ended.is_err() {
        stop.cancel();
    }
    while tasks.join_next().await.is_some() {}
    let report = lock(&worker.report).clone();
    let fatal = lock(&worker.fatal).take();
    let _ = store.close().await;
    ended?;
    match fatal {
        Some(error) => Err(error),
        None => Ok(report),
    }
}

impl Worker {
    /// What the lease loop does when a store operation did not succeed: nothing when
    /// cancelled, else the error that stops the worker.
    fn gave_up(&self, gave: Gave) -> Result<(), WorkerError> {
        match gave {
            Gave::Cancelled => Ok(()),
            Gave::Refused { error, .. } => Err(WorkerError::Store(error)),
            Gave::Unreachable { waited, last } => Err(self.unavailable(waited, Box::new(last))),
        }
    }

    fn unavailable(&self, waited: Duration, source: Box<StoreError>) -> WorkerError {
        WorkerError::StoreUnavailable {
            store: self.options.store.to_string(),
            waited,
            source,
        }
    }

    /// A unit found the store unreachable for the whole patience: the worker stops with
    /// that error (the first one, if several units found it).
    pub(super) fn stop_unreachable(&self, waited: Duration, source: Box<StoreError>) {
        let error = self.unavailable(waited, source);
        if let WorkerError::StoreUnavailable { source, .. } = &error {
            self.note_error(format!("{error}: {source}"));
        }
        lock(&self.fatal).get_or_insert(error);
        self.stop.cancel();
    }

    /// Whether the worker's run has no unit that could still be leased: every unit is
    /// final or skipped, or waits on a dependency that failed or was skipped.
    async fn run_done(&self, cancel: &CancellationToken) -> Result<bool, Gave> {
        let Some(run) = self.options.run.clone() else {
            return Ok(false);
        };
        let units = self
            .read(cancel, move |reader| reader.unit_states(&run))
            .await?;
        let mut blocked: std::collections::HashSet<&AgentId> = units
            .iter()
            .filter(|unit| matches!(unit.state, UnitState::Failed | UnitState::Skipped))
            .map(|unit| &unit.agent_id)
            .collect();
        loop {
            let before = blocked.len();
            for unit in &units {
                if unit.state == UnitState::Ready
                    && unit.depends_on.iter().any(|dep| blocked.contains(dep))
                {
                    blocked.insert(&unit.agent_id);
                }
            }
            if blocked.len() == before {
                break;
            }
        }
        Ok(!units.is_empty()
            && units.iter().all(|unit| {
                unit.state.is_final()
                    || unit.state == UnitState::Skipped
                    || blocked.contains(&unit.agent_id)
            }))
    }

    pub(super) fn note(&self, update: impl FnOnce(&mut WorkerReport)) {
        update(&mut lock(&self.report));
    }

    pub(super) fn note_error(&self, error: String) {
        self.note(|report| {
            report.errors += 1;
            report.first_error.get_or_insert(error);
        });
    }

    /// `op` sent to the store until it succeeds, is refused, or the store has been
    /// unreachable for the worker's patience ([`patience::persist`]); retries are counted
    /// in the report.
    pub(super) async fn persist<T, F, Fut>(
        &self,
        cancel: &CancellationToken,
        op: F,
    ) -> Result<T, Gave>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let on_waited = |waited: Waited| {
            self.note(|report| {
                report.store_retries += waited.retries;
                let millis = u64::try_from(waited.waited.as_millis()).unwrap_or(u64::MAX);
                report.longest_store_wait_ms = report.longest_store_wait_ms.max(millis);
            });
        };
        patience::persist(self.options.store_patience, cancel, on_waited, op).await
    }

    /// `read` on a fresh reader of the store (off the async workers), with the same
    /// patience as every other store operation.
    pub(super) async fn read<T, F>(&self, cancel: &CancellationToken, read: F) -> Result<T, Gave>
    where
        T: Send + 'static,
        F: Fn(&StoreReader) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        let read = Arc::new(read);
        self.persist(cancel, || {
            let read = Arc::clone(&read);
            let location = self.options.store.clone();
            async move {
                tokio::task::spawn_blocking(move || read(&StoreReader::open_at(&location)?))
                    .await
                    .map_err(|error| StoreError::Spawn {
                        source: std::io::Error::other(error.to_string()),
                    })?
            }
        })
        .await
    }

    /// Renew the lease in `held` every third of its length; a refused renewal cancels the
    /// unit. The lock is held while a renewal is on its way, so a unit moving to its next
    /// attempt (which changes the lease) never races one.
    pub(super) fn heartbeat(
        &self,
        held: Arc<tokio::sync::Mutex<Lease>>,
        cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let length = self.options.lease;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(length / 3) => {}
                }
                let lease = held.lock().await;
                match store.heartbeat(&lease, SystemTime::now() + length).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseLost { .. }) => {
                        cancel.cancel();
                        return;
                    }
                    // A store that cannot be reached for a moment: try again next beat.
                    Err(_) => {}
                }
            }
        })
    }

    /// The run's context if it was made.
    pub(super) async fn known_context(&self, run_id: &RunId) -> Option<Arc<RunContext>> {
        self.runs.lock().await.get(run_id).cloned()
    }

    /// The run's context, made the first time one of its units is leased.
    pub(super) async fn context(
        &self,
        run_id: &RunId,
        cancel: &CancellationToken,
    ) -> Result<Arc<RunContext>, UnitError> {
        let mut runs = self.runs.lock().await;
        if let Some(context) = runs.get(run_id) {
            return Ok(Arc::clone(context));
        }
        let run = run_id.clone();
        let record = self
            .read(cancel, move |reader| reader.run_plan(&run))
            .await?
            .ok_or_else(|| UnitError::NoPlan(run_id.clone()))?;
        let cache = self.options.cache.clone();
        let run = run_id.clone();
        let (record, base, shared) = tokio::task::spawn_blocking(move || {
            let base =
                tree::base_repository(&cache, &run, &record.base_bundle, &record.base_commit)?;
            let shared = SharedTree::open(&cache, &run, &base, &record.base_commit)?;
            Ok::<_, UnitError>((record, base, shared))
        })
        .await
        .map_err(|error| UnitError::Join(error.to_string()))??;
        let found = hash_bytes(record.plan.as_bytes());
        if found != record.plan_hash {
            return Err(UnitError::PlanHash {
                found,
                recorded: record.plan_hash,
            });
        }
        let plan: Plan = serde_json::from_str(&record.plan).map_err(UnitError::Plan)?;
        let origin = base.join(
            record
                .workflow_path
                .as_deref()
                .unwrap_or("claude-workflows.yaml"),
        );
        let config = Arc::new(Config::from_str(&record.workflow, origin)?);
        let fleet = self.backend.fleet(&config)?;
        // One bucket per model API and limit, whichever run or worker takes from it: the
        // fleet's API is the orchestrator model's, as the backend builds it.
        let api = format!("{:?}", config.orchestrator_model().provider).to_lowercase();
        let limits = super::limits::StoreLimits::open(
            self.store.clone(),
            api,
            self.options.owner.clone(),
            &config.rate_limits,
            fleet.governor().config(),
        )
        .await;
        let fleet = fleet.with_shared_limits(Arc::new(limits));
        let context = Arc::new(RunContext {
            plan,
            plan_hash: found,
            config,
            fleet,
            base_commit: record.base_commit,
            base,
            shared,
        });
        runs.insert(run_id.clone(), Arc::clone(&context));
        Ok(context)
    }
}
