//! The HTTP side: routes, the request pipeline, response bodies (JSON and hand-made SSE bytes),
//! fault rendering and shutdown.
//!
//! Pipeline of a model request: auth → body/JSON → validation (400) → concurrency cap and rate
//! limits (429) → scenario rule → random fault → answer → latency → response. Every response
//! carries a request id and the rate-limit headers, and every request is recorded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::answer::default_answer;
use crate::faults::Fault;
use crate::limits::{self, Dimension, Limiter};
use crate::model::{Answer, ApiError, Endpoint, Request};
use crate::prng::{SplitMix64, fnv1a};
use crate::record::{Exchange, Recorder, Stats};
use crate::scenario::{Counters, Malformed};
use crate::{SimConfig, SimError, anthropic, openai};

/// Largest accepted request body (the real APIs' limit).
const MAX_BODY: usize = 32 * 1024 * 1024;

/// The largest batch the real APIs take (Anthropic: 256 MB per batch; OpenAI: 200 MB per
/// input file), for the batch create and file upload bodies.
const MAX_BATCH_BODY: usize = 256 * 1024 * 1024;

/// State shared by all handlers.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: SimConfig,
    pub(crate) counters: Option<Counters>,
    pub(crate) started: Instant,
    pub(crate) seq: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    limiter: Mutex<Limiter>,
    stats: Mutex<Stats>,
    pub(crate) recorder: Recorder,
    pub(crate) batches: crate::batches::Batches,
    pub(crate) openai_batches: crate::openai_batches::Store,
    pub(crate) cache: crate::cache::PromptCache,
    stop: watch::Receiver<bool>,
}

type Spawned = (
    Arc<Shared>,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

pub(crate) fn spawn(
    config: SimConfig,
    listener: tokio::net::TcpListener,
) -> Result<Spawned, SimError> {
    let recorder = Recorder::new(config.record_path.as_deref(), config.keep_exchanges)?;
    let now = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        counters: config.scenario.as_ref().map(|s| s.counters()),
        limiter: Mutex::new(Limiter::new(
            config.rpm,
            config.itpm,
            config.otpm,
            config.tpm,
            now,
        )),
        config,
        started: now,
        seq: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        peak_in_flight: AtomicU64::new(0),
        stats: Mutex::new(Stats::default()),
        recorder,
        batches: crate::batches::Batches::default(),
        openai_batches: crate::openai_batches::Store::default(),
        cache: crate::cache::PromptCache::default(),
        stop: stop_rx.clone(),
    });
    let app = Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count_tokens))
        .route(
            "/v1/messages/batches",
            post(crate::batches::create).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route("/v1/messages/batches/{id}", get(crate::batches::retrieve))
        .route(
            "/v1/messages/batches/{id}/results",
            get(crate::batches::results),
        )
        .route(
            "/v1/messages/batches/{id}/cancel",
            post(crate::batches::cancel),
        )
        .route("/v1/chat/completions", post(chat_completions))
        .route(
            "/v1/files",
            post(crate::openai_batches::upload_file).layer(DefaultBodyLimit::max(MAX_BATCH_BODY)),
        )
        .route(
            "/v1/files/{id}/content",
            get(crate::openai_batches::file_content),
        )
        .route("/v1/batches", post(crate::openai_batches::create_batch))
        .route(
            "/v1/batches/{id}",
            get(crate::openai_batches::retrieve_batch),
        )
        .route(
            "/v1/batches/{id}/cancel",
            post(crate::openai_batches::cancel_batch),
        )
        .route("/sim/stats", get(sim_stats))
        .route("/sim/exchanges", get(sim_exchanges))
        .fallback(not_found)
        .with_state(shared.clone());
    let mut stop = stop_rx;
    let task = tokio::spawn(async move {
        // Small SSE writes must not wait for a delayed ACK (Nagle): that would add ~40 ms
        // per event on a reused connection and stall clients on paused test clocks.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|v| *v).await;
            })
            .await;
    });
    Ok((shared, stop_tx, task))
}

