//! Durable pre-images: what an agent's write scope held before its first attempt, kept on disk
//! so a run killed at any point (`kill -9`, power loss) can still put the scope back.
//!
//! The agent's own undo journal lives in memory and dies with the process. Before an agent's
//! first attempt starts, [`capture`] records every existing file (and symlink) its write scope
//! matches — path, SHA-256, mode — and the scope patterns themselves, so a file that appears
//! under the scope later is known to be new. [`restore`] puts the scope back: contents and
//! modes of recorded files, recorded files that were deleted, and files (and directories) the
//! agent created removed. Both are idempotent: restoring twice, or restoring a scope that was
//! never touched, changes nothing.
//!
//! # Where it lives, and why there
//!
//! The manifest (paths, hashes, modes, patterns) is a row of the run store's `preimages`
//! table, committed by [`crate::store::Store::start_agent_with_preimage`] in the same
//! `synchronous = FULL` transaction as the agent's first `agent_runs` start row, so the many
//! agents starting together share one `fsync` and no file is created per agent. Contents are
//! not in the store (they can be large, and every agent waits on the store's one writer):
//! - a file unchanged since the run's base checkpoint (its git blob id equals the base tree's)
//!   points at that git blob, which [`prepare`] makes durable (`fsync` of the loose object
//!   and its directory; packs at [`BaseBlobs::load`]) — no copy;
//! - any other file is copied to `<repo>/.fanout/runs/<run_id>/preimages/blobs/<sha256>`
//!   (content-addressed: a blob that exists is complete, identical contents are stored once),
//!   through write-to-temporary, `fsync`, `rename`, `fsync` of the directory.
//!
//! [`prepare`] returns only once every content the manifest names is durable; the engine then
//! commits manifest and start row together, and runs the agent only after that commit. So
//! after any crash (`kill -9`, power loss):
//! - an agent with a start row has a complete, durable pre-image (same transaction);
//! - an agent without one never ran: its scope is as it was;
//! - a pre-image is never replaced (the insert keeps an existing row, and a resumed run uses
//!   the recorded one), so a resume cannot record a tree a crashed attempt had half-edited.
//!
//! Earlier builds kept one manifest file per agent (`preimages/<agent>.json`); [`load`]
//! still reads those and [`capture`] still writes them (tests, tools without a store).
//! Restored contents are always checked against the recorded SHA-256, whichever the source.
//!
//! [`scope_sync_set`] is the other half of power-loss safety: the engine syncs the filesystems
//! it names (in a shared [`SyncGroup`] round) for a successful agent's scope before recording
//! the success, so a durable `success` row never points at edits still in the page cache.
//!
//! [`SyncGroup`]: crate::run::durable::SyncGroup
//!
//! Not here: deciding which agents to restore (the engine's resume), git checkpoints
//! ([`super::checkpoint`]).
//!
//! # Layout
//!
//! - `manifest`: the manifest format ([`Preimage`], [`Entry`]) and where manifests live;
//! - `capture`: [`capture`], [`prepare`] and [`BaseBlobs`];
//! - `restore`: [`restore`] and [`sweep_temporaries`];
//! - `scope`: the walk over a write scope, and [`scope_sync_set`];
//! - `durable`: the filesystem toolkit they share (durable writes, removals, modes).

mod capture;
mod durable;
mod manifest;
mod restore;
mod scope;

use std::path::{Path, PathBuf};

use crate::ids::AgentId;

pub use capture::{BaseBlobs, capture, git_blob_id, prepare};
pub use durable::TEMP_PREFIX;
pub use manifest::{
    Entry, MANIFEST_VERSION, Preimage, load, manifest_json, manifest_path, parse_manifest,
    preimage_dir,
};
pub use restore::{RestoreReport, restore, sweep_temporaries};
pub(crate) use scope::literal_root;
pub use scope::scope_sync_set;

