//! A worker's one working tree per run, shared by the run's units that depend on nothing.
//!
//! The local engine runs every agent of a run in one tree; plan validation keeps concurrent
//! agents' write scopes disjoint, and the toolbox and the sandbox keep each agent's changes
//! inside its scope. A worker does the same for units without dependencies: the run's base
//! is checked out once (`<cache>/<run>/tree`), every such unit runs in it, and a unit's
//! patch is the difference from the base inside its write scope. A unit that depends on
//! others still gets a tree of its own ([`super::tree::unit_tree`]), since its
//! dependencies' patches are not in this one.
//!
//! What stays in the tree. A committed unit's change stays (it is the run's, as the
//! coordinator applies it); a unit that failed, was cancelled or lost its lease has its
//! scope put back as the base has it ([`SharedTree::revert`]), so a later attempt, here or
//! after a takeover, starts from the base. No other unit can have touched that scope: only
//! units related by dependencies share paths, and those never run here together.
//!
//! Reading a unit's change never writes the tree's own index: each reading copies it to an
//! index file of the unit's (`GIT_INDEX_FILE`), stages the scope's roots there and diffs
//! them against the base commit, so units finishing at once never wait on `index.lock`.
//!
//! Most units need no git at all. A scope of plain paths that are all text files of the base
//! (the common shape: an agent owns a few files) is read when the unit starts
//! ([`SharedTree::snapshot`]); afterwards its patch is written here from the two versions:
//! a unified diff with git's headers (blob ids included), which `git apply` takes as it
//! takes git's own. Anything else (a new file, a directory, a binary or non-UTF-8 file, a
//! mode change, a path git would quote, a base with `.gitattributes`, whose filters can make
//! a file differ from its blob) is read by git, as above.
//!
//! One process at a time: the tree is held with an exclusive lock on `<cache>/<run>/tree.lock`
//! for the worker's life. A second worker on the same cache does not get it and makes a tree
//! per unit instead. A tree left by a worker that died is put back to the base (`reset
//! --hard`, `clean -ffdx`) by the next one to take it.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::tree::{TreeError, run_dir};
use crate::git::{Git, GitError};
use crate::ids::RunId;
use crate::policy::PathSet;
use crate::tools::RepoFacts;

