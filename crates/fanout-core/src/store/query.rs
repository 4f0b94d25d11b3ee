//! The read side: what `fanout runs` and `fanout show` print, and what a resumed run reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, params};
use serde::Serialize;

use super::{AgentStatus, RunStatus, StoreError, elapsed, parse_mode, schema};
use crate::config::Mode;
use crate::ids::{AgentId, RunId};

/// A run's row in `runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub run_id: RunId,
    pub workflow: String,
    pub config_path: Option<String>,
    pub plan_hash: Option<String>,
    pub repo: Option<String>,
    pub status: RunStatus,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub base_commit: Option<String>,
    pub agents_planned: u64,
    pub total_tokens: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_cost_usd: f64,
    pub error: Option<String>,
}

/// What the successful agents of one model used over some earlier runs (sums).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObservedUsage {
    pub runs: u64,
    pub agents: u64,
    pub calls: u64,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub dollars: f64,
    /// Wall time of those attempts, summed.
    pub seconds: f64,
}

/// What an attempt's recorded model calls used (`model_call` events), summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Spent {
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub dollars: f64,
    /// Dollars the prompt cache saved.
    pub cache_saved: f64,
}

/// `(agent_id, attempt) → what its recorded model calls used`.
pub type UnfinishedUsage = std::collections::HashMap<(AgentId, u32), Spent>;

/// A run's agents, each counted once, by the status of its **last** attempt; and what every
/// attempt cost. The one source of the counts `fanout runs`, `fanout show`, a run's summary
/// and its exit code report (see the README's "Statuses").
///
/// - `success`: its last attempt succeeded; its changes are in the tree.
/// - `failure`: its last attempt ended unsuccessfully with nothing to undo.
/// - `rollback`: its last attempt ended unsuccessfully and its changes were undone (an
///   attempt interrupted by a crash is closed as `rollback` when the run is resumed).
/// - `running`: its last attempt has no end yet: in flight, or interrupted by a crash and
///   not resumed yet.
/// - `not_run`: planned, but no attempt was ever recorded (a dependency failed, the budget
///   ran out, the run was cancelled or killed before it started).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatusCounts {
    pub planned: u64,
    pub success: u64,
    pub failure: u64,
    pub rollback: u64,
    pub running: u64,
    pub not_run: u64,
    /// Attempts over all agents (retries and escalations are attempts).
    pub attempts: u64,
    /// Agents whose last attempt was escalated from `fast` to `default`.
    pub escalated: u64,
    /// Requests the policy refused, over all attempts.
    pub denials: u64,
    /// Tool calls recorded, over all attempts.
    pub tool_calls: u64,
    /// Tokens and dollars over all attempts, including attempts that failed, were rolled
    /// back or were interrupted (their model calls were paid for all the same).
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache.
    pub cache_write_tokens: u64,
    pub tokens_fast: u64,
    pub tokens_default: u64,
    pub dollars: f64,
    /// Dollars the prompt cache saved: the cost at the full input price minus `dollars`.
    pub cache_saved: f64,
}

