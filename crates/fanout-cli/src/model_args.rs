//! The command-line options that choose where model calls go, shared by `fanout run`,
//! `fanout plan` and `fanout resume` (so a resumed rehearsal keeps its simulator's faults,
//! seed and record): `--sim` and the in-process simulator's settings, and the request timeout.
//! They become a `fanout_core::backend::Target` and transport settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use fanout_core::backend::{SimOptions, Target, http_timeout};
use fanout_core::provider::http::HttpConfig;
use fanout_sim::Faults;

#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Use an in-process simulator instead of the real API (no key needed).
    #[arg(long)]
    pub sim: bool,
    /// Scenario script for the simulator (implies --sim).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Latency of the in-process simulator's answers, in milliseconds (with --sim).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub sim_latency_ms: u64,
    /// Faults the in-process simulator injects (with --sim), as `kind=probability` pairs:
    /// overloaded, api_error, hang, truncate, cut_stream, malformed (e.g.
    /// `overloaded=0.05,api_error=0.02,hang=0.01`).
    #[arg(long, value_name = "SPEC", value_parser = crate::run_cmd::parse_faults)]
    pub sim_faults: Option<Faults>,
    /// Seed of the in-process simulator's faults and jitter (with --sim).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sim_seed: u64,
    /// Append every request the in-process simulator answered to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub sim_record: Option<PathBuf>,
    /// Give up on one model request after this many seconds (it is then retried like any
    /// transient failure).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub request_timeout: u64,
}

impl ModelArgs {
    /// Whether the model calls go to the in-process simulator.
    pub fn simulated(&self) -> bool {
        self.sim || self.scenario.is_some()
    }

    /// `" --sim"` when simulated, for the follow-up commands a report suggests.
    pub fn flag(&self) -> &'static str {
        if self.simulated() { " --sim" } else { "" }
    }

    /// The simulator's latency, when simulated.
    pub fn sim_latency(&self) -> Option<Duration> {
        self.simulated()
            .then(|| Duration::from_millis(self.sim_latency_ms))
    }

    pub fn target(&self) -> Target {
        if !self.simulated() {
            return Target::Api;
        }
        Target::Sim(SimOptions {
            scenario: self.scenario.clone(),
            latency: Duration::from_millis(self.sim_latency_ms),
            faults: self.sim_faults.unwrap_or_default(),
            seed: self.sim_seed,
            record: self.sim_record.clone(),
        })
    }

    pub fn http(&self) -> HttpConfig {
        http_timeout(self.request_timeout)
    }
}
