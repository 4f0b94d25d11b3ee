//! The run's lifecycle as one API for every front end (the CLI, the benchmarks, an MCP server):
//! what a fresh run of a reviewed plan starts with, and what a recorded run must satisfy before
//! it is finished again.
//!
//! - [`fresh`]: the engine's inputs for a plan that `crate::plan::prepare` just validated,
//!   estimated and saved; the run takes the plan's saved id.
//! - [`recorded`]: a run in the store, checked for `fanout resume` and `--retry-failed`: its
//!   status (a completed run needs nothing, a rolled-back one cannot be finished, a retry needs
//!   a run that ended), an item run handed back to the item runner, else its saved plan
//!   (refused if edited since the run started), its workflow file, and per-agent estimates
//!   made again over the tree as it is now. [`ResumePlan::inputs`] turns that into the
//!   engine's inputs.
//!
//! Both require the repository's live-run lock ([`RepoLock`]), taken by the caller before it
//! plans (fresh) or before it resumes, so that two runs never edit one tree.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::fleet::Fleet;
use crate::plan::{self, Plan, PlanOptions, Prepared, RepoScan, RunId};
use crate::run::engine::EngineInputs;
use crate::run::lock::RepoLock;
use crate::sandbox::SandboxConfig;
use crate::store::{RunStatus, StoreLocation, StoreReader};

pub use crate::attempt::AGENT_ATTEMPTS;

/// What a front end brings to a run besides the plan.
#[derive(Debug, Clone)]
pub struct Launch {
    pub config: Arc<Config>,
    /// The workflow file, recorded so that `fanout resume` can find it.
    pub config_path: Option<PathBuf>,
    pub repo: PathBuf,
    /// The run store (`--store`; [`StoreLocation::in_repo`] by default).
    pub store: StoreLocation,
    /// From [`crate::backend::Backend::fleet`].
    pub fleet: Fleet,
    /// The model API is a simulator.
    pub simulated: bool,
    pub lock: Arc<RepoLock>,
}

/// Why a run cannot start or be finished.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot open the repository {path}: {source}")]
    Repository {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no run {run_id} in {repo}")]
    UnknownRun { run_id: RunId, repo: PathBuf },
    #[error("cannot read the run store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error(
        "run {run_id} was undone by `fanout rollback`; its successes are no longer in the tree, so it cannot be finished (start a new run)"
    )]
    RolledBack { run_id: RunId },
    /// `--retry-failed` of a run still marked running: it must be resumed instead.
    #[error("run {run_id} did not end (it was interrupted or is still running)")]
    NotEnded { run_id: RunId },
    #[error("run {run_id} has no workflow file on record; pass --file")]
    NoWorkflowFile { run_id: RunId },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot load the run's plan: {0}")]
    Plan(#[from] crate::plan::PlanError),
    #[error(
        "{path} changed since run {run_id} started (hash {now}, recorded {recorded}); refusing to finish the run with a different plan"
    )]
    PlanEdited {
        path: PathBuf,
        run_id: RunId,
        now: String,
        recorded: String,
    },
    #[error("cannot estimate the run again: {0}")]
    Estimate(String),
}

/// Which kind of problem a [`LaunchError`] is, for a front end's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaunchErrorKind {
    /// The run, the repository or the workflow file is wrong or missing.
    Input,
    /// The saved plan is missing, edited or no longer estimates.
    Plan,
    /// The run is in a state that cannot be finished now.
    NotReady,
}

impl LaunchError {
    pub fn kind(&self) -> LaunchErrorKind {
        match self {
            LaunchError::Repository { .. }
            | LaunchError::UnknownRun { .. }
            | LaunchError::Store(_)
            | LaunchError::NoWorkflowFile { .. }
            | LaunchError::Config(_) => LaunchErrorKind::Input,
            LaunchError::Plan(_) | LaunchError::PlanEdited { .. } | LaunchError::Estimate(_) => {
                LaunchErrorKind::Plan
            }
            LaunchError::RolledBack { .. } | LaunchError::NotEnded { .. } => {
                LaunchErrorKind::NotReady
            }
        }
    }
}

