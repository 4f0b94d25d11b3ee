//! Estimates of what a validated plan will cost: tokens, dollars and wall time.
//!
//! A model of one agent, deliberately simple and stated here so the numbers can be checked:
//! - the prompt every turn starts from: the system prompt, the agent's brief and the specs of
//!   its tools, exactly as the engine words them (bytes / 4 tokens); against a model API at
//!   least [`API_PROMPT_TOKENS`] (the provider adds its own tool-use instructions);
//! - turns: reading (its scope; against the simulator, whose agents read only what they
//!   change, the files it may change that exist), writing (a call per file it may change),
//!   and the report; one call a turn against a model API, batches of up to
//!   [`CALLS_PER_TURN`] against the simulator; capped by `budgets.agent.max_turns`;
//! - output per turn: [`CALL_TOKENS`] per tool call, what a write says (the whole file
//!   against a model API; against the simulator an edit of [`EDIT_TOKENS`] at most, and
//!   [`NEW_FILE_TOKENS`] for a file to create), and [`OUTPUT_TOKENS_PER_TURN`] of reasoning
//!   (none against the simulator, which answers with tool calls alone). The model API figures
//!   are assumptions (they reproduce the seed's 2.1M tokens for the auth-refactor plan);
//!   earlier runs of the same models replace them (below);
//! - input: every turn resends the conversation: the prompt, every earlier answer and every
//!   tool result ([`RESULT_TOKENS`] per call plus the files read);
//! - caching (`workflow.prompt_caching`, on by default), as `provider::cache` marks requests:
//!   a turn whose request reaches the model's minimum cacheable length writes it to the
//!   cache, and the next turn reads it back; turn 1 reads the prefix agents share (the tools
//!   and the system prompt) when another agent already wrote it. Priced at the cache rates.
//!
//! Tokens are bytes / 4. Dollars use the workflow's price table. The expected wall time is the
//! largest of: the dependency chain and the concurrency bound (agents' latencies, at most
//! `max_parallel_agents` at a time), requests / RPM, and tokens / TPM for each configured
//! limit. It is an expectation under the stated latency, not a bound: a faster API makes it
//! shorter, retries and queueing longer.
//!
//! [`Calibration`] replaces the assumptions with facts where there are some: the simulator's
//! configured latency, or what agents of the same model actually used in earlier runs of the
//! repository (tokens, dollars and calls per agent, seconds per call). The estimate's
//! [`Estimate::basis`] says which, in words, and the report prints it.

use crate::config::price::TokenUse;
use std::time::Duration;

use serde::Serialize;

use super::scan::RepoScan;
use super::validate::{Validation, Violation, ViolationKind};
use crate::config::{Config, Mode};

/// The shared prompt of an agent's request as a model API counts it, at least: our system
/// prompt and tools plus the provider's own tool-use instructions.
pub const API_PROMPT_TOKENS: u64 = 2_000;
/// Reasoning (prose) tokens per turn, besides the tool calls.
pub const OUTPUT_TOKENS_PER_TURN: u64 = 1_100;
/// One tool call: its id, name and small arguments.
pub const CALL_TOKENS: u64 = 15;
/// A tool result's framing (its id, a status line).
pub const RESULT_TOKENS: u64 = 10;
/// The text one edit adds or replaces, at most.
pub const EDIT_TOKENS: u64 = 30;
/// A file the agent creates.
pub const NEW_FILE_TOKENS: u64 = 100;
/// The report: status, summary, files changed.
pub const REPORT_TOKENS: u64 = 25;
/// Files a read-only agent of the simulator's reads after listing its scope.
pub const READ_ONLY_SAMPLE: usize = 3;
/// What a test command prints, as the agent reads it.
pub const COMMAND_OUTPUT_TOKENS: u64 = 50;
/// Independent tool calls a model makes in one turn.
pub const CALLS_PER_TURN: u64 = 10;
/// Time to first token of one call.
pub const TURN_BASE_LATENCY: Duration = Duration::from_millis(1_500);
/// Output speed of the default and the fast model, tokens per second.
pub const DEFAULT_OUTPUT_TOKENS_PER_SECOND: f64 = 60.0;
pub const FAST_OUTPUT_TOKENS_PER_SECOND: f64 = 150.0;

