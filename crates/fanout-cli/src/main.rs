//! The `fanout` command: parses arguments, calls the library, renders results.
//!
//! Commands live in their own modules; this file only dispatches. stdout carries answers
//! (or JSON with `--json`); progress and diagnostics go to stderr.

mod bench;
mod bench_distributed;
mod bench_items;
mod bench_plan;
mod bench_process;
mod bench_run;
mod bench_sandbox;
mod bench_sim;
mod config_cmd;
mod exit;
mod items_cmd;
mod live;
mod mcp;
mod model_args;
mod progress;
mod report_cmd;
mod resume_cmd;
mod run_cmd;
mod store_cmd;
mod traces;
mod usage;
mod worker_cmd;

use std::process::ExitCode;

/// Threads for blocking work (file tools, pre-images, git for checkpoints). File work on a
/// small machine gains nothing from tokio's default of 512 threads, and each costs a stack
/// and a wake-up; past this many, blocking jobs queue.
pub(crate) const MAX_BLOCKING_THREADS: usize = 64;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    version,
    about = "Dynamic workflows: one orchestrator call plans, up to 1,000+ scoped sub-agents run in parallel."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a local stand-in for the Anthropic and OpenAI model APIs (same wire format, real
    /// rate limits, faults and scenario scripts).
    Sim(fanout_sim::cli::SimArgs),
    /// Drive a burst of model requests through the fleet-wide rate governor and report the
    /// makespan against the physical floor.
    Bench(bench::BenchArgs),
    /// Print the JSON Schema of workflow files, for editors.
    Schema(config_cmd::SchemaArgs),
    /// Write a commented starter workflow file.
    Init(config_cmd::InitArgs),
    /// Plan a workflow and run it (`--dry-run`: plan, check permissions, estimate, stop).
    Run(run_cmd::RunArgs),
    /// Plan a workflow and print the dry-run report (same as `fanout run --dry-run`).
    Plan(run_cmd::RunArgs),
    /// List the runs recorded in this repository, newest first.
    Runs(store_cmd::RunsArgs),
    /// Show one run (its agents and checkpoints), or one agent of it in detail.
    Show(store_cmd::ShowArgs),
    /// Write one run as a self-contained HTML page (timeline, costs, checkpoints, denials,
    /// files; for item runs, counts and failures).
    Report(report_cmd::ReportArgs),
    /// Finish a run that was killed, cancelled or ended partial: agents that succeeded are kept,
    /// the others are rolled back and run again.
    Resume(resume_cmd::ResumeArgs),
    /// Restore the working tree to a run's checkpoint (default: as it was before the run).
    Rollback(store_cmd::RollbackArgs),
    /// Serve fanout to an agent (Claude Code, Codex, Cursor…) as a Model Context Protocol
    /// server: plan_workflow, start_run, run_status, run_result, cancel_run, resume_run,
    /// list_runs (stdio, or streamable HTTP with --http).
    Mcp(mcp::McpArgs),
    /// Lease units (agents) of runs in a shared run store and run them in a cache of this
    /// machine's: many workers on many machines share one run.
    Worker(worker_cmd::WorkerArgs),
}

/// mimalloc, without transparent huge pages. A fleet allocates and frees from every thread at
/// once (requests built on one worker, answers parsed on another, rows written on the store's
/// thread); glibc's arenas spent a fifth of the engine's time in `bench items` on that, and
/// mimalloc takes 30% less CPU there. Huge pages are off because with them `bench run`'s
/// peak RSS went from 140 to 220 MiB. Figures in BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Before the runtime starts its threads (see `fanout_core::process`). Best effort: a
    // process that cannot raise its limits runs as it would have anyway.
    let _ = fanout_core::process::prepare_descriptors();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(70);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            exit::Exit::of_error(&err).into()
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Sim(args) => run_sim(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Schema(args) => config_cmd::run_schema(args),
        Command::Init(args) => config_cmd::run_init(args),
        Command::Runs(args) => store_cmd::run_runs(args),
        Command::Show(args) => store_cmd::run_show(args),
        Command::Report(args) => report_cmd::run(args),
        Command::Rollback(args) => store_cmd::run_rollback(args).await,
        Command::Run(args) => run_cmd::run(args).await,
        Command::Resume(args) => resume_cmd::run(args).await,
        Command::Plan(args) => run_cmd::run_plan(args).await,
        Command::Mcp(args) => mcp::run(args).await,
        Command::Worker(args) => worker_cmd::run(args).await,
    }
}

async fn run_sim(args: fanout_sim::cli::SimArgs) -> anyhow::Result<ExitCode> {
    let (config, addr) = args.to_config().context("invalid simulator options")?;
    let handle = fanout_sim::Sim::start(config, addr)
        .await
        .context("cannot start the simulator")?;
    // The first stdout line is the address, so scripts can read the port when --port 0.
    println!("fanout sim listening on {}", handle.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    eprintln!("fanout sim: shutting down");
    handle.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
