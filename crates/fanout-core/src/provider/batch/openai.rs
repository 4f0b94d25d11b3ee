//! The OpenAI Batch API. The requests are written as a JSONL file, one
//! `{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"}` per line, and
//! uploaded with `POST {base}/files` (multipart, purpose `batch`); `POST {base}/batches` starts a
//! batch over that file. `GET {base}/batches/{id}` is polled; once the batch is `completed`,
//! `expired` or `cancelled`, its answers are in the output file (requests that succeeded) and
//! the error file (requests that failed), both read with `GET {base}/files/{id}/content`. A
//! batch whose input file does not validate ends `failed` with the reasons in `errors`.

use std::collections::HashMap;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use serde_json::{Value, json};

use super::super::Attempt;
use super::super::error::ProviderError;
use super::super::headers;
use super::super::http::{Dialect, HttpTransport, Reply, cut, join_url, json_error, json_u64};
use super::super::openai::{self as wire, OpenAiConfig};
use super::{BatchOutcome, BatchRequest, BatchStatus, Conn, ProcessingStatus, RequestCounts};

pub(super) const PROVIDER: &str = "openai";

const DIALECT: Dialect = Dialect {
    provider: PROVIDER,
    request_id_header: headers::OPENAI_REQUEST_ID,
    rate_limits: |headers, _| headers::openai_rate_limits(headers),
    error_body: wire::parse_error_body,
};

/// The endpoint every request of a batch goes to.
const ENDPOINT: &str = "/v1/chat/completions";

/// The API's limit on a batch's input file.
const MAX_INPUT_FILE_BYTES: usize = 200 * 1024 * 1024;

/// Separates the parts of the upload. It can never occur in the file: the delimiter starts
/// with `\r\n`, and JSON lines hold no carriage return (serde_json escapes control characters).
const BOUNDARY: &str = "fanout-batch-input-5b1d0c";

#[derive(Debug, Clone)]
pub(super) struct Api {
    conn: Conn,
    files_url: String,
    batches_url: String,
}

impl Api {
    pub(super) fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let transport = HttpTransport::new(config.http.clone())?;
        let mut headers = HeaderMap::new();
        if !config.api_key.is_empty() {
            let mut key = super::header_value(
                PROVIDER,
                "the API key",
                &format!("Bearer {}", config.api_key),
            )?;
            key.set_sensitive(true);
            headers.insert(AUTHORIZATION, key);
        }
        let base = config.base_url.trim_end_matches('/');
        Ok(Api {
            conn: Conn {
                transport,
                headers,
                dialect: &DIALECT,
            },
            files_url: join_url(base, "files"),
            batches_url: join_url(base, "batches"),
        })
    }

    pub(super) async fn create(
        &self,
        requests: &[BatchRequest],
    ) -> Result<BatchStatus, ProviderError> {
        let file_id = self.upload(&input_file(requests)?).await?;
        let body = json!({
            "input_file_id": file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
        });
        let mut reply = self
            .conn
            .post_json(&self.batches_url, body.to_string().into_bytes())
            .await?;
        read_status(&mut reply).await
    }

    /// Upload a batch input file; its id.
    async fn upload(&self, jsonl: &[u8]) -> Result<String, ProviderError> {
        let content_type = super::header_value(
            PROVIDER,
            "the upload's content type",
            &format!("multipart/form-data; boundary={BOUNDARY}"),
        )?;
        let conn = &self.conn;
        let mut reply = conn
            .transport
            .post(
                conn.dialect,
                &self.files_url,
                conn.headers.clone(),
                content_type,
                multipart(jsonl),
                Attempt::default(),
                false,
            )
            .await?;
        let body = reply.body().await?;
        let value: Value = serde_json::from_slice(&body)
            .map_err(|error| reply.malformed(json_error("the file object", &error)))?;
        value["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| reply.malformed("the file object has no `id`"))
    }

    pub(super) async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = join_url(&self.batches_url, id);
        let mut reply = self.conn.get(&url, "application/json").await?;
        read_status(&mut reply).await
    }

    pub(super) async fn cancel(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = join_url(&self.batches_url, &format!("{id}/cancel"));
        let mut reply = self.conn.post_json(&url, b"{}".to_vec()).await?;
        read_status(&mut reply).await
    }

    pub(super) async fn results(
        &self,
        status: &BatchStatus,
    ) -> Result<HashMap<String, BatchOutcome>, ProviderError> {
        let mut results = HashMap::new();
        let files = [&status.output_file_id, &status.error_file_id];
        for file_id in files.into_iter().flatten() {
            let url = join_url(&self.files_url, &format!("{file_id}/content"));
            let mut reply = self.conn.get(&url, "application/binary").await?;
            let body = reply.body().await?;
            let text = std::str::from_utf8(&body)
                .map_err(|_| reply.malformed(format!("batch file {file_id} is not UTF-8")))?;
            for (index, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let what = format!("line {} of batch file {file_id}", index + 1);
                let value: Value = serde_json::from_str(line)
                    .map_err(|error| reply.malformed(json_error(&what, &error)))?;
                let custom_id = value["custom_id"]
                    .as_str()
                    .ok_or_else(|| reply.malformed(format!("{what} has no `custom_id`")))?
                    .to_owned();
                let outcome = outcome(&reply, &what, &value)?;
                if results.insert(custom_id.clone(), outcome).is_some() {
                    return Err(reply.malformed(format!("{what}: `{custom_id}` appears twice")));
                }
            }
        }
        Ok(results)
    }
}

