//! A unit's tree on a worker: the run's base from its bundle, once per run in the cache, then
//! per unit a fresh repository borrowing the base's objects, checked out at the base commit,
//! with its dependencies' committed patches applied in commit order; and afterwards the patch
//! of what the agent changed inside its write scope.
//!
//! Everything here is ours: repositories we initialised in the cache, with git's hardened
//! commands ([`crate::git::hardened`]: no system or global config, no hooks, no external
//! programs). The user's repository is never touched and never needed.

use std::path::{Path, PathBuf};

use crate::git::{Git, GitError};
use crate::ids::{AgentId, RunId};
use crate::policy::PathSet;

/// Why a unit's tree could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("cache {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("the run's base bundle does not hold its base commit {commit}")]
    BaseMissing { commit: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A name safe as one path component.
fn component(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect::<String>()
        .trim_start_matches('.')
        .to_owned()
}

/// `<cache>/<run>/`.
pub fn run_dir(cache: &Path, run_id: &RunId) -> PathBuf {
    cache.join(component(run_id.as_str()))
}

fn git(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Result<Vec<u8>, TreeError> {
    let mut command = crate::git::hardened(dir, false);
    command.args(args);
    Ok(Git::at(dir).run(command, stdin)?)
}

/// The run's base repository in the cache (`<cache>/<run>/base`), made from `bundle` the first
/// time; its path. Holds `base_commit` checked out.
pub fn base_repository(
    cache: &Path,
    run_id: &RunId,
    bundle: &[u8],
    base_commit: &str,
) -> Result<PathBuf, TreeError> {
    let run = run_dir(cache, run_id);
    let base = run.join("base");
    if base.join(".git").is_dir() && Git::at(&base).resolve_commit(base_commit)?.is_some() {
        return Ok(base);
    }
    // A half-made base from a worker that died while making it is made again.
    if base.exists() {
        std::fs::remove_dir_all(&base).map_err(io(&base))?;
    }
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    let bundle_path = run.join("base.bundle");
    std::fs::write(&bundle_path, bundle).map_err(io(&bundle_path))?;
    git(&base, &["init", "-q"], None)?;
    let bundle_arg = bundle_path.to_string_lossy().into_owned();
    git(&base, &["bundle", "unbundle", &bundle_arg], None)?;
    if Git::at(&base).resolve_commit(base_commit)?.is_none() {
        return Err(TreeError::BaseMissing {
            commit: base_commit.to_owned(),
        });
    }
    Ok(base)
}

/// A fresh tree for one attempt of `agent_id` (`<cache>/<run>/units/<agent>-<attempt>`):
/// `base_commit` checked out, then `patches` (its dependencies', in commit order) applied and
/// committed, so the agent's own change is the difference from `HEAD`.
pub fn unit_tree(
    cache: &Path,
    run_id: &RunId,
    agent_id: &AgentId,
    attempt: u32,
    base: &Path,
    base_commit: &str,
    patches: &[Vec<u8>],
) -> Result<PathBuf, TreeError> {
    let dir = run_dir(cache, run_id)
        .join("units")
        .join(format!("{}-{attempt}", component(agent_id.as_str())));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    git(&dir, &["init", "-q"], None)?;
    // Borrow the base's objects instead of copying them.
    let alternates = dir.join(".git/objects/info/alternates");
    let objects = base.join(".git/objects");
    std::fs::write(&alternates, format!("{}\n", objects.display())).map_err(io(&alternates))?;
    git(&dir, &["checkout", "-q", "--detach", base_commit], None)?;
    for patch in patches.iter().filter(|patch| !patch.is_empty()) {
        git(&dir, &["apply", "--index", "--binary", "-"], Some(patch))?;
        git(
            &dir,
            &[
                "commit",
                "-q",
                "--no-verify",
                "-m",
                "a dependency's committed work",
            ],
            None,
        )?;
    }
    Ok(dir)
}

/// `git diff` of the staged change as a unit's patch: binary, no renames, full blob ids (the
/// revision and the paths follow).
pub(super) const PATCH_DIFF: [&str; 7] = [
    "diff",
    "--cached",
    "--no-ext-diff",
    "--no-textconv",
    "--binary",
    "--no-renames",
    "--full-index",
];

/// What the agent changed in `dir` inside `scope`, as a binary patch against `HEAD` (empty
/// when it changed nothing there). Changes outside the scope are left out: the toolbox
/// refuses them, so none is expected.
pub fn scope_patch(dir: &Path, scope: &PathSet) -> Result<Vec<u8>, TreeError> {
    git(dir, &["add", "-A", "--", "."], None)?;
    let names = git(
        dir,
        &[
            "diff",
            "--cached",
            "--name-only",
            "--no-renames",
            "-z",
            "HEAD",
        ],
        None,
    )?;
    let mut args: Vec<String> = PATCH_DIFF
        .iter()
        .chain(&["HEAD", "--"])
        .map(|arg| (*arg).to_owned())
        .collect();
    let before = args.len();
    for name in names
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
    {
        let name = String::from_utf8_lossy(name);
        if scope.is_match(&name) {
            args.push(format!(":(literal){name}"));
        }
    }
    if args.len() == before {
        return Ok(Vec::new());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    git(dir, &args, None)
}

/// Remove a unit's tree (best effort: the cache is ours to clean later).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
