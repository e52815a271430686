//! Repository patterns for htpasswd grants: `*` matches within one path segment, `**` across
//! segments; everything else matches itself. `team-a/**` grants every repository under
//! `team-a/`; `team-a/*` only its direct children; `**` everything.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(String),
    /// `*`: any characters but `/`.
    Segment,
    /// `**`: any characters.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a repository pattern (letters, digits, . _ - /, and * or **)")]
pub struct PatternError(String);

impl Pattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(c);
        if text.is_empty() || !text.chars().all(valid) || text.contains("***") {
            return Err(PatternError(text.to_owned()));
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("**") {
                pieces.push(Piece::Any);
                rest = after;
            } else if let Some(after) = rest.strip_prefix('*') {
                pieces.push(Piece::Segment);
                rest = after;
            } else {
                let end = rest.find('*').unwrap_or(rest.len());
                pieces.push(Piece::Literal(rest[..end].to_owned()));
                rest = &rest[end..];
            }
        }
        Ok(Pattern(pieces))
    }

    pub fn matches(&self, name: &str) -> bool {
        matches(&self.0, name)
    }
}

fn matches(pieces: &[Piece], name: &str) -> bool {
    match pieces.split_first() {
        None => name.is_empty(),
        Some((Piece::Literal(lit), rest)) => name.strip_prefix(lit.as_str()).is_some_and(|n| matches(rest, n)),
        Some((wild, rest)) => {
            // Try every split point the wildcard may stop at.
            for (i, c) in name.char_indices() {
                if matches(rest, &name[i..]) {
                    return true;
                }
                if *wild == Piece::Segment && c == '/' {
                    return false;
                }
            }
            matches(rest, "")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        Pattern::parse(p).unwrap().matches(n)
    }

    #[test]
    fn should_match_segments_and_subtrees() {
        assert!(m("team-a/app", "team-a/app"));
        assert!(!m("team-a/app", "team-a/app2"));
        assert!(m("team-a/*", "team-a/app"));
        assert!(!m("team-a/*", "team-a/x/app"));
        assert!(!m("team-a/*", "team-b/app"));
        assert!(m("team-a/**", "team-a/x/app"));
        assert!(m("**", "anything/at/all"));
        assert!(m("*/app", "team/app"));
        assert!(!m("*/app", "a/b/app"));
        assert!(m("lib*", "library"));
    }

    #[test]
    fn should_refuse_bad_patterns() {
        for bad in ["", "Team", "a b", "***", "a?b"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
