//! The pull API over TLS: HTTP/2 and HTTP/1.1 by ALPN, and a certificate rotated while clients
//! pull (on file change; a bad new pair keeps the old one in service).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_shared::tls::TlsFiles;
use berth_tests::client::{self, TlsClient};
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::Origin;
use berth_tests::pki::{ServerPair, TestCa};
use http::Method;

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// An edge with both listeners, serving `pair` on its TLS one.
fn tls_edge(origin: &Origin, pair: &ServerPair) -> TestEdge {
    let files = TlsFiles::new(&pair.cert, &pair.key);
    edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.listen.https = "127.0.0.1:0".parse().ok();
        c.tls = Some(files);
    })
}

fn https_url(edge: &TestEdge, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", edge.running().https_addr.expect("TLS listener").port())
}

#[tokio::test]
async fn every_pull_route_works_over_http2_and_http1_on_the_tls_listener() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let pair = ca.issue(work.path(), "edge");
    let origin = Origin::start().await;
    let blob = vec![7u8; 300_000];
    let digest = origin.put_blob("team/app", blob.clone());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{MANIFEST_TYPE}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":300000}},"layers":[]}}"#
    );
    let manifest_digest = origin.put_manifest("team/app", Some("v1"), MANIFEST_TYPE, manifest.clone());
    let edge = tls_edge(&origin, &pair);

    let h2 = TlsClient::new(ca.client_config(&[]), true);
    let (r, version) = h2.request(Method::GET, &https_url(&edge, "/v2/"), &[]).await;
    assert_eq!((r.status, version), (200, http::Version::HTTP_2));
    let accept = [("accept", MANIFEST_TYPE)];
    let (r, version) = h2.request(Method::HEAD, &https_url(&edge, "/v2/team/app/manifests/v1"), &accept).await;
    assert_eq!((r.status, version), (200, http::Version::HTTP_2));
    assert_eq!(r.header("docker-content-digest"), Some(manifest_digest.to_string().as_str()));
    let (r, _) = h2.request(Method::GET, &https_url(&edge, "/v2/team/app/manifests/v1"), &accept).await;
    assert_eq!(r.bytes().as_ref(), manifest.as_bytes());
    let (r, _) =
        h2.request(Method::GET, &https_url(&edge, &format!("/v2/team/app/manifests/{manifest_digest}")), &accept).await;
    assert_eq!(r.bytes().as_ref(), manifest.as_bytes());
    let blob_path = format!("/v2/team/app/blobs/{digest}");
    let (r, version) = h2.request(Method::GET, &https_url(&edge, &blob_path), &[]).await;
    assert_eq!((r.status, version), (200, http::Version::HTTP_2));
    assert!(r.bytes().as_ref() == blob.as_slice(), "blob over HTTP/2 is byte-exact");
    let (r, _) = h2.request(Method::GET, &https_url(&edge, &blob_path), &[("range", "bytes=10-19")]).await;
    assert_eq!((r.status, r.bytes().as_ref()), (206, &blob[10..20]));

    let h1 = TlsClient::new(ca.client_config(&[]), false);
    let (r, version) = h1.request(Method::GET, &https_url(&edge, &blob_path), &[]).await;
    assert_eq!((r.status, version), (200, http::Version::HTTP_11));
    assert!(r.bytes().as_ref() == blob.as_slice(), "blob over HTTP/1.1 on TLS is byte-exact");
    assert_eq!(origin.count("GET", "/v2/team/app/blobs/"), 1, "the later pulls were served from the cache");

    let plain = client::get(&format!("{}{blob_path}", edge.url())).await;
    assert_eq!(plain.status, 200, "the plain listener keeps serving beside the TLS one");
}

#[tokio::test]
async fn curl_negotiates_http2_by_alpn_and_an_untrusted_client_is_refused() {
    if !berth_tests::tools::have("curl") {
        return berth_tests::skip("curl_negotiates_http2", "curl is not installed");
    }
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let pair = ca.issue(work.path(), "edge");
    let origin = Origin::start().await;
    let blob = vec![9u8; 70_000];
    let digest = origin.put_blob("library/alpine", blob.clone());
    let edge = tls_edge(&origin, &pair);
    let url = https_url(&edge, &format!("/v2/library/alpine/blobs/{digest}"));
    let out = work.path().join("blob");
    // curl runs on a blocking thread: the origin answers on this test's runtime.
    let curl = |extra: &[&str]| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "20", "-o"]).arg(&out).args(["-w", "%{http_code} %{http_version}"]);
        cmd.args(extra).arg(&url);
        tokio::task::spawn_blocking(move || berth_tests::clients::run(&mut cmd))
    };
    let ca_path = ca.pem.to_string_lossy().into_owned();
    let ran = curl(&["--http2", "--cacert", &ca_path]).await.unwrap();
    assert_eq!(ran.output.trim(), "200 2", "curl --http2: {ran:?}");
    assert!(std::fs::read(&out).unwrap() == blob);
    let ran = curl(&["--http1.1", "--cacert", &ca_path]).await.unwrap();
    assert_eq!(ran.output.trim(), "200 1.1", "curl --http1.1: {ran:?}");
    let ran = curl(&[]).await.unwrap();
    assert!(!ran.status.success(), "a client that does not trust the CA refuses the edge: {ran:?}");
}