/// One agent's estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AgentEstimate {
    pub turns: u64,
    /// Input tokens sent over all turns (cached included).
    pub input_tokens: u64,
    /// The part of `input_tokens` expected to be read from the prompt cache.
    pub cached_input_tokens: u64,
    pub output_tokens: u64,
    pub dollars: f64,
    /// Sum of the agent's call latencies.
    #[serde(rename = "latency_ms", serialize_with = "as_millis")]
    pub latency: Duration,
}

impl AgentEstimate {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// What bounds the wall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeBound {
    /// The dependency chain and agents' latencies at the configured concurrency.
    Latency,
    RequestsPerMinute,
    InputTokensPerMinute,
    OutputTokensPerMinute,
    TokensPerMinute,
}

impl TimeBound {
    pub fn describe(self) -> &'static str {
        match self {
            TimeBound::Latency => "latency and concurrency",
            TimeBound::RequestsPerMinute => "requests per minute",
            TimeBound::InputTokensPerMinute => "input tokens per minute",
            TimeBound::OutputTokensPerMinute => "output tokens per minute",
            TimeBound::TokensPerMinute => "tokens per minute",
        }
    }
}

/// The whole run's estimate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub agents: Vec<AgentEstimate>,
    pub total_tokens: u64,
    pub fast_tokens: u64,
    /// `fast_tokens / total_tokens`, 0 when there are no tokens.
    pub fast_share: f64,
    pub requests: u64,
    pub dollars: f64,
    pub default_dollars: f64,
    pub fast_dollars: f64,
    /// The wall-time floor.
    #[serde(rename = "wall_time_ms", serialize_with = "as_millis")]
    pub wall_time: Duration,
    pub bound_by: TimeBound,
    /// The longest dependency chain of latencies alone.
    #[serde(rename = "critical_path_ms", serialize_with = "as_millis")]
    pub critical_path: Duration,
    /// What the figures assume, in words (observed runs, the simulator, or the defaults).
    pub basis: Vec<String>,
}

/// Facts that replace the model's assumptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Calibration {
    /// Time to first token of one call, and where it comes from ("the simulator's latency").
    pub call_latency: Option<(Duration, String)>,
    /// Output is instantaneous (the simulator streams at no per-token cost).
    pub instant_output: bool,
    /// Answers are tool calls alone, with no prose (the simulator's agents).
    pub tool_calls_only: bool,
    /// What agents of each model used in earlier runs here (by model name).
    pub observed: std::collections::BTreeMap<String, crate::store::ObservedUsage>,
}

fn as_millis<S: serde::Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
}

/// Estimate every agent of a validated plan and the run, on the default assumptions.
pub fn estimate(validation: &Validation, config: &Config, scan: &RepoScan) -> Estimate {
    estimate_calibrated(validation, config, scan, &Calibration::default())
}

