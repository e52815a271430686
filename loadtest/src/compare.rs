//! The side-by-side benchmark: one origin, four caches, every scenario run against each cache in
//! turn, in one process, on one machine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use berth_shared::Digest;
use sha2::Digest as _;

use crate::load::{self, Conn};
use crate::peers::{self, Peer};
use crate::push::{random, Image, Pusher, OCI_MANIFEST};
use crate::report::{f1, f2, ms, Table};
use crate::{procstat, zipf};

const MIB: u64 = 1 << 20;
/// Rounds of the throughput and request-rate measurements (the median is reported).
const ROUNDS: usize = 3;
/// User-Agent of the benchmark's own direct requests to the origin (not counted as fetches).
const DIRECT_AGENT: &str = "berth-loadtest-direct";
const GIB: f64 = (1u64 << 30) as f64;

/// What to run.
pub struct Options {
    /// The berth-edge binary to measure (a release build).
    pub edge_binary: PathBuf,
    /// Folder for every server's data and logs.
    pub work: PathBuf,
    /// Size of the large blobs, in MiB (100 in the published run).
    pub blob_mib: u64,
    /// Seconds per small-request measurement.
    pub small_seconds: u64,
    /// Image pulls in the Zipf workload.
    pub zipf_pulls: usize,
    /// Scenarios to run (`hot`, `small`, `cold`, `skopeo`, `zipf`); empty: all.
    pub only: Vec<String>,
}

impl Options {
    fn wants(&self, scenario: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == scenario)
    }
}

/// The caches under test, started against `origin`.
fn start_peers(
    work: &Path,
    opts: &Options,
    origin: &Peer,
    cache_bytes: u64,
    memory: u64,
    tag: &str,
) -> Result<Vec<Peer>> {
    let o = origin.addr;
    Ok(vec![
        peers::berth(&work.join(format!("berth-{tag}")), &opts.edge_binary, o, cache_bytes, memory)?,
        peers::nginx(&work.join(format!("nginx-{tag}")), o, cache_bytes)?,
        peers::varnish(&work.join(format!("varnish-{tag}")), o, cache_bytes)?,
        peers::distribution_proxy(&work.join(format!("distribution-{tag}")), o)?,
    ])
}

/// Runs every scenario and returns the markdown report.
pub async fn run(opts: &Options) -> Result<String> {
    std::fs::create_dir_all(&opts.work)?;
    let mut origin = peers::origin(&opts.work.join("origin"))?;
    peers::wait_ready(&mut origin).await?;
    let pusher = Pusher::new(&origin.url());
    let blob_len = (opts.blob_mib * MIB) as usize;
    eprintln!("pushing test content to the origin ...");
    let hot_body = random(blob_len);
    let hot_hex = hex::encode(sha2::Sha256::digest(&hot_body));
    let hot = pusher.blob("bench/hot", hot_body).await?;
    let mut colds = Vec::new();
    for _ in 0..4 {
        colds.push(pusher.blob("bench/cold", random(blob_len)).await?);
    }
    let small_blob = pusher.blob("bench/small", random(4096)).await?;
    let small_image = pusher.image("bench/small", "v1", vec![random(4096)]).await?;
    let image = pusher.image("bench/image", "v1", (0..4).map(|_| random(16 * MIB as usize)).collect()).await?;

    let mut peers = start_peers(&opts.work, opts, &origin, 8 << 30, 256 * MIB, "main")?;
    for p in &mut peers {
        peers::wait_ready(p).await?;
    }
    let mut tables = Vec::new();
    if opts.wants("hot") {
        eprintln!("hot blob ...");
        let bare = crate::ceiling::BareServer::start(random(blob_len))?;
        tables.extend(hot_blob(&peers, &format!("/v2/bench/hot/blobs/{hot}"), &hot_hex, &bare).await?);
    }
    if opts.wants("small") {
        eprintln!("small requests ...");
        tables.push(small_requests(&peers, &small_image, small_blob, opts.small_seconds).await?);
    }
    if opts.wants("cold") {
        eprintln!("cold miss ...");
        tables.push(cold_miss(&peers, &origin, &colds).await?);
    }
    if opts.wants("skopeo") {
        eprintln!("skopeo ...");
        tables.push(skopeo_pulls(&peers, &image, &opts.work).await?);
    }
    drop(peers);
    if opts.wants("zipf") {
        eprintln!("zipf workload ...");
        tables.push(zipf_workload(opts, &origin, &pusher).await?);
    }
    Ok(tables.iter().map(Table::markdown).collect())
}

