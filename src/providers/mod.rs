//! Upstream LLM providers behind one streaming interface, and the registry of model aliases.
//!
//! A [`Provider`] turns a [`ChatRequest`] into a stream of [`ProviderEvent`]s: text deltas, usage and the finish
//! reason. Every failure is a typed [`ProviderError`]; a stream that ends without its provider's terminator
//! yields [`ProviderError::Interrupted`], never a clean end.

pub mod anthropic;
pub mod gemini;
pub mod health;
pub mod http;
pub mod mock;
pub mod ollama;
pub mod openai;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use serde::Serialize;

use crate::error::{Error, ErrorKind};

pub use self::tools::{Tool, ToolCall, ToolCallDelta, ToolChoice, Tools};
pub use crate::domain::{FinishReason, Role};

/// One message of a prompt. `images` go with a user message, each adapter writing them in its provider's
/// format (OpenAI `image_url` data URLs, Anthropic `image` blocks, Gemini `inlineData`, Ollama `images`);
/// `audio` likewise, only to providers that take it natively ([`Provider::native_audio`]: OpenAI
/// `input_audio` parts, Gemini `inlineData`).
///
/// Tool calling (OpenAI-compatible requests only): an assistant message may carry the `tool_calls` it made,
/// and a [`Role::Tool`] message is a call's result, `content` answering the call `tool_call_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    #[serde(skip)]
    pub images: Vec<MediaData>,
    #[serde(skip)]
    pub audio: Vec<MediaData>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// An image or audio file sent upstream: its MIME type and its bytes in standard base64, encoded once and
/// shared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaData {
    /// e.g. `image/png`, `audio/wav`.
    pub mime_type: String,
    pub base64: Arc<str>,
}

impl MediaData {
    /// `data:<mime>;base64,<data>` (RFC 2397), as OpenAI's `image_url` takes it.
    pub fn data_url(&self) -> String {
        format!("data:{};base64,{}", self.mime_type, self.base64)
    }
}

impl ChatMessage {
    /// A text message of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            images: Vec::new(),
            audio: Vec::new(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    /// The result of the tool call `call_id`.
    pub fn tool(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            tool_call_id: Some(call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
    /// The same message with the tool calls it made (an assistant message).
    pub fn with_tool_calls(mut self, calls: Vec<ToolCall>) -> Self {
        self.tool_calls = calls;
        self
    }
    /// The same message with `images`.
    pub fn with_images(mut self, images: Vec<MediaData>) -> Self {
        self.images = images;
        self
    }
    /// The same message with `audio`, for a provider that takes it natively.
    pub fn with_audio(mut self, audio: Vec<MediaData>) -> Self {
        self.audio = audio;
        self
    }
}

/// What is sent upstream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// The upstream model name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// System prompt first, then history, oldest first, ending with the user's new message.
    pub messages: Vec<ChatMessage>,
    /// Upper bound on the reply, in tokens.
    pub max_tokens: Option<u32>,
    /// Sampling settings, each sent only when set.
    pub sampling: Sampling,
    /// Functions the model may call (OpenAI-compatible requests only).
    pub tools: Tools,
}

/// OpenAI's names of the settings [`Sampling::named`] gives (Ollama's `options` use the same).
pub const OPENAI_NAMES: [&str; 6] = [
    "temperature",
    "top_p",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
];

/// Sampling settings as OpenAI's Chat Completions API names them, each sent upstream only when set and mapped
/// by each adapter to its API's names (Anthropic `stop_sequences`; Gemini `generationConfig`; Ollama `options`).
/// A setting a provider has no counterpart for is named by [`Provider::unsupported`]: refused on the model a
/// request names, left out on a fallback.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    /// 0 to 2 (Anthropic: 0 to 1).
    pub temperature: Option<f64>,
    /// Nucleus sampling, 0 to 1.
    pub top_p: Option<f64>,
    /// Up to 4 sequences that end the reply.
    pub stop: Vec<String>,
    /// Best-effort determinism (OpenAI, Gemini, Ollama).
    pub seed: Option<i64>,
    /// -2 to 2 (OpenAI, Gemini, Ollama).
    pub presence_penalty: Option<f64>,
    /// -2 to 2 (OpenAI, Gemini, Ollama).
    pub frequency_penalty: Option<f64>,
    /// OpenAI's `response_format`: `{"type": "text" | "json_object"}` or `{"type": "json_schema", "json_schema":
    /// {"name", "schema", "strict"}}` (OpenAI as is; Gemini `responseMimeType` / `responseJsonSchema`; Ollama
    /// `format`).
    pub response_format: Option<serde_json::Value>,
}

impl Sampling {
    /// These settings, each unset one taken from `defaults` (a model alias's own).
    pub fn or(mut self, defaults: &Sampling) -> Sampling {
        self.temperature = self.temperature.or(defaults.temperature);
        self.top_p = self.top_p.or(defaults.top_p);
        if self.stop.is_empty() {
            self.stop.clone_from(&defaults.stop);
        }
        self.seed = self.seed.or(defaults.seed);
        self.presence_penalty = self.presence_penalty.or(defaults.presence_penalty);
        self.frequency_penalty = self.frequency_penalty.or(defaults.frequency_penalty);
        if self.response_format.is_none() {
            self.response_format.clone_from(&defaults.response_format);
        }
        self
    }

