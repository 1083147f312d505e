//! Conversations, personas, health, HTTP basics, graceful shutdown and the CLI, over a real server.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use chatgate::config::Config;
use common::{Backend, TestServer};
use serde_json::{Value, json};

backend_tests!(
    conversations_crud_list_and_reuse,
    personas_public_reads_and_admin_writes,
    shutdown_lets_running_generations_finish_and_saves_them,
    shutdown_past_the_grace_period_saves_partial_text,
);

/// The assistant message saved in a conversation, read straight from the store (the server has stopped).
async fn saved_reply(
    store: &dyn chatgate::store::Store,
    conversation_id: &str,
) -> Option<chatgate::store::Message> {
    let id = conversation_id.parse().expect("id");
    let messages = store
        .list_messages(id, chatgate::store::HistoryPage::Offset(0), 10, true, false)
        .await
        .expect("history");
    messages
        .into_iter()
        .find(|m| m.role.as_str() == "assistant")
}

const SLOW_MODEL: &str = "[providers.slow]\nkind = \"mock\"\ndelay_ms = 25\n[models.slow]\nprovider = \"slow\"\nmodel = \"mock-1\"\n";

async fn conversations_crud_list_and_reuse(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let persona_id = server.persona_id().await;

    let response = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": persona_id, "title": "First" }),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let first: Value = response.json().await.expect("json");
    let response = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": persona_id, "reuse_existing": true }),
        )
        .send()
        .await
        .expect("reuse");
    assert_eq!(
        response.status(),
        200,
        "reuse_existing answers the existing one"
    );
    assert_eq!(
        response.json::<Value>().await.expect("json")["id"],
        first["id"]
    );
    let second: Value = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": persona_id }),
        )
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    let third: Value = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": persona_id }),
        )
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");

    // A message in the first one moves it to the top, with a preview.
    let first_id = first["id"].as_str().expect("id");
    let sent = server
        .send_message(first_id, "alice", json!({ "content": "hello there" }))
        .send()
        .await
        .expect("send");
    assert_eq!(sent.status(), 200);
    let page: Value = server
        .get_json("/api/v1/conversations?limit=2", "alice")
        .await;
    let ids: Vec<_> = page["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [first["id"].clone(), third["id"].clone()]);
    assert_eq!(
        page["conversations"][0]["last_message"]["role"],
        "assistant"
    );
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let page: Value = server
        .get(
            &format!("/api/v1/conversations?limit=2&cursor={cursor}"),
            "alice",
        )
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(page["conversations"].as_array().expect("list").len(), 1);
    assert_eq!(page["conversations"][0]["id"], second["id"]);
    assert_eq!(page["next_cursor"], Value::Null);
    let bad = server
        .get("/api/v1/conversations?cursor=nonsense", "alice")
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), 400);
    let bad = server
        .get("/api/v1/conversations?limit=0", "alice")
        .send()
        .await
        .expect("list");
    assert_eq!(bad.status(), 400);

    // PATCH title and archived; archived ones can be filtered.
    let path = format!(
        "/api/v1/conversations/{}",
        second["id"].as_str().expect("id")
    );
    let patched: Value = server
        .patch(
            &path,
            "alice",
            json!({ "title": "Renamed", "archived": true }),
        )
        .send()
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (patched["title"].as_str(), patched["archived"].as_bool()),
        (Some("Renamed"), Some(true))
    );
    let too_long = server
        .patch(&path, "alice", json!({ "title": "x".repeat(201) }))
        .send()
        .await
        .expect("patch");
    assert_eq!(too_long.status(), 400);
    let archived: Value = server
        .get_json("/api/v1/conversations?archived=true", "alice")
        .await;
    assert_eq!(archived["conversations"].as_array().expect("list").len(), 1);

    // DELETE takes the messages with it.
    let first_path = format!("/api/v1/conversations/{first_id}");
    let message_id = server.history("alice", first_id).await[0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        server
            .delete(&first_path, "alice")
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    assert_eq!(
        server
            .get(&first_path, "alice")
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    assert_eq!(
        server
            .get(&format!("{first_path}/messages"), "alice")
            .send()
            .await
            .expect("history")
            .status(),
        404
    );
    assert_eq!(
        server
            .delete(&format!("/api/v1/messages/{message_id}"), "alice")
            .send()
            .await
            .expect("delete")
            .status(),
        404
    );
    assert_eq!(
        server
            .delete(&first_path, "alice")
            .send()
            .await
            .expect("delete again")
            .status(),
        404
    );

    // An unknown persona is a 404.
    let response = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": uuid::Uuid::now_v7() }),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 404);
}

async fn personas_public_reads_and_admin_writes(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let url = |path: &str| format!("{}{path}", server.url);
    let listed: Value = server
        .client
        .get(url("/api/v1/personas"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["personas"].as_array().expect("list").len(),
        7,
        "the defaults, without a token"
    );
    let family: Value = server
        .client
        .get(url("/api/v1/personas?category=family"))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert!(
        family["personas"]
            .as_array()
            .expect("list")
            .iter()
            .all(|p| p["category"] == "family")
    );

    let new = json!({ "slug": "coach-kim", "display_name": "Kim", "relationship": "colleague", "system_prompt": "You coach.",
                      "personality_traits": ["direct"], "category": "work" });
    let response = server
        .client
        .post(url("/api/v1/personas"))
        .json(&new)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 401);
    let response = server
        .post("/api/v1/personas", "alice", new.clone())
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 403);
    let admin = server.admin_token("root");
    let response = server
        .client
        .post(url("/api/v1/personas"))
        .bearer_auth(&admin)
        .json(&new)
        .send()
        .await
        .expect("create");
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.expect("json");
    let response = server
        .client
        .post(url("/api/v1/personas"))
        .bearer_auth(&admin)
        .json(&new)
        .send()
        .await
        .expect("duplicate");
    assert_eq!(response.status(), 409);
    let mut bad = new.clone();
    bad["slug"] = json!("other");
    bad["relationship"] = json!("nemesis");
    let response = server
        .client
        .post(url("/api/v1/personas"))
        .bearer_auth(&admin)
        .json(&bad)
        .send()
        .await
        .expect("invalid");
    assert_eq!(response.status(), 400);
    assert!(
        response
            .text()
            .await
            .expect("body")
            .contains("relationship")
    );

    let path = url(&format!(
        "/api/v1/personas/{}",
        created["id"].as_str().expect("id")
    ));
    let patched: Value = server
        .client
        .patch(&path)
        .bearer_auth(&admin)
        .json(&json!({ "display_name": "Coach Kim", "is_active": false }))
        .send()
        .await
        .expect("patch")
        .json()
        .await
        .expect("json");
    assert_eq!(patched["display_name"], "Coach Kim");
    assert_eq!(
        patched["system_prompt"], "You coach.",
        "fields not in the patch are kept"
    );
    assert_eq!(
        server.client.get(&path).send().await.expect("get").status(),
        404,
        "inactive personas are hidden from the public"
    );
    assert_eq!(
        server
            .client
            .get(&path)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );

    // In use: 409; after its conversation is gone: 204.
    server
        .client
        .patch(&path)
        .bearer_auth(&admin)
        .json(&json!({ "is_active": true }))
        .send()
        .await
        .expect("patch");
    let conversation: Value = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": created["id"] }),
        )
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("json");
    assert_eq!(
        server
            .client
            .delete(&path)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("delete")
            .status(),
        409
    );
    server
        .delete(
            &format!(
                "/api/v1/conversations/{}",
                conversation["id"].as_str().expect("id")
            ),
            "alice",
        )
        .send()
        .await
        .expect("delete");
    assert_eq!(
        server
            .client
            .delete(&path)
            .bearer_auth(&admin)
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
}

