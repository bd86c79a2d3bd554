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

    /// The partition values of a record, in key order.
    pub fn eval(&self, record: &[u8]) -> Result<Vec<String>, String> {
        let doc: Value =
            serde_json::from_slice(record).map_err(|e| format!("record is not JSON: {e}"))?;
        self.keys
            .iter()
            .map(|(name, path)| {
                let v = path.iter().try_fold(&doc, |v, seg| v.get(seg));
                let s = match v {
                    Some(Value::String(s)) => s.clone(),
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
                if s.is_empty()
                    || s.len() > MAX_PARTITION_VALUE
                    || s == "."
                    || s == ".."
                    || s.contains(['/', '\\', '\0'])
                {
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
    ];

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
