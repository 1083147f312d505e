//! The WebSocket transport with a real client (tokio-tungstenite), and the socket loop without a network.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use common::{Backend, TestServer, sse_events};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const SLOW: &str = "[providers.slow]\nkind = \"mock\"\ndelay_ms = 15\n[models.slow]\nprovider = \"slow\"\nmodel = \"mock-1\"\n";

async fn connect(server: &TestServer, token: Option<&str>) -> Socket {
    let url = format!("{}/api/v1/ws", server.url.replace("http://", "ws://"));
    let mut request = url.into_client_request().expect("request");
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .expect("connect")
        .0
}

async fn send(socket: &mut Socket, frame: Value) {
    socket
        .send(WsMessage::Text(frame.to_string().into()))
        .await
        .expect("send");
}

/// The next JSON frame (pings are answered by the client library).
async fn next(socket: &mut Socket) -> Value {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(WsMessage::Text(text))) => {
                return serde_json::from_str(&text).expect("json frame");
            }
            Some(Ok(WsMessage::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code and reason.
async fn closed(socket: &mut Socket) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(WsMessage::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.to_string());
            }
            Some(Ok(WsMessage::Close(None))) | None => return (1005, String::new()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => panic!("socket error before close: {e}"),
        }
    }
}

/// Collects frames until each of `ids` got its `done` (or `error`); returns them per id.
async fn until_done(
    socket: &mut Socket,
    ids: &[&str],
) -> std::collections::HashMap<String, Vec<Value>> {
    let mut frames: std::collections::HashMap<String, Vec<Value>> = Default::default();
    let mut open: Vec<&str> = ids.to_vec();
    while !open.is_empty() {
        let frame = next(socket).await;
        let id = frame["id"].as_str().unwrap_or("").to_string();
        if matches!(frame["type"].as_str(), Some("done" | "error")) {
            open.retain(|i| *i != id);
        }
        frames.entry(id).or_default().push(frame);
    }
    frames
}

fn text_of(frames: &[Value]) -> String {
    frames
        .iter()
        .filter(|f| f["type"] == "delta")
        .filter_map(|f| f["text"].as_str())
        .collect()
}

backend_tests!(
    two_generations_interleave_on_one_socket,
    cancel_one_and_resume_another
);

