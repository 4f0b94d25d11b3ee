//! The run store as a fleet's [`SharedBucket`]: every worker's requests taken from one
//! `rate_buckets` row per limit, so a fleet of workers stays under the workflow's
//! `rate_limits.requests_per_minute` together, not each on its own.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use crate::governor::shared::SharedBucket;
use crate::store::Store;

/// One limit in the store: `capacity` requests at most, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct StoreBucket {
    store: Store,
    name: String,
    capacity: f64,
    per_second: f64,
}

impl StoreBucket {
    /// The shared bucket of a fleet on `provider` under a requests-per-minute limit of `rpm`:
    /// one row per model API and limit, whichever run or worker takes from it.
    pub fn for_requests(store: Store, provider: crate::config::Provider, rpm: u64) -> StoreBucket {
        let name = format!("{provider:?}:requests_per_minute:{rpm}").to_lowercase();
        StoreBucket::requests_per_minute(store, name, rpm)
    }

    /// A requests-per-minute limit named `name`: refilled at `rpm / 60` a second, holding at
    /// most one second's worth (so a fleet that was idle does not burst past the limit).
    pub fn requests_per_minute(store: Store, name: String, rpm: u64) -> StoreBucket {
        let per_second = rpm as f64 / 60.0;
        StoreBucket {
            store,
            name,
            capacity: per_second.max(1.0),
            per_second,
        }
    }
}

impl SharedBucket for StoreBucket {
    fn take(&self, requests: u32) -> Pin<Box<dyn Future<Output = Duration> + Send + '_>> {
        Box::pin(async move {
            self.store
                .take_from_bucket(
                    &self.name,
                    self.capacity,
                    self.per_second,
                    f64::from(requests),
                    SystemTime::now(),
                )
                .await
                // Unreachable store: the process's own governor still holds it to the limit.
                .unwrap_or(Duration::ZERO)
        })
    }
}
