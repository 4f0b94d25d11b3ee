//! From text to a validated [`Config`]: parse with serde-saphyr (tracking the key path of
//! any error), then apply defaults and check every value, pointing errors at the value's
//! line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{GlobBuilder, GlobSetBuilder};
use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

use super::error::{ConfigError, ConfigErrorKind, ConfigWarning, did_you_mean, from_yaml_error};
use super::raw::{self, RawFile};
use super::shell::ShellCommand;
use super::{
    AgentBudget, AgentPermissions, BUILTIN_PROTECTED_PATHS, Budgets, Config,
    DEFAULT_SENSITIVE_PATHS, ExternalApi, FileAccess, GlobList, LogLevel, Logging, Mode, ModelSpec,
    Models, ORCHESTRATOR_ROLE, OnFailure, PathRules, Provider, RateLimits, RetryBudgetSettings,
    Rollback, RunBudget, SandboxSetting, ShellExec, TIMESTAMP_PLACEHOLDER, Verify,
};

pub(crate) const DEFAULT_MAX_PARALLEL_AGENTS: u32 = 10;
pub(crate) const MAX_PARALLEL_AGENTS_LIMIT: i64 = 100_000;
pub(crate) const DEFAULT_CHECKPOINT_INTERVAL: u32 = 10;
pub(crate) const DEFAULT_DESTRUCTIVE_CHECKPOINT_INTERVAL: u32 = 1;
pub(crate) const DEFAULT_LOG_DESTINATION: &str = ".fanout/logs/workflow-run-{timestamp}.json";
/// The shell allowlist when the file gives none.
pub(crate) const DEFAULT_SHELL_ALLOWLIST: &[&str] = &["git status", "npm test"];
pub(crate) const DEFAULT_AGENT_MAX_TURNS: u64 = 50;
pub(crate) const DEFAULT_AGENT_MAX_TOKENS: u64 = 500_000;
pub(crate) const DEFAULT_AGENT_MAX_WALL_TIME: Duration = Duration::from_secs(15 * 60);

pub(crate) fn default_models() -> Models {
    Models {
        default: ModelSpec {
            provider: Provider::Anthropic,
            model: "claude-sonnet-4-5".to_owned(),
            input_price: 3.0,
            output_price: 15.0,
            cached_input_price: Some(0.30),
            cache_write_price: Some(3.75),
        },
        fast: ModelSpec {
            provider: Provider::Anthropic,
            model: "claude-haiku-4-5".to_owned(),
            input_price: 1.0,
            output_price: 5.0,
            cached_input_price: Some(0.10),
            cache_write_price: Some(1.25),
        },
    }
}

pub(crate) fn load(text: &str, origin: &Path) -> Result<Config, ConfigError> {
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        let mut error = ConfigError::new(
            ConfigErrorKind::Empty,
            origin,
            None,
            "",
            "the file is empty",
        )
        .with_hint("run `fanout init` for a starter file");
        // An empty file is wrong from its first character; editors jump there.
        error.line = Some(1);
        error.column = Some(1);
        return Err(error);
    }
    let raw = parse(text, origin)?;
    Resolver {
        origin,
        warnings: Vec::new(),
    }
    .resolve(raw)
}

fn parse(text: &str, origin: &Path) -> Result<RawFile, ConfigError> {
    let options = serde_saphyr::options! {
        with_snippet: false,
        budget: serde_saphyr::budget! {
            max_events: 200_000,
            max_nodes: 100_000,
            max_depth: 32,
            max_aliases: 1_000,
            max_anchors: 1_000,
            max_total_scalar_bytes: 8 * 1024 * 1024,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: 50_000,
        },
    };
    let mut key_path = String::new();
    let result = serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        match RawFile::deserialize(tracked) {
            Ok(raw) => Ok(raw),
            Err(err) => {
                key_path = clean_path(&track.path());
                Err(err)
            }
        }
    });
    result.map_err(|err| from_yaml_error(origin, &key_path, &err))
}

