//! Typed configuration errors and warnings, and the translation of YAML parser errors into them.
//!
//! Every error names the file, the line and column when known, the dotted key path, what is
//! wrong and, where we can guess, a hint ("did you mean `max_parallel_agents`?"). Callers
//! decide on [`ConfigErrorKind`], never on message text.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::{Location, MessageFormatter, UserMessageFormatter};

use super::schema;

/// What class of problem a [`ConfigError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    Io,
    /// The file has no YAML document.
    Empty,
    /// The text is not valid YAML.
    Syntax,
    /// A resource limit of the YAML parser was hit (alias bombs, absurd nesting).
    TooLarge,
    /// A key we do not know.
    UnknownKey,
    /// The same key twice in one mapping.
    DuplicateKey,
    /// A required key is missing.
    MissingKey,
    /// A value of the wrong YAML type (a string where a number belongs...).
    WrongType,
    /// A value of the right type that is not allowed (zero interval, bad glob, `;` in a
    /// shell command...).
    InvalidValue,
}

/// One problem in a workflow file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub kind: ConfigErrorKind,
    /// The file (or origin name) the text came from.
    pub path: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// 1-based column, when known.
    pub column: Option<u32>,
    /// Dotted key path of the offending value (`workflow.rollback.checkpoint_interval`),
    /// empty for the top level.
    pub key: String,
    pub message: String,
    /// A short suggestion, shown in parentheses after the message.
    pub hint: Option<String>,
}

impl ConfigError {
    pub(crate) fn new(
        kind: ConfigErrorKind,
        origin: &Path,
        location: Option<Location>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = split_location(location);
        ConfigError {
            kind,
            path: origin.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, " ({hint})")?;
        }
        Ok(())
    }
}

/// Something allowed but probably unintended (`shell_exec: unrestricted`, a log destination
/// without `{timestamp}`...). The run proceeds; renderers show these before starting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: PathBuf,
    pub line: Option<u32>,
    pub column: Option<u32>,
    pub key: String,
    pub message: String,
}

