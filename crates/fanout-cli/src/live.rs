//! The live half of `fanout run`: hands a reviewed, clean plan to the engine, shows progress on
//! stderr (or JSON lines on stdout with `--json`), and prints the run's totals. [`drive`] is
//! shared with `fanout resume` and `fanout run --retry-failed` (`crate::resume_cmd`).
//!
//! One live run per repository at a time: the caller takes the repository's lock
//! (`fanout_core::run::lock::RepoLock`) before it plans, and the engine requires it.
//!
//! Exit codes: `crate::exit::Exit::of_run` of the run's status (0 completed, 7 tests failed,
//! 5 partial, 6 failed, 130 cancelled).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::fleet::Fleet;
use fanout_core::plan::Prepared;
use fanout_core::run::engine::{self, Distribution, EngineEvent, EngineInputs, RunOutcome};
use fanout_core::run::lock::RepoLock;
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::progress::{
    Progress, ProgressStyle, Tally, handle_interrupts, human_count, human_duration,
};
use crate::run_cmd::RunArgs;

pub async fn execute(
    args: &RunArgs,
    config: Config,
    prepared: Prepared,
    fleet: Fleet,
    backend: &Arc<Backend>,
    repository: PathBuf,
    lock: Arc<RepoLock>,
) -> anyhow::Result<ExitCode> {
    let store = args.store.location(&repository)?;
    let launch = fanout_core::run::launch::Launch {
        config: Arc::new(config),
        config_path: Some(absolute(&args.file)),
        repo: repository,
        store,
        fleet,
        simulated: args.model.simulated(),
        lock,
    };
    let mut inputs = fanout_core::run::launch::fresh(launch, &prepared)?;
    if let Some(slots) = args.local_slots {
        let workflow = std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?;
        let workflow_path = absolute(&args.file)
            .strip_prefix(&inputs.repo)
            .ok()
            .map(|path| path.display().to_string());
        inputs.distribution = Some(distribution(
            &inputs,
            workflow,
            workflow_path,
            slots,
            backend,
        ));
    }
    drive(
        inputs,
        args.json,
        prepared.report.estimate.wall_time,
        Launch::Fresh,
    )
    .await
}

/// A run shared through its store with `fanout worker` processes, `slots` of its agents run
/// by this process (their trees in a cache under the temporary directory, never the
/// user's repository).
pub fn distribution(
    inputs: &EngineInputs,
    workflow: String,
    workflow_path: Option<String>,
    slots: usize,
    backend: &Arc<Backend>,
) -> Distribution {
    Distribution {
        workflow,
        workflow_path,
        local_slots: slots,
        backend: Some(Arc::clone(backend)),
        cache: std::env::temp_dir().join(format!(
            "fanout-coordinator-{}-{}",
            std::process::id(),
            inputs.run_id
        )),
    }
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
    let repo = inputs.repo.clone();
    let store = inputs.store.clone();
    let fleet = inputs.fleet.clone();
    let mut followup = Followup::new(&inputs.repo, inputs.simulated);
    // The commands it suggests read the same store (its password shown as `***`).
    if inputs.store.is_postgres() && fanout_core::env::var(fanout_core::env::FANOUT_STORE).is_none()
    {
        followup.repo.push_str(&format!(
            " --store {}",
            shell_word(&inputs.store.to_string())
        ));
    }
    let cancel = CancellationToken::new();
    handle_interrupts(
        cancel.clone(),
        format!("fanout resume {run_id}{}{}", followup.repo, followup.sim),
    );

    let progress = Progress::new(ProgressStyle::detect(json));
    let tally = Tally {
        total: inputs.plan.subtasks.len(),
        ungoverned: inputs.distribution.is_some(),
        ..Tally::default()
    };
    if progress.style() != ProgressStyle::Json {
        let verb = match launch {
            Launch::Fresh => "run",
            Launch::Resume => "resuming run",
        };
        eprintln!("fanout: {verb} {run_id}: {} agents", tally.total);
        if let Some(shared) = &inputs.distribution {
            eprintln!(
                "fanout: shared through {} with {} agent(s) at a time on this machine; start workers with `fanout worker --store {}`",
                inputs.store,
                shared.local_slots,
                shell_word(&inputs.store.to_string())
            );
        }
    }
    let cache = inputs
        .distribution
        .as_ref()
        .map(|shared| shared.cache.clone());
    // Shared with a ticker that redraws every second while nothing finishes (waits on the
    // rate limits, an outage's probes, a long agent), so elapsed time and waits stay true.
    let display = Arc::new(std::sync::Mutex::new((progress, tally)));
    let ticker = {
        let display = Arc::clone(&display);
        let fleet = fleet.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                let mut guard = display
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let (progress, tally) = &mut *guard;
                tally.observe_fleet(&fleet);
                progress.update(tally);
            }
        })
    };
    let stats_fleet = fleet.clone();
    let cancelled = cancel.clone();
    let on_event = |event: &EngineEvent| {
        let mut guard = display
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (progress, tally) = &mut *guard;
        progress.event(event);
        tally.apply(event, cancelled.is_cancelled());
        tally.observe_fleet(&stats_fleet);
        progress.update(tally);
    };
    let outcome = match launch {
        Launch::Fresh => engine::execute(inputs, &cancel, on_event).await,
        Launch::Resume => engine::resume(inputs, &cancel, on_event).await,
    };
    ticker.abort();
    let _ = ticker.await;
    if let Some(cache) = cache {
        let _ = std::fs::remove_dir_all(cache);
    }
    let outcome = outcome.context("the run could not be carried out")?;
    {
        let mut guard = display
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (progress, tally) = &mut *guard;
        progress.finish(tally);
    }

    if json {
        let line = serde_json::json!({"event": "run_finished", "outcome": &outcome});
        println!("{line}");
    } else {
        print!("{}", render(&outcome, estimated, &followup));
    }
    crate::traces::export(&repo, &store, &run_id).await;
    Ok(Exit::of_run(outcome.status).into())
}

