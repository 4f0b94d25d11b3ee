//! Item work against the simulator: scripted faults in chunk answers (missing ids, an unknown
//! id, a duplicate, a schema-invalid record, malformed JSON, a worker that always fails), the
//! accounting that must hold whatever happens, proof from the exchange log that only what was
//! missing or rejected is sent again, the same job through the Message Batches API, and a
//! tree-shaped synthesis.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use fanout_core::items::Item;
use fanout_core::items::aggregate::{SynthesisStep, count_by, synthesis_request, tree_reduce};
use fanout_core::items::chunk::{Chunk, ChunkId, Decomposition, TokenBudget, decompose};
use fanout_core::items::input::{IdSource, InputSource, load};
use fanout_core::items::output::{Completion, OutputOptions, write_outputs};
use fanout_core::items::worker::{
    Accounting, ChunkOutcome, FailureKind, ItemRetries, Ledger, OutputRoute, OutputSchema,
    WorkerSpec, build_repair_request, build_request, check_answer,
};
use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::batch::{
    BatchClient, BatchOutcome, BatchRequest, PollPolicy, ProcessingStatus,
};
use fanout_core::provider::http::HttpConfig;
use fanout_core::provider::openai::OpenAiConfig;
use fanout_core::provider::{Attempt, Provider, Request};
use fanout_sim::{Exchange, Scenario, SimConfig, SimHandle};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{fleet, scenario_sim, start_sim};

fn schema() -> OutputSchema {
    OutputSchema::new(json!({
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": ["billing", "login", "bug", "other"]},
            "summary": {"type": ["string", "null"]},
        },
        "required": ["category", "summary"],
    }))
    .unwrap()
}

fn spec() -> WorkerSpec {
    WorkerSpec {
        model: "claude-test".into(),
        max_tokens: 8192,
        instructions: "Classify each support ticket.".into(),
        template: None,
        temperature: None,
        output: OutputRoute::Tool,
        prompt_caching: true,
    }
}

fn tickets(n: usize) -> Vec<Item> {
    (1..=n)
        .map(|i| {
            Item::new(
                format!("T-{i:02}"),
                json!({"subject": format!("Ticket number {i}"), "body": "Something is wrong."}),
            )
        })
        .collect()
}

fn record(id: &str) -> Value {
    json!({"id": id, "category": "billing", "summary": format!("about {id}")})
}

/// The scripted model. Rules are tried in order:
/// 1. the 30-item chunk: T-04, T-05, T-06 missing, T-99 unknown, T-07 twice, T-01 invalid;
/// 2. the 5-item chunk: malformed JSON text and no tool call;
/// 3. T-05 on its own: always a server error (a worker that always fails);
/// 4. the repair of T-01 and T-07: valid records;
/// 5. the repair of the 5-item chunk: valid records;
/// 6. any single item: a valid record with that id.
fn scenario() -> Scenario {
    let mut first: Vec<Value> = (1..=30)
        .filter(|i| ![4, 5, 6].contains(i))
        .map(|i| record(&format!("T-{i:02}")))
        .collect();
    first[0] = json!({"id": "T-01", "category": "weather", "summary": null});
    first.push(record("T-99"));
    first.push(json!({"id": "T-07", "category": "login", "summary": "again"}));
    let repair: Vec<Value> = ["T-01", "T-07"].iter().map(|id| record(id)).collect();
    let second: Vec<Value> = (31..=35).map(|i| record(&format!("T-{i:02}"))).collect();
    let yaml = format!(
        r#"rules:
  - name: chunk-30
    match: {{tool: submit_results, last_user: "Below are 30 items"}}
    tool_use: {{name: submit_results, input: {{results: {first}}}}}
  - name: chunk-5-malformed
    match: {{tool: submit_results, last_user: "Below are 5 items", attempt: 0}}
    times: 1
    text: "{{\"results\": [{{\"id\": \"T-31\", oops"
  - name: always-fails
    match: {{tool: submit_results, last_user: "<item id=\"T-05\">"}}
    error: {{status: 400, type: invalid_request_error, message: "scripted failure"}}
  - name: repair-1-7
    match: {{tool: submit_results, last_user: "<item id=\"T-01\">[\\s\\S]*was rejected"}}
    tool_use: {{name: submit_results, input: {{results: {repair}}}}}
  - name: repair-chunk-5
    match: {{tool: submit_results, last_user: "<item id=\"T-31\">[\\s\\S]*was rejected"}}
    tool_use: {{name: submit_results, input: {{results: {second}}}}}
  - name: single
    match: {{tool: submit_results, last_user: "Below are 1 items[\\s\\S]*<item id=\"(?P<id>T-\\d+)\">"}}
    tool_use: {{name: submit_results, input: {{results: [{{id: "${{id}}", category: bug, summary: "alone"}}]}}}}
"#,
        first = Value::Array(first),
        repair = Value::Array(repair),
        second = Value::Array(second),
    );
    Scenario::from_yaml(&yaml, "items.yaml").unwrap()
}

