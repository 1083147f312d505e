//! The built-in mock provider: in-process, deterministic, no network. The default when no provider key is set,
//! and the fastest way to try chatgate.

use std::time::Duration;

use async_stream::stream;

use super::{ChatRequest, FinishReason, Provider, ProviderEvent, ProviderStream, Role};

/// Replies with a fixed text that quotes the user's last message, one word per delta, `delay` apart; offered
/// tools, it calls one ([`MockProvider::tool_call_for`]), and quotes their results in the reply that follows.
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
        // After a tool loop's results (the last messages), they are quoted too.
        let mut results: Vec<&str> = request
            .messages
            .iter()
            .rev()
            .take_while(|m| m.role == Role::Tool)
            .map(|m| m.content.trim())
            .collect();
        results.reverse();
        let answered = if results.is_empty() {
            String::new()
        } else {
            let joined: String = results.join("; ").chars().take(200).collect();
            format!("Your tools answered: {joined}. ")
        };
        format!(
            "Hello! I am chatgate's built-in mock model. {seen}You said: \"{quoted}\". {answered}\
             Configure a provider API key to talk to a real model."
        )
    }
}

impl MockProvider {
    /// The tool call the mock makes: when tools are offered (and `tool_choice` is not `none`) and the last
    /// message is not already a tool's result, a call to the chosen tool, else the first, with placeholder
    /// arguments for its required parameters (`"mock"`, `0`, `false`, `[]`, `{}` by type). Lets an app's tool
    /// loop run end to end without a provider key.
    pub fn tool_call_for(request: &ChatRequest) -> Option<super::ToolCall> {
        let tools = &request.tools;
        if tools.is_empty() || tools.choice == Some(super::ToolChoice::None) {
            return None;
        }
        if request
            .messages
            .last()
            .is_some_and(|m| m.role == Role::Tool)
        {
            return None;
        }
        let tool = match &tools.choice {
            Some(super::ToolChoice::Function(name)) => {
                tools.definitions.iter().find(|t| &t.name == name)
            }
            _ => tools.definitions.first(),
        }?;
        let schema = &tool.parameters;
        let mut arguments = serde_json::Map::new();
        for name in schema["required"].as_array().into_iter().flatten() {
            let Some(name) = name.as_str() else { continue };
            let value = match schema["properties"][name]["type"].as_str() {
                Some("number" | "integer") => serde_json::json!(0),
                Some("boolean") => serde_json::json!(false),
                Some("array") => serde_json::json!([]),
                Some("object") => serde_json::json!({}),
                _ => serde_json::json!("mock"),
            };
            arguments.insert(name.to_string(), value);
        }
        Some(super::ToolCall {
            id: super::tools::new_call_id(),
            name: tool.name.clone(),
            arguments: serde_json::Value::Object(arguments).to_string(),
        })
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

    fn stream(&self, request: &ChatRequest) -> ProviderStream {
        let delay = self.delay;
        if let Some(call) = Self::tool_call_for(request) {
            return Box::pin(stream! {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                yield Ok(ProviderEvent::ToolCall(super::ToolCallDelta::whole(0, call.id, call.name, call.arguments)));
                yield Ok(ProviderEvent::Finish(FinishReason::ToolCalls));
            });
        }
        let reply = Self::reply_to(request);
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
    async fn offered_tools_it_calls_one_then_quotes_the_result() {
        use crate::providers::{Tool, ToolCallDelta, Tools};
        let tools = Tools {
            definitions: vec![Tool {
                name: "get_weather".into(),
                description: None,
                parameters: serde_json::json!({"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "units": {"type": "string"}}, "required": ["city", "days"]}),
                strict: None,
            }],
            ..Tools::default()
        };
        let mut request = ChatRequest {
            model: "mock-1".into(),
            messages: vec![ChatMessage::user("weather?")],
            tools,
            ..ChatRequest::default()
        };
        let mock = MockProvider::new("mock", Duration::ZERO);
        let events: Vec<_> = mock.stream(&request).collect().await;
        let Some(Ok(ProviderEvent::ToolCall(ToolCallDelta {
            id: Some(id),
            name: Some(name),
            arguments,
            ..
        }))) = events.first().cloned()
        else {
            panic!("a tool call first: {events:?}")
        };
        assert_eq!(name, "get_weather");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&arguments).expect("json"),
            serde_json::json!({"city": "mock", "days": 0})
        );
        assert_eq!(
            events.last(),
            Some(&Ok(ProviderEvent::Finish(FinishReason::ToolCalls)))
        );
        request
            .messages
            .push(
                ChatMessage::assistant("").with_tool_calls(vec![crate::providers::ToolCall {
                    id: id.clone(),
                    name,
                    arguments,
                }]),
            );
        request
            .messages
            .push(ChatMessage::tool(id, r#"{"celsius": 21}"#));
        let reply = MockProvider::reply_to(&request);
        assert!(
            reply.contains(r#"Your tools answered: {"celsius": 21}."#),
            "{reply}"
        );
        let events: Vec<_> = mock.stream(&request).collect().await;
        assert!(matches!(events[0], Ok(ProviderEvent::TextDelta(_))));
    }

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
            tools: Default::default(),
        };
        let events: Vec<_> = MockProvider::new("mock", Duration::ZERO)
            .stream(&request)
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
