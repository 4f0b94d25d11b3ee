//! The MCP tools of `fanout mcp`. Names, inputs and outputs are the contract: each tool has a
//! JSON Schema for its input and its output; an answer carries the output as structured
//! content and a short text rendering for the model to read; a refusal is a tool error
//! (`isError`) whose text says what and why, with nothing written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::plan::{self, PlanOptions, PrepareRequest, RunId, ScopePaths};
use fanout_core::run::launch::{self, Launch, Recorded};
use fanout_core::run::lock::RepoLock;
use fanout_core::store::{AgentId, StoreReader};
use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ServerCapabilities,
    ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::runs::{Ended, Kind, Runs};
use crate::model_args::ModelArgs;
use crate::progress::{eta, human_duration};

/// Agent rows per page of `run_result`.
const PAGE_SIZE: usize = 50;

/// The server: its roots, its model API and the runs it carries out.
#[derive(Clone)]
pub struct FanoutMcp {
    state: Arc<State>,
    tool_router: ToolRouter<FanoutMcp>,
}

struct State {
    roots: Vec<PathBuf>,
    model: ModelArgs,
    store: crate::store_cmd::StoreArg,
    backend: Arc<Backend>,
    runs: Runs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PlanInput {
    /// The workflow file (YAML), under one of the server's roots.
    pub workflow: String,
    /// The repository the agents work on, under one of the server's roots.
    pub repo: String,
    /// The root task (overrides the workflow's `task`).
    #[serde(default)]
    pub task: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PlanOutput {
    pub workflow: String,
    pub repo: String,
    /// No permission violations: the plan can be started.
    pub clean: bool,
    pub agents_planned: usize,
    pub files_in_scope: usize,
    pub estimated_tokens: u64,
    pub estimated_dollars: f64,
    /// One line per violation (agent, what, why).
    pub violations: Vec<String>,
    /// The saved plan; `start_run` runs exactly this file.
    pub plan_path: String,
    /// `sha256:<hex>` of the saved plan: pass it to `start_run`.
    pub plan_sha256: String,
    /// The whole dry-run report as `fanout plan --json` prints it (per-agent rows, shell
    /// commands, external calls, the estimate and what it assumes).
    pub report: Value,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct StartInput {
    pub workflow: String,
    pub repo: String,
    /// The `plan_sha256` a `plan_workflow` call returned for this workflow and repository.
    pub plan_sha256: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StartOutput {
    pub run_id: String,
    pub agents: usize,
    /// `running`: the run goes on in the server; poll `run_status`.
    pub status: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunRef {
    pub repo: String,
    pub run_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct StatusOutput {
    pub run_id: String,
    /// `running`, `completed`, `partial`, `failed`, `tests_failed`, `cancelled`, …
    pub status: String,
    /// Whether this server is carrying the run out now.
    pub active: bool,
    pub agents: usize,
    pub done: u64,
    pub running: u64,
    pub queued: u64,
    pub failed: u64,
    pub rolled_back: u64,
    pub not_run: u64,
    pub denied: u64,
    pub tokens: u64,
    pub dollars: f64,
    /// Seconds requests spent queued for the rate governor, summed over requests.
    pub rate_wait_seconds: f64,
    pub elapsed_seconds: f64,
    /// Seconds left at the pace so far (and the known rate limits), when it can be told.
    pub eta_seconds: Option<f64>,
    /// Why the engine stopped, if it could not carry the run out.
    pub error: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResultInput {
    pub repo: String,
    pub run_id: String,
    /// One agent's attempts, tool calls and denials instead of the page of agents.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Page of agent rows (50 per page, from 0).
    #[serde(default)]
    pub page: Option<usize>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ResultOutput {
    pub run_id: String,
    pub status: String,
    /// The run's record with its counts (`fanout show --json`).
    pub run: Value,
    /// `summary.json` of a repository run (scope check, tests, synthesis), once it ended.
    pub summary: Option<Value>,
    /// The page of agent rows, or the one agent asked for.
    pub agents: Value,
    pub page: usize,
    pub pages: usize,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListInput {
    pub repo: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListOutput {
    /// Newest first: run id, workflow, status, start, agents, tokens, dollars.
    pub runs: Vec<Value>,
}

/// A refusal, as the model should read it.
fn refused(message: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.into())])
}

/// An answer: `value` as structured content, `text` for the model.
fn answer<T: Serialize>(value: &T, text: String) -> Result<CallToolResult, ErrorData> {
    let structured = serde_json::to_value(value)
        .map_err(|error| ErrorData::internal_error(error.to_string(), None))?;
    let mut result = CallToolResult::structured(structured);
    result.content = vec![ContentBlock::text(text)];
    Ok(result)
}

/// `Ok(answer)` or a refusal from a step that failed with a message.
macro_rules! attempt {
    ($step:expr) => {
        match $step {
            Ok(value) => value,
            Err(message) => return Ok(refused(message)),
        }
    };
}

#[tool_router]
impl FanoutMcp {
    pub fn new(
        roots: Vec<PathBuf>,
        model: ModelArgs,
        store: crate::store_cmd::StoreArg,
        backend: Arc<Backend>,
    ) -> Self {
        FanoutMcp {
            state: Arc::new(State {
                roots,
                model,
                store,
                backend,
                runs: Runs::default(),
            }),
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Plan a workflow on a repository (fanout's dry run): one orchestrator call decomposes the task into sub-agents; the plan is validated against the workflow's permissions and estimated. Changes nothing in the repository. Returns the report and the plan's sha256, which start_run needs.",
        output_schema = schema_for_output::<PlanOutput>()
    )]
    async fn plan_workflow(
        &self,
        Parameters(input): Parameters<PlanInput>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let workflow = attempt!(self.under_roots("workflow", &input.workflow));
        let config = attempt!(load_config(&workflow));
        if config.items.is_some() {
            attempt!(self.item_paths_under_roots(&config));
            let (output, text) = attempt!(super::items::plan(&config, &workflow, &repo).await);
            return answer(&output, text);
        }
        let fleet = attempt!(self.state.backend.fleet(&config).map_err(|e| e.to_string()));
        let request = PrepareRequest {
            repository: repo.clone(),
            task: input.task,
            plan_file: None,
            options: PlanOptions::default(),
            dry_run: true,
            save: true,
            calibration: crate::run_cmd::calibration(
                &self.state.model,
                &attempt!(self.store_of(&repo)),
            ),
        };
        let ticker = progress_ticker(&ctx, format!("{} is planning", config.name));
        let prepared = plan::prepare(&config, &request, Some(&fleet), &ctx.ct).await;
        if let Some(ticker) = ticker {
            ticker.abort();
        }
        let prepared = attempt!(prepared.map_err(|e| format!("planning failed: {e}")));
        let report = &prepared.report;
        let Some(saved) = &report.saved else {
            return Err(ErrorData::internal_error("the plan was not saved", None));
        };
        let violations: Vec<String> = report
            .violations
            .iter()
            .map(|v| {
                let agent = v.agent.as_ref().map(|a| a.to_string());
                format!(
                    "{}: {}: {}",
                    agent.as_deref().unwrap_or("plan"),
                    v.what,
                    v.why
                )
            })
            .collect();
        let output = PlanOutput {
            workflow: config.name.clone(),
            repo: repo.display().to_string(),
            clean: report.is_clean(),
            agents_planned: report.agents_planned,
            files_in_scope: report.files_in_scope,
            estimated_tokens: report.estimate.total_tokens,
            estimated_dollars: report.estimate.dollars,
            violations,
            plan_path: saved.path.display().to_string(),
            plan_sha256: saved.hash.clone(),
            report: json(report)?,
        };
        let verdict = if output.clean {
            format!(
                "Start it with start_run and plan_sha256 {}.",
                output.plan_sha256
            )
        } else {
            format!(
                "{} violation(s); it cannot be started:\n{}",
                output.violations.len(),
                output.violations.join("\n")
            )
        };
        let text = format!(
            "Planned {} agents for workflow {} ({} files in scope, ~{} tokens, ~${:.2}). {verdict}\n\n{}",
            output.agents_planned,
            output.workflow,
            output.files_in_scope,
            output.estimated_tokens,
            output.estimated_dollars,
            report.render(false)
        );
        answer(&output, text)
    }

    #[tool(
        description = "Start a live run of a reviewed plan (plan_sha256 from plan_workflow for this workflow and repository). Returns the run id at once; the run goes on in the server: poll run_status, read run_result.",
        output_schema = schema_for_output::<StartOutput>()
    )]
    async fn start_run(
        &self,
        Parameters(input): Parameters<StartInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let workflow = attempt!(self.under_roots("workflow", &input.workflow));
        let config = attempt!(load_config(&workflow));
        if config.items.is_some() {
            attempt!(self.item_paths_under_roots(&config));
            let output = attempt!(
                super::items::start(
                    &self.state.runs,
                    &self.state.backend,
                    &config,
                    &repo,
                    &attempt!(self.store_of(&repo)),
                    Some(&input.plan_sha256),
                    None,
                )
                .await
            );
            let text = format!(
                "Item run {} started: {} chunks. Poll run_status {{repo, run_id}}.",
                output.run_id, output.agents
            );
            return answer(&output, text);
        }
        let plan_path = attempt!(reviewed_plan(&repo, &input.plan_sha256, &config.name));
        let lock = attempt!(
            RepoLock::acquire(&repo, "an MCP run").map_err(|e| format!("refusing a live run: {e}"))
        );
        let fleet = attempt!(self.state.backend.fleet(&config).map_err(|e| e.to_string()));
        let request = PrepareRequest {
            repository: repo.clone(),
            task: None,
            plan_file: Some(plan_path),
            options: PlanOptions::default(),
            dry_run: false,
            save: true,
            calibration: crate::run_cmd::calibration(
                &self.state.model,
                &attempt!(self.store_of(&repo)),
            ),
        };
        let cancel = tokio_util::sync::CancellationToken::new();
        let prepared = attempt!(
            plan::prepare(&config, &request, None, &cancel)
                .await
                .map_err(|e| format!("cannot load the reviewed plan: {e}"))
        );
        if !prepared.report.is_clean() {
            return Ok(refused(format!(
                "the plan no longer validates against the workflow and repository: {} violation(s); plan it again",
                prepared.report.violations.len()
            )));
        }
        let scope = ScopePaths::new(&prepared.validation, &prepared.scan);
        attempt!(
            plan::ensure_clean(&repo, |path| scope.contains(path))
                .map_err(|e| format!("refusing a live run: {e}"))
        );
        let estimated = prepared.report.estimate.wall_time;
        let store = attempt!(self.store_of(&repo));
        let launch = Launch {
            config: Arc::new(config),
            config_path: Some(workflow),
            repo,
            store,
            fleet,
            simulated: self.state.backend.simulated(),
            lock: Arc::new(lock),
        };
        let inputs = attempt!(launch::fresh(launch, &prepared).map_err(|e| e.to_string()));
        let output = StartOutput {
            run_id: inputs.run_id.to_string(),
            agents: inputs.plan.subtasks.len(),
            status: "running".to_owned(),
        };
        self.state.runs.spawn_plan(inputs, estimated, false);
        let text = format!(
            "Run {} started: {} agents. Poll run_status {{repo, run_id}}.",
            output.run_id, output.agents
        );
        answer(&output, text)
    }

    #[tool(
        description = "A run's progress: status, agents done / running / queued / failed / rolled back, denials, tokens, dollars, rate-limit wait and ETA. Never blocks.",
        output_schema = schema_for_output::<StatusOutput>()
    )]
    async fn run_status(
        &self,
        Parameters(input): Parameters<RunRef>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let live = self.state.runs.get(&RunId::from(input.run_id.as_str()));
        let ended = live.as_ref().and_then(|run| run.ended());
        let active = live.is_some() && ended.is_none();
        let summary = match self
            .store_of(&repo)
            .and_then(|store| run_summary(&store, &input.run_id))
        {
            Ok(summary) => Some(summary),
            // Just started here: the engine has not recorded the run yet.
            Err(_) if active => None,
            Err(message) => return Ok(refused(message)),
        };
        let counts = summary
            .as_ref()
            .map(|summary| summary.agents.clone())
            .unwrap_or_default();
        // How the engine ended in this process, when it did: the store says the same once its
        // last records are in.
        let status = match (&ended, &summary) {
            (Some(Ended::Status(status)), _) => status.as_str(),
            (_, Some(summary)) => summary.run.status.as_str(),
            (_, None) => "running",
        };
        let mut output = StatusOutput {
            run_id: input.run_id.clone(),
            status: status.to_owned(),
            active,
            agents: counts.planned as usize,
            done: counts.success,
            running: counts.running,
            queued: counts.not_run,
            failed: counts.failure,
            rolled_back: counts.rollback,
            not_run: 0,
            denied: counts.denials,
            tokens: counts.tokens(),
            dollars: counts.dollars,
            rate_wait_seconds: 0.0,
            elapsed_seconds: 0.0,
            eta_seconds: None,
            error: match ended {
                Some(Ended::Error(error)) => Some(error),
                _ => None,
            },
        };
        if let Some(run) = &live {
            let tally = run.tally();
            let elapsed = run.started.elapsed();
            output.rate_wait_seconds = tally.rate_limit_wait.as_secs_f64();
            output.elapsed_seconds = elapsed.as_secs_f64();
            if active && run.kind == Kind::Plan {
                // The store counts agents by their last attempt; the live tally knows which
                // are admitted and which still wait for a slot or a dependency.
                output.agents = tally.total;
                output.running = tally.running as u64;
                output.queued = tally.queued() as u64;
                output.eta_seconds = eta(&tally, elapsed)
                    .map(|eta| eta.max(run.estimated.saturating_sub(elapsed)))
                    .map(|eta| eta.as_secs_f64());
            }
        }
        if !active {
            // An ended run: what did not succeed and did not run is "not run", not queued.
            output.not_run = output.queued;
            output.queued = 0;
        }
        let text = format!(
            "Run {}: {}{} · done {} · running {} · queued {} · failed {} · rolled back {} · denied {} · {} tokens · ${:.2} · rate wait {}{}",
            output.run_id,
            output.status,
            if active { " (active)" } else { "" },
            output.done,
            output.running,
            output.queued,
            output.failed,
            output.rolled_back,
            output.denied,
            output.tokens,
            output.dollars,
            human_duration(Duration::from_secs_f64(output.rate_wait_seconds)),
            output
                .eta_seconds
                .map(|eta| format!(" · ETA {}", human_duration(Duration::from_secs_f64(eta))))
                .unwrap_or_default(),
        );
        answer(&output, text)
    }

    #[tool(
        description = "A run's results: its record and counts, summary (scope check, tests, synthesis), and its agents 50 per page (or one agent's attempts, tool calls and denials with agent_id).",
        output_schema = schema_for_output::<ResultOutput>()
    )]
    async fn run_result(
        &self,
        Parameters(input): Parameters<ResultInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let store = attempt!(self.store_of(&repo));
        let summary = attempt!(run_summary(&store, &input.run_id));
        let reader = attempt!(StoreReader::open_at(&store).map_err(|e| e.to_string()));
        let (agents, page, pages) = match &input.agent_id {
            Some(agent_id) => {
                let detail = attempt!(
                    reader
                        .agent(
                            &RunId::from(input.run_id.as_str()),
                            &AgentId::from(agent_id.as_str()),
                        )
                        .map_err(|e| e.to_string())
                );
                let Some(detail) = detail else {
                    return Ok(refused(format!(
                        "run {} has no agent {agent_id}",
                        input.run_id
                    )));
                };
                (json(&detail)?, 0, 1)
            }
            None => {
                let rows = attempt!(
                    reader
                        .agent_runs(&RunId::from(input.run_id.as_str()))
                        .map_err(|e| e.to_string())
                );
                let pages = rows.len().div_ceil(PAGE_SIZE).max(1);
                let page = input.page.unwrap_or(0);
                if page >= pages {
                    return Ok(refused(format!(
                        "page {page} is past the last page ({} rows, {pages} page(s) of {PAGE_SIZE})",
                        rows.len()
                    )));
                }
                let slice: Vec<_> = rows.iter().skip(page * PAGE_SIZE).take(PAGE_SIZE).collect();
                (json(&slice)?, page, pages)
            }
        };
        let summary_file = fanout_core::layout::run_dir(&repo, &RunId::from(input.run_id.as_str()))
            .join("summary.json");
        let summary_json = std::fs::read(&summary_file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        let output = ResultOutput {
            run_id: input.run_id.clone(),
            status: summary.run.status.as_str().to_owned(),
            run: json(&summary)?,
            summary: summary_json,
            agents,
            page,
            pages,
        };
        let scope = match &output.summary {
            // An item run's summary: its items, not files.
            Some(summary) if summary.get("items").is_some() => format!(
                "{} items: {} succeeded, {} failed",
                summary["items"], summary["succeeded"], summary["failed"]
            ),
            Some(summary) => match summary["out_of_scope"].as_array().map(Vec::len) {
                Some(0) => "every change inside its declared scope".to_owned(),
                Some(n) => format!("{n} file(s) changed outside every scope"),
                None => "no scope check recorded".to_owned(),
            },
            None => "no summary yet".to_owned(),
        };
        let text = format!(
            "Run {}: {}; {}; {}. Agents page {} of {}.",
            output.run_id,
            output.status,
            summary.agents.describe(),
            scope,
            page + 1,
            pages
        );
        answer(&output, text)
    }

    #[tool(
        description = "Cancel a run this server is carrying out. Agents in flight stop; the run ends `cancelled` and can be finished later with resume_run.",
        output_schema = schema_for_output::<StatusOutput>()
    )]
    async fn cancel_run(
        &self,
        Parameters(input): Parameters<RunRef>,
    ) -> Result<CallToolResult, ErrorData> {
        let _ = attempt!(self.under_roots("repo", &input.repo));
        let Some(run) = self.state.runs.get(&RunId::from(input.run_id.as_str())) else {
            return Ok(refused(format!(
                "run {} is not running in this server",
                input.run_id
            )));
        };
        run.cancel.cancel();
        // Give the engine a moment to record the cancellation, never long.
        for _ in 0..40 {
            if run.ended().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.run_status(Parameters(input)).await
    }

    #[tool(
        description = "Finish a recorded run that was killed, cancelled or ended partial: agents that succeeded are kept, the others are rolled back and run again. Returns at once; poll run_status.",
        output_schema = schema_for_output::<StartOutput>()
    )]
    async fn resume_run(
        &self,
        Parameters(input): Parameters<RunRef>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let run_id = RunId::from(input.run_id.as_str());
        if let Some(run) = self.state.runs.get(&run_id)
            && run.ended().is_none()
        {
            return Ok(refused(format!(
                "run {} is still running in this server",
                input.run_id
            )));
        }
        let recorded = attempt!(self.store_of(&repo).and_then(|store| {
            launch::recorded(
                &repo,
                &store,
                &RunId::from(input.run_id.as_str()),
                None,
                false,
            )
            .map_err(|e| e.to_string())
        }));
        let resume = match recorded {
            Recorded::Completed => {
                return Ok(refused(format!(
                    "run {} already completed; nothing to do",
                    input.run_id
                )));
            }
            Recorded::Items => {
                let Some(record) = fanout_core::items::run::item_run(&repo, &run_id) else {
                    return Ok(refused(format!(
                        "run {}'s job record cannot be read",
                        input.run_id
                    )));
                };
                if record.retry_of.is_some() {
                    return Ok(refused(format!(
                        "run {} sends again the failures of another run; finish it with `fanout resume {}`",
                        input.run_id, input.run_id
                    )));
                }
                let workflow =
                    attempt!(self.under_roots("workflow", &record.workflow.display().to_string()));
                let config = attempt!(load_config(&workflow));
                attempt!(self.item_paths_under_roots(&config));
                let output = attempt!(
                    super::items::start(
                        &self.state.runs,
                        &self.state.backend,
                        &config,
                        &repo,
                        &attempt!(self.store_of(&repo)),
                        None,
                        Some(run_id.clone()),
                    )
                    .await
                );
                let text = format!(
                    "Resuming item run {}: settled chunks are not sent again. Poll run_status.",
                    output.run_id
                );
                return answer(&output, text);
            }
            Recorded::Plan(resume) => resume,
        };
        if let Err(message) =
            self.under_roots("workflow", &resume.config_path.display().to_string())
        {
            return Ok(refused(message));
        }
        let lock = attempt!(
            RepoLock::acquire(&resume.repo, &format!("resuming run {}", input.run_id))
                .map_err(|e| format!("refusing to resume: {e}"))
        );
        let fleet = attempt!(
            self.state
                .backend
                .fleet(&resume.config)
                .map_err(|e| e.to_string())
        );
        let estimated = resume.estimated_wall;
        let inputs = resume.inputs(fleet, self.state.backend.simulated(), Arc::new(lock));
        let output = StartOutput {
            run_id: inputs.run_id.to_string(),
            agents: inputs.plan.subtasks.len(),
            status: "running".to_owned(),
        };
        self.state.runs.spawn_plan(inputs, estimated, true);
        let text = format!(
            "Resuming run {}: agents that succeeded are kept. Poll run_status.",
            output.run_id
        );
        answer(&output, text)
    }