impl Shared {
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        stats.in_flight = self.in_flight.load(Ordering::Acquire);
        stats.peak_in_flight = self.peak_in_flight.load(Ordering::Acquire);
        stats
    }

    /// Runs an answered request through the prompt cache of its key and model: sets how its
    /// input splits, and counts it in the exchange and the stats.
    pub(crate) fn apply_cache(
        &self,
        endpoint: Endpoint,
        api_key: &str,
        request: &mut Request,
        exchange: &mut Exchange,
    ) {
        let now = Instant::now();
        request.cache = if endpoint.is_openai() {
            self.cache.openai(
                api_key,
                &request.model,
                &request.prefix,
                request.input_tokens,
                now,
            )
        } else {
            self.cache.anthropic(
                api_key,
                &request.model,
                &request.prefix,
                request.input_tokens,
                now,
            )
        };
        exchange.cache_read_tokens = request.cache.read;
        exchange.cache_creation_tokens = request.cache.creation;
        self.update_stats(|stats| {
            stats.cache_read_tokens += request.cache.read;
            stats.cache_creation_tokens += request.cache.creation;
        });
    }

    fn update_stats(&self, f: impl FnOnce(&mut Stats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }

    fn rate_headers(&self, endpoint: Endpoint) -> Vec<(String, String)> {
        let snapshot = match self.limiter.lock() {
            Ok(mut limiter) if !limiter.is_unlimited() => limiter.snapshot(Instant::now()),
            _ => return Vec::new(),
        };
        if endpoint.is_openai() {
            limits::openai_headers(&snapshot)
        } else {
            limits::anthropic_headers(&snapshot, SystemTime::now())
        }
    }

    /// Latency for `output_tokens`, with seeded jitter.
    fn latency(&self, seq: u64, output_tokens: u64) -> (Duration, Duration) {
        let base = self.config.latency;
        let per_token = self
            .config
            .per_output_token
            .saturating_mul(u32::try_from(output_tokens).unwrap_or(u32::MAX));
        if self.config.jitter <= 0.0 {
            return (base, per_token);
        }
        let u = SplitMix64::keyed(self.config.seed, seq, 2).next_f64();
        let factor = (1.0 + self.config.jitter * (2.0 * u - 1.0)).max(0.0);
        (base.mul_f64(factor), per_token.mul_f64(factor))
    }
}

/// Counts a request as in flight until dropped (moved into stream bodies).
struct InFlight(Arc<Shared>);

impl InFlight {
    fn enter(shared: &Arc<Shared>) -> (Self, u64) {
        let now = shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::AcqRel);
        (Self(shared.clone()), now)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    handle(shared, Endpoint::Messages, headers, body).await
}

async fn count_tokens(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(shared, Endpoint::CountTokens, headers, body).await
}

async fn chat_completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    handle(shared, Endpoint::ChatCompletions, headers, body).await
}

async fn sim_stats(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.stats()).into_response()
}

async fn sim_exchanges(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.recorder.all()).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let path = uri.path();
    let message = format!("Not found: {path}");
    let body = if path.contains("/chat/") {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "unknown_url"}})
    } else {
        json!({"type": "error", "error": {"type": "not_found_error", "message": message}})
    };
    (StatusCode::NOT_FOUND, axum::Json(body)).into_response()
}

pub(crate) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The request's API key (`x-api-key`, else the bearer token; empty when there is none): the
/// prompt cache is kept per key.
pub(crate) fn api_key(headers: &HeaderMap) -> String {
    header_str(headers, "x-api-key")
        .or_else(|| {
            header_str(headers, "authorization").and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        })
        .map(|k| k.trim().to_string())
        .unwrap_or_default()
}

pub(crate) fn has_key(headers: &HeaderMap) -> bool {
    let api_key = header_str(headers, "x-api-key").is_some_and(|k| !k.trim().is_empty());
    let bearer = header_str(headers, "authorization")
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .is_some_and(|k| !k.trim().is_empty());
    api_key || bearer
}

fn selected_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for name in ["x-api-key", "authorization"] {
        if headers.contains_key(name) {
            out.insert(name.to_string(), "present".to_string());
        }
    }
    for name in [
        "anthropic-version",
        "anthropic-beta",
        "x-stainless-retry-count",
        "content-type",
    ] {
        if let Some(value) = header_str(headers, name) {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}

/// A response in the making: status, body bytes, content type and extra headers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Body,
    extra: Vec<(String, String)>,
}

/// The per-request context.
struct Ctx {
    shared: Arc<Shared>,
    endpoint: Endpoint,
    exchange: Exchange,
}

