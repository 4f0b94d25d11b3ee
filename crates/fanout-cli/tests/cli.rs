//! The `fanout` binary end to end: each test runs the built executable with an in-process
//! simulator (`--scenario`) against a temp copy of the example repository under git.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A raw connection on the SQLite file a reader reads, for queries the store does not offer.
fn sqlite(reader: &fanout_core::store::StoreReader) -> rusqlite::Connection {
    rusqlite::Connection::open(reader.path().unwrap()).unwrap()
}

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/auth-refactor")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=fanout",
            "-c",
            "user.email=fanout@example.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn example_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_dir().join("repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "initial"]);
    dir
}

fn fanout(args: &[&str], repo: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .arg("--repo")
        .arg(repo)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .output()
        .unwrap()
}

/// `fanout ARGS` run in `dir` with no API key in its environment.
fn fanout_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .current_dir(dir)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap()
}

/// [`fanout_in`] in the background, its output discarded.
fn spawn_in(dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_fanout"))
        .args(args)
        .current_dir(dir)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Wait until `check` holds (up to a minute). It polls every 20 ms: the tests that use it
/// watch another process (the fanout binary) through the file system and its run store, which
/// offer nothing to wait on.
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

fn example(name: &str) -> String {
    example_dir().join(name).display().to_string()
}

const TASK: &str = "Refactor src/auth: extract JWT logic, validate handler inputs, add tests.";

#[test]
fn plan_dry_run_prints_the_seed_lines_and_exits_zero() {
    let repo = example_repo();
    let status_before = git(repo.path(), &["status", "--porcelain"]);
    let output = fanout(
        &[
            "run",
            &example("claude-workflows.yaml"),
            "--dry-run",
            "--scenario",
            &example("scenario.yaml"),
            "--task",
            TASK,
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for line in [
        "[DRY RUN] Workflow: auth-refactor",
        "Agents planned: 47",
        "Files in scope: 83",
        "External API calls: 0 (denied)",
        "Shell commands: [git status, npm test] (allowlisted)",
        // Against the simulator the estimate is what its agents will use; the seed's "2.1M
        // (38% Fast Mode)" is this plan against the model APIs (fanout-core's
        // `seed_dry_run_prints_every_seed_line_and_changes_nothing`).
        "Estimated token usage: 246K (52% Fast Mode)",
        "No permission violations detected.",
        "Run without --dry-run to execute.",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "missing {line:?}:\n{stdout}"
        );
    }
    assert_eq!(git(repo.path(), &["status", "--porcelain"]), status_before);

    // `fanout plan` is the same path, and --verbose adds one row per agent.
    let output = fanout(
        &[
            "plan",
            &example("claude-workflows.yaml"),
            "--sim",
            "--scenario",
            &example("scenario.yaml"),
            "--task",
            TASK,
            "--verbose",
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0));
    assert!(stdout.contains("[DRY RUN] Workflow: auth-refactor"));
    assert!(
        stdout
            .lines()
            .any(|l| l.trim_start().starts_with("test-h21 ")),
        "{stdout}"
    );
}

#[test]
fn json_report_carries_the_same_data() {
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
    assert_eq!(output.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["workflow"], "auth-refactor");
    assert_eq!(report["agents_planned"], 47);
    assert_eq!(report["files_in_scope"], 83);
    assert_eq!(report["external_api"]["policy"], "denied");
    assert_eq!(
        report["shell_commands"]["commands"],
        serde_json::json!(["git status", "npm test"])
    );
    assert_eq!(report["violations"], serde_json::json!([]));
    assert_eq!(report["agents"].as_array().unwrap().len(), 47);
    assert!(
        report["saved"]["hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
}

#[test]
fn violations_exit_non_zero_with_agent_and_reason() {
    let repo = example_repo();
    let scenario = repo.path().join("bad-scenario.yaml");
    std::fs::write(
        &scenario,
        "rules:\n  - match: {tool: submit_plan}\n    tool_use: {name: submit_plan, input: {workflow: auth-refactor, subtasks: [{task_id: escape, description: x, scope: [\"../elsewhere\"], tools: [read_file], mode: fast, depends_on: []}]}}\n",
    )
    .unwrap();
    let output = fanout(
        &[
            "run",
            &example("claude-workflows.yaml"),
            "--dry-run",
            "--scenario",
            &scenario.display().to_string(),
            "--task",
            TASK,
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("escape: scope `../elsewhere` — `..` leads outside the repository"),
        "{stdout}"
    );
    assert!(!stdout.contains("No permission violations detected."));
}

#[test]
fn a_reviewed_plan_is_used_without_a_model_and_a_live_run_checks_git() {
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

    // No --sim, no API key: only the reviewed plan can make this work.
    let output = fanout(
        &[
            "plan",
            &example("claude-workflows.yaml"),
            "--plan",
            &plan_path,
        ],
        repo.path(),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("Plan read from"), "{stdout}");

    // A live run needs a model for its agents: without --sim or a key it says so.
    let output = fanout(
        &[
            "run",
            &example("claude-workflows.yaml"),
            "--plan",
            &plan_path,
        ],
        repo.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--sim"), "{stderr}");

    // Uncommitted changes where the plan touches: refused, with what to do.
    std::fs::write(repo.path().join("src/auth/jwt.ts"), "changed\n").unwrap();
    let output = fanout(
        &[
            "run",
            &example("claude-workflows.yaml"),
            "--plan",
            &plan_path,
            "--sim",
        ],
        repo.path(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("src/auth/jwt.ts") && stderr.contains("git stash"),
        "{stderr}"
    );
}

#[test]
fn a_broken_workflow_file_exits_two() {
    let repo = example_repo();
    let file = repo.path().join("broken.yaml");
    std::fs::write(&file, "workflow:\n  name: x\n  max_paralel_agents: 3\n").unwrap();
    let output = fanout(&["plan", &file.display().to_string(), "--sim"], repo.path());
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("max_parallel_agents"));
}

/// `fanout runs`, `fanout show` and `fanout rollback`, with the store filled through the
/// library and checkpoints taken with real git.
mod store_commands {
    use std::path::Path;
    use std::process::{Command, Output};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use fanout_core::config::Mode;
    use fanout_core::run::Checkpointer;
    use fanout_core::store::{
        AgentFinish, AgentStart, AgentStatus, DenialRecord, NewRun, RunStatus, Store,
        ToolCallRecord,
    };

    fn fanout(args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(args)
            .output()
            .unwrap()
    }

    fn stdout(output: &Output) -> String {
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout.clone()).unwrap()
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_780_000_000 + seconds)
    }

    async fn fill(repo: &Path) {
        let store = Store::open_in_repo(repo).unwrap();
        for (run_id, started) in [("run-old", 0), ("run-new", 1000)] {
            store
                .create_run(NewRun {
                    run_id: run_id.into(),
                    workflow: "auth-refactor".to_owned(),
                    config_path: None,
                    plan_hash: Some("sha256:feed".to_owned()),
                    repo: Some(repo.to_path_buf()),
                    status: RunStatus::Running,
                    started_at: at(started),
                    base_commit: None,
                    agents_planned: 2,
                    simulated: false,
                })
                .await
                .unwrap();
        }
        for (agent, mode, status) in [
            ("jwt", Mode::Default, AgentStatus::Success),
            ("handlers", Mode::Fast, AgentStatus::Rollback),
        ] {
            store
                .start_agent(AgentStart {
                    run_id: "run-new".into(),
                    agent_id: agent.into(),
                    attempt: 1,
                    task_description: format!("refactor {agent}"),
                    mode,
                    model: None,
                    escalated: false,
                    started_at: at(1001),
                })
                .await
                .unwrap();
            store
                .tool_call(ToolCallRecord {
                    run_id: "run-new".into(),
                    agent_id: agent.into(),
                    attempt: 1,
                    seq: 1,
                    tool: "edit_file".to_owned(),
                    target: Some(format!("src/auth/{agent}.ts")),
                    ok: true,
                    outcome: None,
                    duration_ms: None,
                    bytes: None,
                    paths: Vec::new(),
                    error: None,
                    started_at: at(1002),
                    ended_at: Some(at(1003)),
                })
                .await
                .unwrap();
            store
                .finish_agent(AgentFinish {
                    run_id: "run-new".into(),
                    agent_id: agent.into(),
                    attempt: 1,
                    status,
                    files_accessed: vec![format!("src/auth/{agent}.ts")],
                    tools_called: vec!["read_file".to_owned(), "edit_file".to_owned()],
                    input_tokens: 900,
                    output_tokens: 100,
                    cost_usd: 0.5,
                    cache_read_tokens: 0,
                    cache_write_tokens: 0,
                    cache_saved_usd: 0.0,
                    error: (status != AgentStatus::Success).then(|| "tests failed".to_owned()),
                    checkpoint: None,
                    ended_at: at(1005),
                })
                .await
                .unwrap();
        }
        store
            .denial(DenialRecord {
                run_id: "run-new".into(),
                agent_id: "handlers".into(),
                attempt: 1,
                tool: "write_file".to_owned(),
                target: Some("config/database.ts".to_owned()),
                reason: "outside the agent's scope".to_owned(),
                at: at(1004),
            })
            .await
            .unwrap();
        store
            .set_run_status(&"run-new".into(), RunStatus::Partial, Some(at(1010)), None)
            .await
            .unwrap();
        store.close().await.unwrap();
    }

    #[tokio::test]
    async fn runs_and_show_answer_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().to_str().unwrap();
        // Before anything ran: an empty answer, not an error.
        assert_eq!(stdout(&fanout(&["runs", "--repo", repo])), "");
        assert_eq!(
            stdout(&fanout(&["runs", "--repo", repo, "--json"])).trim(),
            "[]"
        );

        fill(dir.path()).await;
        let text = stdout(&fanout(&["runs", "--repo", repo]));
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RUN "), "{text}");
        assert!(
            lines[1].starts_with("run-new ") && lines[1].contains("partial"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("run-old ") && lines[2].contains("running"),
            "{text}"
        );

        let json: serde_json::Value =
            serde_json::from_str(&stdout(&fanout(&["runs", "--repo", repo, "--json"]))).unwrap();
        assert_eq!(json[0]["run_id"], "run-new");
        assert_eq!(json[0]["agents"]["success"], 1);
        assert_eq!(json[0]["agents"]["rollback"], 1);
        assert_eq!(json[0]["total_tokens"], 2000);

        let text = stdout(&fanout(&["show", "run-new", "--repo", repo]));
        assert!(text.contains("status    partial"), "{text}");
        assert!(
            text.contains("AGENT") && text.contains("DURATION"),
            "{text}"
        );
        let jwt = text.lines().find(|l| l.starts_with("jwt ")).unwrap();
        for cell in ["success", "default", "1000", "edit_file,read_file", "4.0s"] {
            assert!(jwt.contains(cell), "{cell} missing from {jwt:?}");
        }
        assert!(
            text.lines()
                .any(|l| l.starts_with("handlers ") && l.contains("rollback"))
        );

        let text = stdout(&fanout(&["show", "run-new", "handlers", "--repo", repo]));
        assert!(text.contains("tests failed"), "{text}");
        assert!(text.contains("config/database.ts") && text.contains("outside the agent's scope"));
        let json: serde_json::Value = serde_json::from_str(&stdout(&fanout(&[
            "show", "run-new", "handlers", "--repo", repo, "--json",
        ])))
        .unwrap();
        assert_eq!(json["attempts"][0]["status"], "rollback");
        assert_eq!(json["tool_calls"][0]["target"], "src/auth/handlers.ts");
        assert_eq!(json["denials"].as_array().unwrap().len(), 1);

        let missing = fanout(&["show", "run-nope", "--repo", repo]);
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("no run run-nope"));
        let missing = fanout(&["show", "run-new", "ghost", "--repo", repo]);
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("has no agent ghost"));
    }

    #[tokio::test]
    async fn rollback_restores_and_refuses_to_discard_later_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path();
        let repo = path.to_str().unwrap();
        super::git(path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("kept.txt"), "before the run\n").unwrap();
        super::git(path, &["add", "-A"]);
        super::git(path, &["commit", "-q", "-m", "initial"]);

        let store = Store::open_in_repo(path).unwrap();
        store
            .create_run(NewRun {
                run_id: "run-rb".into(),
                workflow: "w".to_owned(),
                config_path: None,
                plan_hash: None,
                repo: None,
                status: RunStatus::Completed,
                started_at: at(0),
                base_commit: None,
                agents_planned: 0,
                simulated: false,
            })
            .await
            .unwrap();
        let mut checkpoints = Checkpointer::new(path, &"run-rb".into())
            .unwrap()
            .with_store(store.clone());
        checkpoints.base().await.unwrap();
        std::fs::write(path.join("kept.txt"), "changed by the run\n").unwrap();
        std::fs::write(path.join("created.txt"), "new\n").unwrap();
        checkpoints.checkpoint("end").await.unwrap();
        store.close().await.unwrap();

        // Edited by hand after the run: refused without --force.
        std::fs::write(path.join("created.txt"), "edited later\n").unwrap();
        let refused = fanout(&["rollback", "run-rb", "--repo", repo]);
        assert!(!refused.status.success());
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("created.txt") && stderr.contains("--force"),
            "{stderr}"
        );

        let text = stdout(&fanout(&["rollback", "run-rb", "--repo", repo, "--force"]));
        assert!(text.contains("to checkpoint 0"), "{text}");
        assert!(text.contains("refs/fanout/run-rb/pre-rollback"), "{text}");
        assert_eq!(
            std::fs::read_to_string(path.join("kept.txt")).unwrap(),
            "before the run\n"
        );
        assert!(!path.join("created.txt").exists());

        // Forward to the end of the run again, as JSON.
        let json: serde_json::Value = serde_json::from_str(&stdout(&fanout(&[
            "rollback", "run-rb", "--to", "1", "--repo", repo, "--json",
        ])))
        .unwrap();
        assert_eq!(json["target_seq"], 1);
        assert_eq!(
            std::fs::read_to_string(path.join("created.txt")).unwrap(),
            "new\n"
        );
        // Checkpoints are in `show`; the rollbacks are in the run's events.
        let show = stdout(&fanout(&["show", "run-rb", "--repo", repo]));
        assert!(show.contains("CHECKPOINT"), "{show}");
        assert!(
            show.lines()
                .any(|l| l.starts_with("0 ") && l.ends_with("base")),
            "{show}"
        );
        assert!(
            show.lines()
                .any(|l| l.starts_with("1 ") && l.ends_with("end")),
            "{show}"
        );
        let events = fanout_core::store::StoreReader::open_in_repo(path)
            .unwrap()
            .events(&"run-rb".into())
            .unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["rollback", "rollback"]);
    }
}

