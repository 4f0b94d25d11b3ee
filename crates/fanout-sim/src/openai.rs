//! The OpenAI Chat Completions wire format: request validation, JSON answers and the
//! `data:`-only stream ending in `data: [DONE]`.
//!
//! Validation follows the real API: required `model` / `messages`, known roles, `tool` messages
//! answering a preceding assistant `tool_calls` id (and every call answered before the next
//! non-tool message), `tool_choice` naming a declared function.

use std::collections::HashSet;

use serde_json::{Map, Value, json};

use crate::cache::{CacheUse, Part, Prefix};
use crate::model::{Answer, ApiError, Block, PastCall, Request, Tool, content_text};
use crate::prng::SplitMix64;
use crate::tokens::ByteCount;

fn missing(param: &str) -> ApiError {
    ApiError::invalid(format!("Missing required parameter: '{param}'."))
        .param(param)
        .code("missing_required_parameter")
}

fn invalid_value(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message)
        .param(param)
        .code("invalid_value")
}

/// Validates a `/v1/chat/completions` body.
pub(crate) fn normalize(body: &Value) -> Result<Request, ApiError> {
    let Some(obj) = body.as_object() else {
        return Err(
            ApiError::invalid("The request body must be a JSON object.").code("invalid_type")
        );
    };
    let model = match obj.get("model") {
        None | Some(Value::Null) => return Err(missing("model")),
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        Some(_) => {
            return Err(invalid_value(
                "model",
                "Invalid value for 'model': expected a non-empty string.",
            ));
        }
    };
    let max_tokens = match obj
        .get("max_completion_tokens")
        .or_else(|| obj.get("max_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Some(n),
            _ => {
                return Err(invalid_value(
                    "max_completion_tokens",
                    "Invalid 'max_completion_tokens': expected a positive integer.",
                ));
            }
        },
    };
    let stream = match obj.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(invalid_value(
                "stream",
                "Invalid type for 'stream': expected a boolean.",
            ));
        }
    };
    let include_usage = obj
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut bytes = ByteCount::default();
    let mut prefix = Prefix::default();
    let tools = parse_tools(obj, &mut bytes, &mut prefix)?;
    let forced_tool = parse_tool_choice(obj, &tools)?;

    let messages = match obj.get("messages") {
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(invalid_value(
                "messages",
                "Invalid type for 'messages': expected an array.",
            ));
        }
    };
    if messages.is_empty() {
        return Err(invalid_value(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        )
        .code("empty_array"));
    }
    let mut system = String::new();
    let mut last_user = String::new();
    // Set at the second user message (no copy for the common single-turn request).
    let mut first_user: Option<String> = None;
    let mut users = 0usize;
    let mut history: Vec<PastCall> = Vec::new();
    let mut trailing_tools = String::new();
    let mut turn = 1;
    let mut open_calls: Vec<String> = Vec::new();
    let mut answered: HashSet<String> = HashSet::new();
    for (i, message) in messages.iter().enumerate() {
        let Some(message) = message.as_object() else {
            return Err(invalid_value(
                &format!("messages.[{i}]"),
                format!("Invalid type for 'messages[{i}]': expected an object."),
            ));
        };
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if role != "tool" && !open_calls.is_empty() {
            let missing_ids: Vec<&str> = open_calls
                .iter()
                .filter(|id| !answered.contains(*id))
                .map(String::as_str)
                .collect();
            if !missing_ids.is_empty() {
                return Err(invalid_value(
                    "messages",
                    format!(
                        "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                        missing_ids.join(", ")
                    ),
                ));
            }
            open_calls.clear();
            answered.clear();
        }
        let before = bytes.0;
        let content = message.get("content").unwrap_or(&Value::Null);
        if !matches!(content, Value::Null | Value::String(_) | Value::Array(_)) {
            return Err(invalid_value(
                &format!("messages.[{i}].content"),
                format!(
                    "Invalid type for 'messages[{i}].content': expected a string or an array of content parts."
                ),
            ));
        }
        let text = content_text(content);
        bytes.text(&text);
        match role {
            "system" | "developer" => {
                if !system.is_empty() {
                    system.push('\n');
                }
                system.push_str(&text);
            }
            "user" => {
                if content.is_null() {
                    return Err(missing(&format!("messages.[{i}].content")));
                }
                if first_user.is_none() && users > 0 {
                    first_user = Some(std::mem::take(&mut last_user));
                }
                users += 1;
                last_user = text;
                trailing_tools.clear();
            }
            "assistant" => {
                turn += 1;
                trailing_tools.clear();
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    let Some(calls) = calls.as_array() else {
                        return Err(invalid_value(
                            &format!("messages.[{i}].tool_calls"),
                            "Invalid type for 'tool_calls': expected an array.",
                        ));
                    };
                    for (j, call) in calls.iter().enumerate() {
                        let id = call.get("id").and_then(Value::as_str);
                        let function = call.get("function");
                        let name = function.and_then(|f| f.get("name")).and_then(Value::as_str);
                        let arguments = function
                            .and_then(|f| f.get("arguments"))
                            .and_then(Value::as_str);
                        let (Some(id), Some(name), Some(arguments)) = (id, name, arguments) else {
                            return Err(missing(&format!("messages.[{i}].tool_calls.[{j}]")));
                        };
                        bytes.text(name);
                        bytes.text(arguments);
                        open_calls.push(id.to_string());
                        history.push(PastCall {
                            id: id.to_string(),
                            name: name.to_string(),
                            input: serde_json::from_str(arguments).unwrap_or(Value::Null),
                            result: None,
                            is_error: false,
                        });
                    }
                }
            }
            "tool" => {
                let Some(id) = message.get("tool_call_id").and_then(Value::as_str) else {
                    return Err(missing(&format!("messages.[{i}].tool_call_id")));
                };
                if !open_calls.iter().any(|c| c == id) {
                    return Err(invalid_value(
                        &format!("messages.[{i}].role"),
                        "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with 'tool_calls'.",
                    ));
                }
                answered.insert(id.to_string());
                // Chat Completions has no error flag: clients say it in the text.
                let is_error = text.starts_with("Error:");
                PastCall::answer(&mut history, id, text.clone(), is_error);
                if !trailing_tools.is_empty() {
                    trailing_tools.push('\n');
                }
                trailing_tools.push_str(&text);
            }
            "function" => {}
            other => {
                return Err(invalid_value(
                    &format!("messages.[{i}].role"),
                    format!(
                        "Invalid value: '{other}'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'."
                    ),
                ));
            }
        }
        // Each content part is a boundary of its own (OpenAI matches prefixes token by token;
        // parts are the finest grain the simulator keeps), then the message as a whole.
        let mut parts_bytes = 0;
        if let Value::Array(parts) = content {
            for part in parts {
                let size = part.get("text").and_then(Value::as_str).map_or(0, str::len);
                prefix.push(Part::Messages, part, size);
                parts_bytes += size;
            }
        }
        prefix.push_object(
            Part::Messages,
            message,
            (bytes.0 - before).saturating_sub(parts_bytes),
        );
    }
    if !trailing_tools.is_empty() {
        last_user = trailing_tools;
    }

    let json_schema = match obj.get("response_format") {
        None | Some(Value::Null) => None,
        Some(format) => match format.get("type").and_then(Value::as_str) {
            Some("text" | "json_object") => None,
            Some("json_schema") => match format.get("json_schema").and_then(|j| j.get("schema")) {
                Some(schema @ Value::Object(_)) => Some(schema.clone()),
                _ => return Err(missing("response_format.json_schema.schema")),
            },
            _ => {
                return Err(invalid_value(
                    "response_format.type",
                    "Invalid value for 'response_format.type': expected 'text', 'json_object' or 'json_schema'.",
                ));
            }
        },
    };

    Ok(Request {
        model,
        max_tokens,
        stream,
        include_usage,
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

fn parse_tools(
    obj: &Map<String, Value>,
    bytes: &mut ByteCount,
    prefix: &mut Prefix,
) -> Result<Vec<Tool>, ApiError> {
    let list = match obj.get("tools") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(invalid_value(
                "tools",
                "Invalid type for 'tools': expected an array.",
            ));
        }
    };
    let mut tools = Vec::new();
    for (i, tool) in list.iter().enumerate() {
        let function = tool.get("function");
        let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(missing(&format!("tools[{i}].function.name")));
        };
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            return Err(invalid_value(
                &format!("tools[{i}].function.name"),
                format!(
                    "Invalid 'tools[{i}].function.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]{{1,64}}$'."
                ),
            ));
        }
        let schema = function
            .and_then(|f| f.get("parameters"))
            .filter(|p| p.is_object())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        let before = bytes.0;
        bytes.text(name);
        if let Some(description) = function
            .and_then(|f| f.get("description"))
            .and_then(Value::as_str)
        {
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
    let Some(choice) = obj.get("tool_choice").filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let needs_tools = || {
        invalid_value(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
    };
    match choice {
        Value::String(s) if s == "none" || s == "auto" => Ok(None),
        Value::String(s) if s == "required" => match tools.first() {
            Some(tool) => Ok(Some(tool.name.clone())),
            None => Err(needs_tools()),
        },
        Value::Object(_) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            let Some(name) = name else {
                return Err(missing("tool_choice.function.name"));
            };
            if tools.is_empty() {
                return Err(needs_tools());
            }
            if tools.iter().any(|t| t.name == name) {
                Ok(Some(name.to_string()))
            } else {
                Err(invalid_value(
                    "tool_choice",
                    format!(
                        "Invalid value for 'tool_choice': function '{name}' is not one of the declared 'tools'."
                    ),
                ))
            }
        }
        _ => Err(invalid_value(
            "tool_choice",
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or a function object.",
        )),
    }
}

