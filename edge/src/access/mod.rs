//! Client authorization: who may pull what through this edge, checked on every request for a
//! protected upstream, cache hits included.
//!
//! Per upstream, `anonymous` (everyone), `upstream` (the upstream decides: asked with the
//! client's credentials, the answer cached for `authz_ttl`) or `htpasswd` (the edge's own users
//! and repository grants). Clients log in with the standard registry token flow: a request
//! without a valid edge token gets `401` with a Bearer challenge naming the edge's `/token`,
//! which issues a short-lived signed token ([`token`]) for the repositories the client may pull;
//! later requests are checked locally. Holding a digest is not permission: a digest is served
//! under a repository of a protected upstream only once that repository is known to hold it
//! (the fill came from it, or the upstream confirmed it with a HEAD).

pub mod glob;
pub mod htpasswd;
mod memo;
mod scope;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use berth_shared::{Digest, RepositoryName};
use sha2::Digest as _;

pub use scope::{challenge_scope, parse_scopes};
pub use token::{Claims, KeyError, SigningKey, TokenError};

use crate::config::{AccessMode, EdgeConfig};
use crate::registry::Router;
use crate::upstream::{Credentials, Upstreams, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("auth signing key: {0}")]
    Key(#[from] KeyError),
    #[error("upstream {upstream}: {source}")]
    Htpasswd { upstream: String, source: htpasswd::HtpasswdError },
    #[error("upstream {upstream}: grant {pattern}: {source}")]
    Grant { upstream: String, pattern: String, source: glob::PatternError },
}

/// Why the token endpoint issued nothing.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("invalid credentials")]
    BadCredentials,
    #[error("cannot check access with upstream {0} now")]
    Unavailable(String),
}

/// How one upstream decides access.
struct Policy {
    mode: AccessMode,
    htpasswd: htpasswd::Htpasswd,
    grants: Vec<(String, Vec<glob::Pattern>)>,
}

