//! Checkpoints and rollback against real git in temp directories: byte-for-byte restores
//! (contents, modes, symlinks, deletions, new files), the user's HEAD, branch and index left
//! alone, no repository-controlled program run, and checkpoints every N completions.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use fanout_core::run::{
    CheckpointPolicy, Checkpointer, RollbackError, RollbackOptions, checkpoint, rollback,
};
use fanout_core::store::{Store, StoreReader};
use sha2::{Digest, Sha256};

use crate::support::git;

fn write(repo: &Path, path: &str, content: &str) {
    let full = repo.join(path);
    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
    std::fs::write(full, content).unwrap();
}

fn chmod(repo: &Path, path: &str, mode: u32) {
    std::fs::set_permissions(repo.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
}

/// path → (mode bits or "link", sha256 of the content or the link target), skipping `.git`,
/// `.fanout` and `skip`.
fn manifest(repo: &Path, skip: &[&str]) -> BTreeMap<String, (String, String)> {
    fn walk(root: &Path, dir: &Path, skip: &[&str], out: &mut BTreeMap<String, (String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if rel == ".git" || rel == ".fanout" || skip.contains(&rel.as_str()) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(
                    rel,
                    ("link".to_owned(), target.to_string_lossy().into_owned()),
                );
            } else if meta.is_dir() {
                walk(root, &path, skip, out);
            } else {
                let hash = format!("{:x}", Sha256::digest(std::fs::read(&path).unwrap()));
                out.insert(
                    rel,
                    (format!("{:o}", meta.permissions().mode() & 0o7777), hash),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(repo, repo, skip, &mut out);
    out
}

/// What must not move: HEAD, the branch, the index's content and what git status says.
fn user_state(repo: &Path) -> (String, String, String, String) {
    (
        git(repo, &["rev-parse", "HEAD"]),
        git(repo, &["symbolic-ref", "HEAD"]),
        git(repo, &["ls-files", "-s"]),
        git(repo, &["status", "--porcelain=v1", "--untracked-files=all"]),
    )
}

/// A repository with a commit, an executable, a symlink, a nested file, an ignored file, a
/// staged-but-uncommitted change and an untracked file.
fn sample_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q", "-b", "main"]);
    write(repo, "a.txt", "alpha\n");
    write(repo, "bin/run.sh", "#!/bin/sh\necho hi\n");
    chmod(repo, "bin/run.sh", 0o755);
    write(repo, "dir/nested.txt", "nested\n");
    write(repo, "crlf.txt", "windows\r\nline\r\n");
    write(repo, ".gitignore", "*.log\n");
    write(repo, "ignored.log", "keep me\n");
    std::os::unix::fs::symlink("a.txt", repo.join("link")).unwrap();
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "initial"]);
    write(repo, "a.txt", "alpha staged\n");
    git(repo, &["add", "a.txt"]);
    write(repo, "untracked.txt", "not yet added\n");
    dir
}

/// Modify, create, delete, chmod and re-link.
fn mess_up(repo: &Path) {
    write(repo, "a.txt", "changed by an agent\n");
    write(repo, "new.txt", "created\n");
    write(repo, "newdir/deep/x.txt", "created deep\n");
    std::fs::remove_file(repo.join("dir/nested.txt")).unwrap();
    std::fs::remove_file(repo.join("untracked.txt")).unwrap();
    chmod(repo, "bin/run.sh", 0o644);
    write(repo, "crlf.txt", "unix\n");
    chmod(repo, "crlf.txt", 0o755);
    std::fs::remove_file(repo.join("link")).unwrap();
    std::os::unix::fs::symlink("new.txt", repo.join("link")).unwrap();
    write(repo, "ignored.log", "changed, but ignored\n");
}

#[test]
fn rollback_restores_the_tree_byte_for_byte_and_leaves_head_and_index_alone() {
    let dir = sample_repo();
    let repo = dir.path();
    let before = manifest(repo, &["ignored.log"]);
    let state = user_state(repo);

    let mut checkpoints = Checkpointer::new(repo, &"run-1".into()).unwrap();
    let base = checkpoints.checkpoint_blocking("base").unwrap();
    assert_eq!(base.seq, 0);
    assert_eq!(base.ref_name, "refs/fanout/run-1/checkpoints/0");
    // The base's parent is HEAD; the checkpoint keeps the uncommitted and untracked files.
    assert_eq!(
        git(repo, &["rev-parse", "refs/fanout/run-1/checkpoints/0^"]),
        state.0
    );
    let files = git(repo, &["ls-tree", "-r", "--name-only", &base.commit]);
    assert!(
        files.contains("untracked.txt") && !files.contains("ignored.log"),
        "{files}"
    );
    assert_eq!(
        user_state(repo),
        state,
        "a checkpoint moved HEAD or the index"
    );

    mess_up(repo);
    let end = checkpoints.checkpoint_blocking("end").unwrap();
    assert_eq!(end.seq, 1);
    assert_eq!(
        git(repo, &["rev-parse", "refs/fanout/run-1/latest"]).trim(),
        end.commit
    );
    assert_eq!(
        git(repo, &["rev-parse", &format!("{}^", end.commit)]).trim(),
        base.commit
    );

    let report = rollback(repo, &"run-1".into(), &RollbackOptions::default()).unwrap();
    assert_eq!(report.target_seq, 0);
    assert!(
        report.removed.contains(&"newdir/deep/x.txt".to_owned()),
        "{report:?}"
    );
    assert!(
        report.written.contains(&"dir/nested.txt".to_owned()),
        "{report:?}"
    );
    assert_eq!(manifest(repo, &["ignored.log"]), before);
    assert!(
        !repo.join("newdir").exists(),
        "emptied directories are removed"
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("ignored.log")).unwrap(),
        "changed, but ignored\n",
        "ignored files are not ours to touch"
    );
    assert_eq!(user_state(repo), state, "rollback moved HEAD or the index");
}

