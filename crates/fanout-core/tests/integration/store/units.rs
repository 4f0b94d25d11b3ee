//! Units and leases, on both backends (run through `conformance!`): what lets workers on
//! several machines share a run without running a unit twice at once or committing a dead
//! lease's work.

use std::collections::BTreeMap;

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentStatus, Lease, RunPlanRecord, Store, StoreError, StoreReader, UnitCommit, UnitKind,
    UnitSpec, UnitState,
};
use serde_json::json;

use super::{Fresh, at, finish, new_run, start};

const FAR: u64 = 10_000;

fn plan(run_id: &str) -> RunPlanRecord {
    RunPlanRecord {
        run_id: run_id.into(),
        plan_hash: "sha256:abc".to_owned(),
        plan: r#"{"agents":[]}"#.to_owned(),
        workflow: "name: auth-refactor\n".to_owned(),
        workflow_path: Some("claude-workflows.yaml".to_owned()),
        base_commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        // Not UTF-8: the bundle is bytes on both backends.
        base_bundle: vec![0x23, 0x00, 0x9f, 0x92, 0x96, 0xff],
        max_dollars: None,
        created_at: at(0),
    }
}

fn unit(agent: &str, depends_on: &[&str]) -> UnitSpec {
    UnitSpec::agent(
        agent.into(),
        depends_on.iter().map(|&id| id.into()).collect(),
    )
}

/// A store with run `r1` created and `units` published.
async fn published(fresh: &Fresh, units: Vec<UnitSpec>) -> Store {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r1", 0)).await.unwrap();
    store.publish_units(plan("r1"), units).await.unwrap();
    store
}

/// Record the lease's agent attempt as started, as a worker does before it runs the agent.
async fn started(store: &Store, lease: &Lease) {
    let mut row = start(
        lease.run_id.as_str(),
        lease.agent_id.as_str(),
        Mode::Default,
    );
    row.attempt = lease.attempt;
    store.start_agent(row).await.unwrap();
}

fn outcome(lease: &Lease, succeeded: bool, patch: &[u8], seconds: u64) -> UnitCommit {
    let status = if succeeded {
        AgentStatus::Success
    } else {
        AgentStatus::Failure
    };
    let mut finished = finish(lease.run_id.as_str(), lease.agent_id.as_str(), status);
    finished.attempt = lease.attempt;
    UnitCommit {
        lease: lease.clone(),
        succeeded,
        patch: patch.to_vec(),
        outcome: json!({"summary": format!("{} done", lease.agent_id)}),
        finish: finished,
        other_finishes: Vec::new(),
        at: at(seconds),
    }
}

async fn lease(store: &Store, owner: &str, now: u64, expires: u64) -> Option<Lease> {
    store
        .lease_unit(owner, None, at(now), at(expires))
        .await
        .unwrap()
}

pub(crate) async fn two_workers_never_hold_one_unit(fresh: Fresh) {
    const UNITS: usize = 60;
    let specs = (0..UNITS).map(|i| unit(&format!("a{i:02}"), &[])).collect();
    published(&fresh, specs).await.close().await.unwrap();
    // Four workers, each with its own store handle (its own connection), leasing at once.
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let store = Store::open_at(&fresh.location).unwrap();
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{worker}");
            let mut held = Vec::new();
            while let Some(lease) = lease(&store, &owner, 1, FAR).await {
                assert_eq!(lease.owner, owner);
                assert_eq!(lease.plan_hash, "sha256:abc");
                held.push(lease);
                tokio::task::yield_now().await;
            }
            store.close().await.unwrap();
            held
        }));
    }
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for task in tasks {
        for lease in task.await.unwrap() {
            assert_eq!(lease.attempt, 1);
            holders
                .entry(lease.agent_id.to_string())
                .or_default()
                .push(lease.owner);
        }
    }
    assert_eq!(holders.len(), UNITS, "every unit leased");
    for (agent, owners) in &holders {
        assert_eq!(owners.len(), 1, "{agent} leased by {owners:?}");
    }
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let units = reader.units(&"r1".into()).unwrap();
    assert_eq!(units.len(), UNITS);
    for row in units {
        assert_eq!(row.state, UnitState::Leased);
        assert_eq!(
            row.lease_owner.as_deref(),
            holders[row.agent_id.as_str()].first().map(String::as_str)
        );
    }
}

