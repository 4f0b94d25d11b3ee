//! Taking a pre-image: [`capture`] (as a manifest file) and [`prepare`] (for the run store),
//! with [`BaseBlobs`], the run's base checkpoint as a source of contents that need no copy,
//! and git's blob ids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::durable::{create_dir_durably, mode_of, sync_dir, write_durably};
use super::manifest::{
    Entry, MANIFEST_VERSION, Preimage, load, manifest_json, manifest_path, preimage_dir,
};
use super::scope::{compile, for_each_in_scope};
use super::{PreimageError, hex, io};
use crate::git::Git;
use crate::ids::{AgentId, RunId};
use crate::run::durable::SyncSet;

/// Record the pre-image of `agent_id`'s write scope durably as a manifest file, or return the
/// one already recorded (a resumed run keeps the first). Blocking: call from `spawn_blocking`.
/// (The engine records manifests in the run store instead: [`prepare`].)
pub fn capture(
    repo: &Path,
    run_id: &RunId,
    agent_id: &AgentId,
    patterns: &[String],
) -> Result<Preimage, PreimageError> {
    if let Some(existing) = load(repo, run_id, agent_id)? {
        return Ok(existing);
    }
    let (preimage, sync) = prepare(repo, run_id, agent_id, patterns, &BaseBlobs::default())?;
    sync.sync_now()?;
    let dir = preimage_dir(repo, run_id);
    create_dir_durably(&dir)?;
    let bytes = manifest_json(&preimage)?;
    write_durably(&manifest_path(repo, run_id, agent_id), bytes.as_bytes())?;
    sync_dir(&dir)?;
    Ok(preimage)
}

/// Take the pre-image of `agent_id`'s write scope. Every content it names is kept: a blob
/// under `blobs/` (made durable here), or, for a file unchanged since the run's base
/// checkpoint, the git object `base` knows it by. Loose git objects are made durable by the
/// caller: the returned [`SyncSet`] names their filesystem, to be synced (one `syncfs`, shared
/// with other agents by a [`SyncGroup`]) before the manifest is recorded. The manifest itself
/// is the caller's to record too (the engine, in the run store, in the transaction of the
/// agent's start row). Blocking.
///
/// [`SyncGroup`]: crate::run::durable::SyncGroup
pub fn prepare(
    repo: &Path,
    run_id: &RunId,
    agent_id: &AgentId,
    patterns: &[String],
    base: &BaseBlobs,
) -> Result<(Preimage, SyncSet), PreimageError> {
    let mut sync = SyncSet::default();
    let set = compile(agent_id, patterns)?;
    let dir = preimage_dir(repo, run_id);
    let blobs = dir.join("blobs");
    let mut blobs_written = false;
    let mut entries = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for_each_in_scope(repo, &set, &mut dirs, &mut |relative, path, meta| {
        let entry = if meta.file_type().is_symlink() {
            let target = std::fs::read_link(path).map_err(io("read the link", path))?;
            Entry::Symlink {
                target: target.to_string_lossy().into_owned(),
            }
        } else {
            let bytes = std::fs::read(path).map_err(io("read", path))?;
            let sha256 = hex(&Sha256::digest(&bytes));
            let git_blob = match base.blob_of(relative) {
                Some(oid)
                    if *oid == git_blob_id(&bytes) && base.make_durable(oid, &mut sync)? =>
                {
                    Some(oid.clone())
                }
                _ => None,
            };
            if git_blob.is_none() {
                if !blobs_written {
                    create_dir_durably(&blobs)?;
                    blobs_written = true;
                }
                let blob = blobs.join(&sha256);
                if !blob.exists() {
                    write_durably(&blob, &bytes)?;
                }
            }
            Entry::File {
                sha256,
                mode: mode_of(meta),
                size: bytes.len() as u64,
                git_blob,
            }
        };
        entries.insert(relative.to_owned(), entry);
        Ok(())
    })?;
    if blobs_written {
        sync_dir(&blobs)?;
    }
    let preimage = Preimage {
        version: MANIFEST_VERSION,
        run_id: run_id.to_owned(),
        agent_id: agent_id.clone(),
        patterns: patterns.to_vec(),
        entries,
        dirs,
    };
    Ok((preimage, sync))
}

