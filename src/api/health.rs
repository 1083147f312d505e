//! `GET /health`: public liveness and readiness.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ErrorBody;
use crate::AppState;
use crate::auth::AuthUser;
use crate::auth::jwks::JwksStatus;
use crate::error::Error;
use crate::providers::health::ProviderHealth;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

/// `GET /metrics`: Prometheus text exposition. Admins only, unless `server.metrics_public`.
#[utoipa::path(
    get,
    operation_id = "health_metrics",
    path = "/metrics",
    tag = "health",
    responses(
        (status = 200, description = "Prometheus text exposition format", content_type = "text/plain"),
        (status = 401, description = "no token (unless `server.metrics_public`)", body = ErrorBody),
        (status = 403, description = "not an admin (unless `server.metrics_public`)", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<AppState>, user: Option<AuthUser>) -> Result<Response, Error> {
    if !state.config.server.metrics_public && !user.is_some_and(|u| u.admin) {
        return Err(Error::forbidden(
            "/metrics needs the admin role (or server.metrics_public = true)",
        ));
    }
    let mut response = crate::telemetry::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `/health`'s body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` (with 503) when the database does not answer.
    pub status: &'static str,
    /// The gateway's version (Cargo.toml).
    pub version: &'static str,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    pub database: DatabaseHealth,
    /// Each provider's last background check, by provider name.
    pub providers: BTreeMap<String, ProviderHealth>,
    pub generations: GenerationsHealth,
    /// Present with `auth.jwks_url` (or `auth.supabase_url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthHealth>,
    /// Present with `redis.url`. A Redis outage does not make the instance unavailable (its own generations
    /// keep streaming): `status` stays `ok` and this says what is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::cluster::RedisHealth>,
}

/// The database check: one round trip, bounded at 2 s.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DatabaseHealth {
    pub ok: bool,
    /// Round trip in ms (two decimals).
    pub latency_ms: f64,
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
}

/// The generations this instance runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GenerationsHealth {
    pub running: usize,
}

/// The JWKS key set's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuthHealth {
    pub jwks: JwksStatus,
}

/// `{status, version: {ok, latency_ms, backend}, providers: {name: {ok, checked_at}}}`, and with
/// `auth.jwks_url` `auth: {jwks: {ok, stale, keys, age_secs, fetched_at, max_age_secs, error}}` (stale keys keep
/// working; only a key rotated in since is refused); 503 when the database does not answer within 2 s.
#[utoipa::path(
    get,
    operation_id = "health",
    path = "/health",
    tag = "health",
    security(()),
    responses(
        (status = 200, description = "the gateway and its database answer", body = Health),
        (status = 503, description = "the database is down (`status: \"unavailable\"`)", body = Health),
    )
)]
async fn health(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let started = Instant::now();
    let db = tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let db_ok = matches!(db, Ok(Ok(())));
    if !db_ok {
        let cause = match db {
            Ok(Err(e)) => e.to_string(),
            _ => "timed out after 2 s".into(),
        };
        tracing::warn!(%cause, "health: database check failed");
    }
    let providers = state.provider_health.snapshot();
    let redis = match &state.cluster {
        Some(cluster) => Some(cluster.health().await),
        None => None,
    };
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        status: if db_ok { "ok" } else { "unavailable" },
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started_at.elapsed().as_secs(),
        database: DatabaseHealth {
            ok: db_ok,
            latency_ms: (latency_ms * 100.0).round() / 100.0,
            backend: state.store.backend(),
        },
        providers,
        generations: GenerationsHealth {
            running: state.hub.running(),
        },
        auth: state.auth.jwks_status().map(|jwks| AuthHealth { jwks }),
        redis,
    };
    (status, Json(body))
}
