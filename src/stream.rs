//! Delivery streams: each owns its log and its delivery task; the registry
//! owns the streams.
//!
//! A stream lives in `<data-dir>/streams/<name>/`:
//!
//! ```text
//! stream.json     the CreateDeliveryStream request, create time, incarnation id, origin
//! log/            the write-ahead log (see `log`)
//! delivery.json   what has reached the lake (see `delivery`)
//! ```
//!
//! A stream directory appears by an atomic rename of a fully written one,
//! so a crash mid-create leaves no half stream. Streams declared in the
//! config file are created or updated from it at start; a stream created
//! through the API survives restarts like any other.
//!
//! Intake and shutdown: every put holds a read lock on the stream's gate
//! while it appends. Closing a stream (delete, shutdown) takes the write
//! lock, which waits for puts in flight, then marks the stream closed. Only
//! then is delivery told to stop, so its final flush covers every record
//! that was acknowledged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::delivery::{self, Delivery, DeliveryStats};
use crate::destination::lake::store::{LocalStore, S3Bucket, Stores};
use crate::destination::lake::{Backup, Lake};
use crate::destination::warehouse::queue::Queue;
use crate::destination::warehouse::task::{Loading, Task};
use crate::destination::warehouse::{Warehouse, WarehouseStats};
use crate::destination::Destination;
use crate::log::{Frames, Log, LogError, LogOptions};
use crate::spec::{self, StreamSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Api,
    Config,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    request: Value,
    created_ms: i64,
    incarnation: uuid::Uuid,
    origin: Origin,
}

#[derive(Default)]
pub struct IntakeStats {
    pub records: AtomicU64,
    pub bytes: AtomicU64,
    pub rejected: AtomicU64,
}

pub struct Stream {
    pub spec: StreamSpec,
    /// The CreateDeliveryStream request as given (API or config file), from
    /// which Describe answers what was set.
    pub request: Value,
    pub created_ms: i64,
    pub incarnation: uuid::Uuid,
    pub origin: Origin,
    pub log: Log,
    pub intake: IntakeStats,
    pub delivery: Arc<DeliveryStats>,
    /// For a warehouse destination: its loads, and the staged objects waiting.
    pub warehouse: Option<(Arc<WarehouseStats>, Arc<Queue>)>,
    /// DatabaseAsSource: what the change capture reports.
    pub source: Option<Arc<crate::source::SourceStats>>,
    /// The change capture task, stopped first when the stream closes.
    capture: std::sync::Mutex<Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)>>,
    /// The loading task, stopped after delivery when the stream closes.
    loader: std::sync::Mutex<Option<(watch::Sender<bool>, std::thread::JoinHandle<()>)>>,
    dir: PathBuf,
    /// `false` once the stream is closed to puts.
    gate: Arc<tokio::sync::RwLock<bool>>,
    stop: watch::Sender<bool>,
    /// Resolves when delivery has finished after `stop`.
    finished: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<Result<(), String>>>>,
    /// How delivery ended, once it has.
    closed: std::sync::Mutex<Option<Result<(), String>>>,
}

/// Why creating or deleting a stream failed; the front door answers each
/// kind with its AWS error.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    NotFound(String),
    /// The stream is the config file's to change.
    #[error("{0}")]
    Declared(String),
    /// A condition to wait out: a full disk, a store that cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
}

/// Records for [`Stream::put`], each with its arrival time. The front door
/// fills it; how the log stores them is the log's business (the local log
/// takes the buffer as it is, framed as it was filled, without a copy).
#[derive(Default)]
pub struct Batch(Frames);

impl Batch {
    pub fn with_capacity(bytes: usize) -> Self {
        Batch(Frames::with_capacity(bytes))
    }

    pub fn push(&mut self, arrival_ms: i64, data: &[u8]) {
        self.0.push(arrival_ms, data)
    }

