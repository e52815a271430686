//! The registries an edge mirrors, and how it talks to them: a pooled hyper client over rustls,
//! with timeouts, the bearer-token dance and redirects to blob storage.

mod auth;
mod body;
mod client;
pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use berth_shared::RepositoryName;
use http::{HeaderMap, Method, StatusCode};

pub use auth::{AuthError, Credentials};
pub use body::UpstreamBody;
pub use client::{ClientError, HttpClient};

use crate::config::UpstreamConfig;

/// Why a request to an upstream registry failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {upstream}: {source}")]
    Client { upstream: String, source: ClientError },
    #[error("upstream {upstream}: authentication failed: {source}")]
    Auth { upstream: String, source: AuthError },
    #[error("upstream {upstream} answered {status}")]
    Status { upstream: String, status: StatusCode, retry_after: Option<String> },
    /// A bound of this upstream (`max_fills`, `max_connections`) stayed full for `queue_timeout`.
    #[error("upstream {upstream}: {bound} all in use")]
    Busy { upstream: String, bound: &'static str },
}

impl UpstreamError {
    /// The configured name of the upstream that failed.
    pub fn upstream(&self) -> &str {
        match self {
            UpstreamError::Client { upstream, .. }
            | UpstreamError::Auth { upstream, .. }
            | UpstreamError::Status { upstream, .. }
            | UpstreamError::Busy { upstream, .. } => upstream,
        }
    }

    /// The upstream's status, if it answered with an error status.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            UpstreamError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the upstream could not be reached or failed (as opposed to answering "no").
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Client { .. } => true,
            UpstreamError::Auth { source, .. } => source.is_unavailable(),
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamError::Busy { .. } => true,
        }
    }
}

/// The upstream's answer to "may these credentials pull this repository (or log in)?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// The credentials are valid (or absent) but may not pull the repository.
    Denied,
    /// The upstream refused the credentials themselves.
    BadCredentials,
}

/// Timeouts for one upstream.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub body_stall: Duration,
}

/// A successful (2xx) upstream response whose body has not been read yet.
#[derive(Debug)]
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
    /// Whether the response came from the upstream's own origin (not a redirect target).
    pub from_origin: bool,
    /// The upstream connection slot this response holds until it is dropped.
    pub(crate) slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl UpstreamResponse {
    pub fn content_length(&self) -> Option<u64> {
        header_str(&self.headers, http::header::CONTENT_LENGTH)?.parse().ok()
    }

    pub fn header(&self, name: impl http::header::AsHeaderName) -> Option<&str> {
        header_str(&self.headers, name)
    }
}

fn header_str(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok()
}

/// One configured upstream registry.
pub struct Upstream {
    /// Position in the config (the router's and the access policy's index).
    pub index: usize,
    /// `max_fills` and `max_connections`.
    fill_slots: Arc<tokio::sync::Semaphore>,
    request_slots: Arc<tokio::sync::Semaphore>,
    metrics: Arc<crate::metrics::Metrics>,
    pub name: String,
    pub config: UpstreamConfig,
    base: http::Uri,
    client: HttpClient,
    auth: auth::Authenticator,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("name", &self.name).field("base", &self.base).finish()
    }
}