/// The batch's input file: one line per request.
fn input_file(requests: &[BatchRequest]) -> Result<Vec<u8>, ProviderError> {
    let mut jsonl = Vec::new();
    for request in requests {
        let line = json!({
            "custom_id": request.custom_id,
            "method": "POST",
            "url": ENDPOINT,
            "body": wire::request_body(&request.request, false),
        });
        serde_json::to_writer(&mut jsonl, &line).map_err(|error| {
            ProviderError::InvalidRequest {
                provider: PROVIDER,
                message: format!("cannot encode the batch: {error}"),
            }
        })?;
        jsonl.push(b'\n');
    }
    if jsonl.len() > MAX_INPUT_FILE_BYTES {
        return Err(ProviderError::InvalidRequest {
            provider: PROVIDER,
            message: format!(
                "the batch's input file would be {} bytes, over the API's limit of {MAX_INPUT_FILE_BYTES}",
                jsonl.len()
            ),
        });
    }
    Ok(jsonl)
}

/// The `multipart/form-data` upload of `jsonl` with purpose `batch`.
fn multipart(jsonl: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(jsonl.len() + 400);
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"fanout-batch.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(jsonl);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// One line of an output or error file.
fn outcome(reply: &Reply, what: &str, line: &Value) -> Result<BatchOutcome, ProviderError> {
    let error = &line["error"];
    if error.is_object() {
        let code = error["code"].as_str().unwrap_or("unknown_error");
        let message = error["message"].as_str().unwrap_or_default().to_owned();
        return Ok(match code {
            "batch_expired" => BatchOutcome::Expired,
            "batch_cancelled" => BatchOutcome::Canceled,
            _ => BatchOutcome::Errored {
                error_type: code.to_owned(),
                message,
            },
        });
    }
    let response = &line["response"];
    let status = json_u64(&response["status_code"])
        .ok_or_else(|| reply.malformed(format!("{what} has neither `error` nor a status code")))?;
    let body = &response["body"];
    if status == 200 {
        let bytes = serde_json::to_vec(body)
            .map_err(|error| reply.malformed(format!("{what}: {error}")))?;
        let decoded = wire::parse_completion(&bytes).map_err(|error| reply.decode_error(error))?;
        return Ok(BatchOutcome::Succeeded(Box::new(
            decoded.into_response(reply),
        )));
    }
    let error = &body["error"];
    let error_type = error["type"]
        .as_str()
        .or_else(|| error["code"].as_str())
        .map_or_else(|| format!("http_{status}"), str::to_owned);
    let message = error["message"]
        .as_str()
        .map_or_else(|| cut(&body.to_string(), 300), str::to_owned);
    Ok(BatchOutcome::Errored {
        error_type,
        message,
    })
}

async fn read_status(reply: &mut Reply) -> Result<BatchStatus, ProviderError> {
    let body = reply.body().await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|error| reply.malformed(json_error("the batch object", &error)))?;
    let id = value["id"]
        .as_str()
        .ok_or_else(|| reply.malformed("the batch object has no `id`"))?
        .to_owned();
    let status = value["status"]
        .as_str()
        .ok_or_else(|| reply.malformed("the batch object has no `status`"))?;
    let processing_status = match status {
        "validating" | "in_progress" | "finalizing" => ProcessingStatus::InProgress,
        "cancelling" => ProcessingStatus::Canceling,
        "completed" | "failed" | "expired" | "cancelled" => ProcessingStatus::Ended,
        other => ProcessingStatus::Other(other.to_owned()),
    };
    let ended = processing_status == ProcessingStatus::Ended;
    let counts = &value["request_counts"];
    let count = |name: &str| json_u64(&counts[name]).unwrap_or(0);
    let (total, completed, failed) = (count("total"), count("completed"), count("failed"));
    let failure = (status == "failed").then(|| failure(&value));
    let text = |name: &str| value[name].as_str().map(str::to_owned);
    let time = |name: &str| json_u64(&value[name]).map(|seconds| seconds.to_string());
    let ended_at = ["completed_at", "failed_at", "expired_at", "cancelled_at"]
        .into_iter()
        .find_map(time);
    Ok(BatchStatus {
        id,
        processing_status,
        request_counts: RequestCounts {
            processing: if ended {
                0
            } else {
                total.saturating_sub(completed + failed)
            },
            succeeded: completed,
            errored: failed,
            canceled: 0,
            expired: 0,
        },
        results_url: None,
        output_file_id: text("output_file_id"),
        error_file_id: text("error_file_id"),
        failure,
        created_at: time("created_at"),
        ended_at,
    })
}

