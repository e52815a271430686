//! Single-flight fills: one origin fetch per blob, waiters served while it is written, clients
//! that leave or stall do not affect it, ranges on a miss (a range far ahead of the fill by its
//! own request), and restarts keep the cache.

use std::sync::Arc;
use std::time::Duration;

use berth_tests::client;
use berth_tests::edge;
use berth_tests::origin::{Fault, Origin};
use berth_tests::registry::random_bytes;
use tokio::sync::Notify;

const REPO: &str = "team/svc";

#[tokio::test]
async fn concurrent_requests_share_one_fill_and_are_served_while_it_is_written() {
    let origin = Origin::start().await;
    let body = random_bytes(4 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: false });
    let edge = edge::start(&origin.url());
    let url = format!("{}{path}", edge.url());

    // Every client gets bytes while the origin is still holding back the rest of the blob.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut s = client::open(&url, &[]).await;
        assert_eq!(s.status, 200);
        assert_eq!(s.headers.get("content-length").unwrap(), &body.len().to_string());
        s.read_at_least(512 << 10).await.expect("bytes before the fill completes");
        clients.push(s);
    }
    assert_eq!(origin.holding(&path), 1, "every client got bytes while the origin held the rest back");
    gate.notify_one();
    for s in clients {
        assert_eq!(s.finish().await.expect("complete body").as_ref(), body.as_slice());
    }
    assert_eq!(origin.count("GET", &path), 1, "the origin sent the blob once");
    assert_eq!(edge.metric("berth_edge_requests_total{kind=\"blob\",outcome=\"miss\"").await, 1.0);
    assert_eq!(edge.metric("berth_edge_requests_total{kind=\"blob\",outcome=\"coalesced\"").await, 7.0);
    let hit = client::get(&url).await;
    assert_eq!(hit.header("x-berth-cache"), Some("hit"));
    assert_eq!(hit.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", &path), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_does_not_cancel_the_fill() {
    let origin = Origin::start().await;
    let body = random_bytes(3 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: false });
    let edge = edge::start(&origin.url());
    let url = format!("{}{path}", edge.url());

    let mut first = client::open(&url, &[]).await;
    first.read_at_least(1).await.unwrap();
    drop(first); // the client that started the fill goes away
    gate.notify_one();
    edge.published(digest).await;
    let r = client::get(&url).await;
    assert_eq!(r.header("x-berth-cache"), Some("hit"));
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", &path), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_does_not_slow_the_fill_or_other_clients() {
    let origin = Origin::start().await;
    // Larger than the 16 MiB a fill keeps in memory: the slow client reads its first bytes
    // back from the file, the other from memory.
    let body = random_bytes(24 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let edge = edge::start(&origin.url());
    let url = format!("{}{path}", edge.url());

    let mut stalled = client::open(&url, &[]).await; // reads a little, then nothing
    stalled.read_at_least(1).await.unwrap();
    let other = client::get(&url).await;
    assert_eq!(other.bytes().as_ref(), body.as_slice(), "another client gets everything");
    edge.published(digest).await;
    assert_eq!(origin.count("GET", &path), 1);
    assert_eq!(stalled.finish().await.unwrap().as_ref(), body.as_slice(), "the slow client still gets it all");
    assert_eq!(origin.count("GET", &path), 1, "from the fill's file, not a second fetch");
}

