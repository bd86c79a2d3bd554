//! Staged objects into rows, with Redshift COPY's meaning of the options
//! (see `copy`). PostgreSQL then converts each value to its column's type;
//! what it refuses fails alone (see `load`).
//!
//! - Records: JSON (one or more objects per line), CSV or delimited text,
//!   one record per line; `IGNOREHEADER n` skips an object's first n lines.
//! - JSON `auto`: a key names its column (`auto ignorecase`: in any case);
//!   a missing key or `null` is NULL; numbers and booleans load as written;
//!   objects and arrays as their JSON text.
//! - CSV and text: fields in the column order; an empty field is NULL in a
//!   column that is not character, and an empty string in one that is.
//! - Character columns: `EMPTYASNULL` and `BLANKSASNULL` load empty and
//!   whitespace-only values as NULL; `TRUNCATECOLUMNS` cuts values to the
//!   column's length.
//! - Timestamp and date columns: `TIMEFORMAT 'epochsecs' | 'epochmillisecs'`
//!   read numbers (fractions allowed) as UTC; a pattern (`YYYY`, `YY`, `MM`,
//!   `MON`, `DD`, `HH24`, `HH12`, `HH`, `MI`, `SS`, `MS`, `US`, anything else
//!   literal) reads values in that form; `auto` leaves them to PostgreSQL.
//! - Invalid UTF-8 refuses the record, or with `ACCEPTINVCHARS` each invalid
//!   sequence becomes the replacement character.

use serde_json::Value;

use super::copy::{CopyOptions, RecordFormat, TimeFormat};
use super::load::{Column, Row};

/// One line of an object that did not become a row: why, and the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    pub reason: String,
    pub raw: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Char,
    Timestamp,
    Date,
    Other,
}

fn kind(c: &Column) -> Kind {
    match c.data_type.as_str() {
        "character varying" | "character" | "text" => Kind::Char,
        "timestamp without time zone" | "timestamp with time zone" => Kind::Timestamp,
        "date" => Kind::Date,
        _ => Kind::Other,
    }
}

/// Every record of a staged object (already decompressed), as rows or as
/// the reason it is not one, in order.
pub fn rows(body: &[u8], opts: &CopyOptions, columns: &[Column]) -> Vec<Result<Row, Unreadable>> {
    let mut out = Vec::new();
    let lines = body
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .skip(opts.ignore_header as usize);
    for line in lines {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let unreadable = |reason: String| Unreadable {
            reason,
            raw: line.to_vec(),
        };
        let text = match (std::str::from_utf8(line), opts.accept_inv_chars) {
            (Ok(t), _) => t.to_string(),
            (Err(_), Some(c)) => line
                .utf8_chunks()
                .flat_map(|ch| {
                    let bad = (!ch.invalid().is_empty()).then_some(c);
                    ch.valid().chars().chain(bad)
                })
                .collect(),
            (Err(e), None) => {
                out.push(Err(unreadable(format!(
                    "not UTF-8 ({e}); ACCEPTINVCHARS would replace it"
                ))));
                continue;
            }
        };
        match &opts.format {
            RecordFormat::Json { ignore_case } => {
                for v in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
                    match v {
                        Ok(Value::Object(obj)) => out
                            .push(json_row(&obj, *ignore_case, opts, columns).map_err(unreadable)),
                        Ok(_) => out.push(Err(unreadable("not a JSON object".into()))),
                        // Nothing more of the line can be read past a syntax error.
                        Err(e) => {
                            out.push(Err(unreadable(format!("not JSON: {e}"))));
                            break;
                        }
                    }
                }
            }
            RecordFormat::Csv { delimiter, quote } => {
                out.push(
                    csv_fields(&text, *delimiter, *quote)
                        .and_then(|f| fields_row(f, opts, columns))
                        .map_err(unreadable),
                );
            }
            RecordFormat::Text { delimiter } => {
                let f = text
                    .split(*delimiter)
                    .map(|s| (s.to_string(), false))
                    .collect();
                out.push(fields_row(f, opts, columns).map_err(unreadable));
            }
        }
    }
    out
}

fn json_row(
    obj: &serde_json::Map<String, Value>,
    ignore_case: bool,
    opts: &CopyOptions,
    columns: &[Column],
) -> Result<Row, String> {
    columns
        .iter()
        .map(|c| {
            let v = match obj.get(&c.name) {
                Some(v) => Some(v),
                None if ignore_case => obj
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(&c.name))
                    .map(|(_, v)| v),
                None => None,
            };
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => value(s.clone(), opts, c),
                Some(Value::Number(n)) => value(n.to_string(), opts, c),
                Some(v) => Ok(Some(v.to_string())),
            }
        })
        .collect()
}

