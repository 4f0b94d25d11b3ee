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
