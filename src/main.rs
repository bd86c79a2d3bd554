//! The `hydrant` command.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use hydrant::config::{Config, DEFAULT_LISTEN};
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
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Serve {
                listen,
                data_dir,
                config,
            } => serve(listen, data_dir, config).await,
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
            } => hydrant::generate::run(hydrant::generate::GenerateOptions {
                endpoint,
                stream,
                rate,
                count,
                batch,
                progress: true,
            })
            .await
            .map(|_| ()),
            Command::Bench {
                endpoint,
                stream,
                concurrency,
                batch,
                record_size,
                duration_seconds,
                runs,
            } => {
                hydrant::bench::run(hydrant::bench::BenchOptions {
                    endpoint,
                    stream,
                    concurrency,
                    batch,
                    record_size,
                    duration: Duration::from_secs(duration_seconds),
                    runs,
                })
                .await
            }
        }
    })
}

async fn serve(
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
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

/// The tutorial's stream as the demo runs it: the CloudFormation stream,
/// with a 10-second interval so files appear while you watch, and a newline
/// after each record so the files are JSON lines.
fn demo_stream() -> serde_json::Value {
    serde_json::json!({
        "DeliveryStreamName": "my-event-staging",
        "DeliveryStreamType": "DirectPut",
        "ExtendedS3DestinationConfiguration": {
            "RoleARN": "arn:aws:iam::000000000000:role/firehose-demo",
            "BucketARN": "arn:aws:s3:::data.staging.aws",
            "Prefix": "events/my-event-staging/",
            "BufferingHints": { "IntervalInSeconds": 10, "SizeInMBs": 30 },
            "CompressionFormat": "UNCOMPRESSED",
            "ProcessingConfiguration": { "Enabled": true, "Processors": [{ "Type": "AppendDelimiterToRecord" }] }
        }
    })
}

async fn demo(listen: String, data_dir: PathBuf, rate: u64, count: u64) -> anyhow::Result<()> {
    let config = Config {
        delivery_streams: vec![demo_stream()],
        ..Config::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = server::start(
        ServerOptions {
            listen,
            data_dir: data_dir.clone(),
            config,
        },
        async {
            let _ = stop_rx.await;
        },
    )
    .await?;
    let endpoint = format!("http://{}", running.addr);
    let lake = running
        .app
        .registry
        .lake()
        .join("data.staging.aws/events/my-event-staging");
    println!("hydrant demo");
    println!("  Firehose API   {endpoint}/   (boto3: endpoint_url=\"{endpoint}\")");
    println!("  stream         my-event-staging (objects every 10 s or 30 MB)");
    println!("  lake           {}/YYYY/MM/DD/HH/", lake.display());
    println!("  stream status  {endpoint}/-/streams");
    println!("  sending {rate} events/s; Ctrl-C stops, delivers what is buffered, and exits");
    let producer = hydrant::generate::run(hydrant::generate::GenerateOptions {
        endpoint,
        stream: "my-event-staging".into(),
        rate,
        count,
        batch: 50.min(rate.max(1) as usize),
        progress: true,
    });
    tokio::select! {
        r = producer => { r.context("the demo producer")?; }
        _ = server::signal() => {}
    }
    eprintln!();
    let _ = stop_tx.send(());
    running.finish().await?;
    let mut files = Vec::new();
    collect_files(&lake, &mut files);
    files.sort();
    println!("{} objects in {}", files.len(), lake.display());
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
