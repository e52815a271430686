//! How long an edge takes to rebuild its disk index at start, for many cached blobs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use berth_edge::cache::DiskStore;
use berth_edge::metrics::Metrics;
use berth_shared::Digest;

/// Creates `blobs` small cached files under a temp folder, then times `DiskStore::open` over
/// them `runs` times (the page cache is warm after the first). Returns each run's duration.
pub fn run(blobs: usize, runs: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("cache");
    let base = root.join("blobs/sha256");
    for i in 0..blobs {
        let body = format!("blob {i}");
        let hex = Digest::of(body.as_bytes()).hex();
        let shard = base.join(&hex[..2]);
        std::fs::create_dir_all(&shard)?;
        std::fs::write(shard.join(&hex), body)?;
    }
    let mut times = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let store = DiskStore::open(&root, u64::MAX / 2, Arc::new(Metrics::new("bench")))?;
        times.push(started.elapsed());
        assert_eq!(store.index().usage().2, blobs);
    }
    Ok(times)
}
