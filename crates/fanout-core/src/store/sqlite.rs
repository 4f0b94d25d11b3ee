//! The embedded backend: [`Db`] over a `rusqlite::Connection` in WAL mode.
//!
//! Durability by kind is `PRAGMA synchronous`: FULL around a batch that holds a state
//! transition, NORMAL otherwise (see the module docs of [`super`]).

use std::path::Path;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::db::{Db, DbError, Dialect, SqlValue};
use super::{StoreError, schema};

impl rusqlite::types::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            SqlValue::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            SqlValue::Real(n) => ToSqlOutput::Borrowed(ValueRef::Real(*n)),
            SqlValue::Text(text) => ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
            SqlValue::Bytes(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
        })
    }
}

fn value(raw: ValueRef<'_>) -> SqlValue {
    match raw {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(n) => SqlValue::Int(n),
        ValueRef::Real(n) => SqlValue::Real(n),
        ValueRef::Text(bytes) => SqlValue::Text(String::from_utf8_lossy(bytes).into_owned()),
        ValueRef::Blob(bytes) => SqlValue::Bytes(bytes.to_vec()),
    }
}

/// A SQLite connection of the run store.
pub struct SqliteDb {
    conn: Connection,
}

impl SqliteDb {
    /// Open (creating) the file for the writer, set our pragmas, and migrate it.
    pub fn open_writer(path: &Path) -> Result<SqliteDb, StoreError> {
        let mut conn = Connection::open(path).map_err(|source| StoreError::Open {
            store: path.display().to_string(),
            source: source.into(),
        })?;
        schema::configure(&mut conn, path)?;
        schema::migrate(&mut conn, path)?;
        Ok(SqliteDb { conn })
    }

    /// Open an existing file for reading; an older schema is migrated, a newer one refused.
    pub fn open_reader(path: &Path) -> Result<SqliteDb, StoreError> {
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
                store: path.display().to_string(),
                source: source.into(),
            })?;
        schema::configure(&mut conn, path)?;
        if schema::user_version(&conn, path)? != schema::SCHEMA_VERSION {
            schema::migrate(&mut conn, path)?;
        }
        Ok(SqliteDb { conn })
    }
}

impl Db for SqliteDb {
    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    fn execute(&self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let changed = stmt.execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, DbError> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let columns = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(columns);
            for index in 0..columns {
                values.push(value(row.get_ref(index)?));
            }
            out.push(values);
        }
        Ok(out)
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(DbError::from)
    }

    fn begin(&self, durable: bool) -> Result<(), DbError> {
        // `synchronous` cannot change inside a transaction, so it is set around it.
        if durable {
            self.conn.execute_batch("PRAGMA synchronous = FULL")?;
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        Ok(())
    }

    fn commit(&self, durable: bool) -> Result<(), DbError> {
        let committed = self.conn.execute_batch("COMMIT");
        if durable {
            // Best effort: a failure here leaves FULL on, which is only slower.
            let _ = self.conn.execute_batch("PRAGMA synchronous = NORMAL");
        }
        committed.map_err(DbError::from)
    }
}
