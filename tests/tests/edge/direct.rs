//! Direct answers (`proxy/direct.rs`): memory hits on HTTP/1.1 answered before Pingora's
//! session. Each test compares with the full path on the same edge: a `Connection: keep-alive`
//! header sends a request there (it is one of the headers that hand a request on), so the two
//! answers to the same request can be set side by side, and `berth_edge_direct_answers_total`
//! says which path answered.

use std::net::SocketAddr;
use std::time::Duration;

use berth_edge::config::AccessMode;
use berth_shared::manifest::{DOCKER_MANIFEST, OCI_MANIFEST};
use berth_shared::Digest;
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::Origin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REPO: &str = "team/app";
const DIRECT: &str = "berth_edge_direct_answers_total";

/// One response read off a raw connection: the head (the `Date` value blanked) and the body.
#[derive(Debug, PartialEq, Eq)]
struct Raw {
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn status(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or_default()
    }
}

/// A raw HTTP/1.1 connection: requests written as given, responses read by their length.
struct Conn {
    socket: TcpStream,
    buffered: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        Conn { socket: TcpStream::connect(addr).await.unwrap(), buffered: Vec::new() }
    }

    async fn send(&mut self, requests: &str) {
        self.socket.write_all(requests.as_bytes()).await.unwrap();
    }

    /// The next response; `head_only` for the answer to a HEAD.
    async fn response(&mut self, head_only: bool) -> Raw {
        let end = loop {
            if let Some(i) = self.buffered.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8(self.buffered.drain(..end).collect()).unwrap();
        let length = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .unwrap_or(0usize);
        let length = if head_only { 0 } else { length };
        while self.buffered.len() < length {
            self.fill().await;
        }
        let body = self.buffered.drain(..length).collect();
        Raw { head: blank_date(&head), body }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 65536];
        let read = tokio::time::timeout(Duration::from_secs(10), self.socket.read(&mut chunk)).await;
        let n = read.expect("a response within 10 s").unwrap();
        assert!(n > 0, "connection closed; read so far: {:?}", String::from_utf8_lossy(&self.buffered));
        self.buffered.extend_from_slice(&chunk[..n]);
    }

    /// Sends one request and reads its answer.
    async fn ask(&mut self, request: &str) -> Raw {
        self.send(request).await;
        self.response(request.starts_with("HEAD")).await
    }
}

fn blank_date(head: &str) -> String {
    head.split("\r\n").map(|l| if l.starts_with("Date: ") { "Date: -" } else { l }).collect::<Vec<_>>().join("\r\n")
}

fn request(method: &str, path: &str, headers: &[&str]) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: edge\r\n");
    for h in headers {
        text.push_str(h);
        text.push_str("\r\n");
    }
    text + "\r\n"
}

fn image_manifest() -> Vec<u8> {
    let config = Digest::of(b"{}");
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":2}},"layers":[]}}"#
    )
    .into_bytes()
}

/// An origin with one blob and one tagged manifest, and an edge whose memory tier holds both.
async fn warm_edge(tweak: impl FnOnce(&mut berth_edge::config::EdgeConfig)) -> (Origin, TestEdge, Digest, Digest) {
    let origin = Origin::start().await;
    let blob = origin.put_blob(REPO, vec![7u8; 3000]);
    let manifest = origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, image_manifest());
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", tweak);
    (origin, edge, blob, manifest)
}

/// Requests the blob and the manifest until both are memory hits.
async fn warm(edge: &TestEdge, blob: Digest, manifest: Digest, authorization: &[&str]) {
    let addr = edge.running().http_addr.unwrap();
    let mut conn = Conn::open(addr).await;
    let keep =
        [authorization, &["Connection: keep-alive", "Accept: application/vnd.oci.image.manifest.v1+json"]].concat();
    assert_eq!(conn.ask(&request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &keep)).await.status(), "200");
    edge.published(blob).await;
    for _ in 0..2 {
        assert_eq!(conn.ask(&request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &keep)).await.status(), "200");
        assert_eq!(conn.ask(&request("GET", &format!("/v2/{REPO}/manifests/{manifest}"), &keep)).await.status(), "200");
    }
}

