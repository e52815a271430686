//! Pingora glue: every pull request is answered in `request_filter` by Berth's own cache logic;
//! Pingora owns the downstream connection (HTTP/1.1, HTTP/2, keep-alive, shutdown).

mod authz;
mod blob;
pub mod connection;
mod direct;
mod head;
mod manifest;
mod read_path;
mod respond;
mod token;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Session};
use pingora::proxy::FailToProxy;
use pingora::{Error, ErrorType, Result};
use tracing::Instrument;

use berth_shared::Reference;

use crate::metrics::{Outcome, RequestKind, Tier};
use crate::registry::route::Request;
use crate::registry::ApiError;
use crate::registry::Target;
use crate::state::EdgeState;

/// Per-request facts for metrics and the request log.
pub struct RequestCtx {
    started: Instant,
    span: tracing::Span,
    kind: RequestKind,
    outcome: Outcome,
    /// The tier that served the body.
    tier: Option<Tier>,
    status: u16,
    body_bytes: u64,
    headers_sent: bool,
    /// Where an upstream's 404 is remembered (for `negative_ttl`): recorded before the answer leaves, so the client's next
    /// request finds it.
    remember_404: Option<(Arc<EdgeState>, crate::cache::negative::NegativeKey, std::time::Duration)>,
    /// The request came from another edge of the region (a signed hop: never forwarded again).
    from_peer: bool,
    /// Counts this request as in flight (a shutdown waits for it) until dropped.
    _in_flight: Option<crate::drain::InFlight>,
    /// The upstreams, access rules and limits this request uses from start to end (a reload
    /// meanwhile applies to the next request).
    live: Arc<crate::state::Live>,
    /// For the access log: what the request named, who made it, when its first byte left.
    repository: Option<String>,
    reference: Option<String>,
    upstream: Option<String>,
    user: Option<String>,
    first_byte: Option<std::time::Duration>,
}

impl RequestCtx {
    fn new(live: Arc<crate::state::Live>) -> Self {
        RequestCtx {
            live,
            started: Instant::now(),
            span: tracing::Span::none(),
            kind: RequestKind::Other,
            outcome: Outcome::Error,
            tier: None,
            status: 0,
            body_bytes: 0,
            headers_sent: false,
            remember_404: None,
            from_peer: false,
            _in_flight: None,
            repository: None,
            reference: None,
            upstream: None,
            user: None,
            first_byte: None,
        }
    }
}

/// The edge's Pingora service.
pub struct EdgeProxy {
    state: Arc<EdgeState>,
}

impl EdgeProxy {
    pub fn new(state: Arc<EdgeState>) -> Self {
        EdgeProxy { state }
    }
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new(self.state.live());
        ctx._in_flight = Some(self.state.drain.request_started());
        ctx
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(ErrorType::InternalError, "every request is answered in request_filter"))
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.state.drain.is_closing() {
            // Drained past its period: this connection ends after this response (Pingora keeps
            // an HTTP/1 connection alive inside its own loop, so this is where it is told).
            session.set_keepalive(None);
        }
        if let Err(refused) = head::check(&self.state, session) {
            // The connection is closed after the answer: what follows on it cannot be trusted.
            session.set_keepalive(None);
            respond::error(session, ctx, &refused).await?;
            return Ok(true);
        }
        let req = session.req_header();
        ctx.span = tracing::info_span!(
            "request",
            method = %req.method,
            path = %req.uri.path(),
            // containerd's raw `ns` (still percent-encoded), so a wrong one can be diagnosed.
            ns = raw_ns(req.uri.query()),
            repository = tracing::field::Empty,
            reference = tracing::field::Empty,
            upstream = tracing::field::Empty,
        );
        let span = ctx.span.clone();
        handle(&self.state, session, ctx).instrument(span).await?;
        Ok(true)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut RequestCtx) -> FailToProxy {
        ctx.outcome = Outcome::Error;
        if !ctx.headers_sent {
            // Nothing sent yet (an internal failure): answer with a proper error; the detail is
            // logged, not sent.
            tracing::warn!(error = %e, "internal error before the response");
            let err = ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "internal error");
            let _ = respond::error(session, ctx, &err).await;
        }
        // Headers were sent: the body is cut short and the connection closed, so the client
        // sees an incomplete response, never a complete one with wrong bytes.
        FailToProxy { error_code: ctx.status, can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let elapsed = ctx.started.elapsed();
        if self.state.access_log.enabled() {
            access_line(&self.state, session, ctx, elapsed);
        }
        if let (None, RequestKind::Manifest, 200, Some(upstream), Some(repository), Some(reference)) =
            (e, ctx.kind, ctx.status, &ctx.upstream, &ctx.repository, &ctx.reference)
        {
            self.state.pulls.record(upstream, repository, reference);
        }
        let served = ctx.tier.map(|tier| (tier, ctx.body_bytes, e.is_none() && ctx.status < 400));
        let times = crate::metrics::Times { elapsed, first_byte: ctx.first_byte };
        self.state.metrics.per_request.record(ctx.kind, ctx.outcome, served, times);
        let _enter = ctx.span.enter();
        let (kind, outcome, tier) = (ctx.kind.as_str(), ctx.outcome.as_str(), ctx.tier.map_or("", Tier::as_str));
        let elapsed_ms = elapsed.as_millis() as u64;
        match e {
            Some(e) => {
                tracing::warn!(kind, outcome, tier, status = ctx.status, bytes = ctx.body_bytes, elapsed_ms, error = %e, "request aborted")
            }
            // One line per request only at debug: at thousands of requests a second the
            // process log would cost more than the requests (the access log is the record).
            None => {
                tracing::debug!(kind, outcome, tier, status = ctx.status, bytes = ctx.body_bytes, elapsed_ms, "request")
            }
        }
    }
}

