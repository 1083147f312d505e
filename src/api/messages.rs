//! Messages: send (SSE, JSON or 202), history, delete.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::conversations::owned;
use super::openapi::ErrorBody;
use super::{AppQuery, page_limit, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, AppJson};
use crate::providers::{ChatMessage, ChatRequest, MediaData, ModelRoute};
use crate::store::{Conversation, HistoryPage, Id, Message, NewMessage, Persona, role, status};
use crate::stream::generation::{self, GenerationJob, RetryPolicy};
use crate::stream::{EventKind, Generation, GenerationEvent, sse_frame, sse_response};
use crate::usage::TokenCounts;
use crate::usage::budget::{Estimate, Reservation};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/conversations/{id}/messages",
            post(send).get(history),
        )
        .route("/api/v1/messages/{id}", delete(delete_message))
        .route("/api/v1/messages/{id}/regenerate", post(regenerate))
}

/// Body of `POST /api/v1/conversations/{id}/messages`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default = "text_type")]
    message_type: String,
    #[serde(default)]
    media_ids: Vec<Id>,
    #[serde(default)]
    media_urls: Vec<String>,
    #[serde(default)]
    audio_url: Option<String>,
    #[serde(default)]
    audio_duration_seconds: Option<f64>,
    /// Model alias; the persona's, else `[defaults].model`, when absent.
    #[serde(default)]
    model: Option<String>,
    /// The message this one answers (defaults to none).
    #[serde(default)]
    parent_id: Option<Id>,
}

fn text_type() -> String {
    "text".into()
}

