//! Wall-clock times as RFC 3339 text (UTC), without a date library.

/// `secs` since the Unix epoch (and `millis` more, when given) as `2026-12-03T08:40:00Z` or
/// `2026-12-03T08:40:00.123Z`.
pub fn rfc3339(secs: u64, millis: Option<u32>) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    match millis {
        Some(ms) => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"),
        None => format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z"),
    }
}

/// Now, with milliseconds.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    rfc3339(now.as_secs(), Some(now.subsec_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn should_format_rfc3339() {
        assert_eq!(rfc3339(0, None), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_208_000, None), "2026-12-02T10:40:00Z");
        assert_eq!(rfc3339(951_782_400, Some(7)), "2000-02-29T00:00:00.007Z");
    }
}
