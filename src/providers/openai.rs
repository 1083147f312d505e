//! OpenAI Chat Completions streaming adapter, for OpenAI and every compatible server (Groq, OpenRouter, vLLM,
//! LM Studio, Ollama's `/v1`).
//!
//! Wire format (OpenAI API reference, "Chat Completions · streaming"; recordings in openai-python's tests):
//! SSE `data: <chunk>` events, `data: [DONE]` at the end. Usage comes on a final chunk with `choices: []` when
//! `stream_options.include_usage` is sent (always, here); Groq puts it in `x_groq.usage` on the last content
//! chunk. Some servers send `choices: null`. Errors after the 200 arrive as `data: {"error": {...}}`.

use std::time::Duration;

use async_stream::try_stream;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ChatRequest, Provider, ProviderError, ProviderEvent, ProviderStream, TimeoutKind};
use crate::usage::Usage;

/// Timeouts of one provider.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// From sending the request to the first streamed event.
    pub first_token: Duration,
    /// Between two streamed events.
    pub idle: Duration,
}

/// The OpenAI-compatible adapter.
pub struct OpenAiProvider {
    name: String,
    url: String,
    api_key: Option<String>,
    client: reqwest::Client,
    timeouts: Timeouts,
}

impl OpenAiProvider {
    /// `base_url` ends before `/chat/completions`, e.g. `https://api.openai.com/v1`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (TLS backend failure).
    pub fn new(
        name: &str,
        base_url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| format!("providers.{name}: cannot build HTTP client: {e}"))?;
        Ok(Self {
            name: name.to_string(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            client,
            timeouts,
        })
    }
}

impl Provider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn stream(&self, request: ChatRequest) -> ProviderStream {
        let mut body = json!({
            "model": request.model,
            "messages": request.messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if let Some(max_tokens) = request.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        let mut builder = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            builder = builder.bearer_auth(key);
        }
        let provider = self.name.clone();
        let timeouts = self.timeouts;
        Box::pin(try_stream! {
            // The first-token budget covers connecting, the response head and the first event together.
            let first_deadline = tokio::time::Instant::now() + timeouts.first_token;
            let response = match tokio::time::timeout_at(first_deadline, builder.send()).await {
                Err(_) => Err(ProviderError::Timeout { provider: provider.clone(), kind: TimeoutKind::FirstToken })?,
                Ok(result) => result.map_err(|e| send_error(&provider, &e))?,
            };
            let response = check_status(&provider, response).await?;
            let mut events = response.bytes_stream().eventsource();
            let mut deadline = first_deadline;
            let mut wait_kind = TimeoutKind::FirstToken;
            loop {
                let event = match tokio::time::timeout_at(deadline, events.next()).await {
                    Err(_) => Err(ProviderError::Timeout { provider: provider.clone(), kind: wait_kind })?,
                    Ok(None) => Err(ProviderError::Interrupted { provider: provider.clone() })?,
                    Ok(Some(Err(e))) => Err(stream_error(&provider, e))?,
                    Ok(Some(Ok(event))) => event,
                };
                deadline = tokio::time::Instant::now() + timeouts.idle;
                wait_kind = TimeoutKind::Idle;
                let data = event.data.trim();
                if data == "[DONE]" {
                    break;
                }
                if data.is_empty() {
                    continue;
                }
                let chunk: Chunk = serde_json::from_str(data).map_err(|e| ProviderError::Malformed {
                    provider: provider.clone(),
                    message: format!("{e} in chunk {}", truncate(data, 200)),
                })?;
                if let Some(error) = chunk.error {
                    Err(ProviderError::Upstream { provider: provider.clone(), message: error_message(&error) })?;
                }
                let mut finish = None;
                for choice in chunk.choices.unwrap_or_default() {
                    if let Some(text) = choice.delta.and_then(|d| d.content).filter(|t| !t.is_empty()) {
                        yield ProviderEvent::TextDelta(text);
                    }
                    finish = choice.finish_reason.or(finish);
                }
                if let Some(usage) = chunk.usage.or(chunk.x_groq.and_then(|x| x.usage)) {
                    yield ProviderEvent::Usage(usage.into());
                }
                if let Some(reason) = finish {
                    yield ProviderEvent::Finish(reason);
                }
            }
        })
    }
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<ChunkUsage>,
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<ChunkUsage>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    reasoning_tokens: Option<u64>,
}

impl From<ChunkUsage> for Usage {
    fn from(u: ChunkUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens),
        }
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((cut, _)) => &s[..cut],
        None => s,
    }
}

/// `{"error": {"message": ...}}`, `{"error": "..."}` or anything else, as one line.
fn error_message(error: &Value) -> String {
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
        // reqwest's message names the URL but never headers, so the key cannot leak.
        ProviderError::Connect {
            provider: provider.to_string(),
            message: err.to_string(),
        }
    }
}

fn stream_error<E: std::fmt::Display>(
    provider: &str,
    err: eventsource_stream::EventStreamError<E>,
) -> ProviderError {
    match err {
        eventsource_stream::EventStreamError::Transport(e) => {
            tracing::debug!(provider, error = %e, "upstream body failed");
            ProviderError::Interrupted {
                provider: provider.to_string(),
            }
        }
        other => ProviderError::Malformed {
            provider: provider.to_string(),
            message: other.to_string(),
        },
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds (RFC 9110 §10.2.3; the HTTP-date form is ignored).
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = header("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    header(RETRY_AFTER.as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
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

/// Maps a non-2xx answer: 401/403 never echo the body (it may quote the key); 429 keeps the retry hint unless
/// the quota is exhausted, which no retry fixes.
fn status_error(provider: &str, status: u16, headers: &HeaderMap, body: &str) -> ProviderError {
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
        },
        429 => ProviderError::RateLimited {
            provider,
            message,
            retry_after: retry_after(headers),
        },
        _ => ProviderError::Status {
            provider,
            status,
            message,
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
        assert_eq!(err.http_status(), 502);

        let err = status_error("openai", 503, &HeaderMap::new(), "upstream overloaded");
        assert!(err.is_retryable());
        assert!(err.to_string().contains("upstream overloaded"));
    }

    #[test]
    fn usage_reads_cached_and_reasoning_details() {
        let chunk: Chunk = serde_json::from_str(
            r#"{"choices":[],"usage":{"prompt_tokens":79,"completion_tokens":1,"total_tokens":80,
               "prompt_tokens_details":{"cached_tokens":64},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
        )
        .expect("chunk");
        let usage: Usage = chunk.usage.expect("usage").into();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: Some(79),
                completion_tokens: Some(1),
                cached_tokens: Some(64),
                reasoning_tokens: Some(0)
            }
        );
    }
}
