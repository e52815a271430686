//! `GET/HEAD /v2/<name>/blobs/<digest>`: disk hits, single-flight fills, ranges.

use std::sync::Arc;

use berth_shared::{Digest, RepositoryName};
use http::Method;
use pingora::prelude::Session;
use pingora::Result;

use super::respond::{self, content_headers, header, send_header};
use super::RequestCtx;
use crate::cache::fill::Lookup;
use crate::cache::source::{DirectReader, FillReader, FillStart};
use crate::cache::{BlobSource, EntryKey};
use crate::registry::error::Subject;
use crate::registry::range::RangeRequest;
use crate::registry::ApiError;
use crate::state::EdgeState;
use crate::upstream::Upstream;

const BLOB_TYPE: &str = "application/octet-stream";

pub(super) async fn serve(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    digest: Digest,
    is_head: bool,
) -> Result<()> {
    ctx.kind = "blob";
    let range_header = session
        .req_header()
        .headers
        .get(http::header::RANGE)
        .map(|v| v.as_bytes().to_vec());
    let range = match RangeRequest::parse(range_header.as_deref()) {
        Ok(r) => r,
        Err(e) => return respond::error(session, ctx, &e.into()).await,
    };
    if is_head {
        return head(state, session, ctx, upstream, repository, digest).await;
    }
    let source = match open_source(state, ctx, upstream, repository, digest).await {
        Ok(source) => source,
        Err(err) => return respond::error(session, ctx, &err).await,
    };
    ctx.source = Some(if ctx.outcome == "hit" {
        "disk"
    } else {
        source.kind().as_str()
    });
    send(session, ctx, source, digest, range).await
}

/// The blob from disk, from a fill (started or joined), or straight from the upstream.
async fn open_source(
    state: &Arc<EdgeState>,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    digest: Digest,
) -> Result<BlobSource, ApiError> {
    let lookup = state
        .fills
        .lookup(upstream, repository, digest)
        .await
        .map_err(|e| ApiError::from_fill(&e))?;
    let (fill, started) = match lookup {
        Lookup::Cached(file, size) => {
            ctx.outcome = "hit";
            return Ok(BlobSource::Disk { file, size });
        }
        Lookup::Filling { fill, started } => (fill, started),
    };
    // A request that finds the fill already verified is served from local, verified bytes.
    ctx.outcome = match (started, fill.is_verified()) {
        (true, _) => "miss",
        (false, true) => "hit",
        (false, false) => "coalesced",
    };
    match FillReader::start(fill)
        .await
        .map_err(|e| ApiError::from_fill(&e))?
    {
        FillStart::Reader(reader) => Ok(BlobSource::Fill(reader)),
        FillStart::Bypass => {
            ctx.outcome = "bypass";
            let direct =
                DirectReader::open(upstream, repository, digest, Arc::clone(&state.metrics)).await;
            direct
                .map(|d| BlobSource::Direct(Box::new(d)))
                .map_err(|e| ApiError::from_fill(&e))
        }
    }
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
    let mut resp = header(status)?;
    resp.insert_header("Accept-Ranges", "bytes")?;
    match end {
        Some(end) => content_headers(&mut resp, &digest, BLOB_TYPE, end - first)?,
        None => {
            resp.insert_header("Content-Type", BLOB_TYPE)?;
            resp.insert_header("Docker-Content-Digest", digest.to_string())?;
            resp.insert_header("ETag", format!("\"{digest}\""))?;
        }
    }
    if status == 206 {
        let total = size.unwrap_or_default();
        resp.insert_header(
            "Content-Range",
            format!("bytes {first}-{}/{total}", end.unwrap_or(total) - 1),
        )?;
    }
    resp.insert_header("X-Berth-Cache", ctx.outcome)?;
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
    let cached = state.fills.store().contains(&EntryKey::blob(digest));
    let filling = || {
        state
            .fills
            .in_flight_for(&digest)
            .and_then(|f| f.known_size())
    };
    let size = match (cached, cached.is_none().then(filling).flatten()) {
        (Some(size), _) => {
            ctx.outcome = "hit";
            size
        }
        (None, Some(size)) => {
            ctx.outcome = "coalesced";
            size
        }
        (None, None) => {
            state
                .metrics
                .upstream_requests
                .with_label_values(&[&upstream.name, "blob_head"])
                .inc();
            let path = format!("blobs/{digest}");
            match upstream.fetch(Method::HEAD, repository, &path, None).await {
                Ok(r) => match r.content_length() {
                    Some(size) => {
                        ctx.outcome = "miss";
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
                Err(e) => {
                    return respond::error(
                        session,
                        ctx,
                        &ApiError::from_upstream(&e, Subject::Blob),
                    )
                    .await
                }
            }
        }
    };
    let mut resp = header(200)?;
    resp.insert_header("Accept-Ranges", "bytes")?;
    content_headers(&mut resp, &digest, BLOB_TYPE, size)?;
    resp.insert_header("X-Berth-Cache", ctx.outcome)?;
    send_header(session, ctx, resp, true).await
}
