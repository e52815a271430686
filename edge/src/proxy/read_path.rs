//! The blob read path: where a `GET /v2/<name>/blobs/<digest>` gets its bytes. One lookup puts
//! the request in one state, and each state opens one source (docs/architecture.md draws it):
//!
//! ```text
//! lookup ─┬─ hit(memory) ─────────────────────────────► Memory
//!         ├─ hit(file) ──── promote if small enough ──► Memory | Disk
//!         ├─ join(fill) ─┬─ a range far ahead ────────► Ranged (its own upstream request)
//!         ├─ fill ───────┴─ otherwise ────────────────► Fill ──(disk lost)──► Direct
//!         └─ pass-through(reason) ────────────────────► Direct
//! ```
//!
//! One single-flight table (`cache/flight.rs`) holds the fills; `cache/fill.rs` makes the lookup
//! past the memory tier. The outcome (`hit`, `miss`, `coalesced`, `bypass`) and the serving tier
//! follow from the state. One step goes round again: a request that joined a fill started for
//! another repository or upstream, which that upstream refused (a 4xx), tries once with its own.

use std::fs::File;
use std::sync::Arc;

use berth_shared::{Digest, RepositoryName};
use bytes::Bytes;

use super::RequestCtx;
use crate::cache::fill::{Asker, Fill, Lookup};
use crate::cache::source::{ranged, DirectReader, DiskReader, Fallback, FillReader, RangedReader};
use crate::cache::{blocking, BlobSource, EntryKey, FillError, MemoryObject, PassReason};
use crate::metrics::{Outcome, Tier};
use crate::registry::error::Subject;
use crate::registry::ApiError;
use crate::state::{EdgeState, Live};
use crate::upstream::Upstream;

/// One blob request on the read path.
pub(super) struct BlobRead<'a> {
    pub state: &'a Arc<EdgeState>,
    pub live: Arc<Live>,
    pub upstream: &'a Arc<Upstream>,
    pub repository: &'a RepositoryName,
    pub digest: Digest,
    /// A range that starts this far into the blob: `(first, last)`; it may get its own upstream
    /// request if the blob is cold.
    pub ahead: Option<(u64, Option<u64>)>,
    /// A client, or another edge of the region (whose miss fills from the origin).
    pub asker: Asker,
}

/// The state a lookup puts a request in.
enum State {
    /// hit(memory): verified bytes in the memory tier.
    Memory(Bytes),
    /// hit(file): a verified file; a read handle and the size.
    File(Arc<File>, u64),
    /// join(fill): a fill another request started.
    Join(Arc<Fill>),
    /// fill: this request started the fill.
    Fill(Arc<Fill>),
    /// pass-through: no fill can start.
    PassThrough(PassReason),
}

/// Why following a fill did not give a source.
enum Stop {
    /// The fill cannot be followed (it lost its disk, or does not cache): go to the upstream.
    PassThrough(PassReason),
    /// A fill for another repository or upstream was refused by that upstream.
    RefusedElsewhere(FillError),
    Failed(ApiError),
}

impl From<ApiError> for Stop {
    fn from(e: ApiError) -> Self {
        Stop::Failed(e)
    }
}

