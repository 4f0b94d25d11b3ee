//! Everything fanout keeps inside a repository, under `.fanout/`, and the one way files there are
//! written.
//!
//! ```text
//! <repo>/.fanout/
//!   .gitignore          `*`: none of our files shows up in `git status` or a checkpoint
//!   fanout.db           the run store (SQLite, `crate::store`)
//!   owned-paths         files a run created that are ours, not the user's (`crate::store`)
//!   tmp/                private git indexes of checkpoints (`crate::run::checkpoint`)
//!   runs/<run_id>/      one run: plan.json + plan.sha256, summary.json/.md, the lock,
//!                       pre-images, item outputs and the settlement journal, report.html
//! ```
//!
//! Every path under `.fanout/` is built by a function here; [`ensure`] creates the directory
//! with its ignore file; [`write_atomic`] and [`write_atomic_all`] are the durable atomic write
//! (temporary file beside the target, `fsync`, `rename`): after a crash a file holds its old
//! contents or all of its new ones, never part.
//!
//! This module depends on nothing else in the crate.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::RunId;

/// Our directory inside the repository.
pub const FANOUT_DIR: &str = ".fanout";
/// The run store's database file inside [`FANOUT_DIR`].
pub const DB_FILE: &str = "fanout.db";
/// The list of files runs created that belong to fanout (one relative path per line).
pub const OWNED_PATHS_FILE: &str = "owned-paths";
/// An item run's job record inside its run directory.
pub const JOB_FILE: &str = "job.json";
/// The ignore file's contents: everything under `.fanout/`.
const GITIGNORE: &str = "# fanout's own files; never commit them\n*\n";

/// A file operation under `.fanout/` (or an output file) that failed, and where.
///
/// The I/O error is part of the message (not a separate `source`), so it is said once.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {path}: {io}")]
pub struct LayoutError {
    pub what: &'static str,
    pub path: PathBuf,
    pub io: std::io::Error,
}

fn failed(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |io| LayoutError { what, path, io }
}

/// `<repo>/.fanout`.
pub fn fanout_dir(repo: &Path) -> PathBuf {
    repo.join(FANOUT_DIR)
}

/// `<repo>/.fanout/fanout.db`.
pub fn db_path(repo: &Path) -> PathBuf {
    fanout_dir(repo).join(DB_FILE)
}

/// `<repo>/.fanout/owned-paths`.
pub fn owned_paths_file(repo: &Path) -> PathBuf {
    fanout_dir(repo).join(OWNED_PATHS_FILE)
}

/// `<repo>/.fanout/tmp`: scratch files (checkpoint indexes).
pub fn tmp_dir(repo: &Path) -> PathBuf {
    fanout_dir(repo).join("tmp")
}

/// `<repo>/.fanout/runs`.
pub fn runs_dir(repo: &Path) -> PathBuf {
    fanout_dir(repo).join("runs")
}

/// `<repo>/.fanout/runs/<run_id>`: a run's directory.
pub fn run_dir(repo: &Path, run_id: &RunId) -> PathBuf {
    runs_dir(repo).join(run_id.as_str())
}

/// `<repo>/.fanout/runs/<run_id>/plan.json`: the reviewed plan a run executes.
pub fn plan_file(repo: &Path, run_id: &RunId) -> PathBuf {
    run_dir(repo, run_id).join("plan.json")
}

/// `<repo>/.fanout/runs/<run_id>/planning.json`: what the orchestrator's planning calls used
/// and when, beside the plan they produced.
pub fn planning_file(repo: &Path, run_id: &RunId) -> PathBuf {
    run_dir(repo, run_id).join("planning.json")
}

/// `<repo>/.fanout/runs/<run_id>/job.json`: an item run's job record (its presence is what
/// makes a run directory an item run's; `crate::items::run` writes and reads it).
pub fn job_file(repo: &Path, run_id: &RunId) -> PathBuf {
    run_dir(repo, run_id).join(JOB_FILE)
}

/// `<repo>/.fanout/runs/<run_id>/report.html`: the run's HTML report (`fanout report`).
pub fn report_file(repo: &Path, run_id: &RunId) -> PathBuf {
    run_dir(repo, run_id).join("report.html")
}

/// True for `.fanout` itself and every path under it (repository-relative, `/`-separated).
pub fn is_ours(relative: &[u8]) -> bool {
    relative == FANOUT_DIR.as_bytes()
        || relative
            .strip_prefix(FANOUT_DIR.as_bytes())
            .is_some_and(|rest| rest.first() == Some(&b'/'))
}

/// Create `<repo>/.fanout/` with its ignore file if either is missing; its path.
pub fn ensure(repo: &Path) -> Result<PathBuf, LayoutError> {
    let dir = fanout_dir(repo);
    fs::create_dir_all(&dir).map_err(failed("create", &dir))?;
    let ignore = dir.join(".gitignore");
    let ignores_all =
        fs::read_to_string(&ignore).is_ok_and(|text| text.lines().any(|line| line.trim() == "*"));
    if !ignores_all {
        write_ignore_file(repo, &ignore)?;
    }
    Ok(dir)
}

