//! Building a [`RunReport`] from the run store, the run's directory (`summary.json`,
//! `plan.json`, an item run's `failed.jsonl`) and, for the diff stat, the repository's git
//! (`diff-tree` from the run's base commit to its last checkpoint). Reads only; a file the run
//! has not written yet is left out, a file that does not parse is an error, a diff git cannot
//! give leaves the line counts out.

use crate::ids::{AgentId, RunId};
use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::{
    AgentFiles, AgentTotals, AttemptBar, CallMark, CheckpointMark, Denial, FileChange, ItemFailure,
    ItemOutcome, MAX_ITEM_FAILURES, ModeTotals, ReportError, RepositoryOutcome, RunKind, RunReport,
    TestVerdict,
};
use crate::store::{AgentRow, AgentStatus, StoreReader, parse_time};

/// The report of run `run_id` of the repository (or item run directory) `repo`, recorded in
/// `store`.
pub fn gather(
    repo: &Path,
    store: &crate::store::StoreLocation,
    run_id: &RunId,
) -> Result<RunReport, ReportError> {
    let reader = StoreReader::open_at(store)?;
    let summary = reader
        .run_summary(run_id)?
        .ok_or_else(|| ReportError::UnknownRun {
            run_id: run_id.to_string(),
            store: reader.location().clone(),
        })?;
    let run = summary.run;
    let origin = parse_time(&run.started_at);
    let offset = |at: &str| -> Option<u64> {
        let at = parse_time(at)?;
        Some(
            at.duration_since(origin?)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64,
        )
    };

    let rows = reader.agent_runs(run_id)?;
    let denial_rows = reader.run_denials(run_id)?;
    let mut denials_per_attempt: HashMap<(&str, u32), u64> = HashMap::new();
    for (agent_id, denial) in &denial_rows {
        *denials_per_attempt
            .entry((agent_id.as_str(), denial.attempt))
            .or_default() += 1;
    }
    let dependents = dependents(&crate::layout::plan_file(repo, run_id));
    let events = reader.events(run_id)?;
    let calls: Vec<&crate::store::EventRow> = events
        .iter()
        .filter(|event| event.kind == "model_call")
        .collect();
    let mut rate_wait: HashMap<(&str, u32), u64> = HashMap::new();
    for call in &calls {
        if let (Some(agent), Some(attempt)) = (&call.agent_id, call.payload["attempt"].as_u64()) {
            *rate_wait
                .entry((agent.as_str(), attempt as u32))
                .or_default() += call.payload["rate_wait_ms"].as_u64().unwrap_or(0);
        }
    }
    let attempts: Vec<AttemptBar> = rows
        .iter()
        .map(|row| AttemptBar {
            agent_id: row.agent_id.clone(),
            attempt: row.attempt,
            status: row.status,
            mode: row.mode,
            model: row.model.clone(),
            escalated: row.escalated,
            start_ms: row.timestamp_start.as_deref().and_then(offset).unwrap_or(0),
            end_ms: row.timestamp_end.as_deref().and_then(offset),
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            dollars: row.cost_usd,
            files: row.files_accessed.clone(),
            tools: row.tools_called.clone(),
            denials: denials_per_attempt
                .get(&(row.agent_id.as_str(), row.attempt))
                .copied()
                .unwrap_or(0),
            rate_wait_ms: rate_wait
                .get(&(row.agent_id.as_str(), row.attempt))
                .copied()
                .unwrap_or(0),
            dependency_wait_from_ms: None,
            error: row.error.clone(),
        })
        .collect();

    let mut attempts = attempts;
    // The agents began with the earliest start; a first attempt of an agent with dependencies
    // waited for them from then until its own start.
    if let Some(began) = attempts.iter().map(|bar| bar.start_ms).min() {
        for bar in attempts.iter_mut() {
            if bar.attempt == 1
                && bar.start_ms > began
                && dependents.contains(bar.agent_id.as_str())
            {
                bar.dependency_wait_from_ms = Some(began);
            }
        }
    }
    let count = |value: &Value| value.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32);
    let calls: Vec<CallMark> = calls
        .iter()
        .filter_map(|event| {
            Some(CallMark {
                at_ms: offset(&event.at)?,
                tries: count(&event.payload["tries"]).unwrap_or(1).max(1),
                rate_limited: count(&event.payload["rate_limited"]).unwrap_or(0),
            })
        })
        .collect();
    let checkpoints: Vec<CheckpointMark> = reader
        .checkpoints(run_id)?
        .into_iter()
        .map(|checkpoint| CheckpointMark {
            at_ms: offset(&checkpoint.at).unwrap_or(0),
            seq: checkpoint.seq,
            label: checkpoint.label,
            completed_agents: checkpoint.completed_agents,
        })
        .collect();

    let store_wall = run
        .ended_at
        .as_deref()
        .and_then(|end| crate::store::elapsed(&run.started_at, end));
    let span_ms = attempts
        .iter()
        .flat_map(|bar| [Some(bar.start_ms), bar.end_ms])
        .flatten()
        .chain(calls.iter().map(|call| call.at_ms))
        .chain(checkpoints.iter().map(|c| c.at_ms))
        .chain(store_wall.map(|wall| wall.as_millis() as u64))
        .max()
        .unwrap_or(0);

    let dir = crate::layout::run_dir(repo, run_id);
    let kind = if crate::items::run::item_run(repo, run_id).is_some() {
        RunKind::Items(item_outcome(&dir)?)
    } else {
        RunKind::Repository(repository_outcome(&dir, store_wall)?)
    };
    let written = reader.written_paths(run_id)?;
    // The run's net change per file: from its base to its last checkpoint.
    let line_counts = match (&run.base_commit, reader.checkpoints(run_id)?.last()) {
        (Some(base), Some(last)) => line_counts(repo, base, &last.commit_id),
        _ => None,
    };
    Ok(RunReport {
        counts: summary.agents,
        kind,
        span: Duration::from_millis(span_ms),
        waves: waves(&crate::layout::plan_file(repo, run_id))?,
        by_mode: by_mode(&rows),
        by_agent: by_agent(&rows),
        files_changed: files_changed(&rows, &written, line_counts.as_ref()),
        calls,
        checkpoints,
        denials: denial_rows
            .into_iter()
            .map(|(agent_id, denial)| Denial {
                agent_id,
                attempt: denial.attempt,
                tool: denial.tool,
                target: denial.target,
                reason: denial.reason,
                at: denial.at,
            })
            .collect(),
        attempts,
        run,
    })
}