impl Ctx {
    /// Sends `reply`, recording `recorded` as the response body.
    fn finish(mut self, reply: Reply, recorded: Value) -> Response {
        let Ctx {
            shared,
            endpoint,
            ref mut exchange,
        } = self;
        exchange.status = reply.status;
        exchange.response = recorded;
        let status = reply.status;
        let fault = exchange.fault.clone();
        let output = exchange.output_tokens;
        shared.update_stats(|stats| {
            *stats.by_status.entry(status).or_insert(0) += 1;
            if status == 429 {
                stats.rate_limited += 1;
            }
            if let Some(fault) = fault {
                *stats.faults.entry(fault).or_insert(0) += 1;
            }
            stats.output_tokens += output;
        });
        let request_id = exchange.request_id.clone();
        shared
            .recorder
            .push(std::mem::replace(exchange, empty_exchange()));

        let mut response = Response::new(reply.body);
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(reply.content_type),
        );
        let id_header = if endpoint.is_openai() {
            "x-request-id"
        } else {
            "request-id"
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            headers.insert(HeaderName::from_static(id_header), value);
        }
        if reply.content_type.starts_with("text/event-stream") {
            headers.insert(
                axum::http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache"),
            );
        }
        for (name, value) in shared.rate_headers(endpoint).into_iter().chain(reply.extra) {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.insert(name, value);
            }
        }
        response
    }

    fn error(self, error: ApiError) -> Response {
        let body = if self.endpoint.is_openai() {
            openai::error_body(&error)
        } else {
            anthropic::error_body(&error, &self.exchange.request_id)
        };
        let bytes = Bytes::from(body.to_string());
        let reply = Reply {
            status: error.status,
            content_type: "application/json",
            body: Body::from(bytes),
            extra: error.headers,
        };
        self.finish(reply, body)
    }
}

pub(crate) fn empty_exchange() -> Exchange {
    Exchange {
        seq: 0,
        at_ms: 0,
        endpoint: String::new(),
        request_id: String::new(),
        request: Value::Null,
        headers: BTreeMap::new(),
        status: 0,
        response: Value::Null,
        stream: false,
        fault: None,
        rule: None,
        rule_name: None,
        input_tokens: 0,
        output_tokens: 0,
        cache_read_tokens: 0,
        cache_creation_tokens: 0,
    }
}

