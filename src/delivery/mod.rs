//! Delivery: from a stream's log into objects in a destination (the lake,
//! or the warehouse through the lake), exactly once.
//!
//! One delivery thread per stream reads the log in order from the committed
//! offset and routes each record to a buffer: the stream's one buffer, or,
//! with dynamic partitioning, the buffer of the record's partition (its
//! evaluated partition keys); records that cannot be routed go to an error
//! buffer as Firehose error documents (see `route`). A stream that converts
//! to Parquet converts each record into its buffer's columns as it is
//! routed (one parse, and the failure known at once), and the columns go
//! to a file as Arrow IPC a mebibyte at a time, to be encoded when the
//! buffer is cut; other buffers encode the records as the object's bytes,
//! which go to a file the same way (see `destination::lake::spool`), so
//! memory does not grow with the buffering hints. A buffer becomes one
//! object when it reaches SizeInMBs (measured before compression) or when
//! its oldest record has waited IntervalInSeconds, whichever comes first.
//!
//! # Exactly once
//!
//! An object holds the records of one buffer between two log offsets,
//! `[first, end)`. Everything about it is a function of that range: its
//! key's time is the oldest record's arrival time (stored in the log), its
//! id a UUIDv5 of the stream's incarnation, the buffer and `first`. The
//! delivery state, `delivery.json` in the stream's directory, is replaced
//! atomically (write, fsync, rename, fsync the directory) at two points per
//! object:
//!
//! 1. before the object is written, with the object recorded as `pending`;
//! 2. after the destination has the object durably, with `delivered[buffer] = end`.
//!
//! `committed` is the lowest offset any open buffer still holds (everything
//! below it is in the lake) and log segments below it are removed. On
//! restart, a pending object is written again from the same records to the
//! same key (overwriting it if it had been written), then the log is read
//! from `committed`, skipping each record that lies below its buffer's
//! `delivered` mark, because it is in the lake already.
//!
//! That replay must route every record as it was routed the first time.
//! Partition keys are a function of the record, but two decisions are not:
//! whether a new partition fit under the bound on active partitions, and
//! (for Parquet) whether a record fit the schema as it then was. So every
//! record sent to the error output is recorded in the state (`diverted`,
//! offset and reason), together with `decided_upto`, the read position the
//! decisions cover. Below it, replay follows the record; above it, no object
//! was written yet, so deciding afresh is safe.
//!
//! A destination writes an object idempotently for its key (see
//! `destination`); the lake writes it atomically, so no reader sees a
//! partial one. Order: records are read in acknowledgement order and each buffer
//! keeps that order, so a partition's records reach the lake in the order
//! they were acknowledged.
//!
//! If the destination fails, delivery retries the same object with backoff; the
//! log keeps the records, and ingest goes on until the log's bound, after
//! which producers get ServiceUnavailableException.

pub mod hive;
pub mod prefix;
pub mod route;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::destination::lake::parquet::{self, Columns, ParquetWriter};
use crate::destination::lake::spool::{Body, ColumnSpool, Spool, SPILL_BYTES};
use crate::destination::{Destination, Kind, Object};
use crate::log::{Log, LogError, LogReader};
use crate::spec::{Compression, Format, ParquetSchema, StreamSpec};
use prefix::Template;
use route::Diversion;

/// The version in object names. Firehose bumps it on UpdateDestination,
/// which hydrant does not implement, so it stays 1.
pub const STREAM_VERSION: u32 = 1;

/// Where error documents go when the stream has no ErrorOutputPrefix.
const DEFAULT_ERROR_PREFIX: &str = "!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd/HH}/";

/// Encoded bytes all of a stream's buffers may hold in memory, checked
/// after each chunk read; past it the largest spills to its file. Each
/// buffer spills at `SPILL_BYTES` on its own.
const SPOOLED_BYTES: usize = 32 << 20;

/// Records read between checks of the buffers' deadlines.
const CHUNK_RECORDS: usize = 16_384;

/// Counters a stream's delivery keeps, read by the API and metrics.
#[derive(Default)]
pub struct DeliveryStats {
    pub committed_offset: AtomicU64,
    pub objects: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
    pub active_partitions: AtomicU64,
    /// Arrival time of the oldest record not yet delivered, or 0.
    pub oldest_pending_ms: AtomicI64,
    /// Records sent to the error output, by error code.
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// What is wrong with delivery right now: a step that keeps failing
    /// (and is retried), or why delivery stopped. None while all is well.
    pub problem: Mutex<Option<Problem>>,
}

