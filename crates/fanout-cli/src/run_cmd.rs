//! `fanout run FILE [--dry-run]` and `fanout plan FILE`: one code path.
//!
//! Load the workflow file, build the provider (the in-process simulator with `--sim`, else the
//! environment's API), let `fanout_core::plan::prepare` scan, plan, validate, estimate and save,
//! then print the report (text, or `--json`). `fanout plan` is `fanout run --dry-run`.
//! Without `--dry-run`, a clean plan is followed by the live-run precondition (a clean git
//! work tree where the plan touches) and the live run (`crate::live`).
//!
//! Exit codes: 0 clean plan; 1 permission violations; 2 invalid workflow file or arguments;
//! 3 planning failed (no usable plan, provider error, unreadable plan file); 4 the repository
//! is not ready for a live run; live runs add 5 partial, 6 failed, 130 cancelled.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fanout_core::config::{Config, Provider as ProviderKind};
use fanout_core::fleet::Fleet;
use fanout_core::governor::Governor;
use fanout_core::plan::{self, PlanOptions, PrepareRequest, ScopePaths};
use fanout_core::provider::Provider;
use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::http::HttpConfig;
use fanout_core::provider::openai::{OpenAiConfig, OpenAiProvider};
use fanout_core::retry::{RetryBudget, RetryPolicy};
use fanout_sim::{Faults, Scenario, Sim, SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

pub const EXIT_VIOLATIONS: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_PLANNING: u8 = 3;
pub const EXIT_NOT_READY: u8 = 4;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The workflow file.
    pub file: PathBuf,
    /// Plan, validate and report; change nothing and start no agent.
    #[arg(long)]
    pub dry_run: bool,
    /// Plan against an in-process simulator instead of the real API (no key needed).
    #[arg(long)]
    pub sim: bool,
    /// Scenario script for the simulator (implies --sim).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// The root task (overrides `workflow.task`).
    #[arg(long, value_name = "TEXT")]
    pub task: Option<String>,
    /// Use this reviewed plan (`.fanout/runs/<run_id>/plan.json`) instead of asking the
    /// orchestrator; it is validated again.
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Repository root (overrides `workflow.repository`).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Times an invalid plan goes back to the orchestrator.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub max_repairs: u32,
    /// One row per agent.
    #[arg(long, short)]
    pub verbose: bool,
    /// The report as JSON on stdout (and, in a live run, progress events as JSON lines).
    #[arg(long)]
    pub json: bool,
    /// Latency of the in-process simulator's answers, in milliseconds (with --sim).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub sim_latency_ms: u64,
    /// Faults the in-process simulator injects (with --sim), as `kind=probability` pairs:
    /// overloaded, api_error, hang, truncate, cut_stream, malformed (e.g.
    /// `overloaded=0.05,api_error=0.02,hang=0.01`).
    #[arg(long, value_name = "SPEC", value_parser = parse_faults)]
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
    /// Re-run only the agents of a finished run that failed, were rolled back or did not run
    /// (its saved plan; FILE gives the configuration).
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["plan", "dry_run", "task"])]
    pub retry_failed: Option<String>,
}

/// `fanout plan`: the dry run.
pub async fn run_plan(mut args: RunArgs) -> anyhow::Result<ExitCode> {
    args.dry_run = true;
    run(args).await
}

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Some(run_id) = &args.retry_failed {
        return crate::resume_cmd::retry_failed(&args, run_id).await;
    }
    let config = match Config::from_path(&args.file) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    if config.items.is_some() {
        return crate::items_cmd::run(args, config).await;
    }

    // The simulator lives as long as this function: planning and, in a live run, the agents
    // talk to it. It is shut down before returning.
    let mut sim: Option<SimHandle> = None;
    let needs_model = args.plan.is_none() || !args.dry_run;
    let fleet = if !needs_model {
        None
    } else if args.sim || args.scenario.is_some() {
        let scenario = match &args.scenario {
            Some(path) => Some(Scenario::from_file(path).context("cannot load the scenario")?),
            None => None,
        };
        let handle = Sim::start(
            SimConfig {
                scenario,
                latency: std::time::Duration::from_millis(args.sim_latency_ms),
                faults: args.sim_faults.unwrap_or_default(),
                seed: args.sim_seed,
                record_path: args.sim_record.clone(),
                ..SimConfig::default()
            },
            "127.0.0.1:0".parse().context("loopback address")?,
        )
        .await
        .context("cannot start the simulator")?;
        let provider = provider_with(&config, Some(&handle.base_url()), http_config(&args))?;
        sim = Some(handle);
        Some(fleet_for(&config, provider))
    } else {
        Some(fleet_for(
            &config,
            provider_with(&config, None, http_config(&args))?,
        ))
    };
    let code = run_with(&args, config, fleet).await;
    if let Some(handle) = sim.take() {
        handle.shutdown().await;
    }
    code
}

