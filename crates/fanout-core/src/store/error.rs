//! What can go wrong in the run store, with the store (a file, or a PostgreSQL URL without
//! its password) and the step that failed.

use std::path::PathBuf;

use super::db::DbError;
use crate::ids::{AgentId, RunId};

/// A run store failure. Every variant names the store (or log file) it concerns; a
/// PostgreSQL store is named by its URL without the password.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the run store {store}: {source}")]
    Open { store: String, source: DbError },
    #[error(
        "cannot reach the PostgreSQL run store at {target} (user {user}): {}",
        chain_text(.error)
    )]
    Connect {
        /// `host:port/dbname`.
        target: String,
        user: String,
        /// Said in the message with its causes, not chained: the client's own message is
        /// only "error connecting to server", and printing the chain repeated it.
        error: postgres::Error,
    },
    #[error(
        "run {run_id}: no free event number after {tries} tries (other writers of the run took each)"
    )]
    EventNumbering { run_id: RunId, tries: usize },
    #[error("{location} is not a run store location: {reason}")]
    InvalidLocation { location: String, reason: String },
    #[error(
        "{location}: sslmode={sslmode} asks for TLS, which fanout's PostgreSQL store does not support yet; use sslmode=disable on a trusted network (or a local tunnel)"
    )]
    TlsUnsupported { location: String, sslmode: String },
    #[error(
        "no run store at {}: nothing has run in this repository yet (or `--repo` points elsewhere)",
        .path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the run store {store} has schema version {found}, newer than this fanout understands (up to {supported}); upgrade fanout to read it"
    )]
    SchemaTooNew {
        store: String,
        found: i64,
        supported: i64,
    },
    #[error("cannot migrate the run store {store} to schema version {version}: {source}")]
    Migrate {
        store: String,
        version: i64,
        source: DbError,
    },
    #[error("run store {store}: {what} failed: {source}")]
    Database {
        store: String,
        what: &'static str,
        source: DbError,
    },
    #[error("run store {store}: committing a batch of {ops} write(s) failed: {message}")]
    Commit {
        store: String,
        ops: usize,
        message: String,
    },
    #[error(
        "run store {store}: column {column} holds {value:?}, which this fanout does not understand"
    )]
    Corrupt {
        store: String,
        column: &'static str,
        value: String,
    },
    #[error("run store {store}: the connection was lost and cannot be made again: {message}")]
    Unreachable { store: String, message: String },
    #[error("the run store writer has stopped; {what} was not recorded")]
    WriterClosed { what: &'static str },
    #[error("cannot start a run store thread: {source}")]
    Spawn { source: std::io::Error },
    #[error("run {run_id} is not in the run store")]
    UnknownRun { run_id: RunId },
    #[error("run {run_id} is already in the run store")]
    RunExists { run_id: RunId },
    #[error(
        "agent {agent_id} (attempt {attempt}) of run {run_id} was never started in the run store"
    )]
    UnknownAgent {
        run_id: RunId,
        agent_id: AgentId,
        attempt: u32,
    },
    #[error(
        "agent {agent_id} (attempt {attempt}) of run {run_id} is already recorded; a new try needs a new attempt number"
    )]
    AgentExists {
        run_id: RunId,
        agent_id: AgentId,
        attempt: u32,
    },
    #[error(
        "agent {agent_id} (attempt {attempt}) of run {run_id} already finished as {recorded}; it cannot finish again as {requested}"
    )]
    AgentFinished {
        run_id: RunId,
        agent_id: AgentId,
        attempt: u32,
        recorded: String,
        requested: String,
    },
    #[error(
        "the lease on agent {agent_id} (attempt {attempt}) of run {run_id} is no longer this worker's: it expired and another worker may have taken the unit"
    )]
    LeaseLost {
        run_id: RunId,
        agent_id: AgentId,
        attempt: u32,
    },
    #[error("cannot write the log {}: {source}", .path.display())]
    Log {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

impl StoreError {
    /// The operation may succeed if it is tried again later: the store could not be reached,
    /// was busy, or lost its connection while the operation was on its way (the operation may
    /// then have been applied, or not). An answer the store gave (a lost lease, an unknown
    /// run, a record already there) is never transient.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. }
            | StoreError::Unreachable { .. }
            | StoreError::Commit { .. } => true,
            StoreError::Open { source, .. }
            | StoreError::Database { source, .. }
            | StoreError::Migrate { source, .. } => source.is_transient(),
            _ => false,
        }
    }
}

/// An error and its causes on one line, each said once (`a: b: c`).
fn chain_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}
