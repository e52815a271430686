//! The edge ↔ distributor protocol: the versioned policy log streamed to edges, and the reports
//! edges send back. JSON, one message per line on the watch stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::image_ref::ImageReference;

/// A policy change, with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEvent {
    pub version: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// What a policy event asks of edges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Prefetch(PrefetchOrder),
    Invalidate(Invalidation),
    /// Refuse a digest everywhere (or stop refusing it): fleet-wide, never per region.
    Quarantine(QuarantineOrder),
    /// Take one edge out of rotation (or put it back).
    Drain(DrainOrder),
}

impl Action {
    /// The regions an action targets (empty: every region).
    pub fn regions(&self) -> &[String] {
        match self {
            Action::Prefetch(p) => &p.regions,
            Action::Invalidate(i) => &i.regions,
            Action::Quarantine(_) | Action::Drain(_) => &[],
        }
    }

    /// Whether an edge in `region` must apply it.
    pub fn targets(&self, region: &str) -> bool {
        self.regions().is_empty() || self.regions().iter().any(|r| r == region)
    }
}

/// Warm these images, in these regions, for these platforms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchOrder {
    pub job: String,
    pub images: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
}

/// Forget a tag mapping, or purge a digest from every tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidation {
    pub id: String,
    pub repository: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

/// A deny order for one digest (a manifest or a blob), or its lifting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineOrder {
    pub id: String,
    pub digest: Digest,
    /// Why (shown to clients in the 403's error message). Empty when lifted.
    #[serde(default)]
    pub reason: String,
    /// `true`: the quarantine of this digest ends.
    #[serde(default)]
    pub lifted: bool,
}

/// Drain (or undrain) the edge with this node id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainOrder {
    pub id: String,
    pub node_id: String,
    #[serde(default)]
    pub undrain: bool,
}

/// `POST /api/v1/drain`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    pub node_id: String,
    #[serde(default)]
    pub undrain: bool,
}

impl DrainRequest {
    pub fn into_order(self, id: String) -> Result<DrainOrder, FieldError> {
        let valid = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
        if self.node_id.is_empty() || self.node_id.len() > 253 || !self.node_id.chars().all(valid) {
            let message = "a node id: letters, digits, '.', '_', '-' (at most 253)".to_owned();
            return Err(FieldError { field: "node_id".into(), message });
        }
        Ok(DrainOrder { id, node_id: self.node_id, undrain: self.undrain })
    }
}

/// `POST /api/v1/quarantine`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineRequest {
    pub digest: Digest,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub lift: bool,
}

/// Longest quarantine reason accepted.
pub const MAX_REASON: usize = 512;

impl QuarantineRequest {
    pub fn into_order(self, id: String) -> Result<QuarantineOrder, FieldError> {
        let field = |message: &str| FieldError { field: "reason".into(), message: message.into() };
        if !self.lift && self.reason.trim().is_empty() {
            return Err(field("a quarantine needs a reason (clients see it)"));
        }
        if self.reason.len() > MAX_REASON || self.reason.chars().any(char::is_control) {
            return Err(field("at most 512 bytes (UTF-8), no control characters"));
        }
        Ok(QuarantineOrder { id, digest: self.digest, reason: self.reason, lifted: self.lift })
    }
}

/// `POST /api/v1/prefetch` (the distributor's, and an edge's own admin port, where `regions`
/// does not apply).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchRequest {
    pub images: Vec<String>,
    #[serde(default)]
    pub regions: Vec<String>,
    #[serde(default)]
    pub platforms: Vec<String>,
}

impl PrefetchRequest {
    /// The order for job `job`, validated (the first bad field is named).
    pub fn into_order(self, job: String) -> Result<PrefetchOrder, FieldError> {
        let order = PrefetchOrder { job, images: self.images, regions: self.regions, platforms: self.platforms };
        order.validate()?;
        Ok(order)
    }
}

/// `POST /api/v1/invalidations` (and an edge's `POST /api/v1/purge`, where `regions` does not
/// apply).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvalidationRequest {
    pub repository: String,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub upstream: Option<String>,
    #[serde(default)]
    pub regions: Vec<String>,
}

impl InvalidationRequest {
    /// The invalidation with id `id`, validated.
    pub fn into_invalidation(self, id: String) -> Result<Invalidation, FieldError> {
        let inv = Invalidation {
            id,
            repository: self.repository,
            tag: self.tag,
            digest: self.digest,
            upstream: self.upstream,
            regions: self.regions,
        };
        inv.validate()?;
        Ok(inv)
    }
}

