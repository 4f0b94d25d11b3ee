//! What the engine's process sets up for itself once, at the start of `main`, while it is
//! still single-threaded: room for a fleet's file descriptors.
//!
//! A fleet of 1,000 workers holds 1,000 sockets at once, plus files, pipes and the run store.
//! Two kernel defaults get in the way:
//!
//! - **The soft open-file limit** is often 1,024, below what such a fleet needs. It is raised
//!   towards the hard limit (never lowered).
//! - **The descriptor table** starts with 64 slots and doubles whenever a descriptor beyond it
//!   is opened. In a process with several threads each doubling first waits for an RCU grace
//!   period, and meanwhile no thread of the process can open anything: on a 2-core VM we
//!   measured 7–14 ms per doubling, five times over while a 1,000-agent fleet connects. A
//!   single-threaded process grows its table without that wait, so it is grown here, once,
//!   by duplicating a descriptor onto a high number and closing it (the table never shrinks).

use std::io;
use std::os::fd::AsFd;

use crate::sandbox::sys;

/// The soft open-file limit is raised to at most this (or the hard limit, if lower).
pub const OPEN_FILE_LIMIT_TARGET: u64 = 65_536;
/// The descriptor table is grown to hold at least this many (or the soft limit, if lower).
pub const DESCRIPTOR_TABLE_TARGET: u64 = 8_192;

/// What [`prepare_descriptors`] left in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptors {
    /// The soft open-file limit now in force.
    pub soft_limit: u64,
    /// Descriptors the table holds without growing again (at least this many).
    pub table: u64,
}

/// Raise the soft open-file limit and grow the descriptor table (see the module docs). Call
/// before any thread is started: afterwards it still works, but the growth pays the wait it
/// is meant to avoid.
pub fn prepare_descriptors() -> io::Result<Descriptors> {
    let (soft, hard) = sys::open_file_limit()?;
    let wanted = OPEN_FILE_LIMIT_TARGET.min(hard);
    let soft_limit = if soft < wanted {
        sys::set_open_file_soft_limit(wanted, hard)?;
        wanted
    } else {
        soft
    };
    let table = DESCRIPTOR_TABLE_TARGET.min(soft_limit);
    let highest = i32::try_from(table.saturating_sub(1)).unwrap_or(i32::MAX);
    let probe = std::fs::File::open("/dev/null")?;
    // Dropped at once: only the table's growth is wanted.
    drop(sys::dup_at_least(probe.as_fd(), highest)?);
    Ok(Descriptors { soft_limit, table })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    /// The descriptor table's current size (`FDSize` in `/proc/self/status`).
    fn table_size() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status
            .lines()
            .find_map(|line| line.strip_prefix("FDSize:"))
            .unwrap();
        line.trim().parse().unwrap()
    }

    #[test]
    fn the_descriptor_table_is_grown_up_front() {
        let prepared = prepare_descriptors().unwrap();
        assert!(prepared.soft_limit >= prepared.table);
        assert!(table_size() >= prepared.table, "{}", table_size());
    }
}
