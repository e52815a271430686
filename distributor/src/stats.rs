//! What the fleet page shows over time: each edge's counters as reported, kept for the last
//! hour (a sample at most every [`SPACING_MS`]), and the ratios over a window computed from the
//! difference between the newest report and the last sample before the window began.
//!
//! Counters count from the edge process's start: when a report's `uptime_seconds` goes down the
//! edge restarted, and its earlier samples are dropped. When no sample is as old as the window,
//! an edge whose uptime fits in the window counts from zero (its whole life is in it); otherwise
//! the window starts at its oldest sample.

use std::collections::{BTreeMap, HashMap, VecDeque};

use berth_shared::protocol::EdgeReport;
use parking_lot::Mutex;
use serde::Serialize;

/// The shortest time between two kept samples.
pub const SPACING_MS: u64 = 15_000;
/// How long samples are kept (the longest window, plus a margin).
pub const KEEP_MS: u64 = 65 * 60_000;

/// The counters the page is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Blob and manifest requests.
    pub requests: u64,
    /// Of those, served without the edge fetching them itself: `hit`, `coalesced`,
    /// `revalidated` (the dashboard's definition).
    pub hits: u64,
    /// Requests of any kind answered with outcome `error`.
    pub errors: u64,
    pub bytes_memory: u64,
    pub bytes_disk: u64,
    pub bytes_upstream: u64,
    /// Bytes the edge read from its upstreams.
    pub origin_bytes: u64,
}

impl Counters {
    pub fn of(report: &EdgeReport) -> Self {
        let mut c = Counters::default();
        // Reported numbers are not trusted to be small: sums saturate.
        for (key, &n) in &report.requests {
            let (kind, outcome) = key.split_once('/').unwrap_or((key, ""));
            if outcome == "error" {
                c.errors = c.errors.saturating_add(n);
            }
            if kind == "blob" || kind == "manifest" {
                c.requests = c.requests.saturating_add(n);
                if matches!(outcome, "hit" | "coalesced" | "revalidated") {
                    c.hits = c.hits.saturating_add(n);
                }
            }
        }
        let tier = |t: &str| report.served_bytes.get(t).copied().unwrap_or(0);
        c.bytes_memory = tier("memory");
        c.bytes_disk = tier("disk");
        c.bytes_upstream = tier("upstream");
        c.origin_bytes = report.upstream_bytes;
        c
    }

    /// `self - earlier`; a counter that went down (a restart the samples missed) counts from 0.
    fn since(&self, earlier: &Counters) -> Counters {
        if self.requests < earlier.requests || self.bytes_upstream < earlier.bytes_upstream {
            return *self;
        }
        Counters {
            requests: self.requests - earlier.requests,
            hits: self.hits.saturating_sub(earlier.hits),
            errors: self.errors.saturating_sub(earlier.errors),
            bytes_memory: self.bytes_memory.saturating_sub(earlier.bytes_memory),
            bytes_disk: self.bytes_disk.saturating_sub(earlier.bytes_disk),
            bytes_upstream: self.bytes_upstream - earlier.bytes_upstream,
            origin_bytes: self.origin_bytes.saturating_sub(earlier.origin_bytes),
        }
    }

    pub fn add(&mut self, o: &Counters) {
        self.requests = self.requests.saturating_add(o.requests);
        self.hits = self.hits.saturating_add(o.hits);
        self.errors = self.errors.saturating_add(o.errors);
        self.bytes_memory = self.bytes_memory.saturating_add(o.bytes_memory);
        self.bytes_disk = self.bytes_disk.saturating_add(o.bytes_disk);
        self.bytes_upstream = self.bytes_upstream.saturating_add(o.bytes_upstream);
        self.origin_bytes = self.origin_bytes.saturating_add(o.origin_bytes);
    }
}

/// Ratios over a window, as the page and `GET /api/v1/fleet` show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Window {
    pub requests: u64,
    pub errors: u64,
    pub bytes_served: u64,
    /// `hits / requests`; none without requests.
    pub hit_ratio: Option<f64>,
    /// Shares of the bytes served, by the tier that served them; none without bytes.
    pub bytes_memory: Option<f64>,
    pub bytes_disk: Option<f64>,
    pub bytes_upstream: Option<f64>,
    /// `1 - origin bytes / bytes served`: the share of the bytes served that the origin did
    /// not send; none without bytes.
    pub origin_offload: Option<f64>,
}