/// Writes `pair`'s files over the served ones the way secret managers do (a new file renamed
/// into place).
fn install(pair: &ServerPair, cert: &std::path::Path, key: &std::path::Path) {
    for (from, to) in [(&pair.key, key), (&pair.cert, cert)] {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }
}

#[tokio::test]
async fn a_certificate_rotated_while_clients_pull_fails_no_request_and_a_bad_pair_keeps_the_old_one() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let first = ca.issue(work.path(), "first");
    let second = ca.issue(work.path(), "second");
    let third = ca.issue(work.path(), "third");
    let (cert, key) = (work.path().join("served.crt"), work.path().join("served.key"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let origin = Origin::start().await;
    let blob = vec![3u8; 100_000];
    let digest = origin.put_blob("a/b", blob.clone());
    let edge = tls_edge(&origin, &ServerPair { cert: cert.clone(), key: key.clone(), der: first.der.clone() });
    let addr = edge.running().https_addr.unwrap();
    let url = https_url(&edge, &format!("/v2/a/b/blobs/{digest}"));
    assert_eq!(client::peer_certificate(addr, ca.client_config(&[])).await, first.der);

    // Clients pulling all along: new connections (a handshake each) over HTTP/1.1, and one
    // HTTP/2 connection kept open across the rotations.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(parking_lot::Mutex::new(Vec::new())));
    let mut pullers = Vec::new();
    for i in 0..4 {
        let client = if i == 0 {
            TlsClient::pooled(ca.client_config(&[]), true)
        } else {
            TlsClient::new(ca.client_config(&[]), false)
        };
        let (stop, done, failed, url, blob) = (stop.clone(), done.clone(), failed.clone(), url.clone(), blob.clone());
        pullers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (r, _) = client.request(Method::GET, &url, &[]).await;
                if r.status != 200 || r.body.as_ref().map(|b| b.as_ref() != blob.as_slice()).unwrap_or(true) {
                    failed.lock().push(format!("status {} body {:?}", r.status, r.body.as_ref().map(|b| b.len())));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    let served_now = |n: usize| {
        let done = done.clone();
        async move {
            berth_tests::eventually("pulls go on", Duration::from_secs(20), || done.load(Ordering::SeqCst) >= n).await
        }
    };
    served_now(20).await;

    install(&second, &cert, &key);
    let config = ca.client_config(&[]);
    berth_tests::eventually_async("the second certificate is served", Duration::from_secs(20), || {
        let config = config.clone();
        let want = second.der.clone();
        async move { client::peer_certificate(addr, config).await == want }
    })
    .await;
    served_now(done.load(Ordering::SeqCst) + 20).await;

    // A new certificate with the wrong key: refused, counted, the second pair stays.
    std::fs::copy(&second.key, work.path().join("wrong.key")).unwrap();
    install(&ServerPair { cert: third.cert.clone(), key: work.path().join("wrong.key"), der: vec![] }, &cert, &key);
    let refused = r#"berth_edge_tls_reloads_total{result="refused""#;
    berth_tests::eventually_async("the bad pair is refused", Duration::from_secs(20), || async {
        edge.metric(refused).await >= 1.0
    })
    .await;
    assert_eq!(client::peer_certificate(addr, ca.client_config(&[])).await, second.der, "old pair kept");
    served_now(done.load(Ordering::SeqCst) + 20).await;

    // Fixed by writing the right key: served from then on.
    install(&third, &cert, &key);
    berth_tests::eventually_async("the third certificate is served", Duration::from_secs(20), || {
        let config = config.clone();
        let want = third.der.clone();
        async move { client::peer_certificate(addr, config).await == want }
    })
    .await;
    served_now(done.load(Ordering::SeqCst) + 20).await;
    stop.store(true, Ordering::SeqCst);
    for p in pullers {
        p.await.unwrap();
    }
    assert!(failed.lock().is_empty(), "requests failed during rotation: {:?}", failed.lock());
    assert!(edge.metric(r#"berth_edge_tls_reloads_total{result="loaded""#).await >= 2.0);
}
