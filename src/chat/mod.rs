//! The chat service: one message's whole life, free of HTTP. Every transport (native SSE, JSON, 202, the AI SDK
//! stream, WebSocket, the OpenAI-compatible endpoint) parses its input, calls one method here and encodes what
//! comes back; errors are [`Error`]s, which `api` maps to statuses.
//!
//! One message, top to bottom ([`Chat::send`]):
//! 1. [`admission::validate`]: the body's shape, no I/O.
//! 2. The caller's conversation, its persona, and the model to answer with ([`Chat::persona_and_route`]).
//! 3. The history and the prompt that fits the model ([`prompt::build`]).
//! 4. Limits: concurrent replies, token and cost budgets, with a reservation ([`admission::admit`]).
//! 5. Media: uploads stored, URLs fetched, images read, voice notes transcribed ([`attachments::attach`]),
//!    only now that the request is admitted, and removed again if a later step fails.
//! 6. The user message, committed (group-committed with those that arrive at the same time: [`Writes`]); then
//!    the generation starts ([`Chat::start`]) as a tracked task that no connection owns ([`generation::run`]): it
//!    relays each delta to the event log, its text is checkpointed ([`checkpoints`]), and at the end its message
//!    and usage are written in one transaction before `done`.
//! 7. After a conversation's first reply, a title ([`titles`]).

mod admission;
mod attachments;
pub mod checkpoints;
mod generation;
mod prompt;
pub mod titles;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use self::generation::RetryPolicy;
pub use self::prompt::IMAGE_TOKENS;
use crate::catalog::{ModelRoute, Models};
use crate::config::Config;
use crate::domain::{CancelReason, MessageStatus, MessageType, Role};
use crate::error::{Error, ErrorKind};
use crate::event::GenerationEvent;
use crate::id::Id;
use crate::media::MediaStore;
use crate::personas::PersonaCache;
use crate::providers::{ChatMessage, ChatRequest, Sampling, Tools};
use crate::store::{
    Conversation, HistoryPage, HistoryTurn, Message, MessageWrite, NewMessage, Persona,
    PersonaFilter, PromptHistory, Store, Writes,
};
use crate::stream::{Generation, GenerationMeta, Hub};
use crate::tasks::Tasks;
use crate::usage::budget::{Budgets, Reservation};

/// A message to send: the body of `POST /api/v1/conversations/{id}/messages` and of a WebSocket `send`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct SendRequest {
    /// The text; required for `text` and `multimodal` messages.
    pub content: Option<String>,
    pub message_type: MessageType,
    /// The caller's uploads (`POST /api/v1/media`).
    pub media_ids: Vec<Id>,
    /// Images (or one voice note) to fetch: http(s), public addresses only.
    pub media_urls: Vec<String>,
    /// A voice note to fetch.
    pub audio_url: Option<String>,
    pub audio_duration_seconds: Option<f64>,
    /// Model alias; the persona's, else `[defaults].model`, when absent.
    pub model: Option<String>,
    /// The message this one answers (defaults to none).
    pub parent_id: Option<Id>,
    /// Files sent inline (the AI SDK's `data:` file parts), stored as the caller's uploads once the send is
    /// admitted.
    #[serde(skip)]
    #[schema(ignore)]
    pub uploads: Vec<Bytes>,
}

/// Whether someone follows the reply from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attendance {
    /// A stream or a waiting caller follows it.
    Followed,
    /// Nobody does yet (`Prefer: respond-async`): refused past `generation.max_unattended`.
    Unattended,
}

/// A message accepted and its reply started.
#[derive(Debug)]
pub struct Started {
    pub conversation: Conversation,
    /// The message the reply answers: the one just sent, or the question of a regenerated reply.
    pub user_message: Message,
    pub generation: Arc<Generation>,
}

/// A stateless completion (the OpenAI-compatible endpoint): the caller sends the whole history; only the
/// usage is recorded.
#[derive(Debug)]
pub struct Completion {
    /// Model alias.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Upper bound on the reply, in tokens; the model's `max_output_tokens` when absent.
    pub max_tokens: Option<u32>,
    /// The request's sampling settings; the model alias's own fill in the rest.
    pub sampling: Sampling,
    /// Functions the model may call.
    pub tools: Tools,
    /// A persona's id or slug whose system prompt goes first.
    pub persona: Option<String>,
}

