//! The workflow file: the seed example parses as written, the `init` template and the JSON
//! Schema agree with the parser, and broken files give located, pinned messages.

use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use fanout_core::config::{
    self, Config, ConfigErrorKind, ExternalApi, FileAccess, LogLevel, Mode, OnFailure, ShellExec,
};

const SEED: &str = include_str!("../fixtures/config/seed-claude-workflows.yaml");

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

#[test]
fn seed_example_parses_as_written() {
    let config = Config::from_path(fixture("seed-claude-workflows.yaml")).unwrap();
    assert_eq!(config.name, "auth-refactor");
    assert_eq!(config.max_parallel_agents, 50);
    assert_eq!(config.mode_for_role("orchestrator"), Mode::Default);
    assert_eq!(config.mode_for_role("subtasks_analysis"), Mode::Default);
    assert_eq!(config.mode_for_role("subtasks_codegen"), Mode::Fast);
    assert_eq!(config.mode_for_role("subtasks_test_gen"), Mode::Fast);
    assert_eq!(config.mode_routing.len(), 4);
    assert_eq!(config.agent_permissions.file_access, FileAccess::Scoped);
    assert_eq!(config.agent_permissions.external_api, ExternalApi::Deny);
    assert_eq!(config.agent_permissions.shell_exec, ShellExec::Restricted);
    assert_eq!(config.logging.level, LogLevel::Verbose);
    assert_eq!(
        config.logging.destination,
        "./logs/workflow-run-{timestamp}.json"
    );
    assert_eq!(
        config.logging.destination_for("20260131T093000Z"),
        Path::new("./logs/workflow-run-20260131T093000Z.json")
    );
    assert_eq!(
        config
            .logging
            .destination_at(UNIX_EPOCH + Duration::from_secs(1_769_851_800)),
        Path::new("./logs/workflow-run-2026-01-31T09-30-00Z.json")
    );
    assert_eq!(config.rollback.on_failure, OnFailure::Checkpoint);
    assert_eq!(config.rollback.checkpoint_interval, 10);
    assert_eq!(config.rollback.destructive_checkpoint_interval, 1);

    // Defaults for everything the seed leaves out.
    assert_eq!(config.task, None);
    assert_eq!(config.repository, Path::new("."));
    assert_eq!(config.orchestrator_model().model, "claude-sonnet-4-5");
    assert_eq!(
        config.model_for_role("subtasks_codegen").model,
        "claude-haiku-4-5"
    );
    assert_eq!(config.model_for_role("subtasks_codegen").input_price, 1.0);
    assert_eq!(config.model_for_role("subtasks_codegen").output_price, 5.0);
    assert_eq!(
        config.model_for_role("unknown_role").model,
        "claude-sonnet-4-5"
    );
    // The seed's dry run shows `[git status, npm test]` as allowlisted.
    let allowlist: Vec<String> = config
        .shell_allowlist
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(allowlist, ["git status", "npm test"]);
    assert!(config.shell_command_allowed(&["git", "status"]));
    assert!(!config.shell_command_allowed(&["npm", "install"]));
    assert!(config.paths.is_writable("src/auth/jwt.ts"));
    assert!(!config.paths.is_writable(".git/config"));
    assert!(!config.paths.is_writable("packages/api/.env.local"));
    assert!(
        config.paths.is_allowed(".git/config"),
        "readable, never writable"
    );
    assert_eq!(config.protected_paths(), config::BUILTIN_PROTECTED_PATHS);
    assert!(config.is_sensitive("src/auth/jwt.ts"));
    assert!(config.is_sensitive("src/payments/refund.ts"));
    assert!(!config.is_sensitive("src/ui/button.tsx"));
    assert_eq!(config.budgets.agent.max_turns, 50);
    assert_eq!(config.budgets.agent.max_wall_time, Duration::from_secs(900));
    assert_eq!(config.budgets.run.max_dollars, None);
    assert_eq!(config.rate_limits, config::RateLimits::default());
    assert!(config.verify.test_command.is_none());
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    assert_eq!(
        Config::from_str(SEED, "seed.yaml").unwrap().name,
        "auth-refactor"
    );
}

