//! The application state every handler shares, and how it is built at startup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;

use crate::auth::Authenticator;
use crate::catalog::Models;
use crate::chat::Chat;
use crate::chat::checkpoints::{Checkpointer, recover_interrupted};
use crate::cluster::Cluster;
use crate::cluster::log::RedisLogs;
use crate::cluster::reaper::Reaper;
use crate::config::{self, Config};
use crate::media::MediaStore;
use crate::personas::{self, PersonaCache};
use crate::providers::health::ProviderHealthMonitor;
use crate::store::{self, Store};
use crate::stream::{Hub, LogBounds, MemoryLogs, UnattendedPolicy};
use crate::tasks::Tasks;
use crate::usage::budget::{BudgetLimits, Budgets};

/// Shared state of every handler: cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// What [`AppState`] holds. The chat service owns the lifecycle of messages; the other fields serve the
/// routes around it (conversations, personas, usage, health).
pub struct AppInner {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub models: Arc<Models>,
    pub hub: Hub,
    /// The chat service: send, regenerate, complete, cancel.
    pub chat: Chat,
    /// Every background task; shutdown waits for them.
    pub tasks: Tasks,
    pub started_at: Instant,
    /// This process's name on its streaming rows (`server.instance_id`).
    pub instance_id: Arc<str>,
    /// Cached provider checks, shown by `/health`.
    pub provider_health: ProviderHealthMonitor,
    /// Per-user token and cost budgets.
    pub budgets: Arc<Budgets>,
    /// Personas, cached.
    pub personas: Arc<PersonaCache>,
    /// Uploaded images and voice notes: storage, limits, URL fetching, transcription.
    pub media: Arc<MediaStore>,
    /// What several instances share through Redis; `None` without `redis.url` (everything in-process).
    pub cluster: Option<Cluster>,
    /// Open WebSockets per user (`ws.max_connections_per_user`).
    pub ws_sockets: crate::api::ws::UserSockets,
}

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// A startup failure, reported plainly by `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    #[error("redis: {0}")]
    Redis(#[from] crate::cluster::RedisError),
    #[error("{0}")]
    Other(String),
}

impl AppState {
    /// Connects the database (migrating it when `database.migrate_on_start`), loads the default personas,
    /// builds the providers and loads the tokenizers.
    ///
    /// # Errors
    /// [`StartupError`] naming what failed.
    pub async fn new(config: Config) -> Result<Self, StartupError> {
        let store = store::connect(
            config.database.url.expose_secret(),
            config.database.max_connections,
        )
        .await?;
        Self::with_store(config, store).await
    }

    /// As [`AppState::new`], on an already opened store.
    ///
    /// # Errors
    /// [`StartupError`] naming what failed.
    pub async fn with_store(config: Config, store: Arc<dyn Store>) -> Result<Self, StartupError> {
        crate::telemetry::metrics::handle();
        if config.database.migrate_on_start {
            store.migrate().await?;
        }
        let defaults = personas::defaults().map_err(StartupError::Other)?;
        let inserted = store.seed_personas(&defaults).await?;
        if inserted > 0 {
            tracing::info!(inserted, "default personas loaded");
        }
        if !config.auth.hs256_enabled() {
            tracing::info!(
                "HS256 tokens are refused: no auth.jwt_secret is set, keys come from auth.jwks_url"
            );
        } else if config.auth.jwt_secret.expose_secret() == config::DEV_JWT_SECRET {
            tracing::warn!(
                "auth.jwt_secret is the built-in development secret: anyone can mint tokens; set JWT_SECRET in production"
            );
        }
        // `supabase_url` was expanded into `jwks_url`.
        if crate::auth::jwks::is_plain_http_off_loopback(&config.auth.jwks_url) {
            tracing::warn!(
                url = %config.auth.jwks_url,
                "signing keys over plain http from a host that is not loopback: anyone on the path can swap them; use https"
            );
        }
        if config.server.dev_tokens {
            tracing::warn!(
                "server.dev_tokens is on: POST /api/v1/dev/token gives anyone a token; development only"
            );
        }
        let instance_id: Arc<str> = config.instance_id().into();
        let stale_after = chrono::Duration::seconds(
            i64::try_from(config.generation.stale_after_secs).unwrap_or(i64::MAX),
        );
        let models = Arc::new(Models::from_config(&config).map_err(StartupError::Other)?);
        let labels: Vec<(String, String)> = models
            .routes()
            .map(|r| (r.alias.clone(), r.provider.name().to_string()))
            .collect();
        crate::telemetry::metrics::register(&labels);
        let recovered = recover_interrupted(
            &*store,
            &models,
            &instance_id,
            store::now() - stale_after,
            None,
        )
        .await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "replies left streaming by a stopped process are now marked interrupted"
            );
        }
        // The tokenizers (tens of MB) load on first use: a deployment whose providers report usage may never
        // need them.
        let config = Arc::new(config);
        let tasks = Tasks::new();
        let bounds = LogBounds {
            max_events: config.generation.max_events,
            max_text_bytes: config.generation.max_text_bytes,
        };
        let retention = Duration::from_secs(config.generation.retention_secs);
        let policy = UnattendedPolicy {
            on_disconnect: config.generation.disconnect_policy,
            grace: Duration::from_millis(config.generation.disconnect_grace_ms),
            max_unattended: config.generation.max_unattended,
        };
        let (hub, cluster) = if config.redis.enabled() {
            let cluster = Cluster::connect(&config.redis, Arc::clone(&instance_id)).await?;
            tracing::info!(
                prefix = %config.redis.key_prefix,
                "sharing generations, cancels and limits with other instances through redis"
            );
            let logs = RedisLogs::new(cluster.clone(), bounds, retention, tasks.clone());
            logs.start(Reaper {
                store: Arc::clone(&store),
                models: Arc::clone(&models),
                stale_after: Duration::from_secs(config.generation.stale_after_secs),
            });
            (
                Hub::new(logs, retention, policy, tasks.clone()),
                Some(cluster),
            )
        } else {
            (
                Hub::new(MemoryLogs { bounds }, retention, policy, tasks.clone()),
                None,
            )
        };
        let budgets = Budgets::shared(BudgetLimits::from_config(&config.limits), cluster.clone());
        let personas = Arc::new(PersonaCache::default());
        let media = Arc::new(MediaStore::from_config(&config).map_err(StartupError::Other)?);
        let chat = Chat::new(crate::chat::Inner {
            config: Arc::clone(&config),
            store: Arc::clone(&store),
            writes: store::Writes::new(&store, &tasks),
            models: Arc::clone(&models),
            hub: hub.clone(),
            cluster: cluster.clone(),
            budgets: Arc::clone(&budgets),
            personas: Arc::clone(&personas),
            media: Arc::clone(&media),
            tasks: tasks.clone(),
            checkpoints: Checkpointer::new(),
        });
        let auth = Authenticator::new(&config.auth);
        auth.start(&tasks).await;
        Ok(AppState(Arc::new(AppInner {
            auth,
            hub,
            chat,
            tasks,
            instance_id,
            provider_health: ProviderHealthMonitor::new(models.providers()),
            budgets,
            personas,
            media,
            cluster,
            ws_sockets: crate::api::ws::UserSockets::default(),
            models,
            store,
            config,
            started_at: Instant::now(),
        })))
    }
}
