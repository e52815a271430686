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

    /// The top names counted since the last call, and the counts to put back if the report
    /// carrying them is not delivered.
    pub fn take(&self) -> (Pulls, Taken) {
        let t = std::mem::take(&mut *self.tables.lock());
        let pulls = Pulls { repositories: top(t.repositories.clone()), manifests: top(t.manifests.clone()) };
        (pulls, Taken(t))
    }

    /// Puts back what [`take`](Self::take) took (the report was not delivered).
    pub fn restore(&self, taken: Taken) {
        let mut t = self.tables.lock();
        for (name, n) in taken.0.repositories {
            bump(&mut t.repositories, &name, n);
        }
        for (name, n) in taken.0.manifests {
            bump(&mut t.manifests, &name, n);
        }
    }
}

/// Counts taken for a report.
pub struct Taken(Tables);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_count_by_repository_and_manifest_and_restore_an_undelivered_report() {
        let c = PullCounter::default();
        c.record("docker.io", "library/nginx", "1.27");
        c.record("docker.io", "library/nginx", "sha256:ab");
        c.record("ghcr.io", "org/app", "v2");
        let (pulls, taken) = c.take();
        assert_eq!(pulls.repositories[0], PullCount { name: "docker.io/library/nginx".into(), count: 2 });
        assert_eq!(pulls.repositories[1], PullCount { name: "ghcr.io/org/app".into(), count: 1 });
        let names: Vec<_> = pulls.manifests.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["docker.io/library/nginx:1.27", "docker.io/library/nginx@sha256:ab", "ghcr.io/org/app:v2"]);
        assert!(c.take().0.is_empty(), "taken counts are gone");
        c.restore(taken);
        c.record("ghcr.io", "org/app", "v2");
        let (pulls, _) = c.take();
        assert_eq!(pulls.repositories[0].count, 2);
        assert_eq!(pulls.repositories[1], PullCount { name: "ghcr.io/org/app".into(), count: 2 });
    }

    #[test]
    fn should_bound_names_and_report_the_top_k() {
        let c = PullCounter::default();
        for i in 0..MAX_NAMES + 10 {
            c.record("r", &format!("repo{i}"), "t");
        }
        c.record("r", "repo7", "t");
        let (pulls, taken) = c.take();
        assert_eq!(taken.0.repositories.len(), MAX_NAMES, "names beyond the bound are not counted");
        assert_eq!(pulls.repositories.len(), PULLS_TOP_K);
        assert_eq!(pulls.repositories[0], PullCount { name: "r/repo7".into(), count: 2 });
    }
}
