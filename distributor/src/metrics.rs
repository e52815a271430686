//! Every metric the distributor exports, defined in one place (`berth_distributor_` prefix).

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Events appended to the policy log, by action (`prefetch`, `invalidate`).
    pub events: IntCounterVec,
    /// Reports received from edges.
    pub reports: IntCounter,
    /// Watch streams open now.
    pub watchers: IntGauge,
    /// The latest policy version.
    pub log_version: IntGauge,
    /// Edges known.
    pub edges: IntGauge,
    /// Certificate reloads by result (`loaded`, `refused`).
    pub tls_reloads: IntCounterVec,
    /// When the TLS certificate in service expires (Unix seconds; 0 without `[tls]`).
    pub tls_cert_expiry: IntGauge,
    /// Seconds since each edge's last report, by `edge` and `region` (set at each scrape).
    pub report_age: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("berth_distributor_events_total", "Policy events appended, by action"),
            &["action"],
        )
        .expect("valid metric");
        let reports =
            IntCounter::new("berth_distributor_reports_total", "Reports received from edges").expect("valid metric");
        let watchers = IntGauge::new("berth_distributor_watchers", "Watch streams open").expect("valid metric");
        let log_version =
            IntGauge::new("berth_distributor_log_version", "Latest policy version").expect("valid metric");
        let edges = IntGauge::new("berth_distributor_edges", "Edges known").expect("valid metric");
        registry.register(Box::new(events.clone())).expect("unique metric");
        registry.register(Box::new(reports.clone())).expect("unique metric");
        registry.register(Box::new(watchers.clone())).expect("unique metric");
        registry.register(Box::new(log_version.clone())).expect("unique metric");
        registry.register(Box::new(edges.clone())).expect("unique metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new("berth_distributor_tls_reloads_total", "Certificate reloads by result"),
            &["result"],
        )
        .expect("valid metric");
        registry.register(Box::new(tls_reloads.clone())).expect("unique metric");
        let tls_cert_expiry = IntGauge::new(
            "berth_distributor_tls_cert_expiry_timestamp_seconds",
            "When the TLS certificate in service expires (0 without TLS)",
        )
        .expect("valid metric");
        registry.register(Box::new(tls_cert_expiry.clone())).expect("unique metric");
        let report_age = IntGaugeVec::new(
            Opts::new("berth_distributor_edge_report_age_seconds", "Seconds since each edge's last report"),
            &["edge", "region"],
        )
        .expect("valid metric");
        registry.register(Box::new(report_age.clone())).expect("unique metric");
        Metrics { registry, events, reports, watchers, log_version, edges, tls_reloads, tls_cert_expiry, report_age }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new().encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
