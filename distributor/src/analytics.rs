//! Pull analytics: the pull counts edges report (their top names per report interval), summed
//! per region into one-minute buckets, kept in the store for `[analytics] keep` (7 days by
//! default). Buckets fill in memory and are written every [`FLUSH_EVERY`] and at shutdown; a
//! query reads both. Each bucket keeps at most [`BUCKET_NAMES`] names of each kind (the most
//! pulled): the long tail of a busy region is not kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth_shared::protocol::{PullCount, Pulls};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::store::{Bucket, Store, StoreError};

pub const BUCKET_MS: u64 = 60_000;
pub const BUCKET_NAMES: usize = 1000;
pub const FLUSH_EVERY: Duration = Duration::from_secs(10);

impl Bucket {
    fn add(&mut self, other: &Bucket) {
        for (name, n) in &other.repositories {
            *self.repositories.entry(name.clone()).or_default() += n;
        }
        for (name, n) in &other.manifests {
            *self.manifests.entry(name.clone()).or_default() += n;
        }
    }

    fn add_pulls(&mut self, pulls: &Pulls) {
        for p in &pulls.repositories {
            *self.repositories.entry(p.name.clone()).or_default() += p.count;
        }
        for p in &pulls.manifests {
            *self.manifests.entry(p.name.clone()).or_default() += p.count;
        }
    }

    /// Keeps the most pulled names of each kind.
    pub fn bounded(mut self, names: usize) -> Bucket {
        self.repositories = top_map(std::mem::take(&mut self.repositories), names);
        self.manifests = top_map(std::mem::take(&mut self.manifests), names);
        self
    }
}

fn top_map(map: BTreeMap<String, u64>, names: usize) -> BTreeMap<String, u64> {
    if map.len() <= names {
        return map;
    }
    top(&map, names).into_iter().map(|p| (p.name, p.count)).collect()
}

/// The `limit` largest counts, the most pulled first (ties by name).
pub fn top(map: &BTreeMap<String, u64>, limit: usize) -> Vec<PullCount> {
    let mut all: Vec<PullCount> = map.iter().map(|(name, &count)| PullCount { name: name.clone(), count }).collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    all.truncate(limit);
    all
}

/// What `GET /api/v1/analytics/pulls` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopPulls {
    /// The region asked for; none: every region.
    pub region: Option<String>,
    /// The start of the first bucket counted (Unix ms).
    pub since_ms: u64,
    pub repositories: Vec<PullCount>,
    pub manifests: Vec<PullCount>,
}

/// Buckets being filled, and the store they go to.
pub struct Analytics {
    store: Arc<dyn Store>,
    pending: Mutex<BTreeMap<(String, u64), Bucket>>,
    keep_ms: u64,
}

impl Analytics {
    pub fn new(store: Arc<dyn Store>, keep: Duration) -> Self {
        Analytics { store, pending: Mutex::default(), keep_ms: keep.as_millis() as u64 }
    }

    /// Adds an edge's report of pulls, received at `now_ms`.
    pub fn record(&self, region: &str, pulls: &Pulls, now_ms: u64) {
        if pulls.is_empty() {
            return;
        }
        let start = now_ms - now_ms % BUCKET_MS;
        let mut pending = self.pending.lock();
        let bucket = pending.entry((region.to_owned(), start)).or_default();
        bucket.add_pulls(pulls);
        if bucket.repositories.len().max(bucket.manifests.len()) > 2 * BUCKET_NAMES {
            *bucket = std::mem::take(bucket).bounded(BUCKET_NAMES);
        }
    }