/// Hot 100 MiB blob: one client in a loop, 8 clients, and 32 clients (peak memory).
async fn hot_blob(peers: &[Peer], path: &str, hex: &str, bare: &crate::ceiling::BareServer) -> Result<Vec<Table>> {
    let mut seq = Table::new(
        "Hot blob, one client",
        "The blob is cached first; then one keep-alive connection downloads it 5 times; 3 rounds, the caches taking turns, median shown. CPU is the server's (all its processes), user + system, during the raw client's downloads. Three clients in turn: the loadtest's raw client (request written by hand, the body read into one 1 MiB buffer and counted: the figure the other rows use), hyper's HTTP/1 client, and curl (one process, 5 URLs on one connection, to /dev/null).",
        &["cache", "MiB/s", "CPU s per GiB", "MiB/s, hyper client", "MiB/s, curl"],
    );
    let mut par = Table::new(
        "Hot blob, 8 clients",
        "8 raw-client connections, 3 downloads each, at once; 3 rounds, median shown.",
        &["cache", "MiB/s (total)", "CPU s per GiB"],
    );
    let mut mem = Table::new(
        "Memory while 32 clients download the hot blob at once",
        "Peak resident memory of the server's processes, sampled every 20 ms. Berth runs with `memory_max = 256MiB`; Varnish keeps objects in its malloc storage by design.",
        &["cache", "peak RSS MiB", "MiB/s (total)"],
    );
    for p in peers {
        load::get_verified(p.addr, path, hex).await.with_context(|| format!("warming {}", p.name))?;
        tokio::time::sleep(Duration::from_millis(500)).await; // let the cache commit its copy
        load::get_verified(p.addr, path, hex).await.with_context(|| format!("verifying {}", p.name))?;
    }
    // (MiB/s, CPU s per GiB) per round, the caches taking turns; the median round is reported.
    let mut seq_rounds = vec![Vec::new(); peers.len()];
    let mut par_rounds = vec![Vec::new(); peers.len()];
    let mut other_clients = vec![(Vec::new(), Vec::new()); peers.len()];
    // The machine's ceiling, measured in the same rounds: loopback TCP, 1 MiB writes.
    let (mut ceiling_one, mut ceiling_eight) = (Vec::new(), Vec::new());
    // And a bare server writing a blob of the same size from memory, read by the raw client.
    let (mut bare_one, mut bare_eight) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ceiling_one.push(crate::ceiling::loopback_mib_per_s(1, 500)?);
        ceiling_eight.push(crate::ceiling::loopback_mib_per_s(8, 300)?);
        let mut conn = crate::raw::RawConn::connect(bare.addr).await?;
        let (started, mut bytes) = (Instant::now(), 0);
        for _ in 0..5 {
            bytes += conn.get("/").await?.bytes;
        }
        bare_one.push(bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64());
        let (bytes, elapsed, _) = crate::raw::parallel_downloads(bare.addr, "/", 8, 3).await?;
        bare_eight.push(bytes as f64 / MIB as f64 / elapsed.as_secs_f64());
        for (i, p) in peers.iter().enumerate() {
            let cpu = p.cpu_seconds();
            let mut conn = crate::raw::RawConn::connect(p.addr).await?;
            let started = Instant::now();
            let mut bytes = 0;
            for _ in 0..5 {
                bytes += conn.get(path).await?.bytes;
            }
            let secs = started.elapsed().as_secs_f64();
            let cpu = p.cpu_seconds() - cpu;
            seq_rounds[i].push((bytes as f64 / MIB as f64 / secs, cpu / (bytes as f64 / GIB)));
            // The same downloads with hyper's client, and with curl.
            let mut conn = Conn::connect(p.addr).await?;
            let started = Instant::now();
            let mut bytes = 0;
            for _ in 0..5 {
                bytes += conn.get(path, None, None).await?.bytes;
            }
            other_clients[i].0.push(bytes as f64 / MIB as f64 / started.elapsed().as_secs_f64());
            other_clients[i].1.push(crate::raw::curl_mib_per_s(&format!("http://{}{path}", p.addr), 5)?);
        }
        for (i, p) in peers.iter().enumerate() {
            let cpu = p.cpu_seconds();
            let (bytes, elapsed, _) = crate::raw::parallel_downloads(p.addr, path, 8, 3).await?;
            let cpu = p.cpu_seconds() - cpu;
            par_rounds[i].push((bytes as f64 / MIB as f64 / elapsed.as_secs_f64(), cpu / (bytes as f64 / GIB)));
        }
    }
    for (i, p) in peers.iter().enumerate() {
        let (rate, cpu) = median(&seq_rounds[i]);
        let middle = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (hyper, curl) = (middle(&mut other_clients[i].0), middle(&mut other_clients[i].1));
        seq.row(vec![p.name.into(), f1(rate), f2(cpu), f1(hyper), f1(curl)]);
        let (rate, cpu) = median(&par_rounds[i]);
        par.row(vec![p.name.into(), f1(rate), f2(cpu)]);
    }
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let name = "ceiling: loopback TCP (iperf3 -l 1M)";
    seq.row(vec![name.into(), f1(middle(ceiling_one)), "-".into(), "-".into(), "-".into()]);
    par.row(vec![format!("{name}, 8 streams, one iperf3 pair each"), f1(middle(ceiling_eight)), "-".into()]);
    let name = "bare server: the same size from memory, 1 MiB writes (raw client)";
    seq.row(vec![name.into(), f1(middle(bare_one)), "-".into(), "-".into(), "-".into()]);
    par.row(vec![name.into(), f1(middle(bare_eight)), "-".into()]);
    for p in peers {
        let sampler = procstat::RssSampler::start(p.pid());
        let (bytes, elapsed, _) = crate::raw::parallel_downloads(p.addr, path, 32, 1).await?;
        let peak = sampler.finish();
        mem.row(vec![
            p.name.into(),
            f1(peak as f64 / MIB as f64),
            f1(bytes as f64 / MIB as f64 / elapsed.as_secs_f64()),
        ]);
    }
    Ok(vec![seq, par, mem])
}