fn finish_reason(answer: &Answer) -> &'static str {
    if answer.has_tool_use() {
        "tool_calls"
    } else if answer.hit_max_tokens {
        "length"
    } else {
        "stop"
    }
}

fn usage(request: &Request, answer: &Answer) -> Value {
    let output = answer.output_tokens();
    json!({
        "prompt_tokens": request.input_tokens,
        "completion_tokens": output,
        "total_tokens": request.input_tokens + output,
        "prompt_tokens_details": {"cached_tokens": request.cache.read},
        "completion_tokens_details": {"reasoning_tokens": 0}
    })
}

fn split_answer(answer: &Answer) -> (Option<String>, Vec<(&str, String)>) {
    let mut text: Option<String> = None;
    let mut calls = Vec::new();
    for block in &answer.blocks {
        match block {
            Block::Text(t) => text.get_or_insert_with(String::new).push_str(t),
            Block::ToolUse { name, input } => calls.push((
                name.as_str(),
                serde_json::to_string(input).unwrap_or_else(|_| "{}".to_string()),
            )),
        }
    }
    (text, calls)
}

fn call_id(seq: u64, i: usize) -> String {
    format!("call_sim{seq:012}{i:03}")
}

/// The non-streaming `chat.completion`.
pub(crate) fn render_completion(
    request: &Request,
    answer: &Answer,
    seq: u64,
    created: u64,
) -> Value {
    let (text, calls) = split_answer(answer);
    let mut message = json!({"role": "assistant", "content": text, "refusal": null});
    if !calls.is_empty() {
        let list: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, (name, args))| {
                json!({"id": call_id(seq, i), "type": "function",
                       "function": {"name": name, "arguments": args}})
            })
            .collect();
        message["tool_calls"] = Value::Array(list);
    }
    json!({
        "id": format!("chatcmpl-sim{seq:016}"),
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{"index": 0, "message": message, "logprobs": null,
                     "finish_reason": finish_reason(answer)}],
        "usage": usage(request, answer),
        "system_fingerprint": "fp_fanout_sim"
    })
}

