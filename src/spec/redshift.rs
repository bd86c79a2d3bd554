//! `RedshiftDestinationConfiguration`: the warehouse a stream loads into.
//!
//! Records are staged as objects in `S3Configuration`'s bucket (an
//! S3DestinationConfiguration, parsed like any other), then each object is
//! loaded into `CopyCommand.DataTableName` (see `destination::warehouse`).
//! The password comes from `Password`, or from the config file's `secrets:`
//! when `SecretsManagerConfiguration` names one; it is never echoed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use super::{unsupported, Compression, SpecError};
use crate::delivery::prefix::{self, Template};
use crate::destination::warehouse::copy::{self, CopyOptions};
use crate::destination::warehouse::jdbc::Target;
use crate::destination::warehouse::load::TableName;

/// Firehose's bounds and default for RetryOptions.DurationInSeconds.
pub const MAX_RETRY_SECONDS: i64 = 7200;
pub const DEFAULT_RETRY_SECONDS: u32 = 3600;
/// Longest user name or column list taken.
const MAX_NAME_BYTES: usize = 128;
const MAX_COLUMNS_BYTES: usize = 204_800;

/// A password: kept out of Debug output and logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// What Secrets Manager would hold for a secret: a user and its password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
}

/// The config file's `secrets:`, resolved: SecretARN to credentials.
pub type Secrets = BTreeMap<String, Credentials>;

/// A secret as the config file declares it; each value, or the
/// environment variable (`…_env`) that holds it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretConfig {
    pub username: Option<String>,
    pub username_env: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

impl SecretConfig {
    pub fn resolve(&self) -> Result<Credentials, String> {
        let pick = |name: &str, v: &Option<String>, env: &Option<String>| match (v, env) {
            (Some(v), None) => Ok(v.clone()),
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| format!("{name}_env: the environment variable {var} is not set")),
            _ => Err(format!("give {name} or {name}_env (one of them)")),
        };
        Ok(Credentials {
            username: pick("username", &self.username, &self.username_env)?,
            password: Password(pick("password", &self.password, &self.password_env)?),
        })
    }
}

/// Where S3BackupMode Enabled copies each staged object.
#[derive(Debug, Clone)]
pub struct Backup {
    pub bucket: String,
    pub prefix: Template,
    pub compression: Compression,
}

