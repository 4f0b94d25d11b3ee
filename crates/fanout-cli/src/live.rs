//! The live half of `fanout run`: hands a reviewed, clean plan to the engine, shows progress on
//! stderr (or JSON lines on stdout with `--json`), and prints the run's totals. [`drive`] is
//! shared with `fanout resume` and `fanout run --retry-failed` (`crate::resume_cmd`).
//!
//! One process per run at a time: [`drive`] holds an exclusive `flock` on
//! `.fanout/runs/<run_id>/run.lock` while the engine runs (the kernel drops it when the process
//! dies, even on `kill -9`), so a resume cannot roll back agents another process is running.
//!
//! Exit codes: 0 every agent succeeded and every change stayed in scope; 5 partial (some
//! agents failed, were not run, or a file changed outside every scope); 6 no agent succeeded;
//! 130 cancelled (resumable).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fanout_core::config::{Config, Mode};
use fanout_core::fleet::Fleet;
use fanout_core::plan::{Prepared, RunId};
use fanout_core::run::engine::{self, EngineEvent, EngineInputs, RunOutcome};
use fanout_core::sandbox::SandboxConfig;
use fanout_core::store::{AgentStatus, RunStatus};
use tokio_util::sync::CancellationToken;

use crate::progress::{
    Progress, ProgressStyle, Tally, handle_interrupts, human_count, human_duration,
};
use crate::run_cmd::RunArgs;

pub const EXIT_PARTIAL: u8 = 5;
pub const EXIT_FAILED: u8 = 6;
pub const EXIT_CANCELLED: u8 = 130;

pub async fn execute(
    args: &RunArgs,
    config: Config,
    prepared: Prepared,
    fleet: Fleet,
    repository: PathBuf,
) -> anyhow::Result<ExitCode> {
    let report = &prepared.report;
    let run_id = report
        .saved
        .as_ref()
        .map(|saved| saved.run_id.0.clone())
        .unwrap_or_else(|| RunId::new(SystemTime::now()).0);
    let plan = prepared.validation.plan.clone();
    let estimated_dollars: Vec<f64> = report.estimate.agents.iter().map(|a| a.dollars).collect();
    let repo = repository
        .canonicalize()
        .with_context(|| format!("cannot open the repository {}", repository.display()))?;
    let inputs = EngineInputs {
        config: Arc::new(config),
        plan,
        estimated_dollars,
        plan_hash: report.saved.as_ref().map(|saved| saved.hash.clone()),
        config_path: Some(args.file.clone()),
        repo,
        run_id: run_id.clone(),
        fleet: fleet.clone(),
        sandbox: SandboxConfig::default(),
        max_attempts: 3,
    };
    drive(inputs, args.json, report.estimate.wall_time, Launch::Fresh).await
}

/// How the engine is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// A new run.
    Fresh,
    /// `fanout resume` or `fanout run --retry-failed`: an existing run, finished.
    Resume,
}

/// Run the engine with progress and Ctrl-C handling, print the closing report, and map the
/// outcome to an exit code.
pub async fn drive(
    inputs: EngineInputs,
    json: bool,
    estimated: Duration,
    launch: Launch,
) -> anyhow::Result<ExitCode> {
    let run_id = inputs.run_id.clone();
    let fleet = inputs.fleet.clone();
    let _lock = match RunLock::acquire(&inputs.repo, &run_id) {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(ExitCode::from(crate::run_cmd::EXIT_NOT_READY));
        }
    };
    let cancel = CancellationToken::new();
    handle_interrupts(cancel.clone());

    let mut progress = Progress::new(ProgressStyle::detect(json));
    let mut tally = Tally {
        total: inputs.plan.subtasks.len(),
        ..Tally::default()
    };
    if progress.style() != ProgressStyle::Json {
        let verb = match launch {
            Launch::Fresh => "run",
            Launch::Resume => "resuming run",
        };
        eprintln!("fanout: {verb} {run_id}: {} agents", tally.total);
    }
    let stats_fleet = fleet.clone();
    let on_event = |event: &EngineEvent| {
        progress.event(event);
        match event {
            EngineEvent::AgentStarted { attempt, .. } => {
                if *attempt == 1 {
                    tally.running += 1;
                }
            }
            EngineEvent::AgentFinished {
                status,
                mode,
                tokens,
                dollars,
                ..
            } => {
                tally.running = tally.running.saturating_sub(1);
                match status {
                    AgentStatus::Success => tally.done += 1,
                    AgentStatus::Failure | AgentStatus::Rollback => tally.failed += 1,
                }
                match mode {
                    Mode::Fast => tally.tokens_fast += tokens,
                    Mode::Default => tally.tokens_default += tokens,
                }
                tally.dollars += dollars;
            }
            EngineEvent::AgentNotRun { .. } => tally.skipped += 1,
            EngineEvent::Checkpoint { .. } | EngineEvent::Phase { .. } => {}
        }
        tally.observe_fleet(&stats_fleet);
        progress.update(&tally);
    };
    let outcome = match launch {
        Launch::Fresh => engine::execute(inputs, &cancel, on_event).await,
        Launch::Resume => engine::resume(inputs, &cancel, on_event).await,
    }
    .context("the run could not be carried out")?;
    progress.finish(&tally);

    if json {
        let line = serde_json::json!({"event": "run_finished", "outcome": &outcome});
        println!("{line}");
    } else {
        print!("{}", render(&outcome, estimated));
    }
    Ok(ExitCode::from(match outcome.status {
        RunStatus::Completed => 0,
        RunStatus::Cancelled => EXIT_CANCELLED,
        RunStatus::Failed => EXIT_FAILED,
        _ => EXIT_PARTIAL,
    }))
}

