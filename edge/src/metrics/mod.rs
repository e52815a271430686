//! Every metric the edge exports, defined in one place. Names follow the contract in DESIGN.md:
//! `berth_edge_` prefix, counters end in `_total`, sizes in `_bytes`, durations in `_seconds`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

mod labels;

pub use labels::{FillFailure, Outcome, RequestKind, Tier, UpstreamRequest};

/// The per-request series, resolved once: no label hashing on the request path. Indexed by the
/// label enums' positions.
pub struct PerRequest {
    requests: Vec<IntCounter>,
    responses: Vec<IntCounter>,
    served_bytes: Vec<IntCounter>,
    /// By kind, then source (the tiers, then `none`).
    seconds: Vec<Histogram>,
    miss_first_byte: Vec<Histogram>,
}

impl PerRequest {
    fn empty() -> Self {
        PerRequest {
            requests: Vec::new(),
            responses: Vec::new(),
            served_bytes: Vec::new(),
            seconds: Vec::new(),
            miss_first_byte: Vec::new(),
        }
    }

    fn new(m: &Metrics) -> Self {
        let mut per = PerRequest::empty();
        for kind in RequestKind::ALL.iter().map(|k| k.as_str()) {
            for source in Tier::ALL.iter().map(|t| t.as_str()).chain(["none"]) {
                per.seconds.push(m.request_seconds.with_label_values(&[kind, source]));
            }
            per.miss_first_byte.push(m.miss_first_byte_seconds.with_label_values(&[kind]));
            for outcome in Outcome::ALL {
                per.requests.push(m.requests.with_label_values(&[kind, outcome.as_str()]));
            }
            for tier in Tier::ALL {
                per.responses.push(m.responses.with_label_values(&[kind, tier.as_str()]));
            }
        }
        per.served_bytes = Tier::ALL.iter().map(|t| m.served_bytes.with_label_values(&[t.as_str()])).collect();
        per
    }

    /// Counts one request: its kind and outcome; the tier that served it with the body bytes
    /// and whether it succeeded; its duration, and for a miss when its first byte left.
    pub fn record(&self, kind: RequestKind, outcome: Outcome, served: Option<(Tier, u64, bool)>, times: Times) {
        let k = kind.index();
        self.requests[k * Outcome::ALL.len() + outcome.index()].inc();
        let mut source = Tier::ALL.len();
        if let Some((tier, bytes, ok)) = served {
            let t = tier.index();
            source = t;
            self.served_bytes[t].inc_by(bytes);
            if ok {
                self.responses[k * Tier::ALL.len() + t].inc();
            }
        }
        self.seconds[k * (Tier::ALL.len() + 1) + source].observe(times.elapsed.as_secs_f64());
        if let (Some(first_byte), Outcome::Miss) = (times.first_byte, outcome) {
            self.miss_first_byte[k].observe(first_byte.as_secs_f64());
        }
    }
}

/// A request's timings, from its request line.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// To its last byte.
    pub elapsed: std::time::Duration,
    /// To the first byte of its response, when one was sent.
    pub first_byte: Option<std::time::Duration>,
}

