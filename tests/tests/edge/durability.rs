//! The memory tier, damaged files, the scrub, disk faults, eviction under pressure and restarts
//! with many entries.

use std::path::{Path, PathBuf};
use std::time::Duration;

use berth_edge::cache::EntryKey;
use berth_shared::{ByteSize, Digest};
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::Origin;
use berth_tests::registry::random_bytes;

const REPO: &str = "dur/able";

fn blob_url(edge: &TestEdge, d: &Digest) -> String {
    format!("{}/v2/{REPO}/blobs/{d}", edge.url())
}

fn blob_file(edge: &TestEdge, d: &Digest) -> PathBuf {
    edge.running().state.fills.store().entry_path(&EntryKey::blob(*d))
}

#[tokio::test]
async fn a_small_blob_is_served_from_memory_after_a_disk_hit() {
    let origin = Origin::start().await;
    let body = random_bytes(100 << 10);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start(&origin.url());
    let url = blob_url(&edge, &d);
    client::get(&url).await.bytes();
    edge.published(d).await;
    for _ in 0..3 {
        assert_eq!(client::get(&url).await.bytes().as_ref(), body.as_slice());
    }
    assert_eq!(edge.metric("berth_edge_responses_total{kind=\"blob\",tier=\"upstream\"").await, 1.0);
    assert_eq!(edge.metric("berth_edge_responses_total{kind=\"blob\",tier=\"disk\"").await, 1.0);
    assert_eq!(edge.metric("berth_edge_responses_total{kind=\"blob\",tier=\"memory\"").await, 2.0);
    assert_eq!(edge.metric("berth_edge_served_bytes_total{tier=\"memory\"").await, 2.0 * body.len() as f64);
    let memory_bytes = edge.metric("berth_edge_memory_bytes").await;
    assert!(memory_bytes >= body.len() as f64, "memory bytes {memory_bytes}");
    // Removing the disk copy does not matter to a memory hit.
    std::fs::remove_file(blob_file(&edge, &d)).unwrap();
    assert_eq!(client::get(&url).await.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", "/v2/"), 1);
}

#[tokio::test]
async fn a_large_hot_blob_moves_to_memory_on_its_first_disk_hits_and_is_held_once() {
    // 48 MiB: under the default memory_object_max (128 MiB).
    let origin = Origin::start().await;
    let body = random_bytes(48 << 20);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start(&origin.url());
    let url = blob_url(&edge, &d);
    client::get(&url).await.bytes();
    edge.published(d).await;
    let hits: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::get(&url).await })
        })
        .collect();
    for hit in hits {
        assert_eq!(hit.await.unwrap().bytes().as_ref(), body.as_slice());
    }
    let counted = |tier: &'static str| {
        let edge = &edge;
        async move { edge.metric(&format!("berth_edge_responses_total{{kind=\"blob\",tier=\"{tier}\"")).await }
    };
    berth_tests::eventually_async("the four hits counted", std::time::Duration::from_secs(10), || async {
        counted("disk").await + counted("memory").await == 4.0
    })
    .await;
    // Which of the concurrent first hits read the file depends on timing (one reads it into
    // memory, the others meanwhile read the file: `cache/flight.rs`'s turn, unit-tested there).
    let memory_bytes = edge.metric("berth_edge_memory_bytes").await;
    assert!(memory_bytes >= body.len() as f64 && memory_bytes < 2.0 * body.len() as f64, "held once: {memory_bytes}");
    // The next hit is served from memory, even with the file gone.
    std::fs::remove_file(blob_file(&edge, &d)).unwrap();
    assert_eq!(client::get(&url).await.bytes().as_ref(), body.as_slice());
    berth_tests::eventually_async("the memory hit counted", std::time::Duration::from_secs(10), || async {
        counted("disk").await + counted("memory").await == 5.0
    })
    .await;
    assert_eq!(origin.count("GET", "/v2/"), 1);
}

#[tokio::test]
async fn a_blob_over_memory_object_max_stays_on_disk() {
    let origin = Origin::start().await;
    let d = origin.put_blob(REPO, random_bytes(300 << 10));
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.memory_object_max = ByteSize::kib(256);
    });
    let url = blob_url(&edge, &d);
    client::get(&url).await.bytes();
    edge.published(d).await;
    client::get(&url).await.bytes();
    client::get(&url).await.bytes();
    // A response is counted once written, a moment after the client has read its last byte.
    let disk = "berth_edge_responses_total{kind=\"blob\",tier=\"disk\"";
    berth_tests::eventually_async("both hits counted", std::time::Duration::from_secs(10), || async {
        edge.metric(disk).await >= 2.0
    })
    .await;
    assert_eq!(edge.metric(disk).await, 2.0);
    assert_eq!(edge.metric("berth_edge_responses_total{kind=\"blob\",tier=\"memory\"").await, 0.0);
}

