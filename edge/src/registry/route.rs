//! From a request line to what it asks for: the base endpoint, or a manifest or blob of a
//! repository on one configured upstream. All validation happens here, before any I/O.

use berth_shared::{Digest, DigestError, NameError, Reference, ReferenceError, RepositoryName};

/// A pull request, fully validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index of the upstream in the router's table.
    pub upstream: usize,
    /// The repository as the upstream names it (with `library/` added where configured).
    pub repository: RepositoryName,
    pub target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Manifest(Reference),
    Blob(Digest),
}

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /v2/`: API version check.
    Base,
    Pull(Route),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("method {0} is not allowed: this registry mirror is read-only")]
    MethodNotAllowed(String),
    #[error("{0} is not part of the OCI pull API")]
    NotFound(String),
    #[error("path contains percent-encoding or empty segments, which no valid name has")]
    PathTrick,
    #[error("invalid repository name: {0}")]
    Name(#[from] NameError),
    #[error("invalid reference: {0}")]
    Reference(ReferenceError),
    #[error("invalid digest: {0}")]
    Digest(#[from] DigestError),
    #[error("registry {0:?} is not mirrored by this edge")]
    UnknownUpstream(String),
    #[error("the request names no registry and this edge has no default upstream")]
    NoDefaultUpstream,
}

/// The upstream table as routing needs it.
#[derive(Debug, Clone)]
pub struct Router {
    names: Vec<String>,
    library_prefix: Vec<bool>,
    default: Option<usize>,
}

impl Router {
    /// `upstreams`: (name, library_prefix, is_default) for each configured upstream.
    pub fn new<'a>(upstreams: impl IntoIterator<Item = (&'a str, bool, bool)>) -> Self {
        let mut router = Router { names: Vec::new(), library_prefix: Vec::new(), default: None };
        for (i, (name, library, default)) in upstreams.into_iter().enumerate() {
            router.names.push(name.to_owned());
            router.library_prefix.push(library);
            if default {
                router.default = Some(i);
            }
        }
        router
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The upstream an image reference's registry part names (`None`: the default upstream),
    /// and the repository as that upstream names it.
    pub fn resolve_image(
        &self,
        registry: Option<&str>,
        repository: &RepositoryName,
    ) -> Result<(usize, RepositoryName), RouteError> {
        let index = match registry {
            Some(name) => self.find(name).ok_or_else(|| RouteError::UnknownUpstream(name.to_owned()))?,
            None => self.default.ok_or(RouteError::NoDefaultUpstream)?,
        };
        let repository = if self.library_prefix[index] { repository.with_library_prefix() } else { repository.clone() };
        Ok((index, repository))
    }

    /// Routes a request. `path` is the raw (still percent-encoded) path, `query` the raw query.
    pub fn route(&self, method: &str, path: &str, query: Option<&str>) -> Result<Request, RouteError> {
        let rest = match path.strip_prefix("/v2") {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => return Err(RouteError::NotFound(path.to_owned())),
        };
        // The edge is read-only: every write (pushes, uploads, deletes) gets 405 before parsing.
        if !matches!(method, "GET" | "HEAD") {
            return Err(RouteError::MethodNotAllowed(method.to_owned()));
        }
        let rest = match rest {
            "" | "/" => return Ok(Request::Base),
            _ => &rest[1..],
        };
        if rest.contains('%') || rest.contains("//") || rest.ends_with('/') {
            return Err(RouteError::PathTrick);
        }
        let (name, kind, reference) = split_pull_path(rest)?;
        let ns = ns_param(query)?;
        let (upstream, name) = self.pick_upstream(name, ns.as_deref())?;
        let mut repository = RepositoryName::parse(name)?;
        if self.library_prefix[upstream] {
            repository = repository.with_library_prefix();
        }
        let target = match kind {
            PathKind::Manifests => Target::Manifest(Reference::parse(reference).map_err(RouteError::Reference)?),
            PathKind::Blobs => Target::Blob(reference.parse()?),
        };
        Ok(Request::Pull(Route { upstream, repository, target }))
    }

    /// The upstream and repository a client-side repository name stands for (a path prefix
    /// naming an upstream, else the default upstream), as in a token scope.
    pub fn resolve_name(&self, name: &str) -> Result<(usize, RepositoryName), RouteError> {
        let (upstream, name) = self.pick_upstream(name, None)?;
        let mut repository = RepositoryName::parse(name)?;
        if self.library_prefix[upstream] {
            repository = repository.with_library_prefix();
        }
        Ok((upstream, repository))
    }

    /// `?ns=` first, then a path prefix naming an upstream, then the default.
    fn pick_upstream<'p>(&self, name: &'p str, ns: Option<&str>) -> Result<(usize, &'p str), RouteError> {
        if let Some(ns) = ns {
            return self.find(ns).map(|i| (i, name)).ok_or_else(|| RouteError::UnknownUpstream(ns.to_owned()));
        }
        if let Some((first, rest)) = name.split_once('/') {
            if let Some(i) = self.find(first) {
                return Ok((i, rest));
            }
        }
        self.default.map(|i| (i, name)).ok_or(RouteError::NoDefaultUpstream)
    }
}

enum PathKind {
    Manifests,
    Blobs,
}

/// Splits `<name>/manifests/<ref>` or `<name>/blobs/<digest>`; the last such marker wins, so a
/// repository may itself contain a `blobs` or `manifests` component.
fn split_pull_path(rest: &str) -> Result<(&str, PathKind, &str), RouteError> {
    let (head, last) = rest.rsplit_once('/').ok_or_else(|| RouteError::NotFound(format!("/v2/{rest}")))?;
    let (name, marker) = head.rsplit_once('/').ok_or_else(|| RouteError::NotFound(format!("/v2/{rest}")))?;
    match marker {
        "manifests" => Ok((name, PathKind::Manifests, last)),
        "blobs" => Ok((name, PathKind::Blobs, last)),
        _ => Err(RouteError::NotFound(format!("/v2/{rest}"))),
    }
}

/// The value of containerd's `ns` query parameter, percent-decoded (RFC 3986): containerd sends
/// a registry with a port as `ns=127.0.0.1%3A5001`. A value that does not decode to UTF-8 names
/// no upstream.
pub fn ns_param(query: Option<&str>) -> Result<Option<String>, RouteError> {
    let Some(raw) = query.and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("ns="))) else {
        return Ok(None);
    };
    if raw.is_empty() {
        return Ok(None);
    }
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| RouteError::UnknownUpstream(raw.to_owned()))?;
    Ok(Some(decoded.into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        Router::new([("docker.io", true, true), ("ghcr.io", false, false), ("10.0.0.5:5000", false, false)])
    }

    fn pull(method: &str, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
        match router().route(method, path, query)? {
            Request::Pull(r) => Ok(r),
            Request::Base => panic!("base"),
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn should_route_the_base_endpoint() {
        assert_eq!(router().route("GET", "/v2/", None), Ok(Request::Base));
        assert_eq!(router().route("HEAD", "/v2", None), Ok(Request::Base));
    }

    #[test]
    fn should_pick_the_upstream_by_ns_then_prefix_then_default() {
        let r = pull("GET", "/v2/org/app/manifests/v1", Some("ns=ghcr.io")).unwrap();
        assert_eq!((r.upstream, r.repository.as_str()), (1, "org/app"));
        let r = pull("GET", "/v2/ghcr.io/org/app/manifests/v1", None).unwrap();
        assert_eq!((r.upstream, r.repository.as_str()), (1, "org/app"));
        let r = pull("GET", "/v2/10.0.0.5:5000/app/manifests/v1", None).unwrap();
        assert_eq!((r.upstream, r.repository.as_str()), (2, "app"));
        let r = pull("GET", "/v2/org/app/manifests/v1", None).unwrap();
        assert_eq!((r.upstream, r.repository.as_str()), (0, "org/app"));
    }

    #[test]
    fn should_add_library_prefix_on_docker_hub_only() {
        let r = pull("GET", "/v2/nginx/manifests/1.27", Some("ns=docker.io")).unwrap();
        assert_eq!(r.repository.as_str(), "library/nginx");
        let r = pull("GET", "/v2/app/manifests/1", Some("ns=ghcr.io")).unwrap();
        assert_eq!(r.repository.as_str(), "app");
    }

    #[test]
    fn should_decode_a_percent_encoded_ns_as_containerd_sends_it() {
        let r = pull("GET", "/v2/app/manifests/v1", Some("ns=10.0.0.5%3A5000")).unwrap();
        assert_eq!((r.upstream, r.repository.as_str()), (2, "app"));
        let r = pull("GET", "/v2/app/manifests/v1", Some("x=1&ns=10.0.0.5%3a5000")).unwrap();
        assert_eq!(r.upstream, 2);
        let e = pull("GET", "/v2/app/manifests/v1", Some("ns=%FF%FE")).unwrap_err();
        assert_eq!(e, RouteError::UnknownUpstream("%FF%FE".into()));
    }

    #[test]
    fn should_refuse_an_ns_that_names_no_upstream() {
        let e = pull("GET", "/v2/x/manifests/1", Some("ns=evil.example.com")).unwrap_err();
        assert_eq!(e, RouteError::UnknownUpstream("evil.example.com".into()));
    }

    #[test]
    fn should_refuse_without_default_upstream() {
        let r = Router::new([("ghcr.io", false, false)]);
        assert_eq!(r.route("GET", "/v2/x/manifests/1", None), Err(RouteError::NoDefaultUpstream));
    }

    #[test]
    fn should_parse_blob_digests_and_manifest_references() {
        let r = pull("HEAD", &format!("/v2/library/nginx/blobs/{D}"), None).unwrap();
        assert_eq!(r.target, Target::Blob(D.parse().unwrap()));
        let r = pull("GET", &format!("/v2/a/blobs/manifests/{D}"), None).unwrap();
        assert_eq!(r.repository.as_str(), "a/blobs");
        assert!(matches!(r.target, Target::Manifest(Reference::Digest(_))));
    }

    #[test]
    fn should_reject_bad_names_and_digests_before_io() {
        assert!(matches!(pull("GET", "/v2/UPPER/manifests/x", None), Err(RouteError::Name(_))));
        assert!(matches!(pull("GET", "/v2/a/../b/manifests/x", None), Err(RouteError::Name(_))));
        assert_eq!(pull("GET", "/v2/a/%2e%2e/b/blobs/x", None), Err(RouteError::PathTrick));
        assert_eq!(pull("GET", "/v2/a//b/blobs/x", None), Err(RouteError::PathTrick));
        assert!(matches!(pull("GET", "/v2/a/blobs/sha256:abc", None), Err(RouteError::Digest(_))));
        assert!(matches!(pull("GET", "/v2/a/blobs/md5:abc", None), Err(RouteError::Digest(_))));
        assert!(matches!(pull("GET", "/v2/a/blobs/latest", None), Err(RouteError::Digest(_))));
        assert!(matches!(pull("GET", "/v2/a/manifests/-bad", None), Err(RouteError::Reference(_))));
    }

    #[test]
    fn should_refuse_writes() {
        assert_eq!(pull("PUT", "/v2/a/manifests/v1", None), Err(RouteError::MethodNotAllowed("PUT".into())));
        let post = RouteError::MethodNotAllowed("POST".into());
        assert_eq!(pull("POST", "/v2/a/blobs/uploads/", None), Err(post));
        let patch = RouteError::MethodNotAllowed("PATCH".into());
        assert_eq!(pull("PATCH", "/v2/a/blobs/uploads/123", None), Err(patch));
        assert!(matches!(pull("GET", "/v2/a/blobs/uploads/123", None), Err(RouteError::NotFound(_))));
        assert_eq!(
            pull("DELETE", &format!("/v2/a/blobs/{D}"), None),
            Err(RouteError::MethodNotAllowed("DELETE".into()))
        );
    }

    #[test]
    fn should_not_route_other_paths() {
        assert!(matches!(router().route("GET", "/", None), Err(RouteError::NotFound(_))));
        assert!(matches!(router().route("GET", "/v2/a/tags/list", None), Err(RouteError::NotFound(_))));
        assert!(matches!(router().route("GET", "/v2x", None), Err(RouteError::NotFound(_))));
    }
}
