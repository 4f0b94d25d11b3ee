//! The store's conformance suite: each behaviour is one function of a [`Fresh`] store, run
//! once per backend by [`conformance!`]. Every reader query the CLI, the report and a resume
//! use is asserted here on both.

use std::sync::Arc;
use std::time::Duration;

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentStatus, CheckpointRecord, DenialRecord, Dialect, EventRecord, ModelCall, RunStatus,
    SqlValue, Store, StoreError, StoreLocation, StoreReader, ToolCallRecord, schema,
};
use serde_json::json;

use super::shared::{
    a_runs_budget_is_reserved_at_each_lease_and_settled_at_each_commit,
    shared_buckets_take_all_or_nothing_and_are_corrected_after_the_answer,
    the_first_unit_starts_on_an_over_estimate_and_a_run_without_budget_is_free,
    the_lowest_recently_reported_learned_limit_wins,
    workers_meeting_a_spent_budget_together_skip_the_rest_once,
};
use super::units::{
    a_batch_of_commits_is_numbered_and_counted_once_each,
    a_large_plan_is_enqueued_whole_and_in_order, a_late_commit_is_refused_and_writes_nothing,
    a_lease_s_further_attempts_never_collide_with_a_takeover,
    a_shared_bucket_holds_every_taker_to_its_rate, a_unit_waits_for_its_dependencies_to_commit,
    a_worker_leases_only_the_kinds_it_can_run, an_expired_lease_is_taken_over_as_a_new_attempt,
    commits_are_numbered_in_commit_order, only_runs_with_a_recorded_plan_are_leased,
    two_workers_never_hold_one_unit,
};
use super::{Fresh, at, finish, new_run, start};

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Fresh::sqlite()).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(fresh) = super::Fresh::postgres() {
                        super::$name(fresh).await;
                    }
                }
            )*
        }
    };
}

conformance!(
    tables_and_columns_are_the_same,
    two_workers_never_hold_one_unit,
    a_unit_waits_for_its_dependencies_to_commit,
    an_expired_lease_is_taken_over_as_a_new_attempt,
    a_lease_s_further_attempts_never_collide_with_a_takeover,
    a_late_commit_is_refused_and_writes_nothing,
    commits_are_numbered_in_commit_order,
    a_batch_of_commits_is_numbered_and_counted_once_each,
    a_large_plan_is_enqueued_whole_and_in_order,
    only_runs_with_a_recorded_plan_are_leased,
    a_worker_leases_only_the_kinds_it_can_run,
    a_shared_bucket_holds_every_taker_to_its_rate,
    shared_buckets_take_all_or_nothing_and_are_corrected_after_the_answer,
    the_lowest_recently_reported_learned_limit_wins,
    a_runs_budget_is_reserved_at_each_lease_and_settled_at_each_commit,
    the_first_unit_starts_on_an_over_estimate_and_a_run_without_budget_is_free,
    workers_meeting_a_spent_budget_together_skip_the_rest_once,
    the_seed_columns_hold_the_seed_values,
    an_awaited_finish_is_visible_at_once,
    migrations_run_once_and_a_newer_schema_is_refused,
    a_thousand_concurrent_writers_lose_nothing,
    queries_answer_what_the_cli_shows,
    run_status_transitions,
    spent_and_observed_usage,
    a_failing_record_does_not_sink_its_batch,
    readers_read_while_the_writer_writes,
    two_runs_share_a_store,
    writers_of_one_run_number_its_events_without_losing_any,
    the_log_gets_every_record_as_a_json_line,
);

fn texts(rows: Vec<Vec<SqlValue>>) -> Vec<String> {
    rows.into_iter()
        .map(|row| match row.into_iter().next() {
            Some(SqlValue::Text(text)) => text,
            other => panic!("expected text, got {other:?}"),
        })
        .collect()
}

