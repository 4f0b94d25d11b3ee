//! Provider-neutral request and response types.
//!
//! These are what the rest of the engine speaks. Each provider module translates them to and
//! from its own wire format; nothing here knows about HTTP or JSON field names of a vendor.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// One block of message content, in either direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    Text {
        text: String,
    },
    /// The model asks for a tool to be run. `input` is always a JSON object.
    ToolUse {
        id: String,
        name: String,
        input: Value,
    },
    /// The answer to a `ToolUse`, sent back in the next user turn.
    ToolResult {
        tool_use_id: String,
        content: String,
        is_error: bool,
    },
}

impl ContentBlock {
    pub fn text(text: impl Into<String>) -> Self {
        ContentBlock::Text { text: text.into() }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: Vec<ContentBlock>,
}

impl Message {
    pub fn user(text: impl Into<String>) -> Self {
        Message {
            role: Role::User,
            content: vec![ContentBlock::text(text)],
        }
    }

    pub fn assistant(content: Vec<ContentBlock>) -> Self {
        Message {
            role: Role::Assistant,
            content,
        }
    }

    /// The reply to a rejected answer: an error `tool_result` for the tool call it made, or
    /// plain text when it made none.
    pub fn rejection(tool_use_id: Option<String>, feedback: String) -> Self {
        match tool_use_id {
            Some(tool_use_id) => Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id,
                    content: feedback,
                    is_error: true,
                }],
            },
            None => Message::user(feedback),
        }
    }
}

/// A tool the model may call. `input_schema` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
}

/// How the model must use the tools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    #[default]
    Auto,
    /// Must call some tool.
    Any,
    /// Must call this tool (how plans and results are forced).
    Tool {
        name: String,
    },
    None,
}

/// Ask for the answer as JSON text valid against a schema (OpenAI `response_format`,
/// Anthropic `output_config.format`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: String,
    pub schema: Value,
}

/// One model call, provider-neutral.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub model: String,
    /// The system prompt. Marked for prompt caching together with the tools, so that many
    /// agents sharing one prompt pay for it once.
    pub system: Option<String>,
    /// This request's own part of the system prompt, sent after `system` as a block of its own
    /// so that `system` stays a prefix many requests share word for word (an agent's task,
    /// scope and tools after the rules every agent of the run is given).
    pub system_agent: Option<String>,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: u32,
    pub temperature: Option<f32>,
    pub stop_sequences: Vec<String>,
    /// Opaque end-user id (Anthropic `metadata.user_id`, OpenAI `user`).
    pub metadata_user_id: Option<String>,
    pub response_format: Option<JsonSchemaFormat>,
    /// Whether to mark the prefix all requests of a run share (tools, system, and the message
    /// blocks up to `shared_until`) for prompt caching.
    pub cache_prefix: bool,
    /// Whether to mark the conversation so far, so the next turn reads it from the cache: for
    /// turn loops (agents) only; a one-shot call would pay for a write nobody reads. Off by
    /// default.
    pub cache_turns: bool,
    /// The last message block `(message, block)` that every request of the run shares (an item
    /// worker's instructions); `None` when the shared prefix ends with the system prompt.
    pub shared_until: Option<(usize, usize)>,
}

impl Request {
    pub fn new(model: impl Into<String>, max_tokens: u32) -> Self {
        Request {
            model: model.into(),
            system: None,
            system_agent: None,
            messages: Vec::new(),
            tools: Vec::new(),
            tool_choice: None,
            max_tokens,
            temperature: None,
            stop_sequences: Vec::new(),
            metadata_user_id: None,
            response_format: None,
            cache_prefix: true,
            cache_turns: false,
            shared_until: None,
        }
    }

    /// Ask again after a rejected answer: the answer goes into the history, then `intro` with
    /// one line per problem (see [`Message::rejection`] for where it goes).
    pub fn push_rejection<P: std::fmt::Display>(
        &mut self,
        answer: Vec<ContentBlock>,
        tool_use_id: Option<String>,
        intro: &str,
        problems: &[P],
    ) {
        let mut feedback = intro.to_owned();
        for problem in problems {
            feedback.push_str("\n- ");
            feedback.push_str(&problem.to_string());
        }
        self.messages.push(Message::assistant(answer));
        self.messages
            .push(Message::rejection(tool_use_id, feedback));
    }