#[derive(Debug, Default, Deserialize)]
struct SendQuery {
    stream: Option<bool>,
    /// `native` (default) or `ai-sdk`: the Vercel AI SDK UI message stream.
    format: Option<String>,
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

fn negotiate(headers: &HeaderMap, query: &SendQuery) -> Result<Answer, ApiError> {
    if crate::stream::ai_sdk::requested(query.format.as_deref())? {
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

/// The body of an AI SDK `useChat` request (`DefaultChatTransport`: `{id, messages: UIMessage[], trigger,
/// messageId?, ...body}`) as a send: the text parts of its last user message, its file parts (`{type: "file",
/// mediaType, url}`: a `data:` URL is stored as the caller's upload, an http(s) URL fetched like `media_urls`),
/// and `model` when the app adds one. Images make a `multimodal` (or `image`) message; one audio file an
/// `audio` message.
async fn from_use_chat(
    state: &AppState,
    user: &AuthUser,
    body: &serde_json::Value,
) -> Result<SendMessage, ApiError> {
    let messages = body["messages"]
        .as_array()
        .ok_or_else(|| ApiError::validation("messages", "must be an array of UI messages"))?;
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .ok_or_else(|| ApiError::validation("messages", "holds no user message"))?;
    let text: String = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let files: Vec<&serde_json::Value> = last["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"] == "file")
        .collect();
    let audio = files.iter().any(|f| {
        f["mediaType"]
            .as_str()
            .is_some_and(|t| t.starts_with("audio/"))
    });
    let message_type = match (files.is_empty(), audio, text.trim().is_empty()) {
        (true, _, _) => text_type(),
        (false, true, _) => "audio".to_string(),
        (false, false, false) => "multimodal".to_string(),
        (false, false, true) => "image".to_string(),
    };
    let (mut media_ids, mut media_urls) = (Vec::new(), Vec::new());
    if files.len() > state.media.max_per_message() {
        return Err(ApiError::validation(
            "messages",
            format!(
                "at most {} files per message",
                state.media.max_per_message()
            ),
        ));
    }
    for file in files {
        let url = file["url"]
            .as_str()
            .ok_or_else(|| ApiError::validation("messages", "a file part needs a url"))?;
        if url.starts_with("data:") {
            let bytes = crate::media::decode_data_url(url, state.media.max_bytes(), "messages")?;
            let chunk = futures::stream::once(async move {
                Ok::<_, std::convert::Infallible>(bytes::Bytes::from(bytes))
            });
            let media = state
                .media
                .put_stream(&*state.store, &user.user_id, chunk)
                .await?;
            media_ids.push(media.id);
        } else {
            media_urls.push(url.to_string());
        }
    }
    Ok(SendMessage {
        content: Some(text),
        message_type,
        media_ids,
        media_urls,
        audio_url: None,
        audio_duration_seconds: None,
        model: body["model"].as_str().map(str::to_string),
        parent_id: None,
    })
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
        ("format" = Option<String>, Query, description = "`native` (default) or `ai-sdk`: the Vercel AI SDK UI message stream (accepts `useChat` bodies)"),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: 202 at once"),
    ),
    request_body = SendMessage,
    responses(
        (status = 200, description = "`{conversation, user_message, assistant_message}`; or, streamed, SSE events `user_message`, `start`, `delta`, `usage`, `done` | `error`", content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 202, description = "`{generation_id, user_message, stream_url}`", body = Object),
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
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let answer = negotiate(&headers, &query)?;
    // useChat's regenerate button: a new reply to the message it names (a reply's id is ours, from `start`).
    if answer == Answer::AiSdk && body["trigger"] == "regenerate-message" {
        let message_id = body["messageId"].as_str().ok_or_else(|| {
            ApiError::validation(
                "messageId",
                "regenerate-message needs the messageId to regenerate",
            )
        })?;
        let model = body["model"].as_str().map(str::to_string);
        return regenerate_message(&state, &user, message_id, model, answer, received).await;
    }
    let body: SendMessage = if answer == Answer::AiSdk && body.get("messages").is_some() {
        from_use_chat(&state, &user, &body).await?
    } else {
        crate::error::parse_value(body)?
    };
    let started = start_message(
        &state,
        &user,
        &conversation_id,
        &body,
        answer == Answer::Async,
    )
    .await?;
    respond(
        &state,
        answer,
        &user,
        started.conversation,
        started.generation,
        started.user_message,
        true,
        received,
    )
    .await
}

/// A message accepted and its reply started.
pub(crate) struct Started {
    pub conversation: Conversation,
    pub user_message: Message,
    pub generation: Arc<Generation>,
}

/// The whole send path, shared by HTTP and WebSocket: validate, check ownership, pick the model, fit the prompt,
/// check limits, commit the user message, start the generation. Nothing is written when any check fails.
/// `unattended` marks a request whose answer nobody will follow at first (202).
pub(crate) async fn start_message(
    state: &AppState,
    user: &AuthUser,
    conversation_id: &str,
    body: &SendMessage,
    unattended: bool,
) -> Result<Started, ApiError> {
    let content = validate(state, body)?;
    let conversation = owned(state, user, conversation_id).await?;
    let (persona, route) = persona_and_route(state, &conversation, body.model.as_deref()).await?;
    if matches!(body.message_type.as_str(), "multimodal" | "image") && !route.accepts_images {
        return Err(takes_no_images(&route));
    }
    if let Some(parent_id) = body.parent_id {
        let parent = state.store.get_message(&user.user_id, parent_id).await?;
        if parent.is_none_or(|p| p.conversation_id != conversation.id) {
            return Err(ApiError::not_found("parent message"));
        }
    }
    if unattended {
        refuse_if_unattended_full(state)?;
    }
    let history = state
        .store
        .list_messages(
            conversation.id,
            HistoryPage::Offset(0),
            history_limit(state),
            false,
            false,
        )
        .await?;
    let earlier_images = history_images(state, user, &route, &history).await?;
    // Limits first, on an estimate (the text, and 1,600 tokens an image to come): nothing is fetched,
    // transcribed or stored for a request that would be refused.
    let images_to_come = if matches!(body.message_type.as_str(), "multimodal" | "image") {
        (body.media_ids.len() + body.media_urls.len()) as u64
    } else {
        0
    };
    let (text_prompt, text_tokens) = build_prompt(
        state,
        &persona,
        &route,
        &history,
        &earlier_images,
        ChatMessage::user(content.clone()),
    )?;
    let reservation = admit(
        state,
        user,
        &route,
        text_tokens + IMAGE_TOKENS * images_to_come,
    )
    .await?;
    let attached = attach_media(state, user, &route, body, content).await?;
    let content = attached.content;
    // A text message's prompt is the one just built; media change the last turn, so fit the history again.
    let messages = if body.message_type == "text" {
        text_prompt
    } else {
        build_prompt(
            state,
            &persona,
            &route,
            &history,
            &earlier_images,
            attached.prompt,
        )?
        .0
    };
    let first_exchange = conversation.title.is_none() && history.is_empty();
    let user_message = state
        .store
        .insert_message(&NewMessage {
            id: Id::new(),
            conversation_id: conversation.id,
            parent_id: body.parent_id,
            role: role::USER,
            content,
            message_type: body.message_type.clone(),
            media: attached.media,
            status: status::COMPLETE,
            model: None,
            provider: None,
            finish_reason: None,
            error: None,
            created_at: crate::store::now(),
        })
        .await?;
    let generation = start_generation(
        state,
        user,
        &conversation,
        &persona,
        route,
        messages,
        user_message.id,
        reservation,
    )?;
    if first_exchange {
        crate::titles::after_first_reply(
            state,
            &user.user_id,
            conversation.id,
            user_message.content.clone(),
            Arc::clone(&generation),
        );
    }
    Ok(Started {
        conversation,
        user_message,
        generation,
    })
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
        ("format" = Option<String>, Query),
    ),
    request_body(content = Option<RegenerateBody>),
    responses(
        (status = 200, description = "as sending a message", content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 202, description = "accepted: the reply runs on", body = Object),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody),
        (status = 429, description = "rate limit or budget exceeded", body = ErrorBody),
    )
)]
async fn regenerate(
    State(state): State<AppState>,
    user: AuthUser,
    Path(message_id): Path<String>,
    AppQuery(query): AppQuery<SendQuery>,
    headers: HeaderMap,
    body: Option<AppJson<RegenerateBody>>,
) -> Result<Response, ApiError> {
    let received = Instant::now();
    let answer = negotiate(&headers, &query)?;
    let model = body.and_then(|b| b.0.model);
    regenerate_message(&state, &user, &message_id, model, answer, received).await
}

