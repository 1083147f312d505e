//! Typed configuration, read once at startup.
//!
//! Sources, later ones winning: built-in defaults, the TOML file (`config.toml`, or `--config PATH` /
//! `CHATGATE_CONFIG`), the usual environment names (`DATABASE_URL`, `REDIS_URL`, `JWT_SECRET`, `OPENAI_API_KEY`,
//! `ANTHROPIC_API_KEY`, `GEMINI_API_KEY`, `GROQ_API_KEY`), then `CHATGATE_SECTION__KEY` overrides
//! (for example `CHATGATE_SERVER__BIND=0.0.0.0:8000`). Every error names the key at fault.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The JWT secret used when none is configured. Fine on a laptop, never in production: startup warns.
pub const DEV_JWT_SECRET: &str = "chatgate-dev-secret-change-me";

/// A configuration that could not be loaded or failed validation; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment override could not be parsed into the typed configuration.
    #[error("{0}")]
    Parse(#[from] Box<figment::Error>),
    /// The configuration parsed but a value is not acceptable.
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    /// `--config PATH` named a file that does not exist.
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The whole configuration. See `config.toml` for every key with its meaning.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub generation: GenerationConfig,
    #[serde(default)]
    pub ws: WsConfig,
    /// Upstream providers by name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Model aliases by name: what users, personas and `[defaults]` refer to.
    #[serde(default)]
    pub models: BTreeMap<String, ModelConfig>,
    #[serde(default)]
    pub defaults: DefaultsConfig,
    #[serde(default)]
    pub titles: TitlesConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub redis: RedisConfig,
}

/// `[server]`: the listener and HTTP behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`.
    pub bind: String,
    /// Connections the kernel queues before chatgate accepts them (capped by `net.core.somaxconn`): past it, a
    /// burst of new clients is dropped (retried by their TCP a second later) or reset.
    pub listen_backlog: u32,
    /// Origins allowed by CORS. Empty: no cross-origin access. `["*"]`: any origin.
    pub cors_origins: Vec<String>,
    /// Time allowed to produce a response's headers, in seconds (streams are not cut by it).
    pub request_timeout_secs: u64,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// On SIGTERM/SIGINT, how long running generations may finish before they are cancelled, in seconds.
    pub shutdown_grace_secs: u64,
    /// Interval of the SSE keep-alive comment on an idle stream, in seconds.
    pub sse_keepalive_secs: u64,
    /// How often each provider is checked in the background for `/health`, in seconds; 0 turns checks off.
    pub provider_check_secs: u64,
    /// Serve `/metrics` without a token (for a scraper on a private network); otherwise it needs the admin role.
    pub metrics_public: bool,
    /// This process's name in the database (which streaming rows are its own); default `HOSTNAME:bind`.
    /// Keep it stable across restarts of the same instance and unique among instances.
    pub instance_id: String,
    /// Development only: `POST /api/v1/dev/token` hands a token for any user id to anyone who asks, so the
    /// web chat UI works without an identity provider. Never enable it where others can reach the server.
    pub dev_tokens: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            listen_backlog: 1024,
            cors_origins: Vec::new(),
            request_timeout_secs: 300,
            max_body_bytes: 1024 * 1024,
            shutdown_grace_secs: 30,
            sse_keepalive_secs: 15,
            instance_id: String::new(),
            provider_check_secs: 60,
            metrics_public: false,
            dev_tokens: false,
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Rotation period of the log file.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogRotation {
    Hourly,
    #[default]
    Daily,
    Never,
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter (`info`, `chatgate=debug,tower_http=info`); `RUST_LOG` wins when set.
    pub level: String,
    /// Directory for a rotating log file (`chatgate.log.<date>`); empty logs to stderr only.
    pub dir: String,
    pub rotation: LogRotation,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
            dir: String::new(),
            rotation: LogRotation::Daily,
        }
    }
}

/// `[database]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` (created when missing) or `postgres://user:pass@host/db`.
    pub url: SecretString,
    /// Connections for requests; half as many more are opened for background writes (finished replies,
    /// checkpoints, usage), so that a slow database never queues a request behind them. On SQLite no more than
    /// one a CPU core (two on a one-core machine) are opened: its queries only compute, and each connection past
    /// the cores costs CPU (see `SqliteStore::connect`).
    pub max_connections: u32,
    /// Apply pending migrations at startup.
    pub migrate_on_start: bool,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("sqlite://data/chatgate.db"),
            max_connections: 10,
            migrate_on_start: true,
        }
    }
}

