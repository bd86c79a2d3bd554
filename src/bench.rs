//! `hydrant bench`: a load harness over PutRecordBatch.
//!
//! It aims at any Firehose-compatible endpoint (`--endpoint`), or starts a
//! hydrant of its own in a temporary directory as a separate process, so the
//! server is measured apart from the load it is given. Each run keeps
//! `--concurrency` requests in flight for `--duration-seconds` and reports
//! durable records/s, MB/s of record data, acknowledgement latency
//! percentiles, errors, and (for its own server) CPU seconds per GB.
//!
//! Shared machines are noisy, so every run also measures a baseline on the
//! same disk in the same moment: sequential 1 MiB appends with an fdatasync
//! after each, the cost floor of any log that acknowledges only durable
//! data. The summary gives medians over the runs and the ratio of hydrant's
//! durable MB/s to that baseline.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{batch_body, Firehose};

pub struct BenchOptions {
    pub endpoint: Option<String>,
    pub stream: String,
    pub concurrency: usize,
    pub batch: usize,
    pub record_size: usize,
    pub duration: Duration,
    pub runs: usize,
}

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

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn start_own() -> anyhow::Result<(Own, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let dir =
        std::env::current_dir()?.join(format!(".hydrant-bench-{}", uuid::Uuid::new_v4().simple()));
    let child = Command::new(std::env::current_exe()?)
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(&dir)
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
    baseline_mb_per_s: f64,
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

async fn one_run(
    opts: &BenchOptions,
    client: &Firehose,
    pid: Option<u32>,
    baseline_dir: &Path,
) -> anyhow::Result<RunResult> {
    let baseline_dir = baseline_dir.to_path_buf();
    let baseline =
        tokio::task::spawn_blocking(move || disk_baseline(&baseline_dir, Duration::from_secs(2)))
            .await??;
    let cpu0 = pid.and_then(cpu_seconds);
    let start = Instant::now();
    let deadline = start + opts.duration;
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let client = client.clone();
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
        tasks.spawn(async move {
            let (mut lat, mut ok, mut ok_bytes, mut errors) = (Vec::new(), 0u64, 0u64, 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match client.put_batch_body(body.clone()).await {
                    Ok(failed) => {
                        lat.push(t.elapsed().as_micros() as u64);
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
    let (mut lat, mut ok, mut ok_bytes, mut errors) = (Vec::new(), 0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        let (l, o, b, e) = r?;
        lat.extend(l);
        ok += o;
        ok_bytes += b;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, pid.and_then(cpu_seconds)) {
        (Some(a), Some(b)) if ok_bytes > 0 => Some((b - a) / (ok_bytes as f64 / 1e9)),
        _ => None,
    };
    lat.sort_unstable();
    Ok(RunResult {
        records_per_s: ok as f64 / secs,
        mb_per_s: ok_bytes as f64 / 1e6 / secs,
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        errors,
        cpu_s_per_gb: cpu,
        baseline_mb_per_s: baseline,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
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

pub async fn run(opts: BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!((1..=500).contains(&opts.batch), "--batch must be 1 to 500");
    anyhow::ensure!(
        opts.runs >= 1 && opts.concurrency >= 1,
        "--runs and --concurrency must be at least 1"
    );
    let (own, endpoint) = match &opts.endpoint {
        Some(e) => (None, e.clone()),
        None => {
            let (own, url) = start_own().await?;
            (Some(own), url)
        }
    };
    let client = Firehose::new(&endpoint);
    if !client.stream_exists(&opts.stream).await? {
        client
            .create(&serde_json::json!({
                "DeliveryStreamName": opts.stream,
                "DeliveryStreamType": "DirectPut",
                "ExtendedS3DestinationConfiguration": {
                    "RoleARN": "arn:aws:iam::000000000000:role/bench",
                    "BucketARN": "arn:aws:s3:::bench",
                    "BufferingHints": { "SizeInMBs": 64, "IntervalInSeconds": 60 },
                    "CompressionFormat": "UNCOMPRESSED",
                    "ProcessingConfiguration": { "Enabled": true, "Processors": [{ "Type": "AppendDelimiterToRecord" }] }
                }
            }))
            .await
            .context("creating the bench stream")?;
    }
    let pid = own.as_ref().map(|o| o.child.id());
    let baseline_dir = own
        .as_ref()
        .map(|o| o.dir.clone())
        .unwrap_or(std::env::current_dir()?);
    println!(
        "hydrant bench: {endpoint}, stream {}, {} in flight, {} records of {} bytes per PutRecordBatch, {} runs of {:?}",
        opts.stream, opts.concurrency, opts.batch, opts.record_size, opts.runs, opts.duration
    );
    println!(
        "{:>4} {:>12} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>13} {:>7}",
        "run",
        "records/s",
        "MB/s",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "CPU s/GB",
        "disk MB/s",
        "ratio"
    );
    let mut results = Vec::new();
    for i in 0..opts.runs {
        let r = one_run(&opts, &client, pid, &baseline_dir).await?;
        println!(
            "{:>4} {:>12.0} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>10} {:>13.1} {:>7.2}",
            i + 1,
            r.records_per_s,
            r.mb_per_s,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.errors,
            r.cpu_s_per_gb
                .map(|c| format!("{c:.1}"))
                .unwrap_or("-".into()),
            r.baseline_mb_per_s,
            r.mb_per_s / r.baseline_mb_per_s
        );
        results.push(r);
    }
    let m = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    println!(
        "median: {:.0} records/s, {:.1} MB/s, ack latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, errors {}, CPU {} s/GB; \
         baseline (1 MiB append + fdatasync) {:.1} MB/s; hydrant/baseline {:.2}",
        m(|r| r.records_per_s),
        m(|r| r.mb_per_s),
        m(|r| r.p50_ms),
        m(|r| r.p99_ms),
        m(|r| r.p999_ms),
        results.iter().map(|r| r.errors).sum::<u64>(),
        {
            let c = m(|r| r.cpu_s_per_gb.unwrap_or(f64::NAN));
            if c.is_finite() { format!("{c:.1}") } else { "-".into() }
        },
        m(|r| r.baseline_mb_per_s),
        m(|r| r.mb_per_s / r.baseline_mb_per_s),
    );
    drop(own);
    Ok(())
}
