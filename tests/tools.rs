//! Tool calling through `/v1/chat/completions`, end to end: fake upstreams replaying each provider's real
//! tool-call stream (tests/fixtures/streams), chatgate relaying them as OpenAI `tool_calls` deltas and whole
//! calls, and the official `openai` Python SDK running a whole tool loop (call, results, answer).

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Backend, FakeOpenAi, Script, Step, TestServer, full_stream};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

/// A provider answering every request with `body`, recording the JSON request bodies.
async fn fixture_upstream(
    body: &'static str,
    content_type: &'static str,
) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = Arc::clone(&seen);
    let app = axum::Router::new().fallback(move |request: Bytes| {
        let record = Arc::clone(&record);
        async move {
            // Health checks (GET, no body) are not generation requests.
            if let Ok(json) = serde_json::from_slice(&request) {
                record.lock().expect("lock").push(json);
            }
            axum::response::Response::builder()
                .header("content-type", content_type)
                .body(axum::body::Body::from(body))
                .expect("response")
        }
    });
    (common::serve_app(app).await, seen)
}

fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Current weather at a place",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}},
        {"type": "function", "function": {"name": "get_time"}},
    ])
}

/// `(id, name, arguments)` of each call, folded from `chat.completion.chunk`s as the OpenAI SDKs fold them;
/// also checks each call's first piece carries its id, `type` and name.
fn fold_tool_calls(chunks: &[Value]) -> Vec<(String, String, String)> {
    let mut calls: Vec<(String, String, String)> = Vec::new();
    for chunk in chunks {
        for piece in chunk["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let index = piece["index"].as_u64().expect("index") as usize;
            if index == calls.len() {
                assert_eq!(piece["type"], "function", "{piece}");
                calls.push((
                    piece["id"].as_str().expect("id on the first piece").into(),
                    piece["function"]["name"]
                        .as_str()
                        .expect("name on the first piece")
                        .into(),
                    String::new(),
                ));
            }
            calls[index]
                .2
                .push_str(piece["function"]["arguments"].as_str().expect("arguments"));
        }
    }
    calls
}

