//! `fanout run FILE` for a workflow with `items:` (item work): no repository scan and no
//! orchestrator plan; the items are read, chunked and sent to workers by
//! `fanout_core::items::run`.
//!
//! `--dry-run` prints the job's plan (items, chunks, estimated tokens, the online and the
//! halved batch price, the chunking, the worker instructions and output schema). A live run
//! shows progress on stderr and prints the summary on stdout (`--json`: the report as JSON).
//!
//! `fanout run` always starts a new run. A run that was killed or cancelled is continued with
//! `fanout resume RUN_ID` ([`resume`], dispatched from `crate::resume_cmd`): items its journal
//! settled are kept and no settled chunk is sent again.
//!
//! `--local-slots N` shares the run with `fanout worker` processes through the run store
//! (`fanout_core::items::run::Share`): the chunks become units that workers lease, this
//! process settles what they commit (and runs N units itself); the outputs are a local run's.
//! A resumed shared run stays shared.
//!
//! One process per run: the run holds the exclusive lock on `.fanout/runs/<run_id>/run.lock`
//! (`fanout_core::run::lock::RunLock`) from before its first record to
//! its end, so a `fanout resume` of a run that is still going is refused.
//!
//! Exit codes: 0 complete, 2 invalid workflow or unreadable input, 4 another process is
//! running it, 5 partial (some items failed), 6 failed (no item succeeded), 130 cancelled.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::config::items::{ChunkingConfig, Execution, ItemIdConfig};
use fanout_core::fleet::Fleet;
use fanout_core::items::output::Completion;
use fanout_core::items::propose::{self, ItemProposal, SavedProposal};
use fanout_core::items::run::{
    EventSink, ItemEvent, ItemJob, ItemReport, RunOptions, Share, WORKER_ROLE, load_items,
};
use fanout_core::items::worker::{OutputRoute, SUBMIT_TOOL};
use fanout_core::plan::RunId;
use fanout_core::provider::batch::PollPolicy;
use fanout_core::store::{RunStatus, Store};
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;
use crate::progress::{Progress, ProgressStyle, Tally, handle_interrupts};
use crate::run_cmd::RunArgs;
use fanout_core::run::lock::RunLock;

/// `fanout run FILE` when the workflow has `items:`: always a new run.
pub async fn run(args: RunArgs, config: Config) -> anyhow::Result<ExitCode> {
    let root = args
        .repo
        .clone()
        .unwrap_or_else(|| config.repository.clone());
    execute(&args, config, root, None, None).await
}

/// `fanout run FILE --retry-failed RUN_ID` for an item run: a new run that sends again only
/// the items `RUN_ID` failed in a way sending again can fix, and carries its results over.
pub async fn retry_failed(
    args: RunArgs,
    config: Config,
    root: PathBuf,
    run_id: RunId,
) -> anyhow::Result<ExitCode> {
    execute(&args, config, root, None, Some(run_id)).await
}

/// `fanout resume RUN_ID` for an item run: `workflow` is the job record's workflow path
/// (`fanout_core::items::run::item_run(root, run_id)`), `args` carries `--sim` and friends.
pub async fn resume(
    args: RunArgs,
    config: Config,
    root: PathBuf,
    run_id: RunId,
) -> anyhow::Result<ExitCode> {
    execute(&args, config, root, Some(run_id), None).await
}

async fn execute(
    args: &RunArgs,
    config: Config,
    root: PathBuf,
    resume: Option<RunId>,
    retry_of: Option<RunId>,
) -> anyhow::Result<ExitCode> {
    // A resumed retry run rebuilds its job from the run it retries.
    let retry_of = retry_of.or_else(|| {
        resume
            .as_ref()
            .and_then(|run_id| fanout_core::items::run::item_run(&root, run_id))
            .and_then(|record| record.retry_of)
    });
    let llm = config
        .items
        .as_ref()
        .is_some_and(|items| matches!(items.chunking, ChunkingConfig::Llm { .. }));
    // A model is needed to run, and for a dry run that must ask the orchestrator for the
    // item plan (`strategy: llm` without a reviewed `--plan`).
    let needs_model = !args.dry_run || (llm && args.plan.is_none() && resume.is_none());
    let backend = Arc::new(if needs_model {
        Backend::start(&args.model.target(), args.model.http()).await?
    } else {
        Backend::api(args.model.http())
    });
    let result = prepare_and_run(args, config, root, resume, retry_of, &backend, llm).await;
    // A shared run's own worker holds the backend until it stops.
    if let Ok(backend) = Arc::try_unwrap(backend) {
        backend.shutdown().await;
    }
    result
}

