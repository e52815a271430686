//! An origin that misbehaves on purpose. For each fault: what the client sees, that nothing was
//! cached, and that the next request fetches again.

use std::sync::Arc;
use std::time::Duration;

use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{Auth, Fault, Origin};
use berth_tests::registry::random_bytes;
use tokio::sync::Notify;

const REPO: &str = "org/app";

/// Origin with one blob, edge in front; returns the blob's edge URL and origin path.
async fn setup(size: usize) -> (Origin, TestEdge, Vec<u8>, String, String) {
    let origin = Origin::start().await;
    let body = random_bytes(size);
    let digest = origin.put_blob(REPO, body.clone());
    let edge = edge::start(&origin.url());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let url = format!("{}{path}", edge.url());
    (origin, edge, body, url, path)
}

/// After a failed fill: nothing on disk, nothing in tmp, and the next GET refetches and succeeds.
async fn assert_nothing_cached_then_refetch(origin: &Origin, edge: &TestEdge, body: &[u8], url: &str, path: &str) {
    let cache = edge.dir.path().join("cache");
    berth_tests::eventually("temp file removed", Duration::from_secs(10), || {
        std::fs::read_dir(cache.join("tmp")).map(|d| d.count() == 0).unwrap_or(false)
    })
    .await;
    let blobs: usize = walk_files(&cache.join("blobs"));
    assert_eq!(blobs, 0, "nothing published");
    let before = origin.count("GET", path);
    let again = client::get(url).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.bytes().as_ref(), body, "the refetch serves the right bytes");
    assert_eq!(origin.count("GET", path), before + 1, "the next request fetched again");
}

fn walk_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries.flatten().map(|e| if e.path().is_dir() { walk_files(&e.path()) } else { 1 }).sum()
}

#[tokio::test]
async fn wrong_bytes_for_the_digest_abort_the_response_and_count_a_mismatch() {
    let (origin, edge, body, url, path) = setup(3 << 20).await;
    origin.fault(&path, Fault::WrongBytes);
    let r = client::get(&url).await;
    assert_eq!(r.status, 200, "headers go out before the bytes can be verified");
    assert!(r.body.is_err(), "the body must be cut short, never complete with wrong bytes");
    assert_eq!(edge.metric("berth_edge_digest_mismatches_total").await, 1.0);
    assert_eq!(edge.metric("berth_edge_fill_failures_total{reason=\"digest_mismatch\"").await, 1.0);
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn wrong_bytes_abort_every_concurrent_reader() {
    let (origin, edge, _body, url, path) = setup(2 << 20).await;
    let gate = Arc::new(Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: true });
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut s = client::open(&url, &[]).await;
        s.read_at_least(1).await.expect("first bytes arrive while the fill runs");
        readers.push(s);
    }
    assert_eq!(origin.holding(&path), 1, "every reader joined while the origin held the rest back");
    gate.notify_one();
    for r in readers {
        assert!(r.finish().await.is_err(), "every reader is aborted");
    }
    assert_eq!(origin.count("GET", &path), 1);
    drop(edge);
}

#[tokio::test]
async fn a_body_cut_short_aborts_the_response_and_caches_nothing() {
    let (origin, edge, body, url, path) = setup(2 << 20).await;
    origin.fault(&path, Fault::CutShort { after: 1 << 20 });
    let r = client::get(&url).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_err(), "truncated upstream body → truncated response");
    assert_eq!(edge.metric("berth_edge_fill_failures_total{reason=\"upstream\"").await, 1.0);
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn a_connection_reset_mid_body_aborts_the_response_and_caches_nothing() {
    let (origin, edge, body, url, path) = setup(2 << 20).await;
    origin.fault(&path, Fault::Reset { after: 512 << 10 });
    let r = client::get(&url).await;
    assert!(r.status == 200 && r.body.is_err(), "reset upstream → aborted response");
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn an_upstream_500_gives_502_and_caches_nothing() {
    let (origin, edge, body, url, path) = setup(64 << 10).await;
    origin.fault(&path, Fault::Status(500));
    let r = client::get(&url).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UNAVAILABLE");
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn an_upstream_404_gives_blob_unknown() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let missing = berth_shared::Digest::of(b"nowhere");
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{missing}", edge.url())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "BLOB_UNKNOWN");
}

/// An edge whose upstream stall and first-byte timeouts are 1 s (the feature under test).
fn impatient_edge(origin: &Origin) -> TestEdge {
    edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].body_stall_timeout = berth_shared::HumanDuration::secs(1);
        c.upstream[0].first_byte_timeout = berth_shared::HumanDuration::secs(1);
    })
}

