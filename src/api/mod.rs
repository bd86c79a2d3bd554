//! The front door: one HTTP port for the AWS-compatible APIs and hydrant's own.
//!
//! AWS JSON 1.1 requests are `POST /` with `X-Amz-Target: <Service>.<Op>`
//! and `Content-Type: application/x-amz-json-1.1`; the body is read here
//! (bounded), routed by target, and every failure leaves as an AWS-shaped
//! error from [`error`]. hydrant's own endpoints live under `/-/`, a path no
//! S3 bucket can have. With access keys in the config, every request proves
//! one (see [`auth`]); without, hydrant serves loopback only unless told
//! otherwise, and SDKs may sign with any credentials.

pub mod auth;
mod error;
mod firehose;
mod s3;
pub mod wire;

pub use error::ApiError;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::analytics::live::Analytics;
use crate::dashboard;
use crate::stream::Registry;

/// The largest request body taken: PutRecordBatch's 4 MiB of data, base64
/// encoded (4/3) and wrapped in JSON, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 8 << 20;

pub struct App {
    pub registry: Registry,
    pub analytics: Arc<Analytics>,
    pub ready: AtomicBool,
    pub limits: Limits,
    pub queries: crate::query::Limits,
    pub auth: auth::Auth,
}

/// What request bodies may hold at once, across all connections.
pub struct Limits {
    /// One permit per KiB of body being read.
    body_budget: Arc<tokio::sync::Semaphore>,
    body_budget_mb: usize,
}

impl Limits {
    pub fn new(http: &crate::config::HttpConfig) -> Limits {
        Limits {
            body_budget: Arc::new(tokio::sync::Semaphore::new(http.max_buffered_body_mb << 10)),
            body_budget_mb: http.max_buffered_body_mb,
        }
    }
}

pub fn router(app: Arc<App>) -> Router {
    // hydrant's own API: a login session or a SigV4 signature, when keys are set.
    let own = Router::new()
        .route("/-/streams", get(streams))
        .route("/-/api/aggregates", get(aggregates))
        .route("/-/api/live", get(live))
        .route("/-/query", post(query))
        .route("/-/streams/{name}/snapshot", post(snapshot))
        .route("/-/logout", post(logout))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), own_auth));
    Router::new()
        .route("/", post(aws))
        .route("/-/ready", get(ready))
        .route("/-/healthy", get(healthy))
        .route("/-/metrics", get(metrics))
        .route("/-/login", post(login))
        .route("/-/", get(index))
        .route("/-/assets/app.js", get(dashboard::app_js))
        .route("/-/assets/app.css", get(dashboard::app_css))
        .merge(own)
        .merge(s3::router(app.clone()))
        .fallback(|| async {
            ApiError::unknown_operation("no such endpoint: AWS APIs are POST / with X-Amz-Target; hydrant's own are under /-/")
        })
        .with_state(app)
}

/// Every stream whose delivery is in trouble, one line each: stopped (it
/// will not deliver until fixed and restarted) or retrying a failing step.
fn problems(app: &App) -> (bool, String) {
    let mut stopped = false;
    let mut text = String::new();
    for s in app.registry.list() {
        if let Some(p) = s.delivery.problem() {
            stopped |= p.stopped;
            let state = if p.stopped {
                "delivery stopped"
            } else {
                "delivery retrying"
            };
            text += &format!("stream {}: {state}: {}\n", s.spec.name, p.message);
        }
        // A source that stopped reading is a stopped stream: nothing new
        // comes until someone acts. One that retries is named.
        if let Some(src) = &s.source {
            if let Some(f) = src.failed.lock().unwrap().as_ref() {
                stopped = true;
                text += &format!("stream {}: change capture stopped: {f}\n", s.spec.name);
            } else if let Some((m, _)) = src.last_error.lock().unwrap().as_ref() {
                text += &format!("stream {}: change capture retrying: {m}\n", s.spec.name);
            }
        }
        // The warehouse retries, or moves on past an object: named, never fatal.
        if let Some((w, _)) = &s.warehouse {
            if let Some((m, _)) = w.last_error.lock().unwrap().as_ref() {
                text += &format!("stream {}: loading into the warehouse: {m}\n", s.spec.name);
            }
        }
    }
    (stopped, text)
}