async fn two_generations_interleave_on_one_socket(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, SLOW).await else {
        return;
    };
    let (first, second) = (
        server.conversation("alice").await,
        server.conversation("alice").await,
    );
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    assert_eq!(
        next(&mut socket).await,
        json!({ "type": "ready", "user_id": "alice" })
    );
    send(&mut socket, json!({ "type": "send", "id": "a", "conversation_id": first, "content": "apples", "model": "slow" })).await;
    send(&mut socket, json!({ "type": "send", "id": "b", "conversation_id": second, "content": "bananas", "model": "slow" })).await;
    let frames = until_done(&mut socket, &["a", "b"]).await;

    for (id, conversation, word) in [("a", &first, "apples"), ("b", &second, "bananas")] {
        let frames = &frames[id];
        let kinds: Vec<&str> = frames
            .iter()
            .map(|f| f["type"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(kinds.first(), Some(&"user_message"));
        assert_eq!(kinds[1], "start");
        assert_eq!(kinds.last(), Some(&"done"));
        let seqs: Vec<u64> = frames
            .iter()
            .skip(1)
            .map(|f| f["seq"].as_u64().expect("seq"))
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let text = text_of(frames);
        assert!(text.contains(word), "{text}");
        assert_eq!(
            frames.last().expect("done")["message"]["content"],
            text.as_str()
        );
        let saved = server.wait_for_reply("alice", conversation).await;
        assert_eq!(saved["content"], text.as_str());
    }
    // The two streams really were interleaved on the socket, not one after the other.
    assert!(frames["a"].len() > 5 && frames["b"].len() > 5);
    let _ = socket.close(None).await;
}

async fn cancel_one_and_resume_another(backend: Backend) {
    let Some(server) = TestServer::start(backend, None, SLOW).await else {
        return;
    };
    let (first, second) = (
        server.conversation("alice").await,
        server.conversation("alice").await,
    );
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    next(&mut socket).await;
    send(&mut socket, json!({ "type": "send", "id": "keep", "conversation_id": first, "content": "keep going", "model": "slow" })).await;
    send(&mut socket, json!({ "type": "send", "id": "stop", "conversation_id": second, "content": "stop soon", "model": "slow" })).await;
    let mut generation_id = String::new();
    let mut stop_deltas = 0;
    let mut keep_frames = Vec::new();
    while stop_deltas < 2 {
        let frame = next(&mut socket).await;
        if frame["id"] == "keep" {
            if frame["type"] == "start" {
                generation_id = frame["generation_id"].as_str().expect("id").to_string();
            }
            keep_frames.push(frame);
        } else if frame["type"] == "delta" {
            stop_deltas += 1;
        }
    }
    send(&mut socket, json!({ "type": "cancel", "id": "stop" })).await;
    // Drop the socket while "keep" is mid-stream; reconnect and resume after the last seq seen.
    let mut stop_done = None;
    let mut keep_deltas_seen = keep_frames.iter().filter(|f| f["type"] == "delta").count();
    while stop_done.is_none() || keep_deltas_seen < 3 {
        let frame = next(&mut socket).await;
        if frame["id"] == "stop" && frame["type"] == "done" {
            stop_done = Some(frame);
        } else if frame["id"] == "keep" {
            if frame["type"] == "delta" {
                keep_deltas_seen += 1;
            }
            keep_frames.push(frame);
        }
    }
    let stop_done = stop_done.expect("done");
    assert_eq!(stop_done["finish_reason"], "cancelled");
    assert_eq!(stop_done["message"]["status"], "cancelled");
    assert!(
        keep_frames.iter().all(|f| f["type"] != "done"),
        "cancelling one left the other running"
    );
    // The start frame may come after the other request's deltas: take the id from whichever frame carried it.
    if generation_id.is_empty() {
        generation_id = keep_frames
            .iter()
            .find(|f| f["type"] == "start")
            .and_then(|f| f["generation_id"].as_str())
            .expect("keep started")
            .to_string();
    }
    let last_seq = keep_frames
        .last()
        .and_then(|f| f["seq"].as_u64())
        .expect("seq");
    drop(socket);

    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    next(&mut socket).await;
    send(&mut socket, json!({ "type": "subscribe", "id": "again", "generation_id": generation_id, "after": last_seq })).await;
    let resumed = until_done(&mut socket, &["again"])
        .await
        .remove("again")
        .expect("frames");
    let seqs: Vec<u64> = keep_frames
        .iter()
        .chain(resumed.iter())
        .filter_map(|f| f["seq"].as_u64())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no duplicate: {seqs:?}"
    );
    let text = format!("{}{}", text_of(&keep_frames), text_of(&resumed));
    assert_eq!(
        resumed.last().expect("done")["message"]["content"],
        text.as_str()
    );
    // Subscribing to someone else's generation, or an unknown one, is an error frame, not a leak.
    let mut bob = connect(&server, Some(&server.token("bob"))).await;
    next(&mut bob).await;
    send(
        &mut bob,
        json!({ "type": "subscribe", "id": "x", "generation_id": generation_id }),
    )
    .await;
    let frame = next(&mut bob).await;
    assert_eq!(
        (frame["type"].as_str(), frame["error"].as_str()),
        (Some("error"), Some("not_found"))
    );
    // Text the database cannot store makes the frame malformed: closed with 4400 naming the field, like any
    // ill-typed field (docs/websocket.md).
    send(
        &mut bob,
        json!({ "type": "send", "id": "nul", "conversation_id": first, "content": "a\u{0}b" }),
    )
    .await;
    let (code, reason) = closed(&mut bob).await;
    assert_eq!(code, 4400, "{reason}");
    assert!(
        reason.contains("content") && reason.contains("NUL"),
        "{reason}"
    );
}

