//! `hydrant bench --warehouse URL`: loading into PostgreSQL, beside the
//! two ways people load without hydrant, on the same rows in the same run:
//!
//! - `psql -c "\copy …"` of the rows as a CSV file: PostgreSQL's own bulk
//!   path, the limit for any loader;
//! - one INSERT per row (autocommit, prepared): what a naive loader does.
//!
//! hydrant is measured end to end: from the first PutRecordBatch of the
//! rows (~100-byte JSON records) to the last row committed in the table,
//! through its log, staging and COPY. Then the load lag: records put at a
//! steady `--rate` (default 50,000/s) for `--duration-seconds`, each
//! stamped with its send time; the table stamps each row with
//! `clock_timestamp()` as it is inserted, and the lag is the difference.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio_postgres::NoTls;

use super::{median, start_with};
use crate::client::{batch_body, Firehose};
use crate::destination::warehouse::jdbc::Target;

pub struct Options {
    pub url: String,
    pub runs: usize,
    pub rows: usize,
    pub rate: u64,
    pub duration: Duration,
}

const COLUMNS: &str = "id, sent_ms, source, amount, pad";
const SOURCES: [&str; 4] = ["web", "ios", "android", "partner"];

fn record(id: usize, sent_ms: i64) -> Vec<u8> {
    // About 100 bytes, like the tutorial's events.
    format!(
        r#"{{"id":{id},"sent_ms":{sent_ms},"source":"{}","amount":{}.{:02},"pad":"{}"}}"#,
        SOURCES[id % 4],
        id % 500,
        id % 100,
        &"abcdefghijklmnopqrstuvwxyz0123456789"[..20 + id % 10]
    )
    .into_bytes()
}

fn csv_line(id: usize) -> String {
    format!(
        "{id},0,{},{}.{:02},{}\n",
        SOURCES[id % 4],
        id % 500,
        id % 100,
        &"abcdefghijklmnopqrstuvwxyz0123456789"[..20 + id % 10]
    )
}

fn stream_config(name: &str, url: &str, table: &str, user: &str, password: &str) -> String {
    format!(
        r#"  - DeliveryStreamName: {name}
    RedshiftDestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/bench
      ClusterJDBCURL: "{url}"
      Username: "{user}"
      Password: "{password}"
      CopyCommand: {{ DataTableName: {table}, DataTableColumns: "{COLUMNS}", CopyOptions: "JSON 'auto'" }}
      S3Configuration:
        RoleARN: arn:aws:iam::000000000000:role/bench
        BucketARN: arn:aws:s3:::bench
        Prefix: {name}/
        BufferingHints: {{ SizeInMBs: 8, IntervalInSeconds: 1 }}
"#
    )
}

/// A stream's summary in `/-/streams`.
pub(super) async fn summary(endpoint: &str, stream: &str) -> anyhow::Result<serde_json::Value> {
    let body = reqwest::get(format!("{endpoint}/-/streams"))
        .await?
        .bytes()
        .await?;
    let mut v: serde_json::Value = serde_json::from_slice(&body)?;
    let list = v["streams"].as_array_mut().context("no streams")?;
    let i = list
        .iter()
        .position(|s| s["name"] == stream)
        .with_context(|| format!("stream {stream} is missing"))?;
    Ok(list.swap_remove(i))
}

async fn rows_loaded(endpoint: &str, stream: &str) -> anyhow::Result<(u64, u64)> {
    let s = summary(endpoint, stream).await?;
    Ok((
        s["warehouse"]["rows_loaded"].as_u64().unwrap_or(0),
        s["warehouse"]["lag_records"].as_u64().unwrap_or(u64::MAX),
    ))
}

/// Records of a stream not yet staged.
async fn stream_lag(endpoint: &str, stream: &str) -> anyhow::Result<u64> {
    let body = reqwest::get(format!("{endpoint}/-/streams"))
        .await?
        .bytes()
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["streams"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == stream))
        .and_then(|s| s["lag_records"].as_u64())
        .context("bench stream missing")
}

async fn put_all(client: &Firehose, stream: &str, records: Vec<Vec<u8>>) -> anyhow::Result<()> {
    let mut inflight = tokio::task::JoinSet::new();
    for chunk in records.chunks(500) {
        let body = batch_body(stream, chunk);
        let c = client.clone();
        inflight.spawn(async move { c.put_batch_body(body).await });
        while inflight.len() >= 8 {
            let failed = inflight.join_next().await.expect("in flight")??;
            anyhow::ensure!(failed.is_empty(), "{} records were refused", failed.len());
        }
    }
    while let Some(r) = inflight.join_next().await {
        let failed = r??;
        anyhow::ensure!(failed.is_empty(), "{} records were refused", failed.len());
    }
    Ok(())
}

