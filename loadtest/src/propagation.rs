//! Policy propagation: simulated edges hold watch streams on a real distributor; each round
//! posts an invalidation and times its arrival at every edge.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::peers::{free_port, Peer};

pub const ADMIN: &str = "bench-admin";
pub const EDGE: &str = "bench-edge";

/// Arrival times of events, by version, per simulated edge.
type Arrivals = Arc<Mutex<Vec<std::collections::HashMap<u64, Instant>>>>;

/// Starts the distributor binary (on `postgres_url`'s database when given).
pub fn distributor(binary: &Path, dir: &Path, postgres_url: Option<&str>) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("distributor.toml");
    let postgres = postgres_url.map_or(String::new(), |u| format!("postgres_url = {u:?}\n"));
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{addr}\"\n[store]\ndir = {:?}\n{postgres}",
            dir.join("store").display().to_string()
        ),
    )?;
    let log = std::fs::File::create(dir.join("distributor.log"))?;
    let child = Command::new(binary)
        .arg("--config")
        .arg(&config)
        .env("BERTH_ADMIN_TOKENS", ADMIN)
        .env("BERTH_EDGE_TOKENS", EDGE)
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting berth-distributor")?;
    Ok(Peer { name: "distributor", addr, child, dir: dir.to_owned() })
}

/// One simulated edge: a watch stream on `addrs[index % n]`; records when each event arrives.
/// When its stream ends (its replica died), it goes on with the next replica from the last
/// version it saw, as an edge with `[distributor] replicas` does.
async fn watcher(
    addrs: Vec<SocketAddr>,
    index: usize,
    arrivals: Arrivals,
    ready: Arc<Notify>,
    connected: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<()> {
    let mut attempt = 0;
    let mut first = true;
    loop {
        let addr = addrs[(index + attempt) % addrs.len()];
        let since = arrivals.lock()[index].keys().copied().max().unwrap_or(0);
        match watch_once(addr, since, index, &arrivals, first.then_some((&ready, &connected))).await {
            Ok(()) => first = false,
            Err(e) if attempt > 3 * addrs.len() => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
        attempt += 1;
    }
}

/// One watch stream from `since`, until it ends.
async fn watch_once(
    addr: SocketAddr,
    since: u64,
    index: usize,
    arrivals: &Arrivals,
    mut announce: Option<(&Arc<Notify>, &Arc<std::sync::atomic::AtomicUsize>)>,
) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get(format!("/api/v1/watch?since={since}"))
        .header("Host", addr.to_string())
        .header("Authorization", format!("Bearer {EDGE}"))
        .body(Empty::<Bytes>::new())?;
    let mut body = sender.send_request(req).await?.into_body();
    let mut buffer = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        let now = Instant::now();
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let v: serde_json::Value = serde_json::from_slice(&line)?;
            match v["type"].as_str() {
                Some("event") => {
                    if let Some(version) = v["version"].as_u64() {
                        arrivals.lock()[index].entry(version).or_insert(now);
                    }
                }
                Some("synced") => {
                    if let Some((ready, connected)) = announce.take() {
                        connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        ready.notify_one();
                    }
                }
                _ => {}
            }
        }
    }
    Ok(())
}

async fn invalidate(addr: SocketAddr, round: usize) -> Result<u64> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = format!(r#"{{"repository":"bench/app{round}","tag":"v1"}}"#);
    let req = Request::post("/api/v1/invalidations")
        .header("Host", addr.to_string())
        .header("Authorization", format!("Bearer {ADMIN}"))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(req).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status.as_u16() != 202 {
        bail!("invalidation refused: {status} {body:?}");
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["version"].as_u64().context("version in answer")
}

/// Results: every (edge, round) latency, and each round's slowest edge; with a replica killed,
/// the time until every edge had the first change written after the kill.
pub struct Propagation {
    pub all: Vec<Duration>,
    pub slowest: Vec<Duration>,
    pub after_kill: Option<Duration>,
}

/// The distributors to measure: one on its embedded store, or `replicas` on one PostgreSQL.
pub struct Setup {
    pub replicas: usize,
    pub postgres: bool,
    /// Kill the first replica half way, and time how long its edges take to catch up elsewhere.
    pub kill_one: bool,
}

pub async fn run(binary: &Path, work: &Path, edges: usize, rounds: usize, setup: &Setup) -> Result<Propagation> {
    let pg = setup.postgres.then(berth_tests::postgres::Postgres::start);
    let url = pg.as_ref().map(|p| p.url());
    let mut peers = Vec::new();
    for r in 0..setup.replicas.max(1) {
        let mut peer = distributor(binary, &work.join(format!("distributor-{r}")), url.as_deref())?;
        wait_up(&mut peer).await?;
        peers.push(Some(peer));
    }
    let addrs: Vec<SocketAddr> = peers.iter().flatten().map(|p| p.addr).collect();
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Default::default(); edges]));
    let ready = Arc::new(Notify::new());
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..edges {
        let (a, r, c, f, addrs) = (arrivals.clone(), ready.clone(), connected.clone(), finished.clone(), addrs.clone());
        tokio::spawn(async move {
            if let Err(e) = watcher(addrs, i, a, r, c).await {
                if !f.load(std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("simulated edge {i}: {e}");
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while connected.load(std::sync::atomic::Ordering::SeqCst) < edges {
        if Instant::now() > deadline {
            bail!("only {} of {edges} watch streams connected", connected.load(std::sync::atomic::Ordering::SeqCst));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), ready.notified()).await;
    }
    let (mut all, mut slowest, mut after_kill) = (Vec::new(), Vec::new(), None);
    for round in 0..rounds {
        if setup.kill_one && round == rounds / 2 && addrs.len() > 1 {
            peers[0] = None; // killed (SIGKILL) when dropped
            let killed = Instant::now();
            let version = invalidate(addrs[1], round + 1_000_000).await?;
            wait_for(&arrivals, version, Duration::from_secs(30)).await?;
            let times: Vec<Instant> = arrivals.lock().iter().map(|m| m[&version]).collect();
            after_kill = times.iter().max().map(|t| t.duration_since(killed));
            continue;
        }
        // Written through the replicas in turn (the killed one left out).
        let live: Vec<SocketAddr> =
            addrs.iter().enumerate().filter(|(i, _)| peers[*i].is_some()).map(|(_, a)| *a).collect();
        let started = Instant::now();
        let version = invalidate(live[round % live.len()], round).await?;
        wait_for(&arrivals, version, Duration::from_secs(10)).await?;
        let times: Vec<Duration> = arrivals.lock().iter().map(|m| m[&version].duration_since(started)).collect();
        slowest.push(times.iter().copied().max().unwrap_or_default());
        all.extend(times);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all.sort();
    slowest.sort();
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(peers);
    drop(pg);
    Ok(Propagation { all, slowest, after_kill })
}

/// Waits until every simulated edge has `version` (the arrival instants were taken by the
/// watchers; this only waits for them).
async fn wait_for(arrivals: &Arrivals, version: u64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !arrivals.lock().iter().all(|m| m.contains_key(&version)) {
        if Instant::now() > deadline {
            let missing = arrivals.lock().iter().filter(|m| !m.contains_key(&version)).count();
            bail!("version {version} did not reach {missing} simulated edges");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub async fn wait_up(peer: &mut Peer) -> Result<()> {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(peer.addr).await.is_ok() {
            return Ok(());
        }
        if let Some(status) = peer.child.try_wait()? {
            bail!("distributor exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("distributor did not start")
}
