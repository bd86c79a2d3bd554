//! Sources: what feeds a stream's log besides the front door.
//!
//! A source appends its records with the position they bring it to, in one
//! write ([`Stream::put_marked`]): after a crash the log says exactly where
//! the source got to, and it resumes there. Nothing is appended twice,
//! nothing is skipped. That is the whole seam: a source owns its reading,
//! the log owns durability, and delivery does not know where records came
//! from.
//!
//! The sources today are change data capture from MySQL and MariaDB
//! (`mysql`: the row-based binlog) and from PostgreSQL (`postgres`:
//! logical replication with pgoutput). Both take a snapshot of the
//! selected tables, reconciled with the change stream through watermarks
//! so the source is never locked, then follow the stream, and both write
//! the one change record below.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value as Json;
use tokio::sync::watch;

use crate::spec::database::{DatabaseSpec, Engine};
use crate::stream::Stream;

pub mod mysql;
pub mod postgres;

/// Rows per snapshot chunk.
pub(crate) const CHUNK_ROWS: usize = 4096;
/// Changes appended in one write at most (a large transaction is still
/// appended whole, in one write).
pub(crate) const FLUSH_RECORDS: u64 = 8192;
pub(crate) const FLUSH_BYTES: usize = 8 << 20;
/// The longest a change waits to be appended while the stream keeps
/// coming (a busy server never leaves the reader idle).
pub(crate) const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// How often the source position is recorded when nothing selected changes.
pub(crate) const IDLE_MARK: Duration = Duration::from_secs(5);
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a source stopped reading.
#[derive(Debug)]
pub enum SourceError {
    /// Worth retrying: the server is down, a connection dropped, a
    /// privilege is missing (and may be granted).
    Retry(String),
    /// Not until someone acts: the position hydrant must resume at is gone
    /// from the server.
    Failed(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Retry(m) | SourceError::Failed(m) => f.write_str(m),
        }
    }
}

/// A table's snapshot, as Describe's SnapshotInfo reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotStatus {
    InProgress,
    Complete,
}

impl SnapshotStatus {
    /// As Describe's SnapshotInfo and `/-/streams` name it.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::InProgress => "IN_PROGRESS",
            SnapshotStatus::Complete => "COMPLETE",
        }
    }
}

#[derive(Debug, Clone)]
pub struct TableStats {
    pub snapshot: SnapshotStatus,
    /// Rows the snapshot has appended.
    pub snapshot_rows: u64,
    /// Row rows in the table when its snapshot started (an estimate, from
    /// `information_schema`), for progress.
    pub estimated_rows: u64,
    pub requested_ms: i64,
    /// Changes appended from the binlog.
    pub changes: u64,
    /// The table's last change appended: its commit time (ms), and how far
    /// behind that it was appended (ms).
    pub last_commit_ms: i64,
    pub behind_ms: i64,
}

/// What a running source reports: to Describe, `/-/streams`, metrics and
/// the dashboard.
#[derive(Default)]
pub struct SourceStats {
    pub tables: Mutex<BTreeMap<String, TableStats>>,
    /// The last error and when (ms); cleared when reading goes on.
    pub last_error: Mutex<Option<(String, i64)>>,
    /// Set when the source stopped for good (a purged position).
    pub failed: Mutex<Option<String>>,
    /// Commit time (ms) of the last change appended, and how far behind
    /// the source's clock it was when appended (ms; 0 when caught up).
    pub last_commit_ms: AtomicI64,
    pub behind_ms: AtomicI64,
    pub changes: AtomicU64,
    pub snapshot_rows: AtomicU64,
    pub reconnects: AtomicU64,
    /// Where the source is: `file:pos` in the binlog, `slot at LSN`.
    pub position: Mutex<String>,
    /// PostgreSQL: the replication slot (and publication) hydrant reads.
    pub slot: Mutex<Option<String>>,
}

impl SourceStats {
    fn error(&self, m: &str) {
        *self.last_error.lock().unwrap() = Some((m.to_owned(), now_ms()));
    }

    /// A transaction's `n` changes, committed at `commit_ms`, appended at
    /// `now` (ms).
    pub(crate) fn committed(&self, n: usize, commit_ms: i64, now: i64) {
        if n == 0 {
            return;
        }
        self.changes.fetch_add(n as u64, Ordering::Relaxed);
        self.last_commit_ms.store(commit_ms, Ordering::Relaxed);
        self.behind_ms
            .store((now - commit_ms).max(0), Ordering::Relaxed);
    }

