//! Storage: one [`Store`] interface, two backends (SQLite, PostgreSQL) with the same schema and the same SQL.
//!
//! Both backends are generated from one body of queries (`sql.rs`), so they cannot drift apart; each has its
//! own migrations folder (`migrations/sqlite`, `migrations/postgres`). Timestamps are bound from Rust (UTC,
//! microsecond precision) so both backends order and compare them the same way.

mod group_commit;
mod postgres;
mod sqlite;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::types::Json;

pub use self::group_commit::{GroupCommit, Lane, Writes};
pub use self::postgres::PgStore;
pub use self::sqlite::SqliteStore;
pub use crate::domain::{FinishReason, MessageStatus, MessageType, Role};
pub use crate::id::Id;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key or reference was violated; the message says which.
    #[error("{0}")]
    Conflict(String),
    /// The row does not exist (or belongs to another user).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database URL leads through a pooler in transaction mode (found at startup, when connecting): the
    /// message names it and says to use a session pooler or a direct connection.
    #[error("{}", postgres::TRANSACTION_POOLER)]
    TransactionPooler,
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<StoreError> for crate::error::Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(message) => Self::conflict(message),
            StoreError::NotFound(what) => Self::not_found(what),
            // PostgreSQL's "character not in repertoire" / "untranslatable character": text it cannot store
            // (input is checked before it gets here; this keeps a miss from looking like an outage).
            StoreError::Database(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|code| code == "22021" || code == "22P05") =>
            {
                Self::new(
                    crate::error::ErrorKind::Invalid,
                    "validation_error",
                    "the text holds a character the database cannot store (U+0000)",
                )
            }
            // "prepared statement sqlx_s_1 already exists" / "... does not exist": a transaction pooler the
            // startup probe did not catch; the log then says what to change.
            StoreError::Database(e)
                if e.as_database_error()
                    .and_then(|d| d.code())
                    .is_some_and(|code| code == "42P05" || code == "26000") =>
            {
                Self::unavailable(
                    "the database is unavailable",
                    format!("{e}: {}", postgres::TRANSACTION_POOLER),
                )
            }
            StoreError::Database(e) => Self::unavailable("the database is unavailable", e),
            StoreError::TransactionPooler => {
                Self::unavailable("the database is unavailable", postgres::TRANSACTION_POOLER)
            }
        }
    }
}

/// Now, truncated to microseconds (PostgreSQL's precision) so a value round-trips exactly on both backends.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A persona users chat with.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, PartialEq, utoipa::ToSchema)]
pub struct Persona {
    pub id: Id,
    /// Unique, URL-safe name, e.g. `alex-friend`.
    pub slug: String,
    pub display_name: String,
    pub avatar_url: Option<String>,
    pub description: String,
    pub category: String,
    /// `parent|spouse|child|sibling|friend|colleague|other`.
    pub relationship: String,
    pub system_prompt: String,
    #[schema(value_type = Vec<String>)]
    pub personality_traits: Json<Vec<String>>,
    /// Model alias this persona prefers; `[defaults].model` when absent.
    pub model: Option<String>,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Fields of a new persona.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct NewPersona {
    pub slug: String,
    pub display_name: String,
    #[serde(default)]
    pub avatar_url: Option<String>,
    #[serde(default)]
    pub description: String,
    #[serde(default = "default_category")]
    pub category: String,
    pub relationship: String,
    pub system_prompt: String,
    #[serde(default)]
    pub personality_traits: Vec<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default = "default_true")]
    pub is_active: bool,
}

fn default_category() -> String {
    "general".into()
}
fn default_true() -> bool {
    true
}

/// Filter of the persona list.
#[derive(Debug, Clone, Default)]
pub struct PersonaFilter {
    pub category: Option<String>,
    pub include_inactive: bool,
    pub limit: i64,
    pub offset: i64,
}

/// A conversation, owned by one user.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq, utoipa::ToSchema)]
pub struct Conversation {
    pub id: Id,
    pub user_id: String,
    pub persona_id: Id,
    pub title: Option<String>,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_message_at: DateTime<Utc>,
}

/// A conversation in a list, with a preview of its latest message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConversationSummary {
    #[serde(flatten)]
    pub conversation: Conversation,
    pub last_message: Option<MessagePreview>,
}

/// The latest message of a conversation, its content cut to [`PREVIEW_CHARS`] characters.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct MessagePreview {
    pub id: Id,
    pub role: Role,
    pub content: String,
    pub created_at: DateTime<Utc>,
}

