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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use futures::stream::BoxStream;
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::config::{Config, ProviderKind};
use crate::usage::tokens::Tokenizer;
use crate::usage::{Prices, Usage};

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One message of a prompt. `images` go with a user message, each adapter writing them in its provider's
/// format (OpenAI `image_url` data URLs, Anthropic `image` blocks, Gemini `inlineData`, Ollama `images`);
/// `audio` likewise, only to providers that take it natively ([`Provider::native_audio`]: OpenAI
/// `input_audio` parts, Gemini `inlineData`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    #[serde(skip)]
    pub images: Vec<MediaData>,
    #[serde(skip)]
    pub audio: Vec<MediaData>,
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
    pub fn system(content: impl Into<String>) -> Self {
        Self {
            role: Role::System,
            content: content.into(),
            images: Vec::new(),
            audio: Vec::new(),
        }
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: content.into(),
            images: Vec::new(),
            audio: Vec::new(),
        }
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: content.into(),
            images: Vec::new(),
            audio: Vec::new(),
        }
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
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The upstream model name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// System prompt first, then history, oldest first, ending with the user's new message.
    pub messages: Vec<ChatMessage>,
    /// Upper bound on the reply, in tokens.
    pub max_tokens: Option<u32>,
}

/// One event of a provider's stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ProviderEvent {
    /// A piece of the reply's text, relayed as is.
    TextDelta(String),
    /// Usage figures; later ones overlay earlier ones ([`Usage::merge`]).
    Usage(Usage),
    /// The provider's finish reason (`stop`, `length`, `content_filter`, ...).
    Finish(String),
}

/// A provider's event stream.
pub type ProviderStream = BoxStream<'static, Result<ProviderEvent, ProviderError>>;

/// An upstream LLM API.
pub trait Provider: Send + Sync + 'static {
    /// The configured name (`[providers.NAME]`).
    fn name(&self) -> &str;
    /// Starts a streaming request. The connection is made when the stream is first polled; dropping the stream
    /// cancels the upstream request.
    fn stream(&self, request: ChatRequest) -> ProviderStream;
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

    /// The status chatgate answers with: 429 for upstream rate limits, 504 for timeouts, 502 otherwise.
    pub fn http_status(&self) -> StatusCode {
        match self {
            ProviderError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProviderError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// The provider's retry hint, when it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether trying again (before any token was relayed) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Connect { .. } | ProviderError::RateLimited { .. } => true,
            ProviderError::Timeout { kind, .. } => *kind != TimeoutKind::Idle,
            ProviderError::Status { status, .. } => *status >= 500 || *status == 408,
            _ => false,
        }
    }
}

/// A model alias resolved against its provider.
#[derive(Clone)]
pub struct ModelRoute {
    /// The alias users pick.
    pub alias: String,
    pub provider: Arc<dyn Provider>,
    /// The upstream model name.
    pub upstream_model: String,
    pub prices: Prices,
    /// Context window, in tokens.
    pub context_window: u32,
    pub max_output_tokens: Option<u32>,
    pub tokenizer: Tokenizer,
    /// Aliases tried in order when this one fails before its first token.
    pub fallbacks: Vec<String>,
    /// Whether the model takes images (`modalities` has `image`; the mock takes them all).
    pub accepts_images: bool,
    /// Whether the model takes audio natively (`modalities` has `audio`): voice notes its provider can carry go
    /// as audio, besides their stored transcript.
    pub accepts_audio: bool,
}

impl std::fmt::Debug for ModelRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelRoute")
            .field("alias", &self.alias)
            .field("provider", &self.provider.name())
            .field("upstream_model", &self.upstream_model)
            .finish_non_exhaustive()
    }
}

/// Every configured model alias, resolved.
#[derive(Debug, Clone)]
pub struct Models {
    routes: BTreeMap<String, ModelRoute>,
    default_alias: String,
}