/// `[redis]`: what several instances share. With no `url`, everything is in-process, as on one machine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://host:6379/0`, `rediss://` for TLS (`REDIS_URL` sets it); empty: no Redis.
    pub url: SecretString,
    /// Prefix of every key and channel, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// How long an instance's hold on its running generations (and concurrency slots) lasts without renewal,
    /// in ms; it is renewed every third of that. A dead instance's generations are closed by another within
    /// about this long.
    pub lease_ms: u64,
    /// Time allowed for one Redis command, in ms; past it the command fails and what it served degrades (see
    /// `docs/deploy.md`).
    pub command_timeout_ms: u64,
}

impl RedisConfig {
    /// Whether Redis is configured.
    pub fn enabled(&self) -> bool {
        !self.url.expose_secret().trim().is_empty()
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from(""),
            key_prefix: "chatgate".into(),
            lease_ms: 5000,
            command_timeout_ms: 1000,
        }
    }
}

/// `[auth]`: bearer JWT verification.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// HS256 secret. Defaults to a development secret, with a warning at startup; when keys come from
    /// `jwks_url` (or `supabase_url`) and the secret is left at that default, HS256 tokens are refused.
    pub jwt_secret: SecretString,
    /// A JSON Web Key Set (RFC 7517) whose public keys verify ES256/ES384, RS256/RS384/RS512, PS256/PS384/PS512
    /// and EdDSA tokens by `kid`, e.g. `https://<ref>.supabase.co/auth/v1/.well-known/jwks.json`; empty: none.
    pub jwks_url: String,
    /// A Supabase project URL, e.g. `https://<ref>.supabase.co`: shorthand for `jwks_url =
    /// {url}/auth/v1/.well-known/jwks.json`, `issuer = {url}/auth/v1`, `audience = "authenticated"` and
    /// `admin_claim = "app_metadata.role"` (each only where not set itself).
    pub supabase_url: String,
    /// Required `iss` claim; checked when non-empty.
    pub issuer: String,
    /// Required `aud` claim; checked when non-empty.
    pub audience: String,
    /// The claim that makes a user an admin when it is `"admin"` (or an array holding `"admin"`), as a dotted
    /// path into the token's claims, e.g. `app_metadata.role`. Empty: `role`, or `app_metadata.role` with
    /// `supabase_url`. Never under `user_metadata` (users edit it themselves).
    pub admin_claim: String,
    /// Accept tokens with `is_anonymous: true` (Supabase anonymous sign-ins); refused with 403 when false.
    pub allow_anonymous: bool,
    /// Clock skew tolerated on `exp`/`nbf`, in seconds.
    pub leeway_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: SecretString::from(DEV_JWT_SECRET),
            jwks_url: String::new(),
            supabase_url: String::new(),
            issuer: String::new(),
            audience: String::new(),
            admin_claim: String::new(),
            allow_anonymous: false,
            leeway_secs: 30,
        }
    }
}

impl AuthConfig {
    /// Expands `supabase_url` into the keys it stands for (those left empty), and `admin_claim`'s default.
    fn expand(&mut self) {
        let supabase = self.supabase_url.trim_end_matches('/').to_string();
        if !supabase.is_empty() {
            if self.jwks_url.is_empty() {
                self.jwks_url = format!("{supabase}/auth/v1/.well-known/jwks.json");
            }
            if self.issuer.is_empty() {
                self.issuer = format!("{supabase}/auth/v1");
            }
            if self.audience.is_empty() {
                self.audience = "authenticated".into();
            }
            if self.admin_claim.is_empty() {
                self.admin_claim = "app_metadata.role".into();
            }
        }
        if self.admin_claim.is_empty() {
            self.admin_claim = "role".into();
        }
    }

    /// Whether HS256 tokens are verified: a secret was set, or no key set is configured (the development
    /// secret then, with its warning).
    pub fn hs256_enabled(&self) -> bool {
        self.jwks_url.is_empty() || self.jwt_secret.expose_secret() != DEV_JWT_SECRET
    }
}

/// `[limits]`: input limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message `content`, in bytes (UTF-8).
    pub max_message_bytes: usize,
    /// Requests per minute per user (per IP address for anonymous routes); 0: no limit.
    pub requests_per_minute: u32,
    /// Requests a client may make in a burst above the steady rate.
    pub burst: u32,
    /// Replies one user may have running at once; 0: no limit.
    pub max_concurrent_generations: usize,
    /// Tokens (prompt + completion) per user per UTC day; 0: no budget.
    pub daily_token_budget: u64,
    /// Tokens per user per UTC month; 0: no budget.
    pub monthly_token_budget: u64,
    /// USD per user per UTC day; 0: no budget.
    pub daily_cost_budget_usd: f64,
    /// USD per user per UTC month; 0: no budget.
    pub monthly_cost_budget_usd: f64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_message_bytes: 32 * 1024,
            requests_per_minute: 600,
            burst: 60,
            max_concurrent_generations: 8,
            daily_token_budget: 0,
            monthly_token_budget: 0,
            daily_cost_budget_usd: 0.0,
            monthly_cost_budget_usd: 0.0,
        }
    }
}

