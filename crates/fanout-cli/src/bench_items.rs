//! `fanout bench items`: item work at scale. 10,000 synthetic items in chunks of 10 (1,000
//! chunk workers) run through the real item runner (scheduler, fleet, run store, journal,
//! ledger, outputs) against a simulator child process at 500 ms latency, with 1,000 workers
//! in flight.
//!
//! The bill: the run's dollars (cache writes and reads at their prices) and the simulator's
//! cache counters; `--instructions-bytes` gives the workers a labelling guide of that size (the
//! prefix every chunk shares), `--no-cache` turns prompt caching off to compare.
//!
//! The floor is the latency chain: `ceil(chunks / workers) × latency` (every chunk is one call
//! when the simulator answers every item). Reported: makespan of the run (from the first
//! dispatch to the last settlement, outputs included) against that floor, calls, the
//! accounting (every item once), peak RSS and CPU of this process (the simulator is a child).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use fanout_core::config::Config;
use fanout_core::fleet::Fleet;
use fanout_core::governor::{Governor, GovernorConfig};
use fanout_core::items::Item;
use fanout_core::items::run::{EventSink, ItemEvent, ItemJob, RunOptions};
use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::batch::PollPolicy;
use fanout_core::retry::{RetryBudget, RetryBudgetConfig, RetryPolicy};
use fanout_core::store::Store;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::bench::ChildSim;
use crate::usage;

#[derive(Args, Debug, Clone)]
pub struct BenchItemsArgs {
    /// Number of synthetic items.
    #[arg(long, default_value_t = 10_000)]
    items: usize,
    /// Items per chunk (one worker call each).
    #[arg(long, default_value_t = 10)]
    chunk_size: usize,
    /// Workers in flight at once (`max_parallel_agents`).
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Simulator latency per call, in milliseconds.
    #[arg(long, default_value_t = 500)]
    latency_ms: u64,
    /// Bytes of labelling guide appended to the worker instructions (the prefix every chunk
    /// shares); 0 for the one-line instructions.
    #[arg(long, default_value_t = 0)]
    instructions_bytes: usize,
    /// Turn prompt caching off (`workflow.prompt_caching: false`), to compare the bill.
    #[arg(long)]
    no_cache: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Have the simulator append every exchange (with its arrival time) to this JSONL file.
    #[arg(long, value_name = "FILE")]
    sim_record: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct ItemsReport {
    items: usize,
    chunks: usize,
    workers: usize,
    succeeded: usize,
    failed: usize,
    calls: u64,
    makespan_s: f64,
    floor_s: f64,
    ratio_to_floor: f64,
    prepare_s: f64,
    cpu_s: f64,
    peak_rss_mib: f64,
    prompt_caching: bool,
    /// The run's dollars, as the run store counts them.
    dollars: f64,
    /// The simulator's count of input tokens read from and written to its prompt cache.
    cache_read_tokens: u64,
    cache_creation_tokens: u64,
    /// When things happened, in seconds from the start of the run.
    phases: PhaseReport,
}

/// First and last time each kind of event was seen, in seconds from the run's start: where
/// the makespan goes beyond the latency chain.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct PhaseReport {
    first_call_started_s: f64,
    last_call_started_s: f64,
    first_call_finished_s: f64,
    last_call_finished_s: f64,
    first_chunk_settled_s: f64,
    last_chunk_settled_s: f64,
}

struct Phases {
    started: tokio::time::Instant,
    seen: std::sync::Mutex<[Option<(f64, f64)>; 3]>,
}

impl Phases {
    fn new(started: tokio::time::Instant) -> Phases {
        Phases {
            started,
            seen: std::sync::Mutex::new([None; 3]),
        }
    }

    fn see(&self, event: &ItemEvent) {
        let slot = match event {
            ItemEvent::CallStarted { .. } => 0,
            ItemEvent::CallFinished { .. } => 1,
            ItemEvent::ChunkSettled { .. } => 2,
            _ => return,
        };
        let at = self.started.elapsed().as_secs_f64();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = seen[slot].get_or_insert((at, at));
        entry.0 = entry.0.min(at);
        entry.1 = entry.1.max(at);
    }

    fn report(&self) -> PhaseReport {
        let seen = *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let [started, finished, settled] = seen.map(Option::unwrap_or_default);
        PhaseReport {
            first_call_started_s: started.0,
            last_call_started_s: started.1,
            first_call_finished_s: finished.0,
            last_call_finished_s: finished.1,
            first_chunk_settled_s: settled.0,
            last_chunk_settled_s: settled.1,
        }
    }
}

fn workflow(workers: usize, chunk_size: usize, guide_bytes: usize, caching: bool) -> String {
    let mut guide = String::new();
    let mut rule = 0;
    while guide.len() < guide_bytes {
        guide.push_str(&format!(
            " Rule {rule}: a note that mentions an invoice, an export or a delay is a complaint unless it thanks someone; score it by how urgent it reads."
        ));
        rule += 1;
    }
    format!(
        r#"workflow:
  name: bench-items
  max_parallel_agents: {workers}
  prompt_caching: {caching}
  mode_routing:
    items_worker: fast
  items:
    input: {{path: synthetic.jsonl}}
    chunking: {{strategy: fixed, size: {chunk_size}}}
    worker:
      instructions: "Label each note and score it from 0 to 10.{guide}"
      max_tokens: 2048
      output_schema:
        type: object
        properties:
          label: {{enum: [question, complaint, praise]}}
          score: {{type: integer, minimum: 0, maximum: 10}}
        required: [label, score]
        additionalProperties: false
"#
    )
}

