//! hit(file): a verified file read in order, with one read ahead.

use std::fs::File;
use std::sync::Arc;

use berth_shared::DigestHasher;
use bytes::Bytes;

use super::read_at;
use crate::cache::error::{DiskFault, DiskOp, FillError};
use crate::cache::EntryKey;

/// Reads exactly `len` bytes at `offset` into a fresh buffer, without zeroing it first.
pub(super) fn pread_exact(file: &File, offset: u64, len: usize) -> std::io::Result<Bytes> {
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

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the bytes are hashed as they are served (`verify_on_serve`).
    pub fn verifies(&self) -> bool {
        self.verify.is_some()
    }

    /// With `verify_on_serve`: whether the file hashes to its digest. The bytes served in order
    /// from the start are already hashed; the rest (a range request) is read now.
    pub(super) async fn check(&mut self) -> Result<(), FillError> {
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

    pub(super) async fn read(&mut self, offset: u64, max: usize) -> Result<Option<Bytes>, FillError> {
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
        let bytes = bytes.map_err(|e| FillError::Disk(DiskFault::new(DiskOp::Read, e)))?;
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
