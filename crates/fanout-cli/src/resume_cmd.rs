//! `fanout resume RUN_ID` and `fanout run FILE --retry-failed RUN_ID`: finish a recorded run.
//!
//! Both load the run's saved plan (`.fanout/runs/<run_id>/plan.json`, checked against the
//! hash the run was started with), rebuild the model API (the simulator with `--sim`), and
//! hand the run to the engine's resume (`fanout_core::run::engine::resume`): agents that
//! succeeded are never run again, every other agent is rolled back from its durable pre-image
//! and run again as a new attempt. They differ in what they accept:
//! - `resume` finishes a run that was killed (status still `running`), cancelled, or ended
//!   partial; the configuration is the file the run was started with unless `--file` says;
//! - `--retry-failed` is for a run that ended (partial, failed or cancelled) and takes the
//!   workflow file from the command line; a run still marked `running` needs `resume`.
//!
//! An item run (one with `.fanout/runs/<run_id>/job.json`) has no plan: `resume` hands it to
//! `crate::items_cmd::resume`, which continues it from its settlement journal;
//! `--retry-failed` starts a new item run that sends again what a retry can fix
//! (`crate::items_cmd::retry_failed`).
//!
//! Both take the repository's live-run lock. With `--dry-run` (or as `fanout plan …
//! --retry-failed`) they only report which agents would run again.
//!
//! Exit codes (`crate::exit`): as for `fanout run`; 2 unknown run or unreadable
//! configuration, 3 the saved plan is missing or was edited, 4 another process holds the
//! repository, (`--retry-failed`) the run did not end, or it was rolled back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fanout_core::config::Config;
use fanout_core::fleet::Fleet;
use fanout_core::plan::{self, PlanOptions, RepoScan};
use fanout_core::run::engine::EngineInputs;
use fanout_core::run::lock::RepoLock;
use fanout_core::sandbox::SandboxConfig;
use fanout_core::store::{AgentStatus, RunStatus, StoreReader};
use fanout_sim::{Scenario, Sim, SimConfig, SimHandle};

use crate::exit::Exit;
use crate::live::{Launch, drive};
use crate::run_cmd::{RunArgs, fleet_for, http_timeout, provider_with};

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// The run to finish (see `fanout runs`).
    pub run_id: String,
    /// The workflow file (default: the one the run was started with).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Repository root (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Use an in-process simulator instead of the real API (no key needed).
    #[arg(long)]
    pub sim: bool,
    /// Scenario script for the simulator (implies --sim).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// Latency of the in-process simulator's answers, in milliseconds (with --sim).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub sim_latency_ms: u64,
    /// Faults the in-process simulator injects (with --sim), as for `fanout run`.
    #[arg(long, value_name = "SPEC", value_parser = crate::run_cmd::parse_faults)]
    pub sim_faults: Option<fanout_sim::Faults>,
    /// Seed of the in-process simulator's faults and jitter (with --sim).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub sim_seed: u64,
    /// Append every request the in-process simulator answered to FILE as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub sim_record: Option<PathBuf>,
    /// Progress events as JSON lines on stdout, then the outcome.
    #[arg(long)]
    pub json: bool,
    /// Give up on one model request after this many seconds (it is then retried like any
    /// transient failure).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub request_timeout: u64,
    /// Report which agents would run again, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `fanout resume RUN_ID`.
pub async fn run(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    finish(args, false).await
}

/// `fanout run FILE --retry-failed RUN_ID`.
pub async fn retry_failed(args: &RunArgs, run_id: &str) -> anyhow::Result<ExitCode> {
    // An item run is retried by a new run with this command line's options as they are.
    let repo = args.repo.clone().unwrap_or_else(|| PathBuf::from("."));
    if fanout_core::items::run::item_run(&repo, run_id).is_some() {
        let status = StoreReader::open_in_repo(&repo)
            .ok()
            .and_then(|reader| reader.run_summary(run_id).ok().flatten())
            .map(|summary| summary.run.status);
        if matches!(status, Some(RunStatus::Running | RunStatus::Planned)) {
            eprintln!(
                "error: run {run_id} did not end (it was interrupted or is still running); \
                 finish it with `fanout resume {run_id}`"
            );
            return Ok(Exit::NotReady.into());
        }
        let config = match Config::from_path(&args.file) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("error: {err}");
                return Ok(Exit::Config.into());
            }
        };
        return crate::items_cmd::retry_failed(args.clone(), config, repo, run_id.to_owned()).await;
    }
    let resume = ResumeArgs {
        run_id: run_id.to_owned(),
        file: Some(args.file.clone()),
        repo: args.repo.clone(),
        sim: args.sim,
        scenario: args.scenario.clone(),
        sim_latency_ms: args.sim_latency_ms,
        sim_faults: args.sim_faults,
        sim_seed: args.sim_seed,
        sim_record: args.sim_record.clone(),
        json: args.json,
        request_timeout: args.request_timeout,
        dry_run: args.dry_run,
    };
    finish(resume, true).await
}