async fn prepare_and_run(
    args: &RunArgs,
    config: Config,
    root: PathBuf,
    resume: Option<RunId>,
    retry_of: Option<RunId>,
    backend: &Arc<Backend>,
    llm: bool,
) -> anyhow::Result<ExitCode> {
    if !llm && let Some(plan) = &args.plan {
        eprintln!(
            "error: --plan {} is for repository plans and `chunking.strategy: llm` item plans; \
             this item workflow chunks by its own settings (remove --plan)",
            plan.display()
        );
        return Ok(Exit::Config.into());
    }
    let prepared = if let Some(from) = &retry_of {
        if llm {
            eprintln!(
                "error: --retry-failed is not supported for `chunking.strategy: llm` item runs yet"
            );
            return Ok(Exit::Config.into());
        }
        let (config, root, from) = (config.clone(), root.clone(), from.clone());
        tokio::task::spawn_blocking(move || {
            let items = config
                .items
                .as_ref()
                .ok_or(fanout_core::items::run::ItemsError::NotItemWork)?;
            let loaded = load_items(items)?;
            ItemJob::retry_of(&config, &root, &from, loaded)
        })
        .await
        .context("the item loader crashed")?
        .map(|job| (job, None))
        .map_err(|err| err.to_string())
    } else if llm {
        prepare_with_proposal(args, &config, &root, resume.as_ref(), backend).await?
    } else {
        let config = config.clone();
        tokio::task::spawn_blocking(move || ItemJob::from_config(&config))
            .await
            .context("the item loader crashed")?
            .map(|job| (job, None))
            .map_err(|err| err.to_string())
    };
    let (job, proposal) = match prepared {
        Ok((job, proposal)) => (Arc::new(job), proposal),
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(Exit::Config.into());
        }
    };
    // Lines that are not items: all listed now (not one per run), run as failures.
    if !job.problems.is_empty() && !args.json {
        eprintln!(
            "warning: {} input line(s) are not items; they go to failed.jsonl and are never \
             sent (`items.input.on_invalid: fail` stops the job instead):\n{}",
            job.problems.len(),
            fanout_core::items::run::problem_list(&job.problems)
        );
    }
    if let Some(carried) = &job.carried {
        let verb = if args.dry_run { "would send" } else { "sends" };
        eprintln!(
            "fanout: retrying run {}: {verb} {} item(s) again; {} result(s) and {} failure(s) \
             that sending again cannot fix are carried over",
            carried.from_run,
            job.items.len(),
            carried.results.len(),
            carried.failures.len() + job.problems.len()
        );
        if args.dry_run {
            for item in job.items.iter().take(20) {
                println!("  {}", item.id);
            }
            if job.items.len() > 20 {
                println!("  … and {} more", job.items.len() - 20);
            }
            return Ok(ExitCode::SUCCESS);
        }
        if job.items.is_empty() {
            eprintln!("fanout: nothing to retry");
            return Ok(Exit::NothingToDo.into());
        }
    }
    // Nothing to do is not "complete".
    if job.items.is_empty() && job.problems.is_empty() && resume.is_none() {
        eprintln!(
            "warning: the input has no items ({}); nothing to do",
            config
                .items
                .as_ref()
                .map(|items| items.input.path.display().to_string())
                .unwrap_or_default()
        );
        return Ok(Exit::NothingToDo.into());
    }
    if args.dry_run {
        // The proposal is saved for review under a run id of its own; `--plan` runs it.
        let saved = match &proposal {
            Some(proposal) if args.plan.is_none() => {
                let run_id = RunId::new(SystemTime::now());
                Some(propose::save(&root, &run_id, proposal)?)
            }
            _ => None,
        };
        let text = if args.json {
            let mut text = serde_json::to_string_pretty(&dry_run_json(
                &config,
                &job,
                proposal.as_ref(),
                saved.as_ref(),
            ))?;
            text.push('\n');
            text
        } else {
            // The suggested command runs where this one did: simulated if this was.
            let sim = args.model.flag();
            render_plan(&config, &job, proposal.as_ref(), saved.as_ref(), sim)
        };
        write_stdout(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    live(args, &config, job, root, resume, backend, proposal).await
}

/// Load the items and get the item plan of a `strategy: llm` workflow: the one a resumed run
/// saved, a reviewed `--plan` file, or a new proposal from the orchestrator. `Err` is a
/// message for the user (exit code 2).
async fn prepare_with_proposal(
    args: &RunArgs,
    config: &Config,
    root: &std::path::Path,
    resume: Option<&RunId>,
    backend: &Backend,
) -> anyhow::Result<Result<(ItemJob, Option<ItemProposal>), String>> {
    let Some(items_config) = config.items.clone() else {
        return Ok(Err("the workflow has no `items:` section".to_owned()));
    };
    let given = items_config.worker.output_schema.clone();
    let loaded = match tokio::task::spawn_blocking(move || load_items(&items_config))
        .await
        .context("the item loader crashed")?
    {
        Ok(loaded) => loaded,
        Err(err) => return Ok(Err(err.to_string())),
    };
    let (items, problems) = (loaded.items, loaded.problems);
    let reviewed = match (resume, &args.plan) {
        (Some(run_id), _) => Some(propose::proposal_path(root, run_id)),
        (None, Some(path)) => Some(path.clone()),
        (None, None) => None,
    };
    let proposal = match reviewed {
        Some(path) => match propose::load(&path, given.as_ref(), &config.name) {
            Ok(loaded) => {
                if loaded.edited_since_review() {
                    eprintln!(
                        "note: {} was edited after its dry run; running it as it is now",
                        path.display()
                    );
                }
                loaded.proposal
            }
            Err(err) => return Ok(Err(err.to_string())),
        },
        None => {
            let orchestrator = config.orchestrator_model();
            let fleet = backend.fleet(config)?;
            eprintln!(
                "fanout: asking {} for an item plan (chunking, instructions, record fields)",
                orchestrator.model
            );
            match propose::propose(&fleet, config, &items, &CancellationToken::new()).await {
                Ok(proposal) => proposal,
                Err(err) => return Ok(Err(err.to_string())),
            }
        }
    };
    let mut job = match ItemJob::with_proposal(config, items, &proposal) {
        Ok(job) => job,
        Err(err) => return Ok(Err(err.to_string())),
    };
    job.problems = problems;
    Ok(Ok((job, Some(proposal))))
}

async fn live(
    args: &RunArgs,
    config: &Config,
    job: Arc<ItemJob>,
    root: PathBuf,
    resume: Option<RunId>,
    backend: &Arc<Backend>,
    proposal: Option<ItemProposal>,
) -> anyhow::Result<ExitCode> {
    let worker = config.model_for_role(WORKER_ROLE);
    let fleet = backend.fleet_on(config, worker.provider)?;
    let (batch, poll) = match job.execution {
        Execution::Online => (None, PollPolicy::default()),
        Execution::Batch => (
            Some(backend.batch_client(worker.provider)?),
            backend.poll_policy(),
        ),
    };
    // The run's id is chosen here so that its lock is held before its first record.
    let run_id = resume
        .clone()
        .unwrap_or_else(|| RunId::new(SystemTime::now()));
    let _lock = match RunLock::acquire(&root, &run_id) {
        Ok(lock) => lock,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(Exit::NotReady.into());
        }
    };
    let location = args.store.location(&root)?;
    let store = Store::open_at(&location)
        .with_context(|| format!("cannot open the run store {location}"))?;
    let share = match share(args, config, &location, resume.as_ref(), &run_id, backend) {
        Ok(share) => share,
        Err(message) => {
            eprintln!("error: {message}");
            let _ = store.close().await;
            return Ok(Exit::Config.into());
        }
    };
    // The run keeps the item plan it runs with, so that a resume uses the same one.
    if let Some(proposal) = &proposal
        && resume.is_none()
    {
        propose::save(&root, &run_id, proposal)?;
    }
    if let Some(run_id) = &resume {
        eprintln!("fanout: continuing item run {run_id} (settled chunks are not sent again)");
    }
    if let Some(share) = &share
        && !args.json
    {
        eprintln!(
            "fanout: item run {run_id} shared through {location} with {} chunk(s) at a time on this machine; start workers with `fanout worker --store {}`",
            share.local_slots,
            crate::live::shell_word(&location.to_string())
        );
    }
    let cancel = CancellationToken::new();
    let followup = crate::live::Followup::new(&root, args.model.simulated());
    handle_interrupts(
        cancel.clone(),
        format!("fanout resume {run_id}{}{}", followup.repo, followup.sim),
    );
    let style = ProgressStyle::detect(args.json);
    let display = Arc::new(Mutex::new(Display {
        progress: Progress::new(style),
        tally: Tally {
            // Batches, and a shared run's workers, do not go through this process's governor.
            ungoverned: job.execution == Execution::Batch || share.is_some(),
            ..Tally::default()
        },
        fast: job.worker_mode == fanout_core::config::Mode::Fast,
        fleet: fleet.clone(),
    }));
    let sink: EventSink = {
        let display = Arc::clone(&display);
        Arc::new(move |event: &ItemEvent| {
            display
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .see(event);
        })
    };
    let traced = (root.clone(), run_id.clone());
    let options = RunOptions {
        root,
        resume,
        run_id: Some(run_id),
        batch,
        poll,
        share,
    };
    // Redraw while nothing finishes too: queues for the limits, the retry budget and an
    // outage's probes are what a long quiet stretch is made of.
    let ticker = {
        let display = Arc::clone(&display);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                display
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .tick();
            }
        })
    };
    let result =
        fanout_core::items::run::run(job, fleet, store.clone(), options, cancel, sink).await;
    ticker.abort();
    {
        let mut display = display.lock().unwrap_or_else(PoisonError::into_inner);
        let tally = display.tally;
        display.progress.finish(&tally);
    }
    let _ = store.close().await;
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Failed.into());
        }
    };
    crate::traces::export(&traced.0, &location, &traced.1).await;
    // With --json, stdout is JSON lines: the progress events, then the report as the last line.
    let text = if args.json {
        let mut text = serde_json::to_string(&report)?;
        text.push('\n');
        text
    } else {
        render_summary(&report, args.model.simulated())
    };
    write_stdout(&text)?;
    Ok(exit_code(&report))
}

