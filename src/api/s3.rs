//! A read-only, path-style S3 API over the embedded lake, so `aws s3 ls`,
//! `aws s3 cp` and the SDKs' S3 clients read what the delivery streams wrote.
//!
//! Bucket NAME is the directory `<data-dir>/lake/NAME/`; an object key is a
//! path of regular files below it. Objects appear atomically (delivery
//! renames them into place from outside the lake), so everything listed is
//! complete, and an object opened for reading never changes under the reader.
//!
//! Served: ListBuckets (`GET /`), ListObjectsV2 (`GET /BUCKET?list-type=2`),
//! ListObjects (`GET /BUCKET`), GetBucketLocation, HeadBucket, GetObject (with
//! one byte range and conditional headers) and HeadObject. Keys are listed in
//! UTF-8 binary order, as S3 lists them.
//!
//! Not served: anything that writes (the lake is written by delivery streams
//! only), virtual-hosted-style addressing, versions, ACLs, tagging, multipart
//! uploads, multi-range requests. With access keys configured, requests
//! are signed (SigV4, in the Authorization header or a presigned URL) and
//! checked against the key's actions (`s3:ListAllMyBuckets`,
//! `s3:ListBucket`, `s3:GetBucketLocation`, `s3:GetObject`) and buckets;
//! without, any signature is accepted, like the Firehose side.
//!
//! ETags are not content MD5s, which would mean reading every object to list
//! it. An ETag is a hash of the file's inode, size and modification time,
//! formatted as a one-part multipart ETag (`"<32 hex>-1"`) so that tools which
//! check downloads against an MD5-looking ETag know not to. It changes
//! whenever the object is replaced.
//!
//! Symbolic links are never followed: hydrant does not make them, and a key
//! must not lead out of its bucket's directory. `..` segments are refused.

use std::fs::{self, File, Metadata};
use std::io::{self, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::BytesMut;
use chrono::{DateTime, Utc};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{ApiError, App};

const XMLNS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";
/// The most keys one ListObjects page returns, and the default.
const MAX_KEYS: usize = 1000;
/// The most buckets one ListBuckets page returns, and the default.
const MAX_BUCKETS: usize = 10_000;
/// How much of an object one chunk of a GetObject body carries.
const CHUNK: usize = 256 << 10;
const OWNER_ID: &str = "hydrant";

/// Query parameters that name an S3 bucket operation hydrant does not serve.
const BUCKET_SUBRESOURCES: &[&str] = &[
    "accelerate",
    "acl",
    "analytics",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "lifecycle",
    "logging",
    "metadataTable",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "replication",
    "requestPayment",
    "session",
    "tagging",
    "uploads",
    "versioning",
    "versions",
    "website",
];

/// Query parameters that name an S3 object operation hydrant does not serve.
const OBJECT_SUBRESOURCES: &[&str] = &[
    "acl",
    "attributes",
    "legal-hold",
    "restore",
    "retention",
    "select",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
];

pub fn router(app: Arc<App>) -> Router<Arc<App>> {
    Router::new()
        .route("/", get(list_buckets))
        .route(
            "/{bucket}",
            get(bucket_get).head(bucket_head).fallback(read_only),
        )
        .route(
            "/{bucket}/",
            get(bucket_get).head(bucket_head).fallback(read_only),
        )
        .route(
            "/{bucket}/{*key}",
            get(object_get).head(object_head).fallback(read_only),
        )
        .route_layer(axum::middleware::from_fn_with_state(app, authenticate))
}

/// With access keys configured, every S3 request is signed (header or
/// presigned URL) by a key that may take its action on its bucket.
async fn authenticate(
    State(app): State<Arc<App>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !app.auth.enabled() {
        return next.run(req).await;
    }
    let head = req.method() == Method::HEAD;
    let path = req.uri().path().trim_start_matches('/');
    let (bucket, key) = match path.split_once('/') {
        Some((b, k)) => (b, k),
        None => (path, ""),
    };
    if bucket == "-" {
        // hydrant's own namespace: the handlers answer for it.
        return next.run(req).await;
    }
    let action = if bucket.is_empty() {
        "s3:ListAllMyBuckets"
    } else if !key.is_empty() {
        "s3:GetObject"
    } else if req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == "location" || p.starts_with("location="))
    }) {
        "s3:GetBucketLocation"
    } else {
        "s3:ListBucket"
    };
    use super::auth::Denied;
    let denied = |code, status, message: String| Err(S3Error::new(status, code, message));
    let checked = match app.auth.verify(req.method(), req.uri(), req.headers(), None, "s3") {
        Ok(k) if k.may(action) && (bucket.is_empty() || k.may_bucket(bucket)) => Ok(()),
        Ok(k) => denied(
            "AccessDenied",
            StatusCode::FORBIDDEN,
            format!("User: arn:aws:iam::000000000000:user/{} is not authorized to perform: {action} on resource: arn:aws:s3:::{bucket}", k.id),
        ),
        Err(d @ Denied::Missing) | Err(d @ Denied::Expired(_)) | Err(d @ Denied::Forbidden(_)) => {
            denied("AccessDenied", StatusCode::FORBIDDEN, d.to_string())
        }
        Err(d @ Denied::Malformed(_)) => denied("AuthorizationHeaderMalformed", StatusCode::BAD_REQUEST, d.to_string()),
        Err(Denied::UnknownKey(_)) => denied(
            "InvalidAccessKeyId",
            StatusCode::FORBIDDEN,
            "The AWS Access Key Id you provided does not exist in our records.".into(),
        ),
        Err(d @ Denied::BadSignature) => denied("SignatureDoesNotMatch", StatusCode::FORBIDDEN, d.to_string()),
        Err(d @ Denied::Skewed(_)) => denied("RequestTimeTooSkewed", StatusCode::FORBIDDEN, d.to_string()),
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(e) => finish(Err(e), req.uri(), head),
    }
}

