//! `fanout bench plan`: planning a large run end to end.
//!
//! Generates a repository of `--files` files (10 per directory) in a temp dir and a scripted
//! `--agents`-agent plan (each agent one directory, chains of 10 ordered by `depends_on`, every
//! tenth running `npm test`), serves the plan from a simulator child process (so its CPU is not
//! ours), then times [`fanout_core::plan::prepare`]: scan, orchestrator call, parse, validate,
//! estimate, report and save. Target: ≤ 2 s for 1,000 agents over 10,000 files.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use fanout_core::backend::Backend;
use fanout_core::config::Config;
use fanout_core::plan::{self, PlanOptions, PrepareRequest, RepoScan};
use fanout_core::provider::http::HttpConfig;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::bench::ChildSim;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchPlanArgs {
    /// Files in the generated repository.
    #[arg(long, default_value_t = 10_000)]
    pub files: usize,
    /// Agents in the scripted plan (at most one per 10 files).
    #[arg(long, default_value_t = 1_000)]
    pub agents: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    files: usize,
    agents: usize,
    setup_ms: f64,
    scan_ms: f64,
    end_to_end_ms: f64,
    target_ms: f64,
    violations: usize,
    files_in_scope: usize,
    estimated_tokens: u64,
    plan_bytes: usize,
}

const CONFIG: &str = "workflow:\n  name: bench-plan\n  max_parallel_agents: 100\n  shell_allowlist: [npm test, git status]\n  mode_routing:\n    orchestrator: default\n    subtasks_codegen: fast\n";

pub async fn run(args: BenchPlanArgs) -> anyhow::Result<ExitCode> {
    let directories = args.files.div_ceil(10);
    if args.agents == 0 || args.agents > directories {
        bail!("--agents must be between 1 and --files / 10 ({directories})");
    }
    let setup = Instant::now();
    let dir = tempfile::tempdir().context("cannot create a temp dir")?;
    for index in 0..args.files {
        let sub = dir.path().join(format!("src/mod_{:04}", index / 10));
        if index % 10 == 0 {
            std::fs::create_dir_all(&sub).context("cannot create the repository")?;
        }
        let body = format!("export const value{index} = {index};\n").repeat(24);
        std::fs::write(sub.join(format!("file_{index:05}.ts")), body)
            .context("cannot write the repository")?;
    }
    let subtasks: Vec<serde_json::Value> = (0..args.agents)
        .map(|i| {
            let mut task = json!({
                "task_id": format!("agent-{i:04}"),
                "description": format!("Modernize the module src/mod_{i:04}: types, naming, docs."),
                "role": "subtasks_codegen",
                "scope": [format!("src/mod_{i:04}/**")],
                "tools": ["read_file", "edit_file", "search"],
                "mode": "fast",
                "depends_on": if i % 10 == 0 { json!([]) } else { json!([format!("agent-{:04}", i - 1)]) },
            });
            if i % 10 == 9 {
                task["tools"] = json!(["read_file", "edit_file", "search", "bash"]);
                task["shell_commands"] = json!(["npm test"]);
            }
            task
        })
        .collect();
    let plan_json = json!({"workflow": "bench-plan", "subtasks": subtasks});
    let scenario = dir.path().join("scenario.yaml");
    std::fs::write(
        &scenario,
        format!("rules:\n  - match: {{tool: submit_plan}}\n    tool_use: {{name: submit_plan, input: {plan_json}}}\n"),
    )
    .context("cannot write the scenario")?;
    let repository = dir
        .path()
        .join("src")
        .parent()
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    let config = Config::from_str(CONFIG, "bench-plan.yaml").context("bench config")?;
    let sim = ChildSim::start(&["--scenario".to_owned(), scenario.display().to_string()]).await?;
    // The scenario file lives in the repository; the scan sees it, which is fine.
    let fleet = Backend::at(sim.base_url.clone(), HttpConfig::default()).fleet(&config)?;
    let setup_ms = setup.elapsed().as_secs_f64() * 1000.0;

    let scan_started = Instant::now();
    let scanned = RepoScan::scan(&repository)?;
    let scan_ms = scan_started.elapsed().as_secs_f64() * 1000.0;

    let request = PrepareRequest {
        repository,
        task: Some("Modernize every module.".to_owned()),
        plan_file: None,
        options: PlanOptions::default(),
        dry_run: true,
        save: true,
        calibration: Default::default(),
    };
    let started = Instant::now();
    let prepared = plan::prepare(&config, &request, Some(&fleet), &CancellationToken::new())
        .await
        .context("planning failed")?;
    let end_to_end_ms = started.elapsed().as_secs_f64() * 1000.0;
    drop(sim);

    let report = Report {
        files: scanned.files.len(),
        agents: prepared.report.agents_planned,
        setup_ms,
        scan_ms,
        end_to_end_ms,
        target_ms: 2000.0,
        violations: prepared.report.violations.len(),
        files_in_scope: prepared.report.files_in_scope,
        estimated_tokens: prepared.report.tokens.total,
        plan_bytes: plan_json.to_string().len(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "bench plan: {} agents over {} files: end to end {:.0} ms (target ≤ {:.0} ms; scan alone {:.0} ms; setup {:.0} ms not counted)",
            report.agents,
            report.files,
            report.end_to_end_ms,
            report.target_ms,
            report.scan_ms,
            report.setup_ms
        );
        println!(
            "  plan {} KB, {} files in scope, {} violations, {} estimated tokens",
            report.plan_bytes / 1024,
            report.files_in_scope,
            report.violations,
            report.estimated_tokens
        );
    }
    if report.violations > 0 {
        for violation in prepared.report.violations.iter().take(5) {
            eprintln!("violation: {}", violation.line());
        }
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
