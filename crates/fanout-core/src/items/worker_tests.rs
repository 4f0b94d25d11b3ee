//! Unit tests of the worker request, answer checking, retry planning and the ledger's
//! accounting property.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::SystemTime;

use super::*;
use crate::items::chunk::{Decomposition, decompose};
use crate::provider::{ContentBlock, RateLimitSnapshot, Usage};

fn schema() -> OutputSchema {
    OutputSchema::new(json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["billing", "login", "bug"]},
            "product": {"type": ["string", "null"]},
        },
        "required": ["category", "product"],
        "additionalProperties": false,
    }))
    .unwrap()
}

fn items(n: usize) -> Vec<Item> {
    (1..=n)
        .map(|i| Item::new(format!("T-{i}"), json!({"subject": format!("ticket {i}")})))
        .collect()
}

fn chunk(n: usize) -> Chunk {
    Chunk::new(ChunkId::numbered(1, 1), items(n))
}

fn record(id: &str) -> Value {
    json!({"id": id, "category": "billing", "product": null})
}

fn response(content: Vec<ContentBlock>, stop_reason: StopReason) -> Response {
    Response {
        id: "msg_1".into(),
        model: "m".into(),
        content,
        stop_reason,
        usage: Usage::default(),
        rate_limits: RateLimitSnapshot::default(),
        request_id: None,
        received_at: SystemTime::UNIX_EPOCH,
    }
}

fn tool_answer(input: Value) -> Response {
    response(
        vec![ContentBlock::ToolUse {
            id: "toolu_1".into(),
            name: SUBMIT_TOOL.into(),
            input,
        }],
        StopReason::ToolUse,
    )
}

