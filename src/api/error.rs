//! Every error the front door can return, mapped to its AWS error type in one
//! place. The body is AWS JSON 1.1's error shape, `{"__type", "message"}`,
//! which the SDKs turn into their exception classes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: &'static str,
    pub status: StatusCode,
    pub message: String,
}

macro_rules! kinds {
    ($($fn:ident => $code:literal, $status:ident;)*) => {
        impl ApiError {
            $(pub fn $fn(message: impl Into<String>) -> Self {
                ApiError { code: $code, status: StatusCode::$status, message: message.into() }
            })*
        }
    };
}

kinds! {
    // The body is not the JSON the operation expects: not JSON at all, a
    // field of the wrong type, bad base64, or the wrong content type.
    serialization => "SerializationException", BAD_REQUEST;
    // A value breaks the API model: a missing required field, a name that
    // does not match its pattern, a number out of range, too many records.
    validation => "ValidationException", BAD_REQUEST;
    // A well-formed request that Firehose's rules (or hydrant's support)
    // refuse: an unsupported option, a bad prefix, an oversize record.
    invalid_argument => "InvalidArgumentException", BAD_REQUEST;
    not_found => "ResourceNotFoundException", BAD_REQUEST;
    in_use => "ResourceInUseException", BAD_REQUEST;
    limit_exceeded => "LimitExceededException", BAD_REQUEST;
    unknown_operation => "UnknownOperationException", BAD_REQUEST;
    // hydrant cannot take records right now (log full, disk full, shutting
    // down). 503 makes every SDK back off and retry.
    unavailable => "ServiceUnavailableException", SERVICE_UNAVAILABLE;
    // The body did not arrive in time (http.body_timeout_seconds). SDKs
    // retry this code.
    request_timeout => "RequestTimeoutException", REQUEST_TIMEOUT;
    internal => "InternalFailure", INTERNAL_SERVER_ERROR;
    // Authentication and authorization, with the codes AWS's JSON services
    // use, so SDKs raise what they raise against AWS.
    missing_token => "MissingAuthenticationTokenException", FORBIDDEN;
    incomplete_signature => "IncompleteSignatureException", BAD_REQUEST;
    unrecognized_client => "UnrecognizedClientException", BAD_REQUEST;
    invalid_signature => "InvalidSignatureException", BAD_REQUEST;
    access_denied => "AccessDeniedException", BAD_REQUEST;
}

impl From<super::auth::Denied> for ApiError {
    fn from(d: super::auth::Denied) -> ApiError {
        use super::auth::Denied::*;
        let message = d.to_string();
        match d {
            Missing => ApiError::missing_token(message),
            Malformed(_) => ApiError::incomplete_signature(message),
            UnknownKey(_) => ApiError::unrecognized_client(message),
            BadSignature | Skewed(_) | Expired(_) => ApiError::invalid_signature(message),
            Forbidden(_) => ApiError::access_denied(message),
        }
    }
}

impl From<crate::spec::SpecError> for ApiError {
    fn from(e: crate::spec::SpecError) -> ApiError {
        use crate::spec::SpecError::*;
        match e {
            Malformed(m) => ApiError::serialization(m),
            Invalid(m) => ApiError::validation(m),
            Refused(m) => ApiError::invalid_argument(m),
        }
    }
}

impl From<crate::stream::AdminError> for ApiError {
    fn from(e: crate::stream::AdminError) -> ApiError {
        use crate::stream::AdminError::*;
        match e {
            Spec(e) => e.into(),
            Exists(m) => ApiError::in_use(m),
            NotFound(m) => ApiError::not_found(m),
            Declared(m) => ApiError::invalid_argument(m),
            Unavailable(m) => ApiError::unavailable(m),
            Failed(m) => ApiError::internal(m),
        }
    }
}

impl ApiError {
    /// Adds what went wrong underneath to the message.
    pub fn with_cause(mut self, cause: &dyn std::error::Error) -> Self {
        self.message = format!("{} ({cause})", self.message);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "__type": self.code, "message": self.message });
        (
            self.status,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", self.code),
            ],
            body.to_string(),
        )
            .into_response()
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}
