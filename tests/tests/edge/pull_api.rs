//! The pull API's surface: headers, HEAD, ranges, bad input, writes, upstream selection, the
//! TLS-on-plain-port guard and the admin endpoints.

use std::time::Duration;

use berth_tests::client;
use berth_tests::edge;
use berth_tests::origin::Origin;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn the_base_endpoint_answers_with_the_api_version() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let r = client::get(&format!("{}/v2/", edge.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-distribution-api-version"), Some("registry/2.0"));
    assert_eq!(origin.log().len(), 0, "answered locally");
}

#[tokio::test]
async fn a_blob_carries_its_identity_headers_and_head_is_answered_from_the_index() {
    let origin = Origin::start().await;
    let body = vec![42u8; 5000];
    let digest = origin.put_blob("a/b", body.clone());
    let edge = edge::start(&origin.url());
    let url = format!("{}/v2/a/b/blobs/{digest}", edge.url());
    let r = client::get(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(digest.to_string().as_str()));
    assert_eq!(r.header("content-length"), Some("5000"));
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("etag"), Some(format!("\"{digest}\"").as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    let before = origin.log().len();
    let h = client::head(&url).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("5000"));
    assert_eq!(h.header("docker-content-digest"), Some(digest.to_string().as_str()));
    assert_eq!(h.bytes().len(), 0);
    assert_eq!(origin.log().len(), before, "HEAD of a cached blob does not go upstream");
}

#[tokio::test]
async fn head_of_an_uncached_blob_asks_the_upstream_without_filling() {
    let origin = Origin::start().await;
    let digest = origin.put_blob("a/b", vec![1u8; 777]);
    let edge = edge::start(&origin.url());
    let h = client::head(&format!("{}/v2/a/b/blobs/{digest}", edge.url())).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.header("content-length"), Some("777"));
    assert_eq!(origin.count("HEAD", "/v2/a/b/blobs/"), 1);
    assert_eq!(origin.count("GET", "/v2/a/b/blobs/"), 0);
}

#[tokio::test]
async fn single_ranges_are_served_and_unsatisfiable_ones_refused() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let digest = origin.put_blob("r/x", body.clone());
    let edge = edge::start(&origin.url());
    let url = format!("{}/v2/r/x/blobs/{digest}", edge.url());
    client::get(&url).await.bytes();
    let range = |h: &'static str| {
        let url = url.clone();
        async move { client::request(Method::GET, &url, &[("Range", h)]).await }
    };

    let r = range("bytes=0-9").await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 0-9/10000")));
    assert_eq!(r.bytes().as_ref(), &body[..10]);
    let r = range("bytes=-100").await;
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 9900-9999/10000")));
    assert_eq!(r.bytes().as_ref(), &body[9900..]);
    let r = range("bytes=9990-").await;
    assert_eq!(r.bytes().as_ref(), &body[9990..]);
    let r = range("bytes=9999-20000").await;
    assert_eq!((r.status, r.bytes().len()), (206, 1));
    let r = range("bytes=10000-").await;
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */10000")));
    let r = range("bytes=abc").await;
    assert_eq!(r.status, 416, "a malformed byte range is refused");
    let r = range("bytes=0-1,5-6").await;
    assert_eq!((r.status, r.bytes().len()), (200, 10_000), "multiple ranges: the whole blob");
    let r = range("items=0-1").await;
    assert_eq!(r.status, 200, "another range unit is ignored");
}

#[tokio::test]
async fn bad_names_and_digests_get_400_before_any_upstream_access() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let good = berth_shared::Digest::of(b"x");
    let cases = [
        (format!("/v2/Upper/Case/blobs/{good}"), "NAME_INVALID"),
        (format!("/v2/a/../b/blobs/{good}"), "NAME_INVALID"),
        (format!("/v2/a/%2e%2e/b/blobs/{good}"), "NAME_INVALID"),
        (format!("/v2/a/%2fetc/blobs/{good}"), "NAME_INVALID"),
        ("/v2/a/b/blobs/sha256:1234".to_owned(), "DIGEST_INVALID"),
        (format!("/v2/a/b/blobs/sha384:{}", "a".repeat(96)), "DIGEST_INVALID"),
        ("/v2/a/b/blobs/latest".to_owned(), "DIGEST_INVALID"),
        ("/v2/a/b/manifests/sha256:zz".to_owned(), "DIGEST_INVALID"),
        ("/v2/a/b/manifests/-tag".to_owned(), "TAG_INVALID"),
    ];
    for (path, code) in cases {
        let r = client::get(&format!("{}{path}", edge.url())).await;
        assert_eq!(r.status, 400, "{path}");
        assert_eq!(r.error_code(), code, "{path}");
    }
    assert_eq!(origin.log().len(), 0, "no upstream access for bad input");
    let blobs = std::fs::read_dir(edge.dir.path().join("cache/blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 0, "no disk access for bad input");
}

#[tokio::test]
async fn writes_get_405() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    for (method, path) in [
        (Method::PUT, "/v2/a/b/manifests/v1"),
        (Method::POST, "/v2/a/b/blobs/uploads/"),
        (Method::PATCH, "/v2/a/b/blobs/uploads/123"),
        (Method::DELETE, "/v2/a/b/manifests/v1"),
    ] {
        let r = client::request(method.clone(), &format!("{}{path}", edge.url()), &[]).await;
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.error_code(), "UNSUPPORTED");
        assert_eq!(r.header("allow"), Some("GET, HEAD"));
    }
    assert_eq!(origin.log().len(), 0);
}

