//! Integration tests: real HTTP against `Sim::start` on 127.0.0.1:0. Timing tests run on paused
//! tokio time; nothing sleeps for real.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use fanout_sim::{Faults, Scenario, Sim, SimConfig, SimError, SimHandle};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

async fn start(config: SimConfig) -> SimHandle {
    Sim::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn scenario(yaml: &str) -> Option<Scenario> {
    Some(Scenario::from_yaml(yaml, "test.yaml").unwrap())
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn send(
    sim: &SimHandle,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let mut request = reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

const ANTHROPIC: &[(&str, &str)] = &[
    ("x-api-key", "sk-test"),
    ("anthropic-version", "2023-06-01"),
];
const OPENAI: &[(&str, &str)] = &[("authorization", "Bearer sk-test")];

async fn messages(sim: &SimHandle, body: Value) -> Reply {
    send(sim, "/v1/messages", ANTHROPIC, body.to_string()).await
}

async fn chat(sim: &SimHandle, body: Value) -> Reply {
    send(sim, "/v1/chat/completions", OPENAI, body.to_string()).await
}

fn hello() -> Value {
    json!({"model": "claude-test", "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]})
}

fn weather_tool() -> Value {
    json!({
        "name": "get_weather",
        "description": "Weather for a city",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 2},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 5},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "when": {"$ref": "#/$defs/when"}
            },
            "required": ["city", "unit", "days", "when"],
            "$defs": {"when": {"type": ["string", "null"], "format": "date"}}
        }
    })
}

fn check_weather_input(input: &Value) {
    assert!(
        input["city"].as_str().unwrap().chars().count() >= 2,
        "{input}"
    );
    assert!(["celsius", "fahrenheit"].contains(&input["unit"].as_str().unwrap()));
    let days = input["days"].as_i64().unwrap();
    assert!((1..=5).contains(&days));
    assert!(input["hourly"].is_boolean());
    assert!(input["tags"].as_array().unwrap().len() >= 2);
    assert!(input["when"].is_string());
}

/// Parses an SSE body into (event name, data) pairs.
fn sse(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|chunk| !chunk.trim().is_empty())
        .map(|chunk| {
            let mut name = None;
            let mut data = String::new();
            for line in chunk.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn missing_key_gets_401_in_each_shape() {
    let sim = start(SimConfig::default()).await;
    let reply = send(
        &sim,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        hello().to_string(),
    )
    .await;
    assert_eq!(reply.status, 401);
    let body = reply.json();
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");
    assert!(reply.header("request-id").unwrap().starts_with("req_"));
    assert_eq!(body["request_id"], reply.header("request-id").unwrap());

    let reply = send(
        &sim,
        "/v1/chat/completions",
        &[("authorization", "Bearer ")],
        "{}",
    )
    .await;
    assert_eq!(reply.status, 401);
    let body = reply.json();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("API key")
    );
    assert!(body["error"].get("param").is_some() && body["error"].get("code").is_some());
    assert!(reply.header("x-request-id").unwrap().starts_with("req_"));

    // Bearer works on the Anthropic route too; --no-auth accepts anything.
    let reply = send(
        &sim,
        "/v1/messages",
        &[
            ("authorization", "Bearer t"),
            ("anthropic-version", "2023-06-01"),
        ],
        hello().to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    sim.shutdown().await;
    let sim = start(SimConfig {
        require_auth: false,
        ..SimConfig::default()
    })
    .await;
    let reply = send(
        &sim,
        "/v1/messages",
        &[("anthropic-version", "2023-06-01")],
        hello().to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    sim.shutdown().await;
}

#[tokio::test]
async fn invalid_requests_get_400_with_helpful_messages() {
    let sim = start(SimConfig::default()).await;
    let cases = [
        ("{not json", "not valid JSON"),
        (
            r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            "max_tokens: Field required",
        ),
        (
            r#"{"max_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            "model: Field required",
        ),
        (
            r#"{"model":"m","max_tokens":5}"#,
            "messages: Field required",
        ),
        (
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"robot","content":"x"}]}"#,
            "messages.0.role",
        ),
        (r#"[1,2,3]"#, "dictionary"),
    ];
    for (body, needle) in cases {
        let reply = send(&sim, "/v1/messages", ANTHROPIC, body).await;
        assert_eq!(reply.status, 400, "{body}");
        let json = reply.json();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "invalid_request_error");
        let message = json["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(needle),
            "{message} should contain {needle}"
        );
    }
    let mut body = hello();
    body["tools"] = json!([weather_tool()]);
    body["tool_choice"] = json!({"type": "tool", "name": "get_time"});
    let reply = messages(&sim, body).await;
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("get_time") && message.contains("get_weather"),
        "{message}"
    );

    let reply = send(
        &sim,
        "/v1/messages",
        &[("x-api-key", "k")],
        hello().to_string(),
    )
    .await;
    assert_eq!(reply.status, 400, "anthropic-version is required");

    // OpenAI shape.
    let reply = chat(
        &sim,
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(reply.status, 400);
    let json = reply.json();
    assert_eq!(json["error"]["type"], "invalid_request_error");
    assert_eq!(json["error"]["param"], "model");
    assert_eq!(json["error"]["code"], "missing_required_parameter");
    let reply = chat(
        &sim,
        json!({"model": "gpt", "messages": [{"role": "wizard", "content": "x"}]}),
    )
    .await;
    assert_eq!(reply.status, 400);
    let reply = chat(
        &sim,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}],
        "tools": [{"type": "function", "function": {"name": "a"}}],
        "tool_choice": {"type": "function", "function": {"name": "b"}}}),
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("'b'"));

    let stats = sim.stats();
    assert_eq!(stats.by_status.get(&400).copied(), Some(11));
    sim.shutdown().await;
}

fn tool_turns(results: Value) -> Value {
    json!({"model": "m", "max_tokens": 50, "messages": [
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Rome"}}
        ]},
        {"role": "user", "content": results}
    ]})
}

#[tokio::test]
async fn tool_results_must_answer_the_previous_tool_uses() {
    let sim = start(SimConfig::default()).await;
    let one = json!([{"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"}, {"type": "text", "text": "and?"}]);
    let reply = messages(&sim, tool_turns(one)).await;
    assert_eq!(reply.status, 400);
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("messages.2: Did not find 2 tool_result block(s)"),
        "{message}"
    );

    let wrong = json!([
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_zzz", "content": "rain"}]);
    let reply = messages(&sim, tool_turns(wrong)).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("toolu_zzz"));

    let stray = json!({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]}]});
    assert_eq!(messages(&sim, stray).await.status, 400);

    let good = json!([
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "rain"},
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": [{"type": "text", "text": "sunny"}]},
        {"type": "text", "text": "summarise"}]);
    let reply = messages(&sim, tool_turns(good)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);

    // OpenAI: every tool_call must be answered by a tool message.
    let base = |tail: Value| {
        let mut messages = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}),
        ];
        messages.extend(tail.as_array().unwrap().iter().cloned());
        json!({"model": "gpt", "messages": messages})
    };
    let reply = chat(&sim, base(json!([{"role": "tool", "tool_call_id": "call_1", "content": "a"}, {"role": "user", "content": "?"}]))).await;
    assert_eq!(reply.status, 400);
    assert!(reply.text.contains("call_2"));
    let reply = chat(
        &sim,
        base(json!([{"role": "tool", "tool_call_id": "call_9", "content": "a"}])),
    )
    .await;
    assert_eq!(reply.status, 400);
    let reply = chat(&sim, base(json!([{"role": "tool", "tool_call_id": "call_1", "content": "a"}, {"role": "tool", "tool_call_id": "call_2", "content": "b"}]))).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    sim.shutdown().await;
}

