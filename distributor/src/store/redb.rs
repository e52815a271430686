//! The embedded store (redb), the default: the policy log, prefetch jobs and the fleet, surviving restarts.
//! Version numbers are assigned here, inside the write transaction that records the event, so
//! they only move forward, across restarts too.

use std::path::Path;

use berth_shared::protocol::{Action, Invalidation, PolicyEvent};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{json, parse, Bucket, EdgeRecord, Job, Store, StoreError};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const PURGES: TableDefinition<u64, &[u8]> = TableDefinition::new("purges");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const EDGES: TableDefinition<&str, &[u8]> = TableDefinition::new("edges");
/// Digests in quarantine now (digest text → the order), kept in step with the log.
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");
/// Pull analytics: `<region>\0<bucket start, 20 digits>` → the bucket.
const PULLS: TableDefinition<&str, &[u8]> = TableDefinition::new("pulls");
/// Each edge's last pull-count batches (JSON list of ids, newest first).
const BATCHES: TableDefinition<&str, &[u8]> = TableDefinition::new("pull_batches");

const NEXT_VERSION: &str = "next_version";
const COMPACTED_THROUGH: &str = "compacted_through";

macro_rules! db_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_errors!(
    ::redb::DatabaseError,
    ::redb::TransactionError,
    ::redb::TableError,
    ::redb::StorageError,
    ::redb::CommitError,
    std::io::Error
);

/// The embedded store: one redb file.
pub struct RedbStore {
    db: Database,
}

impl RedbStore {
    /// Opens (creating) `<dir>/berth.redb`.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join("berth.redb"))?;
        let w = db.begin_write()?;
        {
            w.open_table(META)?;
            w.open_table(EVENTS)?;
            w.open_table(PURGES)?;
            w.open_table(JOBS)?;
            w.open_table(EDGES)?;
            w.open_table(QUARANTINE)?;
            w.open_table(PULLS)?;
            w.open_table(BATCHES)?;
        }
        w.commit()?;
        Ok(RedbStore { db })
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        durability: redb::Durability,
    ) -> Result<(), StoreError> {
        let mut w = self.db.begin_write()?;
        w.set_durability(durability);
        w.open_table(table)?.insert(key, json(value)?.as_slice())?;
        w.commit()?;
        Ok(())
    }

    /// One record of `table`.
    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(table)?;
        let value = table.get(key)?;
        value.map(|v| parse(v.value())).transpose()
    }

    fn all<T: DeserializeOwned>(&self, table: TableDefinition<&str, &[u8]>) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(table)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            out.push(parse(item?.1.value())?);
        }
        Ok(out)
    }
}

impl Store for RedbStore {
    /// Appends an event with the next version number; a prefetch order's job record is written
    /// in the same transaction.
    fn append(&self, action: Action, now_ms: u64) -> Result<PolicyEvent, StoreError> {
        let w = self.db.begin_write()?;
        let event = {
            let mut meta = w.open_table(META)?;
            let version = meta.get(NEXT_VERSION)?.map_or(1, |v| v.value());
            meta.insert(NEXT_VERSION, version + 1)?;
            let event = PolicyEvent { version, action };
            w.open_table(EVENTS)?.insert(version, json(&event)?.as_slice())?;
            if let Action::Prefetch(order) = &event.action {
                let job = Job { id: order.job.clone(), order: order.clone(), version, created_ms: now_ms };
                w.open_table(JOBS)?.insert(job.id.as_str(), json(&job)?.as_slice())?;
            }
            if let Action::Quarantine(order) = &event.action {
                let mut table = w.open_table(QUARANTINE)?;
                let key = order.digest.to_string();
                if order.lifted {
                    table.remove(key.as_str())?;
                } else {
                    table.insert(key.as_str(), json(order)?.as_slice())?;
                }
            }
            event
        };
        w.commit()?;
        Ok(event)
    }

    /// The digests in quarantine now.
    fn quarantined(&self) -> Result<Vec<berth_shared::protocol::QuarantineOrder>, StoreError> {
        let r = self.db.begin_read()?;
        let table = r.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }

