//! What authorization remembers on the request path, where every request looks it up: tokens
//! whose signature was checked, and which repositories were confirmed to hold which digests.
//! Plain maps behind a read-mostly lock: a lookup hashes 43 bytes of a token's signature, or a
//! digest, and allocates nothing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_shared::{Digest, RepositoryName};
use parking_lot::RwLock;

use super::token::Claims;

/// Entries kept before the maps are swept (expired entries dropped; all, if that is not enough).
const MAX_ENTRIES: usize = 200_000;

/// Tokens already checked, by their signature (the last part of the token).
#[derive(Default)]
pub struct CheckedTokens {
    map: RwLock<HashMap<String, (String, Arc<Claims>)>>,
}

fn signature(token: &str) -> &str {
    token.rsplit('.').next().unwrap_or(token)
}

impl CheckedTokens {
    pub fn get(&self, token: &str) -> Option<Arc<Claims>> {
        let map = self.map.read();
        let (full, claims) = map.get(signature(token))?;
        (full == token).then(|| Arc::clone(claims))
    }

    pub fn insert(&self, token: &str, claims: Arc<Claims>) {
        let mut map = self.map.write();
        if map.len() >= MAX_ENTRIES {
            let now = super::token::now();
            map.retain(|_, (_, c)| c.exp > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(signature(token).to_owned(), (token.to_owned(), claims));
    }
}

/// The repositories confirmed to hold one digest of one upstream, and when.
type Confirmed = Vec<(RepositoryName, Instant)>;

/// When each repository was last confirmed to hold each digest, per upstream.
#[derive(Default)]
pub struct Confirmations {
    map: RwLock<HashMap<(usize, Digest), Confirmed>>,
}

impl Confirmations {
    /// Whether the repository was confirmed to hold the digest less than `within` ago.
    pub fn confirmed_within(
        &self,
        upstream: usize,
        repository: &RepositoryName,
        digest: Digest,
        within: Duration,
    ) -> bool {
        self.map
            .read()
            .get(&(upstream, digest))
            .is_some_and(|repos| repos.iter().any(|(r, at)| r == repository && at.elapsed() < within))
    }

    pub fn confirm(&self, upstream: usize, repository: &RepositoryName, digest: Digest, keep: Duration) {
        let mut map = self.map.write();
        if map.len() >= MAX_ENTRIES {
            map.retain(|_, repos| {
                repos.retain(|(_, at)| at.elapsed() < keep);
                !repos.is_empty()
            });
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        let repos = map.entry((upstream, digest)).or_default();
        match repos.iter_mut().find(|(r, _)| r == repository) {
            Some((_, at)) => *at = Instant::now(),
            None => repos.push((repository.clone(), Instant::now())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_find_a_token_only_by_its_whole_text() {
        let tokens = CheckedTokens::default();
        let claims = Arc::new(Claims { sub: "a".into(), exp: u64::MAX, pull: vec![] });
        tokens.insert("berth1.body.sig", Arc::clone(&claims));
        assert!(tokens.get("berth1.body.sig").is_some());
        assert!(tokens.get("berth1.other.sig").is_none(), "same signature, other body: not the same token");
    }

    #[test]
    fn should_confirm_per_repository_and_age() {
        let c = Confirmations::default();
        let (a, b) = (RepositoryName::parse("team/a").unwrap(), RepositoryName::parse("team/b").unwrap());
        let d = Digest::of(b"x");
        c.confirm(0, &a, d, Duration::from_secs(60));
        assert!(c.confirmed_within(0, &a, d, Duration::from_secs(60)));
        assert!(!c.confirmed_within(0, &b, d, Duration::from_secs(60)));
        assert!(!c.confirmed_within(1, &a, d, Duration::from_secs(60)));
        assert!(!c.confirmed_within(0, &a, d, Duration::ZERO));
    }
}
