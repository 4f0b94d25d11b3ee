//! A model call's content in the JSON shape of the OpenTelemetry GenAI semantic conventions
//! (`gen_ai.system_instructions`, `gen_ai.input.messages`, `gen_ai.output.messages`): messages
//! of `{role, parts}`, parts `text` (`content`), `tool_call` (`id`, `name`, `arguments`) and
//! `tool_call_response` (`id`, `response`); output messages with a `finish_reason`.
//!
//! What it owns: the translation of our request and response types into that shape. It does
//! not decide whether content is kept (that is the opt-in
//! `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`, read by the callers that record model
//! calls) and it does not export anything (`telemetry` does).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::types::{ContentBlock, Message, Response, Role, StopReason};

/// What the provider said of one answer, kept with every model call (content or not): the
/// `chat` span's `gen_ai.response.*` attributes and its tool calls' ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallAnswer {
    /// `gen_ai.response.id`: the provider's id of the answer.
    pub id: String,
    /// `gen_ai.response.model`: the model that answered, as the provider named it.
    pub model: String,
    /// `gen_ai.response.finish_reasons`: the conventions' name of why it stopped.
    pub finish_reason: String,
    /// The tool calls it asked for, in order: `[id, tool name]` (`gen_ai.tool.call.id` on the
    /// `execute_tool` spans).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<(String, String)>,
}

impl CallAnswer {
    pub fn of(response: &Response) -> CallAnswer {
        CallAnswer {
            id: response.id.clone(),
            model: response.model.clone(),
            finish_reason: finish_reason(&response.stop_reason),
            tool_calls: response
                .content
                .iter()
                .filter_map(|block| match block {
                    ContentBlock::ToolUse { id, name, .. } => Some((id.clone(), name.clone())),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// What one model call sent and received, in the conventions' shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallContent {
    /// `[{type: text, content}]`: the system prompt's parts, in the order sent.
    pub system_instructions: Value,
    /// `[{role, parts}]`: the conversation sent.
    pub input_messages: Value,
    /// `[{role: assistant, parts, finish_reason}]`: the answer.
    pub output_messages: Value,
}

impl CallContent {
    /// The content of a call that sent `system` (its parts) and `messages` and got `response`.
    pub fn new(system: &[&str], messages: &[Message], response: &Response) -> CallContent {
        CallContent {
            system_instructions: Value::Array(
                system
                    .iter()
                    .map(|text| json!({"type": "text", "content": text}))
                    .collect(),
            ),
            input_messages: Value::Array(messages.iter().map(message).collect()),
            output_messages: json!([{
                "role": "assistant",
                "parts": parts(&response.content),
                "finish_reason": finish_reason(&response.stop_reason),
            }]),
        }
    }
}

fn message(message: &Message) -> Value {
    let role = match message.role {
        Role::User => "user",
        Role::Assistant => "assistant",
    };
    json!({"role": role, "parts": parts(&message.content)})
}

fn parts(blocks: &[ContentBlock]) -> Vec<Value> {
    blocks
        .iter()
        .map(|block| match block {
            ContentBlock::Text { text } => json!({"type": "text", "content": text}),
            ContentBlock::ToolUse { id, name, input } => {
                json!({"type": "tool_call", "id": id, "name": name, "arguments": input})
            }
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => {
                let mut part =
                    json!({"type": "tool_call_response", "id": tool_use_id, "response": content});
                if *is_error && let Some(fields) = part.as_object_mut() {
                    fields.insert("is_error".into(), Value::Bool(true));
                }
                part
            }
        })
        .collect()
}

/// The conventions' finish reasons (`stop`, `length`, `tool_call`, `content_filter`); others
/// as the provider named them.
fn finish_reason(reason: &StopReason) -> String {
    match reason {
        StopReason::EndTurn | StopReason::StopSequence => "stop".to_owned(),
        StopReason::MaxTokens | StopReason::ContextWindowExceeded => "length".to_owned(),
        StopReason::ToolUse => "tool_call".to_owned(),
        StopReason::Refusal => "content_filter".to_owned(),
        StopReason::PauseTurn => "pause_turn".to_owned(),
        StopReason::Other(other) => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_role_and_parts_and_the_answer_has_a_finish_reason() {
        let messages = vec![
            Message::user("read a.txt"),
            Message {
                role: Role::Assistant,
                content: vec![ContentBlock::ToolUse {
                    id: "t1".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a.txt"}),
                }],
            },
            Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: "t1".into(),
                    content: "no such file".into(),
                    is_error: true,
                }],
            },
        ];
        let response = Response {
            id: "r".into(),
            model: "m".into(),
            content: vec![ContentBlock::text("done")],
            stop_reason: StopReason::EndTurn,
            usage: Default::default(),
            rate_limits: Default::default(),
            request_id: None,
            received_at: std::time::SystemTime::UNIX_EPOCH,
        };
        let content = CallContent::new(&["rules", "task"], &messages, &response);
        assert_eq!(
            content.system_instructions,
            json!([{"type": "text", "content": "rules"}, {"type": "text", "content": "task"}])
        );
        assert_eq!(
            content.input_messages,
            json!([
                {"role": "user", "parts": [{"type": "text", "content": "read a.txt"}]},
                {"role": "assistant", "parts": [{"type": "tool_call", "id": "t1",
                    "name": "read_file", "arguments": {"path": "a.txt"}}]},
                {"role": "user", "parts": [{"type": "tool_call_response", "id": "t1",
                    "response": "no such file", "is_error": true}]},
            ])
        );
        assert_eq!(
            content.output_messages,
            json!([{"role": "assistant", "parts": [{"type": "text", "content": "done"}],
                    "finish_reason": "stop"}])
        );
    }
}
