//! The first try works without a key: `--sim` plays a believable orchestrator and believable
//! agents (no scenario, or one that scripts only some calls), and every command fanout
//! suggests works as printed.

use super::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// `fanout ARGS` run in `dir`, with no API key in the environment.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn commit_all(repo: &Path) {
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "initial"]);
}

/// The command after `marker` in `text` up to a backtick or the line's end, split into words.
fn suggested(text: &str, marker: &str) -> Vec<String> {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("no `{marker}` in {text}"));
    let rest = &text[at + marker.len()..];
    let command = rest.split(['`', '\n']).next().unwrap_or_default();
    command.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn init_then_a_simulated_dry_run_plans_agents_without_violations() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    for (path, body) in [
        ("README.md", "# demo\n"),
        ("package.json", "{\"name\": \"demo\"}\n"),
        ("src/index.ts", "export const a = 1;\n"),
        ("src/util.ts", "export const b = 2;\n"),
        ("docs/guide.md", "# Guide\n"),
        (".env", "SECRET=1\n"),
    ] {
        let path = repo.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    commit_all(repo);
    let init = fanout_in(repo, &["init"]);
    assert_eq!(init.status.code(), Some(0), "{}", text(&init));
    // Without a key, the suggested check uses the simulator, and works as printed.
    let command = suggested(&text(&init), "check it with `fanout ");
    assert_eq!(command, ["run", "fanout.yaml", "--dry-run", "--sim"]);
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let first = fanout_in(repo, &args);
    let report = text(&first);
    assert_eq!(first.status.code(), Some(0), "{report}");
    assert!(
        report.contains("No permission violations detected."),
        "{report}"
    );
    assert!(report.contains("call 1 of at most"), "{report}");
    assert!(!report.contains("call 2 of"), "repaired: {report}");
    let agents: u64 = report
        .lines()
        .find_map(|l| l.strip_prefix("Agents planned: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(agents >= 2, "{report}");
    // The same plan on every run.
    let second = text(&fanout_in(repo, &args));
    let plan_line = |report: &str| {
        report
            .lines()
            .find(|l| l.starts_with("Plan saved:"))
            .and_then(|l| l.rsplit("sha256:").next())
            .map(str::to_owned)
    };
    assert_eq!(plan_line(&report), plan_line(&second));
    // And the live run, with the new `fanout.yaml` still uncommitted: it was refused (the
    // plan's scope held the workflow file; then the template's `npm test` failed the run).
    let live = fanout_in(repo, &["run", "fanout.yaml", "--sim"]);
    let report = text(&live);
    assert_eq!(live.status.code(), Some(0), "{report}");
    assert!(report.contains(": completed"), "{report}");
}

#[test]
fn the_quickstart_runs_live_with_plain_sim_and_its_hints_work_as_printed() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_dir(&examples_dir().join("quickstart/repo"), &repo);
    commit_all(&repo);
    let workflow = examples_dir().join("quickstart/workflow.yaml");
    // Run from outside the repository, as the demo does.
    let output = fanout_in(
        work.path(),
        &[
            "run",
            &workflow.display().to_string(),
            "--repo",
            &repo.display().to_string(),
            "--sim",
        ],
    );
    let report = text(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains(": completed"), "{report}");
    assert!(report.contains("Agents: 9 succeeded (of 9)"), "{report}");
    assert!(
        report.contains("Scope check: every change is inside a declared scope."),
        "{report}"
    );
    assert!(!report.contains("Simulated reply"), "{report}");
    let changed = git(&repo, &["status", "--short"]);
    assert_eq!(changed.lines().count(), 9, "{changed}");
    let diff = git(&repo, &["diff", "src/handlers/users.ts"]);
    assert!(
        diff.contains("+// fanout: reviewed by agent add-users (simulated edit)"),
        "{diff}"
    );
    // The closing report's commands work from where it was printed.
    let show = suggested(&report, "Inspect with `fanout ");
    assert!(show.contains(&"--repo".to_owned()), "{show:?}");
    let args: Vec<&str> = show.iter().map(String::as_str).collect();
    let shown = fanout_in(work.path(), &args);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown));
}

#[test]
fn a_scenario_that_scripts_only_the_orchestrator_leaves_the_agents_to_the_defaults() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_dir(&examples_dir().join("quickstart/repo"), &repo);
    commit_all(&repo);
    // The quickstart's scenario without its agent rules (it is JSON, which is YAML).
    let shipped = std::fs::read_to_string(examples_dir().join("quickstart/scenario.yaml")).unwrap();
    let json: String = shipped
        .lines()
        .filter(|line| !line.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let shipped: serde_json::Value = serde_json::from_str(&json).unwrap();
    let plan_only = serde_json::json!({"rules": [shipped["rules"][0].clone()]});
    assert_eq!(plan_only["rules"][0]["match"]["tool"], "submit_plan");
    let scenario = work.path().join("plan-only.yaml");
    std::fs::write(&scenario, plan_only.to_string()).unwrap();
    let output = fanout_in(
        work.path(),
        &[
            "run",
            &examples_dir()
                .join("quickstart/workflow.yaml")
                .display()
                .to_string(),
            "--repo",
            &repo.display().to_string(),
            "--scenario",
            &scenario.display().to_string(),
        ],
    );
    let report = text(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert!(report.contains("Agents: 9 succeeded (of 9)"), "{report}");
    assert!(
        report.contains("Scope check: every change is inside a declared scope."),
        "{report}"
    );
    let diff = git(&repo, &["diff", "src/handlers/orders.ts"]);
    assert!(
        diff.contains("+// fanout: reviewed by agent validate-orders (simulated edit)"),
        "{diff}"
    );
}

#[test]
fn the_item_plan_hint_of_a_simulated_dry_run_keeps_sim() {
    let work = tempfile::tempdir().unwrap();
    let dir = examples_dir().join("support-tickets");
    for name in ["workflow-llm.yaml", "tickets.jsonl", "plan-scenario.yaml"] {
        std::fs::copy(dir.join(name), work.path().join(name)).unwrap();
    }
    let dry = fanout_in(
        work.path(),
        &[
            "run",
            "workflow-llm.yaml",
            "--dry-run",
            "--scenario",
            "plan-scenario.yaml",
        ],
    );
    let report = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{report}");
    let command = suggested(&report, "run it as reviewed: fanout ");
    assert_eq!(
        command.last().map(String::as_str),
        Some("--sim"),
        "{report}"
    );
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let live = fanout_in(work.path(), &args);
    assert_eq!(live.status.code(), Some(0), "{}", text(&live));
}

#[test]
fn the_llm_chunked_item_example_plans_itself_with_plain_sim() {
    let work = tempfile::tempdir().unwrap();
    let dir = examples_dir().join("support-tickets");
    for name in ["workflow-llm.yaml", "tickets.jsonl"] {
        std::fs::copy(dir.join(name), work.path().join(name)).unwrap();
    }
    let dry = fanout_in(
        work.path(),
        &["run", "workflow-llm.yaml", "--dry-run", "--sim"],
    );
    let report = text(&dry);
    assert_eq!(dry.status.code(), Some(0), "{report}");
    assert!(
        report.contains("field       category: string one of billing"),
        "{report}"
    );
    let command = suggested(&report, "run it as reviewed: fanout ");
    let args: Vec<&str> = command.iter().map(String::as_str).collect();
    let live = fanout_in(work.path(), &args);
    let report = text(&live);
    assert_eq!(live.status.code(), Some(0), "{report}");
    assert!(report.contains("300 succeeded, 0 failed"), "{report}");
}