/// A CSV line's fields, each with whether it was quoted.
fn csv_fields(line: &str, delimiter: char, quote: char) -> Result<Vec<(String, bool)>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        let quoted = chars.peek() == Some(&quote);
        if quoted {
            chars.next();
            loop {
                match chars.next() {
                    Some(c) if c == quote && chars.peek() == Some(&quote) => {
                        chars.next();
                        field.push(quote);
                    }
                    Some(c) if c == quote => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted CSV field is not closed on its line".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push((field, true));
                    return Ok(fields);
                }
                Some(c) if c == delimiter => fields.push((field, true)),
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push((field, false));
                        return Ok(fields);
                    }
                    Some(c) if c == delimiter => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push((field, false));
        }
    }
}

fn fields_row(
    fields: Vec<(String, bool)>,
    opts: &CopyOptions,
    columns: &[Column],
) -> Result<Row, String> {
    if fields.len() != columns.len() {
        return Err(format!(
            "{} fields for {} columns",
            fields.len(),
            columns.len()
        ));
    }
    fields
        .into_iter()
        .zip(columns)
        .map(|((f, quoted), c)| {
            if f.is_empty() && !quoted && kind(c) != Kind::Char {
                return Ok(None);
            }
            value(f, opts, c)
        })
        .collect()
}

/// One value for its column, after the options that apply to it.
fn value(s: String, opts: &CopyOptions, c: &Column) -> Result<Option<String>, String> {
    match kind(c) {
        Kind::Char => {
            if opts.empty_as_null && s.is_empty()
                || opts.blanks_as_null && !s.is_empty() && s.trim().is_empty()
            {
                return Ok(None);
            }
            match c.max_chars {
                Some(n) if opts.truncate_columns && s.chars().count() > n => {
                    Ok(Some(s.chars().take(n).collect()))
                }
                _ => Ok(Some(s)),
            }
        }
        Kind::Timestamp => match &opts.time_format {
            TimeFormat::Auto => Ok(Some(s)),
            TimeFormat::EpochSecs => epoch(&s, 1000.0, c),
            TimeFormat::EpochMillis => epoch(&s, 1.0, c),
            TimeFormat::Pattern(p) => pattern(&s, p, true, c),
        },
        Kind::Date => match &opts.date_format {
            Some(p) => pattern(&s, p, false, c),
            None => Ok(Some(s)),
        },
        Kind::Other => Ok(Some(s)),
    }
}

fn epoch(s: &str, to_ms: f64, c: &Column) -> Result<Option<String>, String> {
    let ms = s
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite())
        .map(|x| (x * to_ms).round())
        .filter(|ms| ms.abs() < 253_402_300_800_000.0)
        .and_then(|ms| chrono::DateTime::from_timestamp_millis(ms as i64))
        .ok_or_else(|| format!("column {}: {s:?} is not an epoch time", c.name))?;
    Ok(Some(ms.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string()))
}

