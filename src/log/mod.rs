//! The write-ahead log: where an acknowledged record lives until it is in the lake.
//!
//! One log per delivery stream, in `<data-dir>/streams/<name>/log/`. It is an
//! append-only sequence of records, each with an implicit offset (0, 1, 2, ...
//! for the life of the stream). This module stores, syncs, reads back and
//! removes records; it knows nothing of batching, objects or the lake.
//!
//! # On disk
//!
//! The log is a run of segment files named by the offset of their first record,
//! zero-padded so that names sort like numbers: `00000000000000000000.log`,
//! `00000000000000131072.log`, ... A segment is a run of frames:
//!
//! ```text
//! +-----------+-----------+----------------+------------------+
//! | len: u32  | crc: u32  | arrival_ms: i64| data: len bytes  |
//! +-----------+-----------+----------------+------------------+
//!   little-endian; crc = CRC-32C over arrival_ms and data
//! ```
//!
//! A record's offset is its segment's base offset plus its index in the
//! segment; nothing else is stored, so a frame is 16 bytes plus the data.
//! Two kinds of frame take no data offset of their own: a *hole* (see
//! Recovery) and a *mark* (see Producers).
//!
//! # Producers
//!
//! A producer that must not append a batch twice (an aggregate's closed
//! windows, a change-data source's position in its database) appends with
//! [`Log::append_marked`]: a mark frame naming the producer and its position
//! heads the batch, in the same write and the same fsync. The batch and the
//! position are durable together or not at all (recovery cuts a batch whose
//! records did not all reach the disk, with its mark), so after a crash
//! [`Log::position`] says exactly which batches are in. Positions survive
//! the removal of their segments in `producers.json`, written before any
//! segment is removed.
//!
//! # Writes and group commit
//!
//! One writer thread per log owns the active (last) segment. Request handlers
//! frame their records themselves (in parallel, on the async runtime) and hand
//! the framed bytes to the writer. The writer takes every request queued at
//! that moment, writes them back to back, calls `fdatasync` once, and only then
//! answers each request with the offset of its first record. Requests that
//! arrive during an fsync wait for the next one, so under load many requests
//! share one fsync, and an idle log answers one request in one fsync.
//!
//! A segment is rolled once it passes `segment_bytes`: the old one is synced
//! before the new one is created, so every segment but the last is complete.
//!
//! # Recovery
//!
//! On open, every segment is checked frame by frame (see `recover`). Damage
//! with nothing intact after it at the end of the last segment is a torn
//! tail (a write the process or the machine did not finish) and is cut off:
//! no record in it was acknowledged, because acknowledgement waits for the
//! fsync that covers it. Damage followed by intact frames, or anywhere in a
//! sealed segment, is corruption: the damaged bytes are moved aside, a hole
//! frame keeps the lost records' offsets, every intact record is kept, and
//! the loss is reported. A checksum failure found later while reading (the
//! disk damaged a record after start) stops delivery and is reported; the
//! next start repairs it.
//!
//! # Removal
//!
//! Delivery calls [`Log::remove_before`] with the offset below which every
//! record is in the lake; every segment whose records are all below it is
//! deleted. The active segment is never deleted, so the next offset can always
//! be recovered from the files.
//!
//! Other readers (aggregates) take a [`Hold`] on the records they still need,
//! and no segment a hold covers is removed, until the log reaches its bound:
//! the bound is for undelivered records, so then delivered segments go even
//! if a hold covers them, and the holder's next read fails with
//! [`LogError::Removed`], which says exactly which offsets it missed.
//!
//! # Limits
//!
//! `max_bytes` bounds the log on disk. An append that would pass it fails with
//! [`LogError::Full`] and nothing is written: the front door turns that into
//! ServiceUnavailableException so producers back off and retry. A write that
//! fails (a full disk) is cut back off the file and fails the same way; an
//! fsync that fails poisons the log, because after a failed fsync the kernel
//! may have dropped the dirty pages and nothing can be promised any more.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

mod recover;
pub use recover::Loss;

/// Bytes before a record's data: len, crc, arrival time.
pub const FRAME_HEADER: usize = 16;

/// The longest frame data read back; anything longer is damage.
const MAX_FRAME_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the log is full ({used} of {max} bytes); delivery must catch up before more records are taken")]
    Full { used: u64, max: u64 },
    #[error("writing the log failed: {0}")]
    Write(io::Error),
    #[error(
        "the log is unusable after a failed fsync ({0}); restart hydrant once the disk is healthy"
    )]
    Poisoned(String),
    #[error("the log is closed")]
    Closed,
    #[error("log corrupt in {file}: {what}")]
    Corrupt { file: PathBuf, what: String },
    #[error("log i/o on {file}: {err}")]
    Io { file: PathBuf, err: io::Error },
    #[error("offsets {offset}..{first} were removed before this reader read them (the log reached its bound)")]
    Removed { offset: u64, first: u64 },
    #[error("a marked append: {0}")]
    BadMark(String),
}