/// The `data:` events of a streamed answer (the last one is `data: [DONE]`).
pub(crate) fn render_stream(
    request: &Request,
    answer: &Answer,
    seq: u64,
    created: u64,
    rng: &mut SplitMix64,
) -> Vec<String> {
    let id = format!("chatcmpl-sim{seq:016}");
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": request.model, "system_fingerprint": "fp_fanout_sim",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
        });
        if request.include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let (text, calls) = split_answer(answer);
    let mut events = Vec::new();
    let first_content = if calls.is_empty() {
        json!("")
    } else {
        Value::Null
    };
    events.push(chunk(
        json!({"role": "assistant", "content": first_content, "refusal": null}),
        Value::Null,
    ));
    if let Some(text) = text {
        for piece in crate::anthropic::split_text(&text, rng, 12) {
            events.push(chunk(json!({"content": piece}), Value::Null));
        }
    }
    for (i, (name, args)) in calls.iter().enumerate() {
        events.push(chunk(
            json!({"tool_calls": [{"index": i, "id": call_id(seq, i), "type": "function",
                                   "function": {"name": name, "arguments": ""}}]}),
            Value::Null,
        ));
        for piece in crate::anthropic::split_text(args, rng, 9) {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
        }
    }
    events.push(chunk(json!({}), json!(finish_reason(answer))));
    if request.include_usage {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created,
            "model": request.model, "system_fingerprint": "fp_fanout_sim",
            "choices": [], "usage": usage(request, answer)
        });
        events.push(format!("data: {c}\n\n"));
    }
    events.push("data: [DONE]\n\n".to_string());
    events
}

/// The error body.
pub(crate) fn error_body(error: &ApiError) -> Value {
    json!({"error": {
        "message": error.message,
        "type": error.kind,
        "param": error.param,
        "code": error.code
    }})
}
