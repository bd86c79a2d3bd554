//! MySQL column types and their values as JSON: the type mapping the
//! README's table documents.
//!
//! A value arrives two ways: from a snapshot read (the binary protocol of a
//! prepared statement, the session's time zone UTC) and from the binlog
//! (mysql_common's decoding of row images). Both go through [`to_json`], so
//! a row read by the snapshot and the same row in a change are the same
//! JSON, byte for byte; the one place they differ in form (ENUM, SET and
//! TIMESTAMP, which the binlog stores as numbers) is handled by `binlog`.

use base64::Engine as _;
use mysql_async::Value;
use serde_json::{Number, Value as Json};

/// What a column holds, from `information_schema.COLUMNS`.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// TINYINT, SMALLINT, MEDIUMINT, INT, BIGINT: `bytes` wide.
    Int {
        unsigned: bool,
        bytes: u8,
    },
    Decimal,
    Float,
    Double,
    Bit,
    /// Text; `latin1`: the binlog has it in MySQL's latin1 (cp1252), while
    /// a snapshot read has it converted to utf8mb4 by the server.
    Text {
        latin1: bool,
    },
    /// BINARY(n) is padded with zero bytes to `pad`.
    Bytes {
        pad: Option<usize>,
    },
    Date,
    /// TIME, DATETIME, TIMESTAMP with `fsp` fractional digits.
    Time {
        fsp: usize,
    },
    DateTime {
        fsp: usize,
    },
    Timestamp {
        fsp: usize,
    },
    Year,
    Json,
    Enum(Vec<String>),
    Set(Vec<String>),
}

impl Kind {
    /// The kind of a column from `DATA_TYPE`, `COLUMN_TYPE`,
    /// `DATETIME_PRECISION`, `CHARACTER_SET_NAME` and
    /// `CHARACTER_MAXIMUM_LENGTH`; Err names what is not supported.
    pub fn of(
        data_type: &str,
        column_type: &str,
        fsp: Option<u64>,
        charset: Option<&str>,
        max_len: Option<u64>,
    ) -> Result<Kind, String> {
        let unsigned = column_type.contains("unsigned");
        let fsp = fsp.unwrap_or(0).min(6) as usize;
        let text = || match charset {
            None | Some("utf8mb4" | "utf8mb3" | "utf8" | "ascii") => {
                Ok(Kind::Text { latin1: false })
            }
            Some("latin1") => Ok(Kind::Text { latin1: true }),
            Some(c) => Err(format!(
                "character set {c} (hydrant reads text in utf8mb4, utf8mb3, latin1 and ascii)"
            )),
        };
        Ok(match data_type {
            "tinyint" => Kind::Int { unsigned, bytes: 1 },
            "smallint" => Kind::Int { unsigned, bytes: 2 },
            "mediumint" => Kind::Int { unsigned, bytes: 3 },
            "int" | "integer" => Kind::Int { unsigned, bytes: 4 },
            "bigint" => Kind::Int { unsigned, bytes: 8 },
            "decimal" | "numeric" => Kind::Decimal,
            "float" => Kind::Float,
            "double" | "real" => Kind::Double,
            "bit" => Kind::Bit,
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => text()?,
            "binary" => Kind::Bytes {
                pad: max_len.map(|n| n as usize),
            },
            "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => {
                Kind::Bytes { pad: None }
            }
            "date" => Kind::Date,
            "time" => Kind::Time { fsp },
            "datetime" => Kind::DateTime { fsp },
            "timestamp" => Kind::Timestamp { fsp },
            "year" => Kind::Year,
            "json" => Kind::Json,
            "enum" => Kind::Enum(members(column_type)),
            "set" => Kind::Set(members(column_type)),
            other => return Err(format!("type {other}")),
        })
    }
}

impl Kind {
    /// The column's type in words a destination maps (see
    /// `destination::warehouse::mirror::pg_type`).
    pub fn portable(&self) -> &'static str {
        match self {
            Kind::Int { unsigned, bytes } => match (unsigned, bytes) {
                (false, 1) => "int8",
                (true, 1) => "uint8",
                (false, 2) => "int16",
                (true, 2) => "uint16",
                (false, 3) => "int24",
                (true, 3) => "uint24",
                (false, 4) => "int32",
                (true, 4) => "uint32",
                (false, _) => "int64",
                (true, _) => "uint64",
            },
            Kind::Decimal => "decimal",
            Kind::Float => "float32",
            Kind::Double => "float64",
            Kind::Bit => "bits",
            Kind::Text { .. } | Kind::Enum(_) | Kind::Set(_) => "text",
            Kind::Bytes { .. } => "bytes",
            Kind::Date => "date",
            Kind::Time { .. } => "time",
            Kind::DateTime { .. } => "datetime",
            Kind::Timestamp { .. } => "timestamp",
            Kind::Year => "year",
            Kind::Json => "json",
        }
    }
}

