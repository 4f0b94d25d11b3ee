//! Landlock rules for a command: read and execute everywhere except hidden paths, write only
//! beneath the granted directories and files and the private temporary directory.
//!
//! The ruleset is built once per sandbox in the parent (opening paths and allocating is fine
//! there) and only enforced in the child with `landlock_restrict_self`, which keeps the
//! post-`fork` hook free of allocation.

use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::SandboxError;
use super::sys;

pub(crate) const EXECUTE: u64 = 1 << 0;
pub(crate) const WRITE_FILE: u64 = 1 << 1;
pub(crate) const READ_FILE: u64 = 1 << 2;
pub(crate) const READ_DIR: u64 = 1 << 3;
const REMOVE_DIR: u64 = 1 << 4;
const REMOVE_FILE: u64 = 1 << 5;
const MAKE_CHAR: u64 = 1 << 6;
const MAKE_DIR: u64 = 1 << 7;
const MAKE_REG: u64 = 1 << 8;
const MAKE_SOCK: u64 = 1 << 9;
const MAKE_FIFO: u64 = 1 << 10;
const MAKE_BLOCK: u64 = 1 << 11;
const MAKE_SYM: u64 = 1 << 12;
const REFER: u64 = 1 << 13;
pub(crate) const TRUNCATE: u64 = 1 << 14;
const IOCTL_DEV: u64 = 1 << 15;

const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

/// The lowest ABI that can enforce the policy fully: v3 adds `TRUNCATE` (below it truncation
/// by path is not restricted at all).
pub const REQUIRED_ABI: u32 = 3;

/// File-system rights the given ABI can handle.
fn handled_fs(abi: u32) -> u64 {
    let mut rights = EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM;
    if abi >= 2 {
        rights |= REFER;
    }
    if abi >= 3 {
        rights |= TRUNCATE;
    }
    if abi >= 5 {
        rights |= IOCTL_DEV;
    }
    rights
}

/// What the ruleset grants.
#[derive(Debug, Clone, Default)]
pub(crate) struct Grants {
    /// Directories writable beneath (files may be created, changed, removed).
    pub write_dirs: Vec<PathBuf>,
    /// Single files writable in place.
    pub write_files: Vec<PathBuf>,
    /// Paths (files or directories) not readable even though everything else is.
    pub hidden: Vec<PathBuf>,
    /// Deny TCP bind and connect in the ruleset too (defence in depth with the netns).
    pub deny_tcp: bool,
}

/// A ruleset fd ready for `landlock_restrict_self`, plus what it could not enforce.
#[derive(Debug)]
pub(crate) struct Ruleset {
    pub fd: OwnedFd,
    pub rules: usize,
}

fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    Ok(file.into())
}

pub(crate) fn build(abi: u32, grants: &Grants) -> Result<Ruleset, SandboxError> {
    let fs = handled_fs(abi);
    let net = if abi >= 4 && grants.deny_tcp {
        NET_BIND_TCP | NET_CONNECT_TCP
    } else {
        0
    };
    let scoped = if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    };
    let fd = sys::landlock_create_ruleset(fs, net, scoped, abi)
        .map_err(|error| SandboxError::Landlock(format!("cannot create a ruleset: {error}")))?;
    let mut ruleset = Ruleset { fd, rules: 0 };
    let read = (READ_FILE | READ_DIR | EXECUTE) & fs;
    grant_read_except(&mut ruleset, Path::new("/"), read, &grants.hidden)?;
    let write_dir = fs & !(READ_FILE | EXECUTE | READ_DIR);
    for dir in &grants.write_dirs {
        add(&mut ruleset, dir, write_dir | READ_DIR)?;
    }
    let write_file = (WRITE_FILE | TRUNCATE) & fs;
    for file in &grants.write_files {
        add(&mut ruleset, file, write_file)?;
    }
    for device in ["/dev/null", "/dev/zero", "/dev/full"] {
        add(&mut ruleset, Path::new(device), write_file)?;
    }
    Ok(ruleset)
}

fn add(ruleset: &mut Ruleset, path: &Path, access: u64) -> Result<(), SandboxError> {
    let fd = open_path(path).map_err(|error| {
        SandboxError::Landlock(format!("cannot open {}: {error}", path.display()))
    })?;
    let is_dir = std::fs::metadata(path).map(|m| m.is_dir()).unwrap_or(false);
    // Only file rights apply to a file.
    let access = if is_dir {
        access
    } else {
        access & (EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
    };
    sys::landlock_add_path_rule(ruleset.fd.as_fd(), fd.as_fd(), access).map_err(|error| {
        SandboxError::Landlock(format!("cannot add a rule for {}: {error}", path.display()))
    })?;
    ruleset.rules += 1;
    Ok(())
}

/// Grant `read` beneath `dir`, except on the `hidden` paths: directories on the way to a
/// hidden path get only `READ_DIR` and are split into their entries.
fn grant_read_except(
    ruleset: &mut Ruleset,
    dir: &Path,
    read: u64,
    hidden: &[PathBuf],
) -> Result<(), SandboxError> {
    if !hidden.iter().any(|path| path.starts_with(dir)) {
        return add(ruleset, dir, read);
    }
    add(ruleset, dir, read & (READ_DIR | EXECUTE))?;
    let entries = std::fs::read_dir(dir).map_err(|error| {
        SandboxError::Landlock(format!("cannot list {}: {error}", dir.display()))
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        if hidden.iter().any(|hidden| hidden == &path) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_symlink() {
            // Access through a link is checked on its target, which has its own rule.
            continue;
        }
        let granted = if kind.is_dir() {
            grant_read_except(ruleset, &path, read, hidden)
        } else {
            add(ruleset, &path, read)
        };
        // Entries come and go (other processes' temporary files): one that vanished between
        // the listing and the rule needs no rule.
        if let Err(error) = granted
            && path.symlink_metadata().is_ok()
        {
            return Err(error);
        }
    }
    Ok(())
}