/// [`estimate`] with what is known of the API and of earlier runs.
pub fn estimate_calibrated(
    validation: &Validation,
    config: &Config,
    scan: &RepoScan,
    calibration: &Calibration,
) -> Estimate {
    let plan = &validation.plan;
    let call_latency = calibration
        .call_latency
        .as_ref()
        .map_or(TURN_BASE_LATENCY, |(latency, _)| *latency);
    let mut observed_used: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut modelled = false;
    let mut agents = Vec::with_capacity(plan.subtasks.len());
    let (mut total, mut fast, mut requests) = (0u64, 0u64, 0u64);
    let (mut default_dollars, mut fast_dollars) = (0.0, 0.0);
    let (mut uncached_input, mut output) = (0u64, 0u64);
    let report_spec = report_spec_bytes(config);
    let mut shared_written: std::collections::HashSet<(String, Vec<String>)> =
        std::collections::HashSet::new();
    for (subtask, scope) in plan.subtasks.iter().zip(&validation.scopes) {
        let model = config.model_for_mode(subtask.mode);
        let style = Style::of(calibration);
        let shape = AgentShape::of(subtask, scope, scan, report_spec, &style);
        let shaped = shape.turns(
            model,
            &style,
            config.budgets.agent.max_turns,
            config.prompt_caching,
            &mut shared_written,
        );
        let (turns, input_tokens, cached_input_tokens, output_tokens) = (
            shaped.turns,
            shaped.tokens.total_input(),
            shaped.tokens.cache_read,
            shaped.tokens.output,
        );
        let uncached = shaped.tokens.input + shaped.tokens.cache_write;
        let estimate = match calibration.observed.get(&model.model) {
            // What agents of this model actually did here: per-agent averages.
            Some(seen) => {
                observed_used.insert(model.model.as_str());
                let agents = seen.agents.max(1);
                let calls = (seen.calls as f64 / agents as f64).max(1.0);
                let per_call = Duration::from_secs_f64(seen.seconds / seen.calls.max(1) as f64);
                AgentEstimate {
                    turns: calls.round() as u64,
                    input_tokens: seen.input_tokens / agents,
                    cached_input_tokens: seen.cache_read_tokens / agents,
                    output_tokens: seen.output_tokens / agents,
                    dollars: seen.dollars / agents as f64,
                    latency: per_call.mul_f64(calls),
                }
            }
            None => {
                modelled = true;
                let dollars = model.cost(shaped.tokens);
                let speed = match subtask.mode {
                    Mode::Fast => FAST_OUTPUT_TOKENS_PER_SECOND,
                    Mode::Default => DEFAULT_OUTPUT_TOKENS_PER_SECOND,
                };
                let output_time = if calibration.instant_output {
                    Duration::ZERO
                } else {
                    Duration::from_secs_f64(output_tokens as f64 / speed)
                };
                AgentEstimate {
                    turns,
                    input_tokens,
                    cached_input_tokens,
                    output_tokens,
                    dollars,
                    latency: call_latency * u32::try_from(turns).unwrap_or(u32::MAX) + output_time,
                }
            }
        };
        let (uncached, output_tokens, dollars, turns) =
            if observed_used.contains(model.model.as_str()) {
                (
                    estimate.input_tokens,
                    estimate.output_tokens,
                    estimate.dollars,
                    estimate.turns,
                )
            } else {
                (uncached, output_tokens, estimate.dollars, turns)
            };
        total += estimate.total_tokens();
        requests += turns;
        uncached_input += uncached;
        output += output_tokens;
        match subtask.mode {
            Mode::Fast => {
                fast += estimate.total_tokens();
                fast_dollars += dollars;
            }
            Mode::Default => default_dollars += dollars,
        }
        agents.push(estimate);
    }

    let critical_path = critical_path(validation, &agents);
    let parallel = u64::from(config.max_parallel_agents.max(1));
    let sum_latency: Duration = agents.iter().map(|a| a.latency).sum();
    let concurrency_bound = Duration::from_secs_f64(
        sum_latency.as_secs_f64() / parallel.min(agents.len().max(1) as u64) as f64,
    );
    let mut wall_time = critical_path.max(concurrency_bound);
    let mut bound_by = TimeBound::Latency;
    let limits = &config.rate_limits;
    let candidates = [
        (
            limits.requests_per_minute,
            requests,
            TimeBound::RequestsPerMinute,
        ),
        (
            limits.input_tokens_per_minute,
            uncached_input,
            TimeBound::InputTokensPerMinute,
        ),
        (
            limits.output_tokens_per_minute,
            output,
            TimeBound::OutputTokensPerMinute,
        ),
        (
            limits.tokens_per_minute,
            uncached_input + output,
            TimeBound::TokensPerMinute,
        ),
    ];
    for (limit, amount, bound) in candidates {
        if let Some(limit) = limit.filter(|l| *l > 0) {
            let time = Duration::from_secs_f64(amount as f64 * 60.0 / limit as f64);
            if time > wall_time {
                wall_time = time;
                bound_by = bound;
            }
        }
    }
    let mut basis = Vec::new();
    for model in &observed_used {
        if let Some(seen) = calibration.observed.get(*model) {
            let agents = seen.agents.max(1) as f64;
            let calls = seen.calls.max(1) as f64;
            let cached = if seen.input_tokens == 0 {
                0.0
            } else {
                100.0 * seen.cache_read_tokens as f64 / seen.input_tokens as f64
            };
            basis.push(format!(
                "{model}: observed in {} earlier run(s) here ({} agents): {:.1} calls and {} tokens per agent ({} per call, {cached:.0}% of input read from the cache), {:.1} s per call",
                seen.runs,
                seen.agents,
                seen.calls as f64 / agents,
                human_tokens(((seen.input_tokens + seen.output_tokens) as f64 / agents) as u64),
                human_tokens(((seen.input_tokens + seen.output_tokens) as f64 / calls) as u64),
                seen.seconds / calls,
            ));
        }
    }
    if modelled {
        let latency = match &calibration.call_latency {
            Some((latency, source)) => {
                format!("{} ms per model call ({source})", latency.as_millis())
            }
            None => format!(
                "{:.1} s to first token per model call (assumed)",
                TURN_BASE_LATENCY.as_secs_f64()
            ),
        };
        let output = if calibration.instant_output {
            "output at no extra time".to_owned()
        } else {
            format!(
                "{DEFAULT_OUTPUT_TOKENS_PER_SECOND:.0}/{FAST_OUTPUT_TOKENS_PER_SECOND:.0} output tokens/s (default/fast)"
            )
        };
        let style = Style::of(calibration);
        let prose = if calibration.tool_calls_only {
            format!(
                "up to {} calls a turn, tool calls alone (the simulator's agents)",
                style.calls_per_turn
            )
        } else {
            format!(
                "a call a turn with {} tokens of reasoning, a {}-token prompt at least",
                style.prose, style.prompt_floor
            )
        };
        let caching = if config.prompt_caching {
            "prompt caching on (each turn reads the conversation before it once it is long enough)"
        } else {
            "prompt caching off"
        };
        basis.push(format!(
            "modelled: turns from each agent's scope (read, write, report; {prose}), bytes/4 tokens, {caching}, {latency}, {output}; no earlier runs of these models here to go by"
        ));
    }
    Estimate {
        basis,
        agents,
        total_tokens: total,
        fast_tokens: fast,
        fast_share: if total == 0 {
            0.0
        } else {
            fast as f64 / total as f64
        },
        requests,
        dollars: default_dollars + fast_dollars,
        default_dollars,
        fast_dollars,
        wall_time,
        bound_by,
        critical_path,
    }
}