#[tokio::test]
async fn a_truncated_file_is_dropped_at_start_and_refetched() {
    let origin = Origin::start().await;
    let body = random_bytes(1 << 20);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start(&origin.url());
    client::get(&blob_url(&edge, &d)).await.bytes();
    edge.published(d).await;
    let file = blob_file(&edge, &d);
    let edge = {
        let dir = edge.stop();
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.set_len(1000).unwrap();
        let mut config = berth_tests::edge::test_config(&dir.path().join("cache"), &[("docker.io", &origin.url())], "");
        config.cache.scrub_rate = ByteSize(0);
        edge::start_with(config, dir)
    };
    assert_eq!(edge.running().state.fills.store().contains(&EntryKey::blob(d)), None, "dropped at start");
    let r = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(r.header("x-berth-cache"), Some("miss"));
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", "/v2/"), 2);
}

#[tokio::test]
async fn a_bit_flipped_file_is_never_served_after_a_restart() {
    let origin = Origin::start().await;
    let body = random_bytes(1 << 20);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.cache.scrub_rate = ByteSize(0));
    client::get(&blob_url(&edge, &d)).await.bytes();
    edge.published(d).await;
    let file = blob_file(&edge, &d);
    let dir = edge.stop();
    flip_a_bit(&file, 4242);
    let mut config = berth_tests::edge::test_config(&dir.path().join("cache"), &[("docker.io", &origin.url())], "");
    config.cache.scrub_rate = ByteSize(0);
    let edge = edge::start_with(config, dir);
    assert!(edge.running().state.fills.store().contains(&EntryKey::blob(d)).is_some(), "same size: indexed");
    let r = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(r.bytes().as_ref(), body.as_slice(), "the damaged copy is not served");
    assert_eq!(r.header("x-berth-cache"), Some("miss"), "it was dropped and refetched");
    assert_eq!(edge.metric("berth_edge_damaged_entries_total").await, 1.0);
    assert_eq!(origin.count("GET", "/v2/"), 2);
}

fn flip_a_bit(file: &Path, at: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x01;
    f.write_all_at(&b, at).unwrap();
}

/// The README's promise: a verified file changed in place while the edge runs (same size, one bit,
/// no restart, no scrub) is never served, neither from disk nor copied into the memory tier.
#[tokio::test]
async fn a_file_altered_in_place_while_running_is_hashed_again_and_never_served() {
    let origin = Origin::start().await;
    let small = random_bytes(64 << 10); // goes to the memory tier on its first disk hit
    let large = random_bytes(3 << 20); // over memory_object_max: served from disk only
    let (ds, dl) = (origin.put_blob(REPO, small.clone()), origin.put_blob(REPO, large.clone()));
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.scrub_rate = ByteSize(0);
        c.cache.memory_object_max = ByteSize::mib(1);
    });
    for (d, body) in [(ds, &small), (dl, &large)] {
        assert_eq!(client::get(&blob_url(&edge, &d)).await.bytes().as_ref(), body.as_slice());
        edge.published(d).await;
        flip_a_bit(&blob_file(&edge, &d), 1000);
        let r = client::get(&blob_url(&edge, &d)).await;
        assert_eq!(r.bytes().as_ref(), body.as_slice(), "the altered copy is not served");
        assert_eq!(r.header("x-berth-cache"), Some("miss"), "it was dropped and refetched");
        edge.published(d).await;
        for _ in 0..2 {
            let r = client::get(&blob_url(&edge, &d)).await;
            assert_eq!(r.bytes().as_ref(), body.as_slice(), "the refetched copy is served");
            assert_eq!(r.header("x-berth-cache"), Some("hit"));
        }
    }
    assert_eq!(edge.metric("berth_edge_changed_entries_total").await, 2.0);
    assert_eq!(edge.metric("berth_edge_damaged_entries_total").await, 2.0);
    assert_eq!(
        edge.metric("berth_edge_responses_total{kind=\"blob\",tier=\"memory\"").await,
        1.0,
        "only the refetched small blob"
    );
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{ds}")), 2);
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{dl}")), 2);
}

