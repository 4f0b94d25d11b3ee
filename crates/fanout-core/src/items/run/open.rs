//! Opening a run: a new one gets its run directory, `job.json` and `runs` row; a resumed one
//! is checked against its `job.json`, has its settlement journal replayed into the
//! [`Ledger`], and has the `agent_runs` rows its killed process left open ended.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ItemJob, ItemsError, JOB_FILE, RunOptions, run_dir};
use crate::config::items::Execution;
use crate::ids::{AgentId, ChunkId, RunId};
use crate::items::chunk::Chunk;
use crate::items::journal;
use crate::items::output::{OutputError, write_atomic};
use crate::items::worker::Ledger;
use crate::store::{AgentFinish, AgentStatus, NewRun, RunStatus, Store, StoreReader};

/// The job description written at the start, checked on resume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub workflow: PathBuf,
    pub name: String,
    pub items: usize,
    pub chunks: usize,
    pub execution: Execution,
    /// The run whose retryable failures this run sends again (`--retry-failed`); a resume
    /// rebuilds the same job from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_of: Option<RunId>,
}

/// The job record of an item run, if `run_id` is one (for `fanout resume` to dispatch on).
pub fn item_run(root: &Path, run_id: &RunId) -> Option<JobRecord> {
    let text = std::fs::read(crate::layout::job_file(root, run_id)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// An open run, new or resumed: what is left to send and what an earlier process settled.
pub(super) struct Opened {
    pub(super) run_id: RunId,
    pub(super) dir: PathBuf,
    pub(super) ledger: Ledger,
    /// Attempts an agent id already has in the store (resume).
    pub(super) attempts: HashMap<AgentId, u32>,
    pub(super) items_already_settled: usize,
    /// Chunks that still have unsettled items, cut down to those items.
    pub(super) remaining: Vec<Chunk>,
}

/// What a resumed run reads back from its journal and the store.
#[derive(Default)]
struct Replayed {
    attempts: HashMap<AgentId, u32>,
    items_already_settled: usize,
    /// `agent_runs` rows without an end: `(agent_id, attempt)`.
    open_rows: Vec<(AgentId, u32)>,
    /// How many failures the journal settled per chunk.
    failures_by_chunk: HashMap<ChunkId, usize>,
}

/// Open the run `options` names (resume) or a new one.
pub(super) async fn open_run(
    job: &ItemJob,
    store: &Store,
    options: &RunOptions,
) -> Result<Opened, ItemsError> {
    let mut ledger = Ledger::new(&job.items, job.retry)?;
    let run_id = options
        .resume
        .clone()
        .or_else(|| options.run_id.clone())
        .unwrap_or_else(|| RunId::new(SystemTime::now()));
    let dir = run_dir(&options.root, &run_id);
    let record = job_record(job);
    let replayed = if options.resume.is_some() {
        replay(store, &options.root, &run_id, &dir, &record, &mut ledger).await?
    } else {
        create(job, store, options, &run_id, &dir, &record).await?;
        Replayed::default()
    };
    let remaining = ledger.remaining(&job.chunks);
    // A shared run's open rows belong to workers that may still be calling; a lease
    // takeover ends those of a dead one.
    if !replayed.open_rows.is_empty() && options.share.is_none() {
        close_open_rows(
            store,
            &run_id,
            job,
            &remaining,
            &replayed.failures_by_chunk,
            replayed.open_rows,
        )
        .await;
    }
    Ok(Opened {
        run_id,
        dir,
        ledger,
        attempts: replayed.attempts,
        items_already_settled: replayed.items_already_settled,
        remaining,
    })
}

fn job_record(job: &ItemJob) -> JobRecord {
    JobRecord {
        // Absolute, so that `fanout resume` finds it from any directory.
        workflow: std::fs::canonicalize(&job.config_path)
            .unwrap_or_else(|_| job.config_path.clone()),
        name: job.name.clone(),
        items: job.items.len(),
        chunks: job.chunks.len(),
        execution: job.execution,
        retry_of: job.carried.as_ref().map(|carried| carried.from_run.clone()),
    }
}

/// A new run: its directory, its `job.json` and its `runs` row.
async fn create(
    job: &ItemJob,
    store: &Store,
    options: &RunOptions,
    run_id: &RunId,
    dir: &Path,
    record: &JobRecord,
) -> Result<(), ItemsError> {
    std::fs::create_dir_all(dir).map_err(|source| OutputError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let bytes = serde_json::to_vec_pretty(record).map_err(|error| OutputError::Encode {
        path: dir.join(JOB_FILE),
        message: error.to_string(),
    })?;
    write_atomic(&dir.join(JOB_FILE), &bytes)?;
    store
        .create_run(NewRun {
            run_id: run_id.to_owned(),
            workflow: job.name.clone(),
            config_path: Some(job.config_path.clone()),
            plan_hash: None,
            repo: Some(options.root.clone()),
            status: RunStatus::Running,
            started_at: SystemTime::now(),
            base_commit: None,
            agents_planned: u32::try_from(job.chunks.len()).unwrap_or(u32::MAX),
            simulated: false,
        })
        .await?;
    Ok(())
}

/// A resumed run: the job must be the one recorded; what the journal settled goes back into
/// `ledger`; the store says which attempts each agent id has and which rows are open. The
/// run is `running` again once this returns.
async fn replay(
    store: &Store,
    root: &Path,
    run_id: &RunId,
    dir: &Path,
    record: &JobRecord,
    ledger: &mut Ledger,
) -> Result<Replayed, ItemsError> {
    let resume_error = |message: String| ItemsError::Resume {
        run_id: run_id.to_owned(),
        message,
    };
    let Some(previous) = item_run(root, run_id) else {
        return Err(resume_error(format!(
            "{} has no {JOB_FILE}: not an item run of this repository",
            dir.display()
        )));
    };
    if (previous.items, previous.chunks) != (record.items, record.chunks) {
        return Err(resume_error(format!(
            "the input changed: the run had {} items in {} chunks, the input now gives {} in {}",
            previous.items, previous.chunks, record.items, record.chunks
        )));
    }
    let mut replayed = Replayed::default();
    for settlement in journal::read(dir)? {
        *replayed
            .failures_by_chunk
            .entry(settlement.chunk.clone())
            .or_default() += settlement.failures.len();
        for (id, value) in settlement.results {
            ledger
                .restore_result(&id, value)
                .map_err(|error| resume_error(error.to_string()))?;
        }
        for failure in settlement.failures {
            ledger
                .restore_failure(failure)
                .map_err(|error| resume_error(error.to_string()))?;
        }
    }
    let (done, failed, _) = ledger.counts();
    replayed.items_already_settled = done + failed;
    if let Ok(reader) = StoreReader::open_at(store.location())
        && let Ok(rows) = reader.agent_runs(run_id)
    {
        for row in rows {
            let entry = replayed.attempts.entry(row.agent_id.clone()).or_insert(0);
            *entry = (*entry).max(row.attempt);
            if row.status.is_none() {
                replayed.open_rows.push((row.agent_id, row.attempt));
            }
        }
    }
    store
        .set_run_status(run_id, RunStatus::Running, None, None)
        .await?;
    Ok(replayed)
}

/// End the rows a killed attempt left open (calls in flight, or chunks whose settlement
/// reached the journal before their rows' ends reached the store). A row whose chunk is
/// settled takes the chunk's status; any other row was interrupted.
async fn close_open_rows(
    store: &Store,
    run_id: &RunId,
    job: &ItemJob,
    remaining: &[Chunk],
    failures_by_chunk: &HashMap<ChunkId, usize>,
    open_rows: Vec<(AgentId, u32)>,
) {
    let unsettled: HashSet<&str> = remaining.iter().map(|chunk| chunk.id.as_str()).collect();
    let chunks: HashMap<&str, &Chunk> = job
        .chunks
        .iter()
        .map(|chunk| (chunk.id.as_str(), chunk))
        .collect();
    let ends = open_rows.into_iter().map(|(agent_id, attempt)| {
        let chunk = chunks.get(agent_id.as_str());
        let settled = chunk.is_some() && !unsettled.contains(agent_id.as_str());
        let files_accessed =
            chunk.map_or_else(Vec::new, |chunk| chunk.ids().map(str::to_owned).collect());
        let (status, error) = if !settled {
            (
                AgentStatus::Failure,
                "interrupted: the process stopped during this call".to_owned(),
            )
        } else if failures_by_chunk
            .get(&ChunkId::from(agent_id.as_str()))
            .copied()
            .unwrap_or(0)
            == 0
        {
            (
                AgentStatus::Success,
                "ended on resume: the chunk had settled (see the journal); tokens not recorded"
                    .to_owned(),
            )
        } else {
            (
                AgentStatus::Failure,
                "ended on resume: the chunk had settled with failures; tokens not recorded"
                    .to_owned(),
            )
        };
        store.finish_agent(AgentFinish {
            run_id: run_id.to_owned(),
            agent_id,
            attempt,
            status,
            files_accessed,
            tools_called: Vec::new(),
            input_tokens: 0,
            output_tokens: 0,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cost_usd: 0.0,
            cache_saved_usd: 0.0,
            error: Some(error),
            checkpoint: None,
            ended_at: SystemTime::now(),
        })
    });
    // Best effort: an open row left open misleads `fanout show`, it does not change the run.
    let _ = futures_util::future::join_all(ends).await;
}
