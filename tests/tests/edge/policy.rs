//! Policy on an in-process edge: the local admin prefetch and purge, and a snapshot for an edge
//! that fell behind a compacted log.

use std::time::Duration;

use berth_shared::manifest::OCI_MANIFEST;
use berth_shared::Digest;
use berth_tests::client;
use berth_tests::edge;
use berth_tests::fleet::{ADMIN_TOKEN, EDGE_TOKEN};
use berth_tests::origin::Origin;
use http::Method;

fn image(origin: &Origin, repo: &str, tag: &str) -> (Digest, Vec<Digest>) {
    image_of(origin, repo, tag, 7)
}

/// An image whose one layer is 50,000 bytes of `fill`.
fn image_of(origin: &Origin, repo: &str, tag: &str, fill: u8) -> (Digest, Vec<Digest>) {
    let config = origin.put_blob(repo, br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    let layer = origin.put_blob(repo, vec![fill; 50_000]);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":50000}}]}}"#
    );
    (origin.put_manifest(repo, Some(tag), OCI_MANIFEST, manifest), vec![config, layer])
}

/// The `[distributor]` table of an edge joined to `url`, its token in `token`.
fn link(url: String, report_interval: &str, token: &std::path::Path) -> berth_edge::config::DistributorLink {
    berth_edge::config::DistributorLink {
        url,
        token_file: Some(token.to_owned()),
        report_interval: report_interval.parse().unwrap(),
        startup_sync_timeout: berth_shared::HumanDuration::secs(5),
        ..Default::default()
    }
}

async fn admin_post(edge: &edge::TestEdge, path: &str, body: &str) -> client::Response {
    client::send(
        Method::POST,
        &format!("{}{path}", edge.admin_url()),
        &[("Content-Type", "application/json")],
        body.to_owned(),
    )
    .await
}