/// `fanout run` live, end to end: 200 agents, each scripted by the simulator to edit its own
/// file and report, in a real git repository, with the run store and checkpoints checked.
mod live_run {
    use super::*;

    const AGENTS: usize = 200;

    /// The seed's columns of one `agent_runs` row (run_id aside).
    type AgentRow = (
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
        String,
        String,
    );

    /// Turn 1 writes the agent's one declared file (taken from its system prompt); turn 2
    /// reports. The synthesis call gets the simulator's default text answer.
    pub(crate) const SCENARIO: &str = r#"
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

    fn workflow(dir: &Path) -> PathBuf {
        let path = dir.join("edit-each.yaml");
        std::fs::write(
            &path,
            "workflow:\n  name: edit-each\n  max_parallel_agents: 50\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n    shell_exec: deny\n  logging:\n    level: verbose\n    destination: ./.fanout/logs/run-{timestamp}.jsonl\n  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: 10\n",
        )
        .unwrap();
        path
    }

    fn plan(dir: &Path) -> PathBuf {
        let subtasks: Vec<serde_json::Value> = (0..AGENTS)
            .map(|i| {
                serde_json::json!({
                    "task_id": format!("edit-{i:03}"),
                    "description": format!("Rewrite src/file_{i:03}.txt"),
                    "scope": [format!("src/file_{i:03}.txt")],
                    "tools": ["read_file", "write_file"],
                    "mode": if i.is_multiple_of(2) { "fast" } else { "default" },
                    "depends_on": []
                })
            })
            .collect();
        let path = dir.join("plan.json");
        let plan = serde_json::json!({"workflow": "edit-each", "subtasks": subtasks});
        std::fs::write(&path, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
        path
    }

    fn repository() -> tempfile::TempDir {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("src")).unwrap();
        for i in 0..AGENTS {
            std::fs::write(
                repo.path().join(format!("src/file_{i:03}.txt")),
                format!("original {i}\n"),
            )
            .unwrap();
        }
        std::fs::write(repo.path().join("README.md"), "untouched\n").unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "initial"]);
        repo
    }

    /// 5 % 529, 2 % 500 and 1 % hung requests (given up on after 2 s): every agent still
    /// succeeds, exactly once, because retries happen inside the fleet, not by re-running
    /// agents.
    #[test]
    fn faults_are_absorbed_and_no_agent_succeeds_twice() {
        let repo = repository();
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("scenario.yaml");
        std::fs::write(&scenario, SCENARIO).unwrap();
        let record = work.path().join("exchanges.jsonl");
        let output = fanout(
            &[
                "run",
                &workflow(work.path()).display().to_string(),
                "--plan",
                &plan(work.path()).display().to_string(),
                "--scenario",
                &scenario.display().to_string(),
                "--sim-faults",
                "overloaded=0.05,api_error=0.02,hang=0.01",
                "--sim-seed",
                "17",
                "--sim-record",
                &record.display().to_string(),
                "--request-timeout",
                "2",
            ],
            repo.path(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{stderr}");

        // The simulator really injected every kind of fault.
        let exchanges: Vec<serde_json::Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let faults = |kind: &str| exchanges.iter().filter(|e| e["fault"] == kind).count();
        for kind in ["overloaded", "api_error", "hang"] {
            assert!(
                faults(kind) > 0,
                "no {kind} fault among {} exchanges",
                exchanges.len()
            );
        }

        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let connection = sqlite(&reader);
        let (rows, successes, distinct): (i64, i64, i64) = connection
            .query_row(
                "SELECT COUNT(*), SUM(status = 'success'), COUNT(DISTINCT agent_id) FROM agent_runs",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(distinct, AGENTS as i64);
        assert_eq!(
            successes, AGENTS as i64,
            "every agent succeeded exactly once"
        );
        assert_eq!(rows, AGENTS as i64, "no agent needed a second attempt");
        for i in 0..AGENTS {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, "edited by its agent\n");
        }
    }

    #[test]
    fn two_hundred_agents_each_edit_their_own_file() {
        let repo = repository();
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("scenario.yaml");
        std::fs::write(&scenario, SCENARIO).unwrap();
        let head_before = git(repo.path(), &["rev-parse", "HEAD"]);

        let output = fanout(
            &[
                "run",
                &workflow(work.path()).display().to_string(),
                "--plan",
                &plan(work.path()).display().to_string(),
                "--scenario",
                &scenario.display().to_string(),
                "--json",
            ],
            repo.path(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stderr}\n{stdout}");
        let finished: serde_json::Value = stdout
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["event"] == "run_finished")
            .expect("a run_finished event");
        let outcome = &finished["outcome"];
        assert_eq!(outcome["status"], "completed");
        assert_eq!(outcome["succeeded"], AGENTS);
        assert_eq!(outcome["files_changed"], AGENTS);
        assert_eq!(outcome["out_of_scope"], serde_json::json!([]));
        let run_id = outcome["run_id"].as_str().unwrap().to_owned();

        // The tree: every declared file edited, nothing else; the user's HEAD never moved.
        for i in 0..AGENTS {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, "edited by its agent\n");
        }
        assert_eq!(
            std::fs::read_to_string(repo.path().join("README.md")).unwrap(),
            "untouched\n"
        );
        assert_eq!(git(repo.path(), &["rev-parse", "HEAD"]), head_before);

        // The store: one agent_runs row per agent with every seed column filled in.
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let connection = sqlite(&reader);
        let mut statement = connection
            .prepare(
                "SELECT agent_id, task_description, files_accessed, tools_called, status, \
                 token_count, mode, timestamp_start, timestamp_end FROM agent_runs WHERE run_id = ?1",
            )
            .unwrap();
        let rows: Vec<AgentRow> = statement
            .query_map([&run_id], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                    row.get(5)?,
                    row.get(6)?,
                    row.get(7)?,
                    row.get(8)?,
                ))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(rows.len(), AGENTS);
        for (agent, description, files, tools, status, tokens, mode, start, end) in &rows {
            let i: usize = agent.trim_start_matches("edit-").parse().unwrap();
            assert_eq!(description, &format!("Rewrite src/file_{i:03}.txt"));
            let files: Vec<String> = serde_json::from_str(files).unwrap();
            assert_eq!(files, vec![format!("src/file_{i:03}.txt")], "{agent}");
            let tools: Vec<String> = serde_json::from_str(tools).unwrap();
            assert!(
                tools.contains(&"write_file".to_string()),
                "{agent}: {tools:?}"
            );
            assert_eq!(status, "success");
            assert!(*tokens > 0);
            assert_eq!(
                mode,
                if i.is_multiple_of(2) {
                    "fast"
                } else {
                    "default"
                }
            );
            assert!(start <= end, "{agent}: {start} > {end}");
        }

        // Checkpoints: the base (0 completions), then one each time 10 or more completions
        // have accumulated (under a burst one checkpoint covers every completion that arrived
        // while the previous was being taken), and the final one with all 200.
        let mut statement = connection
            .prepare("SELECT seq, label, completed_agents FROM checkpoints WHERE run_id = ?1 ORDER BY seq")
            .unwrap();
        let marks: Vec<(i64, String, i64)> = statement
            .query_map([&run_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let checkpoints = marks.len() as i64;
        assert!(
            checkpoints >= 3,
            "base, at least one interval checkpoint, final: {marks:?}"
        );
        assert_eq!(marks[0], (0, "base".to_string(), 0));
        let last = marks.last().unwrap();
        assert_eq!(
            (last.1.as_str(), last.2),
            ("final", AGENTS as i64),
            "{marks:?}"
        );
        for pair in marks[..marks.len() - 1].windows(2) {
            assert!(
                pair[1].2 - pair[0].2 >= 10,
                "a checkpoint before 10 completions: {marks:?}"
            );
        }
        let refs = git(
            repo.path(),
            &[
                "for-each-ref",
                "--format=%(refname)",
                &format!("refs/fanout/{run_id}/checkpoints/"),
            ],
        );
        assert_eq!(refs.lines().count() as i64, checkpoints);

        // And `fanout rollback` puts every file back.
        let output = fanout(&["rollback", &run_id], repo.path());
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        for i in 0..AGENTS {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, format!("original {i}\n"));
        }
    }
}

