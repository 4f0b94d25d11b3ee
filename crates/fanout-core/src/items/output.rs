//! Writing a job's outputs under the run directory: `results.jsonl` (or `results.csv`),
//! `failed.jsonl` with reasons, and the summary as `summary.json` and `summary.md`.
//!
//! Every file is written to a temporary file in the same directory, synced, and renamed into
//! place, so a reader (or a crash) never sees a half-written file. Results keep input order.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::aggregate::count_by;
use super::worker::{Accounting, FailureKind};
pub use crate::config::item_output::ResultsFormat;

/// What to write.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OutputOptions {
    pub format: ResultsFormat,
    /// CSV columns in order (e.g. [`super::worker::OutputSchema::property_names`]); when empty,
    /// `id` and then every other key seen, sorted.
    pub columns: Vec<String>,
    /// Fields to count results by in the summary (e.g. `category`).
    pub count_by: Vec<String>,
    /// The job's name, for the Markdown title.
    pub title: Option<String>,
}

/// How the job ended, which the exit code reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Completion {
    /// Every item has a result.
    Complete,
    /// Some items failed.
    Partial,
    /// No item has a result (and there was at least one item).
    Failed,
}

impl Completion {
    pub fn of(results: usize, failures: usize) -> Completion {
        match (results, failures) {
            (_, 0) => Completion::Complete,
            (0, _) => Completion::Failed,
            _ => Completion::Partial,
        }
    }
}

/// The summary, as written to `summary.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub status: Completion,
    pub items: usize,
    pub succeeded: usize,
    pub failed: usize,
    /// Failures by kind.
    pub failures_by_kind: Vec<(FailureKind, usize)>,
    /// For each count-by field: `(value, count)`, most frequent first.
    pub counts: Vec<(String, Vec<(String, u64)>)>,
    /// What the run's calls used and cost, once the run has ended (the summary is first
    /// written without it, before the synthesis call).
    #[serde(default)]
    pub usage: Option<SummaryUsage>,
}

/// Tokens and dollars of a run's calls (workers and synthesis, every attempt).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SummaryUsage {
    /// Every input token, cached or not.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Of `input_tokens`, those read from and written to the prompt cache.
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    pub cost_usd: f64,
    /// Dollars the prompt cache saved (cost at the full input price minus `cost_usd`).
    pub cache_saved_usd: f64,
}

impl Summary {
    pub fn of(accounting: &Accounting, count_fields: &[String]) -> Summary {
        let succeeded = accounting.results.len();
        let failed = accounting.failures.len();
        let mut by_kind: Vec<(FailureKind, usize)> = Vec::new();
        for failure in &accounting.failures {
            match by_kind.iter_mut().find(|(kind, _)| *kind == failure.kind) {
                Some((_, count)) => *count += 1,
                None => by_kind.push((failure.kind, 1)),
            }
        }
        by_kind.sort();
        let counts = count_fields
            .iter()
            .map(|field| {
                (
                    field.clone(),
                    count_by(accounting.results.iter().map(|(_, record)| record), field),
                )
            })
            .collect();
        Summary {
            status: Completion::of(succeeded, failed),
            items: succeeded + failed,
            succeeded,
            failed,
            failures_by_kind: by_kind,
            counts,
            usage: None,
        }
    }

