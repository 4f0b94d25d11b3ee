//! OpenAI Chat Completions (`POST {base}/chat/completions`), and the OpenAI-compatible servers
//! that copy it (Ollama, vLLM, llama.cpp, LM Studio).
//!
//! Owns only translation: [`request_body`] turns a [`Request`] into the wire JSON,
//! [`parse_completion`] and [`StreamAssembler`] turn answers back into a [`Decoded`], and
//! [`parse_error_body`] reads error bodies (including the delay hidden in a 429's message).
//!
//! Our vocabulary is Anthropic-shaped, so tool results become separate `tool` messages and
//! tool calls carry their input as a JSON string. Local servers differ in small ways (no `id` on
//! tool calls, missing `type`); parsing fills in what is missing where a sensible default
//! exists.

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

use super::error::{ApiErrorDetails, ProviderError};
use super::headers;
use super::http::{
    DecodeError, Decoded, Dialect, Flow, HttpConfig, HttpTransport, StreamDecoder, encode,
    join_url, json_error, json_f32, json_u64, parse_url,
};
use super::sse::SseEvent;
use super::types::{ContentBlock, Request, Role, StopReason, ToolChoice, Usage};
use super::{Attempt, BoxFuture, Provider, Response};
use crate::env;

const PROVIDER: &str = "openai";

const DIALECT: Dialect = Dialect {
    provider: PROVIDER,
    request_id_header: headers::OPENAI_REQUEST_ID,
    rate_limits: |headers, _| headers::openai_rate_limits(headers),
    error_body: parse_error_body,
};

/// Where and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// Including the version segment (`https://api.openai.com/v1`, `http://localhost:11434/v1`);
    /// a trailing slash is ignored.
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; empty sends no Authorization header (local servers).
    pub api_key: String,
    pub http: HttpConfig,
}

impl OpenAiConfig {
    /// The public API with this key and default timeouts.
    pub fn new(api_key: impl Into<String>) -> Self {
        OpenAiConfig {
            base_url: env::OPENAI_DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.into(),
            http: HttpConfig::default(),
        }
    }

    /// `OPENAI_API_KEY` and `OPENAI_BASE_URL`. The key is required for the public API only:
    /// local servers take none.
    pub fn from_env() -> Result<Self, ProviderError> {
        let (api_key, base_url) =
            super::http::credentials_from_env(PROVIDER, env::OPENAI_API_KEY, env::OPENAI_BASE_URL)?;
        let mut config = OpenAiConfig::new(api_key);
        if let Some(base_url) = base_url {
            config.base_url = base_url;
        }
        Ok(config)
    }
}

/// OpenAI Chat Completions as a [`Provider`].
#[derive(Debug, Clone)]
pub struct OpenAiProvider {
    config: OpenAiConfig,
    transport: HttpTransport,
    headers: HeaderMap,
    /// Parsed once: a fleet sends thousands of requests to it.
    completions_url: reqwest::Url,
}

impl OpenAiProvider {
    /// A provider with its own connection pool.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let transport = HttpTransport::new(config.http.clone())?;
        Self::with_transport(config, transport)
    }

    /// A provider using an existing transport (sharing its pool and timeouts;
    /// `config.http` is then unused).
    pub fn with_transport(
        config: OpenAiConfig,
        transport: HttpTransport,
    ) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        if !config.api_key.is_empty() {
            let mut value =
                HeaderValue::from_str(&format!("Bearer {}", config.api_key)).map_err(|_| {
                    ProviderError::InvalidRequest {
                        provider: PROVIDER,
                        message: "the API key contains characters not allowed in an HTTP header"
                            .into(),
                    }
                })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        Ok(OpenAiProvider {
            completions_url: parse_url(PROVIDER, &join_url(&config.base_url, "chat/completions"))?,
            config,
            transport,
            headers,
        })
    }

    /// [`OpenAiConfig::from_env`] with default timeouts.
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::new(OpenAiConfig::from_env()?)
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    async fn send_request(
        &self,
        request: &Request,
        attempt: Attempt,
        stream: bool,
    ) -> Result<Response, ProviderError> {
        // Its own statement: the request's JSON tree is dropped here, not held across the call.
        let body = encode(PROVIDER, &request_body(request, stream))?;
        self.transport
            .exchange::<StreamAssembler>(
                &DIALECT,
                self.completions_url.clone(),
                self.headers.clone(),
                body,
                attempt,
                stream,
                parse_completion,
            )
            .await
    }
}

