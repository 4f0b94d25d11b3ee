//! The workflow file: its model, defaults, validation and JSON Schema.
//!
//! A workflow file is YAML with one top-level key, `workflow:`. The seed's
//! `claude-workflows.yaml` example parses as written; everything a real run needs beyond it
//! (models and prices, shell allowlist, path rules, budgets, rate limits...) has a default.
//!
//! Start reading at [`Config::from_str`]. Loading happens in two steps:
//! 1. `raw.rs`: serde types that mirror the YAML with source locations, denying unknown
//!    keys. Parser errors become a [`ConfigError`] with file, line, column, key path and a
//!    "did you mean" (`error.rs`).
//! 2. `resolve.rs`: defaults applied and values checked (ranges, globs, shell commands,
//!    durations, placeholders), each error pointing at the offending value.
//!
//! `schema.rs` holds the JSON Schema editors use (`fanout schema`) and `template.rs` the
//! commented starter file (`fanout init`). [`items`] is the `items:` section, with the
//! worker output types it declares in [`item_output`] and the prompt template language in
//! [`item_template`] (the item runner imports them from here). This module owns no policy
//! decisions about plans; it only describes what the user allowed.

mod error;
pub mod item_output;
pub mod item_template;
pub mod items;
pub mod price;
mod raw;
mod resolve;
mod schema;
mod shell;
mod template;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use globset::GlobSet;
use serde::{Deserialize, Serialize};

pub(crate) use error::did_you_mean;
pub use error::{ConfigError, ConfigErrorKind, ConfigWarning};
pub use schema::json_schema;
pub use shell::{ShellCommand, ShellCommandError};
pub use template::INIT_TEMPLATE;

/// The file name `fanout init` writes by default.
pub const DEFAULT_CONFIG_FILE: &str = "fanout.yaml";

/// Largest file we read, so a stray multi-gigabyte file is refused rather than loaded.
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The role whose mode picks the planning model.
pub const ORCHESTRATOR_ROLE: &str = "orchestrator";

/// Paths no agent may ever write, whatever the file says. Users can add to these
/// (`paths.protected`) but not remove them.
pub const BUILTIN_PROTECTED_PATHS: &[&str] = &[
    ".git/**",
    "**/.git/**",
    ".fanout/**",
    ".env",
    "**/.env",
    "**/.env.*",
    "**/*.pem",
    "**/id_rsa*",
];

/// Paths whose work stays on the `default` mode unless the file says otherwise.
pub const DEFAULT_SENSITIVE_PATHS: &[&str] = &[
    "**/auth/**",
    "**/*auth*",
    "**/security/**",
    "**/*security*",
    "**/payment*/**",
    "**/*payment*",
    "**/billing/**",
];

/// A model tier. `default` is the full model; `fast` is cheaper and quicker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Fast,
    Default,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fast => "fast",
            Mode::Default => "default",
        }
    }
}

/// Which wire format a model speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Anthropic,
    #[serde(rename = "openai")]
    OpenAi,
}

/// What files an agent may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAccess {
    /// Read and write inside the agent's declared scope only.
    Scoped,
    /// Read inside the declared scope; never write.
    ReadOnly,
    /// No file tools at all.
    None,
}

/// Whether agents may make outbound network calls (tools, shell commands).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExternalApi {
    Deny,
    Allow,
}

/// Whether agents may run shell commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShellExec {
    /// Only commands on `shell_allowlist`.
    Restricted,
    /// No shell at all.
    Deny,
    /// Any command. Exists for users who write it; always flagged by [`Config::warnings`].
    Unrestricted,
}

/// How strictly the kernel sandbox must enforce agent permissions
/// (`workflow.agent_permissions.sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxSetting {
    /// Refuse to run commands the kernel cannot fully confine (fail closed). The default.
    Enforce,
    /// Run with whatever the kernel offers. Only when the workflow file asks for it; always
    /// flagged by [`Config::warnings`] and shown in the dry-run report.
    BestEffort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Quiet,
    Normal,
    Verbose,
}

/// What to do with an agent's changes when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Revert to the last clean checkpoint.
    Checkpoint,
    /// Keep the changes as they are.
    None,
}

