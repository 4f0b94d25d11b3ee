//! Shell allowlist entries (`git status`, `npm test`) parsed into argv prefixes.
//!
//! Commands run without a shell, so an entry is a plain word list: shell syntax (`;`, `&`,
//! `|`, `$`, backticks, redirections, subshells) and environment prefixes (`FOO=1 cmd`) are
//! rejected rather than silently taken literally. Single or double quotes may group a word
//! containing spaces; nothing is expanded inside them.

use std::fmt;

/// One allowlisted command: the words a command line must start with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand {
    argv: Vec<String>,
}

/// Why an entry is not a plain command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellCommandError {
    Empty,
    ShellSyntax(char),
    EnvPrefix(String),
    UnclosedQuote,
}

impl fmt::Display for ShellCommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShellCommandError::Empty => write!(f, "is empty"),
            ShellCommandError::ShellSyntax(c) => {
                write!(f, "contains shell syntax `{}`", c.escape_debug())
            }
            ShellCommandError::EnvPrefix(word) => {
                write!(f, "starts with an environment assignment `{word}`")
            }
            ShellCommandError::UnclosedQuote => write!(f, "has an unclosed quote"),
        }
    }
}

impl ShellCommandError {
    /// A short suggestion for the user.
    pub fn hint(&self) -> &'static str {
        match self {
            ShellCommandError::Empty => "write the command, e.g. `npm test`",
            ShellCommandError::ShellSyntax(_) => {
                "commands run without a shell; list each command as its own entry"
            }
            ShellCommandError::EnvPrefix(_) => {
                "commands run with a scrubbed environment; environment prefixes are not supported"
            }
            ShellCommandError::UnclosedQuote => "close the quote",
        }
    }
}

/// Characters that mean something to a shell and nothing to `execve`.
const SHELL_SYNTAX: &[char] = &[
    ';', '&', '|', '$', '`', '<', '>', '(', ')', '\\', '\n', '\r',
];

/// Programs that run arbitrary code from their arguments: allowlisting them alone allows
/// everything.
const INTERPRETERS: &[&str] = &[
    "sh", "bash", "zsh", "fish", "dash", "env", "sudo", "xargs", "eval", "exec", "python",
    "python3", "node", "perl", "ruby",
];

impl ShellCommand {
    /// Parse one allowlist entry.
    pub fn parse(text: &str) -> Result<ShellCommand, ShellCommandError> {
        if let Some(c) = text.chars().find(|c| SHELL_SYNTAX.contains(c)) {
            return Err(ShellCommandError::ShellSyntax(c));
        }
        let argv = split_words(text)?;
        let Some(first) = argv.first() else {
            return Err(ShellCommandError::Empty);
        };
        if is_env_assignment(first) {
            return Err(ShellCommandError::EnvPrefix(first.clone()));
        }
        Ok(ShellCommand { argv })
    }

    /// The words of the command.
    pub fn argv(&self) -> &[String] {
        &self.argv
    }

    /// The program (first word).
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or_default()
    }

    /// True when `argv` starts with this entry's words: `npm test` permits
    /// `npm test -- --watch=false` but not `npm install`.
    pub fn permits<S: AsRef<str>>(&self, argv: &[S]) -> bool {
        argv.len() >= self.argv.len()
            && self
                .argv
                .iter()
                .zip(argv)
                .all(|(allowed, given)| allowed == given.as_ref())
    }

    /// True when the entry is an interpreter with no further words (`bash`, `python`), which
    /// would permit any command at all.
    pub fn is_open_ended(&self) -> bool {
        self.argv.len() == 1 && INTERPRETERS.contains(&self.program())
            || (self.argv.len() == 2
                && INTERPRETERS.contains(&self.program())
                && self.argv[1] == "-c")
    }
}

impl fmt::Display for ShellCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, word) in self.argv.iter().enumerate() {
            if index > 0 {
                f.write_str(" ")?;
            }
            if word.is_empty() || word.contains(char::is_whitespace) {
                write!(f, "'{word}'")?;
            } else {
                f.write_str(word)?;
            }
        }
        Ok(())
    }
}

fn is_env_assignment(word: &str) -> bool {
    let Some((name, _)) = word.split_once('=') else {
        return false;
    };
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn split_words(text: &str) -> Result<Vec<String>, ShellCommandError> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => current.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            None => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(ShellCommandError::UnclosedQuote);
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_plain_commands_and_quotes() {
        let command = ShellCommand::parse("  git   log --format='%h %s' ").unwrap();
        assert_eq!(command.argv(), ["git", "log", "--format=%h %s"]);
        assert_eq!(command.to_string(), "git log '--format=%h %s'");
    }

    #[test]
    fn rejects_shell_syntax_and_env_prefixes() {
        for (text, expected) in [
            ("npm test; rm -rf /", ShellCommandError::ShellSyntax(';')),
            ("echo $(whoami)", ShellCommandError::ShellSyntax('$')),
            ("cat a > b", ShellCommandError::ShellSyntax('>')),
            ("git status && ls", ShellCommandError::ShellSyntax('&')),
            ("CI=1 npm test", ShellCommandError::EnvPrefix("CI=1".into())),
            ("   ", ShellCommandError::Empty),
            ("echo 'open", ShellCommandError::UnclosedQuote),
        ] {
            assert_eq!(ShellCommand::parse(text), Err(expected), "{text}");
        }
        // `=` later in the line is an ordinary argument.
        assert!(ShellCommand::parse("cargo test --features=x").is_ok());
    }

    #[test]
    fn permits_by_prefix() {
        let command = ShellCommand::parse("npm test").unwrap();
        assert!(command.permits(&["npm", "test", "--", "--watch=false"]));
        assert!(command.permits(&["npm", "test"]));
        assert!(!command.permits(&["npm", "install"]));
        assert!(!command.permits(&["npm"]));
        assert!(ShellCommand::parse("bash").unwrap().is_open_ended());
        assert!(ShellCommand::parse("sh -c").unwrap().is_open_ended());
        assert!(!ShellCommand::parse("git status").unwrap().is_open_ended());
    }
}
