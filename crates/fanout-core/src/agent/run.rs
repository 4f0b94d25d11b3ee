//! The turn loop of one sub-agent.
//!
//! A system prompt built from the task, the scope, the tools and the rules; turns through the
//! shared [`Fleet`] (so the rate governor and retry budget apply); every tool call executed by
//! the agent's [`Toolbox`]; limits on turns, tokens, dollars and wall time, each ending the
//! agent with its own [`LoopStatus`] and the receipts of what it did so far. The result comes
//! through a forced `report_result` tool, validated against the output schema (a default one
//! when the workflow has none), with one repair attempt. A result whose claims disagree with
//! the receipts is flagged.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ModelSpec;
use crate::fleet::Fleet;
use crate::ids::AgentId;
use crate::policy::{AgentSpec, ShellPolicy};
use crate::provider::{ContentBlock, Message, Request, Role, ToolChoice, ToolSpec};
use crate::tools::Toolbox;

use crate::tools::receipts::Receipts;

/// The tool through which an agent ends.
pub const REPORT_TOOL: &str = "report_result";

/// Limits and model settings of one agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub model: String,
    /// Prices, for the dollar limit; `None` disables it.
    pub pricing: Option<ModelSpec>,
    pub max_tokens_per_turn: u32,
    pub max_turns: u64,
    /// Input plus output tokens over all turns.
    pub max_tokens: u64,
    pub max_dollars: Option<f64>,
    pub max_wall_time: Duration,
    /// The result schema; [`default_output_schema`] when `None`.
    pub output_schema: Option<Value>,
    /// Told of every model call's usage as it is paid for (the engine records it, so an
    /// attempt cut short by a crash still counts what it spent).
    pub on_call: Option<CallHook>,
    /// Mark the conversation and the shared prefix for prompt caching
    /// (`workflow.prompt_caching`).
    pub prompt_caching: bool,
}

/// What one model call of an agent used, and what it sent and received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallUsage<'a> {
    /// The turn, from 1.
    pub turn: u64,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub dollars: f64,
    /// Tries the fleet made for this call (retries after 429s and transient errors included).
    pub attempts: u32,
    /// Time the call spent queued for the rate governor, over its tries.
    pub rate_wait: std::time::Duration,
    /// Of `attempts`, the tries the server answered with a 429.
    pub rate_limited: u32,
    /// Dollars the prompt cache saved on this call.
    pub cache_saved: f64,
    /// The system prompt's parts sent (shared rules, then the agent's own), the conversation
    /// sent and the answer: for a hook that keeps the content (only with the opt-in, see
    /// [`crate::provider::genai`]).
    pub system: [Option<&'a str>; 2],
    pub messages: &'a [Message],
    pub response: &'a crate::provider::Response,
}

/// A callback for [`CallUsage`]; it must not block.
#[derive(Clone)]
pub struct CallHook(pub Arc<dyn for<'a> Fn(&CallUsage<'a>) + Send + Sync>);

impl std::fmt::Debug for CallHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallHook")
    }
}

/// How an agent's turn loop ended (what the run store records is [`crate::store::AgentStatus`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoopStatus {
    Success,
    /// `report_result` was invalid twice (after one repair attempt).
    InvalidResult,
    TurnLimit,
    TokenLimit,
    DollarLimit,
    TimeLimit,
    Cancelled,
    ProviderError(String),
    /// The agent reported that it did not finish its task (`status: failure` or `partial` in
    /// its result): its words, e.g. `partial: fixed two of the three handlers`.
    ReportedUnfinished(String),
    /// The agent's start gate failed (its start could not be put on record), so none of its
    /// tool calls ran.
    StartFailed(String),
}

/// What must hold before an agent's first tool call runs: for a run, its pre-image and start
/// row are durable. The first model call does not wait for it, so the setup of 1,000 agents
/// overlaps their first turn instead of delaying it.
pub type StartGate = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// What one agent produced.
#[derive(Debug, Clone, Serialize)]
pub struct AgentOutcome {
    pub agent_id: AgentId,
    pub status: LoopStatus,
    pub result: Option<Value>,
    pub receipts: Receipts,
    pub turns: u64,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache.
    pub cache_write_tokens: u64,
    pub dollars: f64,
    /// Dollars the prompt cache saved (cost at the full input price minus `dollars`).
    pub cache_saved: f64,
    /// Claims of the result that the receipts contradict.
    pub flags: Vec<String>,
}

