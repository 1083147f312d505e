//! Personas: public list and get; admin create, update, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::AppJson;
use super::error::ErrorBody;
use super::{AppQuery, page_limit, parse_id};
use crate::AppState;
use crate::auth::{AdminUser, AuthUser};
use crate::error::{Error, ErrorKind};
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
#[utoipa::path(
    get,
    operation_id = "personas_list",
    path = "/api/v1/personas",
    tag = "personas",
    security(()),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "default 50"),
        ("offset" = Option<i64>, Query),
        ("category" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "a page of active personas", body = PersonaPage),
        (status = 400, description = "invalid input", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<PersonaPage>, Error> {
    let filter = PersonaFilter {
        category: q.category.filter(|c| !c.is_empty()),
        include_inactive: false,
        limit: page_limit(q.limit, 50, 200)?,
        offset: q.offset.unwrap_or(0).max(0),
    };
    let personas = state.store.list_personas(&filter).await?;
    Ok(Json(PersonaPage {
        personas,
        limit: filter.limit,
        offset: filter.offset,
    }))
}

/// A page of `GET /api/v1/personas`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PersonaPage {
    pub personas: Vec<Persona>,
    pub limit: i64,
    pub offset: i64,
}

/// `GET /api/v1/personas/{id}`; an inactive persona is visible to admins only.
#[utoipa::path(
    get,
    operation_id = "personas_get_one",
    path = "/api/v1/personas/{id}",
    tag = "personas",
    security(()),
    params(
        ("id" = String, Path, description = "persona id (UUID)"),
    ),
    responses(
        (status = 200, description = "OK", body = Persona),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    user: Option<AuthUser>,
    Path(id): Path<String>,
) -> Result<Json<Persona>, Error> {
    let id = parse_id(&id, "persona")?;
    let persona = state
        .store
        .get_persona(id)
        .await?
        .ok_or_else(|| Error::not_found("persona"))?;
    if !persona.is_active && !user.is_some_and(|u| u.admin) {
        return Err(Error::not_found("persona"));
    }
    Ok(Json(persona))
}

fn check_model(state: &AppState, persona: &NewPersona) -> Result<(), Error> {
    match persona.model.as_deref() {
        Some(alias) if state.models.get(alias).is_none() => Err(Error::new(
            ErrorKind::Unprocessable,
            "unknown_model",
            format!("model alias '{alias}' is not configured"),
        )),
        _ => Ok(()),
    }
}

/// `POST /api/v1/personas` (admin) → 201.
#[utoipa::path(
    post,
    operation_id = "personas_create",
    path = "/api/v1/personas",
    tag = "personas",
    request_body = NewPersona,
    responses(
        (status = 201, description = "created", body = Persona),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "not allowed", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody),
        (status = 422, description = "unprocessable", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    _: AdminUser,
    AppJson(persona): AppJson<NewPersona>,
) -> Result<(StatusCode, Json<Persona>), Error> {
    validate(&persona)?;
    check_model(&state, &persona)?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.create_persona(&persona).await?),
    ))
}

/// `PATCH /api/v1/personas/{id}` (admin): any subset of the persona's fields.
#[utoipa::path(
    patch,
    operation_id = "personas_update",
    path = "/api/v1/personas/{id}",
    tag = "personas",
    params(
        ("id" = String, Path, description = "persona id (UUID)"),
    ),
    request_body(content = Object, description = "any subset of the persona's fields"),
    responses(
        (status = 200, description = "OK", body = Persona),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "not allowed", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody),
        (status = 422, description = "unprocessable", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    _: AdminUser,
    Path(id): Path<String>,
    AppJson(patch): AppJson<serde_json::Map<String, Value>>,
) -> Result<Json<Persona>, Error> {
    let id = parse_id(&id, "persona")?;
    let current = state
        .store
        .get_persona(id)
        .await?
        .ok_or_else(|| Error::not_found("persona"))?;
    let mut merged = serde_json::to_value(&current).map_err(Error::internal)?;
    for (key, value) in patch {
        if matches!(key.as_str(), "id" | "created_at" | "updated_at") {
            return Err(Error::validation(&key, "cannot be changed"));
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
        .ok_or_else(|| Error::not_found("persona"))?;
    Ok(Json(updated))
}

/// `DELETE /api/v1/personas/{id}` (admin) → 204; 409 while conversations use it.
#[utoipa::path(
    delete,
    operation_id = "personas_delete",
    path = "/api/v1/personas/{id}",
    tag = "personas",
    params(
        ("id" = String, Path, description = "persona id (UUID)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "not allowed", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    _: AdminUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let id = parse_id(&id, "persona")?;
    state.personas.invalidate(id);
    if state.store.delete_persona(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("persona"))
    }
}
