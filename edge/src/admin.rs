//! The admin listener: `/healthz` (the process answers), `/readyz` (it should get traffic:
//! what GeoDNS health checks and anycast route withdrawal key on), `/metrics`, and the local
//! admin API for an edge run without a distributor: prefetch and purge. With `[admin]
//! tokens_env` (or `tokens_file`) the admin API needs `Authorization: Bearer <token>`; the
//! health, readiness and metrics endpoints stay open.

use std::sync::Arc;

use async_trait::async_trait;
use berth_shared::protocol::{InvalidationRequest, PrefetchRequest};
use http::{Method, Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::policy::Policy;
use crate::state::EdgeState;

/// Largest request body the admin API reads.
const MAX_BODY: usize = 1 << 20;

pub struct AdminApp {
    state: Arc<EdgeState>,
    policy: Arc<Policy>,
    /// The accepted bearer tokens; empty when the admin API is open.
    tokens: Vec<String>,
}

type Answer = (StatusCode, &'static str, Vec<u8>);

impl AdminApp {
    pub fn new(state: Arc<EdgeState>, policy: Arc<Policy>) -> Self {
        // Validated at start: unreadable tokens refuse the config.
        let tokens = state.config.admin.tokens().and_then(Result::ok).unwrap_or_default();
        AdminApp { state, policy, tokens }
    }

    /// Whether the request may use the admin API.
    fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        if self.tokens.is_empty() {
            return true;
        }
        let presented = authorization.and_then(|v| v.strip_prefix(b"Bearer ")).unwrap_or_default();
        self.tokens.iter().any(|t| constant_time_eq(t.as_bytes(), presented))
    }

    async fn route(&self, method: &Method, path: &str, body: &[u8]) -> Answer {
        match (method.as_str(), path) {
            ("GET" | "HEAD", "/healthz") => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("GET" | "HEAD", "/readyz") => match self.state.not_ready_reason() {
                None => (StatusCode::OK, "text/plain", b"ready\n".to_vec()),
                Some(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n").into_bytes())
                }
            },
            ("GET" | "HEAD", "/metrics") => {
                self.state.refresh_gauges();
                self.policy.prefetch.refresh_gauges();
                (StatusCode::OK, "text/plain; version=0.0.4", self.state.metrics.render().into_bytes())
            }
            ("POST", "/api/v1/prefetch") => self.prefetch(body),
            ("GET", p) if p.starts_with("/api/v1/prefetch/") => {
                match self.policy.prefetch.get(&p["/api/v1/prefetch/".len()..]) {
                    Some(progress) => ok_json(&progress),
                    None => error(StatusCode::NOT_FOUND, "not_found", "no such prefetch job"),
                }
            }
            ("POST", "/api/v1/purge") => self.purge(body).await,
            ("POST", "/api/v1/drain") => self.drain(false),
            ("POST", "/api/v1/undrain") => self.drain(true),
            (_, "/healthz" | "/readyz" | "/metrics") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET")
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }

    fn prefetch(&self, body: &[u8]) -> Answer {
        let request: PrefetchRequest = match document(body) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let id = format!("local-{:016x}", rand::random::<u64>());
        // On the edge's own port an order is for this edge: regions do not apply.
        let order = match (PrefetchRequest { regions: vec![], ..request }).into_order(id.clone()) {
            Ok(order) => order,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()),
        };
        self.policy.prefetch.enqueue(order);
        (StatusCode::ACCEPTED, "application/json", serde_json::json!({"id": id}).to_string().into_bytes())
    }

    /// Takes this edge out of rotation (or back in): `/readyz` answers at once.
    fn drain(&self, undrain: bool) -> Answer {
        let done = if undrain { self.state.drain.undrain() } else { self.state.drain.drain() };
        match done {
            Ok(()) => ok_json(&serde_json::json!({"drained": !undrain})),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "state_not_kept", &e.to_string()),
        }
    }

    async fn purge(&self, body: &[u8]) -> Answer {
        let request: InvalidationRequest = match document(body) {
            Ok(r) => r,
            Err(answer) => return answer,
        };
        let inv = match (InvalidationRequest { regions: vec![], ..request }).into_invalidation("local".into()) {
            Ok(inv) => inv,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()),
        };
        match self.policy.invalidate(&inv).await {
            Ok(()) => ok_json(&serde_json::json!({"applied": true})),
            Err(e) => error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()),
        }
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Parses a JSON document; a bad or unknown field is named.
fn document<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    berth_shared::protocol::document(body).map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_field", &e.to_string()))
}

fn ok_json(value: &impl serde::Serialize) -> Answer {
    (StatusCode::OK, "application/json", serde_json::to_vec(value).unwrap_or_default())
}

fn error(status: StatusCode, code: &str, message: &str) -> Answer {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    (status, "application/json", body.into_bytes())
}

async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body over 1 MiB"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string())),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let (method, path) = (session.req_header().method.clone(), session.req_header().uri.path().to_owned());
        let authorization = session.req_header().headers.get(http::header::AUTHORIZATION).map(|v| v.as_bytes());
        let open = matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics");
        let (status, content_type, body) = if !open && !self.authorized(authorization) {
            error(StatusCode::UNAUTHORIZED, "unauthorized", "the admin API needs a bearer token ([admin] tokens_env)")
        } else {
            match read_body(session).await {
                Ok(body) => self.route(&method, &path, &body).await,
                Err(answer) => answer,
            }
        };
        let mut response = Response::builder().status(status);
        if status == StatusCode::UNAUTHORIZED {
            response = response.header("WWW-Authenticate", "Bearer realm=\"berth-admin\"");
        }
        response
            .header("Content-Type", content_type)
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
