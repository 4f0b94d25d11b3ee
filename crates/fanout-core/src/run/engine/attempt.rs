//! One agent's task, to its final record: each attempt's start (pre-image and start row
//! before any tool runs), the agent loop through the shared fleet, then its end row; a
//! failed attempt is undone from its journal and pre-image, then [`crate::attempt::next_try`]
//! decides what follows, as for a worker's agent: a `fast` result that fails validation is
//! retried once on `default` (escalated), and transient failures are retried up to
//! `max_attempts`.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::FutureExt;
use tokio_util::sync::CancellationToken;

use super::records::{record, record_denials, record_tool_calls, usage_recorder};
use super::scope::{LeaveInFlight, StartFuture, restore_scope, start_attempt, sync_scope};
use super::{EngineEvent, Shared};
use crate::agent::{AgentConfig, AgentOutcome, run_agent_gated};
use crate::attempt::{
    NextTry, Tries, agent_config, agent_spec, failed_status, failure_text, next_try,
    succeeded as attempt_succeeded,
};
use crate::config::Mode;
use crate::ids::AgentId;
use crate::plan::{Subtask, TaskId};
use crate::policy::{AgentSpec, ScopePolicy};
use crate::retry::lock;
use crate::run::preimage::Preimage;
use crate::run::scheduler::TaskOutcome;
use crate::store::{AgentFinish, AgentStart, AgentStatus};
use crate::tools::fs::FileState;
use crate::tools::{ToolLimits, Toolbox};

/// Run one sub-task to its final record: retries, escalation and rollback included.
pub(super) async fn run_one(
    shared: Arc<Shared>,
    subtask: Subtask,
    cancel: CancellationToken,
) -> TaskOutcome {
    let mut agent = AgentTask::new(shared, subtask);
    // However the task ends, later checkpoints take its scope as it is.
    let _leave = LeaveInFlight {
        scopes: Arc::clone(&agent.shared.in_flight),
        agent_id: AgentId::from(&agent.agent_id),
    };
    loop {
        match agent.attempt(&cancel).await {
            Next::Done(outcome) => return outcome,
            Next::Escalate => {
                agent.mode = Mode::Default;
                agent.escalated = true;
            }
            Next::Retry => {}
        }
    }
}

/// What follows an attempt.
enum Next {
    /// The task is over.
    Done(TaskOutcome),
    /// Another attempt, on `default`.
    Escalate,
    /// Another attempt, as before (a transient failure).
    Retry,
}

/// One agent across its attempts.
struct AgentTask {
    shared: Arc<Shared>,
    subtask: Subtask,
    agent_id: TaskId,
    spec: AgentSpec,
    mode: Mode,
    escalated: bool,
    /// The number of the current attempt.
    attempt: u32,
    /// Dollars and tokens over this process's attempts.
    spent: f64,
    tokens: u64,
    /// Input tokens over this process's attempts, and those of them read from the cache.
    input_tokens: u64,
    cache_read_tokens: u64,
    /// The pre-image of the write scope: a resumed run gets the one recorded before the
    /// first attempt; otherwise the first attempt's start takes it.
    known_preimage: Option<Arc<Preimage>>,
}

impl AgentTask {
    fn new(shared: Arc<Shared>, subtask: Subtask) -> AgentTask {
        let agent_id = subtask.task_id.clone();
        let spec = agent_spec(&subtask);
        // An agent escalated to `default` by an earlier process of the run stays there.
        let escalated = shared.escalated.contains(&agent_id);
        let mode = if escalated {
            Mode::Default
        } else {
            subtask.mode
        };
        let attempt: u32 = shared
            .first_attempt
            .get(&agent_id)
            .copied()
            .unwrap_or(1)
            .saturating_sub(1);
        let known_preimage = lock(&shared.preimages).remove(&agent_id);
        AgentTask {
            shared,
            subtask,
            agent_id,
            spec,
            mode,
            escalated,
            attempt,
            spent: 0.0,
            tokens: 0,
            input_tokens: 0,
            cache_read_tokens: 0,
            known_preimage,
        }
    }

    /// One attempt: started, run, then ended on record.
    async fn attempt(&mut self, cancel: &CancellationToken) -> Next {
        self.attempt += 1;
        let (config, start) = self.start();
        let toolbox = match self.toolbox() {
            Ok(toolbox) => toolbox,
            Err(message) => return Next::Done(self.without_toolbox(start, message).await),
        };
        let gate: crate::agent::StartGate =
            Box::pin(start.clone().map(|started| started.map(drop)));
        let inputs = &self.shared.inputs;
        let outcome = run_agent_gated(
            &inputs.fleet,
            &toolbox,
            &self.spec,
            &config,
            Some(gate),
            cancel,
        )
        .await;
        let preimage = match start.await {
            Ok(preimage) => preimage,
            // No start row: none of its tools ran, so there is nothing to undo or record.
            Err(reason) => {
                let mut not_started =
                    finish_without_running(&self.shared, &self.agent_id, self.mode, reason);
                // Its model calls were made and paid for all the same.
                not_started.cost = self.spent + outcome.dollars;
                return Next::Done(not_started);
            }
        };
        self.known_preimage = Some(Arc::clone(&preimage));
        self.spent += outcome.dollars;
        self.tokens += outcome.input_tokens + outcome.output_tokens;
        self.input_tokens += outcome.input_tokens;
        self.cache_read_tokens += outcome.cache_read_tokens;
        record_denials(&self.shared, &self.agent_id, &outcome, self.attempt);
        record_tool_calls(&self.shared, &self.agent_id, &outcome, self.attempt).await;
        self.conclude(&outcome, &toolbox, &preimage, cancel).await
    }

