//! The retry policy (which failures to retry and how long to wait) and the fleet-wide retry
//! budget (how many retries the whole fleet may spend).
//!
//! The policy is a value read by [`crate::fleet`]; it never sleeps itself. It follows the
//! official SDKs: retry 408, 409, 429, 5xx and 529, connection errors and timeouts; honour
//! `x-should-retry`, then `retry-after-ms` / `retry-after`; otherwise exponential backoff with
//! jitter. It never retries 400, 401, 403, 404, 413, 422 or a 429 that reports a spend cap.
//!
//! The budget exists because 1,000 agents each retrying alone turn a brownout into a retry
//! storm: a retry spends a token, tokens come back as a fraction of successes (and slowly
//! with time), and a retry waits for a token instead of being sent at once. A retry that
//! succeeds gives its token back ([`RetryBudget::refund`]), so only failed retries drain the
//! budget: it holds back a failing API and never a recovered one. Retries of 429s (paced by
//! the governor's pause) and of failures during an outage (paced by the governor's probe)
//! spend nothing. The settings are `workflow.rate_limits.retry_budget`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::provider::{ErrorClass, ProviderError};

/// Which failures are retried, how often, and how long to wait between tries.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total tries of one request, the first included.
    pub max_attempts: u32,
    /// Backoff before retry n (0-based) is `min(initial * 2^n, max)`, times a jitter factor.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Jitter takes up to this fraction off a computed backoff (the SDKs use 0.25).
    pub jitter: f64,
    /// A server-requested delay above this is not waited for: the request fails instead of
    /// parking an agent for longer than the user would accept.
    pub max_server_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(16),
            jitter: 0.25,
            max_server_delay: Duration::from_secs(300),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Do not retry; the reason says why.
    GiveUp(GiveUpReason),
}

/// Why a failed request is not tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The error is not one that a retry can fix (400, 401, 403, 404, 413, spend cap…).
    NotRetryable,
    /// The server said `x-should-retry: false`.
    ServerSaidNo,
    /// `max_attempts` tries were made.
    AttemptsExhausted,
    /// The server asked for a delay longer than `max_server_delay`.
    DelayTooLong(Duration),
}

impl RetryPolicy {
    /// Decide after attempt number `attempt` (1 for the first try) failed with `error`.
    /// `jitter_unit` is a number in [0, 1) that scales the jitter.
    pub fn decide(&self, error: &ProviderError, attempt: u32, jitter_unit: f64) -> RetryDecision {
        let retryable = match error.should_retry_header() {
            Some(true) => true,
            Some(false) => return RetryDecision::GiveUp(GiveUpReason::ServerSaidNo),
            None => error.class() != ErrorClass::Fatal,
        };
        if !retryable {
            return RetryDecision::GiveUp(GiveUpReason::NotRetryable);
        }
        if attempt >= self.max_attempts {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        if let Some(delay) = error.retry_after() {
            if delay > self.max_server_delay {
                return RetryDecision::GiveUp(GiveUpReason::DelayTooLong(delay));
            }
            return RetryDecision::RetryAfter(delay);
        }
        RetryDecision::RetryAfter(self.backoff(attempt.saturating_sub(1), jitter_unit))
    }

    /// The backoff before retry `retry` (0 for the first retry), without a server hint.
    pub fn backoff(&self, retry: u32, jitter_unit: f64) -> Duration {
        let exponent = retry.min(30);
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let factor = 1.0 - self.jitter.clamp(0.0, 1.0) * jitter_unit.clamp(0.0, 1.0);
        base.mul_f64(factor)
    }
}

/// A cheap, process-wide source of jitter: SplitMix64 over a counter. Deterministic for a
/// given call order, which keeps tests reproducible; quality is ample for spreading retries.
pub fn jitter_unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Settings of the fleet-wide retry budget.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryBudgetConfig {
    /// Tokens at the start (and the most that can be saved up from time refill alone).
    pub initial: f64,
    /// Most tokens that can be held.
    pub max: f64,
    /// Tokens earned by each success: 0.1 keeps retries near a tenth of requests.
    pub per_success: f64,
    /// Tokens earned per second regardless, so a fleet with nothing succeeding can still probe.
    pub per_second: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            initial: 20.0,
            max: 200.0,
            per_success: 0.1,
            per_second: 1.0,
        }
    }
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    updated: Instant,
}

/// The fleet-wide retry budget. Shared by every agent of a run.
#[derive(Debug)]
pub struct RetryBudget {
    config: RetryBudgetConfig,
    state: Mutex<BudgetState>,
    changed: Notify,
}

