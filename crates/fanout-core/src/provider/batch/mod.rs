//! Batch clients: submit many non-streaming requests at once at half price, poll until the
//! batch has ended, and collect the answers by `custom_id`.
//!
//! One [`BatchClient`] speaks to either provider's batch API:
//!
//! - `anthropic.rs`: the Message Batches API. `POST {base}/v1/messages/batches` carries the
//!   requests inline; `GET …/{id}` is polled; `GET …/{id}/results` returns JSON lines.
//! - `openai.rs`: the Batch API. The requests are uploaded as a JSONL file
//!   (`POST {base}/files`, multipart, purpose `batch`), `POST {base}/batches` starts the batch
//!   over that file, `GET …/batches/{id}` is polled, and the answers are read from its output
//!   and error files (`GET {base}/files/{id}/content`).
//!
//! Either way a succeeded answer is read by the provider's own parser, so a batch answer is the
//! same [`Response`] a direct call gives. Usage is reported as the API counts it; that batch
//! tokens cost [`BATCH_PRICE_FACTOR`] of the normal price is for the caller's cost estimate.
//!
//! Like the providers, these clients do not retry a failed create or results call; a poll that
//! fails with a transient error is simply polled again at the next interval.

mod anthropic;
mod openai;

use std::collections::HashMap;
use std::time::Duration;

use reqwest::header::HeaderValue;
use tokio_util::sync::CancellationToken;

use super::anthropic::AnthropicConfig;
use super::error::{ErrorClass, ProviderError};
use super::openai::OpenAiConfig;
use super::{Request, Response};

/// Batch tokens cost this share of the normal price (both providers).
pub const BATCH_PRICE_FACTOR: f64 = 0.5;

/// The Anthropic API's limit on requests in one batch.
pub const MAX_BATCH_REQUESTS: usize = 100_000;

/// The OpenAI API's limit on requests in one batch (one input file).
pub const MAX_OPENAI_BATCH_REQUESTS: usize = 50_000;

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
    /// OpenAI: the file holding the answers that succeeded, set once the batch has ended.
    pub output_file_id: Option<String>,
    /// OpenAI: the file holding the requests that failed, set once the batch has ended.
    pub error_file_id: Option<String>,
    /// Why the batch as a whole failed (OpenAI refuses a whole batch whose input file does not
    /// validate); such a batch has no results.
    pub failure: Option<String>,
    /// As the API gives it (RFC 3339 from Anthropic, Unix seconds from OpenAI).
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

/// Which batch API a client speaks.
#[derive(Debug, Clone)]
enum Api {
    Anthropic(anthropic::Api),
    OpenAi(openai::Api),
}

/// A batch client for one provider.
#[derive(Debug, Clone)]
pub struct BatchClient {
    api: Api,
}

impl BatchClient {
    /// An Anthropic Message Batches client with its own connection pool.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        Ok(BatchClient {
            api: Api::Anthropic(anthropic::Api::new(config)?),
        })
    }

    /// An OpenAI Batch API client with its own connection pool.
    pub fn openai(config: OpenAiConfig) -> Result<Self, ProviderError> {
        Ok(BatchClient {
            api: Api::OpenAi(openai::Api::new(config)?),
        })
    }

    /// `anthropic` or `openai`.
    pub fn provider(&self) -> &'static str {
        match &self.api {
            Api::Anthropic(_) => anthropic::PROVIDER,
            Api::OpenAi(_) => openai::PROVIDER,
        }
    }

    /// The most requests one batch of this API may hold.
    pub fn max_requests(&self) -> usize {
        match &self.api {
            Api::Anthropic(_) => MAX_BATCH_REQUESTS,
            Api::OpenAi(_) => MAX_OPENAI_BATCH_REQUESTS,
        }
    }

    /// Submit `requests` as one batch.
    pub async fn create(&self, requests: &[BatchRequest]) -> Result<BatchStatus, ProviderError> {
        check_requests(self.provider(), requests, self.max_requests())?;
        match &self.api {
            Api::Anthropic(api) => api.create(requests).await,
            Api::OpenAi(api) => api.create(requests).await,
        }
    }

    /// The batch's current state.
    pub async fn status(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        match &self.api {
            Api::Anthropic(api) => api.status(id).await,
            Api::OpenAi(api) => api.status(id).await,
        }
    }

    /// Ask the API to stop the batch; requests not yet processed end without an answer.
    pub async fn cancel(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        match &self.api {
            Api::Anthropic(api) => api.cancel(id).await,
            Api::OpenAi(api) => api.cancel(id).await,
        }
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

    /// The results of an ended batch, by `custom_id`. A request with no result (OpenAI does
    /// not report requests a cancelled batch never ran) is simply absent. A batch that failed
    /// as a whole is an error naming why.
    pub async fn results(
        &self,
        status: &BatchStatus,
    ) -> Result<HashMap<String, BatchOutcome>, ProviderError> {
        if let Some(failure) = &status.failure {
            return Err(ProviderError::InvalidRequest {
                provider: self.provider(),
                message: format!("batch {} failed: {failure}", status.id),
            });
        }
        match &self.api {
            Api::Anthropic(api) => api.results(status).await,
            Api::OpenAi(api) => api.results(status).await,
        }
    }
}

/// Both APIs' rules for a batch's requests: 1 to `max` of them, each `custom_id` 1 to 64
/// letters, digits, `-` or `_`, and unique.
fn check_requests(
    provider: &'static str,
    requests: &[BatchRequest],
    max: usize,
) -> Result<(), ProviderError> {
    let invalid = |message: String| ProviderError::InvalidRequest { provider, message };
    if requests.is_empty() || requests.len() > max {
        return Err(invalid(format!(
            "a batch holds 1 to {max} requests, not {}",
            requests.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for request in requests {
        let id = &request.custom_id;
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(invalid(format!(
                "custom_id `{}` must be 1 to 64 letters, digits, '-' or '_'",
                super::http::cut(id, 80)
            )));
        }
        if !seen.insert(id.as_str()) {
            return Err(invalid(format!("custom_id `{id}` is used twice")));
        }
    }
    Ok(())
}

/// One batch API's connection: its transport, the headers every call carries (key, version),
/// and how its errors read.
#[derive(Debug, Clone)]
struct Conn {
    transport: super::http::HttpTransport,
    headers: reqwest::header::HeaderMap,
    dialect: &'static super::http::Dialect,
}

impl Conn {
    async fn get(
        &self,
        url: &str,
        accept: &'static str,
    ) -> Result<super::http::Reply, ProviderError> {
        self.transport
            .get(self.dialect, url, self.headers.clone(), accept)
            .await
    }

    async fn post_json(
        &self,
        url: &str,
        body: Vec<u8>,
    ) -> Result<super::http::Reply, ProviderError> {
        self.transport
            .post_json(
                self.dialect,
                url,
                self.headers.clone(),
                body,
                super::Attempt::default(),
                false,
            )
            .await
    }
}

/// `value` as a header value, or an error naming `what` (an API key with a newline…).
fn header_value(
    provider: &'static str,
    what: &str,
    value: &str,
) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| ProviderError::InvalidRequest {
        provider,
        message: format!("{what} contains characters not allowed in an HTTP header"),
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