impl From<Counters> for Window {
    fn from(c: Counters) -> Self {
        let served = c.bytes_memory.saturating_add(c.bytes_disk).saturating_add(c.bytes_upstream);
        let share = |n: u64| (served > 0).then(|| n as f64 / served as f64);
        Window {
            requests: c.requests,
            errors: c.errors,
            bytes_served: served,
            hit_ratio: (c.requests > 0).then(|| c.hits as f64 / c.requests as f64),
            bytes_memory: share(c.bytes_memory),
            bytes_disk: share(c.bytes_disk),
            bytes_upstream: share(c.bytes_upstream),
            origin_offload: (served > 0).then(|| (1.0 - c.origin_bytes as f64 / served as f64).max(0.0)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: u64,
    counters: Counters,
}

#[derive(Debug, Default)]
struct EdgeHistory {
    samples: VecDeque<Sample>,
    latest: Option<(Sample, u64)>,
}

/// Every edge's recent counters.
#[derive(Default)]
pub struct Stats {
    edges: Mutex<HashMap<String, EdgeHistory>>,
}

impl Stats {
    /// Takes a report received at `now_ms`.
    pub fn record(&self, report: &EdgeReport, now_ms: u64) {
        let sample = Sample { at_ms: now_ms, counters: Counters::of(report) };
        let mut edges = self.edges.lock();
        let h = edges.entry(report.id.clone()).or_default();
        if h.latest.is_some_and(|(_, uptime)| report.uptime_seconds < uptime) {
            h.samples.clear();
        }
        h.latest = Some((sample, report.uptime_seconds));
        if h.samples.back().is_none_or(|s| now_ms >= s.at_ms + SPACING_MS) {
            h.samples.push_back(sample);
        }
        while h.samples.front().is_some_and(|s| s.at_ms + KEEP_MS < now_ms) {
            h.samples.pop_front();
        }
    }

    /// An edge's counters over the `window_ms` before `now_ms` (none before its first report).
    pub fn window(&self, edge: &str, now_ms: u64, window_ms: u64) -> Option<Counters> {
        let edges = self.edges.lock();
        let h = edges.get(edge)?;
        let (latest, uptime) = h.latest?;
        let start = now_ms.saturating_sub(window_ms);
        let baseline = match h.samples.iter().rev().find(|s| s.at_ms <= start) {
            Some(s) => s.counters,
            None if uptime.saturating_mul(1000) <= window_ms => Counters::default(),
            None => h.samples.front().map(|s| s.counters).unwrap_or_default(),
        };
        Some(latest.counters.since(&baseline))
    }

    /// The hit ratio of several edges between consecutive `points` (Unix ms): each edge's own
    /// difference between its last samples at or before the two points (from zero after a
    /// restart), summed; none where nothing was asked.
    pub fn chart(&self, ids: &[&str], points: &[u64]) -> Vec<Option<f64>> {
        let edges = self.edges.lock();
        let mut sums = vec![Counters::default(); points.len().saturating_sub(1)];
        for id in ids {
            let Some(h) = edges.get(*id) else { continue };
            let at = |p: u64| {
                let latest = h.latest.map(|(s, _)| s).filter(|s| s.at_ms <= p);
                latest.or_else(|| h.samples.iter().rev().find(|s| s.at_ms <= p).copied()).map(|s| s.counters)
            };
            for (i, pair) in points.windows(2).enumerate() {
                if let Some(b) = at(pair[1]) {
                    sums[i].add(&b.since(&at(pair[0]).unwrap_or_default()));
                }
            }
        }
        sums.iter().map(|c| (c.requests > 0).then(|| c.hits.min(c.requests) as f64 / c.requests as f64)).collect()
    }

    /// Forgets edges that are no longer in the fleet.
    pub fn retain(&self, known: &BTreeMap<String, ()>) {
        self.edges.lock().retain(|id, _| known.contains_key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, uptime: u64, hits: u64, misses: u64, memory: u64, upstream: u64) -> EdgeReport {
        EdgeReport {
            id: id.into(),
            uptime_seconds: uptime,
            requests: [("blob/hit".to_owned(), hits), ("blob/miss".to_owned(), misses), ("other/error".into(), 1)]
                .into(),
            served_bytes: [("memory".to_owned(), memory), ("upstream".to_owned(), upstream)].into(),
            upstream_bytes: upstream,
            ..Default::default()
        }
    }

    #[test]
    fn should_compute_windows_from_the_sample_before_the_window() {
        let s = Stats::default();
        let min = 60_000;
        s.record(&report("e", 7200, 10, 10, 0, 100), 0);
        s.record(&report("e", 7260, 20, 10, 300, 100), min);
        s.record(&report("e", 7560, 50, 20, 600, 200), 6 * min);
        let five = s.window("e", 6 * min, 5 * min).unwrap();
        assert_eq!((five.requests, five.hits), (40, 30), "since the sample at minute 1");
        let w = Window::from(five);
        assert_eq!(w.hit_ratio, Some(30.0 / 40.0));
        assert_eq!(w.bytes_memory, Some(300.0 / 400.0));
        assert_eq!(w.origin_offload, Some(0.75));
        let hour = s.window("e", 6 * min, 60 * min).unwrap();
        assert_eq!(hour.requests, 50, "since the sample at minute 0");
        assert!(s.window("other", 0, min).is_none());
    }

    #[test]
    fn should_count_a_young_edge_from_zero_and_start_over_after_a_restart() {
        let s = Stats::default();
        s.record(&report("e", 30, 3, 1, 0, 0), 100_000);
        assert_eq!(s.window("e", 100_000, 300_000).unwrap().requests, 4, "its whole life is in the window");
        s.record(&report("e", 5, 1, 0, 0, 0), 200_000);
        let w = s.window("e", 200_000, 300_000).unwrap();
        assert_eq!((w.requests, w.hits), (1, 1), "restarted: counts from its new start");
    }

    #[test]
    fn should_chart_each_edges_own_difference_between_points() {
        let s = Stats::default();
        s.record(&report("a", 10, 0, 10, 0, 0), 0);
        s.record(&report("b", 10, 5, 5, 0, 0), 0);
        s.record(&report("a", 40, 10, 10, 0, 0), 30_000);
        assert_eq!(s.chart(&["a", "b"], &[0, 30_000]), vec![Some(1.0)]);
        // b restarts with fewer requests while a grows: b counts from its restart, the ratio
        // stays a ratio.
        s.record(&report("b", 5, 2, 0, 0, 0), 40_000);
        s.record(&report("a", 60, 10, 20, 0, 0), 50_000);
        assert_eq!(s.chart(&["a", "b"], &[30_000, 50_000]), vec![Some(2.0 / 12.0)]);
    }
}
