//! `fanout worker`: lease units of runs in a shared store and run them (the library's
//! `distributed::work`): plan runs' agents, and item runs' chunks through the item runner's
//! `ChunkHandler`. The report goes to stdout as JSON when the worker stops.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use fanout_core::backend::Backend;
use fanout_core::distributed::{UnitHandler, UnitHandlers, WorkerOptions, work};
use fanout_core::ids::RunId;
use fanout_core::items::run::ChunkHandler;
use fanout_core::store::StoreLocation;
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::model_args::ModelArgs;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The shared run store: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB`, or a SQLite file
    /// for workers on one machine. Default: $FANOUT_STORE.
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<String>,
    /// Units run at once.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub slots: usize,
    /// Where run bases and unit trees are made (default: fanout-worker in the temporary
    /// directory). The user's repository is never needed.
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Only units of this run.
    #[arg(long, value_name = "RUN_ID")]
    pub run: Option<RunId>,
    /// Stop once the run (`--run`) has no unit left to lease.
    #[arg(long, requires = "run")]
    pub exit_when_done: bool,
    /// How long a lease lasts without a heartbeat (heartbeats come every third of it).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub lease_seconds: u64,
    /// Tries of one agent under a lease on transient failures (provider errors), the first
    /// included: the same default as a local run's.
    #[arg(long, default_value_t = fanout_core::attempt::AGENT_ATTEMPTS, value_name = "N")]
    pub max_attempts: u32,
    /// How long the run store may be unreachable (a restart, a dropped network) before the
    /// worker gives up on it; until then every store operation is retried with backoff.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub store_patience_seconds: u64,
    /// This worker's name on its leases (default: host, process id and start time).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let store = StoreLocation::resolve(args.store.as_deref(), &cwd)?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("fanout-worker"));
    let owner = args.name.clone().unwrap_or_else(default_name);
    let mut options = WorkerOptions::new(store, cache, args.slots, owner.clone());
    options.lease = Duration::from_secs(args.lease_seconds.max(3));
    options.run = args.run.clone();
    options.exit_when_done = args.exit_when_done;
    // Item runs' chunks too: the item runner's handler, which the library's worker cannot
    // name itself (it sits below the item runner).
    let chunks: Arc<dyn UnitHandler> = Arc::new(ChunkHandler::new());
    options.handlers = UnitHandlers::new(vec![chunks]);
    options.max_attempts = args.max_attempts.max(1);
    options.store_patience = Duration::from_secs(args.store_patience_seconds);
    let backend = Arc::new(Backend::start(&args.model.target(), args.model.http()).await?);
    let cancel = CancellationToken::new();
    stop_on_signals(cancel.clone());
    eprintln!(
        "fanout worker {owner}: leasing from {} with {} slot(s)",
        options.store, options.slots
    );
    let report = work(options, Arc::clone(&backend), &cancel).await;
    if let Ok(backend) = Arc::try_unwrap(backend) {
        backend.shutdown().await;
    }
    let report = report?;
    println!("{}", serde_json::to_string(&report)?);
    eprintln!(
        "fanout worker {owner}: {} committed, {} failed, {} lost, {} abandoned, {} errors; \
         {} attempts ({} escalated, {} retried); {} store retries",
        report.committed,
        report.failed,
        report.lost,
        report.abandoned,
        report.errors,
        report.attempts,
        report.escalated,
        report.retried,
        report.store_retries
    );
    if cancel.is_cancelled() {
        return Ok(Exit::Cancelled.into());
    }
    Ok(if report.errors == 0 {
        Exit::Success
    } else {
        Exit::Partial
    }
    .into())
}

/// SIGINT or SIGTERM: stop leasing and abandon running units (their leases expire; nothing
/// is released or committed).
fn stop_on_signals(cancel: CancellationToken) {
    tokio::spawn(async move {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        eprintln!("fanout worker: stopping; running units are abandoned to their leases");
        cancel.cancel();
    });
}

fn default_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|text| text.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned());
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default();
    format!("{host}:{}:{started}", std::process::id())
}