    #[tool(
        description = "The runs recorded in a repository, newest first.",
        output_schema = schema_for_output::<ListOutput>()
    )]
    async fn list_runs(
        &self,
        Parameters(input): Parameters<ListInput>,
    ) -> Result<CallToolResult, ErrorData> {
        let repo = attempt!(self.under_roots("repo", &input.repo));
        let store = attempt!(self.store_of(&repo));
        let runs = match StoreReader::open_at(&store) {
            Ok(reader) => attempt!(reader.runs().map_err(|e| e.to_string())),
            // No store yet: no runs.
            Err(fanout_core::store::StoreError::Missing { .. }) => Vec::new(),
            Err(error) => return Ok(refused(error.to_string())),
        };
        let rows: Vec<Value> = runs
            .iter()
            .map(|summary| {
                json!({
                    "run_id": summary.run.run_id,
                    "workflow": summary.run.workflow,
                    "status": summary.run.status.as_str(),
                    "started_at": summary.run.started_at,
                    "agents": summary.agents.planned,
                    "tokens": summary.agents.tokens(),
                    "dollars": summary.agents.dollars,
                })
            })
            .collect();
        let mut text = format!("{} run(s) in {}", rows.len(), repo.display());
        for summary in runs.iter().take(20) {
            text.push_str(&format!(
                "\n{}  {}  {}  {} agents",
                summary.run.run_id,
                summary.run.workflow,
                summary.run.status.as_str(),
                summary.agents.planned
            ));
        }
        answer(&ListOutput { runs: rows }, text)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for FanoutMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::from_build_env())
            .with_instructions(
                "fanout runs a large task as many parallel sub-agents, each with its own file \
                 scope and tools, under fleet-wide rate limits and budgets. Always call \
                 plan_workflow first and show the user its report (agents, files in scope, \
                 estimated cost, violations); start_run runs exactly that reviewed plan, named \
                 by its plan_sha256, and returns at once. Then poll run_status and read \
                 run_result."
                    .to_owned(),
            )
    }
}

