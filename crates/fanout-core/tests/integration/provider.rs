//! Both providers over real HTTP against the simulator: what we get back, and what we sent
//! (the simulator records every exchange).

use std::time::Duration;

use fanout_core::provider::anthropic::{AnthropicConfig, AnthropicProvider};
use fanout_core::provider::http::HttpConfig;
use fanout_core::provider::openai::{OpenAiConfig, OpenAiProvider};
use fanout_core::provider::send_window::SendWindowConfig;
use fanout_core::provider::{
    Attempt, ContentBlock, ErrorClass, JsonSchemaFormat, Message, Provider, ProviderError, Request,
    Response, Role, StopReason, ToolChoice, ToolSpec,
};
use fanout_sim::{Exchange, Faults, Scenario, SimConfig, SimHandle};
use serde_json::{Value, json};

use crate::support::{scenario_sim, start_sim};

fn http() -> HttpConfig {
    HttpConfig {
        request_timeout: Duration::from_secs(30),
        stream_idle_timeout: Duration::from_secs(10),
        ..HttpConfig::default()
    }
}

/// For paused-time tests with simulator latency: no connection reuse. The simulator's sockets
/// keep Nagle's algorithm on, so on a reused connection (past TCP quick-ack) a small write can
/// wait for a delayed ACK; paused time sees no I/O meanwhile and jumps to our idle timeout.
fn unpooled() -> HttpConfig {
    HttpConfig {
        max_idle_per_host: 0,
        ..http()
    }
}

fn anthropic_with_key(sim: &SimHandle, key: &str) -> AnthropicProvider {
    anthropic_with(sim, key, http())
}

fn anthropic_with(sim: &SimHandle, key: &str, http: HttpConfig) -> AnthropicProvider {
    AnthropicProvider::new(AnthropicConfig {
        base_url: format!("{}/", sim.base_url()),
        http,
        ..AnthropicConfig::new(key)
    })
    .unwrap()
}

fn openai_with_key(sim: &SimHandle, key: &str) -> OpenAiProvider {
    openai_with(sim, key, http())
}

fn openai_with(sim: &SimHandle, key: &str, http: HttpConfig) -> OpenAiProvider {
    OpenAiProvider::new(OpenAiConfig {
        base_url: format!("{}/v1", sim.base_url()),
        http,
        ..OpenAiConfig::new(key)
    })
    .unwrap()
}

/// Both providers against one simulator.
fn providers(sim: &SimHandle) -> [Box<dyn Provider>; 2] {
    providers_with(sim, http())
}

fn providers_with(sim: &SimHandle, http: HttpConfig) -> [Box<dyn Provider>; 2] {
    [
        Box::new(anthropic_with(sim, "test-key", http.clone())),
        Box::new(openai_with(sim, "test-key", http)),
    ]
}

fn hello() -> Request {
    let mut request = Request::new("model-test", 200);
    request.system = Some("You are a terse worker.".into());
    request.messages = vec![Message::user("say hello")];
    request
}

fn submit_tool() -> ToolSpec {
    ToolSpec {
        name: "submit".into(),
        description: "Submit the result".into(),
        input_schema: json!({
            "type": "object",
            "properties": {"summary": {"type": "string"}, "score": {"type": "integer"}},
            "required": ["summary", "score"],
        }),
    }
}

fn with_tools(mut request: Request) -> Request {
    request.tools = vec![
        ToolSpec {
            name: "read_file".into(),
            description: "Read a file".into(),
            input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        },
        submit_tool(),
    ];
    request
}

fn last_exchange(sim: &SimHandle) -> Exchange {
    sim.exchanges().pop().unwrap()
}

/// The parts of a response that must not depend on streaming.
fn essence(response: &Response) -> (Vec<ContentBlock>, StopReason, u64, u64) {
    let content = response
        .content
        .iter()
        .map(|block| match block {
            // Tool call ids are per response; compare the rest.
            ContentBlock::ToolUse { name, input, .. } => ContentBlock::ToolUse {
                id: String::new(),
                name: name.clone(),
                input: input.clone(),
            },
            other => other.clone(),
        })
        .collect();
    (
        content,
        response.stop_reason.clone(),
        response.usage.total_input(),
        response.usage.output_tokens,
    )
}

