//! The OpenAI Files and Batch endpoints, as far as a batch needs them:
//!
//! - `POST /v1/files`: a `multipart/form-data` upload with fields `purpose` and `file`; answers
//!   the file object (`{"id": "file-…", "object": "file", "bytes", "purpose", …}`)
//! - `GET /v1/files/{id}/content`: the file's bytes
//! - `POST /v1/batches` with `{"input_file_id", "endpoint", "completion_window"}`
//! - `GET /v1/batches/{id}` and `POST /v1/batches/{id}/cancel`: the batch object
//!
//! The input file is validated when the batch is created, line by line as the real API does:
//! a line that is not JSON, lacks a `custom_id` or repeats one, or names another method or
//! endpoint than the batch makes the whole batch `failed`, with one entry per problem in
//! `errors.data` (`code`, `message`, `line`). A valid batch answers each line like
//! `/v1/chat/completions` would (validation errors and scenario `error` actions become lines
//! of the error file with the error's status and body; `delay_ms` and `malformed` do not apply)
//! and stays `in_progress` for [`crate::SimConfig::batch_delay`], then is `completed` with an
//! output file (the 200 answers) and, when some request failed, an error file. Lines carry
//! `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}` and
//! come in reverse order, since clients must match them by `custom_id`. Cancelling a batch
//! that has not ended makes it `cancelled` with no output: none of its requests ran.
//!
//! Batch requests are not charged to the rate limits and draw no random faults. Each is
//! recorded in the exchange log with endpoint `batch_chat_completions` and request id
//! `"{batch id}/{custom_id}"`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::model::{ApiError, Endpoint};
use crate::openai;
use crate::server::{Shared, empty_exchange, has_key, header_str};

/// The real API's limit on requests in one batch.
const MAX_REQUESTS: usize = 50_000;

/// The only endpoint the simulator batches.
const ENDPOINT: &str = "/v1/chat/completions";

/// Uploaded and generated files, and the batches over them.
#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    files: BTreeMap<String, File>,
    batches: BTreeMap<String, Batch>,
}

#[derive(Debug)]
struct File {
    id: String,
    filename: String,
    purpose: String,
    created_at: u64,
    bytes: Bytes,
}

impl File {
    fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes.len(),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

#[derive(Debug)]
struct Batch {
    id: String,
    input_file_id: String,
    created_at: u64,
    ends: Instant,
    /// `completed`, `failed` or `cancelled` once decided; `in_progress` until then.
    status: &'static str,
    ended_at: Option<u64>,
    errors: Vec<Value>,
    total: usize,
    succeeded: usize,
    output_file_id: Option<String>,
    error_file_id: Option<String>,
}

impl Batch {
    /// Completes the batch if its time has come.
    fn refresh(&mut self, now: Instant) {
        if self.status == "in_progress" && now >= self.ends {
            self.status = "completed";
            self.ended_at = Some(unix_now());
        }
    }

