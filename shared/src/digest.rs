//! Content digests (`sha256:<64 lowercase hex>`), the keys of everything Berth caches.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A sha256 content digest. The only algorithm Berth accepts: it is the one every registry uses,
/// and a cache must be able to verify every key it serves.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

/// Why a string is not a digest Berth can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <algorithm>:<encoded>")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    #[error("sha256 digest must be 64 lowercase hex characters, got {0:?}")]
    BadEncoding(String),
}

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// A digest from a finished sha256 state.
    pub fn from_sha256(hasher: Sha256) -> Self {
        Digest(hasher.finalize().into())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// Parses the 64-character lowercase hex form (without `sha256:`), as found in file names.
    pub fn from_hex(hex_str: &str) -> Result<Self, DigestError> {
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex_str.len() != 64 || !hex_str.bytes().all(is_lower_hex) {
            return Err(DigestError::BadEncoding(hex_str.to_owned()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_str, &mut out).map_err(|_| DigestError::BadEncoding(hex_str.to_owned()))?;
        Ok(Digest(out))
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The 64-character lowercase hex encoding.
    pub fn hex(&self) -> String {
        self.text().as_str()[7..].to_owned()
    }

    /// `sha256:<hex>` without allocating.
    pub fn text(&self) -> DigestText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 71];
        buf[..7].copy_from_slice(b"sha256:");
        for (i, b) in self.0.iter().enumerate() {
            buf[7 + 2 * i] = HEX[(b >> 4) as usize];
            buf[8 + 2 * i] = HEX[(b & 0xf) as usize];
        }
        DigestText(buf)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s.split_once(':').ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        if !is_algorithm(algorithm) || !is_encoded(encoded) {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(algorithm.to_owned()));
        }
        Digest::from_hex(encoded)
    }
}

/// OCI image-spec grammar: `algorithm-component (algorithm-separator algorithm-component)*`,
/// components `[a-z0-9]+`, separators `[+._-]`.
fn is_algorithm(s: &str) -> bool {
    !s.is_empty()
        && s.split(['+', '.', '_', '-'])
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// OCI image-spec grammar: `[a-zA-Z0-9=_-]+`.
fn is_encoded(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
}

/// The text form of a digest, on the stack.
#[derive(Clone, Copy)]
pub struct DigestText([u8; 71]);

impl DigestText {
    pub fn as_str(&self) -> &str {
        // The buffer holds only ASCII written by `Digest::text`.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn should_parse_and_print_a_sha256_digest() {
        let d: Digest = EMPTY.parse().unwrap();
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d, Digest::of(b""));
    }

    #[test]
    fn should_reject_uppercase_hex() {
        let upper = EMPTY.replace('e', "E").replace("sha256:".to_uppercase().as_str(), "sha256:");
        let upper = format!("sha256:{}", &upper[7..]);
        assert!(matches!(upper.parse::<Digest>(), Err(DigestError::BadEncoding(_))));
    }

    #[test]
    fn should_reject_wrong_length() {
        assert!(matches!("sha256:abcd".parse::<Digest>(), Err(DigestError::BadEncoding(_))));
    }

    #[test]
    fn should_reject_unknown_algorithm() {
        let d = format!("sha512:{}", "a".repeat(128));
        assert_eq!(d.parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("sha512".into())));
        let d = format!("md5:{}", "a".repeat(32));
        assert_eq!(d.parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("md5".into())));
    }

    #[test]
    fn should_reject_malformed_digests() {
        for bad in ["", "sha256", "sha256:", ":abc", "SHA256:abc", "sha256:..", "sha256:%2e", "sha256:/x", "sha 256:ab"]
        {
            assert!(matches!(bad.parse::<Digest>(), Err(DigestError::Malformed(_))), "{bad}");
        }
    }

    #[test]
    fn should_round_trip_through_serde() {
        let d: Digest = EMPTY.parse().unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{EMPTY}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
    }
}
