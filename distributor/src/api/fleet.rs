//! What operators look at: the fleet page (`/`, with its login form), its data
//! (`GET /api/v1/fleet`), and pull analytics (`GET /api/v1/analytics/pulls`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::{self, Role};
use super::error::ApiError;
use super::session;
use super::{AppState, Shared};
use crate::analytics::TopPulls;
use crate::fleet::now_ms;
use crate::view::{self, FleetView};

/// Policy events looked at for the recent invalidations.
const EVENTS_SCANNED: u64 = 500;
/// How long a failed login holds the next attempt back.
const LOGIN_FAILURE_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// Most pulled repositories shown per region.
const TOP_PER_REGION: usize = 10;

/// The admin bearer token, or (for reading the page and its data only) a session cookie.
fn may_read(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if s.sessions.valid(headers, now_ms()) {
        return Ok(());
    }
    auth::check(headers, &s.tokens.admin, Role::Admin)
}

async fn fleet_view(s: &Arc<AppState>) -> Result<FleetView, ApiError> {
    let (latest, _) = s.log.versions().await?;
    let events = s.log.since(latest.saturating_sub(EVENTS_SCANNED), EVENTS_SCANNED as usize).await?;
    let state = Arc::clone(s);
    super::blocking(move || -> Result<FleetView, ApiError> {
        let now = now_ms();
        let edges = state.fleet.list();
        let jobs: Vec<_> = state.store.jobs()?.iter().map(|j| crate::jobs::status(j, &edges)).collect();
        let mut top = BTreeMap::new();
        for region in edges.iter().map(|e| e.region.as_str()).collect::<std::collections::BTreeSet<_>>() {
            let pulls = state.analytics.top(Some(region), now.saturating_sub(view::HOUR_MS), TOP_PER_REGION)?;
            top.insert(region.to_owned(), pulls.repositories);
        }
        Ok(view::build(view::Inputs {
            now_ms: now,
            log_version: latest,
            stale_after_ms: state.stale_after.as_millis() as u64,
            edges: &edges,
            stats: &state.stats,
            jobs,
            events: &events,
            top,
        }))
    })
    .await
}

pub async fn fleet_json(State(s): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    may_read(&s, &headers)?;
    let view = fleet_view(&s).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response())
}

/// The page; without a token or session, the way to the login form.
pub async fn page(State(s): Shared, headers: HeaderMap) -> Result<Response, ApiError> {
    if may_read(&s, &headers).is_err() {
        return Ok((StatusCode::SEE_OTHER, [(header::LOCATION, "/login")]).into_response());
    }
    let view = fleet_view(&s).await?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(crate::page::render(&view))).into_response())
}

pub async fn login_form() -> Html<String> {
    Html(crate::page::login(None))
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the token typed in the form; a good one opens a session.
pub async fn login(State(s): Shared, body: Bytes) -> Response {
    let token = serde_urlencoded::from_bytes::<LoginForm>(&body).map(|f| f.token).unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Ok(value) = format!("Bearer {}", token.trim()).parse() {
        headers.insert(header::AUTHORIZATION, value);
    }
    // One attempt at a time, and a failed one costs a second: guessing a token online is slow.
    let _turn = s.login_gate.lock().await;
    if token.trim().is_empty() || auth::check(&headers, &s.tokens.admin, Role::Admin).is_err() {
        tracing::warn!("fleet page: login refused");
        tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
        return (StatusCode::UNAUTHORIZED, Html(crate::page::login(Some("That is not an admin token."))))
            .into_response();
    }
    let id = s.sessions.open(now_ms());
    let cookie = session::set_cookie(&id, s.tls);
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/".to_owned())]).into_response()
}

pub async fn logout(State(s): Shared, headers: HeaderMap) -> Response {
    s.sessions.close(&headers);
    let cookie = session::set_cookie("", s.tls);
    (StatusCode::SEE_OTHER, [(header::SET_COOKIE, cookie), (header::LOCATION, "/login".to_owned())]).into_response()
}

#[derive(Deserialize)]
pub struct PullsQuery {
    region: Option<String>,
    since: Option<String>,
    limit: Option<String>,
}

/// `since`: a duration before now (`"90m"`, `"24h"`, `"7d"`) or an RFC 3339 UTC time.
fn since_ms(since: Option<&str>, now: u64) -> Result<u64, ApiError> {
    let Some(since) = since.filter(|s| !s.is_empty()) else {
        return Ok(now.saturating_sub(24 * 3_600_000));
    };
    if let Some(at) = berth_shared::time::parse_rfc3339(since) {
        return Ok(at);
    }
    match since.parse::<berth_shared::HumanDuration>() {
        Ok(d) => Ok(now.saturating_sub(d.get().as_millis() as u64)),
        Err(_) => Err(ApiError::bad_field(
            "since",
            format!("{since:?} is neither a duration (\"24h\") nor an RFC 3339 UTC time (\"2026-12-03T08:00:00Z\")"),
        )),
    }
}

pub async fn top_pulls(
    State(s): Shared,
    headers: HeaderMap,
    Query(q): Query<PullsQuery>,
) -> Result<Json<TopPulls>, ApiError> {
    auth::check(&headers, &s.tokens.admin, Role::Admin)?;
    let since = since_ms(q.since.as_deref(), now_ms())?;
    let limit = match q.limit.as_deref() {
        None | Some("") => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => return Err(ApiError::bad_field("limit", "must be a number from 1 to 1000")),
        },
    };
    let region = q.region.filter(|r| !r.is_empty());
    let analytics = Arc::clone(&s.analytics);
    let top = super::blocking(move || analytics.top(region.as_deref(), since, limit)).await?;
    Ok(Json(top))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_read_since_as_a_duration_or_a_time() {
        let now = 1_796_208_000_000;
        assert_eq!(since_ms(None, now).unwrap(), now - 86_400_000);
        assert_eq!(since_ms(Some("90m"), now).unwrap(), now - 5_400_000);
        assert_eq!(since_ms(Some("2026-12-02T10:00:00Z"), now).unwrap(), now - 2_400_000);
        let err = since_ms(Some("yesterday"), now).unwrap_err();
        assert_eq!((err.status, err.code), (StatusCode::BAD_REQUEST, "invalid_field"));
        assert!(err.message.starts_with("since: "), "{}", err.message);
    }
}