// ---------------------------------------------------------------------------
// Errors

/// An S3 error: `<Error><Code>` and friends, with its HTTP status.
#[derive(Debug)]
struct S3Error {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Extra elements S3 adds for some codes (`Key`, `BucketName`, ...).
    extra: Vec<(&'static str, String)>,
    headers: Vec<(&'static str, String)>,
}

impl S3Error {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> S3Error {
        S3Error {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> S3Error {
        self.extra.push((name, value.into()));
        self
    }

    fn no_such_bucket(bucket: &str) -> S3Error {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchBucket",
            "The specified bucket does not exist",
        )
        .with("BucketName", bucket)
    }

    fn no_such_key(key: &str) -> S3Error {
        S3Error::new(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        )
        .with("Key", key)
    }

    fn invalid_argument(message: impl Into<String>) -> S3Error {
        S3Error::new(StatusCode::BAD_REQUEST, "InvalidArgument", message)
    }

    fn not_implemented(message: impl Into<String>) -> S3Error {
        S3Error::new(StatusCode::NOT_IMPLEMENTED, "NotImplemented", message)
    }

    fn internal(e: impl std::fmt::Display) -> S3Error {
        tracing::warn!(error = %e, "S3 request failed");
        S3Error::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            format!("We encountered an internal error: {e}"),
        )
    }

    fn render(self, resource: &str, request_id: &str, head: bool) -> Response {
        let mut x = Xml::new();
        x.open("Error");
        x.elem("Code", self.code);
        x.elem("Message", &self.message);
        for (name, value) in &self.extra {
            x.elem(name, value);
        }
        x.elem("Resource", resource);
        x.elem("RequestId", request_id);
        x.close("Error");
        let body = if head { Body::empty() } else { x.body() };
        let mut response = (self.status, body).into_response();
        let h = response.headers_mut();
        if !head {
            h.insert("content-type", HeaderValue::from_static("application/xml"));
        }
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        }
        response
    }
}

/// Every S3 response carries a request id; errors also name what was asked for.
/// The bucket a `/{bucket}` path names, or the response for one that names
/// none (hydrant's own `/-/` namespace, or an unreadable path).
fn bucket_name(
    path: Result<UrlPath<String>, PathRejection>,
    uri: &Uri,
    head: bool,
) -> Result<String, Response> {
    match path {
        Ok(UrlPath(b)) if b == "-" => Err(hydrant_namespace()),
        Ok(UrlPath(b)) => Ok(b),
        Err(e) => {
            let e = S3Error::invalid_argument(format!("bad bucket in path: {e}"));
            Err(finish(Err(e), uri, head))
        }
    }
}

fn finish(result: Result<Response, S3Error>, uri: &Uri, head: bool) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_ascii_uppercase();
    let mut response = match result {
        Ok(r) => r,
        Err(e) => {
            let resource = percent_decode(uri.path()).unwrap_or_else(|| uri.path().to_string());
            e.render(&resource, &request_id, head)
        }
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amz-request-id", v.clone());
        h.insert("x-amz-id-2", v);
    }
    response
}

/// `/-/...` is hydrant's own namespace; a path there that no route of
/// hydrant's own matched gets the answer it would get without this API.
fn hydrant_namespace() -> Response {
    ApiError::unknown_operation(
        "no such endpoint: AWS APIs are POST / with X-Amz-Target; hydrant's own are under /-/",
    )
    .into_response()
}

fn read_only_error(method: &Method) -> S3Error {
    S3Error::not_implemented(format!(
        "{method} is not supported: hydrant's lake is written by delivery streams; the S3 API is read-only"
    ))
}

