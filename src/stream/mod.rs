//! The streaming core: the generation hub and event log, the generation task, and the SSE encoding.

pub mod ai_sdk;
pub mod generation;
pub mod hub;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};

pub use self::hub::{EventKind, Generation, GenerationEvent, Hub};

/// An event's SSE frame as response bytes, sharing the logged event's memory: no copy per subscriber.
pub fn sse_frame(event: Arc<GenerationEvent>) -> Bytes {
    struct Frame(Arc<GenerationEvent>);
    impl AsRef<[u8]> for Frame {
        fn as_ref(&self) -> &[u8] {
            self.0.sse_frame().as_bytes()
        }
    }
    Bytes::from_owner(Frame(event))
}

/// An SSE response (WHATWG HTML, "Server-sent events") from encoded frames, with the headers of DESIGN.md:
/// `Content-Type: text/event-stream`, `Cache-Control: no-cache, no-transform` (no proxy may buffer or compress
/// it), `X-Accel-Buffering: no` (nginx), and a `: keep-alive` comment after `keepalive` of silence.
pub fn sse_response<S>(frames: S, keepalive: Duration) -> Response
where
    S: Stream<Item = Bytes> + Send + 'static,
{
    let body = async_stream::stream! {
        let mut frames = std::pin::pin!(frames);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        let mut quiet = true;
        loop {
            tokio::select! {
                biased;
                frame = frames.next() => match frame {
                    Some(frame) => {
                        quiet = false;
                        yield Ok::<_, Infallible>(frame);
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    if quiet {
                        yield Ok(Bytes::from_static(b": keep-alive\n\n"));
                    }
                    quiet = true;
                }
            }
        }
    };
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-transform"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