impl Provider for OpenAiProvider {
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
        _request: &'a Request,
    ) -> BoxFuture<'a, Option<Result<u64, ProviderError>>> {
        Box::pin(async { None })
    }
}

// ---------------------------------------------------------------------------------------------
// Request translation

/// The JSON body of `POST /chat/completions`.
pub fn request_body(request: &Request, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(request.model));
    body.insert("messages".into(), Value::Array(messages(request)));
    // `max_tokens` is deprecated and refused by reasoning models.
    body.insert("max_completion_tokens".into(), json!(request.max_tokens));
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.input_schema,
                    },
                })
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
        // The API refuses a tool_choice without tools.
        if let Some(choice) = &request.tool_choice {
            body.insert(
                "tool_choice".into(),
                match choice {
                    ToolChoice::Auto => json!("auto"),
                    ToolChoice::Any => json!("required"),
                    ToolChoice::None => json!("none"),
                    ToolChoice::Tool { name } => {
                        json!({ "type": "function", "function": { "name": name } })
                    }
                },
            );
        }
    }
    if !request.stop_sequences.is_empty() {
        body.insert("stop".into(), json!(request.stop_sequences));
    }
    if let Some(temperature) = request.temperature.and_then(json_f32) {
        body.insert("temperature".into(), temperature);
    }
    if let Some(user) = &request.metadata_user_id {
        body.insert("user".into(), json!(user));
    }
    if let Some(format) = &request.response_format {
        body.insert(
            "response_format".into(),
            json!({
                "type": "json_schema",
                "json_schema": { "name": format.name, "schema": format.schema, "strict": true },
            }),
        );
    }
    if stream {
        body.insert("stream".into(), json!(true));
        body.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    Value::Object(body)
}

