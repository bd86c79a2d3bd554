//! Change data capture from PostgreSQL: a snapshot, then logical
//! replication (`pgoutput`) from a slot hydrant owns.
//!
//! # What hydrant creates on the source
//!
//! A publication and a logical replication slot, both named
//! [`slot_name`] after the stream, in the one database `Databases`
//! selects (a slot belongs to one database). The publication lists the
//! captured tables and the watermark table; it is created before the slot,
//! because pgoutput reads publications as of each change's position and
//! fails on one that did not exist yet. DeleteDeliveryStream drops both,
//! so a deleted stream never pins the server's WAL.
//!
//! A partitioned table is published as itself, so the server publishes
//! its partitions, later ones included, each under its own relation; the
//! reader takes a partition's changes as its topmost captured ancestor's
//! (`pg_partition_ancestors`). `publish_via_partition_root` would name the
//! ancestor for it, but would also drop a partition's TRUNCATE unseen.
//!
//! # Snapshot without locks (DBLog's watermarks)
//!
//! As for MySQL (see `mysql`): each table is read in primary-key chunks on
//! an ordinary connection, each chunk between a low and a high watermark
//! write, and the chunk's rows are appended where the high watermark
//! appears in the stream, less the rows changed meanwhile. PostgreSQL adds
//! one subtlety: a transaction's commit record can precede the low
//! watermark in the WAL while the transaction is still invisible to the
//! chunk's SELECT (it becomes visible a moment after its commit record is
//! written). So the chunk is read in a REPEATABLE READ transaction whose
//! snapshot (`pg_current_snapshot()`) is kept with it, and a change makes a
//! chunk row stale if it comes after the low watermark *or* its
//! transaction is invisible to that snapshot.
//!
//! # Positions and exactly once
//!
//! Producer marks as for MySQL: `wal`, `{"lsn": L, "epoch": E}`, where L
//! is the end of the last commit record whose transaction is appended;
//! `snapshot:<schema>.<table>`, the key text after which a table's
//! snapshot goes on, or that it is done. A restart streams the slot from
//! L: the server sends exactly the transactions whose commit record starts
//! at or after L. The slot is told (standby status updates) only what is
//! durable in the log, so the server keeps every WAL record hydrant may
//! still need, and releases the rest.
//!
//! # Values
//!
//! Tuples arrive in PostgreSQL's text form and snapshot rows are read with
//! the simple query protocol, so both are text and go through one mapping
//! (`value`). Every captured table must have REPLICA IDENTITY FULL: only
//! then does the stream carry whole `before` images, and the old values
//! of TOASTed columns an update did not touch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::{
    envelope, flush_due, now_ms, watermarks, Change, Ctx, Origin, Position, SnapshotStatus,
    SourceError, CHUNK_ROWS, CONNECT_TIMEOUT, IDLE_MARK,
};
use crate::destination::warehouse::mirror::{write_defs, ColumnDef, TableDef, TableDefs};
use crate::spec::database::DatabaseSpec;
use crate::stream::Batch;

pub mod pgoutput;
pub mod value;
pub mod wire;

use pgoutput::{Datum, Message, Old};
use value::{to_json, Kind};
use wire::{Event, Login, Replication, WireError, PG_EPOCH_US};

pub(super) const WAL: &str = "wal";
/// How often the slot hears from hydrant at the least (the server ends a
/// replication connection it has not heard from in wal_sender_timeout,
/// 60 s by default).
const STATUS_EVERY: Duration = Duration::from_secs(10);
/// Nothing from the server for this long: append what is waiting.
const IDLE_AFTER: Duration = Duration::from_millis(2);
/// How often hydrant looks for new tables that match.
const REDISCOVER_EVERY: Duration = Duration::from_secs(10);

/// The slot's and the publication's name for a stream: PostgreSQL's
/// rules (lower case, digits, `_`, at most 63 bytes), unique per stream
/// name by a hash of it.
pub fn slot_name(stream: &str) -> String {
    let clean: String = stream
        .chars()
        .take(40)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '_',
        })
        .collect();
    format!("hydrant_{clean}_{:08x}", crc32c::crc32c(stream.as_bytes()))
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn snapshot_producer(schema: &str, table: &str) -> String {
    format!("snapshot:{schema}.{table}")
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    Some(u64::from_str_radix(hi, 16).ok()? << 32 | u64::from_str_radix(lo, 16).ok()?)
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn db_error(what: &str) -> impl Fn(tokio_postgres::Error) -> SourceError + '_ {
    move |e| {
        SourceError::Retry(match e.as_db_error() {
            Some(d) => format!("{what}: {}", d.message()),
            None => format!("{what}: {e}"),
        })
    }
}

/// A selected table, as the catalog has it now.
#[derive(Debug)]
pub struct Table {
    pub schema: Arc<str>,
    pub name: Arc<str>,
    pub columns: Vec<Column>,
    /// The columns that identify a row (primary key or SurrogateKeys).
    pub key: Vec<usize>,
    pub estimated_rows: u64,
    /// A partitioned table, captured whole: its partitions' changes are
    /// taken as its own.
    pub partitioned: bool,
}

#[derive(Debug)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// `format_type` of the column, to compare key values as their type.
    pub sql_type: String,
    pub selected: bool,
}

impl Table {
    fn dotted(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn image(&self, values: &[Json]) -> Json {
        let mut m = serde_json::Map::new();
        for (c, v) in self.columns.iter().zip(values) {
            if c.selected {
                m.insert(c.name.clone(), v.clone());
            }
        }
        Json::Object(m)
    }

    fn key(&self, values: &[Json]) -> Json {
        let mut m = serde_json::Map::new();
        for &i in &self.key {
            m.insert(self.columns[i].name.clone(), values[i].clone());
        }
        Json::Object(m)
    }

    fn def(&self) -> TableDef {
        TableDef {
            columns: self
                .columns
                .iter()
                .filter(|c| c.selected)
                .map(|c| ColumnDef {
                    name: c.name.clone(),
                    kind: c.kind.portable().to_string(),
                })
                .collect(),
            key: self
                .key
                .iter()
                .map(|&i| self.columns[i].name.clone())
                .collect(),
        }
    }
}

fn login<'a>(spec: &'a DatabaseSpec, database: &'a str) -> Login<'a> {
    Login {
        host: &spec.host,
        port: spec.port,
        user: &spec.credentials.username,
        password: &spec.credentials.password.0,
        database,
        settings: value::SESSION_SETTINGS,
        timeout: CONNECT_TIMEOUT,
    }
}

async fn client(spec: &DatabaseSpec, database: &str) -> Result<Client, SourceError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&spec.host)
        .port(spec.port)
        .user(&spec.credentials.username)
        .password(&spec.credentials.password.0)
        .dbname(database)
        .application_name("hydrant")
        .options(&value::session_options())
        .connect_timeout(CONNECT_TIMEOUT);
    let at = format!("{}:{}", spec.host, spec.port);
    let (client, connection) = config.connect(NoTls).await.map_err(|e| {
        SourceError::Retry(match e.as_db_error() {
            Some(d) => format!("connecting to {at}: {}", d.message()),
            None => format!("connecting to {at}: {e}"),
        })
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "source connection ended");
        }
    });
    Ok(client)
}

