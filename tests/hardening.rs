//! What attacks and faults found, kept out: text the database cannot store (user input refused naming the
//! field, provider output repaired and never lost, a property test of send → stream → persist on both
//! backends), JSON arrays where objects belong, a checkpoint batch with one bad row, and a burst of connections.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use chatgate::domain::{MessageStatus, MessageType, Role};
use chatgate::store::{Checkpoint, HistoryPage, NewMessage};
use common::{
    Backend, FakeOpenAi, Script, Step, TestServer, content_chunk, finish_chunk, role_chunk,
    sse_events, usage_chunk,
};
use futures::StreamExt;
use proptest::prelude::*;
use serde_json::{Value, json};

backend_tests!(
    text_the_database_cannot_store_is_refused_naming_the_field,
    a_provider_reply_with_nul_streams_and_is_saved_repaired,
    one_bad_row_never_fails_the_others_checkpoints,
);

async fn expect_400(response: reqwest::Response, error: &str, field: &str) {
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], error, "{body}");
    if !field.is_empty() {
        assert_eq!(body["details"]["field"], field, "{body}");
    }
}

async fn text_the_database_cannot_store_is_refused_naming_the_field(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    // In a message, a new conversation's title, a rename, a query parameter: 400 naming the field.
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "a\u{0}b" }))
        .send()
        .await
        .expect("send");
    expect_400(response, "validation_error", "content").await;
    let persona_id = server.persona_id().await;
    let response = server
        .post(
            "/api/v1/conversations",
            "alice",
            json!({ "persona_id": persona_id, "title": "\u{0}" }),
        )
        .send()
        .await
        .expect("create");
    expect_400(response, "validation_error", "title").await;
    let response = server
        .patch(
            &format!("/api/v1/conversations/{conversation_id}"),
            "alice",
            json!({ "title": "x\u{0}" }),
        )
        .send()
        .await
        .expect("rename");
    expect_400(response, "validation_error", "title").await;
    let response = server
        .get("/api/v1/personas?category=a%00b", "alice")
        .send()
        .await
        .expect("list");
    expect_400(response, "validation_error", "category").await;
    // Over the OpenAI endpoint too, with the path of the field.
    let response = server
        .post(
            "/v1/chat/completions",
            "alice",
            json!({"model": "mock", "messages": [{"role": "user", "content": "\u{0}"}]}),
        )
        .send()
        .await
        .expect("completion");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert!(body.to_string().contains("messages[0].content"), "{body}");

    // A JSON array (serde would read it as the struct's fields in order), or any other non-object.
    for body in ["[\"hi\"]", "[\"hi\", \"text\"]", "\"hi\"", "42", "null"] {
        let response = server
            .client
            .post(format!(
                "{}/api/v1/conversations/{conversation_id}/messages",
                server.url
            ))
            .bearer_auth(server.token("alice"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        expect_400(response, "invalid_json", "").await;
    }
    let response = server
        .client
        .post(format!("{}/api/v1/conversations", server.url))
        .bearer_auth(server.token("alice"))
        .header("content-type", "application/json")
        .body(format!("[\"{persona_id}\"]"))
        .send()
        .await
        .expect("create");
    expect_400(response, "invalid_json", "").await;

    // Nothing of the refused requests was kept; the escaped backslash-u text is ordinary text.
    assert!(server.history("alice", &conversation_id).await.is_empty());
    let response = server
        .send_message(
            &conversation_id,
            "alice",
            json!({ "content": "literally \\u0000" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let history = server.history("alice", &conversation_id).await;
    assert_eq!(history[0]["content"], "literally \\u0000");
    let conversations = server.get_json("/api/v1/conversations", "alice").await;
    assert_eq!(
        conversations["conversations"].as_array().map(Vec::len),
        Some(1),
        "{conversations}"
    );
}

/// A streamed reply from the fake OpenAI upstream, one chunk per piece (`Ok`: text; `Err`: a lone UTF-16
/// surrogate, as a provider that cut a character sends it).
fn reply_script(pieces: &[Result<String, u16>]) -> Script {
    let mut steps = vec![Step::Chunk(role_chunk())];
    for piece in pieces {
        steps.push(match piece {
            Ok(text) => Step::Chunk(content_chunk(text)),
            Err(unit) => Step::Raw(format!(
                "data: {}\n\n",
                content_chunk("@@")
                    .to_string()
                    .replace("@@", &format!("\\u{unit:04x}"))
            )),
        });
    }
    steps.extend([
        Step::Chunk(finish_chunk("stop")),
        Step::Chunk(usage_chunk(5, pieces.len() as u64, 0)),
        Step::Done,
    ]);
    Script::stream(steps)
}

/// What the client must see and the database keep for `pieces`.
fn expected_text(pieces: &[Result<String, u16>]) -> String {
    pieces
        .iter()
        .map(|piece| match piece {
            Ok(text) => text.replace('\0', "\u{fffd}"),
            Err(_) => "\u{fffd}".to_string(),
        })
        .collect()
}

/// Sends `content` over SSE; for an accepted message, the streamed text and the saved reply.
async fn send_and_stream(
    server: &TestServer,
    conversation_id: &str,
    content: &str,
) -> Result<(String, Value, Value), Value> {
    let response = server
        .send_message(conversation_id, "alice", json!({ "content": content }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    if response.status() != 200 {
        return Err(response.json().await.expect("json"));
    }
    let mut events = sse_events(response);
    let mut streamed = String::new();
    let mut user_message = Value::Null;
    while let Some(event) = events.next().await {
        match event.event.as_str() {
            "user_message" => user_message = event.data,
            "delta" => streamed.push_str(event.data["text"].as_str().expect("text")),
            "done" => return Ok((streamed, user_message, event.data["message"].clone())),
            "error" => panic!("the reply failed: {:?}", event.data),
            _ => {}
        }
    }
    panic!("the stream ended without done");
}

async fn a_provider_reply_with_nul_streams_and_is_saved_repaired(backend: Backend) {
    let pieces = vec![
        Ok("before".to_string()),
        Ok("\u{0}".to_string()),
        Ok("mid\u{0}dle".to_string()),
        Err(0xd83d),
        Ok("after".to_string()),
    ];
    let upstream = FakeOpenAi::start(vec![reply_script(&pieces)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let (streamed, _, done) = send_and_stream(&server, &conversation_id, "hi")
        .await
        .expect("accepted");
    assert_eq!(streamed, "before\u{fffd}mid\u{fffd}dle\u{fffd}after");
    assert_eq!(done["content"], streamed);
    assert_eq!(done["status"], "complete");
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["content"], streamed);
    let usage = server
        .state
        .store
        .usage_for_message(saved["id"].as_str().expect("id").parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(usage.len(), 1, "billed once");
    let metrics = server
        .client
        .get(format!("{}/metrics", server.url))
        .bearer_auth(server.admin_token("root"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("chatgate_text_repaired_total") && l.contains("reason=\"nul\"")),
        "the repair is counted"
    );
}

fn streaming_row(conversation_id: chatgate::id::Id, content: &str) -> Checkpoint {
    Checkpoint {
        message: NewMessage {
            id: chatgate::id::Id::new(),
            conversation_id,
            parent_id: None,
            role: Role::Assistant,
            content: content.to_string(),
            message_type: MessageType::Text,
            media: json!([]),
            status: MessageStatus::Streaming,
            model: Some("mock".into()),
            provider: Some("mock".into()),
            finish_reason: None,
            error: None,
            created_at: chatgate::store::now(),
            content_tokens: None,
        },
        prompt_tokens_estimate: 10,
    }
}

async fn one_bad_row_never_fails_the_others_checkpoints(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let conversation_id: chatgate::id::Id = server.conversation("alice").await.parse().expect("id");
    // A row PostgreSQL refuses (only a bug could produce one now: provider text is repaired before) between
    // two good ones.
    let rows = [
        streaming_row(conversation_id, "first"),
        streaming_row(conversation_id, "bad \u{0} row"),
        streaming_row(conversation_id, "third"),
    ];
    let written = server
        .state
        .store
        .checkpoint_messages(&rows, "test-instance")
        .await
        .expect("the database is up");
    let expected = match backend {
        Backend::Postgres => vec![true, false, true],
        Backend::Sqlite => vec![true, true, true],
    };
    assert_eq!(written, expected);
    let saved = server
        .state
        .store
        .list_messages(conversation_id, HistoryPage::Offset(0), 10, true, false)
        .await
        .expect("history");
    let mut contents: Vec<&str> = saved.iter().map(|m| m.content.as_str()).collect();
    contents.sort_unstable();
    assert!(
        contents.contains(&"first") && contents.contains(&"third"),
        "{contents:?}"
    );
}

/// Arbitrary Unicode from the user and from the provider, NUL and lone surrogates included, through send →
/// stream → persist: a user message with a NUL is refused and leaves nothing; otherwise the saved user message
/// is what was sent, and the saved reply is exactly what was streamed (the provider's text, repaired).
fn unicode_round_trips(backend: Backend) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = runtime.block_on(FakeOpenAi::start(vec![reply_script(&[])]));
    let Some(server) = runtime.block_on(TestServer::start(backend, Some(&upstream.url), "")) else {
        return;
    };
    let text = prop_oneof![
        4 => any::<String>(),
        1 => "[a\\x00\u{e9}\u{1f600}\u{fffd}\\\\\"\n]{0,12}",
        1 => Just("\u{0}".to_string()),
    ];
    let piece = prop_oneof![
        6 => text.clone().prop_map(Ok),
        1 => (0xd800u16..0xe000).prop_map(Err),
    ];
    let strategy = (text, proptest::collection::vec(piece, 0..8));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 40,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&strategy, |(content, pieces)| {
            upstream.set_script(reply_script(&pieces));
            let conversation_id = runtime.block_on(server.conversation("alice"));
            let outcome = runtime.block_on(send_and_stream(&server, &conversation_id, &content));
            if content.contains('\0') || content.trim().is_empty() {
                // A NUL is refused like an empty message: 400 naming the field, and nothing kept.
                let error = outcome.expect_err("refused");
                prop_assert_eq!(&error["error"], "validation_error");
                prop_assert_eq!(&error["details"]["field"], "content");
                let history = runtime.block_on(server.history("alice", &conversation_id));
                prop_assert!(history.is_empty());
                return Ok(());
            }
            let (streamed, user_message, reply) = outcome.expect("accepted");
            prop_assert_eq!(&streamed, &expected_text(&pieces));
            prop_assert_eq!(reply["content"].as_str(), Some(streamed.as_str()));
            prop_assert_eq!(user_message["content"].as_str(), Some(content.as_str()));
            // What the database returns, read back through the API.
            let history = runtime.block_on(server.history("alice", &conversation_id));
            let saved_reply = history
                .iter()
                .find(|m| m["id"] == reply["id"])
                .expect("the reply is saved");
            prop_assert_eq!(saved_reply["content"].as_str(), Some(streamed.as_str()));
            let saved_user = history
                .iter()
                .find(|m| m["id"] == user_message["id"])
                .expect("the message is saved");
            prop_assert_eq!(saved_user["content"].as_str(), Some(content.as_str()));
            Ok(())
        })
        .expect("round trip");
    runtime.block_on(server.stop());
}

#[test]
fn unicode_round_trips_on_sqlite() {
    unicode_round_trips(Backend::Sqlite);
}

#[test]
fn unicode_round_trips_on_postgres() {
    unicode_round_trips(Backend::Postgres);
}

/// 500 clients connecting at the same moment: every one is accepted and answered, and the kernel dropped none
/// (the listen backlog, 1024 by default, holds the burst; tokio's fixed 128 overflowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_500_connections_is_accepted() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let addr: std::net::SocketAddr = server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("addr");
    // Plain OS threads released together: the connects hit the kernel at once, as a burst of clients does.
    let overflows_before = listen_overflows();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(500));
    let clients: Vec<_> = (0..500)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                barrier.wait();
                let mut stream =
                    std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(60))?;
                stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                stream.write_all(
                    b"GET /health HTTP/1.1\r\nHost: chatgate\r\nConnection: close\r\n\r\n",
                )?;
                let mut response = Vec::new();
                stream.read_to_end(&mut response)?;
                Ok::<_, std::io::Error>(response)
            })
        })
        .collect();
    let results = tokio::task::spawn_blocking(move || {
        clients
            .into_iter()
            .map(|client| client.join().expect("client thread"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("join");
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|result| match result {
            Ok(response) if response.starts_with(b"HTTP/1.1 200") => None,
            Ok(response) => {
                Some(String::from_utf8_lossy(&response[..response.len().min(40)]).to_string())
            }
            Err(err) => Some(err.to_string()),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 500 failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // Past the backlog, the kernel drops a connection's SYN (the client retries a second later) or resets it:
    // none may have been dropped. (With tokio's 128, this burst overflowed the queue some 480 times here.)
    if let (Some(before), Some(after)) = (overflows_before, listen_overflows()) {
        assert_eq!(
            after - before,
            0,
            "connections dropped by a full listen queue"
        );
    }
}

/// The kernel's count of connections dropped because a listen queue was full (`TcpExt: ListenOverflows` in
/// `/proc/net/netstat`), on Linux.
fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}