/// The model behind one mode, and its price.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub provider: Provider,
    pub model: String,
    /// US dollars per million input tokens.
    pub input_price: f64,
    /// US dollars per million output tokens.
    pub output_price: f64,
    /// US dollars per million cache-read input tokens; `None`: the provider's multiplier of
    /// the input price (see [`price`]).
    pub cached_input_price: Option<f64>,
    /// US dollars per million cache-write input tokens; `None`: the provider's multiplier.
    pub cache_write_price: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Models {
    pub default: ModelSpec,
    pub fast: ModelSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AgentPermissions {
    pub file_access: FileAccess,
    pub external_api: ExternalApi,
    pub shell_exec: ShellExec,
    pub sandbox: SandboxSetting,
}

/// A list of glob patterns (relative to the repository root) and their compiled matcher.
#[derive(Debug, Clone, Default)]
pub struct GlobList {
    patterns: Vec<String>,
    set: GlobSet,
}

impl GlobList {
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// True when any pattern matches `path` (relative, `/`-separated).
    pub fn is_match(&self, path: impl AsRef<Path>) -> bool {
        self.set.is_match(path)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl PartialEq for GlobList {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Serialize for GlobList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(serializer)
    }
}

/// Which repository paths agents may use. The strictest rule wins: denied beats allowed,
/// protected beats everything for writes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathRules {
    pub allow: GlobList,
    pub deny: GlobList,
    /// [`BUILTIN_PROTECTED_PATHS`] followed by the user's additions.
    pub protected: GlobList,
}

impl PathRules {
    /// May an agent read `path` (if its scope covers it)?
    pub fn is_allowed(&self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        self.allow.is_match(path) && !self.deny.is_match(path)
    }

    /// Is `path` one no agent may ever write?
    pub fn is_protected(&self, path: impl AsRef<Path>) -> bool {
        self.protected.is_match(path)
    }

    /// May an agent write `path` (if its scope covers it)?
    pub fn is_writable(&self, path: impl AsRef<Path>) -> bool {
        let path = path.as_ref();
        self.is_allowed(path) && !self.is_protected(path)
    }
}

/// Fleet-wide rate limits, per minute. `None` leaves the limit to be learned from the
/// provider's response headers.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RateLimits {
    pub requests_per_minute: Option<u64>,
    pub input_tokens_per_minute: Option<u64>,
    pub output_tokens_per_minute: Option<u64>,
    pub tokens_per_minute: Option<u64>,
    pub max_in_flight: Option<u64>,
    pub retry_budget: RetryBudgetSettings,
}

/// `workflow.rate_limits.retry_budget`: the fleet-wide retry budget's settings; `None` keeps
/// the default (see [`crate::retry::RetryBudgetConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RetryBudgetSettings {
    pub initial: Option<f64>,
    pub max: Option<f64>,
    pub per_success: Option<f64>,
    pub per_second: Option<f64>,
}

/// Limits on one agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentBudget {
    pub max_turns: u64,
    pub max_tokens: u64,
    pub max_dollars: Option<f64>,
    pub max_wall_time: Duration,
}

