//! Personas: public list and get; admin create, update, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppQuery, page_limit, parse_id};
use crate::AppState;
use crate::auth::{AdminUser, AuthUser};
use crate::error::{ApiError, AppJson};
use crate::personas::validate;
use crate::store::{NewPersona, Persona, PersonaFilter};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/personas", get(list).post(create))
        .route(
            "/api/v1/personas/{id}",
            get(get_one).patch(update).delete(delete),
        )
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    offset: Option<i64>,
    category: Option<String>,
}

/// `GET /api/v1/personas?limit&offset&category` → `{personas: [...]}`, active ones only.
async fn list(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let filter = PersonaFilter {
        category: q.category.filter(|c| !c.is_empty()),
        include_inactive: false,
        limit: page_limit(q.limit, 50, 200)?,
        offset: q.offset.unwrap_or(0).max(0),
    };
    let personas = state.store.list_personas(&filter).await?;
    Ok(Json(
        json!({ "personas": personas, "limit": filter.limit, "offset": filter.offset }),
    ))
}

/// `GET /api/v1/personas/{id}`; an inactive persona is visible to admins only.
async fn get_one(
    State(state): State<AppState>,
    user: Option<AuthUser>,
    Path(id): Path<String>,
) -> Result<Json<Persona>, ApiError> {
    let id = parse_id(&id, "persona")?;
    let persona = state
        .store
        .get_persona(id)
        .await?
        .ok_or_else(|| ApiError::not_found("persona"))?;
    if !persona.is_active && !user.is_some_and(|u| u.admin) {
        return Err(ApiError::not_found("persona"));
    }
    Ok(Json(persona))
}

fn check_model(state: &AppState, persona: &NewPersona) -> Result<(), ApiError> {
    match persona.model.as_deref() {
        Some(alias) if state.models.get(alias).is_none() => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_model",
            format!("model alias '{alias}' is not configured"),
        )),
        _ => Ok(()),
    }
}

/// `POST /api/v1/personas` (admin) → 201.
async fn create(
    State(state): State<AppState>,
    _: AdminUser,
    AppJson(persona): AppJson<NewPersona>,
) -> Result<(StatusCode, Json<Persona>), ApiError> {
    validate(&persona)?;
    check_model(&state, &persona)?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_persona(&persona).await?),
    ))
}

/// `PATCH /api/v1/personas/{id}` (admin): any subset of the persona's fields.
async fn update(
    State(state): State<AppState>,
    _: AdminUser,
    Path(id): Path<String>,
    AppJson(patch): AppJson<serde_json::Map<String, Value>>,
) -> Result<Json<Persona>, ApiError> {
    let id = parse_id(&id, "persona")?;
    let current = state
        .store
        .get_persona(id)
        .await?
        .ok_or_else(|| ApiError::not_found("persona"))?;
    let mut merged = serde_json::to_value(&current).map_err(ApiError::internal)?;
    for (key, value) in patch {
        if matches!(key.as_str(), "id" | "created_at" | "updated_at") {
            return Err(ApiError::validation(&key, "cannot be changed"));
        }
        merged[key] = value;
    }
    let persona: NewPersona = crate::error::parse_json(merged.to_string().as_bytes())?;
    validate(&persona)?;
    check_model(&state, &persona)?;
    state.personas.invalidate(id);
    let updated = state
        .store
        .update_persona(id, &persona)
        .await?
        .ok_or_else(|| ApiError::not_found("persona"))?;
    Ok(Json(updated))
}

/// `DELETE /api/v1/personas/{id}` (admin) → 204; 409 while conversations use it.
async fn delete(
    State(state): State<AppState>,
    _: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id, "persona")?;
    state.personas.invalidate(id);
    if state.store.delete_persona(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("persona"))
    }
}
