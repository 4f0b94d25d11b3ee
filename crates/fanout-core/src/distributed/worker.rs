//! `fanout worker`: lease units from a shared run store, run each agent in a tree of the
//! worker's own cache, commit its patch and record.
//!
//! The loop holds at most `slots` units at once. Each unit, in its own task:
//! 1. its run's context, made once per run and kept: the published plan (its hash checked
//!    against the one the coordinator recorded: a mismatch runs nothing and commits a
//!    failure), the workflow parsed from its stored text, a fleet on the worker's model API;
//! 2. its tree ([`super::tree`]): the base from the bundle, its dependencies' committed
//!    patches applied in commit order;
//! 3. its start row (attempt = the lease's attempt), then the agent through
//!    [`run_agent_gated`] with the engine's own scope policy, toolbox, sandbox, limits and
//!    records (model calls as they are answered, tool calls, denials) — while a heartbeat
//!    renews the lease every third of its length; with a requests-per-minute limit in the
//!    workflow, every request is also taken from the store's shared bucket for it
//!    ([`super::bucket`]), so the workers together stay under it;
//! 4. the patch of its write scope, committed with the outcome and the finish row in one
//!    transaction ([`Store::commit_unit`]).
//!
//! A unit of another kind (an item run's chunk) goes, after step 1's lease, to the handler
//! the worker was given for that kind ([`super::handler`]); the heartbeat and the commit are
//! the same. Only kinds the worker has a handler for are leased.
//!
//! A lost lease (the heartbeat is refused: it expired and another worker took the unit)
//! cancels the agent and commits nothing. Cancelling the worker (SIGINT/SIGTERM) cancels
//! every agent and commits nothing either: no lease is released, they expire, and another
//! worker starts those units afresh. A worker that is killed leaves the same: rows of
//! attempts that never finish (closed as failures by the next lease) and model calls paid
//! for twice; never a patch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::handler::{UnitContext, UnitHandlers};
use super::tree::{self, TreeError};
use crate::agent::{AgentOutcome, LoopStatus, run_agent_gated};
use crate::attempt::{
    agent_config, agent_spec, failure_text, model_call_hook, queue_denials, store_tool_calls,
};
use crate::backend::{Backend, BackendError};
use crate::config::Config;
use crate::fleet::Fleet;
use crate::ids::{AgentId, RunId};
use crate::plan::{Plan, Subtask, hash_bytes};
use crate::policy::{PathSet, ScopePolicy};
use crate::retry::lock;
use crate::sandbox::SandboxConfig;
use crate::store::{
    AgentFinish, AgentStart, AgentStatus, Lease, Store, StoreError, StoreLocation, StoreReader,
    UnitCommit, UnitKind, UnitState,
};
use crate::tools::{RepoFacts, ToolLimits, Toolbox};

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
}

