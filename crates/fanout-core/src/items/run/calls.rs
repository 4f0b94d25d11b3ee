//! One worker call's bookkeeping, shared by online and batch execution and by a shared run's
//! workers (`chunk_unit`): its request (first or repair), its attempt number, and its
//! `agent_runs` row: the start written with the request, the end (tokens, cost, status)
//! written once the chunk is settled (see the ordering in the [module docs](super)). The
//! rows, the `model_call` event and the prices are made by plain functions of the call
//! ([`start_row`], [`CallFigures`], [`finish_row`]), so a worker on another machine records a
//! call exactly as the local runner does.

use std::sync::Arc;
use std::time::SystemTime;

use super::{Ctx, ItemEvent, lock};
use crate::config::{Mode, ModelSpec};
use crate::ids::{AgentId, RunId};
use crate::items::chunk::Chunk;
use crate::items::worker::{
    ChunkOutcome, OutputSchema, RetryChunk, SUBMIT_TOOL, TemplateError, WorkerSpec,
    build_repair_request, build_request,
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
    request_for(&ctx.job.spec, &ctx.job.schema, next)
}

/// The request of one call: the chunk's first, or a repair quoting the problems.
pub(super) fn request_for(
    spec: &WorkerSpec,
    schema: &OutputSchema,
    next: &RetryChunk,
) -> Result<crate::provider::Request, TemplateError> {
    if next.problems.is_empty() {
        build_request(spec, schema, &next.chunk)
    } else {
        build_repair_request(spec, schema, &next.chunk, &next.problems)
    }
}

/// The `agent_runs` row of a call about to be made (a new attempt of the chunk's agent id).
pub(super) fn start_record(ctx: &Ctx, chunk: &Chunk) -> AgentStart {
    let agent_id = AgentId::from(&chunk.id);
    let attempt = next_attempt(ctx, &agent_id);
    (ctx.events)(&ItemEvent::CallStarted {
        agent_id: agent_id.clone(),
        items: chunk.items.len(),
    });
    start_row(&ctx.run_id, chunk, attempt, &ctx.job.pricing())
}

/// The start of the `agent_runs` row of attempt `attempt` of a call for `chunk`.
pub(super) fn start_row(
    run_id: &RunId,
    chunk: &Chunk,
    attempt: u32,
    pricing: &Pricing<'_>,
) -> AgentStart {
    let first = chunk.items.first().map_or("", |item| item.id.as_str());
    let last = chunk.items.last().map_or("", |item| item.id.as_str());
    AgentStart {
        run_id: run_id.clone(),
        agent_id: AgentId::from(&chunk.id),
        attempt,
        task_description: format!("{} item(s): {first} … {last}", chunk.items.len()),
        mode: pricing.mode,
        model: Some(pricing.model.model.clone()),
        escalated: false,
        started_at: SystemTime::now(),
    }
}

/// The worker model, mode and price factor a call is recorded and priced with.
pub(crate) struct Pricing<'a> {
    pub(crate) model: &'a ModelSpec,
    pub(crate) mode: Mode,
    /// 1 online; the batch discount otherwise.
    pub(crate) factor: f64,
}

/// A finished call's figures: its usage, its dollars, what the cache saved, whether it
/// called the submit tool.
pub(super) struct CallFigures {
    pub(super) usage: Usage,
    pub(super) cost: f64,
    pub(super) saved: f64,
    pub(super) called: bool,
}

impl CallFigures {
    /// The figures of a call answered with `response` (none when it was not answered).
    pub(super) fn of(pricing: &Pricing<'_>, response: Option<&Response>) -> CallFigures {
        match response {
            Some(response) => {
                let usage = response.usage;
                CallFigures {
                    usage,
                    cost: pricing.model.cost(usage.billed()) * pricing.factor,
                    saved: pricing.model.saved(usage.billed()) * pricing.factor,
                    called: response.tool_uses().any(|(_, name, _)| name == SUBMIT_TOOL),
                }
            }
            None => CallFigures {
                usage: Usage::default(),
                cost: 0.0,
                saved: 0.0,
                called: false,
            },
        }
    }