/// `serde_path_to_error` sees through `Spanned<T>`'s internal map; drop those segments.
fn clean_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        let part = match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => key.clone(),
            Segment::Seq { index } => format!("[{index}]"),
            Segment::Unknown => continue,
        };
        if part == "value" || part.starts_with("__serde_saphyr") {
            // `value` is also the name of Spanned's inner field; no workflow key uses it.
            continue;
        }
        if part.starts_with('[') || out.is_empty() {
            out.push_str(&part);
        } else {
            out.push('.');
            out.push_str(&part);
        }
    }
    out
}

struct Resolver<'a> {
    origin: &'a Path,
    warnings: Vec<ConfigWarning>,
}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Resolver<'_> {
    fn invalid(&self, location: Location, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            ConfigErrorKind::InvalidValue,
            self.origin,
            Some(location),
            key,
            message,
        )
    }

    fn warn(&mut self, location: Location, key: &str, message: impl Into<String>) {
        self.warnings.push(ConfigWarning::new(
            self.origin,
            Some(location),
            key,
            message,
        ));
    }

    fn resolve(mut self, raw: RawFile) -> Result<Config> {
        let workflow = raw.workflow;
        let name = self.name(&workflow.name)?;
        let task = match workflow.task {
            Some(task) if task.value.trim().is_empty() => {
                return Err(self
                    .invalid(task.referenced, "workflow.task", "`workflow.task` is empty")
                    .with_hint("describe the task, or leave the key out and pass `--task`"));
            }
            Some(task) => Some(task.value),
            None => None,
        };
        let repository = match workflow.repository {
            Some(repository) if repository.value.trim().is_empty() => {
                return Err(self
                    .invalid(
                        repository.referenced,
                        "workflow.repository",
                        "`workflow.repository` is empty",
                    )
                    .with_hint("use `.` for the current directory"));
            }
            Some(repository) => PathBuf::from(repository.value),
            None => PathBuf::from("."),
        };
        let max_parallel_agents = match workflow.max_parallel_agents {
            Some(value) => {
                if !(1..=MAX_PARALLEL_AGENTS_LIMIT).contains(&value.value) {
                    return Err(self.invalid(
                        value.referenced,
                        "workflow.max_parallel_agents",
                        format!(
                            "`workflow.max_parallel_agents` must be between 1 and {MAX_PARALLEL_AGENTS_LIMIT}, found {}",
                            value.value
                        ),
                    ));
                }
                u32::try_from(value.value).unwrap_or(u32::MAX)
            }
            None => DEFAULT_MAX_PARALLEL_AGENTS,
        };
        let mut mode_routing: BTreeMap<String, Mode> = workflow
            .mode_routing
            .unwrap_or_default()
            .into_iter()
            .map(|(role, mode)| (role.0, mode.value))
            .collect();
        mode_routing
            .entry(ORCHESTRATOR_ROLE.to_owned())
            .or_insert(Mode::Default);

        let models = self.models(workflow.models)?;
        let agent_permissions = self.permissions(workflow.agent_permissions);
        let explicit_allowlist = workflow.shell_allowlist.is_some();
        let shell_allowlist = self.shell_allowlist(workflow.shell_allowlist)?;
        if agent_permissions.shell_exec == ShellExec::Deny
            && explicit_allowlist
            && let Some(first) = shell_allowlist.first()
        {
            self.warnings.push(ConfigWarning::new(
                self.origin,
                None,
                "workflow.shell_allowlist",
                format!(
                    "`shell_exec: deny` disables the shell; the allowlist (`{first}`...) is ignored"
                ),
            ));
        }
        let paths = self.paths(workflow.paths)?;
        let sensitive_paths = match workflow.sensitive_paths {
            Some(patterns) => self.glob_list("workflow.sensitive_paths", &patterns)?,
            None => builtin_globs(DEFAULT_SENSITIVE_PATHS)?,
        };
        let rate_limits = self.rate_limits(workflow.rate_limits)?;
        let budgets = self.budgets(workflow.budgets)?;
        let logging = self.logging(workflow.logging)?;
        let rollback = self.rollback(workflow.rollback)?;
        let verify = match workflow.verify {
            Some(raw) => Verify {
                test_command: match raw.test_command {
                    Some(command) => {
                        Some(self.shell_command("workflow.verify.test_command", &command)?)
                    }
                    None => None,
                },
                baseline: raw.baseline.unwrap_or(false),
            },
            None => Verify::default(),
        };
        let output_schema = match workflow.output_schema {
            Some(schema) if !schema.value.is_object() => {
                return Err(ConfigError::new(
                    ConfigErrorKind::WrongType,
                    self.origin,
                    Some(schema.referenced),
                    "workflow.output_schema",
                    "`workflow.output_schema` must be a JSON Schema object (a mapping)",
                ));
            }
            Some(schema) => Some(schema.value),
            None => None,
        };
        let items = match workflow.items {
            Some(items) => Some(super::items::resolve(self.origin, items)?),
            None => None,
        };

        self.warnings
            .sort_by_key(|warning| (warning.line.is_none(), warning.line, warning.column));
        Ok(Config {
            origin: self.origin.to_path_buf(),
            name,
            task,
            repository,
            max_parallel_agents,
            mode_routing,
            models,
            agent_permissions,
            shell_allowlist,
            paths,
            sensitive_paths,
            rate_limits,
            budgets,
            logging,
            rollback,
            verify,
            output_schema,
            prompt_caching: workflow.prompt_caching.unwrap_or(true),
            items,
            warnings: self.warnings,
        })
    }

    fn name(&self, name: &Spanned<String>) -> Result<String> {
        let value = name.value.trim();
        if value.is_empty() {
            return Err(self
                .invalid(name.referenced, "workflow.name", "`workflow.name` is empty")
                .with_hint("name the workflow, e.g. `auth-refactor`"));
        }
        if value
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
        {
            return Err(self.invalid(
                name.referenced,
                "workflow.name",
                format!(
                    "`workflow.name` `{}` contains a path separator or control character",
                    value.escape_debug()
                ),
            ));
        }
        Ok(value.to_owned())
    }

    fn models(&self, raw: Option<raw::RawModels>) -> Result<Models> {
        let mut models = default_models();
        let Some(raw) = raw else {
            return Ok(models);
        };
        if let Some(model) = raw.default {
            models.default = self.model("workflow.models.default", model)?;
        }
        if let Some(model) = raw.fast {
            models.fast = self.model("workflow.models.fast", model)?;
        }
        Ok(models)
    }

    fn model(&self, key: &str, raw: raw::RawModel) -> Result<ModelSpec> {
        if raw.model.value.trim().is_empty() {
            return Err(self.invalid(
                raw.model.referenced,
                &format!("{key}.model"),
                format!("`{key}.model` is empty"),
            ));
        }
        let price = raw.price_per_million_tokens;
        let price_key = format!("{key}.price_per_million_tokens");
        let input = self.price(&format!("{price_key}.input"), &price.input)?;
        let output = self.price(&format!("{price_key}.output"), &price.output)?;
        let cached_input = match &price.cached_input {
            Some(cached) => Some(self.price(&format!("{price_key}.cached_input"), cached)?),
            None => None,
        };
        let cache_write = match &price.cache_write {
            Some(write) => Some(self.price(&format!("{price_key}.cache_write"), write)?),
            None => None,
        };
        Ok(ModelSpec {
            provider: raw.provider.unwrap_or(Provider::Anthropic),
            model: raw.model.value.trim().to_owned(),
            input_price: input,
            output_price: output,
            cached_input_price: cached_input,
            cache_write_price: cache_write,
        })
    }

    fn price(&self, key: &str, value: &Spanned<f64>) -> Result<f64> {
        if !value.value.is_finite() || value.value < 0.0 {
            return Err(self
                .invalid(
                    value.referenced,
                    key,
                    format!(
                        "`{key}` must be a price of 0 or more, found {}",
                        value.value
                    ),
                )
                .with_hint("prices are US dollars per million tokens"));
        }
        Ok(value.value)
    }

    fn permissions(&mut self, raw: Option<raw::RawPermissions>) -> AgentPermissions {
        let mut permissions = AgentPermissions {
            file_access: FileAccess::Scoped,
            external_api: ExternalApi::Deny,
            shell_exec: ShellExec::Restricted,
            sandbox: SandboxSetting::Enforce,
        };
        let Some(raw) = raw else {
            return permissions;
        };
        if let Some(file_access) = raw.file_access {
            permissions.file_access = file_access;
        }
        if let Some(external_api) = raw.external_api {
            permissions.external_api = external_api.value;
        }
        if let Some(shell_exec) = raw.shell_exec {
            permissions.shell_exec = shell_exec.value;
            if shell_exec.value == ShellExec::Unrestricted {
                self.warn(
                    shell_exec.referenced,
                    "workflow.agent_permissions.shell_exec",
                    "`shell_exec: unrestricted` lets every agent run any command; prefer `restricted` with a `shell_allowlist`",
                );
            }
        }
        if let Some(sandbox) = raw.sandbox {
            permissions.sandbox = sandbox.value;
            if sandbox.value == SandboxSetting::BestEffort {
                self.warn(
                    sandbox.referenced,
                    "workflow.agent_permissions.sandbox",
                    "`sandbox: best_effort` runs agent commands even where the kernel cannot enforce every rule; remove it to fail closed",
                );
            }
        }
        permissions
    }

    fn shell_command(&self, key: &str, text: &Spanned<String>) -> Result<ShellCommand> {
        ShellCommand::parse(&text.value).map_err(|err| {
            self.invalid(
                text.referenced,
                key,
                format!("`{key}` entry `{}` {err}", text.value.escape_debug()),
            )
            .with_hint(err.hint())
        })
    }

    fn shell_allowlist(&mut self, raw: Option<Vec<Spanned<String>>>) -> Result<Vec<ShellCommand>> {
        let mut commands: Vec<ShellCommand> = Vec::new();
        let Some(raw) = raw else {
            // The seed's `shell_exec: restricted` with no list shows `[git status, npm test]`
            // as allowlisted: a read-only git query and the test command. `[]` means none.
            for text in DEFAULT_SHELL_ALLOWLIST {
                if let Ok(command) = ShellCommand::parse(text) {
                    commands.push(command);
                }
            }
            return Ok(commands);
        };
        for (index, entry) in raw.iter().enumerate() {
            let key = format!("workflow.shell_allowlist[{index}]");
            let command = self
                .shell_command("workflow.shell_allowlist", entry)
                .map_err(|mut err| {
                    err.key = key.clone();
                    err
                })?;
            if command.is_open_ended() {
                self.warn(
                    entry.referenced,
                    &key,
                    format!("allowlisting `{command}` lets agents run any command through it"),
                );
            }
            if !commands.contains(&command) {
                commands.push(command);
            }
        }
        Ok(commands)
    }

    fn paths(&mut self, raw: Option<raw::RawPaths>) -> Result<PathRules> {
        let (allow, deny, protected) = match raw {
            Some(raw) => (raw.allow, raw.deny, raw.protected),
            None => (None, None, None),
        };
        let protected_builtin = builtin_globs(BUILTIN_PROTECTED_PATHS)?;
        let allow = match allow {
            Some(patterns) => {
                let list = self.glob_list("workflow.paths.allow", &patterns)?;
                for pattern in &patterns {
                    if BUILTIN_PROTECTED_PATHS.contains(&pattern.value.as_str())
                        || protected_builtin.is_match(pattern.value.trim_end_matches("/**"))
                    {
                        self.warn(
                            pattern.referenced,
                            "workflow.paths.allow",
                            format!(
                                "`{}` is a protected path: agents may read it but never write it",
                                pattern.value
                            ),
                        );
                    }
                }
                list
            }
            None => builtin_globs(&["**"])?,
        };
        let deny = match deny {
            Some(patterns) => self.glob_list("workflow.paths.deny", &patterns)?,
            None => GlobList::default(),
        };
        let mut protected_patterns: Vec<String> = BUILTIN_PROTECTED_PATHS
            .iter()
            .map(|p| (*p).to_owned())
            .collect();
        for pattern in protected.unwrap_or_default() {
            if let Some(removed) = pattern.value.strip_prefix('!') {
                return Err(self
                    .invalid(
                        pattern.referenced,
                        "workflow.paths.protected",
                        format!("`workflow.paths.protected` cannot remove `{removed}`: `paths.protected` only adds to the built-in protected paths"),
                    )
                    .with_hint(format!(
                        "always protected: {}",
                        BUILTIN_PROTECTED_PATHS.join(", ")
                    )));
            }
            self.check_glob("workflow.paths.protected", &pattern)?;
            if !protected_patterns.contains(&pattern.value) {
                protected_patterns.push(pattern.value);
            }
        }
        let protected = compile(&protected_patterns).map_err(|err| {
            ConfigError::new(
                ConfigErrorKind::InvalidValue,
                self.origin,
                None,
                "workflow.paths.protected",
                err.to_string(),
            )
        })?;
        Ok(PathRules {
            allow,
            deny,
            protected,
        })
    }

    fn check_glob(&self, key: &str, pattern: &Spanned<String>) -> Result<()> {
        let value = pattern.value.as_str();
        let problem = if value.trim().is_empty() {
            Some(("is empty".to_owned(), Some("remove the entry".to_owned())))
        } else if value.starts_with('!') {
            Some((
                "starts with `!`; negated patterns are not supported".to_owned(),
                Some("list what to exclude under `paths.deny`".to_owned()),
            ))
        } else if value.starts_with('/') || value.starts_with('~') || value.get(1..2) == Some(":") {
            Some((
                "is an absolute path; patterns are relative to the repository root".to_owned(),
                Some(format!("write `{}`", value.trim_start_matches(['/', '~']))),
            ))
        } else if value.split(['/', '\\']).any(|part| part == "..") {
            Some((
                "leaves the repository with `..`".to_owned(),
                Some("patterns are relative to the repository root and stay inside it".to_owned()),
            ))
        } else {
            match glob(value) {
                Ok(_) => None,
                // globset's wording often carries its own suggestion.
                Err(err) => Some((format!("is not a valid glob: {}", err.kind()), None)),
            }
        };
        match problem {
            Some((message, hint)) => {
                let error = self.invalid(
                    pattern.referenced,
                    key,
                    format!("`{key}` entry `{}` {message}", value.escape_debug()),
                );
                Err(match hint {
                    Some(hint) => error.with_hint(hint),
                    None => error,
                })
            }
            None => Ok(()),
        }
    }

    fn glob_list(&self, key: &str, patterns: &[Spanned<String>]) -> Result<GlobList> {
        for pattern in patterns {
            self.check_glob(key, pattern)?;
        }
        let values: Vec<String> = patterns.iter().map(|p| p.value.clone()).collect();
        compile(&values).map_err(|err| {
            ConfigError::new(
                ConfigErrorKind::InvalidValue,
                self.origin,
                None,
                key,
                err.to_string(),
            )
        })
    }

    fn rate_limits(&self, raw: Option<raw::RawRateLimits>) -> Result<RateLimits> {
        let Some(raw) = raw else {
            return Ok(RateLimits::default());
        };
        let positive = |key: &str, value: Option<Spanned<u64>>| -> Result<Option<u64>> {
            match value {
                Some(value) if value.value == 0 => Err(self
                    .invalid(
                        value.referenced,
                        &format!("workflow.rate_limits.{key}"),
                        format!("`workflow.rate_limits.{key}` must be at least 1"),
                    )
                    .with_hint("leave the key out to learn the limit from the provider")),
                Some(value) => Ok(Some(value.value)),
                None => Ok(None),
            }
        };
        Ok(RateLimits {
            requests_per_minute: positive("requests_per_minute", raw.requests_per_minute)?,
            input_tokens_per_minute: positive(
                "input_tokens_per_minute",
                raw.input_tokens_per_minute,
            )?,
            output_tokens_per_minute: positive(
                "output_tokens_per_minute",
                raw.output_tokens_per_minute,
            )?,
            tokens_per_minute: positive("tokens_per_minute", raw.tokens_per_minute)?,
            max_in_flight: positive("max_in_flight", raw.max_in_flight)?,
            retry_budget: self.retry_budget(raw.retry_budget)?,
        })
    }

    fn retry_budget(&self, raw: Option<raw::RawRetryBudget>) -> Result<RetryBudgetSettings> {
        let Some(raw) = raw else {
            return Ok(RetryBudgetSettings::default());
        };
        let number = |key: &str, value: Option<Spanned<f64>>| -> Result<Option<f64>> {
            match value {
                Some(value) if !value.value.is_finite() || value.value < 0.0 => Err(self.invalid(
                    value.referenced,
                    &format!("workflow.rate_limits.retry_budget.{key}"),
                    format!(
                        "`workflow.rate_limits.retry_budget.{key}` must be a number of at least 0, found {}",
                        value.value
                    ),
                )),
                Some(value) => Ok(Some(value.value)),
                None => Ok(None),
            }
        };
        Ok(RetryBudgetSettings {
            initial: number("initial", raw.initial)?,
            max: number("max", raw.max)?,
            per_success: number("per_success", raw.per_success)?,
            per_second: number("per_second", raw.per_second)?,
        })
    }

    fn budgets(&self, raw: Option<raw::RawBudgets>) -> Result<Budgets> {
        let (agent, run) = match raw {
            Some(raw) => (raw.agent, raw.run),
            None => (None, None),
        };
        let mut budgets = Budgets {
            agent: AgentBudget {
                max_turns: DEFAULT_AGENT_MAX_TURNS,
                max_tokens: DEFAULT_AGENT_MAX_TOKENS,
                max_dollars: None,
                max_wall_time: DEFAULT_AGENT_MAX_WALL_TIME,
            },
            run: RunBudget::default(),
        };
        if let Some(agent) = agent {
            let key = "workflow.budgets.agent";
            if let Some(turns) = self.count(key, "max_turns", agent.max_turns)? {
                budgets.agent.max_turns = turns;
            }
            if let Some(tokens) = self.count(key, "max_tokens", agent.max_tokens)? {
                budgets.agent.max_tokens = tokens;
            }
            budgets.agent.max_dollars = self.dollars(key, agent.max_dollars)?;
            if let Some(time) = self.duration(key, agent.max_wall_time)? {
                budgets.agent.max_wall_time = time;
            }
        }
        if let Some(run) = run {
            let key = "workflow.budgets.run";
            budgets.run.max_tokens = self.count(key, "max_tokens", run.max_tokens)?;
            budgets.run.max_dollars = self.dollars(key, run.max_dollars)?;
            budgets.run.max_wall_time = self.duration(key, run.max_wall_time)?;
            budgets.run.enforce_estimate = run.enforce_estimate.unwrap_or(false);
        }
        Ok(budgets)
    }

    fn count(
        &self,
        section: &str,
        field: &str,
        value: Option<Spanned<u64>>,
    ) -> Result<Option<u64>> {
        match value {
            Some(value) if value.value == 0 => Err(self.invalid(
                value.referenced,
                &format!("{section}.{field}"),
                format!("`{section}.{field}` must be at least 1"),
            )),
            Some(value) => Ok(Some(value.value)),
            None => Ok(None),
        }
    }

    fn dollars(&self, section: &str, value: Option<Spanned<f64>>) -> Result<Option<f64>> {
        match value {
            Some(value) if !value.value.is_finite() || value.value <= 0.0 => Err(self
                .invalid(
                    value.referenced,
                    &format!("{section}.max_dollars"),
                    format!(
                        "`{section}.max_dollars` must be more than 0, found {}",
                        value.value
                    ),
                )
                .with_hint("leave the key out for no dollar limit")),
            Some(value) => Ok(Some(value.value)),
            None => Ok(None),
        }
    }

    fn duration(&self, section: &str, value: Option<Spanned<String>>) -> Result<Option<Duration>> {
        let Some(value) = value else {
            return Ok(None);
        };
        let key = format!("{section}.max_wall_time");
        match humantime::parse_duration(value.value.trim()) {
            Ok(duration) if duration.is_zero() => Err(self.invalid(
                value.referenced,
                &key,
                format!("`{key}` must be longer than 0"),
            )),
            Ok(duration) => Ok(Some(duration)),
            Err(_) => Err(self
                .invalid(
                    value.referenced,
                    &key,
                    format!(
                        "`{key}` is not a duration: `{}`",
                        value.value.escape_debug()
                    ),
                )
                .with_hint("write e.g. `90s`, `10m` or `1h 30m`")),
        }
    }

    fn logging(&mut self, raw: Option<raw::RawLogging>) -> Result<Logging> {
        let (level, destination) = match raw {
            Some(raw) => (raw.level, raw.destination),
            None => (None, None),
        };
        let level = level.unwrap_or(LogLevel::Normal);
        let Some(destination) = destination else {
            return Ok(Logging {
                level,
                destination: DEFAULT_LOG_DESTINATION.to_owned(),
            });
        };
        let key = "workflow.logging.destination";
        let value = destination.value.trim();
        let at = destination.referenced;
        if value.is_empty() {
            return Err(self
                .invalid(at, key, format!("`{key}` is empty"))
                .with_hint(format!(
                    "e.g. `./logs/workflow-run-{TIMESTAMP_PLACEHOLDER}.json`"
                )));
        }
        if value.ends_with(['/', '\\'])
            || value.ends_with("/.")
            || value == "."
            || value.ends_with("..")
        {
            return Err(self
                .invalid(
                    at,
                    key,
                    format!("`{key}` `{value}` names a directory, not a file"),
                )
                .with_hint(format!(
                    "add a file name, e.g. `{}/workflow-run-{TIMESTAMP_PLACEHOLDER}.json`",
                    value.trim_end_matches(['/', '\\'])
                )));
        }
        let outside = Path::new(value).is_absolute()
            || value.starts_with('~')
            || value.split(['/', '\\']).any(|component| component == "..");
        if outside {
            return Err(self
                .invalid(
                    at,
                    key,
                    format!(
                        "`{key}` `{value}` is outside the repository; the log is written inside it (relative to the repository root)"
                    ),
                )
                .with_hint(format!(
                    "e.g. `./logs/workflow-run-{TIMESTAMP_PLACEHOLDER}.json` or `./.fanout/logs/run-{TIMESTAMP_PLACEHOLDER}.jsonl`"
                )));
        }
        let mut rest = value;
        let mut has_timestamp = false;
        while let Some(start) = rest.find('{') {
            let after = &rest[start + 1..];
            let Some(end) = after.find('}') else {
                return Err(self
                    .invalid(at, key, format!("`{key}` has an unclosed `{{`"))
                    .with_hint(format!("the only placeholder is `{TIMESTAMP_PLACEHOLDER}`")));
            };
            let placeholder = &after[..end];
            if placeholder == "timestamp" {
                has_timestamp = true;
            } else {
                let error = self.invalid(
                    at,
                    key,
                    format!("`{key}` has an unknown placeholder `{{{placeholder}}}`"),
                );
                return Err(match did_you_mean(placeholder, ["timestamp"]) {
                    Some(_) => error.with_hint(format!("did you mean `{TIMESTAMP_PLACEHOLDER}`?")),
                    None => error
                        .with_hint(format!("the only placeholder is `{TIMESTAMP_PLACEHOLDER}`")),
                });
            }
            rest = &after[end + 1..];
        }
        if !has_timestamp {
            self.warn(
                at,
                key,
                format!(
                    "`{key}` has no `{TIMESTAMP_PLACEHOLDER}`: every run overwrites the same log"
                ),
            );
        }
        Ok(Logging {
            level,
            destination: value.to_owned(),
        })
    }

    fn rollback(&self, raw: Option<raw::RawRollback>) -> Result<Rollback> {
        let mut rollback = Rollback {
            on_failure: OnFailure::Checkpoint,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            destructive_checkpoint_interval: DEFAULT_DESTRUCTIVE_CHECKPOINT_INTERVAL,
        };
        let Some(raw) = raw else {
            return Ok(rollback);
        };
        if let Some(on_failure) = raw.on_failure {
            rollback.on_failure = on_failure;
        }
        let interval = |field: &str, value: &Spanned<i64>| -> Result<u32> {
            let key = format!("workflow.rollback.{field}");
            match u32::try_from(value.value) {
                Ok(interval) if interval >= 1 => Ok(interval),
                _ => Err(self
                    .invalid(
                        value.referenced,
                        &key,
                        format!("`{key}` must be at least 1, found {}", value.value),
                    )
                    .with_hint("it counts agent completions between checkpoints")),
            }
        };
        if let Some(value) = &raw.checkpoint_interval {
            rollback.checkpoint_interval = interval("checkpoint_interval", value)?;
        }
        match &raw.destructive_checkpoint_interval {
            Some(value) => {
                let destructive = interval("destructive_checkpoint_interval", value)?;
                if destructive > rollback.checkpoint_interval {
                    return Err(self
                        .invalid(
                            value.referenced,
                            "workflow.rollback.destructive_checkpoint_interval",
                            format!(
                                "`workflow.rollback.destructive_checkpoint_interval` ({destructive}) is looser than `checkpoint_interval` ({})",
                                rollback.checkpoint_interval
                            ),
                        )
                        .with_hint("destructive operations need checkpoints at least as often"));
                }
                rollback.destructive_checkpoint_interval = destructive;
            }
            None => {
                rollback.destructive_checkpoint_interval = rollback
                    .destructive_checkpoint_interval
                    .min(rollback.checkpoint_interval);
            }
        }
        Ok(rollback)
    }
}