// ---------------------------------------------------------------------------
// Handlers

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn params(query: Params) -> Result<Vec<(String, String)>, S3Error> {
    query
        .map(|Query(q)| q)
        .map_err(|e| S3Error::invalid_argument(format!("malformed query string: {e}")))
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn lake(app: &App) -> PathBuf {
    app.registry.lake().to_path_buf()
}

/// Any method the read-only API does not serve, on a bucket or object path.
async fn read_only(
    method: Method,
    uri: Uri,
    path: Result<UrlPath<Vec<(String, String)>>, PathRejection>,
) -> Response {
    if let Ok(UrlPath(p)) = &path {
        if p.iter().any(|(k, v)| k == "bucket" && v == "-") {
            return hydrant_namespace();
        }
    }
    finish(Err(read_only_error(&method)), &uri, method == Method::HEAD)
}

async fn list_buckets(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    query: Params,
) -> Response {
    if headers.contains_key("x-amz-target") {
        return ApiError::unknown_operation(
            "AWS JSON 1.1 requests (those with X-Amz-Target) are POST /, not GET /",
        )
        .into_response();
    }
    let region = super::region(&headers).to_string();
    let result = async {
        let q = params(query)?;
        let lake = lake(&app);
        tokio::task::spawn_blocking(move || list_buckets_blocking(&lake, &q, &region))
            .await
            .map_err(S3Error::internal)?
    }
    .await;
    finish(result, &uri, false)
}

async fn bucket_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    path: Result<UrlPath<String>, PathRejection>,
    query: Params,
) -> Response {
    let bucket = match bucket_name(path, &uri, false) {
        Ok(b) => b,
        Err(response) => return response,
    };
    let region = super::region(&headers).to_string();
    let result = async {
        let q = params(query)?;
        let dir = bucket_dir(&app, &bucket).await?;
        if q.iter().any(|(k, _)| k == "location") {
            return Ok(location(&region));
        }
        if let Some((k, _)) = q
            .iter()
            .find(|(k, _)| BUCKET_SUBRESOURCES.contains(&k.as_str()))
        {
            return Err(S3Error::not_implemented(format!(
                "?{k} is not supported: hydrant serves ListObjectsV2, ListObjects, \
                 GetBucketLocation and HeadBucket on a bucket"
            )));
        }
        let request = ListRequest::parse(&q)?;
        tokio::task::spawn_blocking(move || list_objects(&dir, &bucket, request))
            .await
            .map_err(S3Error::internal)?
    }
    .await;
    finish(result, &uri, false)
}

async fn bucket_head(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    path: Result<UrlPath<String>, PathRejection>,
) -> Response {
    let bucket = match bucket_name(path, &uri, true) {
        Ok(b) => b,
        Err(response) => return response,
    };
    let result = match bucket_dir(&app, &bucket).await {
        Ok(_) => {
            let region = super::region(&headers);
            let mut r = StatusCode::OK.into_response();
            if let Ok(v) = HeaderValue::from_str(region) {
                r.headers_mut().insert("x-amz-bucket-region", v);
            }
            Ok(r)
        }
        Err(e) => Err(e),
    };
    finish(result, &uri, true)
}

async fn object_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Params,
) -> Response {
    object(app, headers, uri, path, query, false).await
}

async fn object_head(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Params,
) -> Response {
    object(app, headers, uri, path, query, true).await
}

async fn object(
    app: Arc<App>,
    headers: HeaderMap,
    uri: Uri,
    path: Result<UrlPath<(String, String)>, PathRejection>,
    query: Params,
    head: bool,
) -> Response {
    let (bucket, key) = match path {
        Ok(UrlPath((b, _))) if b == "-" => return hydrant_namespace(),
        Ok(UrlPath(p)) => p,
        Err(e) => {
            let e = S3Error::invalid_argument(format!("bad bucket or key in path: {e}"));
            return finish(Err(e), &uri, head);
        }
    };
    let result = async {
        let q = params(query)?;
        if let Some((k, _)) = q
            .iter()
            .find(|(k, _)| OBJECT_SUBRESOURCES.contains(&k.as_str()))
        {
            return Err(S3Error::not_implemented(format!(
                "?{k} is not supported: hydrant serves GetObject and HeadObject on an object"
            )));
        }
        if let Some(v) = param(&q, "versionId") {
            if v != "null" {
                return Err(S3Error::invalid_argument("Invalid version id specified")
                    .with("ArgumentName", "versionId")
                    .with("ArgumentValue", v));
            }
        }
        let overrides = response_overrides(&q)?;
        let dir = bucket_dir(&app, &bucket).await?;
        check_key(&key)?;
        let k = key.clone();
        let (file, meta) = tokio::task::spawn_blocking(move || open_object(&dir, &k))
            .await
            .map_err(S3Error::internal)?
            .map_err(S3Error::internal)?
            .ok_or_else(|| S3Error::no_such_key(&key))?;
        serve_object(file, &meta, &headers, overrides, head).await
    }
    .await;
    finish(result, &uri, head)
}

// ---------------------------------------------------------------------------
// Buckets

