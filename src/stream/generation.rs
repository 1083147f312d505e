//! One generation's life: stream from the provider, relay each delta the moment it arrives, then — off the
//! relay path — count tokens, price them and write the assistant message and its usage record in one
//! transaction, and only then announce `done`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;

use super::hub::{CancelReason, EventKind, Generation, Outcome};
use crate::error::ApiError;
use crate::providers::{
    ChatMessage, ChatRequest, ModelRoute, Models, ProviderError, ProviderEvent,
};
use crate::store::{self, Id, Message, NewMessage, Store, StoreError, UsageRecord, role, status};
use crate::usage::budget::Reservation;
use crate::usage::tokens::Tokenizer;
use crate::usage::{TokenCounts, Usage, nanousd_to_usd};

/// Everything a generation needs, prepared by the handler.
pub struct GenerationJob {
    pub route: ModelRoute,
    pub request: ChatRequest,
    pub store: Arc<dyn Store>,
    pub user_id: String,
    pub conversation_id: Id,
    pub persona_id: Option<Id>,
    /// The user message this answers (`parent_id` of the reply).
    pub parent_id: Option<Id>,
    /// Attempts at the final write before giving up.
    pub persist_attempts: u32,

    /// Routes tried in order when `route` fails before its first token.
    pub fallbacks: Vec<ModelRoute>,
    /// The budget reservation, swapped for the actual usage once it is saved.
    pub reservation: Reservation,
    /// A reply of the stateless OpenAI-compatible endpoint: only its usage record is written, no message.
    pub stateless: bool,
    pub retry: RetryPolicy,
}

/// What the provider stream produced.
struct Streamed {
    /// The route that answered (or was tried last).
    route: ModelRoute,
    usage: Usage,
    finish_reason: Option<String>,
    error: Option<ProviderError>,
    cancelled: Option<CancelReason>,
    ttft: Option<Duration>,
}

/// Emits `error` if the task ends (or panics) without a terminal event, so no subscriber waits forever.
struct TerminalGuard(Arc<Generation>);

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        if self.0.outcome_now().is_none() {
            let err = ApiError::internal("generation task ended without a terminal event");
            let data = json!({ "error": err.error, "message": "the generation stopped unexpectedly", "details": {} });
            self.0.finish(
                Outcome {
                    message: None,
                    error: Some(err),
                },
                EventKind::Error,
                data.to_string(),
            );
        }
    }
}