/// `[generation]`: how prompts are built and generations kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationConfig {
    /// Cap on the history sent upstream, in tokens (the model's context window caps it too).
    pub max_history_tokens: u32,
    /// Cap on the number of past messages read for the prompt.
    pub max_history_messages: u32,
    /// Tokens kept free in the context window for the reply when fitting history.
    pub reserve_output_tokens: u32,
    /// How long a finished generation's event log stays in memory for re-attaching clients, in seconds.
    pub retention_secs: u64,
    /// Attempts to write the finished message and its usage before giving up.
    pub persist_attempts: u32,
    /// How often a streaming reply's text is checkpointed to the database, in ms (the row exists from the
    /// first token; a crash loses at most this much).
    pub checkpoint_interval_ms: u64,
    /// A `streaming` row whose heartbeat is older than this, in seconds, belongs to a dead process and is
    /// marked `interrupted` (rows of this instance's previous life are marked at startup at once).
    pub stale_after_secs: u64,
    /// What happens when the last subscriber of a running generation goes away: `drain` (it finishes and is
    /// saved) or `cancel` (it is stopped after `disconnect_grace_ms` unless someone re-attaches).
    pub disconnect_policy: DisconnectPolicy,
    /// Grace period of the `cancel` policy, in ms.
    pub disconnect_grace_ms: u64,
    /// Cap on running generations that nobody follows; past it, the newest unattended one is cancelled and new
    /// `Prefer: respond-async` requests get 429.
    pub max_unattended: usize,
    /// Retries of one model on a retryable failure before its first token (connect error, 429, 5xx,
    /// first-token timeout), before its fallbacks are tried.
    pub retry_attempts: u32,
    /// First retry backoff, in ms; doubled each retry, with jitter.
    pub retry_base_ms: u64,
    /// Longest wait before a retry, in ms; a provider asking for longer sends the request to the next fallback.
    pub retry_max_ms: u64,
    /// Bound of one generation's event log, in events; a reply that reaches it ends with the error
    /// `generation_too_long`, its text so far saved.
    pub max_events: usize,
    /// Bound of one generation's event log, in bytes of reply text; as `max_events`.
    pub max_text_bytes: usize,
}

/// See [`GenerationConfig::disconnect_policy`].
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DisconnectPolicy {
    #[default]
    Drain,
    Cancel,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_history_tokens: 16_000,
            max_history_messages: 200,
            reserve_output_tokens: 1024,
            retention_secs: 300,
            persist_attempts: 5,
            checkpoint_interval_ms: 1000,
            stale_after_secs: 60,
            disconnect_policy: DisconnectPolicy::Drain,
            disconnect_grace_ms: 10_000,
            max_unattended: 1000,
            retry_attempts: 2,
            retry_base_ms: 250,
            retry_max_ms: 8000,
            max_events: 100_000,
            max_text_bytes: 16 * 1024 * 1024,
        }
    }
}

/// `[ws]`: the WebSocket transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsConfig {
    /// Time to authenticate (token at upgrade, or an `auth` frame), in ms; then close 4408.
    pub auth_timeout_ms: u64,
    /// Interval of server pings, in seconds.
    pub ping_interval_secs: u64,
    /// A peer silent (no frame, no pong) this long is closed, in seconds.
    pub idle_timeout_secs: u64,
    /// Largest accepted frame, in bytes; a larger one gets an `error` frame.
    pub max_frame_bytes: usize,
    /// Generations one socket may follow at once; more get an `error` frame.
    pub max_streams: usize,
    /// Sockets one user may have open at once, across every instance sharing Redis; one more is closed with
    /// 4429. 0: no limit.
    pub max_connections_per_user: usize,
    /// Frames per second a client may send on average; past `frame_burst`, the socket closes with 4429.
    pub max_frames_per_second: u32,
    pub frame_burst: u32,
    /// Frames queued for a client before it counts as a slow reader and is cut off (it can resubscribe).
    pub send_queue: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            auth_timeout_ms: 10_000,
            ping_interval_secs: 20,
            idle_timeout_secs: 60,
            max_frame_bytes: 64 * 1024,
            max_streams: 16,
            max_connections_per_user: 32,
            max_frames_per_second: 20,
            frame_burst: 40,
            send_queue: 4096,
        }
    }
}

