//! Generations: status, re-attachable SSE stream, cancel. A generation's id is its assistant message's id.
//! Each handler parses, calls the chat service, and encodes.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;

use super::error::ErrorBody;
use super::params::StreamFormat;
use super::{AppQuery, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::chat::{Cancelled, GenerationStatus};
use crate::error::Error;
use crate::stream::Generation;
use crate::wire::{ai_sdk, sse};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/generations/{id}", get(get_one))
        .route("/api/v1/generations/{id}/stream", get(stream))
        .route("/api/v1/generations/{id}/cancel", post(cancel))
        .route(
            "/api/v1/conversations/{id}/stream",
            get(conversation_stream),
        )
}

/// `GET /api/v1/conversations/{id}/stream`: the reply running in a conversation, from its start — what
/// `useChat({resume: true})` reconnects to (point its transport's `prepareReconnectToStreamRequest` here, with
/// `?format=ai-sdk`). 204 when nothing runs there now; 404 for another user's conversation.
#[utoipa::path(
    get,
    operation_id = "conversations_stream",
    path = "/api/v1/conversations/{id}/stream",
    tag = "generations",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
        ("format" = Option<StreamFormat>, Query, description = "default native"),
    ),
    responses(
        (status = 200, description = "SSE: the running reply from its start, then live", body = serde_json::Value, content_type = "text/event-stream"),
        (status = 204, description = "no reply is running in the conversation"),
        (status = 400, description = "an unknown `format`", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn conversation_stream(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    AppQuery(query): AppQuery<StreamQuery>,
) -> Result<Response, Error> {
    let ai_sdk = ai_sdk::requested(query.format.as_deref())?;
    let conversation_id = parse_id(&id, "conversation")?;
    let Some(generation) = state
        .chat
        .running_in(&user.user_id, conversation_id)
        .await?
    else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    Ok(follow(&state, &generation, ai_sdk, 0))
}

/// The generation's events after `after` then live, as the AI SDK UI message stream (always from the start:
/// the SDK rebuilds the whole message) or chatgate's SSE.
fn follow(state: &AppState, generation: &Arc<Generation>, ai_sdk: bool, after: u64) -> Response {
    let keepalive = Duration::from_secs(state.config.server.sse_keepalive_secs);
    if ai_sdk {
        return ai_sdk::response(generation.subscribe(0), keepalive);
    }
    let events = generation.subscribe(after).map(|e| sse::frame(&e));
    sse::response(events, keepalive)
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
        (status = 200, description = "where the generation stands", body = GenerationStatus),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<GenerationStatus>, Error> {
    let id = parse_id(&id, "generation")?;
    Ok(Json(state.chat.status(&user.user_id, id).await?))
}

#[derive(Debug, Default, Deserialize)]
struct StreamQuery {
    /// A seq (seqs fit in an `i64`, as stored).
    after: Option<i64>,
    /// `native` (default) or `ai-sdk`: the AI SDK UI message stream, always replayed from the start (the AI
    /// SDK rebuilds the whole message when it resumes).
    format: Option<String>,
}

/// `GET /api/v1/generations/{id}/stream`: replays events after `Last-Event-ID` (or `?after=seq`), then follows
/// live; ends after the terminal event. 204 when the generation is unknown or expired, or finished with its
/// last event at or before the one asked after, which makes `EventSource` stop reconnecting. `?format=ai-sdk`
/// answers in the AI SDK UI message stream protocol.
#[utoipa::path(
    get,
    operation_id = "generations_stream",
    path = "/api/v1/generations/{id}/stream",
    tag = "generations",
    params(
        ("id" = String, Path, description = "generation id (UUID)"),
        ("after" = Option<i64>, Query, minimum = 0, description = "replay events after this seq"),
        ("Last-Event-ID" = Option<String>, Header, description = "the last seq seen (what `EventSource` sends); ignored when not a number; wins over `after`"),
        ("format" = Option<StreamFormat>, Query, description = "default native"),
    ),
    responses(
        (status = 200, description = "SSE: replay, then live", body = serde_json::Value, content_type = "text/event-stream"),
        (status = 204, description = "unknown, expired, or finished with nothing after the given seq"),
        (status = 400, description = "an unknown `format`", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn stream(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<StreamQuery>,
) -> Result<Response, Error> {
    let ai_sdk = ai_sdk::requested(query.format.as_deref())?;
    let after = query
        .after
        .map(|seq| u64::try_from(seq).map_err(|_| Error::validation("after", "must be 0 or more")))
        .transpose()?;
    let generation = match parse_id(&id, "generation") {
        Ok(id) => state.chat.generation(&user.user_id, id).await,
        Err(_) => None,
    };
    let Some(generation) = generation else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = last_event_id.or(after).unwrap_or(0);
    if !ai_sdk && generation.terminal().is_some_and(|t| t.seq <= after) {
        // The client saw the end already: nothing more will ever come, so no stream (EventSource stops).
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(follow(&state, &generation, ai_sdk, after))
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
        (status = 200, description = "`{cancelled, reason, message}`", body = Cancelled),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Cancelled>, Error> {
    let id = parse_id(&id, "generation")?;
    Ok(Json(state.chat.cancel(&user.user_id, id).await?))
}
