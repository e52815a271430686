//! `GET/HEAD /v2/<name>/blobs/<digest>`: the range, the source from the read path
//! (`read_path.rs`), the headers and the streamed body; `HEAD` from what is known locally.

use std::sync::Arc;

use berth_shared::{Digest, RepositoryName};
use http::Method;
use pingora::prelude::Session;
use pingora::Result;

use super::read_path::BlobRead;
use super::respond::{self, content_headers, header, send_header};
use super::RequestCtx;
use crate::cache::fill::Asker;
use crate::cache::source::ranged;
use crate::cache::{BlobSource, EntryKey};
use crate::metrics::{Outcome, RequestKind};
use crate::registry::error::Subject;
use crate::registry::range::{ByteRange, RangeRequest};
use crate::registry::ApiError;
use crate::state::EdgeState;
use crate::upstream::Upstream;

pub(super) const BLOB_TYPE: &str = "application/octet-stream";

pub(super) async fn serve(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    digest: Digest,
    is_head: bool,
) -> Result<()> {
    ctx.kind = RequestKind::Blob;
    let range_header = session.req_header().headers.get(http::header::RANGE).map(|v| v.as_bytes().to_vec());
    let range = match RangeRequest::parse(range_header.as_deref()) {
        Ok(r) => r,
        Err(e) => return respond::error(session, ctx, &e.into()).await,
    };
    if is_head {
        return head(state, session, ctx, upstream, repository, digest).await;
    }
    // A range that starts far into the blob may be fetched on its own if the blob is cold.
    let ahead = match range {
        RangeRequest::Single(ByteRange::From { first, last }) if first > ranged::AHEAD => Some((first, last)),
        _ => None,
    };
    let asker = if ctx.from_peer { Asker::Peer } else { Asker::Client };
    let read = BlobRead { state, live: Arc::clone(&ctx.live), upstream, repository, digest, ahead, asker };
    let source = match read.open(ctx).await {
        Ok(source) => source,
        Err(err) => return respond::error(session, ctx, &err).await,
    };
    send(session, ctx, source, digest, range).await
}

/// Writes the headers (200 or 206) and streams the body.
async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut source: BlobSource,
    digest: Digest,
    range: RangeRequest,
) -> Result<()> {
    let size = source.size();
    let (status, first, end) = match (range, size) {
        (RangeRequest::Single(r), Some(size)) => match r.resolve(size) {
            Ok((first, last)) => (206, first, Some(last + 1)),
            Err(e) => return respond::error(session, ctx, &ApiError::unsatisfiable(e)).await,
        },
        (_, size) => (200, 0, size),
    };
    // A cold range far ahead of the fill gets its own upstream request (checked at the end).
    if let (206, BlobSource::Fill(reader), Some(end)) = (status, &source, end) {
        if let Some(ranged) = reader.ranged(first, end).await {
            source = BlobSource::Ranged(Box::new(ranged));
        }
    }
    // An empty body would be complete with the headers: verify before sending them.
    if end == Some(first) {
        if let Err(e) = source.finish().await {
            return respond::error(session, ctx, &ApiError::from_fill(&e)).await;
        }
    }
    let mut resp = header(status)?;
    resp.insert_header(http::header::ACCEPT_RANGES, http::HeaderValue::from_static("bytes"))?;
    match end {
        Some(end) => content_headers(&mut resp, &digest, BLOB_TYPE, end - first)?,
        None => {
            resp.insert_header(http::header::CONTENT_TYPE, BLOB_TYPE)?;
            respond::digest_headers(&mut resp, &digest)?;
        }
    }
    if status == 206 {
        let total = size.unwrap_or_default();
        resp.insert_header(http::header::CONTENT_RANGE, format!("bytes {first}-{}/{total}", end.unwrap_or(total) - 1))?;
    }
    resp.insert_header(respond::BERTH_CACHE, ctx.outcome.as_str())?;
    send_header(session, ctx, resp, false).await?;
    respond::stream(session, ctx, &mut source, first, end).await
}

/// HEAD: answered from the index on a hit, from a fill in flight once its size is known, else
/// from the upstream's HEAD (no fill).
async fn head(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    digest: Digest,
) -> Result<()> {
    let key = EntryKey::blob(digest);
    let in_memory = state.memory.get(&key).map(|o| o.bytes.len() as u64);
    let cached = in_memory.or_else(|| state.fills.store().contains(&key));
    let filling = || state.fills.in_flight_for(&digest).and_then(|f| f.known_size());
    let local = match (cached, cached.is_none().then(filling).flatten()) {
        (Some(size), _) => Some((Outcome::Hit, size)),
        (None, Some(size)) => Some((Outcome::Coalesced, size)),
        (None, None) => None,
    };
    if local.is_some() {
        if let Err(e) = super::authz::ensure_holds(state, &ctx.live, upstream, repository, digest, Subject::Blob).await
        {
            return respond::error(session, ctx, &e).await;
        }
    }
    let size = match local {
        Some((outcome, size)) => {
            ctx.outcome = outcome;
            size
        }
        None => {
            state.metrics.upstream_request(&upstream.name, crate::metrics::UpstreamRequest::BlobHead);
            let path = format!("blobs/{digest}");
            match upstream.fetch(Method::HEAD, repository, &path, None).await {
                Ok(r) => match r.content_length() {
                    Some(size) => {
                        ctx.live.access.confirm(upstream.index, repository, digest);
                        ctx.outcome = Outcome::Miss;
                        size
                    }
                    None => {
                        let err = ApiError::new(
                            http::StatusCode::BAD_GATEWAY,
                            "UNAVAILABLE",
                            "upstream HEAD without Content-Length",
                        );
                        return respond::error(session, ctx, &err).await;
                    }
                },
                Err(e) => return respond::error(session, ctx, &ApiError::from_upstream(&e, Subject::Blob)).await,
            }
        }
    };
    let mut resp = header(200)?;
    resp.insert_header(http::header::ACCEPT_RANGES, http::HeaderValue::from_static("bytes"))?;
    content_headers(&mut resp, &digest, BLOB_TYPE, size)?;
    resp.insert_header(respond::BERTH_CACHE, ctx.outcome.as_str())?;
    send_header(session, ctx, resp, true).await
}
