//! The events of a generation, typed. The generation task produces each once; the event log numbers and keeps
//! it; every wire format (native SSE, WebSocket frames, the AI SDK UI message stream, OpenAI chunks, in
//! the `wire` module) is an encoder over it.
//!
//! The native SSE `data:` of each event (DESIGN.md, "SSE events") is its payload serialized:
//!
//! ```text
//! user_message  the saved user message itself    (seq 0, only on the stream of the request that sent it)
//! start         {generation_id, message_id, conversation_id, model}
//! delta         {text}
//! tool_call     {index, id?, name?, arguments}                 a piece of a tool call (OpenAI-compatible requests)
//! usage         {prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, estimated, cost_usd}
//! done          {message, usage, finish_reason, tool_calls?}  terminal
//! error         {error, message, details}                  terminal
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::FinishReason;
use crate::error::{Error, ErrorKind};
use crate::id::Id;
use crate::providers::{ToolCall, ToolCallDelta};
use crate::store::Message;

/// The kind of a generation event; the SSE `event:` name and the WebSocket frame `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserMessage,
    Start,
    Delta,
    ToolCall,
    Usage,
    Done,
    Error,
}

impl EventKind {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::UserMessage => "user_message",
            EventKind::Start => "start",
            EventKind::Delta => "delta",
            EventKind::ToolCall => "tool_call",
            EventKind::Usage => "usage",
            EventKind::Done => "done",
            EventKind::Error => "error",
        }
    }

    /// `done` and `error` end a generation: nothing follows them.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Done | EventKind::Error)
    }
}

/// One event of a generation. Every payload but a delta's is boxed, so that the common event stays the size of
/// a `String` (a generation logs one per delta; see `examples/hub_memory.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum GenerationEvent {
    /// The user message just saved; never logged, only sent first on the stream of the request that sent it.
    UserMessage(Box<Message>),
    Start(Box<Start>),
    Delta(Delta),
    ToolCall(Box<ToolCallDelta>),
    Usage(Box<UsageReport>),
    Done(Box<Done>),
    Error(Box<Failed>),
}

impl GenerationEvent {
    pub fn kind(&self) -> EventKind {
        match self {
            GenerationEvent::UserMessage(_) => EventKind::UserMessage,
            GenerationEvent::Start(_) => EventKind::Start,
            GenerationEvent::Delta(_) => EventKind::Delta,
            GenerationEvent::ToolCall(_) => EventKind::ToolCall,
            GenerationEvent::Usage(_) => EventKind::Usage,
            GenerationEvent::Done(_) => EventKind::Done,
            GenerationEvent::Error(_) => EventKind::Error,
        }
    }

    /// A delta of `text`.
    pub fn delta(text: impl Into<String>) -> Self {
        GenerationEvent::Delta(Delta { text: text.into() })
    }

    /// A frame around the event's native SSE `data:` (and WebSocket frame fields): the `head` parts, the payload
    /// as a JSON object, then `tail`, in one buffer allocated once. The JSON is written where the frame is built
    /// rather than into a string of its own that the frame copies.
    pub fn frame_json(&self, head: &[&str], tail: &str) -> Vec<u8> {
        let head_len: usize = head.iter().map(|p| p.len()).sum();
        let mut frame = Vec::with_capacity(head_len + self.data_json_len_hint() + tail.len());
        for part in head {
            frame.extend_from_slice(part.as_bytes());
        }
        self.write_data_json(&mut frame);
        frame.extend_from_slice(tail.as_bytes());
        frame
    }

    /// Appends the payload as a JSON object to `out`.
    fn write_data_json(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let written = match self {
            GenerationEvent::UserMessage(message) => serde_json::to_writer(&mut *out, message),
            GenerationEvent::Start(start) => serde_json::to_writer(&mut *out, start),
            GenerationEvent::Delta(delta) => serde_json::to_writer(&mut *out, delta),
            GenerationEvent::ToolCall(call) => serde_json::to_writer(&mut *out, call),
            GenerationEvent::Usage(usage) => serde_json::to_writer(&mut *out, usage),
            GenerationEvent::Done(done) => serde_json::to_writer(&mut *out, done),
            GenerationEvent::Error(failed) => {
                serde_json::to_writer(&mut *out, &failed.failure.body())
            }
        };
        // Serializing these plain structs cannot fail; an empty object keeps the frame valid if it ever did.
        if written.is_err() {
            out.truncate(start);
            out.extend_from_slice(b"{}");
        }
    }

    /// About how many bytes `write_data_json` writes, so a frame is allocated once: exactly
    /// that for a delta (its text escaped, [`escaped_len`]); for the other events a bound that holds for the usual
    /// message, tool call or error (a longer one grows the frame).
    fn data_json_len_hint(&self) -> usize {
        match self {
            GenerationEvent::Delta(delta) => r#"{"text":""}"#.len() + escaped_len(&delta.text),
            GenerationEvent::UserMessage(message) => MESSAGE_JSON_BYTES + message.content.len(),
            GenerationEvent::Done(done) => 128 + MESSAGE_JSON_BYTES + done.message.content.len(),
            GenerationEvent::Start(_) | GenerationEvent::Usage(_) => 192,
            GenerationEvent::ToolCall(call) => 96 + call.arguments.len(),
            GenerationEvent::Error(failed) => 128 + failed.failure.message.len(),
        }
    }
}

