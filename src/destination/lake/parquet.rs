//! Record format conversion: JSON records into Parquet objects, like
//! Firehose's `DataFormatConversionConfiguration` with the OpenX JSON SerDe
//! as input and Parquet as output.
//!
//! The table schema is declared the way Firehose users know it, as Glue/Hive
//! column types (`bigint`, `decimal(10,2)`, `array<string>`,
//! `struct<id:bigint,name:string>`, `map<string,string>`, ...), or inferred
//! from the records themselves ([`InferredSchema`]).
//!
//! How JSON values become column values (one function, [`TableSchema::check`],
//! decides for a single record exactly what [`encode`] does for many):
//!
//! - A JSON key matches a column (and a JSON object key a struct field) when
//!   they are equal ignoring case, as with the OpenX SerDe's default
//!   `case.insensitive = true`. If a record holds several keys that match one
//!   column, the last one wins. Map keys are data and are kept as they are.
//! - Missing keys and JSON `null` give null; keys without a column are ignored.
//! - Integer and floating-point columns take JSON numbers and numeric strings
//!   (`"42"`), since many producers quote numbers. Integers must be whole
//!   numbers in range (no silent truncation); `float`/`double` also take the
//!   strings `"NaN"` and `"Infinity"`.
//! - `decimal(p,s)` takes numbers and numeric strings and is exact: it is
//!   computed from the JSON text, never through a float. More fractional
//!   digits than `s` are rounded half away from zero (as Hive does); a value
//!   with more than `p - s` integer digits is rejected.
//! - `boolean` takes `true`/`false` and the strings `"true"`/`"false"`.
//! - `string` takes any value: strings as they are, other JSON (numbers,
//!   booleans, objects, arrays) as its JSON text, as the OpenX SerDe does.
//!   `varchar(n)`/`char(n)` are strings of at most `n` characters; longer
//!   values are rejected rather than cut, and `char` is not padded.
//! - `timestamp` takes ISO-8601 strings (`2024-05-01T12:00:00Z`,
//!   `2024-05-01 12:00:00.123+02:00`; without a zone they are UTC; fractional
//!   seconds below a microsecond are dropped) and integer numbers of epoch
//!   milliseconds. It is stored as Parquet INT64 TIMESTAMP(MICROS, UTC), which
//!   Athena, Spark, Trino and DataFusion read as a timestamp.
//! - `date` takes `YYYY-MM-DD` strings; `binary` takes base64 strings.
//!
//! This module does not buffer, name or store objects: it turns one batch of
//! records into the bytes of one Parquet file.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::timezone::Tz;
use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, ListArray, MapArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::kernels::cast_utils::{string_to_datetime, Parser};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Field, Fields, Schema, SchemaRef, TimeUnit,
};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::delivery::hive::{same_name, HiveType};
pub use crate::delivery::hive::{MAX_TYPE_BYTES, MAX_TYPE_DEPTH};

impl HiveType {
    fn arrow(&self) -> DataType {
        use HiveType::*;
        match self {
            Boolean => DataType::Boolean,
            TinyInt => DataType::Int8,
            SmallInt => DataType::Int16,
            Int => DataType::Int32,
            BigInt => DataType::Int64,
            Float => DataType::Float32,
            Double => DataType::Float64,
            Decimal(p, s) => DataType::Decimal128(*p, *s),
            String | Varchar(_) | Char(_) => DataType::Utf8,
            Date => DataType::Date32,
            Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Binary => DataType::Binary,
            // "element", "key_value", "key", "value" are the Parquet spec's names.
            Array(t) => DataType::List(Arc::new(Field::new("element", t.arrow(), true))),
            Struct(fields) => DataType::Struct(struct_fields(fields)),
            Map(t) => DataType::Map(Arc::new(map_entries(t)), false),
        }
    }
}

fn struct_fields(fields: &[(String, HiveType)]) -> Fields {
    fields
        .iter()
        .map(|(n, t)| Field::new(n, t.arrow(), true))
        .collect()
}

fn map_entry_fields(value: &HiveType) -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", value.arrow(), true),
    ])
}

fn map_entries(value: &HiveType) -> Field {
    Field::new(
        "key_value",
        DataType::Struct(map_entry_fields(value)),
        false,
    )
}

