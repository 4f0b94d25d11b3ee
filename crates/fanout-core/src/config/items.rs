//! The `workflow.items:` section: item work ("analyze these 300 support tickets").
//!
//! [`RawItems`] mirrors the YAML (unknown keys denied, values spanned); [`resolve`] checks it
//! and applies defaults, giving an [`ItemsConfig`]. Paths (the input, the output schema, a
//! prompt template) are relative to the workflow file's directory; the schema and the template
//! are read and checked here, so a broken one is an error pointing at its key before anything
//! runs. A workflow with `items:` needs no repository and no orchestrator plan: the item
//! runner (`crate::items::run`) takes it from here.
//!
//! Not here: reading the items, chunking, calling workers (all in [`crate::items`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::{Location, Spanned};

use super::error::{ConfigError, ConfigErrorKind, did_you_mean};
use super::item_output::{OutputRoute, OutputSchema, ResultsFormat};
use super::item_template::check_template;

/// Default `max_tokens` of a worker answer.
pub const DEFAULT_WORKER_MAX_TOKENS: u32 = 8192;
/// Default `max_tokens` of a synthesis call.
pub const DEFAULT_SYNTHESIS_MAX_TOKENS: u32 = 4096;
/// Default share of the input-tokens/min limit one chunk may use (token_budget chunking).
pub const DEFAULT_SHARE_OF_MINUTE: f64 = 0.05;
/// Default input limit of one worker request (token_budget chunking).
pub const DEFAULT_MAX_INPUT_TOKENS: u64 = 150_000;
/// Default chunk size for `fixed` chunking.
pub const DEFAULT_FIXED_SIZE: usize = 20;

// ---------------------------------------------------------------------------------------------
// Raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawItems {
    pub input: RawInput,
    #[serde(default)]
    pub chunking: Option<RawChunking>,
    pub worker: RawWorker,
    #[serde(default)]
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub execution: Option<Spanned<Execution>>,
    #[serde(default)]
    pub aggregate: Option<RawAggregate>,
    #[serde(default)]
    pub output: Option<RawOutput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    pub path: Spanned<String>,
    #[serde(default)]
    pub format: Option<Spanned<InputFormat>>,
    #[serde(default)]
    pub id: Option<RawId>,
    /// For `files`: a glob under `path` (default: every file; non-text files are problems).
    #[serde(default)]
    pub pattern: Option<Spanned<String>>,
    #[serde(default)]
    pub on_invalid: Option<OnInvalid>,
}

