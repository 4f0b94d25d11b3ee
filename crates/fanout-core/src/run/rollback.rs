//! Rollback: put the working tree back, byte for byte, as it was at a checkpoint.
//!
//! `fanout rollback RUN_ID [--to N]` restores checkpoint N (default 0, the run's base: the
//! tree before the first agent ran). Contents, the executable bit and symlinks come back;
//! files deleted since come back; files created since are removed (and directories left
//! empty by that). Untouched: HEAD, the branch, the user's index, ignored files, `.git` and
//! `.fanout`. Git never writes a file here: blobs are read with `git cat-file --batch` and
//! written by us (temporary file + rename), so no smudge filter or hook runs.
//!
//! **Refusing to lose work.** Before touching anything we snapshot the current tree (the
//! same way a checkpoint does) and compare it with the run's last checkpoint
//! (`refs/fanout/<run_id>/latest`), with the tree of the last rollback of this run
//! (`refs/fanout/<run_id>/restored`, so rolling back twice, or forward again, needs no force)
//! and with the target itself. Any other tree means someone changed files after the run:
//! [`RollbackError::ChangedSinceRun`] lists them, unless `force` is set — and then the
//! current tree is first saved as `refs/fanout/<run_id>/pre-rollback`, so even a forced
//! rollback can be undone with `git checkout refs/fanout/<run_id>/pre-rollback -- .`.
//! (The end of a run therefore takes a last checkpoint, so `latest` is the final tree.)
//!
//! After writing, the tree is snapshotted again and must equal the target's tree exactly;
//! otherwise [`RollbackError::Incomplete`] names the paths that differ.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Serialize;

use super::checkpoint::{
    CheckpointError, MODE_EXECUTABLE, MODE_GITLINK, MODE_SYMLINK, TreeEntry, commit_tree,
    latest_ref, list_checkpoints, read_tree, run_ref_prefix, snapshot, validate_run_id,
};
use crate::git::{Git, GitError};
use crate::ids::RunId;

/// What to roll back to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollbackOptions {
    /// The checkpoint seq; `None` is the run's base (0).
    pub to: Option<u64>,
    /// Roll back even if files changed after the run's last checkpoint.
    pub force: bool,
}

/// What a rollback did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackReport {
    pub run_id: RunId,
    pub target_seq: u64,
    pub target_commit: String,
    /// Files written (new content, new file, or symlink).
    pub written: Vec<String>,
    /// Files whose executable bit alone changed.
    pub chmodded: Vec<String>,
    /// Files removed.
    pub removed: Vec<String>,
    pub unchanged: usize,
    /// With `force`, where the tree as it was before the rollback was saved.
    pub saved_as: Option<String>,
}

/// A rollback failure.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(
        "run {run_id} has no checkpoints in this repository (no refs under refs/fanout/{run_id}/)"
    )]
    NoCheckpoints { run_id: RunId },
    #[error("run {run_id} has no checkpoint {seq}; it has {}", list(.available))]
    UnknownCheckpoint {
        run_id: RunId,
        seq: u64,
        available: Vec<u64>,
    },
    #[error(
        "{} file(s) changed after run {run_id}'s last checkpoint ({latest_seq}): {}; rolling back would discard them — pass --force to roll back anyway (the current tree is saved first)",
        .paths.len(),
        .paths.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    )]
    ChangedSinceRun {
        run_id: RunId,
        latest_seq: u64,
        paths: Vec<String>,
    },
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "rollback of run {run_id} left {} path(s) different from checkpoint {seq}: {}",
        .paths.len(),
        .paths.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    )]
    Incomplete {
        run_id: RunId,
        seq: u64,
        paths: Vec<String>,
    },
}