    /// Adds a record that `fill` appends to the buffer (for example while
    /// decoding it), saving a copy. Returns the record's size; a record over
    /// `max` bytes is measured and left out.
    pub fn push_with<E>(
        &mut self,
        arrival_ms: i64,
        max: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<usize, E> {
        self.0.push_with(arrival_ms, max, fill)
    }

    pub fn len(&self) -> u64 {
        self.0.count()
    }

    pub fn is_empty(&self) -> bool {
        self.0.count() == 0
    }

    /// Bytes of record data, without the log's framing.
    pub fn data_bytes(&self) -> u64 {
        (self.0.bytes() - self.0.count() as usize * crate::log::FRAME_HEADER) as u64
    }
}

/// Why a put was refused; nothing of the batch was taken.
#[derive(Debug)]
pub enum PutError {
    /// The stream is closing (shutdown or delete).
    Closed,
    /// The log holds `used` of its `max` bytes: delivery is behind.
    Full { used: u64, max: u64 },
    /// The log cannot take records right now; why.
    Unavailable(String),
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutError::Closed => f.write_str("the stream is closing"),
            PutError::Full { used, max } => {
                write!(
                    f,
                    "the log is full ({used} of {max} bytes): delivery is behind"
                )
            }
            PutError::Unavailable(m) => f.write_str(m),
        }
    }
}

impl From<LogError> for PutError {
    fn from(e: LogError) -> Self {
        match e {
            LogError::Full { used, max } => PutError::Full { used, max },
            LogError::Closed => PutError::Closed,
            e @ LogError::Write(_) => PutError::Unavailable(format!(
                "it cannot write its log right now ({e}); nothing was accepted"
            )),
            e => PutError::Unavailable(e.to_string()),
        }
    }
}