/// The members of `enum('a','b''c')` or `set(...)`, unquoted.
fn members(column_type: &str) -> Vec<String> {
    let inner = column_type
        .find('(')
        .and_then(|i| column_type.rfind(')').map(|j| &column_type[i + 1..j]))
        .unwrap_or("");
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' {
            continue;
        }
        let mut m = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\'' if chars.peek() == Some(&'\'') => {
                    chars.next();
                    m.push('\'');
                }
                '\'' => break,
                '\\' => {
                    if let Some(n) = chars.next() {
                        m.push(n);
                    }
                }
                c => m.push(c),
            }
        }
        out.push(m);
    }
    out
}

fn fraction(micros: u32, fsp: usize) -> String {
    if fsp == 0 {
        String::new()
    } else {
        format!(".{:06}", micros)[..fsp + 1].to_owned()
    }
}

fn text(b: &[u8]) -> Json {
    Json::String(String::from_utf8_lossy(b).into_owned())
}

/// MySQL's latin1, which is Windows-1252 (its five unassigned bytes
/// map to the C1 controls of the same number).
fn cp1252(b: &[u8]) -> String {
    const HIGH: [u16; 32] = [
        0x20AC, 0x81, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x8D, 0x017D, 0x8F, 0x90, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013,
        0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x9D, 0x017E, 0x0178,
    ];
    b.iter()
        .map(|&c| match c {
            0x80..=0x9F => char::from_u32(HIGH[(c - 0x80) as usize] as u32).unwrap_or('\u{FFFD}'),
            c => c as char,
        })
        .collect()
}

fn number_from_text(b: &[u8]) -> Json {
    let s = String::from_utf8_lossy(b);
    if let Ok(i) = s.parse::<i64>() {
        return Json::from(i);
    }
    if let Ok(u) = s.parse::<u64>() {
        return Json::from(u);
    }
    s.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Json::String(s.into_owned()), Json::Number)
}

fn float32(f: f32) -> Json {
    // The shortest text that reads back as the same f32, as a JSON number:
    // 0.1 stays 0.1, not 0.10000000149011612.
    format!("{f}")
        .parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map_or(Json::Null, Json::Number)
}

type Parts = (u16, u8, u8, u8, u8, u8, u32);

fn datetime((y, mo, d, h, mi, s, us): Parts, fsp: usize) -> Json {
    if y == 0 && mo == 0 && d == 0 {
        return Json::Null;
    }
    Json::String(format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{}",
        fraction(us, fsp)
    ))
}

/// A signed integer `bytes` wide, whatever sign its decoder gave it (a
/// binlog without signedness metadata decodes a MEDIUMINT as unsigned).
fn sign_extend(i: i64, bytes: u8) -> i64 {
    if bytes >= 8 {
        return i;
    }
    let m = 1i64 << (8 * bytes as u32);
    let v = i & (m - 1);
    if v >= m / 2 {
        v - m
    } else {
        v
    }
}