    /// One change of `table`, committed at `commit_ms`, appended at `now`.
    pub(crate) fn changed(&self, table: &str, commit_ms: i64, now: i64) {
        self.table(table, |t| {
            t.changes += 1;
            t.last_commit_ms = commit_ms;
            t.behind_ms = (now - commit_ms).max(0);
        });
    }

    pub(crate) fn table(&self, name: &str, f: impl FnOnce(&mut TableStats)) {
        let mut tables = self.tables.lock().unwrap();
        let t = tables.entry(name.to_owned()).or_insert(TableStats {
            snapshot: SnapshotStatus::InProgress,
            snapshot_rows: 0,
            estimated_rows: 0,
            requested_ms: now_ms(),
            changes: 0,
            last_commit_ms: 0,
            behind_ms: 0,
        });
        f(t)
    }
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The watermarks a committed transaction wrote, against a chunk's: its
/// low one opens the chunk (changes from now on make its rows stale); true
/// when its high one follows, and the chunk is to be appended.
pub(crate) fn watermarks(marks: &[String], low: &str, high: &str, open: &mut bool) -> bool {
    let mut reached = false;
    for m in marks {
        if m == low {
            *open = true;
        } else if m == high && *open {
            reached = true;
        }
    }
    reached
}

/// Whether changes waiting since `since` are due to be appended, though
/// more keep coming: a full write, or the longest wait (`FLUSH_AFTER`).
pub(crate) fn flush_due(batch: &crate::stream::Batch, since: Option<std::time::Instant>) -> bool {
    batch.len() >= FLUSH_RECORDS
        || batch.data_bytes() as usize >= FLUSH_BYTES
        || since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
}

/// What a running source works with.
pub struct Ctx {
    pub stream: Arc<Stream>,
    pub spec: DatabaseSpec,
    pub stats: Arc<SourceStats>,
}

/// Checks a new stream's database before the stream is created: reachable,
/// set up for change data capture, the privileges granted, every selected
/// table keyed. Err says what to change.
pub async fn check(spec: &DatabaseSpec, stream: &str) -> Result<(), String> {
    match spec.engine {
        Engine::MySql => mysql::check(spec, stream).await,
        Engine::Postgres => postgres::check(spec, stream).await,
    }
}

/// Removes what a deleted stream kept on its source: PostgreSQL's slot
/// and publication (a MySQL binlog reader leaves nothing behind).
pub async fn forget(spec: &DatabaseSpec, stream: &str) -> Result<(), String> {
    match spec.engine {
        Engine::MySql => Ok(()),
        Engine::Postgres => postgres::forget(spec, stream).await,
    }
}

/// Asks for a new snapshot of every table: the source must be stopped,
/// and takes it up when started again, from the change stream's current
/// end and with every table afresh (see `mysql::run`, `postgres::run`).
/// The request is a mark of the source's position producer, so it is
/// durable, and done once.
pub async fn request_snapshot(stream: &Arc<Stream>) -> Result<(), String> {
    let producer = match stream.spec.source.as_ref().map(|s| s.engine) {
        Some(Engine::MySql) => mysql::BINLOG,
        Some(Engine::Postgres) => postgres::WAL,
        None => {
            return Err(format!(
                "delivery stream {} is not of type DatabaseAsSource",
                stream.spec.name
            ))
        }
    };
    let epoch = stream
        .log
        .position(producer)
        .and_then(|p| serde_json::from_str::<Json>(&p).ok())
        .map_or(0, |j| {
            j["epoch"].as_u64().or(j["restart"].as_u64()).unwrap_or(0)
        });
    let mark = serde_json::json!({ "restart": epoch + 1 }).to_string();
    stream
        .put_marked(crate::stream::Batch::default(), producer, &mark)
        .await
        .map(|_| ())
        .map_err(|e| format!("recording the request: {e}"))
}

/// Runs the source until `stop`: reconnecting with backoff after an error,
/// and after a failure waiting for the stream to close.
pub fn start(ctx: Ctx, mut stop: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            let run = async {
                match ctx.spec.engine {
                    Engine::MySql => mysql::run(&ctx).await,
                    Engine::Postgres => postgres::run(&ctx).await,
                }
            };
            let result = tokio::select! {
                r = run => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            let e = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            ctx.stats.reconnects.fetch_add(1, Ordering::Relaxed);
            match e {
                SourceError::Retry(m) => {
                    tracing::warn!(stream = %ctx.stream.spec.name, error = %m, retry_in = ?backoff, "change capture: retrying");
                    ctx.stats.error(&m);
                }
                SourceError::Failed(m) => {
                    tracing::error!(stream = %ctx.stream.spec.name, error = %m, "change capture stopped");
                    ctx.stats.error(&m);
                    *ctx.stats.failed.lock().unwrap() = Some(m);
                    let _ = stop.wait_for(|s| *s).await;
                    return;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    })
}

/// One row change, before it is placed in the source (commit time,
/// position) by its transaction's commit.
pub struct Change {
    /// `c` insert, `u` update, `d` delete, `r` snapshot read, `t` truncate.
    pub op: char,
    /// The table's namespace: MySQL's database, PostgreSQL's schema.
    pub db: Arc<str>,
    pub table: Arc<str>,
    /// The row's key columns, as an object (null for a truncate).
    pub key: Json,
    pub before: Json,
    pub after: Json,
}

impl Change {
    /// A table emptied (TRUNCATE, or a snapshot on request starting over).
    pub fn truncate(db: &Arc<str>, table: &Arc<str>) -> Change {
        Change {
            op: 't',
            db: db.clone(),
            table: table.clone(),
            key: Json::Null,
            before: Json::Null,
            after: Json::Null,
        }
    }
}

/// Where in the source's change stream a record is.
pub enum Position<'a> {
    /// MySQL: the event's binlog file and offset, and on MariaDB its
    /// transaction's GTID.
    Binlog {
        file: &'a str,
        pos: u64,
        gtid: Option<&'a str>,
    },
    /// PostgreSQL: the end of the transaction's commit record.
    Wal { lsn: u64 },
}

/// Where a change came from, as its record's `source` says.
pub struct Origin<'a> {
    pub connector: &'a str,
    pub stream: &'a str,
    /// PostgreSQL: the database; the change's `db` is then its schema.
    pub database: Option<&'a str>,
    pub position: Position<'a>,
    pub row: usize,
    pub commit_ms: i64,
    pub xid: Option<u64>,
    pub snapshot: bool,
}