#[test]
fn rollback_to_an_intermediate_checkpoint_and_back_again() {
    let dir = sample_repo();
    let repo = dir.path();
    let mut checkpoints = Checkpointer::new(repo, &"run-2".into()).unwrap();
    checkpoints.checkpoint_blocking("base").unwrap();
    let at_base = manifest(repo, &[]);
    write(repo, "one.txt", "1\n");
    std::fs::remove_file(repo.join("a.txt")).unwrap();
    checkpoints.checkpoint_blocking("after one").unwrap();
    let at_one = manifest(repo, &[]);
    write(repo, "two.txt", "2\n");
    write(repo, "a.txt/now-a-dir.txt", "a file became a directory\n");
    checkpoints.checkpoint_blocking("after two").unwrap();
    let at_two = manifest(repo, &[]);

    let to = |seq| RollbackOptions {
        to: Some(seq),
        force: false,
    };
    rollback(repo, &"run-2".into(), &to(1)).unwrap();
    assert_eq!(manifest(repo, &[]), at_one);
    // Forward again, then to the base: no --force needed, nothing was changed by hand.
    rollback(repo, &"run-2".into(), &to(2)).unwrap();
    assert_eq!(manifest(repo, &[]), at_two);
    rollback(repo, &"run-2".into(), &to(0)).unwrap();
    assert_eq!(manifest(repo, &[]), at_base);

    match rollback(repo, &"run-2".into(), &to(9)).unwrap_err() {
        RollbackError::UnknownCheckpoint { available, .. } => assert_eq!(available, [0, 1, 2]),
        other => panic!("expected UnknownCheckpoint, got {other}"),
    }
    assert!(matches!(
        rollback(repo, &"nope".into(), &RollbackOptions::default()).unwrap_err(),
        RollbackError::NoCheckpoints { .. }
    ));
}

#[test]
fn rollback_refuses_to_discard_changes_made_after_the_run_unless_forced() {
    let dir = sample_repo();
    let repo = dir.path();
    let mut checkpoints = Checkpointer::new(repo, &"run-3".into()).unwrap();
    checkpoints.checkpoint_blocking("base").unwrap();
    let at_base = manifest(repo, &[]);
    write(repo, "agent.txt", "by the run\n");
    checkpoints.checkpoint_blocking("end").unwrap();
    write(repo, "a.txt", "edited by hand after the run\n");

    let err = rollback(repo, &"run-3".into(), &RollbackOptions::default()).unwrap_err();
    match &err {
        RollbackError::ChangedSinceRun { paths, .. } => assert_eq!(paths, &["a.txt"]),
        other => panic!("expected ChangedSinceRun, got {other}"),
    }
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read_to_string(repo.join("a.txt")).unwrap(),
        "edited by hand after the run\n",
        "a refused rollback changes nothing"
    );

    let report = rollback(
        repo,
        &"run-3".into(),
        &RollbackOptions {
            to: None,
            force: true,
        },
    )
    .unwrap();
    assert_eq!(manifest(repo, &[]), at_base);
    // The discarded edit is kept on a ref.
    let saved = report.saved_as.unwrap();
    assert_eq!(
        git(repo, &["show", &format!("{saved}:a.txt")]),
        "edited by hand after the run\n"
    );
}

