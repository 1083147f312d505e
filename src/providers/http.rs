//! What every HTTP adapter shares: the client, timeouts, typed status errors, SSE and NDJSON framing, and the
//! driver that turns a response body into [`ProviderEvent`]s through a provider's [`Decoder`].
//!
//! Framing follows the WHATWG HTML "server-sent events" parsing rules (eventsource-stream): LF, CR or CRLF line
//! ends, `data:` with or without a space, multi-line data, comment lines, events split across reads at any
//! byte. NDJSON lines end with LF (a CR before it is dropped) and may be split across reads too.

use std::path::PathBuf;
use std::time::Duration;

use async_stream::try_stream;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde_json::Value;
use tokio::time::Instant;

use super::{ProviderError, ProviderEvent, ProviderStream, TimeoutKind};

/// How chatgate talks HTTP to one provider.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// TCP + TLS connect timeout.
    pub connect: Duration,
    /// From sending the request to the first streamed frame (response head included).
    pub first_token: Duration,
    /// Between two streamed frames.
    pub idle: Duration,
    /// Offer HTTP/2 to an `https` upstream (ALPN). Otherwise HTTP/1.1 only: a connection per concurrent stream,
    /// never a queue behind the upstream's limit of concurrent streams on one shared HTTP/2 connection
    /// (`providers.NAME.http2` says more).
    pub http2: bool,
    /// Speak HTTP/2 to a plain-`http` upstream from the first byte (h2c, RFC 9113 §3.3), multiplexing every
    /// stream over one connection.
    pub http2_prior_knowledge: bool,
    /// A PEM file of extra root certificates for this upstream's TLS.
    pub ca_file: Option<PathBuf>,
}

/// Builds the HTTP client of one provider: connect timeout, `TCP_NODELAY`, a pool of kept-alive connections
/// reused across generations, HTTP/1.1 unless HTTP/2 is asked for, and the extra roots of `ca_file`.
///
/// # Errors
/// When `ca_file` cannot be read or holds no PEM certificate, or the TLS backend cannot be initialised; the
/// message names the provider.
pub fn client(name: &str, options: &HttpOptions) -> Result<reqwest::Client, String> {
    let builder = reqwest::Client::builder();
    let mut builder = if options.http2_prior_knowledge {
        builder.http2_prior_knowledge()
    } else if options.http2 {
        builder
    } else {
        builder.http1_only()
    };
    if let Some(path) = &options.ca_file {
        let pem = std::fs::read(path).map_err(|e| {
            format!(
                "providers.{name}.ca_file: cannot read {}: {e}",
                path.display()
            )
        })?;
        let roots = match reqwest::Certificate::from_pem_bundle(&pem) {
            Ok(roots) if !roots.is_empty() => roots,
            Ok(_) => {
                return Err(format!(
                    "providers.{name}.ca_file: {} holds no PEM certificate",
                    path.display()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "providers.{name}.ca_file: {} is not a PEM certificate bundle: {e}",
                    path.display()
                ));
            }
        };
        builder = builder.tls_certs_merge(roots);
    }
    builder
        .connect_timeout(options.connect)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| format!("providers.{name}: cannot build HTTP client: {e}"))
}

/// What every HTTP adapter holds: its configured name, base URL (no trailing `/`), key, client and options.
pub struct Upstream {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub client: reqwest::Client,
    pub options: HttpOptions,
}

impl Upstream {
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        options: HttpOptions,
    ) -> Result<Self, String> {
        Ok(Self {
            name: name.to_string(),
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key,
            client: client(name, &options)?,
            options,
        })
    }
}

/// One framed unit of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A server-sent event (`event` is empty when the event had no `event:` line).
    Sse { event: &'a str, data: &'a str },
    /// One NDJSON line, without its line end.
    Line(&'a str),
}

/// Whether a frame ended the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// The provider's terminator: the stream finished cleanly.
    Done,
}

