//! Who may do what: AWS Signature Version 4 on every AWS API request, a
//! login session for the dashboard and hydrant's own `/-/` API, and a bearer
//! token for `/-/metrics`.
//!
//! With no keys in the config (`auth.keys`), nothing is checked: hydrant
//! then listens on loopback only, unless `--allow-unauthenticated-network`
//! says otherwise. With keys, every request but `/-/ready`, `/-/healthy`,
//! the login and the dashboard's static files must prove a key:
//!
//! * **AWS APIs** (Firehose, S3): the request is signed with SigV4 as the
//!   SDKs and the AWS CLI sign it, in the Authorization header or, for S3
//!   GETs, in a presigned URL's query string. hydrant rebuilds the canonical
//!   request from what arrived (method, path, sorted query, the signed
//!   headers, the SHA-256 of the body), derives the signing key from the
//!   key's secret and the credential scope (date, any region, the service),
//!   and compares signatures in constant time. S3 GETs also take the older
//!   Signature Version 2 presigned URLs that boto3 and `aws s3 presign`
//!   make by default. The signing time must be
//!   within 15 minutes of hydrant's clock (a presigned URL: within its
//!   `X-Amz-Expires`). Failures get the service's own error codes (see
//!   [`Denied`]), so SDKs raise what they would raise against AWS.
//! * **The dashboard and `/-/` API**: `POST /-/login` with a key's id and
//!   secret sets a session cookie (random, `HttpOnly`, `SameSite=Strict`,
//!   `Secure` under TLS, 12 hours). A request that changes something with a
//!   cookie must come from hydrant's own page: its `Origin`, when present,
//!   must be hydrant's. Scripts may sign `/-/` requests with SigV4 instead
//!   (service `hydrant`), as `hydrant query` does.
//! * **`/-/metrics`**: `Authorization: Bearer <auth.metrics_token>`.
//!
//! Each key may be limited, in the spirit of an IAM policy, to actions
//! (`firehose:PutRecord*`, `s3:GetObject`, `hydrant:Query`, ...) and to
//! stream and bucket name patterns (`*` matches any run of characters).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, Method, Uri};
use chrono::{DateTime, NaiveDateTime, Utc};
use ring::hmac;
use serde::Deserialize;

/// How far a request's signing time may be from hydrant's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest a presigned URL may be valid (S3's limit, 7 days).
const MAX_PRESIGN_SECONDS: i64 = 604_800;
/// How long a dashboard session lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept at once; the oldest go first.
const MAX_SESSIONS: usize = 10_000;
/// The session cookie's name.
pub const COOKIE: &str = "hydrant_session";

/// `auth:` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The keys that may call hydrant. None: requests are not authenticated.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// The bearer token `/-/metrics` takes (or `metrics_token_env`: the
    /// environment variable that holds it). Without either, with keys set,
    /// `/-/metrics` is refused.
    pub metrics_token: Option<String>,
    pub metrics_token_env: Option<String>,
}

/// One access key, as `aws configure` knows them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub access_key_id: String,
    /// The secret; or `secret_access_key_env`, the environment variable that
    /// holds it, so that no secret need sit in the file.
    pub secret_access_key: Option<String>,
    pub secret_access_key_env: Option<String>,
    /// Actions the key may take, as patterns: `firehose:<Operation>`,
    /// `s3:ListAllMyBuckets`, `s3:ListBucket`, `s3:GetObject`,
    /// `hydrant:Read` (the dashboard's data), `hydrant:Query` (SQL),
    /// `hydrant:Snapshot` (snapshot a database source again). Default `*`.
    #[serde(default = "everything")]
    pub actions: Vec<String>,
    /// Delivery streams the key may act on (and query). Default `*`.
    #[serde(default = "everything")]
    pub streams: Vec<String>,
    /// Buckets the key may read through the S3 API. Default `*`.
    #[serde(default = "everything")]
    pub buckets: Vec<String>,
}

fn everything() -> Vec<String> {
    vec!["*".into()]
}

/// A key, checked.
#[derive(Debug, Clone)]
pub struct Key {
    pub id: String,
    secret: String,
    actions: Vec<String>,
    streams: Vec<String>,
    buckets: Vec<String>,
}

