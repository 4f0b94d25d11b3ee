//! Units of work and their leases: what lets several machines share one run through the store.
//!
//! A coordinator publishes a run's reviewed plan with its hash and base tree
//! ([`RunPlanRecord`], stored once per run) and enqueues one unit per agent ([`UnitSpec`]).
//! An item run publishes its job description in the same record (no base tree) and one unit
//! per chunk, whose items travel in the unit's `input`; [`UnitKind`] tells the two apart, and
//! a worker leases only the kinds it can run.
//! Workers lease ready units ([`Lease`]): a unit is ready when every unit it depends on has
//! committed successfully, and a leased unit whose lease expired is ready again. Taking a
//! unit adds one to its attempt, so the agent's `agent_runs` row of a new lease is a new
//! attempt and the dead worker's row is closed as a failure. A worker that tries the agent
//! again under its lease (an escalation, a transient failure) moves the unit to its next
//! attempt in the transaction that ends the last one and starts the new one
//! ([`next_attempt`]): the unit's counter is always the highest attempt recorded, so a
//! takeover's attempt never collides with one a dead worker used. A worker extends its lease by
//! heartbeats and ends it by committing the unit's outcome ([`UnitCommit`]): its patch, its
//! outcome and its `agent_runs` finish row in one transaction, numbered in the run's commit
//! order — refused ([`super::StoreError::LeaseLost`]) if the lease is no longer that
//! worker's.
//!
//! Concurrency: PostgreSQL takes a unit with one `UPDATE … WHERE (run, agent) IN (SELECT …
//! FOR UPDATE SKIP LOCKED)`, so workers on many machines never wait on each other's row or
//! take the same one; SQLite runs the same statement inside the writer's `BEGIN IMMEDIATE`
//! transaction, which serialises every writer on one machine. Commit numbers come from a
//! counter row per run (`run_plans.commits`), whose row lock orders concurrent commits.
//!
//! Time is the caller's: every operation takes its `now`, so expiry is judged by the clock of
//! the machine asking (clocks across the fleet must roughly agree; the lease's length is the
//! margin).
//!
//! The run's dollar budget (`budgets.run.max_dollars`, published with the plan) is held here
//! for all its workers, by [`crate::budget`]'s rule, the local scheduler's: a lease reserves
//! the unit's estimated cost (scaled by how the run's settled units compared with their
//! estimates) against the run's row, locked (`FOR UPDATE`) while it decides; the commit
//! replaces the reservation with the attempt's actual cost. A unit the budget cannot cover
//! now is not leased while other units of its run are in flight; once none is, it and every
//! unit of the run still waiting are skipped with [`BUDGET_EXHAUSTED`] as their reason. A
//! lease taken over from a dead worker keeps its reservation as spent (what the dead attempt
//! cost is not known; its model calls were paid). A run published without a budget (an item
//! run's) leases as before.
//!
//! Not here: running agents, materialising trees, applying patches ([`crate::distributed`]).

use std::time::SystemTime;

use serde::Serialize;

use super::db::{Db, DbError, Dialect, SqlValue};
use super::{AgentFinish, format_time, parse_time};
use crate::budget::{self, Admission, Ledger};
use crate::ids::{AgentId, RunId};

/// Why a unit was skipped when its run's budget could not cover it (the local engine's words).
pub const BUDGET_EXHAUSTED: &str = "the run's dollar budget cannot cover it";

/// A run's reviewed plan, its hash and base tree, stored once for every worker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunPlanRecord {
    pub run_id: RunId,
    /// `sha256:<hex>` of `plan`; workers recompute it before they run anything.
    pub plan_hash: String,
    /// The reviewed plan as JSON.
    pub plan: String,
    /// The workflow file's text: the models, budgets, policy and limits the agents run under.
    pub workflow: String,
    /// The workflow file's path relative to the repository, when it lies inside it.
    pub workflow_path: Option<String>,
    pub base_commit: String,
    /// A `git bundle` that holds `base_commit`.
    #[serde(skip)]
    pub base_bundle: Vec<u8>,
    /// The workflow's `budgets.run.max_dollars`, which every worker's leases draw on.
    pub max_dollars: Option<f64>,
    pub created_at: SystemTime,
}

/// One unit as enqueued: an agent and the agents whose committed work it builds on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitSpec {
    pub agent_id: AgentId,
    pub depends_on: Vec<AgentId>,
    pub kind: UnitKind,
    /// What the unit works on, as JSON, when the run's record does not say it all (an item
    /// chunk's items).
    pub input: Option<String>,
    /// Its estimated cost in dollars, reserved (scaled) against the run's budget when it is
    /// leased.
    pub estimated_usd: f64,
}

impl UnitSpec {
    /// An agent of a plan.
    pub fn agent(agent_id: AgentId, depends_on: Vec<AgentId>) -> UnitSpec {
        UnitSpec {
            agent_id,
            depends_on,
            kind: UnitKind::Agent,
            input: None,
            estimated_usd: 0.0,
        }
    }
}

/// What a unit is (`units.kind`): which code a worker runs it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    /// An agent of a reviewed plan, in a tree of the worker's cache.
    Agent,
    /// A chunk of an item run: its model calls and their checking, no tree.
    ItemChunk,
}

