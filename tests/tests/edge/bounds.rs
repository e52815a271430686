//! Every resource one client can consume is bounded: request heads (431), targets (414),
//! ambiguous framing (400 and close), slow and idle connections, the number of connections, the
//! fills and connections each upstream gets (503 with Retry-After past the bound), and prefetch
//! orders running at once.

use std::sync::Arc;
use std::time::Duration;

use berth_tests::client::{self, TlsClient};
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{Fault, Origin};
use berth_tests::pki::TestCa;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw bytes on a new connection and reads until the edge closes it (bounded).
async fn exchange(edge: &TestEdge, request: &[u8]) -> String {
    let mut socket = TcpStream::connect(edge.running().http_addr.unwrap()).await.unwrap();
    socket.write_all(request).await.unwrap();
    read_to_close(&mut socket).await
}

/// Everything the edge sends until it closes the connection (a reset counts as the close).
async fn read_to_close(socket: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    client::bounded("the edge closes the connection", read).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn oversized_heads_get_431_long_targets_414_and_the_connection_is_closed() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let big = "x".repeat(20_000);
    let text = exchange(&edge, format!("GET /v2/ HTTP/1.1\r\nHost: e\r\nX-Big: {big}\r\n\r\n").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{}", &text[..text.len().min(200)]);
    let long = "a/".repeat(5000);
    let text = exchange(&edge, format!("GET /v2/{long}b/manifests/v1 HTTP/1.1\r\nHost: e\r\n\r\n").as_bytes()).await;
    assert!(text.starts_with("HTTP/1.1 414"), "{}", &text[..text.len().min(200)]);
    // Past Pingora's own limit (1 MiB of head): refused and closed too, never served.
    let huge = "y".repeat(2 << 20);
    let text = exchange(&edge, format!("GET /v2/ HTTP/1.1\r\nHost: e\r\nX-Huge: {huge}\r\n\r\n").as_bytes()).await;
    assert!(!text.contains(" 200 "), "{}", &text[..text.len().min(200)]);
    assert!(edge.metric("berth_edge_refused_requests_total{bound=\"header_bytes\"").await >= 1.0);
    assert!(edge.metric("berth_edge_refused_requests_total{bound=\"url_bytes\"").await >= 1.0);
    assert_eq!(origin.log().len(), 0);
}

#[tokio::test]
async fn smuggling_inputs_get_400_and_the_connection_is_closed() {
    let origin = Origin::start().await;
    let edge = edge::start(&origin.url());
    let smuggled = "GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n";
    let cases = [
        format!("GET /v2/ HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /v2/ HTTP/1.1\r\nHost: e\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}", smuggled.len()),
        format!("POST /token HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for case in cases {
        let text = exchange(&edge, case.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{case:?} got {}", &text[..text.len().min(300)]);
        assert_eq!(responses(&text), 1, "the smuggled request was not answered: {text}");
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_at_header_timeout_an_idle_one_at_idle_timeout_and_others_are_served() {
    let origin = Origin::start().await;
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.server.header_timeout = berth_shared::HumanDuration(Duration::from_millis(400));
        c.server.idle_timeout = berth_shared::HumanDuration(Duration::from_millis(800));
    });
    let addr = edge.running().http_addr.unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v2/ HTTP/1.1\r\nHost: e\r\n").await.unwrap();
    // A header byte every 50 ms: every read makes progress, the request never completes.
    let trickle = async {
        loop {
            if slow.write_all(b"X").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut probe = [0u8; 1];
            match tokio::time::timeout(Duration::from_millis(1), slow.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                _ => {}
            }
        }
    };
    client::bounded("the slow client is cut", trickle).await;
    assert_eq!(client::get(&format!("{}/v2/", edge.url())).await.status, 200, "others are served");

    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n").await.unwrap();
    let text = read_to_close(&mut idle).await;
    assert_eq!(responses(&text), 1, "answered, then closed once idle: {text}");
    assert!(edge.metric("berth_edge_connection_timeouts_total{timer=\"header\"").await >= 1.0);
    assert!(edge.metric("berth_edge_connection_timeouts_total{timer=\"idle\"").await >= 1.0);
}

#[tokio::test]
async fn connections_past_max_connections_are_closed_as_they_arrive() {
    let origin = Origin::start().await;
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.server.max_connections = 3);
    let addr = edge.running().http_addr.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        let n = client::bounded("answer", s.read(&mut buf)).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    let text = exchange(&edge, b"GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n").await;
    assert_eq!(text, "", "the fourth connection is closed without an answer");
    assert!(edge.metric("berth_edge_connections_refused_total").await >= 1.0);
    drop(held.pop());
    berth_tests::eventually_async("a slot frees up", Duration::from_secs(10), || async {
        edge.metric("berth_edge_downstream_connections").await <= 2.0
    })
    .await;
    assert_eq!(client::get(&format!("{}/v2/", edge.url())).await.status, 200);
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok());
    kib.unwrap_or(0) * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_cold_digests_at_once_hold_the_fill_bound_and_the_excess_gets_503_with_retry_after() {
    const N: usize = 10_000;
    const FILLS: usize = 8;
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new(work.path());
    let pair = ca.issue(work.path(), "edge");
    let origin = Origin::start().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let digests: Vec<_> = (0..N)
        .map(|i| {
            let d = origin.put_blob("load/app", format!("blob number {i}").into_bytes());
            origin.fault(
                &format!("/v2/load/app/blobs/{d}"),
                Fault::Gate { after: 0, gate: gate.clone(), corrupt: false },
            );
            d
        })
        .collect();
    let files = berth_shared::tls::TlsFiles::new(&pair.cert, &pair.key);
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.listen.https = "127.0.0.1:0".parse().ok();
        c.tls = Some(files);
        c.upstream[0].max_fills = FILLS;
        c.upstream[0].queue_timeout = berth_shared::HumanDuration(Duration::from_millis(300));
    });
    let base = format!("https://127.0.0.1:{}", edge.running().https_addr.unwrap().port());
    let before = rss();

    // Over HTTP/2: ten thousand streams on a few connections, all at once.
    let clients: Vec<Arc<TlsClient>> =
        (0..4).map(|_| Arc::new(TlsClient::pooled(ca.client_config(&[]), true))).collect();
    let mut requests = tokio::task::JoinSet::new();
    for (i, d) in digests.iter().enumerate() {
        let (client, url) = (Arc::clone(&clients[i % clients.len()]), format!("{base}/v2/load/app/blobs/{d}"));
        requests.spawn(async move {
            let (r, _) = client.request(Method::GET, &url, &[]).await;
            (r.status, r.header("retry-after").map(str::to_owned), r.body.map(|b| b.len()).unwrap_or(0))
        });
    }
    // While the admitted fills are held at the origin, every other request is answered 503.
    let mut busy = 0;
    while busy < N - FILLS {
        let (status, retry_after, _) = requests.join_next().await.expect("a response").expect("request task");
        assert_eq!(status, 503, "only the admitted fills may wait at the origin");
        assert_eq!(retry_after.as_deref(), Some("2"), "503 carries Retry-After");
        busy += 1;
    }
    assert_eq!(origin.holding_total(), FILLS, "the origin holds exactly the admitted fills");
    assert_eq!(origin.count("GET", "/v2/load/app/blobs/"), FILLS, "no fill past max_fills reached the origin");
    let grown = rss().saturating_sub(before);
    gate.notify_waiters();
    while let Some(done) = requests.join_next().await {
        let (status, _, len) = done.expect("request task");
        assert_eq!(status, 200, "the admitted fills complete");
        assert!(len > 0);
    }
    assert!(grown < 512 << 20, "memory grew by {} MiB for {N} requests", grown >> 20);
    let refused = edge.metric("berth_edge_refused_requests_total{bound=\"fills\"").await;
    assert_eq!(refused as usize, N - FILLS);
}

