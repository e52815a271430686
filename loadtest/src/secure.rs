//! The trusted-edge benchmark: Berth and nginx serving over TLS with the same certificate
//! (HTTP/1.1 and HTTP/2), and the cost of client authorization (a signed token checked on
//! every request) against anonymous requests on the same edge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

use crate::load::{percentile, Timing};
use crate::peers::{self, Peer};
use crate::push::{random, Pusher, OCI_MANIFEST};
use crate::report::{f1, f2, Table};

const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;
const ROUNDS: usize = 3;
/// Concurrent requesters in the small-request runs.
const CONCURRENCY: usize = 64;

/// How a client reaches the server.
#[derive(Clone)]
pub enum Mode {
    Plain,
    Tls { config: Arc<rustls::ClientConfig>, h2: bool },
}

enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

/// One client connection (HTTP/1.1, or HTTP/2 shared by several requesters).
pub struct Client {
    addr: SocketAddr,
    sender: Sender,
    authorization: Option<String>,
}

impl Client {
    pub async fn connect(addr: SocketAddr, mode: &Mode, authorization: Option<String>) -> Result<Client> {
        let tcp = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
        tcp.set_nodelay(true)?;
        let sender = match mode {
            Mode::Plain => Sender::H1(h1(TokioIo::new(tcp)).await?),
            Mode::Tls { config, h2 } => {
                let mut config = (**config).clone();
                config.alpn_protocols = vec![if *h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
                let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
                let tls = connector.connect(ServerName::IpAddress(addr.ip().into()), tcp).await?;
                if *h2 {
                    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    Sender::H2(sender)
                } else {
                    Sender::H1(h1(TokioIo::new(tls)).await?)
                }
            }
        };
        Ok(Client { addr, sender, authorization })
    }

    /// A second requester on the same HTTP/2 connection.
    pub fn share(&self) -> Option<Client> {
        match &self.sender {
            Sender::H2(s) => Some(Client {
                addr: self.addr,
                sender: Sender::H2(s.clone()),
                authorization: self.authorization.clone(),
            }),
            Sender::H1(_) => None,
        }
    }

    pub async fn get(&mut self, path: &str, accept: Option<&str>) -> Result<Timing> {
        let mut req = Request::get(path).header("Host", self.addr.to_string()).header("User-Agent", "berth-loadtest");
        if matches!(self.sender, Sender::H2(_)) {
            req = Request::get(format!("https://{}{path}", self.addr)).header("User-Agent", "berth-loadtest");
        }
        if let Some(a) = accept {
            req = req.header("Accept", a);
        }
        if let Some(auth) = &self.authorization {
            req = req.header("Authorization", auth.as_str());
        }
        let req = req.body(Empty::new())?;
        let start = Instant::now();
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let (mut first_byte, mut bytes) = (None, 0u64);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                first_byte.get_or_insert_with(|| start.elapsed());
                bytes += data.len() as u64;
            }
        }
        let total = start.elapsed();
        Ok(Timing { status, first_byte: first_byte.unwrap_or(total), total, bytes })
    }
}

async fn h1<T>(io: TokioIo<T>) -> Result<http1::SendRequest<Empty<Bytes>>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What to run.
pub struct Options {
    pub edge_binary: PathBuf,
    pub work: PathBuf,
    pub blob_mib: u64,
    pub small_seconds: u64,
    /// Scenarios to run (`hot`, `small`, `authz`); empty: all.
    pub only: Vec<String>,
}

/// A certificate authority and a certificate for 127.0.0.1, as files, and a client config.
struct Pki {
    cert: PathBuf,
    key: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

fn pki(dir: &Path) -> Result<Pki> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, key.serialize_pem())?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Pki { cert: cert_path, key: key_path, client: Arc::new(client) })
}

/// Runs the TLS and authorization scenarios; returns the markdown report.
pub async fn run(opts: &Options) -> Result<String> {
    std::fs::create_dir_all(&opts.work)?;
    let pki = pki(&opts.work.join("pki"))?;
    let mut origin = peers::origin(&opts.work.join("origin"))?;
    peers::wait_ready(&mut origin).await?;
    let pusher = Pusher::new(&origin.url());
    let hot = pusher.blob("bench/hot", random((opts.blob_mib << 20) as usize)).await?;
    let small_blob = pusher.blob("bench/small", random(4096)).await?;
    let small = pusher.image("bench/small", "v1", vec![random(4096)]).await?;

    let (mut berth, berth_tls) =
        peers::berth_secure(&opts.work.join("berth"), &opts.edge_binary, origin.addr, &pki.cert, &pki.key)?;
    peers::wait_ready(&mut berth).await?;
    let mut nginx = peers::nginx_tls(&opts.work.join("nginx"), origin.addr, &pki.cert, &pki.key)?;
    let nginx_tls = nginx.addr;
    let tls = |h2| Mode::Tls { config: Arc::clone(&pki.client), h2 };
    wait_tls(&mut nginx, &tls(false)).await?;

    let servers: [(&Peer, SocketAddr); 2] = [(&berth, berth_tls), (&nginx, nginx_tls)];
    let hot_path = format!("/v2/bench/hot/blobs/{hot}");
    let manifest = format!("/v2/bench/small/manifests/{}", small.manifest);
    let blob = format!("/v2/bench/small/blobs/{small_blob}");
    let mut tables = Vec::new();
    let wants = |s: &str| opts.only.is_empty() || opts.only.iter().any(|o| o == s);
    let d = Duration::from_secs(opts.small_seconds);
    if wants("hot") {
        eprintln!("hot blob over TLS ...");
        tables.push(hot_over_tls(&servers, &hot_path, &tls).await?);
    }
    if wants("small") {
        eprintln!("small requests over TLS ...");
        tables.push(small_over_tls(&servers, &manifest, &blob, &tls, d).await?);
    }
    if wants("authz") {
        eprintln!("authorization cost ...");
        tables.push(authorization_cost(&berth, &manifest, &blob, d).await?);
    }
    Ok(tables.iter().map(Table::markdown).collect())
}

