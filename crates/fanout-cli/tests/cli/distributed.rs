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
    AgentStatus, NewRun, RunStatus, Store, StoreLocation, StoreReader, UnitRow, UnitState,
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

/// [`worker`] with the in-process simulator playing `scenario`.
fn sim_worker(
    store: &Path,
    cache: &Path,
    run_id: &str,
    name: &str,
    lease: &str,
    scenario: &str,
) -> std::process::Command {
    let mut command = worker(store, cache, run_id, name, lease);
    command
        .args(["--scenario", scenario])
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    command
}

/// `fanout sim` as a process of its own (every worker's model API), limited to `rpm`
/// requests a minute and recording every exchange to `record`; its base URL.
fn sim_process(rpm: &str, scenario: &str, record: &Path) -> (SimProcess, String) {
    sim_process_with(
        &["--rpm", rpm, "--latency-ms", "100", "--scenario", scenario],
        record,
    )
}

/// A `fanout sim` process, killed when dropped: a failing test does not leave it running.
struct SimProcess(std::process::Child);

impl SimProcess {
    /// Kill it and wait for it (its record is complete afterwards).
    fn stop(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `fanout sim` as a process of its own with `options`, recording every exchange to
/// `record`; its base URL.
fn sim_process_with(options: &[&str], record: &Path) -> (SimProcess, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["sim", "--port", "0"])
        .args(options)
        .arg("--record")
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
    (SimProcess(child), url)
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
    let location = StoreLocation::Sqlite(db.clone());
    publish(
        &location,
        repo.path(),
        &run_id,
        &plan,
        Path::new(&example("claude-workflows.yaml")),
        Some("claude-workflows.yaml"),
    );
    let units = || {
        StoreReader::open_at(&location)
            .unwrap()
            .units(&run_id.as_str().into())
            .unwrap()
    };

    // A worker whose answers are slow holds leases of 3 s; it is killed while it holds some.
    let caches: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let scenario = example("scenario.yaml");
    let mut doomed = sim_worker(&db, caches[0].path(), &run_id, "doomed", "3", &scenario)
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
        .map(|(name, cache)| {
            sim_worker(&db, cache.path(), &run_id, name, "30", &scenario).output_async()
        })
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
    let edited = apply_in_commit_order(repo.path(), &units);
    assert!(edited.len() >= 40, "{edited:?}");
    assert!(edited.values().all(|&n| n == 1), "{edited:?}");

    assert_eq!(tree_id(repo.path()), single_process_tree(&plan_path));
}

/// Record run `run_id` of `plan` at `location` and publish it as a coordinator does (the
/// plan, its hash, the workflow file's text, the base bundle of `repo`'s HEAD, the units).
fn publish(
    location: &StoreLocation,
    repo: &Path,
    run_id: &str,
    plan: &fanout_core::plan::Plan,
    workflow: &Path,
    workflow_path: Option<&str>,
) {
    let base = git(repo, &["rev-parse", "HEAD"]).trim().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open_at(location).unwrap();
        store
            .create_run(NewRun {
                run_id: run_id.into(),
                workflow: plan.workflow.clone(),
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
            std::fs::read_to_string(workflow).unwrap(),
            workflow_path.map(str::to_owned),
            &base,
            bundle,
            &[],
        )
        .await
        .unwrap();
        store.close().await.unwrap();
    });
}

