//! The provider-neutral view of a request and of an answer.
//!
//! `anthropic.rs` and `openai.rs` translate raw JSON into [`Request`] (validating on the way)
//! and an [`Answer`] back into raw JSON or SSE; scenario matching and default answers only see
//! these neutral types.

use serde_json::Value;

/// Which route a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Endpoint {
    Messages,
    CountTokens,
    ChatCompletions,
}

impl Endpoint {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::ChatCompletions => "chat_completions",
        }
    }

    pub(crate) fn is_openai(self) -> bool {
        matches!(self, Endpoint::ChatCompletions)
    }
}

/// A tool the request declares.
#[derive(Debug, Clone)]
pub(crate) struct Tool {
    pub(crate) name: String,
    pub(crate) schema: Value,
}

/// A tool call the model made earlier in the conversation and its result.
#[derive(Debug, Clone)]
pub(crate) struct PastCall {
    /// The call's id (`tool_use` id or OpenAI `tool_calls` id), to pair the result.
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) input: Value,
    /// The result's text; `None` while no result answered the call.
    pub(crate) result: Option<String>,
    /// Anthropic's `is_error`, or (Chat Completions has no flag) a result starting `Error:`.
    pub(crate) is_error: bool,
}

impl PastCall {
    /// Records `result` on the unanswered call with this id.
    pub(crate) fn answer(history: &mut [PastCall], id: &str, result: String, is_error: bool) {
        if let Some(call) = history
            .iter_mut()
            .rev()
            .find(|call| call.id == id && call.result.is_none())
        {
            call.result = Some(result);
            call.is_error = is_error;
        }
    }
}

/// A validated request, reduced to what the simulator acts on.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) model: String,
    pub(crate) max_tokens: Option<u64>,
    pub(crate) stream: bool,
    pub(crate) include_usage: bool,
    /// System prompt text (all system blocks joined with newlines).
    pub(crate) system: String,
    /// Text of the last user turn: its text blocks and tool results, joined with newlines.
    pub(crate) last_user: String,
    /// Text of the first user turn when there are several (a conversation's task: what a
    /// repair or a tool loop started from); empty when the last user turn is the only one.
    pub(crate) first_user: String,
    /// The tool calls of earlier assistant turns, in order, with what came back.
    pub(crate) history: Vec<PastCall>,
    /// Assistant turns so far + 1.
    pub(crate) turn: u64,
    pub(crate) tools: Vec<Tool>,
    /// The tool the request forces (`tool`/`function` choice, or `any`/`required` → first tool).
    pub(crate) forced_tool: Option<String>,
    /// The JSON schema of a structured-output request.
    pub(crate) json_schema: Option<Value>,
    /// All input tokens (uncached + cache writes + cache reads).
    pub(crate) input_tokens: u64,
    /// The blocks in cache order, for the prompt cache.
    pub(crate) prefix: crate::cache::Prefix,
    /// How `input_tokens` split, once the cache has seen the request (zero before).
    pub(crate) cache: crate::cache::CacheUse,
}

impl Request {
    /// The first user turn's text.
    pub(crate) fn first_user_text(&self) -> &str {
        if self.first_user.is_empty() {
            &self.last_user
        } else {
            &self.first_user
        }
    }

    /// Drops what only the answer's generation needed (prompt texts, tools, schema); a
    /// non-streamed reply is rendered from the model name and the token count.
    pub(crate) fn keep_reply_fields(&mut self) {
        self.system = String::new();
        self.last_user = String::new();
        self.first_user = String::new();
        self.history = Vec::new();
        self.tools = Vec::new();
        self.json_schema = None;
        self.prefix = crate::cache::Prefix::default();
    }
}

/// One generated content block.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Block {
    Text(String),
    ToolUse { name: String, input: Value },
}

/// What the "model" says.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) blocks: Vec<Block>,
    /// The text was cut at `max_tokens`.
    pub(crate) hit_max_tokens: bool,
}

impl Answer {
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Self {
            blocks: vec![Block::Text(text.into())],
            hit_max_tokens: false,
        }
    }

    pub(crate) fn has_tool_use(&self) -> bool {
        self.blocks
            .iter()
            .any(|b| matches!(b, Block::ToolUse { .. }))
    }

    /// Output tokens: ceil(bytes / 4) of the text plus the compact JSON of tool inputs, min 1.
    pub(crate) fn output_tokens(&self) -> u64 {
        let mut bytes = 0usize;
        for block in &self.blocks {
            match block {
                Block::Text(text) => bytes += text.len(),
                Block::ToolUse { input, .. } => {
                    bytes += serde_json::to_string(input).map_or(0, |s| s.len());
                }
            }
        }
        crate::tokens::tokens_for_bytes(bytes)
    }

    /// Cuts text-only answers to `max_tokens` (4 bytes per token) and marks them.
    pub(crate) fn apply_max_tokens(&mut self, max_tokens: Option<u64>) {
        let Some(max) = max_tokens else { return };
        if self.has_tool_use() || self.output_tokens() <= max.max(1) {
            return;
        }
        let mut budget = (max.max(1) as usize).saturating_mul(4);
        for block in &mut self.blocks {
            if let Block::Text(text) = block {
                if text.len() > budget {
                    let mut cut = budget;
                    while cut > 0 && !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                budget = budget.saturating_sub(text.len());
            }
        }
        self.hit_max_tokens = true;
    }
}

/// An error answer, rendered in each API's own shape.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    /// Anthropic `error.type`, also used as OpenAI `error.type` unless overridden.
    pub(crate) kind: String,
    pub(crate) message: String,
    /// OpenAI `param` (boxed to keep `Result<_, ApiError>` small).
    pub(crate) param: Option<Box<str>>,
    /// OpenAI `code`.
    pub(crate) code: Option<Box<str>>,
    pub(crate) headers: Vec<(String, String)>,
}

impl ApiError {
    pub(crate) fn new(status: u16, kind: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind: kind.to_string(),
            message: message.into(),
            param: None,
            code: None,
            headers: Vec::new(),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", message)
    }

    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into().into_boxed_str());
        self
    }

    pub(crate) fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into().into_boxed_str());
        self
    }
}

/// The text of a `content` value: a string, or the `text` of text blocks (other blocks add their
/// compact JSON to `bytes` but no text).
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                if let Some(text) = part.get("text").and_then(Value::as_str) {
                    if !out.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(text);
                }
            }
            out
        }
        _ => String::new(),
    }
}
