//! Every adapter against recorded-format fixtures (shared/reference/provider-streams.md) served by a real local
//! HTTP server that splits the body at random byte boundaries; plus mid-stream errors and truncated bodies.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use chatgate::providers::anthropic::AnthropicProvider;
use chatgate::providers::gemini::GeminiProvider;
use chatgate::providers::http::HttpOptions;
use chatgate::providers::ollama::OllamaProvider;
use chatgate::providers::openai::OpenAiProvider;
use chatgate::providers::tools::ToolCalls;
use chatgate::providers::{
    ChatMessage, ChatRequest, Provider, ProviderError, ProviderEvent, Sampling, Tool, ToolCall,
    ToolChoice, Tools,
};
use chatgate::usage::Usage;
use futures::StreamExt;

const OPENAI: &str = "data: {\"id\":\"chatcmpl-ABfw\",\"object\":\"chat.completion.chunk\",\"created\":1727346171,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_7568d46099\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n\
: keep-alive\n\n\
data: {\"id\":\"chatcmpl-ABfw\",\"object\":\"chat.completion.chunk\",\"created\":1727346171,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null,\"obfuscation\":\"a1\"}\n\n\
data:{\"id\":\"chatcmpl-ABfw\",\"object\":\"chat.completion.chunk\",\"created\":1727346171,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\", wörld 🌍\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-ABfw\",\"object\":\"chat.completion.chunk\",\"created\":1727346171,\"model\":\"gpt-4o-2024-08-06\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"length\"}]}\n\n\
data: {\"id\":\"chatcmpl-ABfw\",\"object\":\"chat.completion.chunk\",\"created\":1727346171,\"model\":\"gpt-4o-2024-08-06\",\"service_tier\":\"default\",\"choices\":[],\"usage\":{\"prompt_tokens\":79,\"completion_tokens\":4,\"total_tokens\":83,\"prompt_tokens_details\":{\"cached_tokens\":64},\"completion_tokens_details\":{\"reasoning_tokens\":2}}}\n\n\
data: [DONE]\n\n";

const GROQ: &str = "data: {\"id\":\"chatcmpl-7eb0\",\"object\":\"chat.completion.chunk\",\"created\":1770770842,\"model\":\"llama-3.3-70b-versatile\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"x_groq\":{\"id\":\"req_01kh\"}}\n\n\
data: {\"id\":\"chatcmpl-7eb0\",\"object\":\"chat.completion.chunk\",\"created\":1770770842,\"model\":\"llama-3.3-70b-versatile\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi from Groq\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n\
data: {\"id\":\"chatcmpl-7eb0\",\"object\":\"chat.completion.chunk\",\"created\":1770770842,\"model\":\"llama-3.3-70b-versatile\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"x_groq\":{\"id\":\"req_01kh\",\"usage\":{\"queue_time\":0.0419,\"prompt_tokens\":45,\"completion_tokens\":662,\"total_tokens\":707,\"total_time\":2.656}},\"usage\":{\"prompt_tokens\":45,\"completion_tokens\":662,\"total_tokens\":707}}\n\n\
data: [DONE]\n\n";

const ANTHROPIC: &str = "event: message_start\n\
data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-3-opus-latest\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":20,\"output_tokens\":1}}}\n\n\
event: content_block_start\n\
data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\n\
data: {\"type\": \"ping\"}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n\
event: content_block_delta\n\
data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n\
event: content_block_stop\n\
data: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\n\
data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n\
event: message_stop\n\
data: {\"type\":\"message_stop\"}\n\n";

const GEMINI: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"There are **3**\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":5,\"totalTokenCount\":199,\"thoughtsTokenCount\":185},\"modelVersion\":\"gemini-3-pro-preview\",\"responseId\":\"bH6LaZW8Fp_3nsEPqtaSwQ4\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\" \\\"r\\\"s in strawberry.\"}],\"role\":\"model\"},\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":23,\"totalTokenCount\":217,\"thoughtsTokenCount\":185,\"cachedContentTokenCount\":4},\"modelVersion\":\"gemini-3-pro-preview\",\"responseId\":\"bH6LaZW8Fp_3nsEPqtaSwQ4\"}\r\n\r\n\
data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}],\"role\":\"model\"},\"finishReason\":\"STOP\",\"index\":0}],\"usageMetadata\":{\"promptTokenCount\":9,\"candidatesTokenCount\":23,\"totalTokenCount\":217,\"thoughtsTokenCount\":185,\"cachedContentTokenCount\":4},\"modelVersion\":\"gemini-3-pro-preview\",\"responseId\":\"bH6LaZW8Fp_3nsEPqtaSwQ4\"}\r\n\r\n";

