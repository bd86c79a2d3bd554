//! Where a record goes: which partition's buffer, or which error output.
//!
//! Dynamic partitioning follows Firehose's MetadataExtraction processor: a
//! jq query that builds an object of partition keys from each JSON record,
//! `{event_name: .event_name, customer: .customer.id}`. hydrant implements
//! that form of query (an object of simple paths), which is what partitioning
//! uses in practice; any other jq is refused when the stream is created.
//!
//! A record that cannot be routed is not dropped: it goes to the error
//! output as a Firehose error document (`attemptsMade`, `arrivalTimestamp`,
//! `errorCode`, `errorMessage`, `rawData`), under the ErrorOutputPrefix with
//! `!{firehose:error-output-type}` = `processing-failed` (or
//! `format-conversion-failed` for records that do not fit a Parquet schema).

use base64::Engine;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// A parsed MetadataExtractionQuery: key names and the path each reads.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionQuery {
    keys: Vec<(String, Vec<String>)>,
}

/// The longest partition value hydrant puts in a key.
pub const MAX_PARTITION_VALUE: usize = 256;

impl PartitionQuery {
    /// Parses `{name: .path.to.field, ...}`.
    pub fn parse(query: &str) -> Result<PartitionQuery, String> {
        let unsupported = || {
            format!(
                "MetadataExtractionQuery {query:?}: hydrant supports an object of simple paths, \
                 like {{event_name: .event_name, customer_id: .customer.id}}"
            )
        };
        let body = query
            .trim()
            .strip_prefix('{')
            .and_then(|q| q.strip_suffix('}'))
            .ok_or_else(unsupported)?;
        let mut keys = Vec::new();
        for entry in body.split(',') {
            let (name, path) = entry.split_once(':').ok_or_else(unsupported)?;
            let name = name.trim().trim_matches('"');
            let path = path.trim();
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            let segments: Vec<String> = path
                .strip_prefix('.')
                .ok_or_else(unsupported)?
                .split('.')
                .map(|s| s.to_string())
                .collect();
            let valid_path = segments.iter().all(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            if !valid_name || !valid_path {
                return Err(unsupported());
            }
            if keys.iter().any(|(k, _)| k == name) {
                return Err(format!("MetadataExtractionQuery defines {name} twice"));
            }
            keys.push((name.to_string(), segments));
        }
        Ok(PartitionQuery { keys })
    }

    pub fn names(&self) -> Vec<String> {
        self.keys.iter().map(|(k, _)| k.clone()).collect()
    }

    /// The path each key reads, in key order.
    pub fn paths(&self) -> Vec<Vec<String>> {
        self.keys.iter().map(|(_, p)| p.clone()).collect()
    }

    /// The partition values of a record, in key order. The record is read
    /// once without building it (only the values on the keys' paths are
    /// taken apart); a value is what it would be in a map that keeps the
    /// last of duplicate keys.
    pub fn eval(&self, record: &[u8]) -> Result<Vec<String>, String> {
        let root: &RawValue =
            serde_json::from_slice(record).map_err(|e| format!("record is not JSON: {e}"))?;
        let mut heads: Vec<&str> = Vec::new();
        for (_, path) in &self.keys {
            if !heads.contains(&path[0].as_str()) {
                heads.push(&path[0]);
            }
        }
        let top = fields(root, &heads)?;
        self.keys
            .iter()
            .map(|(name, path)| {
                let head = heads.iter().position(|h| *h == path[0]).expect("a head");
                let mut leaf = top.as_ref().and_then(|t| t[head]);
                for seg in &path[1..] {
                    leaf = match leaf {
                        Some(r) => fields(r, &[seg.as_str()])?.and_then(|f| f[0]),
                        None => None,
                    };
                }
                // A scalar (an object or array, however deep, is not parsed).
                // A scalar's text is checked, not its range (1e400).
                let v = match leaf.map(|raw| (raw.get().as_bytes()[0], raw.get())) {
                    Some((b'{' | b'[', _)) => Some(Value::Array(Vec::new())),
                    Some((_, text)) => Some(
                        serde_json::from_str(text)
                            .map_err(|e| format!("record is not JSON: {e}"))?,
                    ),
                    None => None,
                };
                let s = match v {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    None | Some(Value::Null) => {
                        return Err(format!(
                            "partition key {name} (.{}) is missing",
                            path.join(".")
                        ))
                    }
                    Some(_) => {
                        return Err(format!(
                            "partition key {name} (.{}) is an object or array, not a value",
                            path.join(".")
                        ))
                    }
                };
                // The value becomes part of a key (a path in the embedded lake).
                if !placeable(&s) {
                    return Err(format!(
                        "partition key {name} = {s:?} cannot be part of an object key \
                         (empty, longer than {MAX_PARTITION_VALUE}, '.', '..', or has '/' or '\\')"
                    ));
                }
                Ok(s)
            })
            .collect()
    }
}

/// Whether a value can be a segment of an object key.
fn placeable(s: &str) -> bool {
    !(s.is_empty()
        || s.len() > MAX_PARTITION_VALUE
        || s == "."
        || s == ".."
        || s.contains(['/', '\\', '\0']))
}

/// The values at `names` in `raw` if it is an object (the last of
/// duplicate keys), every other value skipped; None if it is not an object.
/// `raw` reads as JSON already, but a key may still not be text (a lone
/// surrogate escape, `\udddd`): that is an error, as for a whole parse.
fn fields<'a>(
    raw: &'a RawValue,
    names: &[&str],
) -> Result<Option<Vec<Option<&'a RawValue>>>, String> {
    if !raw.get().starts_with('{') {
        return Ok(None);
    }
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Fields(names)
        .deserialize(&mut de)
        .map(Some)
        .map_err(|e| format!("record is not JSON: {e}"))
}

