//! PostgreSQL column types and their values as JSON: the type mapping the
//! README's table documents.
//!
//! Every value reaches hydrant as PostgreSQL's own text form: pgoutput
//! sends tuples as text, and a snapshot reads rows with the simple query
//! protocol, which returns text too. Both sessions set the same output
//! settings (`session_options`), and both go through [`to_json`], so a row
//! read by the snapshot and the same row in a change are the same JSON,
//! byte for byte.

use base64::Engine as _;
use serde_json::{Number, Value as Json};

/// The settings under which PostgreSQL prints values the way [`to_json`]
/// reads them, for both connections (snapshot and replication).
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "1"),
    ("bytea_output", "hex"),
    ("standard_conforming_strings", "on"),
    ("client_encoding", "UTF8"),
    // hydrant's own writes (the snapshot's watermarks) reach the WAL's
    // disk at once, so the stream brings them back without waiting for a
    // server with synchronous_commit=off to flush (up to 200 ms a chunk).
    ("synchronous_commit", "on"),
];

/// [`SESSION_SETTINGS`] as a startup `options` string.
pub fn session_options() -> String {
    SESSION_SETTINGS
        .iter()
        .map(|(k, v)| format!("-c {k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a column holds, from its type (domains resolved to their base).
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// smallint, integer, bigint, oid: `bytes` wide.
    Int {
        bytes: u8,
    },
    Numeric,
    Float {
        bytes: u8,
    },
    Bool,
    Text,
    Bytea,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Interval,
    Json,
    Uuid,
    /// An array of the element kind (any number of dimensions).
    Array(Box<Kind>),
    /// Any other type: its text form, as a string.
    Other,
}

impl Kind {
    /// The kind of a built-in base type by its OID; None for other types
    /// (resolved by `pg_type`'s category: enums, domains, arrays).
    pub fn builtin(oid: u32) -> Option<Kind> {
        Some(match oid {
            21 => Kind::Int { bytes: 2 },
            23 => Kind::Int { bytes: 4 },
            20 | 26 => Kind::Int { bytes: 8 },
            1700 => Kind::Numeric,
            700 => Kind::Float { bytes: 4 },
            701 => Kind::Float { bytes: 8 },
            16 => Kind::Bool,
            // text, varchar, bpchar, name, "char", citext-like
            25 | 1043 | 1042 | 19 | 18 => Kind::Text,
            17 => Kind::Bytea,
            1082 => Kind::Date,
            1083 => Kind::Time,
            1266 => Kind::TimeTz,
            1114 => Kind::Timestamp,
            1184 => Kind::TimestampTz,
            1186 => Kind::Interval,
            114 | 3802 => Kind::Json,
            2950 => Kind::Uuid,
            _ => return None,
        })
    }

    /// The portable type the warehouse mirror creates its column from.
    pub fn portable(&self) -> &'static str {
        match self {
            Kind::Int { bytes: 2 } => "int16",
            Kind::Int { bytes: 4 } => "int32",
            Kind::Int { .. } => "int64",
            Kind::Numeric => "decimal",
            Kind::Float { bytes: 4 } => "float32",
            Kind::Float { .. } => "float64",
            Kind::Bool => "bool",
            Kind::Bytea => "bytes",
            Kind::Date => "date",
            Kind::Time => "timeofday",
            Kind::TimeTz => "timetz",
            Kind::Timestamp => "datetime",
            Kind::TimestampTz => "timestamp",
            Kind::Interval => "interval",
            Kind::Json | Kind::Array(_) => "json",
            Kind::Uuid => "uuid",
            Kind::Text | Kind::Other => "text",
        }
    }
}

/// A value in PostgreSQL's text form as the record's JSON.
pub fn to_json(kind: &Kind, text: &str) -> Json {
    let string = || Json::String(text.to_owned());
    match kind {
        Kind::Int { .. } => text.parse::<i64>().map_or_else(|_| string(), Json::from),
        Kind::Float { .. } => match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Number::from_f64(f).map_or_else(string, Json::Number),
            _ => string(),
        },
        Kind::Bool => match text {
            "t" => Json::Bool(true),
            "f" => Json::Bool(false),
            _ => string(),
        },
        Kind::Bytea => match text.strip_prefix("\\x").and_then(unhex) {
            Some(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
            None => string(),
        },
        Kind::Timestamp => Json::String(iso_timestamp(text, false)),
        Kind::TimestampTz => Json::String(iso_timestamp(text, true)),
        Kind::Json => serde_json::from_str(text).unwrap_or_else(|_| string()),
        Kind::Array(elem) => parse_array(text, elem).unwrap_or_else(string),
        Kind::Numeric
        | Kind::Text
        | Kind::Date
        | Kind::Time
        | Kind::TimeTz
        | Kind::Interval
        | Kind::Uuid
        | Kind::Other => string(),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    b.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// `2026-11-24 13:05:09.123456[+00]` as `2026-11-24T13:05:09.123456[Z]`.
/// The session's zone is UTC, so a timestamptz always ends in `+00`.
/// `infinity`, `-infinity` and BC dates keep PostgreSQL's words.
fn iso_timestamp(text: &str, zoned: bool) -> String {
    let mut s = text.replacen(' ', "T", 1);
    if zoned {
        if let Some(t) = s.strip_suffix("+00") {
            s = format!("{t}Z");
        }
    }
    s
}

/// Arrays nest at most this deep in PostgreSQL (MAXDIM).
const MAX_DIMS: usize = 6;

/// An array's text form (`{1,2,NULL}`, `{{"a b",c},{d,e}}`) as a JSON
/// array of its elements' values; None for a form hydrant does not read
/// (explicit bounds `[0:1]={…}`), which stays a string.
fn parse_array(text: &str, elem: &Kind) -> Option<Json> {
    let b = text.as_bytes();
    let mut i = 0;
    let v = array_at(b, &mut i, elem, 0)?;
    (i == b.len()).then_some(v)
}

fn array_at(b: &[u8], i: &mut usize, elem: &Kind, depth: usize) -> Option<Json> {
    if depth >= MAX_DIMS || b.get(*i) != Some(&b'{') {
        return None;
    }
    *i += 1;
    let mut out = Vec::new();
    if b.get(*i) == Some(&b'}') {
        *i += 1;
        return Some(Json::Array(out));
    }
    loop {
        match b.get(*i)? {
            b'{' => out.push(array_at(b, i, elem, depth + 1)?),
            b'"' => {
                *i += 1;
                let mut s = Vec::new();
                loop {
                    match *b.get(*i)? {
                        b'\\' => {
                            s.push(*b.get(*i + 1)?);
                            *i += 2;
                        }
                        b'"' => {
                            *i += 1;
                            break;
                        }
                        c => {
                            s.push(c);
                            *i += 1;
                        }
                    }
                }
                out.push(to_json(elem, std::str::from_utf8(&s).ok()?));
            }
            _ => {
                let start = *i;
                while !matches!(b.get(*i)?, b',' | b'}') {
                    *i += 1;
                }
                let s = std::str::from_utf8(&b[start..*i]).ok()?;
                out.push(if s.eq_ignore_ascii_case("NULL") {
                    Json::Null
                } else {
                    to_json(elem, s)
                });
            }
        }
        match b.get(*i)? {
            b',' => *i += 1,
            b'}' => {
                *i += 1;
                return Some(Json::Array(out));
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_forms_map_as_the_readme_says() {
        let cases: &[(Kind, &str, Json)] = &[
            (
                Kind::Int { bytes: 8 },
                "-9223372036854775808",
                json!(i64::MIN),
            ),
            (Kind::Numeric, "-0.0000000001", json!("-0.0000000001")),
            (Kind::Float { bytes: 8 }, "1.5", json!(1.5)),
            (Kind::Float { bytes: 4 }, "NaN", json!("NaN")),
            (Kind::Float { bytes: 8 }, "-Infinity", json!("-Infinity")),
            (Kind::Bool, "t", json!(true)),
            (Kind::Bytea, "\\x00ff10", json!("AP8Q")),
            (
                Kind::Timestamp,
                "2026-11-24 13:05:09.5",
                json!("2026-11-24T13:05:09.5"),
            ),
            (
                Kind::TimestampTz,
                "2026-11-24 13:05:09+00",
                json!("2026-11-24T13:05:09Z"),
            ),
            (Kind::TimestampTz, "infinity", json!("infinity")),
            (Kind::Json, "{\"a\": [1, 2]}", json!({"a": [1, 2]})),
            (
                Kind::Array(Box::new(Kind::Int { bytes: 4 })),
                "{1,NULL,3}",
                json!([1, null, 3]),
            ),
            (
                Kind::Array(Box::new(Kind::Text)),
                r#"{"a b","c\"d",NULL,"NULL",e}"#,
                json!(["a b", "c\"d", null, "NULL", "e"]),
            ),
            (
                Kind::Array(Box::new(Kind::Int { bytes: 2 })),
                "{{1,2},{3,4}}",
                json!([[1, 2], [3, 4]]),
            ),
            (Kind::Array(Box::new(Kind::Text)), "{}", json!([])),
            (
                Kind::Array(Box::new(Kind::Int { bytes: 4 })),
                "[0:1]={1,2}",
                json!("[0:1]={1,2}"),
            ),
            (
                Kind::Array(Box::new(Kind::Text)),
                "{\"open",
                json!("{\"open"),
            ),
        ];
        for (kind, text, want) in cases {
            assert_eq!(&to_json(kind, text), want, "{kind:?} {text}");
        }
    }

    #[test]
    fn arrays_deeper_than_postgresql_allows_stay_text() {
        let deep = format!("{}1{}", "{".repeat(7), "}".repeat(7));
        let v = to_json(&Kind::Array(Box::new(Kind::Int { bytes: 4 })), &deep);
        assert_eq!(v, Json::String(deep));
    }
}