impl UnitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitKind::Agent => "agent",
            UnitKind::ItemChunk => "item_chunk",
        }
    }

    pub fn parse(text: &str) -> Option<UnitKind> {
        Some(match text {
            "agent" => UnitKind::Agent,
            "item_chunk" => UnitKind::ItemChunk,
            _ => return None,
        })
    }
}

/// Where a unit stands (`units.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitState {
    /// Waiting for a worker (and, until they commit, for its dependencies).
    Ready,
    Leased,
    /// Committed by its worker with a success: its patch is the agent's work.
    Committed,
    /// Committed by its worker with a failure.
    Failed,
    /// Never to run: the coordinator gave it up (a dependency failed, the run was stopped).
    Skipped,
}

impl UnitState {
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Ready => "ready",
            UnitState::Leased => "leased",
            UnitState::Committed => "committed",
            UnitState::Failed => "failed",
            UnitState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<UnitState> {
        Some(match text {
            "ready" => UnitState::Ready,
            "leased" => UnitState::Leased,
            "committed" => UnitState::Committed,
            "failed" => UnitState::Failed,
            "skipped" => UnitState::Skipped,
            _ => return None,
        })
    }

    /// Its worker is done with it: it has a commit number.
    pub fn is_final(self) -> bool {
        matches!(self, UnitState::Committed | UnitState::Failed)
    }
}

/// A held lease: the unit, the attempt it is, and whose it is until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub run_id: RunId,
    pub agent_id: AgentId,
    /// From 1; also the `agent_runs` attempt the worker records.
    pub attempt: u32,
    pub owner: String,
    pub expires_at: SystemTime,
    /// The run's recorded plan hash, which the worker checks against the plan it reads.
    pub plan_hash: String,
    pub kind: UnitKind,
    /// The unit's input as enqueued ([`UnitSpec::input`]).
    pub input: Option<String>,
}

/// A unit's outcome, committed by the worker holding its lease.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitCommit {
    pub lease: Lease,
    pub succeeded: bool,
    /// `git diff --binary` of the agent's write scope against its base (empty: no change).
    #[serde(skip)]
    pub patch: Vec<u8>,
    /// What the worker saw of the agent's result (JSON).
    pub outcome: serde_json::Value,
    /// The `agent_runs` row's finish, written in the same transaction.
    pub finish: AgentFinish,
    /// More `agent_runs` finishes written in the same transaction: the rows of an item
    /// chunk's retry calls (each its own agent id).
    pub other_finishes: Vec<AgentFinish>,
    pub at: SystemTime,
}

/// A unit as the store holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UnitRow {
    pub run_id: RunId,
    pub agent_id: AgentId,
    pub kind: UnitKind,
    pub state: UnitState,
    pub attempt: u32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<SystemTime>,
    pub commit_seq: Option<u64>,
    #[serde(skip)]
    pub patch: Option<Vec<u8>>,
    pub outcome: Option<serde_json::Value>,
    pub applied_at: Option<SystemTime>,
    pub depends_on: Vec<AgentId>,
    pub estimated_usd: f64,
    /// Dollars held against the run's budget while it is leased.
    pub reserved_usd: f64,
    /// Why a skipped unit never ran, when its skipper said ([`BUDGET_EXHAUSTED`]).
    pub skip_reason: Option<String>,
}

/// A published run's dollar budget and what its workers hold and have spent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunSpend {
    pub max_dollars: Option<f64>,
    /// Held by units leased now.
    pub reserved_usd: f64,
    /// Actual cost of the committed attempts, plus the reservations of attempts whose worker
    /// died.
    pub spent_usd: f64,
    /// Raw estimates of the units `spent_usd` was spent on.
    pub estimated_done_usd: f64,
}

/// The error a unit operation meets, before the writer names its store.
pub(super) enum UnitError {
    Db(&'static str, DbError),
    LeaseLost,
    UnknownRun,
    Json(serde_json::Error),
}

fn db(what: &'static str) -> impl Fn(DbError) -> UnitError {
    move |error| UnitError::Db(what, error)
}

fn first_int(rows: &[Vec<SqlValue>]) -> Option<i64> {
    match rows.first().and_then(|row| row.first()) {
        Some(SqlValue::Int(n)) => Some(*n),
        _ => None,
    }
}

/// Record a run's plan and base bundle. Publishing the same plan again is a no-op; the
/// first record is never replaced.
pub(super) fn publish_plan(db_: &dyn Db, plan: &RunPlanRecord) -> Result<(), UnitError> {
    db_.execute(
        "INSERT INTO run_plans (run_id, plan_hash, plan, base_commit, base_bundle, created_at,
             workflow, workflow_path, max_dollars)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (run_id) DO NOTHING",
        &[
            (&plan.run_id).into(),
            plan.plan_hash.as_str().into(),
            plan.plan.as_str().into(),
            plan.base_commit.as_str().into(),
            SqlValue::Bytes(plan.base_bundle.clone()),
            format_time(plan.created_at).into(),
            plan.workflow.as_str().into(),
            plan.workflow_path.clone().into(),
            plan.max_dollars.into(),
        ],
    )
    .map_err(db("recording a run's plan"))?;
    Ok(())
}

