//! Direct answers: on an HTTP/1.1 connection, a `GET` or `HEAD` of a manifest or blob by digest
//! that the memory tier holds is answered here, from the bytes of the request, before Pingora's
//! session parses it. The request is parsed once without allocating; it passes the checks of the
//! full path that apply to a memory hit (the head's limits, the route, the token, quarantine,
//! remembered 404s, the repository's confirmed hold on the digest, the client's `Accept`); the
//! response is the full path's, byte for byte (the head built in one buffer), and it is counted,
//! logged and recorded as the full path does.
//!
//! Every other request is handed to Pingora with the bytes already read, and takes the full path
//! (`proxy/mod.rs`): a miss, a tag, a range, a refusal or challenge, a head that does not arrive
//! in one read, and any header that changes the answer or the connection (`Connection`, body
//! framing, `Expect`, `Upgrade`, a region hop). The connection comes back here after each
//! response Pingora writes, so a kept-alive connection mixes both.

use std::sync::Arc;
use std::time::Instant;

use berth_shared::{Digest, Reference};
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;

use super::connection::GuardedStream;
use crate::cache::EntryKey;
use crate::metrics::{Outcome, RequestKind, Tier};
use crate::registry::route::Request;
use crate::registry::{AcceptList, Target};
use crate::state::{EdgeState, Live};

/// The largest write of a body to the socket (docs/benchmarks.md: direct answers).
const WRITE_PIECE: usize = 1 << 20;

/// The largest body written together with its head.
const JOINED_MAX: usize = 64 << 10;

/// Headers a direct answer takes; a request with more goes to the full path.
const MAX_HEADERS: usize = 32;

/// Headers after which the request is not a plain memory hit on a kept-alive connection.
const HAND_OFF_HEADERS: [&str; 7] =
    ["connection", "content-length", "transfer-encoding", "expect", "upgrade", "range", "x-berth-peer"];

/// What the connection does after [`serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// The client left, the socket failed, or the server stops: close it.
    Close,
    /// The unread bytes are a request for the full path.
    HandOff,
}

/// One answered request.
struct Answer {
    /// The request's head, to consume once answered.
    head_len: usize,
    head: Vec<u8>,
    body: Option<Bytes>,
    kind: RequestKind,
    is_head: bool,
    /// The request's path, kept for the access log when there is one.
    path: Option<String>,
    repository: String,
    reference: Digest,
    upstream: String,
    user: Option<String>,
}

/// Answers the connection's requests while they are memory hits.
pub(super) async fn serve(state: &Arc<EdgeState>, stream: &mut GuardedStream, shutdown: &ShutdownWatch) -> Next {
    loop {
        if !state.live().config.server.direct_hits {
            return Next::HandOff;
        }
        if stream.unread().is_empty() {
            let mut stop = shutdown.clone();
            if *stop.borrow() {
                // Stopping: Pingora's session answers a request already sent, then closes.
                return Next::HandOff;
            }
            tokio::select! {
                biased;
                read = stream.read_more() => if !matches!(read, Ok(n) if n > 0) { return Next::Close },
                _ = stop.changed() => return Next::HandOff,
            }
        }
        // The config in force when the request arrived (a reload meanwhile applies to it).
        let live = state.live();
        if state.drain.is_closing() || !live.config.server.direct_hits {
            // Drained past its period: the full path answers and closes the connection.
            return hand_off(stream);
        }
        let started = Instant::now();
        let Some(answer) = answer(state, &live, stream.unread()) else { return hand_off(stream) };
        stream.consume(answer.head_len);
        if !send(state, stream, &answer, started).await {
            return Next::Close;
        }
    }
}

/// The request read so far goes on to Pingora's session (its header timer runs).
fn hand_off(stream: &mut GuardedStream) -> Next {
    stream.reading_request();
    Next::HandOff
}

