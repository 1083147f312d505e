//! Conversation titles: a short title written by a model from the first exchange, in the background after the
//! first reply (never delaying it), or on demand (`POST /api/v1/conversations/{id}/title`). The title's tokens
//! are recorded as usage of the conversation, like any other request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::Chat;
use crate::catalog::ModelRoute;
use crate::domain::{MessageStatus, Role};
use crate::error::{Error, ErrorKind};
use crate::event::GenerationEvent;
use crate::providers::{ChatMessage, ChatRequest, ProviderEvent};
use crate::store::{self, Conversation, HistoryPage, Id, MessageWrite, UsageRecord};
use crate::stream::Generation;
use crate::usage::Usage;

/// Longest title kept, in characters; a longer answer is cut at a word boundary.
pub const MAX_CHARS: usize = 60;
/// How much of each side of the exchange the title model sees, in characters.
const EXCERPT_CHARS: usize = 1500;

const INSTRUCTIONS: &str = "You write titles for chat conversations. Reply with the title only: at most six \
words, in the language of the conversation, no quotes, no trailing punctuation.";

/// After the conversation's first reply is saved, titles it (when `[titles].enabled`), in a tracked background
/// task (shutdown waits for it, so its usage record is never dropped). Failures are logged and leave the
/// conversation untitled.
pub fn after_first_reply(
    chat: &Chat,
    user_id: &str,
    conversation_id: Id,
    question: String,
    generation: Arc<Generation>,
) {
    if !chat.config.titles.enabled {
        return;
    }
    let chat = chat.clone();
    let user_id = user_id.to_string();
    let tasks = chat.tasks.clone();
    tasks.spawn(async move {
        let terminal = generation.finished().await;
        let GenerationEvent::Done(done) = &terminal.event else {
            return;
        };
        let reply = &done.message;
        if reply.status != MessageStatus::Complete {
            return;
        }
        let answered_by = reply.model.clone();
        match write(
            &chat,
            &user_id,
            conversation_id,
            &question,
            &reply.content,
            answered_by.as_deref(),
        )
        .await
        {
            Ok(title) => {
                match chat
                    .store
                    .title_if_untitled(&user_id, conversation_id, &title)
                    .await
                {
                    Ok(_) => tracing::debug!(%conversation_id, title, "conversation titled"),
                    Err(err) => tracing::warn!(%conversation_id, %err, "saving a title failed"),
                }
            }
            Err(err) => tracing::warn!(%conversation_id, %err, "writing a title failed"),
        }
    });
}

/// Writes a new title for the caller's conversation from its first exchange and saves it, replacing any title.
///
/// # Errors
/// 404 when the conversation is not the caller's; 409 `conflict` before its first reply; 502/504 when the
/// title model fails.
pub async fn regenerate(
    chat: &Chat,
    user_id: &str,
    conversation: &Conversation,
) -> Result<Conversation, Error> {
    let first = chat
        .store
        .list_messages(conversation.id, HistoryPage::Offset(0), 20, true, false)
        .await?;
    let question = first.iter().find(|m| m.role == Role::User);
    let reply = question.and_then(|q| {
        first.iter().find(|m| {
            m.role == Role::Assistant && m.parent_id == Some(q.id) && !m.content.is_empty()
        })
    });
    let (Some(question), Some(reply)) = (question, reply) else {
        return Err(Error::conflict(
            "the conversation has no reply yet; a title is written from its first exchange",
        ));
    };
    let title = write(
        chat,
        user_id,
        conversation.id,
        &question.content,
        &reply.content,
        reply.model.as_deref(),
    )
    .await?;
    chat.store
        .update_conversation(user_id, conversation.id, Some(Some(&title)), None)
        .await?
        .ok_or_else(|| Error::not_found("conversation"))
}

/// Asks the title model for a title and records its usage; returns the cleaned title.
async fn write(
    chat: &Chat,
    user_id: &str,
    conversation_id: Id,
    question: &str,
    answer: &str,
    answered_by: Option<&str>,
) -> Result<String, Error> {
    let config = &chat.config.titles;
    let alias = Some(config.model.as_str())
        .filter(|m| !m.is_empty())
        .or(answered_by)
        .unwrap_or(chat.models.default_alias());
    let route = chat
        .models
        .get(alias)
        .or_else(|| chat.models.get(chat.models.default_alias()))
        .cloned()
        .ok_or_else(|| Error::internal(format!("no model alias '{alias}' for titles")))?;
    if route.provider.is_mock() {
        // The mock's words are placeholders: the question's first words make a better title, and cost nothing.
        let words: Vec<&str> = question.split_whitespace().take(6).collect();
        return clean(&words.join(" ")).ok_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                "conflict",
                "the first message has no words to make a title of",
            )
        });
    }
    let excerpt = |text: &str| text.chars().take(EXCERPT_CHARS).collect::<String>();
    let messages = vec![
        ChatMessage::system(INSTRUCTIONS.to_string()),
        ChatMessage::user(format!(
            "Conversation:\nUser: {}\nAssistant: {}\n\nTitle:",
            excerpt(question),
            excerpt(answer)
        )),
    ];
    let request = ChatRequest {
        model: route.upstream_model.clone(),
        messages: messages.clone(),
        max_tokens: Some(config.max_tokens),
        sampling: Default::default(),
        tools: Default::default(),
    };
    let started = Instant::now();
    let (text, usage) = tokio::time::timeout(
        Duration::from_millis(config.timeout_ms),
        collect(&route, &request),
    )
    .await
    .map_err(|_| {
        Error::new(
            ErrorKind::Timeout,
            "upstream_timeout",
            format!("the title model took longer than {} ms", config.timeout_ms),
        )
    })??;
    record_usage(
        chat,
        user_id,
        conversation_id,
        &route,
        &messages,
        &text,
        &usage,
        started,
    )
    .await;
    clean(&text).ok_or_else(|| {
        Error::new(
            ErrorKind::Upstream,
            "upstream_error",
            "the title model answered with no title",
        )
    })
}

