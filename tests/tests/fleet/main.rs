//! End-to-end fleet tests: Debian's docker-registry as the origin, the real distributor, and
//! real edges in two regions; berthctl and the HTTP API drive them.

use std::path::Path;
use std::time::Duration;

use berth_tests::client;
use berth_tests::edge::EdgeProcess;
use berth_tests::fleet::{berthctl, edge_config, listener, start_edge, DistributorProcess, ADMIN_TOKEN};
use berth_tests::registry::{oci_layout, oci_multi_platform_layout, random_bytes, DockerRegistry};
use berth_tests::tools::{have, skopeo};
use http::Method;

/// Runs each named fleet test twice: with its distributors on the embedded store
/// (`<name>::on_redb`) and on a real PostgreSQL (`<name>::on_postgres`).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn on_redb() {
                super::$name().await
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn on_postgres() {
                berth_tests::fleet::on_postgres(super::$name()).await
            }
        }
    )*};
}

mod analytics;
mod api;
mod dns;
mod hooks;
mod page;
mod replicas;
mod tls;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

struct Fleet {
    work: tempfile::TempDir,
    registry: DockerRegistry,
    distributor: DistributorProcess,
    /// The distributor's address, bound for the whole test (kept across its restarts).
    listener: std::net::TcpListener,
    a: EdgeProcess,
    b: EdgeProcess,
}

impl Fleet {
    fn start() -> Fleet {
        for tool in ["docker-registry", "skopeo"] {
            assert!(have(tool), "{tool} is required (apt-get install {tool})");
        }
        let work = tempfile::tempdir().unwrap();
        let registry = DockerRegistry::start(&work.path().join("registry"));
        let listener = listener();
        let distributor =
            DistributorProcess::start(work.path(), &listener, 10_000, &work.path().join("distributor.log"));
        let a = start_edge(
            &edge_config(work.path(), "edge-a", "region-a", &distributor.url(), &registry.url()),
            &work.path().join("a.log"),
        );
        let b = start_edge(
            &edge_config(work.path(), "edge-b", "region-b", &distributor.url(), &registry.url()),
            &work.path().join("b.log"),
        );
        Fleet { work, registry, distributor, listener, a, b }
    }

    fn path(&self) -> &Path {
        self.work.path()
    }

    /// Pushes an image; returns its blobs as the registry stores them (config first).
    async fn push(&self, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
        let layout = self.path().join(format!("layout-{}-{tag}-{}", repo.replace('/', "-"), rand_suffix()));
        oci_layout(&layout, tag, layers);
        skopeo(&[
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/{repo}:{tag}", self.registry.addr),
        ]);
        self.registry.blobs_of(repo, tag).await.remove(0).1
    }

    fn ctl(&self, args: &[&str]) -> (i32, String) {
        berthctl(&self.distributor.url(), args)
    }

    /// Pulls through an edge with skopeo.
    fn pull(&self, edge: &EdgeProcess, image: &str) {
        let dest = self.path().join(format!("pull-{}", rand_suffix()));
        skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{}/{image}", edge.http()),
            &format!("oci:{}:x", dest.display()),
        ]);
    }
}

fn rand_suffix() -> u64 {
    rand::random()
}

/// The edge's applied policy version, from its metrics.
async fn applied(edge: &EdgeProcess) -> f64 {
    let m = client::get(&format!("http://{}/metrics", edge.admin)).await;
    berth_tests::edge::metric_value(&String::from_utf8_lossy(m.bytes()), "berth_edge_policy_version")
}