const OLLAMA: &str = "{\"model\":\"phi4\",\"created_at\":\"2025-03-19T22:25:26.460681Z\",\"message\":{\"role\":\"assistant\",\"content\":\"I\"},\"done\":false}\n\
{\"model\":\"phi4\",\"created_at\":\"2025-03-19T22:25:26.532581Z\",\"message\":{\"role\":\"assistant\",\"content\":\"'m fine\"},\"done\":false}\r\n\
{\"model\":\"phi4\",\"created_at\":\"2025-03-19T22:25:31.636071Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done_reason\":\"stop\",\"done\":true,\"total_duration\":5655991333,\"load_duration\":20419333,\"prompt_eval_count\":14,\"prompt_eval_duration\":458837166,\"eval_count\":73,\"eval_duration\":5175975167}\n";

/// A server answering any POST with `body`, written in pieces of random sizes (seeded) with a flush between.
async fn serve(body: &'static str, content_type: &'static str, seed: u64) -> String {
    let app = axum::Router::new().fallback(move || async move {
        let mut rng = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let bytes = body.as_bytes();
        let mut pieces = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let size = 1 + (rng >> 33) as usize % 40;
            let end = (at + size).min(bytes.len());
            pieces.push(Bytes::copy_from_slice(&bytes[at..end]));
            at = end;
        }
        let stream = futures::stream::iter(pieces).then(|piece| async move {
            tokio::task::yield_now().await;
            Ok::<_, std::io::Error>(piece)
        });
        Response::builder()
            .header("content-type", content_type)
            .body(Body::from_stream(stream))
            .expect("response")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn timeouts() -> HttpOptions {
    HttpOptions {
        connect: Duration::from_secs(2),
        first_token: Duration::from_secs(5),
        idle: Duration::from_secs(5),
        http2: false,
        http2_prior_knowledge: false,
        ca_file: None,
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::system("Be brief"), ChatMessage::user("Hi")],
        max_tokens: None,
        sampling: Sampling::default(),
        tools: Default::default(),
    }
}

/// Every sampling setting set, as a request through `/v1/chat/completions` would carry them.
fn all_sampling() -> Sampling {
    Sampling {
        temperature: Some(0.4),
        top_p: Some(0.9),
        stop: vec!["END".into()],
        seed: Some(7),
        presence_penalty: Some(0.5),
        frequency_penalty: Some(-0.5),
        response_format: Some(
            serde_json::json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}),
        ),
    }
}

#[derive(Debug, PartialEq)]
struct Collected {
    text: String,
    deltas: usize,
    usage: Usage,
    finish: Option<String>,
    error: Option<ProviderError>,
    calls: ToolCalls,
}

async fn collect(provider: &dyn Provider, model: &str) -> Collected {
    let mut collected = Collected {
        text: String::new(),
        deltas: 0,
        usage: Usage::default(),
        finish: None,
        error: None,
        calls: ToolCalls::default(),
    };
    let mut stream = provider.stream(&request(model));
    while let Some(event) = stream.next().await {
        match event {
            Ok(ProviderEvent::TextDelta(text)) => {
                collected.text.push_str(&text);
                collected.deltas += 1;
            }
            Ok(ProviderEvent::Usage(usage)) => collected.usage.merge(usage),
            Ok(ProviderEvent::Finish(reason)) => {
                collected.finish = Some(reason.as_str().to_string())
            }
            Ok(ProviderEvent::ToolCall(call)) => collected.calls.push(&call),
            Err(error) => {
                collected.error = Some(error);
                break;
            }
        }
    }
    collected
}

type Make = fn(&str) -> Box<dyn Provider>;

fn openai(url: &str) -> Box<dyn Provider> {
    Box::new(
        OpenAiProvider::new(
            "openai",
            &format!("{url}/v1"),
            Some("sk-test".into()),
            timeouts(),
        )
        .expect("provider"),
    )
}
fn anthropic(url: &str) -> Box<dyn Provider> {
    Box::new(
        AnthropicProvider::new(
            "anthropic",
            &format!("{url}/v1"),
            Some("sk-ant".into()),
            timeouts(),
        )
        .expect("provider"),
    )
}
fn gemini(url: &str) -> Box<dyn Provider> {
    Box::new(
        GeminiProvider::new(
            "gemini",
            &format!("{url}/v1beta"),
            Some("g-key".into()),
            timeouts(),
        )
        .expect("provider"),
    )
}
fn ollama(url: &str) -> Box<dyn Provider> {
    Box::new(OllamaProvider::new("ollama", url, None, timeouts()).expect("provider"))
}

