//! Several workers in this process — `distributed::work` calls, each with a cache and a store
//! handle of its own, as workers on separate machines have — sharing runs through one store,
//! against the simulator over HTTP. What they must hold together, not each on its own: the
//! workflow's token limits and the limits one of them learned from response headers.
//!
//! These run on wall-clock time: the shared buckets live in the store, whose rows every
//! process reads with its own clock.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fanout_core::backend::Backend;
use fanout_core::config::RateLimits;
use fanout_core::distributed::{
    StoreLimits, WorkerOptions, WorkerReport, base_bundle, publish_run, work,
};
use fanout_core::governor::shared::{SharedLimits, Take, Used};
use fanout_core::governor::{Cost, GovernorConfig};
use fanout_core::plan::Plan;
use fanout_core::provider::http::HttpConfig;
use fanout_core::store::{NewRun, RunStatus, Store, StoreLocation, UnitState};
use fanout_sim::{Sim, SimConfig, SimHandle};
use tokio_util::sync::CancellationToken;

use crate::support::git;

/// A workflow whose agents may edit their one file, with `rate_limits` as given (YAML lines
/// under `rate_limits:`, or `{}`).
fn workflow(rate_limits: &str) -> String {
    format!(
        "workflow:\n  name: shared-limits\n  max_parallel_agents: 50\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n    shell_exec: deny\n  rate_limits:{rate_limits}\n"
    )
}

/// A committed repository of `files` files `src/file_NNN.txt`.
fn repository(files: usize) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("src")).unwrap();
    for i in 0..files {
        std::fs::write(
            repo.path().join(format!("src/file_{i:03}.txt")),
            format!("original {i}\n"),
        )
        .unwrap();
    }
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "initial"]);
    repo
}

