//! The admin listener: `/healthz` (the process answers), `/readyz` (it should get traffic:
//! what GeoDNS health checks and anycast route withdrawal key on) and `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::state::EdgeState;

pub struct AdminApp {
    state: Arc<EdgeState>,
}

impl AdminApp {
    pub fn new(state: Arc<EdgeState>) -> Self {
        AdminApp { state }
    }

    fn route(&self, method: &http::Method, path: &str) -> (StatusCode, &'static str, Vec<u8>) {
        if method != http::Method::GET && method != http::Method::HEAD {
            return json(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "use GET");
        }
        match path {
            "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.state.not_ready_reason() {
                None => (StatusCode::OK, "text/plain", b"ready\n".to_vec()),
                Some(reason) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "text/plain", format!("not ready: {reason}\n").into_bytes())
                }
            },
            "/metrics" => {
                self.state.refresh_gauges();
                (StatusCode::OK, "text/plain; version=0.0.4", self.state.metrics.render().into_bytes())
            }
            _ => json(StatusCode::NOT_FOUND, "not_found", "no such admin endpoint"),
        }
    }
}

fn json(status: StatusCode, code: &str, message: &str) -> (StatusCode, &'static str, Vec<u8>) {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    (status, "application/json", body.into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, content_type, body) = self.route(&req.method, req.uri.path());
        Response::builder()
            .status(status)
            .header("Content-Type", content_type)
            .header("Content-Length", body.len())
            .body(body)
            .unwrap_or_default()
    }
}