async fn handle(
    shared: Arc<Shared>,
    endpoint: Endpoint,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let seq = shared.seq.fetch_add(1, Ordering::AcqRel);
    let arrived = Instant::now();
    let (guard, concurrent) = InFlight::enter(&shared);
    shared.update_stats(|stats| {
        stats.requests_total += 1;
        *stats
            .by_endpoint
            .entry(endpoint.as_str().to_string())
            .or_insert(0) += 1;
    });
    let mut exchange = empty_exchange();
    exchange.seq = seq;
    exchange.at_ms = arrived
        .saturating_duration_since(shared.started)
        .as_millis() as u64;
    exchange.endpoint = endpoint.as_str().to_string();
    exchange.request_id = format!("req_sim{seq:016}");
    exchange.headers = selected_headers(&headers);
    let mut ctx = Ctx {
        shared: shared.clone(),
        endpoint,
        exchange,
    };

    // 1. Authentication.
    if shared.config.require_auth && !has_key(&headers) {
        let error = if endpoint.is_openai() {
            ApiError::new(
                401,
                "invalid_request_error",
                "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        } else {
            ApiError::new(401, "authentication_error", "x-api-key header is required")
        };
        return ctx.error(error);
    }
    if !endpoint.is_openai() && header_str(&headers, "anthropic-version").is_none() {
        return ctx.error(ApiError::invalid("anthropic-version: header is required"));
    }

    // 2. Body and validation.
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return ctx.error(ApiError::new(
                413,
                "request_too_large",
                format!("Request exceeds the maximum allowed number of bytes ({MAX_BODY})."),
            ));
        }
    };
    ctx.exchange.at_ms = Instant::now()
        .saturating_duration_since(shared.started)
        .as_millis() as u64;
    let body_hash = fnv1a(&bytes);
    let json: Value = match serde_json::from_slice(&bytes) {
        Ok(json) => json,
        Err(err) => {
            ctx.exchange.request = Value::String(String::from_utf8_lossy(&bytes).into_owned());
            let message = if endpoint.is_openai() {
                format!(
                    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.) ({err})"
                )
            } else {
                format!("The request body is not valid JSON: {err}")
            };
            return ctx.error(ApiError::invalid(message));
        }
    };
    let parsed = match endpoint {
        Endpoint::ChatCompletions => openai::normalize(&json),
        _ => anthropic::normalize(endpoint, &json),
    };
    // A thousand requests wait out their latency at once: only what the reply needs stays
    // alive meanwhile, so the body and its parsed tree are dropped unless the log keeps them.
    drop(bytes);
    if shared.recorder.keeps_requests() {
        ctx.exchange.request = json;
    } else {
        drop(json);
    }
    let mut request = match parsed {
        Ok(request) => request,
        Err(error) => return ctx.error(error),
    };
    ctx.exchange.input_tokens = request.input_tokens;
    ctx.exchange.stream = request.stream;
    let attempt = header_str(&headers, "x-stainless-retry-count")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);

    // 3. Concurrency cap and rate limits (count_tokens is free).
    if endpoint != Endpoint::CountTokens {
        if let Some(max) = shared.config.max_concurrent
            && concurrent > max as u64
        {
            let mut error = too_many(
                endpoint,
                "requests",
                format!("Too many concurrent requests: the simulator's limit is {max} at once."),
            );
            error
                .headers
                .push(("retry-after".to_string(), "1".to_string()));
            return ctx.error(error);
        }
        let refused = match shared.limiter.lock() {
            Ok(mut limiter) => limiter
                .try_admit(Instant::now(), request.input_tokens)
                .err(),
            Err(_) => None,
        };
        if let Some(refusal) = refused {
            let per = refusal.dimension.describe();
            let message = if endpoint.is_openai() {
                format!(
                    "Rate limit reached for {} in organization org-fanout-sim on {per} per min: Limit {}. Please try again in {}s.",
                    request.model, refusal.limit, refusal.retry_after_secs
                )
            } else {
                format!(
                    "This request would exceed your organization's rate limit of {} {per} per minute. Please retry after {} seconds.",
                    refusal.limit, refusal.retry_after_secs
                )
            };
            let openai_type = if refusal.dimension == Dimension::Requests {
                "requests"
            } else {
                "tokens"
            };
            let mut error = too_many(endpoint, openai_type, message);
            error.headers.push((
                "retry-after".to_string(),
                refusal.retry_after_secs.to_string(),
            ));
            return ctx.error(error);
        }
        shared.update_stats(|stats| {
            stats.admitted += 1;
            stats.input_tokens += request.input_tokens;
        });
    }

    // 4. Scenario rule.
    let fired = match (&shared.config.scenario, &shared.counters) {
        (Some(scenario), Some(counters)) => scenario.fire(counters, endpoint, &request, attempt),
        _ => None,
    };
    let mut scripted_delay = Duration::ZERO;
    let mut scripted_answer = None;
    let mut malformed = None;
    if let Some(fired) = &fired {
        ctx.exchange.rule = Some(fired.index);
        ctx.exchange.rule_name = fired.rule.name.clone();
        let action = &fired.rule.action;
        scripted_delay = action.delay;
        malformed = action.malformed;
        if let Some(error) = &action.error {
            let (base, _) = shared.latency(seq, 0);
            sleep(base + scripted_delay).await;
            let mut api_error = ApiError::new(
                error.status,
                &error.kind,
                fired.error_message().unwrap_or_default(),
            );
            api_error.code = error.code.as_deref().map(Box::from);
            if endpoint.is_openai() && api_error.code.is_none() && error.status == 429 {
                api_error.code = Some(Box::from("rate_limit_exceeded"));
            }
            api_error.headers = error.headers.clone();
            return ctx.error(api_error);
        }
        scripted_answer = fired.answer();
    }

    if endpoint == Endpoint::CountTokens {
        sleep(shared.config.latency + scripted_delay).await;
        let body = json!({"input_tokens": request.input_tokens});
        return json_reply(ctx, body);
    }

    // 5. Random fault.
    let fault = if malformed.is_some() {
        None
    } else {
        shared
            .config
            .faults
            .roll(shared.config.seed, seq, request.stream)
    };
    if let Some(fault) = fault {
        ctx.exchange.fault = Some(fault.name().to_string());
    }
    match fault {
        Some(Fault::Overloaded) => {
            let (base, _) = shared.latency(seq, 0);
            sleep(base).await;
            let error = if endpoint.is_openai() {
                ApiError::new(
                    503,
                    "server_error",
                    "The server is overloaded. Please retry your request.",
                )
            } else {
                ApiError::new(529, "overloaded_error", "Overloaded")
            };
            return ctx.error(error);
        }
        Some(Fault::ApiError) => {
            let (base, _) = shared.latency(seq, 0);
            sleep(base).await;
            let kind = if endpoint.is_openai() {
                "server_error"
            } else {
                "api_error"
            };
            return ctx.error(ApiError::new(500, kind, "Internal server error"));
        }
        Some(Fault::Hang) => {
            // Recorded now (status 0): the answer never comes.
            let stop = shared.stop.clone();
            let reply = Reply {
                status: 0,
                content_type: "application/json",
                body: Body::empty(),
                extra: Vec::new(),
            };
            let _ = ctx.finish(reply, Value::Null);
            let mut stop = stop;
            let _ = stop.wait_for(|v| *v).await;
            drop(guard);
            return broken_response();
        }
        _ => {}
    }

    // 6. The answer.
    let mut answer = scripted_answer.unwrap_or_else(|| default_answer(&request, body_hash));
    answer.apply_max_tokens(request.max_tokens);
    let output_tokens = answer.output_tokens();
    ctx.exchange.output_tokens = output_tokens;
    shared.apply_cache(
        endpoint,
        &api_key(&headers),
        &mut request,
        &mut ctx.exchange,
    );
    if let Ok(mut limiter) = shared.limiter.lock() {
        limiter.charge_output(Instant::now(), output_tokens);
    }
    let (base, per_token) = shared.latency(seq, output_tokens);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let breakage = match (fault, malformed) {
        (Some(Fault::TruncateBody), _) | (_, Some(Malformed::Truncated)) => {
            Some(Malformed::Truncated)
        }
        (Some(Fault::CutStream), _) | (_, Some(Malformed::CutStream)) => Some(Malformed::CutStream),
        (Some(Fault::MalformedJson), _) | (_, Some(Malformed::Garbage)) => Some(Malformed::Garbage),
        _ => None,
    };
    if let (None, Some(kind)) = (fault, malformed) {
        ctx.exchange.fault = Some(
            match kind {
                Malformed::Truncated => "truncate_body",
                Malformed::CutStream => "cut_stream",
                Malformed::Garbage => "malformed_json",
            }
            .to_string(),
        );
    }

    if request.stream {
        let mut rng = SplitMix64::new(body_hash ^ 0x5EED_5EED);
        let events = if endpoint.is_openai() {
            openai::render_stream(&request, &answer, seq, created, &mut rng)
        } else {
            let ids = anthropic::Ids::new(seq, &answer);
            anthropic::render_stream(&request, &answer, &ids, &mut rng)
        };
        return stream_reply(
            ctx,
            events,
            base + scripted_delay,
            per_token,
            breakage,
            guard,
            &mut rng,
        );
    }

    request.keep_reply_fields();
    sleep(base + per_token + scripted_delay).await;
    let body = render_json(endpoint, &request, &answer, seq, created);
    match breakage {
        None => json_reply(ctx, body),
        Some(kind) => {
            let text = body.to_string();
            let broken = match kind {
                Malformed::Garbage => format!(
                    "{{\"id\": \"{}\", \"type\": garbage <<not json>>",
                    ctx.exchange.request_id
                ),
                _ => {
                    let mut cut = text.len() / 2;
                    while cut > 0 && !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text[..cut].to_string()
                }
            };
            let reply = Reply {
                status: 200,
                content_type: "application/json",
                body: Body::from(broken.clone()),
                extra: Vec::new(),
            };
            ctx.finish(reply, Value::String(broken))
        }
    }
}

