//! `fanout bench run`: a whole live run at scale, measured against its critical path.
//!
//! Generates a repository of `--files` files under git, a reviewed plan of `--agents` agents
//! (agent i owns file i), and a simulator scenario in which every agent takes `--turns` model
//! turns with tool calls (read its file, list its scope, write its file, then report). The
//! simulator runs as a child process, so this process's CPU time and peak RSS are the
//! engine's: scheduler, agents, tools, run store, checkpoints, scope check and synthesis. Like
//! `fanout run`, it then exports the run's traces when `OTEL_EXPORTER_OTLP_ENDPOINT` is set
//! (timed apart, and within the wall time and CPU reported).
//!
//! The bill: dollars as the run store counts them (cache writes and reads at their prices) and
//! the simulator's cache counters. `--no-cache` sets `workflow.prompt_caching: false`, so two
//! runs with and without it compare what caching saves at an unchanged makespan;
//! `--file-bytes` sizes the files agents read (caching pays once a conversation passes the
//! model's minimum cacheable length).
//!
//! The critical path is one agent's chain of turns plus the synthesis call:
//! `(turns + 1) × latency`. Under a requests/min limit the floor is the larger of that and the
//! rate floor `(requests − burst) / rate`.

use std::path::Path;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::Args;
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::fleet::Fleet;
use fanout_core::governor::{Governor, GovernorConfig};
use fanout_core::plan::{self, PlanOptions, PrepareRequest};
use fanout_core::provider::http::HttpConfig;
use fanout_core::retry::{RetryBudget, RetryBudgetConfig, RetryPolicy};
use fanout_core::run::engine::{self, EngineInputs};
use fanout_core::sandbox::SandboxConfig;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench::ChildSim;
use crate::usage;

