//! `fanout-sim`: a local stand-in for the Anthropic Messages and OpenAI Chat Completions APIs.
//!
//! Every test and benchmark of fanout talks to this server instead of a real provider. It speaks
//! the real wire formats (built from raw JSON, independent of `fanout-core`'s types), enforces
//! real-looking rate limits, injects faults reproducibly, follows scenario scripts, and records
//! every exchange.
//!
//! Start reading at [`Sim::start`]; the HTTP handling is in `server.rs`, the two wire formats in
//! `anthropic.rs` and `openai.rs`.
//!
//! # Endpoints
//!
//! - `POST /v1/messages` (JSON, or SSE with `stream: true`), `POST /v1/messages/count_tokens`
//! - Message Batches: `POST /v1/messages/batches`, `GET /v1/messages/batches/{id}`,
//!   `GET /v1/messages/batches/{id}/results`, `POST /v1/messages/batches/{id}/cancel`
//!   (see `batches.rs`; each request is answered like `/v1/messages`)
//! - `POST /v1/chat/completions` (JSON, or `data:` chunks ending in `data: [DONE]`)
//! - OpenAI Batch API: `POST /v1/files` (multipart upload of the JSONL input),
//!   `GET /v1/files/{id}/content`, `POST /v1/batches`, `GET /v1/batches/{id}`,
//!   `POST /v1/batches/{id}/cancel` (see `openai_batches.rs`; each line is answered like
//!   `/v1/chat/completions`)
//! - `GET /sim/stats` ([`Stats`]) and `GET /sim/exchanges` ([`Exchange`] list)
//!
//! Authentication: any non-empty `x-api-key` or `Authorization: Bearer` key (unless
//! [`SimConfig::require_auth`] is off). Anthropic routes also require `anthropic-version`.
//!
//! # Token counting
//!
//! Deterministic, so clients can predict it: `tokens(b) = max(1, ceil(b / 4))` for `b` bytes of
//! UTF-8. Input tokens count the bytes of: the system text; every message's text blocks /
//! string content; `tool_use` blocks (name + compact JSON of the input) and OpenAI `tool_calls`
//! (name + arguments string); `tool_result` contents and `tool` messages; other content blocks
//! (images, documents, ...) as their compact JSON; each declared tool's name, description and
//! compact JSON schema. Output tokens count the generated text plus the compact JSON of every
//! generated tool input. `count_tokens` returns the same input count.
//!
//! # Prompt caching
//!
//! As documented (see `cache.rs`): per API key and model, Anthropic prefixes ending at a
//! `cache_control` breakpoint (tools, system blocks, message content blocks; at most 4; earlier
//! block boundaries up to 20 before a breakpoint are checked for a hit) are written on first use
//! (`cache_creation_input_tokens`) and read while they live (5 minutes, or `"ttl": "1h"`,
//! refreshed on each hit, on tokio time); prefixes below the model's minimum are neither written
//! nor read, and `input_tokens` is the uncached remainder. OpenAI prompts report a repeated
//! prefix of at least 1,024 tokens in `prompt_tokens_details.cached_tokens` (128-token steps).
//! Scripted answers and batch requests are accounted the same way. A prefix's tokens are
//! `floor(bytes / 4)` of the bytes counted for its blocks.
//!
//! # Rate limits, faults, latency
//!
//! See [`SimConfig`]. Limits are token buckets (capacity = the per-minute limit, refilled
//! continuously), shared by both APIs; `count_tokens` is not limited (it still reports the
//! headers). A request larger than the whole input limit is admitted when the bucket is full. The concurrency cap (`max_concurrent`) does not queue:
//! a request beyond the cap is answered 429 at once with `retry-after: 1`. Faults are drawn
//! from SplitMix64 keyed by the seed and the request's sequence number. Latency is
//! `(latency + per_output_token × output tokens) × (1 ± jitter·u)`; streams spend the base
//! latency before the first event and spread the rest over the remaining events. A hung
//! request is recorded at once with status 0 and released (connection broken) at shutdown.
//!
//! OpenAI routes mirror the Anthropic errors with OpenAI's shapes: 401 is
//! `invalid_request_error` ("You didn't provide an API key..."), the overloaded fault is a 503
//! `server_error`, 429s carry `type` `requests`/`tokens` and `code` `rate_limit_exceeded`.

mod agent;
mod answer;
mod anthropic;
mod batches;
mod cache;
pub mod cli;
mod faults;
mod lexicon;
mod limits;
mod model;
mod openai;
mod openai_batches;
mod planner;
mod prng;
mod proposer;
mod record;
mod scenario;
mod schema_gen;
mod server;
mod tokens;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use faults::Faults;
pub use record::{Exchange, MAX_EXCHANGES, Stats};
pub use scenario::{Malformed, Scenario};

