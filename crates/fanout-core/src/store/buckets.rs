//! Shared rate buckets: one `rate_buckets` row per limit, taken from by every process that
//! names it, so that workers on many machines together stay under one limit.
//!
//! A bucket holds up to `capacity` requests and refills at `per_second`. Taking reads the
//! row (PostgreSQL: `FOR UPDATE`, which orders concurrent takers on other machines; SQLite:
//! inside the writer's `BEGIN IMMEDIATE`), refills it for the time since it was last
//! written, and takes if there is room; otherwise it answers how long until there will be.
//! Time is the caller's (`now_ms`), as for leases.

use super::db::{Db, DbError, Dialect, SqlValue};

/// Take `requests` from bucket `name` at `now_ms`: 0 when taken, else the milliseconds until
/// there may be room (nothing taken).
pub(super) fn take(
    db: &dyn Db,
    name: &str,
    capacity: f64,
    per_second: f64,
    requests: f64,
    now_ms: i64,
) -> Result<u64, DbError> {
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
        Some([SqlValue::Real(level), SqlValue::Int(updated)]) => (*level, *updated),
        Some([SqlValue::Int(level), SqlValue::Int(updated)]) => (*level as f64, *updated),
        _ => (capacity, now_ms),
    };
    let elapsed = (now_ms - updated).max(0) as f64 / 1000.0;
    let level = (level + elapsed * per_second).min(capacity);
    let (left, wait) = if level >= requests {
        (level - requests, 0)
    } else {
        let missing = requests - level;
        let wait = if per_second > 0.0 {
            (missing / per_second * 1000.0).ceil().max(1.0) as u64
        } else {
            u64::MAX
        };
        (level, wait)
    };
    db.execute(
        "UPDATE rate_buckets SET level = ?2, updated_ms = ?3 WHERE name = ?1",
        &[name.into(), left.into(), now_ms.max(updated).into()],
    )?;
    Ok(wait)
}
