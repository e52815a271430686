//! Upstream 404s remembered for `negative_ttl` per upstream: a client (or a broken deploy)
//! asking again and again for a manifest or blob that does not exist costs the upstream one
//! request per `negative_ttl`, not one per ask.

use std::time::{Duration, Instant};

use berth_shared::RepositoryName;

/// (upstream index, repository, `blob:<digest>` or `manifest:<reference>`).
pub type NegativeKey = (usize, RepositoryName, String);

pub struct NegativeCache {
    entries: moka::sync::Cache<NegativeKey, Instant>,
}

impl NegativeCache {
    /// `longest`: the longest `negative_ttl` of any upstream (entries live at most that long).
    pub fn new(longest: Duration) -> Self {
        let ttl = longest.max(Duration::from_millis(1));
        NegativeCache { entries: moka::sync::Cache::builder().max_capacity(100_000).time_to_live(ttl).build() }
    }

    /// Whether the upstream answered 404 for `key` less than `ttl` ago.
    pub fn is_missing(&self, key: &NegativeKey, ttl: Duration) -> bool {
        !ttl.is_zero() && self.entries.get(key).is_some_and(|at| at.elapsed() < ttl)
    }

    pub fn remember(&self, key: NegativeKey, ttl: Duration) {
        if !ttl.is_zero() {
            self.entries.insert(key, Instant::now());
        }
    }

    /// Forgets every answer (after an invalidation: something may have been pushed).
    pub fn clear(&self) {
        self.entries.invalidate_all();
    }
}