fn glob(pattern: &str) -> std::result::Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(true).build()
}

fn compile(patterns: &[String]) -> std::result::Result<GlobList, globset::Error> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(glob(pattern)?);
    }
    Ok(GlobList {
        patterns: patterns.to_vec(),
        set: builder.build()?,
    })
}

fn builtin_globs(patterns: &[&str]) -> Result<GlobList> {
    let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
    compile(&patterns).map_err(|err| {
        ConfigError::new(
            ConfigErrorKind::InvalidValue,
            Path::new("<built-in>"),
            None,
            "",
            err.to_string(),
        )
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn load_ok(text: &str) -> Config {
        load(text, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn a_bare_file_gets_every_default() {
        let config = load_ok("workflow:\n  name: bare\n");
        assert_eq!(config.max_parallel_agents, DEFAULT_MAX_PARALLEL_AGENTS);
        assert_eq!(
            config.mode_routing.get("orchestrator"),
            Some(&Mode::Default)
        );
        assert_eq!(config.models, default_models());
        assert_eq!(config.logging.destination, DEFAULT_LOG_DESTINATION);
        assert_eq!(config.paths.allow.patterns(), ["**"]);
        assert_eq!(
            config.sensitive_paths.patterns().len(),
            DEFAULT_SENSITIVE_PATHS.len()
        );
        assert!(config.warnings().is_empty());
    }

    #[test]
    fn destructive_interval_never_exceeds_the_checkpoint_interval() {
        let config = load_ok("workflow:\n  name: x\n  rollback:\n    checkpoint_interval: 3\n");
        assert_eq!(config.rollback.destructive_checkpoint_interval, 1);
        let config = load_ok(
            "workflow:\n  name: x\n  rollback:\n    checkpoint_interval: 5\n    destructive_checkpoint_interval: 5\n",
        );
        assert_eq!(config.rollback.destructive_checkpoint_interval, 5);
    }

    #[test]
    fn values_are_typed_and_located() {
        let config = load_ok(
            "workflow:\n  name: x\n  task: Refactor src/auth\n  budgets:\n    agent: { max_wall_time: 90s, max_dollars: 0.5 }\n    run: { max_wall_time: 1h 30m }\n  models:\n    fast: { provider: openai, model: gpt-5-mini, price_per_million_tokens: { input: 0.25, output: 2 } }\n  output_schema: { type: object, required: [summary] }\n",
        );
        assert_eq!(config.task.as_deref(), Some("Refactor src/auth"));
        assert_eq!(config.budgets.agent.max_wall_time, Duration::from_secs(90));
        assert_eq!(config.budgets.agent.max_dollars, Some(0.5));
        assert_eq!(
            config.budgets.run.max_wall_time,
            Some(Duration::from_secs(5400))
        );
        assert_eq!(config.models.fast.provider, Provider::OpenAi);
        assert_eq!(config.models.fast.cached_input_price, None);
        assert!(
            (config
                .models
                .fast
                .cost(crate::config::price::TokenUse::uncached(
                    1_000_000, 1_000_000
                ))
                - 2.25)
                .abs()
                < 1e-9
        );
        assert_eq!(config.output_schema.unwrap()["required"][0], "summary");

        let err = load(
            "workflow:\n  name: x\n  budgets:\n    run:\n      max_dollars: 0\n",
            Path::new("b.yaml"),
        )
        .unwrap_err();
        assert_eq!((err.line, err.column), (Some(5), Some(20)));
        assert_eq!(err.key, "workflow.budgets.run.max_dollars");
    }
}