    /// (latest version, version through which the log was compacted).
    fn versions(&self) -> Result<(u64, u64), StoreError> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        let next = meta.get(NEXT_VERSION)?.map_or(1, |v| v.value());
        let compacted = meta.get(COMPACTED_THROUGH)?.map_or(0, |v| v.value());
        Ok((next - 1, compacted))
    }

    /// Events after `since`, oldest first, at most `limit`.
    fn events_since(&self, since: u64, limit: usize) -> Result<Vec<PolicyEvent>, StoreError> {
        let r = self.db.begin_read()?;
        let events = r.open_table(EVENTS)?;
        let mut out = Vec::new();
        for item in events.range(since + 1..)?.take(limit) {
            let (_, v) = item?;
            out.push(parse(v.value())?);
        }
        Ok(out)
    }

    /// Drops events beyond the newest `keep`; purges among them are kept for snapshots.
    /// Returns how many events were dropped.
    fn compact(&self, keep: u64) -> Result<u64, StoreError> {
        let (latest, compacted) = self.versions()?;
        let through = latest.saturating_sub(keep);
        if through <= compacted {
            return Ok(0);
        }
        let w = self.db.begin_write()?;
        let mut dropped = 0;
        {
            let mut events = w.open_table(EVENTS)?;
            let mut purges = w.open_table(PURGES)?;
            let old: Vec<(u64, Vec<u8>)> = events
                .range(..=through)?
                .map(|item| item.map(|(k, v)| (k.value(), v.value().to_vec())))
                .collect::<Result<_, _>>()?;
            for (version, bytes) in old {
                let event: PolicyEvent = parse(&bytes)?;
                if let Action::Invalidate(inv) = &event.action {
                    if inv.digest.is_some() {
                        purges.insert(version, json(inv)?.as_slice())?;
                    }
                }
                events.remove(version)?;
                dropped += 1;
            }
            w.open_table(META)?.insert(COMPACTED_THROUGH, through)?;
        }
        w.commit()?;
        Ok(dropped)
    }

    /// Digest purges that were compacted out of the log.
    fn compacted_purges(&self) -> Result<Vec<Invalidation>, StoreError> {
        let r = self.db.begin_read()?;
        let purges = r.open_table(PURGES)?;
        let mut out = Vec::new();
        for item in purges.iter()? {
            out.push(parse(item?.1.value())?);
        }
        Ok(out)
    }

    fn job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.get(JOBS, id)
    }

    fn jobs(&self) -> Result<Vec<Job>, StoreError> {
        self.all(JOBS)
    }

    /// Records an edge; reports are frequent, so this commit is not forced to disk at once.
    fn put_edge(&self, edge: &EdgeRecord) -> Result<(), StoreError> {
        self.put(EDGES, &edge.id, edge, redb::Durability::Eventual)
    }

    fn edges(&self) -> Result<Vec<EdgeRecord>, StoreError> {
        self.all(EDGES)
    }

    fn claim_batch(&self, edge: &str, batch: u64) -> Result<bool, StoreError> {
        // One writer at a time: the read and the write below are one step.
        let mut w = self.db.begin_write()?;
        w.set_durability(redb::Durability::Eventual);
        let new = {
            let mut table = w.open_table(BATCHES)?;
            let mut recent: Vec<u64> = match table.get(edge)? {
                Some(v) => parse(v.value())?,
                None => Vec::new(),
            };
            let new = !recent.contains(&batch);
            if new {
                recent.insert(0, batch);
                recent.truncate(super::RECENT_BATCHES);
                table.insert(edge, json(&recent)?.as_slice())?;
            }
            new
        };
        w.commit()?;
        Ok(new)
    }

    fn edge(&self, id: &str) -> Result<Option<EdgeRecord>, StoreError> {
        self.get(EDGES, id)
    }

    /// Adds pull buckets to the stored ones (each kept to `names` names per kind) and drops
    /// buckets that start before `drop_before` (Unix ms).
    fn merge_pulls(&self, buckets: &[(String, u64, Bucket)], names: usize, drop_before: u64) -> Result<(), StoreError> {
        let mut w = self.db.begin_write()?;
        w.set_durability(redb::Durability::Eventual);
        {
            let mut t = w.open_table(PULLS)?;
            for (region, start, bucket) in buckets {
                let key = format!("{region}\0{start:020}");
                let mut merged: Bucket = match t.get(key.as_str())? {
                    Some(v) => parse(v.value())?,
                    None => Bucket::default(),
                };
                for (name, n) in &bucket.repositories {
                    *merged.repositories.entry(name.clone()).or_default() += n;
                }
                for (name, n) in &bucket.manifests {
                    *merged.manifests.entry(name.clone()).or_default() += n;
                }
                t.insert(key.as_str(), json(&merged.bounded(names))?.as_slice())?;
            }
            let mut old = Vec::new();
            for item in t.iter()? {
                let (key, _) = item?;
                if pull_key(key.value()).is_some_and(|(_, start)| start < drop_before) {
                    old.push(key.value().to_owned());
                }
            }
            for key in old {
                t.remove(key.as_str())?;
            }
        }
        w.commit()?;
        Ok(())
    }

    /// The stored pull buckets of `region` (or every region) that start at or after `since`.
    fn pulls_since(&self, region: Option<&str>, since: u64) -> Result<Vec<(String, u64, Bucket)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(PULLS)?;
        let mut out = Vec::new();
        let (from, to) = match region {
            Some(r) => (format!("{r}\0{since:020}"), format!("{r}\u{1}")),
            None => (String::new(), "\u{10ffff}".to_owned()),
        };
        for item in t.range(from.as_str()..to.as_str())? {
            let (key, value) = item?;
            let Some((bucket_region, start)) = pull_key(key.value()) else { continue };
            if start >= since && region.is_none_or(|want| want == bucket_region) {
                out.push((bucket_region.to_owned(), start, parse(value.value())?));
            }
        }
        Ok(out)
    }
}

