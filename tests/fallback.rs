//! Retries and fallback before the first token, the model registry and provider health, through the gateway.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use chatgate::config::Config;
use common::{
    Backend, FakeOpenAi, Script, Step, TestDb, TestServer, content_chunk, full_stream, role_chunk,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// A gateway whose `primary` model (on `primary_url`) falls back to `backup` (on `backup_url`).
async fn gateway(primary_url: &str, backup_url: &str) -> Option<TestServer> {
    let db = TestDb::new(Backend::Sqlite).await?;
    let toml = format!(
        "[database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{}\"\n\
         [generation]\nretry_attempts = 2\nretry_base_ms = 10\nretry_max_ms = 1000\n\
         [providers.main]\nkind = \"openai\"\nbase_url = \"{primary_url}/v1\"\napi_key = \"k1\"\n\
         [providers.spare]\nkind = \"openai\"\nbase_url = \"{backup_url}/v1\"\napi_key = \"k2\"\n\
         [models.primary]\nprovider = \"main\"\nmodel = \"gpt-4o\"\ninput_per_mtok = 2.5\noutput_per_mtok = 10.0\n\
         context_window = 128000\nfallbacks = [\"backup\"]\n\
         [models.backup]\nprovider = \"spare\"\nmodel = \"gpt-4o-mini\"\ninput_per_mtok = 0.15\noutput_per_mtok = 0.6\n\
         [defaults]\nmodel = \"primary\"\n[titles]\nenabled = false\n",
        db.url,
        common::SECRET
    );
    Some(TestServer::start_with(Config::from_toml(&toml).expect("config"), db).await)
}

async fn send(server: &TestServer) -> (u16, Value) {
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "hi" }))
        .send()
        .await
        .expect("send");
    (
        response.status().as_u16(),
        response.json().await.expect("json"),
    )
}

fn rate_limited(retry_after: &'static str) -> Script {
    Script::error(
        429,
        vec![("retry-after", retry_after)],
        json!({"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}),
    )
}

#[tokio::test]
async fn rate_limited_primary_retries_then_the_fallback_answers() {
    let primary = FakeOpenAi::start(vec![rate_limited("0.01")]).await;
    let backup = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["from ", "backup"],
        10,
        2,
        Duration::ZERO,
    ))])
    .await;
    let Some(server) = gateway(&primary.url, &backup.url).await else {
        return;
    };
    let (status, body) = send(&server).await;
    assert_eq!(status, 200, "{body}");
    let reply = &body["assistant_message"];
    assert_eq!(reply["content"], "from backup");
    assert_eq!(
        (reply["model"].as_str(), reply["provider"].as_str()),
        (Some("backup"), Some("spare")),
        "the message records who answered"
    );
    assert_eq!(reply["model_used"], "gpt-4o-mini");
    assert_eq!(primary.requests().len(), 3, "the first try and two retries");
    assert_eq!(backup.requests().len(), 1);
    // Every try sends the same prompt; each route under its own upstream model name.
    let bodies: Vec<Value> = primary
        .requests()
        .into_iter()
        .chain(backup.requests())
        .map(|(_, body)| body)
        .collect();
    let models: Vec<_> = bodies.iter().map(|b| b["model"].as_str()).collect();
    assert_eq!(
        models,
        [
            Some("gpt-4o"),
            Some("gpt-4o"),
            Some("gpt-4o"),
            Some("gpt-4o-mini")
        ]
    );
    for body in &bodies {
        assert_eq!(body["messages"], bodies[0]["messages"]);
    }
    assert_eq!(
        bodies[0]["messages"].as_array().map(Vec::len),
        Some(2),
        "system prompt and the question"
    );
    // Billed at the backup's prices: 10 × 150 + 2 × 600 nano-USD.
    let usage = server
        .state
        .store
        .usage_for_message(reply["id"].as_str().expect("id").parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(
        (usage[0].model.as_str(), usage[0].cost_nanousd),
        ("backup", 2_700)
    );
}

