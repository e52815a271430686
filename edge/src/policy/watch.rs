//! Following the distributor's watch stream: apply each line in order, resume from the applied
//! version after any interruption, with exponential backoff and jitter; never stop serving.

use std::sync::Arc;
use std::time::Duration;

use berth_shared::protocol::WatchLine;
use http_body_util::BodyExt;
use rand::Rng;
use tokio::sync::watch;

use super::link::{Link, LinkError};
use super::Policy;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// No line (not even a keep-alive) for this long: the stream is dead, reconnect.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Longest line accepted from the distributor.
const MAX_LINE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("watch stream broken: {0}")]
    Stream(String),
    #[error("watch stream idle for {0:?}")]
    Idle(Duration),
}

/// Follows the stream until `shutdown`; `synced` fires the first time the backlog is applied.
pub async fn follow(
    policy: Arc<Policy>,
    link: Arc<Link>,
    mut shutdown: watch::Receiver<bool>,
    mut synced: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut backoff = BACKOFF_START;
    loop {
        let result = tokio::select! {
            r = session(&policy, &link, &mut synced) => r,
            _ = shutdown.changed() => return,
        };
        match result {
            Ok(()) => backoff = BACKOFF_START,
            Err(e) => tracing::warn!(error = %e, applied = policy.applied(), "policy watch interrupted"),
        }
        let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
        let pause = backoff + Duration::from_millis(jitter);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection: from the applied version, until the stream ends or fails.
pub async fn session(
    policy: &Arc<Policy>,
    link: &Link,
    synced: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), WatchError> {
    let mut body = match link.watch(policy.applied()).await {
        Err(LinkError::Status(status)) if status == http::StatusCode::CONFLICT => {
            // The distributor's log is younger than what this edge applied (its store was
            // replaced): start over from its beginning.
            tracing::warn!(applied = policy.applied(), "policy log is behind this edge: resuming from version 0");
            policy.reset_applied();
            link.watch(0).await?
        }
        other => other?,
    };
    let mut buffer: Vec<u8> = Vec::new();
    loop {
        let frame = tokio::time::timeout(IDLE_LIMIT, body.frame()).await.map_err(|_| WatchError::Idle(IDLE_LIMIT))?;
        let Some(frame) = frame else { return Ok(()) };
        let frame = frame.map_err(|e| WatchError::Stream(e.to_string()))?;
        let Ok(data) = frame.into_data() else { continue };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            handle_line(policy, &line[..line.len() - 1], synced).await?;
        }
        if buffer.len() > MAX_LINE {
            return Err(WatchError::Stream("line too long".into()));
        }
    }
}

async fn handle_line(
    policy: &Arc<Policy>,
    line: &[u8],
    synced: &mut Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<(), WatchError> {
    policy.state.drain.distributor_heard();
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let parsed: WatchLine = match serde_json::from_slice(line) {
        Ok(parsed) => parsed,
        Err(e) => {
            // An event this edge does not understand (a newer distributor) is skipped, in order,
            // rather than blocking every later one.
            let value: serde_json::Value =
                serde_json::from_slice(line).map_err(|_| WatchError::Stream(format!("bad line: {e}")))?;
            match (value["type"].as_str(), value["version"].as_u64()) {
                (Some("event"), Some(version)) => {
                    tracing::warn!(version, error = %e, "skipping a policy event this edge does not understand");
                    policy.skip_event(version);
                }
                _ => tracing::warn!(error = %e, "ignoring a watch line this edge does not understand"),
            }
            return Ok(());
        }
    };
    match parsed {
        WatchLine::Event(event) => policy.apply_event(event).await,
        WatchLine::Snapshot(snapshot) => policy.apply_snapshot(snapshot).await,
        WatchLine::Synced { version } => {
            tracing::debug!(version, "policy caught up");
            if let Some(tx) = synced.take() {
                let _ = tx.send(());
            }
        }
        WatchLine::Keepalive { .. } => {}
    }
    Ok(())
}
