//! Restore target times: `YYYY-MM-DD HH:MM:SS[.ffffff]` (a `T` separator is
//! accepted too) with an optional UTC offset (`Z`, `+02:00`, `-0530`,
//! `+02`); without one the local time zone applies. Resolved to an instant
//! in UTC with microsecond precision.

use anyhow::{anyhow, bail};
use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone, Utc};
use pitr_segment::TimestampMicros;

/// Parses a target time; `local` resolves times without an offset.
pub fn parse_time_in<Tz: TimeZone>(s: &str, local: &Tz) -> anyhow::Result<DateTime<Utc>> {
    let s = s.trim();
    let (body, offset) = split_offset(s)?;
    let body = body.trim().replacen('T', " ", 1);
    let naive = NaiveDateTime::parse_from_str(&body, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(&body, "%Y-%m-%d %H:%M"))
        .map_err(|_| {
            anyhow!("invalid time {s:?}: expected YYYY-MM-DD HH:MM:SS[.ffffff] with an optional offset (Z, +02:00)")
        })?;
    if naive.and_utc().timestamp_subsec_nanos() % 1000 != 0 {
        bail!("invalid time {s:?}: at most 6 fractional digits (microseconds)");
    }
    match offset {
        Some(off) => off
            .from_local_datetime(&naive)
            .single()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| anyhow!("invalid time {s:?}")),
        None => match local.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
            chrono::LocalResult::Ambiguous(..) => Err(anyhow!(
                "time {s:?} is ambiguous in the local time zone (clocks went back); add an offset like +01:00"
            )),
            chrono::LocalResult::None => Err(anyhow!(
                "time {s:?} does not exist in the local time zone (clocks went forward); add an offset"
            )),
        },
    }
}

/// Parses a target time in the machine's local time zone.
pub fn parse_time(s: &str) -> anyhow::Result<DateTime<Utc>> {
    parse_time_in(s, &Local)
}

fn split_offset(s: &str) -> anyhow::Result<(&str, Option<FixedOffset>)> {
    if let Some(b) = s.strip_suffix('Z').or_else(|| s.strip_suffix('z')) {
        return Ok((b, FixedOffset::east_opt(0)));
    }
    // An offset sign can only follow the time part (after position 10).
    let Some(i) = s
        .char_indices()
        .skip(11)
        .find(|&(_, c)| c == '+' || c == '-')
        .map(|(i, _)| i)
    else {
        return Ok((s, None));
    };
    let (body, off) = s.split_at(i);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
    let (h, m) = match digits.len() {
        2 => (&digits[..2], "00"),
        4 => (&digits[..2], &digits[2..]),
        _ => bail!("invalid UTC offset {off:?} in {s:?}: use +HH:MM"),
    };
    let (h, m): (i32, i32) = match (h.parse(), m.parse()) {
        (Ok(h), Ok(m)) if h <= 15 && m < 60 => (h, m),
        _ => bail!("invalid UTC offset {off:?} in {s:?}"),
    };
    let off = FixedOffset::east_opt(sign * (h * 3600 + m * 60))
        .ok_or_else(|| anyhow!("invalid UTC offset in {s:?}"))?;
    Ok((body, Some(off)))
}

/// µs since the Unix epoch.
pub fn to_micros(t: DateTime<Utc>) -> TimestampMicros {
    TimestampMicros(t.timestamp_micros())
}

/// The instant of `t`.
pub fn from_micros(t: TimestampMicros) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_micros(t.0).unwrap_or_default()
}

/// `2024-01-02 03:04:05.123456+00`: how PostgreSQL is given a target time.
pub fn pg_timestamp(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string()
}

/// `2024-01-02 03:04:05.123456 UTC`: for people.
pub fn utc_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f UTC").to_string()
}

/// `2024-01-02 03:04:05 UTC`: for people, where seconds are precise enough.
pub fn utc_seconds_text(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> String {
        utc_text(parse_time_in(s, &FixedOffset::east_opt(3600).unwrap()).unwrap())
    }

    #[test]
    fn formats() {
        assert_eq!(
            utc("2024-03-01 12:00:00Z"),
            "2024-03-01 12:00:00.000000 UTC"
        );
        assert_eq!(
            utc("2024-03-01 12:00:00.5+02:00"),
            "2024-03-01 10:00:00.500000 UTC"
        );
        assert_eq!(
            utc("2024-03-01T12:00:00.123456-0530"),
            "2024-03-01 17:30:00.123456 UTC"
        );
        assert_eq!(
            utc("2024-03-01 12:00:00+02"),
            "2024-03-01 10:00:00.000000 UTC"
        );
        // No offset: the given local zone (+01:00 here).
        assert_eq!(utc("2024-03-01 12:00:00"), "2024-03-01 11:00:00.000000 UTC");
        assert_eq!(utc("2024-03-01 12:00"), "2024-03-01 11:00:00.000000 UTC");
        assert_eq!(
            pg_timestamp(parse_time_in("2024-03-01 12:00:00.000001Z", &Utc).unwrap()),
            "2024-03-01 12:00:00.000001+00"
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "2024-03-01",
            "yesterday",
            "2024-13-01 00:00:00",
            "2024-03-01 12:00:00+2:00:00",
            "2024-03-01 12:00:00.1234567Z",
            "2024-03-01 12:00:00+99:00",
        ] {
            assert!(parse_time_in(bad, &Utc).is_err(), "{bad}");
        }
    }

    #[test]
    fn micros_roundtrip() {
        let t = parse_time_in("2024-03-01 12:00:00.654321Z", &Utc).unwrap();
        assert_eq!(from_micros(to_micros(t)), t);
    }
}
