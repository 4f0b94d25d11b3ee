//! Default answers, used when no scenario rule supplies one: the simulator plays a competent,
//! deterministic model, reading only what is on the wire.
//!
//! - A forced tool whose schema asks for sub-tasks (`submit_plan`, …) gets a plan built from
//!   the task and the repository listing in the prompt (`planner.rs`).
//! - A forced item-plan tool (`chunking` + `instructions`, fanout's `propose_item_plan`) gets
//!   a chunking sized to the sampled items and fields the task asks for (`proposer.rs`).
//! - A request with file tools and a report tool is a sub-agent's turn: it reads, edits, tests
//!   and reports (`agent.rs`).
//! - An item worker (the schema is `{"results": [{"id": …, …}]}` and the prompt marks items as
//!   `<item id="…">`) gets one record per item, carrying that item's id, with values taken
//!   from the item where it can (an enum value the item mentions, a summary from its text,
//!   a field of the same name) and spread by the item's id otherwise.
//! - A summary request (numbered `<part>`s, or one line per agent `- id [status]: …`) gets a
//!   short Markdown summary with counts and names from its input.
//! - Any other forced tool gets an input generated from its schema, a structured-output
//!   request schema-valid JSON text, anything else a short text reply.
//!
//! Generated values are seeded by a hash of the request body, so the same request gets the
//! same answer.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{Answer, Block, Request};
use crate::prng::fnv1a;
use crate::{agent, planner, proposer, schema_gen};

pub(crate) fn default_answer(request: &Request, body_hash: u64) -> Answer {
    if let Some(name) = &request.forced_tool {
        let schema = request
            .tools
            .iter()
            .find(|t| &t.name == name)
            .map(|t| t.schema.clone())
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        if let Some(field) = planner::subtask_field(&schema) {
            return tool_answer(name, planner::plan(request, &schema, field));
        }
        if let Some(report) = agent::report_tool(request)
            && report == name
        {
            return agent::answer(request, report);
        }
        if proposer::is_item_plan_tool(&schema) {
            return tool_answer(name, proposer::propose(request, &schema));
        }
        let mut input = item_results(&schema, &request.last_user, body_hash)
            .unwrap_or_else(|| schema_gen::generate(&schema, body_hash));
        if !input.is_object() {
            input = serde_json::json!({});
        }
        return tool_answer(name, input);
    }
    if let Some(schema) = &request.json_schema {
        let value = item_results(schema, &request.last_user, body_hash)
            .unwrap_or_else(|| schema_gen::generate(schema, body_hash));
        return Answer::text(serde_json::to_string(&value).unwrap_or_else(|_| "{}".to_string()));
    }
    if let Some(report) = agent::report_tool(request) {
        return agent::answer(request, report);
    }
    if let Some(summary) = summary(&request.last_user) {
        return Answer::text(summary);
    }
    let snippet: String = request.last_user.trim().chars().take(60).collect();
    if snippet.is_empty() {
        Answer::text("Simulated reply from fanout sim.")
    } else {
        Answer::text(format!("Simulated reply from fanout sim to: {snippet}"))
    }
}

fn tool_answer(name: &str, input: Value) -> Answer {
    Answer {
        blocks: vec![Block::ToolUse {
            name: name.to_string(),
            input,
        }],
        hit_max_tokens: false,
    }
}

// ---- item workers --------------------------------------------------------------------------

/// `(id, text)` of every `<item id="…">…</item>` in `prompt`.
fn items(prompt: &str) -> Vec<(String, &str)> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<item id=\"") {
        let after = &rest[at + 10..];
        let Some(end) = after.find('"') else { break };
        let id = after[..end].replace("&quot;", "\"");
        let body = after[end..].split_once('>').map_or("", |(_, body)| body);
        let text_end = body.find("</item>").unwrap_or(body.len());
        out.push((id, body[..text_end].trim()));
        rest = &body[text_end..];
    }
    out
}