/// Which adapter talks to a provider.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions and every compatible server (Groq, OpenRouter, vLLM, LM Studio, Ollama's /v1).
    Openai,
    Anthropic,
    Gemini,
    Ollama,
    /// In-process deterministic replies; no network.
    Mock,
}

/// `[providers.NAME]`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Adapter; when absent it is inferred from the provider's name (`openai`, `groq`, `anthropic`, `gemini`,
    /// `ollama`, `mock`).
    pub kind: Option<ProviderKind>,
    /// API base URL, e.g. `https://api.openai.com/v1`; defaults by kind and name.
    pub base_url: Option<String>,
    /// API key; never logged.
    pub api_key: Option<SecretString>,
    /// TCP/TLS connect timeout, in ms (default 10000).
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed from request to the first streamed event, in ms (default 60000).
    pub first_token_timeout_ms: Option<u64>,
    /// Time allowed between two streamed events, in ms (default 60000).
    pub idle_timeout_ms: Option<u64>,
    /// Mock only: delay between two streamed tokens, in ms (default 20).
    pub delay_ms: Option<u64>,
    /// Offer HTTP/2 to an `https` base URL (ALPN, RFC 7301). Off by default, so each concurrent stream has an
    /// HTTP/1.1 connection of its own, as the OpenAI and Anthropic SDKs do: over HTTP/2 every stream to the
    /// provider shares one connection, and past the provider's limit of concurrent streams
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`, RFC 9113 §6.5.2; often 100–250) a new generation waits until a running
    /// one ends — the client opens no second connection. The price of HTTP/1.1: a new concurrent stream beyond
    /// the idle connections pays a connection (and TLS) handshake; connections stay open 90 s for reuse.
    #[serde(default)]
    pub http2: bool,
    /// Speak HTTP/2 to a plain-`http` base URL from the start (h2c, RFC 9113 §3.3), multiplexing streams over
    /// one connection (vLLM, a local proxy); the same limit of concurrent streams as `http2` applies.
    #[serde(default)]
    pub http2_prior_knowledge: bool,
    /// A PEM file of root certificates trusted for this provider besides the system's (a self-hosted server
    /// behind a private certificate authority). Unreadable or without a certificate: startup fails naming it.
    pub ca_file: Option<String>,
}

impl ProviderConfig {
    /// The adapter kind, explicit or inferred from `name`.
    pub fn kind_for(&self, name: &str) -> Option<ProviderKind> {
        self.kind.or(match name {
            "openai" | "groq" | "openrouter" | "vllm" | "lmstudio" => Some(ProviderKind::Openai),
            "anthropic" => Some(ProviderKind::Anthropic),
            "gemini" | "google" => Some(ProviderKind::Gemini),
            "ollama" => Some(ProviderKind::Ollama),
            "mock" => Some(ProviderKind::Mock),
            _ => None,
        })
    }

    /// The base URL, explicit or the official one for the kind and name.
    pub fn base_url_for(&self, name: &str, kind: ProviderKind) -> String {
        if let Some(url) = self.base_url.as_deref().filter(|u| !u.is_empty()) {
            return url.trim_end_matches('/').to_string();
        }
        match (kind, name) {
            (ProviderKind::Openai, "groq") => "https://api.groq.com/openai/v1",
            (ProviderKind::Openai, "openrouter") => "https://openrouter.ai/api/v1",
            (ProviderKind::Openai, _) => "https://api.openai.com/v1",
            (ProviderKind::Anthropic, _) => "https://api.anthropic.com/v1",
            (ProviderKind::Gemini, _) => "https://generativelanguage.googleapis.com/v1beta",
            (ProviderKind::Ollama, _) => "http://127.0.0.1:11434",
            (ProviderKind::Mock, _) => "",
        }
        .to_string()
    }

    /// The API key when one is set and non-empty.
    pub fn api_key(&self) -> Option<&SecretString> {
        self.api_key
            .as_ref()
            .filter(|k| !k.expose_secret().is_empty())
    }

    /// True when this provider cannot work without a key and has none: a hosted API at its official URL.
    pub fn needs_key(&self, name: &str, kind: ProviderKind) -> bool {
        if self.api_key().is_some() {
            return false;
        }
        match kind {
            ProviderKind::Anthropic | ProviderKind::Gemini => true,
            ProviderKind::Openai => {
                let url = self.base_url_for(name, kind);
                url.contains("api.openai.com")
                    || url.contains("api.groq.com")
                    || url.contains("openrouter.ai")
            }
            ProviderKind::Ollama | ProviderKind::Mock => false,
        }
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.unwrap_or(10_000))
    }
    pub fn first_token_timeout(&self) -> Duration {
        Duration::from_millis(self.first_token_timeout_ms.unwrap_or(60_000))
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.unwrap_or(60_000))
    }
}

/// `[models.ALIAS]`: a model users may pick, with its prices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name of a `[providers.NAME]` entry.
    pub provider: String,
    /// The upstream model name, e.g. `gpt-4o-mini`.
    pub model: String,
    /// USD per million prompt tokens.
    #[serde(default)]
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    #[serde(default)]
    pub output_per_mtok: f64,
    /// USD per million cached prompt tokens; defaults to `input_per_mtok`.
    #[serde(default)]
    pub cached_input_per_mtok: Option<f64>,
    /// Context window, in tokens.
    #[serde(default = "default_context_window")]
    pub context_window: u32,
    /// Upper bound on the reply, in tokens, sent upstream as `max_tokens`; none sent when absent.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Aliases tried in order when this one fails before its first token.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// What the model takes as input: `text`, `image` for models with vision, `audio` for models that hear.
    /// A message with images to a model without `image` is refused (422). Default: `["text"]`; the mock takes
    /// images.
    #[serde(default)]
    pub modalities: Option<Vec<Modality>>,
    /// Sampling temperature sent with every request to this alias (0 to 2; Anthropic 0 to 1), unless the request
    /// sets its own; none sent when absent.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Nucleus sampling (0 to 1), likewise.
    #[serde(default)]
    pub top_p: Option<f64>,
    /// Up to 4 stop sequences, likewise.
    #[serde(default)]
    pub stop: Vec<String>,
}

fn default_context_window() -> u32 {
    8192
}

/// An input a model accepts.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    Text,
    Image,
    /// Voice notes go to the model as audio (OpenAI `input_audio`: WAV and MP3; Gemini: WAV, MP3, Ogg), as
    /// well as being transcribed for the conversation's history.
    Audio,
}

/// `[media]`: uploads, where their bytes are kept, fetching by URL, and voice-note transcription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Where uploads are kept: a local directory (created when missing), or an object store URL such as
    /// `s3://bucket/prefix` (credentials from `storage_options` and the usual `AWS_*` variables). chatgate owns
    /// everything under it: the sweep deletes files it has no record of.
    pub storage: String,
    /// `object_store` options for a URL `storage`, e.g. `{ aws_endpoint = "http://minio:9000",
    /// aws_allow_http = "true" }`.
    pub storage_options: BTreeMap<String, String>,
    /// Accepted types, as sniffed from the bytes (never the client's Content-Type).
    pub allowed_types: Vec<String>,
    /// Largest image, in bytes.
    pub max_image_bytes: u64,
    /// Largest audio file, in bytes.
    pub max_audio_bytes: u64,
    /// Most media one message may carry.
    pub max_per_message: usize,
    /// Time to fetch one `media_urls` entry, in ms.
    pub fetch_timeout_ms: u64,
    /// Let `media_urls` reach private, loopback and link-local addresses (off: such URLs are refused).
    pub allow_private_urls: bool,
    /// Provider that transcribes voice notes through its OpenAI-compatible `/audio/transcriptions`; empty:
    /// the first `openai` provider, else the mock (which transcribes deterministically).
    pub transcription_provider: String,
    /// Transcription model, e.g. `whisper-1`, `gpt-4o-mini-transcribe`, `whisper-large-v3` (Groq).
    pub transcription_model: String,
    /// Files without a media record older than this, in seconds, are deleted by the sweep; 0 turns it off.
    pub sweep_after_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            storage: "data/media".into(),
            storage_options: BTreeMap::new(),
            allowed_types: [
                "image/jpeg",
                "image/png",
                "image/webp",
                "image/gif",
                "audio/mpeg",
                "audio/wav",
                "audio/ogg",
                "audio/mp4",
                "audio/webm",
            ]
            .map(String::from)
            .to_vec(),
            max_image_bytes: 10 * 1024 * 1024,
            max_audio_bytes: 25 * 1024 * 1024,
            max_per_message: 8,
            fetch_timeout_ms: 10_000,
            allow_private_urls: false,
            transcription_provider: String::new(),
            transcription_model: "whisper-1".into(),
            sweep_after_secs: 3600,
        }
    }
}