impl LogError {
    fn io(file: &Path, err: io::Error) -> Self {
        LogError::Io {
            file: file.to_path_buf(),
            err,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    pub segment_bytes: u64,
    pub max_bytes: u64,
}

/// Frames records into a buffer ready for [`Log::append`].
#[derive(Default)]
pub struct Frames {
    buf: Vec<u8>,
    count: u64,
}

impl Frames {
    pub fn with_capacity(bytes: usize) -> Self {
        Frames {
            buf: Vec::with_capacity(bytes),
            count: 0,
        }
    }

    pub fn push(&mut self, arrival_ms: i64, data: &[u8]) {
        let start = self.buf.len();
        self.buf
            .extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(&arrival_ms.to_le_bytes());
        self.buf.extend_from_slice(data);
        let crc = crc32c::crc32c(&self.buf[start + 8..]);
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
    }

    /// Frames a record that `fill` appends to the buffer (for example while
    /// decoding it), saving a copy. Returns the record's size; a record over
    /// `max` bytes is measured and dropped again, not framed.
    pub fn push_with<E>(
        &mut self,
        arrival_ms: i64,
        max: usize,
        fill: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<usize, E> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        self.buf.extend_from_slice(&arrival_ms.to_le_bytes());
        if let Err(e) = fill(&mut self.buf) {
            self.buf.truncate(start);
            return Err(e);
        }
        let len = self.buf.len() - start - FRAME_HEADER;
        if len > max {
            self.buf.truncate(start);
            return Ok(len);
        }
        let crc = crc32c::crc32c(&self.buf[start + 8..]);
        self.buf[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
        self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        self.count += 1;
        Ok(len)
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }
}

struct Append {
    frames: Frames,
    /// The mark frame that heads the batch, with its producer and position.
    mark: Option<(Vec<u8>, String, String)>,
    reply: oneshot::Sender<Result<u64, LogError>>,
}

/// Longest producer name and position a mark holds.
pub const MAX_PRODUCER_BYTES: usize = 256;
pub const MAX_POSITION_BYTES: usize = 4096;

/// What the log holds right now, published after every fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The offset the next record will get: every record below it is durable.
    pub next_offset: u64,
}

struct Shared {
    dir: PathBuf,
    bytes_on_disk: AtomicU64,
    poisoned: AtomicBool,
    fsync: crate::histogram::Histogram,
    /// Every record below this offset is delivered.
    delivered: AtomicU64,
    /// Delivery and the writer both remove segments; one at a time.
    removal: std::sync::Mutex<()>,
    /// Records that damage on disk destroyed, as found when the log opened.
    losses: std::sync::Mutex<Vec<Loss>>,
    /// Every producer's last durable position.
    producers: std::sync::Mutex<std::collections::BTreeMap<String, String>>,
    holds: std::sync::Mutex<Vec<std::sync::Weak<Hold>>>,
}

/// Where producers' positions outlive their segments.
const PRODUCERS_FILE: &str = "producers.json";

impl Shared {
    /// Removes the segments below `offset` that no hold needs; `force`
    /// removes them even so (the log is at its bound).
    fn remove_before(&self, offset: u64, force: bool) -> Result<(), LogError> {
        let _one = self.removal.lock().unwrap();
        let dir = &self.dir;
        let held = self
            .holds
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| h.upgrade())
            .map(|h| h.at.load(Ordering::Relaxed))
            .min();
        let offset = match held {
            Some(h) if !force => offset.min(h),
            _ => offset,
        };
        let bases = segments(dir)?;
        if bases.len() < 2 || bases[1] > offset {
            return Ok(());
        }
        // The positions the doomed segments' marks hold go to disk first.
        let producers = self.producers.lock().unwrap().clone();
        if !producers.is_empty() {
            let path = dir.join(PRODUCERS_FILE);
            let tmp = dir.join(format!("{PRODUCERS_FILE}.tmp"));
            let json = serde_json::to_vec(&producers).expect("strings serialize");
            (|| {
                let mut f = File::create(&tmp)?;
                f.write_all(&json)?;
                f.sync_all()?;
                fs::rename(&tmp, &path)?;
                sync_dir(dir)
            })()
            .map_err(|e| LogError::io(&path, e))?;
        }
        let mut removed = false;
        for pair in bases.windows(2) {
            if pair[1] > offset {
                break;
            }
            let path = dir.join(segment_name(pair[0]));
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path).map_err(|e| LogError::io(&path, e))?;
            self.bytes_on_disk.fetch_sub(len, Ordering::Relaxed);
            self.losses.lock().unwrap().retain(|l| l.segment != path);
            removed = true;
        }
        if removed {
            sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
        }
        Ok(())
    }
}

