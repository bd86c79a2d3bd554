//! Delivery: from a stream's log into objects in the lake, exactly once.
//!
//! One delivery task per stream reads the log in order from the committed
//! offset, appends records to a buffer (adding a newline after each when
//! AppendDelimiterToRecord is on), and cuts the buffer into an object when
//! it reaches SizeInMBs (measured before compression) or when its oldest
//! record has waited IntervalInSeconds, whichever comes first.
//!
//! # Exactly once
//!
//! A batch is a range of log offsets `[first, end)`. Everything about its
//! object is a function of that range and the stream: the key's time is the
//! oldest record's arrival time (stored in the log), and the key's id is a
//! UUIDv5 of the stream's incarnation id and `first`. The delivery state,
//! `delivery.json` in the stream's directory, is replaced atomically (write,
//! fsync, rename, fsync the directory) at two points per object:
//!
//! 1. before the object is written: `{committed: first, pending: {first, end, key}}`;
//! 2. after the object is durably in the store: `{committed: end}`, then log
//!    segments below `end` are removed.
//!
//! A crash before 1 leaves the records in the log past `committed`: they
//! are batched again. A crash between 1 and 2 leaves `pending`: on restart
//! the same range is read back and written to the same key, overwriting the
//! object if it had been written. A crash after 2 has nothing to redo. So
//! every acknowledged record reaches the lake, and no record reaches it
//! twice, at any instant of a crash. Objects are written atomically by the
//! store, so no reader sees a partial one.
//!
//! Order: records are appended to the log in acknowledgement order, read in
//! log order, and batches are delivered one at a time, so the lake holds a
//! stream's records in the order they were acknowledged.
//!
//! If the store fails (a full disk), delivery retries the same batch with
//! backoff; the log keeps the records and ingest goes on until the log's
//! bound, after which producers get ServiceUnavailableException.

pub mod prefix;
pub mod store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::log::{Log, LogError, LogReader};
use crate::spec::{Compression, StreamSpec};
use store::LocalStore;

/// The version in object names. Firehose bumps it on UpdateDestination,
/// which hydrant does not implement, so it stays 1.
pub const STREAM_VERSION: u32 = 1;

/// Counters a stream's delivery keeps, read by the API and metrics.
#[derive(Default)]
pub struct DeliveryStats {
    pub committed_offset: AtomicU64,
    pub objects: AtomicU64,
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
    /// Arrival time of the oldest record not yet delivered, or 0.
    pub oldest_pending_ms: AtomicI64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Pending {
    first: u64,
    end: u64,
    key: String,
    compression: Compression,
    append_delimiter: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct State {
    committed: u64,
    pending: Option<Pending>,
}

/// Reads the committed offset of a stream directory (0 for a new stream).
pub fn committed_offset(stream_dir: &Path) -> std::io::Result<u64> {
    Ok(load_state(stream_dir)?.committed)
}

fn load_state(stream_dir: &Path) -> std::io::Result<State> {
    match std::fs::read(stream_dir.join("delivery.json")) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", stream_dir.join("delivery.json").display()),
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

/// Records gathered for one object.
struct Batch {
    first: u64,
    end: u64,
    bytes: Vec<u8>,
    oldest_ms: i64,
}

impl Batch {
    fn new(first: u64) -> Batch {
        Batch {
            first,
            end: first,
            bytes: Vec::new(),
            oldest_ms: i64::MAX,
        }
    }

    fn is_empty(&self) -> bool {
        self.end == self.first
    }
}

pub struct Delivery {
    pub spec: StreamSpec,
    pub incarnation: uuid::Uuid,
    pub dir: PathBuf,
    pub log: Log,
    pub store: LocalStore,
    pub stats: Arc<DeliveryStats>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("delivery state: {0}")]
    State(std::io::Error),
    #[error("delivery task failed: {0}")]
    Join(String),
}

/// Reads records from `reader` into `batch` until `end` or until the batch
/// holds `limit` bytes. Returns true if the batch is full.
fn fill(
    reader: &mut LogReader,
    batch: &mut Batch,
    end: u64,
    limit: usize,
    delimiter: bool,
) -> Result<bool, LogError> {
    while batch.bytes.len() < limit {
        let Some(e) = reader.next_below(end)? else {
            return Ok(false);
        };
        batch.bytes.extend_from_slice(e.data);
        if delimiter {
            batch.bytes.push(b'\n');
        }
        batch.oldest_ms = batch.oldest_ms.min(e.arrival_ms);
        batch.end = e.offset + 1;
    }
    Ok(true)
}

fn encode(bytes: &[u8], compression: Compression) -> Vec<u8> {
    match compression {
        Compression::Uncompressed => bytes.to_vec(),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(bytes.len() / 4),
                flate2::Compression::default(),
            );
            enc.write_all(bytes).expect("writing to memory");
            enc.finish().expect("writing to memory")
        }
    }
}

impl Delivery {
    /// The key of the object for a batch starting at `first`.
    fn key(&self, first: u64, oldest_ms: i64) -> String {
        let id = uuid::Uuid::new_v5(&self.incarnation, &first.to_be_bytes());
        let at = DateTime::<Utc>::from_timestamp_millis(oldest_ms).unwrap_or_default();
        let prefix = self
            .spec
            .prefix_template
            .eval(at, &prefix::random_string(&id), None);
        prefix
            + &prefix::object_name(
                &self.spec.name,
                STREAM_VERSION,
                at,
                &id.to_string(),
                self.spec.extension(),
            )
    }

