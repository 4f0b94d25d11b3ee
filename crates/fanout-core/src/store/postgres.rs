//! The shared backend: [`Db`] over a PostgreSQL connection, for a store that several
//! machines reach.
//!
//! **Why a thread per connection.** The synchronous `postgres` client runs its own tokio
//! runtime and panics when it is used from a thread that is already inside one — and the
//! store's readers are called from async code. So a reader's [`PostgresDb::connect`] starts a
//! thread that connects and then owns the client; every [`Db`] call is a message to it and a
//! blocking wait for the answer, exactly like a SQLite call blocks on its file. The writer
//! already has a thread of its own, outside any runtime: it connects there
//! ([`PostgresDb::connect_here`]) and calls its client directly, with no hop.
//!
//! **Durability by kind.** A batch with a state transition commits with the server's
//! `synchronous_commit` (durable on the server once the commit returns, as configured there);
//! a batch of queued records only sets `synchronous_commit = off` for its transaction, which
//! survives a crash of our process and can lose the last records if the server loses power —
//! the same bargain as SQLite's `synchronous = NORMAL`.
//!
//! **Migrations.** [`super::schema::POSTGRES_MIGRATIONS`], one transaction per version under
//! a transaction-scoped advisory lock, so two processes opening a fresh database at once
//! apply each step once. The version is the one row of `fanout_schema`.
//!
//! **A lost connection.** The writer's connection does not outlive a server restart or a
//! dropped network: the writer notices (a batch fails with a lost connection, or the client
//! says it closed) and connects again before its next batch ([`super::Store`]'s writer);
//! the batch that failed is reported to its callers, who may send it again.
//!
//! **No TLS yet.** The connection is plain TCP (or a Unix socket); a URL that asks for TLS
//! is refused when it is parsed ([`super::StoreError::TlsUnsupported`]).

use std::collections::HashMap;
use std::sync::mpsc;

use bytes::BytesMut;
use postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use postgres::{Client, NoTls, Row, Statement};

use super::db::{Db, DbError, Dialect, SqlValue};
use super::location::PostgresUrl;
use super::{StoreError, schema};

type Reply<T> = mpsc::SyncSender<Result<T, DbError>>;

enum Call {
    Execute(String, Vec<SqlValue>, Reply<u64>),
    Query(String, Vec<SqlValue>, Reply<Vec<Vec<SqlValue>>>),
    Batch(String, Reply<()>),
}

/// A PostgreSQL connection of the run store: owned by a thread of its own (a reader's), or
/// by the thread that made it, which must not be inside a tokio runtime (the writer's).
pub struct PostgresDb {
    conn: Owner,
}

enum Owner {
    Thread(mpsc::Sender<Call>),
    Here(Box<std::cell::RefCell<Conn>>),
}

/// The client and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    fn new(client: Client) -> Conn {
        Conn {
            client,
            statements: HashMap::new(),
        }
    }

    /// The statement for `sql` (written with SQLite's `?N`), prepared once per connection.
    fn prepared(&mut self, sql: &str) -> Result<Statement, DbError> {
        if let Some(stmt) = self.statements.get(sql) {
            return Ok(stmt.clone());
        }
        let stmt = self.client.prepare(&placeholders(sql))?;
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        let stmt = self.prepared(sql)?;
        Ok(self.client.execute(&stmt, &refs(params))?)
    }

    fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, DbError> {
        let stmt = self.prepared(sql)?;
        let rows = self.client.query(&stmt, &refs(params))?;
        rows.iter().map(values).collect()
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.client.batch_execute(sql)?)
    }
}

/// Key of the advisory lock migrations hold ("fanout" in ASCII).
const MIGRATION_LOCK: i64 = 0x66_61_6e_6f_75_74;

impl PostgresDb {
    /// Connect to `url` from this thread, which must not be inside a tokio runtime (the
    /// writer's thread); the connection stays here.
    pub fn connect_here(url: &PostgresUrl) -> Result<PostgresDb, StoreError> {
        let config = url.config()?;
        let user = config.get_user().unwrap_or("(default)").to_owned();
        match config.connect(NoTls) {
            Ok(client) => Ok(PostgresDb {
                conn: Owner::Here(Box::new(std::cell::RefCell::new(Conn::new(client)))),
            }),
            Err(error) => Err(StoreError::Connect {
                target: url.target().to_owned(),
                user,
                error,
            }),
        }
    }

