//! Resumable generations: re-attaching, several subscribers, cancel, slow subscribers, checkpoints,
//! regenerate and the disconnect policy.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use common::{
    Backend, FakeOpenAi, Script, Step, TestServer, content_chunk, full_stream, role_chunk,
    sse_events,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

backend_tests!(
    reconnect_with_last_event_id_assembles_exactly_the_saved_message,
    two_subscribers_see_identical_streams,
    cancel_mid_stream_saves_exactly_what_was_streamed,
    a_stalled_subscriber_does_not_delay_another,
    the_reply_row_exists_while_streaming,
    regenerate_keeps_the_old_reply_as_a_sibling,
    cancel_policy_stops_a_generation_nobody_follows,
);

fn letters(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{}", (b'a' + (i % 26) as u8) as char))
        .collect()
}

async fn start_async(
    server: &TestServer,
    conversation_id: &str,
    content: &str,
) -> (String, String) {
    let response = server
        .send_message(conversation_id, "alice", json!({ "content": content }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let body: Value = response.json().await.expect("json");
    (
        body["generation_id"].as_str().expect("id").to_string(),
        body["stream_url"].as_str().expect("url").to_string(),
    )
}

async fn reconnect_with_last_event_id_assembles_exactly_the_saved_message(backend: Backend) {
    let pieces = letters(30);
    let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &refs,
        10,
        30,
        Duration::from_millis(10),
    ))])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "go" }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    let mut events = sse_events(response);
    let mut generation_id = String::new();
    let mut text = String::new();
    let mut last_id = String::new();
    let mut deltas = 0;
    while deltas < 3 {
        let event = events.next().await.expect("event");
        match event.event.as_str() {
            "start" => {
                generation_id = event.data["generation_id"]
                    .as_str()
                    .expect("id")
                    .to_string()
            }
            "delta" => {
                text.push_str(event.data["text"].as_str().expect("text"));
                deltas += 1;
            }
            _ => {}
        }
        last_id = event.id;
    }
    drop(events); // the page reloads
    tokio::time::sleep(Duration::from_millis(60)).await;
    let resumed = server
        .get(
            &format!("/api/v1/generations/{generation_id}/stream"),
            "alice",
        )
        .header("last-event-id", &last_id)
        .send()
        .await
        .expect("resume");
    let mut ids = vec![last_id.parse::<u64>().expect("id")];
    let mut events = sse_events(resumed);
    let mut done = Value::Null;
    while let Some(event) = events.next().await {
        ids.push(event.id.parse().expect("id"));
        match event.event.as_str() {
            "delta" => text.push_str(event.data["text"].as_str().expect("text")),
            "done" => done = event.data,
            _ => {}
        }
    }
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no duplicate: {ids:?}"
    );
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(text, pieces.concat());
    assert_eq!(
        saved["content"], text,
        "the reassembled text equals the saved message"
    );
    assert_eq!(done["message"]["id"], saved["id"]);

    // Re-attaching with the final event's id (an EventSource that did not close on `done`): nothing more will
    // ever come, so 204, which stops EventSource, never a stream of keep-alives.
    let final_id = ids.last().expect("ids").to_string();
    let stream_path = format!("/api/v1/generations/{generation_id}/stream");
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        server
            .get(&stream_path, "alice")
            .header("last-event-id", &final_id)
            .send(),
    )
    .await
    .expect("answered at once")
    .expect("resume");
    assert_eq!(again.status(), 204);
    let again = tokio::time::timeout(
        Duration::from_secs(5),
        server
            .get(&format!("{stream_path}?after={final_id}"), "alice")
            .send(),
    )
    .await
    .expect("answered at once")
    .expect("resume");
    assert_eq!(again.status(), 204);
    // One before the end still gets the end.
    let before_end = ids[ids.len() - 2].to_string();
    let tail = server
        .get(&stream_path, "alice")
        .header("last-event-id", &before_end)
        .send()
        .await
        .expect("resume");
    assert_eq!(tail.status(), 200);
    let tail: Vec<_> = sse_events(tail).collect().await;
    assert_eq!(tail.len(), 1);
    assert_eq!(
        (tail[0].event.as_str(), tail[0].id.as_str()),
        ("done", final_id.as_str())
    );
}

