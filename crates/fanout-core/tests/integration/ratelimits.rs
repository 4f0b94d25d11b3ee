//! Limits learned from headers, as the real APIs send them (the simulator follows Anthropic's
//! and OpenAI's documented semantics: continuously refilled buckets, `remaining` rounded down,
//! `reset` when the bucket is full again, `retry-after` on a 429), on paused tokio time.
//!
//! Every governor here is told no limit (`rate_limits: {}` in a workflow): it must probe, learn,
//! pace at the learned rate and recover from 429s without help.

use std::time::Duration;

use fanout_core::fleet::{Fleet, FleetError};
use fanout_core::governor::GovernorConfig;
use fanout_core::provider::{Message, Request};
use fanout_sim::{Scenario, Sim, SimConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::support::{anthropic, fleet_with, openai, start_sim};

/// A request of about 1 KB (250 simulator tokens).
fn request(index: usize) -> Request {
    let mut request = Request::new("claude-sonnet-4-5", 64);
    request.system = Some("You are one worker of a test fleet.".into());
    let mut text = format!("Item {index}: ");
    while text.len() < 1000 {
        text.push_str("lorem ipsum dolor sit amet ");
    }
    request.messages.push(Message::user(text));
    request
}

struct Run {
    makespan: Duration,
    failures: Vec<FleetError>,
}

async fn run_all(fleet: &Fleet, requests: usize) -> Run {
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..requests {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move { fleet.call(&request(index), &cancel).await });
    }
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined.unwrap() {
            failures.push(error);
        }
    }
    Run {
        makespan: started.elapsed(),
        failures,
    }
}

fn assert_near_floor(run: &Run, floor: f64, ratio: f64) {
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    let took = run.makespan.as_secs_f64();
    assert!(
        took <= ratio * floor,
        "makespan {took:.2} s is over {ratio} x the {floor:.2} s floor"
    );
}

#[tokio::test(start_paused = true)]
async fn unknown_limits_are_probed_before_the_window_opens() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(600),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 1000).await;
    // 600 in the burst, 400 at 10 a second, plus the last answer's latency.
    assert_near_floor(&run, 40.5, 1.10);
    let stats = sim.stats();
    assert!(
        stats.rate_limited <= 20,
        "{} 429s for 1000 requests",
        stats.rate_limited
    );
    // The probe went alone: nothing else arrived before its answer.
    let exchanges = sim.exchanges();
    assert!(
        exchanges[1].at_ms >= 500,
        "second request at {} ms",
        exchanges[1].at_ms
    );
    let snapshot = fleet.governor().snapshot();
    assert_eq!(snapshot.learned.requests, Some(600));
    assert!(!snapshot.probing);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_learned_input_token_limit_is_paced_near_the_floor() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        itpm: Some(150_000),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 1000).await;
    let stats = sim.stats();
    let total = stats.input_tokens as f64;
    let floor = (total - 150_000.0) / (150_000.0 / 60.0) + 0.5;
    assert!(floor > 20.0, "the input limit must bind (floor {floor} s)");
    assert_near_floor(&run, floor, 1.10);
    assert!(
        stats.rate_limited <= 20,
        "{} 429s for 1000 requests",
        stats.rate_limited
    );
    assert_eq!(
        fleet.governor().snapshot().learned.input_tokens,
        Some(150_000)
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_learned_openai_request_limit_is_paced_near_the_floor() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(600),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(openai(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 1000).await;
    assert_near_floor(&run, 40.5, 1.10);
    assert!(sim.stats().rate_limited <= 20, "{:?}", sim.stats());
    assert_eq!(fleet.governor().snapshot().learned.requests, Some(600));
    sim.shutdown().await;
}

/// Regression: at 12 requests/min every answer used to be followed by a 429, because the
/// learned level was put one request above what the server reported.
#[tokio::test(start_paused = true)]
async fn a_low_learned_limit_is_not_overshot_after_every_answer() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(12),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 40).await;
    // 12 in the burst, 28 at one per 5 s, plus the last answer's latency.
    assert_near_floor(&run, 140.5, 1.10);
    let stats = sim.stats();
    assert!(
        stats.rate_limited * 20 <= stats.requests_total,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.requests_total
    );
    sim.shutdown().await;
}

/// Regression: every retry of a 429 used to wait for a token of the retry budget (20, then
/// one a second), so 100 rate-limited requests took minutes after the server allowed them.
#[tokio::test(start_paused = true)]
async fn rate_limited_requests_resume_after_their_retry_after() {
    let scenario = Scenario::from_yaml(
        r#"
rules:
  - match: {attempt: 0}
    error: {status: 429, type: rate_limit_error, message: "slow down", headers: {retry-after: "1"}}
"#,
        "all-429.yaml",
    )
    .unwrap();
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        scenario: Some(scenario),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 100).await;
    // Every answer, 429s included, takes 0.5 s. The probe's 429 (at 0.5 s) pauses the fleet
    // 1 s; the other 99 first tries get theirs at 2 s and pause it 1 s more; then every retry
    // goes at once and is answered at 3.5 s.
    assert_near_floor(&run, 3.5, 1.05);
    assert_eq!(sim.stats().rate_limited, 100);
    sim.shutdown().await;
}

