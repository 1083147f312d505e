//! Request rate limits with tower-governor (GCRA): keyed by the authenticated user, or by the client's IP
//! address on anonymous routes. Refusals are 429 with `Retry-After` and the usual error body naming the limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use serde_json::json;
use tower_governor::GovernorError;
use tower_governor::GovernorLayer;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::KeyExtractor;

use crate::auth::AuthUser;
use crate::error::Error;

/// `user:<id>` for authenticated requests, else `ip:<address>`.
#[derive(Debug, Clone, Copy)]
pub struct UserOrIp;

impl KeyExtractor for UserOrIp {
    type Key = String;

    fn extract<T>(&self, request: &Request<T>) -> Result<Self::Key, GovernorError> {
        if let Some(user) = request.extensions().get::<AuthUser>() {
            return Ok(format!("user:{}", user.user_id));
        }
        match request.extensions().get::<ConnectInfo<SocketAddr>>() {
            Some(ConnectInfo(address)) => Ok(format!("ip:{}", address.ip())),
            None => Ok("anonymous".to_string()),
        }
    }
}

/// The layer for `per_minute` requests with bursts of `burst`; `None` when `per_minute` is 0. Also starts, on
/// `tasks`, the service that forgets idle keys, so the limiter's memory follows the active clients.
pub fn layer(
    per_minute: u32,
    burst: u32,
    tasks: &crate::tasks::Tasks,
) -> Option<
    GovernorLayer<
        UserOrIp,
        governor::middleware::NoOpMiddleware<governor::clock::QuantaInstant>,
        Body,
    >,
> {
    if per_minute == 0 {
        return None;
    }
    let period_ms = (60_000 / u64::from(per_minute)).max(1);
    let config: GovernorConfig<UserOrIp, _> = GovernorConfigBuilder::default()
        .key_extractor(UserOrIp)
        .per_millisecond(period_ms)
        .burst_size(burst.max(1))
        .finish()?;
    let config = Arc::new(config);
    let limiter = Arc::downgrade(config.limiter());
    tasks.spawn_service(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(limiter) = limiter.upgrade() else {
                break;
            };
            limiter.retain_recent();
        }
    });
    Some(GovernorLayer::new(config).error_handler(move |error| refusal(error, per_minute)))
}

/// The same limit counted across every instance sharing Redis (GCRA on Redis's clock, see
/// [`crate::cluster::limits`]), in front of this instance's own limiter. When Redis does not answer in time, the
/// request is left to this instance's limiter alone (the limit holds per instance until Redis is back).
pub async fn shared(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    request: Request<Body>,
    next: axum::middleware::Next,
) -> Response<Body> {
    let limits = &state.config.limits;
    let (Some(cluster), 1..) = (&state.cluster, limits.requests_per_minute) else {
        return next.run(request).await;
    };
    let Ok(key) = UserOrIp.extract(&request) else {
        return next.run(request).await;
    };
    let period_ms = (60_000 / u64::from(limits.requests_per_minute)).max(1);
    match cluster.rate(&key, period_ms, limits.burst).await {
        Ok(Some(wait_ms)) => refusal(
            GovernorError::TooManyRequests {
                wait_time: wait_ms.div_ceil(1000),
                headers: None,
            },
            limits.requests_per_minute,
        ),
        Ok(None) | Err(_) => next.run(request).await,
    }
}

fn refusal(error: GovernorError, per_minute: u32) -> Response<Body> {
    match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            let mut err = Error::new(
                crate::error::ErrorKind::RateLimited,
                "rate_limited",
                format!(
                    "too many requests: at most {per_minute} per minute; retry in {} s",
                    wait_time.max(1)
                ),
            )
            .with_details(json!({ "limit": "requests_per_minute", "value": per_minute }));
            err.retry_after_secs = Some(wait_time.max(1));
            err.into_response()
        }
        other => Error::internal(other).into_response(),
    }
}
