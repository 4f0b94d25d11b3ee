//! One live run per repository at a time.
//!
//! [`RepoLock`] is an exclusive `flock` on `<repo>/.fanout/live.lock`, taken before a live run
//! (or a resume, or a rollback) plans or touches anything, and held until it ends. The kernel
//! drops the lock when the process dies, even on `kill -9`, so a crash never leaves a stale
//! lock behind. The file's contents name the holder (run id, process id, what it is doing) so
//! the run that is refused can say who holds the repository; they are informational only:
//! the lock is the `flock`, never the text.
//!
//! [`RunLock`] is the same for one run's directory (`.fanout/runs/<run_id>/run.lock`): item
//! runs, which need no repository, take only that one.
//!
//! The engine ([`super::engine`]) takes a [`RepoLock`] in its inputs and refuses one for
//! another repository, so no caller of the library can start a live run without holding it.
//! Dry runs take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::ids::RunId;

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{what} is in use by another fanout process: {holder} (lock {path})")]
    Held {
        what: String,
        /// Who holds it, as it described itself: `run <id> (pid <n>, <doing>)`.
        holder: String,
        path: PathBuf,
    },
    #[error("cannot open the lock file {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An exclusive lock on a repository's live runs; released when dropped.
#[derive(Debug)]
pub struct RepoLock {
    inner: Held,
    repo: PathBuf,
}

/// An exclusive lock on one run's directory; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    _inner: Held,
}

#[derive(Debug)]
struct Held {
    file: File,
}

impl RepoLock {
    /// Take the repository's lock, or say at once who holds it. `doing` describes the holder
    /// until [`RepoLock::claim`] names its run ("planning", "rollback of run X").
    pub fn acquire(repo: &Path, doing: &str) -> Result<RepoLock, LockError> {
        let dir = crate::layout::ensure(repo).map_err(|error| LockError::Open {
            path: error.path,
            source: error.io,
        })?;
        let inner = Held::take(
            dir.join("live.lock"),
            format!("the repository {}", repo.display()),
        )?;
        let lock = RepoLock {
            inner,
            repo: repo.to_path_buf(),
        };
        lock.inner
            .describe(&format!("{doing} (pid {})", std::process::id()));
        Ok(lock)
    }

    /// Name the run this lock is held for, for whoever is refused next.
    pub fn claim(&self, run_id: &RunId) {
        self.inner
            .describe(&format!("run {run_id} (pid {})", std::process::id()));
    }

    /// The repository it locks, as given to [`RepoLock::acquire`].
    pub fn repo(&self) -> &Path {
        &self.repo
    }

    /// Whether this lock covers `repo` (same directory once both are resolved).
    pub fn covers(&self, repo: &Path) -> bool {
        match (self.repo.canonicalize(), repo.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.repo == repo,
        }
    }
}

impl RunLock {
    /// Take `<root>/.fanout/runs/<run_id>/run.lock`.
    pub fn acquire(root: &Path, run_id: &RunId) -> Result<RunLock, LockError> {
        let dir = crate::layout::run_dir(root, run_id);
        crate::layout::ensure_dir(root, &dir).map_err(|error| LockError::Open {
            path: error.path,
            source: error.io,
        })?;
        let inner = Held::take(dir.join("run.lock"), format!("run {run_id}"))?;
        inner.describe(&format!("run {run_id} (pid {})", std::process::id()));
        Ok(RunLock { _inner: inner })
    }
}

impl Held {
    fn take(path: PathBuf, what: String) -> Result<Held, LockError> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| LockError::Open {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Held { file }),
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = text.trim();
                Err(LockError::Held {
                    what,
                    holder: if holder.is_empty() {
                        "a process that has not said which run it is".into()
                    } else {
                        holder.to_owned()
                    },
                    path,
                })
            }
            Err(TryLockError::Error(source)) => Err(LockError::Open { path, source }),
        }
    }

    /// Replace the holder's description. Best effort: the lock is the `flock`, not the text.
    fn describe(&self, text: &str) {
        let mut file = &self.file;
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{text}\n").as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_run_and_let_in_after_it() {
        let repo = tempfile::tempdir().unwrap();
        let first = RepoLock::acquire(repo.path(), "planning").unwrap();
        first.claim(&"20261204T000000Z-abcdef".into());
        match RepoLock::acquire(repo.path(), "planning") {
            Err(LockError::Held { holder, .. }) => {
                assert!(
                    holder.starts_with("run 20261204T000000Z-abcdef (pid "),
                    "{holder}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(first.covers(repo.path()));
        assert!(!first.covers(&repo.path().join(".fanout")));
        drop(first);
        RepoLock::acquire(repo.path(), "planning").unwrap();
    }
}
