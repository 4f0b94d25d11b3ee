//! `chunking: {strategy: llm}`: the orchestrator looks at a sample of the items and proposes
//! how to chunk them, what each worker is told and, when the workflow gives no
//! `output_schema`, the fields of one result record.
//!
//! The answer comes through a forced [`PROPOSE_TOOL`] call and is never trusted as is: the
//! chunking must be one we know with a size in range, the instructions non-empty and bounded,
//! and the record is described as a list of typed fields from which *we* build the JSON
//! Schema (names normalised to `snake_case`, no duplicates, no `id`: the runner adds it). A
//! rejected answer goes back as an error `tool_result` naming every problem, at most
//! [`MAX_REPAIRS`] times.
//!
//! The proposal is shown in the dry run and saved as `item-plan.json` with its SHA-256 beside
//! it (`item-plan.sha256`), like a repository plan; `fanout run --plan FILE` runs the reviewed
//! proposal without asking again, and a resumed run reuses the one its first process saved.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::Item;
use crate::config::Config;
use crate::config::items::ChunkingConfig;
use crate::fleet::{Fleet, FleetError};
use crate::ids::RunId;
use crate::plan::store::hash_bytes;
use crate::provider::{Message, Request, ToolChoice, ToolSpec};

/// The tool the orchestrator must answer with.
pub const PROPOSE_TOOL: &str = "propose_item_plan";
/// Rejected answers sent back for another try.
pub const MAX_REPAIRS: u32 = 2;
/// Largest chunk the orchestrator may propose.
pub const MAX_PROPOSED_CHUNK: usize = 200;
/// Most record fields it may propose.
pub const MAX_FIELDS: usize = 40;
/// Longest worker instructions it may propose, in characters.
pub const MAX_INSTRUCTIONS: usize = 8_000;
/// Characters of one sampled item shown to the orchestrator.
const SAMPLE_ITEM_CHARS: usize = 2_000;
/// `max_tokens` of the proposal call.
const PROPOSAL_MAX_TOKENS: u32 = 4_096;

/// A proposed chunking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum ProposedChunking {
    PerItem,
    Fixed {
        size: usize,
    },
    /// Token-budget chunks of at most `max_items` items each.
    TokenBudget {
        max_items: usize,
    },
}

/// The type of one proposed record field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    String,
    Integer,
    Number,
    Boolean,
}

/// One proposed record field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposedField {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldType,
    pub description: String,
    /// For a string field: the allowed values (a category).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Whether the worker may answer `null` for it.
    #[serde(default)]
    pub nullable: bool,
}

/// What the orchestrator proposed, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemProposal {
    /// Always `"item-plan"`, so a repository plan cannot be passed by mistake.
    pub kind: String,
    pub workflow: String,
    pub chunking: ProposedChunking,
    pub instructions: String,
    /// The proposed fields; empty when the workflow gave its own `output_schema`.
    #[serde(default)]
    pub fields: Vec<ProposedField>,
    /// The record schema workers answer with (built from `fields`, or the workflow's).
    pub output_schema: Value,
    pub rationale: String,
    /// How many items the orchestrator saw.
    pub sampled: usize,
}

const KIND: &str = "item-plan";

/// Why there is no proposal.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    #[error("`chunking.strategy` is not `llm`: nothing to propose")]
    NotLlm,
    #[error("the orchestrator call failed (attempt {attempt}): {source}")]
    Orchestrator { attempt: u32, source: FleetError },
    #[error(
        "the orchestrator gave no valid item plan in {attempts} attempt(s); last problems: {}",
        .problems.join("; ")
    )]
    Rejected {
        attempts: u32,
        problems: Vec<String>,
    },
    #[error("item plan {}: {message}", .path.display())]
    File { path: PathBuf, message: String },
}

