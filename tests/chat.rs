//! The core path end to end: a real server, a real database (SQLite and PostgreSQL), a fake OpenAI upstream
//! speaking the real chunk format, real SSE clients.

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

backend_tests!(
    deltas_arrive_one_by_one_before_the_upstream_finishes,
    json_answer_saves_reply_usage_and_exact_cost,
    client_disconnect_after_first_delta_still_saves_the_whole_reply,
    a_client_asking_on_disconnect_cancel_stops_the_reply_by_leaving,
    upstream_dying_mid_stream_yields_error_event_and_failed_partial,
    upstream_error_inside_200_stream_is_an_error,
    upstream_status_errors_map_to_gateway_errors,
    another_users_conversation_is_404_everywhere,
    bad_input_gets_clear_errors_and_writes_nothing,
    async_answer_then_resume_with_last_event_id,
    prompt_carries_persona_and_history,
    a_reply_past_the_log_bound_ends_with_a_clear_error_and_is_saved,
    history_fills_max_history_tokens_by_stored_counts,
    messages_stored_without_a_count_are_counted_once,
);

async fn send_sse(
    server: &TestServer,
    user: &str,
    conversation_id: &str,
    content: &str,
) -> reqwest::Response {
    let response = server
        .send_message(conversation_id, user, json!({ "content": content }))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(
        response.headers()["cache-control"],
        "no-cache, no-transform"
    );
    assert_eq!(response.headers()["x-accel-buffering"], "no");
    response
}

async fn deltas_arrive_one_by_one_before_the_upstream_finishes(backend: Backend) {
    let mut steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("Hel")),
        Step::Delay(Duration::from_millis(20)),
    ];
    steps.push(Step::Chunk(content_chunk("lo")));
    // The upstream holds the rest of its answer until the test has seen the first deltas.
    steps.push(Step::Gate);
    steps.extend(
        full_stream(&[",", " world", "!"], 79, 6, Duration::from_millis(5))
            .into_iter()
            .skip(1),
    );
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;

    let mut events = sse_events(send_sse(&server, "alice", &conversation_id, "Say hello").await);
    let mut seen = Vec::new();
    let mut deltas = Vec::new();
    while deltas.len() < 2 {
        let event = events.next().await.expect("an event");
        if event.event == "delta" {
            deltas.push(event.data["text"].as_str().expect("text").to_string());
        }
        seen.push(event);
    }
    assert_eq!(
        deltas,
        ["Hel", "lo"],
        "each upstream chunk is relayed as its own delta"
    );
    assert!(
        !upstream.finished(),
        "the deltas reached the client while the upstream was still streaming"
    );
    assert_eq!(seen[0].event, "user_message");
    assert_eq!(seen[0].id, "0");
    // The data is the saved message itself (what the web UI renders).
    assert_eq!(seen[0].data["role"], "user", "{:?}", seen[0].data);
    assert!(seen[0].data["id"].is_string());
    assert_eq!(seen[1].event, "start");

    upstream.release();
    let mut usage = Value::Null;
    let mut done = Value::Null;
    while let Some(event) = events.next().await {
        match event.event.as_str() {
            "delta" => deltas.push(event.data["text"].as_str().expect("text").to_string()),
            "usage" => usage = event.data.clone(),
            "done" => done = event.data.clone(),
            other => panic!("unexpected event {other}"),
        }
        seen.push(event);
    }
    let ids: Vec<u64> = seen
        .iter()
        .map(|e| e.id.parse().expect("numeric id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids are consecutive: {ids:?}"
    );
    assert_eq!(
        seen.last().expect("last").event,
        "done",
        "the stream ends with done"
    );
    let text: String = deltas.concat();
    assert_eq!(text, "Hello, world!");
    assert_eq!(done["message"]["content"], text);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(usage["prompt_tokens"], 79);
    assert_eq!(usage["completion_tokens"], 6);
    assert_eq!(usage["estimated"], false);

    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(
        saved["content"], text,
        "the saved message equals the concatenated deltas"
    );
    assert_eq!(saved["status"], "complete");
    assert_eq!(saved["id"], done["message"]["id"]);
}

