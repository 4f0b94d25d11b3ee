//! The commented starter file `fanout init` writes. A test parses it, so it always loads.

/// A commented starter workflow file: the seed's keys first, then the ones a real run needs,
/// each with its default.
pub const INIT_TEMPLATE: &str = r#"# fanout workflow file. Check it with `fanout run <this file> --dry-run` before any live run.
# Editor support: `fanout schema > fanout.schema.json`, then point yaml-language-server at it:
# yaml-language-server: $schema=./fanout.schema.json
workflow:
  name: my-workflow
  # The root task. `fanout run --task "..."` overrides it.
  task: "Describe the task for the orchestrator here."
  repository: .                   # repository root
  max_parallel_agents: 10         # start low; raise only after testing (1..100000)
  prompt_caching: true            # cache each agent's conversation and the shared prompt prefix

  # Which mode each role runs in: `default` (full model) or `fast` (cheaper, quicker).
  # Roles are lowercase names; `orchestrator` picks the planning model.
  mode_routing:
    orchestrator: default
    subtasks_analysis: default
    subtasks_codegen: fast
    subtasks_test_gen: fast

  # The model behind each mode and its price in US dollars per million tokens.
  models:
    default:
      provider: anthropic         # anthropic | openai
      model: claude-sonnet-4-5
      price_per_million_tokens: { input: 3.0, output: 15.0, cached_input: 0.30, cache_write: 3.75 }
    fast:
      provider: anthropic
      model: claude-haiku-4-5
      price_per_million_tokens: { input: 1.0, output: 5.0, cached_input: 0.10, cache_write: 1.25 }

  agent_permissions:
    file_access: scoped           # scoped | read_only | none
    external_api: deny            # deny | allow
    shell_exec: restricted        # restricted (allowlist only) | deny

  # Commands agents may run, matched as word prefixes. No shell syntax: commands run
  # without a shell, so `;`, `|`, `$(...)`, redirections and `FOO=1 cmd` are rejected.
  shell_allowlist:
    - git status
    - git diff
    - npm test

  # Globs relative to the repository root. `.git`, `.fanout`, `.env*`, `*.pem` and
  # `id_rsa*` are always protected; `protected` adds to them.
  paths:
    allow: ["**"]
    deny: []
    protected: []

  # Work touching these stays on the `default` mode (authentication, security, payments).
  sensitive_paths:
    - "**/auth/**"
    - "**/*auth*"
    - "**/security/**"
    - "**/*security*"
    - "**/payment*/**"
    - "**/*payment*"
    - "**/billing/**"

  # Fleet-wide rate limits; leave a limit out to learn it from the provider's headers.
  rate_limits: {}
    # requests_per_minute: 50
    # input_tokens_per_minute: 30000
    # output_tokens_per_minute: 8000
    # max_in_flight: 32
    # The fleet-wide retry budget: a retry spends a token (not a 429's retry, paced by the
    # server's retry-after; not one during an outage, paced by one probe at a time), a retry
    # that succeeds gives it back, and tokens come back per success and per second.
    # retry_budget: {initial: 20, max: 200, per_success: 0.1, per_second: 1}

  budgets:
    agent:
      max_turns: 50
      max_tokens: 500000
      # max_dollars: 2.00
      max_wall_time: 15m
    run:
      # max_tokens: 20000000
      max_dollars: 50.00
      # max_wall_time: 2h

  logging:
    level: verbose                # quiet | normal | verbose
    destination: .fanout/logs/workflow-run-{timestamp}.json

  rollback:
    on_failure: checkpoint        # checkpoint (revert to the last clean checkpoint) | none
    checkpoint_interval: 10       # every 10 sub-agent completions
    destructive_checkpoint_interval: 1   # deletes and renames

  # Your test command, run after the workflow (sandboxed); its exit status decides: anything
  # but 0 makes the run `tests_failed` (exit 7). Set it to what your project runs.
  # verify:
  #   test_command: npm test
  #   baseline: true              # also run it on the base commit, to tell "broken by this run"
"#;