/// The one database `Databases` selects: a literal name as it is, a
/// pattern matched against the server's databases.
async fn database(spec: &DatabaseSpec) -> Result<String, SourceError> {
    if let Some(name) = spec.databases.literal() {
        return Ok(name.to_owned());
    }
    let c = client(spec, "postgres").await?;
    let names: Vec<String> = c
        .query(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1",
            &[],
        )
        .await
        .map_err(db_error("listing the server's databases"))?
        .iter()
        .map(|r| r.get(0))
        .filter(|n: &String| spec.databases.selects(&[n]))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(SourceError::Retry(
            "no database matches Databases (Include, less Exclude)".into(),
        )),
        many => Err(SourceError::Retry(format!(
            "Databases matches {}: a PostgreSQL stream reads one database (a replication slot \
             belongs to one); name it in Databases.Include",
            many.join(", ")
        ))),
    }
}

/// What change data capture needs of the server and the user. Err says
/// what to change.
async fn check_server(c: &Client, free_slot: bool) -> Result<(), SourceError> {
    let row = c
        .query_one(
            "SELECT current_setting('wal_level'), r.rolreplication OR r.rolsuper, current_user::text, \
                    current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int \
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(db_error("reading the server's settings"))?;
    let (wal_level, replication, user, free): (String, bool, String, i32) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if wal_level != "logical" {
        return Err(SourceError::Retry(format!(
            "wal_level is {wal_level}: change data capture needs wal_level=logical \
             (ALTER SYSTEM SET wal_level = logical, then restart PostgreSQL)"
        )));
    }
    if !replication {
        return Err(SourceError::Retry(format!(
            "the user {user} needs the REPLICATION attribute to read changes (ALTER ROLE {} REPLICATION)",
            ident(&user)
        )));
    }
    if free_slot && free <= 0 {
        return Err(SourceError::Retry(
            "every replication slot is in use (max_replication_slots): raise it, or drop an unused slot".into(),
        ));
    }
    Ok(())
}

/// Kinds of type OIDs, resolved through `pg_type` (domains to their base,
/// arrays to their element) and kept.
#[derive(Default)]
struct Types(HashMap<u32, Kind>);

impl Types {
    async fn resolve(&mut self, c: &Client, oids: &[u32]) -> Result<(), SourceError> {
        // oid to (typtype, typcategory, base, element)
        let mut raw: HashMap<u32, (i8, i8, u32, u32)> = HashMap::new();
        let mut want: Vec<u32> = oids
            .iter()
            .copied()
            .filter(|o| !self.0.contains_key(o) && Kind::builtin(*o).is_none())
            .collect();
        // Domains over arrays of domains: a few rounds reach any real type.
        for _ in 0..4 {
            want.retain(|o| !raw.contains_key(o) && Kind::builtin(*o).is_none());
            want.sort_unstable();
            want.dedup();
            if want.is_empty() {
                break;
            }
            let rows = c
                .query(
                    "SELECT oid, typtype, typcategory, typbasetype, typelem FROM pg_type WHERE oid = ANY($1)",
                    &[&want],
                )
                .await
                .map_err(db_error("reading column types"))?;
            want.clear();
            for r in rows {
                let t: (u32, i8, i8, u32, u32) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4));
                raw.insert(t.0, (t.1, t.2, t.3, t.4));
                if t.1 == b'd' as i8 {
                    want.push(t.3);
                } else if t.2 == b'A' as i8 && t.4 != 0 {
                    want.push(t.4);
                }
            }
        }
        fn kind(oid: u32, raw: &HashMap<u32, (i8, i8, u32, u32)>, depth: usize) -> Kind {
            if let Some(k) = Kind::builtin(oid) {
                return k;
            }
            match raw.get(&oid) {
                Some(&(t, _, base, _)) if t == b'd' as i8 && depth < 4 => {
                    kind(base, raw, depth + 1)
                }
                Some(&(_, cat, _, elem)) if cat == b'A' as i8 && elem != 0 && depth < 4 => {
                    Kind::Array(Box::new(kind(elem, raw, depth + 1)))
                }
                _ => Kind::Other,
            }
        }
        for &o in oids {
            if !self.0.contains_key(&o) {
                self.0.insert(o, kind(o, &raw, 0));
            }
        }
        Ok(())
    }

    fn get(&self, oid: u32) -> Kind {
        self.0
            .get(&oid)
            .cloned()
            .or_else(|| Kind::builtin(oid))
            .unwrap_or(Kind::Other)
    }
}

