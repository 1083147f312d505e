//! Anthropic Messages streaming adapter.
//!
//! Wire format (Anthropic API reference, "Streaming Messages"; anthropic-sdk-python's recorded fixtures):
//! SSE with `event:` types `message_start` (usage: `input_tokens`, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`, a placeholder `output_tokens`), `content_block_start` (`tool_use` blocks carry a
//! call's id and name), `content_block_delta` (`text_delta`; `input_json_delta` for `tool_use` blocks),
//! `content_block_stop`, `message_delta` (stop reason and *cumulative* usage), `ping`, `message_stop` (the
//! terminator) and `error` (inside the 200 stream).

use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, DecodeError, Decoder, Flow, Frame, Framing, HttpOptions, Upstream};
use super::tools::arguments_object;
use super::{
    ChatMessage, ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, Role,
    ToolCallDelta, ToolChoice, Tools, Usage,
};

/// `anthropic-version` sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the Messages API; this is sent when the model alias sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic adapter.
pub struct AnthropicProvider {
    upstream: Upstream,
}

impl AnthropicProvider {
    /// `base_url` ends before `/messages`, e.g. `https://api.anthropic.com/v1`.
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
        let builder = builder.header("anthropic-version", API_VERSION);
        match &self.upstream.api_key {
            Some(key) => builder.header("x-api-key", key),
            None => builder,
        }
    }
}

/// The Messages request body: system prompt at the top level; consecutive messages of one role merged, since
/// the API wants user and assistant turns to alternate, starting with the user. Each message is a list of
/// content blocks: a user message's images first (as Anthropic's vision guide advises), then its text; an
/// assistant message's text, then its `tool_use` blocks; a tool result is a `tool_result` block of a user turn
/// ("Tool use with Claude": results first in their user message, which they are, since they follow the call).
/// A turn of text alone is sent as a plain string.
pub fn request_body(request: &ChatRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut turns: Vec<(Role, Vec<Value>)> = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        let role = if message.role == Role::Assistant {
            Role::Assistant
        } else {
            Role::User
        };
        let blocks = blocks(message);
        match turns.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    if turns
        .first()
        .is_some_and(|(role, _)| *role == Role::Assistant)
    {
        turns.remove(0);
    }
    let messages: Vec<Value> = turns
        .into_iter()
        .map(|(role, blocks)| {
            let texts: Option<Vec<&str>> = blocks
                .iter()
                .map(|b| (b["type"] == "text").then(|| b["text"].as_str().unwrap_or("")))
                .collect();
            match texts {
                Some(texts) if !texts.is_empty() => {
                    json!({ "role": role, "content": texts.join("\n\n") })
                }
                // An empty turn (an empty message) still holds its place.
                Some(_) => json!({ "role": role, "content": "" }),
                None => {
                    let blocks: Vec<Value> = blocks
                        .into_iter()
                        .filter(|b| !(b["type"] == "text" && b["text"] == ""))
                        .collect();
                    json!({ "role": role, "content": blocks })
                }
            }
        })
        .collect();
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    // The Messages API's sampling settings; seed, penalties and response formats have no counterpart
    // ([`AnthropicProvider::unsupported`]).
    let sampling = &request.sampling;
    if let Some(temperature) = sampling.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(top_p) = sampling.top_p {
        body["top_p"] = json!(top_p);
    }
    if !sampling.stop.is_empty() {
        body["stop_sequences"] = json!(sampling.stop);
    }
    add_tools(&mut body, &request.tools);
    body
}