/// `{"results": [...]}` with one record per `<item id="…">` in `prompt`, when `schema` has
/// the shape of an item worker's answer; `None` otherwise.
fn item_results(schema: &Value, prompt: &str, seed: u64) -> Option<Value> {
    let record = schema.pointer("/properties/results/items")?;
    record.pointer("/properties/id")?;
    let items = items(prompt);
    if items.is_empty() {
        return None;
    }
    let results: Vec<Value> = items
        .into_iter()
        .enumerate()
        .map(|(index, (id, text))| item_record(record, &id, text, seed.wrapping_add(index as u64)))
        .collect();
    Some(json!({ "results": results }))
}

/// The strings of an item: a JSON item's string fields (nested ones too), or its text.
fn item_strings(item: &Value, text: &str) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::String(s) => out.push(s.clone()),
            Value::Array(list) => list.iter().for_each(|v| walk(v, out)),
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if item.is_object() || item.is_array() {
        walk(item, &mut out);
    } else {
        out.push(text.to_string());
    }
    out
}

/// One sentence of the item: its subject and the start of its body.
fn item_summary(item: &Value, text: &str) -> String {
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| item.get(*k).and_then(Value::as_str))
            .map(str::trim)
            .filter(|s| !s.is_empty())
    };
    let subject = pick(&["subject", "title", "summary", "name", "headline"]);
    let body = pick(&[
        "body",
        "text",
        "description",
        "message",
        "content",
        "comment",
    ])
    .map(str::to_string)
    .unwrap_or_else(|| {
        if item.is_object() {
            item_strings(item, text).join(" ")
        } else {
            text.to_string()
        }
    });
    let first = sentences(&body)
        .into_iter()
        .find_map(|sentence| {
            without_greeting(sentence).filter(|s| s.split_whitespace().count() >= 3)
        })
        .unwrap_or(body.trim());
    let sentence = match subject {
        Some(subject) if !first.is_empty() => format!("{subject}: {first}"),
        Some(subject) => subject.to_string(),
        None => first.to_string(),
    };
    sentence.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Sentences of `text`: cut after `.`, `!` or `?` followed by a space, and at line ends (so
/// `$194.44` stays whole).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = text.as_bytes();
    for (at, &byte) in bytes.iter().enumerate() {
        let end_mark = matches!(byte, b'.' | b'!' | b'?')
            && bytes
                .get(at + 1)
                .is_none_or(|next| next.is_ascii_whitespace());
        if end_mark || byte == b'\n' {
            let sentence = text[start..=at].trim();
            if !sentence.is_empty() {
                out.push(sentence);
            }
            start = at + 1;
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// `sentence` without a leading salutation ("Hi,", "Dear support,"); `None` when nothing
/// but the salutation and a pleasantry is left.
fn without_greeting(sentence: &str) -> Option<&str> {
    const GREETINGS: &[&str] = &[
        "hi",
        "hello",
        "hey",
        "dear",
        "good morning",
        "good afternoon",
        "good evening",
        "greetings",
        "thanks",
        "thank you",
    ];
    let lower = sentence.to_lowercase();
    if !GREETINGS.iter().any(|g| lower.starts_with(g)) {
        return Some(sentence);
    }
    let (_, rest) = sentence.split_once(", ")?;
    (rest.split_whitespace().count() >= 5).then_some(rest)
}

fn allows(schema: &Value, kind: &str) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == kind,
        Some(Value::Array(list)) => list.iter().any(|t| t.as_str() == Some(kind)),
        _ => false,
    }
}

fn fit(text: &str, schema: &Value) -> String {
    let max = schema
        .get("maxLength")
        .and_then(Value::as_u64)
        .map_or(160, |m| m as usize);
    let min = schema
        .get("minLength")
        .and_then(Value::as_u64)
        .map_or(0, |m| m as usize);
    let mut out: String = text.chars().take(max.min(4096)).collect();
    if out.chars().count() < max && text.chars().count() > max {
        // Cut on a word boundary when the text was longer.
        if let Some(space) = out.rfind(' ') {
            out.truncate(space);
        }
    }
    let have = out.chars().count();
    if have < min {
        out.extend(std::iter::repeat_n('.', min.min(4096) - have));
    }
    out
}

/// A value of `schema` for the item: what the item says where it can, spread by its id
/// otherwise.
fn item_value(key: &str, schema: &Value, item: &Value, text: &str, id: &str, seed: u64) -> Value {
    let hash = fnv1a(format!("{id}\u{0}{key}").as_bytes());
    let own = item.get(key);
    if let Some(choices) = schema.get("enum").and_then(Value::as_array)
        && !choices.is_empty()
    {
        if let Some(own) = own
            && choices.contains(own)
        {
            return own.clone();
        }
        let haystack = item_strings(item, text).join(" ").to_lowercase();
        // The value the item mentions first (by name, or by a word that suggests it).
        let mentioned = choices
            .iter()
            .filter_map(|c| {
                let at = crate::lexicon::words_for(c.as_str()?)
                    .iter()
                    .filter(|word| word.len() >= 3)
                    .filter_map(|word| find_word(&haystack, word))
                    .min()?;
                Some((at, c))
            })
            .min_by_key(|(at, _)| *at)
            .map(|(_, c)| c.clone());
        return mentioned
            .unwrap_or_else(|| choices[(hash % choices.len() as u64) as usize].clone());
    }
    if allows(schema, "string") || allows(schema, "null") {
        match own {
            Some(Value::String(s)) if allows(schema, "string") => return json!(fit(s, schema)),
            Some(Value::Null) if allows(schema, "null") => return Value::Null,
            // The prompt asks for null when the item does not say.
            None if allows(schema, "null") && item.is_object() => return Value::Null,
            _ => {}
        }
        if allows(schema, "string") && schema.get("format").is_none() {
            return json!(fit(&item_summary(item, text), schema));
        }
    }
    if let Some(own) = own
        && (own.is_number() && (allows(schema, "number") || allows(schema, "integer"))
            || own.is_boolean() && allows(schema, "boolean"))
    {
        return own.clone();
    }
    if allows(schema, "boolean") && !allows(schema, "string") {
        return json!(hash & 1 == 1);
    }
    schema_gen::generate(schema, hash ^ seed.rotate_left(17))
}

/// Where `word` occurs in `text` as a whole word.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let start = from + at;
        let end = start + word.len();
        let before = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let after = end >= bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before && after {
            return Some(start);
        }
        from = start + word.len().max(1);
        while from < text.len() && !text.is_char_boundary(from) {
            from += 1;
        }
        if from >= text.len() {
            break;
        }
    }
    None
}

