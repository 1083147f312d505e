//! The prompt: the persona's system prompt, then as much recent history as fits the model, then the new
//! message; and the images of earlier messages that go with it.

use std::collections::HashMap;

use serde_json::json;

use super::Chat;
use crate::catalog::ModelRoute;
use crate::config::GenerationConfig;
use crate::domain::{MessageType, Role};
use crate::error::{Error, ErrorKind};
use crate::id::Id;
use crate::media::Kind;
use crate::providers::{ChatMessage, MediaData};
use crate::store::{HistoryTurn, Persona};

/// Prompt tokens counted for one image when fitting history and reserving budget: an upper estimate (Anthropic
/// bills about 1,600 tokens for a 1092×1092 image; OpenAI at most 1,105 for a high-detail 1024×1024 one).
pub const IMAGE_TOKENS: u64 = 1600;

/// The persona's system prompt, then as much recent history as fits, then the new message.
#[derive(Debug)]
pub struct Prompt {
    pub messages: Vec<ChatMessage>,
    /// The prompt's tokens: the history's stored counts, bounds for the rest (an upper estimate).
    pub tokens: u64,
    /// History messages that had no stored count and were counted here: `(id, tokens)`, to record
    /// ([`Chat::record_content_tokens`]) so that it happens once.
    pub counted: Vec<(Id, i64)>,
}

/// The persona's system prompt, then as much recent history as fits, then the new message.
///
/// The budget is the smaller of `generation.max_history_tokens` and the model's context window less the system
/// prompt and `generation.reserve_output_tokens`. History turns cost their stored token count
/// ([`HistoryTurn::content_tokens`]: a reply's, from its usage) plus 3 of framing and [`IMAGE_TOKENS`] an image.
/// A turn without one (a user message, or a row from before counts were stored) costs its byte length, which
/// bounds its tokens (byte-level BPE), as long as the whole history fits by those bounds: then no tokenizer runs.
/// When it does not, such turns are counted with tiktoken (once: they are returned in [`Prompt::counted`] for
/// the caller to record), so that the history fills the budget exactly: never over, and short of it by less
/// than the next message. The new message and the system prompt cost their byte bound, counted only when that
/// bound alone would overflow the budget.
///
/// # Errors
/// `invalid` / `context_length_exceeded` when the new message alone does not fit.
pub fn build(
    config: &GenerationConfig,
    persona: &Persona,
    route: &ModelRoute,
    history_newest_first: &[HistoryTurn],
    history_images: &HashMap<Id, Vec<MediaData>>,
    new_message: ChatMessage,
) -> Result<Prompt, Error> {
    let system = ChatMessage::system(crate::personas::system_prompt(persona));
    let tokenizer = route.tokenizer;
    let reserved = u64::from(config.reserve_output_tokens);
    // The system prompt's byte length bounds its tokens; count exactly only when the window is what limits the
    // history (most models' windows dwarf max_history_tokens, and then no tokenizer is needed at all).
    let system_upper = 3 + system.content.len() as u64 + 3;
    let system_tokens = if u64::from(route.context_window).saturating_sub(reserved + system_upper)
        >= u64::from(config.max_history_tokens)
    {
        system_upper
    } else {
        tokenizer.count_message(&system) + 3
    };
    let window_budget = u64::from(route.context_window)
        .saturating_sub(reserved)
        .saturating_sub(system_tokens);
    let budget = window_budget.min(u64::from(config.max_history_tokens));
    let cost = |m: &ChatMessage, spent: u64| {
        let images = IMAGE_TOKENS * m.images.len() as u64;
        let upper = 3 + m.content.len() as u64 + images;
        if spent + upper <= budget {
            upper
        } else {
            tokenizer.count_message(m) + images
        }
    };

    let mut spent = cost(&new_message, 0);
    if spent > budget {
        return Err(Error::new(
            ErrorKind::Invalid,
            "context_length_exceeded",
            format!(
                "the message needs {spent} tokens; model '{}' has room for {budget}",
                route.alias
            ),
        )
        .with_details(json!({ "tokens": spent, "budget": budget })));
    }
    // What each turn costs beyond its text: framing, its images, and a trace added to its text (" [image]",
    // at most its bytes). Turns are shaped first and built (their text copied) only once included.
    let shaped: Vec<(&HistoryTurn, Shape<'_>)> = history_newest_first
        .iter()
        .filter_map(|message| Some((message, shape(message, history_images)?)))
        .collect();
    let stored = |message: &HistoryTurn| message.content_tokens.and_then(|t| u64::try_from(t).ok());
    let bound: u64 = shaped
        .iter()
        .map(|(message, shape)| {
            shape.extra() + stored(message).unwrap_or(message.content.len() as u64)
        })
        .sum();
    // When even the bounds fit, the whole history goes and nothing needs counting (most conversations: the
    // tokenizer is never loaded for them). Otherwise each turn costs its exact count: the stored one, else
    // counted now (once: the caller records it).
    let exact = spent + bound > budget;
    let mut included = Vec::with_capacity(shaped.len());
    let mut counted_now = Vec::new();
    for (message, shape) in shaped {
        let content_tokens = match stored(message) {
            Some(stored) => stored,
            None if !exact => message.content.len() as u64,
            None => {
                let counted = tokenizer.count(&message.content);
                counted_now.push((message.id, i64::try_from(counted).unwrap_or(i64::MAX)));
                counted
            }
        };
        let tokens = shape.extra() + content_tokens;
        if spent + tokens > budget {
            break;
        }
        spent += tokens;
        included.push(shape.turn(message));
    }
    let mut messages = Vec::with_capacity(included.len() + 2);
    messages.push(system);
    messages.extend(included.into_iter().rev());
    messages.push(new_message);
    Ok(Prompt {
        messages,
        tokens: system_tokens + spent,
        counted: counted_now,
    })
}

/// How a stored message goes into the prompt.
enum Shape<'a> {
    /// As its text (a reply, or a user message without images).
    Text,
    /// A user message with the images sent again.
    WithImages(&'a [MediaData]),
    /// A user message whose image the model will not see: its text and a trace, so the turn is never empty.
    ImageTrace,
}

const IMAGE_TRACE: &str = " [image]";

/// How `message` goes into the prompt; `None` for what is not sent (empty replies, system rows).
fn shape<'a>(
    message: &HistoryTurn,
    history_images: &'a HashMap<Id, Vec<MediaData>>,
) -> Option<Shape<'a>> {
    match message.role {
        Role::User => Some(match history_images.get(&message.id) {
            Some(images) => Shape::WithImages(images),
            None if !crate::store::media_ids_of(&message.media).is_empty()
                && message.message_type != MessageType::Audio =>
            {
                Shape::ImageTrace
            }
            None => Shape::Text,
        }),
        Role::Assistant if !message.content.is_empty() => Some(Shape::Text),
        _ => None,
    }
}

