//! Times a user types to bound a search (`hark search --since/--until`), read in the local time
//! zone: `2026-12-03`, `"2026-12-03 14:05"`, `14:05` (today), `2h`, `90 minutes`, `3 days ago`,
//! `today`, `yesterday`, `now`, or an RFC 3339 timestamp (`2026-12-03T14:05:00Z`).

use jiff::{
    Span, Timestamp, ZonedDateTime,
    civil::{Date, DateTime, Time},
};

use super::StoreError;

/// Reads `input` relative to `now` (whose time zone is the user's); returns unix microseconds.
pub fn parse_when(input: &str, now: &ZonedDateTime) -> Result<i64, StoreError> {
    let s = input.trim();
    let tz = now.time_zone().clone();
    let bad = |why: String| StoreError::Query(format!("cannot read {input:?} as a time: {why}"));
    let at = |dt: DateTime| {
        dt.to_zoned_datetime(tz.clone())
            .map(|z| z.timestamp())
            .map_err(|e| bad(e.to_string()))
    };
    let ts =
        match s.to_ascii_lowercase().as_str() {
            "now" => now.timestamp(),
            "today" => at(now.date().to_datetime(Time::midnight()))?,
            "yesterday" => at(now
                .date()
                .yesterday()
                .map_err(|e| bad(e.to_string()))?
                .to_datetime(Time::midnight()))?,
            _ => {
                if let Ok(ts) = s.parse::<Timestamp>() {
                    ts
                } else if let Ok(dt) = s.parse::<DateTime>() {
                    at(dt)?
                } else if let Ok(d) = s.parse::<Date>() {
                    at(d.to_datetime(Time::midnight()))?
                } else if let Ok(t) = s.parse::<Time>() {
                    at(now.date().to_datetime(t))?
                } else {
                    // An age: "2h", "3 days", "90 minutes ago".
                    let age = s.strip_suffix("ago").unwrap_or(s).trim();
                    let span: Span = age.parse().map_err(|_| {
                    bad("use a date (2026-12-03), a date and time (\"2026-12-03 14:05\"), a time \
                         today (14:05), an age (2h, 3 days), today, yesterday, now or an RFC \
                         3339 timestamp"
                        .into())
                })?;
                    now.checked_sub(span.abs())
                        .map_err(|e| bad(e.to_string()))?
                        .timestamp()
                }
            }
        };
    Ok(ts.as_microsecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dates_times_and_ages_in_the_local_zone() {
        let now: ZonedDateTime = "2026-12-03T15:30:00+01:00[Europe/Paris]".parse().unwrap();
        let us = |s: &str| {
            let ts: Timestamp = s.parse().unwrap();
            ts.as_microsecond()
        };
        let p = |s: &str| parse_when(s, &now).unwrap();
        assert_eq!(p("now"), us("2026-12-03T14:30:00Z"));
        assert_eq!(p("today"), us("2026-12-02T23:00:00Z"));
        assert_eq!(p("Yesterday"), us("2026-12-01T23:00:00Z"));
        assert_eq!(p("2026-12-01"), us("2026-11-30T23:00:00Z"));
        assert_eq!(p("2026-12-01 08:15"), us("2026-12-01T07:15:00Z"));
        assert_eq!(p("2026-12-01T08:15:00Z"), us("2026-12-01T08:15:00Z"));
        assert_eq!(p("09:00"), us("2026-12-03T08:00:00Z"));
        assert_eq!(p("2h"), us("2026-12-03T12:30:00Z"));
        assert_eq!(p("90 minutes ago"), us("2026-12-03T13:00:00Z"));
        assert_eq!(p("1 day"), us("2026-12-02T14:30:00Z"));
        for bad in ["", "soon", "2026-13-01", "25:00"] {
            assert!(parse_when(bad, &now).is_err(), "{bad:?}");
        }
    }
}