/// Ask the orchestrator for a proposal from the first `sample` items.
pub async fn propose(
    fleet: &Fleet,
    config: &Config,
    items: &[Item],
    cancel: &CancellationToken,
) -> Result<ItemProposal, ProposeError> {
    let items_config = config.items.as_ref().ok_or(ProposeError::NotLlm)?;
    let ChunkingConfig::Llm { sample } = items_config.chunking else {
        return Err(ProposeError::NotLlm);
    };
    let given_schema = items_config.worker.output_schema.as_ref();
    let shown = sample_items(items, sample);
    let model = config.orchestrator_model();
    let mut request = Request::new(model.model.clone(), PROPOSAL_MAX_TOKENS);
    request.system = Some(system_prompt());
    request.tools = vec![propose_tool(given_schema.is_none())];
    request.tool_choice = Some(ToolChoice::Tool {
        name: PROPOSE_TOOL.to_owned(),
    });
    request.messages.push(Message::user(user_prompt(
        &items_config.worker.instructions,
        given_schema,
        items.len(),
        &shown,
    )));
    let calls = MAX_REPAIRS + 1;
    let mut problems = Vec::new();
    for attempt in 1..=calls {
        let response = fleet
            .call(&request, cancel)
            .await
            .map_err(|source| ProposeError::Orchestrator { attempt, source })?
            .response;
        let answer = response
            .tool_uses()
            .find(|(_, name, _)| *name == PROPOSE_TOOL)
            .map(|(id, _, input)| (id.to_owned(), input.clone()));
        let tool_use_id = match answer {
            Some((id, input)) => {
                match check_answer(&input, given_schema, &config.name, shown.len()) {
                    Ok(proposal) => return Ok(proposal),
                    Err(found) => {
                        problems = found;
                        Some(id)
                    }
                }
            }
            None => {
                problems = vec![format!(
                    "the answer did not call `{PROPOSE_TOOL}`; answer only with that tool call"
                )];
                None
            }
        };
        if attempt == calls {
            break;
        }
        request.push_rejection(
            response.content.clone(),
            tool_use_id,
            &format!(
                "The item plan was rejected. Fix every problem below and call `{PROPOSE_TOOL}` again with the whole plan."
            ),
            &problems,
        );
    }
    Err(ProposeError::Rejected {
        attempts: calls,
        problems,
    })
}

/// The items shown: up to `sample`, spread evenly over the input (first and last included).
pub fn sample_items(items: &[Item], sample: usize) -> Vec<&Item> {
    let n = items.len();
    if n <= sample {
        return items.iter().collect();
    }
    if sample <= 1 {
        return items.iter().take(sample).collect();
    }
    (0..sample)
        .map(|k| &items[k * (n - 1) / (sample - 1)])
        .collect()
}

fn system_prompt() -> String {
    "You plan item work for fanout: many independent worker calls, each given a chunk of \
     items, each answering with one JSON record per item. Look at the sample, then call \
     propose_item_plan once with: the chunking (per_item for long or complex items, fixed or \
     token_budget with a size for short ones), precise instructions for a worker that sees \
     only its own chunk, and the record fields the task needs (string fields that are \
     categories list their allowed values). Do not include an `id` field: it is added."
        .to_owned()
}

fn user_prompt(task: &str, given_schema: Option<&Value>, total: usize, shown: &[&Item]) -> String {
    let mut prompt = format!("Task for every item:\n{task}\n\n");
    if let Some(schema) = given_schema {
        prompt.push_str(&format!(
            "Every record must match this JSON Schema (given by the user; do not propose fields):\n{schema}\n\n"
        ));
    }
    prompt.push_str(&format!(
        "The input has {total} item(s); {} of them, spread over the input:\n",
        shown.len()
    ));
    for item in shown {
        let text = item.value.to_string();
        let cut: String = text.chars().take(SAMPLE_ITEM_CHARS).collect();
        let more = if cut.len() < text.len() { " …" } else { "" };
        prompt.push_str(&format!(
            "<item id=\"{}\">{cut}{more}</item>\n",
            item.id.replace('"', "&quot;")
        ));
    }
    prompt
}