async fn two_subscribers_see_identical_streams(backend: Backend) {
    let mut steps = vec![Step::Chunk(role_chunk()), Step::Gate];
    steps.extend(
        full_stream(&["one ", "two ", "three"], 5, 3, Duration::from_millis(5))
            .into_iter()
            .skip(1),
    );
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let (_, stream_url) = start_async(&server, &conversation_id, "count").await;
    let laptop = server
        .get(&stream_url, "alice")
        .send()
        .await
        .expect("laptop");
    let phone = server
        .get(&stream_url, "alice")
        .send()
        .await
        .expect("phone");
    upstream.release();
    let (laptop, phone): (Vec<_>, Vec<_>) =
        tokio::join!(sse_events(laptop).collect(), sse_events(phone).collect());
    let flatten = |events: Vec<common::SseEvent>| {
        events
            .into_iter()
            .map(|e| (e.id, e.event, e.data))
            .collect::<Vec<_>>()
    };
    let (laptop, phone) = (flatten(laptop), flatten(phone));
    assert_eq!(laptop, phone);
    assert_eq!(laptop.last().map(|e| e.1.as_str()), Some("done"));
    assert_eq!(laptop.iter().filter(|e| e.1 == "delta").count(), 3);
}

async fn cancel_mid_stream_saves_exactly_what_was_streamed(backend: Backend) {
    // The upstream sends three pieces, then hangs.
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("Once")),
        Step::Chunk(content_chunk(" upon")),
        Step::Chunk(content_chunk(" a time")),
        Step::Gate,
    ];
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let (generation_id, stream_url) = start_async(&server, &conversation_id, "tell a story").await;
    let mut events = sse_events(
        server
            .get(&stream_url, "alice")
            .send()
            .await
            .expect("stream"),
    );
    let mut text = String::new();
    while text.len() < "Once upon a time".len() {
        let event = events.next().await.expect("event");
        if event.event == "delta" {
            text.push_str(event.data["text"].as_str().expect("text"));
        }
    }
    let cancel_path = format!("/api/v1/generations/{generation_id}/cancel");
    let response = server
        .post(&cancel_path, "alice", json!({}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(response.status(), 200);
    let cancelled: Value = response.json().await.expect("json");
    assert_eq!(cancelled["cancelled"], true);
    assert_eq!(cancelled["message"]["status"], "cancelled");
    assert_eq!(
        cancelled["message"]["content"], text,
        "exactly the text streamed so far"
    );
    assert_eq!(cancelled["message"]["finish_reason"], "cancelled");
    // The subscriber gets a final done.
    let rest: Vec<_> = events.collect().await;
    let done = rest.last().expect("final event");
    assert_eq!(done.event, "done");
    assert_eq!(done.data["finish_reason"], "cancelled");
    // Saved, with its usage (estimated: the upstream never sent any).
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(
        (saved["status"].as_str(), saved["content"].as_str()),
        (Some("cancelled"), Some(text.as_str()))
    );
    let records = server
        .state
        .store
        .usage_for_message(generation_id.parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(records.len(), 1);
    assert!(records[0].estimated);
    // Twice is harmless and says so; another user cannot cancel it.
    let again: Value = server
        .post(&cancel_path, "alice", json!({}))
        .send()
        .await
        .expect("cancel")
        .json()
        .await
        .expect("json");
    assert_eq!(again["cancelled"], false);
    assert_eq!(again["message"]["content"], text);
    let other = server
        .post(&cancel_path, "bob", json!({}))
        .send()
        .await
        .expect("cancel");
    assert_eq!(other.status(), 404);
}

async fn a_stalled_subscriber_does_not_delay_another(backend: Backend) {
    // About 4 MB of reply: far more than socket buffers hold for a client that never reads.
    let piece = "x".repeat(1024);
    let mut steps = vec![Step::Chunk(role_chunk()), Step::Gate];
    steps.extend((0..4000).map(|_| Step::Chunk(content_chunk(&piece))));
    steps.extend([
        Step::Chunk(common::finish_chunk("stop")),
        Step::Chunk(common::usage_chunk(10, 4000, 0)),
        Step::Done,
    ]);
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let (generation_id, stream_url) = start_async(&server, &conversation_id, "a lot").await;

    // A client that subscribes and then never reads a byte.
    let address = server.url.trim_start_matches("http://").to_string();
    // A tiny receive window, so the kernel cannot absorb the reply on the client's behalf.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket
        .connect(address.parse().expect("addr"))
        .await
        .expect("connect");
    let request = format!(
        "GET {stream_url} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        server.token("alice")
    );
    stalled.write_all(request.as_bytes()).await.expect("write");
    let mut head = [0u8; 12];
    tokio::io::AsyncReadExt::read_exact(&mut stalled, &mut head)
        .await
        .expect("status line");
    assert_eq!(&head, b"HTTP/1.1 200", "the stalled client is subscribed");
    let healthy = server
        .get(&stream_url, "alice")
        .send()
        .await
        .expect("healthy");
    upstream.release();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(20),
        sse_events(healthy).collect::<Vec<_>>(),
    )
    .await
    .expect("the healthy subscriber finishes while the other one stalls");
    assert_eq!(events.last().map(|e| e.event.as_str()), Some("done"));
    assert_eq!(events.iter().filter(|e| e.event == "delta").count(), 4000);
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["status"], "complete");
    assert_eq!(saved["content"].as_str().map(str::len), Some(4000 * 1024));
    let generation = server
        .state
        .hub
        .get(generation_id.parse().expect("id"))
        .await
        .expect("still retained");
    assert_eq!(
        generation.subscribers(),
        1,
        "the stalled client is still attached, and nothing waited for it"
    );
    drop(stalled);
}

