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
    pub buckets: std::collections::BTreeMap<String, crate::destination::lake::store::S3Bucket>,
    /// Tables a stream's DataFormatConversionConfiguration can name, as it
    /// names a Glue table (`SchemaConfiguration: {DatabaseName, TableName}`),
    /// keyed `database.table`: `{columns: [{Name, Type}]}` with Hive types,
    /// or `{infer_from_data: true}`.
    #[serde(default)]
    pub glue_tables: crate::spec::Catalog,
    /// hydrant's stand-in for AWS Secrets Manager: what a stream's
    /// `SecretsManagerConfiguration.SecretARN` names, keyed by that ARN:
    /// `{username, password}`, each value or the environment variable that
    /// holds it (`username_env`, `password_env`), so no password need sit
    /// in this file.
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, crate::spec::SecretConfig>,
    /// Delivery streams, each written as a Firehose CreateDeliveryStream
    /// request. They are created at start, or updated if they exist.
    #[serde(default)]
    pub delivery_streams: Vec<serde_json::Value>,
    /// Continuous aggregates, by the name of the stream whose records feed
    /// them. Each entry is documented in `src/analytics/mod.rs`.
    #[serde(default)]
    pub aggregates: std::collections::BTreeMap<String, Vec<crate::analytics::AggregateConfig>>,
    /// Limits of the HTTP server.
    #[serde(default)]
    pub http: HttpConfig,
    /// Limits of SQL over the lake (`POST /-/query`, `hydrant query`).
    #[serde(default)]
    pub query: QueryConfig,
    /// Who may call hydrant: access keys (AWS SigV4), the metrics token.
    #[serde(default)]
    pub auth: crate::api::auth::AuthConfig,
    /// Serve HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
    /// The file this was read from, for messages that name it.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// HTTPS: a certificate chain and its private key, both PEM files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate, followed by any intermediates.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The HTTP server's limits: what one client may hold, and for how long.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Time a client has to send a request's headers, counted from the
    /// moment hydrant waits for them: when the connection opens, or when
    /// the previous response on it was sent. So it is also how long an idle
    /// keep-alive connection is kept. The connection is closed past it.
    pub header_timeout_seconds: u64,
    /// Time a client has to send a request's whole body once its headers
    /// are in; past it the request gets 408 and the connection is closed.
    pub body_timeout_seconds: u64,
    /// Most connections open at once. A connection past it is answered 503
    /// (ServiceUnavailableException, which SDKs retry) and closed.
    pub max_connections: usize,
    /// Most bytes of request bodies over 64 KiB being read at once, across
    /// all connections. A request whose body does not fit (by its
    /// Content-Length, or the largest body for a chunked one) is answered 503
    /// without being read. Smaller bodies are bounded by `max_connections`.
    pub max_buffered_body_mb: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_seconds: 20,
            body_timeout_seconds: 60,
            max_connections: 512,
            max_buffered_body_mb: 256,
        }
    }
}

/// SQL's limits. A query runs on threads of its own at a lower CPU priority
/// than ingest, so that a heavy query slows only itself; past any limit it
/// fails with an error that names the limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Threads that run queries (planning and execution), apart from those
    /// that serve puts and fsyncs. Default 1.
    pub threads: usize,
    /// Memory all running queries may hold for sorts, joins and
    /// aggregations; past it such operators spill to disk where DataFusion
    /// can, else the query fails. Default 1024.
    pub memory_mb: usize,
    /// Longest a query may run. Default 60.
    pub timeout_seconds: u64,
    /// Most rows a result may have. Default 100000.
    pub max_result_rows: usize,
    /// Most bytes a result may hold in memory. Default 64.
    pub max_result_mb: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            threads: 1,
            memory_mb: 1024,
            timeout_seconds: 60,
            max_result_rows: 100_000,
            max_result_mb: 64,
        }
    }
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
    #[error("config file {file}: {key}: {err}")]
    Key {
        file: PathBuf,
        key: String,
        err: String,
    },
    #[error("config file {file}: delivery_streams[{index}] ({name}): {err}")]
    Stream {
        file: PathBuf,
        index: usize,
        name: String,
        err: String,
    },
}

