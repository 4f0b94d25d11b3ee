//! This process's own resource use (CPU time and peak resident memory), for benchmarks.
//!
//! Children (such as a simulator started by a benchmark) are not included.

use std::time::Duration;

/// CPU time and peak RSS of this process so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResourceUsage {
    pub user_ms: u64,
    pub system_ms: u64,
    pub peak_rss_kib: u64,
}

impl ResourceUsage {
    pub fn cpu(&self) -> Duration {
        Duration::from_millis(self.user_ms + self.system_ms)
    }
}

/// Read `getrusage(RUSAGE_SELF)`. Returns zeros if the call fails.
#[allow(unsafe_code)]
pub fn current() -> ResourceUsage {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointer we pass, which points to
    // properly sized and aligned storage; we read it only when the call reports success.
    let status = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if status != 0 {
        return ResourceUsage::default();
    }
    // SAFETY: getrusage returned 0, so the struct is initialised (and it was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let millis = |tv: libc::timeval| (tv.tv_sec as u64) * 1000 + (tv.tv_usec as u64) / 1000;
    ResourceUsage {
        user_ms: millis(usage.ru_utime),
        system_ms: millis(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
    }
}
