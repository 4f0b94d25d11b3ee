//! The crate's layers import only downward: a module may name (`crate::x`) only modules below
//! it in [`LAYERS`]. Read from the sources, so a new upward import fails here with the file
//! that made it, before it becomes a cycle.

use std::path::Path;

/// Bottom to top, as `lib.rs` and `docs/architecture.md` list them.
const LAYERS: &[&str] = &[
    "ids",
    "env",
    "text",
    "layout",
    "config",
    "provider",
    "retry",
    "governor",
    "budget",
    "fleet",
    "backend",
    "group_commit",
    "store",
    "git",
    "policy",
    "sandbox",
    "process",
    "tools",
    "agent",
    "plan",
    "attempt",
    "distributed",
    "run",
    "items",
    "report",
    "telemetry",
];

fn rank(module: &str) -> Option<usize> {
    LAYERS.iter().position(|m| *m == module)
}

/// The `crate::x` names in `code`, comments and tests left out.
fn imports(code: &str) -> Vec<String> {
    let code = code.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

#[test]
fn imports_only_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut upward = Vec::new();
    let mut unknown = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let top = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if top == "lib" {
            continue;
        }
        let Some(own) = rank(&top) else {
            unknown.push(top);
            continue;
        };
        let code = std::fs::read_to_string(file).unwrap();
        for name in imports(&code) {
            if rank(&name).is_some_and(|r| r > own) {
                upward.push(format!("{} imports crate::{name}", relative.display()));
            }
        }
    }
    unknown.sort();
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "modules missing from LAYERS: {unknown:?}"
    );
    upward.sort();
    upward.dedup();
    assert!(upward.is_empty(), "upward imports:\n{}", upward.join("\n"));
}

#[test]
fn the_check_sees_an_upward_import() {
    let code = "use crate::items::run;\n// crate::report in a comment\nfn f() { crate::store::x(); }\n#[cfg(test)]\nmod tests { use crate::telemetry; }\n";
    assert_eq!(imports(code), ["items", "store"]);
}