    /// Bytes of text the model will read: the basis for token estimates.
    pub fn input_bytes(&self) -> usize {
        let mut total = self.system.as_ref().map_or(0, String::len)
            + self.system_agent.as_ref().map_or(0, String::len);
        for tool in &self.tools {
            total += tool.name.len() + tool.description.len() + json_len(&tool.input_schema);
        }
        for message in &self.messages {
            for block in &message.content {
                total += block_bytes(block);
            }
        }
        total
    }

    /// Switches prompt caching of a turn loop on (the shared prefix and the conversation) or
    /// everything off.
    pub fn caching(mut self, on: bool) -> Self {
        self.cache_prefix = on;
        self.cache_turns = on;
        self
    }
}

/// Bytes of text the model reads in one block.
pub(crate) fn block_bytes(block: &ContentBlock) -> usize {
    match block {
        ContentBlock::Text { text } => text.len(),
        ContentBlock::ToolUse { name, input, .. } => name.len() + json_len(input),
        ContentBlock::ToolResult { content, .. } => content.len(),
    }
}

/// The length of `value` as compact JSON, counted without writing the text out (estimates
/// run for every call of a fleet).
pub(crate) fn json_len(value: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Counting cannot fail, and a Value always serializes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    Refusal,
    PauseTurn,
    ContextWindowExceeded,
    /// A value this version does not know; kept verbatim.
    Other(String),
}

/// Token accounting of one response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Every input token, cached or not.
    pub fn total_input(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens
    }

    /// The tokens this response is billed for.
    pub fn billed(&self) -> crate::config::price::TokenUse {
        crate::config::price::TokenUse {
            input: self.input_tokens,
            cache_write: self.cache_creation_input_tokens,
            cache_read: self.cache_read_input_tokens,
            output: self.output_tokens,
        }
    }

    /// Input tokens that count against an input-tokens-per-minute limit (cache reads do not).
    pub fn rate_limited_input(&self) -> u64 {
        self.input_tokens + self.cache_creation_input_tokens
    }
}

/// One dimension of a server's rate-limit state, as its headers reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitState {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Time until the bucket is full again, relative to when the response was received.
    pub reset_after: Option<Duration>,
}

/// The rate-limit headers of one response (Anthropic `anthropic-ratelimit-*`, OpenAI
/// `x-ratelimit-*`), normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitSnapshot {
    pub requests: LimitState,
    /// Combined tokens (OpenAI's only token dimension; Anthropic's most restrictive one).
    pub tokens: LimitState,
    pub input_tokens: LimitState,
    pub output_tokens: LimitState,
}

impl RateLimitSnapshot {
    pub fn is_empty(&self) -> bool {
        *self == RateLimitSnapshot::default()
    }
}

/// A complete answer of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub id: String,
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub usage: Usage,
    pub rate_limits: RateLimitSnapshot,
    pub request_id: Option<String>,
    pub received_at: SystemTime,
}

impl Response {
    /// All text blocks joined.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for block in &self.content {
            if let ContentBlock::Text { text } = block {
                out.push_str(text);
            }
        }
        out
    }

    /// The tool calls, in order.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|block| match block {
            ContentBlock::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn input_bytes_counts_texts_and_compact_json() {
        let mut request = Request::new("m", 10);
        request.system = Some("sys".into());
        let schema = json!({"type": "object", "properties": {"path": {"type": "string"}}});
        request.tools = vec![ToolSpec {
            name: "read".into(),
            description: "Read it".into(),
            input_schema: schema.clone(),
        }];
        let input = json!({"path": "a \"quoted\" name.txt"});
        request.messages = vec![
            Message::user("hello"),
            Message::assistant(vec![ContentBlock::ToolUse {
                id: "t1".into(),
                name: "read".into(),
                input: input.clone(),
            }]),
        ];
        let expected = "sys".len()
            + "read".len()
            + "Read it".len()
            + schema.to_string().len()
            + "hello".len()
            + "read".len()
            + input.to_string().len();
        assert_eq!(request.input_bytes(), expected);
    }
}
