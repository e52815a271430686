//! Distributor replicas on one real PostgreSQL: a change written through any replica reaches the
//! watch streams of every replica, in version order, as soon as PostgreSQL announces it; a
//! replica killed loses nothing: its watchers resume on another from the last version they saw.

use std::time::Duration;

use berth_shared::protocol::WatchLine;
use berth_tests::client;
use berth_tests::fleet::{listener, DistributorProcess, ADMIN_TOKEN, EDGE_TOKEN};
use berth_tests::postgres::Postgres;
use http::Method;

/// A watch stream, read line by line.
struct Watch {
    stream: client::Streaming,
    parsed: usize,
}

impl Watch {
    async fn open(distributor: &str, since: u64) -> Watch {
        let url = format!("{distributor}/api/v1/watch?since={since}");
        let stream = client::open(&url, &[("Authorization", &format!("Bearer {EDGE_TOKEN}"))]).await;
        assert_eq!(stream.status, 200);
        Watch { stream, parsed: 0 }
    }

    /// The versions of the next `n` events (keep-alive and synced lines skipped).
    async fn events(&mut self, n: usize) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while out.len() < n {
            let text = String::from_utf8_lossy(&self.stream.received).into_owned();
            let lines: Vec<&str> = text[self.parsed..].split_inclusive('\n').collect();
            for line in lines.iter().filter(|l| l.ends_with('\n')) {
                self.parsed += line.len();
                if let Ok(WatchLine::Event(e)) = serde_json::from_str::<WatchLine>(line) {
                    let id = match &e.action {
                        berth_shared::protocol::Action::Invalidate(inv) => inv.repository.clone(),
                        other => format!("{other:?}"),
                    };
                    out.push((e.version, id));
                }
            }
            if out.len() >= n {
                break;
            }
            let wanted = self.stream.received.len() + 1;
            let read = tokio::time::timeout_at(deadline, self.stream.read_at_least(wanted)).await;
            assert!(read.is_ok(), "events not seen within 20 s; got {out:?}");
        }
        out
    }
}

