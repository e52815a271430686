//! Repository names, validated with the OCI distribution-spec grammar before any I/O.

use std::fmt;

/// Longest repository name the distribution spec allows.
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/nginx` or `org/team/app`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error(
        "repository name component {0:?} is invalid (lowercase letters, digits and single separators . _ __ - only)"
    )]
    BadComponent(String),
}

impl RepositoryName {
    /// Validates `name` against
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    pub fn parse(name: &str) -> Result<Self, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for component in name.split('/') {
            if !is_component(component) {
                return Err(NameError::BadComponent(component.to_owned()));
            }
        }
        Ok(RepositoryName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Number of `/`-separated components.
    pub fn depth(&self) -> usize {
        self.0.split('/').count()
    }

    /// `library/<name>` for a one-component name (Docker Hub's official images), else unchanged.
    pub fn with_library_prefix(&self) -> RepositoryName {
        if self.depth() == 1 {
            RepositoryName(format!("library/{}", self.0))
        } else {
            self.clone()
        }
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: alphanumeric runs joined by `.`, `_`, `__` or any number of `-`.
fn is_component(c: &str) -> bool {
    let bytes = c.as_bytes();
    let mut i = 0;
    let mut need_alnum = true;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        let sep_len = match bytes[i] {
            b'.' => 1,
            b'_' if bytes.get(i + 1) == Some(&b'_') => 2,
            b'_' => 1,
            b'-' => bytes[i..].iter().take_while(|&&b| b == b'-').count(),
            _ => return false,
        };
        i += sep_len;
        need_alnum = true;
    }
    !need_alnum
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_accept_valid_names() {
        for ok in ["nginx", "library/nginx", "a/b/c/d", "my-org/my--app", "a.b_c__d-e", "x0/9y", "ghcr.io/org/app"] {
            assert!(RepositoryName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn should_reject_path_tricks_and_bad_characters() {
        for bad in [
            "..", "a/../b", "a/./b", "%2e%2e/x", "a%2fb", "Upper", "a//b", "/a", "a/", "-a", "a-", "a___b", "a..b",
            "a b", "a\\b", "a:b",
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn should_reject_empty_and_too_long_names() {
        assert_eq!(RepositoryName::parse(""), Err(NameError::Empty));
        assert_eq!(RepositoryName::parse(&"a".repeat(256)), Err(NameError::TooLong));
        assert!(RepositoryName::parse(&"a".repeat(255)).is_ok());
    }

    #[test]
    fn should_add_library_prefix_to_one_segment_names_only() {
        let n = RepositoryName::parse("nginx").unwrap().with_library_prefix();
        assert_eq!(n.as_str(), "library/nginx");
        let n = RepositoryName::parse("org/app").unwrap().with_library_prefix();
        assert_eq!(n.as_str(), "org/app");
    }
}