/// Ready while hydrant takes requests: a stream that cannot deliver still
/// takes puts (into its log, up to its bound), so it is named, not fatal.
async fn ready(State(app): State<Arc<App>>) -> Response {
    let (_, text) = problems(&app);
    if app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, format!("ready\n{text}")).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready\n{text}"),
        )
            .into_response()
    }
}

/// Healthy unless some stream's delivery has stopped: then 503, naming each
/// broken stream and why. A step being retried is named but still healthy.
async fn healthy(State(app): State<Arc<App>>) -> Response {
    match problems(&app) {
        (true, text) => (StatusCode::SERVICE_UNAVAILABLE, text).into_response(),
        (false, text) => (StatusCode::OK, format!("ok\n{text}")).into_response(),
    }
}

/// A summary of every stream the caller may see, for people and dashboards.
fn streams_json(app: &App, who: &Who) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let now = chrono::Utc::now().timestamp_millis();
    let list: Vec<_> = app
        .registry
        .list()
        .iter()
        .filter(|s| who.may_stream(&s.spec.name))
        .map(|s| {
            let mut j = serde_json::json!({
                "name": s.spec.name,
                "bucket": s.spec.bucket,
                "records_in": s.intake.records.load(Relaxed),
                "bytes_in": s.intake.bytes.load(Relaxed),
                "records_rejected": s.intake.rejected.load(Relaxed),
                "objects_delivered": s.delivery.objects.load(Relaxed),
                "records_delivered": s.delivery.records.load(Relaxed),
                "bytes_delivered": s.delivery.bytes.load(Relaxed),
                "delivery_failures": s.delivery.failures.load(Relaxed),
                // Records sent to the error output, by error code.
                "failed_records": *s.delivery.errors.lock().unwrap(),
                "lag_records": s.lag_records(),
                "lag_seconds": s.lag_seconds(now),
                "log_bytes": s.log.bytes_on_disk(),
                "log_records_lost": s.log.losses().iter().map(|l| l.records).sum::<u64>(),
                "log_losses": s.log.losses(),
                "delivery_error": s.delivery.problem().map(|p| serde_json::json!({
                    "stopped": p.stopped,
                    "message": p.message,
                    "since_ms": p.since_ms,
                })),
            });
            if let (Some((w, queue)), Some((lag_records, lag_seconds))) =
                (&s.warehouse, s.load_lag(now))
            {
                let (queued, _, _) = queue.backlog();
                let last_error = w.last_error.lock().unwrap().clone();
                j["warehouse"] = serde_json::json!({
                    "table": match (&s.spec.warehouse, &s.spec.source) {
                        // A mirror: a table per source table, in this schema.
                        (Some(x), Some(_)) => format!("{}.*", x.table.table),
                        (Some(x), None) => format!("{}.{}", x.table.schema, x.table.table),
                        (None, _) => String::new(),
                    },
                    "objects_staged": w.objects_staged.load(Relaxed),
                    "objects_queued": queued,
                    "objects_loaded": w.objects_loaded.load(Relaxed),
                    "rows_loaded": w.rows_loaded.load(Relaxed),
                    "rows_rejected": *w.rejected.lock().unwrap(),
                    "manifests_failed": w.manifests_failed.load(Relaxed),
                    "lag_records": lag_records,
                    "lag_seconds": lag_seconds,
                    "last_error": last_error.map(|(m, at)| serde_json::json!({ "message": m, "at_ms": at })),
                });
            }
            if let Some(src) = &s.source {
                let tables: Vec<_> = src
                    .tables
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(name, t)| {
                        serde_json::json!({
                            "table": name,
                            "snapshot": t.snapshot.as_str(),
                            "snapshot_rows": t.snapshot_rows,
                            "estimated_rows": t.estimated_rows,
                            "changes": t.changes,
                            "last_commit_ms": t.last_commit_ms,
                            "lag_seconds": t.behind_ms as f64 / 1000.0,
                        })
                    })
                    .collect();
                let last_error = src.last_error.lock().unwrap().clone();
                j["source"] = serde_json::json!({
                    "position": *src.position.lock().unwrap(),
                    "changes": src.changes.load(Relaxed),
                    "snapshot_rows": src.snapshot_rows.load(Relaxed),
                    "lag_seconds": src.behind_ms.load(Relaxed) as f64 / 1000.0,
                    "reconnects": src.reconnects.load(Relaxed),
                    "failed": *src.failed.lock().unwrap(),
                    "last_error": last_error.map(|(m, at)| serde_json::json!({ "message": m, "at_ms": at })),
                    "tables": tables,
                    // PostgreSQL: what hydrant created on the source.
                    "slot": *src.slot.lock().unwrap(),
                    "publication": *src.slot.lock().unwrap(),
                });
            }
            j
        })
        .collect();
    serde_json::json!({ "streams": list, "time_ms": now })
}