#[test]
fn no_repository_controlled_program_runs() {
    let dir = sample_repo();
    let repo = dir.path();
    let canaries = tempfile::tempdir().unwrap();
    let canary = |name: &str| canaries.path().join(name);
    let script = |name: &str| -> PathBuf {
        let path = canaries.path().join(format!("{name}.sh"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\ntouch '{}'\ncat\n", canary(name).display()),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let fsmonitor = script("fsmonitor");
    let clean = script("clean");
    let smudge = script("smudge");
    let gpg = script("gpg");
    let hook = script("hook");
    let hooks = repo.join(".git/hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for name in ["reference-transaction", "post-commit", "pre-commit"] {
        std::fs::copy(&hook, hooks.join(name)).unwrap();
        chmod(&hooks, name, 0o755);
    }
    let config = |key: &str, value: &str| {
        git(repo, &["config", key, value]);
    };
    config("core.fsmonitor", fsmonitor.to_str().unwrap());
    config("filter.x.clean", clean.to_str().unwrap());
    config("filter.x.smudge", smudge.to_str().unwrap());
    config("filter.x.required", "true");
    config("commit.gpgSign", "true");
    config("gpg.program", gpg.to_str().unwrap());
    write(repo, ".gitattributes", "* filter=x\n");
    write(repo, "a.txt", "touched so that the index is stat-dirty\n");

    let mut checkpoints = Checkpointer::new(repo, &"run-4".into()).unwrap();
    checkpoints.checkpoint_blocking("base").unwrap();
    write(repo, "b.txt", "new\n");
    std::fs::remove_file(repo.join("bin/run.sh")).unwrap();
    checkpoints.checkpoint_blocking("end").unwrap();
    rollback(repo, &"run-4".into(), &RollbackOptions::default()).unwrap();
    assert!(repo.join("bin/run.sh").exists());

    for name in ["fsmonitor", "clean", "smudge", "gpg", "hook"] {
        assert!(!canary(name).exists(), "{name} ran");
    }
    // The traps are real: plain git springs them.
    let _ = Command::new("git")
        .arg("-C")
        .arg(repo)
        .arg("status")
        .output()
        .unwrap();
    assert!(
        canary("fsmonitor").exists() || canary("clean").exists(),
        "the test's traps never fire"
    );
}

#[tokio::test]
async fn checkpoints_land_every_n_completions() {
    let dir = sample_repo();
    let repo = dir.path();
    let store = Store::open_in_repo(repo).unwrap();
    let mut checkpoints = Checkpointer::new(repo, &"run-5".into())
        .unwrap()
        .with_store(store.clone());
    let base = checkpoints.base().await.unwrap();
    assert_eq!(base.seq, 0);
    assert_eq!(
        checkpoints.base().await.unwrap(),
        base,
        "base is taken once"
    );

    // Every 3 completions; once something was deleted, every completion.
    let mut policy = CheckpointPolicy::new(3, 1);
    for completed in 1..=10u64 {
        let destructive = completed == 5;
        write(repo, &format!("out/{completed}.txt"), "done\n");
        if destructive {
            std::fs::remove_file(repo.join("dir/nested.txt")).unwrap();
        }
        if policy.record_completion(destructive) {
            checkpoints.set_completed_agents(completed);
            checkpoints
                .checkpoint(&format!("after {completed} completions"))
                .await
                .unwrap();
        }
    }
    store.close().await.unwrap();

    let reader = StoreReader::open_in_repo(repo).unwrap();
    let recorded: Vec<(u64, u64)> = reader
        .checkpoints(&"run-5".into())
        .unwrap()
        .iter()
        .map(|c| (c.seq, c.completed_agents))
        .collect();
    assert_eq!(recorded, [(0, 0), (1, 3), (2, 5), (3, 8)]);
    let refs = checkpoint::list_checkpoints(checkpoints.git(), &"run-5".into()).unwrap();
    assert_eq!(refs.keys().copied().collect::<Vec<_>>(), [0, 1, 2, 3]);
    // Checkpoint 1 holds the first three outputs and not the fourth.
    let files = git(repo, &["ls-tree", "-r", "--name-only", &refs[&1]]);
    assert!(
        files.contains("out/3.txt") && !files.contains("out/4.txt"),
        "{files}"
    );

    // After a crash, a new checkpointer continues the numbering.
    let resumed = Checkpointer::new(repo, &"run-5".into()).unwrap();
    assert_eq!(resumed.next_seq(), 4);
    assert_eq!(resumed.latest().unwrap().commit, refs[&3]);
}

#[test]
fn a_thousand_file_tree_checkpoints_and_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    git(repo, &["init", "-q", "-b", "main"]);
    for i in 0..1000 {
        write(
            repo,
            &format!("src/m{}/f{i}.rs", i % 20),
            &format!("// file {i}\n"),
        );
    }
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "initial"]);
    let before = manifest(repo, &[]);

    let mut checkpoints = Checkpointer::new(repo, &"run-6".into()).unwrap();
    let began = std::time::Instant::now();
    checkpoints.checkpoint_blocking("base").unwrap();
    let base_time = began.elapsed();
    for i in (0..1000).step_by(2) {
        write(repo, &format!("src/m{}/f{i}.rs", i % 20), "// rewritten\n");
    }
    for i in (1..1000).step_by(10) {
        std::fs::remove_file(repo.join(format!("src/m{}/f{i}.rs", i % 20))).unwrap();
    }
    checkpoints.checkpoint_blocking("end").unwrap();
    let began = std::time::Instant::now();
    let report = rollback(repo, &"run-6".into(), &RollbackOptions::default()).unwrap();
    let rollback_time = began.elapsed();
    assert_eq!(report.written.len(), 600);
    assert_eq!(manifest(repo, &[]), before);
    eprintln!("1,000 files: checkpoint {base_time:?}, rollback of 600 files {rollback_time:?}");
}

