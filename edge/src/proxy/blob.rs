//! `GET/HEAD /v2/<name>/blobs/<digest>`: disk hits, single-flight fills, ranges.

use std::sync::Arc;

use berth_shared::{Digest, RepositoryName};
use http::Method;
use pingora::prelude::Session;
use pingora::Result;

use super::respond::{self, content_headers, header, send_header};
use super::RequestCtx;
use crate::cache::fill::Lookup;
use crate::cache::ranged::{self, RangedReader};
use crate::cache::source::{DirectReader, DiskReader, Fallback, FillReader, FillStart};
use crate::cache::{blocking, BlobSource, EntryKey, FillError, MemoryObject, SourceKind};
use crate::registry::error::Subject;
use crate::registry::range::{ByteRange, RangeRequest};
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
    let source = match open_source(state, ctx, upstream, repository, digest, ahead).await {
        Ok(source) => source,
        Err(err) => return respond::error(session, ctx, &err).await,
    };
    send(session, ctx, source, digest, range).await
}

/// The blob from memory, from disk, from a fill (started or joined), from its own ranged
/// request beside a fill (`ahead`: a range far into a cold blob), or straight from the upstream.
async fn open_source(
    state: &Arc<EdgeState>,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    digest: Digest,
    ahead: Option<(u64, Option<u64>)>,
) -> Result<BlobSource, ApiError> {
    let key = EntryKey::blob(digest);
    let live = Arc::clone(&ctx.live);
    let holds = |subject| super::authz::ensure_holds(state, &live, upstream, repository, digest, subject);
    if let Some(object) = state.memory.get(&key).filter(|o| memory_intact(state, key, &o.bytes)) {
        holds(Subject::Blob).await?;
        // Keep the disk copy as recent as the memory one: a hot blob must not age out on disk.
        state.fills.store().index().touch(&key);
        ctx.outcome = "hit";
        ctx.tier = Some(SourceKind::Memory.as_str());
        return Ok(BlobSource::Memory(object.bytes));
    }
    let direct = || async {
        let direct = DirectReader::open(upstream, repository, digest, Arc::clone(&state.metrics)).await;
        direct.map(|d| BlobSource::Direct(Box::new(d))).map_err(|e| ApiError::from_fill(&e))
    };
    // A fill started for another repository or upstream that the upstream refused (a 4xx) says
    // nothing about this request: it tries once with its own.
    let mut retried = false;
    loop {
        let lookup =
            state.fills.lookup(upstream, repository, digest, false).await.map_err(|e| ApiError::from_fill(&e))?;
        let (fill, started) = match lookup {
            Lookup::Cached(file, size) => {
                holds(Subject::Blob).await?;
                ctx.outcome = "hit";
                ctx.tier = Some(SourceKind::Disk.as_str());
                return Ok(promote(state, key, file, size).await);
            }
            Lookup::Filling { fill, started } => (fill, started),
            Lookup::Bypass => {
                ctx.outcome = "bypass";
                ctx.tier = Some(SourceKind::Upstream.as_str());
                return direct().await;
            }
        };
        // A request that finds the fill already verified is served from local, verified bytes.
        ctx.outcome = match (started, fill.is_verified()) {
            (true, _) => "miss",
            (false, true) => "hit",
            (false, false) => "coalesced",
        };
        // A verified fill is local bytes; one still running is the upstream's.
        ctx.tier = Some(if ctx.outcome == "hit" { SourceKind::Disk } else { SourceKind::Upstream }.as_str());
        let foreign = fill.upstream != upstream.name || &fill.repository != repository;
        if started {
            // This request's own fill, from this repository: the upstream's answer confirms it.
            live.access.confirm(upstream.index, repository, digest);
        } else if foreign {
            holds(Subject::Blob).await?;
        }
        let fallback = Fallback {
            upstream: Arc::clone(upstream),
            repository: repository.clone(),
            metrics: Arc::clone(&state.metrics),
        };
        // The ranged request goes out beside the fill's (which runs as its own task), without
        // waiting for the fill's headers.
        // (Not beside a fill for another repository: that one may be refused, and this request
        // then starts its own.)
        if let Some((first, last)) = ahead.filter(|(first, _)| !foreign && ranged::worth_it(&fill, *first)) {
            let metrics = Arc::clone(&state.metrics);
            if let Some(r) = RangedReader::open(Arc::clone(&fill), upstream, repository, first, last, metrics).await {
                return Ok(BlobSource::Ranged(Box::new(r)));
            }
        }
        match FillReader::start(fill, Some(fallback)).await {
            Ok(FillStart::Reader(reader)) => return Ok(BlobSource::Fill(reader)),
            Ok(FillStart::Bypass) => {
                ctx.outcome = "bypass";
                ctx.tier = Some(SourceKind::Upstream.as_str());
                return direct().await;
            }
            Err(FillError::Upstream(e)) if foreign && !retried && e.status().is_some_and(|s| s.is_client_error()) => {
                retried = true;
            }
            Err(e) => return Err(ApiError::from_fill(&e)),
        }
    }
}

