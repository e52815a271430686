//! Content digests (`sha256:<64 hex>` or `sha512:<128 hex>`, lowercase), the keys of everything
//! Berth caches.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// The digest algorithms Berth accepts: the two the OCI image spec registers. Both are verified
/// on every fill: a cache must be able to verify every key it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Bytes of a digest of this algorithm.
    pub fn len(self) -> usize {
        match self {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        }
    }

    pub fn is_empty(self) -> bool {
        false
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }
}

/// A content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: Algorithm,
    /// The digest bytes; a sha256 digest uses the first 32, the rest stay zero.
    bytes: [u8; 64],
}

/// Why a string is not a digest Berth can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} is not of the form <algorithm>:<encoded>")]
    Malformed(String),
    #[error("digest algorithm {0:?} is not supported (sha256 and sha512 are)")]
    UnsupportedAlgorithm(String),
    #[error("digest must be lowercase hex of the algorithm's length (64 for sha256, 128 for sha512), got {0:?}")]
    BadEncoding(String),
}

/// A running hash of the algorithm of the digest it will be compared with.
#[derive(Clone)]
pub enum DigestHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl DigestHasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => DigestHasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => DigestHasher::Sha512(Sha512::new()),
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        match self {
            DigestHasher::Sha256(h) => h.update(data),
            DigestHasher::Sha512(h) => h.update(data),
        }
    }

    pub fn finish(self) -> Digest {
        match self {
            DigestHasher::Sha256(h) => Digest::from_slice(Algorithm::Sha256, &h.finalize()),
            DigestHasher::Sha512(h) => Digest::from_slice(Algorithm::Sha512, &h.finalize()),
        }
    }
}

impl Default for DigestHasher {
    fn default() -> Self {
        DigestHasher::new(Algorithm::Sha256)
    }
}

impl Digest {
    /// The sha256 digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest::of_with(Algorithm::Sha256, bytes)
    }

    /// The digest of `bytes` with `algorithm`.
    pub fn of_with(algorithm: Algorithm, bytes: &[u8]) -> Self {
        let mut h = DigestHasher::new(algorithm);
        h.update(bytes);
        h.finish()
    }

    /// A hasher of this digest's algorithm (to verify content against it).
    pub fn hasher(&self) -> DigestHasher {
        DigestHasher::new(self.algorithm)
    }

    fn from_slice(algorithm: Algorithm, digest: &[u8]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Digest { algorithm, bytes }
    }

    /// A sha256 digest from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest::from_slice(Algorithm::Sha256, &bytes)
    }

    /// Parses the 64-character lowercase hex form of a sha256 digest (as in file names).
    pub fn from_hex(hex_str: &str) -> Result<Self, DigestError> {
        Digest::from_hex_with(Algorithm::Sha256, hex_str)
    }

    /// Parses the lowercase hex form of a digest of `algorithm`.
    pub fn from_hex_with(algorithm: Algorithm, hex_str: &str) -> Result<Self, DigestError> {
        let is_lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if hex_str.len() != algorithm.len() * 2 || !hex_str.bytes().all(is_lower_hex) {
            return Err(DigestError::BadEncoding(hex_str.to_owned()));
        }
        let mut out = [0u8; 64];
        hex::decode_to_slice(hex_str, &mut out[..algorithm.len()])
            .map_err(|_| DigestError::BadEncoding(hex_str.to_owned()))?;
        Ok(Digest { algorithm, bytes: out })
    }

    pub fn algorithm(&self) -> &'static str {
        self.algorithm.name()
    }

    pub fn kind(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowercase hex encoding.
    pub fn hex(&self) -> String {
        hex::encode(self.as_bytes())
    }

    /// `<algorithm>:<hex>` without allocating.
    pub fn text(&self) -> DigestText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 135];
        let name = self.algorithm.name().as_bytes();
        buf[..name.len()].copy_from_slice(name);
        buf[name.len()] = b':';
        let start = name.len() + 1;
        for (i, b) in self.as_bytes().iter().enumerate() {
            buf[start + 2 * i] = HEX[(b >> 4) as usize];
            buf[start + 1 + 2 * i] = HEX[(b & 0xf) as usize];
        }
        DigestText { buf, len: start + 2 * self.algorithm.len() }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.algorithm.len()]
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s.split_once(':').ok_or_else(|| DigestError::Malformed(s.to_owned()))?;
        if !is_algorithm(algorithm) || !is_encoded(encoded) {
            return Err(DigestError::Malformed(s.to_owned()));
        }
        let algorithm =
            Algorithm::from_name(algorithm).ok_or_else(|| DigestError::UnsupportedAlgorithm(algorithm.to_owned()))?;
        Digest::from_hex_with(algorithm, encoded)
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
pub struct DigestText {
    buf: [u8; 135],
    len: usize,
}

impl DigestText {
    pub fn as_str(&self) -> &str {
        // The buffer holds only ASCII written by `Digest::text`.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
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
    fn should_parse_print_and_compute_sha512() {
        let empty = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        let d: Digest = empty.parse().unwrap();
        assert_eq!(d.to_string(), empty);
        assert_eq!(d, Digest::of_with(Algorithm::Sha512, b""));
        assert_ne!(d, Digest::of(b""));
        assert_eq!(d.hex().len(), 128);
        assert!(matches!(format!("sha512:{}", "a".repeat(64)).parse::<Digest>(), Err(DigestError::BadEncoding(_))));
        let mut h = d.hasher();
        h.update(b"");
        assert_eq!(h.finish(), d);
    }

    #[test]
    fn should_reject_unknown_algorithm() {
        let d = format!("md5:{}", "a".repeat(32));
        assert_eq!(d.parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("md5".into())));
        let d = format!("sha384:{}", "a".repeat(96));
        assert_eq!(d.parse::<Digest>(), Err(DigestError::UnsupportedAlgorithm("sha384".into())));
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
