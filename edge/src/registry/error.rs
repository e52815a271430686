//! The one place where errors become HTTP responses: status, OCI error code and message
//! (`{"errors":[{"code","message"}]}`). Messages name what failed (the upstream by its configured
//! name, the digest) and never carry an upstream's error chain, an address it redirected to, or a
//! local path: those go to the log (`detail`).

use http::StatusCode;

use super::range::{RangeSyntaxError, Unsatisfiable};
use super::route::RouteError;
use crate::cache::{FillError, ManifestError};
use crate::upstream::{AuthError, ClientError, UpstreamError};

/// An error response in the OCI distribution format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra response headers (`Allow`, `Retry-After`, `Content-Range`).
    pub headers: Vec<(&'static str, String)>,
    /// What happened in full, for the log only.
    pub detail: Option<String>,
    /// The upstream answered 404: the answer may be cached for `negative_ttl`.
    pub upstream_not_found: bool,
}

/// Whether an error concerns a blob or a manifest (404s name the kind that is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Blob,
    Manifest,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), headers: Vec::new(), detail: None, upstream_not_found: false }
    }

    fn with_detail(mut self, detail: impl std::fmt::Display) -> Self {
        self.detail = Some(detail.to_string());
        self
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"errors": [{"code": self.code, "message": self.message}]}).to_string()
    }

    pub fn from_upstream(e: &UpstreamError, subject: Subject) -> Self {
        let name = e.upstream();
        let unavailable = |status, message: String| ApiError::new(status, "UNAVAILABLE", message).with_detail(e);
        match e {
            UpstreamError::Status { status, retry_after, .. } => {
                let message = format!("upstream {name} answered {}", status.as_u16());
                match status.as_u16() {
                    404 => {
                        let code = match subject {
                            Subject::Blob => "BLOB_UNKNOWN",
                            Subject::Manifest => "MANIFEST_UNKNOWN",
                        };
                        let mut err = ApiError::new(StatusCode::NOT_FOUND, code, message);
                        err.upstream_not_found = true;
                        err
                    }
                    401 | 403 => {
                        ApiError::new(StatusCode::FORBIDDEN, "DENIED", format!("upstream {name} denied access"))
                    }
                    429 => {
                        let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                        match retry_after {
                            Some(r) => e.with_header("Retry-After", r.clone()),
                            None => e,
                        }
                    }
                    // Any other client error is the client's to see, as it is.
                    400..=499 => ApiError::new(*status, "UNSUPPORTED", message),
                    _ => unavailable(StatusCode::BAD_GATEWAY, message),
                }
            }
            UpstreamError::Client { source, .. } => match source {
                ClientError::FirstByteTimeout(_) | ClientError::BodyStalled(_) => {
                    unavailable(StatusCode::GATEWAY_TIMEOUT, format!("upstream {name} did not answer in time"))
                }
                ClientError::Refused(_) => unavailable(
                    StatusCode::BAD_GATEWAY,
                    format!("upstream {name} redirected to an internal address (see allow_private_networks)"),
                ),
                _ => unavailable(StatusCode::BAD_GATEWAY, format!("upstream {name} could not be reached")),
            },
            UpstreamError::Busy { bound, .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "TOOMANYREQUESTS",
                format!(
                    "upstream {name}: {}; retry shortly",
                    match *bound {
                        "fills" => "its fill slots (max_fills) are all in use",
                        _ => "its connections (max_connections) are all in use",
                    }
                ),
            )
            .with_header("Retry-After", "2".into()),
            UpstreamError::Auth { source, .. } => match source {
                AuthError::TokenStatus(s) if s.is_client_error() => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "DENIED",
                    format!("upstream {name} refused the edge's credentials"),
                )
                .with_detail(e),
                _ => unavailable(StatusCode::BAD_GATEWAY, format!("upstream {name}'s token service failed")),
            },
        }
    }

    pub fn from_fill(e: &FillError) -> Self {
        let bad_gateway =
            |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message).with_detail(e);
        match e {
            FillError::Upstream(u) => ApiError::from_upstream(u, Subject::Blob),
            FillError::DigestMismatch { expected, .. } => {
                bad_gateway(format!("the upstream sent bytes that do not hash to {expected}"))
            }
            FillError::Truncated { .. } | FillError::TooLong { .. } => {
                bad_gateway("the upstream's body did not have its announced length".into())
            }
            FillError::Inconsistent => bad_gateway(e.to_string()),
            FillError::Disk(_) | FillError::PassThrough(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the edge's cache disk failed")
                    .with_detail(e)
            }
            FillError::Abandoned | FillError::OutOfOrder { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", "internal error").with_detail(e)
            }
        }
    }

    pub fn from_manifest(e: &ManifestError) -> Self {
        let message = e.to_string();
        match e {
            ManifestError::Upstream(u) => ApiError::from_upstream(u, Subject::Manifest),
            ManifestError::NotAcceptable { .. } => ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message),
            ManifestError::TooLarge { .. } | ManifestError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "MANIFEST_INVALID", message)
            }
            ManifestError::DigestMismatch { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message),
            ManifestError::Disk(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", "the edge's cache disk failed")
                    .with_detail(e)
            }
        }
    }

    pub fn unsatisfiable(e: Unsatisfiable) -> Self {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", e.to_string())
            .with_header("Content-Range", format!("bytes */{}", e.size))
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        let message = e.to_string();
        match e {
            RouteError::MethodNotAllowed(_) => ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", message)
                .with_header("Allow", "GET, HEAD".into()),
            RouteError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "UNSUPPORTED", message),
            RouteError::PathTrick | RouteError::Name(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", message)
            }
            RouteError::Reference(berth_shared::ReferenceError::Digest(_)) | RouteError::Digest(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
            }
            RouteError::Reference(_) => ApiError::new(StatusCode::BAD_REQUEST, "TAG_INVALID", message),
            RouteError::UnknownUpstream(_) | RouteError::NoDefaultUpstream => {
                ApiError::new(StatusCode::NOT_FOUND, "NAME_UNKNOWN", message)
            }
        }
    }
}

