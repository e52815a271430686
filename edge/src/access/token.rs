//! The edge's own tokens: `berth1.<claims>.<mac>`, claims as base64url JSON, the MAC an
//! HMAC-SHA256 over the claims with the signing key. A token names the repositories it may pull
//! (upstream and repository) and when it expires; checking one costs a MAC and a small JSON
//! parse, no upstream round trip.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const PREFIX: &str = "berth1.";
/// Tokens longer than this are refused before any work.
const MAX_TOKEN: usize = 16 << 10;
/// Fewest bytes a signing key may have.
pub const MIN_KEY: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// The user it was issued to ("" for anonymous).
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// (upstream name, repository) pairs it may pull.
    pub pull: Vec<(String, String)>,
}

impl Claims {
    pub fn allows(&self, upstream: &str, repository: &str) -> bool {
        self.pull.iter().any(|(u, r)| u == upstream && r == repository)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token of this edge")]
    Malformed,
    #[error("token signature does not verify")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Unreadable(String),
    #[error("the signing key has {0} bytes; at least {MIN_KEY} are needed")]
    TooShort(usize),
}

/// The key that signs and checks tokens.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

/// Seconds since the Unix epoch.
pub(super) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl SigningKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, KeyError> {
        if bytes.len() < MIN_KEY {
            return Err(KeyError::TooShort(bytes.len()));
        }
        Ok(SigningKey(bytes))
    }

    /// A random key, for an edge that was given none.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        SigningKey(bytes)
    }

    /// The key `[auth]` names; `Ok(None)` when it names none.
    pub fn from_config(auth: &crate::config::AuthConfig) -> Result<Option<Self>, KeyError> {
        if auth.signing_key_file.is_none() && auth.signing_key_env.is_none() {
            return Ok(None);
        }
        let env = auth.signing_key_env.as_deref().unwrap_or_default();
        let text = berth_shared::secret::read(auth.signing_key_file.as_deref(), env).map_err(KeyError::Unreadable)?;
        SigningKey::new(text.into_bytes()).map(Some)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// Issues a token for `claims.pull`, valid for `ttl`.
    pub fn issue(&self, sub: &str, pull: Vec<(String, String)>, ttl: Duration) -> (String, Claims) {
        let claims = Claims { sub: sub.to_owned(), exp: now() + ttl.as_secs(), pull };
        let json = serde_json::to_vec(&claims).unwrap_or_default();
        let body = URL_SAFE_NO_PAD.encode(json);
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        (format!("{PREFIX}{body}.{sig}"), claims)
    }

    /// Checks a token's signature and expiry and returns its claims.
    pub fn check(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN {
            return Err(TokenError::Malformed);
        }
        let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        let (body, sig) = rest.split_once('.').ok_or(TokenError::Malformed)?;
        let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| TokenError::Malformed)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.exp <= now() {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::new(vec![b; 32]).unwrap()
    }

    #[test]
    fn should_issue_and_check_a_token() {
        let (token, claims) =
            key(1).issue("alice", vec![("docker.io".into(), "team/app".into())], Duration::from_secs(60));
        let checked = key(1).check(&token).unwrap();
        assert_eq!(checked, claims);
        assert!(checked.allows("docker.io", "team/app"));
        assert!(!checked.allows("docker.io", "team/other"));
        assert!(!checked.allows("ghcr.io", "team/app"));
    }

    #[test]
    fn should_refuse_another_key_a_changed_claim_an_expired_token_and_garbage() {
        let (token, _) = key(1).issue("alice", vec![("u".into(), "r".into())], Duration::from_secs(60));
        assert_eq!(key(2).check(&token), Err(TokenError::BadSignature));
        let forged_claims = Claims { sub: "alice".into(), exp: u64::MAX, pull: vec![("u".into(), "secret".into())] };
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged_claims).unwrap());
        let sig = token.rsplit('.').next().unwrap();
        assert_eq!(key(1).check(&format!("{PREFIX}{forged_body}.{sig}")), Err(TokenError::BadSignature));
        let (expired, _) = key(1).issue("alice", vec![], Duration::ZERO);
        assert_eq!(key(1).check(&expired), Err(TokenError::Expired));
        for bad in ["", "berth1.", "berth1.x", "bearer", "berth1.!!.??", &"a".repeat(MAX_TOKEN + 1)] {
            assert!(key(1).check(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn should_refuse_short_keys() {
        assert!(matches!(SigningKey::new(vec![0; 31]), Err(KeyError::TooShort(31))));
    }
}