async fn finish(args: ResumeArgs, retry_failed: bool) -> anyhow::Result<ExitCode> {
    let repo = args.repo.clone().unwrap_or_else(|| PathBuf::from("."));
    let repo = match repo.canonicalize() {
        Ok(repo) => repo,
        Err(err) => {
            eprintln!(
                "error: cannot open the repository {}: {err}",
                repo.display()
            );
            return Ok(Exit::Config.into());
        }
    };
    let run = match StoreReader::open_in_repo(&repo).and_then(|r| r.run_summary(&args.run_id)) {
        Ok(Some(run)) => run.run,
        Ok(None) => {
            eprintln!("error: no run {} in {}", args.run_id, repo.display());
            return Ok(Exit::Config.into());
        }
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Config.into());
        }
    };
    match run.status {
        RunStatus::Completed => {
            eprintln!(
                "fanout: run {} already completed; nothing to do",
                args.run_id
            );
            return Ok(ExitCode::SUCCESS);
        }
        RunStatus::RolledBack => {
            eprintln!(
                "error: run {} was undone by `fanout rollback`; its successes are no longer in \
                 the tree, so it cannot be finished (start a new run)",
                args.run_id
            );
            return Ok(Exit::NotReady.into());
        }
        RunStatus::Running | RunStatus::Planned if retry_failed => {
            let followup = crate::live::Followup::new(&repo, args.sim || args.scenario.is_some());
            eprintln!(
                "error: run {} did not end (it was interrupted or is still running); finish it \
                 with `fanout resume {}{}{}`",
                args.run_id, args.run_id, followup.repo, followup.sim
            );
            return Ok(Exit::NotReady.into());
        }
        _ => {}
    }
    if let Some(record) = fanout_core::items::run::item_run(&repo, &args.run_id) {
        return resume_items(&args, repo, record.workflow).await;
    }

    let config_path = match args
        .file
        .clone()
        .map(|file| crate::live::absolute(&file))
        .or_else(|| {
            run.config_path
                .as_deref()
                .map(|recorded| recorded_path(recorded, &repo))
        }) {
        Some(path) => path,
        None => {
            eprintln!(
                "error: run {} has no workflow file on record; pass --file",
                args.run_id
            );
            return Ok(Exit::Config.into());
        }
    };
    let config = match Config::from_path(&config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Config.into());
        }
    };

    let plan_path = fanout_core::layout::plan_file(&repo, &args.run_id);
    let loaded = match plan::load_plan(&plan_path) {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("error: cannot load the run's plan: {err}");
            return Ok(Exit::Planning.into());
        }
    };
    if let Some(recorded) = &run.plan_hash
        && *recorded != loaded.hash
    {
        eprintln!(
            "error: {} changed since run {} started (hash {} , recorded {recorded}); refusing \
             to finish the run with a different plan",
            plan_path.display(),
            args.run_id,
            loaded.hash
        );
        return Ok(Exit::Planning.into());
    }
    let (estimated_dollars, estimated_wall) = match estimates(&config, &loaded.plan, &repo) {
        Ok(estimates) => estimates,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Planning.into());
        }
    };

    if args.dry_run {
        return report_rerun(&repo, &args.run_id, &loaded.plan, args.json);
    }
    let lock = match RepoLock::acquire(&repo, &format!("resuming run {}", args.run_id)) {
        Ok(lock) => Arc::new(lock),
        Err(err) => {
            eprintln!("error: refusing to resume: {err}");
            return Ok(Exit::NotReady.into());
        }
    };
    let (fleet, sim) = fleet(&args, &config).await?;
    let inputs = EngineInputs {
        config: Arc::new(config),
        plan: loaded.plan,
        estimated_dollars,
        plan_hash: Some(loaded.hash),
        config_path: Some(config_path),
        repo,
        run_id: args.run_id.clone(),
        fleet,
        sandbox: SandboxConfig::default(),
        max_attempts: 3,
        lock,
        simulated: args.sim || args.scenario.is_some(),
    };
    let code = drive(inputs, args.json, estimated_wall, Launch::Resume).await;
    if let Some(handle) = sim {
        handle.shutdown().await;
    }
    code
}

