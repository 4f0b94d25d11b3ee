//! The plan file: what the orchestrator proposes and what a reviewed run executes.
//!
//! The wire shape is the contract in ARCHITECTURE.md — `{"workflow", "subtasks": [{"task_id",
//! "description", "scope", "tools", "mode", "depends_on"}]}` — plus optional fields of ours
//! (`role`, `write_scope`, `shell_commands`, `external_api`). Parsing goes through
//! `serde_path_to_error` so a schema error names the field (`subtasks[3].mode`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Mode;

/// A sub-task's id, unique within a plan (defined with the other ids).
pub use crate::ids::TaskId;

/// The tools a sub-agent may be given, and those that change files: the policy's lists (one
/// definition, shared with the runtime).
pub use crate::policy::{TOOL_NAMES, WRITE_TOOLS};

/// Tools that touch files at all.
pub const FILE_TOOLS: &[&str] = &[
    "read_file",
    "write_file",
    "edit_file",
    "list_files",
    "search",
];

/// A whole plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub workflow: String,
    pub subtasks: Vec<Subtask>,
}

/// One sub-agent's assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subtask {
    pub task_id: TaskId,
    pub description: String,
    /// A `mode_routing` role (`subtasks_codegen`...). When the workflow routes that role, the
    /// routing decides the mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Paths (files or directories) and globs the agent may read, relative to the repository.
    pub scope: Vec<String>,
    /// The part of `scope` the agent may write. Absent: all of `scope` when the agent has a
    /// writing tool (`write_file`, `edit_file`, `bash`), nothing otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_scope: Option<Vec<String>>,
    pub tools: Vec<String>,
    /// Command lines the agent will run through `bash` (each must be allowlisted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shell_commands: Vec<String>,
    pub mode: Mode,
    pub depends_on: Vec<TaskId>,
    /// The agent needs outbound network access.
    #[serde(default, skip_serializing_if = "is_false")]
    pub external_api: bool,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Subtask {
    pub fn has_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|tool| tool == name)
    }

    /// Does this agent change files (a write tool, or `bash`, which can)?
    pub fn writes(&self) -> bool {
        WRITE_TOOLS.iter().any(|tool| self.has_tool(tool)) || self.has_tool("bash")
    }

    /// The entries the agent may write.
    pub fn effective_write_scope(&self) -> &[String] {
        if !self.writes() {
            return &[];
        }
        match &self.write_scope {
            Some(scope) => scope,
            None => &self.scope,
        }
    }
}

/// Parse a plan from JSON, tolerating one common model habit: `subtasks` sent as a string
/// holding JSON. Errors name the field.
pub fn parse_plan(value: &Value) -> Result<Plan, String> {
    let mut value = value.clone();
    if let Some(Value::String(text)) = value.get("subtasks") {
        let parsed: Value = serde_json::from_str(text)
            .map_err(|err| format!("subtasks: a string that is not valid JSON ({err})"))?;
        if let Some(object) = value.as_object_mut() {
            object.insert("subtasks".to_owned(), parsed);
        }
    }
    serde_path_to_error::deserialize::<_, Plan>(&value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// The JSON Schema of [`Plan`]: the `submit_plan` tool's input schema.
pub fn plan_json_schema(role_names: &[String], max_agents: usize) -> Value {
    let mut subtask = serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["task_id", "description", "scope", "tools", "mode", "depends_on"],
        "properties": {
            "task_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
                        "description": "Unique id: letters, digits, `_`, `-`, `.`."},
            "description": {"type": "string", "description": "What the sub-agent must do, self-contained."},
            "role": {"type": "string", "description": "A mode_routing role; it decides the mode."},
            "scope": {"type": "array", "items": {"type": "string"},
                      "description": "Files, directories or globs the agent may read, relative to the repository root."},
            "write_scope": {"type": "array", "items": {"type": "string"},
                            "description": "The part of scope the agent may write; default: all of scope when it has a writing tool."},
            "tools": {"type": "array", "items": {"type": "string", "enum": TOOL_NAMES}},
            "shell_commands": {"type": "array", "items": {"type": "string"},
                               "description": "Exact command lines run through bash; each must be on the allowlist."},
            "mode": {"type": "string", "enum": ["fast", "default"]},
            "depends_on": {"type": "array", "items": {"type": "string"},
                           "description": "task_ids that must finish first."},
            "external_api": {"type": "boolean", "description": "Needs outbound network access."}
        }
    });
    if !role_names.is_empty()
        && let Some(role) = subtask.pointer_mut("/properties/role")
    {
        role["enum"] = serde_json::json!(role_names);
    }
    serde_json::json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["workflow", "subtasks"],
        "properties": {
            "workflow": {"type": "string", "description": "The workflow name."},
            "subtasks": {"type": "array", "minItems": 1, "maxItems": max_agents, "items": subtask}
        }
    })
}
