//! Dependency rules: every `depends_on` names a sub-task, and no dependencies form a cycle.
//! Also the dependency graph's questions other rules ask (what an agent depends on).

use std::collections::{BTreeSet, HashMap};

use super::{Violation, ViolationKind};
use crate::plan::types::Plan;

/// Each sub-task's dependencies as indices into the plan (edges to known ids only); an
/// unknown id is a violation.
pub(super) fn check_dependencies(
    plan: &Plan,
    index_of: &HashMap<String, usize>,
    violations: &mut Vec<Violation>,
) -> Vec<Vec<usize>> {
    let mut graph: Vec<Vec<usize>> = Vec::with_capacity(plan.subtasks.len());
    for subtask in &plan.subtasks {
        let mut edges = Vec::new();
        for dependency in &subtask.depends_on {
            match index_of.get(dependency.as_str()) {
                Some(&target) => edges.push(target),
                None => violations.push(Violation::new(
                    Some(&subtask.task_id),
                    ViolationKind::UnknownDependency,
                    format!("depends_on `{dependency}`"),
                    "no sub-task has this id",
                )),
            }
        }
        graph.push(edges);
    }
    graph
}

/// No cycle in the dependency graph: each one found is a violation on its first agent.
pub(super) fn check_cycles(plan: &Plan, graph: &[Vec<usize>], violations: &mut Vec<Violation>) {
    for cycle in find_cycles(graph) {
        let Some(&first) = cycle.first() else {
            continue;
        };
        let mut names: Vec<&str> = cycle
            .iter()
            .map(|&i| plan.subtasks[i].task_id.as_str())
            .collect();
        names.push(plan.subtasks[first].task_id.as_str());
        violations.push(Violation::new(
            Some(&plan.subtasks[first].task_id),
            ViolationKind::DependencyCycle,
            format!("depends_on {}", names.join(" → ")),
            "a dependency cycle: none of these can ever start",
        ));
    }
}

/// Every elementary cycle found by a depth-first search (one per back edge), as node lists.
fn find_cycles(graph: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut color = vec![WHITE; graph.len()];
    let mut cycles = Vec::new();
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..graph.len() {
        if color[start] != WHITE {
            continue;
        }
        // (node, next edge index); `path` mirrors the grey nodes in order.
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        let mut path: Vec<usize> = vec![start];
        color[start] = GREY;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            if let Some(&next) = graph[node].get(*edge) {
                *edge += 1;
                match color[next] {
                    WHITE => {
                        color[next] = GREY;
                        stack.push((next, 0));
                        path.push(next);
                    }
                    GREY => {
                        if let Some(position) = path.iter().position(|&n| n == next) {
                            let cycle = path[position..].to_vec();
                            let mut key = cycle.clone();
                            key.sort_unstable();
                            if seen.insert(key) {
                                cycles.push(cycle);
                            }
                        }
                    }
                    _ => {}
                }
            } else {
                color[node] = BLACK;
                stack.pop();
                path.pop();
            }
        }
    }
    cycles
}

/// Everything `node` depends on, directly or not, as a bit set.
pub(super) fn ancestors(graph: &[Vec<usize>], node: usize) -> Vec<u64> {
    let mut bits = vec![0u64; graph.len().div_ceil(64)];
    let mut stack: Vec<usize> = graph[node].clone();
    while let Some(next) = stack.pop() {
        let (word, bit) = (next / 64, 1u64 << (next % 64));
        if bits[word] & bit == 0 {
            bits[word] |= bit;
            stack.extend(graph[next].iter().copied());
        }
    }
    bits
}
