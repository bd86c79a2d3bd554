//! The columns of one Parquet object, built a record at a time: each JSON
//! record is parsed once, its values converted by the rules in `parquet`'s
//! notes and appended to typed column buffers, which become Arrow arrays
//! without another pass. A record that does not convert is cut back out
//! whole, so the columns always hold exactly the accepted records.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, Int8Array, ListArray, MapArray, RecordBatch, StringArray,
    StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::kernels::cast_utils::{string_to_datetime, Parser};
use datafusion::arrow::datatypes::{Date32Type, Field};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::parquet::{map_entries, map_entry_fields, struct_fields, TableSchema};
use crate::delivery::hive::{same_name, HiveType};
pub(super) use crate::json::Key;

// ---------------------------------------------------------------------------
// Reading records

/// A JSON object's entries in document order, values kept as raw JSON text
/// so that numbers reach decimal columns digit for digit.
pub(super) type Entries<'a> = Vec<(Key<'a>, &'a RawValue)>;

struct EntriesSeed;

impl<'de> DeserializeSeed<'de> for EntriesSeed {
    type Value = Entries<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Entries<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EntriesSeed {
    type Value = Entries<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Entries<'de>, M::Error> {
        let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(8));
        while let Some(e) = m.next_entry::<Key<'de>, &'de RawValue>()? {
            entries.push(e);
        }
        Ok(entries)
    }
}

/// The values of the keys that match `names` (ignoring case; the last of
/// several wins), other keys skipped unread.
struct SlotsSeed<'s, 'de> {
    names: &'s [(String, HiveType)],
    slots: &'s mut Vec<Option<&'de RawValue>>,
}

impl<'de> DeserializeSeed<'de> for SlotsSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for SlotsSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<(), M::Error> {
        self.slots.clear();
        self.slots.resize(self.names.len(), None);
        let mut hint = 0;
        while let Some(k) = m.next_key::<Key<'de>>()? {
            match find(self.names, &k.0, &mut hint) {
                Some(i) => self.slots[i] = Some(m.next_value()?),
                None => {
                    m.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// The column `key` names. Records usually list keys in the columns'
/// order, so the one after the last match is tried first.
fn find(names: &[(String, HiveType)], key: &str, hint: &mut usize) -> Option<usize> {
    let hit = match names.get(*hint) {
        Some((n, _)) if same_name(n, key) => Some(*hint),
        _ => names.iter().position(|(n, _)| same_name(n, key)),
    };
    if let Some(i) = hit {
        *hint = i + 1;
    }
    hit
}

fn record_error(e: serde_json::Error) -> String {
    if e.is_data() {
        "record is not a JSON object".into()
    } else {
        format!("record is not valid JSON: {e}")
    }
}

/// A record as text. One pass over the whole record checks its UTF-8, so
/// the parser need not check each string on its own.
fn utf8(record: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(record).map_err(|e| format!("record is not valid JSON: {e}"))
}

/// A record's entries, or why it is not a JSON object.
pub(super) fn parse_object(record: &[u8]) -> Result<Entries<'_>, String> {
    let mut de = serde_json::Deserializer::from_str(utf8(record)?);
    let entries = EntriesSeed.deserialize(&mut de).map_err(record_error)?;
    de.end().map_err(record_error)?;
    Ok(entries)
}

/// The entries of a JSON object nested in a record (already valid JSON).
pub(super) fn nested_object(raw: &RawValue) -> Option<Entries<'_>> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    EntriesSeed.deserialize(&mut de).ok()
}

fn slots<'a>(
    json: &'a str,
    names: &[(String, HiveType)],
    out: &mut Vec<Option<&'a RawValue>>,
) -> Result<(), serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    SlotsSeed { names, slots: out }.deserialize(&mut de)?;
    de.end()
}

fn slots_of<'a>(
    entries: &[(Key<'a>, &'a RawValue)],
    names: &[(String, HiveType)],
    out: &mut Vec<Option<&'a RawValue>>,
) {
    out.clear();
    out.resize(names.len(), None);
    let mut hint = 0;
    for (k, v) in entries {
        if let Some(i) = find(names, &k.0, &mut hint) {
            out[i] = Some(*v);
        }
    }
}