fn item_record(record: &Value, id: &str, text: &str, seed: u64) -> Value {
    let item: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let mut value = schema_gen::generate(record, seed);
    if let (Some(object), Some(properties)) = (
        value.as_object_mut(),
        record.get("properties").and_then(Value::as_object),
    ) {
        for (key, schema) in properties {
            if key == "id" {
                continue;
            }
            let resolved = match schema.get("$ref") {
                Some(_) => continue,
                None => schema,
            };
            object.insert(
                key.clone(),
                item_value(key, resolved, &item, text, id, seed),
            );
        }
    }
    if let Some(object) = value.as_object_mut() {
        object.insert("id".to_string(), Value::String(id.to_string()));
    }
    value
}

// ---- summaries -----------------------------------------------------------------------------

/// A Markdown summary of a synthesis request's input, when it is one.
fn summary(prompt: &str) -> Option<String> {
    if prompt.contains("<part n=\"") {
        return Some(parts_summary(prompt));
    }
    run_summary(prompt)
}

const MAX_KEY_VALUES: usize = 12;

/// Counts over `<part>` records (level 0), or over earlier summaries' count lines.
fn parts_summary(prompt: &str) -> String {
    let mut records = 0u64;
    // field → value → count
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<part n=\"") {
        let after = &rest[at..];
        let body = after.split_once(">\n").map_or("", |(_, b)| b);
        let end = body.find("</part>").unwrap_or(body.len());
        let part = body[..end].trim();
        rest = &body[end..];
        if let Ok(Value::Object(record)) = serde_json::from_str::<Value>(part) {
            records += 1;
            for (key, value) in &record {
                let text = match value {
                    Value::String(s) if s.chars().count() <= 40 => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => "(none)".to_string(),
                    _ => continue,
                };
                if key == "id" {
                    continue;
                }
                *counts
                    .entry(key.clone())
                    .or_default()
                    .entry(text)
                    .or_default() += 1;
            }
            if notes.len() < 3
                && let Some(text) = ["summary", "description", "title"]
                    .iter()
                    .find_map(|k| record.get(*k).and_then(Value::as_str))
            {
                notes.push(text.to_string());
            }
            continue;
        }
        // An earlier summary: its "Records: N" and "- field: value N, …" lines.
        for line in part.lines() {
            if let Some(n) = line.strip_prefix("Records: ") {
                records += n.trim().parse::<u64>().unwrap_or(0);
            } else if let Some((field, values)) =
                line.strip_prefix("- **").and_then(|l| l.split_once("**: "))
            {
                for entry in values.split(", ") {
                    if let Some((value, n)) = entry.rsplit_once(' ')
                        && let Ok(n) = n.parse::<u64>()
                    {
                        *counts
                            .entry(field.to_string())
                            .or_default()
                            .entry(value.to_string())
                            .or_default() += n;
                    }
                }
            } else if let Some(note) = line.strip_prefix("> ")
                && notes.len() < 3
            {
                notes.push(note.to_string());
            }
        }
    }
    let mut out = String::from("## Summary\n\n");
    out.push_str(&format!("Records: {records}\n\n"));
    // Fields that categorise (few distinct values, repeated), most frequent first.
    for (field, values) in &counts {
        // Categories: few distinct, short values, some repeated (not free text).
        let repeated = values.values().any(|n| *n > 1) || records <= 1;
        let short = values.keys().all(|v| v.split_whitespace().count() <= 4);
        if values.len() > MAX_KEY_VALUES || !repeated || !short {
            continue;
        }
        let mut sorted: Vec<(&String, &u64)> = values.iter().collect();
        sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let line: Vec<String> = sorted.iter().map(|(v, n)| format!("{v} {n}")).collect();
        out.push_str(&format!("- **{field}**: {}\n", line.join(", ")));
    }
    if !notes.is_empty() {
        out.push_str("\nExamples:\n\n");
        for note in &notes {
            out.push_str(&format!("> {note}\n"));
        }
    }
    out.push_str("\n_Written by the fanout simulator from the records above._\n");
    out
}

