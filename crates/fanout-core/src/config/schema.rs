//! The JSON Schema of the workflow file, for editors (`fanout schema`, yaml-language-server).
//!
//! Hand-written rather than derived: the serde types carry source spans and human
//! durations that a derive would describe wrongly, and a proc-macro crate costs build time.
//! A test walks the schema and the serde types side by side so the two cannot drift apart.
//! The schema also answers "where does this key belong?" for unknown-key hints.

use serde_json::{Value, json};

fn glob_list(description: &str) -> Value {
    json!({
        "type": "array",
        "description": description,
        "items": { "type": "string", "minLength": 1 }
    })
}

fn price() -> Value {
    json!({ "type": "number", "minimum": 0 })
}

fn model(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "required": ["model", "price_per_million_tokens"],
        "properties": {
            "provider": { "enum": ["anthropic", "openai"], "default": "anthropic" },
            "model": { "type": "string", "minLength": 1 },
            "price_per_million_tokens": {
                "type": "object",
                "description": "US dollars per million tokens.",
                "additionalProperties": false,
                "required": ["input", "output"],
                "properties": {
                    "input": price(),
                    "output": price(),
                    "cached_input": price(),
                    "cache_write": price()
                }
            }
        }
    })
}

fn positive_integer(description: &str) -> Value {
    json!({ "type": "integer", "minimum": 1, "description": description })
}

fn duration(description: &str) -> Value {
    json!({
        "type": "string",
        "description": description,
        "pattern": "^\\s*[0-9]",
        "examples": ["90s", "10m", "1h 30m"]
    })
}

fn retry_budget_schema() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "description": "The fleet-wide retry budget: every retry (not of a 429, not during an outage) spends a token; a retry that succeeds gives it back.",
        "properties": {
            "initial": non_negative("Tokens at the start, and the most time refill saves up (default 20)."),
            "max": non_negative("Most tokens held (default 200)."),
            "per_success": non_negative("Tokens each success earns (default 0.1)."),
            "per_second": non_negative("Tokens earned per second, up to `initial` (default 1).")
        }
    })
}

fn non_negative(description: &str) -> Value {
    json!({ "type": "number", "minimum": 0, "description": description })
}

fn dollars(description: &str) -> Value {
    json!({ "type": "number", "exclusiveMinimum": 0, "description": description })
}

fn prompt_caching() -> Value {
    json!({
        "type": "boolean", "default": true,
        "description": "Mark each agent's conversation and the prefix all agents share for prompt caching (Anthropic reads cost a tenth of input). Off only to compare."
    })
}