/// A record's slots emptied, their room kept for the next record's (whose
/// values borrow another record's text).
fn recycled<'b>(mut slots: Vec<Option<&RawValue>>) -> Vec<Option<&'b RawValue>> {
    slots.clear();
    // Collected in place: the same allocation.
    slots.into_iter().map(|_| None).collect()
}

// ---------------------------------------------------------------------------
// Values

/// A JSON value's kind, read from its first character.
#[derive(PartialEq)]
pub(super) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// A value's text. A parsed value has no whitespace around it; one made
/// otherwise may.
fn text(raw: &RawValue) -> &str {
    let s = raw.get();
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(a), Some(z)) if !a.is_ascii_whitespace() && !z.is_ascii_whitespace() => s,
        _ => s.trim(),
    }
}

pub(super) fn kind(raw: &RawValue) -> Kind {
    match text(raw).as_bytes().first() {
        Some(b'n') => Kind::Null,
        Some(b't' | b'f') => Kind::Bool,
        Some(b'"') => Kind::String,
        Some(b'[') => Kind::Array,
        Some(b'{') => Kind::Object,
        _ => Kind::Number,
    }
}

/// A JSON string's text: borrowed when it has no escapes.
fn unquote(raw: &RawValue) -> Option<Cow<'_, str>> {
    let s = text(raw);
    match s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        _ => serde_json::from_str::<String>(s).ok().map(Cow::Owned),
    }
}

fn trimmed(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.trim()),
        Cow::Owned(o) if o.trim().len() == o.len() => Cow::Owned(o),
        Cow::Owned(o) => Cow::Owned(o.trim().to_string()),
    }
}

/// The text of a JSON number, or of a string holding one.
fn numeric_text(raw: &RawValue) -> Option<Cow<'_, str>> {
    match kind(raw) {
        Kind::Number => Some(Cow::Borrowed(text(raw))),
        Kind::String => Some(trimmed(unquote(raw)?)),
        _ => None,
    }
}

fn integer<T: TryFrom<i64>>(raw: &RawValue) -> Result<T, &'static str> {
    let text = numeric_text(raw).ok_or("")?;
    match text.parse::<i64>() {
        Ok(n) => T::try_from(n).map_err(|_| "out of range"),
        // A whole number past 64 bits is out of range; anything else is no integer.
        Err(_) if text.parse::<i128>().is_ok() => Err("out of range"),
        Err(_) => Err(""),
    }
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
pub(super) fn decimal(text: &str, precision: u8, scale: i8) -> Result<i128, &'static str> {
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
    // The significant digits: leading zeros dropped.
    let digits = || {
        int.bytes()
            .chain(frac.bytes())
            .map(|b| b - b'0')
            .skip_while(|&d| d == 0)
    };
    let n = digits().count();
    // value = digits * 10^shift, in units of 10^-scale.
    let shift = exp
        .saturating_sub(frac.len() as i64)
        .saturating_add(scale as i64);
    let (kept, round_up) = if shift >= 0 {
        if n == 0 {
            (0, false)
        } else if n as i64 + shift > precision as i64 {
            return Err("out of range");
        } else {
            let v = digits().fold(0i128, |v, d| v * 10 + d as i128);
            (v * 10i128.pow(shift as u32), false)
        }
    } else {
        let drop = shift.unsigned_abs().min(n as u64 + 1) as usize;
        let keep = n.saturating_sub(drop);
        if keep > precision as usize {
            return Err("out of range");
        }
        let v = digits().take(keep).fold(0i128, |v, d| v * 10 + d as i128);
        let next = if drop <= n {
            digits().nth(keep).unwrap_or(0)
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

fn boolean(raw: &RawValue) -> Result<bool, &'static str> {
    match kind(raw) {
        Kind::Bool => Ok(text(raw) == "true"),
        Kind::String => match unquote(raw).unwrap_or_default().as_ref() {
            s if s.eq_ignore_ascii_case("true") => Ok(true),
            s if s.eq_ignore_ascii_case("false") => Ok(false),
            _ => Err(""),
        },
        _ => Err(""),
    }
}

fn timestamp_micros(raw: &RawValue) -> Result<i64, &'static str> {
    match kind(raw) {
        // Epoch milliseconds, as Firehose producers commonly send them.
        Kind::Number => {
            let ms: i64 = text(raw).parse().map_err(|_| "")?;
            ms.checked_mul(1000).ok_or("out of range")
        }
        Kind::String => {
            let s = unquote(raw).ok_or("")?;
            let t = string_to_datetime(&chrono::Utc, s.trim()).map_err(|_| "")?;
            Ok(t.timestamp_micros())
        }
        _ => Err(""),
    }
}