/// One line of the watch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchLine {
    /// The next event in the log.
    Event(PolicyEvent),
    /// For an edge behind the compacted log: the state to start from instead of the events.
    Snapshot(Snapshot),
    /// Everything up to `version` has been sent; what follows is live.
    Synced { version: u64 },
    /// Nothing new; the log is at `version`.
    Keepalive { version: u64 },
}

/// The state of the policy at `version`, for an edge whose `since` predates the compacted log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    /// Prefetch orders an edge must still carry out.
    pub prefetch: Vec<PrefetchOrder>,
    /// Digests purged in the compacted part of the log.
    pub purged: Vec<Invalidation>,
    /// The edge must forget every tag mapping (tag invalidations were compacted away).
    pub reset_tags: bool,
    /// Every digest in quarantine now (the edge's set is replaced by this one; the events after
    /// the snapshot then apply on top).
    #[serde(default)]
    pub quarantined: Vec<QuarantineOrder>,
}

/// Where an edge is with one prefetch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
}

/// One edge's progress on one prefetch order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefetchProgress {
    pub job: String,
    pub state: JobState,
    pub blobs_total: u64,
    pub blobs_done: u64,
    pub bytes: u64,
    #[serde(default)]
    pub errors: Vec<String>,
}

/// A name and how many times it was pulled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullCount {
    pub name: String,
    pub count: u64,
}

/// Manifest requests answered `200` since an edge's last delivered report, the most pulled
/// first, at most [`PULLS_TOP_K`] of each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulls {
    /// The batch these counts are (random, per edge; `0`: none). A report not acknowledged is
    /// sent again with the same batch, and the distributor counts a batch once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch: u64,
    /// By repository, with its registry: `docker.io/library/nginx`.
    #[serde(default)]
    pub repositories: Vec<PullCount>,
    /// By manifest as requested: `docker.io/library/nginx:1.27`, `...@sha256:...`.
    #[serde(default)]
    pub manifests: Vec<PullCount>,
}

/// The most names of each kind an edge reports per interval.
pub const PULLS_TOP_K: usize = 50;

impl Pulls {
    pub fn is_empty(&self) -> bool {
        self.repositories.is_empty() && self.manifests.is_empty()
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What an edge reports every `report_interval`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EdgeReport {
    pub id: String,
    pub region: String,
    /// The edge's software version.
    pub version: String,
    /// The last policy version applied.
    pub applied_version: u64,
    /// Requests by `kind/outcome` (e.g. `blob/hit`).
    #[serde(default)]
    pub requests: BTreeMap<String, u64>,
    /// Bytes served by tier (`memory`, `disk`, `upstream`).
    #[serde(default)]
    pub served_bytes: BTreeMap<String, u64>,
    #[serde(default)]
    pub upstream_bytes: u64,
    #[serde(default)]
    pub cache_used_bytes: u64,
    #[serde(default)]
    pub cache_max_bytes: u64,
    #[serde(default)]
    pub prefetch: Vec<PrefetchProgress>,
    /// The address clients reach this edge at (its `[distributor] advertise`), for the DNS
    /// zone the distributor renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
    /// `"ready"`, or why the edge's `/readyz` answers 503 (`"drained by an operator"`,
    /// `"draining: shutting down"`, `"policy stale: ..."`, `"cache disk degraded: ..."`,
    /// `"cache folder unusable: ..."`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
    /// Blob fills running now.
    #[serde(default)]
    pub fills_in_flight: u64,
    /// Seconds since the edge process started (its counters count from then).
    #[serde(default)]
    pub uptime_seconds: u64,
    /// Pulls since the last delivered report.
    #[serde(default, skip_serializing_if = "Pulls::is_empty")]
    pub pulls: Pulls,
    /// The URL the other edges of the region reach this one at for peer fills (its
    /// `[cluster] advertise`), when it shares a cache with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
}

/// The distributor's answer to a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAnswer {
    /// The `peer_url`s of the other edges of the reporting edge's region that are ready and
    /// reported within `[fleet] stale_after`, sorted: its cluster when `[cluster] peers` is
    /// left out. `None` when the report has no `peer_url`, or the fleet could not be read (the
    /// edge keeps the members it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_peers: Option<Vec<String>>,
}

/// Validation of a policy document before it enters the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Parses a JSON document; a bad, missing or unknown field is named (`images[1]`, `digest`).
pub fn document<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        field_error(field, e.into_inner().to_string())
    })
}