/// Runs a fixture through 25 different random splits; every run must decode the same.
async fn check_fixture(
    make: Make,
    body: &'static str,
    content_type: &'static str,
    expected: Collected,
) {
    for seed in 0..25 {
        let url = serve(body, content_type, seed).await;
        let collected = collect(&*make(&url), "model-x").await;
        assert_eq!(collected.text, expected.text, "seed {seed}");
        assert_eq!(collected.usage, expected.usage, "seed {seed}");
        assert_eq!(collected.finish, expected.finish, "seed {seed}");
        assert_eq!(collected.error, expected.error, "seed {seed}");
        assert_eq!(
            collected.deltas, expected.deltas,
            "seed {seed}: one delta per upstream text piece"
        );
    }
}

#[tokio::test]
async fn openai_fixture_at_random_splits() {
    let usage = Usage {
        prompt_tokens: Some(79),
        completion_tokens: Some(4),
        cached_tokens: Some(64),
        reasoning_tokens: Some(2),
    };
    let expected = Collected {
        text: "Hello, wörld 🌍".into(),
        deltas: 2,
        usage,
        finish: Some("length".into()),
        error: None,
        calls: ToolCalls::default(),
    };
    check_fixture(openai, OPENAI, "text/event-stream", expected).await;
}

#[tokio::test]
async fn groq_fixture_reads_x_groq_usage() {
    let usage = Usage {
        prompt_tokens: Some(45),
        completion_tokens: Some(662),
        cached_tokens: None,
        reasoning_tokens: None,
    };
    let expected = Collected {
        text: "Hi from Groq".into(),
        deltas: 1,
        usage,
        finish: Some("stop".into()),
        error: None,
        calls: ToolCalls::default(),
    };
    check_fixture(openai, GROQ, "text/event-stream", expected).await;
}

#[tokio::test]
async fn anthropic_fixture_at_random_splits() {
    // input 11 + cache read 20 = 31 prompt tokens; output from the cumulative message_delta.
    let usage = Usage {
        prompt_tokens: Some(31),
        completion_tokens: Some(6),
        cached_tokens: Some(20),
        reasoning_tokens: None,
    };
    let expected = Collected {
        text: "Hello there!".into(),
        deltas: 3,
        usage,
        finish: Some("stop".into()),
        error: None,
        calls: ToolCalls::default(),
    };
    check_fixture(anthropic, ANTHROPIC, "text/event-stream", expected).await;
}

#[tokio::test]
async fn gemini_crlf_fixture_at_random_splits() {
    // Thinking tokens are billed as output: 23 + 185.
    let usage = Usage {
        prompt_tokens: Some(9),
        completion_tokens: Some(208),
        cached_tokens: Some(4),
        reasoning_tokens: Some(185),
    };
    let expected = Collected {
        text: "There are **3** \"r\"s in strawberry.".into(),
        deltas: 2,
        usage,
        finish: Some("stop".into()),
        error: None,
        calls: ToolCalls::default(),
    };
    check_fixture(gemini, GEMINI, "text/event-stream", expected).await;
}

#[tokio::test]
async fn ollama_ndjson_fixture_at_random_splits() {
    let usage = Usage {
        prompt_tokens: Some(14),
        completion_tokens: Some(73),
        cached_tokens: None,
        reasoning_tokens: None,
    };
    let expected = Collected {
        text: "I'm fine".into(),
        deltas: 2,
        usage,
        finish: Some("stop".into()),
        error: None,
        calls: ToolCalls::default(),
    };
    check_fixture(ollama, OLLAMA, "application/x-ndjson", expected).await;
}

