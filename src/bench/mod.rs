//! `hydrant bench`: a load harness over PutRecordBatch.
//!
//! It aims at any Firehose-compatible endpoint (`--endpoint`), or starts
//! hydrant as a separate process in a temporary directory, so the server is
//! measured apart from the load it is given. Each run keeps `--concurrency`
//! requests in flight for `--duration-seconds` and reports durable
//! records/s, MB/s of record data, acknowledgement latency percentiles,
//! errors and (for its own servers) CPU seconds per GB.
//!
//! Shared machines are noisy, so figures are compared within one run:
//!
//! * every round first measures the disk: sequential 1 MiB appends with an
//!   fdatasync after each, the floor cost of any log that acknowledges only
//!   durable data; the summary gives hydrant's MB/s as a ratio of it;
//! * `--aggregates 3` starts a second hydrant whose stream feeds three
//!   continuous aggregates, alternates rounds between the two, and reports
//!   the throughput ratio, plus the live-feed latency: a probe record is put
//!   every 100 ms and timed from its acknowledgement to the window update
//!   that carries it on `/-/api/live`.
//!
//! For its own servers it also samples the resident memory (VmRSS) every
//! 100 ms from the run's start until delivery has drained, and reports the
//! median sample and the peak: with `--rate 100000 --size-mb 128
//! --interval-seconds 60` that is the memory at a steady rate under the
//! largest buffering hints Firehose allows.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{batch_body, Firehose};

pub mod cdc;
pub mod convert;
pub mod query;
pub mod warehouse;

pub struct BenchOptions {
    pub endpoint: Option<String>,
    pub stream: String,
    pub concurrency: usize,
    pub batch: usize,
    pub record_size: usize,
    pub duration: Duration,
    pub runs: usize,
    /// Also measure a hydrant whose stream feeds this many aggregates (0-3).
    pub aggregates: usize,
    /// Records per second offered in total; 0 = as fast as acknowledged.
    pub rate: u64,
    /// Also measure a hydrant whose stream converts to Parquet.
    pub parquet: bool,
    /// The bench stream's buffering hints.
    pub size_mb: u32,
    pub interval_seconds: u32,
    /// Probes of the time from acknowledgement to visibility in SQL.
    pub freshness: usize,
}

/// What a bench server runs: its variant of the bench stream.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    Aggregates(usize),
    Parquet,
}

/// A hydrant process the bench started, removed with its data on drop.
struct Own {
    child: Child,
    dir: PathBuf,
}