/// A platform filter: `os/arch` or `os/arch/variant`, lowercase.
pub fn check_platform(p: &str) -> bool {
    let parts: Vec<&str> = p.split('/').collect();
    (2..=3).contains(&parts.len())
        && parts
            .iter()
            .all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
}

fn check_regions(regions: &[String]) -> Result<(), FieldError> {
    for (i, r) in regions.iter().enumerate() {
        if r.trim().is_empty() || r.len() > 64 {
            return Err(field_error(format!("regions[{i}]"), "must be a non-empty region name"));
        }
    }
    Ok(())
}

impl PrefetchOrder {
    /// Checks every field; the first bad one is named.
    pub fn validate(&self) -> Result<Vec<ImageReference>, FieldError> {
        if self.images.is_empty() {
            return Err(field_error("images", "at least one image reference is required"));
        }
        let refs = self
            .images
            .iter()
            .enumerate()
            .map(|(i, s)| s.parse::<ImageReference>().map_err(|e| field_error(format!("images[{i}]"), e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        check_regions(&self.regions)?;
        for (i, p) in self.platforms.iter().enumerate() {
            if !check_platform(p) {
                return Err(field_error(format!("platforms[{i}]"), format!("{p:?} is not os/arch[/variant]")));
            }
        }
        Ok(refs)
    }
}

impl Invalidation {
    pub fn validate(&self) -> Result<(), FieldError> {
        crate::name::RepositoryName::parse(&self.repository).map_err(|e| field_error("repository", e.to_string()))?;
        if let Some(tag) = &self.tag {
            crate::reference::Tag::parse(tag).map_err(|e| field_error("tag", e.to_string()))?;
        }
        if let Some(u) = &self.upstream {
            if u.is_empty() || u.contains('/') {
                return Err(field_error("upstream", "must be a registry host name"));
            }
        }
        check_regions(&self.regions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_round_trip_watch_lines_as_json() {
        let line = WatchLine::Event(PolicyEvent {
            version: 7,
            action: Action::Invalidate(Invalidation {
                id: "inv-1".into(),
                repository: "org/app".into(),
                tag: Some("v1".into()),
                digest: None,
                upstream: None,
                regions: vec!["eu-west".into()],
            }),
        });
        let json = serde_json::to_string(&line).unwrap();
        assert!(json.contains(r#""type":"event""#) && json.contains(r#""action":"invalidate""#), "{json}");
        assert_eq!(serde_json::from_str::<WatchLine>(&json).unwrap(), line);
        let k = serde_json::to_string(&WatchLine::Keepalive { version: 3 }).unwrap();
        assert_eq!(k, r#"{"type":"keepalive","version":3}"#);
    }

    #[test]
    fn should_target_regions() {
        let order = PrefetchOrder { job: "j".into(), images: vec!["nginx".into()], regions: vec![], platforms: vec![] };
        assert!(Action::Prefetch(order.clone()).targets("anywhere"));
        let order = PrefetchOrder { regions: vec!["a".into()], ..order };
        assert!(Action::Prefetch(order.clone()).targets("a"));
        assert!(!Action::Prefetch(order).targets("b"));
    }

    #[test]
    fn should_name_the_bad_field() {
        let order = PrefetchOrder {
            job: "j".into(),
            images: vec!["nginx:1".into(), "BAD:ref".into()],
            regions: vec![],
            platforms: vec![],
        };
        assert_eq!(order.validate().unwrap_err().field, "images[1]");
        let order = PrefetchOrder { images: vec!["nginx".into()], platforms: vec!["linux".into()], ..order };
        assert_eq!(order.validate().unwrap_err().field, "platforms[0]");
        let order = PrefetchOrder { images: vec![], ..order };
        assert_eq!(order.validate().unwrap_err().field, "images");
        let inv = Invalidation {
            id: "i".into(),
            repository: "..".into(),
            tag: None,
            digest: None,
            upstream: None,
            regions: vec![],
        };
        assert_eq!(inv.validate().unwrap_err().field, "repository");
    }

    #[test]
    fn should_check_platforms() {
        assert!(check_platform("linux/amd64") && check_platform("linux/arm64/v8"));
        assert!(!check_platform("linux") && !check_platform("Linux/amd64") && !check_platform("a/b/c/d"));
    }
}
