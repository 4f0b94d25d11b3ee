//! Receipts: what an agent actually did, recorded by the tools, never taken from the model.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::policy::DenyReason;

/// One refused action, for the run store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub agent_id: String,
    pub tool: String,
    /// The path or command line the model asked for, as given.
    pub target: String,
    pub reason: DenyReason,
}

/// One command that ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CommandReceipt {
    pub argv: Vec<String>,
    /// `None` when killed by a signal (a timeout included).
    pub exit_code: Option<i32>,
    /// The signal that killed it, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// Declared files the command changed (journalled).
    pub files_written: Vec<String>,
    /// Undeclared changes the command made; all reverted.
    pub violations: Vec<String>,
    pub duration_ms: u64,
}

/// Everything an agent did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Receipts {
    pub files_read: BTreeSet<String>,
    pub files_written: BTreeSet<String>,
    pub commands: Vec<CommandReceipt>,
    pub denials: Vec<Denial>,
    pub tool_calls: u64,
    /// Tool names in call order.
    pub tools_called: Vec<String>,
}

impl Receipts {
    /// The union of files read and written, for `agent_runs.files_accessed`.
    pub fn files_accessed(&self) -> BTreeSet<String> {
        self.files_read
            .union(&self.files_written)
            .cloned()
            .collect()
    }

    pub fn violations(&self) -> usize {
        self.commands
            .iter()
            .map(|command| command.violations.len())
            .sum()
    }
}
