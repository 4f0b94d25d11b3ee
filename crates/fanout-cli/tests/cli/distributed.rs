//! `fanout worker`: separate processes with separate caches share one run through a run
//! store; one is killed with SIGKILL while it holds a lease. The auth-refactor example's
//! 47-agent plan is published the way a coordinator publishes it (plan, hash, workflow, base
//! bundle, units), the committed patches are applied in commit order, and the tree must be
//! byte-identical to a single-process `fanout run` of the same plan.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use fanout_core::distributed::{base_bundle, publish_run};
use fanout_core::store::{
    AgentStatus, NewRun, RunStatus, Store, StoreLocation, StoreReader, UnitState,
};

use super::{TASK, example, example_repo, fanout, git};

/// The tree of the work tree's files (fanout's own `.fanout/` and the run log's `logs/` left
/// out), as git hashes it: equal ids mean byte-identical trees.
fn tree_id(repo: &Path) -> String {
    git(repo, &["add", "-A", "--", ".", ":!logs"]);
    git(repo, &["write-tree"]).trim().to_owned()
}

fn worker(
    store: &Path,
    cache: &Path,
    run_id: &str,
    name: &str,
    lease: &str,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"));
    command
        .args(["worker", "--store"])
        .arg(store)
        .arg("--cache")
        .arg(cache)
        .args([
            "--run",
            run_id,
            "--exit-when-done",
            "--slots",
            "4",
            "--lease-seconds",
            lease,
            "--name",
            name,
        ])
        // Not in the user's repository: a worker never needs it.
        .current_dir(cache);
    command
}

/// [`worker`] with the in-process simulator playing the example's scenario.
fn sim_worker(
    store: &Path,
    cache: &Path,
    run_id: &str,
    name: &str,
    lease: &str,
) -> std::process::Command {
    let mut command = worker(store, cache, run_id, name, lease);
    command
        .args(["--scenario", &example("scenario.yaml")])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    command
}

/// `fanout sim` as a process of its own (every worker's model API), limited to `rpm`
/// requests a minute and recording every exchange to `record`; its base URL.
fn sim_process(rpm: &str, scenario: &str, record: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "sim",
            "--port",
            "0",
            "--rpm",
            rpm,
            "--latency-ms",
            "100",
            "--scenario",
            scenario,
            "--record",
        ])
        .arg(record)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (child, url)
}