/// A warehouse destination, validated.
#[derive(Debug, Clone)]
pub struct WarehouseSpec {
    pub target: Target,
    pub credentials: Credentials,
    pub table: TableName,
    /// DataTableColumns; `None`: every column of the table, in order.
    pub columns: Option<Vec<String>>,
    pub copy: CopyOptions,
    pub retry_seconds: u32,
    pub backup: Option<Backup>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RedshiftIn {
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    #[serde(rename = "ClusterJDBCURL")]
    cluster_jdbc_url: Option<String>,
    copy_command: Option<CopyCommand>,
    username: Option<String>,
    password: Option<String>,
    retry_options: Option<RetryOptions>,
    pub(super) s3_configuration: Option<Value>,
    pub(super) processing_configuration: Option<Value>,
    #[serde(rename = "S3BackupMode")]
    s3_backup_mode: Option<String>,
    #[serde(rename = "S3BackupConfiguration")]
    s3_backup_configuration: Option<Value>,
    pub(super) cloud_watch_logging_options: Option<Value>,
    secrets_manager_configuration: Option<SecretsManager>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CopyCommand {
    data_table_name: Option<String>,
    data_table_columns: Option<String>,
    copy_options: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RetryOptions {
    duration_in_seconds: Option<i64>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SecretsManager {
    enabled: Option<bool>,
    #[serde(rename = "SecretARN")]
    secret_arn: Option<String>,
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

const PATH: &str = "RedshiftDestinationConfiguration.";

/// Checks everything of the Redshift destination but its S3Configuration
/// (which the caller parses as the staging place, then hands back with
/// `staging` so the two can be checked together).
pub(super) fn parse(
    r: &RedshiftIn,
    secrets: &Secrets,
    staging_compression: Compression,
    parse_backup: impl FnOnce(&Value) -> Result<(String, String, Compression), SpecError>,
) -> Result<WarehouseSpec, SpecError> {
    unsupported(PATH, &r.other)?;
    if r.role_arn.is_none() {
        return Err(SpecError::invalid(format!("{PATH}RoleARN is required")));
    }
    let url = r
        .cluster_jdbc_url
        .as_deref()
        .ok_or_else(|| SpecError::invalid(format!("{PATH}ClusterJDBCURL is required")))?;
    let target = Target::parse(url).map_err(|e| SpecError::refused(format!("{PATH}{e}")))?;

    let secret = match &r.secrets_manager_configuration {
        None => None,
        Some(s) => {
            let sp = format!("{PATH}SecretsManagerConfiguration.");
            unsupported(&sp, &s.other)?;
            let _ = &s.role_arn;
            match (s.enabled, &s.secret_arn) {
                (Some(true), Some(arn)) => Some(secrets.get(arn).cloned().ok_or_else(|| {
                    SpecError::refused(format!(
                        "{sp}SecretARN {arn:?} is not a secret hydrant knows: declare it under `secrets:` \
                         in the config file ({{username, password}} or their _env variables)"
                    ))
                })?),
                (Some(true), None) => {
                    return Err(SpecError::invalid(format!(
                        "{sp}SecretARN is required when Enabled is true"
                    )))
                }
                (None, _) => {
                    return Err(SpecError::invalid(format!("{sp}Enabled is required")))
                }
                (Some(false), _) => None,
            }
        }
    };
    let credentials = match (secret, &r.username, &r.password) {
        (Some(c), None, None) => c,
        (Some(_), _, _) => {
            return Err(SpecError::refused(format!(
                "{PATH}Username and Password must not be given with SecretsManagerConfiguration; \
                 the secret holds them"
            )))
        }
        (None, Some(u), Some(p)) => {
            if u.is_empty() || u.len() > MAX_NAME_BYTES || p.len() > 1024 {
                return Err(SpecError::invalid(format!(
                    "{PATH}Username must be 1 to {MAX_NAME_BYTES} characters and Password at most 1024"
                )));
            }
            Credentials {
                username: u.clone(),
                password: Password(p.clone()),
            }
        }
        (None, _, _) => {
            return Err(SpecError::refused(format!(
                "{PATH}Username and Password are required (or SecretsManagerConfiguration with Enabled: true)"
            )))
        }
    };

    let cc = r
        .copy_command
        .as_ref()
        .ok_or_else(|| SpecError::invalid(format!("{PATH}CopyCommand is required")))?;
    let cp = format!("{PATH}CopyCommand.");
    unsupported(&cp, &cc.other)?;
    let table_name = cc
        .data_table_name
        .as_deref()
        .ok_or_else(|| SpecError::invalid(format!("{cp}DataTableName is required")))?;
    let table = TableName::parse(table_name).map_err(|e| SpecError::refused(format!("{cp}{e}")))?;
    let columns = match cc.data_table_columns.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(list) => {
            if list.len() > MAX_COLUMNS_BYTES {
                return Err(SpecError::invalid(format!(
                    "{cp}DataTableColumns is longer than {MAX_COLUMNS_BYTES} characters"
                )));
            }
            let names: Vec<String> = list.split(',').map(|c| c.trim().to_string()).collect();
            for n in &names {
                TableName::parse(n)
                    .ok()
                    .filter(|t| !n.contains('.') && t.table == n.to_ascii_lowercase())
                    .ok_or_else(|| {
                        SpecError::refused(format!(
                            "{cp}DataTableColumns: {n:?} is not a column name (1 to 63 letters, digits, '_' or '$')"
                        ))
                    })?;
            }
            let mut seen = std::collections::BTreeSet::new();
            if let Some(d) = names.iter().find(|n| !seen.insert(n.to_ascii_lowercase())) {
                return Err(SpecError::refused(format!(
                    "{cp}DataTableColumns names {d} twice"
                )));
            }
            Some(names)
        }
    };
    let copy = CopyOptions::parse(cc.copy_options.as_deref().unwrap_or(""))
        .map_err(|e| SpecError::refused(format!("{cp}CopyOptions {e}")))?;
    let expected = match staging_compression {
        Compression::Uncompressed => Some(copy::Compression::None),
        Compression::Gzip => Some(copy::Compression::Gzip),
        Compression::Zstd => Some(copy::Compression::Zstd),
        Compression::Snappy => None,
    };
    match expected {
        None => {
            return Err(SpecError::refused(format!(
                "{PATH}S3Configuration.CompressionFormat Snappy cannot be loaded by COPY; \
                 use UNCOMPRESSED, GZIP or ZSTD"
            )))
        }
        Some(c) if c != copy.compression => {
            return Err(SpecError::refused(format!(
                "{cp}CopyOptions must say {} to match S3Configuration.CompressionFormat {} \
                 (COPY reads the staged objects as they are compressed)",
                match c {
                    copy::Compression::None => "neither GZIP nor ZSTD",
                    copy::Compression::Gzip => "GZIP",
                    copy::Compression::Zstd => "ZSTD",
                },
                staging_compression.as_str()
            )))
        }
        Some(_) => {}
    }

    let retry_seconds = match &r.retry_options {
        None => DEFAULT_RETRY_SECONDS,
        Some(o) => {
            unsupported(&format!("{PATH}RetryOptions."), &o.other)?;
            match o.duration_in_seconds {
                None => DEFAULT_RETRY_SECONDS,
                Some(s) if (0..=MAX_RETRY_SECONDS).contains(&s) => s as u32,
                Some(s) => {
                    return Err(SpecError::invalid(format!(
                        "{PATH}RetryOptions.DurationInSeconds is {s}; it must be 0 to {MAX_RETRY_SECONDS}"
                    )))
                }
            }
        }
    };

    let backup = match (r.s3_backup_mode.as_deref(), &r.s3_backup_configuration) {
        (None | Some("Disabled"), None) => None,
        (None | Some("Disabled"), Some(_)) => {
            return Err(SpecError::refused(format!(
                "{PATH}S3BackupConfiguration is given but S3BackupMode is not Enabled"
            )))
        }
        (Some("Enabled"), None) => {
            return Err(SpecError::invalid(format!(
                "{PATH}S3BackupMode Enabled needs S3BackupConfiguration"
            )))
        }
        (Some("Enabled"), Some(b)) => {
            let bp = format!("{PATH}S3BackupConfiguration.");
            for field in ["BufferingHints", "ErrorOutputPrefix"] {
                if b.get(field).is_some() {
                    return Err(SpecError::refused(format!(
                        "{bp}{field} is not supported by hydrant: each staged object is backed up \
                         as it is staged (same buffering), and a backup has no error output"
                    )));
                }
            }
            let (bucket, prefix_text, compression) = parse_backup(b)?;
            let prefix = Template::parse(&prefix_text, prefix::Kind::Prefix)
                .map_err(|e| SpecError::refused(format!("{bp}{e}")))?;
            Some(Backup {
                bucket,
                prefix,
                compression,
            })
        }
        (Some(m), _) => {
            return Err(SpecError::invalid(format!(
                "{PATH}S3BackupMode {m:?} is not one of Disabled, Enabled"
            )))
        }
    };
    Ok(WarehouseSpec {
        target,
        credentials,
        table,
        columns,
        copy,
        retry_seconds,
        backup,
    })
}

/// The Describe shape of a Redshift destination: what was set, as it was
/// set, with defaults filled in and the password left out.
pub fn description(given: &Value, staging: Value, backup: Option<Value>) -> Value {
    let mut d = given.clone();
    if let Some(o) = d.as_object_mut() {
        o.remove("Password");
        o.remove("S3Configuration");
        o.remove("S3BackupConfiguration");
        o.entry("RetryOptions")
            .or_insert_with(|| serde_json::json!({ "DurationInSeconds": DEFAULT_RETRY_SECONDS }));
        o.entry("S3BackupMode")
            .or_insert_with(|| Value::from("Disabled"));
        o.entry("CloudWatchLoggingOptions")
            .or_insert_with(|| serde_json::json!({ "Enabled": false }));
        o.insert("S3DestinationDescription".into(), staging);
        if let Some(b) = backup {
            o.insert("S3BackupDescription".into(), b);
        }
    }
    d
}
