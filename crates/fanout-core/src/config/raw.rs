//! The workflow file exactly as written: serde types that mirror the YAML, with source
//! locations ([`Spanned`]) on every value validated after parsing.
//!
//! Nothing here has defaults applied or invariants checked; `resolve.rs` turns a [`RawFile`]
//! into a [`super::Config`]. Every struct denies unknown keys, so typos are errors. Keep the
//! field names in step with `schema.rs` (a test compares them).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::CUSTOM_PREFIX;
use super::{
    ExternalApi, FileAccess, LogLevel, Mode, OnFailure, Provider, SandboxSetting, ShellExec,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub workflow: RawWorkflow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkflow {
    pub name: Spanned<String>,
    #[serde(default)]
    pub task: Option<Spanned<String>>,
    #[serde(default)]
    pub repository: Option<Spanned<String>>,
    #[serde(default)]
    pub max_parallel_agents: Option<Spanned<i64>>,
    #[serde(default)]
    pub mode_routing: Option<BTreeMap<RoleName, Spanned<Mode>>>,
    #[serde(default)]
    pub models: Option<RawModels>,
    #[serde(default)]
    pub agent_permissions: Option<RawPermissions>,
    #[serde(default)]
    pub shell_allowlist: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub paths: Option<RawPaths>,
    #[serde(default)]
    pub sensitive_paths: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub rate_limits: Option<RawRateLimits>,
    #[serde(default)]
    pub budgets: Option<RawBudgets>,
    #[serde(default)]
    pub logging: Option<RawLogging>,
    #[serde(default)]
    pub rollback: Option<RawRollback>,
    #[serde(default)]
    pub verify: Option<RawVerify>,
    #[serde(default)]
    pub output_schema: Option<Spanned<serde_json::Value>>,
    #[serde(default)]
    pub items: Option<super::items::RawItems>,
    #[serde(default)]
    pub prompt_caching: Option<bool>,
}

/// A `mode_routing` key: lowercase letters and underscores.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RoleName(pub String);

impl<'de> Deserialize<'de> for RoleName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
        if valid {
            Ok(RoleName(name))
        } else {
            Err(serde::de::Error::custom(format_args!(
                "{CUSTOM_PREFIX}has an invalid role name `{}`: role names use lowercase letters and `_` only",
                name.escape_debug()
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModels {
    #[serde(default)]
    pub default: Option<RawModel>,
    #[serde(default)]
    pub fast: Option<RawModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    #[serde(default)]
    pub provider: Option<Provider>,
    pub model: Spanned<String>,
    pub price_per_million_tokens: RawPrice,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPrice {
    pub input: Spanned<f64>,
    pub output: Spanned<f64>,
    #[serde(default)]
    pub cached_input: Option<Spanned<f64>>,
    #[serde(default)]
    pub cache_write: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPermissions {
    #[serde(default)]
    pub file_access: Option<FileAccess>,
    #[serde(default)]
    pub external_api: Option<Spanned<ExternalApi>>,
    #[serde(default)]
    pub shell_exec: Option<Spanned<ShellExec>>,
    #[serde(default)]
    pub sandbox: Option<Spanned<SandboxSetting>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPaths {
    #[serde(default)]
    pub allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub deny: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub protected: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimits {
    #[serde(default)]
    pub requests_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    pub input_tokens_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    pub output_tokens_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    pub tokens_per_minute: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_in_flight: Option<Spanned<u64>>,
    #[serde(default)]
    pub retry_budget: Option<RawRetryBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryBudget {
    #[serde(default)]
    pub initial: Option<Spanned<f64>>,
    #[serde(default)]
    pub max: Option<Spanned<f64>>,
    #[serde(default)]
    pub per_success: Option<Spanned<f64>>,
    #[serde(default)]
    pub per_second: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBudgets {
    #[serde(default)]
    pub agent: Option<RawAgentBudget>,
    #[serde(default)]
    pub run: Option<RawRunBudget>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgentBudget {
    #[serde(default)]
    pub max_turns: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_dollars: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_wall_time: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRunBudget {
    #[serde(default)]
    pub max_tokens: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_dollars: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_wall_time: Option<Spanned<String>>,
    #[serde(default)]
    pub enforce_estimate: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogging {
    #[serde(default)]
    pub level: Option<LogLevel>,
    #[serde(default)]
    pub destination: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRollback {
    #[serde(default)]
    pub on_failure: Option<OnFailure>,
    #[serde(default)]
    pub checkpoint_interval: Option<Spanned<i64>>,
    #[serde(default)]
    pub destructive_checkpoint_interval: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVerify {
    #[serde(default)]
    pub test_command: Option<Spanned<String>>,
    #[serde(default)]
    pub baseline: Option<bool>,
}