/// Cuts a fixture just before `marker` (its terminator, or the chunk that makes Gemini's end clean).
fn cut_before(body: &'static str, marker: &str) -> &'static str {
    &body[..body.find(marker).expect("marker in fixture")]
}

#[tokio::test]
async fn a_body_closed_before_the_terminator_is_interrupted() {
    let cases: [(Make, &'static str, &'static str, &str); 5] = [
        (
            openai,
            cut_before(OPENAI, "data: [DONE]"),
            "text/event-stream",
            "Hello, wörld 🌍",
        ),
        (
            anthropic,
            cut_before(ANTHROPIC, "event: message_stop"),
            "text/event-stream",
            "Hello there!",
        ),
        (
            gemini,
            cut_before(
                GEMINI,
                "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"\"}]",
            ),
            "text/event-stream",
            "There are **3** \"r\"s in strawberry.",
        ),
        (
            ollama,
            cut_before(
                OLLAMA,
                "{\"model\":\"phi4\",\"created_at\":\"2025-03-19T22:25:31",
            ),
            "application/x-ndjson",
            "I'm fine",
        ),
        // A body cut in the middle of a line is interrupted too.
        (
            ollama,
            &OLLAMA[..OLLAMA.len() - 20],
            "application/x-ndjson",
            "I'm fine",
        ),
    ];
    for (make, body, content_type, text) in cases {
        for seed in 0..5 {
            let url = serve(body, content_type, seed).await;
            let collected = collect(&*make(&url), "model-x").await;
            assert_eq!(collected.text, text);
            assert!(
                matches!(collected.error, Some(ProviderError::Interrupted { .. })),
                "{content_type} cut before its end: {:?}",
                collected.error
            );
        }
    }
}

#[tokio::test]
async fn errors_inside_a_200_stream_are_recognised() {
    let cases: [(Make, &'static str, &'static str, &str); 4] = [
        (
            openai,
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"stream failed after output\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
            "text/event-stream",
            "stream failed after output",
        ),
        (
            anthropic,
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\nevent: error\ndata: {\"type\":\"error\",\"error\":{\"details\":null,\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "text/event-stream",
            "overloaded_error: Overloaded",
        ),
        (
            gemini,
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}],\"role\":\"model\"},\"index\":0}]}\r\n\r\ndata: {\"error\":{\"code\":500,\"message\":\"Internal error\",\"status\":\"INTERNAL\"}}\r\n\r\n",
            "text/event-stream",
            "INTERNAL: Internal error",
        ),
        (
            ollama,
            "{\"message\":{\"role\":\"assistant\",\"content\":\"Hi\"},\"done\":false}\n{\"error\":\"an error was encountered while running the model\"}\n",
            "application/x-ndjson",
            "an error was encountered while running the model",
        ),
    ];
    for (make, body, content_type, message) in cases {
        let url = serve(body, content_type, 7).await;
        let collected = collect(&*make(&url), "model-x").await;
        assert_eq!(collected.text, "Hi");
        match collected.error {
            Some(ProviderError::Upstream { message: got, .. }) => assert_eq!(got, message),
            other => panic!("expected an upstream error, got {other:?}"),
        }
    }
}

type Seen =
    std::sync::Arc<std::sync::Mutex<Vec<(String, axum::http::HeaderMap, serde_json::Value)>>>;

