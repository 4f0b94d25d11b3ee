//! The run store as a fleet's [`SharedLimits`]: every worker's requests and tokens taken from
//! one `rate_buckets` row per model API and limit, and the limits any worker learned from
//! response headers shared through `learned_limits`, so that a fleet of workers stays under
//! the organisation's limits together, not each on its own.
//!
//! Which limits: for each of requests, input tokens, output tokens and combined tokens per
//! minute, the lower of the workflow's (`rate_limits.*_per_minute`) and the lowest one any
//! worker reported recently; a workflow limit refills at `1 - headroom` of its rate, a learned
//! one at exactly its rate, as in the governor. Each bucket holds one second's worth (at least
//! one request), because the providers may enforce a per-minute limit over shorter intervals
//! and an idle fleet must not burst past it; a request bigger than that is taken once the
//! bucket is full and leaves it in debt, which later takers wait out.
//!
//! Taking draws one request and its estimated tokens from all of them at once. A worker does
//! not ask the store for each request: it takes a slice of each bucket besides what the
//! request needs ([`SLICE`] of its capacity, when the bucket has it), keeps it as credit and
//! spends it on its next requests; credit unspent after [`CREDIT_LIFETIME`] goes back to the
//! bucket. Everything a fleet sends was taken from the buckets first, so the fleet stays under
//! the limits; what credit changes is how often the store is written (a few times a second
//! per worker instead of three times per request, which on PostgreSQL made every worker queue
//! on the one bucket row). Only one take from the store is under way per worker at a time, so
//! a thousand agents starting at once ask once, not a thousand times. Settling corrects the
//! take to what the answer's `usage` says, in the worker's credit (below zero: owed, and paid
//! with its next take from the store). Reports of the
//! limits the headers gave (when they are new, or every [`REPORT_EVERY`]) and reads of what
//! the fleet learned (at most every [`READ_EVERY`]) go in the background, so no request
//! waits on them: a take uses the limits as last read. A store that cannot be reached takes
//! nothing and answers no wait: each worker's own governor still holds it to the limits
//! alone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::RateLimits;
use crate::governor::Limits;
use crate::governor::shared::{SharedFuture, SharedLimits, Take, Taken, Used};
use crate::governor::{Cost, GovernorConfig};
use crate::provider::RateLimitSnapshot;
use crate::retry::lock;
use crate::store::{BucketAdjust, BucketTake, LearnedLimit, Store};

/// A learned limit counts as long as someone reported it this recently.
pub const RECENT: Duration = Duration::from_secs(300);
/// A worker reports a limit it keeps seeing this often, so it stays recent.
pub const REPORT_EVERY: Duration = Duration::from_secs(60);
/// A worker reads what the fleet learned at most this often.
pub const READ_EVERY: Duration = Duration::from_secs(1);

/// What a worker takes from a bucket besides what a request needs, as a share of the bucket's
/// capacity (one second's worth of the limit).
pub const SLICE: f64 = 1.0 / 8.0;
/// Credit unspent this long after it was taken goes back to its bucket (so the fleet's sends
/// in any window stay within what the buckets gave in it and this long before).
pub const CREDIT_LIFETIME: Duration = Duration::from_millis(250);

/// The limit kinds, in the governor's order, as the workflow and the store name them.
const KINDS: [&str; 4] = [
    "requests_per_minute",
    "input_tokens_per_minute",
    "output_tokens_per_minute",
    "tokens_per_minute",
];

