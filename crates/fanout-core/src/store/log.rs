//! The verbose log: one JSON object per line, appended to `logging.destination`.
//!
//! The writer thread owns the sink and writes a line for each record right after the
//! transaction holding it commits, so the log never shows what the database does not hold,
//! and lines appear in commit order. Lines are buffered and flushed after every batch and on
//! close.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// An open JSON-lines log file.
#[derive(Debug)]
pub struct LogSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl LogSink {
    /// Open `path` for appending, creating it and its parent directories.
    pub fn create(path: &Path) -> Result<LogSink, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| StoreError::Log {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(LogSink {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record as a line.
    pub fn write(&mut self, record: &serde_json::Value) -> Result<(), StoreError> {
        let log_error = |source| StoreError::Log {
            path: self.path.clone(),
            source,
        };
        serde_json::to_writer(&mut self.out, record)
            .map_err(std::io::Error::from)
            .map_err(log_error)?;
        self.out.write_all(b"\n").map_err(log_error)
    }

    /// Push buffered lines to the file.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        self.out.flush().map_err(|source| StoreError::Log {
            path: self.path.clone(),
            source,
        })
    }
}
