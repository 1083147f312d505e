//! The model catalog: every configured model alias resolved to its provider, upstream model name, prices,
//! context window, tokenizer, modalities and fallbacks. Providers, accounting and the chat service all read it;
//! it depends on them, never the other way round.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use crate::config::{Config, ProviderKind};
use crate::providers::{Provider, anthropic, gemini, http, mock, ollama, openai};
use crate::usage::Prices;
use crate::usage::tokens::Tokenizer;

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
    /// The alias's own sampling settings (`temperature`, `top_p`, `stop`); a request's own values win.
    pub sampling: crate::providers::Sampling,
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
                    http2: pc.http2,
                    http2_prior_knowledge: pc.http2_prior_knowledge,
                    ca_file: pc.ca_file.as_deref().map(std::path::PathBuf::from),
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
                    sampling: crate::providers::Sampling {
                        temperature: mc.temperature,
                        top_p: mc.top_p,
                        stop: mc.stop.clone(),
                        ..Default::default()
                    },
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