#[tokio::test]
async fn the_admin_port_prefetches_and_purges_for_an_edge_without_a_distributor() {
    let origin = Origin::start().await;
    let (_, blobs) = image(&origin, "team/app", "v1");
    let edge = edge::start(&origin.url());
    let r = admin_post(&edge, "/api/v1/prefetch", r#"{"images":["docker.io/team/app:v1"]}"#).await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let mut state = String::new();
    for _ in 0..1000 {
        let p = client::get(&format!("{}/api/v1/prefetch/{id}", edge.admin_url())).await.json();
        state = p["state"].as_str().unwrap_or_default().to_owned();
        if state == "done" {
            assert_eq!(p["blobs_done"], 2);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "done");
    for b in &blobs {
        let r = client::get(&format!("{}/v2/team/app/blobs/{b}", edge.url())).await;
        assert_eq!(r.header("x-berth-cache"), Some("hit"), "prefetched");
    }
    let r =
        admin_post(&edge, "/api/v1/purge", &format!(r#"{{"repository":"team/app","digest":"{}"}}"#, blobs[1])).await;
    assert_eq!(r.status, 200);
    let r = client::get(&format!("{}/v2/team/app/blobs/{}", edge.url(), blobs[1])).await;
    assert_eq!(r.header("x-berth-cache"), Some("miss"), "purged from memory and disk");

    let bad = admin_post(&edge, "/api/v1/prefetch", r#"{"images":["Bad Ref"]}"#).await;
    assert_eq!(bad.status, 400);
    assert!(bad.json()["error"]["message"].as_str().unwrap().starts_with("images[0]"));
    let bad = admin_post(&edge, "/api/v1/purge", r#"{"repo":"x"}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(client::get(&format!("{}/api/v1/prefetch/nope", edge.admin_url())).await.status, 404);
}

#[tokio::test]
async fn an_unknown_image_fails_a_local_prefetch_with_a_clear_error() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let id = admin_post(&edge, "/api/v1/prefetch", r#"{"images":["docker.io/no/such:v1"]}"#).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..1000 {
        let p = client::get(&format!("{}/api/v1/prefetch/{id}", edge.admin_url())).await.json();
        if p["state"] == "failed" {
            assert!(p["errors"][0].as_str().unwrap().contains("MANIFEST_UNKNOWN"), "{p}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the job did not fail");
}

#[tokio::test]
async fn an_edge_behind_a_compacted_log_gets_a_snapshot_with_the_purges_and_quarantines() {
    let work = tempfile::tempdir().unwrap();
    let control = berth_tests::fleet::InProcessDistributor::start(work.path(), "[log]\nkeep_events = 2\n");
    let (distributor, edge_token) = (&control.distributor, &control.edge_token);
    let origin = Origin::start().await;
    let blob = origin.put_blob("team/app", vec![3u8; 10_000]);
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.distributor = Some(link(distributor.url(), "100ms", edge_token));
    });
    let url = format!("{}/v2/team/app/blobs/{blob}", edge.url());
    client::get(&url).await.bytes();
    // On disk before the edge stops: otherwise the purge checks below would pass with nothing cached.
    edge.published(blob).await;
    let file = edge.running().state.fills.store().entry_path(&berth_edge::cache::EntryKey::blob(blob));
    assert!(file.exists());
    let mut config = edge.running().state.config.clone();
    let dir = edge.stop();

    let inv = format!("{}/api/v1/invalidations", distributor.url());
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let purge = format!(r#"{{"repository":"team/app","digest":"{blob}"}}"#);
    assert_eq!(client::send(Method::POST, &inv, &headers, purge).await.status, 202);
    let banned = origin.put_blob("team/app", vec![6u8; 500]);
    let quarantine = format!("{}/api/v1/quarantine", distributor.url());
    let order = format!(r#"{{"digest":"{banned}","reason":"compromised build"}}"#);
    assert_eq!(client::send(Method::POST, &quarantine, &headers, order).await.status, 202);
    for i in 0..4 {
        let body = format!(r#"{{"repository":"team/other{i}"}}"#);
        assert_eq!(client::send(Method::POST, &inv, &headers, body).await.status, 202);
    }
    config.listen.http = "127.0.0.1:0".parse().ok();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    let edge = edge::start_with(config, dir);
    assert!(
        edge.running().state.fills.store().contains(&berth_edge::cache::EntryKey::blob(blob)).is_none(),
        "the snapshot's purge was applied before serving"
    );
    assert!(!file.exists(), "the purged file was deleted");
    let url = format!("{}/v2/team/app/blobs/{blob}", edge.url());
    assert_eq!(client::get(&url).await.header("x-berth-cache"), Some("miss"));
    let r = client::get(&format!("{}/v2/team/app/blobs/{banned}", edge.url())).await;
    assert_eq!(r.status, 403, "the snapshot carried the quarantine (its event was compacted away)");
    drop(control);
}

#[tokio::test]
async fn an_unfinished_prefetch_resumes_after_an_edge_restart() {
    let origin = Origin::start().await;
    let (_, blobs) = image(&origin, "team/app", "v1");
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    origin.fault(
        &format!("/v2/team/app/blobs/{}", blobs[1]),
        berth_tests::origin::Fault::Gate { after: 10, gate: gate.clone(), corrupt: false },
    );
    let edge = edge::start(&origin.url());
    let id = admin_post(&edge, "/api/v1/prefetch", r#"{"images":["docker.io/team/app:v1"]}"#).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The job is held part-way by the gate; it is on disk as unfinished.
    let saved = edge.dir.path().join("cache/prefetch-jobs.json");
    berth_tests::eventually("the unfinished order is saved", Duration::from_secs(10), || {
        std::fs::read_to_string(&saved).is_ok_and(|s| s.contains(&id) && s.contains("\"pending\":[{"))
    })
    .await;
    let mut config = edge.running().state.config.clone();
    let dir = edge.stop();
    gate.notify_one();
    origin.clear_faults();
    config.listen.http = "127.0.0.1:0".parse().ok();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    let edge = edge::start_with(config, dir);
    let mut state = String::new();
    for _ in 0..1000 {
        let p = client::get(&format!("{}/api/v1/prefetch/{id}", edge.admin_url())).await.json();
        state = p["state"].as_str().unwrap_or_default().to_owned();
        if state == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, "done", "the order ran again after the restart");
    let r = client::get(&format!("{}/v2/team/app/blobs/{}", edge.url(), blobs[1])).await;
    assert_eq!(r.header("x-berth-cache"), Some("hit"));
}

/// A distributor stand-in whose watch stream carries an event of a kind this edge does not know
/// (version 1), then, once `release` is notified, an invalidation of `team/app`'s tags (version 2).
async fn newer_distributor(release: std::sync::Arc<tokio::sync::Notify>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let release = release.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let body = if request.starts_with("GET /api/v1/watch?since=0 ") {
                    concat!(
                        r#"{"type":"event","version":1,"action":"reticulate","splines":3}"#,
                        "\n",
                        r#"{"type":"synced","version":1}"#,
                        "\n"
                    )
                    .to_owned()
                } else if request.starts_with("GET /api/v1/watch?since=1 ") {
                    release.notified().await;
                    concat!(
                        r#"{"type":"event","version":2,"action":"invalidate","id":"i","repository":"team/app"}"#,
                        "\n",
                        r#"{"type":"synced","version":2}"#,
                        "\n"
                    )
                    .to_owned()
                } else if request.starts_with("GET /api/v1/watch") {
                    r#"{"type":"synced","version":2}"#.to_owned() + "\n"
                } else {
                    String::new()
                };
                let status = if request.starts_with("POST") { "204 No Content" } else { "200 OK" };
                let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(body.as_bytes()).await;
            });
        }
    });
    addr
}

async fn tag_digest(edge: &edge::TestEdge) -> String {
    let url = format!("{}/v2/team/app/manifests/v1", edge.url());
    let r = client::request(Method::GET, &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.header("docker-content-digest").unwrap_or_default().to_owned()
}

// Multi-threaded: the stand-in must answer while `start_custom` blocks on the edge's catch-up.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_of_an_unknown_kind_is_skipped_and_later_events_still_apply() {
    let edge_token = berth_tests::secret_file(EDGE_TOKEN);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let distributor = newer_distributor(release.clone()).await;
    let origin = Origin::start().await;
    let (first, _) = image(&origin, "team/app", "v1");
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.distributor = Some(link(format!("http://{distributor}"), "1h", &edge_token));
        c.upstream[0].tag_ttl = berth_shared::HumanDuration::secs(3600);
    });
    assert_eq!(edge.metric("berth_edge_policy_version").await, 1.0, "the unknown event was skipped, not stuck on");
    assert_eq!(tag_digest(&edge).await, first.to_string());
    // The tag moves upstream; within its TTL the edge keeps the cached mapping...
    let (second, _) = image_of(&origin, "team/app", "v1", 8);
    assert_ne!(first, second);
    assert_eq!(tag_digest(&edge).await, first.to_string(), "cached for the tag TTL");
    // ...until the invalidation after the unknown event applies.
    release.notify_one();
    let metrics = format!("{}/metrics", edge.admin_url());
    let mut version = 0.0;
    for _ in 0..2000 {
        let text = client::get(&metrics).await;
        version = edge::metric_value(&String::from_utf8_lossy(text.bytes()), "berth_edge_policy_version");
        if version == 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(version, 2.0, "the invalidation was applied");
    assert_eq!(tag_digest(&edge).await, second.to_string(), "the tag mapping was dropped by the invalidation");
}

#[tokio::test]
async fn the_admin_api_needs_a_bearer_token_when_tokens_are_configured_and_health_stays_open() {
    let origin = Origin::start().await;
    let digest = origin.put_blob("a/b", vec![1u8; 100]);
    let tokens = berth_tests::secret_file("ops-token-1\nops-token-2\n");
    let path = tokens.to_path_buf();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.admin.tokens_file = Some(path));
    let purge = format!("{}/api/v1/purge", edge.admin_url());
    let doc = format!(r#"{{"repository":"a/b","digest":"{digest}"}}"#);
    let r = client::send(Method::POST, &purge, &[], doc.clone()).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"berth-admin\""));
    assert_eq!(r.json()["error"]["code"], "unauthorized");
    let r = client::send(Method::POST, &purge, &[("authorization", "Bearer wrong")], doc.clone()).await;
    assert_eq!(r.status, 401);
    let r = client::send(Method::POST, &purge, &[("authorization", "Bearer ops-token-2")], doc).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let jobs = client::get(&format!("{}/api/v1/prefetch/nope", edge.admin_url())).await;
    assert_eq!(jobs.status, 401, "reading jobs needs the token too");
    for open in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(client::get(&format!("{}{open}", edge.admin_url())).await.status, 200, "{open} stays open");
    }
}