/// Why a `failed` batch failed: its `errors.data`, each with its input line when given.
fn failure(batch: &Value) -> String {
    let reasons: Vec<String> = batch["errors"]["data"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .take(5)
                .map(|error| {
                    let message = error["message"].as_str().unwrap_or("no message");
                    match json_u64(&error["line"]) {
                        Some(line) => format!("input line {line}: {message}"),
                        None => message.to_owned(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    if reasons.is_empty() {
        "the API refused the batch without saying why".to_owned()
    } else {
        reasons.join("; ")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn the_upload_is_two_form_fields_and_the_boundary_never_occurs_in_json_lines() {
        let jsonl = b"{\"custom_id\":\"a\",\"body\":{\"x\":\"line\\r\\n--fanout\"}}\n";
        let body = String::from_utf8(multipart(jsonl)).unwrap();
        let delimiter = format!("\r\n--{BOUNDARY}");
        // Two parts, then the closing delimiter; the file is intact between them.
        assert_eq!(body.matches(&delimiter).count(), 2);
        assert!(body.starts_with(&format!("--{BOUNDARY}\r\n")));
        assert!(body.ends_with(&format!("\r\n--{BOUNDARY}--\r\n")));
        assert!(body.contains("name=\"purpose\"\r\n\r\nbatch\r\n"));
        let file = body.split("application/jsonl\r\n\r\n").nth(1).unwrap();
        assert!(file.starts_with(std::str::from_utf8(jsonl).unwrap()));
    }
}
