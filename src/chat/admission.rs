//! Admission: what is checked before anything is written. The body's shape (no I/O), then the limits:
//! concurrent replies per user, unattended replies, and the token and cost budgets, which reserve the request's
//! estimate until its usage is saved.

use serde_json::json;

use super::{Chat, SendRequest};
use crate::catalog::ModelRoute;
use crate::cluster::limits::HoldKind;
use crate::config::Config;
use crate::domain::{MessageType, Role};
use crate::error::{Error, ErrorKind};
use crate::media::MediaStore;
use crate::providers::ChatMessage;
use crate::stream::Hub;
use crate::usage::TokenCounts;
use crate::usage::budget::{Estimate, Reservation};

/// Checks a send's shape (no I/O); returns the message text, which only `text` and `multimodal` messages
/// require. `multimodal`: text and images; `image`: images, text optional; `audio`: one voice note (a
/// `media_ids` entry, `media_urls` entry, `audio_url` or inline upload), text optional.
///
/// # Errors
/// `invalid` / `validation_error` naming the field; `too_large` past `limits.max_message_bytes`.
pub fn validate(config: &Config, media: &MediaStore, body: &SendRequest) -> Result<String, Error> {
    let attachments = body.media_ids.len()
        + body.media_urls.len()
        + body.uploads.len()
        + usize::from(body.audio_url.is_some());
    let content = body.content.as_deref().unwrap_or("");
    match body.message_type {
        MessageType::Text => {
            if attachments > 0 || body.audio_duration_seconds.is_some() {
                return Err(Error::validation(
                    "media_ids",
                    "media can only be sent with a multimodal, image or audio message",
                ));
            }
        }
        MessageType::Multimodal | MessageType::Image => {
            if body.audio_url.is_some() {
                return Err(Error::validation(
                    "audio_url",
                    "audio goes in an audio message",
                ));
            }
            if attachments == 0 {
                return Err(Error::validation(
                    "media_ids",
                    format!(
                        "a {} message needs at least one image (media_ids or media_urls)",
                        body.message_type
                    ),
                ));
            }
        }
        MessageType::Audio => {
            if attachments != 1 {
                return Err(Error::validation(
                    "media_ids",
                    "an audio message carries exactly one voice note (media_ids, media_urls or audio_url)",
                ));
            }
        }
    }
    if body.message_type != MessageType::Audio && body.audio_duration_seconds.is_some() {
        return Err(Error::validation(
            "audio_duration_seconds",
            "only an audio message has a duration",
        ));
    }
    if body
        .audio_duration_seconds
        .is_some_and(|d| !d.is_finite() || d < 0.0)
    {
        return Err(Error::validation(
            "audio_duration_seconds",
            "must be a non-negative number",
        ));
    }
    let max_media = media.max_per_message();
    if attachments > max_media {
        return Err(Error::validation(
            "media_ids",
            format!("at most {max_media} media per message"),
        ));
    }
    if matches!(
        body.message_type,
        MessageType::Text | MessageType::Multimodal
    ) && content.trim().is_empty()
    {
        return Err(Error::validation("content", "must not be empty"));
    }
    let limit = config.limits.max_message_bytes;
    if content.len() > limit {
        return Err(Error::payload_too_large(format!(
            "content is {} bytes; the limit is {limit}",
            content.len()
        ))
        .with_details(
            json!({ "field": "content", "limit_bytes": limit, "size_bytes": content.len() }),
        ));
    }
    Ok(content.to_string())
}

