//! One generation's life: stream from the provider, relay each delta to the event log the moment it arrives,
//! then — off the relay path — count tokens, price them and write the assistant message and its usage record in
//! one transaction, and only then announce `done`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::checkpoints::RunningReply;
use super::{Chat, Persist};
use crate::catalog::ModelRoute;
use crate::domain::{CancelReason, FinishReason, MessageStatus, MessageType, Role};
use crate::error::{Error, ErrorKind};
use crate::event::{Done, Failed, Failure, GenerationEvent, Start, UsageReport};
use crate::id::Id;
use crate::providers::tools::ToolCalls;
use crate::providers::{ChatMessage, ChatRequest, ProviderError, ProviderEvent, Sampling};
use crate::store::{self, Message, MessageWrite, NewMessage, StoreError, UsageRecord};
use crate::stream::Generation;
use crate::usage::budget::Reservation;
use crate::usage::{TokenCounts, Usage, nanousd_to_usd};

/// Everything a generation needs, prepared by the service.
pub struct Job {
    pub route: ModelRoute,
    /// The request for `route`, sent to it as it is (its `model` is `route.upstream_model`); a fallback gets the
    /// same messages with its own model name.
    pub request: ChatRequest,
    /// Routes tried in order when `route` fails before its first token.
    pub fallbacks: Vec<ModelRoute>,
    pub user_id: String,
    pub persist: Persist,
    /// The budget reservation, swapped for the actual usage once it is saved.
    pub reservation: Reservation,
    pub retry: RetryPolicy,
}

/// What the provider stream produced.
struct Streamed {
    /// The route that answered (or was tried last).
    route: ModelRoute,
    usage: Usage,
    finish_reason: Option<FinishReason>,
    /// The tool calls relayed, folded whole.
    tool_calls: ToolCalls,
    error: Option<Error>,
    cancelled: Option<CancelReason>,
    ttft: Option<Duration>,
}

/// Ends the generation with `error` if the task ends (or panics) without a terminal event, so no subscriber
/// waits forever.
struct TerminalGuard(Arc<Generation>);

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if !self.0.is_finished() {
            let mut err = Error::internal("generation task ended without a terminal event");
            err.message = "the generation stopped unexpectedly".into();
            let _ = self.0.emit(GenerationEvent::Error(Box::new(Failed {
                failure: Failure::from(&err),
                saved: None,
            })));
        }
    }
}

