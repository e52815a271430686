//! A test HTTP client that keeps what a real client would see: the status, the headers, and
//! whether the body arrived complete or was cut short.

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The longest any one exchange may take (headers, then the whole body, each): a regression fails
/// the test in seconds instead of hanging it until CI's limit.
pub const CALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Awaits `f` for at most [`CALL_LIMIT`]; panics naming `what` after that.
pub async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_LIMIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {CALL_LIMIT:?}"),
    }
}

/// Reads a whole body within [`CALL_LIMIT`]; a body that does not end in time counts as cut short.
async fn collect(body: Incoming) -> Result<Bytes, String> {
    match tokio::time::timeout(CALL_LIMIT, body.collect()).await {
        Ok(collected) => collected.map(|c| c.to_bytes()).map_err(|e| format!("{e:?}")),
        Err(_) => Err(format!("body did not end within {CALL_LIMIT:?}")),
    }
}

/// The next frame of a body, within [`CALL_LIMIT`].
async fn next_frame(body: &mut Incoming) -> Option<Result<hyper::body::Frame<Bytes>, String>> {
    match tokio::time::timeout(CALL_LIMIT, body.frame()).await {
        Ok(frame) => frame.map(|f| f.map_err(|e| e.to_string())),
        Err(_) => Some(Err(format!("no body bytes within {CALL_LIMIT:?}"))),
    }
}

/// A complete exchange.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    /// The body, or why it did not arrive complete.
    pub body: Result<Bytes, String>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body; panics if it was cut short.
    pub fn bytes(&self) -> &Bytes {
        match &self.body {
            Ok(b) => b,
            Err(e) => panic!("body incomplete: {e}"),
        }
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("JSON body")
    }

    /// The OCI error code of an error response.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// A response whose body is read by the test at its own pace.
pub struct Streaming {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    pub received: BytesMut,
}

impl Streaming {
    /// Reads until at least `n` bytes arrived in total (or the body ended or failed).
    pub async fn read_at_least(&mut self, n: usize) -> Result<(), String> {
        while self.received.len() < n {
            match next_frame(&mut self.body).await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.received.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        Ok(())
    }

    /// Reads the rest; `Err` if the body was cut short.
    pub async fn finish(mut self) -> Result<Bytes, String> {
        while let Some(frame) = next_frame(&mut self.body).await {
            let frame = frame?;
            if let Ok(data) = frame.into_data() {
                self.received.extend_from_slice(&data);
            }
        }
        Ok(self.received.freeze())
    }
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http()
}

fn build(method: Method, url: &str, headers: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Empty::new()).expect("valid request")
}

/// Sends a request and reads the whole response.
pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Response {
    let response = bounded(url, client().request(build(method, url, headers))).await.expect("response headers");
    let (parts, body) = response.into_parts();
    let body = collect(body).await;
    Response { status: parts.status.as_u16(), headers: parts.headers, body }
}

pub async fn get(url: &str) -> Response {
    request(Method::GET, url, &[]).await
}

pub async fn head(url: &str) -> Response {
    request(Method::HEAD, url, &[]).await
}

/// Sends a request with a body (JSON documents to the admin APIs).
pub async fn send(method: Method, url: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Response {
    use http_body_util::Full;
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("valid request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = bounded(url, client.request(req)).await.expect("response headers");
    let (parts, body) = response.into_parts();
    let body = collect(body).await;
    Response { status: parts.status.as_u16(), headers: parts.headers, body }
}

/// Sends a request and returns once the headers arrived.
pub async fn open(url: &str, headers: &[(&str, &str)]) -> Streaming {
    let response = bounded(url, client().request(build(Method::GET, url, headers))).await.expect("response headers");
    let (parts, body) = response.into_parts();
    Streaming { status: parts.status.as_u16(), headers: parts.headers, body, received: BytesMut::new() }
}

/// A client over TLS that trusts `tls` (its roots), speaking HTTP/2 when `h2` (by ALPN) else
/// HTTP/1.1, one new connection per client.
pub struct TlsClient {
    client: Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Empty<Bytes>>,
}

impl TlsClient {
    pub fn new(tls: rustls::ClientConfig, h2: bool) -> TlsClient {
        Self::build(tls, h2, 0)
    }

    /// A client that keeps its connections open between requests.
    pub fn pooled(tls: rustls::ClientConfig, h2: bool) -> TlsClient {
        Self::build(tls, h2, 8)
    }

    fn build(tls: rustls::ClientConfig, h2: bool, idle: usize) -> TlsClient {
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
        let connector = if h2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
        let mut client = Client::builder(TokioExecutor::new());
        client.pool_max_idle_per_host(idle).http2_only(h2);
        TlsClient { client: client.build(connector) }
    }

    /// Sends a request; returns the whole response and the HTTP version it came over.
    pub async fn request(&self, method: Method, url: &str, headers: &[(&str, &str)]) -> (Response, http::Version) {
        let response = bounded(url, self.client.request(build(method, url, headers))).await.expect("response headers");
        let version = response.version();
        let (parts, body) = response.into_parts();
        let body = collect(body).await;
        (Response { status: parts.status.as_u16(), headers: parts.headers, body }, version)
    }
}

/// The leaf certificate (DER) a TLS server at `addr` presents in a fresh handshake.
pub async fn peer_certificate(addr: std::net::SocketAddr, tls: rustls::ClientConfig) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        connector.connect(name, tcp).await.expect("TLS handshake")
    };
    let stream = bounded("TLS handshake", handshake).await;
    stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()).unwrap_or_default()
}
