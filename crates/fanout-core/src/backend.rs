//! Where model calls go, and the one way the model stack is put together.
//!
//! A [`Backend`] is either the providers' real APIs (keys and base URLs from the environment:
//! `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, …) or a simulator started in this process
//! (`fanout_sim`, the same wire formats on loopback, no key needed). From it come the pieces a
//! run needs: a [`Provider`] for a provider kind, the [`Fleet`] that every model call of a run
//! goes through (provider → retry policy → fleet-wide retry budget → rate governor, configured
//! from the workflow), and a [`BatchClient`] for `execution: batch`. The CLI, the benchmarks
//! and any other front end build these here, so the composition exists once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fanout_sim::{Faults, Scenario, Sim, SimConfig, SimHandle};

use crate::config::{Config, Provider as ProviderKind, RateLimits};
use crate::fleet::Fleet;
use crate::governor::{Governor, GovernorConfig};
use crate::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use crate::provider::batch::{BatchClient, PollPolicy};
use crate::provider::http::HttpConfig;
use crate::provider::openai::{OpenAiConfig, OpenAiProvider};
use crate::provider::{Provider, ProviderError};
use crate::retry::{RetryBudget, RetryBudgetConfig, RetryPolicy};

/// What a front end asks for.
#[derive(Debug, Clone, Default)]
pub enum Target {
    /// The real APIs, configured from the environment.
    #[default]
    Api,
    /// A simulator in this process.
    Sim(SimOptions),
}

/// The simulator settings a user can choose (`--sim-latency-ms`, `--sim-faults`, …).
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// A scenario script to load (`--scenario FILE`).
    pub scenario: Option<PathBuf>,
    pub latency: Duration,
    pub faults: Faults,
    pub seed: u64,
    /// Append every exchange to this file as JSON lines.
    pub record: Option<PathBuf>,
}

/// Why the model API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The reason is part of the message (not a separate `source`), so it is said once.
    #[error("cannot reach the {provider} API (or use --sim): {reason}")]
    Api {
        provider: &'static str,
        reason: ProviderError,
    },
    #[error("cannot load the scenario {path}: {message}")]
    Scenario { path: PathBuf, message: String },
    #[error("cannot start the simulator: {0}")]
    Sim(String),
}

/// The model API of a run.
#[derive(Debug)]
pub struct Backend {
    /// The simulator's base URL (`http://127.0.0.1:PORT`), when simulated.
    sim_url: Option<String>,
    sim: Option<SimHandle>,
    http: HttpConfig,
}

impl Backend {
    /// The real APIs; nothing is contacted until a call is made.
    pub fn api(http: HttpConfig) -> Backend {
        Backend {
            sim_url: None,
            sim: None,
            http,
        }
    }

    /// A simulator already running elsewhere (another process), at `base_url`.
    pub fn at(base_url: impl Into<String>, http: HttpConfig) -> Backend {
        Backend {
            sim_url: Some(base_url.into()),
            sim: None,
            http,
        }
    }

    /// Set up `target`: for a simulator, load its scenario and start it on loopback.
    pub async fn start(target: &Target, http: HttpConfig) -> Result<Backend, BackendError> {
        let options = match target {
            Target::Api => return Ok(Backend::api(http)),
            Target::Sim(options) => options,
        };
        let scenario = match &options.scenario {
            Some(path) => {
                Some(
                    Scenario::from_file(path).map_err(|error| BackendError::Scenario {
                        path: path.clone(),
                        message: error.to_string(),
                    })?,
                )
            }
            None => None,
        };
        let config = SimConfig {
            scenario,
            latency: options.latency,
            faults: options.faults,
            seed: options.seed,
            record_path: options.record.clone(),
            ..SimConfig::default()
        };
        let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let handle = Sim::start(config, loopback)
            .await
            .map_err(|error| BackendError::Sim(error.to_string()))?;
        Ok(Backend {
            sim_url: Some(handle.base_url()),
            sim: Some(handle),
            http,
        })
    }

    /// Whether calls go to a simulator rather than a real API.
    pub fn simulated(&self) -> bool {
        self.sim_url.is_some()
    }

    /// The simulator's base URL, when simulated.
    pub fn sim_url(&self) -> Option<&str> {
        self.sim_url.as_deref()
    }

    /// The simulator, when it runs in this process (its exchanges, its stats).
    pub fn sim(&self) -> Option<&SimHandle> {
        self.sim.as_ref()
    }

    /// A provider of `kind`.
    pub fn provider(&self, kind: ProviderKind) -> Result<Arc<dyn Provider>, BackendError> {
        let http = self.http.clone();
        let provider: Arc<dyn Provider> = match kind {
            ProviderKind::Anthropic => Arc::new(
                AnthropicProvider::new(self.anthropic_config(http)?).map_err(api("anthropic"))?,
            ),
            ProviderKind::OpenAi => {
                Arc::new(OpenAiProvider::new(self.openai_config(http)?).map_err(api("openai"))?)
            }
        };
        Ok(provider)
    }

    /// The fleet every model call of `config`'s workflow goes through, on the orchestrator's
    /// provider.
    pub fn fleet(&self, config: &Config) -> Result<Fleet, BackendError> {
        self.fleet_on(config, config.orchestrator_model().provider)
    }

