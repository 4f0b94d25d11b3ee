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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::policy::PathSet;
use crate::run::durable::SyncSet;
use crate::run::git::Git;

/// The manifest format this build writes (2: entries may point at a git blob).
pub const MANIFEST_VERSION: u32 = 2;
/// The oldest manifest format this build reads.
const OLDEST_MANIFEST_VERSION: u32 = 1;

/// Makes temporary names unique within the process (two agents may write the same blob).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temporary files (ours and the file tools') start with this; a crash can leave them behind.
pub const TEMP_PREFIX: &str = ".fanout-tmp-";

/// Directories a scope walk never enters (at the repository root).
const SKIPPED_ROOTS: &[&str] = &[".git", ".fanout"];

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
    Scope { agent_id: String, message: String },
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

/// One recorded path under the scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    File {
        /// Hex SHA-256 of the contents (the blob's name).
        sha256: String,
        /// Permission bits (`0o7777` of `st_mode`).
        mode: u32,
        size: u64,
        /// The git blob holding the contents, when the file was unchanged since the run's
        /// base checkpoint: then no copy is kept under `blobs/` (see [`BaseBlobs`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        git_blob: Option<String>,
    },
    Symlink {
        target: String,
    },
}

/// What an agent's write scope held before its first attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preimage {
    pub version: u32,
    pub run_id: String,
    pub agent_id: String,
    /// The write scope's entries, as the agent's policy compiles them.
    pub patterns: Vec<String>,
    /// Repository-relative path (with `/`) → what it was.
    pub entries: BTreeMap<String, Entry>,
    /// Directories that existed where the scope could create files (so directories the agent
    /// created can be told apart and removed).
    pub dirs: BTreeSet<String>,
}

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

/// `<repo>/.fanout/runs/<run_id>/preimages`.
pub fn preimage_dir(repo: &Path, run_id: &str) -> PathBuf {
    crate::store::run_dir(repo, run_id).join("preimages")
}

/// The manifest's path for `agent_id` (ids outside `[A-Za-z0-9._-]` are hex-encoded).
pub fn manifest_path(repo: &Path, run_id: &str, agent_id: &str) -> PathBuf {
    let safe = !agent_id.is_empty()
        && !agent_id.starts_with('.')
        && agent_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    let name = if safe {
        format!("{agent_id}.json")
    } else {
        format!("x-{}.json", hex(agent_id.as_bytes()))
    };
    preimage_dir(repo, run_id).join(name)
}

/// The pre-image of `agent_id`, if one was captured.
pub fn load(repo: &Path, run_id: &str, agent_id: &str) -> Result<Option<Preimage>, PreimageError> {
    let path = manifest_path(repo, run_id, agent_id);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PreimageError::Io {
                what: "read",
                path,
                source,
            });
        }
    };
    parse_manifest(&bytes, &path).map(Some)
}

/// The manifest as stored (JSON).
pub fn manifest_json(preimage: &Preimage) -> Result<String, PreimageError> {
    serde_json::to_string(preimage).map_err(|err| PreimageError::Manifest {
        path: PathBuf::from(&preimage.agent_id),
        message: err.to_string(),
    })
}

/// Read a manifest (from a file or the run store; `path` names where, for errors).
pub fn parse_manifest(bytes: &[u8], path: &Path) -> Result<Preimage, PreimageError> {
    let preimage: Preimage =
        serde_json::from_slice(bytes).map_err(|err| PreimageError::Manifest {
            path: path.to_path_buf(),
            message: err.to_string(),
        })?;
    if !(OLDEST_MANIFEST_VERSION..=MANIFEST_VERSION).contains(&preimage.version) {
        return Err(PreimageError::Manifest {
            path: path.to_path_buf(),
            message: format!(
                "version {} (this build reads {OLDEST_MANIFEST_VERSION} to {MANIFEST_VERSION})",
                preimage.version
            ),
        });
    }
    Ok(preimage)
}

