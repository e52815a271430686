//! The records the store keeps, below every module that uses them: the fleet's edges, prefetch
//! jobs, and pull-analytics buckets. (The policy events themselves are `berth_shared`'s.)

use std::collections::BTreeMap;

use berth_shared::protocol::{EdgeReport, PrefetchOrder};
use serde::{Deserialize, Serialize};

/// An edge as the distributor knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeRecord {
    pub id: String,
    pub region: String,
    /// The edge's software version.
    pub version: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub report: EdgeReport,
}

/// A prefetch order as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub order: PrefetchOrder,
    /// The policy version of its event.
    pub version: u64,
    pub created_ms: u64,
}

/// One region's pulls in one minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub repositories: BTreeMap<String, u64>,
    pub manifests: BTreeMap<String, u64>,
}
