//! One worker call for one chunk, and what to make of its answer.
//!
//! - [`WorkerSpec`] + [`build_request`]: a self-contained request (no shared conversation)
//!   whose prompt lists the chunk's items with their ids and forces the tool
//!   [`SUBMIT_TOOL`] (or asks for the provider's JSON-schema output, [`OutputRoute`]), whose
//!   input is `{"results": [<record>]}`, each record valid against the workflow's output
//!   schema with a required `id` ([`OutputSchema`]).
//! - [`check_answer`]: parse the answer, validate each record against the schema (fields may be
//!   null where the schema allows it) and account for it against the chunk's input: a record
//!   for every item id, none unknown, none twice. The result is a [`ChunkOutcome`].
//! - [`plan_retry`]: a pure decision per outcome: missing items are re-sent alone, items whose
//!   record was invalid, duplicated or lost in a malformed or failed answer get one repair
//!   attempt (the problems are quoted in the new prompt), and what has used its attempts goes
//!   to the failures with a reason.
//! - [`Ledger`]: the per-item state across all chunks and retries. Whatever sequence of
//!   outcomes it is fed, [`Ledger::finish`] returns every input item exactly once, either in
//!   the results or in the failures.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Item;
use super::chunk::{Chunk, ChunkId};
pub use crate::config::item_output::{OutputRoute, OutputSchema, SchemaError};
use crate::config::item_template::render_template;
pub use crate::config::item_template::{TemplateError, check_template};
use crate::provider::{
    JsonSchemaFormat, Message, Request, Response, StopReason, ToolChoice, ToolSpec,
};

/// The tool every worker must call with its records.
pub const SUBMIT_TOOL: &str = "submit_results";

// ---------------------------------------------------------------------------------------------
// Prompt

/// The prompt around the items when the workflow gives none. Placeholders: `{{instructions}}`,
/// `{{items}}`, `{{count}}`, `{{chunk_id}}`, `{{tool}}` (the tool's name) and `{{answer_with}}`
/// (how to answer: call the tool, or reply with JSON, depending on [`OutputRoute`]).
pub const DEFAULT_TEMPLATE: &str = "{{instructions}}

Below are {{count}} items, each in an `item` element that carries its id. {{answer_with}}, \
with exactly one record per item, in any order. Copy each item's id exactly into the record's \
`id` field; do not invent ids and do not answer an item twice. When a field cannot be \
determined from the item, use null where the schema allows it.

{{items}}";

const SYSTEM: &str = "You are one worker in a batch job. You see only the items given to you \
and answer only in the form you are asked for.";

/// What a worker is asked to do, shared by every chunk of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub model: String,
    pub max_tokens: u32,
    /// The task, in the workflow's words ("Classify each support ticket…").
    pub instructions: String,
    /// A template with `{{items}}`; [`DEFAULT_TEMPLATE`] when `None`.
    pub template: Option<String>,
    pub temperature: Option<f32>,
    pub output: OutputRoute,
    /// Mark the prefix every chunk shares (tools with the schema, system, the instructions)
    /// for prompt caching (`workflow.prompt_caching`).
    pub prompt_caching: bool,
}

/// How one item appears in a prompt: `<item id="…">` + its text (a string value as it is,
/// anything else as compact JSON) + `</item>`.
pub fn render_item(item: &Item) -> String {
    let mut out = String::new();
    push_item(&mut out, item);
    out
}

/// [`render_item`], appended to `out` (no intermediate strings).
fn push_item(out: &mut String, item: &Item) {
    use std::fmt::Write as _;
    out.push_str("<item id=\"");
    if item.id.contains('"') {
        out.push_str(&item.id.replace('"', "&quot;"));
    } else {
        out.push_str(&item.id);
    }
    out.push_str("\">\n");
    match item.value.as_ref() {
        Value::String(text) => out.push_str(text),
        // Writing to a String cannot fail.
        other => {
            let _ = write!(out, "{other}");
        }
    }
    out.push_str("\n</item>\n");
}

/// The request for `chunk`.
pub fn build_request(
    spec: &WorkerSpec,
    schema: &OutputSchema,
    chunk: &Chunk,
) -> Result<Request, TemplateError> {
    build(spec, schema, chunk, &[])
}

