//! What an agent's attempts leave on record: the run's per-agent records the scheduler's
//! events are enriched with, and the store's `model_call` events, `denials` and `tool_calls`
//! rows.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{AgentRecord, Shared};
use crate::agent::{AgentOutcome, CallHook, CallUsage};
use crate::config::{Mode, ModelSpec};
use crate::ids::{AgentId, RunId};
use crate::plan::TaskId;
use crate::provider::genai::{CallAnswer, CallContent};
use crate::retry::lock;
use crate::store::{AgentStatus, DenialRecord, ModelCall, Store, ToolCallRecord};

#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    shared: &Shared,
    agent_id: &TaskId,
    status: AgentStatus,
    mode: Mode,
    tokens: u64,
    dollars: f64,
    escalated: bool,
    (input_tokens, cache_read_tokens): (u64, u64),
) {
    lock(&shared.records).insert(
        agent_id.clone(),
        AgentRecord {
            status,
            mode,
            tokens,
            dollars,
            escalated,
            input_tokens,
            cache_read_tokens,
        },
    );
}

/// Records each model call's usage as a `model_call` event, so an attempt a crash cuts short
/// still counts what it spent when the run is resumed.
pub(super) fn usage_recorder(
    shared: &Arc<Shared>,
    agent_id: &TaskId,
    attempt: u32,
    mode: Mode,
) -> CallHook {
    model_call_hook(
        shared.store.clone(),
        shared.inputs.run_id.clone(),
        AgentId::from(agent_id),
        attempt,
        mode,
        shared.inputs.config.model_for_mode(mode),
    )
}

/// The hook that records each model call of an agent's attempt as a `model_call` event, as
/// it is answered: a local agent's and a worker's alike.
pub(crate) fn model_call_hook(
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

pub(super) fn record_denials(
    shared: &Shared,
    agent_id: &TaskId,
    outcome: &AgentOutcome,
    attempt: u32,
) {
    if !outcome.receipts.denials.is_empty() {
        *lock(&shared.denials).entry(agent_id.clone()).or_default() +=
            outcome.receipts.denials.len();
    }
    queue_denials(&shared.store, &shared.inputs.run_id, outcome, attempt);
}

/// One `denials` row per request the policy refused in the attempt, queued on the writer.
pub(crate) fn queue_denials(store: &Store, run_id: &RunId, outcome: &AgentOutcome, attempt: u32) {
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

/// One `tool_calls` row per call of the attempt, queued on the store's writer (committed with
/// the attempt's end row or before it).
pub(super) async fn record_tool_calls(
    shared: &Shared,
    agent_id: &TaskId,
    outcome: &AgentOutcome,
    attempt: u32,
) {
    store_tool_calls(
        &shared.store,
        &shared.inputs.run_id,
        &AgentId::from(agent_id),
        outcome,
        attempt,
    )
    .await;
}

/// [`record_tool_calls`] for any caller with a store (a worker's agent too).
pub(crate) async fn store_tool_calls(
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
