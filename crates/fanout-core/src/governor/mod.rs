//! The fleet-wide rate governor: one per run, shared by every agent.
//!
//! What it owns:
//! - weighted token buckets mirroring the server's limits (requests/min, input tokens/min,
//!   output tokens/min, and a combined tokens/min for OpenAI-style limits), refilled
//!   continuously: a configured limit a little below its rate, a learned one at exactly
//!   limit/60 per second (times our share of the key when other clients use it) ([`bucket`]);
//! - discovery: while no limit is configured, one request at a time goes out (a probe) until
//!   a response's `*-ratelimit-*` headers say what the limits are; the learned buckets then
//!   start from the reported `remaining`, half of it held back until the next report confirms
//!   it. A response without limit headers ends the probe too: AIMD alone from then on. A
//!   probe that takes long (a long generation) lets twice as many requests out every
//!   `probe_patience`; a 429 among them carries the limits and ends the probe;
//! - admission: a request reserves its estimated cost before it is sent; requests queue in
//!   FIFO order and never fail because the fleet is busy;
//! - correction: the reservation is settled from the response's `usage`, and the buckets are
//!   lowered (never raised, never re-rated) when the `*-ratelimit-*` headers show less room
//!   than we count on;
//! - outages as one fleet: after `outage_after_failures` failures in a row (connection
//!   errors, timeouts, 5xx, 529) with no success between, the fleet sends one probe at a time,
//!   `outage_probe_interval` apart, instead of every agent retrying on its own; the first
//!   success ends it and the window is open again at once. Retries of requests that failed
//!   during the outage spend no retry budget ([`Failure::during_outage`]): the probe protects
//!   the API, and a recovered API gets them all back within one round trip;
//! - backoff as one fleet: a 429 pauses every new admission for its `retry-after`, no longer;
//!   429s (when no bucket paces the fleet) and 529s shrink the allowed in-flight concurrency
//!   multiplicatively (at most once per cool-down), which grows back additively with each
//!   success (AIMD).
//!
//! It does not send anything or retry: see [`crate::fleet`] for the loop that uses it and
//! [`estimate`] for the token estimates that go into a [`Cost`].

pub mod bucket;
pub mod estimate;
pub mod shared;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::provider::{ErrorClass, LimitState, ProviderError, RateLimitSnapshot, Usage};
use crate::retry::lock;
use bucket::{Bucket, Reported};

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
    /// With no limit configured, send one request at a time until a response says what the
    /// limits are (or that there are none).
    pub probe_unknown_limits: bool,
    /// While the probe is unanswered, allow twice as many requests in flight every this long
    /// (so a long generation does not hold the fleet back for its whole length).
    pub probe_patience: Duration,
    /// This many failures in a row (no success between) make an outage: one probe at a time.
    /// 0 turns outage handling off.
    pub outage_after_failures: u32,
    /// During an outage, wait this long after a failed probe before the next.
    pub outage_probe_interval: Duration,
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
            probe_unknown_limits: true,
            probe_patience: Duration::from_secs(1),
            outage_after_failures: 5,
            outage_probe_interval: Duration::from_millis(250),
        }
    }
}

/// While probing, the in-flight cap doubles at most this often (to 1,024).
const MAX_PROBE_DOUBLINGS: u32 = 10;

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
    /// Which of `limits` were learned from headers rather than configured.
    pub learned: Limits,
    /// Still sending one probe at a time to discover the limits.
    pub probing: bool,
    /// In an outage: one probe at a time until one succeeds.
    pub outage: bool,
    /// Outages seen (failures in a row that made the fleet probe).
    pub outages: u64,
    /// How long the fleet stays paused by a 429's `retry-after` (zero when not paused).
    pub paused_for: Duration,
}

/// The limits the governor currently applies (configured or learned), per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Limits {
    pub requests: Option<u64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub tokens: Option<u64>,
}

