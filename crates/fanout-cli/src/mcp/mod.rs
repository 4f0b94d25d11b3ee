//! `fanout mcp`: fanout as a Model Context Protocol server, so an agent (Claude Code, Codex,
//! Cursor…) can hand a large task to fanout with the same dry-run-first discipline as the CLI.
//!
//! Built on the official Rust SDK (`rmcp`), over stdio (the default) or streamable HTTP
//! (`--http ADDR`, at `/mcp`). The tools (`tools.rs`) call the same core API as `fanout run`:
//! `fanout_core::backend` for the model API, `plan::prepare` for the dry run,
//! `run::launch::{fresh, recorded}` and `run::engine` for runs, the store for status and
//! results. No second engine.
//!
//! - `plan_workflow` plans and saves the plan, returning the report as data and the plan's
//!   SHA-256; `start_run` runs only a reviewed plan named by that hash, and returns at once:
//!   the run goes on in this process (`runs.rs` keeps the live ones), `run_status` and
//!   `run_result` read it, `cancel_run` stops it, `resume_run` finishes a recorded run,
//!   `list_runs` lists a repository's runs.
//! - Item workflows go through the same tools (`items.rs`): the reviewed thing is the item job
//!   itself, named by its hash.
//! - Safety: every path argument must resolve under one of the `--root` directories (default:
//!   the working directory), an item workflow's input and output directory included; live runs take the repository's lock, so a CLI run and an MCP run
//!   on one repository exclude each other.
//! - `--sim` / `--scenario` and the other simulator options work as on `fanout run`: one
//!   simulator is started with the server and serves every run.
//!
//! Nothing is written to stdout but the protocol (stdio transport); diagnostics go to stderr.

mod items;
mod runs;
mod tools;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use fanout_core::backend::Backend;
use rmcp::ServiceExt;

use crate::model_args::ModelArgs;

pub use tools::FanoutMcp;

#[derive(Args, Debug, Clone)]
pub struct McpArgs {
    /// A directory the server may work in (repositories and workflow files must be under one
    /// of them); repeatable. Default: the current directory.
    #[arg(long = "root", value_name = "DIR")]
    pub roots: Vec<PathBuf>,
    /// Serve streamable HTTP at this address (path `/mcp`) instead of stdio.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Where model calls go: `--sim` and the simulator's settings, the request timeout.
    #[command(flatten)]
    pub model: ModelArgs,
    /// The run store of every repository the server works on (default: each repository's
    /// own `.fanout/fanout.db`).
    #[command(flatten)]
    pub store: crate::store_cmd::StoreArg,
}

pub async fn run(args: McpArgs) -> anyhow::Result<ExitCode> {
    let mut roots = Vec::new();
    let given = if args.roots.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.roots.clone()
    };
    for root in given {
        roots.push(
            root.canonicalize()
                .with_context(|| format!("cannot open the root {}", root.display()))?,
        );
    }
    let backend = Arc::new(Backend::start(&args.model.target(), args.model.http()).await?);
    // A malformed --store is refused before the server starts.
    args.store.location(std::path::Path::new("."))?;
    let server = FanoutMcp::new(
        roots,
        args.model.clone(),
        args.store.clone(),
        Arc::clone(&backend),
    );
    match args.http {
        None => {
            let service = server
                .serve(rmcp::transport::stdio())
                .await
                .context("cannot start the MCP server on stdio")?;
            service
                .waiting()
                .await
                .context("the MCP session ended with an error")?;
        }
        Some(addr) => serve_http(server, addr).await?,
    }
    if let Ok(backend) = Arc::try_unwrap(backend) {
        backend.shutdown().await;
    }
    Ok(ExitCode::SUCCESS)
}

/// Streamable HTTP at `http://ADDR/mcp` until Ctrl-C.
async fn serve_http(server: FanoutMcp, addr: SocketAddr) -> anyhow::Result<()> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default().with_cancellation_token(stop.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("the listener has no address")?;
    // Like `fanout sim`: the first line says where to connect (useful with port 0).
    eprintln!("fanout mcp listening on http://{local}/mcp");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        })
        .await
        .context("the MCP HTTP server failed")
}
