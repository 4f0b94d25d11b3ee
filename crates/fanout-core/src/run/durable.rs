//! Group durability: agents that need their files on disk share one `syncfs` per filesystem.
//!
//! An agent's edits must be durable before its success row is (a power loss must not leave a
//! "success" whose edits vanished). Doing that with an `fsync` per file and per directory
//! costs every one of 1,000 agents several device flushes, all of them on the same few
//! directories. Instead each agent sends the filesystems it touched to one [`SyncGroup`]
//! worker, which takes every request queued so far, calls `syncfs` once per filesystem and
//! answers them all: a request is answered only by a `syncfs` that began after it arrived, so
//! everything written before the request is covered.
//!
//! `syncfs` writes out all dirty data of the filesystem, so on a disk busy with other work a
//! round takes longer; the cost is shared by every agent in the round.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use crate::sandbox::sys;

/// The filesystems to make durable: one path on each, keyed by device number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncSet {
    by_device: BTreeMap<u64, PathBuf>,
}

impl SyncSet {
    /// Note the filesystem that holds `path` (whose metadata is `meta`).
    pub fn note(&mut self, path: &Path, meta: &std::fs::Metadata) {
        self.by_device
            .entry(meta.dev())
            .or_insert_with(|| path.to_path_buf());
    }

    /// Note the filesystem that holds `path`, reading its metadata.
    pub fn note_path(&mut self, path: &Path) -> std::io::Result<()> {
        let meta = std::fs::symlink_metadata(path)?;
        self.note(path, &meta);
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.by_device.is_empty()
    }

    pub fn len(&self) -> usize {
        self.by_device.len()
    }

    /// Sync every filesystem of the set now, on this thread (one `syncfs` each). Blocking.
    pub fn sync_now(&self) -> Result<(), SyncError> {
        self.by_device
            .values()
            .try_for_each(|path| sync_filesystem(path))
    }

    fn merge(&mut self, other: &SyncSet) {
        for (device, path) in &other.by_device {
            self.by_device
                .entry(*device)
                .or_insert_with(|| path.clone());
        }
    }
}

/// A failed sync round.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    #[error("cannot sync the filesystem of {}: {message}", .path.display())]
    Sync { path: PathBuf, message: String },
    #[error("the sync worker has stopped")]
    Stopped,
}

struct SyncRequest {
    set: SyncSet,
    done: oneshot::Sender<Result<(), SyncError>>,
}

/// Statistics of a group, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Requests answered.
    pub requests: u64,
    /// Rounds (each one `syncfs` per filesystem of the round).
    pub rounds: u64,
    /// `syncfs` calls.
    pub syncs: u64,
}

/// The handle agents use; cheap to clone. The worker thread ends when every handle is gone.
#[derive(Clone)]
pub struct SyncGroup {
    tx: mpsc::UnboundedSender<SyncRequest>,
    stats: std::sync::Arc<std::sync::Mutex<SyncStats>>,
}

impl SyncGroup {
    /// Start the worker thread.
    pub fn start() -> std::io::Result<SyncGroup> {
        let (tx, mut rx) = mpsc::unbounded_channel::<SyncRequest>();
        let stats = std::sync::Arc::new(std::sync::Mutex::new(SyncStats::default()));
        let worker_stats = std::sync::Arc::clone(&stats);
        std::thread::Builder::new()
            .name("fanout-sync".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut round = vec![first];
                    while let Ok(next) = rx.try_recv() {
                        round.push(next);
                    }
                    let mut union = SyncSet::default();
                    for request in &round {
                        union.merge(&request.set);
                    }
                    let mut failed: BTreeMap<u64, SyncError> = BTreeMap::new();
                    for (device, path) in &union.by_device {
                        if let Err(error) = sync_filesystem(path) {
                            failed.insert(*device, error);
                        }
                    }
                    {
                        let mut stats = worker_stats
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        stats.requests += round.len() as u64;
                        stats.rounds += 1;
                        stats.syncs += union.len() as u64;
                    }
                    for request in round {
                        let error = request
                            .set
                            .by_device
                            .keys()
                            .find_map(|device| failed.get(device).cloned());
                        let _ = request.done.send(error.map_or(Ok(()), Err));
                    }
                }
            })?;
        Ok(SyncGroup { tx, stats })
    }

    /// Return once everything written to the filesystems of `set` before this call is durable.
    pub async fn sync(&self, set: SyncSet) -> Result<(), SyncError> {
        if set.is_empty() {
            return Ok(());
        }
        let (done, answer) = oneshot::channel();
        self.tx
            .send(SyncRequest { set, done })
            .map_err(|_| SyncError::Stopped)?;
        answer.await.map_err(|_| SyncError::Stopped)?
    }

    pub fn stats(&self) -> SyncStats {
        *self
            .stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn sync_filesystem(path: &Path) -> Result<(), SyncError> {
    let failed = |error: std::io::Error| SyncError::Sync {
        path: path.to_path_buf(),
        message: error.to_string(),
    };
    let handle = std::fs::File::open(path).map_err(failed)?;
    sys::syncfs(handle.as_fd()).map_err(failed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_share_rounds_and_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let group = SyncGroup::start().unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, b"x").unwrap();
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                let mut set = SyncSet::default();
                set.note_path(&path).unwrap();
                group.sync(set).await
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let stats = group.stats();
        assert_eq!(stats.requests, 200);
        // Every file is on one filesystem: one syncfs per round.
        assert_eq!(stats.syncs, stats.rounds);
        assert!(stats.rounds >= 1 && stats.rounds <= 200);
        assert!(group.sync(SyncSet::default()).await.is_ok());
    }

    #[tokio::test]
    async fn a_vanished_path_fails_only_its_requests() {
        let dir = tempfile::tempdir().unwrap();
        let group = SyncGroup::start().unwrap();
        let mut set = SyncSet::default();
        set.note_path(dir.path()).unwrap();
        // Same device, but the path is gone by the time the round opens it.
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut doomed = SyncSet::default();
        doomed.note_path(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        let error = group.sync(doomed).await.unwrap_err();
        assert!(matches!(error, SyncError::Sync { .. }), "{error}");
        assert!(error.to_string().contains("gone"), "{error}");
        group.sync(set).await.unwrap();
    }
}
