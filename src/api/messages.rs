//! Sending messages: send (SSE, JSON, 202 or the AI SDK stream) and regenerate. Each handler parses, calls
//! the chat service, and encodes its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::error::{AppJson, ErrorBody};
use super::params::{OnDisconnect, StreamFormat};
use super::{AppQuery, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::chat::{Attendance, SendRequest, Started};
use crate::error::Error;
use crate::store::{Conversation, Id, Message};
use crate::telemetry::metrics::{Overhead, Transport};
use crate::wire::ai_sdk::{self, UseChat};
use crate::wire::sse;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/conversations/{id}/messages", post(send))
        .route("/api/v1/messages/{id}/regenerate", post(regenerate))
}

#[derive(Debug, Default, Deserialize)]
struct SendQuery {
    stream: Option<bool>,
    /// `native` (default) or `ai-sdk`: the Vercel AI SDK UI message stream.
    format: Option<String>,
    /// `cancel`: the reply stops when this request's stream (or wait) ends before it — what a Stop button that
    /// only closes the connection (the AI SDK's `stop()`) means. Not with `Prefer: respond-async`.
    on_disconnect: Option<String>,
}

/// Whether the reply stops when the request that started it goes away (`?on_disconnect=cancel`).
///
/// # Errors
/// `validation_error` for another value, or for a 202 answer, which nobody follows.
fn stop_when_left(query: &SendQuery, answer: Answer) -> Result<bool, Error> {
    match query.on_disconnect.as_deref() {
        None => Ok(false),
        Some("cancel") if answer == Answer::Async => Err(Error::validation(
            "on_disconnect",
            "a reply answered with 202 has no connection to follow; cancel it with POST /api/v1/generations/{id}/cancel",
        )),
        Some("cancel") => Ok(true),
        Some(_) => Err(Error::validation("on_disconnect", "must be cancel")),
    }
}

/// How the caller wants the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Sse,
    /// The AI SDK UI message stream (`?format=ai-sdk`).
    AiSdk,
    Json,
    Async,
}

impl Answer {
    fn attendance(self) -> Attendance {
        match self {
            Answer::Async => Attendance::Unattended,
            _ => Attendance::Followed,
        }
    }
}

fn negotiate(headers: &HeaderMap, query: &SendQuery) -> Result<Answer, Error> {
    if ai_sdk::requested(query.format.as_deref())? {
        return Ok(Answer::AiSdk);
    }
    let header_has = |name: header::HeaderName, needle: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.to_ascii_lowercase().contains(needle))
    };
    Ok(
        if header_has(header::HeaderName::from_static("prefer"), "respond-async") {
            Answer::Async
        } else if query.stream == Some(true)
            || (query.stream.is_none() && header_has(header::ACCEPT, "text/event-stream"))
        {
            Answer::Sse
        } else {
            Answer::Json
        },
    )
}

/// `POST /api/v1/conversations/{id}/messages`: commits the user message, starts a generation, then answers
/// with its SSE stream (`Accept: text/event-stream` or `?stream=true`), with the saved reply (JSON, the
/// default), at once with 202 (`Prefer: respond-async`), or as an AI SDK UI message stream (`?format=ai-sdk`,
/// which also accepts `useChat`'s own request body).
#[utoipa::path(
    post,
    operation_id = "messages_send",
    path = "/api/v1/conversations/{id}/messages",
    tag = "messages",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
        ("stream" = Option<bool>, Query, description = "true: SSE, like `Accept: text/event-stream`"),
        ("format" = Option<StreamFormat>, Query, description = "`native` (default) or `ai-sdk`: the Vercel AI SDK UI message stream (accepts `useChat` bodies)"),
        ("on_disconnect" = Option<OnDisconnect>, Query, description = "`cancel`: the reply stops (saved `cancelled`, billed for what was streamed) when this request goes away before it ends — the AI SDK's `stop()`; not with `Prefer: respond-async`"),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: 202 at once"),
    ),
    request_body = SendRequest,
    responses(
        (status = 200, description = "the saved exchange; or, streamed, SSE events `user_message`, `start`, `delta`, `usage`, `done` | `error`", content((Exchange = "application/json"), (serde_json::Value = "text/event-stream"))),
        (status = 202, description = "accepted: the reply runs on; follow `stream_url`", body = Accepted),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 413, description = "too large", body = ErrorBody),
        (status = 422, description = "unprocessable", body = ErrorBody),
        (status = 429, description = "rate limit or budget exceeded", body = ErrorBody),
        (status = 502, description = "upstream error", body = ErrorBody),
        (status = 504, description = "upstream timeout", body = ErrorBody),
    )
)]
async fn send(
    State(state): State<AppState>,
    user: AuthUser,
    Path(conversation_id): Path<String>,
    AppQuery(query): AppQuery<SendQuery>,
    headers: HeaderMap,
    AppJson(body): AppJson<serde_json::Value>,
) -> Result<Response, Error> {
    let received = Instant::now();
    let answer = negotiate(&headers, &query)?;
    let stop = stop_when_left(&query, answer)?;
    let conversation_id = parse_id(&conversation_id, "conversation")?;
    let request = if answer == Answer::AiSdk && ai_sdk::is_use_chat(&body) {
        let media = &state.media;
        match ai_sdk::read_use_chat(&body, media.max_per_message(), media.max_bytes())? {
            UseChat::Send(request) => request,
            // useChat's regenerate button: a new reply to the message it names (a reply's id is ours), or to
            // the conversation's latest message.
            UseChat::Regenerate { message_id, model } => {
                let message_id = match message_id {
                    Some(id) => id,
                    None => state
                        .chat
                        .latest_message(&user.user_id, conversation_id)
                        .await?
                        .to_string(),
                };
                return regenerate_and_respond(
                    &state,
                    &user,
                    &message_id,
                    model,
                    (answer, stop),
                    received,
                )
                .await;
            }
        }
    } else {
        crate::error::parse_value(body)?
    };
    let started = state
        .chat
        .send(&user.user_id, conversation_id, request, answer.attendance())
        .await?;
    if stop {
        started.generation.cancel_when_left();
    }
    respond(&state, answer, &user, started, true, received).await
}