async fn streams(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    axum::Json(streams_json(&app, &who)).into_response()
}

/// `POST /-/streams/NAME/snapshot`: snapshot a DatabaseAsSource stream's
/// tables again (after a purged binlog, or to rebuild what reads it).
async fn snapshot(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Response {
    let Some(stream) = app.registry.get(&name).filter(|_| who.may_stream(&name)) else {
        return own_error(StatusCode::NOT_FOUND, format!("no delivery stream {name}"));
    };
    match stream.resnapshot().await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({ "stream": name, "snapshot": "requested" })),
        )
            .into_response(),
        Err(m) => own_error(StatusCode::CONFLICT, m),
    }
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.auth.enabled() && !app.auth.metrics(&headers) {
        let why = if app.auth.has_metrics_token() {
            "/-/metrics needs Authorization: Bearer <auth.metrics_token>"
        } else {
            "/-/metrics is closed: hydrant has access keys but no auth.metrics_token to give Prometheus"
        };
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", "Bearer realm=\"hydrant\"")],
            format!("{why}\n"),
        )
            .into_response();
    }
    let body = crate::metrics::render(&app.registry.list(), &app.analytics.metrics());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

/// Who is calling hydrant's own API: nobody in particular when hydrant has
/// no keys, else the key behind the session or the signature.
#[derive(Clone)]
pub struct Who(Option<auth::Key>);

impl Who {
    fn may_stream(&self, stream: &str) -> bool {
        self.0.as_ref().is_none_or(|k| k.may_stream(stream))
    }
}

fn own_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// The gate of hydrant's own API (see `auth`): a session cookie from a
/// page of hydrant's own, or a SigV4 signature for service `hydrant`.
async fn own_auth(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !app.auth.enabled() {
        let mut req = req;
        req.extensions_mut().insert(Who(None));
        return next.run(req).await;
    }
    let action = match req.uri().path() {
        "/-/query" => "hydrant:Query",
        p if p.ends_with("/snapshot") => "hydrant:Snapshot",
        _ => "hydrant:Read",
    };
    let (mut req, key) = match app.auth.session(req.headers()) {
        Some(key) => {
            if req.method() != axum::http::Method::GET && !same_origin(req.headers()) {
                return own_error(
                    StatusCode::FORBIDDEN,
                    "cross-site request refused: hydrant's API takes changes only from its own pages".into(),
                );
            }
            let key = key.clone();
            (req, key)
        }
        None if req.headers().contains_key("authorization") => {
            // The signature covers the body: read it, check, hand it on.
            let (parts, body) = req.into_parts();
            let bytes = match axum::body::to_bytes(body, 2 << 20).await {
                Ok(b) => b,
                Err(e) => {
                    return own_error(StatusCode::BAD_REQUEST, format!("reading the request: {e}"))
                }
            };
            let verified =
                app.auth
                    .verify(&parts.method, &parts.uri, &parts.headers, Some(&bytes), "hydrant");
            match verified {
                Ok(key) => (
                    axum::extract::Request::from_parts(parts, Body::from(bytes)),
                    key.clone(),
                ),
                Err(e) => return own_error(StatusCode::UNAUTHORIZED, e.to_string()),
            }
        }
        None => {
            return own_error(
                StatusCode::UNAUTHORIZED,
                "log in first (POST /-/login with an access key), or sign the request with SigV4 for service hydrant".into(),
            )
        }
    };
    if !key.may(action) {
        return own_error(
            StatusCode::FORBIDDEN,
            format!("access key {} may not {action}", key.id),
        );
    }
    req.extensions_mut().insert(Who(Some(key)));
    next.run(req).await
}

/// A browser sends `Origin` with every cross-site request that changes
/// something; when present it must be hydrant's own address.
fn same_origin(headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .is_some_and(|v| v == "cross-site")
    {
        return false;
    }
    let Some(origin) = headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bare = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && bare == host
}

