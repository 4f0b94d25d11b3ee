//! The fleet-wide rate governor: one per run, shared by every agent.
//!
//! What it owns:
//! - weighted token buckets mirroring the server's limits (requests/min, input tokens/min,
//!   output tokens/min, and a combined tokens/min for OpenAI-style limits), refilled
//!   continuously a little below the limit's rate ([`bucket`]);
//! - admission: a request reserves its estimated cost before it is sent; requests queue in
//!   FIFO order and never fail because the fleet is busy;
//! - correction: the reservation is settled from the response's `usage`, and the buckets are
//!   lowered to what the `*-ratelimit-*` headers report (or created from them when no limit
//!   was configured);
//! - backoff as one fleet: a 429 pauses every new admission until its `retry-after`, and 429s
//!   and 529s shrink the allowed in-flight concurrency multiplicatively (at most once per
//!   cool-down), which grows back additively with each success (AIMD).
//!
//! It does not send anything or retry: see [`crate::fleet`] for the loop that uses it and
//! [`estimate`] for the token estimates that go into a [`Cost`].

pub mod bucket;
pub mod estimate;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::provider::{ErrorClass, LimitState, ProviderError, RateLimitSnapshot, Usage};
use crate::retry::lock;
use bucket::Bucket;

/// Limits and tuning of the governor. Limits left `None` are learned from response headers.
#[derive(Debug, Clone, PartialEq)]
pub struct GovernorConfig {
    pub requests_per_minute: Option<u64>,
    pub input_tokens_per_minute: Option<u64>,
    pub output_tokens_per_minute: Option<u64>,
    /// A combined input + output tokens/min limit (OpenAI's `x-ratelimit-*-tokens`).
    pub tokens_per_minute: Option<u64>,
    /// Hard cap on requests in flight; the AIMD window never exceeds it.
    pub max_in_flight: usize,
    /// The AIMD window never shrinks below this.
    pub min_in_flight: usize,
    /// Refill at `(1 - headroom)` of the limit's rate, so clock skew and estimate error do
    /// not turn into 429s.
    pub headroom: f64,
    /// Bucket capacity as a fraction of the per-minute limit (1.0 = a full minute of burst,
    /// as the services allow; lower it for services that enforce per-second limits).
    pub burst_fraction: f64,
    /// Multiply the in-flight window by this on a 429 or 529.
    pub decrease_factor: f64,
    /// Shrink the window at most once per this period (one reaction per burst of errors).
    pub decrease_cooldown: Duration,
    /// Grow the window by this much per success.
    pub increase_per_success: f64,
    /// How long to pause the fleet after a 429 that gave no `retry-after`.
    pub default_pause: Duration,
    /// Create and correct buckets from the `*-ratelimit-*` headers.
    pub learn_from_headers: bool,
}

impl Default for GovernorConfig {
    fn default() -> Self {
        GovernorConfig {
            requests_per_minute: None,
            input_tokens_per_minute: None,
            output_tokens_per_minute: None,
            tokens_per_minute: None,
            max_in_flight: 1024,
            min_in_flight: 1,
            headroom: 0.02,
            burst_fraction: 1.0,
            decrease_factor: 0.7,
            decrease_cooldown: Duration::from_secs(1),
            increase_per_success: 1.0,
            default_pause: Duration::from_secs(1),
            learn_from_headers: true,
        }
    }
}

/// What one request is expected to cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cost {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// A point-in-time view of the governor, for progress displays and reports.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GovernorSnapshot {
    pub in_flight: usize,
    pub peak_in_flight: usize,
    /// The current AIMD window (allowed in-flight requests).
    pub window: f64,
    pub admitted: u64,
    pub waiting: usize,
    /// Total time requests spent queued in the governor.
    pub total_wait: Duration,
    pub rate_limited_responses: u64,
    pub overloaded_responses: u64,
    pub window_decreases: u64,
    pub limits: Limits,
}

