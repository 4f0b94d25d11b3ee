//! Scope rules: each entry of an agent's scope is relative, free of `..`, a valid glob, inside
//! `paths.allow`/`paths.deny` and clear of protected paths (for reads as well as writes, since
//! protected paths hold secrets); and what the entries resolve to over the scanned files.

use std::collections::BTreeSet;

use globset::{Glob, GlobBuilder};

use super::{ResolvedScope, Violation, ViolationKind};
use crate::config::Config;
use crate::plan::scan::RepoScan;
use crate::plan::types::Subtask;
use crate::policy::ScopePolicy;

/// A normalized scope entry.
pub(super) enum Entry {
    /// A file or directory path (no glob characters), normalized, `""` for the root.
    Literal(String),
    Glob {
        pattern: String,
        matcher: globset::GlobMatcher,
        /// The literal directory prefix before the first glob character (`src/` for
        /// `src/**/*.ts`), to scan only that range of files.
        base: String,
        /// The glob is `dir/**` (or `**`): it claims the whole directory.
        whole_dir: Option<String>,
    },
}

/// Cached path-rule answers per scanned file: bit 0 known, 1 allowed, 2 never writable,
/// 3 sensitive, 4 not readable. "Never writable" and "not readable" are the runtime policy's
/// own answers ([`ScopePolicy::is_protected`], [`ScopePolicy::check_read`]): a dry run flags
/// exactly what a live run would refuse.
pub(super) struct FileFlags<'a> {
    config: &'a Config,
    runtime: &'a ScopePolicy,
    scan: &'a RepoScan,
    flags: Vec<u8>,
}

const KNOWN: u8 = 1;
const ALLOWED: u8 = 2;
const PROTECTED: u8 = 4;
const SENSITIVE: u8 = 8;
const UNREADABLE: u8 = 16;

impl<'a> FileFlags<'a> {
    pub(super) fn new(config: &'a Config, runtime: &'a ScopePolicy, scan: &'a RepoScan) -> Self {
        FileFlags {
            config,
            runtime,
            scan,
            flags: vec![0; scan.files.len()],
        }
    }

    fn get(&mut self, index: usize) -> u8 {
        let cached = self.flags[index];
        if cached & KNOWN != 0 {
            return cached;
        }
        let path = self.scan.files[index].path.as_str();
        let value = path_flags(self.config, self.runtime, path);
        self.flags[index] = value;
        value
    }

    /// The path rules' answer for a path that need not be a scanned file (not cached).
    fn probe(&self, path: &str) -> u8 {
        path_flags(self.config, self.runtime, path)
    }
}

fn path_flags(config: &Config, runtime: &ScopePolicy, path: &str) -> u8 {
    let mut value = KNOWN;
    if config.paths.is_allowed(path) {
        value |= ALLOWED;
    }
    if runtime.is_protected(path) {
        value |= PROTECTED;
    }
    if runtime.check_read(path).is_err() {
        value |= UNREADABLE;
    }
    if config.is_sensitive(path) {
        value |= SENSITIVE;
    }
    value
}

fn is_glob(text: &str) -> bool {
    text.contains(['*', '?', '[', '{'])
}

/// Normalize one scope entry, or say why it is refused.
pub(super) fn parse_entry(raw: &str) -> Result<Entry, (ViolationKind, String)> {
    let text = raw.trim();
    if text.is_empty() {
        return Err((ViolationKind::InvalidScope, "an empty path".into()));
    }
    if text.contains('\\') {
        return Err((
            ViolationKind::InvalidScope,
            "contains `\\`; scopes use `/` separators".into(),
        ));
    }
    let bytes = text.as_bytes();
    let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
    if text.starts_with('/') || text.starts_with('~') || drive {
        return Err((
            ViolationKind::AbsolutePath,
            "absolute paths are refused; scopes are relative to the repository root".into(),
        ));
    }
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err((
                    ViolationKind::ParentPath,
                    "`..` leads outside the repository".into(),
                ));
            }
            part => parts.push(part),
        }
    }
    let normalized = parts.join("/");
    if !is_glob(&normalized) {
        return Ok(Entry::Literal(normalized));
    }
    let glob = GlobBuilder::new(&normalized)
        .literal_separator(true)
        .build()
        .map_err(|err| {
            (
                ViolationKind::InvalidScope,
                format!("not a valid glob: {err}"),
            )
        })?;
    let base = glob_base(&normalized);
    let whole_dir = if normalized == "**" {
        Some(String::new())
    } else {
        normalized
            .strip_suffix("/**")
            .filter(|dir| !is_glob(dir))
            .map(|dir| format!("{dir}/"))
    };
    Ok(Entry::Glob {
        matcher: Glob::compile_matcher(&glob),
        pattern: normalized,
        base,
        whole_dir,
    })
}

/// The directory prefix before the first glob character, with its trailing `/`.
pub(super) fn glob_base(pattern: &str) -> String {
    let mut base = String::new();
    for part in pattern.split('/') {
        if is_glob(part) {
            break;
        }
        base.push_str(part);
        base.push('/');
    }
    base
}

/// What one entry covers.
struct Covered {
    files: Vec<usize>,
    /// A literal path that is not a scanned file and has no files below it.
    new_file: Option<String>,
    /// The directory it claims entirely (`src/`, `""`).
    dir: Option<String>,
    /// Paths that stand for what the entry could reach beyond existing files, checked
    /// against the path rules too (`.git/x` for `.git`, the pattern itself for a glob).
    probes: Vec<String>,
}

