//! Change data capture from MySQL 8 and MariaDB 10.x: a snapshot, then the
//! row-based binlog.
//!
//! # Snapshot without locks (DBLog's watermarks)
//!
//! The binlog is read from the position recorded when the stream started.
//! Meanwhile each selected table is read in primary-key chunks, on a second
//! connection, never locking anything. A chunk is framed by two watermark
//! writes to the `SnapshotWatermarkTable`: a low one before the SELECT and
//! a high one after. Both land in the binlog. Changes between them to a row
//! the chunk read make the read stale, so that row is dropped from the
//! chunk (the change itself is in the log, and it is newer); when the high
//! watermark arrives, the chunk's remaining rows are appended, as `r`
//! records, right there in binlog order. Every row is thus in the log as of
//! some moment, and every change after that moment follows it.
//!
//! # Positions
//!
//! Two kinds of producer mark the log (see `log`'s Producers): `binlog`,
//! the position after the last transaction whose changes are appended, and
//! `snapshot:<db>.<table>`, the key after which a table's snapshot goes on
//! (or that it is complete). A restart reads both and resumes exactly there:
//! a transaction or a chunk is appended whole or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine as _;
use futures::{FutureExt, StreamExt};
use mysql_async::binlog::events::{Event, EventData, RowsEventData};
use mysql_async::binlog::row::BinlogRow;
use mysql_async::binlog::value::BinlogValue;
use mysql_async::prelude::*;
use mysql_async::{BinlogStreamRequest, Conn, OptsBuilder, Params, Value};
use serde_json::{json, Value as Json};

use super::{
    envelope, flush_due, now_ms, watermarks, Change, Ctx, Origin, Position, SnapshotStatus,
    SourceError, CHUNK_ROWS, CONNECT_TIMEOUT, IDLE_MARK,
};
use crate::destination::warehouse::mirror::{write_defs, ColumnDef, TableDef, TableDefs};
use crate::spec::database::DatabaseSpec;
use crate::stream::Batch;

pub mod gtid;
pub mod value;
use gtid::{Gtid, GtidPos, GTID_EVENT};
use value::{to_json, Kind};

pub(super) const BINLOG: &str = "binlog";

fn retry(what: &str) -> impl Fn(mysql_async::Error) -> SourceError + '_ {
    move |e| SourceError::Retry(format!("{what}: {e}"))
}

fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

fn snapshot_producer(db: &str, table: &str) -> String {
    format!("snapshot:{db}.{table}")
}

/// A selected table.
#[derive(Debug)]
pub struct Table {
    pub db: Arc<str>,
    pub name: Arc<str>,
    /// Every column, in the table's order (the binlog's order).
    pub columns: Vec<Column>,
    /// The columns that identify a row (primary key or SurrogateKeys).
    pub key: Vec<usize>,
    pub estimated_rows: u64,
}

#[derive(Debug)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// Captured (Columns.Include/Exclude); unselected columns are read
    /// (the binlog has them) but not written.
    pub selected: bool,
}

impl Table {
    fn dotted(&self) -> String {
        format!("{}.{}", self.db, self.name)
    }

    /// A row image (every column's value, in order) as the record's
    /// object of selected columns.
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
}

fn opts(spec: &DatabaseSpec) -> OptsBuilder {
    OptsBuilder::default()
        .ip_or_hostname(spec.host.clone())
        .tcp_port(spec.port)
        .user(Some(spec.credentials.username.clone()))
        .pass(Some(spec.credentials.password.0.clone()))
        .prefer_socket(false)
        .init(vec!["SET time_zone = '+00:00'"])
}