/// The result schema used when the workflow gives none.
pub fn default_output_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["success", "partial", "failure"]},
            "summary": {"type": "string", "description": "What you did and found"},
            "files_changed": {"type": "array", "items": {"type": "string"},
                "description": "Every file you changed"}
        },
        "required": ["status", "summary", "files_changed"]
    })
}

/// The system prompt: what every agent of a run is told, word for word, so that the tools and
/// this prompt are one prefix a thousand agents share in the prompt cache (written once, read
/// by the others). Everything about one agent is in [`task_prompt`], after it.
pub fn system_prompt() -> String {
    String::from(
        "You are one sub-agent of a larger workflow. Do only your task, then call \
         report_result exactly once.\n\
         \nRules:\n- Paths are relative to the repository root.\n- Refused calls say why; \
         do not retry them in another form: the limits are enforced by the system, not by you.\n\
         - Never touch .git, .fanout or secret files.\n- Report only what you actually did.\n",
    )
}

/// This agent's part of the system prompt ([`Request::system_agent`], after the shared
/// [`system_prompt`]): its task, scope, tools and commands.
pub fn task_prompt(spec: &AgentSpec, toolbox: &Toolbox) -> String {
    let policy = toolbox.policy();
    let mut prompt = String::new();
    prompt.push_str(&format!("Task {}: {}\n\n", spec.task_id, spec.description));
    if policy.write.is_empty() {
        prompt.push_str("You may not change any file.\n");
    } else {
        prompt.push_str("Files you may change (nothing else):\n");
        for pattern in policy.write.patterns() {
            prompt.push_str(&format!("- {pattern}\n"));
        }
    }
    let tools: Vec<&str> = policy.tools.iter().map(String::as_str).collect();
    prompt.push_str(&format!("\nTools: {}\n", tools.join(", ")));
    if let ShellPolicy::Allowlist(commands) = &policy.shell
        && policy.tools.contains("bash")
    {
        prompt.push_str("Commands allowed in bash (with any further arguments):\n");
        for command in commands {
            prompt.push_str(&format!("- {command}\n"));
        }
    }
    prompt
}

