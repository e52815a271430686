//! The HTTP API: admin endpoints for pipelines and operators, the watch and report endpoints for
//! edges, health and metrics. JSON in, JSON out, versioned under `/api/v1/`.

mod auth;
pub use auth::EdgeToken;
pub mod error;
mod fleet;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use berth_shared::protocol::{
    Action, DrainRequest, EdgeReport, InvalidationRequest, PrefetchRequest, QuarantineRequest, ReportAnswer,
};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use self::auth::Role;
use self::error::ApiError;
use crate::config::Tokens;
use crate::fleet::{now_ms, Fleet};
use crate::jobs::{self, JobStatus};
use crate::metrics::Metrics;
use crate::policy::PolicyLog;
use crate::store::Store;

/// What the handlers share.
pub struct AppState {
    pub log: Arc<PolicyLog>,
    pub fleet: Arc<Fleet>,
    pub store: Arc<dyn Store>,
    pub tokens: Tokens,
    pub metrics: Arc<Metrics>,
    pub keepalive: Duration,
    pub dns: crate::dns::DnsConfig,
    pub hooks: crate::hooks::HooksConfig,
    /// Turns true when the server shuts down: watch streams end so connections can close.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Each edge's recent counters, for the fleet page.
    pub stats: Arc<crate::stats::Stats>,
    pub analytics: Arc<crate::analytics::Analytics>,
    pub sessions: session::Sessions,
    /// `[fleet] stale_after`.
    pub stale_after: Duration,
    /// Served over TLS (session cookies are then `Secure`).
    pub tls: bool,
    /// Login attempts are taken one at a time, a failed one holding the next back for a second.
    pub login_gate: tokio::sync::Mutex<()>,
}

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/prefetch", post(create_prefetch))
        .route("/api/v1/prefetch/{id}", get(prefetch_status))
        .route("/api/v1/jobs", get(list_jobs))
        .route("/api/v1/invalidations", post(create_invalidation))
        .route("/api/v1/quarantine", post(create_quarantine).get(list_quarantine))
        .route("/api/v1/drain", post(create_drain))
        .route("/api/v1/dns/zone", get(dns_zone))
        .route("/api/v1/hooks/registry", post(registry_hook))
        .route("/api/v1/edges", get(list_edges))
        .route("/api/v1/edges/report", post(edge_report))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/fleet", get(fleet::fleet_json))
        .route("/api/v1/analytics/pulls", get(fleet::top_pulls))
        .route("/", get(fleet::page))
        .route("/login", get(fleet::login_form).post(fleet::login))
        .route("/logout", post(fleet::logout))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .with_state(state)
}

/// Parses a JSON document; a bad or unknown field is named in the error.
fn document<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    berth_shared::protocol::document(body).map_err(|e| match e.field.as_str() {
        "" => ApiError::new(StatusCode::BAD_REQUEST, "invalid_document", e.message),
        field => ApiError::bad_field(field, e.message),
    })
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    format!("{prefix}-{:016x}", rand::thread_rng().gen::<u64>())
}

async fn create_prefetch(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let request: PrefetchRequest = document(&body)?;
    let id = random_id("pf");
    let order = request.into_order(id.clone()).map_err(|e| ApiError::bad_field(e.field, e.message))?;
    let images = order.images.clone();
    let event = s.log.append(Action::Prefetch(order)).await?;
    s.metrics.events.with_label_values(&["prefetch"]).inc();
    tracing::info!(job = %id, version = event.version, ?images, "prefetch ordered");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"id": id, "version": event.version}))).into_response())
}

async fn prefetch_status(
    State(s): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<JobStatus>, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let (store, fleet) = (Arc::clone(&s.store), Arc::clone(&s.fleet));
    let (job, edges) = blocking(move || store.job(&id).map(|job| (job.ok_or(id), fleet.list()))).await?;
    let job = job.map_err(|id| ApiError::not_found(format!("no prefetch job {id}")))?;
    Ok(Json(jobs::status(&job, &edges)))
}

async fn list_jobs(State(s): Shared, headers: HeaderMap) -> Result<Json<Vec<JobStatus>>, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let (store, fleet) = (Arc::clone(&s.store), Arc::clone(&s.fleet));
    let (jobs, edges) = blocking(move || store.jobs().map(|jobs| (jobs, fleet.list()))).await?;
    let mut all: Vec<JobStatus> = jobs.iter().map(|j| jobs::status(j, &edges)).collect();
    all.sort_by_key(|j| std::cmp::Reverse(j.version));
    Ok(Json(all))
}