impl Stream {
    /// `<data-dir>/streams/<name>/`, where the stream keeps its state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn arn(&self, region: &str) -> String {
        format!(
            "arn:aws:firehose:{region}:000000000000:deliverystream/{}",
            self.spec.name
        )
    }

    /// A record's id: the stream's incarnation and the record's log offset.
    pub fn record_id(&self, offset: u64) -> String {
        let mut id = String::with_capacity(48);
        self.push_record_id(&mut id, offset);
        id
    }

    /// Appends record `offset`'s id to `out` (see [`push_record_id`]).
    pub fn push_record_id(&self, out: &mut String, offset: u64) {
        push_record_id(out, &self.incarnation, offset);
    }

    /// Appends records; returns the offset of the first once they are durable.
    ///
    /// The append runs to its end even if the caller stops waiting (a client
    /// that hangs up mid-request): records that reach the log are delivered,
    /// so they are counted too, and the gate stays held until they are in.
    pub async fn put(self: &Arc<Self>, batch: Batch) -> Result<u64, PutError> {
        self.put_as(batch, None).await
    }

    /// [`Stream::put`] for a producer that must not append a batch twice:
    /// the batch and the producer's new position are durable together (see
    /// `log`'s Producers), and [`Log::position`] tells where it got to.
    pub async fn put_marked(
        self: &Arc<Self>,
        batch: Batch,
        producer: &str,
        position: &str,
    ) -> Result<u64, PutError> {
        self.put_as(batch, Some((producer.to_owned(), position.to_owned())))
            .await
    }

    async fn put_as(
        self: &Arc<Self>,
        batch: Batch,
        mark: Option<(String, String)>,
    ) -> Result<u64, PutError> {
        let open = self.gate.clone().read_owned().await;
        if !*open {
            return Err(PutError::Closed);
        }
        let stream = self.clone();
        let append = tokio::spawn(async move {
            let _open = open;
            let (n, bytes) = (batch.len(), batch.data_bytes());
            let first = match &mark {
                Some((producer, position)) => {
                    stream.log.append_marked(batch.0, producer, position).await
                }
                None => stream.log.append(batch.0).await,
            }?;
            stream.intake.records.fetch_add(n, Ordering::Relaxed);
            stream.intake.bytes.fetch_add(bytes, Ordering::Relaxed);
            Ok(first)
        });
        append.await.unwrap_or(Err(PutError::Closed))
    }

    /// Snapshots every source table again (a DatabaseAsSource stream):
    /// stops change capture, records the request in the log, and starts it
    /// again from the current end of the source's log. Each table's records
    /// start with a truncate (`t`), so a reader replaying them, and the
    /// warehouse mirror, drop what came before.
    pub async fn resnapshot(self: &Arc<Self>) -> Result<(), String> {
        let (Some(stats), Some(db)) = (self.source.clone(), self.spec.source.clone()) else {
            return Err(format!(
                "delivery stream {} is not of type DatabaseAsSource",
                self.spec.name
            ));
        };
        let open = self.gate.read().await;
        if !*open {
            return Err(format!("delivery stream {} is closing", self.spec.name));
        }
        let running = self.capture.lock().unwrap().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(true);
            let _ = task.await;
        }
        drop(open);
        let requested = crate::source::request_snapshot(self).await;
        *stats.failed.lock().unwrap() = None;
        *stats.last_error.lock().unwrap() = None;
        stats.tables.lock().unwrap().clear();
        let (stop, stop_rx) = watch::channel(false);
        let ctx = crate::source::Ctx {
            stream: self.clone(),
            spec: db,
            stats,
        };
        *self.capture.lock().unwrap() = Some((stop, crate::source::start(ctx, stop_rx)));
        requested
    }

    /// Refuses new puts, waits for those in flight, delivers everything in
    /// the log, and stops the delivery task. Err says why not everything
    /// could be delivered (it stays in the log for the next start).
    pub async fn close(&self) -> Result<(), String> {
        // The source first: what it has appended is delivered below, and
        // it resumes after it at the next start.
        let capture = self.capture.lock().unwrap().take();
        if let Some((stop, task)) = capture {
            let _ = stop.send(true);
            let _ = task.await;
        }
        *self.gate.write().await = false;
        // A snapshot requested meanwhile may have started it again.
        let capture = self.capture.lock().unwrap().take();
        if let Some((stop, task)) = capture {
            let _ = stop.send(true);
            let _ = task.await;
        }
        let _ = self.stop.send(true);
        let finished = self.finished.lock().unwrap().take();
        if let Some(f) = finished {
            let result = f
                .await
                .unwrap_or_else(|_| Err("the delivery thread is gone".into()));
            *self.closed.lock().unwrap() = Some(result);
        }
        // Loading stops between objects (or retries); what is still queued
        // is loaded at the next start.
        let loader = self.loader.lock().unwrap().take();
        if let Some((stop, thread)) = loader {
            let _ = stop.send(true);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.closed.lock().unwrap().clone().unwrap_or(Ok(()))
    }

    /// Age of the oldest record not yet in the lake (0 when caught up).
    pub fn lag_seconds(&self, now_ms: i64) -> f64 {
        let oldest = self.delivery.oldest_pending_ms.load(Ordering::Relaxed);
        if oldest > 0 && self.lag_records() > 0 {
            (now_ms - oldest).max(0) as f64 / 1000.0
        } else {
            0.0
        }
    }

    /// Records acknowledged but not yet in the lake.
    pub fn lag_records(&self) -> u64 {
        let tail = self.log.tail().borrow().next_offset;
        tail.saturating_sub(self.delivery.committed_offset.load(Ordering::Relaxed))
    }

    /// For a warehouse destination: records acknowledged but not yet
    /// committed in the table (not yet staged, or staged and queued), and
    /// the age in seconds of the oldest of them.
    pub fn load_lag(&self, now_ms: i64) -> Option<(u64, f64)> {
        let (_, queue) = self.warehouse.as_ref()?;
        let (_, queued, oldest_queued) = queue.backlog();
        let staged_lag = self.lag_seconds(now_ms);
        let queued_lag = oldest_queued.map_or(0.0, |o| (now_ms - o).max(0) as f64 / 1000.0);
        Some((self.lag_records() + queued, staged_lag.max(queued_lag)))
    }
}

