//! From a model's command line to a program, its arguments and a scrubbed environment.
//!
//! No shell is involved: the line is split into words (quotes group, nothing expands) and any
//! shell syntax is refused outright, so `git status; rm -rf ~` is one refused call rather than
//! two commands. The words must then be permitted by the allowlist. The environment is
//! rebuilt from nothing. `git` gets every repository-controlled program switched off.

use std::path::{Path, PathBuf};

use crate::config::{ShellCommand, ShellCommandError};
use crate::policy::DenyReason;

/// The only `PATH` commands see.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Split a command line into argv, refusing shell syntax and environment prefixes.
pub fn parse_command_line(line: &str) -> Result<Vec<String>, DenyReason> {
    let command = ShellCommand::parse(line).map_err(|error| DenyReason::ShellSyntax {
        detail: match &error {
            ShellCommandError::ShellSyntax(c) => {
                format!("`{}` is shell syntax", c.escape_debug())
            }
            other => format!("the command {other}"),
        },
    })?;
    Ok(command.argv().to_vec())
}

/// Find `program` on [`SAFE_PATH`]. Names with a `/` are refused: an allowlist entry names a
/// program, not a file the agent may have planted.
pub fn resolve_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') || program.is_empty() {
        return None;
    }
    SAFE_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The whole environment of a command: nothing is inherited but `LANG`.
