//! OpenAI's Responses API shapes (OpenAI API reference, "Responses": the `response` object, its `output`
//! items — `message` with `output_text` parts, `function_call` — and `usage`; "Streaming events":
//! `response.created`, `response.in_progress`, `response.output_item.added`, `response.content_part.added`,
//! `response.output_text.delta` / `.done`, `response.content_part.done`, `response.function_call_arguments.delta`
//! / `.done`, `response.output_item.done`, then `response.completed` (or `response.incomplete`, or `error` and
//! `response.failed`), each an SSE `event:` named by its `type`, with a `sequence_number` from 0), and the
//! encoder of a generation into them. chatgate's responses are stateless: `store` is always false.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::{Value, json};

use crate::domain::FinishReason;
use crate::error::{Error, ErrorKind};
use crate::event::{Done, GenerationEvent, LoggedEvent, UsageReport};
use crate::providers::ToolCall;

/// What a response echoes of its request, and its ids.
#[derive(Debug, Clone)]
pub struct ResponseMeta {
    /// `resp_…`.
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// The upstream model that answered.
    pub model: String,
    /// The request's settings echoed on the response object: `instructions`, `max_output_tokens`,
    /// `temperature`, `top_p`, `tools`, `tool_choice`, `parallel_tool_calls`, `text`, `metadata`, `user`.
    pub echo: serde_json::Map<String, Value>,
}

impl ResponseMeta {
    /// The `response` object with `status`, `output`, `usage` and the ending's details.
    fn object(&self, status: &str, output: Vec<Value>, usage: Option<&UsageReport>) -> Value {
        let object = ResponseObject {
            id: &self.id,
            object: "response",
            created_at: self.created_at,
            status,
            model: &self.model,
            output,
            usage: usage.map(ResponseUsage::from),
            error: Value::Null,
            incomplete_details: Value::Null,
            previous_response_id: None,
            store: false,
        };
        let mut object = serde_json::to_value(object).unwrap_or_default();
        if let Some(fields) = object.as_object_mut() {
            for (key, value) in &self.echo {
                fields.insert(key.clone(), value.clone());
            }
        }
        object
    }

    fn message_id(&self) -> String {
        format!("msg_{}", self.id.trim_start_matches("resp_"))
    }

    fn call_item_id(&self, index: usize) -> String {
        format!("fc_{}_{index}", self.id.trim_start_matches("resp_"))
    }
}

/// The `response` object (OpenAI API reference, "Responses": the response object), with the request's echoed
/// settings (`instructions`, `max_output_tokens`, `temperature`, `top_p`, `tools`, `tool_choice`,
/// `parallel_tool_calls`, `text`, `metadata`, `user`) added beside these fields.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ResponseObject<'a> {
    /// `resp_…`.
    pub id: &'a str,
    /// `response`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: &'a str,
    /// The upstream model that answered.
    pub model: &'a str,
    /// `message` items (`{id, type: "message", status, role: "assistant", content: [{type: "output_text",
    /// text, annotations, logprobs}]}`) and `function_call` items (`{id, type: "function_call", status,
    /// call_id, name, arguments}`).
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    /// Present once the reply has ended.
    pub usage: Option<ResponseUsage>,
    /// `{code, message}` when `status` is `failed`.
    #[schema(value_type = Option<Object>)]
    pub error: Value,
    /// `{reason}` (`max_output_tokens`, `content_filter`, `cancelled`) when `status` is `incomplete`.
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Value,
    /// Always `null`: chatgate keeps no responses.
    pub previous_response_id: Option<String>,
    /// Always `false`.
    pub store: bool,
}

/// A response's `usage`, in tokens.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

/// Prompt tokens read from the provider's cache.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
}

/// Completion tokens spent reasoning.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

impl From<&UsageReport> for ResponseUsage {
    fn from(usage: &UsageReport) -> Self {
        Self {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: usage.cached_tokens,
            },
            output_tokens: usage.completion_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: usage.reasoning_tokens,
            },
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

/// How a finished reply ends its response: `completed`, or `incomplete` with its reason (the output-token cap,
/// a content filter, a cancel).
fn ending(reason: &FinishReason) -> (&'static str, Value) {
    match reason {
        FinishReason::Length => ("incomplete", json!({ "reason": "max_output_tokens" })),
        FinishReason::ContentFilter => ("incomplete", json!({ "reason": "content_filter" })),
        FinishReason::Cancelled(_) => ("incomplete", json!({ "reason": "cancelled" })),
        _ => ("completed", Value::Null),
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "message", "status": status, "role": "assistant",
        "content": [{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }],
    })
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Value {
    json!({
        "id": id, "type": "function_call", "status": status, "call_id": call.id, "name": call.name,
        "arguments": call.arguments,
    })
}

/// The `output` of a finished reply: its text as one `message` (when there is text, or nothing else), then
/// one `function_call` per tool call.
fn output(meta: &ResponseMeta, done: &Done) -> Vec<Value> {
    let mut output = Vec::with_capacity(1 + done.tool_calls.len());
    if !done.message.content.is_empty() || done.tool_calls.is_empty() {
        output.push(message_item(
            &meta.message_id(),
            &done.message.content,
            "completed",
        ));
    }
    for (index, call) in done.tool_calls.iter().enumerate() {
        output.push(call_item(&meta.call_item_id(index), call, "completed"));
    }
    output
}

/// The whole `response` of a finished generation.
///
/// # Errors
/// The generation's failure.
pub fn response(meta: &ResponseMeta, terminal: &LoggedEvent) -> Result<Value, Error> {
    let done = terminal.done()?;
    let (status, details) = ending(&done.finish_reason);
    let mut object = meta.object(status, output(meta, done), Some(&done.usage));
    object["incomplete_details"] = details;
    Ok(object)
}

/// An output item being streamed.
enum Open {
    Text { id: String, text: String },
    Call { index: usize, call: ToolCall },
}

/// Encodes one generation as the Responses API's streaming events.
struct Encoder {
    meta: ResponseMeta,
    sequence: u64,
    /// Output items so far (closed ones whole).
    output: Vec<Value>,
    open: Option<Open>,
}

impl Encoder {
    fn event(&mut self, out: &mut String, kind: &str, mut body: Value) {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        out.push_str("event: ");
        out.push_str(kind);
        out.push_str("\ndata: ");
        out.push_str(&body.to_string());
        out.push_str("\n\n");
    }

