//! One sub-agent: its turn loop ([`run_agent`]), its journal of pre-images and its receipts.
//!
//! [`Journal`] records the state of every file before the agent first changes it, so the
//! agent's work can be undone byte for byte; [`Receipts`] record what the agent actually did
//! (files read and written, commands with exit codes, denials), taken from the tools and the
//! sandbox, never from the model. Both are kept by the tools ([`crate::tools::journal`],
//! [`crate::tools::receipts`]) and re-exported here.

mod run;

pub use crate::tools::journal::{Journal, JournalEntry, UndoReport};
pub use crate::tools::receipts::{
    CallOutcome, CommandReceipt, Denial, MAX_CALL_PATHS, Receipts, ToolCallReceipt,
};
pub use run::{
    AgentConfig, AgentOutcome, CallHook, CallUsage, LoopStatus, REPORT_TOOL, StartGate,
    check_claims, default_output_schema, run_agent, run_agent_gated, system_prompt, task_prompt,
};
