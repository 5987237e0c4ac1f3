//! Times in the one text form credentials use: RFC 3339 in, RFC 3339 UTC out, milliseconds
//! since the epoch in between (the store's unit).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `ms` since the epoch as RFC 3339 UTC with whole seconds (`2027-01-31T12:00:00Z`); a time
/// outside what RFC 3339 can write is shown as the number of milliseconds.
pub(super) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{ms} ms since the epoch"))
}

/// Reads an RFC 3339 time (`2027-01-31T12:00:00Z`, `2027-01-31T13:00:00+01:00`) as milliseconds
/// since the epoch; `None` when it is not one.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_at_second_precision_and_accepts_offsets() {
        let ms = parse_rfc3339("2027-01-31T12:00:00Z").unwrap();
        assert_eq!(ms, 1_801_396_800_000);
        assert_eq!(rfc3339(ms), "2027-01-31T12:00:00Z");
        assert_eq!(parse_rfc3339("2027-01-31T13:00:00+01:00"), Some(ms));
        assert_eq!(parse_rfc3339("2027-01-31T12:00:00.250Z"), Some(ms + 250));
        for bad in [
            "2027-01-31",
            "tomorrow",
            "1801396800",
            "2027-13-01T00:00:00Z",
            "",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