/// Checks a stateless completion's messages: a user message, images only on user messages and only for a
/// model that takes them, and the whole within `server.max_body_bytes`.
///
/// # Errors
/// `invalid` / `validation_error` on `messages`; `model_cannot_take_images`; `too_large`.
pub fn check_completion(
    config: &Config,
    route: &ModelRoute,
    messages: &[ChatMessage],
) -> Result<(), Error> {
    for message in messages.iter().filter(|m| !m.images.is_empty()) {
        if message.role != Role::User {
            return Err(Error::validation(
                "messages",
                "only user messages may carry images",
            ));
        }
        if !route.accepts_images {
            return Err(Error::new(
                ErrorKind::Invalid,
                "model_cannot_take_images",
                format!("The model `{}` does not take images", route.alias),
            )
            .with_details(json!({ "field": "messages" })));
        }
    }
    if !messages.iter().any(|m| m.role == Role::User) {
        return Err(Error::validation(
            "messages",
            "at least one user message is required",
        ));
    }
    let bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    if bytes > config.server.max_body_bytes {
        return Err(Error::payload_too_large(
            "the messages are larger than server.max_body_bytes",
        ));
    }
    Ok(())
}

/// `unprocessable` / `model_cannot_take_images`, naming the model.
pub fn takes_no_images(route: &ModelRoute) -> Error {
    Error::new(
        ErrorKind::Unprocessable,
        "model_cannot_take_images",
        format!(
            "model '{}' does not take images; pick a model with \"image\" in its modalities",
            route.alias
        ),
    )
    .with_details(json!({ "model": route.alias }))
}

/// A reply nobody follows yet is refused past `generation.max_unattended`.
///
/// # Errors
/// `rate_limited` / `too_many_unattended`, retry in 5 s.
pub fn refuse_if_unattended_full(hub: &Hub) -> Result<(), Error> {
    if hub.unattended_full() {
        return Err(Error::new(
            ErrorKind::RateLimited,
            "too_many_unattended",
            "too many replies are running with nobody following them; follow one or try again shortly",
        )
        .with_retry_after(5));
    }
    Ok(())
}

/// The limits checked before anything is written: concurrent generations per user, then the token and cost
/// budgets, reserving this request's estimate (its prompt plus the reply's allowance) until its usage is saved.
///
/// # Errors
/// `rate_limited` / `rate_limited` (concurrency, retry in 1 s) or `budget_exceeded` (retry when it resets);
/// `unavailable` when the database cannot say what was spent.
pub async fn admit(
    chat: &Chat,
    user_id: &str,
    route: &ModelRoute,
    prompt_tokens: u64,
) -> Result<Reservation, Error> {
    let max = chat.config.limits.max_concurrent_generations;
    let too_many = || {
        Error::new(
            ErrorKind::RateLimited,
            "rate_limited",
            format!("at most {max} replies may run at once for one user"),
        )
        .with_details(json!({ "limit": "max_concurrent_generations", "value": max }))
        .with_retry_after(1)
    };
    // Counted across the instances when they share Redis; by this instance alone when Redis does not answer.
    let mut hold = None;
    let shared = match (&chat.cluster, max) {
        (Some(cluster), 1..) => match cluster.hold(HoldKind::Generation, user_id, max).await {
            Ok(Some(taken)) => {
                hold = Some(taken);
                true
            }
            Ok(None) => return Err(too_many()),
            Err(err) => {
                tracing::debug!(error = %err, "concurrent generations counted by this instance alone");
                false
            }
        },
        _ => false,
    };
    if max > 0 && !shared && chat.hub.running_for(user_id) >= max {
        return Err(too_many());
    }
    let reply_allowance = route
        .max_output_tokens
        .unwrap_or(chat.config.generation.reserve_output_tokens);
    let counts = TokenCounts {
        prompt_tokens,
        completion_tokens: u64::from(reply_allowance),
        ..TokenCounts::default()
    };
    let estimate = Estimate {
        tokens: prompt_tokens + u64::from(reply_allowance),
        nanousd: route.prices.cost_nanousd(&counts).max(0) as u64,
    };
    match chat
        .budgets
        .reserve(&*chat.store, user_id, estimate)
        .await?
    {
        Ok(reservation) => Ok(reservation.holding(hold)),
        Err(over) => Err(Error::new(
            ErrorKind::RateLimited,
            "budget_exceeded",
            format!(
                "this request would exceed the {} (it resets in {} s)",
                over.limit, over.retry_after_secs
            ),
        )
        .with_details(json!({ "limit": over.limit, "estimate_tokens": estimate.tokens }))
        .with_retry_after(over.retry_after_secs)),
    }
}
