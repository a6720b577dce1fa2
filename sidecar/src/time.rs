//! RFC 3339 timestamps in UTC, for audit lines and status documents, without a date crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// `2026-11-25T18:10:16Z`, or with `micros` `2026-11-25T18:10:16.123456Z`.
pub fn rfc3339(t: SystemTime, micros: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Written digit by digit: every audit line carries one, and `format!` with widths costs ten
    // times as much.
    let mut out = String::with_capacity(27);
    digits(&mut out, year, 4);
    out.push('-');
    digits(&mut out, month, 2);
    out.push('-');
    digits(&mut out, day, 2);
    out.push('T');
    digits(&mut out, i64::try_from(h).unwrap_or(0), 2);
    out.push(':');
    digits(&mut out, i64::try_from(m).unwrap_or(0), 2);
    out.push(':');
    digits(&mut out, i64::try_from(s).unwrap_or(0), 2);
    if micros {
        out.push('.');
        digits(&mut out, i64::from(d.subsec_micros()), 6);
    }
    out.push('Z');
    out
}

/// Appends `n` in decimal, zero-padded to `width` digits (wider when it needs more, as
/// `{:0width$}` does; a negative `n`, which no time after 1970 gives, is written as 0).
fn digits(out: &mut String, n: i64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = u64::try_from(n).unwrap_or(0);
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - width.min(buf.len()));
    out.extend(buf[start..].iter().map(|&b| char::from(b)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn civil_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH, true), "1970-01-01T00:00:00.000000Z");
        // A leap day, and a date in this century.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400), false),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_000_000_250), true),
            "2026-11-18T11:06:40.250000Z"
        );
        // The last microsecond of a year, and a year beyond four digits.
        assert_eq!(
            rfc3339(
                UNIX_EPOCH + Duration::from_micros(1_798_761_599_999_999),
                true
            ),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(253_402_300_800), false),
            "10000-01-01T00:00:00Z"
        );
    }
}
