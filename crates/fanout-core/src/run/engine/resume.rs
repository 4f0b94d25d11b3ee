//! Resume preparation: what the run's earlier processes recorded (agents that succeeded,
//! attempt numbers, escalations, pre-images), every other agent rolled back from its
//! pre-image, in-flight attempts closed, and what a killed process left half-done in the
//! repository removed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::{AgentRecord, EngineError, EngineInputs, blocking};
use crate::config::Mode;
use crate::ids::AgentId;
use crate::plan::TaskId;
use crate::run::preimage::{self, Preimage, PreimageError};
use crate::store::{AgentFinish, AgentRow, AgentStatus, Store, StoreReader};

/// What a resumed run starts from, read from the store and the pre-images.
#[derive(Debug, Default)]
pub(super) struct ResumeState {
    /// Agents with a `success` row: never run again.
    pub(super) done: HashSet<TaskId>,
    pub(super) first_attempt: HashMap<TaskId, u32>,
    pub(super) records: HashMap<TaskId, AgentRecord>,
    /// Pre-images already recorded, by agent (never replaced).
    pub(super) preimages: HashMap<TaskId, Arc<Preimage>>,
    /// Agents whose last recorded attempt had been escalated to `default`: they go on there.
    pub(super) escalated: HashSet<TaskId>,
}

/// Nothing of this run is running now: what a killed process left half-done goes (stale ref
/// locks, pre-image temporaries).
pub(super) async fn clear_leftovers(inputs: &EngineInputs) -> Result<(), EngineError> {
    let repo = inputs.repo.clone();
    let run_id = inputs.run_id.clone();
    blocking(move || {
        remove_stale_ref_locks(&repo, run_id.as_str());
        preimage::sweep_temporaries(&repo)
    })
    .await??;
    Ok(())
}

/// Read what the run's earlier processes recorded, roll back every agent that did not
/// succeed from its pre-image, and close attempts that were in flight as `rollback`.
pub(super) async fn prepare_resume(
    inputs: &EngineInputs,
    store: &Store,
) -> Result<ResumeState, EngineError> {
    let reader = StoreReader::open_at(&inputs.store)?;
    let rows = reader.agent_runs(&inputs.run_id)?;
    let mut state = state_from_rows(inputs, &rows);
    // Pre-images in the store (this build), else in manifest files (earlier builds).
    for (agent_id, manifest) in reader.preimages(&inputs.run_id)? {
        let where_ = PathBuf::from(format!("run store, pre-image of {agent_id}"));
        let preimage = preimage::parse_manifest(manifest.as_bytes(), &where_)?;
        state
            .preimages
            .insert(TaskId::from(agent_id.into_string()), Arc::new(preimage));
    }
    let restored = roll_back(inputs, &mut state).await?;
    close_in_flight(inputs, store, &reader, &rows, &restored).await?;
    Ok(state)
}

/// Attempt numbers, successes and escalations from the run's `agent_runs` rows.
fn state_from_rows(inputs: &EngineInputs, rows: &[AgentRow]) -> ResumeState {
    let planned: HashSet<&str> = inputs
        .plan
        .subtasks
        .iter()
        .map(|s| s.task_id.as_str())
        .collect();
    let mut state = ResumeState::default();
    let mut last_attempt: HashMap<&str, (u32, bool)> = HashMap::new();
    for row in rows {
        let task_id = TaskId::from(row.agent_id.as_str());
        let next = state.first_attempt.entry(task_id.clone()).or_insert(1);
        *next = (*next).max(row.attempt.saturating_add(1));
        let last = last_attempt
            .entry(row.agent_id.as_str())
            .or_insert((0, false));
        if row.attempt >= last.0 {
            *last = (row.attempt, row.escalated);
        }
        if row.status == Some(AgentStatus::Success) && planned.contains(row.agent_id.as_str()) {
            state.done.insert(task_id.clone());
            state.records.insert(
                task_id,
                AgentRecord {
                    status: AgentStatus::Success,
                    mode: row.mode.unwrap_or(Mode::Default),
                    tokens: row.token_count,
                    dollars: row.cost_usd,
                    escalated: row.escalated,
                    input_tokens: row.input_tokens,
                    cache_read_tokens: row.cache_read_tokens,
                },
            );
        }
    }
    state.escalated = last_attempt
        .into_iter()
        .filter(|(_, (_, escalated))| *escalated)
        .map(|(agent, _)| TaskId::from(agent))
        .collect();
    state
}

