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

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_fills_never_leaves_a_partial_or_unverified_entry() {
    let origin = Origin::start().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (1..=6)
        .map(|mib| {
            let body = random_bytes(mib << 20);
            (origin.put_blob(REPO, body.clone()), body)
        })
        .collect();
    let work = tempfile::tempdir().unwrap();
    let config = write_config(work.path(), &origin.url());
    let cache = work.path().join("cache");

    for round in 0..9usize {
        let mut edge = EdgeProcess::start(&config, &work.path().join(format!("round-{round}.log")));
        assert!(temp_files(&cache).is_empty(), "round {round}: temp files left after a restart");
        assert_cache_consistent(&cache);

        // Hold some fills part-way, at a different point each round.
        let gate = Arc::new(Notify::new());
        for (i, (d, body)) in blobs.iter().enumerate() {
            if (i + round) % 3 == 0 {
                let after = ((round * 333) << 10) % body.len();
                origin
                    .fault(&format!("/v2/{REPO}/blobs/{d}"), Fault::Gate { after, gate: gate.clone(), corrupt: false });
            }
        }
        let pulls: Vec<_> = blobs
            .iter()
            .map(|(d, _)| {
                let url = format!("{}/v2/{REPO}/blobs/{d}", edge.url());
                tokio::spawn(async move { client::get(&url).await })
            })
            .collect();
        // Kill at different moments: at once, while a fill is mid-write, or after some publish.
        match round % 3 {
            0 => {}
            1 => {
                berth_tests::eventually("a fill mid-write", Duration::from_secs(20), || {
                    temp_files(&cache).iter().any(|len| *len > 0)
                })
                .await
            }
            _ => {
                berth_tests::eventually("a fill published", Duration::from_secs(20), || {
                    assert_cache_consistent(&cache) > 0
                })
                .await
            }
        }
        edge.kill();
        for p in pulls {
            p.abort();
        }
        origin.clear_faults();
    }

    let edge = EdgeProcess::start(&config, &work.path().join("final.log"));
    assert!(temp_files(&cache).is_empty());
    assert_cache_consistent(&cache);
    for (d, body) in &blobs {
        let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
        assert_eq!(r.bytes().as_ref(), body.as_slice(), "{d} served correctly after the crashes");
    }
}
