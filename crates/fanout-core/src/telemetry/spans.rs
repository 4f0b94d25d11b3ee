//! A run's records as OpenTelemetry spans, following the GenAI semantic conventions:
//!
//! ```text
//! invoke_workflow {workflow}          the run (one trace per run)
//! └─ invoke_agent {agent_id}          one per attempt
//!    ├─ chat {model}                  one per `model_call` event
//!    └─ execute_tool {tool}           one per `tool_calls` row
//! ```
//!
//! Ids are derived from the run id (trace) and the record's key (span), so exporting a run
//! twice sends the same spans, which a backend can deduplicate. A model call's event is
//! written when its answer arrives; its span starts at the end of the step before it in the
//! same attempt (the attempt's start, the previous call, or a tool call that ended before it).
//! [`super::otlp`] turns these into the SDK's span data for the OTLP exporter.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::ids::AgentId;
use crate::store::{AgentRow, AgentStatus, DenialRow, EventRow, RunRow, ToolCallRow, parse_time};

/// The records of one run that become spans.
#[derive(Debug, Clone, Default)]
pub struct RunRecords {
    pub run: Option<RunRow>,
    pub attempts: Vec<AgentRow>,
    pub events: Vec<EventRow>,
    /// `(agent_id, call)`.
    pub tool_calls: Vec<(AgentId, ToolCallRow)>,
    /// `(agent_id, denial)`: events on their attempt's `invoke_agent` span.
    pub denials: Vec<(AgentId, DenialRow)>,
    /// Each agent's declared write scope, from the run's `plan.json` (`fanout.scope`).
    pub scopes: HashMap<String, Vec<String>>,
    /// `planning.json` of the run's directory, when this run planned (not one run from a
    /// reviewed plan file).
    pub planning: Option<Value>,
    /// Put the model calls' content on the `chat` spans, where the store has it (the opt-in
    /// `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`, asked again at export).
    pub content: bool,
}

/// One span, before it becomes the SDK's span data.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub name: String,
    /// 1 internal, 3 client.
    pub kind: u8,
    pub start_unix_nano: u128,
    pub end_unix_nano: u128,
    pub attributes: Vec<(&'static str, Value)>,
    /// `Some(message)`: the span's status is an error.
    pub error: Option<String>,
    /// Things that happened at one moment of the span (denials).
    pub events: Vec<SpanEvent>,
}

/// An event of a span: a name, a time and attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    pub name: &'static str,
    pub time_unix_nano: u128,
    pub attributes: Vec<(&'static str, Value)>,
}

/// The name of the event a denied tool request puts on its agent's `invoke_agent` span.
pub const DENIAL_EVENT: &str = "fanout.denial";

pub const KIND_INTERNAL: u8 = 1;
pub const KIND_CLIENT: u8 = 3;