/// A delivery problem, as the API and health checks report it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// True once delivery has stopped: nothing more reaches the lake until
    /// the cause is fixed and hydrant restarts. False while a step is retried.
    pub stopped: bool,
    pub message: String,
    pub since_ms: i64,
}

impl DeliveryStats {
    fn report(&self, stopped: bool, message: String) {
        let mut p = self.problem.lock().unwrap();
        let since_ms = match &*p {
            Some(old) if old.stopped == stopped => old.since_ms,
            _ => now_ms(),
        };
        *p = Some(Problem {
            stopped,
            message,
            since_ms,
        });
    }

    fn clear(&self) {
        let mut p = self.problem.lock().unwrap();
        if p.as_ref().is_some_and(|p| !p.stopped) {
            *p = None;
        }
    }

    pub fn problem(&self) -> Option<Problem> {
        self.problem.lock().unwrap().clone()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pending {
    #[serde(default = "single_buffer")]
    buffer: String,
    first: u64,
    end: u64,
    key: String,
    compression: Compression,
    append_delimiter: bool,
    /// For Parquet with an inferred schema: the columns the object was written with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    columns: Option<Vec<(String, String)>>,
}

fn single_buffer() -> String {
    "d".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    committed: u64,
    #[serde(default)]
    decided_upto: u64,
    /// Per buffer: the end of its last object, while above `committed`.
    #[serde(default)]
    delivered: BTreeMap<String, u64>,
    /// Records at or above `committed` sent to the error output.
    #[serde(default)]
    diverted: BTreeMap<u64, Diversion>,
    /// For Parquet with an inferred schema: the schema as of `decided_upto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    schema: Option<parquet::InferredSchema>,
    pending: Option<Pending>,
}

impl State {
    /// Drops what no replay can need: marks and decisions below `committed`.
    fn prune(&mut self) {
        let c = self.committed;
        self.delivered.retain(|_, end| *end > c);
        self.diverted = self.diverted.split_off(&c);
    }
}

/// Reads the committed offset of a stream directory (0 for a new stream).
pub fn committed_offset(stream_dir: &Path) -> std::io::Result<u64> {
    Ok(load_state(stream_dir)?.committed)
}

fn load_state(stream_dir: &Path) -> std::io::Result<State> {
    let path = stream_dir.join("delivery.json");
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e),
    }
}

fn save_state(stream_dir: &Path, state: &State) -> std::io::Result<()> {
    let tmp = stream_dir.join("delivery.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(state)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, stream_dir.join("delivery.json"))?;
    crate::log::sync_dir(stream_dir)
}

/// What a buffer collects.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    /// A partition's records (no values when the stream is not partitioned).
    Data(Vec<String>),
    /// Error documents of one output type.
    Error(String),
}

impl Target {
    /// The buffer's name in the delivery state.
    fn id(&self) -> String {
        match self {
            Target::Data(values) => values
                .iter()
                .fold("d".to_string(), |acc, v| acc + "\u{1f}" + v),
            Target::Error(t) => format!("e\u{1f}{t}"),
        }
    }
}

struct Buffer {
    target: Target,
    first: u64,
    end: u64,
    records: usize,
    /// Whether each record is followed by a newline.
    delimiter: bool,
    /// The object's bytes so far: the records (or error documents) back to
    /// back or one per line, compressed; None when the records are
    /// converted into `columns` instead.
    spool: Option<Spool>,
    /// A Parquet stream's data records, converted as they were routed;
    /// `parts` holds the older ones, spilled from `columns` to a file.
    columns: Option<Columns>,
    parts: ColumnSpool,
    /// Bytes of the records taken, as they came (SizeInMBs counts these).
    input: usize,
    oldest_ms: i64,
}

impl Buffer {
    /// A buffer of records converted into `columns`, or else encoded into
    /// a spool (with `compression`, one per line with `delimiter`), its
    /// files in `scratch`.
    fn new(
        target: Target,
        first: u64,
        columns: Option<Columns>,
        scratch: &Path,
        compression: Compression,
        delimiter: bool,
    ) -> Buffer {
        Buffer {
            target,
            first,
            end: first,
            records: 0,
            delimiter,
            spool: columns.is_none().then(|| Spool::new(scratch, compression)),
            columns,
            parts: ColumnSpool::new(scratch),
            input: 0,
            oldest_ms: i64::MAX,
        }
    }