/// A frame the decoder could not accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not the provider's format.
    Malformed(String),
    /// The provider reported an error inside the stream.
    Upstream(String),
}

/// A provider's stream format: turns frames into events, and knows its terminator.
pub trait Decoder: Send + 'static {
    /// Decodes one frame, pushing events to `out`.
    ///
    /// # Errors
    /// [`DecodeError`] for a frame that is not the provider's format or that reports an error.
    fn decode(
        &mut self,
        frame: Frame<'_>,
        out: &mut Vec<ProviderEvent>,
    ) -> Result<Flow, DecodeError>;

    /// The body ended with no terminator frame. Returns true when that is this provider's normal end (Gemini
    /// after a finish reason), pushing any last events; false makes it an interrupted stream.
    fn end_of_body(&mut self, _out: &mut Vec<ProviderEvent>) -> bool {
        false
    }
}

/// How the body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Sse,
    Ndjson,
}

/// Sends `request` and streams the decoded events: typed status errors, the first-token deadline (covering
/// connect, response head and first frame), the idle timeout between frames, and interrupted bodies.
pub fn drive<D: Decoder>(
    provider: String,
    timeouts: HttpOptions,
    request: reqwest::RequestBuilder,
    framing: Framing,
    mut decoder: D,
) -> ProviderStream {
    Box::pin(try_stream! {
        let first_deadline = Instant::now() + timeouts.first_token;
        let response = match tokio::time::timeout_at(first_deadline, request.send()).await {
            Err(_) => Err(ProviderError::Timeout { provider: provider.clone(), kind: TimeoutKind::FirstToken })?,
            Ok(result) => result.map_err(|e| send_error(&provider, &e))?,
        };
        let response = check_status(&provider, response).await?;
        let mut frames = match framing {
            Framing::Sse => sse_frames(response.bytes_stream()),
            Framing::Ndjson => ndjson_frames(response.bytes_stream()),
        };
        let mut deadline = first_deadline;
        let mut wait_kind = TimeoutKind::FirstToken;
        let mut out = Vec::new();
        loop {
            let frame = match tokio::time::timeout_at(deadline, frames.next()).await {
                Err(_) => Err(ProviderError::Timeout { provider: provider.clone(), kind: wait_kind })?,
                Ok(Some(frame)) => frame.map_err(|e| e.into_error(&provider))?,
                Ok(None) => {
                    if decoder.end_of_body(&mut out) {
                        for event in out.drain(..) {
                            yield storable(event, &provider);
                        }
                        break;
                    }
                    Err(ProviderError::Interrupted { provider: provider.clone() })?
                }
            };
            deadline = Instant::now() + timeouts.idle;
            wait_kind = TimeoutKind::Idle;
            let frame_ref = match &frame {
                RawFrame::Sse { event, data } => Frame::Sse { event, data },
                RawFrame::Line(line) => Frame::Line(line),
            };
            let flow = decoder.decode(frame_ref, &mut out).map_err(|e| match e {
                DecodeError::Malformed(message) => ProviderError::Malformed { provider: provider.clone(), message },
                DecodeError::Upstream(message) => ProviderError::Upstream { provider: provider.clone(), message },
            })?;
            for event in out.drain(..) {
                yield storable(event, &provider);
            }
            if flow == Flow::Done {
                break;
            }
        }
    })
}

/// A text delta as the database can store it: U+0000 (which PostgreSQL's `text` refuses, see
/// [`crate::error::find_nul`]) becomes U+FFFD, counted in `chatgate_text_repaired_total{reason="nul"}`. The
/// reply streams and is saved with the same text, instead of being lost at the final write.
fn storable(event: ProviderEvent, provider: &str) -> ProviderEvent {
    match event {
        ProviderEvent::TextDelta(text) if text.contains('\0') => {
            let count = text.matches('\0').count();
            tracing::debug!(
                provider,
                count,
                "NUL characters in a provider's text replaced by U+FFFD"
            );
            metrics::counter!("chatgate_text_repaired_total", "reason" => "nul")
                .increment(count as u64);
            ProviderEvent::TextDelta(text.replace('\0', "\u{fffd}"))
        }
        other => other,
    }
}