/// Every provider's tool calls come out of `/v1/chat/completions` the same: `tool_calls` on the message
/// (content null when there is no text), streamed as `tool_calls` deltas, `finish_reason: "tool_calls"` (also
/// from Gemini and Ollama, which say `stop`), the tools sent upstream in the provider's shape, usage as the
/// provider reported it.
#[tokio::test]
async fn tool_calls_from_every_provider_come_out_in_openai_shape() {
    /// The provider kind, its base path, its stream and content type, the prompt tokens it reports, its text.
    type Fixture = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        u64,
        Option<&'static str>,
    );
    let fixtures: [Fixture; 4] = [
        (
            "openai",
            "/v1",
            include_str!("fixtures/streams/openai_tools.sse"),
            "text/event-stream",
            82,
            None,
        ),
        (
            "anthropic",
            "/v1",
            include_str!("fixtures/streams/anthropic_tools.sse"),
            "text/event-stream",
            472,
            Some("Okay, let's check."),
        ),
        (
            "gemini",
            "/v1beta",
            include_str!("fixtures/streams/gemini_tools.sse"),
            "text/event-stream",
            60,
            None,
        ),
        (
            "ollama",
            "",
            include_str!("fixtures/streams/ollama_tools.ndjson"),
            "application/x-ndjson",
            120,
            None,
        ),
    ];
    let mut extra = String::new();
    let mut recorded = Vec::new();
    for (kind, path, body, content_type, _, _) in &fixtures {
        let (url, seen) = fixture_upstream(body, content_type).await;
        extra.push_str(&format!(
            "[providers.up-{kind}]\nkind = \"{kind}\"\nbase_url = \"{url}{path}\"\napi_key = \"k\"\n\
             [models.m-{kind}]\nprovider = \"up-{kind}\"\nmodel = \"model-{kind}\"\n"
        ));
        recorded.push(seen);
    }
    let Some(server) = TestServer::start(Backend::Sqlite, None, &extra).await else {
        return;
    };
    let url = format!("{}/v1/chat/completions", server.url);
    for ((kind, _, _, _, prompt_tokens, text), seen) in fixtures.iter().zip(&recorded) {
        let body = json!({
            "model": format!("m-{kind}"),
            "messages": [{"role": "user", "content": "Weather and time in Paris?"}],
            "tools": tools(),
        });
        let response = server
            .client
            .post(&url)
            .bearer_auth(server.token("alice"))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200, "{kind}");
        let completion: Value = response.json().await.expect("json");
        let choice = &completion["choices"][0];
        assert_eq!(
            choice["finish_reason"], "tool_calls",
            "{kind}: {completion}"
        );
        assert_eq!(choice["message"]["content"], json!(text), "{kind}");
        let calls = choice["message"]["tool_calls"]
            .as_array()
            .expect("tool_calls");
        let named: Vec<(&str, Value)> = calls
            .iter()
            .map(|c| {
                assert_eq!(c["type"], "function");
                assert!(c["id"].as_str().is_some_and(|id| !id.is_empty()));
                let arguments = c["function"]["arguments"].as_str().expect("arguments text");
                (
                    c["function"]["name"].as_str().expect("name"),
                    serde_json::from_str(arguments).expect("arguments are JSON"),
                )
            })
            .collect();
        assert_eq!(
            named,
            [
                ("get_weather", json!({"location": "Paris, France"})),
                ("get_time", json!({}))
            ],
            "{kind}"
        );
        assert_eq!(
            completion["usage"]["prompt_tokens"], *prompt_tokens,
            "{kind}"
        );
        // The tools went upstream in the provider's own shape.
        let sent = seen.lock().expect("lock")[0].clone();
        let names = match *kind {
            "anthropic" => sent["tools"][1]["name"].clone(),
            "gemini" => sent["tools"][0]["functionDeclarations"][1]["name"].clone(),
            _ => sent["tools"][1]["function"]["name"].clone(),
        };
        assert_eq!(names, "get_time", "{kind}: {sent}");

        let mut streaming = body.clone();
        streaming["stream"] = json!(true);
        let response = server
            .client
            .post(&url)
            .bearer_auth(server.token("alice"))
            .json(&streaming)
            .send()
            .await
            .expect("send");
        let events: Vec<String> = response
            .bytes_stream()
            .eventsource()
            .map(|e| e.expect("event").data)
            .collect()
            .await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{kind}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).expect("chunk"))
            .collect();
        let streamed = fold_tool_calls(&chunks);
        let streamed: Vec<(&str, Value)> = streamed
            .iter()
            .map(|(_, name, arguments)| {
                (
                    name.as_str(),
                    serde_json::from_str(arguments).expect("streamed arguments are JSON"),
                )
            })
            .collect();
        assert_eq!(streamed, named, "{kind}: streamed as returned whole");
        let finish = chunks
            .iter()
            .find_map(|c| c["choices"][0]["finish_reason"].as_str());
        assert_eq!(finish, Some("tool_calls"), "{kind}");
    }
    server.stop().await;
}

