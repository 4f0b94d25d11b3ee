//! A provider wrapped in the fleet's rate governor, retry policy and retry budget: the one
//! call every agent of a run makes.
//!
//! One attempt goes: estimate the cost, reserve it in the governor (queueing as long as the
//! fleet needs), take it from the limits shared with other processes when there are any
//! ([`crate::governor::shared`]), send, then settle the reservation (and the shared take)
//! from the answer; the limits the other processes learned go to the governor. A failure is classified by
//! the retry policy; a retry waits the server's delay or the backoff, then takes a token from
//! the fleet-wide retry budget (not for a 429, which the governor's pause paces, nor during an
//! outage, which the governor's probe paces) and gives it back if it succeeds. Every wait races
//! the caller's cancellation token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::governor::estimate::TokenEstimator;
use crate::governor::shared::{SharedLimits, Take, Taken, Used};
use crate::governor::{Cost, Governor};
use crate::provider::{Attempt, ErrorClass, Provider, ProviderError, Request, Response};
use crate::retry::{GiveUpReason, RetryBudget, RetryDecision, RetryPolicy, jitter_unit};

/// Why a fleet call did not produce a response.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The last attempt failed and the policy does not allow another.
    #[error("{source} (after {attempts} attempt{}; {})", if *.attempts == 1 { "" } else { "s" }, give_up_text(.reason))]
    Failed {
        #[source]
        source: ProviderError,
        attempts: u32,
        reason: GiveUpReason,
    },
    /// The caller cancelled the call.
    #[error("cancelled after {attempts} attempt(s)")]
    Cancelled { attempts: u32 },
}

fn give_up_text(reason: &GiveUpReason) -> String {
    match reason {
        GiveUpReason::NotRetryable => "not retryable".into(),
        GiveUpReason::ServerSaidNo => "the server said not to retry".into(),
        GiveUpReason::AttemptsExhausted => "retry limit reached".into(),
        GiveUpReason::DelayTooLong(delay) => {
            format!("the server asked to wait {delay:?}, longer than allowed")
        }
    }
}

/// Counters of everything the fleet did, for reports and benchmarks.
#[derive(Debug, Default)]
pub struct FleetCounters {
    pub calls: AtomicU64,
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub rate_limited: AtomicU64,
    pub overloaded: AtomicU64,
    pub other_errors: AtomicU64,
    pub input_tokens: AtomicU64,
    pub output_tokens: AtomicU64,
    pub cache_read_tokens: AtomicU64,
    pub governor_wait_ms: AtomicU64,
    /// Backoff and server-requested delays before retries.
    pub retry_wait_ms: AtomicU64,
    /// Time retries waited for a token of the fleet-wide retry budget.
    pub budget_wait_ms: AtomicU64,
}

/// A plain copy of [`FleetCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetStats {
    pub calls: u64,
    pub attempts: u64,
    pub retries: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
    pub other_errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub governor_wait_ms: u64,
    pub retry_wait_ms: u64,
    pub budget_wait_ms: u64,
}

/// The result of one successful call, with what it took to get it.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub response: Response,
    /// Tries made, the successful one included.
    pub attempts: u32,
    /// Time spent queued in the governor, over all attempts.
    pub governor_wait: Duration,
    /// Tries the server answered with a 429 (rate limited) before this one succeeded.
    pub rate_limited: u32,
}

/// Shared by every agent of a run. Cheap to clone.
#[derive(Clone)]
pub struct Fleet {
    provider: Arc<dyn Provider>,
    governor: Governor,
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
    estimator: Arc<TokenEstimator>,
    counters: Arc<FleetCounters>,
    stream: bool,
    /// Limits shared with other processes, taken after this process's governor admits.
    shared: Option<Arc<dyn SharedLimits>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("provider", &self.provider.name())
            .field("policy", &self.policy)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    pub fn new(
        provider: Arc<dyn Provider>,
        governor: Governor,
        policy: RetryPolicy,
        budget: Arc<RetryBudget>,
    ) -> Self {
        Fleet {
            provider,
            governor,
            policy,
            budget,
            estimator: Arc::new(TokenEstimator::default()),
            counters: Arc::new(FleetCounters::default()),
            stream: false,
            shared: None,
        }
    }

    /// Also take every request from `limits`, shared with other processes (workers on other
    /// machines under one organisation's limits); the limits they learned already are the
    /// governor's from now on.
    pub fn with_shared_limits(mut self, limits: Arc<dyn SharedLimits>) -> Self {
        self.governor.adopt(&limits.learned());
        self.shared = Some(limits);
        self
    }

    /// Read answers as server-sent events (the default is one JSON body).
    pub fn streaming(mut self, stream: bool) -> Self {
        self.stream = stream;
        self
    }

    pub fn governor(&self) -> &Governor {
        &self.governor
    }

    pub fn estimator(&self) -> &TokenEstimator {
        &self.estimator
    }