/// Writes the request's access-log line.
fn access_line(state: &EdgeState, session: &Session, ctx: &RequestCtx, elapsed: std::time::Duration) {
    let req = session.req_header();
    let request_id = format!("{:016x}", rand::random::<u64>());
    let line = crate::access_log::Line {
        time: berth_shared::time::now_rfc3339(),
        request_id: &request_id,
        client: session.client_addr().map(|a| a.to_string()),
        method: req.method.as_str(),
        path: req.uri.path(),
        repository: ctx.repository.as_deref(),
        reference: ctx.reference.as_deref(),
        upstream: ctx.upstream.as_deref(),
        status: ctx.status,
        bytes: ctx.body_bytes,
        kind: ctx.kind.as_str(),
        outcome: ctx.outcome.as_str(),
        tier: ctx.tier.map(Tier::as_str),
        ttfb_ms: ctx.first_byte.map(|t| t.as_secs_f64() * 1000.0),
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        user: ctx.user.as_deref(),
    };
    state.access_log.record(&line, &state.metrics);
}

/// The raw `ns` query parameter, or "" when the request has none.
fn raw_ns(query: Option<&str>) -> &str {
    query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ns="))).unwrap_or_default()
}

async fn handle(state: &Arc<EdgeState>, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    let req = session.req_header();
    let is_head = req.method == http::Method::HEAD;
    if req.uri.path() == "/token" {
        return token::serve(state, session, ctx).await;
    }
    let routed = ctx.live.router.route(req.method.as_str(), req.uri.path(), req.uri.query());
    match routed {
        Err(e) => respond::error(session, ctx, &ApiError::from(e)).await,
        Ok(Request::Base) => {
            ctx.kind = RequestKind::Base;
            let live = Arc::clone(&ctx.live);
            if let Err(challenge) = authz::authorize_base(state, &live, session) {
                return respond::error(session, ctx, &challenge).await;
            }
            ctx.outcome = Outcome::Hit;
            respond::base(session, ctx, is_head).await
        }
        Ok(Request::Pull(route)) => pull(state, session, ctx, route, is_head).await,
    }
}

/// A manifest or blob request: authorization, quarantine, remembered 404s, then the cache.
async fn pull(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    route: crate::registry::Route,
    is_head: bool,
) -> Result<()> {
    let live = Arc::clone(&ctx.live);
    let Some(upstream) = live.upstreams.get(route.upstream).cloned() else {
        let err = ApiError::new(http::StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "upstream table out of sync");
        return respond::error(session, ctx, &err).await;
    };
    ctx.span.record("repository", route.repository.as_str());
    ctx.span.record("upstream", upstream.name.as_str());
    ctx.repository = Some(route.repository.as_str().to_owned());
    ctx.upstream = Some(upstream.name.clone());
    ctx.reference = Some(match &route.target {
        Target::Blob(d) => d.to_string(),
        Target::Manifest(r) => r.to_string(),
    });
    // A peer authorized its own client; the region's key authorizes the peer.
    match authz::peer(state, session) {
        Ok(Some(sender)) => {
            ctx.from_peer = true;
            ctx.user = Some(format!("peer {sender}"));
        }
        Ok(None) => match authz::authorize(state, &live, session, &upstream, &route.repository) {
            Ok(user) => ctx.user = user,
            Err(challenge) => return respond::error(session, ctx, &challenge).await,
        },
        Err(refused) => return respond::error(session, ctx, &refused).await,
    }
    let digest = match &route.target {
        Target::Blob(d) | Target::Manifest(Reference::Digest(d)) => Some(d),
        Target::Manifest(Reference::Tag(_)) => None,
    };
    if let Some(Err(denied)) = digest.map(|d| authz::quarantined(state, d)) {
        return respond::error(session, ctx, &denied).await;
    }
    let ttl = upstream.config.negative_ttl.get();
    let negative_key = (upstream.index, route.repository.clone(), target_key(&route.target));
    if state.negative.is_missing(&negative_key, ttl) {
        return respond::error(session, ctx, &not_found(&upstream.name, &route.target)).await;
    }
    ctx.remember_404 = Some((Arc::clone(state), negative_key, ttl));
    serve_pull(state, session, ctx, &upstream, &route, is_head).await
}

/// The negative-cache key of a pull target.
fn target_key(target: &Target) -> String {
    match target {
        Target::Blob(d) => format!("blob:{d}"),
        Target::Manifest(r) => format!("manifest:{r}"),
    }
}

/// The 404 answered from the negative cache.
fn not_found(upstream: &str, target: &Target) -> ApiError {
    let code = match target {
        Target::Blob(_) => "BLOB_UNKNOWN",
        Target::Manifest(_) => "MANIFEST_UNKNOWN",
    };
    ApiError::new(http::StatusCode::NOT_FOUND, code, format!("upstream {upstream} answered 404 (remembered)"))
}

async fn serve_pull(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &Arc<crate::upstream::Upstream>,
    route: &crate::registry::Route,
    is_head: bool,
) -> Result<()> {
    match &route.target {
        Target::Blob(digest) => {
            ctx.span.record("reference", tracing::field::display(digest));
            blob::serve(state, session, ctx, upstream, &route.repository, *digest, is_head).await
        }
        Target::Manifest(reference) => {
            ctx.span.record("reference", tracing::field::display(reference));
            manifest::serve(state, session, ctx, upstream, &route.repository, reference, is_head).await
        }
    }
}
