//! `fanout sim` options (clap) and their translation into a [`SimConfig`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::{Faults, Scenario, SimConfig, SimError};

/// Options of `fanout sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 = any free port; the first stdout line says which).
    #[arg(long, default_value_t = 4010)]
    pub port: u16,
    /// Base latency of every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Extra latency per output token, in milliseconds (fractions allowed).
    #[arg(long, default_value_t = 0.0)]
    pub per_token_ms: f64,
    /// Latency jitter as a fraction: 0.1 scales each latency by a seeded factor in [0.9, 1.1].
    #[arg(long, default_value_t = 0.0)]
    pub jitter: f64,
    /// Requests per minute (token bucket, burst = the limit); omit for no limit.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Input tokens per minute; omit for no limit.
    #[arg(long)]
    pub itpm: Option<u64>,
    /// Output tokens per minute; omit for no limit.
    #[arg(long)]
    pub otpm: Option<u64>,
    /// Input plus output tokens per minute in one bucket (OpenAI-style); omit for no limit.
    #[arg(long)]
    pub tpm: Option<u64>,
    /// Requests handled at once; excess requests get 429 with `retry-after: 1` (no queueing).
    #[arg(long)]
    pub max_concurrent: Option<usize>,
    /// Probability of a 529 overloaded_error (503 on OpenAI routes).
    #[arg(long, default_value_t = 0.0)]
    pub p_overloaded: f64,
    /// Probability of a 500 api_error.
    #[arg(long, default_value_t = 0.0)]
    pub p_api_error: f64,
    /// Probability that a request is never answered (until the client gives up).
    #[arg(long, default_value_t = 0.0)]
    pub p_hang: f64,
    /// Probability that a non-streamed JSON body is cut short.
    #[arg(long, default_value_t = 0.0)]
    pub p_truncate: f64,
    /// Probability that a stream stops mid-event and the connection closes.
    #[arg(long, default_value_t = 0.0)]
    pub p_cut_stream: f64,
    /// Probability that a body (or one stream event) is not valid JSON.
    #[arg(long, default_value_t = 0.0)]
    pub p_malformed: f64,
    /// Seed of every random choice (faults, jitter); same seed, same faults.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scenario script (YAML) with scripted answers, errors and delays.
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Append every exchange to this file as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Accept requests without an API key.
    #[arg(long)]
    pub no_auth: bool,
    /// Exchanges kept in memory for `GET /sim/exchanges` (oldest dropped first); 0 keeps none.
    #[arg(long, default_value_t = crate::record::MAX_EXCHANGES)]
    pub keep_exchanges: usize,
    /// How long a message batch stays in progress, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub batch_delay_ms: u64,
}

impl SimArgs {
    /// The configuration and the address to listen on; loads and validates the scenario file.
    pub fn to_config(&self) -> Result<(SimConfig, SocketAddr), SimError> {
        let per_token = if self.per_token_ms.is_finite() && self.per_token_ms >= 0.0 {
            Duration::from_secs_f64(self.per_token_ms / 1000.0)
        } else {
            return Err(SimError::InvalidOption {
                option: "per-token-ms".to_string(),
                message: format!("must be a non-negative number, got {}", self.per_token_ms),
            });
        };
        let scenario = match &self.scenario {
            Some(path) => Some(Scenario::from_file(path)?),
            None => None,
        };
        let config = SimConfig {
            latency: Duration::from_millis(self.latency_ms),
            per_output_token: per_token,
            jitter: self.jitter,
            rpm: self.rpm,
            itpm: self.itpm,
            otpm: self.otpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
            faults: Faults {
                overloaded: self.p_overloaded,
                api_error: self.p_api_error,
                hang: self.p_hang,
                truncate_body: self.p_truncate,
                cut_stream: self.p_cut_stream,
                malformed_json: self.p_malformed,
            },
            seed: self.seed,
            scenario,
            record_path: self.record.clone(),
            require_auth: !self.no_auth,
            batch_delay: Duration::from_millis(self.batch_delay_ms),
            keep_exchanges: self.keep_exchanges,
        };
        config.validate()?;
        Ok((config, SocketAddr::new(self.host, self.port)))
    }
}
