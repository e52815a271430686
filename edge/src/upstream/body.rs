//! Reading an upstream body piece by piece, failing when it stalls.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::ClientError;

/// An upstream response body with a stall timeout between pieces.
#[derive(Debug)]
pub struct UpstreamBody {
    inner: Incoming,
    stall: Duration,
}

impl UpstreamBody {
    pub(super) fn new(inner: Incoming, stall: Duration) -> Self {
        UpstreamBody { inner, stall }
    }

    /// The next piece of data; `None` at the end of the body.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            let frame = tokio::time::timeout(self.stall, self.inner.frame())
                .await
                .map_err(|_| ClientError::BodyStalled(self.stall))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(ClientError::Body(e.to_string())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    pub async fn collect_limited(&mut self, limit: u64) -> Result<Option<Vec<u8>>, ClientError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Ok(None);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(Some(out))
    }
}
