//! The disk index: which entries exist, their sizes, their recency, and the byte budget.
//! `disk_max` is a hard bound: space is reserved before a fill writes, evicting the least
//! recently used entries to make room.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::Mutex;

use super::EntryKey;

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    tick: u64,
    /// The file as it was when this process hashed it to its digest (published by a fill, or
    /// checked since start); `None` until then.
    stamp: Option<FileStamp>,
}

/// What identifies a file's content without reading it: device, inode, size and change time.
/// Any write, truncation, `chmod`, rename or replacement of the file changes its ctime, and
/// user space cannot set a ctime back, so a file whose stamp is unchanged holds the bytes that
/// were hashed when the stamp was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    ctime: (i64, i64),
}

impl FileStamp {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt;
        FileStamp { dev: meta.dev(), ino: meta.ino(), size: meta.len(), ctime: (meta.ctime(), meta.ctime_nsec()) }
    }
}

/// What the index knows of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub size: u64,
    /// The stamp of the file when it was last hashed by this process.
    pub stamp: Option<FileStamp>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<EntryKey, Entry>,
    /// Recency order: the smallest tick is the least recently used.
    lru: BTreeMap<u64, EntryKey>,
    next_tick: u64,
    /// Bytes of published entries.
    used: u64,
    /// Bytes reserved by fills in flight.
    reserved: u64,
}

/// Entries removed to make room; their files must be deleted by the caller.
pub type Victims = Vec<(EntryKey, u64)>;

/// The request does not fit in the budget even after evicting everything evictable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} bytes do not fit in the disk budget of {max} bytes")]
pub struct NoRoom {
    pub wanted: u64,
    pub max: u64,
}

/// The index with its budget.
#[derive(Debug)]
pub struct DiskIndex {
    inner: Mutex<Inner>,
    max: u64,
}

impl DiskIndex {
    pub fn new(max: u64) -> Arc<Self> {
        Arc::new(DiskIndex { inner: Mutex::new(Inner::default()), max })
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// An entry, marking it recently used.
    pub fn touch(&self, key: &EntryKey) -> Option<Found> {
        let mut inner = self.inner.lock();
        let tick = inner.next_tick;
        let entry = inner.entries.get_mut(key)?;
        let (old, found) = (entry.tick, Found { size: entry.size, stamp: entry.stamp });
        entry.tick = tick;
        inner.next_tick += 1;
        inner.lru.remove(&old);
        inner.lru.insert(tick, *key);
        Some(found)
    }

    /// Records that an entry's file, as `stamp` describes it, was hashed and matched.
    pub fn mark_verified(&self, key: &EntryKey, stamp: FileStamp) {
        if let Some(entry) = self.inner.lock().entries.get_mut(key) {
            entry.stamp = Some(stamp);
        }
    }

    /// Whether an entry is present and verified.
    pub fn is_verified(&self, key: &EntryKey) -> Option<bool> {
        self.inner.lock().entries.get(key).map(|e| e.stamp.is_some())
    }

    /// Size of an entry without changing its recency.
    pub fn peek(&self, key: &EntryKey) -> Option<u64> {
        self.inner.lock().entries.get(key).map(|e| e.size)
    }

    /// Adds an entry found at start-up (no reservation), oldest first.
    /// Returns the entries evicted if the folder held more than the budget.
    pub fn insert_existing(&self, key: EntryKey, size: u64) -> Victims {
        if size > self.max {
            return vec![(key, size)];
        }
        let mut inner = self.inner.lock();
        inner.insert(key, size, None);
        let excess = inner.used.saturating_sub(self.max);
        inner.evict(excess, &key)
    }

    /// Removes an entry (purge, or a file found damaged). Returns its size.
    pub fn remove(&self, key: &EntryKey) -> Option<u64> {
        let mut inner = self.inner.lock();
        let entry = inner.entries.remove(key)?;
        inner.lru.remove(&entry.tick);
        inner.used -= entry.size;
        Some(entry.size)
    }

    /// Reserves `bytes` for a fill, evicting least recently used entries as needed.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<(Reservation, Victims), NoRoom> {
        let mut inner = self.inner.lock();
        let victims = inner.make_room(bytes, self.max).ok_or(NoRoom { wanted: bytes, max: self.max })?;
        inner.reserved += bytes;
        Ok((Reservation { index: Arc::clone(self), bytes }, victims))
    }

    /// (used, reserved, entries)
    pub fn usage(&self) -> (u64, u64, usize) {
        let inner = self.inner.lock();
        (inner.used, inner.reserved, inner.entries.len())
    }

    /// Every entry, least recently used first.
    pub fn keys_by_recency(&self) -> Vec<EntryKey> {
        self.inner.lock().lru.values().copied().collect()
    }

    /// Every entry not verified since start, then every verified one (the scrub's order).
    pub fn keys_for_scrub(&self) -> Vec<EntryKey> {
        let inner = self.inner.lock();
        let mut keys: Vec<(bool, EntryKey)> = inner.entries.iter().map(|(k, e)| (e.stamp.is_some(), *k)).collect();
        keys.sort_by_key(|(verified, _)| *verified);
        keys.into_iter().map(|(_, k)| k).collect()
    }
}

