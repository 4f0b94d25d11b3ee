//! The Anthropic Messages wire format: request validation, JSON answers and the SSE stream.
//!
//! Validation follows the real API: required `model` / `max_tokens` / `messages`, roles
//! `user`/`assistant`, content blocks with a `type`, unique tool names, `tool_choice` naming a
//! declared tool, and tool-result pairing (the user message after an assistant message with N
//! `tool_use` blocks must begin with N `tool_result` blocks answering exactly those ids).

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::cache::{CacheUse, MAX_BREAKPOINTS, Part, Prefix};
use crate::model::{Answer, ApiError, Block, Endpoint, PastCall, Request, Tool, content_text};
use crate::prng::SplitMix64;
use crate::tokens::ByteCount;

fn field_required(field: &str) -> ApiError {
    ApiError::invalid(format!("{field}: Field required"))
}

/// Validates a `/v1/messages` or `/v1/messages/count_tokens` body.
pub(crate) fn normalize(endpoint: Endpoint, body: &Value) -> Result<Request, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            "Input should be a valid dictionary (JSON object)",
        ));
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(field_required("model")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "model: Input should be a non-empty string",
            ));
        }
    };
    let max_tokens = match (endpoint, obj.get("max_tokens")) {
        (Endpoint::Messages, None | Some(Value::Null)) => return Err(field_required("max_tokens")),
        (_, None | Some(Value::Null)) => None,
        (_, Some(v)) => match v.as_u64() {
            Some(n) => Some(n),
            None => {
                return Err(ApiError::invalid(
                    "max_tokens: Input should be a valid non-negative integer",
                ));
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b && endpoint == Endpoint::Messages,
        Some(_) => return Err(ApiError::invalid("stream: Input should be a valid boolean")),
    };
    let mut bytes = ByteCount::default();
    let mut prefix = Prefix::default();

    let system = match obj.get("system") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => {
            prefix.push(Part::System, &json!({"type": "text", "text": s}), s.len());
            s.clone()
        }
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                let Some(text) = block
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| block.get("type").and_then(Value::as_str) == Some("text"))
                else {
                    return Err(ApiError::invalid(format!(
                        "system.{i}: system blocks must be text blocks with a `text` string"
                    )));
                };
                prefix.push(Part::System, block, text.len());
            }
            content_text(&Value::Array(blocks.clone()))
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "system: Input should be a string or a list of text blocks",
            ));
        }
    };
    bytes.text(&system);

    let tools = parse_tools(obj, &mut bytes, &mut prefix)?;
    let forced_tool = parse_tool_choice(obj, &tools)?;

    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(field_required("messages")),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::invalid("messages: Input should be a valid list")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages: at least one message is required",
        ));
    }
    let mut turn = 1;
    let mut last_user = String::new();
    // Set at the second user turn (no copy for the common single-turn request).
    let mut first_user: Option<String> = None;
    let mut users = 0usize;
    let mut history: Vec<PastCall> = Vec::new();
    let mut pending_tool_uses: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(ApiError::invalid(format!(
                "messages.{i}: Input should be a valid dictionary"
            )));
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some(role @ ("user" | "assistant")) => role,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "messages.{i}.role: Input should be 'user' or 'assistant' (got '{other}')"
                )));
            }
            None => return Err(field_required(&format!("messages.{i}.role"))),
        };
        let blocks = content_blocks(message.get("content"), i)?;
        check_tool_results(i, role, &blocks, &pending_tool_uses)?;
        pending_tool_uses.clear();
        let mut user_text = String::new();
        for block in &blocks {
            let before = bytes.0;
            let kind = block
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match kind {
                "text" => {
                    let text = block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    bytes.text(text);
                    push_line(&mut user_text, text);
                }
                "tool_use" => {
                    if let Some(name) = block.get("name").and_then(Value::as_str) {
                        bytes.text(name);
                    }
                    if let Some(input) = block.get("input") {
                        bytes.json(input);
                    }
                    if role == "assistant"
                        && let Some(id) = block.get("id").and_then(Value::as_str)
                    {
                        pending_tool_uses.push(id.to_string());
                        history.push(PastCall {
                            id: id.to_string(),
                            name: block
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                            input: block.get("input").cloned().unwrap_or(Value::Null),
                            result: None,
                            is_error: false,
                        });
                    }
                }
                "tool_result" => {
                    let text = block.get("content").map(content_text).unwrap_or_default();
                    bytes.text(&text);
                    push_line(&mut user_text, &text);
                    if let Some(id) = block.get("tool_use_id").and_then(Value::as_str) {
                        let is_error = block.get("is_error").and_then(Value::as_bool) == Some(true);
                        PastCall::answer(&mut history, id, text, is_error);
                    }
                }
                _ => bytes.json(block),
            }
            prefix.push(Part::Messages, block, bytes.0 - before);
        }
        if role == "assistant" {
            turn += 1;
        } else {
            if first_user.is_none() && users > 0 {
                first_user = Some(std::mem::take(&mut last_user));
            }
            users += 1;
            last_user = user_text;
        }
    }

    let breakpoints = prefix.breakpoints();
    if breakpoints > MAX_BREAKPOINTS {
        return Err(ApiError::invalid(format!(
            "A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {breakpoints}."
        )));
    }

    let json_schema = match obj.get("output_config").and_then(|c| c.get("format")) {
        None | Some(Value::Null) => None,
        Some(format) => {
            if format.get("type").and_then(Value::as_str) != Some("json_schema") {
                return Err(ApiError::invalid(
                    "output_config.format.type: Input should be 'json_schema'",
                ));
            }
            match format.get("schema") {
                Some(schema @ Value::Object(_)) => Some(schema.clone()),
                _ => return Err(field_required("output_config.format.schema")),
            }
        }
    };

    Ok(Request {
        model,
        max_tokens,
        stream,
        include_usage: true,
        system,
        last_user,
        first_user: first_user.unwrap_or_default(),
        history,
        turn,
        tools,
        forced_tool,
        json_schema,
        input_tokens: bytes.tokens(),
        prefix,
        cache: CacheUse::default(),
    })
}

