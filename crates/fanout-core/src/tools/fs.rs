//! The scoped file system: every model-supplied path resolved beneath the repository root.
//!
//! Paths are normalised lexically (absolute paths must lie under the root, `..` may not
//! leave it) and then opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` from a directory fd of the root, so a symlink anywhere in the
//! path, or one swapped in between a check and a write, makes the call fail instead of
//! leaving the tree. Files with more than one hard link are refused (they may alias a file
//! outside), checked on the opened file itself, so what was checked is what is written.
//!
//! Writes replace a file's contents in place (write, then cut to length) and create a new file
//! directly at its name: no temporary inode, no rename, no freed inode per write. On
//! filesystems where inode allocation and replace-by-rename are slow (ext4 without a journal
//! scans recently freed inodes; `auto_da_alloc` flushes on rename) this is what lets a
//! thousand agents write at once. A write is therefore not atomic to a concurrent reader or
//! across a crash; what makes a run crash-safe is the agent's durable pre-image, which
//! `fanout resume` restores for every agent that was in flight (see `run::preimage`), and a
//! checkpoint never reads a running agent's scope (it shows the pre-image instead: see
//! `run::checkpoint`).
//!
//! This layer knows nothing of scopes: [`crate::policy::ScopePolicy`] decides, this module
//! makes sure the decision applies to the file that is actually touched.

use std::ffi::CString;
use std::fs::{File, Permissions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::policy::DenyReason;
use crate::sandbox::sys;

const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// Why a file operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Denied(DenyReason),
    #[error("no such file or directory: {0}")]
    NotFound(String),
    #[error("{path} is {size} bytes, more than the {cap}-byte limit; read a line range")]
    TooLarge { path: String, size: u64, cap: u64 },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

impl FsError {
    fn io(path: &str, error: io::Error) -> FsError {
        match error.raw_os_error() {
            Some(libc::ENOENT) => FsError::NotFound(path.to_string()),
            Some(libc::ELOOP) => FsError::Denied(DenyReason::Symlink),
            Some(libc::EXDEV) => FsError::Denied(DenyReason::BadPath {
                detail: "the path leaves the repository".into(),
            }),
            Some(libc::ENOTDIR) => FsError::Io {
                path: path.to_string(),
                message: "a path component is not a directory".into(),
            },
            _ => FsError::Io {
                path: path.to_string(),
                message: error.to_string(),
            },
        }
    }

    /// The denial behind this error, if it is one.
    pub fn deny_reason(&self) -> Option<&DenyReason> {
        match self {
            FsError::Denied(reason) => Some(reason),
            _ => None,
        }
    }
}

/// A file's state before a change: what [`super::journal::Journal`] keeps to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Absent,
    File { content: Vec<u8>, mode: u32 },
}

/// The repository root, held open as a directory fd.
#[derive(Debug)]
pub struct ScopedFs {
    root: OwnedFd,
    root_path: PathBuf,
}

