//! One agent attempt's inputs and records, the same for the local engine (`crate::run`) and
//! a `fanout worker` (`crate::distributed`): the attempt's model configuration and
//! permissions from its sub-task, the hook that records each model call as it is answered,
//! the rows of its tool calls and denials, and why it failed, in words; and the rule that
//! says whether an attempt succeeded and, when it did not, whether the agent gets another
//! ([`next_try`]), so an agent is tried as hard on a worker as in a local run.
//!
//! It decides and describes only: starting the next attempt (its row, its tree or
//! pre-image) and recording this one's end are the caller's.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::agent::{AgentConfig, AgentOutcome, CallHook, CallUsage, LoopStatus};
use crate::config::{Config, Mode, ModelSpec};
use crate::ids::{AgentId, RunId};
use crate::plan::Subtask;
use crate::policy::AgentSpec;
use crate::provider::genai::{CallAnswer, CallContent};
use crate::store::{AgentStatus, DenialRecord, ModelCall, Store, ToolCallRecord};

/// The model for `mode` and the agent limits from the workflow.
pub fn agent_config(config: &Config, mode: Mode) -> AgentConfig {
    let model = config.model_for_mode(mode);
    let budget = &config.budgets.agent;
    AgentConfig {
        model: model.model.clone(),
        pricing: Some(model.clone()),
        max_tokens_per_turn: 4096,
        max_turns: budget.max_turns,
        max_tokens: budget.max_tokens,
        max_dollars: budget.max_dollars,
        max_wall_time: budget.max_wall_time,
        output_schema: config.output_schema.clone(),
        on_call: None,
        prompt_caching: config.prompt_caching,
    }
}

/// What an agent may do: its write scope (none without a writing tool), read scope, tools.
pub fn agent_spec(subtask: &Subtask) -> AgentSpec {
    // An agent without a writing tool writes nothing, whatever its scope says (its prompt
    // must not tell it otherwise).
    let write = subtask.effective_write_scope().to_vec();
    AgentSpec {
        agent_id: AgentId::from(&subtask.task_id),
        task_id: subtask.task_id.clone(),
        description: subtask.description.clone(),
        scope: write,
        read_scope: Some(subtask.scope.clone()),
        tools: subtask.tools.clone(),
    }
}

/// Why an attempt failed, in the words its end row records.
pub fn failure_text(outcome: &AgentOutcome) -> String {
    let mut text = match &outcome.status {
        LoopStatus::Success => "the result disagrees with what the agent did".to_string(),
        LoopStatus::InvalidResult => "the result was invalid after one repair".to_string(),
        LoopStatus::TurnLimit => "turn limit reached".to_string(),
        LoopStatus::TokenLimit => "token limit reached".to_string(),
        LoopStatus::DollarLimit => "dollar limit reached".to_string(),
        LoopStatus::TimeLimit => "wall-time limit reached".to_string(),
        LoopStatus::Cancelled => "cancelled".to_string(),
        LoopStatus::ProviderError(message) => format!("model API: {message}"),
        LoopStatus::ReportedUnfinished(words) => format!("the agent reported {words}"),
        LoopStatus::StartFailed(message) => message.clone(),
    };
    if !outcome.flags.is_empty() {
        text.push_str(&format!(" ({})", outcome.flags.join("; ")));
    }
    text
}

/// The hook that records each model call of an agent's attempt as a `model_call` event, as
/// it is answered: a local agent's and a worker's alike.
pub fn model_call_hook(
    store: Store,
    run_id: RunId,
    agent_id: AgentId,
    attempt: u32,
    mode: Mode,
    spec: &ModelSpec,
) -> CallHook {
    let (provider, model) = (spec.provider, spec.model.clone());
    // Read once per attempt: content is kept only with the opt-in.
    let capture = crate::env::capture_message_content();
    CallHook(Arc::new(move |usage: &CallUsage| {
        let call = ModelCall {
            attempt,
            turn: usage.turn,
            mode,
            provider,
            model: model.clone(),
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_tokens,
            cache_write_tokens: usage.cache_write_tokens,
            dollars: usage.dollars,
            cache_saved: usage.cache_saved,
            tries: Some(usage.attempts),
            rate_wait_ms: Some(usage.rate_wait.as_millis() as u64),
            rate_limited: Some(usage.rate_limited),
            content: capture.then(|| {
                let system: Vec<&str> = usage.system.iter().flatten().copied().collect();
                CallContent::new(&system, usage.messages, usage.response)
            }),
            answer: Some(CallAnswer::of(usage.response)),
        };
        store.event_now(call.event(&run_id, agent_id.clone()));
    }))
}

