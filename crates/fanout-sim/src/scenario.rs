//! Scenario scripts: ordered rules that decide answers, loaded from YAML.
//!
//! ```yaml
//! rules:
//!   - name: weather            # optional, shown in the exchange log
//!     match:                   # every given condition must hold; all are optional
//!       endpoint: messages     # messages | chat_completions | count_tokens
//!       model: "claude-.*"     # regex, anchored at both ends (so a plain name is exact)
//!       tool: get_weather      # the forced tool (tool_choice)
//!       system: "planner"      # regex searched in the system prompt
//!       last_user: "weather in (?P<city>\\w+)"   # regex searched in the last user turn
//!       turn: 1                # assistant turns so far + 1
//!       attempt: 0             # x-stainless-retry-count (0 on the first try)
//!     times: 1                 # the rule fires at most this often
//!     text: "It is sunny in ${city}."
//!     tool_use: {name: get_weather, input: {city: "${1}"}}   # or a list of them
//!     error: {status: 429, type: rate_limit_error, message: "slow down", headers: {retry-after: "1"}}
//!     delay_ms: 250
//!     malformed: truncated     # truncated | garbage | cut_stream
//! ```
//!
//! The first rule whose conditions hold (and whose `times` is not used up) wins. `${1}`,
//! `${name}` and `${0}` in `text` and in `tool_use` inputs are replaced with captures of the
//! `model`, `system` and `last_user` regexes (in that order, later ones winning for the same
//! name); an unknown `${...}` is left as it is. `error` excludes `text` and `tool_use`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::SimError;
use crate::model::{Answer, Block, Endpoint, Request};

/// A loaded, validated scenario script.
#[derive(Debug, Clone)]
pub struct Scenario {
    origin: String,
    rules: Vec<Rule>,
}

/// How to break an answer on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Malformed {
    /// A JSON body cut short (a stream is cut, too).
    Truncated,
    /// A body that is not JSON (in a stream: one event whose data is not JSON).
    Garbage,
    /// The stream stops mid-event and the connection closes (non-streaming: as `truncated`).
    CutStream,
}

#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub(crate) name: Option<String>,
    endpoint: Option<Endpoint>,
    model: Option<Regex>,
    tool: Option<String>,
    system: Option<Regex>,
    last_user: Option<Regex>,
    turn: Option<u64>,
    attempt: Option<u64>,
    times: Option<u64>,
    pub(crate) action: Action,
}

#[derive(Debug, Clone)]
pub(crate) struct Action {
    text: Option<String>,
    tool_use: Vec<(String, Value)>,
    pub(crate) error: Option<ErrorAction>,
    pub(crate) delay: Duration,
    pub(crate) malformed: Option<Malformed>,
}

#[derive(Debug, Clone)]
pub(crate) struct ErrorAction {
    pub(crate) status: u16,
    pub(crate) kind: String,
    pub(crate) message: String,
    pub(crate) code: Option<String>,
    pub(crate) headers: Vec<(String, String)>,
}

/// A rule that fired, with the captures of its regexes.
#[derive(Debug)]
pub(crate) struct Fired<'a> {
    pub(crate) index: usize,
    pub(crate) rule: &'a Rule,
    captures: HashMap<String, String>,
}

impl Fired<'_> {
    /// The scripted answer, or `None` when the rule only sets a delay or a fault.
    pub(crate) fn answer(&self) -> Option<Answer> {
        let action = &self.rule.action;
        if action.text.is_none() && action.tool_use.is_empty() {
            return None;
        }
        let mut blocks = Vec::new();
        if let Some(text) = &action.text {
            blocks.push(Block::Text(substitute(text, &self.captures)));
        }
        for (name, input) in &action.tool_use {
            blocks.push(Block::ToolUse {
                name: substitute(name, &self.captures),
                input: substitute_value(input, &self.captures),
            });
        }
        Some(Answer {
            blocks,
            hit_max_tokens: false,
        })
    }

    pub(crate) fn error_message(&self) -> Option<String> {
        self.rule
            .action
            .error
            .as_ref()
            .map(|e| substitute(&e.message, &self.captures))
    }
}

/// Per-rule fire counts (kept by the server, so a `Scenario` stays a plain value).
#[derive(Debug)]
pub(crate) struct Counters(Vec<AtomicU64>);

