//! Event-time parsing (ISO-8601 and epoch numbers) and UTC formatting of window bounds.

use serde_json::Value;

use super::{number, TimeFormat};

/// 0000-01-01T00:00:00Z. Times are confined to four-digit years so that every accepted
/// instant formats back unambiguously and window arithmetic can never overflow.
pub(crate) const MIN_MS: i64 = -62_167_219_200_000;
/// 9999-12-31T23:59:59.999Z.
pub(crate) const MAX_MS: i64 = 253_402_300_799_999;

/// Reads a record's time value in the configured format; `None` means unparsable.
pub(crate) fn parse_value(v: &Value, format: TimeFormat) -> Option<i64> {
    match format {
        TimeFormat::Iso8601 => v.as_str().and_then(parse_iso8601),
        TimeFormat::EpochSeconds => number(v).and_then(|s| from_f64_ms(s * 1000.0)),
        TimeFormat::EpochMillis => number(v).and_then(from_f64_ms),
    }
}

pub(crate) fn in_range(ms: i64) -> Option<i64> {
    (MIN_MS..=MAX_MS).contains(&ms).then_some(ms)
}

// Rounding rather than truncating: 1700000000.123 s is 1700000000122.9999 ms in binary.
fn from_f64_ms(ms: f64) -> Option<i64> {
    let ms = ms.round();
    (ms >= MIN_MS as f64 && ms <= MAX_MS as f64).then_some(ms as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `2026-11-24T13:05:09.123Z`: always UTC and always milliseconds, so strings sort like times.
pub fn format_iso8601(ms: i64) -> String {
    let (y, mo, d) = civil_from_days(ms.div_euclid(86_400_000));
    let t = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3_600_000,
        t / 60_000 % 60,
        t / 1000 % 60,
        t % 1000
    )
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize) -> Option<i64> {
        let part = self.s.get(self.i..self.i + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(part.iter().fold(0, |acc, b| acc * 10 + i64::from(b - b'0')))
    }

    fn eat(&mut self, options: &[u8]) -> Option<u8> {
        let b = *self.s.get(self.i).filter(|b| options.contains(b))?;
        self.i += 1;
        Some(b)
    }

    fn done(&self) -> bool {
        self.i == self.s.len()
    }
}

/// Extended-format ISO-8601 / RFC 3339: `YYYY-MM-DD`, optionally followed by
/// `Thh:mm:ss[.f…]` and a zone (`Z`, `±hh:mm`, `±hhmm`, `±hh`; none means UTC).
pub fn parse_iso8601(s: &str) -> Option<i64> {
    let mut c = Cursor {
        s: s.as_bytes(),
        i: 0,
    };
    let y = c.digits(4)?;
    c.eat(b"-")?;
    let mo = c.digits(2)?;
    c.eat(b"-")?;
    let d = c.digits(2)?;
    if !(1..=12).contains(&mo) || !(1..=days_in_month(y, mo)).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, mo, d) * 86_400_000;
    if !c.done() {
        c.eat(b"Tt ")?;
        let h = c.digits(2)?;
        c.eat(b":")?;
        let mi = c.digits(2)?;
        c.eat(b":")?;
        let sec = c.digits(2)?;
        if h > 23 || mi > 59 || sec > 59 {
            return None;
        }
        ms += ((h * 60 + mi) * 60 + sec) * 1000;
        if c.eat(b".,").is_some() {
            let start = c.i;
            let mut frac = 0;
            while let Some(digit) = c.digits(1) {
                // Sub-millisecond digits are read (so they validate) but truncated.
                if c.i - start <= 3 {
                    frac = frac * 10 + digit;
                }
            }
            let n = c.i - start;
            if n == 0 {
                return None;
            }
            ms += frac * 10_i64.pow(3_u32.saturating_sub(n as u32));
        }
        if let Some(sign) = c.eat(b"+-") {
            let oh = c.digits(2)?;
            let om = if c.done() {
                0
            } else {
                c.eat(b":");
                c.digits(2)?
            };
            if oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60_000;
            ms += if sign == b'+' { -offset } else { offset };
        } else if !c.done() {
            c.eat(b"Zz")?;
        }
    }
    if !c.done() {
        return None;
    }
    in_range(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: i64 = 1_795_525_509_000; // 2026-11-24T13:05:09Z

    #[test]
    fn iso8601_parsing_table() {
        let table: &[(&str, Option<i64>)] = &[
            ("2026-11-24T13:05:09Z", Some(T)),
            ("2026-11-24T13:05:09", Some(T)),
            ("2026-11-24T13:05:09.123456", Some(T + 123)),
            ("2026-11-24T13:05:09.1Z", Some(T + 100)),
            ("2026-11-24T13:05:09.99999z", Some(T + 999)),
            ("2026-11-24t13:05:09,5", Some(T + 500)),
            ("2026-11-24 13:05:09", Some(T)),
            ("2026-11-24T13:05:09+02:00", Some(T - 7_200_000)),
            ("2026-11-24T13:05:09-0530", Some(T + 19_800_000)),
            ("2026-11-24T13:05:09.250-05", Some(T + 18_000_250)),
            ("2026-11-24T13:05:09+00:00", Some(T)),
            ("2026-11-24", Some(1_795_478_400_000)),
            ("1970-01-01T00:00:00Z", Some(0)),
            ("1969-12-31T23:59:59.999Z", Some(-1)),
            ("2000-02-29T00:00:00Z", Some(951_782_400_000)),
            ("2024-12-31T23:59:59Z", Some(1_735_689_599_000)),
            ("0000-01-01T00:00:00Z", Some(MIN_MS)),
            ("9999-12-31T23:59:59.999Z", Some(MAX_MS)),
            ("9999-12-31T23:59:59.999-01:00", None),
            ("2026-02-29T00:00:00Z", None),
            ("1900-02-29", None),
            ("2026-13-01T00:00:00Z", None),
            ("2026-04-31", None),
            ("2026-11-24T24:00:00Z", None),
            ("2026-11-24T13:60:00Z", None),
            ("2026-11-24T23:59:60Z", None),
            ("2026-11-24T13:05", None),
            ("2026-11-24T13:05:09.", None),
            ("2026-11-24T13:05:09+25:00", None),
            ("2026-11-24T13:05:09+02:", None),
            ("2026-11-24T13:05:09Zjunk", None),
            ("2026-11-24T13:05:09 ", None),
            ("2026-1-24", None),
            ("20261124T130509Z", None),
            ("+2026-11-24", None),
            ("", None),
            ("yesterday", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_iso8601(input), *want, "parsing {input:?}");
        }
    }

    #[test]
    fn formatting_table_and_round_trip() {
        let table = [
            (0, "1970-01-01T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (T + 123, "2026-11-24T13:05:09.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (MIN_MS, "0000-01-01T00:00:00.000Z"),
            (MAX_MS, "9999-12-31T23:59:59.999Z"),
        ];
        for (ms, want) in table {
            assert_eq!(format_iso8601(ms), want);
        }
        // A sweep across centuries, leap days and negative times, with odd millisecond steps.
        let mut ms = MIN_MS;
        while ms < MAX_MS {
            assert_eq!(parse_iso8601(&format_iso8601(ms)), Some(ms), "{ms}");
            ms += 7_777_777_777_777;
        }
    }

    #[test]
    fn epoch_value_table() {
        let table = [
            (json!(1.5), TimeFormat::EpochSeconds, Some(1500)),
            (
                json!(1_700_000_000.123),
                TimeFormat::EpochSeconds,
                Some(1_700_000_000_123),
            ),
            (
                json!("1700000000"),
                TimeFormat::EpochSeconds,
                Some(1_700_000_000_000),
            ),
            (json!(-2), TimeFormat::EpochSeconds, Some(-2000)),
            (json!(1e20), TimeFormat::EpochSeconds, None),
            (json!("abc"), TimeFormat::EpochSeconds, None),
            (json!(true), TimeFormat::EpochSeconds, None),
            (
                json!(1_700_000_000_123_i64),
                TimeFormat::EpochMillis,
                Some(1_700_000_000_123),
            ),
            (json!(" 42 "), TimeFormat::EpochMillis, Some(42)),
            (json!("2026-11-24T13:05:09Z"), TimeFormat::EpochMillis, None),
            (json!(1_700_000_000), TimeFormat::Iso8601, None),
            (json!("2026-11-24T13:05:09Z"), TimeFormat::Iso8601, Some(T)),
        ];
        for (v, format, want) in table {
            assert_eq!(parse_value(&v, format), want, "{v} as {format:?}");
        }
    }
}
