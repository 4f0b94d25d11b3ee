//! The default item planner: a forced tool whose schema asks for a `chunking` and worker
//! `instructions` (fanout's `propose_item_plan` for `chunking: {strategy: llm}`) is answered
//! from the sample in the prompt.
//!
//! - chunking: `per_item` for long items (over 4,000 characters), else `fixed` with as many
//!   items as make about 8,000 characters per call (within the schema's bounds);
//! - instructions: the task, then what to put in each field;
//! - fields (when the schema asks for them): the ones the task names (category, priority,
//!   sentiment, summary, language), categories the sample suggests (`lexicon.rs`, else the
//!   words its subjects share), plus the sample's own short repeated string fields (`product`), which a
//!   worker copies from each item.
//!
//! Deterministic for a given prompt. It owns no wire format; see `answer.rs`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::Request;

/// Characters of items one worker call should get.
const CHARS_PER_CALL: usize = 8_000;
/// Items longer than this are chunked one per call.
const LONG_ITEM: usize = 4_000;
/// Category values taken from the sample, `other` added.
const MAX_CATEGORIES: usize = 8;

/// Is `schema` an item-plan tool's?
pub(crate) fn is_item_plan_tool(schema: &Value) -> bool {
    let properties = schema.get("properties");
    ["chunking", "instructions"]
        .iter()
        .all(|key| properties.and_then(|p| p.get(*key)).is_some())
}

/// `(id, text)` of the sampled `<item id="…">…</item>` elements.
fn sampled(prompt: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<item id=\"") {
        let after = &rest[at..];
        let Some((_, body)) = after.split_once('>') else {
            break;
        };
        let end = body.find("</item>").unwrap_or(body.len());
        out.push(body[..end].trim());
        rest = &body[end..];
    }
    out
}