/// Runs a generation to its end. Never fails: every failure becomes a saved message and a terminal event.
pub async fn run(chat: Chat, generation: Arc<Generation>, mut job: Job) {
    let _guard = TerminalGuard(Arc::clone(&generation));
    let started = Instant::now();
    let created_at = store::now();
    let _ = generation.emit(GenerationEvent::Start(Box::new(Start {
        generation_id: generation.id(),
        message_id: generation.id(),
        conversation_id: job.persist.conversation_id(),
        model: job.route.alias.clone(),
    })));
    let template = NewMessage {
        id: generation.id(),
        conversation_id: job
            .persist
            .conversation_id()
            .unwrap_or(Id(uuid::Uuid::nil())),
        parent_id: match job.persist {
            Persist::Conversation { parent_id, .. } => Some(parent_id),
            Persist::UsageOnly => None,
        },
        role: Role::Assistant,
        content: String::new(),
        message_type: MessageType::Text,
        media: serde_json::json!([]),
        status: MessageStatus::Streaming,
        model: Some(job.route.alias.clone()),
        provider: Some(job.route.provider.name().to_string()),
        finish_reason: None,
        error: None,
        created_at,
        content_tokens: None,
    };
    // A rough prompt size (4 bytes a token), for billing the reply if this process dies mid-stream; an exact
    // count would load the tokenizer for every generation.
    let prompt_estimate: u64 = 3 + job
        .request
        .messages
        .iter()
        .map(|m| 3 + (m.content.len() as u64).div_ceil(4))
        .sum::<u64>();
    // From its first token on, the checkpointer writes this reply's row in its periodic batch, never here.
    let reply = match job.persist {
        Persist::Conversation { .. } => chat.checkpoints.register(
            template.clone(),
            i64::try_from(prompt_estimate).unwrap_or(i64::MAX),
        ),
        Persist::UsageOnly => RunningReply::untracked(),
    };
    let mut streamed = relay(&generation, &job, &reply).await;
    let duration = started.elapsed();
    let text = reply.finish();
    let tool_calls = std::mem::take(&mut streamed.tool_calls);

    // Count, price and record with the route that actually answered. A provider that refused or failed before
    // its first token processed nothing billable unless it said otherwise: its own figures, else zero, never an
    // estimate (the attempt is still recorded, once, with the model and the time it took).
    let route = &streamed.route;
    let counts = if streamed.error.is_some() && streamed.ttft.is_none() {
        TokenCounts {
            prompt_tokens: streamed.usage.prompt_tokens.unwrap_or(0),
            completion_tokens: streamed.usage.completion_tokens.unwrap_or(0),
            cached_tokens: streamed.usage.cached_tokens.unwrap_or(0),
            reasoning_tokens: streamed.usage.reasoning_tokens.unwrap_or(0),
            estimated: false,
        }
    } else {
        let (prompt, completion) = counted_texts(&job.request, &text, &tool_calls);
        count_tokens(&prompt, route, &streamed.usage, &completion).await
    };
    let cost_nanousd = route.prices.cost_nanousd(&counts);
    let (message_status, finish_reason) = match (&streamed.error, streamed.cancelled) {
        (Some(_), _) => (MessageStatus::Failed, FinishReason::Error),
        (None, Some(reason)) => (reason.status(), reason.finish_reason()),
        // Providers that say `stop` after a tool call (Gemini, Ollama) ended it for the calls, as OpenAI's
        // `tool_calls` says.
        (None, None) => (
            MessageStatus::Complete,
            match streamed.finish_reason.clone() {
                None | Some(FinishReason::Stop) if !tool_calls.is_empty() => {
                    FinishReason::ToolCalls
                }
                reason => reason.unwrap_or(FinishReason::Stop),
            },
        ),
    };
    // The reply's own tokens, for fitting it into later prompts: its completion less the reasoning the
    // provider does not return (tool calls are not part of a stored reply).
    let content_tokens = if text.is_empty() {
        0
    } else {
        counts
            .completion_tokens
            .saturating_sub(counts.reasoning_tokens)
    };
    let message = NewMessage {
        content_tokens: Some(to_i64(content_tokens)),
        content: text,
        status: message_status,
        finish_reason: Some(finish_reason.clone()),
        error: streamed.error.as_ref().map(|e| e.message.clone()),
        model: Some(route.alias.clone()),
        provider: Some(route.provider.name().to_string()),
        ..template
    };
    let (conversation_id, persona_id) = match job.persist {
        Persist::Conversation {
            conversation_id,
            persona_id,
            ..
        } => (Some(conversation_id), Some(persona_id)),
        Persist::UsageOnly => (None, None),
    };
    let usage = UsageRecord {
        id: Id::new(),
        user_id: job.user_id.clone(),
        conversation_id,
        message_id: conversation_id.map(|_| generation.id()),
        persona_id,
        model: route.alias.clone(),
        upstream_model: route.upstream_model.clone(),
        provider: route.provider.name().to_string(),
        prompt_tokens: to_i64(counts.prompt_tokens),
        completion_tokens: to_i64(counts.completion_tokens),
        cached_tokens: to_i64(counts.cached_tokens),
        reasoning_tokens: to_i64(counts.reasoning_tokens),
        estimated: counts.estimated,
        cost_nanousd,
        ttft_ms: streamed.ttft.map(|d| to_i64(d.as_millis() as u64)),
        duration_ms: to_i64(duration.as_millis() as u64),
        created_at: store::now(),
    };

    let write_started = Instant::now();
    let saved = persist(&chat, job.persist, &message, &usage).await;
    metrics::histogram!("chatgate_db_write_seconds", "op" => "save")
        .record(write_started.elapsed().as_secs_f64());
    metrics::counter!("chatgate_generations_finished_total", "model" => route.alias.clone(), "outcome" => message_status.as_str())
        .increment(1);
    let provider_name = route.provider.name().to_string();
    metrics::counter!("chatgate_tokens_total", "model" => route.alias.clone(), "provider" => provider_name.clone(), "kind" => "prompt")
        .increment(counts.prompt_tokens);
    metrics::counter!("chatgate_tokens_total", "model" => route.alias.clone(), "provider" => provider_name, "kind" => "completion")
        .increment(counts.completion_tokens);
    metrics::counter!("chatgate_cost_nanousd_total", "model" => route.alias.clone())
        .increment(cost_nanousd.max(0) as u64);
    if saved.is_ok() {
        // The usage is in the database now: the budget counts it instead of the estimate.
        std::mem::replace(&mut job.reservation, Reservation::none()).settle(
            counts.prompt_tokens + counts.completion_tokens,
            cost_nanousd.max(0) as u64,
        );
    }
    let usage_report = UsageReport {
        prompt_tokens: counts.prompt_tokens,
        completion_tokens: counts.completion_tokens,
        cached_tokens: counts.cached_tokens,
        reasoning_tokens: counts.reasoning_tokens,
        estimated: counts.estimated,
        cost_usd: nanousd_to_usd(cost_nanousd),
    };
    let _ = generation.emit(GenerationEvent::Usage(Box::new(usage_report)));

    let terminal = match (saved, streamed.error) {
        (Ok(saved), None) => GenerationEvent::Done(Box::new(Done {
            message: saved,
            usage: usage_report,
            finish_reason,
            tool_calls: tool_calls.finish(),
        })),
        (Ok(saved), Some(mut error)) => {
            // The failure's own details, and where its partial reply is.
            if !error.details.is_object() {
                error.details = serde_json::json!({});
            }
            if let Some(details) = error.details.as_object_mut() {
                details.insert("message_id".into(), serde_json::json!(saved.id));
                details.insert(
                    "partial".into(),
                    serde_json::json!(!saved.content.is_empty()),
                );
            }
            GenerationEvent::Error(Box::new(Failed {
                failure: Failure::from(&error),
                saved: Some(saved),
            }))
        }
        (Err(err), _) => {
            tracing::error!(generation_id = %generation.id(), error = %err, "could not save the generation");
            let error = Error::unavailable("the reply could not be saved", &err)
                .with_details(serde_json::json!({ "message_id": generation.id() }));
            GenerationEvent::Error(Box::new(Failed {
                failure: Failure::from(&error),
                saved: None,
            }))
        }
    };
    let _ = generation.emit(terminal);
}

