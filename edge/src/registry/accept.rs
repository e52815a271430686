//! Manifest content negotiation: every `Accept` line a client sent, never just the last.
//! The accepted set is reduced to the manifest media types Berth serves (a bitset), so it is a
//! small, bounded cache key whatever a client sends.

use berth_shared::manifest::MANIFEST_MEDIA_TYPES;

/// The manifest media types a client accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AcceptList {
    /// Bit `i` set: `MANIFEST_MEDIA_TYPES[i]` is accepted.
    known: u8,
    /// Whether the client named any media type at all.
    given: bool,
}

const ALL: u8 = (1 << MANIFEST_MEDIA_TYPES.len()) - 1;

fn bit(media_type: &str) -> Option<u8> {
    MANIFEST_MEDIA_TYPES.iter().position(|t| t.eq_ignore_ascii_case(media_type)).map(|i| 1 << i)
}

impl AcceptList {
    /// Builds the set from every `Accept` header value (each may hold several, comma-separated).
    /// Wildcards (`*/*`, `application/*`) accept every manifest type; types Berth does not
    /// serve are ignored; `q=0` refuses a type.
    pub fn from_headers<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut list = AcceptList::default();
        let items = values.into_iter().filter_map(|v| std::str::from_utf8(v).ok()).flat_map(|v| v.split(','));
        for item in items {
            let mut parts = item.split(';');
            let media = parts.next().unwrap_or_default().trim();
            if media.is_empty() {
                continue;
            }
            list.given = true;
            let refused = parts.any(|p| {
                let p = p.trim().replace(' ', "");
                p.strip_prefix("q=").and_then(|q| q.parse::<f32>().ok()) == Some(0.0)
            });
            if refused {
                continue;
            }
            if media == "*/*" || media.eq_ignore_ascii_case("application/*") {
                list.known = ALL;
            } else if let Some(b) = bit(media) {
                list.known |= b;
            }
        }
        list
    }

    /// Whether the client sent no usable `Accept` at all (then every manifest type is fine).
    pub fn is_unspecified(&self) -> bool {
        !self.given
    }

    /// Whether `media_type` may be sent to this client.
    pub fn accepts(&self, media_type: &str) -> bool {
        !self.given || bit(media_type).is_some_and(|b| self.known & b != 0)
    }

    /// The `Accept` value to send upstream: the client's types, or every manifest type Berth
    /// serves when the client named none.
    pub fn upstream_header(&self) -> String {
        let known = if self.given { self.known } else { ALL };
        let types: Vec<&str> =
            MANIFEST_MEDIA_TYPES.iter().enumerate().filter(|(i, _)| known & (1 << i) != 0).map(|(_, t)| *t).collect();
        types.join(", ")
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

    #[test]
    fn should_ignore_types_it_does_not_serve_and_accept_none_of_them() {
        let junk = "application/x-junk-1, application/x-junk-2".repeat(100);
        let list = AcceptList::from_headers([junk.as_bytes()]);
        assert_eq!(list, AcceptList::from_headers([b"application/x-other".as_slice()]), "one key for all junk");
        assert!(!list.accepts(OCI_MANIFEST), "named types only: nothing Berth serves");
        assert_eq!(list.upstream_header(), "");
    }
}