#[test]
fn init_template_parses_with_its_documented_values() {
    let config = Config::from_str(config::INIT_TEMPLATE, "fanout.yaml").unwrap();
    assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    let allowlist: Vec<String> = config
        .shell_allowlist
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(allowlist, ["git status", "git diff", "npm test"]);
    assert!(config.shell_command_allowed(&["npm", "test", "--", "--ci"]));
    assert!(!config.shell_command_allowed(&["npm", "install"]));
    assert_eq!(config.budgets.run.max_dollars, Some(50.0));
    // No test command until the user names theirs: `npm test` in a repository without a
    // package.json made a newcomer's first live run `tests_failed`.
    assert!(config.verify.test_command.is_none());
    // The template spells out the defaults: it loads to the same values as a bare file.
    let bare = Config::from_str("workflow:\n  name: my-workflow\n", "fanout.yaml").unwrap();
    assert_eq!(config.models, bare.models);
    assert_eq!(config.sensitive_paths, bare.sensitive_paths);
    assert_eq!(config.paths, bare.paths);
    assert_eq!(config.rollback, bare.rollback);
    assert_eq!(config.budgets.agent, bare.budgets.agent);
    assert_eq!(config.max_parallel_agents, bare.max_parallel_agents);
}

/// A light JSON Schema check: every key of `value` is a known property, every required key is
/// present, and enum values are among the allowed ones.
fn check_against_schema(schema: &serde_json::Value, value: &serde_json::Value, path: &str) {
    use serde_json::Value;
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        assert!(
            allowed.contains(value),
            "{path}: {value} not in {allowed:?}"
        );
    }
    let type_ok = match schema.get("type").and_then(Value::as_str) {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        _ => true,
    };
    assert!(type_ok, "{path}: {value} is not of type {}", schema["type"]);
    let Some(object) = value.as_object() else {
        return;
    };
    for required in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let required = required.as_str().unwrap();
        assert!(object.contains_key(required), "{path}: missing {required}");
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    for (key, child) in object {
        let child_schema = match properties.and_then(|p| p.get(key)) {
            Some(child_schema) => child_schema,
            None => match schema.get("additionalProperties") {
                Some(Value::Bool(false)) => panic!("{path}: unknown key {key}"),
                Some(additional @ Value::Object(_)) => additional,
                _ => continue,
            },
        };
        check_against_schema(child_schema, child, &format!("{path}.{key}"));
    }
}

#[test]
fn seed_and_template_match_the_json_schema() {
    let schema = config::json_schema();
    assert_eq!(schema["required"][0], "workflow");
    for (name, text) in [("seed", SEED), ("template", config::INIT_TEMPLATE)] {
        let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        check_against_schema(&schema, &value, name);
    }
    // The check itself catches a stray key.
    let stray: serde_json::Value =
        serde_saphyr::from_str("workflow:\n  name: x\n  colour: red\n").unwrap();
    let caught = std::panic::catch_unwind(|| check_against_schema(&schema, &stray, "stray"));
    assert!(caught.is_err());
}

#[test]
fn warnings_flag_risky_but_legal_settings() {
    let text = "\
workflow:
  name: wide-open
  agent_permissions:
    shell_exec: unrestricted
  shell_allowlist:
    - bash
  paths:
    allow: [\"src/**\", \".git/**\"]
  logging:
    destination: ./logs/run.json
";
    let config = Config::from_str(text, "wide-open.yaml").unwrap();
    let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
    insta::assert_snapshot!("config_warnings", warnings.join("\n"));
    assert!(config.shell_command_allowed(&["rm", "-rf", "build"]));
}

#[test]
fn best_effort_sandbox_is_accepted_only_with_a_warning() {
    let text = "workflow:\n  name: x\n  agent_permissions:\n    sandbox: best_effort\n";
    let config = Config::from_str(text, "weak.yaml").unwrap();
    assert_eq!(
        config.agent_permissions.sandbox,
        config::SandboxSetting::BestEffort
    );
    let warnings: Vec<String> = config.warnings().iter().map(|w| w.to_string()).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("weak.yaml:4:14: warning: `sandbox: best_effort`"),
        "{warnings:?}"
    );
    // The default (and `enforce` spelled out) fails closed without a word.
    for text in [
        "workflow:\n  name: x\n",
        "workflow:\n  name: x\n  agent_permissions:\n    sandbox: enforce\n",
    ] {
        let config = Config::from_str(text, "strict.yaml").unwrap();
        assert_eq!(
            config.agent_permissions.sandbox,
            config::SandboxSetting::Enforce
        );
        assert!(config.warnings().is_empty(), "{:?}", config.warnings());
    }
    // The schema knows the key and its values.
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    check_against_schema(&config::json_schema(), &value, "weak");
}

