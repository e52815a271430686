//! The label values of the edge's metrics, as enums: a request's kind, outcome and serving tier,
//! the kinds of upstream requests and the reasons fills fail. The request path carries these,
//! never strings, and `per_request` indexes its series by them.

/// Defines a label enum with its text, the list of every value, and its position in that list.
macro_rules! label {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order (`index` is the position here).
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The position in [`Self::ALL`].
            pub fn index(self) -> usize {
                self as usize
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label! {
    /// What a client asked for.
    RequestKind {
        Blob = "blob",
        Manifest = "manifest",
        /// `/v2/`, the API version check.
        Base = "base",
        /// The token endpoint, and requests that match no route.
        Other = "other",
    }
}

label! {
    /// How the cache answered a request (also the `X-Berth-Cache` header).
    Outcome {
        /// From verified local bytes (memory, disk, or a fill already verified).
        Hit = "hit",
        /// This request started the fetch from the upstream.
        Miss = "miss",
        /// Joined a fetch another request started.
        Coalesced = "coalesced",
        /// A tag whose mapping was checked with the upstream and is unchanged.
        Revalidated = "revalidated",
        /// A tag mapping served past its TTL because the upstream failed.
        Stale = "stale",
        /// Streamed from the upstream without being cached (see `PassReason`).
        Bypass = "bypass",
        Error = "error",
    }
}

label! {
    /// Where the bytes of a response came from.
    Tier {
        Memory = "memory",
        Disk = "disk",
        Upstream = "upstream",
    }
}

label! {
    /// What the edge asked an upstream for (`berth_edge_upstream_requests_total{request}`).
    UpstreamRequest {
        /// A whole blob: a fill, or a pass-through.
        Blob = "blob",
        BlobHead = "blob_head",
        /// A range far ahead of a fill, fetched on its own.
        BlobRange = "blob_range",
        Manifest = "manifest",
        ManifestHead = "manifest_head",
        /// A `HEAD` that checks a repository holds a digest served from the cache.
        Confirm = "confirm",
        /// A blob from another edge of the region (its owner).
        Peer = "peer",
    }
}

label! {
    /// Why a fill failed (`berth_edge_fill_failures_total{reason}`).
    FillFailure {
        Upstream = "upstream",
        DigestMismatch = "digest_mismatch",
        Truncated = "truncated",
        Disk = "disk",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_index_every_value_by_its_position() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        assert_eq!(Tier::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>(), ["memory", "disk", "upstream"]);
        assert_eq!(RequestKind::Other.to_string(), "other");
    }
}