fn list(seqs: &[u64]) -> String {
    seqs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn display(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Paths whose entries differ between two trees.
fn differing(a: &BTreeMap<Vec<u8>, TreeEntry>, b: &BTreeMap<Vec<u8>, TreeEntry>) -> Vec<String> {
    let mut paths: Vec<String> = a
        .iter()
        .filter(|(path, entry)| b.get(*path) != Some(entry))
        .map(|(path, _)| display(path))
        .chain(
            b.keys()
                .filter(|path| !a.contains_key(*path))
                .map(|path| display(path)),
        )
        .collect();
    paths.sort();
    paths
}

/// Restore the working tree of the repository containing `repo` to a checkpoint of `run_id`.
pub fn rollback(
    repo: &Path,
    run_id: &RunId,
    options: &RollbackOptions,
) -> Result<RollbackReport, RollbackError> {
    validate_run_id(run_id)?;
    let git = Git::open(repo)?;
    let checkpoints = list_checkpoints(&git, run_id)?;
    let (latest_seq, _) =
        checkpoints
            .last_key_value()
            .ok_or_else(|| RollbackError::NoCheckpoints {
                run_id: run_id.to_owned(),
            })?;
    let latest_seq = *latest_seq;
    let seq = options.to.unwrap_or(0);
    let target_commit =
        checkpoints
            .get(&seq)
            .cloned()
            .ok_or_else(|| RollbackError::UnknownCheckpoint {
                run_id: run_id.to_owned(),
                seq,
                available: checkpoints.keys().copied().collect(),
            })?;
    let target_tree = git.tree_of(&target_commit)?;
    let latest_commit = git
        .resolve_commit(&latest_ref(run_id))?
        .unwrap_or_else(|| checkpoints[&latest_seq].clone());
    let restored_ref = format!("{}restored", run_ref_prefix(run_id));

    let current = snapshot(&git)?;
    let mut accepted = vec![git.tree_of(&latest_commit)?, target_tree.clone()];
    if let Some(restored) = git.resolve_commit(&restored_ref)? {
        accepted.push(git.tree_of(&restored)?);
    }
    let mut saved_as = None;
    if !accepted.contains(&current.tree) {
        if !options.force {
            let latest = read_tree(&git, &latest_commit)?;
            return Err(RollbackError::ChangedSinceRun {
                run_id: run_id.to_owned(),
                latest_seq,
                paths: differing(&latest, &current.entries),
            });
        }
        let message = format!("fanout: working tree of run {run_id} before a forced rollback\n");
        let commit = commit_tree(&git, &current.tree, Some(&latest_commit), &message)?;
        let name = format!("{}pre-rollback", run_ref_prefix(run_id));
        update_ref(&git, &name, &commit)?;
        saved_as = Some(name);
    }

    let target = read_tree(&git, &target_commit)?;
    let root = git.root().to_path_buf();
    let mut report = RollbackReport {
        run_id: run_id.to_owned(),
        target_seq: seq,
        target_commit: target_commit.clone(),
        written: Vec::new(),
        chmodded: Vec::new(),
        removed: Vec::new(),
        unchanged: 0,
        saved_as,
    };

    // 1. Remove what the target does not have (files first, then emptied directories), so a
    //    directory can become a file and the other way round.
    let mut emptied: Vec<PathBuf> = Vec::new();
    for path in current.entries.keys().filter(|p| !target.contains_key(*p)) {
        let full = root.join(OsStr::from_bytes(path));
        if current.entries[path].mode == MODE_GITLINK {
            continue; // a submodule's checkout is not ours to delete
        }
        remove_file(&full)?;
        report.removed.push(display(path));
        if let Some(parent) = full.parent() {
            emptied.push(parent.to_path_buf());
        }
    }
    emptied.sort();
    emptied.dedup();
    // Deepest first so a chain of emptied directories goes entirely.
    emptied.sort_by_key(|dir| std::cmp::Reverse(dir.components().count()));
    for dir in emptied {
        let mut dir = dir.as_path();
        while dir != root && dir.starts_with(&root) {
            // Fails (and stops) at the first directory that is not empty: that is the point.
            if std::fs::remove_dir(dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(parent) => dir = parent,
                None => break,
            }
        }
    }

    // 2. Decide what to write.
    let mut to_write: Vec<(&Vec<u8>, &TreeEntry)> = Vec::new();
    for (path, entry) in &target {
        let full = root.join(OsStr::from_bytes(path));
        match current.entries.get(path) {
            Some(now) if now == entry => report.unchanged += 1,
            Some(now)
                if now.oid == entry.oid
                    && now.mode != MODE_SYMLINK
                    && entry.mode != MODE_SYMLINK
                    && now.mode != MODE_GITLINK
                    && entry.mode != MODE_GITLINK =>
            {
                set_executable(&full, entry.mode == MODE_EXECUTABLE)?;
                report.chmodded.push(display(path));
            }
            _ if entry.mode == MODE_GITLINK => {
                create_dir_all(&full)?;
            }
            _ => to_write.push((path, entry)),
        }
    }

    // 3. Write contents, read in one `cat-file --batch` pass.
    let oids: Vec<&str> = to_write
        .iter()
        .map(|(_, entry)| entry.oid.as_str())
        .collect();
    let blobs = read_blobs(&git, &oids)?;
    for ((path, entry), bytes) in to_write.into_iter().zip(blobs) {
        let full = root.join(OsStr::from_bytes(path));
        if let Some(parent) = full.parent() {
            create_dir_all(parent)?;
        }
        if entry.mode == MODE_SYMLINK {
            write_symlink(&full, &bytes)?;
        } else {
            write_file(&full, &bytes, entry.mode == MODE_EXECUTABLE)?;
        }
        report.written.push(display(path));
    }

    update_ref(&git, &restored_ref, &target_commit)?;

    // 4. Check.
    let after = snapshot(&git)?;
    if after.tree != target_tree {
        return Err(RollbackError::Incomplete {
            run_id: run_id.to_owned(),
            seq,
            paths: differing(&target, &after.entries),
        });
    }
    Ok(report)
}

fn update_ref(git: &Git, name: &str, commit: &str) -> Result<(), GitError> {
    let mut command = git.command();
    command.args(["update-ref", "-m", "fanout rollback", name, commit]);
    git.run(command, None).map(|_| ())
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RollbackError {
    let path = path.to_path_buf();
    move |source| RollbackError::Io { what, path, source }
}

fn create_dir_all(path: &Path) -> Result<(), RollbackError> {
    std::fs::create_dir_all(path).map_err(io("create the directory", path))
}

fn remove_file(path: &Path) -> Result<(), RollbackError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RollbackError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Make the path free for a new file: drop a symlink or an empty directory in the way.
fn clear_for_write(path: &Path) -> Result<Option<std::fs::Permissions>, RollbackError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_dir() => {
            std::fs::remove_dir(path).map_err(io("remove the directory in the way of", path))?;
            Ok(None)
        }
        Ok(meta) if meta.file_type().is_file() => Ok(Some(meta.permissions())),
        Ok(_) => {
            remove_file(path)?;
            Ok(None)
        }
        Err(_) => Ok(None),
    }
}

fn executable_bits(mode: u32, executable: bool) -> u32 {
    if executable {
        mode | 0o100 | ((mode & 0o444) >> 2)
    } else {
        mode & !0o111
    }
}

fn set_executable(path: &Path, executable: bool) -> Result<(), RollbackError> {
    let meta = std::fs::metadata(path).map_err(io("inspect", path))?;
    let mode = executable_bits(meta.permissions().mode(), executable);
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("change the mode of", path))
}