/// Bytes of the report tool's spec (its description and the result schema).
fn report_spec_bytes(config: &Config) -> u64 {
    let schema = config
        .output_schema
        .clone()
        .unwrap_or_else(crate::agent::default_output_schema);
    (crate::agent::REPORT_TOOL.len() + 60 + schema.to_string().len()) as u64
}

/// How agents answer.
#[derive(Debug, Clone, Copy)]
struct Style {
    /// Independent tool calls made in one turn.
    calls_per_turn: u64,
    /// Reasoning tokens per turn, besides the calls.
    prose: u64,
    /// A writer reads its whole scope (not only the files it changes), and a reader all of it
    /// (not a listing and a few files).
    reads_scope: bool,
    /// A changed file is written out whole (not edited in place).
    rewrites: bool,
    /// The shared prompt as the API counts it, at least (a provider adds its own tool-use
    /// instructions to the tools and system prompt we send).
    prompt_floor: u64,
}

impl Style {
    fn of(calibration: &Calibration) -> Style {
        if calibration.tool_calls_only {
            // The simulator's agents: the files they change, read in one batch, small edits,
            // the report; tool calls and no prose.
            Style {
                calls_per_turn: CALLS_PER_TURN,
                prose: 0,
                reads_scope: false,
                rewrites: false,
                prompt_floor: 0,
            }
        } else {
            // A model: a call a turn with its reasoning; it reads its scope and writes the
            // files it changes out whole.
            Style {
                calls_per_turn: 1,
                prose: OUTPUT_TOKENS_PER_TURN,
                reads_scope: true,
                rewrites: true,
                prompt_floor: API_PROMPT_TOKENS,
            }
        }
    }
}

/// What one agent's turns consist of, in tokens.
#[derive(Debug, Clone)]
struct AgentShape {
    /// The shared prefix: tool specs and the system prompt.
    shared: u64,
    /// The agent's own brief (system part and first message).
    brief: u64,
    /// Files read, and their tokens.
    reads: u64,
    read_tokens: u64,
    /// Files written (edits) and created, and what the edits add.
    writes: u64,
    write_output: u64,
    /// A listing of the scope first (its result's tokens), for a read-only agent of the
    /// simulator's.
    listing: Option<u64>,
    /// A test command run after the edits (the simulator's agents, when the task asks).
    tests: bool,
    /// The tools granted (the shared prefix differs with them).
    tool_names: Vec<String>,
}

/// One agent's modelled turns.
#[derive(Debug, Clone, Copy)]
struct Modelled {
    turns: u64,
    tokens: TokenUse,
}