impl Config {
    /// The Glue tables and secrets stream definitions may name, with every
    /// secret resolved (an unset environment variable is an error here).
    pub fn declared(&self) -> Result<crate::spec::Declared, String> {
        let mut secrets = crate::spec::Secrets::new();
        for (arn, s) in &self.secrets {
            if arn.is_empty() || arn.len() > 2048 {
                return Err("secrets: a SecretARN must be 1 to 2048 characters".to_string());
            }
            secrets.insert(
                arn.clone(),
                s.resolve().map_err(|e| format!("secrets.{arn}: {e}"))?,
            );
        }
        Ok(crate::spec::Declared {
            tables: self.glue_tables.clone(),
            secrets,
        })
    }

    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|err| ConfigError::Read {
            file: file.into(),
            err,
        })?;
        Config::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.into(),
            err: e.to_string(),
        })?;
        config.file = Some(file.into());
        let key = |key: String, err: String| ConfigError::Key {
            file: file.into(),
            key,
            err,
        };
        if let Some(listen) = &config.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                key(
                    "listen".into(),
                    format!("{listen:?} is not an address like 127.0.0.1:4577"),
                )
            })?;
        }
        let h = &config.http;
        for (name, v) in [
            (
                "http.header_timeout_seconds",
                h.header_timeout_seconds as usize,
            ),
            ("http.body_timeout_seconds", h.body_timeout_seconds as usize),
            ("http.max_connections", h.max_connections),
            ("http.max_buffered_body_mb", h.max_buffered_body_mb),
            ("query.threads", config.query.threads),
            ("query.memory_mb", config.query.memory_mb),
            (
                "query.timeout_seconds",
                config.query.timeout_seconds as usize,
            ),
            ("query.max_result_rows", config.query.max_result_rows),
            ("query.max_result_mb", config.query.max_result_mb),
        ] {
            if v == 0 {
                return Err(key(name.into(), "must be at least 1".into()));
            }
        }
        if h.max_buffered_body_mb < crate::api::MAX_BODY_BYTES >> 20 {
            return Err(key(
                "http.max_buffered_body_mb".into(),
                format!(
                    "must be at least {} (one request's largest body)",
                    crate::api::MAX_BODY_BYTES >> 20
                ),
            ));
        }
        // Types are checked when declared, not when a stream first uses them.
        for (name, table) in &config.glue_tables {
            table
                .validate()
                .map_err(|e| key(format!("glue_tables.{name}"), e))?;
        }
        // `auth` and `tls` are checked where they are built, in `server::start`.
        for (stream, list) in &config.aggregates {
            crate::analytics::validate_all(list)
                .map_err(|e| key(format!("aggregates.{stream}"), e.to_string()))?;
        }
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
        let declared = config.declared().map_err(|e| ConfigError::Parse {
            file: file.into(),
            err: e,
        })?;
        // Validate each stream now, so a mistake names the file and the entry.
        let mut names = std::collections::BTreeMap::new();
        for (index, s) in config.delivery_streams.iter().enumerate() {
            let name = s["DeliveryStreamName"].as_str().unwrap_or("?");
            if let Some(first) = names.insert(name, index) {
                return Err(ConfigError::Stream {
                    file: file.into(),
                    index,
                    name: name.to_string(),
                    err: format!(
                        "delivery stream {name} is declared twice (also delivery_streams[{first}])"
                    ),
                });
            }
            if let Err(e) = crate::spec::parse(s, &declared) {
                return Err(ConfigError::Stream {
                    file: file.into(),
                    index,
                    name: s["DeliveryStreamName"].as_str().unwrap_or("?").to_string(),
                    err: e.to_string(),
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
        ("listen: not-an-addr", "listen: \"not-an-addr\" is not an address"),
        ("http: {max_connections: 0}", "http.max_connections: must be at least 1"),
        ("query: {timeout_seconds: 0}", "query.timeout_seconds: must be at least 1"),
        ("query: {nope: 1}", "unknown field `nope`"),
        (
            "glue_tables: {db.t: {columns: [{Name: amount, Type: 'decimal(99,99)'}]}}",
            "glue_tables.db.t: column `amount`: decimal(99,99)",
        ),
        (
            "glue_tables: {db.t: {columns: [{Name: a, Type: 'int'}], infer_from_data: true}}",
            "glue_tables.db.t: ",
        ),
        (
            "aggregates: {s: [{name: 'bad name', window: {type: tumbling, size_seconds: 60}, measures: [{name: n, op: count}]}]}",
            "aggregates.s: ",
        ),
        (
            "delivery_streams: [{DeliveryStreamName: s, ExtendedS3DestinationConfiguration: {RoleARN: r, BucketARN: 'arn:aws:s3:::bkt'}}, {DeliveryStreamName: s, ExtendedS3DestinationConfiguration: {RoleARN: r, BucketARN: 'arn:aws:s3:::bkt'}}]",
            "delivery_streams[1] (s): delivery stream s is declared twice",
        ),
        (
            "delivery_streams: [{DeliveryStreamName: s, ExtendedS3DestinationConfiguration: {RoleARN: r, BucketARN: 'arn:aws:s3:::bkt', Prefix: \"!{timestamp:'..'}/x/\", ErrorOutputPrefix: 'e/!{firehose:error-output-type}/'}}]",
            "delivery_streams[0] (s): ExtendedS3DestinationConfiguration.Prefix: evaluates to",
        ),
        (
            "delivery_streams: [{DeliveryStreamName: s, ExtendedS3DestinationConfiguration: {RoleARN: r, BucketARN: 'arn:aws:s3:::bkt', CompressionFormat: ZIP}}]",
            "delivery_streams[0] (s): ExtendedS3DestinationConfiguration.CompressionFormat",
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
