//! The background scrub: re-hashes cached files at a bounded rate, entries not yet verified since
//! start first, and drops any that no longer hash to their digest (bit rot, tampering).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::disk::DiskStore;

/// Pause between passes when there is nothing (left) to scrub.
const IDLE: Duration = Duration::from_secs(5);

/// Runs until `shutdown` turns true. `rate`: bytes per second (0: the scrub is off).
pub async fn run(store: Arc<DiskStore>, rate: u64, mut shutdown: watch::Receiver<bool>) {
    if rate == 0 {
        return;
    }
    loop {
        let keys = store.index().keys_for_scrub();
        for key in keys {
            if *shutdown.borrow() {
                return;
            }
            let checked = store.verify(key, rate).await;
            store.metrics().scrubbed_entries.inc();
            if let Err(e) = checked {
                tracing::warn!(digest = %key.digest, error = %e, "scrub: cannot read cached file");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(IDLE) => {}
            _ = shutdown.changed() => return,
        }
    }
}