impl Limits {
    /// The limits a response's headers report, as the governor reads them: Anthropic's input
    /// and output token limits when it gives them (its combined "tokens" is only the tighter
    /// of the two), else the combined token limit (OpenAI's).
    pub fn reported(headers: &RateLimitSnapshot) -> Limits {
        let separate =
            headers.input_tokens.limit.is_some() || headers.output_tokens.limit.is_some();
        Limits {
            requests: headers.requests.limit,
            input_tokens: headers.input_tokens.limit,
            output_tokens: headers.output_tokens.limit,
            tokens: if separate { None } else { headers.tokens.limit },
        }
    }

    /// In the order the governor keeps its buckets: requests, input, output, combined.
    pub fn as_array(&self) -> [Option<u64>; 4] {
        [
            self.requests,
            self.input_tokens,
            self.output_tokens,
            self.tokens,
        ]
    }

    pub fn from_array(limits: [Option<u64>; 4]) -> Limits {
        let [requests, input_tokens, output_tokens, tokens] = limits;
        Limits {
            requests,
            input_tokens,
            output_tokens,
            tokens,
        }
    }
}

#[derive(Debug)]
struct State {
    requests: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Which buckets were learned from headers (requests, input, output, tokens).
    learned: [bool; 4],
    /// Whether a dimension's `remaining` was ever not a multiple of a thousand: then the
    /// server reports it exactly, else (Anthropic's token counts) rounded to the thousand.
    exact: [bool; 4],
    /// Discovering the limits: one request in flight at a time (more as it takes long).
    probing: bool,
    /// When the first probe went out.
    probe_started: Option<Instant>,
    /// Failures (not 429s) since the last success.
    failures_in_a_row: u32,
    /// In an outage: one probe in flight at a time, spaced out.
    outage: bool,
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
        let configured = config.requests_per_minute.is_some()
            || config.input_tokens_per_minute.is_some()
            || config.output_tokens_per_minute.is_some()
            || config.tokens_per_minute.is_some();
        let state = State {
            requests: bucket(config.requests_per_minute),
            input: bucket(config.input_tokens_per_minute),
            output: bucket(config.output_tokens_per_minute),
            tokens: bucket(config.tokens_per_minute),
            learned: [false; 4],
            exact: [false; 4],
            probing: config.learn_from_headers && config.probe_unknown_limits && !configured,
            probe_started: None,
            failures_in_a_row: 0,
            outage: false,
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
        let mut slot_free = (state.in_flight as f64) < state.window.floor().max(1.0);
        if state.outage && state.in_flight > 0 {
            slot_free = false;
        } else if state.probing {
            // One probe; if its answer is slow (a long generation), the fleet may not wait
            // for it forever: twice as many every `probe_patience`. A 429 among them says
            // what the limits are, so the overshoot stays small.
            let started = *state.probe_started.get_or_insert(now);
            let patience = self.inner.config.probe_patience;
            let doublings = if patience.is_zero() {
                MAX_PROBE_DOUBLINGS
            } else {
                (now.saturating_duration_since(started).as_secs_f64() / patience.as_secs_f64())
                    .floor()
                    .min(f64::from(MAX_PROBE_DOUBLINGS)) as u32
            };
            if state.in_flight >= 1usize << doublings {
                slot_free = false;
                if doublings < MAX_PROBE_DOUBLINGS {
                    later(started + patience * (doublings + 1));
                }
            }
        }
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

    /// Adopt limits other processes learned from the same API's headers (shared through
    /// [`shared::SharedLimits`]): a limit this governor has no bucket for gets a learned one
    /// (starting full, half of it held back until a report of our own confirms it), and a
    /// bucket whose limit is higher is lowered to it: the lower limit binds, as when a
    /// workflow's limit meets a learned one. Knowing a limit ends a probe.
    pub fn adopt(&self, limits: &Limits) {
        if !self.inner.config.learn_from_headers {
            return;
        }
        let mut guard = lock(&self.inner.state);
        let state = &mut *guard;
        let now = Instant::now();
        let mut adopted = false;
        for (index, limit) in limits.as_array().into_iter().enumerate() {
            let Some(limit) = limit else { continue };
            let (slot, learned) = match index {
                0 => (&mut state.requests, &mut state.learned[0]),
                1 => (&mut state.input, &mut state.learned[1]),
                2 => (&mut state.output, &mut state.learned[2]),
                _ => (&mut state.tokens, &mut state.learned[3]),
            };
            match slot {
                None => {
                    *slot = Some(Bucket::learned(limit, None, now));
                    *learned = true;
                    adopted = true;
                }
                Some(bucket) if bucket.limit_per_minute() > limit => {
                    let (headroom, burst) = if *learned {
                        (0.0, 1.0)
                    } else {
                        (self.inner.config.headroom, self.inner.config.burst_fraction)
                    };
                    bucket.set_limit(limit, headroom, burst);
                    adopted = true;
                }
                Some(_) => {}
            }
        }
        if limits.as_array().iter().any(Option::is_some) {
            state.probing = false;
        }
        drop(guard);
        if adopted {
            self.inner.changed.notify_waiters();
        }
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
        let learned = |slot: &Option<Bucket>, index: usize| {
            slot.as_ref()
                .filter(|_| state.learned[index])
                .map(Bucket::limit_per_minute)
        };
        snapshot.learned = Limits {
            requests: learned(&state.requests, 0),
            input_tokens: learned(&state.input, 1),
            output_tokens: learned(&state.output, 2),
            tokens: learned(&state.tokens, 3),
        };
        snapshot.probing = state.probing;
        snapshot.outage = state.outage;
        let now = Instant::now();
        snapshot.paused_for = state
            .paused_until
            .map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        // Keep refill bookkeeping fresh so levels read later are current.
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
        sync_from_headers(&mut state, config, limits, now);
        // The probe answered: its headers said what the limits are, or that there are none.
        state.probing = false;
        // Any answer ends an outage.
        state.failures_in_a_row = 0;
        state.outage = false;
        state.in_flight = state.in_flight.saturating_sub(1);
        state.window =
            (state.window + config.increase_per_success).min(config.max_in_flight.max(1) as f64);
        drop(state);
        self.inner.changed.notify_waiters();
    }

    /// The request failed with `error`: give back what the server did not use, on a 429 or
    /// 529 slow the whole fleet, and after failures in a row treat it as an outage.
    pub fn failed(mut self, error: &ProviderError) -> Failure {
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
        let paced = state.requests.is_some()
            || state.input.is_some()
            || state.output.is_some()
            || state.tokens.is_some();
        // A 429 while buckets pace the fleet is answered by the pause and the buckets'
        // correction; shrinking the window as well would leave the fleet below what the
        // limits allow long after the pause. With no bucket, AIMD is all there is.
        let shrink = match class {
            ErrorClass::RateLimited => !paced,
            ErrorClass::Overloaded => true,
            _ => false,
        };
        if shrink {
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
            sync_from_headers(&mut state, config, limits, now);
            // An answer with limit headers, or a 429, ends the probe; a connection error or
            // a 5xx without headers leaves the next request a probe too.
            if class == ErrorClass::RateLimited || !limits.is_empty() {
                state.probing = false;
            }
        }
        let mut during_outage = false;
        if matches!(class, ErrorClass::Transient | ErrorClass::Overloaded)
            && config.outage_after_failures > 0
        {
            state.failures_in_a_row = state.failures_in_a_row.saturating_add(1);
            if !state.outage && state.failures_in_a_row >= config.outage_after_failures {
                state.outage = true;
                state.snapshot.outages += 1;
            }
            if state.outage {
                during_outage = true;
                let until = now + config.outage_probe_interval;
                state.paused_until = Some(state.paused_until.map_or(until, |p| p.max(until)));
            }
        }
        state.in_flight = state.in_flight.saturating_sub(1);
        drop(state);
        self.inner.changed.notify_waiters();
        Failure { during_outage }
    }
}

/// What the governor made of a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// The fleet is in an outage: its probes protect the API, so a retry of this request
    /// need not spend the retry budget.
    pub during_outage: bool,
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

/// What a header's `remaining` says about the server's level. Anthropic rounds token counts
/// to the nearest thousand (so a 0 means anything below 500); a server that ever reported a
/// count that is not a multiple of a thousand for this dimension reports it exactly.
fn reported(remaining: u64, tokens: bool, exact: &mut bool) -> Reported {
    if !remaining.is_multiple_of(1000) {
        *exact = true;
    }
    if tokens && !*exact {
        Reported::nearest(remaining, 1000.0)
    } else {
        Reported::floor(remaining)
    }
}

fn sync_from_headers(
    state: &mut State,
    config: &GovernorConfig,
    limits: &RateLimitSnapshot,
    now: Instant,
) {
    if !config.learn_from_headers || limits.is_empty() {
        return;
    }
    // Anthropic reports input and output separately (its "tokens" is only the tightest of
    // the two); OpenAI reports one combined token bucket.
    let separate = limits.input_tokens.limit.is_some() || limits.output_tokens.limit.is_some();
    let mut apply = |index: usize, dimension: &LimitState, tokens: bool| {
        let Some(limit) = dimension.limit else { return };
        let remaining = dimension
            .remaining
            .map(|r| reported(r, tokens, &mut state.exact[index]));
        let (slot, learned) = match index {
            0 => (&mut state.requests, &mut state.learned[0]),
            1 => (&mut state.input, &mut state.learned[1]),
            2 => (&mut state.output, &mut state.learned[2]),
            _ => (&mut state.tokens, &mut state.learned[3]),
        };
        match slot {
            None => {
                *slot = Some(Bucket::learned(limit, remaining, now));
                *learned = true;
            }
            Some(bucket) => {
                let headroom = if *learned { 0.0 } else { config.headroom };
                let burst = if *learned { 1.0 } else { config.burst_fraction };
                bucket.set_limit(limit, headroom, burst);
                if let Some(remaining) = remaining {
                    bucket.sync(remaining, *learned, now);
                }
            }
        }
    };
    apply(0, &limits.requests, false);
    if separate {
        apply(1, &limits.input_tokens, true);
        apply(2, &limits.output_tokens, true);
    } else {
        apply(3, &limits.tokens, true);
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
            probe_unknown_limits: false,
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
            probe_unknown_limits: false,
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

    fn requests_limit(limit: u64, remaining: u64) -> RateLimitSnapshot {
        RateLimitSnapshot {
            requests: LimitState {
                limit: Some(limit),
                remaining: Some(remaining),
                reset_after: None,
            },
            ..RateLimitSnapshot::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_goes_alone_until_an_answer_says_what_the_limits_are() {
        let governor = Governor::new(GovernorConfig::default());
        let probe = governor.reserve(Cost::default()).await;
        assert!(governor.snapshot().probing);
        let waiter = {
            let governor = governor.clone();
            tokio::spawn(async move { governor.reserve(Cost::default()).await })
        };
        // (After `probe_patience`, 1 s, a slow probe gets company: see the test below.)
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            !waiter.is_finished(),
            "a second request went out during the probe"
        );
        probe.succeeded(&Usage::default(), &requests_limit(600, 599));
        let _second = waiter.await.unwrap();
        let snapshot = governor.snapshot();
        assert!(!snapshot.probing);
        assert_eq!(snapshot.learned.requests, Some(600));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_without_limit_headers_opens_the_window_at_once() {
        let governor = Governor::new(GovernorConfig::default());
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..500 {
            held.push(governor.reserve(Cost::default()).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(governor.snapshot().in_flight, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_fails_without_headers_leaves_the_next_request_a_probe() {
        let governor = Governor::new(GovernorConfig::default());
        let probe = governor.reserve(Cost::default()).await;
        probe.failed(&ProviderError::Timeout {
            provider: "test",
            after: Duration::from_secs(5),
        });
        let _next = governor.reserve(Cost::default()).await;
        assert!(governor.snapshot().probing);
    }

    /// Regression: a learned bucket refilled at 98 % of the limit's rate (and was re-rated
    /// when the reported limit moved): it must refill at exactly limit/60 s.
    #[tokio::test(start_paused = true)]
    async fn a_learned_bucket_refills_at_exactly_the_limit() {
        let governor = Governor::new(GovernorConfig::default());
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &requests_limit(60, 0));
        let start = Instant::now();
        for _ in 0..30 {
            governor
                .reserve(Cost::default())
                .await
                .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((30.0..30.1).contains(&elapsed), "30 at 1/s took {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn remaining_lowers_a_learned_bucket_but_never_raises_it() {
        let governor = Governor::new(GovernorConfig::default());
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &requests_limit(600, 599));
        // Half the reported room is held back until a second report confirms it.
        let mut held = Vec::new();
        for _ in 0..299 {
            held.push(governor.reserve(Cost::default()).await);
        }
        // Someone else spent all but 10: the next report lowers us to 10.
        held.pop()
            .unwrap()
            .succeeded(&Usage::default(), &requests_limit(600, 10));
        let start = Instant::now();
        for _ in 0..10 {
            held.push(governor.reserve(Cost::default()).await);
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
        // A report of plenty of room does not raise the level.
        held.pop()
            .unwrap()
            .succeeded(&Usage::default(), &requests_limit(600, 500));
        held.push(governor.reserve(Cost::default()).await);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_under_learned_limits_pauses_for_its_retry_after_and_keeps_the_window() {
        let governor = Governor::new(GovernorConfig {
            max_in_flight: 100,
            ..GovernorConfig::default()
        });
        governor
            .reserve(Cost::default())
            .await
            .succeeded(&Usage::default(), &requests_limit(6000, 5999));
        let limited = governor.reserve(Cost::default()).await;
        limited.failed(&rate_limited(Some(Duration::from_secs(2))));
        let snapshot = governor.snapshot();
        assert_eq!(snapshot.window_decreases, 0);
        assert_eq!(snapshot.paused_for, Duration::from_secs(2));
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..100 {
            held.push(governor.reserve(Cost::default()).await);
        }
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(2),
            "paused exactly retry-after"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_limit_learned_elsewhere_ends_the_probe_and_paces_the_fleet() {
        let governor = Governor::new(GovernorConfig::default());
        governor.adopt(&Limits {
            requests: Some(60),
            ..Limits::default()
        });
        let snapshot = governor.snapshot();
        assert!(!snapshot.probing);
        assert_eq!(snapshot.learned.requests, Some(60));
        // Half of the full bucket is held back until a report of our own confirms it.
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..32 {
            held.push(governor.reserve(Cost::default()).await);
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((2.0..2.1).contains(&elapsed), "32 took {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_limit_lowers_a_higher_one_and_never_raises() {
        let governor = Governor::new(GovernorConfig {
            requests_per_minute: Some(600),
            headroom: 0.0,
            ..GovernorConfig::default()
        });
        governor.adopt(&Limits {
            requests: Some(60),
            ..Limits::default()
        });
        assert_eq!(governor.snapshot().limits.requests, Some(60));
        governor.adopt(&Limits {
            requests: Some(6000),
            ..Limits::default()
        });
        assert_eq!(governor.snapshot().limits.requests, Some(60));
        // The configured bucket keeps its level (600 at the start, capped to the new 60).
        let start = Instant::now();
        for _ in 0..61 {
            governor
                .reserve(Cost::default())
                .await
                .succeeded(&Usage::default(), &RateLimitSnapshot::default());
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((1.0..1.1).contains(&elapsed), "61 at 60/min took {elapsed}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_probe_lets_twice_as_many_out_every_second() {
        let governor = Governor::new(GovernorConfig::default());
        let start = Instant::now();
        let mut held = vec![governor.reserve(Cost::default()).await];
        let mut admitted_at = Vec::new();
        for _ in 0..7 {
            held.push(governor.reserve(Cost::default()).await);
            admitted_at.push(start.elapsed().as_secs());
        }
        // 1 in flight at first, 2 after 1 s, 4 after 2 s, 8 after 3 s.
        assert_eq!(admitted_at, [1, 2, 2, 3, 3, 3, 3]);
        // The answer with limits ends the probe.
        held.pop()
            .unwrap()
            .succeeded(&Usage::default(), &requests_limit(600, 500));
        assert!(!governor.snapshot().probing);
    }
}
