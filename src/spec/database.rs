//! `DatabaseSourceConfiguration`: a database whose changes feed the stream
//! (`DeliveryStreamType: DatabaseAsSource`).
//!
//! The shape is Firehose's. Names are matched by Firehose's patterns: an
//! entry is a database (`shop`), a table (`shop.orders`) or a column
//! (`shop.orders.note`), and `*` stands for any run of characters within
//! one part. Credentials come from the config file's `secrets:`, named by
//! `SecretsManagerConfiguration.SecretARN`, as for the warehouse.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::{unsupported, Credentials, Secrets, SpecError};
// The same patterns as access keys' stream and action lists.
use crate::api::auth::glob;

const PATH: &str = "DatabaseSourceConfiguration.";
/// Bounds on the lists a user gives: enough for any real schema, and small
/// enough that matching every table against every pattern costs nothing.
pub const MAX_PATTERNS: usize = 256;
pub const MAX_NAME_BYTES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// MySQL 8 and MariaDB 10.x: the row-based binlog.
    MySql,
    /// PostgreSQL 10 and later: logical replication (pgoutput). Names are
    /// `schema.table` and `schema.table.column` in the one database
    /// `Databases` selects.
    Postgres,
}

/// A validated database source.
#[derive(Debug, Clone)]
pub struct DatabaseSpec {
    pub engine: Engine,
    pub host: String,
    pub port: u16,
    pub credentials: Credentials,
    pub databases: Filter,
    pub tables: Filter,
    pub columns: Filter,
    /// `database.table` to the columns that identify its rows, for tables
    /// without a primary key.
    pub surrogate_keys: BTreeMap<String, Vec<String>>,
    /// `database.table` where snapshot watermarks are written.
    pub watermark: (String, String),
}

/// Include and Exclude patterns over dotted names.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    include: Option<Vec<Vec<String>>>,
    exclude: Vec<Vec<String>>,
}

impl Filter {
    /// Whether `parts` (database, table, column: as many as the patterns
    /// have) is selected: included (everything is, with no Include list)
    /// and not excluded.
    pub fn selects(&self, parts: &[&str]) -> bool {
        let hit = |p: &Vec<String>| {
            p.len() == parts.len() && p.iter().zip(parts).all(|(p, n)| glob(p, n))
        };
        self.include.as_ref().is_none_or(|i| i.iter().any(hit)) && !self.exclude.iter().any(hit)
    }

