//! The fleet: every edge that has reported, with its last report.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_shared::protocol::{EdgeReport, JobState};
use parking_lot::RwLock;

use crate::store::{EdgeRecord, Store, StoreError};

/// Finished jobs remembered per edge beyond what it reports.
const KEEP_FINISHED: usize = 1000;

/// Edges by id, in memory and in the store.
pub struct Fleet {
    store: Arc<dyn Store>,
    edges: RwLock<BTreeMap<String, EdgeRecord>>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Fleet {
    pub fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let edges = store.edges()?.into_iter().map(|e| (e.id.clone(), e)).collect();
        Ok(Fleet { store, edges: RwLock::new(edges) })
    }

    /// Records a report (the first one registers the edge). A job the edge finished stays
    /// finished even once the edge stops reporting it.
    pub fn record(&self, mut report: EdgeReport) -> Result<EdgeRecord, StoreError> {
        let now = now_ms();
        // On a shared store the edge may have reported to another replica last time.
        let previous = match self.store.shared() {
            true => self.store.edge(&report.id)?,
            false => self.edges.read().get(&report.id).cloned(),
        };
        let first_seen_ms = previous.as_ref().map_or(now, |e| e.first_seen_ms);
        if let Some(previous) = previous {
            let finished = previous.report.prefetch.into_iter().filter(|p| {
                matches!(p.state, JobState::Done | JobState::Failed) && !report.prefetch.iter().any(|n| n.job == p.job)
            });
            let mut kept: Vec<_> = finished.collect();
            kept.truncate(KEEP_FINISHED);
            report.prefetch.extend(kept);
        }
        let record = EdgeRecord {
            id: report.id.clone(),
            region: report.region.clone(),
            version: report.version.clone(),
            first_seen_ms,
            last_seen_ms: now,
            report,
        };
        self.store.put_edge(&record)?;
        self.edges.write().insert(record.id.clone(), record.clone());
        Ok(record)
    }

    /// Every edge: from the store when replicas share it (each edge reports to one of them),
    /// else from memory.
    pub fn list(&self) -> Vec<EdgeRecord> {
        if self.store.shared() {
            match self.store.edges() {
                Ok(edges) => return edges,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the fleet from the store: showing this replica's view")
                }
            }
        }
        self.edges.read().values().cloned().collect()
    }
}
