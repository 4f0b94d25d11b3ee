//! A rate limit shared with other processes: [`SharedBucket`], which a fleet consults before
//! each request on top of its own governor, so that many processes together stay under one
//! organisation's limit. The governor owns this process's rate state; a shared bucket owns
//! only the fleet-wide count and lives elsewhere (the run store's `rate_buckets` row, in
//! `crate::distributed`). It sends nothing and never retries.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Requests shared by every process that names the same bucket.
pub trait SharedBucket: Send + Sync + std::fmt::Debug {
    /// Take `requests` now: `Duration::ZERO` when they were taken, else how long until
    /// there may be room (and nothing was taken). A bucket that cannot be reached answers
    /// zero: the process's own governor still holds it to the limit.
    fn take(&self, requests: u32) -> Pin<Box<dyn Future<Output = Duration> + Send + '_>>;
}
