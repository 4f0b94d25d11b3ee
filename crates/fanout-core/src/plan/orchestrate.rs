//! The orchestrator call: prompt, forced `submit_plan` tool, and the repair loop.
//!
//! One request to the orchestrator model (`mode_routing.orchestrator`) carries the task and the
//! tree view; `tool_choice` forces `submit_plan`, whose input schema is the plan format. The
//! answer is parsed and validated; a plan with errors goes back as an error `tool_result`
//! listing every error, at most [`PlanOptions::max_repairs`] times. The last plan is returned
//! even when it still breaks rules, so the dry run can show the violations; only an answer
//! that never becomes a plan at all is an error ([`PlanError::NoPlan`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::scan::RepoScan;
use super::types::{TOOL_NAMES, parse_plan, plan_json_schema};
use super::validate::{PlanLimits, Validation, validate};
use super::{PlanError, PlanUsage};
use crate::config::{Config, ExternalApi, FileAccess, ShellExec};
use crate::fleet::Fleet;
use crate::provider::{Message, Request, StopReason, ToolChoice, ToolSpec};

/// The forced tool's name.
pub const SUBMIT_PLAN_TOOL: &str = "submit_plan";

/// Knobs of the planning call.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOptions {
    /// Times an invalid plan is sent back to be fixed (so at most `1 + max_repairs` calls).
    pub max_repairs: u32,
    /// `max_tokens` of the orchestrator call; a 1,000-agent plan is large.
    pub max_output_tokens: u32,
    /// Size bound of the tree view in the prompt.
    pub tree_view_max_bytes: usize,
    pub limits: PlanLimits,
    /// Counts the orchestrator calls started, for a progress display.
    pub progress: PlanProgress,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            max_repairs: 3,
            max_output_tokens: 64_000,
            tree_view_max_bytes: 48 * 1024,
            limits: PlanLimits::default(),
            progress: PlanProgress::default(),
        }
    }
}

/// The number of orchestrator calls started so far, shared with whoever shows progress.
/// Equal to every other `PlanProgress`: it observes a plan, it is not part of its options.
#[derive(Debug, Clone, Default)]
pub struct PlanProgress(Arc<AtomicU32>);