/// One message's content blocks; empty text is left out (the API refuses empty text blocks).
fn blocks(message: &ChatMessage) -> Vec<Value> {
    let mut blocks: Vec<Value> = message
        .images
        .iter()
        .map(|i| json!({ "type": "image", "source": { "type": "base64", "media_type": i.mime_type, "data": &*i.base64 } }))
        .collect();
    if let Some(call_id) = &message.tool_call_id {
        blocks.push(
            json!({ "type": "tool_result", "tool_use_id": call_id, "content": message.content }),
        );
        return blocks;
    }
    if !message.content.trim().is_empty() {
        blocks.push(json!({ "type": "text", "text": message.content }));
    }
    for call in &message.tool_calls {
        blocks.push(json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": arguments_object(&call.arguments) }));
    }
    if blocks.is_empty() && message.content.is_empty() {
        // Keeps the turn, as the plain-string form does.
        blocks.push(json!({ "type": "text", "text": "" }));
    }
    blocks
}

/// `tools` (`{name, description, input_schema}`) and `tool_choice` (`auto`, `any`, `tool` with its name,
/// `none`; `disable_parallel_tool_use` for `parallel_tool_calls: false`), from the Messages API reference.
fn add_tools(body: &mut Value, tools: &Tools) {
    if tools.is_empty() {
        return;
    }
    body["tools"] = tools
        .definitions
        .iter()
        .map(|tool| {
            let mut definition = json!({ "name": tool.name, "input_schema": tool.parameters });
            if let Some(description) = &tool.description {
                definition["description"] = json!(description);
            }
            definition
        })
        .collect();
    let mut choice = match &tools.choice {
        None | Some(ToolChoice::Auto) => json!({ "type": "auto" }),
        Some(ToolChoice::None) => json!({ "type": "none" }),
        Some(ToolChoice::Required) => json!({ "type": "any" }),
        Some(ToolChoice::Function(name)) => json!({ "type": "tool", "name": name }),
    };
    if tools.parallel == Some(false) && choice["type"] != "none" {
        choice["disable_parallel_tool_use"] = json!(true);
    }
    if tools.choice.is_some() || tools.parallel == Some(false) {
        body["tool_choice"] = choice;
    }
}

impl Provider for AnthropicProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn unsupported(&self, sampling: &super::Sampling) -> Option<&'static str> {
        if sampling.seed.is_some() {
            Some("seed")
        } else if sampling.presence_penalty.is_some() {
            Some("presence_penalty")
        } else if sampling.frequency_penalty.is_some() {
            Some("frequency_penalty")
        } else if sampling.wants_json() {
            Some("response_format")
        } else {
            None
        }
    }

    fn stream(&self, request: &ChatRequest) -> ProviderStream {
        let builder = self.authorized(
            self.upstream
                .client
                .post(format!("{}/messages", self.upstream.base_url))
                .json(&request_body(request)),
        );
        http::drive(
            self.upstream.name.clone(),
            self.upstream.options.clone(),
            builder,
            Framing::Sse,
            AnthropicDecoder::default(),
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

/// Decodes Messages stream events, keeping the usage of `message_start` to overlay `message_delta`'s on.
#[derive(Debug, Default)]
pub struct AnthropicDecoder {
    input_tokens: u64,
    cache_creation: u64,
    cache_read: u64,
    /// The `tool_use` blocks seen: content block index → the call's position among the reply's tool calls,
    /// and whether any of its input has streamed.
    tool_blocks: Vec<ToolBlock>,
}

#[derive(Debug)]
struct ToolBlock {
    block: u64,
    call: u32,
    has_input: bool,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicDecoder {
    fn absorb(&mut self, usage: &AnthropicUsage) {
        self.input_tokens = usage.input_tokens.unwrap_or(self.input_tokens);
        self.cache_creation = usage
            .cache_creation_input_tokens
            .unwrap_or(self.cache_creation);
        self.cache_read = usage.cache_read_input_tokens.unwrap_or(self.cache_read);
    }

    /// Anthropic's `input_tokens` excludes cache reads and writes; chatgate's prompt tokens include both.
    fn usage(&self, output_tokens: Option<u64>) -> Usage {
        Usage {
            prompt_tokens: Some(self.input_tokens + self.cache_creation + self.cache_read),
            completion_tokens: output_tokens,
            cached_tokens: Some(self.cache_read),
            reasoning_tokens: None,
        }
    }
}

/// Anthropic's `stop_reason` (Messages API, "Handling stop reasons") in common words.
fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::from(other),
    }
}

impl Decoder for AnthropicDecoder {
    fn decode(
        &mut self,
        frame: Frame<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<Flow, DecodeError> {
        let Frame::Sse { event, data } = frame else {
            return Err(DecodeError::Malformed("expected server-sent events".into()));
        };
        let value: Value = http::parse_frame(data).map_err(|e| {
            DecodeError::Malformed(format!("{e} in event {}", http::truncate(data, 200)))
        })?;
        // `event:` and `data.type` agree; trust `data.type` when both are present.
        let kind = value.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                let usage = value
                    .pointer("/message/usage")
                    .cloned()
                    .unwrap_or(Value::Null);
                if let Ok(usage) = serde_json::from_value::<AnthropicUsage>(usage) {
                    self.absorb(&usage);
                    // output_tokens here is a placeholder (1): the real count comes with message_delta.
                    out.push(ProviderEvent::Usage(self.usage(None)));
                }
            }
            // A tool call starts: its id and name ("Streaming Messages": `tool_use` content blocks, whose
            // `input` streams as `input_json_delta` pieces of JSON text).
            "content_block_start"
                if value.pointer("/content_block/type").and_then(Value::as_str)
                    == Some("tool_use") =>
            {
                let block = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let call = self.tool_blocks.len() as u32;
                self.tool_blocks.push(ToolBlock {
                    block,
                    call,
                    has_input: false,
                });
                let text = |key: &str| {
                    value
                        .pointer(&format!("/content_block/{key}"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                };
                out.push(ProviderEvent::ToolCall(ToolCallDelta {
                    index: call,
                    id: Some(text("id").unwrap_or_else(super::tools::new_call_id)),
                    name: text("name"),
                    arguments: String::new(),
                }));
            }
            "content_block_delta"
                if value.pointer("/delta/type").and_then(Value::as_str)
                    == Some("input_json_delta") =>
            {
                let block = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                let piece = value
                    .pointer("/delta/partial_json")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if let Some(tool) = self.tool_blocks.iter_mut().find(|t| t.block == block)
                    && !piece.is_empty()
                {
                    tool.has_input = true;
                    out.push(ProviderEvent::ToolCall(ToolCallDelta {
                        index: tool.call,
                        id: None,
                        name: None,
                        arguments: piece.to_string(),
                    }));
                }
            }
            // A call without parameters streams no input: its arguments are `{}`, as OpenAI sends them.
            "content_block_stop" => {
                let block = value.get("index").and_then(Value::as_u64).unwrap_or(0);
                if let Some(tool) = self
                    .tool_blocks
                    .iter_mut()
                    .find(|t| t.block == block && !t.has_input)
                {
                    tool.has_input = true;
                    out.push(ProviderEvent::ToolCall(ToolCallDelta {
                        index: tool.call,
                        id: None,
                        name: None,
                        arguments: "{}".into(),
                    }));
                }
            }
            "content_block_delta" => {
                let delta = value.get("delta");
                if delta.and_then(|d| d.get("type")).and_then(Value::as_str) == Some("text_delta")
                    && let Some(text) = delta
                        .and_then(|d| d.get("text"))
                        .and_then(Value::as_str)
                        .filter(|t| !t.is_empty())
                {
                    out.push(ProviderEvent::TextDelta(text.to_string()));
                }
            }
            "message_delta" => {
                if let Some(usage) = value
                    .get("usage")
                    .cloned()
                    .and_then(|u| serde_json::from_value::<AnthropicUsage>(u).ok())
                {
                    self.absorb(&usage);
                    out.push(ProviderEvent::Usage(self.usage(usage.output_tokens)));
                }
                if let Some(reason) = value.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    out.push(ProviderEvent::Finish(finish_reason(reason)));
                }
            }
            "message_stop" => return Ok(Flow::Done),
            "error" => {
                let error = value.get("error").cloned().unwrap_or(Value::Null);
                let kind = error.get("type").and_then(Value::as_str).unwrap_or("error");
                return Err(DecodeError::Upstream(format!(
                    "{kind}: {}",
                    http::error_message(&error)
                )));
            }
            // ping, text and thinking block starts, and event types added later.
            _ => {}
        }
        Ok(Flow::Continue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatMessage;

    #[test]
    fn body_has_top_level_system_and_alternating_turns() {
        let request = ChatRequest {
            model: "claude-sonnet-4-5".into(),
            messages: vec![
                ChatMessage::system("Be brief"),
                ChatMessage::assistant("orphan reply"),
                ChatMessage::user("one"),
                ChatMessage::user("two"),
                ChatMessage::assistant("ok"),
                ChatMessage::user("three"),
            ],
            max_tokens: None,
            sampling: Default::default(),
            tools: Default::default(),
        };
        let body = request_body(&request);
        assert_eq!(body["system"], "Be brief");
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["stream"], true);
        assert_eq!(
            body["messages"],
            json!([{"role": "user", "content": "one\n\ntwo"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "three"}])
        );
    }

    #[test]
    fn cache_tokens_count_as_prompt_and_output_is_cumulative() {
        let mut decoder = AnthropicDecoder::default();
        let mut out = Vec::new();
        let start = r#"{"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":11,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":1}}}"#;
        decoder
            .decode(
                Frame::Sse {
                    event: "message_start",
                    data: start,
                },
                &mut out,
            )
            .expect("start");
        let delta = r#"{"type":"message_delta","delta":{"stop_reason":"max_tokens","stop_sequence":null},"usage":{"output_tokens":6}}"#;
        decoder
            .decode(
                Frame::Sse {
                    event: "message_delta",
                    data: delta,
                },
                &mut out,
            )
            .expect("delta");
        let Some(ProviderEvent::Usage(usage)) = out
            .iter()
            .rev()
            .find(|e| matches!(e, ProviderEvent::Usage(_)))
            .cloned()
        else {
            panic!("no usage")
        };
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: Some(2111),
                completion_tokens: Some(6),
                cached_tokens: Some(2000),
                reasoning_tokens: None
            }
        );
        assert_eq!(out.last(), Some(&ProviderEvent::Finish("length".into())));
    }
}
