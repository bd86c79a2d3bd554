//! A delivery stream's definition, in Firehose's own words.
//!
//! A stream is defined by a CreateDeliveryStream request, whether it arrives
//! over the API or sits in the config file: both go through [`parse`], so the
//! two are the same thing by construction. The request is kept as it came
//! (that is what is persisted), and [`StreamSpec`] is what delivery runs on.
//!
//! hydrant accepts an option only if it does what Firehose says it does.
//! Options that change nothing when off (`CloudWatchLoggingOptions` with
//! `Enabled: false`, `S3BackupMode: Disabled`, `NoEncryption`) are accepted;
//! everything else hydrant does not implement is refused with its name, so no
//! setting is ever silently dropped. `RoleARN` is accepted and only echoed:
//! there is no IAM here.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::delivery::prefix::{self, Template};
use crate::delivery::route::PartitionQuery;
use crate::destination::lake::parquet::{ParquetCompression, ParquetOptions, TableSchema};

pub mod database;
pub mod redshift;
pub use database::DatabaseSpec;
pub use redshift::{Credentials, SecretConfig, Secrets, WarehouseSpec};

/// What the config file declares for stream definitions to name: Glue
/// tables (for format conversion) and secrets (for the warehouse).
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub tables: Catalog,
    pub secrets: Secrets,
}

/// Why a stream definition was refused. The front door answers each kind
/// with its AWS error (`api::error`); the message names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not the JSON shape the definition has (SerializationException).
    #[error("{0}")]
    Malformed(String),
    /// Breaks the API model: a missing required field, a name that does not
    /// match its pattern, a number out of range (ValidationException).
    #[error("{0}")]
    Invalid(String),
    /// Well-formed, but Firehose's rules or hydrant's support refuse it: an
    /// unsupported option, a bad prefix (InvalidArgumentException).
    #[error("{0}")]
    Refused(String),
}

impl SpecError {
    pub fn malformed(m: impl Into<String>) -> Self {
        SpecError::Malformed(m.into())
    }
    pub fn invalid(m: impl Into<String>) -> Self {
        SpecError::Invalid(m.into())
    }
    pub fn refused(m: impl Into<String>) -> Self {
        SpecError::Refused(m.into())
    }
    /// The same kind of error, its message changed.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            SpecError::Malformed(m) => SpecError::Malformed(f(m)),
            SpecError::Invalid(m) => SpecError::Invalid(f(m)),
            SpecError::Refused(m) => SpecError::Refused(f(m)),
        }
    }
}

pub const MAX_SIZE_MB: u32 = 128;
pub const MAX_INTERVAL_SECONDS: u32 = 900;
/// Firehose's defaults when BufferingHints are absent.
pub const DEFAULT_SIZE_MB: u32 = 5;
pub const DEFAULT_INTERVAL_SECONDS: u32 = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    #[serde(rename = "UNCOMPRESSED")]
    Uncompressed,
    #[serde(rename = "GZIP")]
    Gzip,
    /// Zstandard: not one of Firehose's values; hydrant's own, for `.zst` objects.
    #[serde(rename = "ZSTD")]
    Zstd,
    /// Snappy in its framing format, as Firehose writes `.snappy` objects.
    #[serde(rename = "Snappy")]
    Snappy,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Uncompressed => "UNCOMPRESSED",
            Compression::Gzip => "GZIP",
            Compression::Zstd => "ZSTD",
            Compression::Snappy => "Snappy",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Compression::Uncompressed => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
            Compression::Snappy => ".snappy",
        }
    }
}

/// How records are written into objects.
#[derive(Debug, Clone)]
pub enum Format {
    /// As they came (JSON lines with AppendDelimiterToRecord).
    Raw,
    /// Firehose's record format conversion: JSON records into Parquet.
    Parquet {
        schema: ParquetSchema,
        options: ParquetOptions,
    },
}

#[derive(Debug, Clone)]
pub enum ParquetSchema {
    /// Columns given inline (SchemaConfiguration.Columns).
    Declared(TableSchema),
    /// Inferred from the data, growing new nullable columns as they appear.
    Inferred,
}

/// hydrant's stand-in for the Glue Data Catalog: tables a
/// DataFormatConversionConfiguration can name (`DatabaseName`, `TableName`),
/// from the config file's `glue_tables`, keyed `database.table`.
pub type Catalog = BTreeMap<String, CatalogTable>;

#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogTable {
    /// The columns, in Glue's Column shape: `{Name, Type}` with a Hive type.
    #[serde(default)]
    pub columns: Vec<ColumnIn>,
    /// Instead of columns: infer the schema from the data.
    #[serde(default)]
    pub infer_from_data: bool,
}

impl CatalogTable {
    /// Checks the table as declared: one of columns or inference, and every
    /// column's type (its syntax, its bounds, how deep it nests).
    pub fn validate(&self) -> Result<(), String> {
        match (self.columns.is_empty(), self.infer_from_data) {
            (true, false) => Err("give columns, or infer_from_data: true".into()),
            (false, true) => Err("give columns or infer_from_data: true, not both".into()),
            (true, true) => Ok(()),
            (false, false) => {
                let cols: Vec<(String, String)> = self
                    .columns
                    .iter()
                    .map(|c| (c.name.clone(), c.kind.clone()))
                    .collect();
                TableSchema::from_columns(&cols).map(|_| ())
            }
        }
    }
}