/// Characters of content kept in a [`MessagePreview`].
pub const PREVIEW_CHARS: usize = 160;

/// Filter and page of the conversation list: newest activity first.
#[derive(Debug, Clone, Default)]
pub struct ConversationFilter {
    pub persona_id: Option<Id>,
    pub archived: Option<bool>,
    /// Keyset cursor: conversations strictly after this `(last_message_at, id)` in newest-first order.
    pub after: Option<(DateTime<Utc>, Id)>,
    pub limit: i64,
}

/// A message as stored, with the usage of the generation that wrote it (assistant messages).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Message {
    pub id: Id,
    pub conversation_id: Id,
    pub parent_id: Option<Id>,
    pub role: Role,
    pub content: String,
    pub message_type: MessageType,
    pub media: Value,
    pub status: MessageStatus,
    /// Model alias that answered (assistant messages).
    pub model: Option<String>,
    /// Provider name that answered (assistant messages).
    pub provider: Option<String>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<String>,
    #[serde(serialize_with = "crate::domain::serialize_utc")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "crate::domain::serialize_utc")]
    pub updated_at: DateTime<Utc>,
    /// Prompt + completion tokens, as chat UIs expect (`null` for user messages).
    pub tokens_used: Option<i64>,
    /// Tokens the generation was sent (system prompt, history, this question): `null` for user messages.
    pub prompt_tokens: Option<i64>,
    /// Tokens of the reply (with any reasoning tokens): what a chat UI shows as the reply's size.
    pub completion_tokens: Option<i64>,
    /// The upstream model name that answered.
    pub model_used: Option<String>,
    /// Time from request to the last token, in ms.
    pub response_time_ms: Option<i64>,
    /// Time to first token, in ms.
    pub ttft_ms: Option<i64>,
    /// Cost of the generation, in USD.
    pub cost_usd: Option<f64>,
    /// Tokens of `content` alone, as history fitting spends them: a reply's completion tokens less its
    /// reasoning tokens (the provider's count, else the local estimate), written with it; a user message's
    /// tiktoken count, taken the first time fitting a long history needs it; `null` until then.
    pub content_tokens: Option<i64>,
}

/// A message row joined with its usage record.
#[derive(Debug, sqlx::FromRow)]
struct MessageRow {
    id: Id,
    conversation_id: Id,
    parent_id: Option<Id>,
    role: Role,
    content: String,
    message_type: MessageType,
    media: Json<Value>,
    status: MessageStatus,
    model: Option<String>,
    provider: Option<String>,
    finish_reason: Option<FinishReason>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    content_tokens: Option<i64>,
    u_prompt_tokens: Option<i64>,
    u_completion_tokens: Option<i64>,
    u_upstream_model: Option<String>,
    u_duration_ms: Option<i64>,
    u_ttft_ms: Option<i64>,
    u_cost_nanousd: Option<i64>,
}

impl From<MessageRow> for Message {
    fn from(r: MessageRow) -> Self {
        Message {
            id: r.id,
            conversation_id: r.conversation_id,
            parent_id: r.parent_id,
            role: r.role,
            content: r.content,
            message_type: r.message_type,
            media: r.media.0,
            status: r.status,
            model: r.model,
            provider: r.provider,
            finish_reason: r.finish_reason,
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            tokens_used: r
                .u_prompt_tokens
                .zip(r.u_completion_tokens)
                .map(|(p, c)| p + c),
            prompt_tokens: r.u_prompt_tokens,
            completion_tokens: r.u_completion_tokens,
            model_used: r.u_upstream_model,
            response_time_ms: r.u_duration_ms,
            ttft_ms: r.u_ttft_ms,
            cost_usd: r.u_cost_nanousd.map(crate::domain::nanousd_to_usd),
            content_tokens: r.content_tokens,
        }
    }
}

impl Message {
    /// The stored form of a message just inserted, with its usage when it has one.
    /// A reply as [`Store::save_generation`] stored it, `updated_at` the time it was written.
    pub fn saved(m: &NewMessage, usage: &UsageRecord, updated_at: DateTime<Utc>) -> Self {
        Self {
            updated_at,
            ..Self::from_new(m, Some(usage))
        }
    }