#[tokio::test]
async fn the_scrub_finds_a_file_altered_while_running_and_it_is_refetched() {
    let origin = Origin::start().await;
    let body = random_bytes(512 << 10);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.scrub_rate = ByteSize::gib(1);
        c.cache.memory_max = ByteSize(0);
    });
    client::get(&blob_url(&edge, &d)).await.bytes();
    edge.published(d).await;
    flip_a_bit(&blob_file(&edge, &d), 100);
    let store = edge.running().state.fills.store().clone();
    berth_tests::eventually("the scrub drops the altered file", Duration::from_secs(30), || {
        store.contains(&EntryKey::blob(d)).is_none()
    })
    .await;
    assert_eq!(edge.metric("berth_edge_scrub_failures_total").await, 1.0);
    let r = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(r.header("x-berth-cache"), Some("miss"));
}

#[tokio::test]
async fn a_cache_folder_removed_while_running_means_refetches_never_a_short_200() {
    let origin = Origin::start().await;
    let body = random_bytes(2 << 20);
    let d = origin.put_blob(REPO, body.clone());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.cache.memory_max = ByteSize(0));
    client::get(&blob_url(&edge, &d)).await.bytes();
    edge.published(d).await;
    std::fs::remove_dir_all(edge.dir.path().join("cache")).unwrap();
    for _ in 0..3 {
        let r = client::get(&blob_url(&edge, &d)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.bytes().as_ref(), body.as_slice(), "complete and correct, or not a 200");
    }
    edge.published(d).await;
    assert!(blob_file(&edge, &d).exists(), "the folder was recreated and the blob cached again");
    let ready = client::get(&format!("{}/readyz", edge.admin_url())).await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
}

#[tokio::test]
async fn the_disk_stays_under_its_budget_and_keeps_the_hot_set_under_pressure() {
    let origin = Origin::start().await;
    let hot: Vec<Digest> = (0..2).map(|_| origin.put_blob(REPO, random_bytes(100 << 10))).collect();
    let cold: Vec<Digest> = (0..30).map(|_| origin.put_blob(REPO, random_bytes(100 << 10))).collect();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.disk_max = ByteSize::kib(1024);
    });
    for d in &cold {
        for h in &hot {
            client::get(&blob_url(&edge, h)).await.bytes();
        }
        client::get(&blob_url(&edge, d)).await.bytes();
        let cache = edge.dir.path().join("cache");
        assert!(disk_usage(&cache.join("blobs")) <= 1024 << 10, "over the budget");
    }
    for h in &hot {
        edge.published(*h).await;
        assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{h}")), 1, "the hot set stayed cached");
    }
    assert!(edge.metric("berth_edge_evictions_total").await >= 20.0);
}

fn disk_usage(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| if e.path().is_dir() { disk_usage(&e.path()) } else { e.metadata().map_or(0, |m| m.len()) })
        .sum()
}

#[tokio::test]
async fn a_restart_with_ten_thousand_cached_entries_indexes_and_serves_them() {
    let origin = Origin::start().await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = dir.path().join("cache/blobs/sha256");
    let mut digests = Vec::new();
    for i in 0..10_000u32 {
        let body = format!("blob number {i}");
        let d = Digest::of(body.as_bytes());
        let hex = d.hex();
        std::fs::create_dir_all(blobs.join(&hex[..2])).unwrap();
        std::fs::write(blobs.join(&hex[..2]).join(&hex), body).unwrap();
        digests.push(d);
    }
    let config = berth_tests::edge::test_config(&dir.path().join("cache"), &[("docker.io", &origin.url())], "");
    let edge = edge::start_with(config, dir);
    assert_eq!(edge.running().state.fills.store().index().usage().2, 10_000);
    for (i, d) in digests.iter().enumerate().step_by(997) {
        let r = client::get(&blob_url(&edge, d)).await;
        assert_eq!(r.header("x-berth-cache"), Some("hit"));
        assert_eq!(r.bytes().as_ref(), format!("blob number {i}").as_bytes());
    }
    assert_eq!(origin.log().len(), 0);
}