/// A new reply to the user message `message_id` names (itself, or the one it answers), answered as `answer`.
async fn regenerate_message(
    state: &AppState,
    user: &AuthUser,
    message_id: &str,
    model: Option<String>,
    answer: Answer,
    received: Instant,
) -> Result<Response, ApiError> {
    let message_id = parse_id(message_id, "message")?;
    let message = state
        .store
        .get_message(&user.user_id, message_id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let question_id = match message.role.as_str() {
        role::USER => message.id,
        _ => message.parent_id.ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "this message answers no user message; nothing to regenerate",
            )
        })?,
    };
    let question = state
        .store
        .get_message(&user.user_id, question_id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let conversation = owned(state, user, &question.conversation_id.to_string()).await?;
    let (persona, route) = persona_and_route(state, &conversation, model.as_deref()).await?;
    if answer == Answer::Async {
        refuse_if_unattended_full(state)?;
    }
    let history = state
        .store
        .list_messages(
            conversation.id,
            HistoryPage::Before(question.id),
            history_limit(state),
            false,
            false,
        )
        .await?;
    let earlier_images = history_images(state, user, &route, &history).await?;
    let question_images = if matches!(question.message_type.as_str(), "multimodal" | "image") {
        if !route.accepts_images {
            return Err(takes_no_images(&route));
        }
        images_of(state, user, &question.media).await?
    } else {
        Vec::new()
    };
    let (messages, prompt_tokens) = build_prompt(
        state,
        &persona,
        &route,
        &history,
        &earlier_images,
        ChatMessage::user(question.content.clone()).with_images(question_images),
    )?;
    let reservation = admit(state, user, &route, prompt_tokens).await?;
    let generation = start_generation(
        state,
        user,
        &conversation,
        &persona,
        route,
        messages,
        question.id,
        reservation,
    )?;
    respond(
        state,
        answer,
        user,
        conversation,
        generation,
        question,
        false,
        received,
    )
    .await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct RegenerateBody {
    #[serde(default)]
    model: Option<String>,
}

/// Retries before the first token, from `[generation]`.
pub(crate) fn retry_policy(state: &AppState) -> RetryPolicy {
    let config = &state.config.generation;
    RetryPolicy {
        attempts: config.retry_attempts,
        base: Duration::from_millis(config.retry_base_ms),
        max: Duration::from_millis(config.retry_max_ms),
    }
}

fn history_limit(state: &AppState) -> i64 {
    i64::from(state.config.generation.max_history_messages)
}

/// The conversation's persona and the model to answer with: the request's alias, else the persona's, else the
/// default; 422 `unknown_model` for an alias that is not configured.
async fn persona_and_route(
    state: &AppState,
    conversation: &Conversation,
    requested: Option<&str>,
) -> Result<(Persona, ModelRoute), ApiError> {
    let persona = state
        .personas
        .get(&*state.store, conversation.persona_id)
        .await?
        .ok_or_else(|| ApiError::not_found("persona"))?;
    let alias = requested
        .or(persona.model.as_deref())
        .unwrap_or(state.models.default_alias());
    let route = state.models.get(alias).cloned().ok_or_else(|| {
        let known: Vec<_> = state.models.aliases().collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_model",
            format!("model alias '{alias}' is not configured"),
        )
        .with_details(json!({ "model": alias, "available": known }))
    })?;
    Ok((persona, route))
}

