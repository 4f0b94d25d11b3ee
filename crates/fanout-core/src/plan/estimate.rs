//! Estimates of what a validated plan will cost: tokens, dollars and wall time.
//!
//! A model of one agent, deliberately simple and stated here so the numbers can be checked:
//! - turns: 2 (orient, report) + one per file it may read + one per file it may write,
//!   capped by `budgets.agent.max_turns`;
//! - output: [`OUTPUT_TOKENS_PER_TURN`] per turn plus the files it may write, rewritten once;
//! - input: every turn resends the conversation. The fixed part (system prompt, tools, task)
//!   is sent each turn; scope content and the agent's own output enter the context once and
//!   are then resent on about half the turns on average. What enters once is uncached input;
//!   the resent part is priced as cached input (prompt caching is on by default).
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

/// System prompt, the six tool definitions and the result contract, in tokens.
pub const AGENT_FIXED_PROMPT_TOKENS: u64 = 2_000;
/// Reasoning and tool-call tokens per turn.
pub const OUTPUT_TOKENS_PER_TURN: u64 = 400;
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
    for (subtask, scope) in plan.subtasks.iter().zip(&validation.scopes) {
        let read_bytes: u64 = scope.read_files.iter().map(|&i| scan.files[i].bytes).sum();
        let write_bytes: u64 = scope.write_files.iter().map(|&i| scan.files[i].bytes).sum();
        let scope_tokens = read_bytes / 4;
        let write_tokens = write_bytes / 4;
        let fixed = AGENT_FIXED_PROMPT_TOKENS + subtask.description.len() as u64 / 4;
        let writes = (scope.write_files.len() + scope.new_files.len()) as u64;
        let turns = (2 + scope.read_files.len() as u64 + writes)
            .min(config.budgets.agent.max_turns)
            .max(1);
        let output_tokens = turns * OUTPUT_TOKENS_PER_TURN + write_tokens;
        let entered_once = scope_tokens + output_tokens;
        let input_tokens = turns * fixed + entered_once * turns.div_ceil(2);
        let uncached = (fixed + entered_once).min(input_tokens);
        let cached_input_tokens = input_tokens - uncached;
        let model = config.model_for_mode(subtask.mode);
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
                    cached_input_tokens: 0,
                    output_tokens: seen.output_tokens / agents,
                    dollars: seen.dollars / agents as f64,
                    latency: per_call.mul_f64(calls),
                }
            }
            None => {
                modelled = true;
                let dollars = model.cost(TokenUse {
                    input: uncached,
                    cache_read: cached_input_tokens,
                    output: output_tokens,
                    ..TokenUse::default()
                });
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
            basis.push(format!(
                "{model}: observed in {} earlier run(s) here ({} agents): {:.1} calls and {} tokens per agent, {:.1} s per call",
                seen.runs,
                seen.agents,
                seen.calls as f64 / agents,
                human_tokens(((seen.input_tokens + seen.output_tokens) as f64 / agents) as u64),
                seen.seconds / seen.calls.max(1) as f64,
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
        basis.push(format!(
            "modelled: turns from each agent's scope (2 + files to read + files to write), bytes/4 tokens, {latency}, {output}; no earlier runs of these models here to go by"
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
