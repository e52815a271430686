//! A download client that costs as little as a client can: one keep-alive TCP connection, the
//! request written by hand, the response read into one 1 MiB buffer and counted, never copied
//! or parsed beyond the status line and `Content-Length`. For the large-blob rows, where a
//! general HTTP client's per-frame work on the same 2 cores as the servers would cap what is
//! measured (docs/benchmarks.md compares it with hyper's client and with curl).

use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::load::Timing;

const BUFFER: usize = 1 << 20;

pub struct RawConn {
    addr: SocketAddr,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Result<RawConn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(RawConn { addr, stream, buf: vec![0; BUFFER] })
    }

    /// GETs `path` and reads its `Content-Length` body, counting the bytes.
    pub async fn get(&mut self, path: &str) -> Result<Timing> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: berth-loadtest-raw\r\n\r\n", self.addr);
        let start = Instant::now();
        self.stream.write_all(request.as_bytes()).await?;
        // The head: read until the blank line (it fits in the buffer).
        let mut filled = 0;
        let head_end = loop {
            let n = self.stream.read(&mut self.buf[filled..]).await?;
            if n == 0 {
                bail!("connection closed before the response head");
            }
            filled += n;
            if let Some(end) = self.buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if filled == self.buf.len() {
                bail!("response head larger than {BUFFER} bytes");
            }
        };
        let first_byte = start.elapsed();
        let head = std::str::from_utf8(&self.buf[..head_end]).context("response head is not UTF-8")?;
        let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("status line")?;
        let length: u64 = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, v)| v.trim().parse().ok())
            .context("a Content-Length body (the raw client reads no other framing)")?;
        let mut received = (filled - head_end) as u64;
        while received < length {
            let want = (length - received).min(BUFFER as u64) as usize;
            let n = self.stream.read(&mut self.buf[..want]).await?;
            if n == 0 {
                bail!("connection closed after {received} of {length} body bytes");
            }
            received += n as u64;
        }
        if received > length {
            bail!("{} bytes beyond Content-Length (pipelining is not used)", received - length);
        }
        Ok(Timing { status, first_byte, total: start.elapsed(), bytes: received })
    }
}

/// `clients` raw connections downloading `path` `rounds` times each, at once.
pub async fn parallel_downloads(
    addr: SocketAddr,
    path: &str,
    clients: usize,
    rounds: usize,
) -> Result<(u64, std::time::Duration, Vec<Timing>)> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (path, barrier) = (path.to_owned(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::connect(addr).await?;
            barrier.wait().await;
            let mut timings = Vec::new();
            for _ in 0..rounds {
                timings.push(conn.get(&path).await?);
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

/// curl downloading `url` `times` times over one keep-alive connection, to /dev/null; MiB/s
/// from the bytes it reports and the time it ran (its start-up included: a few ms).
pub fn curl_mib_per_s(url: &str, times: usize) -> Result<f64> {
    let mut command = std::process::Command::new("curl");
    command.args(["-s", "--fail", "-w", "%{size_download}\n"]);
    for _ in 0..times {
        command.args(["-o", "/dev/null", url]);
    }
    let started = Instant::now();
    let out = command.output().context("running curl")?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("curl failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let bytes: f64 = String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| l.trim().parse::<f64>().ok()).sum();
    Ok(bytes / (1u64 << 20) as f64 / secs)
}