#[tokio::test]
async fn memory_hits_are_answered_directly_with_the_full_paths_response_byte_for_byte() {
    let (origin, edge, blob, manifest) = warm_edge(|_| {}).await;
    warm(&edge, blob, manifest, &[]).await;
    assert_eq!(edge.metric(DIRECT).await, 0.0, "every warming request carried Connection");
    let fetched = origin.count("GET", "/v2/");
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let asks = [
        request("GET", &format!("/v2/{REPO}/manifests/{manifest}"), &[accept]),
        request("HEAD", &format!("/v2/{REPO}/manifests/{manifest}"), &[accept]),
        request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &[]),
        request("HEAD", &format!("/v2/{REPO}/blobs/{blob}"), &[]),
    ];
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    for ask in &asks {
        let direct = conn.ask(ask).await;
        let full = conn.ask(&ask.replacen("\r\n\r\n", "\r\nConnection: keep-alive\r\n\r\n", 1)).await;
        assert_eq!(direct, full, "{ask}");
        assert_eq!(direct.status(), "200");
        assert!(direct.head.contains("x-berth-cache: hit"), "{}", direct.head);
    }
    assert_eq!(edge.metric(DIRECT).await, 4.0, "the four plain requests were answered directly");
    assert_eq!(origin.count("GET", "/v2/"), fetched, "no request reached the origin");
    let hits = edge.metric("berth_edge_requests_total{kind=\"manifest\",outcome=\"hit\"").await;
    assert_eq!(hits, 1.0 + 4.0, "direct answers are counted as requests too (one warming, four here)");
    let memory = edge.metric("berth_edge_served_bytes_total{tier=\"memory\"").await;
    assert!(memory >= 2.0 * (3000.0 + image_manifest().len() as f64), "served bytes counted: {memory}");
}

#[tokio::test]
async fn one_connection_mixes_direct_answers_and_the_full_path_pipelined_too() {
    let (_origin, edge, blob, manifest) = warm_edge(|_| {}).await;
    warm(&edge, blob, manifest, &[]).await;
    let accept = "Accept: application/vnd.oci.image.manifest.v1+json";
    let (blob_path, manifest_path) = (format!("/v2/{REPO}/blobs/{blob}"), format!("/v2/{REPO}/manifests/{manifest}"));
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    // A tag (full path), a range (full path: 206), then two direct answers written at once.
    let tag = conn.ask(&request("GET", &format!("/v2/{REPO}/manifests/v1"), &[accept])).await;
    assert_eq!((tag.status(), tag.body.clone()), ("200", image_manifest()));
    let range = conn.ask(&request("GET", &blob_path, &["Range: bytes=10-19"])).await;
    assert_eq!((range.status(), range.body.len()), ("206", 10));
    conn.send(&(request("GET", &manifest_path, &[accept]) + &request("GET", &blob_path, &[]))).await;
    assert_eq!(conn.response(false).await.body, image_manifest());
    assert_eq!(conn.response(false).await.body, vec![7u8; 3000]);
    assert_eq!(edge.metric(DIRECT).await, 2.0);
    // A direct answer followed by a request for the full path in the same write.
    conn.send(&(request("GET", &blob_path, &[]) + &request("GET", &format!("/v2/{REPO}/manifests/v1"), &[accept])))
        .await;
    assert_eq!(conn.response(false).await.body, vec![7u8; 3000]);
    assert_eq!(conn.response(false).await.body, image_manifest(), "the handed-on request is answered");
    assert_eq!(edge.metric(DIRECT).await, 3.0);
    // HTTP/1.0 is the full path's (it closes after the answer).
    let old = conn.ask(&request("GET", &blob_path, &[]).replacen("HTTP/1.1", "HTTP/1.0", 1)).await;
    assert_eq!((old.status(), old.body.len()), ("200", 3000));
    assert_eq!(edge.metric(DIRECT).await, 3.0);
}

#[tokio::test]
async fn a_memory_hit_the_full_path_would_refuse_is_refused_by_it() {
    let (_origin, edge, blob, manifest) =
        warm_edge(|c| c.server.max_header_bytes = berth_shared::ByteSize::kib(1)).await;
    warm(&edge, blob, manifest, &[]).await;
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    let manifest_path = format!("/v2/{REPO}/manifests/{manifest}");
    // A client that accepts only another manifest type: the full path's answer, not the bytes.
    let docker_only = format!("Accept: {DOCKER_MANIFEST}");
    let refused = conn.ask(&request("GET", &manifest_path, &[&docker_only])).await;
    let full = conn.ask(&request("GET", &manifest_path, &[&docker_only, "Connection: keep-alive"])).await;
    assert_eq!(refused, full);
    assert_ne!(refused.status(), "200", "{}", refused.head);
    // A head over max_header_bytes: 431 (and the connection closes).
    let big = format!("X-Padding: {}", "p".repeat(2000));
    let too_big = conn.ask(&request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &[&big])).await;
    assert_eq!(too_big.status(), "431");
    // A GET with a body: 400, never an answer followed by the body read as a request.
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    let smuggled = request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &["Content-Length: 5"]) + "GET /";
    assert_eq!(conn.ask(&smuggled).await.status(), "400");
    // Two Host headers, or one with userinfo: Pingora's 400.
    for host in ["Host: other", "X-Other: 1\r\nHost: user@edge"] {
        let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
        let ask = request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &[host]);
        let ask = if host.contains('@') { ask.replacen("Host: edge\r\n", "", 1) } else { ask };
        assert_eq!(conn.ask(&ask).await.status(), "400", "{ask}");
    }
    assert_eq!(edge.metric(DIRECT).await, 0.0, "none of these was answered directly");
}

