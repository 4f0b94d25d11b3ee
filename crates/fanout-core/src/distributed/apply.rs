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

use std::path::Path;
use std::time::SystemTime;

use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::store::{Store, StoreError, StoreLocation, StoreReader, UnitRow, UnitState};

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

/// Apply every committed, not yet applied patch of `run_id` whose predecessors in commit
/// order are all applied, to the work tree at `repo`, recording each. With `recheck`, patches
/// recorded as applied are checked against this tree too (a resume in another clone of the
/// repository, which holds none of them yet, or only some).
pub async fn apply_committed(
    store: &Store,
    location: &StoreLocation,
    run_id: &RunId,
    repo: &Path,
    recheck: bool,
) -> Result<Applied, ApplyError> {
    let units = {
        let location = location.clone();
        let run = run_id.clone();
        // States first; then the patches of only the units this pass applies.
        tokio::task::spawn_blocking(move || {
            let reader = StoreReader::open_at(&location)?;
            let mut units = in_commit_order(reader.unit_states(&run)?);
            units.retain(|unit| unit.applied_at.is_none() || recheck);
            let wanted: Vec<AgentId> = units
                .iter()
                .filter(|unit| unit.state == UnitState::Committed)
                .map(|unit| unit.agent_id.clone())
                .collect();
            let mut patches = reader.unit_patches(&run, &wanted)?;
            for unit in &mut units {
                unit.patch = patches.remove(&unit.agent_id);
            }
            Ok::<_, StoreError>(units)
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
    for unit in units {
        let patch = unit.patch.clone().unwrap_or_default();
        if deletes_or_renames(&patch) {
            done.destructive.push(unit.agent_id.clone());
        }
        if !patch.is_empty() && unit.state == UnitState::Committed {
            let root = repo.to_path_buf();
            let agent = unit.agent_id.clone();
            let recognised = tokio::task::spawn_blocking(move || apply_once(&root, &agent, &patch))
                .await
                .map_err(|_| StoreError::WriterClosed {
                    what: "a patch's application",
                })??;
            if recognised {
                done.recognised.push(unit.agent_id.clone());
            } else {
                done.applied.push(unit.agent_id.clone());
            }
        }
        if unit.applied_at.is_none() {
            store
                .mark_unit_applied(run_id, &unit.agent_id, SystemTime::now())
                .await?;
        }
    }
    Ok(done)
}

/// Committed units (successes and failures) in commit order, up to the first gap: a unit
/// whose predecessor is not committed yet waits for it.
fn in_commit_order(units: Vec<UnitRow>) -> Vec<UnitRow> {
    let mut committed: Vec<UnitRow> = units
        .into_iter()
        .filter(|unit| unit.commit_seq.is_some())
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

/// Apply `patch` at `repo` unless the tree already holds it; whether it did.
fn apply_once(repo: &Path, agent_id: &AgentId, patch: &[u8]) -> Result<bool, ApplyError> {
    let git = Git::open(repo)?;
    let mut forward = git.command();
    forward.args(["apply", "--binary", "--check", "-"]);
    match git.run(forward, Some(patch)) {
        Ok(_) => {
            let mut apply = git.command();
            apply.args(["apply", "--binary", "-"]);
            git.run(apply, Some(patch))?;
            Ok(false)
        }
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
