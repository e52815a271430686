//! `GET /token` (Basic credentials or none; `scope` and `service` in the query) and the OAuth2
//! form `POST /token` (`grant_type=password`, `username`, `password`, `scope`) that containerd
//! sends: the registry token flow every client speaks, answered with an edge token for the
//! scopes these credentials may pull.

use std::sync::Arc;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::StatusCode;
use pingora::prelude::Session;
use pingora::Result;

use super::respond::{self, header, send_header};
use super::RequestCtx;
use crate::access::GrantError;
use crate::registry::ApiError;
use crate::state::EdgeState;
use crate::upstream::Credentials;

/// Largest form body accepted.
const MAX_FORM: usize = 64 << 10;

/// The parameters of a token request.
#[derive(Debug, Default)]
struct TokenRequest {
    scopes: Vec<String>,
    credentials: Option<Credentials>,
}

pub(super) async fn serve(state: &Arc<EdgeState>, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    ctx.kind = crate::metrics::RequestKind::Other;
    let request = match read_request(session).await {
        Ok(r) => r,
        Err(e) => return respond::error(session, ctx, &e).await,
    };
    let started = std::time::SystemTime::now();
    let live = state.live();
    let granted = live.access.grant(&live.router, &live.upstreams, request.credentials, &request.scopes).await;
    let (token, claims) = match granted {
        Ok(t) => t,
        Err(GrantError::BadCredentials) => {
            state.metrics.auth.with_label_values(&["refused"]).inc();
            let err = ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "invalid credentials");
            return respond::error(session, ctx, &err).await;
        }
        Err(e @ GrantError::Unavailable(_)) => {
            state.metrics.auth.with_label_values(&["unavailable"]).inc();
            let err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", e.to_string())
                .with_header("Retry-After", "5".into());
            return respond::error(session, ctx, &err).await;
        }
    };
    state.metrics.auth.with_label_values(&["issued"]).inc();
    tracing::info!(user = %claims.sub, repositories = claims.pull.len(), "token issued");
    ctx.outcome = crate::metrics::Outcome::Hit;
    let ttl = live.access.token_ttl().as_secs();
    let issued_at = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let body = serde_json::json!({
        "token": token,
        "access_token": token,
        "expires_in": ttl,
        "issued_at": berth_shared::time::rfc3339(issued_at, None),
    })
    .to_string();
    let mut resp = header(200)?;
    resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    send_header(session, ctx, resp, false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await
}

async fn read_request(session: &mut Session) -> Result<TokenRequest, ApiError> {
    let method = session.req_header().method.clone();
    let mut request = TokenRequest::default();
    let query = session.req_header().uri.query().unwrap_or_default().to_owned();
    for (k, v) in form_pairs(&query) {
        if k == "scope" {
            request.scopes.push(v);
        }
    }
    request.credentials = basic_credentials(session)?;
    match method {
        http::Method::GET => Ok(request),
        http::Method::POST => {
            let body = read_body(session).await?;
            let mut form = Credentials { username: String::new(), password: String::new() };
            let mut grant_type = String::new();
            for (k, v) in form_pairs(&String::from_utf8_lossy(&body)) {
                match k.as_str() {
                    "scope" => request.scopes.push(v),
                    "username" => form.username = v,
                    "password" => form.password = v,
                    "grant_type" => grant_type = v,
                    _ => {}
                }
            }
            if grant_type != "password" {
                let message = format!("grant_type {grant_type:?} is not supported (use \"password\" or GET)");
                return Err(ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", message));
            }
            if !form.username.is_empty() {
                request.credentials = Some(form);
            }
            Ok(request)
        }
        other => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", format!("{other} /token"))
            .with_header("Allow", "GET, POST".into())),
    }
}

/// `Authorization: Basic …` of the request, if any.
fn basic_credentials(session: &Session) -> Result<Option<Credentials>, ApiError> {
    let Some(value) = session.req_header().headers.get(http::header::AUTHORIZATION) else { return Ok(None) };
    let bad = || ApiError::new(StatusCode::BAD_REQUEST, "UNAUTHORIZED", "malformed Basic credentials");
    let text = value.to_str().map_err(|_| bad())?;
    let Some(encoded) = text.strip_prefix("Basic ").or_else(|| text.strip_prefix("basic ")) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (username, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials { username: username.to_owned(), password: password.to_owned() }))
}

async fn read_body(session: &mut Session) -> Result<Bytes, ApiError> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_FORM {
                    let message = format!("token request body over {MAX_FORM} bytes");
                    return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID", message));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", "unreadable request body")),
        }
    }
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, then percent-decoding).
fn form_pairs(text: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let spaced = s.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_decode_form_pairs() {
        let pairs = form_pairs("scope=repository%3Ateam%2Fapp%3Apull&username=a+b&password=p%26w&empty");
        assert_eq!(pairs[0], ("scope".into(), "repository:team/app:pull".into()));
        assert_eq!(pairs[1], ("username".into(), "a b".into()));
        assert_eq!(pairs[2], ("password".into(), "p&w".into()));
        assert_eq!(pairs[3], ("empty".into(), String::new()));
    }
}
