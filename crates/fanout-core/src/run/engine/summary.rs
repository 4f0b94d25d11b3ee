//! What a finished run leaves for people: `.fanout/runs/<run_id>/summary.json` and
//! `summary.md`, the error line of its `runs` row, and the sentence that counts its agents.

use std::path::{Path, PathBuf};

use super::RunOutcome;

/// "3 succeeded, 1 rolled back, 1 not run (of 5)": the agents of an outcome, each counted once.
pub fn agents_text(outcome: &RunOutcome) -> String {
    let counts = [
        outcome.succeeded,
        outcome.failed,
        outcome.rolled_back,
        outcome.interrupted,
        outcome.not_run,
    ]
    .map(|n| n as u64);
    let mut text =
        crate::store::agents_sentence(counts, "interrupted", outcome.agents_planned as u64);
    if outcome.escalated > 0 {
        text.push_str(&format!("; {} escalated to default", outcome.escalated));
    }
    text
}

/// The prompt cache's part of an outcome's bill ([`crate::store::cache_sentence`]).
pub fn cache_text(outcome: &RunOutcome) -> String {
    crate::store::cache_sentence(
        outcome.cache_read_tokens,
        outcome.cache_write_tokens,
        outcome.input_tokens,
        outcome.cache_saved,
    )
}

pub(super) fn summary_error(outcome: &RunOutcome) -> String {
    let mut parts = Vec::new();
    if outcome.failed > 0 {
        parts.push(format!("{} agent(s) failed", outcome.failed));
    }
    if outcome.rolled_back > 0 {
        parts.push(format!("{} agent(s) rolled back", outcome.rolled_back));
    }
    if outcome.interrupted > 0 {
        parts.push(format!("{} agent(s) interrupted", outcome.interrupted));
    }
    if let Some(test) = outcome.test.as_ref().filter(|test| !test.passed) {
        parts.push(format!("tests `{}` failed", test.command));
    }
    if outcome.not_run > 0 {
        parts.push(format!("{} agent(s) not run", outcome.not_run));
    }
    if !outcome.out_of_scope.is_empty() {
        parts.push(format!(
            "{} file(s) changed outside every scope",
            outcome.out_of_scope.len()
        ));
    }
    parts.join("; ")
}

/// `.fanout/runs/<run_id>/summary.json` and `summary.md`; `None` if they cannot be written.
pub(super) fn write_summary(repo: &Path, outcome: &RunOutcome) -> Result<PathBuf, String> {
    let dir = crate::layout::run_dir(repo, &outcome.run_id);
    crate::layout::ensure_dir(repo, &dir).map_err(|error| error.to_string())?;
    let json = serde_json::to_vec_pretty(outcome).map_err(|error| error.to_string())?;
    let mut md = format!(
        "# Run {}\n\nStatus: {}\n\n- agents: {}\n- attempts: {}; tool calls: {}; denied requests: {}\n- tokens (agents, all attempts): {} default, {} fast\n- dollars (agents, all attempts): {:.4}\n- prompt cache: {}\n- files changed: {}\n",
        outcome.run_id,
        outcome.status.as_str(),
        agents_text(outcome),
        outcome.attempts,
        outcome.tool_calls,
        outcome.denials,
        outcome.tokens_default,
        outcome.tokens_fast,
        outcome.dollars,
        cache_text(outcome),
        outcome.files_changed,
    );
    if !outcome.out_of_scope.is_empty() {
        md.push_str(&format!(
            "\n## Red flags: changed outside every scope\n\n{}\n",
            outcome
                .out_of_scope
                .iter()
                .map(|p| format!("- {p}"))
                .collect::<Vec<_>>()
                .join("\n")
        ));
    }
    if let Some(test) = &outcome.test {
        md.push_str(&format!(
            "\n## Tests\n\n`{}`: {}\n",
            test.command,
            test.verdict()
        ));
        if !test.passed {
            md.push_str(&format!(
                "\nThe end of its output:\n\n```\n{}\n```\n",
                last_lines(&test.output, 40).trim_end()
            ));
        }
        if let Some(base) = test.baseline.as_ref().filter(|base| !base.passed) {
            md.push_str(&format!(
                "\nOn the base commit ({}):\n\n```\n{}\n```\n",
                base.exit.describe(),
                last_lines(&base.output, 20).trim_end()
            ));
        }
    }
    if let Some(text) = &outcome.synthesis {
        md.push_str(&format!("\n## Summary\n\n{text}\n"));
    }
    let path = dir.join("summary.md");
    // Both files whole and durable, or the old ones (the shared atomic write syncs).
    crate::layout::write_atomic_all(&[(&dir.join("summary.json"), &json), (&path, md.as_bytes())])
        .map_err(|error| error.to_string())?;
    Ok(path)
}

/// The last `n` lines of `text`.
fn last_lines(text: &str, n: usize) -> &str {
    let mut start = text.len();
    for _ in 0..=n {
        match text[..start].rfind('\n') {
            Some(at) => start = at,
            None => return text,
        }
    }
    &text[start + 1..]
}