    pub fn from_new(m: &NewMessage, usage: Option<&UsageRecord>) -> Self {
        Message {
            id: m.id,
            conversation_id: m.conversation_id,
            parent_id: m.parent_id,
            role: m.role,
            content: m.content.clone(),
            message_type: m.message_type,
            media: m.media.clone(),
            status: m.status,
            model: m.model.clone(),
            provider: m.provider.clone(),
            finish_reason: m.finish_reason.clone(),
            error: m.error.clone(),
            created_at: m.created_at,
            updated_at: m.created_at,
            tokens_used: usage.map(|u| u.prompt_tokens + u.completion_tokens),
            prompt_tokens: usage.map(|u| u.prompt_tokens),
            completion_tokens: usage.map(|u| u.completion_tokens),
            model_used: usage.map(|u| u.upstream_model.clone()),
            response_time_ms: usage.map(|u| u.duration_ms),
            ttft_ms: usage.and_then(|u| u.ttft_ms),
            cost_usd: usage.map(|u| crate::domain::nanousd_to_usd(u.cost_nanousd)),
            content_tokens: m.content_tokens,
        }
    }
}

/// An uploaded file: image or audio, owned by its uploader. The bytes live in the object store under
/// `storage_key`.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct Media {
    pub id: Id,
    #[serde(skip)]
    pub user_id: String,
    /// Sniffed from the bytes, e.g. `image/png`, `audio/mpeg`.
    pub content_type: String,
    pub size_bytes: i64,
    /// Hex SHA-256 of the bytes.
    pub sha256: String,
    #[serde(skip)]
    pub storage_key: String,
    pub created_at: DateTime<Utc>,
}

/// The ids of uploaded media in a message's `media` JSON (`[{id, ...}]`).
pub fn media_ids_of(media: &Value) -> Vec<Id> {
    media
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str()?.parse().ok())
        .collect()
}

/// One write of [`Store::write_messages`] (and of [`GroupCommit`]).
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "a write is moved once, into the queue; boxing would add an allocation per write"
)]
pub enum MessageWrite {
    /// A new message (a user's): refused when its id exists; its media ([`media_ids_of`]) linked to it.
    Insert(NewMessage),
    /// A finished reply, over its checkpoint if there is one, and its usage record.
    Reply(NewMessage, UsageRecord),
    /// A usage record that belongs to no stored message (stateless completions, titles).
    Usage(UsageRecord),
}

/// A message to insert.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Id,
    pub conversation_id: Id,
    pub parent_id: Option<Id>,
    pub role: Role,
    pub content: String,
    pub message_type: MessageType,
    pub media: Value,
    pub status: MessageStatus,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub finish_reason: Option<FinishReason>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Tokens of `content` ([`Message::content_tokens`]), when known at write time.
    pub content_tokens: Option<i64>,
}

/// A conversation and the history of its next prompt ([`Store::prompt_history`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptHistory {
    pub conversation: Conversation,
    /// Newest first.
    pub turns: Vec<HistoryTurn>,
}

/// A stored message as a prompt sends it again: what history fitting and the images of earlier messages need,
/// and nothing else ([`Store::prompt_history`]).
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryTurn {
    pub id: Id,
    pub role: Role,
    pub content: String,
    pub message_type: MessageType,
    /// The message's `media` JSON (`[{"id", ...}]`), for the images sent again.
    pub media: Value,
    /// Tokens of `content` ([`Message::content_tokens`]); `null` until known.
    pub content_tokens: Option<i64>,
}

/// Page of a conversation's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest `limit` messages (or oldest, ascending), skipping `offset`.
    Offset(i64),
    /// Messages older than this one.
    Before(Id),
    /// Messages newer than this one.
    After(Id),
}

/// One usage record: exactly one per generation.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, PartialEq)]
pub struct UsageRecord {
    pub id: Id,
    pub user_id: String,
    pub conversation_id: Option<Id>,
    pub message_id: Option<Id>,
    pub persona_id: Option<Id>,
    /// Model alias.
    pub model: String,
    /// Upstream model name.
    pub upstream_model: String,
    pub provider: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// Prompt tokens served from the provider's cache (part of `prompt_tokens`).
    pub cached_tokens: i64,
    /// Reasoning tokens (part of `completion_tokens`).
    pub reasoning_tokens: i64,
    /// True when any count is a local tiktoken estimate rather than the provider's figure.
    pub estimated: bool,
    /// Cost in nano-USD (1e-9 USD).
    pub cost_nanousd: i64,
    /// Time to first token, in ms; `None` when no token came.
    pub ttft_ms: Option<i64>,
    /// Time from request to the end of the generation, in ms.
    pub duration_ms: i64,
    pub created_at: DateTime<Utc>,
}