/// A small real filesystem (tmpfs) for the cache, unmounted on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(dir: &Path, size: &str) -> Option<SmallFs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallFs(dir.to_owned()))
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_mid_fill_still_serves_verified_bytes_and_reports_degraded() {
    let origin = Origin::start().await;
    let body = random_bytes(12 << 20);
    let d = origin.put_blob(REPO, body.clone());
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let Some(_fs) = SmallFs::mount(&cache, "8m") else {
        return berth_tests::skip(
            "a_full_disk_mid_fill_still_serves_verified_bytes_and_reports_degraded",
            "mounting a tmpfs needs root",
        );
    };
    let mut config = berth_tests::edge::test_config(&cache, &[("docker.io", &origin.url())], "");
    config.cache.disk_max = ByteSize::gib(1); // the budget believes there is room; the disk has not
    let edge = edge::start_with(config, dir);

    let r = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), body.as_slice(), "pass-through: verified bytes despite ENOSPC");
    let tmp = cache.join("tmp");
    berth_tests::eventually("temp file removed", Duration::from_secs(10), || {
        std::fs::read_dir(&tmp).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    assert_eq!(edge.metric("berth_edge_disk_degraded").await, 1.0);
    assert_eq!(edge.metric("berth_edge_fill_failures_total{reason=\"disk\"").await, 1.0);
    let ready = client::get(&format!("{}/readyz", edge.admin_url())).await;
    assert_eq!(ready.status, 503, "{:?}", ready.body);
    assert!(String::from_utf8_lossy(ready.bytes()).contains("degraded"));
    // Still up, still serving: the next pull bypasses the disk.
    let again = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(again.bytes().as_ref(), body.as_slice());
    assert_eq!(again.header("x-berth-cache"), Some("bypass"));
    assert_eq!(client::get(&format!("{}/v2/", edge.url())).await.status, 200);
}

#[tokio::test]
async fn a_fill_that_loses_its_disk_never_mixes_two_fetches_in_one_response() {
    let origin = Origin::start().await;
    let body = random_bytes(12 << 20);
    let d = origin.put_blob(REPO, body.clone());
    // The first fetch sends other bytes, and the disk fills up before they can be found out.
    origin.fault(&format!("/v2/{REPO}/blobs/{d}"), berth_tests::origin::Fault::WrongBytes);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let Some(_fs) = SmallFs::mount(&cache, "8m") else {
        return berth_tests::skip(
            "a_fill_that_loses_its_disk_never_mixes_two_fetches_in_one_response",
            "mounting a tmpfs needs root",
        );
    };
    let mut config = berth_tests::edge::test_config(&cache, &[("docker.io", &origin.url())], "");
    config.cache.disk_max = ByteSize::gib(1);
    let edge = edge::start_with(config, dir);
    let r = client::get(&blob_url(&edge, &d)).await;
    assert!(r.body.is_err(), "the bytes already sent were not the second fetch's: the response is cut short");
    let again = client::get(&blob_url(&edge, &d)).await;
    assert_eq!(again.bytes().as_ref(), body.as_slice(), "the next request gets the right bytes");
}

/// A 48 MiB blob served from disk; the client reads the first part, a byte near the end is
/// changed in the file while the response is under way (after the open-time stamp check), then
/// the client reads on. Returns the body (or why it was cut) and the edge.
async fn change_while_serving(verify_on_serve: bool) -> (Result<bytes::Bytes, String>, TestEdge, Vec<u8>) {
    let origin = Origin::start().await;
    let body = random_bytes(48 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.verify_on_serve = verify_on_serve;
        c.cache.scrub_rate = ByteSize::kib(0);
        // Served from its file each time, not moved to memory on the first hit.
        c.cache.memory_object_max = ByteSize::mib(4);
    });
    let url = format!("{}/v2/{REPO}/blobs/{digest}", edge.url());
    client::get(&url).await.bytes();
    edge.published(digest).await;
    let file = edge.running().state.fills.store().entry_path(&EntryKey::blob(digest));
    let mut reading = client::open(&url, &[]).await;
    assert_eq!(reading.headers.get("x-berth-cache").and_then(|v| v.to_str().ok()), Some("hit"));
    reading.read_at_least(1 << 20).await.unwrap();
    // The edge is held back by the client: the end of the file is not read yet.
    flip_a_bit(&file, (47 << 20) + 12345);
    (reading.finish().await, edge, body)
}

#[tokio::test]
async fn verify_on_serve_cuts_a_response_whose_file_changed_under_it_and_drops_the_entry() {
    let (served, edge, _) = change_while_serving(true).await;
    assert!(served.is_err(), "the response is cut before its last byte");
    assert!(edge.metric("berth_edge_damaged_entries_total").await >= 1.0, "the entry is dropped");
}

#[tokio::test]
async fn without_verify_on_serve_a_change_during_a_response_goes_through() {
    // What the README says verify_on_serve is for: the stamp is checked at open, not per byte.
    let (served, _edge, body) = change_while_serving(false).await;
    let served = served.expect("complete");
    assert_eq!(served.len(), body.len());
    assert!(served.as_ref() != body.as_slice(), "the changed byte was served");
}
