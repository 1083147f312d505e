//! The OpenAI-compatible surface: `POST /v1/chat/completions` (streaming and not), `GET /v1/models` and
//! `GET /v1/models/{id}`, every failure in OpenAI's error shape ([`error_shape`]), so
//! the official OpenAI SDKs and the Vercel AI SDK's OpenAI provider work unmodified (point their base URL at
//! `http://<chatgate>/v1`, and pass a chatgate JWT as the API key).
//!
//! Stateless, as in OpenAI's API: the caller sends the whole history; chatgate stores no messages but records
//! the usage (per user, priced) and applies the same limits, retries and fallbacks. A chatgate extension field
//! `persona` (a persona's id or slug) puts that persona's system prompt first. The shapes are in
//! `wire::openai`.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::error::AppJson;
use crate::AppState;
use crate::auth::AuthUser;
use crate::chat::Completion;
use crate::error::Error;
use crate::event::GenerationEvent;
use crate::providers::{ChatMessage, MediaData, Role, Sampling, Tool, ToolCall, ToolChoice, Tools};
use crate::telemetry::metrics::{Overhead, Transport};
use crate::wire::openai::{ChatCompletion, ErrorResponse};
use crate::wire::{openai, sse};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
}

/// Middleware: every failure under `/v1` in OpenAI's error shape `{"error": {"message", "type", "param",
/// "code"}}` (`wire::openai::error_body`), whatever raised it: the handler, authentication, the rate limit
/// (`Retry-After` kept), a malformed or oversized body, an unknown route or method. The status and headers stay;
/// only the body is rewritten, from the [`Error`] the response carries.
pub async fn error_shape(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if !(path == "/v1" || path.starts_with("/v1/")) {
        return next.run(request).await;
    }
    let response = next.run(request).await;
    let Some(err) = response.extensions().get::<Error>() else {
        return response;
    };
    let body = openai::error_body(err).to_json();
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

#[derive(Debug, Deserialize)]
pub(super) struct CompletionRequest {
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
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    /// A string or up to 4 strings.
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    presence_penalty: Option<f64>,
    #[serde(default)]
    frequency_penalty: Option<f64>,
    #[serde(default)]
    response_format: Option<Value>,
    /// Function tools: `[{type: "function", function: {name, description?, parameters?, strict?}}]`.
    #[serde(default)]
    tools: Option<Vec<Value>>,
    /// `"none"`, `"auto"`, `"required"` or `{type: "function", function: {name}}`.
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    /// Only 1: one reply per request.
    #[serde(default)]
    n: Option<u32>,
    /// The end user, for the caller's own tracking upstream; chatgate keys usage by the token's user and
    /// ignores it.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted as OpenAI's API does, and not used")]
    user: Option<String>,
    /// chatgate extension: a persona's id or slug.
    #[serde(default)]
    persona: Option<String>,
    /// Whatever else the request holds: refused, naming it ([`sampling_of`]).
    #[serde(flatten)]
    other: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// OpenAI parameters chatgate knows and does not offer yet: refused saying so, rather than dropped.
const NOT_YET: &[&str] = &[
    "functions",
    "function_call",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "reasoning_effort",
];

/// The request's sampling settings, checked: ranges as OpenAI's API reference gives them; `n` other than 1, a
/// parameter chatgate does not offer yet (unless asked for off), or one it does not know are 400 naming the
/// parameter (OpenAI answers "Unrecognized request argument supplied" to what it does not know). A parameter
/// given as `null` is absent.
fn sampling_of(request: &CompletionRequest) -> Result<Sampling, Error> {
    // A feature chatgate does not offer, asked for off (`logprobs: false`, `functions: []`,
    // `function_call: "none"`), is no request for it: clients send such defaults.
    let off = |name: &str, value: &Value| match value {
        Value::Null => true,
        Value::Bool(on) => !on,
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
        Value::String(choice) => {
            name == "function_call" && matches!(choice.as_str(), "none" | "auto")
        }
        Value::Number(_) => false,
    };
    let asked = request.other.iter().find(|(name, value)| {
        let absent = value.is_null() || (NOT_YET.contains(&name.as_str()) && off(name, value));
        !absent
    });
    if let Some((name, _)) = asked {
        if NOT_YET.contains(&name.as_str()) {
            return Err(Error::new(
                crate::error::ErrorKind::Invalid,
                "unsupported_parameter",
                format!("`{name}` is not supported by chatgate yet"),
            )
            .with_details(json!({ "field": name })));
        }
        return Err(Error::new(
            crate::error::ErrorKind::Invalid,
            "unknown_parameter",
            format!("Unrecognized request argument supplied: {name}"),
        )
        .with_details(json!({ "field": name })));
    }
    if request.n.is_some_and(|n| n != 1) {
        return Err(invalid(
            "n",
            "only n = 1 is supported: one reply per request",
        ));
    }
    let ranges = [
        ("temperature", request.temperature, 0.0, 2.0),
        ("top_p", request.top_p, 0.0, 1.0),
        ("presence_penalty", request.presence_penalty, -2.0, 2.0),
        ("frequency_penalty", request.frequency_penalty, -2.0, 2.0),
    ];
    for (param, value, low, high) in ranges {
        if value.is_some_and(|v| !(low..=high).contains(&v)) {
            return Err(invalid(
                param,
                format!("`{param}` must be between {low} and {high}"),
            ));
        }
    }
    let stop = match &request.stop {
        None => Vec::new(),
        Some(Stop::One(one)) => vec![one.clone()],
        Some(Stop::Many(many)) => many.clone(),
    };
    if stop.len() > 4 || stop.iter().any(String::is_empty) {
        return Err(invalid("stop", "`stop` takes up to 4 non-empty sequences"));
    }
    if let Some(format) = &request.response_format {
        let ok = match format["type"].as_str() {
            Some("text" | "json_object") => true,
            Some("json_schema") => format["json_schema"]["schema"].is_object(),
            _ => false,
        };
        if !ok {
            return Err(invalid(
                "response_format",
                "`response_format` is {\"type\": \"text\"}, {\"type\": \"json_object\"} or {\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\": {...}}}",
            ));
        }
    }
    Ok(Sampling {
        temperature: request.temperature,
        top_p: request.top_p,
        stop,
        seed: request.seed,
        presence_penalty: request.presence_penalty,
        frequency_penalty: request.frequency_penalty,
        response_format: request.response_format.clone(),
    })
}

/// `invalid_request_error` / `invalid_parameter` naming `param`.
pub(super) fn invalid(param: &str, message: impl Into<String>) -> Error {
    Error::new(
        crate::error::ErrorKind::Invalid,
        "invalid_parameter",
        message.into(),
    )
    .with_details(json!({ "field": param }))
}

/// OpenAI's limit on the tools of one request.
const MAX_TOOLS: usize = 128;

/// The request's tools, checked: function tools only, each named `^[A-Za-z0-9_-]{1,64}$` (the rule OpenAI,
/// Anthropic and Gemini share) and at most once, parameters an object schema; `tool_choice` naming one of them.
/// `tool_choice` `"none"` / `"auto"` and `parallel_tool_calls` without tools are the clients' defaults, not a
/// request: they are ignored.
fn tools_of(request: &CompletionRequest) -> Result<Tools, Error> {
    let definitions = request.tools.as_deref().unwrap_or_default();
    if definitions.len() > MAX_TOOLS {
        return Err(invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools may be given"),
        ));
    }
    let mut tools = Tools::default();
    for (at, tool) in definitions.iter().enumerate() {
        let param = format!("tools[{at}]");
        match tool["type"].as_str() {
            Some("function") => {}
            Some(other) => {
                return Err(Error::new(
                    crate::error::ErrorKind::Invalid,
                    "unsupported_parameter",
                    format!("tools of type '{other}' are not supported: only function tools are"),
                )
                .with_details(json!({ "field": format!("{param}.type") })));
            }
            None => {
                return Err(invalid(
                    &param,
                    "a tool is {\"type\": \"function\", \"function\": {\"name\", \"parameters\"}}",
                ));
            }
        }
        let function = &tool["function"];
        let name = function["name"].as_str().unwrap_or("");
        if !is_tool_name(name) {
            return Err(invalid(
                &format!("{param}.function.name"),
                "a tool's name is 1 to 64 letters, digits, underscores or dashes",
            ));
        }
        if tools.definitions.iter().any(|t| t.name == name) {
            return Err(invalid(
                &format!("{param}.function.name"),
                format!("two tools are named '{name}'"),
            ));
        }
        let parameters = match &function["parameters"] {
            Value::Null => json!({ "type": "object", "properties": {} }),
            schema @ Value::Object(_) => schema.clone(),
            _ => {
                return Err(invalid(
                    &format!("{param}.function.parameters"),
                    "a tool's parameters are a JSON Schema object",
                ));
            }
        };
        tools.definitions.push(Tool {
            name: name.to_string(),
            description: function["description"].as_str().map(str::to_string),
            parameters,
            strict: function["strict"].as_bool(),
        });
    }
    let choice = match &request.tool_choice {
        None | Some(Value::Null) => None,
        Some(Value::String(choice)) => match choice.as_str() {
            "auto" => Some(ToolChoice::Auto),
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => None,
        }
        .map(Some)
        .ok_or_else(|| {
            invalid(
                "tool_choice",
                "`tool_choice` is \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}",
            )
        })?,
        Some(choice) => match (choice["type"].as_str(), choice["function"]["name"].as_str()) {
            (Some("function"), Some(name)) => {
                if !tools.definitions.iter().any(|t| t.name == name) {
                    return Err(invalid(
                        "tool_choice",
                        format!("`tool_choice` names '{name}', which is not among the tools"),
                    ));
                }
                Some(ToolChoice::Function(name.to_string()))
            }
            _ => {
                return Err(invalid(
                    "tool_choice",
                    "`tool_choice` is \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\"}}",
                ));
            }
        },
    };
    if tools.is_empty() {
        if choice == Some(ToolChoice::Required) {
            return Err(invalid(
                "tool_choice",
                "`tool_choice` \"required\" needs tools",
            ));
        }
        return Ok(tools);
    }
    tools.choice = choice;
    tools.parallel = request.parallel_tool_calls;
    Ok(tools)
}

/// `^[A-Za-z0-9_-]{1,64}$`.
fn is_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An assistant message's tool call, `{id, type: "function", function: {name, arguments}}`; `param` names it
/// in errors.
fn tool_call_of(call: &Value, param: &str) -> Result<ToolCall, Error> {
    let id = call["id"].as_str().filter(|id| !id.is_empty());
    let name = call["function"]["name"].as_str().filter(|n| !n.is_empty());
    let (Some(id), Some(name)) = (id, name) else {
        return Err(invalid(
            param,
            "a tool call is {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\"}}",
        ));
    };
    let arguments = match &call["function"]["arguments"] {
        Value::String(text) => text.clone(),
        Value::Null => "{}".into(),
        // Some clients send the arguments parsed.
        other => other.to_string(),
    };
    Ok(ToolCall {
        id: id.to_string(),
        name: name.to_string(),
        arguments,
    })
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
    /// An assistant message's calls: `[{id, type: "function", function: {name, arguments}}]`.
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    tool_call_id: Option<String>,
}

/// A message's content: a string, or an array of `text` and `image_url` parts (OpenAI API reference, "Create
/// chat completion", content parts). An image is a `data:` URL (RFC 2397, base64), or an http(s) URL fetched
/// under the upload rules and kept as the caller's media; its type is sniffed from its bytes.
async fn content_of(
    state: &AppState,
    user: &AuthUser,
    content: &Value,
) -> Result<(String, Vec<MediaData>), Error> {
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
                                Error::validation(
                                    "messages",
                                    "an image_url part needs image_url.url",
                                )
                            })?;
                        images.push(state.chat.image_from_url(&user.user_id, url).await?);
                    }
                    Some(other) => {
                        return Err(Error::new(
                            crate::error::ErrorKind::Unprocessable,
                            "unsupported_content",
                            format!("content parts of type '{other}' are not supported here yet"),
                        ));
                    }
                    None => {
                        return Err(Error::validation("messages", "a content part needs a type"));
                    }
                }
            }
            Ok((text, images))
        }
        _ => Err(Error::validation(
            "messages",
            "content must be a string or an array of parts",
        )),
    }
}

