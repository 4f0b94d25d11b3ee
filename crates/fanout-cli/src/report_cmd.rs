//! `fanout report RUN_ID [-o FILE] [--open]`: one run as a self-contained HTML page, written
//! to `.fanout/runs/<run_id>/report.html` (or FILE). The data and the page come from
//! `fanout_core::report`; this module only writes the file, says where, and opens it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use fanout_core::report::{ReportError, gather, render_html};

use crate::exit::Exit;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run to report on (see `fanout runs`).
    pub run_id: fanout_core::plan::RunId,
    /// The repository (default: the current directory).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    #[command(flatten)]
    pub store: crate::store_cmd::StoreArg,
    /// Write the page here instead of `.fanout/runs/RUN_ID/report.html`.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Open the page in the default browser (`xdg-open`, or `open` on macOS) once written.
    #[arg(long)]
    pub open: bool,
}

pub fn run(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let repo = crate::store_cmd::repo_root(&args.repo);
    let location = args.store.location(&repo)?;
    let report = match gather(&repo, &location, &args.run_id) {
        Ok(report) => report,
        Err(err) if is_unknown(&err) => {
            eprintln!("error: {err}");
            return Ok(Exit::Config.into());
        }
        Err(err) => return Err(err).context("cannot gather the report"),
    };
    let html = render_html(&report);
    let path = match args.output {
        Some(path) => path,
        None => {
            let dir = fanout_core::layout::run_dir(&repo, &args.run_id);
            fanout_core::layout::ensure_dir(&repo, &dir)?;
            fanout_core::layout::report_file(&repo, &args.run_id)
        }
    };
    fanout_core::layout::write_atomic(&path, html.as_bytes())?;
    println!("Report: {}", path.display());
    if args.open {
        open(&path);
    }
    Ok(ExitCode::SUCCESS)
}

/// An unknown run, or no run store at all: the run id names nothing here.
fn is_unknown(err: &ReportError) -> bool {
    matches!(
        err,
        ReportError::UnknownRun { .. }
            | ReportError::Store(fanout_core::store::StoreError::Missing { .. })
    )
}

/// Best effort: a machine without a browser still has the file.
fn open(path: &std::path::Path) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let spawned = std::process::Command::new(opener)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    if let Err(err) = spawned {
        eprintln!("warning: cannot run {opener} to open the report: {err}");
    }
}
