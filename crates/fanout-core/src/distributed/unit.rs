//! One leased unit on a worker, from its first attempt to its commit: the agent tried as
//! hard as a local run tries it.
//!
//! Each attempt starts from the base: a unit without dependencies in the run's shared tree
//! ([`super::shared_tree`], its scope put back after an attempt that did not commit), a unit
//! with dependencies in a fresh tree of its own ([`super::tree`]: the base, then the
//! dependencies' committed patches in commit order; a new directory per attempt, deleted
//! off the runtime's threads). The agent runs with the engine's own scope policy, toolbox,
//! sandbox, limits and records (model calls as they are answered, tool calls, denials). Whether it succeeded, and what follows when it did
//! not, is the local engine's rule ([`crate::attempt::next_try`]): a `fast` agent
//! whose result fails validation, or that reports it did not finish, gets one attempt on
//! `default` (escalated); a provider error gets another attempt while fewer than
//! `max_attempts` were made under this lease. A failed attempt's change is thrown away, so
//! its row says `rollback` if it had changed something, as a local one does.
//!
//! Attempt numbers. The first attempt is the lease's. Each further one is started by
//! [`Store::next_unit_attempt`](crate::store::Store::next_unit_attempt): the last attempt's
//! finish row, the unit's attempt counter moved up by one and the new start row, in one
//! transaction. A takeover by another worker adds one to that counter, so it never reuses a
//! number this worker recorded. The last attempt's finish row is committed with the unit
//! ([`Store::commit_unit`](crate::store::Store::commit_unit)): its patch when it
//! succeeded, none when it failed.
//!
//! A store answer lost on its way (the connection dropped after the store applied the
//! operation) is told apart from a lost lease by reading the unit back: a commit or a next
//! attempt that did land is taken as done.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::handler::UnitContext;
use super::patience::Gave;
use super::tree::{self, TreeError};
use super::worker::{RunContext, UnitError, Worker};
use crate::agent::{AgentOutcome, run_agent_gated};
use crate::attempt::{
    NextTry, Tries, agent_config, agent_spec, failed_status, failure_text, model_call_hook,
    next_try, queue_denials, store_tool_calls, succeeded,
};
use crate::config::Mode;
use crate::ids::AgentId;
use crate::plan::Subtask;
use crate::policy::{AgentSpec, PathSet, ScopePolicy};
use crate::sandbox::SandboxConfig;
use crate::store::{AgentFinish, AgentStart, AgentStatus, Lease, StoreError, UnitCommit, UnitKind};
use crate::tools::{RepoFacts, ToolLimits, Toolbox};

/// How one attempt ended.
enum Attempt {
    /// The unit was cancelled (the worker stops, or its lease was lost).
    Cancelled,
    /// The agent succeeded: the patch of its write scope.
    Succeeded {
        outcome: Box<AgentOutcome>,
        patch: Vec<u8>,
    },
    /// It did not (no outcome: its toolbox could not be made).
    Failed {
        outcome: Option<Box<AgentOutcome>>,
        status: AgentStatus,
        error: String,
    },
}