    /// The one name an Include list of one plain name (no `*`) selects.
    pub fn literal(&self) -> Option<&str> {
        match self.include.as_deref() {
            Some([one]) if one.len() == 1 && !one[0].contains('*') && self.selects(&[&one[0]]) => {
                Some(&one[0])
            }
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DatabaseIn {
    #[serde(rename = "Type")]
    kind: Option<String>,
    endpoint: Option<String>,
    port: Option<i64>,
    #[serde(rename = "SSLMode")]
    ssl_mode: Option<String>,
    databases: Option<FilterIn>,
    tables: Option<FilterIn>,
    columns: Option<FilterIn>,
    surrogate_keys: Option<Vec<String>>,
    snapshot_watermark_table: Option<String>,
    database_source_authentication_configuration: Option<AuthIn>,
    #[serde(rename = "DatabaseSourceVPCConfiguration")]
    vpc: Option<VpcIn>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FilterIn {
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AuthIn {
    secrets_manager_configuration: Option<SecretIn>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SecretIn {
    #[serde(rename = "SecretARN")]
    secret_arn: Option<String>,
    #[serde(rename = "RoleARN")]
    role_arn: Option<String>,
    enabled: Option<bool>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct VpcIn {
    vpc_endpoint_service_name: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

/// A MySQL identifier as hydrant accepts it in a pattern: printable, no
/// dots or backquotes (hydrant quotes names itself), at most 64 bytes.
fn check_name(path: &str, name: &str, wildcard: bool) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name
            .chars()
            .all(|c| !c.is_control() && c != '.' && c != '`' && (wildcard || c != '*'));
    if ok {
        Ok(())
    } else {
        Err(SpecError::invalid(format!(
            "{path}: {name:?} is not a name hydrant accepts (1 to {MAX_NAME_BYTES} bytes, \
             no '.', '`' or control characters{})",
            if wildcard { "" } else { ", no '*'" }
        )))
    }
}

fn dotted(path: &str, s: &str, parts: usize, wildcard: bool) -> Result<Vec<String>, SpecError> {
    let split: Vec<String> = s.split('.').map(str::to_owned).collect();
    if split.len() != parts {
        let shape = [
            "database",
            "database.table (PostgreSQL: schema.table)",
            "database.table.column (PostgreSQL: schema.table.column)",
        ][parts - 1];
        return Err(SpecError::invalid(format!(
            "{path}: {s:?} must have the form {shape}"
        )));
    }
    for p in &split {
        check_name(path, p, wildcard)?;
    }
    Ok(split)
}

fn filter(
    field: &str,
    f: Option<FilterIn>,
    parts: usize,
    required: bool,
) -> Result<Filter, SpecError> {
    let path = format!("{PATH}{field}");
    let Some(f) = f else {
        if required {
            return Err(SpecError::invalid(format!("{path} is required")));
        }
        return Ok(Filter::default());
    };
    unsupported(&format!("{path}."), &f.other)?;
    let list =
        |which: &str, l: Option<Vec<String>>| -> Result<Option<Vec<Vec<String>>>, SpecError> {
            let Some(l) = l else { return Ok(None) };
            let p = format!("{path}.{which}");
            if l.len() > MAX_PATTERNS {
                return Err(SpecError::invalid(format!(
                    "{p} has {} entries; at most {MAX_PATTERNS}",
                    l.len()
                )));
            }
            l.iter()
                .map(|s| dotted(&p, s, parts, true))
                .collect::<Result<_, _>>()
                .map(Some)
        };
    let include = list("Include", f.include)?;
    let exclude = list("Exclude", f.exclude)?.unwrap_or_default();
    if required && include.as_ref().is_none_or(Vec::is_empty) {
        return Err(SpecError::invalid(format!(
            "{path}.Include is required: name what to capture (`*` matches any run of characters)"
        )));
    }
    Ok(Filter { include, exclude })
}

pub(super) fn parse(d: DatabaseIn, secrets: &Secrets) -> Result<DatabaseSpec, SpecError> {
    unsupported(PATH, &d.other)?;
    let engine = match d.kind.as_deref() {
        Some("MySQL") => Engine::MySql,
        Some("PostgreSQL") => Engine::Postgres,
        Some(t) => {
            return Err(SpecError::invalid(format!(
                "{PATH}Type {t:?} is not one of MySQL, PostgreSQL"
            )))
        }
        None => return Err(SpecError::invalid(format!("{PATH}Type is required"))),
    };
    let host = d
        .endpoint
        .ok_or_else(|| SpecError::invalid(format!("{PATH}Endpoint is required")))?;
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:_".contains(&b));
    if !host_ok {
        return Err(SpecError::invalid(format!(
            "{PATH}Endpoint {host:?} must be a host name or an IP address"
        )));
    }
    let port = match d.port {
        Some(p @ 1..=65535) => p as u16,
        Some(p) => {
            return Err(SpecError::invalid(format!(
                "{PATH}Port is {p}; it must be 1 to 65535"
            )))
        }
        None => return Err(SpecError::invalid(format!("{PATH}Port is required"))),
    };
    match d.ssl_mode.as_deref() {
        None | Some("Disabled") => {}
        Some("Enabled") => {
            return Err(SpecError::refused(format!(
                "{PATH}SSLMode Enabled is not supported by hydrant yet: it connects without TLS; \
                 use Disabled on a trusted network"
            )))
        }
        Some(m) => {
            return Err(SpecError::invalid(format!(
                "{PATH}SSLMode {m:?} is not one of Disabled, Enabled"
            )))
        }
    }
    let databases = filter("Databases", d.databases, 1, true)?;
    let tables = filter("Tables", d.tables, 2, true)?;
    let columns = filter("Columns", d.columns, 3, false)?;
    let mut surrogate_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let keys = d.surrogate_keys.unwrap_or_default();
    if keys.len() > MAX_PATTERNS {
        return Err(SpecError::invalid(format!(
            "{PATH}SurrogateKeys has {} entries; at most {MAX_PATTERNS}",
            keys.len()
        )));
    }
    for k in &keys {
        let p = dotted(&format!("{PATH}SurrogateKeys"), k, 3, false)?;
        let cols = surrogate_keys
            .entry(format!("{}.{}", p[0], p[1]))
            .or_default();
        if cols.contains(&p[2]) {
            return Err(SpecError::invalid(format!(
                "{PATH}SurrogateKeys names {k} twice"
            )));
        }
        cols.push(p[2].clone());
    }
    let wm = d.snapshot_watermark_table.ok_or_else(|| {
        SpecError::invalid(format!(
            "{PATH}SnapshotWatermarkTable is required: a table (database.table) hydrant may create and \
             write its snapshot watermarks to"
        ))
    })?;
    let wm = dotted(&format!("{PATH}SnapshotWatermarkTable"), &wm, 2, false)?;
    let watermark = (wm[0].clone(), wm[1].clone());
    // MySQL's watermark table is database.table; PostgreSQL's schema.table
    // in the captured database.
    let captured = match engine {
        Engine::MySql => databases.selects(&[&watermark.0]),
        Engine::Postgres => true,
    };
    if tables.selects(&[&watermark.0, &watermark.1]) && captured {
        return Err(SpecError::refused(format!(
            "{PATH}SnapshotWatermarkTable {}.{} is among the captured tables; exclude it in Tables.Exclude",
            watermark.0, watermark.1
        )));
    }

    let ap = format!("{PATH}DatabaseSourceAuthenticationConfiguration");
    let auth = d
        .database_source_authentication_configuration
        .ok_or_else(|| SpecError::invalid(format!("{ap} is required")))?;
    unsupported(&format!("{ap}."), &auth.other)?;
    let sp = format!("{ap}.SecretsManagerConfiguration");
    let secret = auth
        .secrets_manager_configuration
        .ok_or_else(|| SpecError::invalid(format!("{sp} is required")))?;
    unsupported(&format!("{sp}."), &secret.other)?;
    let _ = &secret.role_arn;
    if secret.enabled != Some(true) {
        return Err(SpecError::invalid(format!(
            "{sp}.Enabled must be true: the secret is how hydrant signs in to the database"
        )));
    }
    let arn = secret
        .secret_arn
        .ok_or_else(|| SpecError::invalid(format!("{sp}.SecretARN is required")))?;
    let credentials = secrets.get(&arn).cloned().ok_or_else(|| {
        SpecError::refused(format!(
            "{sp}.SecretARN {arn:?} is not a secret hydrant knows: declare it under `secrets:` \
             in the config file ({{username, password}} or their _env variables)"
        ))
    })?;
    let vp = format!("{PATH}DatabaseSourceVPCConfiguration");
    let vpc = d
        .vpc
        .ok_or_else(|| SpecError::invalid(format!("{vp} is required")))?;
    unsupported(&format!("{vp}."), &vpc.other)?;
    if vpc.vpc_endpoint_service_name.is_none() {
        return Err(SpecError::invalid(format!(
            "{vp}.VpcEndpointServiceName is required"
        )));
    }
    Ok(DatabaseSpec {
        engine,
        host,
        port,
        credentials,
        databases,
        tables,
        columns,
        surrogate_keys,
        watermark,
    })
}

#[cfg(test)]
mod tests {
    use crate::api::auth::glob;

    #[test]
    fn patterns_match_like_firehose_wildcards() {
        assert!(glob("shop", "shop"));
        assert!(!glob("shop", "shops"));
        assert!(glob("*", ""));
        assert!(glob("ord*", "orders"));
        assert!(glob("*ers", "orders"));
        assert!(glob("o*d*s", "orders"));
        assert!(!glob("o*x*s", "orders"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("a*a", "aa"));
    }
}

#[cfg(test)]
mod refusals {
    use serde_json::{json, Value};

    use crate::spec::{parse, Credentials, Declared, SpecError};

    const ARN: &str = "arn:aws:secretsmanager:eu-west-1:1:secret:db";

    fn request() -> Value {
        json!({
            "DeliveryStreamName": "cdc",
            "DeliveryStreamType": "DatabaseAsSource",
            "DatabaseSourceConfiguration": {
                "Type": "MySQL", "Endpoint": "db.internal", "Port": 3306,
                "Databases": {"Include": ["shop"]},
                "Tables": {"Include": ["shop.*"], "Exclude": ["shop.tmp_*"]},
                "Columns": {"Exclude": ["shop.users.pw"]},
                "SurrogateKeys": ["shop.audit.a", "shop.audit.b"],
                "SnapshotWatermarkTable": "meta.wm",
                "DatabaseSourceAuthenticationConfiguration": {
                    "SecretsManagerConfiguration": {"SecretARN": ARN, "Enabled": true}
                },
                "DatabaseSourceVPCConfiguration": {"VpcEndpointServiceName": "svc"}
            },
            "ExtendedS3DestinationConfiguration": {
                "RoleARN": "arn:aws:iam::1:role/r", "BucketARN": "arn:aws:s3:::lake"
            }
        })
    }

    fn declared() -> Declared {
        let mut d = Declared::default();
        d.secrets.insert(
            ARN.into(),
            Credentials {
                username: "u".into(),
                password: crate::spec::redshift::Password("p".into()),
            },
        );
        d
    }

    #[test]
    fn the_firehose_shape_parses() {
        let s = parse(&request(), &declared()).unwrap();
        let db = s.source.unwrap();
        assert_eq!((db.host.as_str(), db.port), ("db.internal", 3306));
        assert!(db.tables.selects(&["shop", "orders"]));
        assert!(!db.tables.selects(&["shop", "tmp_x"]));
        assert!(!db.columns.selects(&["shop", "users", "pw"]));
        assert!(db.columns.selects(&["shop", "users", "email"]));
        assert_eq!(db.surrogate_keys["shop.audit"], ["a", "b"]);
        assert_eq!(db.watermark, ("meta".into(), "wm".into()));
    }

    #[test]
    fn postgresql_names_schemas_and_tables_in_one_database() {
        let mut r = request();
        let db = &mut r["DatabaseSourceConfiguration"];
        db["Type"] = json!("PostgreSQL");
        db["Port"] = json!(5432);
        db["Tables"] = json!({"Include": ["public.*"]});
        db["Columns"] = json!({"Exclude": ["public.users.pw"]});
        db["SurrogateKeys"] = json!([]);
        // The same schema.table as the captured ones: refused as for MySQL,
        // whatever the database is called.
        db["SnapshotWatermarkTable"] = json!("public.wm");
        let e = parse(&r, &declared()).unwrap_err().to_string();
        assert!(e.contains("among the captured"), "{e}");
        r["DatabaseSourceConfiguration"]["SnapshotWatermarkTable"] = json!("hydrant_meta.wm");
        let s = parse(&r, &declared()).unwrap().source.unwrap();
        assert_eq!(s.engine, crate::spec::database::Engine::Postgres);
        assert_eq!(s.databases.literal(), Some("shop"));
        assert!(s.tables.selects(&["public", "orders"]));
        assert!(!s.columns.selects(&["public", "users", "pw"]));
        r["DatabaseSourceConfiguration"]["Databases"] = json!({"Include": ["shop*"]});
        let s = parse(&r, &declared()).unwrap().source.unwrap();
        assert_eq!(s.databases.literal(), None);
    }

    #[test]
    fn what_hydrant_cannot_do_is_refused_by_name() {
        let cases: &[(&str, Value, &str)] = &[
            ("/DatabaseSourceConfiguration/Type", json!("Oracle"), "Type"),
            ("/DatabaseSourceConfiguration/SSLMode", json!("Enabled"), "SSLMode"),
            ("/DatabaseSourceConfiguration/Port", json!(0), "Port"),
            ("/DatabaseSourceConfiguration/Endpoint", json!("a b"), "Endpoint"),
            ("/DatabaseSourceConfiguration/Tables/Include", json!(["shop"]), "database.table"),
            ("/DatabaseSourceConfiguration/Tables/Include", json!([]), "Tables.Include"),
            ("/DatabaseSourceConfiguration/Tables/Include", json!(["shop.a`b"]), "Tables.Include"),
            ("/DatabaseSourceConfiguration/SurrogateKeys", json!(["shop.t.*"]), "SurrogateKeys"),
            ("/DatabaseSourceConfiguration/SnapshotWatermarkTable", json!("shop.wm"), "among the captured"),
            ("/DatabaseSourceConfiguration/Extra", json!(1), "Extra"),
            (
                "/DatabaseSourceConfiguration/DatabaseSourceAuthenticationConfiguration/SecretsManagerConfiguration/SecretARN",
                json!("arn:unknown"),
                "secrets:",
            ),
            ("/DeliveryStreamType", json!("DirectPut"), "DatabaseSourceConfiguration"),
        ];
        for (pointer, value, needle) in cases {
            let mut r = request();
            let (parent, field) = pointer.rsplit_once('/').unwrap();
            r.pointer_mut(parent).unwrap()[field] = value.clone();
            let e = parse(&r, &declared()).unwrap_err();
            let m = match &e {
                SpecError::Malformed(m) | SpecError::Invalid(m) | SpecError::Refused(m) => m,
            };
            assert!(m.contains(needle), "{pointer}={value}: {m}");
        }
        for missing in [
            "SnapshotWatermarkTable",
            "DatabaseSourceVPCConfiguration",
            "Databases",
            "Port",
        ] {
            let mut r = request();
            r["DatabaseSourceConfiguration"]
                .as_object_mut()
                .unwrap()
                .remove(missing);
            let e = parse(&r, &declared()).unwrap_err();
            assert!(
                matches!(e, SpecError::Invalid(ref m) if m.contains(missing)),
                "{missing}: {e}"
            );
        }
        let mut r = request();
        r["DatabaseSourceConfiguration"]["Tables"]["Include"] =
            json!(vec!["shop.t"; super::MAX_PATTERNS + 1]);
        assert!(parse(&r, &declared()).is_err());
    }

    #[test]
    fn a_mirror_names_a_schema_and_takes_change_records_only() {
        let mirror = |copy: Value| {
            let mut r = request();
            r.as_object_mut()
                .unwrap()
                .remove("ExtendedS3DestinationConfiguration");
            r["RedshiftDestinationConfiguration"] = json!({
                "RoleARN": "arn:aws:iam::1:role/r",
                "ClusterJDBCURL": "jdbc:postgresql://127.0.0.1:5432/test",
                "CopyCommand": copy,
                "Username": "u", "Password": "p",
                "S3Configuration": {"RoleARN": "arn:aws:iam::1:role/r", "BucketARN": "arn:aws:s3:::lake"}
            });
            parse(&r, &declared())
        };
        let s = mirror(json!({"DataTableName": "mirror", "CopyOptions": "JSON 'auto'"})).unwrap();
        assert_eq!(s.warehouse.unwrap().table.table, "mirror");
        for (copy, needle) in [
            (
                json!({"DataTableName": "a.b", "CopyOptions": "JSON 'auto'"}),
                "schema",
            ),
            (
                json!({"DataTableName": "m", "DataTableColumns": "a,b", "CopyOptions": "JSON 'auto'"}),
                "DataTableColumns",
            ),
            (
                json!({"DataTableName": "m", "CopyOptions": "CSV"}),
                "JSON 'auto'",
            ),
            (
                json!({"DataTableName": "m", "CopyOptions": "JSON 'auto ignorecase'"}),
                "JSON 'auto'",
            ),
        ] {
            let e = mirror(copy.clone()).unwrap_err().to_string();
            assert!(e.contains(needle), "{copy}: {e}");
        }
    }
}
