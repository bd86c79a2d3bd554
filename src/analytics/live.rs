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
//! State is in memory. At start a task replays what the log still holds
//! (records not yet delivered, and the rest of their segment), so a restart
//! loses only windows whose records had all been delivered and removed.
//! If aggregation falls so far behind that delivery removed segments it had
//! not read, it skips to the oldest retained record and counts the gap as
//! `missed` rather than stopping.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::{AggregateConfig, Aggregator, WindowResult};
use crate::log::{Frames, LogError, LogReader};
use crate::stream::{Registry, Stream};

/// The aggregates of one source stream.
pub struct StreamAggregates {
    pub stream: String,
    pub aggregators: Mutex<Vec<Aggregator>>,
    outputs: Vec<Option<String>>,
    /// Records skipped because delivery removed them before they were read.
    pub missed: AtomicU64,
    pub processed: AtomicU64,
}

pub struct Analytics {
    pub streams: Vec<Arc<StreamAggregates>>,
    /// JSON documents `{"stream","aggregate","windows":[...]}`.
    pub updates: broadcast::Sender<Arc<str>>,
}

impl Analytics {
    /// Every aggregate's snapshot, for `/-/api/aggregates`.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut out = Vec::new();
        for s in &self.streams {
            for a in s.aggregators.lock().unwrap().iter() {
                out.push(serde_json::json!({ "stream": s.stream, "snapshot": a.snapshot() }));
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

/// Checks the config against the streams that exist and starts one task per
/// source stream.
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
            outputs.push(c.output_stream.clone());
            aggregators
                .push(Aggregator::new(c).map_err(|e| anyhow::anyhow!("aggregates.{name}: {e}"))?);
        }
        let sa = Arc::new(StreamAggregates {
            stream: name,
            aggregators: Mutex::new(aggregators),
            outputs,
            missed: AtomicU64::new(0),
            processed: AtomicU64::new(0),
        });
        let outputs: Vec<Option<Arc<Stream>>> = sa
            .outputs
            .iter()
            .map(|o| o.as_ref().and_then(|n| registry.get(n)))
            .collect();
        tokio::spawn(run(sa.clone(), source, outputs, updates.clone()));
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
    updates: &broadcast::Sender<Arc<str>>,
    stream: &str,
    aggregate: &str,
    windows: &[WindowResult],
) {
    if windows.is_empty() || updates.receiver_count() == 0 {
        return;
    }
    let doc = serde_json::json!({ "stream": stream, "aggregate": aggregate, "windows": windows });
    let _ = updates.send(doc.to_string().into());
}

async fn run(
    sa: Arc<StreamAggregates>,
    source: Arc<Stream>,
    outputs: Vec<Option<Arc<Stream>>>,
    updates: broadcast::Sender<Arc<str>>,
) {
    let log = source.log.clone();
    let mut tail = log.tail();
    let open = |log: &crate::log::Log| log.first_offset().and_then(|o| log.reader(o));
    let mut reader = match open(&log) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(stream = %sa.stream, error = %e, "aggregates cannot read the log");
            return;
        }
    };
    let mut chunk = Some(Chunk {
        data: Vec::new(),
        records: Vec::new(),
    });
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let end = tail.borrow_and_update().next_offset;
        let (mut r, mut c) = (reader.take().unwrap(), chunk.take().unwrap());
        let (r, c, result) = tokio::task::spawn_blocking(move || {
            let res = read_chunk(&mut r, end, &mut c);
            (r, c, res)
        })
        .await
        .expect("reading the log does not panic");
        reader = Some(r);
        if let Err(e) = result {
            // Delivery removed segments we had not read: skip to what is left.
            let pos = reader.as_ref().unwrap().position();
            match open(&log) {
                Ok(fresh) if fresh.position() > pos => {
                    sa.missed.fetch_add(fresh.position() - pos, Relaxed);
                    tracing::warn!(stream = %sa.stream, skipped = fresh.position() - pos, error = %e, "aggregates fell behind delivery; skipping removed records");
                    reader = Some(fresh);
                }
                _ => {
                    tracing::error!(stream = %sa.stream, error = %e, "aggregates stopped: the log cannot be read");
                    return;
                }
            }
        }
        if !c.records.is_empty() {
            let mut aggs = sa.aggregators.lock().unwrap();
            for (arrival, s, e) in &c.records {
                let parsed = match serde_json::from_slice(&c.data[*s..*e]) {
                    Ok(serde_json::Value::Object(obj)) => Some(obj),
                    _ => None,
                };
                for a in aggs.iter_mut() {
                    a.ingest_object(parsed.as_ref(), *arrival);
                }
            }
            sa.processed.fetch_add(c.records.len() as u64, Relaxed);
            for a in aggs.iter_mut() {
                let changed = a.take_updates();
                publish(&updates, &sa.stream, a.name(), &changed);
            }
        }
        let more = c.records.len() == CHUNK_RECORDS
            || reader.as_ref().unwrap().position() < tail.borrow().next_offset;
        chunk = Some(c);
        if more {
            continue;
        }
        tokio::select! {
            _ = tail.changed() => {}
            _ = tick.tick() => advance(&sa, &outputs, &updates).await,
        }
    }
}

/// Moves processing time on; sends closed windows to their output streams.
async fn advance(
    sa: &StreamAggregates,
    outputs: &[Option<Arc<Stream>>],
    updates: &broadcast::Sender<Arc<str>>,
) {
    let now = chrono::Utc::now().timestamp_millis();
    let mut to_output = Vec::new();
    {
        let mut aggs = sa.aggregators.lock().unwrap();
        for (a, out) in aggs.iter_mut().zip(outputs) {
            let closed = a.advance(now);
            let changed = a.take_updates();
            publish(updates, &sa.stream, a.name(), &changed);
            if let (Some(out), false) = (out, closed.is_empty()) {
                let mut frames = Frames::default();
                for w in &closed {
                    frames.push(now, &w.to_json_record());
                }
                to_output.push((out.clone(), frames));
            }
        }
    }
    for (out, frames) in to_output {
        if let Err(e) = out.put(frames).await {
            tracing::warn!(stream = %sa.stream, output = %out.spec.name, error = ?e, "could not append closed windows to the output stream");
        }
    }
}