pub struct Registry {
    data_dir: PathBuf,
    opts: LogOptions,
    max_partitions: usize,
    declared: spec::Declared,
    store: Stores,
    streams: RwLock<BTreeMap<String, Arc<Stream>>>,
    /// Serializes create and delete, which touch the disk.
    admin: tokio::sync::Mutex<()>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Registry {
    /// Opens every stream under `data_dir`, then creates or updates those
    /// the config declares.
    pub async fn open(
        data_dir: &Path,
        opts: LogOptions,
        max_partitions: usize,
        buckets: &BTreeMap<String, S3Bucket>,
        declared: spec::Declared,
        streams: Vec<Value>,
    ) -> anyhow::Result<Registry> {
        use anyhow::Context;
        let streams_dir = data_dir.join("streams");
        std::fs::create_dir_all(&streams_dir)
            .with_context(|| format!("creating {}", streams_dir.display()))?;
        let local = LocalStore::open(data_dir)
            .with_context(|| format!("opening the lake in {}", data_dir.display()))?;
        let reg = Registry {
            data_dir: data_dir.to_path_buf(),
            opts,
            max_partitions,
            declared,
            store: Stores::new(local, buckets).map_err(|e| anyhow::anyhow!("{e}"))?,
            streams: RwLock::new(BTreeMap::new()),
            admin: tokio::sync::Mutex::new(()),
        };
        let mut on_disk = BTreeMap::new();
        for entry in std::fs::read_dir(&streams_dir)? {
            let path = entry?.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') {
                // An interrupted create or delete: never a live stream.
                std::fs::remove_dir_all(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
                continue;
            }
            let meta_path = path.join("stream.json");
            let meta: Meta = serde_json::from_slice(
                &std::fs::read(&meta_path)
                    .with_context(|| format!("reading {}", meta_path.display()))?,
            )
            .with_context(|| format!("parsing {}", meta_path.display()))?;
            on_disk.insert(name, meta);
        }
        let mut names_declared = std::collections::BTreeSet::new();
        for request in streams {
            let spec = spec::parse(&request, &reg.declared).map_err(|e| anyhow::anyhow!("{e}"))?;
            let name = spec.name.clone();
            if !names_declared.insert(name.clone()) {
                anyhow::bail!("delivery stream {name} is declared twice");
            }
            let dir = streams_dir.join(&name);
            match on_disk.remove(&name) {
                Some(mut meta) => {
                    if meta.request != request || meta.origin != Origin::Config {
                        meta.request = request;
                        meta.origin = Origin::Config;
                        write_meta(&dir, &meta)?;
                    }
                    reg.start(spec, meta, dir)?;
                }
                None => {
                    let meta = Meta {
                        request,
                        created_ms: now_ms(),
                        incarnation: uuid::Uuid::new_v4(),
                        origin: Origin::Config,
                    };
                    reg.create_dir(&name, &meta)?;
                    reg.start(spec, meta, dir)?;
                }
            }
        }
        for (name, mut meta) in on_disk {
            let spec = spec::parse(&meta.request, &reg.declared).map_err(|e| {
                anyhow::anyhow!("stored delivery stream {name} is no longer valid: {e}")
            })?;
            if meta.origin == Origin::Config {
                tracing::warn!(stream = %name, "no longer in the config file; it keeps running as if created through the API (delete it with DeleteDeliveryStream)");
                meta.origin = Origin::Api;
                write_meta(&streams_dir.join(&name), &meta)?;
            }
            reg.start(spec, meta, streams_dir.join(&name))?;
        }
        Ok(reg)
    }

    /// The S3 store of a bucket that lives on an S3 service.
    pub fn s3_store(&self, bucket: &str) -> Option<std::sync::Arc<dyn object_store::ObjectStore>> {
        self.store.s3_store(bucket)
    }

    pub fn lake(&self) -> &Path {
        self.store.local.root()
    }

    fn create_dir(&self, name: &str, meta: &Meta) -> anyhow::Result<()> {
        let streams_dir = self.data_dir.join("streams");
        let tmp = streams_dir.join(format!(".creating-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&tmp)?;
        write_meta(&tmp, meta)?;
        std::fs::rename(&tmp, streams_dir.join(name))?;
        crate::log::sync_dir(&streams_dir)?;
        Ok(())
    }

    fn start(&self, spec: StreamSpec, meta: Meta, dir: PathBuf) -> anyhow::Result<()> {
        // An unreadable delivery state stops this stream's delivery (which
        // reports why), not hydrant: the log still opens from its segments
        // and takes puts up to its bound.
        let committed = delivery::committed_offset(&dir).unwrap_or_else(|e| {
            tracing::error!(stream = %spec.name, error = %e, "the delivery state is unreadable; delivery will report it and stop");
            0
        });
        let log = Log::open(&dir.join("log"), committed, self.opts)?;
        let stats = Arc::new(DeliveryStats::default());
        let (stop, stop_rx) = watch::channel(false);
        let lake = Lake {
            stores: self.store.clone(),
            bucket: spec.bucket.clone(),
        };
        let (destination, warehouse, loader): (Arc<dyn Destination>, _, _) = match &spec.warehouse {
            None => (Arc::new(lake), None, None),
            Some(w) => {
                use anyhow::Context;
                let queue = Arc::new(
                    Queue::open(&dir.join("loads"))
                        .with_context(|| format!("opening {}", dir.join("loads").display()))?,
                );
                let wstats = Arc::new(WarehouseStats::default());
                let task = Task {
                    loading: Loading {
                        spec: spec.clone(),
                        stores: self.store.clone(),
                        dir: dir.clone(),
                    },
                    queue: queue.clone(),
                    stats: wstats.clone(),
                };
                let (stop_loading, stop_loading_rx) = watch::channel(false);
                let thread = task.start(stop_loading_rx)?;
                let destination = Warehouse {
                    staging: lake,
                    backup: w.backup.as_ref().map(|b| Backup {
                        stores: self.store.clone(),
                        bucket: b.bucket.clone(),
                        prefix: b.prefix.clone(),
                        compression: b.compression,
                        source_compression: spec.compression,
                    }),
                    queue: queue.clone(),
                    stats: wstats.clone(),
                };
                (
                    Arc::new(destination) as Arc<dyn Destination>,
                    Some((wstats, queue)),
                    Some((stop_loading, thread)),
                )
            }
        };
        let spec_source = spec.source.clone();
        let d = Delivery {
            spec: spec.clone(),
            incarnation: meta.incarnation,
            dir: dir.clone(),
            log: log.clone(),
            destination,
            stats: stats.clone(),
            max_partitions: self.max_partitions,
            scratch: self.store.local.scratch().to_path_buf(),
        };
        let finished = d.start(stop_rx);
        let stream = Stream {
            spec,
            request: meta.request,
            created_ms: meta.created_ms,
            incarnation: meta.incarnation,
            origin: meta.origin,
            log,
            intake: IntakeStats::default(),
            delivery: stats,
            warehouse,
            source: spec_source.as_ref().map(|_| Default::default()),
            capture: std::sync::Mutex::new(None),
            loader: std::sync::Mutex::new(loader),
            dir,
            gate: Arc::new(tokio::sync::RwLock::new(true)),
            stop,
            finished: std::sync::Mutex::new(Some(finished)),
            closed: std::sync::Mutex::new(None),
        };
        let stream = Arc::new(stream);
        if let (Some(db), Some(stats)) = (spec_source, stream.source.clone()) {
            let (stop, stop_rx) = watch::channel(false);
            let ctx = crate::source::Ctx {
                stream: stream.clone(),
                spec: db,
                stats,
            };
            let task = crate::source::start(ctx, stop_rx);
            *stream.capture.lock().unwrap() = Some((stop, task));
        }
        self.streams
            .write()
            .unwrap()
            .insert(stream.spec.name.clone(), stream);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<Stream>> {
        self.streams.read().unwrap().get(name).cloned()
    }

    pub fn list(&self) -> Vec<Arc<Stream>> {
        self.streams.read().unwrap().values().cloned().collect()
    }

    /// CreateDeliveryStream.
    pub async fn create(&self, request: Value) -> Result<Arc<Stream>, AdminError> {
        let spec = spec::parse(&request, &self.declared)?;
        let _admin = self.admin.lock().await;
        if self.get(&spec.name).is_some() {
            return Err(AdminError::Exists(format!(
                "Delivery stream {} already exists",
                spec.name
            )));
        }
        if let Some(db) = &spec.source {
            crate::source::check(db, &spec.name).await.map_err(|e| {
                spec::SpecError::refused(format!(
                    "DatabaseSourceConfiguration: the database at {}:{} cannot be captured: {e}",
                    db.host, db.port
                ))
            })?;
        }
        let meta = Meta {
            request,
            created_ms: now_ms(),
            incarnation: uuid::Uuid::new_v4(),
            origin: Origin::Api,
        };
        let name = spec.name.clone();
        let dir = self.data_dir.join("streams").join(&name);
        self.create_dir(&name, &meta)
            .and_then(|_| {
                self.start(spec, meta, dir.clone()).inspect_err(|_| {
                    // Not started, so not created: a retry starts afresh.
                    let _ = std::fs::remove_dir_all(&dir);
                })
            })
            .map_err(|e| {
                // A full disk is a condition to wait out, like a full log.
                let full = e.chain().any(|c| {
                    let io = match c.downcast_ref::<LogError>() {
                        Some(LogError::Io { err, .. }) => Some(err),
                        _ => c.downcast_ref::<std::io::Error>(),
                    };
                    io.is_some_and(|io| io.kind() == std::io::ErrorKind::StorageFull)
                });
                let message = format!("creating delivery stream {name}: {e:#}");
                if full {
                    AdminError::Unavailable(format!(
                        "{message}; the disk is full: free space and retry"
                    ))
                } else {
                    AdminError::Failed(message)
                }
            })?;
        Ok(self.get(&name).expect("just started"))
    }

    /// DeleteDeliveryStream: delivers what was acknowledged, then removes the
    /// stream and its log. Objects already in the lake stay.
    pub async fn delete(&self, name: &str) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        let stream = self
            .get(name)
            .ok_or_else(|| AdminError::NotFound(format!("Delivery stream {name} not found")))?;
        if stream.origin == Origin::Config {
            return Err(AdminError::Declared(format!(
                "Delivery stream {name} is declared in the config file; remove it there and restart"
            )));
        }
        stream.close().await.map_err(|e| {
            AdminError::Unavailable(format!(
                "Delivery stream {name} is closed but could not deliver everything it acknowledged ({e}); \
                 its records are kept; retry the delete once the store is reachable, or restart hydrant"
            ))
        })?;
        self.streams.write().unwrap().remove(name);
        if let Some(db) = &stream.spec.source {
            // A slot left behind would keep the source's WAL forever; say
            // how to drop it by hand if the source cannot be reached now.
            if let Err(e) = crate::source::forget(db, name).await {
                tracing::error!(stream = %name, error = %e,
                    slot = %crate::source::postgres::slot_name(name),
                    "could not drop the stream's replication slot and publication on its source: \
                     drop them there (pg_drop_replication_slot, DROP PUBLICATION)");
            }
        }
        let tomb = self
            .data_dir
            .join("streams")
            .join(format!(".deleted-{name}-{}", uuid::Uuid::new_v4()));
        std::fs::rename(&stream.dir, &tomb)
            .and_then(|_| std::fs::remove_dir_all(&tomb))
            .map_err(|e| AdminError::Failed(format!("removing delivery stream {name}: {e}")))?;
        Ok(())
    }

    /// Closes every stream: no more puts, everything acknowledged delivered.
    /// Err names the streams whose records could not all be delivered.
    pub async fn shutdown(&self) -> anyhow::Result<()> {
        let mut closing = tokio::task::JoinSet::new();
        for s in self.list() {
            closing.spawn(async move { (s.spec.name.clone(), s.close().await) });
        }
        let failed: Vec<String> = closing
            .join_all()
            .await
            .into_iter()
            .filter_map(|(name, r)| r.err().map(|e| format!("{name}: {e}")))
            .collect();
        anyhow::ensure!(
            failed.is_empty(),
            "not every acknowledged record reached the lake; they are safe in the log and are delivered at the next start ({})",
            failed.join("; ")
        );
        Ok(())
    }
}

/// The CreateDeliveryStream request of a stream in `data_dir`, as stored.
pub fn definition(data_dir: &Path, name: &str) -> anyhow::Result<Value> {
    use anyhow::Context;
    spec::check_stream_name(name)?;
    let path = data_dir.join("streams").join(name).join("stream.json");
    let meta: Meta = serde_json::from_slice(&std::fs::read(&path).with_context(|| {
        format!(
            "reading {} (is {name} a stream of this data dir?)",
            path.display()
        )
    })?)
    .with_context(|| format!("parsing {}", path.display()))?;
    Ok(meta.request)
}

fn write_meta(dir: &Path, meta: &Meta) -> anyhow::Result<()> {
    let tmp = dir.join("stream.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(meta)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, dir.join("stream.json"))?;
    crate::log::sync_dir(dir)?;
    Ok(())
}

/// Appends a record's id to `out`: its stream's incarnation, then its log
/// offset in 16 hex digits; written in place, for a batch's response.
pub fn push_record_id(out: &mut String, incarnation: &uuid::Uuid, offset: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    out.push_str(incarnation.simple().encode_lower(&mut buf));
    let digits: [u8; 16] = std::array::from_fn(|i| HEX[(offset >> (60 - 4 * i)) as usize & 15]);
    out.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn record_ids_are_the_incarnation_then_the_offset_in_hex() {
        let id = uuid::Uuid::new_v4();
        for offset in [0, 1, 0xdead_beef, u64::MAX] {
            let mut out = String::from("<");
            super::push_record_id(&mut out, &id, offset);
            assert_eq!(out, format!("<{}{offset:016x}", id.simple()));
        }
    }
}
