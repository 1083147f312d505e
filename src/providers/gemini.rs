//! Google Gemini `streamGenerateContent?alt=sse` adapter.
//!
//! Wire format (Gemini API reference, "Generate content · streaming"; vercel/ai recorded chunks): SSE
//! `data: <GenerateContentResponse>` events (CRLF framing seen on the wire) and **no terminator**: the body just
//! closes. `usageMetadata` is cumulative on every chunk (`promptTokenCount`, `candidatesTokenCount`,
//! `thoughtsTokenCount`, `cachedContentTokenCount`). Old models put `finishReason: STOP` on every chunk, so a
//! finish reason is not an end: the stream is complete when the body closes after one, and interrupted when it
//! closes before. Errors inside the 200 stream arrive as `{"error": {...}}`.

use serde::Deserialize;
use serde_json::{Value, json};

use super::http::{self, DecodeError, Decoder, Flow, Frame, Framing, HttpOptions, Upstream};
use super::{
    ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, Role, ToolCallDelta,
    ToolChoice, Tools, Usage, tools,
};

/// The Gemini adapter.
pub struct GeminiProvider {
    upstream: Upstream,
}

impl GeminiProvider {
    /// `base_url` ends before `/models`, e.g. `https://generativelanguage.googleapis.com/v1beta`.
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
            Some(key) => builder.header("x-goog-api-key", key),
            None => builder,
        }
    }
}

/// The `generateContent` body: `systemInstruction`, `contents` with roles `user`/`model`. An assistant
/// message's tool calls are `functionCall` parts (with the `thoughtSignature` Gemini 3 requires back, carried
/// in the call's id: [`call_id`]); tool results are `functionResponse` parts of one user turn per run of
/// results ("Function calling with the Gemini API").
pub fn request_body(request: &ChatRequest) -> Value {
    let system: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| json!({ "text": m.content }))
        .collect();
    let mut contents: Vec<Value> = Vec::new();
    let mut previous_was_result = false;
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        if let Some(id) = &m.tool_call_id {
            let name = tools::call_name(&request.messages, id).unwrap_or("");
            let part = json!({ "functionResponse": { "name": name, "response": function_response(&m.content) } });
            match contents.last_mut() {
                Some(turn) if previous_was_result => {
                    if let Some(parts) = turn["parts"].as_array_mut() {
                        parts.push(part);
                    }
                }
                _ => contents.push(json!({ "role": "user", "parts": [part] })),
            }
            previous_was_result = true;
            continue;
        }
        previous_was_result = false;
        let role = if m.role == Role::Assistant {
            "model"
        } else {
            "user"
        };
        let mut parts = Vec::with_capacity(m.images.len() + m.audio.len() + m.tool_calls.len() + 1);
        if !m.content.is_empty()
            || (m.images.is_empty() && m.audio.is_empty() && m.tool_calls.is_empty())
        {
            parts.push(json!({ "text": m.content }));
        }
        for file in m.images.iter().chain(&m.audio) {
            // Gemini names MP3 `audio/mp3` ("Audio understanding": supported formats).
            let mime_type = match file.mime_type.as_str() {
                "audio/mpeg" => "audio/mp3",
                other => other,
            };
            parts.push(json!({ "inlineData": { "mimeType": mime_type, "data": &*file.base64 } }));
        }
        for call in &m.tool_calls {
            let mut part = json!({ "functionCall": { "name": call.name, "args": tools::arguments_object(&call.arguments) } });
            if let Some((_, signature)) = call.id.split_once(SIGNATURE_SEPARATOR) {
                part["thoughtSignature"] = json!(signature);
            }
            parts.push(part);
        }
        contents.push(json!({ "role": role, "parts": parts }));
    }
    let mut body = json!({ "contents": contents });
    if !system.is_empty() {
        body["systemInstruction"] = json!({ "parts": system });
    }
    // generationConfig (ai.google.dev/api/generate-content#generationconfig).
    let sampling = &request.sampling;
    let mut config = sampling.named([
        "temperature",
        "topP",
        "stopSequences",
        "seed",
        "presencePenalty",
        "frequencyPenalty",
    ]);
    if let Some(max_tokens) = request.max_tokens {
        config.insert("maxOutputTokens".into(), json!(max_tokens));
    }
    if sampling.wants_json() {
        config.insert("responseMimeType".into(), json!("application/json"));
    }
    if let Some(schema) = sampling.json_schema() {
        config.insert("responseJsonSchema".into(), schema.clone());
    }
    if !config.is_empty() {
        body["generationConfig"] = Value::Object(config);
    }
    add_tools(&mut body, &request.tools);
    body
}