#[test]
fn protected_paths_only_grow() {
    let text = "workflow:\n  name: x\n  paths:\n    protected: []\n";
    let config = Config::from_str(text, "x.yaml").unwrap();
    assert_eq!(config.protected_paths(), config::BUILTIN_PROTECTED_PATHS);
    let text = "workflow:\n  name: x\n  paths:\n    protected: [\"migrations/**\"]\n";
    let config = Config::from_str(text, "x.yaml").unwrap();
    assert_eq!(config.protected_paths().last().unwrap(), "migrations/**");
    assert_eq!(
        config.protected_paths().len(),
        config::BUILTIN_PROTECTED_PATHS.len() + 1
    );
    assert!(!config.paths.is_writable("migrations/001.sql"));
}

#[test]
fn missing_file_is_an_io_error() {
    let err = Config::from_path(fixture("does-not-exist.yaml")).unwrap_err();
    assert_eq!(err.kind, ConfigErrorKind::Io);
}

/// Render an error for a snapshot: the message as users see it, then the typed fields.
fn broken(origin: &str, text: &str) -> String {
    let err = Config::from_str(text, origin).unwrap_err();
    assert_eq!(err.path, Path::new(origin));
    assert!(
        err.line.is_some() && err.column.is_some(),
        "no location in {err}"
    );
    format!("{err}\nkind: {:?}\nkey: {}", err.kind, err.key)
}

macro_rules! broken_config {
    ($name:ident, $origin:expr, $text:expr) => {
        #[test]
        fn $name() {
            let text: &str = $text;
            insta::with_settings!({ description => text, omit_expression => true }, {
                insta::assert_snapshot!(broken($origin, text));
            });
        }
    };
}

mod broken {
    use super::broken;

