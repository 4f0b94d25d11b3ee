//! The Anthropic Messages API (`POST {base}/v1/messages`, `/v1/messages/count_tokens`).
//!
//! Owns only translation: [`request_body`] turns a [`Request`] into the wire JSON,
//! [`parse_message`] and [`StreamAssembler`] turn answers back into a [`Decoded`], and
//! [`parse_error_body`] reads error bodies. Transport, timeouts and headers shared with other
//! vendors live in [`super::http`] and [`super::headers`].
//!
//! Parsing is lenient about what it does not need (unknown fields, unknown stream events,
//! unknown stop reasons) and strict about what it does: an unknown content block type or a
//! missing usage count is a [`ProviderError::Malformed`], because silently dropping either
//! would lose output or break token accounting.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{ApiErrorDetails, ProviderError};
use super::headers;
use super::http::{
    DecodeError, Decoded, Dialect, Flow, HttpConfig, HttpTransport, StreamDecoder, encode,
    join_url, json_error, json_f32, json_u64, parse_url,
};
use super::sse::SseEvent;
use super::types::{ContentBlock, Message, Request, Role, StopReason, ToolChoice, ToolSpec, Usage};
use super::{Attempt, BoxFuture, Provider, Response};
use crate::env;

const PROVIDER: &str = "anthropic";

/// The `anthropic-version` header value both official SDKs send.
pub const DEFAULT_VERSION: &str = "2023-06-01";

const DIALECT: Dialect = Dialect {
    provider: PROVIDER,
    request_id_header: headers::ANTHROPIC_REQUEST_ID,
    rate_limits: headers::anthropic_rate_limits,
    error_body: parse_error_body,
};

/// Where and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnthropicConfig {
    /// Without `/v1`; a trailing slash is ignored.
    pub base_url: String,
    /// Sent as `x-api-key`; an empty key sends no key (for a local simulator).
    pub api_key: String,
    pub version: String,
    pub http: HttpConfig,
}

impl AnthropicConfig {
    /// The public API with this key and default timeouts.
    pub fn new(api_key: impl Into<String>) -> Self {
        AnthropicConfig {
            base_url: env::ANTHROPIC_DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            version: DEFAULT_VERSION.to_owned(),
            http: HttpConfig::default(),
        }
    }

    /// `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`. The key is required for the public API
    /// only: a custom base URL may be a local server that wants none.
    pub fn from_env() -> Result<Self, ProviderError> {
        let (api_key, base_url) = super::http::credentials_from_env(
            PROVIDER,
            env::ANTHROPIC_API_KEY,
            env::ANTHROPIC_BASE_URL,
        )?;
        let mut config = AnthropicConfig::new(api_key);
        if let Some(base_url) = base_url {
            config.base_url = base_url;
        }
        Ok(config)
    }
}

/// The Anthropic Messages API as a [`Provider`].
#[derive(Debug, Clone)]
pub struct AnthropicProvider {
    config: AnthropicConfig,
    transport: HttpTransport,
    headers: HeaderMap,
    /// Parsed once: a fleet sends thousands of requests to it.
    messages_url: reqwest::Url,
    count_tokens_url: String,
}

impl AnthropicProvider {
    /// A provider with its own connection pool.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let transport = HttpTransport::new(config.http.clone())?;
        Self::with_transport(config, transport)
    }

    /// A provider using an existing transport (sharing its pool and timeouts;
    /// `config.http` is then unused).
    pub fn with_transport(
        config: AnthropicConfig,
        transport: HttpTransport,
    ) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if !config.api_key.is_empty() {
            let mut key = header_value("the API key", &config.api_key)?;
            key.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), key);
        }
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            header_value("the API version", &config.version)?,
        );
        let base = config.base_url.trim_end_matches('/');
        Ok(AnthropicProvider {
            messages_url: parse_url(PROVIDER, &join_url(base, "v1/messages"))?,
            count_tokens_url: join_url(base, "v1/messages/count_tokens"),
            config,
            transport,
            headers,
        })
    }

    /// [`AnthropicConfig::from_env`] with default timeouts.
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::new(AnthropicConfig::from_env()?)
    }

    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }

    async fn send_request(
        &self,
        request: &Request,
        attempt: Attempt,
        stream: bool,
    ) -> Result<Response, ProviderError> {
        // Its own statement: the request's JSON tree is dropped here, not held across the call.
        // Bytes straight from the request: no JSON tree is built or held across the call.
        let body = encode_request(request, stream)?;
        self.transport
            .exchange::<StreamAssembler>(
                &DIALECT,
                self.messages_url.clone(),
                self.headers.clone(),
                body,
                attempt,
                stream,
                parse_message,
            )
            .await
    }

    async fn count(&self, request: &Request) -> Result<u64, ProviderError> {
        let body = encode(PROVIDER, &count_tokens_body(request))?;
        let mut reply = self
            .transport
            .post_json(
                &DIALECT,
                self.count_tokens_url.as_str(),
                self.headers.clone(),
                body,
                Attempt::default(),
                false,
            )
            .await?;
        let body = reply.body().await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|error| reply.malformed(json_error("the count_tokens body", &error)))?;
        json_u64(&value["input_tokens"])
            .ok_or_else(|| reply.malformed("count_tokens answer is missing `input_tokens`"))
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn send<'a>(
        &'a self,
        request: &'a Request,
        attempt: Attempt,
        stream: bool,
    ) -> BoxFuture<'a, Result<Response, ProviderError>> {
        Box::pin(self.send_request(request, attempt, stream))
    }

    fn count_tokens<'a>(
        &'a self,
        request: &'a Request,
    ) -> BoxFuture<'a, Option<Result<u64, ProviderError>>> {
        Box::pin(async move { Some(self.count(request).await) })
    }
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| ProviderError::InvalidRequest {
        provider: PROVIDER,
        message: format!("{what} contains characters not allowed in an HTTP header"),
    })
}