/// One streaming reply's checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub message: NewMessage,
    pub prompt_tokens_estimate: i64,
}

/// A reply found `streaming` after its process died.
#[derive(Debug, Clone)]
pub struct StaleReply {
    pub message: Message,
    pub user_id: String,
    pub persona_id: Id,
    pub prompt_tokens_estimate: Option<i64>,
}

#[derive(Debug, sqlx::FromRow)]
struct StaleRow {
    #[sqlx(flatten)]
    message: MessageRow,
    c_user_id: String,
    c_persona_id: Id,
    prompt_tokens_estimate: Option<i64>,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    Day,
    Model,
    Persona,
    User,
}

/// A usage query over the daily rollup.
#[derive(Debug, Clone)]
pub struct UsageQuery {
    /// One user, or everyone (admin views).
    pub user_id: Option<String>,
    /// First day, `YYYY-MM-DD` (UTC), inclusive.
    pub from_day: String,
    /// Last day, `YYYY-MM-DD` (UTC), inclusive.
    pub to_day: String,
    pub group_by: UsageGroup,
}

/// One group of usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct UsageBucket {
    /// The day, model alias, persona id (`""` for none) or user id.
    pub key: String,
    pub requests: i64,
    /// Requests whose counts were (partly) local estimates.
    pub estimated_requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub reasoning_tokens: i64,
    pub cost_nanousd: i64,
}

impl UsageBucket {
    /// A bucket with nothing in it.
    pub fn empty(key: String) -> Self {
        Self {
            key,
            requests: 0,
            estimated_requests: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            reasoning_tokens: 0,
            cost_nanousd: 0,
        }
    }
}

/// The dashboard summary of one user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageSummary {
    pub total_conversations: i64,
    pub total_messages: i64,
    pub total_tokens: i64,
    pub cost_nanousd: i64,
}

/// The UTC day of a timestamp, as the rollup keys it.
pub fn day_of(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d").to_string()
}

