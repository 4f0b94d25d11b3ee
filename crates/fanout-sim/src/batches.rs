//! The Message Batches endpoints (Anthropic):
//!
//! - `POST /v1/messages/batches` with `{"requests": [{"custom_id", "params": {...}}]}`
//! - `GET /v1/messages/batches/{id}`: the batch object
//! - `GET /v1/messages/batches/{id}/results`: JSON lines `{"custom_id", "result": ...}`
//! - `POST /v1/messages/batches/{id}/cancel`
//!
//! Each request is answered when the batch is created, by the same logic as `/v1/messages`:
//! its params are validated like a normal request (a problem makes an `errored` result with the
//! 400 error), scenario rules apply (an `error` action makes an `errored` result; `delay_ms`
//! and `malformed` do not apply to batches), and otherwise the scripted or default answer is
//! rendered as a `Message` whose usage says `"service_tier": "batch"`. Streaming params are
//! refused per request. Batch requests are not charged to the rate limits (the real API limits
//! batches separately) and draw no random faults.
//!
//! The batch stays `in_progress` for [`crate::SimConfig::batch_delay`] (tokio time, so tests can
//! advance a paused clock), then is `ended`; results can be fetched only then. Cancelling an
//! unfinished batch ends it at once with every result `canceled`. Results come in reverse
//! order, since clients must match them by `custom_id`.
//!
//! Every request of a batch is recorded in the exchange log with endpoint `batch_messages`,
//! `request_id` `"{batch id}/{custom_id}"`, the params as the request and the result as the
//! response (status 200 for a success, the error's status otherwise).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::answer::default_answer;
use crate::anthropic;
use crate::model::{Answer, ApiError, Endpoint, Request};
use crate::prng::fnv1a;
use crate::server::{Shared, empty_exchange, has_key, header_str};

/// The real API's limit on requests per batch.
const MAX_REQUESTS: usize = 100_000;

/// All batches of this simulator.
#[derive(Debug, Default)]
pub(crate) struct Batches {
    inner: Mutex<BTreeMap<String, Batch>>,
}

#[derive(Debug)]
struct Batch {
    id: String,
    created_at: SystemTime,
    ends: Instant,
    delay: Duration,
    ended_at: Option<SystemTime>,
    cancel_initiated_at: Option<SystemTime>,
    /// `(custom_id, result)` in request order.
    results: Vec<(String, Value)>,
}

impl Batch {
    /// Ends the batch if its time has come; true when ended.
    fn refresh(&mut self, now: Instant) -> bool {
        if self.ended_at.is_none() && now >= self.ends {
            self.ended_at = Some(self.created_at + self.delay);
        }
        self.ended_at.is_some()
    }