/// `[defaults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DefaultsConfig {
    /// Alias used when neither the request nor the persona names one.
    pub model: String,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            model: "default".into(),
        }
    }
}

/// `[titles]`: conversation titles written by a model after the first exchange, in the background.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TitlesConfig {
    /// Title new conversations after their first exchange (`POST .../title` works either way).
    pub enabled: bool,
    /// Model alias that writes titles; empty: the model that answered the conversation.
    pub model: String,
    /// Cap on a title's reply, in tokens.
    pub max_tokens: u32,
    /// How long a title may take, in ms, before it is given up.
    pub timeout_ms: u64,
}

impl Default for TitlesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            model: String::new(),
            max_tokens: 24,
            timeout_ms: 30_000,
        }
    }
}

/// The top-level sections, as `CHATGATE_<SECTION>__KEY` environment overrides name them.
const SECTIONS: &[&str] = &[
    "server",
    "log",
    "database",
    "auth",
    "limits",
    "generation",
    "ws",
    "providers",
    "models",
    "defaults",
    "titles",
    "media",
    "redis",
];

/// Well-known environment names and the keys they set.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("DATABASE_URL", "database.url"),
    ("REDIS_URL", "redis.url"),
    ("JWT_SECRET", "auth.jwt_secret"),
    ("SUPABASE_URL", "auth.supabase_url"),
    ("OPENAI_API_KEY", "providers.openai.api_key"),
    ("ANTHROPIC_API_KEY", "providers.anthropic.api_key"),
    ("GEMINI_API_KEY", "providers.gemini.api_key"),
    ("GROQ_API_KEY", "providers.groq.api_key"),
];