/// The compiled validator of `schema`, shared by every agent with the same schema.
///
/// Compiled once per distinct schema (keyed by its serialized text) and kept for the life of
/// the process; an invalid schema is not cached, so each agent reports its error.
fn validator_for(schema: &Value) -> Result<Arc<jsonschema::Validator>, String> {
    /// More distinct schemas than any workflow uses; past it the cache starts over.
    const MAX_CACHED: usize = 256;
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let key = schema.to_string();
    let lock = || {
        cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    if let Some(validator) = lock().get(&key) {
        return Ok(Arc::clone(validator));
    }
    let validator = Arc::new(jsonschema::validator_for(schema).map_err(|error| error.to_string())?);
    let mut cached = lock();
    if cached.len() >= MAX_CACHED {
        cached.clear();
    }
    Ok(Arc::clone(cached.entry(key).or_insert(validator)))
}

fn report_tool(schema: &Value) -> ToolSpec {
    ToolSpec {
        name: REPORT_TOOL.into(),
        description: "Report your final result. Call it once, when you are done.".into(),
        input_schema: schema.clone(),
    }
}

/// Run one agent to its end.
pub async fn run_agent(
    fleet: &Fleet,
    toolbox: &Toolbox,
    spec: &AgentSpec,
    config: &AgentConfig,
    cancel: &CancellationToken,
) -> AgentOutcome {
    run_agent_gated(fleet, toolbox, spec, config, None, cancel).await
}

/// [`run_agent`] whose tool calls wait for `gate` (awaited once, before the first tool call
/// of any kind); a failed gate ends the agent with [`LoopStatus::StartFailed`] before any
/// tool runs.
pub async fn run_agent_gated(
    fleet: &Fleet,
    toolbox: &Toolbox,
    spec: &AgentSpec,
    config: &AgentConfig,
    mut gate: Option<StartGate>,
    cancel: &CancellationToken,
) -> AgentOutcome {
    let schema = config
        .output_schema
        .clone()
        .unwrap_or_else(default_output_schema);
    let mut outcome = AgentOutcome {
        agent_id: spec.agent_id.clone(),
        status: LoopStatus::TurnLimit,
        result: None,
        receipts: Receipts::default(),
        turns: 0,
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        dollars: 0.0,
        cache_saved: 0.0,
        flags: Vec::new(),
    };
    let validator = match validator_for(&schema) {
        Ok(validator) => validator,
        Err(error) => {
            outcome.status = LoopStatus::InvalidResult;
            outcome
                .flags
                .push(format!("the output schema is invalid: {error}"));
            return outcome;
        }
    };
    let mut tools = toolbox.specs();
    tools.push(report_tool(&schema));
    // The same every turn: built once, lent to each turn's request and taken back after it.
    let mut system = Some(system_prompt());
    let mut system_agent = Some(task_prompt(spec, toolbox));
    let mut messages = vec![Message::user(format!(
        "{}\n\nWhen done, call {REPORT_TOOL}.",
        spec.description
    ))];
    let deadline = Instant::now() + config.max_wall_time;
    let mut forced = false;
    let mut repaired = false;

    let status = loop {
        if outcome.turns >= config.max_turns {
            break LoopStatus::TurnLimit;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break LoopStatus::TimeLimit;
        }
        outcome.turns += 1;
        let mut request = Request::new(config.model.clone(), config.max_tokens_per_turn);
        request.cache_prefix = config.prompt_caching;
        request.cache_turns = config.prompt_caching;
        request.system = system.take();
        request.system_agent = system_agent.take();
        request.messages = std::mem::take(&mut messages);
        request.tools = std::mem::take(&mut tools);
        // The last allowed turn, or a turn after the model stopped without reporting, must
        // report.
        if forced || outcome.turns == config.max_turns {
            request.tool_choice = Some(ToolChoice::Tool {
                name: REPORT_TOOL.into(),
            });
        }
        let called = tokio::select! {
            result = fleet.call(&request, cancel) => result,
            () = tokio::time::sleep(remaining) => break LoopStatus::TimeLimit,
            () = cancel.cancelled() => break LoopStatus::Cancelled,
        };
        system = request.system.take();
        system_agent = request.system_agent.take();
        messages = std::mem::take(&mut request.messages);
        tools = std::mem::take(&mut request.tools);
        let (response, tries, rate_wait, rate_limited) = match called {
            Ok(call) => (
                call.response,
                call.attempts,
                call.governor_wait,
                call.rate_limited,
            ),
            Err(crate::fleet::FleetError::Cancelled { .. }) => break LoopStatus::Cancelled,
            Err(error) => break LoopStatus::ProviderError(error.to_string()),
        };
        outcome.input_tokens += response.usage.total_input();
        outcome.output_tokens += response.usage.output_tokens;
        outcome.cache_read_tokens += response.usage.cache_read_input_tokens;
        outcome.cache_write_tokens += response.usage.cache_creation_input_tokens;
        let (dollars, saved) = config.pricing.as_ref().map_or((0.0, 0.0), |pricing| {
            let billed = response.usage.billed();
            (pricing.cost(billed), pricing.saved(billed))
        });
        outcome.dollars += dollars;
        outcome.cache_saved += saved;
        if let Some(hook) = &config.on_call {
            (hook.0)(&CallUsage {
                turn: outcome.turns,
                input_tokens: response.usage.total_input(),
                output_tokens: response.usage.output_tokens,
                cache_read_tokens: response.usage.cache_read_input_tokens,
                cache_write_tokens: response.usage.cache_creation_input_tokens,
                dollars,
                attempts: tries,
                rate_wait,
                rate_limited,
                cache_saved: saved,
                system: [system.as_deref(), system_agent.as_deref()],
                messages: &messages,
                response: &response,
            });
        }
        messages.push(Message::assistant(response.content.clone()));

        let mut results = Vec::new();
        let mut finished = None;
        let mut gate_failed = None;
        for block in &response.content {
            let ContentBlock::ToolUse { id, name, input } = block else {
                continue;
            };
            if name == REPORT_TOOL {
                let errors: Vec<String> = validator
                    .iter_errors(input)
                    .map(|error| format!("{}: {error}", error.instance_path()))
                    .collect();
                if errors.is_empty() {
                    finished = Some(input.clone());
                    results.push(tool_result(id, "result recorded".into(), false));
                } else if !repaired {
                    repaired = true;
                    forced = true;
                    results.push(tool_result(
                        id,
                        format!(
                            "the result does not match the schema; call {REPORT_TOOL} again with \
                             a valid result: {}",
                            errors.join("; ")
                        ),
                        true,
                    ));
                } else {
                    finished = Some(Value::Null);
                }
                continue;
            }
            if let Some(pending) = gate.take()
                && let Err(reason) = pending.await
            {
                gate_failed = Some(reason);
                break;
            }
            let output = toolbox.call(name, input).await;
            results.push(tool_result(id, output.content, output.is_error));
        }
        if let Some(reason) = gate_failed {
            break LoopStatus::StartFailed(reason);
        }
        match finished {
            Some(Value::Null) => break LoopStatus::InvalidResult,
            Some(result) => {
                let unfinished = reported_unfinished(&result);
                outcome.result = Some(result);
                break match unfinished {
                    Some(words) => LoopStatus::ReportedUnfinished(words),
                    None => LoopStatus::Success,
                };
            }
            None => {}
        }
        if results.is_empty() {
            // The model stopped without a tool call: make the next turn report.
            forced = true;
            messages.push(Message::user(format!(
                "Call {REPORT_TOOL} now with your result."
            )));
        } else {
            messages.push(Message {
                role: Role::User,
                content: results,
            });
        }
        let tokens = outcome.input_tokens + outcome.output_tokens;
        if tokens >= config.max_tokens {
            break LoopStatus::TokenLimit;
        }
        if config
            .max_dollars
            .is_some_and(|limit| outcome.dollars >= limit)
        {
            break LoopStatus::DollarLimit;
        }
    };
    outcome.status = status;
    outcome.receipts = toolbox.receipts();
    outcome.flags.extend(check_claims(&outcome));
    outcome
}

fn tool_result(id: &str, content: String, is_error: bool) -> ContentBlock {
    ContentBlock::ToolResult {
        tool_use_id: id.to_string(),
        content,
        is_error,
    }
}

/// The agent's own word that it did not finish: a result whose `status` is one of the words
/// for an unfinished task (the default schema's `failure` and `partial`, and their usual
/// synonyms in custom schemas), or whose `success` is `false`. Its status and summary.
pub fn reported_unfinished(result: &Value) -> Option<String> {
    const UNFINISHED: [&str; 6] = [
        "failure",
        "failed",
        "partial",
        "error",
        "incomplete",
        "blocked",
    ];
    let status = match (result.get("status"), result.get("success")) {
        (Some(Value::String(status)), _)
            if UNFINISHED.contains(&status.trim().to_ascii_lowercase().as_str()) =>
        {
            status.trim().to_owned()
        }
        (_, Some(Value::Bool(false))) => "success: false".to_owned(),
        _ => return None,
    };
    let summary = result
        .get("summary")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|summary| !summary.is_empty());
    Some(match summary {
        Some(summary) => format!("{status}: {summary}"),
        None => status,
    })
}

/// Claims of the result that the receipts contradict.
pub fn check_claims(outcome: &AgentOutcome) -> Vec<String> {
    let mut flags = Vec::new();
    let Some(result) = &outcome.result else {
        return flags;
    };
    let receipts = &outcome.receipts;
    let claims_success = result.get("status").and_then(Value::as_str) == Some("success");
    if claims_success && receipts.tool_calls == 0 {
        flags.push("reports success after zero tool calls".to_string());
    }
    if let Some(files) = result.get("files_changed").and_then(Value::as_array) {
        for file in files.iter().filter_map(Value::as_str) {
            let file = file.trim_start_matches("./");
            if !receipts.files_written.contains(file) {
                flags.push(format!(
                    "claims to have changed {file}, which it did not write"
                ));
            }
        }
        for written in &receipts.files_written {
            if !files
                .iter()
                .any(|f| f.as_str().map(|f| f.trim_start_matches("./")) == Some(written))
            {
                flags.push(format!("changed {written} without reporting it"));
            }
        }
    }
    if claims_success && receipts.violations() > 0 {
        flags.push(format!(
            "reports success but made {} out-of-scope change(s), reverted",
            receipts.violations()
        ));
    }
    flags
}