async fn the_reply_row_exists_while_streaming(backend: Backend) {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("half ")),
        Step::Chunk(content_chunk("way")),
        Step::Gate,
    ];
    let mut steps = steps;
    steps.extend(
        full_stream(&[" there"], 5, 3, Duration::ZERO)
            .into_iter()
            .skip(1),
    );
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let extra = "[generation]\ncheckpoint_interval_ms = 20\n";
    let Some(server) = TestServer::start(backend, Some(&upstream.url), extra).await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    start_async(&server, &conversation_id, "go").await;
    let mut streaming = None;
    for _ in 0..100 {
        let history = server.history("alice", &conversation_id).await;
        if let Some(reply) = history
            .iter()
            .find(|m| m["role"] == "assistant" && m["content"] == "half way")
        {
            streaming = Some(reply.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let streaming =
        streaming.expect("the checkpointed row appears while the upstream is still streaming");
    assert_eq!(streaming["status"], "streaming");
    upstream.release();
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["id"], streaming["id"], "the same row is finished");
    assert_eq!(
        (saved["status"].as_str(), saved["content"].as_str()),
        (Some("complete"), Some("half way there"))
    );
}

async fn regenerate_keeps_the_old_reply_as_a_sibling(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let first: Value = server
        .send_message(&conversation_id, "alice", json!({ "content": "hello" }))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let question_id = first["user_message"]["id"].clone();
    let old_reply = first["assistant_message"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/v1/messages/{old_reply}/regenerate");
    assert_eq!(
        server
            .post(&path, "bob", json!({}))
            .send()
            .await
            .expect("regenerate")
            .status(),
        404
    );
    let response = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(server.token("alice"))
        .send()
        .await
        .expect("regenerate");
    assert_eq!(response.status(), 200, "an empty body is fine");
    let second: Value = response.json().await.expect("json");
    let new_reply = &second["assistant_message"];
    assert_ne!(new_reply["id"].as_str(), Some(old_reply.as_str()));
    assert_eq!(
        new_reply["parent_id"], question_id,
        "a sibling of the old reply"
    );
    assert_eq!(second["user_message"]["id"], question_id);

    let latest = server.history("alice", &conversation_id).await;
    let ids: Vec<_> = latest.iter().map(|m| m["id"].clone()).collect();
    assert_eq!(
        ids,
        [question_id.clone(), new_reply["id"].clone()],
        "history shows the latest branch"
    );
    let all: Value = server
        .get(
            &format!("/api/v1/conversations/{conversation_id}/messages?order=asc&branches=all"),
            "alice",
        )
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let ids: Vec<_> = all["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(
        ids,
        [question_id, json!(old_reply), new_reply["id"].clone()]
    );
}

async fn cancel_policy_stops_a_generation_nobody_follows(backend: Backend) {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("First")),
        Step::Gate,
        Step::Done,
    ];
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    // A disconnect is noticed at the next write to the socket: a keep-alive comment at the latest.
    let extra = "[generation]\ndisconnect_policy = \"cancel\"\ndisconnect_grace_ms = 100\nmax_unattended = 1\n\
                 [server]\nsse_keepalive_secs = 1\n";
    let Some(server) = TestServer::start(backend, Some(&upstream.url), extra).await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "go" }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    let mut events = sse_events(response);
    while events.next().await.expect("event").event != "delta" {}
    drop(events);
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["status"], "cancelled", "{saved}");
    assert_eq!(saved["finish_reason"], "client_disconnected");
    assert_eq!(saved["content"], "First");

    // max_unattended = 1: a second reply nobody follows is refused while the first one runs.
    let (_, _) = start_async(&server, &conversation_id, "one").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "two" }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    assert_eq!(
        response.json::<Value>().await.expect("json")["error"],
        "too_many_unattended"
    );
}
