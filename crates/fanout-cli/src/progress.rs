//! Live progress of a run, and Ctrl-C handling.
//!
//! Progress goes to stderr: on a terminal, one status line rewritten in place (never one bar
//! per agent); otherwise a plain line every few seconds, so CI logs stay readable. With
//! `--json`, events go to stdout as JSON lines instead and nothing is drawn.
//!
//! Ctrl-C once cancels the run's token (no new agents; running ones stop and write their
//! records, leaving a run that `fanout resume` can finish); Ctrl-C twice exits at once.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use fanout_core::config::Mode;
use fanout_core::fleet::Fleet;
use fanout_core::governor::Limits;
use fanout_core::run::engine::EngineEvent;
use fanout_core::store::AgentStatus;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressStyle {
    /// One line rewritten in place on stderr.
    Terminal,
    /// A line on stderr every few seconds.
    Plain,
    /// Events as JSON lines on stdout; no drawing.
    Json,
}

impl ProgressStyle {
    pub fn detect(json: bool) -> Self {
        if json {
            ProgressStyle::Json
        } else if std::io::stderr().is_terminal() {
            ProgressStyle::Terminal
        } else {
            ProgressStyle::Plain
        }
    }
}

/// The numbers a status line shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tally {
    pub total: usize,
    pub done: usize,
    pub running: usize,
    /// Ended unsuccessfully with nothing to undo.
    pub failed: usize,
    /// Ended unsuccessfully, their changes undone.
    pub rolled_back: usize,
    /// Stopped by a cancellation (Ctrl-C): resumable, not failed.
    pub cancelled: usize,
    pub skipped: usize,
    /// Requests the policy refused.
    pub denied: usize,
    pub tokens_fast: u64,
    pub tokens_default: u64,
    pub dollars: f64,
    /// Time requests spent queued for the rate governor, summed over requests (so it can
    /// exceed the elapsed time when many agents wait at once).
    pub rate_limit_wait: Duration,
    /// Time retries waited for a token of the fleet-wide retry budget, summed.
    pub retry_budget_wait: Duration,
    /// The limits the governor applies (configured or learned), per minute.
    pub limits: Limits,
    /// Whether those limits were learned from the provider's headers.
    pub limits_learned: bool,
    /// The governor is still probing for the limits.
    pub probing: bool,
    /// The governor is in an outage: one probe at a time.
    pub outage: bool,
    /// Requests queued in the rate governor now.
    pub rate_waiting: usize,
    /// Model calls sent and their tokens, for the limit-bound ETA.
    pub calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens of finished agents (or calls), and those of them read from the cache.
    pub finished_input_tokens: u64,
    pub cache_read_tokens: u64,
    /// The calls bypass this process's rate governor (an item run's batches, a shared run's
    /// workers): the line then says nothing of limits, probes or rate waits, which would
    /// describe a governor that sends nothing.
    pub ungoverned: bool,
}

impl Tally {
    /// Count one engine event (`cancelling`: the run is being cancelled, so an agent that
    /// ends unsuccessfully now was stopped, not failed).
    pub fn apply(&mut self, event: &EngineEvent, cancelling: bool) {
        match event {
            EngineEvent::AgentScheduled { .. } => self.running += 1,
            EngineEvent::AgentStarted { .. } => {}
            EngineEvent::AgentFinished {
                status,
                mode,
                tokens,
                dollars,
                denials,
                input_tokens,
                cache_read_tokens,
                ..
            } => {
                self.running = self.running.saturating_sub(1);
                self.denied += denials;
                self.finished_input_tokens += input_tokens;
                self.cache_read_tokens += cache_read_tokens;
                match status {
                    AgentStatus::Success => self.done += 1,
                    _ if cancelling => self.cancelled += 1,
                    AgentStatus::Failure => self.failed += 1,
                    AgentStatus::Rollback => self.rolled_back += 1,
                }
                match mode {
                    Mode::Fast => self.tokens_fast += tokens,
                    Mode::Default => self.tokens_default += tokens,
                }
                self.dollars += dollars;
            }
            EngineEvent::AgentNotRun { .. } => self.skipped += 1,
            EngineEvent::Checkpoint { .. } | EngineEvent::Phase { .. } => {}
        }
    }

