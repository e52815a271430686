//! Authorization on the request path: the Bearer challenge for requests without a valid token,
//! and the check that a repository holds a digest before a cached copy is served under it.

use std::sync::Arc;

use berth_shared::manifest::MANIFEST_MEDIA_TYPES;
use berth_shared::{Digest, RepositoryName};
use http::{Method, StatusCode};
use pingora::prelude::Session;

use crate::access::TokenError;
use crate::registry::error::Subject;
use crate::registry::ApiError;
use crate::state::{EdgeState, Live};
use crate::upstream::Upstream;

/// The base URL clients reach this edge at: `[auth] realm_base`, else the scheme of the
/// listener and the request's host (only host characters are kept: it goes into a header).
pub(super) fn base_url(live: &Live, session: &Session) -> String {
    if let Some(base) = &live.config.auth.realm_base {
        return base.trim_end_matches('/').to_owned();
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let req = session.req_header();
    let host = req
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| req.headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned))
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)))
        .or_else(|| session.server_addr().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{}://{host}", if tls { "https" } else { "http" })
}

/// `401` with `WWW-Authenticate: Bearer realm=…/token,service=…[,scope=…][,error=…]`.
pub(super) fn challenge(
    state: &EdgeState,
    live: &Live,
    session: &Session,
    scope: Option<String>,
    error: Option<TokenError>,
) -> ApiError {
    let mut value =
        format!("Bearer realm=\"{}/token\",service=\"{}\"", base_url(live, session), live.config.auth.service);
    if let Some(scope) = scope {
        value.push_str(&format!(",scope=\"{scope}\""));
    }
    let message = match error {
        Some(TokenError::Expired) => {
            value.push_str(",error=\"invalid_token\"");
            "token expired: log in again"
        }
        Some(TokenError::BadSignature) => {
            value.push_str(",error=\"invalid_token\"");
            "token not issued by this edge"
        }
        _ => "authentication required",
    };
    state.metrics.auth.with_label_values(&["challenged"]).inc();
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).with_header("WWW-Authenticate", value)
}

/// Checks a pull request's token against its route: the user it names (none for an anonymous
/// upstream or an anonymous token), or the challenge to answer with.
pub(super) fn authorize(
    state: &EdgeState,
    live: &Live,
    session: &Session,
    upstream: &Upstream,
    repository: &RepositoryName,
) -> Result<Option<String>, ApiError> {
    let authorization = session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
    match live.access.authorize(upstream.index, &upstream.name, repository.as_str(), authorization) {
        Ok(user) => Ok(user),
        Err(e) => {
            let scope = crate::access::challenge_scope(&upstream.name, repository.as_str());
            Err(challenge(state, live, session, Some(scope), authorization.is_some().then_some(e)))
        }
    }
}

/// `/v2/` on an edge with a protected upstream: a token (of any scope) is needed, so that
/// clients that log in only after a challenge there (Docker) do.
pub(super) fn authorize_base(state: &EdgeState, live: &Live, session: &Session) -> Result<(), ApiError> {
    if !live.access.any_protected() {
        return Ok(());
    }
    let authorization = session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
    match live.access.claims(authorization) {
        Ok(_) => Ok(()),
        Err(e) => Err(challenge(state, live, session, None, authorization.is_some().then_some(e))),
    }
}

/// Holding a digest is not permission: before a cached (or another repository's in-flight)
/// copy is served under `repository` of a protected upstream, the upstream confirms with a HEAD
/// that the repository holds the digest. Confirmations are cached for `authz_ttl`; while the
/// upstream is unavailable, one from the last day still counts.
pub(super) async fn ensure_holds(
    state: &Arc<EdgeState>,
    live: &Live,
    upstream: &Upstream,
    repository: &RepositoryName,
    digest: Digest,
    subject: Subject,
) -> Result<(), ApiError> {
    if live.access.holds(upstream.index, repository, digest) {
        return Ok(());
    }
    let (path, accept) = match subject {
        Subject::Blob => (format!("blobs/{digest}"), None),
        Subject::Manifest => (format!("manifests/{digest}"), Some(MANIFEST_MEDIA_TYPES.join(", "))),
    };
    state.metrics.upstream_request(&upstream.name, crate::metrics::UpstreamRequest::Confirm);
    match upstream.fetch(Method::HEAD, repository, &path, accept.as_deref()).await {
        Ok(_) => {
            live.access.confirm(upstream.index, repository, digest);
            Ok(())
        }
        Err(e) if e.is_unavailable() && live.access.held_before(upstream.index, repository, digest) => {
            tracing::warn!(error = %e, "upstream unavailable: serving on an earlier confirmation");
            Ok(())
        }
        Err(e) => {
            tracing::info!(error = %e, "the upstream did not confirm that the repository holds the digest");
            Err(ApiError::from_upstream(&e, subject))
        }
    }
}

/// A request from another edge of the region: the sender its `X-Berth-Peer` header names,
/// `None` for a request without one, `403 DENIED` for a header that is not valid (wrong key,
/// too old, malformed, or this edge is in no cluster), and `503` while this edge is not ready
/// (the sender then asks the next owner).
pub(super) fn peer(state: &EdgeState, session: &Session) -> Result<Option<String>, ApiError> {
    let req = session.req_header();
    let Some(value) = req.headers.get(crate::cluster::hop::PEER_HEADER) else { return Ok(None) };
    let path = req.uri.path_and_query().map_or("", |p| p.as_str());
    let verified = match state.fills.cluster() {
        None => Err(crate::cluster::hop::HopError::NoCluster),
        Some(cluster) => match value.to_str() {
            Ok(value) => cluster.key().verify(value, crate::cluster::hop::unix_now(), path),
            Err(_) => Err(crate::cluster::hop::HopError::Malformed),
        },
    };
    let refused = |e: ApiError| {
        state.metrics.peer_requests.with_label_values(&["refused"]).inc();
        Err(e)
    };
    let sender = match verified {
        Ok(sender) => sender,
        Err(e) => return refused(ApiError::new(StatusCode::FORBIDDEN, "DENIED", e.to_string())),
    };
    if let Some(reason) = state.not_ready_reason() {
        return refused(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", format!("not ready: {reason}")));
    }
    state.metrics.peer_requests.with_label_values(&["served"]).inc();
    Ok(Some(sender))
}

/// `403 DENIED` naming the reason, when the digest is quarantined.
pub(super) fn quarantined(state: &EdgeState, digest: &Digest) -> Result<(), ApiError> {
    match state.quarantine.reason(digest) {
        None => Ok(()),
        Some(reason) => {
            state.metrics.quarantine_refusals.inc();
            tracing::warn!(%digest, %reason, "quarantined digest refused");
            Err(ApiError::new(StatusCode::FORBIDDEN, "DENIED", format!("{digest} is quarantined: {reason}")))
        }
    }
}