/// Whether the run is shared with `fanout worker` processes, and how: a new run with
/// `--local-slots N`; a resumed run if it was published (its own `--local-slots`, else 0).
/// `Err` is a message for the user.
fn share(
    args: &RunArgs,
    config: &Config,
    location: &fanout_core::store::StoreLocation,
    resume: Option<&RunId>,
    run_id: &RunId,
    backend: &Arc<Backend>,
) -> Result<Option<Share>, String> {
    let slots = match resume {
        None => args.local_slots,
        Some(run) => {
            let published = fanout_core::store::StoreReader::open_at(location)
                .and_then(|reader| reader.run_plan(run))
                .map_err(|err| err.to_string())?
                .is_some();
            match (published, args.local_slots) {
                (true, slots) => Some(slots.unwrap_or(0)),
                (false, None) => None,
                (false, Some(_)) => {
                    return Err(format!(
                        "run {run} was not shared with workers; resume it without --local-slots"
                    ));
                }
            }
        }
    };
    let Some(local_slots) = slots else {
        return Ok(None);
    };
    if config
        .items
        .as_ref()
        .is_some_and(|items| items.execution == Execution::Batch)
    {
        return Err(
            "an `execution: batch` item run cannot be shared with workers; run it without \
             --local-slots"
                .to_owned(),
        );
    }
    let workflow = std::fs::read_to_string(&config.origin)
        .map_err(|err| format!("cannot read {}: {err}", config.origin.display()))?;
    Ok(Some(Share {
        workflow,
        local_slots,
        backend: Some(Arc::clone(backend)),
        cache: std::env::temp_dir().join(format!(
            "fanout-coordinator-{}-{run_id}",
            std::process::id()
        )),
    }))
}

