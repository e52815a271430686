//! `berth-edge --config edge.toml`: parses arguments and runs the library.

use std::path::PathBuf;

use anyhow::Context;
use berth_edge::config::{self, EdgeConfig};
use berth_edge::EdgeServer;
use clap::Parser;

/// mimalloc: the request path allocates many small, short-lived objects (headers, strings).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A regional pull-through cache for container images.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it, the embedded default runs: a Docker Hub, GHCR, Quay and
    /// registry.k8s.io mirror on 0.0.0.0:5000, admin on 127.0.0.1:9400, cache in ./berth-data.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config and exit.
    #[arg(long)]
    check: bool,
    /// Print the embedded default config and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log filter (e.g. `info`, `berth_edge=debug`).
    #[arg(long, env = "BERTH_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", config::DEFAULT_CONFIG);
        return Ok(());
    }
    berth_edge::telemetry::init(&args.log, args.log_json);
    let config = match &args.config {
        Some(path) => config::load_file(path).with_context(|| format!("config {}", path.display()))?,
        None => EdgeConfig::embedded_default().context("embedded default config")?,
    };
    if args.check {
        println!("config ok");
        return Ok(());
    }
    let mut edge = EdgeServer::build(config).context("starting the edge")?;
    if let Some(path) = &args.config {
        edge = edge.reload_from(path);
    }
    edge.run();
    Ok(())
}
