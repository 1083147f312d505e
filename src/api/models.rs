//! `GET /api/v1/models`: the model aliases a user may pick.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::error::ErrorBody;
use crate::AppState;
use crate::auth::AuthUser;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/models", get(list))
}

/// USD per million tokens, from pico-USD per token.
fn per_mtok(picousd_per_token: u64) -> f64 {
    picousd_per_token as f64 / 1e6
}

/// `{models: [{id, provider, upstream_model, context_window, max_output_tokens, input_per_mtok,
/// output_per_mtok, cached_input_per_mtok, modalities, fallbacks, default}], default}`; prices in USD per
/// million tokens (0 for models served by the stand-in mock).
#[utoipa::path(
    get,
    operation_id = "models_list",
    path = "/api/v1/models",
    tag = "models",
    responses(
        (status = 200, description = "the configured model aliases", body = ModelList),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, _: AuthUser) -> Json<ModelList> {
    let default = state.models.default_alias();
    let models = state
        .models
        .routes()
        .map(|route| ModelInfo {
            id: route.alias.clone(),
            provider: route.provider.name().to_string(),
            upstream_model: route.upstream_model.clone(),
            context_window: route.context_window,
            max_output_tokens: route.max_output_tokens,
            input_per_mtok: per_mtok(route.prices.input_picousd_per_token),
            output_per_mtok: per_mtok(route.prices.output_picousd_per_token),
            cached_input_per_mtok: per_mtok(route.prices.cached_input_picousd_per_token),
            modalities: if route.accepts_images {
                vec!["text", "image"]
            } else {
                vec!["text"]
            },
            fallbacks: route.fallbacks.clone(),
            token_counts_exact: route.tokenizer.exact,
            default: route.alias == default,
        })
        .collect();
    Json(ModelList {
        models,
        default: default.to_string(),
    })
}

/// `GET /api/v1/models`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
    /// The alias used when a conversation names none.
    pub default: String,
}

/// One model alias of `[models]`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelInfo {
    /// The alias clients name.
    pub id: String,
    /// The `[[providers]]` entry's name.
    pub provider: String,
    /// The model the provider is asked for.
    pub upstream_model: String,
    /// Tokens.
    pub context_window: u32,
    /// Tokens; `null`: the provider's default.
    pub max_output_tokens: Option<u32>,
    /// USD per million prompt tokens.
    pub input_per_mtok: f64,
    /// USD per million completion tokens.
    pub output_per_mtok: f64,
    /// USD per million cached prompt tokens.
    pub cached_input_per_mtok: f64,
    /// `text`, and `image` when it accepts images.
    pub modalities: Vec<&'static str>,
    /// Aliases tried in order when this one fails before its first token.
    pub fallbacks: Vec<String>,
    /// Token counts come from the provider's own tokenizer when estimated locally.
    pub token_counts_exact: bool,
    /// This is the default alias.
    pub default: bool,
}
