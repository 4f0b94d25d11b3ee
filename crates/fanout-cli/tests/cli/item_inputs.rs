//! Item work with real-world inputs: bad lines become failures of those lines (not aborts),
//! empty inputs say there is nothing to do, and the failures a retry can fix are retried by
//! a new run that carries the rest over.

use super::*;

/// A workflow for `tickets.jsonl` in `dir` (the example's schema), chunks of `chunk` items.
pub(super) fn ticket_workflow(dir: &Path, chunk: usize, extra: &str) -> PathBuf {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets");
    std::fs::copy(examples.join("schema.json"), dir.join("schema.json")).unwrap();
    let path = dir.join("workflow.yaml");
    std::fs::write(
        &path,
        format!(
            "workflow:\n  name: tickets\n  max_parallel_agents: 8\n  items:\n    input:\n      path: tickets.jsonl\n      id: {{field: id}}\n{extra}    chunking: {{strategy: fixed, size: {chunk}}}\n    worker:\n      instructions: Triage each ticket.\n      output_schema: schema.json\n    retries: {{resend_missing: 0, repairs: 0}}\n    aggregate:\n      count_by: [category]\n"
        ),
    )
    .unwrap();
    path
}

/// `good` tickets from the example, then the bad lines.
pub(super) fn tickets(dir: &Path, good: usize, bad: &[&str]) -> usize {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets");
    let text = std::fs::read_to_string(examples.join("tickets.jsonl")).unwrap();
    let mut lines: Vec<String> = text.lines().take(good).map(str::to_owned).collect();
    lines.extend(bad.iter().map(|line| (*line).to_owned()));
    std::fs::write(dir.join("tickets.jsonl"), lines.join("\n") + "\n").unwrap();
    lines.len()
}

fn run_dir_of(dir: &Path, stdout: &[u8]) -> PathBuf {
    let report: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(stdout).lines().last().unwrap()).unwrap();
    dir.join(".fanout/runs")
        .join(report["run_id"].as_str().unwrap())
}

fn jsonl_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const BAD: [&str; 6] = [
    "{\"id\": \"TCK-9001\", \"body\": ",
    "not json at all",
    "{\"body\": \"no id here\"}",
    "{\"id\": null, \"body\": \"null id\"}",
    "{\"id\": \"TCK-1001\", \"body\": \"the first ticket's id again\"}",
    "[1, 2",
];

/// A JSONL file with bad lines aborted the job before any work, one error per run, and the
/// bad records never reached failed.jsonl.
#[test]
fn bad_lines_are_failures_of_those_lines_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let lines = tickets(dir.path(), 30, &BAD);
    let wf = ticket_workflow(dir.path(), 5, "").display().to_string();

    // The dry run names every problem at once and exits 0.
    let output = fanout_in(dir.path(), &["run", &wf, "--dry-run", "--sim"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for line in 31..=36 {
        assert!(
            stderr.contains(&format!("tickets.jsonl:{line}:")),
            "line {line}: {stderr}"
        );
    }

    let output = fanout_in(dir.path(), &["run", &wf, "--sim", "--json"]);
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = run_dir_of(dir.path(), &output.stdout);
    let results = jsonl_lines(&run.join("results.jsonl"));
    let failed = jsonl_lines(&run.join("failed.jsonl"));
    assert_eq!(results.len(), 30);
    assert_eq!(results.len() + failed.len(), lines, "every line once");
    let reasons: Vec<(&str, &str)> = failed
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("line:31", "invalid_input"),
            ("line:32", "invalid_input"),
            ("line:33", "missing_id"),
            ("line:34", "missing_id"),
            ("TCK-1001@line:35", "duplicate_id"),
            ("line:36", "invalid_input"),
        ]
    );
    assert_eq!(failed[2]["input"]["body"], "no id here");

    // `on_invalid: fail` makes them fatal, all listed.
    let wf = ticket_workflow(dir.path(), 5, "      on_invalid: fail\n")
        .display()
        .to_string();
    let output = fanout_in(dir.path(), &["run", &wf, "--sim"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("6 input line(s) are not items"), "{stderr}");
}