    /// Connect to `url` on a new thread that owns the connection. Blocks until connected or
    /// refused; usable from any thread.
    pub fn connect(url: &PostgresUrl) -> Result<PostgresDb, StoreError> {
        let config = url.config()?;
        let user = config.get_user().unwrap_or("(default)").to_owned();
        let (calls, inbox) = mpsc::channel::<Call>();
        let (ready, connected) = mpsc::sync_channel::<Result<(), postgres::Error>>(1);
        std::thread::Builder::new()
            .name("fanout-store-pg".to_owned())
            .spawn(move || match config.connect(NoTls) {
                Ok(client) => {
                    let _ = ready.send(Ok(()));
                    serve(client, inbox);
                }
                Err(error) => {
                    let _ = ready.send(Err(error));
                }
            })
            .map_err(|source| StoreError::Spawn { source })?;
        match connected.recv() {
            Ok(Ok(())) => Ok(PostgresDb {
                conn: Owner::Thread(calls),
            }),
            Ok(Err(error)) => Err(StoreError::Connect {
                target: url.target().to_owned(),
                user,
                error,
            }),
            Err(_) => Err(StoreError::Open {
                store: url.to_string(),
                source: DbError::ConnectionGone,
            }),
        }
    }

    /// [`PostgresDb::connect_here`], then bring the database to [`schema::SCHEMA_VERSION`].
    pub fn open_here(url: &PostgresUrl) -> Result<PostgresDb, StoreError> {
        let db = PostgresDb::connect_here(url)?;
        migrate(&db, &url.to_string())?;
        Ok(db)
    }

    /// Run `here` on the connection owned by this thread, or send `call` to the thread
    /// that owns it.
    fn with<T>(
        &self,
        here: impl FnOnce(&mut Conn) -> Result<T, DbError>,
        call: impl FnOnce(Reply<T>) -> Call,
    ) -> Result<T, DbError> {
        match &self.conn {
            Owner::Here(conn) => here(&mut conn.borrow_mut()),
            Owner::Thread(calls) => {
                let (reply, answer) = mpsc::sync_channel(1);
                calls
                    .send(call(reply))
                    .map_err(|_| DbError::ConnectionGone)?;
                answer.recv().map_err(|_| DbError::ConnectionGone)?
            }
        }
    }
}

impl Db for PostgresDb {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn execute(&self, sql: &str, params: &[SqlValue]) -> Result<u64, DbError> {
        self.with(
            |conn| conn.execute(sql, params),
            |reply| Call::Execute(sql.to_owned(), params.to_vec(), reply),
        )
    }

    fn query(&self, sql: &str, params: &[SqlValue]) -> Result<Vec<Vec<SqlValue>>, DbError> {
        self.with(
            |conn| conn.query(sql, params),
            |reply| Call::Query(sql.to_owned(), params.to_vec(), reply),
        )
    }

    fn batch(&self, sql: &str) -> Result<(), DbError> {
        self.with(
            |conn| conn.batch(sql),
            |reply| Call::Batch(sql.to_owned(), reply),
        )
    }

    fn begin(&self, durable: bool) -> Result<(), DbError> {
        self.batch(if durable {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL synchronous_commit = off"
        })
    }

    fn commit(&self, _durable: bool) -> Result<(), DbError> {
        self.batch("COMMIT")
    }

    fn is_closed(&self) -> bool {
        match &self.conn {
            Owner::Here(conn) => conn.borrow().client.is_closed(),
            // A reader's connection thread answers ConnectionGone once it has stopped.
            Owner::Thread(_) => false,
        }
    }
}

/// The connection thread: answer calls until every handle is dropped.
fn serve(client: Client, inbox: mpsc::Receiver<Call>) {
    let mut conn = Conn::new(client);
    while let Ok(call) = inbox.recv() {
        match call {
            Call::Execute(sql, params, reply) => {
                let _ = reply.send(conn.execute(&sql, &params));
            }
            Call::Query(sql, params, reply) => {
                let _ = reply.send(conn.query(&sql, &params));
            }
            Call::Batch(sql, reply) => {
                let _ = reply.send(conn.batch(&sql));
            }
        }
    }
}