/// The limits the governor currently applies (configured or learned), per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub requests: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub tokens: Option<u64>,
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: usize,
    window: f64,
    paused_until: Option<Instant>,
    last_decrease: Option<Instant>,
    waiting: usize,
    snapshot: GovernorSnapshot,
}

#[derive(Debug)]
struct Inner {
    config: GovernorConfig,
    state: Mutex<State>,
    /// Held by the request at the head of the queue: admission is first come, first served,
    /// so a large request is never starved by a stream of small ones.
    turn: tokio::sync::Mutex<()>,
    /// Woken whenever room may have appeared (a slot freed, tokens refunded, a pause ended).
    changed: Notify,
}

/// The fleet-wide rate governor. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct Governor {
    inner: Arc<Inner>,
}

enum Wait {
    Admitted,
    /// Room will exist at this instant, unless something changes sooner.
    Until(Instant),
    /// Only a change (a slot freed) can make room.
    Change,
}

impl Governor {
    pub fn new(config: GovernorConfig) -> Self {
        let now = Instant::now();
        let bucket = |limit: Option<u64>| {
            limit.map(|l| Bucket::new(l, config.headroom, config.burst_fraction, now))
        };
        let max = config.max_in_flight.max(1);
        let state = State {
            requests: bucket(config.requests_per_minute),
            input: bucket(config.input_tokens_per_minute),
            output: bucket(config.output_tokens_per_minute),
            tokens: bucket(config.tokens_per_minute),
            in_flight: 0,
            window: max as f64,
            paused_until: None,
            last_decrease: None,
            waiting: 0,
            snapshot: GovernorSnapshot::default(),
        };
        Governor {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(state),
                turn: tokio::sync::Mutex::new(()),
                changed: Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &GovernorConfig {
        &self.inner.config
    }

    /// Wait until the fleet can afford `cost`, then charge it and take an in-flight slot.
    /// Dropping the future leaves the queue without charging anything.
    pub async fn reserve(&self, cost: Cost) -> Reservation {
        let queued_at = Instant::now();
        let _waiting = WaitingGuard::new(&self.inner);
        // Uncontended (nobody queued, nothing waiting for capacity), take the turn without
        // yielding: a lock handoff per request would chain 1,000 starting agents through the
        // run queue one wake-up at a time. Contended, queue in FIFO order as usual.
        let _turn = match self.inner.turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => self.inner.turn.lock().await,
        };
        loop {
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_admit(cost, queued_at) {
                Wait::Admitted => {
                    return Reservation {
                        inner: Arc::clone(&self.inner),
                        cost,
                        sent_at: Instant::now(),
                        waited: queued_at.elapsed(),
                        open: true,
                    };
                }
                Wait::Until(deadline) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(deadline) => {}
                        _ = &mut notified => {}
                    }
                }
                Wait::Change => notified.await,
            }
        }
    }

    fn try_admit(&self, cost: Cost, queued_at: Instant) -> Wait {
        let mut guard = lock(&self.inner.state);
        let state = &mut *guard;
        let now = Instant::now();
        let mut until: Option<Instant> = None;
        let mut later = |at: Instant| {
            until = Some(until.map_or(at, |u: Instant| u.max(at)));
        };
        if let Some(paused) = state.paused_until {
            if paused > now {
                later(paused);
            } else {
                state.paused_until = None;
            }
        }
        let combined = (cost.input_tokens + cost.output_tokens) as f64;
        let charges = [
            (state.requests.as_mut(), 1.0),
            (state.input.as_mut(), cost.input_tokens as f64),
            (state.output.as_mut(), cost.output_tokens as f64),
            (state.tokens.as_mut(), combined),
        ];
        for (bucket, amount) in charges {
            if let Some(bucket) = bucket {
                let wait = bucket.wait_for(amount, now);
                if !wait.is_zero() {
                    later(now + wait);
                }
            }
        }
        let slot_free = (state.in_flight as f64) < state.window.floor().max(1.0);
        if let Some(at) = until {
            return Wait::Until(at);
        }
        if !slot_free {
            return Wait::Change;
        }
        if let Some(b) = state.requests.as_mut() {
            b.charge(1.0, now);
        }
        if let Some(b) = state.input.as_mut() {
            b.charge(cost.input_tokens as f64, now);
        }
        if let Some(b) = state.output.as_mut() {
            b.charge(cost.output_tokens as f64, now);
        }
        if let Some(b) = state.tokens.as_mut() {
            b.charge(combined, now);
        }
        state.in_flight += 1;
        let in_flight = state.in_flight;
        let snapshot = &mut state.snapshot;
        snapshot.admitted += 1;
        snapshot.peak_in_flight = snapshot.peak_in_flight.max(in_flight);
        snapshot.total_wait += now.saturating_duration_since(queued_at);
        Wait::Admitted
    }

    /// The current state, for progress displays and reports.
    pub fn snapshot(&self) -> GovernorSnapshot {
        let mut guard = lock(&self.inner.state);
        let state = &mut *guard;
        let mut snapshot = state.snapshot.clone();
        snapshot.in_flight = state.in_flight;
        snapshot.window = state.window;
        snapshot.waiting = state.waiting;
        snapshot.limits = Limits {
            requests: state.requests.as_ref().map(Bucket::limit_per_minute),
            input_tokens: state.input.as_ref().map(Bucket::limit_per_minute),
            output_tokens: state.output.as_ref().map(Bucket::limit_per_minute),
            tokens: state.tokens.as_ref().map(Bucket::limit_per_minute),
        };
        // Keep refill bookkeeping fresh so levels read later are current.
        let now = Instant::now();
        for bucket in [
            &mut state.requests,
            &mut state.input,
            &mut state.output,
            &mut state.tokens,
        ]
        .into_iter()
        .flatten()
        {
            bucket.level(now);
        }
        snapshot
    }
}