fn api_details(error: &ProviderError) -> &fanout_core::provider::ApiErrorDetails {
    match error {
        ProviderError::Api { details, .. } => details,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn malformed_what(error: ProviderError) -> String {
    match error {
        ProviderError::Malformed { what, .. } => what,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[tokio::test]
async fn a_plain_message_is_the_same_streamed_or_not() {
    let sim = start_sim(SimConfig {
        rpm: Some(1000),
        itpm: Some(100_000),
        otpm: Some(100_000),
        ..SimConfig::default()
    })
    .await;
    for provider in providers(&sim) {
        let plain = provider
            .send(&hello(), Attempt::default(), false)
            .await
            .unwrap();
        let exchange = last_exchange(&sim);
        assert!(!exchange.stream);
        assert_eq!(
            plain.text(),
            "Simulated reply from fanout sim to: say hello"
        );
        assert_eq!(plain.stop_reason, StopReason::EndTurn);
        assert_eq!(plain.usage.total_input(), exchange.input_tokens);
        assert_eq!(plain.usage.output_tokens, exchange.output_tokens);
        assert_eq!(
            plain.request_id.as_deref(),
            Some(exchange.request_id.as_str())
        );
        assert_eq!(plain.rate_limits.requests.limit, Some(1000));
        assert!(plain.rate_limits.requests.remaining.is_some());

        let streamed = provider
            .send(&hello(), Attempt::default(), true)
            .await
            .unwrap();
        let exchange = last_exchange(&sim);
        assert!(exchange.stream, "{}", provider.name());
        assert_eq!(essence(&streamed), essence(&plain), "{}", provider.name());
        assert_eq!(
            streamed.request_id.as_deref(),
            Some(exchange.request_id.as_str())
        );
        assert!(!streamed.id.is_empty());
        assert_eq!(streamed.model, "model-test");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_forced_tool_call_comes_back_as_tool_use() {
    let sim = start_sim(SimConfig::default()).await;
    let mut request = with_tools(hello());
    request.tool_choice = Some(ToolChoice::Tool {
        name: "submit".into(),
    });
    for provider in providers(&sim) {
        for stream in [false, true] {
            let response = provider
                .send(&request, Attempt::default(), stream)
                .await
                .unwrap();
            let label = format!("{} stream={stream}", provider.name());
            assert_eq!(response.stop_reason, StopReason::ToolUse, "{label}");
            let calls: Vec<_> = response.tool_uses().collect();
            assert_eq!(calls.len(), 1, "{label}");
            let (id, name, input) = calls[0];
            assert!(!id.is_empty(), "{label}");
            assert_eq!(name, "submit", "{label}");
            assert!(input["summary"].is_string(), "{label}: {input}");
            assert!(input["score"].is_i64(), "{label}: {input}");
        }
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_tool_round_trip_is_accepted_by_both_apis() {
    // The simulator validates tool_use / tool_result pairing like the real APIs.
    let sim = start_sim(SimConfig::default()).await;
    let mut request = with_tools(hello());
    request.messages = vec![
        Message::user("read a.txt and b.txt"),
        Message::assistant(vec![
            ContentBlock::text("Reading."),
            ContentBlock::ToolUse {
                id: "call_1".into(),
                name: "read_file".into(),
                input: json!({"path": "a.txt"}),
            },
            ContentBlock::ToolUse {
                id: "call_2".into(),
                name: "read_file".into(),
                input: json!({"path": "b.txt"}),
            },
        ]),
        Message {
            role: Role::User,
            content: vec![
                ContentBlock::ToolResult {
                    tool_use_id: "call_1".into(),
                    content: "alpha".into(),
                    is_error: false,
                },
                ContentBlock::ToolResult {
                    tool_use_id: "call_2".into(),
                    content: "no such file".into(),
                    is_error: true,
                },
                ContentBlock::text("now summarise"),
            ],
        },
    ];
    for provider in providers(&sim) {
        let response = provider
            .send(&request, Attempt::default(), false)
            .await
            .unwrap();
        assert!(
            response.text().contains("now summarise"),
            "{}",
            provider.name()
        );
    }
    let exchanges = sim.exchanges();
    let openai_messages = &exchanges[1].request["messages"];
    assert_eq!(openai_messages[3]["role"], "tool");
    assert_eq!(openai_messages[4]["content"], "Error: no such file");
    sim.shutdown().await;
}

#[tokio::test]
async fn count_tokens_matches_what_the_server_counts() {
    let sim = start_sim(SimConfig::default()).await;
    let anthropic = anthropic_with_key(&sim, "test-key");
    let request = with_tools(hello());
    let counted = anthropic.count_tokens(&request).await.unwrap().unwrap();
    let exchange = last_exchange(&sim);
    assert_eq!(exchange.endpoint, "count_tokens");
    assert_eq!(counted, exchange.input_tokens);
    assert!(exchange.request.get("max_tokens").is_none());
    let sent = anthropic
        .send(&request, Attempt::default(), false)
        .await
        .unwrap();
    assert_eq!(sent.usage.total_input(), counted);

    let openai = openai_with_key(&sim, "test-key");
    assert!(openai.count_tokens(&request).await.is_none());
    sim.shutdown().await;
}

#[tokio::test]
async fn anthropic_sends_the_headers_and_body_we_expect() {
    let sim = start_sim(SimConfig::default()).await;
    let anthropic = anthropic_with_key(&sim, "test-key");
    let mut request = with_tools(hello());
    request.tool_choice = Some(ToolChoice::Auto);
    request.temperature = Some(0.5);
    request.stop_sequences = vec!["END".into()];
    request.metadata_user_id = Some("agent-1".into());
    anthropic
        .send(&request, Attempt { retry: 3 }, true)
        .await
        .unwrap();
    let exchange = last_exchange(&sim);
    assert_eq!(exchange.endpoint, "messages");
    let header = |name: &str| exchange.headers.get(name).map(String::as_str);
    assert_eq!(header("x-api-key"), Some("present"));
    assert_eq!(header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(header("x-stainless-retry-count"), Some("3"));
    assert_eq!(header("content-type"), Some("application/json"));
    assert_eq!(header("authorization"), None);
    let body = &exchange.request;
    // Too short to cache: no marks (`caching.rs` tests where they go on long prompts).
    assert_eq!(body["system"][0]["text"], "You are a terse worker.");
    assert!(body["system"][0].get("cache_control").is_none());
    assert_eq!(body["tools"][1]["name"], "submit");
    assert!(body["tools"][1].get("cache_control").is_none());
    assert!(!body.to_string().contains("cache_control"));
    assert_eq!(body["tool_choice"], json!({"type": "auto"}));
    assert_eq!(body["temperature"], json!(0.5));
    assert_eq!(body["stop_sequences"], json!(["END"]));
    assert_eq!(body["metadata"], json!({"user_id": "agent-1"}));
    assert_eq!(body["stream"], json!(true));
    sim.shutdown().await;
}

/// The send window over HTTP. With room for one request at a time, twelve concurrent calls
/// reach the simulator in the order they asked for a place, and each gives its place up as
/// soon as its body is on the connection, not when its answer comes: the twelve 300 ms
/// answers overlap (held until the answer, they would arrive 300 ms apart, 3.6 s in all).
/// On paused time, so the simulator's latency is virtual and a slow machine changes nothing;
/// no connection reuse (see [`unpooled`]).
#[tokio::test(start_paused = true)]
async fn the_send_window_orders_requests_and_frees_a_place_once_the_body_is_sent() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(300),
        ..SimConfig::default()
    })
    .await;
    let anthropic = anthropic_with(
        &sim,
        "test-key",
        HttpConfig {
            send_window: SendWindowConfig {
                size: 1,
                horizon: Duration::from_secs(30),
            },
            ..unpooled()
        },
    );
    let requests: Vec<Request> = (0..12)
        .map(|i| {
            let mut request = hello();
            request.messages = vec![Message::user(format!("call {i:02}"))];
            request
        })
        .collect();
    // `join_all` polls the calls in order, so they ask for their places in that order.
    let answers = futures_util::future::join_all(
        requests
            .iter()
            .map(|request| anthropic.send(request, Attempt { retry: 0 }, false)),
    )
    .await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let mut arrived = sim.exchanges();
    arrived.sort_by_key(|exchange| exchange.seq);
    // Every body was in before the first answer was due.
    let at_ms: Vec<u64> = arrived.iter().map(|exchange| exchange.at_ms).collect();
    let first = at_ms.iter().min().copied().unwrap_or_default();
    assert!(
        at_ms.iter().all(|&at| at < first + 300),
        "arrivals at {at_ms:?} ms"
    );
    let order: Vec<&str> = arrived
        .iter()
        .map(|exchange| {
            exchange.request["messages"][0]["content"][0]["text"]
                .as_str()
                .unwrap_or_default()
        })
        .collect();
    let expected: Vec<String> = (0..12).map(|i| format!("call {i:02}")).collect();
    assert_eq!(order, expected);
    sim.shutdown().await;
}

#[tokio::test]
async fn openai_sends_the_headers_and_body_we_expect() {
    let sim = start_sim(SimConfig::default()).await;
    let openai = openai_with_key(&sim, "test-key");
    let mut request = with_tools(hello());
    request.tool_choice = Some(ToolChoice::Any);
    openai
        .send(&request, Attempt { retry: 2 }, true)
        .await
        .unwrap();
    let exchange = last_exchange(&sim);
    assert_eq!(exchange.endpoint, "chat_completions");
    assert_eq!(
        exchange.headers.get("authorization").map(String::as_str),
        Some("present")
    );
    assert_eq!(
        exchange
            .headers
            .get("x-stainless-retry-count")
            .map(String::as_str),
        Some("2")
    );
    let body = &exchange.request;
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "You are a terse worker."})
    );
    assert_eq!(body["max_completion_tokens"], json!(200));
    assert!(body.get("max_tokens").is_none());
    assert_eq!(body["tool_choice"], json!("required"));
    assert_eq!(body["tools"][0]["type"], "function");
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    sim.shutdown().await;
}

#[tokio::test]
async fn structured_output_comes_back_as_schema_shaped_json_text() {
    let sim = start_sim(SimConfig::default()).await;
    let mut request = hello();
    request.response_format = Some(JsonSchemaFormat {
        name: "result".into(),
        schema: submit_tool().input_schema,
    });
    for provider in providers(&sim) {
        let response = provider
            .send(&request, Attempt::default(), false)
            .await
            .unwrap();
        let value: Value = serde_json::from_str(&response.text()).unwrap();
        assert!(value["summary"].is_string(), "{}: {value}", provider.name());
    }
    let exchanges = sim.exchanges();
    assert_eq!(
        exchanges[0].request["output_config"]["format"]["type"],
        "json_schema"
    );
    assert_eq!(
        exchanges[1].request["response_format"]["json_schema"]["strict"],
        json!(true)
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn a_429_carries_status_type_retry_after_and_request_id() {
    let sim = scenario_sim(
        r#"
rules:
  - match: {endpoint: messages}
    error: {status: 429, type: rate_limit_error, message: "slow down", headers: {retry-after: "7"}}
  - match: {endpoint: chat_completions}
    error: {status: 429, type: tokens, message: "Rate limit reached for model-test on tokens per min (TPM): Limit 100. Please try again in 1.5s."}
"#,
    )
    .await;
    let [anthropic, openai] = providers(&sim);
    for stream in [false, true] {
        let error = anthropic
            .send(&hello(), Attempt::default(), stream)
            .await
            .unwrap_err();
        let details = api_details(&error);
        assert_eq!(details.status, 429);
        assert_eq!(details.error_type.as_deref(), Some("rate_limit_error"));
        assert_eq!(details.message, "slow down");
        assert_eq!(details.retry_after, Some(Duration::from_secs(7)));
        assert_eq!(
            error.request_id(),
            Some(last_exchange(&sim).request_id.as_str())
        );
        assert_eq!(error.class(), ErrorClass::RateLimited);
    }

    let error = openai
        .send(&hello(), Attempt::default(), false)
        .await
        .unwrap_err();
    let details = api_details(&error);
    assert_eq!(details.status, 429);
    assert_eq!(details.error_type.as_deref(), Some("tokens"));
    assert_eq!(details.error_code.as_deref(), Some("rate_limit_exceeded"));
    // No retry-after header: the delay comes from the message.
    assert_eq!(details.retry_after, Some(Duration::from_millis(1500)));
    assert_eq!(
        error.request_id(),
        Some(last_exchange(&sim).request_id.as_str())
    );
    assert_eq!(error.class(), ErrorClass::RateLimited);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_real_rate_limit_429_from_the_simulator() {
    let sim = start_sim(SimConfig {
        rpm: Some(1),
        ..SimConfig::default()
    })
    .await;
    for provider in providers(&sim) {
        // The one request of the minute may already be used up by the other provider.
        let mut error = None;
        for _ in 0..2 {
            if let Err(e) = provider.send(&hello(), Attempt::default(), false).await {
                error = Some(e);
                break;
            }
        }
        let error = error.unwrap();
        let details = api_details(&error);
        assert_eq!(details.status, 429, "{}", provider.name());
        assert!(details.retry_after.unwrap() > Duration::ZERO);
        assert_eq!(details.rate_limits.requests.limit, Some(1));
        assert_eq!(details.rate_limits.requests.remaining, Some(0));
        assert!(details.rate_limits.requests.reset_after.is_some());
        assert_eq!(error.class(), ErrorClass::RateLimited);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn client_errors_are_fatal_and_server_errors_transient() {
    let sim = scenario_sim(
        r#"
rules:
  - match: {last_user: "bad request"}
    error: {status: 400, type: invalid_request_error, message: "messages: bad"}
  - match: {last_user: "overloaded"}
    error: {status: 529, type: overloaded_error, message: "Overloaded", headers: {x-should-retry: "true"}}
"#,
    )
    .await;
    for provider in providers(&sim) {
        let mut request = hello();
        request.messages = vec![Message::user("bad request")];
        let error = provider
            .send(&request, Attempt::default(), false)
            .await
            .unwrap_err();
        assert_eq!(api_details(&error).status, 400);
        assert_eq!(
            api_details(&error).error_type.as_deref(),
            Some("invalid_request_error")
        );
        assert_eq!(api_details(&error).message, "messages: bad");
        assert_eq!(error.class(), ErrorClass::Fatal, "{}", provider.name());

        request.messages = vec![Message::user("overloaded")];
        let error = provider
            .send(&request, Attempt::default(), true)
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Overloaded);
        assert_eq!(error.should_retry_header(), Some(true));
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_missing_key_is_a_fatal_authentication_error() {
    let sim = start_sim(SimConfig::default()).await;
    let openai = openai_with_key(&sim, "");
    let error = openai
        .send(&hello(), Attempt::default(), false)
        .await
        .unwrap_err();
    assert_eq!(api_details(&error).status, 401);
    assert_eq!(error.class(), ErrorClass::Fatal);
    assert!(!last_exchange(&sim).headers.contains_key("authorization"));
    sim.shutdown().await;
}

#[tokio::test]
async fn a_server_without_auth_needs_no_key() {
    let sim = start_sim(SimConfig {
        require_auth: false,
        ..SimConfig::default()
    })
    .await;
    let response = openai_with_key(&sim, "")
        .send(&hello(), Attempt::default(), true)
        .await
        .unwrap();
    assert!(!response.text().is_empty());
    sim.shutdown().await;
}

/// A scenario that breaks the answer on the first attempt only, so a retry (announced by the
/// retry-count header) gets a good one.
fn broken_first(kind: &str) -> String {
    format!(
        "rules:
  - match: {{attempt: 0}}
    malformed: {kind}
    text: \"hello there, this is a longer answer\"
  - text: \"hello there, this is a longer answer\"
"
    )
}

#[tokio::test]
async fn a_truncated_body_is_malformed_truncated_json() {
    let sim = scenario_sim(&broken_first("truncated")).await;
    for provider in providers(&sim) {
        let error = provider
            .send(&hello(), Attempt::default(), false)
            .await
            .unwrap_err();
        assert_eq!(error.class(), ErrorClass::Transient);
        assert_eq!(
            error.request_id(),
            Some(last_exchange(&sim).request_id.as_str())
        );
        let what = malformed_what(error);
        assert!(
            what.starts_with("the body is truncated JSON (ends at line 1 column "),
            "{}: {what}",
            provider.name()
        );
        let retried = provider
            .send(&hello(), Attempt { retry: 1 }, false)
            .await
            .unwrap();
        assert_eq!(retried.text(), "hello there, this is a longer answer");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_garbage_body_is_malformed_invalid_json() {
    let sim = scenario_sim(&broken_first("garbage")).await;
    for provider in providers(&sim) {
        let what = malformed_what(
            provider
                .send(&hello(), Attempt::default(), false)
                .await
                .unwrap_err(),
        );
        assert!(
            what.starts_with("the body is not valid JSON: "),
            "{}: {what}",
            provider.name()
        );
    }
    sim.shutdown().await;
}

// With latency the headers and the first events are out before the cut; without it the server
// may drop the connection before anything left, which is a connection error instead.
// Real time: on a paused clock, a moment when both ends wait on the loopback socket lets the
// clock jump straight to the client's idle timeout (a spurious `Timeout` on a loaded machine).
#[tokio::test]
async fn a_cut_stream_is_malformed() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(50),
        per_output_token: Duration::from_millis(1),
        scenario: Some(Scenario::from_yaml(&broken_first("cut_stream"), "test.yaml").unwrap()),
        ..SimConfig::default()
    })
    .await;
    for provider in providers_with(&sim, unpooled()) {
        let what = malformed_what(
            provider
                .send(&hello(), Attempt::default(), true)
                .await
                .unwrap_err(),
        );
        assert!(
            what.starts_with("stream cut after "),
            "{}: {what}",
            provider.name()
        );
        let retried = provider
            .send(&hello(), Attempt { retry: 1 }, true)
            .await
            .unwrap();
        assert_eq!(retried.text(), "hello there, this is a longer answer");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_garbage_stream_event_is_malformed_naming_the_event() {
    let sim = scenario_sim(&broken_first("garbage")).await;
    let [anthropic, openai] = providers(&sim);
    let what = malformed_what(
        anthropic
            .send(&hello(), Attempt::default(), true)
            .await
            .unwrap_err(),
    );
    assert!(what.starts_with("the `"), "{what}");
    assert!(what.contains("` event is "), "{what}");
    let what = malformed_what(
        openai
            .send(&hello(), Attempt::default(), true)
            .await
            .unwrap_err(),
    );
    assert!(what.starts_with("a stream chunk is "), "{what}");
    sim.shutdown().await;
}

#[tokio::test]
async fn random_faults_always_give_typed_errors() {
    // Every fault kind, drawn at random over many requests: each answer is a response or a
    // typed error, never a panic or a hang. Real time, for the reason given above
    // `a_cut_stream_is_malformed`.
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(10),
        per_output_token: Duration::from_micros(200),
        faults: Faults {
            overloaded: 0.1,
            api_error: 0.1,
            hang: 0.0,
            truncate_body: 0.15,
            cut_stream: 0.15,
            malformed_json: 0.15,
        },
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for provider in providers_with(&sim, unpooled()) {
        for i in 0..40 {
            let stream = i % 2 == 0;
            let kind = match provider.send(&hello(), Attempt::default(), stream).await {
                Ok(_) => "ok",
                Err(ProviderError::Api { .. }) => "api",
                Err(ProviderError::Malformed { .. }) => "malformed",
                Err(other) => panic!("unexpected {other:?}"),
            };
            seen.insert(kind);
        }
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["api", "malformed", "ok"]
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_times_out() {
    let sim = start_sim(SimConfig {
        faults: Faults {
            hang: 1.0,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    for provider in providers(&sim) {
        let error = provider
            .send(&hello(), Attempt::default(), false)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProviderError::Timeout { after, .. } if after == Duration::from_secs(30)),
            "{error:?}"
        );
        assert_eq!(error.class(), ErrorClass::Transient);
        let error = provider
            .send(&hello(), Attempt::default(), true)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProviderError::Timeout { after, .. } if after == Duration::from_secs(10)),
            "{error:?}"
        );
    }
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_stalls_after_its_headers_times_out() {
    let sim = scenario_sim("rules:\n  - delay_ms: 60000\n").await;
    for provider in providers(&sim) {
        let error = provider
            .send(&hello(), Attempt::default(), true)
            .await
            .unwrap_err();
        assert!(
            matches!(error, ProviderError::Timeout { after, .. } if after == Duration::from_secs(10)),
            "{}: {error:?}",
            provider.name()
        );
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn a_closed_port_is_a_connection_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let provider = AnthropicProvider::new(AnthropicConfig {
        base_url: format!("http://{addr}"),
        http: http(),
        ..AnthropicConfig::new("k")
    })
    .unwrap();
    let error = provider
        .send(&hello(), Attempt::default(), false)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ProviderError::Connection { .. }),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Transient);
}
