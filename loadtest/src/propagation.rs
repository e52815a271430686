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

/// Starts the distributor binary.
pub fn distributor(binary: &Path, dir: &Path) -> Result<Peer> {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    std::fs::create_dir_all(dir)?;
    let config = dir.join("distributor.toml");
    std::fs::write(
        &config,
        format!("[listen]\nhttp = \"{addr}\"\n[store]\ndir = {:?}\n", dir.join("store").display().to_string()),
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

/// One simulated edge: a watch stream; records when each event arrives.
async fn watcher(
    addr: SocketAddr,
    index: usize,
    arrivals: Arrivals,
    ready: Arc<Notify>,
    connected: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/api/v1/watch?since=0")
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
                        arrivals.lock()[index].insert(version, now);
                    }
                }
                Some("synced") => {
                    connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    ready.notify_one();
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

/// Results: every (edge, round) latency, and each round's slowest edge.
pub struct Propagation {
    pub all: Vec<Duration>,
    pub slowest: Vec<Duration>,
}

pub async fn run(binary: &Path, work: &Path, edges: usize, rounds: usize) -> Result<Propagation> {
    let mut peer = distributor(binary, &work.join("distributor"))?;
    wait_up(&mut peer).await?;
    let addr = peer.addr;
    let arrivals: Arrivals = Arc::new(Mutex::new(vec![Default::default(); edges]));
    let ready = Arc::new(Notify::new());
    let connected = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for i in 0..edges {
        let (a, r, c, f) = (arrivals.clone(), ready.clone(), connected.clone(), finished.clone());
        tokio::spawn(async move {
            if let Err(e) = watcher(addr, i, a, r, c).await {
                if !f.load(std::sync::atomic::Ordering::SeqCst) {
                    eprintln!("simulated edge {i}: {e}");
                }
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(std::sync::atomic::Ordering::SeqCst) < edges {
        if Instant::now() > deadline {
            bail!("only {} of {edges} watch streams connected", connected.load(std::sync::atomic::Ordering::SeqCst));
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), ready.notified()).await;
    }
    let mut all = Vec::new();
    let mut slowest = Vec::new();
    for round in 0..rounds {
        let started = Instant::now();
        let version = invalidate(addr, round).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // The arrival instants were taken by the watchers; this loop only waits for them.
        while !arrivals.lock().iter().all(|m| m.contains_key(&version)) {
            if Instant::now() > deadline {
                bail!("version {version} did not reach every simulated edge");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let times: Vec<Duration> = arrivals.lock().iter().map(|m| m[&version].duration_since(started)).collect();
        slowest.push(times.iter().copied().max().unwrap_or_default());
        all.extend(times);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    all.sort();
    slowest.sort();
    finished.store(true, std::sync::atomic::Ordering::SeqCst);
    drop(peer);
    Ok(Propagation { all, slowest })
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