    fn start(&mut self, out: &mut String) {
        let response = self.meta.object("in_progress", Vec::new(), None);
        self.event(
            out,
            "response.created",
            json!({ "response": response.clone() }),
        );
        self.event(out, "response.in_progress", json!({ "response": response }));
    }

    fn close(&mut self, out: &mut String) {
        let output_index = self.output.len();
        match self.open.take() {
            None => {}
            Some(Open::Text { id: item_id, text }) => {
                let part = json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] });
                self.event(
                    out,
                    "response.output_text.done",
                    json!({ "item_id": item_id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": [] }),
                );
                self.event(
                    out,
                    "response.content_part.done",
                    json!({ "item_id": item_id, "output_index": output_index, "content_index": 0, "part": part }),
                );
                let item = message_item(&item_id, &text, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({ "output_index": output_index, "item": item.clone() }),
                );
                self.output.push(item);
            }
            Some(Open::Call { index, call }) => {
                let item_id = self.meta.call_item_id(index);
                self.event(
                    out,
                    "response.function_call_arguments.done",
                    json!({ "item_id": item_id, "output_index": output_index, "arguments": call.arguments }),
                );
                let item = call_item(&item_id, &call, "completed");
                self.event(
                    out,
                    "response.output_item.done",
                    json!({ "output_index": output_index, "item": item.clone() }),
                );
                self.output.push(item);
            }
        }
    }

