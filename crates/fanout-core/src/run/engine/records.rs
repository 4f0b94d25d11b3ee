//! What an agent's attempts leave on record: the run's per-agent records the scheduler's
//! events are enriched with, and the store's `model_call` events, `denials` and `tool_calls`
//! rows (written by `crate::attempt`, which a worker shares).

use std::sync::Arc;

use super::{AgentRecord, Shared};
use crate::agent::{AgentOutcome, CallHook};
use crate::config::Mode;
use crate::ids::AgentId;
use crate::plan::TaskId;
use crate::retry::lock;
use crate::store::AgentStatus;

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
    crate::attempt::model_call_hook(
        shared.store.clone(),
        shared.inputs.run_id.clone(),
        AgentId::from(agent_id),
        attempt,
        mode,
        shared.inputs.config.model_for_mode(mode),
    )
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
    crate::attempt::queue_denials(&shared.store, &shared.inputs.run_id, outcome, attempt);
}

/// One `tool_calls` row per call of the attempt, queued on the store's writer (committed with
/// the attempt's end row or before it).
pub(super) async fn record_tool_calls(
    shared: &Shared,
    agent_id: &TaskId,
    outcome: &AgentOutcome,
    attempt: u32,
) {
    crate::attempt::store_tool_calls(
        &shared.store,
        &shared.inputs.run_id,
        &AgentId::from(agent_id),
        outcome,
        attempt,
    )
    .await;
}