/// The selected tables, with their columns and keys, as the catalog has
/// them now. Err when one cannot be captured, saying what to change.
async fn discover(
    c: &Client,
    spec: &DatabaseSpec,
    types: &mut Types,
) -> Result<Vec<Table>, SourceError> {
    let rows = c
        .query(
            // Per partitioned table: its leaf partitions' rows, and the
            // first leaf whose changes would not come whole (not FULL, or a
            // foreign table, whose changes are not in the WAL at all). Per
            // partition: its ancestors, any of which may be the table
            // captured in its stead.
            "WITH RECURSIVE tree(root, oid) AS ( \
                 SELECT c.oid, c.oid FROM pg_class c WHERE c.relkind = 'p' \
                 UNION ALL SELECT t.root, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.oid \
             ), leaves AS ( \
                 SELECT t.root, sum(greatest(l.reltuples, 0)) AS n, \
                        min(json_build_array(ln.nspname, l.relname)::text) FILTER ( \
                            WHERE l.relkind = 'f' OR (l.relkind = 'r' AND l.relreplident <> 'f')) AS unfit \
                 FROM tree t JOIN pg_class l ON l.oid = t.oid JOIN pg_namespace ln ON ln.oid = l.relnamespace \
                 WHERE t.oid <> t.root GROUP BY t.root \
             ), up(child, oid) AS ( \
                 SELECT i.inhrelid, i.inhparent FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE c.relispartition \
                 UNION ALL SELECT u.child, i.inhparent FROM up u JOIN pg_inherits i ON i.inhrelid = u.oid \
             ), ancestors AS ( \
                 SELECT u.child, json_agg(json_build_array(an.nspname, ac.relname))::text AS names \
                 FROM up u JOIN pg_class ac ON ac.oid = u.oid JOIN pg_namespace an ON an.oid = ac.relnamespace \
                 GROUP BY u.child \
             ) \
             SELECT n.nspname::text, c.relname::text, c.relreplident::text, \
                    coalesce(lv.n, greatest(c.reltuples, 0))::float8, has_table_privilege(c.oid, 'SELECT'), \
                    a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), \
                    coalesce((SELECT k.n FROM unnest(i.indkey) WITH ORDINALITY k(att, n) \
                              WHERE k.att = a.attnum), 0)::int4, \
                    c.relkind::text, lv.unfit, up.names, current_setting('server_version_num')::int4 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary \
             LEFT JOIN leaves lv ON lv.root = c.oid LEFT JOIN ancestors up ON up.child = c.oid \
             WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' \
             ORDER BY 1, 2, a.attnum",
            &[],
        )
        .await
        .map_err(db_error("reading the catalog (pg_class, pg_attribute)"))?;
    let oids: Vec<u32> = rows.iter().map(|r| r.get(6)).collect();
    types.resolve(c, &oids).await?;
    let (wschema, wtable) = &spec.watermark;
    let mut tables: Vec<Table> = Vec::new();
    // Per table: its primary key's columns by position in the key.
    let mut pks: Vec<Vec<(i32, usize)>> = Vec::new();
    let captured = |schema: &str, name: &str| {
        spec.tables.selects(&[schema, name]) && !(schema == wschema && name == wtable)
    };
    for r in &rows {
        let (schema, name): (String, String) = (r.get(0), r.get(1));
        if !captured(&schema, &name) {
            continue;
        }
        // A partition of a captured table is captured as that table.
        let ancestors: Option<String> = r.get(11);
        let ancestors: Vec<(String, String)> = ancestors
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default();
        if ancestors.iter().any(|(s, n)| captured(s, n)) {
            continue;
        }
        let dotted = format!("{schema}.{name}");
        let new_table = tables
            .last()
            .is_none_or(|t| *t.schema != *schema || *t.name != *name);
        if new_table {
            let identity: String = r.get(2);
            let partitioned = r.get::<_, String>(9) == "p";
            // A partitioned table logs nothing itself; its partitions do.
            if identity != "f" && !partitioned {
                return Err(SourceError::Retry(format!(
                    "table {dotted} does not have REPLICA IDENTITY FULL, so its changes would lack whole \
                     before images: ALTER TABLE {}.{} REPLICA IDENTITY FULL, or leave it out with Tables.Exclude",
                    ident(&schema),
                    ident(&name)
                )));
            }
            if partitioned && r.get::<_, i32>(12) < 130_000 {
                return Err(SourceError::Retry(format!(
                    "table {dotted} is partitioned, and publishing a partitioned table needs \
                     PostgreSQL 13 or later: capture its partitions instead (Tables.Exclude \
                     {dotted})"
                )));
            }
            if let Some(unfit) = r.get::<_, Option<String>>(10) {
                let (ps, pn): (String, String) = serde_json::from_str(&unfit).unwrap_or_default();
                return Err(SourceError::Retry(format!(
                    "partition {ps}.{pn} of {dotted} is a foreign table or lacks REPLICA IDENTITY FULL, \
                     so its changes would not reach the stream whole: ALTER TABLE {}.{} REPLICA \
                     IDENTITY FULL (on every partition, and on partitions added later before they \
                     are updated), or leave {dotted} out with Tables.Exclude",
                    ident(&ps),
                    ident(&pn)
                )));
            }
            if !r.get::<_, bool>(4) {
                return Err(SourceError::Retry(format!(
                    "reading {dotted} needs the SELECT privilege (GRANT SELECT ON {}.{} TO …)",
                    ident(&schema),
                    ident(&name)
                )));
            }
            let estimated: f64 = r.get(3);
            tables.push(Table {
                schema: schema.as_str().into(),
                name: name.as_str().into(),
                columns: Vec::new(),
                key: Vec::new(),
                estimated_rows: estimated as u64,
                partitioned,
            });
            pks.push(Vec::new());
        }
        let column: String = r.get(5);
        let t = tables.last_mut().unwrap();
        let pk_at: i32 = r.get(8);
        if pk_at > 0 {
            pks.last_mut().unwrap().push((pk_at, t.columns.len()));
        }
        t.columns.push(Column {
            selected: spec.columns.selects(&[&schema, &name, &column]),
            name: column,
            kind: types.get(r.get(6)),
            sql_type: r.get(7),
        });
    }
    for (t, mut pk) in tables.iter_mut().zip(pks) {
        let dotted = t.dotted();
        let (names, how): (Vec<String>, &str) = match spec.surrogate_keys.get(&dotted) {
            Some(cols) => (cols.clone(), "SurrogateKeys"),
            None if !pk.is_empty() => {
                pk.sort_unstable();
                (
                    pk.iter().map(|&(_, i)| t.columns[i].name.clone()).collect(),
                    "primary key",
                )
            }
            None => {
                return Err(SourceError::Retry(format!(
                    "table {dotted} has no primary key: name the columns that identify its rows in \
                     SurrogateKeys ({dotted}.<column>), or leave it out with Tables.Exclude"
                )))
            }
        };
        for n in names {
            let i = t.columns.iter().position(|c| c.name == n).ok_or_else(|| {
                SourceError::Retry(format!("{how} of {dotted}: there is no column {n}"))
            })?;
            if !t.columns[i].selected {
                return Err(SourceError::Retry(format!(
                    "column {dotted}.{n} is part of the table's {how}, so it cannot be excluded"
                )));
            }
            t.key.push(i);
        }
    }
    Ok(tables)
}

/// Creates the watermark table (and its schema) if missing.
async fn watermark_table(c: &Client, spec: &DatabaseSpec) -> Result<(), SourceError> {
    let (s, t) = &spec.watermark;
    c.batch_execute(&format!(
        "SET client_min_messages = warning; \
         CREATE SCHEMA IF NOT EXISTS {s_q}; \
         CREATE TABLE IF NOT EXISTS {s_q}.{} (stream text PRIMARY KEY, watermark text NOT NULL); \
         RESET client_min_messages",
        ident(t),
        s_q = ident(s)
    ))
    .await
    .map_err(|e| {
        let m = e.as_db_error().map_or(e.to_string(), |d| d.message().to_owned());
        SourceError::Retry(format!(
            "SnapshotWatermarkTable {s}.{t} is missing and could not be created (hydrant creates it, \
             and its schema, with the CREATE privilege; it writes it with INSERT and UPDATE): {m}"
        ))
    })
}

/// Creates the stream's publication over the tables and the watermark
/// table, or adds to it the tables it lacks. A partitioned table publishes
/// its partitions, those added later included; their changes arrive as
/// theirs, and the reader takes them as the table's.
async fn publication(
    c: &Client,
    name: &str,
    spec: &DatabaseSpec,
    tables: &[Table],
) -> Result<(), SourceError> {
    let mut wanted: Vec<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.to_string(), t.name.to_string()))
        .collect();
    wanted.push(spec.watermark.clone());
    let exists = c
        .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
        .await
        .map_err(db_error("looking for the publication"))?
        .is_some();
    let have: HashSet<(String, String)> = c
        .query(
            // Its members as named, not pg_publication_tables (which lists
            // a partitioned table's partitions in its stead).
            "SELECT n.nspname::text, c.relname::text FROM pg_publication_rel r \
             JOIN pg_publication p ON p.oid = r.prpubid JOIN pg_class c ON c.oid = r.prrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.pubname = $1",
            &[&name],
        )
        .await
        .map_err(db_error("reading the publication's tables"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let missing: Vec<String> = wanted
        .iter()
        .filter(|w| !have.contains(*w))
        .map(|(s, t)| format!("{}.{}", ident(s), ident(t)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sql = if exists {
        format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            ident(name),
            missing.join(", ")
        )
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(name),
            missing.join(", ")
        )
    };
    c.batch_execute(&sql).await.map_err(|e| {
        let m = e
            .as_db_error()
            .map_or(e.to_string(), |d| d.message().to_owned());
        SourceError::Retry(format!(
            "creating the publication {name} ({sql}) needs the user to own the captured tables \
             and the watermark table, or to be superuser: {m}"
        ))
    })
}

/// The slot's confirmed position, or None when there is no such slot; Err
/// when the server has invalidated it.
async fn slot(c: &Client, name: &str) -> Result<Option<u64>, SourceError> {
    let row = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text, coalesce(wal_status, '') FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&name],
        )
        .await
        .map_err(db_error("reading pg_replication_slots"))?;
    Ok(match row {
        None => None,
        Some(r) => {
            let (lsn, status): (Option<String>, String) = (r.get(0), r.get(1));
            if status == "lost" {
                return Ok(Some(0));
            }
            Some(lsn.as_deref().and_then(parse_lsn).unwrap_or(0))
        }
    })
}

