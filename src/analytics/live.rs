//! Running aggregates against live streams.
//!
//! One task per source stream tails the stream's log (its own reader, like
//! delivery's, so aggregation never slows an acknowledgement), feeds every
//! record to the stream's aggregators, and publishes what changed on a
//! broadcast channel that the live feed (`/-/api/live`) relays. Once a
//! second it advances processing time, which closes arrival-time windows and
//! prunes old results; closed windows go to the aggregate's `output_stream`
//! if it has one.
//!
//! # Exactly once, across restarts
//!
//! - **State.** Every few seconds the task saves every aggregator's state
//!   with the log offset it covers to `<stream dir>/aggregates.json`
//!   (written aside, fsynced, renamed over). The task holds the log from
//!   that offset (a [`Hold`]), so delivery removes nothing it still needs.
//!   A restart restores the state and reads on from the offset: the windows
//!   are those of a run that never stopped.
//! - **Output.** Closed windows close in order of their end (the watermark
//!   only rises), so "every closed window ending at or before E was sent" is
//!   one number. Each batch of closed windows goes to the output stream as a
//!   marked append whose position is that E (see `log`'s Producers): the
//!   windows and E are durable together. After a restart, the task reads E
//!   back from the output stream's log and sends only windows ending after
//!   it; windows closed but unsent are part of the saved state, kept past
//!   their horizon until sent. While the output stream refuses (its log is
//!   full), the task stops reading and retries each second, so the source
//!   stream's log fills and its producers get ServiceUnavailableException:
//!   nothing is dropped.
//! - **Gaps.** Only if the source log reaches its bound does it remove what
//!   the task still holds. The task is told exactly which offsets it missed,
//!   counts them (`missed`), and marks every window they may have belonged to
//!   as incomplete (`"incomplete": true` in the API, `window_incomplete` in
//!   output records): the windows open then and the windows starting before
//!   the next record read. The same holds for an aggregate that starts on a
//!   log whose earlier records are gone (a new aggregate, or a saved state
//!   from another config, which is set aside).
//!
//! Arrival-time windows are exact in what they count, but where a record
//! lands depends on when processing time moved, which a replay cannot
//! repeat; event-time windows (`time: { field, format }`) come out the same.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::aggregator::State;
use super::{AggregateConfig, Aggregator, WindowResult};
use crate::log::{Hold, LogError, LogReader};
use crate::stream::{Batch, Registry, Stream};

/// How often the state is saved, at most.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The aggregates of one source stream.
pub struct StreamAggregates {
    pub stream: String,
    pub aggregators: Mutex<Vec<Aggregator>>,
    /// Records skipped because the log removed them before they were read.
    pub missed: AtomicU64,
    pub processed: AtomicU64,
}

/// What `aggregates.json` holds.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Every record below this offset is in the states.
    offset: u64,
    aggregates: BTreeMap<String, Saved>,
}

#[derive(Serialize, Deserialize)]
struct Saved {
    /// The aggregate's config as it was: a state is only restored into the same.
    config: String,
    state: State,
}

fn checkpoint_path(source: &Stream) -> PathBuf {
    source.dir().join("aggregates.json")
}

fn load_checkpoint(path: &Path) -> anyhow::Result<Option<Checkpoint>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", path.display())),
    }
}

fn save_checkpoint(path: &Path, cp: &Checkpoint) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    serde_json::to_writer(std::io::BufWriter::new(&mut f), cp)?;
    f.flush()?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    crate::log::sync_dir(path.parent().expect("in a stream directory"))
}

/// The producer name an aggregate appends its closed windows under.
fn producer(source: &str, aggregate: &str) -> String {
    format!("aggregate/{source}/{aggregate}")
}

pub struct Analytics {
    pub streams: Vec<Arc<StreamAggregates>>,
    pub updates: broadcast::Sender<Arc<Update>>,
}

/// Windows of one aggregate that changed or closed.
pub struct Update {
    /// The source stream, so that a feed shows it only to those who may see it.
    pub stream: String,
    /// `{"stream","aggregate","windows":[...]}`.
    pub json: String,
}

impl Analytics {
    /// The snapshot of every aggregate over a stream `may_see` allows, for
    /// `/-/api/aggregates`.
    pub fn snapshot(&self, may_see: impl Fn(&str) -> bool) -> serde_json::Value {
        let mut out = Vec::new();
        for s in self.streams.iter().filter(|s| may_see(&s.stream)) {
            for a in s.aggregators.lock().unwrap().iter() {
                out.push(serde_json::json!({
                    "stream": s.stream,
                    "missed_records": s.missed.load(Relaxed),
                    "snapshot": a.snapshot(),
                }));
            }
        }
        serde_json::json!({ "aggregates": out })
    }