/// The JSON Schema (draft 2020-12) of a workflow file.
pub fn json_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/fanout-dev/fanout/schemas/workflow.json",
        "title": "fanout workflow",
        "description": "A fanout workflow file: one orchestrator plans, scoped sub-agents run in parallel.",
        "type": "object",
        "additionalProperties": false,
        "required": ["workflow"],
        "properties": {
            "workflow": {
                "type": "object",
                "additionalProperties": false,
                "required": ["name"],
                "properties": {
                    "name": { "type": "string", "minLength": 1, "description": "Name shown in reports and logs." },
                    "task": { "type": "string", "minLength": 1, "description": "The root task; `--task` overrides it." },
                    "repository": { "type": "string", "minLength": 1, "default": ".", "description": "Repository root." },
                    "max_parallel_agents": {
                        "type": "integer", "minimum": 1, "maximum": 100000, "default": 10,
                        "description": "Most sub-agents running at once. Start low; raise after testing."
                    },
                    "mode_routing": {
                        "type": "object",
                        "description": "Role → mode. `orchestrator` picks the planning model (default: `default`).",
                        "propertyNames": { "pattern": "^[a-z_]+$" },
                        "additionalProperties": { "enum": ["fast", "default"] }
                    },
                    "models": {
                        "type": "object",
                        "description": "The model behind each mode.",
                        "additionalProperties": false,
                        "properties": {
                            "default": model("Default mode (default: claude-sonnet-4-5, $3/$15)."),
                            "fast": model("Fast mode (default: claude-haiku-4-5, $1/$5).")
                        }
                    },
                    "agent_permissions": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "file_access": { "enum": ["scoped", "read_only", "none"], "default": "scoped" },
                            "external_api": { "enum": ["deny", "allow"], "default": "deny" },
                            "shell_exec": { "enum": ["restricted", "deny", "unrestricted"], "default": "restricted" },
                            "sandbox": {
                                "enum": ["enforce", "best_effort"],
                                "default": "enforce",
                                "description": "`enforce` refuses to run commands the kernel cannot fully confine; `best_effort` runs them anyway (shown in the dry-run report)."
                            }
                        }
                    },
                    "shell_allowlist": {
                        "type": "array",
                        "description": "Commands agents may run (argv prefixes, no shell syntax), e.g. `git status`. Default when absent: `git status`, `npm test`; `[]` allows none.",
                        "items": { "type": "string", "minLength": 1, "pattern": "^[^;&|$`<>()\\\\]*$" }
                    },
                    "paths": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "allow": glob_list("Globs agents may use (default: everything)."),
                            "deny": glob_list("Globs no agent may use."),
                            "protected": glob_list("Globs never writable, added to the built-in set (.git, .fanout, .env, keys).")
                        }
                    },
                    "sensitive_paths": glob_list("Globs whose work stays on the default mode (default: auth, security, payments)."),
                    "rate_limits": {
                        "type": "object",
                        "additionalProperties": false,
                        "description": "Fleet-wide limits; unset limits are learned from response headers.",
                        "properties": {
                            "requests_per_minute": positive_integer("Requests per minute."),
                            "input_tokens_per_minute": positive_integer("Input tokens per minute."),
                            "output_tokens_per_minute": positive_integer("Output tokens per minute."),
                            "tokens_per_minute": positive_integer("Input plus output tokens per minute."),
                            "max_in_flight": positive_integer("Most requests in flight at once."),
                            "retry_budget": retry_budget_schema()
                        }
                    },
                    "budgets": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "agent": {
                                "type": "object",
                                "additionalProperties": false,
                                "properties": {
                                    "max_turns": positive_integer("Model turns per agent (default 50)."),
                                    "max_tokens": positive_integer("Tokens per agent (default 500000)."),
                                    "max_dollars": dollars("Dollars per agent."),
                                    "max_wall_time": duration("Wall time per agent (default 15m).")
                                }
                            },
                            "run": {
                                "type": "object",
                                "additionalProperties": false,
                                "properties": {
                                    "max_tokens": positive_integer("Tokens for the whole run."),
                                    "max_dollars": dollars("Dollars for the whole run."),
                                    "max_wall_time": duration("Wall time for the whole run."),
                                    "enforce_estimate": { "type": "boolean", "description": "Refuse a plan whose estimate exceeds these limits (default false: a warning; max_dollars is always enforced on actual spend)." }
                                }
                            }
                        }
                    },
                    "logging": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "level": { "enum": ["quiet", "normal", "verbose"], "default": "normal" },
                            "destination": {
                                "type": "string", "minLength": 1,
                                "default": ".fanout/logs/workflow-run-{timestamp}.json",
                                "description": "Log file; `{timestamp}` is replaced by the run's start time."
                            }
                        }
                    },
                    "rollback": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "on_failure": { "enum": ["checkpoint", "none"], "default": "checkpoint" },
                            "checkpoint_interval": {
                                "type": "integer", "minimum": 1, "default": 10,
                                "description": "Checkpoint after every N agent completions."
                            },
                            "destructive_checkpoint_interval": {
                                "type": "integer", "minimum": 1, "default": 1,
                                "description": "The interval for deletes and renames; not looser than checkpoint_interval."
                            }
                        }
                    },
                    "verify": {
                        "type": "object",
                        "additionalProperties": false,
                        "properties": {
                            "test_command": { "type": "string", "minLength": 1, "description": "Run after the workflow, e.g. `npm test`; its exit status decides (0 passes)." },
                            "baseline": { "type": "boolean", "description": "Also run the test command on the base commit first, to tell tests broken by the run from tests that failed before it." }
                        }
                    },
                    "output_schema": {
                        "type": "object",
                        "description": "JSON Schema every agent result must satisfy."
                    },
                    "items": super::items::json_schema(),
                    "prompt_caching": prompt_caching()
                }
            }
        }
    })
}

/// Dotted paths of the sections (objects with fixed keys) that have a key `field`.
pub(crate) fn sections_with_key(field: &str) -> Vec<String> {
    let mut found = Vec::new();
    collect_sections(&json_schema(), "", field, &mut found);
    found
}

fn collect_sections(schema: &Value, path: &str, field: &str, found: &mut Vec<String>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    if properties.contains_key(field) && !path.is_empty() {
        found.push(path.to_owned());
    }
    for (key, child) in properties {
        let child_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        collect_sections(child, &child_path, field, found);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn finds_where_a_key_belongs() {
        assert_eq!(
            sections_with_key("checkpoint_interval"),
            vec!["workflow.rollback".to_owned()]
        );
        assert_eq!(sections_with_key("max_tokens").len(), 4);
        assert!(sections_with_key("nothing_like_this").is_empty());
    }

    /// Every section of the schema lists exactly the keys serde accepts: feed each section a
    /// key nobody uses and compare the "expected one of" list serde reports.
    #[test]
    fn schema_keys_match_the_serde_types() {
        fn check(schema: &Value, path: &[&str]) {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            if schema.get("additionalProperties") != Some(&Value::Bool(false)) {
                return;
            }
            // Build `workflow:\n  rollback:\n    zz_probe: 1` plus the required siblings.
            let mut yaml = String::new();
            for (depth, segment) in path.iter().enumerate() {
                yaml.push_str(&format!("{}{segment}:\n", "  ".repeat(depth)));
            }
            yaml.push_str(&format!("{}zz_probe: 1\n", "  ".repeat(path.len())));
            let mut schema_keys: Vec<String> = properties.keys().cloned().collect();
            schema_keys.sort();
            let err = super::super::Config::from_str(&yaml, "probe.yaml").unwrap_err();
            let expected = err.hint.clone().unwrap_or_default();
            let mut serde_keys: Vec<String> = expected
                .trim_start_matches("expected one of ")
                .split(", ")
                .map(|key| key.trim_matches('`').to_owned())
                .collect();
            serde_keys.sort();
            assert_eq!(
                serde_keys,
                schema_keys,
                "keys of `{}` ({err})",
                path.join(".")
            );
            for (key, child) in properties {
                let mut child_path = path.to_vec();
                child_path.push(key);
                check(child, &child_path);
            }
        }
        check(&json_schema(), &[]);
    }
}
