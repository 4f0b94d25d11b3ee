//! One sub-agent end to end: the simulator plays the model (scenario scripts), the agent's
//! tools run for real on a temporary repository, commands in the real kernel sandbox.

use std::time::Duration;

use fanout_core::agent::{AgentConfig, LoopStatus, run_agent};
use fanout_core::policy::AgentSpec;
use fanout_core::sandbox::SandboxConfig;
use fanout_sim::SimHandle;
use tokio_util::sync::CancellationToken;

use crate::support::{Fixture, SECRET, fleet, scenario_sim};

fn spec() -> AgentSpec {
    AgentSpec {
        agent_id: "agent-1".into(),
        task_id: "t1".into(),
        description: "Rename fn a to fn alpha in src/a.rs".into(),
        scope: vec!["src/a.rs".into()],
        ..AgentSpec::default()
    }
}

fn config() -> AgentConfig {
    AgentConfig {
        model: "claude-sonnet-4-5".into(),
        pricing: None,
        max_tokens_per_turn: 1024,
        max_turns: 10,
        max_tokens: 1_000_000,
        max_dollars: None,
        max_wall_time: Duration::from_secs(60),
        output_schema: None,
        on_call: None,
        prompt_caching: true,
    }
}

const SCRIPTED: &str = r#"
rules:
  - match: {turn: 1}
    tool_use: {name: read_file, input: {path: src/a.rs}}
  - match: {turn: 2}
    tool_use: {name: edit_file, input: {path: src/a.rs, old_text: "fn a()", new_text: "fn alpha()"}}
  - match: {turn: 3}
    tool_use: {name: bash, input: {command: "git diff"}}
  - match: {turn: 4}
    tool_use: {name: report_result, input: {status: success, summary: "renamed", files_changed: [src/a.rs]}}
"#;

#[tokio::test]
async fn scripted_agent_reads_edits_diffs_and_reports_with_matching_receipts() {
    let fixture = Fixture::new();
    let sim = scenario_sim(SCRIPTED).await;
    let toolbox = fixture.toolbox(&["git diff", "git status"]);
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::Success, "{outcome:#?}");
    assert!(outcome.flags.is_empty(), "{:?}", outcome.flags);
    assert_eq!(outcome.turns, 4);
    let receipts = &outcome.receipts;
    assert!(receipts.files_read.contains("src/a.rs"));
    assert_eq!(
        receipts.files_written.iter().collect::<Vec<_>>(),
        ["src/a.rs"]
    );
    assert_eq!(receipts.commands.len(), 1);
    assert_eq!(receipts.commands[0].argv, ["git", "diff"]);
    assert_eq!(
        receipts.commands[0].exit_code,
        Some(0),
        "{}",
        sim.exchanges().last().unwrap().request
    );
    assert!(receipts.denials.is_empty());
    assert_eq!(receipts.tools_called, ["read_file", "edit_file", "bash"]);
    assert_eq!(
        std::fs::read_to_string(fixture.root.join("src/a.rs")).unwrap(),
        "fn alpha() {}\n"
    );
    // The diff the model saw came from the real repository.
    let exchanges = sim.exchanges();
    let last = exchanges.last().unwrap().request.to_string();
    assert!(last.contains("+fn alpha() {}"), "{last}");
    // What the model was told: the system prompt names the scope and the tools.
    let first = exchanges[0].request.to_string();
    assert!(first.contains("src/a.rs") && first.contains("report_result"));
    // Undo is byte for byte.
    toolbox.undo();
    fixture.assert_no_escape();
    assert_eq!(
        std::fs::read_to_string(fixture.root.join("src/a.rs")).unwrap(),
        "fn a() {}\n"
    );
}

#[tokio::test]
async fn an_agent_looping_on_tool_calls_hits_the_turn_limit() {
    let fixture = Fixture::new();
    let sim = scenario_sim("rules:\n  - tool_use: {name: list_files, input: {}}\n").await;
    let toolbox = fixture.toolbox(&[]);
    let config = AgentConfig {
        max_turns: 5,
        ..config()
    };
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::TurnLimit);
    assert_eq!(outcome.turns, 5);
    assert_eq!(outcome.receipts.tool_calls, 5);
    // The last turn forced the report tool.
    let last = sim.exchanges().last().unwrap().request.clone();
    assert_eq!(last["tool_choice"]["name"], "report_result", "{last}");
}