/// A request's own reply bound and sampling settings; unset ones come from the model alias.
#[derive(Debug, Clone, Default)]
struct Settings {
    max_tokens: Option<u32>,
    sampling: Sampling,
    tools: Tools,
}

/// What a generation writes when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// The assistant message in its conversation, answering `parent_id`, and its usage record.
    Conversation {
        conversation_id: Id,
        persona_id: Id,
        parent_id: Id,
    },
    /// Only the usage record (stateless completions).
    UsageOnly,
}

impl Persist {
    fn conversation_id(self) -> Option<Id> {
        match self {
            Persist::Conversation {
                conversation_id, ..
            } => Some(conversation_id),
            Persist::UsageOnly => None,
        }
    }
}

/// `GET /api/v1/generations/{id}`: where a generation stands.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct GenerationStatus {
    pub id: Id,
    pub conversation_id: Option<Id>,
    /// The model alias.
    pub model: Option<String>,
    pub status: MessageStatus,
    /// The text so far.
    pub text: String,
    /// The saved reply, once there is one.
    pub message: Option<Message>,
}

/// What cancelling did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Cancelled {
    /// True when this request stopped the generation.
    pub cancelled: bool,
    /// `cancelled`, or why nothing was cancelled.
    pub reason: &'static str,
    /// The saved reply.
    pub message: Option<Message>,
}

/// The chat service. Cheap to clone.
#[derive(Clone)]
pub struct Chat(Arc<Inner>);

/// What the service works with.
pub struct Inner {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// How new messages, replies and usage records are written: group-committed ([`Writes`]).
    pub writes: Writes,
    pub models: Arc<Models>,
    pub hub: Hub,
    /// What the instances share through Redis, when configured.
    pub cluster: Option<crate::cluster::Cluster>,
    pub budgets: Arc<Budgets>,
    pub personas: Arc<PersonaCache>,
    pub media: Arc<MediaStore>,
    pub tasks: Tasks,
    pub checkpoints: Arc<checkpoints::Checkpointer>,
}

impl std::ops::Deref for Chat {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Chat {
    pub fn new(inner: Inner) -> Self {
        Self(Arc::new(inner))
    }

