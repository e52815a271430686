//! The cache: a disk tier of verified, content-addressed files with an LRU index and a hard size
//! bound, single-flight fills that stream to every waiter while they write, and manifests.

pub mod disk;
pub mod error;
mod feed;
pub mod fill;
pub mod flight;
pub mod index;
pub mod manifests;
pub mod memory;
pub mod negative;
pub mod scrub;
pub mod source;
mod xattr;

use berth_shared::Digest;

pub use disk::{DiskError, DiskStore};
pub use error::{FillError, PassReason};
pub use fill::Fills;
pub use manifests::{ManifestCache, ManifestError};
pub use memory::{MemoryObject, MemoryTier};
pub use source::BlobSource;

/// What a cached file holds. Blobs and manifests live in separate folders: a manifest file
/// also records its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Manifest => "manifest",
        }
    }

    pub fn folder(self) -> &'static str {
        match self {
            Kind::Blob => "blobs",
            Kind::Manifest => "manifests",
        }
    }
}

/// The key of one cached file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub kind: Kind,
    pub digest: Digest,
}

impl EntryKey {
    pub fn blob(digest: Digest) -> Self {
        EntryKey { kind: Kind::Blob, digest }
    }
    pub fn manifest(digest: Digest) -> Self {
        EntryKey { kind: Kind::Manifest, digest }
    }
}

/// Runs blocking file work off the async workers.
pub(crate) async fn blocking<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("blocking task failed: {e}"))))
}
