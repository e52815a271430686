//! A region of edges as one cache: the same Zipf pull workload, spread at random over 4 real
//! edges, against 4 independent edges and against 4 sharded ones (`[cluster]`), then the sharded
//! region again with one edge killed halfway (its clients move to the others, as GeoDNS or
//! anycast would move them). Measured: origin bytes, distinct bytes cached, hit ratio, failed
//! pulls.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::load::Conn;
use crate::peers::{self, Peer};
use crate::push::{random, Image, Pusher, OCI_MANIFEST};
use crate::report::{f1, Table};

const MIB: u64 = 1 << 20;
const EDGES: usize = 4;
const WORKERS: usize = 8;

pub struct Options {
    pub edge_binary: PathBuf,
    pub work: PathBuf,
    pub images: usize,
    pub pulls: usize,
}

/// One edge: the process and its admin port (for its metrics).
struct Edge {
    peer: Option<Peer>,
    addr: SocketAddr,
    admin: u16,
}

pub async fn run(opts: &Options) -> Result<String> {
    std::fs::create_dir_all(&opts.work)?;
    let mut origin = peers::origin(&opts.work.join("origin"))?;
    peers::wait_ready(&mut origin).await?;
    let pusher = Pusher::new(&origin.url());
    eprintln!("pushing {} images ...", opts.images);
    let mut rng = StdRng::seed_from_u64(11);
    let mut images = Vec::new();
    for i in 0..opts.images {
        let layers = (0..2).map(|_| random(rng.gen_range(MIB as usize..4 * MIB as usize))).collect();
        images.push(pusher.image(&format!("bench/region{i}"), "v1", layers).await?);
    }
    let schedule = crate::zipf::schedule(opts.images, opts.pulls, 1.0, 5);
    let key = opts.work.join("region.key");
    std::fs::write(&key, "a-region-key-for-the-benchmark-000")?;
    let mut t = Table::new(
        "A region of 4 edges: sharded against independent",
        &format!(
            "{} image pulls (manifest by tag, then every blob) over {} images of 2 layers of 1–4 MiB (working set {:.0} MiB), Zipf s = 1.0, {WORKERS} clients; each pull goes to one of the 4 edges at random (the same sequence for every row). Origin bytes are the blob bytes the origin served; cached is the sum of the edges' `berth_edge_cache_bytes{{state=\"used\"}}`; hit ratio is blob hits over blob requests across the region. In the last row, one edge is killed after half the pulls, and its clients move to the other three.",
            opts.pulls,
            opts.images,
            images.iter().flat_map(|i| &i.blobs).map(|(_, n)| *n).sum::<u64>() as f64 / MIB as f64
        ),
        &["region", "origin MiB (blobs)", "cached MiB (all edges)", "blob hit ratio", "failed pulls"],
    );
    for (name, sharded, kill) in [
        ("4 independent edges", false, false),
        ("4 sharded edges", true, false),
        ("4 sharded edges, one killed halfway", true, true),
    ] {
        eprintln!("{name} ...");
        let tag = name.replace([' ', ','], "-");
        let mut edges = start(&opts.work.join(tag), opts, origin.addr, sharded, &key).await?;
        let from = origin_lines(&origin);
        let failed = workload(&mut edges, &images, &schedule, kill).await?;
        let (_, origin_bytes) = peers::origin_gets(&origin, from, "/blobs/");
        let (mut cached, mut hits, mut requests) = (0.0, 0.0, 0.0);
        for e in edges.iter().filter(|e| e.peer.is_some()) {
            let text = metrics(e.admin).await?;
            cached += series(&text, "berth_edge_cache_bytes{", "state=\"used\"");
            hits += series(&text, "berth_edge_requests_total{", "kind=\"blob\",outcome=\"hit\"");
            requests += series(&text, "berth_edge_requests_total{", "kind=\"blob\"");
        }
        t.row(vec![
            name.into(),
            f1(origin_bytes as f64 / MIB as f64),
            f1(cached / MIB as f64),
            format!("{:.3}", hits / requests.max(1.0)),
            failed.to_string(),
        ]);
    }
    Ok(t.markdown())
}

