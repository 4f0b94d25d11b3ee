//! The report page: one self-contained HTML document (inline CSS and SVG, no script, nothing
//! fetched, and a Content-Security-Policy that has the browser refuse both), so it opens from
//! `file://` and can be mailed or attached as it is.
//!
//! Built to stay light at 10,000 agents: the timeline is one `<svg>` holding one `<rect>` per
//! attempt (with its `<title>` tooltip) packed onto as many lanes as ran at once, and nothing
//! else per attempt; long lists (agents by cost, denials, files changed, failed items) are
//! cut at a fixed length and say how many they leave out. Every string from the store or a
//! run file goes through [`escape`].

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;
use std::time::Duration;

use super::{AttemptBar, ItemOutcome, RepositoryOutcome, RunKind, RunReport};
use crate::store::AgentStatus;

/// Rows shown in each long table (agents by cost, denials, files changed).
pub const MAX_ROWS: usize = 1_000;
/// Agents shown in the "by agent" chart.
pub const TOP_AGENTS: usize = 50;
/// Width of the charts in SVG user units.
const WIDTH: f64 = 1000.0;
/// Columns of the requests-over-time chart.
const BUCKETS: usize = 60;

/// `text` safe inside HTML and SVG text and inside quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `17,093`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn dollars(value: f64) -> String {
    format!("${value:.4}")
}