/// The tool's input schema; `with_fields` when the orchestrator proposes the record too.
pub fn propose_tool(with_fields: bool) -> ToolSpec {
    let mut properties = json!({
        "chunking": {
            "type": "string",
            "enum": ["fixed", "per_item", "token_budget"],
            "description": "How items are grouped into worker calls"
        },
        "chunk_size": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_PROPOSED_CHUNK,
            "description": "Items per chunk (fixed), or the most items per chunk (token_budget); ignored for per_item"
        },
        "instructions": {
            "type": "string",
            "minLength": 1,
            "maxLength": MAX_INSTRUCTIONS,
            "description": "What each worker does with each item of its chunk"
        },
        "rationale": {
            "type": "string",
            "description": "Why this chunking and these fields, in a sentence or two"
        }
    });
    let mut required = vec!["chunking", "chunk_size", "instructions", "rationale"];
    if with_fields {
        properties["fields"] = json!({
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_FIELDS,
            "description": "The fields of one result record (without id)",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 64},
                    "type": {"type": "string", "enum": ["string", "integer", "number", "boolean"]},
                    "description": {"type": "string"},
                    "values": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "For a category: its allowed values"
                    },
                    "nullable": {"type": "boolean"}
                },
                "required": ["name", "type", "description"]
            }
        });
        required.push("fields");
    }
    ToolSpec {
        name: PROPOSE_TOOL.to_owned(),
        description:
            "Propose how to chunk the items, the worker instructions and the record fields."
                .to_owned(),
        input_schema: json!({
            "type": "object",
            "properties": properties,
            "required": required
        }),
    }
}

/// Check one tool input; every problem found, or the proposal.
pub fn check_answer(
    input: &Value,
    given_schema: Option<&Value>,
    workflow: &str,
    sampled: usize,
) -> Result<ItemProposal, Vec<String>> {
    let mut problems = Vec::new();
    let Some(object) = input.as_object() else {
        return Err(vec!["the input must be an object".to_owned()]);
    };
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::trim);
    let size = object.get("chunk_size").and_then(Value::as_u64);
    let size_in_range = |problems: &mut Vec<String>| match size {
        Some(size) if size >= 1 && size as usize <= MAX_PROPOSED_CHUNK => Some(size as usize),
        Some(size) => {
            problems.push(format!(
                "chunk_size must be between 1 and {MAX_PROPOSED_CHUNK}, found {size}"
            ));
            None
        }
        None => {
            problems.push("chunk_size must be a whole number".to_owned());
            None
        }
    };
    let chunking = match text("chunking") {
        Some("per_item") => Some(ProposedChunking::PerItem),
        Some("fixed") => size_in_range(&mut problems).map(|size| ProposedChunking::Fixed { size }),
        Some("token_budget") => size_in_range(&mut problems)
            .map(|max_items| ProposedChunking::TokenBudget { max_items }),
        Some(other) => {
            problems.push(format!(
                "chunking must be fixed, per_item or token_budget, found {other:?}"
            ));
            None
        }
        None => {
            problems.push("chunking is missing".to_owned());
            None
        }
    };
    let instructions = match text("instructions") {
        Some("") => {
            problems.push("instructions are empty".to_owned());
            None
        }
        Some(text) if text.chars().count() > MAX_INSTRUCTIONS => {
            problems.push(format!(
                "instructions are longer than {MAX_INSTRUCTIONS} characters"
            ));
            None
        }
        Some(text) => Some(text.to_owned()),
        None => {
            problems.push("instructions are missing".to_owned());
            None
        }
    };
    let rationale = text("rationale").unwrap_or_default().to_owned();
    let (fields, output_schema) = match given_schema {
        Some(schema) => (Vec::new(), Some(schema.clone())),
        None => match object.get("fields").and_then(Value::as_array) {
            Some(raw) => {
                let fields = check_fields(raw, &mut problems);
                let schema = (!fields.is_empty()).then(|| record_schema(&fields));
                (fields, schema)
            }
            None => {
                problems.push("fields must be a list of the record's fields".to_owned());
                (Vec::new(), None)
            }
        },
    };
    match (chunking, instructions, output_schema) {
        (Some(chunking), Some(instructions), Some(output_schema)) if problems.is_empty() => {
            Ok(ItemProposal {
                kind: KIND.to_owned(),
                workflow: workflow.to_owned(),
                chunking,
                instructions,
                fields,
                output_schema,
                rationale,
                sampled,
            })
        }
        _ => Err(problems),
    }
}

