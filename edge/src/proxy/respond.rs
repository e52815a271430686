//! Writing responses to the downstream session: headers, errors, and streamed bodies that
//! complete only after their source is verified.

use berth_shared::Digest;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::prelude::Session;
use pingora::{Error, ErrorType, Result};

use super::RequestCtx;
use crate::cache::{BlobSource, FillError};
use crate::registry::ApiError;

/// Largest piece written to the client at once.
const CHUNK: usize = 1 << 20;

pub(super) const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
pub(super) const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub(super) const BERTH_CACHE: HeaderName = HeaderName::from_static("x-berth-cache");

/// Starts a response with the headers every registry response carries.
pub(super) fn header(status: u16) -> Result<ResponseHeader> {
    // Without a case map: header names go out in lowercase, one map fewer to fill per response.
    let mut resp = ResponseHeader::build_no_case(status, Some(8))?;
    resp.insert_header(API_VERSION, HeaderValue::from_static("registry/2.0"))?;
    Ok(resp)
}

/// Adds the identity headers of a content-addressed body.
pub(super) fn content_headers(
    resp: &mut ResponseHeader,
    digest: &Digest,
    content_type: &str,
    length: u64,
) -> Result<()> {
    resp.insert_header(header::CONTENT_TYPE, content_type)?;
    resp.insert_header(header::CONTENT_LENGTH, length)?;
    digest_headers(resp, digest)
}

/// `Docker-Content-Digest` and `ETag` (the quoted digest).
pub(super) fn digest_headers(resp: &mut ResponseHeader, digest: &Digest) -> Result<()> {
    let text = digest.text();
    resp.insert_header(DOCKER_CONTENT_DIGEST.clone(), text.as_str())?;
    let mut etag = String::with_capacity(73);
    etag.push('"');
    etag.push_str(text.as_str());
    etag.push('"');
    resp.insert_header(header::ETAG, etag)
}

pub(super) async fn send_header(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: ResponseHeader,
    end: bool,
) -> Result<()> {
    ctx.status = resp.status.as_u16();
    ctx.headers_sent = true;
    ctx.first_byte = Some(ctx.started.elapsed());
    session.write_response_header(Box::new(resp), end).await
}

/// An OCI error response.
pub(super) async fn error(session: &mut Session, ctx: &mut RequestCtx, err: &ApiError) -> Result<()> {
    ctx.outcome = crate::metrics::Outcome::Error;
    let body = Bytes::from(err.body());
    let mut resp = header(err.status.as_u16())?;
    resp.insert_header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    for (name, value) in &err.headers {
        resp.insert_header(*name, value.as_str())?;
    }
    let is_head = session.req_header().method == http::Method::HEAD;
    match &err.detail {
        Some(detail) => {
            tracing::warn!(status = err.status.as_u16(), code = err.code, message = %err.message, %detail, "error response")
        }
        None => {
            tracing::debug!(status = err.status.as_u16(), code = err.code, message = %err.message, "error response")
        }
    }
    if err.upstream_not_found {
        if let Some((state, key, ttl)) = ctx.remember_404.take() {
            state.negative.remember(key, ttl);
        }
    }
    send_header(session, ctx, resp, is_head).await?;
    if !is_head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `GET /v2/`: the API version check.
pub(super) async fn base(session: &mut Session, ctx: &mut RequestCtx, is_head: bool) -> Result<()> {
    let body = Bytes::from_static(b"{}");
    let mut resp = header(200)?;
    resp.insert_header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    send_header(session, ctx, resp, is_head).await?;
    if !is_head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Streams `[first, end)` of a source. The last byte goes out only once the source is
/// verified; if verification or reading fails the response is cut short.
pub(super) async fn stream(
    session: &mut Session,
    ctx: &mut RequestCtx,
    source: &mut BlobSource,
    first: u64,
    end: Option<u64>,
) -> Result<()> {
    let mut offset = first;
    loop {
        let want = end.map_or(CHUNK as u64, |e| (e - offset).min(CHUNK as u64)) as usize;
        if want == 0 {
            break;
        }
        let chunk = match source.read(offset, want).await.map_err(abort)? {
            Some(chunk) => chunk,
            None if end.is_none() => break,
            None => return Err(abort(FillError::Truncated { expected: end.unwrap_or(offset), received: offset })),
        };
        offset += chunk.len() as u64;
        let last = end == Some(offset);
        if last && source.checked_at_the_end() && chunk.len() > 1 {
            // All but the last byte go now (a cold range's first bytes must not wait for the
            // whole blob); the last one only once the source is verified.
            let (head, tail) = (chunk.slice(..chunk.len() - 1), chunk.slice(chunk.len() - 1..));
            ctx.body_bytes += head.len() as u64;
            session.write_response_body(Some(head), false).await?;
            source.finish().await.map_err(abort)?;
            ctx.body_bytes += 1;
            return session.write_response_body(Some(tail), true).await;
        }
        if last {
            source.finish().await.map_err(abort)?;
        }
        ctx.body_bytes += chunk.len() as u64;
        session.write_response_body(Some(chunk), last).await?;
        if last {
            return Ok(());
        }
    }
    // Length unknown until the end (chunked): verify before the terminating chunk.
    source.finish().await.map_err(abort)?;
    session.write_response_body(None, true).await
}

fn abort(e: FillError) -> Box<Error> {
    tracing::warn!(error = %e, "response aborted");
    Error::because(ErrorType::InternalError, "blob source failed mid-response", e)
}
