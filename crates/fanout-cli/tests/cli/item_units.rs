//! Item runs shared with `fanout worker` processes (`fanout run ITEMS --store S
//! --local-slots 0`): the chunks are units, workers in separate processes make the calls, the
//! coordinator settles what they commit. One worker is killed with SIGKILL while it holds a
//! chunk; then, in a second run, the coordinator itself, which `fanout resume` replaces. Both
//! end with outputs byte-identical to a single-process run of the same items, every item
//! once, one committed unit per chunk, and the counts of the closing report, `summary.json`
//! and `fanout show --json` in agreement. On SQLite, and on PostgreSQL when
//! `FANOUT_TEST_POSTGRES_URL` names a server.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use fanout_core::store::{AgentStatus, StoreLocation, StoreReader, UnitKind, UnitRow, UnitState};
use serde_json::Value;

/// The ticket example in `dir`, in chunks of at most ten tickets (30 chunks).
fn example(dir: &Path) {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets");
    for name in ["tickets.jsonl", "schema.json"] {
        std::fs::copy(source.join(name), dir.join(name)).unwrap();
    }
    let workflow = std::fs::read_to_string(source.join("workflow.yaml"))
        .unwrap()
        .replace("max_items: 30", "max_items: 10");
    std::fs::write(dir.join("workflow.yaml"), workflow).unwrap();
}

fn fanout(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
    command
        .current_dir(dir)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL");
    command
}

