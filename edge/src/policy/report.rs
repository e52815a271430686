//! Reporting to the distributor every `report_interval` (and at once when a prefetch job changes
//! state): request counts, bytes by tier, cache usage, applied policy version, prefetch progress.

use std::collections::BTreeMap;
use std::sync::Arc;

use berth_shared::protocol::EdgeReport;
use tokio::sync::watch;

use super::link::{Link, LinkError};
use super::Policy;
use crate::metrics::{Outcome, RequestKind, Tier};

impl Policy {
    /// The report as of now, without pull counts (those go with [`run`]'s reports only).
    pub fn report(&self) -> EdgeReport {
        let state = &self.state;
        let m = &state.metrics;
        let mut requests = BTreeMap::new();
        for kind in RequestKind::ALL {
            for outcome in Outcome::ALL {
                let n = m.requests.with_label_values(&[kind.as_str(), outcome.as_str()]).get();
                if n > 0 {
                    requests.insert(format!("{kind}/{outcome}"), n);
                }
            }
        }
        let served_bytes =
            Tier::ALL.iter().map(|t| (t.to_string(), m.served_bytes.with_label_values(&[t.as_str()]).get())).collect();
        let upstream_bytes =
            state.live().upstreams.iter().map(|u| m.upstream_bytes.with_label_values(&[&u.name]).get()).sum();
        let index = state.fills.store().index();
        EdgeReport {
            id: state.config.node_id(),
            region: state.config.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            applied_version: self.applied(),
            requests,
            served_bytes,
            upstream_bytes,
            cache_used_bytes: index.usage().0,
            cache_max_bytes: index.max(),
            prefetch: self.prefetch.progress(),
            address: state.config.distributor.as_ref().and_then(|d| d.advertise),
            readiness: Some(state.not_ready_reason().unwrap_or_else(|| "ready".to_owned())),
            fills_in_flight: m.fills_in_flight.get().max(0) as u64,
            uptime_seconds: state.started.elapsed().as_secs(),
            pulls: Default::default(),
            // Only an edge whose members come from the fleet is one of the fleet's members (an
            // edge with a static list would count others that do not count it).
            peer_url: state.fills.cluster().filter(|c| c.from_fleet()).map(|c| c.me()),
        }
    }
}

/// Reports until `shutdown`.
pub async fn run(policy: Arc<Policy>, link: Arc<Link>, mut shutdown: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(link.config.report_interval.get());
    // A batch of pull counts not acknowledged yet: sent again as it is (the distributor counts
    // a batch once, should the first attempt have been recorded after all).
    let mut unacknowledged = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = policy.prefetch.changed() => {}
            _ = shutdown.changed() => return,
        }
        let mut report = policy.report();
        report.pulls = unacknowledged.take().unwrap_or_else(|| policy.state.pulls.take());
        match link.report(&report).await {
            Ok(answer) => {
                let peers = answer.and_then(|a| a.region_peers);
                match (policy.state.fills.cluster(), peers) {
                    (Some(cluster), Some(peers)) if cluster.from_fleet() => cluster.set_fleet_members(&peers),
                    _ => {}
                }
            }
            Err(e) => {
                // Refused (a token bound to another edge, a report the distributor cannot
                // read) will not pass by itself: worth a warning. The batch waits either way;
                // new counts add up meanwhile.
                match e {
                    LinkError::Status(status) if status.is_client_error() => {
                        tracing::warn!(error = %e, "report refused by the distributor")
                    }
                    _ => tracing::debug!(error = %e, "report not delivered"),
                }
                unacknowledged = Some(report.pulls).filter(|p| !p.is_empty());
            }
        }
    }
}
