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
//! error       {errorText}          (instead of a clean end; followed by finish with finishReason "error")
//! [DONE]
//! ```
//!
//! The user-message and usage events have no counterpart of their own: usage rides on `finish`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::{EventKind, GenerationEvent, sse_response};

/// The response header that tells the AI SDK which stream protocol the body speaks.
pub const HEADER: &str = "x-vercel-ai-ui-message-stream";

/// Translates one generation's events into UI message stream chunks. Stateful: it opens the text part before the
/// first delta and closes it at the end.
#[derive(Debug, Default)]
pub struct Encoder {
    text_id: Option<String>,
    metadata: Value,
}

impl Encoder {
    /// The chunks for one event, as SSE bytes (possibly none).
    pub fn encode(&mut self, event: &GenerationEvent) -> Option<Bytes> {
        if event.kind == EventKind::Delta
            && let Some(id) = &self.text_id
            && let Some(text) = delta_text_json(event.data())
        {
            // The hot path: the text is already JSON-escaped in the logged event; splice it, no parsing.
            let mut out = String::with_capacity(text.len() + id.len() + 48);
            out.push_str(r#"data: {"type":"text-delta","id":""#);
            out.push_str(id);
            out.push_str(r#"","delta":"#);
            out.push_str(text);
            out.push_str("}\n\n");
            return Some(Bytes::from(out));
        }
        let data: Value = serde_json::from_str(event.data()).ok()?;
        let mut out = String::new();
        match event.kind {
            EventKind::UserMessage | EventKind::Usage => return None,
            EventKind::Start => {
                self.metadata = json!({
                    "generation_id": data["generation_id"],
                    "conversation_id": data["conversation_id"],
                    "model": data["model"],
                });
                push(
                    &mut out,
                    &json!({ "type": "start", "messageId": data["message_id"], "messageMetadata": self.metadata }),
                );
            }
            EventKind::Delta => {
                let id = match &self.text_id {
                    Some(id) => id.clone(),
                    None => {
                        let id = format!("text-{}", event.seq);
                        push(&mut out, &json!({ "type": "text-start", "id": id }));
                        self.text_id = Some(id.clone());
                        id
                    }
                };
                push(
                    &mut out,
                    &json!({ "type": "text-delta", "id": id, "delta": data["text"] }),
                );
            }
            EventKind::Done => {
                self.close_text(&mut out);
                let finish_reason = data["finish_reason"].as_str().unwrap_or("stop");
                let message = &data["message"];
                let mut metadata = self.metadata.clone();
                if !metadata.is_object() {
                    metadata = json!({});
                }
                metadata["message_id"] = message["id"].clone();
                metadata["conversation_id"] = message["conversation_id"].clone();
                metadata["model"] = message["model"].clone();
                metadata["finish_reason"] = json!(finish_reason);
                metadata["usage"] = data["usage"].clone();
                push(
                    &mut out,
                    &json!({ "type": "finish", "finishReason": finish_reason_of(finish_reason), "messageMetadata": metadata }),
                );
                out.push_str("data: [DONE]\n\n");
            }
            EventKind::Error => {
                self.close_text(&mut out);
                let text = data["message"]
                    .as_str()
                    .or(data["error"].as_str())
                    .unwrap_or("the generation failed");
                push(&mut out, &json!({ "type": "error", "errorText": text }));
                push(
                    &mut out,
                    &json!({ "type": "finish", "finishReason": "error", "messageMetadata": self.metadata }),
                );
                out.push_str("data: [DONE]\n\n");
            }
        }
        Some(Bytes::from(out))
    }

    fn close_text(&mut self, out: &mut String) {
        if let Some(id) = self.text_id.take() {
            push(out, &json!({ "type": "text-end", "id": id }));
        }
    }
}

/// The JSON string holding a delta's text, from the hub's `{"text":"..."}`.
fn delta_text_json(data: &str) -> Option<&str> {
    data.strip_prefix(r#"{"text":"#)?
        .strip_suffix('}')
        .filter(|t| t.len() >= 2 && t.starts_with('"') && t.ends_with('"'))
}

/// The AI SDK's finish reasons (`stop`, `length`, `content-filter`, `tool-calls`, `error`, `other`) from ours.
fn finish_reason_of(ours: &str) -> &'static str {
    match ours {
        "stop" => "stop",
        "length" => "length",
        "content_filter" => "content-filter",
        "tool_calls" => "tool-calls",
        "error" => "error",
        _ => "other",
    }
}

fn push(out: &mut String, chunk: &Value) {
    out.push_str("data: ");
    out.push_str(&chunk.to_string());
    out.push_str("\n\n");
}

/// Whether a request's `format` parameter asks for this protocol: `ai-sdk` yes, `native` or none no.
///
/// # Errors
/// 400 `validation_error` for any other value.
pub fn requested(format: Option<&str>) -> Result<bool, crate::error::ApiError> {
    match format {
        None | Some("native") => Ok(false),
        Some("ai-sdk") => Ok(true),
        Some(_) => Err(crate::error::ApiError::validation(
            "format",
            "must be native or ai-sdk",
        )),
    }
}

/// A generation's events as an AI SDK UI message stream response.
pub fn response<S>(events: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Arc<GenerationEvent>> + Send + 'static,
{
    let mut encoder = Encoder::default();
    let frames = events.filter_map(move |event| std::future::ready(encoder.encode(&event)));
    let mut response = sse_response(frames, keepalive);
    response
        .headers_mut()
        .insert(HEADER, HeaderValue::from_static("v1"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn types(chunks: &[Value]) -> Vec<&str> {
        chunks.iter().map(|c| c["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn a_generation_becomes_one_message_with_usage_on_finish() {
        let mut encoder = Encoder::default();
        let events = [
            GenerationEvent::new(
                1,
                EventKind::Start,
                r#"{"generation_id":"g","message_id":"m","conversation_id":"c","model":"gpt"}"#,
            ),
            GenerationEvent::new(2, EventKind::Delta, r#"{"text":"Hel"}"#),
            GenerationEvent::new(3, EventKind::Delta, r#"{"text":"lo"}"#),
            GenerationEvent::new(4, EventKind::Usage, r#"{"prompt_tokens":3}"#),
            GenerationEvent::new(
                5,
                EventKind::Done,
                r#"{"message":{"id":"m","conversation_id":"c","model":"gpt"},"usage":{"prompt_tokens":3,"completion_tokens":2},"finish_reason":"length"}"#,
            ),
        ];
        let out: Vec<Bytes> = events.iter().filter_map(|e| encoder.encode(e)).collect();
        let all = chunks(&out);
        let types = types(&all);
        assert_eq!(
            types,
            [
                "start",
                "text-start",
                "text-delta",
                "text-delta",
                "text-end",
                "finish"
            ]
        );
        assert_eq!(all[0]["messageId"], "m");
        assert_eq!(all[2]["delta"], "Hel");
        assert_eq!(all[1]["id"], all[3]["id"]);
        assert_eq!(all[5]["finishReason"], "length");
        assert_eq!(all[5]["messageMetadata"]["usage"]["completion_tokens"], 2);
        assert!(
            std::str::from_utf8(out.last().unwrap())
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    }

    #[test]
    fn deltas_keep_their_escapes() {
        let mut encoder = Encoder::default();
        let text = "line \"one\"\n\ttab \\ é 😀 </script>";
        let data = serde_json::to_string(&json!({ "text": text })).unwrap();
        let out: Vec<Bytes> = [
            GenerationEvent::new(1, EventKind::Delta, &data),
            GenerationEvent::new(2, EventKind::Delta, &data),
        ]
        .iter()
        .filter_map(|e| encoder.encode(e))
        .collect();
        let all = chunks(&out);
        assert_eq!(types(&all), ["text-start", "text-delta", "text-delta"]);
        assert_eq!(all[1]["delta"], text);
        assert_eq!(all[2]["delta"], text, "the spliced path");
        assert_eq!(all[1], all[2]);
    }

    #[test]
    fn an_error_closes_the_text_and_reports_it() {
        let mut encoder = Encoder::default();
        let out: Vec<Bytes> = [
            GenerationEvent::new(1, EventKind::Start, r#"{"message_id":"m"}"#),
            GenerationEvent::new(2, EventKind::Delta, r#"{"text":"a"}"#),
            GenerationEvent::new(
                3,
                EventKind::Error,
                r#"{"error":"upstream_error","message":"the provider hung up"}"#,
            ),
        ]
        .iter()
        .filter_map(|e| encoder.encode(e))
        .collect();
        let all = chunks(&out);
        let types = types(&all);
        assert_eq!(
            types,
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
}