/// Until `.fanout/.gitignore` exists, anything under `.fanout/` shows in `git status`, so the
/// file must appear whole at once, with no temporary beside it that a kill could leave: it is
/// written in the repository's `.git` directory (same filesystem, never in the work tree) and
/// renamed into place. Without a `.git` directory (not a repository's root), beside it.
fn write_ignore_file(repo: &Path, ignore: &Path) -> Result<(), LayoutError> {
    let git_dir = repo.join(".git");
    let staging = if git_dir.is_dir() {
        git_dir
    } else {
        ignore.parent().unwrap_or(repo).to_path_buf()
    };
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let temp = staging.join(format!("fanout-gitignore-{}-{n}", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&temp).map_err(failed("create", &temp))?;
        file.write_all(GITIGNORE.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(failed("write", &temp))?;
        fs::rename(&temp, ignore).map_err(failed("rename into place", ignore))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

/// Create `dir` (and `.fanout/` with its ignore file, when `dir` is under it).
pub fn ensure_dir(repo: &Path, dir: &Path) -> Result<(), LayoutError> {
    if dir.starts_with(fanout_dir(repo)) {
        ensure(repo)?;
    }
    fs::create_dir_all(dir).map_err(failed("create", dir))
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The temporary name `path` is written under before its rename: hidden, beside it, unique to
/// this process and call.
fn temp_path(path: &Path) -> PathBuf {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Write `bytes` to `path` durably and atomically: a synced temporary file, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    write_atomic_all(&[(path, bytes)])
}

/// Write several files as [`write_atomic`] does, syncing them only once all are written (the
/// device works on every file's data at once instead of one file at a time), then renaming
/// each into place and syncing the directories they are in. A failure leaves no temporary file
/// and no file half-written; files renamed before it stay.
pub fn write_atomic_all(files: &[(&Path, &[u8])]) -> Result<(), LayoutError> {
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let written = (|| {
        let mut opened = Vec::with_capacity(files.len());
        for (path, bytes) in files {
            let temp = temp_path(path);
            // Named by the file the caller asked for; the temporary beside it is ours.
            let mut file = fs::File::create(&temp).map_err(failed("write", path))?;
            temps.push(temp);
            file.write_all(bytes).map_err(failed("write", path))?;
            opened.push((file, *path));
        }
        for (file, path) in opened {
            file.sync_all().map_err(failed("sync", path))?;
        }
        for (temp, (path, _)) in temps.iter().zip(files) {
            fs::rename(temp, path).map_err(failed("rename into place", path))?;
        }
        Ok(())
    })();
    if written.is_err() {
        for temp in &temps {
            let _ = fs::remove_file(temp);
        }
        return written;
    }
    // The renames themselves survive a crash once their directories are synced.
    let mut dirs: Vec<&Path> = files
        .iter()
        .map(|(path, _)| path.parent().unwrap_or_else(|| Path::new(".")))
        .collect();
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)
            .and_then(|handle| handle.sync_all())
            .map_err(failed("sync the directory", dir))?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_ownership() {
        let repo = Path::new("/r");
        assert_eq!(run_dir(repo, &"R1".into()), Path::new("/r/.fanout/runs/R1"));
        assert_eq!(
            plan_file(repo, &"R1".into()),
            Path::new("/r/.fanout/runs/R1/plan.json")
        );
        assert_eq!(db_path(repo), Path::new("/r/.fanout/fanout.db"));
        assert!(is_ours(b".fanout"));
        assert!(is_ours(b".fanout/runs/x"));
        assert!(!is_ours(b".fanoutx"));
        assert!(!is_ours(b"src/.fanout"));
    }

    #[test]
    fn ensure_writes_the_ignore_file_once_and_atomic_writes_leave_no_temporaries() {
        let repo = tempfile::tempdir().unwrap();
        let dir = ensure(repo.path()).unwrap();
        let ignore = std::fs::read_to_string(dir.join(".gitignore")).unwrap();
        assert!(ignore.lines().any(|line| line == "*"), "{ignore}");
        std::fs::write(dir.join(".gitignore"), "*\nkept\n").unwrap();
        ensure(repo.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(".gitignore")).unwrap(),
            "*\nkept\n"
        );
        // In a repository the file is staged in `.git`, and nothing is left there.
        let git_repo = tempfile::tempdir().unwrap();
        std::fs::create_dir(git_repo.path().join(".git")).unwrap();
        ensure(git_repo.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(git_repo.path().join(".fanout/.gitignore")).unwrap(),
            GITIGNORE
        );
        assert_eq!(
            std::fs::read_dir(git_repo.path().join(".git"))
                .unwrap()
                .count(),
            0
        );
        // A write cut short (no `*` line yet) is written again.
        std::fs::write(dir.join(".gitignore"), "# fanout's own fi").unwrap();
        ensure(repo.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(".gitignore")).unwrap(),
            GITIGNORE
        );

        let run = run_dir(repo.path(), &"R1".into());
        ensure_dir(repo.path(), &run).unwrap();
        let (a, b) = (run.join("a.json"), run.join("b.md"));
        write_atomic_all(&[(&a, b"{}\n"), (&b, b"# b\n")]).unwrap();
        write_atomic(&a, b"{\"v\":2}\n").unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), b"{\"v\":2}\n");
        let names: Vec<String> = std::fs::read_dir(&run)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A failure (the directory is gone) reports the path and leaves nothing behind.
        let missing = run.join("nope").join("c.json");
        let error = write_atomic(&missing, b"x").unwrap_err();
        assert!(error.to_string().contains("c.json"), "{error}");
    }
}
