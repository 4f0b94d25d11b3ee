//! Receipts: what an agent actually did, recorded by the tools, never taken from the model.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::ids::AgentId;
use crate::policy::DenyReason;

/// One refused action, for the run store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub agent_id: AgentId,
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

/// How one tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallOutcome {
    Ok,
    /// The tool ran and failed (no such file, a bad argument, an edit that did not match).
    Error,
    /// The policy refused it (see [`Receipts::denials`]).
    Denied,
}

impl CallOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Ok => "ok",
            CallOutcome::Error => "error",
            CallOutcome::Denied => "denied",
        }
    }
}

/// One tool call, as the tool layer saw it (`tool_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallReceipt {
    /// Order within the attempt, from 1.
    pub seq: u32,
    pub tool: String,
    /// What the model asked for: a path, a command line, a pattern.
    pub target: Option<String>,
    pub outcome: CallOutcome,
    /// The error or denial text the model got back.
    pub error: Option<String>,
    pub started_at: std::time::SystemTime,
    pub duration_ms: u64,
    /// Bytes written for writes and edits, else bytes of output returned.
    pub bytes: u64,
    /// Repository paths the call read or wrote (at most [`MAX_CALL_PATHS`]).
    pub paths: Vec<String>,
}

/// Paths kept per tool call (a search can read thousands of files).
pub const MAX_CALL_PATHS: usize = 50;

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
    /// Every call, in order.
    pub calls: Vec<ToolCallReceipt>,
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
