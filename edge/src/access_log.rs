//! The access log: one JSON line per request (time, client, method, path, repository,
//! reference, status, bytes, tier, outcome, time to first byte, duration, request id, user), to
//! standard output or a file of its own. Lines are handed to a writer thread through a bounded
//! queue: a slow disk never slows a response; lines that do not fit are dropped and counted.

use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

use serde::{Deserialize, Serialize};

use crate::metrics::Metrics;

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// The access log: `"off"`, `"stdout"`, or a file (appended to). Default: `"off"`.
    pub access: String,
    /// The share of cache hits logged, from `0.0` to `1.0` (misses and errors are always logged).
    /// Default: `1.0`.
    pub sample_hits: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { access: "off".into(), sample_hits: 1.0 }
    }
}

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    pub time: String,
    pub request_id: &'a str,
    pub client: Option<String>,
    pub method: &'a str,
    pub path: &'a str,
    pub repository: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub status: u16,
    pub bytes: u64,
    pub kind: &'a str,
    pub outcome: &'a str,
    pub tier: Option<&'a str>,
    pub ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    pub user: Option<&'a str>,
}

/// The access log of an edge.
pub struct AccessLog {
    queue: Option<SyncSender<String>>,
    sample_hits: f64,
}

impl AccessLog {
    /// Starts the writer for `config` (nothing when off). A file that cannot be opened is an error.
    pub fn start(config: &LogConfig) -> std::io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = match config.access.as_str() {
            "off" => return Ok(AccessLog { queue: None, sample_hits: config.sample_hits }),
            "stdout" => Box::new(std::io::stdout()),
            path => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(PathBuf::from(path))?),
        };
        let (tx, rx) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new().name("berth-access-log".into()).spawn(move || {
            let mut out = std::io::BufWriter::new(sink);
            while let Ok(line) = rx.recv() {
                let _ = out.write_all(line.as_bytes());
                // Flush when the queue is empty: lines reach the file promptly, in batches under load.
                while let Ok(line) = rx.try_recv() {
                    let _ = out.write_all(line.as_bytes());
                }
                let _ = out.flush();
            }
        })?;
        Ok(AccessLog { queue: Some(tx), sample_hits: config.sample_hits })
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Logs one request (hits sampled at `sample_hits`).
    pub fn record(&self, line: &Line<'_>, metrics: &Metrics) {
        let Some(queue) = &self.queue else { return };
        if line.outcome == "hit" && self.sample_hits < 1.0 && rand::random::<f64>() >= self.sample_hits {
            return;
        }
        let Ok(mut text) = serde_json::to_string(line) else { return };
        text.push('\n');
        if let Err(TrySendError::Full(_)) = queue.try_send(text) {
            metrics.access_log_dropped.inc();
        }
    }
}