/// Crashes, Ctrl-C and failures of live runs, and finishing them with `fanout resume` and
/// `fanout run --retry-failed`: the final tree must be the one an uninterrupted run makes, and
/// no agent may succeed twice.
mod resume {
    use crate::sqlite;
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{fanout, git};

    const AGENTS: usize = 200;

    /// Turn 1 writes the agent's file (its content names the file), turn 2 reports.
    pub(crate) const SCENARIO: &str = r#"
rules:
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {name: write_file, input: {path: "${file}", content: "edited ${file} by its agent\n"}}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 2
    tool_use:
      name: report_result
      input: {status: success, summary: "rewrote ${file}", files_changed: ["${file}"]}
"#;

    pub(crate) fn workflow(dir: &Path, parallel: usize) -> PathBuf {
        let path = dir.join("edit-each.yaml");
        std::fs::write(
            &path,
            format!(
                "workflow:\n  name: edit-each\n  max_parallel_agents: {parallel}\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n    shell_exec: deny\n  logging:\n    level: verbose\n    destination: ./.fanout/logs/run-{{timestamp}}.jsonl\n  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: 10\n"
            ),
        )
        .unwrap();
        path
    }

    pub(crate) fn plan(dir: &Path, agents: usize) -> PathBuf {
        let subtasks: Vec<serde_json::Value> = (0..agents)
            .map(|i| {
                serde_json::json!({
                    "task_id": format!("edit-{i:03}"),
                    "description": format!("Rewrite src/file_{i:03}.txt"),
                    "scope": [format!("src/file_{i:03}.txt")],
                    "tools": ["read_file", "write_file"],
                    "mode": if i.is_multiple_of(2) { "fast" } else { "default" },
                    "depends_on": []
                })
            })
            .collect();
        let path = dir.join("plan.json");
        let plan = serde_json::json!({"workflow": "edit-each", "subtasks": subtasks});
        std::fs::write(&path, serde_json::to_vec_pretty(&plan).unwrap()).unwrap();
        path
    }