/// A handle to one stream's log. Cheap to clone.
#[derive(Clone)]
pub struct Log {
    tx: mpsc::UnboundedSender<Append>,
    tail: watch::Receiver<Tail>,
    shared: Arc<Shared>,
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

/// The segments in `dir`, by base offset.
fn segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| LogError::io(dir, e))? {
        let entry = entry.map_err(|e| LogError::io(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What [`read_frame`] found.
enum Slot {
    /// A record: its arrival time (its data is in the buffer).
    Record(i64),
    /// A hole: this many offsets whose records were lost.
    Hole(u64),
    /// A producer's mark: no offset of its own.
    Mark,
}

/// Reads frames from a segment. Returns `Ok(None)` at a clean end of file and
/// `Err(reason)` at a short or corrupt frame.
fn read_frame(
    r: &mut impl Read,
    data: &mut Vec<u8>,
) -> io::Result<Result<Option<Slot>, &'static str>> {
    let mut header = [0u8; FRAME_HEADER];
    let mut got = 0;
    while got < FRAME_HEADER {
        match r.read(&mut header[got..])? {
            0 if got == 0 => return Ok(Ok(None)),
            0 => return Ok(Err("short frame header")),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(header[0..4].try_into().unwrap()) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().unwrap());
    let arrival = i64::from_le_bytes(header[8..16].try_into().unwrap());
    if len as u32 & recover::HOLE != 0 {
        return Ok(match recover::frame_at(&header, 0, 0) {
            Some((recover::Frame::Hole(n), _)) => Ok(Some(Slot::Hole(n))),
            _ => Err("checksum mismatch"),
        });
    }
    let marked = len as u32 & recover::MARK != 0;
    let len = len & !(recover::MARK as usize);
    if len > MAX_FRAME_BYTES {
        return Ok(Err("frame length out of range"));
    }
    data.resize(len, 0);
    if let Err(e) = r.read_exact(data) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Err("short frame data"))
        } else {
            Err(e)
        };
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&header[8..16]), data);
    if actual != crc {
        return Ok(Err("checksum mismatch"));
    }
    if marked {
        return Ok(Ok(Some(Slot::Mark)));
    }
    Ok(Ok(Some(Slot::Record(arrival))))
}

