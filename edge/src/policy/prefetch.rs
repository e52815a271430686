//! Prefetch jobs on this edge: resolve each image through its upstream (index → platform
//! manifests → config and layers) and fill every blob through the same single-flight fills that
//! client pulls use, a few at a time. Progress is kept for the reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use berth_shared::manifest::Manifest;
use berth_shared::protocol::{JobState, PrefetchOrder, PrefetchProgress};
use berth_shared::{Digest, ImageReference, Reference, RepositoryName};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::cache::fill::Lookup;
use crate::cache::EntryKey;
use crate::registry::{AcceptList, ApiError};
use crate::state::EdgeState;
use crate::upstream::Upstream;

/// Blobs filled at once per job.
const CONCURRENCY: usize = 4;
/// Finished jobs remembered for reports.
const KEEP_FINISHED: usize = 200;

/// The jobs this edge knows, and the queue of orders to start.
pub struct PrefetchJobs {
    state: Arc<EdgeState>,
    jobs: Mutex<BTreeMap<String, PrefetchProgress>>,
    /// Orders not finished yet: kept on disk with `jobs`, so a restart carries them out.
    orders: Mutex<BTreeMap<String, PrefetchOrder>>,
    queue: mpsc::UnboundedSender<PrefetchOrder>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<PrefetchOrder>>>,
    changed: tokio::sync::Notify,
    save: tokio::sync::Notify,
    file: std::path::PathBuf,
    /// `max_prefetch_orders`: orders running at once; the others wait as `pending`.
    running: Arc<tokio::sync::Semaphore>,
}

/// What `<cache.dir>/prefetch-jobs.json` holds.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    jobs: Vec<PrefetchProgress>,
    pending: Vec<PrefetchOrder>,
}

impl PrefetchJobs {
    /// Loads the jobs of the previous run: finished ones are remembered, unfinished ones start
    /// again.
    pub fn new(state: Arc<EdgeState>) -> Arc<Self> {
        let (queue, receiver) = mpsc::unbounded_channel();
        let file = state.config.cache.dir.join("prefetch-jobs.json");
        let saved: Saved = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        let running = Arc::new(tokio::sync::Semaphore::new(state.config.server.max_prefetch_orders.max(1)));
        let jobs = Arc::new(PrefetchJobs {
            state,
            running,
            jobs: Mutex::new(saved.jobs.into_iter().map(|p| (p.job.clone(), p)).collect()),
            orders: Mutex::new(BTreeMap::new()),
            queue,
            receiver: Mutex::new(Some(receiver)),
            changed: tokio::sync::Notify::new(),
            save: tokio::sync::Notify::new(),
            file,
        });
        for order in saved.pending {
            jobs.jobs.lock().remove(&order.job);
            jobs.enqueue(order);
        }
        jobs
    }

    /// Queues an order (started by `run`); a job already known is not started again.
    pub fn enqueue(&self, order: PrefetchOrder) {
        let mut jobs = self.jobs.lock();
        if jobs.contains_key(&order.job) {
            return;
        }
        jobs.insert(order.job.clone(), progress(&order.job, JobState::Pending));
        self.orders.lock().insert(order.job.clone(), order.clone());
        let _ = self.queue.send(order);
        self.save.notify_one();
    }