impl Key {
    /// May this key take `action` (e.g. `firehose:PutRecord`)?
    pub fn may(&self, action: &str) -> bool {
        self.actions
            .iter()
            .any(|p| glob(&p.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    }

    pub fn may_stream(&self, stream: &str) -> bool {
        self.streams.iter().any(|p| glob(p, stream))
    }

    pub fn may_bucket(&self, bucket: &str) -> bool {
        self.buckets.iter().any(|p| glob(p, bucket))
    }
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Why a request was refused. The front doors turn each into their
/// service's error: Firehose's JSON codes or S3's XML ones.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// No signature at all.
    Missing,
    /// A signature that cannot be read.
    Malformed(String),
    UnknownKey(String),
    BadSignature,
    /// Signed too long ago or too far ahead (`RequestTimeTooSkewed`).
    Skewed(String),
    /// A presigned URL past its expiry.
    Expired(String),
    /// A valid key without the permission.
    Forbidden(String),
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing => f.write_str("Missing Authentication Token: hydrant has access keys configured; sign the request with one"),
            Denied::Malformed(m) => write!(f, "malformed signature: {m}"),
            Denied::UnknownKey(k) => write!(f, "The security token included in the request is invalid: no access key {k:?} is configured"),
            Denied::BadSignature => f.write_str("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."),
            Denied::Skewed(m) | Denied::Expired(m) | Denied::Forbidden(m) => f.write_str(m),
        }
    }
}

/// The keys, and the sessions logged in with them.
pub struct Auth {
    keys: HashMap<String, Key>,
    metrics_token: Option<String>,
    sessions: Mutex<HashMap<String, (String, Instant)>>,
    pub secure_cookies: bool,
}