impl RetryBudget {
    pub fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            state: Mutex::new(BudgetState {
                tokens: config.initial.min(config.max),
                updated: Instant::now(),
            }),
            config,
            changed: Notify::new(),
        }
    }

    /// Record a success, which earns part of a retry.
    pub fn deposit_success(&self) {
        let mut state = lock(&self.state);
        self.refill(&mut state);
        state.tokens = (state.tokens + self.config.per_success).min(self.config.max);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A retry that spent a token succeeded: the token comes back.
    pub fn refund(&self) {
        let mut state = lock(&self.state);
        self.refill(&mut state);
        state.tokens = (state.tokens + 1.0).min(self.config.max);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Take one retry token, waiting until one is available. Cancel by dropping the future.
    pub async fn acquire(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut state = lock(&self.state);
                self.refill(&mut state);
                // Tolerate float error: ten deposits of 0.1 make one whole retry.
                if state.tokens >= 1.0 - 1e-9 {
                    state.tokens -= 1.0;
                    return;
                }
                let missing = 1.0 - state.tokens;
                if self.config.per_second > 0.0 {
                    Some(Duration::from_secs_f64(missing / self.config.per_second))
                } else {
                    None
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Tokens available now (for reports and tests).
    pub fn available(&self) -> f64 {
        let mut state = lock(&self.state);
        self.refill(&mut state);
        state.tokens
    }

    fn refill(&self, state: &mut BudgetState) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.updated = now;
        if state.tokens < self.config.initial {
            state.tokens =
                (state.tokens + elapsed * self.config.per_second).min(self.config.initial);
        }
    }
}

/// Lock a std mutex, recovering the data if a holder panicked (state here stays valid).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::{ApiErrorDetails, RateLimitSnapshot};

    fn api(
        status: u16,
        retry_after: Option<Duration>,
        should_retry: Option<bool>,
    ) -> ProviderError {
        ProviderError::Api {
            provider: "test",
            details: Box::new(ApiErrorDetails {
                status,
                error_type: None,
                error_code: None,
                message: String::new(),
                retry_after,
                should_retry,
                request_id: None,
                rate_limits: RateLimitSnapshot::default(),
                body: String::new(),
            }),
        }
    }

    #[test]
    fn retries_what_the_sdks_retry_and_nothing_else() {
        let policy = RetryPolicy::default();
        for status in [408, 409, 429, 500, 502, 503, 504, 529] {
            assert!(
                matches!(
                    policy.decide(&api(status, None, None), 1, 0.0),
                    RetryDecision::RetryAfter(_)
                ),
                "{status} should be retried"
            );
        }
        for status in [400, 401, 403, 404, 413, 422] {
            assert_eq!(
                policy.decide(&api(status, None, None), 1, 0.0),
                RetryDecision::GiveUp(GiveUpReason::NotRetryable),
                "{status} must not be retried"
            );
        }
    }

    #[test]
    fn should_retry_header_overrides_the_status() {
        let policy = RetryPolicy::default();
        assert!(matches!(
            policy.decide(&api(400, None, Some(true)), 1, 0.0),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            policy.decide(&api(503, None, Some(false)), 1, 0.0),
            RetryDecision::GiveUp(GiveUpReason::ServerSaidNo)
        );
    }

    #[test]
    fn server_delay_wins_and_a_too_long_one_gives_up() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.decide(&api(429, Some(Duration::from_millis(1500)), None), 1, 0.9),
            RetryDecision::RetryAfter(Duration::from_millis(1500))
        );
        let long = Duration::from_secs(3600);
        assert_eq!(
            policy.decide(&api(429, Some(long), None), 1, 0.0),
            RetryDecision::GiveUp(GiveUpReason::DelayTooLong(long))
        );
    }

    #[test]
    fn attempts_are_capped() {
        let policy = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        };
        assert!(matches!(
            policy.decide(&api(500, None, None), 2, 0.0),
            RetryDecision::RetryAfter(_)
        ));
        assert_eq!(
            policy.decide(&api(500, None, None), 3, 0.0),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff(0, 0.0), Duration::from_millis(500));
        assert_eq!(policy.backoff(1, 0.0), Duration::from_secs(1));
        assert_eq!(policy.backoff(3, 0.0), Duration::from_secs(4));
        assert_eq!(policy.backoff(10, 0.0), Duration::from_secs(16));
        assert_eq!(policy.backoff(0, 1.0), Duration::from_millis(375));
        for _ in 0..1000 {
            let unit = jitter_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn budget_limits_retries_to_a_fraction_of_successes() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            initial: 2.0,
            max: 10.0,
            per_success: 0.1,
            per_second: 0.0,
        });
        budget.acquire().await;
        budget.acquire().await;
        assert!(budget.available() < 1.0);
        // Ten successes buy exactly one more retry.
        for _ in 0..10 {
            budget.deposit_success();
        }
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(budget.available() < 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_budget_waits_for_time_refill() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            initial: 1.0,
            max: 10.0,
            per_success: 0.1,
            per_second: 2.0,
        });
        budget.acquire().await;
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_that_succeeds_gives_its_token_back() {
        let budget = RetryBudget::new(RetryBudgetConfig {
            initial: 1.0,
            max: 10.0,
            per_success: 0.0,
            per_second: 0.0,
        });
        budget.acquire().await;
        assert!(budget.available() < 1.0);
        budget.refund();
        let start = Instant::now();
        budget.acquire().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