async fn shutdown_lets_running_generations_finish_and_saves_them(backend: Backend) {
    let Some(mut server) = TestServer::start(backend, None, SLOW_MODEL).await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation_id,
            "alice",
            json!({ "content": "take your time", "model": "slow" }),
        )
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let store = server.state.store.clone();
    let stopped = server.begin_shutdown();
    // New generations are refused meanwhile (the listener is closed, so the request fails or gets 503).
    stopped.await.expect("join").expect("serve");
    let reply = saved_reply(&*store, &conversation_id)
        .await
        .expect("the reply was saved before the server stopped");
    assert_eq!(reply.status.as_str(), "complete");
    assert!(
        reply.content.ends_with("talk to a real model."),
        "{}",
        reply.content
    );
}

async fn shutdown_past_the_grace_period_saves_partial_text(backend: Backend) {
    let extra = format!("{SLOW_MODEL}[server]\nshutdown_grace_secs = 0\n");
    let Some(mut server) = TestServer::start(backend, None, &extra).await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(
            &conversation_id,
            "alice",
            json!({ "content": "long one", "model": "slow" }),
        )
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    let mut events = common::sse_events(response);
    use futures::StreamExt;
    while events.next().await.expect("event").event != "delta" {}
    let store = server.state.store.clone();
    let stopped = server.begin_shutdown();
    // The open stream gets its final event.
    let mut last = None;
    while let Some(event) = events.next().await {
        last = Some(event);
    }
    let last = last.expect("a final event");
    assert_eq!(last.event, "done");
    assert_eq!(last.data["finish_reason"], "shutdown");
    stopped.await.expect("join").expect("serve");
    let reply = saved_reply(&*store, &conversation_id).await.expect("saved");
    assert_eq!(reply.status.as_str(), "interrupted");
    assert!(
        !reply.content.is_empty() && !reply.content.ends_with("real model."),
        "partial: {}",
        reply.content
    );
    assert_eq!(reply.content, last.data["message"]["content"]);
}

