//! The coordinator's side of a unit's commit: its patch applied to the user's repository, in
//! the run's commit order, exactly once.
//!
//! Exactly once across a coordinator crash: a patch is applied, then its application is
//! recorded (`units.applied_at`). A coordinator that died between the two finds the patch
//! unrecorded but already in the tree; it recognises it because the patch applies in
//! reverse there (the tree holds its post-image) and records it without applying it again.
//! Concurrent units' write scopes are disjoint (plan validation), and a unit's dependencies
//! commit before it, so applying in commit order never meets a conflict in a tree nobody
//! else edits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::store::{Store, StoreError, StoreLocation, StoreReader, UnitRow, UnitState};

/// One reading connection to the store, kept across the coordinator's passes (on
/// PostgreSQL a connection is a server process: one per pass, twenty passes a second, was
/// most of the server's work); opened again after an error.
#[derive(Debug, Clone)]
pub struct PassReader {
    location: StoreLocation,
    open: Arc<Mutex<Option<StoreReader>>>,
}

impl PassReader {
    pub fn new(location: StoreLocation) -> PassReader {
        PassReader {
            location,
            open: Arc::default(),
        }
    }

    /// `read` with the kept connection (blocking: call it off the async runtime's threads
    /// when it may take long).
    pub fn with<T>(
        &self,
        read: impl FnOnce(&StoreReader) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut open = crate::retry::lock(&self.open);
        let reader = match open.take() {
            Some(reader) => reader,
            None => StoreReader::open_at(&self.location)?,
        };
        let result = read(&reader);
        if result.is_ok() {
            *open = Some(reader);
        }
        result
    }
}

/// Why a committed patch could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("run store: {0}")]
    Store(#[from] StoreError),
    #[error("the committed patch of {agent_id} applies neither forward nor in reverse: {detail}")]
    Conflict { agent_id: AgentId, detail: String },
}

/// What one pass applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Patches applied now, in commit order.
    pub applied: Vec<AgentId>,
    /// Patches found already in the tree (a coordinator that died before recording them).
    pub recognised: Vec<AgentId>,
    /// Of both, those that delete or rename a file (which tightens the checkpoint interval,
    /// as a local agent's deletion does).
    pub destructive: Vec<AgentId>,
}

/// Whether a patch deletes or renames a file.
fn deletes_or_renames(patch: &[u8]) -> bool {
    patch
        .split(|byte| *byte == b'\n')
        .any(|line| line.starts_with(b"deleted file mode ") || line.starts_with(b"rename from "))
}

/// What one pass of the [`Applier`] did, and every unit of the run as it read them.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    pub applied: Applied,
    /// The run's units in enqueue order, without patches. A unit this process applied has
    /// `applied_at` set even while the record of it is still on its way to the store.
    pub units: Vec<UnitRow>,
}

/// The coordinator's side of the commits of one run: each pass applies every committed, not
/// yet applied patch whose predecessors in commit order are all applied, to the work tree,
/// and records the applications. The records go to the store behind the passes (a write
/// may wait on a busy store, e.g. SQLite's lock while workers commit a burst): the next
/// pass does not wait for them, and knows what this process applied. [`Applier::settle`]
/// waits for all of them.
#[derive(Debug)]
pub struct Applier {
    store: Store,
    reader: PassReader,
    run_id: RunId,
    repo: PathBuf,
    /// Units this process applied (or recognised); their record may still be on its way.
    applied: HashSet<AgentId>,
    /// Records of applications on their way to the store.
    records: tokio::task::JoinSet<Result<(), StoreError>>,
}

impl Applier {
    pub fn new(store: Store, reader: PassReader, run_id: RunId, repo: PathBuf) -> Applier {
        Applier {
            store,
            reader,
            run_id,
            repo,
            applied: HashSet::new(),
            records: tokio::task::JoinSet::new(),
        }
    }

