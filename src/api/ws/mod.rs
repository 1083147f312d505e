//! `GET /api/v1/ws`: the WebSocket transport (protocol in `docs/websocket.md`).
//!
//! One socket carries many generations at once, each named by the client's request `id`. Generations are the
//! same as over SSE (same hub, same event log, same `seq`), so a client can switch transports and resume with
//! `subscribe`/`after`. The socket loop [`serve_socket`] is generic over `Sink`/`Stream` so it runs without a
//! network in tests.
//!
//! Close codes: 4400 bad frame, 4401 unauthorized or token expired, 4408 no auth in time, 4409 duplicate id,
//! 4429 too many frames; 1008 slow reader (resubscribe with `after`); 1001 peer silent too long.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Sink, Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::error::ErrorBody;
use crate::AppState;
use crate::auth::AuthUser;
use crate::domain::CancelReason;
use crate::error::{Error, ErrorKind};
use crate::stream::Generation;
use crate::wire::ws::{self as frames, ClientFrame, TokenBucket, close};

mod requests;

use self::requests::{Note, Outbound, follow, push, run_send, send_error, write_frames};

pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/ws", get(upgrade))
}

fn token_given(headers: &HeaderMap, uri: &Uri) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || uri
            .query()
            .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
}

/// Upgrades to the WebSocket protocol. A token given at upgrade must be valid (401 otherwise); without one,
/// the client has `ws.auth_timeout_ms` to send an `auth` frame.
#[utoipa::path(
    get,
    operation_id = "ws_upgrade",
    path = "/api/v1/ws",
    tag = "websocket",
    security(()),
    params(
        ("access_token" = Option<String>, Query, description = "or an `auth` frame first"),
    ),
    responses(
        (status = 101, description = "WebSocket; protocol in docs/websocket.md"),
        (status = 400, description = "not a WebSocket upgrade request (plain text, from axum), or an invalid `access_token` parameter", content((String = "text/plain"), (ErrorBody = "application/json"))),
        (status = 401, description = "missing or invalid token", body = ErrorBody),
    )
)]
async fn upgrade(
    State(state): State<AppState>,
    user: Option<AuthUser>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if user.is_none() && token_given(&headers, &uri) {
        return Error::unauthorized("the token is invalid or expired").into_response();
    }
    // The transport takes frames up to 4× the limit so that a too-large frame gets a polite error frame.
    let transport_limit = state.config.ws.max_frame_bytes.saturating_mul(4);
    ws.max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            // Tracked, so that shutdown closes it (1001) and waits for it.
            let tasks = state.tasks.clone();
            let _ = tasks.spawn(serve_socket(state, sink, stream, user)).await;
        })
}

/// The sockets open per user on this instance (`ws.max_connections_per_user`; with Redis, the count across
/// instances decides and this one serves while Redis does not answer).
#[derive(Debug, Default)]
pub struct UserSockets(std::sync::Mutex<HashMap<String, usize>>);

/// One socket counted for its user until dropped.
struct SocketHold {
    state: AppState,
    user_id: String,
    _shared: Option<crate::cluster::limits::Hold>,
}

impl Drop for SocketHold {
    fn drop(&mut self) {
        let mut open = self
            .state
            .ws_sockets
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.user_id) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.user_id);
            }
        }
    }
}

/// Counts a socket for `user_id`, or says the user has too many open (`None` when there is no limit).
async fn hold_socket(state: &AppState, user_id: &str) -> Result<Option<SocketHold>, (u16, String)> {
    let max = state.config.ws.max_connections_per_user;
    if max == 0 {
        return Ok(None);
    }
    let refused = || {
        (
            close::TOO_MANY,
            format!("too many open sockets for this user (at most {max})"),
        )
    };
    let shared = match &state.cluster {
        Some(cluster) => match cluster
            .hold(crate::cluster::limits::HoldKind::WebSocket, user_id, max)
            .await
        {
            Ok(Some(hold)) => Some(Some(hold)),
            Ok(None) => return Err(refused()),
            Err(_) => None,
        },
        None => None,
    };
    let mut open = state
        .ws_sockets
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = open.entry(user_id.to_string()).or_insert(0);
    if shared.is_none() && *count >= max {
        return Err(refused());
    }
    *count += 1;
    Ok(Some(SocketHold {
        state: state.clone(),
        user_id: user_id.to_string(),
        _shared: shared.flatten(),
    }))
}

