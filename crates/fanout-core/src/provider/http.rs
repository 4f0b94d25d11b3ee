//! The HTTP transport both providers share: one pooled `reqwest` client, timeouts, reading
//! bodies and streams, and turning non-success answers into [`ApiErrorDetails`].
//!
//! It knows no vendor. What differs per vendor (the request-id header, the rate-limit headers,
//! the error body shape) comes in as a [`Dialect`]. Server-sent events are parsed by
//! [`super::sse`]; [`Reply::read_events`] feeds them to a provider's assembler. A provider's
//! decoder produces a [`Decoded`] (the body's part of a [`Response`]) or a [`DecodeError`], and
//! the [`Reply`] adds what the headers said.

use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::Attempt;
use super::error::{ApiErrorDetails, ProviderError};
use super::headers;
use super::send_window::{Place, SendWindow, SendWindowConfig};
use super::sse::{SseEvent, SseParser};
use super::types::{ContentBlock, RateLimitSnapshot, Response, StopReason, Usage};
/// Kept here for the callers that name it `provider::http::cut`.
pub use crate::text::cut;

/// The header carrying the retry count; the official SDKs and our simulator use this name.
pub const RETRY_COUNT_HEADER: &str = "x-stainless-retry-count";

/// How much of an error body is read, and how much of it is kept in [`ApiErrorDetails::body`].
const ERROR_BODY_READ_LIMIT: usize = 64 * 1024;
const ERROR_BODY_KEEP: usize = 4 * 1024;
/// A successful non-streaming answer larger than this is refused rather than buffered.
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Timeouts and pool size of the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Time to establish a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Whole-request limit for non-streaming calls: sending, waiting and reading the body.
    pub request_timeout: Duration,
    /// Streaming calls fail when no bytes (pings count) arrive for this long, including while
    /// waiting for the response headers.
    pub stream_idle_timeout: Duration,
    /// Idle keep-alive connections kept per host. A fleet of 1,000 agents wants 1,000.
    pub max_idle_per_host: usize,
    /// How many requests are put on the wire at once ([`super::send_window`]).
    pub send_window: SendWindowConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            connect_timeout: Duration::from_secs(5),
            // The official SDKs' default; long generations take minutes.
            request_timeout: Duration::from_secs(600),
            stream_idle_timeout: Duration::from_secs(120),
            max_idle_per_host: 4096,
            send_window: SendWindowConfig::default(),
        }
    }
}

/// What the transport needs to know about a vendor's answers.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    pub provider: &'static str,
    pub request_id_header: &'static str,
    /// Read the rate-limit headers; the second argument is when the response arrived.
    pub rate_limits: fn(&HeaderMap, SystemTime) -> RateLimitSnapshot,
    /// Fill `error_type`, `error_code`, `message` (and a body `request_id`, and any fallback
    /// `retry_after`) from an error body. `body` holds at most 64 KiB.
    pub error_body: fn(&mut ApiErrorDetails, &[u8]),
}

/// A shared HTTP/1.1 client. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    config: HttpConfig,
    window: SendWindow,
}

