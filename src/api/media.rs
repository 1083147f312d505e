//! Media uploads: `POST /api/v1/media` (multipart) and `GET /api/v1/media/{id}`, the uploader's only.

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::json;

use super::error::ErrorBody;
use super::parse_id;
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{Error, ErrorKind};
use crate::media::{MediaRef, MediaStore};

/// Room for the multipart framing around the file, in bytes.
const FRAMING_BYTES: u64 = 64 * 1024;

/// The routes; bodies up to the largest media type's limit (plus framing) are let through to the upload,
/// which applies each type's own limit as the bytes arrive.
pub fn router(max_media_bytes: u64) -> Router<AppState> {
    let limit = usize::try_from(max_media_bytes + FRAMING_BYTES).unwrap_or(usize::MAX);
    Router::new()
        .route(
            "/api/v1/media",
            post(upload).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/api/v1/media/{id}", get(download))
}

/// `POST /api/v1/media`, `multipart/form-data` with the file in the part `file` → 201
/// `{id, url, content_type, kind, size_bytes, sha256, created_at}`. The type is sniffed from the bytes; the
/// body is streamed to storage, and refused with 413 once past its type's limit (at once when its
/// `Content-Length` is past the largest limit), leaving nothing stored.
#[utoipa::path(post, operation_id = "media_upload", path = "/api/v1/media", tag = "media",
    request_body(content_type = "multipart/form-data", content = Object, description = "the file in the part `file`"),
    responses(
        (status = 201, description = "stored", body = UploadedMedia),
        (status = 400, description = "no `file` part, or an empty file", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 413, description = "over the type's size limit", body = ErrorBody),
        (status = 415, description = "not multipart, or a type not allowed", body = ErrorBody)))]
async fn upload(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<(StatusCode, Json<UploadedMedia>), Error> {
    let max = state.media.max_bytes();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = declared
        && length > max + FRAMING_BYTES
    {
        return Err(Error::payload_too_large(format!(
            "the upload is {length} bytes; the largest media allowed is {max} bytes"
        ))
        .with_details(json!({ "limit_bytes": max, "size_bytes": length })));
    }
    let mut multipart = multipart.map_err(|rejection| {
        Error::new(
            ErrorKind::UnsupportedType,
            "unsupported_media_type",
            format!(
                "expected a multipart/form-data body with the file in the part `file`: {}",
                rejection.body_text()
            ),
        )
    })?;
    loop {
        let field = multipart.next_field().await.map_err(|e| {
            Error::new(
                ErrorKind::Invalid,
                "invalid_body",
                format!("malformed multipart body: {}", e.body_text()),
            )
        })?;
        let Some(field) = field else {
            return Err(Error::validation(
                "file",
                "the multipart body has no part named `file`",
            ));
        };
        if field.name() != Some("file") {
            continue;
        }
        let media = state
            .media
            .put_stream(
                &*state.store,
                &user.user_id,
                field.map_err(|e| e.body_text()),
            )
            .await?;
        let body = UploadedMedia {
            media: MediaStore::reference(&media),
            sha256: media.sha256,
            created_at: media.created_at,
        };
        return Ok((StatusCode::CREATED, Json(body)));
    }
}

/// 201 of an upload: the file's reference (its `id` goes in a message's `media_ids`), its hash and time.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadedMedia {
    #[serde(flatten)]
    pub media: MediaRef,
    /// Hex SHA-256 of the bytes (also the download's `ETag`).
    pub sha256: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /api/v1/media/{id}`: the file, to its uploader only (anyone else gets 404), with its sniffed type,
/// `ETag` (its SHA-256), `X-Content-Type-Options: nosniff`, `Content-Security-Policy: default-src 'none';
/// sandbox` and `Content-Disposition: inline; filename="{id}.{ext}"` (a polyglot never runs as a page of this
/// origin).
#[utoipa::path(get, operation_id = "media_download", path = "/api/v1/media/{id}", tag = "media",
    params(("id" = String, Path, description = "media id (UUID)")),
    responses(
        (status = 200, description = "the file's bytes", content_type = "application/octet-stream"),
        (status = 304, description = "unchanged since the ETag"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody)))]
async fn download(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let id = parse_id(&id, "media")?;
    let media = state
        .store
        .get_media(&user.user_id, id)
        .await?
        .ok_or_else(|| Error::not_found("media"))?;
    let etag = format!("\"{}\"", media.sha256);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let stream = state.media.read_stream(&media).await?;
    let mut response = Body::from_stream(stream).into_response();
    let h = response.headers_mut();
    let value = |v: &str| HeaderValue::from_str(v).map_err(Error::internal);
    h.insert(header::CONTENT_TYPE, value(&media.content_type)?);
    h.insert(
        header::CONTENT_LENGTH,
        value(&media.size_bytes.to_string())?,
    );
    h.insert(header::ETAG, value(&etag)?);
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // A file that is also HTML or script (a PNG/HTML or GIF/JS polyglot) must never run as a page of this
    // origin, even opened directly: no sources, a sandbox, and a name to save it under.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        value(&format!(
            "inline; filename=\"{}\"",
            crate::media::file_name(&media)
        ))?,
    );
    h.insert(
        header::HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    Ok(response)
}
