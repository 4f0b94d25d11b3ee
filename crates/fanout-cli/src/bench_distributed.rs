//! `fanout bench distributed`: what it costs to spread a run over `fanout worker` processes
//! that share a run store, measured on whole processes.
//!
//! Each measured run starts from nothing: `bench run`'s workload (a generated repository of
//! `--agents` files, a reviewed plan in which agent i owns file i, a simulator scenario of
//! `--turns` model turns per agent: read, list, write, report), a fresh store (a SQLite file,
//! or a database created for the run on the PostgreSQL server `--store` names) and a
//! simulator started as a child process, which every process of the run calls as its model
//! API. Then one of:
//! - **one process**: `fanout run WORKFLOW --plan PLAN` as usual (its own agents, checkpoints,
//!   scope check and closing summary call);
//! - **N workers**: N `fanout worker` processes with caches of their own, started and waiting,
//!   then `fanout run … --local-slots 0`, a pure coordinator; once it exits, the workers are
//!   stopped with SIGTERM.
//!
//! Wall time is the one process's, or the coordinator's, from start to exit. CPU time is
//! what the kernel accounts to each process when it is reaped (`bench_process`), its `git`
//! and sandboxed commands included; the simulator's and a local PostgreSQL server's are read
//! from `/proc` and reported apart. Each run is checked: exit status, the coordinator's and
//! the workers' counts, and the tree of `src/` afterwards (every agent's file changed, and
//! the same tree whichever way the run went). Configurations alternate when repeated, and
//! the summary gives each one's median with the spread, and its ratio to the first.
//!
//! With `--command-cpu-ms`, each agent's second turn runs an allowlisted command,
//! `python3 burn.py SECONDS` (committed in the generated repository), which spins until its
//! process has used that much CPU time, in the agent's sandbox. With `--cpu-limit CPUS`,
//! every worker (and the one process) runs in a cgroup v1 cpu group of its own held to that
//! many CPUs, joined before it starts: its commands and `git` processes share its quota. The
//! summary then adds the floor such a run cannot beat: the commands' CPU time over the CPUs
//! the workers may use together (at most the machine's).

use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use fanout_core::ids::RunId;
use fanout_core::store::{PostgresUrl, StoreLocation, StoreReader};
use serde::Serialize;

use crate::bench::ChildSim;
use crate::bench_process::{self, CpuGroup, Reaped, Throttling};
use crate::bench_run::{generate_repository, plan_json, scenario_yaml};

#[derive(Args, Debug, Clone)]
pub struct BenchDistributedArgs {
    /// Number of agents (one file each).
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Model turns per agent (at least 2; at least 4 with --command-cpu-ms).
    #[arg(long, default_value_t = 4)]
    turns: usize,
    /// Simulator latency per model call, in milliseconds.
    #[arg(long, default_value_t = 500)]
    latency_ms: u64,
    /// Worker counts to measure, e.g. `3` or `1,2,3`: each is a coordinator and that many
    /// `fanout worker` processes.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    workers: Vec<usize>,
    /// Units each worker runs at once (default: --max-parallel over the worker count, rounded
    /// up, so a fleet runs as many agents at once as the one process).
    #[arg(long)]
    slots: Option<usize>,
    /// max_parallel_agents of the workflow: how many agents the one process runs at once.
    #[arg(long, default_value_t = 1000)]
    max_parallel: usize,
    /// Leave out the one-process run.
    #[arg(long)]
    no_single: bool,
    /// Each agent runs `python3 burn.py` (allowlisted), which uses this much CPU time.
    #[arg(long, default_value_t = 0, value_name = "MS")]
    command_cpu_ms: u64,
    /// Hold each worker, and the one process, to this many CPUs with a cgroup v1 cpu group of
    /// its own (needs root and /sys/fs/cgroup/cpu).
    #[arg(long, value_name = "CPUS")]
    cpu_limit: Option<f64>,
    /// Measure every configuration this many times (alternating).
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// The store: by default a fresh SQLite file per run; a `postgres://` URL names a server
    /// on which the benchmark creates (and drops) a database per run.
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Make the workers' caches under this directory (e.g. a tmpfs such as /dev/shm) instead
    /// of the run's temporary directory.
    #[arg(long, value_name = "DIR")]
    cache_root: Option<std::path::PathBuf>,
    /// The workers' lease length.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    lease_seconds: u64,
    /// Give up on a run (and say so) after this long.
    #[arg(long, default_value_t = 900, value_name = "SECONDS")]
    timeout_seconds: u64,
    /// Keep each run's directory (repository, store, caches, logs), and its database on a
    /// PostgreSQL store, and print where they are.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// How a run is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Setup {
    OneProcess,
    Workers { workers: usize, slots: usize },
}

