//! What workers share besides units, on both backends (run through `conformance!`): rate
//! buckets taken all or nothing and corrected after the answer, limits learned from headers
//! (the lowest recent report wins), and a run's dollar budget reserved at each lease and
//! settled at each commit.

use std::time::Duration;

use fanout_core::config::Mode;
use fanout_core::store::{
    AgentStatus, BUDGET_EXHAUSTED, BucketAdjust, BucketTake, Lease, RunPlanRecord, Store,
    StoreReader, UnitCommit, UnitKind, UnitSpec, UnitState,
};
use serde_json::json;

use super::{Fresh, at, finish, new_run, start};

fn take(name: &str, capacity: f64, per_second: f64, amount: f64) -> BucketTake {
    BucketTake {
        name: name.to_owned(),
        capacity,
        per_second,
        amount,
        extra: 0.0,
    }
}

fn at_ms(seconds: u64, millis: u64) -> std::time::SystemTime {
    at(seconds) + Duration::from_millis(millis)
}

pub(crate) async fn shared_buckets_take_all_or_nothing_and_are_corrected_after_the_answer(
    fresh: Fresh,
) {
    let store = Store::open_at(&fresh.location).unwrap();
    let other = Store::open_at(&fresh.location).unwrap();
    // One request and 300 estimated input tokens, from a requests bucket of 5 (5 a second)
    // and an input-token bucket of 500 (500 a second).
    let request = |tokens: f64| {
        vec![
            take("anthropic:requests_per_minute", 5.0, 5.0, 1.0),
            take("anthropic:input_tokens_per_minute", 500.0, 500.0, tokens),
        ]
    };
    assert!(
        store
            .take_from_buckets(request(300.0), at(100))
            .await
            .unwrap()
            .is_zero()
    );
    // 200 tokens left: a second request of 300 waits 200 ms for the missing 100, and takes
    // nothing meanwhile, not even its request.
    assert_eq!(
        other
            .take_from_buckets(request(300.0), at(100))
            .await
            .unwrap(),
        Duration::from_millis(200)
    );
    for _ in 0..4 {
        assert!(
            other
                .take_from_buckets(
                    vec![take("anthropic:requests_per_minute", 5.0, 5.0, 1.0)],
                    at(100)
                )
                .await
                .unwrap()
                .is_zero(),
            "the refused take drew a request"
        );
    }
    // The first request used only 100 tokens: 200 come back, and 300 fit at once.
    store
        .adjust_buckets(
            vec![BucketAdjust {
                name: "anthropic:input_tokens_per_minute".to_owned(),
                capacity: 500.0,
                per_second: 500.0,
                give_back: 200.0,
            }],
            at(100),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    let tokens_only = |amount: f64| {
        vec![take(
            "anthropic:input_tokens_per_minute",
            500.0,
            500.0,
            amount,
        )]
    };
    assert!(
        other
            .take_from_buckets(tokens_only(300.0), at(100))
            .await
            .unwrap()
            .is_zero()
    );
    // A request bigger than the bucket goes once it is full, into debt that the next waits
    // out; so does a correction that charges more than was taken.
    assert!(
        other
            .take_from_buckets(tokens_only(1_500.0), at(101))
            .await
            .unwrap()
            .is_zero()
    );
    store
        .adjust_buckets(
            vec![BucketAdjust {
                name: "anthropic:input_tokens_per_minute".to_owned(),
                capacity: 500.0,
                per_second: 500.0,
                give_back: -500.0,
            }],
            at(101),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    // At -1,500: 100 tokens need 1,600 of refill, 3.2 s.
    assert_eq!(
        store
            .take_from_buckets(tokens_only(100.0), at(101))
            .await
            .unwrap(),
        Duration::from_millis(3_200)
    );
    assert!(
        store
            .take_from_buckets(tokens_only(100.0), at_ms(104, 200))
            .await
            .unwrap()
            .is_zero()
    );
    // Refunds never fill a bucket past its capacity.
    store
        .adjust_buckets(
            vec![BucketAdjust {
                name: "anthropic:input_tokens_per_minute".to_owned(),
                capacity: 500.0,
                per_second: 500.0,
                give_back: 10_000.0,
            }],
            at(200),
        )
        .await
        .unwrap();
    store.flush().await.unwrap();
    assert!(
        store
            .take_from_buckets(tokens_only(500.0), at(200))
            .await
            .unwrap()
            .is_zero()
    );
    assert!(
        !store
            .take_from_buckets(tokens_only(1.0), at(200))
            .await
            .unwrap()
            .is_zero()
    );
    store.close().await.unwrap();
    other.close().await.unwrap();
}

pub(crate) async fn the_lowest_recently_reported_learned_limit_wins(fresh: Fresh) {
    let store = Store::open_at(&fresh.location).unwrap();
    let recent = Duration::from_secs(300);
    let limits = |pairs: &[(&str, u64)]| {
        pairs
            .iter()
            .map(|(kind, limit)| ((*kind).to_owned(), *limit))
            .collect::<Vec<_>>()
    };
    let read = |rows: Vec<fanout_core::store::LearnedLimit>| {
        rows.into_iter()
            .map(|row| (row.kind, row.limit_per_minute, row.reported_by))
            .collect::<Vec<_>>()
    };
    // Nothing learned yet.
    assert!(
        store
            .share_learned_limits("anthropic", "w1", Vec::new(), at(0), recent)
            .await
            .unwrap()
            .is_empty()
    );
    let seen = store
        .share_learned_limits(
            "anthropic",
            "w1",
            limits(&[
                ("requests_per_minute", 600),
                ("input_tokens_per_minute", 30_000),
            ]),
            at(10),
            recent,
        )
        .await
        .unwrap();
    assert_eq!(
        read(seen),
        [
            (
                "input_tokens_per_minute".to_owned(),
                30_000,
                Some("w1".to_owned())
            ),
            ("requests_per_minute".to_owned(), 600, Some("w1".to_owned())),
        ]
    );
    // Another worker sees a lower one: it wins; a higher report while it is recent does not.
    store
        .share_learned_limits(
            "anthropic",
            "w2",
            limits(&[("requests_per_minute", 50)]),
            at(20),
            recent,
        )
        .await
        .unwrap();
    let seen = store
        .share_learned_limits(
            "anthropic",
            "w1",
            limits(&[("requests_per_minute", 600)]),
            at(30),
            recent,
        )
        .await
        .unwrap();
    assert_eq!(
        read(seen)[1],
        ("requests_per_minute".to_owned(), 50, Some("w2".to_owned()))
    );
    // Another API's limits are its own.
    let openai = store
        .share_learned_limits(
            "openai",
            "w1",
            limits(&[("tokens_per_minute", 90_000)]),
            at(30),
            recent,
        )
        .await
        .unwrap();
    assert_eq!(read(openai).len(), 1);
    // Nobody reported 50 for longer than `recent`: the next report replaces it, and a row
    // nobody reported for that long is not read at all.
    let seen = store
        .share_learned_limits(
            "anthropic",
            "w1",
            limits(&[("requests_per_minute", 600)]),
            at(20 + 301),
            recent,
        )
        .await
        .unwrap();
    assert_eq!(
        read(seen),
        [("requests_per_minute".to_owned(), 600, Some("w1".to_owned()))],
        "the input-token limit was last reported at 10 s"
    );
    store.close().await.unwrap();
}

fn plan(run_id: &str, max_dollars: Option<f64>) -> RunPlanRecord {
    RunPlanRecord {
        run_id: run_id.into(),
        plan_hash: "sha256:abc".to_owned(),
        plan: r#"{"agents":[]}"#.to_owned(),
        workflow: "name: budget\n".to_owned(),
        workflow_path: None,
        base_commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        base_bundle: vec![1, 2, 3],
        max_dollars,
        created_at: at(0),
    }
}

fn unit(agent: &str, depends_on: &[&str], estimated_usd: f64) -> UnitSpec {
    UnitSpec {
        estimated_usd,
        ..UnitSpec::agent(
            agent.into(),
            depends_on.iter().map(|&id| id.into()).collect(),
        )
    }
}

async fn lease(store: &Store, owner: &str, now: u64, expires: u64) -> Option<Lease> {
    store
        .lease_unit(owner, Some(&"b".into()), at(now), at(expires))
        .await
        .unwrap()
}

/// Start the lease's attempt and commit it, having cost `dollars`.
async fn commit(store: &Store, lease: &Lease, dollars: f64, seconds: u64) {
    let mut row = start("b", lease.agent_id.as_str(), Mode::Default);
    row.attempt = lease.attempt;
    store.start_agent(row).await.unwrap();
    let mut finished = finish("b", lease.agent_id.as_str(), AgentStatus::Success);
    finished.attempt = lease.attempt;
    finished.cost_usd = dollars;
    store
        .commit_unit(UnitCommit {
            lease: lease.clone(),
            succeeded: true,
            patch: Vec::new(),
            outcome: json!({}),
            finish: finished,
            other_finishes: Vec::new(),
            at: at(seconds),
        })
        .await
        .unwrap();
}

pub(crate) async fn a_runs_budget_is_reserved_at_each_lease_and_settled_at_each_commit(
    fresh: Fresh,
) {
    const FAR: u64 = 10_000;
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("b", 0)).await.unwrap();
    // $3.00 for six units estimated at $1.00 each; `f` depends on `e`.
    store
        .publish_units(
            plan("b", Some(3.0)),
            vec![
                unit("a", &[], 1.0),
                unit("b", &[], 1.0),
                unit("c", &[], 1.0),
                unit("d", &[], 1.0),
                unit("e", &[], 1.0),
                unit("f", &["e"], 1.0),
            ],
        )
        .await
        .unwrap();
    let spend = || {
        StoreReader::open_at(&fresh.location)
            .unwrap()
            .run_spend(&"b".into())
            .unwrap()
            .unwrap()
    };
    assert_eq!(spend().max_dollars, Some(3.0));
    // Three fit; the fourth waits while they are in flight (another worker asks).
    let a = lease(&store, "w1", 1, FAR).await.unwrap();
    let b = lease(&store, "w2", 1, FAR).await.unwrap();
    let c = lease(&store, "w1", 1, FAR).await.unwrap();
    let mut row = start("b", "c", Mode::Default);
    row.attempt = c.attempt;
    store.start_agent(row).await.unwrap();
    assert_eq!(lease(&store, "w2", 1, FAR).await, None);
    assert_eq!(spend().reserved_usd, 3.0);
    // `a` cost half its estimate: the next reservations are halved.
    commit(&store, &a, 0.5, 2).await;
    let after = spend();
    assert_eq!(
        (
            after.spent_usd,
            after.reserved_usd,
            after.estimated_done_usd
        ),
        (0.5, 2.0, 1.0)
    );
    let d = lease(&store, "w2", 2, FAR).await.unwrap();
    assert_eq!(d.agent_id.as_str(), "d");
    assert_eq!(spend().reserved_usd, 2.5);
    assert_eq!(
        lease(&store, "w2", 2, FAR).await,
        None,
        "0.5 + 2.5 + 0.5 > 3"
    );
    // The worker holding `c` dies: its lease runs out, and the next lease takes `c` over with
    // the dead attempt's reservation counted as spent.
    commit(&store, &b, 0.25, 3).await;
    commit(&store, &d, 0.25, 3).await;
    let c2 = store
        .lease_unit("w2", Some(&"b".into()), at(FAR + 1), at(FAR + 100))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((c2.agent_id.as_str(), c2.attempt), ("c", 2));
    assert_ne!(c.owner, c2.owner);
    let after = spend();
    // Spent: 0.5 + 0.25 + 0.25 + the dead attempt's 1.0; estimates done: 4; the new
    // reservation at the scale 2/4.
    assert_eq!((after.spent_usd, after.estimated_done_usd), (2.0, 4.0));
    assert!((after.reserved_usd - 0.5).abs() < 1e-9, "{after:?}");
    commit(&store, &c2, 0.75, FAR + 2).await;
    // $2.75 spent, nothing in flight, and `e` would need 1.0 x 2.75/5: the budget is spent.
    // `e` and `f`, which only waits on it, are skipped and say why.
    assert_eq!(
        store
            .lease_unit("w1", Some(&"b".into()), at(FAR + 3), at(FAR + 100))
            .await
            .unwrap(),
        None
    );
    store.close().await.unwrap();
    let reader = StoreReader::open_at(&fresh.location).unwrap();
    let units: Vec<(String, UnitState, Option<String>, f64)> = reader
        .units(&"b".into())
        .unwrap()
        .into_iter()
        .map(|unit| {
            (
                unit.agent_id.to_string(),
                unit.state,
                unit.skip_reason,
                unit.reserved_usd,
            )
        })
        .collect();
    let reason = Some(BUDGET_EXHAUSTED.to_owned());
    assert_eq!(
        units,
        [
            ("a".to_owned(), UnitState::Committed, None, 0.0),
            ("b".to_owned(), UnitState::Committed, None, 0.0),
            ("c".to_owned(), UnitState::Committed, None, 0.0),
            ("d".to_owned(), UnitState::Committed, None, 0.0),
            ("e".to_owned(), UnitState::Skipped, reason.clone(), 0.0),
            ("f".to_owned(), UnitState::Skipped, reason, 0.0),
        ]
    );
    let last = reader.run_spend(&"b".into()).unwrap().unwrap();
    assert!((last.spent_usd - 2.75).abs() < 1e-9, "{last:?}");
    assert!(last.reserved_usd.abs() < 1e-9, "{last:?}");
    // The dead attempt's row was closed as a failure when its unit was taken over.
    let attempts: Vec<(String, u32, Option<AgentStatus>)> = reader
        .agent_runs(&"b".into())
        .unwrap()
        .into_iter()
        .filter(|row| row.agent_id.as_str() == "c")
        .map(|row| (row.agent_id.to_string(), row.attempt, row.status))
        .collect();
    assert_eq!(
        attempts,
        [
            ("c".to_owned(), 1, Some(AgentStatus::Failure)),
            ("c".to_owned(), 2, Some(AgentStatus::Success))
        ]
    );
}

pub(crate) async fn the_first_unit_starts_on_an_over_estimate_and_a_run_without_budget_is_free(
    fresh: Fresh,
) {
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("b", 0)).await.unwrap();
    store
        .publish_units(
            plan("b", Some(0.05)),
            vec![unit("a", &[], 0.22), unit("b", &[], 0.22)],
        )
        .await
        .unwrap();
    // Nothing learned yet: the first unit goes; the second waits for it.
    let a = lease(&store, "w", 1, 10_000).await.unwrap();
    assert_eq!(lease(&store, "w", 1, 10_000).await, None);
    // It cost $0.02: the second, at 0.22 x 0.02/0.22, fits.
    commit(&store, &a, 0.02, 2).await;
    assert!(lease(&store, "w", 2, 10_000).await.is_some());
    // A run without a budget leases everything and still counts what it spent, every
    // attempt of a unit tried again under its lease included.
    store.create_run(new_run("free", 0)).await.unwrap();
    store
        .publish_units(
            plan("free", None),
            (0..5).map(|i| unit(&format!("u{i}"), &[], 100.0)).collect(),
        )
        .await
        .unwrap();
    let mut leases = Vec::new();
    for _ in 0..5 {
        leases.push(
            store
                .lease_unit("w", Some(&"free".into()), at(3), at(10_000))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let first = &leases[0];
    let mut row = start("free", first.agent_id.as_str(), Mode::Default);
    row.attempt = first.attempt;
    store.start_agent(row.clone()).await.unwrap();
    let mut tried = finish("free", first.agent_id.as_str(), AgentStatus::Failure);
    tried.attempt = first.attempt;
    tried.cost_usd = 0.3;
    let again = store.next_unit_attempt(first, tried, row).await.unwrap();
    let mut finished = finish("free", first.agent_id.as_str(), AgentStatus::Success);
    finished.attempt = again.attempt;
    finished.cost_usd = 0.2;
    store
        .commit_unit(UnitCommit {
            lease: again,
            succeeded: true,
            patch: Vec::new(),
            outcome: json!({}),
            finish: finished,
            other_finishes: Vec::new(),
            at: at(4),
        })
        .await
        .unwrap();
    store.close().await.unwrap();
    let free = StoreReader::open_at(&fresh.location)
        .unwrap()
        .run_spend(&"free".into())
        .unwrap()
        .unwrap();
    assert_eq!((free.max_dollars, free.reserved_usd), (None, 0.0));
    assert!((free.spent_usd - 0.5).abs() < 1e-9, "{free:?}");
}

/// Workers leasing batches of one run at once when its budget is spent: each leaves the units
/// another one picked to it (PostgreSQL: a lease transaction holding its picks while it
/// waited for the run's row, which a skipping transaction held while it waited for those
/// picks, was a deadlock), none fails, and every unit still waiting ends skipped, once.
pub(crate) async fn workers_meeting_a_spent_budget_together_skip_the_rest_once(fresh: Fresh) {
    const FAR: u64 = 10_000;
    const UNITS: usize = 200;
    let store = Store::open_at(&fresh.location).unwrap();
    store.create_run(new_run("b", 0)).await.unwrap();
    let specs = (0..UNITS)
        .map(|i| unit(&format!("u{i:03}"), &[], 1.0))
        .collect();
    store
        .publish_units(plan("b", Some(2.0)), specs)
        .await
        .unwrap();
    // Two units spend the whole budget.
    for seconds in 1..=2 {
        let spent = lease(&store, "w0", seconds, FAR).await.unwrap();
        commit(&store, &spent, 1.0, seconds).await;
    }
    store.close().await.unwrap();
    let mut leasers = Vec::new();
    for worker in 0..4 {
        let location = fresh.location.clone();
        leasers.push(tokio::spawn(async move {
            let store = Store::open_at(&location).unwrap();
            let leased = store
                .lease_units_of(
                    &format!("w{}", worker + 1),
                    Some(&"b".into()),
                    &[UnitKind::Agent],
                    64,
                    at(5),
                    at(FAR),
                )
                .await;
            store.close().await.unwrap();
            leased
        }));
    }
    for leaser in leasers {
        let leased = leaser.await.unwrap().expect("a lease met an error");
        assert!(leased.is_empty(), "leased {leased:?} past a spent budget");
    }
    let units = StoreReader::open_at(&fresh.location)
        .unwrap()
        .unit_states(&"b".into())
        .unwrap();
    let skipped = units
        .iter()
        .filter(|unit| unit.state == UnitState::Skipped)
        .inspect(|unit| assert_eq!(unit.skip_reason.as_deref(), Some(BUDGET_EXHAUSTED)))
        .count();
    assert_eq!(skipped, UNITS - 2);
}