/// One worker's view of the limits its fleet shares through the store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreLimits {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// The model API the limits are of (`anthropic`, `openai`): bucket and row names start
    /// with it, whichever run or worker takes.
    api: String,
    /// This worker's name on the limits it reports.
    reporter: String,
    /// The workflow's limits, and how far below a workflow limit its bucket refills.
    configured: Limits,
    headroom: f64,
    state: Mutex<State>,
    /// Held while a take from the store is under way: one at a time per worker.
    refill: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The fleet's learned limits, as last read.
    learned: Limits,
    read_at: Option<Instant>,
    /// What this worker last reported of each kind, and when.
    reported: [Option<(u64, Instant)>; 4],
    /// A read or report is under way in the background.
    sharing: bool,
    /// Per kind: taken from the shared bucket and not spent yet (below zero: spent more than
    /// was taken, paid with the next take from the store).
    credit: [f64; 4],
    /// When credit was last taken from the store.
    credited_at: Option<Instant>,
}

impl StoreLimits {
    /// The shared limits of model API `api` for a worker named `reporter` running under
    /// `rate_limits`, with what the fleet has learned so far already read.
    pub async fn open(
        store: Store,
        api: String,
        reporter: String,
        rate_limits: &RateLimits,
        governor: &GovernorConfig,
    ) -> StoreLimits {
        let inner = Arc::new(Inner {
            store,
            api,
            reporter,
            configured: Limits {
                requests: rate_limits.requests_per_minute,
                input_tokens: rate_limits.input_tokens_per_minute,
                output_tokens: rate_limits.output_tokens_per_minute,
                tokens: rate_limits.tokens_per_minute,
            },
            headroom: governor.headroom,
            state: Mutex::default(),
            refill: tokio::sync::Mutex::default(),
        });
        inner.share(Vec::new()).await;
        StoreLimits { inner }
    }

    /// Report `limits` (kind index, value) and read back what the fleet learned, in a task of
    /// its own; a read alone is not started while another is under way.
    fn share_in_background(&self, limits: Vec<(usize, u64)>) {
        {
            let mut state = lock(&self.inner.state);
            if limits.is_empty() && state.sharing {
                return;
            }
            state.sharing = true;
            // Counted as reported now, so the answers meanwhile do not report it again; and
            // this worker's own takes use it at once, as the store's row will (the lower wins).
            let now = Instant::now();
            let mut learned = state.learned.as_array();
            for (kind, limit) in &limits {
                state.reported[*kind] = Some((*limit, now));
                learned[*kind] = Some(learned[*kind].map_or(*limit, |known| known.min(*limit)));
            }
            state.learned = Limits::from_array(learned);
        }
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move { inner.share(limits).await });
    }

    /// Whether what the fleet learned was last read longer than [`READ_EVERY`] ago.
    fn stale(&self) -> bool {
        lock(&self.inner.state)
            .read_at
            .is_none_or(|at| at.elapsed() >= READ_EVERY)
    }
}

impl Inner {
    fn bucket_name(&self, kind: usize) -> String {
        format!("{}:{}", self.api, KINDS[kind])
    }

    /// Per kind, the limit that binds and its bucket's capacity and refill per second.
    fn buckets(&self) -> [Option<(f64, f64)>; 4] {
        let learned = lock(&self.state).learned.as_array();
        let mut out = [None; 4];
        for (kind, (configured, learned)) in self
            .configured
            .as_array()
            .into_iter()
            .zip(learned)
            .enumerate()
        {
            let rate = match (configured, learned) {
                (Some(configured), Some(learned)) if learned < configured => learned as f64,
                (Some(configured), _) => configured as f64 * (1.0 - self.headroom.clamp(0.0, 0.5)),
                (None, Some(learned)) => learned as f64,
                (None, None) => continue,
            };
            let per_second = rate / 60.0;
            out[kind] = Some((per_second.max(1.0), per_second));
        }
        out
    }

    /// Spend `amounts` of the limits in `active` from this worker's credit, if it covers
    /// every one of them; whether it did.
    fn spend_credit(&self, amounts: &[f64; 4], active: &[bool; 4]) -> bool {
        let mut state = lock(&self.state);
        let covered = (0..4).all(|kind| !active[kind] || state.credit[kind] >= amounts[kind]);
        if covered {
            for kind in (0..4).filter(|kind| active[*kind]) {
                state.credit[kind] -= amounts[kind];
            }
        }
        covered
    }

