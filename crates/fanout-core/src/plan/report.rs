//! The dry-run report as data, and its text rendering.
//!
//! [`Report`] is what `--json` prints. [`Report::render`] gives the human text: the seed's
//! lines in the seed's order and wording (`[DRY RUN] Workflow:`, `Agents planned:`, `Files in
//! scope:`, `External API calls:`, `Shell commands:`, `Estimated token usage:`, then the
//! violations or `No permission violations detected.`), then adjustments, cost, time, where
//! the plan was saved, and the closing line. Rendering returns a `String`; the CLI prints it.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Serialize;

use super::PlanUsage;
use super::TaskId;
use super::estimate::{Estimate, budget_violations, human_duration, human_tokens};
use super::store::SavedPlan;
use super::validate::{Adjustment, Validation, Violation};
use crate::config::{Config, ExternalApi, Mode, SandboxSetting, ShellCommand};

fn is_enforced(setting: &SandboxSetting) -> bool {
    *setting == SandboxSetting::Enforce
}

/// Where the plan came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlanSource {
    /// Planned now by the orchestrator, in this many calls.
    Orchestrator { attempts: u32 },
    /// Read from a reviewed plan file.
    File {
        path: PathBuf,
        /// The file's hash differs from the one recorded at review.
        edited_since_review: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExternalApiSummary {
    /// Agents that asked for outbound network access.
    pub calls: usize,
    /// `denied` or `allowed`.
    pub policy: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShellSummary {
    /// Distinct commands the plan's agents will run, in first-use order.
    pub commands: Vec<String>,
    /// Every one is allowed by the workflow's shell rules.
    pub all_allowlisted: bool,
    pub not_allowlisted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenSummary {
    pub total: u64,
    pub fast: u64,
    /// 0.0 to 1.0.
    pub fast_share: f64,
}

/// One row per agent (`--verbose`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentRow {
    pub task_id: TaskId,
    pub description: String,
    pub role: Option<String>,
    pub mode: Mode,
    pub files: usize,
    pub writable_files: usize,
    pub tools: Vec<String>,
    pub shell_commands: Vec<String>,
    pub depends_on: Vec<String>,
    pub turns: u64,
    pub tokens: u64,
    pub dollars: f64,
}

/// Everything the dry run shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub workflow: String,
    pub source: PlanSource,
    pub saved: Option<SavedPlan>,
    pub agents_planned: usize,
    pub files_in_scope: usize,
    pub external_api: ExternalApiSummary,
    pub shell_commands: ShellSummary,
    /// `best_effort` only when the workflow file asked for it (absent from JSON otherwise).
    #[serde(skip_serializing_if = "is_enforced")]
    pub sandbox: SandboxSetting,
    pub tokens: TokenSummary,
    pub violations: Vec<Violation>,
    /// Estimates over a run budget (violations only with `budgets.run.enforce_estimate`).
    pub warnings: Vec<String>,
    pub adjustments: Vec<Adjustment>,
    pub estimate: Estimate,
    /// The orchestrator's own usage (absent for a plan read from a file).
    pub planning: Option<PlanUsage>,
    pub agents: Vec<AgentRow>,
}

impl Report {
    /// Assemble the report. Budget violations found by the estimate join the plan's.
    pub fn new(
        config: &Config,
        validation: &Validation,
        estimate: Estimate,
        source: PlanSource,
        planning: Option<PlanUsage>,
        dry_run: bool,
    ) -> Report {
        let plan = &validation.plan;
        let mut violations = validation.violations.clone();
        let mut warnings = Vec::new();
        let over_budget = budget_violations(&estimate, config);
        if config.budgets.run.enforce_estimate {
            violations.extend(over_budget);
        } else {
            for over in over_budget {
                warnings.push(format!(
                    "{} is over the budget ({}); this is an estimate, so the run is not refused: \
                     the dollar limit is enforced on actual spend while running \
                     (budgets.run.enforce_estimate: true refuses it)",
                    over.what, over.why
                ));
            }
        }

        let mut commands: Vec<String> = Vec::new();
        let mut not_allowlisted = Vec::new();
        for subtask in &plan.subtasks {
            for command in &subtask.shell_commands {
                let display = ShellCommand::parse(command)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|_| command.clone());
                if commands.contains(&display) {
                    continue;
                }
                let allowed = ShellCommand::parse(command)
                    .is_ok_and(|c| config.shell_command_allowed(c.argv()));
                if !allowed {
                    not_allowlisted.push(display.clone());
                }
                commands.push(display);
            }
        }
        let agents = plan
            .subtasks
            .iter()
            .zip(&validation.scopes)
            .zip(&estimate.agents)
            .map(|((subtask, scope), agent)| AgentRow {
                task_id: subtask.task_id.clone(),
                description: subtask.description.clone(),
                role: subtask.role.clone(),
                mode: subtask.mode,
                files: scope.read_files.len() + scope.new_files.len(),
                writable_files: scope.write_files.len() + scope.new_files.len(),
                tools: subtask.tools.clone(),
                shell_commands: subtask.shell_commands.clone(),
                depends_on: subtask.depends_on.iter().map(|d| d.0.clone()).collect(),
                turns: agent.turns,
                tokens: agent.total_tokens(),
                dollars: agent.dollars,
            })
            .collect();
        Report {
            dry_run,
            workflow: config.name.clone(),
            source,
            saved: None,
            agents_planned: plan.subtasks.len(),
            files_in_scope: validation.files_in_scope,
            external_api: ExternalApiSummary {
                calls: plan.subtasks.iter().filter(|s| s.external_api).count(),
                policy: match config.agent_permissions.external_api {
                    ExternalApi::Deny => "denied",
                    ExternalApi::Allow => "allowed",
                },
            },
            shell_commands: ShellSummary {
                all_allowlisted: not_allowlisted.is_empty(),
                commands,
                not_allowlisted,
            },
            sandbox: config.agent_permissions.sandbox,
            tokens: TokenSummary {
                total: estimate.total_tokens,
                fast: estimate.fast_tokens,
                fast_share: estimate.fast_share,
            },
            violations,
            warnings,
            adjustments: validation.adjustments.clone(),
            estimate,
            planning,
            agents,
        }
    }

    /// No violation: the plan may run.
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human report; `verbose` adds one row per agent.
    pub fn render(&self, verbose: bool) -> String {
        let mut out = String::new();
        let prefix = if self.dry_run { "[DRY RUN] " } else { "" };
        let _ = writeln!(out, "{prefix}Workflow: {}", self.workflow);
        let _ = writeln!(out, "Agents planned: {}", self.agents_planned);
        let _ = writeln!(out, "Files in scope: {}", self.files_in_scope);
        let _ = writeln!(
            out,
            "External API calls: {} ({})",
            self.external_api.calls, self.external_api.policy
        );
        let shell = &self.shell_commands;
        if shell.commands.is_empty() {
            let _ = writeln!(out, "Shell commands: none");
        } else if shell.all_allowlisted {
            let _ = writeln!(
                out,
                "Shell commands: [{}] (allowlisted)",
                shell.commands.join(", ")
            );
        } else {
            let _ = writeln!(
                out,
                "Shell commands: [{}] ({} not allowlisted)",
                shell.commands.join(", "),
                shell.not_allowlisted.len()
            );
        }
        if self.sandbox == SandboxSetting::BestEffort {
            let _ = writeln!(out, "Sandbox: best effort (requested in the workflow file)");
        }
        let _ = writeln!(
            out,
            "Estimated token usage: {} ({:.0}% Fast Mode)",
            human_tokens(self.tokens.total),
            self.tokens.fast_share * 100.0
        );
        if self.violations.is_empty() {
            let _ = writeln!(out, "No permission violations detected.");
        } else {
            let _ = writeln!(out, "Permission violations: {}", self.violations.len());
            for violation in &self.violations {
                let _ = writeln!(out, "  {}", violation.line());
            }
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "Warning: {warning}");
        }
        for adjustment in &self.adjustments {
            let _ = writeln!(
                out,
                "Adjusted {}: {} ({})",
                adjustment.agent, adjustment.what, adjustment.why
            );
        }
        let estimate = &self.estimate;
        let mut cost = format!(
            "Estimated cost: {} (default {}, fast {}",
            money(estimate.dollars),
            money(estimate.default_dollars),
            money(estimate.fast_dollars)
        );
        if let Some(planning) = &self.planning {
            let _ = write!(cost, "; planning {} spent", money(planning.dollars));
        }
        cost.push(')');
        let _ = writeln!(out, "{cost}");
        let _ = writeln!(
            out,
            "Expected wall time: about {} (bound by {}; {} requests)",
            human_duration(estimate.wall_time),
            estimate.bound_by.describe(),
            estimate.requests
        );
        for basis in &estimate.basis {
            let _ = writeln!(out, "Estimate basis: {basis}");
        }
        match &self.source {
            PlanSource::File {
                path,
                edited_since_review,
            } => {
                let note = if *edited_since_review {
                    " (edited since review; re-validated)"
                } else {
                    ""
                };
                let _ = writeln!(out, "Plan read from {}{note}", path.display());
            }
            PlanSource::Orchestrator { attempts } if *attempts > 1 => {
                let _ = writeln!(
                    out,
                    "Planned in {attempts} orchestrator calls ({} repairs)",
                    attempts - 1
                );
            }
            PlanSource::Orchestrator { .. } => {}
        }
        if let Some(saved) = &self.saved {
            let _ = writeln!(out, "Plan saved: {} ({})", saved.path.display(), saved.hash);
        }
        if verbose && !self.agents.is_empty() {
            let width = self
                .agents
                .iter()
                .map(|a| a.task_id.as_str().len())
                .max()
                .unwrap_or(0);
            let _ = writeln!(out, "Agents:");
            for agent in &self.agents {
                let mut row = format!(
                    "  {:<width$}  {:<7}  {:>4} files ({} writable)  tools: {}",
                    agent.task_id,
                    agent.mode.as_str(),
                    agent.files,
                    agent.writable_files,
                    agent.tools.join(",")
                );
                if !agent.shell_commands.is_empty() {
                    let _ = write!(row, "  shell: {}", agent.shell_commands.join(", "));
                }
                let _ = write!(
                    row,
                    "  ~{} tokens  ${:.2}",
                    human_tokens(agent.tokens),
                    agent.dollars
                );
                if !agent.depends_on.is_empty() {
                    let _ = write!(row, "  after: {}", agent.depends_on.join(","));
                }
                let _ = writeln!(out, "{row}");
            }
        }
        if !self.violations.is_empty() {
            let _ = writeln!(
                out,
                "Fix the plan or the workflow file, then run the dry run again."
            );
        } else if self.dry_run {
            let _ = writeln!(out, "Run without --dry-run to execute.");
        }
        out
    }
}

/// Dollars with cents, and a tenth of a cent below a dollar, so the parts of a small estimate
/// add up as printed (`$0.022 (default $0.007, fast $0.015)`, not `$0.02 ($0.01, $0.02)`).
fn money(dollars: f64) -> String {
    if dollars < 1.0 {
        format!("${dollars:.3}")
    } else {
        format!("${dollars:.2}")
    }
}