/// An exclusive `flock` on `.fanout/runs/<run_id>/run.lock`, released when dropped (or when
/// the process dies). Item runs take the same lock (`crate::items_cmd`).
pub(crate) struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    #[allow(unsafe_code)]
    pub(crate) fn acquire(repo: &std::path::Path, run_id: &str) -> Result<RunLock, String> {
        use std::os::fd::AsRawFd;
        let dir = repo.join(".fanout").join("runs").join(run_id);
        std::fs::create_dir_all(&dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
        let path = dir.join("run.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared with the kernel.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(format!(
                "run {run_id} is being run by another fanout process (lock {})",
                path.display()
            ));
        }
        Ok(RunLock { _file: file })
    }
}

/// The closing report.
pub fn render(outcome: &RunOutcome, estimated: Duration) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Run {}: {}\n",
        outcome.run_id,
        outcome.status.as_str()
    ));
    out.push_str(&format!(
        "Agents: {} succeeded, {} failed, {} rolled back, {} not run (of {}); {} escalated to default\n",
        outcome.succeeded,
        outcome.failed,
        outcome.rolled_back,
        outcome.not_run,
        outcome.agents_planned,
        outcome.escalated
    ));
    let tokens = outcome.tokens_fast + outcome.tokens_default;
    let fast = if tokens == 0 {
        0.0
    } else {
        100.0 * outcome.tokens_fast as f64 / tokens as f64
    };
    out.push_str(&format!(
        "Tokens: {} ({fast:.0}% Fast Mode); cost ${:.2}\n",
        human_count(tokens),
        outcome.dollars
    ));
    out.push_str(&format!(
        "Wall time: {} (estimated at least {})\n",
        human_duration(outcome.wall_time),
        human_duration(estimated)
    ));
    out.push_str(&format!(
        "Files changed: {}; checkpoints: {}\n",
        outcome.files_changed, outcome.checkpoints
    ));
    if outcome.out_of_scope.is_empty() {
        out.push_str("Scope check: every change is inside a declared scope.\n");
    } else {
        out.push_str(&format!(
            "RED FLAG: {} file(s) changed outside every declared scope:\n",
            outcome.out_of_scope.len()
        ));
        for path in &outcome.out_of_scope {
            out.push_str(&format!("  {path}\n"));
        }
    }
    if let Some(test) = &outcome.test {
        out.push_str(&format!(
            "Tests (`{}`): {}\n",
            test.command,
            if test.passed { "passed" } else { "FAILED" }
        ));
    }
    if let Some(error) = &outcome.synthesis_error {
        out.push_str(&format!("Synthesis call failed: {error}\n"));
    }
    if let Some(path) = &outcome.summary_path {
        out.push_str(&format!("Summary: {}\n", path.display()));
    }
    out.push_str(&format!(
        "Inspect with `fanout show {}`; undo with `fanout rollback {}`.\n",
        outcome.run_id, outcome.run_id
    ));
    out
}
