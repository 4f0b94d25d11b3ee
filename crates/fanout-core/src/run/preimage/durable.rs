//! The filesystem toolkit capture and restore share: writes that survive a crash
//! (temporary, `fsync`, `rename`; directories `fsync`ed), removals, permission bits and
//! symlinks.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{PreimageError, io};

/// Makes temporary names unique within the process (two agents may write the same blob).
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Temporary files (ours and the file tools') start with this; a crash can leave them behind.
pub const TEMP_PREFIX: &str = ".fanout-tmp-";

pub(super) fn remove_file(path: &Path) -> Result<(), PreimageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(PreimageError::Io {
            what: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Remove `dir` if it is an empty directory; true if it is gone.
pub(super) fn remove_empty_dir(dir: &Path) -> bool {
    std::fs::remove_dir(dir).is_ok()
}

/// Make room for a regular file at `path`: a symlink or an (agent-created) directory goes.
pub(super) fn clear_non_file(path: &Path) -> Result<(), PreimageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() => Ok(()),
        Ok(_) => clear_any(path),
        Err(_) => Ok(()),
    }
}

pub(super) fn clear_any(path: &Path) -> Result<(), PreimageError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path).map_err(io("remove", path)),
        Ok(_) => remove_file(path),
        Err(_) => Ok(()),
    }
}

/// Write `bytes` to `path` so that after a crash it holds either the old contents or all of
/// the new ones: a temporary beside it, `fsync`, `rename`.
pub(super) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), PreimageError> {
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!("{TEMP_PREFIX}pre-{}-{n}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
        file.write_all(bytes).map_err(io("write", &tmp))?;
        file.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// `create_dir_all`, then `fsync` the new directory's parents so the entries survive.
pub(super) fn create_dir_durably(dir: &Path) -> Result<(), PreimageError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let mut current = dir.parent();
    // Up to `.fanout` (the runs directory and the run's own directory may be new too).
    for _ in 0..4 {
        match current {
            Some(parent) => {
                sync_dir(parent)?;
                current = parent.parent();
            }
            None => break,
        }
    }
    Ok(())
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), PreimageError> {
    #[cfg(unix)]
    {
        let handle = std::fs::File::open(dir).map_err(io("open", dir))?;
        handle.sync_all().map_err(io("sync", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(unix)]
pub(super) fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
pub(super) fn mode_of(meta: &std::fs::Metadata) -> u32 {
    if meta.permissions().readonly() {
        0o444
    } else {
        0o644
    }
}

#[cfg(unix)]
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), PreimageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io("set the mode of", path))
}

#[cfg(not(unix))]
pub(super) fn set_mode(path: &Path, mode: u32) -> Result<(), PreimageError> {
    let mut permissions = std::fs::metadata(path)
        .map_err(io("inspect", path))?
        .permissions();
    permissions.set_readonly(mode & 0o222 == 0);
    std::fs::set_permissions(path, permissions).map_err(io("set the mode of", path))
}

#[cfg(unix)]
pub(super) fn make_symlink(target: &str, path: &Path) -> Result<(), PreimageError> {
    std::os::unix::fs::symlink(target, path).map_err(io("create the link", path))
}

#[cfg(not(unix))]
pub(super) fn make_symlink(_target: &str, path: &Path) -> Result<(), PreimageError> {
    Err(PreimageError::Io {
        what: "create the link",
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "symlinks"),
    })
}