    /// Sends a message and starts its reply. Nothing is written when a check fails: the user message is
    /// committed only after validation, ownership, the model, the prompt's fit, the limits and the media.
    ///
    /// # Errors
    /// `invalid` (the body), `not_found` (the conversation, parent or media is not the caller's),
    /// `unprocessable` (unknown model, a model without vision, wrong media kind), `rate_limited` (limits,
    /// budgets), `too_large`, the media's fetch and transcription errors, `unavailable` (the database, or
    /// shutting down).
    pub async fn send(
        &self,
        user_id: &str,
        conversation_id: Id,
        request: SendRequest,
        attendance: Attendance,
    ) -> Result<Started, Error> {
        let content = admission::validate(&self.config, &self.media, &request)?;
        let (conversation, history) = self
            .conversation_and_history(user_id, conversation_id, None)
            .await?;
        let (persona, route) = self
            .persona_and_route(&conversation, request.model.as_deref())
            .await?;
        if request.message_type.has_images() && !route.accepts_images {
            return Err(admission::takes_no_images(&route));
        }
        if let Some(parent_id) = request.parent_id {
            let parent = self.store.get_message(user_id, parent_id).await?;
            if parent.is_none_or(|p| p.conversation_id != conversation.id) {
                return Err(Error::not_found("parent message"));
            }
        }
        if attendance == Attendance::Unattended {
            admission::refuse_if_unattended_full(&self.hub)?;
        }
        let earlier_images = prompt::history_images(self, user_id, &route, &history).await?;
        // Limits first, on an estimate (the text, and IMAGE_TOKENS an image to come): nothing is fetched,
        // transcribed or stored for a request that would be refused.
        let images_to_come = if request.message_type.has_images() {
            (request.media_ids.len() + request.media_urls.len() + request.uploads.len()) as u64
        } else {
            0
        };
        let new_message = ChatMessage::user(content.clone());
        let mut text_prompt = prompt::build(
            &self.config.generation,
            &persona,
            &route,
            &history,
            &earlier_images,
            new_message,
        )?;
        self.record_content_tokens(std::mem::take(&mut text_prompt.counted));
        let reservation = admission::admit(
            self,
            user_id,
            &route,
            text_prompt.tokens + IMAGE_TOKENS * images_to_come,
        )
        .await?;
        // Media are stored from here on: whatever fails next removes them again.
        let mut stored = attachments::StoredMedia::new(self, user_id);
        let committed = async {
            let attached =
                attachments::attach(self, user_id, &route, &request, content, &mut stored).await?;
            // A text message's prompt is the one just built; media change the last turn, so fit it again.
            let messages = if request.message_type == MessageType::Text {
                text_prompt.messages
            } else {
                let config = &self.config.generation;
                prompt::build(
                    config,
                    &persona,
                    &route,
                    &history,
                    &earlier_images,
                    attached.prompt,
                )?
                .messages
            };
            let user_message = NewMessage {
                id: Id::new(),
                conversation_id: conversation.id,
                parent_id: request.parent_id,
                role: Role::User,
                content: attached.content,
                message_type: request.message_type,
                media: attached.media,
                status: MessageStatus::Complete,
                model: None,
                provider: None,
                finish_reason: None,
                error: None,
                created_at: crate::store::now(),
                content_tokens: None,
            };
            self.writes
                .message(MessageWrite::Insert(user_message.clone()))
                .await?;
            Ok::<_, Error>((messages, Message::from_new(&user_message, None)))
        }
        .await;
        let (messages, user_message) = match committed {
            Ok(committed) => {
                stored.keep();
                committed
            }
            Err(err) => {
                stored.discard().await;
                return Err(err);
            }
        };
        let first_exchange = conversation.title.is_none() && history.is_empty();
        let generation = self.start(
            user_id,
            route,
            messages,
            Settings::default(),
            Persist::Conversation {
                conversation_id: conversation.id,
                persona_id: persona.id,
                parent_id: user_message.id,
            },
            reservation,
        )?;
        if first_exchange {
            titles::after_first_reply(
                self,
                user_id,
                conversation.id,
                user_message.content.clone(),
                Arc::clone(&generation),
            );
        }
        Ok(Started {
            conversation,
            user_message,
            generation,
        })
    }

    /// The id of the conversation's latest message (its latest branch), for a regenerate that names none.
    ///
    /// # Errors
    /// `not_found` (not the caller's conversation), `conflict` when it has no message yet.
    pub async fn latest_message(&self, user_id: &str, conversation_id: Id) -> Result<Id, Error> {
        let conversation = self.conversation(user_id, conversation_id).await?;
        self.store
            .list_messages(conversation.id, HistoryPage::Offset(0), 1, false, false)
            .await?
            .first()
            .map(|m| m.id)
            .ok_or_else(|| Error::conflict("the conversation has no message to regenerate"))
    }

    /// A new reply to the user message `message_id` names (itself, or the one a reply answers). The previous
    /// reply stays as a sibling; history shows the latest by default. The question's images go again.
    ///
    /// # Errors
    /// `not_found` (not the caller's), `conflict` (a message that answers none), and those of
    /// [`Chat::send`]'s checks.
    pub async fn regenerate(
        &self,
        user_id: &str,
        message_id: Id,
        model: Option<&str>,
        attendance: Attendance,
    ) -> Result<Started, Error> {
        let message = self
            .store
            .get_message(user_id, message_id)
            .await?
            .ok_or_else(|| Error::not_found("message"))?;
        let question_id = match message.role {
            Role::User => message.id,
            _ => message.parent_id.ok_or_else(|| {
                Error::conflict("this message answers no user message; nothing to regenerate")
            })?,
        };
        let question = self
            .store
            .get_message(user_id, question_id)
            .await?
            .ok_or_else(|| Error::not_found("message"))?;
        let (conversation, history) = self
            .conversation_and_history(user_id, question.conversation_id, Some(question.id))
            .await?;
        let (persona, route) = self.persona_and_route(&conversation, model).await?;
        if attendance == Attendance::Unattended {
            admission::refuse_if_unattended_full(&self.hub)?;
        }
        let earlier_images = prompt::history_images(self, user_id, &route, &history).await?;
        let question_images = if question.message_type.has_images() {
            if !route.accepts_images {
                return Err(admission::takes_no_images(&route));
            }
            prompt::images_of(self, user_id, &question.media).await?
        } else {
            Vec::new()
        };
        let prompt::Prompt {
            messages,
            tokens: prompt_tokens,
            counted,
        } = prompt::build(
            &self.config.generation,
            &persona,
            &route,
            &history,
            &earlier_images,
            ChatMessage::user(question.content.clone()).with_images(question_images),
        )?;
        self.record_content_tokens(counted);
        let reservation = admission::admit(self, user_id, &route, prompt_tokens).await?;
        let generation = self.start(
            user_id,
            route,
            messages,
            Settings::default(),
            Persist::Conversation {
                conversation_id: conversation.id,
                persona_id: persona.id,
                parent_id: question.id,
            },
            reservation,
        )?;
        Ok(Started {
            conversation,
            user_message: question,
            generation,
        })
    }