impl AgentShape {
    fn of(
        subtask: &super::types::Subtask,
        scope: &super::validate::ResolvedScope,
        scan: &RepoScan,
        report_spec: u64,
        style: &Style,
    ) -> AgentShape {
        let tool_bytes: u64 = crate::tools::tool_specs()
            .iter()
            .filter(|spec| subtask.has_tool(&spec.name))
            .map(|spec| {
                (spec.name.len() + spec.description.len() + spec.input_schema.to_string().len())
                    as u64
            })
            .sum();
        let shared = ((tool_bytes + report_spec + crate::agent::system_prompt().len() as u64) / 4)
            .max(style.prompt_floor);
        let patterns: u64 = subtask
            .write_scope
            .iter()
            .flatten()
            .map(|p| p.len() as u64 + 3)
            .sum();
        // "Task ID: description", the write patterns, the tools line; the first message
        // repeats the description and asks for the report.
        let brief = (2 * subtask.description.len() as u64
            + subtask.task_id.as_str().len() as u64
            + patterns
            + 120)
            / 4;
        let writes = (scope.write_files.len() + scope.new_files.len()) as u64;
        let mut listing = None;
        let read_files: Vec<usize> = if style.reads_scope {
            scope.read_files.clone()
        } else if writes > 0 {
            scope.write_files.clone()
        } else if subtask.has_tool("list_files") {
            // The simulator's reader lists its scope, then reads a few of the files.
            listing = Some(
                scope
                    .read_files
                    .iter()
                    .map(|&i| scan.files[i].path.len() as u64 + 1)
                    .sum::<u64>()
                    / 4,
            );
            scope
                .read_files
                .iter()
                .copied()
                .take(READ_ONLY_SAMPLE)
                .collect()
        } else {
            Vec::new()
        };
        let description = subtask.description.to_lowercase();
        let tests = !style.reads_scope
            && subtask.has_tool("bash")
            && !subtask.shell_commands.is_empty()
            && (description.contains("test") || description.contains("spec"));
        let read_tokens: u64 = read_files.iter().map(|&i| scan.files[i].bytes / 4).sum();
        let write_output: u64 = scope
            .write_files
            .iter()
            .map(|&i| {
                let whole = scan.files[i].bytes / 4;
                if style.rewrites {
                    whole
                } else {
                    whole.min(EDIT_TOKENS)
                }
            })
            .sum::<u64>()
            + scope.new_files.len() as u64 * NEW_FILE_TOKENS;
        AgentShape {
            shared,
            brief,
            reads: read_files.len() as u64,
            read_tokens,
            writes,
            write_output,
            listing,
            tests,
            tool_names: subtask.tools.clone(),
        }
    }

    /// The agent's turns: each request, its answer, and what the cache makes of it.
    fn turns(
        &self,
        model: &crate::config::ModelSpec,
        style: &Style,
        max_turns: u64,
        caching: bool,
        shared_written: &mut std::collections::HashSet<(String, Vec<String>)>,
    ) -> Modelled {
        // (calls, output tokens besides the calls' own, tokens the results add)
        let mut plan: Vec<(u64, u64, u64)> = Vec::new();
        let mut batches = |calls: u64, extra: u64, results: u64| {
            let per_turn = style.calls_per_turn.max(1);
            let turns = calls.div_ceil(per_turn).max(1);
            for turn in 0..turns {
                let here = (calls - turn * per_turn).min(per_turn);
                plan.push((
                    here,
                    extra * here / calls.max(1),
                    results * here / calls.max(1) + here * RESULT_TOKENS,
                ));
            }
        };
        if let Some(listed) = self.listing {
            batches(1, 0, listed);
        }
        if self.reads > 0 {
            batches(self.reads, 0, self.read_tokens);
        }
        if self.writes > 0 {
            batches(self.writes, self.write_output, 0);
        }
        if self.tests {
            batches(1, 0, COMMAND_OUTPUT_TOKENS);
        }
        plan.push((1, REPORT_TOKENS + 10 * self.writes, RESULT_TOKENS));
        plan.truncate(usize::try_from(max_turns.max(1)).unwrap_or(usize::MAX));
        let minimum = minimum_cacheable(model);
        let key = (model.model.clone(), self.tool_names.clone());
        let mut tokens = TokenUse::default();
        let mut request = self.shared + self.brief;
        let mut previous: Option<u64> = None;
        for &(calls, extra, results) in &plan {
            let answer = calls * CALL_TOKENS + extra + style.prose;
            tokens.output += answer;
            if caching && request >= minimum {
                let read = match previous {
                    Some(before) if before >= minimum => before,
                    _ if self.shared >= minimum && shared_written.contains(&key) => self.shared,
                    _ => 0,
                };
                if self.shared >= minimum {
                    shared_written.insert(key.clone());
                }
                tokens.cache_read += read;
                tokens.cache_write += request - read;
            } else {
                tokens.input += request;
            }
            previous = Some(request);
            request += answer + results;
        }
        Modelled {
            turns: plan.len() as u64,
            tokens,
        }
    }
}