/// An empty `.jsonl` ended "complete, 0 items", exit 0.
#[test]
fn an_empty_input_is_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    tickets(dir.path(), 0, &[]);
    std::fs::write(dir.path().join("tickets.jsonl"), "\n").unwrap();
    let wf = ticket_workflow(dir.path(), 5, "").display().to_string();
    for args in [
        vec!["run", &wf, "--sim"],
        vec!["run", &wf, "--sim", "--dry-run"],
    ] {
        let output = fanout_in(dir.path(), &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(8), "{args:?}: {stderr}");
        assert!(stderr.contains("nothing to do"), "{stderr}");
    }
}

/// `--retry-failed` refused item runs. Now a run with many failed calls, retried against a
/// healthy API, sends only the items a retry can fix (never the bad input lines) and ends with
/// every good line in results.jsonl and the bad lines still in failed.jsonl.
#[test]
fn retry_failed_sends_only_what_a_retry_can_fix_and_carries_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let lines = tickets(dir.path(), 60, &BAD);
    let wf = ticket_workflow(dir.path(), 3, "").display().to_string();
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--sim",
            "--sim-faults",
            "api_error=0.8",
            "--sim-seed",
            "7",
            "--json",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let first = run_dir_of(dir.path(), &output.stdout);
    let failed = jsonl_lines(&first.join("failed.jsonl"));
    let retryable: Vec<&serde_json::Value> = failed
        .iter()
        .filter(|f| f["reason"] == "errored" || f["reason"] == "not_run")
        .collect();
    assert!(
        !retryable.is_empty(),
        "the faults failed no call: {failed:?}"
    );
    let first_id = first.file_name().unwrap().to_string_lossy().into_owned();

    // `fanout resume` of the ended run sends nothing and leaves its failures as they were
    // (it used to rewrite failed.jsonl with every `attempts` reset to 0).
    let before = std::fs::read_to_string(first.join("failed.jsonl")).unwrap();
    assert!(
        before.contains("\"attempts\":1") || before.contains("\"attempts\":2"),
        "{before}"
    );
    let resumed = dir.path().join("resume.jsonl");
    let output = fanout_in(
        dir.path(),
        &[
            "resume",
            &first_id,
            "--sim",
            "--sim-record",
            &resumed.display().to_string(),
        ],
    );
    let sent = std::fs::read_to_string(&resumed).unwrap_or_default();
    assert!(
        !sent.contains("submit_results"),
        "the resume sent settled items again"
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(first.join("failed.jsonl")).unwrap(),
        before
    );

    // A dry run of the retry says what it would send; nothing is sent.
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--sim",
            "--retry-failed",
            &first_id,
            "--dry-run",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("would send {} item(s) again", retryable.len())),
        "{stderr}"
    );

    let record = dir.path().join("retry.jsonl");
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--sim",
            "--retry-failed",
            &first_id,
            "--sim-record",
            &record.display().to_string(),
            "--json",
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "the bad lines stay failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let second = run_dir_of(dir.path(), &output.stdout);
    assert_ne!(second, first, "a new run");
    let results = jsonl_lines(&second.join("results.jsonl"));
    let failed = jsonl_lines(&second.join("failed.jsonl"));
    assert_eq!(results.len(), 60, "every good line has its result");
    assert_eq!(results.len() + failed.len(), lines);
    assert!(
        failed
            .iter()
            .all(|f| f["attempts"] == 0 && f["id"].as_str().unwrap().contains("line:"))
    );
    // Worker calls: at most one per retried item (chunks of 3), plus the synthesis calls.
    let calls = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .filter(|l| l.contains("submit_results"))
        .count();
    assert!(
        calls <= retryable.len(),
        "{calls} worker calls for {} items",
        retryable.len()
    );
}

