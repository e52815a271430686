//! `berth-loadtest`: benchmarks. Parses arguments and calls the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Berth benchmarks")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Berth, nginx, Varnish and the distribution proxy side by side against one origin.
    Compare {
        /// The berth-edge binary to measure.
        #[arg(long, default_value = "target/release/berth-edge")]
        edge: PathBuf,
        /// Working folder (servers' data and logs).
        #[arg(long, default_value = "/var/tmp/berth-bench")]
        work: PathBuf,
        /// Size of the large blobs in MiB.
        #[arg(long, default_value_t = 100)]
        blob_mib: u64,
        /// Seconds per small-request measurement.
        #[arg(long, default_value_t = 5)]
        small_seconds: u64,
        /// Image pulls in the Zipf workload.
        #[arg(long, default_value_t = 800)]
        zipf_pulls: usize,
        /// Only these scenarios (hot, small, cold, skopeo, zipf), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Berth and nginx over TLS (HTTP/1.1 and HTTP/2) with the same certificate, and the cost of
    /// client authorization on small requests.
    Secure {
        #[arg(long, default_value = "target/release/berth-edge")]
        edge: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-secure")]
        work: PathBuf,
        #[arg(long, default_value_t = 100)]
        blob_mib: u64,
        #[arg(long, default_value_t = 5)]
        small_seconds: u64,
        /// Only these scenarios (hot, small, authz), comma-separated.
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    },
    /// Time from an invalidation to its arrival at many simulated edges holding watch streams.
    Propagation {
        /// The berth-distributor binary.
        #[arg(long, default_value = "target/release/berth-distributor")]
        distributor: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-propagation")]
        work: PathBuf,
        #[arg(long, default_value_t = 100)]
        edges: usize,
        #[arg(long, default_value_t = 50)]
        rounds: usize,
        /// Distributor replicas (more than one needs `--postgres`).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Run the replicas on a PostgreSQL started for the benchmark.
        #[arg(long)]
        postgres: bool,
        /// Kill the first replica half way and time the catch-up of its edges.
        #[arg(long)]
        kill_one: bool,
    },
    /// Report ingestion from many simulated edges by distributor replicas on PostgreSQL, and
    /// its CPU cost.
    Ingest {
        #[arg(long, default_value = "target/release/berth-distributor")]
        distributor: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-ingest")]
        work: PathBuf,
        #[arg(long, default_value_t = 10_000)]
        edges: usize,
        #[arg(long, default_value_t = 5)]
        interval_seconds: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        replicas: usize,
    },
    /// A cold range near the end of a large blob, through the edge and from the origin.
    ColdRange {
        #[arg(long, default_value = "target/release/berth-edge")]
        edge: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-range")]
        work: PathBuf,
        #[arg(long, default_value_t = 100)]
        blob_mib: u64,
        #[arg(long, default_value_t = 7)]
        trials: usize,
    },
    /// A region of 4 edges on a Zipf pull workload: sharded (`[cluster]`) against independent,
    /// and sharded with one edge killed halfway.
    Region {
        #[arg(long, default_value = "target/release/berth-edge")]
        edge: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-region")]
        work: PathBuf,
        #[arg(long, default_value_t = 60)]
        images: usize,
        #[arg(long, default_value_t = 300)]
        pulls: usize,
    },
    /// The distributor's fleet page and its JSON with many simulated edges, and its load time
    /// in headless Chromium.
    FleetPage {
        #[arg(long, default_value = "target/release/berth-distributor")]
        distributor: PathBuf,
        #[arg(long, default_value = "/var/tmp/berth-bench-fleet-page")]
        work: PathBuf,
        #[arg(long, default_value_t = 1000)]
        edges: usize,
        #[arg(long, default_value_t = 9)]
        runs: usize,
    },
    /// Time the disk-index rebuild at start for many cached blobs.
    IndexRebuild {
        #[arg(long, default_value_t = 100_000)]
        blobs: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Compare { edge, work, blob_mib, small_seconds, zipf_pulls, only } => {
            let _ = std::fs::remove_dir_all(&work);
            let opts =
                berth_loadtest::compare::Options { edge_binary: edge, work, blob_mib, small_seconds, zipf_pulls, only };
            print!("{}", berth_loadtest::compare::run(&opts).await?);
        }
        Command::Secure { edge, work, blob_mib, small_seconds, only } => {
            let _ = std::fs::remove_dir_all(&work);
            let opts = berth_loadtest::secure::Options { edge_binary: edge, work, blob_mib, small_seconds, only };
            print!("{}", berth_loadtest::secure::run(&opts).await?);
        }
        Command::Propagation { distributor, work, edges, rounds, replicas, postgres, kill_one } => {
            let _ = std::fs::remove_dir_all(&work);
            let setup = berth_loadtest::propagation::Setup { replicas, postgres, kill_one };
            let p = berth_loadtest::propagation::run(&distributor, &work, edges, rounds, &setup).await?;
            if let Some(t) = p.after_kill {
                println!(
                    "first change after a replica was killed: every edge had it after {:.1} ms",
                    t.as_secs_f64() * 1000.0
                );
                println!();
            }
            let pct = |v: &[std::time::Duration], q: f64| berth_loadtest::load::percentile(v, q) / 1000.0;
            println!("| measure | p50 ms | p99 ms | max ms |");
            println!("|---|---|---|---|");
            println!(
                "| one edge receives it ({} samples) | {:.2} | {:.2} | {:.2} |",
                p.all.len(),
                pct(&p.all, 0.5),
                pct(&p.all, 0.99),
                pct(&p.all, 1.0)
            );
            println!(
                "| every edge has it ({} rounds) | {:.2} | {:.2} | {:.2} |",
                p.slowest.len(),
                pct(&p.slowest, 0.5),
                pct(&p.slowest, 0.99),
                pct(&p.slowest, 1.0)
            );
        }
        Command::Ingest { distributor, work, edges, interval_seconds, seconds, replicas } => {
            let _ = std::fs::remove_dir_all(&work);
            let interval = std::time::Duration::from_secs(interval_seconds);
            print!("{}", berth_loadtest::ingest::run(&distributor, &work, edges, interval, seconds, replicas).await?);
        }
        Command::ColdRange { edge, work, blob_mib, trials } => {
            let _ = std::fs::remove_dir_all(&work);
            print!("{}", berth_loadtest::cold_range::run(&edge, &work, blob_mib, trials).await?);
        }
        Command::Region { edge, work, images, pulls } => {
            let _ = std::fs::remove_dir_all(&work);
            let opts = berth_loadtest::region::Options { edge_binary: edge, work, images, pulls };
            print!("{}", berth_loadtest::region::run(&opts).await?);
        }
        Command::FleetPage { distributor, work, edges, runs } => {
            let _ = std::fs::remove_dir_all(&work);
            print!("{}", berth_loadtest::fleet_page::run(&distributor, &work, edges, runs).await?);
        }
        Command::IndexRebuild { blobs, runs } => {
            let times = tokio::task::spawn_blocking(move || berth_loadtest::index_bench::run(blobs, runs)).await??;
            for (i, t) in times.iter().enumerate() {
                println!("run {}: {blobs} blobs indexed in {:.0} ms", i + 1, t.as_secs_f64() * 1000.0);
            }
        }
    }
    Ok(())
}
