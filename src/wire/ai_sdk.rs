//! The Vercel AI SDK's UI message stream protocol (v1), so `useChat` (and `DefaultChatTransport`) can read a
//! generation directly. Format: <https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol>: SSE whose every `data:`
//! line is one JSON chunk, ended by `data: [DONE]`, announced by the header `x-vercel-ai-ui-message-stream: v1`.
//!
//! A generation maps to one assistant message:
//!
//! ```text
//! start       {messageId, messageMetadata: {generation_id, conversation_id, model}}
//! text-start  {id}                 (before the first delta)
//! text-delta  {id, delta}          (one per delta)
//! text-end    {id}
//! finish      {finishReason, messageMetadata: {generation_id, message_id, conversation_id, model,
//!              finish_reason, usage: {prompt_tokens, completion_tokens, cached_tokens, estimated, cost_usd}}}
//! tool-input-start {toolCallId, toolName}, tool-input-delta {toolCallId, inputTextDelta}, and before the end
//!             tool-input-available {toolCallId, toolName, input}   (a stateless generation's tool calls)
//! error       {errorText}          (instead of a clean end; followed by finish with finishReason "error")
//! message-metadata {messageMetadata} then abort {}   (instead of finish, for a cancelled reply)
//! [DONE]
//! ```
//!
//! The user-message and usage events have no counterpart of their own: usage rides on `finish`. Also here: the
//! body `useChat` posts (`{id, messages: UIMessage[], trigger, messageId?}`), read as a send.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::chat::SendRequest;
use crate::domain::{FinishReason, MessageType};
use crate::error::Error;
use crate::event::{GenerationEvent, LoggedEvent};
use crate::id::Id;

/// The response header that tells the AI SDK which stream protocol the body speaks.
pub const HEADER: &str = "x-vercel-ai-ui-message-stream";

/// `messageMetadata` of `start` and `finish`.
#[derive(Debug, Clone, Default, Serialize)]
struct Metadata {
    #[serde(skip_serializing_if = "Option::is_none")]
    generation_id: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<Id>,
    conversation_id: Option<Id>,
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finish_reason: Option<FinishReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<crate::event::UsageReport>,
}

/// One chunk of the stream.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Chunk<'a> {
    Start {
        #[serde(rename = "messageId")]
        message_id: Id,
        #[serde(rename = "messageMetadata")]
        metadata: &'a Metadata,
    },
    TextStart {
        id: &'a str,
    },
    TextEnd {
        id: &'a str,
    },
    Finish {
        #[serde(rename = "finishReason")]
        finish_reason: &'static str,
        #[serde(rename = "messageMetadata")]
        metadata: &'a Metadata,
    },
    Error {
        #[serde(rename = "errorText")]
        error_text: &'a str,
    },
    /// The metadata of a message that ends without `finish` (a cancelled one).
    MessageMetadata {
        #[serde(rename = "messageMetadata")]
        metadata: &'a Metadata,
    },
    /// The reply was cancelled: the protocol's end for an aborted stream (no `finish`).
    Abort,
    /// A tool call begins (stateless generations with tools only).
    ToolInputStart {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "toolName")]
        tool_name: &'a str,
    },
    ToolInputDelta {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "inputTextDelta")]
        input_text_delta: &'a str,
    },
    /// The call's whole input, parsed, once the reply ended.
    ToolInputAvailable {
        #[serde(rename = "toolCallId")]
        tool_call_id: &'a str,
        #[serde(rename = "toolName")]
        tool_name: &'a str,
        input: Value,
    },
}

/// Translates one generation's events into UI message stream chunks. Stateful: it opens the text part before the
/// first delta and closes it at the end.
#[derive(Debug, Default)]
pub struct Encoder {
    text_id: Option<String>,
    metadata: Metadata,
    /// The ids of the tool calls begun, by index.
    tool_call_ids: Vec<String>,
}

