//! The write side: [`Store`], a cheap handle on the writer thread that owns the connection
//! (SQLite's, or the PostgreSQL one's thread: see [`super::postgres`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::buckets::{BucketAdjust, BucketTake, Granted};
use super::db::{Db, DbError, SqlValue};
use super::learned::LearnedLimit;
use super::location::StoreLocation;
use super::log::LogSink;
use super::postgres::PostgresDb;
use super::sqlite::SqliteDb;
use super::units::{self, Lease, RunPlanRecord, UnitCommit, UnitError, UnitKind, UnitSpec};
use super::{
    AgentFinish, AgentStart, CheckpointRecord, DenialRecord, EventRecord, NewRun, RunStatus,
    StoreError, ToolCallRecord, format_time,
};
use crate::group_commit::GroupCommit;
use crate::ids::{AgentId, RunId};

/// Most operations committed in one transaction.
pub const MAX_BATCH: usize = 500;
/// First key of the PostgreSQL transaction locks that number a run's events (the second is
/// the run id's hash); apart from the migrations' lock.
const EVENT_LOCK_CLASS: i32 = 0x0066_6e65;
/// Numbers an event of a run may be given before the writer gives up on it (each is taken
/// by another writer of the same run only when that writer recorded one meanwhile).
const EVENT_SEQ_TRIES: usize = 8;
/// Operations that may wait in the channel before senders wait for room.
pub const QUEUE_DEPTH: usize = 4096;

/// What the writer did, returned by [`Store::close`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStats {
    /// Operations applied (successfully or not).
    pub ops: u64,
    /// Transactions committed.
    pub batches: u64,
    pub largest_batch: usize,
    /// Queued (not awaited) operations that failed; nobody was waiting to hear about them.
    pub failed_queued_ops: u64,
    pub first_queued_error: Option<String>,
    /// Lines written to the attached log.
    pub log_lines: u64,
    /// Log writes that failed (the database write still happened).
    pub log_errors: u64,
    pub first_log_error: Option<String>,
}

/// The run store's write handle. Clone it freely: all clones feed the same writer thread.
///
/// Methods that return after the commit are durable (see the module docs); the others return
/// once queued. All of them wait while the queue is full.
#[derive(Debug, Clone)]
pub struct Store {
    tx: mpsc::Sender<Request>,
    location: StoreLocation,
}

type Ack = oneshot::Sender<Result<Answer, StoreError>>;

/// What an acknowledged operation hands back once its batch is committed.
#[derive(Debug)]
enum Answer {
    Done,
    Leased(Option<Lease>),
    LeasedMany(Vec<Lease>),
    CommitSeq(u64),
    Granted(Granted),
    Learned(Vec<LearnedLimit>),
}

#[derive(Debug)]
struct Request {
    op: Op,
    ack: Option<Ack>,
}