impl BlobRead<'_> {
    /// The blob's source, through the states above; the request's outcome and tier are set.
    pub async fn open(&self, ctx: &mut RequestCtx) -> Result<BlobSource, ApiError> {
        let mut retried = false;
        loop {
            let state = self.lookup().await?;
            (ctx.outcome, ctx.tier) = classify(&state);
            let followed = match state {
                State::Memory(bytes) => return self.hit_memory(bytes).await,
                State::File(file, size) => return self.hit_file(file, size).await,
                State::PassThrough(reason) => return self.pass_through(ctx, reason).await,
                State::Join(fill) => self.follow(fill, false).await,
                State::Fill(fill) => self.follow(fill, true).await,
            };
            match followed {
                Ok(source) => return Ok(source),
                Err(Stop::PassThrough(reason)) => return self.pass_through(ctx, reason).await,
                Err(Stop::RefusedElsewhere(_)) if !retried => retried = true,
                Err(Stop::RefusedElsewhere(e)) => return Err(ApiError::from_fill(&e)),
                Err(Stop::Failed(e)) => return Err(e),
            }
        }
    }

    /// The memory tier, then the disk and the fills.
    async fn lookup(&self) -> Result<State, ApiError> {
        let key = EntryKey::blob(self.digest);
        if let Some(bytes) = in_memory(self.state, key) {
            return Ok(State::Memory(bytes));
        }
        // A range far into the blob holds a fill it starts until the range's own request is
        // answered (`follow`).
        let hold = self.ahead.is_some();
        let lookup = self.state.fills.lookup(self.upstream, self.repository, self.digest, self.asker, hold).await;
        Ok(match lookup.map_err(|e| ApiError::from_fill(&e))? {
            Lookup::File(file, size) => State::File(file, size),
            Lookup::Join(fill) => State::Join(fill),
            Lookup::Fill(fill) => State::Fill(fill),
            Lookup::PassThrough(reason) => State::PassThrough(reason),
        })
    }

    /// Local bytes are served under this repository only if it holds the digest.
    async fn holds(&self) -> Result<(), ApiError> {
        super::authz::ensure_holds(self.state, &self.live, self.upstream, self.repository, self.digest, Subject::Blob)
            .await
    }

    async fn hit_memory(&self, bytes: Bytes) -> Result<BlobSource, ApiError> {
        self.holds().await?;
        // Keep the disk copy as recent as the memory one: a hot blob must not age out on disk.
        self.state.fills.store().index().touch(&EntryKey::blob(self.digest));
        Ok(BlobSource::Memory(bytes))
    }

    async fn hit_file(&self, file: Arc<File>, size: u64) -> Result<BlobSource, ApiError> {
        self.holds().await?;
        Ok(promote(self.state, EntryKey::blob(self.digest), file, size).await)
    }

    /// fill / join(fill): read the fill as it is written, or, for a range far ahead of it, the
    /// range's own upstream request.
    async fn follow(&self, fill: Arc<Fill>, started: bool) -> Result<BlobSource, Stop> {
        let elsewhere = fill.upstream != self.upstream.name || &fill.repository != self.repository;
        if started {
            // This request's own fill, from this repository: the upstream's answer confirms it.
            self.live.access.confirm(self.upstream.index, self.repository, self.digest);
        } else if elsewhere {
            self.holds().await?;
        }
        // Not beside a fill for another repository: that one may be refused, and this request
        // then starts its own.
        let ranged = if elsewhere { None } else { self.ranged(&fill).await };
        // A fill this request holds sends its request now (the range, if any, is answered).
        fill.go();
        if let Some(reader) = ranged {
            return Ok(BlobSource::Ranged(Box::new(reader)));
        }
        match FillReader::start(fill, Some(self.fallback())).await {
            Ok(reader) => Ok(BlobSource::Fill(reader)),
            Err(e) => Err(match e.pass_reason() {
                Some(reason) => Stop::PassThrough(reason),
                None if elsewhere && refused(&e) => Stop::RefusedElsewhere(e),
                None => Stop::Failed(ApiError::from_fill(&e)),
            }),
        }
    }

    /// The range's own request, if the range starts far ahead of the fill. It goes out beside
    /// the fill's (which runs as its own task), without waiting for the fill's headers.
    async fn ranged(&self, fill: &Arc<Fill>) -> Option<RangedReader> {
        let (first, last) = self.ahead.filter(|(first, _)| ranged::worth_it(fill, *first))?;
        let (fill, metrics) = (Arc::clone(fill), Arc::clone(&self.state.metrics));
        RangedReader::open(fill, self.upstream, self.repository, first, last, metrics).await
    }

    fn fallback(&self) -> Fallback {
        Fallback {
            upstream: Arc::clone(self.upstream),
            repository: self.repository.clone(),
            metrics: Arc::clone(&self.state.metrics),
        }
    }

    /// pass-through: the upstream's body, hashed on the way; nothing is cached.
    async fn pass_through(&self, ctx: &mut RequestCtx, reason: PassReason) -> Result<BlobSource, ApiError> {
        tracing::info!(%reason, "blob streamed from the upstream without caching");
        (ctx.outcome, ctx.tier) = (Outcome::Bypass, Some(Tier::Upstream));
        let metrics = Arc::clone(&self.state.metrics);
        let direct = DirectReader::open(self.upstream, self.repository, self.digest, metrics).await;
        direct.map(|d| BlobSource::Direct(Box::new(d))).map_err(|e| ApiError::from_fill(&e))
    }
}

