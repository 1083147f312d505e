//! A mock LLM upstream for benchmarks and tests: streams replies in the real wire formats of OpenAI (and Groq),
//! Anthropic, Gemini and Ollama (see `shared/reference/provider-streams.md`), with configurable reply length,
//! first-token delay, inter-token delay, jitter, and injected failures. `examples/mock_upstream.rs` runs it
//! from the command line.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/messages`, `POST /v1beta/models/{model}:streamGenerateContent`,
//! `POST /api/chat`, and `GET /v1/models` (for health checks).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

/// What the mock does.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Text deltas per reply.
    pub tokens: usize,
    /// Delay before the first delta.
    pub first_token_delay: Duration,
    /// Delay between two deltas.
    pub token_delay: Duration,
    /// Up to this much is added to each delay, at random.
    pub jitter: Duration,
    /// Fraction (0–1) of requests answered 429 with `retry-after: 1`.
    pub rate_limit_rate: f64,
    /// Fraction of requests answered 500.
    pub server_error_rate: f64,
    /// Fraction of streams that send an error event halfway.
    pub midstream_error_rate: f64,
    /// Fraction of streams whose body is cut halfway, without a terminator.
    pub cut_rate: f64,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            tokens: 100,
            first_token_delay: Duration::ZERO,
            token_delay: Duration::ZERO,
            jitter: Duration::ZERO,
            rate_limit_rate: 0.0,
            server_error_rate: 0.0,
            midstream_error_rate: 0.0,
            cut_rate: 0.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    OpenAi,
    Anthropic,
    Gemini,
    Ollama,
}

struct MockState {
    config: MockConfig,
    /// xorshift state for jitter and failure injection.
    random: AtomicU64,
}

impl MockState {
    fn next(&self) -> f64 {
        let mut x = self.random.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random.store(x, Ordering::Relaxed);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn delay(&self, base: Duration) -> Duration {
        if self.config.jitter.is_zero() {
            base
        } else {
            base + self.config.jitter.mul_f64(self.next())
        }
    }
}

/// The mock's router.
pub fn router(config: MockConfig) -> Router {
    let state = Arc::new(MockState {
        config,
        random: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
    });
    Router::new()
        .route(
            "/v1/chat/completions",
            post(|s, b| reply(s, b, Format::OpenAi)),
        )
        .route(
            "/openai/v1/chat/completions",
            post(|s, b| reply(s, b, Format::OpenAi)),
        )
        .route("/v1/messages", post(|s, b| reply(s, b, Format::Anthropic)))
        .route(
            "/v1beta/models/{model}",
            post(|s, b| reply(s, b, Format::Gemini)),
        )
        .route("/api/chat", post(|s, b| reply(s, b, Format::Ollama)))
        .route("/v1/audio/transcriptions", post(transcribe))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({ "object": "list", "data": [{ "id": "mock-1", "object": "model" }] }))
            }),
        )
        .with_state(state)
}

/// Serves the mock on `listener` until the task is dropped; TCP_NODELAY on every connection.
pub async fn serve(listener: tokio::net::TcpListener, config: MockConfig) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(config)).await
}

fn frame(format: Format, kind: &str, body: Value) -> Bytes {
    match format {
        Format::Ollama => Bytes::from(format!("{body}\n")),
        Format::Anthropic => Bytes::from(format!("event: {kind}\ndata: {body}\n\n")),
        Format::Gemini => Bytes::from(format!("data: {body}\r\n\r\n")),
        Format::OpenAi => Bytes::from(format!("data: {body}\n\n")),
    }
}

fn delta(format: Format, text: &str) -> Bytes {
    match format {
        Format::OpenAi => frame(
            format,
            "",
            json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1727346171,"model":"mock-1","choices":[{"index":0,"delta":{"content":text},"logprobs":null,"finish_reason":null}]}),
        ),
        Format::Anthropic => frame(
            format,
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":text}}),
        ),
        Format::Gemini => frame(
            format,
            "",
            json!({"candidates":[{"content":{"parts":[{"text":text}],"role":"model"},"index":0}]}),
        ),
        Format::Ollama => frame(
            format,
            "",
            json!({"model":"mock-1","created_at":"2025-03-19T22:25:26.460681Z","message":{"role":"assistant","content":text},"done":false}),
        ),
    }
}

fn opening(format: Format, prompt_tokens: u64) -> Vec<Bytes> {
    match format {
        Format::OpenAi => vec![frame(
            format,
            "",
            json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1727346171,"model":"mock-1","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}),
        )],
        Format::Anthropic => vec![
            frame(
                format,
                "message_start",
                json!({"type":"message_start","message":{"id":"msg_mock","type":"message","role":"assistant","content":[],"model":"mock-1","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":prompt_tokens,"output_tokens":1}}}),
            ),
            frame(
                format,
                "content_block_start",
                json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            ),
        ],
        Format::Gemini | Format::Ollama => vec![],
    }
}

