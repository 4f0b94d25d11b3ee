//! A continuously refilling, weighted token bucket that may go into debt.
//!
//! Unlike a plain limiter, a reservation can be corrected after the fact (refunded or charged
//! more) once the response says what it really cost, and the level can be lowered to what the
//! server reports. Time is `tokio::time::Instant`, so tests run on paused time.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Bucket {
    /// The limit per minute this bucket mirrors.
    limit_per_minute: f64,
    /// Most units the bucket holds (the burst).
    capacity: f64,
    /// Units added per second.
    rate: f64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// A bucket mirroring `limit_per_minute`, refilled at `(1 - headroom)` of the limit's rate,
    /// with a burst of `burst_fraction` of the limit, starting full.
    pub fn new(limit_per_minute: u64, headroom: f64, burst_fraction: f64, now: Instant) -> Self {
        let limit = limit_per_minute.max(1) as f64;
        let capacity = (limit * burst_fraction.clamp(0.0, 1.0)).max(1.0);
        Bucket {
            limit_per_minute: limit,
            capacity,
            rate: limit / 60.0 * (1.0 - headroom.clamp(0.0, 0.5)),
            level: capacity,
            updated: now,
        }
    }

    pub fn limit_per_minute(&self) -> u64 {
        self.limit_per_minute as u64
    }

    pub fn rate_per_second(&self) -> f64 {
        self.rate
    }

    pub fn level(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.level
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.updated = now;
        self.level = (self.level + elapsed * self.rate).min(self.capacity);
    }

    /// The cost that must be available to admit `cost`: a request bigger than the whole
    /// bucket is admitted when the bucket is full, rather than never.
    fn needed(&self, cost: f64) -> f64 {
        cost.min(self.capacity)
    }

    /// How long until `cost` can be admitted (zero when it can be now).
    pub fn wait_for(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        let missing = self.needed(cost) - self.level;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            // Round up to the next millisecond so a wake-up never lands just short.
            Duration::from_secs_f64(missing / self.rate + 0.001)
        }
    }

    /// Take `cost` (the caller checked `wait_for` is zero).
    pub fn charge(&mut self, cost: f64, now: Instant) {
        self.refill(now);
        self.level -= cost;
    }

    /// Correct an earlier charge: positive `delta` gives units back, negative takes more.
    pub fn adjust(&mut self, delta: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + delta).min(self.capacity);
    }

    /// Lower the level to what the server reported, allowing for the refill since the server
    /// measured it (`age`) and for its rounding. Never raises the level: our own accounting
    /// is trusted until the server shows less room than we think.
    pub fn sync_remaining(&mut self, remaining: u64, age: Duration, slack: f64, now: Instant) {
        self.refill(now);
        let server_now = remaining as f64 + age.as_secs_f64() * self.rate + slack;
        if server_now < self.level {
            self.level = server_now;
        }
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
        self.level = self.level.min(self.capacity);
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
        bucket.sync_remaining(700, Duration::ZERO, 0.0, now);
        assert_eq!(bucket.level(now), 600.0);
        bucket.sync_remaining(100, Duration::from_secs(1), 0.0, now);
        assert!((bucket.level(now) - 110.0).abs() < 1e-9);
    }

    #[test]
    fn headroom_slows_the_refill() {
        let now = Instant::now();
        let bucket = Bucket::new(600, 0.05, 1.0, now);
        assert!((bucket.rate_per_second() - 9.5).abs() < 1e-9);
    }
}
