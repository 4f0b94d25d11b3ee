//! Rate limits: three continuously refilling token buckets and the headers that report them.
//!
//! Each configured limit L (requests, input tokens or output tokens per minute) is a bucket of
//! capacity L refilled at L/60 per second. A request is admitted when the requests bucket holds
//! at least 1, the input bucket holds at least its input tokens (or is full, so that a request
//! larger than the whole limit is not starved forever) and the output bucket is above 0. On
//! admission the request and its input tokens are charged; output tokens are charged when the
//! answer is produced and may drive the output bucket negative. All time is
//! `tokio::time::Instant`, so tests can run on paused time. Both APIs share one set of buckets.
//! Headers follow the vendors' documentation: Anthropic's `remaining` token counts are rounded
//! to the nearest thousand, OpenAI's are exact.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone)]
struct Bucket {
    limit: u64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn new(limit: u64, now: Instant) -> Self {
        Self {
            limit,
            level: limit as f64,
            updated: now,
        }
    }

    fn rate_per_sec(&self) -> f64 {
        self.limit as f64 / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate_per_sec()).min(self.limit as f64);
        self.updated = now;
    }

    /// Time until the level reaches `need` (zero when it already has).
    fn time_until(&self, need: f64) -> Duration {
        if self.level >= need {
            return Duration::ZERO;
        }
        let rate = self.rate_per_sec();
        if rate <= 0.0 {
            return Duration::from_secs(60);
        }
        Duration::from_secs_f64(((need - self.level) / rate).min(1.0e6))
    }

    fn remaining(&self) -> u64 {
        if self.level <= 0.0 {
            0
        } else {
            self.level.floor() as u64
        }
    }

    fn until_full(&self) -> Duration {
        self.time_until(self.limit as f64)
    }
}

/// Which bucket refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
    Tokens,
}

impl Dimension {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Dimension::Requests => "requests",
            Dimension::InputTokens => "input tokens",
            Dimension::OutputTokens => "output tokens",
            Dimension::Tokens => "tokens",
        }
    }
}

/// A refusal: the binding dimension, its limit and how long until the request would fit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    pub(crate) dimension: Dimension,
    pub(crate) limit: u64,
    pub(crate) retry_after_secs: u64,
    pub(crate) wait: Duration,
}

/// One bucket's state for headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BucketView {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) until_full: Duration,
}

/// What the headers report.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    pub(crate) requests: Option<BucketView>,
    pub(crate) input: Option<BucketView>,
    pub(crate) output: Option<BucketView>,
    /// The combined input + output bucket.
    pub(crate) combined: Option<BucketView>,
}

impl Snapshot {
    /// The combined bucket when there is one, else the most restrictive token bucket (the
    /// lower remaining count) of input and output.
    pub(crate) fn tokens(&self) -> Option<BucketView> {
        if self.combined.is_some() {
            return self.combined;
        }
        match (self.input, self.output) {
            (Some(a), Some(b)) => Some(if b.remaining < a.remaining { b } else { a }),
            (a, b) => a.or(b),
        }
    }
}

/// The buckets.
#[derive(Debug)]
pub(crate) struct Limiter {
    requests: Option<Bucket>,
    input: Option<Bucket>,
    output: Option<Bucket>,
    /// Input and output tokens together (charged like input at admission, then like output).
    combined: Option<Bucket>,
}

impl Limiter {
    pub(crate) fn new(
        rpm: Option<u64>,
        itpm: Option<u64>,
        otpm: Option<u64>,
        tpm: Option<u64>,
        now: Instant,
    ) -> Self {
        Self {
            requests: rpm.map(|l| Bucket::new(l, now)),
            input: itpm.map(|l| Bucket::new(l, now)),
            output: otpm.map(|l| Bucket::new(l, now)),
            combined: tpm.map(|l| Bucket::new(l, now)),
        }
    }

    pub(crate) fn is_unlimited(&self) -> bool {
        self.requests.is_none()
            && self.input.is_none()
            && self.output.is_none()
            && self.combined.is_none()
    }

