//! fill and join(fill): a reader following a fill in flight. It takes its bytes from the
//! batches the fill keeps in memory, or from the temp file when it lags further behind, waits
//! for more while the fill writes, and completes only once the fill has verified the blob.

use std::fs::File;
use std::sync::Arc;

use berth_shared::Digest;
use bytes::Bytes;
use tokio::sync::watch;

use super::{read_at, Fallback, RangedReader};
use crate::cache::error::FillError;
use crate::cache::fill::{Fill, FillState, Following};

/// A reader following a fill in flight.
pub struct FillReader {
    fill: Following,
    rx: watch::Receiver<FillState>,
    total: Option<u64>,
    fallback: Option<Fallback>,
    /// End of the furthest range read so far (what a fallback must match).
    read_upto: u64,
}

impl FillReader {
    /// Waits for the upstream's answer to the fill. A fill that fails on its disk or stops
    /// caching before it streams answers with an error whose `pass_reason` sends the request
    /// to the upstream directly.
    pub async fn start(fill: Arc<Fill>, fallback: Option<Fallback>) -> Result<FillReader, FillError> {
        let fill = Following::new(fill);
        let mut rx = fill.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            let total = match state {
                FillState::Connecting => None,
                FillState::Streaming { total, .. } => {
                    return Ok(FillReader { fill, rx, total, fallback, read_upto: 0 })
                }
                FillState::Verified { size } => Some(size),
                FillState::PassThrough(reason) => return Err(FillError::PassThrough(reason)),
                FillState::Failed(e) => return Err(e),
            };
            if let Some(size) = total {
                return Ok(FillReader { fill, rx, total: Some(size), fallback, read_upto: 0 });
            }
            wait_change(&mut rx).await?;
        }
    }

    /// The blob's size, once the upstream announced it.
    pub fn total(&self) -> Option<u64> {
        self.total
    }

    /// Whether the fill has verified every byte.
    pub fn is_verified(&self) -> bool {
        self.fill.is_verified()
    }

    /// What a fall-back needs to go on alone (taken once).
    pub(super) fn take_fallback(&mut self) -> Option<Fallback> {
        self.fallback.take()
    }

    /// The digest, the fill's file and how far into it this reader has sent bytes.
    pub(super) fn sent(&self) -> (Digest, Arc<File>, u64) {
        (self.fill.digest, Arc::clone(&self.fill.file), self.read_upto)
    }

    /// For a range `[first, end)` far ahead of the fill's progress: its own ranged upstream
    /// request (`None`: not worth it, or the upstream did not answer the range).
    pub async fn ranged(&self, first: u64, end: u64) -> Option<RangedReader> {
        let fallback = self.fallback.as_ref()?;
        if !super::ranged::worth_it(&self.fill, first) {
            return None;
        }
        let fill = Arc::clone(&self.fill.0);
        let metrics = Arc::clone(&fallback.metrics);
        RangedReader::open(fill, &fallback.upstream, &fallback.repository, first, Some(end - 1), metrics).await
    }

    /// Bytes written at or after `offset` that may be read now (waits for more if none).
    async fn available(&mut self, offset: u64) -> Result<u64, FillError> {
        loop {
            let state = self.rx.borrow_and_update().clone();
            match state {
                FillState::Streaming { written, .. } if written > offset => return Ok(written - offset),
                FillState::Verified { size } => return Ok(size.saturating_sub(offset)),
                FillState::Failed(e) => return Err(e),
                FillState::PassThrough(reason) => return Err(FillError::PassThrough(reason)),
                _ => {}
            }
            wait_change(&mut self.rx).await?;
        }
    }

    pub(super) async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
        let available = self.available(offset).await?;
        let len = available.min(max as u64) as usize;
        let piece = match self.fill.recent_slice(offset, len) {
            Some(bytes) => Some(bytes),
            None => read_at(&self.fill.file, offset, len).await?,
        };
        if let Some(p) = &piece {
            self.read_upto = self.read_upto.max(offset + p.len() as u64);
        }
        Ok(piece)
    }

    pub(super) async fn verified(&mut self) -> Result<u64, FillError> {
        loop {
            let state = self.rx.borrow_and_update().clone();
            match state {
                FillState::Verified { size } => return Ok(size),
                FillState::Failed(e) => return Err(e),
                _ => wait_change(&mut self.rx).await?,
            }
        }
    }
}

async fn wait_change(rx: &mut watch::Receiver<FillState>) -> Result<(), FillError> {
    rx.changed().await.map_err(|_| FillError::Abandoned)
}