#[tokio::test]
async fn forced_tool_gets_schema_valid_input_deterministically() {
    let sim = start(SimConfig::default()).await;
    let mut body = hello();
    body["tools"] = json!([{"name": "noop", "input_schema": {"type": "object"}}, weather_tool()]);
    body["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    let first = messages(&sim, body.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let json = first.json();
    assert_eq!(json["type"], "message");
    assert_eq!(json["stop_reason"], "tool_use");
    let block = &json["content"][0];
    assert_eq!(block["type"], "tool_use");
    assert_eq!(block["name"], "get_weather");
    assert!(block["id"].as_str().unwrap().starts_with("toolu_"));
    check_weather_input(&block["input"]);
    let second = messages(&sim, body.clone()).await.json();
    assert_eq!(
        second["content"][0]["input"], block["input"],
        "same request, same input"
    );
    let input_json = serde_json::to_string(&block["input"]).unwrap();
    assert_eq!(
        json["usage"]["output_tokens"],
        input_json.len().div_ceil(4) as u64
    );

    // `any` forces the first tool.
    body["tool_choice"] = json!({"type": "any"});
    let any = messages(&sim, body).await.json();
    assert_eq!(any["content"][0]["name"], "noop");

    // OpenAI: forced function.
    let tool = weather_tool();
    let reply = chat(&sim, json!({"model": "gpt", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": tool["input_schema"]}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let json = reply.json();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["choices"][0]["finish_reason"], "tool_calls");
    let call = &json["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    check_weather_input(&args);
    sim.shutdown().await;
}

#[tokio::test]
async fn structured_output_gets_schema_valid_json_text() {
    let sim = start(SimConfig::default()).await;
    let schema = json!({"type": "object", "properties": {
        "verdict": {"type": "string", "enum": ["ok", "bad"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "items": {"type": "array", "items": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"]}, "minItems": 1}
    }, "required": ["verdict", "score", "items"], "additionalProperties": false});
    let mut body = hello();
    body["output_config"] = json!({"format": {"type": "json_schema", "schema": schema}});
    let json = messages(&sim, body).await.json();
    assert_eq!(json["stop_reason"], "end_turn");
    let value: Value = serde_json::from_str(json["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!(["ok", "bad"].contains(&value["verdict"].as_str().unwrap()));
    let score = value["score"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&score));
    assert!(value["items"][0]["id"].is_i64());

    let reply = chat(&sim, json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "v", "schema": schema, "strict": true}}})).await;
    let json = reply.json();
    let value: Value =
        serde_json::from_str(json["choices"][0]["message"]["content"].as_str().unwrap()).unwrap();
    assert!(value["items"].is_array());
    sim.shutdown().await;
}

const STREAM_SCENARIO: &str = r#"
rules:
  - match: {last_user: "stream please"}
    text: "Let me check the weather for you — ünïcödé included."
    tool_use:
      - {name: get_weather, input: {city: "Paris \"Ville\" \\ Lumière", days: 3, nested: {list: [1, 2, {a: null}]}}}
      - {name: get_weather, input: {city: "Rome"}}
"#;

#[tokio::test]
async fn anthropic_stream_has_the_exact_event_sequence() {
    let sim = start(SimConfig {
        scenario: scenario(STREAM_SCENARIO),
        ..SimConfig::default()
    })
    .await;
    let mut body = json!({"model": "claude-test", "max_tokens": 1000,
        "tools": [weather_tool()],
        "messages": [{"role": "user", "content": "stream please"}]});
    let plain = messages(&sim, body.clone()).await.json();
    body["stream"] = json!(true);
    let reply = messages(&sim, body).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(reply.header("request-id").is_some());
    let events = sse(&reply.text);
    let names: Vec<&str> = events
        .iter()
        .map(|(n, _)| n.as_deref().expect("every event has an event: line"))
        .collect();
    for (name, data) in &events {
        let data: Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data["type"],
            *name.as_ref().unwrap(),
            "event: line matches data.type"
        );
    }
    // Structure: start, block 0 (start, ping, deltas, stop), blocks 1 and 2, delta, stop.
    assert_eq!(names[0], "message_start");
    assert_eq!(names[1], "content_block_start");
    assert_eq!(names[2], "ping");
    assert_eq!(names[names.len() - 2], "message_delta");
    assert_eq!(names[names.len() - 1], "message_stop");
    let mut collapsed: Vec<&str> = Vec::new();
    for name in &names {
        if collapsed.last() != Some(name) {
            collapsed.push(name);
        }
    }
    assert_eq!(
        collapsed,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );

    // Reassemble and compare with the non-streamed answer.
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    assert!(start["message"]["stop_reason"].is_null());
    assert_eq!(start["message"]["content"], json!([]));
    let mut texts = vec![String::new(); 3];
    let mut delta_count = [0usize; 3];
    for (name, data) in &events {
        if name.as_deref() != Some("content_block_delta") {
            continue;
        }
        let data: Value = serde_json::from_str(data).unwrap();
        let index = data["index"].as_u64().unwrap() as usize;
        delta_count[index] += 1;
        let delta = &data["delta"];
        match delta["type"].as_str().unwrap() {
            "text_delta" => texts[index].push_str(delta["text"].as_str().unwrap()),
            "input_json_delta" => texts[index].push_str(delta["partial_json"].as_str().unwrap()),
            other => panic!("unexpected delta {other}"),
        }
    }
    assert!(
        delta_count[0] > 1 && delta_count[1] > 2,
        "split into several pieces"
    );
    assert_eq!(texts[0], plain["content"][0]["text"].as_str().unwrap());
    let input: Value = serde_json::from_str(&texts[1]).unwrap();
    assert_eq!(input, plain["content"][1]["input"]);
    assert_eq!(input["city"], "Paris \"Ville\" \\ Lumière");
    let input: Value = serde_json::from_str(&texts[2]).unwrap();
    assert_eq!(input, json!({"city": "Rome"}));
    let message_delta: Value = serde_json::from_str(&events[events.len() - 2].1).unwrap();
    assert_eq!(message_delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(
        message_delta["usage"]["output_tokens"],
        plain["usage"]["output_tokens"]
    );
    assert_eq!(
        message_delta["usage"]["input_tokens"],
        plain["usage"]["input_tokens"]
    );
    let recorded = sim.exchanges();
    assert!(recorded[1].stream);
    assert_eq!(recorded[1].response.as_str().unwrap(), reply.text);
    sim.shutdown().await;
}

#[tokio::test]
async fn openai_stream_ends_with_done_and_reassembles_tool_calls() {
    let sim = start(SimConfig {
        scenario: scenario(STREAM_SCENARIO),
        ..SimConfig::default()
    })
    .await;
    let body = json!({"model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream please"}]});
    let reply = chat(&sim, body).await;
    assert_eq!(reply.status, 200);
    let events = sse(&reply.text);
    assert!(
        events.iter().all(|(name, _)| name.is_none()),
        "no event: lines for OpenAI"
    );
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let mut content = String::new();
    let mut calls: Vec<(String, String, String)> = Vec::new();
    let mut finish = None;
    for chunk in &chunks[..chunks.len() - 1] {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert!(chunk["usage"].is_null());
        let choice = &chunk["choices"][0];
        if let Some(text) = choice["delta"]["content"].as_str() {
            content.push_str(text);
        }
        for call in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = call["index"].as_u64().unwrap() as usize;
            if index == calls.len() {
                calls.push((
                    call["id"].as_str().unwrap().to_string(),
                    call["function"]["name"].as_str().unwrap().to_string(),
                    String::new(),
                ));
            }
            calls[index]
                .2
                .push_str(call["function"]["arguments"].as_str().unwrap());
        }
        if !choice["finish_reason"].is_null() {
            finish = Some(choice["finish_reason"].clone());
        }
    }
    assert!(content.starts_with("Let me check"));
    assert_eq!(finish, Some(json!("tool_calls")));
    assert_eq!(calls.len(), 2);
    assert!(calls[0].0.starts_with("call_"));
    let args: Value = serde_json::from_str(&calls[0].2).unwrap();
    assert_eq!(args["nested"]["list"][2], json!({"a": null}));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert!(usage_chunk["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn count_tokens_matches_message_usage() {
    let sim = start(SimConfig::default()).await;
    let mut body = tool_turns(json!([
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "rain"}]));
    body["system"] = json!("You are terse.");
    body["tools"] = json!([weather_tool()]);
    let usage = messages(&sim, body.clone()).await.json()["usage"]["input_tokens"].clone();
    body.as_object_mut().unwrap().remove("max_tokens");
    let reply = send(
        &sim,
        "/v1/messages/count_tokens",
        ANTHROPIC,
        body.to_string(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json(), json!({"input_tokens": usage}));
    // ceil(bytes / 4) of: system, texts, tool_use name + input JSON, tool results, tool definition.
    let tool = weather_tool();
    let bytes = "You are terse.".len()
        + "weather in Paris and Rome?".len()
        + "Checking.".len()
        + "get_weather".len() * 2
        + r#"{"city":"Paris"}"#.len()
        + r#"{"city":"Rome"}"#.len()
        + "sunny".len()
        + "rain".len()
        + "get_weather".len()
        + "Weather for a city".len()
        + tool["input_schema"].to_string().len();
    assert_eq!(usage, bytes.div_ceil(4) as u64);
    sim.shutdown().await;
}

#[tokio::test]
async fn rate_limit_headers_on_every_response() {
    let sim = start(SimConfig {
        rpm: Some(50),
        itpm: Some(10_000),
        otpm: Some(2_000),
        ..SimConfig::default()
    })
    .await;
    let ok = messages(&sim, hello()).await;
    assert_eq!(ok.status, 200);
    for dim in ["requests", "tokens", "input-tokens", "output-tokens"] {
        for part in ["limit", "remaining", "reset"] {
            let name = format!("anthropic-ratelimit-{dim}-{part}");
            assert!(ok.header(&name).is_some(), "missing {name}");
        }
    }
    assert_eq!(ok.header("anthropic-ratelimit-requests-limit"), Some("50"));
    assert_eq!(
        ok.header("anthropic-ratelimit-requests-remaining"),
        Some("49")
    );
    let reset = ok.header("anthropic-ratelimit-requests-reset").unwrap();
    assert!(
        reset.len() == 20 && reset.ends_with('Z') && reset.as_bytes()[10] == b'T',
        "{reset}"
    );
    let bad = send(&sim, "/v1/messages", ANTHROPIC, "nope").await;
    assert_eq!(bad.status, 400);
    assert!(
        bad.header("anthropic-ratelimit-requests-remaining")
            .is_some()
    );

    let reply = chat(
        &sim,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-ratelimit-limit-requests"), Some("50"));
    assert_eq!(reply.header("x-ratelimit-remaining-requests"), Some("48"));
    assert_eq!(reply.header("x-ratelimit-limit-tokens"), Some("2000"));
    let reset = reply.header("x-ratelimit-reset-requests").unwrap();
    assert!(
        reset.ends_with('s') && reset.chars().next().unwrap().is_ascii_digit(),
        "{reset}"
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn empty_bucket_gets_429_with_retry_after() {
    let sim = start(SimConfig {
        rpm: Some(2),
        ..SimConfig::default()
    })
    .await;
    assert_eq!(messages(&sim, hello()).await.status, 200);
    assert_eq!(messages(&sim, hello()).await.status, 200);
    let limited = messages(&sim, hello()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["type"], "rate_limit_error");
    // One request refills in 60 / 2 = 30 s.
    assert_eq!(limited.header("retry-after"), Some("30"));
    assert_eq!(
        limited.header("anthropic-ratelimit-requests-remaining"),
        Some("0")
    );
    let limited = chat(
        &sim,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limit_exceeded");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(messages(&sim, hello()).await.status, 200);
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, 2);
    assert_eq!(stats.admitted, 3);

    // Output tokens: charged after the answer; the bucket may go negative and then refuses.
    sim.shutdown().await;
    let sim = start(SimConfig {
        otpm: Some(60),
        ..SimConfig::default()
    })
    .await;
    let long = scenario(
        "rules:\n  - text: \"{}\"\n"
            .replace("{}", &"x".repeat(400))
            .as_str(),
    );
    sim.shutdown().await;
    let sim = start(SimConfig {
        otpm: Some(60),
        scenario: long,
        ..SimConfig::default()
    })
    .await;
    assert_eq!(messages(&sim, hello()).await.status, 200); // 100 output tokens: bucket at -40
    let limited = messages(&sim, hello()).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.header("retry-after"), Some("41"));
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn admitted_requests_never_exceed_limit_plus_burst_in_any_minute() {
    let limit = 600u64;
    let sim = start(SimConfig {
        rpm: Some(limit),
        require_auth: false,
        ..SimConfig::default()
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", sim.base_url());
    let body = hello().to_string();
    // 20 requests/s offered (twice the refill rate) for four virtual minutes.
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    for _ in 0..(20 * 240) {
        ticker.tick().await;
        let response = client
            .post(&url)
            .header("anthropic-version", "2023-06-01")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let _ = response.bytes().await.unwrap();
    }
    let admitted: Vec<u64> = sim
        .exchanges()
        .iter()
        .filter(|e| e.status == 200)
        .map(|e| e.at_ms)
        .collect();
    let limited = sim.exchanges().iter().filter(|e| e.status == 429).count();
    assert!(
        limited > 1000,
        "the offered load is above the limit: {limited} refused"
    );
    let mut worst = 0;
    let mut j = 0;
    for i in 0..admitted.len() {
        while j < admitted.len() && admitted[j] < admitted[i] + 60_000 {
            j += 1;
        }
        worst = worst.max(j - i);
    }
    assert!(
        worst as u64 <= 2 * limit,
        "{worst} admitted in one minute, limit + burst = {}",
        2 * limit
    );
    // The first minute gets the burst plus the refill; later minutes get the refill rate.
    assert!(worst as u64 > limit, "{worst}");
    let last_minute_start = admitted.last().unwrap().saturating_sub(60_000);
    let last_minute = admitted.iter().filter(|t| **t > last_minute_start).count() as u64;
    assert!(
        last_minute <= limit + 1,
        "steady state is the limit: {last_minute}"
    );
    sim.shutdown().await;
}

async fn statuses(seed: u64, count: usize) -> (Vec<u16>, fanout_sim::Stats) {
    let faults = Faults {
        overloaded: 0.2,
        api_error: 0.2,
        truncate_body: 0.1,
        malformed_json: 0.1,
        ..Faults::default()
    };
    let sim = start(SimConfig {
        faults,
        seed,
        ..SimConfig::default()
    })
    .await;
    let mut out = Vec::new();
    for _ in 0..count {
        let reply = messages(&sim, hello()).await;
        let broken = reply.status == 200 && serde_json::from_str::<Value>(&reply.text).is_err();
        out.push(if broken { 299 } else { reply.status });
    }
    let stats = sim.stats();
    sim.shutdown().await;
    (out, stats)
}

#[tokio::test]
async fn faults_are_reproducible_from_the_seed() {
    let (a, stats) = statuses(42, 60).await;
    let (b, _) = statuses(42, 60).await;
    let (c, _) = statuses(43, 60).await;
    assert_eq!(a, b);
    assert_ne!(a, c);
    for status in [200, 299, 500, 529] {
        assert!(a.contains(&status), "{status} in {a:?}");
    }
    let count = |s: u16| a.iter().filter(|x| **x == s).count() as u64;
    assert_eq!(
        stats.faults.get("overloaded").copied().unwrap_or(0),
        count(529)
    );
    assert_eq!(
        stats.faults.get("api_error").copied().unwrap_or(0),
        count(500)
    );
    let broken = stats.faults.get("truncate_body").copied().unwrap_or(0)
        + stats.faults.get("malformed_json").copied().unwrap_or(0);
    assert_eq!(broken, count(299));
}

#[tokio::test]
async fn cut_streams_break_the_connection_and_hangs_end_at_shutdown() {
    let sim = start(SimConfig {
        faults: Faults {
            cut_stream: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let mut body = hello();
    body["stream"] = json!(true);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/messages", sim.base_url()))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(
        response.text().await.is_err(),
        "the body must end in a broken connection"
    );
    assert_eq!(sim.stats().faults.get("cut_stream"), Some(&1));
    sim.shutdown().await;

    let sim = start(SimConfig {
        faults: Faults {
            hang: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let url = format!("{}/v1/messages", sim.base_url());
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("x-api-key", "k")
            .header("anthropic-version", "2023-06-01")
            .body(hello().to_string())
            .send()
            .await
    });
    while sim.exchanges().is_empty() {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(sim.exchanges()[0].fault.as_deref(), Some("hang"));
    assert_eq!(sim.stats().in_flight, 1);
    sim.shutdown().await;
    let outcome = pending.await.unwrap();
    if let Ok(response) = outcome {
        assert!(response.bytes().await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn latency_and_concurrency_cap_on_paused_time() {
    let sim = start(SimConfig {
        latency: Duration::from_secs(2),
        per_output_token: Duration::from_millis(10),
        max_concurrent: Some(1),
        ..SimConfig::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let reply = messages(&sim, hello()).await;
    let output = reply.json()["usage"]["output_tokens"].as_u64().unwrap();
    let elapsed = started.elapsed();
    let expected = Duration::from_secs(2) + Duration::from_millis(10 * output);
    assert!(
        elapsed >= expected && elapsed < expected + Duration::from_millis(500),
        "{elapsed:?} vs {expected:?}"
    );

    let (a, b) = tokio::join!(messages(&sim, hello()), messages(&sim, hello()));
    let mut got = [a.status, b.status];
    got.sort_unstable();
    assert_eq!(got, [200, 429]);
    let refused = if a.status == 429 { a } else { b };
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(sim.stats().peak_in_flight, 2);
    sim.shutdown().await;
}

const RULES: &str = r#"
rules:
  - name: retry-me
    match: {last_user: "flaky", attempt: 0}
    error: {status: 429, type: rate_limit_error, message: "busy, try again", headers: {retry-after: "1"}}
  - name: weather
    match: {endpoint: messages, model: "claude-.*", last_user: "weather in (?P<city>\\w+) for (\\d+) days"}
    text: "Looking up ${city} (${2} days); ${unknown} stays."
    tool_use: {name: get_weather, input: {city: "${city}", days: "${2}", list: ["${1}"]}}
  - name: once
    match: {last_user: "^once$"}
    times: 1
    text: "first time"
  - name: second-turn
    match: {turn: 2, system: "terse"}
    text: "turn two"
  - name: forced
    match: {tool: get_weather}
    tool_use: {name: get_weather, input: {city: Oslo}}
  - name: gpt-only
    match: {endpoint: chat_completions, model: "gpt-4o"}
    text: "exact model"
"#;

#[tokio::test]
async fn scenario_rules_captures_times_and_attempts() {
    let sim = start(SimConfig {
        scenario: scenario(RULES),
        ..SimConfig::default()
    })
    .await;
    let ask = |text: &str| json!({"model": "claude-x", "max_tokens": 200, "messages": [{"role": "user", "content": text}]});

    let reply = messages(&sim, ask("what is the weather in Lyon for 3 days?")).await;
    let json = reply.json();
    assert_eq!(
        json["content"][0]["text"],
        "Looking up Lyon (3 days); ${unknown} stays."
    );
    assert_eq!(
        json["content"][1]["input"],
        json!({"city": "Lyon", "days": "3", "list": ["Lyon"]})
    );
    assert_eq!(json["stop_reason"], "tool_use");
    // The model regex is anchored: "xclaude-x" does not match, so the default answer comes.
    let mut other = ask("weather in Lyon for 3 days");
    other["model"] = json!("xclaude-x");
    assert!(
        messages(&sim, other).await.json()["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Simulated reply")
    );

    assert_eq!(
        messages(&sim, ask("once")).await.json()["content"][0]["text"],
        "first time"
    );
    let again = messages(&sim, ask("once")).await.json();
    assert!(
        again["content"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("Simulated reply"),
        "times: 1 is used up"
    );

    let first = send(
        &sim,
        "/v1/messages",
        &[ANTHROPIC[0], ANTHROPIC[1], ("x-stainless-retry-count", "0")],
        ask("flaky").to_string(),
    )
    .await;
    assert_eq!(first.status, 429);
    assert_eq!(first.header("retry-after"), Some("1"));
    assert_eq!(first.json()["error"]["message"], "busy, try again");
    let retry = send(
        &sim,
        "/v1/messages",
        &[ANTHROPIC[0], ANTHROPIC[1], ("x-stainless-retry-count", "1")],
        ask("flaky").to_string(),
    )
    .await;
    assert_eq!(retry.status, 200);
    let openai = send(
        &sim,
        "/v1/chat/completions",
        OPENAI,
        json!({"model": "gpt", "messages": [{"role": "user", "content": "flaky"}]}).to_string(),
    )
    .await;
    assert_eq!(openai.status, 429);
    assert_eq!(openai.json()["error"]["code"], "rate_limit_exceeded");

    let turn_two = json!({"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be terse."}], "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]});
    assert_eq!(
        messages(&sim, turn_two).await.json()["content"][0]["text"],
        "turn two"
    );

    let mut forced = ask("anything");
    forced["tools"] = json!([weather_tool()]);
    forced["tool_choice"] = json!({"type": "tool", "name": "get_weather"});
    assert_eq!(
        messages(&sim, forced).await.json()["content"][0]["input"],
        json!({"city": "Oslo"})
    );

    let exact = chat(
        &sim,
        json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .json();
    assert_eq!(exact["choices"][0]["message"]["content"], "exact model");
    let not_exact = chat(
        &sim,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await
    .json();
    assert_ne!(not_exact["choices"][0]["message"]["content"], "exact model");

    // The exchange log names the rules and keeps arrival order; /sim/exchanges serves it.
    let log = sim.exchanges();
    assert_eq!(log[0].rule_name.as_deref(), Some("weather"));
    assert!(log.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        log[4]
            .headers
            .get("x-stainless-retry-count")
            .map(String::as_str),
        Some("0")
    );
    assert_eq!(
        log[4].headers.get("x-api-key").map(String::as_str),
        Some("present")
    );
    let served: Vec<fanout_sim::Exchange> =
        reqwest::get(format!("{}/sim/exchanges", sim.base_url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(served, log);
    let stats: fanout_sim::Stats = reqwest::get(format!("{}/sim/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.requests_total, log.len() as u64);
    assert_eq!(stats.rate_limited, 2);
    sim.shutdown().await;
}

#[test]
fn scenario_errors_have_line_and_column() {
    let unknown = "rules:\n  - match: {last_user: x}\n    txt: hello\n";
    let err = Scenario::from_yaml(unknown, "s.yaml").unwrap_err();
    match &err {
        SimError::Scenario {
            origin,
            line,
            column,
            message,
        } => {
            assert_eq!(origin, "s.yaml");
            assert_eq!(*line, 3, "{message}");
            assert!(*column >= 5, "{column}");
            assert!(message.contains("txt"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with("s.yaml:3:"), "{err}");

    let bad_regex = "rules:\n  - match:\n      last_user: \"(unclosed\"\n    text: hi\n";
    match Scenario::from_yaml(bad_regex, "r.yaml").unwrap_err() {
        SimError::Scenario {
            line,
            column,
            message,
            ..
        } => {
            assert_eq!((line, column), (3, 18), "{message}");
            assert!(message.contains("invalid regex"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let bad_yaml = "rules:\n  - text: [unclosed\n";
    match Scenario::from_yaml(bad_yaml, "y.yaml").unwrap_err() {
        SimError::Scenario { line, .. } => assert!(line >= 2),
        other => panic!("{other:?}"),
    }
    let no_action = "rules:\n  - match: {turn: 1}\n";
    assert!(matches!(
        Scenario::from_yaml(no_action, "n.yaml"),
        Err(SimError::Scenario { line: 2, .. })
    ));
    let both = "rules:\n  - text: a\n    error: {status: 500}\n";
    assert!(Scenario::from_yaml(both, "b.yaml").is_err());
    let bad_endpoint = "rules:\n  - match: {endpoint: embeddings}\n    text: a\n";
    assert!(Scenario::from_yaml(bad_endpoint, "e.yaml").is_err());
}

#[tokio::test]
async fn record_file_gets_one_json_line_per_exchange() {
    let path = std::env::temp_dir().join(format!("fanout-sim-record-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sim = start(SimConfig {
        record_path: Some(path.clone()),
        ..SimConfig::default()
    })
    .await;
    messages(&sim, hello()).await;
    send(&sim, "/v1/messages", ANTHROPIC, "broken").await;
    sim.shutdown().await;
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<fanout_sim::Exchange> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].status, 200);
    assert_eq!(lines[1].request, json!("broken"));
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn hostile_inputs_never_crash_the_server() {
    let sim = start(SimConfig::default()).await;
    let nasty = [
        "",
        "null",
        "0",
        "\"s\"",
        "{\"model\": null}",
        "{\"model\":\"m\",\"max_tokens\":-1,\"messages\":[]}",
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[null]}",
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{}]}]}",
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"name\":\"t\",\"input_schema\":{\"type\":\"object\",\"properties\":{\"a\":{\"$ref\":\"#/$defs/a\"}},\"$defs\":{\"a\":{\"$ref\":\"#/$defs/a\"}}}}],\"tool_choice\":{\"type\":\"any\"}}",
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tool_choice\":{\"type\":\"any\"}}",
        "{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"ü\"}],\"output_config\":{\"format\":{\"type\":\"json_schema\",\"schema\":{\"type\":\"string\",\"minLength\":100000000000}}}}",
    ];
    for body in nasty {
        let reply = send(&sim, "/v1/messages", ANTHROPIC, body).await;
        assert!(
            reply.status == 200 || reply.status == 400,
            "{body}: {}",
            reply.status
        );
        let reply = send(&sim, "/v1/chat/completions", OPENAI, body).await;
        assert!(
            reply.status == 200 || reply.status == 400,
            "{body}: {}",
            reply.status
        );
    }
    // max_tokens cuts long text answers.
    let sim2 = start(SimConfig {
        scenario: scenario("rules:\n  - text: \"0123456789abcdefghij\"\n"),
        ..SimConfig::default()
    })
    .await;
    let mut body = hello();
    body["max_tokens"] = json!(2);
    let json = messages(&sim2, body).await.json();
    assert_eq!(json["stop_reason"], "max_tokens");
    assert_eq!(json["content"][0]["text"], "01234567");
    sim2.shutdown().await;
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Message Batches

async fn get(sim: &SimHandle, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = reqwest::Client::new().get(format!("{}{path}", sim.base_url()));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    Reply {
        status,
        headers,
        text,
    }
}

fn jsonl_by_custom_id(text: &str) -> std::collections::BTreeMap<String, Value> {
    text.lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (
                value["custom_id"].as_str().unwrap().to_string(),
                value["result"].clone(),
            )
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn batch_answers_each_request_like_messages_after_the_delay() {
    let sim = start(SimConfig {
        batch_delay: Duration::from_secs(3600),
        scenario: scenario(
            "rules:\n  - name: refuse\n    match: {last_user: \"please fail\"}\n    error: {status: 500, type: api_error, message: \"scripted\"}\n  - name: hi\n    match: {last_user: \"^hello$\"}\n    text: \"Hi there\"\n",
        ),
        ..SimConfig::default()
    })
    .await;
    let mut no_max_tokens = hello();
    no_max_tokens.as_object_mut().unwrap().remove("max_tokens");
    let mut fail = hello();
    fail["messages"][0]["content"] = json!("please fail");
    let mut streaming = hello();
    streaming["stream"] = json!(true);
    let forced = json!({
        "model": "claude-test", "max_tokens": 500,
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [weather_tool()], "tool_choice": {"type": "tool", "name": "get_weather"}
    });
    let body = json!({"requests": [
        {"custom_id": "a", "params": hello()},
        {"custom_id": "b", "params": no_max_tokens},
        {"custom_id": "c", "params": fail},
        {"custom_id": "d", "params": streaming},
        {"custom_id": "e", "params": forced},
    ]});
    let created = send(&sim, "/v1/messages/batches", ANTHROPIC, body.to_string()).await;
    assert_eq!(created.status, 200, "{}", created.text);
    let batch = created.json();
    let id = batch["id"].as_str().unwrap().to_string();
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(batch["request_counts"]["processing"], 5);
    assert_eq!(batch["results_url"], Value::Null);
    assert!(batch["created_at"].as_str().unwrap().ends_with('Z'));

    let early = get(
        &sim,
        &format!("/v1/messages/batches/{id}/results"),
        ANTHROPIC,
    )
    .await;
    assert_eq!(early.status, 400);
    assert_eq!(early.json()["error"]["type"], "invalid_request_error");

    tokio::time::advance(Duration::from_secs(3601)).await;
    let status = get(&sim, &format!("/v1/messages/batches/{id}"), ANTHROPIC).await;
    let status = status.json();
    assert_eq!(status["processing_status"], "ended");
    assert_eq!(
        status["request_counts"],
        json!({"processing": 0, "succeeded": 2, "errored": 3, "canceled": 0, "expired": 0})
    );
    let url = status["results_url"].as_str().unwrap();
    assert!(
        url.ends_with(&format!("/v1/messages/batches/{id}/results")),
        "{url}"
    );

    let results = get(
        &sim,
        &format!("/v1/messages/batches/{id}/results"),
        ANTHROPIC,
    )
    .await;
    assert_eq!(results.status, 200);
    // Results are in no particular order (reverse here): clients match by custom_id.
    assert!(
        results.text.starts_with("{\"custom_id\":\"e\""),
        "{}",
        results.text
    );
    let results = jsonl_by_custom_id(&results.text);
    assert_eq!(results.len(), 5);
    assert_eq!(results["a"]["type"], "succeeded");
    assert_eq!(results["a"]["message"]["content"][0]["text"], "Hi there");
    assert_eq!(results["a"]["message"]["usage"]["service_tier"], "batch");
    assert_eq!(results["b"]["type"], "errored");
    assert_eq!(
        results["b"]["error"]["error"]["type"],
        "invalid_request_error"
    );
    assert_eq!(
        results["b"]["error"]["error"]["message"],
        "max_tokens: Field required"
    );
    assert_eq!(results["c"]["error"]["error"]["type"], "api_error");
    assert_eq!(results["c"]["error"]["error"]["message"], "scripted");
    assert_eq!(results["d"]["type"], "errored");
    let tool_use = &results["e"]["message"]["content"][0];
    assert_eq!(tool_use["type"], "tool_use");
    check_weather_input(&tool_use["input"]);

    // Each request is in the exchange log.
    let log: Vec<_> = sim
        .exchanges()
        .into_iter()
        .filter(|e| e.endpoint == "batch_messages")
        .collect();
    let ids: Vec<&str> = log.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c", "d", "e"].map(|c| format!("{id}/{c}")));
    assert_eq!(log[0].rule_name.as_deref(), Some("hi"));
    assert_eq!(log[1].status, 400);
    assert_eq!(log[2].status, 500);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn batch_cancel_and_bad_requests() {
    let sim = start(SimConfig {
        batch_delay: Duration::from_secs(3600),
        ..SimConfig::default()
    })
    .await;
    let body = json!({"requests": [{"custom_id": "x", "params": hello()}, {"custom_id": "y", "params": hello()}]});
    let batch = send(&sim, "/v1/messages/batches", ANTHROPIC, body.to_string())
        .await
        .json();
    let id = batch["id"].as_str().unwrap();
    let canceled = send(
        &sim,
        &format!("/v1/messages/batches/{id}/cancel"),
        ANTHROPIC,
        "{}",
    )
    .await
    .json();
    assert_eq!(canceled["processing_status"], "ended");
    assert_eq!(canceled["request_counts"]["canceled"], 2);
    assert!(canceled["cancel_initiated_at"].is_string());
    let results = get(
        &sim,
        &format!("/v1/messages/batches/{id}/results"),
        ANTHROPIC,
    )
    .await;
    let results = jsonl_by_custom_id(&results.text);
    assert_eq!(results["x"], json!({"type": "canceled"}));

    let twice = json!({"requests": [{"custom_id": "x", "params": hello()}, {"custom_id": "x", "params": hello()}]});
    let reply = send(&sim, "/v1/messages/batches", ANTHROPIC, twice.to_string()).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("used twice")
    );
    let bad_id = json!({"requests": [{"custom_id": "a/b", "params": hello()}]});
    let reply = send(&sim, "/v1/messages/batches", ANTHROPIC, bad_id.to_string()).await;
    assert_eq!(reply.status, 400);
    let empty = send(
        &sim,
        "/v1/messages/batches",
        ANTHROPIC,
        "{\"requests\": []}",
    )
    .await;
    assert_eq!(empty.status, 400);
    let unknown = get(&sim, "/v1/messages/batches/msgbatch_nope", ANTHROPIC).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["type"], "not_found_error");
    let no_key = get(
        &sim,
        &format!("/v1/messages/batches/{id}"),
        &[("anthropic-version", "2023-06-01")],
    )
    .await;
    assert_eq!(no_key.status, 401);
    sim.shutdown().await;
}

/// An item worker's forced `submit_results` gets one schema-valid record per `<item id>` of
/// the prompt, each with that id, without any scenario.
#[tokio::test]
async fn item_worker_gets_one_record_per_item_id() {
    let sim = start(SimConfig::default()).await;
    let record = json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "category": {"type": "string", "enum": ["billing", "bug"]},
            "summary": {"type": "string", "maxLength": 40},
        },
        "required": ["id", "category", "summary"],
        "additionalProperties": false,
    });
    let mut body = hello();
    body["messages"][0]["content"] = json!(
        "Classify.\n<item id=\"T-1\">\nA\n</item>\n<item id=\"T-&quot;2\">\nB\n</item>\n<item id=\"T-3\">\nC\n</item>\n"
    );
    body["max_tokens"] = json!(2000);
    body["tools"] = json!([{"name": "submit_results", "input_schema": {
        "type": "object",
        "properties": {"results": {"type": "array", "items": record}},
        "required": ["results"],
    }}]);
    body["tool_choice"] = json!({"type": "tool", "name": "submit_results"});
    let reply = messages(&sim, body).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let results = reply.json()["content"][0]["input"]["results"].clone();
    let ids: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["T-1", "T-\"2", "T-3"]);
    for result in results.as_array().unwrap() {
        assert!(["billing", "bug"].contains(&result["category"].as_str().unwrap()));
        assert!(result["summary"].as_str().unwrap().len() <= 40);
        assert_eq!(result.as_object().unwrap().len(), 3);
    }
    sim.shutdown().await;
}

/// A simulator that keeps no exchanges still counts and still writes its record file.
#[tokio::test]
async fn keeping_no_exchanges_still_counts_and_records() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("log.jsonl");
    let sim = start(SimConfig {
        keep_exchanges: 0,
        record_path: Some(record.clone()),
        ..SimConfig::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(messages(&sim, hello()).await.status, 200);
    }
    assert!(sim.exchanges().is_empty());
    assert_eq!(sim.stats().requests_total, 3);
    sim.shutdown().await;
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 3);

    // The default keeps them.
    let sim = start(SimConfig::default()).await;
    messages(&sim, hello()).await;
    assert_eq!(sim.exchanges().len(), 1);
}

#[path = "sim/defaults.rs"]
mod defaults;

// ---- Prompt caching -------------------------------------------------------------------------

/// A system prompt of `bytes` bytes (`bytes / 4` tokens), marked for caching.
fn cached_system(bytes: usize) -> Value {
    json!([{"type": "text", "text": "r".repeat(bytes), "cache_control": {"type": "ephemeral"}}])
}

fn cached_request(model: &str, system_bytes: usize, user: &str) -> Value {
    json!({"model": model, "max_tokens": 50, "system": cached_system(system_bytes),
           "messages": [{"role": "user", "content": user}]})
}

/// (input, cache creation, cache read) of an answered Messages request.
fn split(reply: &Reply) -> (u64, u64, u64) {
    assert_eq!(reply.status, 200, "{}", reply.text);
    let usage = &reply.json()["usage"];
    (
        usage["input_tokens"].as_u64().unwrap(),
        usage["cache_creation_input_tokens"].as_u64().unwrap(),
        usage["cache_read_input_tokens"].as_u64().unwrap(),
    )
}

async fn counted(sim: &SimHandle, body: &Value) -> u64 {
    let mut body = body.clone();
    body.as_object_mut().unwrap().remove("max_tokens");
    let reply = send(
        sim,
        "/v1/messages/count_tokens",
        ANTHROPIC,
        body.to_string(),
    )
    .await;
    reply.json()["input_tokens"].as_u64().unwrap()
}

#[tokio::test]
async fn cache_is_written_on_first_use_and_read_afterwards() {
    let sim = start(SimConfig::default()).await;
    let body = cached_request("claude-test", 6000, "hello");
    let total = counted(&sim, &body).await;
    let first = split(&messages(&sim, body.clone()).await);
    assert_eq!(first, (total - 1500, 1500, 0));
    let second = split(&messages(&sim, body.clone()).await);
    assert_eq!(second, (total - 1500, 0, 1500));
    // Another question after the same system prompt reads it too.
    let other = cached_request("claude-test", 6000, "something else entirely");
    let (input, creation, read) = split(&messages(&sim, other.clone()).await);
    assert_eq!((creation, read), (0, 1500));
    assert_eq!(input + creation + read, counted(&sim, &other).await);
    // The stream reports the same split at message_start and in message_delta.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let reply = messages(&sim, streamed).await;
    let events = sse(&reply.text);
    let start = events
        .iter()
        .find(|(e, _)| e.as_deref() == Some("message_start"))
        .unwrap();
    let usage: Value = serde_json::from_str::<Value>(&start.1).unwrap()["message"]["usage"].clone();
    assert_eq!(usage["cache_read_input_tokens"], 1500);
    assert_eq!(usage["input_tokens"], total - 1500);
    let delta = events
        .iter()
        .find(|(e, _)| e.as_deref() == Some("message_delta"))
        .unwrap();
    let usage: Value = serde_json::from_str::<Value>(&delta.1).unwrap()["usage"].clone();
    assert_eq!(usage["cache_read_input_tokens"], 1500);
    let stats = sim.stats();
    assert_eq!(stats.cache_creation_tokens, 1500);
    assert_eq!(stats.cache_read_tokens, 4500);
    let last = sim.exchanges().pop().unwrap();
    assert_eq!(last.cache_read_tokens, 1500);
    assert_eq!(last.input_tokens, total);
}

#[tokio::test(start_paused = true)]
async fn cache_expires_after_five_minutes_and_each_hit_refreshes_it() {
    let sim = start(SimConfig::default()).await;
    let body = cached_request("claude-test", 6000, "hello");
    assert_eq!(split(&messages(&sim, body.clone()).await).1, 1500);
    // Hits at 4 and 8 minutes: each restarts the 5 minutes.
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(4 * 60)).await;
        assert_eq!(split(&messages(&sim, body.clone()).await).2, 1500);
    }
    // 5 minutes without a hit: gone, written again.
    tokio::time::advance(Duration::from_secs(5 * 60 + 1)).await;
    let (_, creation, read) = split(&messages(&sim, body.clone()).await);
    assert_eq!((creation, read), (1500, 0));
    // A one-hour breakpoint outlives five minutes.
    let mut long = cached_request("claude-test", 8000, "hello");
    long["system"][0]["cache_control"]["ttl"] = json!("1h");
    assert_eq!(split(&messages(&sim, long.clone()).await).1, 2000);
    tokio::time::advance(Duration::from_secs(50 * 60)).await;
    assert_eq!(split(&messages(&sim, long).await).2, 2000);
}

#[tokio::test]
async fn prefixes_below_the_model_minimum_are_neither_written_nor_read() {
    let sim = start(SimConfig::default()).await;
    // 1,000 tokens < 1,024 for a Sonnet-class model.
    let short = cached_request("claude-sonnet-4-5", 4000, "hello");
    let total = counted(&sim, &short).await;
    for _ in 0..2 {
        assert_eq!(split(&messages(&sim, short.clone()).await), (total, 0, 0));
    }
    // 2,500 tokens: enough for Sonnet, below Haiku 4.5's 4,096.
    let haiku = cached_request("claude-haiku-4-5", 10_000, "hello");
    for _ in 0..2 {
        let (_, creation, read) = split(&messages(&sim, haiku.clone()).await);
        assert_eq!((creation, read), (0, 0));
    }
    let sonnet = cached_request("claude-sonnet-4-5", 10_000, "hello");
    assert_eq!(split(&messages(&sim, sonnet.clone()).await).1, 2500);
    assert_eq!(split(&messages(&sim, sonnet).await).2, 2500);
    // Unmarked prompts are never cached, however long.
    let mut unmarked = cached_request("claude-test", 10_000, "hello");
    unmarked["system"] = json!("r".repeat(10_000));
    for _ in 0..2 {
        let (_, creation, read) = split(&messages(&sim, unmarked.clone()).await);
        assert_eq!((creation, read), (0, 0));
    }
}

#[tokio::test]
async fn each_api_key_and_model_has_its_own_cache() {
    let sim = start(SimConfig::default()).await;
    let body = cached_request("claude-test", 6000, "hello");
    let other_key: &[(&str, &str)] = &[
        ("x-api-key", "sk-other"),
        ("anthropic-version", "2023-06-01"),
    ];
    assert_eq!(split(&messages(&sim, body.clone()).await).1, 1500);
    let reply = send(&sim, "/v1/messages", other_key, body.to_string()).await;
    assert_eq!(split(&reply).1, 1500, "another key writes its own copy");
    let reply = send(&sim, "/v1/messages", other_key, body.to_string()).await;
    assert_eq!(split(&reply).2, 1500);
    let mut other_model = body.clone();
    other_model["model"] = json!("claude-other");
    assert_eq!(split(&messages(&sim, other_model).await).1, 1500);
}

/// A conversation whose one user message holds `blocks` text blocks of 400 bytes (100 tokens)
/// each after a 4,000-byte system prompt, with a breakpoint on the last block only.
fn conversation(blocks: &[String]) -> Value {
    let mut content: Vec<Value> = blocks
        .iter()
        .map(|text| json!({"type": "text", "text": format!("{text:<400}")}))
        .collect();
    if let Some(last) = content.last_mut() {
        last["cache_control"] = json!({"type": "ephemeral"});
    }
    json!({"model": "claude-test", "max_tokens": 50, "system": "s".repeat(4000),
           "messages": [{"role": "user", "content": content}]})
}

#[tokio::test]
async fn breakpoints_look_back_twenty_blocks_for_an_earlier_prefix() {
    let sim = start(SimConfig::default()).await;
    let base: Vec<String> = (0..5).map(|i| format!("block {i}")).collect();
    // system (1,000) + 5 blocks (500) = 1,500 tokens written at block 5.
    let (_, creation, _) = split(&messages(&sim, conversation(&base)).await);
    assert_eq!(creation, 1500);
    // 10 blocks more, the breakpoint moved to the end: 10 boundaries back is a hit.
    let mut near = base.clone();
    near.extend((0..10).map(|i| format!("near {i}")));
    let (_, creation, read) = split(&messages(&sim, conversation(&near)).await);
    assert_eq!((creation, read), (1000, 1500));
    // 25 other blocks: the written prefix is 25 boundaries before the breakpoint, out of reach.
    let mut far = base.clone();
    far.extend((0..25).map(|i| format!("far {i}")));
    let (_, creation, read) = split(&messages(&sim, conversation(&far)).await);
    assert_eq!((creation, read), (4000, 0));
    // Two breakpoints: the one 20 blocks before the end finds it, the last writes the rest.
    let mut two = conversation(&far);
    two["messages"][0]["content"][5]["cache_control"] = json!({"type": "ephemeral"});
    let mut other = two.clone();
    other["messages"][0]["content"][29]["text"] = json!(format!("{:<400}", "changed"));
    let (_, creation, read) = split(&messages(&sim, other).await);
    assert_eq!((creation, read), (2500, 1500));
}

#[tokio::test]
async fn more_than_four_breakpoints_is_a_400() {
    let sim = start(SimConfig::default()).await;
    let blocks: Vec<String> = (0..6).map(|i| format!("b{i}")).collect();
    let mut body = conversation(&blocks);
    for i in 0..5 {
        body["messages"][0]["content"][i]["cache_control"] = json!({"type": "ephemeral"});
    }
    let reply = messages(&sim, body).await;
    assert_eq!(reply.status, 400);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("A maximum of 4 blocks with cache_control"),
        "{}",
        reply.text
    );
}

#[tokio::test]
async fn openai_reports_cached_tokens_for_a_repeated_prefix_in_128_token_steps() {
    let sim = start(SimConfig::default()).await;
    let body = |system_bytes: usize, user: &str| {
        json!({"model": "gpt-test", "messages": [
            {"role": "system", "content": "i".repeat(system_bytes)},
            {"role": "user", "content": user}]})
    };
    let cached = |reply: &Reply| {
        assert_eq!(reply.status, 200, "{}", reply.text);
        let usage = reply.json()["usage"].clone();
        (
            usage["prompt_tokens"].as_u64().unwrap(),
            usage["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap(),
        )
    };
    let (_, first) = cached(&chat(&sim, body(6000, "first")).await);
    assert_eq!(first, 0);
    // 1,500 shared tokens: 1,408 cached (11 × 128); prompt_tokens still counts them all.
    let (prompt, second) = cached(&chat(&sim, body(6000, "second")).await);
    assert_eq!(second, 1408);
    assert!(prompt > second);
    // Below 1,024 tokens nothing is cached.
    chat(&sim, body(4000, "a")).await;
    assert_eq!(cached(&chat(&sim, body(4000, "b")).await).1, 0);
    // Per key.
    let other: &[(&str, &str)] = &[("authorization", "Bearer sk-other")];
    let reply = send(
        &sim,
        "/v1/chat/completions",
        other,
        body(6000, "x").to_string(),
    )
    .await;
    assert_eq!(cached(&reply).1, 0);
}

#[tokio::test(start_paused = true)]
async fn batches_and_scripted_answers_get_the_same_accounting() {
    let sim = start(SimConfig {
        scenario: scenario(
            "rules:\n  - name: hi\n    match: {last_user: \"^hello$\"}\n    text: \"Hi there\"\n",
        ),
        ..SimConfig::default()
    })
    .await;
    let body = cached_request("claude-test", 6000, "hello");
    let first = messages(&sim, body.clone()).await;
    assert_eq!(first.json()["content"][0]["text"], "Hi there");
    assert_eq!(split(&first).1, 1500);
    let batch = json!({"requests": [{"custom_id": "a", "params": body}]});
    let created = send(&sim, "/v1/messages/batches", ANTHROPIC, batch.to_string()).await;
    let id = created.json()["id"].as_str().unwrap().to_string();
    tokio::time::advance(Duration::from_secs(1)).await;
    let results = get(
        &sim,
        &format!("/v1/messages/batches/{id}/results"),
        ANTHROPIC,
    )
    .await;
    let results = jsonl_by_custom_id(&results.text);
    let usage = &results["a"]["message"]["usage"];
    assert_eq!(usage["cache_read_input_tokens"], 1500, "{usage}");
    assert_eq!(usage["cache_creation_input_tokens"], 0);
}
