//! chatgate: a streaming-first chat gateway.
//!
//! Clients (browser SSE, mobile WebSocket, dashboards) talk to chatgate; chatgate talks to LLM providers. Each
//! user message starts a *generation*: a server-owned task that relays every token to its subscribers the
//! moment it arrives and, off the hot path, saves the assistant message with its token usage and cost.
//!
//! Embedding: build an [`AppState`] with [`AppState::new`], then [`serve`] it on a listener you bind, with a
//! shutdown future you choose (tests bind port 0).

pub mod api;
pub mod auth;
pub mod config;
pub mod error;
pub mod id;
pub mod media;
pub mod personas;
pub mod providers;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod testkit;
pub mod titles;
pub mod usage;

use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::providers::Models;
use crate::providers::health::ProviderHealthMonitor;
use crate::store::Store;
use crate::stream::Hub;
use crate::stream::hub::UnattendedPolicy;
use crate::usage::budget::{BudgetLimits, Budgets};

/// Shared state of every handler: cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// What [`AppState`] holds.
pub struct AppInner {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub auth: Authenticator,
    pub models: Models,
    pub hub: Hub,
    pub started_at: Instant,
    /// This process's name on its streaming rows (`server.instance_id`).
    pub instance_id: Arc<str>,
    /// Cached provider checks, shown by `/health`.
    pub provider_health: ProviderHealthMonitor,
    /// Per-user token and cost budgets.
    pub budgets: Arc<Budgets>,
    /// Personas, cached.
    pub personas: personas::PersonaCache,
    /// Uploaded images and voice notes: storage, limits, URL fetching, transcription.
    pub media: Arc<media::MediaStore>,
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
        telemetry::metrics::handle();
        if config.database.migrate_on_start {
            store.migrate().await?;
        }
        let defaults = personas::defaults().map_err(StartupError::Other)?;
        let inserted = store.seed_personas(&defaults).await?;
        if inserted > 0 {
            tracing::info!(inserted, "default personas loaded");
        }
        if config.auth.jwt_secret.expose_secret() == config::DEV_JWT_SECRET {
            tracing::warn!(
                "auth.jwt_secret is the built-in development secret: anyone can mint tokens; set JWT_SECRET in production"
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
        let models = Models::from_config(&config).map_err(StartupError::Other)?;
        let recovered = stream::generation::recover_interrupted(
            &*store,
            &models,
            &instance_id,
            store::now() - stale_after,
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
        Ok(AppState(Arc::new(AppInner {
            auth: Authenticator::new(&config.auth),
            hub: Hub::new(
                Duration::from_secs(config.generation.retention_secs),
                UnattendedPolicy {
                    on_disconnect: config.generation.disconnect_policy,
                    grace: Duration::from_millis(config.generation.disconnect_grace_ms),
                    max_unattended: config.generation.max_unattended,
                },
            ),
            instance_id,
            provider_health: ProviderHealthMonitor::new(models.providers()),
            budgets: Budgets::new(BudgetLimits::from_config(&config.limits)),
            personas: personas::PersonaCache::default(),
            media: Arc::new(media::MediaStore::from_config(&config).map_err(StartupError::Other)?),
            models,
            store,
            config,
            started_at: Instant::now(),
        })))
    }
}

/// Serves `state` on `listener` until `shutdown` resolves, then shuts down gracefully: no new connections or
/// generations, running generations finish (up to `server.shutdown_grace_secs`, then they are cancelled and
/// saved), open streams end with their final event, and every pending write completes.
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;

    let hub = state.hub.clone();
    let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
    let sweeper = tokio::spawn(sweep_stale_replies(state.clone()));
    let media_sweeper = tokio::spawn(sweep_media(state.clone()));
    let checkpointer = tokio::spawn(write_checkpoints(state.clone()));
    let check_every = Duration::from_secs(state.config.server.provider_check_secs);
    let checker = (!check_every.is_zero())
        .then(|| tokio::spawn(state.provider_health.clone().run(check_every)));
    let app = api::app(state);
    // Tokens go out as they come: no Nagle delay on client sockets.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "could not set TCP_NODELAY");
        }
    });
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel();
    let signal_hub = hub.clone();
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections or generations");
        let drained = tokio::spawn(async move { signal_hub.shutdown(grace).await });
        let _ = drained_tx.send(drained);
    })
    .await?;
    match drained_rx.await {
        Ok(drained) => {
            let _ = drained.await;
        }
        Err(_) => hub.shutdown(grace).await,
    }
    sweeper.abort();
    media_sweeper.abort();
    checkpointer.abort();
    if let Some(checker) = checker {
        checker.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// Writes the streaming replies' checkpoints, one batch every `generation.checkpoint_interval_ms`.
async fn write_checkpoints(state: AppState) {
    let interval = Duration::from_millis(state.config.generation.checkpoint_interval_ms);
    let heartbeat = Duration::from_secs(state.config.generation.stale_after_secs) / 3;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        state
            .hub
            .write_checkpoints(&*state.store, &state.instance_id, heartbeat)
            .await;
        state.hub.sweep_expired();
    }
}

/// Deletes media files without a record (their conversation was deleted), every quarter of
/// `media.sweep_after_secs` (at least a minute).
async fn sweep_media(state: AppState) {
    let after = Duration::from_secs(state.config.media.sweep_after_secs);
    if after.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval((after / 4).max(Duration::from_secs(60)));
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.media.sweep(&*state.store, after).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "media files without a record deleted"),
            Err(err) => tracing::warn!(error = %err, "sweeping media files failed"),
        }
    }
}

/// Marks replies whose process died (no heartbeat for `generation.stale_after_secs`) as interrupted, every
/// half of that period: instances sharing a database clean up after each other.
async fn sweep_stale_replies(state: AppState) {
    let stale_after = Duration::from_secs(state.config.generation.stale_after_secs);
    let mut tick = tokio::time::interval(stale_after / 2);
    tick.tick().await;
    loop {
        tick.tick().await;
        let stale_before =
            store::now() - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::MAX);
        match stream::generation::recover_interrupted(
            &*state.store,
            &state.models,
            "",
            stale_before,
        )
        .await
        {
            Ok(0) => {}
            Ok(recovered) => tracing::warn!(
                recovered,
                "replies of a stopped instance are now marked interrupted"
            ),
            Err(err) => tracing::warn!(error = %err, "sweeping stale replies failed"),
        }
    }
}