    fn text(&mut self, out: &mut String, delta: &str) {
        if !matches!(self.open, Some(Open::Text { .. })) {
            self.close(out);
            let output_index = self.output.len();
            // Text again after a tool call is a second message item, with an id of its own.
            let item_id = if self.output.iter().any(|item| item["type"] == "message") {
                format!("{}_{output_index}", self.meta.message_id())
            } else {
                self.meta.message_id()
            };
            let mut item = message_item(&item_id, "", "in_progress");
            item["content"] = json!([]);
            self.event(
                out,
                "response.output_item.added",
                json!({ "output_index": output_index, "item": item }),
            );
            self.event(
                out,
                "response.content_part.added",
                json!({ "item_id": item_id, "output_index": output_index, "content_index": 0,
                        "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] } }),
            );
            self.open = Some(Open::Text {
                id: item_id,
                text: String::new(),
            });
        }
        let Some(Open::Text { id, text }) = &mut self.open else {
            return;
        };
        text.push_str(delta);
        let item_id = id.clone();
        // The open item is the next one of the output.
        let output_index = self.output.len();
        self.event(
            out,
            "response.output_text.delta",
            json!({ "item_id": item_id, "output_index": output_index, "content_index": 0, "delta": delta, "logprobs": [] }),
        );
    }

    fn tool_call(&mut self, out: &mut String, piece: &crate::providers::ToolCallDelta) {
        let index = piece.index as usize;
        let same = matches!(&self.open, Some(Open::Call { index: open, .. }) if *open == index);
        if !same {
            self.close(out);
            let call = ToolCall {
                id: piece
                    .id
                    .clone()
                    .unwrap_or_else(crate::providers::tools::new_call_id),
                name: piece.name.clone().unwrap_or_default(),
                arguments: String::new(),
            };
            let item_id = self.meta.call_item_id(index);
            let output_index = self.output.len();
            self.event(
                out,
                "response.output_item.added",
                json!({ "output_index": output_index, "item": call_item(&item_id, &call, "in_progress") }),
            );
            self.open = Some(Open::Call { index, call });
        }
        if piece.arguments.is_empty() {
            return;
        }
        if let Some(Open::Call { call, .. }) = &mut self.open {
            call.arguments.push_str(&piece.arguments);
        }
        let item_id = self.meta.call_item_id(index);
        let output_index = self.output.len();
        self.event(
            out,
            "response.function_call_arguments.delta",
            json!({ "item_id": item_id, "output_index": output_index, "delta": piece.arguments }),
        );
    }

    fn done(&mut self, out: &mut String, done: &Done) {
        // Arguments a provider streamed none of are `{}` on the finished call.
        if let Some(Open::Call { index, call }) = &mut self.open
            && let Some(finished) = done.tool_calls.get(*index)
        {
            call.arguments.clone_from(&finished.arguments);
        }
        self.close(out);
        let (status, details) = ending(&done.finish_reason);
        let output = std::mem::take(&mut self.output);
        let mut response = self.meta.object(status, output, Some(&done.usage));
        response["incomplete_details"] = details;
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event(out, kind, json!({ "response": response }));
    }

    fn failed(&mut self, out: &mut String, error: &Error) {
        self.close(out);
        let code = error.error.to_string();
        let kind = super::openai::error_type(if error.kind == ErrorKind::Internal {
            ErrorKind::Upstream
        } else {
            error.kind
        });
        // `code`/`message`/`param` at the top, as OpenAI's reference gives the `error` event, and nested, as the
        // AI SDK reads it.
        self.event(
            out,
            "error",
            json!({ "code": code, "message": error.message, "param": null,
                    "error": { "type": kind, "code": code, "message": error.message, "param": null } }),
        );
        let output = std::mem::take(&mut self.output);
        let mut response = self.meta.object("failed", output, None);
        response["error"] = json!({ "code": code, "message": error.message });
        self.event(out, "response.failed", json!({ "response": response }));
    }
}

/// The generation's events as Responses API streaming events (see the module's list), ending with
/// `response.completed` / `response.incomplete`, or `error` then `response.failed`.
pub fn events<S>(events: S, meta: ResponseMeta) -> impl Stream<Item = Bytes> + Send + 'static
where
    S: Stream<Item = Arc<LoggedEvent>> + Send + 'static,
{
    let mut encoder = Encoder {
        meta,
        sequence: 0,
        output: Vec::new(),
        open: None,
    };
    async_stream::stream! {
        let mut events = std::pin::pin!(events);
        let mut out = String::new();
        encoder.start(&mut out);
        yield Bytes::from(std::mem::take(&mut out));
        while let Some(event) = events.next().await {
            match &event.event {
                GenerationEvent::Delta(delta) => encoder.text(&mut out, &delta.text),
                GenerationEvent::ToolCall(piece) => encoder.tool_call(&mut out, piece),
                GenerationEvent::Done(done) => {
                    encoder.done(&mut out, done);
                    yield Bytes::from(std::mem::take(&mut out));
                    break;
                }
                GenerationEvent::Error(failed) => {
                    encoder.failed(&mut out, &failed.failure.to_error());
                    yield Bytes::from(std::mem::take(&mut out));
                    break;
                }
                GenerationEvent::Start(_) | GenerationEvent::UserMessage(_) | GenerationEvent::Usage(_) => {}
            }
            if !out.is_empty() {
                yield Bytes::from(std::mem::take(&mut out));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ToolCallDelta;

    /// Text, a call, then text again: three output items with distinct ids and their output indexes, events
    /// numbered without a gap.
    #[tokio::test]
    async fn items_after_a_call_get_their_own_ids_and_indexes() {
        let meta = ResponseMeta {
            id: "resp_1".into(),
            created_at: 0,
            model: "m".into(),
            echo: serde_json::Map::new(),
        };
        let call = |arguments: &str, first: bool| {
            GenerationEvent::ToolCall(Box::new(ToolCallDelta {
                index: 0,
                id: first.then(|| "call_1".to_string()),
                name: first.then(|| "f".to_string()),
                arguments: arguments.into(),
            }))
        };
        let events = [
            GenerationEvent::delta("Let me check."),
            call("", true),
            call("{}", false),
            GenerationEvent::delta("Done."),
        ];
        let logged: Vec<_> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| LoggedEvent::new(i as u64 + 1, e))
            .collect();
        let bytes: Vec<Bytes> = super::events(futures::stream::iter(logged), meta)
            .collect()
            .await;
        let text = String::from_utf8(bytes.concat()).expect("utf-8");
        let data: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).expect("json"))
            .collect();
        let added: Vec<(u64, String)> = data
            .iter()
            .filter(|d| d["type"] == "response.output_item.added")
            .map(|d| {
                (
                    d["output_index"].as_u64().expect("index"),
                    d["item"]["id"].as_str().expect("id").to_string(),
                )
            })
            .collect();
        assert_eq!(
            added,
            [
                (0, "msg_1".to_string()),
                (1, "fc_1_0".to_string()),
                (2, "msg_1_2".to_string())
            ]
        );
        let second_text = data
            .iter()
            .find(|d| d["type"] == "response.output_text.delta" && d["delta"] == "Done.")
            .expect("delta");
        assert_eq!(
            (&second_text["item_id"], &second_text["output_index"]),
            (&json!("msg_1_2"), &json!(2))
        );
        let numbers: Vec<u64> = data
            .iter()
            .map(|d| d["sequence_number"].as_u64().expect("number"))
            .collect();
        assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>());
    }
}
