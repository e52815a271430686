//! pass-through: a blob streamed straight from the upstream, hashed on the way, its last byte
//! held until the digest matches.

use std::fs::File;
use std::sync::Arc;

use berth_shared::{Digest, DigestHasher, RepositoryName};
use bytes::Bytes;
use http::Method;

use super::read_at;
use crate::cache::error::FillError;
use crate::metrics::{Metrics, UpstreamRequest};
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

/// A blob streamed straight from the upstream, hashed on the way.
pub struct DirectReader {
    response: UpstreamResponse,
    digest: Digest,
    total: Option<u64>,
    hasher: DigestHasher,
    /// Bytes received from the upstream so far.
    received: u64,
    /// Received but not yet returned: (offset of first byte, bytes).
    pending: Option<(u64, Bytes)>,
    upstream: String,
    metrics: Arc<Metrics>,
    /// After a fallback: a file holding the bytes already sent, and how many; what this fetch
    /// receives for that range must be the same.
    sent: Option<(Arc<File>, u64)>,
}

impl DirectReader {
    pub async fn open(
        upstream: &Upstream,
        repository: &RepositoryName,
        digest: Digest,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FillError> {
        metrics.upstream_request(&upstream.name, UpstreamRequest::Blob);
        let response = upstream.fetch(Method::GET, repository, &format!("blobs/{digest}"), None).await?;
        Ok(DirectReader {
            total: response.content_length(),
            response,
            digest,
            hasher: digest.hasher(),
            received: 0,
            pending: None,
            upstream: upstream.name.clone(),
            metrics,
            sent: None,
        })
    }

    /// The blob's size, as the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// After a fall-back: the bytes `..upto` of `file` were sent already; this fetch must
    /// receive the same.
    pub(super) fn must_match(&mut self, file: Arc<File>, upto: u64) {
        self.sent = Some((file, upto));
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, FillError> {
        let chunk =
            self.response.body.chunk().await.map_err(|source| {
                FillError::Upstream(UpstreamError::Client { upstream: self.upstream.clone(), source })
            })?;
        if let Some(c) = &chunk {
            self.check_sent(self.received, c).await?;
            self.hasher.update(c);
            self.received += c.len() as u64;
            self.metrics.upstream_bytes.with_label_values(&[&self.upstream]).inc_by(c.len() as u64);
            if let Some(total) = self.total.filter(|t| self.received > *t) {
                return Err(FillError::TooLong { expected: total });
            }
        }
        Ok(chunk)
    }

    /// Compares a received piece at `position` with the bytes already sent, where they overlap.
    async fn check_sent(&self, position: u64, piece: &Bytes) -> Result<(), FillError> {
        let Some((file, upto)) = &self.sent else { return Ok(()) };
        if position >= *upto {
            return Ok(());
        }
        let len = (*upto - position).min(piece.len() as u64) as usize;
        let earlier = read_at(file, position, len).await?.unwrap_or_default();
        if earlier.as_ref() != &piece[..len] {
            return Err(FillError::Inconsistent);
        }
        Ok(())
    }

    pub(super) async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
        loop {
            let (start, bytes) = match self.pending.take() {
                Some(p) => p,
                None => {
                    let start = self.received;
                    match self.next_chunk().await? {
                        Some(b) => (start, b),
                        None => return Ok(None),
                    }
                }
            };
            let end = start + bytes.len() as u64;
            if end <= offset {
                continue;
            }
            let skip = offset.saturating_sub(start) as usize;
            let take = (bytes.len() - skip).min(max);
            if skip + take < bytes.len() {
                self.pending = Some((start + (skip + take) as u64, bytes.slice(skip + take..)));
            }
            return Ok(Some(bytes.slice(skip..skip + take)));
        }
    }

    pub(super) async fn finish(&mut self) -> Result<u64, FillError> {
        self.pending = None;
        while self.next_chunk().await?.is_some() {}
        if let Some(expected) = self.total.filter(|t| *t != self.received) {
            return Err(FillError::Truncated { expected, received: self.received });
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            self.metrics.digest_mismatches.inc();
            return Err(FillError::DigestMismatch { expected: self.digest, actual });
        }
        Ok(self.received)
    }
}
