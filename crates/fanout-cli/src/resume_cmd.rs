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
//! A run shared with `fanout worker` processes (published in its store) is finished by
//! coordinating them again, from any clone of the repository: its plan and workflow come
//! from the store, and `--local-slots N` lets this process run N of its agents itself.
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

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::plan::{self, RunId};
use fanout_core::run::launch::{self, LaunchError, LaunchErrorKind, Recorded};
use fanout_core::run::lock::RepoLock;
use fanout_core::store::{AgentStatus, RunStatus, StoreReader};

use crate::exit::Exit;
use crate::live::{Launch, drive};
use crate::run_cmd::RunArgs;

#[derive(Args, Debug, Clone)]
pub struct ResumeArgs {
    /// The run to finish (see `fanout runs`).
    pub run_id: RunId,
    /// The workflow file (default: the one the run was started with).
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Repository root (default: the current directory).
    #[arg(long, value_name = "DIR")]
    pub repo: Option<PathBuf>,
    /// Where model calls go: `--sim` and the simulator's settings, the request timeout.
    #[command(flatten)]
    pub model: crate::model_args::ModelArgs,
    /// Progress events as JSON lines on stdout, then the outcome.
    #[arg(long)]
    pub json: bool,
    /// Report which agents would run again, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub store: crate::store_cmd::StoreArg,
    /// A run shared with `fanout worker` processes: agents (or item chunks) this process runs
    /// itself beside them (default 0: it only coordinates). Any clone of the repository can
    /// resume a plan run; an item run resumes where its run directory is.
    #[arg(long, value_name = "N")]
    pub local_slots: Option<usize>,
}

/// `fanout resume RUN_ID`.
pub async fn run(args: ResumeArgs) -> anyhow::Result<ExitCode> {
    finish(args, false).await
}

/// `fanout run FILE --retry-failed RUN_ID`.
pub async fn retry_failed(args: &RunArgs, run_id: &RunId) -> anyhow::Result<ExitCode> {
    // An item run is retried by a new run with this command line's options as they are.
    let repo = args.repo.clone().unwrap_or_else(|| PathBuf::from("."));
    if fanout_core::items::run::item_run(&repo, run_id).is_some() {
        let status = args
            .store
            .location(&repo)
            .and_then(|store| StoreReader::open_at(&store))
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
        return crate::items_cmd::retry_failed(args.clone(), config, repo, run_id.clone()).await;
    }
    let resume = ResumeArgs {
        run_id: run_id.clone(),
        file: Some(args.file.clone()),
        repo: args.repo.clone(),
        model: args.model.clone(),
        json: args.json,
        dry_run: args.dry_run,
        store: args.store.clone(),
        local_slots: args.local_slots,
    };
    finish(resume, true).await
}

async fn finish(args: ResumeArgs, retry_failed: bool) -> anyhow::Result<ExitCode> {
    let repo = args.repo.clone().unwrap_or_else(|| PathBuf::from("."));
    let store = args.store.location(&repo)?;
    let recorded = launch::recorded(
        &repo,
        &store,
        &args.run_id,
        args.file.as_deref(),
        retry_failed,
    );
    let resume = match recorded {
        Ok(Recorded::Completed) => {
            eprintln!(
                "fanout: run {} already completed; nothing to do",
                args.run_id
            );
            return Ok(ExitCode::SUCCESS);
        }
        Ok(Recorded::Items) => {
            let repo = launch::absolute(&repo);
            let Some(record) = fanout_core::items::run::item_run(&repo, &args.run_id) else {
                eprintln!(
                    "error: run {}'s job record ({}) cannot be read",
                    args.run_id,
                    fanout_core::layout::job_file(&repo, &args.run_id).display()
                );
                return Ok(Exit::Config.into());
            };
            return resume_items(&args, repo, record.workflow).await;
        }
        Ok(Recorded::Plan(resume)) => resume,
        Err(err @ LaunchError::NotEnded { .. }) => {
            let followup = crate::live::Followup::new(&repo, args.model.simulated());
            eprintln!(
                "error: {err}; finish it with `fanout resume {}{}{}`",
                args.run_id, followup.repo, followup.sim
            );
            return Ok(Exit::NotReady.into());
        }
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(match err.kind() {
                LaunchErrorKind::Input => Exit::Config,
                LaunchErrorKind::Plan => Exit::Planning,
                LaunchErrorKind::NotReady => Exit::NotReady,
            }
            .into());
        }
    };
    if args.dry_run {
        return report_rerun(&resume.store, &args.run_id, &resume.plan, args.json);
    }
    let lock = match RepoLock::acquire(&resume.repo, &format!("resuming run {}", args.run_id)) {
        Ok(lock) => Arc::new(lock),
        Err(err) => {
            eprintln!("error: refusing to resume: {err}");
            return Ok(Exit::NotReady.into());
        }
    };
    let backend = Arc::new(Backend::start(&args.model.target(), args.model.http()).await?);
    let fleet = match backend.fleet(&resume.config) {
        Ok(fleet) => fleet,
        Err(err) => {
            eprintln!("error: {err}");
            shutdown(backend).await;
            return Ok(Exit::NotReady.into());
        }
    };
    let estimated_wall = resume.estimated_wall;
    let shared = resume.shared;
    let mut inputs = resume.inputs(fleet, backend.simulated(), lock);
    if shared {
        let slots = args.local_slots.unwrap_or(0);
        inputs.distribution = Some(crate::live::distribution(
            &inputs,
            String::new(),
            None,
            slots,
            &backend,
        ));
    } else if args.local_slots.is_some() {
        eprintln!(
            "error: run {} was not shared with workers; resume it without --local-slots",
            args.run_id
        );
        shutdown(backend).await;
        return Ok(Exit::Config.into());
    }
    let code = drive(inputs, args.json, estimated_wall, Launch::Resume).await;
    shutdown(backend).await;
    code
}

/// Stop the simulator, once the run no longer holds the backend.
async fn shutdown(backend: Arc<Backend>) {
    if let Ok(backend) = Arc::try_unwrap(backend) {
        backend.shutdown().await;
    }
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
        task: None,
        plan: None,
        repo: Some(repo.clone()),
        max_repairs: 0,
        verbose: false,
        json: args.json,
        model: args.model.clone(),
        retry_failed: None,
        allow_dirty: false,
        store: args.store.clone(),
        local_slots: args.local_slots,
    };
    crate::items_cmd::resume(run_args, config, repo, args.run_id.clone()).await
}

/// `--dry-run`: which agents of the run would run again (every agent without a success
/// row), read from the store; nothing is written, no model is called.
fn report_rerun(
    store: &fanout_core::store::StoreLocation,
    run_id: &RunId,
    plan: &plan::Plan,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let reader = StoreReader::open_at(store)?;
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