async fn json_answer_saves_reply_usage_and_exact_cost(backend: Backend) {
    let upstream = FakeOpenAi::start(vec![Script::stream({
        let mut steps = full_stream(&["Hi", " there"], 1000, 10, Duration::ZERO);
        // A cached-prompt figure on the usage chunk.
        let usage = steps.len() - 2;
        steps[usage] = Step::Chunk(common::usage_chunk(1000, 10, 400));
        steps
    })])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "Hello" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["user_message"]["content"], "Hello");
    assert_eq!(body["user_message"]["role"], "user");
    let reply = &body["assistant_message"];
    assert_eq!(reply["content"], "Hi there");
    assert_eq!(reply["status"], "complete");
    assert_eq!(reply["model"], "gpt");
    assert_eq!(reply["model_used"], "gpt-4o-mini");
    assert_eq!(reply["provider"], "fake");
    assert_eq!(reply["tokens_used"], 1010);
    assert_eq!(reply["parent_id"], body["user_message"]["id"]);
    assert_eq!(body["conversation"]["id"], conversation_id.as_str());

    // Exactly one usage record, with the upstream's numbers and the configured prices:
    // 600 × 150 + 400 × 75 + 10 × 600 = 126 000 nano-USD.
    let message_id = reply["id"].as_str().expect("id").parse().expect("uuid");
    let records = server
        .state
        .store
        .usage_for_message(message_id)
        .await
        .expect("usage");
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(
        (
            record.prompt_tokens,
            record.completion_tokens,
            record.cached_tokens
        ),
        (1000, 10, 400)
    );
    assert!(!record.estimated);
    assert_eq!(record.cost_nanousd, 126_000);
    assert_eq!(record.user_id, "alice");
    assert_eq!(record.provider, "fake");
    assert!(record.ttft_ms.is_some());
    assert_eq!(reply["cost_usd"], 0.000126);

    // What went upstream: streaming with usage requested, the key as a bearer token, the upstream model name.
    let (headers, request) = upstream.requests().pop().expect("a request");
    assert_eq!(request["stream"], true);
    assert_eq!(request["stream_options"]["include_usage"], true);
    assert_eq!(request["model"], "gpt-4o-mini");
    assert_eq!(headers["authorization"], "Bearer sk-test-key-123");
}

async fn client_disconnect_after_first_delta_still_saves_the_whole_reply(backend: Backend) {
    let mut steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("First")),
    ];
    steps.push(Step::Gate);
    steps.extend(
        full_stream(&[" second", " third"], 20, 3, Duration::from_millis(5))
            .into_iter()
            .skip(1),
    );
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;

    let mut events = sse_events(send_sse(&server, "alice", &conversation_id, "Count").await);
    loop {
        let event = events.next().await.expect("event");
        if event.event == "delta" {
            assert_eq!(event.data["text"], "First");
            break;
        }
    }
    drop(events); // the client goes away mid-stream
    tokio::time::sleep(Duration::from_millis(50)).await;
    upstream.release();

    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["content"], "First second third");
    assert_eq!(saved["status"], "complete");
    assert_eq!(saved["tokens_used"], 23);
    assert!(upstream.finished());
}

/// `?on_disconnect=cancel`: the client's leaving is its Stop button — the reply stops at once (whatever the
/// server's disconnect policy), saved `cancelled` with what was streamed; the upstream request is dropped. The
/// parameter is refused where nothing follows the reply, and for other values.
async fn a_client_asking_on_disconnect_cancel_stops_the_reply_by_leaving(backend: Backend) {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("First")),
        Step::Gate,
        Step::Chunk(content_chunk(" never")),
        Step::Done,
    ];
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    let response = server
        .post(
            &format!("{path}?stream=true&on_disconnect=cancel"),
            "alice",
            json!({ "content": "Count" }),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let mut events = sse_events(response);
    loop {
        let event = events.next().await.expect("event");
        if event.event == "delta" {
            break;
        }
    }
    drop(events);
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["status"], "cancelled", "{saved}");
    assert_eq!(saved["content"], "First");
    assert_eq!(saved["finish_reason"], "client_disconnected", "{saved}");
    upstream.release();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!upstream.finished(), "the upstream request was dropped");

    for (query, headers) in [
        ("on_disconnect=cancel", Some(("prefer", "respond-async"))),
        ("on_disconnect=later", None),
    ] {
        let mut request = server.post(
            &format!("{path}?{query}"),
            "alice",
            json!({ "content": "x" }),
        );
        if let Some((name, value)) = headers {
            request = request.header(name, value);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["details"]["field"], "on_disconnect", "{body}");
    }
}

