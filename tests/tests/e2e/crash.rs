//! `kill -9` of the real binary at many moments of its fills: after every restart the temp
//! folder is empty, every cached file hashes to its name, and every blob is served correctly.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use berth_shared::Digest;
use berth_tests::client;
use berth_tests::edge::EdgeProcess;
use berth_tests::origin::{Fault, Origin};
use berth_tests::registry::random_bytes;
use sha2::{Digest as _, Sha256};
use tokio::sync::Notify;

const REPO: &str = "crash/test";

/// Every file under `blobs/` hashes to its name; returns how many there are.
fn assert_cache_consistent(cache: &Path) -> usize {
    let mut count = 0;
    let Ok(shards) = std::fs::read_dir(cache.join("blobs/sha256")) else { return 0 };
    for shard in shards.flatten() {
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let bytes = std::fs::read(file.path()).unwrap();
            let name = file.file_name().to_string_lossy().into_owned();
            assert_eq!(hex::encode(Sha256::digest(&bytes)), name, "{} holds other bytes", file.path().display());
            count += 1;
        }
    }
    count
}

fn temp_files(cache: &Path) -> Vec<u64> {
    std::fs::read_dir(cache.join("tmp"))
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).collect())
        .unwrap_or_default()
}

fn write_config(work: &Path, origin: &str) -> std::path::PathBuf {
    let path = work.join("edge.toml");
    std::fs::write(
        &path,
        format!(
            "[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\nscrub_rate = \"0\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{origin}\"\ndefault = true\n",
            work.join("cache").display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Whether distinct temp files have reached each offset (largest offsets matched first).
fn reached(lens: &[u64], offsets: &[usize]) -> bool {
    let mut lens = lens.to_vec();
    let mut offsets = offsets.to_vec();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.iter().all(|offset| match lens.iter().position(|l| *l >= *offset as u64) {
        Some(i) => {
            lens.remove(i);
            true
        }
        None => false,
    })
}

/// Whether the cache holds a published file for `d`.
fn published(cache: &Path, d: &Digest) -> bool {
    let hex = d.hex();
    cache.join("blobs/sha256").join(&hex[..2]).join(&hex).exists()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_fills_never_leaves_a_partial_or_unverified_entry() {
    let origin = Origin::start().await;
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &origin.url());
    let cache = work.path().join("cache");
    let mut all: Vec<(Digest, Vec<u8>)> = Vec::new();

    for round in 0..6usize {
        let mut edge = EdgeProcess::start(&config, &work.path().join(format!("round-{round}.log")));
        assert!(temp_files(&cache).is_empty(), "round {round}: temp files left after a restart");
        assert_cache_consistent(&cache);

        // This round's own blobs: two held part-way at different offsets, one left to finish.
        let blobs: Vec<(Digest, Vec<u8>)> = (0..3)
            .map(|i| {
                let body = random_bytes((1 + (round + i) % 3) << 20);
                (origin.put_blob(REPO, body.clone()), body)
            })
            .collect();
        let gate = Arc::new(Notify::new());
        let offsets: Vec<usize> = (0..2).map(|i| 1 + ((round * 7 + i * 5) * 61_440) % (blobs[i].1.len() - 1)).collect();
        for (i, after) in offsets.iter().enumerate() {
            let path = format!("/v2/{REPO}/blobs/{}", blobs[i].0);
            origin.fault(&path, Fault::Gate { after: *after, gate: gate.clone(), corrupt: false });
        }
        let pulls: Vec<_> = blobs
            .iter()
            .map(|(d, _)| {
                let url = format!("{}/v2/{REPO}/blobs/{d}", edge.url());
                tokio::spawn(async move { client::get(&url).await })
            })
            .collect();
        // Kill while both held fills are mid-write at their offsets; in odd rounds, also only
        // after the third blob was published, so a publication and two fills coexist.
        let paths: Vec<String> = (0..2).map(|i| format!("/v2/{REPO}/blobs/{}", blobs[i].0)).collect();
        berth_tests::eventually("both fills written up to their held offsets", Duration::from_secs(20), || {
            paths.iter().all(|p| origin.holding(p) == 1)
                && reached(&temp_files(&cache), &offsets)
                && (round % 2 == 0 || published(&cache, &blobs[2].0))
        })
        .await;
        let at_kill = temp_files(&cache);
        edge.kill();
        for p in pulls {
            p.abort();
        }
        origin.clear_faults();
        for (i, after) in offsets.iter().enumerate() {
            assert!(!published(&cache, &blobs[i].0), "round {round}: held blob {i} was killed mid-fill");
            let len = blobs[i].1.len() as u64;
            assert!(
                at_kill.iter().any(|l| *l >= *after as u64 && *l < len),
                "round {round}: a temp file stopped part-way (offset {after} of {len}): {at_kill:?}"
            );
        }
        all.extend(blobs);
    }

    let edge = EdgeProcess::start(&config, &work.path().join("final.log"));
    assert!(temp_files(&cache).is_empty());
    assert_cache_consistent(&cache);
    for (d, body) in &all {
        let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
        assert_eq!(r.bytes().as_ref(), body.as_slice(), "{d} served correctly after the crashes");
    }
}
