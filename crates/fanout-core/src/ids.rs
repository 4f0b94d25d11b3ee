//! The id types: a run's, a sub-task's, a chunk's and an agent's id, shared by every layer
//! (store, layout, plan, run, items).

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

/// The conveniences every text id has: `as_str`, `into_string`, `Display`, `AsRef<str>`,
/// `From<String>`/`From<&str>`/`From<&String>` and comparison with `str`.
macro_rules! text_id_conveniences {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id's text, owned.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        /// Like `String`'s: width, fill and alignment apply.
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> $name {
                $name(text)
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> $name {
                $name(text.to_owned())
            }
        }

        impl From<&String> for $name {
            fn from(text: &String) -> $name {
                $name(text.clone())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

/// A sub-task's id, unique within a plan.
///
/// Serialized as its bare text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

text_id_conveniences!(TaskId);

/// A chunk's id: `chunk-0007`; retries of single items add a suffix (see [`ChunkId::retry`]).
///
/// Serialized as its bare text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChunkId(pub String);

impl ChunkId {
    /// The id of the `number`th chunk (from 1) of `total`.
    pub fn numbered(number: usize, total: usize) -> ChunkId {
        let width = total.to_string().len().max(4);
        ChunkId(format!("chunk-{number:0width$}"))
    }

    /// The id of the `k`th (from 1) retry chunk made from this chunk in retry round `round`:
    /// `chunk-0007-r1-2`. Only letters, digits, `-` and `_`, so it is a valid batch
    /// `custom_id`.
    pub fn retry(&self, round: u32, k: usize) -> ChunkId {
        ChunkId(format!("{}-r{round}-{k}", self.0))
    }
}

text_id_conveniences!(ChunkId);

/// The id of one agent row in the run store (`agent_runs.agent_id`): a repository run's
/// sub-task, an item run's chunk, or the synthesis call.
///
/// Serialized as its bare text.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

text_id_conveniences!(AgentId);

impl From<&TaskId> for AgentId {
    fn from(task: &TaskId) -> AgentId {
        AgentId(task.0.clone())
    }
}

impl From<TaskId> for AgentId {
    fn from(task: TaskId) -> AgentId {
        AgentId(task.0)
    }
}

impl From<&ChunkId> for AgentId {
    fn from(chunk: &ChunkId) -> AgentId {
        AgentId(chunk.0.clone())
    }
}

impl From<ChunkId> for AgentId {
    fn from(chunk: ChunkId) -> AgentId {
        AgentId(chunk.0)
    }
}