/// The dashboard, or its login page while nobody is logged in.
async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.auth.enabled() && app.auth.session(&headers).is_none() {
        return dashboard::login().await;
    }
    dashboard::index().await
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginIn {
    access_key_id: String,
    secret_access_key: String,
}

/// Logs in with an access key: sets the session cookie.
async fn login(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    if !app.auth.enabled() {
        return own_error(
            StatusCode::NOT_FOUND,
            "hydrant has no access keys; there is nothing to log in to".into(),
        );
    }
    if !same_origin(&headers) {
        return own_error(StatusCode::FORBIDDEN, "cross-site login refused".into());
    }
    let Ok(req) = serde_json::from_slice::<LoginIn>(&body) else {
        return own_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"access_key_id\": ..., \"secret_access_key\": ...}".into(),
        );
    };
    match app.auth.login(&req.access_key_id, &req.secret_access_key) {
        Some(token) => {
            let secure = if app.auth.secure_cookies {
                "; Secure"
            } else {
                ""
            };
            let cookie = format!(
                "{}={token}; Path=/-/; HttpOnly; SameSite=Strict; Max-Age=43200{secure}",
                auth::COOKIE
            );
            (
                StatusCode::OK,
                [("set-cookie", cookie)],
                axum::Json(serde_json::json!({ "access_key_id": req.access_key_id })),
            )
                .into_response()
        }
        None => own_error(
            StatusCode::UNAUTHORIZED,
            "unknown access key or wrong secret".into(),
        ),
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(token) = auth::cookie(&headers, auth::COOKIE) {
        app.auth.logout(token);
    }
    (
        StatusCode::OK,
        [(
            "set-cookie",
            format!(
                "{}=; Path=/-/; HttpOnly; SameSite=Strict; Max-Age=0",
                auth::COOKIE
            ),
        )],
        "logged out\n",
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct QueryParams {
    format: Option<String>,
}

/// SQL over the lake. The body is the SQL text (or `{"sql": "..."}`);
/// `?format=json` (default), `csv` or `table`.
async fn query(
    State(app): State<Arc<App>>,
    who: axum::Extension<Who>,
    axum::extract::Query(params): axum::extract::Query<QueryParams>,
    body: Bytes,
) -> Response {
    let text = String::from_utf8_lossy(&body);
    let sql = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.get("sql").and_then(|s| s.as_str()).is_some() => {
            v["sql"].as_str().unwrap().to_string()
        }
        _ => text.into_owned(),
    };
    let fail = |status: StatusCode, msg: String| {
        (status, axum::Json(serde_json::json!({ "error": msg }))).into_response()
    };
    let format = params.format.unwrap_or_else(|| "json".into());
    if !["json", "csv", "table"].contains(&format.as_str()) {
        return fail(
            StatusCode::BAD_REQUEST,
            format!("format {format:?} must be json, csv or table"),
        );
    }
    if sql.trim().is_empty() {
        return fail(
            StatusCode::BAD_REQUEST,
            "the body must be a SQL query".into(),
        );
    }
    let mut tables = crate::query::lake_tables(&app.registry);
    // A key sees the streams it may act on, and only those.
    tables.retain(|t| who.may_stream(&t.name));
    match app.queries.run(tables, &sql).await {
        Ok(batches) => match format.as_str() {
            "csv" => (
                [("content-type", "text/csv")],
                crate::query::to_csv(&batches),
            )
                .into_response(),
            "table" => (
                [("content-type", "text/plain; charset=utf-8")],
                crate::query::to_table(&batches) + "\n",
            )
                .into_response(),
            _ => axum::Json(crate::query::to_json(&batches)).into_response(),
        },
        Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn aggregates(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    axum::Json(app.analytics.snapshot(|s| who.may_stream(s))).into_response()
}

/// Server-Sent Events: `stats` once a second (and at once on connect),
/// `windows` whenever an aggregate's windows change or close.
async fn live(State(app): State<Arc<App>>, who: axum::Extension<Who>) -> Response {
    let who = who.0;
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = app.analytics.updates.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(
        (app, rx, tick, who),
        |(app, mut rx, mut tick, who)| async move {
            let event = loop {
                break tokio::select! {
                _ = tick.tick() => Event::default().event("stats").data(streams_json(&app, &who).to_string()),
                msg = rx.recv() => match msg {
                    Ok(u) if !who.may_stream(&u.stream) => continue,
                    Ok(u) => Event::default().event("windows").data(&u.json),
                    // A slow reader missed updates: tell it to refetch the snapshot.
                    Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                    Err(RecvError::Closed) => return None,
                },
                };
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (app, rx, tick, who),
            ))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn aws(
    State(app): State<Arc<App>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = match handle(&app, &uri, &headers, body).await {
        Ok(body) => (
            StatusCode::OK,
            [("content-type", "application/x-amz-json-1.1")],
            body,
        )
            .into_response(),
        Err(e) => {
            if e.status.is_server_error() {
                tracing::warn!(error = %e, "request failed");
            }
            e.into_response()
        }
    };
    if let Ok(v) = request_id.parse() {
        response.headers_mut().insert("x-amzn-requestid", v);
    }
    response
}

async fn handle(
    app: &App,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: Body,
) -> Result<Vec<u8>, ApiError> {
    if app.auth.enabled() && !headers.contains_key("authorization") {
        return Err(auth::Denied::Missing.into());
    }
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::unknown_operation("missing X-Amz-Target header"))?;
    let Some((service, op)) = target.split_once('.') else {
        return Err(ApiError::unknown_operation(format!(
            "X-Amz-Target {target:?} is not <Service>.<Operation>"
        )));
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/x-amz-json-1.1") {
        return Err(ApiError::serialization(format!(
            "Content-Type must be application/x-amz-json-1.1, not {content_type:?}"
        )));
    }
    let body = read_body(&app.limits, headers, body).await?;
    let key = match app.auth.enabled() {
        true => Some(app.auth.verify(
            &axum::http::Method::POST,
            uri,
            headers,
            Some(&body),
            "firehose",
        )?),
        false => None,
    };
    let caller = firehose::Caller {
        key,
        region: region(headers),
    };
    match service {
        "Firehose_20150804" => firehose::dispatch(app, &caller, op, &body).await,
        _ => Err(ApiError::unknown_operation(format!(
            "hydrant does not serve {service}; it serves Firehose_20150804"
        ))),
    }
}

/// The region the client signed for (SigV4's credential scope,
/// `Credential=KEY/DATE/REGION/SERVICE/aws4_request`), so ARNs name the region
/// the client thinks it is talking to. Unsigned requests get us-east-1.
fn region(headers: &HeaderMap) -> &str {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .unwrap_or("us-east-1")
}

/// Bodies up to this size are not counted against `http.max_buffered_body_mb`.
const SMALL_BODY_BYTES: usize = 64 << 10;

/// Reads a request body whole, within the limits: at most
/// [`MAX_BODY_BYTES`], and, for a body over [`SMALL_BODY_BYTES`], only
/// while its bytes fit the budget for bodies being read across all
/// connections (by Content-Length, or the largest body when it is chunked);
/// a request that does not fit is answered 503 without being read, which
/// SDKs retry.
async fn read_body(limits: &Limits, headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large(declared));
    }
    let bytes = declared.map_or(MAX_BODY_BYTES, |n| n as usize);
    // Small bodies (a PutRecord, a Describe) are bounded by the connection
    // cap alone, so large ones can never crowd them out.
    let kib = if bytes <= SMALL_BODY_BYTES {
        0
    } else {
        bytes.div_ceil(1024) as u32
    };
    let _reserved = limits.body_budget.try_acquire_many(kib).map_err(|_| {
        ApiError::unavailable(format!(
            "hydrant is reading as many request bodies as it may hold at once ({} MiB, \
             http.max_buffered_body_mb); retry",
            limits.body_budget_mb
        ))
    })?;
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            let e = e.into_inner();
            match e.downcast_ref::<crate::server::BodyTimeout>() {
                Some(t) => ApiError::request_timeout(t.to_string()),
                None => too_large(None).with_cause(&*e),
            }
        })
}

fn too_large(declared: Option<u64>) -> ApiError {
    let size = declared.map_or(String::new(), |n| format!(" ({n} bytes)"));
    ApiError::invalid_argument(format!(
        "request body{size} is larger than {MAX_BODY_BYTES} bytes or was cut off; \
         PutRecordBatch takes at most 4 MiB of record data"
    ))
}
