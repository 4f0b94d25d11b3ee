//! What a person reads, snapshotted whole: the dry-run permission and cost report, the closing
//! report of a live repository run, and an item run's closing report and `summary.md`. Run
//! ids, temp paths, hashes, timestamps and measured durations are redacted first; everything
//! else (counts, tokens, costs, wording, layout) is compared as printed.
//!
//! Accept a deliberate change with `INSTA_UPDATE=always cargo test -p fanout-cli --test cli
//! reports::` and read the new `.snap` files before committing them.

use std::collections::BTreeMap;

use super::*;

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// Replace what differs from run to run: `tmp` (a temp directory, as given and canonical)
/// with `[TMP]`, run ids with `[RUN_ID]`, sha256 digests with `[HASH]`, timestamps with
/// `[TIMESTAMP]` and durations (`0.5s`, `120ms`, `1m 5s`) with `[DURATION]`.
fn redact(text: &str, tmp: &Path) -> String {
    let mut out = text.to_owned();
    let canonical = tmp.canonicalize().unwrap();
    for path in [canonical.as_path(), tmp] {
        out = out.replace(&path.display().to_string(), "[TMP]");
    }
    for (pattern, replacement) in [
        (r"\b\d{8}T\d{6}Z-[0-9a-f]{6}\b", "[RUN_ID]"),
        (r"sha256:[0-9a-f]{64}", "sha256:[HASH]"),
        (
            r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})",
            "[TIMESTAMP]",
        ),
        (r"\b\d+(\.\d+)?(ms|s|m|h)\b", "[DURATION]"),
    ] {
        out = regex::Regex::new(pattern)
            .unwrap()
            .replace_all(&out, replacement)
            .into_owned();
    }
    out
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn both(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A temp directory holding `repo/`, the quickstart's repository, committed.
pub(super) fn quickstart() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_dir(&examples_dir().join("quickstart/repo"), &repo);
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "initial"]);
    work
}

/// `fanout run examples/quickstart/workflow.yaml --repo REPO --sim EXTRA` from `work`.
pub(super) fn run_quickstart(work: &Path, extra: &[&str]) -> Output {
    let workflow = examples_dir().join("quickstart/workflow.yaml");
    let repo = work.join("repo");
    let (workflow, repo) = (workflow.display().to_string(), repo.display().to_string());
    let mut args = vec!["run", workflow.as_str(), "--repo", repo.as_str(), "--sim"];
    args.extend_from_slice(extra);
    fanout_in(work, &args)
}

#[test]
fn redaction_keeps_what_is_stable_and_hides_what_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let text = format!(
        "Plan saved: {}/repo/.fanout/runs/20261204T224648Z-c618f7/plan.json (sha256:{})\n\
         Wall time: 0.5s (estimated about 1m 5s); 120ms per call; started 2026-12-04T22:47:00.175Z\n\
         Tokens: 18K; cost $0.03; 36 requests; 0 ms latency\n",
        tmp.path().display(),
        "d9".repeat(32)
    );
    assert_eq!(
        redact(&text, tmp.path()),
        "Plan saved: [TMP]/repo/.fanout/runs/[RUN_ID]/plan.json (sha256:[HASH])\n\
         Wall time: [DURATION] (estimated about [DURATION] [DURATION]); [DURATION] per call; \
         started [TIMESTAMP]\n\
         Tokens: 18K; cost $0.03; 36 requests; 0 ms latency\n"
    );
}

/// `fanout run examples/quickstart/workflow.yaml --dry-run --sim`: the permission and cost
/// report, and nothing in the repository changes but fanout's own run directory.
#[test]
fn the_quickstart_dry_run_report() {
    let work = quickstart();
    let output = run_quickstart(work.path(), &["--dry-run"]);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    assert_eq!(git(&work.path().join("repo"), &["status", "--short"]), "");
    insta::assert_snapshot!(redact(&stdout(&output), work.path()));
}

/// The live `--sim` run of the quickstart: the report that closes it.
#[test]
fn the_quickstart_live_run_closing_report() {
    let work = quickstart();
    let output = run_quickstart(work.path(), &[]);
    let printed = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    // The closing report starts at `Run <id>: <status>`; the plan report above it is the dry
    // run's (snapshotted there).
    let start = printed
        .find("\nRun ")
        .unwrap_or_else(|| panic!("no closing report:\n{printed}"));
    let closing = &printed[start + 1..];
    // What it counts is what happened: nine files changed in the work tree.
    let repo = work.path().join("repo");
    let changed = git(&repo, &["status", "--short"]);
    assert_eq!(changed.lines().count(), 9, "{changed}");
    assert!(closing.contains("Files changed: 9;"), "{closing}");
    // Checkpoints coalesce when completions arrive faster than git takes one (by design, see
    // the checkpoint worker), so their number varies from run to run: it is checked against
    // the run store (every checkpoint after the base, the last one `final`) and masked in the
    // snapshot.
    let count = regex::Regex::new(r"checkpoints: (\d+)\n").unwrap();
    let printed_count: usize = count.captures(closing).unwrap()[1].parse().unwrap();
    let run_id = closing["Run ".len()..].split(':').next().unwrap();
    let repo_arg = repo.display().to_string();
    let show = fanout_in(
        work.path(),
        &["show", run_id, "--repo", repo_arg.as_str(), "--json"],
    );
    assert_eq!(show.status.code(), Some(0), "{}", both(&show));
    let shown: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    let labels: Vec<&str> = shown["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.first(), Some(&"base"), "{labels:?}");
    assert_eq!(labels.last(), Some(&"final"), "{labels:?}");
    assert_eq!(printed_count, labels.len() - 1, "{labels:?}\n{closing}");
    let closing = count.replace(closing, "checkpoints: [COUNT]\n");
    insta::assert_snapshot!(redact(&closing, work.path()));
}

/// `fanout run examples/support-tickets/workflow.yaml --sim`: the item run's closing report
/// (text) and the `summary.md` it writes.
#[test]
fn the_ticket_item_run_report_and_summary() {
    let work = tempfile::tempdir().unwrap();
    let example = examples_dir().join("support-tickets");
    for name in ["workflow.yaml", "tickets.jsonl", "schema.json"] {
        std::fs::copy(example.join(name), work.path().join(name)).unwrap();
    }
    let output = fanout_in(work.path(), &["run", "workflow.yaml", "--sim"]);
    let printed = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{}", both(&output));
    let summary_path = printed
        .lines()
        .find_map(|line| line.trim_start().strip_prefix("summary "))
        .map(|path| work.path().join(path.trim()))
        .unwrap_or_else(|| panic!("no summary line:\n{printed}"));
    let summary = std::fs::read_to_string(&summary_path).unwrap();
    // The counts both show are the results': every category row of summary.md is the number
    // of records in results.jsonl with that category.
    let results = std::fs::read_to_string(summary_path.with_file_name("results.jsonl")).unwrap();
    let mut categories: BTreeMap<String, usize> = BTreeMap::new();
    for line in results.lines() {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        *categories
            .entry(record["category"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(categories.values().sum::<usize>(), 300);
    for (category, count) in &categories {
        let row = format!("| {category} | {count} |");
        assert!(summary.contains(&row), "no {row:?} in:\n{summary}");
    }
    insta::assert_snapshot!("ticket_item_run_report", redact(&printed, work.path()));
    insta::assert_snapshot!("ticket_item_run_summary_md", redact(&summary, work.path()));
}
