//! Aggregating item results: built-in reductions and tree-shaped synthesis.
//!
//! Built-ins work on records (JSON objects) and are pure: [`flatten`] a list field,
//! [`dedupe_by`] a key, [`count_by`] and [`group_by`] a field. A field is a top-level name or a
//! dotted path (`customer.plan`).
//!
//! Synthesis asks a model to summarise the results. When they do not fit one call,
//! [`split_under_budget`] cuts them into batches under a token budget and [`tree_reduce`]
//! summarises each batch, then the summaries, level by level, until one text remains. The call
//! itself is a closure, so the engine passes its fleet (with the governor and budgets) and
//! tests pass the simulator or a plain function; [`synthesis_request`] builds the request.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::ops::Range;

use serde_json::Value;

use super::chunk::estimate_tokens;
use crate::provider::{Message, Request};

/// The value at a dotted path (`a.b`), if any.
pub fn field<'a>(record: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.')
        .try_fold(record, |value, key| value.get(key))
        .filter(|value| !value.is_null())
}

/// The text a field value is counted and grouped under: strings as they are, other values
/// as compact JSON, and absent or null as [`NONE_KEY`].
pub fn key_text(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => NONE_KEY.to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// The key of records with no value for the field.
pub const NONE_KEY: &str = "(none)";

/// The elements of the list in `path` of every record, in order (a non-list value counts as
/// a list of one; absent and null contribute nothing).
pub fn flatten<'a>(records: impl IntoIterator<Item = &'a Value>, path: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for record in records {
        match field(record, path) {
            Some(Value::Array(list)) => out.extend(list.iter().cloned()),
            Some(other) => out.push(other.clone()),
            None => {}
        }
    }
    out
}

/// Records kept after removing later records whose `path` value was already seen, and how
/// many were removed. Records without a value are all kept.
pub fn dedupe_by<'a>(
    records: impl IntoIterator<Item = &'a Value>,
    path: &str,
) -> (Vec<Value>, usize) {
    let mut seen = HashSet::new();
    let mut kept = Vec::new();
    let mut removed = 0;
    for record in records {
        match field(record, path) {
            Some(value) if !seen.insert(key_text(Some(value))) => removed += 1,
            _ => kept.push(record.clone()),
        }
    }
    (kept, removed)
}

/// How many records have each value of `path`, most frequent first (ties by value). A list
/// value counts each of its elements (tags); absent or null counts as [`NONE_KEY`].
pub fn count_by<'a>(
    records: impl IntoIterator<Item = &'a Value>,
    path: &str,
) -> Vec<(String, u64)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for record in records {
        match field(record, path) {
            Some(Value::Array(list)) => {
                for element in list {
                    *counts.entry(key_text(Some(element))).or_default() += 1;
                }
            }
            value => *counts.entry(key_text(value)).or_default() += 1,
        }
    }
    let mut counts: Vec<(String, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
}

/// Records by their value of `path` (keys sorted; absent or null under [`NONE_KEY`]).
pub fn group_by<'a>(
    records: impl IntoIterator<Item = &'a Value>,
    path: &str,
) -> BTreeMap<String, Vec<Value>> {
    let mut groups: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for record in records {
        groups
            .entry(key_text(field(record, path)))
            .or_default()
            .push(record.clone());
    }
    groups
}

// ---------------------------------------------------------------------------------------------
// Synthesis

/// Consecutive ranges of `parts` whose estimated tokens stay within `budget` (a part larger
/// than the budget on its own gets a range of its own).
pub fn split_under_budget(parts: &[String], budget: u64) -> Vec<Range<usize>> {
    let mut ranges = Vec::new();
    let mut start = 0;
    let mut used = 0u64;
    for (index, part) in parts.iter().enumerate() {
        let tokens = estimate_tokens(part.len());
        if index > start && used + tokens > budget {
            ranges.push(start..index);
            start = index;
            used = 0;
        }
        used += tokens;
    }
    if start < parts.len() {
        ranges.push(start..parts.len());
    }
    ranges
}

/// Why a synthesis could not finish.
#[derive(Debug, thiserror::Error)]
pub enum SynthesisError<E> {
    #[error("nothing to synthesise")]
    Empty,
    #[error(
        "synthesis cannot shrink further: at level {level} no two parts fit together in the budget of {budget} tokens"
    )]
    CannotReduce { level: u32, budget: u64 },
    #[error("synthesis call failed at level {level}: {source}")]
    Call { level: u32, source: E },
}

/// One call of a tree reduction: its level (0 reads results, higher levels read summaries)
/// and the parts it must combine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthesisStep {
    pub level: u32,
    pub parts: Vec<String>,
}

/// Reduce `parts` to one text: while they do not fit `budget` in one call, summarise each
/// batch ([`split_under_budget`]) with `call`, then reduce the summaries. The last call sees
/// everything that is left. Calls of one level run one after another, in order; `call`
/// itself may take its time (it goes through the engine's fleet).
pub async fn tree_reduce<E, F, Fut>(
    parts: Vec<String>,
    budget: u64,
    mut call: F,
) -> Result<String, SynthesisError<E>>
where
    F: FnMut(SynthesisStep) -> Fut,
    Fut: Future<Output = Result<String, E>>,
{
    if parts.is_empty() {
        return Err(SynthesisError::Empty);
    }
    let mut level = 0;
    let mut parts = parts;
    loop {
        let ranges = split_under_budget(&parts, budget);
        if ranges.len() <= 1 {
            return call(SynthesisStep { level, parts })
                .await
                .map_err(|source| SynthesisError::Call { level, source });
        }
        if ranges.len() == parts.len() {
            // Every part is alone in its batch: summarising would not reduce the count.
            return Err(SynthesisError::CannotReduce { level, budget });
        }
        let mut next = Vec::with_capacity(ranges.len());
        for range in ranges {
            let batch = parts[range].to_vec();
            if batch.len() == 1 {
                // Nothing to combine: carry it up unchanged.
                next.extend(batch);
                continue;
            }
            let summary = call(SynthesisStep {
                level,
                parts: batch,
            })
            .await
            .map_err(|source| SynthesisError::Call { level, source })?;
            next.push(summary);
        }
        parts = next;
        level += 1;
    }
}