    /// Counts a record taken (its bytes spooled, or converted already).
    fn took(&mut self, offset: u64, arrival_ms: i64, len: usize) {
        self.records += 1;
        self.input += len;
        self.oldest_ms = self.oldest_ms.min(arrival_ms);
        self.end = offset + 1;
    }

    fn push(&mut self, offset: u64, arrival_ms: i64, data: &[u8]) {
        let spool = self.spool.as_mut().expect("a spooling buffer");
        spool.push(data);
        if self.delimiter {
            spool.push(b"\n");
        }
        self.took(offset, arrival_ms, data.len());
    }

    /// Bytes the object will hold before compression (before conversion).
    fn size(&self) -> usize {
        self.input
            + if self.delimiter && self.spool.is_some() {
                self.records
            } else {
                0
            }
    }

    /// Memory the buffer holds: encoded bytes or columns not yet spilled.
    fn held(&self) -> usize {
        self.spool.as_ref().map_or(0, Spool::held) + self.columns.as_ref().map_or(0, Columns::held)
    }

    /// Moves what the buffer holds in memory to its file. On an error the
    /// buffer is as it was.
    fn spill(&mut self) -> std::io::Result<()> {
        match (&mut self.spool, &mut self.columns) {
            (Some(spool), _) => spool.spill(),
            (None, Some(columns)) => self.parts.spill(columns),
            (None, None) => Ok(()),
        }
    }
}

