//! The bodies of PutRecord and PutRecordBatch: JSON whose records are
//! base64, decoded straight into log frames, without an intermediate copy.
//!
//! Firehose's rules: a record is at most 1,000 KiB once decoded, a batch at
//! most 500 records and 4 MiB. A record over its limit is measured and left
//! out of the frames, so that the caller can fail it alone (its slot in
//! PutRecordBatch's response) while the rest of the batch is taken; only a
//! body that breaks the call's own rules (JSON, base64, a missing field)
//! fails as a whole. This module knows no stream and no HTTP: it is what
//! the fuzzer drives.

use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;

use crate::stream::Batch;

/// Firehose's limits.
pub const MAX_RECORD_BYTES: usize = 1_024_000;
pub const MAX_BATCH_RECORDS: usize = 500;
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// Why a body could not be decoded; the front door maps each to its AWS error.
#[derive(Debug, Clone, PartialEq)]
pub enum WireError {
    /// A required field is missing (ValidationException).
    Missing(String),
    /// A record's Data is not base64 (SerializationException).
    Base64(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn<'a> {
    /// Borrowed from the body unless the JSON string has escapes (`\/`).
    #[serde(rename = "Data", borrow, deserialize_with = "borrowed")]
    #[serde(default)]
    pub data: Option<Cow<'a, str>>,
}

/// serde borrows a `Cow<str>` field only when the field is exactly that
/// type; inside an `Option` it would copy every record's text.
fn borrowed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    struct Text<'a>(#[serde(borrow)] Cow<'a, str>);
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRecordIn<'a> {
    #[serde(rename = "DeliveryStreamName")]
    pub name: Option<String>,
    #[serde(rename = "Record", borrow)]
    pub record: Option<RecordIn<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutRecordBatchIn<'a> {
    #[serde(rename = "DeliveryStreamName")]
    pub name: Option<String>,
    #[serde(rename = "Records", borrow)]
    pub records: Option<Vec<RecordIn<'a>>>,
}

/// Which record a message is about: PutRecord's one, or one of a batch.
#[derive(Clone, Copy)]
pub enum Field {
    Record,
    Batch(usize),
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Field::Record => write!(f, "Record.Data"),
            Field::Batch(i) => write!(f, "Records[{i}].Data"),
        }
    }
}

/// Decodes one record's base64 straight into `frames` (no intermediate
/// copy) and returns its decoded size. A record over the limit is measured
/// and left out; the caller reports it.
pub fn frame(
    frames: &mut Batch,
    arrival: i64,
    field: Field,
    r: &RecordIn,
) -> Result<usize, WireError> {
    let data = r
        .data
        .as_deref()
        .ok_or_else(|| WireError::Missing(format!("{field} is required")))?;
    frames
        .push_with(arrival, MAX_RECORD_BYTES, |buf| {
            base64::engine::general_purpose::STANDARD.decode_vec(data, buf)
        })
        .map_err(|e| WireError::Base64(format!("{field} is not valid base64: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data is read in place unless its JSON text has escapes.
    #[test]
    fn data_is_borrowed_from_the_body() {
        let body = br#"{"DeliveryStreamName":"s","Records":[{"Data":"aGk="},{"Data":"a\/8="},{"Data":null},{}]}"#;
        let req: PutRecordBatchIn = serde_json::from_slice(body).unwrap();
        let data: Vec<_> = req.records.unwrap().into_iter().map(|r| r.data).collect();
        assert!(matches!(&data[0], Some(Cow::Borrowed("aGk="))));
        assert!(matches!(&data[1], Some(Cow::Owned(s)) if s == "a/8="));
        assert!(data[2].is_none() && data[3].is_none());
    }
}