#[tokio::test]
async fn the_token_limit_stops_an_agent() {
    let fixture = Fixture::new();
    let sim = scenario_sim("rules:\n  - tool_use: {name: list_files, input: {}}\n").await;
    let toolbox = fixture.toolbox(&[]);
    let config = AgentConfig {
        max_tokens: 2_000,
        ..config()
    };
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::TokenLimit, "{outcome:#?}");
    assert!(outcome.turns < 10);
    assert!(outcome.input_tokens + outcome.output_tokens >= 2_000);
}

/// The wall-time limit ends an agent in the middle of a model call, not when the call answers.
/// On paused time: the simulator's 5 s delay and the agent's 300 ms limit run on the same
/// virtual clock, so how loaded the machine is changes nothing.
#[tokio::test(start_paused = true)]
async fn the_wall_time_limit_stops_an_agent() {
    let fixture = Fixture::new();
    let sim =
        scenario_sim("rules:\n  - tool_use: {name: list_files, input: {}}\n    delay_ms: 5000\n")
            .await;
    let toolbox = fixture.toolbox(&[]);
    let config = AgentConfig {
        max_wall_time: Duration::from_millis(300),
        ..config()
    };
    let started = tokio::time::Instant::now();
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config,
        &CancellationToken::new(),
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(outcome.status, LoopStatus::TimeLimit, "{outcome:#?}");
    // Stopped during its first call: no answer came, so no token was counted and no tool ran.
    assert_eq!(outcome.turns, 1);
    assert_eq!(outcome.output_tokens, 0);
    assert_eq!(outcome.receipts.tool_calls, 0);
    // At its limit: an agent that waited for the answer would end 5 s in or later.
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn claims_that_disagree_with_receipts_are_flagged() {
    let fixture = Fixture::new();
    let sim = scenario_sim(
        "rules:\n  - tool_use: {name: report_result, input: {status: success, summary: done, files_changed: [src/a.rs]}}\n",
    )
    .await;
    let toolbox = fixture.toolbox(&[]);
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::Success);
    assert!(
        outcome.flags.iter().any(|f| f.contains("zero tool calls")),
        "{:?}",
        outcome.flags
    );
    assert!(
        outcome.flags.iter().any(|f| f.contains("src/a.rs")),
        "{:?}",
        outcome.flags
    );
}

#[tokio::test]
async fn an_invalid_result_gets_one_repair_attempt() {
    let fixture = Fixture::new();
    let sim = scenario_sim(r#"
rules:
  - match: {turn: 1}
    tool_use: {name: report_result, input: {summary: 42}}
  - match: {turn: 2}
    tool_use: {name: report_result, input: {status: failure, summary: "could not", files_changed: []}}
"#)
    .await;
    let toolbox = fixture.toolbox(&[]);
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config(),
        &CancellationToken::new(),
    )
    .await;
    // The repaired result is valid, and says the agent could not finish.
    assert_eq!(
        outcome.status,
        LoopStatus::ReportedUnfinished("failure: could not".into()),
        "{outcome:#?}"
    );
    let second = sim.exchanges()[1].request.to_string();
    assert!(second.contains("does not match the schema"), "{second}");

    let sim = sim_invalid_twice().await;
    let toolbox = fixture.toolbox(&[]);
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::InvalidResult);
}

async fn sim_invalid_twice() -> SimHandle {
    scenario_sim("rules:\n  - tool_use: {name: report_result, input: {summary: 42}}\n").await
}

/// The model asks for hostile actions; the scope holds and every refusal is receipted.
const HOSTILE: &str = r##"
rules:
  - match: {turn: 1}
    tool_use:
      - {name: write_file, input: {path: ../outside/canary.txt, content: pwned}}
      - {name: write_file, input: {path: /tmp/fanout-agent-escape, content: pwned}}
      - {name: write_file, input: {path: .git/hooks/pre-commit, content: "#!/bin/sh"}}
      - {name: write_file, input: {path: src/b.rs, content: pwned}}
      - {name: read_file, input: {path: .env}}
      - {name: bash, input: {command: "cat .env"}}
  - match: {turn: 2}
    tool_use:
      - {name: bash, input: {command: "git diff --output=../outside/x"}}
      - {name: bash, input: {command: "git status; rm -rf ~"}}
      - {name: bash, input: {command: "LD_PRELOAD=./e.so git status"}}
      - {name: bash, input: {command: "sh -c 'touch ../outside/pwned'"}}
      - {name: read_file, input: {path: "/proc/self/root/etc/passwd"}}
      - {name: search, input: {pattern: "sk-canary"}}
  - match: {turn: 3}
    tool_use: {name: report_result, input: {status: success, summary: "did everything", files_changed: [src/b.rs]}}
"##;