impl ConfigWarning {
    pub(crate) fn new(
        origin: &Path,
        location: Option<Location>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = split_location(location);
        ConfigWarning {
            path: origin.to_path_buf(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": warning: {}", self.message)
    }
}

fn split_location(location: Option<Location>) -> (Option<u32>, Option<u32>) {
    // Files are at most a few megabytes: lines and columns fit in u32.
    let narrow = |n: u64| u32::try_from(n).ok().filter(|n| *n > 0);
    match location {
        Some(location) => match narrow(location.line()) {
            Some(line) => (Some(line), narrow(location.column())),
            None => (None, None),
        },
        None => (None, None),
    }
}

/// Renders a dotted key path for messages: `` `workflow.logging` ``, or "the top level".
fn section_name(key: &str) -> String {
    if key.is_empty() {
        "the top level".to_owned()
    } else {
        format!("`{key}`")
    }
}

/// Translate a serde-saphyr error (with the key path serde_path_to_error tracked) into ours.
pub(crate) fn from_yaml_error(origin: &Path, key: &str, err: &serde_saphyr::Error) -> ConfigError {
    use serde_saphyr::Error as E;
    let inner = unwrap_yaml_error(err);
    let location = inner.location().or_else(|| err.location());
    let new = |kind, message: String| ConfigError::new(kind, origin, location, key, message);
    match inner {
        E::SerdeUnknownField {
            field, expected, ..
        } => {
            // The tracked path ends at the unknown key itself; report its section.
            let section = parent_key(key, field);
            let error = ConfigError::new(
                ConfigErrorKind::UnknownKey,
                origin,
                location,
                join_key(section, field),
                format!("unknown key `{field}` in {}", section_name(section)),
            );
            match unknown_key_hint(section, field, expected) {
                Some(hint) => error.with_hint(hint),
                None => error.with_hint(format!("expected one of {}", quoted_list(expected))),
            }
        }
        E::SerdeUnknownVariant {
            variant, expected, ..
        } => {
            let error = new(
                ConfigErrorKind::InvalidValue,
                format!("unknown value `{variant}` for {}", section_name(key)),
            );
            match did_you_mean(variant, expected.iter().copied()) {
                Some(best) => error.with_hint(format!("did you mean `{best}`?")),
                None => error.with_hint(format!("expected one of {}", quoted_list(expected))),
            }
        }
        E::SerdeMissingField { field, .. } => {
            let error = ConfigError::new(
                ConfigErrorKind::MissingKey,
                origin,
                location,
                join_key(key, field),
                format!("missing key `{field}` in {}", section_name(key)),
            );
            if key.is_empty() && *field == "workflow" {
                error.with_hint(
                    "a workflow file starts with `workflow:`; run `fanout init` for a starter file",
                )
            } else {
                error
            }
        }
        E::SerdeInvalidType {
            unexpected,
            expected,
            ..
        } => {
            if key.is_empty() {
                new(
                    ConfigErrorKind::WrongType,
                    format!(
                        "the top level must be a mapping with a `workflow:` key, found {unexpected}"
                    ),
                )
            } else {
                new(
                    ConfigErrorKind::WrongType,
                    format!(
                        "wrong type for {}: expected {}, found {unexpected}",
                        section_name(key),
                        friendly_expected(expected)
                    ),
                )
            }
        }
        E::SerdeInvalidValue {
            unexpected,
            expected,
            ..
        } => new(
            ConfigErrorKind::InvalidValue,
            format!(
                "invalid value for {}: expected {}, found {unexpected}",
                section_name(key),
                friendly_expected(expected)
            ),
        ),
        E::InvalidScalar { ty, .. } => new(
            ConfigErrorKind::WrongType,
            format!(
                "wrong type for {}: expected {}",
                section_name(key),
                friendly_expected(ty)
            ),
        ),
        E::NullIntoString { .. } => new(
            ConfigErrorKind::WrongType,
            format!(
                "wrong type for {}: expected a string, found nothing",
                section_name(key)
            ),
        ),
        E::DuplicateMappingKey { key: duplicate, .. } => {
            let name = duplicate.as_deref().unwrap_or("?");
            // The tracked path ends at the section or, for some shapes, at the key itself.
            let section = parent_key(key, name);
            ConfigError::new(
                ConfigErrorKind::DuplicateKey,
                origin,
                location,
                join_key(section, name),
                format!("duplicate key `{name}` in {}", section_name(section)),
            )
            .with_hint("each key may appear once; remove one of them")
        }
        E::Eof { .. } => new(ConfigErrorKind::Empty, "the file is empty".to_owned())
            .with_hint("run `fanout init` for a starter file"),
        E::Budget { breach, .. } => new(
            ConfigErrorKind::TooLarge,
            format!("the YAML is too large or too deeply aliased to load safely ({breach:?})"),
        )
        .with_hint("remove the anchors and aliases that expand into huge documents"),
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => new(
            ConfigErrorKind::TooLarge,
            "the YAML aliases expand into too much data to load safely".to_owned(),
        )
        .with_hint("remove the anchors and aliases that expand into huge documents"),
        E::Message { msg, .. } if msg.starts_with(CUSTOM_PREFIX) => new(
            ConfigErrorKind::InvalidValue,
            format!("{} {}", section_name(key), &msg[CUSTOM_PREFIX.len()..]),
        ),
        E::Unexpected { expected, .. } if expected.contains("mapping") => {
            if key.is_empty() {
                new(
                    ConfigErrorKind::WrongType,
                    "the top level must be a mapping with a `workflow:` key".to_owned(),
                )
                .with_hint(
                    "a workflow file starts with `workflow:`; run `fanout init` for a starter file",
                )
            } else {
                new(
                    ConfigErrorKind::WrongType,
                    format!("wrong type for {}: expected a mapping", section_name(key)),
                )
            }
        }
        E::Unexpected { expected, .. } if expected.contains("sequence") => new(
            ConfigErrorKind::WrongType,
            format!("wrong type for {}: expected a list", section_name(key)),
        ),
        E::IOError { cause } => new(ConfigErrorKind::Io, format!("cannot read: {cause}")),
        E::InvalidUtf8Input => new(
            ConfigErrorKind::Syntax,
            "the file is not valid UTF-8".to_owned(),
        ),
        other => {
            // Everything else is a YAML syntax problem: keep the parser's wording (without
            // its location suffix; ours is in front).
            let message = UserMessageFormatter.format_message(other);
            let error = new(
                ConfigErrorKind::Syntax,
                format!("invalid YAML: {}", message.escape_debug()),
            );
            if message.contains("tab") {
                error.with_hint("indent with spaces, not tabs")
            } else if message.contains("quoted scalar") {
                error.with_hint("is a quote left open on this line or the one before?")
            } else {
                error
            }
        }
    }
}

/// Prefix of the messages our own `Deserialize` impls raise through `de::Error::custom`, so
/// they are told apart from the parser's free-form messages.
pub(crate) const CUSTOM_PREFIX: &str = "\u{1}fanout:";

fn unwrap_yaml_error(err: &serde_saphyr::Error) -> &serde_saphyr::Error {
    let mut current = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. } = current {
        current = error.without_snippet();
    }
    current
}