#[tokio::test]
async fn on_a_protected_upstream_a_memory_hit_needs_a_granted_token_and_is_logged_with_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("users.htpasswd");
    berth_tests::write_htpasswd(&htpasswd, &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let log = dir.path().join("access.log");
    let log_path = log.display().to_string();
    let (_origin, edge, blob, manifest) = warm_edge(|c| {
        c.log.access = log_path;
        c.upstream[0].access = Some(AccessMode::Htpasswd);
        c.upstream[0].htpasswd_file = Some(htpasswd.clone());
        c.upstream[0].grants.insert("alice".into(), vec!["team/**".into()]);
        c.upstream[0].grants.insert("bob".into(), vec!["other/*".into()]);
    })
    .await;
    let token = |user: &'static str, password: &'static str| {
        let url = format!("{}/token?service=berth-edge&scope=repository%3Adocker.io%2F{REPO}%3Apull", edge.url());
        async move {
            let r = client::request(
                http::Method::GET,
                &url,
                &[("authorization", &berth_tests::origin::basic(user, password))],
            )
            .await;
            format!("Authorization: Bearer {}", r.json()["token"].as_str().expect("a token"))
        }
    };
    let (alice, bob) = (token("alice", "alice-pw").await, token("bob", "bob-pw").await);
    warm(&edge, blob, manifest, &[&alice]).await;
    let blob_path = format!("/v2/{REPO}/blobs/{blob}");
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    let anonymous = conn.ask(&request("GET", &blob_path, &[])).await;
    assert_eq!(anonymous.status(), "401");
    assert!(
        anonymous.head.contains("WWW-Authenticate: Bearer realm=")
            || anonymous.head.contains("www-authenticate: Bearer realm=")
    );
    assert_eq!(conn.ask(&request("GET", &blob_path, &[&bob])).await.status(), "401", "bob has no grant here");
    assert_eq!(edge.metric(DIRECT).await, 0.0);
    let granted = conn.ask(&request("GET", &blob_path, &[&alice])).await;
    assert_eq!((granted.status(), granted.body.len()), ("200", 3000));
    assert_eq!(edge.metric(DIRECT).await, 1.0);
    // Two credentials: the full path's answer, which reads the first.
    assert_eq!(conn.ask(&request("GET", &blob_path, &[&bob, &alice])).await.status(), "401");
    assert_eq!(conn.ask(&request("GET", &blob_path, &[&alice, &bob])).await.status(), "200");
    assert_eq!(edge.metric(DIRECT).await, 1.0, "neither was answered directly");
    berth_tests::eventually("the direct answer is in the access log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["user"] == "alice" && v["tier"] == "memory" && v["path"] == blob_path.as_str() && v["bytes"] == 3000
        })
    })
    .await;
}

#[tokio::test]
async fn an_idle_connection_after_a_direct_answer_closes_after_idle_timeout() {
    let (_origin, edge, blob, manifest) =
        warm_edge(|c| c.server.idle_timeout = berth_shared::HumanDuration::secs(1)).await;
    warm(&edge, blob, manifest, &[]).await;
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    assert_eq!(conn.ask(&request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &[])).await.status(), "200");
    assert_eq!(edge.metric(DIRECT).await, 1.0);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.socket.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "closed by the edge after idle_timeout: {closed:?}");
}

#[tokio::test]
async fn with_direct_hits_off_every_request_takes_the_full_path() {
    let (_origin, edge, blob, manifest) = warm_edge(|c| c.server.direct_hits = false).await;
    warm(&edge, blob, manifest, &[]).await;
    let mut conn = Conn::open(edge.running().http_addr.unwrap()).await;
    let r = conn.ask(&request("GET", &format!("/v2/{REPO}/blobs/{blob}"), &[])).await;
    assert_eq!((r.status(), r.body.len()), ("200", 3000));
    assert!(r.head.contains("x-berth-cache: hit"));
    assert_eq!(edge.metric(DIRECT).await, 0.0);
}