/// The whole reply of one provider request.
async fn collect(route: &ModelRoute, request: &ChatRequest) -> Result<(String, Usage), Error> {
    let mut stream = route.provider.stream(request);
    let mut text = String::new();
    let mut usage = Usage::default();
    while let Some(event) = stream.next().await {
        match event.map_err(|e| Error::from(&e))? {
            ProviderEvent::TextDelta(delta) => text.push_str(&delta),
            ProviderEvent::Usage(u) => usage.merge(u),
            ProviderEvent::Finish(_) | ProviderEvent::ToolCall(_) => {}
        }
    }
    Ok((text, usage))
}

#[allow(clippy::too_many_arguments)]
async fn record_usage(
    chat: &Chat,
    user_id: &str,
    conversation_id: Id,
    route: &ModelRoute,
    prompt: &[ChatMessage],
    text: &str,
    usage: &Usage,
    started: Instant,
) {
    let counts = super::generation::count_tokens(prompt, route, usage, text).await;
    let record = UsageRecord {
        id: Id::new(),
        user_id: user_id.to_string(),
        conversation_id: Some(conversation_id),
        message_id: None,
        persona_id: None,
        model: route.alias.clone(),
        upstream_model: route.upstream_model.clone(),
        provider: route.provider.name().to_string(),
        prompt_tokens: i64::try_from(counts.prompt_tokens).unwrap_or(i64::MAX),
        completion_tokens: i64::try_from(counts.completion_tokens).unwrap_or(i64::MAX),
        cached_tokens: i64::try_from(counts.cached_tokens).unwrap_or(i64::MAX),
        reasoning_tokens: i64::try_from(counts.reasoning_tokens).unwrap_or(i64::MAX),
        estimated: counts.estimated,
        cost_nanousd: route.prices.cost_nanousd(&counts),
        ttft_ms: None,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        created_at: store::now(),
    };
    if let Err(err) = chat.writes.reply(MessageWrite::Usage(record)).await {
        tracing::warn!(%conversation_id, %err, "recording a title's usage failed");
    }
}

/// The title in a model's answer: its first non-empty line, without a `Title:` prefix, markdown, quotes or
/// trailing punctuation, cut to [`MAX_CHARS`] at a word boundary; `None` when nothing is left.
pub fn clean(answer: &str) -> Option<String> {
    let trim = |c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '"' | '\'' | '`' | '*' | '#' | '“' | '”' | '‘' | '’' | '«' | '»'
            )
    };
    let line = answer
        .lines()
        .map(|l| l.trim_matches(trim))
        .find(|l| !l.is_empty())?;
    let line = line
        .strip_prefix("Title:")
        .or_else(|| line.strip_prefix("title:"))
        .unwrap_or(line);
    let mut title = line
        .trim_matches(trim)
        .trim_end_matches(['.', '!', '?', ':', ';', ','])
        .trim_matches(trim)
        .to_string();
    if title.chars().count() > MAX_CHARS {
        let cut: String = title.chars().take(MAX_CHARS).collect();
        title = match cut.rfind(' ') {
            Some(space) if space > MAX_CHARS / 2 => cut[..space].to_string(),
            _ => cut,
        };
        title = title
            .trim_end_matches(|c: char| c.is_whitespace() || c.is_ascii_punctuation())
            .to_string();
    }
    (!title.is_empty()).then_some(title)
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn titles_lose_quotes_markup_and_trailing_punctuation() {
        assert_eq!(
            clean("\"Planning a trip to Kyoto.\"").as_deref(),
            Some("Planning a trip to Kyoto")
        );
        assert_eq!(
            clean("\n  **Title: Sourdough basics**\nmore").as_deref(),
            Some("Sourdough basics")
        );
        assert_eq!(
            clean("Title: “Dinner ideas”").as_deref(),
            Some("Dinner ideas")
        );
        assert_eq!(clean("  \n\"\" ").as_deref(), None);
    }

    #[test]
    fn long_titles_are_cut_at_a_word() {
        let long = "word ".repeat(40);
        let title = clean(&long).expect("title");
        assert!(title.chars().count() <= super::MAX_CHARS);
        assert!(title.ends_with("word"), "{title}");
    }
}
