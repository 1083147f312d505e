//! The built-in mock provider: in-process, deterministic, no network. The default when no provider key is set,
//! and the fastest way to try chatgate.

use std::time::Duration;

use async_stream::stream;

use super::{ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, Role};

/// Replies with a fixed text that quotes the user's last message, one word per delta, `delay` apart.
/// Reports no usage, so the gateway's local estimate is used (and flagged).
pub struct MockProvider {
    name: String,
    delay: Duration,
}

impl MockProvider {
    pub fn new(name: &str, delay: Duration) -> Self {
        Self {
            name: name.to_string(),
            delay,
        }
    }

    /// The full reply to `request`: a pure function of its last user message.
    pub fn reply_to(request: &ChatRequest) -> String {
        let last = request.messages.iter().rev().find(|m| m.role == Role::User);
        let quoted: String = last
            .map(|m| m.content.trim())
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        let images = last.map_or(0, |m| m.images.len());
        let seen = match images {
            0 => String::new(),
            1 => "I see 1 image. ".to_string(),
            n => format!("I see {n} images. "),
        };
        format!(
            "Hello! I am chatgate's built-in mock model. {seen}You said: \"{quoted}\". \
             Configure a provider API key to talk to a real model."
        )
    }
}

impl Provider for MockProvider {
    fn is_mock(&self) -> bool {
        true
    }

    fn native_audio(&self, _content_type: &str) -> bool {
        true
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn stream(&self, request: ChatRequest) -> ProviderStream {
        let reply = Self::reply_to(&request);
        let delay = self.delay;
        Box::pin(stream! {
            for word in reply.split_inclusive(' ') {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                yield Ok(ProviderEvent::TextDelta(word.to_string()));
            }
            yield Ok(ProviderEvent::Finish(FinishReason::Stop));
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::providers::ChatMessage;

    #[tokio::test]
    async fn streams_the_reply_word_by_word_and_finishes() {
        let request = ChatRequest {
            model: "mock-1".into(),
            messages: vec![
                ChatMessage::system("be nice"),
                ChatMessage::user("hi there"),
            ],
            max_tokens: None,
            sampling: Default::default(),
        };
        let events: Vec<_> = MockProvider::new("mock", Duration::ZERO)
            .stream(request.clone())
            .collect()
            .await;
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Ok(ProviderEvent::TextDelta(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, MockProvider::reply_to(&request));
        assert!(text.contains("\"hi there\""));
        assert!(events.len() > 5, "one delta per word");
        assert_eq!(
            events.last(),
            Some(&Ok(ProviderEvent::Finish("stop".into())))
        );
    }
}
