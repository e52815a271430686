//! Single-flight blob fills. The first miss for a digest starts one fill; every request for that
//! digest while it runs reads the temp file as it is written. The fill hashes as it writes and
//! publishes by rename only if the sha256 matches; otherwise every reader is failed, the temp
//! file is removed and the next request starts afresh. Fills run as their own tasks: a client
//! that leaves or reads slowly does not affect them.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use berth_shared::DigestHasher;
use berth_shared::{Digest, RepositoryName};
use bytes::Bytes;
use tokio::sync::watch;

use super::disk::DiskStore;
use super::error::{DiskFault, DiskOp, FillError, PassReason};
use super::feed::Feed;
use super::flight::{Flight, Start};
use super::index::Reservation;
use super::{blocking, EntryKey};
use crate::cluster::sources::Sources;
use crate::cluster::Cluster;
use crate::metrics::Metrics;
use crate::upstream::Upstream;

/// Bytes gathered from the upstream before one write to disk.
const WRITE_BATCH: usize = 1 << 20;
/// The most recent bytes of a fill kept in memory for its readers (beyond: read from the file).
pub const RECENT_MAX: usize = 16 << 20;
/// Reservation step for bodies without a Content-Length.
const RESERVE_STEP: u64 = 64 << 20;

/// The progress of a fill, as its readers see it.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Receiving; `written` bytes are in the temp file.
    Streaming {
        total: Option<u64>,
        written: u64,
    },
    /// Every byte written and verified against the digest.
    Verified {
        size: u64,
    },
    /// The blob is not cached (larger than the disk budget): readers fetch it themselves.
    PassThrough(PassReason),
    Failed(FillError),
}

