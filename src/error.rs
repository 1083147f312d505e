//! The one error type of chatgate's core: what went wrong, in words a client can act on, free of HTTP.
//!
//! Every error is a [`ErrorKind`] (the category: invalid input, not found, rate limited, upstream failure, ...),
//! a snake_case code (`validation_error`, `budget_exceeded`, `upstream_timeout`), a human message and structured
//! details. The HTTP layer (`api::error`) maps the kind to a status and writes `{error, message, details}`; the
//! WebSocket and OpenAI-compatible surfaces write the same fields in their own shapes. An internal cause is kept
//! for the log and never shown.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The category of an [`Error`]; each maps to one HTTP status (in parentheses) in `api::error`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input is malformed or breaks a rule (400).
    Invalid,
    /// No valid credentials (401).
    Unauthenticated,
    /// Valid credentials without the right (403).
    Forbidden,
    /// The resource does not exist, or is not the caller's (404).
    NotFound,
    /// The method does not apply to the resource (405).
    NotAllowed,
    /// The request conflicts with the resource's state (409).
    Conflict,
    /// The input is larger than a configured limit (413).
    TooLarge,
    /// The input's type is not accepted (415).
    UnsupportedType,
    /// The input is well formed but cannot be served (an unknown model, a model without vision) (422).
    Unprocessable,
    /// A rate limit, concurrency cap or budget refuses the request for now (429, with a retry hint).
    RateLimited,
    /// A defect or an unexpected failure; the cause is logged, never shown (500).
    Internal,
    /// The upstream provider failed or answered badly (502).
    Upstream,
    /// A dependency (the database) is unavailable, or the server is shutting down (503).
    Unavailable,
    /// The upstream, or the request as a whole, took too long (504).
    Timeout,
}

/// A chatgate error: kind, machine-readable code, human message and structured details.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub kind: ErrorKind,
    /// snake_case code, e.g. `not_found`, `validation_error`, `upstream_timeout`.
    pub error: Cow<'static, str>,
    pub message: String,
    /// Structured context: the offending `field`, limits, available models; `{}` when none.
    pub details: Value,
    /// Seconds the caller should wait before retrying (rate limits, budgets, upstream hints).
    pub retry_after_secs: Option<u64>,
    /// Internal cause, logged and never shown.
    pub cause: Option<Box<str>>,
}

impl Error {
    pub fn new(kind: ErrorKind, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            error: Cow::Borrowed(error),
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

    #[must_use]
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// `invalid` / `validation_error` about one field: `"{field}: {message}"`, `details.field`.
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(
            ErrorKind::Invalid,
            "validation_error",
            format!("{field}: {message}"),
        )
        .with_details(json!({ "field": field }))
    }

    /// `not_found`; used for another user's resource too, so that its existence is not confirmed.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            ErrorKind::NotFound,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, "forbidden", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, "conflict", message)
    }

    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TooLarge, "payload_too_large", message)
    }

    /// `internal_error`; `cause` goes to the log only.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(ErrorKind::Internal, "internal_error", "internal error");
        err.cause = Some(cause.to_string().into());
        err
    }

    /// `unavailable`; `cause` goes to the log only.
    pub fn unavailable(message: impl Into<String>, cause: impl std::fmt::Display) -> Self {
        let mut err = Self::new(ErrorKind::Unavailable, "unavailable", message);
        err.cause = Some(cause.to_string().into());
        err
    }

    /// The body every surface shows: `{error, message, details}`.
    pub fn body(&self) -> Value {
        json!({ "error": self.error, "message": self.message, "details": self.details })
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.message)
    }
}

impl std::error::Error for Error {}

/// Parses JSON with the path of the offending field in the error. Text the database cannot store (U+0000,
/// see [`find_nul`]) is refused wherever it is in the document.
///
/// # Errors
/// `invalid` / `invalid_json` with `details.path`; `validation_error` naming the field that holds a NUL.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // JSON can only carry U+0000 escaped; the escape is rare enough that only then is the document walked.
    if memchr::memmem::find(bytes, b"\\u0000").is_some()
        && let Ok(value) = serde_json::from_slice::<Value>(bytes)
    {
        refuse_nul(&value)?;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(invalid_json)
}

/// Like [`parse_json`], from an already parsed JSON value.
///
/// # Errors
/// `invalid` / `invalid_json` with `details.path`; `validation_error` naming the field that holds a NUL.
pub fn parse_value<T: DeserializeOwned>(value: Value) -> Result<T, Error> {
    refuse_nul(&value)?;
    serde_path_to_error::deserialize(value).map_err(invalid_json)
}

/// The one rule for text the database cannot store: PostgreSQL's `text` refuses U+0000 (SQLite would keep it,
/// but a conversation must not depend on its backend). Text from users is refused with 400 naming the field
/// (this function); text from providers is repaired instead (U+FFFD), so a reply is never lost.
///
/// Returns the JSON path (`messages[0].content`, `.` for the document itself) of the first string or key that
/// holds a NUL.
pub fn find_nul(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(fields) => fields.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = key.contains('\0') || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then(|| {
        if path.is_empty() {
            ".".to_string()
        } else {
            path
        }
    })
}

/// `validation_error` for a NUL in `field`.
pub fn nul_error(field: &str) -> Error {
    Error::validation(
        field,
        "text cannot contain the NUL character (U+0000); the database cannot store it",
    )
}

fn refuse_nul(value: &Value) -> Result<(), Error> {
    match find_nul(value) {
        Some(path) => Err(nul_error(&path)),
        None => Ok(()),
    }
}

/// `invalid_json` naming the path; a well-formed value outside a field's allowed set (an unknown enum value,
/// such as `message_type: "video"`) is a `validation_error` naming the field instead.
fn invalid_json(err: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = err.path().to_string();
    let inner = err.into_inner();
    let reason = inner.to_string();
    if path != "."
        && let Some(rest) = reason.strip_prefix("unknown variant `")
        && let Some((value, expected)) = rest.split_once("`, expected one of ")
    {
        // serde: "unknown variant `video`, expected one of `text`, `image` at line 1 column 9".
        let expected = expected.split(" at line ").next().unwrap_or(expected);
        return Error::validation(
            &path,
            format!("'{value}' is not one of {}", expected.replace('`', "")),
        );
    }
    let message = if path == "." {
        reason
    } else {
        format!("{path}: {reason}")
    };
    Error::new(ErrorKind::Invalid, "invalid_json", message).with_details(json!({ "path": path }))
}
