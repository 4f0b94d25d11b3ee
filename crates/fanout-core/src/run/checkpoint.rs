//! Checkpoints: the whole working tree committed on a ref of ours.
//!
//! A checkpoint is a commit of every file git would see — tracked files plus untracked files
//! that are not ignored, with their modes (regular, executable, symlink; gitlinks are copied
//! from the index), deleted files simply absent — made without moving the user's HEAD, branch
//! or index:
//!
//! 1. list paths with `git ls-files` (read-only, `--no-optional-locks`), minus `.fanout/`;
//! 2. hash file contents into the object database with `git hash-object -w --no-filters`
//!    (exact bytes: no clean filter, no end-of-line conversion — see [`crate::git`]);
//! 3. stage them in a private index (`GIT_INDEX_FILE=.fanout/tmp/index-…`) with
//!    `git update-index --index-info`, then `git write-tree`;
//! 4. `git commit-tree` with the previous checkpoint as parent (for checkpoint 0, the run's
//!    base, HEAD's commit when there is one);
//! 5. one `git update-ref --stdin` transaction sets `refs/fanout/<run_id>/checkpoints/<n>` and
//!    `refs/fanout/<run_id>/latest`.
//!
//! A checkpoint shows only finished work. An agent still running has its write scope half
//! edited (a write in progress can even leave a file cut short), so the checkpoint shows that
//! scope as the agent's pre-image recorded it instead: files as they were, files the agent
//! created absent ([`InFlightScopes`]). Agents count as running from the moment their
//! pre-image is durable (before their first tool call) until their edits are durable and
//! recorded, or rolled back; an agent that starts while a checkpoint reads the tree counts too.
//!
//! Checkpoint 0 is the run's base: the working tree as it was before the first agent ran
//! (uncommitted changes included), which is what `fanout rollback RUN_ID` restores by default.
//! The refs are the source of truth ([`Checkpointer::new`] continues the numbering from them
//! after a crash); the store's `checkpoints` table mirrors them for `fanout show`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::Serialize;

use super::preimage::{self, Entry as PreimageEntry, Preimage};
use crate::config::Rollback;
use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::policy::PathSet;
use crate::store::{CheckpointRecord, Store, StoreError};

/// A checkpoint failure.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(
        "run id {run_id:?} cannot name a git ref ({reason}); run ids use letters, digits, `.`, `_` and `-`"
    )]
    InvalidRunId {
        run_id: String,
        reason: &'static str,
    },
    #[error("cannot {what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "checkpoint {seq} of run {run_id} was committed ({commit}) but not recorded in the run store: {source}"
    )]
    Store {
        run_id: RunId,
        seq: u64,
        commit: String,
        source: Box<StoreError>,
    },
    #[error("the checkpoint task stopped before finishing: {message}")]
    Join { message: String },
    #[error("cannot show running agent {agent_id}'s scope as its pre-image: {message}")]
    InFlightScope { agent_id: AgentId, message: String },
}

/// The agents whose scopes a checkpoint shows as their pre-images (see the module docs).
/// Shared by a run's agent tasks and its [`Checkpointer`].
#[derive(Debug, Default)]
pub struct InFlightScopes {
    inner: Mutex<InFlight>,
}

#[derive(Debug, Default)]
struct InFlight {
    running: HashMap<AgentId, Arc<Preimage>>,
    /// While a checkpoint reads the tree: the agents running when it began, plus every agent
    /// that started since.
    capture: Option<HashMap<AgentId, Arc<Preimage>>>,
}

impl InFlightScopes {
    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The agent may now change its scope: call once its pre-image is durable and before any
    /// of its tools can write.
    pub fn enter(&self, preimage: Arc<Preimage>) {
        let mut inner = self.lock();
        if let Some(capture) = inner.capture.as_mut() {
            capture.insert(preimage.agent_id.clone(), Arc::clone(&preimage));
        }
        inner.running.insert(preimage.agent_id.clone(), preimage);
    }

    /// The agent's scope is final: its edits are durable and recorded, or rolled back.
    pub fn leave(&self, agent_id: &AgentId) {
        self.lock().running.remove(agent_id);
    }

