//! HTTP routes. Each area exposes `router()`; [`app`] merges them and adds the layers every request goes
//! through: request id, tracing, CORS, body limit, timeout and authentication (deny by default).

mod auth;
mod conversations;
pub mod error;
mod generations;
mod health;
mod history;
mod media;
mod messages;
mod models;
mod openai;
mod openapi;
mod params;
mod personas;
mod ratelimit;
mod responses;
mod ui;
mod usage;
pub mod ws;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::TraceLayer;

use crate::AppState;
use crate::error::{Error, ErrorKind};
use crate::store::Id;

/// The whole application: every route and layer, with state.
pub fn app(state: AppState) -> Router {
    let config = &state.config.server;
    let timeout = Duration::from_secs(config.request_timeout_secs);
    let cors = cors_layer(&config.cors_origins);
    let routes = Router::new()
        .merge(health::router())
        .merge(personas::router())
        .merge(conversations::router())
        .merge(messages::router())
        .merge(history::router())
        .merge(generations::router())
        .merge(models::router())
        .merge(usage::router())
        .merge(ws::router())
        .merge(openai::router())
        .merge(responses::router())
        .merge(openapi::router())
        .merge(ui::router())
        .merge(media::router(state.media.max_bytes()));
    // Route layers run last-added first: authentication, then the rate limit keyed by its user.
    let limits = &state.config.limits;
    let routes = match ratelimit::layer(limits.requests_per_minute, limits.burst, &state.tasks) {
        Some(governor) => routes.route_layer(governor),
        None => routes,
    };
    // With Redis, the cluster-wide count comes first (this instance's limiter still holds if Redis is away).
    let routes = if state.cluster.is_some() && limits.requests_per_minute > 0 {
        routes.route_layer(middleware::from_fn_with_state(
            state.clone(),
            ratelimit::shared,
        ))
    } else {
        routes
    };
    let api = routes
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ))
        .fallback(|| async { Error::not_found("route") })
        .method_not_allowed_fallback(|| async {
            Error::new(
                ErrorKind::NotAllowed,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(timeout, request_timeout))
        // Outside the rest, so every failure under /v1 (auth, rate limit, body, route, timeout) is in OpenAI's shape.
        .layer(middleware::from_fn(openai::error_shape))
        .with_state(state);
    let api = match cors {
        Some(cors) => api.layer(cors),
        None => api,
    };
    let x_request_id = HeaderName::from_static("x-request-id");
    api.layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let request_id = request.extensions().get::<RequestId>().and_then(|id| id.header_value().to_str().ok());
            // The path only: the query may carry an access_token.
            tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = request_id.unwrap_or(""))
        }))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow_origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("prefer"),
                HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([HeaderName::from_static("x-request-id"), header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// Bounds the time to produce a response's head. A streamed body is not cut by it, and a generation whose
/// JSON answer timed out runs on and is saved.
async fn request_timeout(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Error::new(
            ErrorKind::Timeout,
            "request_timeout",
            "the request took longer than server.request_timeout_secs",
        )
        .into_response(),
    }
}

/// A query-string extractor whose rejections are [`Error`]s; a NUL (`%00`) in a parameter is 400 naming it
/// (see [`crate::error::find_nul`]).
#[derive(Debug, Clone, Default)]
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(query) = parts.uri.query().filter(|q| q.contains("%00"))
            && let Some((key, _)) = form_urlencoded::parse(query.as_bytes())
                .find(|(key, value)| key.contains('\0') || value.contains('\0'))
        {
            return Err(crate::error::nul_error(&key));
        }
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| AppQuery(q.0))
            .map_err(|e| Error::new(ErrorKind::Invalid, "invalid_query", e.body_text()))
    }
}

/// Parses a path id; a malformed id names nothing that exists, so it is a 404 like any unknown id.
pub fn parse_id(raw: &str, what: &'static str) -> Result<Id, Error> {
    raw.parse().map_err(|_| Error::not_found(what))
}

/// Clamps a page size to 1..=max, `default` when absent.
pub fn page_limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64, Error> {
    match limit {
        None => Ok(default),
        Some(l) if (1..=max).contains(&l) => Ok(l),
        Some(_) => Err(Error::validation(
            "limit",
            format!("must be between 1 and {max}"),
        )),
    }
}

/// Deserializes a field that may be absent (`None`), `null` (`Some(None)`) or a value.
pub fn double_option<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    serde::Deserialize::deserialize(deserializer).map(Some)
}