/// The directory of an existing bucket.
/// The embedded lake's directory of a bucket. A bucket the config puts on
/// an S3 service is not in the embedded lake: it is read from that service.
async fn bucket_dir(app: &App, bucket: &str) -> Result<PathBuf, S3Error> {
    if !crate::spec::check_bucket(bucket) {
        return Err(S3Error::no_such_bucket(bucket));
    }
    if app.registry.s3_store(bucket).is_some() {
        return Err(S3Error::not_implemented(format!(
            "bucket {bucket} lives on an S3 service (buckets.{bucket} in hydrant's config), \
             not in the embedded lake; read it from that service, or query it with SQL (POST /-/query)"
        ))
        .with("BucketName", bucket));
    }
    let dir = lake(app).join(bucket);
    match tokio::fs::symlink_metadata(&dir).await {
        Ok(m) if m.file_type().is_dir() => Ok(dir),
        Ok(_) => Err(S3Error::no_such_bucket(bucket)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(S3Error::no_such_bucket(bucket)),
        Err(e) => Err(S3Error::internal(e)),
    }
}

fn location(region: &str) -> Response {
    let mut x = Xml::new();
    x.open_ns("LocationConstraint");
    // us-east-1 is the empty constraint.
    if region != "us-east-1" {
        x.text(region);
    }
    x.close("LocationConstraint");
    xml_response(x)
}

fn list_buckets_blocking(
    lake: &Path,
    q: &[(String, String)],
    region: &str,
) -> Result<Response, S3Error> {
    let prefix = param(q, "prefix").unwrap_or("");
    let max = match param(q, "max-buckets") {
        None => MAX_BUCKETS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_BUCKETS).contains(&n) => n,
            _ => {
                return Err(S3Error::invalid_argument(format!(
                    "max-buckets must be an integer from 1 to {MAX_BUCKETS}"
                ))
                .with("ArgumentName", "max-buckets")
                .with("ArgumentValue", v))
            }
        },
    };
    let after = match param(q, "continuation-token") {
        None | Some("") => None,
        Some(t) => Some(decode_token(t)?),
    };
    // Every bucket is where the client thinks it is talking to.
    let other_region = param(q, "bucket-region").is_some_and(|r| !r.is_empty() && r != region);

    let mut buckets = Vec::new();
    for entry in fs::read_dir(lake).map_err(S3Error::internal)? {
        let entry = entry.map_err(S3Error::internal)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !crate::spec::check_bucket(&name) || !name.starts_with(prefix) {
            continue;
        }
        if after.as_deref().is_some_and(|a| name.as_str() <= a) {
            continue;
        }
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.file_type().is_dir() {
            continue;
        }
        let created = meta
            .created()
            .or_else(|_| meta.modified())
            .unwrap_or(UNIX_EPOCH);
        buckets.push((name, created));
    }
    if other_region {
        buckets.clear();
    }
    buckets.sort();
    let truncated = buckets.len() > max;
    buckets.truncate(max);

    let mut x = Xml::new();
    x.open_ns("ListAllMyBucketsResult");
    owner(&mut x);
    x.open("Buckets");
    for (name, created) in &buckets {
        x.open("Bucket");
        x.elem("Name", name);
        x.elem("CreationDate", &iso8601(*created));
        x.elem("BucketRegion", region);
        x.close("Bucket");
    }
    x.close("Buckets");
    if truncated {
        let last = &buckets.last().expect("truncated means not empty").0;
        x.elem("ContinuationToken", &encode_token(last));
    }
    if param(q, "prefix").is_some() {
        x.elem("Prefix", prefix);
    }
    x.close("ListAllMyBucketsResult");
    Ok(xml_response(x))
}

// ---------------------------------------------------------------------------
// Listing objects

struct ListRequest {
    v2: bool,
    prefix: String,
    delimiter: Option<String>,
    max_keys: usize,
    url_encode: bool,
    /// v2's ContinuationToken as sent.
    token: Option<String>,
    /// v2's StartAfter or v1's Marker as sent.
    start_after: Option<String>,
    fetch_owner: bool,
    /// List only what sorts after this: the decoded token, else StartAfter/Marker.
    after: Option<String>,
}

impl ListRequest {
    fn parse(q: &[(String, String)]) -> Result<ListRequest, S3Error> {
        let v2 = match param(q, "list-type") {
            None => false,
            Some("2") => true,
            Some(v) => {
                return Err(S3Error::invalid_argument("Invalid list type specified")
                    .with("ArgumentName", "list-type")
                    .with("ArgumentValue", v))
            }
        };
        let url_encode = match param(q, "encoding-type") {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("url") => true,
            Some(v) => {
                return Err(S3Error::invalid_argument(
                    "Invalid Encoding Method specified in Request",
                )
                .with("ArgumentName", "encoding-type")
                .with("ArgumentValue", v))
            }
        };
        let max_keys = match param(q, "max-keys") {
            None => MAX_KEYS,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n >= 0 => (n as u64).min(MAX_KEYS as u64) as usize,
                _ => {
                    return Err(S3Error::invalid_argument(
                        "Provided max-keys not an integer or within integer range",
                    )
                    .with("ArgumentName", "max-keys")
                    .with("ArgumentValue", v))
                }
            },
        };
        let fetch_owner = match param(q, "fetch-owner") {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(
                    S3Error::invalid_argument("fetch-owner must be true or false")
                        .with("ArgumentName", "fetch-owner")
                        .with("ArgumentValue", v),
                )
            }
        };
        let token = if v2 {
            param(q, "continuation-token").map(str::to_string)
        } else {
            None
        };
        let start_after = param(q, if v2 { "start-after" } else { "marker" })
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let after = match &token {
            Some(t) => Some(decode_token(t)?),
            None => start_after.clone(),
        };
        Ok(ListRequest {
            v2,
            prefix: param(q, "prefix").unwrap_or("").to_string(),
            delimiter: param(q, "delimiter")
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            max_keys,
            url_encode,
            token,
            start_after,
            fetch_owner: fetch_owner || !v2,
            after,
        })
    }
}