/// One `denials` row per request the policy refused in the attempt, queued on the writer.
pub fn queue_denials(store: &Store, run_id: &RunId, outcome: &AgentOutcome, attempt: u32) {
    for denial in &outcome.receipts.denials {
        let record = DenialRecord {
            run_id: run_id.clone(),
            agent_id: denial.agent_id.clone(),
            attempt,
            tool: denial.tool.clone(),
            target: Some(denial.target.clone()),
            reason: denial.reason.to_string(),
            at: SystemTime::now(),
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _ = store.denial(record).await;
        });
    }
}

/// One `tool_calls` row per call of the attempt, queued on the store's writer (committed
/// with the attempt's end row or before it).
pub async fn store_tool_calls(
    store: &Store,
    run_id: &RunId,
    agent_id: &AgentId,
    outcome: &AgentOutcome,
    attempt: u32,
) {
    for call in &outcome.receipts.calls {
        let record = ToolCallRecord {
            run_id: run_id.clone(),
            agent_id: agent_id.clone(),
            attempt,
            seq: call.seq,
            tool: call.tool.clone(),
            target: call.target.clone(),
            ok: call.outcome == crate::agent::CallOutcome::Ok,
            outcome: Some(call.outcome.as_str().to_owned()),
            error: call.error.clone(),
            started_at: call.started_at,
            ended_at: Some(call.started_at + Duration::from_millis(call.duration_ms)),
            duration_ms: Some(call.duration_ms),
            bytes: Some(call.bytes),
            paths: call.paths.clone(),
        };
        let _ = store.tool_call(record).await;
    }
}

/// Tries of one agent on transient failures (provider errors), the first included: a local
/// run's, and a worker's default under one lease.
pub const AGENT_ATTEMPTS: u32 = 3;

/// What follows an attempt that did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextTry {
    /// Another attempt on `default`, recorded as escalated.
    Escalate,
    /// Another attempt as before: the failure was transient.
    Again,
    /// None: the agent has failed.
    GiveUp,
}

/// Where an agent stands across its attempts, as far as [`next_try`] cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tries {
    /// The mode of the attempt just made.
    pub mode: Mode,
    /// That attempt was already an escalation (a `fast` agent gets one, never two).
    pub escalated: bool,
    /// Attempts counted against `max_attempts`, the one just made included.
    pub made: u32,
    /// Attempts allowed on transient failures, the first included (at least 1).
    pub max_attempts: u32,
}

/// Whether an attempt succeeded: the agent said it finished with a valid result, and its
/// receipts do not contradict it.
pub fn succeeded(outcome: &AgentOutcome) -> bool {
    outcome.status == LoopStatus::Success && outcome.flags.is_empty()
}

/// After a failed attempt: a `fast` agent that gave no valid result, or said it could not
/// finish, gets one more attempt on `default`; a provider error (what is left after the
/// fleet's own retries) gets another attempt while `made < max_attempts`; anything else ends
/// the agent.
pub fn next_try(status: &LoopStatus, tries: Tries) -> NextTry {
    let unfinished = matches!(
        status,
        LoopStatus::InvalidResult | LoopStatus::ReportedUnfinished(_)
    );
    if unfinished && tries.mode == Mode::Fast && !tries.escalated {
        return NextTry::Escalate;
    }
    if matches!(status, LoopStatus::ProviderError(_)) && tries.made < tries.max_attempts.max(1) {
        return NextTry::Again;
    }
    NextTry::GiveUp
}

/// The status a failed attempt is recorded with: `rollback` when it had changed something
/// (which is undone, or never applied), `failure` otherwise.
pub fn failed_status(changed_something: bool) -> AgentStatus {
    if changed_something {
        AgentStatus::Rollback
    } else {
        AgentStatus::Failure
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn tries(mode: Mode, escalated: bool, made: u32) -> Tries {
        Tries {
            mode,
            escalated,
            made,
            max_attempts: 3,
        }
    }

    #[test]
    fn a_fast_agent_escalates_once_and_provider_errors_retry_up_to_the_limit() {
        let unfinished = LoopStatus::ReportedUnfinished("partial: half".into());
        let outage = LoopStatus::ProviderError("529".into());
        assert_eq!(
            next_try(&LoopStatus::InvalidResult, tries(Mode::Fast, false, 1)),
            NextTry::Escalate
        );
        assert_eq!(
            next_try(&unfinished, tries(Mode::Fast, false, 3)),
            NextTry::Escalate
        );
        assert_eq!(
            next_try(&unfinished, tries(Mode::Default, true, 2)),
            NextTry::GiveUp
        );
        assert_eq!(
            next_try(&unfinished, tries(Mode::Default, false, 1)),
            NextTry::GiveUp
        );
        assert_eq!(
            next_try(&outage, tries(Mode::Fast, false, 2)),
            NextTry::Again
        );
        assert_eq!(
            next_try(&outage, tries(Mode::Fast, false, 3)),
            NextTry::GiveUp
        );
        assert_eq!(
            next_try(&LoopStatus::TurnLimit, tries(Mode::Fast, false, 1)),
            NextTry::GiveUp
        );
    }
}
