//! The OpenAI-compatible endpoint, over a real server: non-streaming and streaming shapes, usage recorded per
//! user, errors in OpenAI's shape; and the official `openai` Python SDK when it is installed.

#![allow(
    clippy::disallowed_methods,
    reason = "test and benchmark harnesses spawn their own fakes and clients; the server's tasks go through chatgate::tasks"
)]

mod common;

use std::time::Duration;

use common::{Backend, FakeOpenAi, Script, TestServer, full_stream};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

#[tokio::test]
async fn completions_without_and_with_streaming() {
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["Hi", " there"],
        12,
        2,
        Duration::from_millis(5),
    ))])
    .await;
    let Some(server) = TestServer::start(Backend::Sqlite, Some(&upstream.url), "").await else {
        return;
    };
    let url = format!("{}/v1/chat/completions", server.url);
    let body = json!({ "model": "gpt", "messages": [{ "role": "system", "content": "Be brief" }, { "role": "user", "content": [{ "type": "text", "text": "Hello" }] }] });

    let response = server
        .client
        .post(&url)
        .bearer_auth(server.token("alice"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    // `model` names the upstream model that answered, as OpenAI's does; the alias asked for is a header.
    assert_eq!(response.headers()["x-chatgate-model"], "gpt");
    let completion: Value = response.json().await.expect("json");
    assert_eq!(completion["object"], "chat.completion");
    assert!(
        completion["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-"))
    );
    assert_eq!(completion["model"], "gpt-4o-mini");
    assert_eq!(
        completion["choices"][0]["message"],
        json!({ "role": "assistant", "content": "Hi there", "refusal": null })
    );
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["prompt_tokens"], 12);
    assert_eq!(completion["usage"]["completion_tokens"], 2);
    assert_eq!(completion["usage"]["total_tokens"], 14);
    // What went upstream: the caller's messages as sent.
    let (_, sent) = upstream.requests().pop().expect("request");
    assert_eq!(
        sent["messages"],
        json!([{ "role": "system", "content": "Be brief" }, { "role": "user", "content": "Hello" }])
    );

    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["stream_options"] = json!({ "include_usage": true });
    let response = server
        .client
        .post(&url)
        .bearer_auth(server.token("alice"))
        .json(&streaming)
        .send()
        .await
        .expect("send");
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["x-chatgate-model"], "gpt");
    let events: Vec<String> = response
        .bytes_stream()
        .eventsource()
        .map(|e| e.expect("event").data)
        .collect()
        .await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "gpt-4o-mini")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hi there");
    let finish = chunks
        .iter()
        .find(|c| !c["choices"][0]["finish_reason"].is_null())
        .expect("finish chunk");
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 14);

    // Both calls are billed to the caller; no conversation or message was stored.
    let mine: Value = server
        .get("/api/v1/usage?group_by=model", "alice")
        .send()
        .await
        .expect("usage")
        .json()
        .await
        .expect("json");
    assert_eq!(mine["totals"]["requests"], 2);
    let listed: Value = server
        .get("/api/v1/conversations", "alice")
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    assert_eq!(listed["conversations"], json!([]));
}

#[tokio::test]
async fn personas_models_and_errors_in_openai_shape() {
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let url = format!("{}/v1/chat/completions", server.url);
    let persona: Value = server
        .client
        .get(format!("{}/api/v1/personas", server.url))
        .send()
        .await
        .expect("personas")
        .json()
        .await
        .expect("json");
    let slug = persona["personas"][0]["slug"]
        .as_str()
        .expect("slug")
        .to_string();
    let body = json!({ "model": "mock", "persona": slug, "messages": [{ "role": "user", "content": "hey" }] });
    let completion: Value = server
        .client
        .post(&url)
        .bearer_auth(server.token("alice"))
        .json(&body)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(
        completion["choices"][0]["message"]["content"]
            .as_str()
            .expect("content")
            .contains("\"hey\"")
    );

    let models: Value = server
        .get("/v1/models", "alice")
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("json");
    assert_eq!(models["object"], "list");
    assert!(
        models["data"]
            .as_array()
            .expect("data")
            .iter()
            .any(|m| m["id"] == "mock" && m["object"] == "model")
    );

    let response = server
        .client
        .post(&url)
        .bearer_auth(server.token("alice"))
        .json(&json!({ "model": "nope", "messages": [{ "role": "user", "content": "x" }] }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 404);
    let error: Value = response.json().await.expect("json");
    assert_eq!(
        (
            error["error"]["code"].as_str(),
            error["error"]["param"].as_str()
        ),
        (Some("model_not_found"), Some("model"))
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope"))
    );

    let response = server
        .client
        .post(&url)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 401);
    let response = server
        .client
        .post(&url)
        .bearer_auth(server.token("alice"))
        .json(&json!({ "model": "mock", "messages": [{ "role": "assistant", "content": "x" }] }))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
}