impl WorkerOptions {
    /// A lease of 30 s, polled every 200 ms.
    pub fn new(store: StoreLocation, cache: PathBuf, slots: usize, owner: String) -> Self {
        WorkerOptions {
            store,
            cache,
            slots: slots.max(1),
            owner,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            run: None,
            exit_when_done: false,
            handlers: UnitHandlers::default(),
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
}

/// Why a worker stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot make the cache directory {}: {source}", .path.display())]
    Cache {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why one unit could not be run.
#[derive(Debug, thiserror::Error)]
enum UnitError {
    #[error("run store: {0}")]
    Store(#[from] StoreError),
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

/// A run as this worker needs it, made once per run.
struct RunContext {
    plan: Plan,
    /// Of the published plan's text, checked against the recorded hash.
    plan_hash: String,
    config: Arc<Config>,
    fleet: Fleet,
    base_commit: String,
    base: PathBuf,
}

struct Worker {
    options: WorkerOptions,
    store: Store,
    backend: Arc<Backend>,
    runs: tokio::sync::Mutex<HashMap<RunId, Arc<RunContext>>>,
    report: Mutex<WorkerReport>,
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
    let worker = Arc::new(Worker {
        store: store.clone(),
        backend,
        runs: tokio::sync::Mutex::default(),
        report: Mutex::default(),
        options,
    });
    let slots = Arc::new(Semaphore::new(worker.options.slots));
    let kinds = worker.options.handlers.kinds();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Reap finished tasks so the set does not grow with the run.
        while tasks.try_join_next().is_some() {}
        let now = SystemTime::now();
        let leased = worker
            .store
            .lease_unit_of(
                &worker.options.owner,
                worker.options.run.as_ref(),
                &kinds,
                now,
                now + worker.options.lease,
            )
            .await?;
        match leased {
            Some(lease) => {
                let worker = Arc::clone(&worker);
                let cancel = cancel.child_token();
                tasks.spawn(async move {
                    worker.unit(lease, &cancel).await;
                    drop(permit);
                });
            }
            None => {
                drop(permit);
                if worker.options.exit_when_done && tasks.is_empty() && worker.run_done()? {
                    break;
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(worker.options.poll) => {}
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let report = lock(&worker.report).clone();
    let _ = store.close().await;
    Ok(report)
}

impl Worker {
    /// Whether the worker's run has no unit that could still be leased: every unit is
    /// final or skipped, or waits on a dependency that failed or was skipped.
    fn run_done(&self) -> Result<bool, StoreError> {
        let Some(run) = &self.options.run else {
            return Ok(false);
        };
        let units = StoreReader::open_at(&self.options.store)?.unit_states(run)?;
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

    fn note(&self, update: impl FnOnce(&mut WorkerReport)) {
        update(&mut lock(&self.report));
    }

    fn note_error(&self, error: String) {
        self.note(|report| {
            report.errors += 1;
            report.first_error.get_or_insert(error);
        });
    }

    /// One leased unit, to its commit (or to nothing, if its lease is lost or the worker
    /// is cancelled).
    async fn unit(self: Arc<Self>, lease: Lease, cancel: &CancellationToken) {
        let heartbeat = self.heartbeat(&lease, cancel);
        let result = match (lease.kind, self.options.handlers.get(lease.kind)) {
            (UnitKind::Agent, _) => self.run_unit(&lease, cancel).await,
            (_, Some(handler)) => {
                let unit = UnitContext {
                    lease: &lease,
                    store: &self.store,
                    location: &self.options.store,
                    backend: &self.backend,
                    owner: &self.options.owner,
                };
                handler.run(unit, cancel).await.map_err(UnitError::Handler)
            }
            (kind, None) => Err(UnitError::NoHandler(kind)),
        };
        heartbeat.abort();
        let commit = match result {
            Ok(Some(commit)) => commit,
            Ok(None) => {
                self.note(|report| report.abandoned += 1);
                return;
            }
            // Could not run it: a failure on record, so the coordinator does not wait on it.
            Err(error) => {
                let message = error.to_string();
                self.note_error(message.clone());
                match self.failure(&lease, message).await {
                    Some(commit) => commit,
                    None => return,
                }
            }
        };
        if cancel.is_cancelled() {
            self.note(|report| report.abandoned += 1);
            return;
        }
        let succeeded = commit.succeeded;
        match self.store.commit_unit(commit).await {
            Ok(_) if succeeded => self.note(|report| report.committed += 1),
            Ok(_) => self.note(|report| report.failed += 1),
            Err(StoreError::LeaseLost { .. }) => self.note(|report| report.lost += 1),
            Err(error) => self.note_error(error.to_string()),
        }
    }

    /// Renew `lease` every third of its length; a refused renewal cancels the unit.
    fn heartbeat(&self, lease: &Lease, cancel: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let lease = lease.clone();
        let length = self.options.lease;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(length / 3) => {}
                }
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

    /// The run's context, made the first time one of its units is leased.
    async fn context(&self, run_id: &RunId) -> Result<Arc<RunContext>, UnitError> {
        let mut runs = self.runs.lock().await;
        if let Some(context) = runs.get(run_id) {
            return Ok(Arc::clone(context));
        }
        let location = self.options.store.clone();
        let cache = self.options.cache.clone();
        let run = run_id.clone();
        let (record, base) = tokio::task::spawn_blocking(move || {
            let record = StoreReader::open_at(&location)?
                .run_plan(&run)?
                .ok_or_else(|| UnitError::NoPlan(run.clone()))?;
            let base =
                tree::base_repository(&cache, &run, &record.base_bundle, &record.base_commit)?;
            Ok::<_, UnitError>((record, base))
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
        let mut fleet = self.backend.fleet(&config)?;
        if let Some(rpm) = config.rate_limits.requests_per_minute {
            // One bucket per model API and limit, whichever run or worker takes from it.
            let api = config.model_for_mode(crate::config::Mode::Default).provider;
            let name = format!("{api:?}:requests_per_minute:{rpm}").to_lowercase();
            fleet = fleet.with_shared_bucket(Arc::new(
                super::bucket::StoreBucket::requests_per_minute(self.store.clone(), name, rpm),
            ));
        }
        let context = Arc::new(RunContext {
            plan,
            plan_hash: found,
            config,
            fleet,
            base_commit: record.base_commit,
            base,
        });
        runs.insert(run_id.clone(), Arc::clone(&context));
        Ok(context)
    }

    /// Run the unit's agent; the commit to make, or `None` if the unit was cancelled.
    async fn run_unit(
        &self,
        lease: &Lease,
        cancel: &CancellationToken,
    ) -> Result<Option<UnitCommit>, UnitError> {
        let context = self.context(&lease.run_id).await?;
        // The lease names the hash recorded now; the context was checked against the hash
        // recorded when it was made. A run re-published under the same id is refused.
        if context.plan_hash != lease.plan_hash {
            return Err(UnitError::PlanHash {
                found: context.plan_hash.clone(),
                recorded: lease.plan_hash.clone(),
            });
        }
        let subtask = context
            .plan
            .subtasks
            .iter()
            .find(|subtask| AgentId::from(&subtask.task_id) == lease.agent_id)
            .cloned()
            .ok_or_else(|| UnitError::NoSubtask(lease.agent_id.clone()))?;
        let dir = self.materialise(&context, lease, &subtask).await?;
        let result = self
            .run_agent(&context, lease, &subtask, &dir, cancel)
            .await;
        tree::remove(&dir);
        result
    }

    /// The unit's tree: the base, then its dependencies' committed patches in commit order.
    async fn materialise(
        &self,
        context: &RunContext,
        lease: &Lease,
        subtask: &Subtask,
    ) -> Result<PathBuf, UnitError> {
        let location = self.options.store.clone();
        let cache = self.options.cache.clone();
        let base = context.base.clone();
        let base_commit = context.base_commit.clone();
        let lease = lease.clone();
        let direct: Vec<AgentId> = subtask.depends_on.iter().map(AgentId::from).collect();
        tokio::task::spawn_blocking(move || {
            let reader = StoreReader::open_at(&location)?;
            let units = reader.unit_states(&lease.run_id)?;
            // Every transitive dependency: its work is in the tree the agent expects.
            let by_agent: HashMap<&AgentId, _> =
                units.iter().map(|unit| (&unit.agent_id, unit)).collect();
            let mut needed: Vec<&AgentId> = Vec::new();
            let mut stack: Vec<&AgentId> = direct.iter().collect();
            while let Some(agent) = stack.pop() {
                if needed.contains(&agent) {
                    continue;
                }
                needed.push(agent);
                if let Some(unit) = by_agent.get(agent) {
                    stack.extend(unit.depends_on.iter());
                }
            }
            let mut committed: Vec<_> = needed
                .iter()
                .filter_map(|agent| by_agent.get(agent))
                .filter(|unit| unit.state == UnitState::Committed)
                .collect();
            committed.sort_by_key(|unit| unit.commit_seq);
            // Only these units' patches are read, not the whole run's.
            let agents: Vec<AgentId> = committed.iter().map(|unit| unit.agent_id.clone()).collect();
            let mut found = reader.unit_patches(&lease.run_id, &agents)?;
            let patches: Vec<Vec<u8>> = agents
                .iter()
                .map(|agent| found.remove(agent).unwrap_or_default())
                .collect();
            let dir = tree::unit_tree(
                &cache,
                &lease.run_id,
                &lease.agent_id,
                lease.attempt,
                &base,
                &base_commit,
                &patches,
            )?;
            Ok::<_, UnitError>(dir)
        })
        .await
        .map_err(|error| UnitError::Join(error.to_string()))?
    }

    /// The agent in `dir`, as the local engine runs one attempt; the commit it leads to.
    async fn run_agent(
        &self,
        context: &RunContext,
        lease: &Lease,
        subtask: &Subtask,
        dir: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<Option<UnitCommit>, UnitError> {
        let spec = agent_spec(subtask);
        let mode = subtask.mode;
        let mut config = agent_config(&context.config, mode);
        config.on_call = Some(model_call_hook(
            self.store.clone(),
            lease.run_id.clone(),
            lease.agent_id.clone(),
            lease.attempt,
            mode,
            context.config.model_for_mode(mode),
        ));
        self.store
            .start_agent(AgentStart {
                run_id: lease.run_id.clone(),
                agent_id: lease.agent_id.clone(),
                attempt: lease.attempt,
                task_description: subtask.description.clone(),
                mode,
                model: Some(config.model.clone()),
                escalated: false,
                started_at: SystemTime::now(),
            })
            .await?;
        let toolbox = ScopePolicy::from_config(&context.config, &spec)
            .map_err(|error| error.to_string())
            .and_then(|policy| {
                Toolbox::with_facts(
                    dir,
                    policy,
                    SandboxConfig::default(),
                    ToolLimits::default(),
                    &RepoFacts::scan(dir),
                )
                .map_err(|error| error.to_string())
            });
        let toolbox = match toolbox {
            Ok(toolbox) => toolbox,
            Err(message) => return Ok(Some(self.commit(lease, None, message, Vec::new()))),
        };
        let outcome = run_agent_gated(&context.fleet, &toolbox, &spec, &config, None, cancel).await;
        queue_denials(&self.store, &lease.run_id, &outcome, lease.attempt);
        store_tool_calls(
            &self.store,
            &lease.run_id,
            &lease.agent_id,
            &outcome,
            lease.attempt,
        )
        .await;
        if cancel.is_cancelled() {
            return Ok(None);
        }
        let succeeded = outcome.status == LoopStatus::Success && outcome.flags.is_empty();
        if !succeeded {
            let message = failure_text(&outcome);
            return Ok(Some(self.commit(
                lease,
                Some(&outcome),
                message,
                Vec::new(),
            )));
        }
        let scope = PathSet::new(&spec.scope).map_err(|error| TreeError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        })?;
        let owned = dir.to_path_buf();
        let patch = tokio::task::spawn_blocking(move || tree::scope_patch(&owned, &scope))
            .await
            .map_err(|error| UnitError::Join(error.to_string()))??;
        Ok(Some(self.commit(
            lease,
            Some(&outcome),
            String::new(),
            patch,
        )))
    }

    /// The commit of a unit: a success when `error` is empty.
    fn commit(
        &self,
        lease: &Lease,
        outcome: Option<&AgentOutcome>,
        error: String,
        patch: Vec<u8>,
    ) -> UnitCommit {
        let succeeded = error.is_empty();
        let status = if succeeded {
            AgentStatus::Success
        } else {
            AgentStatus::Failure
        };
        let finish = AgentFinish {
            run_id: lease.run_id.clone(),
            agent_id: lease.agent_id.clone(),
            attempt: lease.attempt,
            status,
            files_accessed: outcome
                .map(|outcome| outcome.receipts.files_accessed().into_iter().collect())
                .unwrap_or_default(),
            tools_called: outcome
                .map(|outcome| outcome.receipts.tools_called.clone())
                .unwrap_or_default(),
            input_tokens: outcome.map_or(0, |outcome| outcome.input_tokens),
            output_tokens: outcome.map_or(0, |outcome| outcome.output_tokens),
            cache_read_tokens: outcome.map_or(0, |outcome| outcome.cache_read_tokens),
            cache_write_tokens: outcome.map_or(0, |outcome| outcome.cache_write_tokens),
            cost_usd: outcome.map_or(0.0, |outcome| outcome.dollars),
            cache_saved_usd: outcome.map_or(0.0, |outcome| outcome.cache_saved),
            error: (!succeeded).then(|| error.clone()),
            checkpoint: None,
            ended_at: SystemTime::now(),
        };
        UnitCommit {
            lease: lease.clone(),
            succeeded,
            patch,
            outcome: json!({
                "worker": self.options.owner,
                "result": outcome.and_then(|outcome| outcome.result.clone()),
                "error": (!succeeded).then_some(error),
            }),
            finish,
            other_finishes: Vec::new(),
            at: SystemTime::now(),
        }
    }

    /// A unit that could not be run: its start row (if none yet) and a failure to commit.
    async fn failure(&self, lease: &Lease, message: String) -> Option<UnitCommit> {
        let start = AgentStart {
            run_id: lease.run_id.clone(),
            agent_id: lease.agent_id.clone(),
            attempt: lease.attempt,
            task_description: String::new(),
            mode: crate::config::Mode::Default,
            model: None,
            escalated: false,
            started_at: SystemTime::now(),
        };
        match self.store.start_agent(start).await {
            Ok(()) | Err(StoreError::AgentExists { .. }) => {}
            Err(error) => {
                self.note_error(error.to_string());
                return None;
            }
        }
        Some(self.commit(lease, None, message, Vec::new()))
    }
}