/// Record the pre-image of `agent_id`'s write scope durably as a manifest file, or return the
/// one already recorded (a resumed run keeps the first). Blocking: call from `spawn_blocking`.
/// (The engine records manifests in the run store instead: [`prepare`].)
pub fn capture(
    repo: &Path,
    run_id: &str,
    agent_id: &str,
    patterns: &[String],
) -> Result<Preimage, PreimageError> {
    if let Some(existing) = load(repo, run_id, agent_id)? {
        return Ok(existing);
    }
    let (preimage, sync) = prepare(repo, run_id, agent_id, patterns, &BaseBlobs::default())?;
    sync.sync_now()?;
    let dir = preimage_dir(repo, run_id);
    create_dir_durably(&dir)?;
    let bytes = manifest_json(&preimage)?;
    write_durably(&manifest_path(repo, run_id, agent_id), bytes.as_bytes())?;
    sync_dir(&dir)?;
    Ok(preimage)
}

/// Take the pre-image of `agent_id`'s write scope. Every content it names is kept: a blob
/// under `blobs/` (made durable here), or, for a file unchanged since the run's base
/// checkpoint, the git object `base` knows it by. Loose git objects are made durable by the
/// caller: the returned [`SyncSet`] names their filesystem, to be synced (one `syncfs`, shared
/// with other agents by a [`SyncGroup`]) before the manifest is recorded. The manifest itself
/// is the caller's to record too (the engine, in the run store, in the transaction of the
/// agent's start row). Blocking.
///
/// [`SyncGroup`]: crate::run::durable::SyncGroup
pub fn prepare(
    repo: &Path,
    run_id: &str,
    agent_id: &str,
    patterns: &[String],
    base: &BaseBlobs,
) -> Result<(Preimage, SyncSet), PreimageError> {
    let mut sync = SyncSet::default();
    let set = compile(agent_id, patterns)?;
    let dir = preimage_dir(repo, run_id);
    let blobs = dir.join("blobs");
    let mut blobs_written = false;
    let mut entries = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for_each_in_scope(repo, &set, &mut dirs, &mut |relative, path, meta| {
        let entry = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(io("read the link", path))?;
            Entry::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else {
            let bytes = std::fs::read(path).map_err(io("read", path))?;
            let sha256 = hex(&Sha256::digest(&bytes));
            let git_blob = match base.blob_of(relative) {
                Some(oid)
                    if *oid == git_blob_id(&bytes) && base.make_durable(oid, &mut sync)? =>
                {
                    Some(oid.clone())
                }
                _ => None,
            };
            if git_blob.is_none() {
                if !blobs_written {
                    create_dir_durably(&blobs)?;
                    blobs_written = true;
                }
                let blob = blobs.join(&sha256);
                if !blob.exists() {
                    write_durably(&blob, &bytes)?;
                }
            }
            Entry::File {
                sha256,
                mode: mode_of(meta),
                size: bytes.len() as u64,
                git_blob,
            }
        };
        entries.insert(relative.to_owned(), entry);
        Ok(())
    })?;
    if blobs_written {
        sync_dir(&blobs)?;
    }
    let preimage = Preimage {
        version: MANIFEST_VERSION,
        run_id: run_id.to_owned(),
        agent_id: agent_id.to_owned(),
        patterns: patterns.to_vec(),
        entries,
        dirs,
    };
    Ok((preimage, sync))
}

/// The run's base checkpoint as pre-images use it: the git blob id of every regular file in
/// the base tree, and where the object database is.
///
/// A pre-image entry may name a git blob instead of a copy of the contents when the file's
/// blob id equals the base tree's (so the contents are exactly that object). That object must
/// survive power loss like a copied blob would: git `fsync`s pack files by default but not
/// loose objects, so [`BaseBlobs::load`] `fsync`s the packs once and [`prepare`] `fsync`s each
/// loose object it relies on (and its directory) before the manifest is recorded. A
/// repository that borrows objects from elsewhere (`objects/info/alternates`) gets no blob
/// references: every content is copied.
#[derive(Debug, Default)]
pub struct BaseBlobs {
    blobs: HashMap<String, String>,
    objects: PathBuf,
    /// Pack files already `fsync`ed.
    synced_packs: Mutex<BTreeSet<PathBuf>>,
}