/// Between a call id and the `thoughtSignature` it carries back to Gemini.
const SIGNATURE_SEPARATOR: &str = "~ts~";

/// The id of a streamed `functionCall`: its own `id` when it has one (else a fresh `call_…`), followed by its
/// `thoughtSignature`, which Gemini 3 wants back on the call in the follow-up (an OpenAI client keeps ids, not
/// extra fields).
fn call_id(part: &Value) -> String {
    let id = part
        .pointer("/functionCall/id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map_or_else(tools::new_call_id, str::to_string);
    match part.get("thoughtSignature").and_then(Value::as_str) {
        Some(signature) => format!("{id}{SIGNATURE_SEPARATOR}{signature}"),
        None => id,
    }
}

/// A tool result as `functionResponse.response`, which must be an object: a result that is a JSON object as
/// is, anything else as `{"result": …}` (its JSON value, else its text).
fn function_response(content: &str) -> Value {
    match serde_json::from_str::<Value>(content) {
        Ok(object @ Value::Object(_)) => object,
        Ok(value) => json!({ "result": value }),
        Err(_) => json!({ "result": content }),
    }
}

/// `tools: [{functionDeclarations: [{name, description, parametersJsonSchema}]}]` and
/// `toolConfig.functionCallingConfig` (`AUTO`, `NONE`, `ANY`, `ANY` with `allowedFunctionNames`).
fn add_tools(body: &mut Value, tools: &Tools) {
    if tools.is_empty() {
        return;
    }
    let declarations: Vec<Value> = tools
        .definitions
        .iter()
        .map(|tool| {
            let mut declaration =
                json!({ "name": tool.name, "parametersJsonSchema": tool.parameters });
            if let Some(description) = &tool.description {
                declaration["description"] = json!(description);
            }
            declaration
        })
        .collect();
    body["tools"] = json!([{ "functionDeclarations": declarations }]);
    let config = match &tools.choice {
        None => return,
        Some(ToolChoice::Auto) => json!({ "mode": "AUTO" }),
        Some(ToolChoice::None) => json!({ "mode": "NONE" }),
        Some(ToolChoice::Required) => json!({ "mode": "ANY" }),
        Some(ToolChoice::Function(name)) => {
            json!({ "mode": "ANY", "allowedFunctionNames": [name] })
        }
    };
    body["toolConfig"] = json!({ "functionCallingConfig": config });
}

impl Provider for GeminiProvider {
    fn name(&self) -> &str {
        &self.upstream.name
    }

    fn native_audio(&self, content_type: &str) -> bool {
        matches!(content_type, "audio/wav" | "audio/mpeg" | "audio/ogg")
    }

    fn stream(&self, request: &ChatRequest) -> ProviderStream {
        let url = format!(
            "{}/models/{}:streamGenerateContent?alt=sse",
            self.upstream.base_url, request.model
        );
        let builder = self.authorized(self.upstream.client.post(url).json(&request_body(request)));
        http::drive(
            self.upstream.name.clone(),
            self.upstream.options.clone(),
            builder,
            Framing::Sse,
            GeminiDecoder::default(),
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

/// Decodes `GenerateContentResponse` chunks; remembers the last finish reason for the end of the body.
#[derive(Debug, Default)]
pub struct GeminiDecoder {
    finish_reason: Option<FinishReason>,
    /// Tool calls so far: the next one's index.
    tool_calls: u32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    prompt_token_count: Option<u64>,
    candidates_token_count: Option<u64>,
    thoughts_token_count: Option<u64>,
    cached_content_token_count: Option<u64>,
}

impl From<UsageMetadata> for Usage {
    /// Thinking tokens are billed as output: they count in the completion, and apart as reasoning.
    fn from(u: UsageMetadata) -> Self {
        let thoughts = u.thoughts_token_count.unwrap_or(0);
        Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u
                .candidates_token_count
                .map(|c| c + thoughts)
                .or(u.thoughts_token_count),
            cached_tokens: u.cached_content_token_count,
            reasoning_tokens: u.thoughts_token_count,
        }
    }
}

/// Gemini's `finishReason` (`Candidate.FinishReason`) in common words.
fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::from(other.to_ascii_lowercase().as_str()),
    }
}

impl Decoder for GeminiDecoder {
    fn decode(
        &mut self,
        frame: Frame<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<Flow, DecodeError> {
        let Frame::Sse { data, .. } = frame else {
            return Err(DecodeError::Malformed("expected server-sent events".into()));
        };
        if data.trim().is_empty() {
            return Ok(Flow::Continue);
        }
        let value: Value = http::parse_frame(data).map_err(|e| {
            DecodeError::Malformed(format!("{e} in chunk {}", http::truncate(data, 200)))
        })?;
        if let Some(error) = value.get("error") {
            let status = error
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("error");
            return Err(DecodeError::Upstream(format!(
                "{status}: {}",
                http::error_message(error)
            )));
        }
        if let Some(candidate) = value.get("candidates").and_then(|c| c.get(0)) {
            let parts = candidate
                .pointer("/content/parts")
                .and_then(Value::as_array);
            for part in parts.into_iter().flatten() {
                let is_thought = part
                    .get("thought")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                if let Some(text) = part
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty() && !is_thought)
                {
                    out.push(ProviderEvent::TextDelta(text.to_string()));
                }
                // A call comes whole, in one part.
                if let Some(call) = part.get("functionCall") {
                    let name = call.get("name").and_then(Value::as_str).unwrap_or("");
                    let args = call.get("args").cloned().unwrap_or_else(|| json!({}));
                    out.push(ProviderEvent::ToolCall(ToolCallDelta::whole(
                        self.tool_calls,
                        call_id(part),
                        name.to_string(),
                        args.to_string(),
                    )));
                    self.tool_calls += 1;
                }
            }
            if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
                self.finish_reason = Some(finish_reason(reason));
            }
        }
        if let Some(usage) = value
            .get("usageMetadata")
            .cloned()
            .and_then(|u| serde_json::from_value::<UsageMetadata>(u).ok())
        {
            out.push(ProviderEvent::Usage(usage.into()));
        }
        Ok(Flow::Continue)
    }

    fn end_of_body(&mut self, out: &mut Vec<ProviderEvent>) -> bool {
        match self.finish_reason.take() {
            Some(reason) => {
                out.push(ProviderEvent::Finish(reason));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ChatMessage;

    #[test]
    fn body_uses_system_instruction_and_model_role() {
        let request = ChatRequest {
            model: "gemini-2.5-flash".into(),
            messages: vec![
                ChatMessage::system("Be brief"),
                ChatMessage::user("hi"),
                ChatMessage::assistant("yo"),
                ChatMessage::user("?"),
            ],
            max_tokens: Some(1024),
            sampling: Default::default(),
            tools: Default::default(),
        };
        let body = request_body(&request);
        assert_eq!(
            body["systemInstruction"],
            json!({"parts": [{"text": "Be brief"}]})
        );
        assert_eq!(
            body["contents"][1],
            json!({"role": "model", "parts": [{"text": "yo"}]})
        );
        assert_eq!(body["generationConfig"]["maxOutputTokens"], 1024);
    }

    #[test]
    fn finish_reason_is_not_a_terminator() {
        let mut decoder = GeminiDecoder::default();
        let mut out = Vec::new();
        let chunk = r#"{"candidates":[{"content":{"parts":[{"text":"Hi"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":5,"totalTokenCount":199,"thoughtsTokenCount":185}}"#;
        assert_eq!(
            decoder.decode(
                Frame::Sse {
                    event: "",
                    data: chunk
                },
                &mut out
            ),
            Ok(Flow::Continue)
        );
        assert_eq!(out[0], ProviderEvent::TextDelta("Hi".into()));
        assert_eq!(
            out[1],
            ProviderEvent::Usage(Usage {
                prompt_tokens: Some(9),
                completion_tokens: Some(190),
                cached_tokens: None,
                reasoning_tokens: Some(185)
            })
        );
        out.clear();
        assert!(decoder.end_of_body(&mut out));
        assert_eq!(out, [ProviderEvent::Finish("stop".into())]);
        assert!(
            !GeminiDecoder::default().end_of_body(&mut out),
            "no finish reason: interrupted"
        );
    }
}
