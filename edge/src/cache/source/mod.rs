//! Where a response's bytes come from, one reader per state of the read path:
//! - `Memory`: hit(memory), a buffer of verified bytes;
//! - `Disk` (`disk.rs`): hit(file), a verified file read with one read ahead;
//! - `Fill` (`follow.rs`): fill and join(fill), a fill in flight, read while it is written;
//! - `Ranged` (`ranged.rs`): a range far ahead of a fill, by its own ranged upstream request;
//! - `Direct` (`direct.rs`): pass-through, the upstream's body, hashed on the way.
//!
//! Every source verifies before the last byte: `finish` must succeed before a response may
//! complete. One transition happens mid-response: a reader of a fill whose disk fails (or that
//! stops caching) goes on as a pass-through, re-reading from the start (`fall_back`).

mod direct;
mod disk;
mod follow;
pub mod ranged;

use std::fs::File;
use std::sync::Arc;

use berth_shared::RepositoryName;
use bytes::Bytes;

use super::blocking;
use super::error::{DiskFault, DiskOp, FillError, PassReason};
use crate::metrics::{Metrics, Tier};
use crate::upstream::Upstream;

pub use direct::DirectReader;
pub use disk::DiskReader;
pub use follow::FillReader;
pub use ranged::RangedReader;

/// The bytes of one blob, readable by offset.
pub enum BlobSource {
    Memory(Bytes),
    Disk(DiskReader),
    Fill(FillReader),
    /// A range far ahead of a fill, fetched on its own (checked against the fill at the end).
    Ranged(Box<RangedReader>),
    Direct(Box<DirectReader>),
}

/// What a reader of a fill needs to carry on alone if the fill's disk fails: the clients of a
/// fill still get verified bytes, fetched from the upstream.
pub struct Fallback {
    pub upstream: Arc<Upstream>,
    pub repository: RepositoryName,
    pub metrics: Arc<Metrics>,
}

impl BlobSource {
    /// The blob's size, when known before the end (always, unless the upstream sent no length).
    pub fn size(&self) -> Option<u64> {
        match self {
            BlobSource::Memory(bytes) => Some(bytes.len() as u64),
            BlobSource::Disk(r) => Some(r.size()),
            BlobSource::Fill(r) => r.total(),
            BlobSource::Direct(r) => r.total(),
            BlobSource::Ranged(r) => r.blob_size(),
        }
    }

    /// Whether `finish` may still have to wait (the bytes are not all known to be verified):
    /// a fill in flight, an upstream stream, a range ahead of a fill, a disk read hashed as it
    /// is served.
    pub fn checked_at_the_end(&self) -> bool {
        match self {
            BlobSource::Memory(_) => false,
            BlobSource::Disk(r) => r.verifies(),
            BlobSource::Fill(r) => !r.is_verified(),
            BlobSource::Direct(_) | BlobSource::Ranged(_) => true,
        }
    }

    /// The tier the bytes come from.
    pub fn tier(&self) -> Tier {
        match self {
            BlobSource::Memory(_) => Tier::Memory,
            BlobSource::Disk(_) => Tier::Disk,
            _ => Tier::Upstream,
        }
    }

    /// Up to `max` bytes at `offset`; `None` at the end. Readers of a fill wait for the bytes
    /// to be written. Direct sources must be read in order.
    pub async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
        loop {
            let result = match self {
                BlobSource::Memory(bytes) => {
                    let start = (offset as usize).min(bytes.len());
                    let end = (start + max).min(bytes.len());
                    return Ok((end > start).then(|| bytes.slice(start..end)));
                }
                BlobSource::Disk(r) => return r.read(offset, max).await,
                BlobSource::Fill(r) => r.read(offset, max).await,
                BlobSource::Direct(r) => return r.read(offset, max).await,
                BlobSource::Ranged(r) => return r.read(offset, max).await,
            };
            match result.as_ref().err().and_then(FillError::pass_reason) {
                Some(reason) => self.fall_back(reason).await?,
                None => return result,
            }
        }
    }

    /// Waits until the whole blob is verified. A response sends its last byte only after this.
    pub async fn finish(&mut self) -> Result<u64, FillError> {
        loop {
            let result = match self {
                BlobSource::Memory(bytes) => return Ok(bytes.len() as u64),
                BlobSource::Disk(r) => return r.check().await.map(|()| r.size()),
                BlobSource::Fill(r) => r.verified().await,
                BlobSource::Direct(r) => return r.finish().await,
                BlobSource::Ranged(r) => return r.finish().await,
            };
            match result.as_ref().err().and_then(FillError::pass_reason) {
                Some(reason) => self.fall_back(reason).await?,
                None => return result,
            }
        }
    }

    /// join(fill) → pass-through: the fill lost its disk or stopped caching; continue from the
    /// upstream directly (re-reading from the start, so the whole blob is hashed again).
    async fn fall_back(&mut self, reason: PassReason) -> Result<(), FillError> {
        let BlobSource::Fill(reader) = self else { return Err(FillError::PassThrough(reason)) };
        let Some(fallback) = reader.take_fallback() else { return Err(FillError::PassThrough(reason)) };
        let (digest, file, read_upto) = reader.sent();
        tracing::warn!(%reason, %digest, "a fill's reader continues from the upstream");
        let mut direct = DirectReader::open(&fallback.upstream, &fallback.repository, digest, fallback.metrics).await?;
        // The bytes already sent came from the first fetch: the second must match them, or the
        // response (hashed from the second) would mix two contents.
        direct.must_match(file, read_upto);
        *self = BlobSource::Direct(Box::new(direct));
        Ok(())
    }
}

/// `len` bytes at `offset` of a file, read on the blocking pool (`None` for none).
pub(super) async fn read_at(file: &Arc<File>, offset: u64, len: usize) -> Result<Option<Bytes>, FillError> {
    if len == 0 {
        return Ok(None);
    }
    let file = Arc::clone(file);
    let bytes = blocking(move || disk::pread_exact(&file, offset, len)).await;
    bytes.map(Some).map_err(|e| FillError::Disk(DiskFault::new(DiskOp::Read, e)))
}