fn int(rows: Vec<Vec<SqlValue>>) -> i64 {
    match rows.first().and_then(|row| row.first()) {
        Some(SqlValue::Int(n)) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

/// Column names of `table` in order, and their declared types.
fn columns(reader: &StoreReader, table: &str) -> Vec<(String, String)> {
    let sql = match reader.dialect() {
        Dialect::Sqlite => "SELECT name, type FROM pragma_table_info(?1) ORDER BY cid",
        Dialect::Postgres => {
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1
             ORDER BY ordinal_position"
        }
    };
    reader
        .query_raw(sql, &[table.into()])
        .unwrap()
        .into_iter()
        .map(|row| match &row[..] {
            [SqlValue::Text(name), SqlValue::Text(kind)] => (name.clone(), kind.clone()),
            other => panic!("{other:?}"),
        })
        .collect()
}

fn schema_version(fresh: &Fresh, reader: &StoreReader) -> i64 {
    match &fresh.location {
        StoreLocation::Sqlite(_) => int(reader.query_raw("PRAGMA user_version", &[]).unwrap()),
        StoreLocation::Postgres(_) => int(reader
            .query_raw("SELECT version FROM fanout_schema", &[])
            .unwrap()),
    }
}

async fn tables_and_columns_are_the_same(fresh: Fresh) {
    Store::open_at(&fresh.location)
        .unwrap()
        .close()
        .await
        .unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    assert_eq!(schema_version(&fresh, &reader), schema::SCHEMA_VERSION);
    let expected: &[(&str, &[&str])] = &[
        (
            "runs",
            &[
                "run_id",
                "workflow",
                "config_path",
                "plan_hash",
                "repo",
                "status",
                "started_at",
                "ended_at",
                "base_commit",
                "agents_planned",
                "total_tokens",
                "total_input_tokens",
                "total_output_tokens",
                "total_cost_usd",
                "error",
                "simulated",
            ],
        ),
        (
            "agent_runs",
            &[
                // The seed's ten, first, in the seed's order.
                "run_id",
                "agent_id",
                "task_description",
                "files_accessed",
                "tools_called",
                "status",
                "token_count",
                "mode",
                "timestamp_start",
                "timestamp_end",
                "attempt",
                "model",
                "input_tokens",
                "output_tokens",
                "cost_usd",
                "escalated",
                "error",
                "checkpoint",
                "cache_read_tokens",
                "cache_write_tokens",
                "cache_saved_usd",
            ],
        ),
        (
            "tool_calls",
            &[
                "run_id",
                "agent_id",
                "attempt",
                "seq",
                "tool",
                "target",
                "ok",
                "error",
                "started_at",
                "ended_at",
                "outcome",
                "duration_ms",
                "bytes",
                "paths",
            ],
        ),
        (
            "events",
            &["run_id", "seq", "at", "agent_id", "kind", "payload"],
        ),
        (
            "denials",
            &[
                "id", "run_id", "agent_id", "attempt", "tool", "target", "reason", "at",
            ],
        ),
        (
            "checkpoints",
            &[
                "run_id",
                "seq",
                "commit_id",
                "ref_name",
                "label",
                "completed_agents",
                "at",
            ],
        ),
        ("preimages", &["run_id", "agent_id", "manifest"]),
        (
            "run_plans",
            &[
                "run_id",
                "plan_hash",
                "plan",
                "workflow",
                "workflow_path",
                "base_commit",
                "base_bundle",
                "commits",
                "created_at",
                "max_dollars",
                "reserved_usd",
                "spent_usd",
                "estimated_done_usd",
            ],
        ),
        (
            "units",
            &[
                "run_id",
                "agent_id",
                "enqueued_seq",
                "state",
                "lease_owner",
                "lease_expires_at",
                "attempt",
                "commit_seq",
                "committed_at",
                "patch",
                "outcome",
                "applied_at",
                "kind",
                "input",
                "estimated_usd",
                "reserved_usd",
                "skip_reason",
            ],
        ),
        ("unit_dependencies", &["run_id", "agent_id", "depends_on"]),
        ("rate_buckets", &["name", "level", "updated_ms"]),
        (
            "learned_limits",
            &[
                "api",
                "kind",
                "limit_per_minute",
                "reported_ms",
                "reported_by",
            ],
        ),
    ];
    for (table, names) in expected {
        let found = columns(&reader, table);
        let found_names: Vec<&str> = found.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(&found_names, names, "{table}");
    }
    // The seed's declared types: TEXT and INTEGER (DATETIME for the two timestamps) in
    // SQLite; text and bigint in PostgreSQL, where timestamps stay RFC 3339 text.
    let seed = columns(&reader, "agent_runs");
    let kinds: Vec<&str> = seed[..10].iter().map(|c| c.1.as_str()).collect();
    match reader.dialect() {
        Dialect::Sqlite => assert_eq!(
            kinds,
            [
                "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "TEXT", "INTEGER", "TEXT", "DATETIME",
                "DATETIME"
            ]
        ),
        Dialect::Postgres => assert_eq!(
            kinds,
            [
                "text", "text", "text", "text", "text", "text", "bigint", "text", "text", "text"
            ]
        ),
    }
}

async fn the_seed_columns_hold_the_seed_values(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
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
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let rows = reader
        .query_raw(
            "SELECT run_id, agent_id, task_description, files_accessed, tools_called, status,
                    token_count, mode, timestamp_start, timestamp_end FROM agent_runs",
            &[],
        )
        .unwrap();
    let text = |s: &str| SqlValue::Text(s.to_owned());
    assert_eq!(
        rows,
        [vec![
            text("r1"),
            text("a1"),
            text("edit a1"),
            text(r#"["src/a1.rs"]"#),
            text(r#"["read_file","edit_file"]"#),
            text("success"),
            SqlValue::Int(1234),
            text("fast"),
            text("2026-05-28T20:26:50.000Z"),
            text("2026-05-28T20:26:52.000Z"),
        ]]
    );
}

async fn an_awaited_finish_is_visible_at_once(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store
        .start_agent(start("r", "a", Mode::Default))
        .await
        .unwrap();
    // In flight: no status, no end.
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let agent = reader.agent(&"r".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.attempts[0].status, None);
    assert_eq!(agent.attempts[0].timestamp_end, None);
    assert!(matches!(
        store
            .start_agent(start("r", "a", Mode::Default))
            .await
            .unwrap_err(),
        StoreError::AgentExists { attempt: 1, .. }
    ));
    store
        .finish_agent(finish("r", "a", AgentStatus::Failure))
        .await
        .unwrap();
    // No flush, no close: the writer is still running.
    let agent = reader.agent(&"r".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.attempts[0].status, Some(AgentStatus::Failure));
    assert_eq!(agent.attempts[0].duration(), Some(Duration::from_secs(2)));
    assert_eq!(agent.attempts[0].mode, Some(Mode::Default));
    assert_eq!(agent.attempts[0].files_accessed, ["src/a.rs"]);
    // Finishing again the same way is a no-op; another way is refused.
    store
        .finish_agent(finish("r", "a", AgentStatus::Failure))
        .await
        .unwrap();
    let err = store
        .finish_agent(finish("r", "a", AgentStatus::Success))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AgentFinished { recorded, .. } if recorded == "failure"),
        "{err}"
    );
    let err = store
        .finish_agent(finish("r", "ghost", AgentStatus::Success))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownAgent { .. }), "{err}");
    // A retry is a new attempt.
    let mut retry = start("r", "a", Mode::Default);
    retry.attempt = 2;
    retry.escalated = true;
    store.start_agent(retry).await.unwrap();
    let mut done = finish("r", "a", AgentStatus::Success);
    done.attempt = 2;
    store.finish_agent(done).await.unwrap();
    // Totals counted once per attempt; the agent counted once, by its last attempt.
    let run = reader.run_summary(&"r".into()).unwrap().unwrap();
    assert_eq!(run.run.total_tokens, 2 * 1234);
    assert_eq!((run.agents.success, run.agents.failure), (1, 0));
    assert_eq!((run.agents.attempts, run.agents.escalated), (2, 1));
    assert_eq!(run.agents.not_run, 2);
    store.close().await.unwrap();
}