impl FanoutMcp {
    /// An item workflow reads its input and may write its outputs elsewhere than the run
    /// directory: both must be under the roots too.
    fn item_paths_under_roots(&self, config: &Config) -> Result<(), String> {
        let Some(items) = &config.items else {
            return Ok(());
        };
        // A `dir/*.md` input: the directory before the first pattern character.
        let input = items.input.path.to_string_lossy().into_owned();
        let input = match input.find(['*', '?', '[', '{']) {
            Some(at) => input[..at]
                .rfind('/')
                .map_or(".".to_owned(), |slash| input[..slash].to_owned()),
            None => input,
        };
        self.under_roots("items.input.path", &input)?;
        if let Some(dir) = &items.output.dir {
            // It may not exist yet: its nearest existing ancestor decides.
            let existing = dir.ancestors().find(|a| a.exists()).unwrap_or(dir);
            self.under_roots("items.output.dir", &existing.display().to_string())?;
        }
        Ok(())
    }

    /// The run store of `repo`: the server's `--store`, else the repository's own.
    fn store_of(&self, repo: &Path) -> Result<fanout_core::store::StoreLocation, String> {
        self.state.store.location(repo).map_err(|e| e.to_string())
    }

    /// `path` resolved, if it exists under one of the server's roots.
    fn under_roots(&self, what: &str, path: &str) -> Result<PathBuf, String> {
        let resolved = Path::new(path)
            .canonicalize()
            .map_err(|e| format!("`{what}` {path}: {e}"))?;
        if self
            .state
            .roots
            .iter()
            .any(|root| resolved.starts_with(root))
        {
            Ok(resolved)
        } else {
            let roots: Vec<String> = self
                .state
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect();
            Err(format!(
                "`{what}` {} is outside the server's roots ({}); start the server with --root to allow it",
                resolved.display(),
                roots.join(", ")
            ))
        }
    }
}

