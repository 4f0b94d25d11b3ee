//! Id rules: every sub-task id is well formed and unique.

use std::collections::{BTreeSet, HashMap};

use super::{Violation, ViolationKind};
use crate::plan::types::Plan;

/// Check the ids, and map each id to the first sub-task that has it (the one `depends_on`
/// refers to).
pub(super) fn check_ids(plan: &Plan, violations: &mut Vec<Violation>) -> HashMap<String, usize> {
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut reported_duplicates: BTreeSet<String> = BTreeSet::new();
    for (index, subtask) in plan.subtasks.iter().enumerate() {
        let id = subtask.task_id.as_str();
        if !valid_id(id) {
            violations.push(Violation::new(
                Some(&subtask.task_id),
                ViolationKind::InvalidId,
                format!("task_id `{}`", id.escape_debug()),
                "ids are 1 to 64 letters, digits, `_`, `-` or `.`, starting with a letter or digit",
            ));
        }
        // The first sub-task with an id is the one `depends_on` refers to.
        if index_of.contains_key(id) {
            if reported_duplicates.insert(id.to_owned()) {
                violations.push(Violation::new(
                    Some(&subtask.task_id),
                    ViolationKind::DuplicateId,
                    format!("task_id `{id}`"),
                    "two sub-tasks have this id",
                ));
            }
        } else {
            index_of.insert(id.to_owned(), index);
        }
    }
    index_of
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && id.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}