impl Log {
    /// Opens (or creates) the log in `dir`, recovering a torn tail. `first_offset`
    /// is where a log with no segments starts: the offset delivery has
    /// committed, so a stream whose segments were all delivered and removed
    /// keeps counting where it was.
    pub fn open(dir: &Path, first_offset: u64, opts: LogOptions) -> Result<Log, LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io(dir, e))?;
        let mut bases = segments(dir)?;
        if bases.is_empty() {
            let path = dir.join(segment_name(first_offset));
            File::create(&path).map_err(|e| LogError::io(&path, e))?;
            sync_dir(dir).map_err(|e| LogError::io(dir, e))?;
            bases.push(first_offset);
        }
        let mut losses = Vec::new();
        let mut last = None;
        let producers_path = dir.join(PRODUCERS_FILE);
        let mut producers: std::collections::BTreeMap<String, String> =
            match fs::read(&producers_path) {
                Ok(b) => serde_json::from_slice(&b).map_err(|e| LogError::Corrupt {
                    file: producers_path.clone(),
                    what: e.to_string(),
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => Default::default(),
                Err(e) => return Err(LogError::io(&producers_path, e)),
            };
        for (i, &b) in bases.iter().enumerate() {
            let mut r = recover::segment(dir, b, bases.get(i + 1).copied())?;
            losses.append(&mut r.losses);
            producers.extend(r.marks.drain(..));
            last = Some(r);
        }
        let recover::Recovered {
            count,
            len: valid_len,
            ..
        } = last.expect("there is a segment");
        let base = *bases.last().unwrap();
        let path = dir.join(segment_name(base));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io(&path, e))?;
        file.seek(SeekFrom::Start(valid_len))
            .map_err(|e| LogError::io(&path, e))?;
        let mut on_disk = 0;
        for b in &bases {
            let p = dir.join(segment_name(*b));
            on_disk += fs::metadata(&p).map_err(|e| LogError::io(&p, e))?.len();
        }
        let next_offset = base + count;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            bytes_on_disk: AtomicU64::new(on_disk),
            poisoned: AtomicBool::new(false),
            fsync: Default::default(),
            delivered: AtomicU64::new(first_offset),
            removal: Default::default(),
            losses: std::sync::Mutex::new(losses),
            producers: std::sync::Mutex::new(producers),
            holds: Default::default(),
        });
        let (tail_tx, tail) = watch::channel(Tail { next_offset });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            shared: shared.clone(),
            opts,
            file,
            base,
            len: valid_len,
            next_offset,
            tail: tail_tx,
        };
        std::thread::Builder::new()
            .name(format!(
                "log-{}",
                dir.parent()
                    .and_then(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
            .spawn(move || writer.run(rx))
            .map_err(|e| LogError::io(dir, e))?;
        Ok(Log { tx, tail, shared })
    }

    /// Appends framed records; resolves once they are on disk, with the offset
    /// of the first one.
    pub async fn append(&self, frames: Frames) -> Result<u64, LogError> {
        self.send(frames, None).await
    }

    /// Appends a batch and the producer's new position as one write: after a
    /// crash, either both are in the log or neither is. The position is the
    /// producer's own text (at most [`MAX_POSITION_BYTES`]); [`Log::position`]
    /// returns it. An empty batch is a mark alone: a producer's position
    /// moved on with nothing to append (a change source past transactions
    /// on tables it does not capture).
    pub async fn append_marked(
        &self,
        frames: Frames,
        producer: &str,
        position: &str,
    ) -> Result<u64, LogError> {
        let bad = LogError::BadMark;
        if producer.is_empty() || producer.len() > MAX_PRODUCER_BYTES {
            return Err(bad(format!(
                "a producer name is 1 to {MAX_PRODUCER_BYTES} bytes"
            )));
        }
        if position.len() > MAX_POSITION_BYTES {
            return Err(bad(format!(
                "a producer position is at most {MAX_POSITION_BYTES} bytes"
            )));
        }
        if frames.count > u32::MAX as u64 {
            return Err(bad("a marked batch holds at most 2^32-1 records".into()));
        }
        let mark = recover::mark(frames.count, producer, position);
        self.send(
            frames,
            Some((mark, producer.to_owned(), position.to_owned())),
        )
        .await
    }

    async fn send(
        &self,
        frames: Frames,
        mark: Option<(Vec<u8>, String, String)>,
    ) -> Result<u64, LogError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Append {
                frames,
                mark,
                reply,
            })
            .map_err(|_| LogError::Closed)?;
        rx.await.map_err(|_| LogError::Closed)?
    }

    /// A producer's last durable position: what its last marked batch said.
    pub fn position(&self, producer: &str) -> Option<String> {
        self.shared.producers.lock().unwrap().get(producer).cloned()
    }

    /// Keeps every record from `from` on until the hold moves past it (or
    /// the log reaches its bound). Dropping the hold releases it.
    pub fn hold(&self, from: u64) -> Arc<Hold> {
        let hold = Arc::new(Hold {
            shared: self.shared.clone(),
            at: AtomicU64::new(from),
        });
        let mut holds = self.shared.holds.lock().unwrap();
        holds.retain(|h| h.strong_count() > 0);
        holds.push(Arc::downgrade(&hold));
        hold
    }

    /// Watches the durable end of the log.
    pub fn tail(&self) -> watch::Receiver<Tail> {
        self.tail.clone()
    }

    pub fn bytes_on_disk(&self) -> u64 {
        self.shared.bytes_on_disk.load(Ordering::Relaxed)
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    pub fn fsync_histogram(&self) -> &crate::histogram::Histogram {
        &self.shared.fsync
    }

    /// Records that damage on disk destroyed, while their segments exist.
    pub fn losses(&self) -> Vec<Loss> {
        self.shared.losses.lock().unwrap().clone()
    }

    /// The offset of the oldest record still on disk.
    pub fn first_offset(&self) -> Result<u64, LogError> {
        let bases = segments(&self.shared.dir)?;
        Ok(bases
            .first()
            .copied()
            .unwrap_or(self.tail.borrow().next_offset))
    }

    /// Deletes every segment whose records all lie below `offset`: delivery
    /// calls this once everything below `offset` is in the lake.
    pub fn remove_before(&self, offset: u64) -> Result<(), LogError> {
        self.shared.delivered.fetch_max(offset, Ordering::Relaxed);
        self.shared.remove_before(offset, false)
    }

    /// A reader positioned at `offset`.
    pub fn reader(&self, offset: u64) -> Result<LogReader, LogError> {
        LogReader::open(&self.shared.dir, offset)
    }
}

/// A reader's claim on the records from an offset on; see [`Log::hold`].
pub struct Hold {
    shared: Arc<Shared>,
    at: AtomicU64,
}

impl Hold {
    /// The holder no longer needs the records below `offset`: segments that
    /// delivery is done with go. Does file I/O.
    pub fn release_before(&self, offset: u64) -> Result<(), LogError> {
        self.at.fetch_max(offset, Ordering::Relaxed);
        let delivered = self.shared.delivered.load(Ordering::Relaxed);
        self.shared.remove_before(delivered, false)
    }
}