/// The limits checked before anything is written: concurrent generations per user, then the token and cost
/// budgets (reserving this request's estimate: its prompt plus the reply's allowance).
pub(crate) async fn admit(
    state: &AppState,
    user: &AuthUser,
    route: &ModelRoute,
    prompt_tokens: u64,
) -> Result<Reservation, ApiError> {
    let max = state.config.limits.max_concurrent_generations;
    if max > 0 && state.hub.running_for(&user.user_id) >= max {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("at most {max} replies may run at once for one user"),
        )
        .with_details(json!({ "limit": "max_concurrent_generations", "value": max }));
        err.retry_after_secs = Some(1);
        return Err(err);
    }
    let reply_allowance = route
        .max_output_tokens
        .unwrap_or(state.config.generation.reserve_output_tokens);
    let counts = TokenCounts {
        prompt_tokens,
        completion_tokens: u64::from(reply_allowance),
        ..TokenCounts::default()
    };
    let estimate = Estimate {
        tokens: prompt_tokens + u64::from(reply_allowance),
        nanousd: route.prices.cost_nanousd(&counts).max(0) as u64,
    };
    match state
        .budgets
        .reserve(&*state.store, &user.user_id, estimate)
        .await?
    {
        Ok(reservation) => Ok(reservation),
        Err(over) => {
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "budget_exceeded",
                format!(
                    "this request would exceed the {} (it resets in {} s)",
                    over.limit, over.retry_after_secs
                ),
            )
            .with_details(json!({ "limit": over.limit, "estimate_tokens": estimate.tokens }));
            err.retry_after_secs = Some(over.retry_after_secs);
            Err(err)
        }
    }
}

/// A 202 answer starts a generation nobody follows yet: refused past `generation.max_unattended`.
fn refuse_if_unattended_full(state: &AppState) -> Result<(), ApiError> {
    if state.hub.unattended_full() {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_unattended",
            "too many replies are running with nobody following them; follow one or try again shortly",
        );
        err.retry_after_secs = Some(5);
        return Err(err);
    }
    Ok(())
}

/// Starts the generation answering `question_id` as a tracked background task.
#[allow(clippy::too_many_arguments)]
fn start_generation(
    state: &AppState,
    user: &AuthUser,
    conversation: &Conversation,
    persona: &Persona,
    route: ModelRoute,
    messages: Vec<ChatMessage>,
    question_id: Id,
    reservation: Reservation,
) -> Result<Arc<Generation>, ApiError> {
    let config = &state.config.generation;
    let alias = route.alias.clone();
    let job = GenerationJob {
        request: ChatRequest {
            model: route.upstream_model.clone(),
            messages,
            max_tokens: route.max_output_tokens,
        },
        route,
        store: state.store.clone(),
        user_id: user.user_id.clone(),
        conversation_id: conversation.id,
        persona_id: Some(persona.id),
        parent_id: Some(question_id),
        persist_attempts: config.persist_attempts,

        fallbacks: state.models.fallbacks(&alias),
        reservation,
        stateless: false,
        retry: retry_policy(state),
    };
    state
        .hub
        .start(
            Id::new(),
            conversation.id,
            &user.user_id,
            &alias,
            move |g| generation::run(g, job),
        )
        .map_err(|e| ApiError::unavailable("the server is shutting down; retry shortly", e))
}