#[tokio::test]
async fn a_stalled_body_times_out_and_aborts_the_response() {
    let (origin, _, body, _, path) = setup(1 << 20).await;
    let edge = impatient_edge(&origin);
    let url = format!("{}{path}", edge.url());
    origin.fault(&path, Fault::StallBody { after: 100 << 10 });
    let r = client::get(&url).await;
    assert!(r.status == 200 && r.body.is_err(), "a stall past body_stall_timeout aborts");
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn stalled_response_headers_give_504() {
    let (origin, _, body, _, path) = setup(1 << 10).await;
    let edge = impatient_edge(&origin);
    let url = format!("{}{path}", edge.url());
    origin.fault(&path, Fault::StallHeaders);
    let r = client::get(&url).await;
    assert_eq!(r.status, 504);
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn an_unreachable_upstream_gives_502() {
    let closed = berth_tests::tools::RefusingPort::new();
    let url = format!("http://{}", closed.addr);
    let edge = edge::start(&url);
    let d = berth_shared::Digest::of(b"x");
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "UNAVAILABLE");
}

#[tokio::test]
async fn a_redirect_to_a_second_host_is_followed_without_authorization() {
    let origin = Origin::start().await;
    let storage = Origin::start().await;
    origin.set_auth(Auth::Bearer { credentials: None });
    let body = random_bytes(300 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    storage.put_raw(&path, body.clone());
    origin.fault(&path, Fault::Redirect { base: storage.url() });
    let edge = edge::start(&origin.url());
    let r = client::get(&format!("{}{path}", edge.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    let to_origin = origin.log().into_iter().filter(|l| l.path == path).collect::<Vec<_>>();
    assert!(to_origin.iter().any(|l| l.header("Authorization").is_some_and(|a| a.starts_with("Bearer"))));
    let to_storage = storage.log();
    assert_eq!(to_storage.len(), 1, "the redirect was followed once");
    assert_eq!(to_storage[0].header("Authorization"), None, "no credentials to another host");
}

#[tokio::test]
async fn a_token_challenge_is_answered_and_the_token_reused() {
    let origin = Origin::start().await;
    origin.set_auth(Auth::Bearer { credentials: Some(("alice".into(), "s3cret".into())) });
    let blobs: Vec<_> = (0..3).map(|i| origin.put_blob(REPO, vec![i as u8; 1000])).collect();
    let password = berth_tests::secret_file("s3cret");
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].username = Some("alice".into());
        // These tests are about the edge as a client of the upstream: its own clients are not asked.
        c.upstream[0].access = Some(berth_edge::config::AccessMode::Anonymous);
        c.upstream[0].allow_anonymous_with_credentials = true;
        c.upstream[0].password_file = Some(password.to_path_buf());
    });
    for d in &blobs {
        let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(origin.tokens_issued(), 1, "one token for the repository, reused");
    let token_requests: Vec<_> = origin.log().into_iter().filter(|l| l.path == "/token").collect();
    assert!(token_requests[0].query.contains("scope=repository%3Aorg%2Fapp%3Apull"), "{:?}", token_requests[0]);
    assert!(token_requests[0].header("Authorization").is_some_and(|a| a.starts_with("Basic ")));
}

#[tokio::test]
async fn wrong_credentials_at_the_token_endpoint_give_403() {
    let origin = Origin::start().await;
    origin.set_auth(Auth::Bearer { credentials: Some(("alice".into(), "right".into())) });
    let d = origin.put_blob(REPO, vec![1u8; 10]);
    let password = berth_tests::secret_file("wrong");
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].username = Some("alice".into());
        // These tests are about the edge as a client of the upstream: its own clients are not asked.
        c.upstream[0].access = Some(berth_edge::config::AccessMode::Anonymous);
        c.upstream[0].allow_anonymous_with_credentials = true;
        c.upstream[0].password_file = Some(password.to_path_buf());
    });
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");
    assert!(!String::from_utf8_lossy(r.bytes()).contains("wrong"), "the password never appears in a response");
}

