//! Image references as pipelines write them: `docker.io/library/nginx:1.27`,
//! `ghcr.io/org/app@sha256:...`, `10.0.0.5:5000/app:v1`, `nginx` (the default registry, `latest`).

use std::fmt;
use std::str::FromStr;

use crate::name::{NameError, RepositoryName};
use crate::reference::{Reference, ReferenceError, Tag};

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// The registry part (`docker.io`, `10.0.0.5:5000`); `None` means the default upstream.
    pub registry: Option<String>,
    /// The repository as written (a `library/` prefix is the upstream's business).
    pub repository: RepositoryName,
    pub reference: Reference,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageReferenceError {
    #[error("image reference is empty")]
    Empty,
    #[error("invalid repository in image reference {0:?}: {1}")]
    Name(String, NameError),
    #[error("invalid tag or digest in image reference {0:?}: {1}")]
    Reference(String, ReferenceError),
}

impl FromStr for ImageReference {
    type Err = ImageReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ImageReferenceError::Empty);
        }
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if is_registry(first) => (Some(first.to_owned()), rest),
            _ => (None, s),
        };
        let (name, reference) = if let Some((name, digest)) = rest.split_once('@') {
            // `name:tag@digest`: the digest decides.
            let name = name.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or(name, |(n, _)| n);
            let digest =
                digest.parse().map_err(|e| ImageReferenceError::Reference(s.to_owned(), ReferenceError::Digest(e)))?;
            (name, Reference::Digest(digest))
        } else {
            match rest.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => {
                    let tag = Tag::parse(tag).map_err(|e| ImageReferenceError::Reference(s.to_owned(), e))?;
                    (name, Reference::Tag(tag))
                }
                _ => (rest, Reference::Tag(Tag::parse("latest").expect("valid tag"))),
            }
        };
        let repository = RepositoryName::parse(name).map_err(|e| ImageReferenceError::Name(s.to_owned(), e))?;
        Ok(ImageReference { registry, repository, reference })
    }
}

/// Docker's rule: a first component with a `.` or a `:`, or `localhost`, is a registry host.
fn is_registry(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}:{t}", self.repository),
            Reference::Digest(d) => write!(f, "{}@{d}", self.repository),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ImageReference {
        s.parse().unwrap()
    }

    #[test]
    fn should_split_registry_repository_and_tag() {
        let r = p("docker.io/library/nginx:1.27");
        assert_eq!(r.registry.as_deref(), Some("docker.io"));
        assert_eq!(r.repository.as_str(), "library/nginx");
        assert_eq!(r.reference.to_string(), "1.27");
        let r = p("10.0.0.5:5000/app:v1");
        assert_eq!((r.registry.as_deref(), r.repository.as_str()), (Some("10.0.0.5:5000"), "app"));
        let r = p("localhost/app");
        assert_eq!(r.registry.as_deref(), Some("localhost"));
        assert_eq!(r.reference.to_string(), "latest");
    }

    #[test]
    fn should_read_references_without_a_registry() {
        let r = p("nginx");
        assert_eq!((r.registry, r.repository.as_str(), r.reference.to_string()), (None, "nginx", "latest".into()));
        let r = p("org/app:2");
        assert_eq!((r.registry, r.repository.as_str()), (None, "org/app"));
    }

    #[test]
    fn should_prefer_the_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("ghcr.io/org/app:v1@{d}"));
        assert_eq!(r.reference.to_string(), d);
        assert_eq!(r.repository.as_str(), "org/app");
        assert_eq!(r.to_string(), format!("ghcr.io/org/app@{d}"));
    }

    #[test]
    fn should_reject_bad_references() {
        for bad in ["", "UPPER/case", "app:-bad", "app@sha256:zz", "a//b", "ghcr.io/"] {
            assert!(bad.parse::<ImageReference>().is_err(), "{bad}");
        }
    }
}