async fn upstream_dying_mid_stream_yields_error_event_and_failed_partial(backend: Backend) {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("Partial")),
        Step::Chunk(content_chunk(" text")),
        // Let the bytes reach the wire before the connection is torn down.
        Step::Delay(Duration::from_millis(50)),
        Step::Die,
    ];
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;

    let events: Vec<_> = sse_events(send_sse(&server, "alice", &conversation_id, "Go").await)
        .collect()
        .await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        ["user_message", "start", "delta", "delta", "usage", "error"]
    );
    let error = &events.last().expect("error").data;
    assert_eq!(error["error"], "upstream_interrupted");
    assert_eq!(error["details"]["partial"], true);

    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["status"], "failed");
    assert_eq!(saved["content"], "Partial text");
    assert_eq!(saved["id"], error["details"]["message_id"]);
    assert!(
        saved["error"]
            .as_str()
            .expect("error text")
            .contains("closed the stream")
    );
    // The partial generation is billed once, with an estimate (the upstream never sent usage).
    let records = server
        .state
        .store
        .usage_for_message(saved["id"].as_str().expect("id").parse().expect("id"))
        .await
        .expect("usage");
    assert_eq!(records.len(), 1);
    assert!(records[0].estimated);
    assert_eq!(
        records[0].completion_tokens, 2,
        "'Partial text' is two tokens in o200k_base"
    );
}

async fn upstream_error_inside_200_stream_is_an_error(backend: Backend) {
    let steps = vec![
        Step::Chunk(role_chunk()),
        Step::Chunk(content_chunk("Some")),
        Step::Chunk(
            json!({"error": {"message": "stream failed after output", "type": "server_error", "param": null, "code": null}}),
        ),
    ];
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    // JSON answer: the upstream's failure is a 502 naming the saved partial message.
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "Go" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upstream_error");
    assert!(
        body["message"]
            .as_str()
            .expect("message")
            .contains("stream failed after output")
    );
    let saved = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(saved["status"], "failed");
    assert_eq!(saved["content"], "Some");
    assert_eq!(body["details"]["message_id"], saved["id"]);
}