#[tokio::test]
async fn health_request_ids_cors_and_unknown_routes() {
    let extra = "[server]\ncors_origins = [\"https://app.example.com\"]\n";
    let Some(server) = TestServer::start(Backend::Sqlite, None, extra).await else {
        return;
    };
    let response = server
        .client
        .get(format!("{}/health", server.url))
        .send()
        .await
        .expect("health");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers().contains_key("x-request-id"),
        "a request id is made up"
    );
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"]["ok"], true);
    assert_eq!(body["database"]["backend"], "sqlite");
    assert!(body["providers"]["mock"].is_object());

    let response = server
        .client
        .get(format!("{}/health", server.url))
        .header("x-request-id", "req-42")
        .send()
        .await
        .expect("health");
    assert_eq!(
        response.headers()["x-request-id"],
        "req-42",
        "a given request id is echoed"
    );

    let preflight = server
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/conversations", server.url),
        )
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let other = server
        .client
        .get(format!("{}/health", server.url))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("get");
    assert!(!other.headers().contains_key("access-control-allow-origin"));

    let missing = server
        .get("/api/v1/nothing-here", "alice")
        .send()
        .await
        .expect("404");
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<Value>().await.expect("json")["error"],
        "not_found"
    );
    // Deny by default: a real route without a token is 401.
    let response = server
        .client
        .get(format!("{}/api/v1/conversations", server.url))
        .send()
        .await
        .expect("401");
    assert_eq!(response.status(), 401);
    // Only the stream endpoint (and the WebSocket upgrade) take ?access_token= (EventSource cannot set
    // headers); elsewhere a token in the URL is ignored, and the 401 says where it belongs.
    let token = server.token("alice");
    let response = server
        .client
        .get(format!(
            "{}/api/v1/conversations?access_token={token}",
            server.url
        ))
        .send()
        .await
        .expect("401");
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("Authorization header"),
        "{body}"
    );
    let unknown = uuid::Uuid::new_v4();
    let stream = format!("{}/api/v1/generations/{unknown}/stream", server.url);
    let response = server.client.get(&stream).send().await.expect("401");
    assert_eq!(response.status(), 401);
    let response = server
        .client
        .get(format!("{stream}?access_token={token}"))
        .send()
        .await
        .expect("204");
    assert_eq!(
        response.status(),
        204,
        "authenticated, and no such generation"
    );
}

#[test]
fn cli_token_prints_a_jwt_signed_with_the_configured_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = dir.path().join("config.toml");
    let toml = "[auth]\njwt_secret = \"cli-secret\"\n[providers.mock]\n[models.default]\nprovider = \"mock\"\nmodel = \"m\"\n";
    std::fs::write(&config_path, toml).expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args([
            "--config",
            config_path.to_str().expect("path"),
            "token",
            "--sub",
            "carol",
            "--admin",
            "--ttl",
            "2h",
        ])
        .env_remove("JWT_SECRET")
        .output()
        .expect("run chatgate token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    let token = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "only the token on stdout");
    let config = Config::from_toml(toml).expect("config");
    let user =
        futures::executor::block_on(chatgate::auth::Authenticator::new(&config.auth).verify(token))
            .expect("verifies");
    assert_eq!((user.user_id.as_str(), user.admin), ("carol", true));

    // A bad config names the key and exits non-zero.
    std::fs::write(
        &config_path,
        format!("{toml}[server]\nbind = \"nowhere\"\n"),
    )
    .expect("write config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args([
            "--config",
            config_path.to_str().expect("path"),
            "token",
            "--sub",
            "carol",
        ])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("server.bind"));
}

