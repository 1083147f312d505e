//! The OpenAPI 3.1 document, generated from the handlers' `#[utoipa::path]` annotations and the models'
//! `ToSchema` derives, served at `/openapi.json`; and Swagger UI at `/docs`, served from files compiled into the
//! binary (no CDN: it works offline).

use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "JWT: HS256 signed with auth.jwt_secret, or ES256/RS256/EdDSA (and the other RSA and \
                         EC algorithms) signed by a key of auth.jwks_url chosen by `kid` (Supabase's signing keys \
                         with auth.supabase_url); `exp` required, `nbf` checked, `iss`/`aud` required when \
                         configured",
                    ))
                    .build(),
            ),
        );
    }
}

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chatgate",
        description = "Streaming-first chat gateway: personas, conversations, resumable generations, usage and \
                       cost, and an OpenAI-compatible surface. Errors are `{error, message, details}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    paths(
        super::health::health,
        super::health::metrics,
        super::personas::list,
        super::personas::get_one,
        super::personas::create,
        super::personas::update,
        super::personas::delete,
        super::conversations::create,
        super::conversations::list,
        super::conversations::get_one,
        super::conversations::update,
        super::conversations::delete,
        super::conversations::retitle,
        super::messages::send,
        super::history::history,
        super::history::delete_message,
        super::messages::regenerate,
        super::generations::get_one,
        super::generations::stream,
        super::generations::cancel,
        super::models::list,
        super::usage::mine,
        super::usage::summary,
        super::usage::everyone,
        super::ws::upgrade,
        super::openai::completions,
        super::responses::create,
        super::generations::conversation_stream,
        super::openai::models,
        super::openai::model,
        super::media::upload,
        super::media::download,
        super::ui::dev_token,
    ),
    components(schemas(
        super::error::ErrorBody,
        crate::store::Message,
        crate::store::ConversationSummary,
        crate::store::UsageGroup,
        super::params::StreamFormat,
        super::params::OnDisconnect,
        super::params::SortOrder,
        super::params::Branches,
    )),
    tags(
        (name = "conversations", description = "The caller's conversations with a persona"),
        (name = "messages", description = "Sending (JSON, SSE, 202, AI SDK stream) and history"),
        (name = "generations", description = "Server-owned replies: status, re-attach, cancel"),
        (name = "openai", description = "OpenAI-compatible, stateless"),
    )
)]
pub struct ApiDoc;

/// The document as served at `/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// `/openapi.json` and the Swagger UI at `/docs`.
pub fn router() -> Router<AppState> {
    let doc = document();
    let json = serde_json::to_string(&doc).unwrap_or_default();
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let json = json.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        json,
                    )
                }
            }),
        )
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::from("/openapi.json")))
}