impl Policy {
    fn new(u: &crate::config::UpstreamConfig) -> Result<Self, AccessError> {
        let mode = u.access_mode();
        let htpasswd = match (&u.htpasswd_file, mode) {
            (Some(path), AccessMode::Htpasswd) => htpasswd::Htpasswd::load(path)
                .map_err(|source| AccessError::Htpasswd { upstream: u.name.clone(), source })?,
            _ => htpasswd::Htpasswd::default(),
        };
        let mut grants = Vec::new();
        for (user, patterns) in &u.grants {
            let parsed = patterns
                .iter()
                .map(|p| {
                    glob::Pattern::parse(p).map_err(|source| AccessError::Grant {
                        upstream: u.name.clone(),
                        pattern: p.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            grants.push((user.clone(), parsed));
        }
        Ok(Policy { mode, htpasswd, grants })
    }

    fn granted(&self, user: &str, repository: &str) -> bool {
        self.grants.iter().any(|(u, patterns)| u == user && patterns.iter().any(|p| p.matches(repository)))
    }
}

/// A decision key: whose credentials (a hash, never the password), which upstream and
/// repository ("" for a login check).
type DecisionKey = (String, usize, String);

/// The edge's authorization state.
pub struct Access {
    key: SigningKey,
    token_ttl: Duration,
    policies: Vec<Policy>,
    decisions: moka::future::Cache<DecisionKey, Verdict>,
    /// How long a confirmation is served without asking again (`authz_ttl`).
    confirm_ttl: Duration,
    /// Repositories confirmed to hold digests: younger than `authz_ttl`, served without asking;
    /// younger than [`KNOWN_FOR`], served while the upstream cannot be asked (it is down), as
    /// tags are served stale.
    confirmations: memo::Confirmations,
    /// Tokens whose signature was checked: a request with the same token skips the HMAC and the
    /// parse (its expiry is still checked every time).
    verified: memo::CheckedTokens,
}

/// How long a confirmation is trusted while the upstream cannot be reached.
const KNOWN_FOR: Duration = Duration::from_secs(24 * 3600);

impl Access {
    /// `previous`: the key in force before a reload, kept when the config names none (tokens
    /// already issued stay valid).
    pub fn new(config: &EdgeConfig, previous: Option<&SigningKey>) -> Result<Self, AccessError> {
        let policies = config.upstream.iter().map(Policy::new).collect::<Result<Vec<_>, _>>()?;
        let key = match (SigningKey::from_config(&config.auth)?, previous) {
            (Some(key), _) => key,
            (None, Some(previous)) => previous.clone(),
            (None, None) => {
                if policies.iter().any(|p| p.mode != AccessMode::Anonymous) {
                    tracing::warn!("no [auth] signing key: tokens are signed with a random key, valid on this edge until it restarts");
                }
                SigningKey::random()
            }
        };
        let ttl = config.auth.authz_ttl.get();
        Ok(Access {
            key,
            token_ttl: config.auth.token_ttl.get(),
            policies,
            decisions: moka::future::Cache::builder().max_capacity(100_000).time_to_live(ttl).build(),
            confirm_ttl: ttl,
            confirmations: memo::Confirmations::default(),
            verified: memo::CheckedTokens::default(),
        })
    }

    /// Whether requests for this upstream need a token.
    pub fn is_protected(&self, upstream: usize) -> bool {
        self.policies.get(upstream).is_some_and(|p| p.mode != AccessMode::Anonymous)
    }

    /// Whether any upstream needs a token (then `/v2/` challenges clients without one, which is
    /// how Docker learns that it must log in).
    pub fn any_protected(&self) -> bool {
        self.policies.iter().any(|p| p.mode != AccessMode::Anonymous)
    }

    /// The key tokens are signed with.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    /// Checks a pull request's `Authorization` header against the route.
    pub fn authorize(
        &self,
        upstream: usize,
        upstream_name: &str,
        repository: &str,
        authorization: Option<&[u8]>,
    ) -> Result<Option<String>, TokenError> {
        if !self.is_protected(upstream) {
            return Ok(None);
        }
        let claims = self.claims(authorization)?;
        if claims.allows(upstream_name, repository) {
            Ok(Some(claims.sub.clone()).filter(|s| !s.is_empty()))
        } else {
            Err(TokenError::Malformed)
        }
    }

    /// The claims of a request's bearer token (checked once per token, then remembered; the
    /// expiry is checked on every request).
    pub fn claims(&self, authorization: Option<&[u8]>) -> Result<Arc<Claims>, TokenError> {
        let value = authorization.and_then(|v| std::str::from_utf8(v).ok()).ok_or(TokenError::Malformed)?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or(TokenError::Malformed)?
            .trim();
        if let Some(claims) = self.verified.get(token) {
            return if claims.exp > token::now() { Ok(claims) } else { Err(TokenError::Expired) };
        }
        let claims = Arc::new(self.key.check(token)?);
        self.verified.insert(token, Arc::clone(&claims));
        Ok(claims)
    }

    /// Issues a token for the scopes these credentials may pull (the token endpoint).
    pub async fn grant(
        &self,
        router: &Router,
        upstreams: &Upstreams,
        credentials: Option<Credentials>,
        scopes: &[String],
    ) -> Result<(String, Claims), GrantError> {
        let user = credentials.as_ref().map(|c| c.username.clone()).unwrap_or_default();
        let mut pull = Vec::new();
        let mut refused_credentials = 0;
        let wanted: Vec<_> = parse_scopes(scopes).filter_map(|name| scope::resolve(router, &name)).collect();
        for (index, repository) in &wanted {
            let Some(upstream) = upstreams.get(*index) else { continue };
            match self.decide(upstreams, *index, credentials.as_ref(), Some(repository)).await? {
                Verdict::Allowed => pull.push((upstream.name.clone(), repository.as_str().to_owned())),
                Verdict::Denied => {}
                Verdict::BadCredentials => refused_credentials += 1,
            }
        }
        if credentials.is_some() {
            // A login (no scope) checks the credentials with every protected upstream until one
            // accepts them.
            let accepted = if wanted.is_empty() { self.login(upstreams, credentials.as_ref()).await? } else { true };
            if !accepted || (refused_credentials > 0 && refused_credentials == wanted.len()) {
                return Err(GrantError::BadCredentials);
            }
        }
        pull.dedup();
        Ok(self.key.issue(&user, pull, self.token_ttl))
    }

    async fn login(&self, upstreams: &Upstreams, credentials: Option<&Credentials>) -> Result<bool, GrantError> {
        for index in (0..self.policies.len()).filter(|i| self.is_protected(*i)) {
            if self.decide(upstreams, index, credentials, None).await? == Verdict::Allowed {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// May these credentials pull `repository` (or, with `None`, log in) on this upstream?
    /// Cached per (credential hash, upstream, repository) for `authz_ttl`.
    async fn decide(
        &self,
        upstreams: &Upstreams,
        index: usize,
        credentials: Option<&Credentials>,
        repository: Option<&RepositoryName>,
    ) -> Result<Verdict, GrantError> {
        let Some(policy) = self.policies.get(index) else { return Ok(Verdict::Denied) };
        let Some(upstream) = upstreams.get(index) else { return Ok(Verdict::Denied) };
        if policy.mode == AccessMode::Anonymous {
            return Ok(Verdict::Allowed);
        }
        let key = (credential_hash(credentials), index, repository.map(|r| r.as_str().to_owned()).unwrap_or_default());
        if let Some(verdict) = self.decisions.get(&key).await {
            return Ok(verdict);
        }
        let verdict = match policy.mode {
            AccessMode::Anonymous => Verdict::Allowed,
            AccessMode::Htpasswd => {
                let Some(c) = credentials else { return Ok(Verdict::Denied) };
                let (htpasswd, user, password) = (policy.htpasswd.clone(), c.username.clone(), c.password.clone());
                let valid =
                    crate::cache::blocking(move || Ok(htpasswd.verify(&user, &password))).await.unwrap_or(false);
                match (valid, repository) {
                    (false, _) => Verdict::BadCredentials,
                    (true, None) => Verdict::Allowed,
                    (true, Some(r)) if policy.granted(&c.username, r.as_str()) => Verdict::Allowed,
                    (true, Some(_)) => Verdict::Denied,
                }
            }
            AccessMode::Upstream => upstream.check_access(credentials.cloned(), repository).await.map_err(|e| {
                tracing::warn!(upstream = %upstream.name, error = %e, "cannot check access with the upstream");
                GrantError::Unavailable(upstream.name.clone())
            })?,
        };
        self.decisions.insert(key, verdict).await;
        Ok(verdict)
    }

    /// Whether the digest may be served under this repository without asking the upstream:
    /// always for an anonymous upstream, else when the repository is known to hold it.
    pub fn holds(&self, upstream: usize, repository: &RepositoryName, digest: Digest) -> bool {
        !self.is_protected(upstream)
            || self.confirmations.confirmed_within(upstream, repository, digest, self.confirm_ttl)
    }

    /// Whether the repository was confirmed to hold the digest within the last day (what is
    /// served while the upstream cannot be asked).
    pub fn held_before(&self, upstream: usize, repository: &RepositoryName, digest: Digest) -> bool {
        self.confirmations.confirmed_within(upstream, repository, digest, KNOWN_FOR)
    }

    /// Records that the upstream showed this repository to hold the digest.
    pub fn confirm(&self, upstream: usize, repository: &RepositoryName, digest: Digest) {
        if self.is_protected(upstream) {
            self.confirmations.confirm(upstream, repository, digest, KNOWN_FOR);
        }
    }
}

/// A hash standing for the credentials in cache keys ("" for none).
fn credential_hash(credentials: Option<&Credentials>) -> String {
    credentials.map_or_else(String::new, |c| {
        let mut h = sha2::Sha256::new();
        h.update(c.username.as_bytes());
        h.update([0]);
        h.update(c.password.as_bytes());
        hex::encode(h.finalize())
    })
}

/// The shared access state.
pub type SharedAccess = Arc<Access>;