/// A request running on the socket.
struct Active {
    generation: Option<Arc<Generation>>,
    cancel_requested: bool,
    task: tokio::task::AbortHandle,
}

/// The socket loop: reads client frames, runs requests, multiplexes generation events out. Returns when the
/// socket closes.
pub async fn serve_socket<S, R, E>(
    state: AppState,
    sink: S,
    mut incoming: R,
    mut user: Option<AuthUser>,
) where
    S: Sink<Message> + Send + Unpin + 'static,
    R: Stream<Item = Result<Message, E>> + Send + Unpin,
{
    let config = state.config.ws.clone();
    let (out, out_rx) = mpsc::channel::<Outbound>(config.send_queue.max(1));
    let writer = state.tasks.spawn(write_frames(sink, out_rx));
    let (notes_tx, mut notes) = mpsc::unbounded_channel::<Note>();
    let slow = CancellationToken::new();
    let mut active: HashMap<String, Active> = HashMap::new();
    let mut ping = tokio::time::interval(Duration::from_secs(config.ping_interval_secs.max(1)));
    ping.tick().await;
    let mut last_seen = Instant::now();
    let auth_deadline = tokio::time::Instant::now() + Duration::from_millis(config.auth_timeout_ms);
    let mut bucket = TokenBucket::new(config.max_frames_per_second, config.frame_burst);

    let mut socket_hold = None;
    let refused = match &user {
        Some(user) => match hold_socket(&state, &user.user_id).await {
            Ok(hold) => {
                socket_hold = hold;
                push(&out, &slow, frames::ready_frame(&user.user_id));
                None
            }
            Err(refused) => Some(refused),
        },
        None => None,
    };
    let closing: (u16, String) = loop {
        if let Some(refused) = refused {
            break refused;
        }
        let expiry = user.as_ref().and_then(|u| u.expires_at).map(expiry_instant);
        tokio::select! {
            frame = incoming.next() => {
                let Some(Ok(frame)) = frame else { break (1000, String::new()) };
                last_seen = Instant::now();
                let text = match frame {
                    Message::Text(text) => text.to_string(),
                    Message::Close(_) => break (1000, String::new()),
                    Message::Ping(_) | Message::Pong(_) => continue,
                    Message::Binary(_) => break (close::BAD_FRAME, "binary frames are not part of the protocol".into()),
                };
                if !bucket.take() {
                    break (close::TOO_MANY, "too many frames".into());
                }
                if text.len() > config.max_frame_bytes {
                    let message = format!("frame of {} bytes; the limit is {}", text.len(), config.max_frame_bytes);
                    send_error(&out, &slow, None, &Error::new(ErrorKind::TooLarge, "frame_too_large", message));
                    continue;
                }
                let frame = match frames::parse(&text) {
                    Ok(frame) => frame,
                    Err(reason) => break (close::BAD_FRAME, reason),
                };
                match frame {
                    ClientFrame::Ping => push(&out, &slow, frames::PONG.to_string()),
                    ClientFrame::Auth { token } => match state.auth.verify(&token.0).await {
                        Ok(verified) if user.as_ref().is_none_or(|u| u.user_id == verified.user_id) => {
                            if user.is_none() {
                                match hold_socket(&state, &verified.user_id).await {
                                    Ok(hold) => socket_hold = hold,
                                    Err(refused) => break refused,
                                }
                                push(&out, &slow, frames::ready_frame(&verified.user_id));
                            }
                            user = Some(verified.clone());
                        }
                        Ok(_) => break (close::UNAUTHORIZED, "a socket cannot change user".into()),
                        Err(err) => break (close::UNAUTHORIZED, err.message),
                    },
                    _ if user.is_none() => break (close::UNAUTHORIZED, "authenticate first".into()),
                    ClientFrame::Send { id, conversation_id, body } => {
                        if active.contains_key(&id) {
                            break (close::DUPLICATE_ID, format!("request id {id} is in use"));
                        }
                        if active.len() >= config.max_streams {
                            send_error(&out, &slow, Some(&id), &too_many_streams(config.max_streams));
                            continue;
                        }
                        let Some(user) = user.clone() else { continue };
                        let task = state.tasks.spawn(run_send(state.clone(), user, id.clone(), conversation_id.0, body.0, out.clone(), slow.clone(), notes_tx.clone()));
                        active.insert(id, Active { generation: None, cancel_requested: false, task: task.abort_handle() });
                    }
                    ClientFrame::Subscribe { id, generation_id, after } => {
                        if active.contains_key(&id) {
                            break (close::DUPLICATE_ID, format!("request id {id} is in use"));
                        }
                        if active.len() >= config.max_streams {
                            send_error(&out, &slow, Some(&id), &too_many_streams(config.max_streams));
                            continue;
                        }
                        let generation = match (generation_id.0.parse().ok(), user.as_ref()) {
                            (Some(gid), Some(u)) => state.chat.generation(&u.user_id, gid).await,
                            _ => None,
                        };
                        let Some(generation) = generation else {
                            send_error(&out, &slow, Some(&id), &Error::new(ErrorKind::NotFound, "not_found", "generation not found or expired"));
                            continue;
                        };
                        let task = state.tasks.spawn(follow(Arc::clone(&generation), id.clone(), (after.unwrap_or(0), None), out.clone(), slow.clone(), notes_tx.clone()));
                        active.insert(id, Active { generation: Some(generation), cancel_requested: false, task: task.abort_handle() });
                    }
                    ClientFrame::Cancel { id } => match active.get_mut(&id) {
                        Some(entry) => match &entry.generation {
                            Some(generation) => generation.cancel(CancelReason::User),
                            None => entry.cancel_requested = true,
                        },
                        None => send_error(&out, &slow, Some(&id), &Error::new(ErrorKind::NotFound, "not_found", "no running request with this id")),
                    },
                }
            }
            Some(note) = notes.recv() => match note {
                Note::Started(id, generation) => {
                    if let Some(entry) = active.get_mut(&id) {
                        if entry.cancel_requested {
                            generation.cancel(CancelReason::User);
                        }
                        entry.generation = Some(generation);
                    }
                }
                Note::Ended(id) => {
                    active.remove(&id);
                }
            },
            _ = ping.tick() => {
                if last_seen.elapsed() > Duration::from_secs(config.idle_timeout_secs) {
                    break (close::GOING_AWAY, "no frame or pong in time".into());
                }
                let _ = out.try_send(Outbound::Ping);
            }
            () = tokio::time::sleep_until(auth_deadline), if user.is_none() => {
                break (close::AUTH_TIMEOUT, "no auth in time".into());
            }
            () = sleep_until_opt(expiry) => {
                break (close::UNAUTHORIZED, "the token expired; reconnect with a new one".into());
            }
            () = slow.cancelled() => {
                break (close::SLOW_READER, "slow reader: resubscribe with after".into());
            }
            () = state.tasks.stopping() => {
                break (close::GOING_AWAY, "the server is shutting down; reconnect and resubscribe".into());
            }
        }
    };
    for (_, entry) in active.drain() {
        entry.task.abort();
    }
    // The user's count goes down as the socket closes.
    drop(socket_hold);
    // The writer may be stuck behind a full queue (a slow reader): make room for the close frame.
    let (code, reason) = closing;
    if out.try_send(Outbound::Close(code, reason.clone())).is_err() {
        writer.abort();
    } else {
        drop(out);
        let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    }
    tracing::debug!(code, %reason, "websocket closed");
}

/// `rate_limited`: the socket follows `max_streams` generations already.
fn too_many_streams(max_streams: usize) -> Error {
    Error::new(
        ErrorKind::RateLimited,
        "rate_limited",
        format!("at most {max_streams} generations per socket"),
    )
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn expiry_instant(exp: u64) -> tokio::time::Instant {
    let now = jsonwebtoken::get_current_timestamp();
    tokio::time::Instant::now() + Duration::from_secs(exp.saturating_sub(now))
}
