//! The run store against a real SQLite file: the seed's `agent_runs` columns, the single
//! writer under load, durability of awaited writes, migrations, and the JSON-lines log.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentFinish, AgentStart, AgentStatus, CheckpointRecord, DenialRecord, EventRecord, NewRun,
    RunStatus, Store, StoreError, StoreReader, ToolCallRecord, schema,
};
use serde_json::json;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_780_000_000 + seconds)
}

fn new_run(run_id: &str, seconds: u64) -> NewRun {
    NewRun {
        run_id: run_id.into(),
        workflow: "auth-refactor".to_owned(),
        config_path: Some("claude-workflows.yaml".into()),
        plan_hash: Some("sha256:abc".to_owned()),
        repo: None,
        status: RunStatus::Running,
        started_at: at(seconds),
        base_commit: Some("0123456789abcdef0123456789abcdef01234567".to_owned()),
        agents_planned: 3,
        simulated: false,
    }
}

fn start(run_id: &str, agent_id: &str, mode: Mode) -> AgentStart {
    AgentStart {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        attempt: 1,
        task_description: format!("edit {agent_id}"),
        mode,
        model: Some("claude-opus-4-8".to_owned()),
        escalated: false,
        started_at: at(10),
    }
}

fn finish(run_id: &str, agent_id: &str, status: AgentStatus) -> AgentFinish {
    AgentFinish {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        attempt: 1,
        status,
        files_accessed: vec![format!("src/{agent_id}.rs")],
        tools_called: vec!["read_file".to_owned(), "edit_file".to_owned()],
        input_tokens: 1000,
        output_tokens: 234,
        cost_usd: 0.01,
        cache_read_tokens: 600,
        cache_write_tokens: 100,
        cache_saved_usd: 0.001,
        error: None,
        checkpoint: None,
        ended_at: at(12),
    }
}

fn db(dir: &Path) -> std::path::PathBuf {
    dir.join(".fanout").join("fanout.db")
}

#[tokio::test]
async fn agent_runs_has_the_seed_columns_with_the_seed_types() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.close().await.unwrap();
    let reader = StoreReader::open(&db(dir.path())).unwrap();
    let mut stmt = reader
        .connection()
        .prepare("SELECT name, type FROM pragma_table_info('agent_runs') ORDER BY cid")
        .unwrap();
    let columns: Vec<(String, String)> = stmt
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let seed = [
        ("run_id", "TEXT"),
        ("agent_id", "TEXT"),
        ("task_description", "TEXT"),
        ("files_accessed", "TEXT"),
        ("tools_called", "TEXT"),
        ("status", "TEXT"),
        ("token_count", "INTEGER"),
        ("mode", "TEXT"),
        ("timestamp_start", "DATETIME"),
        ("timestamp_end", "DATETIME"),
    ];
    for (index, (name, kind)) in seed.iter().enumerate() {
        assert_eq!(
            (columns[index].0.as_str(), columns[index].1.as_str()),
            (*name, *kind),
            "column {index}"
        );
    }
    // Our additions come after the seed's ten.
    let names: Vec<&str> = columns.iter().map(|c| c.0.as_str()).collect();
    for extra in [
        "attempt",
        "model",
        "cost_usd",
        "escalated",
        "error",
        "checkpoint",
        "cache_read_tokens",
        "cache_write_tokens",
        "cache_saved_usd",
    ] {
        assert!(names.contains(&extra), "{extra} missing from {names:?}");
    }
    // WAL is on.
    let mode: String = reader
        .connection()
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    // The seed's values, as stored.
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.create_run(new_run("r1", 0)).await.unwrap();
    store
        .start_agent(start("r1", "a1", Mode::Fast))
        .await
        .unwrap();
    store
        .finish_agent(finish("r1", "a1", AgentStatus::Success))
        .await
        .unwrap();
    store.close().await.unwrap();
    let row: (
        String,
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
        String,
        String,
    ) = reader
        .connection()
        .query_row(
            "SELECT run_id, agent_id, task_description, files_accessed, tools_called, status,
                        token_count, mode, timestamp_start, timestamp_end FROM agent_runs",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(row.0, "r1");
    assert_eq!(row.1, "a1");
    assert_eq!(row.2, "edit a1");
    assert_eq!(row.3, r#"["src/a1.rs"]"#);
    assert_eq!(row.4, r#"["read_file","edit_file"]"#);
    assert_eq!(row.5, "success");
    assert_eq!(row.6, 1234);
    assert_eq!(row.7, "fast");
    assert_eq!(row.8, "2026-05-28T20:26:50.000Z");
    assert_eq!(row.9, "2026-05-28T20:26:52.000Z");
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
async fn an_awaited_finish_is_visible_to_a_fresh_connection_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store
        .start_agent(start("r", "a", Mode::Default))
        .await
        .unwrap();
    store
        .finish_agent(finish("r", "a", AgentStatus::Failure))
        .await
        .unwrap();
    // No flush, no close: the writer is still running.
    let reader = StoreReader::open(&db(dir.path())).unwrap();
    let agent = reader.agent(&"r".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.attempts[0].status, Some(AgentStatus::Failure));
    assert_eq!(agent.attempts[0].duration(), Some(Duration::from_secs(2)));
    // Finishing again the same way is a no-op; another way is refused.
    store
        .finish_agent(finish("r", "a", AgentStatus::Failure))
        .await
        .unwrap();
    let err = store
        .finish_agent(finish("r", "a", AgentStatus::Success))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AgentFinished { .. }), "{err}");
    let err = store
        .finish_agent(finish("r", "ghost", AgentStatus::Success))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent { .. }), "{err}");
    // Totals counted once.
    let run = reader.run_summary(&"r".into()).unwrap().unwrap();
    assert_eq!(run.run.total_tokens, 1234);
    assert_eq!(run.agents.failure, 1);
    store.close().await.unwrap();
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
async fn a_database_from_a_newer_fanout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = db(dir.path());
    Store::open(&path).unwrap().close().await.unwrap();
    let future = schema::SCHEMA_VERSION + 1;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {future}"))
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => {
            assert_eq!((*found, *supported), (future, schema::SCHEMA_VERSION));
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("newer than this fanout"), "{err}");
    assert!(matches!(
        StoreReader::open(&path).unwrap_err(),
        StoreError::SchemaTooNew { .. }
    ));
}

