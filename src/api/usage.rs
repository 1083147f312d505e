//! Usage for dashboards: the caller's (`/api/v1/usage`, `/api/v1/usage/summary`) and everyone's for admins
//! (`/api/v1/admin/usage`). Answers carry an ETag and honour `If-None-Match` with 304: a dashboard polling every
//! few seconds costs one indexed lookup while nothing changes.

use std::hash::{DefaultHasher, Hash, Hasher};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{Days, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::AppQuery;
use super::error::ErrorBody;
use crate::AppState;
use crate::auth::{AdminUser, AuthUser};
use crate::error::Error;
use crate::store::{UsageBucket, UsageGroup, UsageQuery};
use crate::usage::nanousd_to_usd;

/// Longest range of one query, in days.
const MAX_DAYS: u64 = 366;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/usage", get(mine))
        .route("/api/v1/usage/summary", get(summary))
        .route("/api/v1/admin/usage", get(everyone))
}

#[derive(Debug, Deserialize)]
struct UsageParams {
    /// First day, `YYYY-MM-DD` (an RFC 3339 timestamp is cut to its day); default: 29 days before `to`.
    from: Option<String>,
    /// Last day, inclusive; default: today (UTC).
    to: Option<String>,
    group_by: Option<UsageGroup>,
    /// Admin view only: one user.
    user_id: Option<String>,
}

fn parse_day(field: &str, raw: &str) -> Result<NaiveDate, Error> {
    let day = raw.get(..10).unwrap_or(raw);
    NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .map_err(|_| Error::validation(field, "must be a date, YYYY-MM-DD"))
}

fn query(
    params: &UsageParams,
    user_id: Option<String>,
    allow_user_group: bool,
) -> Result<UsageQuery, Error> {
    let to = params
        .to
        .as_deref()
        .map(|t| parse_day("to", t))
        .transpose()?
        .unwrap_or_else(|| Utc::now().date_naive());
    let from = match params.from.as_deref() {
        Some(from) => parse_day("from", from)?,
        None => to.checked_sub_days(Days::new(29)).unwrap_or(to),
    };
    if from > to {
        return Err(Error::validation("from", "must not be after to"));
    }
    if (to - from).num_days() as u64 >= MAX_DAYS {
        return Err(Error::validation(
            "from",
            format!("the range may span at most {MAX_DAYS} days"),
        ));
    }
    let group_by = params.group_by.unwrap_or(UsageGroup::Day);
    if group_by == UsageGroup::User && !allow_user_group {
        return Err(Error::validation(
            "group_by",
            "must be day, model or persona",
        ));
    }
    Ok(UsageQuery {
        user_id,
        from_day: from.to_string(),
        to_day: to.to_string(),
        group_by,
    })
}

/// One group of usage as the API answers it: tokens, and the cost in USD.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageTotals {
    /// The day (`YYYY-MM-DD`), model alias, persona id (`""` for none) or user id; `total` for the totals.
    pub key: String,
    pub requests: i64,
    /// Requests whose counts were (partly) local estimates.
    pub estimated_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    /// `prompt_tokens + completion_tokens`.
    pub total_tokens: i64,
    /// USD.
    pub cost_usd: f64,
}

impl From<&UsageBucket> for UsageTotals {
    fn from(bucket: &UsageBucket) -> Self {
        Self {
            key: bucket.key.clone(),
            requests: bucket.requests,
            estimated_requests: bucket.estimated_requests,
            prompt_tokens: bucket.prompt_tokens,
            completion_tokens: bucket.completion_tokens,
            cached_tokens: bucket.cached_tokens,
            reasoning_tokens: bucket.reasoning_tokens,
            total_tokens: bucket.prompt_tokens + bucket.completion_tokens,
            cost_usd: nanousd_to_usd(bucket.cost_nanousd),
        }
    }
}

/// `GET /api/v1/usage` and `/api/v1/admin/usage`: the range, its groups, and their totals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageReport {
    /// `YYYY-MM-DD`, inclusive.
    pub from: String,
    /// `YYYY-MM-DD`, inclusive.
    pub to: String,
    pub group_by: UsageGroup,
    /// The user asked about; `null` for everyone (admin).
    pub user_id: Option<String>,
    /// By day (every day of the range, empty ones included), model, persona or user.
    pub buckets: Vec<UsageTotals>,
    pub totals: UsageTotals,
}

/// `GET /api/v1/usage/summary`: the caller's totals for the dashboard.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageSummary {
    pub total_conversations: i64,
    pub total_messages: i64,
    pub total_tokens: i64,
    /// USD.
    pub estimated_cost_usd: f64,
}

/// Every day of the range, empty days included, so a chart needs no gap filling.
fn fill_days(query: &UsageQuery, buckets: Vec<UsageBucket>) -> Vec<UsageBucket> {
    let (Ok(mut day), Ok(to)) = (
        query.from_day.parse::<NaiveDate>(),
        query.to_day.parse::<NaiveDate>(),
    ) else {
        return buckets;
    };
    let mut by_day: std::collections::HashMap<String, UsageBucket> =
        buckets.into_iter().map(|b| (b.key.clone(), b)).collect();
    let mut filled = Vec::new();
    while day <= to {
        let key = day.to_string();
        filled.push(
            by_day
                .remove(&key)
                .unwrap_or_else(|| UsageBucket::empty(key)),
        );
        day = match day.succ_opt() {
            Some(next) => next,
            None => break,
        };
    }
    filled
}

