//! The OpenAI-compatible surface: `POST /v1/chat/completions` (streaming and not) and `GET /v1/models`, so
//! the official OpenAI SDKs and the Vercel AI SDK's OpenAI provider work unmodified (point their base URL at
//! `http://<chatgate>/v1`, and pass a chatgate JWT as the API key).
//!
//! Stateless, as in OpenAI's API: the caller sends the whole history; chatgate stores no messages but records
//! the usage (per user, priced) and applies the same limits, retries and fallbacks. A chatgate extension field
//! `persona` (a persona's id or slug) puts that persona's system prompt first. Shapes follow the OpenAI API
//! reference ("Chat Completions", "Models"): `chat.completion`, `chat.completion.chunk`, `data: [DONE]`,
//! errors as `{"error": {"message", "type", "param", "code"}}`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::messages::{admit, retry_policy};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{ApiError, AppJson};
use crate::providers::{ChatMessage, ChatRequest, MediaData, Role};
use crate::store::{Id, PersonaFilter};
use crate::stream::generation::{self, GenerationJob};
use crate::stream::{EventKind, Generation, sse_response};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
}

/// An [`ApiError`] in OpenAI's error shape.
struct OpenAiError(ApiError);

impl From<ApiError> for OpenAiError {
    fn from(err: ApiError) -> Self {
        Self(err)
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let err = self.0;
        let kind = match err.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400 | 413 | 415 | 422 => "invalid_request_error",
            _ => "api_error",
        };
        let param = err
            .details
            .get("field")
            .or_else(|| err.details.get("path"))
            .cloned()
            .unwrap_or(Value::Null);
        let body = json!({ "error": { "message": err.message, "type": kind, "param": param, "code": err.error } });
        let mut response = (err.status, Json(body)).into_response();
        if let Some(secs) = err.retry_after_secs {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    messages: Vec<InputMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    /// chatgate extension: a persona's id or slug.
    #[serde(default)]
    persona: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct InputMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

/// A message's content: a string, or an array of `text` and `image_url` parts (OpenAI API reference, "Create
/// chat completion", content parts). An image is a `data:` URL (RFC 2397, base64), or an http(s) URL fetched
/// under the upload rules and kept as the caller's media; its type is sniffed from its bytes.
async fn content_of(
    state: &AppState,
    user: &AuthUser,
    content: &Value,
) -> Result<(String, Vec<MediaData>), ApiError> {
    match content {
        Value::String(text) => Ok((text.clone(), Vec::new())),
        Value::Null => Ok((String::new(), Vec::new())),
        Value::Array(parts) => {
            let mut text = String::new();
            let mut images = Vec::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or(""))
                    }
                    Some("image_url") => {
                        let url = part["image_url"]["url"]
                            .as_str()
                            .or(part["image_url"].as_str())
                            .ok_or_else(|| {
                                ApiError::validation(
                                    "messages",
                                    "an image_url part needs image_url.url",
                                )
                            })?;
                        images.push(image_of(state, user, url).await?);
                    }
                    Some(other) => {
                        return Err(ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "unsupported_content",
                            format!("content parts of type '{other}' are not supported here yet"),
                        ));
                    }
                    None => {
                        return Err(ApiError::validation(
                            "messages",
                            "a content part needs a type",
                        ));
                    }
                }
            }
            Ok((text, images))
        }
        _ => Err(ApiError::validation(
            "messages",
            "content must be a string or an array of parts",
        )),
    }
}