    /// Copy the fleet's rate-governor and retry-budget figures.
    pub fn observe_fleet(&mut self, fleet: &Fleet) {
        let stats = fleet.stats();
        let governor = fleet.governor().snapshot();
        self.rate_limit_wait = Duration::from_millis(stats.governor_wait_ms);
        self.retry_budget_wait = Duration::from_millis(stats.budget_wait_ms);
        self.limits = governor.limits;
        self.limits_learned = governor.learned != Limits::default();
        self.probing = governor.probing;
        self.rate_waiting = governor.waiting;
        self.outage = governor.outage;
        self.calls = stats.calls;
        self.input_tokens = stats.input_tokens;
        self.output_tokens = stats.output_tokens;
    }

    pub fn queued(&self) -> usize {
        self.total.saturating_sub(self.finished() + self.running)
    }

    pub fn finished(&self) -> usize {
        self.done + self.failed + self.rolled_back + self.cancelled + self.skipped
    }
}

/// Draws a [`Tally`] no more often than its style allows.
#[derive(Debug)]
pub struct Progress {
    style: ProgressStyle,
    started: Instant,
    last_draw: Option<Instant>,
    drew_terminal_line: bool,
}

impl Progress {
    pub fn new(style: ProgressStyle) -> Self {
        Progress {
            style,
            started: Instant::now(),
            last_draw: None,
            drew_terminal_line: false,
        }
    }

    pub fn style(&self) -> ProgressStyle {
        self.style
    }

    /// A JSON event (only shown in the JSON style).
    pub fn event<T: Serialize>(&self, event: &T) {
        if self.style == ProgressStyle::Json
            && let Ok(line) = serde_json::to_string(event)
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }

    /// Redraw if enough time has passed since the last draw.
    pub fn update(&mut self, tally: &Tally) {
        let interval = match self.style {
            ProgressStyle::Terminal => Duration::from_millis(100),
            ProgressStyle::Plain => Duration::from_secs(5),
            ProgressStyle::Json => return,
        };
        let now = Instant::now();
        if self
            .last_draw
            .is_some_and(|at| now.saturating_duration_since(at) < interval)
        {
            return;
        }
        self.last_draw = Some(now);
        self.draw(tally);
    }

    /// The final line; the terminal line is ended so later output starts fresh.
    pub fn finish(&mut self, tally: &Tally) {
        if self.style == ProgressStyle::Json {
            return;
        }
        self.draw(tally);
        if self.drew_terminal_line {
            eprintln!();
            self.drew_terminal_line = false;
        }
    }

    fn draw(&mut self, tally: &Tally) {
        let line = status_line(tally, self.started.elapsed());
        match self.style {
            ProgressStyle::Terminal => {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                self.drew_terminal_line = true;
            }
            ProgressStyle::Plain => eprintln!("{line}"),
            ProgressStyle::Json => {}
        }
    }
}

