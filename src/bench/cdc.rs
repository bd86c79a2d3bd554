//! `hydrant bench --cdc URL`: change data capture from a MariaDB the bench
//! starts itself (from the installed `mariadb-install-db` and `mariadbd`,
//! in a temporary directory, binlog on), in one run:
//!
//! - the snapshot: `--rows` rows read by hydrant into the lake, beside a
//!   plain `SELECT *` of the same table read by the same client library
//!   (mysql_async), the limit for any snapshot;
//! - the change lag: rows inserted at a steady `--rate` (default 5,000/s)
//!   for `--duration-seconds`, each stamped with `NOW(6)` at the source,
//!   applied to a mirror table in the PostgreSQL at URL, where a trigger
//!   stamps each row with `clock_timestamp()` as it is inserted; the lag is
//!   the difference, per row.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::*;

use super::median;

pub struct Options {
    pub url: String,
    pub runs: usize,
    pub rows: usize,
    pub rate: u64,
    pub duration: Duration,
}

/// A mariadbd the bench started, stopped and removed on drop.
struct Maria {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Maria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn binary(name: &str) -> anyhow::Result<PathBuf> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = PathBuf::from(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    anyhow::bail!(
        "{name} is not installed (Debian: mariadb-server); --cdc starts a MariaDB of its own"
    )
}

async fn start_maria() -> anyhow::Result<Maria> {
    let dir = std::env::current_dir()?.join(format!(
        ".hydrant-bench-mariadb-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let root = unsafe { libc::geteuid() } == 0;
    let user: &[&str] = if root { &["--user=root"] } else { &[] };
    let data = dir.join("data");
    let out = Command::new(binary("mariadb-install-db")?)
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data.display()))
        .args(user)
        .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
        .output()
        .context("running mariadb-install-db")?;
    anyhow::ensure!(
        out.status.success(),
        "mariadb-install-db failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = Command::new(binary("mariadbd")?)
        .arg("--no-defaults")
        .args(user)
        .arg(format!("--datadir={}", data.display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", dir.join("sock").display()))
        .arg(format!("--log-error={}", dir.join("err.log").display()))
        .arg(format!("--log-bin={}", data.join("binlog").display()))
        .args([
            "--binlog-format=ROW",
            "--server-id=1",
            "--innodb-buffer-pool-size=256M",
            "--innodb-flush-log-at-trx-commit=2",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting mariadbd")?;
    let maria = Maria { child, dir, port };
    for _ in 0..600 {
        if let Ok(c) = mysql_async::Conn::new(opts(port)).await {
            let _ = c.disconnect().await;
            return Ok(maria);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("mariadbd did not take connections within 60 s")
}

fn opts(port: u16) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some("root"))
        .prefer_socket(false)
        .init(vec!["SET time_zone = '+00:00'"])
}

const SECRET: &str = "arn:aws:secretsmanager:eu-west-1:000000000000:secret:bench";

fn source(port: u16, table: &str) -> serde_json::Value {
    serde_json::json!({
        "Type": "MySQL", "Endpoint": "127.0.0.1", "Port": port, "SSLMode": "Disabled",
        "Databases": {"Include": ["bench"]},
        "Tables": {"Include": [format!("bench.{table}")]},
        "SnapshotWatermarkTable": "hydrant_meta.watermarks",
        "DatabaseSourceAuthenticationConfiguration": {
            "SecretsManagerConfiguration": {"SecretARN": SECRET, "Enabled": true}
        },
        "DatabaseSourceVPCConfiguration": {
            "VpcEndpointServiceName": "com.amazonaws.vpce.eu-west-1.vpce-svc-0123456789abcdef0"
        }
    })
}

async fn create(endpoint: &str, request: serde_json::Value) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("X-Amz-Target", "Firehose_20150804.CreateDeliveryStream")
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(request.to_string())
        .send()
        .await?;
    let status = r.status();
    let body = r.text().await?;
    anyhow::ensure!(status.is_success(), "CreateDeliveryStream: {body}");
    Ok(())
}

/// Whether every table of the stream's source has its snapshot complete.
async fn snapshot_done(endpoint: &str, stream: &str) -> anyhow::Result<bool> {
    let s = super::warehouse::summary(endpoint, stream).await?;
    if let Some(e) = s["source"]["last_error"]["message"].as_str() {
        anyhow::bail!("change capture: {e}");
    }
    let tables = s["source"]["tables"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(!tables.is_empty() && tables.iter().all(|t| t["snapshot"] == "COMPLETE"))
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let (pg, user, password) = super::warehouse::connect(&o.url).await?;
    let schema = format!(
        "bench_cdc_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let began: std::time::SystemTime = pg.query_one("SELECT now()", &[]).await?.get(0);
    let result = measure(&o, &pg, &schema, &user, &password).await;
    let _ = pg
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await;
    let _ = pg
        .execute(
            "DELETE FROM hydrant.loads WHERE stream = 'mirror' AND loaded_at >= $1",
            &[&began],
        )
        .await;
    result
}

async fn measure(
    o: &Options,
    pg: &tokio_postgres::Client,
    schema: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    println!("starting a MariaDB of the bench's own (binlog on)…");
    let maria = start_maria().await?;
    let mut db = mysql_async::Conn::new(opts(maria.port)).await?;
    db.query_drop(
        "CREATE DATABASE bench; \
         CREATE TABLE bench.items (id BIGINT PRIMARY KEY, v INT NOT NULL, price DECIMAL(10,2), \
           note VARCHAR(64), created DATETIME(6) NOT NULL); \
         CREATE TABLE bench.lag (id BIGINT PRIMARY KEY, v INT NOT NULL, created DATETIME(6) NOT NULL)",
    )
    .await?;
    for lo in (0..o.rows).step_by(5000) {
        let values: Vec<String> = (lo..(lo + 5000).min(o.rows))
            .map(|i| {
                format!(
                    "({i},{},{}.{:02},'note number {i} of the bench',NOW(6))",
                    i % 1000,
                    i % 500,
                    i % 100
                )
            })
            .collect();
        db.query_drop(format!(
            "INSERT INTO bench.items VALUES {}",
            values.join(",")
        ))
        .await?;
    }
    println!(
        "snapshot: {} rows of bench.items (BIGINT key, INT, DECIMAL, VARCHAR, DATETIME), {} runs",
        o.rows, o.runs
    );

    let config = format!("secrets:\n  \"{SECRET}\":\n    username: root\n    password: \"\"\n");
    let (own, endpoint) = super::start_with(&config).await?;
    let (mut plain, mut hydrant) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        let started = Instant::now();
        let mut n = 0usize;
        let mut rows = db.query_iter("SELECT * FROM bench.items").await?;
        while let Some(row) = rows.next().await? {
            let _: mysql_async::Row = row;
            n += 1;
        }
        drop(rows);
        anyhow::ensure!(n == o.rows, "SELECT * read {n} rows of {}", o.rows);
        plain.push(n as f64 / started.elapsed().as_secs_f64());

        let stream = format!("snap{run}");
        let started = Instant::now();
        create(
            &endpoint,
            serde_json::json!({
                "DeliveryStreamName": stream,
                "DeliveryStreamType": "DatabaseAsSource",
                "DatabaseSourceConfiguration": source(maria.port, "items"),
                "ExtendedS3DestinationConfiguration": {
                    "RoleARN": "arn:aws:iam::000000000000:role/bench",
                    "BucketARN": "arn:aws:s3:::bench",
                    "Prefix": format!("{stream}/"),
                    "BufferingHints": {"SizeInMBs": 64, "IntervalInSeconds": 1},
                    "ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
                }
            }),
        )
        .await?;
        let deadline = Instant::now() + Duration::from_secs(1800);
        while !snapshot_done(&endpoint, &stream).await? {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the snapshot did not finish in 30 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        hydrant.push(o.rows as f64 / started.elapsed().as_secs_f64());
        println!(
            "  run {}: SELECT * {:.0} rows/s, hydrant snapshot {:.0} rows/s",
            run + 1,
            plain[run],
            hydrant[run]
        );
    }
    let (plain, hydrant) = (median(plain), median(hydrant));
    println!("  mysql_async SELECT * (the limit)   {plain:>12.0} rows/s  1");
    println!(
        "  hydrant snapshot into the lake     {hydrant:>12.0} rows/s  {:.2}x",
        hydrant / plain
    );

    // The mirror, its table made beforehand with a column the trigger stamps.
    pg.batch_execute(&format!(
        "CREATE SCHEMA {schema};
         CREATE TABLE {schema}.lag (id bigint PRIMARY KEY, v integer, created timestamp, loaded_at timestamptz);
         CREATE FUNCTION {schema}.stamp() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN NEW.loaded_at := clock_timestamp(); RETURN NEW; END $$;
         CREATE TRIGGER stamp BEFORE INSERT ON {schema}.lag FOR EACH ROW EXECUTE FUNCTION {schema}.stamp();"
    ))
    .await?;
    create(
        &endpoint,
        serde_json::json!({
            "DeliveryStreamName": "mirror",
            "DeliveryStreamType": "DatabaseAsSource",
            "DatabaseSourceConfiguration": source(maria.port, "lag"),
            "RedshiftDestinationConfiguration": {
                "RoleARN": "arn:aws:iam::000000000000:role/bench",
                "ClusterJDBCURL": o.url,
                "CopyCommand": {"DataTableName": schema, "CopyOptions": "JSON 'auto'"},
                "Username": user,
                "Password": if password.is_empty() { "unused" } else { password },
                "S3Configuration": {
                    "RoleARN": "arn:aws:iam::000000000000:role/bench",
                    "BucketARN": "arn:aws:s3:::bench",
                    "Prefix": "mirror/",
                    "BufferingHints": {"SizeInMBs": 1, "IntervalInSeconds": 1}
                },
                "ProcessingConfiguration": {"Enabled": true, "Processors": [{"Type": "AppendDelimiterToRecord"}]}
            }
        }),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !snapshot_done(&endpoint, "mirror").await? {
        anyhow::ensure!(Instant::now() < deadline, "the mirror stream did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Inserts at a steady rate: every 10 ms, a hundredth of a second's rows.
    let per_tick = (o.rate / 100).max(1) as usize;
    let ticks = (o.duration.as_millis() / 10) as usize;
    let mut next = Instant::now();
    let mut id = 0usize;
    for _ in 0..ticks {
        let values: Vec<String> = (id..id + per_tick)
            .map(|i| format!("({i},{},NOW(6))", i % 1000))
            .collect();
        id += per_tick;
        db.query_drop(format!("INSERT INTO bench.lag VALUES {}", values.join(",")))
            .await?;
        next += Duration::from_millis(10);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
    }
    let sent = id as i64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let n: i64 = pg
            .query_one(&format!("SELECT count(*) FROM {schema}.lag"), &[])
            .await?
            .get(0);
        if n == sent {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the mirror has {n} of {sent} rows after 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let row = pg
        .query_one(
            &format!(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY l), \
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY l), max(l) \
                   FROM (SELECT extract(epoch FROM (loaded_at AT TIME ZONE 'UTC') - created)::float8 * 1000 AS l \
                           FROM {schema}.lag) x"
            ),
            &[],
        )
        .await?;
    let (p50, p99, max): (f64, f64, f64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "change lag, {sent} inserts at {} rows/s for {} s, source commit (NOW(6)) to the mirror row \
         (1 s buffering): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        o.rate,
        o.duration.as_secs()
    );
    drop(own);
    let _ = db.disconnect().await;
    drop(maria);
    Ok(())
}
