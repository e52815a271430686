//! `berth-distributor --config distributor.toml`: parses arguments and runs the library.

use std::path::PathBuf;

use anyhow::Context;
use berth_distributor::config::{self, DistributorConfig};
use berth_distributor::Distributor;
use clap::Parser;

/// The Berth control plane: fleet, policy log, prefetch and invalidation.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it: listen on 127.0.0.1:7000, data in ./berth-distributor-data.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Log filter.
    #[arg(long, env = "BERTH_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    berth_distributor::init_logging(&args.log, args.log_json);
    let config = match &args.config {
        Some(path) => config::load_file(path).with_context(|| format!("config {}", path.display()))?,
        None => DistributorConfig::embedded_default().context("embedded default config")?,
    };
    if args.check {
        println!("config ok");
        return Ok(());
    }
    Distributor::build(&config).context("starting the distributor")?.run().context("serving")?;
    Ok(())
}
