//! A client for the Anthropic Message Batches API: submit many non-streaming requests at once
//! at half price, poll until the batch has ended, and collect the answers by `custom_id`.
//!
//! `POST {base}/v1/messages/batches` ([`BatchClient::create`]), `GET …/{id}`
//! ([`BatchClient::status`], polled with backoff by [`BatchClient::wait`]),
//! `GET …/{id}/results` ([`BatchClient::results`], JSON lines in no particular order) and
//! `POST …/{id}/cancel` ([`BatchClient::cancel`]). Request bodies are
//! [`super::anthropic::request_body`] and each succeeded answer is read by
//! [`super::anthropic::parse_message`], so a batch answer is the same [`Response`] a direct call
//! gives. Usage is reported as the API counts it; that batch tokens cost
//! [`BATCH_PRICE_FACTOR`] of the normal price is for the caller's cost estimate.
//!
//! Like the providers, this client does not retry a failed create or results call; a poll that
//! fails with a transient error is simply polled again at the next interval.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::anthropic::{self, AnthropicConfig};
use super::error::{ErrorClass, ProviderError};
use super::headers;
use super::http::{Dialect, HttpTransport, Reply, cut, join_url, json_error, json_u64};
use super::{Attempt, Request, Response};

const PROVIDER: &str = "anthropic";

const DIALECT: Dialect = Dialect {
    provider: PROVIDER,
    request_id_header: headers::ANTHROPIC_REQUEST_ID,
    rate_limits: headers::anthropic_rate_limits,
    error_body: anthropic::parse_error_body,
};

/// Batch tokens cost this share of the normal price.
pub const BATCH_PRICE_FACTOR: f64 = 0.5;

/// The API's limit on requests in one batch.
pub const MAX_BATCH_REQUESTS: usize = 100_000;

/// One request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// 1 to 64 letters, digits, `-` or `_`; unique within the batch (chunk ids qualify).
    pub custom_id: String,
    pub request: Request,
}

/// Where a batch is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessingStatus {
    InProgress,
    Canceling,
    Ended,
    /// A value this version does not know.
    Other(String),
}

/// How many requests are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestCounts {
    pub processing: u64,
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

/// A batch object.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatus {
    pub id: String,
    pub processing_status: ProcessingStatus,
    pub request_counts: RequestCounts,
    /// Set once the batch has ended.
    pub results_url: Option<String>,
    pub created_at: Option<String>,
    pub ended_at: Option<String>,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchOutcome {
    Succeeded(Box<Response>),
    /// The request failed like a direct call would have (a 400 for bad params, a 500…).
    Errored {
        error_type: String,
        message: String,
    },
    Canceled,
    Expired,
}

/// How to poll a batch: start at `initial`, multiply by `factor` up to `max`; give up after
/// `timeout` (the API itself expires a batch after 24 hours).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PollPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub timeout: Option<Duration>,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(60),
            factor: 1.5,
            timeout: Some(Duration::from_secs(25 * 3600)),
        }
    }
}

impl PollPolicy {
    /// The wait before poll number `n` (from 0).
    pub fn delay(&self, n: u32) -> Duration {
        let scaled = self.initial.as_secs_f64() * self.factor.max(1.0).powi(n.min(64) as i32);
        Duration::from_secs_f64(scaled.min(self.max.as_secs_f64()))
    }
}

/// Why waiting for a batch stopped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error("batch {id} had not ended after {after:?}")]
    TimedOut { id: String, after: Duration },
    #[error("stopped waiting for batch {id}: cancelled")]
    Cancelled { id: String },
}

/// A Message Batches client.
#[derive(Debug, Clone)]
pub struct BatchClient {
    transport: HttpTransport,
    headers: HeaderMap,
    batches_url: String,
}