#[derive(Args, Debug, Clone)]
pub struct BenchRunArgs {
    /// Number of agents (one file each).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Files in the generated repository (at least --agents).
    #[arg(long, default_value_t = 1000)]
    files: usize,
    /// Model turns per agent (at least 2: the last one reports).
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Simulator latency per model call, in milliseconds.
    #[arg(long, default_value_t = 500)]
    latency_ms: u64,
    /// Server requests-per-minute limit (the workflow declares it too).
    #[arg(long)]
    rpm: Option<u64>,
    /// max_parallel_agents of the workflow.
    #[arg(long, default_value_t = 1000)]
    max_parallel: usize,
    /// Checkpoint every this many completions.
    #[arg(long, default_value_t = 10)]
    checkpoint_interval: u32,
    /// Bytes of each generated file (what an agent's `read_file` brings into its
    /// conversation); 0 for the small default files.
    #[arg(long, default_value_t = 0)]
    file_bytes: usize,
    /// Turn prompt caching off (`workflow.prompt_caching: false`), to compare the bill.
    #[arg(long)]
    no_cache: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Record the run in this store instead of the generated repository's SQLite file (a
    /// `postgres://` URL measures the PostgreSQL backend).
    #[command(flatten)]
    store: crate::store_cmd::StoreArg,
    /// Keep the generated repository (and its run store) and print where it is.
    #[arg(long)]
    keep: bool,
    /// Have the simulator append every exchange (with its arrival time) to this JSONL file,
    /// to see where a run spends its time.
    #[arg(long, value_name = "FILE")]
    sim_record: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct RunBenchReport {
    agents: usize,
    files: usize,
    turns: usize,
    latency_ms: u64,
    rpm: Option<u64>,
    status: String,
    succeeded: usize,
    failed_or_rolled_back: usize,
    not_run: usize,
    makespan_s: f64,
    /// The traces' export after the run (`OTEL_EXPORTER_OTLP_ENDPOINT`; ~0 without it).
    export_s: f64,
    /// Run and export: what `fanout run` takes.
    wall_s: f64,
    critical_path_s: f64,
    rate_floor_s: Option<f64>,
    floor_s: f64,
    ratio_to_floor: f64,
    model_requests: u64,
    server_429s: u64,
    retries: u64,
    checkpoints: u64,
    files_changed: usize,
    out_of_scope: usize,
    cpu_s: f64,
    cores_used: f64,
    peak_rss_mib: f64,
    prompt_caching: bool,
    /// The agents' dollars, as the run store counts them.
    dollars: f64,
    input_tokens: u64,
    output_tokens: u64,
    /// The simulator's count of input tokens read from and written to its prompt cache.
    cache_read_tokens: u64,
    cache_creation_tokens: u64,
}

pub async fn run(args: BenchRunArgs) -> anyhow::Result<ExitCode> {
    if args.turns < 2 {
        bail!("--turns must be at least 2 (the last turn reports)");
    }
    if args.files < args.agents {
        bail!("--files must be at least --agents (each agent owns one file)");
    }
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let repo = work.path().join("repo");
    eprintln!(
        "bench run: generating {} files, a {}-agent plan and a {}-turn scenario",
        args.files, args.agents, args.turns
    );
    generate_repository(&repo, args.files, args.file_bytes)?;
    let workflow = work.path().join("workflow.yaml");
    std::fs::write(&workflow, workflow_yaml(&args)).context("cannot write the workflow")?;
    let plan_path = work.path().join("plan.json");
    std::fs::write(&plan_path, plan_json(args.agents, None)?).context("cannot write the plan")?;
    let scenario = work.path().join("scenario.yaml");
    std::fs::write(&scenario, scenario_yaml(args.turns, None))
        .context("cannot write the scenario")?;

    let mut sim_options = vec![
        "--latency-ms".to_string(),
        args.latency_ms.to_string(),
        "--scenario".to_string(),
        scenario.display().to_string(),
    ];
    if let Some(rpm) = args.rpm {
        sim_options.extend(["--rpm".to_string(), rpm.to_string()]);
    }
    if let Some(record) = &args.sim_record {
        sim_options.extend(["--record".to_string(), record.display().to_string()]);
    }
    let sim = ChildSim::start(&sim_options).await?;

    let config = Config::from_path(&workflow).context("the generated workflow is invalid")?;
    let provider = Backend::at(sim.base_url.clone(), HttpConfig::default())
        .provider(config.orchestrator_model().provider)?;
    let fleet = Fleet::new(
        provider,
        Governor::new(GovernorConfig {
            // This measures the engine, not the discovery of limits (which
            // scripts/bench_ratelimits.py measures): no probe before the first round.
            probe_unknown_limits: false,
            ..plan::governor_config(&config)
        }),
        RetryPolicy::default(),
        Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
    );
    let request = PrepareRequest {
        repository: repo.clone(),
        task: None,
        plan_file: Some(plan_path),
        options: PlanOptions::default(),
        dry_run: false,
        save: true,
        calibration: Default::default(),
    };
    let cancel = CancellationToken::new();
    let prepared = plan::prepare(&config, &request, None, &cancel)
        .await
        .context("the generated plan did not validate")?;
    if !prepared.report.is_clean() {
        bail!(
            "the generated plan has violations:\n{}",
            prepared.report.render(false)
        );
    }
    let run_id = prepared
        .report
        .saved
        .as_ref()
        .map(|saved| saved.run_id.clone())
        .unwrap_or_else(|| plan::RunId::new(SystemTime::now()));
    let traced_run = run_id.clone();
    let store = args.store.location(&repo)?;
    let inputs = EngineInputs {
        config: Arc::new(config),
        plan: prepared.validation.plan.clone(),
        estimated_dollars: prepared
            .report
            .estimate
            .agents
            .iter()
            .map(|a| a.dollars)
            .collect(),
        estimated_wall_time: Some(prepared.report.estimate.wall_time),
        plan_hash: None,
        config_path: Some(workflow.clone()),
        repo: repo.clone(),
        store: store.clone(),
        run_id,
        fleet: fleet.clone(),
        sandbox: SandboxConfig::default(),
        max_attempts: fanout_core::run::launch::AGENT_ATTEMPTS,
        lock: Arc::new(
            fanout_core::run::lock::RepoLock::acquire(&repo, "bench run")
                .context("the benchmark repository is in use")?,
        ),
        simulated: true,
        distribution: None,
    };
    eprintln!("bench run: running");
    let started = tokio::time::Instant::now();
    let outcome = engine::execute(inputs, &cancel, |_| {})
        .await
        .context("the run failed")?;
    let makespan = started.elapsed().as_secs_f64();
    // What `fanout run` does once a run ends: its traces, when the environment names a
    // collector (nothing otherwise), timed as part of the run's wall time.
    let exporting = tokio::time::Instant::now();
    crate::traces::export(&repo, &store, &traced_run).await;
    let export = exporting.elapsed().as_secs_f64();
    let resources = usage::current();
    let server = sim.stats().await.ok();
    let server_count = |key: &str| {
        server
            .as_ref()
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
    };

    let latency = args.latency_ms as f64 / 1000.0;
    let critical_path = (args.turns as f64 + 1.0) * latency;
    let requests = (args.agents * args.turns + 1) as f64;
    let rate_floor = args
        .rpm
        .map(|rpm| (requests - rpm as f64).max(0.0) / (rpm as f64 / 60.0));
    let floor = critical_path.max(rate_floor.unwrap_or(0.0));
    let stats = fleet.stats();
    let report = RunBenchReport {
        agents: args.agents,
        files: args.files,
        turns: args.turns,
        latency_ms: args.latency_ms,
        rpm: args.rpm,
        status: outcome.status.as_str().to_string(),
        succeeded: outcome.succeeded,
        failed_or_rolled_back: outcome.failed + outcome.rolled_back,
        not_run: outcome.not_run,
        makespan_s: makespan,
        export_s: export,
        wall_s: makespan + export,
        critical_path_s: critical_path,
        rate_floor_s: rate_floor,
        floor_s: floor,
        ratio_to_floor: makespan / floor.max(1e-9),
        model_requests: server_count("requests_total").unwrap_or(stats.attempts),
        server_429s: server_count("rate_limited").unwrap_or(stats.rate_limited),
        retries: stats.retries,
        checkpoints: outcome.checkpoints,
        files_changed: outcome.files_changed,
        out_of_scope: outcome.out_of_scope.len(),
        cpu_s: resources.cpu().as_secs_f64(),
        cores_used: resources.cpu().as_secs_f64() / (makespan + export).max(1e-9),
        peak_rss_mib: resources.peak_rss_kib as f64 / 1024.0,
        prompt_caching: !args.no_cache,
        dollars: outcome.dollars,
        input_tokens: outcome.input_tokens,
        output_tokens: outcome.output_tokens,
        cache_read_tokens: server_count("cache_read_tokens").unwrap_or(0),
        cache_creation_tokens: server_count("cache_creation_tokens").unwrap_or(0),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    if args.keep {
        let kept = work.keep();
        eprintln!("bench run: kept {}", kept.display());
    }
    Ok(if report.succeeded == args.agents {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(r: &RunBenchReport) {
    println!(
        "run benchmark: {} agents x {} turns over {} files, {} ms latency{}",
        r.agents,
        r.turns,
        r.files,
        r.latency_ms,
        r.rpm
            .map(|rpm| format!(", {rpm} requests/min"))
            .unwrap_or_default()
    );
    println!(
        "  status              {} ({} succeeded, {} failed, {} not run)",
        r.status, r.succeeded, r.failed_or_rolled_back, r.not_run
    );
    println!("  makespan            {:.2} s", r.makespan_s);
    println!(
        "  traces export       {:.3} s (run and export {:.2} s)",
        r.export_s, r.wall_s
    );
    println!("  critical path       {:.2} s", r.critical_path_s);
    if let Some(rate) = r.rate_floor_s {
        println!("  rate floor          {rate:.2} s");
    }
    println!("  ratio to floor      {:.3}", r.ratio_to_floor);
    println!(
        "  model requests      {} ({} answered 429, {} retries)",
        r.model_requests, r.server_429s, r.retries
    );
    println!(
        "  checkpoints         {}; files changed {}; outside scope {}",
        r.checkpoints, r.files_changed, r.out_of_scope
    );
    println!(
        "  engine CPU          {:.2} s ({:.2} cores)",
        r.cpu_s, r.cores_used
    );
    println!("  engine peak RSS     {:.1} MiB", r.peak_rss_mib);
    println!(
        "  bill                ${:.4} ({} input tokens, {} output; prompt caching {}: {} read from cache, {} written)",
        r.dollars,
        r.input_tokens,
        r.output_tokens,
        if r.prompt_caching { "on" } else { "off" },
        r.cache_read_tokens,
        r.cache_creation_tokens
    );
}

pub(crate) fn generate_repository(
    repo: &Path,
    files: usize,
    file_bytes: usize,
) -> anyhow::Result<()> {
    let src = repo.join("src");
    std::fs::create_dir_all(&src).context("cannot create the repository")?;
    for i in 0..files {
        let mut text = format!("module {i}\nvalue = {}\n", i * 7);
        let mut line = 0;
        while text.len() < file_bytes {
            text.push_str(&format!(
                "setting_{line:05} = value {line} of module {i}, kept for the agent to read\n"
            ));
            line += 1;
        }
        std::fs::write(src.join(format!("mod_{i:05}.txt")), text)
            .context("cannot write a repository file")?;
    }
    for args in [
        &["init", "-q", "-b", "main"][..],
        &["add", "-A"][..],
        &["commit", "-q", "-m", "generated"][..],
    ] {
        let status = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args([
                "-c",
                "user.name=fanout-bench",
                "-c",
                "user.email=bench@fanout.invalid",
            ])
            // No detached `git gc --auto` packing the fixture while the run is measured.
            .args(["-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0"])
            .args(args)
            .status()
            .context("cannot run git")?;
        if !status.success() {
            bail!("git {args:?} failed in the generated repository");
        }
    }
    Ok(())
}

fn workflow_yaml(args: &BenchRunArgs) -> String {
    let mut yaml = format!(
        "workflow:\n  name: bench-run\n  max_parallel_agents: {}\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n    shell_exec: deny\n  logging:\n    level: normal\n    destination: ./.fanout/logs/bench-{{timestamp}}.jsonl\n  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: {}\n  budgets:\n    agent:\n      max_turns: {}\n",
        args.max_parallel,
        args.checkpoint_interval,
        args.turns + 2
    );
    if args.no_cache {
        yaml.push_str("  prompt_caching: false\n");
    }
    if let Some(rpm) = args.rpm {
        yaml.push_str(&format!(
            "  rate_limits:\n    requests_per_minute: {rpm}\n    max_in_flight: {}\n",
            args.max_parallel.max(1)
        ));
    } else {
        yaml.push_str(&format!(
            "  rate_limits:\n    max_in_flight: {}\n",
            args.max_parallel.max(1)
        ));
    }
    yaml
}

/// Agent i owns file i. With `command`, each agent may also run that allowlisted command
/// (`bash`), as [`scenario_yaml`] with the same command has it do.
pub(crate) fn plan_json(agents: usize, command: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let subtasks: Vec<serde_json::Value> = (0..agents)
        .map(|i| {
            let mut subtask = serde_json::json!({
                "task_id": format!("agent-{i:05}"),
                "description": format!("Update the value in src/mod_{i:05}.txt"),
                "scope": [format!("src/mod_{i:05}.txt")],
                "tools": ["read_file", "list_files", "write_file"],
                "mode": if i % 3 == 0 { "default" } else { "fast" },
                "depends_on": []
            });
            if let Some(command) = command {
                subtask["tools"] =
                    serde_json::json!(["read_file", "list_files", "write_file", "bash"]);
                subtask["shell_commands"] = serde_json::json!([command]);
            }
            subtask
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({"workflow": "bench-run", "subtasks": subtasks}))
        .context("cannot serialise the plan")
}

/// Turn 1 reads the agent's file, middle turns list its scope, the turn before last writes
/// it, the last reports. With `command` (and at least 4 turns), turn 2 runs that command with
/// `bash` instead.
pub(crate) fn scenario_yaml(turns: usize, command: Option<&str>) -> String {
    const FILE: &str = r"'Files you may change \(nothing else\):\n- (?P<file>\S+)'";
    let mut yaml = String::from("rules:\n");
    for turn in 1..=turns {
        let action = if turn == turns {
            "    tool_use:\n      name: report_result\n      input: {status: success, summary: \"updated ${file}\", files_changed: [\"${file}\"]}\n".to_string()
        } else if turn == turns - 1 {
            "    tool_use: {name: write_file, input: {path: \"${file}\", content: \"updated by its agent\\n\"}}\n".to_string()
        } else if turn == 1 {
            "    tool_use: {name: read_file, input: {path: \"${file}\"}}\n".to_string()
        } else if let Some(command) = command.filter(|_| turn == 2) {
            format!("    tool_use: {{name: bash, input: {{command: \"{command}\"}}}}\n")
        } else {
            "    tool_use: {name: list_files, input: {pattern: \"${file}\"}}\n".to_string()
        };
        yaml.push_str(&format!(
            "  - match:\n      system: {FILE}\n      turn: {turn}\n{action}"
        ));
    }
    yaml
}