/// "3 succeeded, 1 rolled back, 1 not run (of 5)": a run's agents, each counted once, in the
/// words every report uses. `unfinished` names agents whose last attempt has no end
/// (`running or interrupted` while a run may be going, `interrupted` once it has ended).
pub fn agents_sentence(
    [success, failure, rollback, unfinished, not_run]: [u64; 5],
    unfinished_word: &str,
    planned: u64,
) -> String {
    let mut parts = vec![format!("{success} succeeded")];
    for (n, what) in [
        (failure, "failed"),
        (rollback, "rolled back"),
        (unfinished, unfinished_word),
        (not_run, "not run"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    format!("{} (of {planned})", parts.join(", "))
}

/// "1200 of 2000 input tokens read from the cache (60.0%), 200 written; saved $0.0020": the
/// prompt cache's part of a bill, in the words every report uses.
pub fn cache_sentence(read: u64, written: u64, input: u64, saved: f64) -> String {
    let share = if input == 0 {
        0.0
    } else {
        100.0 * read as f64 / input as f64
    };
    format!(
        "{read} of {input} input tokens read from the cache ({share:.1}%), {written} written; \
         saved ${saved:.4}"
    )
}

impl StatusCounts {
    /// [`cache_sentence`] of these counts.
    pub fn describe_cache(&self) -> String {
        cache_sentence(
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.input_tokens,
            self.cache_saved,
        )
    }

    /// [`agents_sentence`] of these counts.
    pub fn describe(&self) -> String {
        agents_sentence(
            [
                self.success,
                self.failure,
                self.rollback,
                self.running,
                self.not_run,
            ],
            "running or interrupted",
            self.planned,
        )
    }

    /// Agents with at least one attempt.
    pub fn total(&self) -> u64 {
        self.running + self.success + self.failure + self.rollback
    }

    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// The share of input tokens read from the prompt cache (0 with no input).
    pub fn cached_share(&self) -> f64 {
        if self.input_tokens == 0 {
            0.0
        } else {
            self.cache_read_tokens as f64 / self.input_tokens as f64
        }
    }
}

/// A run with its agent counts: one line of `fanout runs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunSummary {
    #[serde(flatten)]
    pub run: RunRow,
    pub agents: StatusCounts,
}

/// One `agent_runs` row (one attempt of one agent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    pub run_id: RunId,
    pub agent_id: AgentId,
    pub attempt: u32,
    pub task_description: Option<String>,
    pub files_accessed: Vec<String>,
    pub tools_called: Vec<String>,
    /// `None` while in flight.
    pub status: Option<AgentStatus>,
    pub token_count: u64,
    pub mode: Option<Mode>,
    pub timestamp_start: Option<String>,
    pub timestamp_end: Option<String>,
    pub model: Option<String>,
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from the prompt cache.
    pub cache_read_tokens: u64,
    /// Of `input_tokens`, those written to the prompt cache.
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// Dollars the cache saved (cost at the full input price minus `cost_usd`).
    pub cache_saved_usd: f64,
    pub escalated: bool,
    pub error: Option<String>,
    pub checkpoint: Option<String>,
}