#[tokio::test]
async fn the_upstream_is_picked_by_ns_then_path_prefix_then_default() {
    let hub = Origin::start().await;
    let ghcr = Origin::start().await;
    // One blob per case: blobs are cached by digest, so a reused one would be a hit whatever
    // upstream the request was routed to.
    let by_ns = ghcr.put_blob("org/app", b"ghcr by ns".to_vec());
    let by_prefix = ghcr.put_blob("org/app", b"ghcr by prefix".to_vec());
    let by_default = hub.put_blob("library/nginx", b"hub by default".to_vec());
    let by_hub_ns = hub.put_blob("library/nginx", b"hub by ns".to_vec());
    let edge = edge::start_custom(&[("docker.io", &hub.url()), ("ghcr.io", &ghcr.url())], "", |_| {});
    let cases = [
        (format!("/v2/org/app/blobs/{by_ns}?ns=ghcr.io"), &ghcr, format!("/v2/org/app/blobs/{by_ns}"), "ghcr by ns"),
        (
            format!("/v2/ghcr.io/org/app/blobs/{by_prefix}"),
            &ghcr,
            format!("/v2/org/app/blobs/{by_prefix}"),
            "ghcr by prefix",
        ),
        (
            format!("/v2/nginx/blobs/{by_default}"),
            &hub,
            format!("/v2/library/nginx/blobs/{by_default}"),
            "hub by default",
        ),
        (
            format!("/v2/nginx/blobs/{by_hub_ns}?ns=docker.io"),
            &hub,
            format!("/v2/library/nginx/blobs/{by_hub_ns}"),
            "hub by ns",
        ),
    ];
    for (request, origin, upstream_path, body) in cases {
        let r = client::get(&format!("{}{request}", edge.url())).await;
        assert_eq!(r.bytes().as_ref(), body.as_bytes(), "{request}");
        assert_eq!(r.header("x-berth-cache"), Some("miss"), "{request}");
        assert_eq!(origin.count("GET", &upstream_path), 1, "{request} went to {upstream_path}");
    }
    assert_eq!((hub.log().len(), ghcr.log().len()), (2, 2), "no request reached the other upstream");
}

#[tokio::test]
async fn an_ns_naming_no_configured_upstream_gets_404_and_no_connection() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let d = berth_shared::Digest::of(b"x");
    let r = client::get(&format!("{}/v2/a/b/blobs/{d}?ns=evil.example.com", edge.url())).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.error_code(), "NAME_UNKNOWN");
    assert_eq!(origin.log().len(), 0);
}

/// A real TLS ClientHello, as docker/podman/skopeo send first to an "insecure" registry.
const CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x00, 0x2f, 0x01, 0x00, 0x00, 0x2b, 0x03, 0x03, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x5a,
    0x5a, 0x5a, 0x5a, 0x5a, 0x5a, 0x00, 0x00, 0x02, 0x13, 0x01, 0x01, 0x00, 0x00, 0x00,
];

#[tokio::test]
async fn a_tls_handshake_on_the_plain_port_is_refused_at_once() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let mut socket = tokio::net::TcpStream::connect(edge.running().http_addr.unwrap()).await.unwrap();
    socket.write_all(CLIENT_HELLO).await.unwrap();
    let mut buf = Vec::new();
    // The edge must close the connection on its own; a peer that waits for an idle timeout
    // would hang here far longer than this bound.
    let closed = tokio::time::timeout(Duration::from_secs(3), socket.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection was left open");
    assert!(!buf.starts_with(&[0x16]), "no TLS handshake answer");
}