#[tokio::test]
async fn a_basic_auth_upstream_gets_the_configured_credentials() {
    let origin = Origin::start().await;
    origin.set_auth(Auth::Basic { username: "bob".into(), password: "pw".into() });
    let d = origin.put_blob(REPO, vec![7u8; 100]);
    let password = berth_tests::secret_file("pw");
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].username = Some("bob".into());
        // These tests are about the edge as a client of the upstream: its own clients are not asked.
        c.upstream[0].access = Some(berth_edge::config::AccessMode::Anonymous);
        c.upstream[0].allow_anonymous_with_credentials = true;
        c.upstream[0].password_file = Some(password.to_path_buf());
    });
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{d}", edge.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().len(), 100);
}

#[tokio::test]
async fn an_empty_body_for_a_non_empty_digest_is_refused_not_a_complete_200() {
    let (origin, edge, body, url, path) = setup(4096).await;
    origin.fault(&path, Fault::Empty);
    let r = client::get(&url).await;
    assert_eq!(r.status, 502, "an empty body does not hash to the digest");
    assert_nothing_cached_then_refetch(&origin, &edge, &body, &url, &path).await;
}

#[tokio::test]
async fn a_challenge_from_a_redirect_target_never_gets_the_credentials() {
    let origin = Origin::start().await;
    let storage = Origin::start().await;
    origin.set_auth(Auth::Basic { username: "carol".into(), password: "pw".into() });
    storage.set_auth(Auth::Bearer { credentials: None });
    let body = random_bytes(1000);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    storage.put_raw(&path, body);
    origin.fault(&path, Fault::Redirect { base: storage.url() });
    let password = berth_tests::secret_file("pw");
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].username = Some("carol".into());
        // These tests are about the edge as a client of the upstream: its own clients are not asked.
        c.upstream[0].access = Some(berth_edge::config::AccessMode::Anonymous);
        c.upstream[0].allow_anonymous_with_credentials = true;
        c.upstream[0].password_file = Some(password.to_path_buf());
    });
    let r = client::get(&format!("{}{path}", edge.url())).await;
    assert_eq!(r.status, 403, "the storage host's 401 is the answer");
    let secret = berth_tests::origin::basic("carol", "pw");
    for l in storage.log() {
        assert_ne!(l.header("Authorization"), Some(secret.as_str()), "credentials reached the redirect target");
    }
    assert_eq!(storage.tokens_issued(), 0, "no token was asked of the redirect target's realm");
}

/// A listener that records every connection made to it.
struct ConnectRecorder {
    listener: std::net::TcpListener,
}

impl ConnectRecorder {
    fn on(ip: &str) -> ConnectRecorder {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind recorder");
        listener.set_nonblocking(true).unwrap();
        ConnectRecorder { listener }
    }

    fn url(&self) -> String {
        format!("http://{}", self.listener.local_addr().unwrap())
    }

    /// Connections made so far (accepted now, so none is missed).
    fn connections(&self) -> usize {
        std::iter::from_fn(|| self.listener.accept().ok()).count()
    }
}

#[tokio::test]
async fn a_redirect_to_an_internal_address_is_refused_without_connecting() {
    let origin = Origin::start().await; // on 127.0.0.1: the upstream's own host is trusted
    let body = random_bytes(1000);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let internal = ConnectRecorder::on("127.0.0.2"); // another host, internal: never to be reached
    origin.fault(&path, Fault::Redirect { base: internal.url() });
    let edge = edge::start(&origin.url());
    let r = client::get(&format!("{}{path}", edge.url())).await;
    assert_eq!(r.status, 502);
    assert!(String::from_utf8_lossy(r.bytes()).contains("allow_private_networks"), "{:?}", r.body);
    assert_eq!(internal.connections(), 0, "no connection was made to the internal address");

    // Allowlisted for the upstream, a redirect to that network is followed.
    let storage = Origin::start_on("127.0.0.2").await;
    storage.put_raw(&path, body.clone());
    let allowed = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.upstream[0].allow_private_networks = vec!["127.0.0.2/32".parse().unwrap()];
    });
    origin.fault(&path, Fault::Redirect { base: storage.url() });
    let r = client::get(&format!("{}{path}", allowed.url())).await;
    assert_eq!(r.bytes().as_ref(), body.as_slice(), "allowlisted: followed");
    assert_eq!(storage.count("GET", &path), 1);
}
