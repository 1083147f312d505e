//! Errors over HTTP: the status of each [`ErrorKind`], the `{error, message, details}` body (and its OpenAPI
//! schema), and the JSON extractor that reports bad input with it.
//!
//! 5xx bodies never carry internals: the cause is logged once, here, inside the request's span.

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, parse_json};

/// Every error's body: `{error, message, details}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `not_found`, `validation_error`, `invalid_json`, `budget_exceeded`,
    /// `rate_limited`, `unknown_model`, `upstream_error`, `upstream_timeout`.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// Structured context: the offending `field` (or JSON `path`), limits, available models; `{}` when none.
    pub details: serde_json::Value,
}

/// The HTTP status of an error kind.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::NotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::UnsupportedType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// Logs an error once, where it becomes a response: 5xx at `error` with the internal cause, the rest at `debug`.
pub fn log(err: &Error) {
    let status = status_of(err.kind);
    if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            error = %err.error,
            cause = err.cause.as_deref().unwrap_or(""),
            "{}",
            err.message
        );
    } else {
        tracing::debug!(status = status.as_u16(), error = %err.error, "{}", err.message);
    }
}

/// Sets `Retry-After` (429, 503) and, for 401, `WWW-Authenticate: Bearer` (RFC 6750 §3).
pub fn add_headers(err: &Error, response: &mut Response) {
    if let Some(secs) = err.retry_after_secs {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    if err.kind == ErrorKind::Unauthenticated {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
}

impl IntoResponse for Error {
    /// The status of its kind, `{error, message, details}`, its headers (`Retry-After`), and the error itself in
    /// the response's extensions, so that a surface with its own error shape (`/v1`) can write it its way.
    fn into_response(self) -> Response {
        log(&self);
        let mut response = (status_of(self.kind), axum::Json(self.body())).into_response();
        add_headers(&self, &mut response);
        response.extensions_mut().insert(self);
        response
    }
}

/// A JSON body extractor whose rejections are [`Error`]s naming the bad field's path
/// (`messages[0].content: invalid type: ...`).
///
/// Accepts `application/json` (and `+json`) or no content type; anything else is 415. Every body chatgate takes
/// is a JSON object: anything else (an array, which serde would read as a struct's fields in order, a string,
/// a number) is 400 `invalid_json`. A NUL character anywhere is 400 `validation_error` naming its field.
#[derive(Debug, Clone, Copy, Default)]
pub struct AppJson<T>(pub T);

impl<S, T> FromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let content_type = content_type.to_str().unwrap_or("");
            let essence = content_type.split(';').next().unwrap_or("").trim();
            if !(essence == "application/json" || essence.ends_with("+json")) {
                return Err(Error::new(
                    ErrorKind::UnsupportedType,
                    "unsupported_media_type",
                    format!("expected Content-Type: application/json, got '{content_type}'"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::payload_too_large("request body is larger than server.max_body_bytes")
            } else {
                Error::new(ErrorKind::Invalid, "invalid_body", rejection.body_text())
            }
        })?;
        require_object(&bytes)?;
        parse_json(&bytes).map(AppJson)
    }
}

/// An optional JSON body: an empty body is `None`.
impl<S, T> axum::extract::OptionalFromRequest<S> for AppJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            Error::new(ErrorKind::Invalid, "invalid_body", rejection.body_text())
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        require_object(&bytes)?;
        parse_json(&bytes).map(|v| Some(AppJson(v)))
    }
}

/// 400 unless the body is (or starts like) a JSON object; what follows the `{` is the parser's to judge.
fn require_object(bytes: &[u8]) -> Result<(), Error> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        Some(_) => Err(Error::new(
            ErrorKind::Invalid,
            "invalid_json",
            "the request body must be a JSON object",
        )
        .with_details(serde_json::json!({ "path": "." }))),
        // Empty: the parser says so, as it always has.
        None => Ok(()),
    }
}