/// `[ 812/1000] done 790 · running 18 · queued 180 · failed 4 · 1.2M tokens (38% fast) · $3.41 · rate wait 12s (all agents) · 1m05s · ETA 20s`
pub fn status_line(tally: &Tally, elapsed: Duration) -> String {
    let width = tally.total.to_string().len();
    let tokens = tally.tokens_fast + tally.tokens_default;
    let fast_share = if tokens == 0 {
        0.0
    } else {
        100.0 * tally.tokens_fast as f64 / tokens as f64
    };
    let mut line = format!(
        "[{:>width$}/{}] done {} · running {} · queued {} · failed {}",
        tally.finished(),
        tally.total,
        tally.done,
        tally.running,
        tally.queued(),
        tally.failed,
    );
    for (n, what) in [
        (tally.rolled_back, "rolled back"),
        (tally.cancelled, "cancelled"),
        (tally.skipped, "not run"),
        (tally.denied, "denied requests"),
    ] {
        if n > 0 {
            line.push_str(&format!(" · {what} {n}"));
        }
    }
    line.push_str(&format!(
        " · {} tokens ({fast_share:.0}% fast) · ${:.2}",
        human_count(tokens),
        tally.dollars,
    ));
    if tally.cache_read_tokens > 0 && tally.finished_input_tokens > 0 {
        line.push_str(&format!(
            " · {:.0}% of input from the cache",
            100.0 * tally.cache_read_tokens as f64 / tally.finished_input_tokens as f64
        ));
    }
    if tally.ungoverned {
        line.push_str(&format!(" · {}", human_duration(elapsed)));
        return line;
    }
    if tally.probing {
        line.push_str(" · probing limits");
    } else if let Some(limits) = limits_text(&tally.limits) {
        let how = if tally.limits_learned { " learned" } else { "" };
        line.push_str(&format!(" · limits {limits}{how}"));
    }
    if tally.outage {
        line.push_str(" · outage, probing");
    }
    line.push_str(&format!(
        " · rate wait {} (all agents)",
        human_duration(tally.rate_limit_wait)
    ));
    if tally.rate_waiting > 0 {
        line.push_str(&format!(" ({} queued)", tally.rate_waiting));
    }
    if !tally.retry_budget_wait.is_zero() {
        line.push_str(&format!(
            " · retry budget wait {}",
            human_duration(tally.retry_budget_wait)
        ));
    }
    line.push_str(&format!(" · {}", human_duration(elapsed)));
    if let Some(eta) = eta(tally, elapsed) {
        line.push_str(&format!(" · ETA {}", human_duration(eta)));
    }
    line
}