/// The answer to the request at the start of `raw`, if it is a memory hit the full path would
/// answer with `200`; `None` for anything else.
fn answer(state: &EdgeState, live: &Live, raw: &[u8]) -> Option<Answer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(head_len) = req.parse(raw).ok()? else { return None };
    let (method, target) = (req.method?, req.path?);
    if req.version != Some(1) || !within_limits(live, target, req.headers) || !plain_target(target) {
        return None;
    }
    let (mut authorization, mut hosts) = (None, 0);
    for header in req.headers.iter() {
        if HAND_OFF_HEADERS.iter().any(|h| header.name.eq_ignore_ascii_case(h)) {
            return None;
        }
        if header.name.eq_ignore_ascii_case("host") {
            // Pingora refuses two `Host` headers, or one with userinfo: its answer, not ours.
            hosts += 1;
            if hosts > 1 || header.value.contains(&b'@') {
                return None;
            }
        }
        if header.name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                // Two credentials: the full path reads the first; no guess is made here.
                return None;
            }
            authorization = Some(header.value);
        }
    }
    let (path, query) = target.split_once('?').map_or((target, None), |(p, q)| (p, Some(q)));
    let Ok(Request::Pull(route)) = live.router.route(method, path, query) else { return None };
    let upstream = live.upstreams.get(route.upstream)?;
    let user = live.access.authorize(upstream.index, &upstream.name, route.repository.as_str(), authorization).ok()?;
    let (digest, kind) = match route.target {
        Target::Blob(d) => (d, RequestKind::Blob),
        Target::Manifest(Reference::Digest(d)) => (d, RequestKind::Manifest),
        Target::Manifest(Reference::Tag(_)) => return None,
    };
    let negative_key = (upstream.index, route.repository.clone(), super::target_key(&route.target));
    if state.quarantine.reason(&digest).is_some()
        || state.negative.is_missing(&negative_key, upstream.config.negative_ttl.get())
        || !live.access.holds(upstream.index, &route.repository, digest)
    {
        return None;
    }
    let is_head = method == "HEAD";
    let (head, body) = match kind {
        RequestKind::Manifest => {
            let accept = AcceptList::from_headers(
                req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("accept")).map(|h| h.value),
            );
            let manifest = state.manifests.in_memory(digest, &accept)?;
            (response_head(&manifest.media_type, false, digest, manifest.bytes.len()), manifest.bytes)
        }
        _ => {
            // As the full path: a HEAD asks the memory tier for the size; a GET is a hit(memory).
            let bytes = match is_head {
                true => state.memory.get(&EntryKey::blob(digest))?.bytes,
                false => super::read_path::memory_hit(state, digest)?,
            };
            (response_head(super::blob::BLOB_TYPE, true, digest, bytes.len()), bytes)
        }
    };
    let body = (!is_head).then_some(body);
    let (repository, upstream) = (route.repository.as_str().to_owned(), upstream.name.clone());
    let path = state.access_log.enabled().then(|| path.to_owned());
    Some(Answer { head_len, head, body, kind, is_head, path, repository, reference: digest, upstream, user })
}

/// Within the head limits of `head::check` (beyond them the full path answers 414 or 431).
fn within_limits(live: &Live, target: &str, headers: &[httparse::Header<'_>]) -> bool {
    let fields = headers.iter().map(|h| (h.name.len(), h.value.len()));
    super::head::within_limits(&live.config.server, target.len(), fields)
}

/// A request target Pingora's URI parser reads as the same path and query: printable ASCII
/// with no fragment, no space and none of the characters a URI may not carry.
fn plain_target(target: &str) -> bool {
    target.starts_with("/v2/")
        && target.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'#' | b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}')
        })
}

/// The head the full path writes for a `200` of a memory hit (Pingora's order and spelling:
/// well-known names capitalised, `Date` and `Connection` last).
fn response_head(content_type: &str, ranges: bool, digest: Digest, length: usize) -> Vec<u8> {
    let text = digest.text();
    let mut head = Vec::with_capacity(400);
    head.extend_from_slice(b"HTTP/1.1 200 OK\r\ndocker-distribution-api-version: registry/2.0\r\n");
    if ranges {
        head.extend_from_slice(b"Accept-Ranges: bytes\r\n");
    }
    push_header(&mut head, "Content-Type", content_type);
    push_header(&mut head, "Content-Length", &length.to_string());
    push_header(&mut head, "docker-content-digest", text.as_str());
    head.extend_from_slice(b"etag: \"");
    head.extend_from_slice(text.as_str().as_bytes());
    head.extend_from_slice(b"\"\r\nx-berth-cache: hit\r\n");
    DATE.with(|date| push_header(&mut head, "Date", &date.now()));
    head.extend_from_slice(b"Connection: keep-alive\r\n\r\n");
    head
}

fn push_header(head: &mut Vec<u8>, name: &str, value: &str) {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    head.extend_from_slice(value.as_bytes());
    head.extend_from_slice(b"\r\n");
}

/// The `Date` value, formatted once a second per thread.
struct DateCache(std::cell::RefCell<(u64, String)>);