/// Everything the simulator can be told.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Base latency of every answer.
    pub latency: Duration,
    /// Extra latency per output token.
    pub per_output_token: Duration,
    /// Latency is scaled by `1 ± jitter·u`, u uniform in [0, 1) (e.g. 0.1 = ±10 %).
    pub jitter: f64,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    pub itpm: Option<u64>,
    /// Output tokens per minute.
    pub otpm: Option<u64>,
    /// Input plus output tokens per minute, one bucket (OpenAI's `x-ratelimit-*-tokens`).
    pub tpm: Option<u64>,
    /// Requests handled at once; more get 429 with `retry-after: 1` (no queueing).
    pub max_concurrent: Option<usize>,
    /// Fault probabilities.
    pub faults: Faults,
    /// Seed of every random choice.
    pub seed: u64,
    /// Scripted answers.
    pub scenario: Option<Scenario>,
    /// Append every exchange as a JSON line to this file.
    pub record_path: Option<PathBuf>,
    /// Reject requests without an API key (401).
    pub require_auth: bool,
    /// How long a message batch stays `in_progress` before it has ended.
    pub batch_delay: Duration,
    /// Exchanges kept in memory for `/sim/exchanges` and [`SimHandle::exchanges`] (the oldest
    /// go first); 0 keeps none, for a long run where only `/sim/stats` and the record file
    /// matter (a benchmark's simulator then holds no memory per request).
    pub keep_exchanges: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            per_output_token: Duration::ZERO,
            jitter: 0.0,
            rpm: None,
            itpm: None,
            otpm: None,
            tpm: None,
            max_concurrent: None,
            faults: Faults::default(),
            seed: 0,
            scenario: None,
            record_path: None,
            require_auth: true,
            batch_delay: Duration::ZERO,
            keep_exchanges: crate::record::MAX_EXCHANGES,
        }
    }
}

impl SimConfig {
    /// Checks ranges (jitter, probabilities, non-zero limits).
    pub fn validate(&self) -> Result<(), SimError> {
        let bad = |option: &str, message: String| {
            Err(SimError::InvalidOption {
                option: option.to_string(),
                message,
            })
        };
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad("jitter", format!("must be in [0, 1], got {}", self.jitter));
        }
        for (name, limit) in [
            ("rpm", self.rpm),
            ("itpm", self.itpm),
            ("otpm", self.otpm),
            ("tpm", self.tpm),
        ] {
            if limit == Some(0) {
                return bad(
                    name,
                    "must be at least 1 (leave it out for no limit)".to_string(),
                );
            }
        }
        if self.max_concurrent == Some(0) {
            return bad("max-concurrent", "must be at least 1".to_string());
        }
        if let Err(message) = self.faults.validate() {
            return bad("faults", message);
        }
        Ok(())
    }
}

/// What can go wrong starting or configuring the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A scenario script is invalid.
    #[error("{origin}:{line}:{column}: {message}")]
    Scenario {
        origin: String,
        line: u64,
        column: u64,
        message: String,
    },
    /// A scenario file could not be read.
    #[error("cannot read scenario file {}: {source}", path.display())]
    ScenarioRead {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The record file could not be opened.
    #[error("cannot open record file {}: {source}", path.display())]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An option is out of range.
    #[error("invalid option --{option}: {message}")]
    InvalidOption { option: String, message: String },
}

/// The simulator.
#[derive(Debug)]
pub struct Sim;

impl Sim {
    /// Binds `addr` (port 0 = any free port) and serves on the current tokio runtime until
    /// [`SimHandle::shutdown`].
    pub async fn start(config: SimConfig, addr: SocketAddr) -> Result<SimHandle, SimError> {
        config.validate()?;
        let listener = bind(addr).map_err(|source| SimError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| SimError::Bind { addr, source })?;
        let (shared, stop, task) = server::spawn(config, listener)?;
        Ok(SimHandle {
            addr: local,
            shared,
            stop,
            task,
        })
    }
}

/// Bind with a listen backlog deep enough for a 1,000-agent fleet connecting at once (the
/// default of 1,024 overflows into SYN retries that cost a second each).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(8192)
}

/// A running simulator.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<server::Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://HOST:PORT` (no trailing slash, no `/v1`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Counters since start.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Recorded exchanges in arrival order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.shared.recorder.all()
    }

    /// Stops accepting, releases hung requests, waits (up to 5 s) for open connections, and
    /// flushes the record file.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        if let Some(writer) = self.shared.recorder.close() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }
}