    /// One pass. With `recheck`, patches recorded as applied are checked against this tree
    /// too (a resume in another clone of the repository, which holds none of them yet, or
    /// only some).
    pub async fn pass(&mut self, recheck: bool) -> Result<Pass, ApplyError> {
        // A record that failed fails the pass that sees it.
        while let Some(recorded) = self.records.try_join_next() {
            recorded.map_err(|_| StoreError::WriterClosed {
                what: "the patches' application",
            })??;
        }
        let (mut units, mut pending) = {
            let reader = self.reader.clone();
            let run = self.run_id.clone();
            let applied = self.applied.clone();
            // States first; then the patches of only the units this pass applies.
            tokio::task::spawn_blocking(move || {
                reader.with(|reader| {
                    let units = reader.unit_states(&run)?;
                    let mut pending = in_commit_order(&units);
                    pending.retain(|unit| {
                        recheck || (unit.applied_at.is_none() && !applied.contains(&unit.agent_id))
                    });
                    let wanted: Vec<AgentId> = pending
                        .iter()
                        .filter(|unit| unit.state == UnitState::Committed)
                        .map(|unit| unit.agent_id.clone())
                        .collect();
                    let mut patches = reader.unit_patches(&run, &wanted)?;
                    for unit in &mut pending {
                        unit.patch = patches.remove(&unit.agent_id);
                    }
                    Ok::<_, StoreError>((units, pending))
                })
            })
            .await
            .map_err(|error| StoreError::WriterClosed {
                what: if error.is_panic() {
                    "a units read (it panicked)"
                } else {
                    "a units read"
                },
            })??
        };
        let mut done = Applied::default();
        let mut batch = Batch::default();
        let mut marked: Vec<AgentId> = Vec::new();
        for unit in &mut pending {
            let patch = unit.patch.take().unwrap_or_default();
            if deletes_or_renames(&patch) {
                done.destructive.push(unit.agent_id.clone());
            }
            if !patch.is_empty() && unit.state == UnitState::Committed {
                let files = touched(&patch);
                if !batch.takes(&files) {
                    batch.apply(&self.repo, recheck, &mut done).await?;
                }
                batch.add(unit.agent_id.clone(), patch, files);
            }
            if unit.applied_at.is_none() && !self.applied.contains(&unit.agent_id) {
                marked.push(unit.agent_id.clone());
            }
        }
        batch.apply(&self.repo, recheck, &mut done).await?;
        // Recorded after every patch of the pass is in the tree: a coordinator that dies in
        // between finds them there on resume, and recognises them.
        let now = SystemTime::now();
        if !marked.is_empty() {
            self.applied.extend(marked.iter().cloned());
            let store = self.store.clone();
            let run = self.run_id.clone();
            self.records
                .spawn(async move { store.mark_units_applied(&run, &marked, now).await });
        }
        for unit in &mut units {
            if unit.applied_at.is_none() && self.applied.contains(&unit.agent_id) {
                unit.applied_at = Some(now);
            }
        }
        Ok(Pass {
            applied: done,
            units,
        })
    }

    /// Wait until every application is recorded in the store.
    pub async fn settle(&mut self) -> Result<(), ApplyError> {
        while let Some(recorded) = self.records.join_next().await {
            recorded.map_err(|_| StoreError::WriterClosed {
                what: "the patches' application",
            })??;
        }
        Ok(())
    }
}

/// The `diff --git` lines of a patch: one per file it touches, the same line for the same
/// file in any patch (`git diff --no-renames` writes them all alike).
fn touched(patch: &[u8]) -> Vec<Vec<u8>> {
    patch
        .split(|byte| *byte == b'\n')
        .filter(|line| line.starts_with(b"diff --git "))
        .map(<[u8]>::to_vec)
        .collect()
}

/// Consecutive patches in commit order that touch no file in common, applied with one
/// `git apply` (which applies every patch of its input to the tree as it was, so two
/// patches of one file cannot share a batch).
#[derive(Default)]
struct Batch {
    agents: Vec<AgentId>,
    patches: Vec<Vec<u8>>,
    files: std::collections::HashSet<Vec<u8>>,
}