/// A 429 in each API's shape; `openai_type` is OpenAI's `requests` or `tokens`.
fn too_many(endpoint: Endpoint, openai_type: &str, message: String) -> ApiError {
    if endpoint.is_openai() {
        ApiError::new(429, openai_type, message).code("rate_limit_exceeded")
    } else {
        ApiError::new(429, "rate_limit_error", message)
    }
}

async fn sleep(duration: Duration) {
    if !duration.is_zero() {
        tokio::time::sleep(duration).await;
    }
}

fn render_json(
    endpoint: Endpoint,
    request: &Request,
    answer: &Answer,
    seq: u64,
    created: u64,
) -> Value {
    if endpoint.is_openai() {
        openai::render_completion(request, answer, seq, created)
    } else {
        let ids = anthropic::Ids::new(seq, answer);
        anthropic::render_message(request, answer, &ids)
    }
}

fn json_reply(ctx: Ctx, body: Value) -> Response {
    let reply = Reply {
        status: 200,
        content_type: "application/json",
        body: Body::from(body.to_string()),
        extra: Vec::new(),
    };
    ctx.finish(reply, body)
}

/// A response whose body fails at once, so the client sees a broken connection.
fn broken_response() -> Response {
    let chunks = stream::iter([Err::<Bytes, std::io::Error>(std::io::Error::other(
        "simulator shut down",
    ))]);
    Response::new(Body::from_stream(chunks))
}

