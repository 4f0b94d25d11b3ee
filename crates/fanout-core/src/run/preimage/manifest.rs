//! The manifest format: what a pre-image records ([`Preimage`], [`Entry`]), where manifest
//! files live, and reading and writing them (as files or as the run store's JSON).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{PreimageError, hex};
use crate::ids::{AgentId, RunId};

/// The manifest format this build writes (2: entries may point at a git blob).
pub const MANIFEST_VERSION: u32 = 2;
/// The oldest manifest format this build reads.
const OLDEST_MANIFEST_VERSION: u32 = 1;

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
        /// base checkpoint: then no copy is kept under `blobs/` (see
        /// [`BaseBlobs`](super::BaseBlobs)).
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
    pub run_id: RunId,
    pub agent_id: AgentId,
    /// The write scope's entries, as the agent's policy compiles them.
    pub patterns: Vec<String>,
    /// Repository-relative path (with `/`) → what it was.
    pub entries: BTreeMap<String, Entry>,
    /// Directories that existed where the scope could create files (so directories the agent
    /// created can be told apart and removed).
    pub dirs: BTreeSet<String>,
}

/// `<repo>/.fanout/runs/<run_id>/preimages`.
pub fn preimage_dir(repo: &Path, run_id: &RunId) -> PathBuf {
    crate::store::run_dir(repo, run_id).join("preimages")
}

/// The manifest's path for `agent_id` (ids outside `[A-Za-z0-9._-]` are hex-encoded).
pub fn manifest_path(repo: &Path, run_id: &RunId, agent_id: &AgentId) -> PathBuf {
    let agent_id = agent_id.as_str();
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
pub fn load(
    repo: &Path,
    run_id: &RunId,
    agent_id: &AgentId,
) -> Result<Option<Preimage>, PreimageError> {
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
        path: PathBuf::from(preimage.agent_id.as_str()),
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