impl HttpTransport {
    /// Build the client. HTTP/1.1 only: over HTTP/2 every call to an origin shares one TCP
    /// connection whose stream limit (often 100–256) would queue a large fleet.
    pub fn new(config: HttpConfig) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(config.max_idle_per_host)
            .connect_timeout(config.connect_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("fanout/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| ProviderError::InvalidRequest {
                provider: "http",
                message: format!("cannot build the HTTP client: {}", error_chain(&error)),
            })?;
        Ok(HttpTransport {
            client,
            window: SendWindow::new(config.send_window),
            config,
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// One model call: POST `body` (encoded JSON, so the request's JSON tree is gone before
    /// the wait) and decode the answer, a stream through a `D` fed
    /// event by event, a plain body through `parse`. A stream that ends before its terminal
    /// event is malformed.
    #[allow(clippy::too_many_arguments)]
    pub async fn exchange<D: StreamDecoder>(
        &self,
        dialect: &Dialect,
        url: impl reqwest::IntoUrl,
        headers: HeaderMap,
        body: Vec<u8>,
        attempt: Attempt,
        stream: bool,
        parse: fn(&[u8]) -> Result<Decoded, DecodeError>,
    ) -> Result<Response, ProviderError> {
        let mut reply = self
            .post_json(dialect, url, headers, body, attempt, stream)
            .await?;
        let decoded = if stream {
            let mut decoder = D::default();
            match reply.read_events(|event| decoder.on_event(event)).await? {
                StreamEnd::Done => {}
                StreamEnd::Eof { mid_event } => {
                    return Err(reply.malformed(if mid_event {
                        format!(
                            "stream ended before {}, cut in the middle of an event",
                            D::END
                        )
                    } else {
                        format!("stream ended before {}", D::END)
                    }));
                }
            }
            decoder.finish()
        } else {
            let body = reply.body().await?;
            parse(&body)
        };
        decoded
            .map(|decoded| decoded.into_response(&reply))
            .map_err(|error| reply.decode_error(error))
    }

    /// POST a JSON body. Returns once the response headers are in; a non-success status is
    /// turned into [`ProviderError::Api`] here (its body read and parsed by the dialect).
    pub async fn post_json(
        &self,
        dialect: &Dialect,
        url: impl reqwest::IntoUrl,
        headers: HeaderMap,
        body: Vec<u8>,
        attempt: Attempt,
        stream: bool,
    ) -> Result<Reply, ProviderError> {
        let json = HeaderValue::from_static("application/json");
        self.post(dialect, url, headers, json, body, attempt, stream)
            .await
    }

    /// POST a body of type `content_type` (a JSON body, or the multipart upload of a batch's
    /// input file). Errors as for [`HttpTransport::post_json`].
    #[allow(clippy::too_many_arguments)]
    pub async fn post(
        &self,
        dialect: &Dialect,
        url: impl reqwest::IntoUrl,
        mut headers: HeaderMap,
        content_type: HeaderValue,
        body: Vec<u8>,
        attempt: Attempt,
        stream: bool,
    ) -> Result<Reply, ProviderError> {
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream"
            } else {
                "application/json"
            }),
        );
        headers.insert(RETRY_COUNT_HEADER, HeaderValue::from(attempt.retry));
        let place = self.window.enter().await;
        let request = self.client.post(url).headers(headers);
        let request = match &place {
            Some(place) => request.body(reqwest::Body::wrap(place.body(Bytes::from(body)))),
            None => request.body(body),
        };
        self.execute(dialect, request, stream, place).await
    }

    /// GET `url`, accepting `accept` (the Message Batches status and results). Errors as for
    /// [`HttpTransport::post_json`]; the whole-request timeout applies.
    pub async fn get(
        &self,
        dialect: &Dialect,
        url: &str,
        mut headers: HeaderMap,
        accept: &'static str,
    ) -> Result<Reply, ProviderError> {
        headers.insert(ACCEPT, HeaderValue::from_static(accept));
        let request = self.client.get(url).headers(headers);
        self.execute(dialect, request, false, None).await
    }

    /// Send a built request; the shared part of [`HttpTransport::post_json`] and
    /// [`HttpTransport::get`]. `place` is the request's place in the send window, if it has one.
    async fn execute(
        &self,
        dialect: &Dialect,
        request: reqwest::RequestBuilder,
        stream: bool,
        place: Option<Place>,
    ) -> Result<Reply, ProviderError> {
        let provider = dialect.provider;
        let (deadline, limit) = if stream {
            (None, self.config.stream_idle_timeout)
        } else {
            let limit = self.config.request_timeout;
            (Some(Instant::now() + limit), limit)
        };
        let send = request.send();
        let send = async {
            match place {
                Some(place) => place.hold_until_sent(send).await,
                None => send.await,
            }
        };
        let response = match tokio::time::timeout_at(Instant::now() + limit, send).await {
            Err(_) => {
                return Err(ProviderError::Timeout {
                    provider,
                    after: limit,
                });
            }
            Ok(Err(error)) => return Err(send_error(provider, &error, limit)),
            Ok(Ok(response)) => response,
        };
        let received_at = SystemTime::now();
        let status = response.status().as_u16();
        let response_headers = response.headers().clone();
        let mut reply = Reply {
            provider,
            request_id: headers::request_id(&response_headers, dialect.request_id_header),
            rate_limits: (dialect.rate_limits)(&response_headers, received_at),
            received_at,
            headers: response_headers,
            status,
            response,
            deadline,
            idle: self.config.stream_idle_timeout,
            limit,
            bytes_read: 0,
        };
        if reply.response.status().is_success() {
            return Ok(reply);
        }
        let body = reply.read_error_body().await;
        let mut details = ApiErrorDetails {
            status,
            error_type: None,
            error_code: None,
            message: String::new(),
            retry_after: headers::retry_after(&reply.headers, received_at),
            should_retry: headers::should_retry(&reply.headers),
            request_id: reply.request_id.clone(),
            rate_limits: reply.rate_limits,
            body: cut(&String::from_utf8_lossy(&body), ERROR_BODY_KEEP),
        };
        (dialect.error_body)(&mut details, &body);
        if details.message.is_empty() {
            details.message = if details.body.is_empty() {
                reply
                    .response
                    .status()
                    .canonical_reason()
                    .unwrap_or_default()
                    .to_owned()
            } else {
                cut(&details.body, 512)
            };
        }
        Err(ProviderError::Api {
            provider,
            details: Box::new(details),
        })
    }
}

