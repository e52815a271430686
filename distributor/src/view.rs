//! The fleet as the page shows it and `GET /api/v1/fleet` returns it: regions → edges with their
//! state and ratios over 5 minutes and 1 hour, each region's hit ratio over the last hour and
//! its most pulled images, prefetch jobs with their progress, recent invalidations.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use berth_shared::protocol::{Action, JobState, PolicyEvent, PullCount};
use serde::Serialize;

use crate::jobs::JobStatus;
use crate::stats::{Counters, Stats, Window};
use crate::store::EdgeRecord;

pub const FIVE_MINUTES_MS: u64 = 5 * 60_000;
pub const HOUR_MS: u64 = 60 * 60_000;
/// Points of a region's hit-ratio chart: one per 5 minutes over the last hour.
pub const CHART_POINTS: usize = 12;
/// Jobs and invalidations listed.
pub const RECENT: usize = 20;

#[derive(Debug, Clone, Serialize)]
pub struct FleetView {
    pub generated_ms: u64,
    pub log_version: u64,
    /// Changes when an edge, region, job, invalidation or top name appears or goes: the page
    /// reloads then, and otherwise updates its values in place.
    pub layout: String,
    pub regions: BTreeMap<String, RegionView>,
    pub jobs: Vec<JobView>,
    pub invalidations: Vec<InvalidationView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionView {
    pub edges: BTreeMap<String, EdgeView>,
    pub window_5m: Window,
    pub window_1h: Window,
    /// Hit ratio per 5 minutes over the last hour, oldest first (none: nothing asked).
    pub hit_ratio_chart: Vec<Option<f64>>,
    /// Most pulled repositories over the last hour.
    pub top: Vec<PullCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EdgeView {
    /// `ready`, `draining` (shutting down or drained by an operator), `stale` (no report for
    /// `stale_after`), or `not_ready` (its `/readyz` gives the reason).
    pub state: &'static str,
    pub reason: Option<String>,
    pub version: String,
    pub applied_version: u64,
    /// Policy versions the edge has not applied yet.
    pub lag: u64,
    pub last_report_seconds: f64,
    pub window_5m: Window,
    pub window_1h: Window,
    pub cache_used_bytes: u64,
    pub cache_max_bytes: u64,
    /// `cache_used_bytes / cache_max_bytes`.
    pub disk_ratio: Option<f64>,
    pub fills_in_flight: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobView {
    pub id: String,
    pub state: JobState,
    pub images: Vec<String>,
    pub regions: Vec<String>,
    pub blobs_done: u64,
    pub blobs_total: u64,
    /// `blobs_done / blobs_total` (1 for a done job without blobs, 0 before any edge counted).
    pub progress: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InvalidationView {
    pub version: u64,
    /// `tag`, `purge` (a digest), `quarantine`, `lift`.
    pub kind: &'static str,
    pub target: String,
    pub regions: Vec<String>,
}

/// What the view is built from.
pub struct Inputs<'a> {
    pub now_ms: u64,
    pub log_version: u64,
    pub stale_after_ms: u64,
    pub edges: &'a [EdgeRecord],
    pub stats: &'a Stats,
    pub jobs: Vec<JobStatus>,
    pub events: &'a [PolicyEvent],
    pub top: BTreeMap<String, Vec<PullCount>>,
}

fn edge_state(edge: &EdgeRecord, now_ms: u64, stale_after_ms: u64) -> (&'static str, Option<String>) {
    if now_ms.saturating_sub(edge.last_seen_ms) > stale_after_ms {
        return ("stale", Some(format!("no report for {}s", now_ms.saturating_sub(edge.last_seen_ms) / 1000)));
    }
    match edge.report.readiness.as_deref() {
        None | Some("ready") => ("ready", None),
        Some(r) if r.starts_with("draining") || r.starts_with("drained") => ("draining", Some(r.to_owned())),
        Some(r) => ("not_ready", Some(r.to_owned())),
    }
}

fn edge_view(i: &Inputs, edge: &EdgeRecord) -> EdgeView {
    let (state, reason) = edge_state(edge, i.now_ms, i.stale_after_ms);
    let window = |ms| Window::from(i.stats.window(&edge.id, i.now_ms, ms).unwrap_or_default());
    EdgeView {
        state,
        reason,
        version: edge.version.clone(),
        applied_version: edge.report.applied_version,
        lag: i.log_version.saturating_sub(edge.report.applied_version),
        last_report_seconds: i.now_ms.saturating_sub(edge.last_seen_ms) as f64 / 1000.0,
        window_5m: window(FIVE_MINUTES_MS),
        window_1h: window(HOUR_MS),
        cache_used_bytes: edge.report.cache_used_bytes,
        cache_max_bytes: edge.report.cache_max_bytes,
        disk_ratio: (edge.report.cache_max_bytes > 0)
            .then(|| edge.report.cache_used_bytes as f64 / edge.report.cache_max_bytes as f64),
        fills_in_flight: edge.report.fills_in_flight,
    }
}

fn region_view(i: &Inputs, name: &str, edges: Vec<&EdgeRecord>) -> RegionView {
    let ids: Vec<&str> = edges.iter().map(|e| e.id.as_str()).collect();
    let sum = |ms| {
        let mut c = Counters::default();
        for id in &ids {
            c.add(&i.stats.window(id, i.now_ms, ms).unwrap_or_default());
        }
        Window::from(c)
    };
    let points: Vec<u64> =
        (0..=CHART_POINTS as u64).map(|k| i.now_ms.saturating_sub(HOUR_MS) + k * FIVE_MINUTES_MS).collect();
    RegionView {
        edges: edges.iter().map(|e| (e.id.clone(), edge_view(i, e))).collect(),
        window_5m: sum(FIVE_MINUTES_MS),
        window_1h: sum(HOUR_MS),
        hit_ratio_chart: i.stats.chart(&ids, &points),
        top: i.top.get(name).cloned().unwrap_or_default(),
    }
}

fn invalidation(e: &PolicyEvent) -> Option<InvalidationView> {
    let (kind, target, regions) = match &e.action {
        Action::Invalidate(inv) => match (&inv.tag, &inv.digest) {
            (_, Some(d)) => ("purge", format!("{}@{d}", inv.repository), inv.regions.clone()),
            (Some(t), None) => ("tag", format!("{}:{t}", inv.repository), inv.regions.clone()),
            (None, None) => ("tag", inv.repository.clone(), inv.regions.clone()),
        },
        Action::Quarantine(q) => (if q.lifted { "lift" } else { "quarantine" }, q.digest.to_string(), vec![]),
        _ => return None,
    };
    Some(InvalidationView { version: e.version, kind, target, regions })
}

fn job_view(j: JobStatus) -> JobView {
    let progress = match (j.blobs_total, j.state) {
        (0, JobState::Done) => 1.0,
        (0, _) => 0.0,
        (total, _) => j.blobs_done as f64 / total as f64,
    };
    JobView {
        id: j.id,
        state: j.state,
        images: j.images,
        regions: j.regions,
        blobs_done: j.blobs_done,
        blobs_total: j.blobs_total,
        progress,
    }
}

pub fn build(i: Inputs) -> FleetView {
    let mut by_region: BTreeMap<&str, Vec<&EdgeRecord>> = BTreeMap::new();
    for e in i.edges {
        by_region.entry(e.region.as_str()).or_default().push(e);
    }
    let regions: BTreeMap<String, RegionView> =
        by_region.into_iter().map(|(name, edges)| (name.to_owned(), region_view(&i, name, edges))).collect();
    let mut jobs = i.jobs.clone();
    jobs.sort_by_key(|j| std::cmp::Reverse(j.version));
    jobs.truncate(RECENT);
    let jobs: Vec<JobView> = jobs.into_iter().map(job_view).collect();
    let mut invalidations: Vec<InvalidationView> = i.events.iter().rev().filter_map(invalidation).collect();
    invalidations.truncate(RECENT);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, r) in &regions {
        // The top names as a set and their number: a change of rank is shown in place.
        let top: std::collections::BTreeSet<_> = r.top.iter().map(|p| &p.name).collect();
        (name, r.edges.keys().collect::<Vec<_>>(), top).hash(&mut h);
    }
    (jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), invalidations.iter().map(|v| v.version).collect::<Vec<_>>())
        .hash(&mut h);
    FleetView {
        generated_ms: i.now_ms,
        log_version: i.log_version,
        layout: format!("{:016x}", h.finish()),
        regions,
        jobs,
        invalidations,
    }
}
