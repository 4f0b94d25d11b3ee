//! One worker call's bookkeeping, shared by online and batch execution: its request (first or
//! repair), its attempt number, and its `agent_runs` row: the start written with the request,
//! the end (tokens, cost, status) written once the chunk is settled (see the ordering in the
//! [module docs](super)).

use std::sync::Arc;
use std::time::SystemTime;

use super::{Ctx, ItemEvent, lock};
use crate::ids::AgentId;
use crate::items::chunk::Chunk;
use crate::items::worker::{
    ChunkOutcome, RetryChunk, SUBMIT_TOOL, TemplateError, build_repair_request, build_request,
};
use crate::provider::genai::CallContent;
use crate::provider::{Response, Usage};
use crate::store::{AgentFinish, AgentStart, AgentStatus, ModelCall};

pub(super) fn next_attempt(ctx: &Ctx, agent_id: &AgentId) -> u32 {
    let mut attempts = lock(&ctx.attempts);
    let entry = attempts.entry(agent_id.clone()).or_insert(0);
    *entry += 1;
    *entry
}

pub(super) fn worker_request(
    ctx: &Ctx,
    next: &RetryChunk,
) -> Result<crate::provider::Request, TemplateError> {
    if next.problems.is_empty() {
        build_request(&ctx.job.spec, &ctx.job.schema, &next.chunk)
    } else {
        build_repair_request(&ctx.job.spec, &ctx.job.schema, &next.chunk, &next.problems)
    }
}

/// The `agent_runs` row of a call about to be made (a new attempt of the chunk's agent id).
pub(super) fn start_record(ctx: &Ctx, chunk: &Chunk) -> AgentStart {
    let agent_id = AgentId::from(&chunk.id);
    let attempt = next_attempt(ctx, &agent_id);
    let first = chunk.items.first().map_or("", |item| item.id.as_str());
    let last = chunk.items.last().map_or("", |item| item.id.as_str());
    (ctx.events)(&ItemEvent::CallStarted {
        agent_id: agent_id.clone(),
        items: chunk.items.len(),
    });
    AgentStart {
        run_id: ctx.run_id.clone(),
        agent_id,
        attempt,
        task_description: format!("{} item(s): {first} … {last}", chunk.items.len()),
        mode: ctx.job.worker_mode,
        model: Some(ctx.job.worker_model.model.clone()),
        escalated: false,
        started_at: SystemTime::now(),
    }
}

/// Write a call's start row (durable once this returns).
pub(super) async fn write_start(ctx: &Ctx, start: AgentStart) {
    if ctx.store.start_agent(start).await.is_err() {
        lock(&ctx.totals).store_errors += 1;
    }
}

/// Write the end rows of a settled chunk's calls. Only called once the chunk's settlement is
/// in the journal (see the [module docs](super)); runs in the background so that the chunk's
/// worker slot is free as soon as the journal has it. [`run`](super::run) waits for these
/// writes before it ends.
pub(super) fn write_ends(ctx: &Arc<Ctx>, ends: Vec<AgentFinish>) {
    if ends.is_empty() {
        return;
    }
    let writer = Arc::clone(ctx);
    lock(&ctx.row_writes).spawn(async move {
        for end in ends {
            if writer.store.finish_agent(end).await.is_err() {
                lock(&writer.totals).store_errors += 1;
            }
        }
    });
}

/// The call's content, with the opt-in and when its request is at hand.
fn content(
    exchange: Option<(Option<&crate::provider::Request>, &Response)>,
) -> Option<CallContent> {
    let (Some(request), response) = exchange? else {
        return None;
    };
    if !crate::env::capture_message_content() {
        return None;
    }
    let system: Vec<&str> = [&request.system, &request.system_agent]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    Some(CallContent::new(&system, &request.messages, response))
}

