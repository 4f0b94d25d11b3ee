//! Every raw system call of the tool, sandbox and durability layers, in one place.
//!
//! The workspace denies `unsafe_code`; this module is the one exception. Each block is a
//! direct libc call on arguments that are checked (NUL-free C strings, fds we own or borrow)
//! and carries a SAFETY note. Nothing here allocates in the child after `fork`: the
//! [`ChildSetup`] hook only uses values prepared by the parent.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `struct open_how` from `linux/openat2.h` (libc marks its own copy non-exhaustive).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(2)` relative to `dir`, with `resolve` flags such as `RESOLVE_BENEATH`.
pub(crate) fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: u64::from(mode),
        resolve,
    };
    loop {
        // SAFETY: `path` is a valid NUL-terminated string, `how` lives across the call and its
        // size is passed; the kernel returns a new fd we take ownership of, or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd and nobody else owns it.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EAGAIN) && error.kind() != io::ErrorKind::Interrupted
        {
            return Err(error);
        }
    }
}

/// File status of `name` in `dir` without following a final symlink.
pub(crate) fn fstatat_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: `stat` is plain old data; zeroed is a valid value that the kernel overwrites.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, NUL-terminated name, `stat` points to writable memory of the right type.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut stat,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(stat)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `mkdirat(2)`.
pub(crate) fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) };
    check(rc)
}

/// `syncfs(2)`: write out everything dirty on the filesystem that holds `fd` (data, inodes,
/// directory entries) and flush the device cache; reports earlier writeback errors too.
pub(crate) fn syncfs(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid fd; no pointers are passed.
    let rc = unsafe { libc::syncfs(fd.as_raw_fd()) };
    check(rc)
}

/// `RLIMIT_NOFILE` as (soft, hard).
pub(crate) fn open_file_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `rlimit` that outlives the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    check(rc)?;
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Set the soft `RLIMIT_NOFILE` (the hard limit is left as it is).
pub(crate) fn set_open_file_soft_limit(soft: u64, hard: u64) -> io::Result<()> {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a valid `rlimit` that outlives the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    check(rc)
}

/// Duplicate `fd` onto the lowest free descriptor number at or above `min` (`F_DUPFD_CLOEXEC`).
pub(crate) fn dup_at_least(fd: BorrowedFd<'_>, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: a valid fd and an integer argument; the kernel returns a new fd we own, or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// `unlinkat(2)`; `remove_dir` selects `AT_REMOVEDIR`.
pub(crate) fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> io::Result<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid fd and NUL-terminated name.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) };
    check(rc)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---- Landlock -------------------------------------------------------------------------------

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;

/// The Landlock ABI version the running kernel offers (0 when Landlock is unavailable).
pub(crate) fn landlock_abi() -> u32 {
    // SAFETY: a NULL attribute with size 0 and the VERSION flag is the documented probe.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(rc).unwrap_or(0)
}

