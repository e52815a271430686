//! Applying policy: an invalidation drops tag mappings or purges a digest from every tier; a
//! prefetch order starts a job. Each event is applied whole before its version is recorded.

use std::sync::Arc;

use berth_shared::protocol::{Action, Invalidation, PolicyEvent, Snapshot};
use berth_shared::{RepositoryName, Tag};

use super::Policy;
use crate::cache::EntryKey;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

impl Policy {
    /// Applies one event from the log (skipping those for other regions) and records its version.
    pub async fn apply_event(self: &Arc<Self>, event: PolicyEvent) {
        if event.version <= self.applied() {
            return;
        }
        if event.action.targets(&self.state.config.region) {
            tracing::info!(version = event.version, "applying policy event");
            let result = match event.action {
                Action::Invalidate(inv) => self.invalidate(&inv).await,
                Action::Prefetch(order) => {
                    self.prefetch.enqueue(order);
                    Ok(())
                }
                Action::Quarantine(order) => self.quarantine(order).await,
                Action::Drain(order) => {
                    self.drain_order(&order);
                    Ok(())
                }
            };
            if let Err(e) = result {
                // A malformed event cannot become valid by waiting: record it and move on.
                tracing::warn!(version = event.version, error = %e, "policy event not applicable");
            }
        }
        self.set_applied(event.version);
    }

    /// Applies a snapshot: the state of a log compacted past this edge's version.
    pub async fn apply_snapshot(self: &Arc<Self>, snapshot: Snapshot) {
        tracing::info!(version = snapshot.version, "applying policy snapshot");
        let state = Arc::clone(&self.state);
        let quarantined = snapshot.quarantined.clone();
        let replaced = crate::cache::blocking(move || state.quarantine.replace(&quarantined)).await;
        if let Err(e) = replaced {
            tracing::error!(error = %e, "cannot keep the quarantine list on disk");
        }
        self.state.metrics.quarantined.set(self.state.quarantine.len() as i64);
        if snapshot.reset_tags {
            // The compacted log may have held invalidations: remembered 404s no longer hold.
            self.state.negative.clear();
            self.state.manifests.invalidate_all_tags();
        }
        for purge in &snapshot.purged {
            if let Err(e) = self.invalidate(purge).await {
                tracing::warn!(error = %e, "purge in snapshot not applicable");
            }
        }
        for order in snapshot.prefetch {
            if Action::Prefetch(order.clone()).targets(&self.state.config.region) {
                self.prefetch.enqueue(order);
            }
        }
        self.set_applied(snapshot.version);
    }

    /// A drain order names one edge: this one takes it, the others record its version only.
    fn drain_order(&self, order: &berth_shared::protocol::DrainOrder) {
        if order.node_id != self.state.config.node_id() {
            return;
        }
        let done = if order.undrain { self.state.drain.undrain() } else { self.state.drain.drain() };
        if let Err(e) = done {
            tracing::error!(error = %e, "cannot keep the drain state in the cache folder");
        }
    }

    /// Applies a quarantine order (kept on disk before its version counts as applied).
    async fn quarantine(&self, order: berth_shared::protocol::QuarantineOrder) -> Result<(), ApplyError> {
        let state = Arc::clone(&self.state);
        let (digest, lifted) = (order.digest, order.lifted);
        let kept = crate::cache::blocking(move || state.quarantine.apply(&order)).await;
        if let Err(e) = kept {
            // Applied in memory: refused from now on; lost on restart until the next snapshot.
            tracing::error!(error = %e, "cannot keep the quarantine list on disk");
        }
        self.state.metrics.quarantined.set(self.state.quarantine.len() as i64);
        tracing::warn!(%digest, lifted, "quarantine applied");
        Ok(())
    }

    /// Drops tag mappings of a repository (one tag, or all) and purges a digest from every tier.
    pub async fn invalidate(&self, inv: &Invalidation) -> Result<(), ApplyError> {
        let invalid = |field, message: String| ApplyError::Invalid { field, message };
        let repository = RepositoryName::parse(&inv.repository).map_err(|e| invalid("repository", e.to_string()))?;
        let tag = inv.tag.as_deref().map(Tag::parse).transpose().map_err(|e| invalid("tag", e.to_string()))?;
        // Something may have been pushed: remembered 404s no longer hold.
        self.state.negative.clear();
        for upstream in self.state.live().upstreams.iter() {
            if inv.upstream.as_deref().is_some_and(|u| u != upstream.name) {
                continue;
            }
            let names = if upstream.config.uses_library_prefix() {
                vec![repository.clone(), repository.with_library_prefix()]
            } else {
                vec![repository.clone()]
            };
            for name in &names {
                match &tag {
                    Some(tag) => self.state.manifests.invalidate_tag(&upstream.name, name, tag),
                    None => self.state.manifests.invalidate_repository(&upstream.name, name),
                }
            }
        }
        if let Some(digest) = inv.digest {
            self.state.memory.remove(&EntryKey::blob(digest));
            let store = self.state.fills.store();
            let blob = store.remove(EntryKey::blob(digest)).await;
            let manifest = self.state.manifests.purge(digest).await;
            tracing::info!(%digest, blob, manifest, "purged");
        }
        Ok(())
    }
}
