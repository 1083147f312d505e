//! chatgate's provider adapters against LLMock (`pip install llmock==0.2.2`, as `.ci/run` does), a third-party
//! chaos server that speaks OpenAI's, Anthropic's and Gemini's HTTP, injects their real failures (429 and 503
//! with `Retry-After`, Anthropic's 529, dropped and truncated streams, client errors) and grades the client from
//! its request journal: retried too early, retried what cannot succeed, accepted a truncated stream, gave up.
//! chatgate is that client here; the verdict must have no error. Without `llmock` the test says SKIPPED.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::{Duration, Instant};

use chatgate::config::Config;
use common::{Backend, ChildServer, TestDb, TestServer};
use serde_json::{Value, json};

/// An LLMock server on a free port, stopped on drop.
struct Llmock(ChildServer);

impl Llmock {
    async fn start() -> Option<Self> {
        if !ChildServer::installed("llmock") {
            common::skipped("LLMock tests: llmock is not installed (pip install llmock==0.2.2)");
            return None;
        }
        let args = ["serve", "--host", "127.0.0.1", "--port", "{port}"];
        let style = ["--response-style", "hello", "--tool-mode", "off"];
        Some(Self(
            ChildServer::start("llmock", &[&args[..], &style[..]].concat(), "/health").await,
        ))
    }

    /// Queues behaviours (LLMock's scenario API: `POST /_llmock/scenario`).
    async fn scenario(&self, behaviors: Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/_llmock/scenario", self.0.url))
            .json(&json!({ "behaviors": behaviors }))
            .send()
            .await
            .expect("scenario");
        assert!(
            response.status().is_success(),
            "{}",
            response.text().await.unwrap_or_default()
        );
    }

    async fn verdict(&self) -> (Value, String) {
        let url = format!("{}/_llmock/verdict", self.0.url);
        let json = reqwest::get(&url)
            .await
            .expect("verdict")
            .json()
            .await
            .expect("json");
        let text = reqwest::get(format!("{url}?format=text"))
            .await
            .expect("verdict")
            .text()
            .await
            .expect("text");
        (json, text)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llmock_finds_no_resilience_error_in_chatgate() {
    let Some(llmock) = Llmock::start().await else {
        return;
    };
    let Some(db) = TestDb::new(Backend::Sqlite).await else {
        return;
    };
    let url = &llmock.0.url;
    // No background provider checks: their `GET /v1/models` would race the message for the failures queued
    // below (LLMock hands a queued failure to the first request that matches) and take one of them.
    let toml = format!(
        "[server]\nprovider_check_secs = 0\n\
         [database]\nurl = \"{}\"\n[auth]\njwt_secret = \"{}\"\n\
         [generation]\nretry_attempts = 2\nretry_base_ms = 200\nretry_max_ms = 5000\n\
         [providers.openai]\nkind = \"openai\"\nbase_url = \"{url}/v1\"\napi_key = \"k\"\n\
         [providers.anthropic]\nkind = \"anthropic\"\nbase_url = \"{url}/anthropic/v1\"\napi_key = \"k\"\n\
         [providers.gemini]\nkind = \"gemini\"\nbase_url = \"{url}/gemini/v1beta\"\napi_key = \"k\"\n\
         [models.gpt]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n\
         [models.claude]\nprovider = \"anthropic\"\nmodel = \"claude-sonnet-4-5\"\n\
         [models.gemini]\nprovider = \"gemini\"\nmodel = \"gemini-2.5-flash\"\n\
         [defaults]\nmodel = \"gpt\"\n[titles]\nenabled = false\n",
        db.url,
        common::SECRET
    );
    let server = TestServer::start_with(Config::from_toml(&toml).expect("config"), db).await;

    // (model, LLMock behaviours queued before the message, the reply's expected status, least time taken).
    let one_second = Duration::from_secs(1);
    let cases: Vec<(&str, Value, &str, Duration)> = vec![
        (
            "gpt",
            json!([{"type": "fail", "status": 429, "retry_after": 1, "times": 2, "match": {"provider": "openai"}}]),
            "complete",
            2 * one_second,
        ),
        (
            "gpt",
            json!([{"type": "fail", "status": 503, "retry_after": 1, "times": 1, "match": {"provider": "openai"}}]),
            "complete",
            one_second,
        ),
        (
            "claude",
            json!([{"type": "fail", "status": 529, "retry_after": 1, "times": 1, "match": {"provider": "anthropic"}}]),
            "complete",
            one_second,
        ),
        (
            "gemini",
            json!([{"type": "fail", "status": 429, "retry_after": 1, "times": 1, "match": {"provider": "gemini"}}]),
            "complete",
            one_second,
        ),
        (
            "gemini",
            json!([{"type": "fail", "status": 500, "times": 1, "match": {"provider": "gemini"}}]),
            "complete",
            Duration::ZERO,
        ),
        (
            "gpt",
            json!([{"type": "stream_fault", "kind": "disconnect", "after_chunks": 0, "times": 1, "match": {"provider": "openai"}}]),
            "complete",
            Duration::ZERO,
        ),
        (
            "claude",
            json!([{"type": "stream_fault", "kind": "truncate", "after_chunks": 0, "times": 1, "match": {"provider": "anthropic"}}]),
            "complete",
            Duration::ZERO,
        ),
        (
            "gpt",
            json!([{"type": "fail", "status": 400, "times": 1, "match": {"provider": "openai"}}]),
            "failed",
            Duration::ZERO,
        ),
    ];
    for (i, (model, behaviors, status, least)) in cases.into_iter().enumerate() {
        llmock.scenario(behaviors.clone()).await;
        let conversation_id = server.conversation("alice").await;
        let started = Instant::now();
        let response = server
            .send_message(
                &conversation_id,
                "alice",
                // A different prompt per case: LLMock groups attempts into calls by their body.
                json!({ "content": format!("case {i}: {behaviors}"), "model": model }),
            )
            .send()
            .await
            .expect("send");
        let took = started.elapsed();
        let body: Value = response.json().await.expect("json");
        let reply = server.wait_for_reply("alice", &conversation_id).await;
        assert_eq!(reply["status"], status, "case {i} {behaviors}: {body}");
        if status == "complete" {
            assert!(
                reply["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("Hello!")),
                "case {i}: {reply}"
            );
        }
        assert!(
            took >= least,
            "case {i} {behaviors}: done in {took:?}, before the provider's Retry-After"
        );
    }

    let (verdict, report) = llmock.verdict().await;
    eprintln!("{report}");
    assert_eq!(verdict["passed"], true, "{report}");
    assert_eq!(verdict["errors"], 0, "{report}");
    // The retryable faults were retried, not given up on.
    let gave_up: Vec<&Value> = verdict["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["code"] == "gave_up")
        .collect();
    assert!(gave_up.is_empty(), "{report}");
    assert!(
        verdict["faults_injected"].as_u64().unwrap_or(0) >= 8,
        "{report}"
    );
}