#[tokio::test]
async fn a_hostile_model_cannot_leave_its_scope() {
    let fixture = Fixture::new();
    let sim = scenario_sim(HOSTILE).await;
    let toolbox = fixture.toolbox_with(
        fixture.policy(&["git diff", "git status", "cat"]),
        SandboxConfig::default(),
    );
    let outcome = run_agent(
        &fleet(&sim),
        &toolbox,
        &spec(),
        &config(),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.status, LoopStatus::Success);
    fixture.assert_no_escape();
    assert!(!std::path::Path::new("/tmp/fanout-agent-escape").exists());
    assert!(!fixture.outside.join("x").exists());
    // The secret never reached the model.
    for exchange in sim.exchanges() {
        assert!(
            !exchange
                .request
                .to_string()
                .contains(SECRET.split('=').nth(1).unwrap())
        );
    }
    let denials = &outcome.receipts.denials;
    for target in [
        "../outside/canary.txt",
        "/tmp/fanout-agent-escape",
        ".git/hooks/pre-commit",
        "src/b.rs",
        ".env",
        "git status; rm -rf ~",
        "LD_PRELOAD=./e.so git status",
        "sh -c 'touch ../outside/pwned'",
    ] {
        assert!(
            denials.iter().any(|d| d.target == target),
            "no denial for {target}: {denials:#?}"
        );
    }
    assert!(denials.iter().all(|d| d.agent_id == "agent-1"));
    // `git diff --output` ran (it is allowlisted) and the kernel stopped its write.
    assert!(
        outcome
            .receipts
            .commands
            .iter()
            .any(|c| c.argv.iter().any(|a| a.starts_with("--output")))
    );
    // The claim of a change it never made is flagged.
    assert!(
        outcome.flags.iter().any(|f| f.contains("src/b.rs")),
        "{:?}",
        outcome.flags
    );
}

const EDIT_FIRST: &str = r#"
rules:
  - match: {turn: 1}
    tool_use: {name: edit_file, input: {path: src/a.rs, old_text: "fn a()", new_text: "fn alpha()"}}
  - match: {turn: 2}
    tool_use: {name: report_result, input: {status: success, summary: "renamed", files_changed: [src/a.rs]}}
"#;

/// The start gate lets the first model call go out at once but holds the first tool call
/// until the gate opens; a failed gate means no tool runs at all.
#[tokio::test]
async fn tool_calls_wait_for_the_start_gate_and_never_run_when_it_fails() {
    use fanout_core::agent::{StartGate, run_agent_gated};

    let fixture = Fixture::new();
    let sim = scenario_sim(EDIT_FIRST).await;
    let toolbox = fixture.toolbox(&[]);
    let (open, opened) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let gate: StartGate = Box::pin(async move { opened.await.unwrap_or(Err("dropped".into())) });
    let fleet = fleet(&sim);
    let (spec, config, cancel) = (spec(), config(), CancellationToken::new());
    let agent = run_agent_gated(&fleet, &toolbox, &spec, &config, Some(gate), &cancel);
    tokio::pin!(agent);
    // The first model call is answered while the gate is shut; the edit waits.
    let waited = tokio::time::timeout(Duration::from_millis(300), &mut agent).await;
    assert!(waited.is_err(), "the agent finished with its gate shut");
    assert_eq!(
        sim.exchanges().len(),
        1,
        "the first turn went out before the gate"
    );
    assert_eq!(
        std::fs::read_to_string(fixture.root.join("src/a.rs")).unwrap(),
        "fn a() {}\n",
        "no tool ran before the gate opened"
    );
    open.send(Ok(())).unwrap();
    let outcome = agent.await;
    assert_eq!(outcome.status, LoopStatus::Success, "{outcome:#?}");
    assert_eq!(
        std::fs::read_to_string(fixture.root.join("src/a.rs")).unwrap(),
        "fn alpha() {}\n"
    );

    // A gate that fails: the agent ends before its first tool call, the tree untouched.
    let fixture = Fixture::new();
    let sim = scenario_sim(EDIT_FIRST).await;
    let toolbox = fixture.toolbox(&[]);
    let gate: StartGate = Box::pin(async { Err("run store: disk full".to_string()) });
    let fleet = crate::support::fleet(&sim);
    let outcome = run_agent_gated(
        &fleet,
        &toolbox,
        &spec,
        &config,
        Some(gate),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(
        outcome.status,
        LoopStatus::StartFailed("run store: disk full".into())
    );
    assert!(outcome.receipts.tools_called.is_empty());
    assert_eq!(sim.exchanges().len(), 1);
    assert_eq!(
        std::fs::read_to_string(fixture.root.join("src/a.rs")).unwrap(),
        "fn a() {}\n"
    );
    fixture.assert_no_escape();
}