async fn start(batch_delay: Duration) -> SimHandle {
    start_sim(SimConfig {
        scenario: Some(scenario()),
        batch_delay,
        ..SimConfig::default()
    })
    .await
}

fn config(sim: &SimHandle) -> AnthropicConfig {
    AnthropicConfig {
        base_url: sim.base_url(),
        // No connection reuse: paused-time tests must not wait on a delayed ACK.
        http: HttpConfig {
            request_timeout: Duration::from_secs(30),
            max_idle_per_host: 0,
            ..HttpConfig::default()
        },
        ..AnthropicConfig::new("sk-test")
    }
}

/// How a round of requests is sent.
enum Mode<'a> {
    Direct(&'a AnthropicProvider),
    Batch(&'a BatchClient),
}

/// Send one round; the answers by chunk id (an error as its text).
async fn send_round(
    mode: &Mode<'_>,
    requests: Vec<(ChunkId, Request)>,
) -> HashMap<ChunkId, Result<fanout_core::provider::Response, String>> {
    let mut answers = HashMap::new();
    match mode {
        Mode::Direct(provider) => {
            for (id, request) in requests {
                let answer = provider
                    .send(&request, Attempt::default(), false)
                    .await
                    .map_err(|error| error.to_string());
                answers.insert(id, answer);
            }
        }
        Mode::Batch(client) => {
            let batch: Vec<BatchRequest> = requests
                .iter()
                .map(|(id, request)| BatchRequest {
                    custom_id: id.to_string(),
                    request: request.clone(),
                })
                .collect();
            let created = client.create(&batch).await.unwrap();
            assert_eq!(created.processing_status, ProcessingStatus::InProgress);
            let policy = PollPolicy {
                initial: Duration::from_secs(30),
                max: Duration::from_secs(120),
                factor: 2.0,
                timeout: Some(Duration::from_secs(3600)),
            };
            let ended = client
                .wait(&created.id, &policy, &CancellationToken::new())
                .await
                .unwrap();
            let mut results = client.results(&ended).await.unwrap();
            for (id, _) in requests {
                let answer = match results.remove(id.as_str()) {
                    Some(BatchOutcome::Succeeded(response)) => Ok(*response),
                    Some(BatchOutcome::Errored {
                        error_type,
                        message,
                    }) => Err(format!("{error_type}: {message}")),
                    other => Err(format!("no answer: {other:?}")),
                };
                answers.insert(id, answer);
            }
        }
    }
    answers
}

/// The engine's loop in miniature: rounds of chunks until the ledger settles everything.
async fn run_job(mode: Mode<'_>, items: &[Item], chunks: Vec<Chunk>) -> (Accounting, u32) {
    let schema = schema();
    let mut ledger = Ledger::new(items, ItemRetries::default()).unwrap();
    let mut queue: Vec<(Chunk, Vec<String>)> = chunks.into_iter().map(|c| (c, vec![])).collect();
    let mut round = 0;
    while !queue.is_empty() {
        round += 1;
        assert!(round < 10, "the job does not end");
        let requests = queue
            .iter()
            .map(|(chunk, problems)| {
                let request = if problems.is_empty() {
                    build_request(&spec(), &schema, chunk)
                } else {
                    build_repair_request(&spec(), &schema, chunk, problems)
                };
                (chunk.id.clone(), request.unwrap())
            })
            .collect();
        let mut answers = send_round(&mode, requests).await;
        let mut next = Vec::new();
        for (chunk, _) in std::mem::take(&mut queue) {
            ledger.sent(&chunk).unwrap();
            let outcome = match answers.remove(&chunk.id).unwrap() {
                Ok(response) => check_answer(&chunk, &response, &schema),
                Err(error) => ChunkOutcome::errored(&chunk, error),
            };
            let plan = ledger.apply(&outcome).unwrap();
            for retry in ledger.retry_chunks(&chunk.id, round, &plan).unwrap() {
                next.push((retry.chunk, retry.problems));
            }
        }
        queue = next;
    }
    (ledger.finish(), round)
}

/// The item ids each model request carried, in order.
fn sent_ids(exchanges: &[Exchange]) -> Vec<Vec<String>> {
    exchanges
        .iter()
        .filter(|e| {
            ["messages", "batch_messages", "batch_chat_completions"].contains(&e.endpoint.as_str())
        })
        .map(|e| item_ids(&user_text(&e.request)))
        .collect()
}

/// The first user message's text, from an Anthropic or an OpenAI request body.
fn user_text(request: &Value) -> String {
    let user = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "user")
        .unwrap();
    match &user["content"] {
        Value::String(text) => text.clone(),
        // A worker's prompt is the shared head (instructions) and the chunk's own part.
        blocks => blocks
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|block| block["text"].as_str())
            .collect(),
    }
}