/// Streams from the model, then its fallbacks: a retryable failure before any delta was relayed (a connect
/// error, a 429 or 5xx, a first-token timeout, a body that ended before any content) is retried with jittered
/// exponential backoff (honouring the provider's retry hint on any status), then the next fallback is tried.
/// Once a delta has been relayed, a failure ends the generation: it never switches silently.
async fn relay(generation: &Generation, job: &Job, reply: &RunningReply) -> Streamed {
    let started = Instant::now();
    let mut out = Streamed {
        route: job.route.clone(),
        usage: Usage::default(),
        finish_reason: None,
        tool_calls: ToolCalls::default(),
        error: None,
        cancelled: None,
        ttft: None,
    };
    let candidates = std::iter::once(&job.route).chain(job.fallbacks.iter());
    'candidates: for route in candidates {
        out.route = route.clone();
        // The primary's request is the job's, sent as it is (the prompt is not copied: it can be 100 turns); a
        // fallback's is a copy with its own model name, its output cap, and the settings its provider takes.
        let fallback_request;
        let request = if std::ptr::eq(route, &job.route) {
            &job.request
        } else {
            fallback_request = ChatRequest {
                model: route.upstream_model.clone(),
                max_tokens: route.max_output_tokens,
                sampling: supported(&*route.provider, job.request.sampling.clone()),
                ..job.request.clone()
            };
            &fallback_request
        };
        let mut attempt = 0;
        loop {
            // Each attempt's own usage: a failed one reported nothing that was relayed.
            out.usage = Usage::default();
            out.finish_reason = None;
            out.tool_calls = ToolCalls::default();
            let error = match relay_once(generation, route, request, started, reply, &mut out).await
            {
                None => return out,
                Some(error) => error,
            };
            let relayed = out.ttft.is_some();
            tracing::warn!(
                generation_id = %generation.id(), model = %route.alias, provider = route.provider.name(),
                attempt, relayed, error = %error, "upstream failed"
            );
            let retryable = error.is_retryable();
            let delay = job.retry.delay(attempt, error.retry_after());
            out.error = Some(Error::from(&error));
            if relayed || !retryable {
                return out;
            }
            match delay {
                Some(delay) if attempt < job.retry.attempts => {
                    attempt += 1;
                    tokio::select! {
                        () = generation.cancelled() => {
                            out.cancelled = generation.cancel_reason();
                            out.error = None;
                            return out;
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
                _ => continue 'candidates,
            }
        }
    }
    out
}

/// One upstream attempt; `None` when the stream ended (or was cancelled), else the failure.
async fn relay_once(
    generation: &Generation,
    route: &ModelRoute,
    request: &ChatRequest,
    started: Instant,
    reply: &RunningReply,
    out: &mut Streamed,
) -> Option<ProviderError> {
    let provider = route.provider.name().to_string();
    let deltas_relayed =
        metrics::counter!("chatgate_deltas_relayed_total", "provider" => provider.clone());
    let mut upstream = route.provider.stream(request);
    let cancelled = generation.cancelled();
    tokio::pin!(cancelled);
    loop {
        let event = tokio::select! {
            biased;
            () = &mut cancelled => {
                out.cancelled = generation.cancel_reason();
                out.error = None;
                return None;
            }
            event = upstream.next() => event,
        };
        match event {
            Some(Ok(ProviderEvent::TextDelta(text))) => {
                first_token(generation, started, route, &provider, out);
                reply.push(&text);
                let len = text.len();
                if let Err(full) = generation.emit(GenerationEvent::delta(text)) {
                    // The saved text is exactly what was relayed: a delta the log refused is not kept.
                    reply.unpush(len);
                    out.error = Some(too_long(&full));
                    return None;
                }
                deltas_relayed.increment(1);
            }
            Some(Ok(ProviderEvent::ToolCall(call))) => {
                first_token(generation, started, route, &provider, out);
                out.tool_calls.push(&call);
                if let Err(full) = generation.emit(GenerationEvent::ToolCall(Box::new(call))) {
                    out.error = Some(too_long(&full));
                    return None;
                }
                deltas_relayed.increment(1);
            }
            Some(Ok(ProviderEvent::Usage(usage))) => out.usage.merge(usage),
            Some(Ok(ProviderEvent::Finish(reason))) => out.finish_reason = Some(reason),
            Some(Err(error)) => {
                metrics::counter!("chatgate_upstream_errors_total", "provider" => provider, "kind" => error.kind()).increment(1);
                return Some(error);
            }
            None => {
                out.error = None;
                return None;
            }
        }
    }
}

/// The first text or tool call of the reply: its time to first token is taken, and the model that answered.
fn first_token(
    generation: &Generation,
    started: Instant,
    route: &ModelRoute,
    provider: &str,
    out: &mut Streamed,
) {
    if out.ttft.is_none() {
        let ttft = started.elapsed();
        out.ttft = Some(ttft);
        generation.set_upstream_ttft(ttft);
        generation.set_upstream_model(&route.upstream_model);
        metrics::histogram!("chatgate_ttft_seconds", "provider" => provider.to_string())
            .record(ttft.as_secs_f64());
    }
}

/// The failure of a reply that outgrew its event log.
fn too_long(full: &crate::stream::LogFull) -> Error {
    Error::new(
        ErrorKind::Unprocessable,
        "generation_too_long",
        format!("the reply outgrew the generation's event log: {full}"),
    )
    .with_details(serde_json::json!({
        "events": full.events, "text_bytes": full.text_bytes,
    }))
}

/// What a local estimate counts: the prompt's messages and, when tools were offered, their definitions (names,
/// descriptions and schemas, as one more message); the reply's text and its tool calls' names and arguments.
fn counted_texts<'a>(
    request: &'a ChatRequest,
    text: &str,
    tool_calls: &ToolCalls,
) -> (std::borrow::Cow<'a, [ChatMessage]>, String) {
    let mut prompt = std::borrow::Cow::Borrowed(request.messages.as_slice());
    if !request.tools.is_empty() {
        let definitions: String = request
            .tools
            .definitions
            .iter()
            .map(|t| {
                let description = t.description.as_deref().unwrap_or("");
                format!("{} {description} {}\n", t.name, t.parameters)
            })
            .collect();
        prompt.to_mut().push(ChatMessage::system(definitions));
    }
    let completion = if tool_calls.is_empty() {
        text.to_string()
    } else {
        format!("{text}{}", tool_calls.text())
    };
    (prompt, completion)
}

/// Retries before the first token.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries of one model before moving to the next fallback.
    pub attempts: u32,
    /// First backoff; doubled each retry, with jitter.
    pub base: Duration,
    /// Longest wait: a provider asking for more moves the generation to the next fallback instead.
    pub max: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based): the provider's hint if it gave one, else
    /// `base × 2^attempt` with "equal jitter" (half fixed, half random); `None` when it is over `max`.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Option<Duration> {
        let delay = hint.unwrap_or_else(|| {
            let backoff = self.base.saturating_mul(2u32.saturating_pow(attempt));
            let jitter = jitter_fraction();
            backoff / 2 + backoff.mul_f64(jitter / 2.0)
        });
        (delay <= self.max).then_some(delay)
    }
}