#[tokio::test]
async fn a_retry_hint_longer_than_allowed_moves_on_at_once() {
    let primary = FakeOpenAi::start(vec![rate_limited("60")]).await;
    let backup = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["ok"],
        1,
        1,
        Duration::ZERO,
    ))])
    .await;
    let Some(server) = gateway(&primary.url, &backup.url).await else {
        return;
    };
    let started = std::time::Instant::now();
    let (status, _) = send(&server).await;
    assert_eq!(status, 200);
    assert_eq!(
        primary.requests().len(),
        1,
        "no point waiting 60 s: straight to the fallback"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_server_error_or_an_empty_stream_is_retried_on_the_same_model() {
    // A 503; a body cut after the role chunk (the connection dies); one that just ends without `[DONE]`. In
    // the last two nothing was relayed, so a retry is as safe as after a connect error.
    let failures = [
        Script::error(503, vec![], json!({"error": {"message": "overloaded"}})),
        Script::stream(vec![Step::Chunk(role_chunk()), Step::Die]),
        Script::stream(vec![Step::Chunk(role_chunk())]),
    ];
    for failure in failures {
        let primary = FakeOpenAi::start(vec![
            failure,
            Script::stream(full_stream(&["second ", "try"], 5, 2, Duration::ZERO)),
        ])
        .await;
        let backup = FakeOpenAi::start(vec![Script::stream(full_stream(
            &["unused"],
            1,
            1,
            Duration::ZERO,
        ))])
        .await;
        let Some(server) = gateway(&primary.url, &backup.url).await else {
            return;
        };
        let (status, body) = send(&server).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["assistant_message"]["content"], "second try");
        assert_eq!(body["assistant_message"]["status"], "complete");
        assert_eq!(body["assistant_message"]["model"], "primary");
        assert_eq!(primary.requests().len(), 2);
        assert!(backup.requests().is_empty());
    }
}

#[tokio::test]
async fn a_failure_after_the_first_delta_never_switches() {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("partial")),
        Step::Delay(Duration::from_millis(50)),
        Step::Die,
    ];
    let primary = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let backup = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["unused"],
        1,
        1,
        Duration::ZERO,
    ))])
    .await;
    let Some(server) = gateway(&primary.url, &backup.url).await else {
        return;
    };
    let (status, body) = send(&server).await;
    assert_eq!(status, 502);
    assert_eq!(body["error"], "upstream_interrupted");
    assert!(
        backup.requests().is_empty(),
        "once a delta was relayed, no silent switch"
    );
    assert_eq!(primary.requests().len(), 1);
    let reply = server
        .state
        .store
        .get_message(
            "alice",
            body["details"]["message_id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("id"),
        )
        .await
        .expect("read")
        .expect("saved");
    assert_eq!(
        (
            reply.status.as_str(),
            reply.content.as_str(),
            reply.model.as_deref()
        ),
        ("failed", "partial", Some("primary"))
    );
}

#[tokio::test]
async fn non_retryable_errors_fail_at_once() {
    let primary = FakeOpenAi::start(vec![Script::error(
        401,
        vec![],
        json!({"error": {"message": "bad key"}}),
    )])
    .await;
    let backup = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["unused"],
        1,
        1,
        Duration::ZERO,
    ))])
    .await;
    let Some(server) = gateway(&primary.url, &backup.url).await else {
        return;
    };
    let (status, body) = send(&server).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("upstream_auth"))
    );
    assert_eq!(primary.requests().len(), 1);
    assert!(backup.requests().is_empty());
}

