//! Prefetch jobs: what was ordered, and how far each targeted edge has got.

use std::collections::BTreeMap;

use berth_shared::protocol::{Action, JobState};
use serde::{Deserialize, Serialize};

use crate::store::{EdgeRecord, Job};

/// One edge's part of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EdgeJobStatus {
    pub edge: String,
    pub state: JobState,
    pub blobs_total: u64,
    pub blobs_done: u64,
    pub bytes: u64,
    pub errors: Vec<String>,
}

/// One region's part of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegionStatus {
    pub state: JobState,
    pub edges: Vec<EdgeJobStatus>,
}

/// A job with its progress, as `GET /api/v1/prefetch/<id>` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobStatus {
    pub id: String,
    pub state: JobState,
    pub images: Vec<String>,
    pub regions: Vec<String>,
    pub platforms: Vec<String>,
    pub version: u64,
    pub created_ms: u64,
    pub blobs_total: u64,
    pub blobs_done: u64,
    pub bytes: u64,
    pub by_region: BTreeMap<String, RegionStatus>,
}

/// The state of a set of parts: failed if any failed, done if all are done (and there is at
/// least one), running once any has started, else pending.
fn combine(states: impl IntoIterator<Item = JobState>) -> JobState {
    let states: Vec<JobState> = states.into_iter().collect();
    if states.is_empty() {
        JobState::Pending
    } else if states.contains(&JobState::Failed) {
        JobState::Failed
    } else if states.iter().all(|s| *s == JobState::Done) {
        JobState::Done
    } else if states.iter().any(|s| matches!(s, JobState::Running | JobState::Done)) {
        JobState::Running
    } else {
        JobState::Pending
    }
}

/// A job's progress across the edges it targets (every known edge in a targeted region).
pub fn status(job: &Job, edges: &[EdgeRecord]) -> JobStatus {
    let action = Action::Prefetch(job.order.clone());
    let mut by_region: BTreeMap<String, Vec<EdgeJobStatus>> = BTreeMap::new();
    for regions in &job.order.regions {
        by_region.entry(regions.clone()).or_default();
    }
    for edge in edges.iter().filter(|e| action.targets(&e.region)) {
        let progress = edge.report.prefetch.iter().find(|p| p.job == job.id);
        let part = match progress {
            Some(p) => EdgeJobStatus {
                edge: edge.id.clone(),
                state: p.state,
                blobs_total: p.blobs_total,
                blobs_done: p.blobs_done,
                bytes: p.bytes,
                errors: p.errors.clone(),
            },
            None => EdgeJobStatus {
                edge: edge.id.clone(),
                state: JobState::Pending,
                blobs_total: 0,
                blobs_done: 0,
                bytes: 0,
                errors: vec![],
            },
        };
        by_region.entry(edge.region.clone()).or_default().push(part);
    }
    let by_region: BTreeMap<String, RegionStatus> = by_region
        .into_iter()
        .map(|(region, edges)| (region, RegionStatus { state: combine(edges.iter().map(|e| e.state)), edges }))
        .collect();
    let parts = by_region.values().flat_map(|r| r.edges.iter());
    let (blobs_total, blobs_done, bytes) =
        parts.fold((0, 0, 0), |(t, d, b), e| (t + e.blobs_total, d + e.blobs_done, b + e.bytes));
    JobStatus {
        id: job.id.clone(),
        state: combine(by_region.values().map(|r| r.state)),
        images: job.order.images.clone(),
        regions: job.order.regions.clone(),
        platforms: job.order.platforms.clone(),
        version: job.version,
        created_ms: job.created_ms,
        blobs_total,
        blobs_done,
        bytes,
        by_region,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shared::protocol::{EdgeReport, PrefetchOrder, PrefetchProgress};

    fn edge(id: &str, region: &str, progress: Option<(JobState, u64, u64)>) -> EdgeRecord {
        let prefetch = progress
            .map(|(state, total, done)| PrefetchProgress {
                job: "j1".into(),
                state,
                blobs_total: total,
                blobs_done: done,
                bytes: done * 10,
                errors: vec![],
            })
            .into_iter()
            .collect();
        EdgeRecord {
            id: id.into(),
            region: region.into(),
            version: "test".into(),
            first_seen_ms: 0,
            last_seen_ms: 0,
            report: EdgeReport {
                id: id.into(),
                region: region.into(),
                version: "test".into(),
                prefetch,
                ..Default::default()
            },
        }
    }

    fn job(regions: &[&str]) -> Job {
        Job {
            id: "j1".into(),
            order: PrefetchOrder {
                job: "j1".into(),
                images: vec!["nginx".into()],
                regions: regions.iter().map(|r| r.to_string()).collect(),
                platforms: vec![],
            },
            version: 1,
            created_ms: 0,
        }
    }

    #[test]
    fn should_be_done_only_when_every_targeted_edge_is_done() {
        let edges = vec![
            edge("a1", "a", Some((JobState::Done, 3, 3))),
            edge("a2", "a", Some((JobState::Running, 3, 1))),
            edge("b1", "b", None),
        ];
        let s = status(&job(&["a"]), &edges);
        assert_eq!(s.state, JobState::Running);
        assert_eq!((s.blobs_total, s.blobs_done), (6, 4));
        assert!(!s.by_region.contains_key("b"), "region b is not targeted");
        let edges = vec![edge("a1", "a", Some((JobState::Done, 3, 3)))];
        assert_eq!(status(&job(&["a"]), &edges).state, JobState::Done);
    }

    #[test]
    fn should_fail_if_any_edge_failed_and_wait_for_regions_without_edges() {
        let edges =
            vec![edge("a1", "a", Some((JobState::Failed, 1, 0))), edge("b1", "b", Some((JobState::Done, 1, 1)))];
        assert_eq!(status(&job(&[]), &edges).state, JobState::Failed);
        let s = status(&job(&["c"]), &edges);
        assert_eq!(s.state, JobState::Pending, "no edge in region c yet");
        assert!(s.by_region.contains_key("c"));
    }
}
