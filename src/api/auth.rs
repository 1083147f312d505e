//! Authentication over HTTP, deny by default: the bearer token (the `Authorization` header, or `access_token`
//! on the few routes whose clients cannot set a header), the short list of public routes, and the extractors
//! of the caller.

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::{AdminUser, AuthUser};
use crate::error::Error;

/// The only routes served without a token: `(method, route pattern)`.
pub const PUBLIC_ROUTES: &[(Method, &str)] = &[
    // Authenticates itself: a token at upgrade, or an `auth` frame within `ws.auth_timeout_ms`.
    (Method::GET, "/api/v1/ws"),
    (Method::GET, "/health"),
    (Method::GET, "/api/v1/personas"),
    (Method::GET, "/api/v1/personas/{id}"),
    // The API description and its docs page.
    (Method::GET, "/openapi.json"),
    (Method::GET, "/docs"),
    (Method::GET, "/docs/"),
    (Method::GET, "/docs/{*rest}"),
    // The web UI's files (the pages ask for a token themselves), and the development token endpoint (404
    // unless `server.dev_tokens`).
    (Method::GET, "/"),
    (Method::GET, "/usage"),
    (Method::GET, "/favicon.ico"),
    (Method::GET, "/static/{name}"),
    (Method::POST, "/api/v1/dev/token"),
];

/// The only routes that take the token as `?access_token=` on a GET: `EventSource` and the browser's
/// `WebSocket` cannot set an `Authorization` header. Anywhere else a token in the URL is ignored (URLs end up
/// in proxies' logs and browsers' histories), so the request is 401 without a header.
pub const QUERY_TOKEN_ROUTES: &[&str] = &["/api/v1/generations/{id}/stream", "/api/v1/ws"];

/// Reads the bearer token: the `Authorization` header, or `access_token` in the query of a GET on one of the
/// [`QUERY_TOKEN_ROUTES`].
fn bearer_token(parts: &Parts, route: &str) -> Option<String> {
    if let Some(value) = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    if parts.method == Method::GET && QUERY_TOKEN_ROUTES.contains(&route) {
        let query = parts.uri.query()?;
        return form_urlencoded::parse(query.as_bytes())
            .find_map(|(k, v)| (k == "access_token").then(|| v.into_owned()));
    }
    None
}

/// Middleware: lets [`PUBLIC_ROUTES`] through, and requires a valid token everywhere else.
pub async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let route = parts
        .extensions
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let Some(route) = route else {
        // No route matched: the fallback answers 404 and reveals nothing.
        return next.run(Request::from_parts(parts, body)).await;
    };
    let is_public = (route == "/metrics" && state.config.server.metrics_public)
        || PUBLIC_ROUTES
            .iter()
            .any(|(method, path)| *method == parts.method && *path == route)
        || (parts.method == Method::HEAD
            && PUBLIC_ROUTES
                .iter()
                .any(|(m, p)| *m == Method::GET && *p == route));
    let user = match bearer_token(&parts, &route) {
        Some(token) => match state.auth.verify(&token).await {
            Ok(user) => Some(user),
            Err(err) if !is_public => return err.into_response(),
            Err(_) => None,
        },
        None if is_public => None,
        None => {
            let in_query = parts.uri.query().is_some_and(|q| {
                form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token")
            });
            let message = if in_query {
                "a bearer token is required in the Authorization header; ?access_token= is accepted only on \
                 the stream endpoint and the WebSocket upgrade"
            } else {
                "a bearer token is required"
            };
            return Error::unauthorized(message).into_response();
        }
    };
    if let Some(user) = user {
        parts.extensions.insert(user);
    }
    next.run(Request::from_parts(parts, body)).await
}

impl<S: Send + Sync> FromRequestParts<S> for AuthUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AuthUser>()
            .cloned()
            .ok_or_else(|| Error::unauthorized("a bearer token is required"))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for AuthUser {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<AuthUser>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AdminUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !user.admin {
            return Err(Error::forbidden("this route needs the admin role"));
        }
        Ok(AdminUser(user))
    }
}