struct Object {
    key: String,
    size: u64,
    modified: SystemTime,
    etag: String,
}

/// One page of a listing, walked in key order straight off the directory tree.
struct Walker<'a> {
    prefix: &'a str,
    delimiter: Option<&'a str>,
    after: Option<&'a str>,
    /// Keys under this prefix are already accounted for by a common prefix.
    skip: Option<String>,
    max: usize,
    contents: Vec<Object>,
    prefixes: Vec<String>,
    truncated: bool,
    /// The last key or common prefix on the page: where the next page starts.
    last: Option<String>,
}

/// The common prefix `key` rolls up into, if any.
fn common_prefix<'k>(key: &'k str, prefix: &str, delimiter: Option<&str>) -> Option<&'k str> {
    let d = delimiter?;
    let rest = key.strip_prefix(prefix)?;
    let i = rest.find(d)?;
    Some(&key[..prefix.len() + i + d.len()])
}

impl Walker<'_> {
    fn count(&self) -> usize {
        self.contents.len() + self.prefixes.len()
    }

    /// Visits `dir`, whose keys all start with `base`, in key order.
    ///
    /// Entries sort by their key, a directory's key ending in `/`; the keys
    /// below a directory then sort exactly where the depth-first walk reaches
    /// them, since none of its siblings' keys starts with `name/`.
    fn walk(&mut self, dir: &Path, base: &str) -> io::Result<ControlFlow<()>> {
        let entries = match fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(e),
        };
        let mut children = Vec::new();
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let Ok(name) = entry.file_name().into_string() else {
                continue; // not UTF-8: cannot be an S3 key
            };
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                children.push((format!("{base}{name}/"), name, true));
            } else if ft.is_file() {
                children.push((format!("{base}{name}"), name, false));
            }
        }
        children.sort_unstable();
        for (key, name, is_dir) in children {
            if let Some(skip) = &self.skip {
                if key.starts_with(skip.as_str()) {
                    continue;
                }
            }
            let flow = if is_dir {
                // Every key below starts with `key`.
                if !(key.starts_with(self.prefix) || self.prefix.starts_with(key.as_str())) {
                    continue;
                }
                if let Some(after) = self.after {
                    if key.as_str() < after && !after.starts_with(key.as_str()) {
                        continue;
                    }
                }
                self.walk(&dir.join(&name), &key)?
            } else {
                if !key.starts_with(self.prefix) || self.after.is_some_and(|a| key.as_str() <= a) {
                    continue;
                }
                self.accept(key, &dir.join(&name))?
            };
            if flow.is_break() {
                return Ok(flow);
            }
        }
        Ok(ControlFlow::Continue(()))
    }

    fn accept(&mut self, key: String, path: &Path) -> io::Result<ControlFlow<()>> {
        if let Some(cp) = common_prefix(&key, self.prefix, self.delimiter) {
            if self.count() == self.max {
                self.truncated = true;
                return Ok(ControlFlow::Break(()));
            }
            let cp = cp.to_string();
            self.prefixes.push(cp.clone());
            self.skip = Some(cp.clone());
            self.last = Some(cp);
            return Ok(ControlFlow::Continue(()));
        }
        if self.count() == self.max {
            self.truncated = true;
            return Ok(ControlFlow::Break(()));
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => m,
            Ok(_) => return Ok(ControlFlow::Continue(())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ControlFlow::Continue(())),
            Err(e) => return Err(e),
        };
        self.contents.push(Object {
            key: key.clone(),
            size: meta.len(),
            modified: modified(&meta),
            etag: etag(&meta),
        });
        self.last = Some(key);
        Ok(ControlFlow::Continue(()))
    }
}

fn list_objects(dir: &Path, bucket: &str, r: ListRequest) -> Result<Response, S3Error> {
    let mut w = Walker {
        prefix: &r.prefix,
        delimiter: r.delimiter.as_deref(),
        after: r.after.as_deref(),
        skip: None,
        max: r.max_keys,
        contents: Vec::new(),
        prefixes: Vec::new(),
        truncated: false,
        last: None,
    };
    // A page that ended on a common prefix resumes after everything it rolled up.
    if let Some(after) = r.after.as_deref() {
        if common_prefix(after, &r.prefix, r.delimiter.as_deref()) == Some(after) {
            w.skip = Some(after.to_string());
        }
    }
    if r.max_keys > 0 {
        // Stopping early (a full page) and walking to the end are both fine here.
        let _ = w.walk(dir, "").map_err(S3Error::internal)?;
    }

    let enc = |s: &str| {
        if r.url_encode {
            url_encode(s)
        } else {
            s.to_string()
        }
    };
    let mut x = Xml::new();
    x.open_ns("ListBucketResult");
    x.elem("Name", bucket);
    x.elem("Prefix", &enc(&r.prefix));
    if r.v2 {
        if let Some(t) = &r.token {
            x.elem("ContinuationToken", t);
        }
        if let Some(s) = &r.start_after {
            x.elem("StartAfter", &enc(s));
        }
        x.elem("KeyCount", &w.count().to_string());
    } else {
        x.elem("Marker", &enc(r.start_after.as_deref().unwrap_or("")));
    }
    x.elem("MaxKeys", &r.max_keys.to_string());
    if let Some(d) = &r.delimiter {
        x.elem("Delimiter", &enc(d));
    }
    if r.url_encode {
        x.elem("EncodingType", "url");
    }
    x.elem("IsTruncated", if w.truncated { "true" } else { "false" });
    if w.truncated {
        let last = w.last.as_deref().expect("a truncated page is not empty");
        if r.v2 {
            x.elem("NextContinuationToken", &encode_token(last));
        } else {
            x.elem("NextMarker", &enc(last));
        }
    }
    for o in &w.contents {
        x.open("Contents");
        x.elem("Key", &enc(&o.key));
        x.elem("LastModified", &iso8601(o.modified));
        x.elem("ETag", &o.etag);
        x.elem("Size", &o.size.to_string());
        if r.fetch_owner {
            owner(&mut x);
        }
        x.elem("StorageClass", "STANDARD");
        x.close("Contents");
    }
    for p in &w.prefixes {
        x.open("CommonPrefixes");
        x.elem("Prefix", &enc(p));
        x.close("CommonPrefixes");
    }
    x.close("ListBucketResult");
    Ok(xml_response(x))
}