async fn run_with(
    args: &RunArgs,
    config: Config,
    fleet: Option<Fleet>,
) -> anyhow::Result<ExitCode> {
    let repository = args
        .repo
        .clone()
        .unwrap_or_else(|| config.repository.clone());
    let request = PrepareRequest {
        repository: repository.clone(),
        task: args.task.clone(),
        plan_file: args.plan.clone(),
        options: PlanOptions {
            max_repairs: args.max_repairs,
            ..PlanOptions::default()
        },
        dry_run: args.dry_run,
        save: true,
    };
    let cancel = CancellationToken::new();
    let planning_fleet = if args.plan.is_none() {
        fleet.as_ref()
    } else {
        None
    };
    let prepared = plan::prepare(&config, &request, planning_fleet, &cancel).await;
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(ExitCode::from(EXIT_PLANNING));
        }
    };

    let report = &prepared.report;
    let rendered = if args.json {
        let mut text = serde_json::to_string_pretty(report).context("cannot render the report")?;
        text.push('\n');
        text
    } else {
        report.render(args.verbose)
    };
    write_stdout(&rendered)?;
    if !report.is_clean() {
        return Ok(ExitCode::from(EXIT_VIOLATIONS));
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    let scope = ScopePaths::new(&prepared.validation, &prepared.scan);
    if let Err(err) = plan::ensure_clean(&repository, |path| scope.contains(path)) {
        eprintln!("error: refusing a live run: {err}");
        return Ok(ExitCode::from(EXIT_NOT_READY));
    }
    let Some(fleet) = fleet else {
        anyhow::bail!("a live run needs a model API (use --sim or set an API key)");
    };
    crate::live::execute(args, config, prepared, fleet, repository).await
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// The orchestrator's provider: at `base_url` (the simulator) or from the environment.
pub(crate) fn provider_for(
    config: &Config,
    base_url: Option<&str>,
) -> anyhow::Result<Arc<dyn Provider>> {
    provider_with(config, base_url, HttpConfig::default())
}

/// [`provider_for`] with explicit transport settings.
pub(crate) fn provider_with(
    config: &Config,
    base_url: Option<&str>,
    http: HttpConfig,
) -> anyhow::Result<Arc<dyn Provider>> {
    provider_of(config.orchestrator_model().provider, base_url, http)
}

/// A provider of `kind`: at `base_url` (the simulator, any key) or from the environment.
pub(crate) fn provider_of(
    kind: ProviderKind,
    base_url: Option<&str>,
    http: HttpConfig,
) -> anyhow::Result<Arc<dyn Provider>> {
    let provider: Arc<dyn Provider> = match (kind, base_url) {
        (ProviderKind::Anthropic, Some(base_url)) => {
            Arc::new(AnthropicProvider::new(AnthropicConfig {
                base_url: base_url.to_owned(),
                http,
                ..AnthropicConfig::new("sim")
            })?)
        }
        (ProviderKind::OpenAi, Some(base_url)) => Arc::new(OpenAiProvider::new(OpenAiConfig {
            base_url: format!("{base_url}/v1"),
            http,
            ..OpenAiConfig::new("sim")
        })?),
        (ProviderKind::Anthropic, None) => Arc::new(AnthropicProvider::new(AnthropicConfig {
            http,
            ..AnthropicConfig::from_env()
                .context("cannot reach the Anthropic API (or use --sim)")?
        })?),
        (ProviderKind::OpenAi, None) => Arc::new(OpenAiProvider::new(OpenAiConfig {
            http,
            ..OpenAiConfig::from_env().context("cannot reach the OpenAI API (or use --sim)")?
        })?),
    };
    Ok(provider)
}

pub(crate) fn http_config(args: &RunArgs) -> HttpConfig {
    let timeout = std::time::Duration::from_secs(args.request_timeout.max(1));
    HttpConfig {
        request_timeout: timeout,
        stream_idle_timeout: timeout.min(HttpConfig::default().stream_idle_timeout),
        ..HttpConfig::default()
    }
}

/// `overloaded=0.05,api_error=0.02,hang=0.01` → the simulator's fault probabilities.
fn parse_faults(spec: &str) -> Result<Faults, String> {
    let mut faults = Faults::default();
    for pair in spec.split(',').filter(|p| !p.trim().is_empty()) {
        let (kind, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not kind=probability"))?;
        let p: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("`{value}` is not a probability"))?;
        let slot = match kind.trim() {
            "overloaded" => &mut faults.overloaded,
            "api_error" => &mut faults.api_error,
            "hang" => &mut faults.hang,
            "truncate" => &mut faults.truncate_body,
            "cut_stream" => &mut faults.cut_stream,
            "malformed" => &mut faults.malformed_json,
            other => {
                return Err(format!(
                    "unknown fault `{other}` (overloaded, api_error, hang, truncate, cut_stream, malformed)"
                ));
            }
        };
        *slot = p;
    }
    faults.validate()?;
    Ok(faults)
}

pub(crate) fn fleet_for(config: &Config, provider: Arc<dyn Provider>) -> Fleet {
    Fleet::new(
        provider,
        Governor::new(plan::governor_config(config)),
        RetryPolicy::default(),
        Arc::new(RetryBudget::new(plan::retry_budget_config(config))),
    )
}