impl Batch {
    fn takes(&self, files: &[Vec<u8>]) -> bool {
        files.iter().all(|file| !self.files.contains(file))
    }

    fn add(&mut self, agent: AgentId, patch: Vec<u8>, files: Vec<Vec<u8>>) {
        self.agents.push(agent);
        self.patches.push(patch);
        self.files.extend(files);
    }

    /// Apply the batch at `repo` and empty it. All at once when it can (`git apply` is
    /// atomic: all or nothing); otherwise, and always when rechecking a resumed run's
    /// patches, one by one, each applied or recognised as already there.
    async fn apply(
        &mut self,
        repo: &Path,
        recheck: bool,
        done: &mut Applied,
    ) -> Result<(), ApplyError> {
        let agents = std::mem::take(&mut self.agents);
        let patches = std::mem::take(&mut self.patches);
        self.files.clear();
        if agents.is_empty() {
            return Ok(());
        }
        let root = repo.to_path_buf();
        let named = agents.clone();
        let results = tokio::task::spawn_blocking(move || {
            if !recheck && patches.len() > 1 {
                let git = Git::open(&root)?;
                let mut apply = git.command();
                apply.args(["apply", "--binary", "-"]);
                match git.run(apply, Some(&patches.concat())) {
                    Ok(_) => return Ok(vec![false; patches.len()]),
                    Err(GitError::Failed { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            named
                .iter()
                .zip(&patches)
                .map(|(agent, patch)| apply_once(&root, agent, patch))
                .collect::<Result<Vec<bool>, ApplyError>>()
        })
        .await
        .map_err(|_| StoreError::WriterClosed {
            what: "a patch's application",
        })??;
        for (agent, recognised) in agents.into_iter().zip(results) {
            if recognised {
                done.recognised.push(agent);
            } else {
                done.applied.push(agent);
            }
        }
        Ok(())
    }
}

/// Committed units (successes and failures) in commit order, up to the first gap: a unit
/// whose predecessor is not committed yet waits for it.
fn in_commit_order(units: &[UnitRow]) -> Vec<UnitRow> {
    let mut committed: Vec<UnitRow> = units
        .iter()
        .filter(|unit| unit.commit_seq.is_some())
        .cloned()
        .collect();
    committed.sort_by_key(|unit| unit.commit_seq);
    let mut out = Vec::with_capacity(committed.len());
    for (expected, unit) in (1u64..).zip(committed) {
        if unit.commit_seq != Some(expected) {
            break;
        }
        out.push(unit);
    }
    out
}

/// Apply `patch` at `repo` unless the tree already holds it; whether it did. (`git apply`
/// changes nothing when it fails, so a failed forward application is then tried in reverse.)
fn apply_once(repo: &Path, agent_id: &AgentId, patch: &[u8]) -> Result<bool, ApplyError> {
    let git = Git::open(repo)?;
    let mut forward = git.command();
    forward.args(["apply", "--binary", "-"]);
    match git.run(forward, Some(patch)) {
        Ok(_) => Ok(false),
        Err(GitError::Failed { stderr, .. }) => {
            let mut reverse = git.command();
            reverse.args(["apply", "--binary", "--check", "--reverse", "-"]);
            match git.run(reverse, Some(patch)) {
                Ok(_) => Ok(true),
                Err(_) => Err(ApplyError::Conflict {
                    agent_id: agent_id.clone(),
                    detail: stderr,
                }),
            }
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_that_deletes_or_renames_is_destructive() {
        let deletion = b"diff --git a/x b/x\ndeleted file mode 100644\nindex 1..0\n";
        let rename = b"diff --git a/x b/y\nsimilarity index 100%\nrename from x\nrename to y\n";
        let edit = b"diff --git a/x b/x\nindex 1..2 100644\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+deleted file mode 1\n";
        assert!(deletes_or_renames(deletion));
        assert!(deletes_or_renames(rename));
        assert!(!deletes_or_renames(edit));
    }
}
