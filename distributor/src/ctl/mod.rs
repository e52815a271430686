//! `berthctl`: the command line for pipelines and operators.

mod client;
mod progress;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

pub use client::Client;

use crate::jobs::JobStatus;
use berth_shared::protocol::JobState;

#[derive(Parser)]
#[command(name = "berthctl", version, about = "Talk to a Berth distributor")]
pub struct Args {
    /// Distributor URL.
    #[arg(long, env = "BERTH_SERVER", default_value = "http://127.0.0.1:7000", global = true)]
    pub server: String,
    /// Admin bearer token.
    #[arg(long, env = "BERTH_TOKEN", default_value = "", hide_env_values = true, global = true)]
    pub token: String,
    /// Extra PEM CA certificates to trust for an https:// distributor.
    #[arg(long, env = "BERTH_CA_FILE", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Warm images on the edges of some (or every) region before a deploy.
    Prefetch {
        /// Image references, e.g. docker.io/library/nginx:1.27 or ghcr.io/org/app@sha256:...
        #[arg(required = true)]
        images: Vec<String>,
        /// Target region (repeat for several; default: every region).
        #[arg(long = "region")]
        regions: Vec<String>,
        /// Platform, e.g. linux/amd64 (repeat for several; default: every platform).
        #[arg(long = "platform")]
        platforms: Vec<String>,
        /// Wait, with progress bars, until every targeted edge has every blob; exit 0 only then.
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this many seconds (exit 3).
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// Drop tag mappings (so the next pull revalidates) or purge a digest from every tier.
    Invalidate {
        #[arg(long)]
        repository: String,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        digest: Option<String>,
        /// The upstream (registry) the repository belongs to.
        #[arg(long)]
        upstream: Option<String>,
        #[arg(long = "region")]
        regions: Vec<String>,
    },
    /// Refuse a digest (manifest or blob) on every edge, with a reason clients see (403).
    Quarantine {
        /// The digest, e.g. sha256:...
        digest: String,
        #[arg(long, required = true)]
        reason: String,
    },
    /// End the quarantine of a digest.
    Lift { digest: String },
    /// List the digests in quarantine.
    Quarantined,
    /// Take an edge out of rotation: its /readyz turns 503 (DNS and BGP move clients away), it
    /// stops taking new connections after its drain period, and stays up until undrained.
    Drain { node_id: String },
    /// Put a drained edge back in rotation.
    Undrain { node_id: String },
    /// DNS: `berthctl dns zone` prints the GeoDNS zone rendered from the fleet.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// List the edges of the fleet.
    Edges,
    /// List prefetch jobs.
    Jobs,
    /// The most pulled repositories (and manifests) as the edges reported them.
    Top {
        /// Only this region (default: every region).
        #[arg(long)]
        region: Option<String>,
        /// Since when: a duration before now ("1h", "7d") or an RFC 3339 UTC time.
        #[arg(long, default_value = "24h")]
        since: String,
        /// How many of each.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum DnsCommand {
    /// Print the zone (BIND format, for PowerDNS with LUA records) to standard output.
    Zone,
}

/// Runs a command; returns the process exit code.
pub async fn run(args: Args) -> Result<i32> {
    let client = Client::new(&args.server, &args.token, args.ca_file.as_deref())?;
    match args.command {
        Command::Prefetch { images, regions, platforms, wait, timeout } => {
            let created = client
                .post("/api/v1/prefetch", &json!({"images": images, "regions": regions, "platforms": platforms}))
                .await?;
            let id = created["id"].as_str().context("no job id in the answer")?.to_owned();
            println!("prefetch job {id} (policy version {})", created["version"]);
            if !wait {
                return Ok(0);
            }
            wait_for(&client, &id, Duration::from_secs(timeout)).await
        }
        Command::Invalidate { repository, tag, digest, upstream, regions } => {
            let body = json!({"repository": repository, "tag": tag, "digest": digest, "upstream": upstream, "regions": regions});
            let created = client.post("/api/v1/invalidations", &body).await?;
            println!("invalidation {} (policy version {})", created["id"].as_str().unwrap_or("?"), created["version"]);
            Ok(0)
        }
        Command::Quarantine { digest, reason } => quarantine(&client, &digest, &reason, false).await,
        Command::Lift { digest } => quarantine(&client, &digest, "", true).await,
        Command::Drain { node_id } => drain(&client, &node_id, false).await,
        Command::Undrain { node_id } => drain(&client, &node_id, true).await,
        Command::Quarantined => {
            let list = client.get("/api/v1/quarantine").await?;
            println!("{:<72} REASON", "DIGEST");
            for q in list.as_array().into_iter().flatten() {
                println!("{:<72} {}", q["digest"].as_str().unwrap_or("?"), q["reason"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
        Command::Dns { command: DnsCommand::Zone } => {
            print!("{}", client.get_text("/api/v1/dns/zone").await?);
            Ok(0)
        }
        Command::Edges => {
            let edges = client.get("/api/v1/edges").await?;
            println!("{:<24} {:<14} {:>9} {:>10} {:>12}", "EDGE", "REGION", "POLICY", "SEEN (s)", "CACHE");
            for e in edges.as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:<14} {:>9} {:>10.1} {:>12}",
                    e["id"].as_str().unwrap_or("?"),
                    e["region"].as_str().unwrap_or("?"),
                    e["applied_version"],
                    e["seconds_since_seen"].as_f64().unwrap_or(0.0),
                    progress::human_bytes(e["cache_used_bytes"].as_u64().unwrap_or(0)),
                );
            }
            Ok(0)
        }
        Command::Top { region, since, limit } => top(&client, region, &since, limit).await,
        Command::Jobs => {
            let jobs: Vec<JobStatus> = serde_json::from_value(client.get("/api/v1/jobs").await?)?;
            println!("{:<22} {:<8} {:>12} {:>10}  IMAGES", "JOB", "STATE", "BLOBS", "BYTES");
            for j in jobs {
                println!(
                    "{:<22} {:<8} {:>12} {:>10}  {}",
                    j.id,
                    progress::state_name(j.state),
                    format!("{}/{}", j.blobs_done, j.blobs_total),
                    progress::human_bytes(j.bytes),
                    j.images.join(" ")
                );
            }
            Ok(0)
        }
    }
}

/// Prints the most pulled repositories and manifests.
async fn top(client: &Client, region: Option<String>, since: &str, limit: usize) -> Result<i32> {
    let mut query = vec![("since", since.to_owned()), ("limit", limit.to_string())];
    if let Some(region) = region {
        query.push(("region", region));
    }
    let path = format!("/api/v1/analytics/pulls?{}", serde_urlencoded::to_string(&query)?);
    let top: crate::analytics::TopPulls = serde_json::from_value(client.get(&path).await?)?;
    let scope = top.region.as_deref().unwrap_or("every region");
    let since = berth_shared::time::rfc3339(top.since_ms / 1000, None);
    println!("pulls in {scope} since {since}\n");
    for (title, list) in [("REPOSITORY", &top.repositories), ("MANIFEST", &top.manifests)] {
        println!("{:>8}  {title}", "PULLS");
        for p in list {
            println!("{:>8}  {}", p.count, p.name);
        }
        if list.is_empty() {
            println!("{:>8}  (none reported)", "");
        }
        println!();
    }
    Ok(0)
}

/// Records a drain (or undrain) order for one edge in the policy log.
async fn drain(client: &Client, node_id: &str, undrain: bool) -> Result<i32> {
    let created = client.post("/api/v1/drain", &json!({"node_id": node_id, "undrain": undrain})).await?;
    let what = if undrain { "undrained" } else { "drained" };
    println!("{node_id} {what} (policy version {})", created["version"]);
    Ok(0)
}

/// Records a quarantine (or its lifting) in the policy log.
async fn quarantine(client: &Client, digest: &str, reason: &str, lift: bool) -> Result<i32> {
    let created = client.post("/api/v1/quarantine", &json!({"digest": digest, "reason": reason, "lift": lift})).await?;
    let what = if lift { "lifted" } else { "quarantined" };
    println!("{digest} {what} (policy version {})", created["version"]);
    Ok(0)
}

/// Polls a job, drawing progress, until it is done (0) or failed (1), or time runs out (3).
async fn wait_for(client: &Client, id: &str, timeout: Duration) -> Result<i32> {
    let deadline = Instant::now() + timeout;
    let mut drawer = progress::Drawer::new();
    loop {
        let status: JobStatus = serde_json::from_value(client.get(&format!("/api/v1/prefetch/{id}")).await?)?;
        drawer.draw(&status);
        match status.state {
            JobState::Done => {
                println!("done: every targeted edge has every blob");
                return Ok(0);
            }
            JobState::Failed => {
                for (region, r) in &status.by_region {
                    for e in r.edges.iter().filter(|e| !e.errors.is_empty()) {
                        eprintln!("{region}/{}: {}", e.edge, e.errors.join("; "));
                    }
                }
                eprintln!("failed");
                return Ok(1);
            }
            _ => {}
        }
        if Instant::now() > deadline {
            eprintln!("timed out waiting for job {id}");
            return Ok(3);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Parses arguments and runs; for `main`.
pub async fn main_entry() -> i32 {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("berthctl: {e:#}");
            2
        }
    }
}