pub fn command_env(home: &Path, git: bool) -> Vec<(String, String)> {
    let home = home.to_string_lossy().into_owned();
    let mut env = vec![
        ("PATH".to_string(), SAFE_PATH.to_string()),
        ("HOME".to_string(), home.clone()),
        ("TMPDIR".to_string(), home),
        (
            "LANG".to_string(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".to_string()),
        ),
        ("TERM".to_string(), "dumb".to_string()),
    ];
    if git {
        for (name, value) in [
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_OPTIONAL_LOCKS", "0"),
            ("GIT_PAGER", "cat"),
            ("PAGER", "cat"),
            ("GIT_EDITOR", "true"),
        ] {
            env.push((name.to_string(), value.to_string()));
        }
    }
    env
}

/// `-c` options placed before a git subcommand so that no program named by the repository's
/// own config or attributes runs: hooks, fsmonitor, external diff, pagers, editors, and the
/// filter and diff drivers the repository names.
pub fn git_safety_args(repository: &Path) -> Vec<String> {
    let mut settings = vec![
        "core.fsmonitor=".to_string(),
        "core.hooksPath=/dev/null".to_string(),
        "core.pager=cat".to_string(),
        "core.editor=true".to_string(),
        "sequence.editor=true".to_string(),
        "core.sshCommand=false".to_string(),
        "core.askPass=".to_string(),
        "credential.helper=".to_string(),
        "protocol.ext.allow=never".to_string(),
        "core.attributesFile=/dev/null".to_string(),
        // With `--no-ext-diff` these never run; emptied too so nothing can turn them back on.
        "diff.external=".to_string(),
    ];
    for driver in repository_drivers(repository, "filter") {
        settings.push(format!("filter.{driver}.clean=cat"));
        settings.push(format!("filter.{driver}.smudge=cat"));
        settings.push(format!("filter.{driver}.process="));
        settings.push(format!("filter.{driver}.required=false"));
    }
    for driver in repository_drivers(repository, "diff") {
        settings.push(format!("diff.{driver}.textconv=cat"));
        settings.push(format!("diff.{driver}.command="));
    }
    for driver in repository_drivers(repository, "merge") {
        settings.push(format!("merge.{driver}.driver=false"));
    }
    settings
        .into_iter()
        .flat_map(|setting| ["-c".to_string(), setting])
        .collect()
}

/// Git subcommands that may run an external diff program (`diff.external`, a diff driver's
/// `command`); `--no-ext-diff` is placed right after them.
const EXT_DIFF_SUBCOMMANDS: &[&str] = &[
    "diff",
    "log",
    "show",
    "whatchanged",
    "format-patch",
    "stash",
];

/// The full argument list for `git` (without the program name): safety options, the
/// subcommand, `--no-ext-diff` where it applies, then the model's arguments, less any
/// `--ext-diff` before `--` (it would override `--no-ext-diff` and run the repository's diff
/// driver).
pub fn git_args(repository: &Path, argv: &[String]) -> Vec<String> {
    let mut args = git_safety_args(repository);
    let mut rest = argv.iter().skip(1);
    let mut ext_diff = false;
    if let Some(subcommand) = rest.next() {
        args.push(subcommand.clone());
        ext_diff = EXT_DIFF_SUBCOMMANDS.contains(&subcommand.as_str());
        if ext_diff {
            args.push("--no-ext-diff".to_string());
        }
    }
    let mut options = true;
    for arg in rest {
        if arg == "--" {
            options = false;
        }
        if ext_diff && options && arg == "--ext-diff" {
            continue;
        }
        args.push(arg.clone());
    }
    args
}

/// Driver names (`filter`, `diff`, `merge`) mentioned in `.git/config` sections or in the
/// top-level `.gitattributes` and `.git/info/attributes` (`filter=name`).
fn repository_drivers(repository: &Path, kind: &str) -> Vec<String> {
    let mut names = Vec::new();
    let section = format!("[{kind} \"");
    if let Ok(config) = std::fs::read_to_string(repository.join(".git/config")) {
        for line in config.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix(&section)
                && let Some(name) = rest.split('"').next()
            {
                names.push(name.to_string());
            }
        }
    }
    let attribute = format!("{kind}=");
    for file in [".gitattributes", ".git/info/attributes"] {
        if let Ok(text) = std::fs::read_to_string(repository.join(file)) {
            for word in text.split_whitespace() {
                if let Some(name) = word.strip_prefix(&attribute) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names.retain(|name| {
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    });
    names.sort();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn refuses_shell_syntax() {
        for line in [
            "git status; rm -rf ~",
            "git status && ls",
            "git status || ls",
            "git log | sh",
            "git status &",
            "git status\nrm x",
            "echo $(cat .env)",
            "echo `id`",
            "cat < .env",
            "git diff > /tmp/x",
            "diff <(cat a) b",
            "LD_PRELOAD=./e.so git status",
            "GIT_SSH_COMMAND=x git fetch",
            "echo $'\\x72m'",
            "n\\ix",
        ] {
            assert!(parse_command_line(line).is_err(), "{line:?} was accepted");
        }
        assert_eq!(
            parse_command_line("git diff -- 'a b.rs'").unwrap(),
            ["git", "diff", "--", "a b.rs"]
        );
    }

    #[test]
    fn environment_is_rebuilt() {
        let env = command_env(Path::new("/tmp/home"), true);
        assert!(
            env.iter()
                .all(|(name, _)| !name.ends_with("_KEY") && name != "LD_PRELOAD")
        );
        assert!(env.contains(&("HOME".into(), "/tmp/home".into())));
        assert!(env.contains(&("GIT_CONFIG_NOSYSTEM".into(), "1".into())));
        assert!(resolve_program("./x").is_none());
        assert!(resolve_program("/bin/sh").is_none());
        assert!(resolve_program("sh").is_some());
    }

    #[test]
    fn the_model_cannot_turn_external_diff_back_on() {
        let argv: Vec<String> = ["git", "diff", "--ext-diff", "--", "--ext-diff"]
            .iter()
            .map(|a| a.to_string())
            .collect();
        let args = git_args(Path::new("/nonexistent"), &argv);
        let diff = args.iter().position(|a| a == "diff").unwrap();
        assert_eq!(args[diff..], ["diff", "--no-ext-diff", "--", "--ext-diff"]);
        assert!(args.contains(&"diff.external=".to_string()));
    }
}
