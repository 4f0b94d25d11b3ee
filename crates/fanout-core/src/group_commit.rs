//! Group commit for the writer threads that sync to disk: the run store's SQLite writer and an
//! item run's settlement journal.
//!
//! Both threads write whatever is queued and then sync once. Under a steady stream of records
//! (a thousand workers starting or finishing over a few hundred milliseconds) that alone
//! degenerates into one sync per record: each sync is quick enough that the next record
//! arrives alone. [`GroupCommit`] adds the missing pause: a writer that is busy — its last sync
//! ended only a moment before the next record arrived — waits a short window before taking
//! what is queued, so one sync covers everything that arrived meanwhile. An idle writer syncs
//! at once, so a lone record (a run's start, a checkpoint) waits for one sync and no more.
//!
//! The window is small next to what waits on these syncs: a worker's start row is written
//! while its model call is in flight, and a model call takes hundreds of milliseconds.

use std::time::{Duration, Instant};

/// When to wait for more records before a sync (policy as data: see [`GroupCommit::DEFAULT`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommitPolicy {
    /// How long a busy writer waits for company before it writes and syncs.
    pub window: Duration,
    /// A writer whose last sync ended less than this before the next record arrived is busy.
    pub busy_within: Duration,
}

/// The state a writer thread keeps between syncs.
#[derive(Debug)]
pub struct GroupCommit {
    policy: GroupCommitPolicy,
    last_sync: Option<Instant>,
}

impl GroupCommit {
    /// 2 ms of gathering once a sync has ended within the last 10 ms.
    pub const DEFAULT: GroupCommitPolicy = GroupCommitPolicy {
        window: Duration::from_millis(2),
        busy_within: Duration::from_millis(10),
    };

    pub fn new(policy: GroupCommitPolicy) -> GroupCommit {
        GroupCommit {
            policy,
            last_sync: None,
        }
    }

    /// Whether the writer, holding the first record of a new batch that arrived at `now`,
    /// should wait [`GroupCommitPolicy::window`] before taking the rest of the queue.
    pub fn should_gather(&self, now: Instant) -> bool {
        !self.policy.window.is_zero()
            && self
                .last_sync
                .is_some_and(|last| now.saturating_duration_since(last) < self.policy.busy_within)
    }

    /// Wait the window (call on the writer thread, only when [`GroupCommit::should_gather`]).
    pub fn gather(&self) {
        std::thread::sleep(self.policy.window);
    }

    /// Note that a sync just ended.
    pub fn synced(&mut self, now: Instant) {
        self.last_sync = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_writer_that_synced_recently_waits() {
        let mut group = GroupCommit::new(GroupCommit::DEFAULT);
        let start = Instant::now();
        // Nothing synced yet: the first record is written at once.
        assert!(!group.should_gather(start));
        group.synced(start);
        assert!(group.should_gather(start + Duration::from_millis(3)));
        // A record arriving after a quiet spell is written at once.
        assert!(!group.should_gather(start + Duration::from_millis(10)));
        assert!(!group.should_gather(start + Duration::from_secs(1)));
        // A zero window turns gathering off.
        let mut never = GroupCommit::new(GroupCommitPolicy {
            window: Duration::ZERO,
            ..GroupCommit::DEFAULT
        });
        never.synced(start);
        assert!(!never.should_gather(start));
    }
}