    /// How many agents are running.
    pub fn len(&self) -> usize {
        self.lock().running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn begin_capture(&self) {
        let mut inner = self.lock();
        inner.capture = Some(inner.running.clone());
    }

    fn end_capture(&self) -> Vec<Arc<Preimage>> {
        self.lock()
            .capture
            .take()
            .map(|capture| capture.into_values().collect())
            .unwrap_or_default()
    }
}

/// A checkpoint taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckpointId {
    pub run_id: RunId,
    /// 0 is the run's base.
    pub seq: u64,
    pub commit: String,
    pub tree: String,
    pub ref_name: String,
}

/// One entry of a tree: git mode (`0o100644`, `0o100755`, `0o120000`, `0o160000`) and object id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeEntry {
    pub mode: u32,
    pub oid: String,
}

pub(crate) const MODE_FILE: u32 = 0o100644;
pub(crate) const MODE_EXECUTABLE: u32 = 0o100755;
pub(crate) const MODE_SYMLINK: u32 = 0o120000;
pub(crate) const MODE_GITLINK: u32 = 0o160000;

/// The working tree as git objects: its tree id and its entries by path (raw bytes).
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub tree: String,
    pub entries: BTreeMap<Vec<u8>, TreeEntry>,
}

/// `refs/fanout/<run_id>/`.
pub fn run_ref_prefix(run_id: &RunId) -> String {
    format!("refs/fanout/{run_id}/")
}

/// `refs/fanout/<run_id>/checkpoints/<seq>`.
pub fn checkpoint_ref(run_id: &RunId, seq: u64) -> String {
    format!("refs/fanout/{run_id}/checkpoints/{seq}")
}

/// `refs/fanout/<run_id>/latest`.
pub fn latest_ref(run_id: &RunId) -> String {
    format!("refs/fanout/{run_id}/latest")
}

/// Refuse run ids that would make a bad or surprising ref name.
pub fn validate_run_id(run_id: &RunId) -> Result<(), CheckpointError> {
    let run_id = run_id.as_str();
    let invalid = |reason| CheckpointError::InvalidRunId {
        run_id: run_id.to_owned(),
        reason,
    };
    if run_id.is_empty() || run_id.len() > 128 {
        return Err(invalid("it must be 1 to 128 characters"));
    }
    if !run_id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("it has a character outside [A-Za-z0-9._-]"));
    }
    if run_id.starts_with(['.', '-']) || run_id.contains("..") || run_id.ends_with(".lock") {
        return Err(invalid(
            "it starts with `.` or `-`, contains `..` or ends in `.lock`",
        ));
    }
    Ok(())
}

/// A run's checkpoints from its refs: seq → commit.
pub fn list_checkpoints(git: &Git, run_id: &RunId) -> Result<BTreeMap<u64, String>, GitError> {
    let prefix = format!("{}checkpoints/", run_ref_prefix(run_id));
    Ok(git
        .refs_under(&prefix)?
        .into_iter()
        .filter_map(|(name, oid)| {
            let seq = name.strip_prefix(&prefix)?.parse::<u64>().ok()?;
            Some((seq, oid))
        })
        .collect())
}

/// When to checkpoint: after every `interval` agent completions, and — once any completion
/// since the last checkpoint included a destructive operation (a delete or rename) — after
/// every `destructive_interval` completions. So the changes of at most `interval` agents
/// (`destructive_interval` when something was deleted or renamed) are ever outside a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CheckpointPolicy {
    pub interval: u32,
    pub destructive_interval: u32,
    completions: u32,
    destructive: u32,
}

impl CheckpointPolicy {
    /// Intervals below 1 are treated as 1; `destructive_interval` never exceeds `interval`.
    pub fn new(interval: u32, destructive_interval: u32) -> CheckpointPolicy {
        let interval = interval.max(1);
        CheckpointPolicy {
            interval,
            destructive_interval: destructive_interval.clamp(1, interval),
            completions: 0,
            destructive: 0,
        }
    }

    /// From the workflow's `rollback` section.
    pub fn from_config(rollback: &Rollback) -> CheckpointPolicy {
        CheckpointPolicy::new(
            rollback.checkpoint_interval,
            rollback.destructive_checkpoint_interval,
        )
    }