/// `count_by: [lable]` passed the dry run and the run reported "by lable: (none) 57".
#[test]
fn workflow_mistakes_are_caught_by_the_dry_run() {
    let dir = tempfile::tempdir().unwrap();
    tickets(dir.path(), 5, &[]);
    let wf = ticket_workflow(dir.path(), 5, "").display().to_string();
    let text = std::fs::read_to_string(&wf).unwrap();
    std::fs::write(
        &wf,
        text.replace("count_by: [category]", "count_by: [categroy]"),
    )
    .unwrap();
    let output = fanout_in(dir.path(), &["run", &wf, "--dry-run", "--sim"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean `category`?"), "{stderr}");
}

/// `provider: openai` with `execution: batch` passed the dry run and failed live; it now goes
/// through the OpenAI Batch API (input file, batch, output file) at half price.
#[test]
fn openai_batch_execution_goes_through_the_batch_api() {
    let dir = tempfile::tempdir().unwrap();
    tickets(dir.path(), 12, &[]);
    let wf = ticket_workflow(dir.path(), 5, "").display().to_string();
    let text = std::fs::read_to_string(&wf)
        .unwrap()
        .replace("    retries:", "    execution: batch\n    retries:")
        + "  models:\n    fast: { provider: openai, model: gpt-5-mini, price_per_million_tokens: { input: 0.25, output: 2 } }\n    default: { provider: openai, model: gpt-5, price_per_million_tokens: { input: 1.25, output: 10 } }\n";
    std::fs::write(&wf, text).unwrap();
    let output = fanout_in(dir.path(), &["run", &wf, "--dry-run", "--sim"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains("batch (half price)"), "{stdout}");

    let record = dir.path().join("exchanges.jsonl");
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--sim",
            "--json",
            "--sim-record",
            &record.display().to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let run = run_dir_of(dir.path(), &output.stdout);
    let results = jsonl_lines(&run.join("results.jsonl"));
    assert_eq!(results.len(), 12);
    let exchanges: Vec<serde_json::Value> = jsonl_lines(&record);
    assert_eq!(exchanges.len(), 3, "one request per chunk of 5");
    assert!(
        exchanges
            .iter()
            .all(|e| e["endpoint"] == "batch_chat_completions"),
        "{exchanges:?}"
    );
    // Charged at half the online price of the tokens the sim reported.
    let report: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    let input: u64 = exchanges
        .iter()
        .map(|e| e["input_tokens"].as_u64().unwrap())
        .sum();
    let out: u64 = exchanges
        .iter()
        .map(|e| e["output_tokens"].as_u64().unwrap())
        .sum();
    let online = (input as f64 * 1.25 + out as f64 * 10.0) / 1e6;
    let dollars = report["cost_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        (dollars - online / 2.0).abs() < 1e-6,
        "{dollars} vs {online}/2"
    );
}

/// Exit 6 ("failed") when no item succeeded: every worker call is refused by the API (a 400,
/// not retried), so every item ends in `failed.jsonl` and none in the results.
#[test]
fn a_run_where_nothing_succeeds_exits_failed() {
    let dir = tempfile::tempdir().unwrap();
    tickets(dir.path(), 4, &[]);
    let wf = ticket_workflow(dir.path(), 2, "").display().to_string();
    let scenario = dir.path().join("refuse.yaml");
    std::fs::write(
        &scenario,
        "rules:\n  - name: refuse\n    match: {tool: submit_results}\n    error: {status: 400, type: invalid_request_error, message: refused by the test}\n",
    )
    .unwrap();
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--scenario",
            &scenario.display().to_string(),
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(6), "{stderr}");
    let run = run_dir_of(dir.path(), &output.stdout);
    assert_eq!(
        std::fs::read_to_string(run.join("results.jsonl")).unwrap(),
        ""
    );
    let failed = jsonl_lines(&run.join("failed.jsonl"));
    assert_eq!(failed.len(), 4);
    assert!(
        failed.iter().all(|f| f["reason"] == "errored"
            && f["message"]
                .as_str()
                .unwrap_or_default()
                .contains("refused by the test")),
        "{failed:?}"
    );
}

/// An item run without an API key said so and exited 70 ("internal"); like a repository run,
/// a model API that cannot be reached is "not ready" (4), and nothing is written.
#[test]
fn an_item_run_without_a_key_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    tickets(dir.path(), 3, &[]);
    let wf = ticket_workflow(dir.path(), 5, "").display().to_string();
    let output = fanout_in(dir.path(), &["run", &wf]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("ANTHROPIC_API_KEY is not set"), "{stderr}");
    assert!(stderr.contains("--sim"), "{stderr}");
    assert!(!dir.path().join(".fanout/runs").exists());
}

/// `chunking: fixed` sent a ~500K-token request for a 2 MB record with no warning.
#[test]
fn fixed_chunks_respect_the_models_input_limit() {
    let dir = tempfile::tempdir().unwrap();
    let huge = format!(
        "{{\"id\": \"HUGE-1\", \"body\": \"{}\"}}",
        "word ".repeat(400_000)
    );
    tickets(dir.path(), 6, &[&huge]);
    let wf = ticket_workflow(dir.path(), 7, "").display().to_string();
    let record = dir.path().join("exchanges.jsonl");
    let output = fanout_in(
        dir.path(),
        &[
            "run",
            &wf,
            "--sim",
            "--json",
            "--sim-record",
            &record.display().to_string(),
        ],
    );
    assert_eq!(
        output.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = run_dir_of(dir.path(), &output.stdout);
    let failed = jsonl_lines(&run.join("failed.jsonl"));
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["id"], "HUGE-1");
    assert_eq!(failed[0]["reason"], "oversized");
    assert_eq!(jsonl_lines(&run.join("results.jsonl")).len(), 6);
    let sent = std::fs::read_to_string(&record).unwrap();
    assert!(!sent.contains("HUGE-1"), "the oversized record was sent");
}

/// For mixes of good lines, bad lines and repeated ids, with provider faults, a kill -9 at a
/// varying point and a resume, every non-blank input line ends exactly once in results.jsonl
/// or failed.jsonl.
#[test]
fn every_line_is_accounted_for_once_through_faults_kill_and_resume() {
    let mut state: u64 = 0x51ed_c0de_2026_1204;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n.max(1)
    };
    let mut killed_mid_run = 0;
    for round in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let good = 20 + next(30) as usize;
        let bad: Vec<String> = (0..next(8))
            .map(|i| match next(4) {
                0 => "{broken".to_owned(),
                1 => format!("{{\"body\": \"no id {i}\"}}"),
                2 => format!(
                    "{{\"id\": \"TCK-{}\", \"body\": \"again\"}}",
                    1001 + next(good as u64)
                ),
                _ => "{\"id\": null}".to_owned(),
            })
            .collect();
        let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
        let lines = tickets(dir.path(), good, &bad);
        let wf = ticket_workflow(dir.path(), 1 + next(4) as usize, "")
            .display()
            .to_string();
        let mut child = Command::new(env!("CARGO_BIN_EXE_fanout"))
            .args([
                "run",
                &wf,
                "--sim",
                "--sim-latency-ms",
                "150",
                "--sim-faults",
                "overloaded=0.1,api_error=0.1,malformed=0.05",
                "--sim-seed",
                &round.to_string(),
            ])
            .current_dir(dir.path())
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let settled_at_kill = next(3) as usize;
        wait_for("the run to settle some chunks", || {
            std::fs::read_dir(dir.path().join(".fanout/runs"))
                .ok()
                .and_then(|mut runs| runs.next())
                .and_then(|run| run.ok())
                .and_then(|run| std::fs::read_to_string(run.path().join("settled.jsonl")).ok())
                .is_some_and(|text| text.lines().count() > settled_at_kill)
                || child.try_wait().ok().flatten().is_some()
        });
        let killed = child.try_wait().unwrap().is_none();
        let _ = child.kill();
        child.wait().unwrap();
        killed_mid_run += usize::from(killed);
        let run_id = std::fs::read_dir(dir.path().join(".fanout/runs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        let output = fanout_in(dir.path(), &["resume", &run_id, "--sim"]);
        assert!(
            matches!(output.status.code(), Some(0 | 5)),
            "round {round}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let run = dir.path().join(".fanout/runs").join(&run_id);
        let results = jsonl_lines(&run.join("results.jsonl"));
        let failed = jsonl_lines(&run.join("failed.jsonl"));
        assert_eq!(
            results.len() + failed.len(),
            lines,
            "round {round}: every line once"
        );
        let mut keys: Vec<String> = results
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .chain(failed.iter().map(|f| f["id"].as_str().unwrap().to_owned()))
            .collect();
        keys.sort();
        let count = keys.len();
        keys.dedup();
        assert_eq!(keys.len(), count, "round {round}: a line twice");
    }
    assert!(killed_mid_run > 0, "no round was killed before it ended");
}
