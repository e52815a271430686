//! Digests in quarantine: refused as manifest or blob (403, with the reason) from the moment
//! the order is applied until it is lifted. The set is kept in the cache folder
//! (`quarantine.json`, written atomically before the order's version counts as applied), so a
//! restart never serves a quarantined digest.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use berth_shared::protocol::QuarantineOrder;
use berth_shared::Digest;
use parking_lot::RwLock;

/// The quarantined digests and why.
pub struct Quarantine {
    reasons: RwLock<HashMap<Digest, String>>,
    file: PathBuf,
}

impl Quarantine {
    /// Loads the set kept in `dir`. A file that cannot be read is reported, and the edge starts
    /// with what it can read (the distributor's next snapshot or events restore the rest).
    pub fn load(dir: &Path) -> Self {
        let file = dir.join("quarantine.json");
        let orders: Vec<QuarantineOrder> = match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::error!(file = %file.display(), error = %e, "quarantine list unreadable");
                Vec::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::error!(file = %file.display(), error = %e, "quarantine list unreadable");
                Vec::new()
            }
        };
        let reasons = orders.into_iter().map(|o| (o.digest, o.reason)).collect();
        Quarantine { reasons: RwLock::new(reasons), file }
    }

    /// Why the digest is quarantined, if it is.
    pub fn reason(&self, digest: &Digest) -> Option<String> {
        if self.reasons.read().is_empty() {
            return None;
        }
        self.reasons.read().get(digest).cloned()
    }

    pub fn len(&self) -> usize {
        self.reasons.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one order and keeps the set on disk.
    pub fn apply(&self, order: &QuarantineOrder) -> std::io::Result<()> {
        {
            let mut reasons = self.reasons.write();
            if order.lifted {
                reasons.remove(&order.digest);
            } else {
                reasons.insert(order.digest, order.reason.clone());
            }
        }
        self.persist()
    }

    /// Replaces the set (a snapshot) and keeps it on disk.
    pub fn replace(&self, orders: &[QuarantineOrder]) -> std::io::Result<()> {
        *self.reasons.write() = orders.iter().filter(|o| !o.lifted).map(|o| (o.digest, o.reason.clone())).collect();
        self.persist()
    }

    fn persist(&self) -> std::io::Result<()> {
        let orders: Vec<QuarantineOrder> = self
            .reasons
            .read()
            .iter()
            .map(|(digest, reason)| QuarantineOrder {
                id: String::new(),
                digest: *digest,
                reason: reason.clone(),
                lifted: false,
            })
            .collect();
        let json = serde_json::to_vec(&orders).map_err(std::io::Error::other)?;
        super::write_atomically(&self.file, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(digest: Digest, lifted: bool) -> QuarantineOrder {
        QuarantineOrder { id: "q".into(), digest, reason: "CVE-2026-1".into(), lifted }
    }

    #[test]
    fn should_keep_the_set_across_a_reload_and_lift() {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of(b"bad");
        let q = Quarantine::load(dir.path());
        assert_eq!(q.reason(&d), None);
        q.apply(&order(d, false)).unwrap();
        assert_eq!(Quarantine::load(dir.path()).reason(&d).as_deref(), Some("CVE-2026-1"));
        q.apply(&order(d, true)).unwrap();
        assert_eq!(Quarantine::load(dir.path()).reason(&d), None);
        q.replace(&[order(d, false)]).unwrap();
        assert_eq!(Quarantine::load(dir.path()).len(), 1);
    }
}
