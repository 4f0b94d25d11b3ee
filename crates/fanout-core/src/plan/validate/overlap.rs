//! The overlap rule: no two agents that could run at the same time (neither depends, directly
//! or not, on the other) write the same path.
//!
//! Overlap is decided on concrete claims: existing files a write scope matches, literal paths
//! (files to create), and whole directories (a literal directory, or a glob `dir/**`). Two
//! other globs (`src/*.ts`, `src/*.md`) conflict only through the existing files both match.

use std::collections::{BTreeMap, HashMap};

use super::dependencies::ancestors;
use super::{ResolvedScope, Violation, ViolationKind};
use crate::plan::scan::RepoScan;
use crate::plan::types::Plan;

/// Most overlap violations listed one by one; the rest are counted in one more.
const MAX_OVERLAP_VIOLATIONS: usize = 100;

/// Write scopes of agents that may run at the same time do not overlap.
pub(super) fn check_overlaps(
    plan: &Plan,
    scan: &RepoScan,
    scopes: &[ResolvedScope],
    graph: &[Vec<usize>],
    violations: &mut Vec<Violation>,
) {
    // Point claims: (path, agent), sorted by path.
    let mut points: Vec<(&str, usize)> = Vec::new();
    let mut dirs: Vec<(&str, usize)> = Vec::new();
    for (agent, scope) in scopes.iter().enumerate() {
        for &file in &scope.write_files {
            points.push((scan.files[file].path.as_str(), agent));
        }
        for path in &scope.new_files {
            points.push((path.as_str(), agent));
        }
        for dir in &scope.write_dirs {
            dirs.push((dir.as_str(), agent));
        }
    }
    points.sort_unstable();
    points.dedup();
    dirs.sort_unstable();
    dirs.dedup();

    // (a, b) with a < b → an example path both write.
    let mut pairs: BTreeMap<(usize, usize), String> = BTreeMap::new();
    let mut add = |a: usize, b: usize, path: &str| {
        if a != b {
            pairs
                .entry((a.min(b), a.max(b)))
                .or_insert_with(|| path.to_owned());
        }
    };
    let mut start = 0;
    while start < points.len() {
        let mut end = start + 1;
        while end < points.len() && points[end].0 == points[start].0 {
            end += 1;
        }
        for i in start..end {
            for j in i + 1..end {
                add(points[i].1, points[j].1, points[i].0);
            }
        }
        start = end;
    }
    for &(dir, agent) in &dirs {
        let from = points.partition_point(|(path, _)| *path < dir);
        for &(path, other) in points[from..]
            .iter()
            .take_while(|(p, _)| p.starts_with(dir))
        {
            add(agent, other, path);
        }
        for &(other_dir, other) in &dirs {
            if other_dir.starts_with(dir) || dir.starts_with(other_dir) {
                let shown = if other_dir.len() > dir.len() {
                    other_dir
                } else {
                    dir
                };
                add(agent, other, if shown.is_empty() { "." } else { shown });
            }
        }
    }

    let mut ancestor_sets: HashMap<usize, Vec<u64>> = HashMap::new();
    let mut depends = |from: usize, on: usize| -> bool {
        let bits = ancestor_sets
            .entry(from)
            .or_insert_with(|| ancestors(graph, from));
        bits[on / 64] & (1u64 << (on % 64)) != 0
    };
    let mut listed = 0;
    let mut unlisted = 0;
    for ((a, b), path) in pairs {
        if depends(a, b) || depends(b, a) {
            continue;
        }
        if listed == MAX_OVERLAP_VIOLATIONS {
            unlisted += 1;
            continue;
        }
        listed += 1;
        let other = &plan.subtasks[b].task_id;
        violations.push(Violation::new(
            Some(&plan.subtasks[a].task_id),
            ViolationKind::WriteOverlap,
            format!("write scope `{path}`"),
            format!(
                "`{other}` writes it too and may run at the same time; split the files or order them with depends_on"
            ),
        ));
    }
    if unlisted > 0 {
        violations.push(Violation::new(
            None,
            ViolationKind::WriteOverlap,
            format!("{unlisted} more overlapping pairs"),
            "not listed one by one",
        ));
    }
}
