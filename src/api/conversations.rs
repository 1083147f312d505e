//! Conversations: the caller's own; another user's is a 404.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::AppJson;
use super::error::ErrorBody;
use super::{AppQuery, double_option, page_limit, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::Error;
use crate::store::{Conversation, ConversationFilter, ConversationSummary, Id};

/// Longest title, in characters.
const MAX_TITLE_CHARS: usize = 200;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/conversations", post(create).get(list))
        .route(
            "/api/v1/conversations/{id}",
            get(get_one).patch(update).delete(delete),
        )
        .route("/api/v1/conversations/{id}/title", post(retitle))
}

/// `POST /api/v1/conversations/{id}/title` → the conversation with a newly written title (replacing any),
/// from its first exchange; 409 before the first reply; 502/504 when the title model fails.
#[utoipa::path(
    post,
    operation_id = "conversations_retitle",
    path = "/api/v1/conversations/{id}/title",
    tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
    ),
    responses(
        (status = 200, description = "OK", body = Conversation),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
        (status = 409, description = "conflict", body = ErrorBody),
        (status = 502, description = "upstream error", body = ErrorBody),
        (status = 504, description = "upstream timeout", body = ErrorBody),
    )
)]
async fn retitle(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, Error> {
    let conversation = owned(&state, &user, &id).await?;
    crate::chat::titles::regenerate(&state.chat, &user.user_id, &conversation)
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateConversation {
    persona_id: Id,
    #[serde(default)]
    title: Option<String>,
    /// Answer with the caller's latest unarchived conversation with this persona, if any, instead of a new one.
    #[serde(default)]
    reuse_existing: bool,
}

fn check_title(title: Option<&str>) -> Result<(), Error> {
    if let Some(title) = title
        && title.chars().count() > MAX_TITLE_CHARS
    {
        return Err(Error::validation(
            "title",
            format!("must be at most {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok(())
}

/// `POST /api/v1/conversations` → 201, or 200 with the existing one when `reuse_existing` finds one.
#[utoipa::path(
    post,
    operation_id = "conversations_create",
    path = "/api/v1/conversations",
    tag = "conversations",
    request_body = CreateConversation,
    responses(
        (status = 201, description = "created", body = Conversation),
        (status = 200, description = "the existing one (`reuse_existing`)", body = Conversation),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    AppJson(body): AppJson<CreateConversation>,
) -> Result<(StatusCode, Json<Conversation>), Error> {
    check_title(body.title.as_deref())?;
    let persona = state.store.get_persona(body.persona_id).await?;
    if !persona.is_some_and(|p| p.is_active) {
        return Err(Error::not_found("persona"));
    }
    if body.reuse_existing
        && let Some(existing) = state
            .store
            .latest_conversation(&user.user_id, body.persona_id)
            .await?
    {
        return Ok((StatusCode::OK, Json(existing)));
    }
    let title = body
        .title
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let conversation = state
        .store
        .create_conversation(&user.user_id, body.persona_id, title)
        .await?;
    Ok((StatusCode::CREATED, Json(conversation)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    cursor: Option<String>,
    persona_id: Option<Id>,
    archived: Option<bool>,
}

fn encode_cursor(at: DateTime<Utc>, id: Id) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Id), Error> {
    let bad = || Error::validation("cursor", "is not a cursor returned by this endpoint");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (at, id) = raw.split_once('|').ok_or_else(bad)?;
    let at = DateTime::parse_from_rfc3339(at)
        .map_err(|_| bad())?
        .with_timezone(&Utc);
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// `GET /api/v1/conversations?limit&cursor&persona_id&archived` → `{conversations, next_cursor}`, most recent
/// activity first, each with its `last_message` preview.
#[utoipa::path(
    get,
    operation_id = "conversations_list",
    path = "/api/v1/conversations",
    tag = "conversations",
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "default 20"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("persona_id" = Option<String>, Query),
        ("archived" = Option<bool>, Query),
    ),
    responses(
        (status = 200, description = "a page of conversations, most recent first", body = ConversationPage),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    AppQuery(q): AppQuery<ListQuery>,
) -> Result<Json<ConversationPage>, Error> {
    let limit = page_limit(q.limit, 20, 100)?;
    let filter = ConversationFilter {
        persona_id: q.persona_id,
        archived: q.archived,
        after: q
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .map(decode_cursor)
            .transpose()?,
        // One more than asked, to know whether another page exists.
        limit: limit + 1,
    };
    let mut conversations = state
        .store
        .list_conversations(&user.user_id, &filter)
        .await?;
    let next_cursor = if conversations.len() as i64 > limit {
        conversations.truncate(limit as usize);
        conversations
            .last()
            .map(|c| encode_cursor(c.conversation.last_message_at, c.conversation.id))
    } else {
        None
    };
    Ok(Json(ConversationPage {
        conversations,
        next_cursor,
    }))
}

/// A page of `GET /api/v1/conversations`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    /// Pass as `cursor` for the next page; `null` on the last one.
    pub next_cursor: Option<String>,
}

/// Loads one of the caller's conversations; 404 otherwise.
pub(crate) async fn owned(
    state: &AppState,
    user: &AuthUser,
    raw_id: &str,
) -> Result<Conversation, Error> {
    let id = parse_id(raw_id, "conversation")?;
    state
        .store
        .get_conversation(&user.user_id, id)
        .await?
        .ok_or_else(|| Error::not_found("conversation"))
}

#[utoipa::path(
    get,
    operation_id = "conversations_get_one",
    path = "/api/v1/conversations/{id}",
    tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
    ),
    responses(
        (status = 200, description = "OK", body = Conversation),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn get_one(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<Conversation>, Error> {
    Ok(Json(owned(&state, &user, &id).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct UpdateConversation {
    /// Absent: unchanged; `null`: cleared.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    title: Option<Option<String>>,
    #[serde(default)]
    archived: Option<bool>,
}

/// `PATCH /api/v1/conversations/{id}` with `{title?, archived?}`.
#[utoipa::path(
    patch,
    operation_id = "conversations_update",
    path = "/api/v1/conversations/{id}",
    tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
    ),
    request_body = UpdateConversation,
    responses(
        (status = 200, description = "OK", body = Conversation),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn update(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
    AppJson(body): AppJson<UpdateConversation>,
) -> Result<Json<Conversation>, Error> {
    let id = parse_id(&id, "conversation")?;
    let title = body
        .title
        .as_ref()
        .map(|t| t.as_deref().map(str::trim).filter(|t| !t.is_empty()));
    check_title(title.flatten())?;
    let updated = state
        .store
        .update_conversation(&user.user_id, id, title, body.archived)
        .await?
        .ok_or_else(|| Error::not_found("conversation"))?;
    Ok(Json(updated))
}

/// `DELETE /api/v1/conversations/{id}` → 204; its messages go too.
#[utoipa::path(
    delete,
    operation_id = "conversations_delete",
    path = "/api/v1/conversations/{id}",
    tag = "conversations",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
    ),
    responses(
        (status = 204, description = "deleted with its messages"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let id = parse_id(&id, "conversation")?;
    if state.store.delete_conversation(&user.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("conversation"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let at = crate::store::now();
        let id = Id::new();
        assert_eq!(
            decode_cursor(&encode_cursor(at, id)).expect("valid"),
            (at, id)
        );
        assert_eq!(
            decode_cursor("!!!").expect_err("bad").kind,
            crate::error::ErrorKind::Invalid
        );
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("no-separator")).is_err());
    }
}