/// The engine's inputs for a fresh run of `prepared` (its saved id, or a new one when the
/// plan was not saved), with its estimates reserved against the budget.
pub fn fresh(launch: Launch, prepared: &Prepared) -> Result<EngineInputs, LaunchError> {
    let report = &prepared.report;
    let run_id = report
        .saved
        .as_ref()
        .map(|saved| saved.run_id.clone())
        .unwrap_or_else(|| RunId::new(SystemTime::now()));
    let repo = canonical(&launch.repo)?;
    Ok(EngineInputs {
        config: launch.config,
        plan: prepared.validation.plan.clone(),
        estimated_dollars: report.estimate.agents.iter().map(|a| a.dollars).collect(),
        estimated_wall_time: Some(report.estimate.wall_time),
        plan_hash: report.saved.as_ref().map(|saved| saved.hash.clone()),
        config_path: launch.config_path,
        repo,
        store: launch.store,
        run_id,
        fleet: launch.fleet,
        sandbox: SandboxConfig::default(),
        max_attempts: AGENT_ATTEMPTS,
        lock: launch.lock,
        simulated: launch.simulated,
        distribution: None,
    })
}

/// A recorded run, as [`recorded`] finds it.
#[derive(Debug)]
pub enum Recorded {
    /// It completed: nothing to do.
    Completed,
    /// An item run: finished by `crate::items::run::resume` from its journal (its job record,
    /// `crate::items::run::item_run`, names the workflow).
    Items,
    /// A repository run to finish.
    Plan(Box<ResumePlan>),
}

/// A repository run checked and estimated again, ready to finish.
#[derive(Debug)]
pub struct ResumePlan {
    pub run_id: RunId,
    /// Canonical.
    pub repo: PathBuf,
    pub store: StoreLocation,
    pub config: Config,
    pub config_path: PathBuf,
    pub plan: Plan,
    pub plan_hash: String,
    /// Per sub-task, in plan order, over the tree as it is now.
    pub estimated_dollars: Vec<f64>,
    /// The estimate's wall-time floor (for progress displays).
    pub estimated_wall: Duration,
    /// Published for `fanout worker` processes: finished by coordinating them (its plan and
    /// workflow read from the store, so any clone can finish it).
    pub shared: bool,
}

/// Check the run `run_id` of `repo`, recorded in `store`, for finishing. `file` replaces the
/// workflow file the run was started with; `retry_failed` refuses a run that did not end (it
/// needs a resume).
pub fn recorded(
    repo: &Path,
    store: &StoreLocation,
    run_id: &RunId,
    file: Option<&Path>,
    retry_failed: bool,
) -> Result<Recorded, LaunchError> {
    let repo = canonical(repo)?;
    let run = StoreReader::open_at(store)
        .and_then(|reader| reader.run_summary(run_id))?
        .ok_or_else(|| LaunchError::UnknownRun {
            run_id: run_id.to_owned(),
            repo: repo.clone(),
        })?
        .run;
    let run_id = run_id.to_owned();
    match run.status {
        RunStatus::Completed => return Ok(Recorded::Completed),
        RunStatus::RolledBack => return Err(LaunchError::RolledBack { run_id }),
        RunStatus::Running | RunStatus::Planned if retry_failed => {
            return Err(LaunchError::NotEnded { run_id });
        }
        _ => {}
    }
    // An item run has a job file; shared, it has a published record too (its job, not a
    // plan), which the item runner reads.
    if crate::layout::job_file(&repo, &run_id).exists() {
        return Ok(Recorded::Items);
    }
    if let Some(record) = StoreReader::open_at(store)?.run_plan(&run_id)? {
        return published(record, repo, store, run_id, file);
    }
    let config_path = match file {
        Some(file) => absolute(file),
        None => run
            .config_path
            .as_deref()
            .map(|recorded| recorded_path(recorded, &repo))
            .ok_or_else(|| LaunchError::NoWorkflowFile {
                run_id: run_id.clone(),
            })?,
    };
    let config = Config::from_path(&config_path)?;
    let plan_path = crate::layout::plan_file(&repo, &run_id);
    let loaded = plan::load_plan(&plan_path)?;
    if let Some(recorded) = run.plan_hash
        && recorded != loaded.hash
    {
        return Err(LaunchError::PlanEdited {
            path: plan_path,
            run_id,
            now: loaded.hash,
            recorded,
        });
    }
    let (estimated_dollars, estimated_wall) = estimates(&config, &loaded.plan, &repo)?;
    Ok(Recorded::Plan(Box::new(ResumePlan {
        run_id,
        repo,
        store: store.clone(),
        config,
        config_path,
        plan: loaded.plan,
        plan_hash: loaded.hash,
        estimated_dollars,
        estimated_wall,
        shared: false,
    })))
}