/// A server that records every request (path, headers, JSON body) and answers 503.
async fn recorder() -> (String, Seen) {
    use std::sync::Arc;
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(
        move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: Bytes| {
            let record = Arc::clone(&record);
            async move {
                let json = serde_json::from_slice(&body).unwrap_or_default();
                record
                    .lock()
                    .expect("lock")
                    .push((uri.to_string(), headers, json));
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn request_shapes_match_each_api() {
    let (url, seen) = recorder().await;
    for make in [openai as Make, anthropic, gemini, ollama] {
        let collected = collect(&*make(&url), "model-x").await;
        assert!(
            matches!(
                collected.error,
                Some(ProviderError::Status { status: 503, .. })
            ),
            "{:?}",
            collected.error
        );
    }
    // The same request with every sampling setting, in each API's own names.
    for make in [openai as Make, anthropic, gemini, ollama] {
        let provider = make(&url);
        let mut sampling = all_sampling();
        // What a provider has no counterpart for is refused before a request is made (and left out on a
        // fallback): Anthropic takes temperature, top_p and stop only.
        while let Some(name) = provider.unsupported(&sampling) {
            assert_eq!(provider.name(), "anthropic", "{name}");
            assert!(sampling.clear(name), "{name}");
        }
        let request = ChatRequest {
            sampling,
            ..request("model-x")
        };
        let _ = provider.stream(&request).collect::<Vec<_>>().await;
    }
    let seen = seen.lock().expect("lock");
    let (uri, headers, body) = &seen[0];
    assert_eq!(uri, "/v1/chat/completions");
    assert_eq!(headers["authorization"], "Bearer sk-test");
    assert_eq!(body["stream_options"]["include_usage"], true);
    let (uri, headers, body) = &seen[1];
    assert_eq!(uri, "/v1/messages");
    assert_eq!(
        (
            headers["x-api-key"].to_str().ok(),
            headers["anthropic-version"].to_str().ok()
        ),
        (Some("sk-ant"), Some("2023-06-01"))
    );
    assert_eq!(body["system"], "Be brief");
    assert!(
        body["max_tokens"].is_u64(),
        "max_tokens is required by Anthropic"
    );
    let (uri, headers, body) = &seen[2];
    assert_eq!(uri, "/v1beta/models/model-x:streamGenerateContent?alt=sse");
    assert_eq!(headers["x-goog-api-key"], "g-key");
    assert_eq!(body["systemInstruction"]["parts"][0]["text"], "Be brief");
    let (uri, _, body) = &seen[3];
    assert_eq!(uri, "/api/chat");
    assert_eq!(body["stream"], true);
    assert_eq!(body["messages"][1]["role"], "user");

    use serde_json::json;
    let sampled = |i: usize, keys: &[&str]| {
        let body = &seen[i].2;
        keys.iter()
            .map(|key| body.pointer(key).cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let schema = json!({"type": "object"});
    assert_eq!(
        sampled(
            4,
            &[
                "/temperature",
                "/top_p",
                "/stop",
                "/seed",
                "/presence_penalty",
                "/frequency_penalty",
                "/response_format/json_schema/schema"
            ]
        ),
        [
            json!(0.4),
            json!(0.9),
            json!(["END"]),
            json!(7),
            json!(0.5),
            json!(-0.5),
            schema.clone()
        ],
        "OpenAI, as is"
    );
    assert_eq!(
        sampled(
            5,
            &[
                "/temperature",
                "/top_p",
                "/stop_sequences",
                "/seed",
                "/response_format"
            ]
        ),
        [
            json!(0.4),
            json!(0.9),
            json!(["END"]),
            json!(null),
            json!(null)
        ],
        "Anthropic"
    );
    assert_eq!(
        sampled(
            6,
            &[
                "/generationConfig/temperature",
                "/generationConfig/topP",
                "/generationConfig/stopSequences",
                "/generationConfig/seed",
                "/generationConfig/presencePenalty",
                "/generationConfig/frequencyPenalty",
                "/generationConfig/responseMimeType",
                "/generationConfig/responseJsonSchema"
            ]
        ),
        [
            json!(0.4),
            json!(0.9),
            json!(["END"]),
            json!(7),
            json!(0.5),
            json!(-0.5),
            json!("application/json"),
            schema.clone()
        ],
        "Gemini's generationConfig"
    );
    assert_eq!(
        sampled(
            7,
            &[
                "/options/temperature",
                "/options/top_p",
                "/options/stop",
                "/options/seed",
                "/options/presence_penalty",
                "/options/frequency_penalty",
                "/format"
            ]
        ),
        [
            json!(0.4),
            json!(0.9),
            json!(["END"]),
            json!(7),
            json!(0.5),
            json!(-0.5),
            schema
        ],
        "Ollama's options and format"
    );
}

/// The benchmark mock speaks every format the adapters read, and its injected failures are recognised.
#[tokio::test]
async fn the_mock_upstream_serves_every_format() {
    use chatgate::testkit::{MockConfig, serve};
    let start = |config: MockConfig| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(serve(listener, config));
        url
    };
    let url = start(MockConfig {
        tokens: 50,
        token_delay: Duration::from_millis(1),
        ..MockConfig::default()
    })
    .await;
    let expected = format!("tok {}", "en ".repeat(49));
    for make in [openai as Make, anthropic, gemini, ollama] {
        let collected = collect(&*make(&url), "mock-1").await;
        assert_eq!(collected.error, None);
        assert_eq!(collected.text, expected);
        assert_eq!(collected.deltas, 50);
        assert_eq!(collected.usage.completion_tokens, Some(50));
        assert_eq!(collected.finish.as_deref(), Some("stop"));
    }
    let failing = start(MockConfig {
        tokens: 10,
        midstream_error_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let cut = start(MockConfig {
        tokens: 10,
        cut_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    for make in [openai as Make, anthropic, gemini, ollama] {
        assert!(matches!(
            collect(&*make(&failing), "m").await.error,
            Some(ProviderError::Upstream { .. })
        ));
        let error = collect(&*make(&cut), "m").await.error;
        assert!(
            matches!(error, Some(ProviderError::Interrupted { .. })),
            "{error:?}"
        );
    }
    let limited = start(MockConfig {
        rate_limit_rate: 1.0,
        ..MockConfig::default()
    })
    .await;
    let error = collect(&*openai(&limited), "m").await.error;
    assert!(
        matches!(error, Some(ProviderError::RateLimited { retry_after: Some(d), .. }) if d == Duration::from_secs(1))
    );
}

/// `http2_prior_knowledge` speaks h2c to a plain-http upstream (the mock serves HTTP/1 and HTTP/2 alike).
#[tokio::test]
async fn an_upstream_can_be_reached_over_h2c() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(chatgate::testkit::serve(
        listener,
        chatgate::testkit::MockConfig {
            tokens: 5,
            ..Default::default()
        },
    ));
    let options = HttpOptions {
        http2_prior_knowledge: true,
        ..timeouts()
    };
    let provider =
        OpenAiProvider::new("h2", &format!("{url}/v1"), None, options).expect("provider");
    let collected = collect(&provider, "mock-1").await;
    assert_eq!(collected.error, None);
    assert_eq!(collected.deltas, 5);
}

/// An `https` upstream (the mock, behind TLS with a certificate of a throwaway authority) that offers HTTP/2
/// and HTTP/1.1 by ALPN and allows `max_streams` concurrent HTTP/2 streams, as a provider's edge does
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`). It records the HTTP version of each request.
struct TlsUpstream {
    url: String,
    ca_file: std::path::PathBuf,
    versions: std::sync::Arc<std::sync::Mutex<Vec<axum::http::Version>>>,
    _dir: tempfile::TempDir,
}

impl TlsUpstream {
    /// `None` (the test says SKIPPED) without the `openssl` command, which makes the certificates.
    async fn start(max_streams: u32, config: chatgate::testkit::MockConfig) -> Option<Self> {
        use std::sync::{Arc, Mutex};
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;

        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).display().to_string();
        let d = dir.path().display().to_string();
        // A throwaway authority and a leaf for 127.0.0.1 that it signs (webpki refuses a CA certificate as the
        // server's own). The temporary directory's path has no spaces.
        let openssl = |args: String| {
            std::process::Command::new("openssl")
                .args(args.split_whitespace())
                .output()
                .is_ok_and(|out| out.status.success())
        };
        let p256 = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let made = openssl(format!(
            "req -x509 {p256} -days 1 -subj /CN=chatgate-test-authority -keyout {d}/ca.key -out {d}/ca.pem"
        )) && openssl(format!(
            "req {p256} -subj /CN=127.0.0.1 -keyout {d}/key.pem -out {d}/leaf.csr"
        )) && std::fs::write(
            path("leaf.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .is_ok()
            && openssl(format!(
                "x509 -req -in {d}/leaf.csr -CA {d}/ca.pem -CAkey {d}/ca.key -CAcreateserial -days 1 \
                 -extfile {d}/leaf.ext -out {d}/leaf.pem"
            ));
        if !made {
            eprintln!("SKIPPED the TLS upstream test: the openssl command is missing or failed");
            return None;
        }
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path("leaf.pem"))
            .expect("leaf.pem")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(path("key.pem")).expect("key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

        let versions = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&versions);
        let app = chatgate::testkit::router(config).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                seen.lock().expect("versions").push(request.version());
                next.run(request)
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut server = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    server.http2().max_concurrent_streams(max_streams);
                    let _ = server
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(stream),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        Some(Self {
            url,
            ca_file: dir.path().join("ca.pem"),
            versions,
            _dir: dir,
        })
    }

    /// Streams `n` replies at once through an OpenAI adapter; returns the order of their first deltas and ends,
    /// as `(stream, "first" | "end")`, and the HTTP versions the upstream saw.
    async fn streams_at_once(
        &self,
        n: usize,
        http2: bool,
    ) -> (Vec<(usize, &'static str)>, Vec<axum::http::Version>) {
        use std::sync::{Arc, Mutex};
        self.versions.lock().expect("versions").clear();
        let options = HttpOptions {
            http2,
            ca_file: Some(self.ca_file.clone()),
            ..timeouts()
        };
        let provider: Arc<dyn Provider> = Arc::new(
            OpenAiProvider::new(
                "tls",
                &format!("{}/v1", self.url),
                Some("k".into()),
                options,
            )
            .expect("provider"),
        );
        let order = Arc::new(Mutex::new(Vec::new()));
        let streams: Vec<_> = (0..n)
            .map(|i| {
                let (provider, order) = (Arc::clone(&provider), Arc::clone(&order));
                tokio::spawn(async move {
                    let mut stream = provider.stream(&request("mock-1"));
                    let mut first = true;
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(ProviderEvent::TextDelta(_)) if first => {
                                first = false;
                                order.lock().expect("order").push((i, "first"));
                            }
                            Ok(_) => {}
                            Err(error) => panic!("stream {i}: {error}"),
                        }
                    }
                    order.lock().expect("order").push((i, "end"));
                })
            })
            .collect();
        for stream in streams {
            stream.await.expect("stream task");
        }
        let order = order.lock().expect("order").clone();
        let versions = self.versions.lock().expect("versions").clone();
        (order, versions)
    }
}

/// Four replies at once from an `https` provider that allows two concurrent HTTP/2 streams. By default each has
/// an HTTP/1.1 connection of its own, so all four start before any ends; with `http2` on they share one HTTP/2
/// connection and the last two wait for the first two to end — the queue the default avoids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_to_an_https_provider_do_not_queue_behind_its_http2_stream_limit() {
    let config = chatgate::testkit::MockConfig {
        tokens: 8,
        token_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let Some(upstream) = TlsUpstream::start(2, config).await else {
        return;
    };
    let starts_before_any_end =
        |order: &[(usize, &str)]| order.iter().take(4).all(|(_, what)| *what == "first");

    let (order, versions) = upstream.streams_at_once(4, false).await;
    assert_eq!(versions, vec![axum::http::Version::HTTP_11; 4], "{order:?}");
    assert!(starts_before_any_end(&order), "{order:?}");

    let (order, versions) = upstream.streams_at_once(4, true).await;
    assert_eq!(versions.len(), 4);
    assert!(
        versions.iter().all(|v| *v == axum::http::Version::HTTP_2),
        "{versions:?}"
    );
    assert!(!starts_before_any_end(&order), "{order:?}");
}

/// A `ca_file` that cannot be read, or holds no certificate, stops startup with a message naming the provider's
/// setting and the file; it is never ignored.
#[test]
fn a_bad_ca_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate\n").expect("write");
    for (file, says) in [
        (dir.path().join("missing.pem"), "cannot read"),
        (not_pem, "holds no PEM certificate"),
    ] {
        let options = HttpOptions {
            ca_file: Some(file.clone()),
            ..timeouts()
        };
        let Err(err) = OpenAiProvider::new("private", "https://127.0.0.1:1/v1", None, options)
        else {
            panic!("{} was accepted", file.display());
        };
        assert!(
            err.starts_with("providers.private.ca_file: ")
                && err.contains(&file.display().to_string())
                && err.contains(says),
            "{err}"
        );
    }
}

// Tool calls as each provider streams them (OpenAI API reference, "Streaming" with `tool_calls` deltas;
// Anthropic "Streaming Messages", tool use example; Gemini "Function calling" with Gemini 3's thought
// signature on the first call; Ollama "Chat request (with tools)", whole calls in `message.tool_calls`).
const OPENAI_TOOLS: &str = include_str!("fixtures/streams/openai_tools.sse");

const ANTHROPIC_TOOLS: &str = include_str!("fixtures/streams/anthropic_tools.sse");

const GEMINI_TOOLS: &str = include_str!("fixtures/streams/gemini_tools.sse");

const OLLAMA_TOOLS: &str = include_str!("fixtures/streams/ollama_tools.ndjson");

/// Each provider's streamed tool calls fold into the same two calls, at any split of the body: ids kept where
/// the provider gives them (made where it does not), arguments JSON that parses to what the model wrote.
#[tokio::test]
async fn tool_calls_from_every_provider_at_random_splits() {
    /// The adapter, its stream and content type, the call ids it must keep, its text and finish reason.
    type Case = (
        Make,
        &'static str,
        &'static str,
        [Option<&'static str>; 2],
        &'static str,
        &'static str,
    );
    let cases: [Case; 4] = [
        (
            openai,
            OPENAI_TOOLS,
            "text/event-stream",
            [Some("call_DdmO9pD3xa9XTPNJ32zg2hcA"), Some("call_Xy7")],
            "",
            "tool_calls",
        ),
        (
            anthropic,
            ANTHROPIC_TOOLS,
            "text/event-stream",
            [Some("toolu_01T1x1fJ34qAmk2tNTrN7Up6"), Some("toolu_02")],
            "Okay, let's check.",
            "tool_calls",
        ),
        // Gemini and Ollama say `stop`; the generation reports `tool_calls` (tests/openai.rs).
        (
            gemini,
            GEMINI_TOOLS,
            "text/event-stream",
            [None, None],
            "",
            "stop",
        ),
        (
            ollama,
            OLLAMA_TOOLS,
            "application/x-ndjson",
            [Some("call_vt1"), None],
            "",
            "stop",
        ),
    ];
    for (make, body, content_type, ids, text, finish) in cases {
        for seed in 0..10 {
            let url = serve(body, content_type, seed).await;
            let collected = collect(&*make(&url), "model-x").await;
            let context = format!("{content_type} {finish} seed {seed}");
            assert_eq!(collected.error, None, "{context}");
            assert_eq!(collected.text, text, "{context}");
            assert_eq!(collected.finish.as_deref(), Some(finish), "{context}");
            let calls = collected.calls.finish();
            assert_eq!(calls.len(), 2, "{context}: {calls:?}");
            let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
            assert_eq!(names, ["get_weather", "get_time"], "{context}");
            let arguments: Vec<serde_json::Value> = calls
                .iter()
                .map(|c| serde_json::from_str(&c.arguments).expect("arguments are JSON"))
                .collect();
            assert_eq!(
                arguments,
                [
                    serde_json::json!({"location": "Paris, France"}),
                    serde_json::json!({})
                ],
                "{context}"
            );
            if body == GEMINI_TOOLS {
                assert!(
                    calls[0]
                        .id
                        .ends_with("~ts~CiQB0e2Kb3dRh+BYdbZvmulSN2Pwwc75DfGC6gnPeqAKBpLn"),
                    "the thought signature rides on the id: {}",
                    calls[0].id
                );
                assert!(!calls[1].id.contains("~ts~"));
            }
            for (call, id) in calls.iter().zip(ids) {
                match id {
                    Some(id) => assert_eq!(call.id, id, "{context}"),
                    None => assert!(call.id.starts_with("call_"), "{context}: {}", call.id),
                }
            }
        }
    }
}

/// Tools, the tool choice and a history with a call and its result, in each API's own shape.
#[tokio::test]
async fn tool_requests_match_each_api() {
    use serde_json::json;
    let (url, seen) = recorder().await;
    let schema = json!({"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]});
    let call = ToolCall {
        id: "call_1~ts~c2lnbmF0dXJl".into(),
        name: "get_weather".into(),
        arguments: r#"{"location": "Paris"}"#.into(),
    };
    let request = ChatRequest {
        model: "model-x".into(),
        messages: vec![
            ChatMessage::system("Be brief"),
            ChatMessage::user("Weather in Paris?"),
            ChatMessage::assistant("").with_tool_calls(vec![call.clone()]),
            ChatMessage::tool(call.id.clone(), r#"{"celsius": 21}"#),
        ],
        tools: Tools {
            definitions: vec![Tool {
                name: "get_weather".into(),
                description: Some("Current weather".into()),
                parameters: schema.clone(),
                strict: Some(true),
            }],
            choice: Some(ToolChoice::Function("get_weather".into())),
            parallel: Some(false),
        },
        ..request("model-x")
    };
    for make in [openai as Make, anthropic, gemini, ollama] {
        let _ = make(&url).stream(&request).collect::<Vec<_>>().await;
    }
    let seen = seen.lock().expect("lock");
    let body = |i: usize| seen[i].2.clone();

    let openai = body(0);
    assert_eq!(
        openai["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Current weather", "parameters": schema, "strict": true}}])
    );
    assert_eq!(
        openai["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}})
    );
    assert_eq!(openai["parallel_tool_calls"], false);
    assert_eq!(
        openai["messages"][2],
        json!({"role": "assistant", "content": null, "tool_calls": [{"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}]})
    );
    assert_eq!(
        openai["messages"][3],
        json!({"role": "tool", "tool_call_id": call.id, "content": "{\"celsius\": 21}"})
    );

    let anthropic = body(1);
    assert_eq!(
        anthropic["tools"],
        json!([{"name": "get_weather", "description": "Current weather", "input_schema": schema}])
    );
    assert_eq!(
        anthropic["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        anthropic["messages"],
        json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"location": "Paris"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "{\"celsius\": 21}"}]},
        ])
    );

    let gemini = body(2);
    assert_eq!(
        gemini["tools"],
        json!([{"functionDeclarations": [{"name": "get_weather", "description": "Current weather", "parametersJsonSchema": schema}]}])
    );
    assert_eq!(
        gemini["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    assert_eq!(
        gemini["contents"][1],
        json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}, "thoughtSignature": "c2lnbmF0dXJl"}]}),
        "the thought signature goes back with its call"
    );
    assert_eq!(
        gemini["contents"][2],
        json!({"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"celsius": 21}}}]})
    );

    let ollama = body(3);
    assert_eq!(ollama["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(ollama.get("tool_choice"), None, "Ollama has no tool_choice");
    assert_eq!(
        ollama["messages"][2]["tool_calls"],
        json!([{"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}])
    );
    assert_eq!(
        ollama["messages"][3],
        json!({"role": "tool", "content": "{\"celsius\": 21}", "tool_name": "get_weather"})
    );
}