    /// The attempt's model configuration, its `AgentStarted` event, and its start (the
    /// pre-image and the start row being made durable, see [`start_attempt`]).
    fn start(&self) -> (AgentConfig, StartFuture) {
        let shared = &self.shared;
        let mut config = agent_config(&shared.inputs.config, self.mode);
        config.on_call = Some(usage_recorder(
            shared,
            &self.agent_id,
            self.attempt,
            self.mode,
        ));
        let started_at = SystemTime::now();
        lock(&shared.events).push(EngineEvent::AgentStarted {
            agent_id: self.agent_id.clone(),
            attempt: self.attempt,
            mode: self.mode,
        });
        let start_row = AgentStart {
            run_id: shared.inputs.run_id.clone(),
            agent_id: AgentId::from(&self.agent_id),
            attempt: self.attempt,
            task_description: self.subtask.description.clone(),
            mode: self.mode,
            model: Some(config.model.clone()),
            escalated: self.escalated,
            started_at,
        };
        // Nothing of the agent may touch the tree before its start is on record: its tool
        // calls wait for this gate, its first model call does not.
        let start = start_attempt(
            shared,
            start_row,
            self.known_preimage.clone(),
            &self.spec.scope,
        );
        (config, start)
    }

    /// The agent's toolbox, confined to its scopes.
    fn toolbox(&self) -> Result<Toolbox, String> {
        let inputs = &self.shared.inputs;
        ScopePolicy::from_config(&inputs.config, &self.spec)
            .map_err(|e| e.to_string())
            .and_then(|policy| {
                Toolbox::with_facts(
                    &inputs.repo,
                    policy,
                    inputs.sandbox.clone(),
                    ToolLimits::default(),
                    &self.shared.facts,
                )
                .map_err(|e| e.to_string())
            })
    }

    /// The end of an attempt whose toolbox could not be made: a failure, on record once its
    /// start is.
    async fn without_toolbox(&self, start: StartFuture, message: String) -> TaskOutcome {
        if let Err(reason) = start.await {
            return finish_without_running(&self.shared, &self.agent_id, self.mode, reason);
        }
        let finish = AgentFinish {
            run_id: self.shared.inputs.run_id.clone(),
            agent_id: AgentId::from(&self.agent_id),
            attempt: self.attempt,
            status: AgentStatus::Failure,
            files_accessed: Vec::new(),
            tools_called: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: 0.0,
            cache_saved_usd: 0.0,
            error: Some(message.clone()),
            checkpoint: None,
            ended_at: SystemTime::now(),
        };
        let _ = self.shared.store.finish_agent(finish).await;
        self.fail(AgentStatus::Failure, message)
    }

    /// After the agent loop: a success made durable, a failure undone, the end row written,
    /// and what comes next.
    async fn conclude(
        &self,
        outcome: &AgentOutcome,
        toolbox: &Toolbox,
        preimage: &Arc<Preimage>,
        cancel: &CancellationToken,
    ) -> Next {
        let inputs = &self.shared.inputs;
        // Decided before the undo, on what the agent did (a worker asks the same rule).
        let next = next_try(
            &outcome.status,
            Tries {
                mode: self.mode,
                escalated: self.escalated,
                made: self.attempt,
                max_attempts: inputs.max_attempts,
            },
        );
        let (succeeded, sync_failure) = self.make_durable(outcome, preimage).await;
        let destructive = if succeeded {
            deleted_something(&inputs.repo, toolbox)
        } else {
            false
        };
        let (status, error) = if succeeded {
            (AgentStatus::Success, None)
        } else {
            self.undo(outcome, toolbox, preimage, sync_failure).await
        };
        if let Err(reason) = self
            .write_end(outcome, toolbox, status, error.clone(), succeeded)
            .await
        {
            return Next::Done(self.fail(AgentStatus::Failure, reason));
        }
        if succeeded {
            self.record(AgentStatus::Success);
            // Durable and recorded: the checkpoint this completion may trigger shows it.
            self.shared.in_flight.leave(&AgentId::from(&self.agent_id));
            checkpoint_after_completion(&self.shared, destructive);
            return Next::Done(TaskOutcome {
                succeeded: true,
                cost: self.spent,
                reason: String::new(),
            });
        }
        if cancel.is_cancelled() {
            return Next::Done(self.fail(status, "cancelled".into()));
        }
        match next {
            NextTry::Escalate => Next::Escalate,
            NextTry::Again => Next::Retry,
            NextTry::GiveUp => Next::Done(self.fail(status, error.unwrap_or_default())),
        }
    }