/// A connection to the PostgreSQL at `url` (a JDBC URL), as PGUSER with
/// PGPASSWORD; the user and password too.
pub(super) async fn connect(url: &str) -> anyhow::Result<(tokio_postgres::Client, String, String)> {
    let target = Target::parse(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let password = std::env::var("PGPASSWORD").unwrap_or_default();
    let (db, conn) = tokio_postgres::Config::new()
        .host(&target.host)
        .port(target.port)
        .dbname(&target.database)
        .user(&user)
        .password(&password)
        .connect(NoTls)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    tokio::spawn(conn);
    Ok((db, user, password))
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let (db, user, password) = connect(&o.url).await?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let t = |what: &str| format!("bench_{what}_{id}");
    for what in ["copy", "insert", "hydrant"] {
        db.batch_execute(&format!(
            "CREATE TABLE {} (id bigint, sent_ms bigint, source text, amount numeric(10,2), pad text)",
            t(what)
        ))
        .await?;
    }
    db.batch_execute(&format!(
        "CREATE TABLE {} (id bigint, sent_ms bigint, source text, amount numeric(10,2), pad text, \
         loaded_at timestamptz DEFAULT clock_timestamp())",
        t("lag")
    ))
    .await?;
    let began: std::time::SystemTime = db.query_one("SELECT now()", &[]).await?.get(0);
    let result = measure(&o, &db, &t, &user, &password).await;
    // The ledger rows of the bench's own streams go with its tables.
    let names: Vec<String> = ["load", "lag"]
        .map(String::from)
        .into_iter()
        .chain((0..o.runs).map(|r| format!("staged{r}")))
        .collect();
    let _ = db
        .execute(
            "DELETE FROM hydrant.loads WHERE stream = ANY($1) AND loaded_at >= $2",
            &[&names, &began],
        )
        .await;
    let staged = (0..o.runs).map(|r| format!("staged{r}"));
    for what in ["copy", "insert", "hydrant", "lag"]
        .map(String::from)
        .into_iter()
        .chain(staged)
    {
        let _ = db
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", t(&what)))
            .await;
    }
    result
}

async fn measure(
    o: &Options,
    db: &tokio_postgres::Client,
    t: &dyn Fn(&str) -> String,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    let target = Target::parse(&o.url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dir = std::env::temp_dir().join(format!("hydrant-bench-wh-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let csv = dir.join("rows.csv");
    std::fs::write(&csv, (0..o.rows).map(csv_line).collect::<String>())?;
    let mut streams = format!(
        "delivery_streams:\n{}{}",
        stream_config("load", &o.url, &t("hydrant"), user, password),
        stream_config("lag", &o.url, &t("lag"), user, password)
    );
    // For the load alone: streams whose table appears only once all their
    // records are staged (loading retries until it does).
    for run in 0..o.runs {
        let name = format!("staged{run}");
        streams += &stream_config(&name, &o.url, &t(&name), user, password);
    }
    let (own, endpoint) = start_with(&streams).await?;
    let client = Firehose::new(&endpoint);
    let (mut copy, mut insert, mut hydrant, mut load_only) = (vec![], vec![], vec![], vec![]);
    let inserts = o.rows.min(20_000);
    for run in 0..o.runs {
        // psql \copy: the rows from a file, PostgreSQL's bulk path.
        db.batch_execute(&format!("TRUNCATE {}", t("copy"))).await?;
        let started = Instant::now();
        let out = std::process::Command::new("psql")
            .args([
                "-h",
                &target.host,
                "-p",
                &target.port.to_string(),
                "-U",
                user,
                "-d",
                &target.database,
            ])
            .arg("-c")
            .arg(format!(
                "\\copy {} ({COLUMNS}) FROM '{}' CSV",
                t("copy"),
                csv.display()
            ))
            .env("PGPASSWORD", password)
            .output()
            .context("running psql (PostgreSQL's client) for the \\copy baseline")?;
        anyhow::ensure!(
            out.status.success(),
            "psql \\copy: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        copy.push(o.rows as f64 / started.elapsed().as_secs_f64());

        // One INSERT per row.
        db.batch_execute(&format!("TRUNCATE {}", t("insert")))
            .await?;
        let stmt = db
            .prepare(&format!(
                "INSERT INTO {} ({COLUMNS}) VALUES ($1, $2, $3, $4::text::numeric, $5)",
                t("insert")
            ))
            .await?;
        let started = Instant::now();
        for i in 0..inserts {
            let amount = format!("{}.{:02}", i % 500, i % 100);
            let pad = &"abcdefghijklmnopqrstuvwxyz0123456789"[..20 + i % 10];
            db.execute(&stmt, &[&(i as i64), &0i64, &SOURCES[i % 4], &amount, &pad])
                .await?;
        }
        insert.push(inserts as f64 / started.elapsed().as_secs_f64());

        // hydrant: put → log → staged → COPY → committed.
        let (before, _) = rows_loaded(&endpoint, "load").await?;
        let records: Vec<Vec<u8>> = (0..o.rows).map(|i| record(i, 0)).collect();
        let started = Instant::now();
        put_all(&client, "load", records).await?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (n, _) = rows_loaded(&endpoint, "load").await?;
            if n >= before + o.rows as u64 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "hydrant loaded {} of {} rows in 600 s",
                n - before,
                o.rows
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        hydrant.push(o.rows as f64 / started.elapsed().as_secs_f64());

        // The load alone: stage everything, then create the table, and time
        // the loader from its first commit to its last.
        let name = format!("staged{run}");
        put_all(&client, &name, (0..o.rows).map(|i| record(i, 0)).collect()).await?;
        while stream_lag(&endpoint, &name).await? > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        db.batch_execute(&format!(
            "CREATE TABLE {} (id bigint, sent_ms bigint, source text, amount numeric(10,2), pad text)",
            t(&name)
        ))
        .await?;
        let created: std::time::SystemTime = db.query_one("SELECT now()", &[]).await?.get(0);
        loop {
            let (n, _) = rows_loaded(&endpoint, &name).await?;
            if n >= o.rows as u64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // From the ledger, so that watching costs nothing: the rows of every
        // object but the last, over the time from the first load's start to
        // the last's.
        let r = db
            .query_one(
                "SELECT extract(epoch FROM max(loaded_at) - min(loaded_at))::float8, \
                        (sum(rows) - (array_agg(rows ORDER BY loaded_at DESC))[1])::float8 \
                   FROM hydrant.loads WHERE stream = $1 AND loaded_at >= $2",
                &[&name, &created],
            )
            .await?;
        let (span, rows): (f64, f64) = (r.get(0), r.get(1));
        load_only.push(rows / span);
        println!(
            "run {}: psql \\copy {:.0} rows/s, INSERT per row {:.0} rows/s, hydrant {:.0} rows/s put to committed, \
             {:.0} rows/s loading staged objects",
            run + 1,
            copy[run],
            insert[run],
            hydrant[run],
            load_only[run]
        );
    }
    let (c, i, h, l) = (
        median(copy),
        median(insert),
        median(hydrant),
        median(load_only),
    );
    println!(
        "median of {} runs, {} rows of ~100-byte JSON: psql \\copy {c:.0} rows/s; INSERT per row {i:.0} rows/s ({inserts} rows); \
         hydrant loading staged objects {l:.0} rows/s = {:.2}x \\copy, {:.1}x INSERT; \
         hydrant put to committed {h:.0} rows/s = {:.2}x \\copy",
        o.runs,
        o.rows,
        l / c,
        l / i,
        h / c
    );

    // Load lag at a steady rate.
    let started = Instant::now();
    let per_tick = (o.rate / 100).max(1) as usize;
    let mut sent = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut inflight = tokio::task::JoinSet::new();
    while started.elapsed() < o.duration {
        tick.tick().await;
        let now = chrono::Utc::now().timestamp_millis();
        let records: Vec<Vec<u8>> = (sent..sent + per_tick).map(|i| record(i, now)).collect();
        sent += per_tick;
        let c = client.clone();
        let body = batch_body("lag", &records);
        inflight.spawn(async move { c.put_batch_body(body).await });
        while let Some(r) = inflight.try_join_next() {
            let failed = r??;
            anyhow::ensure!(failed.is_empty(), "{} records were refused", failed.len());
        }
    }
    while let Some(r) = inflight.join_next().await {
        let failed = r??;
        anyhow::ensure!(failed.is_empty(), "{} records were refused", failed.len());
    }
    let offered = sent as f64 / started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    while rows_loaded(&endpoint, "lag").await?.0 < sent as u64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the lag stream did not load everything in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = db
        .query_one(
            &format!(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY lag), percentile_cont(0.99) WITHIN GROUP (ORDER BY lag), \
                 max(lag), count(*) FROM (SELECT (extract(epoch FROM loaded_at) * 1000 - sent_ms)::float8 AS lag FROM {}) l",
                t("lag")
            ),
            &[],
        )
        .await?;
    let (p50, p99, max, n): (f64, f64, f64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    println!(
        "load lag at {offered:.0} records/s for {:?} (1 s buffer interval, {n} rows; send to committed in the table): \
         p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        o.duration
    );
    drop(own);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