fn item_ids(text: &str) -> Vec<String> {
    text.split("<item id=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next().map(str::to_owned))
        .collect()
}

fn job() -> (Vec<Item>, Vec<Chunk>) {
    let items = tickets(35);
    let mut chunks = decompose(&items[..30], &Decomposition::Fixed { size: 30 }).unwrap();
    chunks.push(Chunk::new(ChunkId::numbered(2, 2), items[30..].to_vec()));
    (items, chunks)
}

fn check_accounting(items: &[Item], accounting: &Accounting) {
    let mut seen: Vec<&str> = accounting
        .results
        .iter()
        .map(|(id, _)| id.as_str())
        .collect();
    seen.extend(accounting.failures.iter().map(|f| f.id.as_str()));
    let unique: BTreeSet<&str> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an item twice");
    assert_eq!(unique, items.iter().map(|i| i.id.as_str()).collect());
    let schema = schema();
    for (_, record) in &accounting.results {
        assert!(schema.errors(record).is_empty(), "{record}");
    }
}

#[tokio::test]
async fn chunk_faults_are_accounted_and_only_what_failed_is_sent_again() {
    let sim = start(Duration::ZERO).await;
    let provider = AnthropicProvider::new(config(&sim)).unwrap();
    let (items, chunks) = job();
    let (accounting, rounds) = run_job(Mode::Direct(&provider), &items, chunks).await;
    check_accounting(&items, &accounting);
    assert_eq!(rounds, 3);

    // 34 results, T-05 failed with its reason; the fixed items carry their repaired records.
    assert_eq!(accounting.results.len(), 34);
    let results: BTreeMap<&str, &Value> = accounting
        .results
        .iter()
        .map(|(id, r)| (id.as_str(), r))
        .collect();
    assert_eq!(results["T-01"]["category"], "billing");
    assert_eq!(results["T-04"]["summary"], "alone");
    assert_eq!(results["T-07"]["summary"], "about T-07");
    assert_eq!(results["T-33"]["summary"], "about T-33");
    assert_eq!(accounting.failures.len(), 1);
    let failure = &accounting.failures[0];
    assert_eq!(
        (failure.id.as_str(), failure.kind),
        ("T-05", FailureKind::Errored)
    );
    assert!(failure.reason.contains("scripted failure"), "{failure:?}");
    assert_eq!(failure.attempts, 3);

    // What we sent: the forced tool, with `id` required in each record.
    let exchanges = sim.exchanges();
    let first = &exchanges[0].request;
    assert_eq!(
        first["tool_choice"],
        json!({"type": "tool", "name": "submit_results"})
    );
    assert_eq!(first["tools"][0]["name"], "submit_results");
    let record_schema = &first["tools"][0]["input_schema"]["properties"]["results"]["items"];
    assert_eq!(record_schema["required"][0], "id");
    assert!(
        user_text(&exchanges[6].request).contains("was rejected. Answer again, fixing these problems:\n- item \"T-31\": the answer did not call submit_results")
    );

    // What was sent: each chunk once; then T-04, T-05, T-06 alone, the repair of T-01 + T-07
    // and of the malformed 5-item chunk; then T-05's repair. Nothing else was sent again.
    let sent = sent_ids(&sim.exchanges());
    let all_35: Vec<String> = items[..30].iter().map(|i| i.id.clone()).collect();
    let chunk_2: Vec<String> = items[30..].iter().map(|i| i.id.clone()).collect();
    let expected: Vec<Vec<String>> = vec![
        all_35,
        chunk_2.clone(),
        vec!["T-04".into()],
        vec!["T-05".into()],
        vec!["T-06".into()],
        vec!["T-01".into(), "T-07".into()],
        chunk_2,
        vec!["T-05".into()],
    ];
    assert_eq!(sent, expected);
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for id in sent.iter().flatten() {
        *times.entry(id.clone()).or_default() += 1;
    }
    for item in &items[..30] {
        let expected = match item.id.as_str() {
            "T-05" => 3,
            "T-01" | "T-04" | "T-06" | "T-07" => 2,
            _ => 1,
        };
        assert_eq!(times[&item.id], expected, "{}", item.id);
    }

    // Outputs: results in input order, the failure with its reason, counts in the summary.
    let dir = tempfile::tempdir().unwrap();
    let options = OutputOptions {
        count_by: vec!["category".into()],
        ..OutputOptions::default()
    };
    let (paths, summary) = write_outputs(dir.path(), &accounting, &options).unwrap();
    assert_eq!(summary.status, Completion::Partial);
    assert_eq!((summary.succeeded, summary.failed), (34, 1));
    assert_eq!(
        summary.counts[0].1,
        [("billing".to_owned(), 32), ("bug".to_owned(), 2)]
    );
    let lines = std::fs::read_to_string(paths.results).unwrap();
    assert_eq!(lines.lines().count(), 34);
    let first: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["id"], "T-01");
    let failed = std::fs::read_to_string(paths.failed).unwrap();
    assert!(failed.contains("\"reason\":\"errored\""), "{failed}");
    sim.shutdown().await;
}