    /// The workflow's fleet on provider `kind` (an item job's workers).
    pub fn fleet_on(&self, config: &Config, kind: ProviderKind) -> Result<Fleet, BackendError> {
        Ok(fleet(config, self.provider(kind)?))
    }

    /// A fleet on provider `kind` under `limits` alone: a worker running another machine's
    /// item chunks has the workflow's limits (published with the job), not its file.
    pub fn fleet_with_limits(
        &self,
        limits: &RateLimits,
        kind: ProviderKind,
    ) -> Result<Fleet, BackendError> {
        Ok(fleet_under(limits, self.provider(kind)?))
    }

    /// A batch client for provider `kind`.
    pub fn batch_client(&self, kind: ProviderKind) -> Result<BatchClient, BackendError> {
        let http = self.http.clone();
        match kind {
            ProviderKind::Anthropic => {
                BatchClient::new(self.anthropic_config(http)?).map_err(api("anthropic"))
            }
            ProviderKind::OpenAi => {
                BatchClient::openai(self.openai_config(http)?).map_err(api("openai"))
            }
        }
    }

    /// How often to poll a batch: briskly against a simulator, gently against a real API.
    pub fn poll_policy(&self) -> PollPolicy {
        if self.simulated() {
            PollPolicy {
                initial: Duration::from_millis(50),
                max: Duration::from_secs(1),
                factor: 1.5,
                timeout: Some(Duration::from_secs(3600)),
            }
        } else {
            PollPolicy::default()
        }
    }

    /// Stop the simulator, if this backend started one.
    pub async fn shutdown(self) {
        if let Some(sim) = self.sim {
            sim.shutdown().await;
        }
    }

    fn anthropic_config(&self, http: HttpConfig) -> Result<AnthropicConfig, BackendError> {
        Ok(match &self.sim_url {
            Some(url) => AnthropicConfig {
                base_url: url.clone(),
                http,
                ..AnthropicConfig::new("sim")
            },
            None => AnthropicConfig {
                http,
                ..AnthropicConfig::from_env().map_err(api("anthropic"))?
            },
        })
    }

    fn openai_config(&self, http: HttpConfig) -> Result<OpenAiConfig, BackendError> {
        Ok(match &self.sim_url {
            Some(url) => OpenAiConfig {
                base_url: format!("{url}/v1"),
                http,
                ..OpenAiConfig::new("sim")
            },
            None => OpenAiConfig {
                http,
                ..OpenAiConfig::from_env().map_err(api("openai"))?
            },
        })
    }
}

fn api(provider: &'static str) -> impl Fn(ProviderError) -> BackendError {
    move |reason| BackendError::Api { provider, reason }
}

/// The fleet for `config`'s workflow over `provider`: the workflow's rate limits and retry
/// budget, the official SDKs' retry policy. The one place a run's model stack is composed.
pub fn fleet(config: &Config, provider: Arc<dyn Provider>) -> Fleet {
    fleet_under(&config.rate_limits, provider)
}

/// [`fleet`] from the workflow's `rate_limits` section alone.
pub fn fleet_under(limits: &RateLimits, provider: Arc<dyn Provider>) -> Fleet {
    Fleet::new(
        provider,
        Governor::new(limits_governor(limits)),
        RetryPolicy::default(),
        Arc::new(RetryBudget::new(limits_retry_budget(limits))),
    )
}

/// The governor limits a workflow file asks for.
pub fn governor_config(config: &Config) -> GovernorConfig {
    limits_governor(&config.rate_limits)
}

fn limits_governor(limits: &RateLimits) -> GovernorConfig {
    let mut governor = GovernorConfig {
        requests_per_minute: limits.requests_per_minute,
        input_tokens_per_minute: limits.input_tokens_per_minute,
        output_tokens_per_minute: limits.output_tokens_per_minute,
        tokens_per_minute: limits.tokens_per_minute,
        ..GovernorConfig::default()
    };
    if let Some(max) = limits.max_in_flight {
        governor.max_in_flight = usize::try_from(max).unwrap_or(usize::MAX).max(1);
    }
    governor
}

/// The retry budget a workflow file asks for (defaults for what it leaves out).
pub fn retry_budget_config(config: &Config) -> RetryBudgetConfig {
    limits_retry_budget(&config.rate_limits)
}

fn limits_retry_budget(limits: &RateLimits) -> RetryBudgetConfig {
    let settings = &limits.retry_budget;
    let default = RetryBudgetConfig::default();
    RetryBudgetConfig {
        initial: settings.initial.unwrap_or(default.initial),
        max: settings.max.unwrap_or(default.max),
        per_success: settings.per_success.unwrap_or(default.per_success),
        per_second: settings.per_second.unwrap_or(default.per_second),
    }
}

/// Transport settings with a whole-request timeout of `seconds` (`--request-timeout`); a
/// stream may go idle for at most that long too.
pub fn http_timeout(seconds: u64) -> HttpConfig {
    let timeout = Duration::from_secs(seconds.max(1));
    HttpConfig {
        request_timeout: timeout,
        stream_idle_timeout: timeout.min(HttpConfig::default().stream_idle_timeout),
        ..HttpConfig::default()
    }
}
