//! Default answers, used when no scenario rule supplies one.
//!
//! A forced tool (`tool_choice` naming a tool, or `any` / `required`, which pick the first tool)
//! gets one `tool_use` whose input is generated from the tool's schema; a structured-output
//! request gets schema-valid JSON text; anything else gets a short text reply. Generated values
//! are seeded by a hash of the request body, so the same request gets the same answer.
//!
//! Item workers: when the schema is `{"results": [{"id": …, …}]}` and the prompt marks items as
//! `<item id="…">`, the answer has one generated record per item, carrying that item's id.

use crate::model::{Answer, Block, Request};
use crate::schema_gen;

pub(crate) fn default_answer(request: &Request, body_hash: u64) -> Answer {
    if let Some(name) = &request.forced_tool {
        let schema = request
            .tools
            .iter()
            .find(|t| &t.name == name)
            .map(|t| t.schema.clone())
            .unwrap_or_else(|| serde_json::json!({"type": "object"}));
        let mut input = item_results(&schema, &request.last_user, body_hash)
            .unwrap_or_else(|| schema_gen::generate(&schema, body_hash));
        if !input.is_object() {
            input = serde_json::json!({});
        }
        return Answer {
            blocks: vec![Block::ToolUse {
                name: name.clone(),
                input,
            }],
            hit_max_tokens: false,
        };
    }
    if let Some(schema) = &request.json_schema {
        let value = item_results(schema, &request.last_user, body_hash)
            .unwrap_or_else(|| schema_gen::generate(schema, body_hash));
        return Answer::text(serde_json::to_string(&value).unwrap_or_else(|_| "{}".to_string()));
    }
    let snippet: String = request.last_user.trim().chars().take(60).collect();
    if snippet.is_empty() {
        Answer::text("Simulated reply from fanout sim.")
    } else {
        Answer::text(format!("Simulated reply from fanout sim to: {snippet}"))
    }
}

/// `{"results": [...]}` with one record per `<item id="…">` in `prompt`, when `schema` has
/// the shape of an item worker's answer; `None` otherwise.
fn item_results(schema: &serde_json::Value, prompt: &str, seed: u64) -> Option<serde_json::Value> {
    let record = schema.pointer("/properties/results/items")?;
    record.pointer("/properties/id")?;
    let mut ids = Vec::new();
    let mut rest = prompt;
    while let Some(at) = rest.find("<item id=\"") {
        let after = &rest[at + 10..];
        let end = after.find('"')?;
        ids.push(after[..end].replace("&quot;", "\""));
        rest = &after[end..];
    }
    if ids.is_empty() {
        return None;
    }
    let results: Vec<serde_json::Value> = ids
        .into_iter()
        .enumerate()
        .map(|(index, id)| {
            let mut value = schema_gen::generate(record, seed.wrapping_add(index as u64));
            if let Some(object) = value.as_object_mut() {
                object.insert("id".to_string(), serde_json::Value::String(id));
            }
            value
        })
        .collect();
    Some(serde_json::json!({ "results": results }))
}