impl Drop for Own {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Target {
    label: String,
    client: Firehose,
    endpoint: String,
    own: Option<Own>,
    probes: bool,
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The aggregates a bench stream can feed: grouped count (by the probe
/// marker, so probes show up as their own group), a sum, a distinct count.
const AGGREGATES: [&str; 3] = [
    "{ name: by_probe, window: { type: tumbling, size_seconds: 10 }, group_by: [probe], measures: [ { op: count } ] }",
    "{ name: sum_by_worker, window: { type: tumbling, size_seconds: 10 }, group_by: [w], measures: [ { op: sum, field: i } ] }",
    "{ name: distinct_i, window: { type: hopping, size_seconds: 60, slide_seconds: 10 }, measures: [ { op: approx_distinct, field: i } ] }",
];

/// The bench stream (JSON lines, or Parquet of the bench records' columns),
/// and `fresh`, a stream with a 1-second interval for freshness probes.
fn bench_config(stream: &str, variant: Variant, hints: (u32, u32)) -> String {
    let (size_mb, interval) = hints;
    let processing = if variant == Variant::Parquet {
        "DataFormatConversionConfiguration: { Enabled: true, SchemaConfiguration: { Columns: [ { Name: w, Type: int }, { Name: i, Type: int }, { Name: pad, Type: string }, { Name: probe, Type: string } ] } }"
    } else {
        "ProcessingConfiguration: { Enabled: true, Processors: [ { Type: AppendDelimiterToRecord } ] }"
    };
    let mut c = format!(
        r#"delivery_streams:
  - DeliveryStreamName: {stream}
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/bench
      BucketARN: arn:aws:s3:::bench
      Prefix: {stream}/
      BufferingHints: {{ SizeInMBs: {size_mb}, IntervalInSeconds: {interval} }}
      {processing}
  - DeliveryStreamName: fresh
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/bench
      BucketARN: arn:aws:s3:::bench
      Prefix: fresh/
      BufferingHints: {{ SizeInMBs: 1, IntervalInSeconds: 1 }}
      ProcessingConfiguration: {{ Enabled: true, Processors: [ {{ Type: AppendDelimiterToRecord }} ] }}
"#
    );
    if let Variant::Aggregates(aggregates) = variant {
        c += &format!("aggregates:\n  {stream}:\n");
        for a in &AGGREGATES[..aggregates] {
            c += &format!("    - {a}\n");
        }
    }
    c
}

async fn start_own(
    stream: &str,
    variant: Variant,
    hints: (u32, u32),
) -> anyhow::Result<(Own, String)> {
    start_with(&bench_config(stream, variant, hints)).await
}

/// Starts `hydrant serve` with this config in a temporary directory.
async fn start_with(config_text: &str) -> anyhow::Result<(Own, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir =
        std::env::current_dir()?.join(format!(".hydrant-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("bench.yaml");
    std::fs::write(&config, config_text)?;
    let child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.join("data"))
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .env("RUST_LOG", "warn")
        .spawn()
        .context("starting hydrant serve")?;
    let own = Own { child, dir };
    let url = format!("http://127.0.0.1:{port}");
    let ready = format!("{url}/-/ready");
    for _ in 0..200 {
        if reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return Ok((own, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("hydrant did not become ready")
}

struct RunResult {
    records_per_s: f64,
    mb_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    errors: u64,
    cpu_s_per_gb: Option<f64>,
    /// Acknowledgement-to-live-feed latency of probe records, sorted (ms).
    feed_ms: Vec<f64>,
    /// Record data per second from the run's start until delivery drained
    /// everything acknowledged (MB/s); NaN for a foreign endpoint.
    delivered_mb_per_s: f64,
    /// Resident memory, median sample and peak (MiB); NaN for a foreign endpoint.
    rss_mib: f64,
    peak_rss_mib: f64,
}

/// A process's resident memory (VmRSS), in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Waits until the stream's log is delivered; returns when that happened.
async fn drained(endpoint: &str, stream: &str) -> Option<Instant> {
    let url = format!("{endpoint}/-/streams");
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        let body = reqwest::get(&url).await.ok()?.bytes().await.ok()?;
        let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let lag = v["streams"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == stream)?["lag_records"]
            .as_u64()?;
        if lag == 0 {
            return Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// Time from acknowledging a record to seeing it in a SQL query, `n` times.
async fn freshness(t: &Target, n: usize) -> anyhow::Result<Vec<f64>> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for k in 0..n {
        let id = format!("f{}-{k}", uuid::Uuid::new_v4().simple());
        let record = format!(r#"{{"probe":"{id}"}}"#).into_bytes();
        t.client
            .put_batch_body(batch_body("fresh", &[record]))
            .await?;
        let acked = Instant::now();
        let sql = format!("SELECT count(*) FROM fresh WHERE probe = '{id}'");
        loop {
            let r = http
                .post(format!("{}/-/query", t.endpoint))
                .body(sql.clone())
                .send()
                .await?;
            let v: serde_json::Value =
                serde_json::from_slice(&r.bytes().await?).unwrap_or_default();
            if v["rows"] == serde_json::json!([[1]]) {
                out.push(acked.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            anyhow::ensure!(
                acked.elapsed() < Duration::from_secs(30),
                "probe {id} not visible after 30 s: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(out)
}

/// Sequential 1 MiB appends, each followed by fdatasync, for `d`.
fn disk_baseline(dir: &Path, d: Duration) -> anyhow::Result<f64> {
    let path = dir.join(format!(
        ".hydrant-baseline-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = std::fs::File::create(&path)?;
    let chunk = vec![0x5au8; 1 << 20];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        f.write_all(&chunk)?;
        f.sync_data()?;
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(n as f64 * 1.048576 / secs)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Puts a probe record every 100 ms until `deadline` and times each from
/// its acknowledgement to the live-feed event that carries its group.
async fn probe_feed(t: &Target, stream: &str, deadline: Instant) -> anyhow::Result<Vec<f64>> {
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Default::default();
    let seen: Arc<Mutex<Vec<f64>>> = Default::default();
    let mut resp = reqwest::get(format!("{}/-/api/live", t.endpoint)).await?;
    let (acked2, seen2) = (acked.clone(), seen.clone());
    let reader = tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let mut rest = line.as_str();
                while let Some(i) = rest.find("\"probe\":\"") {
                    rest = &rest[i + 9..];
                    let id = &rest[..rest.find('"').unwrap_or(0)];
                    if let Some(at) = acked2.lock().unwrap().remove(id) {
                        seen2
                            .lock()
                            .unwrap()
                            .push(at.elapsed().as_secs_f64() * 1000.0);
                    }
                }
            }
        }
    });
    let mut n = 0u64;
    while Instant::now() < deadline {
        let id = format!("p{n}");
        n += 1;
        let record = format!(r#"{{"probe":"{id}","w":-1,"i":0}}"#).into_bytes();
        if t.client
            .put_batch_body(batch_body(stream, &[record]))
            .await
            .is_ok_and(|f| f.is_empty())
        {
            acked.lock().unwrap().insert(id, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give the last probes time to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    reader.abort();
    let lost = acked.lock().unwrap().len();
    if lost > 0 {
        eprintln!("  {lost} probes not seen on the live feed within 500 ms of the run's end");
    }
    let mut v = seen.lock().unwrap().clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(v)
}

async fn one_run(opts: &BenchOptions, t: &Target) -> anyhow::Result<RunResult> {
    let pid = t.own.as_ref().map(|o| o.child.id());
    let cpu0 = pid.and_then(cpu_seconds);
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while let Some(mib) = pid
                .filter(|_| sampling.load(std::sync::atomic::Ordering::Relaxed))
                .and_then(rss_mib)
            {
                samples.push(mib);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let client = t.client.clone();
        let records: Vec<Vec<u8>> = (0..opts.batch)
            .map(|i| {
                let mut r = format!("{{\"w\":{w},\"i\":{i},\"pad\":\"").into_bytes();
                r.resize(opts.record_size.saturating_sub(2).max(r.len()), b'x');
                r.extend_from_slice(b"\"}");
                r
            })
            .collect();
        let bytes: usize = records.iter().map(|r| r.len()).sum();
        let body = axum::body::Bytes::from(batch_body(&opts.stream, &records));
        // Each worker paces itself to its share of --rate.
        let interval = (opts.rate > 0).then(|| {
            Duration::from_secs_f64(opts.batch as f64 * opts.concurrency as f64 / opts.rate as f64)
        });
        tasks.spawn(async move {
            let (mut lat, mut ok, mut ok_bytes, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
            let mut next = Instant::now();
            while Instant::now() < deadline {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let t = Instant::now();
                match client.put_batch_body(body.clone()).await {
                    Ok(failed) => {
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        ok += (records.len() - failed.len()) as u64;
                        ok_bytes += (bytes * (records.len() - failed.len()) / records.len()) as u64;
                        errors += failed.len() as u64;
                    }
                    Err(_) => {
                        errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (lat, ok, ok_bytes, errors)
        });
    }
    let feed = async {
        if t.probes {
            probe_feed(t, &opts.stream, deadline).await
        } else {
            Ok(vec![])
        }
    };
    let (feed_ms, mut lat, mut ok, mut ok_bytes, mut errors) = (feed.await?, Vec::new(), 0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (l, o, b, e) = r?;
        lat.extend(l);
        ok += o;
        ok_bytes += b;
        errors += e;
    }
    let secs = opts.duration.as_secs_f64().max(
        start
            .elapsed()
            .as_secs_f64()
            .min(opts.duration.as_secs_f64() + 1.0),
    );
    let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) if ok_bytes > 0 => Some((b - a) / (ok_bytes as f64 / 1e9)),
        _ => None,
    };
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let delivered_mb_per_s = match (&t.own, drained(&t.endpoint, &opts.stream).await) {
        (Some(_), Some(at)) => ok_bytes as f64 / 1e6 / (at - start).as_secs_f64(),
        _ => f64::NAN,
    };
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss = sampler.await?;
    Ok(RunResult {
        peak_rss_mib: rss.iter().copied().fold(f64::NAN, f64::max),
        rss_mib: median(rss),
        delivered_mb_per_s,
        records_per_s: ok as f64 / secs,
        mb_per_s: ok_bytes as f64 / 1e6 / secs,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        errors,
        cpu_s_per_gb: cpu,
        feed_ms,
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn fmt_opt(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".into()
    }
}

pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!((1..=500).contains(&opts.batch), "--batch must be 1 to 500");
    anyhow::ensure!(
        opts.runs >= 1 && opts.concurrency >= 1,
        "--runs and --concurrency must be at least 1"
    );
    anyhow::ensure!(
        opts.aggregates <= AGGREGATES.len(),
        "--aggregates must be 0 to {}",
        AGGREGATES.len()
    );
    anyhow::ensure!(
        (opts.aggregates == 0 && !opts.parquet && opts.freshness == 0) || opts.endpoint.is_none(),
        "--aggregates, --parquet and --freshness start their own servers; they cannot be combined with --endpoint"
    );
    anyhow::ensure!(
        (1..=128).contains(&opts.size_mb) && opts.interval_seconds <= 900,
        "--size-mb must be 1 to 128 and --interval-seconds 0 to 900 (Firehose's BufferingHints)"
    );
    let hints = (opts.size_mb, opts.interval_seconds);
    let mut targets = Vec::new();
    match &opts.endpoint {
        Some(e) => {
            let client = Firehose::new(e);
            if !client.stream_exists(&opts.stream).await? {
                let request: serde_json::Value = serde_yaml_ng::from_str::<serde_json::Value>(
                    &bench_config(&opts.stream, Variant::Plain, hints),
                )?["delivery_streams"][0]
                    .clone();
                client
                    .create(&request)
                    .await
                    .context("creating the bench stream")?;
            }
            targets.push(Target {
                label: e.clone(),
                client,
                endpoint: e.clone(),
                own: None,
                probes: false,
            });
        }
        None => {
            let mut variants = vec![Variant::Plain];
            if opts.aggregates > 0 {
                variants.push(Variant::Aggregates(opts.aggregates));
            }
            if opts.parquet {
                variants.push(Variant::Parquet);
            }
            for v in variants {
                let (own, url) = start_own(&opts.stream, v, hints).await?;
                let n = if let Variant::Aggregates(n) = v { n } else { 0 };
                let label = match v {
                    Variant::Plain => "hydrant".into(),
                    Variant::Aggregates(n) => format!("hydrant+{n} aggregates"),
                    Variant::Parquet => "hydrant parquet".into(),
                };
                targets.push(Target {
                    label,
                    client: Firehose::new(&url),
                    endpoint: url,
                    own: Some(own),
                    probes: n > 0,
                });
            }
        }
    }
    let disk_dir = targets[0]
        .own
        .as_ref()
        .map(|o| o.dir.clone())
        .unwrap_or(std::env::current_dir()?);
    println!(
        "hydrant bench: stream {}, {} in flight, {} records of {} bytes per PutRecordBatch, {} runs of {:?}, {}",
        opts.stream,
        opts.concurrency,
        opts.batch,
        opts.record_size,
        opts.runs,
        opts.duration,
        if opts.rate > 0 { format!("offered {} records/s", opts.rate) } else { "unthrottled".into() }
    );
    println!(
        "{:>4} {:<22} {:>11} {:>8} {:>8} {:>8} {:>9} {:>7} {:>9} {:>10} {:>10} {:>8} {:>8}",
        "run",
        "target",
        "records/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU s/GB",
        "disk MB/s",
        "feed p50",
        "RSS MiB",
        "peak MiB"
    );
    let mut results: Vec<Vec<RunResult>> = targets.iter().map(|_| Vec::new()).collect();
    let mut disk = Vec::new();
    for i in 0..opts.runs {
        let dir = disk_dir.clone();
        let d = tokio::task::spawn_blocking(move || disk_baseline(&dir, Duration::from_secs(2)))
            .await??;
        disk.push(d);
        for (t, out) in targets.iter().zip(results.iter_mut()) {
            let r = one_run(&opts, t).await?;
            println!(
                "{:>4} {:<22} {:>11.0} {:>8.1} {:>8.2} {:>8.2} {:>9.2} {:>7} {:>9} {:>10.1} {:>10} {:>8} {:>8}",
                i + 1,
                t.label,
                r.records_per_s,
                r.mb_per_s,
                r.p50_ms,
                r.p99_ms,
                r.p999_ms,
                r.errors,
                r.cpu_s_per_gb
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or("-".into()),
                d,
                fmt_opt(percentile(&r.feed_ms, 0.5), 1),
                fmt_opt(r.rss_mib, 0),
                fmt_opt(r.peak_rss_mib, 0),
            );
            out.push(r);
        }
    }
    let disk = median(disk);
    let base = median(results[0].iter().map(|r| r.records_per_s).collect());
    for (t, rs) in targets.iter().zip(&results) {
        let m = |f: fn(&RunResult) -> f64| median(rs.iter().map(f).collect());
        let mb = m(|r| r.mb_per_s);
        let feed: Vec<f64> = {
            let mut all: Vec<f64> = rs.iter().flat_map(|r| r.feed_ms.clone()).collect();
            all.sort_by(|a, b| a.partial_cmp(b).unwrap());
            all
        };
        println!(
            "median {}: {:.0} records/s, {:.1} MB/s, ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, errors {}, CPU {} s/GB, \
             RSS {} MiB (peak {} MiB); {:.2} of the disk's fdatasync'd append rate ({:.1} MB/s){}{}",
            t.label,
            m(|r| r.records_per_s),
            mb,
            m(|r| r.p50_ms),
            m(|r| r.p99_ms),
            m(|r| r.p999_ms),
            rs.iter().map(|r| r.errors).sum::<u64>(),
            fmt_opt(m(|r| r.cpu_s_per_gb.unwrap_or(f64::NAN)), 1),
            fmt_opt(m(|r| r.rss_mib), 0),
            fmt_opt(rs.iter().map(|r| r.peak_rss_mib).fold(f64::NAN, f64::max), 0),
            mb / disk,
            disk,
            if t.probes {
                format!(
                    "; throughput {:.2}x of plain hydrant; live feed latency p50 {} ms, p99 {} ms ({} probes)",
                    m(|r| r.records_per_s) / base,
                    fmt_opt(percentile(&feed, 0.5), 1),
                    fmt_opt(percentile(&feed, 0.99), 1),
                    feed.len()
                )
            } else {
                String::new()
            },
            {
                let d = m(|r| r.delivered_mb_per_s);
                let base_d = median(results[0].iter().map(|r| r.delivered_mb_per_s).collect());
                if d.is_finite() {
                    format!(
                        "; delivered into the lake at {d:.1} MB/s of record data ({:.2}x of plain hydrant)",
                        d / base_d
                    )
                } else {
                    String::new()
                }
            }
        );
    }
    if opts.freshness > 0 {
        let f = freshness(&targets[0], opts.freshness).await?;
        println!(
            "freshness (acknowledged to visible in SQL, 1 s buffer interval, {} probes): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            f.len(),
            percentile(&f, 0.5),
            percentile(&f, 0.99),
            f.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}
