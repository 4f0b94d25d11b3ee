//! The run store's tables and their migrations, for SQLite ([`MIGRATIONS`]) and PostgreSQL
//! ([`POSTGRES_MIGRATIONS`]): the same versions, tables and columns in the same order.
//!
//! In SQLite the schema version lives in `PRAGMA user_version`. [`MIGRATIONS`]`[i]` takes a database
//! from version `i` to `i + 1`, each in its own transaction together with the version bump,
//! so a crash mid-migration leaves the previous version intact and the next open retries.
//! A database whose version is higher than [`SCHEMA_VERSION`] was written by a newer
//! fanout: we refuse it rather than guess ([`StoreError::SchemaTooNew`]).
//!
//! `agent_runs` keeps the seed's ten columns with the seed's names, declared types and
//! meanings (`files_accessed` and `tools_called` are JSON arrays; `status` is `success`,
//! `failure` or `rollback`; `mode` is `fast` or `default`; the timestamps are RFC 3339 UTC
//! with milliseconds, which sort as text). One addition to the meaning: while an agent is
//! in flight its `status` and `timestamp_end` are NULL, so a resumed run can tell in-flight
//! agents from finished ones. Our own columns follow the seed's.

use std::path::Path;

use rusqlite::Connection;

use super::StoreError;

/// The newest schema this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

// Both backends know the same versions.
const _: () = assert!(MIGRATIONS.len() == POSTGRES_MIGRATIONS.len());

/// `MIGRATIONS[i]` upgrades version `i` to `i + 1`. Append only; never edit a shipped entry.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY NOT NULL,
    workflow TEXT NOT NULL,
    config_path TEXT,
    plan_hash TEXT,
    repo TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('planned', 'running', 'completed', 'partial', 'failed', 'cancelled')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    base_commit TEXT,
    agents_planned INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_input_tokens INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost_usd REAL NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX runs_by_start ON runs (started_at);

CREATE TABLE agent_runs (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    task_description TEXT,
    files_accessed TEXT,      -- JSON array
    tools_called TEXT,        -- JSON array
    status TEXT               -- success | failure | rollback; NULL while in flight
        CHECK (status IS NULL OR status IN ('success', 'failure', 'rollback')),
    token_count INTEGER,
    mode TEXT                 -- fast | default
        CHECK (mode IS NULL OR mode IN ('fast', 'default')),
    timestamp_start DATETIME,
    timestamp_end DATETIME,
    attempt INTEGER NOT NULL DEFAULT 1,
    model TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd REAL NOT NULL DEFAULT 0,
    escalated INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    checkpoint TEXT,
    PRIMARY KEY (run_id, agent_id, attempt)
);
CREATE INDEX agent_runs_by_status ON agent_runs (run_id, status);

CREATE TABLE tool_calls (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    seq INTEGER NOT NULL,
    tool TEXT NOT NULL,
    target TEXT,
    ok INTEGER NOT NULL,
    error TEXT,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    PRIMARY KEY (run_id, agent_id, attempt, seq)
);

CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    agent_id TEXT,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE denials (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 1,
    tool TEXT NOT NULL,
    target TEXT,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX denials_by_agent ON denials (run_id, agent_id);

CREATE TABLE checkpoints (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    commit_id TEXT NOT NULL,
    ref_name TEXT NOT NULL,
    label TEXT NOT NULL,
    completed_agents INTEGER NOT NULL,
    at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"#,
    // 2: durable pre-image manifests, committed in the same transaction as the agent's first
    // start row (see `crate::run::preimage`). Written once, never replaced.
    r#"
CREATE TABLE preimages (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    manifest TEXT NOT NULL,     -- JSON, a pre-image manifest (`run::preimage::Preimage`)
    PRIMARY KEY (run_id, agent_id)
);
"#,
    // 3: two run statuses (`tests_failed`: the verification command failed; `rolled_back`:
    // undone by `fanout rollback`), which the first schema's CHECK refused, so `runs` is
    // rebuilt (and says whether a run's model was the simulator); tool calls get what a reader needs to judge one (its outcome, duration and
    // bytes, the paths it touched).
    r#"
CREATE TABLE runs_v3 (
    run_id TEXT PRIMARY KEY NOT NULL,
    workflow TEXT NOT NULL,
    config_path TEXT,
    plan_hash TEXT,
    repo TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('planned', 'running', 'completed', 'partial', 'failed', 'cancelled',
                          'tests_failed', 'rolled_back')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    base_commit TEXT,
    agents_planned INTEGER NOT NULL DEFAULT 0,
    total_tokens INTEGER NOT NULL DEFAULT 0,
    total_input_tokens INTEGER NOT NULL DEFAULT 0,
    total_output_tokens INTEGER NOT NULL DEFAULT 0,
    total_cost_usd REAL NOT NULL DEFAULT 0,
    error TEXT,
    simulated INTEGER NOT NULL DEFAULT 0  -- 1: the model was `fanout sim`
);
INSERT INTO runs_v3 (run_id, workflow, config_path, plan_hash, repo, status, started_at,
    ended_at, base_commit, agents_planned, total_tokens, total_input_tokens,
    total_output_tokens, total_cost_usd, error) SELECT run_id, workflow, config_path, plan_hash, repo, status, started_at,
    ended_at, base_commit, agents_planned, total_tokens, total_input_tokens,
    total_output_tokens, total_cost_usd, error FROM runs;
DROP TABLE runs;
ALTER TABLE runs_v3 RENAME TO runs;
CREATE INDEX runs_by_start ON runs (started_at);
ALTER TABLE tool_calls ADD COLUMN outcome TEXT;        -- ok | error | denied
ALTER TABLE tool_calls ADD COLUMN duration_ms INTEGER;
ALTER TABLE tool_calls ADD COLUMN bytes INTEGER;       -- bytes read, written or output
ALTER TABLE tool_calls ADD COLUMN paths TEXT;          -- JSON array of repository paths
"#,
    // 4: prompt caching. Of an attempt's `input_tokens` (every input token, cached or not),
    // how many were read from and written to the provider's cache, and the dollars the cache
    // saved (the attempt's cost at the full input price minus its actual cost; negative when
    // writes were never read back).
    r#"
ALTER TABLE agent_runs ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN cache_saved_usd REAL NOT NULL DEFAULT 0;
"#,
    // 5: work shared between machines (`crate::distributed`). A run's reviewed plan, its hash
    // and its base tree as a `git bundle`, stored once; one unit per agent with its lease
    // (owner, expiry, attempt) and, once committed, its patch, outcome and place in the run's
    // commit order; the units each waits for.
    r#"
CREATE TABLE run_plans (
    run_id TEXT PRIMARY KEY NOT NULL,
    plan_hash TEXT NOT NULL,      -- sha256:<hex> of `plan`, which workers check
    plan TEXT NOT NULL,           -- the reviewed plan (JSON) the units come from
    workflow TEXT NOT NULL,       -- the workflow file's text the agents run under
    workflow_path TEXT,           -- its path relative to the repository, when inside it
    base_commit TEXT NOT NULL,
    base_bundle BLOB NOT NULL,    -- `git bundle` holding base_commit
    commits INTEGER NOT NULL DEFAULT 0,  -- units committed so far: the last commit_seq given
    created_at TEXT NOT NULL
);
CREATE TABLE units (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    enqueued_seq INTEGER NOT NULL,  -- leases take the earliest ready unit first
    state TEXT NOT NULL
        CHECK (state IN ('ready', 'leased', 'committed', 'failed', 'skipped')),
    lease_owner TEXT,
    lease_expires_at TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,  -- leases taken; the agent_runs attempt of the last
    commit_seq INTEGER,             -- 1, 2, ... per run, in commit order
    committed_at TEXT,
    patch BLOB,                     -- `git diff --binary` of the write scope
    outcome TEXT,                   -- JSON: the agent's result as its worker saw it
    applied_at TEXT,                -- when the coordinator applied the patch
    PRIMARY KEY (run_id, agent_id)
);
CREATE UNIQUE INDEX units_by_commit ON units (run_id, commit_seq);
CREATE INDEX units_by_state ON units (state, run_id, enqueued_seq);
CREATE TABLE unit_dependencies (
    run_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    PRIMARY KEY (run_id, agent_id, depends_on)
);
"#,
    // 6: rate limits shared between processes (`crate::distributed`): one row per bucket,
    // its level (requests it holds) at `updated_ms` (milliseconds since the epoch).
    r#"
CREATE TABLE rate_buckets (
    name TEXT PRIMARY KEY NOT NULL,
    level REAL NOT NULL,
    updated_ms INTEGER NOT NULL
);
"#,
    // 7: item runs shared between machines (`crate::items::run`, `crate::distributed`). A
    // unit is an agent of a plan or a chunk of an item run (`kind`); a chunk's items travel
    // with it (`input`, JSON).
    r#"
ALTER TABLE units ADD COLUMN kind TEXT NOT NULL DEFAULT 'agent'
    CHECK (kind IN ('agent', 'item_chunk'));
ALTER TABLE units ADD COLUMN input TEXT;   -- JSON: what the unit works on (a chunk's items)
"#,
    // 8: the rest of what workers share (`crate::distributed`): limits learned from response
    // headers, one row per model API and kind, holding the lowest value reported recently; a
    // published run's dollar budget with what its workers hold reserved and have spent; each
    // unit's estimated cost, its reservation while leased and, when it was never run, why.
    r#"
CREATE TABLE learned_limits (
    api TEXT NOT NULL,                 -- the model API: anthropic, openai
    kind TEXT NOT NULL,                -- requests_per_minute, input_tokens_per_minute, ...
    limit_per_minute INTEGER NOT NULL,
    reported_ms INTEGER NOT NULL,      -- when this value was last reported (ms since the epoch)
    reported_by TEXT,                  -- the process that reported it
    PRIMARY KEY (api, kind)
);
ALTER TABLE run_plans ADD COLUMN max_dollars REAL;          -- budgets.run.max_dollars; NULL: none
ALTER TABLE run_plans ADD COLUMN reserved_usd REAL NOT NULL DEFAULT 0;  -- held by leased units
ALTER TABLE run_plans ADD COLUMN spent_usd REAL NOT NULL DEFAULT 0;     -- settled at commits
ALTER TABLE run_plans ADD COLUMN estimated_done_usd REAL NOT NULL DEFAULT 0;  -- their estimates
ALTER TABLE units ADD COLUMN estimated_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE units ADD COLUMN reserved_usd REAL NOT NULL DEFAULT 0;
ALTER TABLE units ADD COLUMN skip_reason TEXT;              -- why a skipped unit never ran
"#,
];

/// `POSTGRES_MIGRATIONS[i]` takes a PostgreSQL database from version `i` to `i + 1`: the
/// same tables and columns as [`MIGRATIONS`]`[i]`, in the same order, with PostgreSQL's types
/// (BIGINT for integers and 0/1 flags, DOUBLE PRECISION for dollars, TEXT for the rest).
/// Timestamps stay RFC 3339 text, so ordering and parsing are shared with SQLite; text
/// columns use the "C" collation so `ORDER BY` sorts bytes, as SQLite does. The version lives
/// in `fanout_schema`; see [`super::postgres`] for how the steps are applied. Append only.
pub const POSTGRES_MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
CREATE TABLE runs (
    run_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    workflow TEXT COLLATE "C" NOT NULL,
    config_path TEXT COLLATE "C",
    plan_hash TEXT COLLATE "C",
    repo TEXT COLLATE "C",
    status TEXT COLLATE "C" NOT NULL
        CONSTRAINT runs_status_check
        CHECK (status IN ('planned', 'running', 'completed', 'partial', 'failed', 'cancelled')),
    started_at TEXT COLLATE "C" NOT NULL,
    ended_at TEXT COLLATE "C",
    base_commit TEXT COLLATE "C",
    agents_planned BIGINT NOT NULL DEFAULT 0,
    total_tokens BIGINT NOT NULL DEFAULT 0,
    total_input_tokens BIGINT NOT NULL DEFAULT 0,
    total_output_tokens BIGINT NOT NULL DEFAULT 0,
    total_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    error TEXT COLLATE "C"
);
CREATE INDEX runs_by_start ON runs (started_at);

CREATE TABLE agent_runs (
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    task_description TEXT COLLATE "C",
    files_accessed TEXT COLLATE "C",
    tools_called TEXT COLLATE "C",
    status TEXT COLLATE "C"
        CHECK (status IS NULL OR status IN ('success', 'failure', 'rollback')),
    token_count BIGINT,
    mode TEXT COLLATE "C"
        CHECK (mode IS NULL OR mode IN ('fast', 'default')),
    timestamp_start TEXT COLLATE "C",
    timestamp_end TEXT COLLATE "C",
    attempt BIGINT NOT NULL DEFAULT 1,
    model TEXT COLLATE "C",
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    escalated BIGINT NOT NULL DEFAULT 0,
    error TEXT COLLATE "C",
    checkpoint TEXT COLLATE "C",
    PRIMARY KEY (run_id, agent_id, attempt)
);
CREATE INDEX agent_runs_by_status ON agent_runs (run_id, status);

CREATE TABLE tool_calls (
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 1,
    seq BIGINT NOT NULL,
    tool TEXT COLLATE "C" NOT NULL,
    target TEXT COLLATE "C",
    ok BIGINT NOT NULL,
    error TEXT COLLATE "C",
    started_at TEXT COLLATE "C" NOT NULL,
    ended_at TEXT COLLATE "C",
    PRIMARY KEY (run_id, agent_id, attempt, seq)
);

CREATE TABLE events (
    run_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C",
    kind TEXT COLLATE "C" NOT NULL,
    payload TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE denials (
    id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    attempt BIGINT NOT NULL DEFAULT 1,
    tool TEXT COLLATE "C" NOT NULL,
    target TEXT COLLATE "C",
    reason TEXT COLLATE "C" NOT NULL,
    at TEXT COLLATE "C" NOT NULL
);
CREATE INDEX denials_by_agent ON denials (run_id, agent_id);

CREATE TABLE checkpoints (
    run_id TEXT COLLATE "C" NOT NULL,
    seq BIGINT NOT NULL,
    commit_id TEXT COLLATE "C" NOT NULL,
    ref_name TEXT COLLATE "C" NOT NULL,
    label TEXT COLLATE "C" NOT NULL,
    completed_agents BIGINT NOT NULL,
    at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"#,
    // 2: durable pre-image manifests.
    r#"
CREATE TABLE preimages (
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    manifest TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, agent_id)
);
"#,
    // 3: two run statuses and `simulated` (SQLite rebuilds `runs` for its CHECK; PostgreSQL
    // replaces the constraint), and what a reader needs to judge a tool call.
    r#"
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('planned', 'running', 'completed', 'partial', 'failed', 'cancelled',
                      'tests_failed', 'rolled_back'));
ALTER TABLE runs ADD COLUMN simulated BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tool_calls ADD COLUMN outcome TEXT COLLATE "C";
ALTER TABLE tool_calls ADD COLUMN duration_ms BIGINT;
ALTER TABLE tool_calls ADD COLUMN bytes BIGINT;
ALTER TABLE tool_calls ADD COLUMN paths TEXT COLLATE "C";
"#,
    // 4: prompt caching.
    r#"
ALTER TABLE agent_runs ADD COLUMN cache_read_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN cache_write_tokens BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agent_runs ADD COLUMN cache_saved_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
"#,
    // 5: work shared between machines.
    r#"
CREATE TABLE run_plans (
    run_id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    plan_hash TEXT COLLATE "C" NOT NULL,
    plan TEXT COLLATE "C" NOT NULL,
    workflow TEXT COLLATE "C" NOT NULL,
    workflow_path TEXT COLLATE "C",
    base_commit TEXT COLLATE "C" NOT NULL,
    base_bundle BYTEA NOT NULL,
    commits BIGINT NOT NULL DEFAULT 0,
    created_at TEXT COLLATE "C" NOT NULL
);
CREATE TABLE units (
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    enqueued_seq BIGINT NOT NULL,
    state TEXT COLLATE "C" NOT NULL
        CHECK (state IN ('ready', 'leased', 'committed', 'failed', 'skipped')),
    lease_owner TEXT COLLATE "C",
    lease_expires_at TEXT COLLATE "C",
    attempt BIGINT NOT NULL DEFAULT 0,
    commit_seq BIGINT,
    committed_at TEXT COLLATE "C",
    patch BYTEA,
    outcome TEXT COLLATE "C",
    applied_at TEXT COLLATE "C",
    PRIMARY KEY (run_id, agent_id)
);
CREATE UNIQUE INDEX units_by_commit ON units (run_id, commit_seq);
CREATE INDEX units_by_state ON units (state, run_id, enqueued_seq);
CREATE TABLE unit_dependencies (
    run_id TEXT COLLATE "C" NOT NULL,
    agent_id TEXT COLLATE "C" NOT NULL,
    depends_on TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (run_id, agent_id, depends_on)
);
"#,
    // 6: shared rate buckets.
    r#"
CREATE TABLE rate_buckets (
    name TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    level DOUBLE PRECISION NOT NULL,
    updated_ms BIGINT NOT NULL
);
"#,
    // 7: item chunks as units.
    r#"
ALTER TABLE units ADD COLUMN kind TEXT COLLATE "C" NOT NULL DEFAULT 'agent'
    CHECK (kind IN ('agent', 'item_chunk'));
ALTER TABLE units ADD COLUMN input TEXT COLLATE "C";
"#,
    // 8: learned limits, run budgets, unit estimates and reservations.
    r#"
CREATE TABLE learned_limits (
    api TEXT COLLATE "C" NOT NULL,
    kind TEXT COLLATE "C" NOT NULL,
    limit_per_minute BIGINT NOT NULL,
    reported_ms BIGINT NOT NULL,
    reported_by TEXT COLLATE "C",
    PRIMARY KEY (api, kind)
);
ALTER TABLE run_plans ADD COLUMN max_dollars DOUBLE PRECISION;
ALTER TABLE run_plans ADD COLUMN reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE run_plans ADD COLUMN spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE run_plans ADD COLUMN estimated_done_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE units ADD COLUMN estimated_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE units ADD COLUMN reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE units ADD COLUMN skip_reason TEXT COLLATE "C";
"#,
];

/// How long a connection waits for another process's write lock before it is told the
/// store is busy.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

thread_local! {
    /// When the current wait for a lock began, on this thread.
    static WAITING_SINCE: std::cell::Cell<Option<std::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// SQLite's busy handler: try again every millisecond for up to [`BUSY_WAIT`]. (SQLite's
/// own timeout sleeps longer the longer it waits, up to 100 ms at a time: with several
/// processes writing, a waiter kept missing the moments the lock was free, and a
/// coordinator's one write waited a third of a second behind workers' many.)
fn wait_for_lock(attempts: i32) -> bool {
    let now = std::time::Instant::now();
    let since = WAITING_SINCE.with(|since| {
        if attempts == 0 {
            since.set(Some(now));
        }
        since.get().unwrap_or(now)
    });
    if now.duration_since(since) >= BUSY_WAIT {
        return false;
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    true
}

/// Set the connection pragmas every connection of ours uses.
pub(crate) fn configure(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sqlite = |what, source: rusqlite::Error| StoreError::Database {
        store: path.display().to_string(),
        what,
        source: source.into(),
    };
    conn.busy_handler(Some(wait_for_lock))
        .map_err(|source| sqlite("setting the busy handler", source))?;
    // journal_mode answers with the mode now in force; WAL is persistent once set.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(|source| sqlite("switching to WAL", source))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            store: path.display().to_string(),
            column: "journal_mode",
            value: mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF;")
        .map_err(|source| sqlite("setting synchronous", source))?;
    Ok(())
}

/// The schema version stored in the file.
pub fn user_version(conn: &Connection, path: &Path) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| StoreError::Database {
            store: path.display().to_string(),
            what: "reading user_version",
            source: source.into(),
        })
}

/// Bring the database up to [`SCHEMA_VERSION`]. Idempotent; refuses a newer database.
pub fn migrate(conn: &mut Connection, path: &Path) -> Result<i64, StoreError> {
    let found = user_version(conn, path)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            store: path.display().to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let version = index as i64 + 1;
        let failed = |source: rusqlite::Error| StoreError::Migrate {
            store: path.display().to_string(),
            version,
            source: source.into(),
        };
        // IMMEDIATE takes the write lock first, so two processes opening a fresh database
        // at once serialise here; the loser re-reads the version and skips.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        let now: i64 = tx
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(failed)?;
        if now >= version {
            continue;
        }
        tx.execute_batch(sql).map_err(failed)?;
        tx.execute_batch(&format!("PRAGMA user_version = {version}"))
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    user_version(conn, path)
}