#[derive(Debug)]
enum Op {
    CreateRun(Box<NewRun>),
    SetRunStatus {
        run_id: RunId,
        status: RunStatus,
        ended_at: Option<SystemTime>,
        error: Option<String>,
    },
    ReopenRun {
        run_id: RunId,
    },
    /// An agent the plan did not count (an item run's synthesis step): its start row and
    /// one more planned agent, in one transaction.
    StartUnplanned(Box<AgentStart>),
    StartAgent(Box<AgentStart>, Option<String>),
    FinishAgent(Box<AgentFinish>),
    Checkpoint(Box<CheckpointRecord>),
    ToolCall(Box<ToolCallRecord>),
    Denial(Box<DenialRecord>),
    Event(Box<EventRecord>),
    PublishUnits(Box<RunPlanRecord>, Vec<UnitSpec>),
    Lease {
        owner: String,
        run_id: Option<RunId>,
        kinds: Vec<UnitKind>,
        /// Up to this many units, in one transaction.
        count: usize,
        now: SystemTime,
        expires_at: SystemTime,
    },
    Heartbeat(Box<Lease>, SystemTime),
    NextAttempt(Box<Lease>, Box<AgentFinish>, Box<AgentStart>),
    CommitUnit(Box<UnitCommit>),
    MarkApplied(RunId, Vec<AgentId>, SystemTime),
    SkipUnits(RunId, Vec<AgentId>),
    TakeBuckets {
        takes: Vec<BucketTake>,
        now_ms: i64,
    },
    AdjustBuckets {
        adjusts: Vec<BucketAdjust>,
        now_ms: i64,
    },
    /// Report learned limits (none: only read them) and answer what the fleet learned.
    Learned {
        api: String,
        reported_by: String,
        limits: Vec<(String, u64)>,
        now_ms: i64,
        recent_ms: i64,
    },
    AttachLog(PathBuf),
    Flush,
    Close(oneshot::Sender<WriterStats>),
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path`, migrate it, and start the
    /// writer.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_at(&StoreLocation::Sqlite(path.to_path_buf()))
    }

    /// Open `<repo>/.fanout/fanout.db`, creating `.fanout/` (git-ignored) if needed.
    pub fn open_in_repo(repo: &Path) -> Result<Store, StoreError> {
        super::ensure_fanout_dir(repo)?;
        Store::open(&super::db_path(repo))
    }

    /// Open the store at `location` (creating a SQLite file and its directory, or connecting
    /// to PostgreSQL), migrate it, and start the writer. A SQLite file in a `.fanout/`
    /// directory gets that directory's ignore file, as [`Store::open_in_repo`] does.
    pub fn open_at(location: &StoreLocation) -> Result<Store, StoreError> {
        if let StoreLocation::Sqlite(path) = location {
            match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) if parent.file_name() == Some(".fanout".as_ref()) => {
                    let repo = parent.parent().unwrap_or(Path::new("."));
                    super::ensure_fanout_dir(repo)?;
                }
                Some(parent) => {
                    std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                None => {}
            }
        }
        // The writer thread opens its own connection (the PostgreSQL client must live on a
        // thread outside any tokio runtime) and says whether it could before it serves.
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (opened, open_result) = std::sync::mpsc::sync_channel::<Result<(), StoreError>>(1);
        let opening = location.clone();
        std::thread::Builder::new()
            .name("fanout-store-writer".to_owned())
            .spawn(move || {
                let db: Result<Box<dyn Db>, StoreError> = match &opening {
                    StoreLocation::Sqlite(path) => {
                        SqliteDb::open_writer(path).map(|db| Box::new(db) as Box<dyn Db>)
                    }
                    StoreLocation::Postgres(url) => {
                        PostgresDb::open_here(url).map(|db| Box::new(db) as Box<dyn Db>)
                    }
                };
                let db = match db {
                    Ok(db) => db,
                    Err(error) => {
                        let _ = opened.send(Err(error));
                        return;
                    }
                };
                let _ = opened.send(Ok(()));
                let mut writer = Writer {
                    db,
                    store: opening.to_string(),
                    location: opening.clone(),
                    lost: false,
                    next_event_seq: HashMap::new(),
                    log: None,
                    stats: WriterStats::default(),
                    totals_due: std::collections::BTreeMap::new(),
                };
                writer.run(rx);
            })
            .map_err(|source| StoreError::Spawn { source })?;
        match open_result.recv() {
            Ok(Ok(())) => Ok(Store {
                tx,
                location: location.clone(),
            }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(StoreError::WriterClosed {
                what: "the store's opening",
            }),
        }
    }

    /// Where the store is.
    pub fn location(&self) -> &StoreLocation {
        &self.location
    }

    /// Append every record committed from now on to `path` as JSON lines (parent
    /// directories are created; an existing file is appended to). Replaces an earlier log.
    pub async fn attach_log(&self, path: PathBuf) -> Result<(), StoreError> {
        self.acked(Op::AttachLog(path), "the log file").await
    }

    /// Record a new run. Durable.
    pub async fn create_run(&self, run: NewRun) -> Result<(), StoreError> {
        self.acked(Op::CreateRun(Box::new(run)), "the new run")
            .await
    }

    /// Move a run to `status` (and set `ended_at`, and an error message, when given). Durable.
    pub async fn set_run_status(
        &self,
        run_id: &RunId,
        status: RunStatus,
        ended_at: Option<SystemTime>,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let op = Op::SetRunStatus {
            run_id: run_id.to_owned(),
            status,
            ended_at,
            error,
        };
        self.acked(op, "the run status").await
    }

    /// Put a finished or interrupted run back to `running` for a resume: `ended_at` and the
    /// error message are cleared (the resume sets them again when it ends). Durable.
    pub async fn reopen_run(&self, run_id: &RunId) -> Result<(), StoreError> {
        let op = Op::ReopenRun {
            run_id: run_id.to_owned(),
        };
        self.acked(op, "the run status").await
    }

    /// [`Store::start_agent`] for work the run adds as it goes (an item run's synthesis
    /// steps): the start row and one more planned agent are committed together, so a run's
    /// agents are never more than planned, even across a crash and resume. Durable.
    pub async fn start_unplanned_agent(&self, start: AgentStart) -> Result<(), StoreError> {
        self.acked(Op::StartUnplanned(Box::new(start)), "the agent start")
            .await
    }

    /// Record an agent attempt as in flight. Durable.
    pub async fn start_agent(&self, start: AgentStart) -> Result<(), StoreError> {
        self.acked(Op::StartAgent(Box::new(start), None), "the agent start")
            .await
    }

    /// [`Store::start_agent`] together with the agent's pre-image manifest (JSON), in one
    /// transaction: once this returns, both are durable, and neither is without the other.
    /// A manifest already recorded for the agent is kept (a pre-image is never replaced).
    pub async fn start_agent_with_preimage(
        &self,
        start: AgentStart,
        manifest: String,
    ) -> Result<(), StoreError> {
        self.acked(
            Op::StartAgent(Box::new(start), Some(manifest)),
            "the agent start",
        )
        .await
    }

    /// Record how an agent attempt ended and add its tokens and cost to the run's totals.
    /// Returns after the commit (durable); idempotent for the same status.
    pub async fn finish_agent(&self, finish: AgentFinish) -> Result<(), StoreError> {
        self.acked(Op::FinishAgent(Box::new(finish)), "the agent result")
            .await
    }

    /// Record a checkpoint (replacing a record with the same run and seq). Durable.
    pub async fn record_checkpoint(&self, checkpoint: CheckpointRecord) -> Result<(), StoreError> {
        self.acked(Op::Checkpoint(Box::new(checkpoint)), "the checkpoint")
            .await
    }

    /// Queue a tool call record.
    pub async fn tool_call(&self, call: ToolCallRecord) -> Result<(), StoreError> {
        self.queued(Op::ToolCall(Box::new(call)), "a tool call")
            .await
    }

    /// Queue a denial record.
    pub async fn denial(&self, denial: DenialRecord) -> Result<(), StoreError> {
        self.queued(Op::Denial(Box::new(denial)), "a denial").await
    }

    /// Queue an event; the writer gives it the run's next sequence number.
    pub async fn event(&self, event: EventRecord) -> Result<(), StoreError> {
        self.queued(Op::Event(Box::new(event)), "an event").await
    }

    /// Record a run's reviewed plan (with its hash and base bundle) and enqueue its units, in
    /// one transaction: a worker never sees a plan without its units. Idempotent: what is
    /// already recorded stays as it is. Durable.
    pub async fn publish_units(
        &self,
        plan: RunPlanRecord,
        units: Vec<UnitSpec>,
    ) -> Result<(), StoreError> {
        self.answer(Op::PublishUnits(Box::new(plan), units), "the run's units")
            .await
            .map(|_| ())
    }

    /// Lease the earliest ready agent unit (of `run_id`, or of any run with a recorded plan)
    /// to `owner` until `expires_at`; `now` judges which leases have expired. `None` when
    /// nothing is ready. Durable.
    pub async fn lease_unit(
        &self,
        owner: &str,
        run_id: Option<&RunId>,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Option<Lease>, StoreError> {
        self.lease_unit_of(owner, run_id, &[UnitKind::Agent], now, expires_at)
            .await
    }

    /// [`Store::lease_unit`] for units of any of `kinds` (those the worker can run).
    pub async fn lease_unit_of(
        &self,
        owner: &str,
        run_id: Option<&RunId>,
        kinds: &[UnitKind],
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Option<Lease>, StoreError> {
        let leases = self
            .lease_units_of(owner, run_id, kinds, 1, now, expires_at)
            .await?;
        Ok(leases.into_iter().next())
    }

    /// Up to `count` units at once, in one transaction, as [`Store::lease_unit_of`] leases
    /// one (in the order it would lease them one by one); none when nothing is ready.
    pub async fn lease_units_of(
        &self,
        owner: &str,
        run_id: Option<&RunId>,
        kinds: &[UnitKind],
        count: usize,
        now: SystemTime,
        expires_at: SystemTime,
    ) -> Result<Vec<Lease>, StoreError> {
        let op = Op::Lease {
            owner: owner.to_owned(),
            run_id: run_id.cloned(),
            kinds: kinds.to_vec(),
            count,
            now,
            expires_at,
        };
        match self.answer(op, "the lease").await? {
            Answer::LeasedMany(leases) => Ok(leases),
            _ => Ok(Vec::new()),
        }
    }

    /// Extend `lease` to `expires_at`; [`StoreError::LeaseLost`] if it is no longer held.
    /// Durable.
    pub async fn heartbeat(&self, lease: &Lease, expires_at: SystemTime) -> Result<(), StoreError> {
        self.answer(
            Op::Heartbeat(Box::new(lease.clone()), expires_at),
            "the heartbeat",
        )
        .await
        .map(|_| ())
    }

    /// End the current attempt of the unit `lease` holds (`finish`, of `lease.attempt`) and
    /// start its next one (`start`, whose attempt number the store sets) under the same
    /// lease, in one transaction that also moves the unit's attempt counter: the lease as it
    /// now is. [`StoreError::LeaseLost`] (and nothing written) if the lease is no longer the
    /// caller's. Durable.
    pub async fn next_unit_attempt(
        &self,
        lease: &Lease,
        finish: AgentFinish,
        start: AgentStart,
    ) -> Result<Lease, StoreError> {
        let op = Op::NextAttempt(Box::new(lease.clone()), Box::new(finish), Box::new(start));
        match self.answer(op, "the unit's next attempt").await? {
            Answer::Leased(Some(next)) => Ok(next),
            _ => Err(StoreError::LeaseLost {
                run_id: lease.run_id.clone(),
                agent_id: lease.agent_id.clone(),
                attempt: lease.attempt,
            }),
        }
    }

    /// Commit a unit's outcome and its agent's finish row in one transaction; its number in
    /// the run's commit order. [`StoreError::LeaseLost`] (and nothing written) if the lease
    /// is no longer the committer's. Durable.
    pub async fn commit_unit(&self, unit: UnitCommit) -> Result<u64, StoreError> {
        match self
            .answer(Op::CommitUnit(Box::new(unit)), "the unit's commit")
            .await?
        {
            Answer::CommitSeq(seq) => Ok(seq),
            _ => Ok(0),
        }
    }

    /// Record that a committed unit's patch is applied to the user's tree. Durable.
    pub async fn mark_unit_applied(
        &self,
        run_id: &RunId,
        agent_id: &AgentId,
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.mark_units_applied(run_id, std::slice::from_ref(agent_id), at)
            .await
    }

    /// Record that committed units' patches are applied to the user's tree, in one
    /// transaction. Durable.
    pub async fn mark_units_applied(
        &self,
        run_id: &RunId,
        agents: &[AgentId],
        at: SystemTime,
    ) -> Result<(), StoreError> {
        self.acked(
            Op::MarkApplied(run_id.clone(), agents.to_vec(), at),
            "the patches' application",
        )
        .await
    }

    /// Give up units that are still waiting for a worker. Durable.
    pub async fn skip_units(&self, run_id: &RunId, agents: Vec<AgentId>) -> Result<(), StoreError> {
        self.acked(Op::SkipUnits(run_id.clone(), agents), "the skipped units")
            .await
    }

    /// Take `requests` from the shared rate bucket `name` (up to `capacity` requests,
    /// refilled at `per_second`) at `now`: zero when taken, else how long until there may be
    /// room (nothing taken). Durable.
    pub async fn take_from_bucket(
        &self,
        name: &str,
        capacity: f64,
        per_second: f64,
        requests: f64,
        now: SystemTime,
    ) -> Result<std::time::Duration, StoreError> {
        let take = BucketTake {
            name: name.to_owned(),
            capacity,
            per_second,
            amount: requests,
            extra: 0.0,
        };
        self.take_from_buckets(vec![take], now).await
    }

    /// Take every one of `takes` from its shared bucket at `now`, or none of them: zero when
    /// taken, else how long until all may have room ([`super::buckets`]).
    pub async fn take_from_buckets(
        &self,
        takes: Vec<BucketTake>,
        now: SystemTime,
    ) -> Result<std::time::Duration, StoreError> {
        let granted = self.grant_from_buckets(takes, now).await?;
        Ok(std::time::Duration::from_millis(granted.wait_ms))
    }

    /// [`Store::take_from_buckets`], answering also what each take got of its `extra`.
    /// Committed without waiting for the disk (SQLite's `synchronous = NORMAL`, PostgreSQL's
    /// `synchronous_commit = off`): a take lost with the machine's power is a request the
    /// buckets forget, as they forget one a second later anyway.
    pub async fn grant_from_buckets(
        &self,
        takes: Vec<BucketTake>,
        now: SystemTime,
    ) -> Result<Granted, StoreError> {
        let op = Op::TakeBuckets {
            takes,
            now_ms: epoch_ms(now),
        };
        match self.answer(op, "the rate buckets").await? {
            Answer::Granted(granted) => Ok(granted),
            _ => Ok(Granted::default()),
        }
    }

    /// Queue corrections to earlier takes (a response used more or less than its estimate).
    pub async fn adjust_buckets(
        &self,
        adjusts: Vec<BucketAdjust>,
        now: SystemTime,
    ) -> Result<(), StoreError> {
        let op = Op::AdjustBuckets {
            adjusts,
            now_ms: epoch_ms(now),
        };
        self.queued(op, "a rate bucket's correction").await
    }

    /// Record that `reported_by` learned `limits` (kind, per minute) of model API `api` from
    /// response headers at `now` (none: only read), and answer the limits of `api` reported
    /// within `recent` by anyone, the lowest of each kind ([`super::learned`]). Not synced to
    /// disk before it answers (see [`Store::grant_from_buckets`]).
    pub async fn share_learned_limits(
        &self,
        api: &str,
        reported_by: &str,
        limits: Vec<(String, u64)>,
        now: SystemTime,
        recent: std::time::Duration,
    ) -> Result<Vec<LearnedLimit>, StoreError> {
        let op = Op::Learned {
            api: api.to_owned(),
            reported_by: reported_by.to_owned(),
            limits,
            now_ms: epoch_ms(now),
            recent_ms: i64::try_from(recent.as_millis()).unwrap_or(i64::MAX),
        };
        match self.answer(op, "the learned limits").await? {
            Answer::Learned(limits) => Ok(limits),
            _ => Ok(Vec::new()),
        }
    }

    /// Wait until everything queued before this call is committed durably and logged.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.acked(Op::Flush, "the flush").await
    }

    /// Commit what is queued, flush the log and stop the writer. Other clones of this handle
    /// get [`StoreError::WriterClosed`] afterwards.
    pub async fn close(self) -> Result<WriterStats, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request {
                op: Op::Close(tx),
                ack: None,
            })
            .await
            .map_err(|_| StoreError::WriterClosed { what: "the close" })?;
        rx.await
            .map_err(|_| StoreError::WriterClosed { what: "the close" })
    }

    /// Queue an event without waiting: for callers that cannot await (progress callbacks).
    /// When the queue is full the event is handed to a task that waits for room, so it may be
    /// committed after events queued later (the writer numbers events as it commits them).
    /// Must be called inside a tokio runtime.
    pub fn event_now(&self, event: EventRecord) {
        let request = Request {
            op: Op::Event(Box::new(event)),
            ack: None,
        };
        match self.tx.try_send(request) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(request)) => {
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(request).await;
                });
            }
        }
    }

    async fn acked(&self, op: Op, what: &'static str) -> Result<(), StoreError> {
        self.answer(op, what).await.map(|_| ())
    }

    async fn answer(&self, op: Op, what: &'static str) -> Result<Answer, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Request { op, ack: Some(tx) })
            .await
            .map_err(|_| StoreError::WriterClosed { what })?;
        rx.await.map_err(|_| StoreError::WriterClosed { what })?
    }

    async fn queued(&self, op: Op, what: &'static str) -> Result<(), StoreError> {
        self.tx
            .send(Request { op, ack: None })
            .await
            .map_err(|_| StoreError::WriterClosed { what })
    }
}

struct Writer {
    db: Box<dyn Db>,
    store: String,
    location: StoreLocation,
    /// The last batch failed with a lost connection: connect again before the next one.
    lost: bool,
    next_event_seq: HashMap<RunId, i64>,
    log: Option<LogSink>,
    stats: WriterStats,
    /// What the batch under way adds to its runs' totals, written at its end (see
    /// [`Writer::number_commits`]).
    totals_due: std::collections::BTreeMap<RunId, RunTotals>,
}

/// The log lines of one operation's records (a unit's next attempt writes two).
type Lines = Vec<serde_json::Value>;

/// What finished agents add to their run's totals.
#[derive(Debug, Clone, Default)]
struct RunTotals {
    tokens: u64,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
}

impl RunTotals {
    fn add(&mut self, more: Option<RunTotals>) {
        if let Some(more) = more {
            self.tokens += more.tokens;
            self.input_tokens += more.input_tokens;
            self.output_tokens += more.output_tokens;
            self.cost_usd += more.cost_usd;
        }
    }
}

fn text(value: &str) -> SqlValue {
    SqlValue::Text(value.to_owned())
}

/// Milliseconds since the epoch (0 before it), as the shared rows keep time.
fn epoch_ms(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Op {
    /// Whether a caller waiting on it needs it on disk when it returns. The shared rate
    /// limits' exchanges do not: a take or report lost with the machine's power is one the
    /// buckets forget a second later anyway, and syncing each of them (every model call
    /// takes) would put a disk flush before every request.
    fn needs_disk(&self) -> bool {
        !self.is_shared_limit()
    }

    /// A take from, correction of or report to the limits a fleet shares.
    fn is_shared_limit(&self) -> bool {
        matches!(
            self,
            Op::TakeBuckets { .. } | Op::AdjustBuckets { .. } | Op::Learned { .. }
        )
    }
}

/// Move queued requests into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Request>) {
        let mut group = GroupCommit::new(GroupCommit::DEFAULT);
        while let Some(first) = rx.blocking_recv() {
            let arrived = Instant::now();
            let mut batch = vec![first];
            drain(&mut rx, &mut batch);
            let closing = batch.iter().any(|r| matches!(r.op, Op::Close(_)));
            if !closing && batch.len() < MAX_BATCH && group.should_gather(arrived) {
                group.gather();
                drain(&mut rx, &mut batch);
            }
            let close = self.commit(batch);
            group.synced(Instant::now());
            if let Some(close) = close {
                // Anything still queued was sent before the close was processed; commit it
                // too so `close` means "everything sent so far is in".
                rx.close();
                while let Ok(request) = rx.try_recv() {
                    let _ = self.commit(vec![request]);
                }
                self.finish_log();
                let _ = close.send(self.stats.clone());
                return;
            }
        }
        self.finish_log();
    }

    fn finish_log(&mut self) {
        if let Some(log) = self.log.as_mut()
            && let Err(err) = log.flush()
        {
            self.stats.log_errors += 1;
            self.stats.first_log_error.get_or_insert(err.to_string());
        }
    }

    fn failed(&self, what: &'static str) -> impl Fn(DbError) -> StoreError + '_ {
        move |source| StoreError::Database {
            store: self.store.clone(),
            what,
            source,
        }
    }

    /// Apply a batch in one transaction. Returns the close acknowledgement if the batch held
    /// a close request.
    fn commit(&mut self, batch: Vec<Request>) -> Option<oneshot::Sender<WriterStats>> {
        // PostgreSQL: the shared limits' rows are every worker's, and a transaction holds
        // their locks to its end; in a batch with a unit's commit (which locks its run's row)
        // two workers could each hold one and wait for the other. They get a transaction of
        // their own, first.
        if self.db.dialect() == super::Dialect::Postgres
            && batch.iter().any(|r| r.op.is_shared_limit())
            && batch.iter().any(|r| !r.op.is_shared_limit())
        {
            let (limits, rest): (Vec<Request>, Vec<Request>) =
                batch.into_iter().partition(|r| r.op.is_shared_limit());
            self.commit(limits);
            return self.commit(rest);
        }
        self.totals_due.clear();
        let durable = batch
            .iter()
            .any(|r| (r.ack.is_some() && r.op.needs_disk()) || matches!(r.op, Op::Close(_)));
        let ops = batch.len();
        let mut close = None;
        let mut outcomes: Vec<(Option<Ack>, Result<Answer, StoreError>)> = Vec::with_capacity(ops);
        let mut lines: Vec<serde_json::Value> = Vec::new();

        if let Err(message) = self.reconnect_if_lost() {
            for request in batch {
                if let Op::Close(tx) = request.op {
                    close = Some(tx);
                }
                let error = StoreError::Unreachable {
                    store: self.store.clone(),
                    message: message.clone(),
                };
                self.report(request.ack, Err(error));
            }
            return close;
        }
        if let Err(err) = self.db.begin(durable) {
            self.lost |= err.is_connection_lost();
            let message = err.to_string();
            for request in batch {
                if let Op::Close(tx) = request.op {
                    close = Some(tx);
                }
                self.report(request.ack, Err(self.commit_error(ops, &message)));
            }
            return close;
        }

        // PostgreSQL: events are numbered per run across every writer of the run (a shared
        // run's coordinator and workers). Inserted in this transaction, a writer's event could
        // wait on another writer's uncommitted one while holding this batch's locks (a unit's
        // commit number, a lease), and the other wait on those: a deadlock. They go in their
        // own transaction after this one (`commit_events`), which takes nothing else.
        let postgres = self.db.dialect() == super::Dialect::Postgres;
        // Each with where its log line goes among the batch's lines.
        let mut deferred: Vec<(usize, EventRecord)> = Vec::new();
        let mut commits: std::collections::BTreeMap<RunId, Vec<(usize, units::Recorded)>> =
            std::collections::BTreeMap::new();
        for request in batch {
            self.stats.ops += 1;
            let result = match request.op {
                Op::Event(event) if postgres && request.ack.is_none() => {
                    deferred.push((lines.len(), *event));
                    continue;
                }
                Op::Close(tx) => {
                    close = Some(tx);
                    Ok((Vec::new(), Answer::Done))
                }
                Op::Flush => Ok((Vec::new(), Answer::Done)),
                // Numbered with the batch's other commits of its run, after every other
                // operation of the batch (see `units::number_commits`).
                Op::CommitUnit(unit) => {
                    let run_id = unit.lease.run_id.clone();
                    match self.in_savepoint(|writer| writer.record_commit(*unit)) {
                        Ok((line, recorded)) => {
                            lines.extend(line);
                            // With where its answer goes among the batch's outcomes.
                            commits
                                .entry(run_id)
                                .or_default()
                                .push((outcomes.len(), recorded));
                            // Answered with its number once it has one.
                            Ok((Vec::new(), Answer::Done))
                        }
                        Err(error) => Err(error),
                    }
                }
                Op::AttachLog(path) => self.attach_log(path).map(|()| (Vec::new(), Answer::Done)),
                op => self.apply_in_savepoint(op),
            };
            let result = result.map(|(line, answer)| {
                lines.extend(line);
                answer
            });
            outcomes.push((request.ack, result));
        }

        // The batch's commits are numbered last: their runs' rows stay locked only from
        // here to the end of the transaction.
        let committed = match self.number_commits(commits, &mut outcomes) {
            Ok(()) => self.db.commit(durable).map_err(|err| {
                self.lost |= err.is_connection_lost();
                err.to_string()
            }),
            Err(error) => {
                if let StoreError::Database { source, .. } = &error {
                    self.lost |= source.is_connection_lost();
                }
                Err(error.to_string())
            }
        };
        match committed {
            Ok(()) => {
                self.stats.batches += 1;
                self.stats.largest_batch = self.stats.largest_batch.max(ops);
                if !deferred.is_empty() {
                    let (at, events): (Vec<usize>, Vec<EventRecord>) = deferred.into_iter().unzip();
                    match self.commit_events(events, durable) {
                        Ok(more) => {
                            // In the order the batch held them, so the log reads as before.
                            for (position, line) in at.into_iter().zip(more).rev() {
                                if let Some(line) = line {
                                    lines.insert(position, line);
                                }
                            }
                        }
                        Err(error) => self.report(None, Err(error)),
                    }
                }
                self.write_log(&lines);
                for (ack, result) in outcomes {
                    self.report(ack, result);
                }
            }
            Err(message) => {
                let _ = self.db.batch("ROLLBACK");
                // Queued: no one waits on them, so they are counted as lost.
                self.stats.failed_queued_ops += deferred.len() as u64;
                for (ack, _) in outcomes {
                    self.report(ack, Err(self.commit_error(ops, &message)));
                }
            }
        }
        close
    }

    /// Connect again when the last batch lost the connection or the client saw it close
    /// (PostgreSQL: a server restart, a dropped network); the error's text when that fails,
    /// and the next batch tries again.
    fn reconnect_if_lost(&mut self) -> Result<(), String> {
        if !self.lost && !self.db.is_closed() {
            return Ok(());
        }
        let StoreLocation::Postgres(url) = &self.location else {
            self.lost = false;
            return Ok(());
        };
        match PostgresDb::connect_here(url) {
            Ok(db) => {
                self.db = Box::new(db);
                self.lost = false;
                Ok(())
            }
            Err(error) => {
                self.lost = true;
                Err(error.to_string())
            }
        }
    }

    fn commit_error(&self, ops: usize, message: &str) -> StoreError {
        StoreError::Commit {
            store: self.store.clone(),
            ops,
            message: message.to_owned(),
        }
    }

    fn report(&mut self, ack: Option<Ack>, result: Result<Answer, StoreError>) {
        match ack {
            // The caller may have stopped waiting; nothing to do then.
            Some(ack) => {
                let _ = ack.send(result);
            }
            None => {
                if let Err(err) = result {
                    self.stats.failed_queued_ops += 1;
                    self.stats.first_queued_error.get_or_insert(err.to_string());
                }
            }
        }
    }

    fn write_log(&mut self, lines: &[serde_json::Value]) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        for line in lines {
            match log.write(line) {
                Ok(()) => self.stats.log_lines += 1,
                Err(err) => {
                    self.stats.log_errors += 1;
                    self.stats.first_log_error.get_or_insert(err.to_string());
                }
            }
        }
        if let Err(err) = log.flush() {
            self.stats.log_errors += 1;
            self.stats.first_log_error.get_or_insert(err.to_string());
        }
    }

    fn attach_log(&mut self, path: PathBuf) -> Result<(), StoreError> {
        self.finish_log();
        self.log = Some(LogSink::create(&path)?);
        Ok(())
    }

    /// A unit's commit on its row and its finishes' rows, not numbered yet (its finishes'
    /// totals are added with the batch's, at its end).
    fn record_commit(&mut self, unit: UnitCommit) -> Result<(Lines, units::Recorded), StoreError> {
        let recorded = units::record_commit(self.db.as_ref(), &unit)
            .map_err(|error| self.unit_error(error, &unit.lease.run_id, Some(&unit.lease)))?;
        let line = self.finish_agent(unit.finish)?;
        // The other rows' log lines are not kept: a worker's store has no run log.
        for finish in unit.other_finishes {
            self.finish_agent(finish)?;
        }
        Ok((line.into_iter().collect(), recorded))
    }

    /// Number the batch's recorded commits, run by run in run order (one lock order for
    /// every writer), each run's row updated once, and answer each commit with its number;
    /// then add what the batch's finishes add to their runs' totals.
    fn number_commits(
        &mut self,
        commits: std::collections::BTreeMap<RunId, Vec<(usize, units::Recorded)>>,
        outcomes: &mut [(Option<Ack>, Result<Answer, StoreError>)],
    ) -> Result<(), StoreError> {
        for (run_id, pending) in commits {
            let (at, recorded): (Vec<usize>, Vec<units::Recorded>) = pending.into_iter().unzip();
            let numbers = units::number_commits(self.db.as_ref(), &run_id, &recorded)
                .map_err(|error| self.unit_error(error, &run_id, None))?;
            for (outcome, seq) in at.into_iter().zip(numbers) {
                outcomes[outcome].1 = Ok(Answer::CommitSeq(seq));
            }
        }
        // Then each run's totals, once per batch, in run order (after its commits' row: one
        // lock order for every writer).
        for (run_id, total) in std::mem::take(&mut self.totals_due) {
            self.add_to_run(&run_id, &total)?;
        }
        Ok(())
    }

    /// Run one operation in a savepoint so its failure leaves the rest of the batch alone.
    fn apply_in_savepoint(&mut self, op: Op) -> Result<(Lines, Answer), StoreError> {
        self.in_savepoint(|writer| writer.apply(op))
    }

    /// Run `work` in a savepoint: its failure leaves the rest of the batch alone.
    fn in_savepoint<T>(
        &mut self,
        work: impl FnOnce(&mut Self) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Prepared once and reused: a fleet's batches run these around every record.
        self.db
            .execute("SAVEPOINT op", &[])
            .map_err(self.failed("opening a savepoint"))?;
        let due = self.totals_due.clone();
        let result = work(self);
        if result.is_err() {
            // What the failed operation added goes with it.
            self.totals_due = due;
        }
        let closed = if result.is_ok() {
            self.db.execute("RELEASE op", &[]).map(|_| ())
        } else {
            self.db.batch("ROLLBACK TO op; RELEASE op")
        };
        closed.map_err(self.failed("closing a savepoint"))?;
        result
    }

    fn apply(&mut self, op: Op) -> Result<(Lines, Answer), StoreError> {
        match op {
            Op::PublishUnits(plan, specs) => {
                let run_id = plan.run_id.clone();
                units::publish_plan(self.db.as_ref(), &plan)
                    .and_then(|()| units::enqueue(self.db.as_ref(), &run_id, &specs))
                    .map_err(|error| self.unit_error(error, &run_id, None))?;
                Ok((Vec::new(), Answer::Done))
            }
            Op::Lease {
                owner,
                run_id,
                kinds,
                count,
                now,
                expires_at,
            } => {
                let leases = units::lease(
                    self.db.as_ref(),
                    &owner,
                    run_id.as_ref(),
                    &kinds,
                    count,
                    now,
                    expires_at,
                )
                .map_err(|error| {
                    let run = run_id.clone().unwrap_or_else(|| RunId::from("(any)"));
                    self.unit_error(error, &run, None)
                })?;
                Ok((Vec::new(), Answer::LeasedMany(leases)))
            }
            Op::Heartbeat(lease, expires_at) => {
                units::heartbeat(self.db.as_ref(), &lease, expires_at)
                    .map_err(|error| self.unit_error(error, &lease.run_id, Some(&lease)))?;
                Ok((Vec::new(), Answer::Done))
            }
            Op::NextAttempt(lease, finish, start) => {
                let next = units::next_attempt(self.db.as_ref(), &lease, finish.cost_usd)
                    .map_err(|error| self.unit_error(error, &lease.run_id, Some(&lease)))?;
                let mut lines: Lines = self.finish_agent(*finish)?.into_iter().collect();
                let mut start = *start;
                start.attempt = next.attempt;
                lines.extend(self.start_agent(start)?);
                Ok((lines, Answer::Leased(Some(next))))
            }
            Op::MarkApplied(run_id, agents, at) => {
                units::mark_applied(self.db.as_ref(), &run_id, &agents, at)
                    .map_err(|error| self.unit_error(error, &run_id, None))?;
                Ok((Vec::new(), Answer::Done))
            }
            Op::SkipUnits(run_id, agents) => {
                units::skip(self.db.as_ref(), &run_id, &agents)
                    .map_err(|error| self.unit_error(error, &run_id, None))?;
                Ok((Vec::new(), Answer::Done))
            }
            Op::TakeBuckets { takes, now_ms } => {
                let granted = super::buckets::take(self.db.as_ref(), &takes, now_ms)
                    .map_err(self.failed("taking from the rate buckets"))?;
                Ok((Vec::new(), Answer::Granted(granted)))
            }
            Op::AdjustBuckets { adjusts, now_ms } => {
                super::buckets::adjust(self.db.as_ref(), &adjusts, now_ms)
                    .map_err(self.failed("correcting the rate buckets"))?;
                Ok((Vec::new(), Answer::Done))
            }
            Op::Learned {
                api,
                reported_by,
                limits,
                now_ms,
                recent_ms,
            } => {
                let db = self.db.as_ref();
                let learned =
                    super::learned::report(db, &api, &reported_by, &limits, now_ms, recent_ms)
                        .and_then(|()| super::learned::read(db, &api, now_ms, recent_ms))
                        .map_err(self.failed("sharing learned limits"))?;
                Ok((Vec::new(), Answer::Learned(learned)))
            }
            op => self
                .apply_record(op)
                .map(|line| (line.into_iter().collect(), Answer::Done)),
        }
    }

    fn unit_error(&self, error: UnitError, run_id: &RunId, lease: Option<&Lease>) -> StoreError {
        match error {
            UnitError::Db(what, source) => StoreError::Database {
                store: self.store.clone(),
                what,
                source,
            },
            UnitError::LeaseLost => StoreError::LeaseLost {
                run_id: run_id.clone(),
                agent_id: lease
                    .map(|lease| lease.agent_id.clone())
                    .unwrap_or_else(|| AgentId::from("(unknown)")),
                attempt: lease.map_or(0, |lease| lease.attempt),
            },
            UnitError::UnknownRun => StoreError::UnknownRun {
                run_id: run_id.clone(),
            },
            UnitError::Json(source) => StoreError::Json {
                what: "a unit's outcome",
                source,
            },
        }
    }

    fn apply_record(&mut self, op: Op) -> Result<Option<serde_json::Value>, StoreError> {
        match op {
            Op::CreateRun(run) => self.create_run(*run),
            Op::SetRunStatus {
                run_id,
                status,
                ended_at,
                error,
            } => self.set_run_status(run_id, status, ended_at, error),
            Op::ReopenRun { run_id } => self.reopen_run(run_id),
            Op::StartUnplanned(start) => {
                let run_id = start.run_id.clone();
                let line = self.start_agent(*start)?;
                self.add_planned(run_id, 1)?;
                Ok(line)
            }
            Op::StartAgent(start, manifest) => {
                if let Some(manifest) = manifest {
                    self.preimage(&start.run_id, &start.agent_id, &manifest)?;
                }
                self.start_agent(*start)
            }
            Op::FinishAgent(finish) => self.finish_agent(*finish),
            Op::Checkpoint(checkpoint) => self.checkpoint(*checkpoint),
            Op::ToolCall(call) => self.tool_call(*call),
            Op::Denial(denial) => self.denial(*denial),
            Op::Event(event) => self.event(*event),
            Op::AttachLog(_)
            | Op::Flush
            | Op::Close(_)
            | Op::PublishUnits(..)
            | Op::Lease { .. }
            | Op::Heartbeat(..)
            | Op::NextAttempt(..)
            | Op::CommitUnit(_)
            | Op::MarkApplied(..)
            | Op::SkipUnits(..)
            | Op::TakeBuckets { .. }
            | Op::AdjustBuckets { .. }
            | Op::Learned { .. } => Ok(None),
        }
    }

    fn create_run(&mut self, run: NewRun) -> Result<Option<serde_json::Value>, StoreError> {
        let started_at = format_time(run.started_at);
        let result = self.db.execute(
            "INSERT INTO runs (run_id, workflow, config_path, plan_hash, repo, status,
                 started_at, base_commit, agents_planned, simulated)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            &[
                (&run.run_id).into(),
                text(&run.workflow),
                run.config_path
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .into(),
                run.plan_hash.clone().into(),
                run.repo.as_ref().map(|p| p.display().to_string()).into(),
                text(run.status.as_str()),
                text(&started_at),
                run.base_commit.clone().into(),
                run.agents_planned.into(),
                run.simulated.into(),
            ],
        );
        match result {
            Ok(_) => Ok(self.log.is_some().then(|| {
                json!({
                    "timestamp": started_at,
                    "run_id": run.run_id,
                    "kind": "run_created",
                    "workflow": run.workflow,
                    "config_path": run.config_path,
                    "plan_hash": run.plan_hash,
                    "status": run.status,
                    "base_commit": run.base_commit,
                    "agents_planned": run.agents_planned,
                })
            })),
            Err(err) if err.is_constraint() => Err(StoreError::RunExists { run_id: run.run_id }),
            Err(source) => Err(self.failed("recording a run")(source)),
        }
    }

    fn set_run_status(
        &mut self,
        run_id: RunId,
        status: RunStatus,
        ended_at: Option<SystemTime>,
        error: Option<String>,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let ended_at = ended_at.map(format_time);
        let changed = self
            .db
            .execute(
                "UPDATE runs SET status = ?2, ended_at = COALESCE(?3, ended_at),
                     error = COALESCE(?4, error)
                 WHERE run_id = ?1",
                &[
                    (&run_id).into(),
                    text(status.as_str()),
                    ended_at.clone().into(),
                    error.clone().into(),
                ],
            )
            .map_err(self.failed("updating a run's status"))?;
        if changed == 0 {
            return Err(StoreError::UnknownRun { run_id });
        }
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": ended_at.unwrap_or_else(|| format_time(SystemTime::now())),
                "run_id": run_id,
                "kind": "run_status",
                "status": status,
                "error": error,
            })
        }))
    }

    fn add_planned(&mut self, run_id: RunId, agents: u32) -> Result<(), StoreError> {
        let changed = self
            .db
            .execute(
                "UPDATE runs SET agents_planned = agents_planned + ?2 WHERE run_id = ?1",
                &[(&run_id).into(), agents.into()],
            )
            .map_err(self.failed("counting planned agents"))?;
        if changed == 0 {
            return Err(StoreError::UnknownRun { run_id });
        }
        Ok(())
    }

    fn reopen_run(&mut self, run_id: RunId) -> Result<Option<serde_json::Value>, StoreError> {
        let changed = self
            .db
            .execute(
                "UPDATE runs SET status = 'running', ended_at = NULL, error = NULL
                 WHERE run_id = ?1",
                &[(&run_id).into()],
            )
            .map_err(self.failed("reopening a run"))?;
        if changed == 0 {
            return Err(StoreError::UnknownRun { run_id });
        }
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": format_time(SystemTime::now()),
                "run_id": run_id,
                "kind": "run_status",
                "status": RunStatus::Running,
                "resumed": true,
            })
        }))
    }

    fn preimage(
        &mut self,
        run_id: &RunId,
        agent_id: &AgentId,
        manifest: &str,
    ) -> Result<(), StoreError> {
        self.db
            .execute(
                "INSERT INTO preimages (run_id, agent_id, manifest) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run_id, agent_id) DO NOTHING",
                &[run_id.into(), agent_id.into(), text(manifest)],
            )
            .map_err(self.failed("recording a pre-image"))?;
        Ok(())
    }

    fn start_agent(&mut self, start: AgentStart) -> Result<Option<serde_json::Value>, StoreError> {
        let started_at = format_time(start.started_at);
        let result = self.db.execute(
            "INSERT INTO agent_runs (run_id, agent_id, task_description, files_accessed,
                 tools_called, status, token_count, mode, timestamp_start, timestamp_end,
                 attempt, model, escalated)
             VALUES (?1, ?2, ?3, '[]', '[]', NULL, 0, ?4, ?5, NULL, ?6, ?7, ?8)",
            &[
                (&start.run_id).into(),
                (&start.agent_id).into(),
                text(&start.task_description),
                text(start.mode.as_str()),
                text(&started_at),
                start.attempt.into(),
                start.model.clone().into(),
                start.escalated.into(),
            ],
        );
        match result {
            Ok(_) => Ok(self.log.is_some().then(|| {
                json!({
                    "timestamp": started_at,
                    "run_id": start.run_id,
                    "kind": "agent_started",
                    "agent_id": start.agent_id,
                    "attempt": start.attempt,
                    "mode": start.mode,
                    "model": start.model,
                    "escalated": start.escalated,
                    "task_description": start.task_description,
                })
            })),
            Err(err) if err.is_constraint() => Err(StoreError::AgentExists {
                run_id: start.run_id,
                agent_id: start.agent_id,
                attempt: start.attempt,
            }),
            Err(source) => Err(self.failed("recording an agent start")(source)),
        }
    }

    fn finish_agent(
        &mut self,
        finish: AgentFinish,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let run_id = finish.run_id.clone();
        let (line, added) = self.finish_agent_row(finish)?;
        self.totals_due.entry(run_id).or_default().add(added);
        Ok(line)
    }

    /// A run's totals grow by `added`.
    fn add_to_run(&mut self, run_id: &RunId, added: &RunTotals) -> Result<(), StoreError> {
        self.db
            .execute(
                "UPDATE runs SET total_tokens = total_tokens + ?2,
                     total_input_tokens = total_input_tokens + ?3,
                     total_output_tokens = total_output_tokens + ?4,
                     total_cost_usd = total_cost_usd + ?5
                 WHERE run_id = ?1",
                &[
                    run_id.into(),
                    added.tokens.into(),
                    added.input_tokens.into(),
                    added.output_tokens.into(),
                    added.cost_usd.into(),
                ],
            )
            .map_err(self.failed("adding to a run's totals"))?;
        Ok(())
    }

    /// The `agent_runs` row of a finish, and what it adds to its run's totals (nothing when
    /// the row already said so: a finish sent again).
    fn finish_agent_row(
        &mut self,
        finish: AgentFinish,
    ) -> Result<(Option<serde_json::Value>, Option<RunTotals>), StoreError> {
        let files =
            serde_json::to_string(&finish.files_accessed).map_err(|source| StoreError::Json {
                what: "files_accessed",
                source,
            })?;
        let tools =
            serde_json::to_string(&finish.tools_called).map_err(|source| StoreError::Json {
                what: "tools_called",
                source,
            })?;
        let ended_at = format_time(finish.ended_at);
        let tokens = finish.token_count();
        let changed = self
            .db
            .execute(
                "UPDATE agent_runs SET status = ?4, files_accessed = ?5, tools_called = ?6,
                     token_count = ?7, input_tokens = ?8, output_tokens = ?9, cost_usd = ?10,
                     error = ?11, checkpoint = ?12, timestamp_end = ?13,
                     cache_read_tokens = ?14, cache_write_tokens = ?15, cache_saved_usd = ?16
                 WHERE run_id = ?1 AND agent_id = ?2 AND attempt = ?3 AND status IS NULL",
                &[
                    (&finish.run_id).into(),
                    (&finish.agent_id).into(),
                    finish.attempt.into(),
                    text(finish.status.as_str()),
                    files.into(),
                    tools.into(),
                    tokens.into(),
                    finish.input_tokens.into(),
                    finish.output_tokens.into(),
                    finish.cost_usd.into(),
                    finish.error.clone().into(),
                    finish.checkpoint.clone().into(),
                    text(&ended_at),
                    finish.cache_read_tokens.into(),
                    finish.cache_write_tokens.into(),
                    finish.cache_saved_usd.into(),
                ],
            )
            .map_err(self.failed("recording an agent result"))?;
        if changed == 0 {
            let recorded = self
                .db
                .query(
                    "SELECT status FROM agent_runs
                     WHERE run_id = ?1 AND agent_id = ?2 AND attempt = ?3",
                    &[
                        (&finish.run_id).into(),
                        (&finish.agent_id).into(),
                        finish.attempt.into(),
                    ],
                )
                .map_err(self.failed("reading an agent's status"))?;
            let recorded: Option<Option<String>> = recorded.into_iter().next().map(|row| match row
                .into_iter()
                .next()
            {
                Some(SqlValue::Text(status)) => Some(status),
                _ => None,
            });
            return match recorded {
                None => Err(StoreError::UnknownAgent {
                    run_id: finish.run_id,
                    agent_id: finish.agent_id,
                    attempt: finish.attempt,
                }),
                Some(Some(status)) if status == finish.status.as_str() => Ok((None, None)),
                Some(status) => Err(StoreError::AgentFinished {
                    run_id: finish.run_id,
                    agent_id: finish.agent_id,
                    attempt: finish.attempt,
                    recorded: status.unwrap_or_else(|| "nothing".to_owned()),
                    requested: finish.status.as_str().to_owned(),
                }),
            };
        }
        let added = RunTotals {
            tokens,
            input_tokens: finish.input_tokens,
            output_tokens: finish.output_tokens,
            cost_usd: finish.cost_usd,
        };
        let line = self.log.is_some().then(|| {
            json!({
                "timestamp": ended_at,
                "run_id": finish.run_id,
                "kind": "agent_finished",
                "agent_id": finish.agent_id,
                "attempt": finish.attempt,
                "status": finish.status,
                "files_accessed": finish.files_accessed,
                "tools_called": finish.tools_called,
                "token_count": finish.token_count(),
                "input_tokens": finish.input_tokens,
                "output_tokens": finish.output_tokens,
                "cache_read_tokens": finish.cache_read_tokens,
                "cache_write_tokens": finish.cache_write_tokens,
                "cost_usd": finish.cost_usd,
                "cache_saved_usd": finish.cache_saved_usd,
                "error": finish.error,
                "checkpoint": finish.checkpoint,
            })
        });
        Ok((line, Some(added)))
    }

    fn checkpoint(
        &mut self,
        checkpoint: CheckpointRecord,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let at = format_time(checkpoint.at);
        self.db
            .execute(
                "INSERT INTO checkpoints (run_id, seq, commit_id, ref_name, label,
                     completed_agents, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (run_id, seq) DO UPDATE SET commit_id = excluded.commit_id,
                     ref_name = excluded.ref_name, label = excluded.label,
                     completed_agents = excluded.completed_agents, at = excluded.at",
                &[
                    (&checkpoint.run_id).into(),
                    checkpoint.seq.into(),
                    text(&checkpoint.commit_id),
                    text(&checkpoint.ref_name),
                    text(&checkpoint.label),
                    checkpoint.completed_agents.into(),
                    text(&at),
                ],
            )
            .map_err(self.failed("recording a checkpoint"))?;
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": at,
                "run_id": checkpoint.run_id,
                "kind": "checkpoint",
                "seq": checkpoint.seq,
                "commit_id": checkpoint.commit_id,
                "ref_name": checkpoint.ref_name,
                "label": checkpoint.label,
                "completed_agents": checkpoint.completed_agents,
            })
        }))
    }

    fn tool_call(&mut self, call: ToolCallRecord) -> Result<Option<serde_json::Value>, StoreError> {
        let started_at = format_time(call.started_at);
        let ended_at = call.ended_at.map(format_time);
        let paths = serde_json::to_string(&call.paths).unwrap_or_else(|_| "[]".into());
        self.db
            .execute(
                "INSERT INTO tool_calls (run_id, agent_id, attempt, seq, tool, target, ok, error,
                     started_at, ended_at, outcome, duration_ms, bytes, paths)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                &[
                    (&call.run_id).into(),
                    (&call.agent_id).into(),
                    call.attempt.into(),
                    call.seq.into(),
                    text(&call.tool),
                    call.target.clone().into(),
                    call.ok.into(),
                    call.error.clone().into(),
                    text(&started_at),
                    ended_at.clone().into(),
                    call.outcome.clone().into(),
                    call.duration_ms.into(),
                    call.bytes.into(),
                    paths.into(),
                ],
            )
            .map_err(self.failed("recording a tool call"))?;
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": started_at,
                "run_id": call.run_id,
                "kind": "tool_call",
                "agent_id": call.agent_id,
                "attempt": call.attempt,
                "seq": call.seq,
                "tool": call.tool,
                "target": call.target,
                "ok": call.ok,
                "outcome": call.outcome,
                "error": call.error,
                "ended_at": ended_at,
                "duration_ms": call.duration_ms,
                "bytes": call.bytes,
                "paths": call.paths,
            })
        }))
    }

    fn denial(&mut self, denial: DenialRecord) -> Result<Option<serde_json::Value>, StoreError> {
        let at = format_time(denial.at);
        self.db
            .execute(
                "INSERT INTO denials (run_id, agent_id, attempt, tool, target, reason, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[
                    (&denial.run_id).into(),
                    (&denial.agent_id).into(),
                    denial.attempt.into(),
                    text(&denial.tool),
                    denial.target.clone().into(),
                    text(&denial.reason),
                    text(&at),
                ],
            )
            .map_err(self.failed("recording a denial"))?;
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": at,
                "run_id": denial.run_id,
                "kind": "denial",
                "agent_id": denial.agent_id,
                "attempt": denial.attempt,
                "tool": denial.tool,
                "target": denial.target,
                "reason": denial.reason,
            })
        }))
    }

    /// PostgreSQL: `events` in a transaction of their own, numbered under a transaction lock
    /// per run (taken in run order, and nothing else is locked), so numbers never collide
    /// and no writer waits on another's uncommitted event; their log lines, one per event.
    fn commit_events(
        &mut self,
        events: Vec<EventRecord>,
        durable: bool,
    ) -> Result<Vec<Option<serde_json::Value>>, StoreError> {
        let mut runs: Vec<RunId> = events.iter().map(|event| event.run_id.clone()).collect();
        runs.sort();
        runs.dedup();
        self.db.begin(durable).map_err(|error| {
            self.lost |= error.is_connection_lost();
            self.failed("recording events")(error)
        })?;
        let result = (|| {
            let mut next: HashMap<RunId, i64> = HashMap::new();
            for run in &runs {
                self.db
                    .execute(
                        &format!("SELECT pg_advisory_xact_lock({EVENT_LOCK_CLASS}, hashtext(?1))"),
                        &[run.into()],
                    )
                    .map_err(self.failed("locking a run's event numbers"))?;
                next.insert(run.clone(), self.last_event_seq(run)? + 1);
            }
            let mut lines = Vec::new();
            for event in events {
                let seq = next.get(&event.run_id).copied().unwrap_or(1);
                next.insert(event.run_id.clone(), seq + 1);
                lines.push(self.insert_event(&event, seq)?);
            }
            Ok(lines)
        })();
        let lines = match result {
            Ok(lines) => lines,
            Err(error) => {
                let _ = self.db.batch("ROLLBACK");
                return Err(error);
            }
        };
        self.db.commit(durable).map_err(|error| {
            self.lost |= error.is_connection_lost();
            let _ = self.db.batch("ROLLBACK");
            self.failed("recording events")(error)
        })?;
        // A writer that records events only this way keeps no numbers of its own.
        self.next_event_seq.clear();
        Ok(lines)
    }

    /// One `events` row numbered `seq`; its log line (with a run log attached). Whether the
    /// number was free is the caller's to know.
    fn insert_event(
        &mut self,
        event: &EventRecord,
        seq: i64,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let at = format_time(event.at);
        let payload = serde_json::to_string(&event.payload).map_err(|source| StoreError::Json {
            what: "an event payload",
            source,
        })?;
        self.db
            .execute(
                "INSERT INTO events (run_id, seq, at, agent_id, kind, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[
                    (&event.run_id).into(),
                    seq.into(),
                    text(&at),
                    event.agent_id.as_ref().into(),
                    text(&event.kind),
                    payload.into(),
                ],
            )
            .map_err(self.failed("recording an event"))?;
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": at,
                "run_id": event.run_id,
                "seq": seq,
                "agent_id": event.agent_id,
                "kind": event.kind,
                "payload": event.payload,
            })
        }))
    }

    /// The run's highest event number in the store (0 when it has none).
    fn last_event_seq(&mut self, run_id: &RunId) -> Result<i64, StoreError> {
        let rows = self
            .db
            .query(
                "SELECT COALESCE(MAX(seq), 0) FROM events WHERE run_id = ?1",
                &[run_id.into()],
            )
            .map_err(self.failed("numbering an event"))?;
        Ok(match rows.first().and_then(|row| row.first()) {
            Some(SqlValue::Int(n)) => *n,
            _ => 0,
        })
    }

    fn event(&mut self, event: EventRecord) -> Result<Option<serde_json::Value>, StoreError> {
        let at = format_time(event.at);
        let payload = serde_json::to_string(&event.payload).map_err(|source| StoreError::Json {
            what: "an event payload",
            source,
        })?;
        // The next number is kept per writer; another writer of the same run (a shared run's
        // workers and coordinator) may have taken it: then it is read again and retried.
        let mut seq = 0;
        for _ in 0..EVENT_SEQ_TRIES {
            seq = match self.next_event_seq.get(&event.run_id) {
                Some(seq) => *seq,
                None => self.last_event_seq(&event.run_id)? + 1,
            };
            let inserted = self
                .db
                .execute(
                    "INSERT INTO events (run_id, seq, at, agent_id, kind, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (run_id, seq) DO NOTHING",
                    &[
                        (&event.run_id).into(),
                        seq.into(),
                        text(&at),
                        event.agent_id.as_ref().into(),
                        text(&event.kind),
                        payload.clone().into(),
                    ],
                )
                .map_err(self.failed("recording an event"))?;
            if inserted == 1 {
                break;
            }
            self.next_event_seq.remove(&event.run_id);
            seq = 0;
        }
        if seq == 0 {
            return Err(StoreError::EventNumbering {
                run_id: event.run_id.clone(),
                tries: EVENT_SEQ_TRIES,
            });
        }
        self.next_event_seq.insert(event.run_id.clone(), seq + 1);
        Ok(self.log.is_some().then(|| {
            json!({
                "timestamp": at,
                "run_id": event.run_id,
                "seq": seq,
                "agent_id": event.agent_id,
                "kind": event.kind,
                "payload": event.payload,
            })
        }))
    }
}