impl AgentRow {
    /// Wall time of the attempt, once finished.
    pub fn duration(&self) -> Option<Duration> {
        elapsed(
            self.timestamp_start.as_deref()?,
            self.timestamp_end.as_deref()?,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ToolCallRow {
    pub attempt: u32,
    pub seq: u32,
    pub tool: String,
    pub target: Option<String>,
    pub ok: bool,
    /// `ok`, `error` or `denied` (`None` in stores written before it was recorded).
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: Option<u64>,
    pub bytes: Option<u64>,
    pub paths: Vec<String>,
}

impl ToolCallRow {
    pub fn duration(&self) -> Option<Duration> {
        elapsed(&self.started_at, self.ended_at.as_deref()?)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DenialRow {
    pub attempt: u32,
    pub tool: String,
    pub target: Option<String>,
    pub reason: String,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointRow {
    pub seq: u64,
    pub commit_id: String,
    pub ref_name: String,
    pub label: String,
    pub completed_agents: u64,
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    pub seq: u64,
    pub at: String,
    pub agent_id: Option<AgentId>,
    pub kind: String,
    pub payload: serde_json::Value,
}

/// One run in full: `fanout show RUN_ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub summary: RunSummary,
    /// Every attempt, ordered by start time.
    pub agent_runs: Vec<AgentRow>,
    pub checkpoints: Vec<CheckpointRow>,
    /// Denied requests per agent (agents with none are absent).
    pub denials_by_agent: std::collections::HashMap<AgentId, u64>,
}

/// One agent in full: `fanout show RUN_ID AGENT_ID`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentDetail {
    pub run_id: RunId,
    pub agent_id: AgentId,
    /// Every attempt, first to last.
    pub attempts: Vec<AgentRow>,
    pub tool_calls: Vec<ToolCallRow>,
    pub denials: Vec<DenialRow>,
}

/// A reading connection of its own. Cheap to open; WAL lets it read while the writer writes.
#[derive(Debug)]
pub struct StoreReader {
    conn: Connection,
    path: PathBuf,
}

const RUN_COLUMNS: &str = "run_id, workflow, config_path, plan_hash, repo, status, started_at,
    ended_at, base_commit, agents_planned, total_tokens, total_input_tokens,
    total_output_tokens, total_cost_usd, error";

const AGENT_COLUMNS: &str = "run_id, agent_id, attempt, task_description, files_accessed,
    tools_called, status, token_count, mode, timestamp_start, timestamp_end, model,
    input_tokens, output_tokens, cost_usd, escalated, error, checkpoint, cache_read_tokens,
    cache_write_tokens, cache_saved_usd";

fn unsigned(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: Option<i64> = row.get(index)?;
    Ok(value.unwrap_or(0).max(0) as u64)
}

fn small(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    let value: i64 = row.get(index)?;
    Ok(u32::try_from(value.max(0)).unwrap_or(u32::MAX))
}

/// A value read from a row that still needs checking against our vocabulary.
struct Raw<T> {
    value: T,
    bad: Option<(&'static str, String)>,
}

impl StoreReader {
    /// Open the database at `path` for reading. A missing file is [`StoreError::Missing`]; an
    /// older schema is migrated (the file must be writable then); a newer one is refused.
    pub fn open(path: &Path) -> Result<StoreReader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn =
            Connection::open_with_flags(path, flags).map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        schema::configure(&conn, path)?;
        if schema::user_version(&conn, path)? != schema::SCHEMA_VERSION {
            schema::migrate(&mut conn, path)?;
        }
        Ok(StoreReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Open `<repo>/.fanout/fanout.db`.
    pub fn open_in_repo(repo: &Path) -> Result<StoreReader, StoreError> {
        StoreReader::open(&super::db_path(repo))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sqlite(&self, what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn check<T>(&self, raw: Raw<T>) -> Result<T, StoreError> {
        match raw.bad {
            None => Ok(raw.value),
            Some((column, value)) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                column,
                value,
            }),
        }
    }

    fn run_row(row: &Row<'_>) -> rusqlite::Result<Raw<RunRow>> {
        let status: String = row.get(5)?;
        let parsed = RunStatus::parse(&status);
        Ok(Raw {
            bad: parsed.is_none().then(|| ("runs.status", status.clone())),
            value: RunRow {
                run_id: row.get(0)?,
                workflow: row.get(1)?,
                config_path: row.get(2)?,
                plan_hash: row.get(3)?,
                repo: row.get(4)?,
                status: parsed.unwrap_or(RunStatus::Failed),
                started_at: row.get(6)?,
                ended_at: row.get(7)?,
                base_commit: row.get(8)?,
                agents_planned: unsigned(row, 9)?,
                total_tokens: unsigned(row, 10)?,
                total_input_tokens: unsigned(row, 11)?,
                total_output_tokens: unsigned(row, 12)?,
                total_cost_usd: row.get(13)?,
                error: row.get(14)?,
            },
        })
    }

    fn agent_row(row: &Row<'_>) -> rusqlite::Result<Raw<AgentRow>> {
        let files: Option<String> = row.get(4)?;
        let tools: Option<String> = row.get(5)?;
        let status: Option<String> = row.get(6)?;
        let mode: Option<String> = row.get(8)?;
        let mut bad = None;
        let files_accessed = match files.as_deref().map(serde_json::from_str::<Vec<String>>) {
            None => Vec::new(),
            Some(Ok(list)) => list,
            Some(Err(_)) => {
                bad = Some((
                    "agent_runs.files_accessed",
                    files.clone().unwrap_or_default(),
                ));
                Vec::new()
            }
        };
        let tools_called = match tools.as_deref().map(serde_json::from_str::<Vec<String>>) {
            None => Vec::new(),
            Some(Ok(list)) => list,
            Some(Err(_)) => {
                bad = Some(("agent_runs.tools_called", tools.clone().unwrap_or_default()));
                Vec::new()
            }
        };
        let parsed_status = status.as_deref().map(AgentStatus::parse);
        if let (Some(None), Some(text)) = (parsed_status, &status) {
            bad = Some(("agent_runs.status", text.clone()));
        }
        let parsed_mode = mode.as_deref().map(parse_mode);
        if let (Some(None), Some(text)) = (parsed_mode, &mode) {
            bad = Some(("agent_runs.mode", text.clone()));
        }
        let escalated: i64 = row.get(15)?;
        Ok(Raw {
            bad,
            value: AgentRow {
                run_id: row.get(0)?,
                agent_id: row.get(1)?,
                attempt: small(row, 2)?,
                task_description: row.get(3)?,
                files_accessed,
                tools_called,
                status: parsed_status.flatten(),
                token_count: unsigned(row, 7)?,
                mode: parsed_mode.flatten(),
                timestamp_start: row.get(9)?,
                timestamp_end: row.get(10)?,
                model: row.get(11)?,
                input_tokens: unsigned(row, 12)?,
                output_tokens: unsigned(row, 13)?,
                cost_usd: row.get(14)?,
                escalated: escalated != 0,
                error: row.get(16)?,
                checkpoint: row.get(17)?,
                cache_read_tokens: unsigned(row, 18)?,
                cache_write_tokens: unsigned(row, 19)?,
                cache_saved_usd: row.get(20)?,
            },
        })
    }

    fn counts(&self, run_id: &RunId, planned: u64) -> Result<StatusCounts, StoreError> {
        let what = "counting agents";
        let mut counts = StatusCounts {
            planned,
            ..StatusCounts::default()
        };
        {
            let mut stmt = self
                .conn
                .prepare_cached(
                    "SELECT a.status, a.escalated FROM agent_runs a
                     JOIN (SELECT agent_id, MAX(attempt) AS last FROM agent_runs
                           WHERE run_id = ?1 GROUP BY agent_id) l
                       ON a.agent_id = l.agent_id AND a.attempt = l.last
                     WHERE a.run_id = ?1",
                )
                .map_err(self.sqlite(what))?;
            let rows = stmt
                .query_map([run_id], |row| {
                    Ok((row.get::<_, Option<String>>(0)?, row.get::<_, i64>(1)?))
                })
                .map_err(self.sqlite(what))?;
            for row in rows {
                let (status, escalated) = row.map_err(self.sqlite(what))?;
                counts.escalated += u64::from(escalated != 0);
                match status.as_deref().map(AgentStatus::parse) {
                    None => counts.running += 1,
                    Some(Some(AgentStatus::Success)) => counts.success += 1,
                    Some(Some(AgentStatus::Failure)) => counts.failure += 1,
                    Some(Some(AgentStatus::Rollback)) => counts.rollback += 1,
                    Some(None) => {
                        return Err(StoreError::Corrupt {
                            path: self.path.clone(),
                            column: "agent_runs.status",
                            value: status.unwrap_or_default(),
                        });
                    }
                }
            }
        }
        type Sums = (i64, i64, i64, i64, i64, f64, i64, i64, f64);
        let (attempts, input, output, fast, default, dollars, read, written, saved): Sums = self
            .conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0),
                    COALESCE(SUM(output_tokens), 0),
                    COALESCE(SUM(CASE WHEN mode = 'fast' THEN token_count ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN mode = 'fast' THEN 0 ELSE token_count END), 0),
                    COALESCE(SUM(cost_usd), 0.0),
                    COALESCE(SUM(cache_read_tokens), 0),
                    COALESCE(SUM(cache_write_tokens), 0),
                    COALESCE(SUM(cache_saved_usd), 0.0)
                 FROM agent_runs WHERE run_id = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row([run_id], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                        row.get(6)?,
                        row.get(7)?,
                        row.get(8)?,
                    ))
                })
            })
            .map_err(self.sqlite(what))?;
        let count = |sql: &str| -> Result<i64, StoreError> {
            self.conn
                .prepare_cached(sql)
                .and_then(|mut stmt| stmt.query_row([run_id], |row| row.get(0)))
                .map_err(self.sqlite(what))
        };
        counts.denials = count("SELECT COUNT(*) FROM denials WHERE run_id = ?1")?.max(0) as u64;
        counts.tool_calls =
            count("SELECT COUNT(*) FROM tool_calls WHERE run_id = ?1")?.max(0) as u64;
        counts.attempts = attempts.max(0) as u64;
        counts.input_tokens = input.max(0) as u64;
        counts.output_tokens = output.max(0) as u64;
        counts.tokens_fast = fast.max(0) as u64;
        counts.tokens_default = default.max(0) as u64;
        counts.dollars = dollars;
        counts.cache_read_tokens = read.max(0) as u64;
        counts.cache_write_tokens = written.max(0) as u64;
        counts.cache_saved = saved;
        counts.not_run = planned.saturating_sub(counts.total());
        Ok(counts)
    }

