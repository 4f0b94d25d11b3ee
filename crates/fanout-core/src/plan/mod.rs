//! Planning: from a workflow file and a repository to a validated plan and the dry-run report.
//!
//! Start reading at [`prepare`], the one path `fanout run --dry-run`, `fanout plan` and the
//! live run share (a live run then hands the saved plan to `crate::run::launch::fresh`):
//! 1. `scan`: walk the repository (`.gitignore` respected) into a sorted file list.
//! 2. `orchestrate`: one forced `submit_plan` call to the orchestrator model with the task and
//!    a bounded tree view, and the repair loop; or `store::load_plan` for a reviewed plan
//!    (`--plan FILE`), which makes no model call.
//! 3. `validate`: every rule of the workflow file, as [`Violation`]s with agent, what and why;
//!    sensitive work moved off `fast` as [`Adjustment`]s.
//! 4. `estimate`: tokens, dollars and the wall-time floor.
//! 5. `report`: the data `--json` prints and the text the seed promises.
//! 6. `store`: the plan saved under `.fanout/runs/<run_id>/plan.json` with its hash.
//!
//! `git` holds the live-run precondition (a clean git work tree where the plan touches).
//! Nothing here starts an agent or writes outside `.fanout/`.

pub mod estimate;
pub mod git;
pub mod orchestrate;
pub mod report;
pub mod scan;
pub mod store;
pub mod types;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use estimate::{Calibration, Estimate, estimate, estimate_calibrated};
pub use git::{GitCheckError, ensure_clean, ensure_tracked_clean};
pub use orchestrate::{PlanOptions, Planned, SUBMIT_PLAN_TOOL, request_plan};
pub use report::{PlanSource, Report};
pub use scan::RepoScan;
pub use store::{LoadedPlan, RunId, SavedPlan, hash_bytes, load_plan, save_plan};
pub use types::{Plan, Subtask, TaskId, parse_plan};
pub use validate::{
    Adjustment, DEFAULT_MAX_AGENTS, PlanLimits, ScopePaths, Validation, Violation, ViolationKind,
    validate,
};

use crate::config::Config;
use crate::fleet::{Fleet, FleetError};
use crate::governor::Limits;

/// Why planning could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot scan the repository {}: {source}", .path.display())]
    Scan {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no task: give `workflow.task` in the workflow file or pass --task")]
    NoTask,
    #[error("no model provider to plan with (and no --plan FILE)")]
    NoProvider,
    #[error("the orchestrator call failed (call {attempt}): {source}")]
    Orchestrator {
        #[source]
        source: FleetError,
        attempt: u32,
    },
    #[error("the orchestrator gave no usable plan in {attempts} call(s):{}", format_attempts(.errors))]
    NoPlan {
        attempts: u32,
        /// The errors of each call, in order.
        errors: Vec<Vec<String>>,
    },
    #[error("plan file {}: {message}", .path.display())]
    PlanFile { path: PathBuf, message: String },
}

fn format_attempts(errors: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (index, list) in errors.iter().enumerate() {
        out.push_str(&format!("\n  call {}:", index + 1));
        for error in list {
            out.push_str(&format!("\n    - {error}"));
        }
    }
    out
}

/// What the orchestrator calls used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PlanUsage {
    pub calls: u32,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub dollars: f64,
    /// When the first call was sent and the last answered (for traces).
    #[serde(skip)]
    pub started_at: Option<SystemTime>,
    #[serde(skip)]
    pub ended_at: Option<SystemTime>,
}

pub use crate::backend::{governor_config, retry_budget_config};

/// Record the orchestrator's calls beside the plan (`planning.json` in the run directory), so
/// the run that executes the plan can show what planning it cost and took (traces).
fn save_planning(
    repo: &Path,
    run_id: &RunId,
    config: &Config,
    usage: &PlanUsage,
) -> Result<(), PlanError> {
    let model = config.orchestrator_model();
    let record = serde_json::json!({
        "model": model.model,
        "provider": model.provider,
        "calls": usage.calls,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "dollars": usage.dollars,
        "started_at": usage.started_at.map(crate::store::format_time),
        "ended_at": usage.ended_at.map(crate::store::format_time),
    });
    let path = crate::layout::planning_file(repo, run_id);
    crate::layout::write_atomic(&path, format!("{record}\n").as_bytes()).map_err(|error| {
        PlanError::PlanFile {
            path: error.path.clone(),
            message: error.to_string(),
        }
    })
}

