//! A region as one cache: real edges that know each other (`[cluster]`), each blob filled from
//! the origin once for the whole region by its owner, a failed owner replaced by the next one,
//! and peer requests that must carry the region's signature.

use berth_edge::cache::EntryKey;
use berth_edge::cluster::ring;
use berth_shared::Digest;
use berth_tests::client;
use berth_tests::edge::{self, TestEdge};
use berth_tests::origin::{Fault, Origin};
use berth_tests::registry::random_bytes;

const REPO: &str = "team/svc";
const KEY: &str = "the-region-key-for-these-tests-0001";

/// A socket on a port the OS picks, bound before its edge starts so the region's configs can
/// name it; with its URL.
fn socket() -> (std::net::TcpListener, String) {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    let url = format!("http://{}", socket.local_addr().unwrap());
    (socket, url)
}

/// Writes the region key into `dir` and points `config` at it; `me` advertised.
fn join(c: &mut berth_edge::config::EdgeConfig, me: &str) {
    let key = c.cache.dir.with_file_name("region.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    std::fs::write(&key, KEY).unwrap();
    c.cluster.key_file = Some(key);
    c.cluster.advertise = Some(me.to_owned());
}

/// `n` edges in front of `origin`, each listing the others in `[cluster] peers`.
fn region(origin: &Origin, n: usize) -> Vec<TestEdge> {
    let sockets: Vec<_> = (0..n).map(|_| socket()).collect();
    let urls: Vec<String> = sockets.iter().map(|(_, u)| u.clone()).collect();
    sockets
        .into_iter()
        .map(|(socket, me)| {
            edge::start_on(socket, &[("docker.io", &origin.url())], "", |c| {
                join(c, &me);
                c.cluster.peers = urls.iter().filter(|u| **u != me).cloned().collect();
            })
        })
        .collect()
}

fn owner_rank(edges: &[TestEdge], digest: &Digest) -> Vec<usize> {
    let urls: Vec<String> = edges.iter().map(TestEdge::url).collect();
    ring::rank(urls.iter().map(String::as_str), digest)
        .into_iter()
        .map(|u| urls.iter().position(|x| x == u).unwrap())
        .collect()
}

fn holds(edge: &TestEdge, digest: Digest) -> bool {
    edge.running().state.fills.store().contains(&EntryKey::blob(digest)).is_some()
}

async fn pull(edge: &TestEdge, digest: &Digest, body: &[u8]) {
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{digest}", edge.url())).await;
    assert_eq!(r.status, 200, "{digest} from {}", edge.url());
    assert_eq!(r.bytes().as_ref(), body, "{digest} from {}: every byte", edge.url());
}

#[tokio::test]
async fn a_region_of_four_edges_fetches_each_blob_from_the_origin_once_and_keeps_it_on_its_owner() {
    let origin = Origin::start().await;
    let blobs: Vec<(Digest, Vec<u8>)> = (0..16)
        .map(|_| {
            let body = random_bytes(300 << 10);
            (origin.put_blob(REPO, body.clone()), body)
        })
        .collect();
    let edges = region(&origin, 4);
    // Clients spread over the edges as DNS would: every blob pulled at every edge, at once.
    let mut pulls = Vec::new();
    for (digest, body) in &blobs {
        for e in &edges {
            let (url, digest, body) = (format!("{}/v2/{REPO}/blobs/{digest}", e.url()), *digest, body.clone());
            pulls.push(tokio::spawn(async move {
                let r = client::get(&url).await;
                assert_eq!(r.status, 200, "{url}");
                assert_eq!(r.bytes().as_ref(), body.as_slice(), "{url}: every byte");
                digest
            }));
        }
    }
    for p in pulls {
        p.await.unwrap();
    }
    for (digest, _) in &blobs {
        let path = format!("/v2/{REPO}/blobs/{digest}");
        assert_eq!(origin.count("GET", &path), 1, "{digest}: one origin fetch for the whole region");
    }
    // Each blob is kept by its owner, and (pulled once there) by no other edge.
    for (digest, _) in &blobs {
        let rank = owner_rank(&edges, digest);
        edges[rank[0]].published(*digest).await;
        for other in &rank[1..] {
            assert!(!holds(&edges[*other], *digest), "{digest}: not kept by a non-owner that filled it once");
        }
    }
    let (mut kept, mut left) = (0.0, 0.0);
    for e in &edges {
        kept += e.metric(r#"berth_edge_peer_fills_total{result="kept""#).await;
        left += e.metric(r#"berth_edge_peer_fills_total{result="not_kept""#).await;
    }
    assert_eq!((kept, left), (0.0, 48.0), "16 blobs, each filled from its owner by the 3 other edges");
}

#[tokio::test]
async fn a_blob_pulled_again_at_a_non_owner_becomes_popular_and_is_kept_there() {
    let origin = Origin::start().await;
    let body = random_bytes(200 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let edges = region(&origin, 3);
    let rank = owner_rank(&edges, &digest);
    let (owner, other) = (&edges[rank[0]], &edges[rank[2]]);
    pull(other, &digest, &body).await;
    owner.published(digest).await;
    assert!(!holds(other, digest), "filled once at a non-owner: left to its owner");
    // The first fill ends a moment after its last byte (a pull meanwhile would join it).
    let fills = std::sync::Arc::clone(&other.running().state.fills);
    berth_tests::eventually("the first fill ended", std::time::Duration::from_secs(10), || fills.in_flight() == 0)
        .await;
    pull(other, &digest, &body).await;
    other.published(digest).await;
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{digest}", other.url())).await;
    assert_eq!(r.header("x-berth-cache"), Some("hit"), "popular: now a local hit");
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1, "the owner fetched it, once");
    let kept = other.metric(r#"berth_edge_peer_fills_total{result="kept""#).await;
    assert_eq!(kept, 1.0);
}

#[tokio::test]
async fn a_stopped_owner_sends_the_fill_to_the_next_owner_and_no_pull_fails() {
    let origin = Origin::start().await;
    let body = random_bytes(200 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let started = region(&origin, 3);
    let rank = owner_rank(&started, &digest);
    let mut edges: Vec<Option<TestEdge>> = started.into_iter().map(Some).collect();
    let owner = edges[rank[0]].take().unwrap();
    tokio::task::spawn_blocking(move || owner.stop()).await.unwrap();
    let (next, last) = (edges[rank[1]].as_ref().unwrap(), edges[rank[2]].as_ref().unwrap());
    pull(last, &digest, &body).await;
    next.published(digest).await;
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1, "the next owner fetched it");
    assert!(last.metric("berth_edge_peer_failures_total").await >= 1.0, "the stopped owner was tried and skipped");
    // Skipped for a while: the next pull at the last edge goes to the next owner straight away.
    pull(last, &digest, &body).await;
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1);
}

#[tokio::test]
async fn an_owner_lost_in_the_middle_of_a_blob_is_resumed_from_the_origin_with_a_range() {
    let origin = Origin::start().await;
    let body = random_bytes(3 << 20);
    let digest = origin.put_blob(REPO, body.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    // The owner's fetch from the origin stops after 1 MiB (a ranged request is not held).
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate, corrupt: false });
    let started = region(&origin, 2);
    let rank = owner_rank(&started, &digest);
    let mut edges: Vec<Option<TestEdge>> = started.into_iter().map(Some).collect();
    let owner = edges[rank[0]].take().unwrap();
    let other = edges[rank[1]].take().unwrap();
    let mut reading = client::open(&format!("{}{path}", other.url()), &[]).await;
    reading.read_at_least(1 << 20).await.unwrap();
    tokio::task::spawn_blocking(move || owner.stop()).await.unwrap();
    let served = reading.finish().await.expect("the pull completes");
    assert_eq!(
        served.as_ref(),
        body.as_slice(),
        "every byte, verified: the first MiB from the owner, the rest from the origin"
    );
    let ranged = origin.log().iter().filter(|l| l.path == path && l.header("range").is_some()).count();
    assert_eq!(ranged, 1, "the rest was asked of the origin as a range");
    assert!(other.metric("berth_edge_peer_failures_total").await >= 1.0);
}

#[tokio::test]
async fn peer_requests_need_the_region_signature_and_are_never_forwarded_again() {
    let origin = Origin::start().await;
    let body = random_bytes(100 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let edges = region(&origin, 2);
    let rank = owner_rank(&edges, &digest);
    let (owner, other) = (&edges[rank[0]], &edges[rank[1]]);
    let path = format!("/v2/{REPO}/blobs/{digest}?ns=docker.io");
    let url = format!("{}{path}", other.url());
    // Bad input: each gets 403 DENIED, nothing is fetched.
    let now = berth_edge::cluster::hop::unix_now();
    let wrong_key = berth_edge::cluster::hop::RegionKey::new("not-the-key-of-this-region-000000").unwrap();
    for (header, why) in [
        ("garbage".to_owned(), "malformed"),
        (wrong_key.sign(&owner.url(), now, &path), "another key"),
        (berth_edge::cluster::hop::RegionKey::new(KEY).unwrap().sign(&owner.url(), now - 3600, &path), "an hour old"),
    ] {
        let r = client::request(http::Method::GET, &url, &[("x-berth-peer", &header)]).await;
        assert_eq!(r.status, 403, "{why}");
        assert!(String::from_utf8_lossy(r.bytes()).contains("DENIED"), "{why}");
    }
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/")), 0);
    // A signed request at a non-owner is a hop: served from the origin, not sent to the owner.
    let header = berth_edge::cluster::hop::RegionKey::new(KEY).unwrap().sign(&owner.url(), now, &path);
    let r = client::request(http::Method::GET, &url, &[("x-berth-peer", &header)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(owner.metric("berth_edge_peer_requests_total").await, 0.0, "the owner was not asked");
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1);
}

/// The index of a Zipf(1.0)-distributed draw over `n` items, from a uniform `u` in [0, 1).
fn zipf_index(n: usize, u: f64) -> usize {
    let total: f64 = (1..=n).map(|k| 1.0 / k as f64).sum();
    let mut acc = 0.0;
    for k in 1..=n {
        acc += 1.0 / k as f64 / total;
        if u < acc {
            return k - 1;
        }
    }
    n - 1
}

#[tokio::test]
async fn a_zipf_workload_over_four_edges_survives_the_loss_of_one_with_no_failed_pull() {
    use rand::Rng;
    use std::sync::Arc;
    let origin = Origin::start().await;
    let blobs: Arc<Vec<(Digest, Vec<u8>)>> = Arc::new(
        (0..40)
            .map(|_| {
                let body = random_bytes(128 << 10);
                (origin.put_blob(REPO, body.clone()), body)
            })
            .collect(),
    );
    let edges = region(&origin, 4);
    let urls: Vec<String> = edges.iter().map(TestEdge::url).collect();
    // The edges clients may use: the stopped one leaves it, as DNS or anycast would take it out.
    let live = Arc::new(parking_lot::Mutex::new(urls.clone()));
    let pulls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = |count: usize| {
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (blobs, live, pulls) = (Arc::clone(&blobs), Arc::clone(&live), Arc::clone(&pulls));
            clients.push(tokio::spawn(async move {
                let mut failed = Vec::new();
                for _ in 0..count {
                    let (i, pick) = {
                        let mut rng = rand::thread_rng();
                        (zipf_index(blobs.len(), rng.gen()), rng.gen::<usize>())
                    };
                    let (digest, body) = &blobs[i];
                    let url = {
                        let live = live.lock();
                        format!("{}/v2/{REPO}/blobs/{digest}", live[pick % live.len()])
                    };
                    let r = client::request(http::Method::GET, &url, &[]).await;
                    if r.status != 200 || r.bytes().as_ref() != body.as_slice() {
                        failed.push(format!("{url}: {}", r.status));
                    }
                    pulls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                failed
            }));
        }
        clients
    };
    let mut failed = Vec::new();
    for c in run(15) {
        failed.extend(c.await.unwrap());
    }
    let fetched_before: usize = blobs.iter().map(|(d, _)| origin.count("GET", &format!("/v2/{REPO}/blobs/{d}"))).sum();
    let pulled_before: std::collections::HashSet<_> = blobs
        .iter()
        .filter(|(d, _)| origin.count("GET", &format!("/v2/{REPO}/blobs/{d}")) > 0)
        .map(|(d, _)| *d)
        .collect();
    assert_eq!(fetched_before, pulled_before.len(), "before the loss: each blob fetched from the origin once");
    // One edge stops while the next clients run: it leaves the clients' list first.
    let mut edges: Vec<Option<TestEdge>> = edges.into_iter().map(Some).collect();
    let victim = 1;
    live.lock().retain(|u| *u != urls[victim]);
    let clients = run(15);
    let stopped = edges[victim].take().unwrap();
    tokio::task::spawn_blocking(move || stopped.stop()).await.unwrap();
    for c in clients {
        failed.extend(c.await.unwrap());
    }
    assert!(failed.is_empty(), "failed pulls: {failed:?}");
    assert_eq!(pulls.load(std::sync::atomic::Ordering::SeqCst), 240);
    // Blobs the stopped edge owned are fetched again, once, by their next owner; no other blob is.
    for (digest, _) in blobs.iter() {
        let n = origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}"));
        let owned_by_victim = ring::rank(urls.iter().map(String::as_str), digest)[0] == urls[victim];
        assert!(n <= 1 + owned_by_victim as usize, "{digest}: {n} origin fetches");
    }
}

#[tokio::test]
async fn regions_behind_a_parent_edge_fetch_each_blob_from_the_origin_once_and_keep_the_registry() {
    // The parent mirrors two registries; the child regions name it as their upstream for both.
    let (hub, ghcr) = (Origin::start().await, Origin::start().await);
    let body = random_bytes(256 << 10);
    let digest = ghcr.put_blob(REPO, body.clone());
    let parent = edge::start_custom(&[("docker.io", &hub.url()), ("ghcr.io", &ghcr.url())], "", |_| {});
    let children: Vec<TestEdge> = (0..3)
        .map(|_| {
            edge::start_custom(&[("docker.io", &parent.url()), ("ghcr.io", &parent.url())], "", |c| {
                c.upstream.iter_mut().for_each(|u| u.parent = true);
            })
        })
        .collect();
    let mut pulls = Vec::new();
    for child in &children {
        let url = format!("{}/v2/{REPO}/blobs/{digest}?ns=ghcr.io", child.url());
        let body = body.clone();
        pulls.push(tokio::spawn(async move {
            let r = client::get(&url).await;
            assert_eq!(r.status, 200, "{url}");
            assert_eq!(r.bytes().as_ref(), body.as_slice());
        }));
    }
    for p in pulls {
        p.await.unwrap();
    }
    assert_eq!(ghcr.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1, "one origin fetch for every region");
    assert_eq!(hub.count("GET", "/v2/"), 0, "ns travelled: the parent asked ghcr.io's origin, not its default");
    let asked = parent.metric(r#"berth_edge_requests_total{kind="blob""#).await;
    assert_eq!(asked, 3.0, "each region asked the parent once");
}

#[tokio::test]
async fn an_owner_that_lacks_the_upstream_sends_the_fill_to_the_origin_without_being_marked_down() {
    // Edge 0 mirrors docker.io only; edge 1 also ghcr.io. A ghcr.io blob owned by edge 0: it
    // answers 404 (no such upstream), and edge 1 asks the origin itself.
    let (hub, ghcr) = (Origin::start().await, Origin::start().await);
    let (sockets, urls): (Vec<_>, Vec<_>) = (0..2).map(|_| socket()).unzip();
    let cluster = |me: usize| {
        let urls = urls.clone();
        move |c: &mut berth_edge::EdgeConfig| {
            join(c, &urls[me]);
            c.cluster.peers = vec![urls[1 - me].clone()];
        }
    };
    let mut sockets = sockets.into_iter();
    let edges = [
        edge::start_on(sockets.next().unwrap(), &[("docker.io", &hub.url())], "", cluster(0)),
        edge::start_on(sockets.next().unwrap(), &[("docker.io", &hub.url()), ("ghcr.io", &ghcr.url())], "", cluster(1)),
    ];
    let (digest, body) = loop {
        let body = random_bytes(64 << 10);
        let digest = ghcr.put_blob(REPO, body.clone());
        if owner_rank(&edges, &digest)[0] == 0 {
            break (digest, body);
        }
    };
    let r = client::get(&format!("{}/v2/{REPO}/blobs/{digest}?ns=ghcr.io", edges[1].url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.bytes().as_ref(), body.as_slice());
    assert_eq!(ghcr.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1);
    assert_eq!(edges[1].metric("berth_edge_peer_failures_total").await, 0.0, "it answered: not marked down");
}

/// An in-process distributor on its embedded store, with its token files.
struct Control {
    inner: berth_tests::fleet::InProcessDistributor,
    _work: tempfile::TempDir,
}

impl Control {
    fn start() -> Control {
        let work = tempfile::tempdir().unwrap();
        Control { inner: berth_tests::fleet::InProcessDistributor::start(work.path(), ""), _work: work }
    }

    fn url(&self) -> String {
        self.inner.distributor.url()
    }

    /// The `[distributor]` table of an edge joined to it, reporting every 100 ms.
    fn link(&self) -> berth_edge::config::DistributorLink {
        berth_edge::config::DistributorLink {
            url: self.url(),
            token_file: Some(self.inner.edge_token.to_path_buf()),
            report_interval: "100ms".parse().unwrap(),
            ..Default::default()
        }
    }

    /// Posts an admin request; returns the answer's JSON (it must be accepted).
    async fn post(&self, path: &str, body: &str) -> serde_json::Value {
        let auth = format!("Bearer {}", berth_tests::fleet::ADMIN_TOKEN);
        let url = format!("{}{path}", self.url());
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        let r = client::send(http::Method::POST, &url, &headers, body.to_owned()).await;
        assert_eq!(r.status, 202, "{path}: {}", String::from_utf8_lossy(r.bytes()));
        r.json()
    }

    /// Waits until `n` edges have reported.
    async fn wait_for_edges(&self, n: usize) {
        let auth = format!("Bearer {}", berth_tests::fleet::ADMIN_TOKEN);
        let url = format!("{}/api/v1/edges", self.url());
        for _ in 0..2000 {
            let edges = client::request(http::Method::GET, &url, &[("Authorization", &auth)]).await.json();
            if edges.as_array().map_or(0, Vec::len) >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} edges did not report");
    }

    /// Waits for a prefetch job to finish; its status.
    async fn job_done(&self, id: &str) -> serde_json::Value {
        let auth = format!("Bearer {}", berth_tests::fleet::ADMIN_TOKEN);
        let url = format!("{}/api/v1/prefetch/{id}", self.url());
        for _ in 0..2000 {
            let status = client::request(http::Method::GET, &url, &[("Authorization", &auth)]).await.json();
            if status["state"] == "done" || status["state"] == "failed" {
                return status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("job {id} did not finish");
    }
}

/// The number of peers an edge shares its cache with now.
fn peers_of(edge: &TestEdge) -> i64 {
    edge.running().state.metrics.cluster_peers.get()
}

/// A blob at `origin` whose owner among `urls` is `urls[owner]`.
fn blob_owned_by(origin: &Origin, urls: &[&str], owner: usize) -> (Digest, Vec<u8>) {
    loop {
        let body = random_bytes(64 << 10);
        let digest = origin.put_blob(REPO, body.clone());
        if ring::rank(urls.iter().copied(), &digest)[0] == urls[owner] {
            return (digest, body);
        }
    }
}

#[tokio::test]
async fn a_reload_changes_the_peers_of_a_region_and_refuses_a_change_to_the_rest_of_cluster() {
    use berth_edge::reload::reload;
    let origin = Origin::start().await;
    let ((sa, a), (sb, b), (sc, c)) = (socket(), socket(), socket());
    // B and C list each other and A (a config the product accepts: a static list).
    let member = |me: &str, peers: [&str; 2]| {
        let (me, peers) = (me.to_owned(), peers.map(str::to_owned).to_vec());
        move |cfg: &mut berth_edge::config::EdgeConfig| {
            join(cfg, &me);
            cfg.cluster.peers = peers;
        }
    };
    let others = [
        edge::start_on(sb, &[("docker.io", &origin.url())], "", member(&b, [&a, &c])),
        edge::start_on(sc, &[("docker.io", &origin.url())], "", member(&c, [&a, &b])),
    ];
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("region.key"), KEY).unwrap();
    let (cache, key) = (dir.path().join("cache"), dir.path().join("region.key"));
    let text = |peers: &[&str], keep_after: u32| {
        format!(
            "region = \"test\"\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\n[cluster]\nadvertise = \"{a}\"\npeers = {peers:?}\nkey_file = {:?}\nkeep_after = {keep_after}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\ndefault = true\n",
            cache.display().to_string(),
            key.display().to_string(),
            origin.url()
        )
    };
    let file = dir.path().join("edge.toml");
    std::fs::write(&file, text(&[&b], 2)).unwrap();
    let config = berth_edge::config::load_file(&file).unwrap();
    let edge_a = edge::start_with_sockets(config, dir, berth_edge::listener::Sockets { http: Some(sa), https: None });
    assert_eq!(peers_of(&edge_a), 1);

    // C joins A's region by a reload: a blob C owns among the three is filled from C.
    std::fs::write(&file, text(&[&b, &c], 2)).unwrap();
    reload(&edge_a.running().state, &file).expect("peers change with a reload");
    assert_eq!(peers_of(&edge_a), 2);
    let (digest, body) = blob_owned_by(&origin, &[&a, &b, &c], 2);
    pull(&edge_a, &digest, &body).await;
    assert_eq!(others[1].metric(r#"berth_edge_peer_requests_total{result="served""#).await, 1.0, "asked C");
    assert_eq!(others[0].metric("berth_edge_peer_requests_total").await, 0.0, "not B");
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1);

    // Bad input: another keep_after needs a restart; no peers and no distributor to name them
    // is no region. Each is refused naming the key; the members in force stay.
    for (bad, key) in [
        (text(&[&b, &c], 3), "these keys change only with a restart: cluster.keep_after"),
        (text(&[], 2), "cluster.peers: required without a [distributor]"),
    ] {
        std::fs::write(&file, bad).unwrap();
        let err = reload(&edge_a.running().state, &file).expect_err(key).to_string();
        assert!(err.contains(key), "{err}");
        assert_eq!(peers_of(&edge_a), 2, "{key}: the peers in force stay");
    }
}

#[tokio::test]
async fn a_region_without_a_peer_list_takes_its_members_from_the_distributor_and_loses_a_drained_edge() {
    let control = Control::start();
    let origin = Origin::start().await;
    let (sockets, urls): (Vec<_>, Vec<_>) = (0..3).map(|_| socket()).unzip();
    let edges: Vec<TestEdge> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            edge::start_on(socket, &[("docker.io", &origin.url())], "", |c| {
                join(c, &urls[i]);
                c.node_id = Some(format!("edge-{i}"));
                c.distributor = Some(control.link());
            })
        })
        .collect();
    let limit = std::time::Duration::from_secs(20);
    berth_tests::eventually("every edge knows the two others", limit, || edges.iter().all(|e| peers_of(e) == 2)).await;
    let names: Vec<&str> = urls.iter().map(String::as_str).collect();
    for owner in 0..3 {
        let (digest, body) = blob_owned_by(&origin, &names, owner);
        for e in &edges {
            pull(e, &digest, &body).await;
        }
        assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1, "owned by edge {owner}: one fetch");
        edges[owner].published(digest).await;
    }

    // Drained by an operator, edge 2 is no longer ready: the others stop asking it.
    control.post("/api/v1/drain", r#"{"node_id":"edge-2"}"#).await;
    berth_tests::eventually("the drained edge left the others' region", limit, || {
        peers_of(&edges[0]) == 1 && peers_of(&edges[1]) == 1
    })
    .await;
    let served_before = edges[2].metric("berth_edge_peer_requests_total").await;
    let (digest, body) = blob_owned_by(&origin, &names, 2);
    pull(&edges[0], &digest, &body).await;
    pull(&edges[1], &digest, &body).await;
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1, "its blobs have a new owner");
    assert_eq!(edges[2].metric("berth_edge_peer_requests_total").await, served_before, "not asked");
}

#[tokio::test]
async fn a_prefetch_into_three_regions_behind_a_parent_fetches_each_blob_from_the_origin_once() {
    use berth_shared::manifest::OCI_MANIFEST;
    let control = Control::start();
    let origin = Origin::start().await;
    let layers: Vec<Digest> = (0..3).map(|_| origin.put_blob(REPO, random_bytes(300 << 10))).collect();
    let config = origin.put_blob(REPO, br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    let entries: Vec<String> = layers
        .iter()
        .map(|d| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{d}","size":{}}}"#, 300 << 10)
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{}]}}"#,
        entries.join(",")
    );
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, manifest);
    // The shield: one edge in front of the origin; three regions name it as their upstream.
    let parent = edge::start(&origin.url());
    let children: Vec<TestEdge> = ["eu", "us", "ap"]
        .iter()
        .map(|region| {
            edge::start_custom(&[("docker.io", &parent.url())], "", |c| {
                c.region = (*region).to_owned();
                c.node_id = Some(format!("edge-{region}"));
                c.upstream[0].parent = true;
                c.distributor = Some(control.link());
            })
        })
        .collect();
    control.wait_for_edges(3).await;
    let id = control.post("/api/v1/prefetch", &format!(r#"{{"images":["docker.io/{REPO}:v1"]}}"#)).await["id"]
        .as_str()
        .expect("a job id")
        .to_owned();
    let status = control.job_done(&id).await;
    assert_eq!(status["state"], "done", "{status}");
    for region in ["eu", "us", "ap"] {
        assert_eq!(status["by_region"][region]["edges"].as_array().map(Vec::len), Some(1), "{status}");
    }
    for blob in layers.iter().chain([&config]) {
        assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{blob}")), 1, "{blob}: once for three regions");
        for child in &children {
            let r = client::get(&format!("{}/v2/{REPO}/blobs/{blob}", child.url())).await;
            assert_eq!(
                r.header("x-berth-cache"),
                Some("hit"),
                "{blob} warm in {}",
                child.running().state.config.region
            );
        }
    }
    assert_eq!(parent.metric(r#"berth_edge_requests_total{kind="blob""#).await, 12.0, "each region asked the parent");
}

#[tokio::test]
async fn peers_over_https_are_verified_against_the_cluster_ca() {
    let work = tempfile::tempdir().unwrap();
    let ca = berth_tests::pki::TestCa::new(work.path());
    let origin = Origin::start().await;
    let sockets: Vec<(std::net::TcpListener, String)> = (0..3)
        .map(|_| {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("https://127.0.0.1:{}", socket.local_addr().unwrap().port());
            (socket, url)
        })
        .collect();
    let urls: Vec<String> = sockets.iter().map(|(_, u)| u.clone()).collect();
    // Edges 0 and 1 trust the region's CA; edge 2 names the same peers but not the CA.
    let edges: Vec<TestEdge> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (socket, me))| {
            let dir = tempfile::tempdir().unwrap();
            let mut c = edge::test_config(&dir.path().join("cache"), &[("docker.io", &origin.url())], "");
            let pair = ca.issue(work.path(), &format!("edge-{i}"));
            c.listen.https = "127.0.0.1:0".parse().ok();
            c.tls = Some(berth_shared::tls::TlsFiles::new(&pair.cert, &pair.key));
            join(&mut c, &me);
            c.cluster.peers = urls.clone();
            c.cluster.ca_file = (i < 2).then(|| ca.pem.clone());
            edge::start_with_sockets(c, dir, berth_edge::listener::Sockets { http: None, https: Some(socket) })
        })
        .collect();
    let names: Vec<&str> = urls.iter().map(String::as_str).collect();
    let (digest, body) = blob_owned_by(&origin, &names, 0);
    let path = format!("/v2/{REPO}/blobs/{digest}");
    // Edge 1 fills from the owner over TLS: the origin is asked once, by the owner.
    pull(&edges[1], &digest, &body).await;
    assert_eq!(edges[0].metric(r#"berth_edge_peer_requests_total{result="served""#).await, 1.0);
    assert_eq!(edges[1].metric("berth_edge_peer_failures_total").await, 0.0);
    assert_eq!(origin.count("GET", &path), 1);
    // Edge 2 cannot verify its peers' certificates: they count as failed, and the pull still
    // succeeds from the origin.
    pull(&edges[2], &digest, &body).await;
    assert!(edges[2].metric("berth_edge_peer_failures_total").await >= 1.0, "an unverified peer is not used");
    assert_eq!(
        edges[0].metric(r#"berth_edge_peer_requests_total{result="served""#).await,
        1.0,
        "no request got through"
    );
    assert_eq!(origin.count("GET", &path), 2);
}

#[tokio::test]
async fn a_drained_owner_answers_its_peers_503_and_the_next_owner_fills() {
    let origin = Origin::start().await;
    let body = random_bytes(200 << 10);
    let digest = origin.put_blob(REPO, body.clone());
    let edges = region(&origin, 3);
    let rank = owner_rank(&edges, &digest);
    let r = client::send(http::Method::POST, &format!("{}/api/v1/drain", edges[rank[0]].admin_url()), &[], "").await;
    assert_eq!(r.status, 200, "drained");
    pull(&edges[rank[2]], &digest, &body).await;
    let refused = edges[rank[0]].metric(r#"berth_edge_peer_requests_total{result="refused""#).await;
    assert_eq!(refused, 1.0, "the drained owner answered 503");
    let served = edges[rank[1]].metric(r#"berth_edge_peer_requests_total{result="served""#).await;
    assert_eq!(served, 1.0, "the next owner filled it");
    assert_eq!(origin.count("GET", &format!("/v2/{REPO}/blobs/{digest}")), 1);
}

#[tokio::test]
async fn a_prefetch_that_joins_a_client_fill_left_to_the_owner_keeps_the_blob() {
    use berth_shared::manifest::OCI_MANIFEST;
    let origin = Origin::start().await;
    let edges = region(&origin, 2);
    let config = origin.put_blob(REPO, br#"{"architecture":"amd64","os":"linux"}"#.to_vec());
    let (layer, body) = loop {
        let body = random_bytes(2 << 20);
        let digest = origin.put_blob(REPO, body.clone());
        if owner_rank(&edges, &digest)[0] == 0 {
            break (digest, body);
        }
    };
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":37}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{}}}]}}"#,
        body.len()
    );
    origin.put_manifest(REPO, Some("v1"), OCI_MANIFEST, manifest);
    let path = format!("/v2/{REPO}/blobs/{layer}");
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    origin.fault(&path, Fault::Gate { after: 1 << 20, gate: gate.clone(), corrupt: false });
    // A client of edge 1 starts a fill of a blob edge 0 owns (not kept at edge 1: pulled once).
    let reading = client::open(&format!("{}{path}", edges[1].url()), &[]).await;
    origin.wait_holding(&path, 1).await;
    // A prefetch at edge 1 joins that fill.
    let r = client::send(
        http::Method::POST,
        &format!("{}/api/v1/prefetch", edges[1].admin_url()),
        &[("Content-Type", "application/json")],
        format!(r#"{{"images":["docker.io/{REPO}:v1"]}}"#),
    )
    .await;
    assert_eq!(r.status, 202);
    let id = r.json()["id"].as_str().unwrap().to_owned();
    let fills = std::sync::Arc::clone(&edges[1].running().state.fills);
    berth_tests::eventually("the prefetch follows the client's fill", std::time::Duration::from_secs(10), || {
        fills.readers(&layer) == 2
    })
    .await;
    gate.notify_waiters();
    assert_eq!(reading.finish().await.expect("the client's pull").as_ref(), body.as_slice());
    let mut status = serde_json::Value::Null;
    for _ in 0..1000 {
        status = client::get(&format!("{}/api/v1/prefetch/{id}", edges[1].admin_url())).await.json();
        if status["state"] != "running" && status["state"] != "queued" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(status["state"], "done", "{status}");
    assert!(holds(&edges[1], layer), "the prefetch filled it again and kept it");
    assert_eq!(origin.count("GET", &path), 1, "the second fill came from the owner");
}
