//! Every verdict a run prints is true (issue: trustworthy runs). Each test here was written
//! against a false verdict the old code printed: a failing test reported as passed, two live
//! runs editing one repository, a dry run that ran agents, fanout's own log flagged as an
//! out-of-scope change, counts that disagreed.

use super::*;

/// Turn 1 writes the agent's one declared file; turn 2 reports (the live-run tests' script).
use crate::live_run::SCENARIO as EDIT_SCENARIO;

/// A repository of `n` files `src/file_NNN.txt` plus `check.sh`, committed.
pub(crate) fn small_repo(n: usize) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo.path().join("src")).unwrap();
    for i in 0..n {
        std::fs::write(
            repo.path().join(format!("src/file_{i:03}.txt")),
            format!("original {i}\n"),
        )
        .unwrap();
    }
    // Passes while src/file_000.txt is untouched.
    std::fs::write(
        repo.path().join("check.sh"),
        "grep -q original src/file_000.txt || { echo 'file_000 lost its original text'; exit 3; }\necho all good\n",
    )
    .unwrap();
    git(repo.path(), &["init", "-q", "-b", "main"]);
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "initial"]);
    repo
}

/// A plan of `n` agents, agent i editing `src/file_NNN.txt`.
pub(crate) fn edit_plan(dir: &Path, n: usize) -> PathBuf {
    let subtasks: Vec<serde_json::Value> = (0..n)
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
    let path = dir.join("plan.json");
    let plan = serde_json::json!({"workflow": "edit-each", "subtasks": subtasks});
    std::fs::write(&path, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
    path
}

/// A workflow file in `dir` with `extra` appended under `workflow:`.
pub(crate) fn edit_workflow(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("edit-each.yaml");
    std::fs::write(
        &path,
        format!(
            "workflow:\n  name: edit-each\n  max_parallel_agents: 8\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n    shell_exec: deny\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn scenario_file(dir: &Path) -> PathBuf {
    let path = dir.join("scenario.yaml");
    std::fs::write(&path, EDIT_SCENARIO).unwrap();
    path
}

/// The `run_finished` outcome of a `--json` run, after checking that stdout is JSON lines
/// only (a pretty-printed report used to come first).
fn outcome_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line:?}"
        );
    }
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|event| event["event"] == "run_finished")
        .unwrap_or_else(|| {
            panic!(
                "no run_finished event:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })["outcome"]
        .clone()
}

fn summary_json(repo: &Path, run_id: &str) -> serde_json::Value {
    let path = repo.join(format!(".fanout/runs/{run_id}/summary.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// A test command that exits 3 made the run `completed`, exit 0, "Tests: passed".
#[test]
fn a_failing_test_command_fails_the_run() {
    let repo = small_repo(3);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(
        work.path(),
        "  verify:\n    test_command: bash check.sh\n    baseline: true\n",
    );
    let output = fanout(
        &[
            "run",
            &wf.display().to_string(),
            "--plan",
            &edit_plan(work.path(), 3).display().to_string(),
            "--scenario",
            &scenario_file(work.path()).display().to_string(),
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{stdout}\n{stderr}");
    assert!(stdout.contains(": tests_failed"), "{stdout}");
    assert!(
        stdout.contains(
            "Tests (`bash check.sh`): FAILED (exit code 3): broken by this run (passed on the base commit)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("file_000 lost its original text"),
        "{stdout}"
    );
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_owned();
    let summary = summary_json(repo.path(), &run_id);
    assert_eq!(summary["status"], "tests_failed");
    assert_eq!(summary["test"]["passed"], false);
    assert_eq!(summary["test"]["exit"]["value"], 3);
    assert_eq!(summary["test"]["baseline"]["passed"], true);
    let md = std::fs::read_to_string(
        repo.path()
            .join(format!(".fanout/runs/{run_id}/summary.md")),
    )
    .unwrap();
    assert!(md.contains("file_000 lost its original text"), "{md}");
    let runs = fanout(&["runs"], repo.path());
    assert!(
        String::from_utf8_lossy(&runs.stdout).contains("tests_failed"),
        "{}",
        String::from_utf8_lossy(&runs.stdout)
    );
}

/// `git diff --exit-code` exits 1 when the run changed files: that is a failure too, and a
/// command that passes on both sides says so.
#[test]
fn the_exit_status_decides_not_the_output() {
    let repo = small_repo(2);
    let work = tempfile::tempdir().unwrap();
    let scenario = scenario_file(work.path());
    let plan = edit_plan(work.path(), 2);
    for (command, code) in [("git diff --exit-code", 7), ("true", 0)] {
        git(repo.path(), &["checkout", "-q", "--", "."]);
        let wf = edit_workflow(
            work.path(),
            &format!("  verify:\n    test_command: {command}\n    baseline: true\n"),
        );
        let output = fanout(
            &[
                "run",
                &wf.display().to_string(),
                "--plan",
                &plan.display().to_string(),
                "--scenario",
                &scenario.display().to_string(),
                "--json",
            ],
            repo.path(),
        );
        let outcome = outcome_of(&output);
        assert_eq!(output.status.code(), Some(code), "{command}: {outcome}");
        let passed = code == 0;
        assert_eq!(outcome["test"]["passed"], passed, "{command}: {outcome}");
        let status = if passed { "completed" } else { "tests_failed" };
        assert_eq!(outcome["status"], status, "{command}: {outcome}");
        // On the base commit (a git worktree of it, so git commands work there too) both pass.
        assert_eq!(
            outcome["test"]["baseline"]["passed"], true,
            "{command}: {outcome}"
        );
    }
}

/// Two live runs on one repository both ran and edited the same files; a run started with a
/// relative workflow path could not be resumed from the repository (`cannot read`).
#[test]
fn one_live_run_per_repository_and_resume_from_anywhere() {
    let repo = small_repo(4);
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("rel")).unwrap();
    edit_workflow(&work.path().join("rel"), "");
    edit_plan(&work.path().join("rel"), 4);
    scenario_file(&work.path().join("rel"));
    let repo_arg = repo.path().display().to_string();
    let args = [
        "run",
        "rel/edit-each.yaml",
        "--plan",
        "rel/plan.json",
        "--scenario",
        "rel/scenario.yaml",
        "--sim-latency-ms",
        "30000",
        "--repo",
        repo_arg.as_str(),
    ];
    // Every model call of the first run takes 30 s: it holds the repository for a minute at
    // least, long after the second has had its answer, however slow this machine is.
    let mut first = spawn_in(work.path(), &args);
    let lock_file = repo.path().join(".fanout/live.lock");
    let mut holder = String::new();
    wait_for("the first run to claim the repository", || {
        holder = std::fs::read_to_string(&lock_file).unwrap_or_default();
        holder.starts_with("run ")
    });
    let run_id = holder
        .trim_start_matches("run ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();

    // The second is refused at once, naming the run that holds the repository: while the
    // first still runs and holds the lock, not after waiting for it.
    let second = fanout_in(work.path(), &args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains(&format!("run {run_id}")), "{stderr}");
    assert!(
        first.try_wait().unwrap().is_none(),
        "the second run was refused only once the first had ended"
    );
    assert!(
        std::fs::read_to_string(&lock_file)
            .unwrap()
            .starts_with(&format!("run {run_id} ")),
        "the lock no longer names the first run"
    );
    // A dry run is still allowed while a live run holds the repository.
    let dry = fanout_in(
        work.path(),
        &[
            "run",
            "rel/edit-each.yaml",
            "--plan",
            "rel/plan.json",
            "--dry-run",
            "--repo",
            &repo_arg,
        ],
    );
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );

    // kill -9 releases the lock; resume from inside the repository, where the relative
    // workflow path means nothing.
    first.kill().unwrap();
    first.wait().unwrap();
    let resumed = fanout_in(
        repo.path(),
        &[
            "resume",
            &run_id,
            "--scenario",
            &work.path().join("rel/scenario.yaml").display().to_string(),
        ],
    );
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr)
    );
    for i in 0..4 {
        assert_eq!(
            std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap(),
            "edited by its agent\n"
        );
    }
}

/// The seed's `logging.destination: ./logs/workflow-run-{timestamp}.json` made every live run
/// partial (its own log was "a change outside every scope"), rollback needed --force, and the
/// next plan listed the log as a repository file.
#[test]
fn fanouts_own_log_is_never_an_agents_change() {
    let repo = small_repo(3);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(
        work.path(),
        "  logging:\n    level: verbose\n    destination: ./logs/workflow-run-{timestamp}.json\n",
    );
    let output = fanout(
        &[
            "run",
            &wf.display().to_string(),
            "--plan",
            &edit_plan(work.path(), 3).display().to_string(),
            "--scenario",
            &scenario_file(work.path()).display().to_string(),
            "--json",
        ],
        repo.path(),
    );
    let outcome = outcome_of(&output);
    assert_eq!(output.status.code(), Some(0), "{outcome}");
    assert_eq!(outcome["out_of_scope"], serde_json::json!([]));
    assert_eq!(outcome["files_changed"], 3);
    let logs: Vec<_> = std::fs::read_dir(repo.path().join("logs"))
        .unwrap()
        .collect();
    assert_eq!(logs.len(), 1, "the run wrote its log");
    let run_id = outcome["run_id"].as_str().unwrap();

    // The next plan's file list (as the orchestrator receives it) has no log in it.
    let record = work.path().join("exchanges.jsonl");
    let output = fanout(
        &[
            "plan",
            &wf.display().to_string(),
            "--sim",
            "--task",
            "Rewrite every file in src.",
            "--sim-record",
            &record.display().to_string(),
        ],
        repo.path(),
    );
    assert!(output.status.code().is_some());
    let sent = std::fs::read_to_string(&record).unwrap();
    assert!(sent.contains("src/file_000.txt"), "the file list was sent");
    assert!(
        !sent.contains("workflow-run-"),
        "the log was listed as a repository file"
    );

    // Rollback needs no --force and keeps the run's log (the record of what was undone).
    let output = fanout(&["rollback", run_id], repo.path());
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(repo.path().join("src/file_001.txt")).unwrap(),
        "original 1\n"
    );
    assert_eq!(
        std::fs::read_dir(repo.path().join("logs")).unwrap().count(),
        1
    );

    // A destination outside the repository is refused before anything runs.
    for outside in [
        "/tmp/fanout-log-{timestamp}.json",
        "../logs/run-{timestamp}.json",
    ] {
        let wf = edit_workflow(
            work.path(),
            &format!("  logging:\n    destination: {outside}\n"),
        );
        let output = fanout(&["plan", &wf.display().to_string(), "--sim"], repo.path());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{outside}: {stderr}");
        assert!(stderr.contains("outside the repository"), "{stderr}");
    }
}

fn query_one(repo: &Path, sql: &str) -> i64 {
    let Ok(reader) = fanout_core::store::StoreReader::open_in_repo(repo) else {
        return 0;
    };
    sqlite(&reader)
        .query_row(sql, [], |row| row.get::<_, Option<i64>>(0))
        .ok()
        .flatten()
        .unwrap_or(0)
}

/// After a kill and resume, `runs` said `46/69`, `show` said `69 of 47 planned`, and the
/// resumed summary left out what the interrupted attempts had spent. Every count now comes
/// from one query over the store, and an interrupted attempt keeps its spend.
#[test]
fn counts_agree_after_a_kill_and_resume() {
    const AGENTS: usize = 12;
    let repo = small_repo(AGENTS);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(work.path(), "").display().to_string();
    let plan = edit_plan(work.path(), AGENTS).display().to_string();
    let scenario = scenario_file(work.path()).display().to_string();
    let mut first = spawn_in(
        work.path(),
        &[
            "run",
            &wf,
            "--plan",
            &plan,
            "--scenario",
            &scenario,
            "--sim-latency-ms",
            "300",
            "--repo",
            &repo.path().display().to_string(),
        ],
    );
    // Kill once an attempt that has not ended has a model call on record (it was paid for).
    wait_for("a paid model call of an unfinished attempt", || {
        query_one(
            repo.path(),
            "SELECT COUNT(*) FROM events e JOIN agent_runs a ON a.run_id = e.run_id AND \
             a.agent_id = e.agent_id AND a.attempt = json_extract(e.payload, '$.attempt') \
             WHERE e.kind = 'model_call' AND a.status IS NULL",
        ) > 0
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let run_id = {
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        reader.runs().unwrap()[0].run.run_id.to_string()
    };

    let resumed = fanout(
        &["resume", &run_id, "--scenario", &scenario, "--json"],
        repo.path(),
    );
    let outcome = outcome_of(&resumed);
    assert_eq!(resumed.status.code(), Some(0), "{outcome}");

    // Interrupted attempts were closed with what they had spent.
    let interrupted = query_one(
        repo.path(),
        "SELECT COUNT(*) FROM agent_runs WHERE error LIKE 'interrupted%'",
    );
    assert!(interrupted > 0, "the kill interrupted no attempt");
    let unpaid = query_one(
        repo.path(),
        "SELECT COUNT(*) FROM agent_runs a WHERE error LIKE 'interrupted%' AND token_count = 0 \
         AND EXISTS (SELECT 1 FROM events e WHERE e.kind = 'model_call' AND e.agent_id = \
         a.agent_id AND json_extract(e.payload, '$.attempt') = a.attempt)",
    );
    assert_eq!(
        unpaid, 0,
        "an interrupted attempt that made model calls shows no tokens"
    );
    let all_tokens = query_one(
        repo.path(),
        "SELECT SUM(input_tokens + output_tokens) FROM agent_runs",
    );
    let paid_tokens = query_one(
        repo.path(),
        "SELECT SUM(json_extract(payload, '$.input_tokens') + json_extract(payload, \
         '$.output_tokens')) FROM events WHERE kind = 'model_call'",
    );
    assert_eq!(
        all_tokens, paid_tokens,
        "agent rows and model calls disagree"
    );

    // The resumed outcome, summary.json, `runs --json` and `show --json` say the same.
    let summary = summary_json(repo.path(), &run_id);
    let runs: serde_json::Value =
        serde_json::from_slice(&fanout(&["runs", "--json"], repo.path()).stdout).unwrap();
    let show: serde_json::Value =
        serde_json::from_slice(&fanout(&["show", &run_id, "--json"], repo.path()).stdout).unwrap();
    let listed = &runs[0]["agents"];
    let shown = &show["agents"];
    for source in [&outcome, &summary] {
        assert_eq!(source["succeeded"], AGENTS, "{source}");
        assert_eq!(source["agents_planned"], AGENTS);
        assert_eq!(
            source["rolled_back"], 0,
            "agents are counted by their last attempt"
        );
        let tokens =
            source["input_tokens"].as_u64().unwrap() + source["output_tokens"].as_u64().unwrap();
        assert_eq!(tokens as i64, all_tokens, "{source}");
        for counts in [listed, shown] {
            assert_eq!(counts["success"], source["succeeded"]);
            assert_eq!(counts["planned"], source["agents_planned"]);
            assert_eq!(counts["input_tokens"], source["input_tokens"]);
            assert_eq!(counts["output_tokens"], source["output_tokens"]);
            let (a, b) = (
                counts["dollars"].as_f64().unwrap(),
                source["dollars"].as_f64().unwrap(),
            );
            assert!((a - b).abs() < 1e-9, "dollars {a} vs {b}");
        }
    }
    assert_eq!(runs[0]["status"], "completed");
    let text =
        String::from_utf8_lossy(&fanout(&["show", &run_id], repo.path()).stdout).into_owned();
    assert!(
        text.contains(&format!("{AGENTS} succeeded (of {AGENTS})")),
        "{text}"
    );

    // The events table has the run's progress, as the log does.
    assert!(
        query_one(
            repo.path(),
            "SELECT COUNT(*) FROM events WHERE kind = 'agent_finished'"
        ) >= AGENTS as i64
    );

    // After `fanout rollback` the run lists as rolled back.
    let rolled = fanout(&["rollback", &run_id], repo.path());
    assert_eq!(
        rolled.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&rolled.stderr)
    );
    let runs: serde_json::Value =
        serde_json::from_slice(&fanout(&["runs", "--json"], repo.path()).stdout).unwrap();
    assert_eq!(runs[0]["status"], "rolled_back");
}

/// Turn 1 tries to write outside its scope (denied), turn 2 makes an edit that does not
/// match (a tool error), turn 3 writes its own file, turn 4 reports success.
const ESCAPING_SCENARIO: &str = r#"
rules:
  - name: escape
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {name: write_file, input: {path: "check.sh", content: "exit 0\n"}}
  - name: missing
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 2
    tool_use: {name: edit_file, input: {path: "${file}", old_text: "not in the file", new_text: "x"}}
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 3
    tool_use: {name: write_file, input: {path: "${file}", content: "edited by its agent\n"}}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 4
    tool_use:
      name: report_result
      input: {status: success, summary: "rewrote ${file}", files_changed: ["${file}"]}
"#;

/// The `tool_calls` table stayed empty and an agent whose escape attempts were all denied
/// showed as a plain `success` everywhere but `show RUN AGENT`.
/// Finishing a recorded run (`fanout_core::run::launch::recorded`): each refusal says why and
/// exits with its own code, and nothing runs before the checks pass.
#[test]
fn a_recorded_run_is_checked_before_it_is_finished() {
    const AGENTS: usize = 6;
    let repo = small_repo(AGENTS);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(work.path(), "").display().to_string();
    let plan = edit_plan(work.path(), AGENTS).display().to_string();
    let scenario = scenario_file(work.path()).display().to_string();
    let repo_arg = repo.path().display().to_string();
    let mut first = spawn_in(
        work.path(),
        &[
            "run",
            &wf,
            "--plan",
            &plan,
            "--scenario",
            &scenario,
            "--sim-latency-ms",
            "400",
            "--repo",
            &repo_arg,
        ],
    );
    wait_for("the run's first agent row", || {
        query_one(repo.path(), "SELECT COUNT(*) FROM agent_runs") > 0
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let run_id = {
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        reader.runs().unwrap()[0].run.run_id.to_string()
    };
    let stderr = |output: &Output| String::from_utf8_lossy(&output.stderr).into_owned();

    // A retry needs a run that ended; this one was killed.
    let retry = fanout(
        &[
            "run",
            &wf,
            "--retry-failed",
            &run_id,
            "--scenario",
            &scenario,
        ],
        repo.path(),
    );
    assert_eq!(retry.status.code(), Some(4), "{}", stderr(&retry));
    assert!(stderr(&retry).contains(&format!("finish it with `fanout resume {run_id}")));

    // An edited plan is refused before any agent runs.
    let saved = repo
        .path()
        .join(".fanout/runs")
        .join(&run_id)
        .join("plan.json");
    let original = std::fs::read_to_string(&saved).unwrap();
    std::fs::write(&saved, format!("{original}\n")).unwrap();
    let rows_before = query_one(repo.path(), "SELECT COUNT(*) FROM agent_runs");
    let edited = fanout(&["resume", &run_id, "--scenario", &scenario], repo.path());
    assert_eq!(edited.status.code(), Some(3), "{}", stderr(&edited));
    assert!(
        stderr(&edited).contains("changed since run"),
        "{}",
        stderr(&edited)
    );
    assert_eq!(
        query_one(repo.path(), "SELECT COUNT(*) FROM agent_runs"),
        rows_before
    );
    std::fs::write(&saved, original).unwrap();

    let unknown = fanout(&["resume", "20990101T000000Z-000000", "--sim"], repo.path());
    assert_eq!(unknown.status.code(), Some(2), "{}", stderr(&unknown));
    assert!(stderr(&unknown).contains("no run 20990101T000000Z-000000"));

    let resumed = fanout(&["resume", &run_id, "--scenario", &scenario], repo.path());
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let again = fanout(&["resume", &run_id, "--scenario", &scenario], repo.path());
    assert_eq!(again.status.code(), Some(0), "{}", stderr(&again));
    assert!(stderr(&again).contains("already completed; nothing to do"));

    let undone = fanout(&["rollback", &run_id], repo.path());
    assert_eq!(undone.status.code(), Some(0), "{}", stderr(&undone));
    let after = fanout(&["resume", &run_id, "--scenario", &scenario], repo.path());
    assert_eq!(after.status.code(), Some(4), "{}", stderr(&after));
    assert!(
        stderr(&after).contains("undone by `fanout rollback`"),
        "{}",
        stderr(&after)
    );
}

#[test]
fn tool_calls_are_recorded_and_denials_are_visible() {
    let repo = small_repo(2);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(work.path(), "");
    let scenario = work.path().join("escaping.yaml");
    std::fs::write(&scenario, ESCAPING_SCENARIO).unwrap();
    let output = fanout(
        &[
            "run",
            &wf.display().to_string(),
            "--plan",
            &edit_plan(work.path(), 2).display().to_string(),
            "--scenario",
            &scenario.display().to_string(),
            "--json",
        ],
        repo.path(),
    );
    let outcome = outcome_of(&output);
    assert_eq!(output.status.code(), Some(0), "{outcome}");
    assert_eq!(outcome["denials"], 2, "{outcome}");
    assert_eq!(outcome["tool_calls"], 6, "{outcome}");
    let run_id = outcome["run_id"].as_str().unwrap();
    assert!(
        std::fs::read_to_string(repo.path().join("check.sh"))
            .unwrap()
            .contains("grep"),
        "the denied write happened"
    );

    // One row per call with its outcome, target, duration, bytes and paths.
    let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
    let detail = reader
        .agent(&run_id.into(), &"edit-000".into())
        .unwrap()
        .unwrap();
    let calls: Vec<(String, Option<String>, Option<String>)> = detail
        .tool_calls
        .iter()
        .map(|c| (c.tool.clone(), c.outcome.clone(), c.target.clone()))
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "write_file".to_owned(),
                Some("denied".to_owned()),
                Some("check.sh".to_owned())
            ),
            (
                "edit_file".to_owned(),
                Some("error".to_owned()),
                Some("src/file_000.txt".to_owned())
            ),
            (
                "write_file".to_owned(),
                Some("ok".to_owned()),
                Some("src/file_000.txt".to_owned())
            ),
        ]
    );
    let write = &detail.tool_calls[2];
    assert_eq!(write.bytes, Some("edited by its agent\n".len() as u64));
    assert_eq!(write.paths, vec!["src/file_000.txt".to_owned()]);
    assert!(write.duration_ms.is_some());
    assert!(detail.tool_calls[1].error.is_some());

    // Denials per agent and per run in `runs`, `show`, `show RUN AGENT` and summary.md.
    let runs = String::from_utf8_lossy(&fanout(&["runs"], repo.path()).stdout).into_owned();
    let header: Vec<&str> = runs.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = runs.lines().nth(1).unwrap().split_whitespace().collect();
    // "NOT RUN" is two words of the header and one cell of the row.
    let denied = header.iter().position(|h| *h == "DENIED").unwrap() - 1;
    assert_eq!(row[denied], "2", "{runs}");
    let show = String::from_utf8_lossy(&fanout(&["show", run_id], repo.path()).stdout).into_owned();
    assert!(show.contains("denied requests: 2"), "{show}");
    let agent_line = show.lines().find(|l| l.starts_with("edit-000")).unwrap();
    assert_eq!(agent_line.split_whitespace().nth(5), Some("1"), "{show}");
    let agent = String::from_utf8_lossy(&fanout(&["show", run_id, "edit-000"], repo.path()).stdout)
        .into_owned();
    assert!(!agent.contains("no tool calls"), "{agent}");
    assert!(agent.contains("denied"), "{agent}");
    assert!(
        agent.lines().any(|l| l.contains("edit_file")
            && l.contains(" error ")
            && l.contains("occurs 0 times")),
        "{agent}"
    );
    let md = std::fs::read_to_string(
        repo.path()
            .join(format!(".fanout/runs/{run_id}/summary.md")),
    )
    .unwrap();
    assert!(md.contains("denied requests: 2"), "{md}");
}

/// Requests the in-process simulator answered, from its record file (none if it was never
/// started or never asked).
fn recorded_requests(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

/// Outside a git repository, with uncommitted changes, or without an API key, a live run was
/// refused only after its plan had been made and paid for.
#[test]
fn a_live_run_is_refused_before_the_planning_call() {
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(work.path(), "  task: Rewrite every file in src.\n")
        .display()
        .to_string();

    // Not a git repository.
    let plain = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(plain.path().join("src")).unwrap();
    std::fs::write(plain.path().join("src/a.txt"), "a\n").unwrap();
    let record = work.path().join("not-a-repo.jsonl");
    let output = fanout(
        &[
            "run",
            &wf,
            "--sim",
            "--sim-record",
            &record.display().to_string(),
        ],
        plain.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("before planning"), "{stderr}");
    assert_eq!(recorded_requests(&record), 0, "a model call was made");

    // Uncommitted changes: refused before planning; --allow-dirty plans (and checks the
    // plan's own files after).
    let repo = small_repo(2);
    std::fs::write(repo.path().join("check.sh"), "echo edited by hand\n").unwrap();
    let record = work.path().join("dirty.jsonl");
    let output = fanout(
        &[
            "run",
            &wf,
            "--sim",
            "--sim-record",
            &record.display().to_string(),
        ],
        repo.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("check.sh") && stderr.contains("--allow-dirty"),
        "{stderr}"
    );
    assert_eq!(recorded_requests(&record), 0, "a model call was made");
    let output = fanout(
        &[
            "run",
            &wf,
            "--sim",
            "--allow-dirty",
            "--sim-record",
            &record.display().to_string(),
        ],
        repo.path(),
    );
    assert!(output.status.code().is_some());
    assert!(recorded_requests(&record) > 0, "--allow-dirty did not plan");

    // No API key (and no --sim): refused without a call, with what to do.
    let output = fanout(&["run", &wf], repo.path());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("ANTHROPIC_API_KEY") || stderr.contains("--sim"),
        "{stderr}"
    );
}

/// Estimates were stated as facts ("at least 1m 50s" for a 1 s run), were 12-34x what runs
/// used, and `budgets.run.max_dollars` refused a run its actual spend fitted.
#[test]
fn estimates_say_what_they_assume_and_learn_from_earlier_runs() {
    const AGENTS: usize = 6;
    let repo = small_repo(AGENTS);
    let work = tempfile::tempdir().unwrap();
    let plan = edit_plan(work.path(), AGENTS).display().to_string();
    let scenario = scenario_file(work.path()).display().to_string();
    let report = |extra: &str, args: &[&str]| {
        let wf = edit_workflow(work.path(), extra).display().to_string();
        let mut all = vec![
            "run",
            wf.as_str(),
            "--plan",
            plan.as_str(),
            "--scenario",
            scenario.as_str(),
        ];
        all.extend_from_slice(args);
        fanout(&all, repo.path())
    };

    // First dry run: modelled, on the simulator's latency, never "at least".
    let output = report("", &["--dry-run", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let first: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let basis = first["estimate"]["basis"].to_string();
    assert!(basis.contains("the simulator's latency"), "{basis}");
    let text = String::from_utf8_lossy(&report("", &["--dry-run"]).stdout).into_owned();
    assert!(!text.contains("at least"), "{text}");
    assert!(text.contains("Expected wall time: about"), "{text}");
    assert!(text.contains("Estimate basis: modelled"), "{text}");

    // A budget under the estimate but over the actual spend: a warning, and the run completes.
    // (This scenario's scripted agents do less than the model assumes: they spend about 60 %
    // of the estimate, so a quarter under the estimate is still above the spend.)
    let estimated = first["estimate"]["dollars"].as_f64().unwrap();
    let budget = format!(
        "  budgets:\n    run:\n      max_dollars: {:.4}\n",
        estimated * 0.75
    );
    let output = report(&budget, &["--dry-run"]);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(text.contains("Warning: estimated $"), "{text}");
    let enforced = format!("{budget}      enforce_estimate: true\n");
    assert_eq!(report(&enforced, &["--dry-run"]).status.code(), Some(1));
    let output = report(&budget, &["--json"]);
    let outcome = outcome_of(&output);
    assert_eq!(output.status.code(), Some(0), "{outcome}");
    assert!(
        outcome["dollars"].as_f64().unwrap() <= estimated * 0.75,
        "{outcome}"
    );
    let actual_tokens =
        outcome["input_tokens"].as_u64().unwrap() + outcome["output_tokens"].as_u64().unwrap();

    // The next estimate goes by what the run used, and says so.
    let output = report("", &["--dry-run", "--json"]);
    let second: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let basis = second["estimate"]["basis"].to_string();
    assert!(
        basis.contains("observed in 1 earlier run(s) here"),
        "{basis}"
    );
    let estimated_tokens = second["estimate"]["total_tokens"].as_u64().unwrap();
    let ratio = estimated_tokens as f64 / actual_tokens as f64;
    assert!(
        (0.8..=1.2).contains(&ratio),
        "estimated {estimated_tokens} tokens, used {actual_tokens}"
    );
}

/// The shipped examples, as a newcomer runs them with `--sim`: each ends `completed` with
/// exit 0, and its outcome, `runs --json`, `show --json` and `summary.json` agree on agents,
/// tokens and dollars; then the same after a `kill -9` and `fanout resume`.
mod examples {
    use super::*;

    fn examples_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
    }

    /// The example's `repo/` copied under git, or an empty directory (item work).
    fn workspace(example: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let source = examples_dir().join(example).join("repo");
        if source.exists() {
            copy_dir(&source, dir.path());
            git(dir.path(), &["init", "-q", "-b", "main"]);
            git(dir.path(), &["add", "-A"]);
            git(dir.path(), &["commit", "-q", "-m", "initial"]);
        }
        dir
    }

    /// `fanout run` arguments of each example (the workflow, the scenario, a task).
    fn run_args(example: &str) -> Vec<String> {
        let dir = examples_dir().join(example);
        let path = |name: &str| dir.join(name).display().to_string();
        match example {
            "quickstart" => vec![
                path("workflow.yaml"),
                "--scenario".into(),
                path("scenario.yaml"),
            ],
            "auth-refactor" => vec![
                path("claude-workflows.yaml"),
                "--scenario".into(),
                path("scenario.yaml"),
                "--task".into(),
                "Refactor src/auth: extract JWT logic, validate every handler's input, add unit tests."
                    .into(),
            ],
            "support-tickets" => vec![path("workflow.yaml"), "--sim".into()],
            other => panic!("no example {other}"),
        }
    }

    fn fanout_at(dir: &Path, args: &[String]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(args)
            .arg("--repo")
            .arg(dir)
            .current_dir(dir)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .output()
            .unwrap()
    }

    fn json_of(output: &Output) -> serde_json::Value {
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
    }

    /// `(run_id, agents succeeded, planned, input tokens, output tokens, dollars)` of a
    /// finished run's `--json` stdout (repository or item run).
    fn outcome_figures(stdout_last: &serde_json::Value) -> (String, u64, u64, u64, u64, f64) {
        let outcome = if stdout_last["event"] == "run_finished" {
            &stdout_last["outcome"]
        } else {
            stdout_last
        };
        let run_id = outcome["run_id"].as_str().unwrap().to_owned();
        let dollars = outcome["dollars"]
            .as_f64()
            .or_else(|| outcome["cost_usd"].as_f64())
            .unwrap();
        (
            run_id,
            outcome["succeeded"].as_u64().unwrap_or(0),
            outcome["agents_planned"].as_u64().unwrap_or(0),
            outcome["input_tokens"].as_u64().unwrap(),
            outcome["output_tokens"].as_u64().unwrap(),
            dollars,
        )
    }

    fn last_json_line(output: &Output) -> serde_json::Value {
        let stdout = String::from_utf8_lossy(&output.stdout);
        for line in stdout.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "not a JSON line: {line:?}"
            );
        }
        serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap()
    }

    /// The finished run's figures agree with the store's two views and its summary.
    fn assert_agreement(dir: &Path, last: &serde_json::Value) {
        let (run_id, succeeded, planned, input, output, dollars) = outcome_figures(last);
        let runs = json_of(&fanout_at(dir, &["runs".into(), "--json".into()]));
        let listed = runs
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["run_id"] == run_id.as_str())
            .unwrap()
            .clone();
        let show = json_of(&fanout_at(
            dir,
            &["show".into(), run_id.clone(), "--json".into()],
        ));
        assert_eq!(listed["status"], "completed", "{listed}");
        for counts in [&listed["agents"], &show["agents"]] {
            assert_eq!(counts["success"], counts["planned"], "{counts}");
            assert_eq!(counts["running"], 0);
            assert_eq!(counts["input_tokens"].as_u64().unwrap(), input, "{counts}");
            assert_eq!(
                counts["output_tokens"].as_u64().unwrap(),
                output,
                "{counts}"
            );
            assert!((counts["dollars"].as_f64().unwrap() - dollars).abs() < 1e-9);
            if planned > 0 {
                assert_eq!(counts["planned"].as_u64().unwrap(), planned);
                assert_eq!(counts["success"].as_u64().unwrap(), succeeded);
            }
        }
        let summary = dir.join(format!(".fanout/runs/{run_id}/summary.json"));
        let summary: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&summary).unwrap()).unwrap();
        if summary.get("agents_planned").is_some() {
            assert_eq!(summary["status"], "completed");
            assert_eq!(summary["succeeded"].as_u64().unwrap(), succeeded);
            assert_eq!(summary["input_tokens"].as_u64().unwrap(), input);
            assert_eq!(summary["output_tokens"].as_u64().unwrap(), output);
            assert!((summary["dollars"].as_f64().unwrap() - dollars).abs() < 1e-9);
        } else {
            // Item work: every item accounted for.
            assert_eq!(summary["status"], "complete");
            assert_eq!(summary["items"], summary["succeeded"]);
        }
    }

    const EXAMPLES: [&str; 3] = ["quickstart", "auth-refactor", "support-tickets"];

    #[test]
    fn every_example_runs_live_with_the_simulator_and_its_figures_agree() {
        for example in EXAMPLES {
            let dir = workspace(example);
            let mut args = vec!["run".to_owned()];
            args.extend(run_args(example));
            args.push("--json".into());
            let output = fanout_at(dir.path(), &args);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{example}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert_agreement(dir.path(), &last_json_line(&output));
        }
    }

    #[test]
    fn every_example_killed_and_resumed_ends_completed_and_its_figures_agree() {
        for example in EXAMPLES {
            let dir = workspace(example);
            let mut args = vec!["run".to_owned()];
            args.extend(run_args(example));
            args.extend(["--sim-latency-ms".into(), "200".into()]);
            args.extend(["--repo".into(), dir.path().display().to_string()]);
            let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
                .args(&args)
                .current_dir(dir.path())
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("ANTHROPIC_BASE_URL")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            // Kill once some work is durably done and more is under way.
            wait_for(&format!("{example} to get under way"), || {
                query_one(
                    dir.path(),
                    "SELECT COUNT(*) FROM agent_runs WHERE status = 'success'",
                ) > 0
                    && query_one(
                        dir.path(),
                        "SELECT COUNT(*) FROM agent_runs WHERE status IS NULL",
                    ) > 0
            });
            child.kill().unwrap();
            child.wait().unwrap();
            let run_id = {
                let reader = fanout_core::store::StoreReader::open_in_repo(dir.path()).unwrap();
                reader.runs().unwrap()[0].run.run_id.to_string()
            };
            let mut resume = vec!["resume".to_owned(), run_id.clone(), "--json".into()];
            let mut source = run_args(example).into_iter();
            while let Some(arg) = source.next() {
                if arg == "--scenario" {
                    resume.extend(["--scenario".into(), source.next().unwrap()]);
                } else if arg == "--sim" {
                    resume.push("--sim".into());
                }
            }
            let output = fanout_at(dir.path(), &resume);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{example}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            assert_agreement(dir.path(), &last_json_line(&output));
        }
    }
}