impl Shape<'_> {
    /// Tokens beyond the text's own: 3 of framing, [`IMAGE_TOKENS`] an image, the trace's bytes.
    fn extra(&self) -> u64 {
        3 + match self {
            Shape::Text => 0,
            Shape::WithImages(images) => IMAGE_TOKENS * images.len() as u64,
            Shape::ImageTrace => IMAGE_TRACE.len() as u64,
        }
    }

    /// The turn itself.
    fn turn(&self, message: &HistoryTurn) -> ChatMessage {
        let text = message.content.clone();
        match (self, message.role) {
            (Shape::WithImages(images), _) => ChatMessage::user(text).with_images(images.to_vec()),
            (Shape::ImageTrace, _) => {
                ChatMessage::user(format!("{text}{IMAGE_TRACE}").trim_start().to_string())
            }
            (Shape::Text, Role::Assistant) => ChatMessage::assistant(text),
            (Shape::Text, _) => ChatMessage::user(text),
        }
    }
}

/// Images of earlier messages sent again with the history (a question about "the photo" needs the photo):
/// those of the most recent user messages, up to `media.max_per_message` images, read from storage; none for a
/// model that does not take images.
///
/// # Errors
/// When the database or the media storage fails.
pub async fn history_images(
    chat: &Chat,
    user_id: &str,
    route: &ModelRoute,
    history_newest_first: &[HistoryTurn],
) -> Result<HashMap<Id, Vec<MediaData>>, Error> {
    let mut found = HashMap::new();
    if !route.accepts_images {
        return Ok(found);
    }
    let mut budget = chat.media.max_per_message();
    for message in history_newest_first {
        if budget == 0 {
            break;
        }
        if message.role != Role::User || !message.message_type.has_images() {
            continue;
        }
        let mut images = images_of(chat, user_id, &message.media).await?;
        images.truncate(budget);
        budget -= images.len();
        if !images.is_empty() {
            found.insert(message.id, images);
        }
    }
    Ok(found)
}

/// The images of a stored message (from its `media` JSON), for sending it again; media since deleted are left
/// out.
///
/// # Errors
/// When the database or the media storage fails.
pub async fn images_of(
    chat: &Chat,
    user_id: &str,
    media: &serde_json::Value,
) -> Result<Vec<MediaData>, Error> {
    let mut images = Vec::new();
    for id in crate::store::media_ids_of(media) {
        if let Some(found) = chat.store.get_media(user_id, id).await?
            && Kind::of(&found.content_type) == Some(Kind::Image)
        {
            images.push(chat.media.media_data(&found).await?);
        }
    }
    Ok(images)
}
