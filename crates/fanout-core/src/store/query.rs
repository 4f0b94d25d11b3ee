//! The read side: what `fanout runs` and `fanout show` print, and what a resumed run reads.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::db::{Db, DbError, Dialect, SqlValue, agent_groups};
use super::location::StoreLocation;
use super::postgres::{self, PostgresDb};
use super::sqlite::SqliteDb;
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

/// A reading connection of its own. Cheap to open: on SQLite, WAL lets it read while the
/// writer writes; on PostgreSQL it is a connection (and a thread) of its own.
pub struct StoreReader {
    db: Box<dyn Db>,
    location: StoreLocation,
    store: String,
}

impl std::fmt::Debug for StoreReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreReader")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

const RUN_COLUMNS: &str = "run_id, workflow, config_path, plan_hash, repo, status, started_at,
    ended_at, base_commit, agents_planned, total_tokens, total_input_tokens,
    total_output_tokens, total_cost_usd, error";

const AGENT_COLUMNS: &str = "run_id, agent_id, attempt, task_description, files_accessed,
    tools_called, status, token_count, mode, timestamp_start, timestamp_end, model,
    input_tokens, output_tokens, cost_usd, escalated, error, checkpoint, cache_read_tokens,
    cache_write_tokens, cache_saved_usd";

/// One row as read, with typed accessors that name the query in their errors.
struct Cells<'a> {
    values: &'a [SqlValue],
    store: &'a str,
    what: &'static str,
}

impl Cells<'_> {
    fn bad(&self, index: usize) -> StoreError {
        StoreError::Corrupt {
            store: self.store.to_owned(),
            column: self.what,
            value: format!("column {index}: {:?}", self.values.get(index)),
        }
    }

    fn opt_text(&self, index: usize) -> Result<Option<String>, StoreError> {
        match self.values.get(index) {
            Some(SqlValue::Null) => Ok(None),
            Some(SqlValue::Text(text)) => Ok(Some(text.clone())),
            _ => Err(self.bad(index)),
        }
    }

    fn text(&self, index: usize) -> Result<String, StoreError> {
        self.opt_text(index)?.ok_or_else(|| self.bad(index))
    }

    fn opt_int(&self, index: usize) -> Result<Option<i64>, StoreError> {
        match self.values.get(index) {
            Some(SqlValue::Null) => Ok(None),
            Some(SqlValue::Int(n)) => Ok(Some(*n)),
            _ => Err(self.bad(index)),
        }
    }

    fn int(&self, index: usize) -> Result<i64, StoreError> {
        self.opt_int(index)?.ok_or_else(|| self.bad(index))
    }

    /// A count or total: NULL is 0, negatives are 0.
    fn unsigned(&self, index: usize) -> Result<u64, StoreError> {
        Ok(self.opt_int(index)?.unwrap_or(0).max(0) as u64)
    }

    fn opt_unsigned(&self, index: usize) -> Result<Option<u64>, StoreError> {
        Ok(self.opt_int(index)?.map(|n| n.max(0) as u64))
    }

    /// An attempt or sequence number.
    fn small(&self, index: usize) -> Result<u32, StoreError> {
        Ok(u32::try_from(self.int(index)?.max(0)).unwrap_or(u32::MAX))
    }

    /// Dollars: NULL is 0; an integer (SQLite keeps `0` as one in places) is read as such.
    fn real(&self, index: usize) -> Result<f64, StoreError> {
        match self.values.get(index) {
            Some(SqlValue::Null) => Ok(0.0),
            Some(SqlValue::Real(n)) => Ok(*n),
            Some(SqlValue::Int(n)) => Ok(*n as f64),
            _ => Err(self.bad(index)),
        }
    }

    fn opt_real(&self, index: usize) -> Result<Option<f64>, StoreError> {
        match self.values.get(index) {
            Some(SqlValue::Null) => Ok(None),
            _ => self.real(index).map(Some),
        }
    }

    fn json_list(&self, index: usize) -> Result<Option<Vec<String>>, StoreError> {
        Ok(self
            .opt_text(index)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }
}