/// Regression: after an outage every retry waited for a token of the retry budget (20, then
/// one a second), so 100 agents whose server came back after 1 s took 80 s. Now the fleet
/// probes once every 250 ms during the outage and every retry goes when a probe is answered.
#[tokio::test(start_paused = true)]
async fn after_a_one_second_outage_the_fleet_recovers_within_a_probe() {
    let config = SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(6000),
        ..SimConfig::default()
    };
    // The server is down for the first second: every connection is refused.
    let sim = start_sim(config.clone()).await;
    let addr = sim.addr();
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    sim.shutdown().await;
    let down_until = Instant::now() + Duration::from_secs(1);
    let run = {
        let fleet = fleet.clone();
        tokio::spawn(async move { run_all(&fleet, 100).await })
    };
    tokio::time::sleep_until(down_until).await;
    let sim = Sim::start(config, addr).await.unwrap();
    let run = run.await.unwrap();
    // Fault-free: the probe, then everything else, 1.0 s; within 2 s of that.
    assert_near_floor(&run, 1.0 + 2.0, 1.0);
    let snapshot = fleet.governor().snapshot();
    assert!(snapshot.outages >= 1, "{snapshot:?}");
    assert!(!snapshot.outage);
    // The restarted server answered each request once.
    assert_eq!(sim.stats().admitted, 100);
    sim.shutdown().await;
}

/// A failing API: every request answered 500. The fleet probes instead of retrying 100
/// requests each on its own, and gives up within the policy's attempts.
#[tokio::test(start_paused = true)]
async fn a_failing_api_gets_probes_not_a_retry_storm() {
    let scenario = Scenario::from_yaml(
        r#"
rules:
  - error: {status: 500, type: api_error, message: "down"}
"#,
        "down.yaml",
    )
    .unwrap();
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(100),
        scenario: Some(scenario),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let started = Instant::now();
    let run = run_all(&fleet, 100).await;
    assert_eq!(run.failures.len(), 100);
    let seconds = started.elapsed().as_secs_f64();
    let requests = sim.stats().requests_total as f64;
    // One probe at a time, 250 ms apart after each 100 ms failure: at most ~3 a second.
    assert!(
        requests <= 3.0 * seconds + 10.0,
        "{requests} requests in {seconds:.1} s"
    );
    sim.shutdown().await;
}

/// Two processes on one key, started together, each told nothing: they learn the limit and
/// split it through `remaining`, without talking to each other.
#[tokio::test(start_paused = true)]
async fn two_fleets_on_one_key_share_the_limit_through_remaining() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(600),
        ..SimConfig::default()
    })
    .await;
    let a = fleet_with(anthropic(&sim), GovernorConfig::default());
    let b = fleet_with(anthropic(&sim), GovernorConfig::default());
    let (run_a, run_b) = tokio::join!(run_all(&a, 1000), run_all(&b, 1000));
    // Together: 600 in the burst, 1,400 at 10 a second, plus one latency.
    let floor = 140.5;
    for run in [&run_a, &run_b] {
        assert_near_floor(run, floor, 1.15);
    }
    let stats = sim.stats();
    assert!(
        stats.rate_limited * 50 <= stats.requests_total,
        "{} of {} requests answered 429",
        stats.rate_limited,
        stats.requests_total
    );
    assert_eq!(stats.admitted, 2000);
    sim.shutdown().await;
}

/// The output-token limit binds: reservations start at `max_tokens`, are settled from
/// `usage` and follow the calibrated mean.
#[tokio::test(start_paused = true)]
async fn a_learned_output_token_limit_is_paced_near_the_floor() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        otpm: Some(3_000),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 400).await;
    let stats = sim.stats();
    let total = stats.output_tokens as f64;
    let floor = (total - 3_000.0) / (3_000.0 / 60.0) + 0.5;
    assert!(floor > 20.0, "the output limit must bind (floor {floor} s)");
    assert_near_floor(&run, floor, 1.10);
    assert!(stats.rate_limited <= 20, "{} 429s", stats.rate_limited);
    assert_eq!(
        fleet.governor().snapshot().learned.output_tokens,
        Some(3_000)
    );
    sim.shutdown().await;
}

/// OpenAI reports one combined token bucket (`x-ratelimit-*-tokens`): input and output
/// tokens together.
#[tokio::test(start_paused = true)]
async fn a_learned_openai_token_limit_is_paced_near_the_floor() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        tpm: Some(150_000),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(openai(&sim), GovernorConfig::default());
    let run = run_all(&fleet, 1000).await;
    let stats = sim.stats();
    let total = (stats.input_tokens + stats.output_tokens) as f64;
    let floor = (total - 150_000.0) / (150_000.0 / 60.0) + 0.5;
    assert!(floor > 20.0, "the token limit must bind (floor {floor} s)");
    assert_near_floor(&run, floor, 1.10);
    assert!(stats.rate_limited <= 20, "{} 429s", stats.rate_limited);
    assert_eq!(fleet.governor().snapshot().learned.tokens, Some(150_000));
    sim.shutdown().await;
}