/// The request for a repair attempt: the same prompt for these items, followed by what was
/// wrong with the previous answer.
pub fn build_repair_request(
    spec: &WorkerSpec,
    schema: &OutputSchema,
    chunk: &Chunk,
    problems: &[String],
) -> Result<Request, TemplateError> {
    build(spec, schema, chunk, problems)
}

fn build(
    spec: &WorkerSpec,
    schema: &OutputSchema,
    chunk: &Chunk,
    problems: &[String],
) -> Result<Request, TemplateError> {
    let template = spec.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
    // Where the text stops being the same for every chunk: the first place a chunk's own
    // items or id go. What comes before is a block of its own, the shared prefix.
    let mut shared_end: Option<usize> = None;
    let mut text = render_template(template, &mut |name, out| {
        use std::fmt::Write as _;
        if matches!(name, "items" | "chunk_id") && shared_end.is_none() {
            shared_end = Some(out.len());
        }
        match name {
            "instructions" => out.push_str(&spec.instructions),
            "items" => {
                for item in &chunk.items {
                    push_item(out, item);
                }
            }
            // Writing to a String cannot fail.
            "count" => {
                let _ = write!(out, "{}", chunk.items.len());
            }
            "chunk_id" => {
                let _ = write!(out, "{}", chunk.id);
            }
            "tool" => out.push_str(SUBMIT_TOOL),
            "answer_with" => match spec.output {
                OutputRoute::Tool => {
                    let _ = write!(out, "Call the tool `{SUBMIT_TOOL}` once");
                }
                OutputRoute::JsonSchema => out
                    .push_str("Reply with one JSON object `{\"results\": [...]}` and nothing else"),
            },
            _ => return false,
        }
        true
    })?;
    if !problems.is_empty() {
        text.push_str(
            "\n\nA previous answer for these items was rejected. Answer again, fixing these problems:\n",
        );
        for problem in problems {
            text.push_str("- ");
            text.push_str(problem);
            text.push('\n');
        }
    }
    // One call per chunk: only the shared prefix is worth a mark.
    let mut request = Request::new(spec.model.clone(), spec.max_tokens);
    request.cache_prefix = spec.prompt_caching;
    request.system = Some(SYSTEM.to_owned());
    request.temperature = spec.temperature;
    match shared_end.filter(|&end| end > 0 && end < text.len() && text.is_char_boundary(end)) {
        Some(end) => {
            let tail = text.split_off(end);
            request.messages.push(Message {
                role: crate::provider::Role::User,
                content: vec![
                    crate::provider::ContentBlock::text(text),
                    crate::provider::ContentBlock::text(tail),
                ],
            });
            request.shared_until = Some((0, 0));
        }
        None => request.messages.push(Message::user(text)),
    }
    match spec.output {
        OutputRoute::Tool => {
            request.tools.push(ToolSpec {
                name: SUBMIT_TOOL.to_owned(),
                description: "Submit one record per item.".to_owned(),
                input_schema: schema.tool_input_schema().clone(),
            });
            request.tool_choice = Some(ToolChoice::Tool {
                name: SUBMIT_TOOL.to_owned(),
            });
        }
        OutputRoute::JsonSchema => {
            request.response_format = Some(JsonSchemaFormat {
                name: "results".to_owned(),
                schema: schema.tool_input_schema().clone(),
            });
        }
    }
    Ok(request)
}

// ---------------------------------------------------------------------------------------------
// Checking an answer

/// A set of ids whose answer could not be used as a whole, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub reason: String,
    pub ids: Vec<String>,
}

/// What one answer for one chunk amounted to, item by item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChunkOutcome {
    /// Records that matched an item of the chunk once and are valid; `id` is always a string.
    pub accepted: Vec<(String, Value)>,
    /// Items of the chunk the answer has no record for.
    pub missing: Vec<String>,
    /// Ids in the answer that are not items of the chunk (their records are dropped).
    pub unknown: Vec<String>,
    /// Items answered more than once (none of their records is taken).
    pub duplicated: Vec<String>,
    /// Items whose record is not valid against the schema, with the errors.
    pub invalid: Vec<(String, Vec<String>)>,
    /// Records that could not be matched to any id (not an object, no usable `id`).
    pub unattributed: Vec<String>,
    /// The answer as a whole was unusable (no tool call, `results` not a list…): all the
    /// chunk's items.
    pub malformed: Option<Rejected>,
    /// The call itself failed (a provider error after its retries): all the chunk's items.
    pub errored: Option<Rejected>,
}

