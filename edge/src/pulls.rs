//! Pull counts for the distributor's analytics: every manifest request answered `200`, by
//! repository and by manifest as requested, counted between two reports. Bounded: at most
//! [`MAX_NAMES`] distinct names are counted per interval (a name first seen once the table is
//! full is not counted), and a report carries the top [`PULLS_TOP_K`] of each.

use std::collections::HashMap;

use berth_shared::protocol::{PullCount, Pulls, PULLS_TOP_K};
use parking_lot::Mutex;

/// Distinct names counted per interval, per table.
pub const MAX_NAMES: usize = 10_000;

#[derive(Default)]
struct Tables {
    repositories: HashMap<String, u64>,
    manifests: HashMap<String, u64>,
}

/// Counts since the last report was delivered.
#[derive(Default)]
pub struct PullCounter {
    tables: Mutex<Tables>,
}

fn bump(table: &mut HashMap<String, u64>, name: &str, by: u64) {
    if let Some(n) = table.get_mut(name) {
        *n += by;
    } else if table.len() < MAX_NAMES {
        table.insert(name.to_owned(), by);
    }
}

fn top(table: HashMap<String, u64>) -> Vec<PullCount> {
    let mut all: Vec<PullCount> = table.into_iter().map(|(name, count)| PullCount { name, count }).collect();
    all.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
    all.truncate(PULLS_TOP_K);
    all
}

impl PullCounter {
    /// One manifest request answered 200: `registry` is the upstream's name, `reference` a tag
    /// or a digest.
    pub fn record(&self, registry: &str, repository: &str, reference: &str) {
        let repo = format!("{registry}/{repository}");
        let separator = if reference.contains(':') { '@' } else { ':' };
        let manifest = format!("{repo}{separator}{reference}");
        let mut t = self.tables.lock();
        bump(&mut t.repositories, &repo, 1);
        bump(&mut t.manifests, &manifest, 1);
    }

    /// The top names counted since the last call, as a new batch (batch `0` when nothing was
    /// counted). The caller sends it until the distributor acknowledges it.
    pub fn take(&self) -> Pulls {
        let t = std::mem::take(&mut *self.tables.lock());
        if t.repositories.is_empty() && t.manifests.is_empty() {
            return Pulls::default();
        }
        Pulls { batch: rand::random::<u64>().max(1), repositories: top(t.repositories), manifests: top(t.manifests) }
    }

    /// Names being counted now (bounded by [`MAX_NAMES`]).
    #[cfg(test)]
    fn names(&self) -> usize {
        self.tables.lock().repositories.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_count_by_repository_and_manifest_in_batches() {
        let c = PullCounter::default();
        c.record("docker.io", "library/nginx", "1.27");
        c.record("docker.io", "library/nginx", "sha256:ab");
        c.record("ghcr.io", "org/app", "v2");
        let pulls = c.take();
        assert_ne!(pulls.batch, 0, "a batch of counts has an id");
        assert_eq!(pulls.repositories[0], PullCount { name: "docker.io/library/nginx".into(), count: 2 });
        assert_eq!(pulls.repositories[1], PullCount { name: "ghcr.io/org/app".into(), count: 1 });
        let names: Vec<_> = pulls.manifests.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/nginx:1.27", "docker.io/library/nginx@sha256:ab", "ghcr.io/org/app:v2"]);
        assert!(c.take().is_empty(), "taken counts are gone: an empty batch has no id");
        c.record("ghcr.io", "org/app", "v2");
        let next = c.take();
        assert_ne!(next.batch, pulls.batch, "the next batch has another id");
        assert_eq!(next.repositories, [PullCount { name: "ghcr.io/org/app".into(), count: 1 }]);
    }

    #[test]
    fn should_bound_names_and_report_the_top_k() {
        let c = PullCounter::default();
        for i in 0..MAX_NAMES + 10 {
            c.record("r", &format!("repo{i}"), "t");
        }
        c.record("r", "repo7", "t");
        assert_eq!(c.names(), MAX_NAMES, "names beyond the bound are not counted");
        let pulls = c.take();
        assert_eq!(pulls.repositories.len(), PULLS_TOP_K);
        assert_eq!(pulls.repositories[0], PullCount { name: "r/repo7".into(), count: 2 });
    }
}
