//! Manifest content negotiation: every `Accept` line a client sent, never just the last.

use berth_shared::manifest::MANIFEST_MEDIA_TYPES;

/// The media types a client accepts, from all of its `Accept` header lines.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct AcceptList {
    /// Media types without parameters, lowercased, sorted and de-duplicated (a stable cache key).
    types: Vec<String>,
}

impl AcceptList {
    /// Builds the list from every `Accept` header value (each may hold several, comma-separated).
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut types: Vec<String> = values
            .into_iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .filter_map(|item| {
                let media = item.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
                let q_zero = item
                    .split(';')
                    .skip(1)
                    .any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
                (!media.is_empty() && !q_zero).then_some(media)
            })
            .collect();
        types.sort();
        types.dedup();
        AcceptList { types }
    }

    /// Whether the client sent no usable `Accept` at all (then every manifest type is fine).
    pub fn is_unspecified(&self) -> bool {
        self.types.is_empty()
    }

    /// Whether `media_type` may be sent to this client.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.is_unspecified() {
            return true;
        }
        let major = media_type.split('/').next().unwrap_or_default();
        self.types.iter().any(|t| {
            t.eq_ignore_ascii_case(media_type)
                || t == "*/*"
                || t.strip_suffix("/*").is_some_and(|m| m.eq_ignore_ascii_case(major))
        })
    }

    /// The `Accept` value to send upstream: the client's own types, or every manifest type
    /// Berth serves when the client named none.
    pub fn upstream_header(&self) -> String {
        if self.is_unspecified() {
            MANIFEST_MEDIA_TYPES.join(", ")
        } else {
            self.types.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_shared::manifest::{DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

    #[test]
    fn should_merge_repeated_accept_lines() {
        let list = AcceptList::from_headers([DOCKER_MANIFEST.as_bytes(), OCI_MANIFEST.as_bytes()]);
        assert!(list.accepts(OCI_MANIFEST));
        assert!(list.accepts(DOCKER_MANIFEST));
        assert!(!list.accepts(OCI_INDEX));
    }

    #[test]
    fn should_split_comma_lists_and_drop_parameters() {
        let v = format!("{OCI_INDEX}; q=0.9, {OCI_MANIFEST}");
        let list = AcceptList::from_headers([v.as_bytes()]);
        assert!(list.accepts(OCI_INDEX) && list.accepts(OCI_MANIFEST));
        assert_eq!(list.upstream_header(), format!("{OCI_INDEX}, {OCI_MANIFEST}"));
    }

    #[test]
    fn should_honour_q_zero_as_refusal() {
        let v = format!("{OCI_INDEX};q=0, {OCI_MANIFEST}");
        let list = AcceptList::from_headers([v.as_bytes()]);
        assert!(!list.accepts(OCI_INDEX));
    }

    #[test]
    fn should_accept_everything_when_unspecified_or_wildcard() {
        let none = AcceptList::from_headers(std::iter::empty());
        assert!(none.accepts(OCI_INDEX));
        assert!(none.upstream_header().contains(DOCKER_MANIFEST));
        let star = AcceptList::from_headers([b"*/*".as_slice()]);
        assert!(star.accepts(OCI_INDEX));
        let app = AcceptList::from_headers([b"application/*".as_slice()]);
        assert!(app.accepts(OCI_INDEX));
    }

    #[test]
    fn should_be_a_stable_key_whatever_the_order() {
        let a = AcceptList::from_headers([OCI_MANIFEST.as_bytes(), DOCKER_MANIFEST.as_bytes()]);
        let b = AcceptList::from_headers([format!("{DOCKER_MANIFEST},{OCI_MANIFEST}").as_bytes()]);
        assert_eq!(a, b);
    }
}