fn encode_token(last: &str) -> String {
    URL_SAFE_NO_PAD.encode(last.as_bytes())
}

fn decode_token(token: &str) -> Result<String, S3Error> {
    URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            S3Error::invalid_argument("The continuation token provided is incorrect")
                .with("ArgumentName", "continuation-token")
                .with("ArgumentValue", token)
        })
}

fn owner(x: &mut Xml) {
    x.open("Owner");
    x.elem("ID", OWNER_ID);
    x.elem("DisplayName", OWNER_ID);
    x.close("Owner");
}

// ---------------------------------------------------------------------------
// Objects

/// A key that can name a file in the lake. `..` is refused outright; other
/// keys no file can have (`a//b`, `./a`, `a/`) simply do not exist.
fn check_key(key: &str) -> Result<(), S3Error> {
    if key.split('/').any(|seg| seg == "..") || key.starts_with('/') {
        return Err(S3Error::invalid_argument(format!(
            "key {key:?}: a '..' segment is not allowed; keys are paths inside the bucket"
        ))
        .with("ArgumentName", "key"));
    }
    if key.is_empty()
        || key.contains('\0')
        || key.split('/').any(|seg| seg.is_empty() || seg == ".")
    {
        return Err(S3Error::no_such_key(key));
    }
    Ok(())
}

/// Opens the regular file `key` names below `dir`, refusing to pass through
/// or open a symbolic link. None if there is no such object.
fn open_object(dir: &Path, key: &str) -> io::Result<Option<(File, Metadata)>> {
    let not_found = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound
            || matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
    };
    let segments: Vec<&str> = key.split('/').collect();
    let mut path = dir.to_path_buf();
    for (i, seg) in segments.iter().enumerate() {
        path.push(seg);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let last = i + 1 == segments.len();
        let ft = meta.file_type();
        if (last && !ft.is_file()) || (!last && !ft.is_dir()) {
            return Ok(None);
        }
    }
    let file = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if not_found(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

fn modified(meta: &Metadata) -> SystemTime {
    meta.modified().unwrap_or(UNIX_EPOCH)
}

/// A stable, cheap entity tag: changes when the object is replaced (new
/// inode) or its size or modification time change.
fn etag(meta: &Metadata) -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(&meta.ino().to_le_bytes());
    bytes.extend_from_slice(&meta.size().to_le_bytes());
    bytes.extend_from_slice(&meta.mtime().to_le_bytes());
    bytes.extend_from_slice(&meta.mtime_nsec().to_le_bytes());
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, &bytes);
    format!("\"{}-1\"", hash.simple())
}

/// `response-*` query parameters: headers the caller asks to have set.
fn response_overrides(q: &[(String, String)]) -> Result<Vec<(HeaderName, HeaderValue)>, S3Error> {
    const OVERRIDES: &[(&str, &str)] = &[
        ("response-content-type", "content-type"),
        ("response-content-language", "content-language"),
        ("response-expires", "expires"),
        ("response-cache-control", "cache-control"),
        ("response-content-disposition", "content-disposition"),
        ("response-content-encoding", "content-encoding"),
    ];
    let mut out = Vec::new();
    for (param_name, header) in OVERRIDES {
        if let Some(v) = param(q, param_name) {
            let value = HeaderValue::from_str(v).map_err(|_| {
                S3Error::invalid_argument(format!("{param_name} is not a valid header value"))
                    .with("ArgumentName", *param_name)
                    .with("ArgumentValue", v)
            })?;
            out.push((HeaderName::from_static(header), value));
        }
    }
    Ok(out)
}

enum ByteRange {
    Whole,
    Part(u64, u64),
    Unsatisfiable,
}