    /// The rule itself: given completions since the last checkpoint and how many of them
    /// included a delete or rename, is a checkpoint due now?
    pub fn due(&self, completions_since_last: u32, destructive_since_last: u32) -> bool {
        completions_since_last >= self.interval
            || (destructive_since_last > 0 && completions_since_last >= self.destructive_interval)
    }

    /// Count one completion; true when a checkpoint is due now (the counters then restart).
    pub fn record_completion(&mut self, destructive: bool) -> bool {
        self.completions = self.completions.saturating_add(1);
        if destructive {
            self.destructive = self.destructive.saturating_add(1);
        }
        let due = self.due(self.completions, self.destructive);
        if due {
            self.reset();
        }
        due
    }

    /// Restart the counters (after a checkpoint taken for another reason).
    pub fn reset(&mut self) {
        self.completions = 0;
        self.destructive = 0;
    }

    /// Completions since the last checkpoint.
    pub fn pending(&self) -> u32 {
        self.completions
    }
}

/// What a file looked like when its blob id was computed: reused while nothing about the file
/// changed, so a checkpoint only hashes files written since the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CachedHash {
    inode: u64,
    size: u64,
    mode: u32,
    mtime_ns: i128,
    ctime_ns: i128,
    oid: String,
}

/// Blob ids of unchanged files, by path.
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    entries: HashMap<Vec<u8>, CachedHash>,
}

/// Kernel file times tick at the scheduler's coarse clock (a few ms): a file changed within
/// this window of being hashed could change again with the same times, so it is not cached.
const RACY_WINDOW_NS: i128 = 100_000_000;