impl ChunkOutcome {
    /// The outcome of a call that failed.
    pub fn errored(chunk: &Chunk, reason: impl Into<String>) -> ChunkOutcome {
        ChunkOutcome {
            errored: Some(Rejected {
                reason: reason.into(),
                ids: chunk.ids().map(str::to_owned).collect(),
            }),
            ..ChunkOutcome::default()
        }
    }

    fn malformed(chunk: &Chunk, reason: impl Into<String>) -> ChunkOutcome {
        ChunkOutcome {
            malformed: Some(Rejected {
                reason: reason.into(),
                ids: chunk.ids().map(str::to_owned).collect(),
            }),
            ..ChunkOutcome::default()
        }
    }

    /// Every item of the chunk has a valid record.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.invalid.is_empty()
            && self.malformed.is_none()
            && self.errored.is_none()
    }
}

/// Account for a model's answer to `chunk`: the [`SUBMIT_TOOL`] call's input, or (for the
/// JSON-schema output route) a text answer holding `{"results": [...]}`.
pub fn check_answer(chunk: &Chunk, response: &Response, schema: &OutputSchema) -> ChunkOutcome {
    let calls: Vec<&Value> = response
        .tool_uses()
        .filter(|(_, name, _)| *name == SUBMIT_TOOL)
        .map(|(_, _, input)| input)
        .collect();
    match calls.as_slice() {
        [input] => check_results(chunk, input, schema),
        [] => {
            let text = response.text();
            let cut = response.stop_reason == StopReason::MaxTokens;
            match serde_json::from_str::<Value>(strip_fence(&text)) {
                Ok(value) if value.get("results").is_some() => check_results(chunk, &value, schema),
                _ if cut => ChunkOutcome::malformed(
                    chunk,
                    "the answer was cut at max_tokens before calling submit_results",
                ),
                Ok(_) => {
                    ChunkOutcome::malformed(chunk, format!("the answer did not call {SUBMIT_TOOL}"))
                }
                Err(error) => ChunkOutcome::malformed(
                    chunk,
                    format!(
                        "the answer did not call {SUBMIT_TOOL} and its text is not JSON ({error})"
                    ),
                ),
            }
        }
        several => {
            // Several calls: take them together, as if one list had been sent.
            let mut results = Vec::new();
            for input in several {
                match input.get("results").and_then(Value::as_array) {
                    Some(list) => results.extend(list.iter().cloned()),
                    None => {
                        return ChunkOutcome::malformed(
                            chunk,
                            format!("a {SUBMIT_TOOL} call has no `results` list"),
                        );
                    }
                }
            }
            check_results(chunk, &json!({ "results": results }), schema)
        }
    }
}

/// A ```json fenced block's content, or the text itself.
fn strip_fence(text: &str) -> &str {
    let trimmed = text.trim();
    trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|rest| rest.trim_end().strip_suffix("```"))
        .map_or(trimmed, str::trim)
}