impl Encoder {
    /// The chunks for one event, as SSE bytes (possibly none).
    pub fn encode(&mut self, event: &LoggedEvent) -> Option<Bytes> {
        let mut out = String::new();
        match &event.event {
            GenerationEvent::UserMessage(_) | GenerationEvent::Usage(_) => return None,
            GenerationEvent::Start(start) => {
                self.metadata = Metadata {
                    generation_id: Some(start.generation_id),
                    conversation_id: start.conversation_id,
                    model: Some(start.model.clone()),
                    ..Metadata::default()
                };
                push(
                    &mut out,
                    &Chunk::Start {
                        message_id: start.message_id,
                        metadata: &self.metadata,
                    },
                );
            }
            GenerationEvent::Delta(delta) => {
                if self.text_id.is_none() {
                    let id = format!("text-{}", event.seq);
                    push(&mut out, &Chunk::TextStart { id: &id });
                    self.text_id = Some(id);
                }
                // The hot path, one chunk per delta: written directly rather than through `Chunk`.
                let id = self.text_id.as_deref().unwrap_or_default();
                out.reserve(delta.text.len() + id.len() + 56);
                out.push_str(r#"data: {"type":"text-delta","id":""#);
                out.push_str(id);
                out.push_str(r#"","delta":"#);
                // Serializing a string cannot fail.
                out.push_str(&serde_json::to_string(&delta.text).unwrap_or_default());
                out.push_str("}\n\n");
            }
            GenerationEvent::ToolCall(call) => {
                self.close_text(&mut out);
                let index = call.index as usize;
                if index >= self.tool_call_ids.len() {
                    let id = call
                        .id
                        .clone()
                        .unwrap_or_else(crate::providers::tools::new_call_id);
                    push(
                        &mut out,
                        &Chunk::ToolInputStart {
                            tool_call_id: &id,
                            tool_name: call.name.as_deref().unwrap_or(""),
                        },
                    );
                    self.tool_call_ids.push(id);
                }
                if !call.arguments.is_empty()
                    && let Some(id) = self.tool_call_ids.get(index)
                {
                    push(
                        &mut out,
                        &Chunk::ToolInputDelta {
                            tool_call_id: id,
                            input_text_delta: &call.arguments,
                        },
                    );
                }
                if out.is_empty() {
                    return None;
                }
            }
            GenerationEvent::Done(done) => {
                self.close_text(&mut out);
                for call in &done.tool_calls {
                    push(
                        &mut out,
                        &Chunk::ToolInputAvailable {
                            tool_call_id: &call.id,
                            tool_name: &call.name,
                            input: crate::providers::tools::arguments_object(&call.arguments),
                        },
                    );
                }
                let message = &done.message;
                let metadata = Metadata {
                    message_id: Some(message.id),
                    conversation_id: Some(message.conversation_id)
                        .filter(|_| self.metadata.conversation_id.is_some()),
                    model: message.model.clone(),
                    finish_reason: Some(done.finish_reason.clone()),
                    usage: Some(done.usage),
                    ..self.metadata.clone()
                };
                if matches!(done.finish_reason, FinishReason::Cancelled(_)) {
                    // As `streamText` ends an aborted stream: `abort`, no `finish`; the saved message's id,
                    // usage and cost ride on a `message-metadata` chunk before it.
                    push(
                        &mut out,
                        &Chunk::MessageMetadata {
                            metadata: &metadata,
                        },
                    );
                    push(&mut out, &Chunk::Abort);
                } else {
                    push(
                        &mut out,
                        &Chunk::Finish {
                            finish_reason: finish_reason_of(&done.finish_reason),
                            metadata: &metadata,
                        },
                    );
                }
                out.push_str("data: [DONE]\n\n");
            }
            GenerationEvent::Error(failed) => {
                self.close_text(&mut out);
                push(
                    &mut out,
                    &Chunk::Error {
                        error_text: &failed.failure.message,
                    },
                );
                push(
                    &mut out,
                    &Chunk::Finish {
                        finish_reason: "error",
                        metadata: &self.metadata,
                    },
                );
                out.push_str("data: [DONE]\n\n");
            }
        }
        Some(Bytes::from(out))
    }

    fn close_text(&mut self, out: &mut String) {
        if let Some(id) = self.text_id.take() {
            push(out, &Chunk::TextEnd { id: &id });
        }
    }
}

/// The AI SDK's finish reasons (`stop`, `length`, `content-filter`, `tool-calls`, `error`, `other`) from ours.
fn finish_reason_of(ours: &FinishReason) -> &'static str {
    match ours {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content-filter",
        FinishReason::ToolCalls => "tool-calls",
        FinishReason::Error => "error",
        _ => "other",
    }
}

fn push(out: &mut String, chunk: &Chunk<'_>) {
    out.push_str("data: ");
    // Serializing these plain structs cannot fail.
    out.push_str(&serde_json::to_string(chunk).unwrap_or_default());
    out.push_str("\n\n");
}

/// Whether a request's `format` parameter asks for this protocol: `ai-sdk` yes, `native` or none no.
///
/// # Errors
/// `validation_error` for any other value.
pub fn requested(format: Option<&str>) -> Result<bool, Error> {
    match format {
        None | Some("native") => Ok(false),
        Some("ai-sdk") => Ok(true),
        Some(_) => Err(Error::validation("format", "must be native or ai-sdk")),
    }
}

/// A generation's events as an AI SDK UI message stream response.
pub fn response<S>(events: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Arc<LoggedEvent>> + Send + 'static,
{
    let mut encoder = Encoder::default();
    let frames = events.filter_map(move |event| std::future::ready(encoder.encode(&event)));
    let mut response = super::sse::response(frames, keepalive);
    response
        .headers_mut()
        .insert(HEADER, HeaderValue::from_static("v1"));
    response
}

/// What a `useChat` request asks for.
#[derive(Debug)]
pub enum UseChat {
    /// `trigger: "submit-message"`: send the last user message.
    Send(SendRequest),
    /// `trigger: "regenerate-message"`: a new reply to the message `messageId` names, or, without one (the
    /// plain Regenerate button: `regenerate()`), to the conversation's latest message.
    Regenerate {
        message_id: Option<String>,
        model: Option<String>,
    },
}

/// The body of an AI SDK `useChat` request (`DefaultChatTransport`: `{id, messages: UIMessage[], trigger,
/// messageId?, ...body}`) as a send: the text parts of its last user message, its file parts (`{type: "file",
/// mediaType, url}`: a `data:` URL becomes an upload, stored only once the send is admitted; an http(s) URL is
/// fetched like `media_urls`), and `model` when the app adds one. Images make a `multimodal` (or `image`)
/// message; one audio file an `audio` message. Nothing is stored here.
///
/// # Errors
/// `validation_error` naming `messages` or `messageId`; `payload_too_large` for a file over `max_bytes`.
pub fn read_use_chat(body: &Value, max_files: usize, max_bytes: u64) -> Result<UseChat, Error> {
    let model = body["model"].as_str().map(str::to_string);
    if body["trigger"] == "regenerate-message" {
        let message_id = match &body["messageId"] {
            Value::Null => None,
            Value::String(id) => Some(id.clone()),
            _ => return Err(Error::validation("messageId", "must be a message id")),
        };
        return Ok(UseChat::Regenerate { message_id, model });
    }
    let messages = body["messages"]
        .as_array()
        .ok_or_else(|| Error::validation("messages", "must be an array of UI messages"))?;
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .ok_or_else(|| Error::validation("messages", "holds no user message"))?;
    let parts = last["parts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text: String = parts
        .iter()
        .filter(|p| p["type"] == "text")
        .filter_map(|p| p["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let files: Vec<&Value> = parts.iter().filter(|p| p["type"] == "file").collect();
    let audio = files.iter().any(|f| {
        f["mediaType"]
            .as_str()
            .is_some_and(|t| t.starts_with("audio/"))
    });
    let message_type = match (files.is_empty(), audio, text.trim().is_empty()) {
        (true, _, _) => MessageType::Text,
        (false, true, _) => MessageType::Audio,
        (false, false, false) => MessageType::Multimodal,
        (false, false, true) => MessageType::Image,
    };
    if files.len() > max_files {
        return Err(Error::validation(
            "messages",
            format!("at most {max_files} files per message"),
        ));
    }
    let mut request = SendRequest {
        content: Some(text),
        message_type,
        model,
        ..SendRequest::default()
    };
    for file in files {
        let url = file["url"]
            .as_str()
            .ok_or_else(|| Error::validation("messages", "a file part needs a url"))?;
        if url.starts_with("data:") {
            let bytes = crate::media::decode_data_url(url, max_bytes, "messages")?;
            request.uploads.push(Bytes::from(bytes));
        } else {
            request.media_urls.push(url.to_string());
        }
    }
    Ok(UseChat::Send(request))
}

/// Whether a body is `useChat`'s (it has `messages`, or is a regenerate trigger) rather than chatgate's own.
pub fn is_use_chat(body: &Value) -> bool {
    body.get("messages").is_some() || body["trigger"] == "regenerate-message"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MessageStatus, Role};
    use crate::event::{Delta, Done, Failed, Failure, Start, UsageReport};
    use crate::store::Message;
    use serde_json::json;

    fn chunks(bytes: &[Bytes]) -> Vec<Value> {
        bytes
            .iter()
            .flat_map(|b| {
                std::str::from_utf8(b)
                    .unwrap()
                    .split("\n\n")
                    .filter_map(|f| f.strip_prefix("data: "))
                    .filter(|d| *d != "[DONE]")
                    .map(|d| serde_json::from_str(d).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect()
    }

    /// What a fresh encoder writes for `events`, numbered from 1 as the log numbers them.
    fn encode_all(events: impl IntoIterator<Item = GenerationEvent>) -> Vec<Bytes> {
        let mut encoder = Encoder::default();
        events
            .into_iter()
            .enumerate()
            .filter_map(|(i, e)| encoder.encode(&LoggedEvent::new(i as u64 + 1, e)))
            .collect()
    }

    fn types(chunks: &[Value]) -> Vec<&str> {
        chunks.iter().map(|c| c["type"].as_str().unwrap()).collect()
    }

    fn start(id: Id) -> GenerationEvent {
        GenerationEvent::Start(Box::new(Start {
            generation_id: id,
            message_id: id,
            conversation_id: Some(id),
            model: "gpt".into(),
        }))
    }

    fn message(id: Id) -> Message {
        Message {
            id,
            conversation_id: id,
            parent_id: None,
            role: Role::Assistant,
            content: "Hello".into(),
            message_type: MessageType::Text,
            media: json!([]),
            status: MessageStatus::Complete,
            model: Some("gpt".into()),
            provider: None,
            finish_reason: Some(FinishReason::Length),
            error: None,
            created_at: crate::store::now(),
            updated_at: crate::store::now(),
            tokens_used: None,
            prompt_tokens: None,
            completion_tokens: None,
            model_used: None,
            response_time_ms: None,
            ttft_ms: None,
            cost_usd: None,
            content_tokens: None,
        }
    }

    #[test]
    fn a_generation_becomes_one_message_with_usage_on_finish() {
        let id = Id::new();
        let events = [
            start(id),
            GenerationEvent::delta("Hel"),
            GenerationEvent::delta("lo"),
            GenerationEvent::Usage(Box::default()),
            GenerationEvent::Done(Box::new(Done {
                message: message(id),
                usage: UsageReport {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    ..UsageReport::default()
                },
                finish_reason: FinishReason::Length,
                tool_calls: Vec::new(),
            })),
        ];
        let out = encode_all(events);
        let all = chunks(&out);
        assert_eq!(
            types(&all),
            [
                "start",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "finish"
            ]
        );
        assert_eq!(all[0]["messageId"], id.to_string());
        assert_eq!(all[2]["delta"], "Hel");
        assert_eq!(all[1]["id"], all[3]["id"]);
        assert_eq!(all[5]["finishReason"], "length");
        assert_eq!(all[5]["messageMetadata"]["usage"]["completion_tokens"], 2);
        assert_eq!(all[5]["messageMetadata"]["generation_id"], id.to_string());
        assert!(
            std::str::from_utf8(out.last().unwrap())
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    }

    #[test]
    fn a_cancelled_reply_ends_with_abort_and_keeps_its_metadata() {
        let id = Id::new();
        let events = [
            start(id),
            GenerationEvent::delta("Hal"),
            GenerationEvent::Done(Box::new(Done {
                message: message(id),
                usage: UsageReport {
                    prompt_tokens: 3,
                    completion_tokens: 1,
                    ..UsageReport::default()
                },
                finish_reason: FinishReason::Cancelled(crate::domain::CancelReason::User),
                tool_calls: Vec::new(),
            })),
        ];
        let out = encode_all(events);
        let all = chunks(&out);
        assert_eq!(
            types(&all),
            [
                "start",
                "text-start",
                "text-delta",
                "text-end",
                "message-metadata",
                "abort"
            ]
        );
        assert_eq!(all[4]["messageMetadata"]["usage"]["completion_tokens"], 1);
        assert_eq!(all[4]["messageMetadata"]["message_id"], all[0]["messageId"]);
        assert_eq!(all[5], serde_json::json!({ "type": "abort" }));
    }

    #[test]
    fn tool_calls_stream_as_tool_input_chunks() {
        use crate::providers::{ToolCall, ToolCallDelta};
        let id = Id::new();
        let piece = |id: Option<&str>, name: Option<&str>, arguments: &str| {
            GenerationEvent::ToolCall(Box::new(ToolCallDelta {
                index: 0,
                id: id.map(str::to_string),
                name: name.map(str::to_string),
                arguments: arguments.into(),
            }))
        };
        let events = [
            start(id),
            GenerationEvent::delta("Let me look."),
            piece(Some("call_1"), Some("weather"), ""),
            piece(None, None, "{\"city\":"),
            piece(None, None, "\"Paris\"}"),
            GenerationEvent::Done(Box::new(Done {
                message: message(id),
                usage: UsageReport::default(),
                finish_reason: FinishReason::ToolCalls,
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                }],
            })),
        ];
        let all = chunks(&encode_all(events));
        assert_eq!(
            types(&all),
            [
                "start",
                "text-start",
                "text-delta",
                "text-end",
                "tool-input-start",
                "tool-input-delta",
                "tool-input-delta",
                "tool-input-available",
                "finish"
            ]
        );
        assert_eq!(all[4]["toolCallId"], "call_1");
        assert_eq!(all[4]["toolName"], "weather");
        assert_eq!(all[6]["inputTextDelta"], "\"Paris\"}");
        assert_eq!(all[7]["input"], serde_json::json!({"city": "Paris"}));
        assert_eq!(all[8]["finishReason"], "tool-calls");
    }

    #[test]
    fn deltas_keep_their_escapes() {
        let mut encoder = Encoder::default();
        let text = "line \"one\"\n\ttab \\ é 😀 </script>";
        let out: Vec<Bytes> = [1, 2]
            .into_iter()
            .filter_map(|seq| {
                encoder.encode(&LoggedEvent::new(
                    seq,
                    GenerationEvent::Delta(Delta { text: text.into() }),
                ))
            })
            .collect();
        let all = chunks(&out);
        assert_eq!(types(&all), ["text-start", "text-delta", "text-delta"]);
        assert_eq!(all[1]["delta"], text);
        assert_eq!(all[1], all[2]);
    }

    #[test]
    fn an_error_closes_the_text_and_reports_it() {
        let id = Id::new();
        let failed = GenerationEvent::Error(Box::new(Failed {
            failure: Failure {
                kind: crate::error::ErrorKind::Upstream,
                error: "upstream_error".into(),
                message: "the provider hung up".into(),
                details: json!({}),
                retry_after_secs: None,
            },
            saved: None,
        }));
        let all = chunks(&encode_all([
            start(id),
            GenerationEvent::delta("a"),
            failed,
        ]));
        assert_eq!(
            types(&all),
            [
                "start",
                "text-start",
                "text-delta",
                "text-end",
                "error",
                "finish"
            ]
        );
        assert_eq!(all[4]["errorText"], "the provider hung up");
        assert_eq!(all[5]["finishReason"], "error");
    }

    #[test]
    fn regenerate_names_a_message_or_none() {
        let read = |message_id: Value| {
            read_use_chat(
                &json!({ "id": "chat", "trigger": "regenerate-message", "messageId": message_id, "messages": [] }),
                4,
                1 << 20,
            )
        };
        assert!(matches!(
            read(json!("m-1")),
            Ok(UseChat::Regenerate { message_id: Some(id), .. }) if id == "m-1"
        ));
        // `regenerate()` without arguments: `messageId` undefined, so absent from the JSON (or null).
        assert!(matches!(
            read(Value::Null),
            Ok(UseChat::Regenerate {
                message_id: None,
                ..
            })
        ));
        let err = read(json!(5)).expect_err("not an id");
        assert_eq!(err.details["field"], "messageId");
    }

    #[test]
    fn use_chat_bodies_become_sends_without_storing_anything() {
        let body = json!({ "id": "chat", "trigger": "submit-message", "messages": [
            { "role": "user", "parts": [{ "type": "text", "text": "old" }] },
            { "role": "assistant", "parts": [{ "type": "text", "text": "reply" }] },
            { "role": "user", "parts": [
                { "type": "text", "text": "what is this?" },
                { "type": "file", "mediaType": "image/png", "url": "data:image/png;base64,iVBORw0KGgo=" },
                { "type": "file", "mediaType": "image/png", "url": "https://example.com/a.png" },
            ] },
        ] });
        let UseChat::Send(request) = read_use_chat(&body, 4, 1 << 20).expect("read") else {
            panic!("a send");
        };
        assert_eq!(request.content.as_deref(), Some("what is this?"));
        assert_eq!(request.message_type, MessageType::Multimodal);
        assert_eq!(request.uploads.len(), 1);
        assert_eq!(request.media_urls, ["https://example.com/a.png"]);
        let too_many = read_use_chat(&body, 1, 1 << 20).expect_err("two files");
        assert_eq!(too_many.details["field"], "messages");
    }
}