/// Write through a temporary sibling and rename, keeping the old file's permission bits
/// (adjusted for the executable bit) or the umask's default for a new file.
fn write_file(path: &Path, bytes: &[u8], executable: bool) -> Result<(), RollbackError> {
    let previous = clear_for_write(path)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.fanout-rollback-{}", std::process::id()));
    let create_mode = if executable { 0o777 } else { 0o666 };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(create_mode)
            .open(&temp)
            .map_err(io("create", &temp))?;
        // No fsync per file: a rollback interrupted by a crash is simply run again (it is
        // idempotent), and the rename keeps each file either old or new, never torn.
        file.write_all(bytes).map_err(io("write", &temp))?;
        if let Some(previous) = previous {
            let mode = executable_bits(previous.mode(), executable);
            std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(mode))
                .map_err(io("change the mode of", &temp))?;
        }
        std::fs::rename(&temp, path).map_err(io("replace", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

fn write_symlink(path: &Path, target: &[u8]) -> Result<(), RollbackError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_dir() {
            std::fs::remove_dir(path).map_err(io("remove the directory in the way of", path))?;
        } else {
            remove_file(path)?;
        }
    }
    std::os::unix::fs::symlink(OsStr::from_bytes(target), path)
        .map_err(io("create the symlink", path))
}

/// Blob contents for `oids`, in order, through one `git cat-file --batch` (no filters).
fn read_blobs(git: &Git, oids: &[&str]) -> Result<Vec<Vec<u8>>, RollbackError> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let unexpected = |detail: String| GitError::Unexpected {
        dir: git.root().to_path_buf(),
        args: "cat-file --batch".to_owned(),
        detail,
    };
    let pipe = |source| GitError::Pipe {
        dir: git.root().to_path_buf(),
        args: "cat-file --batch".to_owned(),
        source,
    };
    let mut command = git.read_only();
    command
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = command
        .spawn()
        .map_err(|source| GitError::Spawn { source })?;
    let mut input = Vec::with_capacity(oids.len() * 41);
    for oid in oids {
        input.extend_from_slice(oid.as_bytes());
        input.push(b'\n');
    }
    let writer = child
        .stdin
        .take()
        .map(|mut stdin| std::thread::spawn(move || stdin.write_all(&input)));
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| unexpected("no stdout".to_owned()))?;
    let mut reader = BufReader::new(stdout);
    let mut blobs = Vec::with_capacity(oids.len());
    let mut read = || -> Result<(), GitError> {
        for oid in oids {
            let mut header = String::new();
            reader.read_line(&mut header).map_err(pipe)?;
            let mut fields = header.split_whitespace();
            let (Some(_), Some(kind), Some(size)) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(unexpected(format!("for {oid}: {}", header.trim())));
            };
            let size: usize = size
                .parse()
                .map_err(|_| unexpected(format!("bad size in {:?}", header.trim())))?;
            if kind != "blob" {
                return Err(unexpected(format!("{oid} is a {kind}, not a blob")));
            }
            let mut bytes = vec![0; size];
            reader.read_exact(&mut bytes).map_err(pipe)?;
            let mut newline = [0u8; 1];
            reader.read_exact(&mut newline).map_err(pipe)?;
            blobs.push(bytes);
        }
        Ok(())
    };
    let result = read();
    if result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().map_err(pipe)?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    result?;
    if !status.success() {
        return Err(unexpected(format!("exited with {status}")).into());
    }
    Ok(blobs)
}
