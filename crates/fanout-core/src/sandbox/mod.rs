//! OS enforcement for the commands agents run.
//!
//! Every command is started by [`Sandbox::run`] in a fresh session (its own process group) and,
//! between `fork` and `exec`:
//! - joins a per-command pids cgroup (when the host offers one) so a fork bomb stops at
//!   [`ResourceLimits::processes`] and every descendant, daemonised or not, can be killed;
//! - gets resource limits (CPU seconds, address space, file size, processes);
//! - enters a fresh network namespace when the network is denied (no TCP, UDP, DNS or
//!   loopback at all);
//! - sets `PR_SET_NO_NEW_PRIVS` (set-id binaries do not gain privileges) and drops every
//!   capability (bounding, ambient, effective, permitted), so a root engine runs root-owned
//!   commands without CAP_SYS_PTRACE, CAP_MKNOD, CAP_SYS_ADMIN and the rest; the engine
//!   itself is made non-dumpable so its `/proc` entries (environment, memory) are closed;
//! - gets a seccomp filter refusing `socket(AF_UNIX)` (no host daemons: Docker, SSH agent,
//!   D-Bus) and `io_uring`;
//! - is restricted by Landlock: read and execute everywhere but hidden paths (secrets), write
//!   only beneath the granted directories, the granted files and a private temporary directory.
//!
//! Landlock grants whole trees, so the writable directories are snapshotted before and after
//! the command: changes to declared files are reported (and journalled by the caller),
//! anything else is reverted and reported as a violation.
//!
//! If the kernel cannot enforce what the policy needs (no Landlock, ABI below
//! [`landlock::REQUIRED_ABI`], no network namespace), the command is refused with
//! [`SandboxError`] unless the policy is in [`SandboxMode::BestEffort`], which the user must ask
//! for in the config.

pub(crate) mod landlock;
pub(crate) mod snapshot;
#[doc(hidden)]
pub mod sys;

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncReadExt;

use crate::policy::{NetworkAccess, SandboxMode};
pub use snapshot::MAX_SNAPSHOT_BYTES;

/// Where a per-command pids cgroup is created (cgroup v1 pids hierarchy).
const CGROUP_PIDS_ROOT: &str = "/sys/fs/cgroup/pids";

static COMMAND_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Why a command could not be run in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("Landlock: {0}")]
    Landlock(String),
    #[error(
        "the kernel cannot enforce the sandbox ({0}); refusing to run. Set `sandbox: best_effort` \
         in the workflow to run with a weaker sandbox"
    )]
    Unsupported(String),
    #[error("snapshot of the writable directories failed: {0}")]
    Snapshot(String),
    #[error("cannot start the command: {0}")]
    Spawn(String),
    #[error("cannot create the private temporary directory: {0}")]
    TempDir(String),
    #[error(
        "{0} has a hard link outside the writable directories; a command could change that \
         file through it, so commands are refused while it exists"
    )]
    HardLink(PathBuf),
}

/// Resource limits applied with `setrlimit` (and the pids cgroup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResourceLimits {
    pub cpu_seconds: u64,
    pub address_space_bytes: u64,
    pub file_size_bytes: u64,
    pub processes: u64,
    pub open_files: u64,
}

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            cpu_seconds: 120,
            address_space_bytes: 8 << 30,
            file_size_bytes: 256 << 20,
            processes: 256,
            open_files: 1024,
        }
    }
}

/// How commands run.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    pub network: NetworkAccess,
    pub timeout: Duration,
    /// Bytes of stdout and of stderr kept; the rest is counted and dropped.
    pub output_cap: usize,
    pub limits: ResourceLimits,
    /// Absolute paths commands may not read (secrets outside the repository).
    pub hidden: Vec<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        let mut hidden = Vec::new();
        if let Some(home) = std::env::var_os("HOME") {
            let home = PathBuf::from(home);
            for name in [
                ".ssh",
                ".aws",
                ".gnupg",
                ".netrc",
                ".git-credentials",
                ".docker",
                ".kube",
            ] {
                hidden.push(home.join(name));
            }
            hidden.push(home.join(".config/gh"));
        }
        SandboxConfig {
            mode: SandboxMode::Enforce,
            network: NetworkAccess::Deny,
            timeout: Duration::from_secs(120),
            output_cap: 64 * 1024,
            limits: ResourceLimits::default(),
            hidden,
        }
    }
}

/// What the running kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KernelSupport {
    /// 0 when Landlock is unavailable.
    pub landlock_abi: u32,
    /// A pids cgroup can be created for each command.
    pub pids_cgroup: bool,
}

