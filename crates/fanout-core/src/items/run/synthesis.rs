//! The synthesis (`aggregate.synthesis`): the results reduced to `synthesis.md` by the
//! orchestrator's model, tree-shaped when they do not fit one call, each call an
//! `agent_runs` row of its own (`synthesis-<n>`).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::calls::next_attempt;
use super::{Ctx, ItemEvent, lock};
use crate::config::items::SynthesisConfig;
use crate::config::{Mode, ModelSpec};
use crate::ids::AgentId;
use crate::items::aggregate::{synthesis_request, tree_reduce};
use crate::items::output::write_atomic;
use crate::provider::Request;
use crate::store::{AgentFinish, AgentStart, AgentStatus};

/// Input budget of one synthesis call, in estimated tokens.
const SYNTHESIS_BUDGET_TOKENS: u64 = 60_000;

/// Reduce `records` to `output_dir/synthesis.md`; the error says why it could not be
/// written.
pub(super) async fn synthesize(
    ctx: &Ctx,
    records: &[&Value],
    synthesis: &SynthesisConfig,
    output_dir: &Path,
    cancel: &CancellationToken,
) -> Result<PathBuf, String> {
    let parts: Vec<String> = records.iter().map(|record| record.to_string()).collect();
    let model = ctx.job.synthesis_model.clone();
    let calls = Mutex::new(0u32);
    let text = tree_reduce(parts, SYNTHESIS_BUDGET_TOKENS, |step| {
        let request = synthesis_request(
            &model.model,
            synthesis.max_tokens,
            &synthesis.instructions,
            &step,
        );
        let n = {
            let mut calls = lock(&calls);
            *calls += 1;
            *calls
        };
        let agent_id = AgentId::from(format!("synthesis-{n}"));
        let call = SynthesisCall {
            agent_id,
            level: step.level,
            parts: step.parts.len(),
            model: model.clone(),
            request,
        };
        synthesis_call(ctx, call, cancel)
    })
    .await
    .map_err(|error| error.to_string())?;
    let path = output_dir.join("synthesis.md");
    let mut text = text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write_atomic(&path, text.as_bytes()).map_err(|error| error.to_string())?;
    Ok(path)
}

/// One step of the reduction.
struct SynthesisCall {
    agent_id: AgentId,
    level: u32,
    parts: usize,
    model: ModelSpec,
    request: Request,
}

/// Make one synthesis call, with its `agent_runs` row and its share of the run's totals.
async fn synthesis_call(
    ctx: &Ctx,
    call: SynthesisCall,
    cancel: &CancellationToken,
) -> Result<String, String> {
    let SynthesisCall {
        agent_id,
        level,
        parts,
        model,
        request,
    } = call;
    (ctx.events)(&ItemEvent::Synthesis { level, parts });
    let attempt = next_attempt(ctx, &agent_id);
    let start = AgentStart {
        run_id: ctx.run_id.clone(),
        agent_id: agent_id.clone(),
        attempt,
        task_description: format!("synthesis, level {level}, {parts} part(s)"),
        mode: Mode::Default,
        model: Some(model.model.clone()),
        escalated: false,
        started_at: SystemTime::now(),
    };
    // A synthesis step is work the job adds as it goes: its first start counts it.
    let _ = if attempt == 1 {
        ctx.store.start_unplanned_agent(start).await
    } else {
        ctx.store.start_agent(start).await
    };
    let result = ctx.fleet.call(&request, cancel).await;
    let (status, usage, error) = match &result {
        Ok(call) => (AgentStatus::Success, Some(call.response.usage), None),
        Err(error) => (AgentStatus::Failure, None, Some(error.to_string())),
    };
    let usage = usage.unwrap_or_default();
    let cost = model.cost(usage.billed());
    {
        let mut totals = lock(&ctx.totals);
        totals.calls += 1;
        totals.input_tokens += usage.total_input();
        totals.output_tokens += usage.output_tokens;
        totals.cache_read_tokens += usage.cache_read_input_tokens;
        totals.cache_write_tokens += usage.cache_creation_input_tokens;
        totals.cost += cost;
        totals.cache_saved += model.saved(usage.billed());
    }
    let _ = ctx
        .store
        .finish_agent(AgentFinish {
            run_id: ctx.run_id.clone(),
            agent_id,
            attempt,
            status,
            files_accessed: Vec::new(),
            tools_called: Vec::new(),
            input_tokens: usage.total_input(),
            output_tokens: usage.output_tokens,
            cache_read_tokens: usage.cache_read_input_tokens,
            cache_write_tokens: usage.cache_creation_input_tokens,
            cost_usd: cost,
            cache_saved_usd: model.saved(usage.billed()),
            error,
            checkpoint: None,
            ended_at: SystemTime::now(),
        })
        .await;
    result
        .map(|call| call.response.text())
        .map_err(|error| error.to_string())
}
