//! Placeholder: the simulator throughput benchmark (being written).

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

pub async fn run(_args: BenchSimArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("not built yet")
}