    broken_config!(
        unknown_top_level_key,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\nversion: 2\n"
    );
    broken_config!(
        misspelled_key,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  max_paralel_agents: 50\n"
    );
    broken_config!(
        key_at_the_wrong_level,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  checkpoint_interval: 10\n"
    );
    broken_config!(
        workflow_key_at_top_level,
        "workflow.yaml",
        "name: auth-refactor\nmax_parallel_agents: 5\n"
    );
    broken_config!(
        string_for_max_parallel_agents,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  max_parallel_agents: fifty\n"
    );
    broken_config!(
        max_parallel_agents_out_of_range,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  max_parallel_agents: 1000000\n"
    );
    broken_config!(
        zero_checkpoint_interval,
        "rollback.yaml",
        "workflow:\n  name: auth-refactor\n  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: 0\n"
    );
    broken_config!(
        negative_checkpoint_interval,
        "rollback.yaml",
        "workflow:\n  name: auth-refactor\n  rollback:\n    checkpoint_interval: -5\n"
    );
    broken_config!(
        destructive_interval_looser_than_checkpoint_interval,
        "rollback.yaml",
        "workflow:\n  name: x\n  rollback:\n    checkpoint_interval: 5\n    destructive_checkpoint_interval: 20\n"
    );
    broken_config!(
        unknown_mode_in_mode_routing,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  mode_routing:\n    orchestrator: default\n    subtasks_codegen: fsat\n"
    );
    broken_config!(
        invalid_role_name,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  mode_routing:\n    SubtasksCodegen: fast\n"
    );
    broken_config!(
        unknown_external_api_value,
        "permissions.yaml",
        "workflow:\n  name: x\n  agent_permissions:\n    file_access: scoped\n    external_api: block\n"
    );
    broken_config!(
        unknown_shell_exec_value,
        "permissions.yaml",
        "workflow:\n  name: x\n  agent_permissions:\n    shell_exec: allowlist\n"
    );
    broken_config!(
        unknown_sandbox_value,
        "permissions.yaml",
        "workflow:\n  name: x\n  agent_permissions:\n    sandbox: off\n"
    );
    broken_config!(
        shell_allowlist_with_semicolon,
        "ci-workflow.yaml",
        "workflow:\n  name: ci\n  shell_allowlist:\n    - git status\n    - npm test; rm -rf /\n"
    );
    broken_config!(
        shell_allowlist_with_command_substitution,
        "ci-workflow.yaml",
        "workflow:\n  name: ci\n  shell_allowlist:\n    - \"echo $(cat .env)\"\n"
    );
    broken_config!(
        shell_allowlist_with_env_prefix,
        "ci-workflow.yaml",
        "workflow:\n  name: ci\n  shell_allowlist: [\"NODE_ENV=test npm test\"]\n"
    );
    broken_config!(
        test_command_with_pipe,
        "ci-workflow.yaml",
        "workflow:\n  name: ci\n  verify:\n    test_command: npm test | tee out.log\n"
    );
    broken_config!(
        bad_glob,
        "paths.yaml",
        "workflow:\n  name: x\n  paths:\n    deny:\n      - \"src/{auth,payments\"\n"
    );
    broken_config!(
        absolute_path_glob,
        "paths.yaml",
        "workflow:\n  name: x\n  paths:\n    allow: [\"/src/auth/**\"]\n"
    );
    broken_config!(
        protected_path_removal,
        "paths.yaml",
        "workflow:\n  name: x\n  paths:\n    protected:\n      - \"!.env\"\n"
    );
    broken_config!(
        duplicate_key,
        "claude-workflows.yaml",
        "workflow:\n  name: auth-refactor\n  max_parallel_agents: 10\n  max_parallel_agents: 50\n"
    );
    broken_config!(
        tab_indentation,
        "claude-workflows.yaml",
        "workflow:\n\tname: auth-refactor\n"
    );
    broken_config!(
        unclosed_quote,
        "claude-workflows.yaml",
        "workflow:\n  name: \"auth-refactor\n  max_parallel_agents: 5\n"
    );
    broken_config!(empty_file, "empty.yaml", "\n# nothing here yet\n\n");
    broken_config!(
        top_level_list,
        "list.yaml",
        "- workflow:\n    name: auth-refactor\n"
    );
    broken_config!(missing_workflow, "settings.yaml", "{}\n");
    broken_config!(
        workflow_is_null,
        "claude-workflows.yaml",
        "# TODO fill in\nworkflow:\n"
    );
    broken_config!(
        missing_name,
        "claude-workflows.yaml",
        "workflow:\n  max_parallel_agents: 5\n"
    );
    broken_config!(
        bad_duration,
        "budgets.yaml",
        "workflow:\n  name: x\n  budgets:\n    agent:\n      max_wall_time: ten minutes\n"
    );
    broken_config!(
        negative_price,
        "models.yaml",
        "workflow:\n  name: x\n  models:\n    fast:\n      model: claude-haiku-4-5\n      price_per_million_tokens: { input: -1, output: 5 }\n"
    );
    broken_config!(
        model_without_price,
        "models.yaml",
        "workflow:\n  name: x\n  models:\n    fast:\n      model: claude-haiku-4-5\n"
    );
    broken_config!(
        destination_without_file_name,
        "logging.yaml",
        "workflow:\n  name: x\n  logging:\n    level: verbose\n    destination: ./logs/\n"
    );
    broken_config!(
        misspelled_timestamp_placeholder,
        "logging.yaml",
        "workflow:\n  name: x\n  logging:\n    destination: ./logs/workflow-run-{timestmp}.json\n"
    );
    broken_config!(
        output_schema_not_a_mapping,
        "tickets.yaml",
        "workflow:\n  name: tickets\n  output_schema: \"see schema.json\"\n"
    );
    broken_config!(
        alias_bomb,
        "bomb.yaml",
        "workflow:
  name: bomb
  output_schema:
    a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"
    );
}

