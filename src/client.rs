//! A small Firehose client over AWS JSON 1.1, for the generator and the
//! bench. It speaks to any Firehose-compatible endpoint that takes unsigned
//! requests (hydrant does); it does not sign requests.

use std::fmt::Write;

use base64::Engine;
use serde_json::Value;

#[derive(Clone)]
pub struct Firehose {
    http: reqwest::Client,
    url: String,
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
        }
    }

    /// Calls an operation with a ready body; returns the response JSON.
    pub async fn call(
        &self,
        op: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<Value, ClientError> {
        let resp = self
            .http
            .post(&self.url)
            .header("x-amz-target", format!("Firehose_20150804.{op}"))
            .header("content-type", "application/x-amz-json-1.1")
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
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Response(format!(
                "HTTP {status}: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if status == 200 {
            return Ok(v);
        }
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
        body: impl Into<reqwest::Body>,
    ) -> Result<Vec<usize>, ClientError> {
        let v = self.call("PutRecordBatch", body).await?;
        let failed = v["FailedPutCount"].as_u64().unwrap_or(0);
        if failed == 0 {
            return Ok(vec![]);
        }
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