/// A Redshift datetime pattern as a chrono format.
fn chrono_format(p: &str) -> String {
    const PARTS: [(&str, &str); 12] = [
        ("YYYY", "%Y"),
        ("HH24", "%H"),
        ("HH12", "%I"),
        ("MON", "%b"),
        ("YY", "%y"),
        ("MM", "%m"),
        ("DD", "%d"),
        ("HH", "%H"),
        ("MI", "%M"),
        ("SS", "%S"),
        ("MS", "%3f"),
        ("US", "%6f"),
    ];
    let mut out = String::new();
    let mut rest = p;
    while let Some(c) = rest.chars().next() {
        if let Some((from, to)) = PARTS.iter().find(|(f, _)| rest.starts_with(*f)) {
            out.push_str(to);
            rest = &rest[from.len()..];
        } else {
            if c == '%' {
                out.push('%');
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn pattern(s: &str, p: &str, with_time: bool, c: &Column) -> Result<Option<String>, String> {
    let f = chrono_format(p);
    let bad = || format!("column {}: {s:?} does not match {p:?}", c.name);
    if with_time {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s.trim(), &f) {
            return Ok(Some(t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()));
        }
    }
    let d = chrono::NaiveDate::parse_from_str(s.trim(), &f).map_err(|_| bad())?;
    Ok(Some(if with_time {
        d.format("%Y-%m-%d 00:00:00").to_string()
    } else {
        d.format("%Y-%m-%d").to_string()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols() -> Vec<Column> {
        let c = |name: &str, t: &str, n: Option<usize>| Column {
            name: name.into(),
            data_type: t.into(),
            max_chars: n,
        };
        vec![
            c("id", "integer", None),
            c("source", "character varying", Some(4)),
            c("at", "timestamp with time zone", None),
            c("day", "date", None),
        ]
    }

    fn opts(text: &str) -> CopyOptions {
        CopyOptions::parse(text).unwrap()
    }

    fn ok(rows: Vec<Result<Row, Unreadable>>) -> Vec<Vec<Option<String>>> {
        rows.into_iter().map(|r| r.unwrap()).collect()
    }

    fn v(xs: &[Option<&str>]) -> Vec<Option<String>> {
        xs.iter().map(|x| x.map(str::to_string)).collect()
    }

    #[test]
    fn json_auto_and_ignorecase() {
        let body = br#"{"id": 1, "source": "web", "at": "2026-11-28T13:00:00Z", "extra": [1]}
{"ID": 2, "Source": "ios"} {"id": 3, "source": null}
"#;
        let got = ok(rows(body, &opts("json 'auto'"), &cols()));
        assert_eq!(
            got,
            [
                v(&[Some("1"), Some("web"), Some("2026-11-28T13:00:00Z"), None]),
                v(&[None, None, None, None]),
                v(&[Some("3"), None, None, None]),
            ]
        );
        let got = ok(rows(body, &opts("json 'auto ignorecase'"), &cols()));
        assert_eq!(got[1], v(&[Some("2"), Some("ios"), None, None]));
    }

    #[test]
    fn bad_records_are_reasons_and_the_rest_go_on() {
        let body =
            b"{\"id\": 1}\nnot json\n[1,2]\n{\"id\": 4, \"source\": \"a\xffb\"}\n{\"id\": 5}\n";
        let got = rows(body, &opts("json 'auto'"), &cols());
        let reasons: Vec<String> = got
            .iter()
            .map(|r| match r {
                Ok(_) => "ok".into(),
                Err(u) => u.reason.split(' ').take(2).collect::<Vec<_>>().join(" "),
            })
            .collect();
        assert_eq!(reasons, ["ok", "not JSON:", "not a", "not UTF-8", "ok"]);
        let Err(u) = &got[1] else { panic!() };
        assert_eq!(u.raw, b"not json");
        let got = rows(body, &opts("json 'auto' acceptinvchars as '^'"), &cols());
        assert_eq!(got[3].as_ref().unwrap()[1].as_deref(), Some("a^b"));
    }

    #[test]
    fn csv_text_and_the_null_options() {
        let cols = cols();
        let body = b"id,source,at,day\n1,\"a,b\",,\n2,\"\",2026-11-28 13:00:00,2026-11-28\n3, ,,\n";
        let got = ok(rows(body, &opts("csv ignoreheader 1"), &cols));
        assert_eq!(got[0], v(&[Some("1"), Some("a,b"), None, None]));
        assert_eq!(got[1][1].as_deref(), Some(""));
        assert_eq!(got[2][1].as_deref(), Some(" "));
        let got = ok(rows(
            body,
            &opts("csv ignoreheader 1 emptyasnull blanksasnull"),
            &cols,
        ));
        assert_eq!((got[1][1].as_deref(), got[2][1].as_deref()), (None, None));
        let got = rows(b"1|toolong|x|y\n1|x\n", &opts("delimiter '|'"), &cols);
        assert_eq!(got[0].as_ref().unwrap()[1].as_deref(), Some("toolong"));
        assert_eq!(
            got[1].as_ref().unwrap_err().reason,
            "2 fields for 4 columns"
        );
        let got = ok(rows(b"1|toolong||\n", &opts("truncatecolumns"), &cols));
        assert_eq!(got[0][1].as_deref(), Some("tool"));
        assert!(rows(b"1,\"open\n", &opts("csv"), &cols)[0].is_err());
    }

    #[test]
    fn time_formats() {
        let cols = cols();
        let got = ok(rows(
            br#"{"at": 1795698000.5}"#,
            &opts("json 'auto' timeformat 'epochsecs'"),
            &cols,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-26 13:00:00.500+00"));
        let got = ok(rows(
            br#"{"at": "1795698000123"}"#,
            &opts("json 'auto' timeformat 'epochmillisecs'"),
            &cols,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-26 13:00:00.123+00"));
        let got = ok(rows(
            br#"{"at": "28/11/2026 13.05.09", "day": "11-28-2026"}"#,
            &opts("json 'auto' timeformat 'DD/MM/YYYY HH24.MI.SS' dateformat 'MM-DD-YYYY'"),
            &cols,
        ));
        assert_eq!(got[0][2].as_deref(), Some("2026-11-28 13:05:09.000000"));
        assert_eq!(got[0][3].as_deref(), Some("2026-11-28"));
        let bad = rows(
            br#"{"at": "yesterday"}"#,
            &opts("json 'auto' timeformat 'epochsecs'"),
            &cols,
        );
        assert!(bad[0]
            .as_ref()
            .unwrap_err()
            .reason
            .contains("not an epoch time"));
    }
}