/// A run's shared tree on this worker (see the module docs).
#[derive(Debug)]
pub struct SharedTree {
    dir: PathBuf,
    base_commit: String,
    /// Every path of the base, with its ancestor directories.
    base_paths: HashSet<String>,
    /// Every file of the base: its mode and blob id.
    base_files: HashMap<String, (String, String)>,
    /// Patches may be written without git (see the module docs).
    plain_diffs: bool,
    /// The toolbox's view of the tree, one for every unit in it, as one local run has one:
    /// commands' settlements leave alone what other units wrote meanwhile.
    facts: RepoFacts,
    /// The agents with an attempt running in the tree, each with its unit's token.
    claims: std::sync::Mutex<HashMap<String, u64>>,
    _lock: File,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn git(dir: &Path, index: Option<&Path>, args: &[&str]) -> Result<Vec<u8>, TreeError> {
    let mut command = crate::git::hardened(dir, false);
    if let Some(index) = index {
        command.env("GIT_INDEX_FILE", index);
    }
    command.args(args);
    Ok(Git::at(dir).run(command, None)?)
}

/// A copy of the tree's index that a unit stages into; removed when dropped.
struct UnitIndex(PathBuf);

impl UnitIndex {
    fn copy(dir: &Path, name: &str) -> Result<UnitIndex, TreeError> {
        let git_dir = dir.join(".git");
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = git_dir.join(format!("fanout-index-{safe}"));
        let source = git_dir.join("index");
        std::fs::copy(&source, &path).map_err(io(&source))?;
        Ok(UnitIndex(path))
    }
}

impl Drop for UnitIndex {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl SharedTree {
    /// The run's shared tree in `cache`, made from the base repository `base` (or put back
    /// to `base_commit` if a worker left one); `None` when another live process holds it.
    pub fn open(
        cache: &Path,
        run_id: &RunId,
        base: &Path,
        base_commit: &str,
    ) -> Result<Option<SharedTree>, TreeError> {
        let run = run_dir(cache, run_id);
        std::fs::create_dir_all(&run).map_err(io(&run))?;
        let lock_path = run.join("tree.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(source)) => {
                return Err(TreeError::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        let dir = run.join("tree");
        let reused = dir.join(".git").is_dir()
            && git(&dir, None, &["reset", "-q", "--hard", base_commit]).is_ok()
            && git(&dir, None, &["clean", "-q", "-ffdx"]).is_ok();
        if !reused {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            git(&dir, None, &["init", "-q"])?;
            // Borrow the base's objects instead of copying them.
            let alternates = dir.join(".git/objects/info/alternates");
            let objects = base.join(".git/objects");
            std::fs::write(&alternates, format!("{}\n", objects.display()))
                .map_err(io(&alternates))?;
            git(&dir, None, &["checkout", "-q", "--detach", base_commit])?;
        }
        // `<mode> <blob> <stage>\t<path>`, NUL-terminated.
        let listed = git(&dir, None, &["ls-files", "-s", "-z"])?;
        let mut base_paths = HashSet::new();
        let mut base_files = HashMap::new();
        for entry in listed
            .split(|byte| *byte == 0)
            .filter(|entry| !entry.is_empty())
        {
            let entry = String::from_utf8_lossy(entry);
            let Some((info, path)) = entry.split_once('\t') else {
                continue;
            };
            let mut info = info.split(' ');
            let (Some(mode), Some(blob)) = (info.next(), info.next()) else {
                continue;
            };
            for (at, _) in path.match_indices('/') {
                base_paths.insert(path[..at].to_owned());
            }
            base_files.insert(path.to_owned(), (mode.to_owned(), blob.to_owned()));
            base_paths.insert(path.to_owned());
        }
        let attributes = base_files
            .keys()
            .any(|path| path == ".gitattributes" || path.ends_with("/.gitattributes"));
        // Blob ids written here are SHA-1 ones.
        let plain_diffs = !attributes && base_commit.len() == 40;
        let facts = RepoFacts::scan(&dir);
        Ok(Some(SharedTree {
            dir,
            base_commit: base_commit.to_owned(),
            base_paths,
            base_files,
            plain_diffs,
            facts,
            claims: std::sync::Mutex::default(),
            _lock: lock,
        }))
    }

    /// Take the scope of `agent` for the unit `token`: false when another unit of this
    /// worker runs that agent here (a lease it lost and took again while the first attempt
    /// had not stopped yet), whose changes and put-back would mix with this one's; that unit
    /// then runs in a tree of its own.
    pub fn claim(&self, agent: &str, token: u64) -> bool {
        let mut claims = crate::retry::lock(&self.claims);
        match claims.get(agent) {
            Some(held) => *held == token,
            None => {
                claims.insert(agent.to_owned(), token);
                true
            }
        }
    }

    /// Whether the unit `token` holds the scope of `agent`.
    pub fn holds(&self, agent: &str, token: u64) -> bool {
        crate::retry::lock(&self.claims).get(agent) == Some(&token)
    }

    /// Give back what [`SharedTree::claim`] took.
    pub fn release(&self, agent: &str, token: u64) {
        let mut claims = crate::retry::lock(&self.claims);
        if claims.get(agent) == Some(&token) {
            claims.remove(agent);
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn facts(&self) -> &RepoFacts {
        &self.facts
    }

    /// The scope's roots as literal pathspecs, leaving out those that are neither in the
    /// base nor on disk (nothing can have changed there, and git refuses a pathspec that
    /// matches nothing); empty when nothing in the scope can have changed.
    fn pathspecs(&self, scope: &PathSet) -> Vec<String> {
        let roots = scope.roots();
        if roots.iter().any(String::is_empty) {
            return vec![".".to_owned()];
        }
        roots
            .into_iter()
            .filter(|root| {
                self.base_paths.contains(root) || self.dir.join(root).symlink_metadata().is_ok()
            })
            .map(|root| format!(":(literal){root}"))
            .collect()
    }

    /// Stage the scope's roots into `index`. A root that git will not stage by name (a path
    /// the tree ignores) falls back to staging the whole tree, which skips ignored paths.
    fn stage(&self, index: &Path, pathspecs: &[String]) -> Result<(), TreeError> {
        let mut args = vec!["add", "-A", "--"];
        args.extend(pathspecs.iter().map(String::as_str));
        match git(&self.dir, Some(index), &args) {
            Ok(_) => Ok(()),
            Err(TreeError::Git(GitError::Failed { .. })) => {
                git(&self.dir, Some(index), &["add", "-A", "--", "."]).map(|_| ())
            }
            Err(error) => Err(error),
        }
    }

    /// What changed in `scope` since the base, as `(status, path)` with git's status letter
    /// (`A` added, `D` deleted, `M` modified, `T` type changed), paths in the scope only.
    fn changes(
        &self,
        index: &Path,
        scope: &PathSet,
        pathspecs: &[String],
    ) -> Result<Vec<(u8, String)>, TreeError> {
        let mut args = vec![
            "diff",
            "--cached",
            "--name-status",
            "--no-renames",
            "-z",
            self.base_commit.as_str(),
            "--",
        ];
        args.extend(pathspecs.iter().map(String::as_str));
        let listed = git(&self.dir, Some(index), &args)?;
        let mut fields = listed.split(|byte| *byte == 0);
        let mut changes = Vec::new();
        while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
            let path = String::from_utf8_lossy(path).into_owned();
            if let Some(letter) = status.first()
                && scope.is_match(&path)
            {
                changes.push((*letter, path));
            }
        }
        Ok(changes)
    }

    /// The scope's files as the unit finds them, when its patch can be written without git
    /// (see the module docs): taken before the agent runs.
    pub fn snapshot(&self, scope: &PathSet) -> Option<Snapshot> {
        if !self.plain_diffs || !scope.is_plain() {
            return None;
        }
        let mut files = Vec::new();
        for path in scope.roots() {
            let (mode, blob) = self.base_files.get(&path)?;
            if !quotes_nothing(&path) {
                return None;
            }
            let file = TextFile::read(&self.dir.join(&path))??;
            // As the base has it, or git must read the change (against the base commit).
            if file.mode() != mode || blob_id(&file.text) != *blob {
                return None;
            }
            files.push((path, file));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Some(Snapshot { files })
    }

    /// What the unit `name` changed inside `scope` since the base, as a binary patch (empty
    /// when nothing); written from `before` when it can be.
    pub fn patch(
        &self,
        scope: &PathSet,
        name: &str,
        before: Option<&Snapshot>,
    ) -> Result<Vec<u8>, TreeError> {
        if let Some(patch) = before.and_then(|before| self.plain_patch(before)) {
            return Ok(patch);
        }
        let pathspecs = self.pathspecs(scope);
        if pathspecs.is_empty() {
            return Ok(Vec::new());
        }
        let index = UnitIndex::copy(&self.dir, name)?;
        self.stage(&index.0, &pathspecs)?;
        // A plain scope is exactly its roots: the diff of the roots is the scope's. Otherwise
        // the changed paths are listed, and only the scope's are diffed.
        let paths: Vec<String> = if scope.is_plain() {
            pathspecs
        } else {
            let changed = self.changes(&index.0, scope, &pathspecs)?;
            if changed.is_empty() {
                return Ok(Vec::new());
            }
            changed
                .into_iter()
                .map(|(_, path)| format!(":(literal){path}"))
                .collect()
        };
        let mut args = super::tree::PATCH_DIFF.to_vec();
        args.extend([self.base_commit.as_str(), "--"]);
        args.extend(paths.iter().map(String::as_str));
        git(&self.dir, Some(&index.0), &args)
    }

    /// The patch from `before` to the files now, or `None` when git must read it (a file
    /// that is no longer a text file of the same mode).
    fn plain_patch(&self, before: &Snapshot) -> Option<Vec<u8>> {
        let mut patch = Vec::new();
        for (path, old) in &before.files {
            let new = TextFile::read(&self.dir.join(path))?;
            match new {
                Some(new) if new.executable != old.executable => return None,
                Some(new) if new.text == old.text => {}
                Some(new) => {
                    let mode = old.mode();
                    patch.extend_from_slice(
                        format!(
                            "diff --git a/{path} b/{path}\nindex {}..{} {mode}\n--- a/{path}\n+++ b/{path}\n",
                            blob_id(&old.text),
                            blob_id(&new.text)
                        )
                        .as_bytes(),
                    );
                    hunks(&old.text, &new.text, &mut patch);
                }
                None => {
                    patch.extend_from_slice(
                        format!(
                            "diff --git a/{path} b/{path}\ndeleted file mode {}\nindex {}..{}\n--- a/{path}\n+++ /dev/null\n",
                            old.mode(),
                            blob_id(&old.text),
                            "0".repeat(40)
                        )
                        .as_bytes(),
                    );
                    hunks(&old.text, "", &mut patch);
                }
            }
        }
        Some(patch)
    }

    /// Put `scope` back as the base has it: what the unit `name` added is removed, what it
    /// changed or deleted is checked out again from the base.
    pub fn revert(&self, scope: &PathSet, name: &str) -> Result<(), TreeError> {
        let pathspecs = self.pathspecs(scope);
        if pathspecs.is_empty() {
            return Ok(());
        }
        let index = UnitIndex::copy(&self.dir, name)?;
        self.stage(&index.0, &pathspecs)?;
        let mut restore = Vec::new();
        for (status, path) in self.changes(&index.0, scope, &pathspecs)? {
            if status == b'A' {
                let file = self.dir.join(&path);
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(TreeError::Io { path: file, source }),
                }
            } else {
                restore.push(format!(":(literal){path}"));
            }
        }
        if !restore.is_empty() {
            let mut args = vec!["checkout", "-q", self.base_commit.as_str(), "--"];
            args.extend(restore.iter().map(String::as_str));
            git(&self.dir, Some(&index.0), &args)?;
        }
        Ok(())
    }
}

/// A unit's plain scope as it started: each file's path and text.
#[derive(Debug)]
pub struct Snapshot {
    files: Vec<(String, TextFile)>,
}

/// A regular file that git diffs as text: UTF-8 without a NUL, at most [`TEXT_LIMIT`].
#[derive(Debug)]
struct TextFile {
    text: String,
    executable: bool,
}

/// Larger files are read by git.
const TEXT_LIMIT: u64 = 1 << 20;

impl TextFile {
    /// `Some(None)`: no such file; `None`: something git must read (not a regular file, too
    /// large, binary, not UTF-8, unreadable).
    fn read(path: &Path) -> Option<Option<TextFile>> {
        use std::os::unix::fs::PermissionsExt;
        let metadata = match std::fs::symlink_metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Some(None),
            Err(_) => return None,
        };
        if !metadata.is_file() || metadata.len() > TEXT_LIMIT {
            return None;
        }
        let bytes = std::fs::read(path).ok()?;
        if bytes.contains(&0) {
            return None;
        }
        let text = String::from_utf8(bytes).ok()?;
        Some(Some(TextFile {
            text,
            executable: metadata.permissions().mode() & 0o111 != 0,
        }))
    }

    fn mode(&self) -> &'static str {
        if self.executable { "100755" } else { "100644" }
    }
}

/// A path git writes in a patch header as it is (no quoting, no spaces to split on).
fn quotes_nothing(path: &str) -> bool {
    path.bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"-_./+@,=~%".contains(&byte))
}

/// The git blob id of `text` (SHA-1 of `blob <length>\0<text>`).
fn blob_id(text: &str) -> String {
    use sha1::{Digest, Sha1};
    let mut hasher = Sha1::new();
    hasher.update(format!("blob {}\0", text.len()).as_bytes());
    hasher.update(text.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The unified hunks from `old` to `new`, three lines of context, as git writes them.
fn hunks(old: &str, new: &str, out: &mut Vec<u8>) {
    let diff = similar::TextDiff::from_lines(old, new);
    let mut unified = diff.unified_diff();
    unified.context_radius(3).missing_newline_hint(true);
    // Writing to a Vec cannot fail.
    let _ = unified.to_writer(&mut *out);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::distributed::tree::base_repository;

    /// A repository of `files` (path, content) at `repo`, committed and bundled: the bundle
    /// and the base commit.
    fn bundle_of(repo: &Path, files: &[(&str, &str)]) -> (Vec<u8>, String) {
        for (path, content) in files {
            let path = repo.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(repo, None, &["init", "-q"]).unwrap();
        git(repo, None, &["add", "-A"]).unwrap();
        git(repo, None, &["commit", "-q", "-m", "base"]).unwrap();
        let commit = String::from_utf8(git(repo, None, &["rev-parse", "HEAD"]).unwrap())
            .unwrap()
            .trim()
            .to_owned();
        let bundle = crate::distributed::base_bundle(repo, &commit).unwrap();
        (bundle, commit)
    }

    /// A repository with `src/a`, `src/b` and an ignored `build/`, bundled; its base commit.
    fn bundled() -> (tempfile::TempDir, Vec<u8>, String) {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("src/a", "a\n"),
            ("src/b", "b\n"),
            (".gitignore", "build/\n"),
        ];
        let (bundle, commit) = bundle_of(&dir.path().join("repo"), &files);
        (dir, bundle, commit)
    }

    fn open(cache: &Path, bundle: &[u8], commit: &str) -> Option<SharedTree> {
        let run = RunId::from("run-1");
        let base = base_repository(cache, &run, bundle, commit).unwrap();
        SharedTree::open(cache, &run, &base, commit).unwrap()
    }

    #[test]
    fn a_units_patch_holds_its_scope_only_and_a_revert_puts_the_base_back() {
        let (dir, bundle, commit) = bundled();
        let cache = dir.path().join("cache");
        let tree = open(&cache, &bundle, &commit).unwrap();
        // Two units at once: one edits src/a and adds src/new/c, the other edits src/b.
        std::fs::write(tree.dir().join("src/a"), "A\n").unwrap();
        std::fs::create_dir_all(tree.dir().join("src/new")).unwrap();
        std::fs::write(tree.dir().join("src/new/c"), "c\n").unwrap();
        std::fs::write(tree.dir().join("src/b"), "B\n").unwrap();
        let first = PathSet::new(&["src/a", "src/new"]).unwrap();
        let patch = String::from_utf8(tree.patch(&first, "u1-1", None).unwrap()).unwrap();
        assert!(patch.contains("+A") && patch.contains("+c"), "{patch}");
        assert!(!patch.contains("+B"), "{patch}");
        // A glob scope is read through its listed changes.
        let second = PathSet::new(&["src/[b]"]).unwrap();
        let patch = String::from_utf8(tree.patch(&second, "u2-1", None).unwrap()).unwrap();
        assert!(patch.contains("+B") && !patch.contains("+A"), "{patch}");
        // Nothing in scope, nothing to diff (a root that does not exist is not an error).
        let none = PathSet::new(&["docs/x"]).unwrap();
        assert!(tree.patch(&none, "u3-1", None).unwrap().is_empty());
        // The first unit failed: its scope is the base again, the other's change stays.
        tree.revert(&first, "u1-1").unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.dir().join("src/a")).unwrap(),
            "a\n"
        );
        assert!(!tree.dir().join("src/new/c").exists());
        assert_eq!(
            std::fs::read_to_string(tree.dir().join("src/b")).unwrap(),
            "B\n"
        );
        assert!(tree.patch(&first, "u1-2", None).unwrap().is_empty());
        // A deletion is put back too.
        std::fs::remove_file(tree.dir().join("src/b")).unwrap();
        tree.revert(&second, "u2-2").unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.dir().join("src/b")).unwrap(),
            "b\n"
        );
        // The tree's own index was never written: it still says the base.
        let status = git(tree.dir(), None, &["diff", "--cached", "--name-only"]).unwrap();
        assert!(status.is_empty());
    }

