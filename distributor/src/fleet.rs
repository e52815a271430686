//! The fleet: every edge that has reported, with its last report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_shared::protocol::{EdgeReport, JobState};
use parking_lot::RwLock;

use crate::store::{EdgeRecord, Store, StoreError};

/// Finished jobs remembered per edge beyond what it reports.
const KEEP_FINISHED: usize = 1000;

/// How long a listing of the whole fleet answers region membership questions (a report from
/// every edge of a large fleet would otherwise read every edge from a shared store).
const SNAPSHOT_FOR: Duration = Duration::from_secs(1);

/// Edges by id, in memory and in the store.
pub struct Fleet {
    store: Arc<dyn Store>,
    edges: RwLock<BTreeMap<String, EdgeRecord>>,
    snapshot: parking_lot::Mutex<Option<(Instant, Arc<Vec<EdgeRecord>>)>>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Fleet {
    pub fn load(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let edges = store.edges()?.into_iter().map(|e| (e.id.clone(), e)).collect();
        Ok(Fleet { store, edges: RwLock::new(edges), snapshot: parking_lot::Mutex::new(None) })
    }

    /// Records a report (the first one registers the edge). A job the edge finished stays
    /// finished even once the edge stops reporting it. Also says whether the report's batch of
    /// pull counts `batch` (`0`: none) is to be counted: an edge sends a batch again when it saw
    /// no answer, and the store claims each batch once (after the record: a record that fails
    /// leaves the batch to the report sent again).
    pub fn record(&self, mut report: EdgeReport, batch: u64) -> Result<(EdgeRecord, bool), StoreError> {
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
        let new_pulls = batch == 0 || self.store.claim_batch(&record.id, batch)?;
        Ok((record, new_pulls))
    }

    /// Every edge: from the store when replicas share it (each edge reports to one of them),
    /// else from memory.
    fn read(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        match self.store.shared() {
            true => self.store.edges(),
            false => Ok(self.edges.read().values().cloned().collect()),
        }
    }

    /// Every edge; this replica's own view when a shared store cannot be read.
    pub fn list(&self) -> Vec<EdgeRecord> {
        self.read().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the fleet from the store: showing this replica's view");
            self.edges.read().values().cloned().collect()
        })
    }

    /// The cluster of `edge` in `region`: the peer URLs of the region's other edges that are
    /// ready and reported within `stale_after` (from a listing at most a second old). `None`
    /// when a shared store cannot be read: this replica's own view lacks the edges that report
    /// elsewhere, and an edge told a short list would fetch what its peers own.
    pub fn region_peers(&self, region: &str, edge: &str, stale_after: Duration) -> Option<Vec<String>> {
        let edges = {
            let mut snapshot = self.snapshot.lock();
            match &*snapshot {
                Some((at, edges)) if at.elapsed() < SNAPSHOT_FOR => Arc::clone(edges),
                _ => {
                    let edges = match self.read() {
                        Ok(edges) => Arc::new(edges),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the fleet: no region members in this answer");
                            return None;
                        }
                    };
                    *snapshot = Some((Instant::now(), Arc::clone(&edges)));
                    edges
                }
            }
        };
        Some(peers_of(&edges, region, edge, now_ms().saturating_sub(stale_after.as_millis() as u64)))
    }
}

/// The peer URLs of `region`'s ready edges other than `edge` seen since `since_ms`, sorted.
fn peers_of(edges: &[EdgeRecord], region: &str, edge: &str, since_ms: u64) -> Vec<String> {
    let mut peers: Vec<String> = edges
        .iter()
        .filter(|e| e.region == region && e.id != edge && e.last_seen_ms >= since_ms)
        .filter(|e| e.report.readiness.as_deref() == Some("ready"))
        .filter_map(|e| e.report.peer_url.clone())
        // A URL that cannot name a member is left out of every answer, not spread to the region.
        .filter(|url| berth_shared::url::is_base_url(url))
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(id: &str, region: &str, seen: u64, readiness: &str, peer_url: Option<&str>) -> EdgeRecord {
        EdgeRecord {
            id: id.into(),
            region: region.into(),
            version: "t".into(),
            first_seen_ms: 0,
            last_seen_ms: seen,
            report: EdgeReport {
                id: id.into(),
                region: region.into(),
                readiness: Some(readiness.into()),
                peer_url: peer_url.map(str::to_owned),
                ..Default::default()
            },
        }
    }

    #[test]
    fn should_list_the_ready_live_cluster_members_of_the_region_but_the_asker() {
        let edges = [
            edge("b", "eu", 100, "ready", Some("http://b:5000")),
            edge("a", "eu", 100, "ready", Some("http://a:5000")),
            edge("me", "eu", 100, "ready", Some("http://me:5000")),
            edge("stale", "eu", 10, "ready", Some("http://stale:5000")),
            edge("drained", "eu", 100, "drained by an operator", Some("http://drained:5000")),
            edge("alone", "eu", 100, "ready", None),
            edge("bad", "eu", 100, "ready", Some("ftp://bad:21")),
            edge("path", "eu", 100, "ready", Some("http://path:5000/v2")),
            edge("far", "us", 100, "ready", Some("http://far:5000")),
        ];
        assert_eq!(peers_of(&edges, "eu", "me", 50), ["http://a:5000", "http://b:5000"]);
    }
}
