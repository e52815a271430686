//! Pushing test content into the origin registry through its HTTP API (monolithic uploads).

use anyhow::{bail, Context, Result};
use berth_shared::Digest;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A registry to push to.
pub struct Pusher {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

/// A pushed image: manifest digest and the blobs it references (config first).
#[derive(Debug, Clone)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest: Digest,
    pub blobs: Vec<(Digest, u64)>,
}

impl Pusher {
    pub fn new(base: &str) -> Self {
        Pusher {
            base: base.trim_end_matches('/').to_owned(),
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<http::Response<Bytes>> {
        let mut req = Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let response =
            self.client.request(req.body(Full::new(body))?).await.with_context(|| format!("request to {url}"))?;
        let (parts, body) = response.into_parts();
        Ok(http::Response::from_parts(parts, body.collect().await?.to_bytes()))
    }

    /// Uploads a blob; returns its digest.
    pub async fn blob(&self, repo: &str, bytes: Bytes) -> Result<Digest> {
        let digest = Digest::of(&bytes);
        let start =
            self.send(Method::POST, &format!("{}/v2/{repo}/blobs/uploads/", self.base), None, Bytes::new()).await?;
        let location = start.headers().get("location").and_then(|l| l.to_str().ok()).context("upload location")?;
        let location =
            if location.starts_with("http") { location.to_owned() } else { format!("{}{location}", self.base) };
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = self
            .send(Method::PUT, &format!("{location}{sep}digest={digest}"), Some("application/octet-stream"), bytes)
            .await?;
        if !put.status().is_success() {
            bail!("blob upload failed: {} {:?}", put.status(), put.body());
        }
        Ok(digest)
    }

    /// Uploads `layers` and a config, and a manifest tagged `tag`.
    pub async fn image(&self, repo: &str, tag: &str, layers: Vec<Bytes>) -> Result<Image> {
        let config = Bytes::from(format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{}},"rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{repo}:{tag}"}}"#
        ));
        let config_len = config.len() as u64;
        let config_digest = self.blob(repo, config).await?;
        let mut blobs = vec![(config_digest, config_len)];
        for layer in layers {
            let len = layer.len() as u64;
            blobs.push((self.blob(repo, layer).await?, len));
        }
        let layers_json: Vec<_> = blobs[1..]
            .iter()
            .map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": s}))
            .collect();
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_len},
            "layers": layers_json,
        })
        .to_string();
        let manifest = Bytes::from(manifest);
        let digest = Digest::of(&manifest);
        let put = self
            .send(Method::PUT, &format!("{}/v2/{repo}/manifests/{tag}", self.base), Some(OCI_MANIFEST), manifest)
            .await?;
        if !put.status().is_success() {
            bail!("manifest upload failed: {} {:?}", put.status(), put.body());
        }
        Ok(Image { repo: repo.to_owned(), tag: tag.to_owned(), manifest: digest, blobs })
    }
}

/// Random, incompressible bytes.
pub fn random(len: usize) -> Bytes {
    use rand::RngCore;
    let mut v = vec![0u8; len];
    rand::thread_rng().fill_bytes(&mut v);
    Bytes::from(v)
}
