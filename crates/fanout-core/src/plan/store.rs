//! Reviewed plans on disk: `.fanout/runs/<run_id>/plan.json` and its SHA-256.
//!
//! The saved file is the plan exactly as validated (adjusted modes included), pretty-printed
//! with a trailing newline; `plan.sha256` beside it holds the hash of those bytes. `fanout run
//! --plan FILE` loads a file, hashes it and re-validates it: an edited plan is accepted only
//! if it still passes, and the report shows whether the hash still matches the review.
//!
//! `.fanout/` gets a `.gitignore` of `*` on first use, so our own files never show up in
//! `git status` and a dry run leaves the repository's tracked tree and index as they were.

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub use crate::ids::RunId;

use super::PlanError;
use super::types::{Plan, parse_plan};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes a plan is saved as.
pub fn plan_bytes(plan: &Plan) -> Result<Vec<u8>, PlanError> {
    let mut bytes = serde_json::to_vec_pretty(plan).map_err(|err| PlanError::PlanFile {
        path: PathBuf::from("plan.json"),
        message: err.to_string(),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// `sha256:<hex>` of some bytes.
pub fn hash_bytes(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// Where a plan was saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SavedPlan {
    pub run_id: RunId,
    pub path: PathBuf,
    pub hash: String,
}

/// Save `plan` under `<repo>/.fanout/runs/<run_id>/plan.json` with its hash.
pub fn save_plan(repo: &Path, run_id: &RunId, plan: &Plan) -> Result<SavedPlan, PlanError> {
    let dir = crate::layout::run_dir(repo, run_id);
    let failed = |error: crate::layout::LayoutError| PlanError::PlanFile {
        path: error.path.clone(),
        message: error.to_string(),
    };
    crate::layout::ensure_dir(repo, &dir).map_err(failed)?;
    let bytes = plan_bytes(plan)?;
    let hash = hash_bytes(&bytes);
    let path = crate::layout::plan_file(repo, run_id);
    let hash_path = dir.join("plan.sha256");
    let hash_line = format!("{hash}\n");
    crate::layout::write_atomic_all(&[(&path, &bytes), (&hash_path, hash_line.as_bytes())])
        .map_err(failed)?;
    Ok(SavedPlan {
        run_id: run_id.clone(),
        path,
        hash,
    })
}

/// A plan read back from a file.
#[derive(Debug, Clone)]
pub struct LoadedPlan {
    pub plan: Plan,
    /// Hash of the file's bytes as they are now.
    pub hash: String,
    /// The hash recorded at review (`plan.sha256` beside the file), if there is one.
    pub reviewed_hash: Option<String>,
}

impl LoadedPlan {
    /// The file was changed after it was saved by a review.
    pub fn edited_since_review(&self) -> bool {
        self.reviewed_hash
            .as_ref()
            .is_some_and(|reviewed| *reviewed != self.hash)
    }
}

/// Largest plan file we read.
pub const MAX_PLAN_BYTES: u64 = 64 * 1024 * 1024;

/// Read a plan file (and its recorded hash, if any).
pub fn load_plan(path: &Path) -> Result<LoadedPlan, PlanError> {
    let error = |message: String| PlanError::PlanFile {
        path: path.to_path_buf(),
        message,
    };
    let size = std::fs::metadata(path)
        .map_err(|err| error(err.to_string()))?
        .len();
    if size > MAX_PLAN_BYTES {
        return Err(error(format!(
            "{size} bytes; a plan file may be at most {MAX_PLAN_BYTES}"
        )));
    }
    let bytes = std::fs::read(path).map_err(|err| error(err.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|err| error(format!("not valid JSON: {err}")))?;
    let plan = parse_plan(&value).map_err(error)?;
    let reviewed_hash = path
        .parent()
        .map(|dir| dir.join("plan.sha256"))
        .and_then(|hash_path| std::fs::read_to_string(hash_path).ok())
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty());
    Ok(LoadedPlan {
        plan,
        hash: hash_bytes(&bytes),
        reviewed_hash,
    })
}