struct Writer {
    shared: Arc<Shared>,
    opts: LogOptions,
    file: File,
    base: u64,
    len: u64,
    next_offset: u64,
    tail: watch::Sender<Tail>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Append>) {
        let mut group = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            self.commit(&mut group);
        }
        // Every sender is gone: the log is closed. The last fsync already ran.
    }

    /// Writes a group of appends, syncs once, and answers each.
    fn commit(&mut self, group: &mut Vec<Append>) {
        if self.shared.poisoned.load(Ordering::Relaxed) {
            for a in group.drain(..) {
                let _ = a
                    .reply
                    .send(Err(LogError::Poisoned("an earlier fsync failed".into())));
            }
            return;
        }
        let mut done = Vec::with_capacity(group.len());
        for a in group.drain(..) {
            match self.write(&a.frames, a.mark.as_ref().map(|m| m.0.as_slice())) {
                Ok(first) => done.push((a, first)),
                Err(e) => {
                    let _ = a.reply.send(Err(e));
                }
            }
        }
        if done.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let synced = self.file.sync_data();
        self.shared.fsync.observe(started.elapsed());
        if let Err(e) = synced {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, "log fsync failed; refusing further writes");
            self.shared.poisoned.store(true, Ordering::Relaxed);
            for (a, _) in done {
                let _ = a.reply.send(Err(LogError::Poisoned(e.to_string())));
            }
            return;
        }
        self.tail.send_replace(Tail {
            next_offset: self.next_offset,
        });
        {
            let mut producers = self.shared.producers.lock().unwrap();
            for (a, _) in &done {
                if let Some((_, producer, position)) = &a.mark {
                    producers.insert(producer.clone(), position.clone());
                }
            }
        }
        for (a, first) in done {
            let _ = a.reply.send(Ok(first));
        }
    }

    fn write(&mut self, frames: &Frames, mark: Option<&[u8]>) -> Result<u64, LogError> {
        let add = (frames.bytes() + mark.map_or(0, <[u8]>::len)) as u64;
        if self.len >= self.opts.segment_bytes {
            self.roll()?;
        }
        let mut used = self.shared.bytes_on_disk.load(Ordering::Relaxed);
        let delivered = self.shared.delivered.load(Ordering::Relaxed);
        if used + add > self.opts.max_bytes {
            // The bound is for undelivered records: delivered segments go
            // even if a reader holds them. Delivery never removes the
            // active segment, so when everything here is delivered, close
            // it so it can go, or the log would stay full forever.
            if self.len > 0 && delivered >= self.next_offset {
                self.roll()?;
            }
            self.shared.remove_before(delivered, true)?;
            used = self.shared.bytes_on_disk.load(Ordering::Relaxed);
        }
        if used + add > self.opts.max_bytes {
            return Err(LogError::Full {
                used,
                max: self.opts.max_bytes,
            });
        }
        let written = match mark {
            Some(m) => self
                .file
                .write_all(m)
                .and_then(|()| self.file.write_all(&frames.buf)),
            None => self.file.write_all(&frames.buf),
        };
        if let Err(e) = written {
            // Cut the partial write off so the next frame starts where it should.
            let _ = self.file.set_len(self.len);
            let _ = self.file.seek(SeekFrom::Start(self.len));
            return Err(LogError::Write(e));
        }
        self.len += add;
        self.shared.bytes_on_disk.fetch_add(add, Ordering::Relaxed);
        let first = self.next_offset;
        self.next_offset += frames.count;
        Ok(first)
    }

    fn roll(&mut self) -> Result<(), LogError> {
        let dir = self.shared.dir.clone();
        self.file.sync_data().map_err(LogError::Write)?;
        let path = dir.join(segment_name(self.next_offset));
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(LogError::Write)?;
        sync_dir(&dir).map_err(LogError::Write)?;
        self.file = file;
        self.base = self.next_offset;
        self.len = 0;
        Ok(())
    }
}

/// Reads records in order from an offset, across segments.
pub struct LogReader {
    dir: PathBuf,
    current: Option<(PathBuf, BufReader<File>)>,
    next: u64,
    data: Vec<u8>,
}

/// One record read back from the log.
pub struct Entry<'a> {
    pub offset: u64,
    pub arrival_ms: i64,
    pub data: &'a [u8],
}

impl LogReader {
    fn open(dir: &Path, offset: u64) -> Result<LogReader, LogError> {
        let mut r = LogReader {
            dir: dir.to_path_buf(),
            current: None,
            next: offset,
            data: Vec::new(),
        };
        let bases = segments(dir)?;
        if let Some(&first) = bases.first().filter(|f| **f > offset) {
            return Err(LogError::Removed { offset, first });
        }
        let Some(&base) = bases.iter().rev().find(|b| **b <= offset) else {
            return Err(LogError::Corrupt {
                file: dir.to_path_buf(),
                what: format!(
                    "no segment holds offset {offset} (first segment starts at {:?})",
                    bases.first()
                ),
            });
        };
        r.open_segment(base)?;
        // Skip forward inside the segment to the requested offset (or past
        // the hole that holds it).
        let mut at = base;
        while at < offset {
            match r.frame()? {
                Some(Slot::Record(_)) => at += 1,
                Some(Slot::Hole(n)) => at += n,
                Some(Slot::Mark) => {}
                None => {
                    return Err(LogError::Corrupt {
                        file: dir.join(segment_name(base)),
                        what: format!("segment ends at offset {at}, before {offset}"),
                    })
                }
            }
        }
        Ok(r)
    }