/// The exit code of a finished run.
pub fn exit_code(report: &ItemReport) -> ExitCode {
    if report.status == RunStatus::Cancelled {
        return Exit::Cancelled.into();
    }
    match report.completion() {
        Completion::Complete => ExitCode::SUCCESS,
        Completion::Partial => Exit::Partial.into(),
        Completion::Failed => Exit::Failed.into(),
    }
}

struct Display {
    progress: Progress,
    tally: Tally,
    fast: bool,
    /// The worker fleet, whose governor and retry budget the status line shows.
    fleet: Fleet,
}

impl Display {
    fn see(&mut self, event: &ItemEvent) {
        self.progress.event(event);
        let tally = &mut self.tally;
        match event {
            ItemEvent::Started { chunks_to_send, .. } => tally.total = *chunks_to_send,
            ItemEvent::CallStarted { .. } => tally.running += 1,
            ItemEvent::CallFinished {
                input_tokens,
                output_tokens,
                cache_read_tokens,
                cost_usd,
                ..
            } => {
                tally.running = tally.running.saturating_sub(1);
                tally.finished_input_tokens += input_tokens;
                tally.cache_read_tokens += cache_read_tokens;
                let tokens = input_tokens + output_tokens;
                if self.fast {
                    tally.tokens_fast += tokens;
                } else {
                    tally.tokens_default += tokens;
                }
                tally.dollars += cost_usd;
            }
            ItemEvent::ChunkSettled { failed, .. } => {
                if *failed == 0 {
                    tally.done += 1;
                } else {
                    tally.failed += 1;
                }
            }
            _ => {}
        }
        tally.observe_fleet(&self.fleet);
        let tally = self.tally;
        self.progress.update(&tally);
    }

