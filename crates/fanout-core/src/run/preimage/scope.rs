//! Walking a write scope: compiling its patterns, visiting every file and symlink it matches
//! from its literal roots, and [`scope_sync_set`], the filesystems that hold it.

use std::collections::BTreeSet;
use std::path::Path;

use super::durable::TEMP_PREFIX;
use super::manifest::Preimage;
use super::{PreimageError, io};
use crate::ids::AgentId;
use crate::policy::PathSet;
use crate::run::durable::SyncSet;

/// Directories a scope walk never enters (at the repository root).
pub(super) const SKIPPED_ROOTS: &[&str] = &[".git", ".fanout"];

/// The filesystems holding an agent's write scope (its files, their directories and the
/// directories the scope covers, where deletions live), for a [`SyncGroup`] round that makes
/// the agent's edits durable. Blocking.
///
/// [`SyncGroup`]: crate::run::durable::SyncGroup
pub fn scope_sync_set(repo: &Path, preimage: &Preimage) -> Result<SyncSet, PreimageError> {
    let set = compile(&preimage.agent_id, &preimage.patterns)?;
    let mut dirs = BTreeSet::new();
    let mut sync = SyncSet::default();
    for_each_in_scope(repo, &set, &mut dirs, &mut |_, path, meta| {
        sync.note(path, meta);
        Ok(())
    })?;
    for dir in dirs {
        let path = repo.join(&dir);
        if let Ok(meta) = std::fs::symlink_metadata(&path)
            && meta.is_dir()
        {
            sync.note(&path, &meta);
        }
    }
    if sync.is_empty() {
        // Nothing of the scope exists (it deleted everything): its deletions are entries of
        // the repository's directories.
        sync.note_path(repo)
            .map_err(io("read the metadata of", repo))?;
    }
    Ok(sync)
}

pub(super) fn compile(agent_id: &AgentId, patterns: &[String]) -> Result<PathSet, PreimageError> {
    PathSet::new(patterns).map_err(|err| PreimageError::Scope {
        agent_id: agent_id.clone(),
        message: err.to_string(),
    })
}

/// The part of a scope entry before its first glob character, as a directory or file path to
/// start walking from.
pub(crate) fn literal_root(pattern: &str) -> String {
    let mut parts = Vec::new();
    for part in pattern.split('/') {
        if part.contains(['*', '?', '[', '{', '\\']) {
            break;
        }
        parts.push(part);
    }
    parts.join("/")
}

/// Call `visit` for every file and symlink under the repository that `set` matches, walking
/// only from the scope's literal roots; record the directories seen (and the existing
/// ancestors of each root) in `dirs`.
pub(super) fn for_each_in_scope(
    repo: &Path,
    set: &PathSet,
    dirs: &mut BTreeSet<String>,
    visit: &mut dyn FnMut(&str, &Path, &std::fs::Metadata) -> Result<(), PreimageError>,
) -> Result<(), PreimageError> {
    let mut roots: Vec<String> = set.patterns().iter().map(|p| literal_root(p)).collect();
    roots.sort();
    roots.dedup();
    // A root inside another root is walked with it.
    let roots: Vec<String> = roots
        .iter()
        .filter(|root| {
            !roots.iter().any(|other| {
                other != *root && (other.is_empty() || root.starts_with(&format!("{other}/")))
            })
        })
        .cloned()
        .collect();
    let mut seen = BTreeSet::new();
    for root in roots {
        // The root's existing ancestors.
        let mut ancestor = String::new();
        for part in root.split('/').filter(|p| !p.is_empty()) {
            let path = repo.join(&ancestor);
            if !ancestor.is_empty() && path.is_dir() {
                dirs.insert(ancestor.clone());
            }
            if !ancestor.is_empty() {
                ancestor.push('/');
            }
            ancestor.push_str(part);
        }
        walk(repo, &root, set, dirs, &mut seen, visit)?;
    }
    Ok(())
}

fn walk(
    repo: &Path,
    relative: &str,
    set: &PathSet,
    dirs: &mut BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    visit: &mut dyn FnMut(&str, &Path, &std::fs::Metadata) -> Result<(), PreimageError>,
) -> Result<(), PreimageError> {
    if SKIPPED_ROOTS
        .iter()
        .any(|skip| relative == *skip || relative.starts_with(&format!("{skip}/")))
    {
        return Ok(());
    }
    let path = if relative.is_empty() {
        repo.to_path_buf()
    } else {
        repo.join(relative)
    };
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(PreimageError::Io {
                what: "inspect",
                path,
                source,
            });
        }
    };
    if meta.is_dir() {
        if !relative.is_empty() {
            dirs.insert(relative.to_owned());
        }
        let mut children: Vec<String> = Vec::new();
        for child in std::fs::read_dir(&path).map_err(io("list", &path))? {
            let child = child.map_err(io("list", &path))?;
            children.push(child.file_name().to_string_lossy().into_owned());
        }
        children.sort();
        for name in children {
            let child = if relative.is_empty() {
                name
            } else {
                format!("{relative}/{name}")
            };
            walk(repo, &child, set, dirs, seen, visit)?;
        }
        return Ok(());
    }
    let temporary = relative
        .rsplit('/')
        .next()
        .is_some_and(|name| name.starts_with(TEMP_PREFIX));
    if (meta.file_type().is_file() || meta.file_type().is_symlink())
        && !temporary
        && set.is_match(relative)
        && seen.insert(relative.to_owned())
    {
        visit(relative, &path, &meta)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_roots_stop_at_the_first_glob() {
        assert_eq!(literal_root("src/**/*.rs"), "src");
        assert_eq!(literal_root("*.md"), "");
        assert_eq!(literal_root("docs/a.md"), "docs/a.md");
    }
}