/// The closing report: the last JSON line on stdout.
fn report(output: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap_or_else(|error| {
        panic!(
            "no report ({error}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A single-process run of the example: the outputs a shared run must reproduce.
fn local_run() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    example(dir.path());
    let output = fanout(dir.path())
        .args(["run", "workflow.yaml", "--sim", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let out = dir
        .path()
        .join(report(&output)["output_dir"].as_str().unwrap());
    (dir, out)
}

/// `fanout worker` on `store` for `run`, simulated, with calls taking `latency_ms`.
fn worker(
    store: &str,
    cache: &Path,
    run: &str,
    name: &str,
    lease: &str,
    latency_ms: &str,
) -> Child {
    fanout(cache)
        .args(["worker", "--store", store, "--run", run, "--exit-when-done"])
        .args(["--slots", "2", "--lease-seconds", lease, "--name", name])
        .args(["--sim", "--sim-latency-ms", latency_ms])
        .arg("--cache")
        .arg(cache)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A child's output once it exits; killed after `limit` so that a hang fails the test.
fn exit_within(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The store a test shares: a SQLite file in `dir`, or a fresh PostgreSQL database.
enum Shared {
    Sqlite(PathBuf),
    Postgres(super::postgres_store::Database),
}

impl Shared {
    fn arg(&self) -> String {
        match self {
            Shared::Sqlite(path) => path.display().to_string(),
            Shared::Postgres(database) => database.url.clone(),
        }
    }

    fn location(&self) -> StoreLocation {
        StoreLocation::parse(&self.arg(), Path::new("/")).unwrap()
    }
}

/// SQLite always; PostgreSQL too when a server is given.
fn stores(dir: &Path, tag: &str) -> Vec<Shared> {
    let mut stores = vec![Shared::Sqlite(dir.join(format!("{tag}.db")))];
    stores.extend(super::postgres_store::Database::create_for(tag).map(Shared::Postgres));
    stores
}

/// The run the coordinator published, once it has.
fn published_run(location: &StoreLocation) -> String {
    let mut run_id = String::new();
    super::wait_for("the coordinator to publish the item run", || {
        let Ok(reader) = StoreReader::open_at(location) else {
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
    run_id
}

fn units(location: &StoreLocation, run: &str) -> Vec<UnitRow> {
    StoreReader::open_at(location)
        .unwrap()
        .units(&run.into())
        .unwrap()
}

/// What every shared run must end with: the local run's outputs byte for byte, every item
/// once, one committed and settled unit per chunk, one success row per chunk, no row left
/// open, each chunk once in the journal, and the same counts in the closing report,
/// `summary.json` and `fanout show --json`.
fn check_shared_run(
    dir: &Path,
    shared: &Shared,
    run: &str,
    report: &Value,
    local: &Path,
) -> Vec<UnitRow> {
    assert_eq!(report["status"], "completed", "{report:#}");
    let out = dir.join(report["output_dir"].as_str().unwrap());
    for name in ["results.jsonl", "failed.jsonl"] {
        assert!(
            std::fs::read(out.join(name)).unwrap() == std::fs::read(local.join(name)).unwrap(),
            "{name} differs from the single-process run's"
        );
    }
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let ids: Vec<String> = results
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!((ids.len(), unique.len()), (300, 300), "every ticket once");

    // summary.json: the local run's, but for what the calls used (which prompt-cache reads
    // a simulator counts depends on which process sent what).
    let summary = |dir: &Path| -> Value {
        let mut summary: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap())
                .unwrap();
        summary.as_object_mut().unwrap().remove("usage");
        summary
    };
    assert_eq!(summary(&out), summary(local));
    let full: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(full["items"], report["summary"]["items"]);
    assert_eq!(full["succeeded"], report["summary"]["succeeded"]);
    assert_eq!(full["failed"], report["summary"]["failed"]);
    // The same counts, written as objects in summary.json and as pairs in the report.
    let mut written: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (field, counts) in full["counts"].as_object().unwrap() {
        for count in counts.as_array().unwrap() {
            let value = count["value"].as_str().unwrap().to_owned();
            written.insert((field.clone(), value), count["count"].as_u64().unwrap());
        }
    }
    let mut reported: BTreeMap<(String, String), u64> = BTreeMap::new();
    for pair in report["summary"]["counts"].as_array().unwrap() {
        for count in pair[1].as_array().unwrap() {
            let key = (
                pair[0].as_str().unwrap().to_owned(),
                count[0].as_str().unwrap().to_owned(),
            );
            reported.insert(key, count[1].as_u64().unwrap());
        }
    }
    assert_eq!(written, reported);
    assert_eq!(
        written.values().sum::<u64>(),
        3 * 300,
        "three count-by fields"
    );

    let show = fanout(dir)
        .args(["show", run, "--json", "--store", &shared.arg()])
        .output()
        .unwrap();
    assert!(show.status.success(), "{show:?}");
    let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(shown["status"], "completed");
    for (key, shown_key) in [
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
    ] {
        assert_eq!(report[key], shown["agents"][shown_key], "{key}");
        assert_eq!(full["usage"][key], shown["agents"][shown_key], "{key}");
    }
    let dollars = shown["agents"]["dollars"].as_f64().unwrap();
    assert!((report["cost_usd"].as_f64().unwrap() - dollars).abs() < 1e-9);
    assert!((full["usage"]["cost_usd"].as_f64().unwrap() - dollars).abs() < 1e-9);

    // One unit per chunk, each committed once, numbered 1..=n, and settled.
    let location = shared.location();
    let units = units(&location, run);
    let chunks = report["chunks"].as_u64().unwrap() as usize;
    assert_eq!(chunks, 30);
    assert_eq!(units.len(), chunks);
    let mut seqs: Vec<u64> = units.iter().map(|unit| unit.commit_seq.unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=chunks as u64).collect::<Vec<_>>());
    for unit in &units {
        assert_eq!(unit.kind, UnitKind::ItemChunk);
        assert_eq!(unit.state, UnitState::Committed, "{}", unit.agent_id);
        assert!(unit.applied_at.is_some(), "{} never settled", unit.agent_id);
    }

    // The rows: one success per chunk, none left open.
    let rows = shown["agent_runs"].as_array().unwrap();
    assert!(rows.iter().all(|row| !row["status"].is_null()), "{rows:#?}");
    let mut successes: BTreeMap<&str, usize> = BTreeMap::new();
    for row in rows.iter().filter(|row| row["status"] == "success") {
        *successes
            .entry(row["agent_id"].as_str().unwrap())
            .or_default() += 1;
    }
    let chunk_ids: BTreeSet<String> = units.iter().map(|unit| unit.agent_id.to_string()).collect();
    assert!(
        chunk_ids
            .iter()
            .all(|id| successes.get(id.as_str()) == Some(&1)),
        "{successes:?}"
    );
    let reader = StoreReader::open_at(&location).unwrap();
    assert!(
        reader
            .agent_runs(&run.into())
            .unwrap()
            .iter()
            .all(|row| row.status.is_some() && row.status != Some(AgentStatus::Rollback))
    );

    // The journal names each chunk once.
    let journal =
        std::fs::read_to_string(dir.join(".fanout/runs").join(run).join("settled.jsonl")).unwrap();
    let settled: Vec<String> = journal
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|line| line["chunk"].as_str().unwrap().to_owned())
        .collect();
    let once: BTreeSet<&String> = settled.iter().collect();
    assert_eq!((settled.len(), once.len()), (chunks, chunks), "{settled:?}");
    units
}

/// A coordinator that only coordinates, two workers, one of them killed with SIGKILL while
/// it holds chunks: the other takes them over when their leases run out.
#[test]
fn a_shared_item_run_survives_kill_9_of_a_worker_and_matches_a_local_run() {
    let (_local_dir, local) = local_run();
    let scratch = tempfile::tempdir().unwrap();
    for shared in stores(scratch.path(), "item_units_worker") {
        let dir = tempfile::tempdir().unwrap();
        example(dir.path());
        let coordinator = fanout(dir.path())
            .args([
                "run",
                "workflow.yaml",
                "--sim",
                "--json",
                "--local-slots",
                "0",
            ])
            .args(["--store", &shared.arg()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let location = shared.location();
        let run = published_run(&location);

        // The doomed worker is slow and its leases short; it is killed holding chunks.
        let caches: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut doomed = worker(&shared.arg(), caches[0].path(), &run, "doomed", "3", "1500");
        super::wait_for("the first worker to hold a chunk", || {
            units(&location, &run)
                .iter()
                .any(|unit| unit.lease_owner.as_deref() == Some("doomed"))
        });
        let survivor = worker(
            &shared.arg(),
            caches[1].path(),
            &run,
            "survivor",
            "30",
            "50",
        );
        super::wait_for("the second worker to commit a chunk", || {
            units(&location, &run).iter().any(|unit| {
                unit.lease_owner.as_deref() == Some("survivor") && unit.commit_seq.is_some()
            })
        });
        doomed.kill().unwrap();
        doomed.wait().unwrap();
        let held: Vec<String> = units(&location, &run)
            .iter()
            .filter(|unit| {
                unit.state == UnitState::Leased && unit.lease_owner.as_deref() == Some("doomed")
            })
            .map(|unit| unit.agent_id.to_string())
            .collect();
        assert!(!held.is_empty(), "the killed worker held no chunk");

        let survived = exit_within(survivor, Duration::from_secs(300));
        assert!(survived.status.success(), "{survived:?}");
        let output = exit_within(coordinator, Duration::from_secs(300));
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let report = report(&output);
        assert_eq!(report["run_id"], run.as_str());
        let units = check_shared_run(dir.path(), &shared, &run, &report, &local);
        // The killed worker's chunks were made again, by the survivor, as a later attempt.
        for unit in units
            .iter()
            .filter(|unit| held.contains(&unit.agent_id.to_string()))
        {
            assert!(
                unit.attempt >= 2,
                "{} attempt {}",
                unit.agent_id,
                unit.attempt
            );
            assert_eq!(unit.lease_owner.as_deref(), Some("survivor"));
        }
    }
}

/// The coordinator is killed with SIGKILL after it settled a few chunks; the workers go on
/// and commit the rest; `fanout resume RUN --store S` settles those from the store (and none
/// of the journal's chunks again) and ends as a local run does.
#[test]
fn a_shared_item_run_resumes_after_kill_9_of_the_coordinator() {
    let (_local_dir, local) = local_run();
    let scratch = tempfile::tempdir().unwrap();
    for shared in stores(scratch.path(), "item_units_coordinator") {
        let dir = tempfile::tempdir().unwrap();
        example(dir.path());
        let mut coordinator = fanout(dir.path())
            .args([
                "run",
                "workflow.yaml",
                "--sim",
                "--json",
                "--local-slots",
                "0",
            ])
            .args(["--store", &shared.arg()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let location = shared.location();
        let run = published_run(&location);
        let cache = tempfile::tempdir().unwrap();
        let worker = worker(&shared.arg(), cache.path(), &run, "steady", "30", "300");
        let journal = dir
            .path()
            .join(".fanout/runs")
            .join(&run)
            .join("settled.jsonl");
        let settled = || {
            std::fs::read_to_string(&journal)
                .map(|text| text.lines().count())
                .unwrap_or(0)
        };
        super::wait_for("the coordinator to settle three chunks", || settled() >= 3);
        coordinator.kill().unwrap();
        coordinator.wait().unwrap();
        let settled_at_kill = settled();
        assert!(
            settled_at_kill < 30,
            "the coordinator was killed after the run"
        );

        // The worker commits every chunk although nobody settles them now.
        let worked = exit_within(worker, Duration::from_secs(300));
        assert!(worked.status.success(), "{worked:?}");
        let waiting = units(&location, &run)
            .iter()
            .filter(|unit| unit.commit_seq.is_some() && unit.applied_at.is_none())
            .count();
        assert!(waiting > 0, "no chunk was left committed but unsettled");

        let output = fanout(dir.path())
            .args(["resume", &run, "--sim", "--json", "--store", &shared.arg()])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let report = report(&output);
        assert_eq!(report["run_id"], run.as_str());
        assert!(report["items_already_settled"].as_u64().unwrap() > 0);
        check_shared_run(dir.path(), &shared, &run, &report, &local);
    }
}

/// What cannot be shared says so and publishes nothing: a batch run (the provider runs its
/// batches), and the resume of a run that was not shared.
#[test]
fn batch_runs_and_runs_started_locally_are_not_shared() {
    let dir = tempfile::tempdir().unwrap();
    super::item_inputs::tickets(dir.path(), 20, &["not json at all"]);
    super::item_inputs::ticket_workflow(dir.path(), 10, "    execution: batch\n");
    let store = dir.path().join("shared.db");
    let store = store.display().to_string();
    let output = fanout(dir.path())
        .args([
            "run",
            "workflow.yaml",
            "--sim",
            "--local-slots",
            "0",
            "--store",
            &store,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`execution: batch` item run cannot be shared with workers"),
        "{stderr}"
    );
    let published = StoreReader::open_at(&StoreLocation::Sqlite(store.clone().into()))
        .map(|reader| {
            reader
                .query_raw("SELECT run_id FROM run_plans", &[])
                .unwrap()
                .len()
        })
        .unwrap_or(0);
    assert_eq!(published, 0);

    // A local run that ended partial (the bad line) is resumed locally or not at all.
    super::item_inputs::ticket_workflow(dir.path(), 10, "");
    let output = fanout(dir.path())
        .args(["run", "workflow.yaml", "--sim", "--json", "--store", &store])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let run = report(&output)["run_id"].as_str().unwrap().to_owned();
    let output = fanout(dir.path())
        .args([
            "resume",
            &run,
            "--sim",
            "--local-slots",
            "1",
            "--store",
            &store,
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "run {run} was not shared with workers; resume it without --local-slots"
        )),
        "{stderr}"
    );
}

/// `--local-slots 2`: the coordinator's own worker runs the chunks (the same handler as
/// `fanout worker`), and the run ends as a local one does.
#[test]
fn a_coordinator_with_slots_of_its_own_runs_the_chunks_itself() {
    let (_local_dir, local) = local_run();
    let dir = tempfile::tempdir().unwrap();
    example(dir.path());
    let shared = Shared::Sqlite(dir.path().join("shared.db"));
    let output = fanout(dir.path())
        .args([
            "run",
            "workflow.yaml",
            "--sim",
            "--json",
            "--local-slots",
            "2",
        ])
        .args(["--store", &shared.arg()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report = report(&output);
    let run = report["run_id"].as_str().unwrap().to_owned();
    let units = check_shared_run(dir.path(), &shared, &run, &report, &local);
    assert!(
        units.iter().all(|unit| unit
            .lease_owner
            .as_deref()
            .is_some_and(|owner| owner.starts_with("coordinator:"))),
        "{units:?}"
    );
}

/// A run budget spent by what the coordinator has settled: the chunks no worker has taken are
/// skipped, their items end as not run, and the run says the budget stopped it.
#[test]
fn a_spent_budget_skips_the_chunks_no_worker_has_taken() {
    let dir = tempfile::tempdir().unwrap();
    example(dir.path());
    let workflow = std::fs::read_to_string(dir.path().join("workflow.yaml")).unwrap();
    std::fs::write(
        dir.path().join("workflow.yaml"),
        workflow.replace(
            "  max_parallel_agents: 20\n",
            "  max_parallel_agents: 20\n  budgets:\n    run: { max_dollars: 0.0001 }\n",
        ),
    )
    .unwrap();
    let shared = Shared::Sqlite(dir.path().join("shared.db"));
    let coordinator = fanout(dir.path())
        .args([
            "run",
            "workflow.yaml",
            "--sim",
            "--json",
            "--local-slots",
            "0",
        ])
        .args(["--store", &shared.arg()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let location = shared.location();
    let run = published_run(&location);
    let cache = tempfile::tempdir().unwrap();
    let worker = worker(&shared.arg(), cache.path(), &run, "only", "30", "400");
    let worked = exit_within(worker, Duration::from_secs(120));
    assert!(worked.status.success(), "{worked:?}");
    let output = exit_within(coordinator, Duration::from_secs(120));
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let report = report(&output);
    assert_eq!(report["budget_exhausted"], true);
    let units = units(&location, &run);
    let committed = units
        .iter()
        .filter(|unit| unit.commit_seq.is_some())
        .count();
    let skipped = units
        .iter()
        .filter(|unit| unit.state == UnitState::Skipped)
        .count();
    assert!(
        committed >= 1 && skipped >= 1,
        "{committed} committed, {skipped} skipped"
    );
    assert_eq!(committed + skipped, 30);
    assert_eq!(report["summary"]["succeeded"], committed * 10);
    let out = dir.path().join(report["output_dir"].as_str().unwrap());
    let failed = std::fs::read_to_string(out.join("failed.jsonl")).unwrap();
    assert_eq!(failed.lines().count(), skipped * 10);
    assert!(
        failed.lines().all(|line| line.contains("\"not_run\"")),
        "{failed}"
    );
}
