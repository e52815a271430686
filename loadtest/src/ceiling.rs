//! The machine's own ceiling for the hot-blob rows: loopback TCP streams of 1 MiB writes from
//! memory (`iperf3 -l 1M`), measured in the same run as the caches.
//!
//! iperf3 before 3.16 runs every stream of one test on a single thread, so `-P 8` measures one
//! core's worth of streams, not the machine's: several streams are measured as that many
//! iperf3 pairs at once, each one stream, and their rates added.

use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// MiB/s that `streams` loopback TCP streams carry together, each sending `mib` MiB from
/// memory in 1 MiB writes (with several streams, each pair runs for the time one stream of
/// `mib` MiB took alone, at least 2 s, so that they overlap).
pub fn loopback_mib_per_s(streams: usize, mib: u64) -> Result<f64> {
    let servers = (0..streams.max(1)).map(|_| server()).collect::<Result<Vec<_>>>()?;
    let result = match servers.len() {
        1 => client(servers[0].0, &["-n", &format!("{mib}M")]).map(|r| vec![r]),
        _ => {
            let alone = client(servers[0].0, &["-n", &format!("{mib}M")])?;
            let seconds = (mib as f64 / alone).ceil().max(2.0).to_string();
            let runs: Vec<_> = servers
                .iter()
                .map(|(port, _)| {
                    let (port, seconds) = (*port, seconds.clone());
                    std::thread::spawn(move || client(port, &["-t", &seconds]))
                })
                .collect();
            runs.into_iter().map(|r| r.join().unwrap_or_else(|_| bail!("an iperf3 client thread failed"))).collect()
        }
    };
    for (_, mut child) in servers {
        let _ = child.kill();
        let _ = child.wait();
    }
    Ok(result?.iter().sum())
}

/// An iperf3 server on 127.0.0.1 at a free port (serving any number of tests).
fn server() -> Result<(u16, Child)> {
    let port = crate::peers::free_port()?;
    let child = Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt-get install iperf3)")?;
    Ok((port, child))
}

/// One stream of 1 MiB writes to the server at `port`; its MiB/s as received.
fn client(port: u16, length: &[&str]) -> Result<f64> {
    // The server listens a moment after it starts: retry the client briefly.
    for _ in 0..50 {
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-l", "1M", "-J"])
            .args(length)
            .output()
            .context("running iperf3")?;
        // A test that did not run (the server still busy with the last one, or not listening
        // yet) ends with an error in the JSON, sometimes with a zero exit: tried again.
        let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
        let bits = report.as_ref().and_then(|r| r["end"]["sum_received"]["bits_per_second"].as_f64());
        if let (true, Some(bits)) = (out.status.success(), bits) {
            return Ok(bits / 8.0 / (1u64 << 20) as f64);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("iperf3 never completed a test with its server")
}

/// A bare HTTP/1.1 server that answers every request with the same body from memory, written
/// in 1 MiB pieces on a thread per connection: what any server that holds the blob
/// in memory can at most do on this machine (unlike iperf3's one 1 MiB buffer, rewritten from
/// the CPU's cache, its bytes come from memory, as a cache's do). Stops when dropped.
pub struct BareServer {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BareServer {
    pub fn start(body: bytes::Bytes) -> Result<BareServer> {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let (Ok(mut conn), body) = (conn, body.clone()) else { continue };
                std::thread::spawn(move || {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = conn.read(&mut buf) {
                        request.extend_from_slice(&buf[..n]);
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            if conn.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            for piece in body.chunks(1 << 20) {
                                if conn.write_all(piece).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(BareServer { addr, stop })
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr); // wakes the accept loop to see the stop
    }
}