    /// Give credit older than [`CREDIT_LIFETIME`] back to its buckets (queued), and drop the
    /// credit of limits that no longer have a bucket.
    async fn expire_credit(&self, buckets: &[Option<(f64, f64)>; 4]) {
        let adjusts: Vec<BucketAdjust> = {
            let mut state = lock(&self.state);
            for (kind, bucket) in buckets.iter().enumerate() {
                if bucket.is_none() {
                    state.credit[kind] = 0.0;
                }
            }
            if state
                .credited_at
                .is_none_or(|at| at.elapsed() < CREDIT_LIFETIME)
            {
                return;
            }
            state.credited_at = None;
            let mut adjusts = Vec::new();
            for (kind, bucket) in buckets.iter().enumerate() {
                if let Some((capacity, per_second)) = bucket
                    && state.credit[kind] > 0.0
                {
                    adjusts.push(BucketAdjust {
                        name: self.bucket_name(kind),
                        capacity: *capacity,
                        per_second: *per_second,
                        give_back: state.credit[kind],
                    });
                    state.credit[kind] = 0.0;
                }
            }
            adjusts
        };
        if !adjusts.is_empty() {
            // Queued: nobody waits on a return.
            let _ = self.store.adjust_buckets(adjusts, SystemTime::now()).await;
        }
    }

    /// Report `limits` (kind index, value) and read back what the fleet learned.
    async fn share(&self, limits: Vec<(usize, u64)>) {
        let named = limits
            .iter()
            .map(|(kind, limit)| (KINDS[*kind].to_owned(), *limit))
            .collect();
        let answer = self
            .store
            .share_learned_limits(&self.api, &self.reporter, named, SystemTime::now(), RECENT)
            .await;
        let mut state = lock(&self.state);
        state.read_at = Some(Instant::now());
        state.sharing = false;
        // Unreachable: keep what was known.
        if let Ok(rows) = answer {
            state.learned = fleet_limits(&rows);
        }
    }
}

/// The lowest learned limit of each kind in `rows`.
fn fleet_limits(rows: &[LearnedLimit]) -> Limits {
    let mut limits = [None; 4];
    for row in rows {
        if let Some(kind) = KINDS.iter().position(|name| *name == row.kind) {
            let value: Option<u64> = limits[kind];
            limits[kind] =
                Some(value.map_or(row.limit_per_minute, |v| v.min(row.limit_per_minute)));
        }
    }
    Limits::from_array(limits)
}