fn file_times(meta: &std::fs::Metadata) -> (i128, i128) {
    use std::os::unix::fs::MetadataExt;
    (
        i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
    )
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Takes a run's checkpoints. One per run; not shared between threads (wrap it in a mutex:
/// checkpoints of one run are sequential by nature).
#[derive(Debug)]
pub struct Checkpointer {
    git: Git,
    cache: Arc<Mutex<HashCache>>,
    run_id: RunId,
    next_seq: u64,
    parent: Option<String>,
    latest: Option<CheckpointId>,
    completed_agents: u64,
    store: Option<Store>,
    in_flight: Option<Arc<InFlightScopes>>,
    /// Git blob ids of pre-image contents already written to the object database, by SHA-256.
    preimage_blobs: Arc<Mutex<HashMap<String, String>>>,
}

impl Checkpointer {
    /// Checkpoints of `run_id` in the repository containing `repo`. Numbering continues from
    /// the run's existing refs, so a resumed run goes on where it stopped.
    pub fn new(repo: &Path, run_id: &RunId) -> Result<Checkpointer, CheckpointError> {
        validate_run_id(run_id)?;
        let git = Git::open(repo)?;
        let existing = list_checkpoints(&git, run_id)?;
        let (next_seq, parent, latest) = match existing.last_key_value() {
            Some((seq, commit)) => {
                let tree = git.tree_of(commit)?;
                let latest = CheckpointId {
                    run_id: run_id.to_owned(),
                    seq: *seq,
                    commit: commit.clone(),
                    tree,
                    ref_name: checkpoint_ref(run_id, *seq),
                };
                (seq + 1, Some(commit.clone()), Some(latest))
            }
            None => (0, git.resolve_commit("HEAD")?, None),
        };
        Ok(Checkpointer {
            git,
            cache: Arc::default(),
            run_id: run_id.to_owned(),
            next_seq,
            parent,
            latest,
            completed_agents: 0,
            store: None,
            in_flight: None,
            preimage_blobs: Arc::default(),
        })
    }

    /// Show the scopes of `in_flight`'s running agents as their pre-images.
    pub fn with_in_flight(mut self, in_flight: Arc<InFlightScopes>) -> Checkpointer {
        self.in_flight = Some(in_flight);
        self
    }

    /// Record each checkpoint in `store` too.
    pub fn with_store(mut self, store: Store) -> Checkpointer {
        self.store = Some(store);
        self
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    pub fn git(&self) -> &Git {
        &self.git
    }

    /// The seq the next checkpoint gets (0 when the run has none yet: the base).
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The last checkpoint taken (or found at [`Checkpointer::new`]).
    pub fn latest(&self) -> Option<&CheckpointId> {
        self.latest.as_ref()
    }

    /// Number the next checkpoints after `seq` (taken elsewhere: a shared run's coordinator
    /// in another clone, whose refs this repository has not). The parent stays the latest
    /// checkpoint this repository holds.
    pub fn continue_after(&mut self, seq: u64) {
        self.next_seq = self.next_seq.max(seq.saturating_add(1));
    }

    /// How many agents have completed, for the checkpoint records.
    pub fn set_completed_agents(&mut self, completed: u64) {
        self.completed_agents = completed;
    }

    /// Take checkpoint 0 (the run's base) if the run has none yet; return the base.
    pub async fn base(&mut self) -> Result<CheckpointId, CheckpointError> {
        if self.next_seq == 0 {
            return self.checkpoint("base").await;
        }
        let commit = list_checkpoints(&self.git, &self.run_id)?
            .remove(&0)
            .ok_or_else(|| GitError::Unexpected {
                dir: self.git.root().to_path_buf(),
                args: format!("for-each-ref {}", checkpoint_ref(&self.run_id, 0)),
                detail: "the run has checkpoints but no base (0)".to_owned(),
            })?;
        Ok(CheckpointId {
            run_id: self.run_id.clone(),
            seq: 0,
            tree: self.git.tree_of(&commit)?,
            commit,
            ref_name: checkpoint_ref(&self.run_id, 0),
        })
    }

    /// Commit the working tree as the next checkpoint, then record it in the store (if any).
    /// The git work runs on the blocking pool.
    pub async fn checkpoint(&mut self, label: &str) -> Result<CheckpointId, CheckpointError> {
        let git = self.git.clone();
        let run_id = self.run_id.clone();
        let seq = self.next_seq;
        let parent = self.parent.clone();
        let message = self.message(seq, label);
        let cache = Arc::clone(&self.cache);
        let in_flight = self.in_flight.clone();
        let blobs = Arc::clone(&self.preimage_blobs);
        let id = tokio::task::spawn_blocking(move || {
            let running = Running {
                scopes: in_flight.as_deref(),
                blobs: &blobs,
            };
            make_checkpoint(
                &git,
                &cache,
                &run_id,
                seq,
                parent.as_deref(),
                &message,
                running,
            )
        })
        .await
        .map_err(|err| CheckpointError::Join {
            message: err.to_string(),
        })??;
        self.advance(&id);
        if let Some(store) = &self.store {
            let record = CheckpointRecord {
                run_id: self.run_id.clone(),
                seq: id.seq,
                commit_id: id.commit.clone(),
                ref_name: id.ref_name.clone(),
                label: label.to_owned(),
                completed_agents: self.completed_agents,
                at: SystemTime::now(),
            };
            store
                .record_checkpoint(record)
                .await
                .map_err(|source| CheckpointError::Store {
                    run_id: self.run_id.clone(),
                    seq: id.seq,
                    commit: id.commit.clone(),
                    source: Box::new(source),
                })?;
        }
        Ok(id)
    }

    /// [`Checkpointer::checkpoint`] for synchronous callers: git only, no store record.
    pub fn checkpoint_blocking(&mut self, label: &str) -> Result<CheckpointId, CheckpointError> {
        let message = self.message(self.next_seq, label);
        let running = Running {
            scopes: self.in_flight.as_deref(),
            blobs: &self.preimage_blobs,
        };
        let id = make_checkpoint(
            &self.git,
            &self.cache,
            &self.run_id,
            self.next_seq,
            self.parent.as_deref(),
            &message,
            running,
        )?;
        self.advance(&id);
        Ok(id)
    }

    fn message(&self, seq: u64, label: &str) -> String {
        format!(
            "fanout checkpoint {seq} of run {}: {label}\n\nCompleted agents: {}\n",
            self.run_id, self.completed_agents
        )
    }

    fn advance(&mut self, id: &CheckpointId) {
        self.next_seq = id.seq + 1;
        self.parent = Some(id.commit.clone());
        self.latest = Some(id.clone());
    }
}

/// The running agents a checkpoint must account for, and the blob ids already known.
struct Running<'a> {
    scopes: Option<&'a InFlightScopes>,
    blobs: &'a Mutex<HashMap<String, String>>,
}

fn make_checkpoint(
    git: &Git,
    cache: &Mutex<HashCache>,
    run_id: &RunId,
    seq: u64,
    parent: Option<&str>,
    message: &str,
    running: Running<'_>,
) -> Result<CheckpointId, CheckpointError> {
    if let Some(scopes) = running.scopes {
        scopes.begin_capture();
    }
    let entries = snapshot_entries(git, Some(cache));
    let captured = running
        .scopes
        .map(InFlightScopes::end_capture)
        .unwrap_or_default();
    let mut entries = entries?;
    if !captured.is_empty() {
        as_before(git, run_id, &mut entries, &captured, running.blobs)?;
    }
    let tree = write_tree(git, &entries)?;
    let commit = commit_tree(git, &tree, parent, message)?;
    let ref_name = checkpoint_ref(run_id, seq);
    let mut update = git.command();
    update.args(["update-ref", "-m", "fanout checkpoint", "--stdin"]);
    let script = format!(
        "update {ref_name} {commit}\nupdate {} {commit}\n",
        latest_ref(run_id)
    );
    git.run(update, Some(script.as_bytes()))?;
    Ok(CheckpointId {
        run_id: run_id.to_owned(),
        seq,
        commit,
        tree,
        ref_name,
    })
}

/// Put each running agent's scope in `entries` back as its pre-image recorded it: recorded
/// files with their recorded contents and modes, anything else under the scope removed.
fn as_before(
    git: &Git,
    run_id: &RunId,
    entries: &mut BTreeMap<Vec<u8>, TreeEntry>,
    running: &[Arc<Preimage>],
    blobs: &Mutex<HashMap<String, String>>,
) -> Result<(), CheckpointError> {
    let scope_error = |agent_id: &AgentId, message: String| CheckpointError::InFlightScope {
        agent_id: agent_id.clone(),
        message,
    };
    // Contents that are no git blob yet (files changed since the base) go into the object
    // database in one batch, once per run.
    let mut known = blobs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let blob_dir = preimage::preimage_dir(git.root(), run_id).join("blobs");
    let mut missing: Vec<String> = Vec::new();
    for preimage in running {
        for entry in preimage.entries.values() {
            if let PreimageEntry::File {
                sha256,
                git_blob: None,
                ..
            } = entry
                && !known.contains_key(sha256)
                && !missing.contains(sha256)
            {
                missing.push(sha256.clone());
            }
        }
    }
    if !missing.is_empty() {
        // Content-addressed names: hex, never a newline.
        let files: Vec<PathBuf> = missing.iter().map(|sha256| blob_dir.join(sha256)).collect();
        let oids = hash_files(git, &files)?;
        known.extend(missing.into_iter().zip(oids));
    }
    for preimage in running {
        let scope = PathSet::new(&preimage.patterns)
            .map_err(|error| scope_error(&preimage.agent_id, error.to_string()))?;
        // What is under the scope now but was not before: created by the agent.
        let mut created: Vec<Vec<u8>> = Vec::new();
        for pattern in &preimage.patterns {
            let root = preimage::literal_root(pattern).into_bytes();
            for path in entries
                .range(root.clone()..)
                .map(|(path, _)| path)
                .take_while(|path| path.starts_with(&root))
            {
                if let Ok(relative) = std::str::from_utf8(path)
                    && scope.is_match(relative)
                    && !preimage.entries.contains_key(relative)
                {
                    created.push(path.clone());
                }
            }
        }
        for path in created {
            entries.remove(&path);
        }
        for (relative, entry) in &preimage.entries {
            let tree_entry = match entry {
                PreimageEntry::File {
                    sha256,
                    mode,
                    git_blob,
                    ..
                } => TreeEntry {
                    mode: if mode & 0o100 != 0 {
                        MODE_EXECUTABLE
                    } else {
                        MODE_FILE
                    },
                    oid: match git_blob {
                        Some(oid) => oid.clone(),
                        None => known.get(sha256).cloned().ok_or_else(|| {
                            scope_error(&preimage.agent_id, format!("no blob for {relative}"))
                        })?,
                    },
                },
                PreimageEntry::Symlink { target } => {
                    let key = format!("symlink\0{target}");
                    let oid = match known.get(&key) {
                        Some(oid) => oid.clone(),
                        None => {
                            let oid = hash_bytes(git, target.as_bytes())?;
                            known.insert(key, oid.clone());
                            oid
                        }
                    };
                    TreeEntry {
                        mode: MODE_SYMLINK,
                        oid,
                    }
                }
            };
            entries.insert(relative.as_bytes().to_vec(), tree_entry);
        }
    }
    Ok(())
}

/// `git commit-tree` (never signed; identity from [`crate::git`]).
pub(crate) fn commit_tree(
    git: &Git,
    tree: &str,
    parent: Option<&str>,
    message: &str,
) -> Result<String, GitError> {
    let mut command = git.command();
    command.args(["commit-tree", "--no-gpg-sign", tree]);
    if let Some(parent) = parent {
        command.args(["-p", parent]);
    }
    command.args(["-m", message]);
    git.run_text(command)
}

static INDEX_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A private, not-yet-existing index path under `.fanout/tmp/`.
fn temp_index(git: &Git) -> Result<PathBuf, CheckpointError> {
    let dir = crate::layout::tmp_dir(git.root());
    crate::layout::ensure_dir(git.root(), &dir).map_err(|error| CheckpointError::Io {
        what: error.what,
        path: error.path,
        source: error.io,
    })?;
    let n = INDEX_COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("index-{}-{n}", std::process::id()));
    remove_if_present(&path)?;
    Ok(path)
}