impl Models {
    /// Builds the providers and routes of `config`. A hosted provider with no API key is replaced by the
    /// built-in mock (with a warning), so that a fresh checkout serves replies without any key.
    ///
    /// # Errors
    /// A message naming the provider whose HTTP client could not be built, or whose adapter is not available.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let mut providers: BTreeMap<&str, Arc<dyn Provider>> = BTreeMap::new();
        let mut mocked: Vec<&str> = Vec::new();
        let mut mocks: Vec<&str> = Vec::new();
        for (name, pc) in &config.providers {
            let kind = pc
                .kind_for(name)
                .ok_or_else(|| format!("providers.{name}.kind is missing"))?;
            let provider: Arc<dyn Provider> = if pc.needs_key(name, kind) {
                tracing::warn!(
                    provider = %name,
                    "provider '{name}' has no API key: its models are served by the built-in mock provider, free of \
                     charge (set providers.{name}.api_key or the usual environment variable for real replies)"
                );
                mocked.push(name.as_str());
                Arc::new(mock::MockProvider::new(
                    "mock",
                    Duration::from_millis(pc.delay_ms.unwrap_or(20)),
                ))
            } else {
                let base_url = pc.base_url_for(name, kind);
                let key = pc.api_key().map(|k| k.expose_secret().to_string());
                let timeouts = http::HttpOptions {
                    connect: pc.connect_timeout(),
                    first_token: pc.first_token_timeout(),
                    idle: pc.idle_timeout(),
                    http2_prior_knowledge: pc.http2_prior_knowledge,
                };
                if kind == ProviderKind::Mock {
                    mocks.push(name.as_str());
                }
                match kind {
                    ProviderKind::Mock => Arc::new(mock::MockProvider::new(
                        name,
                        Duration::from_millis(pc.delay_ms.unwrap_or(20)),
                    )),
                    ProviderKind::Openai => {
                        Arc::new(openai::OpenAiProvider::new(name, &base_url, key, timeouts)?)
                    }
                    ProviderKind::Anthropic => Arc::new(anthropic::AnthropicProvider::new(
                        name, &base_url, key, timeouts,
                    )?),
                    ProviderKind::Gemini => {
                        Arc::new(gemini::GeminiProvider::new(name, &base_url, key, timeouts)?)
                    }
                    ProviderKind::Ollama => {
                        Arc::new(ollama::OllamaProvider::new(name, &base_url, key, timeouts)?)
                    }
                }
            };
            providers.insert(name.as_str(), provider);
        }
        let mut routes = BTreeMap::new();
        for (alias, mc) in &config.models {
            let provider = providers
                .get(mc.provider.as_str())
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "models.{alias}.provider: unknown provider '{}'",
                        mc.provider
                    )
                })?;
            routes.insert(
                alias.clone(),
                ModelRoute {
                    alias: alias.clone(),
                    provider,
                    upstream_model: mc.model.clone(),
                    // A stand-in mock costs nothing; billing it at the real model's prices would be wrong.
                    prices: if mocked.contains(&mc.provider.as_str()) {
                        Prices::default()
                    } else {
                        Prices::of(mc)
                    },
                    context_window: mc.context_window,
                    max_output_tokens: mc.max_output_tokens,
                    tokenizer: Tokenizer::for_model(&mc.model),
                    fallbacks: mc.fallbacks.clone(),
                    accepts_audio: mc
                        .modalities
                        .as_ref()
                        .is_some_and(|m| m.contains(&crate::config::Modality::Audio)),
                    accepts_images: match &mc.modalities {
                        Some(modalities) => modalities.contains(&crate::config::Modality::Image),
                        None => {
                            mocked.contains(&mc.provider.as_str())
                                || mocks.contains(&mc.provider.as_str())
                        }
                    },
                },
            );
        }
        Ok(Self {
            routes,
            default_alias: config.defaults.model.clone(),
        })
    }

    /// The route of an alias.
    pub fn get(&self, alias: &str) -> Option<&ModelRoute> {
        self.routes.get(alias)
    }

    /// The fallback routes of an alias, in order.
    pub fn fallbacks(&self, alias: &str) -> Vec<ModelRoute> {
        self.get(alias)
            .map(|route| {
                route
                    .fallbacks
                    .iter()
                    .filter_map(|f| self.get(f).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The alias used when neither request nor persona names one.
    pub fn default_alias(&self) -> &str {
        &self.default_alias
    }

    /// Every distinct provider behind the aliases.
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        let mut seen = std::collections::BTreeSet::new();
        self.routes
            .values()
            .filter(|route| seen.insert(route.provider.name().to_string()))
            .map(|route| Arc::clone(&route.provider))
            .collect()
    }

    /// Every route, sorted by alias.
    pub fn routes(&self) -> impl Iterator<Item = &ModelRoute> {
        self.routes.values()
    }

    /// Every alias, sorted.
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.routes.keys().map(String::as_str)
    }
}
