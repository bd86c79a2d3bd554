//! `hydrant bench --cdc URL`: change data capture from a source server the
//! bench starts itself, in a temporary directory: a MariaDB (the installed
//! `mariadb-install-db` and `mariadbd`, binlog on) or, with `--cdc-source
//! postgresql`, a PostgreSQL (the installed `initdb` and `postgres`,
//! `wal_level=logical`). In one run:
//!
//! - the snapshot: `--rows` rows read by hydrant into the lake, beside a
//!   plain `SELECT *` of the same table read by the same client library
//!   hydrant reads it with (mysql_async; tokio-postgres, in the simple
//!   protocol's text form), the limit for any snapshot;
//! - the change lag: rows inserted at a steady `--rate` (default 5,000/s)
//!   for `--duration-seconds`, each stamped with the source's clock at the
//!   source, applied to a mirror table in the PostgreSQL at URL, where a
//!   trigger stamps each row with `clock_timestamp()` as it is inserted;
//!   the lag is the difference, per row.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use mysql_async::prelude::*;

use super::median;

pub struct Options {
    pub url: String,
    pub source: SourceKind,
    pub runs: usize,
    pub rows: usize,
    pub rate: u64,
    pub duration: Duration,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    MariaDb,
    Postgres,
}

/// A server the bench started, stopped and removed on drop.
struct Server {
    child: Child,
    dir: PathBuf,
    port: u16,
    /// How it stops: PostgreSQL's fast shutdown (SIGINT); mariadbd is
    /// killed, its data being the bench's own.
    signal: i32,
}

impl Drop for Server {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, self.signal) };
        for _ in 0..300 {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

async fn start_maria() -> anyhow::Result<Server> {
    let dir = std::env::current_dir()?.join(format!(
        ".hydrant-bench-mariadb-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
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
    let maria = Server {
        child,
        dir,
        port,
        signal: libc::SIGKILL,
    };
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

/// PostgreSQL's server binaries: the newest installed version's.
fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name} is not installed (Debian: postgresql); --cdc-source postgresql starts a PostgreSQL of its own"
            )
        })
}

