//! The queries of [`Store`](super::Store), written once as plain functions and compiled once per backend: the
//! backend's module (`sqlite.rs`, `postgres.rs`) includes this file with `#[path]` after naming its database
//! (`Db`), its store type (`Backend`) and its name (`BACKEND`).
//!
//! The SQL is the common subset of SQLite (≥ 3.35) and PostgreSQL: `$N` parameters (SQLite accepts them),
//! `RETURNING`, row-value comparisons, `ON CONFLICT DO NOTHING`. Types that differ (ids, timestamps, JSON)
//! are handled by their Rust encodings ([`Id`](crate::id::Id), `DateTime<Utc>`, `Json<T>`).

use chrono::{DateTime, Utc};
use sqlx::types::Json;

use super::{
    BACKEND, Backend, Db, HISTORY_TURNS_ORDERED, ONE_WRITER_AT_A_TIME, WRITES_IN_ONE_STATEMENT,
};
use crate::domain::{MessageStatus, Role};
use crate::store::*;

macro_rules! persona_columns {
    () => {
        "id, slug, display_name, avatar_url, description, category, relationship, system_prompt, \
         personality_traits, model, is_active, created_at, updated_at"
    };
}

macro_rules! persona_insert {
    () => {
        "INSERT INTO personas (id, slug, display_name, avatar_url, description, category, relationship, \
         system_prompt, personality_traits, model, is_active, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)"
    };
}

macro_rules! conversation_columns {
    () => {
        "c.id, c.user_id, c.persona_id, c.title, c.archived, c.created_at, c.updated_at, c.last_message_at"
    };
}

macro_rules! conversation_returning {
    () => {
        "id, user_id, persona_id, title, archived, created_at, updated_at, last_message_at"
    };
}

macro_rules! message_columns {
    () => {
        "m.id, m.conversation_id, m.parent_id, m.role, m.content, m.message_type, m.media, m.status, \
         m.model, m.provider, m.finish_reason, m.error, m.created_at, m.updated_at, m.content_tokens, \
         u.prompt_tokens AS u_prompt_tokens, u.completion_tokens AS u_completion_tokens, \
         u.upstream_model AS u_upstream_model, u.duration_ms AS u_duration_ms, u.ttft_ms AS u_ttft_ms, \
         u.cost_nanousd AS u_cost_nanousd"
    };
}

macro_rules! message_select {
    () => {
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages m LEFT JOIN usage_records u ON u.message_id = m.id "
        )
    };
}

/// Only the latest reply to each message (a regenerated reply left out), for a read that never shows every branch.
macro_rules! latest_branch_only {
    () => {
        concat!("AND (", latest_reply!(), ") ")
    };
}

/// [`latest_branch_only!`] unless `$4` (show every branch) is true.
macro_rules! branch_filter {
    () => {
        concat!("AND ($4 OR ", latest_reply!(), ") ")
    };
}

/// True for a message that is not an assistant reply a later sibling replaced.
macro_rules! latest_reply {
    () => {
        "m.role <> 'assistant' OR m.parent_id IS NULL OR NOT EXISTS \
         (SELECT 1 FROM messages s WHERE s.parent_id = m.parent_id AND s.role = 'assistant' \
          AND (s.created_at, s.id) > (m.created_at, m.id))"
    };
}

/// The sums of a usage bucket over the rollup.
macro_rules! usage_sums {
    () => {
        "COALESCE(CAST(SUM(requests) AS BIGINT), 0) AS requests, \
         COALESCE(CAST(SUM(estimated_requests) AS BIGINT), 0) AS estimated_requests, \
         COALESCE(CAST(SUM(prompt_tokens) AS BIGINT), 0) AS prompt_tokens, \
         COALESCE(CAST(SUM(completion_tokens) AS BIGINT), 0) AS completion_tokens, \
         COALESCE(CAST(SUM(cached_tokens) AS BIGINT), 0) AS cached_tokens, \
         COALESCE(CAST(SUM(reasoning_tokens) AS BIGINT), 0) AS reasoning_tokens, \
         COALESCE(CAST(SUM(cost_nanousd) AS BIGINT), 0) AS cost_nanousd"
    };
}

macro_rules! usage_columns {
    () => {
        "id, user_id, conversation_id, message_id, persona_id, model, upstream_model, provider, prompt_tokens, \
         completion_tokens, cached_tokens, reasoning_tokens, estimated, cost_nanousd, ttft_ms, duration_ms, created_at"
    };
}

#[async_trait::async_trait]
impl Store for Backend {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn one_writer_at_a_time(&self) -> bool {
        ONE_WRITER_AT_A_TIME
    }

