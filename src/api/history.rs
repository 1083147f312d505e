//! A conversation's history, and deleting a message.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ErrorBody;
use super::params::{Branches, SortOrder};
use super::{AppQuery, page_limit, parse_id};
use crate::AppState;
use crate::auth::AuthUser;
use crate::error::Error;
use crate::store::{HistoryPage, Id, Message};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/conversations/{id}/messages", get(history))
        .route("/api/v1/messages/{id}", delete(delete_message))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
    before: Option<Id>,
    after: Option<Id>,
    offset: Option<i64>,
    order: Option<String>,
    /// `latest` (default): only the newest reply to each message; `all`: regenerated replies too.
    branches: Option<String>,
}

/// `GET /api/v1/conversations/{id}/messages?limit&before|after|offset&order=asc|desc&branches=latest|all` →
/// `{messages, has_more}`. Without a cursor, `desc` (the default) gives the newest page.
#[utoipa::path(
    get,
    operation_id = "messages_history",
    path = "/api/v1/conversations/{id}/messages",
    tag = "messages",
    params(
        ("id" = String, Path, description = "conversation id (UUID)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 200, description = "default 50"),
        ("before" = Option<Id>, Query, description = "messages before this message id (one of before, after, offset)"),
        ("after" = Option<Id>, Query, description = "messages after this message id"),
        ("offset" = Option<i64>, Query),
        ("order" = Option<SortOrder>, Query, description = "default desc"),
        ("branches" = Option<Branches>, Query, description = "default latest"),
    ),
    responses(
        (status = 200, description = "a page of messages", body = MessagePage),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    Path(conversation_id): Path<String>,
    AppQuery(q): AppQuery<HistoryQuery>,
) -> Result<Json<MessagePage>, Error> {
    let conversation_id = parse_id(&conversation_id, "conversation")?;
    let conversation = state
        .chat
        .conversation(&user.user_id, conversation_id)
        .await?;
    let limit = page_limit(q.limit, 50, 200)?;
    let ascending = match q.order.as_deref() {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err(Error::validation("order", "must be asc or desc")),
    };
    let all_branches = match q.branches.as_deref() {
        None | Some("latest") => false,
        Some("all") => true,
        Some(_) => return Err(Error::validation("branches", "must be latest or all")),
    };
    let page = match (q.before, q.after, q.offset) {
        (Some(id), None, None) => HistoryPage::Before(id),
        (None, Some(id), None) => HistoryPage::After(id),
        (None, None, offset) => HistoryPage::Offset(offset.unwrap_or(0).max(0)),
        _ => {
            return Err(Error::validation(
                "before",
                "use one of before, after or offset",
            ));
        }
    };
    let mut messages = state
        .store
        .list_messages(conversation.id, page, limit + 1, ascending, all_branches)
        .await?;
    let has_more = messages.len() as i64 > limit;
    if has_more {
        // The extra row is the one farthest from the cursor: last when reading away from it.
        let reads_forward = match page {
            HistoryPage::Offset(_) => true,
            HistoryPage::Before(_) => !ascending,
            HistoryPage::After(_) => ascending,
        };
        if reads_forward {
            messages.truncate(limit as usize);
        } else {
            messages.remove(0);
        }
    }
    Ok(Json(MessagePage { messages, has_more }))
}

/// A page of a conversation's history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    /// In the order asked (`order`, newest first by default).
    pub messages: Vec<Message>,
    /// More messages lie beyond this page in the direction read.
    pub has_more: bool,
}

/// `DELETE /api/v1/messages/{id}` → 204; 404 for anyone else's message.
#[utoipa::path(
    delete,
    operation_id = "messages_delete_message",
    path = "/api/v1/messages/{id}",
    tag = "messages",
    params(
        ("id" = String, Path, description = "message id (UUID)"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 404, description = "not found (or not the caller's)", body = ErrorBody),
    )
)]
async fn delete_message(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    let id = parse_id(&id, "message")?;
    if state.store.delete_message(&user.user_id, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Error::not_found("message"))
    }
}