    fn object(&self, base: &str) -> Value {
        let ended = self.ended_at.is_some();
        let mut counts = BTreeMap::from([
            ("processing", 0u64),
            ("succeeded", 0),
            ("errored", 0),
            ("canceled", 0),
            ("expired", 0),
        ]);
        for (_, result) in &self.results {
            let kind = if ended {
                result["type"].as_str().unwrap_or("errored")
            } else {
                "processing"
            };
            if let Some(count) = counts.get_mut(kind) {
                *count += 1;
            }
        }
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": if ended { "ended" } else { "in_progress" },
            "request_counts": counts,
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + Duration::from_secs(24 * 3600)),
            "ended_at": self.ended_at.map(rfc3339),
            "cancel_initiated_at": self.cancel_initiated_at.map(rfc3339),
            "archived_at": null,
            "results_url": ended.then(|| format!("{base}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-21T05:59:22.123Z`.
fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = since.as_secs();
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

fn error(status: u16, kind: &str, message: impl Into<String>) -> Response {
    let error = ApiError::new(status, kind, message);
    let body = anthropic::error_body(&error, "req_simbatch");
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(body),
    )
        .into_response();
    response
        .headers_mut()
        .insert("request-id", HeaderValue::from_static("req_simbatch"));
    response
}

/// Authentication and version, as on `/v1/messages`.
fn check_headers(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    if shared.config.require_auth && !has_key(headers) {
        return Some(error(
            401,
            "authentication_error",
            "x-api-key header is required",
        ));
    }
    if header_str(headers, "anthropic-version").is_none() {
        return Some(error(
            400,
            "invalid_request_error",
            "anthropic-version: header is required",
        ));
    }
    None
}

/// `http://host` as the client reached us, for `results_url`.
fn base_url(headers: &HeaderMap) -> String {
    format!(
        "http://{}",
        header_str(headers, "host").unwrap_or("127.0.0.1")
    )
}

fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = check_headers(&shared, &headers) {
        return refused;
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "invalid_request_error",
            "The request body is not valid JSON",
        );
    };
    let Some(requests) = json.get("requests").and_then(Value::as_array) else {
        return error(400, "invalid_request_error", "requests: Field required");
    };
    if requests.is_empty() || requests.len() > MAX_REQUESTS {
        return error(
            400,
            "invalid_request_error",
            format!("requests: must hold between 1 and {MAX_REQUESTS} requests"),
        );
    }
    let mut seen = HashSet::new();
    for (index, request) in requests.iter().enumerate() {
        let custom_id = request.get("custom_id").and_then(Value::as_str);
        let Some(custom_id) = custom_id.filter(|id| valid_custom_id(id)) else {
            return error(
                400,
                "invalid_request_error",
                format!("requests.{index}.custom_id: must be 1 to 64 letters, digits, '-' or '_'"),
            );
        };
        if !seen.insert(custom_id) {
            return error(
                400,
                "invalid_request_error",
                format!("requests.{index}.custom_id: `{custom_id}` is used twice in this batch"),
            );
        }
        if !request.get("params").is_some_and(Value::is_object) {
            return error(
                400,
                "invalid_request_error",
                format!("requests.{index}.params: Input should be a valid dictionary"),
            );
        }
    }
    let number = shared.seq.fetch_add(1, Ordering::AcqRel);
    let id = format!("msgbatch_sim{number:016}");
    let key = crate::server::api_key(&headers);
    let results = requests
        .iter()
        .map(|request| {
            let custom_id = request["custom_id"].as_str().unwrap_or_default().to_owned();
            let result = answer(&shared, &key, &id, &custom_id, &request["params"]);
            (custom_id, result)
        })
        .collect();
    let now = Instant::now();
    let mut batch = Batch {
        id: id.clone(),
        created_at: SystemTime::now(),
        ends: now + shared.config.batch_delay,
        delay: shared.config.batch_delay,
        ended_at: None,
        cancel_initiated_at: None,
        results,
    };
    batch.refresh(now);
    let object = batch.object(&base_url(&headers));
    if let Ok(mut batches) = shared.batches.inner.lock() {
        batches.insert(id, batch);
    }
    axum::Json(object).into_response()
}

/// Answer one request of a batch, as `/v1/messages` would, and record it.
fn answer(shared: &Shared, key: &str, batch_id: &str, custom_id: &str, params: &Value) -> Value {
    let seq = shared.seq.fetch_add(1, Ordering::AcqRel);
    let mut exchange = empty_exchange();
    exchange.seq = seq;
    exchange.at_ms = Instant::now()
        .saturating_duration_since(shared.started)
        .as_millis() as u64;
    exchange.endpoint = "batch_messages".to_string();
    exchange.request_id = format!("{batch_id}/{custom_id}");
    exchange.request = params.clone();
    let errored = |exchange: &mut crate::record::Exchange, error: ApiError| {
        exchange.status = error.status;
        json!({
            "type": "errored",
            "error": {"type": "error", "error": {"type": error.kind, "message": error.message}}
        })
    };
    let result = match anthropic::normalize(Endpoint::Messages, params) {
        Err(error) => errored(&mut exchange, error),
        Ok(request) if request.stream => errored(
            &mut exchange,
            ApiError::invalid("stream: streaming is not supported in batch requests"),
        ),
        Ok(mut request) => match resolve(
            shared,
            (Endpoint::Messages, key),
            &mut request,
            params,
            &mut exchange,
        ) {
            Err(error) => errored(&mut exchange, error),
            Ok(answer) => {
                let ids = anthropic::Ids::new(seq, &answer);
                let mut message = anthropic::render_message(&request, &answer, &ids);
                message["usage"]["service_tier"] = json!("batch");
                json!({"type": "succeeded", "message": message})
            }
        },
    };
    exchange.response = result.clone();
    shared.recorder.push(exchange);
    result
}