/// A checkpoint taken while an agent is halfway through its write scope shows that scope as the
/// agent's pre-image: the file it is rewriting as it was, the file it deleted still there, the
/// file it created absent, including a file that had changed since the base before the agent
/// started (its content comes from the pre-image's own copy). Work outside the scope is in the
/// checkpoint as it is. Once the agent is done, the next checkpoint shows its edits.
#[test]
fn a_checkpoint_shows_a_running_agents_scope_as_its_preimage() {
    use fanout_core::run::checkpoint::InFlightScopes;
    use fanout_core::run::preimage::{self, BaseBlobs};
    use std::sync::Arc;

    let dir = sample_repo();
    let repo = dir.path();
    write(repo, "scope/one.txt", "one\n");
    write(repo, "scope/two.txt", "two\n");
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", "scope"]);
    let in_flight = Arc::new(InFlightScopes::default());
    let mut checkpoints = Checkpointer::new(repo, &"run-8".into())
        .unwrap()
        .with_in_flight(Arc::clone(&in_flight));
    let base = checkpoints.checkpoint_blocking("base").unwrap();
    // Changed after the base, before the agent starts: not a base blob.
    write(repo, "scope/two.txt", "two, edited by an earlier agent\n");
    let git_handle = fanout_core::git::Git::open(repo).unwrap();
    let base_blobs = BaseBlobs::load(&git_handle, &base.tree).unwrap();
    let (taken, _) = preimage::prepare(
        repo,
        &"run-8".into(),
        &"agent-a".into(),
        &["scope/".to_owned()],
        &base_blobs,
    )
    .unwrap();
    in_flight.enter(Arc::new(taken));
    assert_eq!(in_flight.len(), 1);

    // The agent, halfway: one file cut short, one deleted, one created.
    write(repo, "scope/one.txt", "o");
    std::fs::remove_file(repo.join("scope/two.txt")).unwrap();
    write(repo, "scope/new/three.txt", "three\n");
    // Another agent's finished work.
    write(repo, "a.txt", "finished elsewhere\n");

    let mid = checkpoints.checkpoint_blocking("mid").unwrap();
    let show = |commit: &str, path: &str| git(repo, &["show", &format!("{commit}:{path}")]);
    assert_eq!(show(&mid.commit, "scope/one.txt"), "one\n");
    assert_eq!(
        show(&mid.commit, "scope/two.txt"),
        "two, edited by an earlier agent\n"
    );
    let files = git(repo, &["ls-tree", "-r", "--name-only", &mid.commit]);
    assert!(!files.contains("scope/new/three.txt"), "{files}");
    assert_eq!(show(&mid.commit, "a.txt"), "finished elsewhere\n");
    assert_eq!(
        git(repo, &["rev-parse", &format!("{}^{{tree}}", mid.commit)]).trim(),
        mid.tree
    );

    // Done: the next checkpoint has its edits.
    in_flight.leave(&"agent-a".into());
    let after = checkpoints.checkpoint_blocking("after").unwrap();
    assert_eq!(show(&after.commit, "scope/one.txt"), "o");
    assert_eq!(show(&after.commit, "scope/new/three.txt"), "three\n");
    let files = git(repo, &["ls-tree", "-r", "--name-only", &after.commit]);
    assert!(!files.contains("scope/two.txt"), "{files}");
}
