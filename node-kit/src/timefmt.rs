//! Timestamps in the original system's `asctime` style: `2019-10-05 12:00:00,123`, in UTC.

use std::fmt::{self, Write};
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes `t` as `YYYY-MM-DD HH:MM:SS,mmm` (UTC).
pub fn write_timestamp(w: &mut impl Write, t: SystemTime) -> fmt::Result {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let in_day = secs % 86_400;
    write!(
        w,
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02},{:03}",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60,
        since_epoch.subsec_millis()
    )
}

/// `t` formatted by [`write_timestamp`].
pub fn timestamp(t: SystemTime) -> String {
    let mut out = String::with_capacity(23);
    // Writing to a String cannot fail.
    let _ = write_timestamp(&mut out, t);
    out
}

/// Reads a timestamp written by [`write_timestamp`] back as Unix
/// milliseconds; `None` if `s` is not exactly `YYYY-MM-DD HH:MM:SS,mmm` or
/// is before 1970.
pub fn parse_timestamp_millis(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 23 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = &b[range];
        digits
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let punctuation = [
        (4, b'-'),
        (7, b'-'),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b','),
    ];
    if punctuation.iter().any(|&(at, c)| b[at] != c) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second, millis) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year as i64, month as u32, day as u32)).ok()?;
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// A proleptic Gregorian date to days since 1970-01-01 (Howard Hinnant's
/// algorithm), the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let day_of_year = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let at = |secs: u64, millis: u64| {
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
        };
        assert_eq!(timestamp(at(0, 0)), "1970-01-01 00:00:00,000");
        assert_eq!(timestamp(at(1_570_276_800, 123)), "2019-10-05 12:00:00,123");
        assert_eq!(timestamp(at(951_782_400, 5)), "2000-02-29 00:00:00,005");
        assert_eq!(timestamp(at(1_795_412_230, 999)), "2026-11-23 05:37:10,999");
    }

    #[test]
    fn parses_what_it_formats() {
        for millis in [0, 5, 951_782_400_005, 1_570_276_800_123, 1_795_412_230_999] {
            let t = UNIX_EPOCH + Duration::from_millis(millis);
            assert_eq!(parse_timestamp_millis(&timestamp(t)), Some(millis));
        }
        for bad in [
            "",
            "2026-11-23 05:37:10",
            "2026-11-23T05:37:10,999",
            "2026-13-23 05:37:10,999",
            "2026-1a-23 05:37:10,999",
            "1969-12-31 23:59:59,999",
        ] {
            assert_eq!(parse_timestamp_millis(bad), None, "{bad:?}");
        }
    }
}