async fn migrations_run_once_and_a_newer_schema_is_refused(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store.close().await.unwrap();
    for _ in 0..3 {
        Store::open_at(&fresh.location)
            .unwrap()
            .close()
            .await
            .unwrap();
    }
    // Two processes opening at once: both succeed, the schema is built once.
    let (a, b) = (fresh.location.clone(), fresh.location.clone());
    let first = std::thread::spawn(move || StoreReader::open_at(&a).map(|_| ()));
    let second = std::thread::spawn(move || StoreReader::open_at(&b).map(|_| ()));
    first.join().unwrap().unwrap();
    second.join().unwrap().unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    assert_eq!(reader.runs().unwrap().len(), 1);
    assert_eq!(schema_version(&fresh, &reader), schema::SCHEMA_VERSION);
    drop(reader);

    let future = schema::SCHEMA_VERSION + 1;
    fresh.sql(&match fresh.location {
        StoreLocation::Sqlite(_) => format!("PRAGMA user_version = {future}"),
        StoreLocation::Postgres(_) => format!("UPDATE fanout_schema SET version = {future}"),
    });
    let err = Store::open_at(&fresh.location).unwrap_err();
    match &err {
        StoreError::SchemaTooNew {
            found, supported, ..
        } => assert_eq!((*found, *supported), (future, schema::SCHEMA_VERSION)),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
    assert!(err.to_string().contains("newer than this fanout"), "{err}");
    assert!(matches!(
        StoreReader::open_at(&fresh.location).unwrap_err(),
        StoreError::SchemaTooNew { .. }
    ));
}

async fn a_thousand_concurrent_writers_lose_nothing(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
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
    assert_eq!(stats.failed_queued_ops, 0, "{stats:?}");
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let run = reader.run(&"c".into()).unwrap().unwrap();
    assert_eq!(run.summary.agents.success, 1000);
    assert_eq!(run.summary.run.total_tokens, 1000 * 1234);
    assert_eq!(run.summary.agents.denials, 1000);
    let events = reader.events(&"c".into()).unwrap();
    assert_eq!(events.len(), 3000);
    // Numbered 1..=3000 with no gap or repeat.
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u64 + 1)
    );
    let denials = int(reader
        .query_raw(
            "SELECT COUNT(*) FROM denials WHERE run_id = ?1",
            &["c".into()],
        )
        .unwrap());
    assert_eq!(denials, 1000);
    assert!(stats.largest_batch > 1, "writes were batched: {stats:?}");
}