    fn open_segment(&mut self, base: u64) -> Result<(), LogError> {
        let path = self.dir.join(segment_name(base));
        let file = File::open(&path).map_err(|e| LogError::io(&path, e))?;
        self.current = Some((path, BufReader::with_capacity(1 << 20, file)));
        Ok(())
    }

    /// The next frame of the current segment, if any, into `self.data`.
    fn frame(&mut self) -> Result<Option<Slot>, LogError> {
        let (path, r) = self.current.as_mut().expect("a segment is open");
        match read_frame(r, &mut self.data).map_err(|e| LogError::io(path, e))? {
            Ok(x) => Ok(x),
            Err(what) => Err(LogError::Corrupt {
                file: path.clone(),
                what: what.into(),
            }),
        }
    }

    /// The offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// Reads the next record if its offset is below `end` (the durable tail).
    /// Offsets in a hole are skipped: their records are lost.
    pub fn next_below(&mut self, end: u64) -> Result<Option<Entry<'_>>, LogError> {
        loop {
            if self.next >= end {
                return Ok(None);
            }
            match self.next_frame()? {
                Slot::Hole(n) => self.next += n,
                Slot::Mark => {}
                Slot::Record(arrival) => {
                    let offset = self.next;
                    self.next += 1;
                    return Ok(Some(Entry {
                        offset,
                        arrival_ms: arrival,
                        data: &self.data,
                    }));
                }
            }
        }
    }

    /// The frame at `self.next`, from this segment or the next.
    fn next_frame(&mut self) -> Result<Slot, LogError> {
        match self.frame()? {
            Some(f) => Ok(f),
            None => {
                // End of this segment: the record lives in the next one.
                let path = self.dir.join(segment_name(self.next));
                if !path.exists() {
                    if let Some(&first) = segments(&self.dir)?.first().filter(|f| **f > self.next) {
                        return Err(LogError::Removed {
                            offset: self.next,
                            first,
                        });
                    }
                    return Err(LogError::Corrupt {
                        file: path,
                        what: format!("offset {} is durable but no segment holds it", self.next),
                    });
                }
                self.open_segment(self.next)?;
                match self.frame()? {
                    Some(f) => Ok(f),
                    None => Err(LogError::Corrupt {
                        file: path,
                        what: format!("offset {} is durable but its segment is empty", self.next),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LogOptions {
        LogOptions {
            segment_bytes: 1000,
            max_bytes: 1 << 30,
        }
    }

    fn frames(records: &[&str]) -> Frames {
        let mut f = Frames::default();
        for r in records {
            f.push(7, r.as_bytes());
        }
        f
    }

    fn read_all(log: &Log, from: u64) -> Vec<(u64, String)> {
        let end = log.tail().borrow().next_offset;
        let mut r = log.reader(from).unwrap();
        let mut out = Vec::new();
        while let Some(e) = r.next_below(end).unwrap() {
            out.push((e.offset, String::from_utf8(e.data.to_vec()).unwrap()));
        }
        out
    }

    #[tokio::test]
    async fn appends_roll_segments_and_read_back_in_order() {
        let dir = tempdir();
        let log = Log::open(&dir, 0, opts()).unwrap();
        let mut expected = Vec::new();
        for i in 0..100u64 {
            let rec = format!("record-{i:03}-{}", "x".repeat(40));
            assert_eq!(log.append(frames(&[&rec])).await.unwrap(), i);
            expected.push((i, rec));
        }
        assert!(
            segments(&dir).unwrap().len() > 3,
            "segments roll at segment_bytes"
        );
        assert_eq!(read_all(&log, 0), expected);
        assert_eq!(read_all(&log, 57), expected[57..].to_vec());
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_and_offsets_continue() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            log.append(frames(&["a", "b", "c"])).await.unwrap();
        }
        // A torn write: half a frame at the end of the active segment.
        let seg = dir.join(segment_name(0));
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        drop(f);
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(log.tail().borrow().next_offset, 3);
        assert_eq!(log.append(frames(&["d"])).await.unwrap(), 3);
        let got: Vec<_> = read_all(&log, 0).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, ["a", "b", "c", "d"]);
    }

    #[tokio::test]
    async fn flipped_bit_is_a_torn_tail_not_data() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            log.append(frames(&["keep", "lose"])).await.unwrap();
        }
        let seg = dir.join(segment_name(0));
        let mut bytes = fs::read(&seg).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&seg, bytes).unwrap();
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(read_all(&log, 0), vec![(0, "keep".to_string())]);
    }

    #[tokio::test]
    async fn damage_before_intact_records_is_corruption_not_a_torn_tail() {
        let dir = tempdir();
        let records: Vec<String> = (0..10).map(|i| format!("record-{i}")).collect();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            let refs: Vec<&str> = records.iter().map(|s| s.as_str()).collect();
            log.append(frames(&refs)).await.unwrap();
        }
        // One byte of record 4's data flipped: records 5..10 are intact.
        let seg = dir.join(segment_name(0));
        let mut bytes = fs::read(&seg).unwrap();
        let frame = FRAME_HEADER + "record-0".len();
        bytes[4 * frame + FRAME_HEADER + 2] ^= 0x40;
        fs::write(&seg, &bytes).unwrap();
        let log = Log::open(&dir, 0, opts()).unwrap();
        let got = read_all(&log, 0);
        let want: Vec<(u64, String)> = records
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 4)
            .map(|(i, r)| (i as u64, r.clone()))
            .collect();
        assert_eq!(got, want, "every intact record keeps its offset");
        assert_eq!(log.tail().borrow().next_offset, 10);
        let losses = log.losses();
        assert_eq!(losses.len(), 1, "{losses:?}");
        assert_eq!(
            (losses[0].first_offset, losses[0].records, losses[0].exact),
            (4, 1, true)
        );
        let q = losses[0].quarantine.clone().unwrap();
        assert_eq!(
            fs::read(&q).unwrap().len(),
            frame,
            "the damaged frame is kept aside"
        );
        // Reading from inside the hole starts after it; appends go on.
        assert_eq!(read_all(&log, 4).first().map(|e| e.0), Some(5));
        assert_eq!(log.append(frames(&["next"])).await.unwrap(), 10);
        drop(log);
        // The repair is done once: the next open finds the hole, not damage.
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(read_all(&log, 0).len(), 10);
        assert_eq!(log.losses()[0].quarantine, None);
    }

    #[tokio::test]
    async fn damage_in_a_sealed_segment_keeps_its_neighbours() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            for i in 0..100u64 {
                log.append(frames(&[&format!("record-{i:03}-{}", "x".repeat(40))]))
                    .await
                    .unwrap();
            }
        }
        let bases = segments(&dir).unwrap();
        assert!(bases.len() > 2);
        // Damage the length field of the first frame of the second segment.
        let seg = dir.join(segment_name(bases[1]));
        let mut bytes = fs::read(&seg).unwrap();
        bytes[1] ^= 0x10;
        fs::write(&seg, &bytes).unwrap();
        let log = Log::open(&dir, 0, opts()).unwrap();
        let got: Vec<u64> = read_all(&log, 0).into_iter().map(|(o, _)| o).collect();
        let want: Vec<u64> = (0..100).filter(|o| *o != bases[1]).collect();
        assert_eq!(got, want);
        let losses = log.losses();
        assert_eq!(
            (losses[0].first_offset, losses[0].records, losses[0].exact),
            (bases[1], 1, true)
        );
    }

    #[tokio::test]
    async fn removal_keeps_the_active_segment_and_the_offsets() {
        let dir = tempdir();
        let log = Log::open(&dir, 0, opts()).unwrap();
        for i in 0..60 {
            log.append(frames(&[&format!("{i:0>50}")])).await.unwrap();
        }
        let before = log.bytes_on_disk();
        log.remove_before(60).unwrap();
        assert_eq!(segments(&dir).unwrap().len(), 1);
        assert!(log.bytes_on_disk() < before);
        drop(log);
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(log.tail().borrow().next_offset, 60);
    }

    #[tokio::test]
    async fn a_full_log_refuses_and_keeps_what_it_has() {
        let dir = tempdir();
        let log = Log::open(
            &dir,
            0,
            LogOptions {
                segment_bytes: 1 << 20,
                max_bytes: 100,
            },
        )
        .unwrap();
        log.append(frames(&[&"a".repeat(60)])).await.unwrap();
        let err = log.append(frames(&[&"b".repeat(60)])).await.unwrap_err();
        assert!(matches!(err, LogError::Full { .. }), "{err}");
        assert_eq!(read_all(&log, 0).len(), 1);
    }

    #[tokio::test]
    async fn a_full_log_frees_its_delivered_active_segment() {
        let dir = tempdir();
        let log = Log::open(
            &dir,
            0,
            LogOptions {
                segment_bytes: 1 << 20,
                max_bytes: 200,
            },
        )
        .unwrap();
        log.append(frames(&[&"a".repeat(100)])).await.unwrap();
        assert!(matches!(
            log.append(frames(&[&"b".repeat(100)])).await,
            Err(LogError::Full { .. })
        ));
        // Delivery catches up; the active segment is all that holds the space.
        log.remove_before(1).unwrap();
        assert_eq!(log.append(frames(&[&"c".repeat(100)])).await.unwrap(), 1);
        let got: Vec<_> = read_all(&log, 1).into_iter().map(|(o, _)| o).collect();
        assert_eq!(got, [1]);
    }

    #[tokio::test]
    async fn an_empty_log_starts_at_the_committed_offset() {
        let dir = tempdir();
        let log = Log::open(&dir, 1234, opts()).unwrap();
        assert_eq!(log.append(frames(&["x"])).await.unwrap(), 1234);
    }

    #[tokio::test]
    async fn a_marked_batch_and_its_position_are_one_write() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            log.append(frames(&["a"])).await.unwrap();
            assert_eq!(
                log.append_marked(frames(&["b", "c"]), "p", "1")
                    .await
                    .unwrap(),
                1
            );
            assert_eq!(log.position("p").as_deref(), Some("1"));
            log.append_marked(frames(&["d", "e", "f"]), "p", "2")
                .await
                .unwrap();
        }
        // The last batch was torn after its first record: the batch and its
        // mark go together, and the position is the one before.
        let seg = dir.join(segment_name(0));
        let len = fs::metadata(&seg).unwrap().len();
        let cut = len - 2 * (FRAME_HEADER as u64 + 1);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let log = Log::open(&dir, 0, opts()).unwrap();
        let got: Vec<_> = read_all(&log, 0).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, ["a", "b", "c"]);
        assert_eq!(log.position("p").as_deref(), Some("1"));
        assert_eq!(log.append(frames(&["g"])).await.unwrap(), 3);
        assert_eq!(read_all(&log, 2).first().map(|e| e.0), Some(2));
    }

    #[tokio::test]
    async fn a_mark_alone_moves_the_position_and_takes_no_offset() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            log.append(frames(&["a"])).await.unwrap();
            assert_eq!(log.append_marked(frames(&[]), "p", "7").await.unwrap(), 1);
            assert_eq!(log.append(frames(&["b"])).await.unwrap(), 1);
            log.append_marked(frames(&[]), "p", "8").await.unwrap();
        }
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(log.position("p").as_deref(), Some("8"));
        let got: Vec<_> = read_all(&log, 0).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, ["a", "b"]);
        // A torn mark goes, and the position is the one before it.
        let seg = dir.join(segment_name(0));
        let len = fs::metadata(&seg).unwrap().len();
        drop(log);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(log.position("p").as_deref(), Some("7"));
        assert_eq!(log.append(frames(&["c"])).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn corruption_inside_a_marked_batch_keeps_its_intact_records() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            log.append_marked(frames(&["b", "c", "d"]), "p", "1")
                .await
                .unwrap();
        }
        // Damage "c": "d" after it is intact, so this is corruption, not a
        // torn write, and the batch is not cut (now or at the next open).
        let seg = dir.join(segment_name(0));
        let mut bytes = fs::read(&seg).unwrap();
        let c_data = bytes.len() - (FRAME_HEADER + 1) - 1;
        bytes[c_data] ^= 0x01;
        fs::write(&seg, &bytes).unwrap();
        for _ in 0..2 {
            let log = Log::open(&dir, 0, opts()).unwrap();
            let got: Vec<_> = read_all(&log, 0).into_iter().map(|(o, s)| (o, s)).collect();
            assert_eq!(got, [(0, "b".to_string()), (2, "d".to_string())]);
            assert_eq!(log.position("p").as_deref(), Some("1"));
        }
    }

    #[tokio::test]
    async fn positions_outlive_their_segments() {
        let dir = tempdir();
        {
            let log = Log::open(&dir, 0, opts()).unwrap();
            for i in 0..60 {
                log.append_marked(frames(&[&format!("{i:0>50}")]), "agg", &i.to_string())
                    .await
                    .unwrap();
            }
            log.append(frames(&["last"])).await.unwrap();
            log.remove_before(61).unwrap();
            assert_eq!(segments(&dir).unwrap().len(), 1);
        }
        let log = Log::open(&dir, 0, opts()).unwrap();
        assert_eq!(log.position("agg").as_deref(), Some("59"));
        assert_eq!(log.position("other"), None);
    }

    #[tokio::test]
    async fn a_hold_keeps_segments_until_the_bound() {
        let dir = tempdir();
        let log = Log::open(
            &dir,
            0,
            LogOptions {
                segment_bytes: 200,
                max_bytes: 1000,
            },
        )
        .unwrap();
        let hold = log.hold(0);
        for i in 0..8 {
            log.append(frames(&[&format!("{i:0>80}")])).await.unwrap();
        }
        log.remove_before(8).unwrap();
        assert_eq!(
            read_all(&log, 0).len(),
            8,
            "delivery does not remove held records"
        );
        hold.release_before(3).unwrap();
        assert_eq!(log.first_offset().unwrap(), 3, "the segment below 3 goes");
        // At the bound, delivered records go even though they are held, and
        // the holder learns exactly what it missed.
        for i in 8..14 {
            log.append(frames(&[&format!("{i:0>80}")])).await.unwrap();
            log.remove_before(i + 1).unwrap();
        }
        let first = log.first_offset().unwrap();
        assert!(first > 3, "{first}");
        match log.reader(3) {
            Err(LogError::Removed {
                offset: 3,
                first: f,
            }) => assert_eq!(f, first),
            other => panic!("{:?}", other.err()),
        }
        drop(hold);
    }

    pub(crate) fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("hydrant-test-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