/// Counts a request as waiting while its `reserve` future is alive and not yet admitted.
struct WaitingGuard<'a> {
    inner: &'a Inner,
}

impl<'a> WaitingGuard<'a> {
    fn new(inner: &'a Inner) -> Self {
        lock(&inner.state).waiting += 1;
        WaitingGuard { inner }
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.waiting = state.waiting.saturating_sub(1);
    }
}

/// An admitted request's claim on the fleet's capacity. Settle it with [`Self::succeeded`]
/// or [`Self::failed`]; dropping it (a cancelled request) frees the slot and keeps the
/// charge, since the server may have counted the request.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    cost: Cost,
    sent_at: Instant,
    waited: Duration,
    open: bool,
}

impl Reservation {
    /// How long this request queued before it was admitted.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// The request succeeded: correct the charge from `usage`, learn from the headers, and
    /// widen the in-flight window.
    pub fn succeeded(mut self, usage: &Usage, limits: &RateLimitSnapshot) {
        self.open = false;
        let config = &self.inner.config;
        let mut state = lock(&self.inner.state);
        let now = Instant::now();
        let input_delta = self.cost.input_tokens as f64 - usage.rate_limited_input() as f64;
        let output_delta = self.cost.output_tokens as f64 - usage.output_tokens as f64;
        if let Some(b) = state.input.as_mut() {
            b.adjust(input_delta, now);
        }
        if let Some(b) = state.output.as_mut() {
            b.adjust(output_delta, now);
        }
        if let Some(b) = state.tokens.as_mut() {
            b.adjust(input_delta + output_delta, now);
        }
        sync_from_headers(
            &mut state,
            config,
            limits,
            now.saturating_duration_since(self.sent_at),
            now,
        );
        state.in_flight = state.in_flight.saturating_sub(1);
        state.window =
            (state.window + config.increase_per_success).min(config.max_in_flight.max(1) as f64);
        drop(state);
        self.inner.changed.notify_waiters();
    }