/// `fanout resume RUN_ID` for an item run: the workflow it was started with (or `--file`).
async fn resume_items(
    args: &ResumeArgs,
    repo: PathBuf,
    workflow: PathBuf,
) -> anyhow::Result<ExitCode> {
    let file = args.file.clone().unwrap_or(workflow);
    let config = match Config::from_path(&file) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Config.into());
        }
    };
    let run_args = RunArgs {
        file,
        dry_run: args.dry_run,
        sim: args.sim,
        scenario: args.scenario.clone(),
        task: None,
        plan: None,
        repo: Some(repo.clone()),
        max_repairs: 0,
        verbose: false,
        json: args.json,
        sim_latency_ms: args.sim_latency_ms,
        sim_faults: args.sim_faults,
        sim_seed: args.sim_seed,
        sim_record: args.sim_record.clone(),
        request_timeout: args.request_timeout,
        retry_failed: None,
        allow_dirty: false,
    };
    crate::items_cmd::resume(run_args, config, repo, args.run_id.clone()).await
}

/// Per-agent dollar estimates (reserved against the budget) and the wall-time floor, from the
/// plan over the tree as it is now.
fn estimates(
    config: &Config,
    plan: &plan::Plan,
    repo: &Path,
) -> anyhow::Result<(Vec<f64>, std::time::Duration)> {
    let scan = RepoScan::scan(repo).context("cannot scan the repository")?;
    let validation = plan::validate(plan.clone(), config, &scan, &PlanOptions::default().limits);
    let estimate = plan::estimate(&validation, config, &scan);
    let dollars: Vec<f64> = estimate.agents.iter().map(|agent| agent.dollars).collect();
    if dollars.len() != plan.subtasks.len() {
        anyhow::bail!(
            "the plan has {} sub-tasks but {} estimates",
            plan.subtasks.len(),
            dollars.len()
        );
    }
    Ok((dollars, estimate.wall_time))
}

/// The model API: an in-process simulator with `--sim`/`--scenario`, else the environment's.
async fn fleet(args: &ResumeArgs, config: &Config) -> anyhow::Result<(Fleet, Option<SimHandle>)> {
    let http = http_timeout(args.request_timeout);
    if !args.sim && args.scenario.is_none() {
        return Ok((fleet_for(config, provider_with(config, None, http)?), None));
    }
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
    let provider = provider_with(config, Some(&handle.base_url()), http)?;
    Ok((fleet_for(config, provider), Some(handle)))
}

/// A workflow path recorded by a run: absolute since runs record it so; an older run's
/// relative path is tried against the current directory, then against the repository.
fn recorded_path(recorded: &str, repo: &Path) -> PathBuf {
    let path = PathBuf::from(recorded);
    if path.is_absolute() || path.exists() {
        return path;
    }
    let in_repo = repo.join(&path);
    if in_repo.exists() { in_repo } else { path }
}

/// `--dry-run`: which agents of the run would run again (every agent without a success
/// row), read from the store; nothing is written, no model is called.
fn report_rerun(
    repo: &Path,
    run_id: &str,
    plan: &plan::Plan,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reader = StoreReader::open_in_repo(repo)?;
    let rows = reader.agent_runs(run_id)?;
    let mut last: std::collections::HashMap<&str, &fanout_core::store::AgentRow> =
        std::collections::HashMap::new();
    for row in &rows {
        let entry = last.entry(row.agent_id.as_str()).or_insert(row);
        if row.attempt >= entry.attempt {
            *entry = row;
        }
    }
    let succeeded: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|row| row.status == Some(AgentStatus::Success))
        .map(|row| row.agent_id.as_str())
        .collect();
    let mut rerun = Vec::new();
    let mut kept = 0usize;
    for subtask in &plan.subtasks {
        let id = subtask.task_id.to_string();
        if succeeded.contains(id.as_str()) {
            kept += 1;
            continue;
        }
        let why = match last.get(id.as_str()) {
            None => "not run".to_owned(),
            Some(row) => match row.status {
                None => "interrupted".to_owned(),
                Some(status) => format!(
                    "{}{}",
                    status.as_str(),
                    row.error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
            },
        };
        rerun.push((id, why));
    }
    if json {
        let agents: Vec<serde_json::Value> = rerun
            .iter()
            .map(|(id, why)| serde_json::json!({"agent_id": id, "last": why}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"run_id": run_id, "dry_run": true, "would_rerun": agents, "kept": kept})
        );
    } else {
        println!(
            "[DRY RUN] Run {run_id}: {} of {} agents would run again ({kept} succeeded and are kept); nothing was changed.",
            rerun.len(),
            plan.subtasks.len()
        );
        for (id, why) in &rerun {
            println!("  {id}: {why}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