impl Scenario {
    /// Parses and validates a scenario; `origin` (a file name) is used in error messages.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Scenario, SimError> {
        let file: FileScenario = serde_saphyr::from_str(text).map_err(|err| {
            let (line, column) = err
                .location()
                .map_or((0, 0), |loc| (loc.line(), loc.column()));
            SimError::Scenario {
                origin: origin.to_string(),
                line,
                column,
                message: err.without_snippet().to_string(),
            }
        })?;
        let mut rules = Vec::new();
        for spanned in file.rules {
            let at = |loc: serde_saphyr::Location, message: String| SimError::Scenario {
                origin: origin.to_string(),
                line: loc.line(),
                column: loc.column(),
                message,
            };
            let rule_at = spanned.referenced;
            let raw = spanned.value;
            let regex = |field: Option<Spanned<String>>, anchored: bool| match field {
                None => Ok(None),
                Some(s) => {
                    let pattern = if anchored {
                        format!("^(?:{})$", s.value)
                    } else {
                        s.value.clone()
                    };
                    Regex::new(&pattern)
                        .map(Some)
                        .map_err(|e| at(s.referenced, format!("invalid regex `{}`: {e}", s.value)))
                }
            };
            let when = raw.when.unwrap_or_default();
            let error = match raw.error {
                None => None,
                Some(e) => {
                    if !(400..=599).contains(&e.status) {
                        return Err(at(
                            rule_at,
                            format!("error.status must be between 400 and 599, got {}", e.status),
                        ));
                    }
                    let mut headers: Vec<(String, String)> = Vec::new();
                    for (key, value) in e.headers.unwrap_or_default() {
                        let value = match value {
                            Value::String(s) => s,
                            other => other.to_string(),
                        };
                        let key = key.to_ascii_lowercase();
                        if axum::http::HeaderName::from_bytes(key.as_bytes()).is_err()
                            || axum::http::HeaderValue::from_str(&value).is_err()
                        {
                            return Err(at(
                                rule_at,
                                format!("error.headers: invalid header `{key}: {value}`"),
                            ));
                        }
                        headers.push((key, value));
                    }
                    Some(ErrorAction {
                        status: e.status,
                        kind: e.kind.unwrap_or_else(|| default_kind(e.status).to_string()),
                        message: e.message.unwrap_or_else(|| "Simulated error".to_string()),
                        code: e.code,
                        headers,
                    })
                }
            };
            let tool_use: Vec<(String, Value)> = match raw.tool_use {
                None => Vec::new(),
                Some(OneOrMany::One(t)) => vec![(t.name, t.input)],
                Some(OneOrMany::Many(list)) => {
                    list.into_iter().map(|t| (t.name, t.input)).collect()
                }
            };
            for (name, input) in &tool_use {
                if !input.is_object() {
                    return Err(at(
                        rule_at,
                        format!("tool_use `{name}`: input must be a mapping"),
                    ));
                }
            }
            if error.is_some() && (raw.text.is_some() || !tool_use.is_empty()) {
                return Err(at(
                    rule_at,
                    "a rule with `error` cannot also have `text` or `tool_use`".to_string(),
                ));
            }
            if error.is_none()
                && raw.text.is_none()
                && tool_use.is_empty()
                && raw.delay_ms.is_none()
                && raw.malformed.is_none()
            {
                return Err(at(
                    rule_at,
                    "rule has no action (text, tool_use, error, delay_ms or malformed)".to_string(),
                ));
            }
            rules.push(Rule {
                name: raw.name,
                endpoint: when.endpoint,
                model: regex(when.model, true)?,
                tool: when.tool,
                system: regex(when.system, false)?,
                last_user: regex(when.last_user, false)?,
                turn: when.turn,
                attempt: when.attempt,
                times: raw.times,
                action: Action {
                    text: raw.text,
                    tool_use,
                    error,
                    delay: Duration::from_millis(raw.delay_ms.unwrap_or(0)),
                    malformed: raw.malformed,
                },
            });
        }
        Ok(Scenario {
            origin: origin.to_string(),
            rules,
        })
    }

    /// Reads and parses a scenario file.
    pub fn from_file(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|source| SimError::ScenarioRead {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::from_yaml(&text, &path.display().to_string())
    }

    /// Where the scenario came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn counters(&self) -> Counters {
        Counters(self.rules.iter().map(|_| AtomicU64::new(0)).collect())
    }

    /// The first rule that matches and still has uses left; counts the use.
    pub(crate) fn fire<'a>(
        &'a self,
        counters: &Counters,
        endpoint: Endpoint,
        request: &Request,
        attempt: u64,
    ) -> Option<Fired<'a>> {
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(captures) = rule.matches(endpoint, request, attempt) else {
                continue;
            };
            if let Some(times) = rule.times {
                let counter = counters.0.get(index)?;
                let took = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < times).then_some(n + 1)
                });
                if took.is_err() {
                    continue;
                }
            }
            return Some(Fired {
                index,
                rule,
                captures,
            });
        }
        None
    }
}