#[tokio::test]
async fn the_web_ui_is_public_and_dev_tokens_are_off_by_default() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    for (path, content_type) in [
        ("/", "text/html"),
        ("/usage", "text/html"),
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ] {
        let response = server
            .client
            .get(format!("{}{path}", server.url))
            .send()
            .await
            .expect("get");
        assert_eq!(response.status(), 200, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .is_ok_and(|v| v.starts_with(content_type)),
            "{path}"
        );
    }
    let missing = server
        .client
        .get(format!("{}/static/../Cargo.toml", server.url))
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status(), 404);
    // Off by default: the endpoint answers like a route that does not exist, and mints nothing.
    let response = server
        .client
        .post(format!("{}/api/v1/dev/token", server.url))
        .json(&json!({ "user_id": "mallory" }))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("json");
    assert!(body.get("token").is_none());
}

#[tokio::test]
async fn dev_tokens_when_enabled_authenticate_as_the_named_user() {
    let Some(server) =
        TestServer::start(Backend::Sqlite, None, "[server]\ndev_tokens = true\n").await
    else {
        return;
    };
    let url = format!("{}/api/v1/dev/token", server.url);
    let bad = server
        .client
        .post(&url)
        .json(&json!({ "user_id": "  " }))
        .send()
        .await
        .expect("post");
    assert_eq!(bad.status(), 400);
    let body: Value = server
        .client
        .post(&url)
        .json(&json!({ "user_id": "dev-alice" }))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    let token = body["token"].as_str().expect("token");
    let user = server.state.auth.verify(token).await.expect("valid token");
    assert_eq!(user.user_id, "dev-alice");
    assert!(!user.admin, "dev tokens never carry the admin role");
}

#[tokio::test]
async fn an_unknown_stream_format_is_refused_before_anything_is_written() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let response = server
        .post(
            &format!("/api/v1/conversations/{conversation}/messages?format=vercel"),
            "alice",
            json!({ "content": "hi" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["details"]["field"], "format");
    assert!(server.history("alice", &conversation).await.is_empty());
    // Checked before the generation is looked up: an unknown id with a bad format is still 400, not 204.
    let response = server
        .get(
            "/api/v1/generations/01a1fb7f-87c2-70c1-a40d-3f4eefb55b68/stream?format=vercel",
            "alice",
        )
        .send()
        .await
        .expect("stream");
    assert_eq!(response.status(), 400);
}

/// useChat's Regenerate button in a conversation with nothing in it yet: 409 saying so, nothing started.
#[tokio::test]
async fn regenerating_an_empty_conversation_is_a_conflict() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let response = server
        .post(
            &format!("/api/v1/conversations/{conversation}/messages?format=ai-sdk"),
            "alice",
            json!({ "id": conversation, "trigger": "regenerate-message", "messages": [] }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.expect("json");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no message")),
        "{body}"
    );
    // Another user's conversation: 404, as everywhere.
    let response = server
        .post(
            &format!("/api/v1/conversations/{conversation}/messages?format=ai-sdk"),
            "mallory",
            json!({ "id": conversation, "trigger": "regenerate-message", "messages": [] }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    assert!(server.history("alice", &conversation).await.is_empty());
    server.stop().await;
}

/// Reconnecting by conversation (`useChat`'s resume): 204 when nothing runs there, 404 for another user's.
#[tokio::test]
async fn a_conversation_with_nothing_running_has_no_stream() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation}/stream?format=ai-sdk");
    let mine = server.get(&path, "alice").send().await.expect("get");
    assert_eq!(mine.status(), 204);
    let theirs = server.get(&path, "mallory").send().await.expect("get");
    assert_eq!(theirs.status(), 404);
    server.stop().await;
}