/// The bytes of a [`Message`]'s JSON besides its content, with room for its model names and media: its ids,
/// times and fields come to about 550.
const MESSAGE_JSON_BYTES: usize = 768;

/// The length of `text` as a JSON string's contents, escaped as serde_json escapes it (RFC 8259 §7: `"` and `\`
/// with a backslash; `\b \f \n \r \t` short; the other control characters as `\u00XX`).
fn escaped_len(text: &str) -> usize {
    text.len()
        + text
            .bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// `start`: the generation began; its id is the id of the assistant message it writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub generation_id: Id,
    pub message_id: Id,
    /// `null` for stateless (OpenAI-compatible) generations, which write no message.
    pub conversation_id: Option<Id>,
    /// The model alias asked for.
    pub model: String,
}

/// `delta`: a piece of the reply's text, as the provider sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub text: String,
}

/// `usage`: the generation's final token counts and cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub reasoning_tokens: u64,
    /// True when a count is a local tiktoken estimate rather than the provider's figure.
    pub estimated: bool,
    /// USD (the stored figure is integer nano-USD).
    pub cost_usd: f64,
}

/// `done`: the generation ended and its message is saved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The saved assistant message (for stateless generations, as it would have been saved).
    pub message: Message,
    pub usage: UsageReport,
    pub finish_reason: FinishReason,
    /// The tool calls the reply made, whole (OpenAI-compatible requests with `tools`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// `error`: the generation failed. What was streamed is saved unless the save itself failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub failure: Failure,
    /// The saved reply with its partial text, when it could be saved.
    pub saved: Option<Message>,
}

/// An [`Error`] as a generation event carries it: everything but the internal cause.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub kind: ErrorKind,
    pub error: String,
    pub message: String,
    pub details: Value,
    pub retry_after_secs: Option<u64>,
}

impl Failure {
    /// `{error, message, details}`, as every surface shows an error; the provider's retry hint, if any, is
    /// `details.retry_after_secs` (a stream has no `Retry-After` header to carry it).
    pub fn body(&self) -> Value {
        let mut details = self.details.clone();
        if let (Some(secs), Some(fields)) = (self.retry_after_secs, details.as_object_mut()) {
            fields.insert("retry_after_secs".into(), secs.into());
        }
        serde_json::json!({ "error": self.error, "message": self.message, "details": details })
    }

    /// The error again, for callers that answer with it (a JSON answer, an OpenAI error).
    pub fn to_error(&self) -> Error {
        Error {
            kind: self.kind,
            error: self.error.clone().into(),
            message: self.message.clone(),
            details: self.details.clone(),
            retry_after_secs: self.retry_after_secs,
            cause: None,
        }
    }
}

impl From<&Error> for Failure {
    fn from(err: &Error) -> Self {
        Self {
            kind: err.kind,
            error: err.error.to_string(),
            message: err.message.clone(),
            details: err.details.clone(),
            retry_after_secs: err.retry_after_secs,
        }
    }
}

/// An event as logged: numbered and shared by every subscriber, each of which encodes it in its own wire
/// format as it sends it. The log keeps no encoded copy: a retained generation costs its typed events only
/// (`examples/hub_memory.rs` measures it), and encoding a delta costs a few hundred ns
/// (`examples/media_bench.rs`).
#[derive(Debug)]
pub struct LoggedEvent {
    /// 1-based, monotonic within the generation: the SSE `id:`, the WebSocket `seq`.
    pub seq: u64,
    pub event: GenerationEvent,
}

impl LoggedEvent {
    pub fn new(seq: u64, event: GenerationEvent) -> Arc<Self> {
        Arc::new(Self { seq, event })
    }

    pub fn kind(&self) -> EventKind {
        self.event.kind()
    }

    /// The `done` of a generation's terminal event.
    ///
    /// # Errors
    /// The generation's failure, for its `error` event; an internal error for an event that is not terminal.
    pub fn done(&self) -> Result<&Done, Error> {
        match &self.event {
            GenerationEvent::Done(done) => Ok(done),
            GenerationEvent::Error(failed) => Err(failed.failure.to_error()),
            _ => Err(Error::internal(
                "a generation ended without a terminal event",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_len_is_the_length_serde_json_writes() {
        let mut texts: Vec<String> = (0u8..=127).map(|b| char::from(b).to_string()).collect();
        texts.extend(
            ["", "plain", "é", "😀", "a\"b\\c\n\u{0}\u{1f}\u{7f}\u{2028}"].map(String::from),
        );
        for text in texts {
            let written = serde_json::to_string(&text).unwrap();
            assert_eq!(escaped_len(&text), written.len() - 2, "{written}");
        }
    }
}