/// Bytes as lower-case hex, as OTLP/JSON and trace viewers show ids.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace id of run `run_id`: 16 bytes.
pub fn trace_id(run_id: &str) -> [u8; 16] {
    let digest = Sha256::digest(format!("fanout trace {run_id}").as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

fn span_id(key: &str) -> [u8; 8] {
    let digest = Sha256::digest(format!("fanout span {key}").as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    id
}

fn nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

fn time(text: Option<&str>) -> Option<u128> {
    text.and_then(parse_time).map(nanos)
}

/// Every span of the run, root first. `now` closes spans that have no end yet.
pub fn spans(records: &RunRecords, now: SystemTime) -> Vec<Span> {
    let Some(run) = &records.run else {
        return Vec::new();
    };
    let now = nanos(now);
    let run_start = time(Some(&run.started_at)).unwrap_or(now);
    let run_end = time(run.ended_at.as_deref()).unwrap_or(now).max(run_start);
    let root_id = span_id(&format!("{}/run", run.run_id));
    let mut out = Vec::with_capacity(1 + records.attempts.len() + records.events.len());
    let failed = !matches!(
        run.status,
        crate::store::RunStatus::Completed
            | crate::store::RunStatus::Running
            | crate::store::RunStatus::Planned
    );
    let counted: (u64, u64) = records.attempts.iter().fold((0, 0), |(i, o), row| {
        (i + row.input_tokens, o + row.output_tokens)
    });
    out.push(Span {
        events: Vec::new(),
        span_id: root_id,
        parent_span_id: None,
        name: format!("invoke_workflow {}", run.workflow),
        kind: KIND_INTERNAL,
        start_unix_nano: run_start,
        end_unix_nano: run_end,
        attributes: vec![
            ("gen_ai.operation.name", json!("invoke_workflow")),
            ("gen_ai.workflow.name", json!(run.workflow)),
            ("gen_ai.usage.input_tokens", json!(counted.0)),
            ("gen_ai.usage.output_tokens", json!(counted.1)),
            ("fanout.run.id", json!(run.run_id)),
            ("fanout.run.status", json!(run.status.as_str())),
            ("fanout.agents.planned", json!(run.agents_planned)),
            ("fanout.attempts", json!(records.attempts.len())),
            (
                "fanout.cost.usd",
                json!(records.attempts.iter().map(|row| row.cost_usd).sum::<f64>()),
            ),
        ]
        .into_iter()
        .chain(failed.then(|| ("error.type", json!(run.status.as_str()))))
        .collect(),
        error: failed.then(|| {
            run.error
                .clone()
                .unwrap_or_else(|| run.status.as_str().to_owned())
        }),
    });

    // Model calls and tool calls by attempt, so each attempt finds its own at once.
    let mut calls_of: HashMap<(&str, u64), Vec<&EventRow>> = HashMap::new();
    for event in records.events.iter().filter(|e| e.kind == "model_call") {
        if let (Some(agent), Some(attempt)) = (
            event.agent_id.as_ref().map(AgentId::as_str),
            event.payload["attempt"].as_u64(),
        ) {
            calls_of.entry((agent, attempt)).or_default().push(event);
        }
    }
    let mut tools_of: HashMap<(&str, u32), Vec<&ToolCallRow>> = HashMap::new();
    for (agent, call) in &records.tool_calls {
        tools_of
            .entry((agent.as_str(), call.attempt))
            .or_default()
            .push(call);
    }

    let mut denials_of: HashMap<(&str, u32), Vec<&DenialRow>> = HashMap::new();
    for (agent, denial) in &records.denials {
        denials_of
            .entry((agent.as_str(), denial.attempt))
            .or_default()
            .push(denial);
    }

    for row in &records.attempts {
        let denials = denials_of
            .get(&(row.agent_id.as_str(), row.attempt))
            .map_or(&[][..], Vec::as_slice);
        let calls = calls_of
            .get(&(row.agent_id.as_str(), u64::from(row.attempt)))
            .map_or(&[][..], Vec::as_slice);
        let tools = tools_of
            .get(&(row.agent_id.as_str(), row.attempt))
            .map_or(&[][..], Vec::as_slice);
        let key = format!("{}/{}/{}", run.run_id, row.agent_id, row.attempt);
        let attempt_id = span_id(&key);
        let start = time(row.timestamp_start.as_deref()).unwrap_or(run_start);
        let end = time(row.timestamp_end.as_deref())
            .unwrap_or(run_end)
            .max(start);
        let model = row.model.clone().unwrap_or_default();
        // The provider as the model calls recorded it (attempts without calls have none).
        let provider = calls
            .iter()
            .find_map(|event| event.payload["provider"].as_str())
            .map(str::to_owned);
        let status = row.status.map_or("running", AgentStatus::as_str);
        let failed = matches!(
            row.status,
            Some(AgentStatus::Failure | AgentStatus::Rollback)
        );
        let mut attributes = vec![
            ("gen_ai.operation.name", json!("invoke_agent")),
            ("gen_ai.agent.id", json!(row.agent_id)),
            ("gen_ai.agent.name", json!(row.agent_id)),
            ("gen_ai.request.model", json!(model)),
            ("gen_ai.usage.input_tokens", json!(row.input_tokens)),
            ("gen_ai.usage.output_tokens", json!(row.output_tokens)),
            (
                "gen_ai.usage.cache_read.input_tokens",
                json!(row.cache_read_tokens),
            ),
            (
                "gen_ai.usage.cache_creation.input_tokens",
                json!(row.cache_write_tokens),
            ),
            ("fanout.run.id", json!(run.run_id)),
            ("fanout.attempt", json!(row.attempt)),
            ("fanout.status", json!(status)),
            (
                "fanout.mode",
                json!(row.mode.map_or("-", |mode| mode.as_str())),
            ),
            ("fanout.escalated", json!(row.escalated)),
            ("fanout.cost.usd", json!(row.cost_usd)),
        ];
        if let Some(provider) = &provider {
            attributes.push(("gen_ai.provider.name", json!(provider)));
        }
        if let Some(scope) = records.scopes.get(row.agent_id.as_str()) {
            attributes.push(("fanout.scope", json!(scope)));
        }
        if failed {
            attributes.push(("error.type", json!(status)));
        }
        out.push(Span {
            events: denials
                .iter()
                .map(|denial| SpanEvent {
                    name: DENIAL_EVENT,
                    time_unix_nano: time(Some(&denial.at)).unwrap_or(start),
                    attributes: vec![
                        ("gen_ai.tool.name", json!(denial.tool)),
                        ("fanout.denial.target", json!(denial.target)),
                        ("fanout.denial.reason", json!(denial.reason)),
                    ],
                })
                .collect(),
            span_id: attempt_id,
            parent_span_id: Some(root_id),
            name: format!("invoke_agent {}", row.agent_id),
            kind: KIND_INTERNAL,
            start_unix_nano: start,
            end_unix_nano: end,
            attributes,
            error: failed.then(|| row.error.clone().unwrap_or_else(|| status.to_owned())),
        });

        let mut previous = start;
        for event in calls {
            let at = time(Some(&event.at)).unwrap_or(end);
            let call_start = tools
                .iter()
                .filter_map(|call| time(call.ended_at.as_deref()))
                .filter(|ended| *ended <= at)
                .fold(previous, u128::max)
                .min(at);
            previous = at;
            let payload = &event.payload;
            let call_model = payload["model"].as_str().unwrap_or(&model).to_owned();
            let mut attributes = vec![
                ("gen_ai.operation.name", json!("chat")),
                ("gen_ai.request.model", json!(call_model)),
                ("gen_ai.agent.id", json!(row.agent_id)),
                (
                    "gen_ai.usage.input_tokens",
                    json!(payload["input_tokens"].as_u64().unwrap_or(0)),
                ),
                (
                    "gen_ai.usage.output_tokens",
                    json!(payload["output_tokens"].as_u64().unwrap_or(0)),
                ),
                ("fanout.turn", json!(payload["turn"].as_u64().unwrap_or(0))),
                (
                    "fanout.cost.usd",
                    json!(payload["dollars"].as_f64().unwrap_or(0.0)),
                ),
            ];
            if let Some(provider) = payload["provider"].as_str() {
                attributes.push(("gen_ai.provider.name", json!(provider)));
            }
            if let Some(read) = payload["cache_read_tokens"].as_u64() {
                attributes.push(("gen_ai.usage.cache_read.input_tokens", json!(read)));
            }
            if let Some(written) = payload["cache_write_tokens"].as_u64() {
                attributes.push(("gen_ai.usage.cache_creation.input_tokens", json!(written)));
            }
            if let Some(tries) = payload["tries"].as_u64() {
                attributes.push(("fanout.call.tries", json!(tries)));
            }
            if let Some(wait) = payload["rate_wait_ms"].as_u64() {
                attributes.push(("fanout.rate_wait_ms", json!(wait)));
            }
            if let Some(limited) = payload["rate_limited"].as_u64() {
                attributes.push(("fanout.call.rate_limited", json!(limited)));
            }
            let answer = &payload["answer"];
            if let Some(id) = answer["id"].as_str() {
                attributes.push(("gen_ai.response.id", json!(id)));
            }
            if let Some(model) = answer["model"].as_str() {
                attributes.push(("gen_ai.response.model", json!(model)));
            }
            if let Some(reason) = answer["finish_reason"].as_str() {
                attributes.push(("gen_ai.response.finish_reasons", json!([reason])));
            }
            // The conventions' structured values, sent as their JSON text (span attributes
            // hold no maps).
            let content = &payload["content"];
            if records.content && content.is_object() {
                for (key, field) in [
                    ("gen_ai.system_instructions", "system_instructions"),
                    ("gen_ai.input.messages", "input_messages"),
                    ("gen_ai.output.messages", "output_messages"),
                ] {
                    attributes.push((key, Value::String(content[field].to_string())));
                }
            }
            out.push(Span {
                events: Vec::new(),
                span_id: span_id(&format!("{key}/call/{}", event.seq)),
                parent_span_id: Some(attempt_id),
                name: format!("chat {call_model}"),
                kind: KIND_CLIENT,
                start_unix_nano: call_start,
                end_unix_nano: at,
                attributes,
                error: None,
            });
        }
        let call_ids = tool_call_ids(calls, tools);
        for (call, call_id) in tools.iter().copied().zip(call_ids) {
            let call_start = time(Some(&call.started_at)).unwrap_or(start);
            let outcome = call
                .outcome
                .clone()
                .unwrap_or_else(|| if call.ok { "ok" } else { "error" }.to_owned());
            let mut attributes = vec![
                ("gen_ai.operation.name", json!("execute_tool")),
                ("gen_ai.tool.name", json!(call.tool)),
                ("gen_ai.agent.id", json!(row.agent_id)),
                ("fanout.tool.outcome", json!(outcome)),
                ("fanout.tool.seq", json!(call.seq)),
            ];
            if let Some(call_id) = call_id {
                attributes.push(("gen_ai.tool.call.id", json!(call_id)));
            }
            if let Some(target) = &call.target {
                attributes.push(("fanout.tool.target", json!(target)));
            }
            if outcome != "ok" {
                attributes.push(("error.type", json!(outcome)));
            }
            out.push(Span {
                events: Vec::new(),
                span_id: span_id(&format!("{key}/tool/{}", call.seq)),
                parent_span_id: Some(attempt_id),
                name: format!("execute_tool {}", call.tool),
                kind: KIND_INTERNAL,
                start_unix_nano: call_start,
                end_unix_nano: time(call.ended_at.as_deref())
                    .unwrap_or(call_start)
                    .max(call_start),
                attributes,
                error: (outcome != "ok")
                    .then(|| call.error.clone().unwrap_or_else(|| outcome.clone())),
            });
        }
    }
    phase_spans(records, &run.run_id, root_id, run_end, &mut out);
    if let Some(planning) = &records.planning {
        let start = time(planning["started_at"].as_str()).unwrap_or(run_start);
        let end = time(planning["ended_at"].as_str())
            .unwrap_or(start)
            .max(start);
        let mut attributes = vec![
            ("gen_ai.workflow.name", json!(run.workflow)),
            ("fanout.plan.calls", planning["calls"].clone()),
            (
                "gen_ai.usage.input_tokens",
                planning["input_tokens"].clone(),
            ),
            (
                "gen_ai.usage.output_tokens",
                planning["output_tokens"].clone(),
            ),
            ("fanout.cost.usd", planning["dollars"].clone()),
        ];
        if let Some(model) = planning["model"].as_str() {
            attributes.push(("gen_ai.request.model", json!(model)));
        }
        if let Some(provider) = planning["provider"].as_str() {
            attributes.push(("gen_ai.provider.name", json!(provider)));
        }
        out.push(Span {
            events: Vec::new(),
            span_id: span_id(&format!("{}/plan", run.run_id)),
            parent_span_id: Some(root_id),
            name: format!("plan {}", run.workflow),
            kind: KIND_INTERNAL,
            start_unix_nano: start,
            end_unix_nano: end,
            attributes,
            error: None,
        });
        // The run began with its planning.
        if let Some(root) = out.first_mut() {
            root.start_unix_nano = root.start_unix_nano.min(start);
        }
    }
    out
}

/// The run's phases (`agents`, `verify`, `synthesis`, from the store's `phase` events), each
/// from its event to the next phase or the run's end, and one span per checkpoint at the
/// moment it was taken; all children of the root.
fn phase_spans(
    records: &RunRecords,
    run_id: &crate::ids::RunId,
    root_id: [u8; 8],
    run_end: u128,
    out: &mut Vec<Span>,
) {
    let phases: Vec<&EventRow> = records
        .events
        .iter()
        .filter(|event| event.kind == "phase")
        .collect();
    for (index, event) in phases.iter().enumerate() {
        let name = event.payload["name"].as_str().unwrap_or("phase");
        let start = time(Some(&event.at)).unwrap_or(run_end);
        let end = phases
            .get(index + 1)
            .and_then(|next| time(Some(&next.at)))
            .unwrap_or(run_end)
            .max(start);
        let failed = name.starts_with("checkpoint failed");
        out.push(Span {
            events: Vec::new(),
            span_id: span_id(&format!("{run_id}/phase/{index}")),
            parent_span_id: Some(root_id),
            name: if failed {
                "checkpoint".to_owned()
            } else {
                name.to_owned()
            },
            kind: KIND_INTERNAL,
            start_unix_nano: start,
            end_unix_nano: if failed { start } else { end },
            attributes: vec![("fanout.phase", json!(name))],
            error: failed.then(|| name.to_owned()),
        });
    }
    for event in records.events.iter().filter(|e| e.kind == "checkpoint") {
        let at = time(Some(&event.at)).unwrap_or(run_end);
        let seq = event.payload["seq"].as_u64().unwrap_or_default();
        out.push(Span {
            events: Vec::new(),
            span_id: span_id(&format!("{run_id}/checkpoint/{seq}")),
            parent_span_id: Some(root_id),
            name: format!("checkpoint {seq}"),
            kind: KIND_INTERNAL,
            start_unix_nano: at,
            end_unix_nano: at,
            attributes: vec![
                ("fanout.checkpoint.seq", json!(seq)),
                ("fanout.checkpoint.commit", event.payload["commit"].clone()),
            ],
            error: None,
        });
    }
}

/// The model's id of each tool call of an attempt, in the order of `tools` (the attempt's
/// `tool_calls` rows, in the order they ran): the tool calls its answers asked for, in order,
/// matched by name. The agent runs every tool call it is asked for in that order, so the
/// match is exact; a row that matches nothing (records made before answers were kept) has
/// none.
fn tool_call_ids<'a>(calls: &'a [&EventRow], tools: &[&ToolCallRow]) -> Vec<Option<&'a str>> {
    let asked: Vec<(&str, &str)> = calls
        .iter()
        .filter_map(|event| event.payload["answer"]["tool_calls"].as_array())
        .flatten()
        .filter_map(|pair| Some((pair.get(0)?.as_str()?, pair.get(1)?.as_str()?)))
        .collect();
    let mut next = 0;
    tools
        .iter()
        .map(|call| {
            let found = asked[next.min(asked.len())..]
                .iter()
                .position(|(_, name)| *name == call.tool)?;
            let (id, _) = asked[next + found];
            next += found + 1;
            Some(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::store::RunStatus;

    fn records() -> RunRecords {
        let run = RunRow {
            run_id: "r".into(),
            workflow: "wf".to_owned(),
            config_path: None,
            plan_hash: None,
            repo: None,
            status: RunStatus::Partial,
            started_at: "2026-01-01T00:00:00.000Z".to_owned(),
            ended_at: Some("2026-01-01T00:00:10.000Z".to_owned()),
            base_commit: None,
            agents_planned: 1,
            total_tokens: 0,
            total_input_tokens: 0,
            total_output_tokens: 0,
            total_cost_usd: 0.0,
            error: Some("1 agent(s) rolled back".to_owned()),
        };
        let attempt = AgentRow {
            run_id: "r".into(),
            agent_id: "a".into(),
            attempt: 1,
            task_description: None,
            files_accessed: Vec::new(),
            tools_called: vec!["write_file".to_owned()],
            status: Some(AgentStatus::Rollback),
            token_count: 15,
            mode: Some(crate::config::Mode::Fast),
            timestamp_start: Some("2026-01-01T00:00:01.000Z".to_owned()),
            timestamp_end: Some("2026-01-01T00:00:05.000Z".to_owned()),
            model: Some("m".to_owned()),
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.1,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_saved_usd: 0.0,
            escalated: false,
            error: Some("tests failed".to_owned()),
            checkpoint: None,
        };
        let call = EventRow {
            seq: 7,
            at: "2026-01-01T00:00:04.000Z".to_owned(),
            agent_id: Some("a".into()),
            kind: "model_call".to_owned(),
            payload: json!({"attempt": 1, "turn": 2, "provider": "openai", "model": "m",
                            "input_tokens": 10, "output_tokens": 5, "dollars": 0.1,
                            "answer": {"id": "msg_1", "model": "m-2026", "finish_reason": "tool_call",
                                       "tool_calls": [["toolu_1", "read_file"], ["toolu_2", "write_file"]]}}),
        };
        let denied = ToolCallRow {
            attempt: 1,
            seq: 1,
            tool: "write_file".to_owned(),
            target: Some(".env".to_owned()),
            ok: false,
            outcome: Some("denied".to_owned()),
            error: Some("protected path".to_owned()),
            started_at: "2026-01-01T00:00:02.000Z".to_owned(),
            ended_at: Some("2026-01-01T00:00:03.000Z".to_owned()),
            duration_ms: Some(1000),
            bytes: None,
            paths: Vec::new(),
        };
        RunRecords {
            run: Some(run),
            attempts: vec![attempt],
            events: vec![call],
            tool_calls: vec![("a".into(), denied)],
            scopes: HashMap::from([("a".to_owned(), vec!["src/a.rs".to_owned()])]),
            denials: vec![(
                "a".into(),
                DenialRow {
                    attempt: 1,
                    tool: "write_file".to_owned(),
                    target: Some(".env".to_owned()),
                    reason: "protected path".to_owned(),
                    at: "2026-01-01T00:00:02.500Z".to_owned(),
                },
            )],
            planning: None,
            content: false,
        }
    }

    fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a Value> {
        span.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }

    /// A rolled-back attempt, a denied tool call and a partial run are errors with their
    /// reason; a model call starts where the tool call before it ended.
    #[test]
    fn failures_carry_error_type_and_calls_start_after_the_step_before() {
        let spans = spans(&records(), SystemTime::now());
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "invoke_workflow wf",
                "invoke_agent a",
                "chat m",
                "execute_tool write_file"
            ]
        );
        let [root, agent, chat, tool] = [&spans[0], &spans[1], &spans[2], &spans[3]];
        assert_eq!(attr(root, "error.type"), Some(&json!("partial")));
        assert_eq!(root.error.as_deref(), Some("1 agent(s) rolled back"));
        assert_eq!(attr(agent, "error.type"), Some(&json!("rollback")));
        assert_eq!(agent.error.as_deref(), Some("tests failed"));
        assert_eq!(attr(agent, "gen_ai.provider.name"), Some(&json!("openai")));
        assert_eq!(attr(agent, "fanout.scope"), Some(&json!(["src/a.rs"])));
        assert_eq!(attr(tool, "error.type"), Some(&json!("denied")));
        assert_eq!(attr(chat, "error.type"), None);
        assert_eq!(chat.parent_span_id.as_ref(), Some(&agent.span_id));
        assert_eq!(tool.parent_span_id.as_ref(), Some(&agent.span_id));
        // 00:00:03 (the tool call's end) to 00:00:04 (the answer).
        assert_eq!(chat.end_unix_nano - chat.start_unix_nano, 1_000_000_000);

        // The answer's id, model and finish reason; the tool call's id, matched by name.
        assert_eq!(attr(chat, "gen_ai.response.id"), Some(&json!("msg_1")));
        assert_eq!(attr(chat, "gen_ai.response.model"), Some(&json!("m-2026")));
        assert_eq!(
            attr(chat, "gen_ai.response.finish_reasons"),
            Some(&json!(["tool_call"]))
        );
        assert_eq!(attr(tool, "gen_ai.tool.call.id"), Some(&json!("toolu_2")));
        // The denial is an event on its attempt's span, at its time.
        assert_eq!(agent.events.len(), 1);
        let denial = &agent.events[0];
        assert_eq!(denial.name, DENIAL_EVENT);
        assert_eq!(
            denial.time_unix_nano,
            time(Some("2026-01-01T00:00:02.500Z")).unwrap()
        );
        assert!(
            denial
                .attributes
                .contains(&("fanout.denial.reason", json!("protected path")))
        );
        assert!(root.events.is_empty() && tool.events.is_empty());

        assert_eq!(root.parent_span_id, None);
        assert_eq!(chat.kind, KIND_CLIENT);
        assert_eq!(chat.error, None);
    }
}
