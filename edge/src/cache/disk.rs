//! The disk tier: one file per entry under `<dir>/<blobs|manifests>/sha256/<2 hex>/<hex>`,
//! written as temp files under `<dir>/tmp` and published by rename. The index is rebuilt from
//! the folder at start-up; the temp folder is emptied.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_shared::Algorithm;
use berth_shared::Digest;
use parking_lot::Mutex;

use super::flight::{Flight, Waiting};
use super::index::{DiskIndex, FileStamp, NoRoom, Reservation, Victims};
use super::{blocking, xattr, EntryKey, Kind};
use crate::metrics::Metrics;

/// After a disk failure, fills bypass the disk for this long before trying it again.
const DEGRADED_RETRY: Duration = Duration::from_secs(10);
/// Read size when hashing a cached file.
const HASH_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> DiskError {
    let context = context.into();
    move |source| DiskError::Io { context, source }
}

/// The disk tier.
pub struct DiskStore {
    root: PathBuf,
    index: Arc<DiskIndex>,
    metrics: Arc<Metrics>,
    temp_seq: AtomicU64,
    /// When and why the disk last failed.
    degraded: Mutex<Option<(Instant, String)>>,
    /// First-use verifications in progress (one per entry, shared by concurrent requests).
    verifying: Flight<EntryKey, Waiting<bool>>,
    /// Serialises index-and-file changes (publish, evict, remove), so a delete for an evicted
    /// entry never removes a newer file published under the same name.
    files: Mutex<()>,
}

impl DiskStore {
    /// Opens (creating if needed) the cache folder: empties `tmp/`, rebuilds the index from the
    /// files present, and evicts down to `max_bytes` if the folder holds more.
    pub fn open(root: &Path, max_bytes: u64, metrics: Arc<Metrics>) -> Result<Arc<Self>, DiskError> {
        Self::open_with(root, max_bytes, crate::cache::index::Eviction::default(), metrics)
    }