fn push_line(out: &mut String, text: &str) {
    if !out.is_empty() {
        out.push('\n');
    }
    out.push_str(text);
}

fn content_blocks(content: Option<&Value>, i: usize) -> Result<Vec<Value>, ApiError> {
    match content {
        None | Some(Value::Null) => Err(field_required(&format!("messages.{i}.content"))),
        Some(Value::String(s)) => Ok(vec![json!({"type": "text", "text": s})]),
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                let kind = block.get("type").and_then(Value::as_str);
                let ok = match kind {
                    Some("text") => block.get("text").is_some_and(Value::is_string),
                    Some("tool_use") => {
                        block.get("id").is_some_and(Value::is_string)
                            && block.get("name").is_some_and(Value::is_string)
                            && block.get("input").is_some_and(Value::is_object)
                    }
                    Some("tool_result") => block.get("tool_use_id").is_some_and(Value::is_string),
                    Some(_) => true,
                    None => false,
                };
                if !ok {
                    return Err(ApiError::invalid(format!(
                        "messages.{i}.content.{j}: invalid content block (a `type` and that type's required fields are needed)"
                    )));
                }
            }
            Ok(blocks.clone())
        }
        Some(_) => Err(ApiError::invalid(format!(
            "messages.{i}.content: Input should be a string or a list of content blocks"
        ))),
    }
}

/// The pairing rule between an assistant's `tool_use` blocks and the next user message.
fn check_tool_results(
    i: usize,
    role: &str,
    blocks: &[Value],
    pending: &[String],
) -> Result<(), ApiError> {
    let is_result = |b: &Value| b.get("type").and_then(Value::as_str) == Some("tool_result");
    if !pending.is_empty() {
        let leading = blocks.iter().take_while(|b| is_result(b)).count();
        if role != "user" || leading < pending.len() {
            return Err(ApiError::invalid(format!(
                "messages.{i}: Did not find {} tool_result block(s) at the beginning of this message. Messages following tool_use blocks must begin with a matching number of tool_result blocks.",
                pending.len()
            )));
        }
    }
    let wanted: HashSet<&str> = pending.iter().map(String::as_str).collect();
    let mut seen: HashSet<&str> = HashSet::new();
    for (j, block) in blocks.iter().enumerate() {
        if !is_result(block) {
            continue;
        }
        if role != "user" {
            return Err(ApiError::invalid(format!(
                "messages.{i}.content.{j}: tool_result blocks can only appear in user messages"
            )));
        }
        let id = block
            .get("tool_use_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !wanted.contains(id) || !seen.insert(id) {
            return Err(ApiError::invalid(format!(
                "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block must have a corresponding `tool_use` block in the previous message."
            )));
        }
    }
    Ok(())
}