    /// Send `request` through the governor, retrying as the policy allows.
    pub async fn call(
        &self,
        request: &Request,
        cancel: &CancellationToken,
    ) -> Result<CallOutcome, FleetError> {
        let counters = &self.counters;
        counters.calls.fetch_add(1, Ordering::Relaxed);
        let raw_input = TokenEstimator::raw_input(request);
        let mut governor_wait = Duration::ZERO;
        let mut rate_limited: u32 = 0;
        let mut attempt: u32 = 0;
        // Whether this attempt is a retry that spent a retry-budget token.
        let mut spent_token = false;
        loop {
            attempt += 1;
            let cost = Cost {
                input_tokens: self.estimator.input_tokens_for(raw_input),
                output_tokens: self.estimator.output_tokens(request),
            };
            let reservation = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt - 1 }),
                reservation = self.governor.reserve(cost) => reservation,
            };
            governor_wait += reservation.waited();
            counters
                .governor_wait_ms
                .fetch_add(reservation.waited().as_millis() as u64, Ordering::Relaxed);
            let mut taken: Option<Taken> = None;
            if let Some(shared) = &self.shared {
                loop {
                    let take = tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt - 1 }),
                        take = shared.take(cost) => take,
                    };
                    let wait = match take {
                        Take::Taken(drawn) => {
                            taken = Some(drawn);
                            break;
                        }
                        Take::Wait(wait) => wait,
                    };
                    governor_wait += wait;
                    counters
                        .governor_wait_ms
                        .fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt - 1 }),
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            counters.attempts.fetch_add(1, Ordering::Relaxed);
            let sent = self
                .provider
                .send(request, Attempt { retry: attempt - 1 }, self.stream);
            let result = tokio::select! {
                biased;
                // Dropping the reservation keeps its charge: the server may have counted it.
                _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt }),
                result = sent => result,
            };
            let error = match result {
                Ok(response) => {
                    reservation.succeeded(&response.usage, &response.rate_limits);
                    let used = Used::Answered(Cost {
                        input_tokens: response.usage.rate_limited_input(),
                        output_tokens: response.usage.output_tokens,
                    });
                    self.settle_shared(taken, used, Some(response.rate_limits))
                        .await;
                    self.estimator.observe(
                        raw_input,
                        response.usage.rate_limited_input(),
                        response.usage.output_tokens,
                    );
                    self.budget.deposit_success();
                    if spent_token {
                        self.budget.refund();
                    }
                    counters.succeeded.fetch_add(1, Ordering::Relaxed);
                    counters
                        .input_tokens
                        .fetch_add(response.usage.rate_limited_input(), Ordering::Relaxed);
                    counters
                        .output_tokens
                        .fetch_add(response.usage.output_tokens, Ordering::Relaxed);
                    counters
                        .cache_read_tokens
                        .fetch_add(response.usage.cache_read_input_tokens, Ordering::Relaxed);
                    return Ok(CallOutcome {
                        response,
                        attempts: attempt,
                        governor_wait,
                        rate_limited,
                    });
                }
                Err(error) => error,
            };
            let failure = reservation.failed(&error);
            let used = if error.class() == ErrorClass::RateLimited {
                Used::Refused
            } else {
                Used::Failed
            };
            self.settle_shared(taken, used, error.rate_limits().copied())
                .await;
            if error.class() == ErrorClass::RateLimited {
                rate_limited += 1;
            }
            match error.class() {
                ErrorClass::RateLimited => counters.rate_limited.fetch_add(1, Ordering::Relaxed),
                ErrorClass::Overloaded => counters.overloaded.fetch_add(1, Ordering::Relaxed),
                _ => counters.other_errors.fetch_add(1, Ordering::Relaxed),
            };
            let delay = match self.policy.decide(&error, attempt, jitter_unit()) {
                RetryDecision::RetryAfter(delay) => delay,
                RetryDecision::GiveUp(reason) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    return Err(FleetError::Failed {
                        source: error,
                        attempts: attempt,
                        reason,
                    });
                }
            };
            counters.retries.fetch_add(1, Ordering::Relaxed);
            let waited_from = tokio::time::Instant::now();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt }),
                _ = tokio::time::sleep(delay) => {}
            }
            counters
                .retry_wait_ms
                .fetch_add(waited_from.elapsed().as_millis() as u64, Ordering::Relaxed);
            // A 429 is the server pacing us, not failing: the governor's pause and buckets
            // already hold the whole fleet back, so its retry spends no budget. During an
            // outage the governor sends one probe at a time: the retry queues behind it and
            // goes as soon as the API answers again, without a token.
            spent_token = false;
            if error.class() != ErrorClass::RateLimited && !failure.during_outage {
                let budget_from = tokio::time::Instant::now();
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(FleetError::Cancelled { attempts: attempt }),
                    _ = self.budget.acquire() => {}
                }
                spent_token = true;
                counters
                    .budget_wait_ms
                    .fetch_add(budget_from.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        }
    }

    /// Correct a shared take to what the server counted, and give the governor the limits
    /// the other processes learned. Headers are passed on only when the governor learns
    /// from them.
    async fn settle_shared(
        &self,
        taken: Option<Taken>,
        used: Used,
        reported: Option<crate::provider::RateLimitSnapshot>,
    ) {
        let (Some(shared), Some(taken)) = (&self.shared, taken) else {
            return;
        };
        let reported = reported.filter(|_| self.governor.config().learn_from_headers);
        let learned = shared.settle(taken, used, reported).await;
        self.governor.adopt(&learned);
    }

    /// A copy of the counters.
    pub fn stats(&self) -> FleetStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FleetStats {
            calls: get(&c.calls),
            attempts: get(&c.attempts),
            retries: get(&c.retries),
            succeeded: get(&c.succeeded),
            failed: get(&c.failed),
            rate_limited: get(&c.rate_limited),
            overloaded: get(&c.overloaded),
            other_errors: get(&c.other_errors),
            input_tokens: get(&c.input_tokens),
            output_tokens: get(&c.output_tokens),
            cache_read_tokens: get(&c.cache_read_tokens),
            governor_wait_ms: get(&c.governor_wait_ms),
            retry_wait_ms: get(&c.retry_wait_ms),
            budget_wait_ms: get(&c.budget_wait_ms),
        }
    }
}