    fn object(&self) -> Value {
        let at = |status: &str| {
            if self.status == status {
                json!(self.ended_at)
            } else {
                Value::Null
            }
        };
        let (completed, failed) = if self.status == "completed" {
            (self.succeeded, self.total - self.succeeded)
        } else {
            (0, 0)
        };
        json!({
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "errors": if self.errors.is_empty() {
                Value::Null
            } else {
                json!({"object": "list", "data": self.errors})
            },
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": if self.status == "completed" { json!(self.output_file_id) } else { Value::Null },
            "error_file_id": if self.status == "completed" { json!(self.error_file_id) } else { Value::Null },
            "created_at": self.created_at,
            "in_progress_at": (self.status != "failed").then_some(self.created_at),
            "expires_at": self.created_at + 24 * 3600,
            "finalizing_at": at("completed"),
            "completed_at": at("completed"),
            "failed_at": at("failed"),
            "expired_at": null,
            "cancelling_at": at("cancelled"),
            "cancelled_at": at("cancelled"),
            "request_counts": {
                "total": if self.status == "failed" { 0 } else { self.total },
                "completed": completed,
                "failed": failed,
            },
            "metadata": null,
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn error(status: u16, message: impl Into<String>, param: Option<&str>) -> Response {
    let mut error = ApiError::new(status, "invalid_request_error", message);
    if let Some(param) = param {
        error = error.param(param);
    }
    let mut response = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        axum::Json(openai::error_body(&error)),
    )
        .into_response();
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_static("req_simbatch"));
    response
}

fn unauthorized(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    (shared.config.require_auth && !has_key(headers)).then(|| {
        error(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            None,
        )
    })
}

fn next_id(shared: &Shared, prefix: &str) -> String {
    let number = shared.seq.fetch_add(1, Ordering::AcqRel);
    format!("{prefix}{number:016}")
}

/// One part of a multipart body.
#[derive(Debug, PartialEq)]
struct Part {
    name: String,
    filename: Option<String>,
    data: Vec<u8>,
}

/// The parts of a `multipart/form-data` body whose Content-Type is `content_type`.
fn parse_multipart(content_type: &str, body: &[u8]) -> Result<Vec<Part>, String> {
    let (kind, params) = content_type.split_once(';').unwrap_or((content_type, ""));
    if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
        return Err(format!(
            "the upload must be multipart/form-data, not `{}`",
            kind.trim()
        ));
    }
    let boundary = params
        .split(';')
        .filter_map(|param| param.trim().split_once('='))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value.trim().trim_matches('"'))
        .filter(|boundary| !boundary.is_empty())
        .ok_or("the multipart Content-Type has no boundary")?;
    let first = format!("--{boundary}");
    let delimiter = format!("\r\n--{boundary}");
    let start = memchr::memmem::find(body, first.as_bytes())
        .ok_or("the body does not contain its boundary")?;
    let mut at = start + first.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        let rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("a boundary is not followed by a line break")?;
        let head_end = memchr::memmem::find(rest, b"\r\n\r\n")
            .ok_or("a part has no blank line after its headers")?;
        let head =
            std::str::from_utf8(&rest[..head_end]).map_err(|_| "a part's headers are not UTF-8")?;
        let data_start = head_end + 4;
        let data_len = memchr::memmem::find(&rest[data_start..], delimiter.as_bytes())
            .ok_or("the body ends without its closing boundary")?;
        let mut name = None;
        let mut filename = None;
        for line in head.split("\r\n") {
            let Some((header, value)) = line.split_once(':') else {
                continue;
            };
            if !header.trim().eq_ignore_ascii_case("content-disposition") {
                continue;
            }
            for param in value.split(';').skip(1) {
                if let Some((key, value)) = param.trim().split_once('=') {
                    let value = value.trim().trim_matches('"').to_owned();
                    match key.trim() {
                        "name" => name = Some(value),
                        "filename" => filename = Some(value),
                        _ => {}
                    }
                }
            }
        }
        parts.push(Part {
            name: name.ok_or("a part's Content-Disposition has no name")?,
            filename,
            data: rest[data_start..data_start + data_len].to_vec(),
        });
        // Past this part's data and the delimiter that ends it.
        at += 2 + data_start + data_len + delimiter.len();
    }
}

pub(crate) async fn upload_file(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let content_type = header_str(&headers, "content-type").unwrap_or_default();
    let parts = match parse_multipart(content_type, &body) {
        Ok(parts) => parts,
        Err(message) => return error(400, message, None),
    };
    let field = |name: &str| parts.iter().find(|part| part.name == name);
    let Some(purpose) = field("purpose") else {
        return error(
            400,
            "Missing required parameter: 'purpose'.",
            Some("purpose"),
        );
    };
    let Some(file) = field("file") else {
        return error(400, "Missing required parameter: 'file'.", Some("file"));
    };
    let purpose = String::from_utf8_lossy(&purpose.data).into_owned();
    if purpose != "batch" {
        return error(
            400,
            format!("The simulator accepts files with purpose 'batch' only, not '{purpose}'."),
            Some("purpose"),
        );
    }
    let file = File {
        id: next_id(&shared, "file-sim"),
        filename: file.filename.clone().unwrap_or_else(|| "upload".to_owned()),
        purpose,
        created_at: unix_now(),
        bytes: Bytes::from(file.data.clone()),
    };
    let object = file.object();
    if let Ok(mut inner) = shared.openai_batches.inner.lock() {
        inner.files.insert(file.id.clone(), file);
    }
    axum::Json(object).into_response()
}