fn cover(entry: &Entry, scan: &RepoScan) -> Covered {
    match entry {
        Entry::Literal(path) => {
            if path.is_empty() {
                return Covered {
                    files: (0..scan.files.len()).collect(),
                    new_file: None,
                    dir: Some(String::new()),
                    probes: vec!["x".into()],
                };
            }
            if let Some(index) = scan.find(path) {
                return Covered {
                    files: vec![index],
                    new_file: None,
                    dir: None,
                    probes: Vec::new(),
                };
            }
            let dir = format!("{path}/");
            let range = scan.prefix_range(&dir);
            let probes = vec![path.clone(), format!("{dir}x")];
            if range.is_empty() {
                Covered {
                    files: Vec::new(),
                    new_file: Some(path.clone()),
                    dir: None,
                    probes,
                }
            } else {
                Covered {
                    files: range.collect(),
                    new_file: None,
                    dir: Some(dir),
                    probes,
                }
            }
        }
        Entry::Glob {
            pattern,
            matcher,
            base,
            whole_dir,
        } => {
            let files = scan
                .prefix_range(base)
                .filter(|&index| matcher.is_match(&scan.files[index].path))
                .collect();
            let mut probes = vec![pattern.clone()];
            if !base.is_empty() {
                probes.push(format!("{base}x"));
            }
            Covered {
                files,
                new_file: None,
                dir: whole_dir.clone(),
                probes,
            }
        }
    }
}

/// The first path an entry reaches that breaks each path rule.
#[derive(Default)]
struct Reached {
    outside: Option<String>,
    protected: Option<String>,
}

impl Reached {
    /// Note one reached path with its flags; `sensitive` is the agent's, across its entries.
    fn note(&mut self, value: u8, path: &str, is_write: bool, sensitive: &mut Option<String>) {
        if value & ALLOWED == 0 && self.outside.is_none() {
            self.outside = Some(path.to_owned());
        }
        let refused = if is_write { PROTECTED } else { UNREADABLE };
        if value & refused != 0 && self.protected.is_none() {
            self.protected = Some(path.to_owned());
        }
        if value & SENSITIVE != 0 && sensitive.is_none() {
            *sensitive = Some(path.to_owned());
        }
    }
}

/// One agent's scope, checked and resolved.
pub(super) struct CheckedScope {
    pub(super) resolved: ResolvedScope,
    /// The first sensitive path the scope reaches (it moves the agent off `fast`).
    pub(super) sensitive: Option<String>,
}

/// Check every entry of `subtask`'s scope (and of its write scope) and resolve them. Literal
/// paths that do not exist yet are added to `new_in_scope`, read-only ones included.
pub(super) fn check_scope(
    subtask: &Subtask,
    flags: &mut FileFlags<'_>,
    new_in_scope: &mut BTreeSet<String>,
    violations: &mut Vec<Violation>,
) -> CheckedScope {
    let scan = flags.scan;
    let agent = Some(&subtask.task_id);
    let mut resolved = ResolvedScope::default();
    let mut sensitive: Option<String> = None;
    let write_entries = subtask.effective_write_scope();
    let read_only_entries = subtask
        .write_scope
        .iter()
        .flatten()
        .filter(|entry| !subtask.scope.contains(entry));
    let all_entries = subtask.scope.iter().chain(read_only_entries);
    let mut read = BTreeSet::new();
    for (raw, is_write) in all_entries
        .map(|raw| (raw, write_entries.contains(raw)))
        .collect::<Vec<_>>()
    {
        let what = format!("scope `{raw}`");
        let entry = match parse_entry(raw) {
            Ok(entry) => entry,
            Err((kind, why)) => {
                violations.push(Violation::new(agent, kind, what, why));
                continue;
            }
        };
        let covered = cover(&entry, scan);
        // Path rules over the covered files and the probes.
        let mut reached = Reached::default();
        for &file in &covered.files {
            let value = flags.get(file);
            reached.note(value, &scan.files[file].path, is_write, &mut sensitive);
        }
        for probe in &covered.probes {
            let value = flags.probe(probe);
            let shown = probe.strip_suffix("/x").unwrap_or(probe);
            reached.note(value, shown, is_write, &mut sensitive);
        }
        if let Some(path) = reached.outside {
            violations.push(Violation::new(
                agent,
                ViolationKind::OutsideAllowedPaths,
                what.clone(),
                format!("reaches `{path}`, outside the allowed paths (paths.allow / paths.deny)"),
            ));
        }
        if let Some(path) = reached.protected {
            violations.push(Violation::new(
                agent,
                ViolationKind::ProtectedPath,
                what.clone(),
                format!(
                    "reaches `{path}`, a protected path (.git, .fanout, package-manager and git config, secrets, paths.protected); agents may not {}",
                    if is_write { "write it" } else { "read it (a secret)" }
                ),
            ));
        }
        read.extend(covered.files.iter().copied());
        if is_write {
            resolved.write_files.extend(covered.files.iter().copied());
            if let Some(dir) = covered.dir {
                resolved.write_dirs.push(dir);
            }
        }
        if let Some(new_file) = covered.new_file {
            new_in_scope.insert(new_file.clone());
            if is_write {
                resolved.new_files.push(new_file);
            }
        }
    }
    resolved.write_files.sort_unstable();
    resolved.write_files.dedup();
    resolved.read_files = read.into_iter().collect();
    CheckedScope {
        resolved,
        sensitive,
    }
}