/// Waits until a TLS server answers `GET /v2/`.
async fn wait_tls(peer: &mut Peer, mode: &Mode) -> Result<()> {
    for _ in 0..500 {
        if let Ok(mut c) = Client::connect(peer.addr, mode, None).await {
            if c.get("/v2/", None).await.is_ok_and(|t| t.status == 200 || t.status == 401) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("{} did not answer over TLS", peer.name)
}

fn median<T: Copy>(mut rounds: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    rounds.sort_by(|a, b| key(a).total_cmp(&key(b)));
    rounds[rounds.len() / 2]
}

/// One client downloading the hot blob 5 times over one connection, HTTP/1.1 and HTTP/2.
async fn hot_over_tls(servers: &[(&Peer, SocketAddr)], path: &str, tls: &impl Fn(bool) -> Mode) -> Result<Table> {
    let mut t = Table::new(
        "Hot blob over TLS, one client",
        "The same certificate (ECDSA P-256) on both; one connection downloads the cached blob 5 times; 3 rounds, the servers taking turns, median shown. CPU is the server's, user + system.",
        &["server", "HTTP/1.1 MiB/s", "HTTP/1.1 CPU s per GiB", "HTTP/2 MiB/s", "HTTP/2 CPU s per GiB"],
    );
    for (p, addr) in servers {
        // Warm the cache over plain-or-TLS, then let it commit its copy.
        Client::connect(*addr, &tls(false), None).await?.get(path, None).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = p;
    }
    let mut results = vec![[Vec::new(), Vec::new()]; servers.len()];
    for _ in 0..ROUNDS {
        for (i, (p, addr)) in servers.iter().enumerate() {
            for (j, h2) in [false, true].into_iter().enumerate() {
                let cpu = p.cpu_seconds();
                let mut c = Client::connect(*addr, &tls(h2), None).await?;
                let started = Instant::now();
                let mut bytes = 0;
                for _ in 0..5 {
                    let timing = c.get(path, None).await?;
                    if timing.status != 200 {
                        bail!("{} answered {}", p.name, timing.status);
                    }
                    bytes += timing.bytes;
                }
                let secs = started.elapsed().as_secs_f64();
                let cpu = p.cpu_seconds() - cpu;
                results[i][j].push((bytes as f64 / MIB / secs, cpu / (bytes as f64 / GIB)));
            }
        }
    }
    for (i, (p, _)) in servers.iter().enumerate() {
        let h1 = median(results[i][0].clone(), |r| r.0);
        let h2 = median(results[i][1].clone(), |r| r.0);
        t.row(vec![p.name.into(), f1(h1.0), f2(h1.1), f1(h2.0), f2(h2.1)]);
    }
    Ok(t)
}

/// `CONCURRENCY` requesters GETting `path` for `duration`: HTTP/1.1 gets one connection each,
/// HTTP/2 eight connections shared by eight requesters each. (req/s, p50 µs, p99 µs, errors)
async fn hammer(
    addr: SocketAddr,
    mode: &Mode,
    authorization: Option<String>,
    path: &str,
    accept: Option<&str>,
    duration: Duration,
) -> Result<(f64, f64, f64, usize)> {
    let h2 = matches!(mode, Mode::Tls { h2: true, .. });
    let mut clients = Vec::new();
    let connections = if h2 { CONCURRENCY / 8 } else { CONCURRENCY };
    for _ in 0..connections {
        let c = Client::connect(addr, mode, authorization.clone()).await?;
        if h2 {
            for _ in 1..8 {
                clients.push(c.share().context("h2 sharing")?);
            }
        }
        clients.push(c);
    }
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut c in clients {
        let (path, accept) = (path.to_owned(), accept.map(str::to_owned));
        tasks.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0);
            while Instant::now() < deadline {
                match c.get(&path, accept.as_deref()).await {
                    Ok(t) if t.status == 200 => lat.push(t.total),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    Ok((all.len() as f64 / elapsed, percentile(&all, 0.5), percentile(&all, 0.99), errors))
}

/// Manifest and 4 KiB blob requests over TLS, HTTP/1.1 and HTTP/2.
async fn small_over_tls(
    servers: &[(&Peer, SocketAddr)],
    manifest: &str,
    blob: &str,
    tls: &impl Fn(bool) -> Mode,
    duration: Duration,
) -> Result<Table> {
    let mut t = Table::new(
        "Small requests over TLS, 64 concurrent",
        "HTTP/1.1: 64 connections; HTTP/2: 8 connections with 8 requests in flight each. Cached 4 KiB blob and manifest; 3 rounds, the servers taking turns, median shown; latency in microseconds.",
        &["server", "protocol", "manifest req/s", "manifest p99", "blob req/s", "blob p99"],
    );
    for (_, addr) in servers {
        let mut c = Client::connect(*addr, &tls(false), None).await?;
        c.get(manifest, Some(OCI_MANIFEST)).await?;
        c.get(blob, None).await?;
    }
    let mut results = vec![[Vec::new(), Vec::new()]; servers.len()];
    for _ in 0..ROUNDS {
        for (i, (_, addr)) in servers.iter().enumerate() {
            for (j, h2) in [false, true].into_iter().enumerate() {
                let m = hammer(*addr, &tls(h2), None, manifest, Some(OCI_MANIFEST), duration).await?;
                let b = hammer(*addr, &tls(h2), None, blob, None, duration).await?;
                results[i][j].push((m.0, m.2, b.0, b.2, m.3 + b.3));
            }
        }
    }
    for (i, (p, _)) in servers.iter().enumerate() {
        for (j, protocol) in ["HTTP/1.1", "HTTP/2"].into_iter().enumerate() {
            let r = median(results[i][j].clone(), |r| r.0 + r.2);
            let name = if r.4 > 0 { format!("{} ({} errors)", p.name, r.4) } else { p.name.to_string() };
            t.row(vec![name, protocol.into(), f1(r.0), f1(r.1), f1(r.2), f1(r.3)]);
        }
    }
    Ok(t)
}

/// The same edge, the same content: an anonymous upstream and a protected one (htpasswd users,
/// a signed token on every request), plain HTTP/1.1, 64 connections.
async fn authorization_cost(berth: &Peer, manifest: &str, blob: &str, duration: Duration) -> Result<Table> {
    let mut t = Table::new(
        "Cost of authorization (small requests, plain HTTP/1.1, 64 connections)",
        "One edge with two upstreams on the same origin: `docker.io` anonymous, `private.test` with `access = \"htpasswd\"`; every protected request carries a signed edge token that is checked locally. 5 rounds, which one runs first alternating, median shown.",
        &["requests", "anonymous req/s", "with token req/s", "difference"],
    );
    let token = fetch_token(berth.addr).await?;
    let protected = |path: &str| path.replacen("/v2/", "/v2/private.test/", 1);
    let mode = Mode::Plain;
    for path in [manifest.to_owned(), blob.to_owned(), protected(manifest), protected(blob)] {
        let mut c = Client::connect(berth.addr, &mode, Some(token.clone())).await?;
        let timing = c.get(&path, Some(OCI_MANIFEST)).await?;
        if timing.status != 200 {
            bail!("warming {path}: {}", timing.status);
        }
    }
    for (name, path, accept) in [("manifest", manifest, Some(OCI_MANIFEST)), ("4 KiB blob", blob, None)] {
        let mut rounds = Vec::new();
        for round in 0..5 {
            // Which one runs first alternates, so neither always follows the other.
            let run_open = || hammer(berth.addr, &mode, None, path, accept, duration);
            let protected_path = protected(path);
            let run_authed = || hammer(berth.addr, &mode, Some(token.clone()), &protected_path, accept, duration);
            let (open, authed) = if round % 2 == 0 {
                let open = run_open().await?;
                (open, run_authed().await?)
            } else {
                let authed = run_authed().await?;
                (run_open().await?, authed)
            };
            if open.3 + authed.3 > 0 {
                bail!("{name}: {} errors", open.3 + authed.3);
            }
            rounds.push((open.0, authed.0));
        }
        let (open, authed) = median(rounds, |r| r.0 + r.1);
        t.row(vec![name.into(), f1(open), f1(authed), format!("{:+.1} %", (authed - open) / open * 100.0)]);
    }
    Ok(t)
}

/// Logs in at the edge's `/token` as the benchmark user.
async fn fetch_token(addr: SocketAddr) -> Result<String> {
    use base64::Engine as _;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let mut sender = h1(TokioIo::new(stream)).await?;
    let basic = base64::engine::general_purpose::STANDARD.encode("bench:bench-password");
    let scopes = "repository%3Aprivate.test%2Fbench%2Fsmall%3Apull";
    let req = Request::get(format!("/token?service=berth-edge&scope={scopes}"))
        .header("Host", addr.to_string())
        .header("Authorization", format!("Basic {basic}"))
        .body(Empty::new())?;
    let response = sender.send_request(req).await?;
    let body = response.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body)?;
    let token = json["token"].as_str().context("no token from the edge")?;
    Ok(format!("Bearer {token}"))
}
