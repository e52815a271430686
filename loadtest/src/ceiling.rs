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
        if out.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3's JSON")?;
            let bits = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3's JSON: no sum")?;
            return Ok(bits / 8.0 / (1u64 << 20) as f64);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!("iperf3 never connected to its server")
}