/// The run's base checkpoint as pre-images use it: the git blob id of every regular file in
/// the base tree, and where the object database is.
///
/// A pre-image entry may name a git blob instead of a copy of the contents when the file's
/// blob id equals the base tree's (so the contents are exactly that object). That object must
/// survive power loss like a copied blob would: git `fsync`s pack files by default but not
/// loose objects, so [`BaseBlobs::load`] `fsync`s the packs once and [`prepare`] `fsync`s each
/// loose object it relies on (and its directory) before the manifest is recorded. A
/// repository that borrows objects from elsewhere (`objects/info/alternates`) gets no blob
/// references: every content is copied.
#[derive(Debug, Default)]
pub struct BaseBlobs {
    blobs: HashMap<String, String>,
    objects: PathBuf,
    /// Pack files already `fsync`ed.
    synced_packs: Mutex<BTreeSet<PathBuf>>,
}

impl BaseBlobs {
    /// Read the base tree's blobs (`git ls-tree -r -z TREE`) and make the packs durable. Loose
    /// objects are made durable by the caller of [`prepare`], which gets the object database
    /// in its [`SyncSet`]. Blocking.
    pub fn load(git: &Git, tree: &str) -> Result<BaseBlobs, PreimageError> {
        let git_error = |err: crate::git::GitError| PreimageError::Git {
            message: err.to_string(),
        };
        let mut command = git.read_only();
        command.args([
            "rev-parse",
            "--path-format=absolute",
            "--git-path",
            "objects",
        ]);
        let objects = PathBuf::from(git.run_text(command).map_err(git_error)?);
        if objects.join("info").join("alternates").exists() {
            return Ok(BaseBlobs::default());
        }
        let mut command = git.read_only();
        command.args(["ls-tree", "-r", "-z", "--full-tree", tree]);
        let listing = git.run(command, None).map_err(git_error)?;
        let mut blobs = HashMap::new();
        for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            // `<mode> SP <type> SP <oid> TAB <path>`
            let Some(tab) = record.iter().position(|b| *b == b'\t') else {
                continue;
            };
            let (meta, path) = (&record[..tab], &record[tab + 1..]);
            let mut fields = meta.split(|b| *b == b' ');
            let (Some(mode), Some(kind), Some(oid)) = (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if kind != b"blob" || !(mode == b"100644" || mode == b"100755") {
                continue;
            }
            let (Ok(path), Ok(oid)) = (std::str::from_utf8(path), std::str::from_utf8(oid)) else {
                continue;
            };
            blobs.insert(path.to_owned(), oid.to_owned());
        }
        let base = BaseBlobs {
            blobs,
            objects,
            synced_packs: Mutex::default(),
        };
        base.sync_packs()?;
        Ok(base)
    }

    /// `fsync` pack files not synced yet (a `git gc` may pack loose objects during the run)
    /// and the pack directory; false if there is no pack directory.
    fn sync_packs(&self) -> Result<bool, PreimageError> {
        let packs = self.objects.join("pack");
        let Ok(children) = std::fs::read_dir(&packs) else {
            return Ok(false);
        };
        let mut synced = self
            .synced_packs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut new = false;
        for child in children.flatten() {
            let path = child.path();
            if child.file_type().is_ok_and(|t| t.is_file()) && !synced.contains(&path) {
                match std::fs::File::open(&path) {
                    Ok(file) => file.sync_all().map_err(io("sync", &path))?,
                    // A temporary pack that went away meanwhile.
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(source) => {
                        return Err(PreimageError::Io {
                            what: "open",
                            path,
                            source,
                        });
                    }
                }
                synced.insert(path);
                new = true;
            }
        }
        if new {
            sync_dir(&packs)?;
        }
        Ok(true)
    }

    /// The base tree's blob id of `relative`, if it is a regular file there.
    pub fn blob_of(&self, relative: &str) -> Option<&String> {
        self.blobs.get(relative)
    }

    /// Whether the blob `oid` is in the object database. A loose one is durable once `sync`
    /// (which gets the object database's filesystem) has been synced; a packed one was made
    /// durable by `load` or is synced here if its pack is new (a `git gc` during the run).
    /// False if the object cannot be found (the contents are copied then).
    fn make_durable(&self, oid: &str, sync: &mut SyncSet) -> Result<bool, PreimageError> {
        if oid.len() < 3 || !oid.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(false);
        }
        let path = self.objects.join(&oid[..2]).join(&oid[2..]);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {
                sync.note(&self.objects, &meta);
                Ok(true)
            }
            Ok(_) => Ok(false),
            // Not loose: in a pack (made durable here if it is new).
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => self.sync_packs(),
            Err(source) => Err(PreimageError::Io {
                what: "read the metadata of",
                path,
                source,
            }),
        }
    }
}

