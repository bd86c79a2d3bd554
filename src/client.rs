//! A small Firehose client over AWS JSON 1.1, for the generator and the
//! bench. With AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the
//! environment it signs requests with SigV4 (region from AWS_REGION or
//! AWS_DEFAULT_REGION, else us-east-1), as a hydrant with keys requires;
//! without, it sends them unsigned.

use std::fmt::Write;

use base64::Engine;
use serde_json::Value;

#[derive(Clone)]
pub struct Firehose {
    http: reqwest::Client,
    url: String,
    credentials: Option<Credentials>,
}

/// An access key to sign with, from the environment as the AWS CLI reads it.
#[derive(Clone)]
pub struct Credentials {
    pub key_id: String,
    pub secret: String,
    pub region: String,
}

impl Credentials {
    pub fn from_env() -> Option<Credentials> {
        let key_id = std::env::var("AWS_ACCESS_KEY_ID").ok()?;
        let secret = std::env::var("AWS_SECRET_ACCESS_KEY").ok()?;
        let region = std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into());
        Some(Credentials {
            key_id,
            secret,
            region,
        })
    }

    /// The signed headers for a request to `url` with `headers` and `body`.
    pub fn sign(
        &self,
        service: &str,
        method: &axum::http::Method,
        url: &str,
        headers: Vec<(String, String)>,
        body: &[u8],
    ) -> Vec<(String, String)> {
        let parsed: reqwest::Url = url.parse().expect("a valid URL");
        let host = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str().unwrap_or("")),
            None => parsed.host_str().unwrap_or("").to_string(),
        };
        let path_and_query = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_string(),
        };
        let uri: axum::http::Uri = path_and_query.parse().expect("a valid path");
        let mut headers = headers;
        headers.push(("host".into(), host));
        crate::api::auth::sign(
            &self.key_id,
            &self.secret,
            &self.region,
            service,
            method,
            &uri,
            headers,
            body,
            chrono::Utc::now(),
        )
        .into_iter()
        .filter(|(k, _)| k != "host")
        .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message}")]
    Aws {
        status: u16,
        code: String,
        message: String,
    },
    #[error("request to {url} failed: {err}")]
    Http { url: String, err: reqwest::Error },
    #[error("unreadable response: {0}")]
    Response(String),
}

impl ClientError {
    /// Worth retrying: the server said so (5xx) or did not answer.
    pub fn retryable(&self) -> bool {
        match self {
            ClientError::Aws { status, .. } => *status >= 500,
            ClientError::Http { .. } => true,
            ClientError::Response(_) => false,
        }
    }
}

/// Builds a PutRecordBatch body without an intermediate JSON tree.
pub fn batch_body(stream: &str, records: &[Vec<u8>]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut s =
        String::with_capacity(64 + records.iter().map(|r| r.len() * 4 / 3 + 16).sum::<usize>());
    write!(
        s,
        r#"{{"DeliveryStreamName":{},"Records":["#,
        serde_json::to_string(stream).unwrap()
    )
    .unwrap();
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(r#"{"Data":""#);
        b64.encode_string(r, &mut s);
        s.push_str("\"}");
    }
    s.push_str("]}");
    s.into_bytes()
}

impl Firehose {
    pub fn new(endpoint: &str) -> Firehose {
        Firehose {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .tcp_nodelay(true)
                .build()
                .expect("an HTTP client"),
            url: endpoint.trim_end_matches('/').to_string() + "/",
            credentials: Credentials::from_env(),
        }
    }

    /// Calls an operation with a ready body; returns the response JSON.
    pub async fn call(
        &self,
        op: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Value, ClientError> {
        let bytes = self.call_raw(op, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Response(format!(
                "HTTP 200: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })
    }

    /// A call's successful response body, unparsed; an error response is
    /// parsed into `ClientError::Aws`.
    async fn call_raw(
        &self,
        op: &str,
        body: impl Into<bytes::Bytes>,
    ) -> Result<bytes::Bytes, ClientError> {
        let body: bytes::Bytes = body.into();
        let mut headers = vec![
            (
                "x-amz-target".to_string(),
                format!("Firehose_20150804.{op}"),
            ),
            (
                "content-type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
        ];
        if let Some(c) = &self.credentials {
            headers = c.sign(
                "firehose",
                &axum::http::Method::POST,
                &self.url,
                headers,
                &body,
            );
        }
        let mut request = self.http.post(&self.url);
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let resp = request
            .body(body)
            .send()
            .await
            .map_err(|err| ClientError::Http {
                url: self.url.clone(),
                err,
            })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|err| ClientError::Http {
            url: self.url.clone(),
            err,
        })?;
        if status == 200 {
            return Ok(bytes);
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Response(format!(
                "HTTP {status}: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        let code = v["__type"].as_str().unwrap_or("Unknown");
        Err(ClientError::Aws {
            status,
            code: code.rsplit('#').next().unwrap_or(code).to_string(),
            message: v["message"]
                .as_str()
                .or(v["Message"].as_str())
                .unwrap_or("")
                .to_string(),
        })
    }

    /// PutRecordBatch; returns the indices of the records that failed.
    pub async fn put_batch_body(
        &self,
        body: impl Into<bytes::Bytes>,
    ) -> Result<Vec<usize>, ClientError> {
        /// The count alone: the 500 record ids are skipped, not built
        /// (a load generator's client shares the machine it measures).
        #[derive(serde::Deserialize)]
        struct Count {
            #[serde(rename = "FailedPutCount")]
            failed: u64,
        }
        let bytes = self.call_raw("PutRecordBatch", body).await?;
        let malformed = |e: serde_json::Error| {
            ClientError::Response(format!(
                "PutRecordBatch: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        };
        let count: Count = serde_json::from_slice(&bytes).map_err(malformed)?;
        if count.failed == 0 {
            return Ok(vec![]);
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(malformed)?;
        Ok(v["RequestResponses"]
            .as_array()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .filter(|(_, r)| r.get("ErrorCode").is_some())
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn put_record(&self, stream: &str, data: &[u8]) -> Result<(), ClientError> {
        let body = serde_json::json!({
            "DeliveryStreamName": stream,
            "Record": { "Data": base64::engine::general_purpose::STANDARD.encode(data) }
        });
        self.call("PutRecord", body.to_string().into_bytes())
            .await
            .map(|_| ())
    }

    pub async fn stream_exists(&self, stream: &str) -> Result<bool, ClientError> {
        let body = serde_json::json!({ "DeliveryStreamName": stream })
            .to_string()
            .into_bytes();
        match self.call("DescribeDeliveryStream", body).await {
            Ok(_) => Ok(true),
            Err(ClientError::Aws { code, .. }) if code == "ResourceNotFoundException" => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub async fn create(&self, request: &Value) -> Result<(), ClientError> {
        self.call("CreateDeliveryStream", request.to_string().into_bytes())
            .await
            .map(|_| ())
    }
}