/// With `verify_on_serve`, whether a memory entry still hashes to its digest (if not, it is
/// dropped and the request goes on to the disk).
fn memory_intact(state: &EdgeState, key: EntryKey, bytes: &bytes::Bytes) -> bool {
    if !state.config.cache.verify_on_serve || berth_shared::Digest::of_with(key.digest.kind(), bytes) == key.digest {
        return true;
    }
    tracing::error!(digest = %key.digest, "memory entry does not hash to its digest: dropped");
    state.metrics.damaged_entries.inc();
    state.memory.remove(&key);
    false
}

/// A disk hit small enough for the memory tier is read whole and kept there; later requests
/// are served from memory. With `verify_on_serve`, disk hits are hashed as they are served and
/// the bytes read for the memory tier are checked first.
async fn promote(state: &Arc<EdgeState>, key: EntryKey, file: Arc<std::fs::File>, size: u64) -> BlobSource {
    let store = Arc::clone(state.fills.store());
    let verify = state.config.cache.verify_on_serve;
    let disk = |file, size| match verify {
        true => BlobSource::Disk(DiskReader::verifying(file, size, key, Arc::clone(&store))),
        false => BlobSource::Disk(DiskReader::new(file, size)),
    };
    if !state.memory.admits(size) {
        return disk(file, size);
    }
    let read = Arc::clone(&file);
    let bytes = blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; size as usize];
        read.read_exact_at(&mut buf, 0)?;
        Ok(bytes::Bytes::from(buf))
    })
    .await;
    match bytes {
        Ok(bytes) if memory_intact(state, key, &bytes) => {
            state.memory.insert(key, MemoryObject { bytes: bytes.clone(), media_type: None });
            BlobSource::Memory(bytes)
        }
        _ => disk(file, size),
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
    resp.insert_header(respond::BERTH_CACHE, ctx.outcome)?;
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
        (Some(size), _) => Some(("hit", size)),
        (None, Some(size)) => Some(("coalesced", size)),
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
            state.metrics.upstream_requests.with_label_values(&[&upstream.name, "blob_head"]).inc();
            let path = format!("blobs/{digest}");
            match upstream.fetch(Method::HEAD, repository, &path, None).await {
                Ok(r) => match r.content_length() {
                    Some(size) => {
                        ctx.live.access.confirm(upstream.index, repository, digest);
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
                Err(e) => return respond::error(session, ctx, &ApiError::from_upstream(&e, Subject::Blob)).await,
            }
        }
    };
    let mut resp = header(200)?;
    resp.insert_header(http::header::ACCEPT_RANGES, http::HeaderValue::from_static("bytes"))?;
    content_headers(&mut resp, &digest, BLOB_TYPE, size)?;
    resp.insert_header(respond::BERTH_CACHE, ctx.outcome)?;
    send_header(session, ctx, resp, true).await
}