    fn tick(&mut self) {
        if self.tally.total == 0 {
            return;
        }
        self.tally.observe_fleet(&self.fleet);
        let tally = self.tally;
        self.progress.update(&tally);
    }
}

fn chunking_text(chunking: &ChunkingConfig) -> String {
    match chunking {
        ChunkingConfig::PerItem => "per_item (one item per chunk)".to_owned(),
        ChunkingConfig::Fixed { size } => format!("fixed ({size} items per chunk)"),
        ChunkingConfig::TokenBudget {
            max_items,
            share_of_minute,
            max_input_tokens,
        } => {
            let mut text = format!(
                "token_budget (at most {max_input_tokens} input tokens, {}% of the input-tokens/min limit",
                share_of_minute * 100.0
            );
            if let Some(max) = max_items {
                let _ = write!(text, ", at most {max} items");
            }
            text.push(')');
            text
        }
        ChunkingConfig::Llm { sample } => {
            format!("llm (proposed by the orchestrator from {sample} sampled items)")
        }
    }
}

fn render_plan(
    config: &Config,
    job: &ItemJob,
    proposal: Option<&ItemProposal>,
    saved: Option<&SavedProposal>,
    sim: &str,
) -> String {
    let Some(items) = &config.items else {
        return String::new();
    };
    let estimate = job.estimate();
    let largest = job.chunks.iter().map(|c| c.items.len()).max().unwrap_or(0);
    let mut out = String::new();
    let _ = writeln!(out, "Item job: {} ({})", job.name, config.origin.display());
    let id = match &items.input.id {
        ItemIdConfig::Default => "default".to_owned(),
        ItemIdConfig::Field(field) => format!("field `{field}`"),
        ItemIdConfig::Position { zero_pad } => {
            format!("position{}", if *zero_pad { ", zero-padded" } else { "" })
        }
    };
    let _ = writeln!(
        out,
        "  input       {} ({}, id: {id})",
        items.input.path.display(),
        format!("{:?}", items.input.format).to_lowercase()
    );
    let _ = writeln!(out, "  items       {}", estimate.items);
    let _ = writeln!(
        out,
        "  chunks      {} (largest {largest} items{})",
        estimate.chunks,
        if estimate.oversized_chunks > 0 {
            format!(", {} oversized", estimate.oversized_chunks)
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "  chunking    {}", chunking_text(&job.chunking));
    let _ = writeln!(
        out,
        "  worker      {} ({} mode), answers through {}, max_tokens {}",
        job.worker_model.model,
        job.worker_mode.as_str(),
        match items.worker.output {
            OutputRoute::Tool => format!("the tool `{SUBMIT_TOOL}`"),
            OutputRoute::JsonSchema => "structured output (JSON schema)".to_owned(),
        },
        items.worker.max_tokens
    );
    let _ = writeln!(
        out,
        "  retries     missing items re-sent alone {}x; repairs {}x",
        items.retries.resend_missing, items.retries.repairs
    );
    let _ = writeln!(
        out,
        "  parallel    {} workers in flight{}",
        job.max_parallel,
        job.budget
            .map(|b| format!(", run budget ${b:.2}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  estimate    {} requests, ~{} input tokens ({} from the prompt cache), ~{} output tokens (first attempts)",
        estimate.chunks,
        estimate.input_tokens,
        estimate.cached_input_tokens,
        estimate.output_tokens
    );
    let (online, batch) = (estimate.online_dollars, estimate.batch_dollars);
    let _ = writeln!(
        out,
        "  cost        ${online:.4} online · ${batch:.4} batch (half price){}",
        match items.execution {
            Execution::Online => "  [execution: online]",
            Execution::Batch => "  [execution: batch]",
        }
    );
    if estimate.synthesis_dollars > 0.0 {
        let _ = writeln!(
            out,
            "  total       ${:.4} with the synthesis (${:.4}, online)",
            estimate.dollars, estimate.synthesis_dollars
        );
    }
    let aggregate = &items.aggregate;
    let mut parts = Vec::new();
    if !aggregate.count_by.is_empty() {
        parts.push(format!("count by {}", aggregate.count_by.join(", ")));
    }
    if let Some(field) = &aggregate.group_by {
        parts.push(format!("group by {field}"));
    }
    if let Some(field) = &aggregate.dedupe_by {
        parts.push(format!("dedupe by {field}"));
    }
    if let Some(field) = &aggregate.flatten {
        parts.push(format!("flatten {field}"));
    }
    if aggregate.synthesis.is_some() {
        parts.push(format!("synthesis on {}", job.synthesis_model.model));
    }
    if !parts.is_empty() {
        let _ = writeln!(out, "  aggregate   {}", parts.join("; "));
    }
    let _ = writeln!(
        out,
        "  output      {} under {}",
        format!("{:?}", items.output.format).to_lowercase(),
        items
            .output
            .dir
            .as_ref()
            .map_or(".fanout/runs/<run_id>/".to_owned(), |d| d
                .display()
                .to_string())
    );
    if let Some(proposal) = proposal {
        let _ = writeln!(
            out,
            "\nItem plan (proposed by {} from {} sampled item(s); review it):",
            job.synthesis_model.model, proposal.sampled
        );
        if !proposal.rationale.is_empty() {
            let _ = writeln!(out, "  rationale   {}", proposal.rationale);
        }
        for field in &proposal.fields {
            let mut line = format!(
                "  field       {}: {}",
                field.name,
                format!("{:?}", field.kind).to_lowercase()
            );
            if !field.values.is_empty() {
                let _ = write!(line, " one of {}", field.values.join(" | "));
            }
            if field.nullable {
                line.push_str(" or null");
            }
            if !field.description.is_empty() {
                let _ = write!(line, " — {}", field.description);
            }
            let _ = writeln!(out, "{line}");
        }
        match saved {
            Some(saved) => {
                let _ = writeln!(
                    out,
                    "  saved       {} ({})\n  run it as reviewed: fanout run {} --plan {}{sim}",
                    saved.path.display(),
                    saved.hash,
                    crate::live::shell_word(&config.origin.display().to_string()),
                    crate::live::shell_word(&saved.path.display().to_string())
                );
            }
            None => {
                let _ = writeln!(out, "  source      the reviewed --plan file");
            }
        }
    }
    let _ = writeln!(out, "\nWorker instructions:");
    for line in job.spec.instructions.lines() {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(out, "\nOutput schema (each record; `id` is required):");
    let schema = serde_json::to_string_pretty(job.schema.record_schema()).unwrap_or_default();
    for line in schema.lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn dry_run_json(
    config: &Config,
    job: &ItemJob,
    proposal: Option<&ItemProposal>,
    saved: Option<&SavedProposal>,
) -> serde_json::Value {
    serde_json::json!({
        "item_plan": proposal,
        "item_plan_saved": saved,
        "workflow": config.origin,
        "name": job.name,
        "items": config.items,
        "estimate": job.estimate(),
        "input_problems": job.problems,
        "chunks": job.chunks.iter().map(|c| serde_json::json!({
            "id": c.id.to_string(),
            "items": c.items.len(),
            "estimated_tokens": c.estimated_tokens,
            "oversized": c.oversized,
        })).collect::<Vec<_>>(),
        "worker_model": job.worker_model.model,
        "output_schema": job.schema.record_schema(),
    })
}

fn render_summary(report: &ItemReport, simulated: bool) -> String {
    let summary = &report.summary;
    let mut out = String::new();
    let status = match (report.status, summary.status) {
        (RunStatus::Cancelled, _) => "cancelled",
        (_, Completion::Complete) => "complete",
        (_, Completion::Partial) => "partial",
        (_, Completion::Failed) => "failed",
    };
    let _ = writeln!(out, "Item run {}: {status}", report.run_id);
    let _ = writeln!(
        out,
        "  items       {} ({} succeeded, {} failed)",
        summary.items, summary.succeeded, summary.failed
    );
    for (kind, count) in &summary.failures_by_kind {
        let _ = writeln!(out, "    {kind:<10} {count}");
    }
    let _ = writeln!(
        out,
        "  chunks      {} ({} sent by this run{})",
        report.chunks,
        report.chunks_sent,
        if report.items_already_settled > 0 {
            format!(
                "; {} items settled by an earlier attempt",
                report.items_already_settled
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "  calls       {} · {} input tokens · {} output tokens · ${:.4}",
        report.calls, report.input_tokens, report.output_tokens, report.cost_usd
    );
    let _ = writeln!(
        out,
        "  cache       {}",
        fanout_core::store::cache_sentence(
            report.cache_read_tokens,
            report.cache_write_tokens,
            report.input_tokens,
            report.cache_saved_usd,
        )
    );
    if report.budget_exhausted {
        let _ = writeln!(out, "  budget      exhausted: some chunks were not sent");
    }
    for (field, counts) in &summary.counts {
        let _ = writeln!(out, "  by {field}:");
        for (value, count) in counts {
            let _ = writeln!(out, "    {value:<18} {count}");
        }
    }
    let _ = writeln!(out, "  results     {}", report.paths.results.display());
    let _ = writeln!(out, "  failures    {}", report.paths.failed.display());
    let _ = writeln!(
        out,
        "  summary     {}",
        report.paths.summary_markdown.display()
    );
    for path in &report.extra_files {
        let _ = writeln!(out, "  aggregate   {}", path.display());
    }
    match &report.synthesis {
        Some(Ok(path)) => {
            let _ = writeln!(out, "  synthesis   {}", path.display());
        }
        Some(Err(message)) => {
            let _ = writeln!(out, "  synthesis   failed: {message}");
        }
        None => {}
    }
    if report.store_errors > 0 {
        let _ = writeln!(
            out,
            "  warning     {} record(s) could not be written to the run store",
            report.store_errors
        );
    }
    if report.status == RunStatus::Cancelled {
        let sim = if simulated { " --sim" } else { "" };
        let _ = writeln!(
            out,
            "  Run `fanout resume {}{sim}` to finish it.",
            report.run_id
        );
    }
    out
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
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
