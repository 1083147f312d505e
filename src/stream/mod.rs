//! The streaming core: the generation hub and event log, the generation task, and the SSE encoding.

pub mod generation;
pub mod hub;

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

pub use self::hub::{EventKind, Generation, GenerationEvent, Hub};

/// The SSE form of a logged event: `id: <seq>`, `event: <kind>`, `data: <json>`.
pub fn sse_event(event: &GenerationEvent) -> Event {
    Event::default()
        .id(event.seq.to_string())
        .event(event.kind.as_str())
        .data(&event.data)
}

/// An SSE response with the headers of DESIGN.md: `Content-Type: text/event-stream`,
/// `Cache-Control: no-cache, no-transform` (no proxy may buffer or compress it), `X-Accel-Buffering: no`
/// (nginx), and a `: keep-alive` comment every `keepalive` of silence.
pub fn sse_response<S>(events: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Result<Event, Infallible>> + Send + 'static,
{
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(keepalive).text("keep-alive"))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