/// `(status, error.code, error.type, error.param)` of a `/v1` failure, asserting OpenAI's shape: exactly
/// `{"error": {"message", "type", "param", "code"}}`, with a message.
async fn openai_failure(response: reqwest::Response) -> (u16, String, String, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    let error = &body["error"];
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    let mut keys: Vec<&str> = error
        .as_object()
        .expect("error object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message", "param", "type"], "{body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        error["code"].as_str().unwrap_or("").to_string(),
        error["type"].as_str().unwrap_or("").to_string(),
        error["param"].clone(),
    )
}

#[tokio::test]
async fn every_v1_failure_is_in_openai_shape() {
    let Some(server) =
        TestServer::start(Backend::Sqlite, None, "[server]\nmax_body_bytes = 4096\n").await
    else {
        return;
    };
    let url = |path: &str| format!("{}{path}", server.url);
    let token = server.token("alice");
    let ok_body = json!({ "model": "mock", "messages": [{ "role": "user", "content": "hi" }] });
    let client = &server.client;
    let cases: Vec<(&str, reqwest::RequestBuilder, (u16, &str, &str))> = vec![
        (
            "no token",
            client.post(url("/v1/chat/completions")).json(&ok_body),
            (401, "unauthorized", "authentication_error"),
        ),
        (
            "a bad token",
            client
                .post(url("/v1/chat/completions"))
                .bearer_auth("sk-not-a-jwt")
                .json(&ok_body),
            (401, "unauthorized", "authentication_error"),
        ),
        (
            "malformed JSON",
            client
                .post(url("/v1/chat/completions"))
                .bearer_auth(&token)
                .header("content-type", "application/json")
                .body("{\"model\": "),
            (400, "invalid_json", "invalid_request_error"),
        ),
        (
            "a body over server.max_body_bytes",
            client
                .post(url("/v1/chat/completions"))
                .bearer_auth(&token)
                .json(&json!({ "model": "mock", "messages": [{ "role": "user", "content": "x".repeat(8000) }] })),
            (413, "payload_too_large", "invalid_request_error"),
        ),
        (
            "an unknown route",
            client.get(url("/v1/embeddingz")).bearer_auth(&token),
            (404, "not_found", "not_found_error"),
        ),
        (
            "a wrong method",
            client.get(url("/v1/chat/completions")).bearer_auth(&token),
            (405, "method_not_allowed", "api_error"),
        ),
        (
            "an unknown model",
            client.get(url("/v1/models/gpt-9")).bearer_auth(&token),
            (404, "model_not_found", "not_found_error"),
        ),
    ];
    for (what, request, (status, code, kind)) in cases {
        let (got_status, got_code, got_type, _) =
            openai_failure(request.send().await.expect(what)).await;
        assert_eq!(
            (got_status, got_code.as_str(), got_type.as_str()),
            (status, code, kind),
            "{what}"
        );
    }
    // A model by id, as `client.models.retrieve` reads it.
    let model: Value = server
        .get("/v1/models/mock", "alice")
        .send()
        .await
        .expect("model")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (&model["id"], &model["object"], &model["owned_by"]),
        (&json!("mock"), &json!("model"), &json!("mock"))
    );
    // The native API keeps its own shape.
    let native: Value = client
        .get(url("/api/v1/conversations"))
        .send()
        .await
        .expect("native")
        .json()
        .await
        .expect("json");
    assert_eq!(native["error"], "unauthorized", "{native}");
    server.stop().await;

    // The rate limit: 429 with Retry-After, in OpenAI's shape.
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        None,
        "[limits]\nrequests_per_minute = 1\nburst = 1\n",
    )
    .await
    else {
        return;
    };
    let mut limited = None;
    for _ in 0..5 {
        let response = server
            .get("/v1/models", "alice")
            .send()
            .await
            .expect("models");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
    }
    let response = limited.expect("the rate limit answers 429");
    assert!(response.headers().contains_key("retry-after"));
    let (_, code, kind, _) = openai_failure(response).await;
    assert_eq!(kind, "rate_limit_error", "{code}");
    server.stop().await;
}

