//! A fill's incoming bytes: the body of its current source, resumed from the next source
//! (`cluster/sources.rs`) with a `Range` request when a peer fails in the middle of it.

use bytes::Bytes;
use futures_util::FutureExt;

use super::error::FillError;
use crate::cluster::sources::{Opened, Sources};
use crate::metrics::Metrics;
use crate::upstream::{ClientError, UpstreamError, UpstreamResponse};

pub struct Feed {
    sources: Sources,
    response: UpstreamResponse,
    /// Bytes of the current body still to drop (a whole answer to a resumed request).
    skip: u64,
    /// The blob's size, once a source announced it.
    pub total: Option<u64>,
    /// Bytes handed out so far: where a resumed request starts.
    received: u64,
    /// Where the current bytes come from.
    source: String,
    /// `berth_edge_upstream_bytes_total` of that source, resolved once per source.
    counted: prometheus::IntCounter,
    /// An error met while taking a chunk without waiting, handed out by the next `chunk`.
    pending: Option<ClientError>,
    metrics: std::sync::Arc<Metrics>,
}

impl Feed {
    /// The first source that answers.
    pub async fn open(mut sources: Sources, metrics: std::sync::Arc<Metrics>) -> Result<Self, FillError> {
        let Opened { response, total, skip, source } = sources.open(0, None).await?;
        let counted = metrics.upstream_bytes.with_label_values(&[&source]);
        Ok(Feed { sources, response, skip, total, received: 0, source, counted, pending: None, metrics })
    }

    /// Whether any byte came from a peer.
    pub fn used_peer(&self) -> bool {
        self.sources.used_peer
    }

    /// The next piece of the blob (`None` at its end).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, FillError> {
        loop {
            let next = match self.pending.take() {
                Some(e) => Err(e),
                None => self.response.body.chunk().await,
            };
            match next {
                Ok(Some(c)) => {
                    if let Some(c) = self.take(c) {
                        return Ok(Some(c));
                    }
                }
                Ok(None) if self.short() && self.sources.can_resume() => self.resume("the body ended early").await?,
                Ok(None) => return Ok(None),
                // Every byte is in: an error after them (a chunked body's end) ends the body.
                Err(_) if self.total == Some(self.received) => return Ok(None),
                Err(e) if self.sources.can_resume() => self.resume(&e.to_string()).await?,
                Err(source) => {
                    return Err(FillError::Upstream(UpstreamError::Client { upstream: self.source.clone(), source }))
                }
            }
        }
    }

    /// A piece that has already arrived, without waiting (`None`: none, or not a piece: the
    /// next `chunk` deals with it).
    pub fn ready(&mut self) -> Option<Bytes> {
        loop {
            match self.response.body.chunk().now_or_never()? {
                Ok(Some(c)) => {
                    if let Some(c) = self.take(c) {
                        return Some(c);
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    self.pending = Some(e);
                    return None;
                }
            }
        }
    }

    /// Drops what a resumed whole answer repeats; counts the rest.
    fn take(&mut self, mut c: Bytes) -> Option<Bytes> {
        if self.skip > 0 {
            let n = self.skip.min(c.len() as u64);
            self.skip -= n;
            c = c.slice(n as usize..);
        }
        if c.is_empty() {
            return None;
        }
        self.received += c.len() as u64;
        self.counted.inc_by(c.len() as u64);
        Some(c)
    }

    fn short(&self) -> bool {
        self.total.is_some_and(|t| self.received < t)
    }

    async fn resume(&mut self, why: &str) -> Result<(), FillError> {
        tracing::warn!(source = %self.source, received = self.received, %why, "fill source failed: resuming from the next one");
        self.sources.current_failed();
        let Opened { response, total, skip, source } = self.sources.open(self.received, self.total).await?;
        self.counted = self.metrics.upstream_bytes.with_label_values(&[&source]);
        (self.response, self.skip, self.source) = (response, skip, source);
        self.total = self.total.or(total);
        Ok(())
    }
}