/// Drops the slot if it exists, ending a walsender still holding it.
async fn drop_slot(c: &Client, name: &str) -> Result<(), SourceError> {
    for _ in 0..50 {
        c.query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&name],
        )
        .await
        .map_err(db_error("ending the slot's walsender"))?;
        let done = c
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&name],
            )
            .await;
        match done {
            Ok(_) => return Ok(()),
            // Still active: the walsender is on its way out.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(db_error("dropping the replication slot")(e)),
        }
    }
    Err(SourceError::Retry(format!(
        "the replication slot {name} stays active; another client holds it"
    )))
}

/// Creates the slot; returns its start position.
async fn create_slot(c: &Client, name: &str) -> Result<u64, SourceError> {
    let row = c
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
        .map_err(db_error("creating the replication slot"))?;
    let lsn: String = row.get(0);
    parse_lsn(&lsn)
        .ok_or_else(|| SourceError::Retry(format!("the new slot's position {lsn:?} is unreadable")))
}

/// The checks run when a stream is created, so that a source that cannot
/// work is refused with what to change.
pub async fn check(spec: &DatabaseSpec, _stream: &str) -> Result<(), String> {
    async {
        let db = database(spec).await?;
        let c = client(spec, &db).await?;
        check_server(&c, true).await?;
        let tables = discover(&c, spec, &mut Types::default()).await?;
        if tables.is_empty() {
            return Err(SourceError::Retry(format!(
                "no table matches Tables (Include, less Exclude) in database {db}"
            )));
        }
        let owned = c
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(db_error("reading the user's role"))?
            .get::<_, bool>(0);
        if !owned {
            for t in &tables {
                let own: bool = c
                    .query_one(
                        "SELECT pg_has_role(c.relowner, 'USAGE') FROM pg_class c JOIN pg_namespace n \
                         ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
                        &[&&*t.schema, &&*t.name],
                    )
                    .await
                    .map_err(db_error("reading the tables' owners"))?
                    .get(0);
                if !own {
                    return Err(SourceError::Retry(format!(
                        "hydrant publishes the captured tables (CREATE PUBLICATION), which needs their \
                         owner or a superuser: the user does not own {}",
                        t.dotted()
                    )));
                }
            }
        }
        watermark_table(&c, spec).await?;
        // The replication protocol itself: pg_hba.conf must let the user in
        // with replication=database.
        wire::probe(&login(spec, &db))
            .await
            .map_err(|e| SourceError::Retry(format!("a replication connection to {db}: {e}")))?;
        Ok(())
    }
    .await
    .map_err(|e: SourceError| e.to_string())
}

/// Drops what the stream created on the source: its slot and its
/// publication (DeleteDeliveryStream).
pub async fn forget(spec: &DatabaseSpec, stream: &str) -> Result<(), String> {
    async {
        let db = database(spec).await?;
        let c = client(spec, &db).await?;
        let name = slot_name(stream);
        drop_slot(&c, &name).await?;
        c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", ident(&name)))
            .await
            .map_err(db_error("dropping the publication"))?;
        let (s, t) = &spec.watermark;
        // The stream's watermark row; the table stays for other streams.
        let _ = c
            .execute(
                &format!("DELETE FROM {}.{} WHERE stream = $1", ident(s), ident(t)),
                &[&stream],
            )
            .await;
        Ok(())
    }
    .await
    .map_err(|e: SourceError| e.to_string())
}

/// Where a table's snapshot is.
#[derive(Debug, Clone)]
enum Snap {
    /// Read on after these key values (text), from the start with none.
    After(Option<Vec<String>>),
    Done,
}

fn parse_snap(position: Option<String>, epoch: u64) -> Snap {
    let Some(p) = position else {
        return Snap::After(None);
    };
    let j: Json = serde_json::from_str(&p).unwrap_or(Json::Null);
    if j["epoch"].as_u64().unwrap_or(0) != epoch {
        return Snap::After(None);
    }
    if j["done"] == json!(true) {
        return Snap::Done;
    }
    Snap::After(j["after"].as_array().and_then(|a| {
        a.iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
    }))
}

/// `pg_current_snapshot()`: which transactions a chunk's SELECT saw.
struct Visibility {
    xmin: u64,
    xmax: u64,
    running: HashSet<u64>,
}

