//! Generations: status, re-attachable SSE stream, cancel. A generation's id is its assistant message's id.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::openapi::ErrorBody;
use super::{AppQuery, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::stream::hub::CancelReason;
use crate::stream::{Generation, sse_frame, sse_response};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/generations/{id}", get(get_one))
        .route("/api/v1/generations/{id}/stream", get(stream))
        .route("/api/v1/generations/{id}/cancel", post(cancel))
}

/// The caller's live (or recently finished) generation.
fn live(state: &AppState, user: &AuthUser, id: crate::store::Id) -> Option<Arc<Generation>> {
    state.hub.get(id).filter(|g| g.user_id == user.user_id)
}

/// A finished generation, read back as its saved reply (the generation's id is the message's id).
async fn saved_reply(
    state: &AppState,
    user: &AuthUser,
    id: crate::store::Id,
) -> Result<crate::store::Message, ApiError> {
    state
        .store
        .get_message(&user.user_id, id)
        .await?
        .filter(|m| m.role == crate::store::role::ASSISTANT)
        .ok_or_else(|| ApiError::not_found("generation"))
}

/// `GET /api/v1/generations/{id}` → `{id, conversation_id, status, text, message?, model}`.
#[utoipa::path(
    get,
    operation_id = "generations_get_one",
    path = "/api/v1/generations/{id}",
    tag = "generations",
    params(
        ("id" = String, Path, description = "generation id (UUID)"),
    ),
    responses(
        (status = 200, description = "`{id, conversation_id, status, text, message?, model}`", body = Object),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "generation")?;
    if let Some(generation) = live(&state, &user, id) {
        let outcome = generation.outcome_now();
        let message = outcome.as_ref().and_then(|o| o.message.clone());
        let status = match (&outcome, &message) {
            (None, _) => "streaming".to_string(),
            (Some(_), Some(m)) => m.status.clone(),
            (Some(_), None) => "failed".to_string(),
        };
        return Ok(Json(json!({
            "id": generation.id,
            "conversation_id": generation.conversation_id,
            "model": generation.model,
            "status": status,
            "text": generation.text(),
            "message": message,
        })));
    }
    let message = saved_reply(&state, &user, id).await?;
    Ok(Json(json!({
        "id": message.id,
        "conversation_id": message.conversation_id,
        "model": message.model,
        "status": message.status,
        "text": message.content,
        "message": message,
    })))
}

#[derive(Debug, Default, Deserialize)]
struct StreamQuery {
    after: Option<u64>,
    /// `native` (default) or `ai-sdk`: the AI SDK UI message stream, always replayed from the start (the AI
    /// SDK rebuilds the whole message when it resumes).
    format: Option<String>,
}

/// `GET /api/v1/generations/{id}/stream`: replays events after `Last-Event-ID` (or `?after=seq`), then follows
/// live; ends after the terminal event. 204 when the generation is unknown or expired, which makes
/// `EventSource` stop reconnecting. `?format=ai-sdk` answers in the AI SDK UI message stream protocol.
#[utoipa::path(
    get,
    operation_id = "generations_stream",
    path = "/api/v1/generations/{id}/stream",
    tag = "generations",
    params(
        ("id" = String, Path, description = "generation id (UUID)"),
        ("after" = Option<u64>, Query, description = "replay events after this seq"),
        ("Last-Event-ID" = Option<u64>, Header),
        ("format" = Option<String>, Query, description = "native | ai-sdk"),
    ),
    responses(
        (status = 200, description = "SSE: replay, then live", content_type = "text/event-stream"),
        (status = 204, description = "unknown or expired"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn stream(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let ai_sdk = crate::stream::ai_sdk::requested(query.format.as_deref())?;
    let Some(generation) = parse_id(&id, "generation")
        .ok()
        .and_then(|id| live(&state, &user, id))
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let keepalive = Duration::from_secs(state.config.server.sse_keepalive_secs);
    if ai_sdk {
        return Ok(crate::stream::ai_sdk::response(
            generation.subscribe(0),
            keepalive,
        ));
    }
    let after = last_event_id.or(query.after).unwrap_or(0);
    let events = generation.subscribe(after).map(sse_frame);
    Ok(sse_response(events, keepalive))
}

/// `POST /api/v1/generations/{id}/cancel`: stops the upstream, saves the partial text as `cancelled`, then
/// answers `{cancelled, message}`. Cancelling a finished generation changes nothing and says so.
#[utoipa::path(
    post,
    operation_id = "generations_cancel",
    path = "/api/v1/generations/{id}/cancel",
    tag = "generations",
    params(
        ("id" = String, Path, description = "generation id (UUID)"),
    ),
    responses(
        (status = 200, description = "`{cancelled, message}`", body = Object),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id, "generation")?;
    let Some(generation) = live(&state, &user, id) else {
        let message = saved_reply(&state, &user, id).await?;
        return Ok(Json(
            json!({ "cancelled": false, "reason": "the generation had already ended", "message": message }),
        ));
    };
    let already_over = generation.outcome_now().is_some();
    generation.cancel(CancelReason::User);
    let outcome = generation.outcome().await;
    let cancelled = !already_over
        && generation.cancel_reason() == Some(CancelReason::User)
        && outcome
            .message
            .as_ref()
            .is_some_and(|m| m.status == crate::store::status::CANCELLED);
    Ok(Json(json!({
        "cancelled": cancelled,
        "reason": if cancelled { "cancelled" } else { "the generation had already ended" },
        "message": outcome.message,
    })))
}