async fn upstream_status_errors_map_to_gateway_errors(backend: Backend) {
    let upstream = FakeOpenAi::start(vec![
        Script::error(401, vec![], json!({"error": {"message": "Incorrect API key provided: sk-test-key-123", "code": "invalid_api_key"}})),
        Script::error(
            429,
            vec![("retry-after", "7")],
            json!({"error": {"message": "Rate limit reached", "type": "tokens", "param": null, "code": "rate_limit_exceeded"}}),
        ),
    ])
    .await;
    let Some(server) = TestServer::start(
        backend,
        Some(&upstream.url),
        "[generation]\nretry_attempts = 0\n",
    )
    .await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");

    let response = server
        .post(&path, "alice", json!({ "content": "one" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    let text = response.text().await.expect("body");
    assert!(text.contains("upstream_auth"), "{text}");
    assert!(
        !text.contains("sk-test-key-123"),
        "the key never leaks: {text}"
    );

    let response = server
        .post(&path, "alice", json!({ "content": "two" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "7");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "upstream_rate_limited");

    // Both user messages and both failed replies are kept.
    let history = server.history("alice", &conversation_id).await;
    let statuses: Vec<_> = history
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or(""),
                m["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("user", "complete"),
            ("assistant", "failed"),
            ("user", "complete"),
            ("assistant", "failed")
        ]
    );
}

async fn another_users_conversation_is_404_everywhere(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let sent: Value = server
        .send_message(&conversation_id, "alice", json!({ "content": "mine" }))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let message_id = sent["user_message"]["id"].as_str().expect("id").to_string();
    let generation_id = sent["assistant_message"]["id"]
        .as_str()
        .expect("id")
        .to_string();

    let conv = format!("/api/v1/conversations/{conversation_id}");
    let requests = [
        server.get(&conv, "bob"),
        server.patch(&conv, "bob", json!({ "title": "stolen" })),
        server.get(&format!("{conv}/messages"), "bob"),
        server.post(
            &format!("{conv}/messages"),
            "bob",
            json!({ "content": "intrude" }),
        ),
        server.delete(&format!("/api/v1/messages/{message_id}"), "bob"),
        server.get(&format!("/api/v1/generations/{generation_id}"), "bob"),
        server.delete(&conv, "bob"),
    ];
    for request in requests {
        let response = request.send().await.expect("request");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"], "not_found");
    }
    let listed: Value = server.get_json("/api/v1/conversations", "bob").await;
    assert_eq!(listed["conversations"], json!([]));
    // Nothing of alice's changed.
    let history = server.history("alice", &conversation_id).await;
    assert_eq!(history.len(), 2);
    let conversation: Value = server
        .get(&conv, "alice")
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(conversation["title"], Value::Null);
}

async fn bad_input_gets_clear_errors_and_writes_nothing(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, "[limits]\nmax_message_bytes = 100").await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    let cases = [
        (json!({ "content": "   " }), 400, "validation_error"),
        (
            json!({ "content": "x".repeat(101) }),
            413,
            "payload_too_large",
        ),
        (
            json!({ "content": "hi", "model": "gpt-9" }),
            422,
            "unknown_model",
        ),
        (json!({ "content": 5 }), 400, "invalid_json"),
        (
            json!({ "content": "hi", "message_type": "video" }),
            400,
            "validation_error",
        ),
        (
            json!({ "content": "hi", "surprise": true }),
            400,
            "invalid_json",
        ),
    ];
    for (body, status, kind) in cases {
        let response = server
            .post(&path, "alice", body.clone())
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(error["error"], kind, "{body}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["details"].is_object());
    }
    // The bad field's path is named.
    let error: Value = server
        .post(&path, "alice", json!({ "content": 5 }))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(error["details"]["path"], "content");
    // Malformed JSON and a wrong content type.
    let response = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(server.token("alice"))
        .header("content-type", "application/json")
        .body("{\"content\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let response = server
        .client
        .post(format!("{}{path}", server.url))
        .bearer_auth(server.token("alice"))
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 415);
    // Unknown and malformed conversation ids.
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_string()] {
        let response = server
            .send_message(&id, "alice", json!({ "content": "hi" }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 404);
    }
    // No token, a bad token, an expired one: 401 with WWW-Authenticate.
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "alice", "exp": 1_000_000 }),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .expect("sign");
    for token in [None, Some("garbage".to_string()), Some(expired)] {
        let mut request = server
            .client
            .post(format!("{}{path}", server.url))
            .json(&json!({ "content": "hi" }));
        if let Some(token) = &token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("send");
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }
    // None of it wrote a row.
    assert!(server.history("alice", &conversation_id).await.is_empty());
}

async fn async_answer_then_resume_with_last_event_id(backend: Backend) {
    let steps = full_stream(&["a", "b", "c", "d", "e"], 10, 5, Duration::from_millis(10));
    let upstream = FakeOpenAi::start(vec![Script::stream(steps)]).await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "letters" }))
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.expect("json");
    let stream_url = accepted["stream_url"]
        .as_str()
        .expect("stream_url")
        .to_string();
    assert_eq!(
        stream_url,
        format!(
            "/api/v1/generations/{}/stream",
            accepted["generation_id"].as_str().expect("id")
        )
    );

    // Read the first two deltas, drop the connection, resume after the last seen id.
    let first = server
        .get(&stream_url, "alice")
        .send()
        .await
        .expect("stream");
    let mut events = sse_events(first);
    let mut text = String::new();
    let mut last_id = String::new();
    let mut deltas = 0;
    while deltas < 2 {
        let event = events.next().await.expect("event");
        if event.event == "delta" {
            text.push_str(event.data["text"].as_str().expect("text"));
            deltas += 1;
        }
        last_id = event.id;
    }
    drop(events);
    let resumed = server
        .get(&stream_url, "alice")
        .header("last-event-id", &last_id)
        .send()
        .await
        .expect("resume");
    let mut events = sse_events(resumed);
    let mut done = Value::Null;
    while let Some(event) = events.next().await {
        assert!(
            event.id.parse::<u64>().expect("id") > last_id.parse::<u64>().expect("id"),
            "no event is repeated"
        );
        match event.event.as_str() {
            "delta" => text.push_str(event.data["text"].as_str().expect("text")),
            "done" => done = event.data,
            _ => {}
        }
    }
    assert_eq!(text, "abcde", "no gap and no duplicate");
    assert_eq!(done["message"]["content"], "abcde");

    // Finished: a replay with ?after=0 gives the whole log; an unknown generation is 204.
    let replay: Vec<_> = sse_events(
        server
            .get(&format!("{stream_url}?after=0"), "alice")
            .send()
            .await
            .expect("replay"),
    )
    .collect()
    .await;
    assert_eq!(replay.first().map(|e| e.event.as_str()), Some("start"));
    assert_eq!(replay.last().map(|e| e.event.as_str()), Some("done"));
    let unknown = server
        .get(
            &format!("/api/v1/generations/{}/stream", uuid::Uuid::now_v7()),
            "alice",
        )
        .send()
        .await
        .expect("unknown");
    assert_eq!(unknown.status(), 204);
    // Another user cannot follow it.
    let other = server.get(&stream_url, "bob").send().await.expect("other");
    assert_eq!(other.status(), 204);
    // Status endpoint.
    let status: Value = server
        .get(
            &format!(
                "/api/v1/generations/{}",
                accepted["generation_id"].as_str().expect("id")
            ),
            "alice",
        )
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["status"], "complete");
    assert_eq!(status["text"], "abcde");
}

