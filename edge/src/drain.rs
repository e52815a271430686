//! Readiness and drain: the one signal GeoDNS and anycast follow.
//!
//! An edge is taken out of rotation by SIGTERM (then it exits) or by an operator (the admin
//! API's `POST /api/v1/drain`, or a drain order from the distributor; it stays up, drained, until
//! undrained; the state is kept in the cache folder across restarts). Either way `/readyz` turns
//! 503 at once; the pull listeners keep taking new requests for `drain_period`, so DNS answers
//! and BGP routes move first; then new connections are closed as they arrive and kept-alive ones
//! after their current response. On SIGTERM the process exits as soon as the last request in
//! flight ends (at most `grace_period` later).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The drain state of an edge.
pub struct Drain {
    /// SIGTERM received: shutting down.
    shutting_down: AtomicBool,
    /// Drained by an operator (kept in `file`).
    drained: AtomicBool,
    /// New connections are refused, kept-alive ones closed after their response.
    closing: AtomicBool,
    /// Requests being answered now.
    in_flight: Arc<AtomicUsize>,
    /// Bumped by every drain and undrain, so a pending close of an earlier drain is dropped.
    generation: AtomicU64,
    period: Duration,
    file: PathBuf,
    started: Instant,
    /// Milliseconds after `started` of the last word from the distributor.
    last_contact_ms: AtomicU64,
    max_staleness: Option<Duration>,
}

/// Counts one request in flight while it lives.
pub struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// `dir`: the cache folder (where an operator drain is kept).
    pub fn load(dir: &std::path::Path, period: Duration, max_staleness: Option<Duration>) -> Arc<Self> {
        let file = dir.join("drained");
        let drained = file.exists();
        if drained {
            tracing::warn!("this edge was drained by an operator: not ready until undrained");
        }
        Arc::new(Drain {
            shutting_down: AtomicBool::new(false),
            drained: AtomicBool::new(drained),
            // Drained before the restart: DNS and BGP have moved already.
            closing: AtomicBool::new(drained),
            in_flight: Arc::new(AtomicUsize::new(0)),
            generation: AtomicU64::new(0),
            period,
            file,
            started: Instant::now(),
            last_contact_ms: AtomicU64::new(0),
            max_staleness,
        })
    }

    /// Why the edge should not get traffic, as far as draining and staleness go.
    pub fn reason(&self) -> Option<String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Some("draining: shutting down".into());
        }
        if self.drained.load(Ordering::SeqCst) {
            return Some("drained by an operator".into());
        }
        let limit = self.max_staleness?;
        let silent =
            self.started.elapsed().saturating_sub(Duration::from_millis(self.last_contact_ms.load(Ordering::SeqCst)));
        (silent > limit).then(|| format!("policy stale: no word from the distributor for {}s", silent.as_secs()))
    }

    /// The distributor was heard from (any watch line, keep-alives included).
    pub fn distributor_heard(&self) {
        self.last_contact_ms.store(self.started.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Not ready from now on (a graceful upgrade hands over to a new process).
    pub fn stop_being_ready(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_drained(&self) -> bool {
        self.drained.load(Ordering::SeqCst)
    }

    pub fn request_started(&self) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(&self.in_flight))
    }

    /// An operator drain: not ready now, new connections refused after `drain_period`.
    pub fn drain(self: &Arc<Self>) -> std::io::Result<()> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let already = self.drained.swap(true, Ordering::SeqCst);
        if !already {
            tracing::warn!(period = ?self.period, "drained: not ready; new connections refused after the drain period");
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(this.period).await;
            if this.generation.load(Ordering::SeqCst) == generation && this.drained.load(Ordering::SeqCst) {
                this.closing.store(true, Ordering::SeqCst);
            }
        });
        std::fs::write(&self.file, b"drained by an operator\n")
    }

    /// Back in rotation.
    pub fn undrain(&self) -> std::io::Result<()> {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.drained.swap(false, Ordering::SeqCst) {
            tracing::warn!("undrained: ready again");
        }
        if !self.shutting_down.load(Ordering::SeqCst) {
            self.closing.store(false, Ordering::SeqCst);
        }
        match std::fs::remove_file(&self.file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// SIGTERM: not ready now; after `drain_period` no new connections; then waits (up to
    /// `grace`) until no request is in flight.
    pub async fn shut_down(&self, grace: Duration) {
        self.shutting_down.store(true, Ordering::SeqCst);
        if !self.closing.load(Ordering::SeqCst) {
            // An edge drained by an operator has been out of rotation already.
            tracing::info!(period = ?self.period, "shutting down: draining first");
            tokio::time::sleep(self.period).await;
        }
        self.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        while self.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.in_flight.load(Ordering::SeqCst);
        tracing::info!(cut = left, "drained: exiting");
    }
}