impl BatchClient {
    /// A client with its own connection pool.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let transport = HttpTransport::new(config.http.clone())?;
        Self::with_transport(config, transport)
    }

    /// A client sharing an existing transport.
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
        Ok(BatchClient {
            transport,
            headers,
            batches_url: join_url(config.base_url.trim_end_matches('/'), "v1/messages/batches"),
        })
    }

    /// Submit `requests` as one batch.
    pub async fn create(&self, requests: &[BatchRequest]) -> Result<BatchStatus, ProviderError> {
        if requests.is_empty() || requests.len() > MAX_BATCH_REQUESTS {
            return Err(invalid(format!(
                "a batch holds 1 to {MAX_BATCH_REQUESTS} requests, not {}",
                requests.len()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(requests.len());
        for request in requests {
            let id = &request.custom_id;
            let valid = (1..=64).contains(&id.len())
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid {
                return Err(invalid(format!(
                    "custom_id `{}` must be 1 to 64 letters, digits, '-' or '_'",
                    cut(id, 80)
                )));
            }
            if !seen.insert(id.as_str()) {
                return Err(invalid(format!("custom_id `{id}` is used twice")));
            }
            entries.push(json!({
                "custom_id": id,
                "params": anthropic::request_body(&request.request, false),
            }));
        }
        let body = serde_json::to_vec(&json!({ "requests": entries }))
            .map_err(|error| invalid(format!("cannot encode the batch: {error}")))?;
        let mut reply = self
            .transport
            .post_json(
                &DIALECT,
                &self.batches_url,
                self.headers.clone(),
                body,
                Attempt::default(),
                false,
            )
            .await?;
        read_status(&mut reply).await
    }

    /// The batch's current state.
    pub async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = join_url(&self.batches_url, id);
        let mut reply = self
            .transport
            .get(&DIALECT, &url, self.headers.clone(), "application/json")
            .await?;
        read_status(&mut reply).await
    }

    /// Ask the API to stop the batch; requests not yet processed end `canceled`.
    pub async fn cancel(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = join_url(&self.batches_url, &format!("{id}/cancel"));
        let mut reply = self
            .transport
            .post_json(
                &DIALECT,
                &url,
                self.headers.clone(),
                b"{}".to_vec(),
                Attempt::default(),
                false,
            )
            .await?;
        read_status(&mut reply).await
    }

    /// Poll until the batch has ended. A poll failing with a retryable error is retried at
    /// the next interval; a fatal one ends the wait. `cancel` stops waiting (the batch itself
    /// goes on: call [`BatchClient::cancel`] to stop it).
    pub async fn wait(
        &self,
        id: &str,
        policy: &PollPolicy,
        cancel: &CancellationToken,
    ) -> Result<BatchStatus, BatchError> {
        let started = tokio::time::Instant::now();
        let mut polls = 0u32;
        loop {
            match self.status(id).await {
                Ok(status) if status.processing_status == ProcessingStatus::Ended => {
                    return Ok(status);
                }
                Ok(_) => {}
                Err(error) if error.class() == ErrorClass::Fatal => return Err(error.into()),
                Err(_) => {}
            }
            let delay = policy.delay(polls);
            polls = polls.saturating_add(1);
            if let Some(timeout) = policy.timeout
                && started.elapsed() + delay > timeout
            {
                return Err(BatchError::TimedOut {
                    id: id.to_owned(),
                    after: started.elapsed(),
                });
            }
            tokio::select! {
                () = cancel.cancelled() => {
                    return Err(BatchError::Cancelled { id: id.to_owned() });
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The results of an ended batch, by `custom_id`.
    pub async fn results(
        &self,
        status: &BatchStatus,
    ) -> Result<HashMap<String, BatchOutcome>, ProviderError> {
        let url = status
            .results_url
            .clone()
            .unwrap_or_else(|| join_url(&self.batches_url, &format!("{}/results", status.id)));
        let mut reply = self
            .transport
            .get(&DIALECT, &url, self.headers.clone(), "application/binary")
            .await?;
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
                anthropic::parse_message(&message).map_err(|error| reply.decode_error(error))?;
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
        created_at: text("created_at"),
        ended_at: text("ended_at"),
    })
}

fn invalid(message: String) -> ProviderError {
    ProviderError::InvalidRequest {
        provider: PROVIDER,
        message,
    }
}

fn header_value(what: &str, value: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| {
        invalid(format!(
            "{what} contains characters not allowed in an HTTP header"
        ))
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn poll_delays_grow_to_the_cap() {
        let policy = PollPolicy {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(10),
            factor: 2.0,
            timeout: None,
        };
        let delays: Vec<u64> = (0..5).map(|n| policy.delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10]);
        assert_eq!(policy.delay(u32::MAX).as_secs(), 10);
    }
}
