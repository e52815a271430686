//! Where a fill gets its bytes: the peers of its plan in owner order, then the origin. A peer
//! that cannot answer (unreachable, too slow, not ready: `503`) is marked down and the next one
//! is asked; a peer that answers with another error (a `404`, a relayed `429`) sends the fill
//! to the origin, which decides. A fill whose
//! peer fails in the middle of the body resumes from the next source with a `Range` request
//! from the bytes it already has: every byte is still hashed, and the digest checked at the end.

use std::collections::VecDeque;
use std::sync::Arc;

use berth_shared::{Digest, RepositoryName};
use http::{Method, StatusCode};

use super::hop::unix_now;
use super::Cluster;
use crate::cache::FillError;
use crate::metrics::{Metrics, UpstreamRequest};
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

/// A source's answer: the response, the blob's size, and how many bytes of its body come
/// before the offset asked for (an upstream that answered a range with the whole blob).
pub struct Opened {
    pub response: UpstreamResponse,
    pub total: Option<u64>,
    pub skip: u64,
    /// The name the bytes are counted under (`berth_edge_upstream_bytes_total{upstream}`).
    pub source: String,
}

/// The sources left for one fill.
pub struct Sources {
    peers: VecDeque<Arc<Upstream>>,
    origin: Arc<Upstream>,
    cluster: Option<Arc<Cluster>>,
    repository: RepositoryName,
    digest: Digest,
    metrics: Arc<Metrics>,
    /// The peer the bytes come from now (only then may a failure resume elsewhere).
    on_peer: Option<String>,
    /// Whether any byte came from a peer.
    pub used_peer: bool,
}

impl Sources {
    /// The origin only.
    pub fn origin(origin: &Arc<Upstream>, repository: &RepositoryName, digest: Digest, metrics: &Arc<Metrics>) -> Self {
        Sources {
            peers: VecDeque::new(),
            origin: Arc::clone(origin),
            cluster: None,
            repository: repository.clone(),
            digest,
            metrics: Arc::clone(metrics),
            on_peer: None,
            used_peer: false,
        }
    }

    /// `peers` in owner order, then the origin.
    pub fn through(mut self, cluster: &Arc<Cluster>, peers: Vec<Arc<Upstream>>) -> Self {
        self.peers = peers.into();
        self.cluster = Some(Arc::clone(cluster));
        self
    }

    /// Whether a failure of the current source may resume from another one.
    pub fn can_resume(&self) -> bool {
        self.on_peer.is_some()
    }

    /// The current peer failed in the middle of the body: skipped for a while.
    pub fn current_failed(&mut self) {
        if let (Some(peer), Some(cluster)) = (self.on_peer.take(), &self.cluster) {
            cluster.peer_failed(&peer);
        }
    }

    /// The next source's answer for the bytes from `offset` (0: the whole blob); `total` is the
    /// size an earlier source announced, which a resumed answer must agree with.
    pub async fn open(&mut self, offset: u64, total: Option<u64>) -> Result<Opened, FillError> {
        // Peers come with their cluster (`through`): without one there are none.
        while let (Some(cluster), Some(peer)) = (self.cluster.clone(), self.peers.pop_front()) {
            match self.ask_peer(&cluster, &peer, offset, total).await {
                Ok(opened) => {
                    (self.on_peer, self.used_peer) = (Some(peer.name.clone()), true);
                    return Ok(opened);
                }
                // The peer answered, with the origin's answer or one of its own (a 404 for an
                // upstream it does not know, a 429 relayed): the origin decides, once, without
                // asking the other peers and without holding it against this one.
                Err(e) if e.status().is_some_and(|s| s != StatusCode::SERVICE_UNAVAILABLE) => {
                    tracing::info!(peer = %peer.name, error = %e, "peer answered with an error: asking the origin");
                    self.peers.clear();
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.name, error = %e, offset, "peer could not serve the fill: asking the next source");
                    cluster.peer_failed(&peer.name);
                }
            }
        }
        self.on_peer = None;
        self.ask_origin(offset, total).await
    }

    async fn ask_peer(
        &self,
        cluster: &Cluster,
        peer: &Upstream,
        offset: u64,
        total: Option<u64>,
    ) -> Result<Opened, UpstreamError> {
        let path = format!("blobs/{}?ns={}", self.digest, self.origin.name);
        let signed = format!("/v2/{}/{path}", self.repository);
        let header = cluster.key().sign(&cluster.me(), unix_now(), &signed);
        self.metrics.upstream_request(&peer.name, UpstreamRequest::Peer);
        let response = peer.fetch_peer(&self.repository, &path, &header, offset).await?;
        check(response, offset, total, &peer.name)
    }

    async fn ask_origin(&self, offset: u64, total: Option<u64>) -> Result<Opened, FillError> {
        let path = format!("blobs/{}", self.digest);
        let response = if offset == 0 {
            self.metrics.upstream_request(&self.origin.name, UpstreamRequest::Blob);
            self.origin.fetch(Method::GET, &self.repository, &path, None).await?
        } else {
            self.metrics.upstream_request(&self.origin.name, UpstreamRequest::BlobRange);
            self.origin.fetch_range(&self.repository, &path, offset, None).await?
        };
        Ok(check(response, offset, total, &self.origin.name)?)
    }
}

/// Accepts an answer for the bytes from `offset`: a `206` that starts there, or a whole `200`
/// whose first `offset` bytes are skipped; its size must agree with `total` when known.
fn check(response: UpstreamResponse, offset: u64, total: Option<u64>, source: &str) -> Result<Opened, UpstreamError> {
    let refuse = || UpstreamError::Status {
        upstream: source.to_owned(),
        status: StatusCode::RANGE_NOT_SATISFIABLE,
        retry_after: None,
    };
    let (size, skip) = match response.status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            let range = response.header(http::header::CONTENT_RANGE).and_then(content_range).ok_or_else(refuse)?;
            if range.0 != offset {
                return Err(refuse());
            }
            (range.1, 0)
        }
        StatusCode::PARTIAL_CONTENT => return Err(refuse()),
        _ => (response.content_length(), offset),
    };
    if let (Some(a), Some(b)) = (size, total) {
        if a != b {
            return Err(refuse());
        }
    }
    Ok(Opened { total: size.or(total), response, skip, source: source.to_owned() })
}

/// `bytes <first>-<last>/<total>` → (first, total).
fn content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let (range, total) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let first = range.split_once('-')?.0.trim().parse().ok()?;
    Some((first, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_where_a_resumed_answer_starts() {
        assert_eq!(content_range("bytes 100-999/1000"), Some((100, Some(1000))));
        assert_eq!(content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(content_range("bytes */1000"), None);
    }
}