    /// Prometheus families for the aggregates.
    pub fn metrics(&self) -> String {
        let mut out = String::new();
        let (mut late, mut invalid, mut missed) = (Vec::new(), Vec::new(), Vec::new());
        for s in &self.streams {
            missed.push((
                vec![("stream", s.stream.as_str())],
                s.missed.load(Relaxed) as f64,
            ));
            for a in s.aggregators.lock().unwrap().iter() {
                let snap = a.snapshot();
                late.push((s.stream.clone(), snap.aggregate.clone(), snap.late_count));
                for (reason, n) in snap.invalid_counts {
                    invalid.push((s.stream.clone(), snap.aggregate.clone(), reason, n));
                }
            }
        }
        let late: Vec<_> = late
            .iter()
            .map(|(s, a, n)| {
                (
                    vec![("stream", s.as_str()), ("aggregate", a.as_str())],
                    *n as f64,
                )
            })
            .collect();
        let invalid: Vec<_> = invalid
            .iter()
            .map(|(s, a, r, n)| {
                (
                    vec![
                        ("stream", s.as_str()),
                        ("aggregate", a.as_str()),
                        ("reason", r.as_str()),
                    ],
                    *n as f64,
                )
            })
            .collect();
        crate::metrics::family(
            &mut out,
            "hydrant_aggregate_late_records_total",
            "counter",
            "Records that arrived after all their windows closed (counted, not added).",
            &late,
        );
        crate::metrics::family(
            &mut out,
            "hydrant_aggregate_invalid_records_total",
            "counter",
            "Records an aggregate could not use, by reason.",
            &invalid,
        );
        crate::metrics::family(
            &mut out,
            "hydrant_aggregate_missed_records_total",
            "counter",
            "Records delivered and removed before aggregation read them.",
            &missed,
        );
        out
    }
}

/// Checks the config against the streams that exist, restores what each
/// source stream's aggregates saved, and starts one task per source stream.
pub fn start(
    registry: &Registry,
    config: BTreeMap<String, Vec<AggregateConfig>>,
) -> anyhow::Result<Arc<Analytics>> {
    let (updates, _) = broadcast::channel(1024);
    let mut streams = Vec::new();
    for (name, configs) in config {
        super::validate_all(&configs).map_err(|e| anyhow::anyhow!("aggregates.{name}: {e}"))?;
        let source = registry.get(&name).ok_or_else(|| {
            anyhow::anyhow!("aggregates.{name}: there is no delivery stream {name}")
        })?;
        let mut outputs = Vec::new();
        let mut aggregators = Vec::new();
        let mut fingerprints = Vec::new();
        for c in configs {
            if let Some(out) = &c.output_stream {
                anyhow::ensure!(
                    registry.get(out).is_some(),
                    "aggregates.{name}: aggregate {}: output_stream {out} is not a delivery stream",
                    c.name
                );
                anyhow::ensure!(
                    out != &name,
                    "aggregates.{name}: aggregate {}: output_stream may not be its own source",
                    c.name
                );
            }
            outputs.push(c.output_stream.as_ref().and_then(|o| registry.get(o)));
            fingerprints.push(format!("{c:?}"));
            aggregators
                .push(Aggregator::new(c).map_err(|e| anyhow::anyhow!("aggregates.{name}: {e}"))?);
        }
        let path = checkpoint_path(&source);
        let saved = load_checkpoint(&path).unwrap_or_else(|e| {
            tracing::error!(stream = %name, error = %e, "the saved aggregate state cannot be read; starting afresh (windows marked incomplete)");
            None
        });
        let first = source.log.first_offset()?;
        let next = source.log.tail().borrow().next_offset;
        let (offset, mut saved) = match saved {
            Some(cp) if cp.offset <= next => (cp.offset, cp.aggregates),
            Some(cp) => {
                tracing::error!(stream = %name, saved = cp.offset, log_end = next, "the saved aggregate state covers records the log does not have; starting afresh (windows marked incomplete)");
                (first, BTreeMap::new())
            }
            None => (first, BTreeMap::new()),
        };
        for (a, fingerprint) in aggregators.iter_mut().zip(&fingerprints) {
            let restored = match saved.remove(a.name()) {
                Some(s) if &s.config == fingerprint => a.restore(s.state),
                Some(_) => Err("its config changed".into()),
                None => Err("none was saved".into()),
            };
            if let Err(why) = restored {
                // Records before `offset` were never read into this state.
                if offset > 0 {
                    tracing::warn!(stream = %name, aggregate = a.name(), offset, reason = %why, "aggregate starts without saved state; its first windows are marked incomplete");
                    a.mark_gap();
                }
            }
        }
        for (a, out) in aggregators.iter_mut().zip(&outputs) {
            if let Some(out) = out {
                let at = out.log.position(&producer(&name, a.name()));
                a.send_from(at.and_then(|p| p.parse().ok()));
            }
        }
        let hold = source.log.hold(offset);
        let sa = Arc::new(StreamAggregates {
            stream: name,
            aggregators: Mutex::new(aggregators),
            missed: AtomicU64::new(0),
            processed: AtomicU64::new(0),
        });
        let task = Task {
            sa: sa.clone(),
            source,
            outputs,
            fingerprints,
            updates: updates.clone(),
            hold,
            path,
        };
        tokio::spawn(task.run(offset));
        streams.push(sa);
    }
    Ok(Arc::new(Analytics { streams, updates }))
}

