//! OpenTelemetry traces: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, a live `--sim` run sends
//! its spans in OTLP/JSON to a collector on loopback (an axum server in the test), one trace
//! per run, `invoke_workflow` → `invoke_agent` → `chat` / `execute_tool`, with the GenAI
//! attributes, and the figures the store has.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::*;

/// A span's attributes as `key → value` (the OTLP `AnyValue` unwrapped to JSON).
fn attributes(span: &Value) -> HashMap<String, Value> {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|kv| {
            let value = &kv["value"];
            let value = if let Some(text) = value["stringValue"].as_str() {
                Value::from(text)
            } else if let Some(int) = value["intValue"].as_str() {
                Value::from(int.parse::<u64>().unwrap())
            } else if let Some(flag) = value["boolValue"].as_bool() {
                Value::from(flag)
            } else if let Some(items) = value["arrayValue"]["values"].as_array() {
                // Arrays of strings are all fanout sends.
                items
                    .iter()
                    .map(|item| item["stringValue"].clone())
                    .collect()
            } else {
                value["doubleValue"].clone()
            };
            (kv["key"].as_str().unwrap().to_owned(), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_sends_one_trace_of_genai_spans_to_the_collector() {
    // The collector: records every request body sent to /v1/traces.
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let metrics: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new().route(
        "/v1/metrics",
        axum::routing::post({
            let metrics = Arc::clone(&metrics);
            move |body: String| async move {
                metrics
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "{}"
            }
        }),
    );
    let app = app.route(
        "/v1/traces",
        axum::routing::post({
            let received = Arc::clone(&received);
            move |headers: axum::http::HeaderMap, body: String| async move {
                assert_eq!(headers["content-type"], "application/json");
                received
                    .lock()
                    .unwrap()
                    .push(serde_json::from_str(&body).unwrap());
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let work = super::reports::quickstart();
    let repo = work.path().join("repo");
    let output = tokio::task::spawn_blocking({
        let (work, repo) = (work.path().to_path_buf(), repo.clone());
        move || {
            let workflow = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/quickstart/workflow.yaml");
            Command::new(env!("CARGO_BIN_EXE_fanout"))
                .arg("run")
                .arg(workflow)
                .arg("--repo")
                .arg(repo)
                .arg("--sim")
                .current_dir(work)
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("traces sent to"), "{stderr}");

    let spans: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|request| {
            let resource = &request["resourceSpans"][0];
            assert!(
                resource["resource"]["attributes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|kv| kv["key"] == "service.name")
            );
            resource["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();

    // One trace, one root.
    let traces: std::collections::BTreeSet<&str> = spans
        .iter()
        .map(|span| span["traceId"].as_str().unwrap())
        .collect();
    assert_eq!(traces.len(), 1, "{traces:?}");
    assert_eq!(traces.iter().next().unwrap().len(), 32);
    // A root has no parent id: absent, or empty (OTLP/JSON writes the empty id as "").
    let roots: Vec<&Value> = spans
        .iter()
        .filter(|span| span.get("parentSpanId").is_none_or(|id| id == ""))
        .collect();
    assert_eq!(roots.len(), 1);
    let root = roots[0];
    assert_eq!(root["name"], "invoke_workflow quickstart");
    assert_eq!(attributes(root)["gen_ai.operation.name"], "invoke_workflow");
    let by_id: HashMap<&str, &Value> = spans
        .iter()
        .map(|span| (span["spanId"].as_str().unwrap(), span))
        .collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");
    for span in &spans {
        let (start, end): (u128, u128) = (
            span["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
            span["endTimeUnixNano"].as_str().unwrap().parse().unwrap(),
        );
        assert!(start <= end, "{span}");
    }

    // What the store has, to compare with.
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let run = &reader.runs().unwrap()[0];
    let run_id = run.run.run_id.clone();
    let rows = reader.agent_runs(&run_id).unwrap();
    let model_calls = reader
        .events(&run_id)
        .unwrap()
        .iter()
        .filter(|event| event.kind == "model_call")
        .count();
    let tool_calls = reader.run_tool_calls(&run_id).unwrap();
    let plan: Value = serde_json::from_slice(
        &std::fs::read(repo.join(format!(".fanout/runs/{run_id}/plan.json"))).unwrap(),
    )
    .unwrap();

    // invoke_agent: one per attempt, children of the root.
    let agents: Vec<&Value> = spans
        .iter()
        .filter(|span| {
            attributes(span).get("gen_ai.operation.name") == Some(&Value::from("invoke_agent"))
        })
        .collect();
    assert_eq!(agents.len(), rows.len());
    let mut agent_of_span: HashMap<&str, String> = HashMap::new();
    for span in &agents {
        let attrs = attributes(span);
        let agent_id = attrs["gen_ai.agent.id"].as_str().unwrap().to_owned();
        assert_eq!(span["name"], format!("invoke_agent {agent_id}"));
        assert_eq!(span["parentSpanId"], root["spanId"]);
        let row = rows.iter().find(|row| row.agent_id == *agent_id).unwrap();
        assert_eq!(attrs["gen_ai.request.model"], row.model.clone().unwrap());
        assert_eq!(attrs["gen_ai.provider.name"], "anthropic");
        assert_eq!(attrs["gen_ai.usage.input_tokens"], row.input_tokens);
        assert_eq!(attrs["gen_ai.usage.output_tokens"], row.output_tokens);
        assert_eq!(
            attrs["gen_ai.usage.cache_read.input_tokens"],
            row.cache_read_tokens
        );
        assert_eq!(
            attrs["gen_ai.usage.cache_creation.input_tokens"],
            row.cache_write_tokens
        );
        assert_eq!(attrs["fanout.status"], "success");
        assert!(!attrs.contains_key("error.type"));
        // Its declared write scope, as the reviewed plan has it.
        let task = plan["subtasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["task_id"] == agent_id.as_str())
            .unwrap();
        assert_eq!(attrs["fanout.scope"], task["scope"], "{agent_id}");
        agent_of_span.insert(span["spanId"].as_str().unwrap(), agent_id);
    }

    // chat: one per model call, under its agent's span; their tokens add up to the store's.
    let chats: Vec<&Value> = spans
        .iter()
        .filter(|span| attributes(span).get("gen_ai.operation.name") == Some(&Value::from("chat")))
        .collect();
    assert_eq!(chats.len(), model_calls);
    assert!(model_calls >= rows.len());
    let mut tokens: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for span in &chats {
        let attrs = attributes(span);
        let parent = span["parentSpanId"].as_str().unwrap();
        let agent_id = &agent_of_span[parent];
        assert_eq!(attrs["gen_ai.agent.id"], agent_id.as_str());
        assert_eq!(
            span["name"],
            format!("chat {}", attrs["gen_ai.request.model"].as_str().unwrap())
        );
        assert_eq!(attrs["gen_ai.provider.name"], "anthropic");
        assert_eq!(span["kind"], 3);
        // The cache split of the call, as the simulator answered it.
        assert!(
            attrs.contains_key("gen_ai.usage.cache_read.input_tokens"),
            "{attrs:?}"
        );
        assert!(
            attrs.contains_key("gen_ai.usage.cache_creation.input_tokens"),
            "{attrs:?}"
        );
        let entry = tokens.entry(agent_id.clone()).or_default();
        entry.0 += attrs["gen_ai.usage.input_tokens"].as_u64().unwrap();
        entry.1 += attrs["gen_ai.usage.output_tokens"].as_u64().unwrap();
    }
    for row in &rows {
        assert_eq!(
            tokens[row.agent_id.as_str()],
            (row.input_tokens, row.output_tokens),
            "{}",
            row.agent_id
        );
    }

    // execute_tool: one per tool call, under its agent's span.
    let tools: Vec<&Value> = spans
        .iter()
        .filter(|span| {
            attributes(span).get("gen_ai.operation.name") == Some(&Value::from("execute_tool"))
        })
        .collect();
    assert_eq!(tools.len(), tool_calls.len());
    assert!(!tools.is_empty());
    for span in &tools {
        let attrs = attributes(span);
        let tool = attrs["gen_ai.tool.name"].as_str().unwrap();
        assert_eq!(span["name"], format!("execute_tool {tool}"));
        let agent_id = &agent_of_span[span["parentSpanId"].as_str().unwrap()];
        assert!(
            tool_calls
                .iter()
                .any(|(agent, call)| agent.as_str() == agent_id && call.tool == tool),
            "{agent_id} {tool}"
        );
    }

    // The GenAI client metrics: one token-usage series per model and token type, whose counts
    // are the chat calls and whose sums are the tokens the store has.
    let metrics = metrics.lock().unwrap().clone();
    assert_eq!(metrics.len(), 1, "{metrics:?}");
    let instruments = metrics[0]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"]
        .as_array()
        .unwrap()
        .clone();
    let usage = instruments
        .iter()
        .find(|m| m["name"] == "gen_ai.client.token.usage")
        .unwrap();
    assert_eq!(usage["unit"], "{token}");
    let (mut calls, mut input, mut output) = (0u64, 0.0, 0.0);
    for point in usage["histogram"]["dataPoints"].as_array().unwrap() {
        let attrs: HashMap<String, Value> = point["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| {
                (
                    kv["key"].as_str().unwrap().to_owned(),
                    kv["value"]["stringValue"].clone(),
                )
            })
            .collect();
        let count: u64 = point["count"].as_str().unwrap().parse().unwrap();
        let buckets: u64 = point["bucketCounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(buckets, count);
        match attrs["gen_ai.token.type"].as_str().unwrap() {
            "input" => {
                calls += count;
                input += point["sum"].as_f64().unwrap();
            }
            _ => output += point["sum"].as_f64().unwrap(),
        }
    }
    assert_eq!(calls as usize, chats.len());
    let stored: (u64, u64) = rows.iter().fold((0, 0), |(i, o), row| {
        (i + row.input_tokens, o + row.output_tokens)
    });
    assert_eq!((input as u64, output as u64), stored);
    assert!(
        instruments
            .iter()
            .any(|m| m["name"] == "gen_ai.client.operation.duration" && m["unit"] == "s")
    );

    // The run's phases and its checkpoints, children of the root, as the store recorded them.
    let phases: Vec<&Value> = spans
        .iter()
        .filter(|span| attributes(span).contains_key("fanout.phase"))
        .collect();
    let names: Vec<&str> = phases.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert!(names.starts_with(&["agents", "verify"]), "{names:?}");
    let checkpoints: Vec<&Value> = spans
        .iter()
        .filter(|span| attributes(span).contains_key("fanout.checkpoint.seq"))
        .collect();
    let recorded = reader
        .events(&run_id)
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "checkpoint")
        .count();
    assert_eq!(checkpoints.len(), recorded);
    for span in phases.iter().chain(&checkpoints) {
        assert_eq!(span["parentSpanId"], root["spanId"], "{span}");
    }
    // The orchestrator's planning, before the agents: one span, from planning.json.
    let plans: Vec<&Value> = spans
        .iter()
        .filter(|span| span["name"] == "plan quickstart")
        .collect();
    assert_eq!(plans.len(), 1);
    let plan = attributes(plans[0]);
    assert_eq!(plans[0]["parentSpanId"], root["spanId"]);
    assert!(plan["fanout.plan.calls"].as_u64().unwrap() >= 1, "{plan:?}");
    assert!(
        plan["gen_ai.usage.input_tokens"].as_u64().unwrap() > 0,
        "{plan:?}"
    );
    assert_eq!(plan["gen_ai.provider.name"], "anthropic");
    assert!(plan.contains_key("gen_ai.request.model"));
    let first_agent = agents
        .iter()
        .map(|span| {
            span["startTimeUnixNano"]
                .as_str()
                .unwrap()
                .parse::<u128>()
                .unwrap()
        })
        .min()
        .unwrap();
    let plan_end: u128 = plans[0]["endTimeUnixNano"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        plan_end <= first_agent,
        "planning ends before the first agent starts"
    );
    assert_eq!(
        spans.len(),
        2 + agents.len() + chats.len() + tools.len() + phases.len() + checkpoints.len()
    );
}

/// `fanout run` of the quickstart with `--sim` in a fresh copy, with `OTEL_*` as given (and
/// no other OTLP setting from the environment of the test).
async fn run_quickstart_exporting(envs: Vec<(&'static str, String)>) -> std::process::Output {
    let work = super::reports::quickstart();
    tokio::task::spawn_blocking(move || {
        let workflow =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart/workflow.yaml");
        let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
        command
            .arg("run")
            .arg(workflow)
            .arg("--repo")
            .arg(work.path().join("repo"))
            .arg("--sim")
            .current_dir(work.path())
            .env_remove("ANTHROPIC_API_KEY");
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ] {
            command.env_remove(name);
        }
        command.envs(envs).output().unwrap()
    })
    .await
    .unwrap()
}

/// A collector that refuses the spans, and one that cannot be reached: a warning naming the
/// collector's status and answer, or the address, and the run's exit code stays 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_or_unreachable_collector_is_a_warning_not_a_failed_run() {
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(|| async {
            (
                axum::http::StatusCode::BAD_REQUEST,
                "spans rejected by policy",
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refusing = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let output =
        run_quickstart_exporting(vec![("OTEL_EXPORTER_OTLP_ENDPOINT", refusing.clone())]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: traces not sent: the trace collector at {refusing}/v1/traces answered 400: \
             spans rejected by policy"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("traces sent to"), "{stderr}");

    // A port nobody listens on (bound, then let go).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let output =
        run_quickstart_exporting(vec![("OTEL_EXPORTER_OTLP_ENDPOINT", unreachable.clone())]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: traces not sent: cannot send traces to {unreachable}/v1/traces"
        )),
        "{stderr}"
    );
}

/// An OTLP/JSON collector on loopback keeping every `/v1/traces` body; metrics are accepted
/// and dropped.
async fn json_collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(|| async { "{}" }))
        .route(
            "/v1/traces",
            axum::routing::post({
                let received = Arc::clone(&received);
                move |body: String| async move {
                    received
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str(&body).unwrap());
                    "{}"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (endpoint, received)
}

fn chat_spans(received: &[Value]) -> Vec<HashMap<String, Value>> {
    received
        .iter()
        .flat_map(|request| {
            request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|span| attributes(&span))
        .filter(|attrs| attrs.get("gen_ai.operation.name") == Some(&Value::from("chat")))
        .collect()
}

/// The quickstart run `--sim` with a collector, recording what the simulator received
/// (`--sim-record`); the opt-in set or not. Returns the work directory, the collector's
/// requests and the recorded exchanges.
async fn content_run(opt_in: bool) -> (tempfile::TempDir, Vec<Value>, Vec<Value>) {
    let (endpoint, received) = json_collector().await;
    let work = super::reports::quickstart();
    let record = work.path().join("exchanges.jsonl");
    let output = tokio::task::spawn_blocking({
        let (dir, record) = (work.path().to_path_buf(), record.clone());
        move || {
            let workflow = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples/quickstart/workflow.yaml");
            let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
            command
                .arg("run")
                .arg(workflow)
                .arg("--repo")
                .arg(dir.join("repo"))
                .arg("--sim")
                .arg("--sim-record")
                .arg(record)
                .current_dir(&dir)
                .env_remove("ANTHROPIC_API_KEY")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .env_remove("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json");
            if opt_in {
                command.env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true");
            }
            command.output().unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("traces sent to"), "{stderr}");
    let exchanges = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let received = received.lock().unwrap().clone();
    (work, received, exchanges)
}

/// Every file under `dir`, as bytes, with its path.
fn files_under(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
}

/// The user turn every agent's conversation opens with ends with this (the agent loop's
/// own words), so it is in the content of every agent call and nowhere else.
const PROMPT_TAIL: &str = "When done, call report_result.";

/// Without the opt-in: not a word of any prompt or answer in the store, the run's directory
/// or the spans; the same run with it does have them (so the probe can see them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_opt_in_no_message_content_is_kept_or_exported() {
    let (work, received, exchanges) = content_run(false).await;
    // The simulator did receive the words looked for.
    assert!(
        exchanges
            .iter()
            .any(|exchange| exchange["request"].to_string().contains(PROMPT_TAIL))
    );
    let repo = work.path().join("repo");
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let run_id = reader.runs().unwrap()[0].run.run_id.clone();
    let calls: Vec<_> = reader
        .events(&run_id)
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "model_call")
        .collect();
    assert!(!calls.is_empty());
    for call in &calls {
        assert!(call.payload.get("content").is_none(), "{}", call.payload);
    }
    let mut files = Vec::new();
    files_under(&repo.join(".fanout"), &mut files);
    for (path, bytes) in &files {
        assert!(
            !String::from_utf8_lossy(bytes).contains(PROMPT_TAIL),
            "{} holds prompt text",
            path.display()
        );
    }
    let chats = chat_spans(&received);
    assert_eq!(chats.len(), calls.len());
    for chat in &chats {
        for key in [
            "gen_ai.input.messages",
            "gen_ai.output.messages",
            "gen_ai.system_instructions",
        ] {
            assert!(!chat.contains_key(key), "{key} exported without the opt-in");
        }
    }
    for request in &received {
        assert!(!request.to_string().contains(PROMPT_TAIL));
    }
}

/// A message as `role: [part, …]` with each part as one line of text, whether it comes from
/// the GenAI conventions' shape (`{role, parts}`) or from the Anthropic wire
/// (`{role, content}`) the simulator recorded.
fn normalized(role: &str, parts: Vec<String>) -> String {
    format!("{role}: {}", parts.join(" | "))
}

fn genai_messages(text: &str) -> Vec<String> {
    let messages: Value = serde_json::from_str(text).unwrap();
    messages
        .as_array()
        .unwrap()
        .iter()
        .map(|message| {
            let parts = message["parts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|part| match part["type"].as_str().unwrap() {
                    "text" => format!("text {}", part["content"].as_str().unwrap()),
                    "tool_call" => format!(
                        "tool_call {} {} {}",
                        part["id"].as_str().unwrap(),
                        part["name"].as_str().unwrap(),
                        part["arguments"]
                    ),
                    "tool_call_response" => format!(
                        "tool_call_response {} {}",
                        part["id"].as_str().unwrap(),
                        part["response"].as_str().unwrap()
                    ),
                    other => panic!("unexpected part {other}"),
                })
                .collect();
            normalized(message["role"].as_str().unwrap(), parts)
        })
        .collect()
}

fn wire_parts(content: &Value) -> Vec<String> {
    match content {
        Value::String(text) => vec![format!("text {text}")],
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match block["type"].as_str().unwrap() {
                "text" => format!("text {}", block["text"].as_str().unwrap()),
                "tool_use" => format!(
                    "tool_call {} {} {}",
                    block["id"].as_str().unwrap(),
                    block["name"].as_str().unwrap(),
                    block["input"]
                ),
                "tool_result" => format!(
                    "tool_call_response {} {}",
                    block["tool_use_id"].as_str().unwrap(),
                    match &block["content"] {
                        Value::String(text) => text.clone(),
                        blocks => blocks
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|b| b["text"].as_str().unwrap().to_owned())
                            .collect::<String>(),
                    }
                ),
                other => panic!("unexpected block {other}"),
            })
            .collect(),
        other => panic!("unexpected content {other}"),
    }
}

/// What an exchange the simulator recorded sent and got back: the system prompt's parts, the
/// messages and the answer, normalized.
type Content = (Vec<String>, Vec<String>, Vec<String>);

fn exchange_content(exchange: &Value) -> Content {
    let request = &exchange["request"];
    let system = match &request["system"] {
        Value::String(text) => vec![text.clone()],
        Value::Null => Vec::new(),
        blocks => blocks
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["text"].as_str().unwrap().to_owned())
            .collect(),
    };
    let messages = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| normalized(m["role"].as_str().unwrap(), wire_parts(&m["content"])))
        .collect();
    let answer = vec![normalized(
        "assistant",
        wire_parts(&exchange["response"]["content"]),
    )];
    (system, messages, answer)
}

/// The same from a `chat` span's GenAI attributes.
fn span_content(chat: &HashMap<String, Value>) -> Content {
    let system: Value =
        serde_json::from_str(chat["gen_ai.system_instructions"].as_str().unwrap()).unwrap();
    let system = system
        .as_array()
        .unwrap()
        .iter()
        .map(|part| {
            assert_eq!(part["type"], "text");
            part["content"].as_str().unwrap().to_owned()
        })
        .collect();
    let messages = genai_messages(chat["gen_ai.input.messages"].as_str().unwrap());
    let output: Value =
        serde_json::from_str(chat["gen_ai.output.messages"].as_str().unwrap()).unwrap();
    assert!(
        ["stop", "tool_call"].contains(&output[0]["finish_reason"].as_str().unwrap()),
        "{output}"
    );
    (system, messages, genai_messages(&output.to_string()))
}

/// Each chat span's content is one of `sent`, a different one each.
fn assert_each_chat_is_an_exchange(chats: &[HashMap<String, Value>], sent: &[Content]) {
    let mut matched = vec![false; sent.len()];
    for chat in chats {
        let content = span_content(chat);
        let index = sent
            .iter()
            .position(|exchange| *exchange == content)
            .unwrap_or_else(|| panic!("no exchange sent {content:?}"));
        assert!(!matched[index], "two spans for one exchange");
        matched[index] = true;
    }
}

/// With `OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`: each `chat` span carries the
/// system instructions, the messages and the answer of its call in the conventions' shape,
/// and they are exactly what the simulator received and sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_opt_in_chat_spans_carry_exactly_the_messages_sent_and_received() {
    let (work, received, exchanges) = content_run(true).await;
    // The agents' exchanges (they offer report_result).
    let sent: Vec<Content> = exchanges
        .iter()
        .filter(|exchange| {
            exchange["status"] == 200
                && exchange["request"]["tools"]
                    .as_array()
                    .is_some_and(|tools| tools.iter().any(|t| t["name"] == "report_result"))
        })
        .map(exchange_content)
        .collect();
    let chats = chat_spans(&received);
    assert_eq!(chats.len(), sent.len(), "one chat span per agent call");
    assert_each_chat_is_an_exchange(&chats, &sent);
    // And the store keeps it (under .fanout/, which git ignores).
    let repo = work.path().join("repo");
    let reader = fanout_core::store::StoreReader::open_in_repo(&repo).unwrap();
    let run_id = reader.runs().unwrap()[0].run.run_id.clone();
    assert!(
        reader
            .events(&run_id)
            .unwrap()
            .iter()
            .filter(|event| event.kind == "model_call")
            .all(|event| event.payload["content"]["input_messages"].is_array())
    );
    let mut files = Vec::new();
    files_under(&repo.join(".fanout"), &mut files);
    assert!(
        files
            .iter()
            .any(|(_, bytes)| String::from_utf8_lossy(bytes).contains(PROMPT_TAIL))
    );
}

/// An item run with the opt-in: each worker call's `chat` span carries what the simulator
/// received and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_opt_in_item_workers_chat_spans_carry_their_exchange() {
    let (endpoint, received) = json_collector().await;
    let dir = tempfile::tempdir().unwrap();
    super::item_inputs::tickets(dir.path(), 12, &[]);
    let workflow = super::item_inputs::ticket_workflow(dir.path(), 5, "");
    let record = dir.path().join("exchanges.jsonl");
    let output = tokio::task::spawn_blocking({
        let (dir, record) = (dir.path().to_path_buf(), record.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_fanout"))
                .arg("run")
                .arg(workflow)
                .arg("--sim")
                .arg("--sim-record")
                .arg(record)
                .current_dir(&dir)
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
                .env("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let exchanges: Vec<Content> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|exchange| exchange["status"] == 200)
        .map(|exchange| exchange_content(&exchange))
        .collect();
    let received = received.lock().unwrap().clone();
    let chats = chat_spans(&received);
    assert_eq!(chats.len(), 3, "one call per chunk of 5 of 12 items");
    for chat in &chats {
        assert!(
            chat["gen_ai.input.messages"]
                .as_str()
                .unwrap()
                .contains("<item id="),
            "{chat:?}"
        );
    }
    assert_each_chat_is_an_exchange(&chats, &exchanges);
}

/// Every span of the collector's requests, as its attributes.
fn all_spans(received: &[Value]) -> Vec<HashMap<String, Value>> {
    received
        .iter()
        .flat_map(|request| {
            request["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|span| attributes(&span))
        .collect()
}

/// The `chat` spans name the answer the provider gave (`gen_ai.response.id`, `.model`,
/// `.finish_reasons`) and each `execute_tool` span the model's id of the call it ran
/// (`gen_ai.tool.call.id`): checked against what the simulator actually answered, so an id
/// on the wrong call (or a made-up one) fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_tool_spans_carry_the_ids_the_provider_answered() {
    let (_work, received, exchanges) = content_run(false).await;
    let mut answers: HashMap<String, &Value> = HashMap::new();
    let mut tool_uses: HashMap<String, &Value> = HashMap::new();
    for exchange in &exchanges {
        let response = &exchange["response"];
        answers.insert(response["id"].as_str().unwrap().to_owned(), response);
        for block in response["content"].as_array().unwrap() {
            if block["type"] == "tool_use" {
                tool_uses.insert(block["id"].as_str().unwrap().to_owned(), block);
            }
        }
    }
    let spans = all_spans(&received);
    let is = |attrs: &HashMap<String, Value>, operation: &str| {
        attrs.get("gen_ai.operation.name") == Some(&Value::from(operation))
    };

    let chats: Vec<_> = spans.iter().filter(|attrs| is(attrs, "chat")).collect();
    assert!(!chats.is_empty());
    let mut seen = std::collections::BTreeSet::new();
    for chat in &chats {
        let id = chat["gen_ai.response.id"].as_str().unwrap();
        assert!(
            seen.insert(id.to_owned()),
            "response id {id} on two chat spans"
        );
        let response = answers[id];
        assert_eq!(chat["gen_ai.response.model"], response["model"]);
        let reason = match response["stop_reason"].as_str().unwrap() {
            "tool_use" => "tool_call",
            "end_turn" | "stop_sequence" => "stop",
            "max_tokens" => "length",
            other => panic!("unexpected stop reason {other}"),
        };
        assert_eq!(
            chat["gen_ai.response.finish_reasons"],
            serde_json::json!([reason])
        );
    }

    let tools: Vec<_> = spans
        .iter()
        .filter(|attrs| is(attrs, "execute_tool"))
        .collect();
    assert!(!tools.is_empty());
    let mut seen = std::collections::BTreeSet::new();
    for tool in &tools {
        let id = tool["gen_ai.tool.call.id"].as_str().unwrap();
        assert!(seen.insert(id.to_owned()), "tool call id {id} on two spans");
        let asked = tool_uses[id];
        assert_eq!(tool["gen_ai.tool.name"], asked["name"], "{id}");
        if let Some(target) = tool.get("fanout.tool.target") {
            assert_eq!(target, &asked["input"]["path"], "{id}");
        }
    }
}
