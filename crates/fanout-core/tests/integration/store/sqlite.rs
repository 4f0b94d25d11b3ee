//! What only the SQLite backend has: WAL, `PRAGMA user_version` migrations on a file, a
//! missing file, and ten thousand agents through one writer.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentStatus, SqlValue, Store, StoreError, StoreReader, ToolCallRecord, schema,
};

use super::{at, finish, new_run, start};

fn db(dir: &Path) -> std::path::PathBuf {
    dir.join(".fanout").join("fanout.db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agents_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.create_run(new_run("big", 0)).await.unwrap();
    // As a run would: up to 1,000 agents at once, each awaiting its durable start and finish.
    let began = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(1000));
    let mut tasks = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        let store = store.clone();
        let permit = limit.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let agent = format!("agent-{i:05}");
            let mode = if i % 3 == 0 {
                Mode::Default
            } else {
                Mode::Fast
            };
            store.start_agent(start("big", &agent, mode)).await.unwrap();
            store
                .tool_call(ToolCallRecord {
                    run_id: "big".into(),
                    agent_id: agent.clone().into(),
                    attempt: 1,
                    seq: 1,
                    tool: "edit_file".to_owned(),
                    target: Some(format!("src/{agent}.rs")),
                    ok: true,
                    outcome: None,
                    duration_ms: None,
                    bytes: None,
                    paths: Vec::new(),
                    error: None,
                    started_at: at(11),
                    ended_at: Some(at(11)),
                })
                .await
                .unwrap();
            store
                .finish_agent(finish("big", &agent, AgentStatus::Success))
                .await
                .unwrap();
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    store.flush().await.unwrap();
    let written = began.elapsed();
    let stats = store.close().await.unwrap();
    assert_eq!(stats.failed_queued_ops, 0, "{stats:?}");

    let began = Instant::now();
    let reader = StoreReader::open(&db(dir.path())).unwrap();
    let detail = reader.run(&"big".into()).unwrap().unwrap();
    let read = began.elapsed();
    assert_eq!(detail.agent_runs.len(), 10_000);
    assert_eq!(detail.summary.agents.success, 10_000);
    assert_eq!(detail.summary.run.total_tokens, 10_000 * 1234);
    assert!(
        detail
            .agent_runs
            .iter()
            .all(|a| a.status == Some(AgentStatus::Success))
    );
    eprintln!(
        "10,000 agents (30,000 writes) in {written:?} ({} batches, largest {}); read back in {read:?}",
        stats.batches, stats.largest_batch
    );
}

#[tokio::test]
async fn reopening_migrates_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    let store = Store::open(&path).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store.close().await.unwrap();
    for _ in 0..3 {
        let store = Store::open(&path).unwrap();
        store.close().await.unwrap();
    }
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(
        schema::migrate(&mut conn, &path).unwrap(),
        schema::SCHEMA_VERSION
    );
    let reader = StoreReader::open(&path).unwrap();
    assert_eq!(reader.runs().unwrap().len(), 1);
}

#[tokio::test]
async fn a_missing_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = StoreReader::open_in_repo(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
}

#[tokio::test]
async fn the_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().unwrap();
    Store::open_in_repo(dir.path())
        .unwrap()
        .close()
        .await
        .unwrap();
    let reader = StoreReader::open(&db(dir.path())).unwrap();
    assert_eq!(
        reader.query_raw("PRAGMA journal_mode", &[]).unwrap(),
        [vec![SqlValue::Text("wal".to_owned())]]
    );
}
