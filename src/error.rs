//! The one error type of the HTTP API and the JSON extractor that reports bad input with it.
//!
//! Every error answers `{"error": "<snake_case_kind>", "message": "<human readable>", "details": {...}}` with the
//! status that fits. 5xx bodies never carry internals: the cause is logged once, here, inside the request's span.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::providers::ProviderError;
use crate::store::StoreError;

/// An API error: status, machine-readable kind, human message and structured details.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    /// snake_case kind, e.g. `not_found`, `validation_error`, `upstream_timeout`.
    pub error: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds, sent as `Retry-After` (429, 503).
    pub retry_after_secs: Option<u64>,
    /// Internal cause, logged and never shown.
    cause: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            details: json!({}),
            retry_after_secs: None,
            cause: None,
        }
    }

    #[must_use]
    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// 400 `validation_error` about one field.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            StatusCode::BAD_REQUEST,
            "validation_error",
            format!("{field}: {message}"),
        )
        .with_details(json!({ "field": field }))
    }

    /// 404 `not_found`; used for another user's resource too, so that its existence is not confirmed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 500 `internal_error`; `cause` goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error",
        );
        err.cause = Some(cause.to_string());
        err
    }

    /// 503 `unavailable`; `cause` goes to the log only.
    pub fn unavailable(message: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        err.cause = Some(cause.to_string());
        err
    }

    /// The body, as sent.
    pub fn body(&self) -> Value {
        json!({ "error": self.error, "message": self.message, "details": self.details })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.error,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(
                status = self.status.as_u16(),
                error = self.error,
                cause = self.cause.as_deref().unwrap_or(""),
                "{}",
                self.message
            );
        } else {
            tracing::debug!(
                status = self.status.as_u16(),
                error = self.error,
                "{}",
                self.message
            );
        }
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => ApiError::conflict(message),
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Database(e) => ApiError::unavailable("the database is unavailable", e),
        }
    }
}

impl From<&ProviderError> for ApiError {
    fn from(err: &ProviderError) -> Self {
        let status = err.http_status();
        let mut api = ApiError::new(status, err.kind(), err.to_string());
        api.retry_after_secs = err.retry_after().map(|d| d.as_secs_f64().ceil() as u64);
        api
    }
}

/// A JSON body extractor whose rejections are [`ApiError`]s naming the bad field's path
/// (`messages[0].content: invalid type: ...`).
///
/// Accepts `application/json` (and `+json`) or no content type; anything else is 415.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or("");
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("expected Content-Type: application/json, got '{content_type}'"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large("request body is larger than server.max_body_bytes")
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    rejection.body_text(),
                )
            }
        })?;
        parse_json(&bytes).map(AppJson)
    }
}

/// An optional JSON body: an empty body is `None`.
impl<S, T> axum::extract::OptionalFromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                rejection.body_text(),
            )
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        parse_json(&bytes).map(|v| Some(AppJson(v)))
    }
}

/// Parses JSON with the path of the offending field in the error.
///
/// # Errors
/// 400 `invalid_json` with `details.path`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(invalid_json)
}

/// Like [`parse_json`], from an already parsed JSON value.
///
/// # Errors
/// 400 `invalid_json` with `details.path`.
pub fn parse_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(invalid_json)
}

fn invalid_json(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let message = if path == "." {
        inner.to_string()
    } else {
        format!("{path}: {inner}")
    };
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
        .with_details(json!({ "path": path }))
}
