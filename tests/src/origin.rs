//! A scripted origin registry on 127.0.0.1:0. It serves blobs and manifests from memory and,
//! for requests it is told to, misbehaves: wrong bytes, a body cut short, a reset connection,
//! an error status, a stall, a redirect, an authentication challenge. It records every request.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use berth_shared::Digest;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One misbehaviour, used for the next matching request.
#[derive(Clone)]
pub enum Fault {
    /// Other bytes of the same length.
    WrongBytes,
    /// Full Content-Length, then only `after` bytes and a clean close.
    CutShort { after: usize },
    /// `after` bytes, then a TCP reset.
    Reset { after: usize },
    /// This status with an error body.
    Status(u16),
    /// `after` bytes, then silence until the test ends.
    StallBody { after: usize },
    /// No response at all.
    StallHeaders,
    /// `after` bytes, then wait for the gate before sending the rest (every byte altered
    /// when `corrupt`).
    Gate { after: usize, gate: Arc<Notify>, corrupt: bool },
    /// A 307 to `base` + the same path.
    Redirect { base: String },
    /// Wait for the gate, then answer this status.
    GateStatus { status: u16, gate: Arc<Notify> },
    /// `200` with an empty body (`Content-Length: 0`) and the real digest header.
    Empty,
}

/// How the origin authenticates.
#[derive(Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// Registry requests need `Bearer tok-*` from `/token`; `/token` itself needs these
    /// credentials when set.
    Bearer {
        credentials: Option<(String, String)>,
    },
    Basic {
        username: String,
        password: String,
    },
    /// A token server with users, each allowed to pull only some repositories (as a real
    /// registry's token service decides): `/token` with a user's Basic credentials issues
    /// `tok-u-<user>-<n>`, without credentials `tok-anon-<n>` (no rights), wrong ones 401.
    Users(Vec<User>),
}

/// A user of [`Auth::Users`].
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    /// Repositories the user may pull (exact names).
    pub repos: Vec<String>,
}

impl User {
    pub fn new(name: &str, password: &str, repos: &[&str]) -> User {
        User { name: name.into(), password: password.into(), repos: repos.iter().map(|r| (*r).to_owned()).collect() }
    }
}

/// A request the origin received.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl Logged {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

#[derive(Clone)]
struct Object {
    body: Bytes,
    content_type: String,
    digest: Digest,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Object>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<Logged>,
    auth: Auth,
    tokens_issued: usize,
    /// Requests now held at a gate, by path.
    holding: HashMap<String, usize>,
}

/// The running origin; stops when dropped.
pub struct Origin {
    pub addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    /// Woken whenever a request starts or stops being held at a gate.
    held: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start() -> Origin {
        Self::start_on("127.0.0.1").await
    }