impl Config {
    /// Loads from `path` (which must exist) or from `./config.toml` when present, then the environment,
    /// and validates.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(path) if !path.exists() => return Err(ConfigError::Missing(path.to_path_buf())),
            Some(path) => figment = figment.merge(Toml::file_exact(path)),
            None if Path::new("config.toml").exists() => {
                figment = figment.merge(Toml::file_exact("config.toml"))
            }
            None => {}
        }
        Self::from_figment(figment.merge(env_provider()))
    }

    /// Parses a TOML string (no environment), and validates. Handy for tests and examples.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first bad key.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Toml::string(toml)))
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract().map_err(Box::new)?;
        config.auth.expand();
        config.validate()?;
        Ok(config)
    }

    /// Checks every cross-reference and value that serde cannot.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.bind.parse::<SocketAddr>().map_err(|e| {
            invalid(
                "server.bind",
                format!("'{}' is not host:port ({e})", self.server.bind),
            )
        })?;
        for origin in &self.server.cors_origins {
            if origin != "*"
                && (origin.parse::<axum::http::HeaderValue>().is_err() || !origin.contains("://"))
            {
                return Err(invalid(
                    "server.cors_origins",
                    format!("'{origin}' is not an origin like https://app.example.com"),
                ));
            }
        }
        let url = self.database.url.expose_secret();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        if self.auth.jwt_secret.expose_secret().is_empty() {
            return Err(invalid(
                "auth.jwt_secret",
                "is empty: set it in the config file or JWT_SECRET",
            ));
        }
        for (key, url) in [
            ("auth.supabase_url", &self.auth.supabase_url),
            ("auth.jwks_url", &self.auth.jwks_url),
        ] {
            if !url.is_empty()
                && reqwest::Url::parse(url)
                    .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                return Err(invalid(key, format!("'{url}' is not an http(s) URL")));
            }
        }
        let admin_claim = &self.auth.admin_claim;
        if admin_claim.split('.').any(str::is_empty) {
            return Err(invalid(
                "auth.admin_claim",
                format!("'{admin_claim}' is not a dotted claim path like app_metadata.role"),
            ));
        }
        if admin_claim.split('.').next() == Some("user_metadata") {
            return Err(invalid(
                "auth.admin_claim",
                "user_metadata is edited by the users themselves and never grants anything; use app_metadata",
            ));
        }
        if self.generation.checkpoint_interval_ms == 0 {
            return Err(invalid(
                "generation.checkpoint_interval_ms",
                "must be at least 1",
            ));
        }
        if self.generation.stale_after_secs * 1000 <= self.generation.checkpoint_interval_ms * 3 {
            return Err(invalid(
                "generation.stale_after_secs",
                "must be longer than three checkpoint intervals, or live replies would be marked interrupted",
            ));
        }
        if self.limits.max_message_bytes == 0 {
            return Err(invalid("limits.max_message_bytes", "must be at least 1"));
        }
        if self.redis.enabled() {
            let url = self.redis.url.expose_secret();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "redis.url",
                    "must start with redis:// or rediss:// (TLS)",
                ));
            }
            if self.redis.lease_ms < 300 {
                return Err(invalid("redis.lease_ms", "must be at least 300"));
            }
            if self.redis.command_timeout_ms == 0
                || self.redis.command_timeout_ms >= self.redis.lease_ms
            {
                return Err(invalid(
                    "redis.command_timeout_ms",
                    "must be at least 1 and shorter than redis.lease_ms",
                ));
            }
            if self.redis.key_prefix.is_empty()
                || self.redis.key_prefix.contains(char::is_whitespace)
            {
                return Err(invalid(
                    "redis.key_prefix",
                    "must be a non-empty word without spaces",
                ));
            }
        }
        for (name, provider) in &self.providers {
            if provider.kind_for(name).is_none() {
                return Err(invalid(
                    format!("providers.{name}.kind"),
                    "is required for this name: openai, anthropic, gemini, ollama or mock",
                ));
            }
            if let Some(url) = provider.base_url.as_deref().filter(|u| !u.is_empty())
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(invalid(
                    format!("providers.{name}.base_url"),
                    format!("'{url}' is not an http(s) URL"),
                ));
            }
        }
        if self.models.is_empty() {
            return Err(invalid("models", "no model alias is configured"));
        }
        for (alias, model) in &self.models {
            let key = |field: &str| format!("models.{alias}.{field}");
            if !self.providers.contains_key(&model.provider) {
                let known: Vec<_> = self.providers.keys().map(String::as_str).collect();
                return Err(invalid(
                    key("provider"),
                    format!(
                        "unknown provider '{}' (configured: {})",
                        model.provider,
                        known.join(", ")
                    ),
                ));
            }
            if model.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                return Err(invalid(key("temperature"), "must be between 0 and 2"));
            }
            if model.top_p.is_some_and(|p| !(0.0..=1.0).contains(&p)) {
                return Err(invalid(key("top_p"), "must be between 0 and 1"));
            }
            if model.stop.len() > 4 || model.stop.iter().any(String::is_empty) {
                return Err(invalid(key("stop"), "takes up to 4 non-empty sequences"));
            }
            if model.model.is_empty() {
                return Err(invalid(key("model"), "is empty"));
            }
            for (field, price) in [
                ("input_per_mtok", Some(model.input_per_mtok)),
                ("output_per_mtok", Some(model.output_per_mtok)),
                ("cached_input_per_mtok", model.cached_input_per_mtok),
            ] {
                if let Some(price) = price
                    && !(price.is_finite() && price >= 0.0)
                {
                    return Err(invalid(
                        key(field),
                        format!("{price} is not a price (USD per million tokens, >= 0)"),
                    ));
                }
            }
            if model.context_window < 16 {
                return Err(invalid(key("context_window"), "must be at least 16 tokens"));
            }
            for fallback in &model.fallbacks {
                if !self.models.contains_key(fallback) {
                    return Err(invalid(
                        key("fallbacks"),
                        format!("unknown model alias '{fallback}'"),
                    ));
                }
            }
        }
        if !self.models.contains_key(&self.defaults.model) {
            return Err(invalid(
                "defaults.model",
                format!("unknown model alias '{}'", self.defaults.model),
            ));
        }
        let provider = &self.media.transcription_provider;
        if !provider.is_empty() && !self.providers.contains_key(provider) {
            return Err(invalid(
                "media.transcription_provider",
                format!("unknown provider '{provider}'"),
            ));
        }
        if !self.titles.model.is_empty() && !self.models.contains_key(&self.titles.model) {
            return Err(invalid(
                "titles.model",
                format!("unknown model alias '{}'", self.titles.model),
            ));
        }
        Ok(())
    }

    /// `server.instance_id`, or `HOSTNAME:bind` when unset.
    pub fn instance_id(&self) -> String {
        if !self.server.instance_id.is_empty() {
            return self.server.instance_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", self.server.bind)
    }

    /// The listen address (validated by [`Config::validate`]).
    pub fn bind_addr(&self) -> SocketAddr {
        self.server
            .bind
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8000)))
    }
}