fn read_call(run_id: &str, agent_id: &str, seq: u32, tool: &str, ok: bool) -> ToolCallRecord {
    ToolCallRecord {
        run_id: run_id.into(),
        agent_id: agent_id.into(),
        attempt: 1,
        seq,
        tool: tool.to_owned(),
        target: Some(format!("src/{agent_id}.rs")),
        ok,
        outcome: Some(if ok { "ok" } else { "error" }.to_owned()),
        duration_ms: Some(1000),
        bytes: Some(42),
        paths: vec![format!("src/{agent_id}.rs")],
        error: (!ok).then(|| "no such file".to_owned()),
        started_at: at(10),
        ended_at: Some(at(11)),
    }
}

async fn queries_answer_what_the_cli_shows(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
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
        .tool_call(read_call("new", "a", 1, "read_file", true))
        .await
        .unwrap();
    store
        .tool_call(read_call("new", "a", 2, "write_file", true))
        .await
        .unwrap();
    store
        .tool_call(read_call("new", "a", 3, "edit_file", false))
        .await
        .unwrap();
    store
        .denial(DenialRecord {
            run_id: "new".into(),
            agent_id: "b".into(),
            attempt: 1,
            tool: "bash".to_owned(),
            target: Some("curl example.com".to_owned()),
            reason: "not on the allowlist".to_owned(),
            at: at(11),
        })
        .await
        .unwrap();
    for seq in [0, 1] {
        store
            .record_checkpoint(CheckpointRecord {
                run_id: "new".into(),
                seq,
                commit_id: format!("c{seq}"),
                ref_name: format!("refs/fanout/new/checkpoints/{seq}"),
                label: "base".to_owned(),
                completed_agents: seq,
                at: at(100 + seq),
            })
            .await
            .unwrap();
    }
    // A checkpoint with the same seq replaces the record.
    store
        .record_checkpoint(CheckpointRecord {
            run_id: "new".into(),
            seq: 1,
            commit_id: "c1-again".to_owned(),
            ref_name: "refs/fanout/new/checkpoints/1".to_owned(),
            label: "after a".to_owned(),
            completed_agents: 1,
            at: at(102),
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

    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let runs = reader.runs().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run.run_id.as_str()).collect();
    assert_eq!(ids, ["new", "old"], "newest first");
    assert_eq!(runs[0].run.status, RunStatus::Partial);
    assert_eq!(
        runs[0].run.ended_at.as_deref(),
        Some("2026-05-28T20:30:00.000Z")
    );
    assert_eq!(
        (
            runs[0].agents.success,
            runs[0].agents.rollback,
            runs[0].agents.running,
            runs[0].agents.not_run
        ),
        (1, 1, 1, 0)
    );
    assert_eq!((runs[0].agents.denials, runs[0].agents.tool_calls), (1, 3));
    assert_eq!(
        (runs[0].agents.tokens_fast, runs[0].agents.tokens_default),
        (2 * 1234, 0)
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
    assert!((runs[0].agents.dollars - 0.02).abs() < 1e-12);
    assert!((runs[0].agents.cache_saved - 0.002).abs() < 1e-12);
    assert!((runs[0].agents.cached_share() - 0.6).abs() < 1e-12);
    assert_eq!(runs[1].agents.total(), 0);
    assert_eq!(runs[1].agents.not_run, 3);

    let detail = reader.run(&"new".into()).unwrap().unwrap();
    let checkpoints: Vec<(&str, &str)> = detail
        .checkpoints
        .iter()
        .map(|c| (c.commit_id.as_str(), c.label.as_str()))
        .collect();
    assert_eq!(checkpoints, [("c0", "base"), ("c1-again", "after a")]);
    let agents: Vec<&str> = detail
        .agent_runs
        .iter()
        .map(|a| a.agent_id.as_str())
        .collect();
    assert_eq!(agents, ["a", "b", "c"]);
    assert_eq!(detail.denials_by_agent.get(&"b".into()), Some(&1));
    assert_eq!(detail.denials_by_agent.len(), 1);

    let agent = reader.agent(&"new".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.tool_calls.len(), 3);
    let call = &agent.tool_calls[0];
    assert_eq!(call.duration(), Some(Duration::from_secs(1)));
    assert_eq!(
        (
            call.ok,
            call.outcome.as_deref(),
            call.bytes,
            call.duration_ms
        ),
        (true, Some("ok"), Some(42), Some(1000))
    );
    assert_eq!(call.paths, ["src/a.rs"]);
    assert_eq!(agent.tool_calls[2].error.as_deref(), Some("no such file"));
    let b = reader.agent(&"new".into(), &"b".into()).unwrap().unwrap();
    assert_eq!(b.denials.len(), 1);
    assert_eq!(b.denials[0].reason, "not on the allowlist");
    assert!(
        reader
            .agent(&"new".into(), &"zzz".into())
            .unwrap()
            .is_none()
    );
    assert!(reader.run(&"zzz".into()).unwrap().is_none());
    assert!(reader.run_summary(&"zzz".into()).unwrap().is_none());

    let denials = reader.run_denials(&"new".into()).unwrap();
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0].0.as_str(), "b");
    let calls = reader.run_tool_calls(&"new".into()).unwrap();
    let seqs: Vec<u32> = calls.iter().map(|(_, call)| call.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // Only successful writes and edits wrote.
    let written = reader.written_paths(&"new".into()).unwrap();
    assert_eq!(written, [("a".into(), 1, "src/a.rs".to_owned())]);

    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["run_id"], "new");
    assert_eq!(json["agents"]["success"], 1);
    assert_eq!(json["agent_runs"][0]["mode"], "fast");
    assert_eq!(json["agent_runs"][0]["cache_read_tokens"], 600);
    assert_eq!(json["agents"]["cache_read_tokens"], 1200);
}