/// The official `openai` Python SDK runs a whole tool loop through chatgate: a non-streaming call and the
/// SDK's streaming helper (`chat.completions.stream(...).get_final_completion()`) get the model's tool calls;
/// the SDK's own message object and the tool results go back, and the model answers in text.
#[tokio::test]
async fn the_python_sdk_runs_a_tool_loop() {
    if !common::python_has("openai") {
        common::skipped(
            "the OpenAI SDK tool test: python3 with the openai package is not installed (pip install openai)",
        );
        return;
    }
    let tool_stream = || {
        Script::stream(vec![Step::Raw(
            include_str!("fixtures/streams/openai_tools.sse").into(),
        )])
    };
    let upstream = FakeOpenAi::start(vec![
        tool_stream(),
        tool_stream(),
        Script::stream(full_stream(
            &["It is 21°C", " in Paris."],
            120,
            8,
            std::time::Duration::ZERO,
        )),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let script = r#"
import json, os, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["TOKEN"])
tools = json.loads(os.environ["TOOLS"])
messages = [{"role": "user", "content": "Weather and time in Paris?"}]
reply = client.chat.completions.create(model="gpt", messages=messages, tools=tools, tool_choice="auto")
calls = reply.choices[0].message.tool_calls
assert reply.choices[0].finish_reason == "tool_calls", reply
assert [c.function.name for c in calls] == ["get_weather", "get_time"], calls
assert json.loads(calls[0].function.arguments) == {"location": "Paris, France"}, calls
with client.chat.completions.stream(model="gpt", messages=messages, tools=tools) as stream:
    kinds = {event.type for event in stream}
    final = stream.get_final_completion()
assert "tool_calls.function.arguments.delta" in kinds, kinds
message = final.choices[0].message
assert [c.id for c in message.tool_calls] == ["call_DdmO9pD3xa9XTPNJ32zg2hcA", "call_Xy7"], message
messages.append(message)
for call, result in zip(message.tool_calls, [{"celsius": 21}, {"time": "14:05"}]):
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
answer = client.chat.completions.create(model="gpt", messages=messages, tools=tools)
assert answer.choices[0].message.content == "It is 21°C in Paris.", answer
assert answer.choices[0].finish_reason == "stop", answer
try:
    client.chat.completions.create(model="gpt", messages=[{"role": "tool", "tool_call_id": "call_nope", "content": "x"}])
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert (e.code, e.param) == ("invalid_parameter", "messages[0].tool_call_id"), e.body
print("ok")
"#;
    let said = common::run_python(
        script,
        vec![
            ("BASE_URL", format!("{}/v1", server.url)),
            ("TOKEN", server.token("alice")),
            ("TOOLS", tools().to_string()),
        ],
    )
    .await;
    assert_eq!(said, "ok");
    // The follow-up reached the upstream as OpenAI's API takes it: the call, then each result by its id.
    let requests = upstream.requests();
    assert_eq!(requests.len(), 3, "the refused request never went upstream");
    let sent = &requests[2].1;
    assert_eq!(sent["tools"].as_array().map(Vec::len), Some(2), "{sent}");
    assert_eq!(sent["messages"][1]["role"], "assistant");
    assert_eq!(sent["messages"][1]["content"], Value::Null);
    assert_eq!(
        sent["messages"][1]["tool_calls"][0],
        json!({"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris, France\"}"}})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "content": "{\"celsius\": 21}"})
    );
    assert_eq!(sent["messages"][3]["tool_call_id"], "call_Xy7");
    server.stop().await;
}

/// With no key, the mock model calls an offered tool and then quotes its result, so a tool loop runs end to
/// end; its usage (a local estimate, since the mock reports none) counts the tool definitions as prompt and
/// the call as completion.
#[tokio::test]
async fn the_mock_runs_a_tool_loop_and_its_estimate_counts_the_tools() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let complete = |body: Value| async {
        let response = server
            .post("/v1/chat/completions", "alice", body)
            .send()
            .await
            .expect("send");
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.expect("json")
    };
    let question = json!([{"role": "user", "content": "Weather in Paris?"}]);
    let plain = complete(json!({"model": "mock", "messages": question})).await;
    let called = complete(json!({"model": "mock", "messages": question, "tools": tools()})).await;
    let choice = &called["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{called}");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], r#"{"location":"mock"}"#);
    let prompt = |c: &Value| c["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert!(
        prompt(&called) > prompt(&plain) + 20,
        "the definitions are prompt tokens: {} vs {}",
        prompt(&called),
        prompt(&plain)
    );
    assert!(
        called["usage"]["completion_tokens"].as_u64() > Some(3),
        "{called}"
    );

    let mut history = question.as_array().expect("array").clone();
    history.push(choice["message"].clone());
    history
        .push(json!({"role": "tool", "tool_call_id": call["id"], "content": "{\"celsius\": 21}"}));
    let answer = complete(json!({"model": "mock", "messages": history, "tools": tools()})).await;
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert!(
        text.contains(r#"Your tools answered: {"celsius": 21}."#),
        "{text}"
    );
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    server.stop().await;
}
