//! Host-side git that cannot run programs the repository controls.
//!
//! fanout runs `git` on the user's repository while agents (and whoever prepared the
//! repository) may have written `.git/config`, `.gitattributes` or hooks. Every command built
//! here therefore:
//!
//! - starts from an **empty environment** (only `PATH`, `LC_ALL=C` and what we set), so
//!   `GIT_DIR`, `GIT_INDEX_FILE`, `GIT_EXTERNAL_DIFF`, `GIT_CONFIG_PARAMETERS`, `GIT_SSH_COMMAND`
//!   and friends from our caller cannot redirect it;
//! - ignores system and global config (`GIT_CONFIG_NOSYSTEM=1`, `GIT_CONFIG_GLOBAL=/dev/null`,
//!   `GIT_ATTR_NOSYSTEM=1`), never prompts (`GIT_TERMINAL_PROMPT=0`) and ignores replace refs
//!   (`GIT_NO_REPLACE_OBJECTS=1`, so what we read is what is stored);
//! - overrides, with `-c` (which beats the repository's config), every setting that names a
//!   program: `core.fsmonitor`, `core.hooksPath` (hooks such as `reference-transaction` run on
//!   `update-ref`), `diff.external`, `core.pager`, `core.editor`, `credential.helper`,
//!   `protocol.allow=never` (no transport at all), `commit.gpgSign`/`tag.gpgSign` (gpg),
//!   `gc.auto=0` and `maintenance.auto=false` (no background work);
//! - read-only commands get `--no-optional-locks`, so they never rewrite the user's index.
//!
//! **Filters** (`filter.<name>.clean/smudge/process`, selected by `.gitattributes`) cannot be
//! disabled by `-c` because their names are open-ended. Instead we only use commands that do
//! not apply them: blobs are made with `git hash-object -w --no-filters` (which also skips
//! end-of-line conversion, so a checkpoint holds the file's exact bytes), staged into a
//! private index with `git update-index --index-info`, and read back with `git cat-file
//! --batch`; files are written by us, never by `git checkout`. No command here runs `diff`
//! with textconv, `status` or `checkout`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// `-c` overrides for every command.
pub const HARDENING_CONFIG: &[&str] = &[
    "core.fsmonitor=false",
    "core.hooksPath=/dev/null",
    "diff.external=",
    "core.pager=cat",
    "core.editor=true",
    "sequence.editor=true",
    "credential.helper=",
    "protocol.allow=never",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    "gc.auto=0",
    "maintenance.auto=false",
    "core.untrackedCache=false",
];

/// The identity checkpoint commits are made with.
pub const COMMITTER_NAME: &str = "fanout";
pub const COMMITTER_EMAIL: &str = "fanout@localhost";

/// A git failure, with the command and where it ran.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot run `git` (is it installed and on PATH?): {source}")]
    Spawn { source: std::io::Error },
    #[error("`git {args}` failed in {}{}: {stderr}", .dir.display(), code_text(*.code))]
    Failed {
        dir: PathBuf,
        args: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("{} is not inside a git work tree; checkpoints and rollback need one", .path.display())]
    NotARepository { path: PathBuf },
    #[error("`git {args}` in {} answered something unexpected: {detail}", .dir.display())]
    Unexpected {
        dir: PathBuf,
        args: String,
        detail: String,
    },
    #[error("talking to `git {args}` in {} failed: {source}", .dir.display())]
    Pipe {
        dir: PathBuf,
        args: String,
        source: std::io::Error,
    },
}

fn code_text(code: Option<i32>) -> String {
    match code {
        Some(code) => format!(" (exit {code})"),
        None => " (killed by a signal)".to_owned(),
    }
}

/// One repository's work tree, and hardened commands run at its top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Git {
    root: PathBuf,
}

impl Git {
    /// The work tree whose top is `root`, taken on trust (a repository we made ourselves).
    pub fn at(root: &Path) -> Git {
        Git {
            root: root.to_path_buf(),
        }
    }

    /// The work tree containing `path` (its top level).
    pub fn open(path: &Path) -> Result<Git, GitError> {
        let probe = Git {
            root: path.to_path_buf(),
        };
        let out = probe
            .read_only()
            .args(["rev-parse", "--is-inside-work-tree", "--show-toplevel"])
            .output()
            .map_err(|source| GitError::Spawn { source })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        if !out.status.success() || lines.next() != Some("true") {
            return Err(GitError::NotARepository {
                path: path.to_path_buf(),
            });
        }
        let top = lines.next().ok_or_else(|| GitError::NotARepository {
            path: path.to_path_buf(),
        })?;
        Ok(Git {
            root: PathBuf::from(top),
        })
    }

    /// The top of the work tree.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A hardened command that may write (objects, refs, a private index).
    pub fn command(&self) -> Command {
        hardened(&self.root, false)
    }

    /// A hardened read-only command (`--no-optional-locks`).
    pub fn read_only(&self) -> Command {
        hardened(&self.root, true)
    }