// ---------------------------------------------------------------------------
// Table schema and conversion

/// A table's columns, as Hive types and as the Arrow schema they become.
#[derive(Debug, Clone)]
pub struct TableSchema {
    columns: Vec<(String, HiveType)>,
    arrow: SchemaRef,
}

impl TableSchema {
    /// Builds a schema from `(name, hive type)` pairs, e.g.
    /// `("amount", "decimal(10,2)")`. Errors name the column.
    pub fn from_columns(columns: &[(String, String)]) -> Result<TableSchema, String> {
        let mut parsed = Vec::with_capacity(columns.len());
        for (name, ty) in columns {
            let t = HiveType::parse(ty).map_err(|e| format!("column `{name}`: {e}"))?;
            parsed.push((name.clone(), t));
        }
        Self::new(parsed)
    }

    fn new(columns: Vec<(String, HiveType)>) -> Result<TableSchema, String> {
        if columns.is_empty() {
            return Err("a table needs at least one column".into());
        }
        for (i, (name, _)) in columns.iter().enumerate() {
            if name.is_empty() {
                return Err("a column name is empty".into());
            }
            if columns[..i].iter().any(|(n, _)| same_name(n, name)) {
                return Err(format!("column `{name}` appears twice (names ignore case)"));
            }
        }
        let arrow = Arc::new(Schema::new(struct_fields(&columns)));
        Ok(TableSchema { columns, arrow })
    }

    pub fn arrow(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// The columns as `(name, hive type)` pairs, in canonical spelling.
    pub fn columns(&self) -> Vec<(String, String)> {
        self.columns
            .iter()
            .map(|(n, t)| (n.clone(), t.to_string()))
            .collect()
    }

    /// Would this record convert? Err(reason) names the field and the
    /// problem, e.g. "field `amount`: expected decimal(10,2), got \"abc\"".
    pub fn check(&self, record: &[u8]) -> Result<(), String> {
        self.to_batch(&[record]).map(|_| ())
    }

    /// Converts records into one RecordBatch. Each value converts on its own,
    /// so a batch converts exactly when each of its records does: `check` is
    /// this function on one record.
    fn to_batch(&self, records: &[&[u8]]) -> Result<RecordBatch, String> {
        let objects = records
            .iter()
            .map(|r| parse_object(r))
            .collect::<Result<Vec<_>, _>>()?;
        let columns = self
            .columns
            .iter()
            .map(|(name, ty)| {
                let values: Vec<_> = objects.iter().map(|o| lookup(o, name)).collect();
                build(ty, &values, name)
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.arrow.clone(), columns).map_err(|e| e.to_string())
    }
}

type Entries<'a> = Vec<(String, &'a RawValue)>;

/// A JSON object's entries in document order, values kept as raw JSON text so
/// that numbers reach decimal columns digit for digit.
struct Object<'a>(Entries<'a>);

impl<'de: 'a, 'a> Deserialize<'de> for Object<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Object<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> Result<Object<'a>, M::Error> {
                let mut entries = Vec::new();
                while let Some(e) = m.next_entry::<String, &'a RawValue>()? {
                    entries.push(e);
                }
                Ok(Object(entries))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

fn parse_object(record: &[u8]) -> Result<Entries<'_>, String> {
    match serde_json::from_slice::<Object>(record) {
        Ok(o) => Ok(o.0),
        Err(e) if e.is_data() => Err("record is not a JSON object".into()),
        Err(e) => Err(format!("record is not valid JSON: {e}")),
    }
}

fn lookup<'a>(entries: &Entries<'a>, name: &str) -> Option<&'a RawValue> {
    entries
        .iter()
        .rev()
        .find(|(k, _)| same_name(k, name))
        .map(|(_, v)| *v)
}

/// A JSON value's kind, read from its first character.
#[derive(PartialEq)]
enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

fn kind(raw: &RawValue) -> Kind {
    match raw.get().trim_start().as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        _ => Kind::Number,
    }
}

fn unquote(raw: &RawValue) -> Option<String> {
    serde_json::from_str::<String>(raw.get()).ok()
}