pub(crate) async fn a_unit_waits_for_its_dependencies_to_commit(fresh: Fresh) {
    let store = published(
        &fresh,
        vec![
            unit("schema", &[]),
            unit("api", &["schema"]),
            unit("docs", &["api"]),
            unit("flaky", &[]),
            unit("after-flaky", &["flaky"]),
        ],
    )
    .await;
    let first = lease(&store, "w", 1, FAR).await.unwrap();
    let second = lease(&store, "w", 1, FAR).await.unwrap();
    assert_eq!(
        (first.agent_id.as_str(), second.agent_id.as_str()),
        ("schema", "flaky")
    );
    assert_eq!(lease(&store, "w", 1, FAR).await, None, "the rest wait");
    started(&store, &second).await;
    store
        .commit_unit(outcome(&second, false, b"", 2))
        .await
        .unwrap();
    assert_eq!(
        lease(&store, "w", 2, FAR).await,
        None,
        "a failed dependency does not release its dependants"
    );
    started(&store, &first).await;
    store
        .commit_unit(outcome(&first, true, b"patch", 3))
        .await
        .unwrap();
    let api = lease(&store, "w", 3, FAR).await.unwrap();
    assert_eq!(api.agent_id.as_str(), "api");
    assert_eq!(lease(&store, "w", 3, FAR).await, None, "docs waits for api");
    store
        .skip_units(&"r1".into(), vec!["after-flaky".into()])
        .await
        .unwrap();
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let states: Vec<(String, UnitState, Vec<String>)> = reader
        .units(&"r1".into())
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.agent_id.to_string(),
                row.state,
                row.depends_on.iter().map(ToString::to_string).collect(),
            )
        })
        .collect();
    let s = |text: &str| text.to_owned();
    assert_eq!(
        states,
        [
            (s("schema"), UnitState::Committed, vec![]),
            (s("api"), UnitState::Leased, vec![s("schema")]),
            (s("docs"), UnitState::Ready, vec![s("api")]),
            (s("flaky"), UnitState::Failed, vec![]),
            (s("after-flaky"), UnitState::Skipped, vec![s("flaky")]),
        ]
    );
}

pub(crate) async fn an_expired_lease_is_taken_over_as_a_new_attempt(fresh: Fresh) {
    let store = published(&fresh, vec![unit("a1", &[])]).await;
    let dead = lease(&store, "dead", 0, 30).await.unwrap();
    assert_eq!(dead.attempt, 1);
    started(&store, &dead).await;
    // Renewed once, then the worker dies.
    store.heartbeat(&dead, at(60)).await.unwrap();
    assert_eq!(lease(&store, "live", 59, FAR).await, None, "still held");
    let live = lease(&store, "live", 61, FAR).await.unwrap();
    assert_eq!(
        (live.agent_id.as_str(), live.attempt, live.owner.as_str()),
        ("a1", 2, "live")
    );
    // The dead worker's heartbeat no longer renews anything.
    match store.heartbeat(&dead, at(200)).await {
        Err(StoreError::LeaseLost {
            agent_id, attempt, ..
        }) => assert_eq!((agent_id.as_str(), attempt), ("a1", 1)),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let attempts: Vec<(u32, Option<AgentStatus>)> = reader
        .agent_runs(&"r1".into())
        .unwrap()
        .into_iter()
        .map(|row| (row.attempt, row.status))
        .collect();
    assert_eq!(
        attempts,
        [(1, Some(AgentStatus::Failure))],
        "the dead attempt is closed as a failure"
    );
    let row = &reader.units(&"r1".into()).unwrap()[0];
    assert_eq!(
        (row.state, row.attempt, row.lease_owner.as_deref()),
        (UnitState::Leased, 2, Some("live"))
    );
}

pub(crate) async fn a_late_commit_is_refused_and_writes_nothing(fresh: Fresh) {
    let store = published(&fresh, vec![unit("a1", &[])]).await;
    let late = lease(&store, "late", 0, 30).await.unwrap();
    started(&store, &late).await;
    let live = lease(&store, "live", 31, FAR).await.unwrap();
    started(&store, &live).await;
    match store
        .commit_unit(outcome(&late, true, b"late patch", 40))
        .await
    {
        Err(StoreError::LeaseLost { attempt, .. }) => assert_eq!(attempt, 1),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let row = &reader.units(&"r1".into()).unwrap()[0];
    assert_eq!(
        (row.state, row.commit_seq, row.patch.clone()),
        (UnitState::Leased, None, None)
    );
    let seq = store
        .commit_unit(outcome(&live, true, b"live patch", 41))
        .await
        .unwrap();
    assert_eq!(seq, 1);
    // Committing again (a retry after a lost answer) is refused too: the lease is spent.
    assert!(matches!(
        store
            .commit_unit(outcome(&live, true, b"live patch", 42))
            .await,
        Err(StoreError::LeaseLost { .. })
    ));
    store.close().await.unwrap();
    let row = &reader.units(&"r1".into()).unwrap()[0];
    assert_eq!(
        (row.state, row.commit_seq, row.patch.as_deref()),
        (UnitState::Committed, Some(1), Some(&b"live patch"[..]))
    );
    let attempts: Vec<(u32, Option<AgentStatus>)> = reader
        .agent_runs(&"r1".into())
        .unwrap()
        .into_iter()
        .map(|row| (row.attempt, row.status))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, Some(AgentStatus::Failure)),
            (2, Some(AgentStatus::Success))
        ]
    );
}