    /// `summary.json`'s content.
    pub fn to_json(&self) -> Value {
        json!({
            "status": self.status,
            "items": self.items,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "failures_by_kind": self.failures_by_kind.iter()
                .map(|(kind, n)| (kind.to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "counts": self.counts.iter()
                .map(|(field, counts)| (
                    field.clone(),
                    Value::Array(counts.iter().map(|(value, n)| json!({"value": value, "count": n})).collect()),
                ))
                .collect::<serde_json::Map<_, _>>(),
            "usage": self.usage,
        })
    }

    /// `summary.md`'s content.
    pub fn to_markdown(&self, title: Option<&str>) -> String {
        let mut out = format!("# {}\n\n", title.unwrap_or("Item results"));
        let status = match self.status {
            Completion::Complete => "complete",
            Completion::Partial => "partial",
            Completion::Failed => "failed",
        };
        out.push_str(&format!(
            "Status: **{status}**. {} items: {} succeeded, {} failed.\n",
            self.items, self.succeeded, self.failed
        ));
        if !self.failures_by_kind.is_empty() {
            out.push_str("\n## Failures\n\n| reason | items |\n|---|---:|\n");
            for (kind, count) in &self.failures_by_kind {
                out.push_str(&format!("| {kind} | {count} |\n"));
            }
            out.push_str("\nEach failed item is in `failed.jsonl` with its reason.\n");
        }
        for (field, counts) in &self.counts {
            out.push_str(&format!(
                "\n## By {field}\n\n| {field} | items | share |\n|---|---:|---:|\n"
            ));
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            for (value, count) in counts {
                let share = if total == 0 {
                    0.0
                } else {
                    *count as f64 * 100.0 / total as f64
                };
                out.push_str(&format!(
                    "| {} | {count} | {share:.1}% |\n",
                    value.replace('|', "\\|")
                ));
            }
        }
        if let Some(usage) = &self.usage {
            out.push_str(&format!(
                "\n## Cost\n\n- {} input tokens, {} output tokens: ${:.4}\n- prompt cache: {}\n",
                usage.input_tokens,
                usage.output_tokens,
                usage.cost_usd,
                crate::store::cache_sentence(
                    usage.cache_read_tokens,
                    usage.cache_write_tokens,
                    usage.input_tokens,
                    usage.cache_saved_usd,
                ),
            ));
        }
        out
    }
}

/// Write `summary.json` and `summary.md` again (with the run's usage, once it has ended).
pub fn rewrite_summary(
    paths: &OutputPaths,
    summary: &Summary,
    title: Option<&str>,
) -> Result<(), OutputError> {
    let mut summary_json =
        serde_json::to_string_pretty(&summary.to_json()).map_err(|error| OutputError::Encode {
            path: paths.summary_json.clone(),
            message: error.to_string(),
        })?;
    summary_json.push('\n');
    let markdown = summary.to_markdown(title);
    write_atomic_all(&[
        (&paths.summary_json, summary_json.as_bytes()),
        (&paths.summary_markdown, markdown.as_bytes()),
    ])?;
    Ok(())
}

/// Where the files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputPaths {
    pub results: PathBuf,
    pub failed: PathBuf,
    pub summary_json: PathBuf,
    pub summary_markdown: PathBuf,
}

/// Why outputs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode {}: {message}", path.display())]
    Encode { path: PathBuf, message: String },
}

/// Write all outputs under `dir` (created if needed) and return the summary.
pub fn write_outputs(
    dir: &Path,
    accounting: &Accounting,
    options: &OutputOptions,
) -> Result<(OutputPaths, Summary), OutputError> {
    fs::create_dir_all(dir).map_err(|source| OutputError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let paths = OutputPaths {
        results: dir.join(match options.format {
            ResultsFormat::Jsonl => "results.jsonl",
            ResultsFormat::Csv => "results.csv",
        }),
        failed: dir.join("failed.jsonl"),
        summary_json: dir.join("summary.json"),
        summary_markdown: dir.join("summary.md"),
    };
    let results = match options.format {
        ResultsFormat::Jsonl => jsonl(accounting.results.iter().map(|(_, record)| record)),
        ResultsFormat::Csv => {
            csv_text(accounting, &options.columns).map_err(|message| OutputError::Encode {
                path: paths.results.clone(),
                message,
            })?
        }
    };
    let failed: Vec<Value> = accounting
        .failures
        .iter()
        .map(|failure| {
            json!({
                "id": failure.id,
                "reason": failure.kind,
                "message": failure.reason,
                "attempts": failure.attempts,
                "input": failure.input,
            })
        })
        .collect();
    let failed = jsonl(failed.iter());
    let summary = Summary::of(accounting, &options.count_by);
    let mut summary_json =
        serde_json::to_string_pretty(&summary.to_json()).map_err(|error| OutputError::Encode {
            path: paths.summary_json.clone(),
            message: error.to_string(),
        })?;
    summary_json.push('\n');
    let markdown = summary.to_markdown(options.title.as_deref());
    write_atomic_all(&[
        (&paths.results, results.as_bytes()),
        (&paths.failed, failed.as_bytes()),
        (&paths.summary_json, summary_json.as_bytes()),
        (&paths.summary_markdown, markdown.as_bytes()),
    ])?;
    Ok((paths, summary))
}

fn jsonl<'a>(values: impl Iterator<Item = &'a Value>) -> String {
    let mut out = Vec::new();
    for value in values {
        // Writing JSON to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, value);
        out.push(b'\n');
    }
    // serde_json writes UTF-8.
    String::from_utf8(out).unwrap_or_default()
}