impl Auth {
    pub fn new(c: &AuthConfig, secure_cookies: bool) -> Result<Auth, String> {
        let mut keys = HashMap::new();
        for (i, k) in c.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            let id_ok = (16..=128).contains(&k.access_key_id.len())
                && k.access_key_id.bytes().all(|b| b.is_ascii_alphanumeric());
            if !id_ok {
                return Err(format!(
                    "{at}.access_key_id must be 16 to 128 letters and digits, like AWS's"
                ));
            }
            let secret = match (&k.secret_access_key, &k.secret_access_key_env) {
                (Some(s), None) => s.clone(),
                (None, Some(var)) => std::env::var(var).map_err(|_| {
                    format!("{at}.secret_access_key_env: the environment variable {var} is not set")
                })?,
                _ => {
                    return Err(format!(
                        "{at}: give secret_access_key or secret_access_key_env (one of them)"
                    ))
                }
            };
            if secret.len() < 16 || secret.len() > 256 {
                return Err(format!("{at}: the secret must be 16 to 256 characters"));
            }
            for a in &k.actions {
                let known = ["firehose:", "s3:", "hydrant:"]
                    .iter()
                    .any(|p| a.to_ascii_lowercase().starts_with(p));
                if a != "*" && !known {
                    return Err(format!(
                        "{at}.actions: {a:?} is not an action pattern (firehose:..., s3:..., hydrant:..., or *)"
                    ));
                }
            }
            let key = Key {
                id: k.access_key_id.clone(),
                secret,
                actions: k.actions.clone(),
                streams: k.streams.clone(),
                buckets: k.buckets.clone(),
            };
            if keys.insert(key.id.clone(), key).is_some() {
                return Err(format!(
                    "{at}: access key {} is declared twice",
                    k.access_key_id
                ));
            }
        }
        let metrics_token = match (&c.metrics_token, &c.metrics_token_env) {
            (Some(t), None) => Some(t.clone()),
            (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                format!("auth.metrics_token_env: the environment variable {var} is not set")
            })?),
            (None, None) => None,
            _ => return Err("auth: give metrics_token or metrics_token_env, not both".into()),
        };
        if metrics_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err("auth.metrics_token must be at least 16 characters".into());
        }
        Ok(Auth {
            keys,
            metrics_token,
            sessions: Mutex::new(HashMap::new()),
            secure_cookies,
        })
    }

    /// True when requests must prove a key.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a SigV4 signature for `service` (`firehose`, `s3`, `hydrant`).
    /// `body` is the request body, hashed unless the client said it did not
    /// sign it (S3's `UNSIGNED-PAYLOAD`); None for a request read without one.
    pub fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Option<&[u8]>,
        service: &str,
    ) -> Result<&Key, Denied> {
        if service == "s3" && query_param(uri, "AWSAccessKeyId").is_some() {
            return self.verify_v2_query(method, uri, headers);
        }
        let presigned = query_param(uri, "X-Amz-Signature").is_some();
        let sig = if presigned {
            Signature::from_query(uri)?
        } else {
            Signature::from_header(headers)?
        };
        let key = self
            .keys
            .get(&sig.key_id)
            .ok_or_else(|| Denied::UnknownKey(sig.key_id.clone()))?;
        let (date, region, scope_service) = (&sig.scope[0], &sig.scope[1], &sig.scope[2]);
        if scope_service != service {
            return Err(Denied::Malformed(format!(
                "Credential should be scoped to correct service: '{service}', not '{scope_service}'"
            )));
        }
        if !sig.amz_date.starts_with(date.as_str()) {
            return Err(Denied::Malformed(format!(
                "Date in Credential scope does not match YYYYMMDD from X-Amz-Date ({})",
                sig.amz_date
            )));
        }
        let signed_at = NaiveDateTime::parse_from_str(&sig.amz_date, "%Y%m%dT%H%M%SZ")
            .map_err(|_| {
                Denied::Malformed(format!(
                    "X-Amz-Date {:?} is not YYYYMMDDTHHMMSSZ",
                    sig.amz_date
                ))
            })?
            .and_utc();
        let now = Utc::now();
        match sig.expires {
            Some(expires) => {
                if signed_at - now > chrono::Duration::from_std(MAX_SKEW).unwrap() {
                    return Err(Denied::Skewed(format!(
                        "The difference between the request time ({signed_at}) and the current time ({now}) is too large"
                    )));
                }
                if now > signed_at + chrono::Duration::seconds(expires) {
                    return Err(Denied::Expired(format!(
                        "Request has expired: it was valid until {}",
                        signed_at + chrono::Duration::seconds(expires)
                    )));
                }
            }
            None => {
                let window = chrono::Duration::from_std(MAX_SKEW).unwrap();
                let stamp = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%SZ").to_string();
                if signed_at < now - window {
                    return Err(Denied::Skewed(format!(
                        "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                        sig.amz_date,
                        stamp(now - window),
                        stamp(now),
                    )));
                }
                if signed_at > now + window {
                    return Err(Denied::Skewed(format!(
                        "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                        sig.amz_date,
                        stamp(now + window),
                        stamp(now),
                    )));
                }
            }
        }
        let payload = match headers
            .get("x-amz-content-sha256")
            .and_then(|v| v.to_str().ok())
        {
            _ if presigned => "UNSIGNED-PAYLOAD".to_string(),
            Some("UNSIGNED-PAYLOAD") if service == "s3" => "UNSIGNED-PAYLOAD".to_string(),
            Some(claimed) => {
                let actual = hex(&sha256(body.unwrap_or_default()));
                if claimed != actual {
                    return Err(Denied::BadSignature);
                }
                actual
            }
            None => hex(&sha256(body.unwrap_or_default())),
        };
        let canonical = canonical_request(
            method,
            uri,
            headers,
            &sig.signed_headers,
            &payload,
            service,
            presigned,
        )?;
        let expected = signature(
            &key.secret,
            &sig.amz_date,
            date,
            region,
            service,
            &canonical,
        );
        // Constant time: a timing difference must not tell how much matched.
        let given = unhex(&sig.signature).ok_or(Denied::BadSignature)?;
        let expected = unhex(&expected).expect("hex of a SHA-256");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], &expected[..])) {
            return Err(Denied::BadSignature);
        }
        Ok(key)
    }

    /// A presigned URL in S3's older query-string form (Signature Version
    /// 2), which boto3's `generate_presigned_url` and `aws s3 presign` make
    /// by default: `AWSAccessKeyId`, `Expires` (epoch seconds) and
    /// `Signature`, a base64 HMAC-SHA1 of the method, Content-MD5,
    /// Content-Type, `Expires`, the `x-amz-` headers and the resource.
    fn verify_v2_query(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<&Key, Denied> {
        use base64::Engine;
        let get = |k: &str| {
            query_param(uri, k)
                .ok_or_else(|| Denied::Malformed(format!("a presigned URL needs {k}")))
        };
        let key_id = get("AWSAccessKeyId")?;
        let expires = get("Expires")?;
        let given = base64::engine::general_purpose::STANDARD
            .decode(get("Signature")?)
            .map_err(|_| Denied::Malformed("Signature is not base64".into()))?;
        let key = self
            .keys
            .get(&key_id)
            .ok_or_else(|| Denied::UnknownKey(key_id.clone()))?;
        let until: i64 = expires
            .parse()
            .map_err(|_| Denied::Malformed("Expires must be seconds since the epoch".into()))?;
        if Utc::now().timestamp() > until {
            return Err(Denied::Expired(format!(
                "Request has expired: it was valid until {}",
                DateTime::<Utc>::from_timestamp(until, 0).unwrap_or_default()
            )));
        }
        let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mut amz: Vec<(String, String)> = headers
            .iter()
            .filter(|(n, _)| n.as_str().starts_with("x-amz-"))
            .map(|(n, v)| {
                (
                    n.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).trim().to_string(),
                )
            })
            .collect();
        amz.sort();
        // The subresources S3 signs, and the response overrides.
        const SIGNED: [&str; 10] = [
            "acl",
            "location",
            "torrent",
            "versionId",
            "response-cache-control",
            "response-content-disposition",
            "response-content-encoding",
            "response-content-language",
            "response-content-type",
            "response-expires",
        ];
        let mut sub: Vec<(String, Option<String>)> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter_map(|p| {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (decode(k), Some(decode(v))),
                    None => (decode(p), None),
                };
                SIGNED.contains(&k.as_str()).then_some((k, v))
            })
            .collect();
        sub.sort();
        let mut resource = uri.path().to_string();
        for (i, (k, v)) in sub.iter().enumerate() {
            resource.push(if i == 0 { '?' } else { '&' });
            resource.push_str(k);
            if let Some(v) = v {
                resource.push('=');
                resource.push_str(v);
            }
        }
        let amz: String = amz.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
        let to_sign = format!(
            "{method}\n{}\n{}\n{expires}\n{amz}{resource}",
            header("content-md5"),
            header("content-type")
        );
        let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key.secret.as_bytes());
        let expected = hmac::sign(&k, to_sign.as_bytes());
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&given[..], expected.as_ref())) {
            return Err(Denied::BadSignature);
        }
        Ok(key)
    }

    /// The key a login names, if its secret is right.
    pub fn login(&self, key_id: &str, secret: &str) -> Option<String> {
        let key = self.keys.get(key_id)?;
        let a = sha256(key.secret.as_bytes());
        let b = sha256(secret.as_bytes());
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..])) {
            return None;
        }
        let token = random_token();
        let mut sessions = self.sessions.lock().unwrap();
        let now = Instant::now();
        sessions.retain(|_, (_, until)| *until > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), (key.id.clone(), now + SESSION));
        Some(token)
    }

    pub fn logout(&self, token: &str) {
        self.sessions.lock().unwrap().remove(token);
    }

    /// The key behind a session cookie, while the session lasts.
    pub fn session(&self, headers: &HeaderMap) -> Option<&Key> {
        let token = cookie(headers, COOKIE)?;
        let sessions = self.sessions.lock().unwrap();
        let (id, until) = sessions.get(token)?;
        (*until > Instant::now())
            .then(|| self.keys.get(id))
            .flatten()
    }

    /// Does `headers` carry the metrics bearer token?
    pub fn metrics(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.metrics_token else {
            return false;
        };
        let given = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let (a, b) = (sha256(given.as_bytes()), sha256(token.as_bytes()));
        bool::from(subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]))
    }

    pub fn has_metrics_token(&self) -> bool {
        self.metrics_token.is_some()
    }
}

