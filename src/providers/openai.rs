//! OpenAI Chat Completions streaming adapter, for OpenAI and every compatible server (Groq, OpenRouter, vLLM,
//! LM Studio, Ollama's `/v1`).
//!
//! Wire format (OpenAI API reference, "Chat Completions · streaming"; recordings in openai-python's tests):
//! SSE `data: <chunk>` events, `data: [DONE]` at the end. Usage comes on a final chunk with `choices: []` when
//! `stream_options.include_usage` is sent (always, here); Groq puts it in `x_groq.usage` on the last content
//! chunk. Some servers send `choices: null`. Errors after the 200 arrive as `data: {"error": {...}}`.

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use super::http::{self, DecodeError, Decoder, Flow, Frame, Framing, HttpOptions, Upstream};
use super::{
    ChatMessage, ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, ToolCallDelta,
    ToolChoice, Tools, Usage,
};

/// The OpenAI-compatible adapter.
pub struct OpenAiProvider {
    upstream: Upstream,
}

impl OpenAiProvider {
    /// `base_url` ends before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        timeouts: HttpOptions,
    ) -> Result<Self, String> {
        Ok(Self {
            upstream: Upstream::new(name, base_url, api_key, timeouts)?,
        })
    }

    fn authorized(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.upstream.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

/// A Chat Completions message: `content` a string, or, with images, an array of `text` and `image_url` parts
/// whose URLs are `data:` URLs (OpenAI API reference, "Create chat completion", user message content parts).
///
/// Audio goes as `input_audio` parts, `{data, format}` with format `wav` or `mp3` (the two the API takes).
///
/// An assistant message's tool calls go as `tool_calls` (its `content` null when it has no text), a tool
/// result as `{"role": "tool", "tool_call_id", "content"}`.
pub fn message_json(message: &ChatMessage) -> Value {
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
            .collect();
        let content = (!message.content.is_empty()).then_some(&message.content);
        return json!({ "role": message.role, "content": content, "tool_calls": calls });
    }
    if let Some(call_id) = &message.tool_call_id {
        return json!({ "role": "tool", "tool_call_id": call_id, "content": message.content });
    }
    if message.images.is_empty() && message.audio.is_empty() {
        return json!({ "role": message.role, "content": message.content });
    }
    let mut parts = Vec::with_capacity(message.images.len() + message.audio.len() + 1);
    if !message.content.is_empty() {
        parts.push(json!({ "type": "text", "text": message.content }));
    }
    for image in &message.images {
        parts.push(json!({ "type": "image_url", "image_url": { "url": image.data_url() } }));
    }
    for audio in &message.audio {
        let format = if audio.mime_type == "audio/mpeg" {
            "mp3"
        } else {
            "wav"
        };
        parts.push(json!({ "type": "input_audio", "input_audio": { "data": &*audio.base64, "format": format } }));
    }
    json!({ "role": message.role, "content": parts })
}

/// A streaming Chat Completions request body: `{model, messages, stream: true, stream_options: {include_usage:
/// true}, max_tokens?, ...settings}`, the settings being the sampling ones, `response_format` and the tools.
#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: Vec<MessageBody<'a>>,
    stream: bool,
    stream_options: StreamOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(flatten)]
    settings: serde_json::Map<String, Value>,
}

impl<'a> RequestBody<'a> {
    fn new(request: &'a ChatRequest) -> Self {
        let sampling = &request.sampling;
        let mut settings = sampling.named(super::OPENAI_NAMES);
        if let Some(format) = &sampling.response_format {
            settings.insert("response_format".into(), format.clone());
        }
        settings.extend(tools_json(&request.tools));
        RequestBody {
            model: &request.model,
            messages: request.messages.iter().map(MessageBody).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            max_tokens: request.max_tokens,
            settings,
        }
    }
}

/// `stream_options` of [`RequestBody`].
#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// A message of [`RequestBody`] in [`message_json`]'s shape. A text message, which is every turn of an
/// ordinary history, is written straight from the [`ChatMessage`]; the others go through `message_json`. A
/// `Value` tree built and dropped for each turn was a sixth of a message's instructions (callgrind, 100-turn
/// histories).
struct MessageBody<'a>(&'a ChatMessage);

