//! What can go wrong in the run store, with the file and the step that failed.

use std::path::PathBuf;

use crate::ids::{AgentId, RunId};

/// A run store failure. Every variant names the database (or log) file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create the directory {}: {source}", .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the run store {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "no run store at {}: nothing has run in this repository yet (or `--repo` points elsewhere)",
        .path.display()
    )]
    Missing { path: PathBuf },
    #[error(
        "the run store {} has schema version {found}, newer than this fanout understands (up to {supported}); upgrade fanout to read it",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot migrate the run store {} to schema version {version}: {source}", .path.display())]
    Migrate {
        path: PathBuf,
        version: i64,
        source: rusqlite::Error,
    },
    #[error("run store {}: {what} failed: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        what: &'static str,
        source: rusqlite::Error,
    },
    #[error("run store {}: committing a batch of {ops} write(s) failed: {message}", .path.display())]
    Commit {
        path: PathBuf,
        ops: usize,
        message: String,
    },
    #[error("run store {}: column {column} holds {value:?}, which this fanout does not understand", .path.display())]
    Corrupt {
        path: PathBuf,
        column: &'static str,
        value: String,
    },
    #[error("the run store writer has stopped; {what} was not recorded")]
    WriterClosed { what: &'static str },
    #[error("cannot start the run store writer thread: {source}")]
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