// ---------------------------------------------------------------------------------------------
// Request translation

/// The JSON body of `POST /v1/messages` for `request`.
pub fn request_body(request: &Request, stream: bool) -> Value {
    // Serializing a `Serialize` value to a tree cannot fail: every map key is a string.
    serde_json::to_value(WireBody::messages(request, stream)).unwrap_or(Value::Null)
}

/// The JSON body of `POST /v1/messages/count_tokens`: the prompt without generation controls.
pub fn count_tokens_body(request: &Request) -> Value {
    serde_json::to_value(WireBody::count_tokens(request)).unwrap_or(Value::Null)
}

/// The body of `POST /v1/messages` as bytes, written straight from `request`: no JSON tree and
/// no copy of the prompt, the tool schemas or the history (a fleet sends thousands of these).
/// The bytes are those of [`request_body`]: fields are declared in the order a JSON map sorts
/// them.
pub fn encode_request(request: &Request, stream: bool) -> Result<Vec<u8>, ProviderError> {
    encode(PROVIDER, &WireBody::messages(request, stream))
}

/// The wire body, borrowing everything from the [`Request`]. Fields in alphabetical order.
#[derive(Serialize)]
struct WireBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    messages: WireMessages<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireMetadata<'a>>,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_config: Option<WireOutputConfig<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<Vec<WireText<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<WireTools<'a>>,
}

impl<'a> WireBody<'a> {
    fn messages(request: &'a Request, stream: bool) -> WireBody<'a> {
        WireBody {
            max_tokens: Some(request.max_tokens),
            metadata: request
                .metadata_user_id
                .as_deref()
                .map(|user_id| WireMetadata { user_id }),
            stop_sequences: &request.stop_sequences,
            stream: stream.then_some(true),
            temperature: request.temperature.and_then(json_f32),
            ..WireBody::count_tokens(request)
        }
    }

    /// What both endpoints share: model, system, messages, tools, tool choice, output format.
    fn count_tokens(request: &'a Request) -> WireBody<'a> {
        let marks = super::cache::place(request);
        let cache = marks.system.then_some(CACHE_EPHEMERAL);
        let cache_last_tool = marks.tools;
        let has_tools = !request.tools.is_empty();
        WireBody {
            max_tokens: None,
            messages: WireMessages(&request.messages, marks),
            metadata: None,
            model: &request.model,
            output_config: request
                .response_format
                .as_ref()
                .map(|format| WireOutputConfig {
                    format: WireFormat {
                        schema: &format.schema,
                        kind: "json_schema",
                    },
                }),
            stop_sequences: &[],
            stream: None,
            // The cache prefix is tools, then system: a breakpoint here covers both
            // (`provider::cache` decides which blocks are marked).
            system: {
                let blocks: Vec<WireText<'a>> = request
                    .system
                    .as_deref()
                    .map(|text| WireText {
                        cache_control: cache,
                        text,
                        kind: "text",
                    })
                    .into_iter()
                    .chain(request.system_agent.as_deref().map(|text| WireText {
                        cache_control: None,
                        text,
                        kind: "text",
                    }))
                    .collect();
                (!blocks.is_empty()).then_some(blocks)
            },
            temperature: None,
            // The API refuses a tool_choice without tools.
            tool_choice: request
                .tool_choice
                .as_ref()
                .filter(|_| has_tools)
                .map(|choice| match choice {
                    ToolChoice::Auto => WireToolChoice {
                        name: None,
                        kind: "auto",
                    },
                    ToolChoice::Any => WireToolChoice {
                        name: None,
                        kind: "any",
                    },
                    ToolChoice::Tool { name } => WireToolChoice {
                        name: Some(name),
                        kind: "tool",
                    },
                    ToolChoice::None => WireToolChoice {
                        name: None,
                        kind: "none",
                    },
                }),
            tools: has_tools.then_some(WireTools {
                tools: &request.tools,
                cache_last: cache_last_tool,
            }),
        }
    }
}

#[derive(Serialize, Clone, Copy)]
struct CacheControl {
    #[serde(rename = "type")]
    kind: &'static str,
}

const CACHE_EPHEMERAL: CacheControl = CacheControl { kind: "ephemeral" };

#[derive(Serialize)]
struct WireText<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
    text: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    user_id: &'a str,
}

#[derive(Serialize)]
struct WireOutputConfig<'a> {
    format: WireFormat<'a>,
}