impl Rule {
    fn matches(
        &self,
        endpoint: Endpoint,
        request: &Request,
        attempt: u64,
    ) -> Option<HashMap<String, String>> {
        if self.endpoint.is_some_and(|e| e != endpoint)
            || self.turn.is_some_and(|t| t != request.turn)
            || self.attempt.is_some_and(|a| a != attempt)
        {
            return None;
        }
        if let Some(tool) = &self.tool
            && request.forced_tool.as_deref() != Some(tool.as_str())
        {
            return None;
        }
        let mut captures = HashMap::new();
        for (regex, text) in [
            (&self.model, request.model.as_str()),
            (&self.system, request.system.as_str()),
            (&self.last_user, request.last_user.as_str()),
        ] {
            let Some(regex) = regex else { continue };
            let found = regex.captures(text)?;
            for (i, group) in found.iter().enumerate() {
                if let Some(group) = group {
                    captures.insert(i.to_string(), group.as_str().to_string());
                }
            }
            for name in regex.capture_names().flatten() {
                if let Some(group) = found.name(name) {
                    captures.insert(name.to_string(), group.as_str().to_string());
                }
            }
        }
        Some(captures)
    }
}

fn default_kind(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        409 => "conflict_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ if status >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// Replaces `${key}` with captures; unknown keys stay as written.
fn substitute(text: &str, captures: &HashMap<String, String>) -> String {
    if !text.contains("${") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end) => {
                let key = &after[..end];
                match captures.get(key) {
                    Some(value) => out.push_str(value),
                    None => {
                        out.push_str("${");
                        out.push_str(key);
                        out.push('}');
                    }
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn substitute_value(value: &Value, captures: &HashMap<String, String>) -> Value {
    match value {
        Value::String(s) => Value::String(substitute(s, captures)),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| substitute_value(v, captures))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (substitute(k, captures), substitute_value(v, captures)))
                .collect(),
        ),
        other => other.clone(),
    }
}

// ---- file format -------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileScenario {
    #[serde(default)]
    rules: Vec<Spanned<FileRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "match")]
    when: Option<FileMatch>,
    #[serde(default)]
    times: Option<u64>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    tool_use: Option<OneOrMany<FileToolUse>>,
    #[serde(default)]
    error: Option<FileError>,
    #[serde(default)]
    delay_ms: Option<u64>,
    #[serde(default)]
    malformed: Option<Malformed>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMatch {
    #[serde(default)]
    endpoint: Option<Endpoint>,
    #[serde(default)]
    model: Option<Spanned<String>>,
    #[serde(default)]
    tool: Option<String>,
    #[serde(default)]
    system: Option<Spanned<String>>,
    #[serde(default)]
    last_user: Option<Spanned<String>>,
    #[serde(default)]
    turn: Option<u64>,
    #[serde(default)]
    attempt: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToolUse {
    name: String,
    #[serde(default = "empty_object")]
    input: Value,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileError {
    status: u16,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    headers: Option<serde_json::Map<String, Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitution() {
        let mut caps = HashMap::new();
        caps.insert("1".to_string(), "Paris".to_string());
        caps.insert("city".to_string(), "Rome".to_string());
        assert_eq!(
            substitute("a ${1} b ${city} ${nope} ${", &caps),
            "a Paris b Rome ${nope} ${"
        );
    }
}
