//! Rules on the plan as a whole: it is for this workflow, it has sub-tasks, and not more of
//! them than a run may have.

use super::{PlanLimits, Violation, ViolationKind};
use crate::config::Config;
use crate::plan::types::Plan;

/// The plan names the workflow file it is checked against.
pub(super) fn check_workflow(plan: &Plan, config: &Config, violations: &mut Vec<Violation>) {
    if plan.workflow != config.name {
        violations.push(Violation::new(
            None,
            ViolationKind::WorkflowMismatch,
            format!("workflow `{}`", plan.workflow),
            format!("the workflow file is `{}`", config.name),
        ));
    }
}

/// The plan has at least one sub-task.
pub(super) fn check_not_empty(plan: &Plan, violations: &mut Vec<Violation>) {
    if plan.subtasks.is_empty() {
        violations.push(Violation::new(
            None,
            ViolationKind::NoSubtasks,
            "subtasks",
            "the plan has no sub-tasks",
        ));
    }
}

/// The plan has at most [`PlanLimits::max_agents`] sub-tasks.
pub(super) fn check_agent_count(plan: &Plan, limits: &PlanLimits, violations: &mut Vec<Violation>) {
    if plan.subtasks.len() > limits.max_agents {
        violations.push(Violation::new(
            None,
            ViolationKind::TooManyAgents,
            format!("{} sub-tasks", plan.subtasks.len()),
            format!("a run may have at most {} agents", limits.max_agents),
        ));
    }
}