/// Answers with the generation's SSE stream, its final JSON, or 202.
#[allow(clippy::too_many_arguments)]
async fn respond(
    state: &AppState,
    answer: Answer,
    user: &AuthUser,
    conversation: Conversation,
    generation: Arc<Generation>,
    user_message: Message,
    announce_user_message: bool,
    received: Instant,
) -> Result<Response, ApiError> {
    match answer {
        Answer::Async => Ok((
            StatusCode::ACCEPTED,
            Json(json!({
                "generation_id": generation.id,
                "user_message": user_message,
                "stream_url": format!("/api/v1/generations/{}/stream", generation.id),
            })),
        )
            .into_response()),
        Answer::AiSdk => Ok(crate::stream::ai_sdk::response(
            generation.subscribe(0),
            Duration::from_secs(state.config.server.sse_keepalive_secs),
        )),
        Answer::Sse => {
            let first = announce_user_message
                .then(|| serde_json::to_string(&user_message))
                .transpose()
                .map_err(ApiError::internal)?
                .map(|data| {
                    bytes::Bytes::from(
                        GenerationEvent::new(0, EventKind::UserMessage, &data)
                            .sse_frame()
                            .to_string(),
                    )
                });
            let mut first_delta = true;
            let followed = Arc::clone(&generation);
            let events =
                futures::stream::iter(first).chain(generation.subscribe(0).map(move |e| {
                    if first_delta && e.kind == EventKind::Delta {
                        first_delta = false;
                        // What the gateway adds: the client's wait for its first delta beyond the upstream's TTFT.
                        if let Some(ttft) = followed.upstream_ttft() {
                            let overhead = received.elapsed().saturating_sub(ttft);
                            metrics::histogram!("chatgate_gateway_overhead_seconds")
                                .record(overhead.as_secs_f64());
                        }
                    }
                    sse_frame(e)
                }));
            Ok(sse_response(
                events,
                Duration::from_secs(state.config.server.sse_keepalive_secs),
            ))
        }
        Answer::Json => {
            // Waiting counts as following: under the `cancel` policy, a caller that hangs up stops it.
            let _following = generation.attach();
            let outcome = generation.outcome().await;
            if let Some(error) = outcome.error.clone() {
                return Err(error);
            }
            let assistant_message = outcome
                .message
                .clone()
                .ok_or_else(|| ApiError::internal("generation ended without a message"))?;
            let conversation = state
                .store
                .get_conversation(&user.user_id, conversation.id)
                .await?
                .unwrap_or(conversation);
            Ok(Json(json!({
                "conversation": conversation,
                "user_message": user_message,
                "assistant_message": assistant_message,
            }))
            .into_response())
        }
    }
}

/// Checks the body's shape (no I/O); returns the message text, which only `text` and `multimodal` messages
/// require. `multimodal`: text and images; `image`: images, text optional; `audio`: one voice note (a
/// `media_ids` entry, `media_urls` entry or `audio_url`), text optional.
fn validate(state: &AppState, body: &SendMessage) -> Result<String, ApiError> {
    let attachments =
        body.media_ids.len() + body.media_urls.len() + usize::from(body.audio_url.is_some());
    let content = body.content.as_deref().unwrap_or("");
    match body.message_type.as_str() {
        "text" => {
            if attachments > 0 || body.audio_duration_seconds.is_some() {
                return Err(ApiError::validation(
                    "media_ids",
                    "media can only be sent with a multimodal, image or audio message",
                ));
            }
        }
        "multimodal" | "image" => {
            if body.audio_url.is_some() {
                return Err(ApiError::validation(
                    "audio_url",
                    "audio goes in an audio message",
                ));
            }
            if attachments == 0 {
                return Err(ApiError::validation(
                    "media_ids",
                    format!(
                        "a {} message needs at least one image (media_ids or media_urls)",
                        body.message_type
                    ),
                ));
            }
        }
        "audio" => {
            if attachments != 1 {
                return Err(ApiError::validation(
                    "media_ids",
                    "an audio message carries exactly one voice note (media_ids, media_urls or audio_url)",
                ));
            }
        }
        other => {
            return Err(ApiError::validation(
                "message_type",
                format!("'{other}' is not one of text, multimodal, image, audio"),
            ));
        }
    }
    if body.message_type != "audio" && body.audio_duration_seconds.is_some() {
        return Err(ApiError::validation(
            "audio_duration_seconds",
            "only an audio message has a duration",
        ));
    }
    if body
        .audio_duration_seconds
        .is_some_and(|d| !d.is_finite() || d < 0.0)
    {
        return Err(ApiError::validation(
            "audio_duration_seconds",
            "must be a non-negative number",
        ));
    }
    let max_media = state.media.max_per_message();
    if attachments > max_media {
        return Err(ApiError::validation(
            "media_ids",
            format!("at most {max_media} media per message"),
        ));
    }
    if matches!(body.message_type.as_str(), "text" | "multimodal") && content.trim().is_empty() {
        return Err(ApiError::validation("content", "must not be empty"));
    }
    let limit = state.config.limits.max_message_bytes;
    if content.len() > limit {
        return Err(ApiError::payload_too_large(format!(
            "content is {} bytes; the limit is {limit}",
            content.len()
        ))
        .with_details(
            json!({ "field": "content", "limit_bytes": limit, "size_bytes": content.len() }),
        ));
    }
    Ok(content.to_string())
}