fn check_fields(raw: &[Value], problems: &mut Vec<String>) -> Vec<ProposedField> {
    if raw.is_empty() {
        problems.push("fields is empty: a record needs at least one field".to_owned());
    }
    if raw.len() > MAX_FIELDS {
        problems.push(format!("more than {MAX_FIELDS} fields"));
        return Vec::new();
    }
    let mut fields: Vec<ProposedField> = Vec::new();
    for (index, value) in raw.iter().enumerate() {
        let field: ProposedField = match serde_json::from_value(value.clone()) {
            Ok(field) => field,
            Err(error) => {
                problems.push(format!("fields[{index}]: {error}"));
                continue;
            }
        };
        let Some(name) = normalise_name(&field.name) else {
            problems.push(format!(
                "fields[{index}]: name {:?} has no letters or digits",
                field.name
            ));
            continue;
        };
        if name == "id" {
            problems.push(format!(
                "fields[{index}]: `id` is added to every record; do not propose it"
            ));
            continue;
        }
        if fields.iter().any(|f| f.name == name) {
            problems.push(format!("fields[{index}]: {name} is proposed twice"));
            continue;
        }
        if !field.values.is_empty() && field.kind != FieldType::String {
            problems.push(format!(
                "fields[{index}]: {name}: only string fields may list values"
            ));
            continue;
        }
        let mut values: Vec<String> = Vec::new();
        for value in &field.values {
            let value = value.trim().to_owned();
            if !value.is_empty() && !values.contains(&value) {
                values.push(value);
            }
        }
        fields.push(ProposedField {
            name,
            values,
            description: field.description.trim().to_owned(),
            ..field
        });
    }
    fields
}

/// `snake_case` from whatever the model wrote ("Urgency Level" → `urgency_level`); `None`
/// when nothing is left. A name starting with a digit gets `f_` in front.
pub fn normalise_name(name: &str) -> Option<String> {
    let mut out = String::new();
    let mut gap = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    if out.is_empty() {
        return None;
    }
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert_str(0, "f_");
    }
    out.truncate(64);
    Some(out)
}

/// The JSON Schema of one record with `fields` (all required; nullable ones accept `null`).
pub fn record_schema(fields: &[ProposedField]) -> Value {
    let mut properties = Map::new();
    for field in fields {
        let kind = match field.kind {
            FieldType::String => "string",
            FieldType::Integer => "integer",
            FieldType::Number => "number",
            FieldType::Boolean => "boolean",
        };
        let mut property = Map::new();
        property.insert(
            "type".into(),
            if field.nullable {
                json!([kind, "null"])
            } else {
                json!(kind)
            },
        );
        if !field.description.is_empty() {
            property.insert("description".into(), json!(field.description));
        }
        if !field.values.is_empty() {
            let mut values: Vec<Value> = field.values.iter().map(|v| json!(v)).collect();
            if field.nullable {
                values.push(Value::Null);
            }
            property.insert("enum".into(), Value::Array(values));
        }
        properties.insert(field.name.clone(), Value::Object(property));
    }
    let required: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

impl ItemProposal {
    /// The chunking to run with.
    pub fn chunking_config(&self) -> ChunkingConfig {
        match self.chunking {
            ProposedChunking::PerItem => ChunkingConfig::PerItem,
            ProposedChunking::Fixed { size } => ChunkingConfig::Fixed { size },
            ProposedChunking::TokenBudget { max_items } => ChunkingConfig::TokenBudget {
                max_items: Some(max_items),
                share_of_minute: crate::config::items::DEFAULT_SHARE_OF_MINUTE,
                max_input_tokens: crate::config::items::DEFAULT_MAX_INPUT_TOKENS,
            },
        }
    }

    /// The bytes the proposal is saved as.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }
}

/// Where a proposal was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedProposal {
    pub path: PathBuf,
    pub hash: String,
}

/// `<root>/.fanout/runs/<run_id>/item-plan.json`.
pub fn proposal_path(root: &Path, run_id: &RunId) -> PathBuf {
    crate::layout::run_dir(root, run_id).join("item-plan.json")
}