/// The parts of a SigV4 signature.
struct Signature {
    key_id: String,
    /// date, region, service.
    scope: [String; 3],
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// A presigned URL's validity in seconds.
    expires: Option<i64>,
}

impl Signature {
    fn from_header(headers: &HeaderMap) -> Result<Signature, Denied> {
        let Some(auth) = headers.get("authorization") else {
            return Err(Denied::Missing);
        };
        let auth = auth
            .to_str()
            .map_err(|_| Denied::Malformed("the Authorization header is not text".into()))?;
        let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
            Denied::Malformed("only AWS4-HMAC-SHA256 (Signature Version 4) is accepted".into())
        })?;
        let mut parts: HashMap<&str, &str> = HashMap::new();
        for p in rest.split(',') {
            if let Some((k, v)) = p.trim().split_once('=') {
                parts.insert(k, v);
            }
        }
        let get = |k: &str| {
            parts.get(k).copied().ok_or_else(|| {
                Denied::Malformed(format!("Authorization header requires '{k}' parameter"))
            })
        };
        let amz_date = headers
            .get("x-amz-date")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Denied::Malformed(
                    "Authorization header requires existence of an 'X-Amz-Date' header".into(),
                )
            })?
            .to_string();
        Signature::new(
            get("Credential")?,
            get("SignedHeaders")?,
            get("Signature")?,
            amz_date,
            None,
        )
    }

    fn from_query(uri: &Uri) -> Result<Signature, Denied> {
        let get = |k: &str| {
            query_param(uri, k)
                .ok_or_else(|| Denied::Malformed(format!("a presigned URL needs {k}")))
        };
        if get("X-Amz-Algorithm")? != "AWS4-HMAC-SHA256" {
            return Err(Denied::Malformed(
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256".into(),
            ));
        }
        let expires: i64 = get("X-Amz-Expires")?
            .parse()
            .ok()
            .filter(|e| (1..=MAX_PRESIGN_SECONDS).contains(e))
            .ok_or_else(|| {
                Denied::Malformed(format!("X-Amz-Expires must be 1 to {MAX_PRESIGN_SECONDS}"))
            })?;
        Signature::new(
            &get("X-Amz-Credential")?,
            &get("X-Amz-SignedHeaders")?,
            &get("X-Amz-Signature")?,
            get("X-Amz-Date")?,
            Some(expires),
        )
    }

    fn new(
        credential: &str,
        signed_headers: &str,
        signature: &str,
        amz_date: String,
        expires: Option<i64>,
    ) -> Result<Signature, Denied> {
        let c: Vec<&str> = credential.split('/').collect();
        if c.len() != 5 || c[4] != "aws4_request" || c.iter().any(|p| p.is_empty() || p.len() > 128)
        {
            return Err(Denied::Malformed(format!(
                "Credential {credential:?} is not KEY/YYYYMMDD/REGION/SERVICE/aws4_request"
            )));
        }
        let signed_headers: Vec<String> = signed_headers.split(';').map(str::to_string).collect();
        if signed_headers.len() > 64 || !signed_headers.iter().any(|h| h == "host") {
            return Err(Denied::Malformed("SignedHeaders must include host".into()));
        }
        Ok(Signature {
            key_id: c[0].to_string(),
            scope: [c[1].to_string(), c[2].to_string(), c[3].to_string()],
            signed_headers,
            signature: signature.to_string(),
            amz_date,
            expires,
        })
    }
}