/// A run file's JSON, or `None` when the run has not written it.
fn read_json(path: &Path) -> Result<Option<Value>, ReportError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ReportError::Read {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| ReportError::Parse {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
}

fn millis(value: &Value) -> Option<Duration> {
    value.as_u64().map(Duration::from_millis)
}

fn repository_outcome(
    dir: &Path,
    store_wall: Option<Duration>,
) -> Result<RepositoryOutcome, ReportError> {
    let Some(summary) = read_json(&dir.join("summary.json"))? else {
        return Ok(RepositoryOutcome {
            wall_time: store_wall,
            ..RepositoryOutcome::default()
        });
    };
    let strings = |value: &Value| -> Option<Vec<String>> {
        value.as_array().map(|list| {
            list.iter()
                .filter_map(|path| path.as_str().map(str::to_owned))
                .collect()
        })
    };
    Ok(RepositoryOutcome {
        wall_time: millis(&summary["wall_time_ms"]).or(store_wall),
        estimated_wall_time: millis(&summary["estimated_wall_time_ms"]),
        out_of_scope: strings(&summary["out_of_scope"]),
        files_changed: summary["files_changed"].as_u64(),
        test: summary["test"]["command"]
            .as_str()
            .map(|command| TestVerdict {
                command: command.to_owned(),
                passed: summary["test"]["passed"].as_bool().unwrap_or(false),
            }),
    })
}

fn item_outcome(dir: &Path) -> Result<ItemOutcome, ReportError> {
    let mut outcome = ItemOutcome::default();
    if let Some(summary) = read_json(&dir.join("summary.json"))? {
        outcome.status = summary["status"].as_str().map(str::to_owned);
        outcome.items = summary["items"].as_u64().unwrap_or(0);
        outcome.succeeded = summary["succeeded"].as_u64().unwrap_or(0);
        outcome.failed = summary["failed"].as_u64().unwrap_or(0);
        if let Some(kinds) = summary["failures_by_kind"].as_object() {
            outcome.failures_by_kind = kinds
                .iter()
                .map(|(kind, n)| (kind.clone(), n.as_u64().unwrap_or(0)))
                .collect();
        }
        if let Some(fields) = summary["counts"].as_object() {
            outcome.counts = fields
                .iter()
                .map(|(field, counts)| {
                    let counts = counts
                        .as_array()
                        .map(|list| {
                            list.iter()
                                .map(|entry| {
                                    let value = match &entry["value"] {
                                        Value::String(text) => text.clone(),
                                        other => other.to_string(),
                                    };
                                    (value, entry["count"].as_u64().unwrap_or(0))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (field.clone(), counts)
                })
                .collect();
        }
    }
    let failed_path = dir.join("failed.jsonl");
    let text = match std::fs::read_to_string(&failed_path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(ReportError::Read {
                path: failed_path,
                source,
            });
        }
    };
    for (index, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        outcome.failures_total += 1;
        if index >= MAX_ITEM_FAILURES {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|error| ReportError::Parse {
            path: failed_path.clone(),
            message: format!("line {}: {error}", index + 1),
        })?;
        let text = |value: &Value| match value {
            Value::String(text) => text.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        outcome.failures.push(ItemFailure {
            id: text(&value["id"]),
            reason: text(&value["reason"]),
            message: text(&value["message"]),
            attempts: value["attempts"].as_u64().unwrap_or(0),
        });
    }
    Ok(outcome)
}

/// Task ids by dependency wave, from the plan file (none when there is no plan file: item
/// runs, or a plan that was not saved). A task in a cycle or on an unknown dependency gets no
/// wave.
/// The tasks of the plan at `plan_path` that have dependencies (none without a plan file).
fn dependents(plan_path: &Path) -> std::collections::HashSet<String> {
    crate::plan::load_plan(plan_path)
        .map(|loaded| {
            loaded
                .plan
                .subtasks
                .iter()
                .filter(|task| !task.depends_on.is_empty())
                .map(|task| task.task_id.to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn waves(plan_path: &Path) -> Result<Vec<Vec<String>>, ReportError> {
    if !plan_path.exists() {
        return Ok(Vec::new());
    }
    let plan = crate::plan::load_plan(plan_path)
        .map_err(|error| ReportError::Parse {
            path: plan_path.to_path_buf(),
            message: error.to_string(),
        })?
        .plan;
    let mut wave: HashMap<&str, usize> = HashMap::new();
    // Each pass places every task whose dependencies are all placed; at most one pass per task.
    for _ in 0..=plan.subtasks.len() {
        let mut placed = false;
        for task in &plan.subtasks {
            if wave.contains_key(task.task_id.as_str()) {
                continue;
            }
            let deps: Option<Vec<usize>> = task
                .depends_on
                .iter()
                .map(|dep| wave.get(dep.as_str()).copied())
                .collect();
            if let Some(deps) = deps {
                wave.insert(
                    task.task_id.as_str(),
                    deps.into_iter().max().map_or(0, |w| w + 1),
                );
                placed = true;
            }
        }
        if !placed {
            break;
        }
    }
    let count = wave.values().max().map_or(0, |last| last + 1);
    let mut out = vec![Vec::new(); count];
    for task in &plan.subtasks {
        if let Some(&index) = wave.get(task.task_id.as_str()) {
            out[index].push(task.task_id.as_str().to_owned());
        }
    }
    Ok(out)
}

fn by_mode(rows: &[AgentRow]) -> Vec<ModeTotals> {
    let mut out: Vec<ModeTotals> = Vec::new();
    for row in rows {
        let mode = row.mode.map_or("unknown", |mode| mode.as_str());
        let index = match out.iter().position(|totals| totals.mode == mode) {
            Some(index) => index,
            None => {
                out.push(ModeTotals {
                    mode: mode.to_owned(),
                    attempts: 0,
                    tokens: 0,
                    dollars: 0.0,
                });
                out.len() - 1
            }
        };
        let totals = &mut out[index];
        totals.attempts += 1;
        totals.tokens += row.input_tokens + row.output_tokens;
        totals.dollars += row.cost_usd;
    }
    out.sort_by(|a, b| a.mode.cmp(&b.mode));
    out
}

fn by_agent(rows: &[AgentRow]) -> Vec<AgentTotals> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut out: Vec<(u32, AgentTotals)> = Vec::new();
    for row in rows {
        let at = *index.entry(row.agent_id.as_str()).or_insert_with(|| {
            out.push((
                0,
                AgentTotals {
                    agent_id: row.agent_id.clone(),
                    attempts: 0,
                    status: None,
                    tokens: 0,
                    dollars: 0.0,
                },
            ));
            out.len() - 1
        });
        let (last, totals) = &mut out[at];
        totals.attempts += 1;
        totals.tokens += row.input_tokens + row.output_tokens;
        totals.dollars += row.cost_usd;
        if row.attempt >= *last {
            *last = row.attempt;
            totals.status = row.status;
        }
    }
    let mut out: Vec<AgentTotals> = out.into_iter().map(|(_, totals)| totals).collect();
    out.sort_by(|a, b| {
        b.dollars
            .total_cmp(&a.dollars)
            .then(b.tokens.cmp(&a.tokens))
            .then(a.agent_id.cmp(&b.agent_id))
    });
    out
}

/// Lines added and removed per path between commits `base` and `last` of the repository at
/// `repo` (`None` for a binary file); `None` when git cannot tell (no repository, a commit
/// gone). `diff-tree` is plumbing: no textconv, external diff or pager can run.
fn line_counts(repo: &Path, base: &str, last: &str) -> Option<HashMap<String, Option<(u64, u64)>>> {
    let git = crate::git::Git::open(repo).ok()?;
    let mut command = git.read_only();
    command.args([
        "diff-tree",
        "-r",
        "-z",
        "--numstat",
        "--no-renames",
        "--no-textconv",
        "--end-of-options",
        base,
        last,
    ]);
    let out = git.run(command, None).ok()?;
    Some(parse_numstat(&String::from_utf8_lossy(&out)))
}

/// `git diff-tree -z --numstat` output: `added\tremoved\tpath\0` per file, `-` for both
/// counts of a binary file.
fn parse_numstat(text: &str) -> HashMap<String, Option<(u64, u64)>> {
    text.split('\0')
        .filter_map(|record| {
            let mut fields = record.splitn(3, '\t');
            let (added, removed, path) = (fields.next()?, fields.next()?, fields.next()?);
            let lines = added.parse().ok().zip(removed.parse().ok());
            Some((path.to_owned(), lines))
        })
        .collect()
}

/// Paths written by each agent's successful attempt, by agent id, with the lines the run
/// changed in each (`line_counts`; a path it does not list ended unchanged).
fn files_changed(
    rows: &[AgentRow],
    written: &[(AgentId, u32, String)],
    line_counts: Option<&HashMap<String, Option<(u64, u64)>>>,
) -> Vec<AgentFiles> {
    let succeeded: BTreeSet<(&str, u32)> = rows
        .iter()
        .filter(|row| row.status == Some(AgentStatus::Success))
        .map(|row| (row.agent_id.as_str(), row.attempt))
        .collect();
    let mut by_agent: std::collections::BTreeMap<&str, BTreeSet<&str>> = Default::default();
    let mut writers: HashMap<&str, usize> = HashMap::new();
    for (agent_id, attempt, path) in written {
        if succeeded.contains(&(agent_id.as_str(), *attempt))
            && by_agent
                .entry(agent_id.as_str())
                .or_default()
                .insert(path.as_str())
        {
            *writers.entry(path.as_str()).or_default() += 1;
        }
    }
    by_agent
        .into_iter()
        .map(|(agent_id, paths)| AgentFiles {
            agent_id: AgentId::from(agent_id),
            files: paths
                .into_iter()
                .map(|path| FileChange {
                    path: path.to_owned(),
                    lines: line_counts
                        .and_then(|counts| counts.get(path).copied().unwrap_or(Some((0, 0)))),
                    shared: writers.get(path).copied().unwrap_or(0) > 1,
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn numstat_records_split_on_nul_with_tabs_and_dashes_for_binary_files() {
        let counts = parse_numstat("3\t1\tsrc/a b.ts\0-\t-\tlogo.png\x000\t7\tsrc/tab\there.ts\0");
        assert_eq!(counts.len(), 3);
        assert_eq!(counts["src/a b.ts"], Some((3, 1)));
        assert_eq!(counts["logo.png"], None);
        assert_eq!(counts["src/tab\there.ts"], Some((0, 7)));
    }
}