fn rejection(path: &str, ty: &HiveType, raw: &RawValue, why: &str) -> String {
    let text = raw.get().trim();
    let shown = match text.char_indices().nth(60) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    };
    let why = if why.is_empty() {
        String::new()
    } else {
        format!(" ({why})")
    };
    format!("field `{path}`: expected {ty}, got {shown}{why}")
}

/// Converts every non-null value with `f`, which returns the value or the
/// reason it was rejected ("" when "expected T, got V" says it all).
fn convert<'a, T>(
    values: &[Option<&'a RawValue>],
    path: &str,
    ty: &HiveType,
    f: impl Fn(&'a RawValue) -> Result<T, &'static str>,
) -> Result<Vec<Option<T>>, String> {
    values
        .iter()
        .map(|v| match v {
            Some(raw) if kind(raw) != Kind::Null => f(raw)
                .map(Some)
                .map_err(|why| rejection(path, ty, raw, why)),
            _ => Ok(None),
        })
        .collect()
}

/// The text of a JSON number, or of a string holding one.
fn numeric_text(raw: &RawValue) -> Option<String> {
    match kind(raw) {
        Kind::Number => Some(raw.get().trim().to_string()),
        Kind::String => Some(unquote(raw)?.trim().to_string()),
        _ => None,
    }
}

fn integer<T: TryFrom<i128>>(raw: &RawValue) -> Result<T, &'static str> {
    let n: i128 = numeric_text(raw).ok_or("")?.parse().map_err(|_| "")?;
    T::try_from(n).map_err(|_| "out of range")
}

fn float<T: std::str::FromStr + Into<f64> + Copy>(raw: &RawValue) -> Result<T, &'static str> {
    let text = numeric_text(raw).ok_or("")?;
    let v: T = text.parse().map_err(|_| "")?;
    // Rust parses "1e999" as infinity; only an explicit infinity may be one.
    if v.into().is_infinite() && !text.to_ascii_lowercase().contains("inf") {
        return Err("out of range");
    }
    Ok(v)
}

/// Exact decimal parsing: the unscaled value of `text` at `scale`, rounded
/// half away from zero, with at most `precision` digits.
fn decimal(text: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
    let (neg, body) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => (&body[..i], body[i + 1..].parse::<i64>().map_err(|_| "")?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if int.len() + frac.len() == 0 || !all_digits(int) || !all_digits(frac) {
        return Err("");
    }
    let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let first = digits.iter().position(|&d| d != 0).unwrap_or(digits.len());
    let digits = &digits[first..];
    // value = digits * 10^shift, in units of 10^-scale.
    let shift = exp
        .saturating_sub(frac.len() as i64)
        .saturating_add(scale as i64);
    let (kept, round_up) = if shift >= 0 {
        if digits.is_empty() {
            (0, false)
        } else if digits.len() as i64 + shift > precision as i64 {
            return Err("out of range");
        } else {
            let mut v: i128 = 0;
            for &d in digits.iter().chain(std::iter::repeat_n(&0, shift as usize)) {
                v = v * 10 + d as i128;
            }
            (v, false)
        }
    } else {
        let drop = shift.unsigned_abs().min(digits.len() as u64 + 1) as usize;
        let keep = digits.len().saturating_sub(drop);
        if keep > precision as usize {
            return Err("out of range");
        }
        let v = digits[..keep]
            .iter()
            .fold(0i128, |v, &d| v * 10 + d as i128);
        let next = if drop <= digits.len() {
            digits[keep]
        } else {
            0
        };
        (v, next >= 5)
    };
    let v = kept + round_up as i128;
    if v >= 10i128.pow(precision as u32) {
        return Err("out of range");
    }
    Ok(if neg { -v } else { v })
}

fn timestamp_micros(raw: &RawValue) -> Result<i64, &'static str> {
    match kind(raw) {
        // Epoch milliseconds, as Firehose producers commonly send them.
        Kind::Number => {
            let ms: i64 = raw.get().trim().parse().map_err(|_| "")?;
            ms.checked_mul(1000).ok_or("out of range")
        }
        Kind::String => {
            let s = unquote(raw).ok_or("")?;
            let utc: Tz = "+00:00".parse().map_err(|_| "")?;
            let t = string_to_datetime(&utc, s.trim()).map_err(|_| "")?;
            Ok(t.timestamp_micros())
        }
        _ => Err(""),
    }
}