/// An owned frame, as read.
#[derive(Debug)]
enum RawFrame {
    Sse { event: String, data: String },
    Line(String),
}

/// A failure reading the body.
#[derive(Debug)]
enum BodyError {
    /// The connection failed mid-body.
    Transport(String),
    /// The bytes are not valid framing (e.g. not UTF-8).
    Framing(String),
}

impl BodyError {
    fn into_error(self, provider: &str) -> ProviderError {
        match self {
            BodyError::Transport(e) => {
                tracing::debug!(provider, error = %e, "upstream body failed");
                ProviderError::Interrupted {
                    provider: provider.to_string(),
                }
            }
            BodyError::Framing(message) => ProviderError::Malformed {
                provider: provider.to_string(),
                message,
            },
        }
    }
}

fn sse_frames(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> BoxStream<'static, Result<RawFrame, BodyError>> {
    body.eventsource()
        .map(|event| match event {
            Ok(event) => Ok(RawFrame::Sse {
                event: event.event,
                data: event.data,
            }),
            Err(eventsource_stream::EventStreamError::Transport(e)) => {
                Err(BodyError::Transport(e.to_string()))
            }
            Err(other) => Err(BodyError::Framing(other.to_string())),
        })
        .boxed()
}

fn ndjson_frames(
    body: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static,
) -> BoxStream<'static, Result<RawFrame, BodyError>> {
    Box::pin(async_stream::stream! {
        let mut body = std::pin::pin!(body);
        let mut buffer: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    yield Err(BodyError::Transport(e.to_string()));
                    return;
                }
            };
            buffer.extend_from_slice(&chunk);
            while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = buffer.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match String::from_utf8(line) {
                    Ok(line) => yield Ok(RawFrame::Line(line)),
                    Err(e) => {
                        yield Err(BodyError::Framing(format!("NDJSON line is not UTF-8: {e}")));
                        return;
                    }
                }
            }
        }
        // A last line without its line end is accepted only if it is a whole JSON value.
        if !buffer.iter().all(u8::is_ascii_whitespace) {
            match String::from_utf8(buffer) {
                Ok(line) if parse_frame::<Value>(&line).is_ok() => yield Ok(RawFrame::Line(line)),
                _ => yield Err(BodyError::Transport("body ended inside an NDJSON line".into())),
            }
        }
    })
}

/// Parses one frame's JSON. A provider that cuts a reply mid-character can send a lone UTF-16 surrogate
/// escape (`"\ud83d"`), which is not valid JSON text (RFC 8259 §8.2) and which serde_json refuses: such a frame
/// is parsed again with each lone surrogate replaced by U+FFFD, so the reply goes on instead of failing.
///
/// # Errors
/// The parser's error, when the frame is malformed in any other way.
pub(crate) fn parse_frame<T: serde::de::DeserializeOwned>(data: &str) -> serde_json::Result<T> {
    match serde_json::from_str(data) {
        Ok(value) => Ok(value),
        Err(err) => match replace_lone_surrogates(data) {
            Some(repaired) => {
                metrics::counter!("chatgate_text_repaired_total", "reason" => "lone_surrogate")
                    .increment(1);
                serde_json::from_str(&repaired)
            }
            None => Err(err),
        },
    }
}

