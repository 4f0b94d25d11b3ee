//! `fanout runs`, `fanout show RUN_ID [AGENT_ID]` and `fanout rollback RUN_ID`: answers from the
//! run store (`.fanout/fanout.db`, or `--store`) and the run's checkpoint refs. Text tables by
//! default, the library's records as JSON with `--json`. [`StoreArg`] is the `--store` option
//! every command that reads or writes the store flattens in.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use fanout_core::git::Git;
use fanout_core::plan::RunId;
use fanout_core::run::lock::RepoLock;
use fanout_core::run::{RollbackOptions, rollback};
use fanout_core::store::{
    AgentDetail, AgentId, AgentRow, EventRecord, RunDetail, RunStatus, RunSummary, Store,
    StoreError, StoreLocation, StoreReader, elapsed,
};

use crate::exit::Exit;

/// `--store`: where the run store lives.
#[derive(Args, Debug, Clone, Default)]
pub struct StoreArg {
    /// The run store: a SQLite file (a relative path is taken under the repository) or a
    /// PostgreSQL database, `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (no TLS yet:
    /// `sslmode=disable` only). Default: $FANOUT_STORE, else `<repo>/.fanout/fanout.db`.
    #[arg(long, value_name = "PATH|URL")]
    pub store: Option<String>,
}

impl StoreArg {
    /// The store of `repo` this option (or `FANOUT_STORE`) chooses.
    pub fn location(&self, repo: &Path) -> Result<StoreLocation, StoreError> {
        StoreLocation::resolve(self.store.as_deref(), repo)
    }
}

#[derive(Args, Debug)]
pub struct RunsArgs {
    /// The repository (default: the current directory).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The run to show (see `fanout runs`).
    pub run_id: RunId,
    /// Show one agent in detail: its attempts, tool calls and denials.
    pub agent_id: Option<AgentId>,
    /// The repository (default: the current directory).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The run whose changes to undo.
    pub run_id: RunId,
    /// Restore this checkpoint instead of the run's base (0: the tree before the run).
    #[arg(long = "to", value_name = "CHECKPOINT")]
    pub to: Option<u64>,
    /// Roll back even if files changed after the run's last checkpoint (they are saved on
    /// `refs/fanout/RUN_ID/pre-rollback` first).
    #[arg(long)]
    pub force: bool,
    /// The repository (default: the current directory).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub store: StoreArg,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The repository's top when `path` is in a git work tree, else `path` itself.
pub(crate) fn repo_root(path: &Path) -> PathBuf {
    Git::open(path)
        .map(|git| git.root().to_path_buf())
        .unwrap_or_else(|_| path.to_path_buf())
}

fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        // `fanout runs | head` closing the pipe early is not an error.
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

fn emit_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot render JSON")?;
    text.push('\n');
    emit(&text)
}