/// The job through `client`'s batch API (on `sim`) settles exactly as direct calls do: the
/// same results, the same failures with the same attempts, three batches (one per round), each
/// request sent once and the same requests as the direct run, all on `endpoint`.
async fn same_accounting_as_direct(client: &BatchClient, sim: &SimHandle, endpoint: &str) {
    let (items, chunks) = job();
    let (batch, rounds) = run_job(Mode::Batch(client), &items, chunks.clone()).await;
    check_accounting(&items, &batch);
    assert_eq!(rounds, 3);

    let direct_sim = start(Duration::ZERO).await;
    let provider = AnthropicProvider::new(config(&direct_sim)).unwrap();
    let (direct, _) = run_job(Mode::Direct(&provider), &items, chunks).await;
    assert_eq!(batch.results, direct.results);
    let kinds = |a: &Accounting| -> Vec<(String, FailureKind, u32)> {
        a.failures
            .iter()
            .map(|f| (f.id.clone(), f.kind, f.attempts))
            .collect()
    };
    assert_eq!(kinds(&batch), kinds(&direct));

    let exchanges = sim.exchanges();
    assert!(exchanges.iter().all(|e| e.endpoint == endpoint));
    let mut batch_sent = sent_ids(&exchanges);
    let mut direct_sent = sent_ids(&direct_sim.exchanges());
    batch_sent.sort();
    direct_sent.sort();
    assert_eq!(batch_sent, direct_sent);
    let batch_ids: BTreeSet<&str> = exchanges
        .iter()
        .map(|e| e.request_id.split('/').next().unwrap())
        .collect();
    assert_eq!(batch_ids.len(), 3);
    direct_sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batch_mode_gives_the_same_accounting() {
    let sim = start(Duration::from_secs(600)).await;
    let client = BatchClient::new(config(&sim)).unwrap();
    same_accounting_as_direct(&client, &sim, "batch_messages").await;
    sim.shutdown().await;
}

fn openai_config(sim: &SimHandle) -> OpenAiConfig {
    OpenAiConfig {
        base_url: format!("{}/v1", sim.base_url()),
        http: config(sim).http,
        ..OpenAiConfig::new("sk-test")
    }
}

/// The same job through the OpenAI Batch API (input file upload, batch, output and error
/// files).
#[tokio::test(start_paused = true)]
async fn openai_batches_give_the_same_accounting() {
    let sim = start(Duration::from_secs(600)).await;
    let client = BatchClient::openai(openai_config(&sim)).unwrap();
    assert_eq!(client.provider(), "openai");
    same_accounting_as_direct(&client, &sim, "batch_chat_completions").await;
    sim.shutdown().await;
}

/// An OpenAI batch: a request the API refuses comes back errored (not lost), a cancelled batch
/// has no results, and a batch whose input file does not validate is an error naming the line.
#[tokio::test(start_paused = true)]
async fn openai_batch_errors_cancellation_and_refused_input() {
    let sim = start(Duration::from_secs(7200)).await;
    let client = BatchClient::openai(openai_config(&sim)).unwrap();
    let (_, chunks) = job();
    let good = build_request(&spec(), &schema(), &chunks[1]).unwrap();
    let mut bad = good.clone();
    bad.max_tokens = 0;
    let requests = [
        BatchRequest {
            custom_id: "good".into(),
            request: good,
        },
        BatchRequest {
            custom_id: "bad".into(),
            request: bad,
        },
    ];
    let created = client.create(&requests).await.unwrap();
    assert_eq!(created.processing_status, ProcessingStatus::InProgress);
    assert_eq!(created.request_counts.processing, 2);
    let policy = PollPolicy {
        initial: Duration::from_secs(600),
        max: Duration::from_secs(600),
        factor: 1.0,
        timeout: None,
    };
    let ended = client
        .wait(&created.id, &policy, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(ended.request_counts.succeeded, 1);
    assert_eq!(ended.request_counts.errored, 1);
    let results = client.results(&ended).await.unwrap();
    assert!(matches!(results["good"], BatchOutcome::Succeeded(_)));
    match &results["bad"] {
        BatchOutcome::Errored {
            error_type,
            message,
        } => {
            assert_eq!(error_type, "invalid_request_error");
            assert!(message.contains("max_completion_tokens"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let created = client.create(&requests[..1]).await.unwrap();
    let canceled = client.cancel(&created.id).await.unwrap();
    assert_eq!(canceled.processing_status, ProcessingStatus::Ended);
    assert!(client.results(&canceled).await.unwrap().is_empty());

    // A file that is not a valid batch input, uploaded by hand: the batch fails as a whole.
    let http = reqwest::Client::new();
    let base = sim.base_url();
    let body = "--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.jsonl\"\r\n\r\nnot json\n\r\n--b--\r\n";
    let file: Value = http
        .post(format!("{base}/v1/files"))
        .header("authorization", "Bearer sk-test")
        .header("content-type", "multipart/form-data; boundary=b")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = http
        .post(format!("{base}/v1/batches"))
        .header("authorization", "Bearer sk-test")
        .json(&json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let status = client.status(batch["id"].as_str().unwrap()).await.unwrap();
    assert_eq!(status.processing_status, ProcessingStatus::Ended);
    let refused = client.results(&status).await.unwrap_err().to_string();
    assert!(refused.contains("input line 1"), "{refused}");
    let missing = client.status("batch_nope").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batch_wait_times_out_and_can_be_cancelled() {
    let sim = start(Duration::from_secs(7200)).await;
    let client = BatchClient::new(config(&sim)).unwrap();
    let (_, chunks) = job();
    let request = build_request(&spec(), &schema(), &chunks[1]).unwrap();
    let created = client
        .create(&[BatchRequest {
            custom_id: chunks[1].id.to_string(),
            request,
        }])
        .await
        .unwrap();
    assert_eq!(created.request_counts.processing, 1);
    let policy = PollPolicy {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
        factor: 1.0,
        timeout: Some(Duration::from_secs(300)),
    };
    let waited = client
        .wait(&created.id, &policy, &CancellationToken::new())
        .await;
    assert!(
        matches!(
            &waited,
            Err(fanout_core::provider::batch::BatchError::TimedOut { .. })
        ),
        "{waited:?}"
    );
    let token = CancellationToken::new();
    token.cancel();
    let waited = client.wait(&created.id, &policy, &token).await;
    assert!(matches!(
        waited,
        Err(fanout_core::provider::batch::BatchError::Cancelled { .. })
    ));
    let canceled = client.cancel(&created.id).await.unwrap();
    assert_eq!(canceled.processing_status, ProcessingStatus::Ended);
    let results = client.results(&canceled).await.unwrap();
    assert_eq!(results[chunks[1].id.as_str()], BatchOutcome::Canceled);
    let missing = client.status("msgbatch_nope").await.unwrap_err();
    assert_eq!(missing.status(), Some(404));
    sim.shutdown().await;
}

#[tokio::test]
async fn json_schema_route_reads_records_from_the_reply_text() {
    let records: Vec<Value> = ["T-01", "T-02", "T-03"]
        .iter()
        .map(|id| record(id))
        .collect();
    let text = json!({ "results": records }).to_string();
    let yaml = format!(
        "rules:\n  - match: {{last_user: \"Reply with one JSON object\"}}\n    text: {}\n",
        serde_json::to_string(&text).unwrap()
    );
    let sim = scenario_sim(&yaml).await;
    let provider = AnthropicProvider::new(config(&sim)).unwrap();
    let spec = WorkerSpec {
        output: OutputRoute::JsonSchema,
        ..spec()
    };
    let chunk = Chunk::new(ChunkId::numbered(1, 1), tickets(3));
    let request = build_request(&spec, &schema(), &chunk).unwrap();
    let response = provider
        .send(&request, Attempt::default(), false)
        .await
        .unwrap();
    let outcome = check_answer(&chunk, &response, &schema());
    assert!(outcome.is_complete(), "{outcome:?}");
    assert_eq!(outcome.accepted.len(), 3);
    let sent = &sim.exchanges()[0].request;
    assert_eq!(sent["output_config"]["format"]["type"], "json_schema");
    assert!(sent.get("tools").is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn synthesis_reduces_in_a_tree_through_the_simulator() {
    let sim = scenario_sim(
        "rules:\n  - match: {last_user: \"summaries of parts\"}\n    text: \"FINAL\"\n  - text: \"partial summary\"\n",
    )
    .await;
    let provider = AnthropicProvider::new(config(&sim)).unwrap();
    let parts: Vec<String> = (0..10)
        .map(|i| format!("{i}: {}", "x".repeat(100)))
        .collect();
    let result = tree_reduce(parts, 100, |step: SynthesisStep| {
        let provider = &provider;
        async move {
            let request = synthesis_request("claude-test", 1000, "Summarise the findings.", &step);
            provider
                .send(&request, Attempt::default(), false)
                .await
                .map(|response| response.text())
        }
    })
    .await
    .unwrap();
    assert_eq!(result, "FINAL");
    // 10 parts of ~34 tokens, 2 per call under 100: 5 calls, then one over the summaries.
    let calls: Vec<usize> = sim
        .exchanges()
        .iter()
        .map(|e| {
            e.request["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
                .matches("<part n=")
                .count()
        })
        .collect();
    assert_eq!(calls, [2, 2, 2, 2, 2, 5]);
    sim.shutdown().await;
}

#[test]
fn the_ticket_example_loads_chunks_and_counts() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets");
    let source = InputSource::Jsonl(dir.join("tickets.jsonl"));
    let items = load(&source, &IdSource::Field("id".into()))
        .unwrap()
        .strict()
        .unwrap();
    assert!(items.len() >= 300, "{}", items.len());
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("schema.json")).unwrap()).unwrap();
    let schema = OutputSchema::new(schema).unwrap();
    assert_eq!(schema.property_names()[0], "id");
    let chunks = decompose(
        &items,
        &Decomposition::TokenBudget(TokenBudget {
            max_input_tokens: 180_000,
            overhead_tokens: 2_000,
            input_tokens_per_minute: Some(400_000),
            share_of_minute: 0.02,
            max_items: Some(30),
        }),
    )
    .unwrap();
    assert!(chunks.len() >= 10, "{}", chunks.len());
    assert_eq!(
        chunks.iter().map(|c| c.items.len()).sum::<usize>(),
        items.len()
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c.oversized && c.estimated_tokens <= 6_000)
    );
    // The data is varied: several products and channels.
    let values: Vec<&Value> = items.iter().map(|i| i.value.as_ref()).collect();
    assert!(count_by(values.iter().copied(), "product").len() >= 5);
}

/// The same scripted faults driven through the real runner (`items::run::run`: scheduler,
/// fleet, ledger, journal, run store, outputs) rather than the loop above: every item once in
/// the results or the failures, failures with their reasons, and the exchange log shows that
/// only what was missing or rejected went out again.
#[tokio::test]
async fn the_runner_accounts_for_scripted_faults_and_resends_only_what_failed() {
    use fanout_core::config::Config;
    use fanout_core::items::run::{EventSink, ItemJob, RunOptions, run};
    use fanout_core::store::{AgentStatus, RunStatus, Store, StoreReader};
    use std::sync::Arc;

    let sim = start(Duration::ZERO).await;
    let root = tempfile::tempdir().unwrap();
    let workflow = format!(
        r#"workflow:
  name: scripted-faults
  max_parallel_agents: 4
  items:
    input: {{path: unused.jsonl}}
    chunking: {{strategy: fixed, size: 30}}
    worker:
      instructions: Classify each support ticket.
      output_schema: {schema}
"#,
        schema = schema().record_schema()
    );
    let config = Config::from_str(&workflow, root.path().join("faults.yaml")).unwrap();
    let items = tickets(35);
    let job = Arc::new(ItemJob::with_items(&config, items.clone()).unwrap());
    assert_eq!(
        job.chunks.iter().map(|c| c.items.len()).collect::<Vec<_>>(),
        [30, 5]
    );
    let fleet = fleet(&sim);
    let store = Store::open_in_repo(root.path()).unwrap();
    let sink: EventSink = Arc::new(|_| {});
    let report = run(
        job,
        fleet,
        store.clone(),
        RunOptions {
            root: root.path().to_path_buf(),
            resume: None,
            run_id: None,
            batch: None,
            poll: PollPolicy::default(),
            share: None,
        },
        CancellationToken::new(),
        sink,
    )
    .await
    .unwrap();
    store.close().await.unwrap();

    // Input items = results + failures, each exactly once; T-05 failed, with its reason.
    assert_eq!(report.status, RunStatus::Partial);
    assert_eq!(report.calls, 8);
    assert_eq!(
        (
            report.summary.items,
            report.summary.succeeded,
            report.summary.failed
        ),
        (35, 34, 1)
    );
    let lines = |path: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let results = lines(&report.paths.results);
    let failures = lines(&report.paths.failed);
    let mut seen: Vec<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    seen.extend(failures.iter().map(|f| f["id"].as_str().unwrap()));
    let unique: BTreeSet<&str> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "an item twice: {seen:?}");
    assert_eq!(unique, items.iter().map(|i| i.id.as_str()).collect());
    for record in &results {
        assert!(schema().errors(record).is_empty(), "{record}");
    }
    let by_id: BTreeMap<&str, &Value> = results
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(
        by_id["T-01"]["category"], "billing",
        "the invalid record was repaired"
    );
    assert_eq!(
        by_id["T-04"]["summary"], "alone",
        "a missing item was re-sent alone"
    );
    assert_eq!(
        by_id["T-07"]["summary"], "about T-07",
        "the duplicate was repaired"
    );
    assert!(!by_id.contains_key("T-99"), "the unknown id is dropped");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0]["id"], "T-05");
    assert_eq!(failures[0]["reason"], "errored");
    assert!(
        failures[0].to_string().contains("scripted failure"),
        "{}",
        failures[0]
    );

    // What went out: each chunk once; T-04, T-05, T-06 alone (the missing ids, nothing
    // else); the repair of T-01 + T-07 (invalid and duplicated) and of the malformed 5-item
    // chunk; T-05 once more. The chunks run concurrently, so compare as sets of requests.
    let mut sent = sent_ids(&sim.exchanges());
    sent.sort();
    let ids = |range: std::ops::RangeInclusive<usize>| -> Vec<String> {
        range.map(|i| format!("T-{i:02}")).collect()
    };
    let mut expected: Vec<Vec<String>> = vec![
        ids(1..=30),
        ids(31..=35),
        vec!["T-04".into()],
        vec!["T-05".into()],
        vec!["T-06".into()],
        vec!["T-01".into(), "T-07".into()],
        ids(31..=35),
        vec!["T-05".into()],
    ];
    expected.sort();
    assert_eq!(sent, expected);

    // The journal settled each item once; the store has one ended row per call.
    let run_dir = report.run_dir.clone();
    let settled: Vec<Value> = lines(&run_dir.join("settled.jsonl"));
    let mut journaled: Vec<String> = Vec::new();
    for line in &settled {
        for pair in line["results"].as_array().unwrap() {
            journaled.push(pair[0].as_str().unwrap().to_owned());
        }
        for failure in line["failures"].as_array().unwrap() {
            journaled.push(failure["id"].as_str().unwrap().to_owned());
        }
    }
    journaled.sort();
    assert_eq!(journaled, ids(1..=35));
    let rows = StoreReader::open_in_repo(root.path())
        .unwrap()
        .agent_runs(&report.run_id)
        .unwrap();
    assert_eq!(rows.len(), 8);
    assert!(rows.iter().all(|row| row.status.is_some()), "{rows:?}");
    let failed_rows = rows
        .iter()
        .filter(|row| row.status == Some(AgentStatus::Failure))
        .count();
    assert!(failed_rows >= 3, "{rows:?}");
    sim.shutdown().await;
}