    /// Apply `patch` to a fresh checkout of the base in `dir`; the content of `path` after.
    fn applied(
        bundle: &[u8],
        commit: &str,
        dir: &Path,
        patch: &[u8],
        path: &str,
    ) -> Option<String> {
        let run = RunId::from("check");
        let base = base_repository(dir, &run, bundle, commit).unwrap();
        git(&base, None, &["checkout", "-q", "--detach", commit]).unwrap();
        let mut apply = crate::git::hardened(&base, false);
        apply.args(["apply", "--binary", "-"]);
        Git::at(&base).run(apply, Some(patch)).unwrap();
        // The patch is recognised as there (the coordinator's check after a crash).
        let mut reverse = crate::git::hardened(&base, false);
        reverse.args(["apply", "--binary", "--check", "--reverse", "-"]);
        Git::at(&base).run(reverse, Some(patch)).unwrap();
        std::fs::read_to_string(base.join(path)).ok()
    }

    #[test]
    fn a_patch_written_without_git_applies_as_gits_own() {
        let (dir, bundle, commit) = bundled();
        let cases: [(&str, &str, Option<&str>); 9] = [
            ("edit", "a\n", Some("A\n")),
            ("append, no newline at the end", "a\n", Some("a\nb")),
            ("newline removed", "a\n", Some("a")),
            ("emptied", "a\n", Some("")),
            ("deleted", "a\n", None),
            ("from no newline", "x\ny", Some("x\ny\nz\n")),
            ("crlf", "1\r\n2\r\n", Some("1\r\n2 two\r\n3\r\n")),
            (
                "unicode, far apart",
                "é\n2\n3\n4\n5\n6\n7\n8\n9\n10\n",
                Some("É\n2\n3\n4\n5\n6\n7\n8\n9\nten\n"),
            ),
            ("empty to text", "", Some("new\n")),
        ];
        for (at, (label, old, new)) in cases.iter().enumerate() {
            // The base holds `old` in src/a for this case.
            let repo = dir.path().join(format!("repo-{at}"));
            let (bundle, commit) = bundle_of(&repo, &[("src/a", old)]);
            let cache = dir.path().join(format!("cache-{at}"));
            let tree = open(&cache, &bundle, &commit).unwrap();
            let scope = PathSet::new(&["src/a"]).unwrap();
            let snapshot = tree.snapshot(&scope);
            assert!(snapshot.is_some(), "{label}: no snapshot");
            let snapshot = snapshot.unwrap();
            match new {
                Some(new) => std::fs::write(tree.dir().join("src/a"), new).unwrap(),
                None => std::fs::remove_file(tree.dir().join("src/a")).unwrap(),
            }
            let written = tree.plain_patch(&snapshot);
            assert!(written.is_some(), "{label}: git needed");
            let written = written.unwrap();
            let by_git = tree.patch(&scope, "u-1", None).unwrap();
            let checks = dir.path().join(format!("check-{at}"));
            let ours = applied(&bundle, &commit, &checks.join("ours"), &written, "src/a");
            let theirs = applied(&bundle, &commit, &checks.join("git"), &by_git, "src/a");
            assert_eq!(
                ours.as_deref(),
                *new,
                "{label}: {}",
                String::from_utf8_lossy(&written)
            );
            assert_eq!(ours, theirs, "{label}");
            // The header names the same blobs git names.
            let index_line = |patch: &[u8]| {
                String::from_utf8_lossy(patch)
                    .lines()
                    .find(|line| line.starts_with("index "))
                    .map(|line| line.split(' ').nth(1).unwrap_or_default().to_owned())
            };
            assert_eq!(index_line(&written), index_line(&by_git), "{label}");
        }
        drop(bundle);
        drop(commit);
    }