async fn run_status_transitions(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    let status = |reader: &StoreReader| {
        let run = reader.run_summary(&"r".into()).unwrap().unwrap().run;
        (run.status, run.ended_at, run.error)
    };
    for next in [
        RunStatus::Planned,
        RunStatus::Running,
        RunStatus::Completed,
        RunStatus::Partial,
        RunStatus::Cancelled,
        RunStatus::TestsFailed,
        RunStatus::RolledBack,
    ] {
        store
            .set_run_status(&"r".into(), next, None, None)
            .await
            .unwrap();
        assert_eq!(status(&reader).0, next);
    }
    store
        .set_run_status(
            &"r".into(),
            RunStatus::Failed,
            Some(at(50)),
            Some("the budget ran out".to_owned()),
        )
        .await
        .unwrap();
    assert_eq!(
        status(&reader),
        (
            RunStatus::Failed,
            Some("2026-05-28T20:27:30.000Z".to_owned()),
            Some("the budget ran out".to_owned())
        )
    );
    // A status without an end or error keeps the ones recorded.
    store
        .set_run_status(&"r".into(), RunStatus::Failed, None, None)
        .await
        .unwrap();
    assert!(status(&reader).1.is_some());
    // A resume reopens: running, no end, no error.
    store.reopen_run(&"r".into()).await.unwrap();
    assert_eq!(status(&reader), (RunStatus::Running, None, None));
    assert!(matches!(
        store.reopen_run(&"ghost".into()).await.unwrap_err(),
        StoreError::UnknownRun { .. }
    ));
    // An unplanned agent (an item run's synthesis) counts one more planned agent.
    store
        .start_unplanned_agent(start("r", "synthesis", Mode::Default))
        .await
        .unwrap();
    let run = reader.run_summary(&"r".into()).unwrap().unwrap();
    assert_eq!((run.run.agents_planned, run.agents.running), (4, 1));
    // A pre-image is written with the start, once, never replaced.
    store
        .start_agent_with_preimage(start("r", "p", Mode::Fast), r#"{"v":1}"#.to_owned())
        .await
        .unwrap();
    let mut again = start("r", "p", Mode::Fast);
    again.attempt = 2;
    store
        .start_agent_with_preimage(again, r#"{"v":2}"#.to_owned())
        .await
        .unwrap();
    assert_eq!(
        reader.preimages(&"r".into()).unwrap(),
        [("p".into(), r#"{"v":1}"#.to_owned())]
    );
    // A failed start leaves no manifest behind: the two are one transaction.
    let err = store
        .start_agent_with_preimage(start("r", "synthesis", Mode::Fast), "{}".to_owned())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AgentExists { .. }), "{err}");
    assert_eq!(reader.preimages(&"r".into()).unwrap().len(), 1);
    store.close().await.unwrap();
}

async fn spent_and_observed_usage(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    let mut sim = new_run("sim", 0);
    sim.simulated = true;
    store.create_run(sim).await.unwrap();
    store.create_run(new_run("real", 10)).await.unwrap();
    let call = |attempt: u32, turn: u64, input: u64| ModelCall {
        attempt,
        turn,
        mode: Mode::Fast,
        provider: fanout_core::config::Provider::Anthropic,
        model: "claude-opus-4-8".to_owned(),
        input_tokens: input,
        output_tokens: 10,
        cache_read_tokens: 5,
        cache_write_tokens: 1,
        dollars: 0.25,
        cache_saved: 0.125,
        tries: Some(1),
        rate_wait_ms: None,
        rate_limited: None,
        content: None,
        answer: None,
    };
    for run in ["sim", "real"] {
        // `done` finished after two calls; `busy` is in flight with two calls on attempt 2.
        store
            .start_agent(start(run, "done", Mode::Fast))
            .await
            .unwrap();
        store
            .event(call(1, 1, 100).event(&run.into(), "done".into()))
            .await
            .unwrap();
        store
            .event(call(1, 2, 300).event(&run.into(), "done".into()))
            .await
            .unwrap();
        store
            .finish_agent(finish(run, "done", AgentStatus::Success))
            .await
            .unwrap();
        let mut busy = start(run, "busy", Mode::Fast);
        busy.attempt = 2;
        store.start_agent(busy).await.unwrap();
        store
            .event(call(2, 1, 1000).event(&run.into(), "busy".into()))
            .await
            .unwrap();
        store
            .event(call(2, 2, 2000).event(&run.into(), "busy".into()))
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let spent = reader.unfinished_usage(&"real".into()).unwrap();
    assert_eq!(spent.len(), 1, "{spent:?}");
    let busy = spent[&("busy".into(), 2)];
    assert_eq!(
        (
            busy.input_tokens,
            busy.output_tokens,
            busy.cache_read_tokens,
            busy.cache_write_tokens
        ),
        (3000, 20, 10, 2)
    );
    assert!((busy.dollars - 0.5).abs() < 1e-12);
    assert!((busy.cache_saved - 0.25).abs() < 1e-12);

    for simulated in [false, true] {
        let usage = reader.observed_usage(simulated, 10).unwrap();
        let model = &usage["claude-opus-4-8"];
        assert_eq!(
            (model.runs, model.agents, model.calls),
            (1, 1, 2),
            "{usage:?}"
        );
        assert_eq!((model.input_tokens, model.output_tokens), (1000, 234));
        assert_eq!(
            (model.cache_read_tokens, model.cache_write_tokens),
            (600, 100)
        );
        assert!((model.dollars - 0.01).abs() < 1e-12);
        // SQLite computes it from Julian days: close to the millisecond.
        assert!((model.seconds - 2.0).abs() < 1e-3, "{}", model.seconds);
    }
    assert!(reader.observed_usage(false, 0).unwrap().is_empty());
    store.close().await.unwrap();
}

async fn a_failing_record_does_not_sink_its_batch(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    store
        .start_agent(start("r", "a", Mode::Fast))
        .await
        .unwrap();
    // Queued records, one of them a duplicate key, and awaited starts, one of them a
    // duplicate, all sent at once so they share batches.
    let mut tasks = Vec::new();
    for seq in 1..=200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            // seq 100 twice: the second is refused by the primary key.
            let seq = if seq == 101 { 100 } else { seq };
            store
                .tool_call(read_call("r", "a", seq, "read_file", true))
                .await
        }));
    }
    let mut starts = Vec::new();
    for agent in ["b", "c", "a", "d"] {
        let store = store.clone();
        starts.push(tokio::spawn(async move {
            store.start_agent(start("r", agent, Mode::Fast)).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let mut refused = Vec::new();
    for task in starts {
        if let Err(err) = task.await.unwrap() {
            refused.push(err);
        }
    }
    store
        .event(EventRecord {
            run_id: "r".into(),
            agent_id: None,
            kind: "after".to_owned(),
            payload: json!({}),
            at: at(20),
        })
        .await
        .unwrap();
    let stats = store.close().await.unwrap();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        matches!(&refused[0], StoreError::AgentExists { agent_id, .. } if agent_id.as_str() == "a")
    );
    assert_eq!(stats.failed_queued_ops, 1, "{stats:?}");
    assert!(stats.first_queued_error.is_some());
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let agent = reader.agent(&"r".into(), &"a".into()).unwrap().unwrap();
    assert_eq!(agent.tool_calls.len(), 199);
    let run = reader.run_summary(&"r".into()).unwrap().unwrap();
    assert_eq!(run.agents.running, 4);
    assert_eq!(reader.events(&"r".into()).unwrap().len(), 1);
}

async fn readers_read_while_the_writer_writes(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r", 0)).await.unwrap();
    let location = fresh.location.clone();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watching = done.clone();
    // Two readers on threads of their own, each seeing the event count only grow.
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let location = location.clone();
            let watching = watching.clone();
            std::thread::spawn(move || {
                let reader = StoreReader::open_at(&location).unwrap();
                let mut seen = 0;
                let mut reads = 0;
                loop {
                    let finished = watching.load(std::sync::atomic::Ordering::SeqCst);
                    let now = reader.events(&"r".into()).unwrap().len();
                    assert!(now >= seen, "went back from {seen} to {now}");
                    seen = now;
                    reads += 1;
                    if finished {
                        return (seen, reads);
                    }
                }
            })
        })
        .collect();
    for turn in 0..2000 {
        store
            .event(EventRecord {
                run_id: "r".into(),
                agent_id: None,
                kind: "turn".to_owned(),
                payload: json!({ "turn": turn }),
                at: at(1),
            })
            .await
            .unwrap();
        if turn % 500 == 0 {
            store.flush().await.unwrap();
        }
    }
    store.flush().await.unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    for reader in readers {
        let (seen, reads) = reader.join().unwrap();
        assert_eq!(seen, 2000);
        assert!(reads >= 1);
    }
    store.close().await.unwrap();
}