/// What an input line that is not an item (bad JSON, no id, a repeated id, an unreadable
/// file) does to the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnInvalid {
    /// It is a failure of that line, in `failed.jsonl`; the good items run.
    #[default]
    Record,
    /// The job stops before any work, listing every problem.
    Fail,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawId {
    #[serde(default)]
    pub field: Option<Spanned<String>>,
    /// `true` or `zero_padded`.
    #[serde(default)]
    pub position: Option<Spanned<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChunking {
    pub strategy: Spanned<Strategy>,
    #[serde(default)]
    pub size: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_items: Option<Spanned<u64>>,
    #[serde(default)]
    pub share_of_minute: Option<Spanned<f64>>,
    #[serde(default)]
    pub max_input_tokens: Option<Spanned<u64>>,
    /// For `llm`: how many items the orchestrator sees.
    #[serde(default)]
    pub sample: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorker {
    pub instructions: Spanned<String>,
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    /// A path to a JSON file, or the schema inline. Only `chunking.strategy: llm` may leave
    /// it out (the orchestrator proposes the record's fields then).
    #[serde(default)]
    pub output_schema: Option<Spanned<Value>>,
    #[serde(default)]
    pub output: Option<Spanned<OutputRoute>>,
    #[serde(default)]
    pub max_tokens: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetries {
    #[serde(default)]
    pub resend_missing: Option<Spanned<u64>>,
    #[serde(default)]
    pub repairs: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAggregate {
    #[serde(default)]
    pub count_by: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub group_by: Option<Spanned<String>>,
    #[serde(default)]
    pub dedupe_by: Option<Spanned<String>>,
    #[serde(default)]
    pub flatten: Option<Spanned<String>>,
    #[serde(default)]
    pub synthesis: Option<RawSynthesis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSynthesis {
    pub instructions: Spanned<String>,
    #[serde(default)]
    pub max_tokens: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutput {
    #[serde(default)]
    pub format: Option<ResultsFormat>,
    #[serde(default)]
    pub dir: Option<Spanned<String>>,
}

// ---------------------------------------------------------------------------------------------
// Resolved

/// How the input file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Jsonl,
    Csv,
    /// A directory or glob of text / Markdown files, one item per file.
    Files,
}

/// The chunking strategy as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    PerItem,
    Fixed,
    TokenBudget,
    /// The orchestrator looks at a sample and proposes the chunking, the worker instructions
    /// and (when the workflow gives none) the record's fields.
    Llm,
}

/// Where chunks are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Execution {
    /// One request per chunk, as they are admitted.
    #[default]
    Online,
    /// The Message Batches API: half price, results within hours.
    Batch,
}

/// How items get their ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemIdConfig {
    /// The default for the format: the relative path for files, the position otherwise.
    Default,
    Field(String),
    Position {
        zero_pad: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemInputConfig {
    /// Resolved against the workflow file's directory.
    pub path: PathBuf,
    pub format: InputFormat,
    pub id: ItemIdConfig,
    pub pattern: Option<String>,
    pub on_invalid: OnInvalid,
}

/// Chunking, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "strategy", rename_all = "snake_case")]
pub enum ChunkingConfig {
    PerItem,
    Fixed {
        size: usize,
    },
    TokenBudget {
        max_items: Option<usize>,
        share_of_minute: f64,
        max_input_tokens: u64,
    },
    /// Proposed by the orchestrator from `sample` items (see `crate::items::propose`).
    Llm {
        sample: usize,
    },
}

/// Default number of items the orchestrator sees with `strategy: llm`.
pub const DEFAULT_LLM_SAMPLE: usize = 20;
/// Most items the orchestrator may be shown with `strategy: llm`.
pub const MAX_LLM_SAMPLE: usize = 200;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemWorkerConfig {
    pub instructions: String,
    /// The template's text (read from its file), when one is given.
    pub template: Option<String>,
    pub template_path: Option<PathBuf>,
    /// The record schema as written (compiled again by the runner); `None` only with
    /// `chunking.strategy: llm`, where the orchestrator proposes it.
    pub output_schema: Option<Value>,
    /// The schema file, when it came from one.
    pub output_schema_path: Option<PathBuf>,
    pub output: OutputRoute,
    pub max_tokens: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ItemRetriesConfig {
    pub resend_missing: u32,
    pub repairs: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SynthesisConfig {
    pub instructions: String,
    pub max_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ItemAggregateConfig {
    pub count_by: Vec<String>,
    pub group_by: Option<String>,
    pub dedupe_by: Option<String>,
    pub flatten: Option<String>,
    pub synthesis: Option<SynthesisConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ItemOutputConfig {
    pub format: ResultsFormat,
    /// Where outputs go instead of `.fanout/runs/<run_id>/` (resolved against the workflow
    /// file's directory).
    pub dir: Option<PathBuf>,
}

/// The `workflow.items:` section, checked, with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ItemsConfig {
    pub input: ItemInputConfig,
    pub chunking: ChunkingConfig,
    pub worker: ItemWorkerConfig,
    pub retries: ItemRetriesConfig,
    pub execution: Execution,
    pub aggregate: ItemAggregateConfig,
    pub output: ItemOutputConfig,
}

// ---------------------------------------------------------------------------------------------
// Resolving

struct Check<'a> {
    origin: &'a Path,
    base: PathBuf,
}

const KEY: &str = "workflow.items";

impl Check<'_> {
    fn invalid(&self, at: Location, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(
            ConfigErrorKind::InvalidValue,
            self.origin,
            Some(at),
            key,
            message,
        )
    }

    fn path(&self, text: &str) -> PathBuf {
        let path = Path::new(text.trim());
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn non_empty(&self, key: &str, value: &Spanned<String>) -> Result<String, ConfigError> {
        let text = value.value.trim();
        if text.is_empty() {
            return Err(self.invalid(value.referenced, key, format!("`{key}` is empty")));
        }
        Ok(text.to_owned())
    }

    fn at_least_one(&self, key: &str, value: &Spanned<u64>) -> Result<u64, ConfigError> {
        if value.value == 0 {
            return Err(self.invalid(value.referenced, key, format!("`{key}` must be at least 1")));
        }
        Ok(value.value)
    }
}

/// Check `raw` (the `items:` section of the file at `origin`).
pub(crate) fn resolve(origin: &Path, raw: RawItems) -> Result<ItemsConfig, ConfigError> {
    let base = origin.parent().map(Path::to_path_buf).unwrap_or_default();
    let check = Check { origin, base };
    let input = input(&check, raw.input)?;
    let chunking = chunking(&check, raw.chunking)?;
    let llm = matches!(chunking, ChunkingConfig::Llm { .. });
    let worker = worker(&check, raw.worker, llm)?;
    let retries = match raw.retries {
        Some(retries) => ItemRetriesConfig {
            resend_missing: small_count(
                &check,
                &format!("{KEY}.retries.resend_missing"),
                retries.resend_missing,
                1,
            )?,
            repairs: small_count(
                &check,
                &format!("{KEY}.retries.repairs"),
                retries.repairs,
                1,
            )?,
        },
        None => ItemRetriesConfig {
            resend_missing: 1,
            repairs: 1,
        },
    };
    let aggregate = match raw.aggregate {
        Some(raw) => aggregate(&check, raw)?,
        None => ItemAggregateConfig::default(),
    };
    let output = match raw.output {
        Some(raw) => ItemOutputConfig {
            format: raw.format.unwrap_or_default(),
            dir: match raw.dir {
                Some(dir) => {
                    Some(check.path(&check.non_empty(&format!("{KEY}.output.dir"), &dir)?))
                }
                None => None,
            },
        },
        None => ItemOutputConfig::default(),
    };
    Ok(ItemsConfig {
        input,
        chunking,
        worker,
        retries,
        execution: raw.execution.map(|e| e.value).unwrap_or_default(),
        aggregate,
        output,
    })
}

fn small_count(
    check: &Check<'_>,
    key: &str,
    value: Option<Spanned<u64>>,
    default: u32,
) -> Result<u32, ConfigError> {
    match value {
        None => Ok(default),
        Some(value) if value.value > 10 => Err(check
            .invalid(
                value.referenced,
                key,
                format!("`{key}` must be between 0 and 10, found {}", value.value),
            )
            .with_hint("each retry is another model call per item")),
        Some(value) => Ok(value.value as u32),
    }
}

fn input(check: &Check<'_>, raw: RawInput) -> Result<ItemInputConfig, ConfigError> {
    let key = format!("{KEY}.input.path");
    let text = check.non_empty(&key, &raw.path)?;
    let path = check.path(&text);
    let format = match raw.format {
        Some(format) => format.value,
        None => {
            let lower = text.to_ascii_lowercase();
            if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
                InputFormat::Jsonl
            } else if lower.ends_with(".csv") {
                InputFormat::Csv
            } else if lower.ends_with('/') || lower.contains('*') || path.is_dir() {
                InputFormat::Files
            } else {
                return Err(check
                    .invalid(
                        raw.path.referenced,
                        &key,
                        format!("cannot tell the format of `{text}` from its name"),
                    )
                    .with_hint("add `format: jsonl`, `format: csv` or `format: files`"));
            }
        }
    };
    let id = match raw.id {
        None => ItemIdConfig::Default,
        Some(RawId {
            field: Some(field),
            position: None,
        }) => ItemIdConfig::Field(check.non_empty(&format!("{KEY}.input.id.field"), &field)?),
        Some(RawId {
            field: None,
            position: Some(position),
        }) => {
            let key = format!("{KEY}.input.id.position");
            match &position.value {
                Value::Bool(true) => ItemIdConfig::Position { zero_pad: false },
                Value::String(text) if text == "zero_padded" => {
                    ItemIdConfig::Position { zero_pad: true }
                }
                Value::String(text) => {
                    let error = check.invalid(
                        position.referenced,
                        &key,
                        format!("unknown value `{text}` for `{key}`"),
                    );
                    return Err(match did_you_mean(text, ["zero_padded"]) {
                        Some(best) => error.with_hint(format!("did you mean `{best}`?")),
                        None => error.with_hint("use `true` or `zero_padded`"),
                    });
                }
                other => {
                    return Err(check
                        .invalid(
                            position.referenced,
                            &key,
                            format!("`{key}` must be `true` or `zero_padded`, found {other}"),
                        )
                        .with_hint("leave `id` out to number items by position"));
                }
            }
        }
        Some(RawId {
            field: Some(field),
            position: Some(_),
        }) => {
            return Err(check
                .invalid(
                    field.referenced,
                    &format!("{KEY}.input.id"),
                    format!("`{KEY}.input.id` has both `field` and `position`"),
                )
                .with_hint("an item's id comes from one of them"));
        }
        Some(RawId {
            field: None,
            position: None,
        }) => {
            return Err(check
                .invalid(
                    raw.path.referenced,
                    &format!("{KEY}.input.id"),
                    format!("`{KEY}.input.id` names neither `field` nor `position`"),
                )
                .with_hint("e.g. `id: {field: id}` or `id: {position: true}`"));
        }
    };
    let pattern = match raw.pattern {
        Some(pattern) if format != InputFormat::Files => {
            return Err(check.invalid(
                pattern.referenced,
                &format!("{KEY}.input.pattern"),
                format!("`{KEY}.input.pattern` only applies to `format: files`"),
            ));
        }
        Some(pattern) => Some(check.non_empty(&format!("{KEY}.input.pattern"), &pattern)?),
        None => None,
    };
    Ok(ItemInputConfig {
        path,
        format,
        id,
        pattern,
        on_invalid: raw.on_invalid.unwrap_or_default(),
    })
}

fn chunking(check: &Check<'_>, raw: Option<RawChunking>) -> Result<ChunkingConfig, ConfigError> {
    let Some(raw) = raw else {
        return Ok(ChunkingConfig::TokenBudget {
            max_items: Some(DEFAULT_FIXED_SIZE),
            share_of_minute: DEFAULT_SHARE_OF_MINUTE,
            max_input_tokens: DEFAULT_MAX_INPUT_TOKENS,
        });
    };
    let section = format!("{KEY}.chunking");
    let strategy = raw.strategy.value;
    // A key that does nothing under the chosen strategy is a mistake worth pointing at.
    let unused = |name: &str, at: Location| {
        check
            .invalid(
                at,
                &format!("{section}.{name}"),
                format!(
                    "`{section}.{name}` does not apply to `strategy: {}`",
                    strategy_name(strategy)
                ),
            )
            .with_hint(match name {
                "size" => "`size` is for `strategy: fixed`",
                _ => "this key is for `strategy: token_budget`",
            })
    };
    if strategy != Strategy::Llm
        && let Some(sample) = &raw.sample
    {
        return Err(
            unused("sample", sample.referenced).with_hint("`sample` is for `strategy: llm`")
        );
    }
    // The keys only `token_budget` takes, with where each was written.
    let budget_keys = [
        ("max_items", raw.max_items.as_ref().map(|v| v.referenced)),
        (
            "share_of_minute",
            raw.share_of_minute.as_ref().map(|v| v.referenced),
        ),
        (
            "max_input_tokens",
            raw.max_input_tokens.as_ref().map(|v| v.referenced),
        ),
    ];
    match strategy {
        Strategy::Llm => {
            let size = [("size", raw.size.as_ref().map(|v| v.referenced))];
            for (name, at) in size.into_iter().chain(budget_keys) {
                if let Some(at) = at {
                    return Err(unused(name, at)
                        .with_hint("with `llm`, the orchestrator proposes the chunk size"));
                }
            }
            let sample = match &raw.sample {
                Some(value) if value.value == 0 || value.value > MAX_LLM_SAMPLE as u64 => {
                    return Err(check.invalid(
                        value.referenced,
                        &format!("{section}.sample"),
                        format!(
                            "`{section}.sample` must be between 1 and {MAX_LLM_SAMPLE}, found {}",
                            value.value
                        ),
                    ));
                }
                Some(value) => value.value as usize,
                None => DEFAULT_LLM_SAMPLE,
            };
            Ok(ChunkingConfig::Llm { sample })
        }
        Strategy::PerItem | Strategy::Fixed => {
            for (name, at) in budget_keys {
                if let Some(at) = at {
                    return Err(unused(name, at));
                }
            }
            if strategy == Strategy::PerItem {
                if let Some(size) = &raw.size {
                    return Err(unused("size", size.referenced));
                }
                return Ok(ChunkingConfig::PerItem);
            }
            let size = match &raw.size {
                Some(size) => check.at_least_one(&format!("{section}.size"), size)? as usize,
                None => DEFAULT_FIXED_SIZE,
            };
            Ok(ChunkingConfig::Fixed { size })
        }
        Strategy::TokenBudget => {
            if let Some(size) = &raw.size {
                return Err(unused("size", size.referenced)
                    .with_hint("with `token_budget`, cap chunks with `max_items`"));
            }
            let max_items = match &raw.max_items {
                Some(value) => {
                    Some(check.at_least_one(&format!("{section}.max_items"), value)? as usize)
                }
                None => None,
            };
            let share_of_minute = match &raw.share_of_minute {
                Some(share) if !(share.value > 0.0 && share.value <= 1.0) => {
                    return Err(check
                        .invalid(
                            share.referenced,
                            &format!("{section}.share_of_minute"),
                            format!(
                                "`{section}.share_of_minute` must be more than 0 and at most 1, found {}",
                                share.value
                            ),
                        )
                        .with_hint("e.g. 0.05: one chunk uses at most 5% of the input-tokens/min limit"));
                }
                Some(share) => share.value,
                None => DEFAULT_SHARE_OF_MINUTE,
            };
            let max_input_tokens = match &raw.max_input_tokens {
                Some(value) => check.at_least_one(&format!("{section}.max_input_tokens"), value)?,
                None => DEFAULT_MAX_INPUT_TOKENS,
            };
            Ok(ChunkingConfig::TokenBudget {
                max_items,
                share_of_minute,
                max_input_tokens,
            })
        }
    }
}

/// Read and check a written `output_schema` (a path or a mapping).
fn output_schema(
    check: &Check<'_>,
    key: &str,
    written: Spanned<Value>,
) -> Result<(Value, Option<PathBuf>), ConfigError> {
    let at = written.referenced;
    let (schema, schema_path) = match written.value {
        Value::String(text) if text.trim().is_empty() => {
            return Err(check.invalid(at, key, format!("`{key}` is empty")));
        }
        Value::String(text) => {
            let path = check.path(&text);
            let bytes = std::fs::read(&path).map_err(|error| {
                check
                    .invalid(
                        at,
                        key,
                        format!("cannot read the output schema {}: {error}", path.display()),
                    )
                    .with_hint("the path is relative to the workflow file")
            })?;
            let value: Value = serde_json::from_slice(&bytes).map_err(|error| {
                check.invalid(at, key, format!("{} is not JSON: {error}", path.display()))
            })?;
            (value, Some(path))
        }
        value @ Value::Object(_) => (value, None),
        other => {
            return Err(ConfigError::new(
                ConfigErrorKind::WrongType,
                check.origin,
                Some(at),
                key,
                format!(
                    "`{key}` must be a path to a JSON Schema file or a schema mapping, found {other}"
                ),
            ));
        }
    };
    OutputSchema::new(schema.clone()).map_err(|error| {
        let message = match &schema_path {
            Some(path) => format!("{}: {error}", path.display()),
            None => error.to_string(),
        };
        check.invalid(at, key, message)
    })?;
    Ok((schema, schema_path))
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::PerItem => "per_item",
        Strategy::Fixed => "fixed",
        Strategy::TokenBudget => "token_budget",
        Strategy::Llm => "llm",
    }
}

fn worker(check: &Check<'_>, raw: RawWorker, llm: bool) -> Result<ItemWorkerConfig, ConfigError> {
    let section = format!("{KEY}.worker");
    let instructions = check.non_empty(&format!("{section}.instructions"), &raw.instructions)?;
    let (template, template_path) = match &raw.template {
        Some(template) => {
            let key = format!("{section}.template");
            let path = check.path(&check.non_empty(&key, template)?);
            let text = std::fs::read_to_string(&path).map_err(|error| {
                check.invalid(
                    template.referenced,
                    &key,
                    format!(
                        "cannot read the prompt template {}: {error}",
                        path.display()
                    ),
                )
            })?;
            check_template(&text).map_err(|error| {
                check.invalid(
                    template.referenced,
                    &key,
                    format!("{}: {error}", path.display()),
                )
            })?;
            (Some(text), Some(path))
        }
        None => (None, None),
    };
    let key = format!("{section}.output_schema");
    let (schema, schema_path) = match raw.output_schema {
        Some(written) => {
            let (schema, path) = output_schema(check, &key, written)?;
            (Some(schema), path)
        }
        None if llm => (None, None),
        None => {
            // No span for a key that is not there: point at the section's `instructions`.
            return Err(ConfigError::new(
                ConfigErrorKind::MissingKey,
                check.origin,
                Some(raw.instructions.referenced),
                &key,
                format!("`{key}` is required in this `worker` section"),
            )
            .with_hint(
                "a path to a JSON Schema file or a schema mapping; only `chunking.strategy: llm` \
                 proposes one",
            ));
        }
    };
    let max_tokens = match &raw.max_tokens {
        Some(value) if value.value == 0 || value.value > 1_000_000 => {
            return Err(check.invalid(
                value.referenced,
                &format!("{section}.max_tokens"),
                format!(
                    "`{section}.max_tokens` must be between 1 and 1000000, found {}",
                    value.value
                ),
            ));
        }
        Some(value) => value.value as u32,
        None => DEFAULT_WORKER_MAX_TOKENS,
    };
    Ok(ItemWorkerConfig {
        instructions,
        template,
        template_path,
        output_schema: schema,
        output_schema_path: schema_path,
        output: raw.output.map(|o| o.value).unwrap_or_default(),
        max_tokens,
    })
}

fn aggregate(check: &Check<'_>, raw: RawAggregate) -> Result<ItemAggregateConfig, ConfigError> {
    let section = format!("{KEY}.aggregate");
    let field =
        |name: &str, value: &Spanned<String>| check.non_empty(&format!("{section}.{name}"), value);
    let mut count_by = Vec::new();
    for value in raw.count_by.unwrap_or_default() {
        count_by.push(field("count_by", &value)?);
    }
    let optional = |name: &str, value: Option<Spanned<String>>| match value {
        Some(value) => field(name, &value).map(Some),
        None => Ok(None),
    };
    let synthesis = match raw.synthesis {
        Some(raw) => Some(SynthesisConfig {
            instructions: field("synthesis.instructions", &raw.instructions)?,
            max_tokens: match &raw.max_tokens {
                Some(value) => check
                    .at_least_one(&format!("{section}.synthesis.max_tokens"), value)?
                    .min(1_000_000) as u32,
                None => DEFAULT_SYNTHESIS_MAX_TOKENS,
            },
        }),
        None => None,
    };
    Ok(ItemAggregateConfig {
        count_by,
        group_by: optional("group_by", raw.group_by)?,
        dedupe_by: optional("dedupe_by", raw.dedupe_by)?,
        flatten: optional("flatten", raw.flatten)?,
        synthesis,
    })
}

/// The JSON Schema of `workflow.items` (for `schema.rs`).
pub(crate) fn json_schema() -> Value {
    let field = |description: &str| serde_json::json!({"type": "string", "minLength": 1, "description": description});
    serde_json::json!({
        "type": "object",
        "description": "Item work: map workers over many records (JSONL, CSV or files) with schema-validated results and exact accounting. A workflow with `items:` needs no repository or plan.",
        "additionalProperties": false,
        "required": ["input", "worker"],
        "properties": {
            "input": {
                "type": "object",
                "additionalProperties": false,
                "required": ["path"],
                "properties": {
                    "path": field("A .jsonl or .csv file, a directory, or a glob of .txt/.md files (relative to the workflow file)."),
                    "format": { "enum": ["jsonl", "csv", "files"], "description": "Inferred from `path` when left out." },
                    "id": {
                        "type": "object",
                        "additionalProperties": false,
                        "description": "Where an item's id comes from (default: its position; for files, its path).",
                        "properties": {
                            "field": field("A top-level field of each record."),
                            "position": { "enum": [true, "zero_padded"] }
                        }
                    },
                    "pattern": field("For `format: files`: a glob under `path` (default: every file; files that are not text are failures)."),
                    "on_invalid": { "enum": ["record", "fail"], "description": "An input line that is not an item (not JSON, no id, a repeated id, an unreadable file): `record` it in failed.jsonl and run the rest (default), or `fail` the job before any work." }
                }
            },
            "chunking": {
                "type": "object",
                "additionalProperties": false,
                "required": ["strategy"],
                "properties": {
                    "strategy": { "enum": ["per_item", "fixed", "token_budget", "llm"], "default": "token_budget" },
                    "size": { "type": "integer", "minimum": 1, "description": "Items per chunk (`fixed`)." },
                    "max_items": { "type": "integer", "minimum": 1, "description": "At most this many items per chunk (`token_budget`)." },
                    "share_of_minute": { "type": "number", "exclusiveMinimum": 0, "maximum": 1, "default": DEFAULT_SHARE_OF_MINUTE, "description": "Share of the input-tokens/min limit one chunk may use (`token_budget`)." },
                    "max_input_tokens": { "type": "integer", "minimum": 1, "default": DEFAULT_MAX_INPUT_TOKENS, "description": "Input limit of one worker request (`token_budget`)." },
                    "sample": { "type": "integer", "minimum": 1, "maximum": MAX_LLM_SAMPLE, "default": DEFAULT_LLM_SAMPLE, "description": "Items the orchestrator sees before it proposes the chunking, the instructions and the record fields (`llm`)." }
                }
            },
            "worker": {
                "type": "object",
                "additionalProperties": false,
                "required": ["instructions"],
                "properties": {
                    "instructions": field("What each worker does with its items (with `chunking.strategy: llm`, the task the orchestrator plans for)."),
                    "template": field("A prompt template file with {{items}} (and {{instructions}}, {{count}}, {{chunk_id}}, {{tool}}, {{answer_with}})."),
                    "output_schema": { "type": ["string", "object"], "description": "The JSON Schema of one record (a file path or inline); `id` is added and required. Required unless `chunking.strategy: llm`, where the orchestrator proposes the fields." },
                    "output": { "enum": ["tool", "json_schema"], "default": "tool" },
                    "max_tokens": { "type": "integer", "minimum": 1, "default": DEFAULT_WORKER_MAX_TOKENS }
                }
            },
            "retries": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "resend_missing": { "type": "integer", "minimum": 0, "maximum": 10, "default": 1, "description": "Times an item missing from an answer is re-sent alone." },
                    "repairs": { "type": "integer", "minimum": 0, "maximum": 10, "default": 1, "description": "Repair attempts for invalid, duplicated or malformed answers." }
                }
            },
            "execution": { "enum": ["online", "batch"], "default": "online", "description": "`batch`: the Message Batches API, half price, may take hours." },
            "aggregate": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "count_by": { "type": "array", "items": { "type": "string", "minLength": 1 }, "description": "Fields to count results by in the summary." },
                    "group_by": field("Write results grouped by this field (groups.json)."),
                    "dedupe_by": field("Drop later results with the same value of this field."),
                    "flatten": field("Collect this list field of every result (flattened.json)."),
                    "synthesis": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["instructions"],
                        "properties": {
                            "instructions": field("What the orchestrator's model writes from the results (synthesis.md)."),
                            "max_tokens": { "type": "integer", "minimum": 1, "default": DEFAULT_SYNTHESIS_MAX_TOKENS }
                        }
                    }
                }
            },
            "output": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "format": { "enum": ["jsonl", "csv"], "default": "jsonl" },
                    "dir": field("Write outputs here instead of `.fanout/runs/<run_id>/`.")
                }
            }
        }
    })
}
