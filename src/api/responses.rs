//! `POST /v1/responses`: OpenAI's Responses API, stateless — what the OpenAI SDKs' `responses.create` /
//! `responses.stream` and the AI SDK's default `openai(model)` provider call.
//!
//! A request is translated to a Chat Completions request and goes through the same checks, limits, retries,
//! fallbacks, providers and usage records as `/v1/chat/completions` (`super::openai::start`); only the answer's
//! shape differs (`wire::responses`). Input: a string, or items — messages (`input_text`, `input_image`,
//! `output_text` parts), `function_call` and `function_call_output` — with `instructions` first. Nothing is
//! stored: `store` is accepted and answered `false`; `previous_response_id`, `conversation`, `item_reference`
//! items and `background` are 400 naming them (send the whole input, as with `store: false`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use super::error::AppJson;
use super::openai::{
    CompletionRequest, GenerationErrors, answering_model, first_delta, invalid, start, with_alias,
};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::{Error, ErrorKind};
use crate::telemetry::metrics::{Overhead, Transport};
use crate::wire::responses::{self, ResponseMeta, ResponseObject};
use crate::wire::sse;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/responses", post(create))
}

/// Accepted and not acted on: chatgate stores nothing, bills by the token's user, and has no caching or
/// service tiers to choose.
const IGNORED: &[&str] = &[
    "store",
    "metadata",
    "user",
    "include",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "safety_identifier",
    "truncation",
    "stream_options",
];

/// Server-side state chatgate does not keep: refused, saying what to send instead.
const STATEFUL: &[&str] = &["previous_response_id", "conversation", "background"];

/// `POST /v1/responses`.
#[utoipa::path(
    post,
    operation_id = "openai_responses",
    path = "/v1/responses",
    tag = "openai",
    request_body(content = Object, description = "OpenAI's Responses request, stateless: `model`, `input` (a string or items: messages, `function_call`, `function_call_output`), `instructions`, `stream`, `max_output_tokens`, `temperature`, `top_p`, `text.format`, function `tools`, `tool_choice`, `parallel_tool_calls`; `store`, `metadata`, `user`, `include` accepted and ignored; plus `persona`. `previous_response_id`, `conversation`, `background`, `item_reference` items and anything unknown are 400 naming them."),
    responses(
        (status = 200, description = "the `response` object (`status` `completed` or `incomplete`), or its streaming events (`response.created` … `response.completed`) as SSE; `model` is the upstream model that answered, the alias asked for is the `x-chatgate-model` header", content((ResponseObject = "application/json"), (serde_json::Value = "text/event-stream"))),
        GenerationErrors,
    )
)]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(body): AppJson<Map<String, Value>>,
) -> Result<Response, Error> {
    let received = Instant::now();
    let Translated {
        chat,
        echo,
        origins,
    } = to_chat(body)?;
    let rename = |err: Error| rename_param(err, &origins);
    let stream = chat["stream"].as_bool().unwrap_or(false);
    let alias = chat["model"].as_str().unwrap_or_default().to_string();
    let request: CompletionRequest = serde_json::from_value(chat)
        .map_err(|e| rename(Error::validation("body", e.to_string())))?;
    let generation = start(&state, &user, request).await.map_err(rename)?;
    let mut meta = ResponseMeta {
        id: format!("resp_{}", generation.id().0.simple()),
        created_at: chrono::Utc::now().timestamp(),
        model: alias.clone(),
        echo,
    };
    if stream {
        let keepalive = std::time::Duration::from_secs(state.config.server.sse_keepalive_secs);
        let events = Overhead::new(received, Transport::OpenAiResponses)
            .measure(Arc::clone(&generation), first_delta(&generation).await?);
        meta.model = answering_model(&generation, &alias);
        let frames = responses::events(events, meta);
        return Ok(with_alias(sse::response(frames, keepalive), &alias));
    }
    let _following = generation.attach();
    let terminal = generation.finished().await;
    meta.model = answering_model(&generation, &alias);
    let response = responses::response(&meta, &terminal)?;
    Ok(with_alias(Json(response).into_response(), &alias))
}

/// A Chat Completions field named in an error, by its Responses name: `messages[3]` is the input item (or
/// the `instructions`) it came from, `max_completion_tokens` is `max_output_tokens`, and so on.
fn rename_param(mut err: Error, origins: &[String]) -> Error {
    let Some(field) = err.details.get("field").and_then(Value::as_str) else {
        return err;
    };
    let renamed = match field {
        "max_completion_tokens" | "max_tokens" => "max_output_tokens".to_string(),
        "response_format" => "text.format".to_string(),
        "messages" => "input".to_string(),
        other => match (
            other.strip_prefix("tools["),
            other.strip_prefix("messages["),
        ) {
            (Some(rest), _) => format!("tools[{}", rest.replacen("].function.", "].", 1)),
            (_, Some(rest)) => {
                let (index, after) = rest.split_once(']').unwrap_or((rest, ""));
                match index.parse::<usize>().ok().and_then(|i| origins.get(i)) {
                    Some(origin) => format!("{origin}{after}"),
                    None => other.replacen("messages[", "input[", 1),
                }
            }
            _ => other.to_string(),
        },
    };
    err.details["field"] = json!(renamed);
    err
}