    pub(crate) fn repository(agents: usize) -> tempfile::TempDir {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(repo.path().join("src")).unwrap();
        for i in 0..agents {
            let path = repo.path().join(format!("src/file_{i:03}.txt"));
            std::fs::write(&path, format!("original {i}\n")).unwrap();
            if i % 7 == 0 {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        std::fs::write(repo.path().join("README.md"), "untouched\n").unwrap();
        git(repo.path(), &["init", "-q", "-b", "main"]);
        git(repo.path(), &["add", "-A"]);
        git(repo.path(), &["commit", "-q", "-m", "initial"]);
        repo
    }

    /// path → (mode, sha256) of every file outside `.git` and `.fanout`.
    pub(crate) fn tree(repo: &Path) -> BTreeMap<String, (u32, String)> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, String)>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let entry = entry.unwrap();
                let path = entry.path();
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                if relative == ".git" || relative == ".fanout" {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    walk(root, &path, out);
                } else {
                    use std::os::unix::fs::PermissionsExt;
                    let bytes = std::fs::read(&path).unwrap();
                    out.insert(
                        relative,
                        (
                            meta.permissions().mode() & 0o7777,
                            fanout_core::plan::store::hash_bytes(&bytes),
                        ),
                    );
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(repo, repo, &mut out);
        out
    }

    fn query_i64(repo: &Path, sql: &str, run_id: &str) -> i64 {
        let reader = fanout_core::store::StoreReader::open_in_repo(repo).unwrap();
        sqlite(&reader)
            .query_row(sql, [run_id], |row| row.get(0))
            .unwrap()
    }

    pub(crate) fn run_ids(repo: &Path) -> Vec<String> {
        let Ok(reader) = fanout_core::store::StoreReader::open_in_repo(repo) else {
            return Vec::new();
        };
        let connection = sqlite(&reader);
        let mut statement = connection
            .prepare("SELECT run_id FROM runs ORDER BY started_at")
            .unwrap();
        statement
            .query_map([], |row| row.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    /// Agents recorded as succeeded more than once, and agents with no success.
    fn success_anomalies(repo: &Path, run_id: &str, agents: usize) -> (i64, i64) {
        let twice = query_i64(
            repo,
            "SELECT COUNT(*) FROM (SELECT agent_id FROM agent_runs WHERE run_id = ?1 AND \
             status = 'success' GROUP BY agent_id HAVING COUNT(*) > 1)",
            run_id,
        );
        let succeeded = query_i64(
            repo,
            "SELECT COUNT(DISTINCT agent_id) FROM agent_runs WHERE run_id = ?1 AND status = 'success'",
            run_id,
        );
        (twice, agents as i64 - succeeded)
    }

    /// The same crash on a PostgreSQL store: killed once a quarter of the agents succeeded,
    /// then `fanout resume --store` finishes it from what PostgreSQL recorded, to the tree an
    /// uninterrupted run makes, with no agent succeeding twice and nothing in flight.
    #[test]
    fn a_run_killed_on_a_postgres_store_resumes_from_it() {
        let Some(database) = crate::postgres_store::Database::create() else {
            return;
        };
        let mut client = postgres::Client::connect(&database.url, postgres::NoTls).unwrap();
        let mut count = |sql: &str| -> i64 {
            // The tables appear with the run's first record.
            client
                .query_opt(sql, &[])
                .ok()
                .flatten()
                .map(|row| row.get(0))
                .unwrap_or(0)
        };
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("scenario.yaml");
        std::fs::write(&scenario, SCENARIO).unwrap();
        let workflow = workflow(work.path(), 50).display().to_string();
        let plan = plan(work.path(), AGENTS).display().to_string();
        let scenario = scenario.display().to_string();
        let store = database.url.clone();
        let run_args = [
            "run",
            workflow.as_str(),
            "--plan",
            plan.as_str(),
            "--scenario",
            scenario.as_str(),
            "--sim-latency-ms",
            "10",
            "--store",
            store.as_str(),
        ];
        let clean = repository(AGENTS);
        let output = fanout(&run_args[..8], clean.path());
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let expected = tree(clean.path());

        let repo = repository(AGENTS);
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(run_args)
            .arg("--repo")
            .arg(repo.path())
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let quarter = (AGENTS / 4) as i64;
        let deadline = Instant::now() + Duration::from_secs(120);
        while count("SELECT COUNT(*) FROM agent_runs WHERE status = 'success'") < quarter {
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            assert!(Instant::now() < deadline, "no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let run_id: String = postgres::Client::connect(&database.url, postgres::NoTls)
            .unwrap()
            .query_one("SELECT run_id FROM runs", &[])
            .unwrap()
            .get(0);
        assert_eq!(
            count("SELECT COUNT(*) FROM runs WHERE status = 'running'"),
            1,
            "killed mid-run"
        );

        let output = fanout(
            &[
                "resume",
                &run_id,
                "--scenario",
                &scenario,
                "--store",
                &store,
            ],
            repo.path(),
        );
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        assert_eq!(tree(repo.path()), expected, "the final tree differs");
        assert!(!repo.path().join(".fanout/fanout.db").exists());
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM (SELECT agent_id FROM agent_runs WHERE status = 'success'
                 GROUP BY agent_id HAVING COUNT(*) > 1) twice"
            ),
            0,
            "an agent succeeded twice"
        );
        assert_eq!(
            count("SELECT COUNT(DISTINCT agent_id) FROM agent_runs WHERE status = 'success'"),
            AGENTS as i64
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM agent_runs WHERE status IS NULL"),
            0
        );
        assert_eq!(
            count("SELECT COUNT(*) FROM runs WHERE status = 'completed'"),
            1
        );
    }

    /// Wait for `child` up to `deadline`; `None` if it is still running then.
    fn wait_until(child: &mut Child, deadline: Instant) -> Option<std::process::ExitStatus> {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// xorshift64*: the kill points are reproducible from the seed.
    struct Prng(u64);

    impl Prng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    #[test]
    fn a_run_killed_at_random_points_and_resumed_ends_like_an_uninterrupted_one() {
        let started = Instant::now();
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("scenario.yaml");
        std::fs::write(&scenario, SCENARIO).unwrap();
        let workflow = workflow(work.path(), 50).display().to_string();
        let plan = plan(work.path(), AGENTS).display().to_string();
        let scenario = scenario.display().to_string();
        let run_args = [
            "run",
            workflow.as_str(),
            "--plan",
            plan.as_str(),
            "--scenario",
            scenario.as_str(),
            "--sim-latency-ms",
            "10",
        ];

        // The fault-free run, also the measure of how long a run takes.
        let clean = repository(AGENTS);
        let t0 = Instant::now();
        let output = fanout(&run_args, clean.path());
        let clean_time = t0.elapsed();
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let expected = tree(clean.path());

        // The same run, killed with SIGKILL again and again. Kill points are drawn from the
        // seed as "once N agents have succeeded, wait a random few ms, kill": spread from the
        // start (N = 0: during startup or resume's roll-back) through the checkpoints (every
        // 10 completions) to the end (N = 200: the final checkpoint, scope check, synthesis).
        let repo = repository(AGENTS);
        let mut prng = Prng(0x5eed_f00d_cafe_0001);
        let mut targets: Vec<i64> = (0..22).map(|_| prng.below(AGENTS as u64) as i64).collect();
        targets.sort_unstable();
        targets.insert(0, 0);
        targets.extend([AGENTS as i64, AGENTS as i64]);
        let mut kills = 0;
        let mut attempts = 0;
        let mut run_id: Option<String> = None;
        let mut progress: Vec<i64> = Vec::new();
        let successes = |run_id: &Option<String>| match run_id {
            Some(id) => query_i64(
                repo.path(),
                "SELECT COUNT(*) FROM agent_runs WHERE run_id = ?1 AND status = 'success'",
                id,
            ),
            None => 0,
        };
        loop {
            attempts += 1;
            assert!(attempts < 100, "no end in sight after {kills} kills");
            let resume_args;
            let args: &[&str] = match &run_id {
                None => &run_args,
                Some(id) => {
                    resume_args = ["resume", id.as_str(), "--scenario", scenario.as_str()];
                    &resume_args
                }
            };
            let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
                .args(args)
                .arg("--repo")
                .arg(repo.path())
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("ANTHROPIC_BASE_URL")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(work.path().join("stderr.txt")).unwrap())
                .spawn()
                .unwrap();
            let target = targets.get(kills).copied();
            let mut exited = None;
            if let Some(target) = target {
                // Wait for the target (the first run's id appears once it is on record).
                while exited.is_none() {
                    if run_id.is_none() {
                        run_id = run_ids(repo.path()).pop();
                    }
                    if successes(&run_id) >= target {
                        break;
                    }
                    exited = child.try_wait().unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
                if exited.is_none() {
                    let extra = Duration::from_millis(prng.below(40));
                    exited = wait_until(&mut child, Instant::now() + extra);
                }
            } else {
                exited = Some(child.wait().unwrap());
            }
            match exited {
                Some(status) => {
                    assert_eq!(
                        status.code(),
                        Some(0),
                        "process {attempts} failed after {kills} kills: {}",
                        std::fs::read_to_string(work.path().join("stderr.txt")).unwrap_or_default()
                    );
                    break;
                }
                None => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                }
            }
            if run_id.is_none() {
                run_id = run_ids(repo.path()).pop();
            }
            if run_id.is_none() {
                // Killed before the run was on record: nothing ran; it starts again.
                let status = git(
                    repo.path(),
                    &["status", "--porcelain", "--untracked-files=all"],
                );
                assert_eq!(status, "", "the tree changed before the run was on record");
            }
            progress.push(successes(&run_id));
        }
        let run_id = run_id.unwrap();
        eprintln!(
            "{kills} kills, successes after each: {progress:?}; fault-free run {clean_time:?}, \
             whole test {:?}",
            started.elapsed()
        );
        assert!(kills >= 20, "only {kills} kills");

        assert_eq!(tree(repo.path()), expected, "the final tree differs");
        assert_eq!(success_anomalies(repo.path(), &run_id, AGENTS), (0, 0));
        assert_eq!(
            query_i64(
                repo.path(),
                "SELECT COUNT(*) FROM agent_runs WHERE run_id = ?1 AND status IS NULL",
                &run_id
            ),
            0
        );
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let run = reader
            .run_summary(&run_id.as_str().into())
            .unwrap()
            .unwrap();
        assert_eq!(run.run.status.as_str(), "completed");
        assert_eq!(run.run.error, None);
        // Only one run was ever recorded.
        assert_eq!(run_ids(repo.path()), vec![run_id]);
    }

    #[test]
    fn ctrl_c_cancels_and_resume_finishes() {
        let agents = 60;
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("scenario.yaml");
        std::fs::write(&scenario, SCENARIO).unwrap();
        let workflow = workflow(work.path(), 10).display().to_string();
        let plan = plan(work.path(), agents).display().to_string();
        let scenario = scenario.display().to_string();
        let repo = repository(agents);

        let stderr_path = work.path().join("stderr.txt");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args([
                "run",
                &workflow,
                "--plan",
                &plan,
                "--scenario",
                &scenario,
                "--sim-latency-ms",
                "40",
            ])
            .arg("--repo")
            .arg(repo.path())
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        // Wait until some agents have finished, then Ctrl-C once.
        let deadline = Instant::now() + Duration::from_secs(30);
        let run_id = loop {
            assert!(Instant::now() < deadline, "the run never got going");
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            if let Some(id) = run_ids(repo.path()).pop()
                && query_i64(
                    repo.path(),
                    "SELECT COUNT(*) FROM agent_runs WHERE run_id = ?1 AND status = 'success'",
                    &id,
                ) >= 15
            {
                break id;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // SAFETY: signalling our own child process.
        #[allow(unsafe_code)]
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(sent, 0);
        let status = wait_until(&mut child, Instant::now() + Duration::from_secs(30))
            .expect("the run stops after Ctrl-C");
        assert_eq!(status.code(), Some(130));

        // A consistent store: the run is cancelled, every started attempt has its record.
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let run = reader
            .run_summary(&run_id.as_str().into())
            .unwrap()
            .unwrap();
        assert_eq!(run.run.status.as_str(), "cancelled");
        assert_eq!(
            query_i64(
                repo.path(),
                "SELECT COUNT(*) FROM agent_runs WHERE run_id = ?1 AND status IS NULL",
                &run_id
            ),
            0
        );
        let cancelled_agents = query_i64(
            repo.path(),
            "SELECT COUNT(DISTINCT agent_id) FROM agent_runs WHERE run_id = ?1 AND status != 'success'",
            &run_id,
        );
        let (_, left) = success_anomalies(repo.path(), &run_id, agents);
        assert!(left > 0, "Ctrl-C came too late to leave work");
        // Progress ends counting the agents Ctrl-C stopped as cancelled, not as failed.
        let stderr = std::fs::read_to_string(&stderr_path).unwrap();
        let last = stderr
            .lines()
            .rfind(|line| line.starts_with('['))
            .unwrap_or_default();
        assert!(last.contains(" · failed 0 · "), "{last}");
        if cancelled_agents > 0 {
            assert!(last.contains(" · cancelled "), "{last}");
        }

        let output = fanout(&["resume", &run_id, "--scenario", &scenario], repo.path());
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(success_anomalies(repo.path(), &run_id, agents), (0, 0));
        for i in 0..agents {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, format!("edited src/file_{i:03}.txt by its agent\n"));
        }
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        assert_eq!(
            reader
                .run_summary(&run_id.as_str().into())
                .unwrap()
                .unwrap()
                .run
                .status
                .as_str(),
            "completed"
        );
        // An agent cancelled in flight shows both attempts.
        if cancelled_agents > 0 {
            let agent: String = sqlite(&reader)
                .query_row(
                    "SELECT agent_id FROM agent_runs WHERE run_id = ?1 AND status != 'success' LIMIT 1",
                    [&run_id],
                    |row| row.get(0),
                )
                .unwrap();
            let output = fanout(&["show", &run_id, &agent, "--json"], repo.path());
            assert!(output.status.success());
            let detail: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            let attempts = detail["attempts"].as_array().unwrap();
            assert_eq!(attempts.len(), 2, "{detail}");
            assert_eq!(attempts[1]["status"], "success");
        }
    }

    /// One agent's model always fails (after it wrote its file), another returns an invalid
    /// result on `fast` and a valid one on `default`, a third is invalid on `fast` and then
    /// fails on `default`.
    const FAILING: &str = r#"
rules:
  - name: always-fails
    match:
      system: 'Files you may change \(nothing else\):\n- src/file_002.txt'
      turn: 2
    error: {status: 400, type: invalid_request_error, message: "this request always fails"}
  - name: fails-once-escalated
    match:
      model: 'claude-sonnet-4-5'
      system: 'Files you may change \(nothing else\):\n- src/file_006.txt'
      turn: 2
    error: {status: 400, type: invalid_request_error, message: "this request always fails"}
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {name: write_file, input: {path: "${file}", content: "edited ${file} by its agent\n"}}
  - name: invalid-on-fast
    match:
      model: 'claude-haiku-4-5'
      system: 'Files you may change \(nothing else\):\n- src/file_00[46].txt'
    tool_use: {name: report_result, input: {status: 42}}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
    tool_use:
      name: report_result
      input: {status: success, summary: "rewrote ${file}", files_changed: ["${file}"]}
"#;

    #[test]
    fn a_failing_agent_is_rolled_back_and_set_aside_then_retry_failed_finishes_it() {
        let agents = 8;
        let work = tempfile::tempdir().unwrap();
        let failing = work.path().join("failing.yaml");
        std::fs::write(&failing, FAILING).unwrap();
        let healthy = work.path().join("healthy.yaml");
        std::fs::write(&healthy, SCENARIO).unwrap();
        let workflow = workflow(work.path(), 4).display().to_string();
        let plan = plan(work.path(), agents).display().to_string();
        let repo = repository(agents);
        let before = tree(repo.path());

        let output = fanout(
            &[
                "run",
                &workflow,
                "--plan",
                &plan,
                "--scenario",
                &failing.display().to_string(),
                "--json",
            ],
            repo.path(),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{stderr}");
        let run_id = run_ids(repo.path()).pop().unwrap();

        // The failed agent's file is as it was, byte for byte (mode included); the others
        // are edited.
        let after = tree(repo.path());
        assert_eq!(after["src/file_002.txt"], before["src/file_002.txt"]);
        assert_eq!(after["src/file_006.txt"], before["src/file_006.txt"]);
        for i in (0..agents).filter(|&i| i != 2 && i != 6) {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, format!("edited src/file_{i:03}.txt by its agent\n"));
        }
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let rows = reader.agent_runs(&run_id.as_str().into()).unwrap();
        let of = |agent: &str| -> Vec<(u32, String, bool)> {
            let mut rows: Vec<(u32, String, bool)> = rows
                .iter()
                .filter(|row| row.agent_id == agent)
                .map(|row| {
                    (
                        row.attempt,
                        row.status
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        row.escalated,
                    )
                })
                .collect();
            rows.sort();
            rows
        };
        // Bounded retries, each rolled back.
        assert_eq!(
            of("edit-002"),
            vec![
                (1, "rollback".to_owned(), false),
                (2, "rollback".to_owned(), false),
                (3, "rollback".to_owned(), false)
            ]
        );
        // Escalated once to default, recorded.
        assert_eq!(
            of("edit-004"),
            vec![
                (1, "rollback".to_owned(), false),
                (2, "success".to_owned(), true)
            ]
        );
        // Escalated, then failing on default until its retries ran out.
        assert_eq!(
            of("edit-006"),
            vec![
                (1, "rollback".to_owned(), false),
                (2, "rollback".to_owned(), true),
                (3, "rollback".to_owned(), true)
            ]
        );
        assert_eq!(
            reader
                .run_summary(&run_id.as_str().into())
                .unwrap()
                .unwrap()
                .run
                .status
                .as_str(),
            "partial"
        );

        // A dry run of `--retry-failed` (as `fanout plan` or `run --dry-run`) names the agents
        // that would run again and changes nothing: no tool runs, no row is written.
        let rows_before = reader.agent_runs(&run_id.as_str().into()).unwrap().len();
        let tree_before = tree(repo.path());
        for command in [
            vec!["plan", workflow.as_str(), "--retry-failed", run_id.as_str()],
            vec![
                "run",
                workflow.as_str(),
                "--retry-failed",
                run_id.as_str(),
                "--dry-run",
            ],
        ] {
            let mut args = command.clone();
            let healthy = healthy.display().to_string();
            args.extend(["--scenario", healthy.as_str()]);
            let output = fanout(&args, repo.path());
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(
                output.status.code(),
                Some(0),
                "{command:?}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(
                stdout.contains("2 of 8 agents would run again"),
                "{command:?}: {stdout}"
            );
            assert!(stdout.contains("edit-002: rollback"), "{stdout}");
            assert!(stdout.contains("edit-006: rollback"), "{stdout}");
            assert_eq!(
                tree(repo.path()),
                tree_before,
                "{command:?} changed the tree"
            );
            let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
            assert_eq!(
                reader.agent_runs(&run_id.as_str().into()).unwrap().len(),
                rows_before
            );
        }

        // `--retry-failed` re-runs only the failed agents; the escalated one stays on default.
        let output = fanout(
            &[
                "run",
                &workflow,
                "--retry-failed",
                &run_id,
                "--scenario",
                &healthy.display().to_string(),
            ],
            repo.path(),
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let rows = reader.agent_runs(&run_id.as_str().into()).unwrap();
        assert_eq!(rows.len(), agents + 2 + 1 + 2 + 2);
        assert_eq!(success_anomalies(repo.path(), &run_id, agents), (0, 0));
        let retried = rows
            .iter()
            .find(|row| row.agent_id == "edit-006" && row.attempt == 4)
            .unwrap();
        assert_eq!(retried.status.map(|s| s.as_str()), Some("success"));
        assert!(retried.escalated);
        assert_eq!(retried.mode, Some(fanout_core::config::Mode::Default));
        assert_eq!(retried.model.as_deref(), Some("claude-sonnet-4-5"));
        assert_eq!(
            std::fs::read_to_string(repo.path().join("src/file_002.txt")).unwrap(),
            "edited src/file_002.txt by its agent\n"
        );
        assert_eq!(
            reader
                .run_summary(&run_id.as_str().into())
                .unwrap()
                .unwrap()
                .run
                .status
                .as_str(),
            "completed"
        );
    }

    /// Agents that say they did not finish: two edit their file, then report `failure` (one on
    /// `default`, one on `fast` and again on `default`); a third reports `partial` on `fast` and
    /// `success` on `default`.
    const SELF_REPORTED: &str = r#"
rules:
  - name: edit
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
      turn: 1
    tool_use: {name: write_file, input: {path: "${file}", content: "edited ${file} by its agent\n"}}
  - name: gives-up
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>src/file_00[12].txt)'
    tool_use:
      name: report_result
      input: {status: failure, summary: "the tests still fail", files_changed: ["${file}"]}
  - name: partial-on-fast
    match:
      model: 'claude-haiku-4-5'
      system: 'Files you may change \(nothing else\):\n- src/file_000.txt'
    tool_use:
      name: report_result
      input: {status: partial, summary: "half done", files_changed: [src/file_000.txt]}
  - name: report
    match:
      system: 'Files you may change \(nothing else\):\n- (?P<file>\S+)'
    tool_use:
      name: report_result
      input: {status: success, summary: "rewrote ${file}", files_changed: ["${file}"]}
"#;

    /// Regression: an agent whose own result said `failure` or `partial` was recorded as a
    /// success (and counted in "N/N succeeded") as long as its claims matched its receipts.
    #[test]
    fn an_agent_that_reports_it_did_not_finish_is_not_a_success() {
        let agents = 4;
        let work = tempfile::tempdir().unwrap();
        let scenario = work.path().join("self-reported.yaml");
        std::fs::write(&scenario, SELF_REPORTED).unwrap();
        let workflow = workflow(work.path(), 4).display().to_string();
        let plan = plan(work.path(), agents).display().to_string();
        let repo = repository(agents);
        let before = tree(repo.path());

        let output = fanout(
            &[
                "run",
                &workflow,
                "--plan",
                &plan,
                "--scenario",
                &scenario.display().to_string(),
            ],
            repo.path(),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(5), "{stdout}{stderr}");
        assert!(!stdout.contains("4/4"), "{stdout}");
        let run_id = run_ids(repo.path()).pop().unwrap();

        // The agents that gave up are undone; the others' edits stay.
        let after = tree(repo.path());
        assert_eq!(after["src/file_001.txt"], before["src/file_001.txt"]);
        assert_eq!(after["src/file_002.txt"], before["src/file_002.txt"]);
        for i in [0, 3] {
            let text =
                std::fs::read_to_string(repo.path().join(format!("src/file_{i:03}.txt"))).unwrap();
            assert_eq!(text, format!("edited src/file_{i:03}.txt by its agent\n"));
        }
        let reader = fanout_core::store::StoreReader::open_in_repo(repo.path()).unwrap();
        let rows = reader.agent_runs(&run_id.as_str().into()).unwrap();
        let of = |agent: &str| -> Vec<(u32, String, bool, Option<String>)> {
            let mut rows: Vec<_> = rows
                .iter()
                .filter(|row| row.agent_id == agent)
                .map(|row| {
                    (
                        row.attempt,
                        row.status
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        row.escalated,
                        row.error.clone(),
                    )
                })
                .collect();
            rows.sort();
            rows
        };
        assert_eq!(
            of("edit-001"),
            vec![(
                1,
                "rollback".to_owned(),
                false,
                Some("the agent reported failure: the tests still fail".to_owned())
            )]
        );
        let gave_up = of("edit-002");
        assert_eq!(gave_up.len(), 2, "{gave_up:?}");
        for (index, (attempt, status, escalated, error)) in gave_up.iter().enumerate() {
            assert_eq!(*attempt as usize, index + 1);
            assert_eq!(status, "rollback");
            assert_eq!(*escalated, index == 1);
            assert_eq!(
                error.as_deref(),
                Some("the agent reported failure: the tests still fail")
            );
        }
        let partial = of("edit-000");
        assert_eq!(partial.len(), 2, "{partial:?}");
        assert_eq!(partial[0].1, "rollback");
        assert_eq!(
            partial[0].3.as_deref(),
            Some("the agent reported partial: half done")
        );
        assert_eq!((partial[1].1.as_str(), partial[1].2), ("success", true));
        let summary = reader
            .run_summary(&run_id.as_str().into())
            .unwrap()
            .unwrap();
        assert_eq!(summary.run.status.as_str(), "partial");
    }
}

/// Item work (`workflow.items:`) through the binary: the support-ticket example with `--sim`,
/// a run killed with SIGKILL and continued, batch execution, and the dry run's two prices.
mod item_work {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output, Stdio};
    use std::time::{Duration, Instant};

    use fanout_core::items::worker::OutputSchema;
    use serde_json::Value;

    fn tickets_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets")
    }

    /// A temp working directory holding a copy of the example, with `edit` applied to the
    /// workflow file.
    fn example(edit: impl Fn(String) -> String) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in ["tickets.jsonl", "schema.json"] {
            std::fs::copy(tickets_dir().join(name), dir.path().join(name)).unwrap();
        }
        let workflow = std::fs::read_to_string(tickets_dir().join("workflow.yaml")).unwrap();
        std::fs::write(dir.path().join("workflow.yaml"), edit(workflow)).unwrap();
        dir
    }

    fn command(dir: &Path, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
        command
            .current_dir(dir)
            .arg("run")
            .arg("workflow.yaml")
            .args(args)
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL");
        command
    }

    fn run(dir: &Path, args: &[&str]) -> Output {
        command(dir, args).output().unwrap()
    }

    /// `fanout resume RUN_ID --sim --json` in `dir`.
    fn resume(dir: &Path, run_id: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_fanout"))
            .current_dir(dir)
            .args(["resume", run_id, "--sim", "--json"])
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .output()
            .unwrap()
    }

    /// The report: the last JSON line on stdout (progress events come before it).
    fn report(output: &Output) -> Value {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        })
    }

    fn input_ids() -> Vec<String> {
        std::fs::read_to_string(tickets_dir().join("tickets.jsonl"))
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    }

    fn results(dir: &Path) -> Vec<Value> {
        std::fs::read_to_string(dir.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Every ticket exactly once, every record valid against the example's schema.
    fn check_results(records: &[Value]) {
        let schema: Value = serde_json::from_str(
            &std::fs::read_to_string(tickets_dir().join("schema.json")).unwrap(),
        )
        .unwrap();
        let schema = OutputSchema::new(schema).unwrap();
        let ids: Vec<String> = records
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, input_ids(), "every ticket once, in input order");
        for record in records {
            assert_eq!(schema.errors(record), Vec::<String>::new(), "{record}");
        }
    }

    #[test]
    fn the_ticket_example_runs_with_the_simulator() {
        let dir = example(|w| w);
        let output = run(dir.path(), &["--sim", "--json"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let report = report(&output);
        assert_eq!(report["status"], "completed");
        let out = PathBuf::from(report["output_dir"].as_str().unwrap());
        let out = dir.path().join(out);
        let records = results(&out);
        check_results(&records);
        assert_eq!(
            std::fs::read_to_string(out.join("failed.jsonl")).unwrap(),
            ""
        );

        // The summary counts categories, and the counts match the results.
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap())
                .unwrap();
        assert_eq!(summary["items"], 300);
        assert_eq!(summary["succeeded"], 300);
        let mut expected: BTreeMap<String, u64> = BTreeMap::new();
        for record in &records {
            *expected
                .entry(record["category"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        let counted: BTreeMap<String, u64> = summary["counts"]["category"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["value"].as_str().unwrap().to_owned(),
                    c["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(counted, expected);
        assert!(out.join("summary.md").exists());
        assert!(out.join("synthesis.md").exists());

        // One agent_runs row per worker call, visible to `fanout show`.
        let run_id = report["run_id"].as_str().unwrap();
        let show = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .current_dir(dir.path())
            .args(["show", run_id, "--json"])
            .output()
            .unwrap();
        assert!(show.status.success(), "{show:?}");
        let shown = String::from_utf8_lossy(&show.stdout);
        assert!(shown.contains("\"chunk-0001\""), "{shown}");
        assert!(shown.contains("submit_results"), "{shown}");
    }

    #[test]
    fn a_killed_run_continues_without_sending_settled_chunks_again() {
        // Two workers at a time, 300 ms a call: five rounds, so the kill lands mid-run.
        let dir = example(|w| {
            w.replace("max_parallel_agents: 20", "max_parallel_agents: 2")
                .replace("max_items: 30", "max_items: 15")
        });
        let mut child = command(dir.path(), &["--sim", "--sim-latency-ms", "300", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let runs = dir.path().join(".fanout/runs");
        let journal = || -> Option<(PathBuf, usize)> {
            let run = std::fs::read_dir(&runs).ok()?.next()?.ok()?.path();
            let text = std::fs::read_to_string(run.join("settled.jsonl")).ok()?;
            Some((run, text.lines().count()))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while journal().is_none_or(|(_, lines)| lines < 3) {
            assert!(Instant::now() < deadline, "no chunk settled in time");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the run ended before the kill"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (run_dir, _) = journal().unwrap();
        let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();

        // While it runs, no other process may drive it.
        let busy = resume(dir.path(), &run_id);
        assert_eq!(busy.status.code(), Some(4), "{busy:?}");
        assert!(
            String::from_utf8_lossy(&busy.stderr).contains("another fanout process"),
            "{busy:?}"
        );

        // SIGKILL: no clean-up of any kind.
        child.kill().unwrap();
        child.wait().unwrap();
        let settled_before: Vec<Value> = std::fs::read_to_string(run_dir.join("settled.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let done_before: BTreeSet<String> = settled_before
            .iter()
            .map(|s| s["chunk"].as_str().unwrap().to_owned())
            .collect();
        assert!(
            done_before.len() >= 3 && done_before.len() < 20,
            "{done_before:?}"
        );

        // `fanout resume` continues the killed run.
        let output = resume(dir.path(), &run_id);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let report = report(&output);
        let run_id = run_id.as_str();
        assert_eq!(report["run_id"], run_id);
        assert_eq!(report["chunks"], 20);
        assert!(report["chunks_sent"].as_u64().unwrap() <= 20 - done_before.len() as u64);
        check_results(&results(&run_dir));

        // The journal names every chunk once: no settled chunk was sent and settled again.
        let settled: Vec<String> = std::fs::read_to_string(run_dir.join("settled.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .map(|s| s["chunk"].as_str().unwrap().to_owned())
            .collect();
        let unique: BTreeSet<&String> = settled.iter().collect();
        assert_eq!(unique.len(), settled.len(), "{settled:?}");
        assert_eq!(unique.len(), 20);

        // The store agrees: a chunk settled before the kill has its one call, no second one.
        let show = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .current_dir(dir.path())
            .args(["show", run_id, "--json"])
            .output()
            .unwrap();
        let shown: Value = serde_json::from_slice(&show.stdout).unwrap();
        let rows = shown["agent_runs"]
            .as_array()
            .expect("agent_runs in `fanout show --json`");
        for chunk in &done_before {
            let calls = rows
                .iter()
                .filter(|r| r["agent_id"] == chunk.as_str())
                .count();
            assert_eq!(calls, 1, "{chunk} was sent again");
        }
        // Every row was ended: the kill's open rows were closed by the resume.
        assert!(
            rows.iter().all(|r| !r["status"].is_null()),
            "{:#}",
            shown["agent_runs"]
        );

        // A new `fanout run` of the workflow is a new run, not a continuation.
        let fresh = run(dir.path(), &["--sim", "--json"]);
        assert_eq!(fresh.status.code(), Some(0), "{fresh:?}");
        let fresh = super::item_work::report(&fresh);
        assert_ne!(fresh["run_id"], run_id);
        assert_eq!(fresh["chunks_sent"], 20);
    }

    #[test]
    fn batch_execution_gives_the_same_results_and_the_dry_run_shows_both_prices() {
        let online = example(|w| w);
        let batch = example(|w| w.replace("execution: online", "execution: batch"));

        let dry = run(batch.path(), &["--dry-run"]);
        assert_eq!(dry.status.code(), Some(0), "{dry:?}");
        let text = String::from_utf8_lossy(&dry.stdout);
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("cost"))
            .unwrap();
        let dollars: Vec<f64> = line
            .split('$')
            .skip(1)
            .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert_eq!(dollars.len(), 2, "{line}");
        assert!((dollars[1] - dollars[0] / 2.0).abs() < 1e-4, "{line}");
        assert!(line.contains("batch (half price)"), "{line}");
        assert!(text.contains("items       300"), "{text}");

        let a = run(online.path(), &["--sim", "--json"]);
        let b = run(batch.path(), &["--sim", "--json"]);
        assert_eq!(a.status.code(), Some(0), "{a:?}");
        assert_eq!(b.status.code(), Some(0), "{b:?}");
        let (a, b) = (report(&a), report(&b));
        let a_records = results(&online.path().join(a["output_dir"].as_str().unwrap()));
        let b_records = results(&batch.path().join(b["output_dir"].as_str().unwrap()));
        check_results(&b_records);
        assert_eq!(a_records, b_records, "same requests, same answers");
        // Half price for the same tokens (the synthesis is online in both).
        assert!(b["cost_usd"].as_f64().unwrap() < a["cost_usd"].as_f64().unwrap());
    }

    const PROPOSALS: &str = r#"
rules:
  - name: first proposal, rejected
    match: {tool: propose_item_plan, turn: 1}
    tool_use:
      name: propose_item_plan
      input:
        chunking: fixed
        chunk_size: 0
        instructions: "Triage each ticket."
        rationale: "short tickets"
        fields:
          - {name: id, type: string, description: "the ticket"}
          - {name: Category, type: string, description: "area", values: [billing, bug, account, other]}
  - name: repaired proposal
    match: {tool: propose_item_plan, turn: 2}
    tool_use:
      name: propose_item_plan
      input:
        chunking: fixed
        chunk_size: 25
        instructions: "Triage each ticket: its category and how upset the customer is."
        rationale: "Tickets are short; 25 fit one call easily."
        fields:
          - {name: Category, type: string, description: "area", values: [billing, bug, account, other]}
          - {name: "Customer Sentiment", type: integer, description: "1 calm .. 5 furious", nullable: true}
"#;

    /// `strategy: llm`: the dry run asks the orchestrator (one rejected answer, one repair),
    /// shows the proposal and saves it; the live run with `--plan` uses it as reviewed, with
    /// no orchestrator call, and every record matches the proposed fields.
    #[test]
    fn llm_chunking_is_proposed_reviewed_and_run_as_reviewed() {
        let dir = example(|w| {
            w.replace(
                "      strategy: token_budget      # per_item | fixed | token_budget | llm (orchestrator proposes)\n      max_items: 30               # at most this many items per chunk\n      share_of_minute: 0.02       # a chunk uses at most 2% of the input-tokens/min limit\n",
                "      strategy: llm\n      sample: 12\n",
            )
            .replace("      output_schema: schema.json  # each record; `id` is added and required if missing\n", "")
            .replace("      count_by: [category, priority, sentiment]", "      count_by: [category]")
        });
        let workflow = std::fs::read_to_string(dir.path().join("workflow.yaml")).unwrap();
        assert!(workflow.contains("strategy: llm") && !workflow.contains("output_schema"));
        std::fs::write(dir.path().join("scenario.yaml"), PROPOSALS).unwrap();
        let record = dir.path().join("dry.jsonl");
        let output = run(
            dir.path(),
            &[
                "--dry-run",
                "--scenario",
                "scenario.yaml",
                "--sim-record",
                record.to_str().unwrap(),
            ],
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        for expected in [
            "chunking    fixed (25 items per chunk)",
            "chunks      12 (largest 25 items)",
            "Item plan (proposed by",
            "from 12 sampled item(s)",
            "field       category: string one of billing | bug | account | other",
            "field       customer_sentiment: integer or null",
            "Triage each ticket: its category and how upset the customer is.",
        ] {
            assert!(stdout.contains(expected), "{expected:?} not in:\n{stdout}");
        }
        // The rejection named its problems; the orchestrator saw 12 tickets.
        let exchanges: Vec<Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(exchanges.len(), 2, "one rejected answer, one repair");
        let repair = exchanges[1]["request"].to_string();
        assert!(
            repair.contains("chunk_size must be between 1 and 200, found 0"),
            "{repair}"
        );
        assert!(repair.contains("`id` is added"), "{repair}");
        assert_eq!(
            exchanges[0]["request"]
                .to_string()
                .matches("<item id=")
                .count(),
            12
        );
        let saved = stdout
            .lines()
            .find_map(|l| {
                // The dry run was simulated, so the suggested command is too.
                l.trim()
                    .strip_prefix("run it as reviewed: fanout run workflow.yaml --plan ")
                    .and_then(|rest| rest.strip_suffix(" --sim"))
            })
            .unwrap_or_else(|| panic!("no saved plan in:\n{stdout}"))
            .to_owned();

        let record = dir.path().join("live.jsonl");
        let output = run(
            dir.path(),
            &[
                "--sim",
                "--json",
                "--plan",
                &saved,
                "--sim-record",
                record.to_str().unwrap(),
            ],
        );
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let report = report(&output);
        assert_eq!(report["status"], "completed");
        let live: Vec<Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let asked = |tool: &str| {
            live.iter()
                .filter(|e| e["request"]["tools"].to_string().contains(tool))
                .count()
        };
        assert_eq!(
            asked("propose_item_plan"),
            0,
            "the reviewed plan is not asked again"
        );
        assert_eq!(asked("submit_results"), 12, "300 tickets in chunks of 25");
        let out = dir
            .path()
            .join(PathBuf::from(report["output_dir"].as_str().unwrap()));
        let records = results(&out);
        assert_eq!(records.len(), 300);
        let categories = ["billing", "bug", "account", "other"];
        for record in &records {
            let keys: BTreeSet<&str> = record
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                BTreeSet::from(["id", "category", "customer_sentiment"]),
                "{record}"
            );
            assert!(
                categories.contains(&record["category"].as_str().unwrap()),
                "{record}"
            );
        }
        // The run kept the plan it ran with, for `fanout resume`.
        let run_id = report["run_id"].as_str().unwrap();
        let kept = dir
            .path()
            .join(".fanout/runs")
            .join(run_id)
            .join("item-plan.json");
        assert_eq!(
            std::fs::read_to_string(kept).unwrap(),
            std::fs::read_to_string(dir.path().join(&saved)).unwrap()
        );
        // An item plan given to a workflow that chunks by its own settings is refused.
        let plain = example(|w| w);
        let refused = run(
            plain.path(),
            &[
                "--dry-run",
                "--plan",
                dir.path().join(&saved).to_str().unwrap(),
            ],
        );
        assert_eq!(refused.status.code(), Some(2), "{refused:?}");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("remove --plan"));
    }

    /// `execution: batch` killed while its batch runs: the resume collects that batch by the
    /// id the journal recorded, and pays for no request twice (the simulator, a separate
    /// process that outlives the run, saw one batch).
    #[test]
    fn a_killed_batch_run_collects_its_running_batch_instead_of_sending_it_again() {
        let dir = example(|w| w.replace("execution: online", "execution: batch"));
        let record = dir.path().join("sim.jsonl");
        let mut sim = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args(["sim", "--port", "0", "--batch-delay-ms", "2000", "--record"])
            .arg(&record)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(sim.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        let url = first.trim().rsplit(' ').next().unwrap().to_owned();
        let against_sim = |command: &mut Command| {
            command
                .env("ANTHROPIC_BASE_URL", &url)
                .env("ANTHROPIC_API_KEY", "test-key");
        };
        let mut run = command(dir.path(), &["--json"]);
        against_sim(&mut run);
        let mut child = run
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let runs = dir.path().join(".fanout/runs");
        let submitted = || -> Option<PathBuf> {
            let run = std::fs::read_dir(&runs).ok()?.next()?.ok()?.path();
            let text = std::fs::read_to_string(run.join("settled.jsonl")).ok()?;
            text.contains("batch_submitted").then_some(run)
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while submitted().is_none() {
            assert!(Instant::now() < deadline, "no batch was recorded in time");
            assert!(child.try_wait().unwrap().is_none(), "the run ended early");
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        let run_dir = submitted().unwrap();
        let run_id = run_dir.file_name().unwrap().to_str().unwrap().to_owned();

        let mut resume = Command::new(env!("CARGO_BIN_EXE_fanout"));
        resume
            .current_dir(dir.path())
            .args(["resume", &run_id, "--json"]);
        against_sim(&mut resume);
        let output = resume.output().unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("\"event\":\"batch_resumed\""), "{stdout}");
        assert!(
            !stdout.contains("\"event\":\"batch_submitted\""),
            "{stdout}"
        );
        let report = report(&output);
        assert_eq!(report["status"], "completed");
        let out = dir
            .path()
            .join(PathBuf::from(report["output_dir"].as_str().unwrap()));
        check_results(&results(&out));

        let _ = sim.kill();
        let _ = sim.wait();
        let exchanges: Vec<Value> = std::fs::read_to_string(&record)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let batched: Vec<&str> = exchanges
            .iter()
            .filter(|e| e["endpoint"] == "batch_messages")
            .map(|e| e["request_id"].as_str().unwrap())
            .collect();
        let batches: BTreeSet<&str> = batched
            .iter()
            .map(|id| id.split('/').next().unwrap())
            .collect();
        assert_eq!(batches.len(), 1, "one batch in all: {batches:?}");
        let chunks: BTreeSet<&str> = batched
            .iter()
            .map(|id| id.split('/').nth(1).unwrap())
            .collect();
        assert_eq!(chunks.len(), batched.len(), "no chunk sent twice");
    }
}

#[path = "cli/trust.rs"]
mod trust;

#[path = "cli/item_inputs.rs"]
mod item_inputs;

#[path = "cli/sim_defaults.rs"]
mod sim_defaults;

#[path = "cli/reports.rs"]
mod reports;

#[path = "cli/html_report.rs"]
mod html_report;

#[path = "cli/traces.rs"]
mod traces;

#[path = "cli/costs.rs"]
mod costs;

#[path = "cli/postgres_store.rs"]
mod postgres_store;

#[path = "cli/distributed.rs"]
mod distributed;

#[path = "cli/item_units.rs"]
mod item_units;
