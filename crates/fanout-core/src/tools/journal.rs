//! The write journal: each file's state before an agent first changed it.
//!
//! Every write, edit and delete (by a file tool, or by a command, found by the sandbox's
//! snapshot) records the prior state of the file the first time the agent touches it:
//! whether it existed, its bytes and its mode. [`Journal::undo`] puts all of them back in
//! reverse order and removes directories the agent created, so the tree is byte-identical to
//! what it was before the agent ran.

use std::collections::BTreeSet;

use super::fs::{FileState, FsError, ScopedFs};

/// One journalled path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JournalEntry {
    /// A file and its state before the first change.
    File { path: String, prior: FileState },
    /// A directory the agent created (removed on undo).
    CreatedDir { path: String },
}

/// The pre-images of everything an agent changed.
#[derive(Debug, Default, Clone)]
pub struct Journal {
    entries: Vec<JournalEntry>,
    seen: BTreeSet<String>,
}

/// What [`Journal::undo`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UndoReport {
    pub restored: Vec<String>,
    pub removed: Vec<String>,
    pub failed: Vec<(String, String)>,
}

impl Journal {
    pub fn new() -> Journal {
        Journal::default()
    }

    /// Record `path`'s prior state unless it is already journalled (the first state wins).
    pub fn record_file(&mut self, path: &str, prior: FileState) {
        if self.seen.insert(path.to_string()) {
            self.entries.push(JournalEntry::File {
                path: path.to_string(),
                prior,
            });
        }
    }

    /// Record the current state of `path` through `fs` before changing it.
    pub fn capture(&mut self, fs: &ScopedFs, path: &str) -> Result<(), FsError> {
        if !self.seen.contains(path) {
            let prior = fs.state(path)?;
            self.record_file(path, prior);
        }
        Ok(())
    }

    pub fn record_created_dir(&mut self, path: &str) {
        if self.seen.insert(format!("{path}/")) {
            self.entries.push(JournalEntry::CreatedDir {
                path: path.to_string(),
            });
        }
    }

    pub fn entries(&self) -> &[JournalEntry] {
        &self.entries
    }

    /// The files journalled (changed at least once).
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(|entry| match entry {
            JournalEntry::File { path, .. } => Some(path.as_str()),
            JournalEntry::CreatedDir { .. } => None,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Restore every journalled path, newest first. Keeps going after a failure and reports it.
    pub fn undo(&self, fs: &ScopedFs) -> UndoReport {
        let mut report = UndoReport::default();
        // Files newest first, then created directories deepest first (they are empty by then).
        let mut ordered: Vec<&JournalEntry> = self
            .entries
            .iter()
            .rev()
            .filter(|entry| matches!(entry, JournalEntry::File { .. }))
            .collect();
        let mut dirs: Vec<&JournalEntry> = self
            .entries
            .iter()
            .filter(|entry| matches!(entry, JournalEntry::CreatedDir { .. }))
            .collect();
        dirs.sort_by_key(|entry| match entry {
            JournalEntry::CreatedDir { path } => std::cmp::Reverse(path.matches('/').count()),
            JournalEntry::File { .. } => std::cmp::Reverse(0),
        });
        ordered.extend(dirs);
        for entry in ordered {
            match entry {
                JournalEntry::File { path, prior } => {
                    let result = match prior {
                        FileState::Absent => match fs.remove(path) {
                            Err(FsError::NotFound(_)) => Ok(()),
                            other => other,
                        },
                        FileState::File { content, mode } => {
                            fs.write(path, content, Some(*mode)).map(|_| ())
                        }
                    };
                    match result {
                        Ok(()) => match prior {
                            FileState::Absent => report.removed.push(path.clone()),
                            FileState::File { .. } => report.restored.push(path.clone()),
                        },
                        Err(error) => report.failed.push((path.clone(), error.to_string())),
                    }
                }
                JournalEntry::CreatedDir { path } => match fs.remove_empty_dir(path) {
                    Ok(()) | Err(FsError::NotFound(_)) => report.removed.push(format!("{path}/")),
                    Err(error) => report.failed.push((path.clone(), error.to_string())),
                },
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn undo_restores_content_modes_new_files_and_deletions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("src")).unwrap();
        std::fs::write(root.join("src/keep.sh"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            root.join("src/keep.sh"),
            std::fs::Permissions::from_mode(0o4751),
        )
        .unwrap();
        std::fs::write(root.join("src/gone.txt"), [0u8, 159, 146, 150]).unwrap();
        let fs = ScopedFs::open(root).unwrap();
        let mut journal = Journal::new();

        journal.capture(&fs, "src/keep.sh").unwrap();
        fs.write("src/keep.sh", b"changed", Some(0o644)).unwrap();
        journal.capture(&fs, "src/keep.sh").unwrap(); // the first state wins
        fs.write("src/keep.sh", b"changed again", None).unwrap();
        journal.capture(&fs, "src/gone.txt").unwrap();
        fs.remove("src/gone.txt").unwrap();
        journal.capture(&fs, "src/new/deep.rs").unwrap();
        for dir in fs.write("src/new/deep.rs", b"new", None).unwrap() {
            journal.record_created_dir(&dir);
        }
        assert_eq!(journal.files().count(), 3);

        let report = journal.undo(&fs);
        assert!(report.failed.is_empty(), "{report:?}");
        let meta = std::fs::metadata(root.join("src/keep.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o4751);
        assert_eq!(
            std::fs::read(root.join("src/keep.sh")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            std::fs::read(root.join("src/gone.txt")).unwrap(),
            [0u8, 159, 146, 150]
        );
        assert!(!root.join("src/new").exists());
        let names: Vec<_> = std::fs::read_dir(root.join("src"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