    /// An origin on another loopback address (`127.0.0.2`: "another host" on this machine).
    pub async fn start_on(ip: &str) -> Origin {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let state = Arc::new(Mutex::new(State::default()));
        let held = Arc::new(Notify::new());
        let (shared, signal) = (Arc::clone(&state), Arc::clone(&held));
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve_connection(socket, Arc::clone(&shared), addr, Arc::clone(&signal)));
            }
        });
        Origin { addr, state, held, task }
    }

    /// How many requests for `path` are held at their gate now.
    pub fn holding(&self, path: &str) -> usize {
        self.state.lock().holding.get(path).copied().unwrap_or(0)
    }

    /// How many requests are held at their gates now, over every path.
    pub fn holding_total(&self) -> usize {
        self.state.lock().holding.values().sum()
    }

    /// Waits until `n` requests for `path` are held at their gate (the origin has sent what it
    /// was told to and waits for the test): tests act on this event, not on a wall-clock margin.
    pub async fn wait_holding(&self, path: &str, n: usize) {
        let wait = async {
            loop {
                let notified = self.held.notified();
                if self.state.lock().holding.get(path).copied().unwrap_or(0) >= n {
                    return;
                }
                notified.await;
            }
        };
        crate::client::bounded(&format!("origin holding {n} request(s) for {path}"), wait).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stores a blob of `repo`; returns its digest.
    pub fn put_blob(&self, repo: &str, body: impl Into<Bytes>) -> Digest {
        let body = body.into();
        let digest = Digest::of(&body);
        let object = Object { body, content_type: "application/octet-stream".into(), digest };
        self.state.lock().objects.insert(format!("/v2/{repo}/blobs/{digest}"), object);
        digest
    }

    /// Stores a blob of `repo` under its sha512 digest; returns the digest.
    pub fn put_blob_sha512(&self, repo: &str, body: impl Into<Bytes>) -> Digest {
        let body = body.into();
        let digest = Digest::of_with(berth_shared::Algorithm::Sha512, &body);
        let object = Object { body, content_type: "application/octet-stream".into(), digest };
        self.state.lock().objects.insert(format!("/v2/{repo}/blobs/{digest}"), object);
        digest
    }

    /// Stores a manifest under its digest and, if given, a tag; returns the digest.
    pub fn put_manifest(&self, repo: &str, tag: Option<&str>, media_type: &str, body: impl Into<Bytes>) -> Digest {
        let body = body.into();
        let digest = Digest::of(&body);
        let object = Object { body, content_type: media_type.into(), digest };
        let mut state = self.state.lock();
        state.objects.insert(format!("/v2/{repo}/manifests/{digest}"), object.clone());
        if let Some(tag) = tag {
            state.objects.insert(format!("/v2/{repo}/manifests/{tag}"), object);
        }
        digest
    }

    /// Serves arbitrary bytes at a path (e.g. redirect targets).
    pub fn put_raw(&self, path: &str, body: impl Into<Bytes>) {
        let body: Bytes = body.into();
        let digest = Digest::of(&body);
        self.state
            .lock()
            .objects
            .insert(path.into(), Object { body, content_type: "application/octet-stream".into(), digest });
    }

    /// Queues a fault for the next request to `path`.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state.lock().faults.entry(path.into()).or_default().push_back(fault);
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    pub fn set_auth(&self, auth: Auth) {
        self.state.lock().auth = auth;
    }

    /// Every request received so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().log.clone()
    }

    /// Requests with this method whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.state.lock().log.iter().filter(|l| l.method == method && l.path.starts_with(prefix)).count()
    }

    pub fn tokens_issued(&self) -> usize {
        self.state.lock().tokens_issued
    }
}

async fn serve_connection(
    mut socket: TcpStream,
    state: Arc<Mutex<State>>,
    addr: std::net::SocketAddr,
    held: Arc<Notify>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        state.lock().log.push(request.clone());
        if !respond(&mut socket, &request, &Hold { state: &state, held: &held }, addr).await {
            return;
        }
    }
}

async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Logged> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let mut parts = lines.next()?.split(' ');
            let method = parts.next()?.to_owned();
            let target = parts.next()?.to_owned();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            return Some(Logged { method, path: path.into(), query: query.into(), headers });
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn head(status: u16, headers: &[(&str, String)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.into_bytes()
}

async fn simple(socket: &mut TcpStream, status: u16, extra: &[(&str, String)], body: &[u8], is_head: bool) -> bool {
    let mut headers = vec![("Content-Length", body.len().to_string()), ("Content-Type", "application/json".into())];
    headers.extend(extra.iter().cloned());
    let mut out = head(status, &headers);
    if !is_head {
        out.extend_from_slice(body);
    }
    socket.write_all(&out).await.is_ok()
}

/// Answers one request; returns whether the connection may serve another.
/// Where a request held at a gate is counted, and who is told.
struct Hold<'a> {
    state: &'a Arc<Mutex<State>>,
    held: &'a Arc<Notify>,
}

impl Hold<'_> {
    /// Counts `path` as held while waiting for `gate`.
    async fn at(&self, path: &str, gate: &Notify) {
        *self.state.lock().holding.entry(path.to_owned()).or_default() += 1;
        self.held.notify_waiters();
        gate.notified().await;
        if let Some(n) = self.state.lock().holding.get_mut(path) {
            *n -= 1;
        }
        self.held.notify_waiters();
    }
}