    /// [`open`](Self::open) with an eviction policy.
    pub fn open_with(
        root: &Path,
        max_bytes: u64,
        eviction: crate::cache::index::Eviction,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, DiskError> {
        for kind in [Kind::Blob, Kind::Manifest] {
            for algorithm in Algorithm::ALL {
                let dir = root.join(kind.folder()).join(algorithm.name());
                fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
            }
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(format!("cleaning {}", tmp.display())))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
        let store = Arc::new(DiskStore {
            root: root.to_owned(),
            index: DiskIndex::with_policy(max_bytes, eviction),
            metrics,
            temp_seq: AtomicU64::new(0),
            degraded: Mutex::new(None),
            verifying: Flight::default(),
            files: Mutex::new(()),
        });
        store.rebuild_index()?;
        metrics_update(&store);
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn index(&self) -> &Arc<DiskIndex> {
        &self.index
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Where an entry's file lives.
    pub fn entry_path(&self, key: &EntryKey) -> PathBuf {
        entry_path(&self.root, key)
    }

    /// Size of an entry if the index holds it (answers HEAD without touching the disk).
    pub fn contains(&self, key: &EntryKey) -> Option<u64> {
        self.index.peek(key)
    }

    /// Opens an entry for reading. A file that is missing or has the wrong size is dropped and
    /// reported as a miss, never served. A blob whose file is not the one this process hashed
    /// (first use after start, or changed since: its stamp differs) is hashed again first, once
    /// for all concurrent requests, and dropped if it no longer matches its digest.
    pub async fn open_entry(self: &Arc<Self>, key: EntryKey) -> Option<(Arc<File>, u64)> {
        let found = self.index.touch(&key)?;
        let path = self.entry_path(&key);
        let opened = blocking(move || {
            let file = File::open(&path)?;
            let meta = file.metadata()?;
            Ok((file, FileStamp::of(&meta)))
        })
        .await;
        let (file, stamp) = match opened {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(digest = %key.digest, kind = key.kind.as_str(), error = %e, "cached file unreadable: dropped");
                self.drop_damaged(key).await;
                return None;
            }
        };
        if stamp.size() != found.size {
            tracing::warn!(digest = %key.digest, kind = key.kind.as_str(), expected = found.size, actual = stamp.size(), "cached file damaged (size changed): dropped");
            self.drop_damaged(key).await;
            return None;
        }
        if key.kind == Kind::Blob && found.stamp != Some(stamp) {
            if found.stamp.is_some() {
                tracing::warn!(digest = %key.digest, "cached file changed since it was verified: hashing it again");
                self.metrics.changed_entries.inc();
            }
            // Hash the very file we opened: what is served is what was checked.
            let file = Arc::new(file);
            return self.verify_once(key, Arc::clone(&file), stamp).await.then_some((file, found.size));
        }
        Some((Arc::new(file), found.size))
    }

    /// Hashes an opened blob file whose stamp the index does not hold, once for all concurrent
    /// requests; records the stamp if it matches, drops the entry if not. Returns whether it may
    /// be served.
    async fn verify_once(self: &Arc<Self>, key: EntryKey, file: Arc<File>, stamp: FileStamp) -> bool {
        let store = Arc::clone(self);
        let check = move || async move {
            let checked = blocking(move || {
                let matches = hash_file(&file, key.digest)? == key.digest;
                // A write during the hash changes the stamp: only an unchanged file counts.
                Ok(matches && FileStamp::of(&file.metadata()?) == stamp)
            })
            .await;
            match checked {
                Ok(true) => {
                    store.index.mark_verified(&key, stamp);
                    true
                }
                outcome => {
                    tracing::warn!(digest = %key.digest, ?outcome, "cached blob does not verify (content changed or unreadable): dropped");
                    store.drop_damaged(key).await;
                    false
                }
            }
        };
        self.verifying.run(key, check, |_| false).await.0
    }

    /// Hashes an entry's file (the scrub), reading at most `rate` bytes per second. Returns
    /// whether it matched; a damaged entry is dropped.
    pub async fn verify(self: &Arc<Self>, key: EntryKey, rate: u64) -> io::Result<bool> {
        let Some(size) = self.index.peek(&key) else { return Ok(true) };
        let path = self.entry_path(&key);
        let opened = blocking(move || {
            let file = File::open(path)?;
            let stamp = FileStamp::of(&file.metadata()?);
            Ok((file, stamp))
        })
        .await;
        let (file, stamp) = match opened {
            Ok((f, stamp)) => (Arc::new(f), stamp),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.metrics.scrub_failures.inc();
                self.drop_damaged(key).await;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let (mut hasher, mut offset) = (Some(key.digest.hasher()), 0u64);
        loop {
            let (f, mut h) = (Arc::clone(&file), hasher.take().unwrap_or_default());
            let (h, n) = blocking(move || {
                use std::os::unix::fs::FileExt;
                let mut buf = vec![0u8; HASH_CHUNK];
                let n = f.read_at(&mut buf, offset)?;
                // A manifest file starts with its media type line, which is not hashed.
                let start = match (offset, key.kind) {
                    (0, Kind::Manifest) => buf[..n].iter().position(|b| *b == b'\n').map_or(n, |p| p + 1),
                    _ => 0,
                };
                h.update(&buf[start..n]);
                Ok((h, n))
            })
            .await?;
            hasher = Some(h);
            if n == 0 {
                break;
            }
            offset += n as u64;
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
            }
        }
        let ok = offset == size && hasher.unwrap_or_default().finish() == key.digest;
        let unchanged = blocking(move || Ok(FileStamp::of(&file.metadata()?) == stamp)).await.unwrap_or(false);
        if ok && unchanged {
            self.index.mark_verified(&key, stamp);
        } else if ok {
            // Changed while it was hashed: the next open hashes it again.
        } else if self.index.peek(&key).is_some() {
            tracing::warn!(digest = %key.digest, kind = key.kind.as_str(), "scrub: cached file does not hash to its digest: dropped");
            self.metrics.scrub_failures.inc();
            self.drop_damaged(key).await;
        }
        Ok(ok)
    }

    /// Marks the disk as failing: fills bypass it for a while, `/readyz` reports it.
    pub fn set_degraded(&self, reason: String) {
        tracing::error!(%reason, "cache disk degraded: serving without caching");
        self.metrics.disk_degraded.set(1);
        *self.degraded.lock() = Some((Instant::now(), reason));
    }

    /// Why the disk is degraded, while it is.
    pub fn degraded(&self) -> Option<String> {
        let mut degraded = self.degraded.lock();
        match &*degraded {
            Some((since, reason)) if since.elapsed() < DEGRADED_RETRY => Some(reason.clone()),
            Some(_) => {
                *degraded = None;
                self.metrics.disk_degraded.set(0);
                None
            }
            None => None,
        }
    }

    fn clear_degraded(&self) {
        if self.degraded.lock().take().is_some() {
            tracing::info!("cache disk usable again");
            self.metrics.disk_degraded.set(0);
        }
    }

    pub async fn drop_damaged(self: &Arc<Self>, key: EntryKey) {
        self.metrics.damaged_entries.inc();
        self.remove(key).await;
    }

    /// Removes an entry from the index and the disk. Returns whether it was present.
    pub async fn remove(self: &Arc<Self>, key: EntryKey) -> bool {
        let store = Arc::clone(self);
        let present = blocking(move || {
            let _files = store.files.lock();
            let present = store.index.remove(&key).is_some();
            unlink(&store.entry_path(&key));
            Ok(present)
        })
        .await
        .unwrap_or(false);
        metrics_update(self);
        present
    }

    /// Creates a new temp file for a fill: (path, file opened for writing).
    pub fn create_temp(&self) -> io::Result<(PathBuf, File)> {
        let seq = self.temp_seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join("tmp");
        let path = dir.join(format!("{}-{seq}.part", std::process::id()));
        // Only the edge's own user may read what it caches (private images included).
        let open = || {
            use std::os::unix::fs::OpenOptionsExt;
            File::options().write(true).read(true).create_new(true).mode(0o600).open(&path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(dir = %dir.display(), "cache folder missing: recreating it");
                fs::create_dir_all(&dir)?;
                open()?
            }
            other => other?,
        };
        Ok((path, file))
    }

    /// Reserves room for `bytes`, evicting least recently used entries.
    /// Blocking: evicted files are deleted before it returns.
    pub fn reserve(&self, bytes: u64) -> Result<Reservation, NoRoom> {
        let _files = self.files.lock();
        let (reservation, victims) = self.index.reserve(bytes)?;
        self.delete_victims(victims);
        Ok(reservation)
    }

    /// Grows a reservation, evicting as needed. Blocking, like `reserve`.
    pub fn grow(&self, reservation: &mut Reservation, more: u64) -> Result<(), NoRoom> {
        let _files = self.files.lock();
        let victims = reservation.grow(more)?;
        self.delete_victims(victims);
        Ok(())
    }

    /// `reserve` on the blocking pool.
    pub async fn reserve_async(self: &Arc<Self>, bytes: u64) -> Result<Reservation, NoRoom> {
        let store = Arc::clone(self);
        blocking(move || Ok(store.reserve(bytes))).await.unwrap_or(Err(NoRoom { wanted: bytes, max: self.index.max() }))
    }

    /// `grow` on the blocking pool; on failure the reservation is released.
    pub async fn grow_async(self: &Arc<Self>, reservation: Reservation, more: u64) -> Result<Reservation, NoRoom> {
        let store = Arc::clone(self);
        let wanted = reservation.bytes() + more;
        let grown = tokio::task::spawn_blocking(move || {
            let mut reservation = reservation;
            store.grow(&mut reservation, more).map(|_| reservation)
        })
        .await;
        grown.unwrap_or(Err(NoRoom { wanted, max: self.index.max() }))
    }

    /// Moves a verified temp file into place and adds it to the index. Blocking.
    pub fn publish(&self, temp: &Path, key: EntryKey, size: u64, reservation: Reservation) -> io::Result<()> {
        let path = self.entry_path(&key);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        xattr::set_size(temp, size);
        // Under the files lock: an eviction of this key cannot delete the new file after it.
        let _files = self.files.lock();
        fs::rename(temp, &path)?;
        // The stamp after the rename (which changes the ctime) describes the verified file.
        let stamp = fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        reservation.commit(key, size, stamp);
        metrics_update(self);
        self.clear_degraded();
        Ok(())
    }

    /// Deletes evicted files; the caller holds the files lock.
    fn delete_victims(&self, victims: Victims) {
        if victims.is_empty() {
            return;
        }
        let bytes: u64 = victims.iter().map(|(_, size)| size).sum();
        self.metrics.evictions.inc_by(victims.len() as u64);
        self.metrics.evicted_bytes.inc_by(bytes);
        metrics_update(self);
        for (key, _) in &victims {
            unlink(&self.entry_path(key));
        }
    }

    /// Walks the entry folders: every well-named file becomes an index entry, oldest first;
    /// anything else is deleted.
    fn rebuild_index(&self) -> Result<(), DiskError> {
        let mut found: Vec<(i64, EntryKey, u64)> = Vec::new();
        for kind in [Kind::Blob, Kind::Manifest] {
            for algorithm in Algorithm::ALL {
                let base = self.root.join(kind.folder()).join(algorithm.name());
                let shards = fs::read_dir(&base).map_err(io_err(format!("reading {}", base.display())))?;
                for shard in shards.flatten() {
                    let path = shard.path();
                    let is_shard = shard.file_type().is_ok_and(|t| t.is_dir())
                        && shard
                            .file_name()
                            .to_str()
                            .is_some_and(|n| n.len() == 2 && Digest::from_hex(&n.repeat(32)).is_ok());
                    if is_shard {
                        scan_shard(&path, kind, algorithm, &mut found, &self.metrics);
                    } else {
                        tracing::warn!(path = %path.display(), "stray entry in cache folder: removed");
                        let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
                    }
                }
            }
        }
        found.sort_by_key(|(mtime, key, _)| (*mtime, *key));
        let mut evicted = Vec::new();
        for (_, key, size) in found {
            evicted.extend(self.index.insert_existing(key, size));
        }
        for (key, _) in &evicted {
            let _ = fs::remove_file(self.entry_path(key));
        }
        let (used, _, entries) = self.index.usage();
        tracing::info!(entries, used_bytes = used, evicted = evicted.len(), root = %self.root.display(), "disk index rebuilt");
        Ok(())
    }
}

fn entry_path(root: &Path, key: &EntryKey) -> PathBuf {
    let hex = key.digest.hex();
    root.join(key.kind.folder()).join(key.digest.algorithm()).join(&hex[..2]).join(hex)
}

/// Adds the entries of one `<2 hex>` folder; removes stray files.
fn scan_shard(
    shard: &Path,
    kind: Kind,
    algorithm: Algorithm,
    found: &mut Vec<(i64, EntryKey, u64)>,
    metrics: &Metrics,
) {
    let Some(prefix) = shard.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
        return;
    };
    let Ok(files) = fs::read_dir(shard) else {
        return;
    };
    for file in files.flatten() {
        let name = file.file_name();
        let parsed = name
            .to_str()
            .filter(|n| n.starts_with(&prefix) && prefix.len() == 2)
            .and_then(|n| Digest::from_hex_with(algorithm, n).ok());
        match (parsed, file.metadata()) {
            (Some(digest), Ok(meta)) if meta.is_file() => match xattr::get_size(&file.path()) {
                Some(expected) if expected != meta.len() => {
                    metrics.damaged_entries.inc();
                    tracing::warn!(path = %file.path().display(), expected, actual = meta.len(), "cached file has the wrong size: removed");
                    let _ = fs::remove_file(file.path());
                }
                _ => found.push((meta.mtime(), EntryKey { kind, digest }, meta.len())),
            },
            _ => {
                tracing::warn!(path = %file.path().display(), "stray file in cache folder: removed");
                let _ = fs::remove_file(file.path());
            }
        }
    }
}

/// Deletes a file; a missing one is fine, other errors are logged.
fn unlink(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cached file could not be deleted");
        }
    }
}