    #[test]
    fn git_reads_what_cannot_be_written_as_text() {
        let (dir, bundle, commit) = bundled();
        let cache = dir.path().join("cache");
        let tree = open(&cache, &bundle, &commit).unwrap();
        // Not a base file, a directory, a glob: no snapshot.
        assert!(
            tree.snapshot(&PathSet::new(&["src/new"]).unwrap())
                .is_none()
        );
        assert!(tree.snapshot(&PathSet::new(&["src"]).unwrap()).is_none());
        assert!(
            tree.snapshot(&PathSet::new(&["src/[a]"]).unwrap())
                .is_none()
        );
        // A file that is no longer the base's: no snapshot (git diffs against the base).
        std::fs::write(tree.dir().join("src/b"), "not the base\n").unwrap();
        assert!(tree.snapshot(&PathSet::new(&["src/b"]).unwrap()).is_none());
        std::fs::write(tree.dir().join("src/b"), "b\n").unwrap();
        // Made binary, or executable: git reads the change, and the patch is still right.
        let scope = PathSet::new(&["src/a"]).unwrap();
        let snapshot = tree.snapshot(&scope).unwrap();
        std::fs::write(tree.dir().join("src/a"), b"\0\x01binary").unwrap();
        assert!(tree.plain_patch(&snapshot).is_none());
        let patch = tree.patch(&scope, "u-1", Some(&snapshot)).unwrap();
        assert!(String::from_utf8_lossy(&patch).contains("GIT binary patch"));
        let content = applied(&bundle, &commit, &dir.path().join("check"), &patch, "src/a");
        assert_eq!(content.as_deref(), Some("\0\x01binary"));
        std::fs::write(tree.dir().join("src/a"), "a\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            tree.dir().join("src/a"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert!(tree.plain_patch(&snapshot).is_none());
    }

    #[test]
    fn one_process_holds_the_tree_and_the_next_finds_it_as_the_base() {
        let (dir, bundle, commit) = bundled();
        let cache = dir.path().join("cache");
        let tree = open(&cache, &bundle, &commit).unwrap();
        assert!(open(&cache, &bundle, &commit).is_none(), "held twice");
        // A worker dies with a unit's changes in the tree.
        std::fs::write(tree.dir().join("src/a"), "half\n").unwrap();
        std::fs::write(tree.dir().join("src/junk"), "x\n").unwrap();
        std::fs::create_dir_all(tree.dir().join("build")).unwrap();
        std::fs::write(tree.dir().join("build/out"), "o\n").unwrap();
        drop(tree);
        let tree = open(&cache, &bundle, &commit).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.dir().join("src/a")).unwrap(),
            "a\n"
        );
        assert!(!tree.dir().join("src/junk").exists());
        assert!(!tree.dir().join("build").exists());
    }

    #[test]
    fn an_ignored_path_in_scope_is_left_out_not_an_error() {
        let (dir, bundle, commit) = bundled();
        let cache = dir.path().join("cache");
        let tree = open(&cache, &bundle, &commit).unwrap();
        std::fs::create_dir_all(tree.dir().join("build")).unwrap();
        std::fs::write(tree.dir().join("build/out"), "o\n").unwrap();
        std::fs::write(tree.dir().join("src/a"), "A\n").unwrap();
        let scope = PathSet::new(&["build", "src/a"]).unwrap();
        let patch = String::from_utf8(tree.patch(&scope, "u-1", None).unwrap()).unwrap();
        assert!(
            patch.contains("+A") && !patch.contains("build/out"),
            "{patch}"
        );
    }
}
