//! Record format conversion: JSON records into Parquet objects, like
//! Firehose's `DataFormatConversionConfiguration` with the OpenX JSON SerDe
//! as input and Parquet as output.
//!
//! The table schema is declared the way Firehose users know it, as Glue/Hive
//! column types (`bigint`, `decimal(10,2)`, `array<string>`,
//! `struct<id:bigint,name:string>`, `map<string,string>`, ...), or inferred
//! from the records themselves ([`InferredSchema`]).
//!
//! How JSON values become column values (one type, [`Columns`], converts a
//! record for [`TableSchema::check`], for delivery and for [`encode`] alike):
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
//! This module does not buffer, name or store objects: it turns records
//! into the columns of one Parquet file, and the columns into its bytes.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, ListArray, RecordBatch, StructArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::{Compression, GzipLevel, ZstdLevel};
use datafusion::parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use super::columns::Columns;
use super::columns::{kind, nested_object, parse_object, Key, Kind};
use crate::delivery::hive::{same_name, HiveType};
pub use crate::delivery::hive::{MAX_TYPE_BYTES, MAX_TYPE_DEPTH};

impl HiveType {
    pub(super) fn arrow(&self) -> DataType {
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

pub(super) fn struct_fields(fields: &[(String, HiveType)]) -> Fields {
    fields
        .iter()
        .map(|(n, t)| Field::new(n, t.arrow(), true))
        .collect()
}

pub(super) fn map_entry_fields(value: &HiveType) -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", value.arrow(), true),
    ])
}

pub(super) fn map_entries(value: &HiveType) -> Field {
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

    pub(super) fn hive(&self) -> &[(String, HiveType)] {
        &self.columns
    }

    /// Would this record convert? Err(reason) names the field and the
    /// problem, e.g. "field `amount`: expected decimal(10,2), got \"abc\"".
    pub fn check(&self, record: &[u8]) -> Result<(), String> {
        Columns::new(self).append(record)
    }
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(try_from = "Persisted", into = "Persisted")]
pub struct InferredSchema {
    columns: Vec<(String, HiveType)>,
    /// Counts the changes, so that columns built under an older schema
    /// know to widen (not persisted: columns do not outlive the process).
    generation: u64,
}

