//! Checkpoints and crash recovery: while a reply streams, its row is written with the text so far (one batch
//! for every streaming reply, every `generation.checkpoint_interval_ms`), so that a process that dies leaves a
//! row behind; a later process (or another instance) closes such rows as `interrupted` and bills them once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use super::generation::to_i64;
use crate::catalog::Models;
use crate::domain::{FinishReason, MessageStatus, Role};
use crate::id::Id;
use crate::store::{Checkpoint, NewMessage, Store, StoreError, UsageRecord};
use crate::usage::TokenCounts;
use crate::usage::tokens::Tokenizer;

/// The text of a streaming reply, shared by its generation task (which appends) and the checkpointer (which
/// reads). Unregisters itself when dropped.
#[derive(Debug)]
pub struct RunningReply {
    state: Mutex<ReplyState>,
    registry: Weak<Checkpointer>,
    id: Option<Id>,
}

#[derive(Debug)]
struct ReplyState {
    text: String,
    /// `None` for replies that are never checkpointed (stateless completions).
    row: Option<Checkpoint>,
    written_len: Option<usize>,
    written_at: Instant,
}

impl RunningReply {
    /// A reply nobody checkpoints.
    pub fn untracked() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ReplyState {
                text: String::new(),
                row: None,
                written_len: None,
                written_at: Instant::now(),
            }),
            registry: Weak::new(),
            id: None,
        })
    }

    fn state(&self) -> MutexGuard<'_, ReplyState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends a delta.
    pub fn push(&self, text: &str) {
        self.state().text.push_str(text);
    }

    /// Takes back the last `len` bytes appended (a delta that was not relayed after all).
    pub fn unpush(&self, len: usize) {
        let mut state = self.state();
        let keep = state.text.len().saturating_sub(len);
        state.text.truncate(keep);
    }

    /// Stops checkpointing and returns the whole text.
    pub fn finish(&self) -> String {
        if let (Some(registry), Some(id)) = (self.registry.upgrade(), self.id) {
            registry.replies().remove(&id);
        }
        let mut state = self.state();
        state.row = None;
        std::mem::take(&mut state.text)
    }
}

impl Drop for RunningReply {
    fn drop(&mut self) {
        if let (Some(registry), Some(id)) = (self.registry.upgrade(), self.id) {
            registry.replies().remove(&id);
        }
    }
}

/// Every streaming reply of this process whose row is checkpointed.
#[derive(Debug, Default)]
pub struct Checkpointer {
    replies: Mutex<HashMap<Id, Weak<RunningReply>>>,
}