/// `600 req/min, 210K in/min`: the limits that are set, or `None`.
fn limits_text(limits: &Limits) -> Option<String> {
    let parts: Vec<String> = [
        (limits.requests, "req/min"),
        (limits.input_tokens, "in/min"),
        (limits.output_tokens, "out/min"),
        (limits.tokens, "tok/min"),
    ]
    .iter()
    .filter_map(|(limit, unit)| limit.map(|l| format!("{} {unit}", human_count(l))))
    .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// Remaining time at the average completion rate so far, and never less than the known
/// limits allow for the work not yet sent (its calls and tokens at the average per task).
pub fn eta(tally: &Tally, elapsed: Duration) -> Option<Duration> {
    let finished = tally.finished();
    if finished == 0 || finished >= tally.total {
        return None;
    }
    let remaining = (tally.total - finished) as f64;
    let mut seconds = elapsed.as_secs_f64() / finished as f64 * remaining;
    // Work not sent yet: not started, or started and queued in the governor.
    let sent = (finished + tally.running).saturating_sub(tally.rate_waiting);
    let unsent = tally.total.saturating_sub(sent) as f64;
    let per_task = |amount: u64| amount as f64 / sent.max(1) as f64;
    let limits = &tally.limits;
    for (limit, amount) in [
        (limits.requests, per_task(tally.calls)),
        (limits.input_tokens, per_task(tally.input_tokens)),
        (limits.output_tokens, per_task(tally.output_tokens)),
        (
            limits.tokens,
            per_task(tally.input_tokens + tally.output_tokens),
        ),
    ] {
        if let Some(limit) = limit.filter(|l| *l > 0) {
            seconds = seconds.max(unsent * amount / (limit as f64 / 60.0));
        }
    }
    Some(Duration::from_secs_f64(seconds))
}

pub fn human_count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.0}K", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{secs}s")
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// Cancel `cancel` on the first Ctrl-C; exit the process with 130 on the second.
/// `resume` is the command that finishes the run, as the user would type it.
pub fn handle_interrupts(cancel: CancellationToken, resume: String) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "\nfanout: stopping — no new agents; running ones are cancelled and their records \
             written. The run can be finished with `{resume}`. Press Ctrl-C again to exit now."
        );
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("fanout: exiting at once");
            std::process::exit(130);
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_status_line_shows_every_count_and_an_eta() {
        let tally = Tally {
            total: 1000,
            done: 790,
            running: 18,
            failed: 3,
            rolled_back: 1,
            cancelled: 0,
            skipped: 0,
            denied: 2,
            tokens_fast: 456_000,
            tokens_default: 744_000,
            dollars: 3.414,
            rate_limit_wait: Duration::from_secs(12),
            ..Tally::default()
        };
        assert_eq!(tally.queued(), 188);
        assert_eq!(
            status_line(&tally, Duration::from_secs(65)),
            "[ 794/1000] done 790 · running 18 · queued 188 · failed 3 · rolled back 1 · denied \
             requests 2 · 1.2M tokens (38% fast) · $3.41 · rate wait 12s (all agents) · 1m05s · \
             ETA 16s"
        );
    }

    #[test]
    fn the_cached_share_of_input_shows_once_there_is_one() {
        let mut tally = Tally {
            total: 2,
            ungoverned: true,
            ..Tally::default()
        };
        let finished = |input, cached| EngineEvent::AgentFinished {
            agent_id: "a".into(),
            status: AgentStatus::Success,
            mode: Mode::Fast,
            tokens: input + 10,
            dollars: 0.01,
            denials: 0,
            input_tokens: input,
            cache_read_tokens: cached,
        };
        tally.apply(&finished(1000, 0), false);
        assert!(!status_line(&tally, Duration::ZERO).contains("cache"));
        tally.apply(&finished(3000, 2000), false);
        assert!(
            status_line(&tally, Duration::ZERO).ends_with(" · 50% of input from the cache · 0s"),
            "{}",
            status_line(&tally, Duration::ZERO)
        );
    }

    #[test]
    fn an_ungoverned_run_says_nothing_of_limits_or_rate_waits() {
        let tally = Tally {
            total: 6,
            done: 2,
            probing: true,
            ungoverned: true,
            ..Tally::default()
        };
        assert_eq!(
            status_line(&tally, Duration::from_secs(3)),
            "[2/6] done 2 · running 0 · queued 4 · failed 0 · 0 tokens (0% fast) · $0.00 · 3s"
        );
    }

    #[test]
    fn no_eta_before_anything_finished_or_after_everything_did() {
        let mut tally = Tally {
            total: 3,
            ..Tally::default()
        };
        assert!(eta(&tally, Duration::from_secs(5)).is_none());
        tally.done = 3;
        assert!(eta(&tally, Duration::from_secs(5)).is_none());
    }

    #[test]
    fn human_units() {
        assert_eq!(human_count(950), "950");
        assert_eq!(human_count(45_300), "45K");
        assert_eq!(human_count(2_100_000), "2.1M");
        assert_eq!(human_duration(Duration::from_secs(3725)), "1h02m");
    }

    #[test]
    fn learned_limits_and_budget_waits_are_shown_and_bound_the_eta() {
        let tally = Tally {
            total: 1000,
            done: 600,
            running: 0,
            limits: Limits {
                requests: Some(600),
                ..Limits::default()
            },
            limits_learned: true,
            rate_limit_wait: Duration::from_secs(12),
            retry_budget_wait: Duration::from_secs(3),
            calls: 600,
            ..Tally::default()
        };
        let line = status_line(&tally, Duration::from_secs(2));
        assert!(line.contains(" · limits 600 req/min learned · "), "{line}");
        assert!(line.contains(" · retry budget wait 3s · "), "{line}");
        // 600 done in 2 s, but the other 400 calls go at 10 a second.
        assert!(line.ends_with(" · ETA 40s"), "{line}");
        // The same when the 400 have started but wait in the governor.
        let queued = Tally {
            running: 400,
            rate_waiting: 400,
            ..tally
        };
        let line = status_line(&queued, Duration::from_secs(2));
        assert!(line.ends_with(" · ETA 40s"), "{line}");
        let probing = Tally {
            probing: true,
            outage: true,
            ..tally
        };
        let line = status_line(&probing, Duration::from_secs(2));
        assert!(
            line.contains(" · probing limits · outage, probing · "),
            "{line}"
        );
    }
}
