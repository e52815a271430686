//! Durations as written in config: `"60s"`, `"24h"`, `"500ms"`, `"1h30m"`, `"7d"`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A duration parsed from a human-readable string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a duration (expected e.g. \"500ms\", \"30s\", \"5m\", \"24h\", \"7d\", \"1h30m\")")]
pub struct DurationError(pub String);

impl HumanDuration {
    pub const fn secs(n: u64) -> Self {
        HumanDuration(Duration::from_secs(n))
    }
    pub fn get(self) -> Duration {
        self.0
    }
}

fn unit_millis(unit: &str) -> Option<u64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    })
}

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DurationError(s.to_owned());
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(err());
        }
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
            let letters = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| i + digits);
            let number: u64 = rest[..digits].parse().map_err(|_| err())?;
            let millis = unit_millis(&rest[digits..letters]).ok_or_else(err)?;
            total = number.checked_mul(millis).and_then(|v| total.checked_add(v)).ok_or_else(err)?;
            rest = &rest[letters..];
        }
        Ok(HumanDuration(Duration::from_millis(total)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis() as u64;
        for (unit, mult) in [("d", 86_400_000u64), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if ms >= mult && ms.is_multiple_of(mult) {
                return write!(f, "{}{unit}", ms / mult);
            }
        }
        write!(f, "{ms}ms")
    }
}

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for HumanDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_parse_single_and_compound_durations() {
        let p = |s: &str| s.parse::<HumanDuration>().unwrap().0;
        assert_eq!(p("60s"), Duration::from_secs(60));
        assert_eq!(p("24h"), Duration::from_secs(86_400));
        assert_eq!(p("500ms"), Duration::from_millis(500));
        assert_eq!(p("1h30m"), Duration::from_secs(5_400));
        assert_eq!(p("0s"), Duration::ZERO);
    }

    #[test]
    fn should_reject_bad_durations() {
        for bad in ["", "60", "s", "1.5s", "10 years", "-1s", "1w", "5sec"] {
            assert!(bad.parse::<HumanDuration>().is_err(), "{bad}");
        }
    }

    #[test]
    fn should_display_round_trip() {
        for s in ["1d", "90m", "500ms", "45s"] {
            assert_eq!(s.parse::<HumanDuration>().unwrap().to_string(), s);
        }
    }
}
