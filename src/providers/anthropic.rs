//! Anthropic Messages streaming adapter.
//!
//! Wire format (Anthropic API reference, "Streaming Messages"; anthropic-sdk-python's recorded fixtures):
//! SSE with `event:` types `message_start` (usage: `input_tokens`, `cache_creation_input_tokens`,
//! `cache_read_input_tokens`, a placeholder `output_tokens`), `content_block_start`, `content_block_delta`
//! (`text_delta`), `content_block_stop`, `message_delta` (stop reason and *cumulative* usage), `ping`,
//! `message_stop` (the terminator) and `error` (inside the 200 stream).

use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, DecodeError, Decoder, Flow, Frame, Framing, HttpOptions, Upstream};
use super::{
    ChatRequest, FinishReason, MediaData, Provider, ProviderEvent, ProviderStream, Role, Usage,
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
/// the API wants user and assistant turns to alternate, starting with the user.
pub fn request_body(request: &ChatRequest) -> Value {
    let system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    let mut messages: Vec<(Role, String, Vec<&MediaData>)> = Vec::new();
    for message in request.messages.iter().filter(|m| m.role != Role::System) {
        match messages.last_mut() {
            Some((role, content, images)) if *role == message.role => {
                content.push_str("\n\n");
                content.push_str(&message.content);
                images.extend(&message.images);
            }
            _ => messages.push((
                message.role,
                message.content.clone(),
                message.images.iter().collect(),
            )),
        }
    }
    if messages
        .first()
        .is_some_and(|(role, _, _)| *role == Role::Assistant)
    {
        messages.remove(0);
    }
    // With images, content is a list of blocks: the images first (as Anthropic's vision guide advises), then
    // the text.
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, content, images)| {
            if images.is_empty() {
                return json!({ "role": role, "content": content });
            }
            let mut blocks: Vec<Value> = images
                .iter()
                .map(|i| json!({ "type": "image", "source": { "type": "base64", "media_type": i.mime_type, "data": &*i.base64 } }))
                .collect();
            if !content.trim().is_empty() {
                blocks.push(json!({ "type": "text", "text": content }));
            }
            json!({ "role": role, "content": blocks })
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
    body
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

    fn stream(&self, request: ChatRequest) -> ProviderStream {
        let builder = self.authorized(
            self.upstream
                .client
                .post(format!("{}/messages", self.upstream.base_url))
                .json(&request_body(&request)),
        );
        http::drive(
            self.upstream.name.clone(),
            self.upstream.options,
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
            // ping, content_block_start, content_block_stop, and event types added later.
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