/// A run shared through the store (`--local-slots 2`: this process runs a worker of its own
/// beside any others) verifies as a local run does. A coordinated run used to refuse a
/// workflow with a test command (or, before that, call itself "completed" without running
/// it): here the agents' patches break the test, and the run must say so, in its report,
/// its exit code, `summary.json` and the store, with its checkpoints taken.
#[test]
fn a_shared_run_checkpoints_and_verifies_like_a_local_one() {
    let repo = small_repo(3);
    let work = tempfile::tempdir().unwrap();
    let wf = edit_workflow(
        work.path(),
        "  verify:\n    test_command: bash check.sh\n    baseline: true\n  rollback:\n    checkpoint_interval: 1\n",
    );
    let output = fanout(
        &[
            "run",
            &wf.display().to_string(),
            "--plan",
            &edit_plan(work.path(), 3).display().to_string(),
            "--scenario",
            &scenario_file(work.path()).display().to_string(),
            "--local-slots",
            "2",
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(7), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("start workers with `fanout worker"),
        "{stderr}"
    );
    assert!(stdout.contains(": tests_failed"), "{stdout}");
    assert!(stdout.contains("3 succeeded (of 3)"), "{stdout}");
    assert!(
        stdout.contains(
            "Tests (`bash check.sh`): FAILED (exit code 3): broken by this run (passed on the base commit)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("Scope check: every change is inside a declared scope."),
        "{stdout}"
    );
    let run_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run "))
        .and_then(|l| l.split(':').next())
        .unwrap()
        .to_owned();
    let summary = summary_json(repo.path(), &run_id);
    assert_eq!(summary["status"], "tests_failed");
    assert_eq!(summary["test"]["passed"], false);
    assert_eq!(summary["test"]["baseline"]["passed"], true);
    assert_eq!(summary["files_changed"], 3);
    // At least one between applications (interval 1) and the final (the base is not
    // counted, as in a local run's report).
    let checkpoints = summary["checkpoints"].as_u64().unwrap();
    assert!(checkpoints >= 2, "{summary}");

    // It really went through units: each committed once by the process's own worker, and
    // applied; the checkpoints are on record and in git.
    let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
    let run: fanout_core::ids::RunId = run_id.as_str().into();
    let units = reader.units(&run).unwrap();
    assert_eq!(units.len(), 3);
    for unit in &units {
        assert_eq!(unit.state, fanout_core::store::UnitState::Committed);
        assert!(unit.applied_at.is_some());
        assert!(
            unit.lease_owner
                .as_deref()
                .is_some_and(|owner| owner.starts_with("coordinator:")),
            "{:?}",
            unit.lease_owner
        );
    }
    let recorded = reader.checkpoints(&run).unwrap();
    assert_eq!(recorded.len() as u64, checkpoints + 1, "{recorded:?}");
    // Every progress event of the run is on record beside the workers' model calls.
    let events = reader.events(&run).unwrap();
    let kinds = |kind: &str| events.iter().filter(|e| e.kind == kind).count();
    assert_eq!(kinds("agent_finished"), 3, "{events:?}");
    assert_eq!(kinds("model_call"), 6, "{events:?}");
    assert_eq!(kinds("phase"), 3, "{events:?}");
    for checkpoint in &recorded {
        let found = git(repo.path(), &["rev-parse", &checkpoint.ref_name]);
        assert_eq!(found.trim(), checkpoint.commit_id);
    }
    // The final checkpoint holds the agents' edits.
    let last = recorded.iter().max_by_key(|c| c.seq).unwrap();
    let changed = git(
        repo.path(),
        &[
            "diff",
            "--name-only",
            &recorded[0].commit_id,
            &last.commit_id,
        ],
    );
    assert_eq!(changed.lines().count(), 3, "{changed}");
}