/// A column value as JSON, by the mapping in the README. `binlog` says the
/// value came from a binlog row image.
pub fn to_json(kind: &Kind, v: &Value, binlog: bool) -> Json {
    use Value as V;
    if let V::NULL = v {
        return Json::Null;
    }
    match (kind, v) {
        (Kind::Int { unsigned, bytes }, V::Int(i)) => {
            if *unsigned {
                let mask = if *bytes >= 8 {
                    u64::MAX
                } else {
                    (1u64 << (8 * *bytes as u32)) - 1
                };
                Json::from(*i as u64 & mask)
            } else {
                Json::from(sign_extend(*i, *bytes))
            }
        }
        (
            Kind::Int {
                unsigned: false,
                bytes,
            },
            V::UInt(u),
        ) => Json::from(sign_extend(*u as i64, *bytes)),
        (Kind::Int { .. } | Kind::Year, V::UInt(u)) => Json::from(*u),
        (Kind::Year, V::Int(i)) => Json::from(*i),
        (Kind::Int { .. } | Kind::Year | Kind::Double, V::Bytes(b)) => number_from_text(b),
        (Kind::Decimal, V::Bytes(b)) => text(b),
        (Kind::Float, V::Float(f)) => float32(*f),
        (Kind::Float, V::Double(d)) => float32(*d as f32),
        (Kind::Float, V::Bytes(b)) => number_from_text(b),
        (Kind::Double, V::Double(d)) => Number::from_f64(*d).map_or(Json::Null, Json::Number),
        (Kind::Double, V::Float(f)) => float32(*f),
        (Kind::Bit, V::Bytes(b)) => {
            Json::from(b.iter().fold(0u64, |acc, x| (acc << 8) | *x as u64))
        }
        (Kind::Bit, V::UInt(u)) => Json::from(*u),
        (Kind::Bit, V::Int(i)) => Json::from(*i as u64),
        (Kind::Text { latin1: true }, V::Bytes(b)) if binlog => Json::String(cp1252(b)),
        (Kind::Text { .. }, V::Bytes(b)) => text(b),
        (Kind::Bytes { pad }, V::Bytes(b)) => {
            let mut b = b.clone();
            if let Some(n) = *pad {
                if b.len() < n {
                    b.resize(n, 0);
                }
            }
            Json::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Kind::Date, V::Date(y, mo, d, ..)) => {
            if *y == 0 && *mo == 0 && *d == 0 {
                Json::Null
            } else {
                Json::String(format!("{y:04}-{mo:02}-{d:02}"))
            }
        }
        (Kind::DateTime { fsp } | Kind::Timestamp { fsp }, V::Date(y, mo, d, h, mi, s, us)) => {
            let mut j = datetime((*y, *mo, *d, *h, *mi, *s, *us), *fsp);
            if let (Kind::Timestamp { .. }, Json::String(s)) = (kind, &mut j) {
                s.push('Z');
            }
            j
        }
        // The binlog keeps a TIMESTAMP as seconds since the epoch, UTC.
        (Kind::Timestamp { fsp }, V::Bytes(b)) if binlog => {
            let s = String::from_utf8_lossy(b);
            let (secs, micros) = match s.split_once('.') {
                Some((a, f)) => (a.parse::<i64>().unwrap_or(0), f.parse::<u32>().unwrap_or(0)),
                None => (s.parse::<i64>().unwrap_or(0), 0),
            };
            if secs == 0 && micros == 0 {
                return Json::Null;
            }
            match chrono::DateTime::from_timestamp(secs, micros * 1000) {
                Some(t) => Json::String(format!(
                    "{}{}Z",
                    t.format("%Y-%m-%dT%H:%M:%S"),
                    fraction(micros, *fsp)
                )),
                None => Json::Null,
            }
        }
        (Kind::Time { fsp }, V::Time(neg, days, h, mi, s, us)) => Json::String(format!(
            "{}{:02}:{mi:02}:{s:02}{}",
            if *neg { "-" } else { "" },
            *days as u64 * 24 + *h as u64,
            fraction(*us, *fsp)
        )),
        (Kind::Json, V::Bytes(b)) => serde_json::from_slice(b).unwrap_or_else(|_| text(b)),
        (Kind::Enum(members), V::Int(_) | V::UInt(_)) if binlog => {
            let i = match v {
                V::Int(i) => *i as usize,
                V::UInt(u) => *u as usize,
                _ => 0,
            };
            Json::String(if i == 0 {
                String::new()
            } else {
                members.get(i - 1).cloned().unwrap_or_default()
            })
        }
        (Kind::Set(members), V::Bytes(b)) if binlog => {
            let bits = b.iter().rev().fold(0u64, |acc, x| (acc << 8) | *x as u64);
            let on: Vec<&str> = members
                .iter()
                .enumerate()
                .filter(|(i, _)| *i < 64 && bits & (1 << i) != 0)
                .map(|(_, m)| m.as_str())
                .collect();
            Json::String(on.join(","))
        }
        (Kind::Enum(_) | Kind::Set(_), V::Bytes(b)) => text(b),
        // Anything else: the value as the server printed it.
        (_, V::Bytes(b)) => text(b),
        (_, other) => Json::String(other.as_sql(true).trim_matches('\'').to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_and_set_members_are_unquoted() {
        assert_eq!(members("enum('a','b''c','d\\'e')"), ["a", "b'c", "d'e"]);
        assert_eq!(members("set('x','y')"), ["x", "y"]);
    }

    #[test]
    fn snapshot_and_binlog_forms_agree() {
        let ts = Kind::Timestamp { fsp: 3 };
        assert_eq!(
            to_json(&ts, &Value::Date(2024, 2, 29, 23, 59, 58, 123_000), false),
            to_json(&ts, &Value::Bytes(b"1709251198.123000".to_vec()), true)
        );
        let e = Kind::Enum(vec!["s".into(), "m".into()]);
        assert_eq!(
            to_json(&e, &Value::Bytes(b"m".to_vec()), false),
            to_json(&e, &Value::Int(2), true)
        );
        let s = Kind::Set(vec!["a".into(), "b".into(), "c".into()]);
        assert_eq!(
            to_json(&s, &Value::Bytes(b"a,c".to_vec()), false),
            to_json(&s, &Value::Bytes(vec![5]), true)
        );
        let u = Kind::Int {
            unsigned: true,
            bytes: 1,
        };
        assert_eq!(to_json(&u, &Value::Int(-1), true), Json::from(255));
        assert_eq!(to_json(&u, &Value::UInt(255), false), Json::from(255));
        let m = Kind::Int {
            unsigned: false,
            bytes: 3,
        };
        assert_eq!(
            to_json(&m, &Value::Int(8388608), true),
            Json::from(-8388608)
        );
        assert_eq!(to_json(&m, &Value::Int(-5), false), Json::from(-5));
        assert_eq!(
            to_json(&Kind::Float, &Value::Float(0.1), true),
            serde_json::json!(0.1)
        );
        let l = Kind::Text { latin1: true };
        assert_eq!(
            to_json(&l, &Value::Bytes("é€".as_bytes().to_vec()), false),
            to_json(&l, &Value::Bytes(vec![0xE9, 0x80]), true)
        );
    }
}
