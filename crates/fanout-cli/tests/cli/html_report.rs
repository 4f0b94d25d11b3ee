//! `fanout report RUN_ID`: the HTML page of a live `--sim` run holds one timeline bar per
//! attempt in the store and the store's totals; text from the store is escaped; an item run's
//! page shows its counts and failures; an unknown run exits 2.

use std::collections::BTreeMap;

use super::*;

/// `data-agent="…" data-attempt="N"` pairs of the page's timeline bars, as written (escaped).
fn bars(html: &str) -> Vec<(String, u32)> {
    regex::Regex::new(r#"data-agent="([^"]*)" data-attempt="(\d+)""#)
        .unwrap()
        .captures_iter(html)
        .map(|c| (c[1].to_owned(), c[2].parse().unwrap()))
        .collect()
}

/// The `data-value` of the element with `id`.
fn value(html: &str, id: &str) -> String {
    let pattern = format!(r#"id="{id}" data-value="([^"]*)""#);
    regex::Regex::new(&pattern)
        .unwrap()
        .captures(html)
        .unwrap_or_else(|| panic!("no #{id} in the page"))[1]
        .to_owned()
}

/// Nothing the page loads from anywhere: it must open from `file://` with no network.
fn assert_self_contained(html: &str) {
    let external =
        regex::Regex::new(r#"(?i)(src|href)\s*=\s*["']?(https?:)?//|<link|@import|url\("#).unwrap();
    assert!(external.find(html).is_none(), "{:?}", external.find(html));
}

fn show_json(dir: &Path, run_id: &str, repo: &str) -> serde_json::Value {
    let show = fanout_in(dir, &["show", run_id, "--repo", repo, "--json"]);
    assert_eq!(show.status.code(), Some(0), "{show:?}");
    serde_json::from_slice(&show.stdout).unwrap()
}

fn only_run_id(dir: &Path, repo: &str) -> String {
    let runs = fanout_in(dir, &["runs", "--repo", repo, "--json"]);
    let runs: serde_json::Value = serde_json::from_slice(&runs.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    runs[0]["run_id"].as_str().unwrap().to_owned()
}

#[test]
fn a_live_sim_run_report_has_a_bar_per_attempt_and_the_store_totals() {
    let work = super::reports::quickstart();
    let output = super::reports::run_quickstart(work.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let repo = work.path().join("repo");
    let repo_arg = repo.display().to_string();
    let run_id = only_run_id(work.path(), &repo_arg);

    let report = fanout_in(work.path(), &["report", &run_id, "--repo", &repo_arg]);
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let expected = repo
        .canonicalize()
        .unwrap()
        .join(".fanout/runs")
        .join(&run_id)
        .join("report.html");
    assert_eq!(
        String::from_utf8_lossy(&report.stdout),
        format!("Report: {}\n", expected.display())
    );
    let html = std::fs::read_to_string(&expected).unwrap();
    assert_self_contained(&html);
    // The quickstart's one agent with dependencies (the documenter waits for the validators)
    // has a dashed wait line before its bar; the others none.
    assert_eq!(html.matches("class=\"dep\"").count(), 1);
    assert!(html.contains("waited for its dependencies for "));

    // One bar per attempt the store has, and no other.
    let shown = show_json(work.path(), &run_id, &repo_arg);
    let mut in_store: Vec<(String, u32)> = shown["agent_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["agent_id"].as_str().unwrap().to_owned(),
                row["attempt"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let mut drawn = bars(&html);
    in_store.sort();
    drawn.sort();
    assert_eq!(in_store.len(), 9);
    assert_eq!(drawn, in_store);

    // The header's totals are the store's.
    let agents = &shown["agents"];
    let tokens =
        agents["input_tokens"].as_u64().unwrap() + agents["output_tokens"].as_u64().unwrap();
    assert!(tokens > 0);
    assert_eq!(value(&html, "total-tokens"), tokens.to_string());
    let dollars: f64 = value(&html, "total-dollars").parse().unwrap();
    assert_eq!(dollars, agents["dollars"].as_f64().unwrap());
    assert!(html.contains("9 succeeded (of 9)"), "{html}");
    assert!(html.contains("<strong id=\"run-status\">completed</strong>"));
    // The summary's verdicts: wall time against the plan's estimate, the scope check, tests.
    assert!(
        regex::Regex::new(r"<dt>Wall time</dt><dd>[^<]+ \(estimated about [^<]+\)</dd>")
            .unwrap()
            .is_match(&html),
        "{html}"
    );
    assert!(html.contains("every change is inside a declared scope"));
    // Each agent's diff stat: its one changed file and its lines, which add up to the
    // run's diff from its base commit to its last checkpoint (no file has two writers).
    let rows = regex::Regex::new(
        r#"<tr data-diff-agent="([^"]+)" data-added="(\d+)" data-removed="(\d+)"><td><code>[^<]+</code></td><td class="n">(\d+)</td>"#,
    )
    .unwrap();
    let stats: Vec<(String, u64, u64, u64)> = rows
        .captures_iter(&html)
        .map(|c| {
            (
                c[1].to_owned(),
                c[2].parse().unwrap(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            )
        })
        .collect();
    let editors: Vec<_> = stats.iter().filter(|s| s.0.starts_with("add-")).collect();
    assert_eq!(editors.len(), 8, "{html}");
    assert!(editors.iter().all(|s| s.3 == 1 && s.1 > 0), "{editors:?}");
    let base = shown["base_commit"].as_str().unwrap();
    let numstat = git(
        &repo,
        &[
            "diff",
            "--numstat",
            base,
            &format!("refs/fanout/{run_id}/latest"),
        ],
    );
    let column = |index: usize| -> u64 {
        numstat
            .lines()
            .map(|line| line.split('\t').nth(index).unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(
        stats.iter().map(|s| s.1).sum::<u64>(),
        column(0),
        "{numstat}"
    );
    assert_eq!(
        stats.iter().map(|s| s.2).sum::<u64>(),
        column(1),
        "{numstat}"
    );
    assert!(!html.contains("</code>* "), "no file has two writers");
    // Model calls over time, the checkpoints on the axis.
    assert!(html.contains("id=\"requests\""));
    let checkpoints = shown["checkpoints"].as_array().unwrap().len();
    assert_eq!(html.matches("<line class=\"ck\"").count(), checkpoints);

    // `fanout show` points at the command.
    let text = fanout_in(work.path(), &["show", &run_id, "--repo", &repo_arg]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.ends_with(&format!("\nReport: fanout report {run_id}\n")),
        "{text}"
    );

    // `-o FILE` writes there instead.
    let elsewhere = work.path().join("page.html");
    let elsewhere_arg = elsewhere.display().to_string();
    let output = fanout_in(
        work.path(),
        &["report", &run_id, "--repo", &repo_arg, "-o", &elsewhere_arg],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(bars(&std::fs::read_to_string(&elsewhere).unwrap()).len(), 9);
}

/// Agent ids, errors, paths and denial reasons can come from a model: none of it may become
/// markup. And a run id that names nothing exits 2, saying so.
#[tokio::test]
async fn text_from_the_store_is_escaped_and_an_unknown_run_exits_two() {
    use fanout_core::config::Mode;
    use fanout_core::store::{
        AgentFinish, AgentStart, AgentStatus, DenialRecord, NewRun, RunStatus, Store,
        ToolCallRecord,
    };
    use std::time::{Duration, SystemTime};

    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().display().to_string();
    // No run store at all: exit 2.
    let missing = fanout_in(dir.path(), &["report", "r1", "--repo", &repo]);
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no run store"));

    let hostile = "<script>alert('id')</script>";
    let start = SystemTime::now() - Duration::from_secs(10);
    let store = Store::open_in_repo(dir.path()).unwrap();
    store
        .create_run(NewRun {
            run_id: "r1".into(),
            workflow: "<b>wf</b>".to_owned(),
            config_path: None,
            plan_hash: None,
            repo: Some(dir.path().to_path_buf()),
            status: RunStatus::Running,
            started_at: start,
            base_commit: None,
            agents_planned: 1,
            simulated: true,
        })
        .await
        .unwrap();
    store
        .start_agent(AgentStart {
            run_id: "r1".into(),
            agent_id: hostile.into(),
            attempt: 1,
            task_description: "x".to_owned(),
            mode: Mode::Fast,
            model: Some("m".to_owned()),
            escalated: false,
            started_at: start + Duration::from_secs(1),
        })
        .await
        .unwrap();
    store
        .tool_call(ToolCallRecord {
            run_id: "r1".into(),
            agent_id: hostile.into(),
            attempt: 1,
            seq: 1,
            tool: "write_file".to_owned(),
            target: Some("src/<img src=x onerror=alert(1)>.ts".to_owned()),
            ok: true,
            outcome: Some("ok".to_owned()),
            error: None,
            started_at: start + Duration::from_secs(2),
            ended_at: Some(start + Duration::from_secs(3)),
            duration_ms: Some(1000),
            bytes: Some(1),
            paths: Vec::new(),
        })
        .await
        .unwrap();
    store
        .denial(DenialRecord {
            run_id: "r1".into(),
            agent_id: hostile.into(),
            attempt: 1,
            tool: "bash".to_owned(),
            target: Some("curl \"http://x\"".to_owned()),
            reason: "<iframe src=javascript:alert(2)>".to_owned(),
            at: start + Duration::from_secs(3),
        })
        .await
        .unwrap();
    store
        .finish_agent(AgentFinish {
            run_id: "r1".into(),
            agent_id: hostile.into(),
            attempt: 1,
            status: AgentStatus::Success,
            files_accessed: vec!["src/<img src=x onerror=alert(1)>.ts".to_owned()],
            tools_called: vec!["write_file".to_owned()],
            input_tokens: 10,
            output_tokens: 5,
            cost_usd: 0.25,
            cache_read_tokens: 0,
            cache_write_tokens: 0,
            cache_saved_usd: 0.0,
            error: Some("</title></rect><script>alert('error')</script>".to_owned()),
            checkpoint: None,
            ended_at: start + Duration::from_secs(4),
        })
        .await
        .unwrap();
    store
        .set_run_status(
            &"r1".into(),
            RunStatus::Completed,
            Some(start + Duration::from_secs(5)),
            None,
        )
        .await
        .unwrap();
    store.close().await.unwrap();

    let output = fanout_in(dir.path(), &["report", "r1", "--repo", &repo]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let html = std::fs::read_to_string(dir.path().join(".fanout/runs/r1/report.html")).unwrap();
    // The page has no script of its own, so any `<script` would be injected.
    for markup in [
        "<script",
        "<img",
        "<iframe",
        "<b>wf",
        "</title></rect><script",
    ] {
        assert!(!html.contains(markup), "{markup} in:\n{html}");
    }
    assert_eq!(
        bars(&html),
        vec![(
            "&lt;script&gt;alert(&#39;id&#39;)&lt;/script&gt;".to_owned(),
            1
        )]
    );
    for escaped in [
        "&lt;iframe src=javascript:alert(2)&gt;",
        "src/&lt;img src=x onerror=alert(1)&gt;.ts",
        "&lt;/title&gt;&lt;/rect&gt;&lt;script&gt;alert(&#39;error&#39;)&lt;/script&gt;",
        "curl &quot;http://x&quot;",
    ] {
        assert!(html.contains(escaped), "no {escaped} in:\n{html}");
    }
    assert_eq!(value(&html, "total-tokens"), "15");
    assert_eq!(value(&html, "total-dollars"), "0.25");

    let unknown = fanout_in(dir.path(), &["report", "nope", "--repo", &repo]);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("no run nope") && stderr.contains("fanout runs"),
        "{stderr}"
    );
    assert!(!dir.path().join(".fanout/runs/nope").exists());
}

#[test]
fn an_item_run_report_shows_its_counts_and_failures() {
    let dir = tempfile::tempdir().unwrap();
    let lines = super::item_inputs::tickets(
        dir.path(),
        30,
        &[
            "not json <script>alert(1)</script>",
            "{\"body\": \"no id here\"}",
        ],
    );
    let wf = super::item_inputs::ticket_workflow(dir.path(), 5, "")
        .display()
        .to_string();
    let output = fanout_in(dir.path(), &["run", &wf, "--sim"]);
    assert_eq!(output.status.code(), Some(5), "{output:?}");
    let repo = dir.path().display().to_string();
    let run_id = only_run_id(dir.path(), &repo);

    let report = fanout_in(dir.path(), &["report", &run_id, "--repo", &repo]);
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let run_dir = dir.path().join(".fanout/runs").join(&run_id);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert_self_contained(&html);
    assert!(!html.contains("<script"), "{html}");

    assert_eq!(lines, 32);
    assert!(
        html.contains("data-items=\"32\" data-succeeded=\"30\" data-failed=\"2\""),
        "{html}"
    );
    // Each category's bar carries the number of results with that category.
    let results = std::fs::read_to_string(run_dir.join("results.jsonl")).unwrap();
    let mut categories: BTreeMap<String, usize> = BTreeMap::new();
    for line in results.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        *categories
            .entry(record["category"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert!(!categories.is_empty());
    for (category, count) in &categories {
        let row = format!("<tr><td>{category}</td><td class=\"n\">{count}</td>");
        assert!(html.contains(&row), "no {row} in:\n{html}");
    }
    // The failures with their reasons.
    for row in [
        "<tr><td><code>line:31</code></td><td>invalid_input</td>",
        "<tr><td><code>line:32</code></td><td>missing_id</td>",
    ] {
        assert!(html.contains(row), "no {row} in:\n{html}");
    }
    // One bar per worker call in the store.
    let shown = show_json(dir.path(), &run_id, &repo);
    assert_eq!(
        bars(&html).len(),
        shown["agent_runs"].as_array().unwrap().len()
    );
    assert!(!bars(&html).is_empty());
}

/// With one request in flight at a time (`rate_limits.max_in_flight: 1`), agents' calls queue
/// for the rate governor: each call's wait is on record, and the report darkens the start of
/// each bar by its attempt's waits, summed as the store has them.
#[test]
fn rate_waits_recorded_by_the_engine_are_drawn_on_the_timeline() {
    let work = super::reports::quickstart();
    let workflow = work.path().join("workflow.yaml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/workflow.yaml"),
    )
    .unwrap()
    .replacen(
        "workflow:\n",
        "workflow:\n  rate_limits:\n    max_in_flight: 1\n",
        1,
    );
    std::fs::write(&workflow, text).unwrap();
    let repo = work.path().join("repo");
    let repo_arg = repo.display().to_string();
    let output = fanout_in(
        work.path(),
        &[
            "run",
            &workflow.display().to_string(),
            "--repo",
            &repo_arg,
            "--sim",
            "--sim-latency-ms",
            "40",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let run_id = only_run_id(work.path(), &repo_arg);
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let waits: u64 = reader
        .events(&run_id.as_str().into())
        .unwrap()
        .iter()
        .filter(|event| event.kind == "model_call")
        .map(|event| event.payload["rate_wait_ms"].as_u64().unwrap())
        .sum();
    assert!(
        waits > 0,
        "one call at a time: calls waited for the governor"
    );
    let report = fanout_in(work.path(), &["report", &run_id, "--repo", &repo_arg]);
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let html = std::fs::read_to_string(
        repo.canonicalize()
            .unwrap()
            .join(".fanout/runs")
            .join(&run_id)
            .join("report.html"),
    )
    .unwrap();
    let drawn: u64 = html
        .split("data-wait=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(drawn, waits);
    assert!(html.contains("rate wait: "));
}

/// The requests chart counts what was sent: every try of every answered call, and in red the
/// tries the server answered 429, as many as the simulator was told to send and the run store
/// has on its `model_call` events.
#[test]
fn the_429s_a_run_met_are_on_the_requests_chart() {
    let work = super::reports::quickstart();
    // Three agents' second turns are answered 429 on their first try; the rest is the
    // simulator's default play of the quickstart.
    let scenario = work.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        "rules:\n  - match: {turn: 2, attempt: 0}\n    times: 3\n    error: {status: 429, \
         message: slow down, headers: {retry-after: '0'}}\n",
    )
    .unwrap();
    let scenario_arg = scenario.display().to_string();
    let output = super::reports::run_quickstart(work.path(), &["--scenario", &scenario_arg]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let repo = work.path().join("repo");
    let repo_arg = repo.display().to_string();
    let run_id = only_run_id(work.path(), &repo_arg);
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let calls: Vec<serde_json::Value> = reader
        .events(&run_id.as_str().into())
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "model_call")
        .map(|event| event.payload)
        .collect();
    let sum = |key: &str| -> u64 { calls.iter().map(|call| call[key].as_u64().unwrap()).sum() };
    assert_eq!(sum("rate_limited"), 3, "{calls:?}");
    assert_eq!(sum("tries"), calls.len() as u64 + 3);

    let page = work.path().join("page.html");
    let page_arg = page.display().to_string();
    let report = fanout_in(
        work.path(),
        &["report", &run_id, "--repo", &repo_arg, "-o", &page_arg],
    );
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let html = std::fs::read_to_string(&page).unwrap();
    assert_eq!(value(&html, "requests-429"), "3");
    assert_eq!(value(&html, "requests-sent"), sum("tries").to_string());
    let drawn: u64 = html
        .split("<rect class=\"r429\" data-count=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(drawn, 3);
}

/// An item run's worker calls go through the same fleet: their 429s and tries are on their
/// `model_call` events and on the report's requests chart.
#[test]
fn an_item_run_report_counts_its_workers_429s() {
    let dir = tempfile::tempdir().unwrap();
    super::item_inputs::tickets(dir.path(), 30, &[]);
    let wf = super::item_inputs::ticket_workflow(dir.path(), 5, "")
        .display()
        .to_string();
    let scenario = dir.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        "rules:\n  - match: {attempt: 0}\n    times: 2\n    error: {status: 429, message: slow \
         down, headers: {retry-after: '0'}}\n",
    )
    .unwrap();
    let scenario_arg = scenario.display().to_string();
    let output = fanout_in(dir.path(), &["run", &wf, "--scenario", &scenario_arg]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let repo = dir.path().display().to_string();
    let run_id = only_run_id(dir.path(), &repo);
    let reader = fanout_core::store::StoreReader::open_in_repo(dir.path()).unwrap();
    let calls: Vec<serde_json::Value> = reader
        .events(&run_id.as_str().into())
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "model_call")
        .map(|event| event.payload)
        .collect();
    assert_eq!(calls.len(), 6, "six chunks of five: {calls:?}");
    let sum = |key: &str| -> u64 { calls.iter().map(|call| call[key].as_u64().unwrap()).sum() };
    assert_eq!(sum("rate_limited"), 2);
    assert_eq!(sum("tries"), 8);

    let report = fanout_in(dir.path(), &["report", &run_id, "--repo", &repo]);
    assert_eq!(report.status.code(), Some(0), "{report:?}");
    let html = std::fs::read_to_string(
        dir.path()
            .join(".fanout/runs")
            .join(&run_id)
            .join("report.html"),
    )
    .unwrap();
    assert_eq!(value(&html, "requests-429"), "2");
    assert_eq!(value(&html, "requests-sent"), "8");
}

/// Exit 70 is for errors no command classifies: a report that cannot be written where `-o`
/// says. The message names the file asked for (not a temporary) and the reason, once.
#[test]
fn a_report_that_cannot_be_written_exits_70_naming_the_file() {
    let work = super::reports::quickstart();
    let output = super::reports::run_quickstart(work.path(), &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let repo_arg = work.path().join("repo").display().to_string();
    let run_id = only_run_id(work.path(), &repo_arg);
    let target = work.path().join("missing-dir").join("report.html");
    let report = fanout_in(
        work.path(),
        &[
            "report",
            &run_id,
            "--repo",
            &repo_arg,
            "-o",
            &target.display().to_string(),
        ],
    );
    let stderr = String::from_utf8_lossy(&report.stderr);
    assert_eq!(report.status.code(), Some(70), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot write {}", target.display())),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(!target.exists());
}