/// `data` with every `\uXXXX` escape of a surrogate that is not half of a pair replaced by `\ufffd`; `None`
/// when there is none.
fn replace_lone_surrogates(data: &str) -> Option<String> {
    fn escape_at(bytes: &[u8], i: usize) -> Option<u16> {
        let hex = bytes.get(i..i + 6)?;
        if hex[0] != b'\\' || hex[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&hex[2..]).ok()?, 16).ok()
    }
    let bytes = data.as_bytes();
    let mut out = String::new();
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escape_at(bytes, i) else {
            // Any other escape (`\\`, `\"`, ...): skip both characters.
            i += 2;
            continue;
        };
        let paired = (0xd800..0xdc00).contains(&unit)
            && escape_at(bytes, i + 6).is_some_and(|next| (0xdc00..0xe000).contains(&next));
        if paired {
            i += 12;
        } else if (0xd800..0xe000).contains(&unit) {
            out.push_str(&data[copied..i]);
            out.push_str("\\ufffd");
            i += 6;
            copied = i;
        } else {
            i += 6;
        }
    }
    if copied == 0 {
        return None;
    }
    out.push_str(&data[copied..]);
    Some(out)
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// The message of an error object: `{"message": ...}` (OpenAI, Anthropic, Gemini), a bare string (Ollama), or
/// the JSON itself, cut to 300 characters.
pub(crate) fn error_message(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .or_else(|| error.as_str())
        .map_or_else(
            || truncate(&error.to_string(), 300).to_string(),
            |m| truncate(m, 300).to_string(),
        )
}

fn send_error(provider: &str, err: &reqwest::Error) -> ProviderError {
    if err.is_timeout() {
        ProviderError::Timeout {
            provider: provider.to_string(),
            kind: TimeoutKind::Connect,
        }
    } else {
        // reqwest's message names the URL, never headers, so a key cannot leak through it.
        ProviderError::Connect {
            provider: provider.to_string(),
            message: err.to_string(),
        }
    }
}

/// The retry hint of a response: `retry-after-ms` (OpenAI), `retry-after` in seconds (RFC 9110 §10.2.3; the
/// HTTP-date form is ignored), or Gemini's `google.rpc.RetryInfo.retryDelay` ("34.4s") in the error details.
pub(crate) fn retry_after(headers: &HeaderMap, body: Option<&Value>) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let seconds = |v: &str| v.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
    if let Some(ms) = header("retry-after-ms").and_then(seconds) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    if let Some(secs) = header(RETRY_AFTER.as_str()).and_then(seconds) {
        return Some(Duration::from_secs_f64(secs));
    }
    let details = body?.get("error")?.get("details")?.as_array()?;
    details
        .iter()
        .filter(|d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with("google.rpc.RetryInfo"))
        })
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .and_then(|delay| seconds(delay.trim_end_matches('s')))
        .map(Duration::from_secs_f64)
}

/// Passes a 2xx response through; turns any other into its typed error.
async fn check_status(
    provider: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, ProviderError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers().clone();
    let body = response.text().await.unwrap_or_default();
    Err(status_error(provider, status.as_u16(), &headers, &body))
}

