//! Upstream authentication: Basic, and the bearer-token dance (`WWW-Authenticate: Bearer
//! realm,service,scope` → token endpoint → `Authorization: Bearer`), tokens cached until expiry.
//! Credentials go only to the upstream and the token realm it names, and are never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use parking_lot::RwLock;

use super::client::{ClientError, HttpClient};

/// A token is refreshed this long before the upstream says it expires.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
/// Lifetime assumed when a token response names none (the Docker token spec's default).
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Token responses larger than this are refused.
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

/// A user name and password for one upstream. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

impl Credentials {
    fn basic_header(&self) -> Option<HeaderValue> {
        let raw = format!("{}:{}", self.username, self.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
        value.set_sensitive(true);
        Some(value)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token realm {0:?} is not an https URL (credentials are only sent over TLS to a TLS upstream's realm)")]
    BadRealm(String),
    #[error("token endpoint unreachable: {0}")]
    Unreachable(ClientError),
    #[error("token endpoint answered {0}")]
    TokenStatus(StatusCode),
    #[error("token endpoint sent an unusable response: {0}")]
    BadTokenResponse(String),
}

impl AuthError {
    pub fn is_unavailable(&self) -> bool {
        match self {
            AuthError::Unreachable(_) => true,
            AuthError::TokenStatus(s) => s.is_server_error(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    /// No challenge seen yet: requests go without credentials.
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Debug)]
struct Token {
    header: HeaderValue,
    refresh_at: Instant,
}

/// Authentication state for one upstream.
pub(super) struct Authenticator {
    client: HttpClient,
    credentials: Option<Credentials>,
    /// The upstream is reached over TLS: credentials never go to a plain-HTTP realm.
    tls_only: bool,
    scheme: RwLock<Scheme>,
    tokens: moka::future::Cache<String, Arc<Token>>,
}

impl Authenticator {
    pub(super) fn new(client: HttpClient, credentials: Option<Credentials>, tls_only: bool) -> Self {
        let tokens =
            moka::future::Cache::builder().max_capacity(10_000).time_to_live(Duration::from_secs(3600)).build();
        Authenticator { client, credentials, tls_only, scheme: RwLock::new(Scheme::Anonymous), tokens }
    }

    /// The `Authorization` header for a request needing `scope`, fetching a token if the
    /// upstream is known to want one.
    pub(super) async fn header_for(&self, scope: &str) -> Result<Option<HeaderValue>, AuthError> {
        let scheme = self.scheme.read().clone();
        match scheme {
            Scheme::Anonymous => Ok(None),
            Scheme::Basic => Ok(self.credentials.as_ref().and_then(Credentials::basic_header)),
            Scheme::Bearer { realm, service } => self.token(&realm, service.as_deref(), scope).await.map(Some),
        }
    }

    /// Learns from a 401's `WWW-Authenticate`; returns whether a retry may now succeed.
    pub(super) async fn on_challenge(&self, scope: &str, challenge: Option<&HeaderValue>) -> Result<bool, AuthError> {
        let Some(challenge) = challenge.and_then(|c| c.to_str().ok()) else {
            return Ok(false);
        };
        let (kind, params) = parse_challenge(challenge);
        match kind.to_ascii_lowercase().as_str() {
            "bearer" => {
                let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).unwrap_or_default();
                let plain_ok = !self.tls_only || self.credentials.is_none();
                if !(realm.starts_with("https://") || (plain_ok && realm.starts_with("http://"))) {
                    return Err(AuthError::BadRealm(realm));
                }
                let service = params.iter().find(|(k, _)| k == "service").map(|(_, v)| v.clone());
                *self.scheme.write() = Scheme::Bearer { realm, service };
                self.tokens.invalidate(scope).await;
                Ok(true)
            }
            "basic" if self.credentials.is_some() => {
                let was_basic = *self.scheme.read() == Scheme::Basic;
                *self.scheme.write() = Scheme::Basic;
                Ok(!was_basic)
            }
            _ => Ok(false),
        }
    }

    async fn token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<HeaderValue, AuthError> {
        for _ in 0..2 {
            let token = self
                .tokens
                .try_get_with(scope.to_owned(), self.fetch_token(realm, service, scope))
                .await
                .map_err(|e: Arc<AuthError>| (*e).clone())?;
            if Instant::now() < token.refresh_at {
                return Ok(token.header.clone());
            }
            self.tokens.invalidate(scope).await;
        }
        Err(AuthError::BadTokenResponse("token expired as soon as it was issued".into()))
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Arc<Token>, AuthError> {
        // A login check asks for no scope at all.
        let mut params = Vec::new();
        if !scope.is_empty() {
            params.push(format!("scope={}", encode(scope)));
        }
        if let Some(service) = service {
            params.push(format!("service={}", encode(service)));
        }
        let separator = if realm.contains('?') { '&' } else { '?' };
        let url = if params.is_empty() { realm.to_owned() } else { format!("{realm}{separator}{}", params.join("&")) };
        let basic = self.credentials.as_ref().and_then(Credentials::basic_header);
        let started = Instant::now();
        let mut response = self
            .client
            .send(Method::GET, &url, Some("application/json"), basic.as_ref())
            .await
            .map_err(AuthError::Unreachable)?;
        if !response.status.is_success() {
            return Err(AuthError::TokenStatus(response.status));
        }
        let body = response
            .body
            .collect_limited(MAX_TOKEN_RESPONSE)
            .await
            .map_err(AuthError::Unreachable)?
            .ok_or_else(|| AuthError::BadTokenResponse("response too large".into()))?;
        parse_token(&body, started)
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

fn parse_token(body: &[u8], started: Instant) -> Result<Arc<Token>, AuthError> {
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|e| AuthError::BadTokenResponse(format!("not JSON: {e}")))?;
    let token = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AuthError::BadTokenResponse("no token in response".into()))?;
    let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| AuthError::BadTokenResponse("token is not a valid header value".into()))?;
    header.set_sensitive(true);
    let lifetime = parsed.expires_in.map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
    let refresh_at = started + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN.min(lifetime / 2));
    Ok(Arc::new(Token { header, refresh_at }))
}

/// Splits `Bearer realm="...",service="...",scope="..."` into the scheme and its parameters.
fn parse_challenge(value: &str) -> (String, Vec<(String, String)>) {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.push((key, val.trim().to_owned()));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_owned(), params)
}

fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_a_docker_hub_challenge() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(params[0], ("realm".into(), "https://auth.docker.io/token".into()));
        assert_eq!(params[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(params[2], ("scope".into(), "repository:library/nginx:pull".into()));
    }

    #[test]
    fn should_parse_unquoted_and_spaced_parameters() {
        let (scheme, params) = parse_challenge(r#"Basic realm=basic-realm , charset="UTF-8""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(params, vec![("realm".into(), "basic-realm".into()), ("charset".into(), "UTF-8".into())]);
    }

    #[test]
    fn should_read_token_and_access_token_with_expiry() {
        let now = Instant::now();
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, now).unwrap();
        assert_eq!(t.header.to_str().unwrap(), "Bearer abc");
        assert_eq!(t.refresh_at, now + Duration::from_secs(295));
        let t = parse_token(br#"{"access_token":"xyz"}"#, now).unwrap();
        assert_eq!(t.refresh_at, now + Duration::from_secs(55));
        assert!(parse_token(br#"{"token":""}"#, now).is_err());
        assert!(parse_token(b"<html>", now).is_err());
    }

    #[test]
    fn should_never_print_a_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
