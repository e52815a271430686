//! Readiness and drain at the edge's admin API: an operator drain turns `/readyz` 503 at once,
//! new connections are refused after `drain_period`, the state survives a restart, undrain puts
//! the edge back; `/readyz` also reports a distributor silent for longer than `max_staleness`.

use std::time::Duration;

use berth_shared::HumanDuration;
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::Origin;
use berth_tests::tools::RefusingPort;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn readyz(edge: &TestEdge) -> (u16, String) {
    let r = client::get(&format!("{}/readyz", edge.admin_url())).await;
    (r.status, String::from_utf8_lossy(r.bytes()).into_owned())
}

/// Whether a new connection to the pull listener gets an answer (or is closed unanswered).
async fn answers(edge: &TestEdge) -> bool {
    let Ok(mut socket) = tokio::net::TcpStream::connect(edge.running().http_addr.unwrap()).await else { return false };
    if socket.write_all(b"GET /v2/ HTTP/1.1\r\nHost: e\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(client::bounded("answer or close", socket.read(&mut buf)).await, Ok(n) if n > 0)
}

#[tokio::test]
async fn an_operator_drain_turns_readyz_503_at_once_refuses_connections_after_the_period_and_survives_a_restart() {
    let origin = Origin::start().await;
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.server.drain_period = HumanDuration(Duration::from_millis(300));
    });
    assert_eq!(readyz(&edge).await.0, 200);
    let drain = client::send(Method::POST, &format!("{}/api/v1/drain", edge.admin_url()), &[], "").await;
    assert_eq!(drain.status, 200);
    assert_eq!(readyz(&edge).await, (503, "not ready: drained by an operator\n".to_owned()), "at once");
    berth_tests::eventually_async(
        "new connections are refused after the drain period",
        Duration::from_secs(10),
        || async { !answers(&edge).await },
    )
    .await;
    assert_eq!(client::get(&format!("{}/healthz", edge.admin_url())).await.status, 200, "healthz stays 200");

    // Kept across a restart: still drained, and closed at once.
    let mut config = edge.running().state.config.clone();
    let dir = edge.stop();
    config.listen.http = "127.0.0.1:0".parse().ok();
    config.listen.admin = "127.0.0.1:0".parse().unwrap();
    let edge = edge::start_with(config, dir);
    assert_eq!(readyz(&edge).await.0, 503, "drained before the restart, drained after");
    assert!(!answers(&edge).await);

    let undrain = client::send(Method::POST, &format!("{}/api/v1/undrain", edge.admin_url()), &[], "").await;
    assert_eq!(undrain.status, 200);
    assert_eq!(readyz(&edge).await.0, 200);
    assert!(answers(&edge).await, "back in rotation");
}

#[tokio::test]
async fn readyz_reports_a_distributor_silent_for_longer_than_max_staleness() {
    let origin = Origin::start().await;
    let refusing = RefusingPort::new();
    let token = berth_tests::secret_file("t");
    let url = format!("http://{}", refusing.addr);
    let path = token.to_path_buf();
    let edge = edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.distributor = Some(berth_edge::config::DistributorLink {
            url,
            token_file: Some(path),
            startup_sync_timeout: HumanDuration(Duration::from_millis(100)),
            max_staleness: Some(HumanDuration(Duration::from_millis(300))),
            ..Default::default()
        });
    });
    berth_tests::eventually_async("readyz turns 503: the distributor is silent", Duration::from_secs(10), || async {
        let (status, body) = readyz(&edge).await;
        status == 503 && body.contains("policy stale")
    })
    .await;
    assert_eq!(client::get(&format!("{}/v2/", edge.url())).await.status, 200, "it still serves");
}