/// Apply the committed units' patches to `repo` in commit order, as a coordinator does;
/// how often each file was edited.
fn apply_in_commit_order(repo: &Path, units: &[UnitRow]) -> BTreeMap<String, usize> {
    let mut ordered: Vec<_> = units
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .collect();
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
            .arg(repo)
            .args(["apply", "--binary", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        apply.stdin.take().unwrap().write_all(&patch).unwrap();
        assert!(apply.wait().unwrap().success(), "{}", unit.agent_id);
    }
    edited
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
    let (sim, base_url) = sim_process("600", &scenario, &record);
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
        // The report on stdout names the first error, if any.
        assert!(
            output.status.success(),
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
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
    sim.stop();
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

/// Scenario rules: the first request of `model` for the agent that may change `file` is
/// answered 529 on each of the fleet's six tries, once: the attempt that sends it ends with
/// a provider error, the next one gets through.
fn outage_rules(model: &str, file: &str) -> String {
    (0..6)
        .map(|retry| {
            format!(
                r#"
  - name: outage-{file}-{retry}
    match:
      model: '{model}'
      system: 'Files you may change \(nothing else\):\n- {file}'
      turn: 1
      attempt: {retry}
    times: 1
    error: {{status: 529, type: overloaded_error, message: "Overloaded", headers: {{retry-after-ms: "1"}}}}"#
            )
        })
        .collect()
}

/// Every agent writes its file and reports success, except: `edit-000` (fast) reports an
/// invalid result on the fast model; `edit-002` (fast) reports `partial` on the fast model,
/// and its first request on `default` meets an outage; `edit-001` (default) meets an outage
/// on its first request.
fn retry_scenario() -> String {
    format!(
        r#"rules:{}{}
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {{name: write_file, input: {{path: "${{file}}", content: "edited ${{file}} by its agent\n"}}}}
  - name: invalid-on-fast
    match:
      model: 'claude-haiku-4-5'
      system: 'Files you may change \(nothing else\):\n- src/file_000.txt'
    tool_use: {{name: report_result, input: {{status: 42}}}}
  - name: partial-on-fast
    match:
      model: 'claude-haiku-4-5'
      system: 'Files you may change \(nothing else\):\n- src/file_002.txt'
    tool_use:
      name: report_result
      input: {{status: partial, summary: "half done", files_changed: [src/file_002.txt]}}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
    tool_use:
      name: report_result
      input: {{status: success, summary: "rewrote ${{file}}", files_changed: ["${{file}}"]}}
"#,
        outage_rules("claude-sonnet-4-5", "src/file_001.txt"),
        outage_rules("claude-sonnet-4-5", "src/file_002.txt"),
    )
}

/// One `agent_runs` row as the comparisons need it: agent, attempt, status, escalated, mode,
/// model, error.
type Attempt = (String, u32, String, bool, String, String, String);

fn attempts(reader: &StoreReader, run_id: &str) -> Vec<Attempt> {
    let mut rows: Vec<Attempt> = reader
        .agent_runs(&run_id.into())
        .unwrap()
        .into_iter()
        .map(|row| {
            (
                row.agent_id.to_string(),
                row.attempt,
                row.status
                    .map(|status| status.as_str().to_owned())
                    .unwrap_or_default(),
                row.escalated,
                row.mode
                    .map(|mode| mode.as_str().to_owned())
                    .unwrap_or_default(),
                row.model.unwrap_or_default(),
                row.error.unwrap_or_default(),
            )
        })
        .collect();
    rows.sort();
    rows
}

/// A worker tries an agent as hard as a local run does: a `fast` agent whose result is invalid
/// or who reports it did not finish gets one attempt on `default` (escalated), a provider
/// outage that outlasts the fleet's own retries gets another attempt, each attempt is a row of
/// its own with a number of its own, and the units end committed with the same tree and the
/// same `agent_runs` rows as a local `fanout run` of the same plan against the same scenario.
#[test]
fn a_worker_escalates_and_retries_an_agent_exactly_as_a_local_run_does() {
    let agents = 4;
    let work = tempfile::tempdir().unwrap();
    let scenario = work.path().join("retry.yaml");
    std::fs::write(&scenario, retry_scenario()).unwrap();
    let scenario = scenario.display().to_string();
    let workflow = super::resume::workflow(work.path(), 4);
    let plan_path = super::resume::plan(work.path(), agents);
    let plan = fanout_core::plan::load_plan(&plan_path).unwrap().plan;

    // The local run.
    let local = super::resume::repository(agents);
    let output = fanout(
        &[
            "run",
            &workflow.display().to_string(),
            "--plan",
            &plan_path.display().to_string(),
            "--scenario",
            &scenario,
        ],
        local.path(),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let local_run = super::resume::run_ids(local.path()).pop().unwrap();
    let local_rows = attempts(
        &StoreReader::open_in_repo(local.path()).unwrap(),
        &local_run,
    );

    // The same plan through a worker.
    let repo = super::resume::repository(agents);
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("store.db");
    let location = StoreLocation::Sqlite(db.clone());
    let run_id = "distributed-retries";
    publish(&location, repo.path(), run_id, &plan, &workflow, None);
    let cache = tempfile::tempdir().unwrap();
    let output = exit_within(
        sim_worker(&db, cache.path(), run_id, "only", "30", &scenario).output_async(),
        std::time::Duration::from_secs(300),
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (
            &report["committed"],
            &report["failed"],
            &report["attempts"],
            &report["escalated"],
            &report["retried"],
        ),
        (
            &serde_json::json!(agents),
            &serde_json::json!(0),
            &serde_json::json!(8),
            &serde_json::json!(2),
            &serde_json::json!(2),
        ),
        "{report}"
    );

    let reader = StoreReader::open_at(&location).unwrap();
    let rows = attempts(&reader, run_id);
    let s = |text: &str| text.to_owned();
    let of = |agent: &str| -> Vec<(u32, String, bool, String)> {
        rows.iter()
            .filter(|row| row.0 == agent)
            .map(|row| (row.1, row.2.clone(), row.3, row.4.clone()))
            .collect()
    };
    // An invalid result on fast: escalated once.
    assert_eq!(
        of("edit-000"),
        [
            (1, s("rollback"), false, s("fast")),
            (2, s("success"), true, s("default"))
        ]
    );
    // An outage past the fleet's retries: tried again.
    assert_eq!(
        of("edit-001"),
        [
            (1, s("failure"), false, s("default")),
            (2, s("success"), false, s("default"))
        ]
    );
    // Partial on fast, escalated, then an outage on default: three attempts in one lease.
    assert_eq!(
        of("edit-002"),
        [
            (1, s("rollback"), false, s("fast")),
            (2, s("failure"), true, s("default")),
            (3, s("success"), true, s("default"))
        ]
    );
    assert_eq!(of("edit-003"), [(1, s("success"), false, s("default"))]);
    assert!(
        rows.iter()
            .filter(|row| row.4 == "fast")
            .all(|row| row.5 == "claude-haiku-4-5"),
        "{rows:?}"
    );
    assert!(
        rows.iter()
            .filter(|row| row.4 == "default")
            .all(|row| row.5 == "claude-sonnet-4-5"),
        "{rows:?}"
    );
    // Row for row what the local run recorded: status, escalation, model and error alike.
    assert_eq!(rows, local_rows);

    let units = reader.units(&run_id.into()).unwrap();
    assert!(units.iter().all(|unit| unit.state == UnitState::Committed));
    let attempts_of: BTreeMap<String, u32> = units
        .iter()
        .map(|unit| (unit.agent_id.to_string(), unit.attempt))
        .collect();
    assert_eq!(attempts_of["edit-002"], 3, "{attempts_of:?}");
    let edited = apply_in_commit_order(repo.path(), &units);
    assert_eq!(edited.len(), agents, "{edited:?}");
    assert_eq!(
        super::resume::tree(repo.path()),
        super::resume::tree(local.path())
    );
}

/// A worker killed in its second attempt of an agent (the first ended with a provider outage)
/// leaves the unit to another worker, whose attempt is the third: never a number the dead
/// worker used, so every try keeps a row of its own.
#[test]
fn a_takeover_after_a_retry_gets_an_attempt_number_of_its_own() {
    let work = tempfile::tempdir().unwrap();
    let scenario = work.path().join("takeover.yaml");
    // The outage ends the first attempt; the second attempt's first answer never comes.
    std::fs::write(
        &scenario,
        format!(
            "rules:{}
  - name: hang-the-second-attempt
    match:
      system: 'Files you may change \\(nothing else\\):\\n- src/file_000.txt'
      turn: 1
    times: 1
    delay_ms: 600000
{}",
            outage_rules("claude-haiku-4-5", "src/file_000.txt"),
            super::resume::SCENARIO
                .trim_start()
                .trim_start_matches("rules:\n"),
        ),
    )
    .unwrap();
    let record = work.path().join("sim.jsonl");
    let (sim, base_url) =
        sim_process_with(&["--scenario", &scenario.display().to_string()], &record);
    let workflow = super::resume::workflow(work.path(), 4);
    let plan_path = super::resume::plan(work.path(), 1);
    let plan = fanout_core::plan::load_plan(&plan_path).unwrap().plan;
    let repo = super::resume::repository(1);
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("store.db");
    let location = StoreLocation::Sqlite(db.clone());
    let run_id = "taken-over";
    publish(&location, repo.path(), run_id, &plan, &workflow, None);
    let on_sim = |mut command: std::process::Command| {
        command
            .env("ANTHROPIC_BASE_URL", &base_url)
            .env("ANTHROPIC_API_KEY", "sk-test");
        command
    };
    let rows = || attempts(&StoreReader::open_at(&location).unwrap(), run_id);

    let caches: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut doomed = on_sim(worker(&db, caches[0].path(), run_id, "doomed", "3"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Its second attempt started, and its request is held by the simulator.
    super::wait_for("the first worker's second attempt", || {
        rows().iter().any(|row| row.1 == 2 && row.2.is_empty())
            && sim_stats(&base_url)["in_flight"].as_u64() == Some(1)
    });
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let heir = on_sim(worker(&db, caches[1].path(), run_id, "heir", "30")).output_async();
    let output = exit_within(heir, std::time::Duration::from_secs(120));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    sim.stop();

    let rows: Vec<(u32, String, String)> = rows()
        .into_iter()
        .map(|row| (row.1, row.2, row.6))
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0].0, rows[0].1.as_str()), (1, "failure"));
    assert!(rows[0].2.starts_with("model API: "), "{rows:?}");
    assert_eq!(
        rows[1],
        (
            2,
            "failure".to_owned(),
            "its worker stopped renewing the lease; another worker took the unit over".to_owned()
        )
    );
    assert_eq!(
        (rows[2].0, rows[2].1.as_str(), rows[2].2.as_str()),
        (3, "success", "")
    );
    let units = StoreReader::open_at(&location)
        .unwrap()
        .units(&run_id.into())
        .unwrap();
    assert_eq!(
        (
            units[0].state,
            units[0].attempt,
            units[0].lease_owner.as_deref()
        ),
        (UnitState::Committed, 3, Some("heir"))
    );
    apply_in_commit_order(repo.path(), &units);
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/file_000.txt")).unwrap(),
        "edited src/file_000.txt by its agent\n"
    );
}

/// A worker whose SQLite store is locked by another process for longer than the store's
/// busy timeout waits it out: its writes fail with "database is locked" for a while, are sent
/// again, and every unit ends committed. The lock is held for two of the writer's 10 s waits
/// and a bit: the first failing batch may hold only queued records, which nobody waits on.
#[test]
fn a_worker_waits_out_a_sqlite_store_locked_past_its_busy_timeout() {
    let agents = 8;
    let work = tempfile::tempdir().unwrap();
    let workflow = super::resume::workflow(work.path(), 4);
    let plan_path = super::resume::plan(work.path(), agents);
    let plan = fanout_core::plan::load_plan(&plan_path).unwrap().plan;
    let scenario = work.path().join("edit.yaml");
    std::fs::write(&scenario, super::resume::SCENARIO).unwrap();
    let repo = super::resume::repository(agents);
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("store.db");
    let location = StoreLocation::Sqlite(db.clone());
    let run_id = "locked-store";
    publish(&location, repo.path(), run_id, &plan, &workflow, None);
    let units = || {
        StoreReader::open_at(&location)
            .unwrap()
            .units(&run_id.into())
            .unwrap()
    };
    let cache = tempfile::tempdir().unwrap();
    let mut command = sim_worker(
        &db,
        cache.path(),
        run_id,
        "patient",
        // Longer than the lock, so that no lease expires while it is held.
        "60",
        &scenario.display().to_string(),
    );
    let child = command.args(["--sim-latency-ms", "300"]).output_async();
    super::wait_for("a first commit", || {
        units()
            .iter()
            .any(|unit| unit.state == UnitState::Committed)
    });
    // Another process's write transaction, held past the busy timeout of every writer.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let committed_at_lock = units()
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .count();
    assert!(committed_at_lock < agents, "locked after the run");
    std::thread::sleep(std::time::Duration::from_secs(22));
    locker.execute_batch("COMMIT").unwrap();
    drop(locker);

    let output = exit_within(child, std::time::Duration::from_secs(300));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    eprintln!("locked with {committed_at_lock} of {agents} committed: {report}");
    assert_eq!(
        (&report["committed"], &report["errors"]),
        (&serde_json::json!(agents), &serde_json::json!(0)),
        "{report}"
    );
    assert!(report["store_retries"].as_u64().unwrap() > 0, "{report}");
    let units = units();
    assert!(units.iter().all(|unit| unit.state == UnitState::Committed));
    let edited = apply_in_commit_order(repo.path(), &units);
    assert_eq!(edited.len(), agents, "{edited:?}");
}

/// The simulator's `GET /sim/stats` (a plain HTTP/1.1 request: the tests have no client).
fn sim_stats(base_url: &str) -> serde_json::Value {
    use std::io::{Read, Write};
    let address = base_url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /sim/stats HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"))
}

/// A PostgreSQL server of this test's own (`scripts/with-postgres.sh`'s
/// FANOUT_TEST_POSTGRES_CLUSTER), which it may stop and start again; stopped when dropped.
struct Cluster {
    helper: String,
    name: String,
    port: u16,
}

impl Cluster {
    fn start(tag: &str) -> Option<Cluster> {
        let Ok(helper) = std::env::var("FANOUT_TEST_POSTGRES_CLUSTER") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "FANOUT_TEST_POSTGRES_CLUSTER is unset under CI: run the tests through scripts/with-postgres.sh"
            );
            eprintln!("skipping: FANOUT_TEST_POSTGRES_CLUSTER is unset");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            helper,
            name: format!("{tag}-{}", std::process::id()),
            port,
        };
        cluster.up();
        Some(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://fanout@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) {
        let status = std::process::Command::new(&self.helper)
            .args(["start", &self.name, &self.port.to_string()])
            .status()
            .unwrap();
        assert!(
            status.success(),
            "cannot start the test's PostgreSQL server"
        );
    }

    fn down(&self) -> std::process::ExitStatus {
        std::process::Command::new(&self.helper)
            .args(["stop", &self.name])
            .output()
            .unwrap()
            .status
    }

    /// Connections to the server other than the one asking.
    fn clients(&self) -> i64 {
        let mut client = postgres::Client::connect(&self.url(), postgres::NoTls).unwrap();
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// Workers whose PostgreSQL store is stopped mid-run and started again a few seconds later
/// neither exit nor lose a unit: every unit is committed once with its patch. A worker whose
/// store stays down gives up after its patience with an error that names the store.
#[test]
fn workers_wait_out_a_postgres_restart_and_give_up_on_a_store_that_stays_down() {
    let Some(cluster) = Cluster::start("outage") else {
        return;
    };
    let url = cluster.url();
    let agents = 24;
    let work = tempfile::tempdir().unwrap();
    let workflow = super::resume::workflow(work.path(), 8);
    let plan_path = super::resume::plan(work.path(), agents);
    let plan = fanout_core::plan::load_plan(&plan_path).unwrap().plan;
    let scenario = work.path().join("edit.yaml");
    std::fs::write(&scenario, super::resume::SCENARIO).unwrap();
    let record = work.path().join("sim.jsonl");
    let (sim, base_url) = sim_process_with(
        &[
            "--latency-ms",
            "500",
            "--scenario",
            &scenario.display().to_string(),
        ],
        &record,
    );
    let repo = super::resume::repository(agents);
    let location = StoreLocation::parse(&url, repo.path()).unwrap();
    let run_id = "store-outage";
    publish(&location, repo.path(), run_id, &plan, &workflow, None);
    let units = || {
        StoreReader::open_at(&location)
            .unwrap()
            .units(&run_id.into())
            .unwrap()
    };
    let on_sim = |mut command: std::process::Command| {
        command
            .env("ANTHROPIC_BASE_URL", &base_url)
            .env("ANTHROPIC_API_KEY", "sk-test")
            .args(["--store-patience-seconds", "60"]);
        command
    };
    let store_arg = std::path::PathBuf::from(&url);
    let caches: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let workers: Vec<_> = ["left", "right"]
        .iter()
        .zip(&caches)
        .map(|(name, cache)| {
            on_sim(worker(&store_arg, cache.path(), run_id, name, "30")).output_async()
        })
        .collect();
    super::wait_for("a first commit", || {
        units()
            .iter()
            .any(|unit| unit.state == UnitState::Committed)
    });
    let committed_at_stop = units()
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .count();
    let outage_started = std::time::Instant::now();
    assert!(cluster.down().success());
    assert!(
        committed_at_stop < agents,
        "the store went down after the run ({committed_at_stop} committed)"
    );
    // The outage: three seconds with no server at all.
    std::thread::sleep(std::time::Duration::from_secs(3));
    cluster.up();
    eprintln!(
        "store down for {:?} with {committed_at_stop} of {agents} units committed",
        outage_started.elapsed()
    );
    let mut store_retries = 0;
    for child in workers {
        let output = exit_within(child, std::time::Duration::from_secs(300));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["errors"], 0, "{report}");
        store_retries += report["store_retries"].as_u64().unwrap();
        eprintln!("{report}");
    }
    assert!(store_retries > 0, "no worker met the outage");
    sim.stop();

    let units = units();
    assert_eq!(units.len(), agents);
    assert!(
        units.iter().all(|unit| unit.state == UnitState::Committed),
        "{:?}",
        units
            .iter()
            .map(|unit| (unit.agent_id.to_string(), unit.state))
            .collect::<Vec<_>>()
    );
    let mut successes: BTreeMap<String, usize> = BTreeMap::new();
    for row in StoreReader::open_at(&location)
        .unwrap()
        .agent_runs(&run_id.into())
        .unwrap()
    {
        assert!(
            row.status.is_some(),
            "{} attempt {} unfinished",
            row.agent_id,
            row.attempt
        );
        if row.status == Some(AgentStatus::Success) {
            *successes.entry(row.agent_id.to_string()).or_default() += 1;
        }
    }
    assert_eq!(successes.len(), agents);
    assert!(successes.values().all(|&n| n == 1), "{successes:?}");
    let edited = apply_in_commit_order(repo.path(), &units);
    assert_eq!(edited.len(), agents, "{edited:?}");
    for i in 0..agents {
        let path = format!("src/file_{i:03}.txt");
        assert_eq!(
            std::fs::read_to_string(repo.path().join(&path)).unwrap(),
            format!("edited {path} by its agent\n")
        );
    }

    // A store that stays down: the worker retries for its patience, then exits 4 naming it.
    let idle = tempfile::tempdir().unwrap();
    let mut waiting = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["worker", "--store", &url, "--cache"])
        .arg(idle.path())
        .args(["--run", "no-such-run", "--store-patience-seconds", "2"])
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        .env("ANTHROPIC_API_KEY", "sk-test")
        .current_dir(idle.path())
        .output_async();
    super::wait_for("the idle worker to connect", || cluster.clients() > 0);
    let stopped = std::time::Instant::now();
    assert!(cluster.down().success());
    super::wait_for("the idle worker to give up", || {
        waiting.try_wait().unwrap().is_some()
    });
    let gave_up_after = stopped.elapsed();
    let output = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("gave up after {gave_up_after:?}: {stderr}");
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the run store postgres://fanout@127.0.0.1:{}/postgres could not be reached for 2 s; giving up",
            cluster.port
        )),
        "{stderr}"
    );
    assert!(
        gave_up_after >= std::time::Duration::from_secs(2),
        "{gave_up_after:?}"
    );
}