/// The text of a worker request's prompt (its shared head and its chunk's part).
fn prompt_text(request: &crate::provider::Request) -> String {
    request.messages[0]
        .content
        .iter()
        .filter_map(|block| match block {
            ContentBlock::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

fn spec() -> WorkerSpec {
    WorkerSpec {
        model: "claude-test".into(),
        max_tokens: 4096,
        instructions: "Classify each ticket.".into(),
        template: None,
        temperature: None,
        output: OutputRoute::Tool,
        prompt_caching: true,
    }
}

#[test]
fn output_schema_gets_a_required_string_id() {
    let schema = schema();
    assert_eq!(schema.record_schema()["properties"]["id"]["type"], "string");
    assert_eq!(schema.record_schema()["required"][0], "id");
    assert_eq!(
        schema.tool_input_schema()["properties"]["results"]["items"],
        *schema.record_schema()
    );
    assert_eq!(schema.property_names(), ["id", "category", "product"]);
    assert!(schema.errors(&record("T-1")).is_empty());
    // null where the schema allows it; not where it does not.
    let errors = schema.errors(&json!({"id": "T-1", "category": null, "product": null}));
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e.starts_with("/category: null")),
        "{errors:?}"
    );
    assert!(
        !schema
            .errors(&json!({"category": "bug", "product": null}))
            .is_empty()
    );

    assert!(matches!(
        OutputSchema::new(json!({"type": "array"})),
        Err(SchemaError::NotAnObject { .. })
    ));
    assert!(matches!(
        OutputSchema::new(json!({"properties": {"id": {"type": "integer"}}})),
        Err(SchemaError::IdNotString)
    ));
    assert!(matches!(
        OutputSchema::new(json!({"properties": {"x": {"type": "no-such-type"}}})),
        Err(SchemaError::Invalid { .. })
    ));
}

#[test]
fn request_lists_every_item_and_forces_the_tool() {
    let schema = schema();
    let chunk = chunk(3);
    let request = build_request(&spec(), &schema, &chunk).unwrap();
    assert_eq!(request.model, "claude-test");
    assert_eq!(
        request.tool_choice,
        Some(ToolChoice::Tool {
            name: SUBMIT_TOOL.into()
        })
    );
    assert_eq!(request.tools.len(), 1);
    assert_eq!(request.tools[0].input_schema, *schema.tool_input_schema());
    let text = &prompt_text(&request);
    assert!(text.starts_with("Classify each ticket."), "{text}");
    assert!(text.contains("Below are 3 items"), "{text}");
    for id in ["T-1", "T-2", "T-3"] {
        assert!(text.contains(&format!("<item id=\"{id}\">")), "{text}");
    }
    assert!(text.contains("{\"subject\":\"ticket 2\"}"), "{text}");

    let repair =
        build_repair_request(&spec(), &schema, &chunk, &["item \"T-2\": bad".into()]).unwrap();
    let text = &prompt_text(&repair);
    assert!(text.ends_with("- item \"T-2\": bad\n"), "{text}");
}

#[test]
fn json_schema_route_asks_for_structured_output() {
    let json_spec = WorkerSpec {
        output: OutputRoute::JsonSchema,
        ..spec()
    };
    let schema = schema();
    let request = build_request(&json_spec, &schema, &chunk(2)).unwrap();
    assert!(request.tools.is_empty() && request.tool_choice.is_none());
    let format = request.response_format.clone().expect("a response format");
    assert_eq!(format.schema, *schema.tool_input_schema());
    let text = &prompt_text(&request);
    assert!(text.contains("Reply with one JSON object"), "{text}");
    let tool = build_request(&spec(), &schema, &chunk(2)).unwrap();
    let text = &prompt_text(&tool);
    assert!(
        text.contains("Call the tool `submit_results` once, with exactly one record per item"),
        "{text}"
    );
}

#[test]
fn templates_are_checked() {
    assert_eq!(check_template("Do it: {{ items }}"), Ok(()));
    assert_eq!(check_template("Do it"), Err(TemplateError::NoItems));
    assert_eq!(
        check_template("{{items}} {{nope}}"),
        Err(TemplateError::Unknown {
            name: "nope".into()
        })
    );
    assert_eq!(
        check_template("{{items}} {{oops"),
        Err(TemplateError::Unclosed { at: 10 })
    );
    let custom = WorkerSpec {
        template: Some("[{{chunk_id}}] {{count}} for {{tool}}:\n{{items}}".into()),
        ..spec()
    };
    let request = build_request(&custom, &schema(), &chunk(1)).unwrap();
    let text = &prompt_text(&request);
    assert!(text.starts_with("[chunk-0001] 1 for submit_results:\n<item id=\"T-1\">"));
}

#[test]
fn answer_missing_three_of_thirty_unknown_duplicated_and_invalid() {
    let chunk = chunk(30);
    let mut results: Vec<Value> = (1..=30)
        .filter(|i| ![4, 5, 6].contains(i))
        .map(|i| record(&format!("T-{i}")))
        .collect();
    results.push(record("T-99")); // unknown
    results.push(json!({"id": "T-7", "category": "login", "product": null})); // T-7 twice
    results[0] = json!({"id": "T-1", "category": "weather", "product": null}); // invalid
    results.push(json!("not a record"));
    let outcome = check_results(&chunk, &json!({ "results": results }), &schema());
    assert_eq!(outcome.missing, ["T-4", "T-5", "T-6"]);
    assert_eq!(outcome.unknown, ["T-99"]);
    assert_eq!(outcome.duplicated, ["T-7"]);
    assert_eq!(outcome.invalid.len(), 1);
    assert_eq!(outcome.invalid[0].0, "T-1");
    assert!(outcome.invalid[0].1[0].contains("weather"), "{outcome:?}");
    assert_eq!(outcome.unattributed, ["results[29]: not an object"]);
    assert_eq!(outcome.accepted.len(), 30 - 3 - 1 - 1);
    assert!(!outcome.is_complete());
}

#[test]
fn numeric_ids_are_matched_as_text() {
    let chunk = Chunk::new(ChunkId::numbered(1, 1), vec![Item::new("7", json!("x"))]);
    let outcome = check_results(
        &chunk,
        &json!({"results": [{"id": 7, "category": "bug", "product": "Widget"}]}),
        &schema(),
    );
    assert!(outcome.is_complete(), "{outcome:?}");
    assert_eq!(outcome.accepted[0].1["id"], "7");
}

#[test]
fn unusable_answers_are_malformed_for_the_whole_chunk() {
    let chunk = chunk(2);
    let schema = schema();
    let cases = [
        (
            response(vec![ContentBlock::text("{not json")], StopReason::EndTurn),
            "not JSON",
        ),
        (
            response(
                vec![ContentBlock::text("Here you go!")],
                StopReason::MaxTokens,
            ),
            "max_tokens",
        ),
        (tool_answer(json!({"records": []})), "no `results`"),
        (tool_answer(json!({"results": {"id": "T-1"}})), "not a list"),
    ];
    for (answer, expected) in cases {
        let outcome = check_answer(&chunk, &answer, &schema);
        let rejected = outcome.malformed.as_ref().expect("malformed");
        assert!(rejected.reason.contains(expected), "{rejected:?}");
        assert_eq!(rejected.ids, ["T-1", "T-2"]);
        assert!(outcome.accepted.is_empty());
    }
    // The JSON-schema route: text holding the results, fenced or not.
    let text = format!(
        "```json\n{}\n```",
        json!({"results": [record("T-1"), record("T-2")]})
    );
    let outcome = check_answer(
        &chunk,
        &response(vec![ContentBlock::text(text)], StopReason::EndTurn),
        &schema,
    );
    assert!(outcome.is_complete(), "{outcome:?}");
    // Two tool calls are read together.
    let two = response(
        vec![
            ContentBlock::ToolUse {
                id: "a".into(),
                name: SUBMIT_TOOL.into(),
                input: json!({"results": [record("T-1")]}),
            },
            ContentBlock::ToolUse {
                id: "b".into(),
                name: SUBMIT_TOOL.into(),
                input: json!({"results": [record("T-2")]}),
            },
        ],
        StopReason::ToolUse,
    );
    assert!(check_answer(&chunk, &two, &schema).is_complete());
}

#[test]
fn plan_retry_resends_missing_alone_and_repairs_once() {
    let outcome = ChunkOutcome {
        accepted: vec![("A".into(), record("A"))],
        missing: vec!["B".into()],
        unknown: vec!["Z".into()],
        duplicated: vec!["C".into()],
        invalid: vec![("D".into(), vec!["/category: bad".into()])],
        ..ChunkOutcome::default()
    };
    let policy = ItemRetries::default();
    let fresh = plan_retry(&outcome, |_| Attempts::default(), &policy);
    assert_eq!(fresh.accept.len(), 1);
    assert_eq!(fresh.resend_alone, ["B"]);
    let repaired: Vec<_> = fresh.repair.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(repaired, ["D", "C"]);
    assert!(fresh.fail.is_empty());

    let used = Attempts {
        sent: 3,
        resends: 1,
        repairs: 1,
    };
    let spent = plan_retry(&outcome, |_| used, &policy);
    assert!(spent.resend_alone.is_empty() && spent.repair.is_empty());
    let failed: Vec<_> = spent.fail.iter().map(|f| (f.id.as_str(), f.kind)).collect();
    assert_eq!(
        failed,
        [
            ("B", FailureKind::Missing),
            ("D", FailureKind::Invalid),
            ("C", FailureKind::Duplicated)
        ]
    );
    assert!(spent.fail[1].reason.contains("/category: bad"));
}

#[test]
fn ledger_builds_retry_chunks_and_keeps_first_settlement() {
    let input = items(4);
    let mut ledger = Ledger::new(&input, ItemRetries::default()).unwrap();
    let chunk = Chunk::new(ChunkId::numbered(7, 9), input.clone());
    ledger.sent(&chunk).unwrap();
    let outcome = ChunkOutcome {
        accepted: vec![("T-1".into(), record("T-1"))],
        missing: vec!["T-2".into(), "T-3".into()],
        invalid: vec![("T-4".into(), vec!["/x: bad".into()])],
        ..ChunkOutcome::default()
    };
    let plan = ledger.apply(&outcome).unwrap();
    let retries = ledger.retry_chunks(&chunk.id, 1, &plan).unwrap();
    let shape: Vec<(&str, Vec<&str>, usize)> = retries
        .iter()
        .map(|r| {
            (
                r.chunk.id.as_str(),
                r.chunk.ids().collect(),
                r.problems.len(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("chunk-0007-r1-1", vec!["T-2"], 0),
            ("chunk-0007-r1-2", vec!["T-3"], 0),
            ("chunk-0007-r1-3", vec!["T-4"], 1),
        ]
    );
    assert_eq!(ledger.pending(), ["T-2", "T-3", "T-4"]);
    // A late answer for T-1 changes nothing.
    let late = ChunkOutcome {
        invalid: vec![("T-1".into(), vec!["late".into()])],
        ..ChunkOutcome::default()
    };
    assert_eq!(ledger.apply(&late).unwrap(), RetryPlan::default());
    assert_eq!(
        ledger.apply(&ChunkOutcome {
            missing: vec!["nope".into()],
            ..ChunkOutcome::default()
        }),
        Err(LedgerError::UnknownItem { id: "nope".into() })
    );
    ledger
        .fail(["T-2"], FailureKind::Oversized, "too large")
        .unwrap();
    let accounting = ledger.finish();
    let ids: Vec<_> = accounting
        .results
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(ids, ["T-1"]);
    let failures: Vec<_> = accounting
        .failures
        .iter()
        .map(|f| (f.id.as_str(), f.kind, f.attempts))
        .collect();
    assert_eq!(
        failures,
        [
            ("T-2", FailureKind::Oversized, 1),
            ("T-3", FailureKind::NotRun, 1),
            ("T-4", FailureKind::NotRun, 1)
        ]
    );
    assert_eq!(accounting.failures[0].input, *input[1].value);
}

// ---------------------------------------------------------------------------------------------
// The accounting property: whatever the model answers, every item ends exactly once.

/// What a scripted model does with one item of a chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Answer,
    Omit,
    Invalid,
    Twice,
}

/// What it does with a whole chunk.
#[derive(Debug, Clone, Copy)]
enum Whole {
    PerItem,
    Malformed,
    Errored,
}

struct Script<'a> {
    whole: &'a mut dyn FnMut() -> Whole,
    fate: &'a mut dyn FnMut() -> Fate,
    unknown: &'a mut dyn FnMut() -> bool,
}

/// The engine's loop in miniature: send, check the answer, apply, queue the retries.
/// Returns the accounting and the number of calls made.
fn run_job(input: &[Item], chunk_size: usize, script: &mut Script<'_>) -> (Accounting, usize) {
    let schema = schema();
    let policy = ItemRetries::default();
    let mut ledger = Ledger::new(input, policy).unwrap();
    let mut queue: Vec<(Chunk, u32)> = decompose(input, &Decomposition::Fixed { size: chunk_size })
        .unwrap()
        .into_iter()
        .map(|c| (c, 0))
        .collect();
    let mut calls = 0;
    while let Some((chunk, round)) = queue.pop() {
        calls += 1;
        assert!(calls < 1000, "the job does not end");
        ledger.sent(&chunk).unwrap();
        let outcome = match (script.whole)() {
            Whole::Malformed => check_answer(
                &chunk,
                &response(vec![ContentBlock::text("oops")], StopReason::EndTurn),
                &schema,
            ),
            Whole::Errored => ChunkOutcome::errored(&chunk, "HTTP 500"),
            Whole::PerItem => {
                let mut results = Vec::new();
                for id in chunk.ids() {
                    match (script.fate)() {
                        Fate::Answer => results.push(record(id)),
                        Fate::Omit => {}
                        Fate::Invalid => results.push(json!({"id": id, "category": 1})),
                        Fate::Twice => {
                            results.push(record(id));
                            results.push(record(id));
                        }
                    }
                }
                if (script.unknown)() {
                    results.push(record("not-an-item"));
                }
                check_answer(&chunk, &tool_answer(json!({ "results": results })), &schema)
            }
        };
        let plan = ledger.apply(&outcome).unwrap();
        for retry in ledger.retry_chunks(&chunk.id, round + 1, &plan).unwrap() {
            queue.push((retry.chunk, round + 1));
        }
    }
    (ledger.finish(), calls)
}

fn assert_exactly_once(input: &[Item], accounting: &Accounting) {
    let expected: Vec<&str> = input.iter().map(|i| i.id.as_str()).collect();
    let mut seen: Vec<&str> = accounting
        .results
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    seen.extend(accounting.failures.iter().map(|f| f.id.as_str()));
    let unique: BTreeSet<&str> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an item twice: {accounting:?}");
    assert_eq!(
        unique,
        expected.iter().copied().collect(),
        "items lost or invented: {accounting:?}"
    );
    let schema = schema();
    for (id, record) in &accounting.results {
        assert_eq!(record["id"], json!(id));
        assert!(schema.errors(record).is_empty());
    }
    for failure in &accounting.failures {
        assert!(!failure.reason.is_empty());
        assert_ne!(failure.kind, FailureKind::NotRun, "{failure:?}");
    }
}

#[test]
fn every_fate_sequence_of_one_item_is_accounted_once() {
    // One item, every sequence of up to four answers (the most attempts it can get is 3).
    let options: Vec<(Whole, Fate)> = vec![
        (Whole::PerItem, Fate::Answer),
        (Whole::PerItem, Fate::Omit),
        (Whole::PerItem, Fate::Invalid),
        (Whole::PerItem, Fate::Twice),
        (Whole::Malformed, Fate::Answer),
        (Whole::Errored, Fate::Answer),
    ];
    let input = items(1);
    let mut sequences = 0;
    for code in 0..options.len().pow(4) {
        let script: Vec<(Whole, Fate)> = (0..4)
            .map(|k| options[(code / options.len().pow(k)) % options.len()])
            .collect();
        let step = std::cell::Cell::new(0usize);
        let (accounting, calls) = run_job(
            &input,
            1,
            &mut Script {
                whole: &mut || {
                    step.set(step.get() + 1);
                    script[(step.get() - 1).min(3)].0
                },
                fate: &mut || script[(step.get().max(1) - 1).min(3)].1,
                unknown: &mut || false,
            },
        );
        assert!(calls <= 3, "{script:?}: {calls} calls");
        assert_exactly_once(&input, &accounting);
        sequences += 1;
    }
    assert_eq!(sequences, 1296);
}

#[test]
fn random_answers_over_many_chunks_are_accounted_once() {
    // A small SplitMix64, so the cases are reproducible without a dependency.
    let mut state = 0x5EED_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    for case in 0..300 {
        let n = 1 + (next() % 12) as usize;
        let size = 1 + (next() % 5) as usize;
        let input = items(n);
        let rolls: Vec<u64> = (0..4096).map(|_| next()).collect();
        let mut roll = rolls.into_iter().cycle();
        let mut roll2 = roll.clone().skip(7);
        let mut roll3 = roll.clone().skip(13);
        let (accounting, _) = run_job(
            &input,
            size,
            &mut Script {
                whole: &mut || match roll.next().unwrap_or(0) % 10 {
                    0 => Whole::Malformed,
                    1 => Whole::Errored,
                    _ => Whole::PerItem,
                },
                fate: &mut || match roll2.next().unwrap_or(0) % 8 {
                    0 => Fate::Omit,
                    1 => Fate::Invalid,
                    2 => Fate::Twice,
                    _ => Fate::Answer,
                },
                unknown: &mut || roll3.next().unwrap_or(0).is_multiple_of(5),
            },
        );
        assert_exactly_once(&input, &accounting);
        let _ = case;
    }
}

#[test]
fn resume_sends_only_what_is_still_pending() {
    let input = items(6);
    let chunks = decompose(&input, &Decomposition::Fixed { size: 3 }).unwrap();
    let mut ledger = Ledger::new(&input, ItemRetries::default()).unwrap();
    // From the run store: chunk 1 completed, one item of chunk 2 completed, one failed.
    for id in ["T-1", "T-2", "T-3", "T-5"] {
        ledger.restore_result(id, record(id)).unwrap();
    }
    ledger.fail(["T-6"], FailureKind::Missing, "gone").unwrap();
    let left = ledger.remaining(&chunks);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id.as_str(), "chunk-0002");
    assert_eq!(left[0].ids().collect::<Vec<_>>(), ["T-4"]);
    assert_eq!(ledger.counts(), (4, 1, 1));
    assert!(ledger.restore_result("nope", json!({})).is_err());
}