/// Reads an object for the values at some keys.
struct Fields<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for Fields<'_> {
    type Value = Vec<Option<&'de RawValue>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Fields<'_> {
    type Value = Vec<Option<&'de RawValue>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
        let mut found = vec![None; self.0.len()];
        while let Some(i) = map.next_key_seed(Name(self.0))? {
            match i {
                Some(i) => found[i] = Some(map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Reads a key as which of the names it is, unescaped, without keeping it.
struct Name<'n>(&'n [&'n str]);

impl<'de> DeserializeSeed<'de> for Name<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for Name<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == v))
    }
}

/// Why a record went to the error output.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Diversion {
    /// The `!{firehose:error-output-type}`: processing-failed, format-conversion-failed.
    pub output_type: String,
    pub code: String,
    pub message: String,
}

/// Firehose's error document for a record that failed processing.
pub fn error_document(d: &Diversion, arrival_ms: i64, data: &[u8]) -> Vec<u8> {
    let doc = serde_json::json!({
        "attemptsMade": 1,
        "arrivalTimestamp": arrival_ms,
        "errorCode": d.code,
        "errorMessage": d.message,
        // The attempt ends where it began: hydrant fails a record once and
        // for good, and a replay must write the same bytes.
        "attemptEndingTimestamp": arrival_ms,
        "rawData": base64::engine::general_purpose::STANDARD.encode(data),
    });
    doc.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (query, record, values or error text)
    const TABLE: &[(&str, &str, Result<&[&str], &str>)] = &[
        (
            "{event_name: .event_name}",
            r#"{"event_name":"JOIN"}"#,
            Ok(&["JOIN"]),
        ),
        (
            "{ a : .x.y , b: .n }",
            r#"{"x":{"y":"deep"},"n":42}"#,
            Ok(&["deep", "42"]),
        ),
        ("{flag: .f}", r#"{"f":true}"#, Ok(&["true"])),
        ("{a: .missing}", r#"{"x":1}"#, Err("is missing")),
        ("{a: .x}", r#"{"x":null}"#, Err("is missing")),
        ("{a: .x}", r#"{"x":{"y":1}}"#, Err("object or array")),
        (
            "{a: .x}",
            r#"{"x":"a/b"}"#,
            Err("cannot be part of an object key"),
        ),
        (
            "{a: .x}",
            r#"{"x":".."}"#,
            Err("cannot be part of an object key"),
        ),
        ("{a: .x}", r#"not json"#, Err("not JSON")),
        ("{a: .x}", r#"{"x":1} trailing"#, Err("not JSON")),
        ("{a: .x}", r#"{"x":1e400}"#, Err("not JSON")),
        ("{a: .x}", r#"[{"x":1}]"#, Err("is missing")),
        ("{a: .x.y}", r#"{"x":[{"y":1}]}"#, Err("is missing")),
        ("{a: .x.y}", r#"{"x":"y"}"#, Err("is missing")),
        (
            "{a: .x}",
            r#"{"x":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}"#,
            Err("object or array"),
        ),
        // Keys are compared unescaped; the last of duplicates counts.
        ("{a: .event}", r#"{"\u0065vent":"E"}"#, Ok(&["E"])),
        (
            "{a: .x, b: .x}",
            r#"{"x":"one","x":"two"}"#,
            Ok(&["two", "two"]),
        ),
        (
            "{a: .x.y, b: .x.q}",
            r#" { "x" : { "y" : "\u00e9t\u00e9" , "q" : false } } "#,
            Ok(&["été", "false"]),
        ),
        (
            "{a: .n}",
            r#"{"n":12345678901234567890}"#,
            Ok(&["12345678901234567890"]),
        ),
        ("{a: .s}", r#"{"s":"a\"b"}"#, Ok(&["a\"b"])),
    ];

    /// What a partition value is by definition: the record read into a
    /// map (serde_json's `Value`), the path followed, the scalar printed.
    fn by_value(q: &PartitionQuery, record: &[u8]) -> Result<Vec<String>, ()> {
        let doc: Value = serde_json::from_slice(record).map_err(|_| ())?;
        q.keys
            .iter()
            .map(
                |(_, path)| match path.iter().try_fold(&doc, |v, seg| v.get(seg)) {
                    Some(Value::String(s)) => Ok(s.clone()),
                    Some(Value::Number(n)) => Ok(n.to_string()),
                    Some(Value::Bool(b)) => Ok(b.to_string()),
                    _ => Err(()),
                },
            )
            .collect()
    }

    /// Reading only the keys' paths gives what reading the whole record
    /// gives, for numbers in every spelling, escapes, duplicates, nesting
    /// and values of the wrong kind.
    #[test]
    fn partition_values_are_those_of_the_whole_record() {
        let q = PartitionQuery::parse("{a: .x.y, b: .x.z, c: .w, d: .v}").unwrap();
        let values = [
            "-0",
            "0",
            "1e3",
            "1E-2",
            "-1.50",
            "12345678901234567890",
            "-9223372036854775808",
            "18446744073709551616",
            "3.141592653589793238462643",
            "1.0",
            "true",
            "null",
            r#""s""#,
            r#""\u00e9\n\/""#,
            "[]",
            "{}",
            r#"{"y":1}"#,
        ];
        let mut records = Vec::new();
        for (i, v) in values.iter().enumerate() {
            let w = values[(i + 3) % values.len()];
            records.push(format!(r#"{{"w":{v},"x":{{"y":{w},"z":{v}}},"v":"k"}}"#));
            records.push(format!(
                r#" {{ "x" : {{ "z" : {w} , "y" : {v} }} , "w" : {w}, "v":"k" }} "#
            ));
            records.push(format!(
                r#"{{"w":1,"w":{v},"x":{{"y":"a"}},"x":{{"y":{w},"z":{v}}},"v":"k"}}"#
            ));
            records.push(format!(
                r#"{{"\u0077":{v},"x":{{"\u0079":{w},"z":{v}}},"v":"k"}}"#
            ));
            records.push(format!(r#"{{"w":{v},"x":{w},"v":"k"}}"#));
        }
        let mut agreed = 0;
        for r in &records {
            let got = q.eval(r.as_bytes());
            let want = by_value(&q, r.as_bytes());
            match want {
                Ok(w) if w.iter().all(|s| placeable(s)) => {
                    assert_eq!(got.as_ref().ok(), Some(&w), "{r}");
                    agreed += 1;
                }
                _ => assert!(got.is_err(), "{r}: {got:?}"),
            }
        }
        assert!(agreed >= 20, "only {agreed} records had values");
    }

    #[test]
    fn partition_values_table() {
        for (query, record, want) in TABLE {
            let got = PartitionQuery::parse(query)
                .unwrap()
                .eval(record.as_bytes());
            match want {
                Ok(w) => assert_eq!(
                    got.unwrap(),
                    w.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "{query} {record}"
                ),
                Err(w) => assert!(
                    got.as_ref().unwrap_err().contains(w),
                    "{query} {record}: {got:?}"
                ),
            }
        }
    }

    /// A key that is not text (a lone surrogate escape) in any object the
    /// query reads into is a record that is not JSON, not a panic.
    #[test]
    fn a_key_that_is_not_text_is_an_error() {
        let q = PartitionQuery::parse("{r: .geo.region}").unwrap();
        for record in [
            r#"{"\udddd":1,"geo":{"region":"eu"}}"#,
            r#"{"geo":{"\ud800":1,"region":"eu"}}"#,
        ] {
            let got = q.eval(record.as_bytes());
            assert!(
                got.as_ref().is_err_and(|e| e.contains("not JSON")),
                "{record}: {got:?}"
            );
        }
        assert_eq!(
            q.eval(br#"{"\ud83d\ude00":1,"geo":{"region":"eu"}}"#)
                .unwrap(),
            ["eu"]
        );
    }

    #[test]
    fn unsupported_queries_are_refused() {
        for q in [
            ".event_name",
            "{a: .x | ascii_downcase}",
            "{a: .x[0]}",
            "{: .x}",
            "{a: x}",
            "{a: .x, a: .y}",
        ] {
            assert!(PartitionQuery::parse(q).is_err(), "{q}");
        }
    }

    #[test]
    fn error_documents_carry_the_raw_record() {
        let d = Diversion {
            output_type: "processing-failed".into(),
            code: "DynamicPartitioning.MetadataExtractionFailed".into(),
            message: "partition key a (.x) is missing".into(),
        };
        let doc: Value =
            serde_json::from_slice(&error_document(&d, 1700000000123, b"{\"y\":1}")).unwrap();
        assert_eq!(doc["rawData"], "eyJ5IjoxfQ==");
        assert_eq!(
            doc["errorCode"],
            "DynamicPartitioning.MetadataExtractionFailed"
        );
        assert_eq!(doc["arrivalTimestamp"], 1700000000123i64);
    }
}
