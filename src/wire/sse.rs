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

/// `id: <seq>\nevent: <kind>\ndata: <json>\n\n`, the JSON written in place. A delta's frame is allocated at
/// exactly its length, so that `Bytes` takes it over without a second allocation; the rarer events' at a bound.
pub fn encode(seq: u64, event: &GenerationEvent) -> Vec<u8> {
    let mut seq_text = itoa::Buffer::new();
    let head = [
        "id: ",
        seq_text.format(seq),
        "\nevent: ",
        event.kind().as_str(),
        "\ndata: ",
    ];
    event.frame_json(&head, "\n\n")
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
            String::from_utf8(frame).expect("UTF-8"),
            "id: 7\nevent: delta\ndata: {\"text\":\"a \\\"b\\\"\\n\"}\n\n"
        );
    }

    #[test]
    fn every_frame_is_its_event_serialized_whatever_its_size() {
        let long = "x".repeat(5000);
        let message: Message = serde_json::from_value(serde_json::json!({
            "id": crate::id::Id::new(), "conversation_id": crate::id::Id::new(), "parent_id": null,
            "role": "assistant", "content": long, "message_type": "text", "media": [], "status": "complete",
            "model": "m", "provider": "p", "finish_reason": "stop", "error": null,
            "created_at": "2026-12-01T21:19:26.123456789Z", "updated_at": "2026-12-01T21:19:27Z",
            "tokens_used": 3, "prompt_tokens": 1, "completion_tokens": 2, "model_used": "m",
            "response_time_ms": 5, "ttft_ms": 1, "cost_usd": 0.5, "content_tokens": 2
        }))
        .expect("a message");
        for event in [
            GenerationEvent::delta(""),
            GenerationEvent::delta("\u{1}\u{1f}\u{7f}é😀\\"),
            GenerationEvent::UserMessage(Box::new(message.clone())),
            GenerationEvent::Done(Box::new(crate::event::Done {
                message: message.clone(),
                usage: Default::default(),
                finish_reason: crate::domain::FinishReason::Stop,
                tool_calls: vec![],
            })),
        ] {
            let frame = String::from_utf8(encode(12, &event)).expect("UTF-8");
            let data = frame
                .strip_prefix(&format!("id: 12\nevent: {}\ndata: ", event.kind().as_str()))
                .and_then(|rest| rest.strip_suffix("\n\n"))
                .expect("the frame's head and end");
            let payload: serde_json::Value = serde_json::from_str(data).expect("JSON");
            let expected = match &event {
                GenerationEvent::Delta(delta) => serde_json::to_value(delta),
                GenerationEvent::UserMessage(message) => serde_json::to_value(message),
                GenerationEvent::Done(done) => serde_json::to_value(done),
                _ => unreachable!(),
            }
            .expect("the payload as a value");
            assert_eq!(payload, expected);
        }
    }
}