/// Runs a generation to its end. Never fails: every failure becomes a saved message and a terminal event.
pub async fn run(generation: Arc<Generation>, mut job: GenerationJob) {
    let _guard = TerminalGuard(Arc::clone(&generation));
    let started = Instant::now();
    let created_at = store::now();
    generation.emit(
        EventKind::Start,
        json!({
            "generation_id": generation.id,
            "message_id": generation.id,
                        "conversation_id": (!job.stateless).then_some(job.conversation_id),
            "model": job.route.alias,
        })
        .to_string(),
    );

    let template = NewMessage {
        id: generation.id,
        conversation_id: job.conversation_id,
        parent_id: job.parent_id,
        role: role::ASSISTANT,
        content: String::new(),
        message_type: "text".into(),
        media: json!([]),
        status: status::STREAMING,
        model: Some(job.route.alias.clone()),
        provider: Some(job.route.provider.name().to_string()),
        finish_reason: None,
        error: None,
        created_at,
    };
    // A rough prompt size (4 bytes a token), for billing the reply if this process dies mid-stream; an exact
    // count would load the tokenizer for every generation.
    let prompt_estimate: u64 = 3 + job
        .request
        .messages
        .iter()
        .map(|m| 3 + (m.content.len() as u64).div_ceil(4))
        .sum::<u64>();
    // From now on the hub's checkpointer writes this reply's row in its periodic batch, never on this path.
    if !job.stateless {
        generation.enable_checkpoints(
            template.clone(),
            i64::try_from(prompt_estimate).unwrap_or(i64::MAX),
        );
    }
    let streamed = relay(&generation, &job).await;
    let duration = started.elapsed();
    let text = generation.text();

    // Count, price and record with the route that actually answered.
    let route = &streamed.route;
    let counts = count_tokens(&job.request.messages, route, &streamed.usage, &text).await;
    let cost_nanousd = route.prices.cost_nanousd(&counts);
    let (message_status, finish_reason) = match (&streamed.error, streamed.cancelled) {
        (Some(_), _) => (status::FAILED, "error".to_string()),
        (None, Some(CancelReason::Shutdown)) => (
            status::INTERRUPTED,
            CancelReason::Shutdown.finish_reason().to_string(),
        ),
        (None, Some(reason)) => (status::CANCELLED, reason.finish_reason().to_string()),
        (None, None) => (
            status::COMPLETE,
            streamed
                .finish_reason
                .clone()
                .unwrap_or_else(|| "stop".into()),
        ),
    };
    let message = NewMessage {
        content: text,
        status: message_status,
        finish_reason: Some(finish_reason.clone()),
        error: streamed.error.as_ref().map(ToString::to_string),
        model: Some(route.alias.clone()),
        provider: Some(route.provider.name().to_string()),
        ..template
    };
    let usage = UsageRecord {
        id: Id::new(),
        user_id: job.user_id.clone(),
        conversation_id: (!job.stateless).then_some(job.conversation_id),
        message_id: (!job.stateless).then_some(generation.id),
        persona_id: job.persona_id,
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
    let saved = persist(&job, &message, &usage).await;
    metrics::histogram!("chatgate_db_write_seconds", "op" => "save")
        .record(write_started.elapsed().as_secs_f64());
    metrics::counter!("chatgate_generations_finished_total", "model" => route.alias.clone(), "outcome" => message_status)
        .increment(1);
    let provider_name = route.provider.name().to_string();
    metrics::counter!("chatgate_tokens_total", "provider" => provider_name.clone(), "kind" => "prompt")
        .increment(counts.prompt_tokens);
    metrics::counter!("chatgate_tokens_total", "provider" => provider_name, "kind" => "completion")
        .increment(counts.completion_tokens);
    if saved.is_ok() {
        // The usage is in the database now: the budget counts it instead of the estimate.
        std::mem::replace(&mut job.reservation, Reservation::none()).settle(
            counts.prompt_tokens + counts.completion_tokens,
            cost_nanousd.max(0) as u64,
        );
    }
    let usage_json = json!({
        "prompt_tokens": counts.prompt_tokens,
        "completion_tokens": counts.completion_tokens,
        "cached_tokens": counts.cached_tokens,
        "reasoning_tokens": counts.reasoning_tokens,
        "estimated": counts.estimated,
        "cost_usd": nanousd_to_usd(cost_nanousd),
    });
    generation.emit(EventKind::Usage, usage_json.to_string());

    match (saved, streamed.error) {
        (Ok(saved), None) => {
            let data =
                json!({ "message": saved, "usage": usage_json, "finish_reason": finish_reason });
            generation.finish(
                Outcome {
                    message: Some(saved),
                    error: None,
                },
                EventKind::Done,
                data.to_string(),
            );
        }
        (Ok(saved), Some(error)) => {
            let api = ApiError::from(&error).with_details(
                json!({ "message_id": saved.id, "partial": !saved.content.is_empty() }),
            );
            let data = api.body();
            generation.finish(
                Outcome {
                    message: Some(saved),
                    error: Some(api),
                },
                EventKind::Error,
                data.to_string(),
            );
        }
        (Err(err), _) => {
            tracing::error!(generation_id = %generation.id, error = %err, "could not save the generation");
            let api = ApiError::unavailable("the reply could not be saved", err);
            let data = json!({ "error": api.error, "message": api.message, "details": { "message_id": generation.id } });
            generation.finish(
                Outcome {
                    message: None,
                    error: Some(api),
                },
                EventKind::Error,
                data.to_string(),
            );
        }
    }
}

/// Streams from the model, then its fallbacks: a retryable failure before any delta was relayed is retried
/// with jittered exponential backoff (honouring the provider's retry hint), then the next fallback is tried.
/// Once a delta has been relayed, a failure ends the generation: it never switches silently.
async fn relay(generation: &Generation, job: &GenerationJob) -> Streamed {
    let started = Instant::now();
    let mut out = Streamed {
        route: job.route.clone(),
        usage: Usage::default(),
        finish_reason: None,
        error: None,
        cancelled: None,
        ttft: None,
    };
    let candidates = std::iter::once(&job.route).chain(job.fallbacks.iter());
    'candidates: for route in candidates {
        out.route = route.clone();
        let mut attempt = 0;
        loop {
            let request = ChatRequest {
                model: route.upstream_model.clone(),
                max_tokens: route.max_output_tokens,
                ..job.request.clone()
            };
            let error = match relay_once(generation, route, request, started, &mut out).await {
                None => return out,
                Some(error) => error,
            };
            let relayed = out.ttft.is_some();
            tracing::warn!(
                generation_id = %generation.id, model = %route.alias, provider = route.provider.name(),
                attempt, relayed, error = %error, "upstream failed"
            );
            if relayed || !error.is_retryable() {
                out.error = Some(error);
                return out;
            }
            let delay = job.retry.delay(attempt, error.retry_after());
            out.error = Some(error);
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
    request: ChatRequest,
    started: Instant,
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
                if out.ttft.is_none() {
                    let ttft = started.elapsed();
                    out.ttft = Some(ttft);
                    generation.set_upstream_ttft(ttft);
                    metrics::histogram!("chatgate_ttft_seconds", "provider" => provider.clone())
                        .record(ttft.as_secs_f64());
                }
                generation.emit_delta(&text);
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
pub(crate) async fn count_tokens(
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

/// Writes message and usage in one transaction, retrying transient failures with backoff.
async fn persist(
    job: &GenerationJob,
    message: &NewMessage,
    usage: &UsageRecord,
) -> Result<Message, StoreError> {
    let mut delay = Duration::from_millis(50);
    let attempts = job.persist_attempts.max(1);
    let mut attempt = 1;
    loop {
        let written = if job.stateless {
            job.store
                .record_usage(usage)
                .await
                .map(|()| Message::from_new(message, Some(usage)))
        } else {
            job.store.save_generation(message, usage).await
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

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Bills and closes the replies a dead process left `streaming` (this instance's previous life, or any whose
/// heartbeat is older than `stale_before`): status `interrupted`, the last checkpointed text, and one usage
/// record with estimated counts (the prompt estimate taken when the reply started, the text counted now).
/// Returns how many were closed.
///
/// # Errors
/// When the database fails.
pub async fn recover_interrupted(
    store: &dyn Store,
    models: &Models,
    instance_id: &str,
    stale_before: chrono::DateTime<chrono::Utc>,
) -> Result<usize, StoreError> {
    let mut recovered = 0;
    for stale in store.stale_replies(instance_id, stale_before).await? {
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
            role: role::ASSISTANT,
            content: message.content.clone(),
            message_type: message.message_type.clone(),
            media: message.media.clone(),
            status: status::INTERRUPTED,
            model: message.model.clone(),
            provider: message.provider.clone(),
            finish_reason: Some("interrupted".into()),
            error: Some("the server stopped before the reply was finished".into()),
            created_at: message.created_at,
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