pub(crate) async fn retrieve(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = check_headers(&shared, &headers) {
        return refused;
    }
    with_batch(&shared, &id, |batch| {
        batch.refresh(Instant::now());
        axum::Json(batch.object(&base_url(&headers))).into_response()
    })
}

pub(crate) async fn results(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = check_headers(&shared, &headers) {
        return refused;
    }
    with_batch(&shared, &id, |batch| {
        if !batch.refresh(Instant::now()) {
            return error(
                400,
                "invalid_request_error",
                format!(
                    "Batch {} is still in progress; its results are available once its processing_status is ended.",
                    batch.id
                ),
            );
        }
        let mut text = String::new();
        for (custom_id, result) in batch.results.iter().rev() {
            text.push_str(&json!({"custom_id": custom_id, "result": result}).to_string());
            text.push('\n');
        }
        let mut response = Response::new(Body::from(text));
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-jsonl"),
        );
        response
    })
}

pub(crate) async fn cancel(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = check_headers(&shared, &headers) {
        return refused;
    }
    with_batch(&shared, &id, |batch| {
        if !batch.refresh(Instant::now()) {
            let now = SystemTime::now();
            batch.cancel_initiated_at = Some(now);
            batch.ended_at = Some(now);
            for (_, result) in &mut batch.results {
                *result = json!({"type": "canceled"});
            }
        }
        axum::Json(batch.object(&base_url(&headers))).into_response()
    })
}

/// The answer to one request of a batch, as the synchronous endpoint would give it: a
/// scenario rule's error or answer, else the default answer. Fills in the exchange's tokens,
/// rule and status.
pub(crate) fn resolve(
    shared: &Shared,
    (endpoint, key): (Endpoint, &str),
    request: &mut Request,
    params: &Value,
    exchange: &mut crate::record::Exchange,
) -> Result<Answer, ApiError> {
    exchange.input_tokens = request.input_tokens;
    let fired = match (&shared.config.scenario, &shared.counters) {
        (Some(scenario), Some(counters)) => scenario.fire(counters, endpoint, request, 0),
        _ => None,
    };
    let mut scripted = None;
    if let Some(fired) = &fired {
        exchange.rule = Some(fired.index);
        exchange.rule_name = fired.rule.name.clone();
        if let Some(error) = &fired.rule.action.error {
            return Err(ApiError::new(
                error.status,
                &error.kind,
                fired.error_message().unwrap_or_default(),
            ));
        }
        scripted = fired.answer();
    }
    let body_hash = fnv1a(params.to_string().as_bytes());
    let mut answer = scripted.unwrap_or_else(|| default_answer(request, body_hash));
    answer.apply_max_tokens(request.max_tokens);
    exchange.output_tokens = answer.output_tokens();
    shared.apply_cache(endpoint, key, request, exchange);
    exchange.status = 200;
    Ok(answer)
}

fn with_batch(shared: &Shared, id: &str, f: impl FnOnce(&mut Batch) -> Response) -> Response {
    let Ok(mut batches) = shared.batches.inner.lock() else {
        return error(500, "api_error", "batch store unavailable");
    };
    match batches.get_mut(id) {
        Some(batch) => f(batch),
        None => error(404, "not_found_error", format!("No batch with id {id}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_759_162_123);
        assert_eq!(rfc3339(t), "2026-11-27T05:59:22.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn custom_ids() {
        assert!(valid_custom_id("chunk-0007-r1-2"));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("a/b"));
        assert!(!valid_custom_id(&"x".repeat(65)));
    }
}
