//! Pre/post snapshots of the directories a command may write.
//!
//! Landlock grants whole directory trees, while an agent declares files. Before a command
//! runs, every entry under the writable directories is recorded (metadata, and the bytes of
//! regular files and link targets so they can be put back); afterwards the trees are walked
//! again and each difference is either a declared write (journalled) or a violation
//! (reverted from the pre-image).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// The most bytes of pre-images one snapshot may hold; beyond it the command is refused.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
    /// File bytes (regular files) taken before the command.
    pub content: Option<Vec<u8>>,
}

impl Entry {
    fn same_as(&self, other: &Entry) -> bool {
        self.kind == other.kind
            && self.ino == other.ino
            && self.size == other.size
            && self.mode == other.mode
            && self.nlink == other.nlink
            && self.mtime_ns == other.mtime_ns
            && self.ctime_ns == other.ctime_ns
    }
}

/// Absolute path → entry, for every path under the roots (roots included).
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    pub entries: BTreeMap<PathBuf, Entry>,
}

/// One difference between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Created(PathBuf, Kind),
    Modified(PathBuf),
    Deleted(PathBuf),
}

impl Snapshot {
    /// Walk `roots` (directories and single files), keeping contents when `keep_content`.
    pub fn take(roots: &[PathBuf], keep_content: bool) -> Result<Snapshot, SandboxError> {
        let mut snapshot = Snapshot::default();
        let mut bytes = 0u64;
        for root in roots {
            walk(root, keep_content, &mut snapshot, &mut bytes)?;
        }
        Ok(snapshot)
    }

    /// A regular file with more hard links than the snapshot holds paths to: one of its links
    /// is outside the snapshotted trees.
    pub fn aliased_file(&self) -> Option<PathBuf> {
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        for entry in self.entries.values() {
            if entry.kind == Kind::File && entry.nlink > 1 {
                *seen.entry(entry.ino).or_insert(0) += 1;
            }
        }
        self.entries
            .iter()
            .find(|(_, entry)| {
                entry.kind == Kind::File
                    && entry.nlink > 1
                    && seen.get(&entry.ino).copied().unwrap_or(0) < entry.nlink
            })
            .map(|(path, _)| path.clone())
    }

    pub fn diff(&self, after: &Snapshot) -> Vec<Change> {
        let mut changes = Vec::new();
        for (path, before) in &self.entries {
            match after.entries.get(path) {
                None => changes.push(Change::Deleted(path.clone())),
                Some(now) if !before.same_as(now) && before.kind != Kind::Dir => {
                    changes.push(Change::Modified(path.clone()))
                }
                Some(now) if before.kind == Kind::Dir && now.kind != Kind::Dir => {
                    changes.push(Change::Modified(path.clone()))
                }
                Some(_) => {}
            }
        }
        for (path, now) in &after.entries {
            if !self.entries.contains_key(path) {
                changes.push(Change::Created(path.clone(), now.kind));
            }
        }
        changes
    }
}

fn walk(
    path: &Path,
    keep_content: bool,
    snapshot: &mut Snapshot,
    bytes: &mut u64,
) -> Result<(), SandboxError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(SandboxError::Snapshot(format!(
                "{}: {error}",
                path.display()
            )));
        }
    };
    let file_type = meta.file_type();
    let kind = if file_type.is_symlink() {
        Kind::Symlink
    } else if file_type.is_dir() {
        Kind::Dir
    } else if file_type.is_file() {
        Kind::File
    } else {
        Kind::Other
    };
    let content = if keep_content && kind == Kind::File {
        *bytes += meta.len();
        if *bytes > MAX_SNAPSHOT_BYTES {
            return Err(SandboxError::Snapshot(format!(
                "the writable directories hold more than {MAX_SNAPSHOT_BYTES} bytes; declare \
                 narrower scopes"
            )));
        }
        Some(
            std::fs::read(path)
                .map_err(|error| SandboxError::Snapshot(format!("{}: {error}", path.display())))?,
        )
    } else {
        None
    };
    snapshot.entries.insert(
        path.to_path_buf(),
        Entry {
            kind,
            ino: meta.ino(),
            size: meta.len(),
            mode: meta.mode() & 0o7777,
            nlink: meta.nlink(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
            content,
        },
    );
    if kind == Kind::Dir {
        let entries = std::fs::read_dir(path)
            .map_err(|error| SandboxError::Snapshot(format!("{}: {error}", path.display())))?;
        for entry in entries.flatten() {
            walk(&entry.path(), keep_content, snapshot, bytes)?;
        }
    }
    Ok(())
}