/// A number in [0, 1) from the standard library's randomly seeded hasher: enough to spread retries.
fn jitter_fraction() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The provider's figures where it gave them, local tiktoken counts (flagged `estimated`) for the rest.
/// Counting runs on a blocking thread: it may load a tokenizer (about a second, once) and costs CPU time
/// proportional to the text.
pub async fn count_tokens(
    prompt: &[ChatMessage],
    route: &ModelRoute,
    usage: &Usage,
    text: &str,
) -> TokenCounts {
    let tokenizer = route.tokenizer;
    let (known_prompt, known_completion) = (usage.prompt_tokens, usage.completion_tokens);
    let estimated = known_prompt.is_none() || known_completion.is_none();
    let (prompt_tokens, completion_tokens) = match (known_prompt, known_completion) {
        (Some(prompt), Some(completion)) => (prompt, completion),
        _ => {
            let messages = known_prompt.is_none().then(|| prompt.to_vec());
            let text = known_completion.is_none().then(|| text.to_string());
            tokio::task::spawn_blocking(move || {
                (
                    known_prompt
                        .unwrap_or_else(|| messages.map_or(0, |m| tokenizer.count_prompt(&m))),
                    known_completion.unwrap_or_else(|| text.map_or(0, |t| tokenizer.count(&t))),
                )
            })
            .await
            .unwrap_or((known_prompt.unwrap_or(0), known_completion.unwrap_or(0)))
        }
    };
    TokenCounts {
        prompt_tokens,
        completion_tokens,
        cached_tokens: usage.cached_tokens.unwrap_or(0),
        reasoning_tokens: usage.reasoning_tokens.unwrap_or(0),
        estimated,
    }
}

