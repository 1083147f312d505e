//! The web chat UI (`/`) and the usage dashboard (`/usage`): plain HTML, JavaScript and CSS from `static/`,
//! compiled into the binary so they are served wherever it runs. And the development-only token endpoint they
//! can use, off unless `server.dev_tokens`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::AppJson;
use super::error::ErrorBody;
use crate::AppState;
use crate::error::{Error, ErrorKind};

/// The UI's files: `(name, content type, body)`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    ),
    (
        "usage.html",
        "text/html; charset=utf-8",
        include_str!("../../static/usage.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    ),
    (
        "usage.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/usage.js"),
    ),
    (
        "common.js",
        "text/javascript; charset=utf-8",
        include_str!("../../static/common.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../static/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../static/favicon.svg"),
    ),
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route("/usage", get(|| async { file("usage.html") }))
        // Browsers ask for /favicon.ico whatever the page says; an SVG answers there too.
        .route("/favicon.ico", get(|| async { file("favicon.svg") }))
        .route(
            "/static/{name}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
        .route("/api/v1/dev/token", post(dev_token))
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => {
            let mut response = (*body).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            // Small and compiled in: revalidate each time, so a new binary's UI is seen at once.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            response
        }
        None => Error::not_found("file").into_response(),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct DevTokenRequest {
    user_id: String,
}

/// `POST /api/v1/dev/token` `{user_id}` → `{token, user_id, expires_in}` (24 h); 404 unless
/// `server.dev_tokens` (the route does not exist for the outside world).
#[utoipa::path(post, operation_id = "dev_token", path = "/api/v1/dev/token", tag = "development", security(()),
    request_body = DevTokenRequest,
    responses(
        (status = 200, description = "a token for `user_id`", body = DevToken),
        (status = 400, description = "invalid user id", body = ErrorBody),
        (status = 404, description = "dev tokens are off (the default)", body = ErrorBody)))]
async fn dev_token(
    State(state): State<AppState>,
    AppJson(body): AppJson<DevTokenRequest>,
) -> Result<Json<DevToken>, Error> {
    if !state.config.server.dev_tokens {
        return Err(Error::not_found("route"));
    }
    let user_id = body.user_id.trim();
    if user_id.is_empty() || user_id.len() > 128 {
        return Err(Error::validation("user_id", "must be 1 to 128 characters"));
    }
    let ttl = Duration::from_secs(24 * 3600);
    let token = state.auth.mint(user_id, false, ttl).map_err(|e| {
        Error::new(
            ErrorKind::Conflict,
            "dev_tokens_unavailable",
            format!(
                "cannot mint tokens with this auth configuration: {}",
                e.message
            ),
        )
    })?;
    tracing::warn!(
        user_id,
        "dev token issued (server.dev_tokens is on: never in production)"
    );
    Ok(Json(DevToken {
        token,
        user_id: user_id.to_string(),
        expires_in: ttl.as_secs(),
    }))
}

/// A development token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DevToken {
    /// An HS256 JWT (`Authorization: Bearer …`).
    pub token: String,
    pub user_id: String,
    /// Seconds until `exp`.
    pub expires_in: u64,
}
