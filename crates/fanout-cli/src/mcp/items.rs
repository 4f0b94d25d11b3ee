//! Item workflows (`workflow.items`) through the MCP tools: the same item runner as
//! `fanout run` (`fanout_core::items::run`). What is reviewed is the job itself: its dry run
//! returns `ItemJob::review_hash` (the workflow file, the chunks with their records, the
//! schema, the model, the execution) as `plan_sha256`, and a start builds the job again and
//! runs it only if that hash is unchanged. `chunking.strategy: llm` asks the orchestrator for an
//! item plan first, which is reviewed with `fanout plan`; the server refuses it with that
//! advice.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::config::items::{ChunkingConfig, Execution};
use fanout_core::items::run::{self as item_run, ItemJob, RunOptions, WORKER_ROLE};
use fanout_core::plan::RunId;
use fanout_core::provider::batch::PollPolicy;
use fanout_core::run::lock::RunLock;
use fanout_core::store::Store;
use serde_json::json;

use super::runs::{Ended, Runs, Work};
use super::tools::{PlanOutput, StartOutput};

/// Input problems listed in a dry run's answer (the rest are counted).
const SHOWN_PROBLEMS: usize = 20;

/// The item job of `config`, built as `fanout run` builds it (off the async workers: it reads
/// the input).
async fn job(config: &Config) -> Result<ItemJob, String> {
    if config
        .items
        .as_ref()
        .is_some_and(|items| matches!(items.chunking, ChunkingConfig::Llm { .. }))
    {
        return Err(
            "`chunking.strategy: llm` asks the orchestrator for an item plan, which is reviewed with `fanout plan WORKFLOW` and run with `fanout run WORKFLOW --plan …`; the MCP server runs item workflows with the other chunking strategies"
                .to_owned(),
        );
    }
    let config = config.clone();
    let job = tokio::task::spawn_blocking(move || ItemJob::from_config(&config))
        .await
        .map_err(|e| format!("the item loader stopped: {e}"))?
        .map_err(|e| e.to_string())?;
    if job.items.is_empty() {
        return Err(format!(
            "the input has no items (nothing to do){}",
            if job.problems.is_empty() {
                String::new()
            } else {
                format!("; {} line(s) are not items", job.problems.len())
            }
        ));
    }
    Ok(job)
}

/// The dry run of an item workflow.
pub async fn plan(
    config: &Config,
    workflow: &Path,
    repo: &Path,
) -> Result<(PlanOutput, String), String> {
    let job = job(config).await?;
    let hash = job.review_hash().map_err(|e| e.to_string())?;
    let estimate = job.estimate();
    // The workers at the job's execution's price, and the synthesis.
    let dollars = estimate.dollars;
    let problems: Vec<String> = job
        .problems
        .iter()
        .take(SHOWN_PROBLEMS)
        .map(|p| p.describe())
        .collect();
    let output = PlanOutput {
        workflow: config.name.clone(),
        repo: repo.display().to_string(),
        clean: true,
        agents_planned: job.chunks.len(),
        files_in_scope: 0,
        estimated_tokens: estimate.input_tokens + estimate.output_tokens,
        estimated_dollars: dollars,
        violations: Vec::new(),
        plan_path: workflow.display().to_string(),
        plan_sha256: hash,
        report: json!({
            "kind": "items",
            "items": job.items.len(),
            "chunks": job.chunks.len(),
            "execution": job.execution,
            "worker_model": job.worker_model.model,
            "estimate": {
                "input_tokens": estimate.input_tokens,
                "output_tokens": estimate.output_tokens,
                "online_dollars": estimate.online_dollars,
                "batch_dollars": estimate.batch_dollars,
                "oversized_chunks": estimate.oversized_chunks,
            },
            "input_problems": job.problems.len(),
            "problems": problems,
        }),
    };
    let mut text = format!(
        "Item job {}: {} items in {} chunks for {}, ~{} tokens, ~${:.2} ({}).",
        output.workflow,
        job.items.len(),
        job.chunks.len(),
        job.worker_model.model,
        output.estimated_tokens,
        dollars,
        match job.execution {
            Execution::Online => "online",
            Execution::Batch => "batch, half price",
        }
    );
    if !job.problems.is_empty() {
        text.push_str(&format!(
            " {} input line(s) are not items and will be recorded as failures:\n{}",
            job.problems.len(),
            problems.join("\n")
        ));
    }
    text.push_str(&format!(
        "\nStart it with start_run and plan_sha256 {}.",
        output.plan_sha256
    ));
    Ok((output, text))
}

/// Start (or, with `resume`, continue) the item job of `config` on `repo`, in the background.
pub async fn start(
    runs: &Runs,
    backend: &Backend,
    config: &Config,
    repo: &Path,
    store: &fanout_core::store::StoreLocation,
    reviewed: Option<&str>,
    resume: Option<RunId>,
) -> Result<StartOutput, String> {
    let job = job(config).await?;
    if let Some(reviewed) = reviewed {
        let now = job.review_hash().map_err(|e| e.to_string())?;
        if now != reviewed.trim() {
            return Err(format!(
                "no reviewed item job with sha256 {reviewed}: the workflow or its input changed since plan_workflow (the job's sha256 is now {now}); call plan_workflow again"
            ));
        }
    }
    let worker = config.model_for_role(WORKER_ROLE);
    let fleet = backend
        .fleet_on(config, worker.provider)
        .map_err(|e| e.to_string())?;
    let (batch, poll) = match job.execution {
        Execution::Online => (None, PollPolicy::default()),
        Execution::Batch => (
            Some(
                backend
                    .batch_client(worker.provider)
                    .map_err(|e| e.to_string())?,
            ),
            backend.poll_policy(),
        ),
    };
    let run_id = resume
        .clone()
        .unwrap_or_else(|| RunId::new(SystemTime::now()));
    let lock = RunLock::acquire(repo, &run_id).map_err(|e| format!("refusing the run: {e}"))?;
    let location = store.clone();
    let store = Store::open_at(store).map_err(|e| e.to_string())?;
    let chunks = job.chunks.len();
    let (traced_repo, traced_run) = (repo.to_path_buf(), run_id.clone());
    let options = RunOptions {
        root: repo.to_path_buf(),
        resume,
        run_id: Some(run_id.clone()),
        batch,
        poll,
        share: None,
    };
    let job = Arc::new(job);
    let run_fleet = fleet.clone();
    let work: Work = Box::new(move |run| {
        Box::pin(async move {
            // Held until the run ends.
            let _lock = lock;
            let events: item_run::EventSink = Arc::new(|_| {});
            let result = item_run::run(
                job,
                run_fleet,
                store.clone(),
                options,
                run.cancel.clone(),
                events,
            )
            .await;
            let _ = store.close().await;
            // As `fanout run` does once a run ends (nothing without a collector).
            crate::traces::export(&traced_repo, &location, &traced_run).await;
            match result {
                Ok(report) => Ended::Status(report.status),
                Err(error) => Ended::Error(error.to_string()),
            }
        })
    });
    runs.spawn_items(run_id.clone(), chunks, fleet, work);
    Ok(StartOutput {
        run_id: run_id.to_string(),
        agents: chunks,
        status: "running".to_owned(),
    })
}
