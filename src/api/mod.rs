//! The front door: one HTTP port for the AWS-compatible APIs and hydrant's own.
//!
//! AWS JSON 1.1 requests are `POST /` with `X-Amz-Target: <Service>.<Op>`
//! and `Content-Type: application/x-amz-json-1.1`; the body is read here
//! (bounded), routed by target, and every failure leaves as an AWS-shaped
//! error from [`error`]. hydrant's own endpoints live under `/-/`, a path no
//! S3 bucket can have. Requests are not authenticated: hydrant listens on
//! loopback unless told otherwise, and SDKs may sign with any credentials.

mod error;
mod firehose;
mod s3;

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
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", post(aws))
        .route("/-/ready", get(ready))
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/-/streams", get(streams))
        .route("/-/metrics", get(metrics))
        .route("/-/api/aggregates", get(aggregates))
        .route("/-/api/live", get(live))
        .route("/-/query", post(query))
        .route("/-/", get(dashboard::index))
        .route("/-/assets/app.js", get(dashboard::app_js))
        .route("/-/assets/app.css", get(dashboard::app_css))
        .merge(s3::router())
        .fallback(|| async {
            ApiError::unknown_operation("no such endpoint: AWS APIs are POST / with X-Amz-Target; hydrant's own are under /-/")
        })
        .with_state(app)
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

/// A summary of every stream, for people and dashboards.
fn streams_json(app: &App) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let now = chrono::Utc::now().timestamp_millis();
    let list: Vec<_> = app
        .registry
        .list()
        .iter()
        .map(|s| {
            serde_json::json!({
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
            })
        })
        .collect();
    serde_json::json!({ "streams": list, "time_ms": now })
}

async fn streams(State(app): State<Arc<App>>) -> Response {
    axum::Json(streams_json(&app)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let body = crate::metrics::render(&app.registry.list(), &app.analytics.metrics());
    ([("content-type", "text/plain; version=0.0.4")], body).into_response()
}

#[derive(serde::Deserialize)]
struct QueryParams {
    format: Option<String>,
}

/// SQL over the lake. The body is the SQL text (or `{"sql": "..."}`);
/// `?format=json` (default), `csv` or `table`.
async fn query(
    State(app): State<Arc<App>>,
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
    let tables = crate::query::lake_tables(&app.registry);
    let lake = match crate::query::Lake::new(tables).await {
        Ok(l) => l,
        Err(e) => return fail(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    match lake.sql(&sql).await {
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

async fn aggregates(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.analytics.snapshot()).into_response()
}

/// Server-Sent Events: `stats` once a second (and at once on connect),
/// `windows` whenever an aggregate's windows change or close.
async fn live(State(app): State<Arc<App>>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let rx = app.analytics.updates.subscribe();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(
        (app, rx, tick),
        |(app, mut rx, mut tick)| async move {
            let event = tokio::select! {
                _ = tick.tick() => Event::default().event("stats").data(streams_json(&app).to_string()),
                msg = rx.recv() => match msg {
                    Ok(doc) => Event::default().event("windows").data(&*doc),
                    // A slow reader missed updates: tell it to refetch the snapshot.
                    Err(RecvError::Lagged(n)) => Event::default().event("lagged").data(n.to_string()),
                    Err(RecvError::Closed) => return None,
                },
            };
            Some((Ok::<_, std::convert::Infallible>(event), (app, rx, tick)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn aws(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut response = match handle(&app, &headers, body).await {
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

async fn handle(app: &App, headers: &HeaderMap, body: Body) -> Result<Vec<u8>, ApiError> {
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
    let body = read_body(body).await?;
    match service {
        "Firehose_20150804" => firehose::dispatch(app, op, &body, region(headers)).await,
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

async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            ApiError::invalid_argument(format!(
                "request body is larger than {MAX_BODY_BYTES} bytes or was cut off ({e}); \
             PutRecordBatch takes at most 4 MiB of record data"
            ))
        })
}