pub fn run_runs(args: RunsArgs) -> anyhow::Result<ExitCode> {
    let repo = repo_root(&args.repo);
    let location = args.store.location(&repo)?;
    let runs = match StoreReader::open_at(&location) {
        Ok(reader) => reader.runs()?,
        Err(fanout_core::store::StoreError::Missing { .. }) => Vec::new(),
        Err(err) => return Err(err.into()),
    };
    if args.json {
        emit_json(&runs)?;
    } else if runs.is_empty() && location.is_postgres() {
        eprintln!("no runs recorded in {location}");
    } else if runs.is_empty() {
        eprintln!("no runs recorded in {}", repo.display());
    } else {
        emit(&runs_table(&runs))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let repo = repo_root(&args.repo);
    let reader = StoreReader::open_at(&args.store.location(&repo)?)?;
    match &args.agent_id {
        None => {
            let detail = reader
                .run(&args.run_id)?
                .with_context(|| format!("no run {} in {}", args.run_id, reader.location()))?;
            if args.json {
                emit_json(&detail)?;
            } else {
                emit(&run_text(&detail))?;
            }
        }
        Some(agent_id) => {
            let detail = reader
                .agent(&args.run_id, agent_id)?
                .with_context(|| format!("run {} has no agent {agent_id}", args.run_id))?;
            if args.json {
                emit_json(&detail)?;
            } else {
                emit(&agent_text(&detail))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_rollback(args: RollbackArgs) -> anyhow::Result<ExitCode> {
    let repo = repo_root(&args.repo);
    let location = args.store.location(&repo)?;
    let options = RollbackOptions {
        to: args.to,
        force: args.force,
    };
    // Not while a live run (or another rollback) changes the tree.
    let _lock = match RepoLock::acquire(&repo, &format!("rollback of run {}", args.run_id)) {
        Ok(lock) => lock,
        Err(err) => {
            eprintln!("error: refusing to roll back: {err}");
            return Ok(Exit::NotReady.into());
        }
    };
    let run_id = args.run_id.clone();
    let root = repo.clone();
    let report = tokio::task::spawn_blocking(move || rollback(&root, &run_id, &options))
        .await
        .context("the rollback task stopped")??;
    // Note it in the run's event log when the run is in the store; the files are already
    // restored, so a failure here is only reported.
    let recorded = match &location {
        StoreLocation::Sqlite(path) => path.exists(),
        StoreLocation::Postgres(_) => true,
    };
    if recorded {
        let noted = async {
            let store = Store::open_at(&location)?;
            store
                .event(EventRecord {
                    run_id: args.run_id.clone(),
                    agent_id: None,
                    kind: "rollback".to_owned(),
                    payload: serde_json::to_value(&report).unwrap_or_default(),
                    at: SystemTime::now(),
                })
                .await?;
            let known = StoreReader::open_at(&location)?
                .run_summary(&args.run_id)?
                .is_some();
            if known {
                store
                    .set_run_status(
                        &args.run_id,
                        RunStatus::RolledBack,
                        Some(SystemTime::now()),
                        Some(format!(
                            "rolled back to checkpoint {} ({})",
                            report.target_seq,
                            short(&report.target_commit)
                        )),
                    )
                    .await?;
            }
            store.close().await.map(|_| ())
        };
        if let Err(err) = noted.await {
            eprintln!("warning: rolled back, but could not note it in the run store: {err}");
        }
    }
    if args.json {
        emit_json(&report)?;
    } else {
        let mut text = format!(
            "rolled back run {} to checkpoint {} ({}): {} file(s) written, {} mode change(s), {} removed, {} unchanged\n",
            report.run_id,
            report.target_seq,
            short(&report.target_commit),
            report.written.len(),
            report.chmodded.len(),
            report.removed.len(),
            report.unchanged
        );
        if let Some(saved) = &report.saved_as {
            let _ = writeln!(
                text,
                "the tree as it was before is saved as {saved} (`git checkout {saved} -- .` brings it back)"
            );
        }
        emit(&text)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
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

/// Left-aligned columns separated by two spaces; the last column is not padded.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(i) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let start = out.len();
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                out.push_str(cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        let end = out[start..].trim_end().len() + start;
        out.truncate(end);
        out.push('\n');
    }
    out
}

fn runs_table(runs: &[RunSummary]) -> String {
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|summary| {
            let run = &summary.run;
            let duration = run
                .ended_at
                .as_deref()
                .and_then(|end| elapsed(&run.started_at, end))
                .map(duration_text)
                .unwrap_or_else(|| "-".to_owned());
            vec![
                run.run_id.to_string(),
                run.workflow.clone(),
                run.status.as_str().to_owned(),
                run.started_at.clone(),
                duration,
                format!("{}/{}", summary.agents.success, summary.agents.planned),
                summary.agents.failure.to_string(),
                summary.agents.rollback.to_string(),
                summary.agents.running.to_string(),
                summary.agents.not_run.to_string(),
                summary.agents.denials.to_string(),
                summary.agents.tokens().to_string(),
                format!("{:.0}%", 100.0 * summary.agents.cached_share()),
                format!("${:.4}", summary.agents.dollars),
                format!("${:.4}", summary.agents.cache_saved),
            ]
        })
        .collect();
    table(
        &[
            "RUN", "WORKFLOW", "STATUS", "STARTED", "DURATION", "OK", "FAILED", "ROLLBACK",
            "RUNNING", "NOT RUN", "DENIED", "TOKENS", "CACHED", "COST", "SAVED",
        ],
        &rows,
    )
}

/// One row per agent (its last attempt), with its attempts' tokens summed and its denials.
fn agents_table(detail: &RunDetail) -> String {
    let mut order: Vec<&AgentId> = Vec::new();
    let mut by_agent: std::collections::HashMap<&AgentId, Vec<&AgentRow>> =
        std::collections::HashMap::new();
    for row in &detail.agent_runs {
        let rows = by_agent.entry(&row.agent_id).or_default();
        if rows.is_empty() {
            order.push(&row.agent_id);
        }
        rows.push(row);
    }
    let rows: Vec<Vec<String>> = order
        .iter()
        .filter_map(|agent| {
            let attempts = by_agent.get(agent)?;
            let last = attempts.iter().max_by_key(|row| row.attempt)?;
            let tokens: u64 = attempts.iter().map(|row| row.token_count).sum();
            let mut tools: Vec<&str> = last.tools_called.iter().map(String::as_str).collect();
            tools.sort_unstable();
            tools.dedup();
            Some(vec![
                last.agent_id.to_string(),
                last.status
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|| "running".to_owned()),
                attempts.len().to_string(),
                last.mode
                    .map(|m| m.as_str().to_owned())
                    .unwrap_or_else(|| "-".to_owned()),
                tokens.to_string(),
                detail
                    .denials_by_agent
                    .get(*agent)
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                last.files_accessed.len().to_string(),
                if tools.is_empty() {
                    "-".to_owned()
                } else {
                    tools.join(",")
                },
                last.duration()
                    .map(duration_text)
                    .unwrap_or_else(|| "-".to_owned()),
            ])
        })
        .collect();
    table(
        &[
            "AGENT", "STATUS", "ATTEMPTS", "MODE", "TOKENS", "DENIED", "FILES", "TOOLS", "DURATION",
        ],
        &rows,
    )
}

fn run_text(detail: &RunDetail) -> String {
    let run = &detail.summary.run;
    let counts = &detail.summary.agents;
    let mut out = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(out, "{name:<10}{value}");
    };
    field("run", run.run_id.as_str());
    field("workflow", &run.workflow);
    field("status", run.status.as_str());
    field("started", &run.started_at);
    field("ended", run.ended_at.as_deref().unwrap_or("-"));
    if let Some(base) = &run.base_commit {
        field("base", base);
    }
    if let Some(hash) = &run.plan_hash {
        field("plan", hash);
    }
    if let Some(error) = &run.error {
        field("error", error);
    }
    field("agents", &counts.describe());
    field(
        "attempts",
        &format!(
            "{}; tool calls: {}; denied requests: {}",
            counts.attempts, counts.tool_calls, counts.denials
        ),
    );
    field(
        "tokens",
        &format!(
            "{} ({} in, {} out; agents, all attempts)",
            counts.tokens(),
            counts.input_tokens,
            counts.output_tokens
        ),
    );
    field("cost", &format!("${:.4}", counts.dollars));
    field("cache", &counts.describe_cache());
    if !detail.agent_runs.is_empty() {
        out.push('\n');
        out.push_str(&agents_table(detail));
    }
    if !detail.checkpoints.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = detail
            .checkpoints
            .iter()
            .map(|c| {
                vec![
                    c.seq.to_string(),
                    short(&c.commit_id).to_owned(),
                    c.completed_agents.to_string(),
                    c.at.clone(),
                    c.label.clone(),
                ]
            })
            .collect();
        out.push_str(&table(
            &["CHECKPOINT", "COMMIT", "COMPLETED", "AT", "LABEL"],
            &rows,
        ));
    }
    let _ = writeln!(out, "\nReport: fanout report {}", run.run_id);
    out
}

fn agent_text(detail: &AgentDetail) -> String {
    let mut out = String::new();
    for agent in &detail.attempts {
        let _ = writeln!(
            out,
            "agent {} of run {}, attempt {}",
            agent.agent_id, agent.run_id, agent.attempt
        );
        let mut field = |name: &str, value: String| {
            let _ = writeln!(out, "  {name:<12}{value}");
        };
        field(
            "status",
            agent
                .status
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|| "running".to_owned()),
        );
        field(
            "task",
            agent
                .task_description
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        );
        field(
            "mode",
            format!(
                "{}{}{}",
                agent.mode.map(|m| m.as_str()).unwrap_or("-"),
                agent
                    .model
                    .as_deref()
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default(),
                if agent.escalated { ", escalated" } else { "" }
            ),
        );
        field(
            "tokens",
            format!(
                "{} ({} in, {} out), ${:.4}",
                agent.token_count, agent.input_tokens, agent.output_tokens, agent.cost_usd
            ),
        );
        field(
            "cache",
            fanout_core::store::cache_sentence(
                agent.cache_read_tokens,
                agent.cache_write_tokens,
                agent.input_tokens,
                agent.cache_saved_usd,
            ),
        );
        field(
            "started",
            agent
                .timestamp_start
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        );
        field(
            "ended",
            agent
                .timestamp_end
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
        );
        if let Some(duration) = agent.duration() {
            field("duration", duration_text(duration));
        }
        field("files", list_text(&agent.files_accessed));
        field("tools", list_text(&agent.tools_called));
        if let Some(error) = &agent.error {
            field("error", error.clone());
        }
        if let Some(checkpoint) = &agent.checkpoint {
            field("checkpoint", checkpoint.clone());
        }
        out.push('\n');
    }
    if detail.tool_calls.is_empty() {
        out.push_str("no tool calls recorded\n");
    } else {
        let rows: Vec<Vec<String>> = detail
            .tool_calls
            .iter()
            .map(|call| {
                vec![
                    call.attempt.to_string(),
                    call.seq.to_string(),
                    call.tool.clone(),
                    call.outcome
                        .clone()
                        .unwrap_or_else(|| if call.ok { "ok" } else { "error" }.to_owned()),
                    call.duration()
                        .map(duration_text)
                        .unwrap_or_else(|| "-".to_owned()),
                    call.target.clone().unwrap_or_else(|| "-".to_owned()),
                    call.error
                        .as_deref()
                        .map(|e| e.lines().next().unwrap_or_default().to_owned())
                        .unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "ATTEMPT", "SEQ", "TOOL", "RESULT", "DURATION", "TARGET", "ERROR",
            ],
            &rows,
        ));
    }
    if !detail.denials.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = detail
            .denials
            .iter()
            .map(|denial| {
                vec![
                    denial.at.clone(),
                    denial.tool.clone(),
                    denial.target.clone().unwrap_or_else(|| "-".to_owned()),
                    denial.reason.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["DENIED AT", "TOOL", "TARGET", "REASON"], &rows));
    }
    out
}

fn list_text(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