/// The round with the median rate.
fn median(rounds: &[(f64, f64)]) -> (f64, f64) {
    let mut sorted = rounds.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    sorted[sorted.len() / 2]
}

/// Small requests: a manifest by digest and a 4 KiB blob, 64 connections.
async fn small_requests(peers: &[Peer], image: &Image, blob: Digest, seconds: u64) -> Result<Table> {
    let mut t = Table::new(
        "Small requests, 64 connections",
        &format!(
            "{ROUNDS} rounds, the caches taking turns, {seconds} s per measurement after one warming request; the median round is shown. Latency in microseconds."
        ),
        &["cache", "manifest req/s", "manifest p50", "manifest p99", "4 KiB blob req/s", "blob p50", "blob p99"],
    );
    let manifest = format!("/v2/bench/small/manifests/{}", image.manifest);
    let blob = format!("/v2/bench/small/blobs/{blob}");
    let mut rounds: Vec<Vec<[f64; 6]>> = vec![Vec::new(); peers.len()];
    let mut errors = vec![0usize; peers.len()];
    for _ in 0..ROUNDS {
        for (i, p) in peers.iter().enumerate() {
            let mut conn = Conn::connect(p.addr).await?;
            conn.get(&manifest, Some(OCI_MANIFEST), None).await?;
            conn.get(&blob, None, None).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            let d = Duration::from_secs(seconds);
            let (m_rps, m50, m99, m_err) = load::hammer(p.addr, &manifest, Some(OCI_MANIFEST), 64, d).await?;
            let (b_rps, b50, b99, b_err) = load::hammer(p.addr, &blob, None, 64, d).await?;
            errors[i] += m_err + b_err;
            rounds[i].push([m_rps, m50, m99, b_rps, b50, b99]);
        }
    }
    for (i, p) in peers.iter().enumerate() {
        let mut r = rounds[i].clone();
        r.sort_by(|a, b| (a[0] + a[3]).total_cmp(&(b[0] + b[3])));
        let m = r[r.len() / 2];
        let name = if errors[i] > 0 { format!("{} ({} errors)", p.name, errors[i]) } else { p.name.to_string() };
        t.row(vec![name, f1(m[0]), f1(m[1]), f1(m[2]), f1(m[3]), f1(m[4]), f1(m[5])]);
    }
    Ok(t)
}

/// Cold miss: 32 clients at once on one uncached blob (a different blob per cache).
async fn cold_miss(peers: &[Peer], origin: &Peer, colds: &[Digest]) -> Result<Table> {
    let mut t = Table::new(
        "Cold miss, 32 clients at once",
        "Each cache gets its own uncached blob. Origin fetches are counted in the origin's access log (the distribution proxy's background store included). Times in ms from the common start; the origin's own time to first byte for that blob is measured just before.",
        &["cache", "origin fetches", "origin TTFB", "TTFB first", "TTFB median", "TTFB last", "total time"],
    );
    for (p, digest) in peers.iter().zip(colds) {
        let path = format!("/v2/bench/cold/blobs/{digest}");
        let mut direct = Conn::connect(origin.addr).await?.with_user_agent(DIRECT_AGENT);
        let origin_ttfb = direct.get(&path, None, None).await?.first_byte;
        let mark = peers::origin_mark(origin);
        let (_, elapsed, timings) = load::parallel_downloads(p.addr, &path, 32, 1).await?;
        let mut ttfb: Vec<Duration> = timings.iter().map(|t| t.first_byte).collect();
        ttfb.sort();
        let ok = timings.iter().filter(|t| t.status == 200).count();
        tokio::time::sleep(Duration::from_secs(2)).await; // background fetches (distribution) land in the log
        let (fetches, _) = peers::origin_gets(origin, mark, &digest.to_string());
        let name = if ok == 32 { p.name.to_string() } else { format!("{} ({} of 32 OK)", p.name, ok) };
        t.row(vec![
            name,
            fetches.to_string(),
            ms(origin_ttfb),
            ms(ttfb[0]),
            ms(ttfb[ttfb.len() / 2]),
            ms(ttfb[ttfb.len() - 1]),
            ms(elapsed),
        ]);
    }
    Ok(t)
}