pub(crate) async fn file_content(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let bytes = shared
        .openai_batches
        .inner
        .lock()
        .ok()
        .and_then(|inner| inner.files.get(&id).map(|file| file.bytes.clone()));
    match bytes {
        Some(bytes) => {
            let mut response = Response::new(Body::from(bytes));
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        None => error(404, format!("No such File object: {id}"), Some("id")),
    }
}

pub(crate) async fn create_batch(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return error(
            400,
            "We could not parse the JSON body of your request.",
            None,
        );
    };
    let text = |name: &str| json.get(name).and_then(Value::as_str);
    let Some(input_file_id) = text("input_file_id") else {
        return error(
            400,
            "Missing required parameter: 'input_file_id'.",
            Some("input_file_id"),
        );
    };
    if text("endpoint") != Some(ENDPOINT) {
        return error(
            400,
            format!("The simulator batches '{ENDPOINT}' only."),
            Some("endpoint"),
        );
    }
    if text("completion_window") != Some("24h") {
        return error(
            400,
            "completion_window: only '24h' is supported.",
            Some("completion_window"),
        );
    }
    let input = shared
        .openai_batches
        .inner
        .lock()
        .ok()
        .and_then(|inner| inner.files.get(input_file_id).map(|f| f.bytes.clone()));
    let Some(input) = input else {
        return error(
            400,
            format!("No such File object: {input_file_id}"),
            Some("input_file_id"),
        );
    };
    let id = next_id(&shared, "batch_sim");
    let key = crate::server::api_key(&headers);
    let now = Instant::now();
    let mut batch = Batch {
        id: id.clone(),
        input_file_id: input_file_id.to_owned(),
        created_at: unix_now(),
        ends: now + shared.config.batch_delay,
        status: "in_progress",
        ended_at: None,
        errors: Vec::new(),
        total: 0,
        succeeded: 0,
        output_file_id: None,
        error_file_id: None,
    };
    match validate(&input) {
        Err(errors) => {
            batch.status = "failed";
            batch.ended_at = Some(batch.created_at);
            batch.errors = errors;
        }
        Ok(lines) => {
            batch.total = lines.len();
            let mut output = String::new();
            let mut failed = String::new();
            for (custom_id, body) in lines.iter().rev() {
                let (status, response) = answer(&shared, &key, &id, custom_id, body);
                let line = json!({
                    "id": next_id(&shared, "batch_req_sim"),
                    "custom_id": custom_id,
                    "response": {
                        "status_code": status,
                        "request_id": format!("{id}/{custom_id}"),
                        "body": response,
                    },
                    "error": null,
                });
                let file = if status == 200 {
                    batch.succeeded += 1;
                    &mut output
                } else {
                    &mut failed
                };
                file.push_str(&line.to_string());
                file.push('\n');
            }
            let store = |text: String, name: &str| {
                (!text.is_empty()).then(|| {
                    let file = File {
                        id: next_id(&shared, "file-sim"),
                        filename: format!("{id}_{name}.jsonl"),
                        purpose: "batch_output".to_owned(),
                        created_at: unix_now(),
                        bytes: Bytes::from(text),
                    };
                    let file_id = file.id.clone();
                    if let Ok(mut inner) = shared.openai_batches.inner.lock() {
                        inner.files.insert(file_id.clone(), file);
                    }
                    file_id
                })
            };
            batch.output_file_id = store(output, "output");
            batch.error_file_id = store(failed, "error");
            batch.refresh(now);
        }
    }
    let object = batch.object();
    if let Ok(mut inner) = shared.openai_batches.inner.lock() {
        inner.batches.insert(id, batch);
    }
    axum::Json(object).into_response()
}

