//! A continuously refilling, weighted token bucket that may go into debt.
//!
//! Unlike a plain limiter, a reservation can be corrected after the fact (refunded or charged
//! more) once the response says what it really cost, and the level can be lowered to what the
//! server reports. Time is `tokio::time::Instant`, so tests run on paused time.
//!
//! A bucket learned from headers (rather than configured) also:
//! - holds back half of what the first report showed until a second report confirms nobody
//!   else spent it (slow start: two clients starting together on one key do not both spend the
//!   whole burst);
//! - measures how much of the key other clients use, from the gap between what the server's
//!   `remaining` should be after our own charges and what it is, and counts on its share of the
//!   refill only ([`Bucket::share`]): two processes on one key settle on splitting the limit
//!   without talking to each other. Alone, the share is 1 and the refill is exactly limit/60 s.

use std::time::Duration;

use tokio::time::Instant;

/// Shortest span over which other clients' use is measured: one report's rounding (less than
/// one unit) over a longer span is noise, not use.
const SHARE_WINDOW: Duration = Duration::from_secs(2);
/// Weight of the newest window in the use rates.
const SHARE_SMOOTHING: f64 = 0.5;
/// Other clients' use below this fraction of the rate is rounding noise.
const FOREIGN_NOISE: f64 = 0.05;
/// Never count on less than this share of the refill.
const MIN_SHARE: f64 = 0.1;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// The limit per minute this bucket mirrors.
    limit_per_minute: f64,
    /// Most units the bucket holds (the burst).
    capacity: f64,
    /// Units added per second (for the whole key).
    rate: f64,
    level: f64,
    updated: Instant,
    /// Units withheld until the server confirms them (see the module docs).
    held: f64,
    /// Our fraction of the key's use; the refill counted on is `rate * share`.
    share: f64,
    /// The last report used to measure other clients' use: when, and the server's level.
    anchor: Option<(Instant, f64)>,
    /// What we charged since `anchor`, net of refunds.
    own_since_anchor: f64,
    own_rate: f64,
    foreign_rate: f64,
}

/// How a server reports a level: `remaining` is the level rounded down to a whole unit, or
/// rounded to the nearest `quantum` (Anthropic's token counts, to the nearest thousand).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reported {
    pub remaining: u64,
    /// The true level is in `[low, high)`.
    pub low: f64,
    pub high: f64,
}

impl Reported {
    /// The value rounded down to a whole unit (requests; exact token counts).
    pub fn floor(remaining: u64) -> Self {
        Reported {
            remaining,
            low: remaining as f64,
            high: remaining as f64 + 1.0,
        }
    }

    /// The value rounded to the nearest `quantum`.
    pub fn nearest(remaining: u64, quantum: f64) -> Self {
        Reported {
            remaining,
            low: (remaining as f64 - quantum / 2.0).max(0.0),
            high: remaining as f64 + quantum / 2.0,
        }
    }

    fn middle(&self) -> f64 {
        (self.low + self.high) / 2.0
    }
}

impl Bucket {
    /// A bucket mirroring a configured `limit_per_minute`, refilled at `(1 - headroom)` of the
    /// limit's rate, with a burst of `burst_fraction` of the limit, starting full.
    pub fn new(limit_per_minute: u64, headroom: f64, burst_fraction: f64, now: Instant) -> Self {
        let limit = limit_per_minute.max(1) as f64;
        let capacity = (limit * burst_fraction.clamp(0.0, 1.0)).max(1.0);
        Bucket {
            limit_per_minute: limit,
            capacity,
            rate: limit / 60.0 * (1.0 - headroom.clamp(0.0, 0.5)),
            level: capacity,
            updated: now,
            held: 0.0,
            share: 1.0,
            anchor: None,
            own_since_anchor: 0.0,
            own_rate: 0.0,
            foreign_rate: 0.0,
        }
    }

    /// A bucket for a limit the server reported: refilled at exactly limit/60 per second,
    /// starting at what the server reported (full when it did not say), of which half is held
    /// back until the next report confirms it.
    pub fn learned(limit_per_minute: u64, reported: Option<Reported>, now: Instant) -> Self {
        let mut bucket = Bucket::new(limit_per_minute, 0.0, 1.0, now);
        let level = reported.map_or(bucket.capacity, |r| r.low.min(bucket.capacity));
        bucket.held = level / 2.0;
        bucket.level = level - bucket.held;
        bucket.anchor = reported.map(|r| (now, r.middle()));
        bucket
    }