/// `workflow.items:` (item work): broken sections give located, pinned messages.
mod broken_items {
    use super::broken;

    broken_config!(
        items_misspelled_key,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    worker: {instructions: x, output_schema: {type: object}}\n    execuiton: batch\n"
    );
    broken_config!(
        items_llm_chunking_with_a_size,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    chunking:\n      strategy: llm\n      size: 30\n    worker: {instructions: x}\n"
    );
    broken_config!(
        items_llm_sample_out_of_range,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    chunking:\n      strategy: llm\n      sample: 5000\n    worker: {instructions: x}\n"
    );
    broken_config!(
        items_sample_without_llm,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    chunking:\n      strategy: fixed\n      sample: 5\n    worker: {instructions: x, output_schema: {type: object}}\n"
    );
    broken_config!(
        items_output_schema_missing,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    worker: {instructions: x}\n"
    );
    broken_config!(
        items_unknown_strategy,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    chunking:\n      strategy: token_budgt\n    worker: {instructions: x, output_schema: {type: object}}\n"
    );
    broken_config!(
        items_size_with_token_budget,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    chunking:\n      strategy: token_budget\n      size: 30\n    worker: {instructions: x, output_schema: {type: object}}\n"
    );
    broken_config!(
        items_missing_schema_file,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: t.jsonl}\n    worker:\n      instructions: x\n      output_schema: no-such-schema.json\n"
    );
    broken_config!(
        items_unknown_input_format,
        "items.yaml",
        "workflow:\n  name: tickets\n  items:\n    input: {path: tickets.parquet}\n    worker: {instructions: x, output_schema: {type: object}}\n"
    );
}

#[test]
fn the_ticket_example_parses_as_item_work() {
    use fanout_core::config::items::{ChunkingConfig, Execution, InputFormat, ItemIdConfig};
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/support-tickets/workflow.yaml");
    let config = Config::from_path(&path).unwrap();
    let items = config.items.as_ref().unwrap();
    assert_eq!(items.input.format, InputFormat::Jsonl);
    assert_eq!(items.input.id, ItemIdConfig::Field("id".into()));
    assert!(
        items
            .input
            .path
            .ends_with("examples/support-tickets/tickets.jsonl")
    );
    assert_eq!(
        items.chunking,
        ChunkingConfig::TokenBudget {
            max_items: Some(30),
            share_of_minute: 0.02,
            max_input_tokens: 150_000
        }
    );
    assert_eq!(items.execution, Execution::Online);
    assert_eq!(
        items.aggregate.count_by,
        ["category", "priority", "sentiment"]
    );
    assert!(items.aggregate.synthesis.is_some());
    assert_eq!(
        items.worker.output_schema.as_ref().unwrap()["title"],
        "Support ticket triage"
    );
    assert_eq!(config.mode_for_role("items_worker"), Mode::Fast);
}

#[test]
fn the_retry_budget_is_configurable_and_matches_the_schema() {
    let text = "\
workflow:
  name: budgeted
  rate_limits:
    retry_budget: {initial: 50, max: 500, per_success: 0.2, per_second: 5}
";
    let config = Config::from_str(text, "budget.yaml").unwrap();
    let budget = fanout_core::plan::retry_budget_config(&config);
    assert_eq!(
        (
            budget.initial,
            budget.max,
            budget.per_success,
            budget.per_second
        ),
        (50.0, 500.0, 0.2, 5.0)
    );
    let value: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    check_against_schema(&config::json_schema(), &value, "budget");
    // Left out, the defaults.
    let plain = Config::from_str("workflow:\n  name: plain\n", "plain.yaml").unwrap();
    assert_eq!(
        fanout_core::plan::retry_budget_config(&plain),
        fanout_core::retry::RetryBudgetConfig::default()
    );
    let negative = "workflow:\n  name: x\n  rate_limits:\n    retry_budget: {per_second: -1}\n";
    let err = Config::from_str(negative, "negative.yaml").unwrap_err();
    assert_eq!(err.key, "workflow.rate_limits.retry_budget.per_second");
}
