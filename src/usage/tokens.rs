//! Local token counts with tiktoken (tiktoken-rs), used when a provider reports no usage and to fit history
//! into a model's context window.
//!
//! Encodings per OpenAI model family (from OpenAI's tiktoken `model.py`): `o200k_base` for gpt-4o, gpt-4.1,
//! gpt-4.5, gpt-5, o1, o3, o4; `cl100k_base` for gpt-4 and gpt-3.5-turbo. Any other family (Claude, Gemini,
//! Llama, Mistral, …) is counted with `o200k_base` and the count is an estimate.

use tiktoken_rs::CoreBPE;

use crate::providers::ChatMessage;

/// A tokenizer choice for a model, and whether its counts are exact for that model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokenizer {
    pub encoding: Encoding,
    /// False when the model is not an OpenAI model of a known family: counts are estimates.
    pub exact: bool,
}

/// The tiktoken encodings chatgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200kBase,
    Cl100kBase,
}

impl Tokenizer {
    /// The tokenizer for an upstream model name (any `provider/` prefix is ignored: `openai/gpt-4o`).
    pub fn for_model(model: &str) -> Self {
        let name = model
            .rsplit('/')
            .next()
            .unwrap_or(model)
            .to_ascii_lowercase();
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "o1",
            "o3",
            "o4-mini",
            "chatgpt-4o",
        ];
        let cl100k = ["gpt-4", "gpt-3.5-turbo", "gpt-35-turbo"];
        if o200k.iter().any(|p| name.starts_with(p)) {
            Tokenizer {
                encoding: Encoding::O200kBase,
                exact: true,
            }
        } else if cl100k.iter().any(|p| name.starts_with(p)) {
            Tokenizer {
                encoding: Encoding::Cl100kBase,
                exact: true,
            }
        } else {
            Tokenizer {
                encoding: Encoding::O200kBase,
                exact: false,
            }
        }
    }

    fn bpe(&self) -> &'static CoreBPE {
        match self.encoding {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
        }
    }

    /// Tokens in `text`, special tokens read as plain text.
    pub fn count(&self, text: &str) -> u64 {
        if text.is_empty() {
            return 0;
        }
        self.bpe().encode_ordinary(text).len() as u64
    }

    /// Tokens of one chat message as the Chat Completions API bills it: its content plus 3 tokens of framing
    /// (OpenAI cookbook, "How to count tokens with tiktoken"); each tool call it made, its name and arguments
    /// plus 3 (an estimate: OpenAI does not publish the framing of tool calls).
    pub fn count_message(&self, message: &ChatMessage) -> u64 {
        3 + self.count(&message.content)
            + message
                .tool_calls
                .iter()
                .map(|call| 3 + self.count(&call.name) + self.count(&call.arguments))
                .sum::<u64>()
    }

    /// Prompt tokens of a whole request: every message plus 3 tokens priming the reply.
    pub fn count_prompt(&self, messages: &[ChatMessage]) -> u64 {
        3 + messages.iter().map(|m| self.count_message(m)).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_follow_the_model_family() {
        assert_eq!(
            Tokenizer::for_model("gpt-4o-mini"),
            Tokenizer {
                encoding: Encoding::O200kBase,
                exact: true
            }
        );
        assert_eq!(
            Tokenizer::for_model("openai/o3-mini"),
            Tokenizer {
                encoding: Encoding::O200kBase,
                exact: true
            }
        );
        assert_eq!(
            Tokenizer::for_model("gpt-4-turbo"),
            Tokenizer {
                encoding: Encoding::Cl100kBase,
                exact: true
            }
        );
        assert_eq!(
            Tokenizer::for_model("gpt-3.5-turbo"),
            Tokenizer {
                encoding: Encoding::Cl100kBase,
                exact: true
            }
        );
        assert!(!Tokenizer::for_model("claude-3-5-sonnet").exact);
        assert!(!Tokenizer::for_model("llama-3.3-70b-versatile").exact);
    }

    #[test]
    fn counts_match_tiktoken() {
        // "hello world" is 2 tokens in both encodings.
        assert_eq!(Tokenizer::for_model("gpt-4o").count("hello world"), 2);
        assert_eq!(Tokenizer::for_model("gpt-4").count("hello world"), 2);
        assert_eq!(Tokenizer::for_model("gpt-4o").count(""), 0);
        let messages = [ChatMessage::user("hello world")];
        assert_eq!(
            Tokenizer::for_model("gpt-4o").count_prompt(&messages),
            3 + 3 + 2
        );
    }
}