#[tokio::test]
async fn a_range_on_a_miss_is_answered_and_the_whole_blob_fetched_once() {
    let origin = Origin::start().await;
    let body = random_bytes(1 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let edge = edge::start(&origin.url());
    let url = format!("{}{path}", edge.url());

    let r = client::request(http::Method::GET, &url, &[("Range", "bytes=1000-1999")]).await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some(format!("bytes 1000-1999/{}", body.len()).as_str()));
    assert_eq!(r.bytes().as_ref(), &body[1000..2000]);
    let origin_requests = origin.log();
    assert!(origin_requests.iter().all(|l| l.header("Range").is_none()), "the fill fetches the whole blob");
    edge.published(digest).await;
    let full = client::get(&url).await;
    assert_eq!(full.header("x-berth-cache"), Some("hit"));
    assert_eq!(full.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", &path), 1);
}

#[tokio::test]
async fn a_restarted_edge_serves_its_cached_blobs_without_the_origin() {
    let origin = Origin::start().await;
    let body = random_bytes(2 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let edge = edge::start(&origin.url());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    assert_eq!(client::get(&format!("{}{path}", edge.url())).await.bytes().len(), body.len());
    edge.published(digest).await;
    let config = edge.running().state.config.clone();
    let dir = edge.stop();
    drop(origin);

    let mut config = config;
    config.listen.http = "127.0.0.1:0".parse().ok();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    let edge = edge::start_with(config, dir);
    let r = client::get(&format!("{}{path}", edge.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-berth-cache"), Some("hit"));
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    let head = client::head(&format!("{}{path}", edge.url())).await;
    assert_eq!(head.header("content-length"), Some(body.len().to_string().as_str()));
}

#[tokio::test]
async fn the_disk_budget_is_kept_by_evicting_the_least_recently_used_blob() {
    let origin = Origin::start().await;
    let blobs: Vec<_> = (0..3u8).map(|i| origin.put_blob(REPO, vec![i; 400 << 10])).collect();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.disk_max = berth_shared::ByteSize::kib(1000);
        c.cache.eviction = berth_edge::cache::index::Eviction::Lru;
    });
    let url = |d: &berth_shared::Digest| format!("{}/v2/{REPO}/blobs/{d}", edge.url());
    for d in &blobs[..2] {
        client::get(&url(d)).await.bytes();
        edge.published(*d).await;
    }
    client::head(&url(&blobs[0])).await; // HEAD does not count as use
    client::get(&url(&blobs[0])).await.bytes(); // blob 0 is now the most recently used
    client::get(&url(&blobs[2])).await.bytes();
    edge.published(blobs[2]).await;

    let store = edge.running().state.fills.store();
    assert!(store.contains(&berth_edge::cache::EntryKey::blob(blobs[1])).is_none(), "LRU blob evicted");
    assert!(store.contains(&berth_edge::cache::EntryKey::blob(blobs[0])).is_some(), "recently used blob kept");
    assert!(store.index().usage().0 <= 1000 << 10, "under the budget");
    assert_eq!(edge.metric("berth_edge_evictions_total").await, 1.0);
    berth_tests::eventually("evicted file deleted", Duration::from_secs(10), || {
        !store.entry_path(&berth_edge::cache::EntryKey::blob(blobs[1])).exists()
    })
    .await;
    let again = client::get(&url(&blobs[1])).await;
    assert_eq!(again.header("x-berth-cache"), Some("miss"), "an evicted blob is fetched again");
}

#[tokio::test]
async fn a_blob_larger_than_the_disk_budget_passes_through_verified_and_is_never_cached() {
    let origin = Origin::start().await;
    let body = random_bytes(1500 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.disk_max = berth_shared::ByteSize::kib(1000);
    });
    let url = format!("{}/v2/{REPO}/blobs/{digest}", edge.url());
    for pull in 1..=2 {
        let r = client::get(&url).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-berth-cache"), Some("bypass"), "pull {pull}: over the budget, pass-through");
        assert_eq!(r.bytes().as_ref(), body.as_slice(), "pull {pull}: every byte, verified");
    }
    // Each pull: the fill's GET (which finds the blob over the budget), then the reader's own.
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/")), 4);
    let store = edge.running().state.fills.store();
    assert!(store.contains(&berth_edge::cache::EntryKey::blob(digest)).is_none(), "nothing cached");
    // Counted once each response is logged, just after its last byte.
    let bypassed = r#"berth_edge_requests_total{kind="blob",outcome="bypass""#;
    berth_tests::eventually_async("both pulls counted as bypass", Duration::from_secs(10), || async {
        edge.metric(bypassed).await == 2.0
    })
    .await;
    assert_eq!(edge.metric(r#"berth_edge_served_bytes_total{tier="upstream""#).await, 2.0 * body.len() as f64);
}

#[tokio::test]
async fn a_failing_request_for_another_repository_does_not_fail_a_joined_pull() {
    let origin = Origin::start().await;
    let body = random_bytes(200 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let bogus = format!("/v2/not/here/blobs/{digest}");
    let gate = Arc::new(Notify::new());
    origin.fault(&bogus, Fault::GateStatus { status: 404, gate: gate.clone() });
    let edge = edge::start(&origin.url());
    let bogus_url = format!("{}{bogus}", edge.url());
    let first = tokio::spawn(async move { client::get(&bogus_url).await });
    origin.wait_holding(&bogus, 1).await;
    let real_url = format!("{}/v2/{REPO}/blobs/{digest}", edge.url());
    let real = tokio::spawn(async move { client::get(&real_url).await });
    berth_tests::eventually("the real pull joined the bogus fill", Duration::from_secs(10), || {
        edge.running().state.fills.readers(&digest) == 2
    })
    .await;
    gate.notify_one();
    assert_eq!(first.await.unwrap().status, 404);
    let real = real.await.unwrap();
    assert_eq!(real.status, 200, "the pull of the real repository is not failed by the bogus one");
    assert_eq!(real.bytes().as_ref(), body.as_slice());
}

/// A lazy puller's range near the end of a cold blob while the fill is held back at 1 MiB.
async fn range_ahead_of_a_held_fill(
    corrupt: bool,
) -> (Origin, String, Vec<u8>, client::Streaming, Arc<Notify>, edge::TestEdge) {
    let origin = Origin::start().await;
    let body = random_bytes(8 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt });
    let edge = edge::start(&origin.url());
    let url = format!("{}{path}", edge.url());
    let mut fill = client::open(&url, &[]).await;
    fill.read_at_least(1).await.unwrap();
    origin.wait_holding(&path, 1).await;
    let first = body.len() - 100_000;
    let range = format!("bytes={first}-{}", body.len() - 1);
    let ranged = client::open(&url, &[("Range", &range)]).await;
    assert_eq!(ranged.status, 206);
    drop(fill);
    (origin, path, body, ranged, gate, edge)
}

#[tokio::test]
async fn a_cold_range_far_ahead_of_the_fill_is_fetched_on_its_own_and_completes_once_the_blob_is_verified() {
    let (origin, path, body, mut ranged, gate, edge) = range_ahead_of_a_held_fill(false).await;
    // Every byte but the last arrives while the fill is still held at 1 MiB.
    ranged.read_at_least(100_000 - 1).await.expect("the range's bytes before the fill reaches them");
    assert_eq!(origin.holding(&path), 1, "the fill is still held");
    let asked: Vec<_> =
        origin.log().into_iter().filter(|l| l.path == path).map(|l| l.header("Range").map(str::to_owned)).collect();
    assert_eq!(
        asked,
        vec![None, Some(format!("bytes={}-{}", body.len() - 100_000, body.len() - 1))],
        "one full fetch, one ranged"
    );
    // The last byte waits for the whole blob to be verified.
    gate.notify_one();
    assert_eq!(ranged.finish().await.expect("complete range").as_ref(), &body[body.len() - 100_000..]);
    assert_eq!(edge.metric("berth_edge_upstream_requests_total{request=\"blob_range\"").await, 1.0);
    let digest = path.rsplit('/').next().unwrap().parse().unwrap();
    edge.published(digest).await;
    assert_eq!(client::get(&format!("{}{path}", edge.url())).await.header("x-berth-cache"), Some("hit"));
}

#[tokio::test]
async fn a_range_fetched_on_its_own_is_cut_short_when_the_fill_proves_the_blob_wrong() {
    // The origin's ranged answer is the true bytes, but the full fetch is corrupt: the digest
    // cannot vouch for anything, so the range must not complete either.
    let (_origin, _path, _body, mut ranged, gate, edge) = range_ahead_of_a_held_fill(true).await;
    ranged.read_at_least(100_000 - 1).await.expect("the range's first bytes");
    gate.notify_one();
    assert!(ranged.finish().await.is_err(), "the last byte never goes out");
    assert_eq!(edge.metric("berth_edge_digest_mismatches_total").await, 1.0);
}

#[tokio::test]
async fn a_cold_range_that_starts_the_fill_gets_its_bytes_from_its_own_request() {
    // Nobody asked for the blob before: the range request starts the fill, and its own ranged
    // request goes out first; the fill's follows once the range is answered (they do not share
    // the origin's first milliseconds), not after the fill's headers.
    let origin = Origin::start().await;
    let body = random_bytes(8 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: false });
    let edge = edge::start(&origin.url());
    let first = 6 << 20;
    let mut ranged = client::open(&format!("{}{path}", edge.url()), &[("Range", &format!("bytes={first}-"))]).await;
    assert_eq!(ranged.status, 206);
    assert_eq!(
        ranged.headers.get("content-range").unwrap(),
        &format!("bytes {first}-{}/{}", body.len() - 1, body.len())
    );
    ranged.read_at_least((2 << 20) - 1).await.expect("the range before the fill reaches it");
    origin.wait_holding(&path, 1).await;
    gate.notify_one();
    assert_eq!(ranged.finish().await.expect("complete range").as_ref(), &body[first..]);
    let full_fetches = origin.log().iter().filter(|l| l.path == path && l.header("Range").is_none()).count();
    assert_eq!(full_fetches, 1, "the fill is the only full fetch");
    let ranged_first: Vec<bool> = origin
        .log()
        .iter()
        .filter(|l| l.path == path && l.method == "GET")
        .map(|l| l.header("Range").is_some())
        .collect();
    assert_eq!(ranged_first[..2], [true, false], "the range's request, then the fill's: {ranged_first:?}");
}

#[tokio::test]
async fn while_the_upstream_stalls_the_client_has_every_byte_the_edge_received() {
    // No byte waits in a buffer for the next ones: a streamed body is written through, so a
    // stalled upstream never holds back what already arrived (an odd amount, so the last piece
    // before the stall is small).
    let origin = Origin::start().await;
    let body = random_bytes(3 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let sent = (1 << 20) + 1234;
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: sent, gate: gate.clone(), corrupt: false });
    let edge = edge::start(&origin.url());
    let mut reading = client::open(&format!("{}{path}", edge.url()), &[]).await;
    let got = tokio::time::timeout(Duration::from_secs(10), reading.read_at_least(sent)).await;
    assert!(matches!(got, Ok(Ok(()))), "every byte sent before the stall arrived: {got:?}");
    gate.notify_one();
    assert_eq!(reading.finish().await.expect("complete body").as_ref(), body.as_slice());
}

/// A blob pulled twice, then a scan of six one-time blobs through a disk of five: where the
/// twice-pulled blob is after the scan, under each eviction policy.
async fn after_a_scan(eviction: berth_edge::cache::index::Eviction) -> bool {
    let origin = Origin::start().await;
    let blobs: Vec<_> = (0..7u8).map(|i| origin.put_blob(REPO, vec![i; 200 << 10])).collect();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.cache.disk_max = berth_shared::ByteSize::kib(1000);
        c.cache.memory_max = berth_shared::ByteSize::kib(0);
        c.cache.eviction = eviction;
    });
    let url = |d: &berth_shared::Digest| format!("{}/v2/{REPO}/blobs/{d}", edge.url());
    client::get(&url(&blobs[0])).await.bytes();
    edge.published(blobs[0]).await;
    assert_eq!(client::get(&url(&blobs[0])).await.header("x-berth-cache"), Some("hit"));
    for d in &blobs[1..] {
        client::get(&url(d)).await.bytes();
        edge.published(*d).await;
    }
    let store = edge.running().state.fills.store();
    assert!(store.index().usage().0 <= 1000 << 10, "under the budget");
    store.contains(&berth_edge::cache::EntryKey::blob(blobs[0])).is_some()
}

#[tokio::test]
async fn s3_fifo_keeps_a_blob_asked_for_again_through_a_scan_that_lru_loses_it_to() {
    use berth_edge::cache::index::Eviction;
    assert!(after_a_scan(Eviction::S3Fifo).await, "S3-FIFO (the default) keeps the blob pulled twice");
    assert!(!after_a_scan(Eviction::Lru).await, "LRU evicts it as the oldest");
    assert_eq!(berth_edge::config::EdgeConfig::default().cache.eviction, Eviction::S3Fifo);
}