/// A success response whose body has not been read yet.
#[derive(Debug)]
pub struct Reply {
    provider: &'static str,
    pub status: u16,
    pub headers: HeaderMap,
    pub request_id: Option<String>,
    pub rate_limits: RateLimitSnapshot,
    pub received_at: SystemTime,
    response: reqwest::Response,
    /// Non-streaming: the end of the whole-request budget.
    deadline: Option<Instant>,
    idle: Duration,
    /// The timeout reported when `deadline` passes.
    limit: Duration,
    bytes_read: usize,
}

/// What a provider's stream assembler says after each event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The terminal event (`message_stop`, `[DONE]`) arrived.
    Done,
}

/// A wire format's stream decoder: fed each server-sent event, then asked for the message.
pub trait StreamDecoder: Default {
    /// The event that ends a complete stream, named when a stream stops before it.
    const END: &'static str;
    fn on_event(&mut self, event: &SseEvent) -> Result<Flow, DecodeError>;
    fn finish(self) -> Result<Decoded, DecodeError>;
}

/// An API key and an optional base URL from the environment. The key is required only when
/// no base URL is set (a local server, such as `fanout sim`, takes any key or none).
pub fn credentials_from_env(
    provider: &'static str,
    key_var: &str,
    url_var: &str,
) -> Result<(String, Option<String>), ProviderError> {
    let base_url = crate::env::var(url_var);
    let api_key = crate::env::var(key_var);
    if api_key.is_none() && base_url.is_none() {
        return Err(ProviderError::InvalidRequest {
            provider,
            message: format!("{key_var} is not set"),
        });
    }
    Ok((api_key.unwrap_or_default(), base_url))
}

/// A request body as bytes.
pub fn encode<T: serde::Serialize + ?Sized>(
    provider: &'static str,
    body: &T,
) -> Result<Vec<u8>, ProviderError> {
    serde_json::to_vec(body).map_err(|error| ProviderError::InvalidRequest {
        provider,
        message: format!("cannot encode the request: {error}"),
    })
}

/// A failure found while decoding a body, before it is given the reply's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The answer did not make sense; the text says what was wrong.
    Malformed(String),
    /// The server sent an error inside a 200 stream.
    Stream { error_type: String, message: String },
}

/// What a provider decoded from a body: everything of a [`Response`] but the header facts.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub id: String,
    pub model: String,
    pub content: Vec<ContentBlock>,
    pub stop_reason: StopReason,
    pub usage: Usage,
}

