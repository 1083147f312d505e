//! chatgate's native SSE format (DESIGN.md, "SSE events"): `id: <seq>\nevent: <kind>\ndata: <json>\n\n`, and
//! the SSE response that carries it or any other SSE-framed format.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::event::{GenerationEvent, LoggedEvent};
use crate::store::Message;

/// A logged event's SSE frame.
pub fn frame(event: &LoggedEvent) -> Bytes {
    Bytes::from(encode(event.seq, &event.event))
}

/// `id: <seq>\nevent: <kind>\ndata: <json>\n\n`, in a string of exactly its length (so that `Bytes` takes it
/// over without a second allocation).
pub fn encode(seq: u64, event: &GenerationEvent) -> String {
    let data = event.data_json();
    let kind = event.kind().as_str();
    let mut seq_text = itoa::Buffer::new();
    let seq_text = seq_text.format(seq);
    let parts = [
        "id: ",
        seq_text,
        "\nevent: ",
        kind,
        "\ndata: ",
        &data,
        "\n\n",
    ];
    let mut frame = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        frame.push_str(part);
    }
    frame
}

/// The `user_message` frame (seq 0) that opens the stream of the request that sent the message.
pub fn user_message(message: &Message) -> Bytes {
    Bytes::from(encode(
        0,
        &GenerationEvent::UserMessage(Box::new(message.clone())),
    ))
}

/// An SSE response (WHATWG HTML, "Server-sent events") from encoded frames, with the headers of DESIGN.md:
/// `Content-Type: text/event-stream`, `Cache-Control: no-cache, no-transform` (no proxy may buffer or compress
/// it), `X-Accel-Buffering: no` (nginx), and a `: keep-alive` comment after `keepalive` of silence.
pub fn response<S>(frames: S, keepalive: Duration) -> Response
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_frame_carries_its_seq_kind_and_escaped_text() {
        let frame = encode(7, &GenerationEvent::delta("a \"b\"\n"));
        assert_eq!(frame.len(), frame.capacity(), "no slack is kept");
        assert_eq!(
            frame,
            "id: 7\nevent: delta\ndata: {\"text\":\"a \\\"b\\\"\\n\"}\n\n"
        );
    }
}
