//! Every verdict a run prints is true (issue: trustworthy runs). Each test here was written
//! against a false verdict the old code printed: a failing test reported as passed, two live
//! runs editing one repository, a dry run that ran agents, fanout's own log flagged as an
//! out-of-scope change, counts that disagreed.

use super::*;

/// Turn 1 writes the agent's one declared file; turn 2 reports.
pub(crate) const EDIT_SCENARIO: &str = r#"
rules:
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {name: write_file, input: {path: "${file}", content: "edited by its agent\n"}}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 2
    tool_use:
      name: report_result
      input: {status: success, summary: "rewrote ${file}", files_changed: ["${file}"]}
"#;

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
                "tools": ["read_file", "write_file"],
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

fn outcome_of(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
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
            &format!("  verify:\n    test_command: {command}\n"),
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
    }
}

fn spawn_in(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .current_dir(dir)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .current_dir(dir)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .output()
        .unwrap()
}

/// Wait (polling the file system, up to a minute) until `check` holds.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
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
        "3000",
        "--repo",
        repo_arg.as_str(),
    ];
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

    // The second is refused at once, naming the run that holds the repository.
    let started = std::time::Instant::now();
    let second = run_in(work.path(), &args);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains(&format!("run {run_id}")), "{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "refused only after {:?}",
        started.elapsed()
    );
    // A dry run is still allowed while a live run holds the repository.
    let dry = run_in(
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
    let resumed = run_in(
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
