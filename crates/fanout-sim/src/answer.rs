//! Default answers, used when no scenario rule supplies one.
//!
//! A forced tool (`tool_choice` naming a tool, or `any` / `required`, which pick the first tool)
//! gets one `tool_use` whose input is generated from the tool's schema; a structured-output
//! request gets schema-valid JSON text; anything else gets a short text reply. Generated values
//! are seeded by a hash of the request body, so the same request gets the same answer.

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
        let mut input = schema_gen::generate(&schema, body_hash);
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
        let value = schema_gen::generate(schema, body_hash);
        return Answer::text(serde_json::to_string(&value).unwrap_or_else(|_| "{}".to_string()));
    }
    let snippet: String = request.last_user.trim().chars().take(60).collect();
    if snippet.is_empty() {
        Answer::text("Simulated reply from fanout sim.")
    } else {
        Answer::text(format!("Simulated reply from fanout sim to: {snippet}"))
    }
}