fn refs(params: &[SqlValue]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// `?1` → `$1`: the shared queries use SQLite's numbered placeholders.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

fn type_error(ty: &Type, detail: &str) -> DbError {
    DbError::Type {
        ty: ty.name().to_owned(),
        detail: detail.to_owned(),
    }
}

fn values(row: &Row) -> Result<Vec<SqlValue>, DbError> {
    let mut out = Vec::with_capacity(row.len());
    for (index, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(index)?.map(SqlValue::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(index)?
                .map(|n| SqlValue::Int(n.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(index)?
                .map(|n| SqlValue::Int(n.into()))
        } else if *ty == Type::FLOAT8 {
            row.try_get::<_, Option<f64>>(index)?.map(SqlValue::Real)
        } else if *ty == Type::FLOAT4 {
            row.try_get::<_, Option<f32>>(index)?
                .map(|n| SqlValue::Real(n.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(index)?
                .map(|b| SqlValue::Int(b.into()))
        } else if [Type::TEXT, Type::VARCHAR, Type::BPCHAR, Type::NAME].contains(ty) {
            row.try_get::<_, Option<String>>(index)?.map(SqlValue::Text)
        } else if *ty == Type::BYTEA {
            row.try_get::<_, Option<Vec<u8>>>(index)?
                .map(SqlValue::Bytes)
        } else {
            return Err(type_error(ty, column.name()));
        };
        out.push(value.unwrap_or(SqlValue::Null));
    }
    Ok(out)
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let is_text = [
            Type::TEXT,
            Type::VARCHAR,
            Type::BPCHAR,
            Type::NAME,
            Type::UNKNOWN,
        ];
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Int(n) if *ty == Type::INT8 => n.to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::INT2 => i16::try_from(*n)?.to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::FLOAT8 => (*n as f64).to_sql(ty, out),
            SqlValue::Int(n) if *ty == Type::BOOL => (*n != 0).to_sql(ty, out),
            SqlValue::Int(n) if is_text.contains(ty) => n.to_string().as_str().to_sql(ty, out),
            SqlValue::Real(n) if *ty == Type::FLOAT8 => n.to_sql(ty, out),
            SqlValue::Real(n) if *ty == Type::FLOAT4 => (*n as f32).to_sql(ty, out),
            SqlValue::Text(text) if is_text.contains(ty) => text.as_str().to_sql(ty, out),
            SqlValue::Bytes(bytes) if *ty == Type::BYTEA => bytes.as_slice().to_sql(ty, out),
            other => Err(Box::new(type_error(ty, &format!("{other:?}")))),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// Bring the database to [`schema::SCHEMA_VERSION`], one version per transaction. Idempotent;
/// refuses a newer database. The version it ends at.
pub fn migrate(db: &PostgresDb, store: &str) -> Result<i64, StoreError> {
    loop {
        let found = migrate_step(db, store)?;
        if found >= schema::SCHEMA_VERSION {
            return Ok(found);
        }
    }
}

/// Apply the next migration, if any, under the lock; the version afterwards.
fn migrate_step(db: &PostgresDb, store: &str) -> Result<i64, StoreError> {
    let mut version = 0;
    let result = (|| -> Result<Option<i64>, DbError> {
        db.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({MIGRATION_LOCK});
             CREATE TABLE IF NOT EXISTS fanout_schema (version BIGINT NOT NULL)"
        ))?;
        let rows = db.query("SELECT version FROM fanout_schema", &[])?;
        let found = match rows.first().and_then(|row| row.first()) {
            Some(SqlValue::Int(n)) => *n,
            _ => {
                db.execute("INSERT INTO fanout_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        version = found;
        if found >= schema::SCHEMA_VERSION {
            db.batch("COMMIT")?;
            return Ok(Some(found));
        }
        version = found + 1;
        let index = usize::try_from(found.max(0)).unwrap_or(usize::MAX);
        let sql = schema::POSTGRES_MIGRATIONS
            .get(index)
            .copied()
            .unwrap_or("");
        db.batch(sql)?;
        db.execute(
            "UPDATE fanout_schema SET version = ?1",
            &[SqlValue::Int(version)],
        )?;
        db.batch("COMMIT")?;
        Ok(None)
    })();
    match result {
        Ok(Some(found)) if found > schema::SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            store: store.to_owned(),
            found,
            supported: schema::SCHEMA_VERSION,
        }),
        Ok(Some(found)) => Ok(found),
        Ok(None) => Ok(version),
        Err(source) => {
            let _ = db.batch("ROLLBACK");
            Err(StoreError::Migrate {
                store: store.to_owned(),
                version,
                source,
            })
        }
    }
}

/// The schema version of the database (0 when it was never migrated).
pub fn schema_version(db: &PostgresDb, store: &str) -> Result<i64, StoreError> {
    let failed = |source| StoreError::Database {
        store: store.to_owned(),
        what: "reading the schema version",
        source,
    };
    let exists = db
        .query("SELECT to_regclass('fanout_schema') IS NOT NULL", &[])
        .map_err(failed)?;
    if !matches!(
        exists.first().and_then(|r| r.first()),
        Some(SqlValue::Int(1))
    ) {
        return Ok(0);
    }
    let rows = db
        .query("SELECT version FROM fanout_schema", &[])
        .map_err(failed)?;
    Ok(match rows.first().and_then(|row| row.first()) {
        Some(SqlValue::Int(n)) => *n,
        _ => 0,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::placeholders;

    #[test]
    fn numbered_placeholders_become_dollars() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE x = ?1 AND y = ?12 AND z = '?'"),
            "SELECT a FROM t WHERE x = $1 AND y = $12 AND z = '?'"
        );
    }
}