async fn create_invalidation(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let r: InvalidationRequest = document(&body)?;
    let id = random_id("inv");
    let inv = r.into_invalidation(id.clone()).map_err(|e| ApiError::bad_field(e.field, e.message))?;
    let event = s.log.append(Action::Invalidate(inv)).await?;
    s.metrics.events.with_label_values(&["invalidate"]).inc();
    tracing::info!(id = %id, version = event.version, "invalidation recorded");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"id": id, "version": event.version}))).into_response())
}

async fn create_quarantine(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let request: QuarantineRequest = document(&body)?;
    let id = random_id("qr");
    let order = request.into_order(id.clone()).map_err(|e| ApiError::bad_field(e.field, e.message))?;
    let (digest, lifted) = (order.digest, order.lifted);
    let event = s.log.append(Action::Quarantine(order)).await?;
    s.metrics.events.with_label_values(&["quarantine"]).inc();
    tracing::info!(id = %id, %digest, lifted, version = event.version, "quarantine recorded");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"id": id, "version": event.version}))).into_response())
}

async fn create_drain(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let request: DrainRequest = document(&body)?;
    let id = random_id("dr");
    let order = request.into_order(id.clone()).map_err(|e| ApiError::bad_field(e.field, e.message))?;
    let (node, undrain) = (order.node_id.clone(), order.undrain);
    let event = s.log.append(Action::Drain(order)).await?;
    s.metrics.events.with_label_values(&["drain"]).inc();
    tracing::info!(id = %id, %node, undrain, version = event.version, "drain recorded");
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"id": id, "version": event.version}))).into_response())
}

/// A registry's push notification: every pushed tag matching a rule becomes a prefetch job for
/// that rule's regions. Answers which jobs were made (none when no rule matched).
async fn registry_hook(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    if s.tokens.hook.is_empty() {
        return Err(ApiError::unauthorized("no hook tokens are configured ([auth] hook_tokens_env)"));
    }
    auth::check(&headers, &s.tokens.hook, Role::Hook)?;
    let pushed =
        crate::hooks::pushed_tags(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_document", e))?;
    let mut jobs = Vec::new();
    for (repository, tag) in pushed {
        let Some(rule) = crate::hooks::rule_for(&s.hooks.rule, &repository) else {
            tracing::debug!(%repository, %tag, "push matches no hook rule");
            continue;
        };
        let image = format!("{}/{repository}:{tag}", rule.registry);
        let mut regions = rule.regions.clone();
        if let Some(within) = rule.pulled_within {
            let name = format!("{}/{repository}", rule.registry);
            let since = now_ms().saturating_sub(within.get().as_millis() as u64);
            let pulling = s.analytics.regions_pulling(&name, since)?;
            regions = pulling.into_iter().filter(|r| rule.regions.is_empty() || rule.regions.contains(r)).collect();
            if regions.is_empty() {
                tracing::info!(%image, "push webhook: no region pulled the repository lately, no prefetch");
                continue;
            }
        }
        let request = PrefetchRequest { images: vec![image.clone()], regions, platforms: rule.platforms.clone() };
        let id = random_id("pf");
        let order = request.into_order(id.clone()).map_err(|e| ApiError::bad_field(e.field, e.message))?;
        let event = s.log.append(Action::Prefetch(order)).await?;
        s.metrics.events.with_label_values(&["prefetch"]).inc();
        tracing::info!(job = %id, %image, version = event.version, "push webhook: prefetch ordered");
        jobs.push(serde_json::json!({"id": id, "image": image, "version": event.version}));
    }
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({"jobs": jobs}))).into_response())
}

/// The GeoDNS zone from the fleet as it is now (the serial: the time in seconds).
async fn dns_zone(State(s): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let serial = now_ms() / 1000;
    let fleet = Arc::clone(&s.fleet);
    let edges = blocking(move || Ok::<_, ApiError>(fleet.list())).await?;
    match crate::dns::render(&s.dns, &edges, serial) {
        Ok(zone) => Ok(([("content-type", "text/plain; charset=utf-8")], zone).into_response()),
        Err(e) => Err(ApiError::new(StatusCode::NOT_FOUND, "no_zone", e.to_string())),
    }
}

async fn list_quarantine(State(s): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let store = Arc::clone(&s.store);
    let list = blocking(move || store.quarantined()).await?;
    Ok(Json(list).into_response())
}

/// Runs store work off the async workers: the store blocks (on its file, or on its PostgreSQL
/// connection's thread).
pub(super) async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(Into::into),
        Err(e) => Err(ApiError::from(crate::store::StoreError::Db(e.to_string()))),
    }
}

