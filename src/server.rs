//! Running the server: open the streams, serve the port, and on SIGTERM or
//! Ctrl-C stop taking requests, deliver every buffer, and exit cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, App};
use crate::config::Config;
use crate::stream::Registry;

pub struct ServerOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    pub config: Config,
}

/// A started server: its address, and a way to wait for it to finish.
pub struct Running {
    pub addr: SocketAddr,
    pub app: Arc<App>,
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Opens the data directory, binds, and serves until `shutdown` resolves.
pub async fn start(
    opts: ServerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let addr: SocketAddr = opts.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not an address like 127.0.0.1:4577",
            opts.listen
        )
    })?;
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding {addr} (is another hydrant running? choose another with --listen)")
    })?;
    let addr = listener.local_addr()?;
    let registry = Registry::open(
        &opts.data_dir,
        opts.config.log.options(),
        opts.config.delivery.max_active_partitions,
        &opts.config.buckets,
        opts.config.glue_tables,
        opts.config.delivery_streams,
    )
    .await?;
    let analytics = crate::analytics::live::start(&registry, opts.config.aggregates)?;
    let app = Arc::new(App {
        registry,
        analytics,
        ready: true.into(),
    });
    let router = api::router(app.clone());
    let app2 = app.clone();
    let done = tokio::spawn(async move {
        let stopping = async move {
            shutdown.await;
            app2.ready.store(false, Ordering::Relaxed);
            tracing::info!("shutting down: no new requests; delivering every buffer");
        };
        axum::serve(listener, router)
            .with_graceful_shutdown(stopping)
            .await?;
        Ok(())
    });
    Ok(Running { addr, app, done })
}

impl Running {
    /// Waits for the HTTP side to stop, then delivers everything in the logs.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.done.await??;
        self.app.registry.shutdown().await?;
        tracing::info!("every acknowledged record is in the lake; bye");
        Ok(())
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