/// One `image_url`: a `data:` URL checked like an upload (decodable, sniffed type allowed, within the image
/// limit), or an http(s) URL fetched through the media guard.
async fn image_of(state: &AppState, user: &AuthUser, url: &str) -> Result<MediaData, ApiError> {
    use base64::Engine;
    if !url.starts_with("data:") {
        let media = state.media.fetch(&*state.store, &user.user_id, url).await?;
        if crate::media::Kind::of(&media.content_type) != Some(crate::media::Kind::Image) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "wrong_media_kind",
                format!("{url} is {}, not an image", media.content_type),
            ));
        }
        return state.media.media_data(&media).await;
    }
    let bytes = crate::media::decode_data_url(
        url,
        state.media.limit(crate::media::Kind::Image),
        "messages",
    )?;
    let mime_type = crate::media::sniff(&bytes)
        .filter(|t| {
            t.starts_with("image/") && state.config.media.allowed_types.iter().any(|a| a == t)
        })
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the image data URL's bytes are not an allowed image type",
            )
        })?;
    Ok(MediaData {
        mime_type: mime_type.to_string(),
        base64: base64::engine::general_purpose::STANDARD
            .encode(&bytes)
            .into(),
    })
}

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    operation_id = "openai_completions",
    path = "/v1/chat/completions",
    tag = "openai",
    request_body(content = Object, description = "OpenAI's chat completion request: `model`, `messages`, `stream`, `stream_options.include_usage`, `max_tokens`; plus `persona`"),
    responses(
        (status = 200, description = "`chat.completion`, or `chat.completion.chunk` SSE ending `[DONE]`", content((Object = "application/json"), (String = "text/event-stream"))),
        (status = 400, description = "OpenAI error shape `{error: {message, type, param, code}}`", body = Object),
        (status = 401, description = "missing or invalid token", body = Object),
        (status = 404, description = "not found", body = Object),
        (status = 429, description = "rate limited", body = Object),
    )
)]
async fn completions(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(request): AppJson<CompletionRequest>,
) -> Result<Response, OpenAiError> {
    let route = state.models.get(&request.model).cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("The model `{}` does not exist", request.model),
        )
        .with_details(json!({ "field": "model" }))
    })?;
    let mut messages = Vec::with_capacity(request.messages.len() + 1);
    if let Some(persona) = request.persona.as_deref() {
        let persona = find_persona(&state, persona).await?;
        messages.push(ChatMessage::system(crate::personas::system_prompt(
            &persona,
        )));
    }
    for message in &request.messages {
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::validation(
                    "messages",
                    format!("role '{other}' is not supported"),
                )
                .into());
            }
        };
        let (content, images) = content_of(&state, &user, &message.content).await?;
        if !images.is_empty() {
            if role != Role::User {
                return Err(ApiError::validation(
                    "messages",
                    "only user messages may carry images",
                )
                .into());
            }
            if !route.accepts_images {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "model_cannot_take_images",
                    format!("The model `{}` does not take images", request.model),
                )
                .with_details(json!({ "field": "messages" }))
                .into());
            }
        }
        messages.push(ChatMessage {
            role,
            content,
            images,
            audio: Vec::new(),
        });
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(
            ApiError::validation("messages", "at least one user message is required").into(),
        );
    }
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    let prompt_tokens = 3 + messages
        .iter()
        .map(|m| 3 + m.content.len() as u64 + super::messages::IMAGE_TOKENS * m.images.len() as u64)
        .sum::<u64>();
    if bytes > state.config.server.max_body_bytes {
        return Err(ApiError::payload_too_large(
            "the messages are larger than server.max_body_bytes",
        )
        .into());
    }
    let reservation = admit(&state, &user, &route, prompt_tokens).await?;
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .or(route.max_output_tokens);
    let alias = route.alias.clone();
    let job = GenerationJob {
        request: ChatRequest {
            model: route.upstream_model.clone(),
            messages,
            max_tokens,
        },
        route,
        store: state.store.clone(),
        user_id: user.user_id.clone(),
        conversation_id: Id(uuid::Uuid::nil()),
        persona_id: None,
        parent_id: None,
        persist_attempts: state.config.generation.persist_attempts,
        fallbacks: state.models.fallbacks(&alias),
        reservation,
        stateless: true,
        retry: retry_policy(&state),
    };
    let generation = state
        .hub
        .start(
            Id::new(),
            Id(uuid::Uuid::nil()),
            &user.user_id,
            &alias,
            move |g| generation::run(g, job),
        )
        .map_err(|e| ApiError::unavailable("the server is shutting down; retry shortly", e))?;
    let id = format!("chatcmpl-{}", generation.id.0.simple());
    let created = chrono::Utc::now().timestamp();
    if request.stream {
        let include_usage = request.stream_options.unwrap_or_default().include_usage;
        let keepalive = std::time::Duration::from_secs(state.config.server.sse_keepalive_secs);
        return Ok(sse_response(
            chunks(generation, id, created, request.model, include_usage),
            keepalive,
        ));
    }
    let _following = generation.attach();
    let outcome = generation.outcome().await;
    if let Some(error) = outcome.error.clone() {
        return Err(error.into());
    }
    let (usage, finish_reason) = usage_and_finish(&generation);
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": generation.text(), "refusal": null },
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
        "usage": usage,
    }))
    .into_response())
}