/// Storage interface shared by every backend. All user-scoped reads take the caller's `user_id` and return
/// `None`/`false` for rows of other users.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Backend name: `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Whether write transactions exclude each other (SQLite: one writer holds the database's lock, the others
    /// wait for it), so that writes are best queued in one line rather than run side by side ([`Writes`]).
    fn one_writer_at_a_time(&self) -> bool;
    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// A trivial query, for health checks.
    async fn ping(&self) -> StoreResult<()>;

    /// Inserts personas whose slug is not present yet; returns how many were inserted.
    async fn seed_personas(&self, personas: &[NewPersona]) -> StoreResult<u64>;
    async fn list_personas(&self, filter: &PersonaFilter) -> StoreResult<Vec<Persona>>;
    async fn get_persona(&self, id: Id) -> StoreResult<Option<Persona>>;
    /// # Errors
    /// [`StoreError::Conflict`] when the slug exists.
    async fn create_persona(&self, persona: &NewPersona) -> StoreResult<Persona>;
    /// Replaces the persona's fields; `None` when it does not exist.
    async fn update_persona(&self, id: Id, persona: &NewPersona) -> StoreResult<Option<Persona>>;
    /// # Errors
    /// [`StoreError::Conflict`] when conversations still refer to it.
    async fn delete_persona(&self, id: Id) -> StoreResult<bool>;

    async fn create_conversation(
        &self,
        user_id: &str,
        persona_id: Id,
        title: Option<&str>,
    ) -> StoreResult<Conversation>;
    /// The caller's most recently active, unarchived conversation with this persona.
    async fn latest_conversation(
        &self,
        user_id: &str,
        persona_id: Id,
    ) -> StoreResult<Option<Conversation>>;
    async fn list_conversations(
        &self,
        user_id: &str,
        filter: &ConversationFilter,
    ) -> StoreResult<Vec<ConversationSummary>>;
    async fn get_conversation(&self, user_id: &str, id: Id) -> StoreResult<Option<Conversation>>;
    /// Sets the title (`Some(None)` clears it) and/or the archived flag.
    async fn update_conversation(
        &self,
        user_id: &str,
        id: Id,
        title: Option<Option<&str>>,
        archived: Option<bool>,
    ) -> StoreResult<Option<Conversation>>;
    /// Records an uploaded file (after its bytes are stored).
    async fn insert_media(&self, media: &Media) -> StoreResult<()>;
    /// One of the caller's uploads; `None` for anyone else's.
    async fn get_media(&self, user_id: &str, id: Id) -> StoreResult<Option<Media>>;
    /// Deletes one of the caller's media records; `false` when it is not theirs or does not exist.
    async fn delete_media(&self, user_id: &str, id: Id) -> StoreResult<bool>;
    /// The storage keys of every media record, for the sweep that deletes files without one.
    async fn media_storage_keys(&self) -> StoreResult<Vec<String>>;
    /// Sets a generated title unless the conversation has one (a title the user set in the meantime wins);
    /// `None` when it has one, or is not the caller's.
    async fn title_if_untitled(
        &self,
        user_id: &str,
        id: Id,
        title: &str,
    ) -> StoreResult<Option<Conversation>>;
    /// Deletes the conversation and its messages (usage records stay, detached), and the media records only its
    /// messages used (the files go in the background sweep), in one transaction.
    async fn delete_conversation(&self, user_id: &str, id: Id) -> StoreResult<bool>;

    /// Writes every one of `writes` in one transaction, or none of them: each kind of row in one multi-row
    /// statement (new messages, their media links, replies, usage records), and the usage rollup summed per
    /// (user, day, model, persona) in one more. A lone new message without media is one statement and no
    /// transaction. On PostgreSQL a batch is one statement instead, each table's rows in a data-modifying `WITH`
    /// part (as atomic, one round trip). A batch with a new message uses the request pool, one of replies and
    /// usage records the background pool. [`GroupCommit`] sends concurrent writes through here together.
    ///
    /// Returns the time written as the replies' `updated_at`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a new message's id exists, a reply already has a usage record, or a
    /// conversation is gone; [`StoreError::Database`] when the database fails. Nothing is written then.
    async fn write_messages(&self, writes: &[MessageWrite]) -> StoreResult<DateTime<Utc>>;
    /// Inserts a message (its conversation's `last_message_at` bumped by a trigger), linking its media.
    ///
    /// # Errors
    /// As [`Store::write_messages`].
    async fn insert_message(&self, message: &NewMessage) -> StoreResult<Message> {
        self.write_messages(&[MessageWrite::Insert(message.clone())])
            .await?;
        Ok(Message::from_new(message, None))
    }
    async fn get_message(&self, user_id: &str, id: Id) -> StoreResult<Option<Message>>;
    /// Records messages' [`Message::content_tokens`] (id, tokens), each only where none is recorded yet, in
    /// one transaction; a message deleted meanwhile is skipped.
    async fn set_content_tokens(&self, counts: &[(Id, i64)]) -> StoreResult<()>;
    /// A page of history, `limit` messages, in `ascending` or descending `(created_at, id)` order. Unless
    /// `all_branches`, an assistant reply that was regenerated is left out: only the latest reply to each
    /// message is shown.
    async fn list_messages(
        &self,
        conversation_id: Id,
        page: HistoryPage,
        limit: i64,
        ascending: bool,
        all_branches: bool,
    ) -> StoreResult<Vec<Message>>;
    /// The caller's conversation and the history a prompt sends, in one statement (two when a regenerated reply
    /// falls in a full window): the newest `limit` messages of the conversation (only those before message
    /// `before`, when given), newest first, a regenerated reply left out as in [`Store::list_messages`]. The
    /// turns come as one JSON array aggregated by the database: on SQLite each row read costs a hand-off between
    /// sqlx's worker thread and the caller, and each statement a read transaction that starts with a page cache
    /// emptied by the last write; together these made the two reads most of a message's CPU.
    ///
    /// `None` when the conversation is not the caller's; no turns when `before` is not a message of it.
    async fn prompt_history(
        &self,
        user_id: &str,
        conversation_id: Id,
        before: Option<Id>,
        limit: i64,
    ) -> StoreResult<Option<PromptHistory>>;
    /// Deletes one of the caller's messages; `false` when it is not theirs or does not exist.
    async fn delete_message(&self, user_id: &str, id: Id) -> StoreResult<bool>;
    /// Creates or updates assistant messages while they stream (status `streaming`), in one transaction:
    /// their text so far, a heartbeat (`updated_at`) and the prompt's estimated tokens (to bill a reply whose
    /// process dies). A row that already has a final status is left alone. When the database refuses a row's
    /// data, each row is written again on its own, so one bad row never fails the others.
    ///
    /// Returns whether each row (in order) was written.
    ///
    /// # Errors
    /// When the database is unreachable (nothing was written).
    async fn checkpoint_messages(
        &self,
        rows: &[Checkpoint],
        instance_id: &str,
    ) -> StoreResult<Vec<bool>>;
    /// Writes a finished generation's assistant message (over its checkpoint, if any) and its usage record in
    /// one transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the message already has a usage record, or its conversation is gone.
    async fn save_generation(
        &self,
        message: &NewMessage,
        usage: &UsageRecord,
    ) -> StoreResult<Message> {
        let updated_at = self
            .write_messages(&[MessageWrite::Reply(message.clone(), usage.clone())])
            .await?;
        Ok(Message::saved(message, usage, updated_at))
    }
    /// Replies left `streaming` by a dead process: those of `instance_id` (this process's previous life), and
    /// any whose heartbeat is older than `stale_before`.
    async fn stale_replies(
        &self,
        instance_id: &str,
        stale_before: DateTime<Utc>,
    ) -> StoreResult<Vec<StaleReply>>;
    /// Marks a still-`streaming` reply `interrupted` and writes its usage record, in one transaction; `false`
    /// (and nothing written) when it is no longer streaming.
    async fn interrupt_reply(&self, message: &NewMessage, usage: &UsageRecord)
    -> StoreResult<bool>;
    /// Writes a usage record that belongs to no stored message (the stateless OpenAI-compatible endpoint), with
    /// its rollup, in one transaction.
    async fn record_usage(&self, usage: &UsageRecord) -> StoreResult<()> {
        self.write_messages(&[MessageWrite::Usage(usage.clone())])
            .await
            .map(drop)
    }
    /// Usage from the daily rollup, grouped, for one user or (`None`) everyone.
    async fn usage_buckets(&self, query: &UsageQuery) -> StoreResult<Vec<UsageBucket>>;
    /// A version of a user's (or everyone's) usage: the last rollup change and the number of rollup rows.
    /// Changes whenever a usage record is written.
    async fn usage_stamp(&self, user_id: Option<&str>)
    -> StoreResult<(Option<DateTime<Utc>>, i64)>;
    /// A user's totals for the dashboard summary.
    async fn usage_summary(&self, user_id: &str) -> StoreResult<UsageSummary>;
    /// A user's `(total tokens, cost in nano-USD)` from `from_day` (`YYYY-MM-DD`, UTC) on, for budgets.
    async fn usage_since(&self, user_id: &str, from_day: &str) -> StoreResult<(i64, i64)>;
    /// Usage records of one message.
    async fn usage_for_message(&self, message_id: Id) -> StoreResult<Vec<UsageRecord>>;
}