#[tokio::test]
async fn the_same_generation_over_sse_and_ws_is_identical() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, SLOW).await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let accepted: Value = server
        .send_message(
            &conversation_id,
            "alice",
            json!({ "content": "twins", "model": "slow" }),
        )
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let generation_id = accepted["generation_id"].as_str().expect("id");
    let sse = server
        .get(
            &format!("/api/v1/generations/{generation_id}/stream"),
            "alice",
        )
        .send()
        .await
        .expect("sse");
    let mut socket = connect(&server, None).await;
    send(
        &mut socket,
        json!({ "type": "auth", "token": server.token("alice") }),
    )
    .await;
    assert_eq!(next(&mut socket).await["type"], "ready");
    send(
        &mut socket,
        json!({ "type": "subscribe", "id": "w", "generation_id": generation_id }),
    )
    .await;
    let (sse_events, ws_frames) = tokio::join!(
        sse_events(sse).collect::<Vec<_>>(),
        until_done(&mut socket, &["w"])
    );
    let sse: Vec<(u64, String, Value)> = sse_events
        .into_iter()
        .map(|e| (e.id.parse().expect("id"), e.event, e.data))
        .collect();
    let ws: Vec<(u64, String, Value)> = ws_frames["w"]
        .iter()
        .map(|f| {
            let mut data = f.as_object().expect("object").clone();
            let seq = data.remove("seq").and_then(|s| s.as_u64()).expect("seq");
            let kind = data
                .remove("type")
                .and_then(|t| t.as_str().map(str::to_string))
                .expect("type");
            data.remove("id");
            (seq, kind, Value::Object(data))
        })
        .collect();
    assert_eq!(sse, ws, "same seqs, kinds and payloads");
}