/// A message's media, resolved: the text to store, the message to send (its text, images and native audio),
/// and the message's `media` JSON.
struct Attached {
    content: String,
    prompt: ChatMessage,
    media: serde_json::Value,
}

/// Looks up `media_ids` (the caller's own: anyone else's is 404), fetches `media_urls`/`audio_url`, checks each
/// is of the kind the message type takes, reads images for the provider and transcribes a voice note (its
/// transcript becomes the message's text, after any text sent with it). A voice note also goes to the model as
/// audio when the model hears (`audio` modality) and its provider takes the format; the model then gets the
/// audio and the text sent with it, not the transcript.
async fn attach_media(
    state: &AppState,
    user: &AuthUser,
    route: &ModelRoute,
    body: &SendMessage,
    content: String,
) -> Result<Attached, ApiError> {
    use crate::media::{Kind, MediaStore};
    if body.message_type == "text" {
        return Ok(Attached {
            prompt: ChatMessage::user(content.clone()),
            content,
            media: json!([]),
        });
    }
    let wanted = if body.message_type == "audio" {
        Kind::Audio
    } else {
        Kind::Image
    };
    let mut found: Vec<(crate::store::Media, Option<&str>)> = Vec::new();
    for id in &body.media_ids {
        let media = state
            .store
            .get_media(&user.user_id, *id)
            .await?
            .ok_or_else(|| {
                ApiError::not_found("media").with_details(json!({ "field": "media_ids", "id": id }))
            })?;
        found.push((media, None));
    }
    for url in body.media_urls.iter().chain(&body.audio_url) {
        let media = state.media.fetch(&*state.store, &user.user_id, url).await?;
        found.push((media, Some(url.as_str())));
    }
    let mut described = Vec::with_capacity(found.len());
    let mut images = Vec::new();
    let mut audio = Vec::new();
    let caption = content.clone();
    let mut content = content;
    for (media, source) in &found {
        if Kind::of(&media.content_type) != Some(wanted) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "wrong_media_kind",
                format!(
                    "media {} is {}; a{} {} message takes {}",
                    media.id,
                    media.content_type,
                    if body.message_type == "image" {
                        "n"
                    } else {
                        ""
                    },
                    body.message_type,
                    if wanted == Kind::Audio {
                        "one audio file"
                    } else {
                        "images"
                    }
                ),
            )
            .with_details(json!({ "field": "media_ids", "id": media.id })));
        }
        let mut entry = MediaStore::describe(media);
        if let Some(source) = source {
            entry["source_url"] = json!(source);
        }
        match wanted {
            Kind::Image => images.push(state.media.media_data(media).await?),
            Kind::Audio => {
                if route.accepts_audio && route.provider.native_audio(&media.content_type) {
                    audio.push(state.media.media_data(media).await?);
                    entry["sent_as"] = json!("audio");
                }
                let transcript = state.media.transcribe(media).await?;
                content = if content.trim().is_empty() {
                    transcript.clone()
                } else {
                    format!("{content}\n\n{transcript}")
                };
                entry["transcript"] = json!(transcript);
                if let Some(seconds) = body.audio_duration_seconds {
                    entry["duration_seconds"] = json!(seconds);
                }
            }
        }
        described.push(entry);
    }
    let prompt = if audio.is_empty() {
        ChatMessage::user(content.clone())
    } else {
        ChatMessage::user(caption).with_audio(audio)
    };
    Ok(Attached {
        content,
        prompt: prompt.with_images(images),
        media: serde_json::Value::Array(described),
    })
}