#[tokio::test]
async fn models_are_listed_and_providers_checked_in_the_background() {
    let primary = FakeOpenAi::start(vec![rate_limited("1")]).await;
    let Some(server) = gateway(&primary.url, "http://127.0.0.1:9").await else {
        return;
    };
    let models: Value = server
        .get("/api/v1/models", "alice")
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["default"], "primary");
    let primary_model = &models["models"]
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["id"] == "primary")
        .cloned()
        .expect("primary");
    assert_eq!(primary_model["provider"], "main");
    assert_eq!(primary_model["input_per_mtok"], 2.5);
    assert_eq!(primary_model["fallbacks"], json!(["backup"]));
    assert_eq!(primary_model["context_window"], 128000);
    assert_eq!(
        server
            .client
            .get(format!("{}/api/v1/models", server.url))
            .send()
            .await
            .expect("anon")
            .status(),
        401
    );

    // The first background check runs at startup; /health only reads its cached result.
    let mut health = Value::Null;
    for _ in 0..100 {
        health = server
            .client
            .get(format!("{}/health", server.url))
            .send()
            .await
            .expect("health")
            .json()
            .await
            .expect("json");
        if !health["providers"]["spare"]["ok"].is_null()
            && !health["providers"]["main"]["ok"].is_null()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(health["providers"]["main"]["ok"], true, "{health}");
    assert_eq!(
        health["providers"]["spare"]["ok"], false,
        "nothing listens on port 9: {health}"
    );
    assert!(health["providers"]["main"]["checked_at"].is_string());
    let requests_before = primary.requests().len();
    server
        .client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .expect("health");
    assert_eq!(
        primary.requests().len(),
        requests_before,
        "a health request makes no upstream call"
    );
}

#[tokio::test]
async fn first_token_and_idle_timeouts_are_504() {
    let silent = FakeOpenAi::start(vec![Script::stream(vec![Step::Gate])]).await;
    let stalls = FakeOpenAi::start(vec![Script::stream(vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("so far")),
        Step::Gate,
    ])])
    .await;
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let toml = format!(
        "[database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{}\"\n[generation]\nretry_attempts = 0\n\
         [providers.silent]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key = \"k\"\nfirst_token_timeout_ms = 300\n\
         [providers.stalls]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key = \"k\"\nidle_timeout_ms = 300\n\
         [models.silent]\nprovider = \"silent\"\nmodel = \"m\"\n[models.stalls]\nprovider = \"stalls\"\nmodel = \"m\"\n\
         [defaults]\nmodel = \"silent\"\n[titles]\nenabled = false\n",
        db.url,
        common::SECRET,
        silent.url,
        stalls.url
    );
    let server = TestServer::start_with(Config::from_toml(&toml).expect("config"), db).await;
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    for (model, partial) in [("silent", ""), ("stalls", "so far")] {
        let response = server
            .post(&path, "alice", json!({ "content": "hi", "model": model }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 504, "{model}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "upstream_timeout");
        let id = body["details"]["message_id"]
            .as_str()
            .expect("id")
            .parse()
            .expect("id");
        let reply = server
            .state
            .store
            .get_message("alice", id)
            .await
            .expect("read")
            .expect("saved");
        assert_eq!(
            (reply.status.as_str(), reply.content.as_str()),
            ("failed", partial)
        );
    }
}

fn overloaded(status: u16, retry_after: &'static str) -> Script {
    Script::error(
        status,
        vec![("retry-after", retry_after)],
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    )
}

#[tokio::test]
async fn retry_after_is_honoured_on_503_and_529_too() {
    for status in [503, 529] {
        let primary = FakeOpenAi::start(vec![
            overloaded(status, "1"),
            Script::stream(full_stream(&["waited"], 3, 1, Duration::ZERO)),
        ])
        .await;
        let backup = FakeOpenAi::start(vec![overloaded(503, "60")]).await;
        let Some(server) = gateway(&primary.url, &backup.url).await else {
            return;
        };
        let started = std::time::Instant::now();
        let (code, body) = send(&server).await;
        assert_eq!(code, 200, "{status}: {body}");
        assert_eq!(body["assistant_message"]["content"], "waited");
        assert_eq!(primary.requests().len(), 2, "{status}: retried once");
        // The provider asked for a second; the backoff alone would have waited ~10 ms.
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "{status}: retried after {:?}",
            started.elapsed()
        );
        assert!(backup.requests().is_empty());
    }
}