fn task(prompt: &str) -> String {
    let body = prompt
        .split_once("Task for every item:")
        .map_or(prompt, |(_, rest)| rest);
    body.split("\n\n")
        .find(|p| !p.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn mentions(text: &str, stems: &[&str]) -> bool {
    let lower = text.to_lowercase();
    lower
        .split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| stems.iter().any(|s| w.starts_with(s)))
}

const STOPWORDS: &[&str] = &[
    "about", "after", "again", "cannot", "can't", "could", "does", "doesn't", "from", "have",
    "into", "just", "more", "never", "only", "other", "question", "please", "since", "still",
    "that", "their", "there", "this", "when", "where", "which", "while", "with", "without",
    "won't", "would", "your", "help", "issue", "problem", "request", "need", "needs", "what",
];

/// The categories the sample's items suggest (known categories whose words they use), else
/// the words their subjects share; `other` last.
fn categories(items: &[Value]) -> Vec<String> {
    let texts: Vec<String> = items
        .iter()
        .map(|item| {
            let mut text = String::new();
            for key in ["subject", "title", "body", "text", "description", "message"] {
                if let Some(value) = item.get(key).and_then(Value::as_str) {
                    text.push_str(value);
                    text.push(' ');
                }
            }
            text.to_lowercase()
        })
        .collect();
    let mut known: Vec<String> = crate::lexicon::CATEGORIES
        .iter()
        .filter(|(category, _)| {
            let words = crate::lexicon::words_for(category);
            texts
                .iter()
                .filter(|t| words.iter().any(|w| t.contains(w.as_str())))
                .count()
                >= 2
        })
        .map(|(category, _)| (*category).to_string())
        .take(MAX_CATEGORIES)
        .collect();
    if known.len() < 2 {
        known = shared_subject_words(items);
    }
    known.push("other".to_string());
    known
}

/// Words the sample's subjects share.
fn shared_subject_words(items: &[Value]) -> Vec<String> {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for item in items {
        let subject = ["subject", "title", "category", "topic", "summary"]
            .iter()
            .find_map(|k| item.get(*k).and_then(Value::as_str))
            .unwrap_or_default();
        let mut seen = Vec::new();
        for word in subject.split(|c: char| !c.is_alphanumeric()) {
            let word = word.to_lowercase();
            if word.len() < 4
                || STOPWORDS.contains(&word.as_str())
                || word.chars().any(|c| c.is_ascii_digit())
                || seen.contains(&word)
            {
                continue;
            }
            seen.push(word.clone());
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().filter(|(_, n)| *n >= 2).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut values: Vec<String> = ranked
        .into_iter()
        .take(MAX_CATEGORIES)
        .map(|(w, _)| w)
        .collect();
    values.sort();
    values
}

/// The sample's short string fields with repeated values (`product`, `channel`), by name.
fn copied_fields(items: &[Value]) -> Vec<String> {
    let mut values: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for item in items {
        let Some(object) = item.as_object() else {
            continue;
        };
        for (key, value) in object {
            if let Some(text) = value.as_str()
                && text.split_whitespace().count() <= 4
                && key != "id"
                && !key.ends_with("_at")
            {
                values
                    .entry(key.clone())
                    .or_default()
                    .push(text.to_string());
            }
        }
    }
    values
        .into_iter()
        .filter(|(_, seen)| {
            let mut distinct = seen.clone();
            distinct.sort();
            distinct.dedup();
            seen.len() >= 2 && distinct.len() < seen.len()
        })
        .map(|(key, _)| key)
        .filter(|key| !["subject", "title"].contains(&key.as_str()))
        .take(3)
        .collect()
}

/// The tool's input.
pub(crate) fn propose(request: &Request, schema: &Value) -> Value {
    let prompt = request.first_user_text();
    let task = task(prompt);
    let texts = sampled(prompt);
    let items: Vec<Value> = texts
        .iter()
        .map(|t| serde_json::from_str(t).unwrap_or(Value::Null))
        .collect();
    let average = if texts.is_empty() {
        500
    } else {
        texts.iter().map(|t| t.len()).sum::<usize>() / texts.len()
    };
    let size_schema = schema.pointer("/properties/chunk_size");
    let min = size_schema
        .and_then(|s| s.get("minimum"))
        .and_then(Value::as_u64)
        .unwrap_or(1) as usize;
    let max = size_schema
        .and_then(|s| s.get("maximum"))
        .and_then(Value::as_u64)
        .unwrap_or(200) as usize;
    let size = (CHARS_PER_CALL / average.max(1)).clamp(min.max(1), max.max(1));
    let chunking = if average > LONG_ITEM {
        "per_item"
    } else {
        "fixed"
    };

    let mut fields: Vec<Value> = Vec::new();
    let mut steps: Vec<String> = Vec::new();
    let wants_fields = schema.pointer("/properties/fields").is_some();
    if wants_fields {
        if mentions(
            &task,
            &["categor", "triage", "classif", "about", "kind", "type"],
        ) {
            let values = categories(&items);
            steps.push(format!("category: one of {}", values.join(", ")));
            fields.push(json!({"name": "category", "type": "string",
                "description": "What the item is mainly about", "values": values}));
        }
        if mentions(&task, &["priorit", "urgen", "triage", "severity"]) {
            steps.push("priority: urgent when money is lost or work is blocked for many, high when one person is blocked, normal with a workaround, low for questions".to_string());
            fields.push(json!({"name": "priority", "type": "string",
                "description": "How urgent", "values": ["low", "normal", "high", "urgent"]}));
        }
        if mentions(
            &task,
            &["sentiment", "upset", "mood", "tone", "feel", "struggl"],
        ) {
            steps.push("sentiment: the customer's tone".to_string());
            fields.push(json!({"name": "sentiment", "type": "string",
                "description": "The tone of the item", "values": ["positive", "neutral", "negative"]}));
        }
        if mentions(&task, &["language"]) {
            steps.push("language: the item's language (ISO 639-1 code)".to_string());
            fields.push(json!({"name": "language", "type": "string",
                "description": "ISO 639-1 code of the item's language"}));
        }
        for key in copied_fields(&items) {
            steps.push(format!("{key}: the item's own `{key}`, or null"));
            fields.push(json!({"name": key, "type": "string", "nullable": true,
                "description": format!("The item's {key}, or null when it does not say")}));
        }
        steps.push("summary: one sentence saying what the item needs".to_string());
        fields.push(json!({"name": "summary", "type": "string",
            "description": "One sentence: what the item needs"}));
    }
    let mut instructions = task.clone();
    if !steps.is_empty() {
        instructions.push_str("\n\nFor each item:\n");
        for step in &steps {
            instructions.push_str(&format!("- {step}\n"));
        }
    }
    let rationale = format!(
        "The {} sampled item(s) average {average} characters, so {} keeps each call near {CHARS_PER_CALL} characters.",
        texts.len(),
        if chunking == "per_item" {
            "one item per call".to_string()
        } else {
            format!("{size} items per call")
        }
    );
    let mut out = json!({
        "chunking": chunking,
        "chunk_size": size,
        "instructions": instructions.trim_end(),
        "rationale": rationale,
    });
    if wants_fields && let Some(object) = out.as_object_mut() {
        object.insert("fields".into(), Value::Array(fields));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_come_from_what_the_sample_is_about() {
        let items = vec![
            json!({"subject": "Refund for order 12"}),
            json!({"subject": "Refund please"}),
            json!({"subject": "Login broken"}),
            json!({"subject": "Cannot login"}),
            json!({"subject": "Dark mode"}),
        ];
        assert_eq!(categories(&items), ["refund", "login", "other"]);
        let odd = vec![
            json!({"subject": "Walrus sighting"}),
            json!({"subject": "Second walrus"}),
        ];
        assert_eq!(categories(&odd), ["walrus", "other"]);
    }
}