    /// The settings that are set, by the API's own names for `[temperature, top_p, stop, seed,
    /// presence_penalty, frequency_penalty]` (in that order; [`OPENAI_NAMES`] for OpenAI's).
    pub fn named(&self, names: [&str; 6]) -> serde_json::Map<String, serde_json::Value> {
        use serde_json::json;
        let values = [
            self.temperature.map(|v| json!(v)),
            self.top_p.map(|v| json!(v)),
            (!self.stop.is_empty()).then(|| json!(self.stop)),
            self.seed.map(|v| json!(v)),
            self.presence_penalty.map(|v| json!(v)),
            self.frequency_penalty.map(|v| json!(v)),
        ];
        names
            .into_iter()
            .zip(values)
            .filter_map(|(name, value)| Some((name.to_string(), value?)))
            .collect()
    }

    /// Unsets the setting of this OpenAI name; `false` for a name that is none of them.
    pub fn clear(&mut self, name: &str) -> bool {
        match name {
            "temperature" => self.temperature = None,
            "top_p" => self.top_p = None,
            "stop" => self.stop.clear(),
            "seed" => self.seed = None,
            "presence_penalty" => self.presence_penalty = None,
            "frequency_penalty" => self.frequency_penalty = None,
            "response_format" => self.response_format = None,
            _ => return false,
        }
        true
    }

    /// The JSON schema of a `json_schema` response format, when that is what is asked.
    pub fn json_schema(&self) -> Option<&serde_json::Value> {
        let format = self.response_format.as_ref()?;
        (format["type"] == "json_schema").then(|| &format["json_schema"]["schema"])
    }

    /// Whether JSON output is asked (`json_object` or `json_schema`).
    pub fn wants_json(&self) -> bool {
        self.response_format
            .as_ref()
            .is_some_and(|f| f["type"] == "json_object" || f["type"] == "json_schema")
    }
}

/// One event of a provider's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// A piece of the reply's text, relayed as is.
    TextDelta(String),
    /// A piece of a tool call, relayed as is ([`ToolCallDelta`]).
    ToolCall(ToolCallDelta),
    /// Usage figures; later ones overlay earlier ones ([`Usage::merge`]).
    Usage(Usage),
    /// The provider's finish reason, in common words where one fits (`stop`, `length`, `content_filter`, ...).
    Finish(FinishReason),
}

/// A provider's event stream.
pub type ProviderStream = BoxStream<'static, Result<ProviderEvent, ProviderError>>;

/// An upstream LLM API.
pub trait Provider: Send + Sync + 'static {
    /// The configured name (`[providers.NAME]`).
    fn name(&self) -> &str;
    /// Starts a streaming request. The body is written from `request` here, so the stream borrows nothing; the
    /// connection is made when the stream is first polled; dropping the stream cancels the upstream request.
    fn stream(&self, request: &ChatRequest) -> ProviderStream;
    /// A cheap authenticated request whose 2xx answer means the provider is reachable and accepts the key
    /// (listing models); `None` for providers with nothing to check.
    fn check(&self) -> Option<reqwest::RequestBuilder> {
        None
    }
    /// Whether this is the built-in mock (its words are placeholders, not worth a title).
    fn is_mock(&self) -> bool {
        false
    }
    /// Whether audio of this type can go to the provider as is (for models with `audio` in their modalities);
    /// other voice notes are sent as their transcript.
    fn native_audio(&self, _content_type: &str) -> bool {
        false
    }
    /// The first setting of `sampling` this provider's API has no counterpart for (`seed`, a penalty, a
    /// response format...), by its OpenAI name; `None` when it takes them all.
    fn unsupported(&self, _sampling: &Sampling) -> Option<&'static str> {
        None
    }
}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutKind {
    Connect,
    FirstToken,
    Idle,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Connect => "connect timeout",
            TimeoutKind::FirstToken => "no first token in time",
            TimeoutKind::Idle => "idle between chunks for too long",
        })
    }
}

