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

pub use error::ApiError;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::stream::Registry;

/// The largest request body taken: PutRecordBatch's 4 MiB of data, base64
/// encoded (4/3) and wrapped in JSON, fits with room to spare.
pub const MAX_BODY_BYTES: usize = 8 << 20;

pub struct App {
    pub registry: Registry,
    pub ready: AtomicBool,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", post(aws))
        .route("/-/ready", get(ready))
        .route("/-/healthy", get(|| async { "ok\n" }))
        .route("/-/streams", get(streams))
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
async fn streams(State(app): State<Arc<App>>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let now = chrono::Utc::now().timestamp_millis();
    let list: Vec<_> = app
        .registry
        .list()
        .iter()
        .map(|s| {
            let oldest = s.delivery.oldest_pending_ms.load(Relaxed);
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
                "lag_records": s.lag_records(),
                "lag_seconds": if oldest > 0 && s.lag_records() > 0 { (now - oldest) as f64 / 1000.0 } else { 0.0 },
                "log_bytes": s.log.bytes_on_disk(),
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "streams": list })).into_response()
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
        "Firehose_20150804" => firehose::dispatch(app, op, &body).await,
        _ => Err(ApiError::unknown_operation(format!(
            "hydrant does not serve {service}; it serves Firehose_20150804"
        ))),
    }
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