/// `budgets.run.max_dollars` held over two worker processes: a coordinator (`--local-slots
/// 0`) publishes ten one-file agents with a budget that pays for about half of them; two
/// workers with two slots each run what the budget covers, reserving each unit's estimate at
/// its lease and settling the actual cost at its commit. What all of them spent together
/// stays within the budget plus what one unit costs (the local scheduler's rule: a unit that
/// started is never stopped, so running units may cost more than they reserved), and every
/// unit not run is skipped with the reason the local engine gives.
#[test]
fn two_workers_spend_within_the_runs_budget_and_the_units_it_cannot_cover_say_why() {
    const AGENTS: usize = 10;
    let repo = super::trust::small_repo(AGENTS);
    let work = tempfile::tempdir().unwrap();
    let plan = super::trust::edit_plan(work.path(), AGENTS)
        .display()
        .to_string();
    let scenario = work.path().join("scenario.yaml");
    std::fs::write(&scenario, crate::live_run::SCENARIO).unwrap();
    let scenario = scenario.display().to_string();
    let workflow = |extra: &str| {
        super::trust::edit_workflow(work.path(), extra)
            .display()
            .to_string()
    };
    let dry = fanout(
        &[
            "run",
            &workflow(""),
            "--plan",
            &plan,
            "--scenario",
            &scenario,
            "--dry-run",
            "--json",
        ],
        repo.path(),
    );
    let estimate: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    let estimated = estimate["estimate"]["dollars"].as_f64().unwrap();
    // The scripted agents spend about 60 % of the estimate: 30 % of it pays for about half.
    let budget = estimated * 0.3;
    let workflow = workflow(&format!(
        "  budgets:\n    run:\n      max_dollars: {budget:.6}\n"
    ));

    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("store.db");
    let coordinator = std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(["run", &workflow, "--plan", &plan, "--scenario", &scenario])
        .arg("--store")
        .arg(&db)
        .args(["--local-slots", "0", "--json", "--repo"])
        .arg(repo.path())
        .output_async();
    let location = StoreLocation::Sqlite(db.clone());
    let mut run_id = String::new();
    super::wait_for("the coordinator to publish the run", || {
        let Ok(reader) = StoreReader::open_at(&location) else {
            return false;
        };
        match reader
            .query_raw("SELECT run_id FROM run_plans", &[])
            .ok()
            .and_then(|rows| rows.into_iter().next())
            .and_then(|row| row.into_iter().next())
        {
            Some(fanout_core::store::SqlValue::Text(id)) => {
                run_id = id;
                true
            }
            _ => false,
        }
    });
    let caches: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let workers: Vec<_> = caches
        .iter()
        .enumerate()
        .map(|(index, cache)| {
            std::process::Command::new(env!("CARGO_BIN_EXE_fanout"))
                .args(["worker", "--store"])
                .arg(&db)
                .arg("--cache")
                .arg(cache.path())
                .args(["--run", &run_id, "--exit-when-done", "--slots", "2"])
                .args(["--name", &format!("w{index}"), "--scenario", &scenario])
                .current_dir(cache.path())
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("ANTHROPIC_BASE_URL")
                .output_async()
        })
        .collect();
    for child in workers {
        let output = exit_within(child, std::time::Duration::from_secs(300));
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let closing = exit_within(coordinator, std::time::Duration::from_secs(60));
    let printed = String::from_utf8_lossy(&closing.stdout).into_owned();

    let reader = StoreReader::open_at(&location).unwrap();
    let run = run_id.as_str().into();
    let units = reader.units(&run).unwrap();
    let committed = units
        .iter()
        .filter(|unit| unit.state == UnitState::Committed)
        .count();
    let skipped: Vec<_> = units
        .iter()
        .filter(|unit| unit.state == UnitState::Skipped)
        .collect();
    let costs: Vec<f64> = reader
        .agent_runs(&run)
        .unwrap()
        .iter()
        .map(|row| row.cost_usd)
        .collect();
    let spent: f64 = costs.iter().sum();
    let most = costs.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "budget ${budget:.4} (estimate ${estimated:.4}): {committed} committed, {} skipped, ${spent:.4} spent over {} attempts",
        skipped.len(),
        costs.len()
    );
    assert_eq!(committed + skipped.len(), AGENTS, "{units:?}");
    assert!(committed >= 2, "the budget pays for more than one unit");
    assert!(!skipped.is_empty(), "every unit ran: {spent} of {budget}");
    assert!(
        spent <= budget + most,
        "spent ${spent} of a ${budget} budget (one unit costs up to ${most})"
    );
    for unit in &skipped {
        assert_eq!(
            unit.skip_reason.as_deref(),
            Some(fanout_core::store::BUDGET_EXHAUSTED),
            "{}",
            unit.agent_id
        );
    }
    // The store's ledger agrees with the attempts' costs, and nothing stays reserved.
    let ledger = reader.run_spend(&run).unwrap().unwrap();
    assert_eq!(
        ledger.max_dollars.map(|d| (d * 1e6).round()),
        Some((budget * 1e6).round())
    );
    assert!((ledger.spent_usd - spent).abs() < 1e-9, "{ledger:?}");
    assert!(ledger.reserved_usd.abs() < 1e-9, "{ledger:?}");
    // The coordinator counts them as not run, for that reason.
    let events: Vec<serde_json::Value> = printed
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    let not_run: Vec<&str> = events
        .iter()
        .filter(|event| event["event"] == "agent_not_run")
        .map(|event| event["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        not_run,
        vec![fanout_core::store::BUDGET_EXHAUSTED; skipped.len()],
        "{printed}"
    );
    let outcome = &events
        .iter()
        .find(|event| event["event"] == "run_finished")
        .unwrap_or_else(|| panic!("no run_finished in {printed}"))["outcome"];
    assert_eq!(outcome["succeeded"], committed, "{outcome}");
    assert_eq!(outcome["not_run"], skipped.len(), "{outcome}");
    assert_eq!(outcome["status"], "partial", "{outcome}");
}
