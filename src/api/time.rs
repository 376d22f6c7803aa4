//! Kubernetes time formats: `metav1.Time` (RFC 3339, whole seconds, UTC: `2026-11-28T01:49:25Z`)
//! and `metav1.MicroTime` (six fractional digits, used by Lease `renewTime` and Events), and
//! RFC 3339 with nine fractional digits (CRI log records, as containerd writes them).
//! Pure conversions; no clock is read here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `metav1.Time`: `2026-11-28T01:49:25Z`.
pub fn format_time(t: SystemTime) -> String {
    format_unix_time(unix(t).0)
}

/// `metav1.Time` of whole seconds since the Unix epoch.
pub fn format_unix_time(secs: i64) -> String {
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// RFC 3339 in UTC with exactly nine fractional digits: `2016-10-06T00:17:09.669794202Z`.
pub fn format_nano_time(t: SystemTime) -> String {
    let (secs, nanos) = unix(t);
    let (y, mo, d, h, mi, s) = civil(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{nanos:09}Z")
}

/// `metav1.MicroTime`: `2026-11-28T01:49:25.123456Z`.
pub fn format_micro_time(t: SystemTime) -> String {
    let (secs, nanos) = unix(t);
    let (y, mo, d, h, mi, s) = civil(secs);
    let micros = nanos / 1000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}Z")
}

/// Parses RFC 3339 as the API server writes it (`Z` or a numeric offset, optional fraction).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { text.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut rest = &text[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut n: u32 = 0;
        for (i, c) in frac[..digits].bytes().enumerate() {
            if i < 9 {
                n = n * 10 + u32::from(c - b'0');
            }
        }
        for _ in digits..9 {
            n *= 10;
        }
        nanos = n;
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + s - offset;
    let base = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    Some(base + Duration::from_nanos(u64::from(nanos)))
}

/// Seconds (floored) and nanoseconds since the Unix epoch; works before 1970 too.
pub fn unix(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            let d = e.duration();
            let secs = -i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            match d.subsec_nanos() {
                0 => (secs, 0),
                n => (secs - 1, 1_000_000_000 - n),
            }
        }
    }
}

/// (year, month, day, hour, minute, second) of a Unix time, in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // All of these are small and non-negative by construction (sod in 0..86400, m in 1..=12,
    // d in 1..=31), so the conversions cannot fail.
    let small = |v: i64| u32::try_from(v).unwrap_or(0);
    (
        y,
        small(m),
        small(d),
        small(sod / 3600),
        small(sod % 3600 / 60),
        small(sod % 60),
    )
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_api_server_does() {
        let t = UNIX_EPOCH + Duration::new(1_795_830_565, 123_456_789);
        assert_eq!(format_time(t), "2026-11-28T01:49:25Z");
        assert_eq!(format_micro_time(t), "2026-11-28T01:49:25.123456Z");
    }

    #[test]
    fn parses_what_it_formats_and_offsets() {
        let t = UNIX_EPOCH + Duration::new(1_795_830_565, 123_456_000);
        assert_eq!(parse_time(&format_micro_time(t)), Some(t));
        assert_eq!(
            parse_time("2026-11-28T02:49:25.123456+01:00"),
            Some(t),
            "offsets are honoured"
        );
        assert_eq!(
            parse_time("2026-11-28T01:49:25Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_795_830_565))
        );
        for bad in [
            "",
            "2026-11-28",
            "2026-13-28T01:49:25Z",
            "2026-11-28T01:49:25",
            "x",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }
}