/// Create a ruleset handling the given rights. `abi` decides which fields the kernel reads.
pub(crate) fn landlock_create_ruleset(
    fs: u64,
    net: u64,
    scoped: u64,
    abi: u32,
) -> io::Result<OwnedFd> {
    let attr = RulesetAttr {
        handled_access_fs: fs,
        handled_access_net: net,
        scoped,
    };
    let size = match abi {
        0..=3 => 8,
        4 | 5 => 16,
        _ => std::mem::size_of::<RulesetAttr>(),
    };
    // SAFETY: `attr` is valid for `size` bytes (a prefix of the struct) across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const RulesetAttr,
            size,
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd (O_CLOEXEC) owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Add a path-beneath rule granting `access` under the file or directory `parent`.
pub(crate) fn landlock_add_path_rule(
    ruleset: BorrowedFd<'_>,
    parent: BorrowedFd<'_>,
    access: u64,
) -> io::Result<()> {
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: parent.as_raw_fd(),
    };
    // SAFETY: valid ruleset fd, `attr` is a packed struct that lives across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset.as_raw_fd(),
            LANDLOCK_RULE_PATH_BENEATH,
            &attr as *const PathBeneathAttr,
            0u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

// ---- seccomp ---------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JGE_K: u16 = 0x35;
const BPF_RET_K: u16 = 0x06;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A seccomp filter that refuses `socket(AF_UNIX, ...)` (no connecting to host daemons such
/// as the Docker socket or an SSH agent; `socketpair` stays allowed) and the `io_uring`
/// calls (which would bypass per-call checks), and kills on a foreign ABI (x32 numbers,
/// another architecture). `None` on architectures this filter does not know.
pub(crate) fn seccomp_filter() -> Option<Vec<libc::sock_filter>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let nr = |n: libc::c_long| n as u32;
        Some(vec![
            /* 0 */ bpf(BPF_LD_W_ABS, 0, 0, 4), // arch
            /* 1 */ bpf(BPF_JEQ_K, 0, 11, AUDIT_ARCH),
            /* 2 */ bpf(BPF_LD_W_ABS, 0, 0, 0), // syscall number
            /* 3 */ bpf(BPF_JGE_K, 9, 0, 0x4000_0000),
            /* 4 */ bpf(BPF_JEQ_K, 7, 0, nr(libc::SYS_io_uring_setup)),
            /* 5 */ bpf(BPF_JEQ_K, 6, 0, nr(libc::SYS_io_uring_enter)),
            /* 6 */ bpf(BPF_JEQ_K, 5, 0, nr(libc::SYS_io_uring_register)),
            /* 7 */ bpf(BPF_JEQ_K, 0, 2, nr(libc::SYS_socket)),
            /* 8 */ bpf(BPF_LD_W_ABS, 0, 0, 16), // args[0], low half
            /* 9 */ bpf(BPF_JEQ_K, 1, 0, libc::AF_UNIX as u32),
            /* 10 */ bpf(BPF_RET_K, 0, 0, RET_ALLOW),
            /* 11 */ bpf(BPF_RET_K, 0, 0, RET_ERRNO | libc::EACCES as u32),
            /* 12 */ bpf(BPF_RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
            /* 13 */ bpf(BPF_RET_K, 0, 0, RET_KILL_PROCESS),
        ])
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        None
    }
}

// ---- the child side ------------------------------------------------------------------------

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Make the engine process non-dumpable, so that a command running as the same uid without
/// CAP_SYS_PTRACE cannot read `/proc/<engine>/environ`, `mem` or `fd/*` (the API keys live
/// there). Side effect: no core dumps of the engine.
pub(crate) fn make_engine_non_dumpable() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    check(rc)
}

/// What the child does between `fork` and `exec`. Everything is prepared by the parent, so
/// the hook itself only makes system calls (async-signal-safe; no allocation, no locks).
#[derive(Debug, Clone)]
pub(crate) struct ChildSetup {
    /// `cgroup.procs` of a per-command pids cgroup, opened for writing by the parent.
    pub cgroup_procs: Option<RawFd>,
    /// `(resource, limit)` pairs applied with `setrlimit`.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    pub unshare_net: bool,
    /// A Landlock ruleset fd to enforce on the child.
    pub landlock: Option<RawFd>,
    /// A seccomp filter from [`seccomp_filter`].
    pub seccomp: Option<Vec<libc::sock_filter>>,
}

/// Install [`ChildSetup`] as the command's `pre_exec` hook.
pub(crate) fn install_pre_exec(command: &mut tokio::process::Command, setup: ChildSetup) {
    let hook = move || -> io::Result<()> {
        // SAFETY (whole hook): runs in the forked child before exec; every call below is a
        // plain system call on integers and fds the parent prepared and keeps open until the
        // spawn returns; no allocation happens here.
        unsafe {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = setup.cgroup_procs {
                // "0" moves the writing process (this child) into the cgroup.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            for &(resource, limit) in &setup.rlimits {
                let value = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &value) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if setup.unshare_net && libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(fd) = setup.landlock
                && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if let Some(filter) = &setup.seccomp {
                let program = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr().cast_mut(),
                };
                if libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const libc::sock_fprog,
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            // No capabilities: an empty bounding set (so exec as uid 0 regains none), no
            // ambient set, then empty effective, permitted and inheritable sets. Without
            // CAP_SYS_PTRACE and with the engine non-dumpable, /proc/<engine>/environ and
            // /proc/<engine>/mem are closed; mknod, mount and raw sockets are refused.
            for capability in 0..=63 {
                libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0);
            }
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            let header = CapHeader {
                version: LINUX_CAPABILITY_VERSION_3,
                pid: 0,
            };
            let data = [CapData::default(); 2];
            if libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            // No descriptor of the engine (sockets, pipes, the ruleset) survives exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
        }
        Ok(())
    };
    // SAFETY: the hook is async-signal-safe as documented above.
    unsafe {
        command.pre_exec(hook);
    }
}

/// Send SIGKILL to a whole process group.
pub(crate) fn kill_process_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid)
        && pgid > 1
    {
        // SAFETY: kill(2) with a negative pid signals the group; no memory involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Send SIGKILL to one process.
pub(crate) fn kill_process(pid: i32) {
    if pid > 1 {
        // SAFETY: kill(2) on a pid; no memory involved.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}