async fn respond(socket: &mut TcpStream, req: &Logged, hold: &Hold<'_>, addr: std::net::SocketAddr) -> bool {
    let state = hold.state;
    let is_head = req.method == "HEAD";
    if req.path == "/token" {
        return issue_token(socket, req, state).await;
    }
    if let Some(challenge) = auth_challenge(req, state, addr) {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        return simple(socket, 401, &[("WWW-Authenticate", challenge)], body, is_head).await;
    }
    let (object, fault) = {
        let mut s = state.lock();
        // Scripted faults are for whole fetches; a ranged request is answered as asked.
        let fault = match req.header("Range") {
            Some(_) => None,
            None => s.faults.get_mut(&req.path).and_then(VecDeque::pop_front),
        };
        (s.objects.get(&req.path).cloned(), fault)
    };
    match (&fault, object) {
        (Some(Fault::Status(code)), _) => {
            let body = format!(r#"{{"errors":[{{"code":"UNKNOWN","message":"scripted {code}"}}]}}"#);
            simple(socket, *code, &[], body.as_bytes(), is_head).await
        }
        (Some(Fault::GateStatus { status, gate }), _) => {
            hold.at(&req.path, gate).await;
            let body = format!(r#"{{"errors":[{{"code":"NAME_UNKNOWN","message":"scripted {status}"}}]}}"#);
            simple(socket, *status, &[], body.as_bytes(), is_head).await
        }
        (Some(Fault::Empty), Some(object)) => {
            let headers = [("Docker-Content-Digest", object.digest.to_string())];
            simple(socket, 200, &headers, b"", is_head).await
        }
        (Some(Fault::StallHeaders), _) => {
            std::future::pending::<()>().await;
            false
        }
        (Some(Fault::Redirect { base }), _) => {
            simple(socket, 307, &[("Location", format!("{base}{}", req.path))], b"", is_head).await
        }
        (_, None) => {
            let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"not here"}]}"#;
            simple(socket, 404, &[], body, is_head).await
        }
        (None, Some(object)) if req.header("Range").is_some() => send_range(socket, &object, req, is_head, hold).await,
        (_, Some(object)) => send_object(socket, &object, fault, is_head, (hold, &req.path)).await,
    }
}

/// `Range: bytes=<first>-<last>` on an object without a fault: `206` with that slice (a range
/// it cannot read or satisfy: the whole object).
async fn send_range(socket: &mut TcpStream, object: &Object, req: &Logged, is_head: bool, hold: &Hold<'_>) -> bool {
    let len = object.body.len() as u64;
    let range = req.header("Range").and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.split_once('-'));
    let parsed = range.and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
    let Some((first, last)) = parsed.filter(|(a, b)| a <= b && *b < len) else {
        return send_object(socket, object, None, is_head, (hold, &req.path)).await;
    };
    let headers = [
        ("Content-Length", (last - first + 1).to_string()),
        ("Content-Range", format!("bytes {first}-{last}/{len}")),
        ("Content-Type", object.content_type.clone()),
        ("Docker-Content-Digest", object.digest.to_string()),
    ];
    if socket.write_all(&head(206, &headers)).await.is_err() {
        return false;
    }
    is_head || socket.write_all(&object.body[first as usize..=last as usize]).await.is_ok()
}