#[derive(Serialize)]
struct WireFormat<'a> {
    schema: &'a Value,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize)]
struct WireToolChoice<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The tools, the last one marked for caching too (so the tools stay cached when a request has
/// no system prompt).
struct WireTools<'a> {
    tools: &'a [ToolSpec],
    cache_last: bool,
}

impl Serialize for WireTools<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let last = self.tools.len().saturating_sub(1);
        serializer.collect_seq(self.tools.iter().enumerate().map(|(i, tool)| WireTool {
            cache_control: (self.cache_last && i == last).then_some(CACHE_EPHEMERAL),
            description: &tool.description,
            input_schema: &tool.input_schema,
            name: &tool.name,
        }))
    }
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl>,
    description: &'a str,
    input_schema: &'a Value,
    name: &'a str,
}

struct WireMessages<'a>(&'a [Message], super::cache::Breakpoints);

impl Serialize for WireMessages<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().enumerate().map(|(i, message)| WireMessage {
            content: WireBlocks(&message.content, i, &self.1),
            role: match message.role {
                Role::User => "user",
                Role::Assistant => "assistant",
            },
        }))
    }
}

#[derive(Serialize)]
struct WireMessage<'a> {
    content: WireBlocks<'a>,
    role: &'static str,
}

/// One message's blocks, its index, and the breakpoints of the request.
struct WireBlocks<'a>(&'a [ContentBlock], usize, &'a super::cache::Breakpoints);

