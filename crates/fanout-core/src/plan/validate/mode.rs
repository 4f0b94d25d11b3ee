//! Mode rules for one agent: its role is a `mode_routing` role, whose mode overrides the
//! plan's; and an agent whose scope reaches a sensitive path does not run on `fast`. Both
//! change the mode (reported as an [`Adjustment`]) rather than refuse the plan; only an
//! unknown role is a violation.

use super::{Adjustment, Violation, ViolationKind};
use crate::config::{Config, Mode};
use crate::plan::types::Subtask;

/// The mode `subtask` runs in: the workflow's routing first, then the sensitive-path rule.
/// `sensitive` is the first sensitive path its scope reaches.
pub(super) fn route_mode(
    subtask: &Subtask,
    config: &Config,
    sensitive: Option<&str>,
    violations: &mut Vec<Violation>,
    adjustments: &mut Vec<Adjustment>,
) -> Mode {
    let mut mode = subtask.mode;
    if let Some(role) = &subtask.role {
        match config.mode_routing.get(role) {
            Some(&routed) if routed != mode => {
                adjustments.push(Adjustment {
                    agent: subtask.task_id.clone(),
                    what: format!("mode {} → {}", mode.as_str(), routed.as_str()),
                    why: format!("mode_routing.{role} is `{}`", routed.as_str()),
                });
                mode = routed;
            }
            Some(_) => {}
            None => violations.push(Violation::new(
                Some(&subtask.task_id),
                ViolationKind::UnknownRole,
                format!("role `{role}`"),
                format!(
                    "not a mode_routing role (roles: {})",
                    config
                        .mode_routing
                        .keys()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    if mode == Mode::Fast
        && let Some(path) = sensitive
    {
        adjustments.push(Adjustment {
            agent: subtask.task_id.clone(),
            what: "mode fast → default".into(),
            why: format!("its scope covers `{path}`, a sensitive path (sensitive_paths)"),
        });
        mode = Mode::Default;
    }
    mode
}