    /// The call's `model_call` event, as the repository engine records its agents' calls
    /// (traces and the report draw item runs' model calls from these events too).
    pub(super) fn model_call(
        &self,
        pricing: &Pricing<'_>,
        attempt: u32,
        exchange: Option<(Option<&crate::provider::Request>, &Response)>,
        fleet_call: Option<&crate::fleet::CallOutcome>,
    ) -> Option<ModelCall> {
        let response = exchange.map(|(_, response)| response)?;
        Some(ModelCall {
            attempt,
            turn: 1,
            mode: pricing.mode,
            provider: pricing.model.provider,
            model: pricing.model.model.clone(),
            input_tokens: self.usage.total_input(),
            output_tokens: self.usage.output_tokens,
            cache_read_tokens: self.usage.cache_read_input_tokens,
            cache_write_tokens: self.usage.cache_creation_input_tokens,
            dollars: self.cost,
            cache_saved: self.saved,
            tries: fleet_call.map(|call| call.attempts),
            rate_wait_ms: fleet_call.map(|call| call.governor_wait.as_millis() as u64),
            rate_limited: fleet_call.map(|call| call.rate_limited),
            content: content(exchange),
            answer: Some(crate::provider::genai::CallAnswer::of(response)),
        })
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
    let pricing = ctx.job.pricing();
    let figures = CallFigures::of(&pricing, exchange.map(|(_, response)| response));
    if let Some(call) = figures.model_call(&pricing, attempt, exchange, fleet_call) {
        ctx.store
            .event_now(call.event(&ctx.run_id, AgentId::from(&chunk.id)));
    }
    count_call(ctx, &figures);
    let finish = finish_row(&ctx.run_id, chunk, attempt, &figures, outcome, error);
    (ctx.events)(&ItemEvent::CallFinished {
        agent_id: AgentId::from(&chunk.id),
        accepted: outcome.accepted.len(),
        input_tokens: finish.input_tokens,
        output_tokens: finish.output_tokens,
        cache_read_tokens: finish.cache_read_tokens,
        cost_usd: finish.cost_usd,
    });
    (finish, figures.cost)
}

/// Add a call to this process's totals.
pub(super) fn count_call(ctx: &Ctx, figures: &CallFigures) {
    let mut totals = lock(&ctx.totals);
    totals.calls += 1;
    totals.input_tokens += figures.usage.total_input();
    totals.output_tokens += figures.usage.output_tokens;
    totals.cache_read_tokens += figures.usage.cache_read_input_tokens;
    totals.cache_write_tokens += figures.usage.cache_creation_input_tokens;
    totals.cost += figures.cost;
    totals.cache_saved += figures.saved;
}

/// The end of the `agent_runs` row of attempt `attempt` of a call for `chunk`: a success
/// when every item of the chunk has a valid record and nothing failed.
pub(super) fn finish_row(
    run_id: &RunId,
    chunk: &Chunk,
    attempt: u32,
    figures: &CallFigures,
    outcome: &ChunkOutcome,
    error: Option<String>,
) -> AgentFinish {
    let usage = figures.usage;
    let complete = outcome.is_complete() && error.is_none();
    let error = error.or_else(|| (!complete).then(|| problem_summary(outcome)));
    AgentFinish {
        run_id: run_id.clone(),
        agent_id: AgentId::from(&chunk.id),
        attempt,
        status: if complete {
            AgentStatus::Success
        } else {
            AgentStatus::Failure
        },
        files_accessed: chunk.ids().map(str::to_owned).collect(),
        tools_called: if figures.called {
            vec![SUBMIT_TOOL.to_owned()]
        } else {
            Vec::new()
        },
        input_tokens: usage.total_input(),
        output_tokens: usage.output_tokens,
        cache_read_tokens: usage.cache_read_input_tokens,
        cache_write_tokens: usage.cache_creation_input_tokens,
        cost_usd: figures.cost,
        cache_saved_usd: figures.saved,
        error,
        checkpoint: None,
        ended_at: SystemTime::now(),
    }
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