async fn two_runs_share_a_store(fresh: Fresh) {
    // Two writers (two processes, or two machines) on one store, each with its own run.
    let first = Store::open_at(&fresh.location).unwrap();
    let second = Store::open_at(&fresh.location).unwrap();
    first.create_run(new_run("one", 0)).await.unwrap();
    second.create_run(new_run("two", 1)).await.unwrap();
    first
        .start_agent(start("one", "a", Mode::Fast))
        .await
        .unwrap();
    second
        .start_agent(start("two", "b", Mode::Fast))
        .await
        .unwrap();
    for (store, run) in [(&first, "one"), (&second, "two"), (&first, "one")] {
        store
            .event(EventRecord {
                run_id: run.into(),
                agent_id: None,
                kind: "turn".to_owned(),
                payload: json!({ "run": run }),
                at: at(2),
            })
            .await
            .unwrap();
    }
    first
        .finish_agent(finish("one", "a", AgentStatus::Success))
        .await
        .unwrap();
    first.close().await.unwrap();
    second.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let runs = reader.runs().unwrap();
    let ids: Vec<&str> = runs.iter().map(|r| r.run.run_id.as_str()).collect();
    assert_eq!(ids, ["two", "one"]);
    let one = reader.run(&"one".into()).unwrap().unwrap();
    let two = reader.run(&"two".into()).unwrap().unwrap();
    assert_eq!(
        (one.summary.agents.success, one.summary.run.total_tokens),
        (1, 1234)
    );
    assert_eq!(
        (two.summary.agents.running, two.summary.run.total_tokens),
        (1, 0)
    );
    // Events are numbered per run.
    let seqs = |run: &str| -> Vec<u64> {
        reader
            .events(&run.into())
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect()
    };
    assert_eq!(seqs("one"), [1, 2]);
    assert_eq!(seqs("two"), [1]);
    assert_eq!(
        texts(
            reader
                .query_raw("SELECT run_id FROM runs ORDER BY run_id", &[])
                .unwrap()
        ),
        ["one", "two"]
    );
}