/// Starts the 4 edges (sharded: each lists all four) and waits until they answer.
async fn start(dir: &Path, opts: &Options, origin: SocketAddr, sharded: bool, key: &Path) -> Result<Vec<Edge>> {
    let ports: Vec<(SocketAddr, u16)> = (0..EDGES)
        .map(|_| Ok((format!("127.0.0.1:{}", peers::free_port()?).parse()?, peers::free_port()?)))
        .collect::<Result<_>>()?;
    let urls: Vec<String> =
        if sharded { ports.iter().map(|(a, _)| format!("http://{a}")).collect() } else { Vec::new() };
    let mut edges = Vec::new();
    for (i, (addr, admin)) in ports.into_iter().enumerate() {
        let edge_dir = dir.join(format!("edge-{i}"));
        let mut peer = peers::berth_region(&edge_dir, &opts.edge_binary, origin, (addr, admin), 2 << 30, (&urls, key))?;
        peers::wait_ready(&mut peer).await.with_context(|| format!("edge {i}"))?;
        edges.push(Edge { peer: Some(peer), addr, admin });
    }
    Ok(edges)
}

/// Runs the schedule; with `kill`, the second edge is killed after half the pulls and the rest
/// go to the others. Returns the failed pulls.
async fn workload(edges: &mut [Edge], images: &[Image], schedule: &[usize], kill: bool) -> Result<usize> {
    let mut rng = StdRng::seed_from_u64(3);
    let picks: Vec<(usize, usize)> = schedule.iter().map(|i| (*i, rng.gen_range(0..EDGES))).collect();
    let half = picks.len() / 2;
    let images = Arc::new(images.to_vec());
    let addrs: Vec<SocketAddr> = edges.iter().map(|e| e.addr).collect();
    let mut failed = pulls(&images, &picks[..half], &addrs, None).await?;
    let dead = if kill {
        edges[1].peer = None; // killed (SIGKILL) when dropped
        Some(1)
    } else {
        None
    };
    failed += pulls(&images, &picks[half..], &addrs, dead).await?;
    Ok(failed)
}

/// The pulls, `WORKERS` at a time; a pull meant for the dead edge goes to the next one.
async fn pulls(
    images: &Arc<Vec<Image>>,
    picks: &[(usize, usize)],
    addrs: &[SocketAddr],
    dead: Option<usize>,
) -> Result<usize> {
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<(usize, usize)> = picks.iter().skip(w).step_by(WORKERS).copied().collect();
        let (images, addrs) = (Arc::clone(images), addrs.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for (image, mut edge) in mine {
                if Some(edge) == dead {
                    edge = (edge + 1) % addrs.len();
                }
                if pull(addrs[edge], &images[image]).await.is_err() {
                    failed += 1;
                }
            }
            anyhow::Ok(failed)
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await??;
    }
    Ok(failed)
}

/// One image pull: the manifest by tag, then every blob, all 200 with their full length.
async fn pull(addr: SocketAddr, image: &Image) -> Result<()> {
    let mut conn = Conn::connect(addr).await?;
    let t = conn.get(&format!("/v2/{}/manifests/{}", image.repo, image.tag), Some(OCI_MANIFEST), None).await?;
    anyhow::ensure!(t.status == 200, "manifest: {}", t.status);
    for (d, len) in &image.blobs {
        let t = conn.get(&format!("/v2/{}/blobs/{d}", image.repo), None, None).await?;
        anyhow::ensure!(t.status == 200 && t.bytes == *len, "blob {d}: {} with {} bytes", t.status, t.bytes);
    }
    Ok(())
}

fn origin_lines(origin: &Peer) -> usize {
    std::fs::read_to_string(origin.dir.join("origin.log")).map_or(0, |l| l.lines().count())
}

/// The edge's `/metrics` text (HTTP/1.0: the body ends with the connection).
async fn metrics(admin: u16) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", admin)).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n").await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The sum of the lines of `metric` whose labels contain `labels`.
fn series(text: &str, metric: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(metric) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
