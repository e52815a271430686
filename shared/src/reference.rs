//! Manifest references: a tag or a digest.

use std::fmt;

use crate::digest::{Digest, DigestError};

/// A validated tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What follows `/manifests/`: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("tag {0:?} is invalid (up to 128 of [a-zA-Z0-9._-], not starting with . or -)")]
    BadTag(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl Tag {
    pub fn parse(tag: &str) -> Result<Self, ReferenceError> {
        let bytes = tag.as_bytes();
        let first_ok = bytes.first().is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > 128 {
            return Err(ReferenceError::BadTag(tag.to_owned()));
        }
        Ok(Tag(tag.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Reference {
    /// A reference with a `:` is a digest; anything else must be a tag.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(Tag::parse(s)?))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_tags_and_digests() {
        assert!(matches!(Reference::parse("1.27-alpine"), Ok(Reference::Tag(_))));
        assert!(matches!(Reference::parse("_latest"), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(Reference::parse(&d), Ok(Reference::Digest(_))));
    }

    #[test]
    fn should_reject_bad_tags() {
        for bad in ["", ".hidden", "-x", "a/b", "a%2e", "..", &"a".repeat(129)] {
            assert!(matches!(Reference::parse(bad), Err(ReferenceError::BadTag(_))), "{bad}");
        }
        assert!(Tag::parse(&"a".repeat(128)).is_ok());
    }

    #[test]
    fn should_reject_bad_digest_references() {
        assert!(matches!(Reference::parse("sha256:zz"), Err(ReferenceError::Digest(_))));
        assert!(matches!(Reference::parse("md5:abc"), Err(ReferenceError::Digest(_))));
    }
}
