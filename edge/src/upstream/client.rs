//! The upstream HTTP client: pooled hyper over rustls, connect and first-byte timeouts, and
//! redirects (to blob storage) followed without carrying credentials to another host.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, LOCATION, USER_AGENT};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::body::UpstreamBody;
use super::guard::{Guard, GuardedResolver};
use super::{Timeouts, UpstreamResponse};

/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 5;

const USER_AGENT_VALUE: &str = concat!("berth-edge/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0:?} is not a valid URL")]
    BadUrl(String),
    #[error("cannot read CA file: {0}")]
    CaFile(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("no response headers within {0:?}")]
    FirstByteTimeout(std::time::Duration),
    #[error("body stalled for {0:?}")]
    BodyStalled(std::time::Duration),
    #[error("body read failed: {0}")]
    Body(String),
    #[error("more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects,
    #[error("redirect to an invalid location {0:?}")]
    BadRedirect(String),
    #[error("refused to connect: {0}")]
    Refused(String),
}

/// A pooled HTTP/1.1 + HTTP/2 client for one upstream.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Empty<Bytes>>,
    timeouts: Timeouts,
    guard: Arc<Guard>,
}

/// Request headers beyond the defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra<'a> {
    pub accept: Option<&'a str>,
    /// `bytes=<first>-<last>`.
    pub range: Option<&'a str>,
    /// The `X-Berth-Peer` header of a request to another edge of the region (sent to that
    /// edge only, never to a redirect target).
    pub peer: Option<&'a str>,
}

impl HttpClient {
    /// A client whose connections `guard` polices (see `guard.rs`).
    pub fn new(timeouts: Timeouts, ca_file: Option<&Path>, guard: Arc<Guard>) -> Result<Self, ClientError> {
        let tls = tls_config(ca_file)?;
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { guard: Arc::clone(&guard) });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(connector);
        Ok(HttpClient { inner, timeouts, guard })
    }

    /// Sends a request and follows redirects. `Authorization` goes only to the origin of `uri`.
    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        accept: Option<&str>,
        authorization: Option<&HeaderValue>,
    ) -> Result<UpstreamResponse, ClientError> {
        self.send_with(method, uri, Extra { accept, range: None, peer: None }, authorization).await
    }

    /// [`send`](Self::send) with a `Range` header too (kept across redirects).
    pub async fn send_with(
        &self,
        method: Method,
        uri: &str,
        extra: Extra<'_>,
        authorization: Option<&HeaderValue>,
    ) -> Result<UpstreamResponse, ClientError> {
        let origin: Uri = uri.parse().map_err(|_| ClientError::BadUrl(uri.to_owned()))?;
        let mut current = origin.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = current.scheme() == origin.scheme() && current.authority() == origin.authority();
            let auth = authorization.filter(|_| same_origin);
            let extra = Extra { peer: extra.peer.filter(|_| same_origin), ..extra };
            let mut response = self.send_once(method.clone(), current.clone(), extra, auth).await?;
            if !is_redirect(response.status) {
                response.from_origin = same_origin;
                return Ok(response);
            }
            let location = response
                .headers
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| ClientError::BadRedirect(String::new()))?;
            current = resolve_location(&current, location)?;
        }
        Err(ClientError::TooManyRedirects)
    }

    async fn send_once(
        &self,
        method: Method,
        uri: Uri,
        extra: Extra<'_>,
        authorization: Option<&HeaderValue>,
    ) -> Result<UpstreamResponse, ClientError> {
        let mut builder = Request::builder().method(method).uri(uri).header(USER_AGENT, USER_AGENT_VALUE);
        if let Some(accept) = extra.accept {
            builder = builder.header(ACCEPT, accept);
        }
        if let Some(range) = extra.range {
            builder = builder.header(http::header::RANGE, range);
        }
        if let Some(auth) = authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        if let Some(peer) = extra.peer {
            builder = builder.header(crate::cluster::hop::PEER_HEADER, peer);
        }
        let request = builder.body(Empty::new()).map_err(|e| ClientError::Request(e.to_string()))?;
        // IP literals skip the resolver: check them here, before any connection.
        let host = request.uri().host().unwrap_or_default();
        self.guard.check_literal(host).map_err(|e| ClientError::Refused(e.to_string()))?;
        let response = tokio::time::timeout(self.timeouts.first_byte, self.inner.request(request))
            .await
            .map_err(|_| ClientError::FirstByteTimeout(self.timeouts.first_byte))?
            .map_err(|e| {
                if let Some(refused) = find_refusal(&e) {
                    ClientError::Refused(refused)
                } else if e.is_connect() {
                    ClientError::Connect(error_chain(&e))
                } else {
                    ClientError::Request(error_chain(&e))
                }
            })?;
        let (parts, body) = response.into_parts();
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: UpstreamBody::new(body, self.timeouts.body_stall),
            from_origin: true,
            slot: None,
        })
    }
}

fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Resolves a `Location` value (absolute, scheme-relative or path) against the current URI.
fn resolve_location(current: &Uri, location: &str) -> Result<Uri, ClientError> {
    let bad = || ClientError::BadRedirect(location.to_owned());
    let resolved = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{}://{rest}", current.scheme_str().unwrap_or("https"))
    } else if location.starts_with('/') {
        let authority = current.authority().ok_or_else(bad)?;
        format!("{}://{authority}{location}", current.scheme_str().unwrap_or("https"))
    } else {
        return Err(bad());
    };
    let uri: Uri = resolved.parse().map_err(|_| bad())?;
    if uri.host().is_none() {
        return Err(bad());
    }
    Ok(uri)
}

/// The guard's refusal, if that is why a connection was not made.
fn find_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(refused) = s.downcast_ref::<super::guard::Refused>() {
            return Some(refused.to_string());
        }
        source = s.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let certs =
            CertificateDer::pem_file_iter(path).map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
        for cert in certs {
            let cert = cert.map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| ClientError::CaFile(format!("{}: {e}", path.display())))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::CaFile(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_resolve_redirect_locations() {
        let cur: Uri = "https://registry.example.com/v2/a/blobs/x".parse().unwrap();
        let r = |l: &str| resolve_location(&cur, l).map(|u| u.to_string());
        assert_eq!(r("https://s3.example.com/b?sig=1").unwrap(), "https://s3.example.com/b?sig=1");
        assert_eq!(r("//cdn.example.com/b").unwrap(), "https://cdn.example.com/b");
        assert_eq!(r("/other/path").unwrap(), "https://registry.example.com/other/path");
        assert!(r("relative/path").is_err());
        assert!(r("ftp://x/y").is_err());
    }
}
