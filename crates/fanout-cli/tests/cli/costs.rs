//! The bill as the reports show it: cache reads and the dollars the cache saved, checked
//! against what the simulator recorded on the wire, and dry-run estimates checked against the
//! live runs' bills.

use std::collections::BTreeMap;

use super::*;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Anthropic's default cache prices (config::price): writes at 1.25×, reads at 0.1× input.
const WRITE: f64 = 1.25;
const READ: f64 = 0.1;

/// The quickstart's default models and their input prices, dollars per million tokens.
fn input_price(model: &str) -> f64 {
    match model {
        "claude-haiku-4-5" => 1.0,
        "claude-sonnet-4-5" => 3.0,
        other => panic!("unexpected model {other}"),
    }
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// The quickstart's repository with every handler grown past the fast model's minimum
/// cacheable prefix (4,096 tokens for claude-haiku-4-5), so that an agent's later turns read
/// its earlier ones from the cache.
fn big_quickstart() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_dir(&examples().join("quickstart/repo"), &repo);
    for entry in std::fs::read_dir(repo.join("src/handlers")).unwrap() {
        let path = entry.unwrap().path();
        let mut text = std::fs::read_to_string(&path).unwrap();
        for i in 0..600 {
            text.push_str(&format!(
                "// note {i}: the handler keeps its contract with callers unchanged\n"
            ));
        }
        std::fs::write(&path, text).unwrap();
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    work
}

/// A live `--sim` run whose agents' turns are cached: `fanout show --json` reports the cache
/// reads and writes the simulator recorded for the agents' calls, and the dollars saved are
/// what the cache prices make of them.
#[test]
fn the_store_reports_the_cache_reads_the_simulator_recorded() {
    let work = big_quickstart();
    let record = work.path().join("exchanges.jsonl");
    let workflow = examples().join("quickstart/workflow.yaml");
    let scenario = examples().join("quickstart/scenario.yaml");
    let output = fanout_in(
        work.path(),
        &[
            "run",
            &workflow.display().to_string(),
            "--repo",
            "repo",
            "--sim",
            "--scenario",
            &scenario.display().to_string(),
            "--sim-record",
            &record.display().to_string(),
        ],
    );
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The agents' calls are the ones offering `report_result` (not the planning call).
    let (mut read, mut written, mut input, mut saved) = (0u64, 0u64, 0u64, 0.0f64);
    for exchange in jsonl(&record) {
        let request = &exchange["request"];
        let agent = request["tools"]
            .as_array()
            .is_some_and(|tools| tools.iter().any(|t| t["name"] == "report_result"));
        if !agent || exchange["status"] != 200 {
            continue;
        }
        let price = input_price(request["model"].as_str().unwrap());
        let r = exchange["cache_read_tokens"].as_u64().unwrap();
        let w = exchange["cache_creation_tokens"].as_u64().unwrap();
        read += r;
        written += w;
        input += exchange["input_tokens"].as_u64().unwrap();
        saved += (r as f64 * price * (1.0 - READ) + w as f64 * price * (1.0 - WRITE)) / 1e6;
    }
    assert!(read > 0, "nothing was read from the cache");
    let run_id = printed
        .lines()
        .find_map(|line| line.strip_prefix("Run "))
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_owned();
    let show = fanout_in(work.path(), &["show", &run_id, "--repo", "repo", "--json"]);
    assert_eq!(show.status.code(), Some(0));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let agents = &shown["agents"];
    assert_eq!(agents["cache_read_tokens"], read);
    assert_eq!(agents["cache_write_tokens"], written);
    assert_eq!(agents["input_tokens"], input);
    let reported = agents["cache_saved"].as_f64().unwrap();
    assert!(
        (reported - saved).abs() < 1e-9,
        "saved ${reported} reported, ${saved} by the recorded exchanges"
    );
    assert!(saved > 0.0);
    // Each attempt's row carries its share.
    let rows: u64 = shown["agent_runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["cache_read_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, read);
    // The closing report, `fanout runs` and `fanout show` say the same in words.
    let sentence = format!(
        "{read} of {input} input tokens read from the cache ({:.1}%), {written} written; saved ${saved:.4}",
        100.0 * read as f64 / input as f64
    );
    assert!(
        printed.contains(&format!("Prompt cache: {sentence}")),
        "{printed}"
    );
    let text = fanout_in(work.path(), &["show", &run_id, "--repo", "repo"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&sentence),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
    let summary = std::fs::read_to_string(
        work.path()
            .join(format!("repo/.fanout/runs/{run_id}/summary.md")),
    )
    .unwrap();
    assert!(summary.contains(&sentence), "{summary}");
    let listed = fanout_in(work.path(), &["runs", "--repo", "repo"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(&format!("${saved:.4}")), "{listed}");
    // And the HTML report.
    let report = fanout_in(work.path(), &["report", &run_id, "--repo", "repo"]);
    assert_eq!(
        report.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let html = std::fs::read_to_string(
        work.path()
            .join(format!("repo/.fanout/runs/{run_id}/report.html")),
    )
    .unwrap();
    assert!(
        html.contains(&format!("data-read=\"{read}\" data-written=\"{written}\"")),
        "no cache figures in the HTML report"
    );
}

/// Every JSON document `output` printed on stdout, in order (`--json` prints one per line or
/// one pretty document per report).
fn json_documents(output: &Output) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    serde_json::Deserializer::from_str(&text)
        .into_iter::<serde_json::Value>()
        .map(Result::unwrap)
        .collect()
}

/// `estimated` is within ±20 % of `billed`.
fn assert_within_a_fifth(what: &str, estimated: f64, billed: f64) {
    assert!(billed > 0.0, "{what}: nothing billed");
    let off = estimated / billed - 1.0;
    assert!(
        off.abs() <= 0.20,
        "{what}: estimated ${estimated:.4}, billed ${billed:.4} ({:+.1}%)",
        100.0 * off
    );
}

/// The quickstart (with its scenario) on a fresh repository: the dry run's dollar estimate
/// is within ±20 % of what the live run reports for its agents. Both with handlers too small
/// to cache and with handlers large enough that every agent's later turns are cache reads.
#[test]
fn the_quickstart_estimate_is_within_a_fifth_of_the_bill() {
    let workflow = examples()
        .join("quickstart/workflow.yaml")
        .display()
        .to_string();
    let scenario = examples()
        .join("quickstart/scenario.yaml")
        .display()
        .to_string();
    for (what, work) in [
        ("quickstart", super::reports::quickstart()),
        ("quickstart, cached", big_quickstart()),
    ] {
        let args = |extra: &'static str| {
            let mut args = vec![
                "run",
                workflow.as_str(),
                "--repo",
                "repo",
                "--sim",
                "--scenario",
                scenario.as_str(),
                "--json",
            ];
            if !extra.is_empty() {
                args.push(extra);
            }
            args
        };
        let dry = fanout_in(work.path(), &args("--dry-run"));
        assert_eq!(dry.status.code(), Some(0), "{what}");
        let report = json_documents(&dry).remove(0);
        let estimated = report["estimate"]["dollars"].as_f64().unwrap();
        let basis = report["estimate"]["basis"].to_string();
        assert!(basis.contains("modelled"), "{what}: {basis}");
        let live = fanout_in(work.path(), &args(""));
        assert_eq!(
            live.status.code(),
            Some(0),
            "{what}: {}",
            String::from_utf8_lossy(&live.stderr)
        );
        let last = json_documents(&live).pop().unwrap();
        let outcome = &last["outcome"];
        let billed = outcome["dollars"].as_f64().unwrap();
        assert_within_a_fifth(what, estimated, billed);
        if what.ends_with("cached") {
            assert!(outcome["cache_read_tokens"].as_u64().unwrap() > 0);
        }
    }
}

/// `examples/auth-refactor` (the seed's workflow) with plain `--sim`, the simulator planning
/// and acting by itself: the dry run's estimate is within ±20 % of what running that reviewed
/// plan bills. (Its `scenario.yaml` scripts agents that edit without reading, which no estimate
/// can see; it is for the seed's report, not for the bill.)
#[test]
fn the_seed_workflow_estimate_is_within_a_fifth_of_the_bill() {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_dir(&examples().join("auth-refactor/repo"), &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    let workflow = examples()
        .join("auth-refactor/claude-workflows.yaml")
        .display()
        .to_string();
    let task =
        "Refactor src/auth: extract JWT logic, validate every handler's input, add unit tests.";
    let dry = fanout_in(
        work.path(),
        &[
            "run",
            &workflow,
            "--repo",
            "repo",
            "--sim",
            "--task",
            task,
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report = json_documents(&dry).remove(0);
    let estimated = report["estimate"]["dollars"].as_f64().unwrap();
    let plan = report["saved"]["path"].as_str().unwrap().to_owned();
    let live = fanout_in(
        work.path(),
        &[
            "run", &workflow, "--repo", "repo", "--sim", "--plan", &plan, "--json",
        ],
    );
    assert_eq!(
        live.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let last = json_documents(&live).pop().unwrap();
    let billed = last["outcome"]["dollars"].as_f64().unwrap();
    assert_within_a_fifth("auth-refactor", estimated, billed);
}

/// A cached run killed while an attempt has paid calls on record, then resumed: every
/// attempt's cache figures in the store equal its paid calls' (`model_call` events),
/// interrupted attempts included, so what an interrupted attempt read or wrote is not lost
/// from the bill.
#[test]
fn a_killed_cached_run_keeps_its_cache_figures_when_resumed() {
    let work = big_quickstart();
    let repo = work.path().join("repo");
    let workflow = examples()
        .join("quickstart/workflow.yaml")
        .display()
        .to_string();
    let scenario = examples()
        .join("quickstart/scenario.yaml")
        .display()
        .to_string();
    let mut first = spawn_in(
        work.path(),
        &[
            "run",
            &workflow,
            "--repo",
            "repo",
            "--scenario",
            &scenario,
            "--sim-latency-ms",
            "300",
        ],
    );
    // Kill once an attempt that has not ended has a paid call on record.
    let paid_and_open = || -> Option<fanout_core::plan::RunId> {
        let reader = fanout_core::store::StoreReader::open_in_repo(&repo).ok()?;
        let run = reader.runs().ok()?.into_iter().next()?.run.run_id;
        let open: Vec<(String, u64)> = reader
            .agent_runs(&run)
            .ok()?
            .into_iter()
            .filter(|row| row.status.is_none())
            .map(|row| (row.agent_id.to_string(), u64::from(row.attempt)))
            .collect();
        let hit = reader.events(&run).ok()?.into_iter().any(|event| {
            event.kind == "model_call"
                && event.agent_id.as_ref().is_some_and(|agent| {
                    open.contains(&(
                        agent.to_string(),
                        event.payload["attempt"].as_u64().unwrap_or(0),
                    ))
                })
        });
        hit.then_some(run)
    };
    wait_for("an open attempt with a paid call", || {
        paid_and_open().is_some()
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let run_id = fanout_core::store::StoreReader::open_in_repo(&repo)
        .unwrap()
        .runs()
        .unwrap()[0]
        .run
        .run_id
        .clone();

    let resumed = fanout_in(
        work.path(),
        &[
            "resume",
            run_id.as_str(),
            "--repo",
            "repo",
            "--scenario",
            &scenario,
        ],
    );
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let mut paid: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for event in reader.events(&run_id).unwrap() {
        if event.kind != "model_call" {
            continue;
        }
        let key = (
            event.agent_id.unwrap().to_string(),
            event.payload["attempt"].as_u64().unwrap(),
        );
        let entry = paid.entry(key).or_default();
        entry.0 += event.payload["cache_read_tokens"].as_u64().unwrap();
        entry.1 += event.payload["cache_write_tokens"].as_u64().unwrap();
    }
    let rows = reader.agent_runs(&run_id).unwrap();
    let interrupted: Vec<_> = rows
        .iter()
        .filter(|row| {
            row.error
                .as_deref()
                .is_some_and(|e| e.starts_with("interrupted"))
        })
        .collect();
    assert!(!interrupted.is_empty(), "the kill interrupted no attempt");
    assert!(
        rows.iter().any(|row| row.cache_read_tokens > 0),
        "the run read nothing from the cache"
    );
    for row in &rows {
        let key = (row.agent_id.to_string(), u64::from(row.attempt));
        let (read, written) = paid.get(&key).copied().unwrap_or_default();
        assert_eq!(
            (row.cache_read_tokens, row.cache_write_tokens),
            (read, written),
            "{key:?}"
        );
    }
}

/// The support tickets with a long triage guide in the worker instructions: the guide is the
/// prefix every chunk shares, written to the cache once and read by the other chunks. The
/// run's cache figures equal the simulator's recorded exchanges, and the same job with
/// `prompt_caching: false` costs more for the same tokens.
#[test]
fn a_cached_item_run_reads_its_shared_prefix_and_bills_less() {
    let mut bills = Vec::new();
    for caching in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let example = examples().join("support-tickets");
        for name in ["tickets.jsonl", "schema.json"] {
            std::fs::copy(example.join(name), work.path().join(name)).unwrap();
        }
        let guide: String = (0..400)
            .map(|i| {
                format!(
                    "        Guide {i}: a ticket about a charge names the invoice; a login ticket names the account.\n"
                )
            })
            .collect();
        let mut text = std::fs::read_to_string(example.join("workflow.yaml"))
            .unwrap()
            .replacen(
                "        You triage customer support tickets",
                &format!("{guide}        You triage customer support tickets"),
                1,
            );
        if !caching {
            text = text.replacen("workflow:\n", "workflow:\n  prompt_caching: false\n", 1);
        }
        std::fs::write(work.path().join("workflow.yaml"), text).unwrap();
        let record = work.path().join("exchanges.jsonl");
        let output = fanout_in(
            work.path(),
            &[
                "run",
                "workflow.yaml",
                "--sim",
                "--json",
                "--sim-record",
                &record.display().to_string(),
            ],
        );
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report = json_documents(&output).pop().unwrap();
        let (mut read, mut written, mut input) = (0, 0, 0);
        for exchange in jsonl(&record) {
            read += exchange["cache_read_tokens"].as_u64().unwrap();
            written += exchange["cache_creation_tokens"].as_u64().unwrap();
            // Every input token, cached or not.
            input += exchange["input_tokens"].as_u64().unwrap();
        }
        assert_eq!(report["cache_read_tokens"].as_u64().unwrap(), read);
        assert_eq!(report["cache_write_tokens"].as_u64().unwrap(), written);
        if caching {
            assert!(read > 0, "the shared guide was never read from the cache");
            assert!(
                written > 0 && written < read,
                "written {written}, read {read}"
            );
        } else {
            assert_eq!((read, written), (0, 0));
        }
        bills.push((report["cost_usd"].as_f64().unwrap(), input));
    }
    let (cached, plain) = (bills[0], bills[1]);
    assert_eq!(cached.1, plain.1, "the same tokens either way");
    assert!(
        cached.0 < plain.0 * 0.8,
        "cached ${} vs plain ${}",
        cached.0,
        plain.0
    );
}

/// `examples/support-tickets`: the dry run's estimate (the workers online and the synthesis)
/// is within ±20 % of the item run's bill.
#[test]
fn the_ticket_estimate_is_within_a_fifth_of_the_bill() {
    let work = tempfile::tempdir().unwrap();
    let example = examples().join("support-tickets");
    for name in ["workflow.yaml", "tickets.jsonl", "schema.json"] {
        std::fs::copy(example.join(name), work.path().join(name)).unwrap();
    }
    let dry = fanout_in(
        work.path(),
        &["run", "workflow.yaml", "--sim", "--dry-run", "--json"],
    );
    assert_eq!(dry.status.code(), Some(0));
    let plan = json_documents(&dry).remove(0);
    let estimated = plan["estimate"]["dollars"].as_f64().unwrap();
    assert!(plan["estimate"]["synthesis_dollars"].as_f64().unwrap() > 0.0);
    let live = fanout_in(work.path(), &["run", "workflow.yaml", "--sim", "--json"]);
    assert_eq!(
        live.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&live.stderr)
    );
    let report = json_documents(&live).pop().unwrap();
    let billed = report["cost_usd"].as_f64().unwrap();
    assert_within_a_fifth("support-tickets", estimated, billed);
    // summary.json carries the same bill, the synthesis included.
    let dir = work.path().join(report["output_dir"].as_str().unwrap());
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["usage"]["cost_usd"].as_f64(), Some(billed));
    assert_eq!(summary["usage"]["input_tokens"], report["input_tokens"]);
    assert_eq!(
        summary["usage"]["cache_read_tokens"],
        report["cache_read_tokens"]
    );
}