    /// Writes the pending buckets (merged with what the store has for them) and drops buckets
    /// older than `keep`.
    pub fn flush(&self, now_ms: u64) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut *self.pending.lock());
        let buckets: Vec<_> = pending.into_iter().map(|((r, t), b)| (r, t, b)).collect();
        let kept = self.store.merge_pulls(&buckets, BUCKET_NAMES, now_ms.saturating_sub(self.keep_ms));
        if kept.is_err() {
            // Not lost: back in memory for the next attempt (bounded, and only while kept).
            let mut p = self.pending.lock();
            for (region, start, bucket) in buckets {
                if start + self.keep_ms >= now_ms {
                    let merged = p.entry((region, start)).or_default();
                    merged.add(&bucket);
                    *merged = std::mem::take(merged).bounded(BUCKET_NAMES);
                }
            }
        }
        kept
    }

    /// The most pulled names of `region` (or every region) since `since_ms`.
    pub fn top(&self, region: Option<&str>, since_ms: u64, limit: usize) -> Result<TopPulls, StoreError> {
        let since = since_ms - since_ms % BUCKET_MS;
        let mut sum = Bucket::default();
        for (_, _, bucket) in self.store.pulls_since(region, since)? {
            sum.add(&bucket);
        }
        for ((r, start), bucket) in self.pending.lock().iter() {
            if *start >= since && region.is_none_or(|want| want == r) {
                sum.add(bucket);
            }
        }
        Ok(TopPulls {
            region: region.map(str::to_owned),
            since_ms: since,
            repositories: top(&sum.repositories, limit),
            manifests: top(&sum.manifests, limit),
        })
    }

    /// The regions that pulled `repository` (with its registry: `docker.io/library/nginx`)
    /// since `since_ms`.
    pub fn regions_pulling(&self, repository: &str, since_ms: u64) -> Result<Vec<String>, StoreError> {
        let since = since_ms - since_ms % BUCKET_MS;
        let mut regions = std::collections::BTreeSet::new();
        for (region, _, bucket) in self.store.pulls_since(None, since)? {
            if bucket.repositories.get(repository).is_some_and(|n| *n > 0) {
                regions.insert(region);
            }
        }
        for ((region, start), bucket) in self.pending.lock().iter() {
            if *start >= since && bucket.repositories.contains_key(repository) {
                regions.insert(region.clone());
            }
        }
        Ok(regions.into_iter().collect())
    }
}

/// Flushes every [`FLUSH_EVERY`] until `closing`, then once more.
pub async fn run(analytics: Arc<Analytics>, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.tick().await;
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = closing.wait_for(|c| *c) => true,
        };
        let a = Arc::clone(&analytics);
        let flushed = tokio::task::spawn_blocking(move || a.flush(crate::fleet::now_ms())).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "pull analytics not written; kept in memory");
        }
        if last {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn pulls(repos: &[(&str, u64)]) -> Pulls {
        Pulls {
            repositories: repos.iter().map(|(n, c)| PullCount { name: (*n).into(), count: *c }).collect(),
            manifests: repos.iter().map(|(n, c)| PullCount { name: format!("{n}:latest"), count: *c }).collect(),
            batch: 1,
        }
    }

    #[test]
    fn should_sum_per_region_across_flushes_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let day = Duration::from_secs(86_400);
        let t = 1_000 * BUCKET_MS;
        {
            let a = Analytics::new(Arc::new(RedbStore::open(dir.path()).unwrap()), day);
            a.record("eu", &pulls(&[("r/app", 3), ("r/db", 1)]), t);
            a.flush(t).unwrap();
            a.record("eu", &pulls(&[("r/db", 5)]), t + 10);
            a.record("us", &pulls(&[("r/app", 7)]), t + BUCKET_MS);
            let eu = a.top(Some("eu"), t, 10).unwrap();
            assert_eq!(eu.repositories[0], PullCount { name: "r/db".into(), count: 6 }, "stored + pending");
            a.flush(t + BUCKET_MS).unwrap();
        }
        let a = Analytics::new(Arc::new(RedbStore::open(dir.path()).unwrap()), day);
        let all = a.top(None, t, 1).unwrap();
        assert_eq!(all.repositories, vec![PullCount { name: "r/app".into(), count: 10 }]);
        assert_eq!(all.manifests, vec![PullCount { name: "r/app:latest".into(), count: 10 }]);
        let later = a.top(Some("eu"), t + BUCKET_MS, 10).unwrap();
        assert!(later.repositories.is_empty(), "eu pulled nothing in the later minute");
        assert_eq!(a.regions_pulling("r/app", t).unwrap(), ["eu", "us"]);
        assert_eq!(a.regions_pulling("r/db", t).unwrap(), ["eu"]);
        assert_eq!(a.regions_pulling("r/app", t + BUCKET_MS).unwrap(), ["us"]);
    }

    #[test]
    fn should_drop_buckets_older_than_keep_and_bound_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = Analytics::new(Arc::new(RedbStore::open(dir.path()).unwrap()), Duration::from_secs(3600));
        a.record("eu", &pulls(&[("old", 1)]), 0);
        a.flush(0).unwrap();
        a.record("eu", &pulls(&[("new", 1)]), 2 * 3_600_000);
        a.flush(2 * 3_600_000).unwrap();
        let names: Vec<_> = a.top(Some("eu"), 0, 10).unwrap().repositories.into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["new"]);
        let big: Bucket = Bucket { repositories: (0..5).map(|i| (format!("r{i}"), i)).collect(), ..Default::default() };
        assert_eq!(big.bounded(2).repositories.keys().collect::<Vec<_>>(), ["r3", "r4"]);
    }
}