/// `850ms`, `2.0s`, `1m03s`, `2h05m`.
fn duration_text(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs < 1 {
        format!("{}ms", duration.as_millis())
    } else if secs < 60 {
        format!("{:.1}s", duration.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

fn ms_text(ms: u64) -> String {
    duration_text(Duration::from_millis(ms))
}

fn status_word(status: Option<AgentStatus>) -> &'static str {
    status.map_or("running", AgentStatus::as_str)
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0 auto;max-width:1100px;padding:16px 24px;color:#1d2330;background:#fafafa}
h1{font-size:20px;margin:8px 0}h2{font-size:16px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;margin:0}dl.facts dt{color:#667}dl.facts dd{margin:0}
table{border-collapse:collapse;font-size:13px}td,th{padding:2px 8px;text-align:left;vertical-align:top}th{color:#667;font-weight:600}
td.n{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#f0f1f4}
table.bars{margin-bottom:10px}td.bar{width:420px}td.bar div{height:10px;background:#4a78c2;min-width:1px}
.note{color:#667;font-size:12px}.add{color:#1e7d43}.del{color:#b3261e}.red{color:#b3261e;font-weight:600}.ok{color:#1e7d43;font-weight:600}
svg{display:block;width:100%;height:auto;background:#fff;border:1px solid #ddd}
svg text{font-size:11px;fill:#667}
.s-success{fill:#2e9d57}.s-failure{fill:#d64545}.s-rollback{fill:#e08a1e}.s-running{fill:#8a8f98}
rect.b:hover{fill:#1d2330}line.ck{stroke:#7048b8;stroke-dasharray:3 3}line.tick{stroke:#e4e5e9}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:middle}
code{background:#eef0f3;padding:0 3px;border-radius:3px}
";

/// What the page may do, enforced by the browser: nothing but its own inline styles. No
/// script runs and nothing is fetched even if a string from a model escaped [`escape`].
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; \
                       form-action 'none'";

/// The report as one HTML document.
pub fn render_html(report: &RunReport) -> String {
    let run = &report.run;
    let mut out = String::with_capacity(4096 + report.attempts.len() * 400);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>fanout run {id}</title><style>{STYLE}</style></head><body>\n\
         <h1>fanout run <code>{id}</code> · {workflow}</h1>\n",
        id = escape(run.run_id.as_str()),
        workflow = escape(&run.workflow),
    );
    header(&mut out, report);
    if let RunKind::Items(items) = &report.kind {
        item_sections(&mut out, items);
    }
    timeline(&mut out, report);
    waves(&mut out, report);
    requests(&mut out, report);
    costs(&mut out, report);
    denials(&mut out, report);
    files_changed(&mut out, report);
    let _ = write!(
        out,
        "<p class=\"note\">Written by <code>fanout report</code> from the run store; \
         <code>fanout show {}</code> has every record.</p>\n</body></html>\n",
        escape(run.run_id.as_str())
    );
    out
}

fn header(out: &mut String, report: &RunReport) {
    let run = &report.run;
    let counts = &report.counts;
    out.push_str("<section id=\"header\"><dl class=\"facts\">\n");
    let mut fact = |name: &str, html: String| {
        let _ = writeln!(out, "<dt>{name}</dt><dd>{html}</dd>");
    };
    fact(
        "Status",
        format!(
            "<strong id=\"run-status\">{}</strong>{}",
            run.status.as_str(),
            run.error
                .as_deref()
                .map(|error| format!(" — {}", escape(error)))
                .unwrap_or_default()
        ),
    );
    fact(
        "Started",
        format!(
            "{} · ended {}",
            escape(&run.started_at),
            escape(run.ended_at.as_deref().unwrap_or("-"))
        ),
    );
    let unit = match report.kind {
        RunKind::Items(_) => "Worker calls",
        RunKind::Repository(_) => "Agents",
    };
    fact(
        unit,
        format!(
            "<span id=\"agents\" data-attempts=\"{}\">{}</span>; {} attempts, {} tool calls, {} denied requests",
            counts.attempts,
            escape(&counts.describe()),
            group(counts.attempts),
            group(counts.tool_calls),
            group(counts.denials),
        ),
    );
    fact(
        "Tokens",
        format!(
            "<span id=\"total-tokens\" data-value=\"{}\">{}</span> ({} in, {} out; all attempts)",
            counts.tokens(),
            group(counts.tokens()),
            group(counts.input_tokens),
            group(counts.output_tokens)
        ),
    );
    fact(
        "Dollars",
        format!(
            "<span id=\"total-dollars\" data-value=\"{}\">{}</span>",
            counts.dollars,
            dollars(counts.dollars)
        ),
    );
    fact(
        "Prompt cache",
        format!(
            "<span id=\"cache\" data-read=\"{}\" data-written=\"{}\" data-saved=\"{}\">{}</span>",
            counts.cache_read_tokens,
            counts.cache_write_tokens,
            counts.cache_saved,
            escape(&counts.describe_cache())
        ),
    );
    match &report.kind {
        RunKind::Repository(outcome) => repository_facts(&mut fact, outcome),
        RunKind::Items(items) => {
            fact(
                "Items",
                format!(
                    "<span id=\"items\" data-items=\"{}\" data-succeeded=\"{}\" data-failed=\"{}\">{} ({} succeeded, {} failed)</span>{}",
                    items.items,
                    items.succeeded,
                    items.failed,
                    group(items.items),
                    group(items.succeeded),
                    group(items.failed),
                    items
                        .status
                        .as_deref()
                        .map(|status| format!(" · {}", escape(status)))
                        .unwrap_or_else(|| " · no summary written yet".to_owned())
                ),
            );
            if let Some(wall) = report_wall(report) {
                fact("Wall time", duration_text(wall));
            }
        }
    }
    out.push_str("</dl></section>\n");
}

/// The store's start-to-end time of a run.
fn report_wall(report: &RunReport) -> Option<Duration> {
    let end = report.run.ended_at.as_deref()?;
    crate::store::elapsed(&report.run.started_at, end)
}

fn repository_facts(fact: &mut impl FnMut(&str, String), outcome: &RepositoryOutcome) {
    let wall = match (outcome.wall_time, outcome.estimated_wall_time) {
        (Some(wall), Some(estimate)) => format!(
            "{} (estimated about {})",
            duration_text(wall),
            crate::plan::estimate::human_duration(estimate)
        ),
        (Some(wall), None) => duration_text(wall),
        (None, _) => "not ended".to_owned(),
    };
    fact("Wall time", wall);
    if let Some(files) = outcome.files_changed {
        fact("Files changed", group(files));
    }
    fact(
        "Scope check",
        match &outcome.out_of_scope {
            None => "not run yet".to_owned(),
            Some(paths) if paths.is_empty() => {
                "<span class=\"ok\">every change is inside a declared scope</span>".to_owned()
            }
            Some(paths) => format!(
                "<span class=\"red\">RED FLAG: {} file(s) changed outside every declared scope:</span> {}",
                paths.len(),
                paths
                    .iter()
                    .map(|path| format!("<code>{}</code>", escape(path)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
    );
    fact(
        "Tests",
        match &outcome.test {
            None => "none run".to_owned(),
            Some(test) => format!(
                "<code>{}</code> {}",
                escape(&test.command),
                if test.passed {
                    "<span class=\"ok\">passed</span>"
                } else {
                    "<span class=\"red\">failed</span>"
                }
            ),
        },
    );
}

/// Where an attempt's row on the timeline begins: its wait for its dependencies (drawn as a
/// dashed line before its bar), else its start.
fn occupied_from(bar: &AttemptBar) -> u64 {
    bar.dependency_wait_from_ms
        .map_or(bar.start_ms, |from| from.min(bar.start_ms))
}

/// Lane of each attempt (in order), packed so that attempts never share a lane while they
/// run or wait for their dependencies (so a dashed wait line never runs behind another bar);
/// and the number of lanes (the most attempts that ran or waited at once).
fn lanes(attempts: &[AttemptBar], span_ms: u64) -> (Vec<usize>, usize) {
    let mut order: Vec<usize> = (0..attempts.len()).collect();
    order.sort_by_key(|&i| {
        (
            occupied_from(&attempts[i]),
            attempts[i].end_ms.unwrap_or(span_ms),
        )
    });
    let mut free: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::new();
    let mut lane_of = vec![0; attempts.len()];
    let mut count = 0;
    for i in order {
        let bar = &attempts[i];
        let end = bar.end_ms.unwrap_or(span_ms).max(bar.start_ms + 1);
        let lane = match free.peek() {
            Some(Reverse((ends, lane))) if *ends <= occupied_from(bar) => {
                let lane = *lane;
                free.pop();
                lane
            }
            _ => {
                count += 1;
                count - 1
            }
        };
        lane_of[i] = lane;
        free.push(Reverse((end, lane)));
    }
    (lane_of, count)
}

/// Tick spacing (1, 2 or 5 × 10^k ms) giving at most ten ticks over `span_ms`.
fn tick_step(span_ms: u64) -> u64 {
    let mut step = 1;
    loop {
        for factor in [1, 2, 5] {
            if span_ms / (step * factor) <= 10 {
                return step * factor;
            }
        }
        step *= 10;
    }
}

fn axis(out: &mut String, span_ms: u64, top: f64, bottom: f64) {
    let step = tick_step(span_ms.max(1));
    let mut at = 0;
    while at <= span_ms {
        let x = at as f64 / span_ms.max(1) as f64 * WIDTH;
        let _ = write!(
            out,
            "<line class=\"tick\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{bottom:.1}\"/>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{label}</text>",
            tx = (x + 2.0).min(WIDTH - 40.0),
            ty = top - 4.0,
            label = ms_text(at),
        );
        at += step;
    }
}

fn tooltip(bar: &AttemptBar, span_ms: u64) -> String {
    let mut text = format!(
        "{} · attempt {} · {}{}",
        bar.agent_id,
        bar.attempt,
        status_word(bar.status),
        if bar.escalated { " (escalated)" } else { "" }
    );
    let _ = write!(
        text,
        "\nmode {}{}",
        bar.mode.map_or("-", |mode| mode.as_str()),
        bar.model
            .as_deref()
            .map(|model| format!(" ({model})"))
            .unwrap_or_default()
    );
    let end = bar.end_ms.unwrap_or(span_ms);
    let _ = write!(
        text,
        "\n{} → {}{} ({})",
        ms_text(bar.start_ms),
        ms_text(end),
        if bar.end_ms.is_none() { ", no end" } else { "" },
        ms_text(end.saturating_sub(bar.start_ms))
    );
    let _ = write!(
        text,
        "\ntokens {} in, {} out · {}",
        group(bar.input_tokens),
        group(bar.output_tokens),
        dollars(bar.dollars)
    );
    let list = |items: &[String]| {
        let mut shown = items.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        if items.len() > 5 {
            let _ = write!(shown, " (+{} more)", items.len() - 5);
        }
        if shown.is_empty() {
            "-".to_owned()
        } else {
            shown
        }
    };
    let _ = write!(text, "\nfiles: {}", list(&bar.files));
    let mut tools = bar.tools.clone();
    tools.sort_unstable();
    tools.dedup();
    let _ = write!(text, "\ntools: {}", list(&tools));
    let _ = write!(text, "\ndenials: {}", bar.denials);
    if bar.rate_wait_ms > 0 {
        let _ = write!(text, "\nrate wait: {}", ms_text(bar.rate_wait_ms));
    }
    if let Some(error) = &bar.error {
        let first = error.lines().next().unwrap_or_default();
        let _ = write!(text, "\nerror: {}", crate::text::cut(first, 200));
    }
    escape(&text)
}

fn timeline(out: &mut String, report: &RunReport) {
    if report.attempts.is_empty() {
        return;
    }
    let span_ms = (report.span.as_millis() as u64).max(1);
    let (lane_of, lanes) = lanes(&report.attempts, span_ms);
    // About 800 units tall at most; a fleet of a thousand at once gets sub-unit lanes, which
    // still draw as a band whose shape is the run's concurrency.
    let lane_height = (800.0 / lanes.max(1) as f64).clamp(0.5, 14.0);
    let top = 22.0;
    let height = top + lanes as f64 * lane_height + 6.0;
    let title = match report.kind {
        RunKind::Repository(_) => "Agent timeline",
        RunKind::Items(_) => "Worker call timeline",
    };
    let _ = write!(
        out,
        "<section id=\"timeline\"><h2>{title}</h2>\
         <p class=\"legend\">One bar per attempt, from its start to its end, on {lanes} lane(s) \
         (the most attempts that ran or waited for their dependencies at once); hover a bar \
         for its tokens, dollars, files, tools and denials.<span style=\"background:#2e9d57\"></span>success\
         <span style=\"background:#d64545\"></span>failure<span style=\"background:#e08a1e\"></span>rollback\
         <span style=\"background:#8a8f98\"></span>running or interrupted\
         <span style=\"background:#7048b8\"></span>checkpoint. \
         The darker start of a bar is the time its model calls waited for the rate governor \
         (summed over its calls); a dashed line before a bar, the time it waited for its \
         dependencies.</p>\n\
         <svg id=\"timeline-svg\" viewBox=\"0 0 {WIDTH} {height:.1}\" xmlns=\"http://www.w3.org/2000/svg\">",
    );
    axis(out, span_ms, top - 4.0, height);
    let scale = WIDTH / span_ms as f64;
    // Waits on dependencies first, so the bars draw over them.
    for (bar, lane) in report.attempts.iter().zip(&lane_of) {
        if let Some(from) = bar.dependency_wait_from_ms {
            let y = top + (*lane as f64 + 0.4) * lane_height;
            let _ = writeln!(
                out,
                "<line class=\"dep\" x1=\"{x1:.1}\" x2=\"{x2:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" \
                 stroke=\"#8a8f98\" stroke-dasharray=\"3 2\"><title>{agent} waited for its \
                 dependencies for {wait}</title></line>",
                x1 = from as f64 * scale,
                x2 = bar.start_ms as f64 * scale,
                agent = escape(bar.agent_id.as_str()),
                wait = ms_text(bar.start_ms.saturating_sub(from)),
            );
        }
    }
    for (bar, lane) in report.attempts.iter().zip(&lane_of) {
        let end = bar.end_ms.unwrap_or(span_ms);
        let x = bar.start_ms as f64 * scale;
        let width = (end.saturating_sub(bar.start_ms) as f64 * scale).max(0.5);
        let y = top + *lane as f64 * lane_height;
        let _ = writeln!(
            out,
            "<rect class=\"b s-{status}\" data-agent=\"{agent}\" data-attempt=\"{attempt}\" \
             x=\"{x:.1}\" y=\"{y:.1}\" width=\"{width:.1}\" height=\"{h:.1}\"><title>{title}</title></rect>",
            status = status_word(bar.status),
            agent = escape(bar.agent_id.as_str()),
            attempt = bar.attempt,
            h = if lane_height >= 4.0 {
                lane_height * 0.8
            } else {
                lane_height
            },
            title = tooltip(bar, span_ms),
        );
        if bar.rate_wait_ms > 0 {
            let span = end.saturating_sub(bar.start_ms);
            let _ = writeln!(
                out,
                "<rect class=\"w\" data-wait=\"{wait}\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" \
                 height=\"{h:.1}\" fill=\"#000\" fill-opacity=\"0.35\"></rect>",
                wait = bar.rate_wait_ms,
                w = (bar.rate_wait_ms.min(span) as f64 * scale).max(0.5),
                h = if lane_height >= 4.0 {
                    lane_height * 0.8
                } else {
                    lane_height
                },
            );
        }
    }
    for checkpoint in &report.checkpoints {
        let x = checkpoint.at_ms as f64 * scale;
        let _ = write!(
            out,
            "<line class=\"ck\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y1}\" y2=\"{height:.1}\">\
             <title>checkpoint {seq} ({label}) at {at}: {done} agent(s) done</title></line>",
            y1 = top - 4.0,
            seq = checkpoint.seq,
            label = escape(&checkpoint.label),
            at = ms_text(checkpoint.at_ms),
            done = checkpoint.completed_agents,
        );
    }
    out.push_str("</svg></section>\n");
}

fn waves(out: &mut String, report: &RunReport) {
    if report.waves.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"waves\"><h2>Dependency waves</h2>\
         <p class=\"note\">Wave 1 depends on nothing; each later wave depends on an earlier one. \
         Agents start as soon as their own dependencies succeed, not wave by wave.</p><table>\
         <tr><th>wave</th><th>agents</th><th>task ids</th></tr>\n",
    );
    for (index, wave) in report.waves.iter().enumerate() {
        let mut ids = wave
            .iter()
            .take(20)
            .map(|id| escape(id))
            .collect::<Vec<_>>()
            .join(", ");
        if wave.len() > 20 {
            let _ = write!(ids, " … (+{} more)", wave.len() - 20);
        }
        let _ = writeln!(
            out,
            "<tr><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{ids}</td></tr>",
            index + 1,
            wave.len()
        );
    }
    out.push_str("</table></section>\n");
}

/// Column of the requests chart for a moment `at` of a run `span_ms` long.
fn bucket(at: u64, span_ms: u64) -> usize {
    let index = ((at as f64 / span_ms as f64) * BUCKETS as f64) as usize;
    index.min(BUCKETS - 1)
}

/// Requests sent and 429s answered over time: a column per sixtieth of the run, blue for the
/// requests, red for those answered 429, each call's tries placed at its answer.
fn requests(out: &mut String, report: &RunReport) {
    if report.calls.is_empty() {
        return;
    }
    let span_ms = (report.span.as_millis() as u64).max(1);
    let mut sent = [0u64; BUCKETS];
    let mut limited = [0u64; BUCKETS];
    for call in &report.calls {
        let index = bucket(call.at_ms, span_ms);
        sent[index] += u64::from(call.tries);
        limited[index] += u64::from(call.rate_limited);
    }
    let total_sent: u64 = sent.iter().sum();
    let total_limited: u64 = limited.iter().sum();
    let retried = report.calls.iter().filter(|call| call.tries > 1).count() as u64;
    let peak = sent.iter().copied().max().unwrap_or(1).max(1);
    let bucket_ms = span_ms / BUCKETS as u64;
    let (top, plot) = (22.0, 120.0);
    let _ = write!(
        out,
        "<section id=\"requests\"><h2>Model requests and 429s over time</h2>\
         <p class=\"legend\"><span style=\"background:#4a78c2\"></span>\
         <b id=\"requests-sent\" data-value=\"{total_sent}\">{sent_text}</b> request(s) \
         for {calls} answered model call(s), {retried} of them retried\
         <span style=\"background:#d64545\"></span><b id=\"requests-429\" \
         data-value=\"{total_limited}\">{limited_text}</b> answered 429 (rate limited). \
         A call's tries are drawn when its answer came; at most {peak} in one {width}-wide \
         column.</p>\
         <svg viewBox=\"0 0 {WIDTH} {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        sent_text = group(total_sent),
        calls = group(report.calls.len() as u64),
        retried = group(retried),
        limited_text = group(total_limited),
        width = ms_text(bucket_ms.max(1)),
        h = top + plot + 4.0,
    );
    axis(out, span_ms, top - 4.0, top + plot);
    let column = WIDTH / BUCKETS as f64;
    for (index, (&count, &rate_limited)) in sent.iter().zip(&limited).enumerate() {
        if count == 0 {
            continue;
        }
        let x = index as f64 * column;
        let from = ms_text(index as u64 * bucket_ms);
        let height = count as f64 / peak as f64 * plot;
        let _ = write!(
            out,
            "<rect fill=\"#4a78c2\" x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\">\
             <title>{count} request(s) from {from}</title></rect>",
            y = top + plot - height,
            w = column - 1.0,
        );
        if rate_limited > 0 {
            let height = rate_limited as f64 / peak as f64 * plot;
            let _ = write!(
                out,
                "<rect class=\"r429\" data-count=\"{rate_limited}\" fill=\"#d64545\" \
                 x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\">\
                 <title>{rate_limited} of them answered 429 (rate limited) from {from}</title></rect>",
                y = top + plot - height,
                w = column - 1.0,
            );
        }
    }
    out.push_str("</svg></section>\n");
}

/// A table of labelled values with a bar each, scaled to the largest.
fn bar_table(out: &mut String, header: [&str; 2], rows: &[(String, u64)]) {
    let peak = rows.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let _ = write!(
        out,
        "<table class=\"bars\"><tr><th>{}</th><th>{}</th><th></th></tr>",
        escape(header[0]),
        escape(header[1])
    );
    for (label, value) in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"bar\"><div style=\"width:{:.1}%\"></div></td></tr>",
            escape(label),
            group(*value),
            *value as f64 / peak as f64 * 100.0
        );
    }
    out.push_str("</table>\n");
}

fn costs(out: &mut String, report: &RunReport) {
    if report.by_agent.is_empty() {
        return;
    }
    out.push_str(
        "<section id=\"costs\"><h2>Tokens and dollars by mode</h2><table>\
        <tr><th>mode</th><th>attempts</th><th>tokens</th><th>dollars</th></tr>\n",
    );
    for mode in &report.by_mode {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&mode.mode),
            group(mode.attempts),
            group(mode.tokens),
            dollars(mode.dollars)
        );
    }
    out.push_str("</table>\n");
    let shown = report.by_agent.len().min(TOP_AGENTS);
    let _ = writeln!(
        out,
        "<h2>Tokens and dollars by agent</h2><p class=\"note\">{} agent(s); {} shown, most \
         dollars first.</p><table><tr><th>agent</th><th>status</th><th>attempts</th>\
         <th>tokens</th><th>dollars</th><th></th></tr>",
        group(report.by_agent.len() as u64),
        if shown == report.by_agent.len() {
            "all".to_owned()
        } else {
            format!("the {shown}")
        }
    );
    let peak = report
        .by_agent
        .first()
        .map_or(0.0, |agent| agent.dollars)
        .max(f64::MIN_POSITIVE);
    for agent in report.by_agent.iter().take(TOP_AGENTS) {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"bar\"><div style=\"width:{:.1}%\"></div></td></tr>",
            escape(agent.agent_id.as_str()),
            status_word(agent.status),
            agent.attempts,
            group(agent.tokens),
            dollars(agent.dollars),
            agent.dollars / peak * 100.0
        );
    }
    out.push_str("</table></section>\n");
}

fn more_rows(out: &mut String, total: usize, what: &str) {
    if total > MAX_ROWS {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} more {what} not shown (the run store has them all).</p>",
            group((total - MAX_ROWS) as u64)
        );
    }
}

fn denials(out: &mut String, report: &RunReport) {
    let _ = write!(out, "<section id=\"denials\"><h2>Denied requests</h2>");
    if report.denials.is_empty() {
        out.push_str("<p>None: no agent asked for anything its policy refuses.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><tr><th>at</th><th>agent</th><th>attempt</th><th>tool</th><th>target</th>\
         <th>reason</th></tr>\n",
    );
    for denial in report.denials.iter().take(MAX_ROWS) {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"n\">{}</td><td>{}</td>\
             <td><code>{}</code></td><td>{}</td></tr>",
            escape(&denial.at),
            escape(denial.agent_id.as_str()),
            denial.attempt,
            escape(&denial.tool),
            escape(denial.target.as_deref().unwrap_or("-")),
            escape(&denial.reason)
        );
    }
    out.push_str("</table>");
    more_rows(out, report.denials.len(), "denials");
    out.push_str("</section>\n");
}

/// `+3 −1`, or `binary`.
fn lines_text(lines: Option<(u64, u64)>) -> String {
    match lines {
        Some((added, removed)) => format!(
            "<span class=\"add\">+{}</span> <span class=\"del\">\u{2212}{}</span>",
            group(added),
            group(removed)
        ),
        None => "binary".to_owned(),
    }
}

/// Each agent's diff stat: its files, the lines added and removed in each, and its totals.
fn files_changed(out: &mut String, report: &RunReport) {
    if !matches!(report.kind, RunKind::Repository(_)) {
        return;
    }
    out.push_str("<section id=\"files\"><h2>Diff stat per agent</h2>");
    if report.files_changed.is_empty() {
        out.push_str("<p>No successful attempt wrote a file.</p></section>\n");
        return;
    }
    // Counts are known for all files or for none (they come from one diff).
    let known = report
        .files_changed
        .iter()
        .flat_map(|agent| &agent.files)
        .any(|file| file.lines.is_some());
    let _ = writeln!(
        out,
        "<p class=\"note\">The files each agent's successful attempt wrote (changes of failed \
         attempts were rolled back), with the lines added and removed in each {}.</p>\
         <table><tr><th>agent</th><th>files</th><th>lines</th><th>paths</th></tr>",
        if known {
            "between the run's base commit and its last checkpoint; a file marked * was written \
             by more than one agent, so its lines are not this agent's alone"
        } else {
            "(unknown here: the run has no checkpoint yet, or git cannot read the repository)"
        }
    );
    for agent in report.files_changed.iter().take(MAX_ROWS) {
        let (added, removed) = agent.lines();
        let paths = agent
            .files
            .iter()
            .map(|file| {
                format!(
                    "<code>{}</code>{} {}",
                    escape(&file.path),
                    if file.shared { "*" } else { "" },
                    if known {
                        lines_text(file.lines)
                    } else {
                        String::new()
                    }
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = writeln!(
            out,
            "<tr data-diff-agent=\"{agent_id}\" data-added=\"{added}\" data-removed=\"{removed}\">\
             <td><code>{agent_id}</code></td><td class=\"n\">{files}</td><td class=\"n\">{lines}</td>\
             <td>{paths}</td></tr>",
            agent_id = escape(agent.agent_id.as_str()),
            files = agent.files.len(),
            lines = if known {
                lines_text(Some((added, removed)))
            } else {
                "?".to_owned()
            },
        );
    }
    out.push_str("</table>");
    more_rows(out, report.files_changed.len(), "agents");
    out.push_str("</section>\n");
}

fn item_sections(out: &mut String, items: &ItemOutcome) {
    out.push_str("<section id=\"item-counts\"><h2>Items</h2>");
    bar_table(
        out,
        ["outcome", "items"],
        &[
            ("succeeded".to_owned(), items.succeeded),
            ("failed".to_owned(), items.failed),
        ],
    );
    for (field, counts) in &items.counts {
        let _ = write!(out, "<h2>By {}</h2>", escape(field));
        bar_table(out, [field, "items"], counts);
    }
    out.push_str("</section>\n<section id=\"item-failures\"><h2>Failed items</h2>");
    if items.failures_total == 0 {
        out.push_str("<p>None.</p></section>\n");
        return;
    }
    if !items.failures_by_kind.is_empty() {
        bar_table(out, ["reason", "items"], &items.failures_by_kind);
    }
    out.push_str("<table><tr><th>item</th><th>reason</th><th>attempts</th><th>message</th></tr>\n");
    for failure in &items.failures {
        let _ = writeln!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            escape(&failure.id),
            escape(&failure.reason),
            failure.attempts,
            escape(&crate::text::cut(&failure.message, 500))
        );
    }
    out.push_str("</table>");
    let listed = items.failures.len() as u64;
    if items.failures_total > listed {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} more in <code>failed.jsonl</code>.</p>",
            group(items.failures_total - listed)
        );
    }
    out.push_str("</section>\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::report::{AgentTotals, CallMark, ModeTotals, RepositoryOutcome};
    use crate::store::{RunRow, RunStatus, StatusCounts};

    fn bar(index: u64) -> AttemptBar {
        AttemptBar {
            agent_id: format!("agent-{index:05}").into(),
            attempt: 1,
            status: Some(AgentStatus::Success),
            mode: Some(crate::config::Mode::Fast),
            model: Some("claude-haiku".to_owned()),
            escalated: false,
            start_ms: index * 3,
            end_ms: Some(index * 3 + 2_000),
            input_tokens: 1_000,
            output_tokens: 100,
            dollars: 0.001,
            files: vec![format!("src/file_{index}.ts")],
            tools: vec!["read_file".to_owned(), "edit_file".to_owned()],
            denials: 0,
            rate_wait_ms: 0,
            dependency_wait_from_ms: None,
            error: None,
        }
    }

    #[test]
    fn rate_waits_darken_the_start_of_their_bars() {
        let mut report = report(3);
        report.attempts[1].rate_wait_ms = 500;
        let page = render_html(&report);
        assert_eq!(page.matches("class=\"w\"").count(), 1);
        assert!(page.contains("data-wait=\"500\""));
        assert!(
            page.contains("rate wait: 500ms") || page.contains("rate wait: 0.5s"),
            "tooltip"
        );
    }

    /// The requests chart counts every try of a call, and its 429s in red in the column of
    /// the call's answer.
    #[test]
    fn requests_over_time_count_tries_and_show_429s_where_they_happened() {
        let mut report = report(3);
        report.calls = vec![
            CallMark {
                at_ms: 100,
                tries: 1,
                rate_limited: 0,
            },
            CallMark {
                at_ms: 200,
                tries: 3,
                rate_limited: 2,
            },
            // Three quarters into the run, in another column.
            CallMark {
                at_ms: 24_000,
                tries: 2,
                rate_limited: 1,
            },
            CallMark {
                at_ms: 24_100,
                tries: 2,
                rate_limited: 0,
            },
        ];
        let page = render_html(&report);
        assert!(
            page.contains("id=\"requests-sent\" data-value=\"8\""),
            "{page}"
        );
        assert!(page.contains("id=\"requests-429\" data-value=\"3\""));
        assert!(page.contains("for 4 answered model call(s), 3 of them retried"));
        let columns: Vec<(String, String)> = page
            .split("<rect class=\"r429\" data-count=\"")
            .skip(1)
            .map(|rest| {
                let count = rest.split('"').next().unwrap().to_owned();
                let x = rest
                    .split("x=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap();
                (count, x.to_owned())
            })
            .collect();
        let x_of = |at_ms: u64| {
            format!(
                "{:.1}",
                bucket(at_ms, 32_000) as f64 * WIDTH / BUCKETS as f64
            )
        };
        assert_eq!(
            columns,
            vec![("2".to_owned(), x_of(200)), ("1".to_owned(), x_of(24_000))]
        );
    }

    fn report(agents: u64) -> RunReport {
        RunReport {
            run: RunRow {
                run_id: "r".into(),
                workflow: "w".to_owned(),
                config_path: None,
                plan_hash: None,
                repo: None,
                status: RunStatus::Completed,
                started_at: "2026-01-01T00:00:00.000Z".to_owned(),
                ended_at: Some("2026-01-01T00:00:32.000Z".to_owned()),
                base_commit: None,
                agents_planned: agents,
                total_tokens: 0,
                total_input_tokens: 0,
                total_output_tokens: 0,
                total_cost_usd: 0.0,
                error: None,
            },
            counts: StatusCounts::default(),
            kind: RunKind::Repository(RepositoryOutcome::default()),
            attempts: (0..agents).map(bar).collect(),
            span: Duration::from_millis(32_000),
            waves: Vec::new(),
            by_mode: vec![ModeTotals {
                mode: "fast".to_owned(),
                attempts: agents,
                tokens: agents * 1_100,
                dollars: agents as f64 * 0.001,
            }],
            by_agent: (0..agents)
                .map(|index| AgentTotals {
                    agent_id: format!("agent-{index:05}").into(),
                    attempts: 1,
                    status: Some(AgentStatus::Success),
                    tokens: 1_100,
                    dollars: 0.001,
                })
                .collect(),
            calls: (0..agents * 3)
                .map(|i| CallMark {
                    at_ms: i * 32_000 / (agents * 3),
                    tries: 1,
                    rate_limited: 0,
                })
                .collect(),
            checkpoints: Vec::new(),
            denials: Vec::new(),
            files_changed: Vec::new(),
        }
    }

    /// 10,000 agents: one element (and its tooltip) per attempt and a bounded number of
    /// others, so a browser opens the page without laying out tens of thousands of rows.
    #[test]
    fn ten_thousand_agents_cost_one_bar_each_and_little_else() {
        let html = render_html(&report(10_000));
        assert_eq!(html.matches("data-agent=\"").count(), 10_000);
        // The page's own <title>, one per attempt, one per column of requests.
        assert_eq!(html.matches("<title>").count(), 1 + 10_000 + BUCKETS);
        let elements = html.matches('<').count() - html.matches("</").count();
        // Per attempt: the <rect> and its <title>; the rest is fixed-size (top agents, axes).
        assert!(elements < 2 * 10_000 + 2_000, "{elements} elements");
        // A start every 3 ms, 2 s each: 667 at once, so 667 lanes, not 10,000 rows.
        let (_, lanes) = lanes(&report(10_000).attempts, 32_000);
        assert_eq!(lanes, 667);
    }

    #[test]
    fn lanes_never_put_overlapping_attempts_together() {
        let attempts: Vec<AttemptBar> = (0..500).map(bar).collect();
        let (lane_of, count) = lanes(&attempts, 32_000);
        for (i, a) in attempts.iter().enumerate() {
            for (j, b) in attempts.iter().enumerate().skip(i + 1) {
                if lane_of[i] == lane_of[j] {
                    let (a_end, b_end) = (a.end_ms.unwrap(), b.end_ms.unwrap());
                    assert!(a_end <= b.start_ms || b_end <= a.start_ms, "{i} and {j}");
                }
            }
        }
        assert!(lane_of.iter().all(|&lane| lane < count));
    }

    /// A dashed dependency wait runs from when the agents began to its bar's start: no other
    /// attempt may be drawn on its lane meanwhile, or the line reads as that attempt's wait.
    #[test]
    fn dependency_waits_keep_their_lane_to_themselves() {
        let mut attempts: Vec<AttemptBar> = (0..40).map(bar).collect();
        // Ten agents that waited from the first start until well after the others began.
        for (index, waiting) in attempts.iter_mut().enumerate().take(10) {
            waiting.dependency_wait_from_ms = Some(0);
            waiting.start_ms = 5_000 + index as u64 * 100;
            waiting.end_ms = Some(waiting.start_ms + 1_000);
        }
        let (lane_of, count) = lanes(&attempts, 32_000);
        for (i, waiting) in attempts.iter().enumerate().take(10) {
            for (j, other) in attempts.iter().enumerate() {
                if i != j && lane_of[i] == lane_of[j] {
                    let (from, to) = (occupied_from(waiting), waiting.end_ms.unwrap());
                    assert!(
                        other.end_ms.unwrap() <= from || other.start_ms >= to,
                        "attempt {j} is drawn over the wait or the bar of {i}"
                    );
                }
            }
        }
        // The 30 others overlap one another (each runs 2 s, starting every 3 ms) and the ten
        // waits: 40 lanes (30 if the waits were left out).
        assert_eq!(count, 40);
    }

    /// The diff stat: per file and per agent, a shared file marked, a binary one said so; and
    /// without a diff (no checkpoint yet) no made-up counts.
    #[test]
    fn diff_stat_per_agent_sums_its_files_and_marks_shared_ones() {
        use crate::report::{AgentFiles, FileChange};
        let file = |path: &str, lines, shared| FileChange {
            path: path.to_owned(),
            lines,
            shared,
        };
        let mut report = report(2);
        report.files_changed = vec![
            AgentFiles {
                agent_id: "agent-00000".into(),
                files: vec![
                    file("src/a.ts", Some((12, 3)), false),
                    file("src/shared.ts", Some((1_500, 0)), true),
                    file("logo.png", None, false),
                ],
            },
            AgentFiles {
                agent_id: "agent-00001".into(),
                files: vec![file("src/shared.ts", Some((1_500, 0)), true)],
            },
        ];
        let page = render_html(&report);
        assert!(page.contains(
            "<tr data-diff-agent=\"agent-00000\" data-added=\"1512\" data-removed=\"3\">"
        ));
        assert!(page.contains("<td class=\"n\">3</td><td class=\"n\"><span class=\"add\">+1,512</span> <span class=\"del\">\u{2212}3</span></td>"));
        assert!(page.contains("<code>src/shared.ts</code>* <span class=\"add\">+1,500</span>"));
        assert!(page.contains("<code>logo.png</code> binary"));
        assert!(page.contains("<code>src/a.ts</code> <span class=\"add\">+12</span>"));

        for agent in &mut report.files_changed {
            for file in &mut agent.files {
                file.lines = None;
            }
        }
        let page = render_html(&report);
        assert!(page.contains("unknown here"));
        assert!(!page.contains("class=\"add\"") && !page.contains(" binary"));
    }

    /// An item run's bars are its worker calls, and the page says so.
    #[test]
    fn an_item_runs_timeline_is_of_worker_calls() {
        let mut report = report(2);
        assert!(render_html(&report).contains("<h2>Agent timeline</h2>"));
        report.kind = RunKind::Items(ItemOutcome::default());
        let page = render_html(&report);
        assert!(page.contains("<h2>Worker call timeline</h2>"));
        assert!(!page.contains("Agent timeline"));
    }

    /// The policy comes before anything the page shows, and allows no script, no fetch.
    #[test]
    fn the_page_forbids_scripts_and_fetches_before_showing_anything() {
        let page = render_html(&report(1));
        let policy = page.find("Content-Security-Policy").unwrap();
        assert!(policy < page.find("<title>").unwrap());
        assert!(CSP.starts_with("default-src 'none';"));
        assert!(!CSP.contains("script-src") && !CSP.contains("img-src"));
    }

    #[test]
    fn escape_leaves_no_markup() {
        assert_eq!(
            escape("<script>alert(\"x\")</script>&'"),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
        );
    }
}