async fn find_persona(state: &AppState, key: &str) -> Result<crate::store::Persona, ApiError> {
    if let Ok(id) = key.parse::<Id>()
        && let Some(persona) = state.personas.get(&*state.store, id).await?
    {
        return Ok(persona);
    }
    let filter = PersonaFilter {
        category: None,
        include_inactive: false,
        limit: 1000,
        offset: 0,
    };
    state
        .store
        .list_personas(&filter)
        .await?
        .into_iter()
        .find(|p| p.slug == key)
        .ok_or_else(|| ApiError::not_found("persona").with_details(json!({ "field": "persona" })))
}

/// OpenAI's `usage` object and the finish reason, from a finished generation's log.
fn usage_and_finish(generation: &Generation) -> (Value, Value) {
    let mut usage = Value::Null;
    let mut finish = Value::String("stop".into());
    for event in generation.events_now() {
        let data: Value = serde_json::from_str(event.data()).unwrap_or(Value::Null);
        match event.kind {
            EventKind::Usage => {
                let prompt = data["prompt_tokens"].as_u64().unwrap_or(0);
                let completion = data["completion_tokens"].as_u64().unwrap_or(0);
                usage = json!({
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                    "prompt_tokens_details": { "cached_tokens": data["cached_tokens"] },
                    "completion_tokens_details": { "reasoning_tokens": data["reasoning_tokens"] },
                });
            }
            EventKind::Done => {
                finish = openai_finish(data["finish_reason"].as_str().unwrap_or("stop"))
            }
            _ => {}
        }
    }
    (usage, finish)
}

fn openai_finish(reason: &str) -> Value {
    // OpenAI knows stop, length, content_filter and tool_calls; a stopped reply is a stop.
    Value::String(match reason {
        "length" | "content_filter" | "tool_calls" => reason.to_string(),
        _ => "stop".to_string(),
    })
}

/// The generation as `chat.completion.chunk` SSE frames, then `data: [DONE]`.
fn chunks(
    generation: Arc<Generation>,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    let chunk = move |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let events = generation.subscribe(0);
    async_stream::stream! {
        let mut events = std::pin::pin!(events);
        yield chunk(json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]), None);
        let mut usage = None;
        while let Some(event) = events.next().await {
            let data: Value = match event.kind {
                EventKind::Delta | EventKind::Usage | EventKind::Done | EventKind::Error => serde_json::from_str(event.data()).unwrap_or(Value::Null),
                _ => continue,
            };
            match event.kind {
                EventKind::Delta => yield chunk(json!([{ "index": 0, "delta": { "content": data["text"] }, "logprobs": null, "finish_reason": null }]), None),
                EventKind::Usage => {
                    let prompt = data["prompt_tokens"].as_u64().unwrap_or(0);
                    let completion = data["completion_tokens"].as_u64().unwrap_or(0);
                    usage = Some(json!({
                        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                        "prompt_tokens_details": { "cached_tokens": data["cached_tokens"] },
                        "completion_tokens_details": { "reasoning_tokens": data["reasoning_tokens"] },
                    }));
                }
                EventKind::Done => {
                    let finish = openai_finish(data["finish_reason"].as_str().unwrap_or("stop"));
                    yield chunk(json!([{ "index": 0, "delta": {}, "logprobs": null, "finish_reason": finish }]), None);
                    if include_usage {
                        yield chunk(json!([]), usage.take());
                    }
                    yield Bytes::from_static(b"data: [DONE]\n\n");
                    break;
                }
                EventKind::Error => {
                    let error = json!({ "error": { "message": data["message"], "type": "api_error", "param": null, "code": data["error"] } });
                    yield Bytes::from(format!("data: {error}\n\n"));
                    break;
                }
                _ => {}
            }
        }
    }
}

/// `GET /v1/models`: the model aliases, as OpenAI's model list.
#[utoipa::path(
    get,
    operation_id = "openai_models",
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "`{object: \"list\", data: [{id, object, created, owned_by}]}`", body = Object),
        (status = 401, description = "missing or invalid token", body = Object),
    )
)]
async fn models(State(state): State<AppState>, _: AuthUser) -> Json<Value> {
    let data: Vec<Value> = state
        .models
        .routes()
        .map(|route| json!({ "id": route.alias, "object": "model", "created": 0, "owned_by": route.provider.name() }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