/// The request of one synthesis step: the instructions, then each part in a numbered
/// `<part>` element. Level 0 parts are results; higher levels are earlier summaries.
pub fn synthesis_request(
    model: &str,
    max_tokens: u32,
    instructions: &str,
    step: &SynthesisStep,
) -> Request {
    let mut text = String::new();
    text.push_str(instructions);
    text.push_str(if step.level == 0 {
        "\n\nThe results to synthesise:\n\n"
    } else {
        "\n\nThese are summaries of parts of the results; combine them into one:\n\n"
    });
    for (index, part) in step.parts.iter().enumerate() {
        text.push_str(&format!("<part n=\"{}\">\n{part}\n</part>\n", index + 1));
    }
    let mut request = Request::new(model, max_tokens);
    request.messages.push(Message::user(text));
    request
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn records() -> Vec<Value> {
        vec![
            json!({"id": "1", "category": "billing", "tags": ["refund", "card"], "customer": {"plan": "pro"}}),
            json!({"id": "2", "category": "login", "tags": ["sso"], "customer": {"plan": "free"}}),
            json!({"id": "3", "category": "billing", "tags": [], "customer": {"plan": "pro"}}),
            json!({"id": "4", "category": null, "tags": "refund"}),
        ]
    }

    #[test]
    fn built_ins() {
        let records = records();
        assert_eq!(
            flatten(&records, "tags"),
            [
                json!("refund"),
                json!("card"),
                json!("sso"),
                json!("refund")
            ]
        );
        assert_eq!(
            count_by(&records, "category"),
            [
                ("billing".to_owned(), 2),
                ("(none)".to_owned(), 1),
                ("login".to_owned(), 1)
            ]
        );
        assert_eq!(
            count_by(&records, "tags"),
            [
                ("refund".to_owned(), 2),
                ("card".to_owned(), 1),
                ("sso".to_owned(), 1)
            ]
        );
        let groups = group_by(&records, "customer.plan");
        let shape: Vec<(&str, usize)> = groups.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(shape, [("(none)", 1), ("free", 1), ("pro", 2)]);
        let (kept, removed) = dedupe_by(&records, "customer.plan");
        let ids: Vec<&str> = kept.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!((ids, removed), (vec!["1", "2", "4"], 1));
    }

    #[test]
    fn split_keeps_batches_under_budget() {
        let parts: Vec<String> = [35, 35, 35, 700, 35]
            .iter()
            .map(|n| "x".repeat(*n))
            .collect();
        // 35 bytes = 12 tokens; 700 bytes = 230 tokens.
        let ranges = split_under_budget(&parts, 30);
        assert_eq!(ranges, [0..2, 2..3, 3..4, 4..5]);
        assert_eq!(split_under_budget(&parts, 10_000), vec![0..5]);
        assert!(split_under_budget(&[], 10).is_empty());
    }

    /// A fake model: a summary is `S(` + the parts' first letters + `)`, always short.
    async fn fake(step: SynthesisStep) -> Result<String, String> {
        Ok(format!(
            "S{}({})",
            step.level,
            step.parts
                .iter()
                .map(|p| p.chars().next().unwrap_or('?').to_string())
                .collect::<String>()
        ))
    }

    #[tokio::test]
    async fn tree_reduce_summarises_level_by_level() {
        let parts: Vec<String> = "abcdefgh"
            .chars()
            .map(|c| format!("{c}{}", "x".repeat(34)))
            .collect();
        let mut steps = Vec::new();
        let result = tree_reduce(parts.clone(), 30, |step| {
            steps.push((step.level, step.parts.len()));
            fake(step)
        })
        .await
        .unwrap();
        // 8 parts of 12 tokens, 2 per call: 4 calls, then the 4 short summaries fit one call.
        assert_eq!(steps, [(0, 2), (0, 2), (0, 2), (0, 2), (1, 4)]);
        assert_eq!(result, "S1(SSSS)");

        let one = tree_reduce(parts[..1].to_vec(), 30, fake).await.unwrap();
        assert_eq!(one, "S0(a)");
        let empty = tree_reduce(Vec::new(), 30, fake).await;
        assert!(matches!(empty, Err(SynthesisError::Empty)));
        let giants = vec!["x".repeat(700), "y".repeat(700)];
        let stuck = tree_reduce(giants, 30, fake).await;
        assert!(matches!(
            stuck,
            Err(SynthesisError::CannotReduce { level: 0, .. })
        ));
        let failing = tree_reduce(parts, 30, |_| async { Err::<String, _>("boom") }).await;
        assert!(matches!(
            failing,
            Err(SynthesisError::Call {
                level: 0,
                source: "boom"
            })
        ));
    }

    #[test]
    fn synthesis_request_numbers_the_parts() {
        let step = SynthesisStep {
            level: 1,
            parts: vec!["first".into(), "second".into()],
        };
        let request = synthesis_request("m", 1000, "Summarise.", &step);
        let crate::provider::ContentBlock::Text { text } = &request.messages[0].content[0] else {
            panic!("not text");
        };
        assert!(text.starts_with("Summarise.\n\nThese are summaries"));
        assert!(text.contains("<part n=\"2\">\nsecond\n</part>"));
    }
}