#[tokio::test]
async fn sampling_settings_reach_the_upstream_and_unknown_parameters_are_refused() {
    let upstream = FakeOpenAi::start(vec![Script::stream(full_stream(
        &["ok"],
        5,
        1,
        Duration::ZERO,
    ))])
    .await;
    // An alias with sampling settings of its own, beside the plain `gpt`.
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        Some(&upstream.url),
        "[models.tuned]\nprovider = \"fake\"\nmodel = \"gpt-tuned\"\ntemperature = 0.3\nstop = [\"END\"]\n",
    )
    .await
    else {
        return;
    };
    let send = |body: Value| {
        server
            .client
            .post(format!("{}/v1/chat/completions", server.url))
            .bearer_auth(server.token("alice"))
            .json(&body)
            .send()
    };
    let messages = json!([{ "role": "user", "content": "hi" }]);
    let sent_upstream = |i: usize| upstream.requests()[i].1.clone();

    // Every setting, as the caller gave it; `null` is absent, `user` and `n: 1` accepted.
    let response = send(json!({
        "model": "gpt", "messages": messages, "temperature": 0.7, "top_p": 0.9, "stop": "STOP", "seed": 7,
        "presence_penalty": 0.1, "frequency_penalty": -0.2, "response_format": {"type": "json_object"},
        "n": 1, "user": "end-user-42", "tools": null,
        // What clients send as defaults for features chatgate does not offer, asked for off.
        "logprobs": false, "tool_choice": "none", "parallel_tool_calls": true,
    }))
    .await
    .expect("send");
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );
    let body = sent_upstream(0);
    assert_eq!(
        (
            &body["temperature"],
            &body["top_p"],
            &body["stop"],
            &body["seed"],
            &body["presence_penalty"],
            &body["frequency_penalty"],
            &body["response_format"]
        ),
        (
            &json!(0.7),
            &json!(0.9),
            &json!(["STOP"]),
            &json!(7),
            &json!(0.1),
            &json!(-0.2),
            &json!({"type": "json_object"})
        ),
        "{body}"
    );
    assert!(
        body.get("user").is_none() && body.get("tools").is_none(),
        "{body}"
    );

    // The alias's own settings fill in what the request leaves out; the request's win.
    send(json!({ "model": "tuned", "messages": messages }))
        .await
        .expect("send");
    let body = sent_upstream(1);
    assert_eq!(
        (&body["temperature"], &body["stop"]),
        (&json!(0.3), &json!(["END"])),
        "{body}"
    );
    send(json!({ "model": "tuned", "messages": messages, "temperature": 1.2 }))
        .await
        .expect("send");
    let body = sent_upstream(2);
    assert_eq!(
        (&body["temperature"], &body["stop"]),
        (&json!(1.2), &json!(["END"])),
        "{body}"
    );
    // Without settings, none are sent.
    send(json!({ "model": "gpt", "messages": messages }))
        .await
        .expect("send");
    let body = sent_upstream(3);
    assert!(
        body.get("temperature").is_none() && body.get("stop").is_none(),
        "{body}"
    );

    // Refused in OpenAI's shape, naming the parameter, and nothing reaches the upstream.
    let refused = [
        (
            json!({"functions": [{"name": "f"}]}),
            "unsupported_parameter",
            "functions",
        ),
        (
            json!({"tools": [{"type": "custom", "custom": {"name": "f"}}]}),
            "unsupported_parameter",
            "tools[0].type",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
            "invalid_parameter",
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": "{}"}}]}),
            "invalid_parameter",
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "invalid_parameter",
            "tool_choice",
        ),
        (
            json!({"tool_choice": "required"}),
            "invalid_parameter",
            "tool_choice",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function"}]}]}),
            "invalid_parameter",
            "messages[1].tool_calls[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi", "tool_calls": []}]}),
            "invalid_parameter",
            "messages[0].tool_calls",
        ),
        (
            json!({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "21"}]}),
            "invalid_parameter",
            "messages[1].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "function", "name": "f", "content": "21"}]}),
            "invalid_parameter",
            "messages[0].role",
        ),
        (
            json!({"frobnicate": true}),
            "unknown_parameter",
            "frobnicate",
        ),
        (json!({"n": 2}), "invalid_parameter", "n"),
        (
            json!({"temperature": 2.5}),
            "invalid_parameter",
            "temperature",
        ),
        (
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            "invalid_parameter",
            "stop",
        ),
        (
            json!({"response_format": {"type": "xml"}}),
            "invalid_parameter",
            "response_format",
        ),
    ];
    for (extra, code, param) in refused {
        let mut body = json!({ "model": "gpt", "messages": messages });
        for (key, value) in extra.as_object().expect("object") {
            body[key] = value.clone();
        }
        let (status, got_code, _, got_param) =
            openai_failure(send(body).await.expect("send")).await;
        assert_eq!(
            (status, got_code.as_str(), got_param),
            (400, code, json!(param)),
            "{extra}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        4,
        "refused requests never went upstream"
    );
    server.stop().await;

    // A setting the model's provider has no counterpart for: 400 naming it (Anthropic has no seed), before any
    // upstream request (this one points nowhere).
    let Some(server) = TestServer::start(
        Backend::Sqlite,
        None,
        "[providers.anthropic]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"sk-ant\"\n\
         [models.claude]\nprovider = \"anthropic\"\nmodel = \"claude-x\"\n",
    )
    .await
    else {
        return;
    };
    let response = server
        .client
        .post(format!("{}/v1/chat/completions", server.url))
        .bearer_auth(server.token("alice"))
        .json(&json!({ "model": "claude", "messages": messages, "seed": 7 }))
        .send()
        .await
        .expect("send");
    let (status, code, _, param) = openai_failure(response).await;
    assert_eq!(
        (status, code.as_str(), param),
        (400, "unsupported_parameter", json!("seed"))
    );
    server.stop().await;
}