/// Account for `{"results": [...]}` against `chunk`.
pub fn check_results(chunk: &Chunk, input: &Value, schema: &OutputSchema) -> ChunkOutcome {
    let Some(records) = input.get("results").and_then(Value::as_array) else {
        return ChunkOutcome::malformed(
            chunk,
            match input.get("results") {
                None => "the answer has no `results` list".to_owned(),
                Some(other) => format!(
                    "`results` is not a list but {}",
                    crate::provider::http::cut(&other.to_string(), 60)
                ),
            },
        );
    };
    let mut outcome = ChunkOutcome::default();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    let mut answer_order: Vec<String> = Vec::new();
    for (index, record) in records.iter().enumerate() {
        let id = match record.get("id") {
            Some(Value::String(id)) if !id.trim().is_empty() => id.trim().to_owned(),
            Some(Value::Number(number)) if number.is_i64() || number.is_u64() => number.to_string(),
            _ => {
                outcome.unattributed.push(format!(
                    "results[{index}]: {}",
                    if record.is_object() {
                        "no usable `id`"
                    } else {
                        "not an object"
                    }
                ));
                continue;
            }
        };
        let mut record = record.clone();
        record["id"] = Value::String(id.clone());
        let entry = by_id.entry(id.clone()).or_default();
        if entry.is_empty() {
            answer_order.push(id);
        }
        entry.push(record);
    }
    let chunk_ids: HashSet<&str> = chunk.ids().collect();
    for id in &answer_order {
        if !chunk_ids.contains(id.as_str()) {
            outcome.unknown.push(id.clone());
        }
    }
    for id in chunk.ids() {
        let mut records = by_id.remove(id).unwrap_or_default();
        match records.len() {
            0 => outcome.missing.push(id.to_owned()),
            1 => {
                let record = records.swap_remove(0);
                let errors = schema.errors(&record);
                if errors.is_empty() {
                    outcome.accepted.push((id.to_owned(), record));
                } else {
                    outcome.invalid.push((id.to_owned(), errors));
                }
            }
            _ => outcome.duplicated.push(id.to_owned()),
        }
    }
    outcome
}

// ---------------------------------------------------------------------------------------------
// Retry decisions

/// How many extra attempts an item gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRetries {
    /// Times a missing item is re-sent alone.
    pub resends: u32,
    /// Repair attempts for an invalid, duplicated, malformed or failed answer.
    pub repairs: u32,
}

impl Default for ItemRetries {
    fn default() -> Self {
        ItemRetries {
            resends: 1,
            repairs: 1,
        }
    }
}

/// Extra attempts an item has used so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attempts {
    /// Every time the item was sent (first try included).
    pub sent: u32,
    pub resends: u32,
    pub repairs: u32,
}

/// Why an item ended in the failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Never in an answer, also when sent alone.
    Missing,
    /// Its record never passed the schema.
    Invalid,
    /// Answered more than once, also on repair.
    Duplicated,
    /// The answers could not be read.
    Malformed,
    /// The calls failed.
    Errored,
    /// Too large for one call on its own.
    Oversized,
    /// The run ended before the item was settled.
    NotRun,
    /// An input line that is not an item (not JSON, a CSV row of the wrong width, not text).
    InvalidInput,
    /// An input record without a usable id.
    MissingId,
    /// An input record repeating an earlier record's id.
    DuplicateId,
    /// An input file that could not be read.
    Unreadable,
}

impl FailureKind {
    /// Whether sending it again could succeed (`--retry-failed`): not for input problems.
    pub fn retryable(self) -> bool {
        !matches!(
            self,
            FailureKind::InvalidInput
                | FailureKind::MissingId
                | FailureKind::DuplicateId
                | FailureKind::Unreadable
                | FailureKind::Oversized
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureKind::Missing => "missing",
            FailureKind::Invalid => "invalid",
            FailureKind::Duplicated => "duplicated",
            FailureKind::Malformed => "malformed",
            FailureKind::Errored => "errored",
            FailureKind::Oversized => "oversized",
            FailureKind::NotRun => "not_run",
            FailureKind::InvalidInput => "invalid_input",
            FailureKind::MissingId => "missing_id",
            FailureKind::DuplicateId => "duplicate_id",
            FailureKind::Unreadable => "unreadable",
        })
    }
}

/// An item given up on, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub id: String,
    pub kind: FailureKind,
    pub reason: String,
    /// Times the item was sent before it was given up on (kept in the journal so a resumed
    /// run writes the same `failed.jsonl`).
    #[serde(default)]
    pub attempts: u32,
}

/// An item to send again with the problem of its last answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repair {
    pub id: String,
    pub kind: FailureKind,
    pub problem: String,
}

/// What to do after one outcome.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RetryPlan {
    /// Records to keep.
    pub accept: Vec<(String, Value)>,
    /// Missing items, each to be sent in a chunk of its own.
    pub resend_alone: Vec<String>,
    /// Items to send together in one repair chunk, with the problems quoted.
    pub repair: Vec<Repair>,
    /// Items given up on.
    pub fail: Vec<Failure>,
}