impl Decoded {
    pub fn into_response(self, reply: &Reply) -> Response {
        Response {
            id: self.id,
            model: self.model,
            content: self.content,
            stop_reason: self.stop_reason,
            usage: self.usage,
            rate_limits: reply.rate_limits,
            request_id: reply.request_id.clone(),
            received_at: reply.received_at,
        }
    }
}

/// How a stream ended when it never sent its terminal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The assembler returned [`Flow::Done`].
    Done,
    /// The body ended first; `mid_event` when it stopped inside an event or line.
    Eof { mid_event: bool },
}

impl Reply {
    /// A [`ProviderError::Malformed`] carrying this reply's request id.
    pub fn malformed(&self, what: impl Into<String>) -> ProviderError {
        ProviderError::Malformed {
            provider: self.provider,
            what: what.into(),
            request_id: self.request_id.clone(),
        }
    }

    /// Turn a [`DecodeError`] into the matching [`ProviderError`].
    pub fn decode_error(&self, error: DecodeError) -> ProviderError {
        match error {
            DecodeError::Malformed(what) => self.malformed(what),
            DecodeError::Stream {
                error_type,
                message,
            } => ProviderError::StreamError {
                provider: self.provider,
                error_type,
                message,
                request_id: self.request_id.clone(),
            },
        }
    }

    /// The next body chunk, `None` at the end. Non-streaming replies share the whole-request
    /// deadline; streams fail after `stream_idle_timeout` without bytes. A connection that
    /// breaks mid-body is reported as a cut (malformed) answer: the status already said yes.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, ProviderError> {
        let (deadline, after) = match self.deadline {
            Some(deadline) => (deadline, self.limit),
            None => (Instant::now() + self.idle, self.idle),
        };
        match tokio::time::timeout_at(deadline, self.response.chunk()).await {
            Err(_) => Err(ProviderError::Timeout {
                provider: self.provider,
                after,
            }),
            Ok(Err(error)) if error.is_timeout() => Err(ProviderError::Timeout {
                provider: self.provider,
                after,
            }),
            Ok(Err(error)) => Err(self.malformed(format!(
                "{} cut after {} bytes: {}",
                if self.deadline.is_some() {
                    "response body"
                } else {
                    "stream"
                },
                self.bytes_read,
                error_chain(&error)
            ))),
            Ok(Ok(chunk)) => {
                if let Some(chunk) = &chunk {
                    self.bytes_read += chunk.len();
                }
                Ok(chunk)
            }
        }
    }

    /// Read the whole (non-streaming) body.
    pub async fn body(&mut self) -> Result<Bytes, ProviderError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.next_chunk().await? {
            if body.len() + chunk.len() > BODY_LIMIT {
                return Err(self.malformed(format!(
                    "response body larger than {} MiB",
                    BODY_LIMIT / (1024 * 1024)
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Parse the body as server-sent events, handing each to `on_event` until it returns
    /// [`Flow::Done`] or the body ends.
    pub async fn read_events(
        &mut self,
        mut on_event: impl FnMut(&SseEvent) -> Result<Flow, DecodeError>,
    ) -> Result<StreamEnd, ProviderError> {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        while let Some(chunk) = self.next_chunk().await? {
            parser.feed(&chunk, &mut events);
            for event in events.drain(..) {
                match on_event(&event) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Done) => {
                        self.drain_rest().await;
                        return Ok(StreamEnd::Done);
                    }
                    Err(error) => return Err(self.decode_error(error)),
                }
            }
        }
        Ok(StreamEnd::Eof {
            mid_event: !parser.is_clean(),
        })
    }

    /// After the terminal event the server closes the body at once; reading that end lets the
    /// connection go back to the pool. Anything slower or longer is dropped with the socket.
    async fn drain_rest(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut drained = 0;
        while drained < ERROR_BODY_READ_LIMIT {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => drained += chunk.len(),
                _ => return,
            }
        }
    }

    /// Up to 64 KiB of an error body; whatever arrived if reading fails or times out, since
    /// the status alone is already a usable answer.
    async fn read_error_body(&mut self) -> Vec<u8> {
        let deadline = Instant::now() + self.limit.min(self.idle);
        let mut body = Vec::new();
        while body.len() < ERROR_BODY_READ_LIMIT {
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(ERROR_BODY_READ_LIMIT);
        body
    }
}

fn send_error(provider: &'static str, error: &reqwest::Error, limit: Duration) -> ProviderError {
    if error.is_timeout() {
        return ProviderError::Timeout {
            provider,
            after: limit,
        };
    }
    ProviderError::Connection {
        provider,
        message: error_chain(error),
    }
}

/// An error with its causes, since reqwest's own message ("error sending request") hides the
/// useful part ("connection refused").
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Describe a JSON parse failure: truncated or invalid, and where.
pub fn json_error(what: &str, error: &serde_json::Error) -> String {
    if error.is_eof() {
        format!(
            "{what} is truncated JSON (ends at line {} column {})",
            error.line(),
            error.column()
        )
    } else {
        format!("{what} is not valid JSON: {error}")
    }
}

/// A JSON number for an `f32` setting, written the way a person would (`0.2`, not
/// `0.20000000298023224`). `None` for NaN or infinity, which JSON cannot carry.
pub fn json_f32(value: f32) -> Option<serde_json::Value> {
    let shortest: f64 = value.to_string().parse().ok()?;
    serde_json::Number::from_f64(shortest).map(serde_json::Value::Number)
}

/// A JSON value as an unsigned integer, also when a server wrote it as `12.0`.
pub fn json_u64(value: &serde_json::Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|v| v.fract() == 0.0 && *v >= 0.0 && *v <= u64::MAX as f64)
            .map(|v| v as u64)
    })
}