/// `<region>\0<start>` → (region, start).
fn pull_key(key: &str) -> Option<(&str, u64)> {
    let (region, start) = key.split_once('\0')?;
    Some((region, start.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shared::protocol::Invalidation;

    fn inv(repo: &str, digest: bool) -> Action {
        Action::Invalidate(Invalidation {
            id: repo.into(),
            repository: repo.into(),
            tag: None,
            digest: digest.then(|| berth_shared::Digest::of(repo.as_bytes())),
            upstream: None,
            regions: vec![],
        })
    }

    #[test]
    fn should_number_events_forward_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = RedbStore::open(dir.path()).unwrap();
            assert_eq!(store.append(inv("a", false), 0).unwrap().version, 1);
            assert_eq!(store.append(inv("b", false), 0).unwrap().version, 2);
        }
        let store = RedbStore::open(dir.path()).unwrap();
        assert_eq!(store.append(inv("c", false), 0).unwrap().version, 3);
        let since: Vec<u64> = store.events_since(1, 10).unwrap().iter().map(|e| e.version).collect();
        assert_eq!(since, vec![2, 3]);
    }

    #[test]
    fn should_compact_keeping_purges_for_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        store.append(inv("purged", true), 0).unwrap();
        for r in ["a", "b", "c"] {
            store.append(inv(r, false), 0).unwrap();
        }
        assert_eq!(store.compact(2).unwrap(), 2);
        assert_eq!(store.versions().unwrap(), (4, 2));
        assert_eq!(store.events_since(0, 10).unwrap().len(), 2);
        let purges = store.compacted_purges().unwrap();
        assert_eq!(purges.len(), 1);
        assert_eq!(purges[0].repository, "purged");
        assert_eq!(store.append(inv("d", false), 0).unwrap().version, 5, "compaction never reuses versions");
    }

    #[test]
    fn should_claim_each_batch_once_among_the_recent_ones_of_an_edge() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path()).unwrap();
        assert!(store.claim_batch("e", 7).unwrap(), "new");
        assert!(!store.claim_batch("e", 7).unwrap(), "sent again");
        assert!(store.claim_batch("f", 7).unwrap(), "another edge's batch of the same id");
        for b in 100..100 + crate::store::RECENT_BATCHES as u64 {
            assert!(store.claim_batch("e", b).unwrap());
        }
        assert!(store.claim_batch("e", 7).unwrap(), "forgotten once older than the recent ones");
    }
}
