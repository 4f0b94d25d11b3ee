//! Planning against the simulator over HTTP: the seed's dry run, every kind of violation, the
//! repair loop, reviewed plans, and the git precondition. Repositories are real directories
//! under real git in temp dirs; the orchestrator is a scripted simulator scenario.

use std::path::{Path, PathBuf};

use fanout_core::config::Config;
use fanout_core::plan::{
    self, GitCheckError, PlanError, PlanOptions, PlanSource, PrepareRequest, Prepared, RepoScan,
    ScopePaths, ViolationKind,
};
use fanout_sim::{Scenario, SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{fleet, git, scenario_sim, start_sim};

const SEED: &str = include_str!("../fixtures/config/seed-claude-workflows.yaml");

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

/// The example repository, copied to a temp dir and committed.
fn example_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&example_dir().join("repo"), dir.path());
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "initial"]);
    dir
}

fn request(repo: &Path) -> PrepareRequest {
    PrepareRequest {
        repository: repo.to_path_buf(),
        task: Some(
            "Refactor src/auth: extract JWT logic, validate handler inputs, add tests.".into(),
        ),
        plan_file: None,
        options: PlanOptions::default(),
        dry_run: true,
        save: true,
        calibration: Default::default(),
    }
}

async fn dry_run(
    config: &Config,
    repo: &Path,
    scenario: &str,
) -> (Result<Prepared, PlanError>, SimHandle) {
    let sim = scenario_sim(scenario).await;
    let fleet = fleet(&sim);
    let result = plan::prepare(
        config,
        &request(repo),
        Some(&fleet),
        &CancellationToken::new(),
    )
    .await;
    (result, sim)
}

/// A scenario whose orchestrator always answers `plan`.
fn always(plan: &Value) -> String {
    format!(
        "rules:\n  - match: {{tool: submit_plan}}\n    tool_use: {{name: submit_plan, input: {plan}}}\n"
    )
}

/// Replace the run-specific parts (run id, temp paths, hash) for snapshots.
fn redact(text: &str, repo: &Path) -> String {
    let mut out = text.replace(&repo.display().to_string(), "[REPO]");
    if let Some(start) = out.find(".fanout/runs/") {
        let end = out[start..].find("/plan.json").map_or(start, |e| start + e);
        out.replace_range(start + ".fanout/runs/".len()..end, "[RUN_ID]");
    }
    if let Some(start) = out.find("sha256:") {
        out.replace_range(start + 7..start + 71, "[HASH]");
    }
    out
}

fn seed_plan() -> Value {
    let text = std::fs::read_to_string(example_dir().join("scenario.yaml")).unwrap();
    let start = text.find("input: ").unwrap() + "input: ".len();
    // The plan is the first rule's one-line input; agent rules follow it.
    let line = text[start..].lines().next().unwrap();
    serde_json::from_str(line.trim()).unwrap()
}