impl Worker {
    /// One leased unit, to its commit (or to nothing, if its lease is lost or the worker
    /// is cancelled).
    pub(super) async fn unit(self: Arc<Self>, lease: Lease, cancel: &CancellationToken) {
        static UNITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // This unit's claim on its scope of the shared tree, if it runs there.
        let token = UNITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let kind = lease.kind;
        let held = Arc::new(tokio::sync::Mutex::new(lease));
        let heartbeat = self.heartbeat(Arc::clone(&held), cancel);
        let result = match (kind, self.options.handlers.get(kind)) {
            (UnitKind::Agent, _) => self.run_unit(&held, token, cancel).await,
            (_, Some(handler)) => {
                let lease = held.lock().await.clone();
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
        let lease = held.lock().await.clone();
        let kept = self.settle(result, &lease, cancel).await;
        if kind == UnitKind::Agent {
            self.leave_shared(&lease, token, kept).await;
        }
    }

    /// Commit what the unit's run came to (or note why there is nothing to commit); whether
    /// a success was committed, so that its change stays in the shared tree.
    async fn settle(
        &self,
        result: Result<Option<UnitCommit>, UnitError>,
        lease: &Lease,
        cancel: &CancellationToken,
    ) -> bool {
        let commit = match result {
            Ok(Some(commit)) => commit,
            Ok(None) | Err(UnitError::Cancelled) => {
                self.note(|report| report.abandoned += 1);
                return false;
            }
            Err(UnitError::Store(StoreError::LeaseLost { .. })) => {
                self.note(|report| report.lost += 1);
                return false;
            }
            Err(UnitError::Unreachable { waited, source }) => {
                self.stop_unreachable(waited, source);
                return false;
            }
            // Could not run it: a failure on record, so the coordinator does not wait on it.
            Err(error) => {
                let message = error.to_string();
                self.note_error(message.clone());
                match self.failure(lease, message, cancel).await {
                    Some(commit) => commit,
                    None => return false,
                }
            }
        };
        if cancel.is_cancelled() {
            self.note(|report| report.abandoned += 1);
            return false;
        }
        let succeeded = commit.succeeded;
        self.commit_unit(commit, cancel).await && succeeded
    }

    /// After a unit of the shared tree: its scope as the base has it unless it committed a
    /// success (`kept`): it failed, was cancelled, lost its lease or could not commit. Then
    /// its claim on the scope is given back.
    async fn leave_shared(&self, lease: &Lease, token: u64, kept: bool) {
        let Some(context) = self.known_context(&lease.run_id).await else {
            return;
        };
        let Some(subtask) = context
            .plan
            .subtasks
            .iter()
            .find(|subtask| AgentId::from(&subtask.task_id) == lease.agent_id)
            .cloned()
        else {
            return;
        };
        if !kept {
            self.revert_shared(&context, &subtask, token, unit_name(lease))
                .await;
        }
        if let Some(tree) = context.shared.as_ref() {
            tree.release(subtask.task_id.as_str(), token);
        }
    }

    /// Put the scope of `subtask` in the shared tree back as the base has it, if the unit
    /// runs there. A tree that cannot be put back is an error of the worker's report.
    async fn revert_shared(
        &self,
        context: &Arc<RunContext>,
        subtask: &Subtask,
        token: u64,
        name: String,
    ) {
        let agent = subtask.task_id.as_str();
        if !context
            .shared
            .as_ref()
            .is_some_and(|tree| tree.holds(agent, token))
        {
            return;
        }
        let scope = match PathSet::new(&agent_spec(subtask).scope) {
            Ok(scope) => scope,
            Err(error) => {
                self.note_error(error.to_string());
                return;
            }
        };
        let owned = Arc::clone(context);
        let reverted = tokio::task::spawn_blocking(move || {
            owned
                .shared
                .as_ref()
                .map_or(Ok(()), |tree| tree.revert(&scope, &name))
        })
        .await;
        match reverted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.note_error(format!(
                "cannot put back the scope of {} in the shared tree: {error}",
                subtask.task_id
            )),
            Err(error) => self.note_error(error.to_string()),
        }
    }

    /// The unit's attempts; the commit to make, or `None` if the unit was cancelled.
    async fn run_unit(
        &self,
        held: &tokio::sync::Mutex<Lease>,
        token: u64,
        cancel: &CancellationToken,
    ) -> Result<Option<UnitCommit>, UnitError> {
        let mut lease = held.lock().await.clone();
        let context = self.context(&lease.run_id, cancel).await?;
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
        let spec = agent_spec(&subtask);
        let mut tries = Tries {
            mode: subtask.mode,
            escalated: false,
            made: 0,
            max_attempts: self.options.max_attempts,
        };
        self.start_first(&self.start_row(&context, &lease, &subtask, tries), cancel)
            .await?;
        // A unit without dependencies runs in the run's shared tree; one with dependencies in
        // a tree of its own per attempt, with their patches.
        let shared = subtask.depends_on.is_empty()
            && context
                .shared
                .as_ref()
                .is_some_and(|tree| tree.claim(subtask.task_id.as_str(), token));
        loop {
            tries.made += 1;
            self.note(|report| report.attempts += 1);
            let dir = match context.shared.as_ref().filter(|_| shared) {
                Some(tree) => tree.dir().to_path_buf(),
                None => self.materialise(&context, &lease, &subtask, cancel).await?,
            };
            let attempt = self
                .attempt(&context, &lease, &spec, tries.mode, &dir, shared, cancel)
                .await;
            if !shared {
                // Off the runtime's threads: deleting a tree of many files takes a while.
                drop(tokio::task::spawn_blocking(move || tree::remove(&dir)));
            }
            let (outcome, status, error) = match attempt? {
                Attempt::Cancelled => return Ok(None),
                Attempt::Succeeded { outcome, patch } => {
                    return Ok(Some(self.commit(
                        &lease,
                        Some(&outcome),
                        AgentStatus::Success,
                        None,
                        patch,
                    )));
                }
                Attempt::Failed {
                    outcome,
                    status,
                    error,
                } => (outcome, status, error),
            };
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let next = outcome
                .as_ref()
                .map_or(NextTry::GiveUp, |outcome| next_try(&outcome.status, tries));
            match next {
                NextTry::GiveUp => {
                    return Ok(Some(self.commit(
                        &lease,
                        outcome.as_deref(),
                        status,
                        Some(error),
                        Vec::new(),
                    )));
                }
                NextTry::Escalate => {
                    tries.mode = Mode::Default;
                    tries.escalated = true;
                    self.note(|report| report.escalated += 1);
                }
                NextTry::Again => self.note(|report| report.retried += 1),
            }
            // The next attempt starts from the base, as a fresh tree would.
            self.revert_shared(&context, &subtask, token, unit_name(&lease))
                .await;
            let finish = self.finish_row(&lease, outcome.as_deref(), status, Some(error));
            let start = self.start_row(&context, &lease, &subtask, tries);
            lease = self.next_attempt(held, finish, start, cancel).await?;
        }
    }

    /// The start row of an attempt under `lease` in `tries`' mode.
    fn start_row(
        &self,
        context: &RunContext,
        lease: &Lease,
        subtask: &Subtask,
        tries: Tries,
    ) -> AgentStart {
        AgentStart {
            run_id: lease.run_id.clone(),
            agent_id: lease.agent_id.clone(),
            attempt: lease.attempt,
            task_description: subtask.description.clone(),
            mode: tries.mode,
            model: Some(context.config.model_for_mode(tries.mode).model.clone()),
            escalated: tries.escalated,
            started_at: SystemTime::now(),
        }
    }

    /// The lease's first attempt on record. A row already there after a send whose answer
    /// was lost is that send's.
    async fn start_first(
        &self,
        start: &AgentStart,
        cancel: &CancellationToken,
    ) -> Result<(), UnitError> {
        match self
            .persist(cancel, || self.store.start_agent(start.clone()))
            .await
        {
            Ok(())
            | Err(Gave::Refused {
                error: StoreError::AgentExists { .. },
                after_retry: true,
            }) => Ok(()),
            Err(gave) => Err(gave.into()),
        }
    }

    /// End the attempt `held` names and start the next under the same lease (see the
    /// module docs); the lease as it now is, also left in `held` for the heartbeat.
    async fn next_attempt(
        &self,
        held: &tokio::sync::Mutex<Lease>,
        finish: AgentFinish,
        start: AgentStart,
        cancel: &CancellationToken,
    ) -> Result<Lease, UnitError> {
        let mut current = held.lock().await;
        let sent = current.clone();
        let next = match self
            .persist(cancel, || {
                self.store
                    .next_unit_attempt(&sent, finish.clone(), start.clone())
            })
            .await
        {
            Ok(next) => next,
            Err(Gave::Refused {
                error: error @ StoreError::LeaseLost { .. },
                after_retry: true,
            }) => {
                let landed = Lease {
                    attempt: sent.attempt + 1,
                    ..sent.clone()
                };
                if !self.holds(&landed, cancel).await {
                    return Err(UnitError::Store(error));
                }
                landed
            }
            Err(gave) => return Err(gave.into()),
        };
        *current = next.clone();
        Ok(next)
    }

    /// Whether the store shows `lease` as it is: the unit leased to its owner at its attempt
    /// (false when that cannot be read either).
    async fn holds(&self, lease: &Lease, cancel: &CancellationToken) -> bool {
        self.unit_row(lease, cancel).await.is_some_and(|unit| {
            unit.state == crate::store::UnitState::Leased
                && unit.attempt == lease.attempt
                && unit.lease_owner.as_deref() == Some(lease.owner.as_str())
        })
    }

    async fn unit_row(
        &self,
        lease: &Lease,
        cancel: &CancellationToken,
    ) -> Option<crate::store::UnitRow> {
        let run = lease.run_id.clone();
        let units = self
            .read(cancel, move |reader| reader.unit_states(&run))
            .await;
        units
            .ok()?
            .into_iter()
            .find(|unit| unit.agent_id == lease.agent_id)
    }

    /// The unit's tree for the lease's attempt: the base, then its dependencies' committed
    /// patches in commit order.
    async fn materialise(
        &self,
        context: &RunContext,
        lease: &Lease,
        subtask: &Subtask,
        cancel: &CancellationToken,
    ) -> Result<std::path::PathBuf, UnitError> {
        let run = lease.run_id.clone();
        let units = self
            .read(cancel, move |reader| reader.unit_states(&run))
            .await?;
        // Every transitive dependency: its work is in the tree the agent expects.
        let by_agent: std::collections::HashMap<&AgentId, _> =
            units.iter().map(|unit| (&unit.agent_id, unit)).collect();
        let mut needed: Vec<&AgentId> = Vec::new();
        let direct: Vec<AgentId> = subtask.depends_on.iter().map(AgentId::from).collect();
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
            .filter(|unit| unit.state == crate::store::UnitState::Committed)
            .collect();
        committed.sort_by_key(|unit| unit.commit_seq);
        // Only these units' patches are read, not the whole run's.
        let agents: Vec<AgentId> = committed.iter().map(|unit| unit.agent_id.clone()).collect();
        let run = lease.run_id.clone();
        let wanted = agents.clone();
        let mut found = self
            .read(cancel, move |reader| reader.unit_patches(&run, &wanted))
            .await?;
        let patches: Vec<Vec<u8>> = agents
            .iter()
            .map(|agent| found.remove(agent).unwrap_or_default())
            .collect();
        let cache = self.options.cache.clone();
        let base = context.base.clone();
        let base_commit = context.base_commit.clone();
        let lease = lease.clone();
        tokio::task::spawn_blocking(move || {
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

    /// One attempt of the agent in `dir` on `mode`, as the local engine runs one; its start
    /// row is on record.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        context: &Arc<RunContext>,
        lease: &Lease,
        spec: &AgentSpec,
        mode: Mode,
        dir: &Path,
        shared: bool,
        cancel: &CancellationToken,
    ) -> Result<Attempt, UnitError> {
        let mut config = agent_config(&context.config, mode);
        config.on_call = Some(model_call_hook(
            self.store.clone(),
            lease.run_id.clone(),
            lease.agent_id.clone(),
            lease.attempt,
            mode,
            context.config.model_for_mode(mode),
        ));
        let scanned;
        let facts = match context.shared.as_ref().filter(|_| shared) {
            Some(tree) => tree.facts(),
            None => {
                scanned = RepoFacts::scan(dir);
                &scanned
            }
        };
        let toolbox = ScopePolicy::from_config(&context.config, spec)
            .map_err(|error| error.to_string())
            .and_then(|policy| {
                Toolbox::with_facts(
                    dir,
                    policy,
                    SandboxConfig::default(),
                    ToolLimits::default(),
                    facts,
                )
                .map_err(|error| error.to_string())
            });
        let toolbox = match toolbox {
            Ok(toolbox) => toolbox,
            Err(error) => {
                return Ok(Attempt::Failed {
                    outcome: None,
                    status: AgentStatus::Failure,
                    error,
                });
            }
        };
        // The scope as the agent finds it, when its patch can be written without git.
        let scope = PathSet::new(&spec.scope);
        let snapshot = context
            .shared
            .as_ref()
            .filter(|_| shared)
            .zip(scope.as_ref().ok())
            .and_then(|(tree, scope)| tree.snapshot(scope));
        let outcome = run_agent_gated(&context.fleet, &toolbox, spec, &config, None, cancel).await;
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
            return Ok(Attempt::Cancelled);
        }
        if !succeeded(&outcome) {
            return Ok(Attempt::Failed {
                status: failed_status(!toolbox.journal().is_empty()),
                error: failure_text(&outcome),
                outcome: Some(Box::new(outcome)),
            });
        }
        let scope = scope.map_err(|error| TreeError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other(error.to_string()),
        })?;
        let owned = dir.to_path_buf();
        let context = Arc::clone(context);
        let name = unit_name(lease);
        let patch = tokio::task::spawn_blocking(move || match context.shared.as_ref() {
            Some(tree) if shared => tree.patch(&scope, &name, snapshot.as_ref()),
            _ => tree::scope_patch(&owned, &scope),
        })
        .await
        .map_err(|error| UnitError::Join(error.to_string()))??;
        Ok(Attempt::Succeeded {
            outcome: Box::new(outcome),
            patch,
        })
    }

    /// The finish row of the lease's attempt.
    fn finish_row(
        &self,
        lease: &Lease,
        outcome: Option<&AgentOutcome>,
        status: AgentStatus,
        error: Option<String>,
    ) -> AgentFinish {
        AgentFinish {
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
            error,
            checkpoint: None,
            ended_at: SystemTime::now(),
        }
    }

    /// The commit of a unit: a success when `status` is, with the last attempt's finish row.
    fn commit(
        &self,
        lease: &Lease,
        outcome: Option<&AgentOutcome>,
        status: AgentStatus,
        error: Option<String>,
        patch: Vec<u8>,
    ) -> UnitCommit {
        let finish = self.finish_row(lease, outcome, status, error.clone());
        UnitCommit {
            lease: lease.clone(),
            succeeded: status == AgentStatus::Success,
            patch,
            outcome: json!({
                "worker": self.options.owner,
                "result": outcome.and_then(|outcome| outcome.result.clone()),
                "error": error,
            }),
            finish,
            other_finishes: Vec::new(),
            at: SystemTime::now(),
        }
    }

    /// A unit that could not be run: its start row (if none yet) and a failure to commit.
    async fn failure(
        &self,
        lease: &Lease,
        message: String,
        cancel: &CancellationToken,
    ) -> Option<UnitCommit> {
        let start = AgentStart {
            run_id: lease.run_id.clone(),
            agent_id: lease.agent_id.clone(),
            attempt: lease.attempt,
            task_description: String::new(),
            mode: Mode::Default,
            model: None,
            escalated: false,
            started_at: SystemTime::now(),
        };
        match self
            .persist(cancel, || self.store.start_agent(start.clone()))
            .await
        {
            Ok(())
            | Err(Gave::Refused {
                error: StoreError::AgentExists { .. },
                ..
            }) => {}
            Err(Gave::Unreachable { waited, last }) => {
                self.stop_unreachable(waited, Box::new(last));
                return None;
            }
            Err(Gave::Cancelled) => return None,
            Err(Gave::Refused { error, .. }) => {
                self.note_error(error.to_string());
                return None;
            }
        }
        Some(self.commit(lease, None, AgentStatus::Failure, Some(message), Vec::new()))
    }

    /// Commit the unit, waiting out a store that cannot be reached for a moment. A refusal
    /// after a lost answer is checked against the unit: the commit may have landed.
    async fn commit_unit(&self, commit: UnitCommit, cancel: &CancellationToken) -> bool {
        let succeeded = commit.succeeded;
        let lease = commit.lease.clone();
        let result = self
            .persist(cancel, || self.store.commit_unit(commit.clone()))
            .await;
        let committed = match result {
            Ok(_) => true,
            Err(Gave::Refused {
                error: StoreError::LeaseLost { .. },
                after_retry,
            }) => after_retry && self.committed(&lease, cancel).await,
            Err(Gave::Refused { error, .. }) => {
                self.note_error(error.to_string());
                return false;
            }
            Err(Gave::Unreachable { waited, last }) => {
                self.stop_unreachable(waited, Box::new(last));
                return false;
            }
            Err(Gave::Cancelled) => {
                self.note(|report| report.abandoned += 1);
                return false;
            }
        };
        match (committed, succeeded) {
            (true, true) => self.note(|report| report.committed += 1),
            (true, false) => self.note(|report| report.failed += 1),
            (false, _) => self.note(|report| report.lost += 1),
        }
        committed
    }

    /// Whether the store shows the unit committed under `lease` (its attempt, its owner).
    async fn committed(&self, lease: &Lease, cancel: &CancellationToken) -> bool {
        self.unit_row(lease, cancel).await.is_some_and(|unit| {
            unit.state.is_final()
                && unit.attempt == lease.attempt
                && unit.lease_owner.as_deref() == Some(lease.owner.as_str())
        })
    }
}

/// A unit's attempt as a name for files of its own (`<agent>-<attempt>`).
fn unit_name(lease: &Lease) -> String {
    format!("{}-{}", lease.agent_id, lease.attempt)
}
