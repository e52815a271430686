//! Checks of a request head before anything else looks at it: its size (431), the length of its
//! target (414), and framing a front proxy could read differently (400: a request smuggled
//! behind another). Pingora has parsed the head; these bounds are Berth's, below Pingora's own.

use http::StatusCode;
use pingora::prelude::Session;

use crate::registry::ApiError;
use crate::state::EdgeState;

pub(super) fn check(state: &EdgeState, session: &Session) -> Result<(), ApiError> {
    let req = session.req_header();
    let live = state.live();
    let limits = &live.config.server;
    let target = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let fields = req.headers.iter().map(|(k, v)| (k.as_str().len(), v.len()));
    if target as u64 > limits.max_url_bytes.bytes() {
        state.metrics.refused.with_label_values(&["url_bytes"]).inc();
        let message =
            format!("request target of {target} bytes exceeds the {}-byte limit", limits.max_url_bytes.bytes());
        return Err(ApiError::new(StatusCode::URI_TOO_LONG, "UNSUPPORTED", message));
    }
    let head = head_bytes(target, fields);
    if head as u64 > limits.max_header_bytes.bytes() {
        state.metrics.refused.with_label_values(&["header_bytes"]).inc();
        let message =
            format!("request head of {head} bytes exceeds the {}-byte limit", limits.max_header_bytes.bytes());
        return Err(ApiError::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "UNSUPPORTED", message));
    }
    let bodiless = req.method == http::Method::GET || req.method == http::Method::HEAD;
    let why = ambiguous_framing(&req.headers).or_else(|| {
        (bodiless && has_body(&req.headers)).then_some(
            // Pingora drops Content-Length when Transfer-Encoding is present (RFC 9112 §6.3); a GET
            // with any body framing is how a request is smuggled behind another.
            "a GET or HEAD request carries no body",
        )
    });
    if let Some(why) = why {
        state.metrics.refused.with_label_values(&["framing"]).inc();
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", why));
    }
    Ok(())
}

/// The size a head is measured by: its target, and each field's name and value with `: ` and
/// CRLF. `fields` are (name, value) lengths.
fn head_bytes(target: usize, fields: impl Iterator<Item = (usize, usize)>) -> usize {
    target + fields.map(|(name, value)| name + value + 4).sum::<usize>()
}

/// Whether a head is within `max_url_bytes` and `max_header_bytes` (what `check` answers 414 and
/// 431 beyond), for a request parsed elsewhere (`direct.rs`).
pub(super) fn within_limits(
    limits: &crate::config::ServerConfig,
    target: usize,
    fields: impl Iterator<Item = (usize, usize)>,
) -> bool {
    target as u64 <= limits.max_url_bytes.bytes()
        && head_bytes(target, fields) as u64 <= limits.max_header_bytes.bytes()
}

/// Whether the head announces a body (Transfer-Encoding, or a Content-Length other than 0).
fn has_body(headers: &http::HeaderMap) -> bool {
    headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers.get_all(http::header::CONTENT_LENGTH).iter().any(|v| v.as_bytes().trim_ascii() != b"0")
}

/// Content-Length together with Transfer-Encoding, several differing Content-Lengths, or a
/// Transfer-Encoding other than a final `chunked`: refused, as RFC 9112 §6.3 allows.
fn ambiguous_framing(headers: &http::HeaderMap) -> Option<&'static str> {
    let lengths: Vec<&[u8]> = headers
        .get_all(http::header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|v| v.trim_ascii())
        .collect();
    let encodings: Vec<&http::HeaderValue> = headers.get_all(http::header::TRANSFER_ENCODING).iter().collect();
    if !lengths.is_empty() && !encodings.is_empty() {
        return Some("Content-Length and Transfer-Encoding together");
    }
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Some("differing Content-Length values");
    }
    if lengths.iter().any(|l| l.is_empty() || !l.iter().all(u8::is_ascii_digit)) {
        return Some("Content-Length is not a number");
    }
    let chunked_last = encodings
        .last()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !encodings.is_empty() && !chunked_last {
        return Some("Transfer-Encoding whose last coding is not chunked");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn should_refuse_ambiguous_framing() {
        assert!(ambiguous_framing(&headers(&[("content-length", "5"), ("transfer-encoding", "chunked")])).is_some());
        assert!(ambiguous_framing(&headers(&[("content-length", "5"), ("content-length", "6")])).is_some());
        assert!(ambiguous_framing(&headers(&[("content-length", "5, 6")])).is_some());
        assert!(ambiguous_framing(&headers(&[("content-length", "-1")])).is_some());
        assert!(ambiguous_framing(&headers(&[("transfer-encoding", "chunked, gzip")])).is_some());
        assert!(ambiguous_framing(&headers(&[("content-length", "5"), ("content-length", "5")])).is_none());
        assert!(ambiguous_framing(&headers(&[("transfer-encoding", "gzip, chunked")])).is_none());
        assert!(ambiguous_framing(&headers(&[])).is_none());
    }
}