fn env_provider() -> Figment {
    let mut figment = Figment::new();
    for (var, key) in ENV_ALIASES {
        figment = figment.merge(Env::raw().only(&[var]).map(move |_| (*key).into()));
    }
    figment.merge(
        // Only `CHATGATE_<SECTION>__KEY`: other CHATGATE_* variables (CHATGATE_CONFIG, test and bench
        // settings) are not configuration.
        Env::prefixed("CHATGATE_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            SECTIONS.iter().any(|section| {
                key.strip_prefix(section)
                    .is_some_and(|rest| rest.starts_with(['.', '_']))
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [providers.mock]
        [models.default]
        provider = "mock"
        model = "mock-1"
    "#;

    #[test]
    fn minimal_config_gets_laptop_defaults() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert_eq!(config.server.bind, "127.0.0.1:8000");
        assert_eq!(
            config.database.url.expose_secret(),
            "sqlite://data/chatgate.db"
        );
        assert_eq!(
            config.providers["mock"].kind_for("mock"),
            Some(ProviderKind::Mock)
        );
        assert_eq!(config.limits.max_message_bytes, 32 * 1024);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let err =
            Config::from_toml(&format!("{MINIMAL}\n[server]\nbind = \"nowhere\"")).unwrap_err();
        assert!(err.to_string().starts_with("server.bind:"), "{err}");

        let err = Config::from_toml(&MINIMAL.replace("provider = \"mock\"", "provider = \"grok\""))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("models.default.provider: unknown provider 'grok'"),
            "{err}"
        );

        let err =
            Config::from_toml(&format!("{MINIMAL}\n[defaults]\nmodel = \"nope\"")).unwrap_err();
        assert!(err.to_string().starts_with("defaults.model:"), "{err}");

        let err = Config::from_toml(&format!("{MINIMAL}\n[server]\nbindd = \"x\"")).unwrap_err();
        assert!(err.to_string().contains("bindd"), "{err}");

        let err = Config::from_toml(&format!("{MINIMAL}\ninput_per_mtok = -1.0")).unwrap_err();
        assert!(
            err.to_string().contains("models.default.input_per_mtok"),
            "{err}"
        );
    }

    #[test]
    #[expect(
        clippy::result_large_err,
        reason = "figment's Jail closure returns figment::Error"
    )]
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "chatgate.toml",
                &format!("{MINIMAL}\n[server]\nbind = \"127.0.0.1:1\""),
            )?;
            jail.set_env("CHATGATE_SERVER__BIND", "0.0.0.0:9000");
            jail.set_env("DATABASE_URL", "postgres://db/chat");
            jail.set_env("OPENAI_API_KEY", "sk-env");
            jail.set_env("CHATGATE_TEST_POSTGRES_URL", "postgres://ignored");
            jail.set_env("CHATGATE_BENCH_POSTGRES_URL", "postgres://ignored");
            jail.set_env("CHATGATE_TEST_REDIS_URL", "redis://ignored");
            jail.set_env("REDIS_URL", "redis://cache:6379/2");
            let config =
                Config::load(Some(Path::new("chatgate.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.server.bind, "0.0.0.0:9000");
            assert_eq!(config.database.url.expose_secret(), "postgres://db/chat");
            assert_eq!(config.redis.url.expose_secret(), "redis://cache:6379/2");
            assert!(config.redis.enabled());
            let openai = &config.providers["openai"];
            assert_eq!(openai.api_key().map(|k| k.expose_secret()), Some("sk-env"));
            assert_eq!(
                openai.kind_for("openai"),
                Some(ProviderKind::Openai),
                "kind inferred from the name"
            );
            Ok(())
        });
    }

    #[test]
    fn redis_is_off_by_default_and_checked_when_set() {
        let config = Config::from_toml(MINIMAL).expect("valid");
        assert!(!config.redis.enabled(), "no Redis on a laptop");
        assert_eq!(config.redis.key_prefix, "chatgate");
        for (redis, key) in [
            ("url = \"http://cache:6379\"", "redis.url"),
            ("url = \"redis://c\"\nlease_ms = 100", "redis.lease_ms"),
            (
                "url = \"redis://c\"\nlease_ms = 1000\ncommand_timeout_ms = 1000",
                "redis.command_timeout_ms",
            ),
            (
                "url = \"redis://c\"\nkey_prefix = \"a b\"",
                "redis.key_prefix",
            ),
        ] {
            let err = Config::from_toml(&format!("{MINIMAL}\n[redis]\n{redis}")).unwrap_err();
            assert!(err.to_string().starts_with(key), "{redis}: {err}");
        }
        let config = Config::from_toml(&format!("{MINIMAL}\n[redis]\nurl = \"rediss://c:6380/1\""))
            .expect("TLS is fine");
        assert!(config.redis.enabled());
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n[auth]\njwt_secret = \"hunter2-secret\"\n[providers.openai]\napi_key = \"sk-live-123\""
        ))
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("hunter2-secret") && !debug.contains("sk-live-123"),
            "{debug}"
        );
    }

    #[test]
    fn official_hosted_apis_need_a_key_local_servers_do_not() {
        let config = Config::from_toml(&format!(
            "{MINIMAL}\n[providers.openai]\n[providers.vllm]\nbase_url = \"http://127.0.0.1:9000/v1\"\n[providers.groq]\napi_key = \"gsk\""
        ))
        .expect("valid");
        let check = |name: &str| {
            let p = &config.providers[name];
            p.needs_key(name, p.kind_for(name).expect("kind"))
        };
        assert!(check("openai"));
        assert!(!check("vllm"));
        assert!(!check("groq"));
        assert_eq!(
            config.providers["groq"].base_url_for("groq", ProviderKind::Openai),
            "https://api.groq.com/openai/v1"
        );
    }
}