/// `POST /api/v1/messages/{id}/regenerate` (`{model?}`): a new reply to the same user message (the id of that
/// message or of a previous reply to it). The previous reply stays as a sibling; history shows the latest by
/// default. Answers like sending a message.
#[utoipa::path(
    post,
    operation_id = "messages_regenerate",
    path = "/api/v1/messages/{id}/regenerate",
    tag = "messages",
    params(
        ("id" = String, Path, description = "message id (UUID)"),
        ("stream" = Option<bool>, Query),
        ("format" = Option<StreamFormat>, Query),
    ),
    request_body(content = Option<RegenerateBody>),
    responses(
        (status = 200, description = "as sending a message", content((Exchange = "application/json"), (serde_json::Value = "text/event-stream"))),
        (status = 202, description = "accepted: the reply runs on; follow `stream_url`", body = Accepted),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 409, description = "a message that answers none", body = ErrorBody),
        (status = 422, description = "an unknown `model`, or one that cannot take the question's media", body = ErrorBody),
        (status = 429, description = "rate limit or budget exceeded", body = ErrorBody),
        (status = 502, description = "upstream error", body = ErrorBody),
        (status = 504, description = "upstream timeout", body = ErrorBody),
    )
)]
async fn regenerate(
    State(state): State<AppState>,
    user: AuthUser,
    Path(message_id): Path<String>,
    AppQuery(query): AppQuery<SendQuery>,
    headers: HeaderMap,
    body: Option<AppJson<RegenerateBody>>,
) -> Result<Response, Error> {
    let received = Instant::now();
    let answer = negotiate(&headers, &query)?;
    let stop = stop_when_left(&query, answer)?;
    let model = body.and_then(|b| b.0.model);
    regenerate_and_respond(&state, &user, &message_id, model, (answer, stop), received).await
}

/// A new reply to the message `message_id` names, answered as `answer` (the question is not announced again).
async fn regenerate_and_respond(
    state: &AppState,
    user: &AuthUser,
    message_id: &str,
    model: Option<String>,
    (answer, stop): (Answer, bool),
    received: Instant,
) -> Result<Response, Error> {
    let message_id = parse_id(message_id, "message")?;
    let started = state
        .chat
        .regenerate(
            &user.user_id,
            message_id,
            model.as_deref(),
            answer.attendance(),
        )
        .await?;
    if stop {
        started.generation.cancel_when_left();
    }
    respond(state, answer, user, started, false, received).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegenerateBody {
    #[serde(default)]
    model: Option<String>,
}

/// A message sent (or a reply regenerated) and answered in JSON: 200 once the reply is saved.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Exchange {
    /// The conversation after the exchange (its `last_message_at`, its title once made).
    pub conversation: Conversation,
    /// The question (for a regenerated reply, the one it answers).
    pub user_message: Message,
    /// The saved reply, `status` `complete`, or `failed`/`cancelled`/`interrupted` with what was streamed.
    pub assistant_message: Message,
}

/// 202 for `Prefer: respond-async`: the generation runs on, to be followed at `stream_url`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Accepted {
    pub generation_id: Id,
    pub user_message: Message,
    /// `/api/v1/generations/{generation_id}/stream`.
    pub stream_url: String,
}

/// Answers with the generation's SSE stream (opened by the `user_message` frame when `announce_user_message`),
/// its AI SDK stream, its final JSON, or 202.
async fn respond(
    state: &AppState,
    answer: Answer,
    user: &AuthUser,
    started: Started,
    announce_user_message: bool,
    received: Instant,
) -> Result<Response, Error> {
    let Started {
        conversation,
        user_message,
        generation,
    } = started;
    let keepalive = Duration::from_secs(state.config.server.sse_keepalive_secs);
    match answer {
        Answer::Async => Ok((
            {
                // The client is about to follow it, maybe on another instance: it must be findable there.
                generation.published().await;
                StatusCode::ACCEPTED
            },
            Json(Accepted {
                generation_id: generation.id(),
                stream_url: format!("/api/v1/generations/{}/stream", generation.id()),
                user_message,
            }),
        )
            .into_response()),
        Answer::AiSdk => {
            let events = Overhead::new(received, Transport::AiSdk)
                .measure(Arc::clone(&generation), generation.subscribe(0));
            Ok(ai_sdk::response(events, keepalive))
        }
        Answer::Sse => {
            let first = announce_user_message.then(|| sse::user_message(&user_message));
            let events = Overhead::new(received, Transport::Sse)
                .measure(Arc::clone(&generation), generation.subscribe(0));
            let frames = futures::stream::iter(first).chain(events.map(|e| sse::frame(&e)));
            Ok(sse::response(frames, keepalive))
        }
        Answer::Json => {
            let assistant_message = state.chat.reply(&generation).await?;
            let conversation = state
                .store
                .get_conversation(&user.user_id, conversation.id)
                .await?
                .unwrap_or(conversation);
            Ok(Json(Exchange {
                conversation,
                user_message,
                assistant_message,
            })
            .into_response())
        }
    }
}
