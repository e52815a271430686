//! The memory tier (foyer): manifests and blobs up to `cache.memory_object_max`, bounded by
//! `cache.memory_max`. Entries
//! come only from verified sources (a published fill, a verified disk read, a verified manifest).

use std::sync::Arc;

use bytes::Bytes;
use foyer::{Cache, CacheBuilder};

use super::flight::{Flight, Turn};
use super::EntryKey;

/// Per-entry bookkeeping counted against the budget on top of the bytes.
const ENTRY_OVERHEAD: usize = 128;

/// A cached object: its bytes and, for manifests, its media type.
#[derive(Debug, Clone)]
pub struct MemoryObject {
    pub bytes: Bytes,
    pub media_type: Option<Arc<str>>,
}

/// The memory tier.
pub struct MemoryTier {
    cache: Option<Cache<EntryKey, MemoryObject>>,
    object_max: u64,
    /// Entries being read from disk into memory now: one read per entry at a time.
    promoting: Flight<EntryKey, ()>,
}

impl MemoryTier {
    /// `capacity`: bytes (0 disables the tier); `object_max`: largest object kept.
    pub fn new(capacity: u64, object_max: u64) -> Self {
        // Each shard holds capacity/shards: keep shards large enough for several of the largest
        // objects (and many small ones).
        let shards = (capacity / object_max.max(1).saturating_mul(4)).clamp(1, 8) as usize;
        let cache = (capacity > 0).then(|| {
            CacheBuilder::new(capacity as usize)
                .with_name("berth-memory")
                .with_shards(shards)
                .with_weighter(|_: &EntryKey, v: &MemoryObject| v.bytes.len() + ENTRY_OVERHEAD)
                .build()
        });
        MemoryTier { cache, object_max, promoting: Flight::default() }
    }

    /// The turn to read `key` into memory, unless another request is doing it (that read will
    /// serve the next requests; this one is served from disk meanwhile).
    pub fn promotion(&self, key: EntryKey) -> Option<Turn<EntryKey>> {
        self.promoting.turn(key)
    }

    /// Whether an object of `size` bytes belongs in memory.
    pub fn admits(&self, size: u64) -> bool {
        self.cache.is_some() && size <= self.object_max
    }

    pub fn get(&self, key: &EntryKey) -> Option<MemoryObject> {
        self.cache.as_ref()?.get(key).map(|e| e.value().clone())
    }

    pub fn insert(&self, key: EntryKey, object: MemoryObject) {
        if let Some(cache) = &self.cache {
            if self.admits(object.bytes.len() as u64) {
                cache.insert(key, object);
            }
        }
    }

    pub fn remove(&self, key: &EntryKey) {
        if let Some(cache) = &self.cache {
            cache.remove(key);
        }
    }

    /// Bytes held (including per-entry overhead).
    pub fn usage(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.usage())
    }

    pub fn entries(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.entries())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shared::Digest;

    fn obj(n: usize) -> MemoryObject {
        MemoryObject { bytes: Bytes::from(vec![1u8; n]), media_type: None }
    }

    #[test]
    fn should_keep_small_objects_and_refuse_large_ones() {
        let tier = MemoryTier::new(1 << 20, 1000);
        let small = EntryKey::blob(Digest::of(b"s"));
        let large = EntryKey::blob(Digest::of(b"l"));
        tier.insert(small, obj(1000));
        tier.insert(large, obj(1001));
        assert!(tier.get(&small).is_some());
        assert!(tier.get(&large).is_none());
    }

    #[test]
    fn should_stay_within_its_budget() {
        let tier = MemoryTier::new(64 << 10, 8 << 10);
        for i in 0..100u32 {
            tier.insert(EntryKey::blob(Digest::of(&i.to_le_bytes())), obj(8 << 10));
        }
        assert!(tier.usage() <= 64 << 10, "usage {}", tier.usage());
    }

    #[test]
    fn should_be_off_with_zero_capacity() {
        let tier = MemoryTier::new(0, 1000);
        let k = EntryKey::blob(Digest::of(b"s"));
        tier.insert(k, obj(10));
        assert!(tier.get(&k).is_none());
        assert!(!tier.admits(1));
    }
}
