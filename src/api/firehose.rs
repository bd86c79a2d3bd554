//! The Firehose API (`Firehose_20150804`): the operations hydrant serves,
//! their request validation and their response shapes.

use std::fmt::Write;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Key;
use super::{ApiError, App};
use crate::spec::check_stream_name;
use crate::stream::{Batch, PutError, Stream};

use super::wire::{frame, Field, PutRecordBatchIn, PutRecordIn, WireError};
pub use super::wire::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES};

impl From<WireError> for ApiError {
    fn from(e: WireError) -> ApiError {
        match e {
            WireError::Missing(m) => ApiError::validation(m),
            WireError::Base64(m) => ApiError::serialization(m),
        }
    }
}

/// Who is calling: the key that signed the request (None when hydrant has
/// no keys), and the region it signed for.
pub struct Caller<'a> {
    pub key: Option<&'a Key>,
    pub region: &'a str,
}

impl Caller<'_> {
    fn arn(&self, stream: &str) -> String {
        format!(
            "arn:aws:firehose:{}:000000000000:deliverystream/{stream}",
            self.region
        )
    }

    /// Refuses an action, or an action on a stream, the key may not take.
    fn allow(&self, op: &str, stream: Option<&str>) -> Result<(), ApiError> {
        let Some(key) = self.key else { return Ok(()) };
        let action = format!("firehose:{op}");
        let ok = key.may(&action) && stream.is_none_or(|s| key.may_stream(s));
        if ok {
            return Ok(());
        }
        let resource = match stream {
            Some(s) => self.arn(s),
            None => format!("arn:aws:firehose:{}:000000000000:*", self.region),
        };
        Err(ApiError::access_denied(format!(
            "User: arn:aws:iam::000000000000:user/{} is not authorized to perform: {action} on resource: {resource}",
            key.id
        )))
    }
}

pub async fn dispatch(
    app: &App,
    caller: &Caller<'_>,
    op: &str,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    const OPS: [&str; 6] = [
        "PutRecordBatch",
        "PutRecord",
        "CreateDeliveryStream",
        "DescribeDeliveryStream",
        "ListDeliveryStreams",
        "DeleteDeliveryStream",
    ];
    if OPS.contains(&op) {
        caller.allow(op, None)?;
    }
    let region = caller.region;
    match op {
        "PutRecordBatch" => put_record_batch(app, caller, body).await,
        "PutRecord" => put_record(app, caller, body).await,
        "CreateDeliveryStream" => create(app, caller, body, region).await,
        "DescribeDeliveryStream" => describe(app, caller, body, region),
        "ListDeliveryStreams" => list(app, body),
        "DeleteDeliveryStream" => delete(app, caller, body).await,
        "UpdateDestination"
        | "TagDeliveryStream"
        | "UntagDeliveryStream"
        | "ListTagsForDeliveryStream"
        | "StartDeliveryStreamEncryption"
        | "StopDeliveryStreamEncryption" => Err(ApiError::unknown_operation(format!(
            "hydrant does not implement Firehose {op} yet"
        ))),
        _ => Err(ApiError::unknown_operation(format!(
            "unknown Firehose operation {op:?}"
        ))),
    }
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::serialization(format!("could not read the request: {e}")))
}

fn parse_owned<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse(body)
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::validation(format!("{field} is required")))
}

fn stream(
    app: &App,
    caller: &Caller<'_>,
    op: &str,
    name: Option<String>,
) -> Result<std::sync::Arc<Stream>, ApiError> {
    let name = required(name, "DeliveryStreamName")?;
    check_stream_name(&name)?;
    caller.allow(op, Some(&name))?;
    app.registry.get(&name).ok_or_else(|| {
        ApiError::not_found(format!(
            "Delivery stream {name} under account 000000000000 not found."
        ))
    })
}

/// Only a DirectPut stream takes records from producers; a source's
/// stream takes them from its source alone.
fn direct_put(stream: &crate::stream::Stream) -> Result<(), ApiError> {
    match stream.spec.source {
        None => Ok(()),
        Some(_) => Err(ApiError::invalid_argument(format!(
            "Delivery stream {} is of type DatabaseAsSource: its records come from its database, \
             and it does not take PutRecord or PutRecordBatch",
            stream.spec.name
        ))),
    }
}