fn parse_tools(
    obj: &Map<String, Value>,
    bytes: &mut ByteCount,
    prefix: &mut Prefix,
) -> Result<Vec<Tool>, ApiError> {
    let list = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(ApiError::invalid("tools: Input should be a valid list")),
    };
    let mut tools = Vec::new();
    let mut names = HashSet::new();
    for (i, tool) in list.iter().enumerate() {
        let name = tool.get("name").and_then(Value::as_str);
        let Some(name) = name else {
            return Err(field_required(&format!("tools.{i}.name")));
        };
        let kind = tool.get("type").and_then(Value::as_str);
        let before = bytes.0;
        if kind.is_some_and(|k| k != "custom") {
            // Server tools (web_search, bash, ...) carry no input_schema.
            bytes.json(tool);
            prefix.push(Part::Tools, tool, bytes.0 - before);
            names.insert(name.to_string());
            continue;
        }
        let valid_name = !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_name {
            return Err(ApiError::invalid(format!(
                "tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,128}}$'"
            )));
        }
        let schema = match tool.get("input_schema") {
            Some(schema @ Value::Object(s)) => {
                if s.get("type").and_then(Value::as_str) != Some("object") {
                    return Err(ApiError::invalid(format!(
                        "tools.{i}.input_schema.type: Input should be 'object'"
                    )));
                }
                schema.clone()
            }
            _ => return Err(field_required(&format!("tools.{i}.input_schema"))),
        };
        if !names.insert(name.to_string()) {
            return Err(ApiError::invalid("tools: Tool names must be unique."));
        }
        bytes.text(name);
        if let Some(description) = tool.get("description").and_then(Value::as_str) {
            bytes.text(description);
        }
        bytes.json(&schema);
        prefix.push(Part::Tools, tool, bytes.0 - before);
        tools.push(Tool {
            name: name.to_string(),
            schema,
        });
    }
    Ok(tools)
}

fn parse_tool_choice(obj: &Map<String, Value>, tools: &[Tool]) -> Result<Option<String>, ApiError> {
    let choice = match obj.get("tool_choice") {
        None | Some(Value::Null) => return Ok(None),
        Some(choice) => choice,
    };
    let kind = choice.get("type").and_then(Value::as_str);
    match kind {
        Some("auto" | "none") => Ok(None),
        Some("any") => match tools.first() {
            Some(tool) => Ok(Some(tool.name.clone())),
            None => Err(ApiError::invalid(
                "tool_choice: `any` requires at least one tool in `tools`",
            )),
        },
        Some("tool") => {
            let Some(name) = choice.get("name").and_then(Value::as_str) else {
                return Err(field_required("tool_choice.tool.name"));
            };
            if tools.iter().any(|t| t.name == name) {
                Ok(Some(name.to_string()))
            } else {
                let declared: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
                Err(ApiError::invalid(format!(
                    "tool_choice.tool.name: tool `{name}` is not in `tools` (declared: [{}])",
                    declared.join(", ")
                )))
            }
        }
        _ => Err(ApiError::invalid(
            "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'",
        )),
    }
}

/// Ids of one answer.
pub(crate) struct Ids {
    pub(crate) message: String,
    pub(crate) tool_uses: Vec<String>,
}

impl Ids {
    pub(crate) fn new(seq: u64, answer: &Answer) -> Self {
        let tool_uses = (0..answer.blocks.len())
            .map(|i| format!("toolu_sim{seq:012}{i:03}"))
            .collect();
        Self {
            message: format!("msg_sim{seq:016}"),
            tool_uses,
        }
    }
}