    /// A stateless completion: the caller's messages (with `persona`'s system prompt first, when named) to
    /// `model`, under the same limits, retries and fallbacks; only the usage is recorded.
    ///
    /// # Errors
    /// `not_found` / `model_not_found` for an unknown alias, `not_found` for an unknown persona, `invalid` (no
    /// user message, images on other roles), `model_cannot_take_images`, `too_large`, `rate_limited`.
    pub async fn complete(
        &self,
        user_id: &str,
        completion: Completion,
    ) -> Result<Arc<Generation>, Error> {
        let route = self.completion_route(&completion.model)?;
        if let Some(name) = route
            .provider
            .unsupported(&completion.sampling.clone().or(&route.sampling))
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                "unsupported_parameter",
                format!(
                    "`{name}` is not supported by model `{}` (provider {})",
                    route.alias,
                    route.provider.name()
                ),
            )
            .with_details(serde_json::json!({ "field": name })));
        }
        let mut messages = Vec::with_capacity(completion.messages.len() + 1);
        if let Some(persona) = completion.persona.as_deref() {
            let persona = self.find_persona(persona).await?;
            messages.push(ChatMessage::system(crate::personas::system_prompt(
                &persona,
            )));
        }
        messages.extend(completion.messages);
        admission::check_completion(&self.config, &route, &messages)?;
        // A byte a token at most (what the reservation holds until the real count settles it): the text, the
        // images, the tool calls in the history and the tool definitions.
        let definitions: u64 = completion
            .tools
            .definitions
            .iter()
            .map(|t| (t.name.len() + t.parameters.to_string().len()) as u64)
            .sum();
        let prompt_tokens = 3
            + definitions
            + messages
                .iter()
                .map(|m| {
                    3 + m.content.len() as u64
                        + IMAGE_TOKENS * m.images.len() as u64
                        + m.tool_calls
                            .iter()
                            .map(|c| (c.name.len() + c.arguments.len()) as u64)
                            .sum::<u64>()
                })
                .sum::<u64>();
        let reservation = admission::admit(self, user_id, &route, prompt_tokens).await?;
        self.start(
            user_id,
            route,
            messages,
            Settings {
                max_tokens: completion.max_tokens,
                sampling: completion.sampling,
                tools: completion.tools,
            },
            Persist::UsageOnly,
            reservation,
        )
    }

    /// Records the token counts history fitting had to take itself (user messages, and rows from before counts
    /// were stored), in the background, so that each message is counted once.
    fn record_content_tokens(&self, counted: Vec<(Id, i64)>) {
        if counted.is_empty() {
            return;
        }
        let chat = self.clone();
        self.tasks
            .spawn(async move { chat.write_content_tokens(counted).await });
    }

    async fn write_content_tokens(&self, counts: Vec<(Id, i64)>) {
        if let Err(err) = self.store.set_content_tokens(&counts).await {
            // Harmless: the next fitting counts them again.
            tracing::debug!(error = %err, messages = counts.len(), "could not record token counts");
        }
    }

    /// The route of a model alias named by a stateless completion.
    ///
    /// # Errors
    /// `not_found` / `model_not_found`, in OpenAI's words.
    pub fn completion_route(&self, alias: &str) -> Result<ModelRoute, Error> {
        self.models.get(alias).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "model_not_found",
                format!("The model `{alias}` does not exist"),
            )
            .with_details(serde_json::json!({ "field": "model" }))
        })
    }

    /// The reply running now in one of the caller's conversations, if any (for a client reconnecting by
    /// conversation, as `useChat`'s `resume` does).
    ///
    /// # Errors
    /// `not_found` when the conversation is not the caller's.
    pub async fn running_in(
        &self,
        user_id: &str,
        conversation_id: Id,
    ) -> Result<Option<Arc<Generation>>, Error> {
        let conversation = self.conversation(user_id, conversation_id).await?;
        Ok(self
            .hub
            .running_in(conversation.id)
            .await
            .filter(|g| g.user_id() == user_id))
    }

    /// The caller's live (or recently finished) generation; `None` for an unknown, expired or another user's.
    pub async fn generation(&self, user_id: &str, id: Id) -> Option<Arc<Generation>> {
        self.hub.get(id).await.filter(|g| g.user_id() == user_id)
    }

    /// Where the caller's generation stands: live, or read back as its saved reply.
    ///
    /// # Errors
    /// `not_found` when it is not the caller's.
    pub async fn status(&self, user_id: &str, id: Id) -> Result<GenerationStatus, Error> {
        if let Some(generation) = self.generation(user_id, id).await {
            let (status, message) = match generation.terminal().map(|t| t.event.clone()) {
                None => (MessageStatus::Streaming, None),
                Some(GenerationEvent::Done(done)) => (done.message.status, Some(done.message)),
                Some(GenerationEvent::Error(failed)) => match failed.saved {
                    Some(saved) => (saved.status, Some(saved)),
                    None => (MessageStatus::Failed, None),
                },
                Some(_) => (MessageStatus::Failed, None),
            };
            return Ok(GenerationStatus {
                id: generation.id(),
                conversation_id: generation.meta.conversation_id,
                model: Some(generation.meta.model.clone()),
                status,
                text: generation.text(),
                message,
            });
        }
        let message = self.saved_reply(user_id, id).await?;
        Ok(GenerationStatus {
            id: message.id,
            conversation_id: Some(message.conversation_id),
            model: message.model.clone(),
            status: message.status,
            text: message.content.clone(),
            message: Some(message),
        })
    }

    /// Stops the caller's generation: the upstream is cancelled, the partial text saved as `cancelled`, and the
    /// answer comes once it is saved. Cancelling a finished generation changes nothing and says so.
    ///
    /// # Errors
    /// `not_found` when it is not the caller's.
    pub async fn cancel(&self, user_id: &str, id: Id) -> Result<Cancelled, Error> {
        const ENDED: &str = "the generation had already ended";
        let Some(generation) = self.generation(user_id, id).await else {
            let message = self.saved_reply(user_id, id).await?;
            return Ok(Cancelled {
                cancelled: false,
                reason: ENDED,
                message: Some(message),
            });
        };
        let already_over = generation.is_finished();
        generation.cancel(CancelReason::User);
        let message = match self.reply(&generation).await {
            Ok(message) => Some(message),
            Err(_) => self.store.get_message(user_id, id).await?,
        };
        let cancelled = !already_over
            && generation.cancel_reason() == Some(CancelReason::User)
            && message
                .as_ref()
                .is_some_and(|m| m.status == MessageStatus::Cancelled);
        Ok(Cancelled {
            cancelled,
            reason: if cancelled {
                CancelReason::User.as_str()
            } else {
                ENDED
            },
            message,
        })
    }

    /// Waits for the generation's saved reply (waiting counts as following it).
    ///
    /// # Errors
    /// The generation's failure: the upstream's error (the partial reply is saved), or the save's.
    pub async fn reply(&self, generation: &Arc<Generation>) -> Result<Message, Error> {
        let _following = generation.attach();
        Ok(generation.finished().await.done()?.message.clone())
    }

    /// The caller's conversation.
    ///
    /// # Errors
    /// `not_found` when it is not the caller's.
    pub async fn conversation(&self, user_id: &str, id: Id) -> Result<Conversation, Error> {
        self.store
            .get_conversation(user_id, id)
            .await?
            .ok_or_else(|| Error::not_found("conversation"))
    }

    /// Retries before the first token, from `[generation]`.
    pub fn retry_policy(&self) -> RetryPolicy {
        let config = &self.config.generation;
        RetryPolicy {
            attempts: config.retry_attempts,
            base: Duration::from_millis(config.retry_base_ms),
            max: Duration::from_millis(config.retry_max_ms),
        }
    }

    /// A finished generation, read back as its saved reply (the generation's id is the message's id).
    async fn saved_reply(&self, user_id: &str, id: Id) -> Result<Message, Error> {
        self.store
            .get_message(user_id, id)
            .await?
            .filter(|m| m.role == Role::Assistant)
            .ok_or_else(|| Error::not_found("generation"))
    }

    /// The caller's conversation and the history its prompt sends, newest first,
    /// `generation.max_history_messages` of it (those before message `before`, when given): one read.
    ///
    /// # Errors
    /// `not_found` when the conversation is not the caller's; `unavailable` (the database).
    async fn conversation_and_history(
        &self,
        user_id: &str,
        conversation_id: Id,
        before: Option<Id>,
    ) -> Result<(Conversation, Vec<HistoryTurn>), Error> {
        let limit = i64::from(self.config.generation.max_history_messages);
        let PromptHistory {
            conversation,
            turns,
        } = self
            .store
            .prompt_history(user_id, conversation_id, before, limit)
            .await?
            .ok_or_else(|| Error::not_found("conversation"))?;
        Ok((conversation, turns))
    }

    /// The conversation's persona and the model to answer with: the request's alias, else the persona's, else
    /// the default.
    ///
    /// # Errors
    /// `unprocessable` / `unknown_model` for an alias that is not configured.
    async fn persona_and_route(
        &self,
        conversation: &Conversation,
        requested: Option<&str>,
    ) -> Result<(Persona, ModelRoute), Error> {
        let persona = self
            .personas
            .get(&*self.store, conversation.persona_id)
            .await?
            .ok_or_else(|| Error::not_found("persona"))?;
        let alias = requested
            .or(persona.model.as_deref())
            .unwrap_or(self.models.default_alias());
        let route = self.models.get(alias).cloned().ok_or_else(|| {
            let known: Vec<_> = self.models.aliases().collect();
            Error::new(
                ErrorKind::Unprocessable,
                "unknown_model",
                format!("model alias '{alias}' is not configured"),
            )
            .with_details(serde_json::json!({ "model": alias, "available": known }))
        })?;
        Ok((persona, route))
    }

    /// A persona by id or slug.
    async fn find_persona(&self, key: &str) -> Result<Persona, Error> {
        if let Ok(id) = key.parse::<Id>()
            && let Some(persona) = self.personas.get(&*self.store, id).await?
        {
            return Ok(persona);
        }
        let filter = PersonaFilter {
            category: None,
            include_inactive: false,
            limit: 1000,
            offset: 0,
        };
        self.store
            .list_personas(&filter)
            .await?
            .into_iter()
            .find(|p| p.slug == key)
            .ok_or_else(|| {
                Error::not_found("persona").with_details(serde_json::json!({ "field": "persona" }))
            })
    }

    /// Starts the generation of `messages` on `route` as a tracked background task.
    ///
    /// # Errors
    /// `unavailable` once shutdown has begun.
    fn start(
        &self,
        user_id: &str,
        route: ModelRoute,
        messages: Vec<ChatMessage>,
        settings: Settings,
        persist: Persist,
        reservation: Reservation,
    ) -> Result<Arc<Generation>, Error> {
        let meta = GenerationMeta {
            id: Id::new(),
            user_id: user_id.to_string(),
            conversation_id: persist.conversation_id(),
            model: route.alias.clone(),
        };
        let job = generation::Job {
            request: ChatRequest {
                model: route.upstream_model.clone(),
                messages,
                max_tokens: settings.max_tokens.or(route.max_output_tokens),
                sampling: settings.sampling.or(&route.sampling),
                tools: settings.tools,
            },
            fallbacks: self.models.fallbacks(&route.alias),
            route,
            user_id: user_id.to_string(),
            persist,
            reservation,
            retry: self.retry_policy(),
        };
        let chat = self.clone();
        self.hub
            .start(meta, move |g| generation::run(chat, g, job))
            .map_err(|e| Error::unavailable("the server is shutting down; retry shortly", e))
    }
}