/// One `bytes=` range of RFC 9110. Anything else (other units, several
/// ranges, bad syntax) is ignored and the whole object is sent, as S3 does.
fn parse_range(header: &str, size: u64) -> ByteRange {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| {
        if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u64>().ok()
        } else {
            None
        }
    };
    match (a.is_empty(), b.is_empty()) {
        (true, true) => ByteRange::Whole,
        (true, false) => match num(b) {
            None => ByteRange::Whole,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part(size.saturating_sub(n), size - 1),
        },
        (false, true) => match num(a) {
            None => ByteRange::Whole,
            Some(start) if start >= size => ByteRange::Unsatisfiable,
            Some(start) => ByteRange::Part(start, size - 1),
        },
        (false, false) => match (num(a), num(b)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    ByteRange::Unsatisfiable
                } else {
                    ByteRange::Part(start, end.min(size - 1))
                }
            }
            _ => ByteRange::Whole,
        },
    }
}

fn etag_matches(list: &str, etag: &str) -> bool {
    list.split(',').map(str::trim).any(|t| {
        let t = t.strip_prefix("W/").unwrap_or(t);
        t == "*" || t == etag || t.trim_matches('"') == etag.trim_matches('"')
    })
}

fn header_date(headers: &HeaderMap, name: &str) -> Option<i64> {
    let v = headers.get(name)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(v.trim())
        .ok()
        .map(|d| d.timestamp())
}

async fn serve_object(
    file: File,
    meta: &Metadata,
    headers: &HeaderMap,
    overrides: Vec<(HeaderName, HeaderValue)>,
    head: bool,
) -> Result<Response, S3Error> {
    let size = meta.len();
    let etag = etag(meta);
    let mtime = modified(meta);
    let last_modified = http_date(mtime);
    let mtime_secs = mtime
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());

    // Preconditions, in S3's order.
    let failed = |condition: &str| {
        let mut e = S3Error::new(
            StatusCode::PRECONDITION_FAILED,
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
        )
        .with("Condition", condition);
        e.headers.push(("etag", etag.clone()));
        e.headers.push(("last-modified", last_modified.clone()));
        e
    };
    let if_match = header("if-match");
    if let Some(list) = if_match {
        if !etag_matches(list, &etag) {
            return Err(failed("If-Match"));
        }
    } else if let Some(t) = header_date(headers, "if-unmodified-since") {
        if mtime_secs > t {
            return Err(failed("If-Unmodified-Since"));
        }
    }
    let not_modified = match header("if-none-match") {
        Some(list) => etag_matches(list, &etag),
        None => header_date(headers, "if-modified-since").is_some_and(|t| mtime_secs <= t),
    };
    if not_modified {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        let h = r.headers_mut();
        insert(h, "etag", &etag);
        insert(h, "last-modified", &last_modified);
        return Ok(r);
    }

    let range = match header("range") {
        None => ByteRange::Whole,
        Some(r) => parse_range(r, size),
    };
    let (status, start, len) = match range {
        ByteRange::Whole => (StatusCode::OK, 0, size),
        ByteRange::Part(a, b) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        ByteRange::Unsatisfiable => {
            let mut e = S3Error::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "InvalidRange",
                "The requested range is not satisfiable",
            )
            .with("RangeRequested", header("range").unwrap_or(""))
            .with("ActualObjectSize", size.to_string());
            e.headers.push(("content-range", format!("bytes */{size}")));
            return Err(e);
        }
    };

    let body = if head {
        Body::empty()
    } else {
        let file = tokio::task::spawn_blocking(move || {
            let mut file = file;
            file.seek(SeekFrom::Start(start))?;
            Ok::<_, io::Error>(file)
        })
        .await
        .map_err(S3Error::internal)?
        .map_err(S3Error::internal)?;
        file_body(tokio::fs::File::from_std(file).take(len), len)
    };
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    insert(h, "content-type", "application/octet-stream");
    insert(h, "content-length", &len.to_string());
    insert(h, "etag", &etag);
    insert(h, "last-modified", &last_modified);
    insert(h, "accept-ranges", "bytes");
    if status == StatusCode::PARTIAL_CONTENT {
        insert(
            h,
            "content-range",
            &format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    for (name, value) in overrides {
        h.insert(name, value);
    }
    Ok(r)
}

fn insert(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

/// Streams `len` bytes from `reader` in chunks; fails the body (and so the
/// connection) if the file ends early rather than send a short object.
fn file_body<R: AsyncRead + Unpin + Send + 'static>(reader: R, len: u64) -> Body {
    let stream = futures_util::stream::unfold((reader, len), |(mut reader, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK.min(left as usize));
        match reader.read_buf(&mut buf).await {
            Ok(0) => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "object ended before its length",
                )),
                (reader, 0),
            )),
            Ok(n) => Some((Ok(buf.freeze()), (reader, left - n as u64))),
            Err(e) => Some((Err(e), (reader, 0))),
        }
    });
    Body::from_stream(stream)
}

// ---------------------------------------------------------------------------
// Formats

