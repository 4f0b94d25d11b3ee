//! The repository scan: every file the planner and validator know about, and the compact
//! tree view the orchestrator sees.
//!
//! The walk respects `.gitignore`, `.ignore` and `.git/info/exclude` (not the user's global
//! excludes, so a plan does not depend on who runs it) and never enters `.git` or `.fanout`.
//! Hidden files are kept: `.env` must be visible to be refused. Files are sorted by path so
//! scope lookups are binary searches and range scans, not a pass over 10,000 paths per agent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::PlanError;

/// One file of the repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    /// Relative to the root, `/`-separated.
    pub path: String,
    pub bytes: u64,
}

/// The files of a repository, sorted by path.
#[derive(Debug, Clone, Default)]
pub struct RepoScan {
    pub root: PathBuf,
    pub files: Vec<ScannedFile>,
    pub total_bytes: u64,
}

/// Directories the walk never enters.
const SKIPPED_DIRS: &[&str] = &[".git", ".fanout"];

impl RepoScan {
    /// Walk `root`.
    /// Drop `path` (absolute, or relative to the current directory) from the file list if it
    /// lies inside the scanned repository.
    pub fn forget(&mut self, path: &Path) {
        let (Ok(file), Ok(root)) = (path.canonicalize(), self.root.canonicalize()) else {
            return;
        };
        let Ok(relative) = file.strip_prefix(&root) else {
            return;
        };
        let relative = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/");
        if let Ok(index) = self
            .files
            .binary_search_by(|file| file.path.as_str().cmp(relative.as_str()))
        {
            let removed = self.files.remove(index);
            self.total_bytes = self.total_bytes.saturating_sub(removed.bytes);
        }
    }

    pub fn scan(root: &Path) -> Result<RepoScan, PlanError> {
        let metadata = std::fs::metadata(root).map_err(|source| PlanError::Scan {
            path: root.to_path_buf(),
            source,
        })?;
        if !metadata.is_dir() {
            return Err(PlanError::Scan {
                path: root.to_path_buf(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let walker = ignore::WalkBuilder::new(root)
            .hidden(false)
            .git_ignore(true)
            .git_exclude(true)
            .git_global(false)
            .ignore(true)
            .parents(false)
            .require_git(false)
            .follow_links(false)
            .filter_entry(|entry| {
                !(entry.depth() > 0
                    && entry.file_type().is_some_and(|t| t.is_dir())
                    && SKIPPED_DIRS.contains(&entry.file_name().to_string_lossy().as_ref()))
            })
            .build();
        let owned = crate::store::owned_paths(root);
        let mut files = Vec::new();
        let mut total_bytes = 0;
        for entry in walker {
            let entry = entry.map_err(|err| PlanError::Scan {
                path: root.to_path_buf(),
                source: std::io::Error::other(err.to_string()),
            })?;
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                continue;
            }
            let Ok(relative) = entry.path().strip_prefix(root) else {
                continue;
            };
            let path = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if owned.contains(&path) {
                continue;
            }
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            total_bytes += bytes;
            files.push(ScannedFile { path, bytes });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(RepoScan {
            root: root.to_path_buf(),
            files,
            total_bytes,
        })
    }

    /// Index of `path`, if it is a scanned file.
    pub fn find(&self, path: &str) -> Option<usize> {
        self.files
            .binary_search_by(|file| file.path.as_str().cmp(path))
            .ok()
    }

    /// The index range of files whose path starts with `prefix` (`""` is every file).
    pub fn prefix_range(&self, prefix: &str) -> std::ops::Range<usize> {
        let start = self
            .files
            .partition_point(|file| file.path.as_str() < prefix);
        let end = start
            + self.files[start..].partition_point(|file| file.path.as_str().starts_with(prefix));
        start..end
    }

    /// A compact view of the tree for the orchestrator, at most about `max_bytes` long: a
    /// summary line, the directories with their file counts and sizes (deepest levels
    /// folded when there are too many), then as many file paths as fit.
    pub fn tree_view(&self, max_bytes: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Repository: {} files, {} (paths relative to the root; .gitignore respected)",
            self.files.len(),
            human_bytes(self.total_bytes)
        );
        // Directories, folded to the deepest level whose listing fits in half the budget.
        let dir_budget = max_bytes / 2;
        let mut depth = 8;
        let mut dirs = directory_summary(&self.files, depth);
        while depth > 1 && estimated_len(&dirs) > dir_budget {
            depth -= 1;
            dirs = directory_summary(&self.files, depth);
        }
        out.push_str("Directories (files, size):\n");
        for (dir, (count, bytes)) in &dirs {
            if out.len() > dir_budget {
                let _ = writeln!(out, "... more directories not shown");
                break;
            }
            let _ = writeln!(out, "{dir}/ {count} files, {}", human_bytes(*bytes));
        }
        let shown_before = out.len();
        let mut listed = 0;
        let mut files_text = String::new();
        for file in &self.files {
            let line_len = file.path.len() + 12;
            if shown_before + files_text.len() + line_len + 64 > max_bytes {
                break;
            }
            let _ = writeln!(files_text, "{} {}", file.path, human_bytes(file.bytes));
            listed += 1;
        }
        if listed == self.files.len() {
            out.push_str("Files:\n");
        } else {
            let _ = writeln!(out, "Files (first {listed} of {}):", self.files.len());
        }
        out.push_str(&files_text);
        out
    }
}

/// Directory → (files below it, bytes below it), for directories up to `depth` levels deep.
fn directory_summary(files: &[ScannedFile], depth: usize) -> BTreeMap<String, (u64, u64)> {
    let mut dirs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for file in files {
        let parts: Vec<&str> = file.path.split('/').collect();
        let dir_parts = parts.len().saturating_sub(1).min(depth);
        for level in 1..=dir_parts {
            let entry = dirs.entry(parts[..level].join("/")).or_default();
            entry.0 += 1;
            entry.1 += file.bytes;
        }
        if dir_parts == 0 {
            let entry = dirs.entry(".".to_owned()).or_default();
            entry.0 += 1;
            entry.1 += file.bytes;
        }
    }
    dirs
}

fn estimated_len(dirs: &BTreeMap<String, (u64, u64)>) -> usize {
    dirs.keys().map(|dir| dir.len() + 24).sum()
}

/// `4.1 KB`, `12.3 MB`.
pub fn human_bytes(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else if bytes < 1024 * 1024 {
        format!("{:.1} KB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MB", bytes as f64 / (1024.0 * 1024.0))
    }
}
