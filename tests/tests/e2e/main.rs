//! End-to-end: Debian's `docker-registry` as the origin, the real `berth-edge` binary, and
//! `skopeo` as the client; in `clients`, podman, containerd and Docker. Needs docker-registry and
//! skopeo (the README's test command installs them, and the clients; a test whose client is
//! missing records a skip).

mod clients;
mod crash;
mod deploy;
mod drain;
mod image;
mod lab;
mod observability;
mod private;

use std::path::Path;

use berth_tests::client;
use berth_tests::edge::EdgeProcess;
use berth_tests::registry::{oci_layout, random_bytes, DockerRegistry};
use berth_tests::tools::{have, skopeo};
use sha2::{Digest as _, Sha256};

fn require_tools() {
    for tool in ["docker-registry", "skopeo"] {
        assert!(have(tool), "{tool} is required for the end-to-end tests (apt-get install {tool})");
    }
}

/// Pushes an image made of `layers` to the registry as `repo:tag`.
fn push_image(work: &Path, registry: &DockerRegistry, repo: &str, tag: &str, layers: &[Vec<u8>]) {
    let layout = work.join(format!("layout-{}", repo.replace('/', "-")));
    oci_layout(&layout, tag, layers);
    let src = format!("oci:{}:{tag}", layout.display());
    let dest = format!("docker://{}/{repo}:{tag}", registry.addr);
    skopeo(&["copy", "--dest-tls-verify=false", &src, &dest]);
}

/// Writes an edge config (ports picked by the OS) and starts the real binary.
fn start_edge(work: &Path, registry_url: &str, name: &str) -> EdgeProcess {
    let config = work.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "region = \"e2e\"\n[listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n[server]\nthreads = 2\ngrace_period = \"0s\"\n[cache]\ndir = {:?}\ndisk_max = \"2GiB\"\n[[upstream]]\nname = \"docker.io\"\nurl = \"{registry_url}\"\ndefault = true\n",
            work.join("edge-cache").display().to_string()
        ),
    )
    .unwrap();
    EdgeProcess::start(&config, &work.join(format!("{name}.log")))
}

/// The files of an OCI layout's blob folder, by name, with their contents' digests.
fn blob_set(layout: &Path) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            (e.file_name().to_string_lossy().into_owned(), hex::encode(Sha256::digest(&bytes)))
        })
        .collect();
    out.sort();
    out
}

fn pull(src: &str, dest: &Path) {
    skopeo(&["copy", "--src-tls-verify=false", src, &format!("oci:{}:pulled", dest.display())]);
}

#[tokio::test(flavor = "multi_thread")]
async fn skopeo_pulls_a_multi_layer_image_cold_then_warm_byte_exact_with_one_origin_fetch_per_blob() {
    require_tools();
    let work = tempfile::tempdir().unwrap();
    let mut registry = DockerRegistry::start(&work.path().join("registry"));
    let layers: Vec<Vec<u8>> = [1usize, 3, 2].iter().map(|mib| random_bytes(mib << 20)).collect();
    push_image(work.path(), &registry, "demo/app", "v1", &layers);

    let direct = work.path().join("direct");
    pull(&format!("docker://{}/demo/app:v1", registry.addr), &direct);
    let per_pull = registry.blob_gets("demo/app");
    assert_eq!(per_pull, 4, "3 layers + config");

    let edge = start_edge(work.path(), &registry.url(), "edge");
    let cold = work.path().join("cold");
    pull(&format!("docker://{}/demo/app:v1", edge.http()), &cold);
    assert_eq!(blob_set(&cold), blob_set(&direct), "byte-exact through the edge");
    assert_eq!(registry.blob_gets("demo/app"), 2 * per_pull, "the cold pull fetched each blob once");

    let warm = work.path().join("warm");
    pull(&format!("docker://{}/demo/app:v1", edge.http()), &warm);
    assert_eq!(blob_set(&warm), blob_set(&direct));
    assert_eq!(registry.blob_gets("demo/app"), 2 * per_pull, "the warm pull made no blob GET at the origin");

    // A restarted edge still serves what it cached, with the origin gone (by digest: the tag
    // mapping needs the origin).
    let head = client::request(
        http::Method::HEAD,
        &format!("{}/v2/demo/app/manifests/v1", edge.url()),
        &[("Accept", berth_shared::manifest::OCI_MANIFEST), ("Accept", berth_shared::manifest::DOCKER_MANIFEST)],
    )
    .await;
    let digest = head.header("docker-content-digest").expect("manifest digest").to_owned();
    drop(edge);
    registry.stop();
    let edge = start_edge(work.path(), &registry.url(), "restarted");
    let offline = work.path().join("offline");
    pull(&format!("docker://{}/demo/app@{digest}", edge.http()), &offline);
    assert_eq!(blob_set(&offline), blob_set(&direct), "served from the cache without the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_concurrent_cold_gets_of_a_50_mib_blob_reach_the_origin_once() {
    require_tools();
    let work = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start(&work.path().join("registry"));
    push_image(work.path(), &registry, "big/blob", "v1", &[random_bytes(50 << 20)]);
    let raw = skopeo(&["inspect", "--raw", "--tls-verify=false", &format!("docker://{}/big/blob:v1", registry.addr)]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let size = manifest["layers"][0]["size"].as_u64().unwrap();
    assert!(size >= 50 << 20);

    let edge = start_edge(work.path(), &registry.url(), "edge");
    let url = format!("{}/v2/big/blob/blobs/{digest}", edge.url());
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { client::get(&url).await })
        })
        .collect();
    for c in clients {
        let r = c.await.unwrap();
        assert_eq!(r.status, 200);
        let got = format!("sha256:{}", hex::encode(Sha256::digest(r.bytes())));
        assert_eq!(got, digest, "every client gets the right bytes");
    }
    assert_eq!(registry.gets_of("big/blob", &digest), 1, "the origin served the blob once");
}

#[test]
fn the_binary_refuses_a_bad_config_naming_every_bad_key() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("bad.toml");
    std::fs::write(
        &config,
        "regoin = \"x\"\n[cache]\ndisk_max = \"lots\"\n[[upstream]]\nname = \"a.io\"\nurl = \"https://a.io\"\ndefault = true\ntag_ttl = \"soon\"\n[[upstream]]\nname = \"b.io\"\nurl = \"https://b.io\"\ndefault = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(berth_tests::edge::binary("berth-edge"))
        .arg("--config")
        .arg(&config)
        .arg("--check")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config must not start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["regoin", "cache.disk_max", "upstream[0].tag_ttl", "upstream[0].default, upstream[1].default"] {
        assert!(stderr.contains(key), "{key} not named in:\n{stderr}");
    }
}

#[test]
fn the_binary_runs_its_embedded_default_config_check() {
    let out = std::process::Command::new(berth_tests::edge::binary("berth-edge")).arg("--check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_binary_prints_its_embedded_default_config() {
    let edge = berth_tests::edge::binary("berth-edge");
    let out = std::process::Command::new(&edge).arg("--print-default-config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim(), berth_edge::config::DEFAULT_CONFIG.trim(), "the embedded default, as is");
    berth_edge::config::parse(&printed).expect("the printed default is a valid config");
}
