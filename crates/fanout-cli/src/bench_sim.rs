//! `fanout bench sim`: the simulator's own throughput.
//!
//! Starts `fanout sim` as a child process (so client and server do not share a runtime), drives
//! `--requests` small non-streaming `/v1/messages` calls with `--concurrency` in flight over one
//! HTTP/1.1 connection pool, and reports requests per second, p50/p99 latency and errors.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::bench::ChildSim;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchSimArgs {
    /// Total requests.
    #[arg(long, default_value_t = 20000)]
    pub requests: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    requests: usize,
    concurrency: usize,
    ok: usize,
    errors: usize,
    elapsed_ms: f64,
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

pub async fn run(args: BenchSimArgs) -> anyhow::Result<ExitCode> {
    if args.requests == 0 || args.concurrency == 0 {
        anyhow::bail!("--requests and --concurrency must be at least 1");
    }
    let sim = ChildSim::start(&[]).await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()
        .context("cannot build the HTTP client")?;
    let url = format!("{}/v1/messages", sim.base_url);
    let body = serde_json::json!({
        "model": "claude-bench",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "ping"}]
    })
    .to_string();

    // Warm the connection pool so connection setup is not measured.
    let warm = args.concurrency.min(args.requests);
    let warmups: Vec<_> = (0..warm).map(|_| one(&client, &url, &body)).collect();
    for warmup in warmups {
        let _ = warmup.await;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency.min(args.requests) {
        let client = client.clone();
        let url = url.clone();
        let body = body.clone();
        let next = next.clone();
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let sent = Instant::now();
                match one(&client, &url, &body).await {
                    Ok(()) => latencies.push(sent.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(args.requests);
    let mut errors = 0;
    for worker in workers {
        let (mut part, failed) = worker.await.context("a benchmark worker failed")?;
        latencies.append(&mut part);
        errors += failed;
    }
    let elapsed = started.elapsed();
    drop(sim);

    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies
            .get(index.min(latencies.len() - 1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let report = Report {
        requests: args.requests,
        concurrency: args.concurrency,
        ok: latencies.len(),
        errors,
        elapsed_ms: elapsed.as_secs_f64() * 1000.0,
        requests_per_second: args.requests as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        max_ms: percentile(1.0),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} requests, {} in flight: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} errors ({:.2} s)",
            report.requests,
            report.concurrency,
            report.requests_per_second,
            report.p50_ms,
            report.p99_ms,
            report.max_ms,
            report.errors,
            report.elapsed_ms / 1000.0
        );
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One request; any non-200 or unreadable body is an error.
async fn one(client: &reqwest::Client, url: &str, body: &str) -> anyhow::Result<()> {
    let response = client
        .post(url)
        .header("x-api-key", "bench")
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = response.status();
    let _ = response.bytes().await?;
    if status.is_success() {
        Ok(())
    } else {
        anyhow::bail!("status {status}")
    }
}