async fn prompt_carries_persona_and_history(backend: Backend) {
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["ok"],
        5,
        1,
        Duration::ZERO,
    ))])
    .await;
    let Some(server) = TestServer::start(backend, Some(&upstream.url), "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let path = format!("/api/v1/conversations/{conversation_id}/messages");
    for content in ["first", "second"] {
        let response = server
            .post(&path, "alice", json!({ "content": content }))
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
    }
    let (_, request) = upstream.requests().pop().expect("request");
    let messages = request["messages"].as_array().expect("messages");
    let roles: Vec<_> = messages
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "user"]);
    let system = messages[0]["content"].as_str().expect("system");
    assert!(
        system.contains("Personality traits:") && system.contains("relationship to the user"),
        "{system}"
    );
    assert_eq!(messages[1]["content"], "first");
    assert_eq!(messages[2]["content"], "ok");
    assert_eq!(messages[3]["content"], "second");
}

async fn a_reply_past_the_log_bound_ends_with_a_clear_error_and_is_saved(backend: Backend) {
    // The log takes `start` and three deltas; the fourth delta is refused.
    let Some(server) = TestServer::start(backend, None, "[generation]\nmax_events = 4\n").await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let response = send_sse(&server, "alice", &conversation_id, "tell me a long story").await;
    let events: Vec<_> = sse_events(response).collect().await;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "user_message",
            "start",
            "delta",
            "delta",
            "delta",
            "usage",
            "error"
        ],
        "{events:?}"
    );
    let error = &events[6].data;
    assert_eq!(error["error"], "generation_too_long", "{error}");
    assert_eq!(error["details"]["events"], 4, "{error}");
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "delta")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    let reply = server.wait_for_reply("alice", &conversation_id).await;
    assert_eq!(reply["status"], "failed");
    assert_eq!(reply["content"], streamed, "what was streamed is saved");
    assert_eq!(reply["id"], error["details"]["message_id"]);
}

/// Tokens of `text` as the fake upstream's model (`gpt-4o-mini`, o200k) counts them.
fn tokens(text: &str) -> u64 {
    chatgate::usage::tokens::Tokenizer::for_model("gpt-4o-mini").count(text)
}