/// The outcome and serving tier of a state. A request that finds the fill already verified is
/// served from local, verified bytes: a hit.
fn classify(state: &State) -> (Outcome, Option<Tier>) {
    match state {
        State::Memory(_) => (Outcome::Hit, Some(Tier::Memory)),
        State::File(..) => (Outcome::Hit, Some(Tier::Disk)),
        State::Join(fill) if fill.is_verified() => (Outcome::Hit, Some(Tier::Disk)),
        State::Join(_) => (Outcome::Coalesced, Some(Tier::Upstream)),
        State::Fill(_) => (Outcome::Miss, Some(Tier::Upstream)),
        State::PassThrough(_) => (Outcome::Bypass, Some(Tier::Upstream)),
    }
}

/// Whether a fill failed because its upstream refused the request (a 4xx).
fn refused(e: &FillError) -> bool {
    matches!(e, FillError::Upstream(u) if u.status().is_some_and(|s| s.is_client_error()))
}

/// The memory tier's bytes of an entry, if it holds them intact.
fn in_memory(state: &EdgeState, key: EntryKey) -> Option<Bytes> {
    state.memory.get(&key).filter(|o| memory_intact(state, key, &o.bytes)).map(|o| o.bytes)
}

/// hit(memory) for a request that is answered without waiting (`direct.rs`): the bytes, and the
/// disk copy's recency touched as `hit_memory` does. The caller has checked the hold.
pub(super) fn memory_hit(state: &EdgeState, digest: Digest) -> Option<Bytes> {
    let key = EntryKey::blob(digest);
    let bytes = in_memory(state, key)?;
    state.fills.store().index().touch(&key);
    Some(bytes)
}

/// With `verify_on_serve`, whether a memory entry still hashes to its digest (if not, it is
/// dropped and the request goes on to the disk).
fn memory_intact(state: &EdgeState, key: EntryKey, bytes: &Bytes) -> bool {
    if !state.config.cache.verify_on_serve || Digest::of_with(key.digest.kind(), bytes) == key.digest {
        return true;
    }
    tracing::error!(digest = %key.digest, "memory entry does not hash to its digest: dropped");
    state.metrics.damaged_entries.inc();
    state.memory.remove(&key);
    false
}

/// A disk hit small enough for the memory tier is read whole and kept there; later requests
/// are served from memory. With `verify_on_serve`, disk hits are hashed as they are served and
/// the bytes read for the memory tier are checked first.
async fn promote(state: &Arc<EdgeState>, key: EntryKey, file: Arc<File>, size: u64) -> BlobSource {
    let store = Arc::clone(state.fills.store());
    let verify = state.config.cache.verify_on_serve;
    let disk = |file, size| match verify {
        true => BlobSource::Disk(DiskReader::verifying(file, size, key, Arc::clone(&store))),
        false => BlobSource::Disk(DiskReader::new(file, size)),
    };
    if !state.memory.admits(size) {
        return disk(file, size);
    }
    // One read into memory per entry at a time: concurrent first hits of a large blob are
    // served from disk while it is read, not each read whole.
    let Some(_turn) = state.memory.promotion(key) else {
        return disk(file, size);
    };
    let read = Arc::clone(&file);
    let bytes = blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; size as usize];
        read.read_exact_at(&mut buf, 0)?;
        Ok(Bytes::from(buf))
    })
    .await;
    match bytes {
        Ok(bytes) if memory_intact(state, key, &bytes) => {
            state.memory.insert(key, MemoryObject { bytes: bytes.clone(), media_type: None });
            BlobSource::Memory(bytes)
        }
        _ => disk(file, size),
    }
}