fn load_config(workflow: &Path) -> Result<Config, String> {
    Config::from_path(workflow).map_err(|e| e.to_string())
}

fn run_summary(
    store: &fanout_core::store::StoreLocation,
    run_id: &str,
) -> Result<fanout_core::store::RunSummary, String> {
    let reader = StoreReader::open_at(store).map_err(|e| e.to_string())?;
    reader
        .run_summary(&RunId::from(run_id))
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no run {run_id} in {store}"))
}

/// The saved plan of `repo` whose recorded hash is `sha256`, checked: its bytes still hash
/// to it (not edited since review) and it is a plan of `workflow`.
fn reviewed_plan(repo: &Path, sha256: &str, workflow: &str) -> Result<PathBuf, String> {
    let runs = fanout_core::layout::runs_dir(repo);
    let entries = std::fs::read_dir(&runs).map_err(|_| {
        format!(
            "no reviewed plan in {}: call plan_workflow first",
            repo.display()
        )
    })?;
    for entry in entries.flatten() {
        let dir = entry.path();
        let recorded = std::fs::read_to_string(dir.join("plan.sha256")).unwrap_or_default();
        if recorded.trim() != sha256.trim() {
            continue;
        }
        let path = dir.join("plan.json");
        let loaded =
            plan::load_plan(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if loaded.hash != sha256.trim() {
            return Err(format!(
                "{} was edited after its review (its sha256 is now {}); plan it again",
                path.display(),
                loaded.hash
            ));
        }
        if loaded.plan.workflow != workflow {
            return Err(format!(
                "the plan {sha256} is for workflow `{}`, not `{workflow}`",
                loaded.plan.workflow
            ));
        }
        return Ok(path);
    }
    Err(format!(
        "no reviewed plan with sha256 {sha256} in {}: call plan_workflow first and pass the plan_sha256 it returns",
        repo.display()
    ))
}

/// While a long call runs, a progress notification every 2 seconds, if the client asked
/// for progress (it can then keep waiting past its usual timeout).
fn progress_ticker(
    ctx: &RequestContext<RoleServer>,
    message: String,
) -> Option<tokio::task::JoinHandle<()>> {
    let token = ctx.meta.get_progress_token()?;
    let peer = ctx.peer.clone();
    Some(tokio::spawn(async move {
        let mut tick = 0u32;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            tick += 1;
            let param = ProgressNotificationParam::new(token.clone(), f64::from(tick))
                .with_message(format!("{message} ({}s)", tick * 2));
            if peer.notify_progress(param).await.is_err() {
                return;
            }
        }
    }))
}

/// `value` as JSON.
fn json<T: Serialize>(value: &T) -> Result<Value, ErrorData> {
    serde_json::to_value(value).map_err(|e| ErrorData::internal_error(e.to_string(), None))
}