    fn refill(&mut self, now: Instant) {
        for bucket in [
            &mut self.requests,
            &mut self.input,
            &mut self.output,
            &mut self.combined,
        ]
        .into_iter()
        .flatten()
        {
            bucket.refill(now);
        }
    }

    /// Admits and charges the request, or says which bucket refused it and for how long.
    pub(crate) fn try_admit(&mut self, now: Instant, input_tokens: u64) -> Result<(), Refusal> {
        self.refill(now);
        let mut worst: Option<Refusal> = None;
        let mut consider = |bucket: &Option<Bucket>, need: f64, dimension: Dimension| {
            if let Some(bucket) = bucket {
                let wait = bucket.time_until(need);
                if !wait.is_zero() && worst.is_none_or(|w| wait > w.wait) {
                    worst = Some(Refusal {
                        dimension,
                        limit: bucket.limit,
                        retry_after_secs: 0,
                        wait,
                    });
                }
            }
        };
        consider(&self.requests, 1.0, Dimension::Requests);
        if let Some(bucket) = &self.input {
            let need = (input_tokens as f64).min(bucket.limit as f64);
            consider(&self.input, need, Dimension::InputTokens);
        }
        if let Some(bucket) = &self.combined {
            let need = (input_tokens as f64).min(bucket.limit as f64);
            consider(&self.combined, need, Dimension::Tokens);
        }
        if let Some(bucket) = &self.output
            && bucket.level <= 0.0
        {
            // Admission needs a level strictly above zero.
            consider(&self.output, 1.0e-9, Dimension::OutputTokens);
        }
        if let Some(mut refusal) = worst {
            refusal.retry_after_secs = refusal.wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(refusal);
        }
        if let Some(bucket) = &mut self.requests {
            bucket.level -= 1.0;
        }
        if let Some(bucket) = &mut self.input {
            bucket.level -= input_tokens as f64;
        }
        if let Some(bucket) = &mut self.combined {
            bucket.level -= input_tokens as f64;
        }
        Ok(())
    }

    /// Charges generated output tokens (the bucket may go negative).
    pub(crate) fn charge_output(&mut self, now: Instant, tokens: u64) {
        for bucket in [&mut self.output, &mut self.combined].into_iter().flatten() {
            bucket.refill(now);
            bucket.level -= tokens as f64;
        }
    }

    pub(crate) fn snapshot(&mut self, now: Instant) -> Snapshot {
        self.refill(now);
        let view = |b: &Option<Bucket>| {
            b.as_ref().map(|b| BucketView {
                limit: b.limit,
                remaining: b.remaining(),
                until_full: b.until_full(),
            })
        };
        Snapshot {
            requests: view(&self.requests),
            input: view(&self.input),
            output: view(&self.output),
            combined: view(&self.combined),
        }
    }
}

/// Anthropic documents token counts in `*-remaining` as "rounded to the nearest thousand";
/// request counts are exact.
fn nearest_thousand(tokens: u64) -> u64 {
    (tokens + 500) / 1000 * 1000
}

/// `anthropic-ratelimit-*` headers for the configured dimensions, as documented: `remaining`
/// (token counts rounded to the nearest thousand) and `reset`, the RFC 3339 time at which the
/// bucket will be full again.
pub(crate) fn anthropic_headers(
    snapshot: &Snapshot,
    wall_now: SystemTime,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let dims = [
        ("requests", snapshot.requests),
        ("tokens", snapshot.tokens()),
        ("input-tokens", snapshot.input),
        ("output-tokens", snapshot.output),
    ];
    for (name, view) in dims {
        if let Some(view) = view {
            let remaining = if name == "requests" {
                view.remaining
            } else {
                nearest_thousand(view.remaining)
            };
            out.push((
                format!("anthropic-ratelimit-{name}-limit"),
                view.limit.to_string(),
            ));
            out.push((
                format!("anthropic-ratelimit-{name}-remaining"),
                remaining.to_string(),
            ));
            out.push((
                format!("anthropic-ratelimit-{name}-reset"),
                rfc3339(wall_now + view.until_full),
            ));
        }
    }
    out
}