/// Decide, for every item an outcome mentions, whether it is done, sent again or failed.
/// `used` tells the attempts each item has used before this outcome. Unknown ids and
/// unattributed records concern no item of the chunk and need no decision.
pub fn plan_retry(
    outcome: &ChunkOutcome,
    used: impl Fn(&str) -> Attempts,
    policy: &ItemRetries,
) -> RetryPlan {
    let mut plan = RetryPlan {
        accept: outcome.accepted.clone(),
        ..RetryPlan::default()
    };
    for id in &outcome.missing {
        let attempts = used(id);
        if attempts.resends < policy.resends {
            plan.resend_alone.push(id.clone());
        } else {
            plan.fail.push(Failure {
                id: id.clone(),
                kind: FailureKind::Missing,
                reason: format!(
                    "no record for this id in {} answer(s)",
                    attempts.sent.max(1)
                ),
                attempts: 0,
            });
        }
    }
    let mut problem = |id: &str, kind: FailureKind, problem: String| {
        let attempts = used(id);
        if attempts.repairs < policy.repairs {
            plan.repair.push(Repair {
                id: id.to_owned(),
                kind,
                problem,
            });
        } else {
            plan.fail.push(Failure {
                id: id.to_owned(),
                kind,
                reason: problem,
                attempts: 0,
            });
        }
    };
    for (id, errors) in &outcome.invalid {
        problem(
            id,
            FailureKind::Invalid,
            format!(
                "the record does not match the schema: {}",
                errors.join("; ")
            ),
        );
    }
    for id in &outcome.duplicated {
        problem(
            id,
            FailureKind::Duplicated,
            "the answer had more than one record for this id".to_owned(),
        );
    }
    for (rejected, kind) in [
        (&outcome.malformed, FailureKind::Malformed),
        (&outcome.errored, FailureKind::Errored),
    ] {
        if let Some(rejected) = rejected {
            for id in &rejected.ids {
                problem(id, kind, rejected.reason.clone());
            }
        }
    }
    plan
}

// ---------------------------------------------------------------------------------------------
// The ledger

/// A chunk to send again, with the problems to quote (empty for a plain re-send).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryChunk {
    pub chunk: Chunk,
    pub problems: Vec<String>,
}

/// A mistake in how the ledger was fed (an engine bug, not a model's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("item `{id}` is not in the input")]
    UnknownItem { id: String },
    #[error("duplicate item id `{id}` in the input")]
    DuplicateItem { id: String },
}

#[derive(Debug, Clone)]
enum State {
    Pending,
    Done(Value),
    Failed(Failure),
}

#[derive(Debug, Clone)]
struct Entry {
    item: Item,
    state: State,
    attempts: Attempts,
}

/// An input item given up on, with its input and attempts (a line of `failed.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedItem {
    pub id: String,
    pub kind: FailureKind,
    pub reason: String,
    pub attempts: u32,
    pub input: Value,
}

/// The end of a job: every input item once, in input order, in one of the two lists.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Accounting {
    pub results: Vec<(String, Value)>,
    pub failures: Vec<FailedItem>,
}

/// Per-item state of a job across chunks and retries.
#[derive(Debug, Clone)]
pub struct Ledger {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    policy: ItemRetries,
}

