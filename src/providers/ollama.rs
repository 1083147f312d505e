//! Ollama native `/api/chat` adapter (NDJSON).
//!
//! Wire format (Ollama API docs, "Generate a chat completion"; prism-php recorded fixtures): one JSON object
//! per line, `message.content` the delta, the last line `"done": true` with `done_reason`, `prompt_eval_count`
//! and `eval_count` — either of which may be missing, which means unknown, never 0. An error inside the 200
//! stream is a line `{"error": "..."}`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, DecodeError, Decoder, Flow, Frame, Framing, HttpOptions, Upstream};
use super::{
    ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, ToolCallDelta, ToolChoice,
    Usage, tools,
};

/// The Ollama adapter.
pub struct OllamaProvider {
    upstream: Upstream,
}

impl OllamaProvider {
    /// `base_url` is the server's root, e.g. `http://127.0.0.1:11434`.
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
        // Plain Ollama needs no key; one behind an authenticating proxy takes a bearer token.
        match &self.upstream.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }
}

/// The `/api/chat` body.
pub fn request_body(request: &ChatRequest) -> Value {
    // Ollama's /api/chat: images as base64 strings beside the text (docs/api.md, "Chat request (with images)").
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| {
            let mut message = json!({ "role": m.role, "content": m.content });
            if !m.images.is_empty() {
                message["images"] = m.images.iter().map(|i| json!(&*i.base64)).collect();
            }
            // Tool calls with their arguments as objects; a result names its tool (docs/api.md, "Chat request
            // (with tools)").
            if !m.tool_calls.is_empty() {
                message["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| json!({ "function": { "name": c.name, "arguments": tools::arguments_object(&c.arguments) } }))
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                message["tool_name"] = json!(tools::call_name(&request.messages, id).unwrap_or(""));
            }
            message
        })
        .collect();
    let mut body = json!({ "model": request.model, "messages": messages, "stream": true });
    // OpenAI's `tools` shape; Ollama has no `tool_choice`: `none` leaves the tools out, anything else offers
    // them and the model decides.
    if request.tools.choice != Some(ToolChoice::None)
        && let Some(body) = body.as_object_mut()
    {
        let mut tools = super::openai::tools_json(&request.tools);
        tools.retain(|key, _| key == "tools");
        body.extend(tools);
    }
    // `options` (docs/modelfile.md, "Valid Parameters and Values") and `format` (docs/api.md).
    let sampling = &request.sampling;
    let mut options = sampling.named(super::OPENAI_NAMES);
    if let Some(max_tokens) = request.max_tokens {
        options.insert("num_predict".into(), json!(max_tokens));
    }
    if !options.is_empty() {
        body["options"] = Value::Object(options);
    }
    if let Some(schema) = sampling.json_schema() {
        body["format"] = schema.clone();
    } else if sampling.wants_json() {
        body["format"] = json!("json");
    }
    body
}

impl Provider for OllamaProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn stream(&self, request: &ChatRequest) -> ProviderStream {
        let builder = self.authorized(
            self.upstream
                .client
                .post(format!("{}/api/chat", self.upstream.base_url))
                .json(&request_body(request)),
        );
        http::drive(
            self.upstream.name.clone(),
            self.upstream.options.clone(),
            builder,
            Framing::Ndjson,
            OllamaDecoder::default(),
        )
    }

    fn check(&self) -> Option<reqwest::RequestBuilder> {
        Some(
            self.authorized(
                self.upstream
                    .client
                    .get(format!("{}/api/tags", self.upstream.base_url)),
            ),
        )
    }
}

/// Decodes `/api/chat` lines.
#[derive(Debug, Default)]
pub struct OllamaDecoder {
    /// Tool calls so far: the next one's index.
    tool_calls: u32,
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    message: Option<LineMessage>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct LineMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<LineToolCall>,
}

#[derive(Deserialize)]
struct LineToolCall {
    #[serde(default)]
    id: Option<String>,
    function: LineFunction,
}

#[derive(Deserialize)]
struct LineFunction {
    #[serde(default)]
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
}

impl Decoder for OllamaDecoder {
    fn decode(
        &mut self,
        frame: Frame<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<Flow, DecodeError> {
        let Frame::Line(line) = frame else {
            return Err(DecodeError::Malformed("expected NDJSON".into()));
        };
        let line: Line = http::parse_frame(line).map_err(|e| {
            DecodeError::Malformed(format!("{e} in line {}", http::truncate(line, 200)))
        })?;
        if let Some(error) = line.error {
            return Err(DecodeError::Upstream(http::error_message(&error)));
        }
        if let Some(message) = line.message {
            if !message.content.is_empty() {
                out.push(ProviderEvent::TextDelta(message.content));
            }
            // Whole calls, arguments as an object.
            for call in message.tool_calls {
                let arguments = call.function.arguments.unwrap_or_else(|| json!({}));
                out.push(ProviderEvent::ToolCall(ToolCallDelta::whole(
                    self.tool_calls,
                    call.id.unwrap_or_else(tools::new_call_id),
                    call.function.name,
                    arguments.to_string(),
                )));
                self.tool_calls += 1;
            }
        }
        if !line.done {
            return Ok(Flow::Continue);
        }
        out.push(ProviderEvent::Usage(Usage {
            prompt_tokens: line.prompt_eval_count,
            completion_tokens: line.eval_count,
            cached_tokens: None,
            reasoning_tokens: None,
        }));
        out.push(ProviderEvent::Finish(
            line.done_reason
                .as_deref()
                .map_or(FinishReason::Stop, FinishReason::from),
        ));
        Ok(Flow::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_counts_are_unknown_not_zero() {
        let mut out = Vec::new();
        let flow = OllamaDecoder::default()
            .decode(Frame::Line(r#"{"model":"phi4","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"eval_count":73}"#), &mut out)
            .expect("line");
        assert_eq!(flow, Flow::Done);
        assert_eq!(
            out,
            [
                ProviderEvent::Usage(Usage {
                    prompt_tokens: None,
                    completion_tokens: Some(73),
                    cached_tokens: None,
                    reasoning_tokens: None
                }),
                ProviderEvent::Finish("stop".into())
            ]
        );
        assert!(matches!(
            OllamaDecoder::default().decode(Frame::Line(r#"{"error":"an error was encountered while running the model"}"#), &mut out),
            Err(DecodeError::Upstream(m)) if m.contains("running the model")
        ));
    }
}