fn base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be padding zeros, and one lone character is no byte.
    (bits < 6 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

fn string_value(raw: &RawValue) -> String {
    match kind(raw) {
        Kind::String => unquote(raw).unwrap_or_default(),
        // Numbers, booleans and nested JSON are kept as their JSON text.
        _ => raw.get().trim().to_string(),
    }
}

fn bounded_string(raw: &RawValue, n: usize) -> Result<String, &'static str> {
    let s = string_value(raw);
    match s.chars().count() > n {
        true => Err("too long"),
        false => Ok(s),
    }
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    let n = NullBuffer::from(valid);
    (n.null_count() > 0).then_some(n)
}

/// Builds the Arrow array of type `ty` for `values` (None = missing).
fn build(ty: &HiveType, values: &[Option<&RawValue>], path: &str) -> Result<ArrayRef, String> {
    use HiveType as H;
    let v = values;
    Ok(match ty {
        H::Boolean => Arc::new(BooleanArray::from(convert(v, path, ty, |r| {
            match kind(r) {
                Kind::Bool => Ok(r.get().trim() == "true"),
                Kind::String => {
                    match unquote(r).unwrap_or_default().to_ascii_lowercase().as_str() {
                        "true" => Ok(true),
                        "false" => Ok(false),
                        _ => Err(""),
                    }
                }
                _ => Err(""),
            }
        })?)),
        H::TinyInt => Arc::new(Int8Array::from(convert(v, path, ty, integer::<i8>)?)),
        H::SmallInt => Arc::new(Int16Array::from(convert(v, path, ty, integer::<i16>)?)),
        H::Int => Arc::new(Int32Array::from(convert(v, path, ty, integer::<i32>)?)),
        H::BigInt => Arc::new(Int64Array::from(convert(v, path, ty, integer::<i64>)?)),
        H::Float => Arc::new(Float32Array::from(convert(v, path, ty, float::<f32>)?)),
        H::Double => Arc::new(Float64Array::from(convert(v, path, ty, float::<f64>)?)),
        H::Decimal(p, s) => {
            let d = convert(v, path, ty, |r| {
                decimal(&numeric_text(r).ok_or("")?, *p, *s)
            })?;
            Arc::new(
                Decimal128Array::from(d)
                    .with_precision_and_scale(*p, *s)
                    .map_err(|e| e.to_string())?,
            )
        }
        H::String => Arc::new(StringArray::from(convert(v, path, ty, |r| {
            Ok(string_value(r))
        })?)),
        H::Varchar(n) | H::Char(n) => Arc::new(StringArray::from(convert(v, path, ty, |r| {
            bounded_string(r, *n)
        })?)),
        H::Date => Arc::new(Date32Array::from(convert(v, path, ty, |r| {
            match kind(r) {
                Kind::String => Date32Type::parse(unquote(r).unwrap_or_default().trim()).ok_or(""),
                _ => Err(""),
            }
        })?)),
        H::Timestamp => Arc::new(
            TimestampMicrosecondArray::from(convert(v, path, ty, timestamp_micros)?)
                .with_timezone("UTC"),
        ),
        H::Binary => {
            let b = convert(v, path, ty, |r| match kind(r) {
                Kind::String => base64(&unquote(r).unwrap_or_default()).ok_or("invalid base64"),
                _ => Err(""),
            })?;
            Arc::new(BinaryArray::from_iter(b))
        }
        H::Array(elem) => {
            let lists = convert(v, path, ty, |r| {
                serde_json::from_str::<Vec<&RawValue>>(r.get()).map_err(|_| "")
            })?;
            let children: Vec<_> = lists.iter().flatten().flatten().map(|r| Some(*r)).collect();
            let child = build(elem, &children, &format!("{path}[]")).map_err(|e| {
                // Name the element that failed: find it among the rows.
                locate(&lists, |items, i| {
                    build(elem, &[Some(items[i])], &format!("{path}[{i}]"))
                })
                .unwrap_or(e)
            })?;
            let lengths = lists.iter().map(|l| l.as_ref().map_or(0, Vec::len));
            let valid = lists.iter().map(Option::is_some).collect();
            let field = Arc::new(Field::new("element", elem.arrow(), true));
            Arc::new(
                ListArray::try_new(
                    field,
                    OffsetBuffer::from_lengths(lengths),
                    child,
                    nulls(valid),
                )
                .map_err(|e| e.to_string())?,
            )
        }
        H::Struct(fields) => {
            let objects = convert(v, path, ty, |r| {
                serde_json::from_str::<Object>(r.get())
                    .map(|o| o.0)
                    .map_err(|_| "")
            })?;
            let children = fields
                .iter()
                .map(|(name, t)| {
                    let vals: Vec<_> = objects
                        .iter()
                        .map(|o| o.as_ref().and_then(|o| lookup(o, name)))
                        .collect();
                    build(t, &vals, &format!("{path}.{name}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let valid = objects.iter().map(Option::is_some).collect();
            Arc::new(
                StructArray::try_new(struct_fields(fields), children, nulls(valid))
                    .map_err(|e| e.to_string())?,
            )
        }
        H::Map(value) => {
            let maps = convert(v, path, ty, |r| {
                serde_json::from_str::<Object>(r.get())
                    .map(|o| o.0)
                    .map_err(|_| "")
            })?;
            let entries: Vec<_> = maps.iter().flatten().flatten().collect();
            let keys = StringArray::from_iter_values(entries.iter().map(|(k, _)| k));
            let vals: Vec<_> = entries.iter().map(|(_, r)| Some(*r)).collect();
            let values = build(value, &vals, &format!("{path}{{}}")).map_err(|e| {
                locate(&maps, |m, i| {
                    let key = serde_json::to_string(&m[i].0).unwrap_or_default();
                    build(value, &[Some(m[i].1)], &format!("{path}[{key}]"))
                })
                .unwrap_or(e)
            })?;
            let entries =
                StructArray::try_new(map_entry_fields(value), vec![Arc::new(keys), values], None)
                    .map_err(|e| e.to_string())?;
            let lengths = maps.iter().map(|m| m.as_ref().map_or(0, Vec::len));
            let valid = maps.iter().map(Option::is_some).collect();
            Arc::new(
                MapArray::try_new(
                    Arc::new(map_entries(value)),
                    OffsetBuffer::from_lengths(lengths),
                    entries,
                    nulls(valid),
                    false,
                )
                .map_err(|e| e.to_string())?,
            )
        }
    })
}

/// Finds the first item whose conversion fails, for an error message that
/// names it; only runs once a whole column has failed.
fn locate<T>(
    rows: &[Option<Vec<T>>],
    try_one: impl Fn(&[T], usize) -> Result<ArrayRef, String>,
) -> Option<String> {
    rows.iter()
        .flatten()
        .find_map(|items| (0..items.len()).find_map(|i| try_one(items, i).err()))
}

// ---------------------------------------------------------------------------
// Inferred schema

/// A schema inferred from the records, with safe evolution only: new fields
/// become new nullable columns (or struct fields), `bigint` widens to
/// `double`, and a record whose field conflicts with a column's type is
/// rejected whole. A string column takes any value (as its JSON text), so it
/// never conflicts. Nulls, empty arrays and empty objects say nothing about a
/// type and add nothing. Columns keep the order in which they were first
/// seen, so replaying the same records gives the same schema, and the
/// serialized form (`{"columns":[{"name":..,"type":"<hive type>"}]}`)
/// restores it exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "Persisted", into = "Persisted")]
pub struct InferredSchema {
    columns: Vec<(String, HiveType)>,
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    columns: Vec<PersistedColumn>,
}

#[derive(Serialize, Deserialize)]
struct PersistedColumn {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

impl From<InferredSchema> for Persisted {
    fn from(s: InferredSchema) -> Persisted {
        let columns = s.columns.into_iter();
        Persisted {
            columns: columns
                .map(|(name, t)| PersistedColumn {
                    name,
                    ty: t.to_string(),
                })
                .collect(),
        }
    }
}

impl TryFrom<Persisted> for InferredSchema {
    type Error = String;
    fn try_from(p: Persisted) -> Result<InferredSchema, String> {
        let columns = p
            .columns
            .into_iter()
            .map(|c| {
                Ok((
                    c.name.clone(),
                    HiveType::parse(&c.ty).map_err(|e| format!("column `{}`: {e}", c.name))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if !columns.is_empty() {
            TableSchema::new(columns.clone())?;
        }
        Ok(InferredSchema { columns })
    }
}

impl InferredSchema {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds a record into the schema, or rejects it (leaving the schema as
    /// it was) with the field and the conflict. A record accepted here
    /// passes `table().check`.
    pub fn observe(&mut self, record: &[u8]) -> Result<(), String> {
        let mut columns = self.columns.clone();
        // A key "" could not be a Hive column name: it is ignored, as by `check`.
        for (name, raw) in parse_object(record)?
            .into_iter()
            .filter(|(n, _)| !n.is_empty())
        {
            if let Some(t) = infer(raw, &name, 0)? {
                merge_field(&mut columns, name, t, "")?;
            }
        }
        self.columns = columns;
        Ok(())
    }

    /// The current table. With no column seen yet it has no columns, which
    /// `encode` refuses (a Parquet file needs at least one column).
    pub fn table(&self) -> TableSchema {
        TableSchema::new(self.columns.clone()).unwrap_or_else(|_| TableSchema {
            columns: Vec::new(),
            arrow: Arc::new(Schema::empty()),
        })
    }
}

/// The type of a JSON value, or None when it says nothing (null, [], {}).
/// A value nested deeper than [`MAX_TYPE_DEPTH`] is refused, like such a
/// declared type.
fn infer(raw: &RawValue, path: &str, depth: usize) -> Result<Option<HiveType>, String> {
    if depth >= MAX_TYPE_DEPTH && matches!(kind(raw), Kind::Array | Kind::Object) {
        return Err(format!(
            "field `{path}` is nested deeper than {MAX_TYPE_DEPTH} levels"
        ));
    }
    Ok(match kind(raw) {
        Kind::Null => None,
        Kind::Bool => Some(HiveType::Boolean),
        Kind::String => Some(HiveType::String),
        Kind::Number => {
            let is_int = raw.get().trim().parse::<i64>().is_ok();
            Some(if is_int {
                HiveType::BigInt
            } else {
                HiveType::Double
            })
        }
        Kind::Array => {
            let items =
                serde_json::from_str::<Vec<&RawValue>>(raw.get()).map_err(|e| e.to_string())?;
            let mut elem: Option<HiveType> = None;
            for item in items {
                if let Some(t) = infer(item, &format!("{path}[]"), depth + 1)? {
                    elem = Some(match elem {
                        None => t,
                        // Elements of one array merge in either order.
                        Some(e) => {
                            let p = format!("{path}[]");
                            merge(&e, &t, &p).or_else(|_| merge(&t, &e, &p))?
                        }
                    });
                }
            }
            elem.map(|e| HiveType::Array(Box::new(e)))
        }
        Kind::Object => {
            let mut fields = Vec::new();
            let object = serde_json::from_str::<Object>(raw.get()).map_err(|e| e.to_string())?;
            for (name, v) in object.0.into_iter().filter(|(n, _)| !n.is_empty()) {
                if let Some(t) = infer(v, &format!("{path}.{name}"), depth + 1)? {
                    merge_field(&mut fields, name, t, path)?;
                }
            }
            (!fields.is_empty()).then_some(HiveType::Struct(fields))
        }
    })
}

fn merge_field(
    fields: &mut Vec<(String, HiveType)>,
    name: String,
    t: HiveType,
    parent: &str,
) -> Result<(), String> {
    let path = if parent.is_empty() {
        name.clone()
    } else {
        format!("{parent}.{name}")
    };
    match fields.iter_mut().find(|(n, _)| same_name(n, &name)) {
        Some((_, existing)) => *existing = merge(existing, &t, &path)?,
        None => fields.push((name, t)),
    }
    Ok(())
}

fn merge(existing: &HiveType, new: &HiveType, path: &str) -> Result<HiveType, String> {
    use HiveType as H;
    Ok(match (existing, new) {
        (a, b) if a == b => a.clone(),
        (H::BigInt, H::Double) | (H::Double, H::BigInt) => H::Double,
        (H::String, _) => H::String,
        (H::Array(a), H::Array(b)) => H::Array(Box::new(merge(a, b, &format!("{path}[]"))?)),
        (H::Struct(a), H::Struct(b)) => {
            let mut fields = a.clone();
            for (name, t) in b {
                merge_field(&mut fields, name.clone(), t.clone(), path)?;
            }
            H::Struct(fields)
        }
        _ => {
            return Err(format!(
                "field `{path}`: column is {existing}, record has {new}"
            ))
        }
    })
}

// ---------------------------------------------------------------------------
// Parquet

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    Uncompressed,
    Snappy,
    Gzip,
    Zstd,
}

#[derive(Debug, Clone)]
pub struct ParquetOptions {
    pub compression: ParquetCompression,
    /// Target row group size in bytes (Firehose's BlockSizeBytes); > 0.
    pub block_size_bytes: usize,
    /// Target page size in bytes (Firehose's PageSizeBytes); > 0.
    pub page_size_bytes: usize,
    pub enable_dictionary: bool,
}

impl Default for ParquetOptions {
    /// Firehose's defaults: Snappy, 128 MiB blocks, 1 MiB pages, dictionaries on.
    fn default() -> Self {
        ParquetOptions {
            compression: ParquetCompression::Snappy,
            block_size_bytes: 128 << 20,
            page_size_bytes: 1 << 20,
            enable_dictionary: true,
        }
    }
}

/// Records converted per RecordBatch: bounds memory, and keeps every string
/// column's offsets far below Arrow's 2 GiB limit.
const CHUNK_BYTES: usize = 64 << 20;
/// Rows handed to the writer at a time, so it can cut row groups by size.
const WRITE_ROWS: usize = 1024;

/// Encodes records (which should all have passed `check`) as one Parquet
/// file: row groups cut at `block_size_bytes` (and at Parquet's default of
/// 1,048,576 rows), page and column-chunk statistics, and the Arrow schema in
/// the footer so Arrow readers get back the exact types.
pub fn encode(
    schema: &TableSchema,
    records: &[&[u8]],
    opts: &ParquetOptions,
) -> Result<Vec<u8>, String> {
    if schema.columns.is_empty() {
        return Err("the schema has no columns yet".into());
    }
    if opts.block_size_bytes == 0 || opts.page_size_bytes == 0 {
        return Err("block and page sizes must be greater than zero".into());
    }
    let compression = match opts.compression {
        ParquetCompression::Uncompressed => Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => Compression::SNAPPY,
        ParquetCompression::Gzip => Compression::GZIP(GzipLevel::default()),
        ParquetCompression::Zstd => Compression::ZSTD(ZstdLevel::default()),
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_bytes(Some(opts.block_size_bytes))
        .set_data_page_size_limit(opts.page_size_bytes)
        .set_dictionary_page_size_limit(opts.page_size_bytes)
        .set_dictionary_enabled(opts.enable_dictionary)
        .set_statistics_enabled(EnabledStatistics::Page)
        .build();
    let err = |e: datafusion::parquet::errors::ParquetError| e.to_string();
    let mut writer = ArrowWriter::try_new(Vec::new(), schema.arrow(), Some(props)).map_err(err)?;
    let mut start = 0;
    while start < records.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < records.len() && (end == start || bytes + records[end].len() <= CHUNK_BYTES) {
            bytes += records[end].len();
            end += 1;
        }
        let chunk = &records[start..end];
        let batch = schema.to_batch(chunk).map_err(|e| {
            // Say which record failed (the batch error cannot).
            let bad = chunk
                .iter()
                .enumerate()
                .find_map(|(i, r)| schema.check(r).err().map(|e| (i, e)));
            bad.map_or(e, |(i, e)| format!("record {}: {e}", start + i))
        })?;
        for offset in (0..batch.num_rows()).step_by(WRITE_ROWS) {
            let n = WRITE_ROWS.min(batch.num_rows() - offset);
            writer.write(&batch.slice(offset, n)).map_err(err)?;
        }
        start = end;
    }
    writer.into_inner().map_err(err)
}