fn iso8601(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// RFC 7231's IMF-fixdate.
fn http_date(t: SystemTime) -> String {
    DateTime::<Utc>::from(t)
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

/// S3's `encoding-type=url`: every byte but unreserved characters and `/`
/// percent-encoded (so `+` survives decoders that read it as a space).
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Just enough XML writing for S3's responses.
struct Xml(String);

impl Xml {
    fn new() -> Xml {
        Xml(String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"))
    }

    fn open(&mut self, name: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push('>');
    }

    fn open_ns(&mut self, name: &str) {
        self.0.push('<');
        self.0.push_str(name);
        self.0.push_str(" xmlns=\"");
        self.0.push_str(XMLNS);
        self.0.push_str("\">");
    }

    fn close(&mut self, name: &str) {
        self.0.push_str("</");
        self.0.push_str(name);
        self.0.push('>');
    }

    fn text(&mut self, s: &str) {
        for c in s.chars() {
            match c {
                '&' => self.0.push_str("&amp;"),
                '<' => self.0.push_str("&lt;"),
                '>' => self.0.push_str("&gt;"),
                '"' => self.0.push_str("&quot;"),
                '\'' => self.0.push_str("&apos;"),
                c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n') => {
                    self.0.push_str(&format!("&#x{:X};", c as u32))
                }
                c => self.0.push(c),
            }
        }
    }

    fn elem(&mut self, name: &str, value: &str) {
        self.open(name);
        self.text(value);
        self.close(name);
    }

    fn body(self) -> Body {
        Body::from(self.0)
    }
}

fn xml_response(x: Xml) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/xml")],
        x.body(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| match parse_range(h, 100) {
            ByteRange::Whole => "whole".to_string(),
            ByteRange::Part(a, b) => format!("{a}-{b}"),
            ByteRange::Unsatisfiable => "416".to_string(),
        };
        assert_eq!(r("bytes=0-9"), "0-9");
        assert_eq!(r("bytes=90-200"), "90-99");
        assert_eq!(r("bytes=95-"), "95-99");
        assert_eq!(r("bytes=-10"), "90-99");
        assert_eq!(r("bytes=-1000"), "0-99");
        assert_eq!(r("bytes=100-"), "416");
        assert_eq!(r("bytes=-0"), "416");
        assert_eq!(r("bytes=5-2"), "whole");
        assert_eq!(r("bytes=0-1,5-6"), "whole");
        assert_eq!(r("items=0-1"), "whole");
        assert_eq!(r("bytes=x-1"), "whole");
    }

    #[test]
    fn keys() {
        assert!(check_key("a/b.gz").is_ok());
        assert_eq!(check_key("a/../b").unwrap_err().code, "InvalidArgument");
        assert_eq!(check_key("..").unwrap_err().code, "InvalidArgument");
        assert_eq!(check_key("a//b").unwrap_err().code, "NoSuchKey");
        assert_eq!(check_key("./a").unwrap_err().code, "NoSuchKey");
        assert_eq!(check_key("a/").unwrap_err().code, "NoSuchKey");
    }

    #[test]
    fn common_prefixes() {
        assert_eq!(common_prefix("e/a/b", "e/", Some("/")), Some("e/a/"));
        assert_eq!(common_prefix("e/a", "e/", Some("/")), None);
        assert_eq!(common_prefix("e/a", "e/", None), None);
        assert_eq!(common_prefix("e/ab-c", "e/", Some("b-")), Some("e/ab-"));
    }

    /// Keys come out in UTF-8 binary order even where `/` sorts after a
    /// sibling's character (`a-c` < `a/b`), and pages resume exactly.
    #[test]
    fn walk_order_and_paging() {
        let dir = std::env::temp_dir().join(format!("hydrant-s3-{}", uuid::Uuid::new_v4()));
        for k in ["a/b", "a-c", "a/d/e", "b", "a0", "é/x"] {
            let p = dir.join(k);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, k).unwrap();
        }
        let list = |after: Option<&str>, max: usize, delimiter: Option<&str>| {
            let mut w = Walker {
                prefix: "",
                delimiter,
                after,
                skip: None,
                max,
                contents: Vec::new(),
                prefixes: Vec::new(),
                truncated: false,
                last: None,
            };
            if let Some(a) = after {
                if common_prefix(a, "", delimiter) == Some(a) {
                    w.skip = Some(a.to_string());
                }
            }
            let _ = w.walk(&dir, "").unwrap();
            let keys: Vec<String> = w.contents.iter().map(|o| o.key.clone()).collect();
            (keys, w.prefixes, w.truncated, w.last)
        };
        let mut expected = vec!["a/b", "a-c", "a/d/e", "b", "a0", "é/x"];
        expected.sort();
        let (all, _, truncated, _) = list(None, 1000, None);
        assert_eq!(all, expected);
        assert!(!truncated);
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (keys, _, truncated, last) = list(after.as_deref(), 2, None);
            paged.extend(keys);
            if !truncated {
                break;
            }
            after = last;
        }
        assert_eq!(paged, expected);
        let mut items = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (keys, prefixes, truncated, last) = list(after.as_deref(), 1, Some("/"));
            items.extend(keys);
            items.extend(prefixes);
            if !truncated {
                break;
            }
            after = last;
        }
        assert_eq!(items, vec!["a-c", "a/", "a0", "b", "é/"]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn encoding() {
        assert_eq!(url_encode("a b+c/é&"), "a%20b%2Bc/%C3%A9%26");
        let mut x = Xml(String::new());
        x.elem("K", "<a&\"b'>\u{1}");
        assert_eq!(x.0, "<K>&lt;a&amp;&quot;b&apos;&gt;&#x1;</K>");
    }
}
