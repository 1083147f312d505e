//! OpenAI's chat completion shapes (OpenAI API reference, "Chat Completions": the `chat.completion` object, the
//! `chat.completion.chunk` object, streamed as SSE `data:` lines ending `data: [DONE]`; errors as
//! `{"error": {"message", "type", "param", "code"}}`), as typed structs, and the encoder of a generation into
//! them.

use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

use crate::domain::FinishReason;
use crate::error::{Error, ErrorKind};
use crate::event::{GenerationEvent, LoggedEvent, UsageReport};

/// `usage` of a completion or of the last chunk.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CompletionUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct CompletionTokensDetails {
    pub reasoning_tokens: u64,
}

impl From<&UsageReport> for CompletionUsage {
    fn from(usage: &UsageReport) -> Self {
        Self {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: usage.cached_tokens,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: usage.reasoning_tokens,
            },
        }
    }
}

/// The `chat.completion` object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChatCompletion<'a> {
    /// `chatcmpl-<generation id>`.
    pub id: &'a str,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The upstream model that answered (the alias asked for is in the `x-chatgate-model` header).
    pub model: &'a str,
    #[schema(value_type = Vec<CompletionChoice>)]
    pub choices: [CompletionChoice; 1],
    pub usage: Option<CompletionUsage>,
}

/// The one choice of a completion (`n` is 1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub message: AssistantMessage,
    /// Always `null`: log probabilities are not relayed.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<()>,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: &'static str,
}

/// The reply: `{role: "assistant", content, refusal: null, tool_calls?}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// `null` when the reply is tool calls alone, as OpenAI sends it.
    pub content: Option<String>,
    /// Always `null`.
    #[schema(value_type = Option<String>)]
    pub refusal: Option<()>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<MessageToolCall>,
}

/// A tool call of a reply: `{id, type: "function", function: {name, arguments}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCall,
}

/// The function a tool call names, with its arguments as JSON text.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

/// The `chat.completion.chunk` object.
#[derive(Debug, Serialize)]
pub struct ChatCompletionChunk<'a> {
    pub id: &'a str,
    pub object: &'static str,
    pub created: i64,
    pub model: &'a str,
    pub choices: Vec<ChunkChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

#[derive(Debug, Serialize)]
pub struct ChunkChoice<'a> {
    pub index: u32,
    pub delta: ChunkDelta<'a>,
    pub logprobs: Option<()>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<[ChunkToolCall<'a>; 1]>,
}

/// A piece of a tool call in a chunk: `index` always; `id`, `type` and `function.name` on the call's first
/// piece; more `function.arguments` text on each.
#[derive(Debug, Serialize)]
pub struct ChunkToolCall<'a> {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: ChunkFunction<'a>,
}

#[derive(Debug, Serialize)]
pub struct ChunkFunction<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    pub arguments: &'a str,
}

/// OpenAI's finish reasons are `stop`, `length`, `content_filter` and `tool_calls`; a stopped reply is a stop.
pub fn finish_reason(reason: &FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::ToolCalls => "tool_calls",
        _ => "stop",
    }
}

/// The error `type` OpenAI's SDKs read, from the error's kind.
pub fn error_type(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::Forbidden => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::Invalid
        | ErrorKind::TooLarge
        | ErrorKind::UnsupportedType
        | ErrorKind::Unprocessable => "invalid_request_error",
        _ => "api_error",
    }
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse<'a> {
    pub error: ErrorObject<'a>,
}

/// The error inside [`ErrorResponse`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorObject<'a> {
    /// For people.
    pub message: &'a str,
    /// `invalid_request_error`, `authentication_error`, `permission_error`, `not_found_error`,
    /// `rate_limit_error` or `api_error` (see [`error_type`]).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending request field (`messages[1].content`, `tools[0].function.name`), when known.
    pub param: Option<&'a str>,
    /// The machine-readable code: `invalid_parameter`, `unsupported_parameter`, `model_not_found`,
    /// `rate_limited`, `invalid_token`, ...
    pub code: &'a str,
}

/// `{"error": {"message", "type", "param", "code"}}`; `param` is the offending field when known.
pub fn error_body(err: &Error) -> ErrorResponse<'_> {
    let param = err
        .details
        .get("field")
        .or_else(|| err.details.get("path"))
        .and_then(Value::as_str);
    ErrorResponse {
        error: ErrorObject {
            message: &err.message,
            kind: error_type(err.kind),
            param,
            code: &err.error,
        },
    }
}

