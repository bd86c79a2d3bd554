//! Running the server: open the streams, serve the port, and on SIGTERM or
//! Ctrl-C stop taking requests, deliver every buffer, and exit cleanly.
//!
//! The HTTP side is hyper's HTTP/1.1 connection driven by an accept loop of
//! our own, because what a client may hold is bounded here (see
//! [`HttpConfig`]): a connection past `max_connections` is answered 503 and
//! closed; request headers must arrive within `header_timeout_seconds` of
//! hydrant waiting for them (which also ends idle keep-alive connections);
//! a body must arrive within `body_timeout_seconds` of its headers
//! ([`TimedBody`]); and request bodies being read across all connections are
//! bounded in bytes by the front door (`api::read_body`). A client that
//! half-closes its socket after sending a request still gets the response.
//! With `tls:` in the config, connections are HTTPS (rustls).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes, HttpBody};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::api::{self, App};
use crate::config::{Config, HttpConfig};
use crate::stream::Registry;

pub struct ServerOptions {
    pub listen: String,
    pub data_dir: PathBuf,
    pub config: Config,
    /// Serve a non-loopback address although requests are not authenticated.
    pub allow_unauthenticated_network: bool,
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
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    let addr: SocketAddr = opts.listen.parse().with_context(|| {
        format!(
            "--listen {:?} is not an address like 127.0.0.1:4577",
            opts.listen
        )
    })?;
    // Errors in the config name its file (and their own key).
    let config_file = opts.config.file.clone();
    let in_file = |e: anyhow::Error| match &config_file {
        Some(f) => e.context(format!("config file {}", f.display())),
        None => e,
    };
    let auth = crate::api::auth::Auth::new(&opts.config.auth, opts.config.tls.is_some())
        .map_err(|e| in_file(anyhow::anyhow!("auth: {e}")))?;
    let tls = match &opts.config.tls {
        Some(t) => Some(tls_acceptor(t).map_err(|e| in_file(anyhow::anyhow!("tls: {e}")))?),
        None => None,
    };
    if !addr.ip().is_loopback() && !auth.enabled() {
        anyhow::ensure!(
            opts.allow_unauthenticated_network,
            "refusing to listen on {addr}: it is not a loopback address, and requests to hydrant \
             are not authenticated (the config has no auth.keys), so anyone who can reach it could \
             create and delete streams, put records and read the lake. Add access keys under \
             auth.keys, listen on 127.0.0.1, or pass --allow-unauthenticated-network to serve it \
             unauthenticated anyway"
        );
        tracing::warn!(%addr, "serving unauthenticated requests beyond loopback (--allow-unauthenticated-network): anyone who can reach this address can create and delete streams, put records and read the lake");
    }
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("creating data dir {}", opts.data_dir.display()))?;
    let listener = TcpListener::bind(addr).await.with_context(|| {
        format!("binding {addr} (is another hydrant running? choose another with --listen)")
    })?;
    let addr = listener.local_addr()?;
    let http = opts.config.http.clone();
    let registry = Registry::open(
        &opts.data_dir,
        opts.config.log.options(),
        opts.config.delivery.max_active_partitions,
        &opts.config.buckets,
        opts.config
            .declared()
            .map_err(|e| in_file(anyhow::anyhow!(e)))?,
        opts.config.delivery_streams,
    )
    .await?;
    let analytics = match crate::analytics::live::start(&registry, opts.config.aggregates) {
        Ok(a) => a,
        Err(e) => {
            // Leave nothing running behind the error.
            let _ = registry.shutdown().await;
            return Err(in_file(e));
        }
    };
    let app = Arc::new(App {
        registry,
        analytics,
        ready: true.into(),
        limits: api::Limits::new(&http),
        queries: crate::query::Limits::start(&opts.config.query)?,
        auth,
    });
    let router = api::router(app.clone());
    let app2 = app.clone();
    let done = tokio::spawn(async move {
        let stopping = async move {
            shutdown.await;
            app2.ready.store(false, Ordering::Relaxed);
            tracing::info!("shutting down: no new requests; delivering every buffer");
        };
        serve(listener, tls, router, &http, stopping).await;
        Ok(())
    });
    Ok(Running { addr, app, done })
}

/// How long shutdown waits for requests in flight (and open live feeds)
/// before it goes on to deliver every buffer regardless.
const DRAIN: Duration = Duration::from_secs(10);

async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    http: &HttpConfig,
    stopping: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(http.max_connections));
    let body_timeout = Duration::from_secs(http.body_timeout_seconds);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(http.header_timeout_seconds))
        .half_close(true)
        .keep_alive(true);
    tokio::pin!(stopping);
    loop {
        let socket = tokio::select! {
            _ = &mut stopping => break,
            accepted = listener.accept() => match accepted {
                Ok((socket, _)) => socket,
                Err(e) => {
                    // Out of file descriptors, most likely: back off rather
                    // than spin, and keep serving the connections we have.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(refuse(socket, http.max_connections));
            continue;
        };
        let _ = socket.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let req = req.map(|b| Body::new(TimedBody::new(b, body_timeout)));
                let mut router = router.clone();
                async move {
                    use tower_service::Service;
                    router.call(req).await
                }
            });
        match &tls {
            None => {
                let conn = graceful.watch(builder.serve_connection(TokioIo::new(socket), service));
                tokio::spawn(async move {
                    // Errors here are a client's doing (a reset, a timeout, garbage).
                    let _ = conn.await;
                    drop(slot);
                });
            }
            Some(acceptor) => {
                let (acceptor, builder, watcher) =
                    (acceptor.clone(), builder.clone(), graceful.watcher());
                let handshake = Duration::from_secs(http.header_timeout_seconds);
                tokio::spawn(async move {
                    // The handshake counts against the header timeout.
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake, acceptor.accept(socket)).await
                    {
                        let conn = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn).await;
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {DRAIN:?}; closing them and delivering every buffer"
        );
    }
}

/// Reads the certificate chain and key and makes the TLS side of the server.
pub fn tls_acceptor(c: &crate::config::TlsConfig) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&c.cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", c.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "cert_file {}: no certificate in it",
            c.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&c.key_file)
        .map_err(|e| format!("key_file {}: {e}", c.key_file.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| format!("cert_file and key_file do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Answers a connection past the cap with 503 and closes it.
async fn refuse(mut socket: TcpStream, max: usize) {
    let body = serde_json::json!({
        "__type": "ServiceUnavailableException",
        "message": format!("hydrant has {max} connections open, its limit (http.max_connections); retry"),
    })
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/x-amz-json-1.1\r\n\
         x-amzn-errortype: ServiceUnavailableException\r\nretry-after: 1\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        socket.write_all(response.as_bytes()).await?;
        socket.shutdown().await
    })
    .await;
}

/// A request body that fails once its deadline passes: a client that sends
/// headers and then stalls holds its connection for the body timeout, not
/// for ever.
pub struct TimedBody<B> {
    inner: B,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

/// The error a [`TimedBody`] fails with; the front door answers it with 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?} (http.body_timeout_seconds)")]
pub struct BodyTimeout(pub Duration);

impl<B> TimedBody<B> {
    fn new(inner: B, limit: Duration) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimeout(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
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
