//! Real clients pull through the real `berth-edge` binary, configured the way users configure
//! them: podman (a registries.conf mirror), containerd (hosts.toml mirrors) and Docker
//! (`registry-mirrors`). A client whose mirror fails falls back to the origin without a word and
//! still exits 0, so exit codes prove nothing: the origin's access log does. Every blob must
//! reach the origin once, fetched by the edge (its user agent), never by the client; and a second
//! pull by a client that has nothing must not reach the origin for any blob.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_tests::clients::{run_within, Containerd, Dockerd, Podman};
use berth_tests::edge::{metric_value, EdgeProcess};
use berth_tests::registry::{tar_image_layout, DockerRegistry};
use berth_tests::tools::{have, skopeo, RefusingPort};

const EDGE_AGENT: &str = "berth-edge/";

/// Whether `test` can run here (its tools installed; root for the daemons); records a skip if not.
fn can_run(test: &str, tools: &[&str], needs_root: bool) -> bool {
    let mut tools = tools.to_vec();
    tools.extend(["docker-registry", "skopeo"]);
    if let Some(missing) = tools.iter().find(|t| !have(t)) {
        berth_tests::skip(test, &format!("{missing} is not installed (scripts/test installs it)"));
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if needs_root && unsafe { libc::geteuid() } != 0 {
        berth_tests::skip(test, "the containerd and dockerd daemons need root");
        return false;
    }
    true
}

/// The origin (Debian's docker-registry), the edge binary in front of it under two upstream
/// names (`docker.io`, the default, and the origin's own `127.0.0.1:<port>`), and the refusing
/// port the clients' proxy settings name. Fields drop in order: processes before the folder.
struct Setup {
    edge: EdgeProcess,
    origin: DockerRegistry,
    proxy: RefusingPort,
    work: tempfile::TempDir,
}

impl Setup {
    fn start() -> Setup {
        let work = tempfile::tempdir().unwrap();
        let origin = DockerRegistry::start(&work.path().join("origin"));
        let config = work.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "region = \"e2e\"\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\ndisk_max = \"1GiB\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{url}\"\ndefault = true\n[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\n",
                work.path().join("edge-cache").display().to_string(),
                url = origin.url(),
                name = origin.addr,
            ),
        )
        .unwrap();
        // At debug the edge logs a line per request with the raw `ns` the client sent.
        let edge = EdgeProcess::start_with_env(
            &config,
            &work.path().join("edge.log"),
            &[("BERTH_LOG", "info,berth_edge=debug")],
        );
        Setup { edge, origin, proxy: RefusingPort::new(), work }
    }

    fn dir(&self, name: &str) -> std::path::PathBuf {
        self.work.path().join(name)
    }

    /// Pushes a one-layer image of fresh content as `repo:v1`; returns its blobs (config, layer).
    fn push(&self, repo: &str) -> Vec<String> {
        let layout = self.dir(&format!("layout-{}", repo.replace('/', "-")));
        let blobs = tar_image_layout(&layout, "v1", 1);
        let dest = format!("docker://{}/{repo}:v1", self.origin.addr);
        skopeo(&[
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", layout.display()),
            &dest,
        ]);
        blobs
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = berth_tests::client::get(&format!("http://{}/metrics", self.edge.admin)).await;
        metric_value(&String::from_utf8_lossy(text.bytes()), series)
    }

    /// Waits (bounded: the edge counts a request just after answering it) until `series` reaches
    /// `expected`, and checks it does not go past it.
    async fn expect_metric(&self, series: &str, expected: f64, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(series).await;
            if value >= expected {
                assert_eq!(value, expected, "{why}: {series}");
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{why}: {series} is {value}, expected {expected}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Pulls `repo:v1` twice with `pull`, given the name of a fresh client state each time.
    /// Cold: each blob reaches the origin exactly once, fetched by the edge through `upstream`,
    /// and the client (`agent`) never reaches the origin; the edge counts one miss per blob.
    /// Warm: no new origin blob request; the edge counts one hit per blob.
    async fn assert_served_by_the_edge(
        &self,
        repo: &str,
        blobs: &[String],
        (agent, upstream): (&str, &str),
        mut pull: impl FnMut(&str),
    ) {
        let misses = "berth_edge_requests_total{kind=\"blob\",outcome=\"miss\"";
        let hits = "berth_edge_requests_total{kind=\"blob\",outcome=\"hit\"";
        let fetched = format!("berth_edge_upstream_requests_total{{request=\"blob\",upstream=\"{upstream}\"");
        let n = blobs.len() as f64;
        let (misses_before, hits_before) = (self.metric(misses).await, self.metric(hits).await);
        let fetched_before = self.metric(&fetched).await;
        pull("cold");
        self.assert_origin_saw(repo, blobs, agent, "cold").await;
        self.expect_metric(misses, misses_before + n, "the cold pull's blobs were edge misses").await;
        self.expect_metric(&fetched, fetched_before + n, "the edge fetched them through the upstream named").await;
        pull("warm");
        self.assert_origin_saw(repo, blobs, agent, "warm").await;
        self.expect_metric(hits, hits_before + n, "the warm pull's blobs were edge hits").await;
    }

    /// The origin served each of the blobs once in all, to the edge, and nothing to `agent`.
    async fn assert_origin_saw(&self, repo: &str, blobs: &[String], agent: &str, pull: &str) {
        self.origin.sync_log().await;
        let log = || self.origin.access_log();
        let by_client = self.origin.access_count("/v2/", agent);
        assert_eq!(by_client, 0, "{pull} pull: the client reached the origin itself (a silent fallback):\n{}", log());
        let all = self.origin.access_count(&format!("GET /v2/{repo}/blobs/"), "");
        assert_eq!(all, blobs.len(), "{pull} pull: origin blob GETs of {repo}, expected one per blob:\n{}", log());
        for blob in blobs {
            let by_edge = self.origin.access_count(&format!("GET /v2/{repo}/blobs/{blob} "), EDGE_AGENT);
            assert_eq!(by_edge, 1, "{pull} pull: {blob} was not fetched by the edge:\n{}", log());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn podman_pulls_through_a_registries_conf_mirror_and_the_edge_serves_it() {
    if !can_run("podman_pulls_through_a_registries_conf_mirror_and_the_edge_serves_it", &["podman"], false) {
        return;
    }
    let setup = Setup::start();
    let blobs = setup.push("podman/app");
    let podman = Podman::new(&setup.dir("podman"), setup.edge.http(), setup.proxy.addr);
    setup
        .assert_served_by_the_edge("podman/app", &blobs, ("containers/", "docker.io"), |state| {
            podman.pull("docker.io/podman/app:v1", state);
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_through_a_hosts_toml_mirror_for_docker_io_and_for_a_registry_with_a_port() {
    let test = "containerd_pulls_through_a_hosts_toml_mirror_for_docker_io_and_for_a_registry_with_a_port";
    if !can_run(test, &["containerd", "ctr"], true) {
        return;
    }
    let setup = Setup::start();
    let containerd = Containerd::start(&setup.dir("containerd"), setup.proxy.addr);
    let hosts = setup.dir("hosts");
    let origin_name = setup.origin.addr.to_string();
    Containerd::mirror(&hosts, "docker.io", "https://registry-1.docker.io", setup.edge.http());
    Containerd::mirror(&hosts, &origin_name, &setup.origin.url(), setup.edge.http());

    let hub = setup.push("ctr/hub");
    setup
        .assert_served_by_the_edge("ctr/hub", &hub, ("containerd/", "docker.io"), |state| {
            containerd.pull(&hosts, "docker.io/ctr/hub:v1", &format!("hub-{state}"));
        })
        .await;

    // containerd names this registry as `ns=127.0.0.1%3A<port>`: the edge must decode it to
    // find the upstream, or it answers 404 and containerd goes to the origin itself.
    let port = setup.push("ctr/port");
    setup
        .assert_served_by_the_edge("ctr/port", &port, ("containerd/", &origin_name), |state| {
            containerd.pull(&hosts, &format!("{origin_name}/ctr/port:v1"), &format!("port-{state}"));
        })
        .await;
    let raw_ns = format!("ns=\"{}\"", origin_name.replace(':', "%3A"));
    assert_log_contains(&setup.edge.log, &raw_ns).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_pulls_through_registry_mirrors_and_the_edge_serves_it() {
    if !can_run(
        "docker_pulls_through_registry_mirrors_and_the_edge_serves_it",
        &["containerd", "dockerd", "docker"],
        true,
    ) {
        return;
    }
    let setup = Setup::start();
    let containerd = Containerd::start(&setup.dir("containerd"), setup.proxy.addr);
    let blobs = setup.push("dockertest/app");
    setup
        .assert_served_by_the_edge("dockertest/app", &blobs, ("docker/", "docker.io"), |state| {
            // A fresh daemon each time: its own data root and containerd namespace.
            let dir = setup.dir(&format!("docker-{state}"));
            let dockerd =
                Dockerd::start(&dir, &containerd, &format!("moby-{state}"), setup.edge.http(), setup.proxy.addr);
            dockerd.pull("dockertest/app:v1");
        })
        .await;
}

#[test]
fn a_client_command_that_outlives_its_limit_is_killed_with_its_children() {
    let started = std::time::Instant::now();
    let hung = std::panic::catch_unwind(|| {
        // The background sleep holds the output pipe: only killing the whole group ends it.
        run_within(Command::new("sh").args(["-c", "echo started; sleep 30 & wait"]), Duration::from_millis(300))
    });
    let message = *hung.expect_err("a hung command must fail the test").downcast::<String>().unwrap();
    assert!(message.contains("was killed") && message.contains("started"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "the group was not killed: {:?}", started.elapsed());
}

/// Waits (bounded: the log is copied from the edge's output by a thread) for `needle` in `log`.
async fn assert_log_contains(log: &Path, needle: &str) {
    let limit = Duration::from_secs(10);
    berth_tests::eventually(&format!("{needle} in {}", log.display()), limit, || {
        std::fs::read_to_string(log).unwrap_or_default().contains(needle)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_through_either_edge_of_a_region_over_https_with_credentials_and_the_origin_serves_each_blob_once(
) {
    let test = "containerd_pulls_through_either_edge_of_a_region_over_https_with_credentials";
    if !can_run(test, &["containerd", "ctr"], true) {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let origin = DockerRegistry::start(&work.path().join("origin"));
    let layout = work.path().join("layout");
    let blobs = tar_image_layout(&layout, "v1", 6);
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/ctr/region:v1", origin.addr),
    ]);
    // Two edges of one region, each listing the other (their sockets bound first, so each
    // config can name the other's URL); clients reach them over HTTPS, as users of htpasswd.
    let key = work.path().join("region.key");
    std::fs::write(&key, "the-region-key-of-the-containerd-test").unwrap();
    let htpasswd = work.path().join("users.htpasswd");
    berth_tests::write_htpasswd(&htpasswd, &[("alice", "alice-pw")]);
    let ca = berth_tests::pki::TestCa::new(&work.path().join("pki"));
    let sockets: Vec<std::net::TcpListener> =
        (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let urls: Vec<String> = sockets.iter().map(|s| format!("http://{}", s.local_addr().unwrap())).collect();
    let edges: Vec<berth_tests::edge::TestEdge> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, socket)| {
            let pair = ca.issue(&work.path().join("pki"), &format!("edge-{i}"));
            berth_tests::edge::start_on(socket, &[("docker.io", &origin.url())], "", |c| {
                c.listen.https = "127.0.0.1:0".parse().ok();
                c.tls = Some(berth_shared::tls::TlsFiles::new(&pair.cert, &pair.key));
                c.upstream[0].access = Some(berth_edge::config::AccessMode::Htpasswd);
                c.upstream[0].htpasswd_file = Some(htpasswd.clone());
                c.upstream[0].grants.insert("alice".into(), vec!["ctr/**".into()]);
                c.cluster.key_file = Some(key.clone());
                c.cluster.advertise = Some(urls[i].clone());
                c.cluster.peers = vec![urls[1 - i].clone()];
            })
        })
        .collect();
    let proxy = RefusingPort::new();
    let containerd = Containerd::start(&work.path().join("containerd"), proxy.addr);
    let image = "docker.io/ctr/region:v1";
    // A cluster's node pulls through edge 0, another through edge 1 (as DNS would spread them).
    for (i, edge) in edges.iter().enumerate() {
        let hosts = work.path().join(format!("hosts-{i}"));
        let https = edge.running().https_addr.expect("the TLS listener");
        Containerd::mirror_tls(&hosts, "docker.io", "https://registry-1.docker.io", https, &ca.pem);
        let refused = containerd.pull_as(&hosts, image, &format!("wrong-{i}"), "alice:not-her-password");
        assert!(!refused.status.success(), "a wrong password pulls nothing: {}", refused.output);
        let ran = containerd.pull_as(&hosts, image, &format!("node-{i}"), "alice:alice-pw");
        assert!(ran.status.success(), "ctr pull through edge {i}: {}", ran.output);
    }
    origin.sync_log().await;
    let log = origin.access_log();
    assert_eq!(origin.access_count("/v2/", "containerd/"), 0, "containerd reached the origin itself:\n{log}");
    for blob in &blobs {
        let fetched = origin.access_count(&format!("GET /v2/ctr/region/blobs/{blob} "), EDGE_AGENT);
        assert_eq!(fetched, 1, "{blob}: once for the region, by its owner:\n{log}");
    }
    // Each blob the pulling edge did not own came from the other edge: 7 blobs over two pulls.
    let mut served = 0.0;
    for edge in &edges {
        served += edge.metric(r#"berth_edge_peer_requests_total{result="served""#).await;
    }
    assert_eq!(served, blobs.len() as f64, "every blob crossed the region once");
}