async fn connect(spec: &DatabaseSpec) -> Result<Conn, SourceError> {
    let at = format!("{}:{}", spec.host, spec.port);
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts(spec))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(SourceError::Retry(format!("connecting to {at}: {e}"))),
        Err(_) => Err(SourceError::Retry(format!(
            "connecting to {at}: no answer in {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// A place in the binlog: its file and offset, and on MariaDB the GTID
/// position there too (`gtid`: None on MySQL, or where it is not known).
#[derive(Clone, Debug, PartialEq)]
struct At {
    file: String,
    pos: u64,
    gtid: Option<GtidPos>,
}

impl At {
    /// Whether reading resumes by GTID rather than file and offset: on
    /// MariaDB, once a GTID position is known (an empty one says nothing
    /// a server can look up).
    fn by_gtid(&self) -> Option<&GtidPos> {
        self.gtid.as_ref().filter(|g| !g.is_empty())
    }

    /// The position as the stream's log records it.
    fn mark(&self, epoch: u64) -> String {
        let mut m = json!({ "file": self.file, "pos": self.pos, "epoch": epoch });
        if let Some(g) = &self.gtid {
            m["gtid"] = Json::String(g.to_string());
        }
        m.to_string()
    }
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self.by_gtid() {
            Some(g) => write!(f, "GTID {g} ({}:{})", self.file, self.pos),
            None => write!(f, "{}:{}", self.file, self.pos),
        }
    }
}

/// The GTID position at a file and offset of a MariaDB binlog, if the
/// server still has that file.
async fn gtid_at(conn: &mut Conn, file: &str, pos: u64) -> Result<Option<GtidPos>, SourceError> {
    let g: Option<Option<String>> = conn
        .exec_first("SELECT BINLOG_GTID_POS(?, ?)", (file, pos))
        .await
        .map_err(retry("reading the GTID position"))?;
    match g.flatten() {
        Some(g) => GtidPos::parse(&g).map(Some).map_err(SourceError::Retry),
        None => Ok(None),
    }
}

/// The binlog settings change data capture needs, and the privilege to
/// read the binlog's position. Err says what to change. Ok: where the
/// binlog is now, and whether the server is MariaDB.
async fn check_server(conn: &mut Conn) -> Result<(At, bool), SourceError> {
    type Settings = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let row: Option<Settings> = conn
        .query_first("SELECT @@log_bin, @@binlog_format, @@binlog_row_image, @@version")
        .await
        .map_err(retry("reading the binlog settings"))?;
    let (log_bin, format, image, version) = row.unwrap_or_default();
    let mariadb = version.is_some_and(|v| v.contains("MariaDB"));
    let refuse = |m: String| Err(SourceError::Retry(m));
    if !matches!(log_bin.as_deref(), Some("1" | "ON")) {
        return refuse(
            "binary logging is off on the source: start the server with log_bin (e.g. --log-bin) \
             and binlog_format=ROW"
                .into(),
        );
    }
    if format.as_deref() != Some("ROW") {
        return refuse(format!(
            "binlog_format is {}: change data capture needs binlog_format=ROW",
            format.unwrap_or_default()
        ));
    }
    if image.as_deref() != Some("FULL") {
        return refuse(format!(
            "binlog_row_image is {}: change data capture needs binlog_row_image=FULL \
             (the before image of every column)",
            image.unwrap_or_default()
        ));
    }
    let (file, pos) = master_status(conn).await?;
    let gtid = match mariadb {
        true => gtid_at(conn, &file, pos).await?,
        false => None,
    };
    Ok((At { file, pos, gtid }, mariadb))
}

/// The binlog's current file and position.
async fn master_status(conn: &mut Conn) -> Result<(String, u64), SourceError> {
    let mut last = None;
    for q in ["SHOW MASTER STATUS", "SHOW BINARY LOG STATUS"] {
        match conn.query_first::<mysql_async::Row, _>(q).await {
            Ok(Some(row)) => {
                let file: Option<String> = row.get(0);
                let pos: Option<u64> = row.get(1);
                if let (Some(f), Some(p)) = (file, pos) {
                    return Ok((f, p));
                }
            }
            Ok(None) => {
                return Err(SourceError::Retry(
                    "SHOW MASTER STATUS returned nothing: is binary logging on (log_bin)?".into(),
                ))
            }
            Err(e) if matches!(server_code(&e), Some(1227 | 1142 | 1045)) => {
                return Err(SourceError::Retry(format!(
                    "reading the binlog position needs the REPLICATION CLIENT privilege \
                     (MariaDB: BINLOG MONITOR): {e}"
                )))
            }
            Err(e) => last = Some(e),
        }
    }
    Err(SourceError::Retry(format!(
        "reading the binlog position: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// The selected tables, with their columns and keys, as the server has
/// them now.
async fn discover(conn: &mut Conn, spec: &DatabaseSpec) -> Result<Vec<Table>, SourceError> {
    let rows: Vec<mysql_async::Row> = conn
        .query(
            "SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, \
                    c.DATETIME_PRECISION, c.CHARACTER_SET_NAME, c.CHARACTER_MAXIMUM_LENGTH, t.TABLE_ROWS \
             FROM information_schema.COLUMNS c JOIN information_schema.TABLES t \
               ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME \
             WHERE t.TABLE_TYPE = 'BASE TABLE' \
               AND c.TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') \
             ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION",
        )
        .await
        .map_err(retry("reading information_schema.COLUMNS"))?;
    let keys: Vec<(String, String, String)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE CONSTRAINT_NAME = 'PRIMARY' ORDER BY TABLE_SCHEMA, TABLE_NAME, ORDINAL_POSITION",
        )
        .await
        .map_err(retry("reading information_schema.KEY_COLUMN_USAGE"))?;
    // MariaDB's JSON is LONGTEXT with a json_valid() check.
    let json_checks: Vec<(String, String, String)> = conn
        .query(
            "SELECT CONSTRAINT_SCHEMA, TABLE_NAME, CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS",
        )
        .await
        .unwrap_or_default();
    let is_json = |db: &str, t: &str, col: &str| {
        let clause = format!("json_valid(`{col}`)");
        json_checks
            .iter()
            .any(|(d, tt, c)| d == db && tt == t && c.eq_ignore_ascii_case(&clause))
    };
    let mut pk: HashMap<(String, String), Vec<String>> = HashMap::new();
    for (d, t, c) in keys {
        pk.entry((d, t)).or_default().push(c);
    }
    let mut tables: Vec<Table> = Vec::new();
    for row in rows {
        let db: String = row.get(0).unwrap_or_default();
        let table: String = row.get(1).unwrap_or_default();
        if !spec.databases.selects(&[&db])
            || !spec.tables.selects(&[&db, &table])
            || (db == spec.watermark.0 && table == spec.watermark.1)
        {
            continue;
        }
        let name: String = row.get(2).unwrap_or_default();
        let data_type: String = row.get::<String, _>(3).unwrap_or_default().to_lowercase();
        let column_type: String = row.get::<String, _>(4).unwrap_or_default().to_lowercase();
        let fsp: Option<u64> = row.get::<Option<u64>, _>(5).flatten();
        let charset: Option<String> = row.get::<Option<String>, _>(6).flatten();
        let max_len: Option<u64> = row.get::<Option<u64>, _>(7).flatten();
        let estimated: u64 = row.get::<Option<u64>, _>(8).flatten().unwrap_or(0);
        let selected = spec.columns.selects(&[&db, &table, &name]);
        let kind = if data_type == "longtext" && is_json(&db, &table, &name) {
            Ok(Kind::Json)
        } else {
            Kind::of(&data_type, &column_type, fsp, charset.as_deref(), max_len)
        };
        let kind = match kind {
            Ok(k) => k,
            Err(_) if !selected => Kind::Text { latin1: false },
            Err(what) => {
                return Err(SourceError::Retry(format!(
                    "column {db}.{table}.{name} has {what}, which hydrant does not capture; \
                     leave it out with Columns.Exclude"
                )))
            }
        };
        let new_table = tables
            .last()
            .is_none_or(|t| &*t.db != db.as_str() || &*t.name != table.as_str());
        if new_table {
            tables.push(Table {
                db: db.as_str().into(),
                name: table.as_str().into(),
                columns: Vec::new(),
                key: Vec::new(),
                estimated_rows: estimated,
            });
        }
        tables.last_mut().unwrap().columns.push(Column {
            name,
            kind,
            selected,
        });
    }
    for t in &mut tables {
        let dotted = t.dotted();
        let (names, how) = match spec.surrogate_keys.get(&dotted) {
            Some(cols) => (cols.clone(), "SurrogateKeys"),
            None => match pk.get(&(t.db.to_string(), t.name.to_string())) {
                Some(cols) => (cols.clone(), "primary key"),
                None => {
                    return Err(SourceError::Retry(format!(
                        "table {dotted} has no primary key: name the columns that identify its rows in \
                         SurrogateKeys ({dotted}.<column>), or leave it out with Tables.Exclude"
                    )))
                }
            },
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

/// Creates the watermark table if it is missing.
async fn watermark_table(conn: &mut Conn, spec: &DatabaseSpec) -> Result<(), SourceError> {
    let (db, t) = &spec.watermark;
    let exists: Option<u8> = conn
        .exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ?",
            (db, t),
        )
        .await
        .map_err(retry("looking for the watermark table"))?;
    if exists.is_some() {
        return Ok(());
    }
    conn.query_drop(format!(
        "CREATE DATABASE IF NOT EXISTS {db_q}; \
         CREATE TABLE IF NOT EXISTS {db_q}.{} (stream VARCHAR(255) NOT NULL PRIMARY KEY, \
         watermark VARCHAR(64) NOT NULL) ENGINE=InnoDB",
        quote(t),
        db_q = quote(db),
    ))
    .await
    .map_err(|e| {
        SourceError::Retry(format!(
            "SnapshotWatermarkTable {db}.{t} is missing and could not be created \
             (hydrant creates it, and its database, with the CREATE privilege; it writes it with INSERT and UPDATE): {e}"
        ))
    })
}

fn server_id(stream: &str) -> u32 {
    // Unique among the server's replicas in practice, and stable for the
    // stream: a restarted hydrant replaces its own old connection.
    (crc32c::crc32c(stream.as_bytes()) & 0x0fff_ffff) | 0x4000_0000
}

/// The binlog from `at` on. MariaDB is told hydrant reads GTID events
/// (capability 4), and, where the GTID position is known, asked for the
/// events after it, strictly: a server whose binlog does not hold that
/// position says so rather than starting elsewhere.
async fn open_binlog(
    spec: &DatabaseSpec,
    stream: &str,
    at: &At,
    mariadb: bool,
) -> Result<mysql_async::BinlogStream, SourceError> {
    let mut conn = connect(spec).await?;
    let mut request = BinlogStreamRequest::new(server_id(stream));
    if mariadb {
        let mut set = "SET @mariadb_slave_capability=4".to_owned();
        if let Some(g) = at.by_gtid() {
            // Digits, dashes and commas only: GtidPos prints nothing else.
            set += &format!(", @slave_connect_state='{g}', @slave_gtid_strict_mode=1");
        }
        conn.query_drop(set)
            .await
            .map_err(retry("asking for GTID events"))?;
    }
    if at.by_gtid().is_none() {
        request = request.with_filename(at.file.as_bytes()).with_pos(at.pos);
    }
    conn.get_binlog_stream(request)
        .await
        .map_err(|e| binlog_error(e, at))
}

fn binlog_error(e: mysql_async::Error, at: &At) -> SourceError {
    match server_code(&e) {
        Some(1236) => SourceError::Failed(format!(
            "the binlog no longer holds hydrant's position {at} (purged while hydrant was behind \
             or stopped, or a server that never had it?): {e}; changes after it cannot be read, so \
             the stream stops; re-create it to snapshot again"
        )),
        Some(1227 | 1045 | 1142) => SourceError::Retry(format!(
            "reading the binlog needs the REPLICATION SLAVE privilege (MariaDB: REPLICATION SLAVE): {e}"
        )),
        _ => SourceError::Retry(format!("reading the binlog at {at}: {e}")),
    }
}

/// A rotate event's file name, less the CRC-32 checksum that ends the
/// event when the name's last four bytes are that of the event before them.
fn without_checksum<'n>(event: &Event, name: &'n [u8]) -> &'n [u8] {
    let Some(cut) = name.len().checked_sub(4) else {
        return name;
    };
    let h = event.header();
    let data = event.data();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&h.timestamp().to_le_bytes());
    crc.update(&[h.event_type_raw()]);
    crc.update(&h.server_id().to_le_bytes());
    crc.update(&h.event_size().to_le_bytes());
    crc.update(&h.log_pos().to_le_bytes());
    crc.update(&h.flags_raw().to_le_bytes());
    crc.update(&data[..data.len() - 4]);
    match crc.finalize().to_le_bytes() == name[cut..] {
        true => &name[..cut],
        false => name,
    }
}

/// The checks run when a stream is created, so that a source that cannot
/// work is refused with what to change.
pub async fn check(spec: &DatabaseSpec, stream: &str) -> Result<(), String> {
    async {
        let mut conn = connect(spec).await?;
        let (now, mariadb) = check_server(&mut conn).await?;
        let tables = discover(&mut conn, spec).await?;
        if tables.is_empty() {
            return Err(SourceError::Retry(
                "no table matches Databases and Tables (Include, less Exclude)".into(),
            ));
        }
        for t in &tables {
            conn.query_drop(format!(
                "SELECT 1 FROM {}.{} LIMIT 0",
                quote(&t.db),
                quote(&t.name)
            ))
            .await
            .map_err(|e| {
                SourceError::Retry(format!(
                    "reading {} needs the SELECT privilege: {e}",
                    t.dotted()
                ))
            })?;
        }
        watermark_table(&mut conn, spec).await?;
        let _ = conn.disconnect().await;
        // Reading the binlog needs REPLICATION SLAVE: ask for it once.
        let mut binlog = open_binlog(spec, &format!("{stream}-check"), &now, mariadb).await?;
        if let Some(Err(e)) = binlog.next().await {
            return Err(binlog_error(e, &now));
        }
        let _ = binlog.close().await;
        Ok(())
    }
    .await
    .map_err(|e: SourceError| e.to_string())
}

/// A snapshot position: the key values after which to read on, tagged by
/// their protocol type so they bind back exactly.
fn tag(v: &Value) -> Json {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match v {
        Value::NULL => Json::Null,
        Value::Bytes(b) => json!({ "b": b64(b) }),
        Value::Int(i) => json!({ "i": i }),
        Value::UInt(u) => json!({ "u": u }),
        Value::Float(f) => json!({ "f": *f as f64 }),
        Value::Double(d) => json!({ "f": d }),
        Value::Date(y, mo, d, h, mi, s, us) => json!({ "d": [y, mo, d, h, mi, s, us] }),
        Value::Time(neg, d, h, mi, s, us) => json!({ "t": [neg, d, h, mi, s, us] }),
    }
}

fn untag(j: &Json) -> Option<Value> {
    let o = j.as_object()?;
    let n = |a: &Json, i: usize| a.get(i).and_then(Json::as_u64);
    Some(if let Some(b) = o.get("b") {
        Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(b.as_str()?)
                .ok()?,
        )
    } else if let Some(i) = o.get("i") {
        Value::Int(i.as_i64()?)
    } else if let Some(u) = o.get("u") {
        Value::UInt(u.as_u64()?)
    } else if let Some(f) = o.get("f") {
        Value::Double(f.as_f64()?)
    } else if let Some(d) = o.get("d") {
        Value::Date(
            n(d, 0)? as u16,
            n(d, 1)? as u8,
            n(d, 2)? as u8,
            n(d, 3)? as u8,
            n(d, 4)? as u8,
            n(d, 5)? as u8,
            n(d, 6)? as u32,
        )
    } else if let Some(t) = o.get("t") {
        Value::Time(
            t.get(0)?.as_bool()?,
            n(t, 1)? as u32,
            n(t, 2)? as u8,
            n(t, 3)? as u8,
            n(t, 4)? as u8,
            n(t, 5)? as u32,
        )
    } else {
        return None;
    })
}

/// Where a table's snapshot is.
#[derive(Debug, Clone)]
enum Snap {
    /// Read on after these key values (from the start with none).
    After(Option<Vec<Value>>),
    Done,
}

/// A table's snapshot position, if it belongs to this `epoch` (each
/// requested snapshot starts a new one).
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
    match j["after"].as_array() {
        Some(a) => Snap::After(a.iter().map(untag).collect()),
        None => Snap::After(None),
    }
}

/// A chunk read between its watermarks, waiting for the high one.
struct Chunk {
    table: Arc<Table>,
    low: String,
    high: String,
    /// The low watermark has been seen: changes now make rows stale.
    open: bool,
    /// Key (as JSON text) to the row's values, in key order.
    rows: Vec<(String, Vec<Json>)>,
    stale: HashSet<String>,
    /// The last key read, to go on after; None when the table is done.
    next: Option<Vec<Value>>,
}

/// A change waiting for its transaction's commit.
struct Pending {
    change: Change,
    pos: u64,
    row: usize,
    /// Keys (JSON text) the change touches, for stale snapshot rows.
    keys: Vec<String>,
}

struct Reader<'a> {
    ctx: &'a Ctx,
    conn: Conn,
    tables: HashMap<(String, String), Arc<Table>>,
    snaps: BTreeMap<String, Snap>,
    file: String,
    /// The position after the last commit read.
    pos: u64,
    /// MariaDB: the GTID position there (None where it is not known).
    gtid: Option<GtidPos>,
    /// The GTID of the event group being read.
    txn_gtid: Option<Gtid>,
    /// Reading was asked for by GTID, so the server's first, artificial,
    /// rotate names the file it starts in, which hydrant does not know.
    first_rotate_names: bool,
    marked: (String, u64),
    marked_at: Instant,
    txn: Vec<Pending>,
    /// Which requested snapshot this is (0: the stream's first).
    epoch: u64,
    /// This connection's format description has arrived (see RotateEvent).
    described: bool,
    /// A watermark write seen in the current transaction: (is it ours, mark).
    txn_marks: Vec<String>,
    batch: Batch,
    /// When the oldest change in `batch` was read.
    batch_since: Option<Instant>,
    chunk: Option<Chunk>,
}

/// Reads until an error: the snapshot, then the binlog, appending as it goes.
pub(super) async fn run(ctx: &Ctx) -> Result<(), SourceError> {
    let spec = &ctx.spec;
    let stream = &ctx.stream;
    let mut conn = connect(spec).await?;
    let (now, mariadb) = check_server(&mut conn).await?;
    watermark_table(&mut conn, spec).await?;
    let recorded: Option<Json> = stream
        .log
        .position(BINLOG)
        .map(|p| serde_json::from_str(&p).unwrap_or(Json::Null));
    let (start, epoch) = match recorded {
        Some(j) if j["restart"].is_u64() => {
            // A snapshot was asked for: from now on, every table afresh,
            // each first emptied (a `t` record) of what came before.
            let epoch = j["restart"].as_u64().unwrap_or(0);
            let tables = discover(&mut conn, spec).await?;
            let mut batch = Batch::default();
            let now_ms = now_ms();
            for (i, t) in tables.iter().enumerate() {
                let change = Change::truncate(&t.db, &t.name);
                let origin = Origin {
                    connector: "mysql",
                    stream: &stream.spec.name,
                    database: None,
                    position: Position::Binlog {
                        file: &now.file,
                        pos: now.pos,
                        gtid: None,
                    },
                    row: i,
                    commit_ms: now_ms,
                    xid: None,
                    snapshot: true,
                };
                batch.push(now_ms, &envelope(&change, &origin));
            }
            stream
                .put_marked(batch, BINLOG, &now.mark(epoch))
                .await
                .map_err(|e| SourceError::Retry(format!("recording the start position: {e}")))?;
            (now, epoch)
        }
        Some(j) => {
            let unreadable =
                || SourceError::Failed(format!("the recorded binlog position {j} is unreadable"));
            let (Some(file), Some(pos)) = (j["file"].as_str(), j["pos"].as_u64()) else {
                return Err(unreadable());
            };
            let gtid = match j["gtid"].as_str() {
                Some(g) => Some(GtidPos::parse(g).map_err(|_| unreadable())?),
                // Recorded without one: where the server still has the
                // file, it knows the GTID position there.
                None if mariadb => gtid_at(&mut conn, file, pos).await?,
                None => None,
            };
            let at = At {
                file: file.to_owned(),
                pos,
                gtid: gtid.filter(|_| mariadb),
            };
            (at, j["epoch"].as_u64().unwrap_or(0))
        }
        None => {
            // The first start: the binlog from now on, and every table's
            // snapshot. The start is recorded before anything is read.
            stream
                .put_marked(Batch::default(), BINLOG, &now.mark(0))
                .await
                .map_err(|e| SourceError::Retry(format!("recording the start position: {e}")))?;
            (now, 0)
        }
    };
    let mut reader = Reader {
        ctx,
        conn,
        tables: HashMap::new(),
        snaps: BTreeMap::new(),
        file: start.file.clone(),
        pos: start.pos,
        gtid: start.gtid.clone(),
        txn_gtid: None,
        first_rotate_names: start.by_gtid().is_some(),
        marked: (start.file.clone(), start.pos),
        marked_at: Instant::now(),
        txn: Vec::new(),
        epoch,
        described: false,
        txn_marks: Vec::new(),
        batch: Batch::default(),
        batch_since: None,
        chunk: None,
    };
    reader.reload(false).await?;
    *ctx.stats.position.lock().unwrap() = start.to_string();
    let mut binlog = open_binlog(spec, &stream.spec.name, &start, mariadb).await?;
    ctx.stats.last_error.lock().unwrap().take();
    loop {
        if reader.chunk.is_none() {
            reader.next_chunk().await?;
        }
        let event = match binlog.next().now_or_never() {
            Some(e) => e,
            None => {
                reader.flush(false).await?;
                ctx.stats.behind_ms.store(0, Ordering::Relaxed);
                tokio::select! {
                    e = binlog.next() => e,
                    _ = tokio::time::sleep(IDLE_MARK) => continue,
                }
            }
        };
        let event = match event {
            Some(Ok(e)) => e,
            Some(Err(e)) => return Err(binlog_error(e, &reader.at())),
            None => {
                return Err(SourceError::Retry(format!(
                    "the server at {}:{} closed the binlog stream",
                    spec.host, spec.port
                )))
            }
        };
        reader.event(&binlog, event).await?;
    }
}

impl Reader<'_> {
    fn at(&self) -> At {
        At {
            file: self.file.clone(),
            pos: self.pos,
            gtid: self.gtid.clone(),
        }
    }

    /// Reads the selected tables' definitions again (at start, and after
    /// DDL). A table seen for the first time mid-stream was created after
    /// the position: the binlog has all its rows, so it needs no snapshot.
    async fn reload(&mut self, mid_stream: bool) -> Result<(), SourceError> {
        let tables = discover(&mut self.conn, &self.ctx.spec).await?;
        // What a destination needs to know of the tables (the mirror's
        // column types and keys), before any change of them is appended.
        let defs: TableDefs = tables
            .iter()
            .map(|t| {
                let def = TableDef {
                    columns: t
                        .columns
                        .iter()
                        .filter(|c| c.selected)
                        .map(|c| ColumnDef {
                            name: c.name.clone(),
                            kind: c.kind.portable().to_string(),
                        })
                        .collect(),
                    key: t.key.iter().map(|&i| t.columns[i].name.clone()).collect(),
                };
                (t.dotted(), def)
            })
            .collect();
        write_defs(self.ctx.stream.dir(), &defs)
            .map_err(|e| SourceError::Retry(format!("recording the tables' definitions: {e}")))?;
        let mut fresh = Vec::new();
        self.tables.clear();
        for t in tables {
            let dotted = t.dotted();
            if !self.snaps.contains_key(&dotted) {
                let producer = snapshot_producer(&t.db, &t.name);
                let snap = match self.ctx.stream.log.position(&producer) {
                    None if mid_stream => {
                        fresh.push(producer);
                        Snap::Done
                    }
                    p => parse_snap(p, self.epoch),
                };
                let done = matches!(snap, Snap::Done);
                self.ctx.stats.table(&dotted, |s| {
                    s.estimated_rows = t.estimated_rows;
                    if done {
                        s.snapshot = SnapshotStatus::Complete;
                    }
                });
                self.snaps.insert(dotted, snap);
            }
            self.tables
                .insert((t.db.to_string(), t.name.to_string()), Arc::new(t));
        }
        for producer in fresh {
            let done = json!({ "done": true, "epoch": self.epoch }).to_string();
            self.put(Batch::default(), &producer, &done).await?;
        }
        Ok(())
    }

    async fn put(&self, batch: Batch, producer: &str, position: &str) -> Result<(), SourceError> {
        self.ctx
            .stream
            .put_marked(batch, producer, position)
            .await
            .map(|_| ())
            .map_err(|e| SourceError::Retry(format!("appending to the stream's log: {e}")))
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
        let Some(table) = self.tables.values().find(|t| t.dotted() == dotted).cloned() else {
            // Dropped since: nothing left to read.
            self.snaps.insert(dotted, Snap::Done);
            return Ok(());
        };
        let (wdb, wt) = &self.ctx.spec.watermark;
        let mark_sql = format!(
            "INSERT INTO {}.{} (stream, watermark) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE watermark = VALUES(watermark)",
            quote(wdb),
            quote(wt)
        );
        let name = self.ctx.stream.spec.name.clone();
        let low = uuid::Uuid::new_v4().to_string();
        self.conn
            .exec_drop(&mark_sql, (name.clone(), low.clone()))
            .await
            .map_err(retry("writing the low watermark"))?;
        let cols: Vec<String> = table.columns.iter().map(|c| quote(&c.name)).collect();
        let keys: Vec<String> = table
            .key
            .iter()
            .map(|&i| quote(&table.columns[i].name))
            .collect();
        let order = keys.join(", ");
        let (condition, params) = match &after {
            None => (String::new(), Params::Empty),
            Some(v) if v.len() == 1 => (
                format!("WHERE {} > ?", keys[0]),
                Params::Positional(v.clone()),
            ),
            Some(v) => (
                format!("WHERE ({order}) > ({})", vec!["?"; v.len()].join(", ")),
                Params::Positional(v.clone()),
            ),
        };
        let sql = format!(
            "SELECT {} FROM {}.{} {condition} ORDER BY {order} LIMIT {CHUNK_ROWS}",
            cols.join(", "),
            quote(&table.db),
            quote(&table.name)
        );
        let read: Vec<mysql_async::Row> = self.conn.exec(sql, params).await.map_err(|e| {
            SourceError::Retry(format!("reading a snapshot chunk of {dotted}: {e}"))
        })?;
        let high = uuid::Uuid::new_v4().to_string();
        self.conn
            .exec_drop(&mark_sql, (name, high.clone()))
            .await
            .map_err(retry("writing the high watermark"))?;
        let full = read.len() == CHUNK_ROWS;
        let mut rows = Vec::with_capacity(read.len());
        let mut last = None;
        for row in read {
            let values = row.unwrap();
            let json: Vec<Json> = table
                .columns
                .iter()
                .zip(&values)
                .map(|(c, v)| to_json(&c.kind, v, false))
                .collect();
            let key = table.key(&json).to_string();
            last = Some(
                table
                    .key
                    .iter()
                    .map(|&i| values[i].clone())
                    .collect::<Vec<_>>(),
            );
            rows.push((key, json));
        }
        self.chunk = Some(Chunk {
            table,
            low,
            high,
            open: false,
            rows,
            stale: HashSet::new(),
            next: if full { last } else { None },
        });
        Ok(())
    }

    /// Appends what is waiting with the position it brings the binlog to.
    /// With nothing waiting, records the position now and then (`force`:
    /// now), so a restart does not read far back.
    async fn flush(&mut self, force: bool) -> Result<(), SourceError> {
        if self.batch.is_empty()
            && ((self.file == self.marked.0 && self.pos == self.marked.1)
                || (!force && self.marked_at.elapsed() < IDLE_MARK))
        {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_since = None;
        let at = self.at();
        self.put(batch, BINLOG, &at.mark(self.epoch)).await?;
        *self.ctx.stats.position.lock().unwrap() = at.to_string();
        self.marked = (at.file, at.pos);
        self.marked_at = Instant::now();
        Ok(())
    }

    async fn event(
        &mut self,
        binlog: &mysql_async::BinlogStream,
        event: Event,
    ) -> Result<(), SourceError> {
        let header = event.header();
        let end = header.log_pos() as u64;
        let start = end.saturating_sub(header.event_size() as u64);
        let data = event.read_data().map_err(|e| {
            SourceError::Retry(format!(
                "decoding a binlog event at {}:{start}: {e}",
                self.file
            ))
        })?;
        if header.event_type_raw() == GTID_EVENT && self.gtid.is_some() {
            let g = Gtid::from_event(header.server_id(), event.data()).ok_or_else(|| {
                SourceError::Retry(format!(
                    "a GTID event at {}:{start} is {} bytes, too short for a GTID",
                    self.file,
                    event.data().len()
                ))
            })?;
            self.txn_gtid = Some(g);
            return Ok(());
        }
        let Some(data) = data else { return Ok(()) };
        match data {
            EventData::FormatDescriptionEvent(_) => self.described = true,
            // The server's first event is an artificial rotate naming where
            // reading starts. That is known, unless reading was asked for
            // by GTID; the event arrives before the checksum algorithm
            // does, so its name may end in the event's checksum. Later
            // rotates (to the next file, after a restart of the server)
            // and real ones name the file reading goes on in.
            EventData::RotateEvent(r) if self.described || self.first_rotate_names => {
                let name = match self.described {
                    true => r.name_raw(),
                    false => without_checksum(&event, r.name_raw()),
                };
                let name = String::from_utf8_lossy(name).into_owned();
                self.first_rotate_names = false;
                if name.is_empty() || name.len() > 512 || name.chars().any(|c| c.is_control()) {
                    return Err(SourceError::Failed(format!(
                        "the binlog rotated to a file named {name:?} after {}:{start}, which is not a file name",
                        self.file
                    )));
                }
                self.file = name;
                self.pos = r.position();
            }
            EventData::QueryEvent(q) => {
                let query = q.query();
                let word = query
                    .trim_start()
                    .split(|c: char| c.is_whitespace() || c == ';')
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                match word.as_str() {
                    "BEGIN" | "XA" | "SAVEPOINT" => {}
                    "COMMIT" => self.commit(end, header.timestamp(), None).await?,
                    "ROLLBACK" => {
                        // The group is over, with nothing to hand on.
                        self.txn.clear();
                        self.pos = end;
                        if let (Some(state), Some(g)) = (&mut self.gtid, self.txn_gtid.take()) {
                            state.advance(g);
                        }
                    }
                    _ => {
                        // DDL (and statements on non-captured engines):
                        // each is its own transaction.
                        let schema = q.schema().into_owned();
                        self.ddl(&query, &schema, start, end, header.timestamp())
                            .await?;
                    }
                }
            }
            EventData::XidEvent(x) => self.commit(end, header.timestamp(), Some(x.xid)).await?,
            EventData::RowsEvent(rows) => self.rows(binlog, rows, start).await?,
            _ => {}
        }
        Ok(())
    }

    async fn rows(
        &mut self,
        binlog: &mysql_async::BinlogStream,
        rows: RowsEventData<'_>,
        start: u64,
    ) -> Result<(), SourceError> {
        let Some(tme) = binlog.get_tme(rows.table_id()) else {
            return Ok(());
        };
        let (db, name) = (tme.database_name(), tme.table_name());
        let (wdb, wt) = &self.ctx.spec.watermark;
        if db == wdb.as_str() && name == wt.as_str() {
            for r in rows.rows(tme) {
                let (_, after) = r.map_err(|e| self.decode_error(&db, &name, start, e))?;
                if let Some(after) = after {
                    let text = |i: usize| match after.as_ref(i) {
                        Some(BinlogValue::Value(Value::Bytes(b))) => {
                            Some(String::from_utf8_lossy(b).into_owned())
                        }
                        _ => None,
                    };
                    if text(0).as_deref() == Some(self.ctx.stream.spec.name.as_str()) {
                        if let Some(m) = text(1) {
                            self.txn_marks.push(m);
                        }
                    }
                }
            }
            return Ok(());
        }
        let key = (db.to_string(), name.to_string());
        let table = match self.tables.get(&key) {
            Some(t) => t.clone(),
            None => return Ok(()),
        };
        let op = match &rows {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => 'c',
            RowsEventData::UpdateRowsEvent(_) | RowsEventData::UpdateRowsEventV1(_) => 'u',
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => 'd',
            RowsEventData::PartialUpdateRowsEvent(_) => {
                return Err(SourceError::Failed(format!(
                    "{}.{} has a partial JSON update in the binlog at {}:{start}: set \
                     binlog_row_value_options='' so updates carry whole rows",
                    db, name, self.file
                )))
            }
        };
        if rows.num_columns() as usize != table.columns.len() {
            return Err(SourceError::Failed(format!(
                "the binlog at {}:{start} has {} columns for {}, but the table has {} now: \
                 its definition changed while hydrant was behind it",
                self.file,
                rows.num_columns(),
                table.dotted(),
                table.columns.len()
            )));
        }
        for (i, r) in rows.rows(tme).enumerate() {
            let (before, after) = r.map_err(|e| self.decode_error(&db, &name, start, e))?;
            let before = before.map(|r| decode(&table, r));
            let after = after.map(|r| decode(&table, r));
            let mut keys = Vec::new();
            let key = match (&before, &after) {
                (_, Some(a)) => table.key(a),
                (Some(b), None) => table.key(b),
                (None, None) => continue,
            };
            if let Some(b) = &before {
                keys.push(table.key(b).to_string());
            }
            if let Some(a) = &after {
                keys.push(table.key(a).to_string());
            }
            self.txn.push(Pending {
                change: Change {
                    op,
                    db: table.db.clone(),
                    table: table.name.clone(),
                    key,
                    before: before.map_or(Json::Null, |b| table.image(&b)),
                    after: after.map_or(Json::Null, |a| table.image(&a)),
                },
                pos: start,
                row: i,
                keys,
            });
        }
        Ok(())
    }

    fn decode_error(&self, db: &str, t: &str, start: u64, e: std::io::Error) -> SourceError {
        SourceError::Failed(format!(
            "decoding a row of {db}.{t} in the binlog at {}:{start}: {e}",
            self.file
        ))
    }

    async fn ddl(
        &mut self,
        query: &str,
        schema: &str,
        start: u64,
        end: u64,
        ts: u32,
    ) -> Result<(), SourceError> {
        let words: Vec<String> = query
            .split_whitespace()
            .take(4)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let ddl = ["ALTER", "CREATE", "DROP", "RENAME", "TRUNCATE"]
            .contains(&words.first().map(String::as_str).unwrap_or(""));
        if words.first().map(String::as_str) == Some("TRUNCATE") {
            // A truncate leaves no row events: say it as a change.
            let named = query
                .split_whitespace()
                .nth(if words.get(1).map(String::as_str) == Some("TABLE") {
                    2
                } else {
                    1
                })
                .unwrap_or("")
                .trim_end_matches(';')
                .replace('`', "");
            let (db, t) = match named.split_once('.') {
                Some((d, t)) => (d.to_owned(), t.to_owned()),
                None => (schema.to_owned(), named.clone()),
            };
            if let Some(table) = self.tables.get(&(db, t)).cloned() {
                self.txn.push(Pending {
                    change: Change::truncate(&table.db, &table.name),
                    pos: start,
                    row: 0,
                    keys: Vec::new(),
                });
                if let Some(c) = &mut self.chunk {
                    if Arc::ptr_eq(&c.table, &table) && c.open {
                        for (k, _) in &c.rows {
                            c.stale.insert(k.clone());
                        }
                    }
                }
            }
        }
        self.commit(end, ts, None).await?;
        if ddl {
            // The records before it are in; read the definitions again.
            self.flush(true).await?;
            self.reload(true).await?;
        }
        Ok(())
    }

    async fn commit(&mut self, end: u64, ts: u32, xid: Option<u64>) -> Result<(), SourceError> {
        self.pos = end;
        let commit_ms = ts as i64 * 1000;
        let stats = &self.ctx.stats;
        let name = self.ctx.stream.spec.name.clone();
        let now = now_ms();
        let n = self.txn.len();
        let gtid = self.txn_gtid.take();
        let gtid_text = gtid.map(|g| g.to_string());
        if let (Some(state), Some(g)) = (&mut self.gtid, gtid) {
            state.advance(g);
        }
        for p in self.txn.drain(..) {
            if let Some(c) = &mut self.chunk {
                if c.open && *c.table.db == *p.change.db && *c.table.name == *p.change.table {
                    c.stale.extend(p.keys.iter().cloned());
                }
            }
            let origin = Origin {
                connector: "mysql",
                stream: &name,
                database: None,
                position: Position::Binlog {
                    file: &self.file,
                    pos: p.pos,
                    gtid: gtid_text.as_deref(),
                },
                row: p.row,
                commit_ms,
                xid,
                snapshot: false,
            };
            self.batch.push(now, &envelope(&p.change, &origin));
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
            // Nothing waiting: record the position now and then.
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Appends the rows of the chunk whose high watermark has just
    /// committed (less those changed since its low one), with the table's
    /// new snapshot position.
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
                db: c.table.db.clone(),
                table: c.table.name.clone(),
                key: c.table.key(values),
                before: Json::Null,
                after: c.table.image(values),
            };
            let origin = Origin {
                connector: "mysql",
                stream: &name,
                database: None,
                position: Position::Binlog {
                    file: &self.file,
                    pos: self.pos,
                    gtid: None,
                },
                row: i,
                commit_ms: now,
                xid: None,
                snapshot: true,
            };
            batch.push(now, &envelope(&change, &origin));
            n += 1;
        }
        let (snap, position) = match &c.next {
            Some(last) => (
                Snap::After(Some(last.clone())),
                json!({ "after": last.iter().map(tag).collect::<Vec<_>>(), "epoch": self.epoch }),
            ),
            None => (Snap::Done, json!({ "done": true, "epoch": self.epoch })),
        };
        let producer = snapshot_producer(&c.table.db, &c.table.name);
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

/// A binlog row image as JSON values, column by column.
fn decode(table: &Table, mut row: BinlogRow) -> Vec<Json> {
    (0..table.columns.len())
        .map(|i| {
            let kind = &table.columns[i].kind;
            match row.take(i) {
                None => Json::Null,
                Some(BinlogValue::Value(v)) => to_json(kind, &v, true),
                Some(other) => match Value::try_from(other) {
                    Ok(v) => to_json(kind, &v, true),
                    Err(_) => Json::Null,
                },
            }
        })
        .collect()
}