fn stop_reason(answer: &Answer) -> &'static str {
    if answer.has_tool_use() {
        "tool_use"
    } else if answer.hit_max_tokens {
        "max_tokens"
    } else {
        "end_turn"
    }
}

/// Usage with the input split as the API splits it: `input_tokens` is only what the cache
/// neither read nor wrote.
fn usage(request: &Request, output: u64) -> Value {
    let cache = request.cache;
    json!({
        "input_tokens": request.input_tokens.saturating_sub(cache.read + cache.creation),
        "cache_creation_input_tokens": cache.creation,
        "cache_read_input_tokens": cache.read,
        "output_tokens": output,
        "service_tier": "standard"
    })
}

/// The non-streaming `Message`.
pub(crate) fn render_message(request: &Request, answer: &Answer, ids: &Ids) -> Value {
    let content: Vec<Value> = answer
        .blocks
        .iter()
        .enumerate()
        .map(|(i, block)| match block {
            Block::Text(text) => json!({"type": "text", "text": text}),
            Block::ToolUse { name, input } => json!({
                "type": "tool_use",
                "id": ids.tool_uses.get(i).cloned().unwrap_or_default(),
                "name": name,
                "input": input
            }),
        })
        .collect();
    json!({
        "id": ids.message,
        "type": "message",
        "role": "assistant",
        "model": request.model,
        "content": content,
        "stop_reason": stop_reason(answer),
        "stop_sequence": null,
        "usage": usage(request, answer.output_tokens())
    })
}

fn event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// Splits `text` into pieces of 1..=max characters at random character positions.
pub(crate) fn split_text(text: &str, rng: &mut SplitMix64, max: u64) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let take = rng.range(1, max) as usize;
        let end = (at + take).min(chars.len());
        out.push(chars[at..end].iter().collect());
        at = end;
    }
    out
}

/// The SSE events of a streamed answer, one string per event, in wire order.
pub(crate) fn render_stream(
    request: &Request,
    answer: &Answer,
    ids: &Ids,
    rng: &mut SplitMix64,
) -> Vec<String> {
    let output_tokens = answer.output_tokens();
    let mut events = Vec::new();
    events.push(event(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": ids.message, "type": "message", "role": "assistant", "model": request.model,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": usage(request, 1)
        }}),
    ));
    for (index, block) in answer.blocks.iter().enumerate() {
        let (skeleton, pieces, delta_kind, field) = match block {
            Block::Text(text) => (
                json!({"type": "text", "text": ""}),
                split_text(text, rng, 12),
                "text_delta",
                "text",
            ),
            Block::ToolUse { name, input } => {
                let json_text = serde_json::to_string(input).unwrap_or_else(|_| "{}".to_string());
                let mut pieces = vec![String::new()];
                pieces.extend(split_text(&json_text, rng, 9));
                (
                    json!({"type": "tool_use", "id": ids.tool_uses.get(index).cloned().unwrap_or_default(),
                           "name": name, "input": {}}),
                    pieces,
                    "input_json_delta",
                    "partial_json",
                )
            }
        };
        events.push(event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": skeleton}),
        ));
        if index == 0 {
            events.push(event("ping", &json!({"type": "ping"})));
        }
        for piece in pieces {
            let mut delta = Map::new();
            delta.insert("type".into(), json!(delta_kind));
            delta.insert(field.into(), json!(piece));
            events.push(event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            ));
        }
        events.push(event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push(event(
        "message_delta",
        &json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(answer), "stop_sequence": null},
                "usage": {"input_tokens": request.input_tokens.saturating_sub(request.cache.read + request.cache.creation),
                          "cache_creation_input_tokens": request.cache.creation,
                          "cache_read_input_tokens": request.cache.read, "output_tokens": output_tokens}}),
    ));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    events
}

/// The error body.
pub(crate) fn error_body(error: &ApiError, request_id: &str) -> Value {
    json!({
        "type": "error",
        "error": {"type": error.kind, "message": error.message},
        "request_id": request_id
    })
}