/// SigV4's canonical request.
fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed: &[String],
    payload: &str,
    service: &str,
    presigned: bool,
) -> Result<String, Denied> {
    // S3 signs the path as sent; other services encode it once more.
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let path = if service == "s3" {
        path.to_string()
    } else {
        encode(path, false)
    };
    let mut query: Vec<(String, String)> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (encode(&decode(k), true), encode(&decode(v), true))
        })
        .filter(|(k, _)| !(presigned && k == "X-Amz-Signature"))
        .collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| {
                let v = String::from_utf8_lossy(v.as_bytes());
                v.split_whitespace().collect::<Vec<_>>().join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(Denied::Malformed(format!(
                "signed header {name:?} is missing"
            )));
        }
        canonical_headers += &format!("{name}:{}\n", values.join(","));
    }
    Ok(format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{}\n{payload}",
        query.join("&"),
        signed.join(";")
    ))
}

/// The hex signature of a canonical request.
pub fn signature(
    secret: &str,
    amz_date: &str,
    date: &str,
    region: &str,
    service: &str,
    canonical: &str,
) -> String {
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        hex(&sha256(canonical.as_bytes()))
    );
    let mut k = format!("AWS4{secret}").into_bytes();
    for part in [date, region, service, "aws4_request"] {
        k = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    hex(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), to_sign.as_bytes()).as_ref())
}

