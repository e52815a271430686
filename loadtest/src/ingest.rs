//! Report ingestion: many simulated edges report to distributor replicas on one PostgreSQL at
//! the edges' pace (every `interval`), and the CPU it costs the distributors and PostgreSQL is
//! measured.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::propagation::{distributor, wait_up, EDGE};
use crate::report::{f1, f2, Table};

const WORKERS: usize = 64;

/// A report as an edge sends it, with counters and pulled names.
fn report(i: usize) -> Bytes {
    let mut requests = serde_json::Map::new();
    for (k, n) in
        [("blob/hit", 9000), ("blob/miss", 120), ("blob/coalesced", 30), ("manifest/hit", 4000), ("manifest/miss", 60)]
    {
        requests.insert(k.into(), (n + i).into());
    }
    let names: Vec<_> =
        (0..5).map(|n| serde_json::json!({"name": format!("docker.io/team/app{n}"), "count": 3})).collect();
    let body = serde_json::json!({
        "id": format!("sim-{i:05}"),
        "region": format!("region-{}", i % 20),
        "version": "0.1.0",
        "applied_version": 0,
        "requests": requests,
        "served_bytes": {"memory": 1u64 << 30, "disk": 5u64 << 30, "upstream": 1u64 << 29},
        "upstream_bytes": 1u64 << 29,
        "cache_used_bytes": 8u64 << 30,
        "cache_max_bytes": 10u64 << 30,
        "readiness": "ready",
        "uptime_seconds": 3600,
        "pulls": {"repositories": names, "manifests": []},
    });
    Bytes::from(body.to_string())
}

/// One worker: its edges' reports, each edge every `interval`, to the edge's replica.
async fn worker(
    addrs: Vec<SocketAddr>,
    edges: Vec<usize>,
    interval: Duration,
    until: Instant,
) -> Result<(u64, u64, Vec<Duration>)> {
    let mut senders = Vec::new();
    for addr in &addrs {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    let bodies: Vec<Bytes> = edges.iter().map(|i| report(*i)).collect();
    let gap = interval / edges.len().max(1) as u32;
    let (mut sent, mut failed, mut times) = (0u64, 0u64, Vec::new());
    let mut next = Instant::now();
    'outer: loop {
        for (k, i) in edges.iter().enumerate() {
            if Instant::now() >= until {
                break 'outer;
            }
            tokio::time::sleep_until(next.into()).await;
            next += gap;
            let r = i % addrs.len();
            let req = Request::post("/api/v1/edges/report")
                .header("Host", addrs[r].to_string())
                .header("Authorization", format!("Bearer {EDGE}"))
                .header("Content-Type", "application/json")
                .body(Full::new(bodies[k].clone()))?;
            let started = Instant::now();
            let response = senders[r].send_request(req).await?;
            let ok = response.status().is_success();
            response.into_body().collect().await?;
            times.push(started.elapsed());
            sent += 1;
            failed += (!ok) as u64;
        }
    }
    Ok((sent, failed, times))
}

/// Runs `seconds` of reports from `edges` edges every `interval` to `replicas` replicas on a
/// fresh PostgreSQL; the first interval warms up (every edge registers) and is not measured.
pub async fn run(
    binary: &Path,
    work: &Path,
    edges: usize,
    interval: Duration,
    seconds: u64,
    replicas: usize,
) -> Result<String> {
    let pg = berth_tests::postgres::Postgres::start();
    let mut peers = Vec::new();
    for r in 0..replicas {
        let mut peer = distributor(binary, &work.join(format!("distributor-{r}")), Some(&pg.url()))?;
        wait_up(&mut peer).await?;
        peers.push(peer);
    }
    let addrs: Vec<SocketAddr> = peers.iter().map(|p| p.addr).collect();
    let run_for = interval + Duration::from_secs(seconds);
    let until = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let mine: Vec<usize> = (w..edges).step_by(WORKERS).collect();
        tasks.push(tokio::spawn(worker(addrs.clone(), mine, interval, until)));
    }
    tokio::time::sleep(interval).await;
    let cpu = |peers: &[crate::peers::Peer]| peers.iter().map(|p| p.cpu_seconds()).sum::<f64>();
    let (d0, p0, t0) = (cpu(&peers), crate::procstat::cpu_seconds(pg.pid()), Instant::now());
    let mut all = Vec::new();
    let (mut sent, mut failed) = (0, 0);
    for t in tasks {
        let (s, f, times) = t.await.context("a report worker")??;
        (sent, failed) = (sent + s, failed + f);
        all.extend(times);
    }
    let wall = t0.elapsed().as_secs_f64();
    let (d1, p1) = (cpu(&peers), crate::procstat::cpu_seconds(pg.pid()));
    all.sort();
    let rate = sent as f64 / run_for.as_secs_f64();
    let mut t = Table::new(
        &format!("Report ingestion: {edges} edges every {}s, {replicas} replicas on PostgreSQL", interval.as_secs()),
        &format!("{WORKERS} keep-alive clients send every simulated edge's report (counters, five pulled names) to the edge's replica, evenly spread over the interval; {seconds} s measured after one interval of warm-up. CPU in cores: CPU seconds over wall time (the distributors summed; PostgreSQL with its backends)."),
        &["reports/s", "failed", "p50 ms", "p99 ms", "distributors, cores", "PostgreSQL, cores"],
    );
    t.row(vec![
        f1(rate),
        failed.to_string(),
        f2(crate::load::percentile(&all, 0.5) / 1000.0),
        f2(crate::load::percentile(&all, 0.99) / 1000.0),
        f2((d1 - d0) / wall),
        f2((p1 - p0) / wall),
    ]);
    drop(peers);
    Ok(t.markdown())
}