/// One fill in flight.
pub struct Fill {
    pub digest: Digest,
    /// The upstream and repository the fill fetches from (the first requester's).
    pub upstream: String,
    pub repository: RepositoryName,
    /// Requests following this fill now.
    pub(super) readers: std::sync::atomic::AtomicUsize,
    /// A read handle on the temp file; readers use positioned reads, so it is shared.
    pub(super) file: Arc<File>,
    state: watch::Receiver<FillState>,
    /// The last written batches, in order: (offset, bytes), at most [`RECENT_MAX`] bytes. Every
    /// byte here is also in the file (a batch enters once written).
    recent: parking_lot::RwLock<std::collections::VecDeque<(u64, Bytes)>>,
    /// Set while the fill waits to send its request (see [`Fill::go`]).
    held: parking_lot::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// The longest a held fill waits before sending its request (see [`Fill::go`]).
const HOLD_MAX: std::time::Duration = std::time::Duration::from_millis(250);

/// Counts a request (or a prefetch) as a reader of a fill while it lives.
pub(crate) struct Following(pub(crate) Arc<Fill>);

impl Following {
    pub(crate) fn new(fill: Arc<Fill>) -> Self {
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

impl Fill {
    /// Lets a fill started with `hold` send its request (at most [`HOLD_MAX`] after it started,
    /// without this).
    pub fn go(&self) {
        if let Some(go) = self.held.lock().take() {
            let _ = go.send(());
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.clone()
    }

    /// Why the fill stopped caching, if it did (its readers fetch the rest themselves).
    pub fn pass_reason(&self) -> Option<PassReason> {
        match &*self.state.borrow() {
            FillState::PassThrough(reason) => Some(*reason),
            _ => None,
        }
    }

    /// Waits for the fill to end (its blob published, or not), counted among its readers
    /// meanwhile; its error if it failed.
    pub async fn ended(self: &Arc<Self>) -> Result<(), FillError> {
        let _following = Following::new(Arc::clone(self));
        let mut rx = self.subscribe();
        loop {
            if let FillState::Failed(e) = &*rx.borrow_and_update() {
                return Err(e.clone());
            }
            // The fill's task drops its sender once the blob is published (or not).
            if rx.changed().await.is_err() {
                return Ok(());
            }
        }
    }

    /// The blob's size once the upstream announced it (or the fill completed).
    pub fn known_size(&self) -> Option<u64> {
        match &*self.state.borrow() {
            FillState::Streaming { total, .. } => *total,
            FillState::Verified { size } => Some(*size),
            _ => None,
        }
    }

    /// Up to `max` written bytes at `offset` from memory, when the batch holding them is still
    /// among the recent ones (none: read the file).
    pub(super) fn recent_slice(&self, offset: u64, max: usize) -> Option<Bytes> {
        let recent = self.recent.read();
        let i = recent.partition_point(|(start, _)| *start <= offset).checked_sub(1)?;
        let (start, bytes) = &recent[i];
        let skip = usize::try_from(offset - start).ok()?;
        (skip < bytes.len()).then(|| bytes.slice(skip..(skip + max).min(bytes.len())))
    }

    /// Keeps a written batch in memory, dropping the oldest beyond [`RECENT_MAX`].
    fn remember(&self, offset: u64, bytes: Bytes) {
        let mut recent = self.recent.write();
        recent.push_back((offset, bytes));
        let mut held: usize = recent.iter().map(|(_, b)| b.len()).sum();
        while held > RECENT_MAX && recent.len() > 1 {
            if let Some((_, old)) = recent.pop_front() {
                held -= old.len();
            }
        }
    }

    /// Whether every byte is written and verified (publication may still be under way).
    pub fn is_verified(&self) -> bool {
        matches!(&*self.state.borrow(), FillState::Verified { .. })
    }
}

/// What a request for a blob finds past the memory tier: one of the states of the read path
/// (docs/architecture.md, "the blob read path").
pub enum Lookup {
    /// hit(file): verified on disk; a read handle and the size.
    File(Arc<File>, u64),
    /// join(fill): a fill another request started.
    Join(Arc<Fill>),
    /// fill: this request started the fill (a miss).
    Fill(Arc<Fill>),
    /// pass-through: no fill can start; the request streams from the upstream itself.
    PassThrough(PassReason),
}

/// Who asks for a blob: how a fill it starts may wait and where it gets its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// A client: a fill waits up to `queue_timeout` for a slot, and may come from the region's
    /// owner of the blob.
    Client,
    /// Another edge of the region: the fill comes from the origin (a request from a peer is
    /// never sent to another).
    Peer,
    /// A prefetch job: waits as long as it takes for a slot; the blob is kept here.
    Prefetch,
}

/// The fills in flight, by digest: the single-flight table of blob fetches.
pub struct Fills {
    store: Arc<DiskStore>,
    metrics: Arc<Metrics>,
    flight: Flight<Digest, Arc<Fill>>,
    /// The other edges of the region, when it is one cache.
    cluster: Option<Arc<Cluster>>,
}

struct FillJob {
    fills: Arc<Fills>,
    fill: Arc<Fill>,
    tx: watch::Sender<FillState>,
    writer: File,
    temp: PathBuf,
    upstream: Arc<Upstream>,
    repository: RepositoryName,
    /// Where the bytes come from: the origin, or the region's owner first.
    sources: Sources,
    /// Whether the verified blob is kept here (not: a blob filled from its owner that is not
    /// popular here).
    keep: bool,
    /// The upstream's fill slot (`max_fills`), held until the fill ends.
    _slot: tokio::sync::OwnedSemaphorePermit,
    /// A held fill sends its request once told to (or after [`HOLD_MAX`]).
    wait: Option<tokio::sync::oneshot::Receiver<()>>,
}

enum Finished {
    Published,
    /// Verified and served, but the disk failed to keep it.
    NotKept,
    /// Larger than the disk budget: not cached.
    OverBudget,
    /// Filled from the region's owner and not popular here: served, left to the owner.
    LeftToOwner,
}

impl Fills {
    pub fn new(store: Arc<DiskStore>, metrics: Arc<Metrics>, cluster: Option<Arc<Cluster>>) -> Arc<Self> {
        Arc::new(Fills { store, metrics, flight: Flight::default(), cluster })
    }

    /// The region, when this edge is one of a cluster.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    pub fn store(&self) -> &Arc<DiskStore> {
        &self.store
    }

    /// The blob from disk, or the fill that is (or now starts) fetching it. Starting a fill takes
    /// one of the upstream's `max_fills` slots: waiting up to `queue_timeout`, or, for a
    /// prefetch, as long as it takes.
    pub async fn lookup(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        digest: Digest,
        asker: Asker,
        hold: bool,
    ) -> Result<Lookup, FillError> {
        let key = EntryKey::blob(digest);
        // Each turn of the loop is a race lost: the blob was published or a fill started between
        // two checks; the next turn finds it.
        loop {
            if let Some(found) = self.find(key).await {
                return Ok(found);
            }
            if self.store.degraded().is_some() {
                return Ok(Lookup::PassThrough(PassReason::DiskDegraded));
            }
            let slot = upstream.fill_slot(asker == Asker::Prefetch).await?;
            if let Some(found) = self.find(key).await {
                // Started (or published) by another request while this one waited for a slot.
                return Ok(found);
            }
            if let Some(started) = self.start(upstream, repository, key, (asker, hold), slot).await {
                return Ok(started);
            }
        }
    }

    /// The blob on disk, or the fill in flight for it.
    async fn find(&self, key: EntryKey) -> Option<Lookup> {
        if let Some((file, size)) = self.store.open_entry(key).await {
            return Some(Lookup::File(file, size));
        }
        self.flight.get(&key.digest).map(Lookup::Join)
    }

    /// Starts a fill and spawns its task; `None` if another request started one (or published
    /// the blob) meanwhile.
    async fn start(
        self: &Arc<Self>,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        key: EntryKey,
        (asker, hold): (Asker, bool),
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<Lookup> {
        // The temp file is made on the blocking pool, outside the table's lock: a slow disk
        // must not stall the workers.
        let store = Arc::clone(&self.store);
        let files = blocking(move || {
            let (temp, writer) = store.create_temp()?;
            let reader = writer.try_clone()?;
            Ok((temp, writer, reader))
        })
        .await;
        let (temp, writer, reader) = match files {
            Ok(files) => files,
            Err(e) => {
                self.store.set_degraded(DiskFault::new(DiskOp::CreateTemp, e).to_string());
                return Some(Lookup::PassThrough(PassReason::DiskDegraded));
            }
        };
        let (tx, rx) = watch::channel(FillState::Connecting);
        let (go, wait) = match hold {
            true => {
                let (go, wait) = tokio::sync::oneshot::channel();
                (Some(go), Some(wait))
            }
            false => (None, None),
        };
        let fill = Arc::new(Fill {
            digest: key.digest,
            file: Arc::new(reader),
            state: rx,
            upstream: upstream.name.clone(),
            repository: repository.clone(),
            readers: Default::default(),
            recent: Default::default(),
            held: parking_lot::Mutex::new(go),
        });
        let published = || self.store.contains(&key).is_some();
        if !matches!(self.flight.start(key.digest, || Arc::clone(&fill), published), Start::Started) {
            let _ = blocking(move || std::fs::remove_file(temp)).await;
            return None;
        }
        let (sources, keep) = self.sources(upstream, repository, key.digest, asker);
        let job = FillJob {
            fills: Arc::clone(self),
            fill: Arc::clone(&fill),
            tx,
            writer,
            temp,
            upstream: Arc::clone(upstream),
            repository: repository.clone(),
            sources,
            keep,
            _slot: slot,
            wait,
        };
        tokio::spawn(job.run());
        Some(Lookup::Fill(fill))
    }

    /// Where a fill gets its bytes, and whether the blob is kept here: the origin, or, in a
    /// region, the blob's owner first (not for a request from a peer: one hop at most).
    fn sources(
        &self,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        digest: Digest,
        asker: Asker,
    ) -> (Sources, bool) {
        let sources = Sources::origin(upstream, repository, digest, &self.metrics);
        match (&self.cluster, asker) {
            (Some(cluster), Asker::Client | Asker::Prefetch) => {
                let plan = cluster.plan(&digest, asker == Asker::Prefetch);
                (sources.through(cluster, plan.peers), plan.keep)
            }
            _ => (sources, true),
        }
    }

    /// The fill in flight for a digest, if any.
    pub fn in_flight_for(&self, digest: &Digest) -> Option<Arc<Fill>> {
        self.flight.get(digest)
    }

    /// How many requests are following the fill of a digest (0 if none runs).
    pub fn readers(&self, digest: &Digest) -> usize {
        self.in_flight_for(digest).map_or(0, |fill| fill.readers.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// Number of fills running.
    pub fn in_flight(&self) -> usize {
        self.flight.len()
    }

    fn finish(&self, fill: &Arc<Fill>) {
        self.flight.end(&fill.digest, |f| Arc::ptr_eq(f, fill));
    }
}

impl FillJob {
    async fn run(mut self) {
        if let Some(wait) = self.wait.take() {
            // A request for a range far into the blob sends its own ranged request first; this
            // fill's request follows once that one is answered, so the two do not share the
            // origin's first milliseconds.
            let _ = tokio::time::timeout(HOLD_MAX, wait).await;
        }
        let metrics = Arc::clone(&self.fills.metrics);
        metrics.fills_in_flight.inc();
        let started = Instant::now();
        let digest = self.fill.digest;
        let span = tracing::info_span!("fill", %digest, repository = %self.repository, upstream = %self.upstream.name);
        let (fills, fill, tx, temp) =
            (Arc::clone(&self.fills), Arc::clone(&self.fill), self.tx.clone(), self.temp.clone());
        let result = tracing::Instrument::instrument(self.fetch(), span.clone()).await;
        let _enter = span.enter();
        match result {
            Ok(Finished::Published) => {
                metrics.fill_seconds.observe(started.elapsed().as_secs_f64());
                tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "fill published");
            }
            Ok(Finished::NotKept) => tracing::warn!("fill served but not cached: the disk failed"),
            Ok(Finished::LeftToOwner) => tracing::info!("filled from the region's owner: served, not kept here"),
            Ok(Finished::OverBudget) => {
                tracing::info!("blob larger than the disk budget: served without caching");
                fills.finish(&fill);
                let _ = tx.send(FillState::PassThrough(PassReason::OverBudget));
            }
            Err(e) => {
                metrics.fill_failures.with_label_values(&[e.reason().as_str()]).inc();
                match &e {
                    FillError::DigestMismatch { .. } => metrics.digest_mismatches.inc(),
                    FillError::Disk(fault) => fills.store.set_degraded(fault.to_string()),
                    _ => {}
                }
                tracing::warn!(error = %e, "fill failed: nothing cached");
                // Out of the table before readers hear of it: a retry starts a new fill.
                fills.finish(&fill);
                let _ = tx.send(FillState::Failed(e));
            }
        }
        let _ = blocking(move || match std::fs::remove_file(&temp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
        fills.finish(&fill);
        metrics.fills_in_flight.dec();
    }

    async fn fetch(self) -> Result<Finished, FillError> {
        // `_slot` lives to the end of the fill: the upstream's fill bound holds while it runs.
        let FillJob { fills, fill, tx, writer, temp, sources, keep, _slot, .. } = self;
        let mut feed = Feed::open(sources, Arc::clone(&fills.metrics)).await?;
        let total = feed.total;
        let mut reservation = match fills.store.reserve_async(total.unwrap_or(RESERVE_STEP)).await {
            Ok(r) => r,
            Err(_) => return Ok(Finished::OverBudget),
        };
        tx.send_replace(FillState::Streaming { total, written: 0 });
        let mut sink = Sink { file: Some(writer), hasher: Some(fill.digest.hasher()), written: 0 };
        while let Some(first) = feed.chunk().await? {
            let mut batch = vec![first];
            let mut batch_len = batch[0].len();
            // Take what has already arrived, without waiting, to write in larger pieces.
            while batch_len < WRITE_BATCH {
                let Some(more) = feed.ready() else { break };
                batch_len += more.len();
                batch.push(more);
            }
            let after = sink.written + batch_len as u64;
            if let Some(total) = total.filter(|t| after > *t) {
                return Err(FillError::TooLong { expected: total });
            }
            if after > reservation.bytes() {
                let more = (after - reservation.bytes()).max(RESERVE_STEP);
                reservation = match fills.store.grow_async(reservation, more).await {
                    Ok(r) => r,
                    Err(_) => return Ok(Finished::OverBudget),
                };
            }
            // One buffer per batch, written to the file and kept for the readers: a joined
            // reader takes its bytes from here rather than reading the file back.
            let joined = match batch.len() {
                1 => batch.swap_remove(0),
                _ => {
                    let mut all = bytes::BytesMut::with_capacity(batch_len);
                    batch.iter().for_each(|b| all.extend_from_slice(b));
                    all.freeze()
                }
            };
            let offset = sink.written;
            sink.write(vec![joined.clone()]).await?;
            fill.remember(offset, joined);
            tx.send_replace(FillState::Streaming { total, written: sink.written });
        }
        let received = sink.written;
        if let Some(expected) = total.filter(|t| *t != received) {
            return Err(FillError::Truncated { expected, received });
        }
        let actual = sink.hasher.take().unwrap_or_default().finish();
        if actual != fill.digest {
            return Err(FillError::DigestMismatch { expected: fill.digest, actual });
        }
        tx.send_replace(FillState::Verified { size: received });
        if feed.used_peer() {
            let kept = if keep { "kept" } else { "not_kept" };
            fills.metrics.peer_fills.with_label_values(&[kept]).inc();
            if !keep {
                return Ok(Finished::LeftToOwner);
            }
        }
        if let Err(e) = publish(&fills.store, sink, temp, fill.digest, received, reservation).await {
            // Every reader already has verified bytes; only the cache entry is lost.
            fills.store.set_degraded(e.to_string());
            return Ok(Finished::NotKept);
        }
        Ok(Finished::Published)
    }
}

/// Syncs and renames the verified temp file into place.
async fn publish(
    store: &Arc<DiskStore>,
    mut sink: Sink,
    temp: PathBuf,
    digest: Digest,
    size: u64,
    reservation: Reservation,
) -> Result<(), FillError> {
    let file = sink.file.take();
    let store = Arc::clone(store);
    blocking(move || {
        if let Some(file) = file {
            file.sync_data()?;
        }
        store.publish(&temp, EntryKey::blob(digest), size, reservation)
    })
    .await
    .map_err(|e| FillError::Disk(DiskFault::new(DiskOp::Publish, e)))
}

/// The temp file and the running hash.
struct Sink {
    file: Option<File>,
    hasher: Option<DigestHasher>,
    written: u64,
}

impl Sink {
    /// Writes and hashes a batch on the blocking pool.
    async fn write(&mut self, batch: Vec<Bytes>) -> Result<(), FillError> {
        let (Some(mut file), Some(mut hasher)) = (self.file.take(), self.hasher.take()) else {
            return Err(FillError::Disk(DiskFault::new(DiskOp::Write, "the writer was lost after an earlier error")));
        };
        let len: usize = batch.iter().map(Bytes::len).sum();
        let (file, hasher) = blocking(move || {
            for piece in &batch {
                file.write_all(piece)?;
                hasher.update(piece);
            }
            Ok((file, hasher))
        })
        .await
        .map_err(|e| FillError::Disk(DiskFault::new(DiskOp::Write, e)))?;
        self.file = Some(file);
        self.hasher = Some(hasher);
        self.written += len as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill() -> Fill {
        let (_tx, rx) = watch::channel(FillState::Connecting);
        Fill {
            digest: Digest::of(b""),
            upstream: "u".into(),
            repository: RepositoryName::parse("r/app").unwrap(),
            readers: Default::default(),
            file: Arc::new(tempfile::tempfile().unwrap()),
            state: rx,
            recent: Default::default(),
            held: Default::default(),
        }
    }

    #[test]
    fn should_serve_recent_batches_from_memory_and_forget_the_oldest() {
        let f = fill();
        let batch = |b: u8| Bytes::from(vec![b; 1 << 20]);
        for i in 0..20u8 {
            f.remember(u64::from(i) << 20, batch(i));
        }
        // 16 MiB kept: batches 4..20.
        assert!(f.recent_slice(0, 10).is_none(), "the oldest batches are read from the file");
        assert!(f.recent_slice((4 << 20) - 1, 10).is_none());
        let piece = f.recent_slice((5 << 20) + 100, 1 << 21).unwrap();
        assert_eq!((piece.len(), piece[0]), ((1 << 20) - 100, 5), "up to the end of its batch");
        assert_eq!(f.recent_slice(19 << 20, 7).unwrap().as_ref(), &[19u8; 7]);
        assert!(f.recent_slice(20 << 20, 1).is_none(), "not written yet");
    }
}