impl ScopedFs {
    /// Open `root` (canonicalised once, here, by the engine; never from model input).
    pub fn open(root: &Path) -> io::Result<ScopedFs> {
        let root_path = root.canonicalize()?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(&root_path)?;
        Ok(ScopedFs {
            root: file.into(),
            root_path,
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Normalise a model-supplied path to a `/`-separated path relative to the root ("" is
    /// the root itself).
    pub fn resolve(&self, input: &str) -> Result<String, FsError> {
        let bad = |detail: &str| {
            FsError::Denied(DenyReason::BadPath {
                detail: detail.to_string(),
            })
        };
        if input.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        let path = Path::new(input.trim());
        let relative = if path.is_absolute() {
            path.strip_prefix(&self.root_path)
                .map_err(|_| bad("absolute paths must lie inside the repository"))?
        } else {
            path
        };
        let mut parts: Vec<&str> = Vec::new();
        for component in relative.components() {
            match component {
                Component::Normal(name) => {
                    parts.push(name.to_str().ok_or_else(|| bad("not valid UTF-8"))?)
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    if parts.pop().is_none() {
                        return Err(bad("`..` leaves the repository"));
                    }
                }
                Component::RootDir | Component::Prefix(_) => {
                    return Err(bad("absolute paths must lie inside the repository"));
                }
            }
        }
        Ok(parts.join("/"))
    }

    fn c_path(relative: &str) -> Result<CString, FsError> {
        let text = if relative.is_empty() { "." } else { relative };
        CString::new(text).map_err(|_| {
            FsError::Denied(DenyReason::BadPath {
                detail: "contains a NUL byte".into(),
            })
        })
    }

    /// Open a regular file for reading, refusing symlinks, special files and hard links.
    pub fn open_read(&self, relative: &str) -> Result<File, FsError> {
        let path = Self::c_path(relative)?;
        let fd = sys::openat2(
            self.root.as_fd(),
            &path,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY,
            0,
            RESOLVE,
        )
        .map_err(|error| FsError::io(relative, error))?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|error| FsError::io(relative, error))?;
        if !meta.is_file() {
            return Err(FsError::Denied(DenyReason::NotRegularFile));
        }
        if std::os::unix::fs::MetadataExt::nlink(&meta) > 1 {
            return Err(FsError::Denied(DenyReason::HardLink));
        }
        Ok(file)
    }

    /// Read a whole file, at most `cap` bytes.
    pub fn read(&self, relative: &str, cap: u64) -> Result<Vec<u8>, FsError> {
        let file = self.open_read(relative)?;
        let size = file
            .metadata()
            .map_err(|error| FsError::io(relative, error))?
            .len();
        if size > cap {
            return Err(FsError::TooLarge {
                path: relative.to_string(),
                size,
                cap,
            });
        }
        let mut content = Vec::with_capacity(size as usize);
        file.take(cap + 1)
            .read_to_end(&mut content)
            .map_err(|error| FsError::io(relative, error))?;
        Ok(content)
    }

    /// Open a directory beneath the root (no symlinks).
    pub fn open_dir(&self, relative: &str) -> Result<OwnedFd, FsError> {
        let path = Self::c_path(relative)?;
        sys::openat2(
            self.root.as_fd(),
            &path,
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
            0,
            RESOLVE,
        )
        .map_err(|error| {
            // O_NOFOLLOW | O_DIRECTORY on a final symlink reports ENOTDIR; say what it is.
            let is_link = error.raw_os_error() == Some(libc::ENOTDIR)
                && sys::fstatat_nofollow(self.root.as_fd(), &path)
                    .is_ok_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFLNK);
            if is_link {
                FsError::Denied(DenyReason::Symlink)
            } else {
                FsError::io(relative, error)
            }
        })
    }

    /// The current state of a file, for the journal.
    pub fn state(&self, relative: &str) -> Result<FileState, FsError> {
        let (dir, name) = match self.parent(relative, false) {
            Ok(found) => found,
            Err(FsError::NotFound(_)) => return Ok(FileState::Absent),
            Err(error) => return Err(error),
        };
        state_in(&dir, &name, relative)
    }

    /// Split `relative` into its (opened) parent directory and the final name, creating
    /// missing parents when `create` is set. Created directories are returned in `created`.
    fn parent_creating(
        &self,
        relative: &str,
        created: &mut Vec<String>,
    ) -> Result<(OwnedFd, CString), FsError> {
        let (parent, name) = split(relative)?;
        let mut dir = self.open_dir("")?;
        let mut so_far = String::new();
        for component in parent.split('/').filter(|c| !c.is_empty()) {
            if !so_far.is_empty() {
                so_far.push('/');
            }
            so_far.push_str(component);
            let c_component = Self::c_path(component)?;
            let next = sys::openat2(
                dir.as_fd(),
                &c_component,
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                0,
                RESOLVE,
            );
            dir = match next {
                Ok(fd) => fd,
                Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {
                    match sys::mkdirat(dir.as_fd(), &c_component, 0o755) {
                        Ok(()) => created.push(so_far.clone()),
                        // Another agent created it between our open and our mkdir: it is
                        // theirs (their journal removes it if they roll back and it is
                        // empty); we just go on into it.
                        Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(error) => return Err(FsError::io(&so_far, error)),
                    }
                    sys::openat2(
                        dir.as_fd(),
                        &c_component,
                        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        0,
                        RESOLVE,
                    )
                    .map_err(|error| FsError::io(&so_far, error))?
                }
                Err(error) => {
                    let is_link = sys::fstatat_nofollow(dir.as_fd(), &c_component)
                        .is_ok_and(|stat| stat.st_mode & libc::S_IFMT == libc::S_IFLNK);
                    if is_link {
                        return Err(FsError::Denied(DenyReason::Symlink));
                    }
                    return Err(FsError::io(&so_far, error));
                }
            };
        }
        Ok((dir, Self::c_path(name)?))
    }

    fn parent(&self, relative: &str, _create: bool) -> Result<(OwnedFd, CString), FsError> {
        let (parent, name) = split(relative)?;
        Ok((self.open_dir(parent)?, Self::c_path(name)?))
    }

    /// Replace (or create) a file with `content`. `mode`: `None` keeps the current mode
    /// (without set-id bits) or uses 0644 for a new file. Returns the directories created.
    pub fn write(
        &self,
        relative: &str,
        content: &[u8],
        mode: Option<u32>,
    ) -> Result<Vec<String>, FsError> {
        let mut created = Vec::new();
        let (dir, name) = self.parent_creating(relative, &mut created)?;
        match existing_regular(&dir, &name, relative)? {
            Some(current) => {
                let fd = sys::openat2(
                    dir.as_fd(),
                    &name,
                    libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
                    0,
                    RESOLVE,
                )
                .map_err(|error| FsError::io(relative, error))?;
                let mut file = File::from(fd);
                // The name may have been swapped since it was looked at: check the inode
                // that is about to be written.
                let meta = file
                    .metadata()
                    .map_err(|error| FsError::io(relative, error))?;
                if !meta.file_type().is_file() {
                    return Err(FsError::Denied(DenyReason::NotRegularFile));
                }
                if meta.nlink() > 1 {
                    return Err(FsError::Denied(DenyReason::HardLink));
                }
                let wanted = mode.unwrap_or(current & 0o777);
                file.write_all(content)
                    .and_then(|()| file.set_len(content.len() as u64))
                    .and_then(|()| {
                        if meta.mode() & 0o7777 == wanted {
                            Ok(())
                        } else {
                            file.set_permissions(Permissions::from_mode(wanted))
                        }
                    })
                    .map_err(|error| FsError::io(relative, error))?;
            }
            None => {
                let fd = sys::openat2(
                    dir.as_fd(),
                    &name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW,
                    0o600,
                    RESOLVE,
                )
                .map_err(|error| FsError::io(relative, error))?;
                let mut file = File::from(fd);
                let written = file.write_all(content).and_then(|()| {
                    file.set_permissions(Permissions::from_mode(mode.unwrap_or(0o644)))
                });
                if let Err(error) = written {
                    let _ = sys::unlinkat(dir.as_fd(), &name, false);
                    return Err(FsError::io(relative, error));
                }
            }
        }
        Ok(created)
    }

    /// Delete a file (never a directory, never through a symlink).
    pub fn remove(&self, relative: &str) -> Result<(), FsError> {
        let (dir, name) = self.parent(relative, false)?;
        let stat =
            sys::fstatat_nofollow(dir.as_fd(), &name).map_err(|e| FsError::io(relative, e))?;
        if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
            return Err(FsError::Denied(DenyReason::NotRegularFile));
        }
        sys::unlinkat(dir.as_fd(), &name, false).map_err(|error| FsError::io(relative, error))
    }

    /// Remove an empty directory.
    pub fn remove_empty_dir(&self, relative: &str) -> Result<(), FsError> {
        let (dir, name) = self.parent(relative, false)?;
        sys::unlinkat(dir.as_fd(), &name, true).map_err(|error| FsError::io(relative, error))
    }
}

fn split(relative: &str) -> Result<(&str, &str), FsError> {
    let (parent, name) = relative.rsplit_once('/').unwrap_or(("", relative));
    if name.is_empty() {
        return Err(FsError::Denied(DenyReason::BadPath {
            detail: "names a directory, not a file".into(),
        }));
    }
    Ok((parent, name))
}

/// `Some(mode)` when `name` is a regular single-link file, `None` when absent; an error for
/// symlinks, special files and hard links.
fn existing_regular(dir: &OwnedFd, name: &CString, relative: &str) -> Result<Option<u32>, FsError> {
    match sys::fstatat_nofollow(dir.as_fd(), name) {
        Ok(stat) => {
            let kind = stat.st_mode & libc::S_IFMT;
            if kind == libc::S_IFLNK {
                return Err(FsError::Denied(DenyReason::Symlink));
            }
            if kind != libc::S_IFREG {
                return Err(FsError::Denied(DenyReason::NotRegularFile));
            }
            if stat.st_nlink > 1 {
                return Err(FsError::Denied(DenyReason::HardLink));
            }
            Ok(Some(stat.st_mode & 0o7777))
        }
        Err(error) if error.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(error) => Err(FsError::io(relative, error)),
    }
}

fn state_in(dir: &OwnedFd, name: &CString, relative: &str) -> Result<FileState, FsError> {
    let Some(mode) = existing_regular(dir, name, relative)? else {
        return Ok(FileState::Absent);
    };
    let fd = sys::openat2(
        dir.as_fd(),
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK,
        0,
        RESOLVE,
    )
    .map_err(|error| FsError::io(relative, error))?;
    let mut content = Vec::new();
    File::from(fd)
        .read_to_end(&mut content)
        .map_err(|error| FsError::io(relative, error))?;
    Ok(FileState::File { content, mode })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn repo() -> (tempfile::TempDir, ScopedFs) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo/src")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/canary"), "canary").unwrap();
        let fs = ScopedFs::open(&dir.path().join("repo")).unwrap();
        (dir, fs)
    }

    /// Agents creating files in one new directory at once: one of them lost the race to
    /// `mkdir` and failed with "File exists (os error 17)" (and was rolled back).
    #[test]
    fn concurrent_writers_into_one_new_directory_all_succeed() {
        let (_dir, fs) = repo();
        let fs = std::sync::Arc::new(fs);
        for round in 0..40 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let writers: Vec<_> = (0..8)
                .map(|i| {
                    let fs = std::sync::Arc::clone(&fs);
                    let barrier = std::sync::Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        fs.write(&format!("new{round}/deep/file{i}.rs"), b"x", None)
                    })
                })
                .collect();
            let mut creators = 0;
            for writer in writers {
                let created = writer.join().unwrap().unwrap();
                creators += usize::from(!created.is_empty());
            }
            assert!(
                creators >= 1,
                "round {round}: nobody created the directories"
            );
        }
    }

    #[test]
    fn resolves_inside_the_root_only() {
        let (_dir, fs) = repo();
        assert_eq!(fs.resolve("src/./a/../b.rs").unwrap(), "src/b.rs");
        assert_eq!(
            fs.resolve(&fs.root_path().join("src/x").to_string_lossy())
                .unwrap(),
            "src/x"
        );
        assert!(fs.resolve("../x").is_err());
        assert!(fs.resolve("src/../../x").is_err());
        assert!(fs.resolve("/etc/passwd").is_err());
        assert!(fs.resolve("a\0b").is_err());
    }

    #[test]
    fn refuses_symlinks_anywhere() {
        let (dir, fs) = repo();
        let outside = dir.path().join("outside");
        std::os::unix::fs::symlink(&outside, fs.root_path().join("src/out")).unwrap();
        std::os::unix::fs::symlink(outside.join("canary"), fs.root_path().join("src/f")).unwrap();
        for path in ["src/out/canary", "src/out/new", "src/f"] {
            let error = fs.write(path, b"x", None).unwrap_err();
            assert_eq!(error, FsError::Denied(DenyReason::Symlink), "{path}");
            assert!(fs.read(path, 100).is_err());
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("canary")).unwrap(),
            "canary"
        );
        assert!(!outside.join("new").exists());
    }

    #[test]
    fn writes_in_place_and_keeps_mode() {
        let (_dir, fs) = repo();
        let created = fs.write("src/deep/new.rs", b"one", None).unwrap();
        assert_eq!(created, ["src/deep"]);
        std::fs::set_permissions(
            fs.root_path().join("src/deep/new.rs"),
            Permissions::from_mode(0o750),
        )
        .unwrap();
        let inode = |fs: &ScopedFs| {
            std::fs::metadata(fs.root_path().join("src/deep/new.rs"))
                .unwrap()
                .ino()
        };
        let before = inode(&fs);
        fs.write("src/deep/new.rs", b"two", None).unwrap();
        assert_eq!(inode(&fs), before, "the file is rewritten, not replaced");
        assert_eq!(
            fs.state("src/deep/new.rs").unwrap(),
            FileState::File {
                content: b"two".to_vec(),
                mode: 0o750
            }
        );
        // Shorter contents leave no tail; a set-id bit does not survive a write.
        std::fs::set_permissions(
            fs.root_path().join("src/deep/new.rs"),
            Permissions::from_mode(0o4755),
        )
        .unwrap();
        fs.write("src/deep/new.rs", b"3", None).unwrap();
        assert_eq!(
            fs.state("src/deep/new.rs").unwrap(),
            FileState::File {
                content: b"3".to_vec(),
                mode: 0o755
            }
        );
        fs.write("src/deep/new.rs", b"four", Some(0o600)).unwrap();
        assert_eq!(
            fs.state("src/deep/new.rs").unwrap(),
            FileState::File {
                content: b"four".to_vec(),
                mode: 0o600
            }
        );
        assert_eq!(fs.state("src/none").unwrap(), FileState::Absent);
        let leftovers = std::fs::read_dir(fs.root_path().join("src/deep"))
            .unwrap()
            .count();
        assert_eq!(leftovers, 1);
    }

    #[test]
    fn refuses_hard_links() {
        let (dir, fs) = repo();
        std::fs::hard_link(
            dir.path().join("outside/canary"),
            fs.root_path().join("src/k"),
        )
        .unwrap();
        assert_eq!(
            fs.write("src/k", b"x", None).unwrap_err(),
            FsError::Denied(DenyReason::HardLink)
        );
        assert_eq!(
            fs.read("src/k", 100).unwrap_err(),
            FsError::Denied(DenyReason::HardLink)
        );
    }
}