async fn wait_applied(edge: &EdgeProcess, version: u64) {
    for _ in 0..2000 {
        if applied(edge).await >= version as f64 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("edge did not apply policy version {version}");
}

/// Requests `url` until the edge answers it from its cache (fills publish just after serving):
/// a purge test that checked a blob never cached would pass with nothing to purge.
async fn wait_for_hit(url: &str) {
    for _ in 0..2000 {
        if client::get(url).await.header("x-berth-cache") == Some("hit") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{url} was never served from the cache");
}

/// The version number in berthctl's "(policy version N)" output.
fn version_in(output: &str) -> u64 {
    output
        .split("policy version ")
        .nth(1)
        .and_then(|s| s.trim_end_matches([')', '\n']).split(')').next()?.parse().ok())
        .expect("policy version in output")
}

async fn a_prefetch_to_region_a_warms_a_and_not_b_and_reaches_edges_that_join_later() {
    let fleet = Fleet::start();
    fleet.push("demo/app", "v1", &[random_bytes(1 << 20), random_bytes(2 << 20)]).await;
    let (code, out) = fleet.ctl(&["prefetch", "registry.test/demo/app:v1", "--region", "region-a", "--wait"]);
    assert_eq!(code, 0, "prefetch --wait must succeed:\n{out}");
    assert!(out.contains("region-a") && out.contains("done"), "progress shown:\n{out}");
    let (code, edges) = fleet.ctl(&["edges"]);
    assert_eq!(code, 0, "{edges}");
    for (edge, region) in [("edge-a", "region-a"), ("edge-b", "region-b")] {
        assert!(
            edges.lines().any(|l| l.starts_with(edge) && l.contains(region)),
            "berthctl edges lists {edge}:\n{edges}"
        );
    }
    let (code, jobs) = fleet.ctl(&["jobs"]);
    assert_eq!(code, 0, "{jobs}");
    assert!(jobs.lines().any(|l| l.starts_with("pf-") && l.contains("done")), "berthctl jobs lists the job:\n{jobs}");

    let before = fleet.registry.blob_gets("demo/app");
    fleet.pull(&fleet.a, "demo/app:v1");
    assert_eq!(fleet.registry.blob_gets("demo/app"), before, "region A was warm: no blob fetched from the origin");
    fleet.pull(&fleet.b, "demo/app:v1");
    assert!(fleet.registry.blob_gets("demo/app") > before, "region B was not prefetched");

    // An edge joining region A later gets the order from the log.
    let a2 = start_edge(
        &edge_config(fleet.path(), "edge-a2", "region-a", &fleet.distributor.url(), &fleet.registry.url()),
        &fleet.path().join("a2.log"),
    );
    let jobs = client::request(
        Method::GET,
        &format!("{}/api/v1/jobs", fleet.distributor.url()),
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
    )
    .await;
    let id = jobs.json()[0]["id"].as_str().unwrap().to_owned();
    let mut done = false;
    for _ in 0..1000 {
        let s = client::request(
            Method::GET,
            &format!("{}/api/v1/prefetch/{id}", fleet.distributor.url()),
            &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .await
        .json();
        let edges = s["by_region"]["region-a"]["edges"].as_array().map_or(0, |e| e.len());
        if edges == 2 && s["state"] == "done" {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(done, "the job covers the new edge and completes");
    let before = fleet.registry.blob_gets("demo/app");
    fleet.pull(&a2, "demo/app:v1");
    assert_eq!(fleet.registry.blob_gets("demo/app"), before, "the late edge was warmed by the order");
}

async fn a_platform_filter_warms_only_that_platform() {
    let fleet = Fleet::start();
    let layout = fleet.path().join("multi");
    oci_multi_platform_layout(
        &layout,
        "v1",
        &[("amd64", vec![random_bytes(300 << 10)]), ("arm64", vec![random_bytes(300 << 10)])],
    );
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/multi/app:v1", fleet.registry.addr),
    ]);
    let per_arch = fleet.registry.blobs_of("multi/app", "v1").await;
    assert_eq!(per_arch.len(), 2, "a two-platform index");
    let (code, out) = fleet.ctl(&[
        "prefetch",
        "registry.test/multi/app:v1",
        "--region",
        "region-a",
        "--platform",
        "linux/arm64",
        "--wait",
    ]);
    assert_eq!(code, 0, "{out}");
    for (arch, digests) in &per_arch {
        for d in digests {
            let gets = fleet.registry.gets_of("multi/app", d);
            match arch.as_str() {
                "arm64" => assert_eq!(gets, 1, "arm64 blob {d} prefetched once"),
                _ => assert_eq!(gets, 0, "amd64 blob {d} not prefetched"),
            }
        }
    }
}

async fn a_retag_with_a_tag_invalidation_is_served_at_once_and_a_digest_purge_removes_the_blob() {
    let fleet = Fleet::start();
    fleet.push("demo/retag", "v1", &[random_bytes(100 << 10)]).await;
    let url = format!("{}/v2/demo/retag/manifests/v1", fleet.a.url());
    let first = client::request(Method::GET, &url, &[("Accept", OCI_MANIFEST)]).await;
    let old = first.header("docker-content-digest").unwrap().to_owned();
    let layers = fleet.push("demo/retag", "v1", &[random_bytes(100 << 10)]).await;
    let cached = client::request(Method::GET, &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(cached.header("docker-content-digest"), Some(old.as_str()), "within tag_ttl the old mapping is served");

    let (code, out) = fleet.ctl(&["invalidate", "--repository", "demo/retag", "--tag", "v1", "--region", "region-a"]);
    assert_eq!(code, 0, "{out}");
    wait_applied(&fleet.a, version_in(&out)).await;
    let fresh = client::request(Method::GET, &url, &[("Accept", OCI_MANIFEST)]).await;
    assert_eq!(fresh.status, 200);
    let at_origin = format!("{}/v2/demo/retag/manifests/v1", fleet.registry.url());
    let at_origin = client::request(Method::HEAD, &at_origin, &[("Accept", OCI_MANIFEST)]).await;
    let new = at_origin.header("docker-content-digest").expect("origin digest").to_owned();
    assert_ne!(new, old);
    assert_eq!(fresh.header("docker-content-digest"), Some(new.as_str()), "the new digest is served at once");
    assert_eq!(berth_shared::Digest::of(fresh.bytes()).to_string(), new, "with the new manifest's bytes");

    // Purge a blob: the next request is a miss again.
    let blob = format!("{}/v2/demo/retag/blobs/{}", fleet.a.url(), layers[1]);
    client::get(&blob).await.bytes();
    wait_for_hit(&blob).await;
    let (code, out) = fleet.ctl(&["invalidate", "--repository", "demo/retag", "--digest", &layers[1]]);
    assert_eq!(code, 0, "{out}");
    wait_applied(&fleet.a, version_in(&out)).await;
    assert_eq!(client::get(&blob).await.header("x-berth-cache"), Some("miss"), "purged from every tier");
}

async fn edges_resume_after_a_distributor_restart_and_an_edge_that_was_down_applies_events_before_serving() {
    let mut fleet = Fleet::start();
    let layers = fleet.push("demo/down", "v1", &[random_bytes(100 << 10)]).await;
    let blob_path = format!("/v2/demo/down/blobs/{}", layers[1]);
    client::get(&format!("{}{blob_path}", fleet.b.url())).await.bytes();
    wait_for_hit(&format!("{}{blob_path}", fleet.b.url())).await;
    let cached = fleet.path().join(format!("edge-b-cache/blobs/sha256/{}", &layers[1][7..9]));
    // A hit can come from the verified fill a moment before its file is renamed into place.
    let file = cached.join(&layers[1][7..]);
    berth_tests::eventually("on disk before the restart", Duration::from_secs(10), || file.exists()).await;

    // The distributor restarts on its store; the edges reconnect and miss nothing.
    fleet.distributor.kill();
    fleet.distributor =
        DistributorProcess::start(fleet.path(), &fleet.listener, 10_000, &fleet.path().join("distributor2.log"));
    let mut last = 0;
    for i in 0..3 {
        let (code, out) = fleet.ctl(&["invalidate", "--repository", &format!("demo/other{i}")]);
        assert_eq!(code, 0, "{out}");
        let v = version_in(&out);
        assert!(v > last, "versions only move forward across restarts");
        last = v;
    }
    wait_applied(&fleet.a, last).await;
    wait_applied(&fleet.b, last).await;

    // Edge B is down while its blob is purged; it applies that before serving again.
    fleet.b.kill();
    let (code, out) =
        fleet.ctl(&["invalidate", "--repository", "demo/down", "--digest", &layers[1], "--region", "region-b"]);
    assert_eq!(code, 0, "{out}");
    let purge_version = version_in(&out);
    fleet.b = start_edge(&fleet.path().join("edge-b.toml"), &fleet.path().join("b2.log"));
    assert!(!cached.join(&layers[1][7..]).exists(), "the purge deleted the file before the edge served");
    let r = client::get(&format!("{}{blob_path}", fleet.b.url())).await;
    assert_eq!(r.header("x-berth-cache"), Some("miss"), "the purge was applied before the first request");
    assert!(applied(&fleet.b).await >= purge_version as f64);
    let persisted = std::fs::read_to_string(fleet.path().join("edge-b-cache/policy-version")).unwrap();
    assert!(persisted.trim().parse::<u64>().unwrap() >= purge_version, "the applied version is persisted");
}

async fn an_unknown_image_fails_the_job_clearly() {
    let fleet = Fleet::start();
    let (code, out) = fleet.ctl(&["prefetch", "registry.test/does/not-exist:v9", "--wait", "--timeout", "60"]);
    assert_eq!(code, 1, "a failed job exits 1:\n{out}");
    for edge in ["region-a/edge-a", "region-b/edge-b"] {
        let line = format!("{edge}: registry.test/does/not-exist:v9: MANIFEST_UNKNOWN (404)");
        assert!(out.contains(&line), "each edge's error reaches the pipeline:\n{out}");
    }
}

async fn a_quarantined_digest_is_refused_by_every_edge_across_restarts_until_lifted() {
    let mut fleet = Fleet::start();
    let blobs = fleet.push("demo/bad", "v1", &[random_bytes(80 << 10)]).await;
    let layer = blobs[1].clone();
    let blob_path = format!("/v2/demo/bad/blobs/{layer}");
    for edge in [&fleet.a, &fleet.b] {
        client::get(&format!("{}{blob_path}", edge.url())).await.bytes();
        wait_for_hit(&format!("{}{blob_path}", edge.url())).await;
    }
    let manifest_url = |edge: &EdgeProcess| format!("{}/v2/demo/bad/manifests/v1", edge.url());
    let manifest = client::request(Method::GET, &manifest_url(&fleet.a), &[("Accept", OCI_MANIFEST)]).await;
    let manifest_digest = manifest.header("docker-content-digest").unwrap().to_owned();

    let (code, out) = fleet.ctl(&["quarantine", &layer, "--reason", "CVE-2026-0001 in libfoo"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = fleet.ctl(&["quarantine", &manifest_digest, "--reason", "image withdrawn"]);
    assert_eq!(code, 0, "{out}");
    let version = version_in(&out);
    for edge in [&fleet.a, &fleet.b] {
        wait_applied(edge, version).await;
        let r = client::get(&format!("{}{blob_path}", edge.url())).await;
        assert_eq!((r.status, r.error_code().as_str()), (403, "DENIED"), "the cached blob is refused");
        assert!(String::from_utf8_lossy(r.bytes()).contains("CVE-2026-0001 in libfoo"), "the reason is named");
        let by_tag = client::request(Method::GET, &manifest_url(edge), &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(by_tag.status, 403, "the manifest is refused by tag");
        let head = client::request(Method::HEAD, &format!("{}{blob_path}", edge.url()), &[]).await;
        assert_eq!(head.status, 403, "and by HEAD");
    }
    let (code, out) = fleet.ctl(&["quarantined"]);
    assert!(code == 0 && out.contains(&layer) && out.contains("image withdrawn"), "{out}");

    // Restarted, the edge resumes after the quarantine events: the refusal comes from its disk.
    fleet.a.kill();
    fleet.a = start_edge(&fleet.path().join("edge-a.toml"), &fleet.path().join("a2.log"));
    let r = client::get(&format!("{}{blob_path}", fleet.a.url())).await;
    assert_eq!(r.status, 403, "refused across a restart");

    let (code, out) = fleet.ctl(&["lift", &layer]);
    assert_eq!(code, 0, "{out}");
    let version = version_in(&out);
    for edge in [&fleet.a, &fleet.b] {
        wait_applied(edge, version).await;
        let r = client::get(&format!("{}{blob_path}", edge.url())).await;
        assert_eq!(r.status, 200, "served again once lifted");
        assert_eq!(berth_shared::Digest::of(r.bytes()).to_string(), layer);
        let by_tag = client::request(Method::GET, &manifest_url(edge), &[("Accept", OCI_MANIFEST)]).await;
        assert_eq!(by_tag.status, 403, "the manifest stays quarantined");
    }
    let (code, out) = fleet.ctl(&["quarantine", &layer, "--reason", ""]);
    assert_ne!(code, 0, "a quarantine without a reason is refused: {out}");
}

async fn berthctl_drain_takes_one_edge_out_of_rotation_and_undrain_puts_it_back() {
    let fleet = Fleet::start();
    let ready = |edge: &EdgeProcess| {
        let url = format!("http://{}/readyz", edge.admin);
        async move { client::get(&url).await.status }
    };
    assert_eq!((ready(&fleet.a).await, ready(&fleet.b).await), (200, 200));
    let (code, out) = fleet.ctl(&["drain", "edge-a"]);
    assert_eq!(code, 0, "{out}");
    let version = version_in(&out);
    wait_applied(&fleet.a, version).await;
    wait_applied(&fleet.b, version).await;
    assert_eq!(ready(&fleet.a).await, 503, "the named edge is drained");
    assert_eq!(ready(&fleet.b).await, 200, "the other is not");
    let (code, out) = fleet.ctl(&["undrain", "edge-a"]);
    assert_eq!(code, 0, "{out}");
    wait_applied(&fleet.a, version_in(&out)).await;
    assert_eq!(ready(&fleet.a).await, 200);
    let (code, out) = fleet.ctl(&["drain", "bad node id!"]);
    assert_ne!(code, 0, "{out}");
}

on_both_stores!(
    a_prefetch_to_region_a_warms_a_and_not_b_and_reaches_edges_that_join_later,
    a_platform_filter_warms_only_that_platform,
    a_retag_with_a_tag_invalidation_is_served_at_once_and_a_digest_purge_removes_the_blob,
    edges_resume_after_a_distributor_restart_and_an_edge_that_was_down_applies_events_before_serving,
    an_unknown_image_fails_the_job_clearly,
    a_quarantined_digest_is_refused_by_every_edge_across_restarts_until_lifted,
    berthctl_drain_takes_one_edge_out_of_rotation_and_undrain_puts_it_back
);