fn messages(request: &Request) -> Vec<Value> {
    let mut out = Vec::with_capacity(request.messages.len() + 1);
    // The shared part first, then the request's own, as parts of one system message: OpenAI
    // caches the longest prefix it has seen, so what many requests share must lead.
    match (&request.system, &request.system_agent) {
        (Some(system), None) => out.push(json!({ "role": "system", "content": system })),
        (Some(system), Some(agent)) => out.push(json!({
            "role": "system",
            "content": [{ "type": "text", "text": system }, { "type": "text", "text": agent }],
        })),
        (None, Some(agent)) => out.push(json!({ "role": "system", "content": agent })),
        (None, None) => {}
    }
    for message in &request.messages {
        let texts: Vec<&str> = message
            .content
            .iter()
            .filter_map(|block| match block {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        match message.role {
            Role::Assistant => {
                let tool_calls: Vec<Value> = message
                    .content
                    .iter()
                    .filter_map(|block| match block {
                        ContentBlock::ToolUse { id, name, input } => Some(json!({
                            "id": id,
                            "type": "function",
                            "function": { "name": name, "arguments": input.to_string() },
                        })),
                        _ => None,
                    })
                    .collect();
                let mut entry = json!({
                    "role": "assistant",
                    "content": if texts.is_empty() { Value::Null } else { json!(texts.concat()) },
                });
                if !tool_calls.is_empty() {
                    entry["tool_calls"] = Value::Array(tool_calls);
                }
                out.push(entry);
            }
            Role::User => {
                // Tool results must directly follow the assistant turn that asked for them,
                // so they go before the user's own text.
                for block in &message.content {
                    if let ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } = block
                    {
                        // Chat Completions has no error flag; say it in the text instead.
                        let content = if *is_error {
                            format!("Error: {content}")
                        } else {
                            content.clone()
                        };
                        out.push(json!({
                            "role": "tool",
                            "tool_call_id": tool_use_id,
                            "content": content,
                        }));
                    }
                }
                match texts.as_slice() {
                    [] => {}
                    [text] => out.push(json!({ "role": "user", "content": text })),
                    many => out.push(json!({
                        "role": "user",
                        "content": many
                            .iter()
                            .map(|text| json!({ "type": "text", "text": text }))
                            .collect::<Vec<_>>(),
                    })),
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Response parsing

fn malformed(what: impl Into<String>) -> DecodeError {
    DecodeError::Malformed(what.into())
}

/// Parse a non-streaming `chat.completion` body (the first choice).
pub fn parse_completion(body: &[u8]) -> Result<Decoded, DecodeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|error| malformed(json_error("the body", &error)))?;
    if !value.is_object() {
        return Err(malformed("the body is not a JSON object"));
    }
    let choice = value["choices"]
        .as_array()
        .and_then(|choices| choices.first())
        .ok_or_else(|| malformed("missing `choices[0]`"))?;
    let message = &choice["message"];
    if !message.is_object() {
        return Err(malformed("missing `choices[0].message`"));
    }
    let mut content = Vec::new();
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(ContentBlock::text(text));
    }
    let refusal = message["refusal"].as_str().filter(|t| !t.is_empty());
    if let Some(refusal) = refusal {
        content.push(ContentBlock::text(refusal));
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        for (index, call) in calls.iter().enumerate() {
            let function = &call["function"];
            let name = function["name"].as_str().ok_or_else(|| {
                malformed(format!("tool call {index} is missing `function.name`"))
            })?;
            let id = call["id"].as_str().map(str::to_owned);
            content.push(tool_use(
                index,
                id,
                name.to_owned(),
                function["arguments"].as_str().unwrap_or_default(),
            )?);
        }
    }
    let stop_reason = match choice["finish_reason"].as_str() {
        Some(reason) => finish_reason(reason),
        None => return Err(malformed("missing `choices[0].finish_reason`")),
    };
    let stop_reason = if refusal.is_some() {
        StopReason::Refusal
    } else {
        stop_reason
    };
    Ok(Decoded {
        id: value["id"].as_str().unwrap_or_default().to_owned(),
        model: value["model"].as_str().unwrap_or_default().to_owned(),
        content,
        stop_reason,
        usage: usage(&value["usage"])?,
    })
}

/// A tool call with its `arguments` string parsed. An empty string means no arguments (some
/// local servers send that); a missing id gets one, since results are matched by it.
fn tool_use(
    index: usize,
    id: Option<String>,
    name: String,
    arguments: &str,
) -> Result<ContentBlock, DecodeError> {
    let input = if arguments.trim().is_empty() {
        json!({})
    } else {
        serde_json::from_str::<Value>(arguments).map_err(|error| {
            malformed(json_error(
                &format!("the arguments of tool call {index} (`{name}`)"),
                &error,
            ))
        })?
    };
    if !input.is_object() {
        return Err(malformed(format!(
            "the arguments of tool call {index} (`{name}`) are not a JSON object"
        )));
    }
    Ok(ContentBlock::ToolUse {
        id: id
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| format!("call_{index}")),
        name,
        input,
    })
}

fn finish_reason(value: &str) -> StopReason {
    match value {
        "stop" => StopReason::EndTurn,
        "length" => StopReason::MaxTokens,
        "tool_calls" | "function_call" => StopReason::ToolUse,
        "content_filter" => StopReason::Refusal,
        other => StopReason::Other(other.to_owned()),
    }
}

/// Our usage from OpenAI's: cached tokens are part of `prompt_tokens` there and separate here.
fn usage(value: &Value) -> Result<Usage, DecodeError> {
    if !value.is_object() {
        return Err(malformed("missing `usage`"));
    }
    let prompt = json_u64(&value["prompt_tokens"])
        .ok_or_else(|| malformed("missing `usage.prompt_tokens`"))?;
    let completion = json_u64(&value["completion_tokens"])
        .ok_or_else(|| malformed("missing `usage.completion_tokens`"))?;
    let cached = json_u64(&value["prompt_tokens_details"]["cached_tokens"])
        .unwrap_or(0)
        .min(prompt);
    Ok(Usage {
        input_tokens: prompt - cached,
        output_tokens: completion,
        cache_creation_input_tokens: 0,
        cache_read_input_tokens: cached,
    })
}

/// Fill the error fields from `{"error":{"message","type","param","code"}}`, mark a request
/// bigger than the whole limit, and find a delay for a 429 without `retry-after`.
pub fn parse_error_body(details: &mut ApiErrorDetails, body: &[u8]) {
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let error = &value["error"];
        details.error_type = error["type"].as_str().map(str::to_owned);
        details.error_code = match &error["code"] {
            Value::String(code) => Some(code.clone()),
            Value::Number(code) => Some(code.to_string()),
            _ => None,
        };
        if let Some(message) = error["message"].as_str() {
            details.message = message.to_owned();
        } else if let Some(message) = value["message"].as_str() {
            // Some compatible servers put the message at the top level.
            details.message = message.to_owned();
        }
    }
    if details.status != 429 {
        return;
    }
    // Waiting never helps a request larger than the per-minute limit itself.
    if details.message.starts_with("Request too large") {
        details.error_code = Some("request_too_large".into());
    }
    if details.retry_after.is_none() {
        details.retry_after = headers::retry_after_from_message(&details.message)
            .or_else(|| reset_of_exhausted_limit(details));
    }
}

/// For a 429 without a stated delay: when the exhausted bucket refills. The error type names
/// the bucket (`requests`/`tokens`); otherwise the one with nothing left, else the sooner.
fn reset_of_exhausted_limit(details: &ApiErrorDetails) -> Option<std::time::Duration> {
    let limits = &details.rate_limits;
    let (requests, tokens) = (&limits.requests, &limits.tokens);
    match details.error_type.as_deref() {
        Some("requests") if requests.reset_after.is_some() => return requests.reset_after,
        Some("tokens") if tokens.reset_after.is_some() => return tokens.reset_after,
        _ => {}
    }
    let exhausted = [requests, tokens]
        .into_iter()
        .filter(|state| state.remaining == Some(0))
        .filter_map(|state| state.reset_after)
        .max();
    exhausted.or_else(|| {
        [requests.reset_after, tokens.reset_after]
            .into_iter()
            .flatten()
            .min()
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming

#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// Assembles `chat.completion.chunk` events into a [`Decoded`].
#[derive(Debug, Default)]
pub struct StreamAssembler {
    id: String,
    model: String,
    text: String,
    refusal: String,
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

/// A tool-call index past this many unused slots is refused rather than allocated.
const MAX_INDEX_GAP: usize = 1024;

impl StreamDecoder for StreamAssembler {
    const END: &'static str = "[DONE]";

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

    /// Take one event; `data: [DONE]` ends the stream. Event names are ignored.
    pub fn on_event(&mut self, event: &SseEvent) -> Result<Flow, DecodeError> {
        if event.data.starts_with("[DONE]") {
            return Ok(Flow::Done);
        }
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|error| malformed(json_error("a stream chunk", &error)))?;
        let error = &chunk["error"];
        if !error.is_null() {
            let error_type = error["type"]
                .as_str()
                .or_else(|| error["code"].as_str())
                .unwrap_or("error");
            return Err(DecodeError::Stream {
                error_type: error_type.to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            });
        }
        if self.id.is_empty()
            && let Some(id) = chunk["id"].as_str()
        {
            self.id = id.to_owned();
        }
        if self.model.is_empty()
            && let Some(model) = chunk["model"].as_str()
        {
            self.model = model.to_owned();
        }
        if !chunk["usage"].is_null() {
            // Some servers send usage on every chunk; each is a running total.
            self.usage = Some(usage(&chunk["usage"])?);
        }
        let Some(choice) = chunk["choices"].as_array().and_then(|choices| {
            choices
                .iter()
                .find(|c| json_u64(&c["index"]).unwrap_or(0) == 0)
        }) else {
            return Ok(Flow::Continue);
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str() {
            self.text.push_str(text);
        }
        if let Some(refusal) = delta["refusal"].as_str() {
            self.refusal.push_str(refusal);
        }
        if let Some(calls) = delta["tool_calls"].as_array() {
            for (position, call) in calls.iter().enumerate() {
                self.tool_call_fragment(position, call)?;
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        Ok(Flow::Continue)
    }

    fn tool_call_fragment(&mut self, position: usize, call: &Value) -> Result<(), DecodeError> {
        // Servers that omit `index` send one whole call per fragment, in order.
        let index = match json_u64(&call["index"]).and_then(|i| usize::try_from(i).ok()) {
            Some(index) => index,
            None => self.calls.len() + position,
        };
        if index > self.calls.len() + MAX_INDEX_GAP {
            return Err(malformed(format!(
                "tool call index {index} is far past the {} calls seen",
                self.calls.len()
            )));
        }
        if self.calls.len() <= index {
            self.calls.resize_with(index + 1, PartialCall::default);
        }
        let partial = &mut self.calls[index];
        if let Some(id) = call["id"].as_str().filter(|id| !id.is_empty()) {
            partial.id = Some(id.to_owned());
        }
        let function = &call["function"];
        if let Some(name) = function["name"].as_str() {
            partial.name.push_str(name);
        }
        if let Some(arguments) = function["arguments"].as_str() {
            partial.arguments.push_str(arguments);
        }
        Ok(())
    }

    /// The assembled completion, after `[DONE]`.
    pub fn finish(self) -> Result<Decoded, DecodeError> {
        let mut content = Vec::new();
        if !self.text.is_empty() {
            content.push(ContentBlock::Text { text: self.text });
        }
        if !self.refusal.is_empty() {
            content.push(ContentBlock::Text {
                text: self.refusal.clone(),
            });
        }
        for (index, call) in self.calls.into_iter().enumerate() {
            if call.name.is_empty() && call.arguments.is_empty() {
                continue;
            }
            if call.name.is_empty() {
                return Err(malformed(format!("tool call {index} has no function name")));
            }
            content.push(tool_use(index, call.id, call.name, &call.arguments)?);
        }
        let stop_reason = match (&self.finish_reason, self.refusal.is_empty()) {
            (_, false) => StopReason::Refusal,
            (Some(reason), true) => finish_reason(reason),
            (None, true) => return Err(malformed("stream ended without a finish_reason")),
        };
        let usage = self.usage.ok_or_else(|| {
            malformed(
                "stream ended without usage (the server ignored stream_options.include_usage)",
            )
        })?;
        Ok(Decoded {
            id: self.id,
            model: self.model,
            content,
            stop_reason,
            usage,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::provider::sse::SseParser;
    use crate::provider::types::{JsonSchemaFormat, LimitState, Message, ToolSpec};

    fn sample_request() -> Request {
        let mut request = Request::new("gpt-test", 512);
        request.system = Some("You are a worker.".into());
        request.tools = vec![ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        }];
        request.tool_choice = Some(ToolChoice::Tool {
            name: "read_file".into(),
        });
        request.temperature = Some(0.7);
        request.stop_sequences = vec!["STOP".into()];
        request.metadata_user_id = Some("agent-7".into());
        request.response_format = Some(JsonSchemaFormat {
            name: "answer".into(),
            schema: json!({"type": "object"}),
        });
        request.messages = vec![
            Message::user("Summarise a.txt and b.txt"),
            Message::assistant(vec![
                ContentBlock::text("Reading them."),
                ContentBlock::ToolUse {
                    id: "call_1".into(),
                    name: "read_file".into(),
                    input: json!({"path": "a.txt"}),
                },
                ContentBlock::ToolUse {
                    id: "call_2".into(),
                    name: "read_file".into(),
                    input: json!({"path": "b.txt"}),
                },
            ]),
            Message {
                role: Role::User,
                content: vec![
                    ContentBlock::ToolResult {
                        tool_use_id: "call_1".into(),
                        content: "alpha".into(),
                        is_error: false,
                    },
                    ContentBlock::ToolResult {
                        tool_use_id: "call_2".into(),
                        content: "no such file".into(),
                        is_error: true,
                    },
                    ContentBlock::text("Now summarise."),
                ],
            },
        ];
        request
    }

    #[test]
    fn request_translation() {
        let expected = json!({
            "model": "gpt-test",
            "messages": [
                {"role": "system", "content": "You are a worker."},
                {"role": "user", "content": "Summarise a.txt and b.txt"},
                {"role": "assistant", "content": "Reading them.", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "read_file", "arguments": "{\"path\":\"a.txt\"}"}},
                    {"id": "call_2", "type": "function",
                     "function": {"name": "read_file", "arguments": "{\"path\":\"b.txt\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "alpha"},
                {"role": "tool", "tool_call_id": "call_2", "content": "Error: no such file"},
                {"role": "user", "content": "Now summarise."},
            ],
            "max_completion_tokens": 512,
            "tools": [{"type": "function", "function": {
                "name": "read_file", "description": "Read a file",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "read_file"}},
            "stop": ["STOP"],
            "temperature": 0.7,
            "user": "agent-7",
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": {"type": "object"}, "strict": true}},
            "stream": true,
            "stream_options": {"include_usage": true},
        });
        assert_eq!(request_body(&sample_request(), true), expected);
    }

    #[test]
    fn small_request_and_tool_choices() {
        let mut request = Request::new("m", 5);
        request.messages = vec![
            Message::user("hi"),
            Message::assistant(vec![ContentBlock::ToolUse {
                id: "c".into(),
                name: "t".into(),
                input: json!({}),
            }]),
            Message {
                role: Role::User,
                content: vec![ContentBlock::text("a"), ContentBlock::text("b")],
            },
        ];
        request.tool_choice = Some(ToolChoice::Any);
        assert_eq!(
            request_body(&request, false),
            json!({
                "model": "m",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c", "type": "function",
                         "function": {"name": "t", "arguments": "{}"}}]},
                    {"role": "user", "content": [{"type": "text", "text": "a"},
                                                 {"type": "text", "text": "b"}]},
                ],
                "max_completion_tokens": 5,
            })
        );
        request.tools = sample_request().tools;
        for (choice, wire) in [
            (ToolChoice::Auto, json!("auto")),
            (ToolChoice::Any, json!("required")),
            (ToolChoice::None, json!("none")),
        ] {
            request.tool_choice = Some(choice);
            assert_eq!(request_body(&request, false)["tool_choice"], wire);
        }
    }

    const COMPLETION: &str = r#"{
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1732150000,
        "model": "gpt-test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Checking.",
            "refusal": null, "tool_calls": [{"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
            "logprobs": null, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99,
                  "prompt_tokens_details": {"cached_tokens": 64},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "system_fingerprint": "fp_1"
    }"#;

    fn expected_completion() -> Decoded {
        Decoded {
            id: "chatcmpl-1".into(),
            model: "gpt-test".into(),
            content: vec![
                ContentBlock::text("Checking."),
                ContentBlock::ToolUse {
                    id: "call_abc".into(),
                    name: "get_weather".into(),
                    input: json!({"city": "Paris"}),
                },
            ],
            stop_reason: StopReason::ToolUse,
            usage: Usage {
                input_tokens: 18,
                output_tokens: 17,
                cache_creation_input_tokens: 0,
                cache_read_input_tokens: 64,
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
    fn parses_a_completion() {
        assert_eq!(
            parse_completion(COMPLETION.as_bytes()).unwrap(),
            expected_completion()
        );
        for (wire, ours) in [
            ("stop", StopReason::EndTurn),
            ("length", StopReason::MaxTokens),
            ("content_filter", StopReason::Refusal),
            ("something_new", StopReason::Other("something_new".into())),
        ] {
            let body = COMPLETION.replace("\"tool_calls\"}]", &format!("\"{wire}\"}}]"));
            assert_eq!(
                parse_completion(body.as_bytes()).unwrap().stop_reason,
                ours,
                "{wire}"
            );
        }
    }

    #[test]
    fn malformed_completions() {
        let what = malformed_text(parse_completion(&COMPLETION.as_bytes()[..100]));
        assert!(
            what.starts_with("the body is truncated JSON (ends at line "),
            "{what}"
        );
        let what = malformed_text(parse_completion(b"garbage"));
        assert!(what.starts_with("the body is not valid JSON: "), "{what}");

        let bad_args = COMPLETION.replace(r#"{\"city\":\"Paris\"}"#, r#"{\"city\":"#);
        let what = malformed_text(parse_completion(bad_args.as_bytes()));
        assert!(
            what.starts_with("the arguments of tool call 0 (`get_weather`) is truncated JSON"),
            "{what}"
        );
        let not_object = COMPLETION.replace(r#"{\"city\":\"Paris\"}"#, "[1]");
        assert_eq!(
            malformed_text(parse_completion(not_object.as_bytes())),
            "the arguments of tool call 0 (`get_weather`) are not a JSON object"
        );

        let mut no_usage: Value = serde_json::from_str(COMPLETION).unwrap();
        no_usage.as_object_mut().unwrap().remove("usage");
        assert_eq!(
            malformed_text(parse_completion(no_usage.to_string().as_bytes())),
            "missing `usage`"
        );
        let no_prompt = COMPLETION.replace("\"prompt_tokens\": 82,", "");
        assert_eq!(
            malformed_text(parse_completion(no_prompt.as_bytes())),
            "missing `usage.prompt_tokens`"
        );
        assert_eq!(
            malformed_text(parse_completion(br#"{"choices": []}"#)),
            "missing `choices[0]`"
        );
    }

    fn details(status: u16) -> ApiErrorDetails {
        ApiErrorDetails {
            status,
            error_type: None,
            error_code: None,
            message: String::new(),
            retry_after: None,
            should_retry: None,
            request_id: None,
            rate_limits: Default::default(),
            body: String::new(),
        }
    }

    #[test]
    fn error_bodies() {
        let mut rate = details(429);
        parse_error_body(
            &mut rate,
            br#"{"error":{"message":"Rate limit reached for gpt-4o on tokens per min (TPM): Limit 30000, Used 29937, Requested 385. Please try again in 644ms. Visit https://x","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(rate.error_type.as_deref(), Some("tokens"));
        assert_eq!(rate.error_code.as_deref(), Some("rate_limit_exceeded"));
        assert_eq!(rate.retry_after, Some(Duration::from_millis(644)));

        let mut too_large = details(429);
        parse_error_body(
            &mut too_large,
            br#"{"error":{"message":"Request too large for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Requested 31538.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(too_large.error_code.as_deref(), Some("request_too_large"));

        let mut quota = details(429);
        parse_error_body(
            &mut quota,
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
        );
        assert_eq!(quota.error_type.as_deref(), Some("insufficient_quota"));
        assert_eq!(quota.error_code.as_deref(), Some("insufficient_quota"));
        assert_eq!(quota.retry_after, None);

        // No delay in headers or text: the exhausted bucket's reset.
        let mut from_headers = details(429);
        from_headers.rate_limits.requests = LimitState {
            limit: Some(500),
            remaining: Some(0),
            reset_after: Some(Duration::from_secs(2)),
        };
        from_headers.rate_limits.tokens.reset_after = Some(Duration::from_millis(10));
        parse_error_body(&mut from_headers, br#"{"error":{"message":"slow down"}}"#);
        assert_eq!(from_headers.retry_after, Some(Duration::from_secs(2)));

        // A server-stated delay is never replaced.
        let mut stated = details(429);
        stated.retry_after = Some(Duration::from_secs(9));
        parse_error_body(&mut stated, br#"{"error":{"message":"try again in 1s"}}"#);
        assert_eq!(stated.retry_after, Some(Duration::from_secs(9)));

        let mut bad = details(400);
        parse_error_body(
            &mut bad,
            br#"{"error":{"message":"bad tool","type":"invalid_request_error","param":"tools","code":null}}"#,
        );
        assert_eq!(
            (
                bad.error_type.as_deref(),
                bad.error_code,
                bad.message.as_str()
            ),
            (Some("invalid_request_error"), None, "bad tool")
        );
    }

    fn chunk(delta: Value, finish: Option<&str>) -> String {
        let body = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "model": "gpt-test", "choices": [{"index": 0, "delta": delta,
            "logprobs": null, "finish_reason": finish}], "usage": null});
        format!("data: {body}\n\n")
    }

    fn stream_fixture() -> String {
        let usage = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk",
            "model": "gpt-test", "choices": [], "usage": {"prompt_tokens": 82,
            "completion_tokens": 17, "prompt_tokens_details": {"cached_tokens": 64}}});
        [
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Check"}), None),
            chunk(json!({"content": "ing."}), None),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                    "function": {"name": "get_weather", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "ty\":\"Paris\"}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            format!("data: {usage}\n\n"),
            "data: [DONE]\n\n".to_owned(),
        ]
        .concat()
    }

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
        Err(malformed("stream ended before [DONE]"))
    }

    #[test]
    fn streaming_gives_the_same_completion() {
        assert_eq!(assemble(&stream_fixture()).unwrap(), expected_completion());
    }

    #[test]
    fn malformed_streams() {
        let fixture = stream_fixture();
        let done = fixture.find("data: [DONE]").unwrap();
        assert_eq!(
            malformed_text(assemble(&fixture[..done])),
            "stream ended before [DONE]"
        );

        let usage_chunk = fixture.rfind("data: {").unwrap();
        let without_usage = format!("{}data: [DONE]\n\n", &fixture[..usage_chunk]);
        assert!(malformed_text(assemble(&without_usage)).starts_with("stream ended without usage"),);

        let garbage = fixture.replacen("data: {", "data: {garbage", 2);
        let what = malformed_text(assemble(&garbage));
        assert!(
            what.starts_with("a stream chunk is not valid JSON"),
            "{what}"
        );

        let error = "data: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n";
        assert_eq!(
            assemble(&format!("{}{error}", chunk(json!({"content": "a"}), None))),
            Err(DecodeError::Stream {
                error_type: "server_error".into(),
                message: "overloaded".into(),
            })
        );
    }

    #[test]
    fn no_prefix_of_a_stream_panics() {
        let fixture = stream_fixture();
        for end in 0..=fixture.len() {
            let result = assemble(&fixture[..end]);
            assert!(end == fixture.len() || result.is_err(), "prefix {end}");
        }
        for end in 0..COMPLETION.len() {
            assert!(parse_completion(&COMPLETION.as_bytes()[..end]).is_err());
        }
    }
}