    pub fn limit_per_minute(&self) -> u64 {
        self.limit_per_minute as u64
    }

    /// Units added per second for the whole key.
    pub fn rate_per_second(&self) -> f64 {
        self.rate
    }

    /// Our fraction of the key's use (1.0 when no other client spends from it).
    pub fn share(&self) -> f64 {
        self.share
    }

    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        let top = self.capacity - self.held;
        if self.level < top {
            self.level = (self.level + elapsed * self.rate * self.share).min(top);
        }
    }

    /// The cost that must be available to admit `cost`: a request bigger than the whole
    /// bucket is admitted when the bucket is full, rather than never.
    fn needed(&self, cost: f64) -> f64 {
        cost.min(self.capacity - self.held)
    }

    /// How long until `cost` can be admitted (zero when it can be now).
    pub fn wait_for(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let missing = self.needed(cost) - self.level;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            // Round up to the next millisecond so a wake-up never lands just short.
            Duration::from_secs_f64(missing / (self.rate * self.share) + 0.001)
        }
    }

    /// Take `cost` (the caller checked `wait_for` is zero).
    pub fn charge(&mut self, cost: f64, now: Instant) {
        self.refill(now);
        self.level -= cost;
        self.own_since_anchor += cost;
    }

    /// Correct an earlier charge: positive `delta` gives units back, negative takes more.
    pub fn adjust(&mut self, delta: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + delta).min(self.capacity - self.held);
        self.own_since_anchor -= delta;
    }

    /// Take what the server reported into account. The level is only ever lowered, never
    /// raised and never re-rated: when our share of the server's level is below what we
    /// count on, the level drops to the bottom of what the report allows; otherwise our
    /// accounting stands (and a held-back part is released, confirmed). A learned bucket
    /// also measures other clients' use (see the module docs). Returns whether it lowered.
    pub fn sync(&mut self, reported: Reported, learned: bool, now: Instant) -> bool {
        self.refill(now);
        if learned {
            self.measure_others(reported, now);
        }
        if self.level + self.held > self.share * reported.high {
            self.level = self.share * reported.low;
            self.held = 0.0;
            true
        } else {
            self.level += self.held;
            self.held = 0.0;
            false
        }
    }

    fn measure_others(&mut self, reported: Reported, now: Instant) {
        let server = reported.middle();
        let Some((since, server_then)) = self.anchor else {
            self.anchor = Some((now, server));
            self.own_since_anchor = 0.0;
            return;
        };
        let span = now.saturating_duration_since(since);
        if span < SHARE_WINDOW {
            return;
        }
        let seconds = span.as_secs_f64();
        let expected =
            (server_then + self.rate * seconds).min(self.capacity) - self.own_since_anchor;
        let foreign = (expected - server) / seconds;
        let own = self.own_since_anchor / seconds;
        self.foreign_rate += SHARE_SMOOTHING * (foreign - self.foreign_rate);
        self.own_rate += SHARE_SMOOTHING * (own - self.own_rate);
        self.anchor = Some((now, server));
        self.own_since_anchor = 0.0;
        self.share = if self.foreign_rate <= FOREIGN_NOISE * self.rate {
            1.0
        } else {
            let own = self.own_rate.max(0.0);
            (own / (own + self.foreign_rate)).clamp(MIN_SHARE, 1.0)
        };
    }

    /// Adopt a limit the server reported, keeping the current level.
    pub fn set_limit(&mut self, limit_per_minute: u64, headroom: f64, burst_fraction: f64) {
        let limit = limit_per_minute.max(1) as f64;
        if (limit - self.limit_per_minute).abs() < 0.5 {
            return;
        }
        self.limit_per_minute = limit;
        self.capacity = (limit * burst_fraction.clamp(0.0, 1.0)).max(1.0);
        self.rate = limit / 60.0 * (1.0 - headroom.clamp(0.0, 0.5));
        self.held = self.held.min(self.capacity);
        self.level = self.level.min(self.capacity - self.held);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn refills_continuously_up_to_capacity() {
        let start = Instant::now();
        let mut bucket = Bucket::new(600, 0.0, 1.0, start);
        assert_eq!(bucket.level(start), 600.0);
        bucket.charge(600.0, start);
        assert_eq!(bucket.wait_for(1.0, start), Duration::from_secs_f64(0.101));
        let later = start + Duration::from_secs(3);
        assert!((bucket.level(later) - 30.0).abs() < 1e-9);
        let much_later = start + Duration::from_secs(3600);
        assert_eq!(bucket.level(much_later), 600.0);
    }

    #[test]
    fn corrections_refund_and_charge() {
        let now = Instant::now();
        let mut bucket = Bucket::new(1000, 0.0, 1.0, now);
        bucket.charge(800.0, now);
        bucket.adjust(300.0, now);
        assert_eq!(bucket.level(now), 500.0);
        bucket.adjust(-700.0, now);
        assert_eq!(bucket.level(now), -200.0);
        bucket.adjust(5000.0, now);
        assert_eq!(bucket.level(now), 1000.0);
    }

    #[test]
    fn oversized_costs_wait_for_a_full_bucket() {
        let now = Instant::now();
        let mut bucket = Bucket::new(100, 0.0, 1.0, now);
        assert_eq!(bucket.wait_for(250.0, now), Duration::ZERO);
        bucket.charge(250.0, now);
        assert!(bucket.wait_for(250.0, now) > Duration::from_secs(60));
    }

    #[test]
    fn server_reports_only_lower_the_level() {
        let now = Instant::now();
        let mut bucket = Bucket::new(600, 0.0, 1.0, now);
        assert!(!bucket.sync(Reported::floor(700), false, now));
        assert_eq!(bucket.level(now), 600.0);
        bucket.charge(590.0, now);
        // We think 10 are left; the server's 10 (really 10 to 11) agrees: nothing changes.
        assert!(!bucket.sync(Reported::floor(10), false, now));
        assert_eq!(bucket.level(now), 10.0);
        // The server shows less than we count on: down to the least the report allows.
        assert!(bucket.sync(Reported::floor(3), false, now));
        assert_eq!(bucket.level(now), 3.0);
        // A report of more room never raises it.
        assert!(!bucket.sync(Reported::floor(300), false, now));
        assert_eq!(bucket.level(now), 3.0);
    }

    #[test]
    fn a_rounded_report_lowers_only_beyond_its_rounding() {
        let now = Instant::now();
        let mut bucket = Bucket::new(100_000, 0.0, 1.0, now);
        bucket.charge(90_600.0, now);
        assert!(!bucket.sync(Reported::nearest(9_000, 1000.0), false, now));
        assert!(bucket.sync(Reported::nearest(8_000, 1000.0), false, now));
        assert_eq!(bucket.level(now), 7_500.0);
    }

    #[test]
    fn a_learned_bucket_refills_at_the_limit_and_holds_half_until_confirmed() {
        let start = Instant::now();
        let mut bucket = Bucket::learned(600, Some(Reported::floor(599)), start);
        assert_eq!(bucket.rate_per_second(), 10.0);
        assert_eq!(bucket.level(start), 299.5);
        bucket.charge(299.0, start);
        // Half a second later the server saw our 299 and 5 more units of refill.
        let later = start + Duration::from_millis(500);
        assert!(!bucket.sync(Reported::floor(305), true, later));
        assert!((bucket.level(later) - 305.0).abs() < 1e-9);
        // Ten seconds at exactly 10 a second.
        assert!((bucket.level(later + Duration::from_secs(10)) - 405.0).abs() < 1e-9);
    }

    #[test]
    fn another_client_on_the_key_shrinks_our_share_of_the_refill() {
        let start = Instant::now();
        let mut bucket = Bucket::learned(600, Some(Reported::floor(0)), start);
        let mut now = start;
        let mut server = 0.0_f64;
        // Twenty seconds in which the other client takes 5 a second whenever there is room.
        for _ in 0..200 {
            now += Duration::from_millis(100);
            server += 1.0;
            let theirs = server.min(0.5);
            server -= theirs;
            let ours = bucket.level(now).max(0.0).floor().min(server.floor());
            bucket.charge(ours, now);
            server -= ours;
            bucket.sync(Reported::floor(server.floor() as u64), true, now);
        }
        let share = bucket.share();
        assert!((0.3..0.7).contains(&share), "share {share}");
    }

    #[test]
    fn headroom_slows_the_refill() {
        let now = Instant::now();
        let bucket = Bucket::new(600, 0.05, 1.0, now);
        assert!((bucket.rate_per_second() - 9.5).abs() < 1e-9);
    }
}
