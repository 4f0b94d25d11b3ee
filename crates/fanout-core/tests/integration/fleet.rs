//! The fleet (governor + retry policy + retry budget) against the simulator, on paused tokio
//! time: the simulator's latency sleeps and refill clocks advance virtually, so a minute-long
//! rate-limited run takes a second of real time and its makespan is exact.

use std::time::Duration;

use fanout_core::fleet::{Fleet, FleetError};
use fanout_core::governor::GovernorConfig;
use fanout_core::provider::{Message, Request};
use fanout_core::retry::{GiveUpReason, RetryPolicy};
use fanout_sim::{Faults, Scenario, SimConfig};
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

struct Burst {
    makespan: Duration,
    failures: Vec<FleetError>,
    max_attempts: u32,
}

async fn burst(fleet: &Fleet, requests: usize) -> Burst {
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..requests {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move { fleet.call(&request(index), &cancel).await });
    }
    let mut failures = Vec::new();
    let mut max_attempts = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(outcome) => max_attempts = max_attempts.max(outcome.attempts),
            Err(error) => failures.push(error),
        }
    }
    Burst {
        makespan: started.elapsed(),
        failures,
        max_attempts,
    }
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn a_thousand_requests_without_limits_finish_in_about_one_latency() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = burst(&fleet, 1000).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    // Floor: one latency (0.5 s), after the probe that finds out there are no limits (one
    // more latency: the governor is told nothing, so it asks before opening the window).
    assert!(
        seconds(run.makespan) <= 0.5 + 1.3 * 0.5,
        "makespan {:?} is over the probe plus 1.3 x the 0.5 s floor",
        run.makespan
    );
    assert_eq!(sim.stats().requests_total, 1000);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_600_rpm_limit_is_paced_near_the_floor_with_almost_no_429s() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(600),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(
        anthropic(&sim),
        GovernorConfig {
            requests_per_minute: Some(600),
            ..GovernorConfig::default()
        },
    );
    let run = burst(&fleet, 1000).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    // 600 go in the burst, the other 400 at 10/s: 40 s.
    let floor = 40.0;
    assert!(
        seconds(run.makespan) <= 1.05 * floor,
        "makespan {:?} is over 1.05 x the {floor} s floor",
        run.makespan
    );
    let stats = sim.stats();
    assert!(
        stats.rate_limited <= 10,
        "{} 429s for 1000 requests",
        stats.rate_limited
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_input_token_limit_is_paced_near_the_floor() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        itpm: Some(150_000),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(
        anthropic(&sim),
        GovernorConfig {
            input_tokens_per_minute: Some(150_000),
            ..GovernorConfig::default()
        },
    );
    let run = burst(&fleet, 1000).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    let stats = sim.stats();
    // Floor from the simulator's own count of what it admitted.
    let total = stats.input_tokens as f64;
    let floor = (total - 150_000.0) / (150_000.0 / 60.0);
    assert!(floor > 20.0, "the input limit must bind (floor {floor} s)");
    assert!(
        seconds(run.makespan) <= 1.05 * floor,
        "makespan {:?} is over 1.05 x the {floor:.1} s floor",
        run.makespan
    );
    assert!(
        stats.rate_limited <= 10,
        "{} 429s for 1000 requests",
        stats.rate_limited
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn limits_learned_from_headers_alone_keep_429s_rare() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        rpm: Some(600),
        ..SimConfig::default()
    })
    .await;
    // The governor is told nothing: it learns the limit from the first answers' headers.
    let fleet = fleet_with(
        openai(&sim),
        GovernorConfig {
            max_in_flight: 50,
            ..GovernorConfig::default()
        },
    );
    let run = burst(&fleet, 1000).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    let stats = sim.stats();
    assert!(
        stats.rate_limited <= 20,
        "{} 429s for 1000 requests",
        stats.rate_limited
    );
    assert_eq!(fleet.governor().snapshot().limits.requests, Some(600));
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn overload_and_server_errors_are_retried_within_the_policy() {
    let sim = start_sim(SimConfig {
        latency: Duration::from_millis(500),
        faults: Faults {
            overloaded: 0.05,
            api_error: 0.02,
            ..Faults::default()
        },
        seed: 11,
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let run = burst(&fleet, 1000).await;
    assert!(run.failures.is_empty(), "{:?}", run.failures.first());
    let policy = RetryPolicy::default();
    assert!(run.max_attempts <= policy.max_attempts);
    let exchanges = sim.exchanges();
    let faulted = exchanges.iter().filter(|e| e.fault.is_some()).count();
    assert!(
        faulted >= 40,
        "the simulator injected only {faulted} faults"
    );
    assert_eq!(
        exchanges.len(),
        1000 + faulted,
        "each fault costs exactly one retry"
    );
    // The simulator saw the retry count header; none above the policy's limit.
    let most_retries = exchanges
        .iter()
        .filter_map(|e| e.headers.get("x-stainless-retry-count"))
        .filter_map(|v| v.parse::<u32>().ok())
        .max()
        .unwrap();
    assert!(most_retries >= 1 && most_retries < policy.max_attempts);
    // Retries stayed a small fraction of requests.
    assert!(
        fleet.stats().retries <= 100,
        "{} retries",
        fleet.stats().retries
    );
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    let scenario = Scenario::from_yaml(
        r#"
rules:
  - match: {last_user: "status 400"}
    error: {status: 400, type: invalid_request_error, message: "bad"}
  - match: {last_user: "status 401"}
    error: {status: 401, type: authentication_error, message: "no key"}
  - match: {last_user: "status 403"}
    error: {status: 403, type: permission_error, message: "denied"}
  - match: {last_user: "status 404"}
    error: {status: 404, type: not_found_error, message: "no model"}
  - match: {last_user: "status 413"}
    error: {status: 413, type: request_too_large, message: "too big"}
"#,
        "client-errors.yaml",
    )
    .unwrap();
    let sim = start_sim(SimConfig {
        scenario: Some(scenario),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let cancel = CancellationToken::new();
    for status in [400u16, 401, 403, 404, 413] {
        let mut request = Request::new("claude-sonnet-4-5", 64);
        request
            .messages
            .push(Message::user(format!("status {status}")));
        let error = fleet.call(&request, &cancel).await.unwrap_err();
        match error {
            FleetError::Failed {
                source,
                attempts,
                reason,
            } => {
                assert_eq!(source.status(), Some(status));
                assert_eq!(attempts, 1);
                assert_eq!(reason, GiveUpReason::NotRetryable);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sim.exchanges().len(), 5, "one request each, no retry");
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_rate_limited_answer_pauses_the_fleet_for_its_retry_after() {
    let scenario = Scenario::from_yaml(
        r#"
rules:
  - match: {last_user: "first", attempt: 0}
    error: {status: 429, type: rate_limit_error, message: "slow down", headers: {retry-after: "7"}}
"#,
        "pause.yaml",
    )
    .unwrap();
    let sim = start_sim(SimConfig {
        scenario: Some(scenario),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(anthropic(&sim), GovernorConfig::default());
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let mut first = Request::new("claude-sonnet-4-5", 64);
    first.messages.push(Message::user("first"));
    let outcome = fleet.call(&first, &cancel).await.unwrap();
    assert_eq!(outcome.attempts, 2);
    assert!(started.elapsed() >= Duration::from_secs(7));
    // Another agent's request sent during the pause would have waited too; after it, none do.
    let mut second = Request::new("claude-sonnet-4-5", 64);
    second.messages.push(Message::user("second"));
    assert_eq!(fleet.governor().snapshot().paused_for, Duration::ZERO);
    let outcome = fleet.call(&second, &cancel).await.unwrap();
    assert_eq!(outcome.attempts, 1);
    assert_eq!(
        outcome.governor_wait,
        Duration::ZERO,
        "the pause outlived its retry-after"
    );
    assert_eq!(fleet.stats().rate_limited, 1);
    sim.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_a_queued_call() {
    let sim = start_sim(SimConfig {
        rpm: Some(1),
        ..SimConfig::default()
    })
    .await;
    let fleet = fleet_with(
        anthropic(&sim),
        GovernorConfig {
            requests_per_minute: Some(1),
            ..GovernorConfig::default()
        },
    );
    let cancel = CancellationToken::new();
    fleet.call(&request(0), &cancel).await.unwrap();
    // The bucket is empty: the next call queues for a minute unless cancelled.
    let queued = {
        let fleet = fleet.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move { fleet.call(&request(1), &cancel).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fleet.governor().snapshot().waiting, 1);
    cancel.cancel();
    let result = queued.await.unwrap();
    assert!(matches!(result, Err(FleetError::Cancelled { attempts: 0 })));
    assert_eq!(sim.stats().requests_total, 1);
    sim.shutdown().await;
}