impl Serialize for MessageBody<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let message = self.0;
        let plain_text = message.tool_calls.is_empty()
            && message.tool_call_id.is_none()
            && message.images.is_empty()
            && message.audio.is_empty();
        if !plain_text {
            return message_json(message).serialize(serializer);
        }
        let mut map = serializer.serialize_map(Some(2))?;
        map.serialize_entry("role", &message.role)?;
        map.serialize_entry("content", &message.content)?;
        map.end()
    }
}

/// `tools`, `tool_choice` and `parallel_tool_calls` as Chat Completions takes them (also Ollama's `tools`);
/// nothing when no tool is offered.
pub fn tools_json(tools: &Tools) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    if tools.is_empty() {
        return out;
    }
    let definitions: Vec<Value> = tools
        .definitions
        .iter()
        .map(|tool| {
            let mut function = json!({ "name": tool.name, "parameters": tool.parameters });
            if let Some(description) = &tool.description {
                function["description"] = json!(description);
            }
            if let Some(strict) = tool.strict {
                function["strict"] = json!(strict);
            }
            json!({ "type": "function", "function": function })
        })
        .collect();
    out.insert("tools".into(), Value::Array(definitions));
    if let Some(choice) = &tools.choice {
        let choice = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Function(name) => {
                json!({ "type": "function", "function": { "name": name } })
            }
        };
        out.insert("tool_choice".into(), choice);
    }
    if let Some(parallel) = tools.parallel {
        out.insert("parallel_tool_calls".into(), json!(parallel));
    }
    out
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn native_audio(&self, content_type: &str) -> bool {
        matches!(content_type, "audio/wav" | "audio/mpeg")
    }

    fn stream(&self, request: &ChatRequest) -> ProviderStream {
        let body = RequestBody::new(request);
        let builder = self.authorized(
            self.upstream
                .client
                .post(format!("{}/chat/completions", self.upstream.base_url))
                .json(&body),
        );
        http::drive(
            self.upstream.name.clone(),
            self.upstream.options.clone(),
            builder,
            Framing::Sse,
            OpenAiDecoder,
        )
    }

    fn check(&self) -> Option<reqwest::RequestBuilder> {
        Some(
            self.authorized(
                self.upstream
                    .client
                    .get(format!("{}/models", self.upstream.base_url)),
            ),
        )
    }
}

/// Decodes Chat Completions chunks.
#[derive(Debug, Default)]
pub struct OpenAiDecoder;

impl Decoder for OpenAiDecoder {
    fn decode(
        &mut self,
        frame: Frame<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<Flow, DecodeError> {
        let Frame::Sse { data, .. } = frame else {
            return Err(DecodeError::Malformed("expected server-sent events".into()));
        };
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Flow::Done);
        }
        if data.is_empty() {
            return Ok(Flow::Continue);
        }
        let chunk: Chunk = http::parse_frame(data).map_err(|e| {
            DecodeError::Malformed(format!("{e} in chunk {}", http::truncate(data, 200)))
        })?;
        if let Some(error) = chunk.error {
            return Err(DecodeError::Upstream(http::error_message(&error)));
        }
        let mut finish = None;
        for choice in chunk.choices.unwrap_or_default() {
            let Delta {
                content,
                tool_calls,
            } = choice.delta.unwrap_or_default();
            if let Some(text) = content.filter(|t| !t.is_empty()) {
                out.push(ProviderEvent::TextDelta(text));
            }
            for call in tool_calls.into_iter().flatten() {
                let function = call.function.unwrap_or_default();
                if call.id.is_none() && function.name.is_none() && function.arguments.is_empty() {
                    continue;
                }
                out.push(ProviderEvent::ToolCall(ToolCallDelta {
                    index: call.index,
                    id: call.id,
                    name: function.name,
                    arguments: function.arguments,
                }));
            }
            finish = choice.finish_reason.or(finish);
        }
        if let Some(usage) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
            out.push(ProviderEvent::Usage(usage.into()));
        }
        if let Some(reason) = finish {
            out.push(ProviderEvent::Finish(FinishReason::from(reason.as_str())));
        }
        Ok(Flow::Continue)
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    /// Pieces of tool calls: the first of each `index` with `id`, `type` and `function.name`, then more
    /// `function.arguments`.
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallPiece>>,
}

#[derive(Deserialize)]
struct ToolCallPiece {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionPiece>,
}

#[derive(Default, Deserialize)]
struct FunctionPiece {
    #[serde(default)]
    name: Option<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    arguments: String,
}