#[test]
fn workers_in_separate_processes_share_a_run_and_a_killed_workers_unit_is_taken_over() {
    let repo = example_repo();
    let output = fanout(
        &[
            "plan",
            &example("claude-workflows.yaml"),
            "--scenario",
            &example("scenario.yaml"),
            "--task",
            TASK,
            "--json",
        ],
        repo.path(),
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let plan_path = report["saved"]["path"].as_str().unwrap().to_owned();
    let run_id = report["saved"]["run_id"].as_str().unwrap().to_owned();
    let plan = fanout_core::plan::load_plan(Path::new(&plan_path))
        .unwrap()
        .plan;
    let agents = plan.subtasks.len();
    assert_eq!(agents, 47);

    // What a coordinator stores for its workers.
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("store.db");
    let base = git(repo.path(), &["rev-parse", "HEAD"]).trim().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open_at(&StoreLocation::Sqlite(db.clone())).unwrap();
        store
            .create_run(NewRun {
                run_id: run_id.as_str().into(),
                workflow: "auth-refactor".to_owned(),
                config_path: None,
                plan_hash: None,
                repo: None,
                status: RunStatus::Running,
                started_at: SystemTime::now(),
                base_commit: Some(base.clone()),
                agents_planned: agents as u32,
                simulated: true,
            })
            .await
            .unwrap();
        let bundle = base_bundle(repo.path(), &base).unwrap();
        let workflow = std::fs::read_to_string(example("claude-workflows.yaml")).unwrap();
        publish_run(
            &store,
            &run_id.as_str().into(),
            &plan,
            workflow,
            Some("claude-workflows.yaml".to_owned()),
            &base,
            bundle,
        )
        .await
        .unwrap();
        store.close().await.unwrap();
    });
    let location = StoreLocation::Sqlite(db.clone());
    let units = || {
        StoreReader::open_at(&location)
            .unwrap()
            .units(&run_id.as_str().into())
            .unwrap()
    };

    // A worker whose answers are slow holds leases of 3 s; it is killed while it holds some.
    let caches: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut doomed = sim_worker(&db, caches[0].path(), &run_id, "doomed", "3")
        .arg("--sim-latency-ms")
        .arg("400")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    super::wait_for("the first worker to hold leases", || {
        units()
            .iter()
            .any(|unit| unit.lease_owner.as_deref() == Some("doomed"))
    });
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let held: Vec<String> = units()
        .iter()
        .filter(|unit| {
            unit.state == UnitState::Leased && unit.lease_owner.as_deref() == Some("doomed")
        })
        .map(|unit| unit.agent_id.to_string())
        .collect();
    assert!(!held.is_empty(), "the killed worker held no lease");

    let survivors: Vec<_> = ["left", "right"]
        .iter()
        .zip(&caches[1..])
        .map(|(name, cache)| sim_worker(&db, cache.path(), &run_id, name, "30").output_async())
        .collect();
    for child in survivors {
        let output = exit_within(child, std::time::Duration::from_secs(300));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Every unit committed once, as a success; the killed worker's units by someone else,
    // as a later attempt.
    let units = units();
    assert_eq!(units.len(), agents);
    let mut seqs: Vec<u64> = Vec::new();
    for unit in &units {
        assert_eq!(unit.state, UnitState::Committed, "{}", unit.agent_id);
        seqs.push(unit.commit_seq.unwrap());
        if held.contains(&unit.agent_id.to_string()) {
            assert!(
                unit.attempt >= 2,
                "{} attempt {}",
                unit.agent_id,
                unit.attempt
            );
            assert_ne!(unit.lease_owner.as_deref(), Some("doomed"));
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=agents as u64).collect::<Vec<_>>());
    let reader = StoreReader::open_at(&location).unwrap();
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    for row in reader.agent_runs(&run_id.as_str().into()).unwrap() {
        if row.status == Some(AgentStatus::Success) {
            *successes.entry(row.agent_id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(successes.len(), agents);
    assert!(successes.values().all(|&n| n == 1), "{successes:?}");

    // Patches applied in commit order: each file edited once, the same tree as one process.
    let mut ordered: Vec<_> = units.iter().collect();
    ordered.sort_by_key(|unit| unit.commit_seq);
    let mut edited: BTreeMap<String, usize> = BTreeMap::new();
    for unit in ordered {
        let patch = unit.patch.clone().unwrap_or_default();
        if patch.is_empty() {
            continue;
        }
        for line in String::from_utf8_lossy(&patch).lines() {
            if let Some(path) = line.strip_prefix("+++ b/") {
                *edited.entry(path.to_owned()).or_default() += 1;
            }
        }
        let mut apply = std::process::Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["apply", "--binary", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        apply.stdin.take().unwrap().write_all(&patch).unwrap();
        assert!(apply.wait().unwrap().success(), "{}", unit.agent_id);
    }
    assert!(edited.len() >= 40, "{edited:?}");
    assert!(edited.values().all(|&n| n == 1), "{edited:?}");

    assert_eq!(tree_id(repo.path()), single_process_tree(&plan_path));
}

/// The tree id a single-process `fanout run` of `plan_path` makes in a fresh copy of the
/// example: what a distributed run must end byte-identical to.
fn single_process_tree(plan_path: &str) -> String {
    let single = example_repo();
    let output = fanout(
        &[
            "run",
            &example("claude-workflows.yaml"),
            "--plan",
            plan_path,
            "--scenario",
            &example("scenario.yaml"),
        ],
        single.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    tree_id(single.path())
}

/// Send `requests` small requests to the model API at `base_url` at once (as another team
/// sharing the organisation's limit would), so that its rate bucket is empty when a run
/// starts; how many the server recorded (all of them, answered or refused).
fn drain(base_url: &str, requests: usize) -> usize {
    use std::io::{Read, Write};
    let address = base_url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: {address}\r\ncontent-type: application/json\r\nx-api-key: sk-test\r\nanthropic-version: 2023-06-01\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let threads: Vec<_> = (0..50)
        .map(|thread| {
            let address = address.clone();
            let request = request.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                for _ in (thread..requests).step_by(50) {
                    let mut stream = std::net::TcpStream::connect(&address).unwrap();
                    stream.write_all(request.as_bytes()).unwrap();
                    let mut answer = String::new();
                    stream.read_to_string(&mut answer).unwrap();
                    statuses.push(answer.split(' ').nth(1).unwrap_or_default().to_owned());
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<String> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    assert_eq!(statuses.len(), requests);
    assert!(
        statuses.iter().any(|status| status == "200"),
        "{statuses:?}"
    );
    requests
}

/// A child process's output once it exits; killed after `limit`, so a worker that never
/// finishes fails the test instead of hanging it. Polls: a `Child` has no wait with a timeout.
fn exit_within(mut child: std::process::Child, limit: std::time::Duration) -> std::process::Output {
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

trait OutputAsync {
    fn output_async(&mut self) -> std::process::Child;
}

impl OutputAsync for std::process::Command {
    /// Start with stdout and stderr captured, to be collected with `wait_with_output`.
    fn output_async(&mut self) -> std::process::Child {
        self.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// The acceptance scenario: a 300-agent plan (agent i rewrites `src/file_i`); a pure
/// coordinator (`--local-slots 0`) on PostgreSQL; three worker processes with separate
/// caches outside the repository; the model API a separate `fanout sim` limited to 600
/// requests a minute, the limit in the workflow. One worker is killed with SIGKILL while it
/// holds leases, then the coordinator mid-run; the run is resumed from another clone of the
/// repository. Every agent succeeds once, each file is edited once, the clone ends
/// byte-identical to a single-process run, and at most 2 % of requests are answered 429.
/// Runs when `FANOUT_TEST_POSTGRES_URL` names a server.
#[test]
fn a_coordinator_and_three_workers_survive_kill_9_of_a_worker_and_of_the_coordinator() {
    const AGENTS: usize = 300;
    let Some(database) = super::postgres_store::Database::create_for("distributed") else {
        return;
    };
    let url = database.url.clone();
    let repo = super::trust::small_repo(AGENTS);
    let outside = tempfile::tempdir().unwrap();
    // The organisation's limit, in the workflow and enforced by the model API.
    let workflow = super::trust::edit_workflow(
        outside.path(),
        "  rate_limits:\n    requests_per_minute: 600\n",
    )
    .display()
    .to_string();
    let plan_path = super::trust::edit_plan(outside.path(), AGENTS)
        .display()
        .to_string();
    let scenario = outside.path().join("scenario.yaml");
    std::fs::write(&scenario, super::live_run::SCENARIO).unwrap();
    let scenario = scenario.display().to_string();
    let record = outside.path().join("sim.jsonl");
    let (mut sim, base_url) = sim_process("600", &scenario, &record);
    // Someone else in the organisation has just used up its minute: a fresh server's full
    // bucket (600 requests) would otherwise absorb any fleet's excess, shared limit or not.
    let drained = drain(&base_url, 600);

    let mut coordinator = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args([
            "run",
            &workflow,
            "--plan",
            &plan_path,
            "--store",
            &url,
            "--local-slots",
            "0",
            "--repo",
        ])
        .arg(repo.path())
        .env("ANTHROPIC_BASE_URL", &base_url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let location = StoreLocation::parse(&url, repo.path()).unwrap();
    let mut run_id = String::new();
    super::wait_for("the coordinator to publish the run", || {
        let Ok(reader) = StoreReader::open_at(&location) else {
            return false;
        };
        match reader
            .query_raw("SELECT run_id FROM run_plans", &[])
            .unwrap()
            .first()
            .and_then(|row| row.first())
        {
            Some(fanout_core::store::SqlValue::Text(id)) => {
                run_id = id.clone();
                true
            }
            _ => false,
        }
    });
    let units = || {
        StoreReader::open_at(&location)
            .unwrap()
            .units(&run_id.as_str().into())
            .unwrap()
    };
    assert_eq!(units().len(), AGENTS);

    let store_arg = std::path::PathBuf::from(&url);
    let caches: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let on_sim = |mut command: std::process::Command| {
        command
            .env("ANTHROPIC_BASE_URL", &base_url)
            .env("ANTHROPIC_API_KEY", "sk-test");
        command
    };
    let mut doomed = on_sim(worker(&store_arg, caches[0].path(), &run_id, "doomed", "3"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    super::wait_for("the first worker to hold leases", || {
        units()
            .iter()
            .any(|unit| unit.lease_owner.as_deref() == Some("doomed"))
    });
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let survivors: Vec<_> = ["left", "right"]
        .iter()
        .zip(&caches[1..])
        .map(|(name, cache)| {
            on_sim(worker(&store_arg, cache.path(), &run_id, name, "30")).output_async()
        })
        .collect();
    // The limit paces the run (600 requests take a minute): the coordinator dies mid-way.
    super::wait_for("the coordinator to apply a tenth of the patches", || {
        units()
            .iter()
            .filter(|unit| unit.applied_at.is_some())
            .count()
            >= AGENTS / 10
    });
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let committed_at_kill = units()
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .count();
    assert!(
        committed_at_kill < AGENTS,
        "the coordinator was killed after the run ({committed_at_kill} committed)"
    );
    eprintln!("coordinator killed with {committed_at_kill} of {AGENTS} units committed");

    // Resumed from another clone of the repository, which has none of the patches yet.
    let elsewhere = tempfile::tempdir().unwrap();
    let clone = elsewhere.path().join("clone");
    git(
        elsewhere.path(),
        &["clone", "-q", &repo.path().display().to_string(), "clone"],
    );
    let resumed = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["resume", &run_id, "--store", &url, "--json", "--repo"])
        .arg(&clone)
        .current_dir(elsewhere.path())
        // Its closing synthesis is a model call too.
        .env("ANTHROPIC_BASE_URL", &base_url)
        .env("ANTHROPIC_API_KEY", "sk-test")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    for child in survivors {
        let output = exit_within(child, std::time::Duration::from_secs(600));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let outcome = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["event"] == "run_finished")
        .expect("a run_finished line")["outcome"]
        .clone();
    assert_eq!(outcome["status"], "completed", "{outcome}");
    assert_eq!(outcome["succeeded"], AGENTS);
    assert_eq!(outcome["files_changed"], AGENTS);
    assert_eq!(outcome["out_of_scope"], serde_json::json!([]));

    let units = units();
    assert!(units.iter().all(|unit| unit.state == UnitState::Committed));
    assert!(units.iter().all(|unit| unit.applied_at.is_some()));
    // Each file edited by exactly one committed patch.
    let mut edited: BTreeMap<String, usize> = BTreeMap::new();
    for unit in &units {
        let patch = unit.patch.clone().unwrap_or_default();
        for line in String::from_utf8_lossy(&patch).lines() {
            if let Some(path) = line.strip_prefix("+++ b/") {
                *edited.entry(path.to_owned()).or_default() += 1;
            }
        }
    }
    assert_eq!(edited.len(), AGENTS, "{edited:?}");
    assert!(edited.values().all(|&n| n == 1), "{edited:?}");
    let reader = StoreReader::open_at(&location).unwrap();
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    for row in reader.agent_runs(&run_id.as_str().into()).unwrap() {
        if row.status == Some(AgentStatus::Success) {
            *successes.entry(row.agent_id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(successes.len(), AGENTS);
    assert!(successes.values().all(|&n| n == 1), "{successes:?}");
    let run = reader
        .run_summary(&run_id.as_str().into())
        .unwrap()
        .unwrap();
    assert_eq!(run.run.status, RunStatus::Completed);

    // The same tree as one process running the plan alone.
    let single = super::trust::small_repo(AGENTS);
    let unlimited = tempfile::tempdir().unwrap();
    let output = fanout(
        &[
            "run",
            &super::trust::edit_workflow(unlimited.path(), "")
                .display()
                .to_string(),
            "--plan",
            &plan_path,
            "--scenario",
            &scenario,
        ],
        single.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(tree_id(&clone), tree_id(single.path()));

    // Three workers (one killed) and two coordinators together stayed under the limit.
    sim.kill().unwrap();
    sim.wait().unwrap();
    let statuses: Vec<u64> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .skip(drained)
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["status"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let limited = statuses.iter().filter(|&&status| status == 429).count();
    eprintln!(
        "{} requests after {drained} others drained the limit, {limited} answered 429",
        statuses.len()
    );
    assert!(statuses.len() >= AGENTS * 2, "{} requests", statuses.len());
    assert!(
        limited * 50 <= statuses.len(),
        "{limited} of {} requests answered 429",
        statuses.len()
    );
}
