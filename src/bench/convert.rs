//! `hydrant bench --convert`: JSON → Parquet conversion, beside the tools
//! users would pick instead, on the same file in the same run.
//!
//! The records are `--rows` events of about 100 bytes (a timestamp, ids, a
//! name, a price, a country). hydrant converts them the way a delivery
//! stream does, on one thread: every record validated and appended to the
//! object's columns as it is routed, then the object written as Parquet
//! (Snappy, dictionaries, page statistics), once with a declared schema and
//! once with an inferred one. The peers, DuckDB (`COPY (SELECT * FROM
//! read_json(...)) TO ... (FORMAT parquet)`) and pyarrow (`read_json` then
//! `write_table`), each held to one thread, run from a script the bench
//! ships (`src/bench/convert.py`) with `--python` (default: `.venv/bin/python`
//! when present, else `python3`). Each figure is MB of input JSON per CPU
//! second, the median over `--runs`; the summary gives hydrant's as a ratio
//! of DuckDB's.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use super::median;
use crate::destination::lake::parquet::{
    Columns, InferredSchema, ParquetOptions, ParquetWriter, TableSchema,
};

pub struct Options {
    pub rows: usize,
    pub runs: usize,
    pub python: Option<PathBuf>,
}

const EVENTS: [&str; 6] = [
    "page_view",
    "add_to_cart",
    "checkout",
    "purchase",
    "search",
    "sign_in",
];
const COUNTRIES: [&str; 8] = ["DE", "US", "FR", "JP", "BR", "IN", "GB", "NL"];

/// The `i`th record of the bench's data: varied values, ~100 bytes.
fn record(i: usize) -> String {
    // A cheap deterministic scramble, so values repeat the way real ones do.
    let h = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20;
    let ms = 1_764_770_000_000 + i as u64 * 7;
    let at = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default();
    format!(
        r#"{{"ts":"{}","user_id":{},"event":"{}","price":{}.{:02},"qty":{},"country":"{}"}}"#,
        at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
        100_000 + h % 900_000,
        EVENTS[(h % 6) as usize],
        h % 500,
        h % 100,
        1 + h % 5,
        COUNTRIES[(h >> 8) as usize % 8]
    )
}

const DECLARED: [(&str, &str); 6] = [
    ("ts", "timestamp"),
    ("user_id", "bigint"),
    ("event", "string"),
    ("price", "decimal(10,2)"),
    ("qty", "int"),
    ("country", "string"),
];

/// CPU seconds this thread has used.
fn thread_cpu() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `t` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

struct Timing {
    cpu_s: f64,
    wall_s: f64,
    output: usize,
}

/// What delivery does with a buffer's records: each appended to the
/// columns as it is routed (declared) or folded into the schema and
/// appended (inferred), then the object written.
fn hydrant(records: &[&[u8]], declared: Option<&TableSchema>) -> anyhow::Result<Timing> {
    let opts = ParquetOptions::default();
    let (cpu, wall) = (thread_cpu(), Instant::now());
    let mut inferred = InferredSchema::new();
    let mut columns = match declared {
        Some(t) => Columns::new(t),
        None => Columns::new(&inferred.table()),
    };
    for r in records {
        match declared {
            Some(_) => columns.append(r),
            None => inferred.append(r, &mut columns),
        }
        .map_err(|e| anyhow::anyhow!("a bench record did not convert: {e}"))?;
    }
    let mut writer = ParquetWriter::new(columns.schema(), &opts).map_err(anyhow::Error::msg)?;
    writer.write(columns).map_err(anyhow::Error::msg)?;
    let body = writer.finish().map_err(anyhow::Error::msg)?;
    Ok(Timing {
        cpu_s: thread_cpu() - cpu,
        wall_s: wall.elapsed().as_secs_f64(),
        output: body.len(),
    })
}

