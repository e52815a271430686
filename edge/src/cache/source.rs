//! Where a response's bytes come from: a file on disk, a fill in flight (read while it is
//! written), or, for a blob too large to cache, the upstream directly. Every source verifies
//! before the last byte: `finish` must succeed before a response may complete.

use std::fs::File;
use std::sync::Arc;

use berth_shared::DigestHasher;
use berth_shared::{Digest, RepositoryName};
use bytes::Bytes;
use http::Method;
use tokio::sync::watch;

use super::fill::{Fill, FillError, FillState};
use super::ranged::RangedReader;
use super::{blocking, EntryKey};
use crate::metrics::Metrics;
use crate::upstream::{Upstream, UpstreamError, UpstreamResponse};

/// Where bytes were served from, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Memory,
    Disk,
    Upstream,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Memory => "memory",
            SourceKind::Disk => "disk",
            SourceKind::Upstream => "upstream",
        }
    }
}

/// The bytes of one blob, readable by offset.
pub enum BlobSource {
    Memory(Bytes),
    Disk(DiskReader),
    Fill(FillReader),
    Direct(Box<DirectReader>),
    /// A range far ahead of a fill, fetched on its own (checked against the fill at the end).
    Ranged(Box<RangedReader>),
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
            BlobSource::Disk(r) => Some(r.size),
            BlobSource::Fill(r) => r.total,
            BlobSource::Direct(r) => r.total,
            BlobSource::Ranged(r) => r.blob_size(),
        }
    }

    /// Whether `finish` may still have to wait (the bytes are not all known to be verified):
    /// a fill in flight, an upstream stream, a range ahead of a fill, a disk read hashed as it
    /// is served.
    pub fn checked_at_the_end(&self) -> bool {
        match self {
            BlobSource::Memory(_) => false,
            BlobSource::Disk(r) => r.verify.is_some(),
            BlobSource::Fill(r) => !r.fill.is_verified(),
            BlobSource::Direct(_) | BlobSource::Ranged(_) => true,
        }
    }

    pub fn kind(&self) -> SourceKind {
        match self {
            BlobSource::Memory(_) => SourceKind::Memory,
            BlobSource::Disk(_) => SourceKind::Disk,
            _ => SourceKind::Upstream,
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
            match result {
                Err(FillError::Disk(reason)) => self.fall_back(reason).await?,
                other => return other,
            }
        }
    }

    /// Waits until the whole blob is verified. A response sends its last byte only after this.
    pub async fn finish(&mut self) -> Result<u64, FillError> {
        loop {
            let result = match self {
                BlobSource::Memory(bytes) => return Ok(bytes.len() as u64),
                BlobSource::Disk(r) => return r.check().await.map(|()| r.size),
                BlobSource::Fill(r) => r.verified().await,
                BlobSource::Direct(r) => return r.finish().await,
                BlobSource::Ranged(r) => return r.finish().await,
            };
            match result {
                Err(FillError::Disk(reason)) => self.fall_back(reason).await?,
                other => return other,
            }
        }
    }

    /// A fill lost its disk: continue from the upstream directly (re-reading from the start,
    /// so the whole blob is hashed again).
    async fn fall_back(&mut self, reason: String) -> Result<(), FillError> {
        let BlobSource::Fill(reader) = self else { return Err(FillError::Disk(reason)) };
        let Some(fallback) = reader.fallback.take() else { return Err(FillError::Disk(reason)) };
        tracing::warn!(%reason, digest = %reader.fill.digest, "fill lost its disk: continuing from the upstream");
        let mut direct =
            DirectReader::open(&fallback.upstream, &fallback.repository, reader.fill.digest, fallback.metrics).await?;
        // The bytes already sent came from the first fetch: the second must match them, or the
        // response (hashed from the second) would mix two contents.
        direct.sent = Some((Arc::clone(&reader.fill.file), reader.read_upto));
        *self = BlobSource::Direct(Box::new(direct));
        Ok(())
    }
}

pub(super) async fn read_at(file: &Arc<File>, offset: u64, len: usize) -> Result<Option<Bytes>, FillError> {
    if len == 0 {
        return Ok(None);
    }
    let file = Arc::clone(file);
    let bytes = blocking(move || pread_exact(&file, offset, len)).await;
    bytes.map(Some).map_err(|e| FillError::Disk(format!("reading: {e}")))
}

/// Reads exactly `len` bytes at `offset` into a fresh buffer, without zeroing it first.
fn pread_exact(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let filled = buf.len();
        // SAFETY: the pointer and length describe the buffer's uninitialised spare capacity;
        // pread writes at most that many bytes, and only the bytes it reports are marked
        // initialised below.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                buf.as_mut_ptr().add(filled).cast(),
                len - filled,
                (offset + filled as u64) as libc::off_t,
            )
        };
        match n {
            n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
            0 => {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "cached file shorter than its size"))
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(Bytes::from(buf))
}

/// A disk file read in order with one read ahead: the next piece is read from the page cache
/// while the current one is written to the client.
pub struct DiskReader {
    file: Arc<File>,
    size: u64,
    ahead: Option<(u64, usize, tokio::task::JoinHandle<std::io::Result<Bytes>>)>,
    /// `verify_on_serve`: the bytes are hashed as they are read and checked before the last one
    /// is sent.
    verify: Option<Box<ServeCheck>>,
}

/// The hash of a disk hit taken as it is served.
struct ServeCheck {
    key: EntryKey,
    store: Arc<crate::cache::DiskStore>,
    hasher: DigestHasher,
    /// Bytes hashed so far, from offset 0 in order.
    hashed: u64,
}