    /// Run `command` with `stdin`, returning stdout; a non-zero exit is [`GitError::Failed`].
    pub fn run(&self, mut command: Command, stdin: Option<&[u8]>) -> Result<Vec<u8>, GitError> {
        let args = describe(&command);
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .map_err(|source| GitError::Spawn { source })?;
        let pipe_error = |source| GitError::Pipe {
            dir: self.root.clone(),
            args: args.clone(),
            source,
        };
        // Feed stdin from a thread so a large input and a large output cannot deadlock.
        let writer = match (stdin, child.stdin.take()) {
            (Some(input), Some(mut pipe)) => {
                let input = input.to_vec();
                Some(std::thread::spawn(move || pipe.write_all(&input)))
            }
            _ => None,
        };
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_end(&mut stdout).map_err(pipe_error)?;
        }
        if let Some(mut err) = child.stderr.take() {
            err.read_to_end(&mut stderr).map_err(pipe_error)?;
        }
        let status = child.wait().map_err(pipe_error)?;
        if let Some(writer) = writer {
            match writer.join() {
                Ok(Ok(())) => {}
                // git may exit early without reading everything; its status says why.
                Ok(Err(err)) if status.success() => return Err(pipe_error(err)),
                Ok(Err(_)) | Err(_) => {}
            }
        }
        if !status.success() {
            return Err(GitError::Failed {
                dir: self.root.clone(),
                args,
                code: status.code(),
                stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
            });
        }
        Ok(stdout)
    }

    /// Run and return stdout as trimmed text.
    pub fn run_text(&self, command: Command) -> Result<String, GitError> {
        let out = self.run(command, None)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// The commit `rev` names, or `None` if it does not exist (`HEAD` of an unborn branch).
    pub fn resolve_commit(&self, rev: &str) -> Result<Option<String>, GitError> {
        let mut command = self.read_only();
        command.args(["rev-parse", "--verify", "--quiet", "--end-of-options"]);
        command.arg(format!("{rev}^{{commit}}"));
        match self.run_text(command) {
            Ok(oid) => Ok(Some(oid)),
            Err(GitError::Failed { code: Some(1), .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The tree of a commit.
    pub fn tree_of(&self, commit: &str) -> Result<String, GitError> {
        let mut command = self.read_only();
        command.args(["rev-parse", "--verify", "--end-of-options"]);
        command.arg(format!("{commit}^{{tree}}"));
        self.run_text(command)
    }

    /// `(ref name, object id)` of every ref under `prefix`.
    pub fn refs_under(&self, prefix: &str) -> Result<Vec<(String, String)>, GitError> {
        let mut command = self.read_only();
        command.args(["for-each-ref", "--format=%(refname) %(objectname)", prefix]);
        let text = self.run_text(command)?;
        Ok(text
            .lines()
            .filter_map(|line| {
                let (name, oid) = line.split_once(' ')?;
                Some((name.to_owned(), oid.to_owned()))
            })
            .collect())
    }
}

/// A hardened `git` command run at `dir`.
pub fn hardened(dir: &Path, read_only: bool) -> Command {
    // An absolute program path lets std spawn with `posix_spawn` instead of `fork` (a bare
    // name plus an explicit `PATH` in the child's environment forces the `fork` fallback,
    // which copies the page tables of our whole address space on every command).
    let mut command = match git_program() {
        Some(program) => Command::new(program),
        None => Command::new("git"),
    };
    command.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ATTR_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_NO_REPLACE_OBJECTS", "1")
        .env("GIT_AUTHOR_NAME", COMMITTER_NAME)
        .env("GIT_AUTHOR_EMAIL", COMMITTER_EMAIL)
        .env("GIT_COMMITTER_NAME", COMMITTER_NAME)
        .env("GIT_COMMITTER_EMAIL", COMMITTER_EMAIL);
    command.arg("-C").arg(dir);
    for setting in HARDENING_CONFIG {
        command.arg("-c").arg(setting);
    }
    if read_only {
        command.arg("--no-optional-locks");
    }
    command
}

/// The absolute path of the `git` that `PATH` names, found once per process.
///
/// Only absolute `PATH` entries are searched; `None` (no such `git`) leaves the lookup to
/// the spawn itself, which then reports the usual "cannot run `git`" error.
fn git_program() -> Option<&'static Path> {
    static PROGRAM: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .filter(|dir| dir.is_absolute())
                .map(|dir| dir.join("git"))
                .find(|candidate| is_executable_file(candidate))
        })
        .as_deref()
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// The arguments after the hardening, for messages.
fn describe(command: &Command) -> String {
    let args: Vec<&OsStr> = command.get_args().collect();
    // Skip `-C dir`, the `-c` pairs and `--no-optional-locks`.
    let mut skip = 2 + 2 * HARDENING_CONFIG.len();
    if args.get(skip).is_some_and(|a| *a == "--no-optional-locks") {
        skip += 1;
    }
    args.iter()
        .skip(skip)
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