impl StoreReader {
    /// Open the SQLite database at `path` for reading. A missing file is
    /// [`StoreError::Missing`]; an older schema is migrated (the file must be writable then);
    /// a newer one is refused.
    pub fn open(path: &Path) -> Result<StoreReader, StoreError> {
        StoreReader::open_at(&StoreLocation::Sqlite(path.to_path_buf()))
    }

    /// Open `<repo>/.fanout/fanout.db`.
    pub fn open_in_repo(repo: &Path) -> Result<StoreReader, StoreError> {
        StoreReader::open(&super::db_path(repo))
    }

    /// Open the store at `location` for reading. A PostgreSQL database that was never used
    /// is migrated (its tables are empty); a newer schema is refused on both backends.
    pub fn open_at(location: &StoreLocation) -> Result<StoreReader, StoreError> {
        let db: Box<dyn Db> = match location {
            StoreLocation::Sqlite(path) => Box::new(SqliteDb::open_reader(path)?),
            StoreLocation::Postgres(url) => {
                let db = PostgresDb::connect(url)?;
                let store = url.to_string();
                if postgres::schema_version(&db, &store)? != schema::SCHEMA_VERSION {
                    postgres::migrate(&db, &store)?;
                }
                Box::new(db)
            }
        };
        Ok(StoreReader {
            db,
            store: location.to_string(),
            location: location.clone(),
        })
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// The SQLite file, when the store is one.
    pub fn path(&self) -> Option<&Path> {
        self.location.sqlite_path()
    }

    fn failed(&self, what: &'static str) -> impl Fn(DbError) -> StoreError + '_ {
        move |source| StoreError::Database {
            store: self.store.clone(),
            what,
            source,
        }
    }

    /// Run `sql` with `params`; each row through `read`.
    fn rows<T>(
        &self,
        what: &'static str,
        sql: &str,
        params: &[SqlValue],
        read: impl Fn(&Cells<'_>) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        let rows = self.db.query(sql, params).map_err(self.failed(what))?;
        rows.iter()
            .map(|values| {
                read(&Cells {
                    values,
                    store: &self.store,
                    what,
                })
            })
            .collect()
    }

    fn corrupt(&self, column: &'static str, value: String) -> StoreError {
        StoreError::Corrupt {
            store: self.store.clone(),
            column,
            value,
        }
    }

    fn run_row(&self, row: &Cells<'_>) -> Result<RunRow, StoreError> {
        let status = row.text(5)?;
        let Some(parsed) = RunStatus::parse(&status) else {
            return Err(self.corrupt("runs.status", status));
        };
        Ok(RunRow {
            run_id: RunId::from(row.text(0)?),
            workflow: row.text(1)?,
            config_path: row.opt_text(2)?,
            plan_hash: row.opt_text(3)?,
            repo: row.opt_text(4)?,
            status: parsed,
            started_at: row.text(6)?,
            ended_at: row.opt_text(7)?,
            base_commit: row.opt_text(8)?,
            agents_planned: row.unsigned(9)?,
            total_tokens: row.unsigned(10)?,
            total_input_tokens: row.unsigned(11)?,
            total_output_tokens: row.unsigned(12)?,
            total_cost_usd: row.real(13)?,
            error: row.opt_text(14)?,
        })
    }

    fn agent_row(&self, row: &Cells<'_>) -> Result<AgentRow, StoreError> {
        let list = |index: usize, column: &'static str| -> Result<Vec<String>, StoreError> {
            match row.opt_text(index)? {
                None => Ok(Vec::new()),
                Some(text) => serde_json::from_str::<Vec<String>>(&text)
                    .map_err(|_| self.corrupt(column, text)),
            }
        };
        let files_accessed = list(4, "agent_runs.files_accessed")?;
        let tools_called = list(5, "agent_runs.tools_called")?;
        let status = match row.opt_text(6)? {
            None => None,
            Some(text) => match AgentStatus::parse(&text) {
                Some(status) => Some(status),
                None => return Err(self.corrupt("agent_runs.status", text)),
            },
        };
        let mode = match row.opt_text(8)? {
            None => None,
            Some(text) => match parse_mode(&text) {
                Some(mode) => Some(mode),
                None => return Err(self.corrupt("agent_runs.mode", text)),
            },
        };
        Ok(AgentRow {
            run_id: RunId::from(row.text(0)?),
            agent_id: AgentId::from(row.text(1)?),
            attempt: row.small(2)?,
            task_description: row.opt_text(3)?,
            files_accessed,
            tools_called,
            status,
            token_count: row.unsigned(7)?,
            mode,
            timestamp_start: row.opt_text(9)?,
            timestamp_end: row.opt_text(10)?,
            model: row.opt_text(11)?,
            input_tokens: row.unsigned(12)?,
            output_tokens: row.unsigned(13)?,
            cost_usd: row.real(14)?,
            escalated: row.int(15)? != 0,
            error: row.opt_text(16)?,
            checkpoint: row.opt_text(17)?,
            cache_read_tokens: row.unsigned(18)?,
            cache_write_tokens: row.unsigned(19)?,
            cache_saved_usd: row.real(20)?,
        })
    }

    fn tool_call_row(row: &Cells<'_>, first: usize) -> Result<ToolCallRow, StoreError> {
        let at = |offset: usize| first + offset;
        Ok(ToolCallRow {
            attempt: row.small(at(0))?,
            seq: row.small(at(1))?,
            tool: row.text(at(2))?,
            target: row.opt_text(at(3))?,
            ok: row.int(at(4))? != 0,
            error: row.opt_text(at(5))?,
            started_at: row.text(at(6))?,
            ended_at: row.opt_text(at(7))?,
            outcome: row.opt_text(at(8))?,
            duration_ms: row.opt_unsigned(at(9))?,
            bytes: row.opt_unsigned(at(10))?,
            paths: row.json_list(at(11))?.unwrap_or_default(),
        })
    }

    fn denial_row(row: &Cells<'_>, first: usize) -> Result<DenialRow, StoreError> {
        Ok(DenialRow {
            attempt: row.small(first)?,
            tool: row.text(first + 1)?,
            target: row.opt_text(first + 2)?,
            reason: row.text(first + 3)?,
            at: row.text(first + 4)?,
        })
    }

    fn counts(&self, run_id: &RunId, planned: u64) -> Result<StatusCounts, StoreError> {
        let what = "counting agents";
        let mut counts = StatusCounts {
            planned,
            ..StatusCounts::default()
        };
        let last = self.rows(
            what,
            "SELECT a.status, a.escalated FROM agent_runs a
             JOIN (SELECT agent_id, MAX(attempt) AS last FROM agent_runs
                   WHERE run_id = ?1 GROUP BY agent_id) l
               ON a.agent_id = l.agent_id AND a.attempt = l.last
             WHERE a.run_id = ?1",
            &[run_id.into()],
            |row| Ok((row.opt_text(0)?, row.int(1)?)),
        )?;
        for (status, escalated) in last {
            counts.escalated += u64::from(escalated != 0);
            match status.as_deref().map(AgentStatus::parse) {
                None => counts.running += 1,
                Some(Some(AgentStatus::Success)) => counts.success += 1,
                Some(Some(AgentStatus::Failure)) => counts.failure += 1,
                Some(Some(AgentStatus::Rollback)) => counts.rollback += 1,
                Some(None) => {
                    return Err(self.corrupt("agent_runs.status", status.unwrap_or_default()));
                }
            }
        }
        let sums = self.rows(
            what,
            "SELECT COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN mode = 'fast' THEN token_count ELSE 0 END), 0)
                     AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN mode = 'fast' THEN 0 ELSE token_count END), 0)
                     AS BIGINT),
                COALESCE(SUM(cost_usd), 0.0),
                CAST(COALESCE(SUM(cache_read_tokens), 0) AS BIGINT),
                CAST(COALESCE(SUM(cache_write_tokens), 0) AS BIGINT),
                COALESCE(SUM(cache_saved_usd), 0.0),
                (SELECT COUNT(*) FROM denials WHERE run_id = ?1),
                (SELECT COUNT(*) FROM tool_calls WHERE run_id = ?1)
             FROM agent_runs WHERE run_id = ?1",
            &[run_id.into()],
            |row| {
                Ok((
                    [
                        row.unsigned(0)?,
                        row.unsigned(1)?,
                        row.unsigned(2)?,
                        row.unsigned(3)?,
                        row.unsigned(4)?,
                        row.unsigned(6)?,
                        row.unsigned(7)?,
                        row.unsigned(9)?,
                        row.unsigned(10)?,
                    ],
                    row.real(5)?,
                    row.real(8)?,
                ))
            },
        )?;
        if let Some((ints, dollars, saved)) = sums.into_iter().next() {
            let [
                attempts,
                input,
                output,
                fast,
                default,
                read,
                written,
                denials,
                tool_calls,
            ] = ints;
            counts.attempts = attempts;
            counts.input_tokens = input;
            counts.output_tokens = output;
            counts.tokens_fast = fast;
            counts.tokens_default = default;
            counts.cache_read_tokens = read;
            counts.cache_write_tokens = written;
            counts.denials = denials;
            counts.tool_calls = tool_calls;
            counts.dollars = dollars;
            counts.cache_saved = saved;
        }
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
        let sql = match self.db.dialect() {
            Dialect::Sqlite => {
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
                 GROUP BY a.model"
            }
            Dialect::Postgres => {
                "WITH recent AS (
                     SELECT run_id FROM runs WHERE simulated = ?1
                       AND EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.run_id
                                   AND e.kind = 'model_call')
                     ORDER BY started_at DESC LIMIT ?2),
                 calls AS (
                     SELECT run_id, agent_id, (payload::jsonb ->> 'attempt')::bigint AS attempt,
                            COUNT(*) AS n
                     FROM events WHERE kind = 'model_call' AND run_id IN (SELECT run_id FROM recent)
                     GROUP BY run_id, agent_id, attempt)
                 SELECT a.model, COUNT(DISTINCT a.run_id), COUNT(*),
                        CAST(SUM(a.input_tokens) AS BIGINT), CAST(SUM(a.output_tokens) AS BIGINT),
                        SUM(a.cost_usd), CAST(SUM(c.n) AS BIGINT),
                        CAST(SUM(EXTRACT(EPOCH FROM (a.timestamp_end::timestamptz
                                                     - a.timestamp_start::timestamptz)))
                             AS DOUBLE PRECISION),
                        CAST(SUM(a.cache_read_tokens) AS BIGINT),
                        CAST(SUM(a.cache_write_tokens) AS BIGINT)
                 FROM agent_runs a JOIN calls c
                   ON c.run_id = a.run_id AND c.agent_id = a.agent_id AND c.attempt = a.attempt
                 WHERE a.status = 'success' AND a.model IS NOT NULL
                 GROUP BY a.model"
            }
        };
        let rows = self.rows(
            "reading earlier runs' usage",
            sql,
            &[simulated.into(), last_runs.into()],
            |row| {
                Ok((
                    row.text(0)?,
                    row.int(1)?,
                    row.int(2)?,
                    [
                        row.unsigned(3)?,
                        row.unsigned(4)?,
                        row.unsigned(8)?,
                        row.unsigned(9)?,
                    ],
                    row.real(5)?,
                    row.int(6)?,
                    row.opt_real(7)?,
                ))
            },
        )?;
        let mut out = std::collections::BTreeMap::new();
        for (model, runs, agents, [input, output, read, written], dollars, calls, seconds) in rows {
            if agents <= 0 || calls <= 0 {
                continue;
            }
            out.insert(
                model,
                ObservedUsage {
                    runs: runs.max(0) as u64,
                    agents: agents as u64,
                    calls: calls as u64,
                    input_tokens: input,
                    output_tokens: output,
                    cache_read_tokens: read,
                    cache_write_tokens: written,
                    dollars,
                    seconds: seconds.unwrap_or(0.0).max(0.0),
                },
            );
        }
        Ok(out)
    }

    /// Denials per agent of `agents` in a run (agents with none are absent).
    pub fn denials_of(
        &self,
        run_id: &RunId,
        agents: &[AgentId],
    ) -> Result<std::collections::HashMap<AgentId, u64>, StoreError> {
        let mut out = std::collections::HashMap::new();
        for (placeholders, params) in agent_groups(run_id, agents) {
            let sql = format!(
                "SELECT agent_id, COUNT(*) FROM denials WHERE run_id = ?1
                 AND agent_id IN ({placeholders}) GROUP BY agent_id"
            );
            out.extend(self.rows("counting denials", &sql, &params, |row| {
                Ok((AgentId::from(row.text(0)?), row.unsigned(1)?))
            })?);
        }
        Ok(out)
    }

    /// Denials per agent of a run (agents with none are absent).
    pub fn denials_by_agent(
        &self,
        run_id: &RunId,
    ) -> Result<std::collections::HashMap<AgentId, u64>, StoreError> {
        let rows = self.rows(
            "counting denials",
            "SELECT agent_id, COUNT(*) FROM denials WHERE run_id = ?1 GROUP BY agent_id",
            &[run_id.into()],
            |row| Ok((AgentId::from(row.text(0)?), row.unsigned(1)?)),
        )?;
        Ok(rows.into_iter().collect())
    }

    /// Usage of attempts that have no end row yet, summed from their `model_call` events:
    /// `(agent_id, attempt) → what they spent`. A resumed run closes interrupted attempts with
    /// what they spent.
    pub fn unfinished_usage(&self, run_id: &RunId) -> Result<UnfinishedUsage, StoreError> {
        let sql = match self.db.dialect() {
            Dialect::Sqlite => {
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
                 GROUP BY e.agent_id, attempt"
            }
            Dialect::Postgres => {
                "SELECT e.agent_id, (e.payload::jsonb ->> 'attempt')::bigint AS attempt,
                    CAST(SUM((e.payload::jsonb ->> 'input_tokens')::numeric) AS BIGINT),
                    CAST(SUM((e.payload::jsonb ->> 'output_tokens')::numeric) AS BIGINT),
                    SUM((e.payload::jsonb ->> 'dollars')::double precision),
                    CAST(SUM((e.payload::jsonb ->> 'cache_read_tokens')::numeric) AS BIGINT),
                    CAST(SUM((e.payload::jsonb ->> 'cache_write_tokens')::numeric) AS BIGINT),
                    SUM((e.payload::jsonb ->> 'cache_saved')::double precision)
                 FROM events e JOIN agent_runs a
                   ON a.run_id = e.run_id AND a.agent_id = e.agent_id
                      AND a.attempt = (e.payload::jsonb ->> 'attempt')::bigint
                 WHERE e.run_id = ?1 AND e.kind = 'model_call' AND a.status IS NULL
                 GROUP BY e.agent_id, 2"
            }
        };
        let rows = self.rows(
            "summing usage of interrupted attempts",
            sql,
            &[run_id.into()],
            |row| {
                Ok((
                    (AgentId::from(row.text(0)?), row.small(1)?),
                    Spent {
                        input_tokens: row.unsigned(2)?,
                        output_tokens: row.unsigned(3)?,
                        dollars: row.real(4)?,
                        cache_read_tokens: row.unsigned(5)?,
                        cache_write_tokens: row.unsigned(6)?,
                        cache_saved: row.real(7)?,
                    },
                ))
            },
        )?;
        Ok(rows.into_iter().collect())
    }

    /// Every run, newest first, with agent counts by status.
    pub fn runs(&self) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs ORDER BY started_at DESC, run_id DESC");
        let rows = self.rows("listing runs", &sql, &[], |row| self.run_row(row))?;
        let mut runs = Vec::with_capacity(rows.len());
        for run in rows {
            let agents = self.counts(&run.run_id, run.agents_planned)?;
            runs.push(RunSummary { run, agents });
        }
        Ok(runs)
    }

    /// One run's row and counts.
    pub fn run_summary(&self, run_id: &RunId) -> Result<Option<RunSummary>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE run_id = ?1");
        let Some(run) = self
            .rows("reading a run", &sql, &[run_id.into()], |row| {
                self.run_row(row)
            })?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
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
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agent_runs WHERE run_id = ?1
             ORDER BY timestamp_start, agent_id, attempt"
        );
        self.rows("listing agent runs", &sql, &[run_id.into()], |row| {
            self.agent_row(row)
        })
    }

    /// The attempts of `agents` in a run (a coordinator's pass reads those of the units that
    /// just ended, not the whole run's again), by agent id then attempt.
    pub fn agent_runs_of(
        &self,
        run_id: &RunId,
        agents: &[AgentId],
    ) -> Result<Vec<AgentRow>, StoreError> {
        let mut out = Vec::with_capacity(agents.len());
        for (placeholders, params) in agent_groups(run_id, agents) {
            let sql = format!(
                "SELECT {AGENT_COLUMNS} FROM agent_runs WHERE run_id = ?1
                 AND agent_id IN ({placeholders}) ORDER BY agent_id, attempt"
            );
            out.extend(self.rows("listing agent runs", &sql, &params, |row| {
                self.agent_row(row)
            })?);
        }
        Ok(out)
    }

    /// One agent: its attempts, tool calls and denials. `None` if the run has no such agent.
    pub fn agent(
        &self,
        run_id: &RunId,
        agent_id: &AgentId,
    ) -> Result<Option<AgentDetail>, StoreError> {
        let params = [SqlValue::from(run_id), SqlValue::from(agent_id)];
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agent_runs WHERE run_id = ?1 AND agent_id = ?2
             ORDER BY attempt"
        );
        let attempts = self.rows("reading an agent", &sql, &params, |row| self.agent_row(row))?;
        if attempts.is_empty() {
            return Ok(None);
        }
        let tool_calls = self.rows(
            "listing tool calls",
            "SELECT attempt, seq, tool, target, ok, error, started_at, ended_at, outcome,
                 duration_ms, bytes, paths
             FROM tool_calls WHERE run_id = ?1 AND agent_id = ?2 ORDER BY attempt, seq",
            &params,
            |row| Self::tool_call_row(row, 0),
        )?;
        let denials = self.rows(
            "listing denials",
            "SELECT attempt, tool, target, reason, at
             FROM denials WHERE run_id = ?1 AND agent_id = ?2 ORDER BY at, id",
            &params,
            |row| Self::denial_row(row, 0),
        )?;
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
        self.rows(
            "listing checkpoints",
            "SELECT seq, commit_id, ref_name, label, completed_agents, at
             FROM checkpoints WHERE run_id = ?1 ORDER BY seq",
            &[run_id.into()],
            |row| {
                Ok(CheckpointRow {
                    seq: row.unsigned(0)?,
                    commit_id: row.text(1)?,
                    ref_name: row.text(2)?,
                    label: row.text(3)?,
                    completed_agents: row.unsigned(4)?,
                    at: row.text(5)?,
                })
            },
        )
    }

    /// A run's events in order.
    pub fn events(&self, run_id: &RunId) -> Result<Vec<EventRow>, StoreError> {
        self.rows(
            "listing events",
            "SELECT seq, at, agent_id, kind, payload FROM events WHERE run_id = ?1
             ORDER BY seq",
            &[run_id.into()],
            |row| {
                let payload = row.text(4)?;
                Ok(EventRow {
                    seq: row.unsigned(0)?,
                    at: row.text(1)?,
                    agent_id: row.opt_text(2)?.map(AgentId::from),
                    kind: row.text(3)?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|_| self.corrupt("events.payload", payload.clone()))?,
                })
            },
        )
    }

    /// Every denial of a run, with the agent it belongs to, in the order they happened.
    pub fn run_denials(&self, run_id: &RunId) -> Result<Vec<(AgentId, DenialRow)>, StoreError> {
        self.rows(
            "listing a run's denials",
            "SELECT agent_id, attempt, tool, target, reason, at
             FROM denials WHERE run_id = ?1 ORDER BY at, id",
            &[run_id.into()],
            |row| Ok((AgentId::from(row.text(0)?), Self::denial_row(row, 1)?)),
        )
    }

    /// Every tool call of a run with the agent that made it, by agent, attempt and order.
    pub fn run_tool_calls(
        &self,
        run_id: &RunId,
    ) -> Result<Vec<(AgentId, ToolCallRow)>, StoreError> {
        self.rows(
            "listing a run's tool calls",
            "SELECT agent_id, attempt, seq, tool, target, ok, error, started_at, ended_at,
                 outcome, duration_ms, bytes, paths
             FROM tool_calls WHERE run_id = ?1 ORDER BY agent_id, attempt, seq",
            &[run_id.into()],
            |row| Ok((AgentId::from(row.text(0)?), Self::tool_call_row(row, 1)?)),
        )
    }

    /// The paths each attempt's successful `write_file` and `edit_file` calls wrote:
    /// `(agent_id, attempt, path)`, one row per call and path, in call order.
    pub fn written_paths(&self, run_id: &RunId) -> Result<Vec<(AgentId, u32, String)>, StoreError> {
        let rows = self.rows(
            "listing written paths",
            "SELECT agent_id, attempt, target, paths FROM tool_calls
             WHERE run_id = ?1 AND ok = 1 AND tool IN ('write_file', 'edit_file')
             ORDER BY agent_id, attempt, seq",
            &[run_id.into()],
            |row| {
                Ok((
                    AgentId::from(row.text(0)?),
                    row.small(1)?,
                    row.opt_text(2)?,
                    row.json_list(3)?,
                ))
            },
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (agent_id, attempt, target, paths) in rows {
            let paths: Vec<String> = paths
                .filter(|paths| !paths.is_empty())
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
        self.rows(
            "reading pre-images",
            "SELECT agent_id, manifest FROM preimages WHERE run_id = ?1",
            &[run_id.into()],
            |row| Ok((AgentId::from(row.text(0)?), row.text(1)?)),
        )
    }

    /// Every unit of `run_id` in enqueue order ([`super::units`]), with patches and outcomes.
    pub fn units(&self, run_id: &RunId) -> Result<Vec<super::UnitRow>, StoreError> {
        super::units::units(self.db.as_ref(), run_id, true).map_err(self.failed("reading units"))
    }

    /// [`StoreReader::units`] without their patches and outcomes (both `None`): what a poll
    /// of the units' states needs, at a fraction of the bytes.
    pub fn unit_states(&self, run_id: &RunId) -> Result<Vec<super::UnitRow>, StoreError> {
        super::units::units(self.db.as_ref(), run_id, false).map_err(self.failed("reading units"))
    }

    /// The committed patches of `agents` in `run_id`, by agent.
    pub fn unit_patches(
        &self,
        run_id: &RunId,
        agents: &[AgentId],
    ) -> Result<std::collections::HashMap<AgentId, Vec<u8>>, StoreError> {
        super::units::unit_patches(self.db.as_ref(), run_id, agents)
            .map_err(self.failed("reading patches"))
    }

    /// The units of `run_id` committed after commit number `after`, in commit order, with
    /// their outcomes (an item run's coordinator takes these as they come).
    pub fn units_committed_after(
        &self,
        run_id: &RunId,
        after: u64,
    ) -> Result<Vec<super::UnitRow>, StoreError> {
        super::units::committed_after(self.db.as_ref(), run_id, after)
            .map_err(self.failed("reading committed units"))
    }

    /// The plan, hash and base bundle published for `run_id`, if any.
    pub fn run_plan(&self, run_id: &RunId) -> Result<Option<super::RunPlanRecord>, StoreError> {
        super::units::run_plan(self.db.as_ref(), run_id)
            .map_err(self.failed("reading a run's plan"))
    }

    /// The dollar budget of published run `run_id` and what its workers hold and have spent.
    pub fn run_spend(&self, run_id: &RunId) -> Result<Option<super::RunSpend>, StoreError> {
        super::units::run_spend(self.db.as_ref(), run_id)
            .map_err(self.failed("reading a run's budget"))
    }

    /// Run a read-only query of your own (tests, diagnostics), on either backend. Write it
    /// with `?1`-style placeholders; the rows come back as plain values.
    pub fn query_raw(
        &self,
        sql: &str,
        params: &[SqlValue],
    ) -> Result<Vec<Vec<SqlValue>>, StoreError> {
        self.db
            .query(sql, params)
            .map_err(self.failed("a raw query"))
    }

    /// Which SQL the store speaks.
    pub fn dialect(&self) -> Dialect {
        self.db.dialect()
    }
}
