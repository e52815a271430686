//! The peer header: a request one edge of a region sends another carries
//! `X-Berth-Peer: <sender> <unix seconds> <hex HMAC-SHA256>` over the sender, the time and the
//! request's path and query, keyed with the region's shared key. It proves the request comes
//! from the region (the receiver then skips client authorization: the sender authorized its
//! client) and marks it as a hop: a request that came from a peer is never sent to another.
//! A captured header is good for that one path for a minute.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header's name.
pub const PEER_HEADER: http::HeaderName = http::HeaderName::from_static("x-berth-peer");

/// How far a peer header's time may be from the receiver's clock.
const SKEW_SECONDS: u64 = 60;

/// The region's shared key.
#[derive(Clone)]
pub struct RegionKey(Vec<u8>);

impl std::fmt::Debug for RegionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RegionKey(..)")
    }
}

/// Why a peer header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    #[error("the peer header is malformed")]
    Malformed,
    #[error("the peer header is {0} s away from this edge's clock (at most {SKEW_SECONDS} s)")]
    Skewed(u64),
    #[error("the peer header is not signed with this region's key")]
    BadSignature,
    #[error("this edge is in no region cluster: it takes no peer requests")]
    NoCluster,
}

impl RegionKey {
    /// Shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    pub fn new(key: &str) -> Result<Self, String> {
        if key.len() < Self::MIN_LEN {
            return Err(format!("the region key must be at least {} bytes", Self::MIN_LEN));
        }
        Ok(RegionKey(key.as_bytes().to_vec()))
    }

    fn mac(&self, sender: &str, time: u64, path_and_query: &str) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(format!("berth-peer\n{sender}\n{time}\n{path_and_query}").as_bytes());
        mac
    }

    /// The header value for a request from `sender` to `path_and_query`, at `now` (Unix seconds).
    pub fn sign(&self, sender: &str, now: u64, path_and_query: &str) -> String {
        let tag = self.mac(sender, now, path_and_query).finalize().into_bytes();
        format!("{sender} {now} {}", hex::encode(tag))
    }

    /// The sender named by a valid header for `path_and_query`, received at `now`.
    pub fn verify(&self, value: &str, now: u64, path_and_query: &str) -> Result<String, HopError> {
        let mut parts = value.split(' ');
        let (Some(sender), Some(time), Some(tag), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HopError::Malformed);
        };
        let time: u64 = time.parse().map_err(|_| HopError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| HopError::Malformed)?;
        let skew = now.abs_diff(time);
        if skew > SKEW_SECONDS {
            return Err(HopError::Skewed(skew));
        }
        self.mac(sender, time, path_and_query).verify_slice(&tag).map_err(|_| HopError::BadSignature)?;
        Ok(sender.to_owned())
    }
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/v2/team/app/blobs/sha256:00?ns=docker.io";

    #[test]
    fn should_accept_its_own_signature_and_name_the_sender() {
        let key = RegionKey::new("a-region-key-of-32-bytes-or-so!!").unwrap();
        let value = key.sign("http://edge-2:5000", 1000, PATH);
        assert_eq!(key.verify(&value, 1030, PATH), Ok("http://edge-2:5000".to_owned()));
    }

    #[test]
    fn should_refuse_another_key_another_path_an_old_header_and_garbage() {
        let key = RegionKey::new("a-region-key-of-32-bytes-or-so!!").unwrap();
        let other = RegionKey::new("another-region-key-entirely-0000").unwrap();
        let value = key.sign("http://edge-2:5000", 1000, PATH);
        assert_eq!(other.verify(&value, 1000, PATH), Err(HopError::BadSignature));
        assert_eq!(key.verify(&value, 1000, "/v2/team/app/blobs/sha256:11"), Err(HopError::BadSignature));
        assert_eq!(key.verify(&value, 1061, PATH), Err(HopError::Skewed(61)));
        assert_eq!(key.verify("http://edge-2:5000 1000", 1000, PATH), Err(HopError::Malformed));
        assert_eq!(key.verify("x 1000 not-hex", 1000, PATH), Err(HopError::Malformed));
        let forged = value.replace("edge-2", "edge-9");
        assert_eq!(key.verify(&forged, 1000, PATH), Err(HopError::BadSignature), "the sender is signed too");
    }

    #[test]
    fn should_refuse_a_short_key() {
        assert!(RegionKey::new("short").is_err());
    }
}