/// A command as the `postgres` user when the bench runs as root (the
/// server refuses to run as root).
fn as_server_user(bin: PathBuf) -> Command {
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

async fn start_postgres() -> anyhow::Result<Server> {
    let dir = std::env::temp_dir().join(format!(
        "hydrant-bench-postgres-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    if unsafe { libc::geteuid() } == 0 {
        let out = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "chown postgres {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = free_port()?;
    let data = dir.join("data");
    let out = as_server_user(pg_bin("initdb")?)
        .arg("-D")
        .arg(&data)
        .args(["-U", "bench", "--auth=trust", "-E", "UTF8"])
        .output()
        .context("running initdb")?;
    anyhow::ensure!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let child = as_server_user(pg_bin("postgres")?)
        .arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=10",
            "-c",
            "max_wal_senders=10",
            "-c",
            "shared_buffers=256MB",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")?;
    let server = Server {
        child,
        dir,
        port,
        signal: libc::SIGINT,
    };
    for _ in 0..600 {
        if let Ok(c) = pg_connect(port, "postgres").await {
            c.batch_execute("CREATE DATABASE bench").await?;
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("postgres did not take connections within 60 s")
}

async fn pg_connect(port: u16, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("bench")
        .dbname(db)
        .options("-c TimeZone=UTC")
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The source database, through the client library hydrant reads it with.
enum Source {
    Maria(Server, mysql_async::Conn),
    Postgres(Server, tokio_postgres::Client),
}

impl Source {
    async fn start(kind: SourceKind) -> anyhow::Result<Source> {
        Ok(match kind {
            SourceKind::MariaDb => {
                println!("starting a MariaDB of the bench's own (binlog on)…");
                let s = start_maria().await?;
                let mut c = mysql_async::Conn::new(opts(s.port)).await?;
                c.query_drop(
                    "CREATE DATABASE bench; \
                     CREATE TABLE bench.items (id BIGINT PRIMARY KEY, v INT NOT NULL, price DECIMAL(10,2), \
                       note VARCHAR(64), created DATETIME(6) NOT NULL); \
                     CREATE TABLE bench.lag (id BIGINT PRIMARY KEY, v INT NOT NULL, created DATETIME(6) NOT NULL)",
                )
                .await?;
                Source::Maria(s, c)
            }
            SourceKind::Postgres => {
                println!("starting a PostgreSQL of the bench's own (wal_level=logical)…");
                let s = start_postgres().await?;
                let c = pg_connect(s.port, "bench").await?;
                c.batch_execute(
                    "CREATE SCHEMA bench;
                     CREATE TABLE bench.items (id bigint PRIMARY KEY, v integer NOT NULL, price numeric(10,2),
                       note varchar(64), created timestamp(6) NOT NULL);
                     CREATE TABLE bench.lag (id bigint PRIMARY KEY, v integer NOT NULL, created timestamp(6) NOT NULL);
                     ALTER TABLE bench.items REPLICA IDENTITY FULL;
                     ALTER TABLE bench.lag REPLICA IDENTITY FULL",
                )
                .await?;
                Source::Postgres(s, c)
            }
        })
    }

    fn port(&self) -> u16 {
        match self {
            Source::Maria(s, _) | Source::Postgres(s, _) => s.port,
        }
    }

    /// `rows` rows of bench.items.
    async fn load(&mut self, rows: usize) -> anyhow::Result<()> {
        match self {
            Source::Maria(_, db) => {
                for lo in (0..rows).step_by(5000) {
                    let values: Vec<String> = (lo..(lo + 5000).min(rows))
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
            }
            Source::Postgres(_, c) => {
                c.execute(
                    "INSERT INTO bench.items SELECT i, i % 1000, (i % 500) + (i % 100) / 100.0, \
                     'note number ' || i || ' of the bench', clock_timestamp() AT TIME ZONE 'UTC' \
                     FROM generate_series(0, $1::int8 - 1) i",
                    &[&(rows as i64)],
                )
                .await?;
                c.batch_execute("ANALYZE bench.items").await?;
            }
        }
        Ok(())
    }

    /// A plain `SELECT *` of bench.items: the rows read.
    async fn select_all(&mut self) -> anyhow::Result<usize> {
        Ok(match self {
            Source::Maria(_, db) => {
                let mut n = 0usize;
                let mut rows = db.query_iter("SELECT * FROM bench.items").await?;
                while let Some(row) = rows.next().await? {
                    let _: mysql_async::Row = row;
                    n += 1;
                }
                n
            }
            Source::Postgres(_, c) => c
                .simple_query("SELECT * FROM bench.items")
                .await?
                .iter()
                .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
                .count(),
        })
    }

    /// Inserts ids `from..to` into bench.lag, stamped with the source's
    /// clock (UTC), in one transaction.
    async fn insert_lag(&mut self, from: usize, to: usize) -> anyhow::Result<()> {
        match self {
            Source::Maria(_, db) => {
                let values: Vec<String> = (from..to)
                    .map(|i| format!("({i},{},NOW(6))", i % 1000))
                    .collect();
                db.query_drop(format!("INSERT INTO bench.lag VALUES {}", values.join(",")))
                    .await?;
            }
            Source::Postgres(_, c) => {
                c.execute(
                    "INSERT INTO bench.lag SELECT i, i % 1000, clock_timestamp() AT TIME ZONE 'UTC' \
                     FROM generate_series($1::int8, $2::int8 - 1) i",
                    &[&(from as i64), &(to as i64)],
                )
                .await?;
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        match self {
            Source::Maria(..) => "mysql_async",
            Source::Postgres(..) => "tokio-postgres",
        }
    }
}

const SECRET: &str = "arn:aws:secretsmanager:eu-west-1:000000000000:secret:bench";

fn source(kind: SourceKind, port: u16, table: &str) -> serde_json::Value {
    serde_json::json!({
        "Type": if kind == SourceKind::Postgres { "PostgreSQL" } else { "MySQL" },
        "Endpoint": "127.0.0.1", "Port": port, "SSLMode": "Disabled",
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
    let mut db = Source::start(o.source).await?;
    db.load(o.rows).await?;
    println!(
        "snapshot: {} rows of bench.items (BIGINT key, INT, DECIMAL, VARCHAR, DATETIME), {} runs",
        o.rows, o.runs
    );

    let source_user = match o.source {
        SourceKind::MariaDb => "root",
        SourceKind::Postgres => "bench",
    };
    let config =
        format!("secrets:\n  \"{SECRET}\":\n    username: {source_user}\n    password: \"\"\n");
    let (own, endpoint) = super::start_with(&config).await?;
    let (mut plain, mut hydrant) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        let started = Instant::now();
        let n = db.select_all().await?;
        anyhow::ensure!(n == o.rows, "SELECT * read {n} rows of {}", o.rows);
        plain.push(n as f64 / started.elapsed().as_secs_f64());

        let stream = format!("snap{run}");
        let started = Instant::now();
        create(
            &endpoint,
            serde_json::json!({
                "DeliveryStreamName": stream,
                "DeliveryStreamType": "DatabaseAsSource",
                "DatabaseSourceConfiguration": source(o.source, db.port(), "items"),
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
    println!(
        "  {:<14} SELECT * (the limit) {plain:>12.0} rows/s  1",
        db.name()
    );
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
            "DatabaseSourceConfiguration": source(o.source, db.port(), "lag"),
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
        db.insert_lag(id, id + per_tick).await?;
        id += per_tick;
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
        "change lag, {sent} inserts at {} rows/s for {} s, source commit (the source's clock) to the \
         mirror row (1 s buffering): p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms",
        o.rate,
        o.duration.as_secs()
    );
    drop(own);
    drop(db);
    Ok(())
}
