//! The Anthropic Message Batches API: the requests travel inline in one
//! `POST {base}/v1/messages/batches`; the batch is read at `GET …/{id}` and its answers at
//! `GET …/{id}/results` (JSON lines in no particular order, each `{"custom_id", "result"}`).

use std::collections::HashMap;

use reqwest::header::{HeaderMap, HeaderName};
use serde_json::{Value, json};

use super::super::anthropic::{self as wire, AnthropicConfig};
use super::super::error::ProviderError;
use super::super::headers;
use super::super::http::{Dialect, HttpTransport, Reply, join_url, json_error, json_u64};
use super::{BatchOutcome, BatchRequest, BatchStatus, Conn, ProcessingStatus, RequestCounts};

pub(super) const PROVIDER: &str = "anthropic";

const DIALECT: Dialect = Dialect {
    provider: PROVIDER,
    request_id_header: headers::ANTHROPIC_REQUEST_ID,
    rate_limits: headers::anthropic_rate_limits,
    error_body: wire::parse_error_body,
};

#[derive(Debug, Clone)]
pub(super) struct Api {
    conn: Conn,
    batches_url: String,
}

impl Api {
    pub(super) fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let transport = HttpTransport::new(config.http.clone())?;
        let mut headers = HeaderMap::new();
        if !config.api_key.is_empty() {
            let mut key = super::header_value(PROVIDER, "the API key", &config.api_key)?;
            key.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-api-key"), key);
        }
        headers.insert(
            HeaderName::from_static("anthropic-version"),
            super::header_value(PROVIDER, "the API version", &config.version)?,
        );
        Ok(Api {
            conn: Conn {
                transport,
                headers,
                dialect: &DIALECT,
            },
            batches_url: join_url(config.base_url.trim_end_matches('/'), "v1/messages/batches"),
        })
    }

    pub(super) async fn create(
        &self,
        requests: &[BatchRequest],
    ) -> Result<BatchStatus, ProviderError> {
        let entries: Vec<Value> = requests
            .iter()
            .map(|request| {
                json!({
                    "custom_id": request.custom_id,
                    "params": wire::request_body(&request.request, false),
                })
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "requests": entries })).map_err(|error| {
            ProviderError::InvalidRequest {
                provider: PROVIDER,
                message: format!("cannot encode the batch: {error}"),
            }
        })?;
        let mut reply = self.conn.post_json(&self.batches_url, body).await?;
        read_status(&mut reply).await
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
        let url = status
            .results_url
            .clone()
            .unwrap_or_else(|| join_url(&self.batches_url, &format!("{}/results", status.id)));
        let mut reply = self.conn.get(&url, "application/binary").await?;
        let body = reply.body().await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| reply.malformed("batch results are not UTF-8"))?;
        let mut results = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let what = format!("batch results line {}", index + 1);
            let value: Value = serde_json::from_str(line)
                .map_err(|error| reply.malformed(json_error(&what, &error)))?;
            let custom_id = value["custom_id"]
                .as_str()
                .ok_or_else(|| reply.malformed(format!("{what} has no `custom_id`")))?
                .to_owned();
            let outcome = outcome(&reply, &what, &value["result"])?;
            if results.insert(custom_id.clone(), outcome).is_some() {
                return Err(reply.malformed(format!("{what}: `{custom_id}` appears twice")));
            }
        }
        Ok(results)
    }
}

fn outcome(reply: &Reply, what: &str, result: &Value) -> Result<BatchOutcome, ProviderError> {
    match result["type"].as_str() {
        Some("succeeded") => {
            let message = serde_json::to_vec(&result["message"])
                .map_err(|error| reply.malformed(format!("{what}: {error}")))?;
            let decoded =
                wire::parse_message(&message).map_err(|error| reply.decode_error(error))?;
            Ok(BatchOutcome::Succeeded(Box::new(
                decoded.into_response(reply),
            )))
        }
        Some("errored") => {
            // `error` is an error response: {"type": "error", "error": {"type", "message"}}.
            let error = if result["error"]["error"].is_object() {
                &result["error"]["error"]
            } else {
                &result["error"]
            };
            Ok(BatchOutcome::Errored {
                error_type: error["type"].as_str().unwrap_or("unknown_error").to_owned(),
                message: error["message"].as_str().unwrap_or_default().to_owned(),
            })
        }
        Some("canceled") => Ok(BatchOutcome::Canceled),
        Some("expired") => Ok(BatchOutcome::Expired),
        other => Err(reply.malformed(format!(
            "{what} has an unknown result type {}",
            other.unwrap_or("(none)")
        ))),
    }
}

async fn read_status(reply: &mut Reply) -> Result<BatchStatus, ProviderError> {
    let body = reply.body().await?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|error| reply.malformed(json_error("the batch object", &error)))?;
    let id = value["id"]
        .as_str()
        .ok_or_else(|| reply.malformed("the batch object has no `id`"))?
        .to_owned();
    let processing_status = match value["processing_status"].as_str() {
        Some("in_progress") => ProcessingStatus::InProgress,
        Some("canceling") => ProcessingStatus::Canceling,
        Some("ended") => ProcessingStatus::Ended,
        Some(other) => ProcessingStatus::Other(other.to_owned()),
        None => return Err(reply.malformed("the batch object has no `processing_status`")),
    };
    let counts = &value["request_counts"];
    let count = |name: &str| json_u64(&counts[name]).unwrap_or(0);
    let text = |name: &str| value[name].as_str().map(str::to_owned);
    Ok(BatchStatus {
        id,
        processing_status,
        request_counts: RequestCounts {
            processing: count("processing"),
            succeeded: count("succeeded"),
            errored: count("errored"),
            canceled: count("canceled"),
            expired: count("expired"),
        },
        results_url: text("results_url"),
        output_file_id: None,
        error_file_id: None,
        failure: None,
        created_at: text("created_at"),
        ended_at: text("ended_at"),
    })
}
