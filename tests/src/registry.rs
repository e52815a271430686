//! Debian's `docker-registry` (the CNCF distribution registry) as a real origin on port 0,
//! with its access log captured, and OCI image layouts to push into it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest as _, Sha256};

/// A running `docker-registry`; killed when dropped.
pub struct DockerRegistry {
    pub addr: std::net::SocketAddr,
    pub log: PathBuf,
    child: Child,
    pub dir: PathBuf,
}

impl DockerRegistry {
    /// Starts a registry storing its data under `dir`.
    pub fn start(dir: &Path) -> DockerRegistry {
        Self::start_with(dir, "")
    }

    /// Starts a registry with extra top-level config (e.g. an `auth:` section).
    pub fn start_with(dir: &Path, extra_yaml: &str) -> DockerRegistry {
        std::fs::create_dir_all(dir).expect("registry dir");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{extra_yaml}",
                dir.join("data").display()
            ),
        )
        .expect("registry config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker-registry runs (apt-get install docker-registry)");
        let log = dir.join("registry.log");
        let addr = crate::tools::follow_output(&mut child, &log, |line| {
            let rest = line.split("listening on ").nth(1)?;
            rest.split(['"', ' ']).next()?.parse().ok()
        })
        .unwrap_or_else(|| {
            panic!("docker-registry did not start: {}", std::fs::read_to_string(&log).unwrap_or_default())
        });
        DockerRegistry { addr, log, child, dir: dir.to_owned() }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Access-log lines of GET requests for blobs of `repo` answered 200.
    pub fn blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/sha256:");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("\" 200 "))
            .count()
    }

    /// Access-log lines of GET requests for this one blob.
    pub fn gets_of(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        std::fs::read_to_string(&self.log).unwrap_or_default().lines().filter(|l| l.contains(&needle)).count()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A function that stores a blob in an OCI layout's `blobs/sha256` and returns (digest, size).
fn layout_writer(dir: &Path) -> impl Fn(&[u8]) -> (String, usize) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    move |bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    }
}

/// Writes an OCI image layout with one image of the given layers (tagged `tag`); returns the
/// layer digests. The config's `diff_ids` are the layers' digests: right for uncompressed tar
/// layers (see [`tar_image_layout`]); other bytes do for clients that do not unpack.
pub fn oci_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
    write_image(dir, tag, layers).1
}

/// Writes an OCI image layout of `layers` real tar layers (`application/vnd.oci.image.layer.v1.tar`),
/// each holding a file of random bytes, so clients that unpack layers (podman, containerd,
/// Docker) accept it and every call makes blobs no other test has. Returns the image's blobs:
/// the config first, then the layers.
pub fn tar_image_layout(dir: &Path, tag: &str, layers: usize) -> Vec<String> {
    let layers: Vec<Vec<u8>> = (0..layers)
        .map(|i| {
            let note = format!("layer {i} of a Berth test image\n");
            tar(&[("hello.txt", note.as_bytes()), (&format!("payload-{i}.bin"), &random_bytes(64 << 10))])
        })
        .collect();
    let (config, mut blobs) = write_image(dir, tag, &layers);
    blobs.insert(0, config);
    blobs
}

/// A ustar archive of regular files (mode 0644, owner 0, mtime 0), ended by two zero blocks.
pub fn tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, body) in files {
        assert!(name.len() < 100, "tar: name too long: {name}");
        let mut header = [0u8; 512];
        let mut field = |at: usize, value: &[u8]| header[at..at + value.len()].copy_from_slice(value);
        field(0, name.as_bytes());
        field(100, b"0000644\0");
        field(108, b"0000000\0");
        field(116, b"0000000\0");
        field(124, format!("{:011o}\0", body.len()).as_bytes());
        field(136, b"00000000000\0");
        field(156, b"0");
        field(257, b"ustar\0");
        field(263, b"00");
        // The checksum is the sum of the header's bytes with its own field read as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|b| u32::from(*b)).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        out.resize(out.len().next_multiple_of(512), 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Writes the blobs, manifest and index of one image; returns its config and layer digests.
fn write_image(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> (String, Vec<String>) {
    let put = layout_writer(dir);
    let layer_refs: Vec<(String, usize)> = layers.iter().map(|l| put(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": layer_refs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()},
    });
    let (config_digest, config_size) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": layer_refs.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    let manifest = manifest.to_string();
    let (manifest_digest, manifest_size) = put(manifest.as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
            "size": manifest_size, "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    (config_digest, layer_refs.into_iter().map(|(d, _)| d).collect())
}

/// Random bytes (not compressible, so no tool can shrink them).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// Writes an OCI image layout whose `tag` is a multi-platform index: one image per
/// (architecture, layers). Returns, per architecture, its layer digests.
pub fn oci_multi_platform_layout(dir: &Path, tag: &str, images: &[(&str, Vec<Vec<u8>>)]) -> Vec<(String, Vec<String>)> {
    let put = layout_writer(dir);
    let mut entries = Vec::new();
    let mut out = Vec::new();
    for (arch, layers) in images {
        let layer_refs: Vec<(String, usize)> = layers.iter().map(|l| put(l)).collect();
        let config = serde_json::json!({"architecture": arch, "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": layer_refs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>()}});
        let (config_digest, config_size) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": layer_refs.iter().map(|(d, s)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})).collect::<Vec<_>>(),
        })
        .to_string();
        let (digest, size) = put(manifest.as_bytes());
        entries.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": arch}}));
        let mut digests = vec![config_digest];
        digests.extend(layer_refs.into_iter().map(|(d, _)| d));
        out.push((arch.to_string(), digests));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}).to_string();
    let (index_digest, index_size) = put(index.as_bytes());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": index_digest, "size": index_size, "annotations": {"org.opencontainers.image.ref.name": tag}}]});
    std::fs::write(dir.join("index.json"), top.to_string()).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
    out
}

impl DockerRegistry {
    /// The blobs (config first, then layers) of `repo:reference` as the registry stores them,
    /// per platform architecture (`""` for a single-platform image).
    pub async fn blobs_of(&self, repo: &str, reference: &str) -> Vec<(String, Vec<String>)> {
        let accept = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
        let get = |r: String| async move {
            let url = format!("{}/v2/{repo}/manifests/{r}", self.url());
            crate::client::request(http::Method::GET, &url, &[("Accept", accept)]).await.json()
        };
        let top = get(reference.to_owned()).await;
        let images: Vec<(String, serde_json::Value)> = match top["manifests"].as_array() {
            Some(list) => {
                let mut out = Vec::new();
                for m in list {
                    let arch = m["platform"]["architecture"].as_str().unwrap_or_default().to_owned();
                    out.push((arch, get(m["digest"].as_str().unwrap_or_default().to_owned()).await));
                }
                out
            }
            None => vec![(String::new(), top)],
        };
        images
            .into_iter()
            .map(|(arch, m)| {
                let mut blobs = vec![m["config"]["digest"].as_str().unwrap_or_default().to_owned()];
                blobs.extend(
                    m["layers"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["digest"].as_str().map(str::to_owned)),
                );
                (arch, blobs)
            })
            .collect()
    }
}
