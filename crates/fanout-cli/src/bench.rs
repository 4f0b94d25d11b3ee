//! `fanout bench`: measured figures for BENCHMARKS.md.
//!
//! `bench fleet` drives N concurrent model requests through the fleet (rate governor, retry
//! policy, retry budget) against a simulator started as a child process, so this process's
//! CPU time and peak RSS are the engine's alone. It reports the makespan against the physical
//! floor `max(latency chain, (C_d - burst_d) / rate_d for each limited dimension d)`, the 429s
//! the server answered, retries, failures, peak RSS and CPU time.
//!
//! `bench sim` measures the simulator's own throughput (see `bench_sim`); `bench distributed`
//! runs whole `fanout` processes, coordinator and workers (see `bench_distributed`).

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use fanout_core::fleet::{Fleet, FleetError};
use fanout_core::governor::{Governor, GovernorConfig};
use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::openai::{OpenAiConfig, OpenAiProvider};
use fanout_core::provider::{Message, Provider, Request};
use fanout_core::retry::{RetryBudget, RetryBudgetConfig, RetryPolicy};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::bench_sim;
use crate::usage;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// N concurrent requests through the rate governor against a simulator; makespan vs floor.
    Fleet(FleetArgs),
    /// The simulator's own throughput (small requests, zero latency).
    Sim(bench_sim::BenchSimArgs),
    /// Plan and validate a scripted 1,000-agent plan over a generated 10,000-file repository.
    Plan(crate::bench_plan::BenchPlanArgs),
    /// A whole live run (default: 1,000 agents x 4 turns over 1,000 files at 500 ms latency)
    /// against its critical path.
    Run(crate::bench_run::BenchRunArgs),
    /// Start-up cost of one sandboxed command (snapshot, cgroup, namespace, Landlock, spawn).
    Sandbox(crate::bench_sandbox::BenchSandboxArgs),
    /// Item work: 10,000 items in chunks of 10 with 1,000 workers in flight; makespan vs floor.
    Items(crate::bench_items::BenchItemsArgs),
    /// `bench run`'s workload through a coordinator and `fanout worker` processes sharing a
    /// run store, against one `fanout run` process; or a command-heavy workload over 1, 2, 3
    /// workers held to a CPU each by cgroups.
    Distributed(crate::bench_distributed::BenchDistributedArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Wire {
    Anthropic,
    Openai,
}

#[derive(Args, Debug, Clone)]
pub struct FleetArgs {
    /// Start an embedded simulator (`fanout sim`) as a child process and run against it.
    /// This is the default; it is spelled out so commands read the same as `fanout run --sim`.
    #[arg(long, default_value_t = true)]
    sim: bool,
    /// Run against this server instead of an embedded simulator (e.g. one started with
    /// `fanout sim`); limits must then be given with --rpm/--itpm/--otpm or learned.
    #[arg(long)]
    base_url: Option<String>,
    /// Which wire format to speak.
    #[arg(long, value_enum, default_value_t = Wire::Anthropic)]
    wire: Wire,
    /// Number of requests, all submitted at once.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Simulator base latency per request, in milliseconds.
    #[arg(long, default_value_t = 500)]
    latency_ms: u64,
    /// Server requests-per-minute limit (the simulator enforces it; the governor is told).
    #[arg(long)]
    rpm: Option<u64>,
    /// Server input-tokens-per-minute limit.
    #[arg(long)]
    itpm: Option<u64>,
    /// Server output-tokens-per-minute limit.
    #[arg(long)]
    otpm: Option<u64>,
    /// Do not tell the governor the limits: it must learn them from response headers.
    #[arg(long)]
    learn_limits: bool,
    /// Probability of a 529 overloaded answer, per request.
    #[arg(long, default_value_t = 0.0)]
    p_overloaded: f64,
    /// Probability of a 500 api_error answer, per request.
    #[arg(long, default_value_t = 0.0)]
    p_api_error: f64,
    /// Seed for the simulator's faults and jitter.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Size of each request's prompt, in bytes.
    #[arg(long, default_value_t = 1000)]
    prompt_bytes: usize,
    /// max_tokens of each request.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    /// Most requests in flight at once.
    #[arg(long, default_value_t = 1000)]
    max_in_flight: usize,
    /// Read answers as server-sent events.
    #[arg(long)]
    stream: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        BenchCommand::Fleet(args) => fleet(args).await,
        BenchCommand::Sim(args) => bench_sim::run(args).await,
        BenchCommand::Plan(args) => crate::bench_plan::run(args).await,
        BenchCommand::Run(args) => crate::bench_run::run(args).await,
        BenchCommand::Sandbox(args) => crate::bench_sandbox::run(args).await,
        BenchCommand::Items(args) => crate::bench_items::run(args).await,
        BenchCommand::Distributed(args) => crate::bench_distributed::run(args).await,
    }
}

/// A simulator running as a child process; killed when dropped.
pub struct ChildSim {
    child: tokio::process::Child,
    pub base_url: String,
}