/// Why a pre-image could not be taken or applied.
#[derive(Debug, thiserror::Error)]
pub enum PreimageError {
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pre-image manifest {path} is unreadable: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("agent {agent_id}: invalid write scope: {message}")]
    Scope { agent_id: AgentId, message: String },
    #[error("pre-image blob {path} does not match its hash")]
    Blob { path: PathBuf },
    #[error("git: {message}")]
    Git { message: String },
    #[error(transparent)]
    Sync(#[from] crate::run::durable::SyncError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PreimageError + 'a {
    move |source| PreimageError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    #[cfg(unix)]
    use super::durable::set_mode;
    use super::*;
    use crate::git::Git;

    fn write(repo: &Path, relative: &str, text: &str) {
        let path = repo.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    #[cfg(unix)]
    fn mode(repo: &Path, relative: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(repo.join(relative))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn restore_puts_back_contents_modes_deletions_and_removes_new_files() {
        let repo = tempfile::tempdir().unwrap();
        let repo = repo.path();
        write(repo, "src/a.txt", "a\n");
        write(repo, "src/b.sh", "#!/bin/sh\n");
        write(repo, "other.txt", "other\n");
        #[cfg(unix)]
        set_mode(&repo.join("src/b.sh"), 0o755).unwrap();
        let patterns = vec!["src/**".to_owned()];
        let preimage = capture(repo, &"run-1".into(), &"agent-1".into(), &patterns).unwrap();
        assert_eq!(preimage.entries.len(), 2);

        // The agent edits, deletes, chmods and creates (in a new directory too).
        write(repo, "src/a.txt", "edited\n");
        std::fs::remove_file(repo.join("src/b.sh")).unwrap();
        write(repo, "src/new/deep/c.txt", "new\n");
        write(repo, "src/d.txt", "new\n");
        write(repo, "other.txt", "changed by someone else\n");

        // A second capture keeps the first (a resumed run must not record the dirty tree).
        assert_eq!(
            capture(repo, &"run-1".into(), &"agent-1".into(), &patterns).unwrap(),
            preimage
        );

        let report = restore(repo, &preimage).unwrap();
        assert_eq!(report.restored, vec!["src/a.txt", "src/b.sh"]);
        assert_eq!(report.removed.len(), 2);
        assert_eq!(
            std::fs::read_to_string(repo.join("src/a.txt")).unwrap(),
            "a\n"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("src/b.sh")).unwrap(),
            "#!/bin/sh\n"
        );
        #[cfg(unix)]
        assert_eq!(mode(repo, "src/b.sh"), 0o755);
        assert!(!repo.join("src/d.txt").exists());
        assert!(!repo.join("src/new").exists());
        // Outside the scope: untouched.
        assert_eq!(
            std::fs::read_to_string(repo.join("other.txt")).unwrap(),
            "changed by someone else\n"
        );
        // Idempotent.
        assert!(restore(repo, &preimage).unwrap().is_empty());
    }

    #[test]
    fn a_single_file_scope_and_a_file_created_in_a_new_directory() {
        let repo = tempfile::tempdir().unwrap();
        let repo = repo.path();
        write(repo, "src/one.txt", "1\n");
        let patterns = vec!["src/one.txt".to_owned(), "gen/out.txt".to_owned()];
        let preimage = capture(repo, &"run-1".into(), &"a/b c".into(), &patterns).unwrap();
        assert!(
            manifest_path(repo, &"run-1".into(), &"a/b c".into())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("x-")
        );
        write(repo, "gen/out.txt", "generated\n");
        std::fs::remove_file(repo.join("src/one.txt")).unwrap();
        let loaded = load(repo, &"run-1".into(), &"a/b c".into())
            .unwrap()
            .unwrap();
        assert_eq!(loaded, preimage);
        restore(repo, &loaded).unwrap();
        assert_eq!(
            std::fs::read_to_string(repo.join("src/one.txt")).unwrap(),
            "1\n"
        );
        assert!(!repo.join("gen").exists());
        let sync = scope_sync_set(repo, &loaded).unwrap();
        assert_eq!(sync.len(), 1, "one filesystem");
        sync.sync_now().unwrap();
    }

    #[test]
    fn unchanged_files_point_at_the_base_blob_and_restore_from_git() {
        let repo = tempfile::tempdir().unwrap();
        let repo = repo.path();
        write(repo, "src/a.txt", "a\n");
        write(repo, "src/b.txt", "b\n");
        for args in [
            &["init", "-q", "-b", "main"][..],
            &["add", "-A"][..],
            &[
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "commit",
                "-q",
                "-m",
                "init",
            ][..],
        ] {
            assert!(
                std::process::Command::new("git")
                    .arg("-C")
                    .arg(repo)
                    .args(args)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let git = Git::open(repo).unwrap();
        let tree = git.tree_of("HEAD").unwrap();
        let base = BaseBlobs::load(&git, &tree).unwrap();
        // b.txt changed since the base: its contents are copied.
        write(repo, "src/b.txt", "b, edited before the agent\n");
        let (preimage, sync) = prepare(
            repo,
            &"run-1".into(),
            &"agent-1".into(),
            &["src/**".to_owned()],
            &base,
        )
        .unwrap();
        // The unchanged file points at a loose git object: its filesystem is to be synced.
        assert_eq!(sync.len(), 1);
        sync.sync_now().unwrap();
        let blob_of = |path: &str| match &preimage.entries[path] {
            Entry::File { git_blob, .. } => git_blob.clone(),
            Entry::Symlink { .. } => None,
        };
        assert_eq!(blob_of("src/a.txt"), Some(git_blob_id(b"a\n")));
        assert_eq!(blob_of("src/b.txt"), None);
        let blobs = preimage_dir(repo, &"run-1".into()).join("blobs");
        assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 1);
        // Through the store's JSON and back.
        let json = manifest_json(&preimage).unwrap();
        let loaded = parse_manifest(json.as_bytes(), Path::new("store")).unwrap();
        assert_eq!(loaded, preimage);

        write(repo, "src/a.txt", "agent's edit\n");
        write(repo, "src/b.txt", "agent's edit\n");
        let report = restore(repo, &loaded).unwrap();
        assert_eq!(report.restored.len(), 2);
        assert_eq!(
            std::fs::read_to_string(repo.join("src/a.txt")).unwrap(),
            "a\n"
        );
        assert_eq!(
            std::fs::read_to_string(repo.join("src/b.txt")).unwrap(),
            "b, edited before the agent\n"
        );
    }
}