/// Polls history until the first `n` messages have their `content_tokens` (recorded in the background after
/// the fitting that counted them).
async fn counted_history(server: &TestServer, conversation_id: &str, n: usize) -> Vec<Value> {
    for _ in 0..100 {
        let history = server.history("alice", conversation_id).await;
        if history.iter().take(n).all(|m| m["content_tokens"].is_u64()) {
            return history;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("messages left without a token count")
}

/// A long conversation of ordinary English turns sends history up to `max_history_tokens` — within one
/// message of it, never over — because fitting sums each message's stored, exact token count (it used to
/// spend a byte bound and send a fifth of what was configured).
async fn history_fills_max_history_tokens_by_stored_counts(backend: Backend) {
    let reply = "Noted, thank you.";
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &[reply],
        5,
        tokens(reply),
        Duration::ZERO,
    ))])
    .await;
    let budget = 1200;
    let Some(server) = TestServer::start(
        backend,
        Some(&upstream.url),
        &format!("[generation]\nmax_history_tokens = {budget}\n"),
    )
    .await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let sentence = "The patient farmer walked along the river at dawn, counting the herons that waited in the reeds \
                    and wondering whether the autumn rain would come before the harvest was safely in the barn.";
    for i in 0..40 {
        let response = server
            .send_message(
                &conversation_id,
                "alice",
                json!({ "content": format!("Note {i}: {sentence}") }),
            )
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
    }
    let (_, request) = upstream.requests().pop().expect("request");
    let messages = request["messages"].as_array().expect("messages");
    let history = &messages[1..messages.len() - 1];
    let cost = |m: &Value| 3 + tokens(m["content"].as_str().expect("content"));
    let spent: u64 = history.iter().map(cost).sum();
    let largest = history.iter().map(cost).max().expect("history");
    let new_message = messages.last().expect("new message")["content"]
        .as_str()
        .expect("content");
    // The new message costs its byte bound; the history fills the rest up to less than one more message.
    let room = budget - (3 + new_message.len() as u64);
    assert!(spent <= room, "over the budget: {spent} > {room}");
    assert!(
        spent + largest > room,
        "history stopped short: {spent} of {room} with {} messages",
        history.len()
    );
    assert!(history.len() > 30, "{} messages", history.len());

    // The counts are stored, exact: every reply's from the provider's usage, written with it; a user message's
    // from tiktoken once a fitting needed it (recorded in the background), so every message of that last
    // prompt has one, and the message no prompt has fitted yet has none.
    let fitted: Vec<&str> = history
        .iter()
        .map(|m| m["content"].as_str().expect("content"))
        .collect();
    let mut stored = Vec::new();
    for _ in 0..100 {
        let page = server
            .get_json(
                &format!("/api/v1/conversations/{conversation_id}/messages?order=asc&limit=200"),
                "alice",
            )
            .await;
        stored = page["messages"].as_array().expect("messages").clone();
        let counted = |content: &str| {
            stored
                .iter()
                .filter(|m| m["content"] == content)
                .all(|m| m["content_tokens"].is_u64())
        };
        if fitted.iter().all(|content| counted(content)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for message in &stored {
        let content = message["content"].as_str().expect("content");
        match message["content_tokens"].as_u64() {
            Some(counted) => assert_eq!(counted, tokens(content), "{message}"),
            None => assert!(
                !fitted.contains(&content) && message["role"] == "user",
                "fitted without a stored count: {message}"
            ),
        }
    }
    let newest_question = stored.iter().rev().find(|m| m["role"] == "user");
    assert_eq!(
        newest_question.map(|m| &m["content"]),
        Some(&json!(new_message))
    );
    assert!(newest_question.is_some_and(|m| m["content_tokens"].is_null()));
}

/// Messages stored without a count (before counts were stored) are counted the first time a history too long
/// for its byte bounds is fitted, and the counts recorded, so it happens once; a history that fits by bytes
/// needs no count.
async fn messages_stored_without_a_count_are_counted_once(backend: Backend) {
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["ok"],
        5,
        1,
        Duration::ZERO,
    ))])
    .await;
    // Room for the two old messages by their tokens (about 8 each, plus 3), not by their bytes (about 35).
    let Some(server) = TestServer::start(
        backend,
        Some(&upstream.url),
        "[generation]\nmax_history_tokens = 45\n",
    )
    .await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let id: chatgate::id::Id = conversation_id.parse().expect("id");
    let store = &server.state.store;
    let legacy = [
        "An old question about the weather.",
        "An old answer: it rained all week.",
    ];
    for (i, content) in legacy.iter().enumerate() {
        store
            .insert_message(&chatgate::store::NewMessage {
                id: chatgate::id::Id::new(),
                conversation_id: id,
                parent_id: None,
                role: if i == 0 {
                    chatgate::domain::Role::User
                } else {
                    chatgate::domain::Role::Assistant
                },
                content: (*content).to_string(),
                message_type: Default::default(),
                media: json!([]),
                status: chatgate::domain::MessageStatus::Complete,
                model: None,
                provider: None,
                finish_reason: None,
                error: None,
                created_at: chatgate::store::now(),
                content_tokens: None,
            })
            .await
            .expect("insert");
    }
    let before = server.history("alice", &conversation_id).await;
    assert!(before.iter().all(|m| m["content_tokens"].is_null()));
    let response = server
        .send_message(&conversation_id, "alice", json!({ "content": "And now?" }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let (_, request) = upstream.requests().pop().expect("request");
    assert_eq!(request["messages"][1]["content"], legacy[0]);
    assert_eq!(request["messages"][2]["content"], legacy[1]);
    let history = counted_history(&server, &conversation_id, 2).await;
    for (message, content) in history.iter().zip(legacy) {
        assert_eq!(message["content_tokens"], tokens(content), "{message}");
    }
}