impl Setup {
    fn label(&self) -> String {
        match self {
            Setup::OneProcess => "one process".to_owned(),
            Setup::Workers { workers: 1, .. } => "1 worker".to_owned(),
            Setup::Workers { workers, .. } => format!("{workers} workers"),
        }
    }
}

/// One process of a run, as it ended.
#[derive(Debug, Clone, Serialize)]
struct ProcessRecord {
    role: String,
    wall_s: f64,
    #[serde(flatten)]
    reaped: Reaped,
    /// Of its CPU time, what the child processes it reaped used (`git`, sandboxed commands),
    /// as last sampled before it ended.
    children_cpu_s: f64,
    /// Its cgroup's throttling, with --cpu-limit.
    throttling: Option<Throttling>,
    /// A worker's closing report (its JSON line), or the coordinator's outcome.
    report: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize)]
struct RunRecord {
    label: String,
    setup: Setup,
    round: usize,
    wall_s: f64,
    /// Every process of ours (the one process, or the coordinator and the workers).
    cpu_s: f64,
    sim_cpu_s: Option<f64>,
    /// A local PostgreSQL server's processes, when it could be found.
    store_server_cpu_s: Option<f64>,
    model_requests: Option<u64>,
    processes: Vec<ProcessRecord>,
    /// Files under `src/` that differ from the base commit afterwards.
    files_changed: usize,
    /// `git write-tree` of the base with `src/` as the run left it.
    tree: String,
    /// Units leased more than once (a lease expired and another worker took the unit over).
    units_taken_over: Option<u64>,
    /// Summed over the workers' reports.
    committed: Option<u64>,
    lost: Option<u64>,
    abandoned: Option<u64>,
    load_average: Option<f64>,
    /// What was wrong with the run; empty when it did all it should.
    problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }
}

#[derive(Debug, Clone, Serialize)]
struct Summary {
    label: String,
    /// Runs that completed with every check passed (the figures are theirs), and the others.
    runs: usize,
    incomplete: usize,
    wall_s: Option<Spread>,
    cpu_s: Option<Spread>,
    sim_cpu_s: Option<Spread>,
    store_server_cpu_s: Option<Spread>,
    /// Medians over the first configuration's medians.
    wall_ratio: Option<f64>,
    cpu_ratio: Option<f64>,
    /// With --command-cpu-ms: the commands' CPU time over the CPUs this configuration may use.
    cpu_floor_s: Option<f64>,
    wall_over_floor: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    agents: usize,
    turns: usize,
    latency_ms: u64,
    max_parallel: usize,
    command_cpu_ms: u64,
    cpu_limit: Option<f64>,
    store: String,
    cores: usize,
    runs: Vec<RunRecord>,
    summary: Vec<Summary>,
}

/// The command agents run with --command-cpu-ms, as allowlisted and declared.
const COMMAND: &str = "python3 burn.py";

/// The command's script, committed in the generated repository.
const BURN_PY: &str = "\
# Spins until this process has used the CPU time given in seconds (its start-up included),
# so the command costs the same CPU time on any machine. Written by `fanout bench distributed`.
import sys
import time

seconds = float(sys.argv[1])
while time.process_time() < seconds:
    pass