/// Records read from the log in one go: one buffer, offsets into it.
struct Chunk {
    data: Vec<u8>,
    records: Vec<(i64, usize, usize)>,
}

const CHUNK_RECORDS: usize = 8192;

fn read_chunk(reader: &mut LogReader, end: u64, chunk: &mut Chunk) -> Result<(), LogError> {
    chunk.data.clear();
    chunk.records.clear();
    while chunk.records.len() < CHUNK_RECORDS {
        let Some(e) = reader.next_below(end)? else {
            break;
        };
        let start = chunk.data.len();
        chunk.data.extend_from_slice(e.data);
        chunk.records.push((e.arrival_ms, start, chunk.data.len()));
    }
    Ok(())
}

fn publish(
    updates: &broadcast::Sender<Arc<Update>>,
    stream: &str,
    aggregate: &str,
    windows: &[WindowResult],
) {
    if windows.is_empty() || updates.receiver_count() == 0 {
        return;
    }
    let doc = serde_json::json!({ "stream": stream, "aggregate": aggregate, "windows": windows });
    let _ = updates.send(Arc::new(Update {
        stream: stream.to_owned(),
        json: doc.to_string(),
    }));
}

/// One source stream's aggregation task.
struct Task {
    sa: Arc<StreamAggregates>,
    source: Arc<Stream>,
    outputs: Vec<Option<Arc<Stream>>>,
    fingerprints: Vec<String>,
    updates: broadcast::Sender<Arc<Update>>,
    hold: Arc<Hold>,
    path: PathBuf,
}

impl Task {
    async fn run(self, offset: u64) {
        let log = self.source.log.clone();
        let mut tail = log.tail();
        let mut reader = None;
        let mut position = offset;
        let mut chunk = Some(Chunk {
            data: Vec::new(),
            records: Vec::new(),
        });
        let second = Duration::from_secs(1);
        let mut last_tick = Instant::now() - second;
        let (mut saved_at, mut saved_offset) = (Instant::now(), None);
        // True while an output stream refuses closed windows: reading waits.
        let mut blocked = false;
        loop {
            let end = tail.borrow_and_update().next_offset;
            let mut read = 0;
            if !blocked && position < end {
                let mut r = match reader.take() {
                    Some(r) => r,
                    None => match self.open(position) {
                        Ok(r) => r,
                        Err(e) => return self.stop(e),
                    },
                };
                let mut c = chunk.take().unwrap();
                let (r, c, result) = tokio::task::spawn_blocking(move || {
                    let res = read_chunk(&mut r, end, &mut c);
                    (r, c, res)
                })
                .await
                .expect("reading the log does not panic");
                position = r.position();
                reader = Some(r);
                if let Err(e) = result {
                    reader = None;
                    if !matches!(e, LogError::Removed { .. }) {
                        return self.stop(e);
                    }
                    // The next open skips the gap and counts it.
                }
                read = c.records.len();
                self.ingest(&c);
                chunk = Some(c);
            }
            if last_tick.elapsed() >= second {
                last_tick = Instant::now();
                blocked = !self.tick().await;
                let due = saved_at.elapsed() >= CHECKPOINT_EVERY;
                if due && saved_offset != Some(position) && !blocked {
                    match self.checkpoint(position).await {
                        Ok(()) => {
                            saved_offset = Some(position);
                            saved_at = Instant::now();
                        }
                        Err(e) => {
                            tracing::error!(stream = %self.sa.stream, error = %e, "could not save the aggregate state; retrying")
                        }
                    }
                }
            }
            if !blocked && (read == CHUNK_RECORDS || position < tail.borrow().next_offset) {
                continue;
            }
            tokio::select! {
                _ = tail.changed(), if !blocked => {}
                _ = tokio::time::sleep_until((last_tick + second).into()) => {}
            }
        }
    }