/// Past this a change record is appended without its images (a row of
/// many megabytes of BLOB): its key and `"truncated": <bytes>` say so.
pub const MAX_CHANGE_BYTES: usize = 8 << 20;

/// The change record: Debezium's envelope (`op`, `before`, `after`,
/// `source`, `ts_ms`) plus the row's `key`, serialized straight from the
/// change (no copy of its values).
pub fn envelope(c: &Change, o: &Origin) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Source<'a> {
        connector: &'a str,
        name: &'a str,
        db: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        schema: Option<&'a str>,
        table: &'a str,
        snapshot: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pos: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gtid: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lsn: Option<u64>,
        row: usize,
        ts_ms: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        xid: Option<u64>,
    }
    #[derive(serde::Serialize)]
    struct Record<'a> {
        op: &'a str,
        source: Source<'a>,
        key: &'a Json,
        before: &'a Json,
        after: &'a Json,
        ts_ms: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        truncated: Option<usize>,
    }
    let mut op = [0u8; 4];
    let (file, pos, gtid, lsn) = match o.position {
        Position::Binlog { file, pos, gtid } => (Some(file), Some(pos), gtid, None),
        Position::Wal { lsn } => (None, None, None, Some(lsn)),
    };
    let (db, schema) = match o.database {
        Some(d) => (d, Some(&*c.db)),
        None => (&*c.db, None),
    };
    let mut record = Record {
        op: c.op.encode_utf8(&mut op),
        source: Source {
            connector: o.connector,
            name: o.stream,
            db,
            schema,
            table: &c.table,
            snapshot: o.snapshot,
            file,
            pos,
            gtid,
            lsn,
            row: o.row,
            ts_ms: o.commit_ms,
            xid: o.xid,
        },
        key: &c.key,
        before: &c.before,
        after: &c.after,
        ts_ms: now_ms(),
        truncated: None,
    };
    let bytes = serde_json::to_vec(&record).expect("JSON values serialize");
    if bytes.len() <= MAX_CHANGE_BYTES {
        return bytes;
    }
    record.before = &Json::Null;
    record.after = &Json::Null;
    record.truncated = Some(bytes.len());
    serde_json::to_vec(&record).expect("JSON values serialize")
}
