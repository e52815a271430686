//! A range far ahead of a fill's progress (lazy pulling: eStargz, SOCI and nydus read small
//! ranges anywhere in a cold layer) is answered by its own ranged upstream request while the fill
//! goes on, so its first byte comes when the origin sends it, not when the fill reaches it. The
//! fill stays the only full fetch.
//!
//! Trust: the range's bytes are hashed as they go out, and its last byte is held until the fill
//! has verified the whole blob and the same range of the verified file hashes the same. A
//! mismatch, or a fill that fails, cuts the response short: never a complete response with bytes
//! the digest does not vouch for.

use std::sync::Arc;

use berth_shared::{Digest, DigestHasher, RepositoryName};
use bytes::Bytes;
use tokio::sync::watch;

use super::read_at;
use crate::cache::error::FillError;
use crate::cache::fill::{Fill, FillState};
use crate::metrics::{Metrics, UpstreamRequest};
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

/// How far ahead of the bytes a fill has written a range must start to get its own request.
pub const AHEAD: u64 = 1 << 20;

pub struct RangedReader {
    response: UpstreamResponse,
    fill: Arc<Fill>,
    rx: watch::Receiver<FillState>,
    first: u64,
    end: u64,
    /// The blob's size, from the upstream's `Content-Range`.
    total: Option<u64>,
    /// Bytes of the range received so far.
    received: u64,
    /// Received but not yet returned: (blob offset of its first byte, bytes).
    pending: Option<(u64, Bytes)>,
    hasher: DigestHasher,
    upstream: String,
    metrics: Arc<Metrics>,
}

/// Whether a range starting at `first` is far enough ahead of a fill to be fetched on its own.
pub fn worth_it(fill: &Fill, first: u64) -> bool {
    match &*fill.subscribe().borrow() {
        FillState::Connecting => first > AHEAD,
        FillState::Streaming { written, .. } => first > written + AHEAD,
        _ => false,
    }
}

impl RangedReader {
    /// Asks the upstream for the bytes `first..=last` (to the end without `last`) of the fill's
    /// blob. `None` when it does not answer with that range (an error, a whole `200`, another
    /// range): the request then follows the fill.
    pub async fn open(
        fill: Arc<Fill>,
        upstream: &Upstream,
        repository: &RepositoryName,
        first: u64,
        last: Option<u64>,
        metrics: Arc<Metrics>,
    ) -> Option<Self> {
        metrics.upstream_request(&upstream.name, UpstreamRequest::BlobRange);
        let path = format!("blobs/{}", fill.digest);
        let response = match upstream.fetch_range(repository, &path, first, last).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "ranged request failed: following the fill");
                return None;
            }
        };
        let announced = response.header(http::header::CONTENT_RANGE).and_then(parse_content_range);
        let fits = |(a, b, total): (u64, u64, Option<u64>)| {
            let want_last = match (last, total) {
                (Some(l), Some(t)) => l.min(t.saturating_sub(1)),
                (Some(l), None) => l,
                (None, Some(t)) => t.saturating_sub(1),
                (None, None) => return false,
            };
            a == first && b == want_last && total.is_none_or(|t| b < t)
        };
        let Some((_, answered_last, total)) = announced.filter(|a| fits(*a)) else {
            tracing::debug!(status = %response.status, "upstream did not answer the range: following the fill");
            return None;
        };
        if response.status != http::StatusCode::PARTIAL_CONTENT {
            return None;
        }
        let end = answered_last + 1;
        let rx = fill.subscribe();
        let hasher = fill.digest.hasher();
        Some(RangedReader {
            response,
            fill,
            rx,
            first,
            end,
            total,
            received: 0,
            pending: None,
            hasher,
            upstream: upstream.name.clone(),
            metrics,
        })
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FillError> {
        let chunk =
            self.response.body.chunk().await.map_err(|source| {
                FillError::Upstream(UpstreamError::Client { upstream: self.upstream.clone(), source })
            })?;
        if let Some(c) = &chunk {
            self.received += c.len() as u64;
            self.metrics.upstream_bytes.with_label_values(&[&self.upstream]).inc_by(c.len() as u64);
            if self.received > self.end - self.first {
                return Err(FillError::TooLong { expected: self.end - self.first });
            }
        }
        Ok(chunk)
    }

    /// Up to `max` bytes at `offset` (in order, within the range). Every byte returned is hashed.
    pub async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
        let (start, bytes) = match self.pending.take() {
            Some(p) => p,
            None => {
                let start = self.first + self.received;
                match self.next_chunk().await? {
                    Some(b) => (start, b),
                    None => return Ok(None),
                }
            }
        };
        if start != offset {
            return Err(FillError::OutOfOrder { offset, expected: start });
        }
        let take = bytes.len().min(max);
        if take < bytes.len() {
            self.pending = Some((start + take as u64, bytes.slice(take..)));
        }
        let piece = bytes.slice(..take);
        self.hasher.update(&piece);
        Ok(Some(piece))
    }

    /// Waits for the fill to verify the blob, then checks that the verified file holds the
    /// bytes this range sent.
    pub async fn finish(&mut self) -> Result<u64, FillError> {
        if self.received != self.end - self.first {
            return Err(FillError::Truncated { expected: self.end - self.first, received: self.received });
        }
        let size = loop {
            let state = self.rx.borrow_and_update().clone();
            match state {
                FillState::Verified { size } => break size,
                FillState::Failed(e) => return Err(e),
                // The range cannot be checked against a blob the fill does not keep.
                FillState::PassThrough(reason) => return Err(FillError::PassThrough(reason)),
                _ => {}
            }
            self.rx.changed().await.map_err(|_| FillError::Abandoned)?;
        };
        let mut verified = self.fill.digest.hasher();
        let mut offset = self.first;
        while offset < self.end {
            let len = (self.end - offset).min(1 << 20) as usize;
            let piece = read_at(&self.fill.file, offset, len).await?.unwrap_or_default();
            verified.update(&piece);
            offset += len as u64;
        }
        let sent: Digest = std::mem::take(&mut self.hasher).finish();
        if verified.finish() != sent {
            tracing::error!(digest = %self.fill.digest, first = self.first, end = self.end, "a ranged answer differs from the verified blob");
            self.metrics.digest_mismatches.inc();
            return Err(FillError::Inconsistent);
        }
        Ok(size)
    }

    /// The blob's size, as the upstream's `Content-Range` or the fill tell it.
    pub fn blob_size(&self) -> Option<u64> {
        self.total.or_else(|| self.fill.known_size())
    }

    /// The range this reader serves: `[first, end)`.
    pub fn span(&self) -> (u64, u64) {
        (self.first, self.end)
    }
}

/// `bytes <first>-<last>/<total or *>` → (first, last, total).
fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let spec = value.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((first.trim().parse().ok()?, last.trim().parse().ok()?, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/1000"), Some((100, 199, Some(1000))));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0, None)));
        assert_eq!(parse_content_range("bytes */1000"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