/// The digest of a whole file, with the algorithm of `like`.
fn hash_file(file: &File, like: Digest) -> io::Result<Digest> {
    use std::os::unix::fs::FileExt;
    let mut hasher = like.hasher();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut offset = 0;
    loop {
        let n = file.read_at(&mut buf, offset)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
}

fn metrics_update(store: &DiskStore) {
    let (used, reserved, entries) = store.index.usage();
    store.metrics.cache_bytes.with_label_values(&["used"]).set(used as i64);
    store.metrics.cache_bytes.with_label_values(&["reserved"]).set(reserved as i64);
    store.metrics.cache_entries.set(entries as i64);
    store.metrics.cache_max_bytes.set(store.index.max() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path, max: u64) -> Arc<DiskStore> {
        DiskStore::open(dir, max, Arc::new(Metrics::new("test"))).unwrap()
    }

    fn put(store: &Arc<DiskStore>, bytes: &[u8]) -> EntryKey {
        let key = EntryKey::blob(Digest::of(bytes));
        let (path, _) = store.create_temp().unwrap();
        fs::write(&path, bytes).unwrap();
        let r = store.reserve(bytes.len() as u64).unwrap();
        store.publish(&path, key, bytes.len() as u64, r).unwrap();
        key
    }

    #[tokio::test]
    async fn should_rebuild_the_index_and_clean_temp_files_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let a = put(&s, b"hello");
        let (temp, _) = s.create_temp().unwrap();
        fs::write(dir.path().join("blobs/sha256/zz-not-hex"), b"x").ok();
        drop(s);
        let s = store(dir.path(), 1 << 20);
        assert_eq!(s.contains(&a), Some(5));
        assert!(!temp.exists(), "temp files are removed at start");
        assert!(!dir.path().join("blobs/sha256/zz-not-hex").exists());
        let (file, size) = s.open_entry(a).await.unwrap();
        assert_eq!((file.metadata().unwrap().len(), size), (5, 5));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(file.metadata().unwrap().permissions().mode() & 0o777, 0o600, "cache files are private");
    }

    #[tokio::test]
    async fn should_drop_a_file_whose_size_changed() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let a = put(&s, b"hello world");
        fs::write(s.entry_path(&a), b"hello").unwrap();
        assert!(s.open_entry(a).await.is_none());
        assert_eq!(s.contains(&a), None);
        assert!(!s.entry_path(&a).exists());
    }

    #[tokio::test]
    async fn should_drop_a_verified_file_changed_in_place_with_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let a = put(&s, b"hello world");
        assert!(s.open_entry(a).await.is_some(), "published files are served");
        fs::write(s.entry_path(&a), b"HELLO world").unwrap();
        assert!(s.open_entry(a).await.is_none(), "a changed file is hashed again and dropped");
        assert_eq!(s.contains(&a), None);
        assert_eq!(s.metrics().changed_entries.get(), 1);
        assert_eq!(s.metrics().damaged_entries.get(), 1);
    }

    #[tokio::test]
    async fn should_serve_a_file_whose_stamp_changed_but_whose_bytes_still_match() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let a = put(&s, b"hello world");
        let path = s.entry_path(&a);
        let mut perms = fs::metadata(&path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        fs::set_permissions(&path, perms).unwrap(); // changes the ctime, not the bytes
        assert!(s.open_entry(a).await.is_some());
        assert_eq!(s.metrics().changed_entries.get(), 1);
        assert!(s.open_entry(a).await.is_some());
        assert_eq!(s.metrics().changed_entries.get(), 1, "the new stamp was recorded");
    }

    #[tokio::test]
    async fn should_treat_a_deleted_file_as_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 1 << 20);
        let a = put(&s, b"data");
        fs::remove_file(s.entry_path(&a)).unwrap();
        assert!(s.open_entry(a).await.is_none());
        assert_eq!(s.contains(&a), None);
    }

    #[tokio::test]
    async fn should_evict_files_to_stay_under_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path(), 10);
        let a = put(&s, b"aaaaaa");
        let b = put(&s, b"bbbbbb");
        assert_eq!(s.contains(&a), None);
        assert_eq!(s.contains(&b), Some(6));
        // eviction deletes on the blocking pool; the index is authoritative at once
        tokio::task::yield_now().await;
        let used = s.index().usage().0;
        assert!(used <= 10);
    }
}