/// A Responses request as Chat Completions.
struct Translated {
    chat: Value,
    /// The settings the response echoes.
    echo: Map<String, Value>,
    /// Where each of `chat.messages` came from: `instructions` or `input[i]`.
    origins: Vec<String>,
}

/// The Chat Completions request a Responses request means.
///
/// # Errors
/// 400 naming the field: a missing `model` or `input`, an input item chatgate cannot take, stored state.
fn to_chat(mut body: Map<String, Value>) -> Result<Translated, Error> {
    let mut echo = Map::new();
    for key in [
        "instructions",
        "max_output_tokens",
        "temperature",
        "top_p",
        "tool_choice",
        "parallel_tool_calls",
        "text",
        "metadata",
        "user",
    ] {
        echo.insert(key.into(), body.get(key).cloned().unwrap_or(Value::Null));
    }
    echo.insert(
        "tools".into(),
        body.get("tools").cloned().unwrap_or_else(|| json!([])),
    );
    for key in STATEFUL {
        if body
            .get(*key)
            .is_some_and(|v| !v.is_null() && *v != json!(false))
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                "unsupported_parameter",
                format!("`{key}` needs state chatgate does not keep: send the whole input instead (as with store: false)"),
            )
            .with_details(json!({ "field": key })));
        }
        body.remove(*key);
    }
    for key in IGNORED {
        body.remove(*key);
    }
    let mut chat = Map::new();
    let model = body
        .remove("model")
        .ok_or_else(|| invalid("model", "`model` is required"))?;
    chat.insert("model".into(), model);
    let mut messages = Vec::new();
    let mut origins = Vec::new();
    if let Some(instructions) = body.remove("instructions").filter(|v| !v.is_null()) {
        let text = instructions
            .as_str()
            .ok_or_else(|| invalid("instructions", "`instructions` is a string"))?;
        messages.push(json!({ "role": "system", "content": text }));
        origins.push("instructions".to_string());
    }
    match body.remove("input") {
        Some(Value::String(text)) => {
            messages.push(json!({ "role": "user", "content": text }));
            origins.push("input".to_string());
        }
        Some(Value::Array(items)) => {
            for (at, item) in items.into_iter().enumerate() {
                input_item(&mut messages, item, at)?;
                origins.resize(messages.len(), format!("input[{at}]"));
            }
        }
        _ => {
            return Err(invalid(
                "input",
                "`input` is a string or an array of input items",
            ));
        }
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(max) = body.remove("max_output_tokens") {
        chat.insert("max_completion_tokens".into(), max);
    }
    if let Some(text) = body.remove("text").filter(|v| !v.is_null()) {
        let format = &text["format"];
        let response_format = match format["type"].as_str() {
            None | Some("text") => Value::Null,
            Some("json_object") => json!({ "type": "json_object" }),
            Some("json_schema") => json!({ "type": "json_schema", "json_schema": {
                "name": format["name"], "schema": format["schema"], "strict": format["strict"] } }),
            Some(_) => json!({ "type": format["type"] }),
        };
        chat.insert("response_format".into(), response_format);
    }
    if let Some(Value::Array(tools)) = body.remove("tools") {
        // Responses tools are flat (`{type, name, description, parameters, strict}`); other kinds keep their
        // type and are refused naming it.
        let tools = tools
            .into_iter()
            .map(|mut tool| match tool["type"].as_str() {
                Some("function") => {
                    let function: Map<String, Value> =
                        ["name", "description", "parameters", "strict"]
                            .into_iter()
                            .filter_map(|k| Some((k.to_string(), tool.get_mut(k)?.take())))
                            .filter(|(_, v)| !v.is_null())
                            .collect();
                    json!({ "type": "function", "function": function })
                }
                _ => tool,
            })
            .collect();
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = body.remove("tool_choice") {
        let choice = match choice["type"].as_str() {
            Some("function") => {
                json!({ "type": "function", "function": { "name": choice["name"] } })
            }
            _ => choice,
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(reasoning) = body.remove("reasoning").filter(|r| !r.is_null()) {
        // Chat Completions' name for it: refused there, naming it, unless asked for off.
        if let Some(effort) = reasoning.get("effort").filter(|e| !e.is_null()) {
            chat.insert("reasoning_effort".into(), effort.clone());
        }
    }
    // Everything else as is: what Chat Completions shares (`stream`, `temperature`, `top_p`,
    // `parallel_tool_calls`, `persona`) is checked there, the rest refused there naming it.
    chat.extend(body);
    Ok(Translated {
        chat: Value::Object(chat),
        echo,
        origins,
    })
}

/// One input item as Chat Completions messages: a message (its parts renamed), a `function_call` (joined to
/// the assistant message before it), a `function_call_output` (a `tool` message).
fn input_item(messages: &mut Vec<Value>, item: Value, at: usize) -> Result<(), Error> {
    let param = format!("input[{at}]");
    let kind = item["type"].as_str().unwrap_or("message");
    match kind {
        "message" => {
            let role = item["role"].clone();
            let content = match &item["content"] {
                Value::Array(parts) => Value::Array(
                    parts
                        .iter()
                        .map(|part| match part["type"].as_str() {
                            Some("input_text" | "output_text" | "text") => {
                                json!({ "type": "text", "text": part["text"] })
                            }
                            Some("input_image") => {
                                json!({ "type": "image_url", "image_url": { "url": part["image_url"] } })
                            }
                            Some("refusal") => json!({ "type": "text", "text": part["refusal"] }),
                            _ => part.clone(),
                        })
                        .collect(),
                ),
                other => other.clone(),
            };
            messages.push(json!({ "role": role, "content": content }));
        }
        "function_call" => {
            let call = json!({ "id": item["call_id"], "type": "function",
                "function": { "name": item["name"], "arguments": item["arguments"] } });
            let joins = messages.last().is_some_and(|m| {
                m["role"] == "assistant" && (m["tool_calls"].is_array() || m["content"].is_string())
            });
            if joins && let Some(last) = messages.last_mut() {
                match last["tool_calls"].as_array_mut() {
                    Some(calls) => calls.push(call),
                    None => last["tool_calls"] = json!([call]),
                }
            } else {
                messages
                    .push(json!({ "role": "assistant", "content": null, "tool_calls": [call] }));
            }
        }
        "function_call_output" => {
            let output = match &item["output"] {
                Value::String(text) => Value::String(text.clone()),
                Value::Array(parts) => Value::Array(
                    parts
                        .iter()
                        .map(|p| json!({ "type": "text", "text": p["text"] }))
                        .collect(),
                ),
                other => Value::String(other.to_string()),
            };
            messages.push(
                json!({ "role": "tool", "tool_call_id": item["call_id"], "content": output }),
            );
        }
        // The model's own reasoning, which only OpenAI's reasoning models read back: not sent on.
        "reasoning" => {}
        "item_reference" => {
            return Err(Error::new(
                ErrorKind::Invalid,
                "unsupported_parameter",
                "chatgate keeps no items: send the item itself, not a reference (the AI SDK: providerOptions.openai.store = false)",
            )
            .with_details(json!({ "field": param })));
        }
        other => {
            return Err(Error::new(
                ErrorKind::Invalid,
                "unsupported_parameter",
                format!("input items of type '{other}' are not supported"),
            )
            .with_details(json!({ "field": param })));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Value {
        let Value::Object(body) = body else {
            panic!("object")
        };
        to_chat(body).expect("translates").chat
    }

    #[test]
    fn input_items_become_chat_messages() {
        let translated = chat(json!({
            "model": "gpt", "instructions": "Be brief", "max_output_tokens": 50, "store": true,
            "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": null}],
            "tool_choice": {"type": "function", "name": "get_weather"},
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "Weather?"},
                    {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "21"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "It is 21."}]},
            ],
        }));
        assert_eq!(
            translated["messages"],
            json!([
                {"role": "system", "content": "Be brief"},
                {"role": "user", "content": [{"type": "text", "text": "Weather?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "21"},
                {"role": "assistant", "content": [{"type": "text", "text": "It is 21."}]},
            ])
        );
        assert_eq!(translated["max_completion_tokens"], 50);
        assert_eq!(translated.get("store"), None);
        assert_eq!(
            translated["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}})
        );
        assert_eq!(
            translated["tools"],
            json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
        );
        assert_eq!(
            translated["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
    }

    #[test]
    fn stored_state_is_refused_naming_it() {
        for (body, field) in [
            (
                json!({"model": "m", "input": "hi", "previous_response_id": "resp_1"}),
                "previous_response_id",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "msg_1"}]}),
                "input[0]",
            ),
            (json!({"model": "m"}), "input"),
        ] {
            let Value::Object(body) = body else {
                panic!("object")
            };
            let Err(err) = to_chat(body) else {
                panic!("refused: {field}")
            };
            assert_eq!(err.details["field"], field);
        }
        // With instructions first, the chat's third message is the second input item.
        let origins = [
            "instructions".to_string(),
            "input[0]".into(),
            "input[1]".into(),
        ];
        assert_eq!(
            rename_param(invalid("messages[2].tool_call_id", "x"), &origins).details["field"],
            "input[1].tool_call_id"
        );
        assert_eq!(
            rename_param(invalid("tools[0].function.name", "x"), &origins).details["field"],
            "tools[0].name"
        );
    }
}
