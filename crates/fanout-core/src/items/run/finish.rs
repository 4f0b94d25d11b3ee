//! The end of a run: the books closed (every input item once, in the results or the
//! failures, with what a `--retry-failed` run carried over), the built-in aggregations
//! written next to the outputs, the run's final status, and its totals.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::{Ctx, ItemsError, Totals, lock};
use crate::config::items::ItemAggregateConfig;
use crate::items::aggregate::{dedupe_by, flatten, group_by};
use crate::items::input::{InputProblem, ProblemKind};
use crate::items::output::{Completion, OutputError, Summary, write_atomic};
use crate::items::worker::{Accounting, FailedItem, FailureKind, Ledger};
use crate::store::RunStatus;

/// Close the books: every input item once, in the results or the failures.
pub(super) fn close_books(ctx: &Ctx) -> Result<Accounting, ItemsError> {
    let job = &ctx.job;
    let ledger = {
        let mut guard = lock(&ctx.ledger);
        std::mem::replace(&mut *guard, Ledger::new(&[], job.retry)?)
    };
    let mut accounting = ledger.finish();
    if let Some(carried) = &job.carried {
        for failure in &mut accounting.failures {
            failure.attempts += carried
                .prior_attempts
                .get(&failure.id)
                .copied()
                .unwrap_or(0);
        }
        let new = std::mem::take(&mut accounting.results);
        accounting.results = carried.results.clone();
        accounting.results.extend(new);
        accounting.failures.extend(carried.failures.iter().cloned());
    }
    accounting
        .failures
        .extend(job.problems.iter().map(problem_failure));
    Ok(accounting)
}

/// An input problem as a failure of the job: in `failed.jsonl` under its own key, never sent.
fn problem_failure(problem: &InputProblem) -> FailedItem {
    FailedItem {
        id: problem.key(),
        kind: match problem.kind {
            ProblemKind::InvalidInput => FailureKind::InvalidInput,
            ProblemKind::MissingId => FailureKind::MissingId,
            ProblemKind::DuplicateId => FailureKind::DuplicateId,
            ProblemKind::Unreadable => FailureKind::Unreadable,
        },
        reason: problem.describe(),
        attempts: 0,
        input: problem.input.clone(),
    }
}

/// The built-in aggregations the job asks for (`groups.json`, `flattened.json`,
/// `deduped.json`) written to `output_dir`; returns the files written.
pub(super) fn write_aggregations(
    aggregate: &ItemAggregateConfig,
    records: &[&Value],
    output_dir: &Path,
) -> Result<Vec<PathBuf>, ItemsError> {
    let mut extra_files = Vec::new();
    let mut write_json = |name: &str, value: &Value| -> Result<(), ItemsError> {
        let path = output_dir.join(name);
        let mut text =
            serde_json::to_string_pretty(value).map_err(|error| OutputError::Encode {
                path: path.clone(),
                message: error.to_string(),
            })?;
        text.push('\n');
        write_atomic(&path, text.as_bytes())?;
        extra_files.push(path);
        Ok(())
    };
    if let Some(field) = &aggregate.group_by {
        let groups = group_by(records.iter().copied(), field);
        write_json("groups.json", &json!(groups))?;
    }
    if let Some(field) = &aggregate.flatten {
        write_json(
            "flattened.json",
            &Value::Array(flatten(records.iter().copied(), field)),
        )?;
    }
    if let Some(field) = &aggregate.dedupe_by {
        let (kept, removed) = dedupe_by(records.iter().copied(), field);
        write_json(
            "deduped.json",
            &json!({"field": field, "removed": removed, "records": kept}),
        )?;
    }
    Ok(extra_files)
}

/// Wait for the calls' end rows, then set the run's final status (durable once this
/// returns).
pub(super) async fn end_run(
    ctx: &Ctx,
    summary: &Summary,
    cancelled: bool,
) -> Result<RunStatus, ItemsError> {
    let row_writes = std::mem::take(&mut *lock(&ctx.row_writes));
    row_writes.join_all().await;
    let status = if cancelled {
        RunStatus::Cancelled
    } else {
        match summary.status {
            Completion::Complete => RunStatus::Completed,
            Completion::Partial => RunStatus::Partial,
            Completion::Failed => RunStatus::Failed,
        }
    };
    let error = match status {
        RunStatus::Cancelled => Some("cancelled; `fanout resume` continues it".to_owned()),
        RunStatus::Partial | RunStatus::Failed => Some(format!(
            "{} of {} items failed (see failed.jsonl)",
            summary.failed, summary.items
        )),
        _ => None,
    };
    // Durable once this returns, and with it everything queued before it (one writer, in
    // order; the durable commit syncs the earlier ones too): no separate flush is needed.
    ctx.store
        .set_run_status(&ctx.run_id, status, Some(SystemTime::now()), error)
        .await?;
    Ok(status)
}

/// This process's totals, with tokens and dollars over every process of the run (a resumed
/// run's report includes what the killed one spent), from the store, as `fanout runs` and
/// `fanout show` report it.
pub(super) fn run_totals(ctx: &Ctx) -> Totals {
    let mut totals = std::mem::take(&mut *lock(&ctx.totals));
    if let Ok(Some(run)) = crate::store::StoreReader::open_at(ctx.store.location())
        .and_then(|reader| reader.run_summary(&ctx.run_id))
    {
        totals.input_tokens = run.agents.input_tokens;
        totals.output_tokens = run.agents.output_tokens;
        totals.cost = run.agents.dollars;
        totals.cache_read_tokens = run.agents.cache_read_tokens;
        totals.cache_write_tokens = run.agents.cache_write_tokens;
        totals.cache_saved = run.agents.cache_saved;
    }
    totals
}
