//! Conversation titles: written in the background after the first exchange without delaying the reply, on
//! demand by `POST /api/v1/conversations/{id}/title`, billed as usage, never over a title the user set.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use common::{Backend, FakeOpenAi, Script, Step, TestServer, full_stream};
use serde_json::{Value, json};

const TITLES_ON: &str = "[titles]\nenabled = true\n";

async fn conversation_title(server: &TestServer, conversation: &str) -> Value {
    let body: Value = server
        .get_json(&format!("/api/v1/conversations/{conversation}"), "alice")
        .await;
    body["title"].clone()
}

/// Polls until the conversation has a title (or 5 s pass).
async fn wait_for_title(server: &TestServer, conversation: &str) -> Value {
    for _ in 0..100 {
        let title = conversation_title(server, conversation).await;
        if !title.is_null() {
            return title;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Value::Null
}

backend_tests!(
    first_exchange_is_titled_in_the_background,
    a_title_never_overwrites_the_users_and_failures_leave_none,
    shutdown_waits_for_a_title_and_its_usage_record,
);

async fn first_exchange_is_titled_in_the_background(backend: Backend) {
    let delay = Duration::from_millis(1);
    let mut title = full_stream(&["\"Weekend ", "hiking plans.\""], 40, 5, delay);
    // The title request waits at this gate: the reply must be complete without it.
    title.insert(0, Step::Gate);
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Try ", "the ridge trail"], 12, 4, delay)),
        Script::stream(title),
        Script::stream(full_stream(&["Sure"], 20, 1, delay)),
        Script::stream(full_stream(&["Hiking ", "the ridge"], 30, 3, delay)),
    ])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), TITLES_ON).await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation,
            "alice",
            json!({ "content": "Where should I hike this weekend?" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["assistant_message"]["content"], "Try the ridge trail");
    // The reply came back while the title request was still held upstream.
    assert!(conversation_title(&server, &conversation).await.is_null());
    upstream.release();
    assert_eq!(
        wait_for_title(&server, &conversation).await,
        "Weekend hiking plans"
    );

    // What the title model was asked: instructions, then the exchange, with the configured cap.
    let requests = upstream.requests();
    let (_, asked) = &requests[1];
    assert_eq!(asked["max_tokens"], 24);
    assert_eq!(asked["messages"][0]["role"], "system");
    let prompt = asked["messages"][1]["content"].as_str().expect("prompt");
    assert!(
        prompt.contains("Where should I hike this weekend?"),
        "{prompt}"
    );
    assert!(prompt.contains("Try the ridge trail"), "{prompt}");

    // A second message is not a first exchange: no new title request.
    let response = server
        .send_message(&conversation, "alice", json!({ "content": "And Sunday?" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.requests().len(), 3);

    // On demand: a new title replaces the old one, from the first exchange.
    let response = server
        .post(
            &format!("/api/v1/conversations/{conversation}/title"),
            "alice",
            json!({}),
        )
        .send()
        .await
        .expect("retitle");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["title"], "Hiking the ridge");
    let (_, asked) = upstream.requests().pop().expect("request");
    assert!(
        asked["messages"][1]["content"]
            .as_str()
            .is_some_and(|p| p.contains("Where should I hike") && !p.contains("And Sunday?"))
    );

    // Titles are billed: two replies and two titles, with the upstream's counts.
    let usage: Value = server.get_json("/api/v1/usage", "alice").await;
    assert_eq!(usage["totals"]["requests"], 4, "{usage}");
    assert_eq!(usage["totals"]["prompt_tokens"], 12 + 40 + 20 + 30);
}

async fn a_title_never_overwrites_the_users_and_failures_leave_none(backend: Backend) {
    let delay = Duration::from_millis(1);
    let mut title = full_stream(&["Model title"], 10, 2, delay);
    title.insert(0, Step::Gate);
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Hi"], 5, 1, delay)),
        Script::stream(title),
        Script::stream(full_stream(&["Hello"], 5, 1, delay)),
        Script::error(
            500,
            vec![],
            json!({ "error": { "message": "boom", "type": "server_error" } }),
        ),
    ])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), TITLES_ON).await else {
        return;
    };
    // The user names the conversation while the model is writing a title: the user's name stays.
    let named = server.conversation("alice").await;
    let response = server
        .send_message(&named, "alice", json!({ "content": "Hi" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let response = server
        .patch(
            &format!("/api/v1/conversations/{named}"),
            "alice",
            json!({ "title": "Mine" }),
        )
        .send()
        .await
        .expect("patch");
    assert_eq!(response.status(), 200);
    upstream.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests().len(), 2, "the title was requested");
    assert_eq!(conversation_title(&server, &named).await, "Mine");

    // The title model fails: the reply is saved all the same and the conversation stays untitled.
    let failing = server.conversation("alice").await;
    let response = server
        .send_message(&failing, "alice", json!({ "content": "Hello?" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["assistant_message"]["status"], "complete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.requests().len(), 4);
    assert!(conversation_title(&server, &failing).await.is_null());

    // On demand: before any reply is 409; another user's conversation is 404.
    let empty = server.conversation("alice").await;
    let response = server
        .post(
            &format!("/api/v1/conversations/{empty}/title"),
            "alice",
            json!({}),
        )
        .send()
        .await
        .expect("retitle");
    assert_eq!(response.status(), 409);
    let response = server
        .post(
            &format!("/api/v1/conversations/{named}/title"),
            "mallory",
            json!({}),
        )
        .send()
        .await
        .expect("retitle");
    assert_eq!(response.status(), 404);
    assert_eq!(conversation_title(&server, &named).await, "Mine");
}

async fn shutdown_waits_for_a_title_and_its_usage_record(backend: Backend) {
    let delay = Duration::from_millis(1);
    let mut title = full_stream(&["Ridge trail"], 40, 5, delay);
    // The title request is held upstream until after shutdown began.
    title.insert(0, Step::Gate);
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Try ", "the ridge trail"], 12, 4, delay)),
        Script::stream(title),
    ])
    .await;
    let Some(mut server) = TestServer::start(backend, Some(&upstream.url), TITLES_ON).await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation,
            "alice",
            json!({ "content": "Where to hike?" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let stopped = server.begin_shutdown();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopped.is_finished(), "shutdown waits for the title");
    upstream.release();
    stopped.await.expect("join").expect("serve");
    // Nothing is read after a pause: the title and its usage were written before `serve` returned.
    let summary = server
        .state
        .store
        .usage_summary("alice")
        .await
        .expect("usage");
    assert_eq!(
        summary.total_tokens,
        12 + 4 + 40 + 5,
        "the reply and the title are billed"
    );
    let titled = server
        .state
        .store
        .get_conversation("alice", conversation.parse().expect("id"))
        .await
        .expect("read")
        .expect("conversation");
    assert_eq!(titled.title.as_deref(), Some("Ridge trail"));
}
