//! JavaScript clients against a running chatgate: the Vercel AI SDK (`streamText`/`generateText` through
//! `createOpenAI({baseURL}).chat(model)`, and `useChat`'s transport on `?format=ai-sdk`), and a headless browser
//! driving the web chat UI and the usage dashboard. The Node packages live in `tests/js` (`npm ci` there, as
//! `.ci/run` does); the browser is Debian's chromium. Each test says SKIPPED when what it needs is missing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Backend, FakeOpenAi, Script, TestServer, full_stream};
use serde_json::Value;

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js")
}

/// Node and the packages of `tests/js`, or why not.
fn node_ready(package: &str) -> Result<(), String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Err("node is not installed".into());
    }
    if !js_dir().join("node_modules").join(package).exists() {
        return Err(format!(
            "the npm package {package} is not installed (npm ci --prefix tests/js)"
        ));
    }
    Ok(())
}

/// Runs `node tests/js/<script>` with `env`; returns its stdout parsed as JSON, failing with its output.
async fn run_node(script: &str, env: Vec<(&'static str, String)>) -> Value {
    let path = js_dir().join(script);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .arg(path)
            .envs(env)
            .output()
    })
    .await
    .expect("join")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "node printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test]
async fn the_vercel_ai_sdk_works_unmodified() {
    if let Err(why) = node_ready("ai") {
        common::skipped(&format!("the Vercel AI SDK test: {why}"));
        return;
    }
    let delay = Duration::from_millis(2);
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Hel", "lo", " AI SDK"], 9, 3, delay)),
        Script::stream(full_stream(&["Again", "!"], 11, 2, delay)),
        Script::stream(full_stream(&["Chat", "ting"], 13, 2, delay)),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let seen = run_node(
        "ai_sdk.mjs",
        vec![
            ("CHATGATE_URL", server.url.clone()),
            ("CHATGATE_TOKEN", server.token("alice")),
            ("CHATGATE_MODEL", "gpt".into()),
            ("CHATGATE_CONVERSATION", conversation.clone()),
        ],
    )
    .await;

    // streamText: the deltas as the upstream sent them, and the upstream's usage.
    assert_eq!(seen["stream"]["text"], "Hello AI SDK");
    assert_eq!(
        seen["stream"]["chunks"].as_array().map(Vec::len),
        Some(3),
        "{seen}"
    );
    assert_eq!(seen["stream"]["usage"]["inputTokens"], 9);
    assert_eq!(seen["stream"]["usage"]["outputTokens"], 3);
    // generateText: the whole reply and usage.
    assert_eq!(seen["generate"]["text"], "Again!");
    assert_eq!(seen["generate"]["finishReason"], "stop");
    assert_eq!(seen["generate"]["usage"]["totalTokens"], 13);

    // useChat's transport: one assistant message built from the UI message stream, with our usage metadata.
    let message = &seen["useChat"]["message"];
    assert_eq!(message["role"], "assistant");
    let texts: Vec<&Value> = message["parts"]
        .as_array()
        .expect("parts")
        .iter()
        .filter(|p| p["type"] == "text")
        .collect();
    assert_eq!(texts.len(), 1, "{message}");
    assert_eq!(texts[0]["text"], "Chatting");
    assert_eq!(texts[0]["state"], "done");
    assert!(seen["useChat"]["updates"].as_u64().unwrap_or(0) >= 3);
    let metadata = &message["metadata"];
    assert_eq!(metadata["usage"]["prompt_tokens"], 13);
    assert_eq!(metadata["usage"]["completion_tokens"], 2);
    assert_eq!(metadata["conversation_id"], conversation.as_str());
    assert_eq!(metadata["finish_reason"], "stop");
    // The message id is the saved reply's, and the exchange is in the conversation's history.
    let history = server.history("alice", &conversation).await;
    let reply = history
        .iter()
        .find(|m| m["role"] == "assistant")
        .expect("saved reply");
    assert_eq!(message["id"], reply["id"]);
    assert_eq!(reply["content"], "Chatting");
    assert!(
        history
            .iter()
            .any(|m| m["role"] == "user" && m["content"] == "Hello from useChat")
    );
    // Usage for all three, per user.
    let usage: Value = server
        .get("/api/v1/usage", "alice")
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(usage["totals"]["requests"], 3, "{usage}");
}