    async fn migrate(&self) -> StoreResult<()> {
        self.migrator()
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn seed_personas(&self, personas: &[NewPersona]) -> StoreResult<u64> {
        let mut inserted = 0;
        let mut tx = self.pool.begin().await?;
        for p in personas {
            if insert_persona(&mut tx, p, true).await?.is_some() {
                inserted += 1;
            }
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn list_personas(&self, filter: &PersonaFilter) -> StoreResult<Vec<Persona>> {
        Ok(sqlx::query_as::<_, Persona>(concat!(
            "SELECT ",
            persona_columns!(),
            " FROM personas WHERE ($1 IS NULL OR category = $1) AND ($2 OR is_active) \
             ORDER BY display_name, id LIMIT $3 OFFSET $4"
        ))
        .bind(&filter.category)
        .bind(filter.include_inactive)
        .bind(filter.limit)
        .bind(filter.offset)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_persona(&self, id: Id) -> StoreResult<Option<Persona>> {
        Ok(sqlx::query_as::<_, Persona>(concat!(
            "SELECT ",
            persona_columns!(),
            " FROM personas WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn create_persona(&self, p: &NewPersona) -> StoreResult<Persona> {
        let mut conn = self.pool.acquire().await?;
        insert_persona(&mut conn, p, false)
            .await?
            .ok_or_else(|| StoreError::Conflict("a persona with this slug already exists".into()))
    }

    async fn update_persona(&self, id: Id, p: &NewPersona) -> StoreResult<Option<Persona>> {
        sqlx::query_as::<_, Persona>(concat!(
            "UPDATE personas SET slug = $2, display_name = $3, avatar_url = $4, description = $5, category = $6, \
             relationship = $7, system_prompt = $8, personality_traits = $9, model = $10, is_active = $11, \
             updated_at = $12 WHERE id = $1 RETURNING ",
            persona_columns!()
        ))
        .bind(id)
        .bind(&p.slug)
        .bind(&p.display_name)
        .bind(&p.avatar_url)
        .bind(&p.description)
        .bind(&p.category)
        .bind(&p.relationship)
        .bind(&p.system_prompt)
        .bind(Json(&p.personality_traits))
        .bind(&p.model)
        .bind(p.is_active)
        .bind(now())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| map_write_error(e, "a persona with this slug"))
    }

    async fn delete_persona(&self, id: Id) -> StoreResult<bool> {
        let in_use: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM conversations WHERE persona_id = $1")
                .bind(id)
                .fetch_one(&self.pool)
                .await?;
        if in_use > 0 {
            return Err(StoreError::Conflict(format!(
                "the persona has {in_use} conversation(s); set is_active = false to retire it instead"
            )));
        }
        let result = sqlx::query("DELETE FROM personas WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| map_write_error(e, "the persona"))?;
        Ok(result.rows_affected() > 0)
    }

    async fn create_conversation(
        &self,
        user_id: &str,
        persona_id: Id,
        title: Option<&str>,
    ) -> StoreResult<Conversation> {
        let now = now();
        sqlx::query_as::<_, Conversation>(concat!(
            "INSERT INTO conversations (id, user_id, persona_id, title, archived, created_at, updated_at, \
             last_message_at) VALUES ($1, $2, $3, $4, $5, $6, $6, $6) RETURNING ",
            conversation_returning!()
        ))
        .bind(Id::new())
        .bind(user_id)
        .bind(persona_id)
        .bind(title)
        .bind(false)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| map_write_error(e, "the conversation"))
    }

    async fn latest_conversation(
        &self,
        user_id: &str,
        persona_id: Id,
    ) -> StoreResult<Option<Conversation>> {
        Ok(sqlx::query_as::<_, Conversation>(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations c WHERE c.user_id = $1 AND c.persona_id = $2 AND NOT c.archived \
             ORDER BY c.last_message_at DESC, c.id DESC LIMIT 1"
        ))
        .bind(user_id)
        .bind(persona_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn list_conversations(
        &self,
        user_id: &str,
        filter: &ConversationFilter,
    ) -> StoreResult<Vec<ConversationSummary>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            #[sqlx(flatten)]
            conversation: Conversation,
            lm_id: Option<Id>,
            lm_role: Option<Role>,
            lm_content: Option<String>,
            lm_created_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let (after_at, after_id) = filter
            .after
            .map_or((None, None), |(at, id)| (Some(at), Some(id)));
        let rows = sqlx::query_as::<_, Row>(concat!(
            "SELECT ",
            conversation_columns!(),
            ", lm.id AS lm_id, lm.role AS lm_role, SUBSTR(lm.content, 1, 161) AS lm_content, \
             lm.created_at AS lm_created_at \
             FROM conversations c \
             LEFT JOIN messages lm ON lm.id = (SELECT m.id FROM messages m WHERE m.conversation_id = c.id \
               ORDER BY m.created_at DESC, m.id DESC LIMIT 1) \
             WHERE c.user_id = $1 AND ($2 IS NULL OR c.persona_id = $2) AND ($3 IS NULL OR c.archived = $3) \
               AND ($4 IS NULL OR (c.last_message_at, c.id) < ($4, $5)) \
             ORDER BY c.last_message_at DESC, c.id DESC LIMIT $6"
        ))
        .bind(user_id)
        .bind(filter.persona_id)
        .bind(filter.archived)
        .bind(after_at)
        .bind(after_id)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConversationSummary {
                conversation: r.conversation,
                last_message: match (r.lm_id, r.lm_role, r.lm_content, r.lm_created_at) {
                    (Some(id), Some(role), Some(content), Some(created_at)) => {
                        Some(MessagePreview {
                            id,
                            role,
                            content: preview(&content),
                            created_at,
                        })
                    }
                    _ => None,
                },
            })
            .collect())
    }

    async fn get_conversation(&self, user_id: &str, id: Id) -> StoreResult<Option<Conversation>> {
        Ok(sqlx::query_as::<_, Conversation>(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations c WHERE c.id = $1 AND c.user_id = $2"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn update_conversation(
        &self,
        user_id: &str,
        id: Id,
        title: Option<Option<&str>>,
        archived: Option<bool>,
    ) -> StoreResult<Option<Conversation>> {
        Ok(sqlx::query_as::<_, Conversation>(concat!(
            "UPDATE conversations SET title = CASE WHEN $3 THEN $4 ELSE title END, \
             archived = COALESCE($5, archived), updated_at = $6 WHERE id = $1 AND user_id = $2 RETURNING ",
            conversation_returning!()
        ))
        .bind(id)
        .bind(user_id)
        .bind(title.is_some())
        .bind(title.flatten())
        .bind(archived)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn title_if_untitled(
        &self,
        user_id: &str,
        id: Id,
        title: &str,
    ) -> StoreResult<Option<Conversation>> {
        Ok(sqlx::query_as::<_, Conversation>(concat!(
            "UPDATE conversations SET title = $3, updated_at = $4 \
             WHERE id = $1 AND user_id = $2 AND title IS NULL RETURNING ",
            conversation_returning!()
        ))
        .bind(id)
        .bind(user_id)
        .bind(title)
        .bind(now())
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn delete_conversation(&self, user_id: &str, id: Id) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        // The media its messages used, unless a message of another conversation uses them too.
        sqlx::query(
            "DELETE FROM media WHERE user_id = $2 AND id IN (\
               SELECT mm.media_id FROM message_media mm JOIN messages m ON m.id = mm.message_id \
               JOIN conversations c ON c.id = m.conversation_id \
               WHERE m.conversation_id = $1 AND c.user_id = $2) \
             AND id NOT IN (\
               SELECT mm.media_id FROM message_media mm JOIN messages m ON m.id = mm.message_id \
               WHERE m.conversation_id <> $1)",
        )
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        let result = sqlx::query("DELETE FROM conversations WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(result.rows_affected() > 0)
    }

    async fn write_messages(&self, writes: &[MessageWrite]) -> StoreResult<DateTime<Utc>> {
        let updated_at = now();
        let (mut inserts, mut replies, mut usage) = (Vec::new(), Vec::new(), Vec::new());
        for write in writes {
            match write {
                MessageWrite::Insert(m) => inserts.push(MessageInsert::new(m, m.created_at)),
                MessageWrite::Reply(m, u) => {
                    replies.push(MessageInsert::new(m, updated_at));
                    usage.push(u);
                }
                MessageWrite::Usage(u) => usage.push(u),
            }
        }
        // In conversation order, as checkpoints are: concurrent multi-row statements on PostgreSQL (a batch of new
        // messages, a checkpoint) then bump the conversations' rows (a trigger does) in one order, and cannot
        // deadlock.
        inserts.sort_by_key(|row| row.message.conversation_id);
        replies.sort_by_key(|row| row.message.conversation_id);
        let links: Vec<(Id, Id)> = inserts
            .iter()
            .flat_map(|row| {
                let id = row.message.id;
                media_ids_of(&row.message.media)
                    .into_iter()
                    .map(move |media| (id, media))
            })
            .collect();
        if replies.is_empty() && usage.is_empty() && links.is_empty() {
            // One statement (the common send: a user message without media) needs no transaction.
            if !inserts.is_empty() {
                let mut conn = self.pool.acquire().await?;
                write_message_rows(&mut conn, &inserts, OnConflict::Fail).await?;
            }
            return Ok(updated_at);
        }
        // A request waits for its new message; replies and usage are background writes, on their own pool.
        let pool = if inserts.is_empty() {
            &self.background
        } else {
            &self.pool
        };
        if WRITES_IN_ONE_STATEMENT {
            let mut conn = pool.acquire().await?;
            write_in_one_statement(&mut conn, &inserts, &links, &replies, &usage).await?;
            return Ok(updated_at);
        }
        let mut tx = pool.begin().await?;
        write_message_rows(&mut tx, &inserts, OnConflict::Fail).await?;
        if !links.is_empty() {
            let mut query = sqlx::QueryBuilder::<Db>::new("");
            push_media_links(&mut query, &links);
            execute_rows(&mut tx, &mut query, links.len())
                .await
                .map_err(|e| map_write_error(e, MESSAGE_MEDIA))?;
        }
        write_message_rows(&mut tx, &replies, OnConflict::Update).await?;
        insert_usage(&mut tx, &usage).await?;
        tx.commit().await?;
        Ok(updated_at)
    }

    async fn set_content_tokens(&self, counts: &[(Id, i64)]) -> StoreResult<()> {
        if counts.is_empty() {
            return Ok(());
        }
        let mut tx = self.background.begin().await?;
        for (id, tokens) in counts {
            sqlx::query(
                "UPDATE messages SET content_tokens = $2 WHERE id = $1 AND content_tokens IS NULL",
            )
            .bind(id)
            .bind(tokens)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn insert_media(&self, media: &Media) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO media (id, user_id, content_type, size_bytes, sha256, storage_key, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(media.id)
        .bind(&media.user_id)
        .bind(&media.content_type)
        .bind(media.size_bytes)
        .bind(&media.sha256)
        .bind(&media.storage_key)
        .bind(media.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| map_write_error(e, "the media"))?;
        Ok(())
    }

    async fn get_media(&self, user_id: &str, id: Id) -> StoreResult<Option<Media>> {
        Ok(sqlx::query_as::<_, Media>(
            "SELECT id, user_id, content_type, size_bytes, sha256, storage_key, created_at \
             FROM media WHERE id = $1 AND user_id = $2",
        )
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn delete_media(&self, user_id: &str, id: Id) -> StoreResult<bool> {
        let result = sqlx::query("DELETE FROM media WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn media_storage_keys(&self) -> StoreResult<Vec<String>> {
        Ok(
            sqlx::query_scalar::<_, String>("SELECT storage_key FROM media")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn get_message(&self, user_id: &str, id: Id) -> StoreResult<Option<Message>> {
        let row = sqlx::query_as::<_, MessageRow>(concat!(
            message_select!(),
            "JOIN conversations c ON c.id = m.conversation_id WHERE m.id = $1 AND c.user_id = $2"
        ))
        .bind(id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(Message::from))
    }

    async fn list_messages(
        &self,
        conversation_id: Id,
        page: HistoryPage,
        limit: i64,
        ascending: bool,
        all_branches: bool,
    ) -> StoreResult<Vec<Message>> {
        let query = match (page, ascending) {
            (HistoryPage::Offset(_), true) => sqlx::query_as::<_, MessageRow>(concat!(
                message_select!(),
                "WHERE m.conversation_id = $1 ",
                branch_filter!(),
                "ORDER BY m.created_at ASC, m.id ASC LIMIT $2 OFFSET $3"
            )),
            (HistoryPage::Offset(_), false) => sqlx::query_as::<_, MessageRow>(concat!(
                message_select!(),
                "WHERE m.conversation_id = $1 ",
                branch_filter!(),
                "ORDER BY m.created_at DESC, m.id DESC LIMIT $2 OFFSET $3"
            )),
            (HistoryPage::Before(_), _) => sqlx::query_as::<_, MessageRow>(concat!(
                message_select!(),
                "WHERE m.conversation_id = $1 AND (m.created_at, m.id) < \
                 (SELECT x.created_at, x.id FROM messages x WHERE x.id = $3 AND x.conversation_id = $1) ",
                branch_filter!(),
                "ORDER BY m.created_at DESC, m.id DESC LIMIT $2"
            )),
            (HistoryPage::After(_), _) => sqlx::query_as::<_, MessageRow>(concat!(
                message_select!(),
                "WHERE m.conversation_id = $1 AND (m.created_at, m.id) > \
                 (SELECT x.created_at, x.id FROM messages x WHERE x.id = $3 AND x.conversation_id = $1) ",
                branch_filter!(),
                "ORDER BY m.created_at ASC, m.id ASC LIMIT $2"
            )),
        };
        let query = query.bind(conversation_id).bind(limit);
        let query = match page {
            HistoryPage::Offset(offset) => query.bind(offset),
            HistoryPage::Before(id) | HistoryPage::After(id) => query.bind(id),
        };
        let query = query.bind(all_branches);
        let mut messages: Vec<Message> = query
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(Message::from)
            .collect();
        // Keyset pages are read walking away from the cursor; present them in the order asked for.
        let read_ascending = match page {
            HistoryPage::Offset(_) => ascending,
            HistoryPage::Before(_) => false,
            HistoryPage::After(_) => true,
        };
        if read_ascending != ascending {
            messages.reverse();
        }
        Ok(messages)
    }

    async fn prompt_history(
        &self,
        user_id: &str,
        conversation_id: Id,
        before: Option<Id>,
        limit: i64,
    ) -> StoreResult<Option<PromptHistory>> {
        // Without a cursor, the newest `limit` messages are read as they are and a replaced reply is dropped
        // here: every later sibling of a message in that window is in it too, since the window is the newest.
        // In SQL, that filter is a correlated subquery a reply (a fifth of the statement's instructions at 200
        // turns, callgrind). When it dropped a turn from a full window, the exact statement fills the window.
        if before.is_none() {
            let Some((conversation, turns)) =
                read_prompt_history(&self.pool, user_id, conversation_id, None, limit, false)
                    .await?
            else {
                return Ok(None);
            };
            let fetched = turns.len();
            let turns = history_turns(turns, true);
            if turns.len() == fetched || i64::try_from(fetched).is_ok_and(|n| n < limit) {
                return Ok(Some(PromptHistory {
                    conversation,
                    turns,
                }));
            }
        }
        Ok(
            read_prompt_history(&self.pool, user_id, conversation_id, before, limit, true)
                .await?
                .map(|(conversation, turns)| PromptHistory {
                    conversation,
                    turns: history_turns(turns, false),
                }),
        )
    }

    async fn delete_message(&self, user_id: &str, id: Id) -> StoreResult<bool> {
        let result = sqlx::query(
            "DELETE FROM messages WHERE id = $1 AND conversation_id IN \
             (SELECT id FROM conversations WHERE user_id = $2)",
        )
        .bind(id)
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn checkpoint_messages(
        &self,
        rows: &[Checkpoint],
        instance_id: &str,
    ) -> StoreResult<Vec<bool>> {
        let batch_error = match write_checkpoint_rows(&self.background, rows, instance_id).await {
            Ok(()) => return Ok(vec![true; rows.len()]),
            Err(err) => err,
        };
        // The database refused a row's data (not an outage): one bad row must never cost the others their
        // checkpoint, so each is written again on its own.
        let refused_data = matches!(&batch_error, StoreError::Database(sqlx::Error::Database(_)));
        if !refused_data || rows.len() == 1 {
            return Err(batch_error);
        }
        let mut written = Vec::with_capacity(rows.len());
        for row in rows {
            match write_checkpoint_rows(&self.background, std::slice::from_ref(row), instance_id)
                .await
            {
                Ok(()) => written.push(true),
                Err(err) => {
                    tracing::warn!(message_id = %row.message.id, error = %err, "a reply's checkpoint was refused");
                    written.push(false);
                }
            }
        }
        Ok(written)
    }

    async fn stale_replies(
        &self,
        instance_id: &str,
        stale_before: chrono::DateTime<chrono::Utc>,
    ) -> StoreResult<Vec<StaleReply>> {
        let rows = sqlx::query_as::<_, StaleRow>(concat!(
            "SELECT ",
            message_columns!(),
            ", c.user_id AS c_user_id, c.persona_id AS c_persona_id, m.prompt_tokens_estimate ",
            "FROM messages m LEFT JOIN usage_records u ON u.message_id = m.id ",
            "JOIN conversations c ON c.id = m.conversation_id ",
            "WHERE m.status = $3 AND (m.instance_id = $1 OR m.updated_at < $2)"
        ))
        .bind(instance_id)
        .bind(stale_before)
        .bind(MessageStatus::Streaming)
        .fetch_all(&self.background)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StaleReply {
                message: r.message.into(),
                user_id: r.c_user_id,
                persona_id: r.c_persona_id,
                prompt_tokens_estimate: r.prompt_tokens_estimate,
            })
            .collect())
    }

    async fn interrupt_reply(&self, m: &NewMessage, u: &UsageRecord) -> StoreResult<bool> {
        let mut tx = self.background.begin().await?;
        let updated = sqlx::query(
            "UPDATE messages SET status = $2, finish_reason = $3, error = $4, updated_at = $5 \
             WHERE id = $1 AND status = $6",
        )
        .bind(m.id)
        .bind(m.status)
        .bind(&m.finish_reason)
        .bind(&m.error)
        .bind(now())
        .bind(MessageStatus::Streaming)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        insert_usage(&mut tx, &[u]).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn usage_buckets(&self, q: &UsageQuery) -> StoreResult<Vec<UsageBucket>> {
        // One statement per shape: a `($1 IS NULL OR user_id = $1)` filter would keep both SQLite and
        // PostgreSQL from using the (user_id, day, ...) key.
        macro_rules! buckets {
            ($key:literal, $filter:literal) => {
                sqlx::query_as::<_, UsageBucket>(concat!(
                    "SELECT ",
                    $key,
                    " AS key, ",
                    usage_sums!(),
                    " FROM usage_daily WHERE ",
                    $filter,
                    " GROUP BY ",
                    $key,
                    " ORDER BY ",
                    $key
                ))
            };
        }
        let query = match (q.group_by, q.user_id.is_some()) {
            (UsageGroup::Day, true) => buckets!("day", "user_id = $1 AND day >= $2 AND day <= $3"),
            (UsageGroup::Model, true) => {
                buckets!("model", "user_id = $1 AND day >= $2 AND day <= $3")
            }
            (UsageGroup::Persona, true) => {
                buckets!("persona_id", "user_id = $1 AND day >= $2 AND day <= $3")
            }
            (UsageGroup::User, true) => {
                buckets!("user_id", "user_id = $1 AND day >= $2 AND day <= $3")
            }
            (UsageGroup::Day, false) => buckets!("day", "$1 IS NULL AND day >= $2 AND day <= $3"),
            (UsageGroup::Model, false) => {
                buckets!("model", "$1 IS NULL AND day >= $2 AND day <= $3")
            }
            (UsageGroup::Persona, false) => {
                buckets!("persona_id", "$1 IS NULL AND day >= $2 AND day <= $3")
            }
            (UsageGroup::User, false) => {
                buckets!("user_id", "$1 IS NULL AND day >= $2 AND day <= $3")
            }
        };
        Ok(query
            .bind(&q.user_id)
            .bind(&q.from_day)
            .bind(&q.to_day)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn usage_stamp(
        &self,
        user_id: Option<&str>,
    ) -> StoreResult<(Option<chrono::DateTime<chrono::Utc>>, i64)> {
        let query = match user_id {
            Some(_) => sqlx::query_as(
                "SELECT MAX(updated_at), COUNT(*) FROM usage_daily WHERE user_id = $1",
            ),
            None => {
                sqlx::query_as("SELECT MAX(updated_at), COUNT(*) FROM usage_daily WHERE $1 IS NULL")
            }
        };
        Ok(query.bind(user_id).fetch_one(&self.pool).await?)
    }

    async fn usage_summary(&self, user_id: &str) -> StoreResult<UsageSummary> {
        let total_conversations: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM conversations WHERE user_id = $1")
                .bind(user_id)
                .fetch_one(&self.pool)
                .await?;
        let total_messages: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE c.user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        let (total_tokens, cost_nanousd): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), 0), \
             COALESCE(CAST(SUM(cost_nanousd) AS BIGINT), 0) FROM usage_daily WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(UsageSummary {
            total_conversations,
            total_messages,
            total_tokens,
            cost_nanousd,
        })
    }

    async fn usage_since(&self, user_id: &str, from_day: &str) -> StoreResult<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT COALESCE(CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT), 0), \
             COALESCE(CAST(SUM(cost_nanousd) AS BIGINT), 0) FROM usage_daily WHERE user_id = $1 AND day >= $2",
        )
        .bind(user_id)
        .bind(from_day)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn usage_for_message(&self, message_id: Id) -> StoreResult<Vec<UsageRecord>> {
        Ok(sqlx::query_as::<_, UsageRecord>(concat!(
            "SELECT ",
            usage_columns!(),
            " FROM usage_records WHERE message_id = $1 ORDER BY created_at"
        ))
        .bind(message_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The one INSERT of the `personas` table; with `skip_existing`, a persona whose slug exists is left alone
/// (`None`), else that is a conflict.
async fn insert_persona(
    conn: &mut <Db as sqlx::Database>::Connection,
    p: &NewPersona,
    skip_existing: bool,
) -> StoreResult<Option<Persona>> {
    let sql = if skip_existing {
        concat!(
            persona_insert!(),
            " ON CONFLICT (slug) DO NOTHING RETURNING ",
            persona_columns!()
        )
    } else {
        concat!(persona_insert!(), " RETURNING ", persona_columns!())
    };
    sqlx::query_as::<_, Persona>(sql)
        .bind(Id::new())
        .bind(&p.slug)
        .bind(&p.display_name)
        .bind(&p.avatar_url)
        .bind(&p.description)
        .bind(&p.category)
        .bind(&p.relationship)
        .bind(&p.system_prompt)
        .bind(Json(&p.personality_traits))
        .bind(&p.model)
        .bind(p.is_active)
        .bind(now())
        .fetch_optional(conn)
        .await
        .map_err(|e| map_write_error(e, "a persona with this slug"))
}

/// The caller's conversation and the newest `limit` messages of its history (those before message `before`,
/// when given), newest first, in one statement; `latest_branch` leaves out the replies a later sibling replaced.
/// `None` when the conversation is not the caller's.
async fn read_prompt_history(
    pool: &sqlx::Pool<Db>,
    user_id: &str,
    conversation_id: Id,
    before: Option<Id>,
    limit: i64,
    latest_branch: bool,
) -> StoreResult<Option<(Conversation, Vec<TurnRow>)>> {
    // The turns, as `[[id, role, content, message_type, media, content_tokens, parent_id, created_at?], ...]`:
    // the aggregate and what it reads are the backend's (`history_turns_json!`, `history_turn!`); NULL for no turn.
    // The limit is written into the statement, not bound: SQLite plans with a bound LIMIT's value, so each
    // new binding expired the statement and every message re-prepared it (`sqlite3Reprepare`, 9 % of a
    // message's CPU in the profile). It is an integer, and the same one on every call
    // (`generation.max_history_messages`), so the statement cache still hits.
    let cursor = if before.is_some() {
        "AND (m.created_at, m.id) < \
         (SELECT x.created_at, x.id FROM messages x WHERE x.id = $3 AND x.conversation_id = $1) "
    } else {
        ""
    };
    let sql = format!(
        concat!(
            "SELECT ",
            conversation_columns!(),
            ", (SELECT ",
            history_turns_json!(),
            " FROM (SELECT ",
            history_turn!(),
            " FROM messages m WHERE m.conversation_id = $1 {cursor}{branch}\
             ORDER BY m.created_at DESC, m.id DESC LIMIT {limit}) h) AS turns \
             FROM conversations c WHERE c.id = $1 AND c.user_id = $2"
        ),
        cursor = cursor,
        branch = if latest_branch {
            latest_branch_only!()
        } else {
            ""
        },
        limit = limit.max(0),
    );
    let query = sqlx::query_as::<_, PromptHistoryRow>(sqlx::AssertSqlSafe(sql))
        .bind(conversation_id)
        .bind(user_id);
    let query = match before {
        Some(before) => query.bind(before),
        None => query,
    };
    Ok(query.fetch_optional(pool).await?.map(|row| {
        let mut turns = row.turns.map(|JsonText(turns)| turns).unwrap_or_default();
        if !HISTORY_TURNS_ORDERED {
            // Newest first, as `ORDER BY created_at DESC, id DESC` orders them: both are TEXT there, compared
            // byte by byte, and an id's text sorts as its bytes do. Linear on turns already in order.
            turns.sort_by(|a, b| (&b.created_at, b.id).cmp(&(&a.created_at, a.id)));
        }
        (row.conversation, turns)
    }))
}

/// The [`HistoryTurn`]s of a window of history read newest first, without the replies a later sibling (a
/// regenerated reply to the same message) replaced when `latest_replies_only`: the first reply met to each
/// message is its latest.
///
/// Into a new `Vec` of their own size: `collect()` would reuse the rows' larger buffer in place and shrink it
/// with a `realloc`, which left glibc's heap fragmented: the 4-minute soak's RSS went from 185 to 405 MB.
fn history_turns(rows: Vec<TurnRow>, latest_replies_only: bool) -> Vec<HistoryTurn> {
    let mut answered = std::collections::HashSet::new();
    let mut turns = Vec::with_capacity(rows.len());
    for row in rows {
        let replaced = latest_replies_only
            && row.role == Role::Assistant
            && row.parent_id.is_some_and(|parent| !answered.insert(parent));
        if !replaced {
            turns.push(HistoryTurn::from(row));
        }
    }
    turns
}

/// The row of [`read_prompt_history`].
#[derive(sqlx::FromRow)]
struct PromptHistoryRow {
    #[sqlx(flatten)]
    conversation: Conversation,
    turns: Option<JsonText<Vec<TurnRow>>>,
}

/// A JSON document read from a text column with `serde_json::from_str`. sqlx's `Json<T>` reads it as bytes,
/// and serde then checks each string in it for UTF-8 again (`from_utf8` was 2 % of a message's instructions,
/// the history's text); text was checked once, as a whole, when it was read.
struct JsonText<T>(T);

impl<T> sqlx::Type<Db> for JsonText<T> {
    fn type_info() -> <Db as sqlx::Database>::TypeInfo {
        <str as sqlx::Type<Db>>::type_info()
    }

    fn compatible(ty: &<Db as sqlx::Database>::TypeInfo) -> bool {
        <str as sqlx::Type<Db>>::compatible(ty)
    }
}

impl<'r, T: serde::de::DeserializeOwned> sqlx::Decode<'r, Db> for JsonText<T> {
    fn decode(
        value: <Db as sqlx::Database>::ValueRef<'r>,
    ) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<'r, Db>>::decode(value)?;
        Ok(JsonText(serde_json::from_str(text)?))
    }
}

/// A turn as [`read_prompt_history`] reads it (a JSON array): the [`HistoryTurn`], then what ordering and the
/// branch filter need.
#[derive(Deserialize)]
struct TurnRow {
    id: Id,
    role: Role,
    content: String,
    message_type: MessageType,
    media: serde_json::Value,
    content_tokens: Option<i64>,
    parent_id: Option<Id>,
    /// The stored `created_at` text, where the backend's aggregate leaves the turns unordered
    /// ([`HISTORY_TURNS_ORDERED`]); absent otherwise.
    #[serde(default)]
    created_at: Option<String>,
}

impl From<TurnRow> for HistoryTurn {
    fn from(t: TurnRow) -> Self {
        HistoryTurn {
            id: t.id,
            role: t.role,
            content: t.content,
            message_type: t.message_type,
            media: t.media,
            content_tokens: t.content_tokens,
        }
    }
}

/// What [`write_message_rows`] does when a message's row exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnConflict {
    /// Fails (a new message).
    Fail,
    /// Updates the text and heartbeat of a row still `streaming`; a row with a final status is left alone (a
    /// late checkpoint).
    UpdateWhileStreaming,
    /// Overwrites the text, status and outcome (the final save, over the last checkpoint).
    Update,
}

impl OnConflict {
    fn clause(self) -> &'static str {
        match self {
            OnConflict::Fail => "",
            OnConflict::UpdateWhileStreaming => {
                " ON CONFLICT (id) DO UPDATE SET content = excluded.content, updated_at = excluded.updated_at \
                 WHERE messages.status = excluded.status"
            }
            OnConflict::Update => {
                " ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status, \
                 model = excluded.model, provider = excluded.provider, finish_reason = excluded.finish_reason, \
                 error = excluded.error, updated_at = excluded.updated_at, content_tokens = excluded.content_tokens"
            }
        }
    }
}

/// One row of the `messages` INSERT. `updated_at` is the row's heartbeat; `checkpoint` is the instance writing
/// a streaming reply and the prompt's estimated tokens, for billing it should that instance die.
struct MessageInsert<'a> {
    message: &'a NewMessage,
    updated_at: DateTime<Utc>,
    checkpoint: Option<(&'a str, i64)>,
}

impl<'a> MessageInsert<'a> {
    fn new(message: &'a NewMessage, updated_at: DateTime<Utc>) -> Self {
        Self {
            message,
            updated_at,
            checkpoint: None,
        }
    }
}

/// The most rows a multi-row statement ([`execute_rows`]) may have and still stay prepared in sqlx's statement
/// cache (100 per connection). The text changes with the number of rows: a group-committed batch of a few
/// messages is common under load (4 streams: 1–4 rows), and preparing it again each time was 2.7 % of a
/// message's instructions (callgrind, SQLite, 4 × 50). Eight sizes of the six multi-row statements (messages
/// three ways, media links, usage records, rollups) are 48 texts beside the statements that run on every
/// message; caching every size would evict those. Kept prepared, they cost about 1.5 MB of RSS on SQLite.
const CACHED_ROWS: usize = 8;

/// Runs a multi-row statement of `rows` rows, kept prepared up to [`CACHED_ROWS`] rows.
async fn execute_rows(
    conn: &mut <Db as sqlx::Database>::Connection,
    query: &mut sqlx::QueryBuilder<Db>,
    rows: usize,
) -> Result<(), sqlx::Error> {
    query
        .build()
        .persistent(rows <= CACHED_ROWS)
        .execute(conn)
        .await?;
    Ok(())
}

/// Writes checkpoint rows in one statement.
async fn write_checkpoint_rows(
    pool: &sqlx::Pool<Db>,
    rows: &[Checkpoint],
    instance_id: &str,
) -> StoreResult<()> {
    let now = now();
    let streaming: Vec<NewMessage> = rows
        .iter()
        .map(|row| NewMessage {
            status: MessageStatus::Streaming,
            finish_reason: None,
            error: None,
            ..row.message.clone()
        })
        .collect();
    let mut message_rows: Vec<MessageInsert<'_>> = streaming
        .iter()
        .zip(rows)
        .map(|(message, row)| MessageInsert {
            checkpoint: Some((instance_id, row.prompt_tokens_estimate)),
            ..MessageInsert::new(message, now)
        })
        .collect();
    // In conversation order, as `write_messages` writes (see there).
    message_rows.sort_by_key(|row| row.message.conversation_id);
    let mut conn = pool.acquire().await?;
    write_message_rows(&mut conn, &message_rows, OnConflict::UpdateWhileStreaming).await
}

/// Writes a batch of [`Store::write_messages`] as one statement (PostgreSQL: `WRITES_IN_ONE_STATEMENT`), each
/// table's rows in a data-modifying `WITH` part: one round trip where a transaction took one for `BEGIN`, one
/// a table and one for `COMMIT`, and as atomic (a statement is). Foreign keys are checked when the statement
/// ends, so media links and usage may refer to messages written in the same statement. PostgreSQL runs the
/// last part (the statement itself) before the `WITH` parts nothing reads, so every batch with usage locks its
/// rollup rows (sorted) before any message or conversation row: one order for all of them.
async fn write_in_one_statement(
    conn: &mut <Db as sqlx::Database>::Connection,
    inserts: &[MessageInsert<'_>],
    links: &[(Id, Id)],
    replies: &[MessageInsert<'_>],
    usage: &[&UsageRecord],
) -> StoreResult<()> {
    #[derive(Clone, Copy)]
    enum Part {
        Inserts,
        Links,
        Replies,
        Usage,
        Rollup,
    }
    let rollup = rollup_of(usage);
    let parts: Vec<Part> = [
        (!inserts.is_empty(), Part::Inserts),
        (!links.is_empty(), Part::Links),
        (!replies.is_empty(), Part::Replies),
        (!usage.is_empty(), Part::Usage),
        (!rollup.is_empty(), Part::Rollup),
    ]
    .into_iter()
    .filter_map(|(present, part)| present.then_some(part))
    .collect();
    let Some(last) = parts.len().checked_sub(1) else {
        return Ok(());
    };
    let mut query = sqlx::QueryBuilder::<Db>::new("");
    // `WITH w0 AS (...), w1 AS (...) <the last part>`.
    for (index, part) in parts.into_iter().enumerate() {
        if index < last {
            query.push(if index == 0 { "WITH w" } else { ", w" });
            query.push(index);
            query.push(" AS (");
        } else if index > 0 {
            query.push(" ");
        }
        match part {
            Part::Inserts => push_message_rows(&mut query, inserts, OnConflict::Fail),
            Part::Links => push_media_links(&mut query, links),
            Part::Replies => push_message_rows(&mut query, replies, OnConflict::Update),
            Part::Usage => push_usage_rows(&mut query, usage),
            Part::Rollup => push_rollup_rows(&mut query, &rollup, now()),
        }
        if index < last {
            query.push(")");
        }
    }
    // The usual batch (one reply and its usage) has one text: prepared once per connection. Larger batches'
    // texts vary with every part's row count (too many combinations to cache, unlike `execute_rows`).
    let usual = [inserts.len(), links.len(), replies.len(), usage.len()]
        .iter()
        .all(|rows| *rows <= 1);
    query
        .build()
        .persistent(usual)
        .execute(conn)
        .await
        .map_err(|err| {
            let what = match &err {
                sqlx::Error::Database(db) if db.table() == Some("message_media") => MESSAGE_MEDIA,
                sqlx::Error::Database(db) if db.table() == Some("usage_records") => MESSAGE_USAGE,
                _ => "the message",
            };
            map_write_error(err, what)
        })?;
    Ok(())
}

/// What a refused write of a message's media links names ([`map_write_error`]), whichever path wrote them.
const MESSAGE_MEDIA: &str = "the message's media";
/// What a refused write of a message's usage record names.
const MESSAGE_USAGE: &str = "a usage record for this message";

/// Appends the `message_media` INSERT of `(message, media)` links (at least one) to `query`; a link that exists
/// is left alone.
fn push_media_links(query: &mut sqlx::QueryBuilder<Db>, links: &[(Id, Id)]) {
    query.push("INSERT INTO message_media (message_id, media_id) ");
    query.push_values(links, |mut row, (message, media)| {
        row.push_bind(*message).push_bind(*media);
    });
    query.push(" ON CONFLICT DO NOTHING");
}

/// The one INSERT of the `messages` table: every row in one statement (none: nothing is run).
async fn write_message_rows(
    conn: &mut <Db as sqlx::Database>::Connection,
    rows: &[MessageInsert<'_>],
    on_conflict: OnConflict,
) -> StoreResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut query = sqlx::QueryBuilder::<Db>::new("");
    push_message_rows(&mut query, rows, on_conflict);
    execute_rows(conn, &mut query, rows.len())
        .await
        .map_err(|e| map_write_error(e, "the message"))?;
    Ok(())
}

/// Appends the `messages` INSERT of `rows` (at least one) to `query`.
fn push_message_rows(
    query: &mut sqlx::QueryBuilder<Db>,
    rows: &[MessageInsert<'_>],
    on_conflict: OnConflict,
) {
    query.push(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content, message_type, media, status, \
         model, provider, finish_reason, error, created_at, updated_at, instance_id, prompt_tokens_estimate, \
         content_tokens) ",
    );
    query.push_values(rows, |mut row, r| {
        let (instance_id, prompt_tokens_estimate) = r.checkpoint.unzip();
        let m = r.message;
        row.push_bind(m.id)
            .push_bind(m.conversation_id)
            .push_bind(m.parent_id)
            .push_bind(m.role)
            .push_bind(m.content.as_str())
            .push_bind(m.message_type)
            .push_bind(Json(&m.media))
            .push_bind(m.status)
            .push_bind(m.model.as_deref())
            .push_bind(m.provider.as_deref())
            .push_bind(&m.finish_reason)
            .push_bind(m.error.as_deref())
            .push_bind(m.created_at)
            .push_bind(r.updated_at)
            .push_bind(instance_id)
            .push_bind(prompt_tokens_estimate)
            .push_bind(m.content_tokens);
    });
    query.push(on_conflict.clause());
}

/// Writes usage records and adds them to the daily rollup, inside the caller's transaction: the records in one
/// statement, the rollup summed per (user, day, model, persona) in another (none: nothing is run).
async fn insert_usage(
    conn: &mut <Db as sqlx::Database>::Connection,
    records: &[&UsageRecord],
) -> StoreResult<()> {
    if records.is_empty() {
        return Ok(());
    }
    let mut query = sqlx::QueryBuilder::<Db>::new("");
    push_usage_rows(&mut query, records);
    execute_rows(conn, &mut query, records.len())
        .await
        .map_err(|e| map_write_error(e, MESSAGE_USAGE))?;
    let rollup = rollup_of(records);
    let mut query = sqlx::QueryBuilder::<Db>::new("");
    push_rollup_rows(&mut query, &rollup, now());
    execute_rows(conn, &mut query, rollup.len()).await?;
    Ok(())
}

/// Appends the `usage_records` INSERT of `records` (at least one) to `query`.
fn push_usage_rows(query: &mut sqlx::QueryBuilder<Db>, records: &[&UsageRecord]) {
    query.push(concat!(
        "INSERT INTO usage_records (",
        usage_columns!(),
        ") "
    ));
    query.push_values(records, |mut row, u| {
        row.push_bind(u.id)
            .push_bind(u.user_id.as_str())
            .push_bind(u.conversation_id)
            .push_bind(u.message_id)
            .push_bind(u.persona_id)
            .push_bind(u.model.as_str())
            .push_bind(u.upstream_model.as_str())
            .push_bind(u.provider.as_str())
            .push_bind(u.prompt_tokens)
            .push_bind(u.completion_tokens)
            .push_bind(u.cached_tokens)
            .push_bind(u.reasoning_tokens)
            .push_bind(u.estimated)
            .push_bind(u.cost_nanousd)
            .push_bind(u.ttft_ms)
            .push_bind(u.duration_ms)
            .push_bind(u.created_at);
    });
}

/// The daily rollup's increments of `records`, keyed by (user, day, model, persona; "" for none).
type RollupRows<'a> = std::collections::BTreeMap<(&'a str, String, &'a str, String), Rollup>;

/// Sums `records` per rollup row: one row may appear only once in an upsert, and the sorted order keeps
/// concurrent writers taking the rows' locks in the same order.
fn rollup_of<'a>(records: &[&'a UsageRecord]) -> RollupRows<'a> {
    let mut rollup = RollupRows::new();
    for u in records {
        let key = (
            u.user_id.as_str(),
            day_of(u.created_at),
            u.model.as_str(),
            u.persona_id.map(|p| p.to_string()).unwrap_or_default(),
        );
        let sum = rollup.entry(key).or_default();
        sum.requests += 1;
        sum.estimated_requests += i64::from(u.estimated);
        sum.prompt_tokens += u.prompt_tokens;
        sum.completion_tokens += u.completion_tokens;
        sum.cached_tokens += u.cached_tokens;
        sum.reasoning_tokens += u.reasoning_tokens;
        sum.cost_nanousd += u.cost_nanousd;
    }
    rollup
}

/// Appends the `usage_daily` upsert of `rollup` (at least one row) to `query`.
fn push_rollup_rows(
    query: &mut sqlx::QueryBuilder<Db>,
    rollup: &RollupRows<'_>,
    updated_at: DateTime<Utc>,
) {
    query.push(
        "INSERT INTO usage_daily (user_id, day, model, persona_id, requests, estimated_requests, prompt_tokens, \
         completion_tokens, cached_tokens, reasoning_tokens, cost_nanousd, updated_at) ",
    );
    query.push_values(
        rollup,
        |mut row, ((user_id, day, model, persona_id), sum)| {
            row.push_bind(*user_id)
                .push_bind(day.as_str())
                .push_bind(*model)
                .push_bind(persona_id.as_str())
                .push_bind(sum.requests)
                .push_bind(sum.estimated_requests)
                .push_bind(sum.prompt_tokens)
                .push_bind(sum.completion_tokens)
                .push_bind(sum.cached_tokens)
                .push_bind(sum.reasoning_tokens)
                .push_bind(sum.cost_nanousd)
                .push_bind(updated_at);
        },
    );
    query.push(
        " ON CONFLICT (user_id, day, model, persona_id) DO UPDATE SET \
         requests = usage_daily.requests + excluded.requests, \
         estimated_requests = usage_daily.estimated_requests + excluded.estimated_requests, \
         prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, \
         cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, \
         reasoning_tokens = usage_daily.reasoning_tokens + excluded.reasoning_tokens, \
         cost_nanousd = usage_daily.cost_nanousd + excluded.cost_nanousd, \
         updated_at = excluded.updated_at",
    );
}

/// One row of the daily rollup's increment.
#[derive(Default)]
struct Rollup {
    requests: i64,
    estimated_requests: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    reasoning_tokens: i64,
    cost_nanousd: i64,
}