impl BaseBlobs {
    /// Read the base tree's blobs (`git ls-tree -r -z TREE`) and make the packs durable. Loose
    /// objects are made durable by the caller of [`prepare`], which gets the object database
    /// in its [`SyncSet`]. Blocking.
    pub fn load(git: &Git, tree: &str) -> Result<BaseBlobs, PreimageError> {
        let git_error = |err: crate::run::git::GitError| PreimageError::Git {
            message: err.to_string(),
        };
        let mut command = git.read_only();
        command.args([
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
        ]);
        let objects = PathBuf::from(git.run_text(command).map_err(git_error)?);
        if objects.join("info").join("alternates").exists() {
            return Ok(BaseBlobs::default());
        }
        let mut command = git.read_only();
        command.args(["ls-tree", "-r", "-z", "--full-tree", tree]);
        let listing = git.run(command, None).map_err(git_error)?;
        let mut blobs = HashMap::new();
        for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // `<mode> SP <type> SP <oid> TAB <path>`
            let Some(tab) = record.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let (meta, path) = (&record[..tab], &record[tab + 1..]);
            let mut fields = meta.split(|b| *b == b' ');
            let (Some(mode), Some(kind), Some(oid)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if kind != b"blob" || !(mode == b"100644" || mode == b"100755") {
                continue;
            }
            let (Ok(path), Ok(oid)) = (std::str::from_utf8(path), std::str::from_utf8(oid)) else {
                continue;
            };
            blobs.insert(path.to_owned(), oid.to_owned());
        }
        let base = BaseBlobs {
            blobs,
            objects,
            synced_packs: Mutex::default(),
        };
        base.sync_packs()?;
        Ok(base)
    }

    /// `fsync` pack files not synced yet (a `git gc` may pack loose objects during the run)
    /// and the pack directory; false if there is no pack directory.
    fn sync_packs(&self) -> Result<bool, PreimageError> {
        let packs = self.objects.join("pack");
        let Ok(children) = std::fs::read_dir(&packs) else {
            return Ok(false);
        };
        let mut synced = self
            .synced_packs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new = false;
        for child in children.flatten() {
            let path = child.path();
            if child.file_type().is_ok_and(|t| t.is_file()) && !synced.contains(&path) {
                match std::fs::File::open(&path) {
                    Ok(file) => file.sync_all().map_err(io("sync", &path))?,
                    // A temporary pack that went away meanwhile.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(PreimageError::Io {
                            what: "open",
                            path,
                            source,
                        });
                    }
                }
                synced.insert(path);
                new = true;
            }
        }
        if new {
            sync_dir(&packs)?;
        }
        Ok(true)
    }

    /// The base tree's blob id of `relative`, if it is a regular file there.
    pub fn blob_of(&self, relative: &str) -> Option<&String> {
        self.blobs.get(relative)
    }

    /// Whether the blob `oid` is in the object database. A loose one is durable once `sync`
    /// (which gets the object database's filesystem) has been synced; a packed one was made
    /// durable by `load` or is synced here if its pack is new (a `git gc` during the run).
    /// False if the object cannot be found (the contents are copied then).
    fn make_durable(&self, oid: &str, sync: &mut SyncSet) -> Result<bool, PreimageError> {
        if oid.len() < 3 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let path = self.objects.join(&oid[..2]).join(&oid[2..]);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {
                sync.note(&self.objects, &meta);
                Ok(true)
            }
            Ok(_) => Ok(false),
            // Not loose: in a pack (made durable here if it is new).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => self.sync_packs(),
            Err(source) => Err(PreimageError::Io {
                what: "read the metadata of",
                path,
                source,
            }),
        }
    }
}

