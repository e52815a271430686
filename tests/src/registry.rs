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
        std::fs::create_dir_all(dir).expect("registry dir");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n",
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

/// Writes an OCI image layout with one image of the given layers (tagged `tag`); returns the
/// layer digests.
pub fn oci_layout(dir: &Path, tag: &str, layers: &[Vec<u8>]) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout dir");
    let put = |bytes: &[u8]| -> (String, usize) {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).expect("blob");
        (format!("sha256:{hex}"), bytes.len())
    };
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
    layer_refs.into_iter().map(|(d, _)| d).collect()
}

/// Random bytes (not compressible, so no tool can shrink them).
pub fn random_bytes(len: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    v
}
