//! The `fanout` binary end to end: each test runs the built executable with an in-process
//! simulator (`--scenario`) against a temp copy of the example repository under git.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
        "Estimated token usage: 2.1M (38% Fast Mode)",
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
                    run_id: run_id.to_owned(),
                    workflow: "auth-refactor".to_owned(),
                    config_path: None,
                    plan_hash: Some("sha256:feed".to_owned()),
                    repo: Some(repo.to_path_buf()),
                    status: RunStatus::Running,
                    started_at: at(started),
                    base_commit: None,
                    agents_planned: 2,
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
                    run_id: "run-new".to_owned(),
                    agent_id: agent.to_owned(),
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
                    run_id: "run-new".to_owned(),
                    agent_id: agent.to_owned(),
                    attempt: 1,
                    seq: 1,
                    tool: "edit_file".to_owned(),
                    target: Some(format!("src/auth/{agent}.ts")),
                    ok: true,
                    error: None,
                    started_at: at(1002),
                    ended_at: Some(at(1003)),
                })
                .await
                .unwrap();
            store
                .finish_agent(AgentFinish {
                    run_id: "run-new".to_owned(),
                    agent_id: agent.to_owned(),
                    attempt: 1,
                    status,
                    files_accessed: vec![format!("src/auth/{agent}.ts")],
                    tools_called: vec!["read_file".to_owned(), "edit_file".to_owned()],
                    input_tokens: 900,
                    output_tokens: 100,
                    cost_usd: 0.5,
                    error: (status != AgentStatus::Success).then(|| "tests failed".to_owned()),
                    checkpoint: None,
                    ended_at: at(1005),
                })
                .await
                .unwrap();
        }
        store
            .denial(DenialRecord {
                run_id: "run-new".to_owned(),
                agent_id: "handlers".to_owned(),
                attempt: 1,
                tool: "write_file".to_owned(),
                target: Some("config/database.ts".to_owned()),
                reason: "outside the agent's scope".to_owned(),
                at: at(1004),
            })
            .await
            .unwrap();
        store
            .set_run_status("run-new", RunStatus::Partial, Some(at(1010)), None)
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
                run_id: "run-rb".to_owned(),
                workflow: "w".to_owned(),
                config_path: None,
                plan_hash: None,
                repo: None,
                status: RunStatus::Completed,
                started_at: at(0),
                base_commit: None,
                agents_planned: 0,
            })
            .await
            .unwrap();
        let mut checkpoints = Checkpointer::new(path, "run-rb")
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
            .events("run-rb")
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
    const SCENARIO: &str = r#"
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
        let connection = reader.connection();
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

        // Checkpoints: the base, one every 10 completions, and the final one.
        let checkpoints: i64 = connection
            .query_row(
                "SELECT COUNT(*) FROM checkpoints WHERE run_id = ?1",
                [&run_id],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(checkpoints, 1 + (AGENTS / 10) as i64 + 1);
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