async fn list_edges(State(s): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let now = now_ms();
    let fleet = Arc::clone(&s.fleet);
    let list = blocking(move || Ok::<_, ApiError>(fleet.list())).await?;
    let edges: Vec<serde_json::Value> = list
        .into_iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id, "region": e.region, "version": e.version,
                "first_seen_ms": e.first_seen_ms, "last_seen_ms": e.last_seen_ms,
                "seconds_since_seen": now.saturating_sub(e.last_seen_ms) as f64 / 1000.0,
                "applied_version": e.report.applied_version,
                "requests": e.report.requests, "served_bytes": e.report.served_bytes,
                "upstream_bytes": e.report.upstream_bytes,
                "cache_used_bytes": e.report.cache_used_bytes, "cache_max_bytes": e.report.cache_max_bytes,
            })
        })
        .collect();
    Ok(Json(edges).into_response())
}

/// Records an edge's report; answers with its cluster (the region's other ready edges that
/// share their cache).
async fn edge_report(State(s): Shared, headers: HeaderMap, body: Bytes) -> Result<Json<ReportAnswer>, ApiError> {
    let bound_to = auth::check_edge(&headers, &s.tokens.edge)?;
    let mut report: EdgeReport = document(&body)?;
    if report.id.trim().is_empty() {
        return Err(ApiError::bad_field("id", "must not be empty"));
    }
    if report.region.trim().is_empty() {
        return Err(ApiError::bad_field("region", "must not be empty"));
    }
    if let Some((id, region)) = bound_to {
        if report.id != id || report.region != region {
            tracing::warn!(claimed = %report.id, claimed_region = %report.region, bound = %id, "report refused: the token is bound to another edge");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "wrong_edge",
                format!(
                    "this token belongs to edge {id:?} in region {region:?}; it cannot report as {:?} in {:?}",
                    report.id, report.region
                ),
            ));
        }
    }
    // Pulls are counted only once the report is recorded (a report not acknowledged is sent
    // again with the same batch, counted once); an edge sends at most PULLS_TOP_K names of each
    // kind. The store keeps the batch's id, not its names.
    let mut pulls = std::mem::take(&mut report.pulls);
    pulls.repositories.truncate(berth_shared::protocol::PULLS_TOP_K);
    pulls.manifests.truncate(berth_shared::protocol::PULLS_TOP_K);
    // The record and its pull counts happen together, on the blocking pool: a client that
    // gives up waiting must not leave a batch recorded (so never counted again) but not counted.
    let (fleet, analytics) = (Arc::clone(&s.fleet), Arc::clone(&s.analytics));
    let record = blocking(move || {
        fleet.record(report, pulls.batch).map(|(record, new_pulls)| {
            if new_pulls {
                analytics.record(&record.region, &pulls, now_ms());
            }
            record.report
        })
    })
    .await?;
    s.stats.record(&record, now_ms());
    s.metrics.reports.inc();
    let mut answer = ReportAnswer::default();
    if record.peer_url.is_some() {
        let (fleet, stale_after) = (Arc::clone(&s.fleet), s.stale_after);
        answer.region_peers =
            blocking(move || Ok::<_, ApiError>(fleet.region_peers(&record.region, &record.id, stale_after))).await?;
    }
    Ok(Json(answer))
}

#[derive(Deserialize)]
struct WatchQuery {
    since: Option<String>,
}

async fn watch(State(s): Shared, headers: HeaderMap, Query(q): Query<WatchQuery>) -> Result<Response, ApiError> {
    auth::check_edge(&headers, &s.tokens.edge)?;
    let since = match q.since.as_deref() {
        None | Some("") => 0,
        Some(v) => v.parse::<u64>().map_err(|_| ApiError::bad_field("since", "must be a version number"))?,
    };
    let (latest, _) = s.log.versions().await?;
    if since > latest {
        // The edge knows versions this log never had (its store was replaced): it must start over.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "ahead_of_log",
            format!("since={since} is ahead of the policy log (latest {latest}); resume from 0"),
        ));
    }
    let lines =
        crate::push::watch::stream(Arc::clone(&s.log), since, s.keepalive, Arc::clone(&s.metrics), s.closing.clone());
    let stream = futures_util::stream::unfold(lines, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let body = Body::from_stream(stream.boxed());
    Ok(([("content-type", "application/x-ndjson"), ("cache-control", "no-store")], body).into_response())
}

async fn metrics(State(s): Shared) -> Response {
    if let Ok((latest, _)) = s.log.versions().await {
        s.metrics.log_version.set(latest as i64);
    }
    let fleet = Arc::clone(&s.fleet);
    let edges = blocking(move || Ok::<_, ApiError>(fleet.list())).await.unwrap_or_default();
    s.metrics.edges.set(edges.len() as i64);
    let now = now_ms();
    s.metrics.report_age.reset();
    for e in &edges {
        let age = now.saturating_sub(e.last_seen_ms) / 1000;
        s.metrics.report_age.with_label_values(&[&e.id, &e.region]).set(age as i64);
    }
    ([("content-type", "text/plain; version=0.0.4")], s.metrics.render()).into_response()
}