/// Enqueue `units` of `run_id` as ready, after any already enqueued. A unit already there is
/// left as it is (a resumed coordinator enqueues the same plan again).
pub(super) fn enqueue(db_: &dyn Db, run_id: &RunId, units: &[UnitSpec]) -> Result<(), UnitError> {
    let rows = db_
        .query(
            "SELECT COALESCE(MAX(enqueued_seq), 0) FROM units WHERE run_id = ?1",
            &[run_id.into()],
        )
        .map_err(db("numbering units"))?;
    let first = first_int(&rows).unwrap_or(0) + 1;
    // A hundred rows per statement: on PostgreSQL each statement is a round trip, and a
    // thousand of them were most of a run's publication.
    let numbered: Vec<(i64, &UnitSpec)> = (first..).zip(units).collect();
    for group in numbered.chunks(ROWS_PER_INSERT) {
        let mut params: Vec<SqlValue> = Vec::with_capacity(group.len() * 6);
        let mut values = Vec::with_capacity(group.len());
        for (seq, unit) in group {
            let at = params.len();
            values.push(format!(
                "(?{}, ?{}, ?{}, 'ready', ?{}, ?{}, ?{})",
                at + 1,
                at + 2,
                at + 3,
                at + 4,
                at + 5,
                at + 6
            ));
            params.extend([
                run_id.into(),
                (&unit.agent_id).into(),
                (*seq).into(),
                unit.kind.as_str().into(),
                unit.input.clone().into(),
                unit.estimated_usd.max(0.0).into(),
            ]);
        }
        db_.execute(
            &format!(
                "INSERT INTO units (run_id, agent_id, enqueued_seq, state, kind, input, estimated_usd)
                 VALUES {} ON CONFLICT (run_id, agent_id) DO NOTHING",
                values.join(", ")
            ),
            &params,
        )
        .map_err(db("enqueueing units"))?;
    }
    let dependencies: Vec<(&AgentId, &AgentId)> = units
        .iter()
        .flat_map(|unit| {
            unit.depends_on
                .iter()
                .map(move |dependency| (&unit.agent_id, dependency))
        })
        .collect();
    for group in dependencies.chunks(ROWS_PER_INSERT) {
        let mut params: Vec<SqlValue> = Vec::with_capacity(group.len() * 3);
        let mut values = Vec::with_capacity(group.len());
        for (agent, dependency) in group {
            let at = params.len();
            values.push(format!("(?{}, ?{}, ?{})", at + 1, at + 2, at + 3));
            params.extend([run_id.into(), (*agent).into(), (*dependency).into()]);
        }
        db_.execute(
            &format!(
                "INSERT INTO unit_dependencies (run_id, agent_id, depends_on)
                 VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            ),
            &params,
        )
        .map_err(db("enqueueing units' dependencies"))?;
    }
    Ok(())
}

/// Rows written by one multi-row INSERT when a run's units are enqueued.
const ROWS_PER_INSERT: usize = 100;

/// Lease up to `count` of the earliest ready units of `kinds` of any run whose plan is
/// recorded (or of `run_id` only), to `owner` until `expires_at`, each only if its run's
/// budget covers it: a run whose budget must wait for its units in flight is passed over
/// for the next run's units, and one whose budget is spent has its waiting units skipped
/// (see the module docs). The same leases, in the same order, as that many leases one by
/// one; none when nothing is ready and covered.
pub(super) fn lease(
    db_: &dyn Db,
    owner: &str,
    run_id: Option<&RunId>,
    kinds: &[UnitKind],
    count: usize,
    now: SystemTime,
    expires_at: SystemTime,
) -> Result<Vec<Lease>, UnitError> {
    let now_text = format_time(now);
    // Runs whose budget must wait for their units in flight, or is spent.
    let mut passed: Vec<RunId> = Vec::new();
    let mut leases = Vec::new();
    while leases.len() < count {
        let candidates = pick(db_, run_id, kinds, &now_text, &passed, count - leases.len())?;
        if candidates.is_empty() {
            break;
        }
        for candidate in candidates {
            if passed.contains(&candidate.run_id) {
                continue;
            }
            let reservation = match candidate.max_dollars {
                None => 0.0,
                Some(max_dollars) => match reserve(db_, &candidate, max_dollars, &now_text)? {
                    Admission::Reserve(reservation) => reservation,
                    Admission::Wait => {
                        passed.push(candidate.run_id);
                        continue;
                    }
                    Admission::Exhausted => {
                        skip_for_budget(db_, &candidate.run_id, &now_text)?;
                        passed.push(candidate.run_id);
                        continue;
                    }
                },
            };
            leases.push(take_lease(
                db_,
                &candidate,
                owner,
                reservation,
                &now_text,
                expires_at,
            )?);
        }
    }
    Ok(leases)
}

/// A unit a lease may take, with what its run's budget needs to know.
struct Candidate {
    run_id: RunId,
    agent_id: AgentId,
    kind: UnitKind,
    input: Option<String>,
    /// It is `leased` to a worker whose lease ran out (a takeover).
    expired: bool,
    /// What the dead lease reserved, for a takeover.
    reserved_usd: f64,
    estimated_usd: f64,
    max_dollars: Option<f64>,
}

fn real(value: &SqlValue) -> f64 {
    match value {
        SqlValue::Real(n) => *n,
        SqlValue::Int(n) => *n as f64,
        _ => 0.0,
    }
}

