//! Policy from the distributor: the watch stream, applying invalidations and prefetch orders in
//! version order, the applied version kept in the cache folder, and reports back.
//! The same prefetch and purge are offered on the admin port for an edge without a distributor.

pub mod apply;
pub mod link;
pub mod prefetch;
pub mod quarantine;
pub mod report;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::state::EdgeState;

pub use apply::ApplyError;
pub use prefetch::PrefetchJobs;

/// The edge's policy state.
pub struct Policy {
    pub state: Arc<EdgeState>,
    pub prefetch: Arc<PrefetchJobs>,
    applied: AtomicU64,
    version_file: PathBuf,
}

impl Policy {
    /// Loads the applied version from the cache folder.
    pub fn new(state: Arc<EdgeState>) -> Arc<Self> {
        let version_file = state.config.cache.dir.join("policy-version");
        let applied = std::fs::read_to_string(&version_file).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let prefetch = PrefetchJobs::new(Arc::clone(&state));
        state.metrics.policy_version.set(applied as i64);
        Arc::new(Policy { state, prefetch, applied: AtomicU64::new(applied), version_file })
    }

    /// The last policy version applied (persisted across restarts).
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Records `version` as applied, in memory and (atomically, by rename) on disk.
    fn set_applied(&self, version: u64) {
        if version <= self.applied() {
            return;
        }
        self.store_applied(version);
    }

    /// An event this edge cannot apply: its version still counts as applied, in order.
    pub fn skip_event(&self, version: u64) {
        self.set_applied(version);
    }

    /// The distributor's log restarted below this edge's version: start over from 0.
    pub fn reset_applied(&self) {
        self.store_applied(0);
    }

    fn store_applied(&self, version: u64) {
        self.applied.store(version, Ordering::SeqCst);
        self.state.metrics.policy_version.set(version as i64);
        if let Err(e) = write_atomically(&self.version_file, format!("{version}\n").as_bytes()) {
            tracing::warn!(error = %e, version, "cannot persist the applied policy version");
        }
    }
}

/// Writes a small file by temp file, fsync and rename: after a crash it holds the old or the new
/// content, never a mix.
pub(crate) fn write_atomically(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(content)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}
