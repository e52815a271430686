//! The HTTP link to the distributor: the watch stream and reports, with the edge's token.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::config::DistributorLink;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("distributor unreachable: {0}")]
    Unreachable(String),
    #[error("distributor answered {0}")]
    Status(StatusCode),
    #[error("no answer from the distributor within {0:?}")]
    Timeout(Duration),
}

/// A client for the distributor: `url`, then its replicas in turn when one cannot be reached.
pub struct Link {
    bases: Vec<String>,
    /// The base in use (the last that answered).
    current: std::sync::atomic::AtomicUsize,
    token: String,
    pub config: DistributorLink,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Link {
    pub fn new(config: &DistributorLink) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        http.set_nodelay(true);
        // Validated at start: a CA file that does not load refuses the config.
        let tls = berth_shared::tls::client_config(config.ca_file.as_deref())
            .or_else(|_| berth_shared::tls::client_config(None))
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            });
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Link {
            bases: std::iter::once(&config.url)
                .chain(&config.replicas)
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect(),
            current: Default::default(),
            // Validated at start; an unreadable token shows as 401s from the distributor.
            token: config.token().unwrap_or_default(),
            config: config.clone(),
            client: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends to the replica in use; one that cannot be reached (or fails: a 5xx) hands over to
    /// the next, once round the list.
    async fn send(&self, method: Method, path: &str, body: Bytes, wait: Duration) -> Result<Incoming, LinkError> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut last = LinkError::Unreachable("no distributor configured".into());
        for i in 0..self.bases.len() {
            let at = (first + i) % self.bases.len();
            match self.send_to(&self.bases[at], method.clone(), path, body.clone(), wait).await {
                Ok(body) => {
                    if at != first {
                        tracing::info!(distributor = %self.bases[at], "distributor replica in use");
                        self.current.store(at, Ordering::Relaxed);
                    }
                    return Ok(body);
                }
                Err(LinkError::Status(s)) if !s.is_server_error() => return Err(LinkError::Status(s)),
                Err(e) => {
                    tracing::debug!(distributor = %self.bases[at], error = %e, "distributor replica failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn send_to(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Bytes,
        wait: Duration,
    ) -> Result<Incoming, LinkError> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let response = tokio::time::timeout(wait, self.client.request(req))
            .await
            .map_err(|_| LinkError::Timeout(wait))?
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(LinkError::Status(response.status()));
        }
        Ok(response.into_body())
    }

    /// Opens the watch stream from `since`.
    pub async fn watch(&self, since: u64) -> Result<Incoming, LinkError> {
        self.send(Method::GET, &format!("/api/v1/watch?since={since}"), Bytes::new(), Duration::from_secs(10)).await
    }

    /// Posts a report; the distributor answers with this edge's cluster (`None`: no answer
    /// understood, or an older distributor's `204`).
    pub async fn report(
        &self,
        report: &berth_shared::protocol::EdgeReport,
    ) -> Result<Option<berth_shared::protocol::ReportAnswer>, LinkError> {
        let body = Bytes::from(serde_json::to_vec(report).map_err(|e| LinkError::Unreachable(e.to_string()))?);
        let response = self.send(Method::POST, "/api/v1/edges/report", body, Duration::from_secs(10)).await?;
        // The report is recorded once the status arrived: a lost or odd answer must not have it
        // sent again (its pull counts would count twice).
        let answer = match tokio::time::timeout(Duration::from_secs(10), response.collect()).await {
            Ok(Ok(body)) => body.to_bytes(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "the report's answer was cut short");
                return Ok(None);
            }
            Err(_) => {
                tracing::debug!("the report's answer did not arrive in 10 s");
                return Ok(None);
            }
        };
        if answer.is_empty() {
            return Ok(None);
        }
        match serde_json::from_slice(&answer) {
            Ok(answer) => Ok(Some(answer)),
            Err(e) => {
                tracing::warn!(error = %e, "the distributor's answer to a report is not understood");
                Ok(None)
            }
        }
    }
}