/// A run shared with workers, to finish from any clone of the repository: its plan and
/// workflow as published in the store (the plan's hash checked, as workers check it), or
/// the workflow file `file` when given.
fn published(
    record: crate::store::RunPlanRecord,
    repo: PathBuf,
    store: &StoreLocation,
    run_id: RunId,
    file: Option<&Path>,
) -> Result<Recorded, LaunchError> {
    let where_published = PathBuf::from(format!("the plan published in {store}"));
    let found = crate::plan::hash_bytes(record.plan.as_bytes());
    if found != record.plan_hash {
        return Err(LaunchError::PlanEdited {
            path: where_published,
            run_id,
            now: found,
            recorded: record.plan_hash,
        });
    }
    let plan: Plan = serde_json::from_str(&record.plan).map_err(|error| {
        LaunchError::Plan(crate::plan::PlanError::PlanFile {
            path: where_published.clone(),
            message: error.to_string(),
        })
    })?;
    let workflow_path = record
        .workflow_path
        .as_deref()
        .map(|path| repo.join(path))
        .unwrap_or_else(|| repo.join("claude-workflows.yaml"));
    let (config, config_path) = match file {
        Some(file) => (Config::from_path(file)?, absolute(file)),
        None => (
            Config::from_str(&record.workflow, &workflow_path)?,
            workflow_path,
        ),
    };
    let (estimated_dollars, estimated_wall) = estimates(&config, &plan, &repo)?;
    Ok(Recorded::Plan(Box::new(ResumePlan {
        run_id,
        repo,
        store: store.clone(),
        config,
        config_path,
        plan,
        plan_hash: record.plan_hash,
        estimated_dollars,
        estimated_wall,
        shared: true,
    })))
}

impl ResumePlan {
    /// The engine's inputs for finishing this run over `fleet`.
    pub fn inputs(self, fleet: Fleet, simulated: bool, lock: Arc<RepoLock>) -> EngineInputs {
        EngineInputs {
            config: Arc::new(self.config),
            plan: self.plan,
            estimated_dollars: self.estimated_dollars,
            estimated_wall_time: Some(self.estimated_wall),
            plan_hash: Some(self.plan_hash),
            config_path: Some(self.config_path),
            repo: self.repo,
            store: self.store,
            run_id: self.run_id,
            fleet,
            sandbox: SandboxConfig::default(),
            max_attempts: AGENT_ATTEMPTS,
            lock,
            simulated,
            distribution: None,
        }
    }
}

/// Per-agent dollar estimates (reserved against the budget) and the wall-time floor, from the
/// plan over the tree as it is now.
fn estimates(
    config: &Config,
    plan: &Plan,
    repo: &Path,
) -> Result<(Vec<f64>, Duration), LaunchError> {
    let scan = RepoScan::scan(repo).map_err(|error| LaunchError::Estimate(error.to_string()))?;
    let validation = plan::validate(plan.clone(), config, &scan, &PlanOptions::default().limits);
    let estimate = plan::estimate(&validation, config, &scan);
    let dollars: Vec<f64> = estimate.agents.iter().map(|agent| agent.dollars).collect();
    if dollars.len() != plan.subtasks.len() {
        return Err(LaunchError::Estimate(format!(
            "the plan has {} sub-tasks but {} estimates",
            plan.subtasks.len(),
            dollars.len()
        )));
    }
    Ok((dollars, estimate.wall_time))
}

fn canonical(repo: &Path) -> Result<PathBuf, LaunchError> {
    repo.canonicalize()
        .map_err(|source| LaunchError::Repository {
            path: repo.to_path_buf(),
            source,
        })
}

/// `path` made absolute against the current directory (it is recorded with the run).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
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