/// Git's id of a blob with these contents: SHA-1 of `blob <len>\0<contents>`.
pub fn git_blob_id(contents: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", contents.len()).as_bytes());
    hasher.update(contents);
    hex(&hasher.finish())
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

fn compile(agent_id: &str, patterns: &[String]) -> Result<PathSet, PreimageError> {
    PathSet::new(patterns).map_err(|err| PreimageError::Scope {
        agent_id: agent_id.to_owned(),
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
fn for_each_in_scope(
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

fn remove_file(path: &Path) -> Result<(), PreimageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PreimageError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Remove `dir` if it is an empty directory; true if it is gone.
fn remove_empty_dir(dir: &Path) -> bool {
    std::fs::remove_dir(dir).is_ok()
}

/// Make room for a regular file at `path`: a symlink or an (agent-created) directory goes.
fn clear_non_file(path: &Path) -> Result<(), PreimageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(_) => clear_any(path),
        Err(_) => Ok(()),
    }
}

fn clear_any(path: &Path) -> Result<(), PreimageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io("remove", path)),
        Ok(_) => remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Write `bytes` to `path` so that after a crash it holds either the old contents or all of
/// the new ones: a temporary beside it, `fsync`, `rename`.
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), PreimageError> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!("{TEMP_PREFIX}pre-{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `create_dir_all`, then `fsync` the new directory's parents so the entries survive.
fn create_dir_durably(dir: &Path) -> Result<(), PreimageError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut current = dir.parent();
    // Up to `.fanout` (the runs directory and the run's own directory may be new too).
    for _ in 0..4 {
        match current {
            Some(parent) => {
                sync_dir(parent)?;
                current = parent.parent();
            }
            None => break,
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), PreimageError> {
    #[cfg(unix)]
    {
        let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
        handle.sync_all().map_err(io("sync", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), PreimageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", path))
}

#[cfg(not(unix))]
fn set_mode(path: &Path, mode: u32) -> Result<(), PreimageError> {
    let mut permissions = std::fs::metadata(path)
        .map_err(io("inspect", path))?
        .permissions();
    permissions.set_readonly(mode & 0o222 == 0);
    std::fs::set_permissions(path, permissions).map_err(io("set the mode of", path))
}

#[cfg(unix)]
fn make_symlink(target: &str, path: &Path) -> Result<(), PreimageError> {
    std::os::unix::fs::symlink(target, path).map_err(io("create the link", path))
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, path: &Path) -> Result<(), PreimageError> {
    Err(PreimageError::Io {
        what: "create the link",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "symlinks"),
    })
}

/// SHA-1, for git object ids only (git names objects by it; nothing here relies on it for
/// security: restored contents are checked against their SHA-256).
mod sha1 {
    pub struct Sha1 {
        state: [u32; 5],
        buffer: Vec<u8>,
        length: u64,
    }

    impl Sha1 {
        pub fn new() -> Sha1 {
            Sha1 {
                state: [
                    0x6745_2301,
                    0xEFCD_AB89,
                    0x98BA_DCFE,
                    0x1032_5476,
                    0xC3D2_E1F0,
                ],
                buffer: Vec::with_capacity(64),
                length: 0,
            }
        }

        pub fn update(&mut self, mut data: &[u8]) {
            self.length = self.length.wrapping_add(data.len() as u64);
            if !self.buffer.is_empty() {
                let take = (64 - self.buffer.len()).min(data.len());
                self.buffer.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buffer.len() == 64 {
                    let mut block = [0u8; 64];
                    block.copy_from_slice(&self.buffer);
                    self.compress(&block);
                    self.buffer.clear();
                }
            }
            let mut chunks = data.chunks_exact(64);
            for chunk in &mut chunks {
                let mut block = [0u8; 64];
                block.copy_from_slice(chunk);
                self.compress(&block);
            }
            self.buffer.extend_from_slice(chunks.remainder());
        }

        pub fn finish(mut self) -> [u8; 20] {
            let bits = self.length.wrapping_mul(8);
            let mut tail = std::mem::take(&mut self.buffer);
            tail.push(0x80);
            while tail.len() % 64 != 56 {
                tail.push(0);
            }
            tail.extend_from_slice(&bits.to_be_bytes());
            for chunk in tail.chunks_exact(64) {
                let mut block = [0u8; 64];
                block.copy_from_slice(chunk);
                self.compress(&block);
            }
            let mut out = [0u8; 20];
            for (i, word) in self.state.iter().enumerate() {
                out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
            }
            out
        }

        fn compress(&mut self, block: &[u8; 64]) {
            let mut w = [0u32; 80];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([
                    block[i * 4],
                    block[i * 4 + 1],
                    block[i * 4 + 2],
                    block[i * 4 + 3],
                ]);
            }
            for i in 16..80 {
                w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = self.state;
            for (i, word) in w.iter().enumerate() {
                let (f, k) = match i {
                    0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                    20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                    _ => (b ^ c ^ d, 0xCA62_C1D6),
                };
                let temp = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(*word);
                e = d;
                d = c;
                c = b.rotate_left(30);
                b = a;
                a = temp;
            }
            for (state, value) in self.state.iter_mut().zip([a, b, c, d, e]) {
                *state = state.wrapping_add(value);
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        let preimage = capture(repo, "run-1", "agent-1", &patterns).unwrap();
        assert_eq!(preimage.entries.len(), 2);

        // The agent edits, deletes, chmods and creates (in a new directory too).
        write(repo, "src/a.txt", "edited\n");
        std::fs::remove_file(repo.join("src/b.sh")).unwrap();
        write(repo, "src/new/deep/c.txt", "new\n");
        write(repo, "src/d.txt", "new\n");
        write(repo, "other.txt", "changed by someone else\n");

        // A second capture keeps the first (a resumed run must not record the dirty tree).
        assert_eq!(
            capture(repo, "run-1", "agent-1", &patterns).unwrap(),
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
        let preimage = capture(repo, "run-1", "a/b c", &patterns).unwrap();
        assert!(
            manifest_path(repo, "run-1", "a/b c")
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("x-")
        );
        write(repo, "gen/out.txt", "generated\n");
        std::fs::remove_file(repo.join("src/one.txt")).unwrap();
        let loaded = load(repo, "run-1", "a/b c").unwrap().unwrap();
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
    fn git_blob_ids_match_git() {
        // `printf '' | git hash-object --stdin` and `printf 'hello\n' | git hash-object --stdin`.
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // Longer than one block, and across block boundaries in pieces.
        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = sha1::Sha1::new();
        whole.update(&long);
        let mut pieces = sha1::Sha1::new();
        for chunk in long.chunks(37) {
            pieces.update(chunk);
        }
        assert_eq!(whole.finish(), pieces.finish());
        let repo = tempfile::tempdir().unwrap();
        let path = repo.path().join("long.bin");
        std::fs::write(&path, &long).unwrap();
        let out = std::process::Command::new("git")
            .args(["hash-object", "--no-filters"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            git_blob_id(&long)
        );
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
        let (preimage, sync) =
            prepare(repo, "run-1", "agent-1", &["src/**".to_owned()], &base).unwrap();
        // The unchanged file points at a loose git object: its filesystem is to be synced.
        assert_eq!(sync.len(), 1);
        sync.sync_now().unwrap();
        let blob_of = |path: &str| match &preimage.entries[path] {
            Entry::File { git_blob, .. } => git_blob.clone(),
            Entry::Symlink { .. } => None,
        };
        assert_eq!(blob_of("src/a.txt"), Some(git_blob_id(b"a\n")));
        assert_eq!(blob_of("src/b.txt"), None);
        let blobs = preimage_dir(repo, "run-1").join("blobs");
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

    #[test]
    fn literal_roots_stop_at_the_first_glob() {
        assert_eq!(literal_root("src/**/*.rs"), "src");
        assert_eq!(literal_root("*.md"), "");
        assert_eq!(literal_root("docs/a.md"), "docs/a.md");
    }
}