#[tokio::test]
async fn prefetch_orders_past_max_prefetch_orders_wait_their_turn() {
    let origin = Origin::start().await;
    let gate = Arc::new(tokio::sync::Notify::new());
    let config = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"DIGEST","size":4},"layers":[]}"#;
    let mut ids = Vec::new();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| c.server.max_prefetch_orders = 1);
    for repo in ["first/app", "second/app"] {
        let blob = origin.put_blob(repo, b"conf".to_vec());
        origin.fault(&format!("/v2/{repo}/blobs/{blob}"), Fault::Gate { after: 0, gate: gate.clone(), corrupt: false });
        origin.put_manifest(
            repo,
            Some("v1"),
            "application/vnd.oci.image.manifest.v1+json",
            config.replace("DIGEST", &blob.to_string()),
        );
        let body = format!(r#"{{"images":["docker.io/{repo}:v1"]}}"#);
        let r = client::send(Method::POST, &format!("{}/api/v1/prefetch", edge.admin_url()), &[], body).await;
        ids.push(r.json()["id"].as_str().unwrap().to_owned());
        if ids.len() == 1 {
            origin.wait_holding(&format!("/v2/{repo}/blobs/{blob}"), 1).await;
        }
    }
    let state = |id: String| {
        let url = format!("{}/api/v1/prefetch/{id}", edge.admin_url());
        async move { client::get(&url).await.json()["state"].as_str().unwrap_or_default().to_owned() }
    };
    assert_eq!(state(ids[0].clone()).await, "running");
    assert_eq!(state(ids[1].clone()).await, "pending", "the second order waits for the first");
    assert_eq!(origin.holding_total(), 1);
    gate.notify_waiters();
    berth_tests::eventually_async("the second order runs once the first is done", Duration::from_secs(20), || async {
        gate.notify_waiters();
        state(ids[1].clone()).await == "done"
    })
    .await;
    assert_eq!(state(ids[0].clone()).await, "done");
}
