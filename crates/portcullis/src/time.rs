//! Times as people write them: RFC 3339 UTC timestamps, to and from milliseconds since the
//! Unix epoch (the one representation stored and compared everywhere else).

/// Milliseconds since the epoch as an RFC 3339 UTC time (`2026-11-25T23:37:31Z`).
pub fn iso_time(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let time = seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", time / 3600, time % 3600 / 60, time % 60)
}

/// Parse `2099-12-31T00:00:00Z`, with optional fractional seconds and a `±HH:MM` offset
/// instead of `Z`, or a bare date `2099-12-31` (midnight UTC). `None` when it is not one.
pub fn parse_iso_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let number = |part: &str| -> Option<i64> {
        (!part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit())).then(|| part.parse().ok()).flatten()
    };
    let (date, rest) = match text.split_once(['T', 't', ' ']) {
        Some((date, rest)) => (date, Some(rest)),
        None => (text, None),
    };
    let mut parts = date.splitn(3, '-');
    let (year, month, day) = (number(parts.next()?)?, number(parts.next()?)?, number(parts.next()?)?);
    if date.len() != 10 || !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let mut ms = days_from_civil(year, month, day) * 86_400_000;
    let Some(rest) = rest else { return Some(ms) };
    let (clock, offset_minutes) = if let Some(clock) = rest.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = rest.rfind(['+', '-'])?;
        let (clock, offset) = rest.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let (hours, minutes) = (number(hours)?, number(minutes)?);
        if hours > 23 || minutes > 59 {
            return None;
        }
        (clock, sign * (hours * 60 + minutes))
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut fields = whole.split(':');
    let (hour, minute, second) = (number(fields.next()?)?, number(fields.next()?)?, number(fields.next()?)?);
    if fields.next().is_some() || whole.len() != 8 || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    if !fraction.is_empty() && !fraction.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let millis = fraction.bytes().take(3).enumerate().map(|(at, byte)| i64::from(byte - b'0') * [100, 10, 1][at]);
    ms += ((hour * 60 + minute) * 60 + second) * 1000 + millis.sum::<i64>();
    Some(ms - offset_minutes * 60_000)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_forms() {
        for ms in [0, 951_782_400_000, 1_764_113_851_000, 4_102_358_400_000, -86_400_000] {
            assert_eq!(parse_iso_time(&iso_time(ms)), Some(ms), "{}", iso_time(ms));
        }
        assert_eq!(iso_time(1_764_113_851_000), "2025-11-25T23:37:31Z");
        assert_eq!(parse_iso_time("2099-12-31"), parse_iso_time("2099-12-31T00:00:00Z"));
        assert_eq!(parse_iso_time("2026-01-01T01:30:00+01:30"), parse_iso_time("2026-01-01T00:00:00Z"));
        assert_eq!(
            parse_iso_time("2026-01-01T00:00:00.250Z"),
            parse_iso_time("2026-01-01T00:00:00Z").map(|ms| ms + 250)
        );
        assert_eq!(parse_iso_time("2025-12-31T19:00:00-05:00"), parse_iso_time("2026-01-01T00:00:00Z"));
        for bad in [
            "",
            "tomorrow",
            "2026-02-30",
            "2026-13-01",
            "2026-1-1",
            "2026-01-01T25:00:00Z",
            "2026-01-01T00:00Z",
            "2026-01-01T00:00:00+1",
        ] {
            assert_eq!(parse_iso_time(bad), None, "{bad}");
        }
    }
}