fn csv_text(accounting: &Accounting, columns: &[String]) -> Result<String, String> {
    let columns: Vec<String> = if columns.is_empty() {
        let mut keys = std::collections::BTreeSet::new();
        for (_, record) in &accounting.results {
            if let Some(object) = record.as_object() {
                keys.extend(object.keys().filter(|k| *k != "id").cloned());
            }
        }
        std::iter::once("id".to_owned()).chain(keys).collect()
    } else {
        columns.to_vec()
    };
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer
        .write_record(&columns)
        .map_err(|error| error.to_string())?;
    for (_, record) in &accounting.results {
        let row: Vec<String> = columns
            .iter()
            .map(|column| match record.get(column) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(other) => other.to_string(),
            })
            .collect();
        writer
            .write_record(&row)
            .map_err(|error| error.to_string())?;
    }
    let bytes = writer.into_inner().map_err(|error| error.to_string())?;
    String::from_utf8(bytes).map_err(|error| error.to_string())
}

/// [`crate::layout::write_atomic_all`], its failure as an [`OutputError`].
pub fn write_atomic_all(files: &[(&Path, &[u8])]) -> Result<(), OutputError> {
    crate::layout::write_atomic_all(files).map_err(|error| OutputError::Io {
        path: error.path,
        source: error.io,
    })
}

/// [`crate::layout::write_atomic`], its failure as an [`OutputError`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), OutputError> {
    write_atomic_all(&[(path, bytes)])
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::items::worker::FailedItem;

    fn accounting() -> Accounting {
        Accounting {
            results: vec![
                (
                    "1".into(),
                    json!({"id": "1", "category": "billing", "product": "Pay, Plus"}),
                ),
                (
                    "2".into(),
                    json!({"id": "2", "category": "login", "product": null}),
                ),
                (
                    "3".into(),
                    json!({"id": "3", "category": "billing", "product": "Pay"}),
                ),
            ],
            failures: vec![FailedItem {
                id: "4".into(),
                kind: FailureKind::Missing,
                reason: "no record for this id in 2 answer(s)".into(),
                attempts: 2,
                input: json!({"subject": "help"}),
            }],
        }
    }

    #[test]
    fn writes_results_failures_and_summary() {
        let dir = tempfile::tempdir().unwrap();
        let options = OutputOptions {
            count_by: vec!["category".into()],
            title: Some("Support tickets".into()),
            ..OutputOptions::default()
        };
        let (paths, summary) = write_outputs(dir.path(), &accounting(), &options).unwrap();
        let results = fs::read_to_string(&paths.results).unwrap();
        let ids: Vec<String> = results
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, ["1", "2", "3"]);
        let failed: Value =
            serde_json::from_str(fs::read_to_string(&paths.failed).unwrap().trim()).unwrap();
        assert_eq!(
            failed,
            json!({"id": "4", "reason": "missing", "message": "no record for this id in 2 answer(s)", "attempts": 2, "input": {"subject": "help"}})
        );
        assert_eq!(summary.status, Completion::Partial);
        let json: Value =
            serde_json::from_str(&fs::read_to_string(&paths.summary_json).unwrap()).unwrap();
        assert_eq!(json["items"], 4);
        assert_eq!(json["failed"], 1);
        assert_eq!(json["failures_by_kind"], json!({"missing": 1}));
        assert_eq!(
            json["counts"]["category"],
            json!([{"value": "billing", "count": 2}, {"value": "login", "count": 1}])
        );
        let markdown = fs::read_to_string(&paths.summary_markdown).unwrap();
        assert!(
            markdown.starts_with(
                "# Support tickets\n\nStatus: **partial**. 4 items: 3 succeeded, 1 failed."
            ),
            "{markdown}"
        );
        assert!(markdown.contains("| billing | 2 | 66.7% |"), "{markdown}");
        assert!(markdown.contains("| missing | 1 |"), "{markdown}");
        // No temporary files left behind.
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn csv_results_quote_and_order_columns() {
        let dir = tempfile::tempdir().unwrap();
        let options = OutputOptions {
            format: ResultsFormat::Csv,
            columns: vec!["id".into(), "category".into(), "product".into()],
            ..OutputOptions::default()
        };
        let (paths, _) = write_outputs(dir.path(), &accounting(), &options).unwrap();
        assert!(paths.results.ends_with("results.csv"));
        assert_eq!(
            fs::read_to_string(&paths.results).unwrap(),
            "id,category,product\n1,billing,\"Pay, Plus\"\n2,login,\n3,billing,Pay\n"
        );
    }

    #[test]
    fn completion_and_atomic_overwrite() {
        assert_eq!(Completion::of(3, 0), Completion::Complete);
        assert_eq!(Completion::of(0, 0), Completion::Complete);
        assert_eq!(Completion::of(0, 2), Completion::Failed);
        assert_eq!(Completion::of(1, 2), Completion::Partial);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        write_atomic(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        let missing = write_atomic(&dir.path().join("no/such/dir/x"), b"x");
        assert!(matches!(missing, Err(OutputError::Io { .. })));
    }
}