#[tokio::test]
async fn a_missing_store_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = StoreReader::open_in_repo(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.create_run(new_run("c", 0)).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let agent = format!("a{i}");
            barrier.wait().await;
            store
                .start_agent(start("c", &agent, Mode::Fast))
                .await
                .unwrap();
            for seq in 1..=3 {
                store
                    .event(EventRecord {
                        run_id: "c".into(),
                        agent_id: Some(agent.clone().into()),
                        kind: "turn".to_owned(),
                        payload: json!({ "turn": seq }),
                        at: at(11),
                    })
                    .await
                    .unwrap();
            }
            store
                .denial(DenialRecord {
                    run_id: "c".into(),
                    agent_id: agent.clone().into(),
                    attempt: 1,
                    tool: "write_file".to_owned(),
                    target: Some("/etc/passwd".to_owned()),
                    reason: "outside the agent's scope".to_owned(),
                    at: at(11),
                })
                .await
                .unwrap();
            store
                .finish_agent(finish("c", &agent, AgentStatus::Success))
                .await
                .unwrap();
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = store.close().await.unwrap();
    assert_eq!(stats.failed_queued_ops, 0);
    let reader = StoreReader::open(&db(dir.path())).unwrap();
    let run = reader.run(&"c".into()).unwrap().unwrap();
    assert_eq!(run.summary.agents.success, 1000);
    assert_eq!(run.summary.run.total_tokens, 1000 * 1234);
    let events = reader.events(&"c".into()).unwrap();
    assert_eq!(events.len(), 3000);
    // Numbered 1..=3000 with no gap or repeat.
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    let denials: i64 = reader
        .connection()
        .query_row("SELECT COUNT(*) FROM denials WHERE run_id = 'c'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(denials, 1000);
    assert!(stats.largest_batch > 1, "writes were batched: {stats:?}");
}

#[tokio::test]
async fn queries_answer_what_the_cli_shows() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.create_run(new_run("old", 0)).await.unwrap();
    store.create_run(new_run("new", 100)).await.unwrap();
    assert!(matches!(
        store.create_run(new_run("new", 100)).await.unwrap_err(),
        StoreError::RunExists { .. }
    ));
    for (agent, status) in [
        ("a", Some(AgentStatus::Success)),
        ("b", Some(AgentStatus::Rollback)),
        ("c", None),
    ] {
        store
            .start_agent(start("new", agent, Mode::Fast))
            .await
            .unwrap();
        if let Some(status) = status {
            store
                .finish_agent(finish("new", agent, status))
                .await
                .unwrap();
        }
    }
    store
        .tool_call(ToolCallRecord {
            run_id: "new".into(),
            agent_id: "a".into(),
            attempt: 1,
            seq: 1,
            tool: "read_file".to_owned(),
            target: Some("src/a.rs".to_owned()),
            ok: true,
            outcome: None,
            duration_ms: None,
            bytes: None,
            paths: Vec::new(),
            error: None,
            started_at: at(10),
            ended_at: Some(at(11)),
        })
        .await
        .unwrap();
    store
        .record_checkpoint(CheckpointRecord {
            run_id: "new".into(),
            seq: 0,
            commit_id: "c0".to_owned(),
            ref_name: "refs/fanout/new/checkpoints/0".to_owned(),
            label: "base".to_owned(),
            completed_agents: 0,
            at: at(100),
        })
        .await
        .unwrap();
    store
        .set_run_status(&"new".into(), RunStatus::Partial, Some(at(200)), None)
        .await
        .unwrap();
    assert!(matches!(
        store
            .set_run_status(&"ghost".into(), RunStatus::Failed, None, None)
            .await
            .unwrap_err(),
        StoreError::UnknownRun { .. }
    ));
    store.close().await.unwrap();

    let reader = StoreReader::open_in_repo(dir.path()).unwrap();
    let runs = reader.runs().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run.run_id.as_str()).collect();
    assert_eq!(ids, ["new", "old"], "newest first");
    assert_eq!(runs[0].run.status, RunStatus::Partial);
    assert_eq!(
        (
            runs[0].agents.success,
            runs[0].agents.rollback,
            runs[0].agents.running
        ),
        (1, 1, 1)
    );
    // Two finished attempts' cache tokens and savings, summed; the share is of all input.
    assert_eq!(
        (
            runs[0].agents.input_tokens,
            runs[0].agents.cache_read_tokens,
            runs[0].agents.cache_write_tokens
        ),
        (2000, 1200, 200)
    );
    assert!((runs[0].agents.cache_saved - 0.002).abs() < 1e-12);
    assert!((runs[0].agents.cached_share() - 0.6).abs() < 1e-12);
    let detail = reader.run(&"new".into()).unwrap().unwrap();
    assert_eq!(detail.checkpoints.len(), 1);
    let agent = reader.agent(&"new".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.tool_calls.len(), 1);
    assert_eq!(agent.tool_calls[0].duration(), Some(Duration::from_secs(1)));
    assert!(
        reader
            .agent(&"new".into(), &"zzz".into())
            .unwrap()
            .is_none()
    );
    assert!(reader.run(&"zzz".into()).unwrap().is_none());
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["run_id"], "new");
    assert_eq!(json["agents"]["success"], 1);
    assert_eq!(json["agent_runs"][0]["mode"], "fast");
    assert_eq!(json["agent_runs"][0]["cache_read_tokens"], 600);
    assert_eq!(json["agents"]["cache_read_tokens"], 1200);
}