/// Join a base URL and a path without doubling or dropping the slash.
/// Parse an endpoint URL once, when a provider is built: a bad `base_url` is an error then,
/// not at the first of a thousand calls.
pub fn parse_url(provider: &'static str, url: &str) -> Result<reqwest::Url, ProviderError> {
    reqwest::Url::parse(url).map_err(|error| ProviderError::InvalidRequest {
        provider,
        message: format!("the endpoint {url:?} is not a valid URL: {error}"),
    })
}

pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn cut_respects_char_boundaries() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééé", 3), "é… (6 bytes in all)");
        assert_eq!(cut("abcdef", 3), "abc… (6 bytes in all)");
    }

    #[test]
    fn floats_are_written_short() {
        assert_eq!(json_f32(0.2).unwrap().to_string(), "0.2");
        assert_eq!(json_f32(1.0).unwrap().to_string(), "1.0");
        assert_eq!(json_f32(f32::NAN), None);
    }

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join_url("http://h/v1/", "/chat"), "http://h/v1/chat");
        assert_eq!(join_url("http://h", "v1/messages"), "http://h/v1/messages");
    }

    #[test]
    fn json_errors_say_truncated_or_invalid_and_where() {
        let truncated = serde_json::from_str::<serde_json::Value>("{\"a\": [1,").unwrap_err();
        assert_eq!(
            json_error("the body", &truncated),
            "the body is truncated JSON (ends at line 1 column 9)"
        );
        let invalid = serde_json::from_str::<serde_json::Value>("{\"a\" 1}").unwrap_err();
        assert!(json_error("the body", &invalid).starts_with("the body is not valid JSON: "));
        assert!(json_error("the body", &invalid).contains("line 1 column 6"));
    }

    #[tokio::test]
    async fn connection_refused_is_a_connection_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let transport = HttpTransport::new(HttpConfig::default()).unwrap();
        let dialect = Dialect {
            provider: "test",
            request_id_header: "request-id",
            rate_limits: |_, _| RateLimitSnapshot::default(),
            error_body: |_, _| {},
        };
        let error = transport
            .post_json(
                &dialect,
                &format!("http://{addr}/x"),
                HeaderMap::new(),
                b"{}".to_vec(),
                Attempt::default(),
                false,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &error,
                ProviderError::Connection {
                    provider: "test",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
