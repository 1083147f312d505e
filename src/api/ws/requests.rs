//! The requests one socket runs: a `send` (the chat service's send, then its generation followed) and a
//! `subscribe` (a generation followed from a seq), each in its own tracked task; and the writer task that owns
//! the socket's sending half.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message};
use futures::{Sink, SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::auth::AuthUser;
use crate::chat::{Attendance, SendRequest};
use crate::error::Error;
use crate::stream::Generation;
use crate::telemetry::metrics::{Overhead, Transport};
use crate::wire::ws as frames;

/// What the writer task sends.
pub enum Outbound {
    Text(String),
    Ping,
    Close(u16, String),
}

/// Internal notes from spawned tasks to the socket loop.
pub enum Note {
    Started(String, Arc<Generation>),
    Ended(String),
}

pub async fn write_frames<S: Sink<Message> + Unpin>(
    mut sink: S,
    mut frames: mpsc::Receiver<Outbound>,
) {
    while let Some(frame) = frames.recv().await {
        let (message, last) = match frame {
            Outbound::Text(text) => (Message::Text(text.into()), false),
            Outbound::Ping => (Message::Ping(Vec::new().into()), false),
            Outbound::Close(code, reason) => {
                let reason: String = reason.chars().take(120).collect();
                (
                    Message::Close(Some(CloseFrame {
                        code,
                        reason: reason.into(),
                    })),
                    true,
                )
            }
        };
        if sink.send(message).await.is_err() || last {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Queues a frame; a full queue means the client reads too slowly, and the socket is cut off.
pub fn push(out: &mpsc::Sender<Outbound>, slow: &CancellationToken, text: String) {
    if let Err(mpsc::error::TrySendError::Full(_)) = out.try_send(Outbound::Text(text)) {
        slow.cancel();
    }
}

pub fn send_error(
    out: &mpsc::Sender<Outbound>,
    slow: &CancellationToken,
    id: Option<&str>,
    err: &Error,
) {
    push(out, slow, frames::error_frame(id, err));
}

/// A `send` request: the chat service's send, then follows its generation.
#[allow(clippy::too_many_arguments)]
pub async fn run_send(
    state: AppState,
    user: AuthUser,
    id: String,
    conversation_id: String,
    body: SendRequest,
    out: mpsc::Sender<Outbound>,
    slow: CancellationToken,
    notes: mpsc::UnboundedSender<Note>,
) {
    let received = Instant::now();
    let started = match conversation_id.parse() {
        Ok(conversation_id) => {
            state
                .chat
                .send(&user.user_id, conversation_id, body, Attendance::Followed)
                .await
        }
        Err(_) => Err(Error::not_found("conversation")),
    };
    match started {
        Ok(started) => {
            push(
                &out,
                &slow,
                frames::user_message_frame(&id, &started.user_message),
            );
            let _ = notes.send(Note::Started(id.clone(), Arc::clone(&started.generation)));
            let overhead = Overhead::new(received, Transport::WebSocket);
            follow(
                started.generation,
                id,
                (0, Some(overhead)),
                out,
                slow,
                notes,
            )
            .await;
        }
        Err(err) => {
            push(&out, &slow, frames::error_frame(Some(&id), &err));
            let _ = notes.send(Note::Ended(id));
        }
    }
}

/// Relays a generation's events after `after` as frames tagged with the request id, measuring the first
/// token's overhead for the `send` that started it.
pub async fn follow(
    generation: Arc<Generation>,
    id: String,
    (after, mut overhead): (u64, Option<Overhead>),
    out: mpsc::Sender<Outbound>,
    slow: CancellationToken,
    notes: mpsc::UnboundedSender<Note>,
) {
    let id_json = Value::String(id.clone()).to_string();
    let mut events = std::pin::pin!(generation.subscribe(after));
    while let Some(event) = events.next().await {
        if let Some(overhead) = &mut overhead {
            overhead.observe(&generation, &event);
        }
        push(&out, &slow, frames::event_frame(&id_json, &event));
        if slow.is_cancelled() {
            break;
        }
    }
    let _ = notes.send(Note::Ended(id));
}