/// Connections of the background-write pool beside a request pool of `max_connections`: half as many, at
/// least one.
pub fn background_connections(max_connections: u32) -> u32 {
    max_connections.div_ceil(2).max(1)
}

/// How long a background write may wait for a connection: long, since nobody waits on it, and a persist that
/// gives up is retried.
const BACKGROUND_ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the backend named by the URL's scheme (`sqlite:` or `postgres://`), creating a SQLite file and its
/// folder when missing. Each backend keeps two pools: `max_connections` for requests, and
/// [`background_connections`] for the writes off the request path, so a slow database never makes a new
/// request wait behind them.
///
/// # Errors
/// [`StoreError::Database`] when the database cannot be reached; [`StoreError::TransactionPooler`] for a
/// PostgreSQL URL through a pooler in transaction mode.
pub async fn connect(url: &str, max_connections: u32) -> StoreResult<std::sync::Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(std::sync::Arc::new(
            SqliteStore::connect(url, max_connections).await?,
        ))
    } else {
        Ok(std::sync::Arc::new(
            PgStore::connect(url, max_connections).await?,
        ))
    }
}

fn map_write_error(err: sqlx::Error, what: &str) -> StoreError {
    match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict(format!("{what} already exists"))
        }
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::Conflict(
            format!("{what} refers to a missing row or is still referred to"),
        ),
        _ => StoreError::Database(err),
    }
}

fn preview(content: &str) -> String {
    match content.char_indices().nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", &content[..cut]),
        None => content.to_string(),
    }
}
