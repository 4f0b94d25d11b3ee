//! `fanout run FILE [--dry-run]` and `fanout plan FILE`: one code path.
//!
//! Load the workflow file, build the provider (the in-process simulator with `--sim`, else the
//! environment's API), let `fanout_core::plan::prepare` scan, plan, validate, estimate and save,
//! then print the report (text, or `--json`). `fanout plan` is `fanout run --dry-run`.
//! Without `--dry-run`, a clean plan is followed by the live-run precondition (a clean git
//! work tree where the plan touches) and the live run (`crate::live`).
//!
//! A live run takes the repository's lock and checks what it can (git work tree, clean tree
//! unless `--allow-dirty`, an API key) before the planning call. Exit codes: `crate::exit`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::exit::Exit;
use anyhow::Context;
use clap::Args;
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::fleet::Fleet;
use fanout_core::plan::{self, PlanOptions, PrepareRequest, RunId, ScopePaths};
use fanout_core::run::lock::RepoLock;
use fanout_sim::Faults;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The workflow file.
    pub file: PathBuf,
    /// Plan, validate and report; change nothing and start no agent.
    #[arg(long)]
    pub dry_run: bool,
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
    /// Where model calls go: `--sim` and the simulator's settings, the request timeout.
    #[command(flatten)]
    pub model: crate::model_args::ModelArgs,
    /// A live run without --plan normally refuses uncommitted changes before it plans; with
    /// this, only the files the plan touches must be clean (checked after planning).
    #[arg(long)]
    pub allow_dirty: bool,
    /// Re-run only the agents of a finished run that failed, were rolled back or did not run
    /// (its saved plan; FILE gives the configuration).
    /// With --dry-run (or `fanout plan`): report which agents would run again.
    #[arg(long, value_name = "RUN_ID", conflicts_with_all = ["plan", "task"])]
    pub retry_failed: Option<RunId>,
    #[command(flatten)]
    pub store: crate::store_cmd::StoreArg,
    /// Share the run with `fanout worker` processes through the store, this process running
    /// N agents itself beside them (0: a pure coordinator). It publishes the run, applies
    /// the workers' committed patches in commit order, takes checkpoints, verifies and
    /// synthesises as a local run does. An item workflow's chunks are shared the same way:
    /// workers make the calls, this process settles their answers and writes the outputs.
    /// Without it the run is local, as always.
    #[arg(long, value_name = "N")]
    pub local_slots: Option<usize>,
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
            return Ok(Exit::Config.into());
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
    let needs_model = args.plan.is_none() || !args.dry_run;
    let backend = Arc::new(if needs_model {
        Backend::start(&args.model.target(), args.model.http()).await?
    } else {
        Backend::api(args.model.http())
    });
    let fleet = if needs_model {
        match backend.fleet(&config) {
            Ok(fleet) => Some(fleet),
            Err(err) => {
                // Before any model call, and before any lock or file.
                eprintln!("error: {err}");
                shutdown(backend).await;
                return Ok(Exit::NotReady.into());
            }
        }
    } else {
        None
    };
    let code = run_with(&args, config, fleet, &backend).await;
    shutdown(backend).await;
    code
}

/// Stop the simulator, once no run holds the backend any more.
async fn shutdown(backend: Arc<Backend>) {
    if let Ok(backend) = Arc::try_unwrap(backend) {
        backend.shutdown().await;
    }
}