/// A shared run has several writers: its coordinator and every worker record events of the
/// same run. Each writer used to number them from its own counter, so the second writer's
/// events collided with the first's and were dropped.
async fn writers_of_one_run_number_its_events_without_losing_any(fresh: Fresh) {
    let coordinator = Store::open_at(&fresh.location).unwrap();
    let workers = [
        Store::open_at(&fresh.location).unwrap(),
        Store::open_at(&fresh.location).unwrap(),
    ];
    coordinator.create_run(new_run("shared", 0)).await.unwrap();
    let event = |who: &str, n: usize| EventRecord {
        run_id: "shared".into(),
        agent_id: None,
        kind: "turn".to_owned(),
        payload: json!({ "who": who, "n": n }),
        at: at(2),
    };
    // Interleaved, each writer's counter behind the others' after the first round.
    for n in 0..5 {
        coordinator.event(event("coordinator", n)).await.unwrap();
        coordinator.flush().await.unwrap();
        for (index, worker) in workers.iter().enumerate() {
            worker
                .event(event(&format!("worker {index}"), n))
                .await
                .unwrap();
            worker.flush().await.unwrap();
        }
    }
    // And at once, from all three.
    let mut concurrent = Vec::new();
    for (index, store) in [&coordinator, &workers[0], &workers[1]]
        .into_iter()
        .enumerate()
    {
        for n in 0..20 {
            let store = store.clone();
            let record = event(&format!("concurrent {index}"), n);
            concurrent.push(tokio::spawn(async move { store.event(record).await }));
        }
    }
    for task in concurrent {
        task.await.unwrap().unwrap();
    }
    coordinator.close().await.unwrap();
    for worker in workers {
        worker.close().await.unwrap();
    }
    let events = StoreReader::open_at(&fresh.location)
        .unwrap()
        .events(&"shared".into())
        .unwrap();
    assert_eq!(events.len(), 15 + 60, "{events:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=75).collect::<Vec<u64>>());
}

async fn the_log_gets_every_record_as_a_json_line(fresh: Fresh) {
    let logging = fanout_core::config::Logging {
        level: fanout_core::config::LogLevel::Verbose,
        destination: fresh
            .dir
            .path()
            .join("logs/workflow-run-{timestamp}.json")
            .display()
            .to_string(),
    };
    let log_path = logging.destination_at(at(0));
    assert!(log_path.to_string_lossy().contains("2026-05-28T20-26-40Z"));
    let store = Store::open_at(&fresh.location).unwrap();
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