async fn send_object(
    socket: &mut TcpStream,
    object: &Object,
    fault: Option<Fault>,
    is_head: bool,
    (hold, path): (&Hold<'_>, &str),
) -> bool {
    let headers = [
        ("Content-Length", object.body.len().to_string()),
        ("Content-Type", object.content_type.clone()),
        ("Docker-Content-Digest", object.digest.to_string()),
    ];
    if socket.write_all(&head(200, &headers)).await.is_err() {
        return false;
    }
    if is_head {
        return true;
    }
    let body = match fault {
        Some(Fault::WrongBytes) | Some(Fault::Gate { corrupt: true, .. }) => {
            Bytes::from(object.body.iter().map(|b| b ^ 0x5a).collect::<Vec<u8>>())
        }
        _ => object.body.clone(),
    };
    match fault {
        Some(Fault::CutShort { after }) => {
            let _ = socket.write_all(&body[..after.min(body.len())]).await;
            let _ = socket.shutdown().await;
            false
        }
        Some(Fault::Reset { after }) => {
            let _ = socket.write_all(&body[..after.min(body.len())]).await;
            let _ = socket.flush().await;
            // SO_LINGER 0 makes the close a reset; it does not block with a zero timeout.
            #[allow(deprecated)]
            let _ = socket.set_linger(Some(Duration::ZERO));
            false
        }
        Some(Fault::StallBody { after }) => {
            let _ = socket.write_all(&body[..after.min(body.len())]).await;
            std::future::pending::<()>().await;
            false
        }
        Some(Fault::Gate { after, gate, .. }) => {
            let after = after.min(body.len());
            if socket.write_all(&body[..after]).await.is_err() {
                return false;
            }
            hold.at(path, &gate).await;
            socket.write_all(&body[after..]).await.is_ok()
        }
        _ => socket.write_all(&body).await.is_ok(),
    }
}

fn auth_challenge(req: &Logged, state: &Arc<Mutex<State>>, addr: std::net::SocketAddr) -> Option<String> {
    let auth = state.lock().auth.clone();
    let presented = req.header("Authorization").unwrap_or_default();
    let repo = req
        .path
        .strip_prefix("/v2/")
        .and_then(|p| p.rsplit_once("/blobs/").or(p.rsplit_once("/manifests/")).or(p.rsplit_once("/tags/")))
        .map(|(r, _)| r);
    let challenge = |scope: &str| {
        Some(format!(r#"Bearer realm="http://{addr}/token",service="scripted",scope="repository:{scope}:pull""#))
    };
    match auth {
        Auth::Users(users) => {
            let user = presented.strip_prefix("Bearer tok-u-").and_then(|t| t.rsplit_once('-')).map(|(u, _)| u);
            let allowed = users
                .iter()
                .any(|u| Some(u.name.as_str()) == user && repo.is_some_and(|r| u.repos.iter().any(|x| x == r)));
            if allowed {
                None
            } else {
                challenge(repo.unwrap_or_default())
            }
        }
        Auth::None => None,
        Auth::Bearer { .. } if presented.starts_with("Bearer tok-") => None,
        Auth::Bearer { .. } => Some(format!(
            r#"Bearer realm="http://{addr}/token",service="scripted",scope="repository:{}:pull""#,
            repo.unwrap_or_default()
        )),
        Auth::Basic { username, password } if presented == basic(&username, &password) => None,
        Auth::Basic { .. } => Some(r#"Basic realm="scripted""#.into()),
    }
}

pub fn basic(username: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}")))
}

async fn issue_token(socket: &mut TcpStream, req: &Logged, state: &Arc<Mutex<State>>) -> bool {
    let auth = state.lock().auth.clone();
    if let Auth::Users(users) = &auth {
        let presented = req.header("Authorization");
        let user = users.iter().find(|u| presented == Some(basic(&u.name, &u.password).as_str()));
        let n = {
            let mut s = state.lock();
            s.tokens_issued += 1;
            s.tokens_issued
        };
        let token = match (user, presented) {
            (Some(u), _) => format!("tok-u-{}-{n}", u.name),
            (None, None) => format!("tok-anon-{n}"),
            (None, Some(_)) => return simple(socket, 401, &[], br#"{"details":"bad credentials"}"#, false).await,
        };
        let body = format!(r#"{{"token":"{token}","expires_in":300}}"#);
        return simple(socket, 200, &[], body.as_bytes(), false).await;
    }
    if let Auth::Bearer { credentials: Some((u, p)) } = auth {
        if req.header("Authorization") != Some(basic(&u, &p).as_str()) {
            return simple(socket, 401, &[], br#"{"details":"bad credentials"}"#, false).await;
        }
    }
    let n = {
        let mut s = state.lock();
        s.tokens_issued += 1;
        s.tokens_issued
    };
    let body = format!(r#"{{"token":"tok-{n}","expires_in":300}}"#);
    simple(socket, 200, &[], body.as_bytes(), false).await
}