/// What delivery needs to know about a stream, validated.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    /// Came as ExtendedS3DestinationConfiguration (else S3DestinationConfiguration).
    pub extended: bool,
    pub role_arn: String,
    pub bucket_arn: String,
    pub bucket: String,
    pub prefix: String,
    pub error_output_prefix: Option<String>,
    pub prefix_template: Template,
    pub error_template: Option<Template>,
    pub size_mb: u32,
    pub interval_seconds: u32,
    pub compression: Compression,
    pub append_delimiter: bool,
    pub file_extension: Option<String>,
    /// Dynamic partitioning: the MetadataExtraction query.
    pub partition: Option<PartitionQuery>,
    pub format: Format,
    /// RedshiftDestinationConfiguration: the warehouse each staged object
    /// is loaded into (the fields above then describe its S3Configuration).
    pub warehouse: Option<WarehouseSpec>,
    /// DatabaseAsSource: the database whose changes are the stream's records.
    pub source: Option<DatabaseSpec>,
    /// The request this spec came from, as persisted.
    pub request: Value,
}

impl StreamSpec {
    pub fn size_bytes(&self) -> usize {
        self.size_mb as usize * 1024 * 1024
    }

    /// The extension of delivered objects: FileExtension if set, else the
    /// compression's own.
    pub fn extension(&self) -> &str {
        self.file_extension
            .as_deref()
            .unwrap_or(self.compression.extension())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateRequest {
    delivery_stream_name: Option<String>,
    delivery_stream_type: Option<String>,
    s3_destination_configuration: Option<Destination>,
    extended_s3_destination_configuration: Option<Destination>,
    redshift_destination_configuration: Option<redshift::RedshiftIn>,
    database_source_configuration: Option<database::DatabaseIn>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Destination {
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    #[serde(rename = "BucketARN")]
    bucket_arn: Option<String>,
    prefix: Option<String>,
    error_output_prefix: Option<String>,
    buffering_hints: Option<BufferingHints>,
    compression_format: Option<String>,
    encryption_configuration: Option<Encryption>,
    cloud_watch_logging_options: Option<CloudWatch>,
    // The rest are ExtendedS3DestinationConfiguration's alone.
    processing_configuration: Option<Processing>,
    #[serde(rename = "S3BackupMode")]
    s3_backup_mode: Option<String>,
    file_extension: Option<String>,
    custom_time_zone: Option<String>,
    dynamic_partitioning_configuration: Option<DynamicPartitioning>,
    data_format_conversion_configuration: Option<Conversion>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Conversion {
    enabled: Option<bool>,
    schema_configuration: Option<SchemaConfiguration>,
    input_format_configuration: Option<Value>,
    output_format_configuration: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SchemaConfiguration {
    /// hydrant's inline columns, in Glue's Column shape.
    columns: Option<Vec<ColumnIn>>,
    /// hydrant's: infer the schema from the data.
    infer_from_data: Option<bool>,
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    database_name: Option<String>,
    table_name: Option<String>,
    /// One catalog here, so its id and region only identify it.
    catalog_id: Option<String>,
    region: Option<String>,
    version_id: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ColumnIn {
    pub name: String,
    #[serde(rename = "Type")]
    pub kind: String,
    pub comment: Option<String>,
}
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DynamicPartitioning {
    enabled: Option<bool>,
    retry_options: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
struct BufferingHints {
    #[serde(rename = "SizeInMBs")]
    size_mb: Option<i64>,
    #[serde(rename = "IntervalInSeconds")]
    interval_seconds: Option<i64>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Encryption {
    no_encryption_config: Option<String>,
    #[serde(rename = "KMSEncryptionConfig")]
    kms: Option<Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CloudWatch {
    enabled: Option<bool>,
    log_group_name: Option<String>,
    log_stream_name: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Processing {
    enabled: Option<bool>,
    processors: Option<Vec<Processor>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Processor {
    #[serde(rename = "Type")]
    kind: Option<String>,
    parameters: Option<Vec<Value>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

fn unsupported(path: &str, other: &BTreeMap<String, Value>) -> Result<(), SpecError> {
    match other.keys().next() {
        None => Ok(()),
        Some(k) => Err(SpecError::refused(format!(
            "{path}{k} is not supported by hydrant (unknown option, or a Firehose feature hydrant does not implement yet)"
        ))),
    }
}

/// Firehose's stream name rule, plus one of hydrant's: the name is a
/// directory name, so it may not be `.` or `..`.
pub fn check_stream_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(format!(
            "Value {name:?} at 'deliveryStreamName' failed to satisfy constraint: \
             Member must have length 1-64 and match [a-zA-Z0-9_.-]+ (and not be . or ..)"
        )))
    }
}

/// An S3 bucket name by S3's rules; it is also a directory in the embedded lake.
pub(crate) fn check_bucket(bucket: &str) -> bool {
    let b = bucket.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b".-".contains(c))
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !bucket.contains("..")
}

/// Parses and validates a CreateDeliveryStream request.
pub fn parse(request: &Value, declared: &Declared) -> Result<StreamSpec, SpecError> {
    let catalog = &declared.tables;
    let req: CreateRequest = serde_json::from_value(request.clone())
        .map_err(|e| SpecError::malformed(format!("CreateDeliveryStream: {e}")))?;
    let name = req
        .delivery_stream_name
        .ok_or_else(|| SpecError::invalid("DeliveryStreamName is required"))?;
    check_stream_name(&name)?;
    unsupported("", &req.other)?;
    let source = match (req.delivery_stream_type.as_deref(), req.database_source_configuration) {
        (None | Some("DirectPut"), None) => None,
        (Some("DatabaseAsSource"), Some(d)) => Some(database::parse(d, &declared.secrets)?),
        (Some("DatabaseAsSource"), None) => {
            return Err(SpecError::invalid(
                "DatabaseSourceConfiguration is required when DeliveryStreamType is DatabaseAsSource",
            ))
        }
        (_, Some(_)) => {
            return Err(SpecError::refused(
                "DatabaseSourceConfiguration is given only with DeliveryStreamType DatabaseAsSource",
            ))
        }
        (Some(t @ ("KinesisStreamAsSource" | "MSKAsSource")), None) => {
            return Err(SpecError::refused(format!(
                "DeliveryStreamType {t} is not supported by hydrant yet; use DirectPut or DatabaseAsSource"
            )))
        }
        (Some(t), None) => {
            return Err(SpecError::invalid(format!(
                "DeliveryStreamType {t:?} is not one of DirectPut, KinesisStreamAsSource, MSKAsSource, DatabaseAsSource"
            )))
        }
    };
    let (dest, extended, path, redshift) = match (
        req.s3_destination_configuration,
        req.extended_s3_destination_configuration,
        req.redshift_destination_configuration,
    ) {
        (Some(d), None, None) => (d, false, "S3DestinationConfiguration.", None),
        (None, Some(d), None) => (d, true, "ExtendedS3DestinationConfiguration.", None),
        (None, None, Some(mut r)) => {
            let staging = r.s3_configuration.take().ok_or_else(|| {
                SpecError::invalid("RedshiftDestinationConfiguration.S3Configuration is required")
            })?;
            let d: Destination = serde_json::from_value(staging).map_err(|e| {
                SpecError::malformed(format!("RedshiftDestinationConfiguration.S3Configuration: {e}"))
            })?;
            (d, false, "RedshiftDestinationConfiguration.S3Configuration.", Some(r))
        }
        (None, None, None) => {
            return Err(SpecError::refused(
                "a destination is required: ExtendedS3DestinationConfiguration, S3DestinationConfiguration \
                 or RedshiftDestinationConfiguration",
            ))
        }
        _ => {
            return Err(SpecError::refused(
                "give one destination, not several: ExtendedS3DestinationConfiguration, S3DestinationConfiguration \
                 or RedshiftDestinationConfiguration",
            ))
        }
    };
    unsupported(path, &dest.other)?;
    if !extended {
        for (set, field) in [
            (
                dest.processing_configuration.is_some(),
                "ProcessingConfiguration",
            ),
            (dest.s3_backup_mode.is_some(), "S3BackupMode"),
            (dest.file_extension.is_some(), "FileExtension"),
            (dest.custom_time_zone.is_some(), "CustomTimeZone"),
            (
                dest.dynamic_partitioning_configuration.is_some(),
                "DynamicPartitioningConfiguration",
            ),
        ] {
            if set {
                return Err(SpecError::refused(format!(
                    "{path}{field} is not a field of S3DestinationConfiguration; use ExtendedS3DestinationConfiguration"
                )));
            }
        }
    }
    let role_arn = dest
        .role_arn
        .ok_or_else(|| SpecError::invalid(format!("{path}RoleARN is required")))?;
    let bucket_arn = dest
        .bucket_arn
        .ok_or_else(|| SpecError::invalid(format!("{path}BucketARN is required")))?;
    let bucket = bucket_arn
        .strip_prefix("arn:aws:s3:::")
        .or_else(|| bucket_arn.strip_prefix("arn:aws-cn:s3:::"))
        .or_else(|| bucket_arn.strip_prefix("arn:aws-us-gov:s3:::"))
        .filter(|b| check_bucket(b))
        .ok_or_else(|| {
            SpecError::refused(format!(
                "{path}BucketARN {bucket_arn:?} must be arn:aws:s3:::BUCKET with a valid S3 bucket name \
                 (3-63 characters: lowercase letters, digits, '.' and '-')"
            ))
        })?
        .to_string();

    let prefix = dest.prefix.unwrap_or_default();
    let error_output_prefix = dest.error_output_prefix;
    for (what, p) in [
        ("Prefix", Some(&prefix)),
        ("ErrorOutputPrefix", error_output_prefix.as_ref()),
    ] {
        if let Some(p) = p {
            if p.len() > 1024 {
                return Err(SpecError::invalid(format!(
                    "{path}{what} is longer than 1024 characters"
                )));
            }
        }
    }

    let (mut size_mb, mut interval_seconds) = (DEFAULT_SIZE_MB, DEFAULT_INTERVAL_SECONDS);
    if let Some(h) = dest.buffering_hints {
        unsupported(&format!("{path}BufferingHints."), &h.other)?;
        if let Some(s) = h.size_mb {
            if !(1..=MAX_SIZE_MB as i64).contains(&s) {
                return Err(SpecError::invalid(format!(
                    "{path}BufferingHints.SizeInMBs is {s}; it must be 1 to {MAX_SIZE_MB}"
                )));
            }
            size_mb = s as u32;
        }
        if let Some(i) = h.interval_seconds {
            if !(0..=MAX_INTERVAL_SECONDS as i64).contains(&i) {
                return Err(SpecError::invalid(format!(
                    "{path}BufferingHints.IntervalInSeconds is {i}; it must be 0 to {MAX_INTERVAL_SECONDS}"
                )));
            }
            interval_seconds = i as u32;
        }
    }

    let compression = match dest.compression_format.as_deref() {
        None | Some("UNCOMPRESSED") => Compression::Uncompressed,
        Some("GZIP") => Compression::Gzip,
        Some("ZSTD") => Compression::Zstd,
        Some("Snappy") => Compression::Snappy,
        Some(c @ ("ZIP" | "HADOOP_SNAPPY")) => {
            return Err(SpecError::refused(format!(
                "{path}CompressionFormat {c} is not supported by hydrant yet; use UNCOMPRESSED, GZIP, Snappy or ZSTD"
            )))
        }
        Some(c) => {
            return Err(SpecError::invalid(format!(
                "{path}CompressionFormat {c:?} is not one of UNCOMPRESSED, GZIP, ZIP, Snappy, HADOOP_SNAPPY, ZSTD"
            )))
        }
    };

    if let Some(e) = dest.encryption_configuration {
        unsupported(&format!("{path}EncryptionConfiguration."), &e.other)?;
        if e.kms.is_some() {
            return Err(SpecError::refused(format!(
                "{path}EncryptionConfiguration.KMSEncryptionConfig is not supported by hydrant"
            )));
        }
        match e.no_encryption_config.as_deref() {
            None | Some("NoEncryption") => {}
            Some(v) => {
                return Err(SpecError::invalid(format!(
                    "{path}EncryptionConfiguration.NoEncryptionConfig {v:?} must be NoEncryption"
                )))
            }
        }
    }
    if let Some(c) = dest.cloud_watch_logging_options {
        unsupported(&format!("{path}CloudWatchLoggingOptions."), &c.other)?;
        let _ = (c.log_group_name, c.log_stream_name);
        if c.enabled == Some(true) {
            return Err(SpecError::refused(format!(
                "{path}CloudWatchLoggingOptions.Enabled is not supported by hydrant: there is no CloudWatch; \
                 hydrant logs to its own output and exposes metrics at /-/metrics"
            )));
        }
    }
    match dest.s3_backup_mode.as_deref() {
        None | Some("Disabled") => {}
        Some(m) => {
            return Err(SpecError::refused(format!(
                "{path}S3BackupMode {m} is not supported by hydrant yet; use Disabled"
            )))
        }
    }
    let mut append_delimiter = false;
    let mut query: Option<PartitionQuery> = None;
    if let Some(p) = dest.processing_configuration {
        let pp = format!("{path}ProcessingConfiguration.");
        unsupported(&pp, &p.other)?;
        if p.enabled == Some(true) {
            for proc in p.processors.unwrap_or_default() {
                unsupported(&format!("{pp}Processors."), &proc.other)?;
                match proc.kind.as_deref() {
                    Some("AppendDelimiterToRecord") => {
                        if proc.parameters.is_some_and(|p| !p.is_empty()) {
                            return Err(SpecError::refused(format!(
                                "{pp}Processors: AppendDelimiterToRecord takes no parameters (it appends a newline)"
                            )));
                        }
                        append_delimiter = true;
                    }
                    Some("MetadataExtraction") => {
                        query = Some(metadata_extraction(
                            &pp,
                            proc.parameters.unwrap_or_default(),
                        )?);
                    }
                    Some(t) => {
                        return Err(SpecError::refused(format!(
                            "{pp}Processors: processor type {t} is not supported by hydrant yet; \
                             AppendDelimiterToRecord and MetadataExtraction are"
                        )))
                    }
                    None => {
                        return Err(SpecError::invalid(format!(
                            "{pp}Processors: Type is required"
                        )))
                    }
                }
            }
        }
    }
    if let Some(ext) = &dest.file_extension {
        let ok = ext.is_empty()
            || (ext.starts_with('.')
                && ext.len() <= 128
                && ext[1..].bytes().all(|b| {
                    b.is_ascii_digit() || b.is_ascii_lowercase() || b"!-_.*'()".contains(&b)
                })
                && ext.len() > 1);
        if !ok {
            return Err(SpecError::invalid(format!(
                "{path}FileExtension {ext:?} must start with '.' followed by [0-9a-z!-_.*'()]"
            )));
        }
    }
    match dest.custom_time_zone.as_deref() {
        None | Some("") | Some("UTC") => {}
        Some(tz) => {
            return Err(SpecError::refused(format!(
                "{path}CustomTimeZone {tz} is not supported by hydrant yet; timestamps are UTC"
            )))
        }
    }

    let partitioning = match dest.dynamic_partitioning_configuration {
        None => false,
        Some(d) => {
            unsupported(
                &format!("{path}DynamicPartitioningConfiguration."),
                &d.other,
            )?;
            if d.retry_options.is_some() {
                return Err(SpecError::refused(format!(
                    "{path}DynamicPartitioningConfiguration.RetryOptions is not supported by hydrant: \
                     delivery retries until the store takes the object and never gives records up"
                )));
            }
            d.enabled == Some(true)
        }
    };
    let partition = match (partitioning, query) {
        (true, Some(q)) => Some(q),
        (true, None) => {
            return Err(SpecError::refused(format!(
                "{path}DynamicPartitioningConfiguration is enabled but there is no MetadataExtraction processor \
                 to extract partition keys"
            )))
        }
        (false, Some(_)) => {
            return Err(SpecError::refused(format!(
                "{path}ProcessingConfiguration: a MetadataExtraction processor needs DynamicPartitioningConfiguration \
                 with Enabled: true"
            )))
        }
        (false, None) => None,
    };
    let format = match dest.data_format_conversion_configuration {
        None => Format::Raw,
        Some(c) => conversion(path, c, catalog)?,
    };
    if let Format::Parquet { .. } = format {
        if compression != Compression::Uncompressed {
            return Err(SpecError::refused(format!(
                "{path}CompressionFormat must be UNCOMPRESSED when DataFormatConversionConfiguration is enabled; \
                 set the Parquet compression in ParquetSerDe.Compression"
            )));
        }
        if append_delimiter {
            return Err(SpecError::refused(format!(
                "{path}AppendDelimiterToRecord has no meaning for Parquet output; remove it"
            )));
        }
    }
    let warehouse = match &redshift {
        None => None,
        Some(r) => {
            let rp = "RedshiftDestinationConfiguration.";
            if let Some(c) = &r.cloud_watch_logging_options {
                if c.get("Enabled") == Some(&Value::Bool(true)) {
                    return Err(SpecError::refused(format!(
                        "{rp}CloudWatchLoggingOptions.Enabled is not supported by hydrant: there is no CloudWatch"
                    )));
                }
            }
            if let Some(p) = &r.processing_configuration {
                append_delimiter = redshift_processing(rp, p)?;
            }
            let backup = |b: &Value| {
                let probe = serde_json::json!({
                    "DeliveryStreamName": name,
                    "S3DestinationConfiguration": b,
                });
                let s = parse(&probe, declared).map_err(|e| {
                    e.map_message(|m| {
                        m.replace(
                            "S3DestinationConfiguration",
                            "RedshiftDestinationConfiguration.S3BackupConfiguration",
                        )
                    })
                })?;
                Ok((s.bucket, s.prefix, s.compression))
            };
            Some(redshift::parse(r, &declared.secrets, compression, backup)?)
        }
    };
    let names = partition.as_ref().map(|q| q.names());
    let (prefix_template, error_template) =
        prefix::validate_partitioned(&prefix, error_output_prefix.as_deref(), names.as_deref())
            .map_err(|e| SpecError::refused(format!("{path}{e}")))?;

    if let (Some(_), Some(w)) = (&source, &warehouse) {
        // A mirror: one table per source table, in the schema DataTableName names.
        let cp = "RedshiftDestinationConfiguration.CopyCommand.";
        let given = request["RedshiftDestinationConfiguration"]["CopyCommand"]["DataTableName"]
            .as_str()
            .unwrap_or("");
        if given.contains('.') {
            return Err(SpecError::refused(format!(
                "{cp}DataTableName {given:?}: with DatabaseAsSource it names the schema the mirror tables go in \
                 (one per source table, named like it), so it has no '.'"
            )));
        }
        if w.columns.is_some() {
            return Err(SpecError::refused(format!(
                "{cp}DataTableColumns has no meaning with DatabaseAsSource: a mirror table has the source table's columns"
            )));
        }
        if w.copy.format
            != (crate::destination::warehouse::copy::RecordFormat::Json { ignore_case: false })
        {
            return Err(SpecError::refused(format!(
                "{cp}CopyOptions must be JSON 'auto' with DatabaseAsSource: the staged objects are change records"
            )));
        }
    }
    Ok(StreamSpec {
        name,
        extended,
        role_arn,
        bucket_arn,
        bucket,
        prefix,
        error_output_prefix,
        prefix_template,
        error_template,
        size_mb,
        interval_seconds,
        compression,
        append_delimiter,
        file_extension: dest.file_extension.filter(|e| !e.is_empty()),
        partition,
        format,
        warehouse,
        source,
        request: request.clone(),
    })
}

/// A Redshift destination's ProcessingConfiguration: of hydrant's
/// processors, only AppendDelimiterToRecord has a meaning there (there are
/// no partitions). Returns whether it is on.
fn redshift_processing(rp: &str, p: &Value) -> Result<bool, SpecError> {
    let pp = format!("{rp}ProcessingConfiguration.");
    let p: Processing =
        serde_json::from_value(p.clone()).map_err(|e| SpecError::malformed(format!("{pp} {e}")))?;
    unsupported(&pp, &p.other)?;
    let mut delimiter = false;
    if p.enabled == Some(true) {
        for proc in p.processors.unwrap_or_default() {
            unsupported(&format!("{pp}Processors."), &proc.other)?;
            match proc.kind.as_deref() {
                Some("AppendDelimiterToRecord") if proc.parameters.as_ref().is_none_or(|p| p.is_empty()) => {
                    delimiter = true
                }
                Some("AppendDelimiterToRecord") => {
                    return Err(SpecError::refused(format!(
                        "{pp}Processors: AppendDelimiterToRecord takes no parameters (it appends a newline)"
                    )))
                }
                Some(t) => {
                    return Err(SpecError::refused(format!(
                        "{pp}Processors: processor type {t} is not supported for a Redshift destination; \
                         AppendDelimiterToRecord is"
                    )))
                }
                None => return Err(SpecError::invalid(format!("{pp}Processors: Type is required"))),
            }
        }
    }
    Ok(delimiter)
}

/// Firehose's DataFormatConversionConfiguration, JSON in and Parquet out.
/// Firehose reads the schema from a Glue table; hydrant has no catalog and
/// takes the columns inline (SchemaConfiguration.Columns, Glue's Column
/// shape), or infers them from the data (SchemaConfiguration.InferFromData).
fn conversion(path: &str, c: Conversion, catalog: &Catalog) -> Result<Format, SpecError> {
    let p = format!("{path}DataFormatConversionConfiguration.");
    unsupported(&p, &c.other)?;
    if c.enabled == Some(false) {
        return Ok(Format::Raw);
    }
    let bad = |m: String| Err(SpecError::refused(format!("{p}{m}")));
    let sc = match c.schema_configuration {
        Some(sc) => sc,
        None => {
            return bad(
                "SchemaConfiguration is required: give Columns, or InferFromData: true".into(),
            )
        }
    };
    if let Some(k) = sc.other.keys().next() {
        return bad(format!(
            "SchemaConfiguration.{k} is not a SchemaConfiguration field"
        ));
    }
    let _ = (sc.role_arn, sc.catalog_id, sc.region);
    if sc.version_id.as_deref().is_some_and(|v| v != "LATEST") {
        return bad("SchemaConfiguration.VersionId: hydrant's catalog keeps one version of a table; use LATEST".into());
    }
    let (columns, infer) = match (sc.database_name, sc.table_name, sc.columns, sc.infer_from_data) {
        (Some(db), Some(table), None, None) => {
            let name = format!("{db}.{table}");
            let t = catalog.get(&name).ok_or_else(|| {
                SpecError::refused(format!(
                    "{p}SchemaConfiguration: there is no table {name} in hydrant's catalog; \
                     declare it under glue_tables in the config file"
                ))
            })?;
            (Some(t.columns.clone()).filter(|c| !c.is_empty()), Some(t.infer_from_data))
        }
        (None, None, columns, infer) => (columns, infer),
        _ => {
            return bad(
                "SchemaConfiguration names a table (DatabaseName and TableName, from glue_tables in the config file) \
                 or gives the schema inline (Columns, or InferFromData: true), not both"
                    .into(),
            )
        }
    };
    let schema = match (columns, infer) {
        (Some(cols), None | Some(false)) if !cols.is_empty() => {
            let cols: Vec<(String, String)> = cols.into_iter().map(|c| (c.name, c.kind)).collect();
            ParquetSchema::Declared(
                TableSchema::from_columns(&cols)
                    .map_err(|e| SpecError::refused(format!("{p}SchemaConfiguration.Columns: {e}")))?,
            )
        }
        (None, Some(true)) => ParquetSchema::Inferred,
        _ => return bad("SchemaConfiguration needs either a non-empty Columns list or InferFromData: true, not both".into()),
    };
    // Input: JSON, read as OpenX's and Hive's SerDes read it by default.
    if let Some(input) = c.input_format_configuration {
        let d = &input["Deserializer"];
        let serde = d.as_object().and_then(|o| o.iter().next());
        match serde {
            Some((name, opts)) if name == "OpenXJsonSerDe" || name == "HiveJsonSerDe" => {
                for (k, v) in opts.as_object().into_iter().flatten() {
                    let default = matches!((k.as_str(), v), ("CaseInsensitive", Value::Bool(true)) | ("ConvertDotsInJsonKeysToUnderscores", Value::Bool(false)));
                    if !default {
                        return bad(format!(
                            "InputFormatConfiguration.Deserializer.{name}.{k} = {v} is not supported: hydrant matches JSON keys \
                             to columns case-insensitively, dots unchanged"
                        ));
                    }
                }
            }
            _ => return bad("InputFormatConfiguration.Deserializer must be OpenXJsonSerDe or HiveJsonSerDe (JSON input)".into()),
        }
    }
    let mut options = ParquetOptions::default();
    if let Some(out) = c.output_format_configuration {
        let s = &out["Serializer"];
        if s.get("OrcSerDe").is_some() {
            return bad("OutputFormatConfiguration.Serializer.OrcSerDe is not supported by hydrant; use ParquetSerDe".into());
        }
        let Some(pq) = s.get("ParquetSerDe").and_then(|v| v.as_object()) else {
            return bad("OutputFormatConfiguration.Serializer must be ParquetSerDe".into());
        };
        for (k, v) in pq {
            match (k.as_str(), v) {
                ("BlockSizeBytes", Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 64 << 20) => {
                    options.block_size_bytes = n.as_u64().unwrap() as usize
                }
                ("PageSizeBytes", Value::Number(n)) if n.as_u64().is_some_and(|n| n >= 64 << 10) => {
                    options.page_size_bytes = n.as_u64().unwrap() as usize
                }
                ("EnableDictionaryCompression", Value::Bool(b)) => options.enable_dictionary = *b,
                ("MaxPaddingBytes", Value::Number(n)) if n.as_u64() == Some(0) => {}
                ("WriterVersion", Value::String(w)) if w == "V1" => {}
                ("Compression", Value::String(c)) => {
                    options.compression = match c.as_str() {
                        "SNAPPY" => ParquetCompression::Snappy,
                        "GZIP" => ParquetCompression::Gzip,
                        "UNCOMPRESSED" => ParquetCompression::Uncompressed,
                        "ZSTD" => ParquetCompression::Zstd,
                        other => return bad(format!("ParquetSerDe.Compression {other:?} must be SNAPPY, GZIP, ZSTD or UNCOMPRESSED")),
                    }
                }
                (k, v) => {
                    return bad(format!(
                        "ParquetSerDe.{k} = {v} is not supported (BlockSizeBytes ≥ 64 MiB, PageSizeBytes ≥ 64 KiB, \
                         Compression, EnableDictionaryCompression, MaxPaddingBytes 0, WriterVersion V1)"
                    ))
                }
            }
        }
    }
    Ok(Format::Parquet { schema, options })
}

/// The MetadataExtraction processor's parameters: the query, and the JQ-1.6
/// engine (the only one Firehose has).
fn metadata_extraction(pp: &str, params: Vec<Value>) -> Result<PartitionQuery, SpecError> {
    let mut query = None;
    for p in params {
        let name = p["ParameterName"].as_str().unwrap_or("");
        let value = p["ParameterValue"].as_str().unwrap_or("");
        match name {
            "MetadataExtractionQuery" => {
                query = Some(PartitionQuery::parse(value).map_err(|e| SpecError::refused(format!("{pp}{e}")))?)
            }
            "JsonParsingEngine" if value == "JQ-1.6" => {}
            "JsonParsingEngine" => {
                return Err(SpecError::refused(format!("{pp}JsonParsingEngine {value:?} must be JQ-1.6")))
            }
            other => {
                return Err(SpecError::refused(format!(
                    "{pp}MetadataExtraction parameter {other:?} is not supported; use MetadataExtractionQuery and JsonParsingEngine"
                )))
            }
        }
    }
    query.ok_or_else(|| {
        SpecError::refused(format!(
            "{pp}MetadataExtraction needs a MetadataExtractionQuery parameter"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn article() -> Value {
        json!({
            "DeliveryStreamName": "my-event-staging",
            "DeliveryStreamType": "DirectPut",
            "ExtendedS3DestinationConfiguration": {
                "RoleARN": "arn:aws:iam::123456789012:role/firehose",
                "BucketARN": "arn:aws:s3:::data.staging.aws",
                "Prefix": "events/my-event-staging/",
                "BufferingHints": {"IntervalInSeconds": 300, "SizeInMBs": 30},
                "CompressionFormat": "UNCOMPRESSED"
            }
        })
    }

    #[test]
    fn the_article_stream_parses_one_to_one() {
        let s = parse(&article(), &Declared::default()).unwrap();
        assert_eq!(s.name, "my-event-staging");
        assert_eq!(s.bucket, "data.staging.aws");
        assert_eq!(s.prefix, "events/my-event-staging/");
        assert_eq!((s.size_mb, s.interval_seconds), (30, 300));
        assert_eq!(s.compression, Compression::Uncompressed);
        assert!(!s.append_delimiter);
    }

    #[test]
    fn defaults_are_firehose_defaults() {
        let mut r = article();
        r["ExtendedS3DestinationConfiguration"]
            .as_object_mut()
            .unwrap()
            .remove("BufferingHints");
        let s = parse(&r, &Declared::default()).unwrap();
        assert_eq!((s.size_mb, s.interval_seconds), (5, 300));
    }

    /// (JSON pointer to set, value, expected error type, text the message must contain)
    const REJECTIONS: &[(&str, &str, &str, &str)] = &[
        (
            "/DeliveryStreamName",
            r#""bad name""#,
            "ValidationException",
            "deliveryStreamName",
        ),
        (
            "/DeliveryStreamName",
            r#""..""#,
            "ValidationException",
            "deliveryStreamName",
        ),
        (
            "/DeliveryStreamType",
            r#""KinesisStreamAsSource""#,
            "InvalidArgumentException",
            "KinesisStreamAsSource",
        ),
        (
            "/Tags",
            r#"[{"Key":"a"}]"#,
            "InvalidArgumentException",
            "Tags",
        ),
        (
            "/ExtendedS3DestinationConfiguration/BufferingHints/SizeInMBs",
            "129",
            "ValidationException",
            "SizeInMBs",
        ),
        (
            "/ExtendedS3DestinationConfiguration/BufferingHints/SizeInMBs",
            "0",
            "ValidationException",
            "SizeInMBs",
        ),
        (
            "/ExtendedS3DestinationConfiguration/BufferingHints/IntervalInSeconds",
            "901",
            "ValidationException",
            "IntervalInSeconds",
        ),
        (
            "/ExtendedS3DestinationConfiguration/BufferingHints/SizeInMBs",
            r#""big""#,
            "SerializationException",
            "invalid type",
        ),
        (
            "/ExtendedS3DestinationConfiguration/CompressionFormat",
            r#""HADOOP_SNAPPY""#,
            "InvalidArgumentException",
            "HADOOP_SNAPPY",
        ),
        (
            "/ExtendedS3DestinationConfiguration/CompressionFormat",
            r#""LZ4""#,
            "ValidationException",
            "LZ4",
        ),
        (
            "/ExtendedS3DestinationConfiguration/DataFormatConversionConfiguration",
            r#"{"Enabled":true,"SchemaConfiguration":{"DatabaseName":"db","TableName":"t"}}"#,
            "InvalidArgumentException",
            "no table db.t in hydrant's catalog",
        ),
        (
            "/ExtendedS3DestinationConfiguration/DynamicPartitioningConfiguration",
            r#"{"Enabled":true}"#,
            "InvalidArgumentException",
            "DynamicPartitioningConfiguration",
        ),
        (
            "/ExtendedS3DestinationConfiguration/CloudWatchLoggingOptions",
            r#"{"Enabled":true}"#,
            "InvalidArgumentException",
            "CloudWatch",
        ),
        (
            "/ExtendedS3DestinationConfiguration/S3BackupMode",
            r#""Enabled""#,
            "InvalidArgumentException",
            "S3BackupMode",
        ),
        (
            "/ExtendedS3DestinationConfiguration/EncryptionConfiguration",
            r#"{"KMSEncryptionConfig":{}}"#,
            "InvalidArgumentException",
            "KMS",
        ),
        (
            "/ExtendedS3DestinationConfiguration/ProcessingConfiguration",
            r#"{"Enabled":true,"Processors":[{"Type":"Lambda"}]}"#,
            "InvalidArgumentException",
            "Lambda",
        ),
        (
            "/ExtendedS3DestinationConfiguration/CustomTimeZone",
            r#""Asia/Tokyo""#,
            "InvalidArgumentException",
            "CustomTimeZone",
        ),
        (
            "/ExtendedS3DestinationConfiguration/FileExtension",
            r#""json""#,
            "ValidationException",
            "FileExtension",
        ),
        (
            "/ExtendedS3DestinationConfiguration/BucketARN",
            r#""arn:aws:s3:::Bad_Bucket""#,
            "InvalidArgumentException",
            "BucketARN",
        ),
        (
            "/ExtendedS3DestinationConfiguration/Prefix",
            r#""!{timestamp:yyyy}/""#,
            "InvalidArgumentException",
            "ErrorOutputPrefix is required",
        ),
        (
            "/ExtendedS3DestinationConfiguration/Prefix",
            r#""a/../b/""#,
            "InvalidArgumentException",
            "segment",
        ),
        (
            "/ExtendedS3DestinationConfiguration/Bogus",
            "1",
            "InvalidArgumentException",
            "Bogus",
        ),
        (
            "/S3DestinationConfiguration",
            r#"{"RoleARN":"r","BucketARN":"arn:aws:s3:::b-b"}"#,
            "InvalidArgumentException",
            "not several",
        ),
    ];

    fn set(v: &mut Value, pointer: &str, value: Value) {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_string(), value);
    }

    #[test]
    fn rejections_name_the_option() {
        for (pointer, value, code, text) in REJECTIONS {
            let mut r = article();
            set(&mut r, pointer, serde_json::from_str(value).unwrap());
            // As the front door answers it.
            let err =
                crate::api::ApiError::from(parse(&r, &Declared::default()).expect_err(pointer));
            assert_eq!(err.code, *code, "{pointer} = {value}: {}", err.message);
            assert!(
                err.message.contains(text),
                "{pointer} = {value}: {:?} lacks {text:?}",
                err.message
            );
        }
    }

    #[test]
    fn harmless_options_are_accepted_and_delimiter_takes_effect() {
        let mut r = article();
        let d = "/ExtendedS3DestinationConfiguration";
        set(
            &mut r,
            &format!("{d}/CloudWatchLoggingOptions"),
            json!({"Enabled": false}),
        );
        set(&mut r, &format!("{d}/S3BackupMode"), json!("Disabled"));
        set(
            &mut r,
            &format!("{d}/EncryptionConfiguration"),
            json!({"NoEncryptionConfig": "NoEncryption"}),
        );
        set(&mut r, &format!("{d}/FileExtension"), json!(".json"));
        set(
            &mut r,
            &format!("{d}/ProcessingConfiguration"),
            json!({"Enabled": true, "Processors": [{"Type": "AppendDelimiterToRecord"}]}),
        );
        let s = parse(&r, &Declared::default()).unwrap();
        assert!(s.append_delimiter);
        assert_eq!(s.extension(), ".json");
    }

    #[test]
    fn dynamic_partitioning_needs_its_query_and_a_key_in_the_prefix() {
        let mut r = article();
        let d = "/ExtendedS3DestinationConfiguration";
        set(
            &mut r,
            &format!("{d}/DynamicPartitioningConfiguration"),
            json!({"Enabled": true}),
        );
        set(
            &mut r,
            &format!("{d}/Prefix"),
            json!("events/event_name=!{partitionKeyFromQuery:event_name}/"),
        );
        set(
            &mut r,
            &format!("{d}/ErrorOutputPrefix"),
            json!("errors/!{firehose:error-output-type}/"),
        );
        let query = |q: &str| {
            json!({"Enabled": true, "Processors": [{"Type": "MetadataExtraction", "Parameters": [
            {"ParameterName": "MetadataExtractionQuery", "ParameterValue": q},
            {"ParameterName": "JsonParsingEngine", "ParameterValue": "JQ-1.6"}]}]})
        };
        assert!(parse(&r, &Declared::default())
            .unwrap_err()
            .to_string()
            .contains("no MetadataExtraction processor"));
        set(
            &mut r,
            &format!("{d}/ProcessingConfiguration"),
            query("{event_name: .event_name}"),
        );
        let s = parse(&r, &Declared::default()).unwrap();
        assert_eq!(s.partition.unwrap().names(), ["event_name"]);
        set(
            &mut r,
            &format!("{d}/ProcessingConfiguration"),
            query("{other: .x}"),
        );
        assert!(parse(&r, &Declared::default())
            .unwrap_err()
            .to_string()
            .contains("not defined by the MetadataExtractionQuery"));
        set(
            &mut r,
            &format!("{d}/ProcessingConfiguration"),
            query(".event_name | ascii"),
        );
        assert!(parse(&r, &Declared::default())
            .unwrap_err()
            .to_string()
            .contains("simple paths"));
    }

    #[test]
    fn plain_s3_destination_refuses_extended_fields() {
        let r = json!({
            "DeliveryStreamName": "s",
            "S3DestinationConfiguration": {"RoleARN": "r", "BucketARN": "arn:aws:s3:::bkt", "FileExtension": ".x"}
        });
        let err = parse(&r, &Declared::default()).unwrap_err();
        assert!(err
            .to_string()
            .contains("FileExtension is not a field of S3DestinationConfiguration"));
    }
}
