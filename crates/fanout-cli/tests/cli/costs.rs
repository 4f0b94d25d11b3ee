//! The bill as the reports show it: cache reads and the dollars the cache saved, checked
//! against what the simulator recorded on the wire, and dry-run estimates checked against the
//! live runs' bills.

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