fn remove_if_present(path: &Path) -> Result<(), CheckpointError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(CheckpointError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn is_ours(path: &[u8]) -> bool {
    crate::layout::is_ours(path)
}

/// Commit-less snapshot of the working tree: blobs written, tree written, nothing else moved.
pub(crate) fn snapshot(git: &Git) -> Result<Snapshot, CheckpointError> {
    snapshot_cached(git, None)
}

/// [`snapshot`], reusing blob ids from `cache` for files whose inode, size, mode and times
/// are unchanged, and remembering the new ones.
pub(crate) fn snapshot_cached(
    git: &Git,
    cache: Option<&Mutex<HashCache>>,
) -> Result<Snapshot, CheckpointError> {
    let entries = snapshot_entries(git, cache)?;
    let tree = write_tree(git, &entries)?;
    Ok(Snapshot { tree, entries })
}

/// The working tree's entries, their blobs written (the part of a snapshot that reads the
/// tree); the tree object itself is left to the caller.
fn snapshot_entries(
    git: &Git,
    cache: Option<&Mutex<HashCache>>,
) -> Result<BTreeMap<Vec<u8>, TreeEntry>, CheckpointError> {
    let root = git.root().to_path_buf();
    let mut cache = cache.map(|c| c.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let hashed_at = now_ns();
    // Stat facts of files sent to hash-object, to cache once their ids are known.
    let mut fresh: HashMap<Vec<u8>, CachedHash> = HashMap::new();

    // Tracked paths (with gitlinks' commits) from the user's index, read-only.
    let mut command = git.read_only();
    command.args(["ls-files", "-z", "--stage"]);
    let staged = git.run(command, None)?;
    let mut paths: Vec<Vec<u8>> = Vec::new();
    let mut gitlinks: HashMap<Vec<u8>, String> = HashMap::new();
    for record in staged.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let (meta, path) = (&record[..tab], &record[tab + 1..]);
        let mut fields = meta.split(|b| *b == b' ');
        let mode = fields.next().unwrap_or_default();
        let oid = fields.next().unwrap_or_default();
        if mode == b"160000" {
            gitlinks.insert(path.to_vec(), String::from_utf8_lossy(oid).into_owned());
        }
        paths.push(path.to_vec());
    }
    let mut command = git.read_only();
    command.args(["ls-files", "-z", "--others", "--exclude-standard"]);
    let others = git.run(command, None)?;
    paths.extend(
        others
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec),
    );
    paths.sort();
    paths.dedup();
    // fanout's own files in the tree (a run's log) are never part of a checkpoint.
    let owned = crate::store::owned_paths(&root);
    if !owned.is_empty() {
        paths.retain(|path| !owned.contains(String::from_utf8_lossy(path).as_ref()));
    }

    let mut entries: BTreeMap<Vec<u8>, TreeEntry> = BTreeMap::new();
    // Regular files hashed in one `--stdin-paths` batch: (path, mode).
    let mut batch: Vec<(Vec<u8>, u32)> = Vec::new();
    for path in paths {
        // `dir/` is an untracked nested repository: not ours to snapshot.
        if is_ours(&path) || path.ends_with(b"/") {
            continue;
        }
        let full = root.join(std::ffi::OsStr::from_bytes(&path));
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            // Deleted (or a parent turned into a file): absent from the checkpoint.
            Err(err)
                if err.kind() == std::io::ErrorKind::NotFound
                    || err.kind() == std::io::ErrorKind::NotADirectory =>
            {
                continue;
            }
            Err(source) => {
                return Err(CheckpointError::Io {
                    what: "inspect",
                    path: full,
                    source,
                });
            }
        };
        let file_type = meta.file_type();
        if file_type.is_symlink() {
            let target = std::fs::read_link(&full).map_err(|source| CheckpointError::Io {
                what: "read the link",
                path: full.clone(),
                source,
            })?;
            let oid = hash_bytes(git, target.as_os_str().as_bytes())?;
            entries.insert(
                path,
                TreeEntry {
                    mode: MODE_SYMLINK,
                    oid,
                },
            );
        } else if file_type.is_file() {
            let mode = if meta.permissions().mode() & 0o100 != 0 {
                MODE_EXECUTABLE
            } else {
                MODE_FILE
            };
            if let Some(cache) = cache.as_deref() {
                use std::os::unix::fs::MetadataExt;
                let (mtime_ns, ctime_ns) = file_times(&meta);
                let facts = CachedHash {
                    inode: meta.ino(),
                    size: meta.len(),
                    mode,
                    mtime_ns,
                    ctime_ns,
                    oid: String::new(),
                };
                let unchanged = cache.entries.get(&path).filter(|hit| {
                    hit.inode == facts.inode
                        && hit.size == facts.size
                        && hit.mode == facts.mode
                        && hit.mtime_ns == facts.mtime_ns
                        && hit.ctime_ns == facts.ctime_ns
                });
                if let Some(hit) = unchanged {
                    entries.insert(
                        path,
                        TreeEntry {
                            mode,
                            oid: hit.oid.clone(),
                        },
                    );
                    continue;
                }
                if hashed_at - mtime_ns.max(ctime_ns) > RACY_WINDOW_NS {
                    fresh.insert(path.clone(), facts);
                }
            }
            batch.push((path, mode));
        } else if file_type.is_dir()
            && let Some(oid) = gitlinks.get(&path)
        {
            entries.insert(
                path,
                TreeEntry {
                    mode: MODE_GITLINK,
                    oid: oid.clone(),
                },
            );
        }
    }

    // `--stdin-paths` reads lines, strips a trailing CR and unquotes a leading `"`: absolute
    // paths never start with `"`; paths with a newline or CR are hashed one by one.
    let (plain, odd): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .partition(|(path, _)| !path.iter().any(|b| *b == b'\n' || *b == b'\r'));
    if !plain.is_empty() {
        let files: Vec<PathBuf> = plain
            .iter()
            .map(|(path, _)| root.join(std::ffi::OsStr::from_bytes(path)))
            .collect();
        let oids = hash_files(git, &files)?;
        for ((path, mode), oid) in plain.into_iter().zip(oids) {
            if let (Some(cache), Some(mut facts)) = (cache.as_deref_mut(), fresh.remove(&path)) {
                facts.oid = oid.clone();
                cache.entries.insert(path.clone(), facts);
            }
            entries.insert(path, TreeEntry { mode, oid });
        }
    }
    for (path, mode) in odd {
        let full = root.join(std::ffi::OsStr::from_bytes(&path));
        let bytes = std::fs::read(&full).map_err(|source| CheckpointError::Io {
            what: "read",
            path: full.clone(),
            source,
        })?;
        let oid = hash_bytes(git, &bytes)?;
        entries.insert(path, TreeEntry { mode, oid });
    }
    Ok(entries)
}