impl DateCache {
    fn now(&self) -> String {
        let now = std::time::SystemTime::now();
        let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut cached = self.0.borrow_mut();
        if cached.0 != second || cached.1.is_empty() {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        cached.1.clone()
    }
}

thread_local! {
    static DATE: DateCache = const { DateCache(std::cell::RefCell::new((0, String::new()))) };
}

/// Writes the answer and records it; `false` if the connection failed.
async fn send(state: &EdgeState, stream: &mut GuardedStream, answer: &Answer, started: Instant) -> bool {
    let _in_flight = state.drain.request_started();
    let first_byte = started.elapsed();
    let body = answer.body.as_deref().unwrap_or_default();
    // A small body leaves with the head in one write (the socket has no write buffer).
    let joined;
    let (head, rest): (&[u8], &[u8]) = match body.len() <= JOINED_MAX {
        true => {
            joined = [answer.head.as_slice(), body].concat();
            (&joined, &[])
        }
        false => (&answer.head, body),
    };
    let mut written = stream.write_all(head).await;
    // In pieces: one write of a whole large body moves less per second than writes of 1 MiB.
    for piece in rest.chunks(WRITE_PIECE) {
        if written.is_err() {
            break;
        }
        written = stream.write_all(piece).await;
    }
    if written.is_ok() {
        written = stream.flush().await;
    }
    let ok = written.is_ok();
    record(state, stream, answer, started, first_byte, ok);
    ok
}

/// Metrics, the pull count, the access log and the debug line, as `logging` in `proxy/mod.rs`.
fn record(
    state: &EdgeState,
    stream: &GuardedStream,
    answer: &Answer,
    started: Instant,
    first_byte: std::time::Duration,
    ok: bool,
) {
    let elapsed = started.elapsed();
    let bytes = answer.body.as_ref().map_or(0, |b| b.len() as u64);
    let reference = answer.reference.to_string();
    if ok && answer.kind == RequestKind::Manifest {
        state.pulls.record(&answer.upstream, &answer.repository, &reference);
    }
    state.metrics.direct_answers.inc();
    let times = crate::metrics::Times { elapsed, first_byte: Some(first_byte) };
    // As the full path: a blob's HEAD is answered from what is known, served by no tier.
    let tier = (answer.kind == RequestKind::Manifest || !answer.is_head).then_some(Tier::Memory);
    let served = tier.map(|tier| (tier, bytes, ok));
    state.metrics.per_request.record(answer.kind, Outcome::Hit, served, times);
    if state.access_log.enabled() {
        access_line(state, stream, answer, (&reference, tier), bytes, (elapsed, first_byte));
    }
    let (kind, tier) = (answer.kind.as_str(), tier.map_or("", Tier::as_str));
    let (repository, upstream) = (answer.repository.as_str(), answer.upstream.as_str());
    let elapsed_ms = elapsed.as_millis() as u64;
    match ok {
        true => tracing::debug!(
            kind,
            outcome = "hit",
            tier,
            status = 200,
            bytes,
            elapsed_ms,
            repository,
            reference,
            upstream,
            direct = true,
            "request"
        ),
        false => tracing::warn!(
            kind,
            outcome = "hit",
            tier,
            status = 200,
            bytes,
            elapsed_ms,
            repository,
            reference,
            upstream,
            "request aborted: connection failed"
        ),
    }
}

fn access_line(
    state: &EdgeState,
    stream: &GuardedStream,
    answer: &Answer,
    (reference, tier): (&str, Option<Tier>),
    bytes: u64,
    (elapsed, first_byte): (std::time::Duration, std::time::Duration),
) {
    let request_id = format!("{:016x}", rand::random::<u64>());
    let line = crate::access_log::Line {
        time: berth_shared::time::now_rfc3339(),
        request_id: &request_id,
        client: stream.client_addr(),
        method: if answer.is_head { "HEAD" } else { "GET" },
        path: answer.path.as_deref().unwrap_or_default(),
        repository: Some(&answer.repository),
        reference: Some(reference),
        upstream: Some(&answer.upstream),
        status: 200,
        bytes,
        kind: answer.kind.as_str(),
        outcome: Outcome::Hit.as_str(),
        tier: tier.map(Tier::as_str),
        ttfb_ms: Some(first_byte.as_secs_f64() * 1000.0),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        user: answer.user.as_deref(),
    };
    state.access_log.record(&line, &state.metrics);
}