/// Runs a peer's script that the bench ships, `text` written to `dir` as
/// `name`, with `args`, and parses the JSON it prints. The Python is
/// `--python`, else the project's virtualenv when present, else `python3`.
pub(super) fn run_peer(
    python: &Option<PathBuf>,
    dir: &Path,
    name: &str,
    text: &str,
    args: &[&std::ffi::OsStr],
) -> anyhow::Result<serde_json::Value> {
    let script = dir.join(name);
    std::fs::write(&script, text)?;
    let py = python.clone().unwrap_or_else(|| {
        let venv = Path::new(".venv/bin/python");
        if venv.exists() {
            venv.to_path_buf()
        } else {
            "python3".into()
        }
    });
    let out = std::process::Command::new(&py)
        .arg(&script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{} {}: {}",
        py.display(),
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The peers' timings for one run: name → (cpu_s, rows), or why missing.
fn peers(o: &Options, dir: &Path, src: &Path) -> anyhow::Result<serde_json::Value> {
    let tools = std::ffi::OsStr::new("duckdb,pyarrow");
    run_peer(
        &o.python,
        dir,
        "convert.py",
        include_str!("convert.py"),
        &[src.as_os_str(), dir.as_os_str(), tools],
    )
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.rows > 0 && o.runs > 0,
        "--rows and --runs must be at least 1"
    );
    let dir = std::env::temp_dir().join(format!("hydrant-bench-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    tokio::task::spawn_blocking(move || measure(&o, &dir)).await?
}

fn measure(o: &Options, dir: &Path) -> anyhow::Result<()> {
    let _cleanup = Cleanup(dir.to_path_buf());
    let text: String = (0..o.rows).map(|i| record(i) + "\n").collect();
    let src = dir.join("events.json");
    std::fs::write(&src, &text)?;
    let records: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
    let mb = text.len() as f64 / 1e6;
    println!(
        "== JSON → Parquet: {} records, {:.1} MB ({} B each on average), {} runs, one thread each",
        o.rows,
        mb,
        text.len() / o.rows,
        o.runs
    );
    let declared = TableSchema::from_columns(
        &DECLARED
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect::<Vec<_>>(),
    )
    .map_err(anyhow::Error::msg)?;
    let mut figures: Vec<(&str, Vec<f64>)> =
        ["hydrant declared", "hydrant inferred", "duckdb", "pyarrow"]
            .iter()
            .map(|n| (*n, Vec::new()))
            .collect();
    let mut missing: Vec<String> = Vec::new();
    for run in 1..=o.runs {
        let d = hydrant(&records, Some(&declared))?;
        let i = hydrant(&records, None)?;
        println!(
            "run {run}: hydrant declared {:.1} MB/s ({:.2} s CPU, {:.2} s wall, {:.1} MB out), inferred {:.1} MB/s ({:.2} s CPU)",
            mb / d.cpu_s,
            d.cpu_s,
            d.wall_s,
            d.output as f64 / 1e6,
            mb / i.cpu_s,
            i.cpu_s
        );
        figures[0].1.push(mb / d.cpu_s);
        figures[1].1.push(mb / i.cpu_s);
        let p = peers(o, dir, &src)?;
        for (k, name) in [(2, "duckdb"), (3, "pyarrow")] {
            let t = &p[name];
            if let Some(why) = t["missing"].as_str() {
                missing.push(format!("{name}: {why}"));
                continue;
            }
            let (cpu, rows) = (t["cpu_s"].as_f64().unwrap_or(0.0), t["rows"].as_u64());
            anyhow::ensure!(
                rows == Some(o.rows as u64),
                "{name} wrote {rows:?} rows, not {}",
                o.rows
            );
            println!(
                "run {run}: {name} {:.1} MB/s ({cpu:.2} s CPU, {:.2} s wall)",
                mb / cpu,
                t["wall_s"].as_f64().unwrap_or(0.0)
            );
            figures[k].1.push(mb / cpu);
        }
    }
    println!("== medians, MB of input JSON per CPU second (one core)");
    let duck = median(figures[2].1.clone());
    for (name, v) in &figures {
        if v.is_empty() {
            continue;
        }
        let m = median(v.clone());
        let vs = if figures[2].1.is_empty() {
            String::new()
        } else {
            format!(" ({:.2}× DuckDB)", m / duck)
        };
        println!("{name:>18}: {m:.1} MB/s{vs}");
    }
    missing.dedup();
    for m in missing {
        println!("  not measured: {m} (pip install duckdb pyarrow, or --python)");
    }
    Ok(())
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
