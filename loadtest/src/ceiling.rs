//! The machine's own ceiling for the hot-blob rows: loopback TCP streams of 1 MiB writes from
//! memory (`iperf3 -l 1M`), measured in the same run as the caches.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// MiB/s that `streams` loopback TCP streams carry together, sending `mib` MiB from memory in
/// 1 MiB writes.
pub fn loopback_mib_per_s(streams: usize, mib: u64) -> Result<f64> {
    let port = crate::peers::free_port()?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-B", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt-get install iperf3)")?;
    let mut output = None;
    // The server listens a moment after it starts: retry the client briefly.
    for _ in 0..50 {
        let out = Command::new("iperf3")
            .args(["-c", "127.0.0.1", "-p", &port.to_string(), "-l", "1M", "-J"])
            .args(["-n", &format!("{mib}M"), "-P", &streams.to_string()])
            .output()
            .context("running iperf3")?;
        if out.status.success() {
            output = Some(out.stdout);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    let Some(json) = output else { bail!("iperf3 never connected to its server") };
    let report: serde_json::Value = serde_json::from_slice(&json).context("iperf3's JSON")?;
    let bits = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3's JSON: no sum")?;
    Ok(bits / 8.0 / (1u64 << 20) as f64)
}
