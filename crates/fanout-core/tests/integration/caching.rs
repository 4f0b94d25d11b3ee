//! Prompt caching on the wire: where the breakpoints go (read back from the simulator's
//! exchange log), that turn k reads turns 1..k-1 from the cache, the four-breakpoint cap, the
//! item workers' shared prefix, and the workflow switch that turns it all off.

use std::time::Duration;

use fanout_core::agent::{AgentConfig, LoopStatus, run_agent};
use fanout_core::policy::AgentSpec;
use fanout_core::provider::{Attempt, ContentBlock, Message, Request, Role, ToolSpec};
use fanout_sim::{Exchange, SimConfig};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::{Fixture, anthropic, fleet, scenario_sim, start_sim};

/// `(where, block)` of every `cache_control` in a recorded Anthropic request body.
fn marks(request: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (i, tool) in request["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if tool.get("cache_control").is_some() {
            out.push(format!("tools.{i}"));
        }
    }
    for (i, block) in request["system"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if block.get("cache_control").is_some() {
            out.push(format!("system.{i}"));
        }
    }
    for (m, message) in request["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        for (b, block) in message["content"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            if block.get("cache_control").is_some() {
                out.push(format!("messages.{m}.{b}"));
            }
        }
    }
    out
}

/// A conversation at its `turns`-th turn: a long shared system prompt, the task, and one
/// assistant tool call with a long result per earlier turn.
fn conversation(turns: usize) -> Request {
    let mut request = Request::new("claude-sonnet-4-5", 256).caching(true);
    request.system = Some("Rule: keep to your scope. ".repeat(250));
    request
        .messages
        .push(Message::user("Task: summarise the files."));
    for i in 1..turns {
        request
            .messages
            .push(Message::assistant(vec![ContentBlock::ToolUse {
                id: format!("toolu_{i}"),
                name: "read_file".into(),
                input: json!({"path": format!("f{i}.txt")}),
            }]));
        request.messages.push(Message {
            role: Role::User,
            content: vec![ContentBlock::ToolResult {
                tool_use_id: format!("toolu_{i}"),
                content: format!("file {i}: {}", "data ".repeat(800)),
                is_error: false,
            }],
        });
    }
    request.tools = vec![ToolSpec {
        name: "read_file".into(),
        description: "Read a file".into(),
        input_schema: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
    }];
    request
}

#[tokio::test]
async fn each_turn_marks_the_conversation_and_reads_the_turns_before_it() {
    let sim = start_sim(SimConfig::default()).await;
    let provider = anthropic(&sim);
    let mut exchanges: Vec<Exchange> = Vec::new();
    for turn in 1..=4 {
        provider
            .send(&conversation(turn), Attempt::default(), false)
            .await
            .unwrap();
        exchanges.push(sim.exchanges().pop().unwrap());
    }
    // Turn 1: the shared system prompt and the task message (tools + system + task are one
    // prefix above the minimum).
    assert_eq!(marks(&exchanges[0].request), ["system.0", "messages.0.0"]);
    // Turn k: the last message (written), the shared prefix, and the previous turn's last
    // message (read exactly).
    let mut second = marks(&exchanges[1].request);
    second.sort();
    assert_eq!(second, ["messages.0.0", "messages.2.0", "system.0"]);
    let mut fourth = marks(&exchanges[3].request);
    fourth.sort();
    assert_eq!(fourth, ["messages.4.0", "messages.6.0", "system.0"]);
    // Turn 1 writes everything; each later turn reads all of the turn before it and writes
    // only what is new.
    assert_eq!(exchanges[0].cache_read_tokens, 0);
    assert!(exchanges[0].cache_creation_tokens > 1000);
    for k in 1..4 {
        let before = &exchanges[k - 1];
        let now = &exchanges[k];
        assert_eq!(
            now.cache_read_tokens,
            before.cache_read_tokens + before.cache_creation_tokens,
            "turn {} reads turns 1..{}",
            k + 1,
            k
        );
        assert!(now.cache_creation_tokens > 0);
        assert!(now.input_tokens - now.cache_read_tokens - now.cache_creation_tokens < 50);
    }
}

