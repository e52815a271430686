//! The one place where errors become HTTP responses: status, OCI error code and message
//! (`{"errors":[{"code","message"}]}`).

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
}

/// Whether an error concerns a blob or a manifest (404s name the kind that is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    Blob,
    Manifest,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), headers: Vec::new() }
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
        let message = e.to_string();
        match e {
            UpstreamError::Status { status, retry_after, .. } => match status.as_u16() {
                404 => match subject {
                    Subject::Blob => ApiError::new(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", message),
                    Subject::Manifest => ApiError::new(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", message),
                },
                401 | 403 => ApiError::new(StatusCode::FORBIDDEN, "DENIED", message),
                429 => {
                    let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", message);
                    match retry_after {
                        Some(r) => e.with_header("Retry-After", r.clone()),
                        None => e,
                    }
                }
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message),
            },
            UpstreamError::Client { source, .. } => match source {
                ClientError::FirstByteTimeout(_) | ClientError::BodyStalled(_) => {
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "UNAVAILABLE", message)
                }
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message),
            },
            UpstreamError::Auth { source, .. } => match source {
                AuthError::TokenStatus(s) if s.is_client_error() => {
                    ApiError::new(StatusCode::FORBIDDEN, "DENIED", message)
                }
                _ => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", message),
            },
        }
    }

    pub fn from_fill(e: &FillError) -> Self {
        match e {
            FillError::Upstream(u) => ApiError::from_upstream(u, Subject::Blob),
            FillError::DigestMismatch { .. }
            | FillError::Truncated { .. }
            | FillError::TooLong { .. }
            | FillError::Inconsistent => ApiError::new(StatusCode::BAD_GATEWAY, "UNAVAILABLE", e.to_string()),
            FillError::Disk(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", e.to_string()),
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
            ManifestError::Disk(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", message),
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
        let limited = ApiError::from_upstream(&status(429), Subject::Blob);
        assert_eq!(limited.headers, vec![("Retry-After", "7".to_string())]);
    }
}