impl Visibility {
    fn parse(s: &str) -> Option<Visibility> {
        let mut p = s.split(':');
        let xmin = p.next()?.parse().ok()?;
        let xmax = p.next()?.parse().ok()?;
        let running = p
            .next()?
            .split(',')
            .filter(|x| !x.is_empty())
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        Some(Visibility {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether the 32-bit xid of a streamed transaction was visible. A
    /// streamed transaction is recent, so its full xid is the one of its
    /// 32 bits nearest the snapshot's xmax.
    fn saw(&self, xid: u32) -> bool {
        const HALF: u64 = 1 << 31;
        let mut x = (self.xmax & !0xffff_ffff) | xid as u64;
        if x > self.xmax.saturating_add(HALF) {
            x = x.saturating_sub(1 << 32);
        } else if x.saturating_add(HALF) < self.xmax {
            x += 1 << 32;
        }
        x < self.xmin || (x < self.xmax && !self.running.contains(&x))
    }
}

struct Chunk {
    table: Arc<Table>,
    low: String,
    high: String,
    open: bool,
    seen: Visibility,
    rows: Vec<(String, Vec<Json>)>,
    stale: HashSet<String>,
    next: Option<Vec<String>>,
}

struct Pending {
    change: Change,
    keys: Vec<String>,
}

/// A streamed table as its last Relation message described it: how its
/// tuples are laid out, and whether it is captured.
enum Rel {
    Captured(Arc<Table>),
    /// The watermark table: which columns hold the stream and the mark.
    Watermark {
        stream: usize,
        mark: usize,
    },
    Ignored,
}

struct Reader<'a> {
    ctx: &'a Ctx,
    client: Client,
    repl: Replication,
    database: String,
    types: Types,
    /// `schema.table` to the table as the catalog has it (for snapshots).
    tables: HashMap<String, Arc<Table>>,
    rels: HashMap<u32, Rel>,
    /// A streamed partition's relation to its name (`schema.table`); its
    /// changes are its captured ancestor's.
    partitions: HashMap<u32, String>,
    snaps: BTreeMap<String, Snap>,
    epoch: u64,
    /// End of the last commit read, and the last one recorded.
    lsn: u64,
    marked: u64,
    marked_at: Instant,
    confirmed_at: Instant,
    discovered_at: Instant,
    in_txn: bool,
    xid: u32,
    txn: Vec<Pending>,
    txn_marks: Vec<String>,
    batch: Batch,
    batch_since: Option<Instant>,
    chunk: Option<Chunk>,
}

/// Reads until an error: the snapshot and the stream, appending as it goes.
pub(super) async fn run(ctx: &Ctx) -> Result<(), SourceError> {
    let spec = &ctx.spec;
    let stream = &ctx.stream;
    let name = slot_name(&stream.spec.name);
    let database = database(spec).await?;
    let client = client(spec, &database).await?;
    check_server(&client, false).await?;
    watermark_table(&client, spec).await?;
    let mut types = Types::default();
    let tables = discover(&client, spec, &mut types).await?;
    *ctx.stats.slot.lock().unwrap() = Some(name.clone());
    let recorded: Option<Json> = stream
        .log
        .position(WAL)
        .map(|p| serde_json::from_str(&p).unwrap_or(Json::Null));
    let (lsn, epoch) = match recorded {
        Some(j) if j["lsn"].is_u64() => {
            let lsn = j["lsn"].as_u64().unwrap_or(0);
            match slot(&client, &name).await? {
                Some(confirmed) if confirmed > lsn => {
                    return Err(SourceError::Failed(format!(
                        "the replication slot {name} has been moved past hydrant's position {} to {} \
                         (another client confirmed it?): the changes between cannot be read; the stream \
                         stops: POST /-/streams/{}/snapshot to snapshot again",
                        lsn_text(lsn),
                        lsn_text(confirmed),
                        stream.spec.name
                    )))
                }
                Some(confirmed) if confirmed > 0 => {}
                _ => {
                    return Err(SourceError::Failed(format!(
                        "the replication slot {name} is gone or was invalidated (dropped, or its WAL \
                         removed past max_slot_wal_keep_size), so the changes after hydrant's position {} \
                         cannot be read; the stream stops: POST /-/streams/{}/snapshot to snapshot again",
                        lsn_text(lsn),
                        stream.spec.name
                    )))
                }
            }
            publication(&client, &name, spec, &tables).await?;
            (lsn, j["epoch"].as_u64().unwrap_or(0))
        }
        recorded => {
            // The first start, or a snapshot asked for: a new slot from
            // now on, and every table afresh; after a request each table
            // is first emptied (a `t` record) of what came before.
            let epoch = recorded
                .as_ref()
                .and_then(|j| j["restart"].as_u64())
                .unwrap_or(0);
            drop_slot(&client, &name).await?;
            publication(&client, &name, spec, &tables).await?;
            let lsn = create_slot(&client, &name).await?;
            let mut batch = Batch::default();
            if recorded.is_some() {
                let now = now_ms();
                for (i, t) in tables.iter().enumerate() {
                    let origin = origin(&stream.spec.name, &database, lsn, i, now, None, true);
                    batch.push(
                        now,
                        &envelope(&Change::truncate(&t.schema, &t.name), &origin),
                    );
                }
            }
            let mark = json!({ "lsn": lsn, "epoch": epoch }).to_string();
            stream
                .put_marked(batch, WAL, &mark)
                .await
                .map_err(|e| SourceError::Retry(format!("recording the start position: {e}")))?;
            (lsn, epoch)
        }
    };
    let repl = Replication::start(&login(spec, &database), &name, &name, lsn)
        .await
        .map_err(|e| stream_error(e, spec, &name, lsn))?;
    let mut reader = Reader {
        ctx,
        client,
        repl,
        database,
        types,
        tables: HashMap::new(),
        rels: HashMap::new(),
        partitions: HashMap::new(),
        snaps: BTreeMap::new(),
        epoch,
        lsn,
        marked: lsn,
        marked_at: Instant::now(),
        confirmed_at: Instant::now(),
        discovered_at: Instant::now(),
        in_txn: false,
        xid: 0,
        txn: Vec::new(),
        txn_marks: Vec::new(),
        batch: Batch::default(),
        batch_since: None,
        chunk: None,
    };
    reader.adopt(tables)?;
    *ctx.stats.position.lock().unwrap() = format!("{name} at {}", lsn_text(lsn));
    ctx.stats.last_error.lock().unwrap().take();
    loop {
        reader.rediscover().await?;
        if reader.chunk.is_none() {
            reader.next_chunk().await?;
        }
        // Idle is nothing for a moment, not one empty poll: tokio forgets a
        // socket's readiness after a short read, so a poll can find nothing
        // while the server's next message is already in the kernel's buffer.
        let event = match tokio::time::timeout(IDLE_AFTER, reader.repl.next()).await {
            Ok(e) => e,
            Err(_) => {
                reader.flush(false).await?;
                ctx.stats.behind_ms.store(0, Ordering::Relaxed);
                let next = tokio::select! {
                    e = reader.repl.next() => Some(e),
                    _ = tokio::time::sleep(IDLE_MARK) => None,
                };
                match next {
                    Some(e) => e,
                    None => {
                        reader.status(false).await?;
                        continue;
                    }
                }
            }
        };
        match event.map_err(|e| stream_error(e, spec, &name, reader.lsn))? {
            Event::Data(b) => reader.message(&b).await?,
            Event::Keepalive { wal_end, reply } => {
                // Every transaction committed before wal_end has been sent;
                // with none open and nothing waiting, the position moves on.
                if !reader.in_txn && reader.txn.is_empty() && wal_end > reader.lsn {
                    reader.lsn = wal_end;
                }
                reader.status(reply).await?;
            }
        }
    }
}

fn stream_error(e: WireError, spec: &DatabaseSpec, slot: &str, lsn: u64) -> SourceError {
    let at = format!("{}:{}", spec.host, spec.port);
    match &e {
        // undefined_object: no such slot; object_not_in_prerequisite_state:
        // the slot was invalidated; the WAL it needs was removed.
        WireError::Server { code, message }
            if code == "42704"
                || code == "55000"
                || message.contains("has already been removed") =>
        {
            SourceError::Failed(format!(
                "the replication slot {slot} on {at} cannot stream from hydrant's position {}: {e}; the \
                 changes after it cannot be read, so the stream stops; a snapshot on request recovers",
                lsn_text(lsn)
            ))
        }
        WireError::Server { code, .. } if code == "42501" || code == "28000" => SourceError::Retry(
            format!("the replication connection to {at} was refused: {e} (the user needs the REPLICATION attribute, and pg_hba.conf must let it in)"),
        ),
        _ => SourceError::Retry(format!(
            "reading the replication stream from {at} at {}: {e}",
            lsn_text(lsn)
        )),
    }
}

fn origin<'a>(
    stream: &'a str,
    database: &'a str,
    lsn: u64,
    row: usize,
    commit_ms: i64,
    xid: Option<u64>,
    snapshot: bool,
) -> Origin<'a> {
    Origin {
        connector: "postgresql",
        stream,
        database: Some(database),
        position: Position::Wal { lsn },
        row,
        commit_ms,
        xid,
        snapshot,
    }
}

