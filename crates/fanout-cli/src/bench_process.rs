//! Whole processes as a benchmark measures them (`bench distributed`): the CPU time and peak
//! RSS the kernel accounts to a child when it is reaped, the CPU time of processes that are
//! not our children (the simulator, a local PostgreSQL server) read from `/proc`, and cgroup
//! v1 CPU groups that hold a process to a share of the machine.
//!
//! A child is reaped with `wait4`, whose accounting covers the child and every descendant it
//! reaped itself: a worker's `git` processes and its agents' sandboxed commands are counted
//! as the worker's. Children are never reaped any other way (no `waitpid(-1)`), so tokio's
//! own children (the simulator) are left to tokio.
//!
//! All of this crate's process-level unsafe code for benchmarks is here, each block with its
//! SAFETY note. It does not start the processes' work or judge their output: that is
//! `bench_distributed`'s.

#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// How a reaped child ended and what it cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Reaped {
    /// The exit code, or `None` when a signal ended it.
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub user_s: f64,
    pub system_s: f64,
    /// The largest resident set of the child or any descendant it reaped.
    pub peak_rss_mib: f64,
}

impl Reaped {
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.system_s
    }
}

/// Start `command`; its process id. The child is not waited for here: [`reap`] does that.
pub fn spawn(mut command: std::process::Command) -> anyhow::Result<i32> {
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    i32::try_from(child.id()).context("a process id out of range")
    // The `Child` is dropped without waiting: dropping it neither kills nor reaps the process.
}

/// Wait for the child `pid` to end (blocking) and read its accounting.
pub fn reap(pid: i32) -> anyhow::Result<Reaped> {
    let mut status: libc::c_int = 0;
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    loop {
        // SAFETY: `status` and `usage` are valid, writable and properly aligned for the
        // duration of the call; wait4 only writes through them.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, usage.as_mut_ptr()) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(error).with_context(|| format!("cannot wait for process {pid}"));
        }
    }
    // SAFETY: wait4 returned the child, so it filled the struct (which was zeroed anyway).
    let usage = unsafe { usage.assume_init() };
    let seconds = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    Ok(Reaped {
        code,
        signal,
        user_s: seconds(usage.ru_utime),
        system_s: seconds(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_mib: usage.ru_maxrss.max(0) as f64 / 1024.0,
    })
}

/// Send `signal` to the process `pid` (one not reaped yet: a reaped id may have been reused).
pub fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: kill has no memory effects; a process that is gone makes it fail with ESRCH,
    // which is of no interest here.
    let _ = unsafe { libc::kill(pid, signal) };
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant of the system and has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU time from `/proc/PID/stat`: the process's own, and that of the children it reaped.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcCpu {
    pub own_s: f64,
    pub children_s: f64,
    pub parent: i32,
}

/// `/proc/PID/stat`'s CPU fields, or `None` when the process is gone.
pub fn proc_cpu(pid: i32) -> Option<ProcCpu> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
    let ticks = clock_ticks_per_second();
    Some(ProcCpu {
        own_s: (field(14)? + field(15)?) / ticks,
        children_s: (field(16)? + field(17)?) / ticks,
        parent: field(4)? as i32,
    })
}

/// Whether the child `pid` has ended and waits to be reaped (a zombie).
pub fn has_ended(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|text| {
            let rest = &text[text.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "Z")
        })
        .unwrap_or(true)
}

fn all_pids() -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The CPU time of the process `root` and all its descendants so far: the live ones' own
/// and the reaped ones' (through their parents' children counters). For a server that forks
/// a process per connection (PostgreSQL), the difference between two readings is what it
/// spent in between.
pub fn tree_cpu_s(root: i32) -> Option<f64> {
    let table: Vec<(i32, ProcCpu)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, proc_cpu(pid)?)))
        .collect();
    let mut members = vec![root];
    let mut index = 0;
    while let Some(&parent) = members.get(index) {
        for (pid, cpu) in &table {
            if cpu.parent == parent && !members.contains(pid) {
                members.push(*pid);
            }
        }
        index += 1;
    }
    let root_cpu = table.iter().find(|(pid, _)| *pid == root)?.1;
    let mut total = root_cpu.children_s;
    for pid in &members {
        if let Some((_, cpu)) = table.iter().find(|(candidate, _)| candidate == pid) {
            total += cpu.own_s;
            if *pid != root {
                total += cpu.children_s;
            }
        }
    }
    Some(total)
}

/// The process whose command line holds `words` in a row (e.g. `["-p", "5433"]` for the
/// PostgreSQL server started by `scripts/with-postgres.sh` on that port).
pub fn find_by_arguments(words: &[&str]) -> Option<i32> {
    all_pids().into_iter().find(|pid| {
        let Ok(bytes) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let arguments: Vec<&[u8]> = bytes.split(|byte| *byte == 0).collect();
        arguments
            .windows(words.len())
            .any(|window| window.iter().zip(words).all(|(a, w)| *a == w.as_bytes()))
    })
}

/// Where cgroup v1's cpu controller is mounted on the machines this was written for.
const CPU_CGROUP_ROOT: &str = "/sys/fs/cgroup/cpu";
/// The CFS period the quota is a share of.
const CFS_PERIOD_US: u64 = 100_000;

/// A cgroup v1 cpu group limited to `cpus` CPUs (`cpu.cfs_quota_us` over
/// `cpu.cfs_period_us`); removed when dropped (once its processes are gone).
#[derive(Debug)]
pub struct CpuGroup {
    dir: PathBuf,
}

/// Throttling a group saw: periods in which it was held back and for how long in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Throttling {
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_s: f64,
}

impl CpuGroup {
    /// Make the group `name` under the cpu controller's root. Needs root and cgroup v1.
    pub fn create(name: &str, cpus: f64) -> anyhow::Result<CpuGroup> {
        if cpus.is_nan() || cpus <= 0.0 {
            bail!("a CPU limit must be above 0");
        }
        let root = Path::new(CPU_CGROUP_ROOT);
        if !root.join("cpu.cfs_quota_us").is_file() {
            bail!(
                "{CPU_CGROUP_ROOT} is not a cgroup v1 cpu controller: --cpu-limit needs one (and root)"
            );
        }
        let dir = root.join(name);
        if dir.exists() {
            let _ = std::fs::remove_dir(&dir);
        }
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create the cgroup {}", dir.display()))?;
        let group = CpuGroup { dir };
        let quota = (cpus * CFS_PERIOD_US as f64).round() as u64;
        group.write("cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
        group.write("cpu.cfs_quota_us", &quota.to_string())?;
        Ok(group)
    }

    fn write(&self, file: &str, value: &str) -> anyhow::Result<()> {
        let path = self.dir.join(file);
        std::fs::write(&path, value)
            .with_context(|| format!("cannot write {value} to {}", path.display()))
    }

    /// The file a process writes its id to in order to join the group (with all its threads
    /// and every child it starts afterwards).
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// What `cpu.stat` says so far.
    pub fn throttling(&self) -> Throttling {
        let text = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap_or_default();
        let mut throttling = Throttling::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(key), Some(value)) = (words.next(), words.next()) else {
                continue;
            };
            let value: u64 = value.parse().unwrap_or(0);
            match key {
                "nr_periods" => throttling.periods = value,
                "nr_throttled" => throttling.throttled_periods = value,
                "throttled_time" => throttling.throttled_s = value as f64 / 1e9,
                _ => {}
            }
        }
        throttling
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        // The last processes of the group may still be on their way out.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