/// Writes message and usage in one transaction (only the usage for stateless completions), retrying transient
/// failures with backoff.
async fn persist(
    chat: &Chat,
    target: Persist,
    message: &NewMessage,
    usage: &UsageRecord,
) -> Result<Message, StoreError> {
    let mut delay = Duration::from_millis(50);
    let attempts = chat.config.generation.persist_attempts.max(1);
    let mut attempt = 1;
    loop {
        let written = match target {
            Persist::UsageOnly => chat
                .writes
                .reply(MessageWrite::Usage(usage.clone()))
                .await
                .map(|_| Message::from_new(message, Some(usage))),
            Persist::Conversation { .. } => chat
                .writes
                .reply(MessageWrite::Reply(message.clone(), usage.clone()))
                .await
                .map(|updated_at| Message::saved(message, usage, updated_at)),
        };
        match written {
            Ok(saved) => return Ok(saved),
            // The conversation was deleted meanwhile: retrying cannot help.
            Err(err @ (StoreError::Conflict(_) | StoreError::NotFound(_))) => return Err(err),
            Err(err) if attempt >= attempts => return Err(err),
            Err(err) => {
                tracing::warn!(message_id = %message.id, attempt, error = %err, "saving the generation failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                attempt += 1;
            }
        }
    }
}

pub(super) fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// `sampling` without the settings `provider` has no counterpart for.
fn supported(provider: &dyn crate::providers::Provider, mut sampling: Sampling) -> Sampling {
    while let Some(name) = provider.unsupported(&sampling) {
        if !sampling.clear(name) {
            break;
        }
    }
    sampling
}