/// Probe the kernel (once per process; the answer does not change).
pub fn probe() -> KernelSupport {
    static SUPPORT: std::sync::OnceLock<KernelSupport> = std::sync::OnceLock::new();
    *SUPPORT.get_or_init(|| KernelSupport {
        landlock_abi: sys::landlock_abi(),
        pids_cgroup: Cgroup::create(1).is_ok(),
    })
}

/// What the sandbox may write: the agent's write-scope directories and files (absolute), and
/// which absolute paths are secrets (unreadable).
#[derive(Debug, Clone, Default)]
pub struct WriteGrants {
    pub dirs: Vec<PathBuf>,
    pub files: Vec<PathBuf>,
    pub hidden: Vec<PathBuf>,
}

/// A command's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutcome {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Bytes dropped beyond [`SandboxConfig::output_cap`] (stdout + stderr).
    pub truncated_bytes: u64,
    /// Absolute paths the command changed under the writable directories, with their state
    /// before the command (`None`: did not exist).
    pub changes: Vec<PathChange>,
    pub duration: Duration,
}

/// One path a command changed, with its pre-image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathChange {
    pub path: PathBuf,
    pub kind: ChangeKind,
    /// Regular file content and mode before the command, when it was a regular file.
    pub before: Option<(Vec<u8>, u32)>,
    /// Whether the path is a directory (before or after).
    pub is_dir: bool,
    /// Whether the path was or became a symlink or a special file.
    pub is_special: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    Created,
    Modified,
    Deleted,
}

/// A prepared sandbox for one agent: the Landlock ruleset, the private temp dir and the
/// writable roots. Cheap to run many commands through.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    support: KernelSupport,
    /// Rules for each command. Landlock rules attach to inodes, and atomic writes (temp file
    /// and rename) replace inodes, so the ruleset is rebuilt for every command.
    landlock_grants: landlock::Grants,
    /// Rules in the last ruleset built.
    rules: std::sync::atomic::AtomicUsize,
    grants: WriteGrants,
    temp_dir: PathBuf,
    /// Gaps accepted in best-effort mode, for the dry-run report.
    weakened: Vec<String>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.temp_dir);
    }
}