/// Save `proposal` for `run_id` (and its hash beside it), written whole or not at all.
pub fn save(
    root: &Path,
    run_id: &RunId,
    proposal: &ItemProposal,
) -> Result<SavedProposal, ProposeError> {
    let path = proposal_path(root, run_id);
    let failed = |path: &Path, error: std::io::Error| ProposeError::File {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let dir = path.parent().unwrap_or(root);
    let written = |error: crate::layout::LayoutError| failed(&error.path.clone(), error.io);
    crate::layout::ensure_dir(root, dir).map_err(written)?;
    let bytes = proposal.to_bytes();
    let hash = hash_bytes(&bytes);
    let hash_path = path.with_file_name("item-plan.sha256");
    let hash_line = format!("{hash}\n");
    crate::layout::write_atomic_all(&[(&path, &bytes), (&hash_path, hash_line.as_bytes())])
        .map_err(written)?;
    Ok(SavedProposal { path, hash })
}

/// A proposal read back, checked again (a reviewed file may have been edited by hand).
#[derive(Debug, Clone)]
pub struct LoadedProposal {
    pub proposal: ItemProposal,
    pub hash: String,
    /// The hash saved at review, if the file still has its `item-plan.sha256` beside it.
    pub reviewed_hash: Option<String>,
}

impl LoadedProposal {
    pub fn edited_since_review(&self) -> bool {
        self.reviewed_hash
            .as_ref()
            .is_some_and(|reviewed| *reviewed != self.hash)
    }
}

/// Largest item-plan file read.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Read an item plan for the workflow `workflow`; `given_schema` is the workflow's
/// `output_schema`, if it has one. Every field it carries is honoured or the plan is refused:
/// a plan of another workflow, or an `output_schema` that is not the one its `fields` (or
/// the workflow) give, is an error rather than silently ignored.
pub fn load(
    path: &Path,
    given_schema: Option<&Value>,
    workflow: &str,
) -> Result<LoadedProposal, ProposeError> {
    let error = |message: String| ProposeError::File {
        path: path.to_path_buf(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| error(e.to_string()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(error(format!(
            "{size} bytes; an item plan is at most {MAX_FILE_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let value: Value =
        serde_json::from_slice(&bytes).map_err(|e| error(format!("not valid JSON: {e}")))?;
    if value.get("kind").and_then(Value::as_str) != Some(KIND) {
        return Err(error(
            "not an item plan (`kind` is not \"item-plan\"); a repository plan cannot run item work"
                .to_owned(),
        ));
    }
    let saved: ItemProposal =
        serde_json::from_value(value).map_err(|e| error(format!("not an item plan: {e}")))?;
    // Checked like a fresh answer: the schema is rebuilt from the fields, never taken as is.
    let input = json!({
        "chunking": match saved.chunking {
            ProposedChunking::PerItem => "per_item",
            ProposedChunking::Fixed { .. } => "fixed",
            ProposedChunking::TokenBudget { .. } => "token_budget",
        },
        "chunk_size": match saved.chunking {
            ProposedChunking::PerItem => 1,
            ProposedChunking::Fixed { size } => size,
            ProposedChunking::TokenBudget { max_items } => max_items,
        },
        "instructions": saved.instructions,
        "fields": saved.fields,
        "rationale": saved.rationale,
    });
    if saved.workflow != workflow {
        return Err(error(format!(
            "an item plan of workflow `{}`, not of `{workflow}`",
            saved.workflow
        )));
    }
    let proposal = check_answer(&input, given_schema, &saved.workflow, saved.sampled)
        .map_err(|problems| error(problems.join("; ")))?;
    if proposal.output_schema != saved.output_schema {
        return Err(error(
            "its `output_schema` is not the one its `fields` (or the workflow's own \
             output_schema) give: the schema is built from `fields`, so edit those instead"
                .to_owned(),
        ));
    }
    let reviewed_hash = std::fs::read_to_string(path.with_file_name("item-plan.sha256"))
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    Ok(LoadedProposal {
        proposal,
        hash: hash_bytes(&bytes),
        reviewed_hash,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answer() -> Value {
        json!({
            "chunking": "fixed",
            "chunk_size": 25,
            "instructions": "Classify each ticket.",
            "rationale": "Tickets are short.",
            "fields": [
                {"name": "Category", "type": "string", "description": "area",
                 "values": ["billing", "bug", "billing", " "]},
                {"name": "urgency level", "type": "integer", "description": "1-5", "nullable": true}
            ]
        })
    }

    #[test]
    fn a_good_answer_becomes_a_schema_we_build() {
        let proposal = check_answer(&answer(), None, "w", 20).unwrap();
        assert_eq!(proposal.chunking, ProposedChunking::Fixed { size: 25 });
        let names: Vec<&str> = proposal.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["category", "urgency_level"]);
        assert_eq!(proposal.fields[0].values, ["billing", "bug"]);
        assert_eq!(
            proposal.output_schema["properties"]["urgency_level"]["type"],
            json!(["integer", "null"])
        );
        assert_eq!(
            proposal.output_schema["properties"]["category"]["enum"],
            json!(["billing", "bug"])
        );
        assert_eq!(proposal.output_schema["additionalProperties"], json!(false));
        // The runner accepts it as a record schema.
        crate::items::worker::OutputSchema::new(proposal.output_schema.clone()).unwrap();
    }

    #[test]
    fn every_problem_is_named() {
        let mut bad = answer();
        bad["chunk_size"] = json!(0);
        bad["instructions"] = json!("  ");
        bad["fields"] = json!([
            {"name": "id", "type": "string", "description": ""},
            {"name": "Score", "type": "number", "description": "", "values": ["a"]},
            {"name": "x", "type": "date", "description": ""},
            {"name": "!!!", "type": "string", "description": ""}
        ]);
        let problems = check_answer(&bad, None, "w", 20).unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "chunk_size must be between 1 and 200, found 0",
            "instructions are empty",
            "`id` is added",
            "only string fields may list values",
            "fields[2]",
            "has no letters or digits",
        ] {
            assert!(text.contains(expected), "{expected} not in:\n{text}");
        }
        let mut twice = answer();
        twice["fields"][1]["name"] = json!("CATEGORY");
        let problems = check_answer(&twice, None, "w", 20).unwrap_err();
        assert!(
            problems[0].contains("category is proposed twice"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_given_schema_wins_over_proposed_fields() {
        let given = json!({"type": "object", "properties": {"a": {"type": "string"}}});
        let mut input = answer();
        input.as_object_mut().unwrap().remove("fields");
        let proposal = check_answer(&input, Some(&given), "w", 3).unwrap();
        assert_eq!(proposal.output_schema, given);
        assert!(proposal.fields.is_empty());
    }

    #[test]
    fn samples_spread_over_the_input() {
        let items: Vec<Item> = (0..100)
            .map(|i| Item::new(format!("{i}"), json!(i)))
            .collect();
        let ids: Vec<&str> = sample_items(&items, 5)
            .iter()
            .map(|i| i.id.as_str())
            .collect();
        assert_eq!(ids, ["0", "24", "49", "74", "99"]);
        assert_eq!(sample_items(&items[..3], 5).len(), 3);
    }

    #[test]
    fn saved_plans_load_back_checked_and_edits_show() {
        let dir = tempfile::tempdir().unwrap();
        let proposal = check_answer(&answer(), None, "w", 20).unwrap();
        let saved = save(dir.path(), &"run-1".into(), &proposal).unwrap();
        let loaded = load(&saved.path, None, "w").unwrap();
        assert_eq!(loaded.proposal, proposal);
        assert!(!loaded.edited_since_review());
        // A hand edit that keeps it valid is noticed; one that breaks it is refused.
        let text = std::fs::read_to_string(&saved.path).unwrap();
        std::fs::write(&saved.path, text.replace("\"size\": 25", "\"size\": 30")).unwrap();
        let edited = load(&saved.path, None, "w").unwrap();
        assert!(edited.edited_since_review());
        assert_eq!(
            edited.proposal.chunking,
            ProposedChunking::Fixed { size: 30 }
        );
        std::fs::write(&saved.path, text.replace("\"size\": 25", "\"size\": 5000")).unwrap();
        let error = load(&saved.path, None, "w").unwrap_err().to_string();
        assert!(error.contains("chunk_size must be between"), "{error}");
        std::fs::write(&saved.path, "{\"subtasks\": []}").unwrap();
        let error = load(&saved.path, None, "w").unwrap_err().to_string();
        assert!(error.contains("not an item plan"), "{error}");
        // A plan of another workflow, and an edited schema, were accepted and ignored.
        std::fs::write(&saved.path, &text).unwrap();
        let error = load(&saved.path, None, "other").unwrap_err().to_string();
        assert!(error.contains("an item plan of workflow `w`"), "{error}");
        let mut value: Value = serde_json::from_str(&text).unwrap();
        value["output_schema"]["properties"]["extra"] = json!({"type": "string"});
        std::fs::write(&saved.path, value.to_string()).unwrap();
        let error = load(&saved.path, None, "w").unwrap_err().to_string();
        assert!(error.contains("edit those instead"), "{error}");
    }
}