    /// Runs until `stop` turns true, then delivers everything the log holds
    /// and returns.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Result<(), DeliveryError> {
        let this = Arc::new(self);
        let state = load_state(&this.dir).map_err(DeliveryError::State)?;
        if let Some(p) = state.pending {
            tracing::info!(stream = %this.spec.name, first = p.first, end = p.end, key = %p.key,
                "redoing the batch a crash interrupted");
            this.clone().redo(p).await?;
        }
        let committed = load_state(&this.dir)
            .map_err(DeliveryError::State)?
            .committed;
        this.stats
            .committed_offset
            .store(committed, Ordering::Relaxed);
        let mut tail = this.log.tail();
        let mut reader = Some(this.log.reader(committed)?);
        let mut batch = Some(Batch::new(committed));
        let limit = this.spec.size_bytes();
        loop {
            let end = tail.borrow_and_update().next_offset;
            let stopping = *stop.borrow();
            let (mut r, mut b) = (reader.take().unwrap(), batch.take().unwrap());
            let delim = this.spec.append_delimiter;
            let (r, b, full) = tokio::task::spawn_blocking(move || {
                let full = fill(&mut r, &mut b, end, limit, delim);
                (r, b, full)
            })
            .await
            .map_err(|e| DeliveryError::Join(e.to_string()))?;
            let full = full?;
            reader = Some(r);
            if !b.is_empty() {
                this.stats
                    .oldest_pending_ms
                    .store(b.oldest_ms, Ordering::Relaxed);
            }
            let due = !b.is_empty()
                && (full
                    || stopping
                    || Utc::now().timestamp_millis()
                        >= b.oldest_ms + this.spec.interval_seconds as i64 * 1000);
            if due {
                let next = b.end;
                this.clone().deliver(b).await;
                batch = Some(Batch::new(next));
                continue;
            }
            let caught_up = reader.as_ref().unwrap().position() >= end;
            if stopping && caught_up && b.is_empty() {
                return Ok(());
            }
            let deadline = if b.is_empty() {
                this.stats.oldest_pending_ms.store(0, Ordering::Relaxed);
                None
            } else {
                Some(b.oldest_ms + this.spec.interval_seconds as i64 * 1000)
            };
            batch = Some(b);
            if !caught_up {
                continue;
            }
            let sleep = match deadline {
                Some(d) => Duration::from_millis(
                    (d - Utc::now().timestamp_millis()).clamp(1, 3_600_000) as u64,
                ),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tail.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Writes a batch as one object, retrying until it is in the store.
    async fn deliver(self: Arc<Self>, batch: Batch) {
        let pending = Pending {
            first: batch.first,
            end: batch.end,
            key: self.key(batch.first, batch.oldest_ms),
            compression: self.spec.compression,
            append_delimiter: self.spec.append_delimiter,
        };
        let bytes = Arc::new(batch.bytes);
        self.write_object(pending, bytes).await
    }

    /// Step 1, the object, step 2 (see the module notes), with retries.
    async fn write_object(self: Arc<Self>, pending: Pending, bytes: Arc<Vec<u8>>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (this, p, b) = (self.clone(), pending.clone(), bytes.clone());
            let result = tokio::task::spawn_blocking(move || -> Result<usize, String> {
                let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
                save_state(
                    &this.dir,
                    &State {
                        committed: p.first,
                        pending: Some(p.clone()),
                    },
                )
                .map_err(|e| err("saving delivery state", &e))?;
                let body = encode(&b, p.compression);
                this.store
                    .put(&this.spec.bucket, &p.key, &body)
                    .map_err(|e| err(&format!("writing {}/{}", this.spec.bucket, p.key), &e))?;
                save_state(
                    &this.dir,
                    &State {
                        committed: p.end,
                        pending: None,
                    },
                )
                .map_err(|e| err("saving delivery state", &e))?;
                Ok(body.len())
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            match result {
                Ok(len) => {
                    let s = &self.stats;
                    s.committed_offset.store(pending.end, Ordering::Relaxed);
                    s.objects.fetch_add(1, Ordering::Relaxed);
                    s.records
                        .fetch_add(pending.end - pending.first, Ordering::Relaxed);
                    s.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    tracing::debug!(stream = %self.spec.name, key = %pending.key, records = pending.end - pending.first, "delivered");
                    if let Err(e) = self.log.remove_before(pending.end) {
                        tracing::warn!(stream = %self.spec.name, error = %e, "could not remove delivered log segments; will retry after the next object");
                    }
                    return;
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(stream = %self.spec.name, error = %e, retry_in = ?backoff,
                        "delivery failed; the records stay in the log and the batch will be retried");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Rewrites a batch recorded as pending, byte for byte, to its key.
    async fn redo(self: Arc<Self>, p: Pending) -> Result<(), DeliveryError> {
        let this = self.clone();
        let p2 = p.clone();
        let batch = tokio::task::spawn_blocking(move || -> Result<Batch, LogError> {
            let mut reader = this.log.reader(p2.first)?;
            let mut batch = Batch::new(p2.first);
            fill(
                &mut reader,
                &mut batch,
                p2.end,
                usize::MAX,
                p2.append_delimiter,
            )?;
            Ok(batch)
        })
        .await
        .map_err(|e| DeliveryError::Join(e.to_string()))??;
        if batch.end != p.end {
            return Err(LogError::Corrupt {
                file: self.log.dir().to_path_buf(),
                what: format!(
                    "pending batch {}..{} but the log ends at {}",
                    p.first, p.end, batch.end
                ),
            }
            .into());
        }
        self.write_object(p, Arc::new(batch.bytes)).await;
        Ok(())
    }
}