/// Store `bytes` as a blob (no filters: stdin is always hashed as is).
/// Write `files` (absolute paths without a newline or CR: `--stdin-paths` reads lines) into
/// the object database in one `git hash-object` and return their blob ids, in order.
fn hash_files(git: &Git, files: &[PathBuf]) -> Result<Vec<String>, GitError> {
    let mut input = Vec::new();
    for file in files {
        input.extend_from_slice(file.as_os_str().as_bytes());
        input.push(b'\n');
    }
    let mut command = git.command();
    command.args(["hash-object", "-w", "--no-filters", "--stdin-paths"]);
    let out = git.run(command, Some(&input))?;
    let oids: Vec<String> = out
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|oid| String::from_utf8_lossy(oid).into_owned())
        .collect();
    if oids.len() != files.len() {
        return Err(GitError::Unexpected {
            dir: git.root().to_path_buf(),
            args: "hash-object -w --no-filters --stdin-paths".to_owned(),
            detail: format!("{} object ids for {} files", oids.len(), files.len()),
        });
    }
    Ok(oids)
}

fn hash_bytes(git: &Git, bytes: &[u8]) -> Result<String, GitError> {
    let mut command = git.command();
    command.args(["hash-object", "-w", "--stdin"]);
    let out = git.run(command, Some(bytes))?;
    Ok(String::from_utf8_lossy(&out).trim().to_owned())
}