#[tokio::test]
async fn never_more_than_four_breakpoints_and_none_below_the_minimum() {
    let sim = start_sim(SimConfig::default()).await;
    let provider = anthropic(&sim);
    // Long tools, a long system prompt, a shared first block and many turns: five places want
    // a mark; four get one, and the API takes the request.
    let mut request = conversation(6);
    request.tools[0].description = "Reads one file of the repository. ".repeat(200);
    request.messages[0].content = vec![
        ContentBlock::text("Shared instructions. ".repeat(300)),
        ContentBlock::text("This agent's part."),
    ];
    request.shared_until = Some((0, 0));
    provider
        .send(&request, Attempt::default(), false)
        .await
        .unwrap();
    let sent = sim.exchanges().pop().unwrap();
    assert_eq!(sent.status, 200);
    let mut placed = marks(&sent.request);
    placed.sort();
    assert_eq!(
        placed,
        ["messages.0.0", "messages.10.0", "messages.8.0", "tools.0"],
        "the last turn, the shared prefix, the previous turn, then the tools"
    );
    // A short prompt gets no mark at all (the API would neither write nor read it).
    let mut short = Request::new("claude-sonnet-4-5", 64);
    short.system = Some("Be brief.".into());
    short.messages.push(Message::user("hi"));
    provider
        .send(&short, Attempt::default(), false)
        .await
        .unwrap();
    let sent = sim.exchanges().pop().unwrap();
    assert!(marks(&sent.request).is_empty(), "{}", sent.request);
    // Haiku 4.5 caches nothing under 4,096 tokens.
    let mut haiku = conversation(2);
    haiku.model = "claude-haiku-4-5".into();
    provider
        .send(&haiku, Attempt::default(), false)
        .await
        .unwrap();
    assert!(marks(&sim.exchanges().pop().unwrap().request).is_empty());
}

#[tokio::test]
async fn caching_off_marks_nothing_and_pays_full_input() {
    let sim = start_sim(SimConfig::default()).await;
    let provider = anthropic(&sim);
    for _ in 0..2 {
        let request = conversation(3).caching(false);
        let response = provider
            .send(&request, Attempt::default(), false)
            .await
            .unwrap();
        assert_eq!(response.usage.cache_read_input_tokens, 0);
        assert_eq!(response.usage.cache_creation_input_tokens, 0);
        let sent = sim.exchanges().pop().unwrap();
        assert!(marks(&sent.request).is_empty());
    }
}

const TWO_READS: &str = r#"
rules:
  - match: {turn: 1}
    tool_use: {name: read_file, input: {path: src/a.rs}}
  - match: {turn: 2}
    tool_use: {name: read_file, input: {path: src/a.rs}}
  - match: {turn: 3}
    tool_use: {name: report_result, input: {status: success, summary: "read it", files_changed: []}}
"#;

async fn agent_exchanges(prompt_caching: bool) -> Vec<Exchange> {
    let fixture = Fixture::new();
    // A file long enough that the conversation after reading it is worth caching.
    let body = format!(
        "fn a() {{}}\n{}",
        "// a comment line of the file\n".repeat(300)
    );
    std::fs::write(fixture.root.join("src/a.rs"), body).unwrap();
    let sim = scenario_sim(TWO_READS).await;
    let toolbox = fixture.toolbox(&[]);
    let spec = AgentSpec {
        agent_id: "agent-1".into(),
        task_id: "t1".into(),
        description: "Summarise src/a.rs".into(),
        scope: vec!["src/a.rs".into()],
        ..AgentSpec::default()
    };
    let config = AgentConfig {
        model: "claude-sonnet-4-5".into(),
        pricing: None,
        max_tokens_per_turn: 1024,
        max_turns: 10,
        max_tokens: 1_000_000,
        max_dollars: None,
        max_wall_time: Duration::from_secs(60),
        output_schema: None,
        on_call: None,
        prompt_caching,
    };
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec,
        &config,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::Success, "{outcome:#?}");
    // The agent counts every input token, cached or not.
    let exchanges = sim.exchanges();
    let sent: u64 = exchanges.iter().map(|e| e.input_tokens).sum();
    assert_eq!(outcome.input_tokens, sent);
    exchanges
}

#[tokio::test]
async fn an_agent_reads_its_earlier_turns_from_the_cache_unless_switched_off() {
    let cached = agent_exchanges(true).await;
    assert_eq!(cached.len(), 3);
    // Turn 2 (after the long read) is written; turn 3 reads all of it.
    assert!(cached[1].cache_creation_tokens > 1000, "{:?}", cached[1]);
    assert_eq!(
        cached[2].cache_read_tokens,
        cached[1].cache_read_tokens + cached[1].cache_creation_tokens
    );
    // The agent's own text comes after the prompt every agent shares.
    let first = &cached[0].request;
    assert!(
        !first["system"][0]["text"]
            .as_str()
            .unwrap()
            .contains("src/a.rs")
    );
    assert!(
        first["system"][1]["text"]
            .as_str()
            .unwrap()
            .contains("src/a.rs")
    );

    let plain = agent_exchanges(false).await;
    assert_eq!(plain.len(), 3);
    for exchange in &plain {
        assert!(marks(&exchange.request).is_empty());
        assert_eq!(
            exchange.cache_read_tokens + exchange.cache_creation_tokens,
            0
        );
    }
}