/// Up to ten names, then how many more.
fn names(ids: &[String]) -> String {
    names_of(ids, ids.len())
}

/// Up to ten names of `ids`, then how many more of `total` (a list cut short names fewer).
fn names_of(ids: &[String], total: usize) -> String {
    let shown: Vec<&str> = ids.iter().take(10).map(String::as_str).collect();
    let more = total.max(ids.len()).saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// A run's closing summary from its `- id [status]: description` lines.
fn run_summary(prompt: &str) -> Option<String> {
    let mut by_status: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut header = None;
    let mut other = Vec::new();
    // `Totals: N agent(s) finished: S succeeded, F did not; R not run.`: the whole run's
    // counts, when the list is cut short.
    let mut totals: Option<(String, Vec<usize>)> = None;
    for line in prompt.lines() {
        if let Some(rest) = line.strip_prefix("Totals: ") {
            let numbers = rest
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|word| word.parse().ok())
                .collect();
            totals = Some((rest.trim().to_string(), numbers));
        } else if line.starts_with("Listed: ") {
            // Said by the totals already.
        } else if let Some(rest) = line.strip_prefix("- ")
            && let Some((id, tail)) = rest.split_once(" [")
            && let Some((status, _)) = tail.split_once(']')
            && !id.contains(' ')
        {
            let status = status
                .split(',')
                .next()
                .unwrap_or(status)
                .trim()
                .to_string();
            by_status.entry(status).or_default().push(id.to_string());
        } else if header.is_none() && line.starts_with("Workflow ") {
            header = Some(line.trim().to_string());
        } else if !line.trim().is_empty() {
            other.push(line.trim().to_string());
        }
    }
    if by_status.is_empty() {
        return None;
    }
    let total: usize = by_status.values().map(Vec::len).sum();
    // The run's summary file puts this under its own heading.
    let mut out = String::new();
    if let Some(header) = header {
        out.push_str(&format!("{header}\n\n"));
    }
    let counts: Vec<String> = by_status
        .iter()
        .map(|(status, ids)| {
            let said = match status.as_str() {
                "success" => "succeeded",
                "failure" => "failed",
                "rollback" => "rolled back",
                other => other,
            };
            format!("{} {said}", ids.len())
        })
        .collect();
    match &totals {
        Some((text, _)) => out.push_str(&format!("{text}\n")),
        None => out.push_str(&format!("{total} agent(s): {}.\n", counts.join(", "))),
    }
    let succeeded = totals
        .as_ref()
        .and_then(|(_, numbers)| numbers.get(1).copied());
    if let Some(done) = by_status.get("success") {
        let done = names_of(done, succeeded.unwrap_or(done.len()));
        out.push_str(&format!("\nDone: {done}.\n"));
    }
    let failed: Vec<&String> = by_status
        .iter()
        .filter(|(status, _)| status.as_str() != "success")
        .flat_map(|(_, ids)| ids)
        .collect();
    if failed.is_empty() {
        out.push_str(
            "\nEvery agent succeeded; review the diff, starting with the largest changes.\n",
        );
    } else {
        let failed: Vec<String> = failed.into_iter().cloned().collect();
        out.push_str(&format!("\nReview first: {}.\n", names(&failed)));
    }
    for line in other.iter().take(5) {
        out.push_str(&format!("\n{line}\n"));
    }
    out.push_str("\n_Written by the fanout simulator from the run's results._\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_records_follow_their_items() {
        let record = json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "category": {"type": "string", "enum": ["billing", "login", "other"]},
                "summary": {"type": "string", "maxLength": 40},
                "product": {"type": ["string", "null"]}
            }
        });
        let text = r#"{"subject": "Cannot login", "body": "The login page fails every time I try.", "product": null}"#;
        let value = item_record(&record, "T-1", text, 7);
        assert_eq!(value["id"], "T-1");
        assert_eq!(value["category"], "login");
        assert_eq!(value["product"], Value::Null);
        let summary = value["summary"].as_str().unwrap_or_default();
        assert!(
            summary.starts_with("Cannot login") && summary.len() <= 40,
            "{summary}"
        );
    }

    #[test]
    fn run_summaries_count() {
        let text =
            "Workflow w (3 sub-tasks).\n- a [success]: x\n- b [success]: y\n- c [rollback]: z\n";
        let summary = run_summary(text).unwrap_or_default();
        assert!(
            summary.contains("3 agent(s): 1 rolled back, 2 succeeded."),
            "{summary}"
        );
        assert!(summary.contains("Done: a, b."), "{summary}");
        assert!(summary.contains("Review first: c."), "{summary}");
        assert_eq!(run_summary("ping"), None);
    }

    #[test]
    fn a_cut_list_is_summarised_with_the_runs_totals() {
        let mut text = String::from(
            "Workflow w (1000 sub-tasks).\nTotals: 1000 agent(s) finished: 999 succeeded, 1 did not; 0 not run.\nListed: the first 400 finished and the first 100 not run.\n",
        );
        for at in 0..400 {
            let status = if at == 7 { "failure" } else { "success" };
            text.push_str(&format!("- a{at:03} [{status}]: x\n"));
        }
        let summary = run_summary(&text).unwrap_or_default();
        assert!(
            summary.contains("1000 agent(s) finished: 999 succeeded, 1 did not; 0 not run."),
            "{summary}"
        );
        assert!(!summary.contains("400 agent(s)"), "{summary}");
        assert!(summary.contains("and 989 more"), "{summary}");
        assert!(summary.contains("Review first: a007."), "{summary}");
    }
}
