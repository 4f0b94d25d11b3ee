//! Putting a scope back: [`restore`] from a pre-image, and [`sweep_temporaries`], which
//! clears what a killed process left half-written.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::durable::{
    TEMP_PREFIX, clear_any, clear_non_file, make_symlink, mode_of, remove_empty_dir, remove_file,
    set_mode, sync_dir, write_durably,
};
use super::manifest::{Entry, Preimage, preimage_dir};
use super::scope::{SKIPPED_ROOTS, compile, for_each_in_scope};
use super::{PreimageError, hex, io};
use crate::git::Git;

/// What [`restore`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Recorded files whose contents, mode or presence were put back.
    pub restored: Vec<String>,
    /// Files under the scope that were not there before, removed.
    pub removed: Vec<String>,
}

impl RestoreReport {
    pub fn is_empty(&self) -> bool {
        self.restored.is_empty() && self.removed.is_empty()
    }
}

/// Put the scope back as the pre-image recorded it. Blocking.
pub fn restore(repo: &Path, preimage: &Preimage) -> Result<RestoreReport, PreimageError> {
    let set = compile(&preimage.agent_id, &preimage.patterns)?;
    let blobs = preimage_dir(repo, &preimage.run_id).join("blobs");
    let mut report = RestoreReport::default();
    let mut git: Option<Git> = None;

    // Files that are new under the scope go first (a recorded file may sit where the agent
    // put a directory).
    let mut now_dirs = BTreeSet::new();
    let mut present: Vec<String> = Vec::new();
    for_each_in_scope(repo, &set, &mut now_dirs, &mut |relative, _, _| {
        present.push(relative.to_owned());
        Ok(())
    })?;
    let mut touched_dirs = BTreeSet::new();
    for relative in present {
        if preimage.entries.contains_key(&relative) {
            continue;
        }
        let path = repo.join(&relative);
        remove_file(&path)?;
        if let Some(parent) = path.parent() {
            touched_dirs.insert(parent.to_path_buf());
        }
        report.removed.push(relative);
    }
    // Directories the agent created, now empty: deepest first, then up their parents.
    for dir in now_dirs.iter().rev() {
        if !preimage.dirs.contains(dir) {
            remove_empty_dir(&repo.join(dir));
        }
    }
    for dir in &touched_dirs {
        let mut current = dir.clone();
        while current.starts_with(repo) && current != repo {
            let relative = relative_of(repo, &current);
            if preimage.dirs.contains(&relative) || !remove_empty_dir(&current) {
                break;
            }
            match current.parent() {
                Some(parent) => current = parent.to_path_buf(),
                None => break,
            }
        }
    }

    for (relative, entry) in &preimage.entries {
        let path = repo.join(relative);
        if matches_entry(&path, entry)? {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("create", parent))?;
        }
        match entry {
            Entry::File {
                sha256,
                mode,
                git_blob,
                ..
            } => {
                let (bytes, source) = match git_blob {
                    Some(oid) => {
                        if git.is_none() {
                            git = Some(Git::open(repo).map_err(|err| PreimageError::Git {
                                message: err.to_string(),
                            })?);
                        }
                        let bytes = match &git {
                            Some(git) => read_git_blob(git, oid)?,
                            None => Vec::new(),
                        };
                        (bytes, PathBuf::from(format!("git blob {oid}")))
                    }
                    None => {
                        let blob = blobs.join(sha256);
                        (std::fs::read(&blob).map_err(io("read", &blob))?, blob)
                    }
                };
                if hex(&Sha256::digest(&bytes)) != *sha256 {
                    return Err(PreimageError::Blob { path: source });
                }
                clear_non_file(&path)?;
                write_durably(&path, &bytes)?;
                set_mode(&path, *mode)?;
            }
            Entry::Symlink { target } => {
                clear_any(&path)?;
                make_symlink(target, &path)?;
            }
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        report.restored.push(relative.clone());
    }
    for dir in &touched_dirs {
        if dir.exists() {
            sync_dir(dir)?;
        }
    }
    Ok(report)
}

/// The contents of blob `oid` from the object database.
fn read_git_blob(git: &Git, oid: &str) -> Result<Vec<u8>, PreimageError> {
    let mut command = git.read_only();
    command.args(["cat-file", "blob", oid]);
    git.run(command, None).map_err(|err| PreimageError::Git {
        message: err.to_string(),
    })
}

/// Remove temporary files a killed process left in the working tree (the file tools and
/// [`restore`] write beside their target and rename). Only safe while no agent of any run is
/// writing: a resume calls it before it starts any. Returns the paths removed. Blocking.
pub fn sweep_temporaries(repo: &Path) -> Result<Vec<String>, PreimageError> {
    let mut removed = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(relative) = stack.pop() {
        let dir = if relative.is_empty() {
            repo.to_path_buf()
        } else {
            repo.join(&relative)
        };
        for child in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let child = child.map_err(io("list", &dir))?;
            let name = child.file_name().to_string_lossy().into_owned();
            let child_relative = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            let kind = child.file_type().map_err(io("inspect", &child.path()))?;
            if kind.is_dir() {
                if !SKIPPED_ROOTS.contains(&child_relative.as_str()) {
                    stack.push(child_relative);
                }
            } else if name.starts_with(TEMP_PREFIX) {
                remove_file(&child.path())?;
                removed.push(child_relative);
            }
        }
    }
    removed.sort();
    Ok(removed)
}

fn relative_of(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .unwrap_or_default()
}

/// Whether `path` already is what `entry` says (then nothing is written).
fn matches_entry(path: &Path, entry: &Entry) -> Result<bool, PreimageError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(PreimageError::Io {
                what: "inspect",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    Ok(match entry {
        Entry::File {
            sha256, mode, size, ..
        } => {
            meta.file_type().is_file()
                && meta.len() == *size
                && mode_of(&meta) == *mode
                && hex(&Sha256::digest(
                    std::fs::read(path).map_err(io("read", path))?,
                )) == *sha256
        }
        Entry::Symlink { target } => {
            meta.file_type().is_symlink()
                && std::fs::read_link(path)
                    .map(|t| t.to_string_lossy() == target.as_str())
                    .unwrap_or(false)
        }
    })
}