impl PlanProgress {
    pub fn calls_started(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    fn call_started(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl PartialEq for PlanProgress {
    fn eq(&self, _: &PlanProgress) -> bool {
        true
    }
}

/// A plan the orchestrator produced, validated.
#[derive(Debug, Clone)]
pub struct Planned {
    pub validation: Validation,
    /// Calls made (1 when the first plan was accepted).
    pub attempts: u32,
    pub usage: PlanUsage,
    /// The errors sent back on each repair, in order.
    pub repairs: Vec<Vec<String>>,
}

/// The system prompt: the rules the plan must follow, from the workflow file.
pub fn system_prompt(config: &Config, limits: &PlanLimits) -> String {
    let shell = match config.agent_permissions.shell_exec {
        ShellExec::Deny => "No shell: do not give any agent `bash`.".to_owned(),
        ShellExec::Unrestricted => "Shell commands are unrestricted.".to_owned(),
        ShellExec::Restricted if config.shell_allowlist.is_empty() => {
            "No shell commands are allowlisted: do not give any agent `bash`.".to_owned()
        }
        ShellExec::Restricted => format!(
            "Agents given `bash` must list in `shell_commands` the exact commands they will run; only these (with extra arguments) are allowed: {}.",
            config
                .shell_allowlist
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let files = match config.agent_permissions.file_access {
        FileAccess::Scoped => "Agents read and write only inside their scope.",
        FileAccess::ReadOnly => "Agents may not write files: no `write_file` or `edit_file`.",
        FileAccess::None => "Agents get no file tools.",
    };
    let network = match config.agent_permissions.external_api {
        ExternalApi::Deny => "Outbound network access is denied: never set `external_api`.",
        ExternalApi::Allow => "Set `external_api: true` only for agents that need the network.",
    };
    let roles = config
        .mode_routing
        .iter()
        .filter(|(role, _)| role.as_str() != crate::config::ORCHESTRATOR_ROLE)
        .map(|(role, mode)| format!("`{role}` ({})", mode.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "You are the orchestrator of the workflow `{name}`. Decompose the task into independent \
sub-tasks, each run by one sub-agent with its own context, file scope, tools and model mode, \
and answer only by calling `{tool}` once with the whole plan.\n\n\
Rules:\n\
- `workflow` is `{name}`. At most {max_agents} sub-tasks; at most {parallel} run at once.\n\
- `task_id`: unique, letters, digits, `_`, `-`, `.`.\n\
- `description`: self-contained; the sub-agent sees nothing else.\n\
- `scope`: the minimum files, directories or globs the agent needs, relative to the \
repository root, no `..`, no absolute paths. `write_scope` (optional) narrows what it may write.\n\
- Never include protected paths: {protected}.\n\
- Two agents that may run at the same time must not write the same file; if they must, \
order them with `depends_on`. No dependency cycles.\n\
- `tools`: only what the agent needs, from {tools}. {files}\n\
- {shell}\n\
- {network}\n\
- `mode`: `fast` for routine, high-volume work; `default` for hard reasoning. Work touching \
authentication, security or payments ({sensitive}) must be `default`.\n\
- `role` (optional): one of {roles}; the role decides the mode.\n",
        name = config.name,
        tool = SUBMIT_PLAN_TOOL,
        max_agents = limits.max_agents,
        parallel = config.max_parallel_agents,
        protected = config.protected_paths().join(", "),
        tools = TOOL_NAMES.join(", "),
        sensitive = config.sensitive_paths.patterns().join(", "),
        roles = if roles.is_empty() {
            "none".into()
        } else {
            roles
        },
    )
}

/// The first user message: the task and the tree view.
pub fn user_prompt(task: &str, scan: &RepoScan, options: &PlanOptions) -> String {
    format!(
        "Task:\n{task}\n\n{}\nCall `{SUBMIT_PLAN_TOOL}` with the plan.",
        scan.tree_view(options.tree_view_max_bytes)
    )
}

/// The `submit_plan` tool.
pub fn submit_plan_tool(config: &Config, limits: &PlanLimits) -> ToolSpec {
    let roles: Vec<String> = config
        .mode_routing
        .keys()
        .filter(|role| role.as_str() != crate::config::ORCHESTRATOR_ROLE)
        .cloned()
        .collect();
    ToolSpec {
        name: SUBMIT_PLAN_TOOL.to_owned(),
        description:
            "Submit the plan: the sub-tasks, each with its scope, tools, mode and dependencies."
                .to_owned(),
        input_schema: plan_json_schema(&roles, limits.max_agents),
    }
}

/// Ask the orchestrator for a plan and repair it until it validates or the repairs run out.
pub async fn request_plan(
    fleet: &Fleet,
    config: &Config,
    scan: &RepoScan,
    task: &str,
    options: &PlanOptions,
    cancel: &CancellationToken,
) -> Result<Planned, PlanError> {
    let model = config.orchestrator_model();
    let mut request = Request::new(model.model.clone(), options.max_output_tokens);
    request.system = Some(system_prompt(config, &options.limits));
    request.tools = vec![submit_plan_tool(config, &options.limits)];
    request.tool_choice = Some(ToolChoice::Tool {
        name: SUBMIT_PLAN_TOOL.to_owned(),
    });
    request
        .messages
        .push(Message::user(user_prompt(task, scan, options)));

    let mut usage = PlanUsage {
        started_at: Some(std::time::SystemTime::now()),
        ..PlanUsage::default()
    };
    let mut repairs: Vec<Vec<String>> = Vec::new();
    let mut last_validation: Option<Validation> = None;
    let calls = options.max_repairs + 1;
    for attempt in 1..=calls {
        options.progress.call_started();
        let outcome = fleet
            .call(&request, cancel)
            .await
            .map_err(|source| PlanError::Orchestrator { source, attempt })?;
        let response = outcome.response;
        usage.calls += 1;
        usage.input_tokens += response.usage.total_input();
        usage.output_tokens += response.usage.output_tokens;
        usage.dollars += model.cost(response.usage.billed());
        usage.ended_at = Some(std::time::SystemTime::now());

        let tool_use = response
            .tool_uses()
            .find(|(_, name, _)| *name == SUBMIT_PLAN_TOOL)
            .map(|(id, _, input)| (id.to_owned(), input.clone()));
        let (errors, tool_use_id) = match tool_use {
            None => {
                let mut errors = vec![format!(
                    "the answer did not call `{SUBMIT_PLAN_TOOL}`; answer only with that tool call"
                )];
                if response.stop_reason == StopReason::MaxTokens {
                    errors.push(format!(
                        "the answer was cut at max_tokens ({}); plan fewer, broader sub-tasks",
                        options.max_output_tokens
                    ));
                }
                (errors, None)
            }
            Some((id, input)) => match check(&input, config, scan, options) {
                Ok(validation) if validation.is_ok() => {
                    return Ok(Planned {
                        validation,
                        attempts: attempt,
                        usage,
                        repairs,
                    });
                }
                Ok(validation) => {
                    let errors = validation.violations.iter().map(|v| v.line()).collect();
                    last_validation = Some(validation);
                    (errors, Some(id))
                }
                Err(error) => (vec![error], Some(id)),
            },
        };
        if attempt == calls {
            if let Some(validation) = last_validation {
                // Still breaking rules: the caller shows the violations.
                return Ok(Planned {
                    validation,
                    attempts: attempt,
                    usage,
                    repairs,
                });
            }
            repairs.push(errors);
            return Err(PlanError::NoPlan {
                attempts: attempt,
                errors: repairs,
            });
        }
        request.push_rejection(
            response.content.clone(),
            tool_use_id,
            &format!(
                "The plan was rejected. Fix every error below and call `{SUBMIT_PLAN_TOOL}` again with the whole corrected plan."
            ),
            &errors,
        );
        repairs.push(errors);
    }
    Err(PlanError::NoPlan {
        attempts: calls,
        errors: repairs,
    })
}

/// Parse and validate one `submit_plan` input. `Err` is a schema error (no plan at all).
fn check(
    input: &Value,
    config: &Config,
    scan: &RepoScan,
    options: &PlanOptions,
) -> Result<Validation, String> {
    let plan = parse_plan(input).map_err(|err| format!("plan: {err}"))?;
    Ok(validate(plan, config, scan, &options.limits))
}