impl Ledger {
    pub fn new(items: &[Item], policy: ItemRetries) -> Result<Ledger, LedgerError> {
        let mut index = HashMap::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            if index.insert(item.id.clone(), position).is_some() {
                return Err(LedgerError::DuplicateItem {
                    id: item.id.clone(),
                });
            }
        }
        Ok(Ledger {
            entries: items
                .iter()
                .map(|item| Entry {
                    item: item.clone(),
                    state: State::Pending,
                    attempts: Attempts::default(),
                })
                .collect(),
            index,
            policy,
        })
    }

    fn position(&self, id: &str) -> Result<usize, LedgerError> {
        self.index
            .get(id)
            .copied()
            .ok_or_else(|| LedgerError::UnknownItem { id: id.to_owned() })
    }

    /// Count one send of each item of `chunk` (call when the request goes out).
    pub fn sent(&mut self, chunk: &Chunk) -> Result<(), LedgerError> {
        self.sent_ids(chunk.ids())
    }

    /// [`Ledger::sent`] by the items' ids (a call another process made).
    pub fn sent_ids<'a>(
        &mut self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), LedgerError> {
        for id in ids {
            let position = self.position(id)?;
            self.entries[position].attempts.sent += 1;
        }
        Ok(())
    }

    /// Settle what `outcome` settles and return the retry plan. Items that were already
    /// settled (a late or repeated answer) keep their first settlement and are left out of
    /// the plan.
    pub fn apply(&mut self, outcome: &ChunkOutcome) -> Result<RetryPlan, LedgerError> {
        self.apply_owned(outcome.clone())
    }

    /// [`Ledger::apply`] taking the outcome by value: its records are moved, not copied.
    pub fn apply_owned(&mut self, outcome: ChunkOutcome) -> Result<RetryPlan, LedgerError> {
        // Only items still pending take part.
        let mut pending = outcome;
        let keep = |id: &str| -> Result<bool, LedgerError> {
            let position = self.position(id)?;
            Ok(matches!(self.entries[position].state, State::Pending))
        };
        let filter_ids = |ids: &mut Vec<String>| -> Result<(), LedgerError> {
            let mut kept = Vec::with_capacity(ids.len());
            for id in ids.drain(..) {
                if keep(&id)? {
                    kept.push(id);
                }
            }
            *ids = kept;
            Ok(())
        };
        filter_ids(&mut pending.missing)?;
        filter_ids(&mut pending.duplicated)?;
        if let Some(rejected) = &mut pending.malformed {
            filter_ids(&mut rejected.ids)?;
        }
        if let Some(rejected) = &mut pending.errored {
            filter_ids(&mut rejected.ids)?;
        }
        let mut accepted = Vec::new();
        for (id, record) in pending.accepted.drain(..) {
            if keep(&id)? {
                accepted.push((id, record));
            }
        }
        let mut invalid = Vec::new();
        for (id, errors) in pending.invalid.drain(..) {
            if keep(&id)? {
                invalid.push((id, errors));
            }
        }
        pending.invalid = invalid;
        // An id settled twice within one outcome (e.g. both accepted and missing) would be a
        // malformed outcome; the first settlement wins below.
        // The accepted records go straight into the plan (plan_retry would copy them).
        let mut plan = plan_retry(&pending, |id| self.attempts(id), &self.policy);
        plan.accept = accepted;
        for (id, record) in &plan.accept {
            self.settle(id, State::Done(record.clone()))?;
        }
        for failure in &plan.fail {
            self.settle(&failure.id, State::Failed(failure.clone()))?;
        }
        for id in &plan.resend_alone {
            let position = self.position(id)?;
            self.entries[position].attempts.resends += 1;
        }
        for repair in &plan.repair {
            let position = self.position(&repair.id)?;
            self.entries[position].attempts.repairs += 1;
        }
        Ok(plan)
    }

    fn settle(&mut self, id: &str, state: State) -> Result<(), LedgerError> {
        let position = self.position(id)?;
        let entry = &mut self.entries[position];
        if matches!(entry.state, State::Pending) {
            entry.state = state;
        }
        Ok(())
    }

    /// Give up on pending items without asking a model (an oversized chunk, a cancelled run).
    pub fn fail(
        &mut self,
        ids: impl IntoIterator<Item = impl AsRef<str>>,
        kind: FailureKind,
        reason: &str,
    ) -> Result<(), LedgerError> {
        for id in ids {
            let id = id.as_ref();
            self.settle(
                id,
                State::Failed(Failure {
                    id: id.to_owned(),
                    kind,
                    reason: reason.to_owned(),
                    attempts: 0,
                }),
            )?;
        }
        Ok(())
    }

    /// The chunks a plan asks for: one per missing item, one repair chunk for the rest.
    /// `parent` and `round` make their ids (`chunk-0007-r1-1`, …).
    pub fn retry_chunks(
        &self,
        parent: &ChunkId,
        round: u32,
        plan: &RetryPlan,
    ) -> Result<Vec<RetryChunk>, LedgerError> {
        let mut chunks = Vec::new();
        for id in &plan.resend_alone {
            let item = self.entries[self.position(id)?].item.clone();
            chunks.push(RetryChunk {
                chunk: Chunk::new(parent.retry(round, chunks.len() + 1), vec![item]),
                problems: Vec::new(),
            });
        }
        if !plan.repair.is_empty() {
            let mut items = Vec::new();
            let mut problems = Vec::new();
            let mut seen = HashSet::new();
            for repair in &plan.repair {
                if seen.insert(repair.id.as_str()) {
                    items.push(self.entries[self.position(&repair.id)?].item.clone());
                }
                problems.push(format!("item \"{}\": {}", repair.id, repair.problem));
            }
            problems.dedup();
            chunks.push(RetryChunk {
                chunk: Chunk::new(parent.retry(round, chunks.len() + 1), items),
                problems,
            });
        }
        Ok(chunks)
    }

    /// Restore a result found in the run store when resuming (as if its answer had just been
    /// accepted). An item already settled keeps its first settlement.
    pub fn restore_result(&mut self, id: &str, record: Value) -> Result<(), LedgerError> {
        self.settle(id, State::Done(record))
    }

    /// A failure an earlier process of the run settled (from the journal), attempts kept.
    pub fn restore_failure(&mut self, failure: Failure) -> Result<(), LedgerError> {
        let id = failure.id.clone();
        self.settle(&id, State::Failed(failure))
    }

    /// What is left of `chunks` when resuming: each chunk cut down to its pending items (its id
    /// kept, so its retries keep their names); chunks with nothing pending are dropped, so no
    /// completed chunk is sent again.
    pub fn remaining(&self, chunks: &[Chunk]) -> Vec<Chunk> {
        chunks
            .iter()
            .filter_map(|chunk| {
                let items: Vec<Item> = chunk
                    .items
                    .iter()
                    .filter(|item| {
                        self.index.get(&item.id).is_some_and(|&position| {
                            matches!(self.entries[position].state, State::Pending)
                        })
                    })
                    .cloned()
                    .collect();
                if items.is_empty() {
                    None
                } else if items.len() == chunk.items.len() {
                    Some(chunk.clone())
                } else {
                    let mut cut = Chunk::new(chunk.id.clone(), items);
                    cut.oversized = chunk.oversized;
                    Some(cut)
                }
            })
            .collect()
    }

    /// Attempts used by an item (zero for an unknown id).
    pub fn attempts(&self, id: &str) -> Attempts {
        self.index
            .get(id)
            .map(|&position| self.entries[position].attempts)
            .unwrap_or_default()
    }

    /// Ids not settled yet, in input order.
    pub fn pending(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|entry| matches!(entry.state, State::Pending))
            .map(|entry| entry.item.id.as_str())
            .collect()
    }

    /// (succeeded, failed, pending) counts.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for entry in &self.entries {
            match entry.state {
                State::Done(_) => counts.0 += 1,
                State::Failed(_) => counts.1 += 1,
                State::Pending => counts.2 += 1,
            }
        }
        counts
    }

    /// Close the job: items still pending become failures of kind [`FailureKind::NotRun`].
    pub fn finish(self) -> Accounting {
        let mut accounting = Accounting::default();
        for entry in self.entries {
            let attempts = entry.attempts.sent;
            match entry.state {
                State::Done(record) => accounting.results.push((entry.item.id, record)),
                State::Failed(failure) => accounting.failures.push(FailedItem {
                    id: entry.item.id,
                    kind: failure.kind,
                    reason: failure.reason,
                    attempts: attempts.max(failure.attempts),
                    input: Arc::unwrap_or_clone(entry.item.value),
                }),
                State::Pending => accounting.failures.push(FailedItem {
                    id: entry.item.id,
                    kind: FailureKind::NotRun,
                    reason: "the run ended before this item was settled".to_owned(),
                    attempts,
                    input: Arc::unwrap_or_clone(entry.item.value),
                }),
            }
        }
        accounting
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
