//! `GET /api/v1/models`: the model aliases a user may pick.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

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
        (status = 200, description = "`{models: [{id, provider, model, context_window, prices, ...}], default}`", body = Object),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn list(State(state): State<AppState>, _: AuthUser) -> Json<Value> {
    let default = state.models.default_alias();
    let models: Vec<Value> = state
        .models
        .routes()
        .map(|route| {
            json!({
                "id": route.alias,
                "provider": route.provider.name(),
                "upstream_model": route.upstream_model,
                "context_window": route.context_window,
                "max_output_tokens": route.max_output_tokens,
                "input_per_mtok": per_mtok(route.prices.input_picousd_per_token),
                "output_per_mtok": per_mtok(route.prices.output_picousd_per_token),
                "cached_input_per_mtok": per_mtok(route.prices.cached_input_picousd_per_token),
                "modalities": if route.accepts_images { json!(["text", "image"]) } else { json!(["text"]) },
                "fallbacks": route.fallbacks,
                "token_counts_exact": route.tokenizer.exact,
                "default": route.alias == default,
            })
        })
        .collect();
    Json(json!({ "models": models, "default": default }))
}
