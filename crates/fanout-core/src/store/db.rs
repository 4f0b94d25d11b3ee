//! The seam between the run store and its two databases: [`Db`], a connection that runs SQL
//! with plain values ([`SqlValue`]) and answers rows of them.
//!
//! The writer ([`super::Store`]) and the reader ([`super::StoreReader`]) are written once,
//! against this trait; [`super::sqlite`] and [`super::postgres`] implement it. Queries are
//! written in one dialect where the two agree (most of them: `?N` placeholders, which the
//! PostgreSQL side turns into `$N`; `ON CONFLICT`; `CAST(SUM(..) AS BIGINT)` so a sum is an
//! integer on both), and per [`Dialect`] where they do not (JSON fields, time arithmetic,
//! transaction control, which [`Db::begin`] and [`Db::commit`] hide).
//!
//! A later lease table or shared rate bucket is one more migration on both sides and a few
//! queries through this same trait (PostgreSQL's `FOR UPDATE SKIP LOCKED` per [`Dialect`]).

/// Which SQL a [`Db`] speaks, for the few queries the two write differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    /// BLOB in SQLite, BYTEA in PostgreSQL (a unit's patch, a run's base bundle).
    Bytes(Vec<u8>),
}

impl From<&str> for SqlValue {
    fn from(text: &str) -> SqlValue {
        SqlValue::Text(text.to_owned())
    }
}

impl From<String> for SqlValue {
    fn from(text: String) -> SqlValue {
        SqlValue::Text(text)
    }
}

impl From<Vec<u8>> for SqlValue {
    fn from(bytes: Vec<u8>) -> SqlValue {
        SqlValue::Bytes(bytes)
    }
}

impl From<i64> for SqlValue {
    fn from(n: i64) -> SqlValue {
        SqlValue::Int(n)
    }
}

impl From<u32> for SqlValue {
    fn from(n: u32) -> SqlValue {
        SqlValue::Int(i64::from(n))
    }
}

/// Saturates rather than wraps: both databases' integers are signed 64-bit.
impl From<u64> for SqlValue {
    fn from(n: u64) -> SqlValue {
        SqlValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<f64> for SqlValue {
    fn from(n: f64) -> SqlValue {
        SqlValue::Real(n)
    }
}

/// Stored as 0 or 1 on both sides (the SQLite schema's INTEGER flags).
impl From<bool> for SqlValue {
    fn from(flag: bool) -> SqlValue {
        SqlValue::Int(i64::from(flag))
    }
}

impl<T: Into<SqlValue>> From<Option<T>> for SqlValue {
    fn from(value: Option<T>) -> SqlValue {
        value.map_or(SqlValue::Null, Into::into)
    }
}

impl From<&crate::ids::RunId> for SqlValue {
    fn from(id: &crate::ids::RunId) -> SqlValue {
        SqlValue::Text(id.as_str().to_owned())
    }
}

impl From<&crate::ids::AgentId> for SqlValue {
    fn from(id: &crate::ids::AgentId) -> SqlValue {
        SqlValue::Text(id.as_str().to_owned())
    }
}

/// A failure inside one of the databases.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    #[error("{}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
    #[error("the PostgreSQL connection's thread has stopped")]
    ConnectionGone,
    #[error("a value of type {ty} cannot be bound or read here ({detail})")]
    Type { ty: String, detail: String },
}

/// The server's own message (`ERROR: ...`) when there is one: `postgres::Error`'s display
/// alone is "db error".
fn postgres_message(error: &postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => error.to_string(),
    }
}

impl DbError {
    /// The connection to the database is gone (PostgreSQL: the server closed it, restarted or
    /// cannot be reached): it must be made again before it can serve anything.
    pub fn is_connection_lost(&self) -> bool {
        match self {
            DbError::Postgres(error) => {
                if error.is_closed() {
                    return true;
                }
                match error.code() {
                    Some(code) => {
                        let code = code.code();
                        // 08: connection exception; 57P01-57P03: the server is shutting
                        // down, crashed, or cannot take connections yet.
                        code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
                    }
                    None => std::error::Error::source(error)
                        .is_some_and(|cause| cause.downcast_ref::<std::io::Error>().is_some()),
                }
            }
            DbError::ConnectionGone => true,
            DbError::Sqlite(_) | DbError::Type { .. } => false,
        }
    }

    /// The statement may succeed if it is sent again later: the connection was lost, the
    /// database was busy or locked by another writer past the wait, or the server was short
    /// of resources or broke a deadlock. A statement the database refused is not.
    pub fn is_transient(&self) -> bool {
        if self.is_connection_lost() {
            return true;
        }
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => matches!(
                error.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            DbError::Postgres(error) => error.code().is_some_and(|code| {
                let code = code.code();
                code.starts_with("53") || matches!(code, "40001" | "40P01")
            }),
            _ => false,
        }
    }

    /// A uniqueness or other integrity constraint refused the statement.
    pub fn is_constraint(&self) -> bool {
        match self {
            DbError::Sqlite(rusqlite::Error::SqliteFailure(error, _)) => {
                error.code == rusqlite::ErrorCode::ConstraintViolation
            }
            DbError::Postgres(error) => error
                .code()
                .is_some_and(|code| code.code().starts_with("23")),
            _ => false,
        }
    }
}

/// One connection to the store's database. `&self` throughout: the SQLite connection is
/// used from one thread; the PostgreSQL one forwards each call to the thread that owns it.
pub trait Db: Send {
    fn dialect(&self) -> Dialect;
    /// Run one statement; the number of rows it changed.
    fn execute(&self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError>;
    /// Run one query; its rows.
    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, DbError>;
    /// Run statements without parameters (transaction control, migrations).
    fn batch(&self, sql: &str) -> Result<(), DbError>;
    /// Open the writer's transaction. `durable`: its commit must survive power loss once it
    /// returns; otherwise surviving a crash of our process is enough.
    fn begin(&self, durable: bool) -> Result<(), DbError>;
    /// Commit what [`Db::begin`] opened.
    fn commit(&self, durable: bool) -> Result<(), DbError>;
    /// The connection is known to be unusable (PostgreSQL's client saw it close). A SQLite
    /// file has no connection to lose.
    fn is_closed(&self) -> bool {
        false
    }
}

/// Agents per query of a statement that names them in an `IN (…)` list: a bounded number of
/// placeholders whatever the run's size.
const AGENTS_PER_QUERY: usize = 500;

/// `agents` in groups for a statement about a run and some of its agents: per group, the
/// placeholders of an `IN (…)` list (`?2, ?3, …`) and the parameters, the run id first.
pub(crate) fn agent_groups<'a>(
    run_id: &'a crate::ids::RunId,
    agents: &'a [crate::ids::AgentId],
) -> impl Iterator<Item = (String, Vec<SqlValue>)> + 'a {
    agents.chunks(AGENTS_PER_QUERY).map(move |group| {
        let placeholders: Vec<String> = (0..group.len()).map(|i| format!("?{}", i + 2)).collect();
        let mut params: Vec<SqlValue> = vec![run_id.into()];
        params.extend(group.iter().map(SqlValue::from));
        (placeholders.join(", "), params)
    })
}