#[tokio::test]
async fn every_close_code_is_provoked() {
    let extra = "[ws]\nauth_timeout_ms = 200\nmax_frames_per_second = 5\nframe_burst = 5\nmax_frame_bytes = 1000\n";
    let Some(server) = TestServer::start(Backend::Sqlite, None, &format!("{SLOW}{extra}")).await
    else {
        return;
    };
    let conversation_id = server.conversation("alice").await;

    // 4408: no auth in time.
    let mut socket = connect(&server, None).await;
    assert_eq!(closed(&mut socket).await.0, 4408);

    // 4401: a request before authenticating, and a bad auth frame.
    let mut socket = connect(&server, None).await;
    send(
        &mut socket,
        json!({ "type": "send", "id": "1", "conversation_id": conversation_id, "content": "hi" }),
    )
    .await;
    assert_eq!(closed(&mut socket).await.0, 4401);
    let mut socket = connect(&server, None).await;
    send(&mut socket, json!({ "type": "auth", "token": "garbage" })).await;
    assert_eq!(closed(&mut socket).await.0, 4401);

    // 401 at upgrade for a bad token given there.
    let url = format!(
        "{}/api/v1/ws?access_token=garbage",
        server.url.replace("http://", "ws://")
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // 4400: malformed frames, with the reason.
    for bad in [
        "not json",
        r#"{"type":"dance"}"#,
        r#"{"type":"send","id":"1"}"#,
    ] {
        let mut socket = connect(&server, Some(&server.token("alice"))).await;
        next(&mut socket).await;
        socket
            .send(WsMessage::Text(bad.into()))
            .await
            .expect("send");
        let (code, reason) = closed(&mut socket).await;
        assert_eq!(code, 4400, "{bad}");
        assert!(!reason.is_empty());
    }

    // A frame over the size limit is answered with an error frame; the socket stays open.
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    next(&mut socket).await;
    send(&mut socket, json!({ "type": "send", "id": "big", "conversation_id": conversation_id, "content": "x".repeat(2000) })).await;
    assert_eq!(next(&mut socket).await["error"], "frame_too_large");
    send(&mut socket, json!({ "type": "ping" })).await;
    assert_eq!(next(&mut socket).await["type"], "pong");

    // 4409: a request id already in use.
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    next(&mut socket).await;
    let frame = json!({ "type": "send", "id": "same", "conversation_id": conversation_id, "content": "one", "model": "slow" });
    send(&mut socket, frame.clone()).await;
    send(&mut socket, frame).await;
    assert_eq!(closed(&mut socket).await.0, 4409);

    // 4429: too many frames.
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    next(&mut socket).await;
    for _ in 0..20 {
        if socket
            .send(WsMessage::Text(
                json!({ "type": "ping" }).to_string().into(),
            ))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, _) = closed(&mut socket).await;
    assert_eq!(code, 4429);

    // 4401 again when the token expires mid-connection.
    let expiring = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "alice", "exp": jsonwebtoken::get_current_timestamp() + 2 }),
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET.as_bytes()),
    )
    .expect("sign");
    let mut socket = connect(&server, Some(&expiring)).await;
    assert_eq!(next(&mut socket).await["type"], "ready");
    let started = std::time::Instant::now();
    let (code, reason) = closed(&mut socket).await;
    assert_eq!(code, 4401);
    assert!(reason.contains("expired"));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_socket_loop_runs_without_a_network() {
    use axum::extract::ws::Message;
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let conversation_id = server.conversation("alice").await;
    let (client_tx, server_rx) =
        futures::channel::mpsc::unbounded::<Result<Message, std::convert::Infallible>>();
    let (server_tx, mut client_rx) = futures::channel::mpsc::unbounded::<Message>();
    let user = server
        .state
        .auth
        .verify(&server.token("alice"))
        .await
        .expect("token");
    let socket = tokio::spawn(chatgate::api::ws::serve_socket(
        server.state.clone(),
        server_tx,
        server_rx,
        Some(user),
    ));
    let text = |frame: Value| Ok(Message::Text(frame.to_string().into()));
    client_tx.unbounded_send(text(json!({ "type": "send", "id": 1, "conversation_id": conversation_id, "content": "offline" }))).expect("send");
    let mut kinds = Vec::new();
    while let Some(Message::Text(frame)) = client_rx.next().await {
        let frame: Value = serde_json::from_str(&frame).expect("json");
        kinds.push(frame["type"].as_str().unwrap_or("").to_string());
        if frame["type"] == "done" {
            assert!(
                frame["message"]["content"]
                    .as_str()
                    .expect("content")
                    .contains("offline")
            );
            break;
        }
    }
    assert_eq!(kinds.first().map(String::as_str), Some("ready"));
    assert_eq!(kinds[1], "user_message");
    assert!(kinds.iter().filter(|k| *k == "delta").count() > 3);
    drop(client_tx);
    tokio::time::timeout(Duration::from_secs(5), socket)
        .await
        .expect("the loop ends when the client goes")
        .expect("join");
}

#[tokio::test]
async fn shutdown_lets_a_reply_finish_then_closes_the_socket_with_1001() {
    let Some(mut server) = TestServer::start(Backend::Sqlite, None, SLOW).await else {
        return;
    };
    let conversation = server.conversation("alice").await;
    let mut socket = connect(&server, Some(&server.token("alice"))).await;
    assert_eq!(next(&mut socket).await["type"], "ready");
    send(
        &mut socket,
        json!({ "type": "send", "id": "r1", "conversation_id": conversation, "content": "hi", "model": "slow" }),
    )
    .await;
    // Shutdown begins once the reply streams.
    loop {
        if next(&mut socket).await["type"] == "delta" {
            break;
        }
    }
    let stopped = server.begin_shutdown();
    let mut last = Value::Null;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame or the close in time")
        {
            Some(Ok(WsMessage::Text(text))) => last = serde_json::from_str(&text).expect("json"),
            Some(Ok(WsMessage::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("socket ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(last["type"], "done", "the reply finished first: {last}");
    assert_eq!(last["message"]["status"], "complete");
    assert_eq!(code, Some(1001), "then the socket closed: going away");
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("the server stopped")
        .expect("join")
        .expect("serve");
}