/// Restore every agent that did not succeed from its pre-image (recorded in the store, else
/// in a manifest file); returns the agents restored.
async fn roll_back(
    inputs: &EngineInputs,
    state: &mut ResumeState,
) -> Result<HashSet<TaskId>, EngineError> {
    // Roll back in reverse plan order: a dependent's scope may hold files its dependency's
    // pre-image also covers, and the dependency's pre-image is the older one.
    let mut restored: HashSet<TaskId> = HashSet::new();
    let mut missing: HashSet<TaskId> = HashSet::new();
    for subtask in inputs.plan.subtasks.iter().rev() {
        let agent_id = subtask.task_id.clone();
        if state.done.contains(&agent_id) {
            continue;
        }
        let repo = inputs.repo.clone();
        let run_id = inputs.run_id.clone();
        let id = AgentId::from(&agent_id);
        let recorded = state.preimages.get(&agent_id).cloned();
        let found = blocking(move || -> Result<Option<Arc<Preimage>>, PreimageError> {
            let preimage = match recorded {
                Some(preimage) => preimage,
                None => match preimage::load(&repo, &run_id, &id)? {
                    Some(preimage) => Arc::new(preimage),
                    None => return Ok(None),
                },
            };
            preimage::restore(&repo, &preimage)?;
            Ok(Some(preimage))
        })
        .await??;
        if let Some(preimage) = found {
            state.preimages.insert(agent_id.clone(), preimage);
            restored.insert(agent_id);
        } else {
            missing.insert(agent_id);
        }
    }
    Ok(restored)
}

/// End the attempts that were in flight: `rollback` when their agent was restored, `failure`
/// otherwise, with the usage their model calls recorded.
async fn close_in_flight(
    inputs: &EngineInputs,
    store: &Store,
    reader: &StoreReader,
    rows: &[AgentRow],
    restored: &HashSet<TaskId>,
) -> Result<(), EngineError> {
    // Read before any of the closing rows below are written.
    let spent = reader.unfinished_usage(&inputs.run_id)?;
    for row in rows.iter().filter(|row| row.status.is_none()) {
        let used = spent
            .get(&(row.agent_id.clone(), row.attempt))
            .copied()
            .unwrap_or_default();
        let (status, error) = if restored.contains(&TaskId::from(row.agent_id.as_str())) {
            (
                AgentStatus::Rollback,
                "interrupted: the run stopped while this attempt was in flight; rolled back \
                 from its pre-image on resume",
            )
        } else {
            (
                AgentStatus::Failure,
                "interrupted: the run stopped while this attempt was in flight; no pre-image \
                 to roll back from",
            )
        };
        store
            .finish_agent(AgentFinish {
                run_id: inputs.run_id.clone(),
                agent_id: row.agent_id.clone(),
                attempt: row.attempt,
                status,
                files_accessed: Vec::new(),
                tools_called: Vec::new(),
                input_tokens: used.input_tokens,
                output_tokens: used.output_tokens,
                cache_read_tokens: used.cache_read_tokens,
                cache_write_tokens: used.cache_write_tokens,
                cost_usd: used.dollars,
                cache_saved_usd: used.cache_saved,
                error: Some(error.to_owned()),
                checkpoint: None,
                ended_at: SystemTime::now(),
            })
            .await?;
    }
    Ok(())
}

/// Ref lock files of this run's refs that a killed `git update-ref` left behind (they would
/// make every later checkpoint of the run fail). Best effort.
fn remove_stale_ref_locks(repo: &Path, run_id: &str) {
    let dir = repo.join(".git").join("refs").join("fanout").join(run_id);
    let mut stack = vec![dir];
    while let Some(dir) = stack.pop() {
        let Ok(children) = std::fs::read_dir(&dir) else {
            continue;
        };
        for child in children.flatten() {
            let path = child.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "lock") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