    /// The request failed with `error`: give back what the server did not use, and on a 429
    /// or 529 slow the whole fleet.
    pub fn failed(mut self, error: &ProviderError) {
        self.open = false;
        let config = &self.inner.config;
        let mut state = lock(&self.inner.state);
        let now = Instant::now();
        let class = error.class();
        // No answer was generated, so the output reservation comes back in every case.
        if let Some(b) = state.output.as_mut() {
            b.adjust(self.cost.output_tokens as f64, now);
        }
        if let Some(b) = state.tokens.as_mut() {
            b.adjust(self.cost.output_tokens as f64, now);
        }
        if class == ErrorClass::RateLimited {
            // A rejected request was not counted by the server.
            if let Some(b) = state.requests.as_mut() {
                b.adjust(1.0, now);
            }
            if let Some(b) = state.input.as_mut() {
                b.adjust(self.cost.input_tokens as f64, now);
            }
            if let Some(b) = state.tokens.as_mut() {
                b.adjust(self.cost.input_tokens as f64, now);
            }
            let pause = error.retry_after().unwrap_or(config.default_pause);
            let until = now + pause;
            state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
            state.snapshot.rate_limited_responses += 1;
        }
        if class == ErrorClass::Overloaded {
            state.snapshot.overloaded_responses += 1;
        }
        if matches!(class, ErrorClass::RateLimited | ErrorClass::Overloaded) {
            let cooled = state
                .last_decrease
                .is_none_or(|at| now.saturating_duration_since(at) >= config.decrease_cooldown);
            if cooled {
                state.window =
                    (state.window * config.decrease_factor).max(config.min_in_flight.max(1) as f64);
                state.last_decrease = Some(now);
                state.snapshot.window_decreases += 1;
            }
        }
        if let Some(limits) = error.rate_limits() {
            sync_from_headers(
                &mut state,
                config,
                limits,
                now.saturating_duration_since(self.sent_at),
                now,
            );
        }
        state.in_flight = state.in_flight.saturating_sub(1);
        drop(state);
        self.inner.changed.notify_waiters();
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.open {
            let mut state = lock(&self.inner.state);
            state.in_flight = state.in_flight.saturating_sub(1);
            drop(state);
            self.inner.changed.notify_waiters();
        }
    }
}

/// Token counts in headers are rounded to the nearest thousand by Anthropic; never correct
/// for less than that.
const TOKEN_SLACK: f64 = 1000.0;
const REQUEST_SLACK: f64 = 1.0;