#[tokio::test]
async fn the_admin_listener_serves_health_readiness_and_metrics() {
    let origin = Origin::start().await;
    let d = origin.put_blob("m/n", vec![9u8; 1234]);
    let edge = edge::start(&origin.url());
    client::get(&format!("{}/v2/m/n/blobs/{d}", edge.url())).await.bytes();
    client::get(&format!("{}/v2/m/n/blobs/{d}", edge.url())).await.bytes();
    assert_eq!(client::get(&format!("{}/healthz", edge.admin_url())).await.status, 200);
    let ready = client::get(&format!("{}/readyz", edge.admin_url())).await;
    assert_eq!((ready.status, ready.bytes().as_ref()), (200, b"ready\n".as_ref()));
    let m = client::get(&format!("{}/metrics", edge.admin_url())).await;
    let text = String::from_utf8_lossy(m.bytes()).to_string();
    for series in [
        "berth_edge_requests_total{kind=\"blob\",outcome=\"miss\"",
        "berth_edge_requests_total{kind=\"blob\",outcome=\"hit\"",
        "berth_edge_served_bytes_total{tier=\"disk\"",
        "berth_edge_served_bytes_total{tier=\"upstream\"",
        "berth_edge_upstream_bytes_total",
        "berth_edge_cache_bytes{state=\"used\"",
        "berth_edge_evictions_total",
        "berth_edge_digest_mismatches_total",
        "berth_edge_fills_in_flight",
    ] {
        assert!(text.contains(series), "{series} missing from /metrics");
    }
    assert_eq!(edge.metric("berth_edge_served_bytes_total{tier=\"disk\"").await, 1234.0);
    assert_eq!(edge.metric("berth_edge_upstream_bytes_total").await, 1234.0);
    assert_eq!(edge.metric("berth_edge_cache_bytes{state=\"used\"").await, 1234.0);
    assert_eq!(edge.metric("berth_edge_cache_entries").await, 1.0);
    assert_eq!(edge.metric("berth_edge_cache_max_bytes").await, (1u64 << 30) as f64);
    let blob_requests = text
        .lines()
        .find(|l| {
            l.starts_with("berth_edge_upstream_requests_total{")
                && l.contains("request=\"blob\"")
                && l.contains("upstream=\"docker.io\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(blob_requests, Some(1.0), "one blob request upstream: {text}");
    for line in text.lines().filter(|l| l.starts_with("berth_edge_")) {
        assert!(line.contains("region=\"test\""), "every series carries the region: {line}");
    }
    assert_eq!(client::get(&format!("{}/nope", edge.admin_url())).await.status, 404);
}

#[tokio::test]
async fn readyz_fails_when_the_cache_folder_is_gone() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    std::fs::remove_dir_all(edge.dir.path().join("cache")).unwrap();
    let r = client::get(&format!("{}/readyz", edge.admin_url())).await;
    assert_eq!(r.status, 503);
    let body = String::from_utf8_lossy(r.bytes()).to_string();
    assert!(body.starts_with("not ready: ") && body.contains("cache"), "the reason is given: {body}");
}

#[tokio::test]
async fn sha512_digests_are_verified_and_cached_like_sha256_and_other_algorithms_get_400() {
    let origin = Origin::start().await;
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let digest = origin.put_blob_sha512("a/b", body.clone());
    assert!(digest.to_string().starts_with("sha512:") && digest.to_string().len() == 135);
    let edge = edge::start(&origin.url());
    let url = format!("{}/v2/a/b/blobs/{digest}", edge.url());
    let r = client::get(&url).await;
    assert_eq!((r.status, r.header("x-berth-cache")), (200, Some("miss")));
    assert!(r.bytes().as_ref() == body.as_slice());
    assert_eq!(r.header("docker-content-digest"), Some(digest.to_string().as_str()));
    edge.published(digest).await;
    let path = edge.running().state.fills.store().entry_path(&berth_edge::cache::EntryKey::blob(digest));
    assert!(path.to_string_lossy().contains("/blobs/sha512/"), "{}", path.display());

    // Kept across a restart (the index is rebuilt from the sha512 folder).
    let mut config = edge.running().state.config.clone();
    let dir = edge.stop();
    config.listen.http = "127.0.0.1:0".parse().ok();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    let edge = edge::start_with(config, dir);
    let r = client::get(&format!("{}/v2/a/b/blobs/{digest}", edge.url())).await;
    assert_eq!((r.status, r.header("x-berth-cache")), (200, Some("hit")));
    assert!(r.bytes().as_ref() == body.as_slice());

    // Wrong bytes for a sha512 digest are refused like for sha256.
    let other = origin.put_blob_sha512("a/b", vec![1u8; 1000]);
    origin.fault(&format!("/v2/a/b/blobs/{other}"), berth_tests::origin::Fault::WrongBytes);
    let r = client::get(&format!("{}/v2/a/b/blobs/{other}", edge.url())).await;
    assert!(r.body.is_err() || r.status == 502, "wrong bytes never arrive complete: {}", r.status);

    for bad in
        [format!("md5:{}", "a".repeat(32)), format!("sha384:{}", "a".repeat(96)), format!("sha512:{}", "a".repeat(64))]
    {
        let r = client::get(&format!("{}/v2/a/b/blobs/{bad}", edge.url())).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"), "{bad}");
    }
}