/// `workflow.max_paralel_agents` with field `max_paralel_agents` → `workflow`.
fn parent_key<'a>(key: &'a str, field: &str) -> &'a str {
    match key.strip_suffix(field) {
        Some("") => "",
        Some(rest) => rest.strip_suffix('.').unwrap_or(key),
        None => key,
    }
}

pub(crate) fn join_key(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn friendly_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number".to_owned(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_owned(),
        "f32" | "f64" => "a number".to_owned(),
        "bool" => "`true` or `false`".to_owned(),
        other if other.starts_with("struct ") || other == "a map" => "a mapping".to_owned(),
        other => other.to_owned(),
    }
}

/// The hint for an unknown key: a close spelling among the section's keys, or the section
/// where that key belongs when it sits at the wrong level.
fn unknown_key_hint(section: &str, field: &str, expected: &[&str]) -> Option<String> {
    if let Some(best) = did_you_mean(field, expected.iter().copied()) {
        return Some(format!("did you mean `{best}`?"));
    }
    let home = schema::sections_with_key(field)
        .into_iter()
        .find(|home| home != section)?;
    Some(format!("`{field}` belongs under `{home}`"))
}

/// The closest candidate to `input`, if any is close enough to be a plausible typo.
pub(crate) fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input_lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|candidate| {
            let distance = strsim::damerau_levenshtein(&input_lower, candidate);
            let similarity = strsim::jaro_winkler(&input_lower, candidate);
            (candidate, distance, similarity)
        })
        .filter(|(candidate, distance, similarity)| {
            let allowed = (candidate.len().max(input.len()) / 3).max(1);
            *distance <= allowed || *similarity >= 0.9
        })
        .min_by(|a, b| a.1.cmp(&b.1).then(b.2.total_cmp(&a.2)))
        .map(|(candidate, _, _)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_spellings_only() {
        let fields = ["name", "max_parallel_agents", "mode_routing"];
        assert_eq!(
            did_you_mean("max_paralel_agents", fields),
            Some("max_parallel_agents")
        );
        assert_eq!(did_you_mean("mode_routes", fields), Some("mode_routing"));
        assert_eq!(did_you_mean("colour", fields), None);
        assert_eq!(
            did_you_mean("defualt", ["fast", "default"]),
            Some("default")
        );
    }

    #[test]
    fn parent_key_strips_the_field() {
        assert_eq!(
            parent_key("workflow.max_paralel", "max_paralel"),
            "workflow"
        );
        assert_eq!(parent_key("nme", "nme"), "");
        assert_eq!(parent_key("workflow", "other"), "workflow");
    }
}
