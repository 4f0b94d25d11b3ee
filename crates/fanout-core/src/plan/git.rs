//! The live-run precondition: the repository is under git and the paths the plan would touch
//! have no uncommitted changes, so every change an agent makes can be told apart and undone.
//!
//! Runs the hardened host-side `git` ([`crate::git::hardened`]: no fsmonitor, hooks,
//! pager or external diff from the repository's config) (status with `-z`, untracked files included, our `.fanout/` excluded). Changes
//! outside every agent's scope do not block a run.

use std::path::{Path, PathBuf};

use crate::git::hardened;

/// Why a live run may not start.
#[derive(Debug, thiserror::Error)]
pub enum GitCheckError {
    #[error(
        "{} is not inside a git repository; a live run needs one to checkpoint and roll back (run `git init` and commit, or work on a copy under git)",
        .root.display()
    )]
    NotARepository { root: PathBuf },
    #[error(
        "{} path(s) the plan would touch have uncommitted changes: {}; commit or stash them (`git stash --include-untracked`) and run again",
        .paths.len(),
        .paths.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    )]
    Dirty { root: PathBuf, paths: Vec<String> },
    #[error("cannot run git in {}: {message}", .root.display())]
    Git { root: PathBuf, message: String },
}

/// Refuse unless `root` is in a git work tree and no changed path satisfies `touches`.
/// Paths given to `touches` are relative to `root`, `/`-separated.
pub fn ensure_clean(root: &Path, touches: impl Fn(&str) -> bool) -> Result<(), GitCheckError> {
    check_clean(root, true, touches)
}

/// [`ensure_clean`] over tracked files only: changes to files git tracks (staged or not)
/// count, untracked files do not (a new `fanout.yaml`, notes, build output). For the check a
/// live run can make before it has a plan; the plan's own files are checked after, untracked
/// ones included.
pub fn ensure_tracked_clean(
    root: &Path,
    touches: impl Fn(&str) -> bool,
) -> Result<(), GitCheckError> {
    check_clean(root, false, touches)
}

fn check_clean(
    root: &Path,
    untracked: bool,
    touches: impl Fn(&str) -> bool,
) -> Result<(), GitCheckError> {
    let git_error = |message: String| GitCheckError::Git {
        root: root.to_path_buf(),
        message,
    };
    let inside = hardened(root, true)
        .args(["rev-parse", "--is-inside-work-tree"])
        .output()
        .map_err(|err| git_error(err.to_string()))?;
    if !inside.status.success() || String::from_utf8_lossy(&inside.stdout).trim() != "true" {
        return Err(GitCheckError::NotARepository {
            root: root.to_path_buf(),
        });
    }
    // `--relative` paths would need a newer git; `-C root` plus `:(top)`-free pathspec `.`
    // reports paths relative to the repository top, so ask for the prefix to strip.
    let prefix = hardened(root, true)
        .args(["rev-parse", "--show-prefix"])
        .output()
        .map_err(|err| git_error(err.to_string()))?;
    let prefix = String::from_utf8_lossy(&prefix.stdout).trim().to_owned();
    let status = hardened(root, true)
        .args([
            "status",
            "--porcelain=v1",
            "-z",
            if untracked {
                "--untracked-files=all"
            } else {
                "--untracked-files=no"
            },
            "--",
            ".",
            ":(exclude).fanout",
        ])
        .output()
        .map_err(|err| git_error(err.to_string()))?;
    if !status.status.success() {
        return Err(git_error(
            String::from_utf8_lossy(&status.stderr).trim().to_owned(),
        ));
    }
    let mut dirty = Vec::new();
    let mut records = status.stdout.split(|&b| b == 0);
    while let Some(record) = records.next() {
        if record.len() < 4 {
            continue;
        }
        let code = &record[..2];
        let path = String::from_utf8_lossy(&record[3..]).into_owned();
        // Renames and copies carry the source path in the next record.
        if code[0] == b'R' || code[0] == b'C' {
            records.next();
        }
        let relative = path.strip_prefix(&prefix).unwrap_or(&path).to_owned();
        if touches(&relative) {
            dirty.push(relative);
        }
    }
    if dirty.is_empty() {
        Ok(())
    } else {
        Err(GitCheckError::Dirty {
            root: root.to_path_buf(),
            paths: dirty,
        })
    }
}
