//! Single byte ranges (RFC 9110 §14): parsed before any I/O, resolved once the size is known.

/// A parsed `Range: bytes=...` request, not yet checked against the blob's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=first-` or `bytes=first-last`
    From { first: u64, last: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

/// What to do with a request's `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No header, another unit, or several ranges: serve the whole representation (RFC 9110
    /// allows ignoring a Range header).
    Full,
    Single(ByteRange),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Range header {0:?}")]
pub struct RangeSyntaxError(pub String);

/// The requested range lies outside the representation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("range not satisfiable for a representation of {size} bytes")]
pub struct Unsatisfiable {
    pub size: u64,
}

impl RangeRequest {
    pub fn parse(header: Option<&[u8]>) -> Result<Self, RangeSyntaxError> {
        let Some(raw) = header else {
            return Ok(RangeRequest::Full);
        };
        let text = std::str::from_utf8(raw).map_err(|_| RangeSyntaxError(String::from_utf8_lossy(raw).into()))?;
        let bad = || RangeSyntaxError(text.to_owned());
        let Some((unit, set)) = text.trim().split_once('=') else {
            return Err(bad());
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Ok(RangeRequest::Full);
        }
        if set.contains(',') {
            // Multipart ranges: each part must still be well-formed, then the whole is served.
            for spec in set.split(',') {
                ByteRange::parse_spec(spec.trim()).ok_or_else(bad)?;
            }
            return Ok(RangeRequest::Full);
        }
        ByteRange::parse_spec(set.trim()).map(RangeRequest::Single).ok_or_else(bad)
    }
}

impl ByteRange {
    fn parse_spec(spec: &str) -> Option<ByteRange> {
        let (first, last) = spec.split_once('-')?;
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match (first.is_empty(), last.is_empty()) {
            (true, false) => Some(ByteRange::Suffix(num(last)?)),
            (false, true) => Some(ByteRange::From { first: num(first)?, last: None }),
            (false, false) => {
                let (first, last) = (num(first)?, num(last)?);
                (last >= first).then_some(ByteRange::From { first, last: Some(last) })
            }
            (true, true) => None,
        }
    }

    /// The inclusive `(first, last)` byte positions within a representation of `size` bytes.
    pub fn resolve(self, size: u64) -> Result<(u64, u64), Unsatisfiable> {
        let unsatisfiable = Unsatisfiable { size };
        match self {
            ByteRange::From { first, last } => {
                if first >= size {
                    return Err(unsatisfiable);
                }
                Ok((first, last.map_or(size - 1, |l| l.min(size - 1))))
            }
            ByteRange::Suffix(n) => {
                if n == 0 || size == 0 {
                    return Err(unsatisfiable);
                }
                Ok((size.saturating_sub(n), size - 1))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<RangeRequest, RangeSyntaxError> {
        RangeRequest::parse(Some(s.as_bytes()))
    }

    fn single(s: &str) -> ByteRange {
        match parse(s).unwrap() {
            RangeRequest::Single(r) => r,
            RangeRequest::Full => panic!("{s} parsed as full"),
        }
    }

    #[test]
    fn should_parse_the_three_single_range_forms() {
        assert_eq!(single("bytes=0-99"), ByteRange::From { first: 0, last: Some(99) });
        assert_eq!(single("bytes=100-"), ByteRange::From { first: 100, last: None });
        assert_eq!(single("bytes=-5"), ByteRange::Suffix(5));
        assert_eq!(single(" bytes = 1-2 "), ByteRange::From { first: 1, last: Some(2) });
    }

    #[test]
    fn should_serve_whole_for_absent_foreign_unit_or_multiple_ranges() {
        assert_eq!(RangeRequest::parse(None), Ok(RangeRequest::Full));
        assert_eq!(parse("items=0-5"), Ok(RangeRequest::Full));
        assert_eq!(parse("bytes=0-1,5-9"), Ok(RangeRequest::Full));
    }

    #[test]
    fn should_reject_malformed_ranges() {
        for bad in ["bytes", "bytes=", "bytes=-", "bytes=a-b", "bytes=5-1", "bytes=1-2-3", "bytes=+1-2", "bytes=0-1,x"]
        {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn should_resolve_against_the_size() {
        assert_eq!(single("bytes=0-99").resolve(50), Ok((0, 49)));
        assert_eq!(single("bytes=10-").resolve(50), Ok((10, 49)));
        assert_eq!(single("bytes=-5").resolve(50), Ok((45, 49)));
        assert_eq!(single("bytes=-500").resolve(50), Ok((0, 49)));
        assert_eq!(single("bytes=49-49").resolve(50), Ok((49, 49)));
    }

    #[test]
    fn should_find_unsatisfiable_ranges() {
        assert!(single("bytes=50-").resolve(50).is_err());
        assert!(single("bytes=-0").resolve(50).is_err());
        assert!(single("bytes=0-").resolve(0).is_err());
        assert!(single("bytes=-1").resolve(0).is_err());
    }
}
