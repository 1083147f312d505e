//! `POST /v1/responses` over a real server: the `response` object, its streaming events in order with
//! contiguous `sequence_number`s, tool calls as `function_call` items, errors in OpenAI's shape; and the
//! official `openai` Python SDK's `responses.create` / `responses.stream` running a tool loop.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use common::{Backend, FakeOpenAi, Script, Step, TestServer, full_stream};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

fn tool_stream() -> Script {
    Script::stream(vec![Step::Raw(
        include_str!("fixtures/streams/openai_tools.sse").into(),
    )])
}

/// `(event name, data)` of a streamed response, checking each event's `type` is its name.
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    response
        .bytes_stream()
        .eventsource()
        .map(|e| {
            let e = e.expect("event");
            let data: Value = serde_json::from_str(&e.data).expect("json");
            assert_eq!(data["type"], e.event.as_str(), "{data}");
            (e.event, data)
        })
        .collect()
        .await
}

#[tokio::test]
async fn responses_whole_and_streamed_with_text_and_tool_calls() {
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(&["Hi", " there"], 12, 2, Duration::ZERO)),
        Script::stream(full_stream(&["Hi", " there"], 12, 2, Duration::ZERO)),
        tool_stream(),
        Script::stream(full_stream(&["It is 21."], 30, 4, Duration::ZERO)),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let post = |body: Value| server.post("/v1/responses", "alice", body).send();

    // Whole: one message item, usage in the Responses names, the upstream model, nothing stored.
    let response =
        post(json!({"model": "gpt", "instructions": "Be brief", "input": "Hello", "store": true}))
            .await
            .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-chatgate-model"], "gpt");
    let body: Value = response.json().await.expect("json");
    assert!(
        body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("resp_")),
        "{body}"
    );
    assert_eq!(
        (
            &body["object"],
            &body["status"],
            &body["model"],
            &body["store"]
        ),
        (
            &json!("response"),
            &json!("completed"),
            &json!("gpt-4o-mini"),
            &json!(false)
        )
    );
    assert_eq!(body["output"][0]["type"], "message");
    assert_eq!(body["output"][0]["content"][0]["text"], "Hi there");
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
               "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 14})
    );
    assert_eq!(body["instructions"], "Be brief");
    let sent = &upstream.requests()[0].1;
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}])
    );

    // Streamed: the events in the protocol's order, numbered 0, 1, 2, ...
    let response = post(json!({"model": "gpt", "input": "Hello", "stream": true}))
        .await
        .expect("send");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let streamed = events(response).await;
    let names: Vec<&str> = streamed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    for (at, (_, data)) in streamed.iter().enumerate() {
        assert_eq!(data["sequence_number"], at as u64);
    }
    assert_eq!(streamed[6].1["text"], "Hi there");
    let completed = &streamed[9].1["response"];
    assert_eq!(completed["status"], "completed");
    assert_eq!(completed["output"][0]["content"][0]["text"], "Hi there");
    assert_eq!(completed["usage"]["total_tokens"], 14);

    // Tool calls: function_call items with their call ids, arguments streamed as deltas.
    let tools = json!([{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}},
                       {"type": "function", "name": "get_time"}]);
    let response =
        post(json!({"model": "gpt", "input": "Weather and time?", "tools": tools, "stream": true}))
            .await
            .expect("send");
    let streamed = events(response).await;
    let completed = &streamed.last().expect("events").1;
    assert_eq!(completed["type"], "response.completed");
    let output = completed["response"]["output"].as_array().expect("output");
    assert_eq!(output.len(), 2, "{output:?}");
    assert_eq!(
        (
            &output[0]["type"],
            &output[0]["call_id"],
            &output[0]["name"],
            &output[0]["arguments"]
        ),
        (
            &json!("function_call"),
            &json!("call_DdmO9pD3xa9XTPNJ32zg2hcA"),
            &json!("get_weather"),
            &json!("{\"location\": \"Paris, France\"}")
        )
    );
    assert_eq!(
        (&output[1]["call_id"], &output[1]["arguments"]),
        (&json!("call_Xy7"), &json!("{}"))
    );
    let deltas: String = streamed
        .iter()
        .filter(|(name, data)| {
            name == "response.function_call_arguments.delta" && data["output_index"] == 0
        })
        .map(|(_, data)| data["delta"].as_str().expect("delta"))
        .collect();
    assert_eq!(deltas, "{\"location\": \"Paris, France\"}");
    let sent = &upstream.requests()[2].1;
    assert_eq!(sent["tools"][1]["function"]["name"], "get_time", "{sent}");

    // The follow-up: the calls and their outputs as input items reach the upstream as Chat messages.
    let response = post(json!({"model": "gpt", "tools": tools, "input": [
        {"role": "user", "content": "Weather and time?"},
        output[0].clone(), output[1].clone(),
        {"type": "function_call_output", "call_id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "output": "{\"celsius\": 21}"},
        {"type": "function_call_output", "call_id": "call_Xy7", "output": "14:05"},
    ]}))
    .await
    .expect("send");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["output"][0]["content"][0]["text"], "It is 21.");
    let sent = &upstream.requests()[3].1;
    assert_eq!(
        sent["messages"][1]["tool_calls"].as_array().map(Vec::len),
        Some(2),
        "{sent}"
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "content": "{\"celsius\": 21}"})
    );

    // Refused in OpenAI's shape, naming the Responses field, before anything goes upstream.
    let refused = [
        (
            json!({"model": "gpt", "input": "x", "previous_response_id": "resp_1"}),
            "unsupported_parameter",
            "previous_response_id",
        ),
        (
            json!({"model": "gpt", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "unsupported_parameter",
            "input[0]",
        ),
        (
            json!({"model": "gpt", "input": [{"role": "user", "content": "x"}, {"type": "function_call_output", "call_id": "nope", "output": "1"}]}),
            "invalid_parameter",
            "input[1].tool_call_id",
        ),
        (
            json!({"model": "gpt", "input": "x", "tools": [{"type": "web_search"}]}),
            "unsupported_parameter",
            "tools[0].type",
        ),
        (
            json!({"model": "gpt", "input": "x", "frobnicate": 1}),
            "unknown_parameter",
            "frobnicate",
        ),
        (json!({"model": "gpt"}), "invalid_parameter", "input"),
    ];
    for (body, code, param) in refused {
        let response = post(body.clone()).await.expect("send");
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.expect("json");
        assert_eq!(
            (
                &error["error"]["code"],
                &error["error"]["param"],
                &error["error"]["type"]
            ),
            (&json!(code), &json!(param), &json!("invalid_request_error")),
            "{body}: {error}"
        );
    }
    let response = post(json!({"model": "nope", "input": "x"}))
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    assert_eq!(
        upstream.requests().len(),
        4,
        "refused requests never went upstream"
    );
    let usage = server.get_json("/api/v1/usage", "alice").await;
    assert_eq!(
        usage["totals"]["requests"], 4,
        "each response is billed: {usage}"
    );
    server.stop().await;
}

/// The official `openai` Python SDK: `responses.create` (`output_text`), `responses.stream` (typed events,
/// `get_final_response()`), a function tool loop, and its errors.
#[tokio::test]
async fn the_python_sdk_responses_api() {
    if !common::python_has("openai") {
        common::skipped(
            "the OpenAI SDK Responses test: python3 with the openai package is not installed (pip install openai)",
        );
        return;
    }
    let upstream = FakeOpenAi::start(vec![
        Script::stream(full_stream(
            &["Hello", " from", " responses"],
            10,
            3,
            Duration::ZERO,
        )),
        Script::stream(full_stream(&["Streamed", " reply"], 10, 2, Duration::ZERO)),
        tool_stream(),
        Script::stream(full_stream(
            &["It is 21°C in Paris."],
            40,
            8,
            Duration::ZERO,
        )),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let script = r#"
import json, os, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["TOKEN"])
r = client.responses.create(model="gpt", instructions="Be brief", input="Say hello")
assert r.output_text == "Hello from responses", r
assert r.status == "completed" and r.usage.input_tokens == 10 and r.usage.output_tokens == 3, r
text = ""
with client.responses.stream(model="gpt", input=[{"role": "user", "content": [{"type": "input_text", "text": "Stream"}]}]) as stream:
    for event in stream:
        if event.type == "response.output_text.delta":
            text += event.delta
    final = stream.get_final_response()
assert text == "Streamed reply" and final.output_text == "Streamed reply", (text, final)
tools = [{"type": "function", "name": "get_weather", "description": "Current weather",
          "parameters": {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}},
         {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}]
inputs = [{"role": "user", "content": "Weather and time in Paris?"}]
r = client.responses.create(model="gpt", input=inputs, tools=tools)
calls = [item for item in r.output if item.type == "function_call"]
assert [c.name for c in calls] == ["get_weather", "get_time"], r.output
assert json.loads(calls[0].arguments) == {"location": "Paris, France"}, calls
inputs += r.output
for call, result in zip(calls, ["21", "14:05"]):
    inputs.append({"type": "function_call_output", "call_id": call.call_id, "output": result})
r = client.responses.create(model="gpt", input=inputs, tools=tools)
assert r.output_text == "It is 21°C in Paris.", r
try:
    client.responses.create(model="gpt", input="x", previous_response_id=r.id)
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert (e.code, e.param) == ("unsupported_parameter", "previous_response_id"), e.body
print("ok")
"#;
    let said = common::run_python(
        script,
        vec![
            ("BASE_URL", format!("{}/v1", server.url)),
            ("TOKEN", server.token("alice")),
        ],
    )
    .await;
    assert_eq!(said, "ok");
    let sent = &upstream.requests()[3].1;
    assert_eq!(
        sent["messages"][1]["tool_calls"][1]["id"], "call_Xy7",
        "{sent}"
    );
    assert_eq!(sent["messages"][3]["content"], "14:05");
    server.stop().await;
}

/// An upstream that dies mid-stream ends a streamed response with `error` then `response.failed` (what was
/// streamed kept in its output, the error's code and message on it); one that fails before its first token is
/// the HTTP status itself, in OpenAI's error shape.
#[tokio::test]
async fn upstream_failures_end_a_response_as_the_protocol_says() {
    let upstream = FakeOpenAi::start(vec![
        Script::stream(vec![
            Step::Chunk(common::role_chunk()),
            Step::Chunk(common::content_chunk("Half")),
            // Let the bytes reach the wire before the connection is torn down.
            Step::Delay(Duration::from_millis(50)),
            Step::Die,
        ]),
        Script::error(401, vec![], json!({"error": {"message": "bad key"}})),
    ])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let response = server
        .post(
            "/v1/responses",
            "alice",
            json!({"model": "gpt", "input": "Hello", "stream": true}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let streamed = events(response).await;
    let names: Vec<&str> = streamed.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        &names[names.len() - 3..],
        ["response.output_item.done", "error", "response.failed"],
        "{names:?}"
    );
    let error = &streamed[streamed.len() - 2].1;
    assert_eq!(error["code"], "upstream_interrupted", "{error}");
    assert_eq!(error["error"]["code"], "upstream_interrupted", "{error}");
    let failed = &streamed.last().expect("events").1["response"];
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["code"], "upstream_interrupted");
    assert_eq!(failed["output"][0]["content"][0]["text"], "Half");

    let response = server
        .post(
            "/v1/responses",
            "alice",
            json!({"model": "gpt", "input": "Hello", "stream": true}),
        )
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upstream_auth", "{body}");
    server.stop().await;
}