/// The edge's metrics and the registry they are exported from.
pub struct Metrics {
    registry: Registry,
    /// Pre-resolved series for the request path.
    pub per_request: PerRequest,
    /// Requests by kind (`blob`, `manifest`, `base`, `other`) and outcome (`hit`, `miss`,
    /// `coalesced`, `stale`, `error`, `bypass`).
    pub requests: IntCounterVec,
    /// Response bytes sent to clients, by tier (`memory`, `disk`, `upstream`).
    pub served_bytes: IntCounterVec,
    /// Bytes read from upstream registries, by upstream.
    pub upstream_bytes: IntCounterVec,
    /// Requests sent to upstream registries, by upstream and kind of request.
    pub upstream_requests: IntCounterVec,
    /// Bytes of entries on disk (published), and reserved by fills in flight.
    pub cache_bytes: IntGaugeVec,
    /// The disk budget (`cache.disk_max`).
    pub cache_max_bytes: IntGauge,
    /// Entries on disk.
    pub cache_entries: IntGauge,
    /// Entries evicted to keep the disk budget.
    pub evictions: IntCounter,
    pub evicted_bytes: IntCounter,
    /// Fills whose bytes did not hash to their digest.
    pub digest_mismatches: IntCounter,
    /// Fills that failed, by reason (`digest_mismatch`, `truncated`, `upstream`, `disk`).
    pub fill_failures: IntCounterVec,
    /// Fills running now.
    pub fills_in_flight: IntGauge,
    /// Tag lookups answered with a stale mapping because the upstream failed.
    pub stale_served: IntCounter,
    /// Memory hits answered directly, before Pingora's session (`proxy/direct.rs`); they are
    /// counted in `requests` too.
    pub direct_answers: IntCounter,
    /// Files found damaged (missing, wrong size, wrong content) and dropped.
    pub damaged_entries: IntCounter,
    /// Verified blob files found changed on disk (their stamp differs) and hashed again.
    pub changed_entries: IntCounter,
    /// Entries re-hashed by the scrub, and those that failed.
    pub scrubbed_entries: IntCounter,
    pub scrub_failures: IntCounter,
    /// 1 while the cache disk is failing and fills bypass it.
    pub disk_degraded: IntGauge,
    /// Successful responses by kind and the tier that served them (`memory`, `disk`, `upstream`).
    pub responses: IntCounterVec,
    /// The last policy version applied from the distributor.
    pub policy_version: IntGauge,
    /// Bytes and entries held by the memory tier.
    pub memory_bytes: IntGauge,
    pub memory_entries: IntGauge,
    /// Authorization events by result: `issued` (a token), `refused` (bad credentials at
    /// `/token`), `unavailable` (the upstream could not be asked), `challenged` (a request
    /// without a valid token got 401).
    pub auth: IntCounterVec,
    /// Downstream connections open now.
    pub downstream_connections: IntGauge,
    /// Connections closed on arrival because `max_connections` were open.
    pub connections_refused: IntCounter,
    /// HTTP/1 connections closed by a timer (`header`: a request not complete in time; `idle`).
    pub connection_timeouts: IntCounterVec,
    /// Requests refused by a bound: `header_bytes` (431), `url_bytes` (414), `fills` and
    /// `upstream_connections` (503 after `queue_timeout`), `framing` (400: ambiguous length).
    pub refused: IntCounterVec,
    /// Manifests refused because their declared types and content disagree.
    pub invalid_manifests: IntCounter,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// 1 while `/readyz` answers 200, 0 while it answers 503 (what alerts on readiness read).
    pub ready: IntGauge,
    /// Digests in quarantine now.
    pub quarantined: IntGauge,
    /// Requests refused because their digest is quarantined.
    pub quarantine_refusals: IntCounter,
    /// Attempts to reload the config file (SIGHUP), by result (`loaded`, `refused`).
    pub config_reloads: IntCounterVec,
    /// Attempts to reload the TLS certificate, by result (`loaded`, `refused`).
    pub tls_reloads: IntCounterVec,
    /// When the TLS certificate in service expires (Unix seconds; 0 without `[tls]`).
    pub tls_cert_expiry: IntGauge,
    /// Prefetch jobs this edge knows, by state (`pending`, `running`, `done`, `failed`).
    pub prefetch_jobs: IntGaugeVec,
    /// Blobs of the unfinished prefetch jobs: `total` and `done`.
    pub prefetch_blobs: IntGaugeVec,
    /// Bytes of blobs made present by prefetch jobs.
    pub prefetched_bytes: IntCounter,
    /// Requests to other edges of the region that failed (the next owner, then the origin, was
    /// asked).
    pub peer_failures: IntCounter,
    /// The other edges of the region this edge shares its cache with (`[cluster] peers`, or
    /// the distributor's list of the region's ready edges).
    pub cluster_peers: IntGauge,
    /// Blob requests from other edges of the region answered, by result (`served`, `refused`).
    pub peer_requests: IntCounterVec,
    /// Blobs filled from a peer and verified, by whether this edge kept them (`kept`, `not_kept`:
    /// not popular here, left to their owner).
    pub peer_fills: IntCounterVec,
    /// Request durations by kind and source (`memory`, `disk`, `upstream`, `none` for an
    /// answer without a body from a tier), from request line to last byte.
    pub request_seconds: HistogramVec,
    /// Time to the first response byte of misses (the edge fetched from the upstream), by kind.
    pub miss_first_byte_seconds: HistogramVec,
    /// Duration of a complete blob fill from upstream.
    pub fill_seconds: Histogram,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new(region: &str) -> Self {
        let registry = Registry::new_custom(None, Some([("region".to_owned(), region.to_owned())].into()))
            .expect("valid registry");
        let r = &registry;
        let cache_bytes = IntGaugeVec::new(
            Opts::new("berth_edge_cache_bytes", "Bytes of the disk cache, by state (used, reserved)"),
            &["state"],
        )
        .expect("valid metric");
        registry.register(Box::new(cache_bytes.clone())).expect("unique metric");
        let request_seconds = HistogramVec::new(
            HistogramOpts::new("berth_edge_request_duration_seconds", "Request duration by kind and source")
                .buckets(vec![0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]),
            &["kind", "source"],
        )
        .expect("valid metric");
        registry.register(Box::new(request_seconds.clone())).expect("unique metric");
        let miss_first_byte_seconds = HistogramVec::new(
            HistogramOpts::new("berth_edge_miss_first_byte_seconds", "Time to first byte of misses, by kind")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0]),
            &["kind"],
        )
        .expect("valid metric");
        registry.register(Box::new(miss_first_byte_seconds.clone())).expect("unique metric");
        let fill_seconds = Histogram::with_opts(
            HistogramOpts::new("berth_edge_fill_duration_seconds", "Duration of blob fills from upstream")
                .buckets(vec![0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0]),
        )
        .expect("valid metric");
        registry.register(Box::new(fill_seconds.clone())).expect("unique metric");
        let mut metrics = Metrics {
            per_request: PerRequest::empty(),
            requests: counter_vec(r, "berth_edge_requests_total", "Requests by kind and outcome", &["kind", "outcome"]),
            served_bytes: counter_vec(r, "berth_edge_served_bytes_total", "Bytes sent to clients by tier", &["tier"]),
            responses: counter_vec(
                r,
                "berth_edge_responses_total",
                "Successful responses by kind and serving tier",
                &["kind", "tier"],
            ),
            scrubbed_entries: counter(r, "berth_edge_scrubbed_entries_total", "Cached files re-hashed by the scrub"),
            scrub_failures: counter(
                r,
                "berth_edge_scrub_failures_total",
                "Cached files the scrub found damaged and dropped",
            ),
            disk_degraded: gauge(r, "berth_edge_disk_degraded", "1 while the cache disk fails and fills bypass it"),
            memory_bytes: gauge(r, "berth_edge_memory_bytes", "Bytes held by the memory tier"),
            policy_version: gauge(r, "berth_edge_policy_version", "Last policy version applied"),
            memory_entries: gauge(r, "berth_edge_memory_entries", "Entries in the memory tier"),
            upstream_bytes: counter_vec(
                r,
                "berth_edge_upstream_bytes_total",
                "Bytes read from upstreams",
                &["upstream"],
            ),
            upstream_requests: counter_vec(
                r,
                "berth_edge_upstream_requests_total",
                "Requests sent to upstreams",
                &["upstream", "request"],
            ),
            cache_bytes,
            cache_max_bytes: gauge(r, "berth_edge_cache_max_bytes", "The disk cache budget"),
            cache_entries: gauge(r, "berth_edge_cache_entries", "Entries in the disk cache"),
            evictions: counter(r, "berth_edge_evictions_total", "Entries evicted from disk"),
            evicted_bytes: counter(r, "berth_edge_evicted_bytes_total", "Bytes evicted from disk"),
            digest_mismatches: counter(
                r,
                "berth_edge_digest_mismatches_total",
                "Fills whose content did not match the digest",
            ),
            fill_failures: counter_vec(r, "berth_edge_fill_failures_total", "Failed fills by reason", &["reason"]),
            fills_in_flight: gauge(r, "berth_edge_fills_in_flight", "Blob fills running now"),
            stale_served: counter(
                r,
                "berth_edge_stale_served_total",
                "Tags served from a stale mapping because the upstream failed",
            ),
            direct_answers: counter(
                r,
                "berth_edge_direct_answers_total",
                "Memory hits on HTTP/1.1 answered before Pingora's session (also in requests_total)",
            ),
            damaged_entries: counter(
                r,
                "berth_edge_damaged_entries_total",
                "Cached files found missing or damaged and dropped",
            ),
            changed_entries: counter(
                r,
                "berth_edge_changed_entries_total",
                "Verified blob files found changed on disk since they were hashed, and hashed again",
            ),
            quarantined: gauge(r, "berth_edge_quarantined_digests", "Digests in quarantine"),
            ready: gauge(r, "berth_edge_ready", "1 while /readyz answers 200"),
            tls_cert_expiry: gauge(
                r,
                "berth_edge_tls_cert_expiry_timestamp_seconds",
                "When the TLS certificate in service expires (0 without TLS)",
            ),
            access_log_dropped: counter(
                r,
                "berth_edge_access_log_dropped_total",
                "Access-log lines dropped because the writer fell behind",
            ),
            downstream_connections: gauge(r, "berth_edge_downstream_connections", "Downstream connections open"),
            connections_refused: counter(
                r,
                "berth_edge_connections_refused_total",
                "Connections closed on arrival: max_connections were open",
            ),
            connection_timeouts: counter_vec(
                r,
                "berth_edge_connection_timeouts_total",
                "HTTP/1 connections closed by the header or idle timer",
                &["timer"],
            ),
            refused: counter_vec(r, "berth_edge_refused_requests_total", "Requests refused by a bound", &["bound"]),
            invalid_manifests: counter(
                r,
                "berth_edge_invalid_manifests_total",
                "Manifests refused: declared media types and content disagree",
            ),
            quarantine_refusals: counter(
                r,
                "berth_edge_quarantine_refusals_total",
                "Requests refused because their digest is quarantined",
            ),
            auth: counter_vec(r, "berth_edge_auth_total", "Authorization events by result", &["result"]),
            config_reloads: counter_vec(
                r,
                "berth_edge_config_reloads_total",
                "Config reloads by result (refused: the config in force stays)",
                &["result"],
            ),
            tls_reloads: counter_vec(
                r,
                "berth_edge_tls_reloads_total",
                "Certificate reloads by result (loaded; refused: the old pair stays in service)",
                &["result"],
            ),
            prefetch_jobs: gauge_vec(r, "berth_edge_prefetch_jobs", "Prefetch jobs by state", &["state"]),
            prefetch_blobs: gauge_vec(
                r,
                "berth_edge_prefetch_blobs",
                "Blobs of the unfinished prefetch jobs (total, done)",
                &["state"],
            ),
            prefetched_bytes: counter(
                r,
                "berth_edge_prefetched_bytes_total",
                "Bytes of blobs made present by prefetch jobs",
            ),
            peer_failures: counter(
                r,
                "berth_edge_peer_failures_total",
                "Requests to other edges of the region that failed (the next source was asked)",
            ),
            cluster_peers: gauge(
                r,
                "berth_edge_cluster_peers",
                "Other edges of the region this edge shares its cache with",
            ),
            peer_requests: counter_vec(
                r,
                "berth_edge_peer_requests_total",
                "Blob requests from other edges of the region, by result",
                &["result"],
            ),
            peer_fills: counter_vec(
                r,
                "berth_edge_peer_fills_total",
                "Blobs filled from another edge of the region, by whether this edge kept them",
                &["result"],
            ),
            request_seconds,
            miss_first_byte_seconds,
            fill_seconds,
            registry,
        };
        metrics.per_request = PerRequest::new(&metrics);
        // Every label value a dashboard or an alert reads exists from the start, at zero.
        for reason in FillFailure::ALL {
            metrics.fill_failures.with_label_values(&[reason.as_str()]);
        }
        for result in ["loaded", "refused"] {
            metrics.tls_reloads.with_label_values(&[result]);
            metrics.config_reloads.with_label_values(&[result]);
        }
        for state in ["used", "reserved"] {
            metrics.cache_bytes.with_label_values(&[state]);
        }
        for bound in ["header_bytes", "url_bytes", "fills", "upstream_connections", "framing"] {
            metrics.refused.with_label_values(&[bound]);
        }
        for state in ["pending", "running", "done", "failed"] {
            metrics.prefetch_jobs.with_label_values(&[state]);
        }
        for state in ["total", "done"] {
            metrics.prefetch_blobs.with_label_values(&[state]);
        }
        for result in ["served", "refused"] {
            metrics.peer_requests.with_label_values(&[result]);
        }
        for kept in ["kept", "not_kept"] {
            metrics.peer_fills.with_label_values(&[kept]);
        }
        metrics
    }

    /// Counts one request to an upstream.
    pub fn upstream_request(&self, upstream: &str, request: UpstreamRequest) {
        self.upstream_requests.with_label_values(&[upstream, request.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