/// `x-ratelimit-*` headers (OpenAI style) for the configured dimensions.
pub(crate) fn openai_headers(snapshot: &Snapshot) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, view) in [
        ("requests", snapshot.requests),
        ("tokens", snapshot.tokens()),
    ] {
        if let Some(view) = view {
            out.push((format!("x-ratelimit-limit-{name}"), view.limit.to_string()));
            out.push((
                format!("x-ratelimit-remaining-{name}"),
                view.remaining.to_string(),
            ));
            out.push((
                format!("x-ratelimit-reset-{name}"),
                go_duration(view.until_full),
            ));
        }
    }
    out
}

/// RFC 3339 UTC time with whole seconds, e.g. `2025-08-21T12:40:59Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A Go-style duration (`time.Duration.String()` at millisecond precision): `0s`, `12ms`,
/// `1s`, `6m0s`, `1m30.5s`, `1h0m0s`.
pub(crate) fn go_duration(duration: Duration) -> String {
    let total_ms = duration.as_millis();
    if total_ms == 0 {
        return "0s".to_string();
    }
    if total_ms < 1000 {
        return format!("{total_ms}ms");
    }
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms % 3_600_000) / 60_000;
    let ms = total_ms % 60_000;
    let mut seconds = format!("{}.{:03}", ms / 1000, ms % 1000);
    while seconds.ends_with('0') {
        seconds.pop();
    }
    if seconds.ends_with('.') {
        seconds.pop();
    }
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anthropic_token_counts_are_rounded_to_the_nearest_thousand() {
        let view = |remaining| BucketView {
            limit: 80_000,
            remaining,
            until_full: Duration::from_secs(3),
        };
        let snapshot = Snapshot {
            requests: Some(BucketView {
                limit: 50,
                remaining: 49,
                until_full: Duration::from_secs(2),
            }),
            input: Some(view(12_499)),
            output: Some(view(12_500)),
            combined: None,
        };
        let headers = anthropic_headers(&snapshot, UNIX_EPOCH);
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("anthropic-ratelimit-requests-remaining"), Some("49"));
        assert_eq!(
            get("anthropic-ratelimit-input-tokens-remaining"),
            Some("12000")
        );
        assert_eq!(
            get("anthropic-ratelimit-output-tokens-remaining"),
            Some("13000")
        );
        assert_eq!(get("anthropic-ratelimit-tokens-remaining"), Some("12000"));
        assert_eq!(
            get("anthropic-ratelimit-input-tokens-reset"),
            Some("1970-01-01T00:00:03Z")
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_millis(90_500)), "1m30.5s");
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn rfc3339_epoch_and_leap_day() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_755_780_059);
        assert_eq!(rfc3339(t), "2025-08-21T12:40:59Z");
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_refills_and_refuses() {
        let start = Instant::now();
        let mut limiter = Limiter::new(Some(60), None, Some(100), None, start);
        for _ in 0..60 {
            assert!(limiter.try_admit(start, 10).is_ok());
        }
        let refusal = limiter.try_admit(start, 10).err();
        let refusal = refusal.map(|r| (r.dimension, r.retry_after_secs));
        assert_eq!(refusal, Some((Dimension::Requests, 1)));
        assert!(
            limiter
                .try_admit(start + Duration::from_secs(1), 10)
                .is_ok()
        );
        limiter.charge_output(start + Duration::from_secs(1), 400);
        let refusal = limiter.try_admit(start + Duration::from_secs(10), 1).err();
        assert_eq!(refusal.map(|r| r.dimension), Some(Dimension::OutputTokens));
        let snap = limiter.snapshot(start + Duration::from_secs(10));
        assert_eq!(snap.output.map(|v| v.remaining), Some(0));
    }
}