/// Limits on the whole run (all agents and the orchestrator). `None` is unlimited.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RunBudget {
    pub max_tokens: Option<u64>,
    pub max_dollars: Option<f64>,
    pub max_wall_time: Option<Duration>,
    /// Refuse a plan whose *estimate* exceeds these limits. Off by default: an estimate over
    /// a limit is a warning, and the dollar limit is enforced on actual spend while running.
    pub enforce_estimate: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Budgets {
    pub agent: AgentBudget,
    pub run: RunBudget,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Logging {
    pub level: LogLevel,
    /// The path as written, possibly with a `{timestamp}` placeholder.
    pub destination: String,
}

/// The placeholder [`Logging::destination_for`] fills.
pub const TIMESTAMP_PLACEHOLDER: &str = "{timestamp}";

impl Logging {
    /// The destination with `{timestamp}` replaced by `timestamp`.
    pub fn destination_for(&self, timestamp: &str) -> PathBuf {
        PathBuf::from(self.destination.replace(TIMESTAMP_PLACEHOLDER, timestamp))
    }

    /// The destination for a run started at `at`: an RFC 3339 UTC time with `:` replaced by
    /// `-` so the name is valid on every file system (`2026-01-31T09-30-00Z`).
    pub fn destination_at(&self, at: SystemTime) -> PathBuf {
        let stamp = humantime::format_rfc3339_seconds(at)
            .to_string()
            .replace(':', "-");
        self.destination_for(&stamp)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rollback {
    pub on_failure: OnFailure,
    /// Checkpoint after every this many agent completions.
    pub checkpoint_interval: u32,
    /// The interval for destructive operations (deletes, renames); never looser than
    /// `checkpoint_interval`.
    pub destructive_checkpoint_interval: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Verify {
    pub test_command: Option<ShellCommand>,
    /// Also run the test command on the run's base commit (in a temporary checkout, same
    /// sandbox), so a failure can be told apart as "failing before and after" or "broken by
    /// this run".
    pub baseline: bool,
}

impl Serialize for ShellCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A loaded, validated workflow file with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Where the text came from (a file path or a name given to [`Config::from_str`]).
    pub origin: PathBuf,
    pub name: String,
    /// The root task, when the file names one (the CLI's `--task` overrides it).
    pub task: Option<String>,
    /// Repository root, as written (relative paths are relative to the working directory).
    pub repository: PathBuf,
    pub max_parallel_agents: u32,
    /// Role → mode. Always has [`ORCHESTRATOR_ROLE`].
    pub mode_routing: BTreeMap<String, Mode>,
    pub models: Models,
    pub agent_permissions: AgentPermissions,
    pub shell_allowlist: Vec<ShellCommand>,
    pub paths: PathRules,
    pub sensitive_paths: GlobList,
    pub rate_limits: RateLimits,
    pub budgets: Budgets,
    pub logging: Logging,
    pub rollback: Rollback,
    pub verify: Verify,
    /// JSON Schema agents' results must satisfy, when the workflow wants structured results.
    pub output_schema: Option<serde_json::Value>,
    /// Mark conversations and shared prefixes for prompt caching (`workflow.prompt_caching`,
    /// default on; off for comparison).
    pub prompt_caching: bool,
    /// Item work (`workflow.items:`): when present, the workflow maps workers over records
    /// and needs no repository or plan.
    pub items: Option<items::ItemsConfig>,
    #[serde(skip)]
    warnings: Vec<ConfigWarning>,
}

impl Config {
    /// Read and validate a workflow file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let io_error = |err: std::io::Error| {
            ConfigError::new(
                ConfigErrorKind::Io,
                path,
                None,
                "",
                format!("cannot read: {err}"),
            )
        };
        let size = std::fs::metadata(path).map_err(io_error)?.len();
        if size > MAX_CONFIG_BYTES {
            return Err(ConfigError::new(
                ConfigErrorKind::TooLarge,
                path,
                None,
                "",
                format!(
                    "the file is {size} bytes; a workflow file may be at most {MAX_CONFIG_BYTES}"
                ),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(io_error)?;
        Config::from_str(&text, path)
    }

    /// Parse and validate workflow YAML. `origin` names the text in messages.
    pub fn from_str(text: &str, origin: impl AsRef<Path>) -> Result<Config, ConfigError> {
        resolve::load(text, origin.as_ref())
    }

    /// Things allowed but probably unintended, in file order.
    pub fn warnings(&self) -> &[ConfigWarning] {
        &self.warnings
    }

    /// The mode for a role; roles not in `mode_routing` get [`Mode::Default`], the safe choice.
    pub fn mode_for_role(&self, role: &str) -> Mode {
        self.mode_routing
            .get(role)
            .copied()
            .unwrap_or(Mode::Default)
    }

    pub fn model_for_mode(&self, mode: Mode) -> &ModelSpec {
        match mode {
            Mode::Fast => &self.models.fast,
            Mode::Default => &self.models.default,
        }
    }

    pub fn model_for_role(&self, role: &str) -> &ModelSpec {
        self.model_for_mode(self.mode_for_role(role))
    }

    /// The model that plans the run (`mode_routing.orchestrator`).
    pub fn orchestrator_model(&self) -> &ModelSpec {
        self.model_for_role(ORCHESTRATOR_ROLE)
    }

    /// The built-in protected patterns followed by the user's additions.
    pub fn protected_paths(&self) -> &[String] {
        self.paths.protected.patterns()
    }

    /// Must work on `path` stay on the default mode?
    pub fn is_sensitive(&self, path: impl AsRef<Path>) -> bool {
        self.sensitive_paths.is_match(path)
    }

    /// May an agent run `argv` under this file's shell rules?
    pub fn shell_command_allowed<S: AsRef<str>>(&self, argv: &[S]) -> bool {
        match self.agent_permissions.shell_exec {
            ShellExec::Deny => false,
            ShellExec::Unrestricted => !argv.is_empty(),
            ShellExec::Restricted => self
                .shell_allowlist
                .iter()
                .any(|command| command.permits(argv)),
        }
    }
}
