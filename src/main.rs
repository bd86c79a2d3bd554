//! The `hydrant` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hydrant::config::{Config, DEFAULT_LISTEN};
use hydrant::generate::{GenerateOptions, Scenario};
use hydrant::server::{self, ServerOptions};

#[derive(Parser)]
#[command(
    name = "hydrant",
    version,
    about = "A self-hosted streaming data pipeline: Firehose-compatible ingest, a durable log, exactly-once delivery into a data lake."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the Firehose API and deliver into the lake.
    Serve {
        /// Address to listen on [default: 127.0.0.1:4577, or `listen` in the config].
        #[arg(long)]
        listen: Option<String>,
        /// Data directory: logs, stream definitions, the embedded lake [default: ./data].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// YAML config file (see the README's config reference).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Serve on an address other than loopback although requests are not
        /// authenticated: anyone who can reach the port can then create and
        /// delete streams, put records and read the lake. Without this flag,
        /// such a --listen is refused.
        #[arg(long)]
        allow_unauthenticated_network: bool,
    },
    /// Load into the warehouse the staged objects whose manifests a Redshift
    /// stream put in its error output, exactly once (objects loaded before
    /// are skipped, so running it again is harmless).
    Backfill {
        /// The delivery stream.
        stream: String,
        /// A manifest's key in the stream's staging bucket (repeatable)
        /// [default: every manifest of the stream in its error output].
        #[arg(long = "manifest")]
        manifests: Vec<String>,
        /// The data directory hydrant serves from [default: ./data, or `data_dir` in the config].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// The config file hydrant serves with (for its secrets and buckets).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Start hydrant with the tutorial's stream and a producer sending to it.
    Demo {
        #[arg(long, default_value = DEFAULT_LISTEN)]
        listen: String,
        #[arg(long, default_value = "./hydrant-demo")]
        data_dir: PathBuf,
        /// Events per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Events to send before stopping the producer; 0 = until Ctrl-C.
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Send the tutorial's synthetic chat events to a Firehose endpoint.
    Generate {
        #[arg(long, default_value = "http://127.0.0.1:4577")]
        endpoint: String,
        #[arg(long, default_value = "my-event-staging")]
        stream: String,
        /// Records per second; 0 = as fast as the server takes them.
        #[arg(long, default_value_t = 100)]
        rate: u64,
        /// Records to send; 0 = until Ctrl-C.
        #[arg(long, default_value_t = 0)]
        count: u64,
        /// Records per request: 1 uses PutRecord, 2-500 PutRecordBatch.
        #[arg(long, default_value_t = 100)]
        batch: usize,
        /// Which events to send.
        #[arg(long, value_enum, default_value = "chat")]
        scenario: Scenario,
    },
    /// Run SQL over the lake of a running hydrant: every delivery stream is a
    /// table (quote names with '-', or use '_' for them: my_event_staging).
    /// Signed with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY when they are set.
    Query {
        /// The SQL, e.g. "SELECT event_name, count(*) FROM my_event_staging GROUP BY 1".
        sql: String,
        #[arg(long, default_value = "http://127.0.0.1:4577")]
        endpoint: String,
        #[arg(long, value_enum, default_value = "table")]
        format: QueryFormat,
    },
    /// Load-test a Firehose endpoint (or a hydrant it starts) with PutRecordBatch.
    Bench {
        /// Endpoint to load; without it, bench starts its own hydrant.
        #[arg(long)]
        endpoint: Option<String>,
        #[arg(long, default_value = "bench")]
        stream: String,
        /// Requests in flight.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// Records per request.
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// Bytes per record.
        #[arg(long, default_value_t = 100)]
        record_size: usize,
        #[arg(long, default_value_t = 10)]
        duration_seconds: u64,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Also measure a hydrant whose stream feeds this many aggregates
        /// (0-3), and the latency from acknowledgement to the live feed.
        #[arg(long, default_value_t = 0)]
        aggregates: usize,
        /// Records per second to offer in total; 0 = as fast as acknowledged.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Also measure a hydrant whose stream converts the records to Parquet.
        #[arg(long)]
        parquet: bool,
        /// The bench stream's BufferingHints.SizeInMBs (1-128).
        #[arg(long, default_value_t = 64)]
        size_mb: u32,
        /// The bench stream's BufferingHints.IntervalInSeconds (0-900).
        #[arg(long, default_value_t = 1)]
        interval_seconds: u32,
        /// After the runs, time this many records from acknowledgement to
        /// visibility in SQL (a stream with a 1-second interval).
        #[arg(long, default_value_t = 0)]
        freshness: usize,
        /// Instead: measure loading into this PostgreSQL
        /// (jdbc:postgresql://host:port/db; PGUSER, PGPASSWORD) beside psql
        /// \copy and row-by-row INSERTs, then the load lag at --rate
        /// (default here 50000) for --duration-seconds.
        #[arg(long)]
        warehouse: Option<String>,
        /// Instead: measure change data capture from a MariaDB the bench
        /// starts itself (mariadb-install-db and mariadbd must be
        /// installed): the snapshot of --rows rows beside a plain SELECT *,
        /// then the lag from source commit to a mirror table in this
        /// PostgreSQL (jdbc:postgresql://host:port/db) at --rate (default
        /// here 5000) changes/s for --duration-seconds.
        #[arg(long)]
        cdc: Option<String>,
        /// With --cdc: the source server the bench starts (postgresql:
        /// initdb and postgres must be installed; wal_level=logical).
        #[arg(long, value_enum, default_value_t = CdcSource::Mariadb)]
        cdc_source: CdcSource,
        /// Instead: measure JSON → Parquet conversion of --rows records
        /// on one core, beside DuckDB and pyarrow on the same file.
        #[arg(long)]
        convert: bool,
        /// Instead: measure `SELECT count(*), sum(v)` through POST /-/query
        /// over --files small JSON-lines objects (--rows in all, default
        /// here 60000), cold, repeated and after one more object, beside
        /// DuckDB on the same files.
        #[arg(long)]
        query: bool,
        /// With --query: how many objects.
        #[arg(long, default_value_t = 300)]
        files: usize,
        /// With --convert and --query: the Python that has the peers
        /// (default: .venv/bin/python when present, else python3).
        #[arg(long)]
        python: Option<PathBuf>,
        /// Rows per run for --warehouse, --cdc and --convert (default
        /// 500000), and in all for --query.
        #[arg(long)]
        rows: Option<usize>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CdcSource {
    Mariadb,
    Postgresql,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum QueryFormat {
    Table,
    Json,
    Csv,
}

async fn query(sql: String, endpoint: String, format: QueryFormat) -> anyhow::Result<()> {
    let format = match format {
        QueryFormat::Table => "table",
        QueryFormat::Json => "json",
        QueryFormat::Csv => "csv",
    };
    let url = format!("{}/-/query?format={format}", endpoint.trim_end_matches('/'));
    let mut headers = vec![("content-type".to_string(), "text/plain".to_string())];
    // A hydrant with access keys takes queries signed by one (service `hydrant`).
    if let Some(c) = hydrant::client::Credentials::from_env() {
        headers = c.sign(
            "hydrant",
            &axum::http::Method::POST,
            &url,
            headers,
            sql.as_bytes(),
        );
    }
    let mut request = reqwest::Client::new().post(&url);
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let resp = request
        .body(sql)
        .send()
        .await
        .with_context(|| format!("is hydrant running at {endpoint}?"))?;
    let ok = resp.status().is_success();
    let body = resp.text().await?;
    if !ok {
        let msg = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or(body);
        anyhow::bail!("{msg}");
    }
    print!("{body}");
    if format == "json" {
        println!();
    }
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: starting the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        // Exit at once: tearing the runtime down under threads that may
        // still use it (a stream's delivery, when start-up failed half way)
        // would bury the real error under theirs.
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            listen,
            data_dir,
            config,
            allow_unauthenticated_network,
        } => serve(listen, data_dir, config, allow_unauthenticated_network).await,
        Command::Query {
            sql,
            endpoint,
            format,
        } => query(sql, endpoint, format).await,
        Command::Demo {
            listen,
            data_dir,
            rate,
            count,
        } => demo(listen, data_dir, rate, count).await,
        Command::Generate {
            endpoint,
            stream,
            rate,
            count,
            batch,
            scenario,
        } => hydrant::generate::run(GenerateOptions {
            scenario,
            endpoint,
            stream,
            rate,
            count,
            batch,
            progress: true,
        })
        .await
        .map(|_| ()),
        Command::Backfill {
            stream,
            manifests,
            data_dir,
            config,
        } => {
            let config = match config {
                Some(path) => Config::load(&path)?,
                None => Config::default(),
            };
            let data_dir = data_dir
                .or(config.data_dir.clone())
                .unwrap_or("./data".into());
            hydrant::destination::warehouse::task::backfill(&data_dir, &config, &stream, manifests)
                .await
        }
        Command::Bench {
            endpoint,
            stream,
            concurrency,
            batch,
            record_size,
            duration_seconds,
            runs,
            aggregates,
            rate,
            parquet,
            size_mb,
            interval_seconds,
            freshness,
            warehouse,
            cdc,
            cdc_source,
            convert,
            query,
            files,
            python,
            rows,
        } => {
            if query {
                return hydrant::bench::query::run(hydrant::bench::query::Options {
                    files,
                    rows: rows.unwrap_or(60_000),
                    runs,
                    python,
                })
                .await;
            }
            let rows = rows.unwrap_or(500_000);
            if convert {
                return hydrant::bench::convert::run(hydrant::bench::convert::Options {
                    rows,
                    runs,
                    python,
                })
                .await;
            }
            if let Some(url) = cdc {
                return hydrant::bench::cdc::run(hydrant::bench::cdc::Options {
                    url,
                    source: match cdc_source {
                        CdcSource::Mariadb => hydrant::bench::cdc::SourceKind::MariaDb,
                        CdcSource::Postgresql => hydrant::bench::cdc::SourceKind::Postgres,
                    },
                    runs,
                    rows,
                    rate: if rate == 0 { 5_000 } else { rate },
                    duration: Duration::from_secs(duration_seconds),
                })
                .await;
            }
            if let Some(url) = warehouse {
                return hydrant::bench::warehouse::run(hydrant::bench::warehouse::Options {
                    url,
                    runs,
                    rows,
                    rate: if rate == 0 { 50_000 } else { rate },
                    duration: Duration::from_secs(duration_seconds),
                })
                .await;
            }
            hydrant::bench::run(hydrant::bench::BenchOptions {
                endpoint,
                stream,
                concurrency,
                batch,
                record_size,
                duration: Duration::from_secs(duration_seconds),
                runs,
                aggregates,
                rate,
                parquet,
                size_mb,
                interval_seconds,
                freshness,
            })
            .await
        }
    }
}

async fn serve(
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    allow_unauthenticated_network: bool,
) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    let listen = listen
        .or(config.listen.clone())
        .unwrap_or(DEFAULT_LISTEN.into());
    let data_dir = data_dir
        .or(config.data_dir.clone())
        .unwrap_or("./data".into());
    let running = server::start(
        ServerOptions {
            listen,
            data_dir: data_dir.clone(),
            config,
            allow_unauthenticated_network,
        },
        server::signal(),
    )
    .await?;
    tracing::info!(
        addr = %running.addr,
        data_dir = %data_dir.display(),
        streams = running.app.registry.list().len(),
        "hydrant is ready: Firehose API at http://{}/",
        running.addr
    );
    running.finish().await
}

/// The demo's config: the tutorial's stream (the CloudFormation one, with a
/// 10-second interval so files appear while you watch, and a newline after
/// each record so the files are JSON lines), a revenue stream, and the
/// aggregates the dashboard charts. Closed revenue windows land in the lake
/// through a stream of their own.
const DEMO_CONFIG: &str = r#"
delivery_streams:
  - DeliveryStreamName: my-event-staging
    DeliveryStreamType: DirectPut
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/firehose-demo
      BucketARN: arn:aws:s3:::data.staging.aws
      Prefix: events/my-event-staging/
      BufferingHints: { IntervalInSeconds: 10, SizeInMBs: 30 }
      CompressionFormat: UNCOMPRESSED
      ProcessingConfiguration: { Enabled: true, Processors: [ { Type: AppendDelimiterToRecord } ] }
  - DeliveryStreamName: revenue
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/firehose-demo
      BucketARN: arn:aws:s3:::data.staging.aws
      Prefix: events/revenue/
      BufferingHints: { IntervalInSeconds: 10, SizeInMBs: 30 }
      ProcessingConfiguration: { Enabled: true, Processors: [ { Type: AppendDelimiterToRecord } ] }
  - DeliveryStreamName: revenue-by-minute
    ExtendedS3DestinationConfiguration:
      RoleARN: arn:aws:iam::000000000000:role/firehose-demo
      BucketARN: arn:aws:s3:::data.staging.aws
      Prefix: aggregates/revenue-by-minute/
      BufferingHints: { IntervalInSeconds: 60, SizeInMBs: 5 }
      ProcessingConfiguration: { Enabled: true, Processors: [ { Type: AppendDelimiterToRecord } ] }
aggregates:
  my-event-staging:
    - name: events_per_minute
      window: { type: tumbling, size_seconds: 60 }
      time: { field: event_time, format: iso8601 }
      allowed_lateness_seconds: 5
      group_by: [event_name]
      measures: [ { op: count }, { op: approx_distinct, field: user } ]
  revenue:
    - name: revenue_per_minute
      window: { type: tumbling, size_seconds: 60 }
      time: { field: event_time, format: iso8601 }
      allowed_lateness_seconds: 5
      group_by: [source]
      measures: [ { op: sum, field: amount, name: revenue }, { op: count, name: orders }, { op: avg, field: amount, name: avg_order } ]
      output_stream: revenue-by-minute
"#;

async fn demo(listen: String, data_dir: PathBuf, rate: u64, count: u64) -> anyhow::Result<()> {
    let config = Config::parse(std::path::Path::new("<demo>"), DEMO_CONFIG)?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = server::start(
        ServerOptions {
            listen,
            data_dir: data_dir.clone(),
            config,
            allow_unauthenticated_network: false,
        },
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let endpoint = format!("http://{}", running.addr);
    let lake = running.app.registry.lake().join("data.staging.aws");
    println!("hydrant demo");
    println!("  dashboard      {endpoint}/-/");
    println!("  Firehose API   {endpoint}/   (boto3: endpoint_url=\"{endpoint}\")");
    println!(
        "  streams        my-event-staging (chat events), revenue (purchases); objects every 10 s"
    );
    println!(
        "  lake           {}/events/my-event-staging/YYYY/MM/DD/HH/",
        lake.display()
    );
    println!("  metrics        {endpoint}/-/metrics");
    println!("  sending {rate} chat events/s and {} purchases/s; Ctrl-C stops, delivers what is buffered, and exits", (rate / 10).max(1));
    let producer = |stream: &str, scenario, rate: u64, count: u64, progress| {
        hydrant::generate::run(GenerateOptions {
            scenario,
            endpoint: endpoint.clone(),
            stream: stream.into(),
            rate,
            count,
            batch: 50.min(rate.max(1) as usize),
            progress,
        })
    };
    let chat = producer("my-event-staging", Scenario::Chat, rate, count, true);
    let revenue = producer(
        "revenue",
        Scenario::Revenue,
        (rate / 10).max(1),
        count / 10,
        false,
    );
    tokio::select! {
        r = async { tokio::try_join!(chat, revenue) } => { r.context("the demo producers")?; }
        _ = server::signal() => {}
    }
    eprintln!();
    let _ = stop_tx.send(());
    running.finish().await?;
    let events = lake.join("events/my-event-staging");
    let mut files = Vec::new();
    collect_files(&events, &mut files);
    files.sort();
    println!("{} objects in {}", files.len(), events.display());
    for f in files.iter().rev().take(5).rev() {
        println!("  {}", f.display());
    }
    Ok(())
}

fn collect_files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                collect_files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}