/// `config` with the limits it leaves out filled in from `learned`, or `None` when that adds
/// nothing.
fn with_learned_limits(config: &Config, learned: &Limits) -> Option<Config> {
    let limits = &config.rate_limits;
    let fills = [
        (limits.requests_per_minute, learned.requests),
        (limits.input_tokens_per_minute, learned.input_tokens),
        (limits.output_tokens_per_minute, learned.output_tokens),
        (limits.tokens_per_minute, learned.tokens),
    ];
    if !fills
        .iter()
        .any(|(set, known)| set.is_none() && known.is_some())
    {
        return None;
    }
    let mut config = config.clone();
    let limits = &mut config.rate_limits;
    limits.requests_per_minute = limits.requests_per_minute.or(learned.requests);
    limits.input_tokens_per_minute = limits.input_tokens_per_minute.or(learned.input_tokens);
    limits.output_tokens_per_minute = limits.output_tokens_per_minute.or(learned.output_tokens);
    limits.tokens_per_minute = limits.tokens_per_minute.or(learned.tokens);
    Some(config)
}

/// What [`prepare`] needs.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    /// The repository root.
    pub repository: PathBuf,
    /// Overrides `workflow.task`.
    pub task: Option<String>,
    /// Use this reviewed plan instead of asking the orchestrator.
    pub plan_file: Option<PathBuf>,
    pub options: PlanOptions,
    pub dry_run: bool,
    /// Save the plan under `.fanout/runs/<run_id>/`.
    pub save: bool,
    /// What the estimate may go by besides its defaults.
    pub calibration: Calibration,
}

/// A plan ready to show (and, once clean, to run).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub scan: RepoScan,
    pub validation: Validation,
    pub report: Report,
}

/// Scan, plan (or load), validate, estimate, save and report.
pub async fn prepare(
    config: &Config,
    request: &PrepareRequest,
    fleet: Option<&Fleet>,
    cancel: &CancellationToken,
) -> Result<Prepared, PlanError> {
    let mut scan = RepoScan::scan(&request.repository)?;
    // The workflow file governs the agents; it is not one of the files they work on (a new,
    // uncommitted `fanout.yaml` would otherwise land in a scope and block the live run).
    scan.forget(&config.origin);
    let (validation, source, planning) = match &request.plan_file {
        Some(path) => {
            let loaded = load_plan(path)?;
            let edited_since_review = loaded.edited_since_review();
            let validation = validate(loaded.plan, config, &scan, &request.options.limits);
            let source = PlanSource::File {
                path: path.clone(),
                edited_since_review,
            };
            (validation, source, None)
        }
        None => {
            let task = request
                .task
                .as_deref()
                .or(config.task.as_deref())
                .filter(|task| !task.trim().is_empty())
                .ok_or(PlanError::NoTask)?;
            let fleet = fleet.ok_or(PlanError::NoProvider)?;
            let planned =
                request_plan(fleet, config, &scan, task, &request.options, cancel).await?;
            let source = PlanSource::Orchestrator {
                attempts: planned.attempts,
            };
            (planned.validation, source, Some(planned.usage))
        }
    };
    // Limits the workflow leaves out are known once the orchestrator's call answered: the
    // wall-time estimate uses them.
    let learned = fleet.map(|fleet| fleet.governor().snapshot().learned);
    let estimate = match learned.and_then(|learned| with_learned_limits(config, &learned)) {
        Some(config) => estimate_calibrated(&validation, &config, &scan, &request.calibration),
        None => estimate_calibrated(&validation, config, &scan, &request.calibration),
    };
    let mut report = Report::new(
        config,
        &validation,
        estimate,
        source,
        planning,
        request.dry_run,
    );
    if request.save {
        let run_id = RunId::new(SystemTime::now());
        report.saved = Some(save_plan(&request.repository, &run_id, &validation.plan)?);
        if let Some(usage) = &planning {
            save_planning(&request.repository, &run_id, config, usage)?;
        }
    }
    Ok(Prepared {
        scan,
        validation,
        report,
    })
}
