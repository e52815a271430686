//! Appending to the log (one version at a time, persisted before anyone hears of it), reading it
//! back, compacting it, and the snapshot that edges behind the compacted log start from.

use std::sync::Arc;

use berth_shared::protocol::{Action, PolicyEvent, Snapshot};
use tokio::sync::{broadcast, Mutex};

use crate::store::{Store, StoreError};

/// Prefetch orders carried in a snapshot (the newest): an edge behind the log warms what was
/// ordered recently, not the whole history.
const SNAPSHOT_JOBS: usize = 1000;

/// Live subscribers hear of events through this many buffered slots; a slower one re-reads the
/// store.
const BROADCAST_CAPACITY: usize = 1024;

pub struct PolicyLog {
    store: Arc<dyn Store>,
    tx: broadcast::Sender<PolicyEvent>,
    keep: u64,
    /// Serialises appends and catch-ups, so events are broadcast in version order; holds the
    /// newest version told to watchers.
    told: Mutex<u64>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(StoreError::Db(e.to_string())))
}

impl PolicyLog {
    pub fn new(store: Arc<dyn Store>, keep: u64) -> Result<Arc<Self>, StoreError> {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        let (latest, _) = store.versions()?;
        Ok(Arc::new(PolicyLog { store, tx, keep, told: Mutex::new(latest) }))
    }

    /// Records an action as the next event, then tells every watcher (first, any event another
    /// replica appended before it).
    pub async fn append(&self, action: Action) -> Result<PolicyEvent, StoreError> {
        let mut told = self.told.lock().await;
        let store = Arc::clone(&self.store);
        let keep = self.keep;
        let appended = Arc::clone(&store);
        let event = blocking(move || appended.append(action, crate::fleet::now_ms())).await?;
        self.tell_through(&mut told, event.version).await?;
        // Compaction is housekeeping: the event is committed and announced whatever happens here.
        if let Err(e) = blocking(move || store.compact(keep)).await {
            tracing::warn!(error = %e, "policy log compaction failed");
        }
        Ok(event)
    }

    /// Tells watchers every event up to the newest in the store (appended through another
    /// replica).
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let mut told = self.told.lock().await;
        let store = Arc::clone(&self.store);
        let (latest, _) = blocking(move || store.versions()).await?;
        self.tell_through(&mut told, latest).await
    }

    /// Broadcasts the events after `*told` through `version`, in order.
    async fn tell_through(&self, told: &mut u64, version: u64) -> Result<(), StoreError> {
        while *told < version {
            let (store, since) = (Arc::clone(&self.store), *told);
            let events = blocking(move || store.events_since(since, 1000)).await?;
            let Some(last) = events.last().map(|e| e.version) else {
                // Compacted away meanwhile: watchers behind re-read from a snapshot.
                *told = version;
                break;
            };
            for event in events.into_iter().filter(|e| e.version <= version) {
                let _ = self.tx.send(event);
            }
            *told = last.min(version).max(*told + 1);
        }
        Ok(())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<PolicyEvent> {
        self.tx.subscribe()
    }

    /// (latest version, compacted-through version).
    pub async fn versions(&self) -> Result<(u64, u64), StoreError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.versions()).await
    }

    /// Up to `limit` events after `since`.
    pub async fn since(&self, since: u64, limit: usize) -> Result<Vec<PolicyEvent>, StoreError> {
        let store = Arc::clone(&self.store);
        blocking(move || store.events_since(since, limit)).await
    }

    /// The policy as of the compacted-through version: the prefetch orders and digest purges
    /// whose events are gone, and a reset of every tag mapping (tag invalidations are gone too).
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let store = Arc::clone(&self.store);
        blocking(move || {
            let (_, compacted) = store.versions()?;
            let mut jobs: Vec<_> = store.jobs()?.into_iter().filter(|j| j.version <= compacted).collect();
            jobs.sort_by_key(|j| std::cmp::Reverse(j.version));
            jobs.truncate(SNAPSHOT_JOBS);
            let prefetch = jobs.into_iter().rev().map(|j| j.order).collect();
            let purged = store.compacted_purges()?;
            let quarantined = store.quarantined()?;
            Ok(Snapshot { version: compacted, prefetch, purged, reset_tags: true, quarantined })
        })
        .await
    }
}