impl PartialEq for InferredSchema {
    fn eq(&self, other: &InferredSchema) -> bool {
        self.columns == other.columns
    }
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
        Ok(InferredSchema {
            columns,
            generation: 0,
        })
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
        self.fold(&parse_object(record)?)
    }

    /// [`observe`](Self::observe) and [`Columns::append`] on one parse:
    /// the record folded into the schema, then appended to `columns`
    /// (widened first to the schema, which may have grown since they were
    /// made). A record is refused while it leaves the schema without a
    /// column, since a Parquet file needs one.
    pub fn append(&mut self, record: &[u8], columns: &mut Columns) -> Result<(), String> {
        let entries = parse_object(record)?;
        self.fold(&entries)?;
        if self.columns.is_empty() {
            return Err(
                "no column can be inferred yet: every field is null, empty or missing".into(),
            );
        }
        self.conform(columns);
        columns.append_entries(&entries)
    }

    /// Widens columns made under an older version of this schema.
    pub fn conform(&self, columns: &mut Columns) {
        if columns.generation != self.generation {
            columns.widen(&self.table(), self.generation);
        }
    }

    fn fold(&mut self, entries: &[(Key<'_>, &RawValue)]) -> Result<(), String> {
        // A key "" could not be a Hive column name: it is ignored, as by `check`.
        let fields = || entries.iter().filter(|(n, _)| !n.0.is_empty());
        // Most records add nothing: see that without copying the schema.
        let mut hint = 0;
        let mut same = true;
        for (name, raw) in fields() {
            let Some(t) = infer(raw, &name.0, 0)? else {
                continue;
            };
            let known = match self.columns.get(hint) {
                Some((n, _)) if same_name(n, &name.0) => Some(hint),
                _ => self.columns.iter().position(|(n, _)| same_name(n, &name.0)),
            };
            match known {
                Some(i) if covers(&self.columns[i].1, &t) => hint = i + 1,
                _ => {
                    same = false;
                    break;
                }
            }
        }
        if same {
            return Ok(());
        }
        let mut columns = self.columns.clone();
        for (name, raw) in fields() {
            if let Some(t) = infer(raw, &name.0, 0)? {
                merge_field(&mut columns, name.0.to_string(), t, "")?;
            }
        }
        if columns != self.columns {
            self.columns = columns;
            self.generation += 1;
        }
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
            let text = raw.get().trim();
            if text.parse::<i64>().is_ok() {
                Some(HiveType::BigInt)
            } else if text.parse::<f64>().is_ok_and(f64::is_finite) {
                Some(HiveType::Double)
            } else {
                return Err(format!(
                    "field `{path}`: {text} is out of range for a double"
                ));
            }
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
            let object =
                nested_object(raw).ok_or_else(|| format!("field `{path}`: not an object"))?;
            for (name, v) in object.into_iter().filter(|(n, _)| !n.0.is_empty()) {
                if let Some(t) = infer(v, &format!("{path}.{}", name.0), depth + 1)? {
                    merge_field(&mut fields, name.0.into_owned(), t, path)?;
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

/// Would merging `new` into `existing` leave it as it is?
fn covers(existing: &HiveType, new: &HiveType) -> bool {
    use HiveType as H;
    match (existing, new) {
        (a, b) if a == b => true,
        (H::String, _) | (H::Double, H::BigInt) => true,
        (H::Array(a), H::Array(b)) => covers(a, b),
        (H::Struct(a), H::Struct(b)) => b.iter().all(|(name, t)| {
            a.iter()
                .find(|(n, _)| same_name(n, name))
                .is_some_and(|(_, e)| covers(e, t))
        }),
        _ => false,
    }
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

/// Input bytes converted per RecordBatch by [`encode`]: bounds memory, and
/// keeps every string column's offsets far below Arrow's 2 GiB limit.
const CHUNK_BYTES: usize = 64 << 20;
/// Rows handed to the writer at a time, at least: it cuts row groups by
/// size only between the slices it is given, so each slice is about an
/// eighth of a row group (fewer, larger slices cost less).
const WRITE_ROWS: usize = 1024;

/// One Parquet file being written: row groups cut at `block_size_bytes`
/// (and at Parquet's default of 1,048,576 rows), page and column-chunk
/// statistics, and the Arrow schema in the footer so Arrow readers get back
/// the exact types.
pub struct ParquetWriter<W: std::io::Write + Send = Vec<u8>> {
    writer: ArrowWriter<W>,
    block_size_bytes: usize,
}

fn parquet_error(e: datafusion::parquet::errors::ParquetError) -> String {
    e.to_string()
}

impl ParquetWriter {
    pub fn new(schema: &TableSchema, opts: &ParquetOptions) -> Result<ParquetWriter, String> {
        ParquetWriter::to(Vec::new(), schema, opts)
    }
}

impl<W: std::io::Write + Send> ParquetWriter<W> {
    /// A writer of a file into `sink`, which gets each row group as it is cut.
    pub fn to(
        sink: W,
        schema: &TableSchema,
        opts: &ParquetOptions,
    ) -> Result<ParquetWriter<W>, String> {
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
        let writer =
            ArrowWriter::try_new(sink, schema.arrow(), Some(props)).map_err(parquet_error)?;
        Ok(ParquetWriter {
            writer,
            block_size_bytes: opts.block_size_bytes,
        })
    }

    /// Writes the rows of `columns`, which must follow the writer's schema.
    pub fn write(&mut self, columns: Columns) -> Result<(), String> {
        self.write_batch(&columns.finish()?)
    }

    /// Writes the rows of `batch`, which must follow the writer's schema.
    pub fn write_batch(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let row_bytes = batch.get_array_memory_size() / batch.num_rows().max(1);
        let step =
            (self.block_size_bytes / 8 / row_bytes.max(1)).clamp(WRITE_ROWS, 64 * WRITE_ROWS);
        for offset in (0..batch.num_rows()).step_by(step) {
            let n = step.min(batch.num_rows() - offset);
            self.writer
                .write(&batch.slice(offset, n))
                .map_err(parquet_error)?;
        }
        Ok(())
    }

    /// The sink, holding the whole file.
    pub fn finish(self) -> Result<W, String> {
        self.writer.into_inner().map_err(parquet_error)
    }
}

/// `batch`, converted earlier under an inferred schema that `schema` has
/// since extended (columns and struct fields added, bigint widened to
/// double), in `schema`'s shape: what `Columns::widen` does, on arrays.
pub fn conform_batch(batch: &RecordBatch, schema: &TableSchema) -> Result<RecordBatch, String> {
    let target = schema.arrow();
    if batch.schema().fields() == target.fields() {
        return Ok(batch.clone());
    }
    let arrays = conform_fields(
        batch.schema().fields(),
        batch.columns(),
        target.fields(),
        batch.num_rows(),
    )?;
    RecordBatch::try_new(target, arrays).map_err(|e| e.to_string())
}

fn conform_fields(
    have: &Fields,
    arrays: &[ArrayRef],
    want: &Fields,
    rows: usize,
) -> Result<Vec<ArrayRef>, String> {
    want.iter()
        .map(|f| match have.iter().position(|h| h.name() == f.name()) {
            Some(i) => conform_array(&arrays[i], f.data_type()),
            None => Ok(new_null_array(f.data_type(), rows)),
        })
        .collect()
}

fn conform_array(a: &ArrayRef, want: &DataType) -> Result<ArrayRef, String> {
    if a.data_type() == want {
        return Ok(a.clone());
    }
    match (a.data_type(), want) {
        (DataType::Int64, DataType::Float64) => cast(a, want).map_err(|e| e.to_string()),
        (DataType::Struct(have), DataType::Struct(fields)) => {
            let s = a.as_struct();
            let children = conform_fields(have, s.columns(), fields, s.len())?;
            Ok(Arc::new(
                StructArray::try_new(fields.clone(), children, s.nulls().cloned())
                    .map_err(|e| e.to_string())?,
            ))
        }
        (DataType::List(_), DataType::List(field)) => {
            let l = a.as_list::<i32>();
            let values = conform_array(l.values(), field.data_type())?;
            Ok(Arc::new(
                ListArray::try_new(
                    field.clone(),
                    l.offsets().clone(),
                    values,
                    l.nulls().cloned(),
                )
                .map_err(|e| e.to_string())?,
            ))
        }
        (have, want) => Err(format!("a column converted as {have} cannot become {want}")),
    }
}

/// Encodes records as one Parquet file; an error names the first record
/// that does not convert (`record 2: field ...`).
pub fn encode(
    schema: &TableSchema,
    records: &[&[u8]],
    opts: &ParquetOptions,
) -> Result<Vec<u8>, String> {
    let mut writer = ParquetWriter::new(schema, opts)?;
    let mut columns = Columns::new(schema);
    let mut bytes = 0;
    for (i, r) in records.iter().enumerate() {
        columns.append(r).map_err(|e| format!("record {i}: {e}"))?;
        bytes += r.len();
        if bytes >= CHUNK_BYTES {
            writer.write(std::mem::replace(&mut columns, Columns::new(schema)))?;
            bytes = 0;
        }
    }
    writer.write(columns)?;
    writer.finish()
}
