//! Crash safety with the real binary: SIGKILL mid-generation leaves an `interrupted` reply with its last
//! checkpoint; SIGTERM lets every in-flight generation finish and be saved.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::{Backend, TestDb};
use serde_json::{Value, json};

backend_tests!(
    sigkill_leaves_an_interrupted_reply_with_its_checkpoint,
    sigterm_saves_every_generation_in_flight
);

/// The mock's full reply to `content` (see `MockProvider::reply_to`).
fn full_reply(content: &str) -> String {
    format!(
        "Hello! I am chatgate's built-in mock model. You said: \"{content}\". Configure a provider API key to talk to a real model."
    )
}

struct Gateway {
    child: Child,
    url: String,
    config_path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn config(db_url: &str, port: u16) -> String {
        format!(
            "[server]\nbind = \"127.0.0.1:{port}\"\ninstance_id = \"crash-test\"\nshutdown_grace_secs = 30\n\
             [database]\nurl = \"{db_url}\"\n[auth]\njwt_secret = \"{}\"\n\
             [generation]\ncheckpoint_interval_ms = 50\n\
             [providers.mock]\ndelay_ms = 60\n[models.default]\nprovider = \"mock\"\nmodel = \"mock-1\"\n",
            common::SECRET
        )
    }

    async fn start(db_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, Self::config(db_url, port)).expect("config");
        let mut gateway = Self {
            child: Self::spawn(&config_path),
            url: format!("http://127.0.0.1:{port}"),
            config_path,
            _dir: dir,
        };
        gateway.wait_ready().await;
        gateway
    }

    fn spawn(config_path: &std::path::Path) -> Child {
        common::spawn_chatgate(config_path)
    }

    async fn restart(&mut self) {
        self.child = Self::spawn(&self.config_path);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        common::wait_until_healthy(&mut self.child, &self.url).await;
    }

    fn token(&self) -> String {
        let config = chatgate::config::Config::from_toml(
            &std::fs::read_to_string(&self.config_path).expect("config"),
        )
        .expect("valid");
        chatgate::auth::Authenticator::new(&config.auth)
            .mint("alice", false, Duration::from_secs(600))
            .expect("token")
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Value {
        let mut request = reqwest::Client::new()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.token());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.expect("json")
    }

    async fn conversation(&self) -> String {
        let personas = self
            .call(reqwest::Method::GET, "/api/v1/personas", None, &[])
            .await;
        let persona_id = personas["personas"][0]["id"].clone();
        let conversation = self
            .call(
                reqwest::Method::POST,
                "/api/v1/conversations",
                Some(json!({ "persona_id": persona_id })),
                &[],
            )
            .await;
        conversation["id"].as_str().expect("id").to_string()
    }

    async fn send_async(&self, conversation_id: &str, content: &str) -> String {
        let accepted = self
            .call(
                reqwest::Method::POST,
                &format!("/api/v1/conversations/{conversation_id}/messages"),
                Some(json!({ "content": content })),
                &[("prefer", "respond-async")],
            )
            .await;
        accepted["generation_id"].as_str().expect("id").to_string()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn sigkill_leaves_an_interrupted_reply_with_its_checkpoint(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let mut gateway = Gateway::start(&db.url).await;
    let conversation_id = gateway.conversation().await;
    let generation_id = gateway.send_async(&conversation_id, "remember me").await;
    // Let a few words stream and be checkpointed, then kill the process outright.
    let mut streamed = String::new();
    for _ in 0..100 {
        let status = gateway
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/generations/{generation_id}"),
                None,
                &[],
            )
            .await;
        streamed = status["text"].as_str().unwrap_or("").to_string();
        if streamed.split(' ').count() > 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tokio::time::sleep(Duration::from_millis(150)).await; // at least one checkpoint interval
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");

    gateway.restart().await;
    let history = gateway
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/conversations/{conversation_id}/messages?order=asc"),
            None,
            &[],
        )
        .await;
    let reply = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["role"] == "assistant")
        .cloned()
        .expect("the reply row survived");
    assert_eq!(reply["id"].as_str(), Some(generation_id.as_str()));
    assert_eq!(reply["status"], "interrupted", "{reply}");
    let content = reply["content"].as_str().expect("content");
    assert!(
        content.len() >= streamed.len() && !content.is_empty(),
        "the last checkpoint is kept: {content:?} vs {streamed:?}"
    );
    let full = full_reply("remember me");
    assert!(
        full.starts_with(content) && content.len() < full.len(),
        "a prefix of the reply: {content:?}"
    );
    // The generation endpoint agrees after the restart.
    let status = gateway
        .call(
            reqwest::Method::GET,
            &format!("/api/v1/generations/{generation_id}"),
            None,
            &[],
        )
        .await;
    assert_eq!(status["status"], "interrupted");
    // Billed exactly once, with estimates: the prompt as counted when it started, the text it got to.
    let store = db.store().await;
    let usage = store
        .usage_for_message(generation_id.parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(usage.len(), 1);
    assert!(usage[0].estimated);
    assert!(
        usage[0].prompt_tokens > 10,
        "the system prompt alone is more: {}",
        usage[0].prompt_tokens
    );
    assert!(usage[0].completion_tokens > 0);
    // A second restart finds nothing more to recover and bills nothing twice.
    gateway.child.kill().expect("SIGKILL");
    gateway.child.wait().expect("reaped");
    gateway.restart().await;
    assert_eq!(
        store
            .usage_for_message(generation_id.parse().expect("id"))
            .await
            .expect("usage")
            .len(),
        1
    );
}

async fn sigterm_saves_every_generation_in_flight(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let mut gateway = Gateway::start(&db.url).await;
    let conversation_id = gateway.conversation().await;
    let mut generation_ids = Vec::new();
    for i in 0..3 {
        generation_ids.push(
            gateway
                .send_async(&conversation_id, &format!("message {i}"))
                .await,
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = gateway.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(killed.success());
    let exit = tokio::task::spawn_blocking(move || {
        let status = gateway.child.wait().expect("wait");
        (gateway, status)
    });
    let (gateway, status) = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("exits in time")
        .expect("join");
    assert!(status.success(), "clean exit after SIGTERM: {status}");

    let store = db.store().await;
    for (i, id) in generation_ids.iter().enumerate() {
        let message = store
            .get_message("alice", id.parse().expect("id"))
            .await
            .expect("read")
            .expect("saved");
        assert_eq!(
            message.status.as_str(),
            "complete",
            "generation {i} finished during the grace period"
        );
        assert_eq!(message.content, full_reply(&format!("message {i}")));
        assert_eq!(
            store
                .usage_for_message(message.id)
                .await
                .expect("usage")
                .len(),
            1
        );
    }
    drop(gateway);
}