impl Sandbox {
    /// Check the kernel, create the private temp dir and build the ruleset.
    pub fn new(config: SandboxConfig, grants: WriteGrants) -> Result<Sandbox, SandboxError> {
        let support = probe();
        let mut weakened = Vec::new();
        if let Err(error) = sys::make_engine_non_dumpable() {
            if config.mode == SandboxMode::Enforce {
                return Err(SandboxError::Unsupported(format!(
                    "cannot make the engine non-dumpable: {error}"
                )));
            }
            weakened.push(format!("the engine's /proc entries are readable: {error}"));
        }
        if support.landlock_abi < landlock::REQUIRED_ABI {
            let gap = if support.landlock_abi == 0 {
                "Landlock is not available".to_string()
            } else {
                format!(
                    "Landlock ABI {} cannot restrict truncation (ABI {} needed)",
                    support.landlock_abi,
                    landlock::REQUIRED_ABI
                )
            };
            if config.mode == SandboxMode::Enforce {
                return Err(SandboxError::Unsupported(gap));
            }
            weakened.push(gap);
        }
        let temp_dir = std::env::temp_dir().join(format!(
            "fanout-sandbox-{}-{}",
            std::process::id(),
            COMMAND_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&temp_dir)
            .map_err(|error| SandboxError::TempDir(error.to_string()))?;
        let mut landlock_grants = landlock::Grants {
            write_dirs: grants.dirs.clone(),
            write_files: grants.files.clone(),
            hidden: config
                .hidden
                .iter()
                .chain(&grants.hidden)
                .filter(|path| path.exists())
                .cloned()
                .collect(),
            deny_tcp: config.network == NetworkAccess::Deny,
        };
        landlock_grants.write_dirs.push(temp_dir.clone());
        let mut rules = 0;
        if support.landlock_abi > 0 {
            match landlock::build(support.landlock_abi, &landlock_grants) {
                Ok(ruleset) => rules = ruleset.rules,
                Err(error) if config.mode == SandboxMode::BestEffort => {
                    weakened.push(error.to_string());
                }
                Err(error) => {
                    let _ = std::fs::remove_dir_all(&temp_dir);
                    return Err(error);
                }
            }
        }
        if !support.pids_cgroup {
            weakened.push("no pids cgroup: process count limited by RLIMIT_NPROC only".into());
        }
        Ok(Sandbox {
            config,
            support,
            landlock_grants,
            rules: std::sync::atomic::AtomicUsize::new(rules),
            grants,
            temp_dir,
            weakened,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    pub fn support(&self) -> KernelSupport {
        self.support
    }

    /// The private temporary directory (`HOME` and `TMPDIR` of commands).
    pub fn temp_dir(&self) -> &Path {
        &self.temp_dir
    }

    /// What this sandbox does not enforce (empty in enforce mode on a capable kernel).
    pub fn weakened(&self) -> &[String] {
        &self.weakened
    }

    /// Number of Landlock rules in the ruleset.
    pub fn landlock_rules(&self) -> usize {
        self.rules.load(Ordering::Relaxed)
    }

    /// Run `program` with `args` in `cwd`, with exactly the environment `env`.
    pub async fn run(
        &self,
        program: &Path,
        args: &[String],
        cwd: &Path,
        env: &[(String, String)],
    ) -> Result<CommandOutcome, SandboxError> {
        let started = Instant::now();
        let mut roots = self.grants.dirs.clone();
        roots.extend(self.grants.files.iter().cloned());
        let before = snapshot::Snapshot::take(&roots, true)?;
        // Landlock checks the path used to open a file, so a file in a granted tree that is
        // also linked from elsewhere (another agent's file, a file outside the repository)
        // would be writable through it. Refuse unless every link is inside the snapshot.
        if let Some(path) = before.aliased_file() {
            return Err(SandboxError::HardLink(path));
        }
        let ruleset = if self.support.landlock_abi == 0 {
            None
        } else {
            match landlock::build(self.support.landlock_abi, &self.landlock_grants) {
                Ok(ruleset) => {
                    self.rules.store(ruleset.rules, Ordering::Relaxed);
                    Some(ruleset)
                }
                Err(_) if self.config.mode == SandboxMode::BestEffort => None,
                Err(error) => return Err(error),
            }
        };

        let cgroup = if self.support.pids_cgroup {
            Cgroup::create(self.config.limits.processes).ok()
        } else {
            None
        };
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .envs(
                env.iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from(v))),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let limits = self.config.limits;
        sys::install_pre_exec(
            &mut command,
            sys::ChildSetup {
                cgroup_procs: cgroup.as_ref().map(|cgroup| cgroup.procs.as_raw_fd()),
                rlimits: vec![
                    (libc::RLIMIT_CPU, limits.cpu_seconds),
                    (libc::RLIMIT_AS, limits.address_space_bytes),
                    (libc::RLIMIT_FSIZE, limits.file_size_bytes),
                    (libc::RLIMIT_NPROC, limits.processes),
                    (libc::RLIMIT_NOFILE, limits.open_files),
                    (libc::RLIMIT_CORE, 0),
                ],
                unshare_net: self.config.network == NetworkAccess::Deny,
                landlock: ruleset.as_ref().map(|ruleset| ruleset.fd.as_raw_fd()),
                seccomp: sys::seccomp_filter(),
            },
        );
        let mut child = command
            .spawn()
            .map_err(|error| SandboxError::Spawn(format!("{}: {error}", program.display())))?;
        let pid = child.id().unwrap_or(0);
        let cap = self.config.output_cap;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let read_out = tokio::spawn(read_capped(stdout, cap));
        let read_err = tokio::spawn(read_capped(stderr, cap));

        let waited = tokio::time::timeout(self.config.timeout, child.wait()).await;
        // Whatever happened, nothing the command started outlives it.
        sys::kill_process_group(pid);
        if let Some(cgroup) = &cgroup {
            cgroup.kill_all();
        }
        let (status, timed_out) = match waited {
            Ok(Ok(status)) => (Some(status), false),
            Ok(Err(error)) => return Err(SandboxError::Spawn(error.to_string())),
            Err(_) => {
                let _ = child.start_kill();
                (child.wait().await.ok(), true)
            }
        };
        let drain = Duration::from_secs(2);
        let (stdout, out_dropped) = match tokio::time::timeout(drain, read_out).await {
            Ok(Ok(read)) => read,
            _ => (Vec::new(), 0),
        };
        let (stderr, err_dropped) = match tokio::time::timeout(drain, read_err).await {
            Ok(Ok(read)) => read,
            _ => (Vec::new(), 0),
        };
        drop(cgroup);

        let after = snapshot::Snapshot::take(&roots, false)?;
        let changes = before
            .diff(&after)
            .into_iter()
            .map(|change| {
                let (path, kind) = match change {
                    snapshot::Change::Created(path, _) => (path, ChangeKind::Created),
                    snapshot::Change::Modified(path) => (path, ChangeKind::Modified),
                    snapshot::Change::Deleted(path) => (path, ChangeKind::Deleted),
                };
                let old = before.entries.get(&path);
                let new = after.entries.get(&path);
                let kinds = [old.map(|e| e.kind), new.map(|e| e.kind)];
                PathChange {
                    before: old.and_then(|entry| {
                        entry.content.clone().map(|content| (content, entry.mode))
                    }),
                    is_dir: kinds.contains(&Some(snapshot::Kind::Dir)),
                    is_special: kinds.contains(&Some(snapshot::Kind::Symlink))
                        || kinds.contains(&Some(snapshot::Kind::Other)),
                    path,
                    kind,
                }
            })
            .collect();
        use std::os::unix::process::ExitStatusExt;
        Ok(CommandOutcome {
            exit_code: status.and_then(|status| status.code()),
            signal: status.and_then(|status| status.signal()),
            timed_out,
            stdout,
            stderr,
            truncated_bytes: out_dropped + err_dropped,
            changes,
            duration: started.elapsed(),
        })
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(
    reader: Option<R>,
    cap: usize,
) -> (Vec<u8>, u64) {
    let Some(mut reader) = reader else {
        return (Vec::new(), 0);
    };
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                let take = room.min(n);
                kept.extend_from_slice(&buffer[..take]);
                dropped += (n - take) as u64;
            }
        }
    }
    (kept, dropped)
}

/// A per-command pids cgroup (v1): a process cap for the whole tree and a way to kill every
/// member, including ones that left the process group.
#[derive(Debug)]
struct Cgroup {
    path: PathBuf,
    procs: OwnedFd,
}

impl Cgroup {
    fn create(max: u64) -> std::io::Result<Cgroup> {
        let path = Path::new(CGROUP_PIDS_ROOT).join(format!(
            "fanout-{}-{}",
            std::process::id(),
            COMMAND_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path)?;
        let setup = std::fs::write(path.join("pids.max"), max.to_string()).and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(path.join("cgroup.procs"))
        });
        match setup {
            Ok(file) => Ok(Cgroup {
                path,
                procs: file.into(),
            }),
            Err(error) => {
                let _ = std::fs::remove_dir(&path);
                Err(error)
            }
        }
    }

    fn kill_all(&self) {
        for _ in 0..100 {
            let Ok(text) = std::fs::read_to_string(self.path.join("cgroup.procs")) else {
                return;
            };
            let pids: Vec<i32> = text
                .lines()
                .filter_map(|line| line.trim().parse().ok())
                .collect();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                sys::kill_process(pid);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        // The kernel may take a moment to release the last exited member.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Start-up cost of sandboxed commands.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BenchReport {
    pub iterations: usize,
    pub median: Duration,
    pub p99: Duration,
    pub min: Duration,
    pub max: Duration,
}

/// Measure the full cost of running `true` in a sandbox (snapshot, cgroup, network namespace,
/// Landlock, spawn, wait, diff) `iterations` times, with a small writable directory.
pub async fn bench_start(iterations: usize) -> Result<BenchReport, SandboxError> {
    let dir = std::env::temp_dir().join(format!("fanout-bench-{}", std::process::id()));
    let work = dir.join("src");
    std::fs::create_dir_all(&work).map_err(|error| SandboxError::TempDir(error.to_string()))?;
    for index in 0..20 {
        let _ = std::fs::write(work.join(format!("file{index}.rs")), "fn main() {}\n");
    }
    let result = async {
        let sandbox = Sandbox::new(
            SandboxConfig::default(),
            WriteGrants {
                dirs: vec![work.clone()],
                ..WriteGrants::default()
            },
        )?;
        let program = Path::new("/bin/true");
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations.max(1) {
            let started = Instant::now();
            let outcome = sandbox.run(program, &[], &dir, &[]).await?;
            samples.push(started.elapsed());
            if outcome.exit_code != Some(0) {
                return Err(SandboxError::Spawn(format!(
                    "`true` exited with {:?}: {}",
                    outcome.exit_code,
                    String::from_utf8_lossy(&outcome.stderr)
                )));
            }
        }
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Ok(BenchReport {
            iterations: samples.len(),
            median: at(0.5),
            p99: at(0.99),
            min: samples[0],
            max: samples[samples.len() - 1],
        })
    }
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
