//! `hydrant bench --query`: SQL over many small objects, beside DuckDB on
//! the same files in the same run.
//!
//! A hydrant the bench starts gets `--files` JSON-lines objects (default
//! 300, `--rows` in all, default 60,000) in its stream's directory, laid
//! out as delivery lays them out, and answers `SELECT count(*), sum(v)`
//! through `POST /-/query`: once cold (every object's schema still to be
//! learned), then `--runs` times more, then once after one more object
//! arrived. DuckDB (`read_json_auto` over the same files, one thread, like
//! hydrant's one query thread) runs the same query `--runs` times from a
//! script the bench ships (`src/bench/query.py`) with `--python`. Each
//! figure is the wall time of one query as its client sees it; the summary
//! gives medians and hydrant's as a ratio of DuckDB's. Both answers are
//! checked against the sum the bench wrote.

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::median;

pub struct Options {
    pub files: usize,
    pub rows: usize,
    pub runs: usize,
    pub python: Option<PathBuf>,
}

const SQL: &str = "SELECT count(*), sum(v) FROM q";

/// Writes object `n` of the bench's: `rows` records numbered from `first`.
/// Returns the sum of its `v`s.
fn write_object(dir: &Path, n: usize, first: usize, rows: usize) -> anyhow::Result<i64> {
    let hour = dir.join(format!("2026/12/04/{:02}", n / 50 % 24));
    std::fs::create_dir_all(&hour)?;
    let (mut text, mut sum) = (String::new(), 0i64);
    for i in first..first + rows {
        let v = (i * 7919 % 1000) as i64;
        sum += v;
        text += &format!(
            r#"{{"id":{i},"v":{v},"user":"u{}","ok":{}}}"#,
            i % 977,
            i % 3 == 0
        );
        text.push('\n');
    }
    // Written aside and renamed in, as delivery does.
    let name = format!("q-1-2026-12-04-00-00-00-{n:08}");
    let tmp = hour.join(format!(".{name}"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, hour.join(name))?;
    Ok(sum)
}

/// One query through the API: its wall time and (count, sum).
async fn query(http: &reqwest::Client, url: &str) -> anyhow::Result<(f64, (i64, i64))> {
    let start = Instant::now();
    let r = http.post(format!("{url}/-/query")).body(SQL).send().await?;
    let status = r.status();
    let body = r.bytes().await?;
    let took = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        status.is_success(),
        "the query failed: {}",
        String::from_utf8_lossy(&body)
    );
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let row = &v["rows"][0];
    let (count, sum) = (row[0].as_i64(), row[1].as_i64());
    match (count, sum) {
        (Some(c), Some(s)) => Ok((took, (c, s))),
        _ => anyhow::bail!("unexpected result: {v}"),
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.files > 0 && o.rows >= o.files && o.runs > 0,
        "--files and --runs must be at least 1, and --rows at least --files"
    );
    let config = "query: { threads: 1 }
delivery_streams:
  - DeliveryStreamName: q
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/bench
      BucketARN: arn:aws:s3:::bench
      Prefix: q/
      ProcessingConfiguration: { Enabled: true, Processors: [ { Type: AppendDelimiterToRecord } ] }
";
    let (own, url) = super::start_with(config).await?;
    let dir = own.dir.join("data/lake/bench/q");
    let per = o.rows / o.files;
    let mut expected = (0i64, 0i64);
    for n in 0..o.files {
        let rows = if n + 1 == o.files {
            o.rows - per * n
        } else {
            per
        };
        expected.1 += write_object(&dir, n, per * n, rows)?;
        expected.0 += rows as i64;
    }
    println!(
        "== {SQL}: {} objects, {} rows, {} runs, one query thread each",
        o.files, o.rows, o.runs
    );
    let http = reqwest::Client::new();
    let check = |who: &str, got: (i64, i64), want: (i64, i64)| {
        anyhow::ensure!(got == want, "{who} answered {got:?}, not {want:?}");
        Ok(())
    };
    let (cold, got) = query(&http, &url).await?;
    check("hydrant", got, expected)?;
    let mut warm = Vec::new();
    for _ in 0..o.runs {
        let (t, got) = query(&http, &url).await?;
        check("hydrant", got, expected)?;
        warm.push(t * 1000.0);
    }
    // DuckDB over the same objects, before the one more.
    let peer = duckdb(&o, &own.dir, &dir)?;
    let added = o.rows / o.files;
    let sum = write_object(&dir, o.files, o.rows, added)?;
    let (grown, got) = query(&http, &url).await?;
    check(
        "hydrant",
        got,
        (expected.0 + added as i64, expected.1 + sum),
    )?;
    let warm_ms = median(warm.clone());
    println!(
        "hydrant: first {:.1} ms (learning every object's schema)",
        cold * 1000.0
    );
    println!(
        "hydrant: repeated {warm_ms:.1} ms (median of {}; {})",
        o.runs,
        warm.iter()
            .map(|t| format!("{t:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("hydrant: after one more object {:.1} ms", grown * 1000.0);
    match peer {
        Err(why) => println!("  DuckDB not measured: {why} (pip install duckdb, or --python)"),
        Ok(Peer {
            times_ms: times,
            answer,
        }) => {
            check("DuckDB", answer, expected)?;
            let duck = median(times.clone());
            println!(
                "DuckDB:  {duck:.1} ms (median of {}; first {:.1} ms)",
                times.len(),
                times[0]
            );
            println!(
                "== hydrant first: {:.2}× DuckDB's first; repeated: {:.2}× DuckDB's time",
                cold * 1000.0 / times[0],
                warm_ms / duck
            );
        }
    }
    Ok(())
}

/// DuckDB's run: each query's time (ms) and its answer.
struct Peer {
    times_ms: Vec<f64>,
    answer: (i64, i64),
}

/// DuckDB's run, or why it did not run.
fn duckdb(o: &Options, work: &Path, dir: &Path) -> anyhow::Result<Result<Peer, String>> {
    // Every object below the stream's directory (none hidden there).
    let glob = format!("{}/*/*/*/*/q-*", dir.display());
    let runs = o.runs.to_string();
    let v = super::convert::run_peer(
        &o.python,
        work,
        "query.py",
        include_str!("query.py"),
        &[glob.as_ref(), runs.as_ref()],
    )?;
    if let Some(why) = v["missing"].as_str() {
        return Ok(Err(why.to_string()));
    }
    let times: Vec<f64> = v["times_s"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_f64())
                .map(|t| t * 1000.0)
                .collect()
        })
        .unwrap_or_default();
    let row = &v["rows"][0];
    match (times.is_empty(), row[0].as_i64(), row[1].as_i64()) {
        (false, Some(c), Some(s)) => Ok(Ok(Peer {
            times_ms: times,
            answer: (c, s),
        })),
        _ => anyhow::bail!("unexpected DuckDB output: {v}"),
    }
}