impl Serialize for WireBlocks<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let WireBlocks(blocks, message, marks) = self;
        serializer.collect_seq(blocks.iter().enumerate().map(|(i, block)| {
            let mut wire = WireBlock::from(block);
            if marks.marks(*message, i) {
                match &mut wire {
                    WireBlock::Text { cache_control, .. }
                    | WireBlock::ToolUse { cache_control, .. }
                    | WireBlock::ToolResult { cache_control, .. } => {
                        *cache_control = Some(CACHE_EPHEMERAL);
                    }
                }
            }
            wire
        }))
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireBlock<'a> {
    Text {
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
        text: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    ToolUse {
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
        id: &'a str,
        input: &'a Value,
        name: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
    ToolResult {
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl>,
        content: &'a str,
        is_error: bool,
        tool_use_id: &'a str,
        #[serde(rename = "type")]
        kind: &'static str,
    },
}

impl<'a> From<&'a ContentBlock> for WireBlock<'a> {
    fn from(block: &'a ContentBlock) -> WireBlock<'a> {
        match block {
            ContentBlock::Text { text } => WireBlock::Text {
                cache_control: None,
                text,
                kind: "text",
            },
            ContentBlock::ToolUse { id, name, input } => WireBlock::ToolUse {
                cache_control: None,
                id,
                input,
                name,
                kind: "tool_use",
            },
            ContentBlock::ToolResult {
                tool_use_id,
                content,
                is_error,
            } => WireBlock::ToolResult {
                cache_control: None,
                content,
                is_error: *is_error,
                tool_use_id,
                kind: "tool_result",
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Response parsing

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Parse a non-streaming `Message` body.
pub fn parse_message(body: &[u8]) -> Result<Decoded, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| malformed(json_error("the body", &error)))?;
    if !value.is_object() {
        return Err(malformed("the body is not a JSON object"));
    }
    let blocks = value["content"]
        .as_array()
        .ok_or_else(|| malformed("missing `content`"))?;
    let mut content = Vec::with_capacity(blocks.len());
    for (index, block) in blocks.iter().enumerate() {
        if let Some(block) = response_block(index, block)? {
            content.push(block);
        }
    }
    let stop_reason = value["stop_reason"]
        .as_str()
        .map(stop_reason)
        .ok_or_else(|| malformed("missing `stop_reason`"))?;
    let usage_value = &value["usage"];
    if !usage_value.is_object() {
        return Err(malformed("missing `usage`"));
    }
    let mut usage = Usage {
        input_tokens: required_count(usage_value, "input_tokens", "usage")?,
        output_tokens: required_count(usage_value, "output_tokens", "usage")?,
        ..Usage::default()
    };
    update_cache_counts(&mut usage, usage_value);
    Ok(Decoded {
        id: value["id"].as_str().unwrap_or_default().to_owned(),
        model: value["model"].as_str().unwrap_or_default().to_owned(),
        content,
        stop_reason,
        usage,
    })
}

fn required_count(object: &Value, field: &str, path: &str) -> Result<u64, DecodeError> {
    json_u64(&object[field]).ok_or_else(|| malformed(format!("missing `{path}.{field}`")))
}

/// Cache counts are optional and may be `null`.
fn update_cache_counts(usage: &mut Usage, usage_value: &Value) {
    if let Some(n) = json_u64(&usage_value["cache_creation_input_tokens"]) {
        usage.cache_creation_input_tokens = n;
    }
    if let Some(n) = json_u64(&usage_value["cache_read_input_tokens"]) {
        usage.cache_read_input_tokens = n;
    }
}

/// One content block of a complete message; `None` for blocks we deliberately drop.
fn response_block(index: usize, block: &Value) -> Result<Option<ContentBlock>, DecodeError> {
    let kind = block["type"].as_str().unwrap_or_default();
    let field = |name: &str| {
        block[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("content[{index}] ({kind}) is missing `{name}`")))
    };
    match kind {
        "text" => Ok(Some(ContentBlock::Text {
            text: field("text")?,
        })),
        "tool_use" => {
            let input = &block["input"];
            if !input.is_object() {
                return Err(malformed(format!(
                    "content[{index}] (tool_use) `input` is not a JSON object"
                )));
            }
            Ok(Some(ContentBlock::ToolUse {
                id: field("id")?,
                name: field("name")?,
                input: input.clone(),
            }))
        }
        // Extended thinking is not requested; if a server sends it anyway it is not output.
        "thinking" | "redacted_thinking" => Ok(None),
        other => Err(malformed(format!(
            "unknown content block type `{other}` (content[{index}])"
        ))),
    }
}

fn stop_reason(value: &str) -> StopReason {
    match value {
        "end_turn" => StopReason::EndTurn,
        "max_tokens" => StopReason::MaxTokens,
        "stop_sequence" => StopReason::StopSequence,
        "tool_use" => StopReason::ToolUse,
        "refusal" => StopReason::Refusal,
        "pause_turn" => StopReason::PauseTurn,
        "model_context_window_exceeded" => StopReason::ContextWindowExceeded,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Fill the error fields from `{"type":"error","error":{"type","message","details"?},
/// "request_id"?}`. Bodies from proxies or the edge may be anything; those keep the defaults.
pub fn parse_error_body(details: &mut ApiErrorDetails, body: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let error = &value["error"];
    details.error_type = error["type"].as_str().map(str::to_owned);
    details.error_code = error["details"]["error_code"].as_str().map(str::to_owned);
    if let Some(message) = error["message"].as_str() {
        details.message = message.to_owned();
    }
    if details.request_id.is_none() {
        details.request_id = value["request_id"].as_str().map(str::to_owned);
    }
}

// ---------------------------------------------------------------------------------------------
// Streaming

/// A block being streamed.
#[derive(Debug)]
enum BlockState {
    /// An index no `content_block_start` has named (yet).
    Absent,
    Text(String),
    ToolUse {
        id: String,
        name: String,
        json: String,
        input: Option<Value>,
    },
    /// Thinking: received and dropped.
    Skipped,
}

/// Assembles the events of one streamed message into a [`Decoded`].
#[derive(Debug, Default)]
pub struct StreamAssembler {
    id: String,
    model: String,
    usage: Option<Usage>,
    blocks: Vec<BlockState>,
    stop_reason: Option<StopReason>,
}

/// A block index past this many unused slots is refused rather than allocated.
const MAX_INDEX_GAP: usize = 1024;

impl StreamDecoder for StreamAssembler {
    const END: &'static str = "message_stop";

    fn on_event(&mut self, event: &SseEvent) -> Result<Flow, DecodeError> {
        StreamAssembler::on_event(self, event)
    }

    fn finish(self) -> Result<Decoded, DecodeError> {
        StreamAssembler::finish(self)
    }
}

impl StreamAssembler {
    pub fn new() -> Self {
        StreamAssembler::default()
    }

    /// Take one event. Dispatches on the SSE event name, as the official SDKs do; unnamed and
    /// unknown events (and `ping`) are ignored.
    pub fn on_event(&mut self, event: &SseEvent) -> Result<Flow, DecodeError> {
        let Some(name) = event.event.as_deref() else {
            return Ok(Flow::Continue);
        };
        let known = matches!(
            name,
            "message_start"
                | "content_block_start"
                | "content_block_delta"
                | "content_block_stop"
                | "message_delta"
                | "message_stop"
                | "error"
        );
        if !known {
            return Ok(Flow::Continue);
        }
        let data: Value = serde_json::from_str(&event.data)
            .map_err(|error| malformed(json_error(&format!("the `{name}` event"), &error)))?;
        match name {
            "message_start" => self.message_start(&data)?,
            "content_block_start" => self.block_start(&data)?,
            "content_block_delta" => self.block_delta(&data)?,
            "content_block_stop" => {
                let index = index_of(&data, name)?;
                self.finish_block(index)?;
            }
            "message_delta" => self.message_delta(&data),
            "message_stop" => return Ok(Flow::Done),
            _ => {
                let error = &data["error"];
                return Err(DecodeError::Stream {
                    error_type: error["type"].as_str().unwrap_or("unknown_error").to_owned(),
                    message: error["message"].as_str().unwrap_or_default().to_owned(),
                });
            }
        }
        Ok(Flow::Continue)
    }

    /// The assembled message, after `message_stop`.
    pub fn finish(mut self) -> Result<Decoded, DecodeError> {
        let usage = self
            .usage
            .ok_or_else(|| malformed("stream had no message_start"))?;
        for index in 0..self.blocks.len() {
            self.finish_block(index)?;
        }
        let stop_reason = self
            .stop_reason
            .ok_or_else(|| malformed("stream ended without a stop_reason"))?;
        let content = self
            .blocks
            .into_iter()
            .filter_map(|block| match block {
                BlockState::Text(text) => Some(ContentBlock::Text { text }),
                BlockState::ToolUse {
                    id, name, input, ..
                } => Some(ContentBlock::ToolUse {
                    id,
                    name,
                    input: input.unwrap_or_else(|| json!({})),
                }),
                BlockState::Absent | BlockState::Skipped => None,
            })
            .collect();
        Ok(Decoded {
            id: self.id,
            model: self.model,
            content,
            stop_reason,
            usage,
        })
    }

    fn message_start(&mut self, data: &Value) -> Result<(), DecodeError> {
        let message = &data["message"];
        let usage_value = &message["usage"];
        if !usage_value.is_object() {
            return Err(malformed("missing `message_start.message.usage`"));
        }
        let mut usage = Usage {
            input_tokens: required_count(
                usage_value,
                "input_tokens",
                "message_start.message.usage",
            )?,
            output_tokens: json_u64(&usage_value["output_tokens"]).unwrap_or(0),
            ..Usage::default()
        };
        update_cache_counts(&mut usage, usage_value);
        self.usage = Some(usage);
        self.id = message["id"].as_str().unwrap_or_default().to_owned();
        self.model = message["model"].as_str().unwrap_or_default().to_owned();
        Ok(())
    }

    fn block_start(&mut self, data: &Value) -> Result<(), DecodeError> {
        let index = index_of(data, "content_block_start")?;
        if index > self.blocks.len() + MAX_INDEX_GAP {
            return Err(malformed(format!(
                "content_block_start index {index} is far past the {} blocks seen",
                self.blocks.len()
            )));
        }
        let block = &data["content_block"];
        let kind = block["type"].as_str().unwrap_or_default();
        let state = match kind {
            "text" => BlockState::Text(block["text"].as_str().unwrap_or_default().to_owned()),
            "tool_use" => {
                let id = block["id"].as_str();
                let name = block["name"].as_str();
                let (Some(id), Some(name)) = (id, name) else {
                    return Err(malformed(format!(
                        "content_block_start {index} (tool_use) is missing `id` or `name`"
                    )));
                };
                BlockState::ToolUse {
                    id: id.to_owned(),
                    name: name.to_owned(),
                    json: String::new(),
                    input: None,
                }
            }
            "thinking" | "redacted_thinking" => BlockState::Skipped,
            other => {
                return Err(malformed(format!(
                    "unknown content block type `{other}` (content_block_start {index})"
                )));
            }
        };
        if self.blocks.len() <= index {
            self.blocks.resize_with(index + 1, || BlockState::Absent);
        }
        self.blocks[index] = state;
        Ok(())
    }

    fn block_delta(&mut self, data: &Value) -> Result<(), DecodeError> {
        let index = index_of(data, "content_block_delta")?;
        let delta = &data["delta"];
        let block = match self.blocks.get_mut(index) {
            Some(BlockState::Absent) | None => {
                return Err(malformed(format!(
                    "content_block_delta for block {index}, which was never started"
                )));
            }
            Some(block) => block,
        };
        match (delta["type"].as_str().unwrap_or_default(), block) {
            ("text_delta", BlockState::Text(text)) => {
                text.push_str(delta["text"].as_str().unwrap_or_default());
            }
            ("input_json_delta", BlockState::ToolUse { json, .. }) => {
                json.push_str(delta["partial_json"].as_str().unwrap_or_default());
            }
            ("text_delta" | "input_json_delta", _) => {
                return Err(malformed(format!(
                    "content_block_delta {index} does not match its block's type"
                )));
            }
            // thinking_delta, signature_delta, citations_delta, and types yet to come.
            _ => {}
        }
        Ok(())
    }

    /// Parse a tool call's accumulated JSON (once; a second `content_block_stop` is harmless).
    fn finish_block(&mut self, index: usize) -> Result<(), DecodeError> {
        if let Some(BlockState::ToolUse {
            name, json, input, ..
        }) = self.blocks.get_mut(index)
            && input.is_none()
        {
            let value = if json.trim().is_empty() {
                json!({})
            } else {
                serde_json::from_str::<Value>(json).map_err(|error| {
                    malformed(json_error(
                        &format!("the input of tool_use block {index} (`{name}`)"),
                        &error,
                    ))
                })?
            };
            if !value.is_object() {
                return Err(malformed(format!(
                    "the input of tool_use block {index} (`{name}`) is not a JSON object"
                )));
            }
            *input = Some(value);
        }
        Ok(())
    }

    fn message_delta(&mut self, data: &Value) {
        if let Some(reason) = data["delta"]["stop_reason"].as_str() {
            self.stop_reason = Some(stop_reason(reason));
        }
        // Usage here is cumulative: each count replaces the earlier one.
        let usage_value = &data["usage"];
        if let Some(usage) = &mut self.usage {
            if let Some(n) = json_u64(&usage_value["input_tokens"]) {
                usage.input_tokens = n;
            }
            if let Some(n) = json_u64(&usage_value["output_tokens"]) {
                usage.output_tokens = n;
            }
            update_cache_counts(usage, usage_value);
        }
    }
}

fn index_of(data: &Value, event: &str) -> Result<usize, DecodeError> {
    json_u64(&data["index"])
        .and_then(|i| usize::try_from(i).ok())
        .ok_or_else(|| malformed(format!("`{event}` event without an `index`")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::http::{DecodeError, Decoded};
    use crate::provider::sse::SseParser;
    use crate::provider::types::{JsonSchemaFormat, Message, ToolSpec};

    fn sample_request() -> Request {
        let mut request = Request::new("claude-test", 1024);
        request.system = Some("You are a worker.".into());
        request.tools = vec![
            ToolSpec {
                name: "read_file".into(),
                description: "Read a file".into(),
                input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
            },
            ToolSpec {
                name: "submit".into(),
                description: "Submit the result".into(),
                input_schema: json!({"type": "object"}),
            },
        ];
        request.tool_choice = Some(ToolChoice::Tool {
            name: "submit".into(),
        });
        request.temperature = Some(0.2);
        request.stop_sequences = vec!["STOP".into()];
        request.metadata_user_id = Some("run-1/agent-7".into());
        request.messages = vec![
            Message::user("Summarise a.txt"),
            Message::assistant(vec![
                ContentBlock::text("Reading it."),
                ContentBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a.txt"}),
                },
            ]),
            Message {
                role: Role::User,
                content: vec![ContentBlock::ToolResult {
                    tool_use_id: "toolu_1".into(),
                    content: "no such file".into(),
                    is_error: true,
                }],
            },
        ];
        request
    }

    #[test]
    fn request_translation() {
        let body = request_body(&sample_request(), true);
        let expected = json!({
            "model": "claude-test",
            "max_tokens": 1024,
            // Far below the model's minimum cacheable length: nothing is marked.
            "system": [{"type": "text", "text": "You are a worker."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Summarise a.txt"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Reading it."},
                    {"type": "tool_use", "id": "toolu_1", "name": "read_file",
                     "input": {"path": "a.txt"}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such file",
                     "is_error": true},
                ]},
            ],
            "tools": [
                {"name": "read_file", "description": "Read a file",
                 "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}}},
                {"name": "submit", "description": "Submit the result",
                 "input_schema": {"type": "object"}},
            ],
            "tool_choice": {"type": "tool", "name": "submit"},
            "stop_sequences": ["STOP"],
            "temperature": 0.2,
            "metadata": {"user_id": "run-1/agent-7"},
            "stream": true,
        });
        assert_eq!(body, expected);
        assert!(body.to_string().contains("\"temperature\":0.2,"));
        // The bytes sent are written straight from the request; they are exactly the bytes of
        // the same body as a JSON tree (whose maps sort their keys), so the field order holds.
        let sent = encode_request(&sample_request(), true).unwrap();
        assert_eq!(String::from_utf8(sent).unwrap(), body.to_string());
        let mut plain = sample_request();
        plain.cache_prefix = false;
        plain.response_format = Some(JsonSchemaFormat {
            name: "answer".into(),
            schema: json!({"type": "object", "required": ["a"]}),
        });
        let sent = encode_request(&plain, false).unwrap();
        assert_eq!(
            String::from_utf8(sent).unwrap(),
            request_body(&plain, false).to_string()
        );
    }

    #[test]
    fn long_prefixes_and_the_conversation_are_marked() {
        let mut request = sample_request().caching(true);
        request.system = Some("rules ".repeat(1000));
        let body = request_body(&request, false);
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        // The last block of the last message: the conversation so far.
        assert_eq!(
            body["messages"][2]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        // The turn before (the first user message) is marked for an exact hit next time.
        assert_eq!(
            body["messages"][0]["content"][0]["cache_control"]["type"],
            "ephemeral"
        );
        assert!(
            body["messages"][1]["content"][1]
                .get("cache_control")
                .is_none()
        );
        let sent = encode_request(&request, false).unwrap();
        assert_eq!(String::from_utf8(sent).unwrap(), body.to_string());
    }

    #[test]
    fn request_without_caching_tools_or_options() {
        let mut request = Request::new("m", 10);
        request.cache_prefix = false;
        request.system = Some("sys".into());
        request.tool_choice = Some(ToolChoice::Any);
        request.messages = vec![Message::user("hi")];
        request.response_format = Some(JsonSchemaFormat {
            name: "answer".into(),
            schema: json!({"type": "object"}),
        });
        assert_eq!(
            request_body(&request, false),
            json!({
                "model": "m",
                "max_tokens": 10,
                "system": [{"type": "text", "text": "sys"}],
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                "output_config": {"format": {"type": "json_schema",
                                             "schema": {"type": "object"}}},
            })
        );
    }

    #[test]
    fn count_tokens_body_has_no_generation_controls() {
        let body = count_tokens_body(&sample_request());
        let mut full = request_body(&sample_request(), true);
        for key in [
            "max_tokens",
            "stream",
            "temperature",
            "stop_sequences",
            "metadata",
        ] {
            assert!(body.get(key).is_none(), "{key}");
            full.as_object_mut().unwrap().remove(key);
        }
        assert_eq!(body, full);
    }

    #[test]
    fn tool_choices() {
        let mut request = sample_request();
        for (choice, wire) in [
            (ToolChoice::Auto, json!({"type": "auto"})),
            (ToolChoice::Any, json!({"type": "any"})),
            (ToolChoice::None, json!({"type": "none"})),
        ] {
            request.tool_choice = Some(choice);
            assert_eq!(request_body(&request, false)["tool_choice"], wire);
        }
    }

    const MESSAGE: &str = r#"{
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-test",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "text", "text": "I'll check.", "citations": null},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
             "input": {"location": "Paris"}, "caller": {"type": "direct"}}
        ],
        "stop_reason": "tool_use", "stop_sequence": null,
        "usage": {"input_tokens": 377, "cache_creation_input_tokens": null,
                  "cache_read_input_tokens": 100, "output_tokens": 65,
                  "service_tier": "standard"},
        "brand_new_field": {"x": 1}
    }"#;

    fn expected_message() -> Decoded {
        Decoded {
            id: "msg_1".into(),
            model: "claude-test".into(),
            content: vec![
                ContentBlock::text("I'll check."),
                ContentBlock::ToolUse {
                    id: "toolu_1".into(),
                    name: "get_weather".into(),
                    input: json!({"location": "Paris"}),
                },
            ],
            stop_reason: StopReason::ToolUse,
            usage: Usage {
                input_tokens: 377,
                output_tokens: 65,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 100,
            },
        }
    }

    fn malformed_text(result: Result<Decoded, DecodeError>) -> String {
        match result {
            Err(DecodeError::Malformed(what)) => what,
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn parses_a_message() {
        assert_eq!(
            parse_message(MESSAGE.as_bytes()).unwrap(),
            expected_message()
        );
    }

    #[test]
    fn unknown_stop_reason_is_kept() {
        let body = MESSAGE.replace("\"tool_use\", \"stop_sequence\"", "\"new_reason\", \"x\"");
        let decoded = parse_message(body.as_bytes()).unwrap();
        assert_eq!(decoded.stop_reason, StopReason::Other("new_reason".into()));
    }

    #[test]
    fn malformed_messages() {
        let truncated = &MESSAGE.as_bytes()[..MESSAGE.len() / 2];
        let what = malformed_text(parse_message(truncated));
        assert!(
            what.starts_with("the body is truncated JSON (ends at line "),
            "{what}"
        );

        let what = malformed_text(parse_message(b"<html>bad gateway</html>"));
        assert!(what.starts_with("the body is not valid JSON: "), "{what}");
        assert!(what.contains("line 1 column 1"), "{what}");

        let unknown = MESSAGE.replace("\"type\": \"text\"", "\"type\": \"hologram\"");
        assert_eq!(
            malformed_text(parse_message(unknown.as_bytes())),
            "unknown content block type `hologram` (content[1])"
        );

        let no_output = MESSAGE.replace("\"output_tokens\": 65,", "");
        assert_eq!(
            malformed_text(parse_message(no_output.as_bytes())),
            "missing `usage.output_tokens`"
        );
        let no_input = MESSAGE.replace("\"input_tokens\": 377,", "");
        assert_eq!(
            malformed_text(parse_message(no_input.as_bytes())),
            "missing `usage.input_tokens`"
        );
        let mut no_usage: Value = serde_json::from_str(MESSAGE).unwrap();
        no_usage.as_object_mut().unwrap().remove("usage");
        assert_eq!(
            malformed_text(parse_message(no_usage.to_string().as_bytes())),
            "missing `usage`"
        );
        assert_eq!(
            malformed_text(parse_message(b"[]")),
            "the body is not a JSON object"
        );
        assert!(malformed_text(parse_message(b"")).contains("truncated"));
    }

    #[test]
    fn error_bodies() {
        let mut details = ApiErrorDetails {
            status: 429,
            error_type: None,
            error_code: None,
            message: String::new(),
            retry_after: None,
            should_retry: None,
            request_id: None,
            rate_limits: Default::default(),
            body: String::new(),
        };
        parse_error_body(
            &mut details,
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down",
                "details":{"error_code":"enforced_spend_limit_reached"}},"request_id":"req_9"}"#,
        );
        assert_eq!(details.error_type.as_deref(), Some("rate_limit_error"));
        assert_eq!(
            details.error_code.as_deref(),
            Some("enforced_spend_limit_reached")
        );
        assert_eq!(details.message, "slow down");
        assert_eq!(details.request_id.as_deref(), Some("req_9"));

        // A header request id wins over the body's; a non-JSON body leaves the defaults.
        details.request_id = Some("req_header".into());
        parse_error_body(
            &mut details,
            br#"{"error":{"type":"x"},"request_id":"req_body"}"#,
        );
        assert_eq!(details.request_id.as_deref(), Some("req_header"));
        let before = details.clone();
        parse_error_body(&mut details, b"upstream connect error");
        assert_eq!(details, before);
    }

    const STREAM: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-test\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":377,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"hmm\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"I'll \"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"check.\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":1}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"get_weather\",\"input\":{}}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"locati\"}}\n\n\
event: brand_new_event\n\
data: {\"whatever\": true}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"on\\\": \\\"Paris\\\"}\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":2}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":65}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

    /// Run a stream through the parser and assembler as `send` does.
    fn assemble(stream: &str) -> Result<Decoded, DecodeError> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        parser.feed(stream.as_bytes(), &mut events);
        let mut assembler = StreamAssembler::new();
        for event in &events {
            if assembler.on_event(event)? == Flow::Done {
                return assembler.finish();
            }
        }
        Err(malformed(if parser.is_clean() {
            "stream ended before message_stop"
        } else {
            "stream ended before message_stop, cut in the middle of an event"
        }))
    }

    #[test]
    fn streaming_gives_the_same_message() {
        assert_eq!(assemble(STREAM).unwrap(), expected_message());
    }

    #[test]
    fn empty_tool_input_is_an_empty_object() {
        let stream = STREAM
            .replace("{\\\"locati", "")
            .replace("on\\\": \\\"Paris\\\"}", "");
        let decoded = assemble(&stream).unwrap();
        let (_, _, input) = Decoded::tool_uses(&decoded)[0];
        assert_eq!(input, &json!({}));
    }

    impl Decoded {
        fn tool_uses(&self) -> Vec<(&str, &str, &Value)> {
            self.content
                .iter()
                .filter_map(|block| match block {
                    ContentBlock::ToolUse { id, name, input } => {
                        Some((id.as_str(), name.as_str(), input))
                    }
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn malformed_streams() {
        let end = STREAM.find("event: message_stop").unwrap();
        assert_eq!(
            malformed_text(assemble(&STREAM[..end])),
            "stream ended before message_stop"
        );
        assert_eq!(
            malformed_text(assemble(&STREAM[..end - 30])),
            "stream ended before message_stop, cut in the middle of an event"
        );

        let bad_json = STREAM.replace("on\\\": \\\"Paris\\\"}", "on\\\": ");
        let what = malformed_text(assemble(&bad_json));
        assert!(
            what.starts_with("the input of tool_use block 2 (`get_weather`) is truncated JSON"),
            "{what}"
        );

        let unknown = STREAM.replace(
            "{\"type\":\"text\",\"text\":\"\"}",
            "{\"type\":\"hologram\"}",
        );
        assert_eq!(
            malformed_text(assemble(&unknown)),
            "unknown content block type `hologram` (content_block_start 1)"
        );

        let no_input = STREAM.replace("\"input_tokens\":377,", "");
        assert_eq!(
            malformed_text(assemble(&no_input)),
            "missing `message_start.message.usage.input_tokens`"
        );

        let garbage = STREAM.replace("{\"type\":\"content_block_stop\",\"index\":1}", "{oops");
        let what = malformed_text(assemble(&garbage));
        assert!(
            what.starts_with("the `content_block_stop` event is not valid JSON"),
            "{what}"
        );

        let orphan = STREAM.replace("\"index\":1,\"delta\"", "\"index\":7,\"delta\"");
        assert_eq!(
            malformed_text(assemble(&orphan)),
            "content_block_delta for block 7, which was never started"
        );
    }

    #[test]
    fn usage_takes_the_last_cumulative_message_delta() {
        let decoded = assemble(STREAM).unwrap();
        assert_eq!(decoded.usage.output_tokens, 65);
        let with_input = STREAM.replace(
            "\"usage\":{\"output_tokens\":65}",
            "\"usage\":{\"input_tokens\":400,\"cache_read_input_tokens\":5,\"output_tokens\":65}",
        );
        let usage = assemble(&with_input).unwrap().usage;
        assert_eq!(
            (usage.input_tokens, usage.cache_read_input_tokens),
            (400, 5)
        );
    }

    #[test]
    fn an_error_event_is_a_stream_error() {
        let start = STREAM.find("event: content_block_start").unwrap();
        let stream = format!(
            "{}event: error\ndata: {{\"type\":\"error\",\"error\":{{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}}}\n\n",
            &STREAM[..start]
        );
        assert_eq!(
            assemble(&stream),
            Err(DecodeError::Stream {
                error_type: "overloaded_error".into(),
                message: "Overloaded".into(),
            })
        );
    }

    #[test]
    fn no_prefix_of_a_stream_panics() {
        for end in 0..=STREAM.len() {
            if STREAM.is_char_boundary(end) {
                let result = assemble(&STREAM[..end]);
                assert!(end == STREAM.len() || result.is_err(), "prefix {end}");
            }
        }
        for end in 0..MESSAGE.len() {
            assert!(parse_message(&MESSAGE.as_bytes()[..end]).is_err());
        }
    }
}