fn closing(format: Format, prompt_tokens: u64, completion_tokens: u64) -> Vec<Bytes> {
    match format {
        Format::OpenAi => vec![
            frame(
                format,
                "",
                json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1727346171,"model":"mock-1","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}),
            ),
            frame(
                format,
                "",
                json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1727346171,"model":"mock-1","choices":[],"usage":{"prompt_tokens":prompt_tokens,"completion_tokens":completion_tokens,"total_tokens":prompt_tokens + completion_tokens}}),
            ),
            Bytes::from_static(b"data: [DONE]\n\n"),
        ],
        Format::Anthropic => vec![
            frame(
                format,
                "content_block_stop",
                json!({"type":"content_block_stop","index":0}),
            ),
            frame(
                format,
                "message_delta",
                json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":completion_tokens}}),
            ),
            frame(format, "message_stop", json!({"type":"message_stop"})),
        ],
        Format::Gemini => vec![frame(
            format,
            "",
            json!({"candidates":[{"content":{"parts":[{"text":""}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":prompt_tokens,"candidatesTokenCount":completion_tokens,"totalTokenCount":prompt_tokens + completion_tokens}}),
        )],
        Format::Ollama => vec![frame(
            format,
            "",
            json!({"model":"mock-1","created_at":"2025-03-19T22:25:31.636071Z","message":{"role":"assistant","content":""},"done_reason":"stop","done":true,"prompt_eval_count":prompt_tokens,"eval_count":completion_tokens}),
        )],
    }
}

fn midstream_error(format: Format) -> Bytes {
    match format {
        Format::OpenAi => frame(
            format,
            "",
            json!({"error":{"message":"injected mid-stream failure","type":"server_error","param":null,"code":null}}),
        ),
        Format::Anthropic => frame(
            format,
            "error",
            json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
        ),
        Format::Gemini => frame(
            format,
            "",
            json!({"error":{"code":500,"message":"injected mid-stream failure","status":"INTERNAL"}}),
        ),
        Format::Ollama => frame(format, "", json!({"error":"injected mid-stream failure"})),
    }
}

/// OpenAI's `POST /v1/audio/transcriptions` (multipart `file`, `model`): `{"text": ...}` naming the file's size,
/// type and the model, so a test can tell what was sent.
async fn transcribe(mut form: axum::extract::Multipart) -> Response {
    let (mut size, mut content_type, mut model) = (0, String::new(), String::new());
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => {
                content_type = field.content_type().unwrap_or("").to_string();
                size = field.bytes().await.map_or(0, |b| b.len());
            }
            Some("model") => model = field.text().await.unwrap_or_default(),
            _ => {}
        }
    }
    if size == 0 || model.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": { "message": "file and model are required", "type": "invalid_request_error" } })),
        )
            .into_response();
    }
    Json(json!({ "text": format!("Transcribed {size} bytes of {content_type} with {model}.") }))
        .into_response()
}

async fn reply(State(state): State<Arc<MockState>>, body: Bytes, format: Format) -> Response {
    let prompt_tokens = (body.len() as u64 / 4).max(1);
    let config = &state.config;
    if state.next() < config.rate_limit_rate {
        let body = json!({"error":{"message":"Rate limit reached (injected)","type":"tokens","code":"rate_limit_exceeded"}});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(body),
        )
            .into_response();
    }
    if state.next() < config.server_error_rate {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error":{"message":"injected server error"}})),
        )
            .into_response();
    }
    let fail_midstream = state.next() < config.midstream_error_rate;
    let cut = !fail_midstream && state.next() < config.cut_rate;
    let tokens = config.tokens;
    let delays: Vec<Duration> = (0..tokens)
        .map(|i| {
            state.delay(if i == 0 {
                config.first_token_delay
            } else {
                config.token_delay
            })
        })
        .collect();
    let all_zero = delays.iter().all(Duration::is_zero);
    let stream = async_stream::stream! {
        for chunk in opening(format, prompt_tokens) {
            yield Ok::<_, std::io::Error>(chunk);
        }
        for (i, delay) in delays.into_iter().enumerate() {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if i == tokens / 2 && fail_midstream {
                yield Ok(midstream_error(format));
                return;
            }
                        if i == tokens / 2 && cut {
                // Let what was sent reach the wire first, as on a connection that drops mid-reply.
                tokio::time::sleep(Duration::from_millis(20)).await;
                yield Err(std::io::Error::other("injected cut"));
                return;
            }
            yield Ok(delta(format, if i == 0 { "tok " } else { "en " }));
        }
        for chunk in closing(format, prompt_tokens, tokens as u64) {
            yield Ok(chunk);
        }
    };
    // With no delays, hand hyper the whole reply in large writes rather than one frame per token.
    let body = if all_zero {
        Body::from_stream(stream.ready_chunks(64).flat_map(|chunks| {
            // Join what is ready; an injected failure still comes after the bytes before it.
            let mut joined = Vec::new();
            let mut out = Vec::new();
            for chunk in chunks {
                match chunk {
                    Ok(bytes) => joined.extend_from_slice(&bytes),
                    Err(err) => {
                        out.push(Ok(Bytes::from(std::mem::take(&mut joined))));
                        out.push(Err(err));
                        break;
                    }
                }
            }
            if !joined.is_empty() {
                out.push(Ok(Bytes::from(joined)));
            }
            futures::stream::iter(out)
        }))
    } else {
        Body::from_stream(stream)
    };
    let content_type = if format == Format::Ollama {
        "application/x-ndjson"
    } else {
        "text/event-stream"
    };
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