/// Maps a non-2xx answer. 401/403 never echo the body (it may quote the key); every other status keeps the
/// retry hint (`Retry-After` is defined for 503 as for 429, and Anthropic sends it with 529), except an
/// exhausted quota (OpenAI `insufficient_quota`), which no retry fixes.
pub(crate) fn status_error(
    provider: &str,
    status: u16,
    headers: &HeaderMap,
    body: &str,
) -> ProviderError {
    let provider = provider.to_string();
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let message = error.map_or_else(|| truncate(body.trim(), 300).to_string(), error_message);
    let code = error
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match status {
        401 | 403 => ProviderError::Auth { provider, status },
        429 if code == "insufficient_quota" => ProviderError::Status {
            provider,
            status,
            message,
            retry_after: None,
        },
        429 => ProviderError::RateLimited {
            provider,
            message,
            retry_after: retry_after(headers, parsed.as_ref()),
        },
        _ => ProviderError::Status {
            provider,
            status,
            message,
            retry_after: retry_after(headers, parsed.as_ref()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_are_typed_and_never_echo_credentials() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after-ms", "1500".parse().expect("header"));
        let err = status_error(
            "openai",
            429,
            &headers,
            r#"{"error":{"message":"Rate limit reached","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
        assert!(err.is_retryable());

        let err = status_error(
            "openai",
            429,
            &HeaderMap::new(),
            r#"{"error":{"message":"quota","code":"insufficient_quota"}}"#,
        );
        assert!(!err.is_retryable());

        let err = status_error(
            "openai",
            401,
            &HeaderMap::new(),
            r#"{"error":{"message":"Incorrect API key provided: sk-abc"}}"#,
        );
        assert!(!err.to_string().contains("sk-abc"), "{err}");
        assert_eq!(err.error_kind(), crate::error::ErrorKind::Upstream);

        let err = status_error(
            "anthropic",
            529,
            &HeaderMap::new(),
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert!(err.is_retryable());
        assert!(err.to_string().contains("Overloaded"));
        assert_eq!(err.retry_after(), None);

        // Retry-After is honoured on every status that is retried (RFC 9110 §10.2.3 defines it for 503).
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "1".parse().expect("header"));
        for status in [503, 529, 500] {
            let err = status_error("anthropic", status, &headers, "overloaded");
            assert!(err.is_retryable(), "{status}");
            assert_eq!(err.retry_after(), Some(Duration::from_secs(1)), "{status}");
            let error = crate::error::Error::from(&err);
            assert_eq!(error.retry_after_secs, Some(1), "{status}");
        }
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let parse = |data: &str| {
            parse_frame::<Value>(data).map(|v| v["t"].as_str().unwrap_or("").to_string())
        };
        assert_eq!(
            parse(r#"{"t":"a\ud83d"}"#).expect("lone leading"),
            "a\u{fffd}"
        );
        assert_eq!(
            parse(r#"{"t":"\ude00b"}"#).expect("lone trailing"),
            "\u{fffd}b"
        );
        assert_eq!(parse(r#"{"t":"\ud83d\ude00"}"#).expect("a pair"), "😀");
        assert_eq!(
            parse(r#"{"t":"\ud83d\ud83d\ude00"}"#).expect("lone then pair"),
            "\u{fffd}😀"
        );
        // An escaped backslash before `ud800` is text, not an escape.
        assert_eq!(parse(r#"{"t":"\\ud800"}"#).expect("text"), "\\ud800");
        assert!(
            parse(r#"{"t":"\ud800"#).is_err(),
            "still malformed: unterminated"
        );
        assert!(parse("{").is_err());
    }

    #[test]
    fn gemini_retry_info_is_a_retry_hint() {
        let body = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","message":"Quota exceeded","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"34.4s"}]}}"#;
        let err = status_error("gemini", 429, &HeaderMap::new(), body);
        assert_eq!(err.retry_after(), Some(Duration::from_secs_f64(34.4)));
    }
}

/// Every decoder, fed arbitrary bytes cut at arbitrary places (real frames of each provider mixed with noise:
/// invalid UTF-8, NUL, lone surrogate escapes, half frames), ends in events or a typed error, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::providers::anthropic::AnthropicDecoder;
    use crate::providers::gemini::GeminiDecoder;
    use crate::providers::ollama::OllamaDecoder;
    use crate::providers::openai::OpenAiDecoder;
    use proptest::prelude::*;

    const OPENAI: &[&str] = &[
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\\u0000lo \\ud83d\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n",
        "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n",
        ": keep-alive\n\n",
        "data: [DONE]\n\n",
    ];
    const ANTHROPIC: &[&str] = &[
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\\u0000\"}}\n\n",
        "event: ping\ndata: {\"type\": \"ping\"}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":6}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    ];
    const GEMINI: &[&str] = &[
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi \\udc00\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"!\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":5}}\r\n\r\n",
        "data: {\"error\":{\"code\":503,\"message\":\"overloaded\",\"status\":\"UNAVAILABLE\"}}\n\n",
    ];
    const OLLAMA: &[&str] = &[
        "{\"model\":\"phi4\",\"message\":{\"role\":\"assistant\",\"content\":\"Hel\\u0000\"},\"done\":false}\n",
        "{\"model\":\"phi4\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"prompt_eval_count\":3,\"eval_count\":73}\n",
        "{\"error\":\"model not found\"}\n",
    ];

    /// A body: real frames and noise in any order, then cut into chunks at the given points.
    fn body(frames: &'static [&'static str]) -> impl Strategy<Value = Vec<Bytes>> {
        let piece = prop_oneof![
            4 => proptest::sample::select(frames).prop_map(|f| f.as_bytes().to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..64),
            1 => Just(b"data: \xff\xfe\n\n".to_vec()),
            1 => Just(b"data: {\"choices\":[{\"delta\":{\"content\":\"\\ud800\\u0000\"}}]}\n\n".to_vec()),
            1 => Just(b"\n\n\r\n".to_vec()),
        ];
        (
            proptest::collection::vec(piece, 0..12),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
        )
            .prop_map(|(pieces, cuts)| {
                let bytes = pieces.concat();
                let mut points: Vec<usize> =
                    cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                points.sort_unstable();
                points.dedup();
                let mut chunks = Vec::new();
                let mut start = 0;
                for point in points.into_iter().chain([bytes.len()]) {
                    chunks.push(Bytes::copy_from_slice(&bytes[start..point]));
                    start = point;
                }
                chunks
            })
    }

    /// Runs the frames of `chunks` through `decoder` as `drive` does, returning every event and the ending.
    fn decode_all<D: Decoder>(framing: Framing, chunks: Vec<Bytes>, mut decoder: D) -> usize {
        futures::executor::block_on(async move {
            let body = futures::stream::iter(chunks.into_iter().map(Ok::<Bytes, reqwest::Error>));
            let mut frames = match framing {
                Framing::Sse => sse_frames(body),
                Framing::Ndjson => ndjson_frames(body),
            };
            let mut out = Vec::new();
            let mut events = 0;
            while let Some(frame) = frames.next().await {
                let Ok(frame) = frame else { return events };
                let frame_ref = match &frame {
                    RawFrame::Sse { event, data } => Frame::Sse { event, data },
                    RawFrame::Line(line) => Frame::Line(line),
                };
                let flow = decoder.decode(frame_ref, &mut out);
                for event in out.drain(..) {
                    // What reaches the relay is always storable text.
                    if let ProviderEvent::TextDelta(text) = storable(event, "fuzz") {
                        assert!(!text.contains('\0'));
                    }
                    events += 1;
                }
                match flow {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Done) | Err(_) => return events,
                }
            }
            decoder.end_of_body(&mut out);
            events + out.len()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn openai_never_panics(chunks in body(OPENAI)) {
            decode_all(Framing::Sse, chunks, OpenAiDecoder);
        }

        #[test]
        fn anthropic_never_panics(chunks in body(ANTHROPIC)) {
            decode_all(Framing::Sse, chunks, AnthropicDecoder::default());
        }

        #[test]
        fn gemini_never_panics(chunks in body(GEMINI)) {
            decode_all(Framing::Sse, chunks, GeminiDecoder::default());
        }

        #[test]
        fn ollama_never_panics(chunks in body(OLLAMA)) {
            decode_all(Framing::Ndjson, chunks, OllamaDecoder::default());
        }
    }

    /// The real frames alone, whole, give text: the strategy is not all noise.
    #[test]
    fn the_real_frames_decode() {
        let whole = |frames: &[&str]| vec![Bytes::from(frames.concat())];
        assert!(decode_all(Framing::Sse, whole(&OPENAI[..4]), OpenAiDecoder) >= 3);
        assert!(
            decode_all(
                Framing::Sse,
                whole(&ANTHROPIC[..5]),
                AnthropicDecoder::default()
            ) >= 3
        );
        assert!(decode_all(Framing::Sse, whole(&GEMINI[..2]), GeminiDecoder::default()) >= 2);
        assert!(
            decode_all(
                Framing::Ndjson,
                whole(&OLLAMA[..2]),
                OllamaDecoder::default()
            ) >= 2
        );
    }
}