    /// Whether the attempt succeeded: its loop did, and its write scope is synced to disk;
    /// if the sync failed, why.
    async fn make_durable(
        &self,
        outcome: &AgentOutcome,
        preimage: &Arc<Preimage>,
    ) -> (bool, Option<String>) {
        let mut succeeded = attempt_succeeded(outcome);
        let mut sync_failure = None;
        if succeeded {
            // Its edits reach the disk before its success row does (power loss).
            if let Err(error) = sync_scope(&self.shared, preimage).await {
                succeeded = false;
                sync_failure = Some(error);
            }
        }
        (succeeded, sync_failure)
    }

    /// Undo a failed attempt (its journal, then its pre-image): its status (`rollback` if it
    /// had changed something) and the error of its row.
    async fn undo(
        &self,
        outcome: &AgentOutcome,
        toolbox: &Toolbox,
        preimage: &Arc<Preimage>,
        sync_failure: Option<String>,
    ) -> (AgentStatus, Option<String>) {
        let undo = toolbox.undo();
        let changed = !toolbox.journal().is_empty();
        let mut message = match &sync_failure {
            Some(error) => format!("cannot write its edits to disk: {error}"),
            None => failure_text(outcome),
        };
        if !undo.failed.is_empty() {
            message.push_str(&format!(
                "; could not undo: {}",
                undo_failures(&undo.failed)
            ));
        }
        // The journal undoes what the tools did; the pre-image also catches what they
        // could not journal (and is what a resume would restore).
        if let Err(error) = restore_scope(&self.shared.inputs.repo, preimage).await {
            message.push_str(&format!("; could not restore its pre-image: {error}"));
        }
        (failed_status(changed), Some(message))
    }

    /// The attempt's end row. If it cannot be written, the agent's changes must not stay
    /// either: a success is undone, and the error says why (and what could not be undone).
    async fn write_end(
        &self,
        outcome: &AgentOutcome,
        toolbox: &Toolbox,
        status: AgentStatus,
        error: Option<String>,
        succeeded: bool,
    ) -> Result<(), String> {
        let files_accessed: Vec<String> = outcome.receipts.files_accessed().into_iter().collect();
        let finish = AgentFinish {
            run_id: self.shared.inputs.run_id.clone(),
            agent_id: AgentId::from(&self.agent_id),
            attempt: self.attempt,
            status,
            files_accessed,
            tools_called: outcome.receipts.tools_called.clone(),
            input_tokens: outcome.input_tokens,
            output_tokens: outcome.output_tokens,
            cache_read_tokens: outcome.cache_read_tokens,
            cache_write_tokens: outcome.cache_write_tokens,
            cost_usd: outcome.dollars,
            cache_saved_usd: outcome.cache_saved,
            error,
            checkpoint: None,
            ended_at: SystemTime::now(),
        };
        if let Err(store_error) = self.shared.store.finish_agent(finish).await {
            // Its record could not be written: the agent's changes must not stay either.
            let undo = if succeeded {
                toolbox.undo().failed
            } else {
                Vec::new()
            };
            let mut reason = format!("run store: {store_error}");
            if !undo.is_empty() {
                reason.push_str(&format!("; could not undo: {}", undo_failures(&undo)));
            }
            return Err(reason);
        }
        Ok(())
    }

    /// The agent's record in this process, with its current mode and totals.
    fn record(&self, status: AgentStatus) {
        record(
            &self.shared,
            &self.agent_id,
            status,
            self.mode,
            self.tokens,
            self.spent,
            self.escalated,
            (self.input_tokens, self.cache_read_tokens),
        );
    }

    /// The task ends unsuccessfully with `status` on record.
    fn fail(&self, status: AgentStatus, reason: String) -> TaskOutcome {
        self.record(status);
        TaskOutcome {
            succeeded: false,
            cost: self.spent,
            reason,
        }
    }
}

fn finish_without_running(
    shared: &Shared,
    agent_id: &TaskId,
    mode: Mode,
    reason: String,
) -> TaskOutcome {
    record(
        shared,
        agent_id,
        AgentStatus::Failure,
        mode,
        0,
        0.0,
        false,
        (0, 0),
    );
    TaskOutcome {
        succeeded: false,
        cost: 0.0,
        reason,
    }
}

fn undo_failures(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(path, why)| format!("{path} ({why})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the agent deleted a file (deletions and renames tighten the checkpoint interval).
fn deleted_something(repo: &Path, toolbox: &Toolbox) -> bool {
    toolbox.journal().entries().iter().any(|entry| match entry {
        crate::agent::JournalEntry::File { path, prior } => {
            matches!(prior, FileState::File { .. }) && !repo.join(path).exists()
        }
        crate::agent::JournalEntry::CreatedDir { .. } => false,
    })
}

/// Tell the checkpoint worker about a durable completion; never waits for git.
fn checkpoint_after_completion(shared: &Shared, destructive: bool) {
    if let Some(worker) = lock(&shared.checkpoints).as_ref() {
        worker.completed(destructive);
    }
}
