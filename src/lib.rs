//! chatgate: a streaming-first chat gateway.
//!
//! Clients (browser SSE, mobile WebSocket, dashboards) talk to chatgate; chatgate talks to LLM providers. Each
//! user message starts a *generation*: a server-owned task that relays every token to its subscribers the
//! moment it arrives and, off the hot path, saves the assistant message with its token usage and cost.
//!
//! Embedding: build an [`AppState`] with [`AppState::new`], then [`serve`] it on a listener you bind, with a
//! shutdown future you choose (tests bind port 0). `docs/architecture.md` draws the modules.

pub mod api;
pub mod auth;
pub mod catalog;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod error;
pub mod event;
pub mod id;
pub mod media;
pub mod personas;
pub mod providers;
mod server;
pub mod ssrf;
mod state;
pub mod store;
pub mod stream;
pub mod tasks;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod usage;
pub mod wire;

pub use server::{listen, serve};
pub use state::{AppInner, AppState, StartupError};