impl Checkpointer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn replies(&self) -> MutexGuard<'_, HashMap<Id, Weak<RunningReply>>> {
        self.replies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts checkpointing a reply: its row (`template`, with the text so far) is written from its first
    /// token on, with the prompt's estimated tokens.
    pub fn register(
        self: &Arc<Self>,
        template: NewMessage,
        prompt_tokens_estimate: i64,
    ) -> Arc<RunningReply> {
        let id = template.id;
        let reply = Arc::new(RunningReply {
            state: Mutex::new(ReplyState {
                text: String::new(),
                row: Some(Checkpoint {
                    message: template,
                    prompt_tokens_estimate,
                }),
                written_len: None,
                written_at: Instant::now(),
            }),
            registry: Arc::downgrade(self),
            id: Some(id),
        });
        self.replies().insert(id, Arc::downgrade(&reply));
        reply
    }

    /// Writes, in one transaction, the rows of every streaming reply whose text grew since its last checkpoint,
    /// or whose last write is older than `heartbeat`. Called every `checkpoint_interval_ms` by one task, so the
    /// database sees one batch per interval however many replies stream.
    pub async fn write(&self, store: &dyn Store, instance_id: &str, heartbeat: Duration) {
        let replies: Vec<Arc<RunningReply>> =
            self.replies().values().filter_map(Weak::upgrade).collect();
        let due: Vec<(Arc<RunningReply>, usize, Checkpoint)> = replies
            .into_iter()
            .filter_map(|reply| {
                let row = {
                    let state = reply.state();
                    let len = state.text.len();
                    let row = state.row.as_ref()?;
                    let due = len > 0
                        && (state.written_len != Some(len)
                            || state.written_at.elapsed() >= heartbeat);
                    if !due {
                        return None;
                    }
                    let mut row = row.clone();
                    row.message.content = state.text.clone();
                    (len, row)
                };
                Some((reply, row.0, row.1))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        let rows: Vec<Checkpoint> = due.iter().map(|(_, _, row)| row.clone()).collect();
        let started = Instant::now();
        let written = store.checkpoint_messages(&rows, instance_id).await;
        metrics::histogram!("chatgate_db_write_seconds", "op" => "checkpoint")
            .record(started.elapsed().as_secs_f64());
        match written {
            Ok(written) => {
                for ((reply, len, _), ok) in due.into_iter().zip(written) {
                    if ok {
                        let mut state = reply.state();
                        state.written_len = Some(len);
                        state.written_at = Instant::now();
                    }
                }
            }
            Err(err) => tracing::warn!(rows = rows.len(), error = %err, "checkpoint batch failed"),
        }
    }
}

/// Bills and closes the replies a dead process left `streaming` (this instance's previous life, or any whose
/// heartbeat is older than `stale_before`): status `interrupted`, the last checkpointed text, and one usage
/// record with estimated counts (the prompt estimate taken when the reply started, the text counted now).
/// With `only`, those replies alone (another instance closing generations whose owner's lease lapsed: the
/// owner's instance id may already belong to its next life). Returns how many were closed.
///
/// # Errors
/// When the database fails.
pub async fn recover_interrupted(
    store: &dyn Store,
    models: &Models,
    instance_id: &str,
    stale_before: chrono::DateTime<chrono::Utc>,
    only: Option<&[Id]>,
) -> Result<usize, StoreError> {
    let mut recovered = 0;
    let stale = store.stale_replies(instance_id, stale_before).await?;
    for stale in stale
        .into_iter()
        .filter(|s| only.is_none_or(|ids| ids.contains(&s.message.id)))
    {
        let message = &stale.message;
        let route = message.model.as_deref().and_then(|alias| models.get(alias));
        let tokenizer = route.map_or_else(|| Tokenizer::for_model(""), |r| r.tokenizer);
        let counts = TokenCounts {
            prompt_tokens: stale
                .prompt_tokens_estimate
                .and_then(|p| u64::try_from(p).ok())
                .unwrap_or(0),
            completion_tokens: tokenizer.count(&message.content),
            estimated: true,
            ..TokenCounts::default()
        };
        let closed = NewMessage {
            id: message.id,
            conversation_id: message.conversation_id,
            parent_id: message.parent_id,
            role: Role::Assistant,
            content: message.content.clone(),
            message_type: message.message_type,
            media: message.media.clone(),
            status: MessageStatus::Interrupted,
            model: message.model.clone(),
            provider: message.provider.clone(),
            finish_reason: Some(FinishReason::Interrupted),
            error: Some("the server stopped before the reply was finished".into()),
            created_at: message.created_at,
            // Counted when history is next fitted.
            content_tokens: None,
        };
        let usage = UsageRecord {
            id: Id::new(),
            user_id: stale.user_id.clone(),
            conversation_id: Some(message.conversation_id),
            message_id: Some(message.id),
            persona_id: Some(stale.persona_id),
            model: message.model.clone().unwrap_or_default(),
            upstream_model: route.map(|r| r.upstream_model.clone()).unwrap_or_default(),
            provider: message.provider.clone().unwrap_or_default(),
            prompt_tokens: to_i64(counts.prompt_tokens),
            completion_tokens: to_i64(counts.completion_tokens),
            cached_tokens: 0,
            reasoning_tokens: 0,
            estimated: true,
            cost_nanousd: route.map_or(0, |r| r.prices.cost_nanousd(&counts)),
            ttft_ms: None,
            duration_ms: (message.updated_at - message.created_at)
                .num_milliseconds()
                .max(0),
            created_at: crate::store::now(),
        };
        if store.interrupt_reply(&closed, &usage).await? {
            recovered += 1;
        }
    }
    Ok(recovered)
}