#[tokio::test]
async fn a_refusal_before_the_first_token_bills_nothing_but_is_recorded_once() {
    for (primary_script, backup_script) in [
        (rate_limited("0.01"), rate_limited("0.01")),
        (overloaded(503, "0"), overloaded(529, "0")),
        (
            Script::error(400, vec![], json!({"error": {"message": "bad request"}})),
            Script::error(400, vec![], json!({"error": {"message": "bad request"}})),
        ),
    ] {
        let primary = FakeOpenAi::start(vec![primary_script]).await;
        let backup = FakeOpenAi::start(vec![backup_script]).await;
        let Some(server) = gateway(&primary.url, &backup.url).await else {
            return;
        };
        let (status, body) = send(&server).await;
        assert!(status >= 400, "{status}: {body}");
        let message_id = body["details"]["message_id"]
            .as_str()
            .expect("the failed reply's id")
            .parse()
            .expect("id");
        let usage = server
            .state
            .store
            .usage_for_message(message_id)
            .await
            .expect("usage");
        assert_eq!(usage.len(), 1, "exactly one usage record: {body}");
        let record = &usage[0];
        assert_eq!(
            (
                record.prompt_tokens,
                record.completion_tokens,
                record.cost_nanousd,
                record.estimated
            ),
            (0, 0, 0, false),
            "the provider processed nothing: {body}"
        );
        let summary = server.get_json("/api/v1/usage/summary", "alice").await;
        assert_eq!(summary["total_tokens"], 0, "{summary}");
    }
}

/// `POST /v1/chat/completions` with `stream: true` to the `primary` model.
async fn streamed_completion(server: &TestServer) -> reqwest::Response {
    server
        .post(
            "/v1/chat/completions",
            "alice",
            json!({"model": "primary", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .expect("send")
}

#[tokio::test]
async fn a_streamed_completion_that_fails_before_its_first_token_answers_with_the_status() {
    let primary = FakeOpenAi::start(vec![rate_limited("60")]).await;
    let backup = FakeOpenAi::start(vec![rate_limited("60")]).await;
    let Some(server) = gateway(&primary.url, &backup.url).await else {
        return;
    };
    // The OpenAI endpoint: 429 with Retry-After before any SSE, in OpenAI's error shape, so the SDK retries.
    let response = streamed_completion(&server).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
    // A stream that succeeds still streams.
    let ok = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["fine"],
        1,
        1,
        Duration::ZERO,
    ))])
    .await;
    let Some(server_ok) = gateway(&ok.url, &ok.url).await else {
        return;
    };
    let response = streamed_completion(&server_ok).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    assert!(
        text.contains("\"fine\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        text.contains("\"model\":\"gpt-4o\""),
        "the alias's own model answered: {text}"
    );
    // The alias's model refused, its fallback answered: the chunks name the fallback's model.
    let Some(server_fallback) = gateway(&primary.url, &ok.url).await else {
        return;
    };
    let response = streamed_completion(&server_fallback).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-chatgate-model"], "primary");
    let text = response.text().await.expect("body");
    assert!(
        text.contains("\"model\":\"gpt-4o-mini\"") && !text.contains("\"model\":\"gpt-4o\""),
        "{text}"
    );

    // The native SSE stream has no header to carry the hint: it is in the error event's details.
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "hi" }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let events: Vec<_> = common::sse_events(response).collect().await;
    let error = events.last().expect("events");
    assert_eq!(error.event, "error");
    assert_eq!(
        error.data["details"]["retry_after_secs"], 60,
        "{:?}",
        error.data
    );
}
