//! The HTTP client of `berthctl`: JSON over HTTP(S) with a bearer token.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub struct Client {
    base: String,
    token: String,
    inner: hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Client {
    /// `ca_file`: extra PEM CA certificates to trust (a distributor with a private CA).
    pub fn new(base: &str, token: &str, ca_file: Option<&std::path::Path>) -> Result<Self> {
        let tls = berth_shared::tls::client_config(ca_file).context("--ca-file")?;
        let connector =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http1().build();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// A text document (the DNS zone).
    pub async fn get_text(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .body(Full::new(Bytes::new()))?;
        let response = self.inner.request(req).await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let text = String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).into_owned();
        if !status.is_success() {
            let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            bail!("{status}: {}", value["error"]["message"].as_str().unwrap_or(&text));
        }
        Ok(text)
    }

    pub async fn get(&self, path: &str) -> Result<serde_json::Value> {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &serde_json::Value) -> Result<serde_json::Value> {
        self.send(Method::POST, path, Some(body)).await
    }

    async fn send(&self, method: Method, path: &str, body: Option<&serde_json::Value>) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let payload = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(payload))?;
        let response = self.inner.request(req).await.with_context(|| format!("cannot reach {url}"))?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: serde_json::Value =
            if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes).unwrap_or_default() };
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            bail!("{status}: {message}");
        }
        Ok(value)
    }
}
