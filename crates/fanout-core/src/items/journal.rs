//! The settlement journal of an item run: `<run dir>/settled.jsonl`, one line per chunk with
//! the items that chunk settled (records and failures), synced to disk before the chunk
//! counts as done. It is what resume reads: an item found here is not sent again.
//!
//! One writer thread owns the file. Lines from concurrent chunk workers queue on a channel;
//! the thread writes whatever is queued, syncs once, then acknowledges each line. While it is
//! busy it first waits a moment for more lines ([`crate::group_commit`]), so a thousand chunks
//! finishing over a few hundred milliseconds cost tens of syncs, not a thousand.
//!
//! A line cut short by a crash (the last one) is ignored when reading.
//!
//! With `execution: batch` the journal also records each Message Batch as soon as it is
//! created (`{"batch_submitted": {"id": …, "custom_ids": […]}}`), so that a resumed run
//! collects a batch that was still running instead of paying for it again.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::oneshot;

use super::chunk::ChunkId;
use super::worker::Failure;
use crate::group_commit::GroupCommit;

/// The journal's file name inside the run directory.
pub const JOURNAL_FILE: &str = "settled.jsonl";

/// What one chunk settled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settlement {
    pub chunk: ChunkId,
    pub results: Vec<(String, Value)>,
    pub failures: Vec<Failure>,
}

/// A Message Batch the run created, and the chunks (custom ids) it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmittedBatch {
    pub id: String,
    pub custom_ids: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct BatchLine {
    batch_submitted: SubmittedBatch,
}

/// Why the journal could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal writer has stopped")]
    Closed,
}

type Job = (Vec<u8>, oneshot::Sender<Result<(), String>>);

/// A handle on the journal writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct SettlementJournal {
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl SettlementJournal {
    /// Open (append) the journal in `dir` and start its writer thread.
    pub fn open(dir: &Path) -> Result<SettlementJournal, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io)?;
        // A torn last line from a crash: end it, so the next line starts fresh.
        let length = file.metadata().map_err(io)?.len();
        if length > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(length - 1)).map_err(io)?;
            file.read_exact(&mut last).map_err(io)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").map_err(io)?;
            }
        }
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("fanout-items-journal".to_owned())
            .spawn(move || write_loop(file, rx))
            .map_err(io)?;
        Ok(SettlementJournal { tx, path })
    }

    /// Append `settlement` and wait until it is on disk.
    pub async fn append(&self, settlement: &Settlement) -> Result<(), JournalError> {
        self.append_line(settlement).await
    }

    /// Record a created batch and wait until it is on disk.
    pub async fn append_batch(&self, batch: &SubmittedBatch) -> Result<(), JournalError> {
        self.append_line(&BatchLine {
            batch_submitted: batch.clone(),
        })
        .await
    }

    async fn append_line(&self, value: &impl Serialize) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(value).map_err(|error| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(error),
        })?;
        line.push(b'\n');
        let (ack, done) = oneshot::channel();
        self.tx
            .send((line, ack))
            .map_err(|_| JournalError::Closed)?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(JournalError::Io {
                path: self.path.clone(),
                source: std::io::Error::other(message),
            }),
            Err(_) => Err(JournalError::Closed),
        }
    }
}

fn write_loop(mut file: File, rx: mpsc::Receiver<Job>) {
    let mut group = GroupCommit::new(GroupCommit::DEFAULT);
    while let Ok(first) = rx.recv() {
        let arrived = Instant::now();
        let mut batch = vec![first];
        if group.should_gather(arrived) {
            group.gather();
        }
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut result = Ok(());
        for (line, _) in &batch {
            if let Err(error) = file.write_all(line) {
                result = Err(error.to_string());
                break;
            }
        }
        if result.is_ok()
            && let Err(error) = file.sync_data()
        {
            result = Err(error.to_string());
        }
        group.synced(Instant::now());
        for (_, ack) in batch {
            let _ = ack.send(result.clone());
        }
    }
}

/// Every settlement in the journal in `dir`, in order (none when there is no journal).
pub fn read(dir: &Path) -> Result<Vec<Settlement>, JournalError> {
    read_lines(dir, |line| serde_json::from_str::<Settlement>(line).ok())
}

/// Every batch the journal in `dir` records as created, in order.
pub fn read_batches(dir: &Path) -> Result<Vec<SubmittedBatch>, JournalError> {
    read_lines(dir, |line| {
        serde_json::from_str::<BatchLine>(line)
            .ok()
            .map(|line| line.batch_submitted)
    })
}

/// The lines `parse` accepts. A torn last line (a crash mid-write) was never acknowledged:
/// nothing accepts it.
fn read_lines<T>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(JournalError::Io { path, source }),
    };
    let mut found = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| JournalError::Io {
            path: path.clone(),
            source,
        })?;
        found.extend(parse(&line));
    }
    Ok(found)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::items::worker::FailureKind;
    use serde_json::json;

    #[tokio::test]
    async fn settlements_round_trip_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let journal = SettlementJournal::open(dir.path()).unwrap();
        let first = Settlement {
            chunk: "chunk-01".into(),
            results: vec![("a".into(), json!({"id": "a"}))],
            failures: vec![Failure {
                id: "b".into(),
                kind: FailureKind::Missing,
                reason: "gone".into(),
                attempts: 0,
            }],
        };
        journal.append(&first).await.unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap()
            .write_all(b"{\"chunk\": \"chunk-02\", \"res")
            .unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![first.clone()]);
        // Batch lines and settlement lines are told apart.
        let journal = SettlementJournal::open(dir.path()).unwrap();
        let batch = SubmittedBatch {
            id: "msgbatch_1".into(),
            custom_ids: vec!["chunk-03".into(), "chunk-04".into()],
        };
        journal.append_batch(&batch).await.unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![first]);
        assert_eq!(read_batches(dir.path()).unwrap(), vec![batch]);
    }
}
