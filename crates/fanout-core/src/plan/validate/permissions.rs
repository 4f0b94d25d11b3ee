//! Permission rules for one agent: its tools are fanout tools that `agent_permissions`
//! allows; its shell commands are plain commands on the allowlist, with the `bash` tool to
//! run them; and it asks for outbound network only where the workflow allows it.

use super::{Violation, ViolationKind};
use crate::config::{Config, ExternalApi, FileAccess, ShellCommand, ShellExec};
use crate::plan::types::{FILE_TOOLS, Subtask, TOOL_NAMES, WRITE_TOOLS};

/// Every tool is a fanout tool the workflow's `agent_permissions` allow.
pub(super) fn check_tools(subtask: &Subtask, config: &Config, violations: &mut Vec<Violation>) {
    let agent = Some(&subtask.task_id);
    for tool in &subtask.tools {
        let what = format!("tool `{tool}`");
        if !TOOL_NAMES.contains(&tool.as_str()) {
            violations.push(Violation::new(
                agent,
                ViolationKind::ToolNotAllowed,
                what,
                format!("not a fanout tool (tools: {})", TOOL_NAMES.join(", ")),
            ));
            continue;
        }
        let access = config.agent_permissions.file_access;
        let refused = if access == FileAccess::None && FILE_TOOLS.contains(&tool.as_str()) {
            Some("agent_permissions.file_access is `none`")
        } else if access == FileAccess::ReadOnly && WRITE_TOOLS.contains(&tool.as_str()) {
            Some("agent_permissions.file_access is `read_only`")
        } else if tool == "bash" && config.agent_permissions.shell_exec == ShellExec::Deny {
            Some("agent_permissions.shell_exec is `deny`")
        } else {
            None
        };
        if let Some(why) = refused {
            violations.push(Violation::new(
                agent,
                ViolationKind::ToolNotAllowed,
                what,
                why,
            ));
        }
    }
}

/// `bash` comes with declared commands, and every declared command has `bash` to run it, is
/// a plain command and is on the shell allowlist.
pub(super) fn check_shell_commands(
    subtask: &Subtask,
    config: &Config,
    violations: &mut Vec<Violation>,
) {
    let agent = Some(&subtask.task_id);
    if subtask.has_tool("bash") && subtask.shell_commands.is_empty() {
        violations.push(Violation::new(
            agent,
            ViolationKind::ShellNotAllowed,
            "tool `bash`",
            "no shell_commands declared; list the commands the agent will run",
        ));
    }
    for command in &subtask.shell_commands {
        let what = format!("shell command `{command}`");
        if !subtask.has_tool("bash") {
            violations.push(Violation::new(
                agent,
                ViolationKind::ShellNotAllowed,
                what.clone(),
                "shell commands need the `bash` tool",
            ));
        }
        match ShellCommand::parse(command) {
            Err(err) => violations.push(Violation::new(
                agent,
                ViolationKind::ShellNotAllowed,
                what,
                format!("the command {err}; {}", err.hint()),
            )),
            Ok(parsed) => {
                if !config.shell_command_allowed(parsed.argv()) {
                    let why = match config.agent_permissions.shell_exec {
                        ShellExec::Deny => "agent_permissions.shell_exec is `deny`".to_owned(),
                        _ => format!("not on the shell allowlist ({})", allowlist_text(config)),
                    };
                    violations.push(Violation::new(
                        agent,
                        ViolationKind::ShellNotAllowed,
                        what,
                        why,
                    ));
                }
            }
        }
    }
}

/// The shell allowlist as a refusal shows it.
fn allowlist_text(config: &Config) -> String {
    if config.shell_allowlist.is_empty() {
        "the allowlist is empty".to_owned()
    } else {
        format!(
            "allowlisted: {}",
            config
                .shell_allowlist
                .iter()
                .map(ShellCommand::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `external_api: true` only where `agent_permissions.external_api` allows it.
pub(super) fn check_external_api(
    subtask: &Subtask,
    config: &Config,
    violations: &mut Vec<Violation>,
) {
    if subtask.external_api && config.agent_permissions.external_api == ExternalApi::Deny {
        violations.push(Violation::new(
            Some(&subtask.task_id),
            ViolationKind::ExternalApiDenied,
            "external_api: true",
            "agent_permissions.external_api is `deny`",
        ));
    }
}