/// 422 `model_cannot_take_images`, naming the model.
fn takes_no_images(route: &ModelRoute) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "model_cannot_take_images",
        format!(
            "model '{}' does not take images; pick a model with \"image\" in its modalities",
            route.alias
        ),
    )
    .with_details(json!({ "model": route.alias }))
}

/// Prompt tokens counted for one image when fitting history and reserving budget: an upper estimate (Anthropic
/// bills about 1,600 tokens for a 1092×1092 image; OpenAI at most 1,105 for a high-detail 1024×1024 one).
pub(crate) const IMAGE_TOKENS: u64 = 1600;

/// Images of earlier messages sent again with the history (a question about "the photo" needs the photo):
/// those of the most recent user messages, up to `media.max_per_message` images, read from storage; none for a
/// model that does not take images.
async fn history_images(
    state: &AppState,
    user: &AuthUser,
    route: &ModelRoute,
    history_newest_first: &[Message],
) -> Result<HashMap<Id, Vec<MediaData>>, ApiError> {
    let mut found = HashMap::new();
    if !route.accepts_images {
        return Ok(found);
    }
    let mut budget = state.media.max_per_message();
    for message in history_newest_first {
        if budget == 0 {
            break;
        }
        if message.role != role::USER
            || !matches!(message.message_type.as_str(), "multimodal" | "image")
        {
            continue;
        }
        let mut images = images_of(state, user, &message.media).await?;
        images.truncate(budget);
        budget -= images.len();
        if !images.is_empty() {
            found.insert(message.id, images);
        }
    }
    Ok(found)
}

/// The images of a stored message (from its `media` JSON), for sending it again; media since deleted are left
/// out.
async fn images_of(
    state: &AppState,
    user: &AuthUser,
    media: &serde_json::Value,
) -> Result<Vec<MediaData>, ApiError> {
    let mut images = Vec::new();
    for id in crate::store::media_ids_of(media) {
        if let Some(found) = state.store.get_media(&user.user_id, id).await?
            && crate::media::Kind::of(&found.content_type) == Some(crate::media::Kind::Image)
        {
            images.push(state.media.media_data(&found).await?);
        }
    }
    Ok(images)
}

/// The persona's system prompt, then as much recent history as fits, then the new message.
///
/// The budget is the smaller of `generation.max_history_tokens` and the model's context window less the system
/// prompt and `generation.reserve_output_tokens`. A message never has more tokens than bytes (byte-level BPE),
/// so messages are counted with tiktoken only when their byte length alone could overflow the budget.
fn build_prompt(
    state: &AppState,
    persona: &Persona,
    route: &ModelRoute,
    history_newest_first: &[Message],
    history_images: &HashMap<Id, Vec<MediaData>>,
    new_message: ChatMessage,
) -> Result<(Vec<ChatMessage>, u64), ApiError> {
    let config = &state.config.generation;
    let system = ChatMessage::system(crate::personas::system_prompt(persona));
    let tokenizer = route.tokenizer;
    let reserved = u64::from(config.reserve_output_tokens);
    // The system prompt's byte length bounds its tokens; count exactly only when the window is what limits the
    // history (most models' windows dwarf max_history_tokens, and then no tokenizer is needed at all).
    let system_upper = 3 + system.content.len() as u64 + 3;
    let system_tokens = if u64::from(route.context_window).saturating_sub(reserved + system_upper)
        >= u64::from(config.max_history_tokens)
    {
        system_upper
    } else {
        tokenizer.count_message(&system) + 3
    };
    let window_budget = u64::from(route.context_window)
        .saturating_sub(reserved)
        .saturating_sub(system_tokens);
    let budget = window_budget.min(u64::from(config.max_history_tokens));
    let cost = |m: &ChatMessage, spent: u64| {
        let images = IMAGE_TOKENS * m.images.len() as u64;
        let upper = 3 + m.content.len() as u64 + images;
        if spent + upper <= budget {
            upper
        } else {
            tokenizer.count_message(m) + images
        }
    };

    let mut spent = cost(&new_message, 0);
    if spent > budget {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
            format!(
                "the message needs {spent} tokens; model '{}' has room for {budget}",
                route.alias
            ),
        )
        .with_details(json!({ "tokens": spent, "budget": budget })));
    }
    let mut included = Vec::new();
    for message in history_newest_first {
        let chat = match message.role.as_str() {
            role::USER => match history_images.get(&message.id) {
                Some(images) => {
                    ChatMessage::user(message.content.clone()).with_images(images.clone())
                }
                // An image the model will not see still leaves a trace, so the turn is never empty.
                None if !crate::store::media_ids_of(&message.media).is_empty()
                    && message.message_type != "audio" =>
                {
                    ChatMessage::user(
                        format!("{} [image]", message.content)
                            .trim_start()
                            .to_string(),
                    )
                }
                None => ChatMessage::user(message.content.clone()),
            },
            role::ASSISTANT if !message.content.is_empty() => {
                ChatMessage::assistant(message.content.clone())
            }
            _ => continue,
        };
        let tokens = cost(&chat, spent);
        if spent + tokens > budget {
            break;
        }
        spent += tokens;
        included.push(chat);
    }
    let mut messages = Vec::with_capacity(included.len() + 2);
    messages.push(system);
    messages.extend(included.into_iter().rev());
    messages.push(new_message);
    Ok((messages, system_tokens + spent))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
    before: Option<Id>,
    after: Option<Id>,
    offset: Option<i64>,
    order: Option<String>,
    /// `latest` (default): only the newest reply to each message; `all`: regenerated replies too.
    branches: Option<String>,
}