fn put_error(stream: &str, e: PutError) -> ApiError {
    match e {
        PutError::Closed => ApiError::unavailable(format!(
            "Delivery stream {stream} is closing (hydrant is shutting down or the stream is being deleted); retry"
        )),
        PutError::Full { used, max } => ApiError::unavailable(format!(
            "Delivery stream {stream}'s log holds {used} of its {max} bytes: delivery is behind; retry later"
        )),
        PutError::Unavailable(why) => {
            ApiError::unavailable(format!("Delivery stream {stream}: {why}; retry later"))
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn too_big(size: usize) -> String {
    format!("Record size is {size} bytes; a record may be at most {MAX_RECORD_BYTES} bytes (1,000 KiB) before base64 encoding")
}

async fn put_record(app: &App, caller: &Caller<'_>, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let req: PutRecordIn = parse(body)?;
    let stream = stream(app, caller, "PutRecord", req.name)?;
    direct_put(&stream)?;
    let record = required(req.record, "Record")?;
    let mut frames = Batch::default();
    let size = frame(&mut frames, now_ms(), Field::Record, &record)?;
    if size > MAX_RECORD_BYTES {
        stream
            .intake
            .rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Err(ApiError::invalid_argument(too_big(size)));
    }
    let first = stream
        .put(frames)
        .await
        .map_err(|e| put_error(&stream.spec.name, e))?;
    Ok(
        json!({ "RecordId": stream.record_id(first), "Encrypted": false })
            .to_string()
            .into_bytes(),
    )
}

/// One bad record fails alone: it gets an ErrorCode in its slot of the
/// response and the rest of the batch is taken. Only a request that breaks
/// the call's own limits (count, total size, syntax) fails as a whole.
async fn put_record_batch(
    app: &App,
    caller: &Caller<'_>,
    body: &[u8],
) -> Result<Vec<u8>, ApiError> {
    let req: PutRecordBatchIn = parse(body)?;
    let stream = stream(app, caller, "PutRecordBatch", req.name)?;
    direct_put(&stream)?;
    let records = required(req.records, "Records")?;
    if records.is_empty() || records.len() > MAX_BATCH_RECORDS {
        return Err(ApiError::validation(format!(
            "Records has {} entries; PutRecordBatch takes 1 to {MAX_BATCH_RECORDS}",
            records.len()
        )));
    }
    let arrival = now_ms();
    let mut frames = Batch::with_capacity(body.len());
    let mut sizes = Vec::with_capacity(records.len());
    let mut total = 0;
    for (i, r) in records.iter().enumerate() {
        let size = frame(&mut frames, arrival, Field::Batch(i), r)?;
        total += size;
        sizes.push(size);
    }
    if total > MAX_BATCH_BYTES {
        return Err(ApiError::invalid_argument(format!(
            "Records total {total} bytes; PutRecordBatch takes at most {MAX_BATCH_BYTES} bytes (4 MiB)"
        )));
    }
    let failed = sizes.iter().filter(|s| **s > MAX_RECORD_BYTES).count();
    let mut offset = if !frames.is_empty() {
        stream
            .put(frames)
            .await
            .map_err(|e| put_error(&stream.spec.name, e))?
    } else {
        0
    };
    if failed > 0 {
        stream
            .intake
            .rejected
            .fetch_add(failed as u64, std::sync::atomic::Ordering::Relaxed);
    }
    let mut out = String::with_capacity(64 + records.len() * 70);
    write!(
        out,
        r#"{{"FailedPutCount":{failed},"Encrypted":false,"RequestResponses":["#
    )
    .unwrap();
    for (i, size) in sizes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if *size > MAX_RECORD_BYTES {
            let msg = serde_json::to_string(&too_big(*size)).unwrap();
            write!(
                out,
                r#"{{"ErrorCode":"InvalidArgumentException","ErrorMessage":{msg}}}"#
            )
            .unwrap();
        } else {
            out.push_str(r#"{"RecordId":""#);
            stream.push_record_id(&mut out, offset);
            out.push_str(r#""}"#);
            offset += 1;
        }
    }
    out.push_str("]}");
    Ok(out.into_bytes())
}

async fn create(
    app: &App,
    caller: &Caller<'_>,
    body: &[u8],
    region: &str,
) -> Result<Vec<u8>, ApiError> {
    let request: Value = parse_owned(body)?;
    if !request.is_object() {
        return Err(ApiError::serialization("the request must be a JSON object"));
    }
    if let Some(name) = request["DeliveryStreamName"].as_str() {
        caller.allow("CreateDeliveryStream", Some(name))?;
    }
    let stream = app.registry.create(request).await?;
    Ok(json!({ "DeliveryStreamARN": stream.arn(region) })
        .to_string()
        .into_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DescribeIn {
    delivery_stream_name: Option<String>,
    limit: Option<i64>,
    exclusive_start_destination_id: Option<String>,
}

const DESTINATION_ID: &str = "destinationId-000000000001";

fn describe(
    app: &App,
    caller: &Caller<'_>,
    body: &[u8],
    region: &str,
) -> Result<Vec<u8>, ApiError> {
    let req: DescribeIn = parse_owned(body)?;
    let stream = stream(
        app,
        caller,
        "DescribeDeliveryStream",
        req.delivery_stream_name,
    )?;
    if let Some(l) = req.limit {
        if !(1..=10000).contains(&l) {
            return Err(ApiError::validation(format!(
                "Limit is {l}; it must be 1 to 10000"
            )));
        }
    }
    let s = &stream.spec;
    let mut dest = json!({
        "RoleARN": s.role_arn,
        "BucketARN": s.bucket_arn,
        "Prefix": s.prefix,
        "BufferingHints": { "SizeInMBs": s.size_mb, "IntervalInSeconds": s.interval_seconds },
        "CompressionFormat": s.compression.as_str(),
        "EncryptionConfiguration": { "NoEncryptionConfig": "NoEncryption" },
        "CloudWatchLoggingOptions": { "Enabled": false },
    });
    if let Some(e) = &s.error_output_prefix {
        dest["ErrorOutputPrefix"] = json!(e);
    }
    let mut destination =
        json!({ "DestinationId": DESTINATION_ID, "S3DestinationDescription": dest.clone() });
    if s.warehouse.is_some() {
        let given = &stream.request["RedshiftDestinationConfiguration"];
        let backup = given.get("S3BackupConfiguration").map(|b| {
            let mut b = b.clone();
            b["BufferingHints"] = dest["BufferingHints"].clone();
            if b.get("CompressionFormat").is_none() {
                b["CompressionFormat"] = json!("UNCOMPRESSED");
            }
            b["EncryptionConfiguration"] = json!({ "NoEncryptionConfig": "NoEncryption" });
            b
        });
        destination = json!({
            "DestinationId": DESTINATION_ID,
            "RedshiftDestinationDescription": crate::spec::redshift::description(given, dest, backup),
        });
    } else if s.extended {
        let mut ext = dest;
        ext["S3BackupMode"] = json!("Disabled");
        if let Some(x) = &s.file_extension {
            ext["FileExtension"] = json!(x);
        }
        // What was set, as it was set: these descriptions have the shape of
        // the configuration (processors with their parameters, dynamic
        // partitioning with its retry options, format conversion with its
        // schema, serializer and deserializer).
        let given = &stream.request["ExtendedS3DestinationConfiguration"];
        for key in [
            "ProcessingConfiguration",
            "DynamicPartitioningConfiguration",
            "DataFormatConversionConfiguration",
            "CustomTimeZone",
        ] {
            if let Some(v) = given.get(key).filter(|v| !v.is_null()) {
                ext[key] = v.clone();
            }
        }
        if ext.get("ProcessingConfiguration").is_none() {
            ext["ProcessingConfiguration"] = json!({ "Enabled": false, "Processors": [] });
        }
        if let Some(ps) = ext["ProcessingConfiguration"]["Processors"].as_array_mut() {
            for p in ps {
                if p.get("Parameters").is_none() {
                    p["Parameters"] = json!([]);
                }
            }
        }
        destination["ExtendedS3DestinationDescription"] = ext;
    }
    // One destination: a start id at or past it leaves nothing to list.
    let destinations = match req.exclusive_start_destination_id {
        Some(_) => vec![],
        None => vec![destination],
    };
    let created = stream.created_ms as f64 / 1000.0;
    // Firehose reports a destination that cannot deliver in
    // FailureDescription; the stream itself stays ACTIVE and takes puts.
    let loading = stream
        .warehouse
        .as_ref()
        .and_then(|(w, _)| w.last_error.lock().unwrap().clone());
    let capture = stream.source.as_ref().and_then(|src| {
        let failed = src.failed.lock().unwrap().clone();
        let retrying = src.last_error.lock().unwrap().clone();
        match (failed, retrying) {
            (Some(f), _) => Some(format!("change capture stopped: {f}")),
            (None, Some((m, _))) => Some(format!("change capture retrying: {m}")),
            (None, None) => None,
        }
    });
    let loading = loading.or(capture.map(|m| (m, 0)));
    let failure = match (stream.delivery.problem(), loading) {
        (Some(p), _) => {
            let state = if p.stopped {
                "delivery stopped"
            } else {
                "delivery retrying"
            };
            Some(json!({ "Type": "UNKNOWN_ERROR", "Details": format!("{state}: {}", p.message) }))
        }
        (None, Some((message, _)))
            if stream.spec.source.is_some() && stream.warehouse.is_none() =>
        {
            Some(json!({ "Type": "UNKNOWN_ERROR", "Details": message }))
        }
        (None, Some((message, _))) => Some(json!({
            "Type": "UNKNOWN_ERROR",
            "Details": format!("loading into the warehouse: {message}"),
        })),
        (None, None) => None,
    };
    let mut description = json!({
        "DeliveryStreamDescription": {
            "DeliveryStreamName": s.name,
            "DeliveryStreamARN": stream.arn(region),
            "DeliveryStreamStatus": "ACTIVE",
            "DeliveryStreamEncryptionConfiguration": { "Status": "DISABLED" },
            "DeliveryStreamType": "DirectPut",
            "VersionId": crate::delivery::STREAM_VERSION.to_string(),
            "CreateTimestamp": created,
            "LastUpdateTimestamp": created,
            "Destinations": destinations,
            "HasMoreDestinations": false,
        }
    });
    if let Some(f) = failure {
        description["DeliveryStreamDescription"]["FailureDescription"] = f;
    }
    if let Some(src) = &stream.source {
        let d = &mut description["DeliveryStreamDescription"];
        d["DeliveryStreamType"] = json!("DatabaseAsSource");
        let mut db = stream.request["DatabaseSourceConfiguration"].clone();
        let snapshots: Vec<Value> = src
            .tables
            .lock()
            .unwrap()
            .iter()
            .map(|(table, t)| {
                json!({
                    "Id": format!("{}-{table}", stream.incarnation),
                    "Table": table,
                    "RequestTimestamp": t.requested_ms as f64 / 1000.0,
                    "RequestedBy": "FIREHOSE",
                    "Status": t.snapshot.as_str(),
                })
            })
            .collect();
        db["SnapshotInfo"] = json!(snapshots);
        d["Source"] = json!({ "DatabaseSourceDescription": db });
    }
    Ok(description.to_string().into_bytes())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct ListIn {
    limit: Option<i64>,
    delivery_stream_type: Option<String>,
    exclusive_start_delivery_stream_name: Option<String>,
}

fn list(app: &App, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let req: ListIn = parse_owned(body)?;
    let limit = req.limit.unwrap_or(10);
    if !(1..=10000).contains(&limit) {
        return Err(ApiError::validation(format!(
            "Limit is {limit}; it must be 1 to 10000"
        )));
    }
    let of_type = |database: bool| -> Vec<String> {
        app.registry
            .list()
            .iter()
            .filter(|s| s.spec.source.is_some() == database)
            .map(|s| s.spec.name.clone())
            .collect()
    };
    let names: Vec<String> = match req.delivery_stream_type.as_deref() {
        None => app
            .registry
            .list()
            .iter()
            .map(|s| s.spec.name.clone())
            .collect(),
        Some("DirectPut") => of_type(false),
        Some("DatabaseAsSource") => of_type(true),
        Some("KinesisStreamAsSource" | "MSKAsSource") => vec![],
        Some(t) => {
            return Err(ApiError::validation(format!(
                "DeliveryStreamType {t:?} is not a stream type"
            )))
        }
    };
    // The registry is a BTreeMap, so names come sorted.
    let after: Vec<String> = names
        .into_iter()
        .filter(|n| {
            req.exclusive_start_delivery_stream_name
                .as_ref()
                .is_none_or(|s| n > s)
        })
        .collect();
    let page: Vec<&String> = after.iter().take(limit as usize).collect();
    Ok(
        json!({ "DeliveryStreamNames": page, "HasMoreDeliveryStreams": after.len() > page.len() })
            .to_string()
            .into_bytes(),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
struct DeleteIn {
    delivery_stream_name: Option<String>,
    /// Firehose's escape hatch for streams whose KMS grants are gone; with no
    /// KMS there is nothing it could change.
    allow_force_delete: Option<bool>,
}

async fn delete(app: &App, caller: &Caller<'_>, body: &[u8]) -> Result<Vec<u8>, ApiError> {
    let req: DeleteIn = parse_owned(body)?;
    let _ = req.allow_force_delete;
    let name = required(req.delivery_stream_name, "DeliveryStreamName")?;
    check_stream_name(&name)?;
    caller.allow("DeleteDeliveryStream", Some(&name))?;
    app.registry.delete(&name).await?;
    Ok(b"{}".to_vec())
}