impl ErrorResponse<'_> {
    /// The body as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The whole answer of a finished generation: its `done` event's reply, or its failure.
///
/// # Errors
/// The generation's failure.
pub fn completion(
    id: &str,
    created: i64,
    model: &str,
    terminal: &LoggedEvent,
) -> Result<Value, Error> {
    let done = terminal.done()?;
    let completion = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        choices: [CompletionChoice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!done.message.content.is_empty() || done.tool_calls.is_empty())
                    .then(|| done.message.content.clone()),
                refusal: None,
                tool_calls: done
                    .tool_calls
                    .iter()
                    .map(|call| MessageToolCall {
                        id: call.id.clone(),
                        kind: "function",
                        function: FunctionCall {
                            name: call.name.clone(),
                            arguments: call.arguments.clone(),
                        },
                    })
                    .collect(),
            },
            logprobs: None,
            finish_reason: finish_reason(&done.finish_reason),
        }],
        usage: Some(CompletionUsage::from(&done.usage)),
    };
    serde_json::to_value(&completion).map_err(Error::internal)
}

/// The generation's events as `chat.completion.chunk` SSE frames (a first chunk with the role, one per delta,
/// one with the finish reason, the usage chunk when `include_usage`), then `data: [DONE]`; a failure is an
/// error object, then the end.
pub fn chunks<S>(
    events: S,
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
) -> impl Stream<Item = Bytes> + Send + 'static
where
    S: Stream<Item = Arc<LoggedEvent>> + Send + 'static,
{
    let frame = move |choices: Vec<ChunkChoice<'_>>, usage: Option<CompletionUsage>| {
        let chunk = ChatCompletionChunk {
            id: &id,
            object: "chat.completion.chunk",
            created,
            model: &model,
            choices,
            usage,
        };
        sse_data(&serde_json::to_string(&chunk).unwrap_or_default())
    };
    async_stream::stream! {
        let mut events = std::pin::pin!(events);
        yield frame(vec![choice(ChunkDelta { role: Some("assistant"), content: Some(""), tool_calls: None }, None)], None);
        let mut usage = None;
        while let Some(event) = events.next().await {
            match &event.event {
                GenerationEvent::Delta(delta) => {
                    yield frame(vec![choice(ChunkDelta { role: None, content: Some(&delta.text), tool_calls: None }, None)], None);
                }
                GenerationEvent::ToolCall(call) => {
                    let piece = ChunkToolCall {
                        index: call.index,
                        id: call.id.as_deref(),
                        kind: call.id.as_ref().map(|_| "function"),
                        function: ChunkFunction { name: call.name.as_deref(), arguments: &call.arguments },
                    };
                    yield frame(vec![choice(ChunkDelta { role: None, content: None, tool_calls: Some([piece]) }, None)], None);
                }
                GenerationEvent::Usage(report) => usage = Some(CompletionUsage::from(&**report)),
                GenerationEvent::Done(done) => {
                    yield frame(vec![choice(ChunkDelta::default(), Some(finish_reason(&done.finish_reason)))], None);
                    if include_usage {
                        yield frame(Vec::new(), usage.take());
                    }
                    yield Bytes::from_static(b"data: [DONE]\n\n");
                    break;
                }
                GenerationEvent::Error(failed) => {
                    let mut error = failed.failure.to_error();
                    // Mid-stream, the status is already sent: the SDKs read this as an API error.
                    error.kind = ErrorKind::Internal;
                    yield sse_data(&error_body(&error).to_json());
                    break;
                }
                GenerationEvent::Start(_) | GenerationEvent::UserMessage(_) => {}
            }
        }
    }
}

fn choice<'a>(delta: ChunkDelta<'a>, finish_reason: Option<&'static str>) -> ChunkChoice<'a> {
    ChunkChoice {
        index: 0,
        delta,
        logprobs: None,
        finish_reason,
    }
}

fn sse_data(json: &str) -> Bytes {
    let mut out = String::with_capacity(json.len() + 8);
    out.push_str("data: ");
    out.push_str(json);
    out.push_str("\n\n");
    Bytes::from(out)
}