fn sync_from_headers(
    state: &mut State,
    config: &GovernorConfig,
    limits: &RateLimitSnapshot,
    age: Duration,
    now: Instant,
) {
    if !config.learn_from_headers || limits.is_empty() {
        return;
    }
    // Anthropic reports input and output separately (its "tokens" is only the tightest of
    // the two); OpenAI reports one combined token bucket.
    let separate = limits.input_tokens.limit.is_some() || limits.output_tokens.limit.is_some();
    let apply = |slot: &mut Option<Bucket>, dimension: &LimitState, slack: f64| {
        let Some(limit) = dimension.limit else { return };
        let bucket = slot
            .get_or_insert_with(|| Bucket::new(limit, config.headroom, config.burst_fraction, now));
        bucket.set_limit(limit, config.headroom, config.burst_fraction);
        if let Some(remaining) = dimension.remaining {
            bucket.sync_remaining(remaining, age, slack, now);
        }
    };
    apply(&mut state.requests, &limits.requests, REQUEST_SLACK);
    if separate {
        apply(&mut state.input, &limits.input_tokens, TOKEN_SLACK);
        apply(&mut state.output, &limits.output_tokens, TOKEN_SLACK);
    } else {
        apply(&mut state.tokens, &limits.tokens, TOKEN_SLACK);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::ApiErrorDetails;

    fn rate_limited(retry_after: Option<Duration>) -> ProviderError {
        ProviderError::Api {
            provider: "test",
            details: Box::new(ApiErrorDetails {
                status: 429,
                error_type: Some("rate_limit_error".into()),
                error_code: None,
                message: String::new(),
                retry_after,
                should_retry: None,
                request_id: None,
                rate_limits: RateLimitSnapshot::default(),
                body: String::new(),
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn paces_requests_to_the_limit_after_the_burst() {
        let governor = Governor::new(GovernorConfig {
            requests_per_minute: Some(60),
            headroom: 0.0,
            ..GovernorConfig::default()
        });
        let start = Instant::now();
        for _ in 0..60 {
            governor
                .reserve(Cost::default())
                .await
                .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "the burst is free");
        for _ in 0..10 {
            governor
                .reserve(Cost::default())
                .await
                .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!(
            (10.0..10.1).contains(&elapsed),
            "10 more at 1/s took {elapsed}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refunds_from_usage_admit_the_next_request_sooner() {
        let governor = Governor::new(GovernorConfig {
            input_tokens_per_minute: Some(6000),
            headroom: 0.0,
            ..GovernorConfig::default()
        });
        let cost = Cost {
            input_tokens: 6000,
            output_tokens: 0,
        };
        let first = governor.reserve(cost).await;
        // The server says the request really used 1,000 tokens: 5,000 come back.
        first.succeeded(
            &Usage {
                input_tokens: 1000,
                ..Usage::default()
            },
            &RateLimitSnapshot::default(),
        );
        let start = Instant::now();
        let _second = governor
            .reserve(Cost {
                input_tokens: 5000,
                output_tokens: 0,
            })
            .await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_capped_and_a_freed_slot_admits_the_next() {
        let governor = Governor::new(GovernorConfig {
            max_in_flight: 2,
            ..GovernorConfig::default()
        });
        let a = governor.reserve(Cost::default()).await;
        let _b = governor.reserve(Cost::default()).await;
        let waiter = {
            let governor = governor.clone();
            tokio::spawn(async move { governor.reserve(Cost::default()).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(governor.snapshot().waiting, 1);
        assert!(!waiter.is_finished());
        a.succeeded(&Usage::default(), &RateLimitSnapshot::default());
        let third = waiter.await.unwrap();
        assert_eq!(governor.snapshot().in_flight, 2);
        drop(third);
        assert_eq!(governor.snapshot().in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_the_fleet_and_shrinks_the_window_once_per_cooldown() {
        let governor = Governor::new(GovernorConfig {
            max_in_flight: 100,
            ..GovernorConfig::default()
        });
        let first = governor.reserve(Cost::default()).await;
        let second = governor.reserve(Cost::default()).await;
        first.failed(&rate_limited(Some(Duration::from_secs(3))));
        second.failed(&rate_limited(Some(Duration::from_secs(2))));
        let snapshot = governor.snapshot();
        assert_eq!(snapshot.window_decreases, 1);
        assert!((snapshot.window - 70.0).abs() < 1e-9);
        let start = Instant::now();
        let _next = governor.reserve(Cost::default()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn limits_are_learned_from_headers() {
        let governor = Governor::new(GovernorConfig {
            headroom: 0.0,
            ..GovernorConfig::default()
        });
        let limits = RateLimitSnapshot {
            requests: LimitState {
                limit: Some(120),
                remaining: Some(0),
                reset_after: Some(Duration::from_secs(60)),
            },
            ..RateLimitSnapshot::default()
        };
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &limits);
        assert_eq!(governor.snapshot().limits.requests, Some(120));
        // The server had no room left (plus the slack of one request), so the next ones pace.
        let start = Instant::now();
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        assert!(
            start.elapsed() >= Duration::from_millis(500),
            "{:?}",
            start.elapsed()
        );
    }
}