impl DiskReader {
    pub fn new(file: Arc<File>, size: u64) -> Self {
        DiskReader { file, size, ahead: None, verify: None }
    }

    /// A reader that hashes every byte it serves and refuses to finish unless the file hashes
    /// to `key`'s digest (a mismatch drops the entry).
    pub fn verifying(file: Arc<File>, size: u64, key: EntryKey, store: Arc<crate::cache::DiskStore>) -> Self {
        let hasher = key.digest.hasher();
        DiskReader { file, size, ahead: None, verify: Some(Box::new(ServeCheck { key, store, hasher, hashed: 0 })) }
    }

    /// With `verify_on_serve`: whether the file hashes to its digest. The bytes served in order
    /// from the start are already hashed; the rest (a range request) is read now.
    async fn check(&mut self) -> Result<(), FillError> {
        let Some(check) = self.verify.as_mut() else { return Ok(()) };
        let mut hasher = std::mem::take(&mut check.hasher);
        if check.hashed != self.size {
            hasher = check.key.digest.hasher();
            let (file, size) = (Arc::clone(&self.file), self.size);
            let mut offset = 0;
            while offset < size {
                let len = (size - offset).min(1 << 20) as usize;
                let piece = read_at(&file, offset, len).await?.unwrap_or_default();
                hasher.update(&piece);
                offset += len as u64;
            }
        }
        let actual = hasher.finish();
        if actual == check.key.digest {
            return Ok(());
        }
        tracing::error!(digest = %check.key.digest, %actual, "cached file changed: it does not hash to its digest (verify_on_serve)");
        check.store.drop_damaged(check.key).await;
        Err(FillError::DigestMismatch { expected: check.key.digest, actual })
    }

    fn spawn(&self, offset: u64, len: usize) -> tokio::task::JoinHandle<std::io::Result<Bytes>> {
        let file = Arc::clone(&self.file);
        tokio::task::spawn_blocking(move || pread_exact(&file, offset, len))
    }

    async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
        let len = self.size.saturating_sub(offset).min(max as u64) as usize;
        if len == 0 {
            return Ok(None);
        }
        let pending = match self.ahead.take() {
            Some((o, l, handle)) if o == offset && l == len => handle,
            _ => self.spawn(offset, len),
        };
        let next = offset + len as u64;
        let next_len = self.size.saturating_sub(next).min(max as u64) as usize;
        if next_len > 0 {
            self.ahead = Some((next, next_len, self.spawn(next, next_len)));
        }
        let bytes = pending.await.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let bytes = bytes.map_err(|e| FillError::Disk(format!("reading: {e}")))?;
        if let Some(check) = self.verify.as_mut().filter(|c| c.hashed == offset) {
            check.hasher.update(&bytes);
            check.hashed += bytes.len() as u64;
        }
        Ok(Some(bytes))
    }
}

impl Drop for DiskReader {
    fn drop(&mut self) {
        if let Some((_, _, handle)) = self.ahead.take() {
            handle.abort();
        }
    }
}

/// Whether a fill's reader should fetch directly, or what it learned from the upstream.
pub enum FillStart {
    Reader(FillReader),
    Bypass,
}

/// A reader following a fill in flight.
/// Counts a request as a reader of a fill while it lives.
struct Following(Arc<Fill>);

impl Following {
    fn new(fill: Arc<Fill>) -> Self {
        fill.readers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Following(fill)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::ops::Deref for Following {
    type Target = Fill;
    fn deref(&self) -> &Fill {
        &self.0
    }
}

pub struct FillReader {
    fill: Following,
    rx: watch::Receiver<FillState>,
    total: Option<u64>,
    fallback: Option<Fallback>,
    /// End of the furthest range read so far (what a fallback must match).
    read_upto: u64,
}

impl FillReader {
    /// Waits for the upstream's answer to the fill. A fill that fails on its disk before it
    /// streams sends its readers to the upstream directly (`Bypass`).
    pub async fn start(fill: Arc<Fill>, fallback: Option<Fallback>) -> Result<FillStart, FillError> {
        let fill = Following::new(fill);
        let mut rx = fill.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            let total = match state {
                FillState::Connecting => None,
                FillState::Streaming { total, .. } => {
                    return Ok(FillStart::Reader(FillReader { fill, rx, total, fallback, read_upto: 0 }));
                }
                FillState::Verified { size } => Some(size),
                FillState::Bypass | FillState::Failed(FillError::Disk(_)) => return Ok(FillStart::Bypass),
                FillState::Failed(e) => return Err(e),
            };
            if let Some(size) = total {
                return Ok(FillStart::Reader(FillReader { fill, rx, total: Some(size), fallback, read_upto: 0 }));
            }
            wait_change(&mut rx).await?;
        }
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
                FillState::Bypass => return Err(FillError::Disk("fill switched to bypass mid-stream".into())),
                _ => {}
            }
            wait_change(&mut self.rx).await?;
        }
    }

    async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
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

    async fn verified(&mut self) -> Result<u64, FillError> {
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
    rx.changed().await.map_err(|_| FillError::Disk("fill ended without a result".into()))
}

/// A blob streamed straight from the upstream (too large to cache), hashed on the way.
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
        metrics.upstream_requests.with_label_values(&[&upstream.name, "blob"]).inc();
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

    async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
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

    async fn finish(&mut self) -> Result<u64, FillError> {
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