/// The official `openai` Python SDK, streaming and not, against a running chatgate. Runs when `python3` can
/// import `openai` (`.ci/run` installs it); says so when skipped.
#[tokio::test]
async fn the_official_python_sdk_works_unmodified() {
    if !common::python_has("openai") {
        common::skipped(
            "the OpenAI SDK test: python3 with the openai package is not installed (pip install openai)",
        );
        return;
    }
    let Some(server) = TestServer::start(Backend::Sqlite, None, "").await else {
        return;
    };
    let script = r#"
import os, openai
client = openai.OpenAI(base_url=os.environ["BASE_URL"], api_key=os.environ["TOKEN"])
models = [m.id for m in client.models.list()]
assert "mock" in models, models
model = client.models.retrieve("mock")
assert (model.id, model.object) == ("mock", "model"), model
try:
    openai.OpenAI(base_url=os.environ["BASE_URL"], api_key="sk-not-a-chatgate-token").models.list()
    raise SystemExit("expected AuthenticationError")
except openai.AuthenticationError as e:
    assert e.code == "unauthorized" and e.type == "authentication_error", (e.code, e.type, e.body)
try:
    client.models.retrieve("gpt-9")
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert (e.code, e.param) == ("model_not_found", "model"), e.body
reply = client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "sdk says hi"}])
assert "sdk says hi" in reply.choices[0].message.content, reply
assert reply.usage.total_tokens > 0, reply.usage
text = ""
usage = None
for chunk in client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "stream it"}], stream=True, stream_options={"include_usage": True}):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage:
        usage = chunk.usage
assert "stream it" in text, text
assert usage is not None and usage.completion_tokens > 0, usage
try:
    client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.code == "model_not_found", e
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
}