pub async fn run(args: BenchItemsArgs) -> anyhow::Result<ExitCode> {
    if args.items == 0 || args.chunk_size == 0 || args.workers == 0 {
        bail!("--items, --chunk-size and --workers must be at least 1");
    }
    let mut sim_options = vec![
        "--latency-ms".to_string(),
        args.latency_ms.to_string(),
        "--seed".to_string(),
        "7".to_string(),
    ];
    if let Some(record) = &args.sim_record {
        sim_options.extend(["--record".to_string(), record.display().to_string()]);
    }
    let child = ChildSim::start(&sim_options).await?;
    let root = tempfile::tempdir().context("cannot create a temporary directory")?;
    let prepare_started = tokio::time::Instant::now();
    let config = Config::from_str(
        &workflow(
            args.workers,
            args.chunk_size,
            args.instructions_bytes,
            !args.no_cache,
        ),
        root.path().join("bench-items.yaml"),
    )
    .context("the benchmark's workflow")?;
    let items: Vec<Item> = (0..args.items)
        .map(|i| {
            Item::new(
                format!("note-{i:05}"),
                serde_json::json!({"text": format!("Note {i}: the invoice export was slow again today, please look into it.")}),
            )
        })
        .collect();
    let job = Arc::new(ItemJob::with_items(&config, items)?);
    let chunks = job.chunks.len();
    let provider = Arc::new(AnthropicProvider::new(AnthropicConfig {
        base_url: child.base_url.clone(),
        ..AnthropicConfig::new("sim-key")
    })?);
    let fleet = Fleet::new(
        provider,
        Governor::new(GovernorConfig {
            max_in_flight: args.workers,
            // The simulator sends no limit headers here: this measures the engine, not the
            // discovery of limits (scripts/bench_ratelimits.py measures that).
            probe_unknown_limits: false,
            ..GovernorConfig::default()
        }),
        RetryPolicy::default(),
        Arc::new(RetryBudget::new(RetryBudgetConfig::default())),
    );
    let store = Store::open_in_repo(root.path())?;
    let prepare = prepare_started.elapsed();
    let started = tokio::time::Instant::now();
    let phases = Arc::new(Phases::new(started));
    let sink: EventSink = {
        let phases = Arc::clone(&phases);
        Arc::new(move |event| phases.see(event))
    };
    let report = fanout_core::items::run::run(
        job,
        fleet,
        store.clone(),
        RunOptions {
            root: root.path().to_path_buf(),
            resume: None,
            run_id: None,
            batch: None,
            poll: PollPolicy::default(),
            share: None,
        },
        CancellationToken::new(),
        sink,
    )
    .await?;
    let makespan = started.elapsed().as_secs_f64();
    let phases = phases.report();
    let server = child.stats().await.ok();
    let server_count = |key: &str| {
        server
            .as_ref()
            .and_then(|s| s.get(key))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let _ = store.close().await;
    let resources = usage::current();
    let rounds = chunks.div_ceil(args.workers) as f64;
    let floor = rounds * Duration::from_millis(args.latency_ms).as_secs_f64();
    let out = ItemsReport {
        items: report.summary.items,
        chunks,
        workers: args.workers,
        succeeded: report.summary.succeeded,
        failed: report.summary.failed,
        calls: report.calls,
        makespan_s: makespan,
        floor_s: floor,
        ratio_to_floor: makespan / floor.max(1e-9),
        prepare_s: prepare.as_secs_f64(),
        cpu_s: resources.cpu().as_secs_f64(),
        peak_rss_mib: resources.peak_rss_kib as f64 / 1024.0,
        prompt_caching: !args.no_cache,
        dollars: report.cost_usd,
        cache_read_tokens: server_count("cache_read_tokens"),
        cache_creation_tokens: server_count("cache_creation_tokens"),
        phases,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("items benchmark");
        println!(
            "  items             {} in {} chunks ({} succeeded, {} failed)",
            out.items, out.chunks, out.succeeded, out.failed
        );
        println!("  workers in flight {}", out.workers);
        println!("  worker calls      {}", out.calls);
        println!("  makespan          {:.3} s", out.makespan_s);
        println!("  floor             {:.3} s (latency chain)", out.floor_s);
        println!(
            "  ratio to floor    {:.3} (target <= 1.3)",
            out.ratio_to_floor
        );
        println!(
            "  preparation       {:.3} s (not in the makespan)",
            out.prepare_s
        );
        println!("  engine CPU        {:.2} s", out.cpu_s);
        println!("  engine peak RSS   {:.1} MiB", out.peak_rss_mib);
        println!(
            "  bill              ${:.4} (prompt caching {}: {} tokens read from cache, {} written)",
            out.dollars,
            if out.prompt_caching { "on" } else { "off" },
            out.cache_read_tokens,
            out.cache_creation_tokens
        );
        let p = &out.phases;
        println!(
            "  calls started     {:.3} .. {:.3} s",
            p.first_call_started_s, p.last_call_started_s
        );
        println!(
            "  calls finished    {:.3} .. {:.3} s",
            p.first_call_finished_s, p.last_call_finished_s
        );
        println!(
            "  chunks settled    {:.3} .. {:.3} s",
            p.first_chunk_settled_s, p.last_chunk_settled_s
        );
    }
    drop(child);
    Ok(if out.failed == 0 && out.items == args.items {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