/// One piece of a streamed body: wait, then send these bytes.
struct Segment {
    wait: Duration,
    bytes: Bytes,
}

fn stream_reply(
    ctx: Ctx,
    mut events: Vec<String>,
    first_wait: Duration,
    spread: Duration,
    breakage: Option<Malformed>,
    guard: InFlight,
    rng: &mut SplitMix64,
) -> Response {
    let count = events.len();
    // Garbage: one event in the middle gets non-JSON data.
    if breakage == Some(Malformed::Garbage) && count > 2 {
        let k = rng.range(1, count as u64 - 2) as usize;
        if let Some(event) = events.get_mut(k) {
            let mut cut = event.len() / 2;
            while cut > 0 && !event.is_char_boundary(cut) {
                cut -= 1;
            }
            event.truncate(cut);
            event.push_str("\n\n");
        }
    }
    let cut_at: Option<(usize, usize)> = match breakage {
        Some(Malformed::CutStream | Malformed::Truncated) if count > 2 => {
            let k = rng.range(1, count as u64 - 2) as usize;
            let len = events.get(k).map_or(1, String::len);
            Some((
                k,
                rng.range(1, (len as u64).saturating_sub(2).max(1)) as usize,
            ))
        }
        _ => None,
    };
    let per_event = if count > 1 {
        spread / (count as u32 - 1)
    } else {
        spread
    };
    let mut segments = Vec::new();
    let mut recorded = String::new();
    for (i, event) in events.iter().enumerate() {
        let wait = if i == 0 { first_wait } else { per_event };
        let bytes = event.as_bytes();
        let (bytes, last) = match cut_at {
            Some((k, at)) if k == i => (&bytes[..at.min(bytes.len())], true),
            _ => (bytes, false),
        };
        recorded.push_str(&String::from_utf8_lossy(bytes));
        // Split some events at an arbitrary byte offset (even inside a UTF-8 sequence) so that
        // clients' SSE parsers see events cut across chunks.
        if bytes.len() > 2 && rng.next_u64().is_multiple_of(3) {
            let at = rng.range(1, bytes.len() as u64 - 1) as usize;
            segments.push(Segment {
                wait,
                bytes: Bytes::copy_from_slice(&bytes[..at]),
            });
            segments.push(Segment {
                wait: Duration::ZERO,
                bytes: Bytes::copy_from_slice(&bytes[at..]),
            });
        } else {
            segments.push(Segment {
                wait,
                bytes: Bytes::copy_from_slice(bytes),
            });
        }
        if last {
            break;
        }
    }
    let cut = cut_at.is_some();
    let reply_body = if first_wait.is_zero() && spread.is_zero() && !cut {
        // Fast path: no timing; still send the chunks separately.
        let chunks = segments
            .into_iter()
            .map(|s| Ok::<Bytes, std::io::Error>(s.bytes));
        let chunks: Vec<_> = chunks.collect();
        let guard = guard;
        let stream = stream::iter(chunks);
        let stream = futures_util::StreamExt::chain(
            stream,
            stream::once(async move {
                drop(guard);
                Ok::<Bytes, std::io::Error>(Bytes::new())
            }),
        );
        Body::from_stream(stream)
    } else {
        let state = (segments.into_iter(), Some(guard), cut);
        let stream = stream::unfold(state, |(mut iter, guard, cut)| async move {
            match iter.next() {
                Some(segment) => {
                    sleep(segment.wait).await;
                    Some((
                        Ok::<Bytes, std::io::Error>(segment.bytes),
                        (iter, guard, cut),
                    ))
                }
                None if cut => {
                    // Let the server flush what was sent before the connection is broken.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(guard);
                    Some((
                        Err(std::io::Error::other("stream cut by fanout sim")),
                        (iter, None, false),
                    ))
                }
                None => None,
            }
        });
        Body::from_stream(stream)
    };
    let content_type = "text/event-stream; charset=utf-8";
    let reply = Reply {
        status: 200,
        content_type,
        body: reply_body,
        extra: Vec::new(),
    };
    ctx.finish(reply, Value::String(recorded))
}
