//! Tool (function) calling, as OpenAI's Chat Completions API shapes it (API reference, "Create chat
//! completion": `tools`, `tool_choice`, `parallel_tool_calls`; the assistant message's `tool_calls`; `tool`
//! role messages), which every adapter maps to its provider's own: Anthropic `tools` / `tool_use` /
//! `tool_result` blocks, Gemini `functionDeclarations` / `functionCall` / `functionResponse` parts, Ollama
//! `tools` / `message.tool_calls`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    /// `^[A-Za-z0-9_-]{1,64}$`, as every provider takes it.
    pub name: String,
    pub description: Option<String>,
    /// The arguments' JSON Schema: an object schema (`{"type": "object", "properties": {}}` when none was
    /// given).
    pub parameters: Value,
    /// OpenAI's structured-outputs `strict` flag; other providers have no counterpart and leave it out.
    pub strict: Option<bool>,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model decides (the default when tools are given).
    Auto,
    /// No tool call: the model answers in text.
    None,
    /// At least one tool call (Anthropic `any`, Gemini `ANY`).
    Required,
    /// A call to this tool.
    Function(String),
}

/// The tools of a request: the definitions, the choice and whether several calls may come at once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tools {
    pub definitions: Vec<Tool>,
    /// `None`: the provider's default (auto).
    pub choice: Option<ToolChoice>,
    /// `Some(false)`: at most one call per reply (OpenAI `parallel_tool_calls`, Anthropic
    /// `disable_parallel_tool_use`); Gemini and Ollama have no such setting.
    pub parallel: Option<bool>,
}

impl Tools {
    /// Whether any tool is offered.
    pub fn is_empty(&self) -> bool {
        self.definitions.is_empty()
    }
}

/// A call the model made, whole: in an assistant message of the history, and in a finished reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id for the call (`call_…`, `toolu_…`), or one chatgate made for providers that give
    /// none ([`new_call_id`]); a `tool` message answers it by this id.
    pub id: String,
    pub name: String,
    /// The arguments as JSON text, as the model wrote them (not checked against the schema).
    pub arguments: String,
}

/// A piece of a tool call as it streams: the first piece of call `index` carries its `id` and `name`, the
/// following ones more of its `arguments` text. A provider that sends whole calls (Gemini, Ollama) sends one
/// piece per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// 0-based position of the call among this reply's tool calls.
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text (possibly empty).
    pub arguments: String,
}

impl ToolCallDelta {
    /// A whole call at `index`, as one piece.
    pub fn whole(index: u32, id: String, name: String, arguments: String) -> Self {
        Self {
            index,
            id: Some(id),
            name: Some(name),
            arguments,
        }
    }
}

/// Folds streamed pieces into whole calls, in index order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolCalls(Vec<ToolCall>);

impl ToolCalls {
    /// Adds a piece: a new index starts a call, a known one extends its arguments. A call that arrives with no
    /// id gets one ([`new_call_id`]).
    pub fn push(&mut self, delta: &ToolCallDelta) {
        let index = delta.index as usize;
        if let Some(call) = self.0.get_mut(index) {
            call.arguments.push_str(&delta.arguments);
            if call.name.is_empty()
                && let Some(name) = &delta.name
            {
                call.name.clone_from(name);
            }
            return;
        }
        // Indexes come in order; a gap (never seen from a provider) is filled so indexes stay positions.
        while self.0.len() < index {
            self.0.push(ToolCall {
                id: new_call_id(),
                name: String::new(),
                arguments: String::new(),
            });
        }
        self.0.push(ToolCall {
            id: delta.id.clone().unwrap_or_else(new_call_id),
            name: delta.name.clone().unwrap_or_default(),
            arguments: delta.arguments.clone(),
        });
    }

    /// The calls; arguments left empty (a call without parameters, from a provider that streams none) are
    /// `{}`, so every call's arguments parse as JSON.
    pub fn finish(self) -> Vec<ToolCall> {
        self.0
            .into_iter()
            .map(|mut call| {
                if call.arguments.trim().is_empty() {
                    call.arguments = "{}".into();
                }
                call
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes of names and arguments so far (for a token estimate).
    pub fn text(&self) -> String {
        let mut text = String::new();
        for call in &self.0 {
            text.push_str(&call.name);
            text.push(' ');
            text.push_str(&call.arguments);
            text.push('\n');
        }
        text
    }
}

/// A fresh call id, `call_` and 24 hex digits, for providers whose calls carry none.
pub fn new_call_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("call_{}", &id[..24])
}

/// A call's arguments as the JSON object Anthropic's `input`, Gemini's `args` and Ollama's `arguments` take:
/// the text parsed; `{}` when it is empty or not an object (a model's malformed arguments are not worth
/// failing the follow-up over: the provider sees an empty call, the caller's own tool already ran).
pub fn arguments_object(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(value @ Value::Object(_)) => value,
        _ => Value::Object(serde_json::Map::new()),
    }
}

/// The name of the call `id` answers, from the assistant messages before it (Gemini's `functionResponse` and
/// Ollama's `tool_name` need it; OpenAI and Anthropic go by id).
pub fn call_name<'a>(messages: &'a [super::ChatMessage], id: &str) -> Option<&'a str> {
    messages
        .iter()
        .flat_map(|m| &m.tool_calls)
        .find(|call| call.id == id)
        .map(|call| call.name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_fold_into_calls_and_empty_arguments_become_an_object() {
        let mut calls = ToolCalls::default();
        calls.push(&ToolCallDelta::whole(
            0,
            "call_a".into(),
            "weather".into(),
            String::new(),
        ));
        for piece in ["{\"city\"", ": \"Paris\"}"] {
            calls.push(&ToolCallDelta {
                index: 0,
                id: None,
                name: None,
                arguments: piece.into(),
            });
        }
        calls.push(&ToolCallDelta {
            index: 1,
            id: None,
            name: Some("time".into()),
            arguments: String::new(),
        });
        let calls = calls.finish();
        assert_eq!(calls[0].id, "call_a");
        assert_eq!(calls[0].arguments, r#"{"city": "Paris"}"#);
        assert_eq!(calls[1].name, "time");
        assert!(calls[1].id.starts_with("call_") && calls[1].id.len() == 29);
        assert_eq!(calls[1].arguments, "{}");
    }

    #[test]
    fn arguments_that_are_no_object_become_an_empty_one() {
        assert_eq!(arguments_object(r#"{"a": 1}"#)["a"], 1);
        assert_eq!(arguments_object("[1]"), serde_json::json!({}));
        assert_eq!(arguments_object("{\"a\": "), serde_json::json!({}));
    }
}