fn date(raw: &RawValue) -> Result<i32, &'static str> {
    match kind(raw) {
        Kind::String => Date32Type::parse(unquote(raw).unwrap_or_default().trim()).ok_or(""),
        _ => Err(""),
    }
}

fn base64(s: &str, out: &mut Vec<u8>) -> bool {
    let s = s.trim_end_matches('=');
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return false,
        };
        acc = acc << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be padding zeros, and one lone character is no byte.
    bits < 6 && acc & ((1 << bits) - 1) == 0
}

/// A string column's text for any value: strings as they are, numbers,
/// booleans and nested JSON as their JSON text.
fn string_value(raw: &RawValue) -> Cow<'_, str> {
    match kind(raw) {
        Kind::String => unquote(raw).unwrap_or_default(),
        _ => Cow::Borrowed(text(raw)),
    }
}

fn rejection(path: &Path, ty: &HiveType, raw: &RawValue, why: &str) -> String {
    let text = text(raw);
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

/// Where a value sits in its record, spelled only when it is rejected:
/// `items[1].qty`, `attrs["k"]`.
enum Path<'a> {
    Column(&'a str),
    Field(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
    Key(&'a Path<'a>, &'a str),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Path::Column(n) => f.write_str(n),
            Path::Field(p, n) => write!(f, "{p}.{n}"),
            Path::Index(p, i) => write!(f, "{p}[{i}]"),
            Path::Key(p, k) => write!(f, "{p}[{}]", serde_json::Value::from(*k)),
        }
    }
}

// ---------------------------------------------------------------------------
// Column buffers

/// Variable-length values back to back, and where each ends.
struct Bytes {
    offsets: Vec<i32>,
    data: Vec<u8>,
}

impl Bytes {
    fn new() -> Bytes {
        Bytes {
            offsets: vec![0],
            data: Vec::new(),
        }
    }

    /// Ends the current value (after its bytes went into `data`).
    fn end(&mut self) -> Result<(), String> {
        self.offsets.push(offset(self.data.len())?);
        Ok(())
    }

    fn push(&mut self, v: &[u8]) -> Result<(), String> {
        self.data.extend_from_slice(v);
        self.end()
    }

    fn truncate(&mut self, n: usize) {
        self.offsets.truncate(n + 1);
        self.data.truncate(self.offsets[n] as usize);
    }

    fn offsets(self) -> (OffsetBuffer<i32>, datafusion::arrow::buffer::Buffer) {
        (
            OffsetBuffer::new(self.offsets.into()),
            datafusion::arrow::buffer::Buffer::from_vec(self.data),
        )
    }
}

fn offset(len: usize) -> Result<i32, String> {
    i32::try_from(len).map_err(|_| "one object's column would pass 2 GiB".to_string())
}

enum Data {
    Bool(Vec<bool>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Decimal(Vec<i128>),
    Date(Vec<i32>),
    Timestamp(Vec<i64>),
    /// string, varchar, char and binary.
    Bytes(Bytes),
    List {
        offsets: Vec<i32>,
        child: Box<Column>,
    },
    Struct(Vec<Column>),
    Map {
        offsets: Vec<i32>,
        keys: Bytes,
        values: Box<Column>,
    },
}

/// One column's values so far. The invariant that makes a rejected record
/// cheap to undo: a row's values are complete before its validity bit is
/// pushed, so `truncate(n)` restores the column as it was after row `n`,
/// whatever a failed push left behind.
struct Column {
    ty: HiveType,
    valid: Vec<bool>,
    data: Data,
}

macro_rules! push_value {
    ($vec:expr, $conv:expr, $raw:expr, $path:expr, $ty:expr) => {
        $vec.push($conv($raw).map_err(|why| rejection($path, $ty, $raw, why))?)
    };
}

impl Column {
    fn new(ty: &HiveType) -> Column {
        use HiveType as H;
        let data = match ty {
            H::Boolean => Data::Bool(Vec::new()),
            H::TinyInt => Data::I8(Vec::new()),
            H::SmallInt => Data::I16(Vec::new()),
            H::Int => Data::I32(Vec::new()),
            H::BigInt => Data::I64(Vec::new()),
            H::Float => Data::F32(Vec::new()),
            H::Double => Data::F64(Vec::new()),
            H::Decimal(..) => Data::Decimal(Vec::new()),
            H::Date => Data::Date(Vec::new()),
            H::Timestamp => Data::Timestamp(Vec::new()),
            H::String | H::Varchar(_) | H::Char(_) | H::Binary => Data::Bytes(Bytes::new()),
            H::Array(t) => Data::List {
                offsets: vec![0],
                child: Box::new(Column::new(t)),
            },
            H::Struct(fields) => Data::Struct(fields.iter().map(|(_, t)| Column::new(t)).collect()),
            H::Map(t) => Data::Map {
                offsets: vec![0],
                keys: Bytes::new(),
                values: Box::new(Column::new(t)),
            },
        };
        Column {
            ty: ty.clone(),
            valid: Vec::new(),
            data,
        }
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    fn push_null(&mut self) -> Result<(), String> {
        match &mut self.data {
            Data::Bool(v) => v.push(false),
            Data::I8(v) => v.push(0),
            Data::I16(v) => v.push(0),
            Data::I32(v) | Data::Date(v) => v.push(0),
            Data::I64(v) | Data::Timestamp(v) => v.push(0),
            Data::F32(v) => v.push(0.0),
            Data::F64(v) => v.push(0.0),
            Data::Decimal(v) => v.push(0),
            Data::Bytes(b) => b.end()?,
            Data::List { offsets, .. } | Data::Map { offsets, .. } => {
                offsets.push(*offsets.last().expect("offsets start at 0"))
            }
            Data::Struct(children) => {
                for c in children {
                    c.push_null()?;
                }
            }
        }
        self.valid.push(false);
        Ok(())
    }

    /// Appends a value (None: the key is missing), or says why it does not
    /// fit, leaving the column for `truncate` to restore.
    fn push(&mut self, value: Option<&RawValue>, path: &Path) -> Result<(), String> {
        let raw = match value {
            Some(raw) if kind(raw) != Kind::Null => raw,
            _ => return self.push_null(),
        };
        use HiveType as H;
        let Column { ty, valid, data } = self;
        let reject = |why: &str| rejection(path, ty, raw, why);
        match (&*ty, data) {
            (_, Data::Bool(v)) => push_value!(v, boolean, raw, path, ty),
            (_, Data::I8(v)) => push_value!(v, integer::<i8>, raw, path, ty),
            (_, Data::I16(v)) => push_value!(v, integer::<i16>, raw, path, ty),
            (_, Data::I32(v)) => push_value!(v, integer::<i32>, raw, path, ty),
            (_, Data::I64(v)) => push_value!(v, integer::<i64>, raw, path, ty),
            (_, Data::F32(v)) => push_value!(v, float::<f32>, raw, path, ty),
            (_, Data::F64(v)) => push_value!(v, float::<f64>, raw, path, ty),
            (_, Data::Date(v)) => push_value!(v, date, raw, path, ty),
            (_, Data::Timestamp(v)) => push_value!(v, timestamp_micros, raw, path, ty),
            (H::Decimal(p, s), Data::Decimal(v)) => {
                let text = numeric_text(raw).ok_or_else(|| reject(""))?;
                v.push(decimal(&text, *p, *s).map_err(reject)?)
            }
            (H::Binary, Data::Bytes(b)) => {
                let s = match kind(raw) {
                    Kind::String => unquote(raw).unwrap_or_default(),
                    _ => return Err(reject("")),
                };
                let start = b.data.len();
                if !base64(&s, &mut b.data) {
                    b.data.truncate(start);
                    return Err(reject("invalid base64"));
                }
                b.end()?
            }
            (H::Varchar(n) | H::Char(n), Data::Bytes(b)) => {
                let s = string_value(raw);
                if s.len() > *n && s.chars().count() > *n {
                    return Err(reject("too long"));
                }
                b.push(s.as_bytes())?
            }
            (_, Data::Bytes(b)) => b.push(string_value(raw).as_bytes())?,
            (_, Data::List { offsets, child }) => {
                let items = match kind(raw) {
                    Kind::Array => {
                        serde_json::from_str::<Vec<&RawValue>>(raw.get()).map_err(|_| reject(""))?
                    }
                    _ => return Err(reject("")),
                };
                for (i, item) in items.into_iter().enumerate() {
                    child.push(Some(item), &Path::Index(path, i))?;
                }
                offsets.push(offset(child.len())?);
            }
            (H::Struct(fields), Data::Struct(children)) => {
                let mut values = Vec::new();
                if kind(raw) != Kind::Object || slots(raw.get(), fields, &mut values).is_err() {
                    return Err(reject(""));
                }
                for ((name, _), (c, v)) in fields.iter().zip(children.iter_mut().zip(values)) {
                    c.push(v, &Path::Field(path, name))?;
                }
            }
            (
                _,
                Data::Map {
                    offsets,
                    keys,
                    values,
                },
            ) => {
                let entries = match kind(raw) {
                    Kind::Object => nested_object(raw).ok_or_else(|| reject(""))?,
                    _ => return Err(reject("")),
                };
                for (k, v) in &entries {
                    keys.push(k.0.as_bytes())?;
                    values.push(Some(v), &Path::Key(path, &k.0))?;
                }
                offsets.push(offset(values.len())?);
            }
            (_, Data::Decimal(_) | Data::Struct(_)) => {
                unreachable!("a column's data follows its type")
            }
        }
        valid.push(true);
        Ok(())
    }

    /// Restores the column as it was after its first `n` rows.
    fn truncate(&mut self, n: usize) {
        self.valid.truncate(n);
        match &mut self.data {
            Data::Bool(v) => v.truncate(n),
            Data::I8(v) => v.truncate(n),
            Data::I16(v) => v.truncate(n),
            Data::I32(v) | Data::Date(v) => v.truncate(n),
            Data::I64(v) | Data::Timestamp(v) => v.truncate(n),
            Data::F32(v) => v.truncate(n),
            Data::F64(v) => v.truncate(n),
            Data::Decimal(v) => v.truncate(n),
            Data::Bytes(b) => b.truncate(n),
            Data::List { offsets, child } => {
                offsets.truncate(n + 1);
                child.truncate(offsets[n] as usize);
            }
            Data::Struct(children) => children.iter_mut().for_each(|c| c.truncate(n)),
            Data::Map {
                offsets,
                keys,
                values,
            } => {
                offsets.truncate(n + 1);
                keys.truncate(offsets[n] as usize);
                values.truncate(offsets[n] as usize);
            }
        }
    }

    /// Widens the column to `ty`, a type inference merged into its own:
    /// bigint to double, structs gaining fields (null in the rows so far).
    fn widen(&mut self, ty: &HiveType) {
        use HiveType as H;
        if self.ty == *ty {
            return;
        }
        let rows = self.len();
        match (&mut self.data, ty) {
            (Data::I64(v), H::Double) => {
                self.data = Data::F64(v.iter().map(|&x| x as f64).collect());
            }
            (Data::List { child, .. }, H::Array(t)) => child.widen(t),
            (Data::Struct(children), H::Struct(fields)) => widen_all(children, fields, rows),
            _ => unreachable!("inference only widens bigint and extends structs"),
        }
        self.ty = ty.clone();
    }

    /// Bytes held, roughly.
    fn held(&self) -> usize {
        let v = self.valid.capacity();
        v + match &self.data {
            Data::Bool(x) => x.capacity(),
            Data::I8(x) => x.capacity(),
            Data::I16(x) => x.capacity() * 2,
            Data::I32(x) | Data::Date(x) => x.capacity() * 4,
            Data::F32(x) => x.capacity() * 4,
            Data::I64(x) | Data::Timestamp(x) => x.capacity() * 8,
            Data::F64(x) => x.capacity() * 8,
            Data::Decimal(x) => x.capacity() * 16,
            Data::Bytes(b) => b.offsets.capacity() * 4 + b.data.capacity(),
            Data::List { offsets, child } => offsets.capacity() * 4 + child.held(),
            Data::Struct(children) => children.iter().map(Column::held).sum(),
            Data::Map {
                offsets,
                keys,
                values,
            } => {
                offsets.capacity() * 4
                    + keys.offsets.capacity() * 4
                    + keys.data.capacity()
                    + values.held()
            }
        }
    }

    fn finish(self) -> Result<ArrayRef, String> {
        use HiveType as H;
        let n = NullBuffer::from(self.valid);
        let nulls = (n.null_count() > 0).then_some(n);
        let err = |e: datafusion::arrow::error::ArrowError| e.to_string();
        Ok(match (self.ty, self.data) {
            (_, Data::Bool(v)) => Arc::new(BooleanArray::new(v.into(), nulls)),
            (_, Data::I8(v)) => Arc::new(Int8Array::new(v.into(), nulls)),
            (_, Data::I16(v)) => Arc::new(Int16Array::new(v.into(), nulls)),
            (_, Data::I32(v)) => Arc::new(Int32Array::new(v.into(), nulls)),
            (_, Data::I64(v)) => Arc::new(Int64Array::new(v.into(), nulls)),
            (_, Data::F32(v)) => Arc::new(Float32Array::new(v.into(), nulls)),
            (_, Data::F64(v)) => Arc::new(Float64Array::new(v.into(), nulls)),
            (_, Data::Date(v)) => Arc::new(Date32Array::new(v.into(), nulls)),
            (_, Data::Timestamp(v)) => {
                Arc::new(TimestampMicrosecondArray::new(v.into(), nulls).with_timezone("UTC"))
            }
            (H::Decimal(p, s), Data::Decimal(v)) => Arc::new(
                Decimal128Array::new(v.into(), nulls)
                    .with_precision_and_scale(p, s)
                    .map_err(err)?,
            ),
            (H::Binary, Data::Bytes(b)) => {
                let (offsets, data) = b.offsets();
                Arc::new(BinaryArray::try_new(offsets, data, nulls).map_err(err)?)
            }
            (_, Data::Bytes(b)) => {
                let (offsets, data) = b.offsets();
                Arc::new(StringArray::try_new(offsets, data, nulls).map_err(err)?)
            }
            (H::Array(t), Data::List { offsets, child }) => {
                let field = Arc::new(Field::new("element", t.arrow(), true));
                Arc::new(
                    ListArray::try_new(
                        field,
                        OffsetBuffer::new(offsets.into()),
                        child.finish()?,
                        nulls,
                    )
                    .map_err(err)?,
                )
            }
            (H::Struct(fields), Data::Struct(children)) => {
                let arrays = children
                    .into_iter()
                    .map(Column::finish)
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(StructArray::try_new(struct_fields(&fields), arrays, nulls).map_err(err)?)
            }
            (
                H::Map(t),
                Data::Map {
                    offsets,
                    keys,
                    values,
                },
            ) => {
                let (key_offsets, key_data) = keys.offsets();
                let keys = StringArray::try_new(key_offsets, key_data, None).map_err(err)?;
                let entries = StructArray::try_new(
                    map_entry_fields(&t),
                    vec![Arc::new(keys), values.finish()?],
                    None,
                )
                .map_err(err)?;
                Arc::new(
                    MapArray::try_new(
                        Arc::new(map_entries(&t)),
                        OffsetBuffer::new(offsets.into()),
                        entries,
                        nulls,
                        false,
                    )
                    .map_err(err)?,
                )
            }
            _ => unreachable!("a column's data follows its type"),
        })
    }
}

/// Widens `columns` (of a table or a struct, `rows` long) to `types`,
/// which keep the columns' order and may add columns after them: those
/// start as `rows` nulls.
fn widen_all(columns: &mut Vec<Column>, types: &[(String, HiveType)], rows: usize) {
    for (i, (_, t)) in types.iter().enumerate() {
        match columns.get_mut(i) {
            Some(c) => c.widen(t),
            None => {
                let mut c = Column::new(t);
                for _ in 0..rows {
                    // Offsets of a column of nulls stay 0: this cannot fail.
                    let _ = c.push_null();
                }
                columns.push(c);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Columns

/// The columns of one object under construction.
pub struct Columns {
    schema: TableSchema,
    columns: Vec<Column>,
    rows: usize,
    /// Room for one record's values, reused from record to record.
    slots: Vec<Option<&'static RawValue>>,
    /// The inferred schema's generation the columns follow.
    pub(super) generation: u64,
}

impl Columns {
    pub fn new(schema: &TableSchema) -> Columns {
        Columns {
            columns: schema.hive().iter().map(|(_, t)| Column::new(t)).collect(),
            schema: schema.clone(),
            rows: 0,
            slots: Vec::new(),
            generation: 0,
        }
    }

    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes the columns hold, roughly (their buffers' capacity).
    pub fn held(&self) -> usize {
        self.columns.iter().map(Column::held).sum()
    }

    /// Appends one record, or says why it does not convert and leaves the
    /// columns as they were.
    pub fn append(&mut self, record: &[u8]) -> Result<(), String> {
        let text = utf8(record)?;
        let mut values = recycled(std::mem::take(&mut self.slots));
        let appended = match slots(text, self.schema.hive(), &mut values) {
            Ok(()) => self.append_values(&values),
            Err(e) => Err(record_error(e)),
        };
        self.slots = recycled(values);
        appended
    }

    /// Appends a record parsed already (by schema inference).
    pub(super) fn append_entries(
        &mut self,
        entries: &[(Key<'_>, &RawValue)],
    ) -> Result<(), String> {
        let mut values = recycled(std::mem::take(&mut self.slots));
        slots_of(entries, self.schema.hive(), &mut values);
        let appended = self.append_values(&values);
        self.slots = recycled(values);
        appended
    }

    fn append_values(&mut self, values: &[Option<&RawValue>]) -> Result<(), String> {
        let hive = self.schema.hive();
        for (i, (c, &v)) in self.columns.iter_mut().zip(values).enumerate() {
            if let Err(e) = c.push(v, &Path::Column(&hive[i].0)) {
                for c in &mut self.columns[..=i] {
                    c.truncate(self.rows);
                }
                return Err(e);
            }
        }
        self.rows += 1;
        Ok(())
    }

    /// Follows the inferred schema to `schema`, which extends this one.
    pub(super) fn widen(&mut self, schema: &TableSchema, generation: u64) {
        widen_all(&mut self.columns, schema.hive(), self.rows);
        self.schema = schema.clone();
        self.generation = generation;
    }

    /// The rows so far, leaving these columns empty, of the same schema.
    pub fn take(&mut self) -> Columns {
        let empty = Columns {
            generation: self.generation,
            ..Columns::new(&self.schema)
        };
        std::mem::replace(self, empty)
    }

    /// The columns as one RecordBatch.
    pub fn finish(self) -> Result<RecordBatch, String> {
        let arrays = self
            .columns
            .into_iter()
            .map(Column::finish)
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(self.schema.arrow(), arrays).map_err(|e| e.to_string())
    }
}
