//! The id types: a run's id, shared by every layer (store, layout, plan, run, items).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A run's id: `20260131T093000Z-1a2b3c`, sortable by start time.
///
/// Serialized as its bare text, so JSON, SQLite and file formats carry the plain string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A new id from the clock and a few bits of the process id and time.
    pub fn new(at: SystemTime) -> RunId {
        let stamp = humantime::format_rfc3339_seconds(at)
            .to_string()
            .replace(['-', ':'], "");
        let nanos = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let mut hasher = Sha256::new();
        hasher.update(nanos.to_le_bytes());
        hasher.update(std::process::id().to_le_bytes());
        let digest = hasher.finalize();
        let suffix: String = digest[..3].iter().map(|b| format!("{b:02x}")).collect();
        RunId(format!("{stamp}-{suffix}"))
    }

    /// An id from text given by a user or read back from disk (not validated here).
    pub fn from_text(text: impl Into<String>) -> RunId {
        RunId(text.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RunId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<String> for RunId {
    fn from(text: String) -> RunId {
        RunId(text)
    }
}

impl From<&str> for RunId {
    fn from(text: &str) -> RunId {
        RunId(text.to_owned())
    }
}

impl From<&String> for RunId {
    fn from(text: &String) -> RunId {
        RunId(text.clone())
    }
}

impl PartialEq<str> for RunId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for RunId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