/// Write a tree of `entries` through a private index; the user's index is never touched.
pub(crate) fn write_tree(
    git: &Git,
    entries: &BTreeMap<Vec<u8>, TreeEntry>,
) -> Result<String, CheckpointError> {
    let index = temp_index(git)?;
    let result = (|| -> Result<String, CheckpointError> {
        let mut input = Vec::new();
        for (path, entry) in entries {
            input.extend_from_slice(format!("{:o} {}\t", entry.mode, entry.oid).as_bytes());
            input.extend_from_slice(path);
            input.push(0);
        }
        let mut command = git.command();
        command
            .env("GIT_INDEX_FILE", &index)
            .args(["update-index", "-z", "--index-info"]);
        git.run(command, Some(&input))?;
        let mut command = git.command();
        command.env("GIT_INDEX_FILE", &index).arg("write-tree");
        Ok(git.run_text(command)?)
    })();
    // A stale private index is harmless but untidy; the tree's fate decides the result.
    let _ = remove_if_present(&index);
    let _ = remove_if_present(&index.with_extension("lock"));
    result
}

/// The entries of a commit's tree, recursively, by path.
pub(crate) fn read_tree(git: &Git, commit: &str) -> Result<BTreeMap<Vec<u8>, TreeEntry>, GitError> {
    let mut command = git.read_only();
    command.args(["ls-tree", "-r", "-z", "--full-tree", commit]);
    let out = git.run(command, None)?;
    let mut entries = BTreeMap::new();
    for record in out.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let Some(tab) = record.iter().position(|b| *b == b'\t') else {
            continue;
        };
        let meta = String::from_utf8_lossy(&record[..tab]);
        let mut fields = meta.split(' ');
        let (Some(mode), Some(_kind), Some(oid)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(mode) = u32::from_str_radix(mode, 8) else {
            continue;
        };
        entries.insert(
            record[tab + 1..].to_vec(),
            TreeEntry {
                mode,
                oid: oid.to_owned(),
            },
        );
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_checkpoints_every_interval() {
        let mut policy = CheckpointPolicy::new(3, 1);
        let due: Vec<bool> = (0..7).map(|_| policy.record_completion(false)).collect();
        assert_eq!(due, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn policy_tightens_after_a_destructive_completion() {
        let mut policy = CheckpointPolicy::new(10, 2);
        assert!(!policy.record_completion(false));
        // Two completions since the last checkpoint, one destructive: due at 2.
        assert!(policy.record_completion(true));
        assert!(!policy.record_completion(true));
        assert!(policy.record_completion(false));
        assert!(policy.due(10, 0));
        assert!(!policy.due(1, 1));
        let immediate = CheckpointPolicy::new(10, 1);
        assert!(immediate.due(1, 1));
    }

    #[test]
    fn policy_clamps_intervals() {
        let policy = CheckpointPolicy::new(0, 50);
        assert_eq!((policy.interval, policy.destructive_interval), (1, 1));
    }

    #[test]
    fn run_ids_must_make_safe_refs() {
        assert!(validate_run_id(&"20260131T093000Z-1a2b3c".into()).is_ok());
        for bad in ["", "a/b", "a..b", ".a", "-a", "a.lock", "a b", "a~1", "a:b"] {
            assert!(validate_run_id(&bad.into()).is_err(), "{bad:?} accepted");
        }
    }
}