fn etag_of(parts: impl Hash) -> HeaderValue {
    let mut hasher = DefaultHasher::new();
    parts.hash(&mut hasher);
    HeaderValue::from_str(&format!("W/\"{:016x}\"", hasher.finish()))
        .unwrap_or(HeaderValue::from_static("W/\"0\""))
}

fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim() == etag.to_str().unwrap_or(""))
}

fn with_etag(etag: HeaderValue, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    response.headers_mut().insert(header::ETAG, etag);
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    response
}

/// Answers a usage query, or 304 when the caller's copy is current. The ETag comes from the rollup's version
/// (one indexed lookup), so an unchanged dashboard never runs the aggregate.
async fn answer(
    state: &AppState,
    headers: &HeaderMap,
    query: UsageQuery,
) -> Result<Response, Error> {
    let stamp = state.store.usage_stamp(query.user_id.as_deref()).await?;
    let etag = etag_of((
        "usage",
        &query.user_id,
        &query.from_day,
        &query.to_day,
        format!("{:?}", query.group_by),
        stamp.0.map(|t| t.timestamp_micros()),
        stamp.1,
    ));
    if not_modified(headers, &etag) {
        return Ok(with_etag(etag, StatusCode::NOT_MODIFIED));
    }
    let mut buckets = state.store.usage_buckets(&query).await?;
    if query.group_by == UsageGroup::Day {
        buckets = fill_days(&query, buckets);
    }
    let total = buckets
        .iter()
        .fold(UsageBucket::empty("total".into()), |mut t, b| {
            t.requests += b.requests;
            t.estimated_requests += b.estimated_requests;
            t.prompt_tokens += b.prompt_tokens;
            t.completion_tokens += b.completion_tokens;
            t.cached_tokens += b.cached_tokens;
            t.reasoning_tokens += b.reasoning_tokens;
            t.cost_nanousd += b.cost_nanousd;
            t
        });
    let body = UsageReport {
        buckets: buckets.iter().map(UsageTotals::from).collect(),
        totals: UsageTotals::from(&total),
        from: query.from_day,
        to: query.to_day,
        group_by: query.group_by,
        user_id: query.user_id,
    };
    Ok(with_etag(etag, Json(body)))
}

/// `GET /api/v1/usage?from&to&group_by=day|model|persona` → `{from, to, group_by, buckets, totals}`; each
/// bucket `{key, requests, estimated_requests, prompt_tokens, completion_tokens, cached_tokens,
/// reasoning_tokens, total_tokens, cost_usd}`.
#[utoipa::path(
    get,
    operation_id = "usage_mine",
    path = "/api/v1/usage",
    tag = "usage",
    params(
        ("from" = Option<NaiveDate>, Query, description = "YYYY-MM-DD (UTC)"),
        ("to" = Option<NaiveDate>, Query, description = "YYYY-MM-DD (UTC), inclusive"),
        ("group_by" = Option<UsageGroup>, Query),
        ("If-None-Match" = Option<String>, Header),
    ),
    responses(
        (status = 200, description = "the range's usage, with an ETag", body = UsageReport),
        (status = 304, description = "unchanged since the ETag"),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn mine(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    AppQuery(params): AppQuery<UsageParams>,
) -> Result<Response, Error> {
    if params
        .user_id
        .as_ref()
        .is_some_and(|id| *id != user.user_id)
    {
        return Err(Error::validation(
            "user_id",
            "use /api/v1/admin/usage for other users",
        ));
    }
    let query = query(&params, Some(user.user_id.clone()), false)?;
    answer(&state, &headers, query).await
}

/// `GET /api/v1/admin/usage?user_id&from&to&group_by=day|model|persona|user` (admin): everyone's usage, or one
/// user's.
#[utoipa::path(
    get,
    operation_id = "usage_everyone",
    path = "/api/v1/admin/usage",
    tag = "usage",
    params(
        ("from" = Option<NaiveDate>, Query),
        ("to" = Option<NaiveDate>, Query),
        ("group_by" = Option<UsageGroup>, Query),
        ("user_id" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "as /api/v1/usage, for every user or one", body = UsageReport),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
        (status = 403, description = "not allowed", body = ErrorBody),
    )
)]
async fn everyone(
    State(state): State<AppState>,
    _: AdminUser,
    headers: HeaderMap,
    AppQuery(params): AppQuery<UsageParams>,
) -> Result<Response, Error> {
    let query = query(
        &params,
        params.user_id.clone().filter(|u| !u.is_empty()),
        true,
    )?;
    answer(&state, &headers, query).await
}

/// `GET /api/v1/usage/summary` → `{total_conversations, total_messages, total_tokens, estimated_cost_usd}`.
#[utoipa::path(
    get,
    operation_id = "usage_summary",
    path = "/api/v1/usage/summary",
    tag = "usage",
    responses(
        (status = 200, description = "OK", body = UsageSummary),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn summary(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let summary = state.store.usage_summary(&user.user_id).await?;
    let etag = etag_of((
        "summary",
        &user.user_id,
        &summary.total_conversations,
        &summary.total_messages,
        &summary.total_tokens,
        &summary.cost_nanousd,
    ));
    if not_modified(&headers, &etag) {
        return Ok(with_etag(etag, StatusCode::NOT_MODIFIED));
    }
    let body = UsageSummary {
        total_conversations: summary.total_conversations,
        total_messages: summary.total_messages,
        total_tokens: summary.total_tokens,
        estimated_cost_usd: nanousd_to_usd(summary.cost_nanousd),
    };
    Ok(with_etag(etag, Json(body)))
}
