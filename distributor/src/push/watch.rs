//! `GET /api/v1/watch?since=<version>`: one JSON line per event after `since` (a snapshot first
//! if `since` predates the compacted log), a `synced` line once the backlog is sent, then live
//! events as they are appended, and keep-alive lines while idle.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use berth_shared::protocol::{PolicyEvent, WatchLine};
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use crate::metrics::Metrics;
use crate::policy::PolicyLog;
use crate::store::StoreError;

/// Events read from the store per batch when catching up.
const BATCH: usize = 1000;

/// The lines of one watch stream, produced by a task; dropping the receiver (the client left)
/// ends the task.
pub fn stream(
    log: Arc<PolicyLog>,
    since: u64,
    keepalive: Duration,
    metrics: Arc<Metrics>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) -> mpsc::Receiver<Result<Bytes, Infallible>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        metrics.watchers.inc();
        tokio::select! {
            result = produce(&log, since, keepalive, &tx) => match result {
                Err(WatchError::Gone) => tracing::debug!("watcher went away"),
                Err(e) => tracing::warn!(error = %e, "watch stream ended"),
                Ok(()) => {}
            },
            _ = closing.wait_for(|c| *c) => tracing::debug!("watch stream closed: shutting down"),
        }
        metrics.watchers.dec();
    });
    rx
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("watcher went away")]
    Gone,
}

async fn send(tx: &mpsc::Sender<Result<Bytes, Infallible>>, line: &WatchLine) -> Result<(), WatchError> {
    let mut text = serde_json::to_vec(line).map_err(StoreError::Corrupt)?;
    text.push(b'\n');
    tx.send(Ok(Bytes::from(text))).await.map_err(|_| WatchError::Gone)
}

async fn produce(
    log: &PolicyLog,
    since: u64,
    keepalive: Duration,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
) -> Result<(), WatchError> {
    // Subscribe first: nothing appended from here on can fall between backlog and live.
    let mut live = log.subscribe();
    let (_, compacted) = log.versions().await?;
    let mut cursor = since;
    if since < compacted {
        let snapshot = log.snapshot().await?;
        cursor = snapshot.version;
        send(tx, &WatchLine::Snapshot(snapshot)).await?;
    }
    cursor = catch_up(log, cursor, tx).await?;
    send(tx, &WatchLine::Synced { version: cursor }).await?;
    let mut ticker = tokio::time::interval(keepalive);
    ticker.tick().await;
    loop {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) if event.version <= cursor => {}
                Ok(event) if event.version == cursor + 1 => {
                    cursor = event.version;
                    send(tx, &WatchLine::Event(event)).await?;
                }
                // A gap (or a lag): the store has everything, in order.
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => cursor = catch_up(log, cursor, tx).await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = ticker.tick() => send(tx, &WatchLine::Keepalive { version: cursor }).await?,
            _ = tx.closed() => return Err(WatchError::Gone),
        }
    }
}

/// Sends every stored event after `cursor`; returns the new cursor.
async fn catch_up(
    log: &PolicyLog,
    mut cursor: u64,
    tx: &mpsc::Sender<Result<Bytes, Infallible>>,
) -> Result<u64, WatchError> {
    loop {
        let batch: Vec<PolicyEvent> = log.since(cursor, BATCH).await?;
        if batch.is_empty() {
            return Ok(cursor);
        }
        if batch[0].version != cursor + 1 {
            // The log was compacted past the cursor (versions are otherwise contiguous): what
            // is gone comes as a snapshot.
            let snapshot = log.snapshot().await?;
            if snapshot.version > cursor {
                cursor = snapshot.version;
                send(tx, &WatchLine::Snapshot(snapshot)).await?;
                continue;
            }
        }
        for event in batch {
            cursor = event.version;
            send(tx, &WatchLine::Event(event)).await?;
        }
    }
}
