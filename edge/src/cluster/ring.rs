//! Rendezvous (highest-random-weight) hashing: every edge of a region ranks the members the same
//! way for a digest, with no coordination, and a membership change moves only the digests whose
//! owner joined or left.

use berth_shared::Digest;
use sha2::{Digest as _, Sha256};

/// A member's weight for a digest: the first 8 bytes of `sha256(member "\n" digest)`. The same on
/// every edge and every build (no process-seeded hasher).
pub fn weight(member: &str, digest: &Digest) -> u64 {
    let mut h = Sha256::new();
    h.update(member.as_bytes());
    h.update(b"\n");
    h.update(digest.to_string().as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// The members in owner order for `digest`: the owner first, then the next owner if it fails,
/// and so on. Ties (never in practice) go to the smaller name.
pub fn rank<'a>(members: impl IntoIterator<Item = &'a str>, digest: &Digest) -> Vec<&'a str> {
    let mut weighted: Vec<(u64, &str)> = members.into_iter().map(|m| (weight(m, digest), m)).collect();
    weighted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    weighted.into_iter().map(|(_, m)| m).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digests(n: u32) -> Vec<Digest> {
        (0..n).map(|i| Digest::of(&i.to_be_bytes())).collect()
    }

    #[test]
    fn should_rank_the_same_whatever_the_order_of_the_members() {
        let d = Digest::of(b"layer");
        let a = rank(["http://a:5000", "http://b:5000", "http://c:5000"], &d);
        let b = rank(["http://c:5000", "http://a:5000", "http://b:5000"], &d);
        assert_eq!(a, b);
        assert_eq!(a.len(), 3);
    }

    #[test]
    fn should_spread_owners_evenly() {
        let members = ["http://a:5000", "http://b:5000", "http://c:5000", "http://d:5000"];
        let mut owned = std::collections::HashMap::new();
        for d in digests(4000) {
            *owned.entry(rank(members, &d)[0]).or_insert(0) += 1;
        }
        for m in members {
            let n = owned[m];
            assert!((800..1200).contains(&n), "{m} owns {n} of 4000");
        }
    }

    #[test]
    fn should_move_only_the_digests_of_a_member_that_leaves() {
        let four = ["http://a:5000", "http://b:5000", "http://c:5000", "http://d:5000"];
        let three = ["http://a:5000", "http://b:5000", "http://c:5000"];
        for d in digests(2000) {
            let before = rank(four, &d)[0];
            let after = rank(three, &d)[0];
            if before != "http://d:5000" {
                assert_eq!(before, after, "a digest whose owner stayed did not move");
            } else {
                assert_eq!(after, rank(four, &d)[1], "the next owner by hash takes it");
            }
        }
    }
}
