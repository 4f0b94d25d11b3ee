//! Limits learned from response headers, shared between processes: one `learned_limits` row
//! per model API and kind (`requests_per_minute`, `input_tokens_per_minute`, …), so that a
//! worker that has never seen a header uses what another worker learned.
//!
//! A row holds the lowest value reported recently: a report replaces it when it is no higher,
//! or when the row's value was last reported longer than `recent_ms` ago (a limit that went
//! up takes over once nobody reports the old one). Readers see only rows reported within
//! `recent_ms`. Time is the caller's (`now_ms`).

use super::db::{Db, DbError, SqlValue};

/// One learned limit as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LearnedLimit {
    pub kind: String,
    pub limit_per_minute: u64,
    /// Milliseconds since the epoch when this value was last reported.
    pub reported_ms: i64,
    pub reported_by: Option<String>,
}

/// Record that `reported_by` saw `limits` (kind, per minute) for `api` at `now_ms`.
pub(super) fn report(
    db: &dyn Db,
    api: &str,
    reported_by: &str,
    limits: &[(String, u64)],
    now_ms: i64,
    recent_ms: i64,
) -> Result<(), DbError> {
    for (kind, limit) in limits {
        db.execute(
            "INSERT INTO learned_limits (api, kind, limit_per_minute, reported_ms, reported_by)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (api, kind) DO UPDATE SET
                 limit_per_minute = excluded.limit_per_minute,
                 reported_ms = excluded.reported_ms,
                 reported_by = excluded.reported_by
             WHERE excluded.limit_per_minute <= learned_limits.limit_per_minute
                OR learned_limits.reported_ms < ?6",
            &[
                api.into(),
                kind.as_str().into(),
                (*limit).into(),
                now_ms.into(),
                reported_by.into(),
                (now_ms - recent_ms).into(),
            ],
        )?;
    }
    Ok(())
}

/// The limits of `api` reported within `recent_ms` of `now_ms`, by kind.
pub(super) fn read(
    db: &dyn Db,
    api: &str,
    now_ms: i64,
    recent_ms: i64,
) -> Result<Vec<LearnedLimit>, DbError> {
    let rows = db.query(
        "SELECT kind, limit_per_minute, reported_ms, reported_by FROM learned_limits
         WHERE api = ?1 AND reported_ms >= ?2 ORDER BY kind",
        &[api.into(), (now_ms - recent_ms).into()],
    )?;
    rows.into_iter()
        .map(|row| match &row[..] {
            [
                SqlValue::Text(kind),
                SqlValue::Int(limit),
                SqlValue::Int(reported_ms),
                reported_by,
            ] => Ok(LearnedLimit {
                kind: kind.clone(),
                limit_per_minute: u64::try_from(*limit).unwrap_or(0),
                reported_ms: *reported_ms,
                reported_by: match reported_by {
                    SqlValue::Text(text) => Some(text.clone()),
                    _ => None,
                },
            }),
            _ => Err(DbError::Type {
                ty: "learned_limits row".to_owned(),
                detail: format!("{row:?}"),
            }),
        })
        .collect()
}
