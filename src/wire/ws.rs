//! The WebSocket protocol's frames (`docs/websocket.md`): client frames parsed by serde into [`ClientFrame`],
//! server frames encoded from generation events as `{"type": <kind>, "id": <request id>, "seq": <seq>, ...}`.

use std::time::Instant;

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::chat::SendRequest;
use crate::error::Error;
use crate::event::LoggedEvent;
use crate::store::Message;

/// A frame a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticate, or refresh the token (same user).
    Auth {
        token: NonEmpty,
    },
    /// Send a message (the body of `POST /api/v1/conversations/{id}/messages`) and follow its reply.
    Send {
        #[serde(deserialize_with = "request_id")]
        id: String,
        conversation_id: NonEmpty,
        #[serde(flatten)]
        body: SendBody,
    },
    /// Follow a generation from after `seq` `after` (0 or absent: from the start).
    Subscribe {
        #[serde(deserialize_with = "request_id")]
        id: String,
        generation_id: NonEmpty,
        #[serde(default)]
        after: Option<u64>,
    },
    /// Stop the generation of request `id`.
    Cancel {
        #[serde(deserialize_with = "request_id")]
        id: String,
    },
    Ping,
}

/// The fields of a `send` frame besides `type`, `id` and `conversation_id`: a [`SendRequest`], whose unknown
/// fields are refused (serde's `flatten` alone would let them through).
#[derive(Debug)]
pub struct SendBody(pub SendRequest);

impl<'de> Deserialize<'de> for SendBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let fields = serde_json::Map::<String, Value>::deserialize(deserializer)?;
        crate::error::parse_value(Value::Object(fields))
            .map(SendBody)
            .map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// A string field that must not be empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonEmpty(pub String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.is_empty() {
            return Err(serde::de::Error::custom("must not be empty"));
        }
        Ok(NonEmpty(text))
    }
}

/// A request id: a non-empty string, or a number (kept as its decimal text).
fn request_id<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::String(id) if !id.is_empty() => Ok(id),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(serde::de::Error::custom(
            "id must be a non-empty string or a number",
        )),
    }
}

/// Parses a client frame; the error is the close reason of a 4400.
///
/// # Errors
/// A message naming what is wrong: not JSON, not an object, no `type`, an unknown type, or the field at fault.
pub fn parse(text: &str) -> Result<ClientFrame, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("a frame is a JSON object".into());
    };
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        _ => return Err("missing type".into()),
    };
    if !matches!(
        kind.as_str(),
        "auth" | "send" | "subscribe" | "cancel" | "ping"
    ) {
        return Err(format!("unknown frame type {kind}"));
    }
    crate::error::parse_value(value).map_err(|e| format!("{kind}: {}", e.message))
}

/// `{"type": <kind>, "id": <request id>, "seq": <seq>, ...event fields}`; `id_json` is the request id as JSON.
/// The event's fields are written in place, their object's `{` then turned into the `,` that follows `seq`.
pub fn event_frame(id_json: &str, event: &LoggedEvent) -> String {
    let mut seq_text = itoa::Buffer::new();
    let head = [
        r#"{"type":""#,
        event.kind().as_str(),
        r#"","id":"#,
        id_json,
        r#","seq":"#,
        seq_text.format(event.seq),
    ];
    let head_len: usize = head.iter().map(|p| p.len()).sum();
    let mut frame = event.event.frame_json(&head, "");
    match frame.get(head_len..head_len + 2) {
        Some(b"{}") => {
            frame.remove(head_len);
        }
        Some([b'{', _]) => frame[head_len] = b',',
        _ => {}
    }
    // serde_json writes UTF-8, as does everything before it.
    String::from_utf8(frame).unwrap_or_default()
}

/// `{"type":"user_message","id","message"}`: the message a `send` saved.
pub fn user_message_frame(id: &str, message: &Message) -> String {
    json!({ "type": "user_message", "id": id, "message": message }).to_string()
}

/// `{"type":"error","id","error","message","details","retry_after"?}`: a request that never started.
pub fn error_frame(id: Option<&str>, err: &Error) -> String {
    let mut frame = json!({ "type": "error", "id": id, "error": err.error, "message": err.message, "details": err.details });
    if let Some(retry) = err.retry_after_secs {
        frame["retry_after"] = json!(retry);
    }
    frame.to_string()
}

/// `{"type":"ready","user_id"}`.
pub fn ready_frame(user_id: &str) -> String {
    json!({ "type": "ready", "user_id": user_id }).to_string()
}

/// `{"type":"pong"}`.
pub const PONG: &str = r#"{"type":"pong"}"#;

/// Close codes of the protocol.
pub mod close {
    pub const BAD_FRAME: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const AUTH_TIMEOUT: u16 = 4408;
    pub const DUPLICATE_ID: u16 = 4409;
    pub const TOO_MANY: u16 = 4429;
    pub const SLOW_READER: u16 = 1008;
    pub const GOING_AWAY: u16 = 1001;
}

/// Frames a client may send: `rate` per second on average, `burst` at once.
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes one frame's token; `false` when the client is over its rate.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::GenerationEvent;

    #[test]
    fn frames_splice_the_event_data() {
        let event = LoggedEvent::new(7, GenerationEvent::delta("hi"));
        let frame: Value = serde_json::from_str(&event_frame("\"r1\"", &event)).expect("json");
        assert_eq!(
            frame,
            json!({ "type": "delta", "id": "r1", "seq": 7, "text": "hi" })
        );
        let usage = crate::event::UsageReport {
            prompt_tokens: 3,
            cost_usd: 0.25,
            ..Default::default()
        };
        let event = LoggedEvent::new(8, GenerationEvent::Usage(Box::new(usage)));
        let frame: Value = serde_json::from_str(&event_frame("42", &event)).expect("json");
        let mut expected = serde_json::to_value(usage).expect("usage");
        expected["type"] = json!("usage");
        expected["id"] = json!(42);
        expected["seq"] = json!(8);
        assert_eq!(frame, expected);
    }

    #[test]
    fn malformed_frames_are_named() {
        for (text, why) in [
            ("nope", "not JSON"),
            ("[1]", "JSON object"),
            (r#"{"id":"1"}"#, "missing type"),
            (r#"{"type":"send","id":"1"}"#, "conversation_id"),
            (r#"{"type":"dance"}"#, "unknown frame type"),
            (
                r#"{"type":"send","id":"1","conversation_id":"c","content":5}"#,
                "invalid type",
            ),
            (r#"{"type":"cancel","id":""}"#, "non-empty"),
            (
                r#"{"type":"send","id":"1","conversation_id":"c","contnet":"hi"}"#,
                "unknown field",
            ),
        ] {
            let err = parse(text).err().unwrap_or_default();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(matches!(
            parse(r#"{"type":"subscribe","id":2,"generation_id":"g","after":4}"#),
            Ok(ClientFrame::Subscribe { after: Some(4), ref id, .. }) if id == "2"
        ));
        assert!(matches!(
            parse(r#"{"type":"send","id":"r","conversation_id":"c","content":"hi"}"#),
            Ok(ClientFrame::Send { ref body, .. }) if body.0.content.as_deref() == Some("hi")
        ));
    }

    #[test]
    fn the_bucket_refills() {
        let mut bucket = TokenBucket::new(1000, 2);
        assert!(bucket.take() && bucket.take());
        assert!(!bucket.take());
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(bucket.take());
    }
}