/// Signs a request the way the SDKs do (for hydrant's own clients): the
/// headers to add (`x-amz-date`, `x-amz-content-sha256`, `authorization`).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    key_id: &str,
    secret: &str,
    region: &str,
    service: &str,
    method: &Method,
    uri: &Uri,
    mut headers: Vec<(String, String)>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Vec<(String, String)> {
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let payload = hex(&sha256(body));
    headers.push(("x-amz-date".into(), amz_date.clone()));
    headers.push(("x-amz-content-sha256".into(), payload.clone()));
    let mut map = HeaderMap::new();
    for (k, v) in &headers {
        if let (Ok(k), Ok(v)) = (
            axum::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            axum::http::HeaderValue::from_str(v),
        ) {
            map.append(k, v);
        }
    }
    let mut signed: Vec<String> = headers
        .iter()
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    signed.sort();
    signed.dedup();
    let canonical = canonical_request(method, uri, &map, &signed, &payload, service, false)
        .expect("every signed header is present");
    let date = &amz_date[..8];
    let sig = signature(secret, &amz_date, date, region, service, &canonical);
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={key_id}/{date}/{region}/{service}/aws4_request, SignedHeaders={}, Signature={sig}",
            signed.join(";")
        ),
    ));
    headers
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// RFC 3986 percent-encoding as SigV4 wants it: unreserved characters as
/// they are, everything else `%XX`; `/` too when `slash` is set.
fn encode(s: &str, slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| decode(k) == name)
        .map(|(_, v)| decode(v))
}

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source");
    hex(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        for (p, s, ok) in [
            ("*", "", true),
            ("*", "anything", true),
            ("my-event-*", "my-event-staging", true),
            ("my-event-*", "my-event", false),
            ("firehose:put*", "firehose:putrecordbatch", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(glob(p, s), ok, "{p} ~ {s}");
        }
    }

    /// The example in AWS's SigV4 documentation (a GET of IAM ListUsers)
    /// signs to the published signature.
    #[test]
    fn the_documented_example_signs_as_published() {
        let canonical = "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let sig = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830T123600Z",
            "20150830",
            "us-east-1",
            "iam",
            canonical,
        );
        assert_eq!(
            sig,
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    fn header_map(headers: &[(String, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn what_sign_makes_verify_takes_and_a_change_breaks() {
        let c = AuthConfig {
            keys: vec![KeyConfig {
                access_key_id: "AKIAHYDRANTTEST0001".into(),
                secret_access_key: Some("secret-secret-secret".into()),
                secret_access_key_env: None,
                actions: everything(),
                streams: everything(),
                buckets: everything(),
            }],
            ..Default::default()
        };
        let auth = Auth::new(&c, false).unwrap();
        let uri: Uri = "/-/query?format=json".parse().unwrap();
        let body = b"select 1";
        let signed_at = |at: DateTime<Utc>| {
            header_map(&sign(
                "AKIAHYDRANTTEST0001",
                "secret-secret-secret",
                "eu-west-1",
                "hydrant",
                &Method::POST,
                &uri,
                vec![("host".into(), "127.0.0.1:4577".into())],
                body,
                at,
            ))
        };
        let map = signed_at(Utc::now());
        assert!(auth
            .verify(&Method::POST, &uri, &map, Some(body), "hydrant")
            .is_ok());
        assert_eq!(
            auth.verify(&Method::POST, &uri, &map, Some(b"select 2"), "hydrant")
                .err(),
            Some(Denied::BadSignature)
        );
        let other: Uri = "/-/query?format=csv".parse().unwrap();
        assert_eq!(
            auth.verify(&Method::POST, &other, &map, Some(body), "hydrant")
                .err(),
            Some(Denied::BadSignature)
        );
        assert!(matches!(
            auth.verify(&Method::POST, &uri, &map, Some(body), "firehose"),
            Err(Denied::Malformed(_))
        ));
        let map = signed_at(Utc::now() - chrono::Duration::minutes(16));
        assert!(matches!(
            auth.verify(&Method::POST, &uri, &map, Some(body), "hydrant"),
            Err(Denied::Skewed(_))
        ));
    }
}