/// Git's id of a blob with these contents: SHA-1 of `blob <len>\0<contents>`.
pub fn git_blob_id(contents: &[u8]) -> String {
    let mut hasher = sha1::Sha1::new();
    hasher.update(format!("blob {}\0", contents.len()).as_bytes());
    hasher.update(contents);
    hex(&hasher.finish())
}

/// SHA-1, for git object ids only (git names objects by it; nothing here relies on it for
/// security: restored contents are checked against their SHA-256).
mod sha1 {
    pub struct Sha1 {
        state: [u32; 5],
        buffer: Vec<u8>,
        length: u64,
    }

    impl Sha1 {
        pub fn new() -> Sha1 {
            Sha1 {
                state: [
                    0x6745_2301,
                    0xEFCD_AB89,
                    0x98BA_DCFE,
                    0x1032_5476,
                    0xC3D2_E1F0,
                ],
                buffer: Vec::with_capacity(64),
                length: 0,
            }
        }

        pub fn update(&mut self, mut data: &[u8]) {
            self.length = self.length.wrapping_add(data.len() as u64);
            if !self.buffer.is_empty() {
                let take = (64 - self.buffer.len()).min(data.len());
                self.buffer.extend_from_slice(&data[..take]);
                data = &data[take..];
                if self.buffer.len() == 64 {
                    let mut block = [0u8; 64];
                    block.copy_from_slice(&self.buffer);
                    self.compress(&block);
                    self.buffer.clear();
                }
            }
            let mut chunks = data.chunks_exact(64);
            for chunk in &mut chunks {
                let mut block = [0u8; 64];
                block.copy_from_slice(chunk);
                self.compress(&block);
            }
            self.buffer.extend_from_slice(chunks.remainder());
        }

        pub fn finish(mut self) -> [u8; 20] {
            let bits = self.length.wrapping_mul(8);
            let mut tail = std::mem::take(&mut self.buffer);
            tail.push(0x80);
            while tail.len() % 64 != 56 {
                tail.push(0);
            }
            tail.extend_from_slice(&bits.to_be_bytes());
            for chunk in tail.chunks_exact(64) {
                let mut block = [0u8; 64];
                block.copy_from_slice(chunk);
                self.compress(&block);
            }
            let mut out = [0u8; 20];
            for (i, word) in self.state.iter().enumerate() {
                out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
            }
            out
        }

        fn compress(&mut self, block: &[u8; 64]) {
            let mut w = [0u32; 80];
            for i in 0..16 {
                w[i] = u32::from_be_bytes([
                    block[i * 4],
                    block[i * 4 + 1],
                    block[i * 4 + 2],
                    block[i * 4 + 3],
                ]);
            }
            for i in 16..80 {
                w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
            }
            let [mut a, mut b, mut c, mut d, mut e] = self.state;
            for (i, word) in w.iter().enumerate() {
                let (f, k) = match i {
                    0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                    20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                    40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                    _ => (b ^ c ^ d, 0xCA62_C1D6),
                };
                let temp = a
                    .rotate_left(5)
                    .wrapping_add(f)
                    .wrapping_add(e)
                    .wrapping_add(k)
                    .wrapping_add(*word);
                e = d;
                d = c;
                c = b.rotate_left(30);
                b = a;
                a = temp;
            }
            for (state, value) in self.state.iter_mut().zip([a, b, c, d, e]) {
                *state = state.wrapping_add(value);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_ids_match_git() {
        // `printf '' | git hash-object --stdin` and `printf 'hello\n' | git hash-object --stdin`.
        assert_eq!(git_blob_id(b""), "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391");
        assert_eq!(
            git_blob_id(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
        // Longer than one block, and across block boundaries in pieces.
        let long: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = sha1::Sha1::new();
        whole.update(&long);
        let mut pieces = sha1::Sha1::new();
        for chunk in long.chunks(37) {
            pieces.update(chunk);
        }
        assert_eq!(whole.finish(), pieces.finish());
        let repo = tempfile::tempdir().unwrap();
        let path = repo.path().join("long.bin");
        std::fs::write(&path, &long).unwrap();
        let out = std::process::Command::new("git")
            .args(["hash-object", "--no-filters"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            git_blob_id(&long)
        );
    }
}
