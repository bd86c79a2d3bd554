//! hydrant's config file (YAML). Every field is documented here; this is
//! the reference the README points to.
//!
//! ```yaml
//! listen: 127.0.0.1:4577
//! data_dir: ./data
//! log:
//!   segment_mb: 64
//!   max_mb_per_stream: 10240
//! delivery_streams:
//!   - DeliveryStreamName: my-event-staging
//!     DeliveryStreamType: DirectPut
//!     ExtendedS3DestinationConfiguration:
//!       RoleARN: arn:aws:iam::123456789012:role/firehose
//!       BucketARN: arn:aws:s3:::data.staging.aws
//!       Prefix: events/my-event-staging/
//!       BufferingHints: { IntervalInSeconds: 300, SizeInMBs: 30 }
//!       CompressionFormat: UNCOMPRESSED
//! ```
//!
//! hydrant's own settings are snake_case with units in their names; a
//! delivery stream is written exactly as a CreateDeliveryStream request (the
//! names and meanings of the Firehose API and of CloudFormation's
//! `AWS::KinesisFirehose::DeliveryStream`), and is validated by the same code.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default port: unassigned to any well-known service.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:4577";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address and port to serve on. Default `127.0.0.1:4577`; `--listen` wins.
    pub listen: Option<String>,
    /// Where the logs, stream definitions and the embedded lake live.
    /// Default `./data`; `--data-dir` wins. Relative paths are relative to
    /// the directory hydrant runs in.
    pub data_dir: Option<PathBuf>,
    /// The write-ahead log.
    #[serde(default)]
    pub log: LogConfig,
    /// Delivery into the lake.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Buckets that live on an S3-compatible service rather than in the
    /// embedded lake, by bucket name (the NAME of `arn:aws:s3:::NAME`).
    /// Every other bucket is a directory under `<data_dir>/lake/`.
    #[serde(default)]
    pub buckets: std::collections::BTreeMap<String, crate::delivery::store::S3Bucket>,
    /// Tables a stream's DataFormatConversionConfiguration can name, as it
    /// names a Glue table (`SchemaConfiguration: {DatabaseName, TableName}`),
    /// keyed `database.table`: `{columns: [{Name, Type}]}` with Hive types,
    /// or `{infer_from_data: true}`.
    #[serde(default)]
    pub glue_tables: crate::spec::Catalog,
    /// Delivery streams, each written as a Firehose CreateDeliveryStream
    /// request. They are created at start, or updated if they exist.
    #[serde(default)]
    pub delivery_streams: Vec<serde_json::Value>,
    /// Continuous aggregates, by the name of the stream whose records feed
    /// them. Each entry is documented in `src/analytics/mod.rs`.
    #[serde(default)]
    pub aggregates: std::collections::BTreeMap<String, Vec<crate::analytics::AggregateConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A log segment is closed and a new one begun past this size (MiB).
    /// Delivered records are removed a whole segment at a time.
    pub segment_mb: u64,
    /// The most log (acknowledged but undelivered records) one stream may
    /// hold on disk (MiB). Past it, puts get ServiceUnavailableException
    /// (HTTP 503) until delivery catches up; nothing accepted is dropped.
    pub max_mb_per_stream: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_mb: 64,
            max_mb_per_stream: 10 * 1024,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// With dynamic partitioning, the most partitions one stream buffers at
    /// once (Firehose's default quota is 500). A record of a further
    /// partition goes to the error output (`processing-failed`, error code
    /// `DynamicPartitioning.ActivePartitionsLimitExceeded`) instead.
    pub max_active_partitions: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_active_partitions: 500,
        }
    }
}

impl LogConfig {
    pub fn options(&self) -> crate::log::LogOptions {
        crate::log::LogOptions {
            segment_bytes: self.segment_mb << 20,
            max_bytes: self.max_mb_per_stream << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: {err}")]
    Read { file: PathBuf, err: std::io::Error },
    #[error("config file {file}: {err}")]
    Parse { file: PathBuf, err: String },
    #[error("config file {file}: delivery_streams[{index}] ({name}): {err}")]
    Stream {
        file: PathBuf,
        index: usize,
        name: String,
        err: String,
    },
}

impl Config {
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|err| ConfigError::Read {
            file: file.into(),
            err,
        })?;
        Config::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            err: e.to_string(),
        })?;
        if config.delivery.max_active_partitions == 0 {
            return Err(ConfigError::Parse {
                file: file.into(),
                err: "delivery.max_active_partitions must be at least 1".into(),
            });
        }
        if config.log.segment_mb == 0 || config.log.max_mb_per_stream < config.log.segment_mb {
            return Err(ConfigError::Parse {
                file: file.into(),
                err: "log.segment_mb must be at least 1 and log.max_mb_per_stream at least log.segment_mb".into(),
            });
        }
        // Validate each stream now, so a mistake names the file and the entry.
        for (index, s) in config.delivery_streams.iter().enumerate() {
            if let Err(e) = crate::spec::parse(s, &config.glue_tables) {
                return Err(ConfigError::Stream {
                    file: file.into(),
                    index,
                    name: s["DeliveryStreamName"].as_str().unwrap_or("?").to_string(),
                    err: format!("{}: {}", e.code, e.message),
                });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs")
            .lines()
            .skip_while(|l| !l.starts_with("//! ```yaml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.strip_prefix("//! ").unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let c = Config::parse(Path::new("example.yaml"), &doc).unwrap();
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:4577"));
        assert_eq!(c.delivery_streams.len(), 1);
        assert_eq!(c.log.segment_mb, 64);
    }

    /// (config text, text the error must contain)
    const BAD: &[(&str, &str)] = &[
        ("lisen: x", "unknown field `lisen`"),
        ("log: {segment_mb: 0}", "segment_mb"),
        ("log: {segmnt_mb: 1}", "unknown field `segmnt_mb`"),
        (
            "delivery_streams: [{DeliveryStreamName: s, ExtendedS3DestinationConfiguration: {RoleARN: r, BucketARN: 'arn:aws:s3:::bkt', CompressionFormat: ZIP}}]",
            "delivery_streams[0] (s): InvalidArgumentException",
        ),
    ];

    #[test]
    fn errors_name_the_file_and_key() {
        for (text, want) in BAD {
            let err = Config::parse(Path::new("hydrant.yaml"), text)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("config file hydrant.yaml"), "{err}");
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }
}
