//! The distributor's persistent state behind one interface: the policy log (versions assigned
//! inside the write that records an event, so they only move forward), prefetch jobs, the
//! fleet and pull analytics. `redb.rs` is the embedded implementation (the default); the record
//! types live below it in `records.rs`, so the modules that use the store (`fleet.rs`,
//! `jobs.rs`, `analytics.rs`) import it and it imports none of them.

pub mod postgres;
mod records;
mod redb;

use berth_shared::protocol::{Action, Invalidation, PolicyEvent, QuarantineOrder};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use postgres::PgStore;
pub use records::{Bucket, EdgeRecord, Job};
pub use redb::RedbStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Db(String),
    #[error("store: corrupt record: {0}")]
    Corrupt(#[from] serde_json::Error),
}

/// What the distributor keeps.
/// Batches of pull counts remembered per edge, to count each once.
pub const RECENT_BATCHES: usize = 8;

pub trait Store: Send + Sync {
    /// Appends an event with the next version number; a prefetch order's job record and a
    /// quarantine's entry are written in the same transaction.
    fn append(&self, action: Action, now_ms: u64) -> Result<PolicyEvent, StoreError>;
    /// The digests in quarantine now.
    fn quarantined(&self) -> Result<Vec<QuarantineOrder>, StoreError>;
    /// (latest version, version through which the log was compacted).
    fn versions(&self) -> Result<(u64, u64), StoreError>;
    /// Events after `since`, oldest first, at most `limit`.
    fn events_since(&self, since: u64, limit: usize) -> Result<Vec<PolicyEvent>, StoreError>;
    /// Drops events beyond the newest `keep`; digest purges among them are kept for snapshots.
    /// Returns how many events were dropped.
    fn compact(&self, keep: u64) -> Result<u64, StoreError>;
    /// Digest purges that were compacted out of the log.
    fn compacted_purges(&self) -> Result<Vec<Invalidation>, StoreError>;
    fn job(&self, id: &str) -> Result<Option<Job>, StoreError>;
    fn jobs(&self) -> Result<Vec<Job>, StoreError>;
    /// Records an edge (reports are frequent: this write need not be forced to disk at once).
    fn put_edge(&self, edge: &EdgeRecord) -> Result<(), StoreError>;
    fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError>;
    /// One edge's record.
    fn edge(&self, id: &str) -> Result<Option<EdgeRecord>, StoreError>;
    /// Marks `edge`'s batch of pull counts `batch` as counted: `false` if it was already (by
    /// this replica or another; an edge sends a batch again when it saw no answer). The last
    /// [`RECENT_BATCHES`] batches of each edge are remembered.
    fn claim_batch(&self, edge: &str, batch: u64) -> Result<bool, StoreError>;
    /// Whether other processes (replicas) write to this store too: then the fleet is read from
    /// it, not from one replica's memory.
    fn shared(&self) -> bool {
        false
    }
    /// Adds pull buckets to the stored ones (each kept to `names` names per kind) and drops
    /// buckets that start before `drop_before` (Unix ms).
    fn merge_pulls(&self, buckets: &[(String, u64, Bucket)], names: usize, drop_before: u64) -> Result<(), StoreError>;
    /// The stored pull buckets of `region` (or every region) that start at or after `since`.
    fn pulls_since(&self, region: Option<&str>, since: u64) -> Result<Vec<(String, u64, Bucket)>, StoreError>;
}

/// A record as both stores keep it: JSON bytes.
fn json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    Ok(serde_json::to_vec(value)?)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    Ok(serde_json::from_slice(bytes)?)
}