/// `null` read as an empty string (some compatible servers send `"arguments": null` with the name).
fn null_as_empty<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<ChunkUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl From<ChunkUsage> for Usage {
    fn from(u: ChunkUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(data: &str) -> Result<(Flow, Vec<ProviderEvent>), DecodeError> {
        let mut out = Vec::new();
        OpenAiDecoder
            .decode(Frame::Sse { event: "", data }, &mut out)
            .map(|flow| (flow, out))
    }

    #[test]
    fn the_request_body_writes_every_kind_of_message_as_message_json_does() {
        use crate::providers::{MediaData, ToolCall};
        let image = MediaData {
            mime_type: "image/png".into(),
            base64: "iVBORw0K".into(),
        };
        let audio = MediaData {
            mime_type: "audio/mpeg".into(),
            base64: "SUQz".into(),
        };
        let call = ToolCall {
            id: "call_1".into(),
            name: "weather".into(),
            arguments: r#"{"city":"Paris"}"#.into(),
        };
        let messages = vec![
            ChatMessage::system("Be \"brief\".\nÜnïcode, \u{1F600} and a tab\t."),
            ChatMessage::user("What is the weather?"),
            ChatMessage::assistant("").with_tool_calls(vec![call.clone()]),
            ChatMessage::assistant("Let me look.").with_tool_calls(vec![call]),
            ChatMessage::tool("call_1", r#"{"celsius": 21}"#),
            ChatMessage::user("And this?").with_images(vec![image.clone()]),
            ChatMessage::user("").with_images(vec![image]),
            ChatMessage::user("Listen.").with_audio(vec![audio]),
            ChatMessage::assistant(""),
        ];
        let request = ChatRequest {
            model: "gpt-4o-mini".into(),
            messages,
            max_tokens: Some(64),
            sampling: crate::providers::Sampling {
                temperature: Some(0.5),
                stop: vec!["END".into()],
                response_format: Some(json!({ "type": "json_object" })),
                ..Default::default()
            },
            tools: Tools::default(),
        };
        let body = serde_json::to_value(RequestBody::new(&request)).expect("body");
        let expected = json!({
            "model": "gpt-4o-mini",
            "messages": request.messages.iter().map(message_json).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": { "include_usage": true },
            "max_tokens": 64,
            "temperature": 0.5,
            "stop": ["END"],
            "response_format": { "type": "json_object" },
        });
        assert_eq!(body, expected);
        let without = ChatRequest {
            max_tokens: None,
            sampling: crate::providers::Sampling::default(),
            ..request
        };
        let body = serde_json::to_value(RequestBody::new(&without)).expect("body");
        let keys: Vec<_> = body.as_object().expect("object").keys().cloned().collect();
        assert_eq!(keys, ["messages", "model", "stream", "stream_options"]);
    }

    #[test]
    fn usage_reads_cached_and_reasoning_details() {
        let (_, events) = decode(
            r#"{"choices":[],"usage":{"prompt_tokens":79,"completion_tokens":1,"total_tokens":80,
               "prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
        )
        .expect("chunk");
        assert_eq!(
            events,
            [ProviderEvent::Usage(Usage {
                prompt_tokens: Some(79),
                completion_tokens: Some(1),
                cached_tokens: Some(64),
                reasoning_tokens: Some(0)
            })]
        );
    }

    #[test]
    fn groq_usage_and_null_choices() {
        let (_, events) = decode(
            r#"{"id":"chatcmpl-7eb0","object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],
               "x_groq":{"id":"req_01kh","usage":{"queue_time":0.04,"prompt_tokens":45,"completion_tokens":662,"total_tokens":707}}}"#,
        )
        .expect("chunk");
        assert_eq!(events.len(), 2);
        assert!(matches!(
            events[0],
            ProviderEvent::Usage(Usage {
                prompt_tokens: Some(45),
                completion_tokens: Some(662),
                ..
            })
        ));
        assert_eq!(events[1], ProviderEvent::Finish("stop".into()));
        assert_eq!(decode(r#"{"choices":null}"#).expect("chunk").1, []);
        assert_eq!(decode("[DONE]").expect("done").0, Flow::Done);
        assert!(
            matches!(decode(r#"{"error":{"message":"boom"}}"#), Err(DecodeError::Upstream(m)) if m == "boom")
        );
        assert!(matches!(
            decode("{not json"),
            Err(DecodeError::Malformed(_))
        ));
    }
}