/// The earliest `limit` ready units of one of `kinds` (never leased, or its lease has run
/// out, and every dependency committed) of `run_id` or any run with a recorded plan, runs in
/// `passed` left out, in lease order; locked (PostgreSQL: `FOR UPDATE … SKIP LOCKED`, so two
/// workers never pick one unit).
fn pick(
    db_: &dyn Db,
    run_id: Option<&RunId>,
    kinds: &[UnitKind],
    now_text: &str,
    passed: &[RunId],
    limit: usize,
) -> Result<Vec<Candidate>, UnitError> {
    // The kinds are our own names, never the caller's text: safe to write into the query.
    let kinds = if kinds.is_empty() {
        "''".to_owned()
    } else {
        kinds
            .iter()
            .map(|kind| format!("'{}'", kind.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut params: Vec<SqlValue> = vec![
        now_text.into(),
        // '' is every run (no run id is empty).
        run_id.map_or("", |id| id.as_str()).into(),
    ];
    let mut not_in = String::new();
    for run in passed {
        params.push(run.into());
        not_in.push_str(&format!(" AND u.run_id <> ?{}", params.len()));
    }
    let lock = match db_.dialect() {
        Dialect::Postgres => " FOR UPDATE OF u SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "SELECT u.run_id, u.agent_id, u.state, u.reserved_usd, u.estimated_usd, p.max_dollars,
             u.kind, u.input
         FROM units u
         JOIN run_plans p ON p.run_id = u.run_id
         WHERE (u.state = 'ready' OR (u.state = 'leased' AND u.lease_expires_at < ?1))
           AND (?2 = '' OR u.run_id = ?2){not_in}
           AND u.kind IN ({kinds})
           AND NOT EXISTS (
               SELECT 1 FROM unit_dependencies d
               JOIN units du ON du.run_id = d.run_id AND du.agent_id = d.depends_on
               WHERE d.run_id = u.run_id AND d.agent_id = u.agent_id
                 AND du.state <> 'committed')
         ORDER BY u.run_id, u.enqueued_seq LIMIT {limit}{lock}"
    );
    let rows = db_.query(&sql, &params).map_err(db("leasing a unit"))?;
    rows.iter().map(|row| candidate(row)).collect()
}

/// A row of [`pick`]'s query.
fn candidate(row: &[SqlValue]) -> Result<Candidate, UnitError> {
    let bad = || {
        UnitError::Db(
            "leasing a unit",
            DbError::Type {
                ty: "row".to_owned(),
                detail: format!("{row:?}"),
            },
        )
    };
    match row {
        [
            SqlValue::Text(run),
            SqlValue::Text(agent),
            SqlValue::Text(state),
            reserved,
            estimated,
            max_dollars,
            SqlValue::Text(kind),
            input,
        ] => Ok(Candidate {
            run_id: RunId::from(run.as_str()),
            agent_id: AgentId::from(agent.as_str()),
            kind: UnitKind::parse(kind).ok_or_else(bad)?,
            input: match input {
                SqlValue::Text(input) => Some(input.clone()),
                _ => None,
            },
            expired: state == "leased",
            reserved_usd: real(reserved),
            estimated_usd: real(estimated),
            max_dollars: match max_dollars {
                SqlValue::Null => None,
                other => Some(real(other)),
            },
        }),
        _ => Err(bad()),
    }
}

/// The run's ledger, its row locked (PostgreSQL: `FOR UPDATE`) until the transaction ends.
fn ledger(db_: &dyn Db, run_id: &RunId) -> Result<Ledger, UnitError> {
    let lock = match db_.dialect() {
        Dialect::Postgres => " FOR UPDATE",
        Dialect::Sqlite => "",
    };
    let rows = db_
        .query(
            &format!(
                "SELECT spent_usd, reserved_usd, estimated_done_usd FROM run_plans
                 WHERE run_id = ?1{lock}"
            ),
            &[run_id.into()],
        )
        .map_err(db("reading a run's budget"))?;
    match rows.first().map(Vec::as_slice) {
        Some([spent, reserved, estimated_done]) => Ok(Ledger {
            spent: real(spent),
            reserved: real(reserved),
            estimated_done: real(estimated_done),
        }),
        _ => Err(UnitError::UnknownRun),
    }
}

fn write_ledger(db_: &dyn Db, run_id: &RunId, ledger: &Ledger) -> Result<(), UnitError> {
    db_.execute(
        "UPDATE run_plans SET spent_usd = ?2, reserved_usd = ?3, estimated_done_usd = ?4
         WHERE run_id = ?1",
        &[
            run_id.into(),
            ledger.spent.into(),
            ledger.reserved.max(0.0).into(),
            ledger.estimated_done.into(),
        ],
    )
    .map_err(db("recording a run's budget"))?;
    Ok(())
}

/// Whether the run's budget covers `candidate`; a reservation is recorded on the run's row
/// (the unit's own is written with its lease).
fn reserve(
    db_: &dyn Db,
    candidate: &Candidate,
    max_dollars: f64,
    now_text: &str,
) -> Result<Admission, UnitError> {
    let mut ledger = ledger(db_, &candidate.run_id)?;
    let count = |sql: &str, params: &[SqlValue]| {
        db_.query(sql, params)
            .map(|rows| first_int(&rows).unwrap_or(0))
            .map_err(db("reading a run's budget"))
    };
    let in_flight = count(
        "SELECT COUNT(*) FROM units WHERE run_id = ?1 AND state = 'leased'
           AND lease_expires_at >= ?2 AND agent_id <> ?3",
        &[
            (&candidate.run_id).into(),
            now_text.into(),
            (&candidate.agent_id).into(),
        ],
    )?;
    let settled = count(
        "SELECT COUNT(*) FROM units WHERE run_id = ?1 AND state IN ('committed', 'failed')",
        &[(&candidate.run_id).into()],
    )?;
    if candidate.expired {
        // The dead attempt's reservation is spent whatever happens to the unit now.
        ledger.spent += candidate.reserved_usd;
        ledger.reserved -= candidate.reserved_usd;
        ledger.estimated_done += candidate.estimated_usd;
    }
    let admission = budget::admit(
        Some(max_dollars),
        &ledger,
        candidate.estimated_usd,
        in_flight > 0,
        settled > 0 || ledger.estimated_done > 0.0,
    );
    // A takeover not taken now is counted when it is taken, or skipped.
    if let Admission::Reserve(reservation) = admission {
        ledger.reserved += reservation;
        write_ledger(db_, &candidate.run_id, &ledger)?;
    }
    Ok(admission)
}

/// Skip every unit of `run_id` still waiting for a worker (ready, or leased to a dead
/// worker), but for those a failed or skipped unit already blocks (the coordinator skips
/// them as dependants): the run's budget is spent.
fn skip_for_budget(db_: &dyn Db, run_id: &RunId, now_text: &str) -> Result<(), UnitError> {
    // PostgreSQL: units another lease transaction has picked are left to it. It holds them
    // while it waits for the run's row, which this transaction holds: waiting for them here
    // was a deadlock. That transaction finds the budget spent too once it has the row, and
    // skips them itself.
    let lock = match db_.dialect() {
        Dialect::Postgres => " FOR UPDATE OF u SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let rows = db_
        .query(
            &format!(
                "SELECT u.agent_id, u.state, u.reserved_usd, u.estimated_usd FROM units u
                 WHERE u.run_id = ?1
                   AND (u.state = 'ready' OR (u.state = 'leased' AND u.lease_expires_at < ?2))
                   AND NOT EXISTS (
                       SELECT 1 FROM unit_dependencies d
                       JOIN units du ON du.run_id = d.run_id AND du.agent_id = d.depends_on
                       WHERE d.run_id = u.run_id AND d.agent_id = u.agent_id
                         AND du.state IN ('failed', 'skipped'))
                 ORDER BY u.enqueued_seq{lock}"
            ),
            &[run_id.into(), now_text.into()],
        )
        .map_err(db("skipping a unit"))?;
    let mut ledger = ledger(db_, run_id)?;
    for row in rows {
        let [
            SqlValue::Text(agent),
            SqlValue::Text(state),
            reserved,
            estimated,
        ] = &row[..]
        else {
            continue;
        };
        if state == "leased" {
            // A dead lease's reservation is spent (see the module docs).
            ledger.spent += real(reserved);
            ledger.reserved -= real(reserved);
            ledger.estimated_done += real(estimated);
        }
        let agent = AgentId::from(agent.as_str());
        db_.execute(
            "UPDATE units SET state = 'skipped', lease_owner = NULL, lease_expires_at = NULL,
                 reserved_usd = 0, skip_reason = ?3
             WHERE run_id = ?1 AND agent_id = ?2",
            &[run_id.into(), (&agent).into(), BUDGET_EXHAUSTED.into()],
        )
        .map_err(db("skipping a unit"))?;
        // A dead lease's attempt ends here, as on a takeover.
        close_dead_attempt(
            db_,
            run_id,
            &agent,
            now_text,
            "its worker stopped renewing the lease, and the run's dollar budget cannot cover the unit again",
        )?;
    }
    write_ledger(db_, run_id, &ledger)
}

/// Close the in-flight `agent_runs` row a dead lease left (any attempt of the unit whose row
/// never finished) as a failure.
fn close_dead_attempt(
    db_: &dyn Db,
    run_id: &RunId,
    agent_id: &AgentId,
    now_text: &str,
    why: &str,
) -> Result<(), UnitError> {
    db_.execute(
        "UPDATE agent_runs SET status = 'failure', timestamp_end = ?3, error = ?4
         WHERE run_id = ?1 AND agent_id = ?2 AND status IS NULL",
        &[run_id.into(), agent_id.into(), now_text.into(), why.into()],
    )
    .map_err(db("closing an expired lease's attempt"))?;
    Ok(())
}

/// Lease `candidate` to `owner`, holding `reservation` dollars of its run's budget.
fn take_lease(
    db_: &dyn Db,
    candidate: &Candidate,
    owner: &str,
    reservation: f64,
    now_text: &str,
    expires_at: SystemTime,
) -> Result<Lease, UnitError> {
    let rows = db_
        .query(
            "UPDATE units SET state = 'leased', lease_owner = ?3, lease_expires_at = ?4,
                 attempt = attempt + 1, reserved_usd = ?5
             WHERE run_id = ?1 AND agent_id = ?2
             RETURNING attempt",
            &[
                (&candidate.run_id).into(),
                (&candidate.agent_id).into(),
                owner.into(),
                format_time(expires_at).into(),
                reservation.into(),
            ],
        )
        .map_err(db("leasing a unit"))?;
    let attempt = first_int(&rows).ok_or(UnitError::UnknownRun)?;
    // The previous lease's worker stopped heartbeating: its attempt ends here, as a failure.
    close_dead_attempt(
        db_,
        &candidate.run_id,
        &candidate.agent_id,
        now_text,
        "its worker stopped renewing the lease; another worker took the unit over",
    )?;
    let hash = db_
        .query(
            "SELECT plan_hash FROM run_plans WHERE run_id = ?1",
            &[(&candidate.run_id).into()],
        )
        .map_err(db("reading a run's plan hash"))?;
    let plan_hash = match hash.first().and_then(|row| row.first()) {
        Some(SqlValue::Text(hash)) => hash.clone(),
        _ => return Err(UnitError::UnknownRun),
    };
    Ok(Lease {
        run_id: candidate.run_id.clone(),
        agent_id: candidate.agent_id.clone(),
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        owner: owner.to_owned(),
        expires_at,
        plan_hash,
        kind: candidate.kind,
        input: candidate.input.clone(),
    })
}

/// Extend `lease` to `expires_at`. [`UnitError::LeaseLost`] if it is no longer held.
pub(super) fn heartbeat(
    db_: &dyn Db,
    lease: &Lease,
    expires_at: SystemTime,
) -> Result<(), UnitError> {
    let changed = db_
        .execute(
            "UPDATE units SET lease_expires_at = ?5
             WHERE run_id = ?1 AND agent_id = ?2 AND lease_owner = ?3 AND attempt = ?4
               AND state = 'leased'",
            &[
                (&lease.run_id).into(),
                (&lease.agent_id).into(),
                lease.owner.as_str().into(),
                lease.attempt.into(),
                format_time(expires_at).into(),
            ],
        )
        .map_err(db("renewing a lease"))?;
    if changed == 0 {
        return Err(UnitError::LeaseLost);
    }
    Ok(())
}

/// Move the unit held by `lease` to its next attempt, under the same lease: the unit's
/// attempt counter goes up by one, so a later takeover (which adds one more) never reuses a
/// number this worker recorded. Returns the lease as it now is. The caller writes the
/// previous attempt's finish row and the new one's start row in the same transaction; the
/// finished attempt's `cost_usd` is added to the run's spend here (the unit's reservation
/// stays until its commit). [`UnitError::LeaseLost`] if the lease is no longer held.
pub(super) fn next_attempt(db_: &dyn Db, lease: &Lease, cost_usd: f64) -> Result<Lease, UnitError> {
    let rows = db_
        .query(
            "UPDATE units SET attempt = attempt + 1
             WHERE run_id = ?1 AND agent_id = ?2 AND lease_owner = ?3 AND attempt = ?4
               AND state = 'leased'
             RETURNING attempt",
            &[
                (&lease.run_id).into(),
                (&lease.agent_id).into(),
                lease.owner.as_str().into(),
                lease.attempt.into(),
            ],
        )
        .map_err(db("starting a unit's next attempt"))?;
    let attempt = first_int(&rows).ok_or(UnitError::LeaseLost)?;
    db_.execute(
        "UPDATE run_plans SET spent_usd = spent_usd + ?2 WHERE run_id = ?1",
        &[(&lease.run_id).into(), cost_usd.max(0.0).into()],
    )
    .map_err(db("recording a run's budget"))?;
    Ok(Lease {
        attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        ..lease.clone()
    })
}

/// A unit's commit as [`record_commit`] wrote it on the unit's row, with what it settles on
/// its run's row when [`number_commits`] numbers it.
#[derive(Debug, Clone)]
pub(super) struct Recorded {
    pub agent_id: AgentId,
    /// The actual cost of its `agent_runs` finishes.
    cost: f64,
    /// What its lease reserved of the run's budget, and what the plan estimated for it.
    reserved: f64,
    estimated: f64,
}

/// Mark the unit committed (or failed) with its patch and outcome; [`number_commits`] then
/// gives it the run's next commit number and settles its reservation against the run's
/// budget with the actual cost of its `agent_runs` finishes. The caller writes those finishes
/// and numbers the commit in the same transaction. [`UnitError::LeaseLost`] if the lease is
/// no longer the committer's.
pub(super) fn record_commit(db_: &dyn Db, unit: &UnitCommit) -> Result<Recorded, UnitError> {
    let lease = &unit.lease;
    let outcome = serde_json::to_string(&unit.outcome).map_err(UnitError::Json)?;
    // Read before the commit clears it; if the lease was lost the commit below refuses.
    let held = db_
        .query(
            "SELECT reserved_usd, estimated_usd FROM units WHERE run_id = ?1 AND agent_id = ?2",
            &[(&lease.run_id).into(), (&lease.agent_id).into()],
        )
        .map_err(db("committing a unit"))?;
    let (reserved, estimated) = match held.first().map(Vec::as_slice) {
        Some([reserved, estimated]) => (real(reserved), real(estimated)),
        _ => (0.0, 0.0),
    };
    let cost: f64 = std::iter::once(&unit.finish)
        .chain(&unit.other_finishes)
        .map(|finish| finish.cost_usd.max(0.0))
        .sum();
    let state = if unit.succeeded {
        UnitState::Committed
    } else {
        UnitState::Failed
    };
    let changed = db_
        .execute(
            "UPDATE units SET state = ?5, patch = ?6, outcome = ?7, committed_at = ?8,
                 lease_expires_at = NULL, reserved_usd = 0
             WHERE run_id = ?1 AND agent_id = ?2 AND lease_owner = ?3 AND attempt = ?4
               AND state = 'leased'",
            &[
                (&lease.run_id).into(),
                (&lease.agent_id).into(),
                lease.owner.as_str().into(),
                lease.attempt.into(),
                state.as_str().into(),
                SqlValue::Bytes(unit.patch.clone()),
                outcome.into(),
                format_time(unit.at).into(),
            ],
        )
        .map_err(db("committing a unit"))?;
    if changed == 0 {
        return Err(UnitError::LeaseLost);
    }
    Ok(Recorded {
        agent_id: lease.agent_id.clone(),
        cost,
        reserved,
        estimated,
    })
}

/// Number `recorded` commits of `run_id`, in order, and settle them on the run's row in one
/// update: the row's lock orders every writer's commits of the run and is held to the end of
/// the transaction, so a writer takes it once per transaction, after everything else the
/// transaction does (on PostgreSQL, a lock taken at each commit, early in a batch, held every
/// other worker's commits back for the rest of the batch). Answers the numbers in order.
pub(super) fn number_commits(
    db_: &dyn Db,
    run_id: &RunId,
    recorded: &[Recorded],
) -> Result<Vec<u64>, UnitError> {
    let count = i64::try_from(recorded.len()).unwrap_or(i64::MAX);
    let rows = db_
        .query(
            "UPDATE run_plans SET commits = commits + ?2,
                 spent_usd = spent_usd + ?3, reserved_usd = reserved_usd - ?4,
                 estimated_done_usd = estimated_done_usd + ?5
             WHERE run_id = ?1 RETURNING commits",
            &[
                run_id.into(),
                count.into(),
                recorded.iter().map(|unit| unit.cost).sum::<f64>().into(),
                recorded
                    .iter()
                    .map(|unit| unit.reserved)
                    .sum::<f64>()
                    .into(),
                recorded
                    .iter()
                    .map(|unit| unit.estimated)
                    .sum::<f64>()
                    .into(),
            ],
        )
        .map_err(db("numbering a commit"))?;
    let last = first_int(&rows).ok_or(UnitError::UnknownRun)?;
    let mut numbers = Vec::with_capacity(recorded.len());
    for (seq, unit) in (last - count + 1..).zip(recorded) {
        db_.execute(
            "UPDATE units SET commit_seq = ?3 WHERE run_id = ?1 AND agent_id = ?2",
            &[run_id.into(), (&unit.agent_id).into(), seq.into()],
        )
        .map_err(db("numbering a commit"))?;
        numbers.push(u64::try_from(seq).unwrap_or(0));
    }
    Ok(numbers)
}

/// Record that the coordinator applied committed units' patches (idempotent).
pub(super) fn mark_applied(
    db_: &dyn Db,
    run_id: &RunId,
    agents: &[AgentId],
    at: SystemTime,
) -> Result<(), UnitError> {
    let at = format_time(at);
    for agent in agents {
        db_.execute(
            "UPDATE units SET applied_at = ?3
             WHERE run_id = ?1 AND agent_id = ?2 AND applied_at IS NULL",
            &[run_id.into(), agent.into(), at.clone().into()],
        )
        .map_err(db("recording a patch's application"))?;
    }
    Ok(())
}

/// Give up units that have not started: `skipped`, never leased again.
pub(super) fn skip(db_: &dyn Db, run_id: &RunId, agents: &[AgentId]) -> Result<(), UnitError> {
    for agent in agents {
        db_.execute(
            "UPDATE units SET state = 'skipped', lease_owner = NULL, lease_expires_at = NULL
             WHERE run_id = ?1 AND agent_id = ?2 AND state = 'ready'",
            &[run_id.into(), agent.into()],
        )
        .map_err(db("skipping a unit"))?;
    }
    Ok(())
}

/// Every unit of `run_id`, in enqueue order, with its dependencies.
pub(super) fn units(
    db_: &dyn Db,
    run_id: &RunId,
    with_patches: bool,
) -> Result<Vec<UnitRow>, DbError> {
    select(db_, run_id, None, with_patches)
}

/// The units of `run_id` committed after commit number `after` (successes and failures), in
/// commit order: what a coordinator has not taken yet.
pub(super) fn committed_after(
    db_: &dyn Db,
    run_id: &RunId,
    after: u64,
) -> Result<Vec<UnitRow>, DbError> {
    let mut units = select(db_, run_id, Some(after), true)?;
    units.sort_by_key(|unit| unit.commit_seq);
    Ok(units)
}

/// Units of `run_id` in enqueue order: all of them, or those committed after `after`; with
/// their patches and outcomes or not.
fn select(
    db_: &dyn Db,
    run_id: &RunId,
    after: Option<u64>,
    with_patches: bool,
) -> Result<Vec<UnitRow>, DbError> {
    let dependencies = db_.query(
        "SELECT agent_id, depends_on FROM unit_dependencies WHERE run_id = ?1
         ORDER BY agent_id, depends_on",
        &[run_id.into()],
    )?;
    let mut by_agent: std::collections::HashMap<String, Vec<AgentId>> = Default::default();
    for row in dependencies {
        if let [SqlValue::Text(agent), SqlValue::Text(dependency)] = &row[..] {
            by_agent
                .entry(agent.clone())
                .or_default()
                .push(AgentId::from(dependency.as_str()));
        }
    }
    // Patches are the bulk of a run's units, and outcomes are JSON to parse: a poll of their
    // states (a coordinator's, several times a second) leaves both out.
    let (patch, outcome) = if with_patches {
        ("patch", "outcome")
    } else {
        ("NULL", "NULL")
    };
    let rows = db_.query(
        &format!(
            "SELECT agent_id, state, attempt, lease_owner, lease_expires_at, commit_seq, {patch},
                 {outcome}, applied_at, kind, estimated_usd, reserved_usd, skip_reason
             FROM units WHERE run_id = ?1 AND (?2 < 0 OR commit_seq > ?2)
             ORDER BY enqueued_seq"
        ),
        &[
            run_id.into(),
            after
                .map_or(-1, |after| i64::try_from(after).unwrap_or(i64::MAX))
                .into(),
        ],
    )?;
    let text = |value: &SqlValue| match value {
        SqlValue::Text(text) => Some(text.clone()),
        _ => None,
    };
    let int = |value: &SqlValue| match value {
        SqlValue::Int(n) => Some(*n),
        _ => None,
    };
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let bad = || DbError::Type {
            ty: "units row".to_owned(),
            detail: format!("{row:?}"),
        };
        let [
            agent,
            state,
            attempt,
            owner,
            expires,
            seq,
            patch,
            outcome,
            applied,
            kind,
            estimated,
            reserved,
            skip_reason,
        ] = &row[..]
        else {
            return Err(bad());
        };
        let agent = text(agent).ok_or_else(bad)?;
        let state = text(state)
            .as_deref()
            .and_then(UnitState::parse)
            .ok_or_else(bad)?;
        let kind = text(kind)
            .as_deref()
            .and_then(UnitKind::parse)
            .ok_or_else(bad)?;
        out.push(UnitRow {
            run_id: run_id.clone(),
            agent_id: AgentId::from(agent.as_str()),
            kind,
            state,
            attempt: int(attempt)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            lease_owner: text(owner),
            lease_expires_at: text(expires).as_deref().and_then(parse_time),
            commit_seq: int(seq).and_then(|n| u64::try_from(n).ok()),
            patch: match patch {
                SqlValue::Bytes(bytes) => Some(bytes.clone()),
                _ => None,
            },
            outcome: text(outcome).and_then(|json| serde_json::from_str(&json).ok()),
            applied_at: text(applied).as_deref().and_then(parse_time),
            depends_on: by_agent.remove(&agent).unwrap_or_default(),
            estimated_usd: real(estimated),
            reserved_usd: real(reserved),
            skip_reason: text(skip_reason),
        });
    }
    Ok(out)
}

/// The committed patches of `agents` in `run_id` (units without one are left out).
pub(super) fn unit_patches(
    db_: &dyn Db,
    run_id: &RunId,
    agents: &[AgentId],
) -> Result<std::collections::HashMap<AgentId, Vec<u8>>, DbError> {
    let mut out = std::collections::HashMap::new();
    for (placeholders, params) in super::db::agent_groups(run_id, agents) {
        let rows = db_.query(
            &format!(
                "SELECT agent_id, patch FROM units WHERE run_id = ?1 AND agent_id IN ({placeholders})"
            ),
            &params,
        )?;
        for row in rows {
            if let [SqlValue::Text(agent), SqlValue::Bytes(patch)] = &row[..] {
                out.insert(AgentId::from(agent.as_str()), patch.clone());
            }
        }
    }
    Ok(out)
}

/// The plan record of `run_id`, if one was published.
pub(super) fn run_plan(db_: &dyn Db, run_id: &RunId) -> Result<Option<RunPlanRecord>, DbError> {
    let rows = db_.query(
        "SELECT plan_hash, plan, base_commit, base_bundle, created_at, workflow, workflow_path,
             max_dollars
         FROM run_plans WHERE run_id = ?1",
        &[run_id.into()],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    match &row[..] {
        [
            SqlValue::Text(hash),
            SqlValue::Text(plan),
            SqlValue::Text(base),
            SqlValue::Bytes(bundle),
            SqlValue::Text(created),
            SqlValue::Text(workflow),
            workflow_path,
            max_dollars,
        ] => Ok(Some(RunPlanRecord {
            run_id: run_id.clone(),
            plan_hash: hash.clone(),
            plan: plan.clone(),
            workflow: workflow.clone(),
            workflow_path: match workflow_path {
                SqlValue::Text(path) => Some(path.clone()),
                _ => None,
            },
            base_commit: base.clone(),
            base_bundle: bundle.clone(),
            max_dollars: match max_dollars {
                SqlValue::Null => None,
                other => Some(real(other)),
            },
            created_at: parse_time(created).unwrap_or(SystemTime::UNIX_EPOCH),
        })),
        _ => Err(DbError::Type {
            ty: "run_plans row".to_owned(),
            detail: format!("{} columns", row.len()),
        }),
    }
}

/// The budget of published run `run_id` and what its workers hold and have spent.
pub(super) fn run_spend(db_: &dyn Db, run_id: &RunId) -> Result<Option<RunSpend>, DbError> {
    let rows = db_.query(
        "SELECT max_dollars, reserved_usd, spent_usd, estimated_done_usd FROM run_plans
         WHERE run_id = ?1",
        &[run_id.into()],
    )?;
    Ok(match rows.first().map(Vec::as_slice) {
        Some([max_dollars, reserved, spent, estimated_done]) => Some(RunSpend {
            max_dollars: match max_dollars {
                SqlValue::Null => None,
                other => Some(real(other)),
            },
            reserved_usd: real(reserved),
            spent_usd: real(spent),
            estimated_done_usd: real(estimated_done),
        }),
        _ => None,
    })
}