/// A typed upstream failure. Messages never contain API keys.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    #[error("could not reach provider '{provider}': {message}")]
    Connect { provider: String, message: String },
    #[error("provider '{provider}' is rate limiting: {message}")]
    RateLimited {
        provider: String,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error(
        "provider '{provider}' refused the credentials (HTTP {status}); check providers.{provider}.api_key"
    )]
    Auth { provider: String, status: u16 },
    #[error("provider '{provider}' answered HTTP {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
        /// The provider's retry hint (`Retry-After` on a 503, Anthropic's 529, ...; RFC 9110 §10.2.3).
        retry_after: Option<Duration>,
    },
    #[error("provider '{provider}': {kind}")]
    Timeout { provider: String, kind: TimeoutKind },
    #[error("provider '{provider}' sent a malformed stream: {message}")]
    Malformed { provider: String, message: String },
    #[error("provider '{provider}' closed the stream before its end marker")]
    Interrupted { provider: String },
    #[error("provider '{provider}' reported an error mid-stream: {message}")]
    Upstream { provider: String, message: String },
}

impl ProviderError {
    /// snake_case kind used in API error bodies and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Connect { .. } => "upstream_unreachable",
            ProviderError::RateLimited { .. } => "upstream_rate_limited",
            ProviderError::Auth { .. } => "upstream_auth",
            ProviderError::Status { .. } => "upstream_error",
            ProviderError::Timeout { .. } => "upstream_timeout",
            ProviderError::Malformed { .. } => "upstream_malformed",
            ProviderError::Interrupted { .. } => "upstream_interrupted",
            ProviderError::Upstream { .. } => "upstream_error",
        }
    }

    /// The kind of error chatgate answers with: rate limited (429) for upstream rate limits, timeout (504)
    /// for timeouts, upstream (502) otherwise.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            ProviderError::RateLimited { .. } => ErrorKind::RateLimited,
            ProviderError::Timeout { .. } => ErrorKind::Timeout,
            _ => ErrorKind::Upstream,
        }
    }

    /// The provider's retry hint, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. }
            | ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again (before any token was relayed) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect { .. } | ProviderError::RateLimited { .. } => true,
            ProviderError::Timeout { kind, .. } => *kind != TimeoutKind::Idle,
            ProviderError::Status { status, .. } => *status >= 500 || *status == 408,
            // The body ended before its end marker: before any delta was relayed, a retry is as safe as after
            // a connect error (the caller retries only then).
            ProviderError::Interrupted { .. } => true,
            _ => false,
        }
    }
}

impl From<&ProviderError> for Error {
    fn from(err: &ProviderError) -> Self {
        let mut error = Error::new(err.error_kind(), err.kind(), err.to_string());
        error.retry_after_secs = err.retry_after().map(|d| d.as_secs_f64().ceil() as u64);
        error
    }
}

/// Token usage of one generation, as reported by a provider. `None` means the provider did not say (never 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Prompt (input) tokens, cached ones included.
    pub prompt_tokens: Option<u64>,
    /// Completion (output) tokens, reasoning ones included.
    pub completion_tokens: Option<u64>,
    /// Prompt tokens read from the provider's cache.
    pub cached_tokens: Option<u64>,
    /// Completion tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Overlays `newer` on `self`: each figure `newer` knows replaces the old one (providers send cumulative
    /// usage, e.g. Anthropic's `message_delta`, Gemini's `usageMetadata`).
    pub fn merge(&mut self, newer: Usage) {
        self.prompt_tokens = newer.prompt_tokens.or(self.prompt_tokens);
        self.completion_tokens = newer.completion_tokens.or(self.completion_tokens);
        self.cached_tokens = newer.cached_tokens.or(self.cached_tokens);
        self.reasoning_tokens = newer.reasoning_tokens.or(self.reasoning_tokens);
    }
}