print(f\"used {time.process_time():.3f} s of CPU\")
";

pub async fn run(args: BenchDistributedArgs) -> anyhow::Result<ExitCode> {
    if args.turns < 2 {
        bail!("--turns must be at least 2 (the last turn reports)");
    }
    if args.command_cpu_ms > 0 && args.turns < 4 {
        bail!("--turns must be at least 4 with --command-cpu-ms (the command is the second turn)");
    }
    if args.agents == 0 || args.repeat == 0 || args.max_parallel == 0 {
        bail!("--agents, --repeat and --max-parallel must be at least 1");
    }
    if args.workers.contains(&0) {
        bail!("--workers counts must be at least 1");
    }
    let mut setups = Vec::new();
    if !args.no_single {
        setups.push(Setup::OneProcess);
    }
    for &workers in &args.workers {
        let slots = args
            .slots
            .unwrap_or_else(|| args.max_parallel.div_ceil(workers))
            .max(1);
        setups.push(Setup::Workers { workers, slots });
    }
    if setups.is_empty() {
        bail!("nothing to measure: --no-single and no --workers");
    }
    let store = StoreChoice::from_flag(args.store.as_deref())?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    eprintln!(
        "bench distributed: {} agents x {} turns, {} ms latency{}; store {}; {} round(s) of: {}",
        args.agents,
        args.turns,
        args.latency_ms,
        if args.command_cpu_ms > 0 {
            format!(", a {} ms CPU command each", args.command_cpu_ms)
        } else {
            String::new()
        },
        store.describe(),
        args.repeat,
        setups
            .iter()
            .map(|setup| match setup {
                Setup::OneProcess => setup.label(),
                Setup::Workers { slots, .. } => format!("{} x {slots} slots", setup.label()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut runs = Vec::new();
    let mut counter = 0;
    for round in 1..=args.repeat {
        for setup in &setups {
            counter += 1;
            let record = run_once(&args, &store, *setup, round, counter).await?;
            eprintln!("{}", run_line(&record));
            runs.push(record);
        }
    }

    let summary = summarise(&args, &setups, &runs, cores);
    let report = Report {
        agents: args.agents,
        turns: args.turns,
        latency_ms: args.latency_ms,
        max_parallel: args.max_parallel,
        command_cpu_ms: args.command_cpu_ms,
        cpu_limit: args.cpu_limit,
        store: store.describe(),
        cores,
        runs,
        summary,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(if report.runs.iter().all(|run| run.problems.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Where runs are recorded.
enum StoreChoice {
    Sqlite,
    Postgres {
        admin: PostgresUrl,
        /// The local server's main process, to read its CPU time.
        server: Option<i32>,
    },
}

impl StoreChoice {
    fn from_flag(flag: Option<&str>) -> anyhow::Result<StoreChoice> {
        let Some(text) = flag.filter(|text| *text != "sqlite") else {
            return Ok(StoreChoice::Sqlite);
        };
        let admin = PostgresUrl::parse(text).context(
            "--store takes `sqlite` or a postgres:// URL of a server the benchmark may create databases on",
        )?;
        let config: postgres::Config = text
            .parse()
            .context("--store is not a PostgreSQL URL the client accepts")?;
        let local = config.get_hosts().iter().all(|host| match host {
            postgres::config::Host::Tcp(name) => {
                matches!(name.as_str(), "127.0.0.1" | "localhost" | "::1")
            }
            postgres::config::Host::Unix(_) => true,
        });
        let port = config
            .get_ports()
            .first()
            .copied()
            .unwrap_or(5432)
            .to_string();
        let server = if local {
            bench_process::find_by_arguments(&["-p", &port])
        } else {
            None
        };
        Ok(StoreChoice::Postgres { admin, server })
    }

    fn describe(&self) -> String {
        match self {
            StoreChoice::Sqlite => "SQLite (a file per run)".to_owned(),
            StoreChoice::Postgres { admin, server } => format!(
                "PostgreSQL at {} (a database per run{})",
                admin.target(),
                if server.is_some() {
                    "; server CPU read from /proc"
                } else {
                    "; server CPU not measured"
                }
            ),
        }
    }

    fn server_cpu_s(&self) -> Option<f64> {
        match self {
            StoreChoice::Postgres {
                server: Some(pid), ..
            } => bench_process::tree_cpu_s(*pid),
            _ => None,
        }
    }

    /// The store of one run: its location as the processes are given it.
    async fn create(&self, dir: &Path, counter: usize) -> anyhow::Result<RunStore> {
        match self {
            StoreChoice::Sqlite => Ok(RunStore {
                flag: dir.join("store.db").display().to_string(),
                database: None,
            }),
            StoreChoice::Postgres { admin, .. } => {
                let name = format!("fanout_bench_{}_{counter}", std::process::id());
                let admin_url = admin.connection_string().to_owned();
                let statements = [
                    format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                    format!("CREATE DATABASE {name}"),
                ];
                admin_statements(admin_url.clone(), statements.to_vec()).await?;
                let url = admin.with_database(&name)?.connection_string().to_owned();
                Ok(RunStore {
                    flag: url,
                    database: Some((admin_url, name)),
                })
            }
        }
    }
}

/// One statement at a time (CREATE and DROP DATABASE cannot share a transaction).
async fn admin_statements(admin: String, statements: Vec<String>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut client = postgres::Client::connect(&admin, postgres::NoTls)
            .context("cannot connect to the PostgreSQL server of --store")?;
        for statement in statements {
            client
                .batch_execute(&statement)
                .with_context(|| format!("PostgreSQL refused `{statement}`"))?;
        }
        Ok(())
    })
    .await
    .context("a PostgreSQL task failed")?
}

struct RunStore {
    /// What `--store` is given.
    flag: String,
    /// `(admin URL, database)` to drop afterwards.
    database: Option<(String, String)>,
}

impl RunStore {
    async fn drop_database(&self) {
        if let Some((admin, name)) = &self.database {
            let statement = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(error) = admin_statements(admin.clone(), vec![statement]).await {
                eprintln!("bench distributed: warning: {error:#}");
            }
        }
    }
}

/// The processes of a run that are not reaped yet; killed if the run is abandoned.
#[derive(Default)]
struct Running {
    pids: Vec<i32>,
}

impl Running {
    fn forget(&mut self, pid: i32) {
        self.pids.retain(|other| *other != pid);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for pid in &self.pids {
            bench_process::signal(*pid, libc::SIGKILL);
        }
        for pid in &self.pids {
            let _ = bench_process::reap(*pid);
        }
    }
}

/// The CPU time of the children a process has reaped so far, sampled from `/proc` every
/// 100 ms until read: its `git` processes and sandboxed commands, apart from its own work.
struct ChildrenCpu {
    seconds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl ChildrenCpu {
    fn watch(pid: i32) -> ChildrenCpu {
        let seconds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sampled = std::sync::Arc::clone(&seconds);
        let task = tokio::spawn(async move {
            loop {
                if let Some(cpu) = bench_process::proc_cpu(pid) {
                    sampled.store(
                        cpu.children_s.to_bits(),
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        ChildrenCpu { seconds, task }
    }

    fn last(self) -> f64 {
        self.task.abort();
        f64::from_bits(self.seconds.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Reap `pid`, killing it first if it has not ended within `limit`; how it ended and whether
/// it had to be killed.
async fn reap_within(pid: i32, limit: Duration) -> anyhow::Result<(Reaped, bool)> {
    let mut waiting = tokio::task::spawn_blocking(move || bench_process::reap(pid));
    match tokio::time::timeout(limit, &mut waiting).await {
        Ok(joined) => Ok((joined.context("a wait task failed")??, false)),
        Err(_) => {
            bench_process::signal(pid, libc::SIGKILL);
            Ok((waiting.await.context("a wait task failed")??, true))
        }
    }
}

/// A `fanout` command, in `group` if given: a shell joins the group, then becomes the command.
fn fanout_command(
    exe: &Path,
    args: &[String],
    group: Option<&CpuGroup>,
    sim_url: &str,
    cwd: &Path,
    log: &Path,
) -> anyhow::Result<Command> {
    let mut command = match group {
        Some(group) => {
            let mut shell = Command::new("/bin/sh");
            shell
                .args(["-c", r#"echo $$ > "$0" && exec "$@""#])
                .arg(group.procs_file())
                .arg(exe);
            shell
        }
        None => Command::new(exe),
    };
    command
        .args(args)
        .current_dir(cwd)
        .env("ANTHROPIC_API_KEY", "bench-key")
        .env("ANTHROPIC_BASE_URL", sim_url)
        .env_remove("FANOUT_STORE")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(log.with_extension("out")).context("cannot make a log")?)
        .stderr(std::fs::File::create(log.with_extension("err")).context("cannot make a log")?);
    Ok(command)
}

fn workflow_yaml(args: &BenchDistributedArgs) -> String {
    let shell = if args.command_cpu_ms > 0 {
        format!("    shell_exec: restricted\n  shell_allowlist:\n    - {COMMAND}\n")
    } else {
        "    shell_exec: deny\n".to_owned()
    };
    // A configured limit that never binds: no process probes the API for its limits before
    // its first round (as `bench run` turns the probe off), and no requests-per-minute limit,
    // which workers would share through the store.
    format!(
        "workflow:\n  name: bench-run\n  max_parallel_agents: {parallel}\n  agent_permissions:\n    file_access: scoped\n    external_api: deny\n{shell}  logging:\n    level: normal\n    destination: ./.fanout/logs/bench-{{timestamp}}.jsonl\n  rollback:\n    on_failure: checkpoint\n    checkpoint_interval: 10\n  budgets:\n    agent:\n      max_turns: {turns}\n  rate_limits:\n    max_in_flight: {parallel}\n    output_tokens_per_minute: 1000000000\n",
        parallel = args.max_parallel,
        turns = args.turns + 2,
    )
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "core.hooksPath=/dev/null", "-c", "gc.auto=0"])
        .args(args)
        .output()
        .context("cannot run git")?;
    if !output.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Files changed under `src/` and the tree the run left (base + `src/`).
fn tree_of(repo: &Path) -> anyhow::Result<(usize, String)> {
    git(repo, &["add", "-A", "--", "src"])?;
    let changed = git(
        repo,
        &["diff", "--cached", "--name-only", "HEAD", "--", "src"],
    )?
    .lines()
    .count();
    let tree = git(repo, &["write-tree"])?.trim().to_owned();
    Ok((changed, tree))
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Wait until `file` holds `needle` (a process says it is ready).
async fn wait_for_line(file: &Path, needle: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::fs::read_to_string(file).is_ok_and(|text| text.contains(needle)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The last line of `file` that is a JSON object.
fn last_json_line(file: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .rev()
        .find_map(|line| serde_json::from_str::<serde_json::Value>(line.trim()).ok())
        .filter(serde_json::Value::is_object)
}

fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

async fn run_once(
    args: &BenchDistributedArgs,
    store: &StoreChoice,
    setup: Setup,
    round: usize,
    counter: usize,
) -> anyhow::Result<RunRecord> {
    let exe = std::env::current_exe().context("cannot find the fanout executable")?;
    let work = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = work.path().to_path_buf();
    let repo = dir.join("repo");
    let command = (args.command_cpu_ms > 0)
        .then(|| format!("{COMMAND} {:.3}", args.command_cpu_ms as f64 / 1000.0));
    {
        let repo = repo.clone();
        let agents = args.agents;
        let with_script = command.is_some();
        tokio::task::spawn_blocking(move || {
            if with_script {
                std::fs::create_dir_all(&repo).context("cannot create the repository")?;
                std::fs::write(repo.join("burn.py"), BURN_PY).context("cannot write burn.py")?;
            }
            generate_repository(&repo, agents, 0)
        })
        .await
        .context("the repository task failed")??;
    }
    let workflow = dir.join("workflow.yaml");
    std::fs::write(&workflow, workflow_yaml(args)).context("cannot write the workflow")?;
    let plan = dir.join("plan.json");
    std::fs::write(&plan, plan_json(args.agents, command.as_deref())?)
        .context("cannot write the plan")?;
    let scenario = dir.join("scenario.yaml");
    std::fs::write(&scenario, scenario_yaml(args.turns, command.as_deref()))
        .context("cannot write the scenario")?;
    let sim = ChildSim::start(&[
        "--latency-ms".to_string(),
        args.latency_ms.to_string(),
        "--scenario".to_string(),
        scenario.display().to_string(),
    ])
    .await?;
    let sim_pid = sim.pid().and_then(|pid| i32::try_from(pid).ok());
    let run_store = store.create(&dir, counter).await?;

    let mut problems = Vec::new();
    let mut processes = Vec::new();
    let mut running = Running::default();
    let mut groups: Vec<Option<CpuGroup>> = Vec::new();
    let group_for = |index: usize| -> anyhow::Result<Option<CpuGroup>> {
        args.cpu_limit
            .map(|cpus| {
                CpuGroup::create(
                    &format!("fanout-bench-{}-{counter}-{index}", std::process::id()),
                    cpus,
                )
            })
            .transpose()
    };
    let limit = Duration::from_secs(args.timeout_seconds);
    let load = load_average();
    let sim_before = sim_pid.and_then(bench_process::proc_cpu);
    let server_before = store.server_cpu_s();
    let plan_args = |extra: &[&str]| -> Vec<String> {
        let mut list: Vec<String> = vec![
            "run".into(),
            workflow.display().to_string(),
            "--plan".into(),
            plan.display().to_string(),
            "--repo".into(),
            repo.display().to_string(),
            "--store".into(),
            run_store.flag.clone(),
        ];
        list.extend(extra.iter().map(|word| (*word).to_owned()));
        list
    };

    let mut coordinator_outcome = None;
    let mut caches = Vec::new();
    let wall = match setup {
        Setup::OneProcess => {
            let group = group_for(0)?;
            let log = dir.join("one-process");
            let command = fanout_command(
                &exe,
                &plan_args(&[]),
                group.as_ref(),
                &sim.base_url,
                &dir,
                &log,
            )?;
            let started = Instant::now();
            let pid = bench_process::spawn(command)?;
            running.pids.push(pid);
            let children = ChildrenCpu::watch(pid);
            let (reaped, killed) = reap_within(pid, limit).await?;
            let wall = started.elapsed().as_secs_f64();
            let children_cpu_s = children.last();
            running.forget(pid);
            if killed {
                problems.push(format!(
                    "did not finish within {} s (killed); stderr: {}",
                    args.timeout_seconds,
                    tail(&log.with_extension("err"), 3)
                ));
            } else if reaped.code != Some(0) {
                problems.push(format!(
                    "exit {:?}; stderr: {}",
                    reaped.code,
                    tail(&log.with_extension("err"), 3)
                ));
            }
            processes.push(ProcessRecord {
                role: "one process".into(),
                wall_s: wall,
                reaped,
                children_cpu_s,
                throttling: group.as_ref().map(CpuGroup::throttling),
                report: None,
            });
            groups.push(group);
            wall
        }
        Setup::Workers { workers, slots } => {
            let mut worker_pids = Vec::new();
            for index in 1..=workers {
                let cache = match &args.cache_root {
                    Some(root) => root.join(format!(
                        "fanout-bench-{}-{counter}-cache-{index}",
                        std::process::id()
                    )),
                    None => dir.join(format!("cache-{index}")),
                };
                std::fs::create_dir_all(&cache).context("cannot make a worker's cache")?;
                caches.push(cache.clone());
                let group = group_for(index)?;
                let log = dir.join(format!("worker-{index}"));
                let worker_args: Vec<String> = vec![
                    "worker".into(),
                    "--store".into(),
                    run_store.flag.clone(),
                    "--slots".into(),
                    slots.to_string(),
                    "--cache".into(),
                    cache.display().to_string(),
                    "--lease-seconds".into(),
                    args.lease_seconds.to_string(),
                    "--name".into(),
                    format!("bench-worker-{index}"),
                ];
                // A worker never needs the repository: it runs in its cache.
                let command = fanout_command(
                    &exe,
                    &worker_args,
                    group.as_ref(),
                    &sim.base_url,
                    &cache,
                    &log,
                )?;
                let started = Instant::now();
                let pid = bench_process::spawn(command)?;
                running.pids.push(pid);
                worker_pids.push((index, pid, started, log, ChildrenCpu::watch(pid)));
                groups.push(group);
            }
            for (index, _, _, log, _) in &worker_pids {
                if !wait_for_line(&log.with_extension("err"), "leasing from", limit).await {
                    bail!(
                        "worker {index} did not start; stderr: {}",
                        tail(&log.with_extension("err"), 3)
                    );
                }
            }
            let log = dir.join("coordinator");
            let command = fanout_command(
                &exe,
                &plan_args(&["--local-slots", "0", "--json"]),
                None,
                &sim.base_url,
                &dir,
                &log,
            )?;
            let started = Instant::now();
            let pid = bench_process::spawn(command)?;
            running.pids.push(pid);
            let children = ChildrenCpu::watch(pid);
            let (reaped, killed) = reap_within(pid, limit).await?;
            let wall = started.elapsed().as_secs_f64();
            let children_cpu_s = children.last();
            running.forget(pid);
            // `--json` ends with `{"event": "run_finished", "outcome": {...}}`.
            let outcome = last_json_line(&log.with_extension("out"))
                .map(|line| line.get("outcome").cloned().unwrap_or(line));
            if killed {
                problems.push(format!(
                    "the coordinator did not finish within {} s (killed)",
                    args.timeout_seconds
                ));
            } else if reaped.code != Some(0) {
                problems.push(format!(
                    "the coordinator's exit {:?}; stderr: {}",
                    reaped.code,
                    tail(&log.with_extension("err"), 3)
                ));
            }
            let succeeded = outcome
                .as_ref()
                .and_then(|outcome| outcome.get("succeeded"))
                .and_then(serde_json::Value::as_u64);
            if succeeded != Some(args.agents as u64) {
                problems.push(format!(
                    "the coordinator counts {succeeded:?} agents succeeded, not {}",
                    args.agents
                ));
            }
            coordinator_outcome = outcome.clone();
            processes.push(ProcessRecord {
                role: "coordinator".into(),
                wall_s: wall,
                reaped,
                children_cpu_s,
                throttling: None,
                report: outcome,
            });
            // One more sample of each worker's children: it reaps nothing once it is stopped.
            tokio::time::sleep(Duration::from_millis(110)).await;
            let stopping: Vec<_> = worker_pids
                .into_iter()
                .map(|(index, pid, started, log, children)| {
                    (index, pid, started, log, children.last())
                })
                .collect();
            let mut ended_early = Vec::new();
            for (index, pid, _, _, _) in &stopping {
                if bench_process::has_ended(*pid) {
                    ended_early.push(*index);
                }
                bench_process::signal(*pid, libc::SIGTERM);
            }
            for ((index, pid, started, log, children_cpu_s), group) in stopping.iter().zip(&groups)
            {
                let (reaped, killed) = reap_within(*pid, Duration::from_secs(60)).await?;
                running.forget(*pid);
                if killed {
                    problems.push(format!(
                        "worker {index} did not stop within 60 s of SIGTERM (killed)"
                    ));
                }
                if ended_early.contains(index) {
                    problems.push(format!(
                        "worker {index} had ended before the run did (exit {:?}, signal {:?}); stderr: {}",
                        reaped.code,
                        reaped.signal,
                        tail(&log.with_extension("err"), 3)
                    ));
                }
                processes.push(ProcessRecord {
                    role: format!("worker {index}"),
                    wall_s: started.elapsed().as_secs_f64(),
                    reaped,
                    children_cpu_s: *children_cpu_s,
                    throttling: group.as_ref().map(CpuGroup::throttling),
                    report: last_json_line(&log.with_extension("out")),
                });
            }
            wall
        }
    };
    drop(running);
    let sim_after = sim_pid.and_then(bench_process::proc_cpu);
    let server_after = store.server_cpu_s();
    let model_requests = sim.stats().await.ok().and_then(|stats| {
        stats
            .get("requests_total")
            .and_then(serde_json::Value::as_u64)
    });
    drop(sim);
    drop(groups);

    let (files_changed, tree) = {
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || tree_of(&repo))
            .await
            .context("the tree task failed")??
    };
    if files_changed != args.agents {
        problems.push(format!(
            "{files_changed} files of src/ changed, not {}",
            args.agents
        ));
    }
    let worker_sum = |key: &str| -> Option<u64> {
        let reports: Vec<u64> = processes
            .iter()
            .filter(|process| process.role.starts_with("worker"))
            .filter_map(|process| process.report.as_ref()?.get(key)?.as_u64())
            .collect();
        (!reports.is_empty()).then(|| reports.iter().sum())
    };
    let committed = worker_sum("committed");
    if matches!(setup, Setup::Workers { .. }) && committed != Some(args.agents as u64) {
        problems.push(format!(
            "the workers report {committed:?} units committed, not {}",
            args.agents
        ));
    }
    let units_taken_over = match coordinator_outcome
        .as_ref()
        .and_then(|outcome| outcome.get("run_id")?.as_str().map(RunId::from))
    {
        Some(run_id) => {
            let flag = run_store.flag.clone();
            let repo = repo.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let location = StoreLocation::parse(&flag, &repo)?;
                let units = StoreReader::open_at(&location)?.units(&run_id)?;
                Ok(units.iter().filter(|unit| unit.attempt > 1).count() as u64)
            })
            .await
            .ok()
            .and_then(Result::ok)
        }
        None => None,
    };
    if args.keep {
        if let Some((_, name)) = &run_store.database {
            eprintln!(
                "bench distributed: kept database {name} ({})",
                run_store.flag
            );
        }
    } else {
        run_store.drop_database().await;
    }
    if args.cache_root.is_some() && !args.keep {
        for cache in &caches {
            let _ = std::fs::remove_dir_all(cache);
        }
    }
    if args.keep {
        let kept = work.keep();
        eprintln!("bench distributed: kept {}", kept.display());
    }
    let cpu_s = processes.iter().map(|process| process.reaped.cpu_s()).sum();
    let lost = worker_sum("lost");
    let abandoned = worker_sum("abandoned");
    Ok(RunRecord {
        label: setup.label(),
        setup,
        round,
        wall_s: wall,
        cpu_s,
        sim_cpu_s: match (sim_before, sim_after) {
            (Some(before), Some(after)) => Some(after.own_s - before.own_s),
            _ => None,
        },
        store_server_cpu_s: match (server_before, server_after) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        },
        model_requests,
        processes,
        files_changed,
        tree,
        units_taken_over,
        committed,
        lost,
        abandoned,
        load_average: load,
        problems,
    })
}

fn summarise(
    args: &BenchDistributedArgs,
    setups: &[Setup],
    runs: &[RunRecord],
    cores: usize,
) -> Vec<Summary> {
    let mut summaries: Vec<Summary> = Vec::new();
    for setup in setups {
        // Figures of runs that did all they should: an incomplete run is counted apart.
        let mine: Vec<&RunRecord> = runs
            .iter()
            .filter(|run| run.setup == *setup && run.problems.is_empty())
            .collect();
        let incomplete = runs
            .iter()
            .filter(|run| run.setup == *setup && !run.problems.is_empty())
            .count();
        let values = |field: fn(&RunRecord) -> Option<f64>| -> Option<Spread> {
            Spread::of(&mine.iter().filter_map(|run| field(run)).collect::<Vec<_>>())
        };
        let wall = values(|run| Some(run.wall_s));
        let cpu_floor = (args.command_cpu_ms > 0).then(|| {
            let processes = match setup {
                Setup::OneProcess => 1,
                Setup::Workers { workers, .. } => *workers,
            } as f64;
            let usable = (processes * args.cpu_limit.unwrap_or(cores as f64)).min(cores as f64);
            args.agents as f64 * args.command_cpu_ms as f64 / 1000.0 / usable
        });
        summaries.push(Summary {
            label: setup.label(),
            runs: mine.len(),
            incomplete,
            wall_over_floor: match (&wall, cpu_floor) {
                (Some(wall), Some(floor)) => Some(wall.median / floor),
                _ => None,
            },
            wall_s: wall,
            cpu_s: values(|run| Some(run.cpu_s)),
            sim_cpu_s: values(|run| run.sim_cpu_s),
            store_server_cpu_s: values(|run| run.store_server_cpu_s),
            wall_ratio: None,
            cpu_ratio: None,
            cpu_floor_s: cpu_floor,
        });
    }
    let first = summaries.first().map(|first| {
        (
            first.wall_s.as_ref().map(|spread| spread.median),
            first.cpu_s.as_ref().map(|spread| spread.median),
        )
    });
    if let Some((first_wall, first_cpu)) = first {
        for summary in &mut summaries {
            let ratio = |value: Option<&Spread>, base: Option<f64>| match (value, base) {
                (Some(value), Some(base)) if base > 0.0 => Some(value.median / base),
                _ => None,
            };
            summary.wall_ratio = ratio(summary.wall_s.as_ref(), first_wall);
            summary.cpu_ratio = ratio(summary.cpu_s.as_ref(), first_cpu);
        }
    }
    summaries
}

fn seconds(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |value| format!("{value:.2} s"))
}

fn run_line(run: &RunRecord) -> String {
    let parts: Vec<String> = run
        .processes
        .iter()
        .map(|process| {
            let committed = process
                .report
                .as_ref()
                .filter(|_| process.role.starts_with("worker"))
                .and_then(|report| report.get("committed")?.as_u64())
                .map(|units| format!(", {units} units"))
                .unwrap_or_default();
            format!(
                "{} {:.2}, children {:.2}{committed}",
                process.role,
                process.reaped.cpu_s(),
                process.children_cpu_s
            )
        })
        .collect();
    let mut line = format!(
        "  round {} {:<12} wall {:>8.2} s  CPU {:>7.2} s ({})  sim {}  store server {}  requests {}  src files changed {}  tree {}",
        run.round,
        run.label,
        run.wall_s,
        run.cpu_s,
        parts.join("; "),
        seconds(run.sim_cpu_s),
        seconds(run.store_server_cpu_s),
        run.model_requests.map_or("-".to_owned(), |n| n.to_string()),
        run.files_changed,
        run.tree.get(..10).unwrap_or(&run.tree),
    );
    if let Some(taken) = run.units_taken_over {
        line.push_str(&format!(
            "  units taken over {taken}, lost {}, abandoned {}",
            run.lost.unwrap_or(0),
            run.abandoned.unwrap_or(0)
        ));
    }
    for process in &run.processes {
        if let Some(throttling) = process.throttling {
            line.push_str(&format!(
                "  [{} throttled {:.1} s in {} of {} periods]",
                process.role,
                throttling.throttled_s,
                throttling.throttled_periods,
                throttling.periods
            ));
        }
    }
    if let Some(load) = run.load_average {
        line.push_str(&format!("  load {load:.2}"));
    }
    for problem in &run.problems {
        line.push_str(&format!("\n    PROBLEM: {problem}"));
    }
    line
}

fn print_report(report: &Report) {
    println!(
        "distributed benchmark: {} agents x {} turns, {} ms latency{}{}; store {}; {} cores",
        report.agents,
        report.turns,
        report.latency_ms,
        if report.command_cpu_ms > 0 {
            format!(
                ", `{COMMAND}` using {} ms of CPU per agent",
                report.command_cpu_ms
            )
        } else {
            String::new()
        },
        report
            .cpu_limit
            .map(|cpus| format!(", {cpus} CPU per process (cgroup)"))
            .unwrap_or_default(),
        report.store,
        report.cores
    );
    println!("runs:");
    for run in &report.runs {
        println!("{}", run_line(run));
    }
    let trees: std::collections::BTreeSet<&str> = report
        .runs
        .iter()
        .filter(|run| run.problems.is_empty())
        .map(|run| run.tree.as_str())
        .collect();
    println!(
        "trees of src/: {}",
        match trees.len() {
            0 => "no run completed".to_owned(),
            1 => "the same after every complete run".to_owned(),
            n => format!("{n} different trees among complete runs"),
        }
    );
    let first = report
        .summary
        .first()
        .map_or(String::new(), |summary| summary.label.clone());
    println!(
        "medians (min-max)        wall                       CPU of our processes       simulator CPU      store server CPU   wall / {first}  CPU / {first}{}",
        if report.command_cpu_ms > 0 {
            "  CPU floor  wall / floor"
        } else {
            ""
        }
    );
    let spread = |spread: &Option<Spread>| {
        spread.as_ref().map_or("-".to_owned(), |spread| {
            format!(
                "{:.2} s ({:.2}-{:.2})",
                spread.median, spread.min, spread.max
            )
        })
    };
    for summary in &report.summary {
        let mut line = format!(
            "  {:<22} {:<26} {:<26} {:<18} {:<18} {:<12} {:<10}",
            if summary.incomplete > 0 {
                format!(
                    "{} x{} ({} incomplete)",
                    summary.label, summary.runs, summary.incomplete
                )
            } else {
                format!("{} x{}", summary.label, summary.runs)
            },
            spread(&summary.wall_s),
            spread(&summary.cpu_s),
            summary
                .sim_cpu_s
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{:.2} s", s.median)),
            summary
                .store_server_cpu_s
                .as_ref()
                .map_or("-".to_owned(), |s| format!("{:.2} s", s.median)),
            summary
                .wall_ratio
                .map_or("-".to_owned(), |r| format!("{r:.3}")),
            summary
                .cpu_ratio
                .map_or("-".to_owned(), |r| format!("{r:.3}")),
        );
        if let (Some(floor), Some(over)) = (summary.cpu_floor_s, summary.wall_over_floor) {
            line.push_str(&format!("  {floor:.2} s    {over:.3}"));
        }
        println!("{line}");
    }
}