    /// What agents of each model actually used in earlier runs of this repository: successful
    /// attempts that recorded their model calls, in real (or, with `simulated`, simulated)
    /// runs, over the most recent `last_runs` such runs.
    pub fn observed_usage(
        &self,
        simulated: bool,
        last_runs: u32,
    ) -> Result<std::collections::BTreeMap<String, ObservedUsage>, StoreError> {
        let what = "reading earlier runs' usage";
        let mut stmt = self
            .conn
            .prepare_cached(
                "WITH recent AS (
                     SELECT run_id FROM runs WHERE simulated = ?1
                       AND EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.run_id
                                   AND e.kind = 'model_call')
                     ORDER BY started_at DESC LIMIT ?2),
                 calls AS (
                     SELECT run_id, agent_id, json_extract(payload, '$.attempt') AS attempt,
                            COUNT(*) AS n
                     FROM events WHERE kind = 'model_call' AND run_id IN (SELECT run_id FROM recent)
                     GROUP BY run_id, agent_id, attempt)
                 SELECT a.model, COUNT(DISTINCT a.run_id), COUNT(*), SUM(a.input_tokens),
                        SUM(a.output_tokens), SUM(a.cost_usd), SUM(c.n),
                        SUM((julianday(a.timestamp_end) - julianday(a.timestamp_start)) * 86400.0),
                        SUM(a.cache_read_tokens), SUM(a.cache_write_tokens)
                 FROM agent_runs a JOIN calls c
                   ON c.run_id = a.run_id AND c.agent_id = a.agent_id AND c.attempt = a.attempt
                 WHERE a.status = 'success' AND a.model IS NOT NULL
                 GROUP BY a.model",
            )
            .map_err(self.sqlite(what))?;
        let rows = stmt
            .query_map(params![simulated, i64::from(last_runs)], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, f64>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, Option<f64>>(7)?,
                    row.get::<_, i64>(8)?,
                    row.get::<_, i64>(9)?,
                ))
            })
            .map_err(self.sqlite(what))?;
        let mut out = std::collections::BTreeMap::new();
        for row in rows {
            let (model, runs, agents, input, output, dollars, calls, seconds, read, written) =
                row.map_err(self.sqlite(what))?;
            if agents <= 0 || calls <= 0 {
                continue;
            }
            out.insert(
                model,
                ObservedUsage {
                    runs: runs.max(0) as u64,
                    agents: agents as u64,
                    calls: calls as u64,
                    input_tokens: input.max(0) as u64,
                    output_tokens: output.max(0) as u64,
                    cache_read_tokens: read.max(0) as u64,
                    cache_write_tokens: written.max(0) as u64,
                    dollars,
                    seconds: seconds.unwrap_or(0.0).max(0.0),
                },
            );
        }
        Ok(out)
    }

    /// Denials per agent of a run (agents with none are absent).
    pub fn denials_by_agent(
        &self,
        run_id: &RunId,
    ) -> Result<std::collections::HashMap<AgentId, u64>, StoreError> {
        let what = "counting denials";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT agent_id, COUNT(*) FROM denials WHERE run_id = ?1 GROUP BY agent_id",
            )
            .map_err(self.sqlite(what))?;
        let rows = stmt
            .query_map([run_id], |row| {
                Ok((row.get::<_, AgentId>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(self.sqlite(what))?;
        rows.map(|row| row.map(|(agent, n)| (agent, n.max(0) as u64)))
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sqlite(what))
    }

    /// Usage of attempts that have no end row yet, summed from their `model_call` events:
    /// `(agent_id, attempt) → (input tokens, output tokens, dollars)`. A resumed run closes
    /// interrupted attempts with what they spent.
    pub fn unfinished_usage(&self, run_id: &RunId) -> Result<UnfinishedUsage, StoreError> {
        let what = "summing usage of interrupted attempts";
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT e.agent_id, json_extract(e.payload, '$.attempt') AS attempt,
                    SUM(json_extract(e.payload, '$.input_tokens')),
                    SUM(json_extract(e.payload, '$.output_tokens')),
                    SUM(json_extract(e.payload, '$.dollars')),
                    SUM(json_extract(e.payload, '$.cache_read_tokens')),
                    SUM(json_extract(e.payload, '$.cache_write_tokens')),
                    SUM(json_extract(e.payload, '$.cache_saved'))
                 FROM events e JOIN agent_runs a
                   ON a.run_id = e.run_id AND a.agent_id = e.agent_id
                      AND a.attempt = json_extract(e.payload, '$.attempt')
                 WHERE e.run_id = ?1 AND e.kind = 'model_call' AND a.status IS NULL
                 GROUP BY e.agent_id, attempt",
            )
            .map_err(self.sqlite(what))?;
        let rows = stmt
            .query_map([run_id], |row| {
                Ok((
                    row.get::<_, AgentId>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, Option<i64>>(2)?,
                    row.get::<_, Option<i64>>(3)?,
                    row.get::<_, Option<f64>>(4)?,
                    row.get::<_, Option<i64>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, Option<f64>>(7)?,
                ))
            })
            .map_err(self.sqlite(what))?;
        let mut out = std::collections::HashMap::new();
        let count = |n: Option<i64>| n.unwrap_or(0).max(0) as u64;
        for row in rows {
            let (agent, attempt, input, output, dollars, read, written, saved) =
                row.map_err(self.sqlite(what))?;
            out.insert(
                (agent, u32::try_from(attempt.max(0)).unwrap_or(u32::MAX)),
                Spent {
                    input_tokens: count(input),
                    output_tokens: count(output),
                    cache_read_tokens: count(read),
                    cache_write_tokens: count(written),
                    dollars: dollars.unwrap_or(0.0),
                    cache_saved: saved.unwrap_or(0.0),
                },
            );
        }
        Ok(out)
    }

    /// Every run, newest first, with agent counts by status.
    pub fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let raws = {
            let mut stmt = self
                .conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, run_id DESC"
                ))
                .map_err(self.sqlite("listing runs"))?;
            stmt.query_map([], Self::run_row)
                .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                .map_err(self.sqlite("listing runs"))?
        };
        let mut runs = Vec::with_capacity(raws.len());
        for raw in raws {
            let run = self.check(raw)?;
            let agents = self.counts(&run.run_id, run.agents_planned)?;
            runs.push(RunSummary { run, agents });
        }
        Ok(runs)
    }

    /// One run's row and counts.
    pub fn run_summary(&self, run_id: &RunId) -> Result<Option<RunSummary>, StoreError> {
        let raw = self
            .conn
            .prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1"))
            .and_then(|mut stmt| stmt.query_row([run_id], Self::run_row).optional())
            .map_err(self.sqlite("reading a run"))?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let run = self.check(raw)?;
        let agents = self.counts(run_id, run.agents_planned)?;
        Ok(Some(RunSummary { run, agents }))
    }

    /// One run with all its agent attempts and checkpoints.
    pub fn run(&self, run_id: &RunId) -> Result<Option<RunDetail>, StoreError> {
        let Some(summary) = self.run_summary(run_id)? else {
            return Ok(None);
        };
        Ok(Some(RunDetail {
            summary,
            agent_runs: self.agent_runs(run_id)?,
            checkpoints: self.checkpoints(run_id)?,
            denials_by_agent: self.denials_by_agent(run_id)?,
        }))
    }

    /// Every agent attempt of a run, by start time then agent id.
    pub fn agent_runs(&self, run_id: &RunId) -> Result<Vec<AgentRow>, StoreError> {
        let raws = self
            .conn
            .prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agent_runs WHERE run_id = ?1
                 ORDER BY timestamp_start, agent_id, attempt"
            ))
            .and_then(|mut stmt| {
                stmt.query_map([run_id], Self::agent_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing agent runs"))?;
        raws.into_iter().map(|raw| self.check(raw)).collect()
    }

    /// One agent: its attempts, tool calls and denials. `None` if the run has no such agent.
    pub fn agent(
        &self,
        run_id: &RunId,
        agent_id: &AgentId,
    ) -> Result<Option<AgentDetail>, StoreError> {
        let raws = self
            .conn
            .prepare_cached(&format!(
                "SELECT {AGENT_COLUMNS} FROM agent_runs WHERE run_id = ?1 AND agent_id = ?2
                 ORDER BY attempt"
            ))
            .and_then(|mut stmt| {
                stmt.query_map(params![run_id, agent_id], Self::agent_row)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("reading an agent"))?;
        if raws.is_empty() {
            return Ok(None);
        }
        let attempts = raws
            .into_iter()
            .map(|raw| self.check(raw))
            .collect::<Result<Vec<_>, _>>()?;
        let tool_calls = self
            .conn
            .prepare_cached(
                "SELECT attempt, seq, tool, target, ok, error, started_at, ended_at, outcome,
                     duration_ms, bytes, paths
                 FROM tool_calls WHERE run_id = ?1 AND agent_id = ?2 ORDER BY attempt, seq",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![run_id, agent_id], |row| {
                    Ok(ToolCallRow {
                        attempt: small(row, 0)?,
                        seq: small(row, 1)?,
                        tool: row.get(2)?,
                        target: row.get(3)?,
                        ok: row.get::<_, i64>(4)? != 0,
                        error: row.get(5)?,
                        started_at: row.get(6)?,
                        ended_at: row.get(7)?,
                        outcome: row.get(8)?,
                        duration_ms: row.get::<_, Option<i64>>(9)?.map(|v| v.max(0) as u64),
                        bytes: row.get::<_, Option<i64>>(10)?.map(|v| v.max(0) as u64),
                        paths: row
                            .get::<_, Option<String>>(11)?
                            .and_then(|text| serde_json::from_str(&text).ok())
                            .unwrap_or_default(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing tool calls"))?;
        let denials = self
            .conn
            .prepare_cached(
                "SELECT attempt, tool, target, reason, at
                 FROM denials WHERE run_id = ?1 AND agent_id = ?2 ORDER BY at, id",
            )
            .and_then(|mut stmt| {
                stmt.query_map(params![run_id, agent_id], |row| {
                    Ok(DenialRow {
                        attempt: small(row, 0)?,
                        tool: row.get(1)?,
                        target: row.get(2)?,
                        reason: row.get(3)?,
                        at: row.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing denials"))?;
        Ok(Some(AgentDetail {
            run_id: run_id.to_owned(),
            agent_id: agent_id.clone(),
            attempts,
            tool_calls,
            denials,
        }))
    }

    /// A run's checkpoints, base (0) first.
    pub fn checkpoints(&self, run_id: &RunId) -> Result<Vec<CheckpointRow>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT seq, commit_id, ref_name, label, completed_agents, at
                 FROM checkpoints WHERE run_id = ?1 ORDER BY seq",
            )
            .and_then(|mut stmt| {
                stmt.query_map([run_id], |row| {
                    Ok(CheckpointRow {
                        seq: unsigned(row, 0)?,
                        commit_id: row.get(1)?,
                        ref_name: row.get(2)?,
                        label: row.get(3)?,
                        completed_agents: unsigned(row, 4)?,
                        at: row.get(5)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing checkpoints"))
    }

    /// A run's events in order.
    pub fn events(&self, run_id: &RunId) -> Result<Vec<EventRow>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT seq, at, agent_id, kind, payload FROM events WHERE run_id = ?1
                 ORDER BY seq",
            )
            .and_then(|mut stmt| {
                stmt.query_map([run_id], |row| {
                    Ok((
                        unsigned(row, 0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Option<AgentId>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing events"))?;
        rows.into_iter()
            .map(|(seq, at, agent_id, kind, payload)| {
                let payload = serde_json::from_str(&payload).map_err(|_| StoreError::Corrupt {
                    path: self.path.clone(),
                    column: "events.payload",
                    value: payload.clone(),
                })?;
                Ok(EventRow {
                    seq,
                    at,
                    agent_id,
                    kind,
                    payload,
                })
            })
            .collect()
    }

    /// Every denial of a run, with the agent it belongs to, in the order they happened.
    pub fn run_denials(&self, run_id: &RunId) -> Result<Vec<(AgentId, DenialRow)>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT agent_id, attempt, tool, target, reason, at
                 FROM denials WHERE run_id = ?1 ORDER BY at, id",
            )
            .and_then(|mut stmt| {
                stmt.query_map([run_id], |row| {
                    Ok((
                        row.get::<_, AgentId>(0)?,
                        DenialRow {
                            attempt: small(row, 1)?,
                            tool: row.get(2)?,
                            target: row.get(3)?,
                            reason: row.get(4)?,
                            at: row.get(5)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing a run's denials"))
    }

    /// Every tool call of a run with the agent that made it, by agent, attempt and order.
    pub fn run_tool_calls(
        &self,
        run_id: &RunId,
    ) -> Result<Vec<(AgentId, ToolCallRow)>, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT agent_id, attempt, seq, tool, target, ok, error, started_at, ended_at,
                     outcome, duration_ms, bytes, paths
                 FROM tool_calls WHERE run_id = ?1 ORDER BY agent_id, attempt, seq",
            )
            .and_then(|mut stmt| {
                stmt.query_map([run_id], |row| {
                    Ok((
                        row.get::<_, AgentId>(0)?,
                        ToolCallRow {
                            attempt: small(row, 1)?,
                            seq: small(row, 2)?,
                            tool: row.get(3)?,
                            target: row.get(4)?,
                            ok: row.get::<_, i64>(5)? != 0,
                            error: row.get(6)?,
                            started_at: row.get(7)?,
                            ended_at: row.get(8)?,
                            outcome: row.get(9)?,
                            duration_ms: row.get::<_, Option<i64>>(10)?.map(|v| v.max(0) as u64),
                            bytes: row.get::<_, Option<i64>>(11)?.map(|v| v.max(0) as u64),
                            paths: row
                                .get::<_, Option<String>>(12)?
                                .and_then(|text| serde_json::from_str(&text).ok())
                                .unwrap_or_default(),
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing a run's tool calls"))
    }

    /// The paths each attempt's successful `write_file` and `edit_file` calls wrote:
    /// `(agent_id, attempt, path)`, one row per call and path, in call order.
    pub fn written_paths(&self, run_id: &RunId) -> Result<Vec<(AgentId, u32, String)>, StoreError> {
        let rows = self
            .conn
            .prepare_cached(
                "SELECT agent_id, attempt, target, paths FROM tool_calls
                 WHERE run_id = ?1 AND ok = 1 AND tool IN ('write_file', 'edit_file')
                 ORDER BY agent_id, attempt, seq",
            )
            .and_then(|mut stmt| {
                stmt.query_map([run_id], |row| {
                    Ok((
                        row.get::<_, AgentId>(0)?,
                        small(row, 1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, Option<String>>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(self.sqlite("listing written paths"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (agent_id, attempt, target, paths) in rows {
            let paths: Vec<String> = paths
                .and_then(|text| serde_json::from_str(&text).ok())
                .filter(|paths: &Vec<String>| !paths.is_empty())
                .or_else(|| target.map(|target| vec![target]))
                .unwrap_or_default();
            out.extend(
                paths
                    .into_iter()
                    .map(|path| (agent_id.clone(), attempt, path)),
            );
        }
        Ok(out)
    }

    /// Pre-image manifests (JSON) recorded for `run_id`, by agent.
    pub fn preimages(&self, run_id: &RunId) -> Result<Vec<(AgentId, String)>, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: self.path.clone(),
            what: "reading pre-images",
            source,
        };
        let mut stmt = self
            .conn
            .prepare_cached("SELECT agent_id, manifest FROM preimages WHERE run_id = ?1")
            .map_err(sqlite)?;
        let rows = stmt
            .query_map([run_id], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(sqlite)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sqlite)
    }

    /// The connection, for raw read-only queries in tests and diagnostics.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}