/// What the commands the closing report suggests need to work as printed: `--repo` when the
/// repository is not the current directory, `--sim` when the run was simulated (a resume
/// without it would look for an API key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Followup {
    /// ` --repo DIR`, or empty.
    pub repo: String,
    /// ` --sim`, or empty.
    pub sim: String,
}

impl Followup {
    pub fn new(repo: &std::path::Path, simulated: bool) -> Followup {
        let here = std::env::current_dir()
            .ok()
            .and_then(|dir| dir.canonicalize().ok());
        let there = repo.canonicalize().ok();
        let repo = if here.is_some() && here == there {
            String::new()
        } else {
            format!(
                " --repo {}",
                shell_word(&absolute(repo).display().to_string())
            )
        };
        Followup {
            repo,
            sim: if simulated {
                " --sim".into()
            } else {
                String::new()
            },
        }
    }
}

/// `text` as one shell word (single-quoted when it holds anything but plain characters).
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:@,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// The closing report.
pub fn render(outcome: &RunOutcome, estimated: Duration, followup: &Followup) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Run {}: {}\n",
        outcome.run_id,
        outcome.status.as_str()
    ));
    out.push_str(&format!(
        "Agents: {}\n",
        fanout_core::run::engine::agents_text(outcome)
    ));
    out.push_str(&format!(
        "Attempts: {}; tool calls: {}; denied requests: {}\n",
        outcome.attempts, outcome.tool_calls, outcome.denials
    ));
    let tokens = outcome.tokens_fast + outcome.tokens_default;
    let fast = if tokens == 0 {
        0.0
    } else {
        100.0 * outcome.tokens_fast as f64 / tokens as f64
    };
    out.push_str(&format!(
        "Tokens (agents, all attempts): {} ({fast:.0}% Fast Mode); cost ${:.2}\n",
        human_count(tokens),
        outcome.dollars
    ));
    out.push_str(&format!(
        "Prompt cache: {}\n",
        fanout_core::run::engine::cache_text(outcome)
    ));
    // The estimate in the dry run's words and rounding.
    let wall = if outcome.wall_time < Duration::from_secs(60) {
        format!("{:.1}s", outcome.wall_time.as_secs_f64())
    } else {
        human_duration(outcome.wall_time)
    };
    out.push_str(&format!(
        "Wall time: {wall} (estimated about {})\n",
        fanout_core::plan::estimate::human_duration(estimated)
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
        out.push_str(&format!("Tests (`{}`): {}\n", test.command, test.verdict()));
        if !test.passed {
            for line in last_lines(&test.output, 12) {
                out.push_str(&format!("  | {line}\n"));
            }
        }
    }
    if let Some(error) = &outcome.synthesis_error {
        out.push_str(&format!("Synthesis call failed: {error}\n"));
    }
    if let Some(path) = &outcome.summary_path {
        out.push_str(&format!("Summary: {}\n", path.display()));
    }
    if let Some(problem) = &outcome.summary_problem {
        out.push_str(&format!(
            "Summary files not written ({problem}); `fanout show {}` has the run\n",
            outcome.run_id
        ));
    }
    if matches!(
        outcome.status,
        fanout_core::store::RunStatus::Cancelled | fanout_core::store::RunStatus::Running
    ) {
        out.push_str(&format!(
            "Finish it with `fanout resume {}{}{}`.\n",
            outcome.run_id, followup.repo, followup.sim
        ));
    }
    out.push_str(&format!(
        "Inspect with `fanout show {id}{repo}`; undo with `fanout rollback {id}{repo}`.\n",
        id = outcome.run_id,
        repo = followup.repo
    ));
    out
}

/// The last `n` lines of a command's output, for the closing report.
fn last_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

/// `path` made absolute against the current directory (not resolved through symlinks), so a
/// run can be resumed from anywhere.
pub(crate) use fanout_core::run::launch::absolute;