async fn invalidate(distributor: &str, repository: &str) -> u64 {
    let r = client::send(
        Method::POST,
        &format!("{distributor}/api/v1/invalidations"),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}")), ("Content-Type", "application/json")],
        format!(r#"{{"repository":"{repository}"}}"#),
    )
    .await;
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(r.bytes()));
    r.json()["version"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_on_postgresql_see_every_change_in_order_and_survive_the_loss_of_one() {
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let mut replicas: Vec<DistributorProcess> = (0..3)
        .map(|i| {
            let dir = work.path().join(format!("replica-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let log = work.path().join(format!("replica-{i}.log"));
            DistributorProcess::start_on_postgres(&dir, &listener(), &pg.url(), &log)
        })
        .collect();
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let mut watches = Vec::new();
    for url in &urls {
        watches.push(Watch::open(url, 0).await);
    }
    // Six changes, written through the replicas in turn.
    let mut written = Vec::new();
    for i in 0..6 {
        let repository = format!("team/app{i}");
        written.push((invalidate(&urls[i % 3], &repository).await, repository));
    }
    let versions: Vec<u64> = written.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, (1..=6).collect::<Vec<_>>(), "one version sequence for all replicas");
    for (i, w) in watches.iter_mut().enumerate() {
        assert_eq!(w.events(6).await, written, "replica {i}'s watchers: every change, in version order");
    }
    // Replica 0 is killed; its watcher resumes on replica 1 from the last version it saw.
    replicas[0].kill();
    let mut moved = Watch::open(&urls[1], 6).await;
    let seventh = (invalidate(&urls[2], "team/after").await, "team/after".to_owned());
    assert_eq!(seventh.0, 7);
    assert_eq!(moved.events(1).await, vec![seventh.clone()], "nothing missed, nothing twice");
    assert_eq!(watches[1].events(1).await, vec![seventh.clone()]);
    assert_eq!(watches[2].events(1).await, vec![seventh]);
}

/// An in-process distributor replica on `postgres_url`.
fn replica(work: &std::path::Path, postgres_url: &str) -> berth_distributor::RunningDistributor {
    let (admin, edge) = (berth_tests::secret_file(ADMIN_TOKEN), berth_tests::secret_file(EDGE_TOKEN));
    let config = berth_distributor::config::parse(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[store]\ndir = {:?}\npostgres_url = {postgres_url:?}\nrecheck = \"1h\"\n[auth]\nadmin_tokens_file = {:?}\nedge_tokens_file = {:?}\n",
        work.join("unused").display().to_string(),
        admin.display().to_string(),
        edge.display().to_string(),
    ))
    .unwrap();
    berth_distributor::Distributor::build(&config).unwrap().spawn()
}

async fn purge(distributor: &str, digest: &berth_shared::Digest) {
    let r = client::send(
        Method::POST,
        &format!("{distributor}/api/v1/invalidations"),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}")), ("Content-Type", "application/json")],
        format!(r#"{{"repository":"team/app","digest":"{digest}"}}"#),
    )
    .await;
    assert_eq!(r.status, 202);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edge_moves_to_another_replica_when_its_own_is_killed_and_misses_nothing() {
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let a = replica(work.path(), &pg.url());
    let b = replica(work.path(), &pg.url());
    let (a_url, b_url) = (a.url(), b.url());
    let origin = berth_tests::origin::Origin::start().await;
    let blobs: Vec<_> = (0..2u8).map(|i| origin.put_blob("team/app", vec![i; 20_000])).collect();
    let token = berth_tests::secret_file(EDGE_TOKEN);
    let edge = berth_tests::edge::start_custom(&[("docker.io", &origin.url())], "", |c| {
        c.distributor = Some(berth_edge::config::DistributorLink {
            url: a_url.clone(),
            replicas: vec![b_url.clone()],
            token_file: Some(token.to_path_buf()),
            report_interval: "100ms".parse().unwrap(),
            startup_sync_timeout: berth_shared::HumanDuration::secs(5),
            ..Default::default()
        });
    });
    let cached = |d: berth_shared::Digest| {
        let store = std::sync::Arc::clone(edge.running().state.fills.store());
        move || store.contains(&berth_edge::cache::EntryKey::blob(d)).is_none()
    };
    for d in &blobs {
        client::get(&format!("{}/v2/team/app/blobs/{d}", edge.url())).await.bytes();
        edge.published(*d).await;
    }
    purge(&a_url, &blobs[0]).await;
    berth_tests::eventually("the purge through replica A applied", Duration::from_secs(20), cached(blobs[0])).await;
    // Replica A goes away; the next change is written through B while the edge reconnects.
    tokio::task::spawn_blocking(move || drop(a)).await.unwrap();
    purge(&b_url, &blobs[1]).await;
    berth_tests::eventually("the purge through replica B applied", Duration::from_secs(20), cached(blobs[1])).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_replica_shows_the_edges_that_reported_to_any_of_them() {
    let pg = Postgres::start();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (replica(work.path(), &pg.url()), replica(work.path(), &pg.url()));
    let report = |url: String| async move {
        let body = r#"{"id":"edge-eu-1","region":"eu","version":"0.1.0","applied_version":0}"#;
        let r = client::send(
            Method::POST,
            &format!("{url}/api/v1/edges/report"),
            &[("Authorization", &format!("Bearer {EDGE_TOKEN}")), ("Content-Type", "application/json")],
            body.to_owned(),
        )
        .await;
        assert!(r.status < 300, "report: {}", r.status);
    };
    let edges = |url: String| async move {
        let r = client::request(
            Method::GET,
            &format!("{url}/api/v1/edges"),
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await;
        r.json()
    };
    report(a.url()).await;
    let seen = edges(b.url()).await;
    assert_eq!(seen[0]["id"], "edge-eu-1", "replica B lists an edge that reported to A: {seen}");
    let first_seen = seen[0]["first_seen_ms"].clone();
    // The edge moves to replica B: it is the same edge, first seen when A first saw it.
    tokio::time::sleep(Duration::from_millis(5)).await;
    report(b.url()).await;
    let seen = edges(a.url()).await;
    assert_eq!(seen.as_array().unwrap().len(), 1);
    assert_eq!(seen[0]["first_seen_ms"], first_seen);
    drop((a, b));
}