impl ChildSim {
    /// Start `fanout sim` with `extra` options on an ephemeral port and read its address.
    pub async fn start(extra: &[String]) -> anyhow::Result<ChildSim> {
        let exe = std::env::current_exe().context("cannot find the fanout executable")?;
        let mut child = tokio::process::Command::new(exe)
            .arg("sim")
            .args(["--port", "0"])
            // Benchmarks read `/sim/stats` (and a record file when asked), never the in-memory
            // exchange log: keeping 40,000 conversations would only cost the simulator memory.
            .args(["--keep-exchanges", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the simulator")?;
        let stdout = child.stdout.take().context("the simulator has no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .context("the simulator did not start within 30 s")?
            .context("cannot read the simulator's address")?
            .context("the simulator exited before printing its address")?;
        let base_url = first
            .rsplit(' ')
            .next()
            .filter(|url| url.starts_with("http://"))
            .with_context(|| format!("unexpected first line from the simulator: {first:?}"))?
            .to_string();
        Ok(ChildSim { child, base_url })
    }

    /// The simulator's process id, to read its CPU time from `/proc`.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The simulator's `/sim/stats` as JSON.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/sim/stats", self.base_url);
        let response = reqwest::get(&url)
            .await
            .context("cannot read simulator stats")?;
        response
            .json()
            .await
            .context("simulator stats are not JSON")
    }
}

impl Drop for ChildSim {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[derive(Debug, Serialize)]
struct FleetReport {
    wire: Wire,
    requests: usize,
    succeeded: u64,
    failed: u64,
    makespan_s: f64,
    floor_s: f64,
    floor_binding: &'static str,
    ratio_to_floor: f64,
    latency_chain_s: f64,
    requests_floor_s: Option<f64>,
    input_tokens_floor_s: Option<f64>,
    output_tokens_floor_s: Option<f64>,
    server_429s: u64,
    server_requests: u64,
    retries: u64,
    max_attempts_per_request: u32,
    policy_max_attempts: u32,
    input_tokens: u64,
    output_tokens: u64,
    governor_wait_total_s: f64,
    cpu_s: f64,
    cores_used: f64,
    peak_rss_mib: f64,
}

async fn fleet(args: FleetArgs) -> anyhow::Result<ExitCode> {
    if args.requests == 0 {
        bail!("--requests must be at least 1");
    }
    let mut sim_options = vec![
        "--latency-ms".to_string(),
        args.latency_ms.to_string(),
        "--seed".to_string(),
        args.seed.to_string(),
        "--p-overloaded".to_string(),
        args.p_overloaded.to_string(),
        "--p-api-error".to_string(),
        args.p_api_error.to_string(),
    ];
    for (flag, value) in [
        ("--rpm", args.rpm),
        ("--itpm", args.itpm),
        ("--otpm", args.otpm),
    ] {
        if let Some(value) = value {
            sim_options.push(flag.to_string());
            sim_options.push(value.to_string());
        }
    }
    let child = match &args.base_url {
        Some(_) => None,
        None => Some(ChildSim::start(&sim_options).await?),
    };
    let base_url = match (&args.base_url, &child) {
        (Some(url), _) => url.clone(),
        (None, Some(child)) => child.base_url.clone(),
        (None, None) => bail!("no server to run against"),
    };

    let provider: Arc<dyn Provider> = match args.wire {
        Wire::Anthropic => Arc::new(AnthropicProvider::new(AnthropicConfig {
            base_url: base_url.clone(),
            ..AnthropicConfig::new("sim-key")
        })?),
        Wire::Openai => Arc::new(OpenAiProvider::new(OpenAiConfig {
            base_url: format!("{base_url}/v1"),
            ..OpenAiConfig::new("sim-key")
        })?),
    };
    let told = |limit: Option<u64>| if args.learn_limits { None } else { limit };
    let governor = Governor::new(GovernorConfig {
        requests_per_minute: told(args.rpm),
        input_tokens_per_minute: told(args.itpm),
        output_tokens_per_minute: told(args.otpm),
        max_in_flight: args.max_in_flight.max(1),
        // Limits not told are probed for only when learning them is what is measured.
        probe_unknown_limits: args.learn_limits,
        ..GovernorConfig::default()
    });
    let policy = RetryPolicy::default();
    let policy_max_attempts = policy.max_attempts;
    let fleet = Fleet::new(
        provider,
        governor,
        policy,
        Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
    )
    .streaming(args.stream);

    let cancel = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..args.requests {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        let request = bench_request(index, args.prompt_bytes, args.max_tokens);
        tasks.spawn(async move { fleet.call(&request, &cancel).await });
    }
    let mut max_attempts = 0u32;
    let mut first_error: Option<FleetError> = None;
    while let Some(joined) = tasks.join_next().await {
        match joined.context("a request task crashed")? {
            Ok(outcome) => max_attempts = max_attempts.max(outcome.attempts),
            Err(error) => {
                if let FleetError::Failed { attempts, .. } = &error {
                    max_attempts = max_attempts.max(*attempts);
                }
                first_error.get_or_insert(error);
            }
        }
    }
    let makespan = started.elapsed().as_secs_f64();
    let resources = usage::current();
    let stats = fleet.stats();
    let server = match &child {
        Some(child) => child.stats().await.ok(),
        None => None,
    };
    let server_count = |key: &str| {
        server
            .as_ref()
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
    };

    let n = args.requests as f64;
    let per_request_out = stats.output_tokens as f64 / (stats.succeeded.max(1) as f64);
    let latency_chain = args.latency_ms as f64 / 1000.0;
    // Over any window T a bucket of capacity b and rate r admits at most b + r·T.
    let rate_floor = |total: f64, limit: Option<u64>| {
        limit.map(|l| ((total - l as f64).max(0.0)) / (l as f64 / 60.0))
    };
    let requests_floor = rate_floor(n, args.rpm);
    // The server's own count of input tokens is the truth the limit is enforced on.
    let input_total = server_count("input_tokens").unwrap_or(stats.input_tokens) as f64;
    let input_floor = rate_floor(input_total, args.itpm);
    let output_floor = rate_floor(per_request_out * n, args.otpm);
    let mut floor = latency_chain;
    let mut binding = "latency";
    for (name, value) in [
        ("requests/min", requests_floor),
        ("input tokens/min", input_floor),
        ("output tokens/min", output_floor),
    ] {
        if let Some(value) = value
            && value > floor
        {
            floor = value;
            binding = name;
        }
    }
    let report = FleetReport {
        wire: args.wire,
        requests: args.requests,
        succeeded: stats.succeeded,
        failed: stats.failed,
        makespan_s: makespan,
        floor_s: floor,
        floor_binding: binding,
        ratio_to_floor: makespan / floor.max(1e-9),
        latency_chain_s: latency_chain,
        requests_floor_s: requests_floor,
        input_tokens_floor_s: input_floor,
        output_tokens_floor_s: output_floor,
        server_429s: server_count("rate_limited").unwrap_or(stats.rate_limited),
        server_requests: server_count("requests_total").unwrap_or(stats.attempts),
        retries: stats.retries,
        max_attempts_per_request: max_attempts,
        policy_max_attempts,
        input_tokens: stats.input_tokens,
        output_tokens: stats.output_tokens,
        governor_wait_total_s: stats.governor_wait_ms as f64 / 1000.0,
        cpu_s: resources.cpu().as_secs_f64(),
        cores_used: resources.cpu().as_secs_f64() / makespan.max(1e-9),
        peak_rss_mib: resources.peak_rss_kib as f64 / 1024.0,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_fleet_report(&report);
    }
    if let Some(error) = first_error {
        eprintln!("first failure: {error}");
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_fleet_report(r: &FleetReport) {
    let optional = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
    println!("fleet benchmark ({:?} wire)", r.wire);
    println!(
        "  requests            {} ({} succeeded, {} failed)",
        r.requests, r.succeeded, r.failed
    );
    println!("  makespan            {:.2} s", r.makespan_s);
    println!(
        "  floor               {:.2} s (binding: {})",
        r.floor_s, r.floor_binding
    );
    println!("  ratio to floor      {:.3}", r.ratio_to_floor);
    println!("    latency chain     {:.2} s", r.latency_chain_s);
    println!("    requests/min      {}", optional(r.requests_floor_s));
    println!("    input tokens/min  {}", optional(r.input_tokens_floor_s));
    println!(
        "    output tokens/min {}",
        optional(r.output_tokens_floor_s)
    );
    let share = 100.0 * r.server_429s as f64 / r.requests as f64;
    println!(
        "  429s from server    {} ({share:.2} % of requests; {} requests seen)",
        r.server_429s, r.server_requests
    );
    println!(
        "  retries             {} (most attempts for one request: {} of {} allowed)",
        r.retries, r.max_attempts_per_request, r.policy_max_attempts
    );
    println!(
        "  tokens              {} in, {} out",
        r.input_tokens, r.output_tokens
    );
    println!(
        "  governor queueing   {:.1} s in total",
        r.governor_wait_total_s
    );
    println!(
        "  engine CPU          {:.2} s ({:.3} cores)",
        r.cpu_s, r.cores_used
    );
    println!("  engine peak RSS     {:.1} MiB", r.peak_rss_mib);
}

/// A deterministic request of about `prompt_bytes` bytes.
fn bench_request(index: usize, prompt_bytes: usize, max_tokens: u32) -> Request {
    let mut request = Request::new("claude-sonnet-4-5", max_tokens);
    request.system = Some("You are one worker of a benchmark fleet. Answer briefly.".into());
    let mut prompt = format!("Request {index}. Summarise the following notes. ");
    let filler = "The quick brown fox jumps over the lazy dog. ";
    while prompt.len() < prompt_bytes {
        prompt.push_str(filler);
    }
    prompt.truncate(prompt_bytes.max(16));
    request.messages.push(Message::user(prompt));
    request
}