    /// Writes the jobs and the unfinished orders (on the blocking pool).
    async fn persist(&self) {
        let saved = Saved { jobs: self.progress(), pending: self.orders.lock().values().cloned().collect() };
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&saved).map_err(std::io::Error::other)?;
            super::write_atomically(&file, &bytes)
        })
        .await;
        if let Ok(Err(e)) = written {
            tracing::warn!(error = %e, "cannot save prefetch jobs");
        }
    }

    /// Every job's progress.
    pub fn progress(&self) -> Vec<PrefetchProgress> {
        self.jobs.lock().values().cloned().collect()
    }

    /// Brings the prefetch gauges up to date (before `/metrics`).
    pub fn refresh_gauges(&self) {
        let m = &self.state.metrics;
        let (mut by_state, mut total, mut done) = ([0i64; 4], 0, 0);
        for p in self.jobs.lock().values() {
            let i = match p.state {
                JobState::Pending => 0,
                JobState::Running => 1,
                JobState::Done => 2,
                JobState::Failed => 3,
            };
            by_state[i] += 1;
            if i < 2 {
                total += p.blobs_total as i64;
                done += p.blobs_done as i64;
            }
        }
        for (state, n) in ["pending", "running", "done", "failed"].iter().zip(by_state) {
            m.prefetch_jobs.with_label_values(&[state]).set(n);
        }
        m.prefetch_blobs.with_label_values(&["total"]).set(total);
        m.prefetch_blobs.with_label_values(&["done"]).set(done);
    }

    pub fn get(&self, job: &str) -> Option<PrefetchProgress> {
        self.jobs.lock().get(job).cloned()
    }

    /// Resolves when some job's state changed.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Starts queued orders as they come; runs until the queue closes.
    pub async fn run(self: Arc<Self>) {
        let Some(mut receiver) = self.receiver.lock().take() else { return };
        loop {
            tokio::select! {
                order = receiver.recv() => match order {
                    Some(order) => {
                        let jobs = Arc::clone(&self);
                        tokio::spawn(async move { jobs.run_job(order).await });
                    }
                    None => return,
                },
                _ = self.save.notified() => self.persist().await,
            }
        }
    }

    fn update(&self, job: &str, f: impl FnOnce(&mut PrefetchProgress)) {
        let mut jobs = self.jobs.lock();
        if let Some(p) = jobs.get_mut(job) {
            f(p);
        }
        if jobs.len() > KEEP_FINISHED {
            let finished: Vec<String> = jobs
                .iter()
                .filter(|(_, p)| matches!(p.state, JobState::Done | JobState::Failed))
                .map(|(k, _)| k.clone())
                .take(jobs.len() - KEEP_FINISHED)
                .collect();
            for k in finished {
                jobs.remove(&k);
            }
        }
    }

    async fn run_job(self: Arc<Self>, order: PrefetchOrder) {
        let Ok(_running) = Arc::clone(&self.running).acquire_owned().await else { return };
        let job = order.job.clone();
        self.update(&job, |p| p.state = JobState::Running);
        self.changed.notify_waiters();
        tracing::info!(%job, images = ?order.images, "prefetch started");
        let mut blobs: BTreeMap<Digest, (Arc<Upstream>, RepositoryName, u64)> = BTreeMap::new();
        for image in &order.images {
            match self.resolve(image, &order.platforms).await {
                Ok(found) => {
                    for (digest, target) in found {
                        blobs.entry(digest).or_insert(target);
                    }
                }
                Err(e) => self.update(&job, |p| p.errors.push(format!("{image}: {e}"))),
            }
        }
        self.update(&job, |p| p.blobs_total = blobs.len() as u64);
        let results = futures_util::stream::iter(blobs)
            .map(|(digest, (upstream, repo, size))| {
                let jobs = Arc::clone(&self);
                async move { (digest, size, jobs.ensure_blob(&upstream, &repo, digest).await) }
            })
            .buffer_unordered(CONCURRENCY);
        futures_util::pin_mut!(results);
        while let Some((digest, size, result)) = results.next().await {
            self.update(&job, |p| match result {
                Ok(()) => {
                    p.blobs_done += 1;
                    p.bytes += size;
                    self.state.metrics.prefetched_bytes.inc_by(size);
                }
                Err(e) => p.errors.push(format!("{digest}: {e}")),
            });
        }
        self.update(&job, |p| p.state = if p.errors.is_empty() { JobState::Done } else { JobState::Failed });
        self.orders.lock().remove(&job);
        self.save.notify_one();
        self.changed.notify_waiters();
        let state = self.get(&job).map(|p| p.state);
        tracing::info!(%job, ?state, "prefetch finished");
    }

    /// The blobs of an image (for the wanted platforms), with where to fetch them.
    async fn resolve(
        &self,
        image: &str,
        platforms: &[String],
    ) -> Result<Vec<(Digest, (Arc<Upstream>, RepositoryName, u64))>, String> {
        let reference: ImageReference = image.parse().map_err(|e: berth_shared::ImageReferenceError| e.to_string())?;
        let live = self.state.live();
        let (index, repository) = live
            .router
            .resolve_image(reference.registry.as_deref(), &reference.repository)
            .map_err(|e| e.to_string())?;
        let upstream = live.upstreams.get(index).cloned().ok_or("upstream table out of sync")?;
        let manifests = &self.state.manifests;
        let any = AcceptList::default();
        let manifest_error = |e: crate::cache::ManifestError| describe(&ApiError::from_manifest(&e));
        let top = match &reference.reference {
            Reference::Digest(d) => *d,
            Reference::Tag(tag) => {
                manifests.resolve_tag(&upstream, &repository, tag, &any).await.map_err(manifest_error)?.0.digest
            }
        };
        let mut pending = vec![top];
        let mut seen = BTreeSet::new();
        let mut blobs = Vec::new();
        while let Some(digest) = pending.pop() {
            if !seen.insert(digest) {
                continue;
            }
            let (stored, _) =
                manifests.by_digest(&upstream, &repository, digest, &any).await.map_err(manifest_error)?;
            match Manifest::parse(&stored.bytes).map_err(|e| format!("{digest}: {e}"))? {
                Manifest::Index { manifests } => pending.extend(
                    manifests
                        .iter()
                        .filter(|m| {
                            platforms.is_empty()
                                || m.platform.as_ref().is_some_and(|p| platforms.iter().any(|f| p.matches(f)))
                        })
                        .map(|m| m.digest),
                ),
                Manifest::Image { config, layers } => {
                    for d in std::iter::once(config).chain(layers) {
                        blobs.push((d.digest, (Arc::clone(&upstream), repository.clone(), d.size)));
                    }
                }
            }
        }
        Ok(blobs)
    }

    /// Makes sure a blob is verified on disk, filling it (or joining a fill) if needed.
    async fn ensure_blob(
        &self,
        upstream: &Arc<Upstream>,
        repository: &RepositoryName,
        digest: Digest,
    ) -> Result<(), String> {
        if let Some(reason) = self.state.quarantine.reason(&digest) {
            return Err(format!("{digest} is quarantined: {reason}"));
        }
        let fills = &self.state.fills;
        // A joined fill may end without a copy here: a client's fill of a blob this edge left
        // to its owner in the region. The blob is then filled again, as a prefetch, which keeps
        // it (from the owner, which has it now).
        for _ in 0..3 {
            let lookup = fills
                .lookup(upstream, repository, digest, crate::cache::fill::Asker::Prefetch, false)
                .await
                .map_err(|e| describe(&ApiError::from_fill(&e)))?;
            let (fill, joined) = match lookup {
                Lookup::File(..) => return Ok(()),
                Lookup::PassThrough(reason) => return Err(format!("{reason}: not cached")),
                Lookup::Join(fill) => (fill, true),
                Lookup::Fill(fill) => (fill, false),
            };
            fill.ended().await.map_err(|e| describe(&ApiError::from_fill(&e)))?;
            // A fill that stopped caching (over the budget, a disk fault) would stop again.
            if let Some(reason) = fill.pass_reason() {
                return Err(format!("{reason}: not cached"));
            }
            if fills.store().contains(&EntryKey::blob(digest)).is_some() {
                return Ok(());
            }
            if !joined {
                break;
            }
        }
        Err("fill finished without a cached copy".into())
    }
}

fn progress(job: &str, state: JobState) -> PrefetchProgress {
    PrefetchProgress { job: job.to_owned(), state, blobs_total: 0, blobs_done: 0, bytes: 0, errors: Vec::new() }
}

/// An error as a job reports it: the OCI code and message.
fn describe(e: &ApiError) -> String {
    format!("{} ({}): {}", e.code, e.status.as_u16(), e.message)
}