/// The errors of the `/v1` routes that start a generation, as OpenAI shapes them (the bodies are built by
/// [`error_shape`] from the [`Error`] a response carries; this only documents them).
#[derive(utoipa::IntoResponses)]
#[expect(
    dead_code,
    reason = "documents the errors; error_shape writes their bodies"
)]
pub(super) enum GenerationErrors {
    /// Invalid request, naming the parameter in `param`.
    #[response(status = 400)]
    Invalid(ErrorResponse<'static>),
    /// Missing or invalid token.
    #[response(status = 401)]
    Unauthenticated(ErrorResponse<'static>),
    /// Unknown model (`model_not_found`).
    #[response(status = 404)]
    NotFound(ErrorResponse<'static>),
    /// Body too large.
    #[response(status = 413)]
    TooLarge(ErrorResponse<'static>),
    /// Not JSON.
    #[response(status = 415)]
    NotJson(ErrorResponse<'static>),
    /// Content the model cannot take (e.g. an image for a text-only model).
    #[response(status = 422)]
    Unprocessable(ErrorResponse<'static>),
    /// Rate limited (`Retry-After`).
    #[response(status = 429)]
    RateLimited(ErrorResponse<'static>),
    /// Upstream error.
    #[response(status = 502)]
    Upstream(ErrorResponse<'static>),
    /// Upstream timeout.
    #[response(status = 504)]
    Timeout(ErrorResponse<'static>),
}

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    operation_id = "openai_completions",
    path = "/v1/chat/completions",
    tag = "openai",
    request_body(content = Object, description = "OpenAI's chat completion request: `model`, `messages`, `stream`, `stream_options.include_usage`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `stop`, `seed`, `presence_penalty`, `frequency_penalty`, `response_format`, `tools` (function tools), `tool_choice`, `parallel_tool_calls`, `n` (1), `user`; messages of roles system, developer, user, assistant (with `tool_calls`) and tool (with `tool_call_id`); plus `persona`. Anything else is 400 naming it."),
    responses(
        (status = 200, description = "`chat.completion`, or `chat.completion.chunk` SSE ending `[DONE]`; `model` is the upstream model that answered, the alias asked for is the `x-chatgate-model` header", content((ChatCompletion = "application/json"), (serde_json::Value = "text/event-stream"))),
        GenerationErrors,
    )
)]
async fn completions(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(request): AppJson<CompletionRequest>,
) -> Result<Response, Error> {
    let received = Instant::now();
    let alias = request.model.clone();
    let stream = request.stream;
    let include_usage = request
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    let generation = start(&state, &user, request).await?;
    let id = format!("chatcmpl-{}", generation.id().0.simple());
    let created = chrono::Utc::now().timestamp();
    if stream {
        let keepalive = std::time::Duration::from_secs(state.config.server.sse_keepalive_secs);
        let events = Overhead::new(received, Transport::OpenAiChat)
            .measure(Arc::clone(&generation), first_delta(&generation).await?);
        // The first delta came: the model that answered is known.
        let model = answering_model(&generation, &alias);
        let chunks = openai::chunks(events, id, created, model, include_usage);
        return Ok(with_alias(sse::response(chunks, keepalive), &alias));
    }
    let _following = generation.attach();
    let terminal = generation.finished().await;
    let model = answering_model(&generation, &alias);
    let completion = openai::completion(&id, created, &model, &terminal)?;
    Ok(with_alias(Json(completion).into_response(), &alias))
}

/// Checks a Chat Completions request (`/v1/chat/completions`, or `/v1/responses` translated to one) and starts
/// its generation: the model, the parameters, the messages' shapes, then their images (which fetch).
///
/// # Errors
/// 404 `model_not_found`; 400 naming the parameter or the message field at fault; the limits' 429 / 402.
pub(super) async fn start(
    state: &AppState,
    user: &AuthUser,
    request: CompletionRequest,
) -> Result<std::sync::Arc<crate::stream::Generation>, Error> {
    // An unknown model or parameter is refused before any image is fetched.
    state.chat.completion_route(&request.model)?;
    let sampling = sampling_of(&request)?;
    let tools = tools_of(&request)?;
    let mut calls_so_far: Vec<ToolCall> = Vec::new();
    let mut shaped = Vec::with_capacity(request.messages.len());
    for (at, message) in request.messages.iter().enumerate() {
        let field = |name: &str| format!("messages[{at}].{name}");
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            other => {
                return Err(invalid(
                    &field("role"),
                    format!(
                        "role '{other}' is not supported (system, developer, user, assistant, tool)"
                    ),
                ));
            }
        };
        let calls = match (&message.tool_calls, role) {
            (None, _) => Vec::new(),
            (Some(calls), Role::Assistant) => calls
                .iter()
                .enumerate()
                .map(|(i, call)| tool_call_of(call, &field(&format!("tool_calls[{i}]"))))
                .collect::<Result<Vec<_>, _>>()?,
            (Some(_), _) => {
                return Err(invalid(
                    &field("tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
        };
        calls_so_far.extend(calls.iter().cloned());
        if role == Role::Tool {
            let Some(id) = &message.tool_call_id else {
                return Err(invalid(
                    &field("tool_call_id"),
                    "a tool message needs the tool_call_id it answers",
                ));
            };
            if !calls_so_far.iter().any(|call| &call.id == id) {
                return Err(invalid(
                    &field("tool_call_id"),
                    format!("no assistant message before this one made the tool call '{id}'"),
                ));
            }
            let text_only = match &message.content {
                Value::Array(parts) => parts.iter().all(|p| p["type"] == "text"),
                _ => true,
            };
            if !text_only {
                return Err(invalid(
                    &field("content"),
                    "a tool message's content is text",
                ));
            }
        }
        shaped.push((role, calls, message));
    }
    let mut messages = Vec::with_capacity(shaped.len());
    for (role, calls, message) in shaped {
        let (content, images) = content_of(state, user, &message.content).await?;
        messages.push(ChatMessage {
            tool_call_id: message.tool_call_id.clone().filter(|_| role == Role::Tool),
            images,
            ..ChatMessage::new(role, content).with_tool_calls(calls)
        });
    }
    state
        .chat
        .complete(
            &user.user_id,
            Completion {
                model: request.model,
                messages,
                max_tokens: request.max_completion_tokens.or(request.max_tokens),
                sampling,
                tools,
                persona: request.persona,
            },
        )
        .await
}

/// The generation's events from its start, once its first delta (or its end) came. As OpenAI does, a
/// streamed answer's head waits for it (costing no time to the first token): a failure before it is the HTTP
/// answer itself — 429 with Retry-After, or the 5xx — so the SDK's own retry runs, instead of a 200 whose
/// stream holds an error.
///
/// # Errors
/// The generation's failure, when it failed before its first delta.
pub(super) async fn first_delta(
    generation: &std::sync::Arc<crate::stream::Generation>,
) -> Result<
    impl futures::Stream<Item = std::sync::Arc<crate::event::LoggedEvent>> + Send + 'static,
    Error,
> {
    let mut events = Box::pin(generation.subscribe(0));
    let mut before_first_delta = Vec::new();
    while let Some(event) = events.next().await {
        match &event.event {
            GenerationEvent::Error(failed) => return Err(failed.failure.to_error()),
            GenerationEvent::Delta(_) | GenerationEvent::ToolCall(_) | GenerationEvent::Done(_) => {
                before_first_delta.push(event);
                break;
            }
            _ => before_first_delta.push(event),
        }
    }
    Ok(futures::stream::iter(before_first_delta).chain(events))
}

/// The response's `model`, as OpenAI's API names the model that answered: the upstream model (a fallback's,
/// when the alias's own failed before its first token); the alias when none answered.
pub(super) fn answering_model(generation: &crate::stream::Generation, alias: &str) -> String {
    generation.upstream_model().unwrap_or(alias).to_string()
}

/// The header naming the model alias asked for, beside the upstream model in the body.
pub const ALIAS_HEADER: &str = "x-chatgate-model";

pub(super) fn with_alias(mut response: Response, alias: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(alias) {
        response.headers_mut().insert(ALIAS_HEADER, value);
    }
    response
}

/// `GET /v1/models`: the model aliases, as OpenAI's model list.
#[utoipa::path(
    get,
    operation_id = "openai_models",
    path = "/v1/models",
    tag = "openai",
    responses(
        (status = 200, description = "the model aliases", body = OpenAiModelList),
        (status = 401, description = "missing or invalid token", body = ErrorResponse),
    )
)]
async fn models(State(state): State<AppState>, _: AuthUser) -> Json<OpenAiModelList> {
    Json(OpenAiModelList {
        object: "list",
        data: state.models.routes().map(OpenAiModel::of).collect(),
    })
}

/// OpenAI's model list: `{object: "list", data: [OpenAiModel]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiModelList {
    /// `list`.
    pub object: &'static str,
    pub data: Vec<OpenAiModel>,
}

/// OpenAI's model object for an alias.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAiModel {
    /// The alias.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds; 0 (aliases have no creation date).
    pub created: i64,
    /// The alias's provider.
    pub owned_by: String,
}

impl OpenAiModel {
    fn of(route: &crate::catalog::ModelRoute) -> Self {
        Self {
            id: route.alias.clone(),
            object: "model",
            created: 0,
            owned_by: route.provider.name().to_string(),
        }
    }
}

/// `GET /v1/models/{id}`: one model alias as OpenAI's model object (what `client.models.retrieve(id)` reads).
#[utoipa::path(
    get,
    operation_id = "openai_model",
    path = "/v1/models/{id}",
    tag = "openai",
    params(("id" = String, Path, description = "a model alias")),
    responses(
        (status = 200, description = "the alias", body = OpenAiModel),
        (status = 401, description = "missing or invalid token", body = ErrorResponse),
        (status = 404, description = "`model_not_found`", body = ErrorResponse),
    )
)]
async fn model(
    State(state): State<AppState>,
    _: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<OpenAiModel>, Error> {
    let route = state.chat.completion_route(&id)?;
    Ok(Json(OpenAiModel::of(&route)))
}