    /// A reader at `offset`, or past the records the log removed from under
    /// the hold: those are counted and their windows marked incomplete.
    fn open(&self, offset: u64) -> Result<LogReader, LogError> {
        match self.source.log.reader(offset) {
            Err(LogError::Removed { offset, first }) => {
                self.sa.missed.fetch_add(first - offset, Relaxed);
                tracing::warn!(stream = %self.sa.stream, from = offset, to = first, "the log reached its bound and removed records aggregates had not read; their windows are marked incomplete");
                for a in self.sa.aggregators.lock().unwrap().iter_mut() {
                    a.mark_gap();
                }
                self.source.log.reader(first)
            }
            r => r,
        }
    }

    fn stop(&self, e: LogError) {
        tracing::error!(stream = %self.sa.stream, error = %e, "aggregates stopped: the log cannot be read");
    }

    fn ingest(&self, c: &Chunk) {
        if c.records.is_empty() {
            return;
        }
        let mut aggs = self.sa.aggregators.lock().unwrap();
        // Each record parsed once for all aggregates, only as far as they read.
        let mut wanted: Vec<String> = aggs
            .iter()
            .flat_map(|a| a.fields().map(str::to_owned))
            .collect();
        wanted.sort();
        wanted.dedup();
        let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let mut fields = super::Fields::new(&wanted);
        for (arrival, s, e) in &c.records {
            let object = fields.read(&c.data[*s..*e]);
            for a in aggs.iter_mut() {
                a.ingest_object(object.then_some(&fields), *arrival);
            }
        }
        self.sa.processed.fetch_add(c.records.len() as u64, Relaxed);
        for a in aggs.iter_mut() {
            let changed = a.take_updates();
            publish(&self.updates, &self.sa.stream, a.name(), &changed);
        }
    }

    /// Moves processing time on and sends closed windows to their output
    /// streams. False if an output stream refused them (they are kept).
    async fn tick(&self) -> bool {
        let now = chrono::Utc::now().timestamp_millis();
        let mut to_send = Vec::new();
        {
            let mut aggs = self.sa.aggregators.lock().unwrap();
            for (i, (a, out)) in aggs.iter_mut().zip(&self.outputs).enumerate() {
                a.advance(now);
                let changed = a.take_updates();
                publish(&self.updates, &self.sa.stream, a.name(), &changed);
                let (windows, through) = a.unsent();
                if let (Some(out), Some(through)) = (out, through) {
                    let mut frames = Batch::default();
                    for w in &windows {
                        frames.push(now, &w.to_json_record());
                    }
                    let id = producer(&self.sa.stream, a.name());
                    to_send.push((i, out.clone(), id, frames, through));
                }
            }
        }
        let mut ok = true;
        for (i, out, id, frames, through) in to_send {
            match out.put_marked(frames, &id, &through.to_string()).await {
                Ok(_) => self.sa.aggregators.lock().unwrap()[i].mark_sent(through),
                Err(e) => {
                    ok = false;
                    tracing::warn!(stream = %self.sa.stream, output = %out.spec.name, error = ?e, "the output stream refused closed windows; aggregation waits and retries");
                }
            }
        }
        ok
    }

    /// Saves every aggregator's state as covering the records below
    /// `offset`, then lets the log remove what is below it.
    async fn checkpoint(&self, offset: u64) -> std::io::Result<()> {
        let cp = {
            let aggs = self.sa.aggregators.lock().unwrap();
            Checkpoint {
                offset,
                aggregates: aggs
                    .iter()
                    .zip(&self.fingerprints)
                    .map(|(a, f)| {
                        (
                            a.name().to_owned(),
                            Saved {
                                config: f.clone(),
                                state: a.state(),
                            },
                        )
                    })
                    .collect(),
            }
        };
        let (path, hold) = (self.path.clone(), self.hold.clone());
        tokio::task::spawn_blocking(move || {
            save_checkpoint(&path, &cp)?;
            hold.release_before(offset)
                .map_err(|e| std::io::Error::other(e.to_string()))
        })
        .await
        .expect("saving does not panic")
    }
}