impl From<RangeSyntaxError> for ApiError {
    fn from(e: RangeSyntaxError) -> Self {
        ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID", e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_render_the_oci_error_body() {
        let e = ApiError::new(StatusCode::BAD_REQUEST, "NAME_INVALID", "bad \"name\"");
        let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"");
    }

    #[test]
    fn should_map_route_errors_to_4xx() {
        let e: ApiError = RouteError::MethodNotAllowed("PUT".into()).into();
        assert_eq!((e.status.as_u16(), e.code), (405, "UNSUPPORTED"));
        assert_eq!(e.headers, vec![("Allow", "GET, HEAD".to_string())]);
        let e: ApiError = RouteError::PathTrick.into();
        assert_eq!((e.status.as_u16(), e.code), (400, "NAME_INVALID"));
        let e: ApiError = RouteError::UnknownUpstream("x".into()).into();
        assert_eq!(e.status.as_u16(), 404);
    }

    #[test]
    fn should_map_upstream_statuses() {
        let status = |s: u16| UpstreamError::Status {
            upstream: "u".into(),
            status: StatusCode::from_u16(s).unwrap(),
            retry_after: Some("7".into()),
        };
        assert_eq!(ApiError::from_upstream(&status(404), Subject::Blob).code, "BLOB_UNKNOWN");
        assert_eq!(ApiError::from_upstream(&status(404), Subject::Manifest).code, "MANIFEST_UNKNOWN");
        assert_eq!(ApiError::from_upstream(&status(500), Subject::Blob).status.as_u16(), 502);
        assert_eq!(ApiError::from_upstream(&status(400), Subject::Blob).status.as_u16(), 400);
        assert_eq!(ApiError::from_upstream(&status(410), Subject::Manifest).status.as_u16(), 410);
        assert!(ApiError::from_upstream(&status(404), Subject::Blob).upstream_not_found);
        let chain = UpstreamError::Client {
            upstream: "u".into(),
            source: ClientError::Connect("tcp connect error: 10.1.2.3:443: Connection refused (os error 111)".into()),
        };
        let e = ApiError::from_upstream(&chain, Subject::Blob);
        assert_eq!(e.message, "upstream u could not be reached");
        assert!(e.detail.unwrap().contains("10.1.2.3"), "the chain goes to the log");
        let disk = ApiError::from_fill(&FillError::Disk(crate::cache::error::DiskFault::new(
            crate::cache::error::DiskOp::Write,
            "/var/lib/berth/tmp/x: No space left on device",
        )));
        assert!(!disk.body().contains("/var/lib"), "{}", disk.body());
        let limited = ApiError::from_upstream(&status(429), Subject::Blob);
        assert_eq!(limited.headers, vec![("Retry-After", "7".to_string())]);
    }
}