#[tokio::test]
async fn seed_dry_run_prints_every_seed_line_and_changes_nothing() {
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let status_before = git(
        repo.path(),
        &["status", "--porcelain", "--untracked-files=all"],
    );
    let index_before = std::fs::read(repo.path().join(".git/index")).unwrap();
    let head_before = git(repo.path(), &["rev-parse", "HEAD"]);

    let scenario = std::fs::read_to_string(example_dir().join("scenario.yaml")).unwrap();
    let (prepared, sim) = dry_run(&config, repo.path(), &scenario).await;
    let prepared = prepared.unwrap();
    let text = prepared.report.render(false);

    let seed_lines = [
        "[DRY RUN] Workflow: auth-refactor",
        "Agents planned: 47",
        "Files in scope: 83",
        "External API calls: 0 (denied)",
        "Shell commands: [git status, npm test] (allowlisted)",
        "Estimated token usage: 2.1M (38% Fast Mode)",
        "No permission violations detected.",
        "Run without --dry-run to execute.",
    ];
    let lines: Vec<&str> = text.lines().collect();
    let mut position = 0;
    for expected in seed_lines {
        let found = lines[position..]
            .iter()
            .position(|line| *line == expected)
            .unwrap_or_else(|| panic!("missing or out of order: {expected:?} in\n{text}"));
        position += found + 1;
    }
    insta::assert_snapshot!("seed_dry_run", redact(&text, repo.path()));
    insta::assert_snapshot!(
        "seed_dry_run_verbose",
        redact(&prepared.report.render(true), repo.path())
    );

    // What we sent: one forced `submit_plan` call with the plan schema, the task and the tree.
    let exchanges = sim.exchanges();
    assert_eq!(exchanges.len(), 1, "one orchestrator call and no agent");
    let sent = &exchanges[0].request;
    assert_eq!(sent["model"], "claude-sonnet-4-5");
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "submit_plan"})
    );
    assert_eq!(sent["tools"][0]["name"], "submit_plan");
    let schema = &sent["tools"][0]["input_schema"];
    assert_eq!(schema["required"], json!(["workflow", "subtasks"]));
    assert_eq!(
        schema["properties"]["subtasks"]["items"]["required"],
        json!([
            "task_id",
            "description",
            "scope",
            "tools",
            "mode",
            "depends_on"
        ])
    );
    let user = sent["messages"][0]["content"].to_string();
    assert!(user.contains("Refactor src/auth"), "{user}");
    assert!(user.contains("src/api/handlers/h01.ts"), "{user}");
    let system = sent["system"].to_string();
    assert!(
        system.contains("`git status`") && system.contains("`npm test`"),
        "{system}"
    );

    // The plan is saved with its hash; the repository's tree and index are untouched.
    let saved = prepared.report.saved.clone().unwrap();
    assert!(saved.path.starts_with(repo.path().join(".fanout/runs")));
    let bytes = std::fs::read(&saved.path).unwrap();
    assert_eq!(plan::store::hash_bytes(&bytes), saved.hash);
    assert_eq!(
        git(
            repo.path(),
            &["status", "--porcelain", "--untracked-files=all"]
        ),
        status_before
    );
    assert_eq!(
        std::fs::read(repo.path().join(".git/index")).unwrap(),
        index_before
    );
    assert_eq!(git(repo.path(), &["rev-parse", "HEAD"]), head_before);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_best_effort_sandbox_is_shown_in_the_dry_run_report() {
    let text = SEED.replace(
        "    shell_exec: restricted",
        "    sandbox: best_effort\n    shell_exec: restricted",
    );
    assert_ne!(text, SEED);
    let config = Config::from_str(&text, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let scenario = std::fs::read_to_string(example_dir().join("scenario.yaml")).unwrap();
    let (prepared, _sim) = dry_run(&config, repo.path(), &scenario).await;
    let report = prepared.unwrap().report;
    let text = report.render(false);
    assert!(
        text.lines()
            .any(|line| line == "Sandbox: best effort (requested in the workflow file)"),
        "{text}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["sandbox"], "best_effort");
    // Enforced (the default) is not mentioned: the seed report stays as it was.
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let (prepared, _sim) = dry_run(&config, repo.path(), &scenario).await;
    let report = prepared.unwrap().report;
    assert!(!report.render(false).contains("Sandbox:"));
    assert!(
        serde_json::to_value(&report)
            .unwrap()
            .get("sandbox")
            .is_none()
    );
}

#[tokio::test]
async fn every_kind_of_violation_is_reported_with_agent_and_reason() {
    let config = Config::from_str(
        "workflow:\n  name: guarded\n  paths:\n    allow: [\"src/**\", \"tests/**\", \"config/**\"]\n",
        "guarded.yaml",
    )
    .unwrap();
    let repo = example_repo();
    std::fs::create_dir_all(repo.path().join("config")).unwrap();
    std::fs::write(repo.path().join("config/.env"), "SECRET=1\n").unwrap();
    let task = |id: &str, scope: Value, tools: Value, depends_on: Value| {
        json!({"task_id": id, "description": format!("do {id}"), "scope": scope,
               "tools": tools, "mode": "fast", "depends_on": depends_on})
    };
    let mut shell = task(
        "shell",
        json!(["tests/x.test.ts"]),
        json!(["read_file", "bash"]),
        json!([]),
    );
    shell["shell_commands"] = json!(["npm test", "rm -rf /"]);
    let plan = json!({"workflow": "guarded", "subtasks": [
        task("outside", json!(["docs/guide.md"]), json!(["read_file"]), json!([])),
        task("parent", json!(["../other-repo/src"]), json!(["read_file"]), json!([])),
        task("protected", json!(["config/.env"]), json!(["read_file"]), json!([])),
        task("tool", json!(["src/lib/util01.ts"]), json!(["read_file", "web_fetch"]), json!([])),
        shell,
        task("writer-a", json!(["src/lib/util02.ts"]), json!(["edit_file"]), json!([])),
        task("writer-b", json!(["src/lib/util02.ts"]), json!(["edit_file"]), json!([])),
        task("cycle-a", json!(["src/lib/util03.ts"]), json!(["read_file"]), json!(["cycle-b"])),
        task("cycle-b", json!(["src/lib/util04.ts"]), json!(["read_file"]), json!(["cycle-a"])),
        task("absolute", json!(["/etc/passwd"]), json!(["read_file"]), json!([])),
        task("ordered-a", json!(["src/lib/util05.ts"]), json!(["edit_file"]), json!([])),
        task("ordered-b", json!(["src/lib/util05.ts"]), json!(["edit_file"]), json!(["ordered-a"])),
    ]});
    let (prepared, sim) = dry_run(&config, repo.path(), &always(&plan)).await;
    let prepared = prepared.unwrap();
    let report = &prepared.report;
    assert!(!report.is_clean());

    let found = |agent: &str, kind: ViolationKind| {
        report
            .violations
            .iter()
            .any(|v| v.agent.as_ref().map(|a| a.as_str()) == Some(agent) && v.kind == kind)
    };
    assert!(found("outside", ViolationKind::OutsideAllowedPaths));
    assert!(found("parent", ViolationKind::ParentPath));
    assert!(found("protected", ViolationKind::ProtectedPath));
    assert!(found("tool", ViolationKind::ToolNotAllowed));
    assert!(found("shell", ViolationKind::ShellNotAllowed));
    assert!(found("writer-a", ViolationKind::WriteOverlap));
    assert!(found("cycle-a", ViolationKind::DependencyCycle));
    assert!(found("absolute", ViolationKind::AbsolutePath));
    assert!(
        !report.violations.iter().any(|v| v.what.contains("util05")),
        "writers ordered by depends_on may share a file: {:?}",
        report.violations
    );
    let text = report.render(false);
    assert!(!text.contains("No permission violations detected."));
    insta::assert_snapshot!("violations", redact(&text, repo.path()));

    // The orchestrator was asked to repair three times, each time with the errors.
    let exchanges = sim.exchanges();
    assert_eq!(exchanges.len(), 4);
    let repair = &exchanges[1].request["messages"];
    let last = &repair[repair.as_array().unwrap().len() - 1]["content"][0];
    assert_eq!(last["type"], "tool_result");
    assert_eq!(last["is_error"], true);
    let feedback = last["content"].to_string();
    assert!(
        feedback.contains("parent: scope `../other-repo/src`"),
        "{feedback}"
    );
    assert!(
        feedback.contains("cycle-a → cycle-b → cycle-a"),
        "{feedback}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn the_repair_loop_recovers_from_an_invalid_plan() {
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let good = seed_plan();
    let scenario = format!(
        "rules:\n  - match: {{tool: submit_plan, turn: 1}}\n    tool_use: {{name: submit_plan, input: {{workflow: auth-refactor, subtasks: \"[{{\\\"task_id\\\": \"}}}}\n  - match: {{tool: submit_plan, turn: 2}}\n    tool_use: {{name: submit_plan, input: {good}}}\n"
    );
    let (prepared, sim) = dry_run(&config, repo.path(), &scenario).await;
    let prepared = prepared.unwrap();
    assert!(
        prepared.report.is_clean(),
        "{:?}",
        prepared.report.violations
    );
    assert_eq!(
        prepared.report.source,
        PlanSource::Orchestrator { attempts: 2 }
    );
    let exchanges = sim.exchanges();
    assert_eq!(exchanges.len(), 2);
    let messages = exchanges[1].request["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 3);
    let result = &messages[2]["content"][0];
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["is_error"], true);
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("subtasks: a string that is not valid JSON"),
        "{result}"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_orchestrator_that_never_recovers_fails_with_every_error() {
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let scenario = "rules:\n  - match: {tool: submit_plan}\n    tool_use: {name: submit_plan, input: {workflow: auth-refactor, subtasks: [{task_id: a, description: x, scope: [src], tools: [read_file], mode: turbo, depends_on: []}]}}\n";
    let (result, sim) = dry_run(&config, repo.path(), scenario).await;
    let Err(PlanError::NoPlan { attempts, errors }) = result else {
        panic!("expected NoPlan, got {result:?}");
    };
    assert_eq!(attempts, 4);
    assert_eq!(errors.len(), 4);
    let message = PlanError::NoPlan { attempts, errors }.to_string();
    insta::assert_snapshot!("never_recovers", message);
    assert_eq!(sim.exchanges().len(), 4);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_reviewed_plan_runs_as_reviewed_without_an_orchestrator_call() {
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let scenario = std::fs::read_to_string(example_dir().join("scenario.yaml")).unwrap();
    let (prepared, sim) = dry_run(&config, repo.path(), &scenario).await;
    let first = prepared.unwrap();
    sim.shutdown().await;
    let saved = first.report.saved.clone().unwrap();

    let mut again = request(repo.path());
    again.plan_file = Some(saved.path.clone());
    let second = plan::prepare(&config, &again, None, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(second.validation.plan, first.validation.plan);
    assert_eq!(second.report.saved.as_ref().unwrap().hash, saved.hash);
    assert_eq!(
        second.report.source,
        PlanSource::File {
            path: saved.path.clone(),
            edited_since_review: false
        }
    );

    // An edit that breaks a rule is caught on re-validation.
    let mut edited: Value = serde_json::from_slice(&std::fs::read(&saved.path).unwrap()).unwrap();
    edited["subtasks"][0]["scope"] = json!(["../../etc"]);
    std::fs::write(&saved.path, serde_json::to_vec_pretty(&edited).unwrap()).unwrap();
    let third = plan::prepare(&config, &again, None, &CancellationToken::new())
        .await
        .unwrap();
    assert!(matches!(
        third.report.source,
        PlanSource::File {
            edited_since_review: true,
            ..
        }
    ));
    assert!(
        third
            .report
            .violations
            .iter()
            .any(|v| v.kind == ViolationKind::ParentPath)
    );
}

#[tokio::test]
async fn sensitive_work_on_fast_is_moved_to_default() {
    let config = Config::from_str(SEED, "claude-workflows.yaml").unwrap();
    let repo = example_repo();
    let plan = json!({"workflow": "auth-refactor", "subtasks": [
        {"task_id": "jwt", "description": "tidy", "scope": ["src/auth/jwt.ts"],
         "tools": ["edit_file"], "mode": "fast", "depends_on": []},
        {"task_id": "util", "description": "tidy", "scope": ["src/lib/util01.ts"],
         "tools": ["edit_file"], "mode": "default", "role": "subtasks_codegen", "depends_on": []}
    ]});
    let (prepared, sim) = dry_run(&config, repo.path(), &always(&plan)).await;
    let prepared = prepared.unwrap();
    assert!(prepared.report.is_clean());
    let modes: Vec<_> = prepared
        .validation
        .plan
        .subtasks
        .iter()
        .map(|s| s.mode.as_str())
        .collect();
    assert_eq!(modes, ["default", "fast"]);
    let adjusted: Vec<_> = prepared
        .report
        .adjustments
        .iter()
        .map(|a| a.agent.as_str())
        .collect();
    assert_eq!(adjusted, ["jwt", "util"]);
    sim.shutdown().await;
}

#[test]
fn the_scan_respects_gitignore_and_the_tree_view_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    git(dir.path(), &["init", "-q"]);
    std::fs::write(dir.path().join(".gitignore"), "build/\n").unwrap();
    for i in 0..3000 {
        let sub = dir.path().join(format!("src/m{:03}", i / 10));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}.ts")), "x").unwrap();
    }
    std::fs::create_dir_all(dir.path().join("build")).unwrap();
    std::fs::write(dir.path().join("build/out.js"), "x").unwrap();
    let scan = RepoScan::scan(dir.path()).unwrap();
    assert_eq!(scan.files.len(), 3001, "3000 sources and .gitignore");
    assert!(scan.find("build/out.js").is_none());
    let view = scan.tree_view(16 * 1024);
    assert!(view.len() <= 17 * 1024, "{}", view.len());
    assert!(view.starts_with("Repository: 3001 files"));
    // 300 directories do not fit half of 16 KB at full depth: folded to `src/`.
    assert!(view.contains("src/ 3000 files"), "{view}");
    assert!(view.contains("src/m000/f0.ts"), "{view}");
}

#[test]
fn a_live_run_needs_a_clean_git_tree_where_the_plan_touches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    assert!(matches!(
        plan::ensure_clean(dir.path(), |_| true),
        Err(GitCheckError::NotARepository { .. })
    ));
    git(dir.path(), &["init", "-q"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-q", "-m", "one"]);
    plan::ensure_clean(dir.path(), |_| true).unwrap();
    std::fs::write(dir.path().join("a.txt"), "changed").unwrap();
    std::fs::write(dir.path().join("b.txt"), "new").unwrap();
    let err = plan::ensure_clean(dir.path(), |path| path == "a.txt").unwrap_err();
    let GitCheckError::Dirty { paths, .. } = &err else {
        panic!("{err}");
    };
    assert_eq!(paths, &["a.txt"]);
    assert!(err.to_string().contains("git stash"), "{err}");
    plan::ensure_clean(dir.path(), |path| path == "c.txt").unwrap();
    let _ = ScopePaths::default();
}

/// A limit the workflow leaves out is learned from the orchestrator's answer, and the dry
/// run's wall-time estimate uses it.
#[tokio::test]
async fn the_dry_run_estimate_uses_limits_learned_from_the_orchestrator_call() {
    let config = Config::from_str(
        "workflow:\n  name: learned\n  paths:\n    allow: [\"src/**\"]\n",
        "learned.yaml",
    )
    .unwrap();
    assert_eq!(config.rate_limits.requests_per_minute, None);
    let repo = example_repo();
    let subtasks: Vec<Value> = (1..=5)
        .map(|i| {
            json!({"task_id": format!("t{i}"), "description": format!("read util{i:02}"),
                   "scope": [format!("src/lib/util{i:02}.ts")], "tools": ["read_file"],
                   "mode": "fast", "depends_on": []})
        })
        .collect();
    let plan = json!({"workflow": "learned", "subtasks": subtasks});
    let scenario = Scenario::from_yaml(&always(&plan), "learned.yaml").unwrap();
    let sim = start_sim(SimConfig {
        scenario: Some(scenario),
        rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet(&sim);
    let prepared = plan::prepare(
        &config,
        &request(repo.path()),
        Some(&fleet),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let estimate = &prepared.report.estimate;
    // Two requests a minute: the agents' requests take minutes, whatever their latency.
    let minutes = estimate.requests as f64 / 2.0;
    assert!(
        estimate.wall_time.as_secs_f64() >= minutes * 60.0 - 1.0,
        "{estimate:?}"
    );
    sim.shutdown().await;
}
