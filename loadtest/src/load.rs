//! The load generator: keep-alive HTTP/1.1 connections that time headers, first body byte and
//! completion, and count bytes without copying them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest as _, Sha256};

/// One keep-alive connection.
pub struct Conn {
    addr: SocketAddr,
    sender: SendRequest<Empty<Bytes>>,
    user_agent: &'static str,
}

/// Timings of one GET, measured from when it was sent.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub status: u16,
    pub first_byte: Duration,
    pub total: Duration,
    pub bytes: u64,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { addr, sender, user_agent: "berth-loadtest" })
    }

    /// Sends this User-Agent (the origin's log tells such requests apart).
    pub fn with_user_agent(mut self, user_agent: &'static str) -> Self {
        self.user_agent = user_agent;
        self
    }

    /// GETs `path`, reading (and optionally hashing) the whole body.
    pub async fn get(&mut self, path: &str, accept: Option<&str>, hash: Option<&mut Sha256>) -> Result<Timing> {
        match accept {
            Some(a) => self.get_with(path, &[("Accept", a)], hash).await,
            None => self.get_with(path, &[], hash).await,
        }
    }

    /// GETs `path` with extra request headers (a `Range`), reading the whole body.
    pub async fn get_with(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        hash: Option<&mut Sha256>,
    ) -> Result<Timing> {
        if self.sender.ready().await.is_err() {
            *self = Conn::connect(self.addr).await?;
        }
        let mut req = Request::get(path).header("Host", self.addr.to_string()).header("User-Agent", self.user_agent);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let start = Instant::now();
        let response = self.sender.send_request(req.body(Empty::new())?).await?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let mut first_byte = None;
        let mut bytes = 0u64;
        let mut hash = hash;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                first_byte.get_or_insert_with(|| start.elapsed());
                bytes += data.len() as u64;
                if let Some(h) = hash.as_deref_mut() {
                    h.update(&data);
                }
            }
        }
        let total = start.elapsed();
        Ok(Timing { status, first_byte: first_byte.unwrap_or(total), total, bytes })
    }
}

/// GETs `path` once and checks the body's sha256.
pub async fn get_verified(addr: SocketAddr, path: &str, expected_hex: &str) -> Result<Timing> {
    let mut conn = Conn::connect(addr).await?;
    let mut hasher = Sha256::new();
    let t = conn.get(path, None, Some(&mut hasher)).await?;
    let got = hex::encode(hasher.finalize());
    if t.status != 200 || got != expected_hex {
        bail!("GET {path} via {addr}: status {} sha256 {got}, expected {expected_hex}", t.status);
    }
    Ok(t)
}

/// Latency percentiles of a sample, in microseconds.
pub fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// Many connections GETting `path` for `duration`: (requests/s, p50 µs, p99 µs, errors).
pub async fn hammer(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
    connections: usize,
    duration: Duration,
) -> Result<(f64, f64, f64, usize)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (path, accept) = (path.to_owned(), accept.map(str::to_owned));
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0;
            let mut conn = match Conn::connect(addr).await {
                Ok(c) => c,
                Err(_) => return (lat, 1),
            };
            while Instant::now() < deadline {
                match conn.get(&path, accept.as_deref(), None).await {
                    Ok(t) if t.status == 200 => lat.push(t.total),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Ok((all.len() as f64 / elapsed, percentile(&all, 0.5), percentile(&all, 0.99), errors))
}

/// `clients` connections each GETting `path` `rounds` times at once; returns total bytes and
/// wall time.
pub async fn parallel_downloads(
    addr: SocketAddr,
    path: &str,
    clients: usize,
    rounds: usize,
) -> Result<(u64, Duration, Vec<Timing>)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (path, barrier) = (path.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            barrier.wait().await;
            let mut timings = Vec::new();
            for _ in 0..rounds {
                timings.push(conn.get(&path, None, None).await?);
            }
            anyhow::Ok(timings)
        }));
    }
    let started = Instant::now();
    let mut timings = Vec::new();
    for t in tasks {
        timings.extend(t.await??);
    }
    let elapsed = started.elapsed();
    let bytes = timings.iter().map(|t| t.bytes).sum();
    Ok((bytes, elapsed, timings))
}