#[tokio::test]
async fn the_log_gets_every_record_as_a_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let logging = fanout_core::config::Logging {
        level: fanout_core::config::LogLevel::Verbose,
        destination: dir
            .path()
            .join("logs/workflow-run-{timestamp}.json")
            .display()
            .to_string(),
    };
    let log_path = logging.destination_at(at(0));
    assert!(log_path.to_string_lossy().contains("2026-05-28T20-26-40Z"));
    let store = Store::open_in_repo(dir.path()).unwrap();
    store.attach_log(log_path.clone()).await.unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store
        .start_agent(start("r", "a", Mode::Fast))
        .await
        .unwrap();
    for turn in 0..5 {
        store
            .event(EventRecord {
                run_id: "r".into(),
                agent_id: Some("a".into()),
                kind: "turn".to_owned(),
                payload: json!({ "turn": turn }),
                at: at(11),
            })
            .await
            .unwrap();
    }
    store
        .finish_agent(finish("r", "a", AgentStatus::Success))
        .await
        .unwrap();
    let stats = store.close().await.unwrap();
    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 8, "{text}");
    assert_eq!(stats.log_lines, 8);
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "run_created",
            "agent_started",
            "turn",
            "turn",
            "turn",
            "turn",
            "turn",
            "agent_finished"
        ]
    );
    assert_eq!(lines[2]["seq"], 1);
    assert_eq!(lines[6]["payload"]["turn"], 4);
    assert!(lines.iter().all(|l| l["timestamp"].is_string()));
}