/// The shortest prefix the model's provider caches, in tokens.
fn minimum_cacheable(model: &crate::config::ModelSpec) -> u64 {
    match model.provider {
        crate::config::Provider::Anthropic => {
            crate::provider::cache::minimum_cacheable(&model.model)
        }
        crate::config::Provider::OpenAi => 1024,
    }
}

/// The longest chain of agent latencies along `depends_on` (cycles contribute nothing).
fn critical_path(validation: &Validation, agents: &[AgentEstimate]) -> Duration {
    let plan = &validation.plan;
    let index: std::collections::HashMap<&str, usize> = plan
        .subtasks
        .iter()
        .enumerate()
        .map(|(i, s)| (s.task_id.as_str(), i))
        .collect();
    // Longest finish time per node, by memoized depth-first search with an in-progress mark
    // so a cycle ends the recursion instead of looping.
    let mut finish: Vec<Option<Duration>> = vec![None; agents.len()];
    let mut in_progress = vec![false; agents.len()];
    let mut best = Duration::ZERO;
    for start in 0..agents.len() {
        let mut stack = vec![(start, false)];
        while let Some((node, expanded)) = stack.pop() {
            if finish[node].is_some() {
                continue;
            }
            let deps: Vec<usize> = plan.subtasks[node]
                .depends_on
                .iter()
                .filter_map(|d| index.get(d.as_str()).copied())
                .collect();
            if expanded {
                let before = deps
                    .iter()
                    .filter_map(|&d| finish[d])
                    .max()
                    .unwrap_or_default();
                finish[node] = Some(before + agents[node].latency);
                in_progress[node] = false;
            } else {
                in_progress[node] = true;
                stack.push((node, true));
                for d in deps {
                    if finish[d].is_none() && !in_progress[d] {
                        stack.push((d, false));
                    }
                }
            }
        }
        best = best.max(finish[start].unwrap_or_default());
    }
    best
}

/// Run-level budget checks on an estimate.
pub fn budget_violations(estimate: &Estimate, config: &Config) -> Vec<Violation> {
    let mut violations = Vec::new();
    let run = &config.budgets.run;
    if let Some(max) = run.max_tokens
        && estimate.total_tokens > max
    {
        violations.push(Violation {
            agent: None,
            kind: ViolationKind::OverBudget,
            what: format!("estimated {} tokens", estimate.total_tokens),
            why: format!("budgets.run.max_tokens is {max}"),
        });
    }
    if let Some(max) = run.max_dollars
        && estimate.dollars > max
    {
        violations.push(Violation {
            agent: None,
            kind: ViolationKind::OverBudget,
            what: format!("estimated ${:.2}", estimate.dollars),
            why: format!("budgets.run.max_dollars is ${max:.2}"),
        });
    }
    if let Some(max) = run.max_wall_time
        && estimate.wall_time > max
    {
        violations.push(Violation {
            agent: None,
            kind: ViolationKind::OverBudget,
            what: format!(
                "expected wall time of {}",
                human_duration(estimate.wall_time)
            ),
            why: format!("budgets.run.max_wall_time is {}", human_duration(max)),
        });
    }
    violations
}

/// `2.1M`, `840K`, `512`.
pub fn human_tokens(tokens: u64) -> String {
    if tokens >= 1_000_000 {
        format!("{:.1}M", tokens as f64 / 1_000_000.0)
    } else if tokens >= 1_000 {
        format!("{:.0}K", tokens as f64 / 1_000.0)
    } else {
        tokens.to_string()
    }
}

/// `1h 02m`, `4m 10s`, `12s`.
pub fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64().ceil() as u64;
    if seconds >= 3600 {
        format!("{}h {:02}m", seconds / 3600, (seconds % 3600) / 60)
    } else if seconds >= 60 {
        format!("{}m {:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{seconds}s")
    }
}