pub(crate) async fn commits_are_numbered_in_commit_order(fresh: Fresh) {
    let store = published(&fresh, vec![unit("a", &[]), unit("b", &[]), unit("c", &[])]).await;
    let mut leases = BTreeMap::new();
    for _ in 0..3 {
        let lease = lease(&store, "w", 1, FAR).await.unwrap();
        started(&store, &lease).await;
        leases.insert(lease.agent_id.to_string(), lease);
    }
    // A commit whose finish row cannot be written (no start row for that attempt) writes
    // nothing and takes no number.
    let mut orphan = outcome(&leases["a"], true, b"", 2);
    orphan.finish.attempt = 9;
    assert!(matches!(
        store.commit_unit(orphan).await,
        Err(StoreError::UnknownAgent { .. })
    ));
    let binary = vec![0u8, 0x9f, 0x92, 0x96, b'\n', 0xff];
    let mut seqs = Vec::new();
    for (agent, patch) in [("c", &b"c"[..]), ("a", &binary[..]), ("b", &b""[..])] {
        seqs.push(
            store
                .commit_unit(outcome(&leases[agent], true, patch, 3))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seqs, [1, 2, 3]);
    store
        .mark_unit_applied(&"r1".into(), &"c".into(), at(5))
        .await
        .unwrap();
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let rows = reader.units(&"r1".into()).unwrap();
    type Committed = (String, Option<u64>, Option<Vec<u8>>, bool);
    let by_order: Vec<Committed> = rows
        .iter()
        .map(|row| {
            (
                row.agent_id.to_string(),
                row.commit_seq,
                row.patch.clone(),
                row.applied_at.is_some(),
            )
        })
        .collect();
    assert_eq!(
        by_order,
        [
            ("a".to_owned(), Some(2), Some(binary), false),
            ("b".to_owned(), Some(3), Some(vec![]), false),
            ("c".to_owned(), Some(1), Some(b"c".to_vec()), true),
        ]
    );
    assert_eq!(rows[0].outcome, Some(json!({"summary": "a done"})));
    let plan = reader.run_plan(&"r1".into()).unwrap().unwrap();
    assert_eq!(plan, self::plan("r1"));
}

pub(crate) async fn only_runs_with_a_recorded_plan_are_leased(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r1", 0)).await.unwrap();
    store.flush().await.unwrap();
    // A unit that reached the table without its run's plan (not through publish_units).
    fresh.sql(
        "INSERT INTO units (run_id, agent_id, enqueued_seq, state) VALUES ('r1', 'a1', 1, 'ready')",
    );
    assert_eq!(lease(&store, "w", 1, FAR).await, None);
    store
        .publish_units(plan("r1"), vec![unit("a1", &[])])
        .await
        .unwrap();
    let leased = lease(&store, "w", 1, FAR).await.unwrap();
    assert_eq!(
        (leased.agent_id.as_str(), leased.plan_hash.as_str()),
        ("a1", "sha256:abc")
    );
    store.close().await.unwrap();
}

/// A worker leases only the kinds of unit it can run: one without an item handler never
/// takes an item chunk (it would commit it as a failure), and a chunk's lease carries its
/// input; a commit ends every row it names in its one transaction.
pub(crate) async fn a_worker_leases_only_the_kinds_it_can_run(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("r1", 0)).await.unwrap();
    let chunk = UnitSpec {
        agent_id: "chunk-0001".into(),
        depends_on: Vec::new(),
        kind: UnitKind::ItemChunk,
        input: Some(r#"{"id":"chunk-0001","items":[]}"#.to_owned()),
        estimated_usd: 0.0,
    };
    store
        .publish_units(plan("r1"), vec![chunk, unit("a1", &[])])
        .await
        .unwrap();
    let agent = lease(&store, "agents-only", 1, FAR).await.unwrap();
    assert_eq!(
        (agent.agent_id.as_str(), agent.kind),
        ("a1", UnitKind::Agent)
    );
    assert_eq!(lease(&store, "agents-only", 1, FAR).await, None);
    let leased = store
        .lease_unit_of(
            "items",
            None,
            &[UnitKind::Agent, UnitKind::ItemChunk],
            at(1),
            at(FAR),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(leased.kind, UnitKind::ItemChunk);
    assert_eq!(
        leased.input.as_deref(),
        Some(r#"{"id":"chunk-0001","items":[]}"#)
    );

    // The chunk's call and a retry's, ended together with the commit.
    started(&store, &leased).await;
    let mut retry = start("r1", "chunk-0001-r1-1", Mode::Fast);
    retry.attempt = leased.attempt;
    store.start_agent(retry).await.unwrap();
    let mut commit = outcome(&leased, true, b"", 2);
    let mut ended = finish("r1", "chunk-0001-r1-1", AgentStatus::Success);
    ended.attempt = leased.attempt;
    commit.other_finishes.push(ended);
    assert_eq!(store.commit_unit(commit).await.unwrap(), 1);
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let rows = reader.agent_runs(&"r1".into()).unwrap();
    let ended: Vec<(&str, Option<AgentStatus>)> = rows
        .iter()
        .filter(|row| row.agent_id.as_str().starts_with("chunk"))
        .map(|row| (row.agent_id.as_str(), row.status))
        .collect();
    assert_eq!(
        ended,
        [
            ("chunk-0001", Some(AgentStatus::Success)),
            ("chunk-0001-r1-1", Some(AgentStatus::Success))
        ]
    );
    let units = reader.units(&"r1".into()).unwrap();
    assert_eq!(units[0].kind, UnitKind::ItemChunk);
    assert_eq!(
        reader.units_committed_after(&"r1".into(), 0).unwrap()[0]
            .agent_id
            .as_str(),
        "chunk-0001"
    );
    assert!(
        reader
            .units_committed_after(&"r1".into(), 1)
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn a_shared_bucket_holds_every_taker_to_its_rate(fresh: Fresh) {
    // Two processes' worth of store handles take from one bucket of 5 requests, refilled
    // at 5 a second.
    let stores = [
        Store::open_at(&fresh.location).unwrap(),
        Store::open_at(&fresh.location).unwrap(),
    ];
    let take = |store: &Store, seconds: u64, millis: u64| {
        let store = store.clone();
        async move {
            store
                .take_from_bucket(
                    "anthropic:requests_per_minute:300",
                    5.0,
                    5.0,
                    1.0,
                    at(seconds) + std::time::Duration::from_millis(millis),
                )
                .await
                .unwrap()
        }
    };
    let mut taken = 0;
    for i in 0..20 {
        if take(&stores[i % 2], 100, 0).await.is_zero() {
            taken += 1;
        }
    }
    assert_eq!(taken, 5, "a full bucket holds five");
    // Empty: the wait is until one request's worth has refilled (200 ms at 5 a second).
    assert_eq!(
        take(&stores[0], 100, 0).await,
        std::time::Duration::from_millis(200)
    );
    // 400 ms later two have refilled, whichever handle asks.
    assert!(take(&stores[1], 100, 400).await.is_zero());
    assert!(take(&stores[0], 100, 400).await.is_zero());
    assert!(!take(&stores[1], 100, 400).await.is_zero());
    // A long pause refills to the capacity, never beyond.
    let mut later = 0;
    for i in 0..20 {
        if take(&stores[i % 2], 200, 0).await.is_zero() {
            later += 1;
        }
    }
    assert_eq!(later, 5);
    for store in stores {
        store.close().await.unwrap();
    }
}

pub(crate) async fn a_lease_s_further_attempts_never_collide_with_a_takeover(fresh: Fresh) {
    let store = published(&fresh, vec![unit("a1", &[])]).await;
    let first = lease(&store, "dead", 0, 30).await.unwrap();
    started(&store, &first).await;
    // Two more attempts under the same lease: an escalation, then a retry.
    let mut escalated = start("r1", "a1", Mode::Default);
    escalated.escalated = true;
    let mut failed = finish("r1", "a1", AgentStatus::Rollback);
    failed.attempt = first.attempt;
    let second = store
        .next_unit_attempt(&first, failed, escalated.clone())
        .await
        .unwrap();
    assert_eq!(
        (second.attempt, second.owner.as_str(), second.expires_at),
        (2, "dead", first.expires_at)
    );
    // The lease as it was is spent: renewing it, or starting another attempt from it, is
    // refused and writes nothing.
    assert!(matches!(
        store.heartbeat(&first, at(20)).await,
        Err(StoreError::LeaseLost { attempt: 1, .. })
    ));
    let mut again = finish("r1", "a1", AgentStatus::Failure);
    again.attempt = first.attempt;
    assert!(matches!(
        store
            .next_unit_attempt(&first, again, escalated.clone())
            .await,
        Err(StoreError::LeaseLost { attempt: 1, .. })
    ));
    store.heartbeat(&second, at(40)).await.unwrap();
    let mut outage = finish("r1", "a1", AgentStatus::Failure);
    outage.attempt = second.attempt;
    outage.error = Some("model API: overloaded".to_owned());
    let third = store
        .next_unit_attempt(&second, outage, escalated)
        .await
        .unwrap();
    assert_eq!(third.attempt, 3);
    // The worker dies in its third attempt; the takeover is a fourth, never a number it used.
    assert_eq!(lease(&store, "live", 39, FAR).await, None, "still held");
    let live = lease(&store, "live", 41, FAR).await.unwrap();
    assert_eq!((live.attempt, live.owner.as_str()), (4, "live"));
    started(&store, &live).await;
    store
        .commit_unit(outcome(&live, true, b"patch", 50))
        .await
        .unwrap();
    // The dead worker's next attempt after the takeover is refused.
    let mut late = finish("r1", "a1", AgentStatus::Failure);
    late.attempt = third.attempt;
    assert!(matches!(
        store
            .next_unit_attempt(&third, late, start("r1", "a1", Mode::Default))
            .await,
        Err(StoreError::LeaseLost { attempt: 3, .. })
    ));
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let mut rows: Vec<(u32, Option<AgentStatus>, bool, Option<Mode>)> = reader
        .agent_runs(&"r1".into())
        .unwrap()
        .into_iter()
        .map(|row| (row.attempt, row.status, row.escalated, row.mode))
        .collect();
    rows.sort_by_key(|row| row.0);
    assert_eq!(
        rows,
        [
            (1, Some(AgentStatus::Rollback), false, Some(Mode::Default)),
            (2, Some(AgentStatus::Failure), true, Some(Mode::Default)),
            // Closed by the takeover: its worker never finished it.
            (3, Some(AgentStatus::Failure), true, Some(Mode::Default)),
            (4, Some(AgentStatus::Success), false, Some(Mode::Default)),
        ]
    );
    let row = &reader.units(&"r1".into()).unwrap()[0];
    assert_eq!(
        (row.state, row.attempt, row.lease_owner.as_deref()),
        (UnitState::Committed, 4, Some("live"))
    );
}

/// Commits sent at once land in one writer batch: each gets its own number, in one gapless
/// sequence, and the run's row and totals count each once (the batch numbers its commits
/// and adds to its run's totals at its end). A commit of the batch that fails takes no
/// number and adds nothing.
pub(crate) async fn a_batch_of_commits_is_numbered_and_counted_once_each(fresh: Fresh) {
    const UNITS: usize = 41;
    let specs = (0..UNITS).map(|i| unit(&format!("a{i:02}"), &[])).collect();
    let store = published(&fresh, specs).await;
    let mut leases = Vec::new();
    for _ in 0..UNITS {
        let lease = lease(&store, "w", 1, FAR).await.unwrap();
        started(&store, &lease).await;
        leases.push(lease);
    }
    // The twentieth names an attempt that has no start row: refused, in the middle.
    let commits = leases.iter().enumerate().map(|(i, lease)| {
        let store = store.clone();
        let mut commit = outcome(lease, true, format!("patch {i}").as_bytes(), 3);
        if i == 20 {
            commit.finish.attempt = 9;
        }
        async move { store.commit_unit(commit).await }
    });
    let answers = futures_util::future::join_all(commits).await;
    let mut numbers = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(seq) => numbers.push((leases[i].agent_id.to_string(), seq)),
            Err(error) => {
                assert_eq!(i, 20, "commit {i} refused: {error}");
                assert!(matches!(error, StoreError::UnknownAgent { .. }), "{error}");
            }
        }
    }
    store.close().await.unwrap();
    let mut seqs: Vec<u64> = numbers.iter().map(|(_, seq)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..UNITS as u64).collect::<Vec<_>>());
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let rows = reader.units(&"r1".into()).unwrap();
    for (agent, seq) in &numbers {
        let row = rows
            .iter()
            .find(|row| row.agent_id.as_str() == agent)
            .unwrap();
        assert_eq!(row.commit_seq, Some(*seq), "{agent}");
        assert_eq!(row.state, UnitState::Committed, "{agent}");
    }
    let refused = rows
        .iter()
        .find(|row| row.agent_id.as_str() == "a20")
        .unwrap();
    assert_eq!(
        (refused.state, refused.commit_seq),
        (UnitState::Leased, None)
    );
    // Each finish counted once in the run's totals and its budget.
    let finished = finish("r1", "a00", AgentStatus::Success);
    let committed = (UNITS - 1) as u64;
    let run = reader
        .runs()
        .unwrap()
        .into_iter()
        .find(|summary| summary.run.run_id.as_str() == "r1")
        .unwrap()
        .run;
    assert_eq!(run.total_input_tokens, committed * finished.input_tokens);
    assert_eq!(run.total_output_tokens, committed * finished.output_tokens);
    assert!((run.total_cost_usd - committed as f64 * finished.cost_usd).abs() < 1e-9);
    let spend = reader.run_spend(&"r1".into()).unwrap().unwrap();
    assert!((spend.spent_usd - committed as f64 * finished.cost_usd).abs() < 1e-9);
}

/// A plan of hundreds of units is enqueued whole, in its order, with every dependency, and
/// enqueueing it again (a resumed coordinator) changes nothing.
pub(crate) async fn a_large_plan_is_enqueued_whole_and_in_order(fresh: Fresh) {
    const UNITS: usize = 250;
    let names: Vec<String> = (0..UNITS).map(|i| format!("u{i:03}")).collect();
    let specs = || -> Vec<UnitSpec> {
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                // Every third unit waits for the two before it.
                let depends: Vec<&str> = if i % 3 == 2 {
                    vec![names[i - 2].as_str(), names[i - 1].as_str()]
                } else {
                    Vec::new()
                };
                unit(name, &depends)
            })
            .collect()
    };
    let store = published(&fresh, specs()).await;
    store.publish_units(plan("r1"), specs()).await.unwrap();
    store.close().await.unwrap();
    let rows = StoreReader::open_at(&fresh.location)
        .unwrap()
        .unit_states(&"r1".into())
        .unwrap();
    let order: Vec<&str> = rows.iter().map(|row| row.agent_id.as_str()).collect();
    assert_eq!(order, names.iter().map(String::as_str).collect::<Vec<_>>());
    for (i, row) in rows.iter().enumerate() {
        let expected: Vec<String> = if i % 3 == 2 {
            vec![names[i - 2].clone(), names[i - 1].clone()]
        } else {
            Vec::new()
        };
        let found: Vec<String> = row.depends_on.iter().map(ToString::to_string).collect();
        assert_eq!(found, expected, "{}", row.agent_id);
        assert_eq!(row.state, UnitState::Ready);
        assert!(row.outcome.is_none() && row.patch.is_none());
    }
}