/// `GET /api/v1/conversations/{id}/messages?limit&before|after|offset&order=asc|desc&branches=latest|all` →
/// `{messages, has_more}`. Without a cursor, `desc` (the default) gives the newest page.
#[utoipa::path(
    get,
    operation_id = "messages_history",
    path = "/api/v1/conversations/{id}/messages",
    tag = "messages",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
        ("limit" = Option<i64>, Query),
        ("before" = Option<String>, Query),
        ("after" = Option<String>, Query),
        ("offset" = Option<i64>, Query),
        ("order" = Option<String>, Query, description = "asc | desc"),
        ("branches" = Option<String>, Query, description = "latest | all"),
    ),
    responses(
        (status = 200, description = "`{messages: [Message], has_more}`", body = Object),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(conversation_id): Path<String>,
    AppQuery(q): AppQuery<HistoryQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let conversation = owned(&state, &user, &conversation_id).await?;
    let limit = page_limit(q.limit, 50, 200)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(ApiError::validation("order", "must be asc or desc")),
    };
    let all_branches = match q.branches.as_deref() {
        None | Some("latest") => false,
        Some("all") => true,
        Some(_) => return Err(ApiError::validation("branches", "must be latest or all")),
    };
    let page = match (q.before, q.after, q.offset) {
        (Some(id), None, None) => HistoryPage::Before(id),
        (None, Some(id), None) => HistoryPage::After(id),
        (None, None, offset) => HistoryPage::Offset(offset.unwrap_or(0).max(0)),
        _ => {
            return Err(ApiError::validation(
                "before",
                "use one of before, after or offset",
            ));
        }
    };
    let mut messages = state
        .store
        .list_messages(conversation.id, page, limit + 1, ascending, all_branches)
        .await?;
    let has_more = messages.len() as i64 > limit;
    if has_more {
        // The extra row is the one farthest from the cursor: last when reading away from it.
        let reads_forward = match page {
            HistoryPage::Offset(_) => true,
            HistoryPage::Before(_) => !ascending,
            HistoryPage::After(_) => ascending,
        };
        if reads_forward {
            messages.truncate(limit as usize);
        } else {
            messages.remove(0);
        }
    }
    Ok(Json(json!({ "messages": messages, "has_more": has_more })))
}

/// `DELETE /api/v1/messages/{id}` → 204; 404 for anyone else's message.
#[utoipa::path(
    delete,
    operation_id = "messages_delete_message",
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(
        ("id" = String, Path, description = "message id (UUID)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn delete_message(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "message")?;
    if state.store.delete_message(&user.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("message"))
    }
}