/// A plan of agents `first..first + count`, agent i editing `src/file_NNN.txt`.
fn plan(first: usize, count: usize) -> Plan {
    let subtasks: Vec<serde_json::Value> = (first..first + count)
        .map(|i| {
            serde_json::json!({
                "task_id": format!("edit-{i:03}"),
                "description": format!("Rewrite src/file_{i:03}.txt"),
                "scope": [format!("src/file_{i:03}.txt")],
                "tools": ["read_file", "write_file", "edit_file"],
                "mode": "default",
                "depends_on": []
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({"workflow": "shared-limits", "subtasks": subtasks}))
        .unwrap()
}

/// Record run `run_id` and publish `plan` under `workflow`, as a coordinator does.
async fn publish(location: &StoreLocation, repo: &Path, run_id: &str, plan: &Plan, workflow: &str) {
    let store = Store::open_at(location).unwrap();
    let base = git(repo, &["rev-parse", "HEAD"]).trim().to_owned();
    store
        .create_run(NewRun {
            run_id: run_id.into(),
            workflow: "shared-limits".to_owned(),
            config_path: None,
            plan_hash: None,
            repo: None,
            status: RunStatus::Running,
            started_at: SystemTime::now(),
            base_commit: Some(base.clone()),
            agents_planned: plan.subtasks.len() as u32,
            simulated: true,
        })
        .await
        .unwrap();
    let bundle = base_bundle(repo, &base).unwrap();
    publish_run(
        &store,
        &run_id.into(),
        plan,
        workflow.to_owned(),
        None,
        &base,
        bundle,
        &[],
    )
    .await
    .unwrap();
    store.close().await.unwrap();
}

/// `workers` workers of `slots` slots each, every one with a cache of its own, on run
/// `run_id` until it has nothing left; their reports.
async fn run_workers(
    location: &StoreLocation,
    sim: &SimHandle,
    run_id: &str,
    workers: usize,
    slots: usize,
) -> Vec<WorkerReport> {
    let caches: Vec<_> = (0..workers).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (index, cache) in caches.iter().enumerate() {
        let mut options = WorkerOptions::new(
            location.clone(),
            cache.path().to_path_buf(),
            slots,
            format!("worker-{run_id}-{index}"),
        );
        options.run = Some(run_id.into());
        options.exit_when_done = true;
        options.poll = Duration::from_millis(50);
        let backend = Arc::new(Backend::at(sim.base_url(), HttpConfig::default()));
        tasks.spawn(async move {
            work(options, backend, &CancellationToken::new())
                .await
                .unwrap()
        });
    }
    let mut reports = Vec::new();
    while let Some(report) = tasks.join_next().await {
        reports.push(report.unwrap());
    }
    reports
}

fn units_committed(location: &StoreLocation, run_id: &str) -> usize {
    fanout_core::store::StoreReader::open_at(location)
        .unwrap()
        .units(&run_id.into())
        .unwrap()
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .count()
}

/// The workflow's input-tokens-per-minute limit, held by three workers together against a
/// server enforcing it: their agents together send about 1.2 times the limit, which each
/// worker's own governor would let through at once (a full minute's burst each), so without
/// the shared buckets the server refuses a good part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_stay_under_the_workflows_input_token_limit_together() {
    const AGENTS: usize = 16;
    const ITPM: u64 = 24_000;
    let sim = Sim::start(
        SimConfig {
            latency: Duration::from_millis(50),
            itpm: Some(ITPM),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let repo = repository(AGENTS);
    let store_dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(store_dir.path().join("store.db"));
    let workflow = workflow(&format!("\n    input_tokens_per_minute: {ITPM}"));
    publish(
        &location,
        repo.path(),
        "tokens",
        &plan(0, AGENTS),
        &workflow,
    )
    .await;

    let started = Instant::now();
    let reports = run_workers(&location, &sim, "tokens", 3, 4).await;
    let took = started.elapsed();
    let stats = sim.stats();
    eprintln!(
        "{} requests, {} answered 429, {} input tokens admitted, {:.1} s; workers {reports:?}",
        stats.requests_total,
        stats.rate_limited,
        stats.input_tokens,
        took.as_secs_f64()
    );
    assert_eq!(units_committed(&location, "tokens"), AGENTS, "{reports:?}");
    assert!(
        stats.input_tokens > ITPM,
        "the run must send more than the limit's burst to mean anything ({} tokens)",
        stats.input_tokens
    );
    assert!(
        stats.rate_limited * 50 <= stats.requests_total,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.requests_total
    );
}

/// No limit in the workflow; the server announces its requests-per-minute limit in its
/// headers. A first worker learns it while it runs one run; a second worker, started
/// afterwards on another run with a cache and a store handle of its own, paces its requests
/// to that limit from its first request on, though it never saw a header before it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limit_one_worker_learned_paces_another_workers_fleet() {
    const RPM: u64 = 120;
    let sim = Sim::start(
        SimConfig {
            latency: Duration::from_millis(20),
            rpm: Some(RPM),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let repo = repository(8);
    let store_dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(store_dir.path().join("store.db"));
    let workflow = workflow(" {}");
    publish(&location, repo.path(), "first", &plan(0, 2), &workflow).await;
    publish(&location, repo.path(), "second", &plan(2, 6), &workflow).await;

    run_workers(&location, &sim, "first", 1, 2).await;
    assert_eq!(units_committed(&location, "first"), 2);
    let before = sim.exchanges().len();

    run_workers(&location, &sim, "second", 1, 6).await;
    assert_eq!(units_committed(&location, "second"), 6);
    let times: Vec<u64> = sim
        .exchanges()
        .iter()
        .skip(before)
        .filter(|exchange| exchange.endpoint == "messages")
        .map(|exchange| exchange.at_ms)
        .collect();
    let span = Duration::from_millis(times.last().unwrap() - times.first().unwrap());
    // The shared bucket holds one second's worth (2 requests) and refills 2 a second.
    let floor = Duration::from_secs_f64((times.len() as f64 - 2.0) / (RPM as f64 / 60.0));
    eprintln!(
        "the second worker sent {} requests over {span:?} (floor {floor:?}); {} answered 429 in all",
        times.len(),
        sim.stats().rate_limited
    );
    assert!(
        span.as_secs_f64() >= floor.as_secs_f64() * 0.9,
        "{} requests in {span:?}: the learned limit is {RPM}/min",
        times.len()
    );
}

/// The shared limits of a worker named `name` on a store at `location`, under `rate_limits`.
async fn limits_of(location: &StoreLocation, name: &str, rate_limits: RateLimits) -> StoreLimits {
    StoreLimits::open(
        Store::open_at(location).unwrap(),
        "anthropic".to_owned(),
        name.to_owned(),
        &rate_limits,
        &GovernorConfig::default(),
    )
    .await
}

/// A worker spends credit it took from the shared buckets: a busy worker's requests cost the
/// store a few writes, not one take per request (on PostgreSQL, every worker queued on the
/// one bucket row), and the correction after each answer stays in the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_spends_credit_from_the_shared_buckets_not_a_store_write_per_request() {
    let store_dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(store_dir.path().join("store.db"));
    let store = Store::open_at(&location).unwrap();
    let limits = StoreLimits::open(
        store.clone(),
        "anthropic".to_owned(),
        "busy".to_owned(),
        &RateLimits {
            output_tokens_per_minute: Some(60_000_000),
            ..RateLimits::default()
        },
        &GovernorConfig::default(),
    )
    .await;
    let cost = Cost {
        input_tokens: 1_000,
        output_tokens: 200,
    };
    for _ in 0..200 {
        let Take::Taken(taken) = limits.take(cost).await else {
            panic!("a bucket of a million tokens a second made a 200-token request wait");
        };
        assert!(taken.from[2], "the output-token limit was not taken from");
        let used = Cost {
            input_tokens: 1_000,
            output_tokens: 150,
        };
        limits.settle(taken, Used::Answered(used), None).await;
    }
    drop(limits);
    let stats = store.close().await.unwrap();
    // Opening reads what the fleet learned (one write); then a few takes of credit.
    assert!(
        stats.ops <= 10,
        "200 requests cost the store {} operations",
        stats.ops
    );
}

/// Credit never lets a fleet send more than its buckets gave: two workers asking in turn, as
/// fast as they can, get no more requests than the shared bucket holds and refills meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_never_lets_two_workers_take_more_than_their_shared_bucket_gave() {
    let store_dir = tempfile::tempdir().unwrap();
    let location = StoreLocation::Sqlite(store_dir.path().join("store.db"));
    let rate_limits = RateLimits {
        requests_per_minute: Some(600),
        ..RateLimits::default()
    };
    let first = limits_of(&location, "first", rate_limits).await;
    let second = limits_of(&location, "second", rate_limits).await;
    let cost = Cost {
        input_tokens: 10,
        output_tokens: 10,
    };
    let started = Instant::now();
    let mut sent = 0u32;
    for turn in 0..60 {
        let limits = if turn % 2 == 0 { &first } else { &second };
        if let Take::Taken(taken) = limits.take(cost).await {
            assert!(taken.from[0], "the requests limit was not taken from");
            sent += 1;
            limits.settle(taken, Used::Answered(cost), None).await;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // 600 a minute less the governor's headroom: a bucket of one second's worth.
    let per_second = 600.0 * (1.0 - GovernorConfig::default().headroom) / 60.0;
    let most = (per_second + per_second * elapsed).floor() as u32;
    eprintln!("{sent} of 60 requests taken over {elapsed:.3} s (at most {most})");
    assert!(
        sent <= most,
        "{sent} requests taken; the bucket gave at most {most}"
    );
    assert!(
        sent >= per_second.floor() as u32 - 1,
        "{sent} requests taken from a full bucket of {per_second}"
    );
}