pub struct Delivery {
    pub spec: StreamSpec,
    pub incarnation: uuid::Uuid,
    pub dir: PathBuf,
    pub log: Log,
    /// Where objects go: the lake, or the warehouse (staged in the lake).
    pub destination: Arc<dyn Destination>,
    pub stats: Arc<DeliveryStats>,
    /// Most partitions with an open buffer; records of further ones go to the error output.
    pub max_partitions: usize,
    /// Where objects are spooled before they are put: the local store's
    /// scratch directory, emptied at each start.
    pub scratch: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("delivery state: {0}")]
    State(#[from] std::io::Error),
    #[error("stopped while the store was failing; the object is redone at the next start")]
    Interrupted,
    #[error("encoding an object failed: {0}")]
    Encode(String),
    #[error("{0}")]
    Refused(String),
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The key of an object in a stream's error output: the ErrorOutputPrefix
/// (or Firehose's default) evaluated for `output_type` at `at_ms`, then the
/// object's name with `id`.
pub fn error_key(
    spec: &StreamSpec,
    id: &uuid::Uuid,
    at_ms: i64,
    output_type: &str,
    extension: &str,
) -> String {
    let at = DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default();
    let random = prefix::random_string(id);
    let default;
    let t = match &spec.error_template {
        Some(t) => t,
        None => {
            default = Template::parse(DEFAULT_ERROR_PREFIX, prefix::Kind::ErrorOutputPrefix)
                .expect("a valid default");
            &default
        }
    };
    t.eval(at, &random, Some(output_type))
        + &prefix::object_name(&spec.name, STREAM_VERSION, at, &id.to_string(), extension)
}

/// A buffer cut into an object under `key`.
fn object<'a>(key: &'a str, b: &Buffer, body: &'a Body) -> Object<'a> {
    Object {
        key,
        kind: match b.target {
            Target::Data(_) => Kind::Data,
            Target::Error(_) => Kind::Errors,
        },
        body,
        records: b.records as u64,
        first: b.first,
        end: b.end,
        oldest_ms: b.oldest_ms,
    }
}

/// Sends record `offset` to the error output, and records that it did.
fn divert(
    st: &mut State,
    offset: u64,
    output_type: &str,
    code: &str,
    message: String,
) -> (Target, Option<Diversion>) {
    let d = Diversion {
        output_type: output_type.into(),
        code: code.into(),
        message,
    };
    st.diverted.insert(offset, d.clone());
    (Target::Error(d.output_type.clone()), Some(d))
}

impl Delivery {
    /// Starts the delivery thread; the receiver resolves when it has
    /// delivered everything after `stop` turned true.
    pub fn start(self, stop: watch::Receiver<bool>) -> oneshot::Receiver<Result<(), String>> {
        let (done, finished) = oneshot::channel();
        let rt = tokio::runtime::Handle::current();
        let name = self.spec.name.clone();
        let stats = self.stats.clone();
        let reported = self.stats.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("deliver-{name}"))
            .spawn(move || {
                let _runtime = rt.enter();
                // A bug must stop this stream's delivery, not the process:
                // a panic becomes the stream's reported error like any other.
                let run = std::panic::AssertUnwindSafe(|| self.run(&rt, stop));
                let result = match std::panic::catch_unwind(run) {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(panic) => Err(format!(
                        "delivery failed unexpectedly: {}",
                        panic
                            .downcast_ref::<String>()
                            .map(String::as_str)
                            .or_else(|| panic.downcast_ref::<&str>().copied())
                            .unwrap_or("a panic")
                    )),
                };
                if let Err(e) = &result {
                    tracing::error!(stream = %name, error = %e,
                        "delivery stopped; records stay in the log until this is fixed and hydrant restarts");
                    stats.report(true, e.clone());
                }
                let _ = done.send(result);
            });
        if let Err(e) = spawned {
            // The closure, and with it `done`, is gone: `finished` says so.
            reported.report(true, format!("could not start the delivery thread: {e}"));
        }
        finished
    }

    fn interval_ms(&self) -> i64 {
        self.spec.interval_seconds as i64 * 1000
    }

    fn delimiter(&self, target: &Target) -> bool {
        matches!(target, Target::Error(_)) || self.spec.append_delimiter
    }

    /// An empty buffer for `target`'s records from `first`, encoded as
    /// the stream's spec says now.
    fn buffer(&self, target: Target, first: u64, columns: Option<Columns>) -> Buffer {
        let delimiter = self.delimiter(&target);
        self.buffer_as(target, first, columns, self.spec.compression, delimiter)
    }

    /// An empty buffer encoding its records with `compression`, one per
    /// line when `delimiter` (a redone object is encoded as it was first).
    fn buffer_as(
        &self,
        target: Target,
        first: u64,
        columns: Option<Columns>,
        compression: Compression,
        delimiter: bool,
    ) -> Buffer {
        Buffer::new(
            target,
            first,
            columns,
            &self.scratch,
            compression,
            delimiter,
        )
    }

    /// Takes the record into `b` (unless converting, which `take` does),
    /// its error document when it is diverted.
    fn push(b: &mut Buffer, offset: u64, arrival: i64, data: &[u8], d: Option<&Diversion>) {
        match d {
            Some(d) => b.push(offset, arrival, &route::error_document(d, arrival, data)),
            None => b.push(offset, arrival, data),
        }
    }

    /// Routes one record: its buffer, and the diversion if it goes to the
    /// error output. Decisions below `decided_upto` come from the state.
    /// (Whether a record fits a Parquet schema is decided in `take`, by
    /// converting it.)
    fn decide(
        &self,
        st: &mut State,
        offset: u64,
        data: &[u8],
        open: Option<&BTreeMap<String, Buffer>>,
    ) -> (Target, Option<Diversion>) {
        if let Some(d) = st.diverted.get(&offset) {
            return (Target::Error(d.output_type.clone()), Some(d.clone()));
        }
        let fresh = offset >= st.decided_upto;
        let values = match &self.spec.partition {
            None => vec![],
            Some(q) => match q.eval(data) {
                Ok(v) => v,
                Err(e) => {
                    return divert(
                        st,
                        offset,
                        "processing-failed",
                        "DynamicPartitioning.MetadataExtractionFailed",
                        e,
                    )
                }
            },
        };
        let target = Target::Data(values);
        if let (true, Some(open), Some(_)) = (fresh, open, &self.spec.partition) {
            let active = open
                .values()
                .filter(|b| matches!(b.target, Target::Data(_)))
                .count();
            if active >= self.max_partitions && !open.contains_key(&target.id()) {
                return divert(
                    st,
                    offset,
                    "processing-failed",
                    "DynamicPartitioning.ActivePartitionsLimitExceeded",
                    format!("{} partitions are open, the most a stream may have (delivery.max_active_partitions)", self.max_partitions),
                );
            }
        }
        (target, None)
    }

    /// The columns a new buffer of `target` converts into, for a stream
    /// that converts to Parquet.
    fn columns(&self, st: &State, target: &Target) -> Option<Columns> {
        match (&self.spec.format, target) {
            (Format::Parquet { schema, .. }, Target::Data(_)) => {
                Some(Columns::new(&match schema {
                    ParquetSchema::Declared(t) => t.clone(),
                    ParquetSchema::Inferred => st.schema.clone().unwrap_or_default().table(),
                }))
            }
            _ => None,
        }
    }

    /// Converts a record into its buffer's columns; on a fresh record's
    /// failure, says why. A replayed record converted once already, so it
    /// must again.
    fn convert(
        &self,
        st: &mut State,
        b: &mut Buffer,
        offset: u64,
        data: &[u8],
    ) -> Result<Result<(), String>, DeliveryError> {
        let fresh = offset >= st.decided_upto;
        let columns = b.columns.as_mut().expect("a converting buffer");
        let converted = match &self.spec.format {
            Format::Parquet {
                schema: ParquetSchema::Inferred,
                ..
            } => {
                let schema = st.schema.get_or_insert_with(Default::default);
                if fresh {
                    schema.append(data, columns)
                } else {
                    // Replayed: the schema holds this record's fields already.
                    schema.conform(columns);
                    columns.append(data)
                }
            }
            _ => columns.append(data),
        };
        match converted {
            Err(e) if !fresh => Err(DeliveryError::Encode(format!(
                "record {offset} converted when it was routed, but not on replay: {e}"
            ))),
            r => Ok(r),
        }
    }

    /// Adds a record to its buffer, unless it is in the lake already.
    fn take(
        &self,
        st: &mut State,
        buffers: &mut BTreeMap<String, Buffer>,
        offset: u64,
        arrival_ms: i64,
        data: &[u8],
    ) -> Result<Option<String>, DeliveryError> {
        let (mut target, mut diversion) = self.decide(st, offset, data, Some(buffers));
        let mut id = target.id();
        if diversion.is_none() && matches!(self.spec.format, Format::Parquet { .. }) {
            if st.delivered.get(&id).is_some_and(|end| offset < *end) {
                return Ok(None);
            }
            let b = buffers
                .entry(id.clone())
                .or_insert_with(|| self.buffer(target.clone(), offset, self.columns(st, &target)));
            match self.convert(st, b, offset, data)? {
                Ok(()) => {
                    b.took(offset, arrival_ms, data.len());
                    return Ok(Some(id));
                }
                Err(e) => {
                    if b.records == 0 {
                        buffers.remove(&id);
                    }
                    (target, diversion) = divert(
                        st,
                        offset,
                        "format-conversion-failed",
                        "DataFormatConversion.MalformedData",
                        e,
                    );
                    id = target.id();
                }
            }
        }
        if st.delivered.get(&id).is_some_and(|end| offset < *end) {
            return Ok(None);
        }
        let b = buffers
            .entry(id.clone())
            .or_insert_with(|| self.buffer(target, offset, None));
        Self::push(b, offset, arrival_ms, data, diversion.as_ref());
        if let Some(d) = diversion {
            *self.stats.errors.lock().unwrap().entry(d.code).or_default() += 1;
        }
        Ok(Some(id))
    }

    fn run(
        &self,
        rt: &tokio::runtime::Handle,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), DeliveryError> {
        let mut st = load_state(&self.dir)?;
        if let Some(p) = st.pending.clone() {
            tracing::info!(stream = %self.spec.name, first = p.first, end = p.end, key = %p.key,
                "redoing the object a crash interrupted");
            self.redo(rt, &mut st, p, &stop)?;
        }
        self.stats
            .committed_offset
            .store(st.committed, Ordering::Relaxed);
        let mut reader = self.log.reader(st.committed)?;
        let mut buffers: BTreeMap<String, Buffer> = BTreeMap::new();
        let mut tail = self.log.tail();
        let limit = self.spec.size_bytes();
        loop {
            let end = tail.borrow_and_update().next_offset;
            let stopping = *stop.borrow_and_update();
            let mut read = 0;
            while read < CHUNK_RECORDS {
                let Some(e) = reader.next_below(end)? else {
                    break;
                };
                read += 1;
                // `e` borrows the reader's buffer; it is copied once, into its buffer.
                if let Some(id) =
                    self.take(&mut st, &mut buffers, e.offset, e.arrival_ms, e.data)?
                {
                    let b = buffers.get_mut(&id).expect("the record's buffer");
                    if b.size() >= limit {
                        self.flush(rt, &mut st, &mut buffers, &id, reader.position(), &stop)?;
                    } else if b.held() >= SPILL_BYTES {
                        self.spill(rt, &stop, b)?;
                    }
                }
            }
            let caught_up = reader.position() >= end;
            let now = now_ms();
            let due: Vec<String> = buffers
                .iter()
                .filter(|(_, b)| (stopping && caught_up) || now >= b.oldest_ms + self.interval_ms())
                .map(|(id, _)| id.clone())
                .collect();
            for id in due {
                self.flush(rt, &mut st, &mut buffers, &id, reader.position(), &stop)?;
            }
            while buffers.values().map(Buffer::held).sum::<usize>() > SPOOLED_BYTES {
                let largest = buffers
                    .values_mut()
                    .max_by_key(|b| b.held())
                    .expect("buffers hold bytes");
                self.spill(rt, &stop, largest)?;
            }
            self.publish(&buffers);
            if !caught_up {
                continue;
            }
            if stopping && buffers.is_empty() {
                return Ok(());
            }
            let deadline = buffers
                .values()
                .map(|b| b.oldest_ms + self.interval_ms())
                .min();
            let sleep = match deadline {
                Some(d) => Duration::from_millis((d - now_ms()).clamp(1, 3_600_000) as u64),
                None => Duration::from_secs(3600),
            };
            rt.block_on(async {
                tokio::select! {
                    _ = tail.changed() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(sleep) => {}
                }
            });
        }
    }

    /// Moves what a buffer holds from memory to its file, retrying (a full
    /// disk is waited out, the records are safe in the log).
    fn spill(
        &self,
        rt: &tokio::runtime::Handle,
        stop: &watch::Receiver<bool>,
        b: &mut Buffer,
    ) -> Result<(), DeliveryError> {
        self.retry(
            rt,
            stop,
            "spooling an object to the scratch directory",
            || b.spill(),
        )
    }

    fn publish(&self, buffers: &BTreeMap<String, Buffer>) {
        let oldest = buffers.values().map(|b| b.oldest_ms).min().unwrap_or(0);
        self.stats
            .oldest_pending_ms
            .store(oldest, Ordering::Relaxed);
        let partitions = buffers
            .values()
            .filter(|b| matches!(b.target, Target::Data(_)))
            .count();
        self.stats
            .active_partitions
            .store(partitions as u64, Ordering::Relaxed);
    }

    /// The key of a buffer's object.
    fn key(&self, target: &Target, first: u64, oldest_ms: i64) -> String {
        let id = uuid::Uuid::new_v5(
            &self.incarnation,
            format!("{}@{first}", target.id()).as_bytes(),
        );
        let at = DateTime::<Utc>::from_timestamp_millis(oldest_ms).unwrap_or_default();
        let random = prefix::random_string(&id);
        let prefix = match target {
            Target::Data(values) => {
                let names = self
                    .spec
                    .partition
                    .as_ref()
                    .map(|q| q.names())
                    .unwrap_or_default();
                let pairs: Vec<(&str, &str)> = names
                    .iter()
                    .map(|n| n.as_str())
                    .zip(values.iter().map(|v| v.as_str()))
                    .collect();
                self.spec
                    .prefix_template
                    .eval_with(at, &random, None, &pairs)
            }
            Target::Error(output_type) => {
                return error_key(
                    &self.spec,
                    &id,
                    oldest_ms,
                    output_type,
                    self.spec.extension(),
                )
            }
        };
        prefix
            + &prefix::object_name(
                &self.spec.name,
                STREAM_VERSION,
                at,
                &id.to_string(),
                self.spec.extension(),
            )
    }

    /// Cuts buffer `id` into an object: steps 1 and 2 of the module notes.
    fn flush(
        &self,
        rt: &tokio::runtime::Handle,
        st: &mut State,
        buffers: &mut BTreeMap<String, Buffer>,
        id: &str,
        read_position: u64,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), DeliveryError> {
        let mut b = buffers.remove(id).expect("flushing an open buffer");
        let low_water = |buffers: &BTreeMap<String, Buffer>| {
            buffers
                .values()
                .map(|b| b.first)
                .min()
                .unwrap_or(read_position)
                .min(read_position)
        };
        let pending = Pending {
            buffer: id.to_string(),
            first: b.first,
            end: b.end,
            key: self.key(&b.target, b.first, b.oldest_ms),
            compression: self.spec.compression,
            append_delimiter: b.delimiter,
            columns: match (&self.spec.format, &b.target) {
                (
                    Format::Parquet {
                        schema: ParquetSchema::Inferred,
                        ..
                    },
                    Target::Data(_),
                ) => Some(
                    st.schema
                        .get_or_insert_with(Default::default)
                        .table()
                        .columns(),
                ),
                _ => None,
            },
        };
        st.committed = low_water(buffers).min(b.first);
        st.decided_upto = st.decided_upto.max(read_position);
        st.pending = Some(pending.clone());
        st.prune();
        self.retry(rt, stop, "saving the delivery state", || {
            save_state(&self.dir, st)
        })?;
        let body = self.encode(rt, stop, st, &mut b, &pending)?;
        self.write(rt, &object(&pending.key, &b, &body), stop)?;
        let bytes = body.len();
        drop(body);
        st.delivered.insert(id.to_string(), b.end);
        st.pending = None;
        st.committed = low_water(buffers);
        st.prune();
        self.retry(rt, stop, "saving the delivery state", || {
            save_state(&self.dir, st)
        })?;
        let s = &self.stats;
        s.committed_offset.store(st.committed, Ordering::Relaxed);
        s.objects.fetch_add(1, Ordering::Relaxed);
        s.records.fetch_add(b.records as u64, Ordering::Relaxed);
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        tracing::debug!(stream = %self.spec.name, key = %pending.key, records = b.records, "delivered");
        if let Err(e) = self.log.remove_before(st.committed) {
            tracing::warn!(stream = %self.spec.name, error = %e, "could not remove delivered log segments; will retry after the next object");
        }
        Ok(())
    }

    /// A buffer's object: the spooled records (or error documents),
    /// finished, or a converting stream's columns as Parquet.
    fn encode(
        &self,
        rt: &tokio::runtime::Handle,
        stop: &watch::Receiver<bool>,
        st: &mut State,
        b: &mut Buffer,
        p: &Pending,
    ) -> Result<Body, DeliveryError> {
        let failed = DeliveryError::Encode;
        let mut body = None;
        if let Some(spool) = b.spool.as_mut() {
            self.retry(
                rt,
                stop,
                "finishing an object in the scratch directory",
                || {
                    body = Some(spool.finish()?);
                    Ok(())
                },
            )?;
            return Ok(body.expect("a finished body"));
        }
        let (Format::Parquet { options, .. }, Some(mut columns)) =
            (&self.spec.format, b.columns.take())
        else {
            return Err(failed("a buffer neither spooled nor converted".into()));
        };
        if let Some(schema) = &st.schema {
            schema.conform(&mut columns);
        }
        if let Some(cols) = &p.columns {
            if columns.schema().columns() != *cols {
                return Err(failed(format!(
                    "the object's columns are not the schema recorded for it ({cols:?})"
                )));
            }
        }
        if b.parts.spilled() {
            // The rest joins the spilled parts; the file is then encoded
            // part by part into the final schema.
            let parts = &mut b.parts;
            self.retry(
                rt,
                stop,
                "spilling columns to the scratch directory",
                || parts.spill(&mut columns),
            )?;
            let mut encoded = None;
            self.retry(rt, stop, "encoding spilled columns as Parquet", || {
                encoded = Some(parts.encode(&self.scratch, columns.schema(), options)?);
                Ok(())
            })?;
            return encoded.expect("an encoded body").map_err(failed);
        }
        let mut writer = ParquetWriter::new(columns.schema(), options).map_err(failed)?;
        writer.write(columns).map_err(failed)?;
        let bytes = writer.finish().map_err(failed)?;
        self.retry(
            rt,
            stop,
            "writing an object to the scratch directory",
            || {
                body = Some(Body::write(&self.scratch, &bytes)?);
                Ok(())
            },
        )?;
        Ok(body.expect("a written body"))
    }

    /// The columns a redone object's records convert into: the schema
    /// recorded for it. None for an object that is not converted.
    fn redo_columns(&self, p: &Pending) -> Result<Option<Columns>, DeliveryError> {
        let failed = DeliveryError::Encode;
        let Format::Parquet { schema, .. } = &self.spec.format else {
            return Ok(None);
        };
        if !p.buffer.starts_with('d') {
            return Ok(None);
        }
        let table = match (schema, &p.columns) {
            (ParquetSchema::Declared(t), _) => t.clone(),
            (_, Some(cols)) => parquet::TableSchema::from_columns(cols).map_err(failed)?,
            (_, None) => return Err(failed("no schema recorded for the object".into())),
        };
        Ok(Some(Columns::new(&table)))
    }

    /// Writes an object, retrying with backoff until the destination takes it.
    fn write(
        &self,
        rt: &tokio::runtime::Handle,
        object: &Object<'_>,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), DeliveryError> {
        let what = format!("writing {}/{}", self.spec.bucket, object.key);
        self.retry(rt, stop, &what, || self.destination.write(rt, object))
    }

    /// Runs a step of delivery until it succeeds, backing off between tries:
    /// a full disk or an unreachable store is waited out, never skipped.
    /// Once hydrant is stopping and the step has failed for a while, it gives
    /// up: the records stay in the log and the step is redone at the next start.
    fn retry(
        &self,
        rt: &tokio::runtime::Handle,
        stop: &watch::Receiver<bool>,
        what: &str,
        mut step: impl FnMut() -> std::io::Result<()>,
    ) -> Result<(), DeliveryError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match step() {
                Ok(()) => {
                    self.stats.clear();
                    return Ok(());
                }
                // A key or bucket no store may take: retrying cannot help.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    return Err(DeliveryError::Refused(format!("{what}: {e}")));
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .report(false, format!("{what} failed (retrying): {e}"));
                    tracing::warn!(stream = %self.spec.name, error = %e, retry_in = ?backoff,
                        "{what} failed; the records stay in the log and delivery will retry");
                    if *stop.borrow() && backoff >= Duration::from_secs(5) {
                        return Err(DeliveryError::Interrupted);
                    }
                    rt.block_on(async { tokio::time::sleep(backoff).await });
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Rewrites the object recorded as pending, from the same records, to its key.
    fn redo(
        &self,
        rt: &tokio::runtime::Handle,
        st: &mut State,
        p: Pending,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), DeliveryError> {
        let mut reader: LogReader = self.log.reader(p.first)?;
        let mut buffer: Option<Buffer> = None;
        let mut columns = self.redo_columns(&p)?;
        while let Some(e) = reader.next_below(p.end)? {
            let (offset, arrival, data) = (e.offset, e.arrival_ms, e.data);
            let (target, diversion) = self.decide(st, offset, data, None);
            if target.id() != p.buffer {
                continue;
            }
            let b = buffer.get_or_insert_with(|| {
                self.buffer_as(
                    target,
                    offset,
                    columns.take(),
                    p.compression,
                    p.append_delimiter,
                )
            });
            match (&mut b.columns, &diversion) {
                (Some(c), None) => {
                    c.append(data).map_err(|e| {
                        DeliveryError::Encode(format!(
                            "record {offset} converted when it was routed, but not on replay: {e}"
                        ))
                    })?;
                    b.took(offset, arrival, data.len());
                }
                _ => Self::push(b, offset, arrival, data, diversion.as_ref()),
            }
            if b.held() >= SPILL_BYTES {
                self.spill(rt, stop, b)?;
            }
        }
        if reader.position() != p.end {
            return Err(LogError::Corrupt {
                file: self.log.dir().to_path_buf(),
                what: format!(
                    "pending object {}..{} but the log ends at {}",
                    p.first,
                    p.end,
                    reader.position()
                ),
            }
            .into());
        }
        let mut b = match buffer {
            Some(b) => b,
            None => self.buffer_as(
                Target::Data(vec![]),
                p.first,
                columns,
                p.compression,
                p.append_delimiter,
            ),
        };
        let body = self.encode(rt, stop, st, &mut b, &p)?;
        self.write(rt, &object(&p.key, &b, &body), stop)?;
        drop(body);
        st.delivered.insert(p.buffer.clone(), p.end);
        st.pending = None;
        st.prune();
        self.retry(rt, stop, "saving the delivery state", || {
            save_state(&self.dir, st)
        })?;
        Ok(())
    }
}