/// A full image pull with skopeo through each cache, cold then warm.
async fn skopeo_pulls(peers: &[Peer], image: &Image, work: &Path) -> Result<Table> {
    let size: u64 = image.blobs.iter().map(|(_, s)| s).sum();
    let mut t = Table::new(
        "Full image pull with skopeo",
        &format!(
            "`skopeo copy --src-tls-verify=false docker://<cache>/bench/image:v1 oci:<dir>` of an image of 4 layers ({:.0} MiB); skopeo first tries HTTPS on the plain port. Seconds.",
            size as f64 / MIB as f64
        ),
        &["cache", "cold", "warm"],
    );
    for p in peers {
        let mut row = vec![p.name.to_string()];
        for round in ["cold", "warm"] {
            let dest = work.join(format!("pull-{}-{round}", p.name));
            let _ = std::fs::remove_dir_all(&dest);
            let started = Instant::now();
            let status = tokio::process::Command::new("skopeo")
                .args(["copy", "--src-tls-verify=false"])
                .arg(format!("docker://{}/{}:{}", p.addr, image.repo, image.tag))
                .arg(format!("oci:{}:v1", dest.display()))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .await?;
            let secs = started.elapsed().as_secs_f64();
            row.push(if status.success() { f2(secs) } else { "failed".into() });
        }
        t.row(row);
    }
    Ok(t)
}

/// Zipf-popular pulls over 100 images with every cache smaller than the working set.
async fn zipf_workload(opts: &Options, origin: &Peer, pusher: &Pusher) -> Result<Table> {
    let mut images = Vec::new();
    let mut working_set = 0u64;
    for i in 0..100 {
        let layers: Vec<_> = (0..2).map(|l| random(((256 + (i * 37 + l * 101) % 1280) << 10) as usize)).collect();
        let image = pusher.image(&format!("bench/zipf-{i}"), "v1", layers).await?;
        working_set += image.blobs.iter().map(|(_, s)| s).sum::<u64>();
        images.push(image);
    }
    let cache = working_set * 2 / 5;
    let schedule = zipf::schedule(images.len(), opts.zipf_pulls, 1.0, 42);
    let mut t = Table::new(
        "Zipf workload, cache smaller than the working set",
        &format!(
            "{} image pulls (manifest by tag + every blob) with Zipf(s = 1.0) popularity over 100 images, 8 clients; working set {:.0} MiB, cache bound {:.0} MiB (the distribution proxy has no size bound). Peak disk: the largest size of the cache's folder, sampled every 50 ms during the run (Varnish caches in memory). Hit ratio: requests not sent to the origin; offload: bytes not fetched from the origin.",
            opts.zipf_pulls,
            working_set as f64 / MIB as f64,
            cache as f64 / MIB as f64
        ),
        &["cache", "requests", "origin requests", "hit ratio", "served MiB", "origin MiB", "origin offload", "peak disk MiB", "failures"],
    );
    // Berth's memory tier counts against the same bound: disk + memory = the cache size.
    let mut peers = start_peers(&opts.work, opts, origin, cache * 7 / 8, cache / 8, "zipf")?;
    // The same edge with LRU eviction instead of S3-FIFO (the default), at the same bounds.
    let bounds = (cache * 7 / 8, cache / 8);
    let lru = ("berth-lru", "eviction = \"lru\"");
    peers.insert(1, peers::berth_with(&opts.work.join("berth-lru-zipf"), &opts.edge_binary, origin.addr, bounds, lru)?);
    for p in &mut peers {
        peers::wait_ready(p).await?;
    }
    for p in &peers {
        let mark = peers::origin_mark(origin);
        let disk = peers::DiskSampler::start(p.dir.clone());
        let (requests, bytes, failures) = zipf::run(p.addr, &images, &schedule, 8).await?;
        let peak_disk = disk.finish();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (origin_requests, origin_bytes) = peers::origin_gets(origin, mark, "/v2/bench/zipf-");
        t.row(vec![
            p.name.into(),
            requests.to_string(),
            origin_requests.to_string(),
            format!("{:.1}%", 100.0 * (1.0 - origin_requests as f64 / requests as f64)),
            f1(bytes as f64 / MIB as f64),
            f1(origin_bytes as f64 / MIB as f64),
            format!("{:.1}%", 100.0 * (1.0 - origin_bytes as f64 / bytes as f64)),
            f1(peak_disk as f64 / MIB as f64),
            failures.to_string(),
        ]);
    }
    Ok(t)
}
