//! `GET/HEAD /v2/<name>/manifests/<tag|digest>`.

use std::sync::Arc;

use berth_shared::{Reference, RepositoryName};
use bytes::Bytes;
use pingora::prelude::Session;
use pingora::Result;

use super::respond::{self, content_headers, header, send_header};
use super::RequestCtx;
use crate::cache::manifests::{Found, Freshness, StoredManifest, TagEntry};
use crate::metrics::{Outcome, RequestKind, Tier};
use crate::registry::error::Subject;
use crate::registry::{AcceptList, ApiError};
use crate::state::EdgeState;
use crate::upstream::Upstream;

pub(super) async fn serve(
    state: &Arc<EdgeState>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &Arc<Upstream>,
    repository: &RepositoryName,
    reference: &Reference,
    is_head: bool,
) -> Result<()> {
    ctx.kind = RequestKind::Manifest;
    let accept = AcceptList::from_headers(
        session.req_header().headers.get_all(http::header::ACCEPT).iter().map(|v| v.as_bytes()),
    );
    let manifests = &state.manifests;
    let (digest, freshness) = match reference {
        Reference::Digest(d) => {
            let holds = super::authz::ensure_holds(state, &ctx.live, upstream, repository, *d, Subject::Manifest).await;
            if let Err(e) = holds {
                return respond::error(session, ctx, &e).await;
            }
            (*d, None)
        }
        Reference::Tag(tag) => match manifests.resolve_tag(upstream, repository, tag, &accept).await {
            Ok((entry, freshness)) => {
                if let Err(denied) = super::authz::quarantined(state, &entry.digest) {
                    return respond::error(session, ctx, &denied).await;
                }
                // The upstream mapped this repository's tag to the digest: it holds it.
                ctx.live.access.confirm(upstream.index, repository, entry.digest);
                if freshness == Freshness::Stale {
                    state.metrics.stale_served.inc();
                }
                if is_head {
                    return head_from_tag(session, ctx, &entry, freshness).await;
                }
                (entry.digest, Some(freshness))
            }
            Err(e) => return respond::error(session, ctx, &ApiError::from_manifest(&e)).await,
        },
    };
    match manifests.by_digest(upstream, repository, digest, &accept).await {
        Ok((manifest, found)) => {
            ctx.outcome = outcome(freshness, found);
            ctx.tier = Some(match found {
                Found::Memory => Tier::Memory,
                Found::Disk => Tier::Disk,
                Found::Fetched | Found::Coalesced => Tier::Upstream,
            });
            send(session, ctx, manifest, is_head, freshness == Some(Freshness::Stale)).await
        }
        Err(e) => respond::error(session, ctx, &ApiError::from_manifest(&e)).await,
    }
}

fn outcome(freshness: Option<Freshness>, found: Found) -> Outcome {
    match (freshness, found) {
        (Some(Freshness::Stale), _) => Outcome::Stale,
        (_, Found::Fetched) => Outcome::Miss,
        (_, Found::Coalesced) => Outcome::Coalesced,
        (Some(Freshness::Revalidated), Found::Disk | Found::Memory) => Outcome::Revalidated,
        (_, Found::Disk | Found::Memory) => Outcome::Hit,
    }
}

async fn send(
    session: &mut Session,
    ctx: &mut RequestCtx,
    manifest: StoredManifest,
    is_head: bool,
    stale: bool,
) -> Result<()> {
    let mut resp = header(200)?;
    content_headers(&mut resp, &manifest.digest, &manifest.media_type, manifest.bytes.len() as u64)?;
    mark(&mut resp, ctx.outcome, stale)?;
    send_header(session, ctx, resp, is_head).await?;
    if !is_head {
        ctx.body_bytes = manifest.bytes.len() as u64;
        session.write_response_body(Some(Bytes::clone(&manifest.bytes)), true).await?;
    }
    Ok(())
}

/// HEAD by tag: the mapping has the digest, type and size; the body is not needed.
async fn head_from_tag(
    session: &mut Session,
    ctx: &mut RequestCtx,
    entry: &TagEntry,
    freshness: Freshness,
) -> Result<()> {
    ctx.outcome = match freshness {
        Freshness::Fresh => Outcome::Hit,
        Freshness::Revalidated => Outcome::Revalidated,
        Freshness::Stale => Outcome::Stale,
    };
    let mut resp = header(200)?;
    content_headers(&mut resp, &entry.digest, &entry.media_type, entry.size)?;
    mark(&mut resp, ctx.outcome, freshness == Freshness::Stale)?;
    send_header(session, ctx, resp, true).await
}

fn mark(resp: &mut pingora::http::ResponseHeader, outcome: Outcome, stale: bool) -> Result<()> {
    resp.insert_header(super::respond::BERTH_CACHE, outcome.as_str())?;
    if stale {
        resp.insert_header(http::header::WARNING, "110 - \"Response is Stale\"")?;
    }
    Ok(())
}