impl Upstream {
    /// Builds the client for one upstream; credentials are read (file or environment) here.
    pub fn new(
        index: usize,
        config: &UpstreamConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Self, ClientError> {
        let base: http::Uri = config.url.parse().map_err(|_| ClientError::BadUrl(config.url.clone()))?;
        let timeouts = Timeouts {
            connect: config.connect_timeout.get(),
            first_byte: config.first_byte_timeout.get(),
            body_stall: config.body_stall_timeout.get(),
        };
        let guard = guard::Guard::new(base.host().unwrap_or_default(), config.allow_private_networks.clone());
        let client = HttpClient::new(timeouts, config.ca_file.as_deref(), guard)?;
        let credentials = config.username.as_ref().map(|user| Credentials {
            username: user.clone(),
            // Validated at start: a password that cannot be read is refused there.
            password: config.password().and_then(Result::ok).unwrap_or_default(),
        });
        Ok(Upstream {
            index,
            fill_slots: Arc::new(tokio::sync::Semaphore::new(config.max_fills.max(1))),
            request_slots: Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1))),
            metrics,
            name: config.name.clone(),
            config: config.clone(),
            auth: auth::Authenticator::new(client.clone(), credentials, base.scheme_str() == Some("https")),
            base,
            client,
        })
    }

    /// `GET` or `HEAD` of `/v2/<repository>/<kind>/<reference>` with the bearer-token dance;
    /// only 2xx responses come back as `Ok`.
    pub async fn fetch(
        &self,
        method: Method,
        repository: &RepositoryName,
        path: &str,
        accept: Option<&str>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        self.fetch_with(method, repository, path, client::Extra { accept, range: None, peer: None }).await
    }

    /// `GET` of a blob from another edge of the region, with the signed peer header, from
    /// `offset` (a `Range` request when not 0).
    pub async fn fetch_peer(
        &self,
        repository: &RepositoryName,
        path: &str,
        peer_header: &str,
        offset: u64,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let range = (offset > 0).then(|| format!("bytes={offset}-"));
        let extra = client::Extra { accept: None, range: range.as_deref(), peer: Some(peer_header) };
        self.fetch_with(Method::GET, repository, path, extra).await
    }

    /// `GET` of the bytes `first..=last` of a blob (to its end without `last`); the answer may
    /// be a `206` or a whole `200` (an upstream that ignores ranges): the caller checks.
    pub async fn fetch_range(
        &self,
        repository: &RepositoryName,
        path: &str,
        first: u64,
        last: Option<u64>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let range = match last {
            Some(last) => format!("bytes={first}-{last}"),
            None => format!("bytes={first}-"),
        };
        let extra = client::Extra { accept: None, range: Some(&range), peer: None };
        self.fetch_with(Method::GET, repository, path, extra).await
    }

    async fn fetch_with(
        &self,
        method: Method,
        repository: &RepositoryName,
        path: &str,
        extra: client::Extra<'_>,
    ) -> Result<UpstreamResponse, UpstreamError> {
        let uri = self.with_ns(format!("{}/v2/{}/{}", self.base_str(), repository, path));
        let scope = format!("repository:{repository}:pull");
        let slot = self.slot(&self.request_slots, "upstream_connections").await?;
        let mut retried = false;
        loop {
            let authorization = self.auth.header_for(&scope).await.map_err(|source| self.auth_error(source))?;
            let response = self
                .client
                .send_with(method.clone(), &uri, extra, authorization.as_ref())
                .await
                .map_err(|source| UpstreamError::Client { upstream: self.name.clone(), source })?;
            // Only the upstream itself may ask for its credentials: a challenge from a redirect
            // target (blob storage, a CDN) must never send them elsewhere.
            if response.status == StatusCode::UNAUTHORIZED && !retried && response.from_origin {
                retried = true;
                let challenge = response.headers.get(http::header::WWW_AUTHENTICATE).cloned();
                if self.auth.on_challenge(&scope, challenge.as_ref()).await.map_err(|s| self.auth_error(s))? {
                    continue;
                }
            }
            if !response.status.is_success() {
                let retry_after = header_str(&response.headers, http::header::RETRY_AFTER).map(str::to_owned);
                return Err(UpstreamError::Status {
                    upstream: self.name.clone(),
                    status: response.status,
                    retry_after,
                });
            }
            let mut response = response;
            response.slot = Some(slot);
            return Ok(response);
        }
    }

    /// A slot of `slots` (waiting up to `queue_timeout`); `Busy` when none frees up in time.
    async fn slot(
        &self,
        slots: &Arc<tokio::sync::Semaphore>,
        bound: &'static str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, UpstreamError> {
        if let Ok(permit) = Arc::clone(slots).try_acquire_owned() {
            return Ok(permit);
        }
        let wait = self.config.queue_timeout.get();
        match tokio::time::timeout(wait, Arc::clone(slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => {
                self.metrics.refused.with_label_values(&[bound]).inc();
                Err(UpstreamError::Busy { upstream: self.name.clone(), bound })
            }
        }
    }

    /// A fill slot (`max_fills`): waiting up to `queue_timeout`, or as long as it takes when
    /// `patient` (prefetch, whose own number is bounded).
    pub async fn fill_slot(&self, patient: bool) -> Result<tokio::sync::OwnedSemaphorePermit, UpstreamError> {
        if patient {
            return Arc::clone(&self.fill_slots)
                .acquire_owned()
                .await
                .map_err(|_| UpstreamError::Busy { upstream: self.name.clone(), bound: "fills" });
        }
        self.slot(&self.fill_slots, "fills").await
    }

    /// Asks the upstream, with the client's credentials (or none), whether they may pull
    /// `repository` (`GET /v2/<repository>/tags/list?n=1`, which needs pull access), or with
    /// `None` whether they may log in (`GET /v2/`); through the upstream's own token realm or
    /// Basic auth, exactly as a client would.
    pub async fn check_access(
        &self,
        credentials: Option<Credentials>,
        repository: Option<&RepositoryName>,
    ) -> Result<Verdict, UpstreamError> {
        let has_credentials = credentials.is_some();
        let _slot = self.slot(&self.request_slots, "upstream_connections").await?;
        let auth = auth::Authenticator::new(self.client.clone(), credentials, self.base.scheme_str() == Some("https"));
        let (uri, scope) = match repository {
            Some(r) => {
                (self.with_ns(format!("{}/v2/{r}/tags/list?n=1", self.base_str())), format!("repository:{r}:pull"))
            }
            None => (self.with_ns(format!("{}/v2/", self.base_str())), String::new()),
        };
        let mut retried = false;
        loop {
            let authorization = match auth.header_for(&scope).await {
                Ok(a) => a,
                Err(AuthError::TokenStatus(s)) if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
                    return Ok(if has_credentials { Verdict::BadCredentials } else { Verdict::Denied });
                }
                Err(source) => return Err(self.auth_error(source)),
            };
            let response = self
                .client
                .send(Method::GET, &uri, Some("application/json"), authorization.as_ref())
                .await
                .map_err(|source| UpstreamError::Client { upstream: self.name.clone(), source })?;
            let status = response.status;
            if status == StatusCode::UNAUTHORIZED && !retried && response.from_origin {
                retried = true;
                let challenge = response.headers.get(http::header::WWW_AUTHENTICATE).cloned();
                if auth.on_challenge(&scope, challenge.as_ref()).await.map_err(|s| self.auth_error(s))? {
                    continue;
                }
            }
            return match status.as_u16() {
                // 404: the repository does not exist but the credentials passed (nothing to serve).
                200..=299 | 404 => Ok(Verdict::Allowed),
                401 if repository.is_none() && has_credentials => Ok(Verdict::BadCredentials),
                401 | 403 => Ok(Verdict::Denied),
                _ => Err(UpstreamError::Status { upstream: self.name.clone(), status, retry_after: None }),
            };
        }
    }

    /// A parent edge's requests carry `ns=<name>`: the parent routes them to its upstream of
    /// the same name (containerd's convention for mirrors).
    fn with_ns(&self, uri: String) -> String {
        if !self.config.parent {
            return uri;
        }
        let separator = if uri.contains('?') { '&' } else { '?' };
        format!("{uri}{separator}ns={}", self.name)
    }

    fn base_str(&self) -> String {
        let scheme = self.base.scheme_str().unwrap_or("https");
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or_default();
        format!("{scheme}://{authority}")
    }

    fn auth_error(&self, source: AuthError) -> UpstreamError {
        UpstreamError::Auth { upstream: self.name.clone(), source }
    }
}

/// All configured upstreams, in config order (the router's indexes point into this).
#[derive(Debug, Clone)]
pub struct Upstreams(Arc<Vec<Arc<Upstream>>>);

impl Upstreams {
    pub fn new(configs: &[UpstreamConfig], metrics: &Arc<crate::metrics::Metrics>) -> Result<Self, ClientError> {
        let list = configs
            .iter()
            .enumerate()
            .map(|(i, c)| Upstream::new(i, c, Arc::clone(metrics)).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Upstreams(Arc::new(list)))
    }

    pub fn get(&self, index: usize) -> Option<&Arc<Upstream>> {
        self.0.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Upstream>> {
        self.0.iter()
    }
}