impl Reader<'_> {
    /// Takes the catalog's tables: for snapshots, for the destination's
    /// definitions, and for the snapshot positions of tables seen first.
    fn adopt(&mut self, tables: Vec<Table>) -> Result<(), SourceError> {
        let defs: TableDefs = tables.iter().map(|t| (t.dotted(), t.def())).collect();
        write_defs(self.ctx.stream.dir(), &defs)
            .map_err(|e| SourceError::Retry(format!("recording the tables' definitions: {e}")))?;
        self.tables.clear();
        for t in tables {
            let dotted = t.dotted();
            if !self.snaps.contains_key(&dotted) {
                let snap = parse_snap(
                    self.ctx
                        .stream
                        .log
                        .position(&snapshot_producer(&t.schema, &t.name)),
                    self.epoch,
                );
                let done = matches!(snap, Snap::Done);
                self.ctx.stats.table(&dotted, |s| {
                    s.estimated_rows = t.estimated_rows;
                    if done {
                        s.snapshot = SnapshotStatus::Complete;
                    }
                });
                self.snaps.insert(dotted.clone(), snap);
            }
            self.tables.insert(dotted, Arc::new(t));
        }
        Ok(())
    }

    /// Tables created since that match are published and snapshotted
    /// (PostgreSQL's logical replication carries no DDL, so hydrant looks
    /// now and then).
    async fn rediscover(&mut self) -> Result<(), SourceError> {
        if self.discovered_at.elapsed() < REDISCOVER_EVERY {
            return Ok(());
        }
        self.discovered_at = Instant::now();
        let tables = discover(&self.client, &self.ctx.spec, &mut self.types).await?;
        if tables.iter().all(|t| self.tables.contains_key(&t.dotted())) {
            return Ok(());
        }
        let name = slot_name(&self.ctx.stream.spec.name);
        publication(&self.client, &name, &self.ctx.spec, &tables).await?;
        self.adopt(tables)
    }

    async fn put(&self, batch: Batch, producer: &str, position: &str) -> Result<(), SourceError> {
        self.ctx
            .stream
            .put_marked(batch, producer, position)
            .await
            .map(|_| ())
            .map_err(|e| SourceError::Retry(format!("appending to the stream's log: {e}")))
    }

    /// Tells the slot what is durable: when asked, and now and then.
    async fn status(&mut self, asked: bool) -> Result<(), SourceError> {
        // Changes waiting are appended by their own rule (commit); here
        // only an idle position is recorded.
        if self.batch.is_empty() {
            self.flush(false).await?;
        }
        if asked || self.confirmed_at.elapsed() >= STATUS_EVERY {
            self.confirm().await?;
        }
        Ok(())
    }

    async fn confirm(&mut self) -> Result<(), SourceError> {
        self.repl
            .confirm(self.marked)
            .await
            .map_err(|e| SourceError::Retry(format!("confirming to the replication slot: {e}")))?;
        self.confirmed_at = Instant::now();
        Ok(())
    }

    /// Appends what is waiting with the position it brings the stream to;
    /// with nothing waiting, records the position now and then (`force`:
    /// now). Then the slot may release the WAL before it.
    async fn flush(&mut self, force: bool) -> Result<(), SourceError> {
        if self.batch.is_empty()
            && (self.lsn == self.marked || (!force && self.marked_at.elapsed() < IDLE_MARK))
        {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_since = None;
        let mark = json!({ "lsn": self.lsn, "epoch": self.epoch }).to_string();
        self.put(batch, WAL, &mark).await?;
        *self.ctx.stats.position.lock().unwrap() = format!(
            "{} at {}",
            slot_name(&self.ctx.stream.spec.name),
            lsn_text(self.lsn)
        );
        self.marked = self.lsn;
        self.marked_at = Instant::now();
        self.confirm().await
    }

    async fn message(&mut self, data: &[u8]) -> Result<(), SourceError> {
        let m = pgoutput::parse(data).map_err(|e| {
            SourceError::Failed(format!(
                "decoding a pgoutput message after {}: {e}",
                lsn_text(self.lsn)
            ))
        })?;
        match m {
            Message::Begin { xid, .. } => {
                self.in_txn = true;
                self.xid = xid;
                self.txn.clear();
                self.txn_marks.clear();
            }
            Message::Commit { end_lsn, commit_us } => {
                self.in_txn = false;
                let commit_ms = (commit_us + PG_EPOCH_US) / 1000;
                self.commit(end_lsn, commit_ms).await?;
            }
            Message::Relation(r) => self.relation(r).await?,
            Message::Insert { rel, new } => self.row(rel, 'c', Old::Missing, Some(new))?,
            Message::Update { rel, old, new } => self.row(rel, 'u', old, Some(new))?,
            Message::Delete { rel, old } => self.row(rel, 'd', old, None)?,
            Message::Truncate { rels } => {
                for t in self.truncated(&rels).await? {
                    self.txn.push(Pending {
                        change: Change::truncate(&t.schema, &t.name),
                        keys: Vec::new(),
                    });
                    if let Some(c) = &mut self.chunk {
                        if c.table.dotted() == t.dotted() {
                            let keys: Vec<String> = c.rows.iter().map(|(k, _)| k.clone()).collect();
                            c.stale.extend(keys);
                        }
                    }
                }
            }
            Message::Other(_) => {}
        }
        Ok(())
    }

    /// A table's layout in the stream from here on. A captured table whose
    /// columns changed (ALTER TABLE) has its definitions read again first,
    /// so the destination knows the new columns before any record has them.
    async fn relation(&mut self, r: pgoutput::Relation) -> Result<(), SourceError> {
        let (ws, wt) = &self.ctx.spec.watermark;
        if r.schema == *ws && r.name == *wt {
            let at = |n: &str| r.columns.iter().position(|c| c.name == n);
            let rel = match (at("stream"), at("watermark")) {
                (Some(stream), Some(mark)) => Rel::Watermark { stream, mark },
                _ => {
                    return Err(SourceError::Failed(format!(
                        "the watermark table {ws}.{wt} lacks its columns stream and watermark"
                    )))
                }
            };
            self.rels.insert(r.oid, rel);
            return Ok(());
        }
        let own = format!("{}.{}", r.schema, r.name);
        let Some(known) = self.captured_as(r.oid, &own).await? else {
            self.rels.insert(r.oid, Rel::Ignored);
            return Ok(());
        };
        let dotted = known.dotted();
        if own != dotted {
            self.partitions.insert(r.oid, own.clone());
        }
        // A partition added later may lack it and still take inserts;
        // its first update or delete without the old row stops the stream.
        if r.replica_identity != b'f' && own == dotted {
            return Err(SourceError::Failed(format!(
                "table {dotted} no longer has REPLICA IDENTITY FULL, so its changes lack whole before \
                 images: ALTER TABLE {}.{} REPLICA IDENTITY FULL, then snapshot again on request",
                ident(&r.schema),
                ident(&r.name)
            )));
        }
        // By name: a partition may order its columns otherwise.
        let same = r.columns.len() == known.columns.len()
            && r.columns
                .iter()
                .all(|a| known.columns.iter().any(|b| a.name == b.name));
        let known = if same {
            known
        } else {
            // The records before it are in; read the definitions again.
            self.flush(true).await?;
            let tables = discover(&self.client, &self.ctx.spec, &mut self.types).await?;
            self.adopt(tables)?;
            self.tables.get(&dotted).cloned().unwrap_or(known)
        };
        let oids: Vec<u32> = r.columns.iter().map(|c| c.type_oid).collect();
        self.types.resolve(&self.client, &oids).await?;
        let mut key = Vec::new();
        for &i in &known.key {
            let name = &known.columns[i].name;
            let at = r
                .columns
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| {
                    SourceError::Failed(format!(
                        "the key column {dotted}.{name} is gone from the table's changes after {}",
                        lsn_text(self.lsn)
                    ))
                })?;
            key.push(at);
        }
        let spec = &self.ctx.spec;
        let table = Table {
            schema: known.schema.clone(),
            name: known.name.clone(),
            columns: r
                .columns
                .iter()
                .map(|c| Column {
                    selected: spec.columns.selects(&[&known.schema, &known.name, &c.name]),
                    name: c.name.clone(),
                    kind: self.types.get(c.type_oid),
                    sql_type: String::new(),
                })
                .collect(),
            key,
            estimated_rows: known.estimated_rows,
            partitioned: known.partitioned,
        };
        self.rels.insert(r.oid, Rel::Captured(Arc::new(table)));
        Ok(())
    }

    /// The captured table whose changes a streamed relation's are: the
    /// table itself, or, for a partition, its topmost captured ancestor.
    async fn captured_as(&self, oid: u32, own: &str) -> Result<Option<Arc<Table>>, SourceError> {
        if let Some(t) = self.tables.get(own) {
            return Ok(Some(t.clone()));
        }
        if !self.tables.values().any(|t| t.partitioned) {
            return Ok(None);
        }
        let rows = self
            .client
            .query(
                "SELECT n.nspname::text, c.relname::text \
                 FROM pg_partition_ancestors($1::oid) WITH ORDINALITY a(relid, i) \
                 JOIN pg_class c ON c.oid = a.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                 ORDER BY a.i DESC",
                &[&oid],
            )
            .await
            .map_err(db_error(&format!(
                "looking up the partitioned table of {own}"
            )))?;
        Ok(rows.iter().find_map(|r| {
            let dotted = format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1));
            self.tables.get(&dotted).filter(|t| t.partitioned).cloned()
        }))
    }

    /// The captured tables a TRUNCATE empties. A partitioned table is
    /// emptied when each of its partitions is; one truncated alone stops
    /// the stream, since a `t` record would empty all of the table and the
    /// partition's rows cannot be deleted one by one.
    async fn truncated(&self, rels: &[u32]) -> Result<Vec<Arc<Table>>, SourceError> {
        let mut tables: Vec<Arc<Table>> = Vec::new();
        for rel in rels {
            if let Some(Rel::Captured(t)) = self.rels.get(rel) {
                if !tables.iter().any(|have| have.dotted() == t.dotted()) {
                    tables.push(t.clone());
                }
            }
        }
        for t in tables.iter().filter(|t| t.partitioned) {
            let dotted = t.dotted();
            let leaves = self
                .client
                .query(
                    "SELECT relid::oid FROM pg_partition_tree($1::text::regclass) WHERE isleaf",
                    &[&format!("{}.{}", ident(&t.schema), ident(&t.name))],
                )
                .await
                .map_err(db_error(&format!("reading the partitions of {dotted}")))?;
            if !leaves.iter().all(|r| rels.contains(&r.get::<_, u32>(0))) {
                let part = rels
                    .iter()
                    .find_map(|r| self.partitions.get(r))
                    .cloned()
                    .unwrap_or_else(|| dotted.clone());
                return Err(SourceError::Failed(format!(
                    "partition {part} of {dotted} was truncated alone after {}: its rows are gone \
                     from {dotted}, but cannot be deleted from the change log one by one; snapshot \
                     again on request",
                    lsn_text(self.lsn)
                )));
            }
        }
        Ok(tables)
    }

    fn row(
        &mut self,
        rel: u32,
        op: char,
        old: Old,
        new: Option<pgoutput::Tuple>,
    ) -> Result<(), SourceError> {
        let table = match self.rels.get(&rel) {
            Some(Rel::Captured(t)) => t.clone(),
            Some(Rel::Watermark { stream, mark }) => {
                fn text<'t>(t: &[Datum<'t>], i: usize) -> Option<&'t str> {
                    match t.get(i) {
                        Some(Datum::Text(s)) => Some(s),
                        _ => None,
                    }
                }
                if let Some(n) = &new {
                    if text(n, *stream) == Some(self.ctx.stream.spec.name.as_str()) {
                        if let Some(m) = text(n, *mark) {
                            self.txn_marks.push(m.to_owned());
                        }
                    }
                }
                return Ok(());
            }
            Some(Rel::Ignored) => return Ok(()),
            None => {
                return Err(SourceError::Failed(format!(
                    "a change of relation {rel} arrived before its Relation message, after {}",
                    lsn_text(self.lsn)
                )))
            }
        };
        let old = match old {
            Old::Row(t) => Some(t),
            Old::Missing if op == 'c' => None,
            // REPLICA IDENTITY FULL logs the whole old row of every update
            // and delete; a partition added later may lack it.
            _ => {
                let dotted = table.dotted();
                let part = self.partitions.get(&rel).unwrap_or(&dotted);
                return Err(SourceError::Failed(format!(
                    "a change of {part} after {} arrived without its whole old row, as the table \
                     lacks REPLICA IDENTITY FULL: ALTER TABLE {part} REPLICA IDENTITY FULL (on every \
                     partition of {dotted}, and on those added later before they are written), then \
                     snapshot again on request",
                    lsn_text(self.lsn)
                )));
            }
        };
        let width = table.columns.len();
        let decode =
            |t: &pgoutput::Tuple, old: Option<&Vec<Json>>| -> Result<Vec<Json>, SourceError> {
                if t.len() != width {
                    return Err(SourceError::Failed(format!(
                        "a row of {} with {} columns where its Relation message has {width}",
                        table.dotted(),
                        t.len()
                    )));
                }
                t.iter()
                    .zip(&table.columns)
                    .enumerate()
                    .map(|(i, (d, c))| match d {
                        Datum::Null => Ok(Json::Null),
                        Datum::Text(s) => Ok(to_json(&c.kind, s)),
                        // Unchanged TOAST: the old row (replica identity FULL)
                        // has the value.
                        Datum::Unchanged => old.map(|o| o[i].clone()).ok_or_else(|| {
                            SourceError::Failed(format!(
                            "an update of {} left {} out (unchanged TOAST) without the old row to \
                             take it from: is REPLICA IDENTITY still FULL?",
                            table.dotted(),
                            c.name
                        ))
                        }),
                    })
                    .collect()
            };
        let before = old.as_ref().map(|t| decode(t, None)).transpose()?;
        let after = new
            .as_ref()
            .map(|t| decode(t, before.as_ref()))
            .transpose()?;
        let key = match (&before, &after) {
            (_, Some(a)) => table.key(a),
            (Some(b), None) => table.key(b),
            (None, None) => return Ok(()),
        };
        let mut keys = Vec::new();
        if let Some(b) = &before {
            keys.push(table.key(b).to_string());
        }
        if let Some(a) = &after {
            keys.push(table.key(a).to_string());
        }
        self.txn.push(Pending {
            change: Change {
                op,
                db: table.schema.clone(),
                table: table.name.clone(),
                key,
                before: before.map_or(Json::Null, |b| table.image(&b)),
                after: after.map_or(Json::Null, |a| table.image(&a)),
            },
            keys,
        });
        Ok(())
    }

    async fn commit(&mut self, end_lsn: u64, commit_ms: i64) -> Result<(), SourceError> {
        self.lsn = self.lsn.max(end_lsn);
        let stats = &self.ctx.stats;
        let name = self.ctx.stream.spec.name.clone();
        let now = now_ms();
        let n = self.txn.len();
        for (row, p) in self.txn.drain(..).enumerate() {
            if let Some(c) = &mut self.chunk {
                if *c.table.schema == *p.change.db
                    && *c.table.name == *p.change.table
                    && (c.open || !c.seen.saw(self.xid))
                {
                    c.stale.extend(p.keys.iter().cloned());
                }
            }
            let o = origin(
                &name,
                &self.database,
                end_lsn,
                row,
                commit_ms,
                Some(self.xid as u64),
                false,
            );
            self.batch.push(now, &envelope(&p.change, &o));
            self.batch_since.get_or_insert_with(Instant::now);
            stats.changed(
                &format!("{}.{}", p.change.db, p.change.table),
                commit_ms,
                now,
            );
        }
        stats.committed(n, commit_ms, now);
        let marks = std::mem::take(&mut self.txn_marks);
        let high = self
            .chunk
            .as_mut()
            .is_some_and(|c| watermarks(&marks, &c.low, &c.high, &mut c.open));
        if high {
            self.flush(true).await?;
            self.emit_chunk().await?;
        } else if flush_due(&self.batch, self.batch_since) {
            self.flush(true).await?;
        } else if self.batch.is_empty() {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Reads the next chunk of the first table whose snapshot is not done,
    /// between its watermarks.
    async fn next_chunk(&mut self) -> Result<(), SourceError> {
        let Some((dotted, after)) = self.snaps.iter().find_map(|(k, s)| match s {
            Snap::After(a) => Some((k.clone(), a.clone())),
            Snap::Done => None,
        }) else {
            return Ok(());
        };
        let Some(table) = self.tables.get(&dotted).cloned() else {
            // Dropped since: nothing left to read.
            self.snaps.insert(dotted, Snap::Done);
            return Ok(());
        };
        let (ws, wt) = &self.ctx.spec.watermark;
        let mark_sql = format!(
            "INSERT INTO {}.{} (stream, watermark) VALUES ($1, $2) \
             ON CONFLICT (stream) DO UPDATE SET watermark = EXCLUDED.watermark",
            ident(ws),
            ident(wt)
        );
        let name = self.ctx.stream.spec.name.clone();
        let low = uuid::Uuid::new_v4().to_string();
        self.client
            .execute(&mark_sql, &[&name, &low])
            .await
            .map_err(db_error("writing the low watermark"))?;
        let cols: Vec<String> = table.columns.iter().map(|c| ident(&c.name)).collect();
        let keys: Vec<String> = table
            .key
            .iter()
            .map(|&i| ident(&table.columns[i].name))
            .collect();
        let order = keys.join(", ");
        // Key values are the server's own text of them, compared as their
        // column's type; the simple protocol takes them as quoted literals.
        let condition = match &after {
            None => String::new(),
            Some(v) => {
                let values: Vec<String> = table
                    .key
                    .iter()
                    .zip(v)
                    .map(|(&i, v)| format!("{}::{}", literal(v), table.columns[i].sql_type))
                    .collect();
                format!("WHERE ({order}) > ({})", values.join(", "))
            }
        };
        let sql = format!(
            "SELECT {} FROM {}.{} {condition} ORDER BY {order} LIMIT {CHUNK_ROWS}",
            cols.join(", "),
            ident(&table.schema),
            ident(&table.name)
        );
        let what = format!("reading a snapshot chunk of {dotted}");
        let read_error = db_error(&what);
        let tx = self
            .client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(&read_error)?;
        let seen: String = tx
            .query_one("SELECT pg_current_snapshot()::text", &[])
            .await
            .map_err(&read_error)?
            .get(0);
        let read = tx.simple_query(&sql).await.map_err(&read_error)?;
        tx.commit().await.map_err(&read_error)?;
        let seen = Visibility::parse(&seen).ok_or_else(|| {
            SourceError::Retry(format!("an unreadable pg_current_snapshot() {seen:?}"))
        })?;
        let high = uuid::Uuid::new_v4().to_string();
        self.client
            .execute(&mark_sql, &[&name, &high])
            .await
            .map_err(db_error("writing the high watermark"))?;
        let mut rows = Vec::new();
        let mut last = None;
        for m in read {
            let SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            let texts: Vec<Option<&str>> = (0..table.columns.len()).map(|i| row.get(i)).collect();
            let json: Vec<Json> = table
                .columns
                .iter()
                .zip(&texts)
                .map(|(c, v)| v.map_or(Json::Null, |s| to_json(&c.kind, s)))
                .collect();
            rows.push((table.key(&json).to_string(), json));
            last = Some(
                table
                    .key
                    .iter()
                    .map(|&i| texts[i].unwrap_or_default().to_owned())
                    .collect::<Vec<_>>(),
            );
        }
        let full = rows.len() == CHUNK_ROWS;
        self.chunk = Some(Chunk {
            table,
            low,
            high,
            open: false,
            seen,
            rows,
            stale: HashSet::new(),
            next: if full { last } else { None },
        });
        Ok(())
    }

    /// Appends the rows of the chunk whose high watermark has just
    /// committed (less those changed meanwhile), with the table's new
    /// snapshot position.
    async fn emit_chunk(&mut self) -> Result<(), SourceError> {
        let Some(c) = self.chunk.take() else {
            return Ok(());
        };
        let dotted = c.table.dotted();
        let name = self.ctx.stream.spec.name.clone();
        let now = now_ms();
        let mut batch = Batch::default();
        let mut n = 0u64;
        for (i, (key, values)) in c.rows.iter().enumerate() {
            if c.stale.contains(key) {
                continue;
            }
            let change = Change {
                op: 'r',
                db: c.table.schema.clone(),
                table: c.table.name.clone(),
                key: c.table.key(values),
                before: Json::Null,
                after: c.table.image(values),
            };
            let o = origin(&name, &self.database, self.lsn, i, now, None, true);
            batch.push(now, &envelope(&change, &o));
            n += 1;
        }
        let (snap, position) = match &c.next {
            Some(last) => (
                Snap::After(Some(last.clone())),
                json!({ "after": last, "epoch": self.epoch }),
            ),
            None => (Snap::Done, json!({ "done": true, "epoch": self.epoch })),
        };
        let producer = snapshot_producer(&c.table.schema, &c.table.name);
        self.put(batch, &producer, &position.to_string()).await?;
        let done = matches!(snap, Snap::Done);
        self.snaps.insert(dotted.clone(), snap);
        self.ctx.stats.snapshot_rows.fetch_add(n, Ordering::Relaxed);
        self.ctx.stats.table(&dotted, |t| {
            t.snapshot_rows += n;
            if done {
                t.snapshot = SnapshotStatus::Complete;
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_follow_postgresql_rules_and_differ_per_stream() {
        for s in ["my-event.staging", "A_B", &"x".repeat(64)] {
            let n = slot_name(s);
            assert!(n.len() <= 63, "{n}");
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_ne!(slot_name("a-b"), slot_name("a.b"));
    }

    #[test]
    fn lsns_read_back() {
        assert_eq!(parse_lsn("1/6B374D48"), Some(0x1_6B37_4D48));
        assert_eq!(lsn_text(parse_lsn("0/16B3748").unwrap()), "0/16B3748");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn a_chunk_saw_exactly_the_transactions_its_snapshot_did() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.saw(99) && v.saw(100) && v.saw(102) && v.saw(104));
        assert!(!v.saw(101) && !v.saw(103) && !v.saw(105) && !v.saw(200));
        // Past a wraparound: xids of the snapshot's epoch.
        let w = Visibility::parse("4294967390:4294967400:").unwrap();
        assert!(w.saw(50) && !w.saw(110) && w.saw(u32::MAX));
    }
}