/// Account a finished call (tokens, cost, the event) and return the end of its `agent_runs`
/// row, to be written once the chunk is settled ([`write_ends`]). `fleet_call` is the online
/// call's tries and rate-governor wait (a batch's answers have none).
pub(super) fn end_record(
    ctx: &Ctx,
    chunk: &Chunk,
    attempt: u32,
    exchange: Option<(Option<&crate::provider::Request>, &Response)>,
    fleet_call: Option<&crate::fleet::CallOutcome>,
    outcome: &ChunkOutcome,
    error: Option<String>,
) -> (AgentFinish, f64) {
    let response = exchange.map(|(_, response)| response);
    let (usage, cost, saved, called) = match response {
        Some(response) => {
            let usage = response.usage;
            let factor = ctx.job.price_factor();
            let cost = ctx.job.worker_model.cost(usage.billed()) * factor;
            let saved = ctx.job.worker_model.saved(usage.billed()) * factor;
            let called = response.tool_uses().any(|(_, name, _)| name == SUBMIT_TOOL);
            (usage, cost, saved, called)
        }
        None => (Usage::default(), 0.0, 0.0, false),
    };
    let (input_tokens, output_tokens) = (usage.total_input(), usage.output_tokens);
    if response.is_some() {
        // The call as the repository engine records its agents' calls: traces and the report
        // draw item runs' model calls from these events too.
        let call = ModelCall {
            attempt,
            turn: 1,
            mode: ctx.job.worker_mode,
            provider: ctx.job.worker_model.provider,
            model: ctx.job.worker_model.model.clone(),
            input_tokens,
            output_tokens,
            cache_read_tokens: usage.cache_read_input_tokens,
            cache_write_tokens: usage.cache_creation_input_tokens,
            dollars: cost,
            cache_saved: saved,
            tries: fleet_call.map(|call| call.attempts),
            rate_wait_ms: fleet_call.map(|call| call.governor_wait.as_millis() as u64),
            rate_limited: fleet_call.map(|call| call.rate_limited),
            content: content(exchange),
            answer: response.map(crate::provider::genai::CallAnswer::of),
        };
        ctx.store
            .event_now(call.event(&ctx.run_id, AgentId::from(&chunk.id)));
    }
    {
        let mut totals = lock(&ctx.totals);
        totals.calls += 1;
        totals.input_tokens += input_tokens;
        totals.output_tokens += output_tokens;
        totals.cache_read_tokens += usage.cache_read_input_tokens;
        totals.cache_write_tokens += usage.cache_creation_input_tokens;
        totals.cost += cost;
        totals.cache_saved += saved;
    }
    let complete = outcome.is_complete() && error.is_none();
    let error = error.or_else(|| (!complete).then(|| problem_summary(outcome)));
    let finish = AgentFinish {
        run_id: ctx.run_id.clone(),
        agent_id: AgentId::from(&chunk.id),
        attempt,
        status: if complete {
            AgentStatus::Success
        } else {
            AgentStatus::Failure
        },
        files_accessed: chunk.ids().map(str::to_owned).collect(),
        tools_called: if called {
            vec![SUBMIT_TOOL.to_owned()]
        } else {
            Vec::new()
        },
        input_tokens,
        output_tokens,
        cache_read_tokens: usage.cache_read_input_tokens,
        cache_write_tokens: usage.cache_creation_input_tokens,
        cost_usd: cost,
        cache_saved_usd: saved,
        error,
        checkpoint: None,
        ended_at: SystemTime::now(),
    };
    (ctx.events)(&ItemEvent::CallFinished {
        agent_id: AgentId::from(&chunk.id),
        accepted: outcome.accepted.len(),
        input_tokens,
        output_tokens,
        cache_read_tokens: usage.cache_read_input_tokens,
        cost_usd: cost,
    });
    (finish, cost)
}

fn problem_summary(outcome: &ChunkOutcome) -> String {
    let mut parts = Vec::new();
    if let Some(rejected) = outcome.errored.as_ref().or(outcome.malformed.as_ref()) {
        parts.push(rejected.reason.clone());
    }
    for (label, count) in [
        ("missing", outcome.missing.len()),
        ("invalid", outcome.invalid.len()),
        ("duplicated", outcome.duplicated.len()),
        ("unknown", outcome.unknown.len()),
    ] {
        if count > 0 {
            parts.push(format!("{count} {label}"));
        }
    }
    parts.join("; ")
}
