//! Shared rate buckets: one `rate_buckets` row per limit, taken from by every process that
//! names it, so that workers on many machines together stay under one limit.
//!
//! A bucket holds up to `capacity` units (requests or tokens) and refills at `per_second`.
//! A take names every bucket one request draws on and is all or nothing: each row is read
//! (PostgreSQL: `FOR UPDATE`, in name order, which orders concurrent takers on other machines;
//! SQLite: inside the writer's `BEGIN IMMEDIATE`), refilled for the time since it was last
//! written, and the request is taken from all of them if every one has room, else from none
//! and the answer is how long until there may be. A cost larger than a whole bucket is taken
//! once the bucket is full, and the bucket goes into debt (below zero) that later takers wait
//! out; so does a correction ([`adjust`]) that charges more than was taken, when the answer
//! says the request used more than its estimate. Time is the caller's (`now_ms`), as for
//! leases.

use super::db::{Db, DbError, Dialect, SqlValue};

/// One bucket a take draws on: `amount` from `name`, which holds up to `capacity` and
/// refills at `per_second`.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketTake {
    pub name: String,
    pub capacity: f64,
    pub per_second: f64,
    pub amount: f64,
    /// Taken besides `amount` when there is room for it: as much of it as the bucket holds
    /// once `amount` is out, nothing when the take must wait. A worker's credit for its next
    /// requests, spent without asking the store ([`crate::distributed::StoreLimits`]).
    pub extra: f64,
}

/// What a take got.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Granted {
    /// 0 when taken, else the milliseconds until every bucket may have room (and nothing was
    /// taken).
    pub wait_ms: u64,
    /// Per take, in the order given: how much of its `extra` it got.
    pub extra: Vec<f64>,
}

/// A correction to an earlier take: `give_back` units returned to `name` (negative: charged
/// more, possibly into debt).
#[derive(Debug, Clone, PartialEq)]
pub struct BucketAdjust {
    pub name: String,
    pub capacity: f64,
    pub per_second: f64,
    pub give_back: f64,
}

/// A row's level refilled to `now_ms`, and the time it was written (never moved back).
struct Row {
    level: f64,
    updated_ms: i64,
}

fn number(value: &SqlValue) -> Option<f64> {
    match value {
        SqlValue::Real(n) => Some(*n),
        SqlValue::Int(n) => Some(*n as f64),
        _ => None,
    }
}

/// Read bucket `name` (created full when it is new) and refill it to `now_ms`.
fn read(
    db: &dyn Db,
    name: &str,
    capacity: f64,
    per_second: f64,
    now_ms: i64,
) -> Result<Row, DbError> {
    db.execute(
        "INSERT INTO rate_buckets (name, level, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO NOTHING",
        &[name.into(), capacity.into(), now_ms.into()],
    )?;
    let select = match db.dialect() {
        Dialect::Postgres => {
            "SELECT level, updated_ms FROM rate_buckets WHERE name = ?1 FOR UPDATE"
        }
        Dialect::Sqlite => "SELECT level, updated_ms FROM rate_buckets WHERE name = ?1",
    };
    let rows = db.query(select, &[name.into()])?;
    let (level, updated) = match rows.first().map(Vec::as_slice) {
        Some([level, SqlValue::Int(updated)]) => (number(level).unwrap_or(capacity), *updated),
        _ => (capacity, now_ms),
    };
    let elapsed = (now_ms - updated).max(0) as f64 / 1000.0;
    Ok(Row {
        level: (level + elapsed * per_second).min(capacity),
        updated_ms: now_ms.max(updated),
    })
}

fn write(db: &dyn Db, name: &str, row: &Row) -> Result<(), DbError> {
    db.execute(
        "UPDATE rate_buckets SET level = ?2, updated_ms = ?3 WHERE name = ?1",
        &[name.into(), row.level.into(), row.updated_ms.into()],
    )?;
    Ok(())
}

/// Take every one of `takes` at `now_ms`, or none: what each got of its extra when taken,
/// else the milliseconds until all of them may have room.
pub(super) fn take(db: &dyn Db, takes: &[BucketTake], now_ms: i64) -> Result<Granted, DbError> {
    let mut sorted: Vec<(usize, &BucketTake)> = takes.iter().enumerate().collect();
    // One lock order for every taker, so two that share buckets cannot deadlock.
    sorted.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let mut rows = Vec::with_capacity(sorted.len());
    let mut wait_ms: u64 = 0;
    for (_, take) in &sorted {
        let row = read(db, &take.name, take.capacity, take.per_second, now_ms)?;
        let needed = take.amount.min(take.capacity);
        if row.level < needed {
            let missing = needed - row.level;
            let wait = if take.per_second > 0.0 {
                (missing / take.per_second * 1000.0).ceil().max(1.0) as u64
            } else {
                u64::MAX
            };
            wait_ms = wait_ms.max(wait);
        }
        rows.push(row);
    }
    let mut extra = vec![0.0; takes.len()];
    for ((index, take), mut row) in sorted.iter().zip(rows) {
        if wait_ms == 0 {
            row.level -= take.amount;
            let granted = take.extra.min(row.level).max(0.0);
            row.level -= granted;
            extra[*index] = granted;
        }
        write(db, &take.name, &row)?;
    }
    Ok(Granted { wait_ms, extra })
}

/// Apply `adjusts` at `now_ms`: each bucket gets its units back, up to its capacity, or is
/// charged more.
pub(super) fn adjust(db: &dyn Db, adjusts: &[BucketAdjust], now_ms: i64) -> Result<(), DbError> {
    let mut sorted: Vec<&BucketAdjust> = adjusts.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for adjust in sorted {
        let mut row = read(db, &adjust.name, adjust.capacity, adjust.per_second, now_ms)?;
        row.level = (row.level + adjust.give_back).min(adjust.capacity);
        write(db, &adjust.name, &row)?;
    }
    Ok(())
}