impl Inner {
    fn insert(&mut self, key: EntryKey, size: u64, stamp: Option<FileStamp>) {
        let tick = self.next_tick;
        self.next_tick += 1;
        if let Some(old) = self.entries.insert(key, Entry { size, tick, stamp }) {
            self.lru.remove(&old.tick);
            self.used -= old.size;
        }
        self.lru.insert(tick, key);
        self.used += size;
    }

    /// Evicts until `bytes` more fit under `max`; `None` if they cannot.
    fn make_room(&mut self, bytes: u64, max: u64) -> Option<Victims> {
        let available_at_best = max.checked_sub(self.reserved)?;
        if bytes > available_at_best {
            return None;
        }
        let needed = (self.used + self.reserved + bytes).saturating_sub(max);
        Some(self.evict_lru(needed))
    }

    fn evict_lru(&mut self, mut needed: u64) -> Victims {
        let mut victims = Vec::new();
        while needed > 0 {
            let Some((_, key)) = self.lru.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                self.used -= entry.size;
                needed = needed.saturating_sub(entry.size);
                victims.push((key, entry.size));
            }
        }
        victims
    }

    /// Evicts `needed` bytes at start-up, never the entry just added.
    fn evict(&mut self, needed: u64, keep: &EntryKey) -> Victims {
        if needed == 0 {
            return Vec::new();
        }
        let kept = self.entries.get(keep).copied();
        if let Some(k) = kept {
            self.lru.remove(&k.tick);
        }
        let victims = self.evict_lru(needed);
        if let Some(k) = kept {
            self.lru.insert(k.tick, *keep);
        }
        victims
    }
}

/// Space held by a fill in flight; released on drop unless committed.
#[derive(Debug)]
pub struct Reservation {
    index: Arc<DiskIndex>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation (a body longer than announced, or of unknown length).
    pub fn grow(&mut self, more: u64) -> Result<Victims, NoRoom> {
        let mut inner = self.index.inner.lock();
        let victims =
            inner.make_room(more, self.index.max).ok_or(NoRoom { wanted: self.bytes + more, max: self.index.max })?;
        inner.reserved += more;
        self.bytes += more;
        Ok(victims)
    }

    /// Turns the reservation into a published entry of `size` bytes, hashed as `stamp` describes
    /// its file.
    pub fn commit(mut self, key: EntryKey, size: u64, stamp: Option<FileStamp>) {
        let mut inner = self.index.inner.lock();
        inner.reserved -= self.bytes;
        self.bytes = 0;
        inner.insert(key, size, stamp);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.index.inner.lock().reserved -= self.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Kind;
    use super::*;
    use berth_shared::Digest;

    fn key(n: u8) -> EntryKey {
        EntryKey { kind: Kind::Blob, digest: Digest::of(&[n]) }
    }

    fn publish(index: &Arc<DiskIndex>, k: EntryKey, size: u64) -> Victims {
        let (r, victims) = index.reserve(size).unwrap();
        r.commit(k, size, None);
        victims
    }

    #[test]
    fn should_evict_least_recently_used_first() {
        let index = DiskIndex::new(300);
        for n in 1..=3 {
            assert!(publish(&index, key(n), 100).is_empty());
        }
        index.touch(&key(1));
        let victims = publish(&index, key(4), 100);
        assert_eq!(victims, vec![(key(2), 100)]);
        let victims = publish(&index, key(5), 150);
        assert_eq!(victims, vec![(key(3), 100), (key(1), 100)]);
        assert_eq!(index.usage(), (250, 0, 2));
    }

    #[test]
    fn should_count_reservations_against_the_budget() {
        let index = DiskIndex::new(100);
        let (a, _) = index.reserve(60).unwrap();
        assert_eq!(index.reserve(50).unwrap_err(), NoRoom { wanted: 50, max: 100 });
        drop(a);
        assert!(index.reserve(100).is_ok());
        assert_eq!(index.usage().1, 0, "dropped reservations are released");
    }

    #[test]
    fn should_refuse_what_can_never_fit() {
        let index = DiskIndex::new(100);
        assert!(index.reserve(101).is_err());
    }

    #[test]
    fn should_grow_a_reservation_with_eviction() {
        let index = DiskIndex::new(100);
        publish(&index, key(1), 50);
        let (mut r, _) = index.reserve(30).unwrap();
        let victims = r.grow(40).unwrap();
        assert_eq!(victims, vec![(key(1), 50)]);
        assert!(r.grow(31).is_err());
        r.commit(key(2), 70, None);
        assert_eq!(index.usage(), (70, 0, 1));
    }

    #[test]
    fn should_evict_oldest_at_startup_when_over_budget() {
        let index = DiskIndex::new(150);
        assert!(index.insert_existing(key(1), 100).is_empty());
        assert_eq!(index.insert_existing(key(2), 100), vec![(key(1), 100)]);
        assert_eq!(index.usage(), (100, 0, 1));
        assert_eq!(index.keys_by_recency(), vec![key(2)]);
    }

    #[test]
    fn should_remove_entries() {
        let index = DiskIndex::new(100);
        publish(&index, key(1), 10);
        assert_eq!(index.remove(&key(1)), Some(10));
        assert_eq!(index.remove(&key(1)), None);
        assert_eq!(index.usage(), (0, 0, 0));
    }
}