async fn run_with(
    args: &RunArgs,
    config: Config,
    fleet: Option<Fleet>,
    backend: &Arc<Backend>,
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
        calibration: calibration(&args.model, &args.store.location(&repository)?),
    };
    // A live run holds the repository from before it plans: a second live run is refused
    // before it pays for a plan.
    let lock = if args.dry_run {
        None
    } else {
        match RepoLock::acquire(&repository, "planning a live run") {
            Ok(lock) => Some(Arc::new(lock)),
            Err(err) => {
                eprintln!("error: refusing a live run: {err}");
                return Ok(Exit::NotReady.into());
            }
        }
    };
    // Everything that can refuse a live run without a plan is checked before the planning
    // call is paid for: a git work tree, and (unless --allow-dirty) no uncommitted changes to
    // tracked files (untracked ones only matter if the plan touches them: checked after).
    // With --plan the scope is known and checked exactly below, still before any model call.
    if !args.dry_run && args.plan.is_none() {
        let owned = fanout_core::store::owned_paths(&repository);
        match plan::ensure_tracked_clean(&repository, |path| !owned.contains(path)) {
            Ok(()) => {}
            Err(plan::GitCheckError::Dirty { paths, .. }) if args.allow_dirty => {
                eprintln!(
                    "warning: {} uncommitted change(s) ({}); the run is refused after planning if \
                     the plan touches them",
                    paths.len(),
                    paths.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
                );
            }
            Err(err @ plan::GitCheckError::Dirty { .. }) => {
                eprintln!(
                    "error: refusing a live run before planning: {err} (or pass --allow-dirty \
                     to require only the files the plan touches to be clean)"
                );
                return Ok(Exit::NotReady.into());
            }
            Err(err) => {
                eprintln!("error: refusing a live run before planning: {err}");
                return Ok(Exit::NotReady.into());
            }
        }
    }
    let cancel = CancellationToken::new();
    let planning_fleet = if args.plan.is_none() {
        fleet.as_ref()
    } else {
        None
    };
    let ticker = planning_fleet
        .filter(|_| !args.json)
        .map(|_| planning_ticker(&config, &request.options));
    let prepared = plan::prepare(&config, &request, planning_fleet, &cancel).await;
    if let Some(ticker) = ticker {
        ticker.abort();
        let _ = ticker.await;
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprint!("\r\x1b[2K");
        }
    }
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Planning.into());
        }
    };

    let report = &prepared.report;
    let rendered = if args.json && !args.dry_run {
        // A live run's stdout is JSON lines: the plan report first, as one line.
        let mut text =
            serde_json::to_string(&serde_json::json!({"event": "plan", "report": report}))
                .context("cannot render the report")?;
        text.push('\n');
        text
    } else if args.json {
        let mut text = serde_json::to_string_pretty(report).context("cannot render the report")?;
        text.push('\n');
        text
    } else {
        report.render(args.verbose)
    };
    write_stdout(&rendered)?;
    if !report.is_clean() {
        return Ok(Exit::Violations.into());
    }
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }

    let scope = ScopePaths::new(&prepared.validation, &prepared.scan);
    if let Err(err) = plan::ensure_clean(&repository, |path| scope.contains(path)) {
        eprintln!("error: refusing a live run: {err}");
        return Ok(Exit::NotReady.into());
    }
    let (Some(fleet), Some(lock)) = (fleet, lock) else {
        anyhow::bail!("a live run needs a model API (use --sim or set an API key)");
    };
    crate::live::execute(args, config, prepared, fleet, backend, repository, lock).await
}

/// What the estimate goes by: the simulator's latency with --sim, and what agents used in
/// earlier runs of the same kind (simulated or real) recorded in `store`.
pub(crate) fn calibration(
    model: &crate::model_args::ModelArgs,
    store: &fanout_core::store::StoreLocation,
) -> plan::Calibration {
    let simulated = model.simulated();
    let observed = fanout_core::store::StoreReader::open_at(store)
        .and_then(|reader| reader.observed_usage(simulated, 10))
        .unwrap_or_default();
    plan::Calibration {
        call_latency: model
            .sim_latency()
            .map(|latency| (latency, "the simulator's latency".to_owned())),
        instant_output: simulated,
        tool_calls_only: simulated,
        observed,
    }
}

/// Progress on stderr while the orchestrator plans: its model, the call number (repairs are
/// further calls) and the time so far. A line at once, then every few seconds.
fn planning_ticker(config: &Config, options: &PlanOptions) -> tokio::task::JoinHandle<()> {
    let model = config.orchestrator_model().model.clone();
    let progress = options.progress.clone();
    let most = options.max_repairs + 1;
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let every = if terminal {
            std::time::Duration::from_secs(1)
        } else {
            std::time::Duration::from_secs(5)
        };
        loop {
            let call = progress.calls_started().max(1);
            let line = format!(
                "fanout: planning with {model}: call {call} of at most {most}, {}",
                crate::progress::human_duration(started.elapsed())
            );
            if terminal {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            tokio::time::sleep(every).await;
        }
    })
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
/// `overloaded=0.05,api_error=0.02,hang=0.01` → the simulator's fault probabilities.
pub(crate) fn parse_faults(spec: &str) -> Result<Faults, String> {
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
