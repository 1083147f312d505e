//! Wire formats: each is an encoder over the typed [`GenerationEvent`](crate::event::GenerationEvent), side by
//! side so that a change to an event shows in every format at once.
//!
//! | format | module | spec |
//! |---|---|---|
//! | native SSE (`event: delta`, `id: <seq>`) | [`sse`] | DESIGN.md "SSE events"; WHATWG HTML, server-sent events |
//! | WebSocket frames (`{type, id, seq, ...}`) | [`ws`] | `docs/websocket.md` |
//! | AI SDK UI message stream (`text-delta`, ...) | [`ai_sdk`] | <https://ai-sdk.dev/docs/ai-sdk-ui/stream-protocol> |
//! | OpenAI `chat.completion(.chunk)` | [`openai`] | OpenAI API reference, "Chat Completions" |
//! | OpenAI `response` and its streaming events | [`responses`] | OpenAI API reference, "Responses" |

pub mod ai_sdk;
pub mod openai;
pub mod responses;
pub mod sse;
pub mod ws;