/// The input file's requests as `(custom_id, body)`, or every problem with its line number.
fn validate(input: &[u8]) -> Result<Vec<(String, Value)>, Vec<Value>> {
    let mut errors = Vec::new();
    let mut lines = Vec::new();
    let mut seen = HashSet::new();
    let problem = |code: &str, message: String, line: usize| json!({"code": code, "message": message, "param": null, "line": line});
    let text = String::from_utf8_lossy(input);
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let Ok(line) = serde_json::from_str::<Value>(raw) else {
            errors.push(problem(
                "invalid_json_line",
                "This line is not parseable as valid JSON.".to_owned(),
                number,
            ));
            continue;
        };
        let Some(custom_id) = line.get("custom_id").and_then(Value::as_str) else {
            errors.push(problem(
                "missing_required_parameter",
                "Missing required parameter: 'custom_id'.".to_owned(),
                number,
            ));
            continue;
        };
        if !seen.insert(custom_id.to_owned()) {
            errors.push(problem(
                "duplicate_custom_id",
                format!("The custom_id for this request is a duplicate of another request: '{custom_id}'."),
                number,
            ));
            continue;
        }
        if line.get("method").and_then(Value::as_str) != Some("POST") {
            errors.push(problem(
                "invalid_method",
                "Only the POST method is supported.".to_owned(),
                number,
            ));
            continue;
        }
        if line.get("url").and_then(Value::as_str) != Some(ENDPOINT) {
            errors.push(problem(
                "mismatched_endpoint",
                format!(
                    "The URL of this request does not match the batch's endpoint '{ENDPOINT}'."
                ),
                number,
            ));
            continue;
        }
        let body = line.get("body").cloned().unwrap_or(Value::Null);
        if !body.is_object() {
            errors.push(problem(
                "missing_required_parameter",
                "Missing required parameter: 'body'.".to_owned(),
                number,
            ));
            continue;
        }
        lines.push((custom_id.to_owned(), body));
    }
    if lines.is_empty() && errors.is_empty() {
        errors.push(problem(
            "empty_file",
            "The batch input file is empty.".to_owned(),
            0,
        ));
    }
    if lines.len() > MAX_REQUESTS {
        errors.push(problem(
            "too_many_requests",
            format!(
                "A batch holds at most {MAX_REQUESTS} requests, not {}.",
                lines.len()
            ),
            0,
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// Answer one request of a batch as `/v1/chat/completions` would, and record it: the status
/// and the response body.
fn answer(
    shared: &Shared,
    key: &str,
    batch_id: &str,
    custom_id: &str,
    body: &Value,
) -> (u16, Value) {
    let seq = shared.seq.fetch_add(1, Ordering::AcqRel);
    let mut exchange = empty_exchange();
    exchange.seq = seq;
    exchange.at_ms = Instant::now()
        .saturating_duration_since(shared.started)
        .as_millis() as u64;
    exchange.endpoint = "batch_chat_completions".to_string();
    exchange.request_id = format!("{batch_id}/{custom_id}");
    exchange.request = body.clone();
    let answered = match openai::normalize(body) {
        Err(error) => Err(error),
        Ok(request) if request.stream => Err(ApiError::invalid(
            "stream: streaming is not supported in batch requests",
        )
        .param("stream")),
        Ok(mut request) => crate::batches::resolve(
            shared,
            (Endpoint::ChatCompletions, key),
            &mut request,
            body,
            &mut exchange,
        )
        .map(|answer| openai::render_completion(&request, &answer, seq, unix_now())),
    };
    let (status, response) = match answered {
        Ok(completion) => (200, completion),
        Err(error) => {
            exchange.status = error.status;
            (error.status, openai::error_body(&error))
        }
    };
    exchange.response = response.clone();
    shared.recorder.push(exchange);
    (status, response)
}

pub(crate) async fn retrieve_batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    with_batch(&shared, &id, |batch| {
        batch.refresh(Instant::now());
        axum::Json(batch.object()).into_response()
    })
}

pub(crate) async fn cancel_batch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = unauthorized(&shared, &headers) {
        return refused;
    }
    with_batch(&shared, &id, |batch| {
        batch.refresh(Instant::now());
        if batch.status == "in_progress" {
            batch.status = "cancelled";
            batch.ended_at = Some(unix_now());
        }
        axum::Json(batch.object()).into_response()
    })
}

fn with_batch(shared: &Shared, id: &str, f: impl FnOnce(&mut Batch) -> Response) -> Response {
    let Ok(mut inner) = shared.openai_batches.inner.lock() else {
        return error(500, "batch store unavailable", None);
    };
    match inner.batches.get_mut(id) {
        Some(batch) => f(batch),
        None => error(
            404,
            format!("No batch found with id '{id}'."),
            Some("batch_id"),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn multipart_bodies_as_python_clients_send_them() {
        let body = b"--abc123\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
--abc123\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n\
Content-Type: application/octet-stream\r\n\r\n{\"a\":1}\n{\"b\":2}\n\r\n--abc123--\r\n";
        let parts = parse_multipart("multipart/form-data; boundary=abc123", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n{\"b\":2}\n");
        assert!(parse_multipart("application/json", body).is_err());
        assert!(parse_multipart("multipart/form-data; boundary=zzz", body).is_err());
        let truncated = &body[..body.len() - 20];
        assert!(parse_multipart("multipart/form-data; boundary=abc123", truncated).is_err());
    }

    #[test]
    fn a_bad_input_file_names_every_problem_line() {
        let input = "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n\
not json\n\
{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{}}\n\
{\"custom_id\":\"b\",\"method\":\"POST\",\"url\":\"/v1/embeddings\",\"body\":{}}\n";
        let errors = validate(input.as_bytes()).unwrap_err();
        let found: Vec<(&str, u64)> = errors
            .iter()
            .map(|e| (e["code"].as_str().unwrap(), e["line"].as_u64().unwrap()))
            .collect();
        assert_eq!(
            found,
            [
                ("invalid_json_line", 2),
                ("duplicate_custom_id", 3),
                ("mismatched_endpoint", 4)
            ]
        );
    }
}