impl SharedLimits for StoreLimits {
    fn take(&self, cost: Cost) -> SharedFuture<'_, Take> {
        Box::pin(async move {
            if self.stale() {
                self.share_in_background(Vec::new());
            }
            let inner = &self.inner;
            let amounts = [
                1.0,
                cost.input_tokens as f64,
                cost.output_tokens as f64,
                (cost.input_tokens + cost.output_tokens) as f64,
            ];
            let buckets = inner.buckets();
            let active = buckets.map(|bucket| bucket.is_some());
            if !active.contains(&true) {
                return Take::Taken(Taken { cost, from: active });
            }
            inner.expire_credit(&buckets).await;
            if inner.spend_credit(&amounts, &active) {
                return Take::Taken(Taken { cost, from: active });
            }
            let _refill = inner.refill.lock().await;
            // Another request of this worker may have taken credit meanwhile.
            if inner.spend_credit(&amounts, &active) {
                return Take::Taken(Taken { cost, from: active });
            }
            // What the credit does not cover (and what it owes) is taken from the store,
            // with a slice of credit besides; the request's part is held at once, so that
            // requests spending credit meanwhile cannot spend it too.
            let mut takes = Vec::new();
            let mut sent = Vec::new();
            {
                let mut state = lock(&inner.state);
                for (kind, bucket) in buckets.iter().enumerate() {
                    let Some((capacity, per_second)) = bucket else {
                        continue;
                    };
                    state.credit[kind] -= amounts[kind];
                    if state.credit[kind] < 0.0 {
                        sent.push((kind, -state.credit[kind]));
                        takes.push(BucketTake {
                            name: inner.bucket_name(kind),
                            capacity: *capacity,
                            per_second: *per_second,
                            amount: -state.credit[kind],
                            extra: capacity * SLICE,
                        });
                    }
                }
            }
            let answer = inner
                .store
                .grant_from_buckets(takes, SystemTime::now())
                .await;
            let mut state = lock(&inner.state);
            match answer {
                Ok(granted) if granted.wait_ms == 0 => {
                    for ((kind, amount), extra) in sent.iter().zip(&granted.extra) {
                        state.credit[*kind] += amount + extra;
                    }
                    state.credited_at = Some(Instant::now());
                    Take::Taken(Taken { cost, from: active })
                }
                other => {
                    // Nothing was taken from the store: the request's part goes back.
                    for kind in (0..4).filter(|kind| active[*kind]) {
                        state.credit[kind] += amounts[kind];
                    }
                    match other {
                        Ok(granted) => Take::Wait(Duration::from_millis(granted.wait_ms)),
                        // Unreachable: the worker's own governor still holds it.
                        Err(_) => Take::Taken(Taken {
                            cost,
                            from: [false; 4],
                        }),
                    }
                }
            }
        })
    }

    fn settle(
        &self,
        taken: Taken,
        used: Used,
        reported: Option<RateLimitSnapshot>,
    ) -> SharedFuture<'_, Limits> {
        Box::pin(async move {
            let inner = &self.inner;
            let cost = taken.cost;
            let (requests, input, output) = match used {
                Used::Answered(usage) => {
                    (1.0, usage.input_tokens as f64, usage.output_tokens as f64)
                }
                Used::Refused => (0.0, 0.0, 0.0),
                Used::Failed => (1.0, cost.input_tokens as f64, 0.0),
            };
            let taken_amounts = [
                1.0,
                cost.input_tokens as f64,
                cost.output_tokens as f64,
                (cost.input_tokens + cost.output_tokens) as f64,
            ];
            let used_amounts = [requests, input, output, input + output];
            let buckets = inner.buckets();
            let mut adjusts = Vec::new();
            {
                let mut state = lock(&inner.state);
                for kind in 0..4 {
                    // A learned limit nobody reported for a while is gone, and so is its
                    // bucket.
                    let Some((capacity, per_second)) = buckets[kind] else {
                        continue;
                    };
                    if !taken.from[kind] {
                        continue;
                    }
                    // The correction is the worker's credit (or debt); credit far beyond a
                    // slice (an estimate well above the answer) goes back at once.
                    state.credit[kind] += taken_amounts[kind] - used_amounts[kind];
                    let slice = capacity * SLICE;
                    if state.credit[kind] > 2.0 * slice {
                        adjusts.push(BucketAdjust {
                            name: inner.bucket_name(kind),
                            capacity,
                            per_second,
                            give_back: state.credit[kind] - slice,
                        });
                        state.credit[kind] = slice;
                    }
                }
            }
            if !adjusts.is_empty() {
                // Queued: a correction need not hold the agent up.
                let _ = inner.store.adjust_buckets(adjusts, SystemTime::now()).await;
            }
            let news: Vec<(usize, u64)> = reported
                .map(|headers| Limits::reported(&headers).as_array())
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .filter_map(|(kind, limit)| Some((kind, limit?)))
                .filter(|(kind, limit)| {
                    lock(&inner.state).reported[*kind]
                        .is_none_or(|(last, at)| last != *limit || at.elapsed() >= REPORT_EVERY)
                })
                .collect();
            if !news.is_empty() || self.stale() {
                self.share_in_background(news);
            }
            lock(&inner.state).learned
        })
    }

    fn learned(&self) -> Limits {
        lock(&self.inner.state).learned
    }
}
